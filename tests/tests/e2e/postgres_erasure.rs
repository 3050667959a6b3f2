//! Erasure on PostgreSQL (issue 19, item 5; deploy/README.md "Erasure on PostgreSQL"), on real
//! processes and a real server: after an erasure and the documented purge step (`domicile kek
//! add`, restart, `kek rewrap`, `kek retire`, restart), every file of the database server's data
//! directory, WAL included, holds none of the subject's identifiers, profile values or interaction
//! text, and the copies of its data key that PostgreSQL may still keep (old row versions, WAL) no
//! longer unwrap with the region's key-encryption keys. The other subjects' keys were re-wrapped
//! and keep working.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::collections::HashMap;
use std::path::PathBuf;

use domicile_cli::cluster::{ClusterStore, database_name};
use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::node::v1 as node;
use domicile_cluster_tests::{
    Cluster as _, TestCluster, TestOptions, files_containing, files_under, identifier, node_ref, region, select_ref,
};
use domicile_node::store::pg_store::Keks;
use domicile_types::SubjectId;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const EMAIL: &str = "Erase.Me.PG@Example.de";
const EMAIL_NORMALIZED: &str = "erase.me.pg@example.de";
const PHONE: &str = "+4915112349876";
const PROFILE_VALUE: &str = "erasure-probe-tier-7781";
const SUMMARY: &str = "erasure-probe-summary-5521";

fn kek(args: &[&str], config: &std::path::Path) {
    let out = std::process::Command::new(BIN).arg("kek").args(args).arg("--config").arg(config).output().unwrap();
    assert!(out.status.success(), "kek {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

async fn register(
    gateway: &mut domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient<tonic::transport::Channel>,
    ids: Vec<common::Identifier>,
) -> String {
    gateway
        .register(gw::RegisterRequest { jurisdiction: "DE".into(), identifiers: ids, idempotency_key: String::new() })
        .await
        .unwrap()
        .into_inner()
        .subject_ref
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_erasure_and_the_purge_step_no_file_holds_the_subject_or_a_usable_key() {
    let options = TestOptions { store: ClusterStore::Postgres, ..Default::default() };
    let mut cluster = TestCluster::start_with(BIN, &["eu-central"], options).await.expect("cluster starts");
    let eu = region("eu-central");
    let mut gateway = cluster.gateway().await.unwrap();
    let kept = register(&mut gateway, vec![identifier("email", "kept.subject@example.de")]).await;
    let erased = register(&mut gateway, vec![identifier("email", EMAIL), identifier("phone", PHONE)]).await;

    let mut operator = cluster.node(&eu).await.unwrap();
    operator
        .rectify(node::RectifyRequest {
            subject: node_ref(&erased),
            set_profile: HashMap::from([("tier".to_owned(), PROFILE_VALUE.to_owned())]),
            caller_region: eu.to_string(),
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    operator
        .record_interaction(node::RecordInteractionRequest {
            subject: node_ref(&erased),
            channel: "email".into(),
            kind: "message".into(),
            intent: "billing".into(),
            summary: SUMMARY.into(),
            caller_region: eu.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();

    // The erased subject's wrapped data key as stored, to look for its copies afterwards.
    let db = database_name(&eu);
    let psql = |cluster: &TestCluster, sql: &str| {
        let out = cluster.database().expect("a PostgreSQL cluster").server().psql(&db, sql).unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let rows = psql(&cluster, "SELECT encode(subject, 'hex'), kek, encode(wrapped, 'hex') FROM subject_keys");
    assert_eq!(rows.lines().count(), 2, "one key per subject: {rows}");
    let mut keys = Vec::new();
    for line in rows.lines() {
        let mut fields = line.split('|');
        let subject = hex::decode(fields.next().unwrap()).unwrap();
        let version: i32 = fields.next().unwrap().parse().unwrap();
        let wrapped = hex::decode(fields.next().unwrap()).unwrap();
        keys.push((SubjectId::from_slice(&subject).unwrap(), version, wrapped));
    }

    gateway
        .erase(gw::EraseRequest {
            subject: select_ref(&erased),
            idempotency_key: String::new(),
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let remaining = psql(&cluster, "SELECT count(*) FROM subject_keys");
    assert_eq!(remaining.trim(), "1", "the erased subject's key row is gone");
    let erased_key = {
        let left = psql(&cluster, "SELECT encode(subject, 'hex') FROM subject_keys");
        let left = SubjectId::from_slice(&hex::decode(left.trim()).unwrap()).unwrap();
        keys.iter().find(|(subject, _, _)| *subject != left).cloned().unwrap()
    };

    // The purge step, as deploy/README.md documents it.
    let config = cluster.dir().join("config/node-eu-central.toml");
    let kek_file: PathBuf = cluster.dir().join("data/eu-central/kek");
    let before = Keks::load(&kek_file).unwrap();
    assert!(
        before.unwrap(&erased_key.0, erased_key.1, &erased_key.2).is_ok(),
        "a lingering copy unwraps before the purge"
    );
    kek(&["add"], &config);
    cluster.cluster.restart_node(&eu).await.unwrap();
    kek(&["rewrap"], &config);
    kek(&["retire"], &config);
    cluster.cluster.restart_node(&eu).await.unwrap();
    psql(&cluster, "CHECKPOINT");

    // Every file of the server's data directory, WAL included.
    let data_dir = cluster.database().expect("a PostgreSQL cluster").server().data_dir();
    let files = files_under(&data_dir);
    assert!(files.iter().any(|f| f.to_string_lossy().contains("pg_wal")), "the WAL is searched too");
    for needle in [EMAIL, EMAIL_NORMALIZED, PHONE, &PHONE[1..], PROFILE_VALUE, SUMMARY] {
        assert_eq!(files_containing(&data_dir, needle.as_bytes()), Vec::<PathBuf>::new(), "no file holds it");
    }
    // Copies of the erased subject's wrapped key may linger; none unwraps any more.
    let after = Keks::load(&kek_file).unwrap();
    assert!(!after.versions().contains(&erased_key.1), "the version that wrapped it is retired");
    assert!(after.unwrap(&erased_key.0, erased_key.1, &erased_key.2).is_err(), "no usable key is left");

    // The kept subject's key was re-wrapped: its data still opens and it is decided as before.
    let kept_decision = cluster
        .gateway()
        .await
        .unwrap()
        .decide(gw::DecideRequest {
            subject: select_ref(&kept),
            purpose: "marketing".into(),
            channel: "email".into(),
            at: None,
            ..Default::default()
        })
        .await
        .expect("the kept subject is decided")
        .into_inner();
    assert!(kept_decision.decision.is_some());
    let context = cluster
        .node(&eu)
        .await
        .unwrap()
        .get_context(node::GetContextRequest {
            subject: node_ref(&kept),
            caller_region: eu.to_string(),
            ..Default::default()
        })
        .await;
    assert!(context.is_ok(), "the kept subject's sealed data opens: {context:?}");
}
