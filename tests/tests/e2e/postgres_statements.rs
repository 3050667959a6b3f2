//! A node prepares its PostgreSQL statements once per connection (node/src/store/pg_store/
//! prepared.rs). A schema change under the running node (a rolling upgrade whose migration alters
//! a column the node selects) makes the server refuse those cached statements ("cached plan must
//! not change result type"). The calls that meet such a statement fail closed, and the node must
//! then heal by itself, without a restart: it drops the refused statement and prepares it again.
//! On a real server, with every pooled connection holding the statement first.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use domicile_cli::cluster::{ClusterStore, database_name};
use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::node::v1 as node;
use domicile_cluster_tests::{Cluster as _, TestCluster, TestOptions, identifier, node_ref, region};

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
/// Calls in flight at once while warming up: more than the node's pooled connections, so that
/// every connection prepares the statements.
const WARM_UP: usize = 32;

fn grant(subject: &str, key: String) -> node::RecordConsentRequest {
    node::RecordConsentRequest {
        subject: node_ref(subject),
        purpose: "marketing".into(),
        channels: vec!["email".into()],
        action: common::ConsentAction::Grant as i32,
        evidence: Some(common::Evidence {
            notice_version: "privacy-notice-v3".into(),
            capture_channel: "web".into(),
            source_system: "web-shop".into(),
            double_opt_in_confirmed: true,
            ..Default::default()
        }),
        caller_region: "eu-central".into(),
        idempotency_key: key,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_the_server_refuses_after_a_schema_change_is_prepared_again() {
    let options = TestOptions { store: ClusterStore::Postgres, ..Default::default() };
    let cluster = TestCluster::start_with(BIN, &["eu-central"], options).await.expect("cluster starts");
    let eu = region("eu-central");
    let client = cluster.node(&eu).await.unwrap();
    let subject = client
        .clone()
        .register(node::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", "statements@example.de")],
            caller_region: "eu-central".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .subject_ref;

    // Every pooled connection reads the subject's metadata (by subject ref: one statement that
    // selects `jurisdiction`) and so holds that statement prepared.
    for round in 0..3 {
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..WARM_UP {
            let (mut client, subject) = (client.clone(), subject.clone());
            calls.spawn(async move { client.record_consent(grant(&subject, format!("warm-{round}-{i}"))).await });
        }
        while let Some(done) = calls.join_next().await {
            done.unwrap().expect("a write before the schema change");
        }
    }

    // What a newer build's migration might do: the selected column changes type.
    let db = database_name(&eu);
    let server = cluster.database().expect("a PostgreSQL cluster").server();
    let out = server.psql(&db, "ALTER TABLE subjects ALTER COLUMN jurisdiction TYPE varchar(16)").unwrap();
    assert!(out.status.success(), "ALTER TABLE: {}", String::from_utf8_lossy(&out.stderr));

    // Calls meet the refused statement at most once per connection that holds it, then succeed.
    let mut outcomes = Vec::new();
    for i in 0..60 {
        let answer = client.clone().record_consent(grant(&subject, format!("after-{i}"))).await;
        if let Err(status) = &answer {
            assert_eq!(status.code(), tonic::Code::Unavailable, "fails closed: {status:?}");
        }
        outcomes.push(answer.is_ok());
    }
    let failed = outcomes.iter().filter(|ok| !**ok).count();
    assert!(outcomes[30..].iter().all(|ok| *ok), "the node heals without a restart: {outcomes:?}");
    // The node's pool has 4 connections (`cluster up`'s default), each holding the statement once.
    assert!(
        (1..=8).contains(&failed),
        "the schema change met the cached statement, about once per connection: {failed}"
    );

    // Every acknowledged write is in the ledger once, and the decision reads it.
    let history = client
        .clone()
        .consent_history(node::ConsentHistoryRequest { subject: node_ref(&subject), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.entries.len(), 3 * WARM_UP + outcomes.len() - failed, "acknowledged writes, once each");
    let decision = client
        .clone()
        .decide(node::DecideRequest {
            subject: node_ref(&subject),
            purpose: "marketing".into(),
            channel: "email".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(decision.effect, common::Effect::Allow as i32);
}
