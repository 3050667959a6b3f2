//! A node whose whole data directory (sled database, key slots, audit log) is on a small tmpfs
//! that fills up (real processes, real ENOSPC): writes are refused with a clear status once it
//! is full, decisions keep being answered, no acknowledged write is lost, the audit chain stays
//! valid, and once space returns writes are accepted again. Needs root (it mounts a tmpfs);
//! without it the test prints SKIPPED and passes.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::time::Duration;

use domicile_cluster_tests::files::{Tmpfs, copy_dir, fill, is_root};
use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::{Cluster as _, TestCluster, identifier, region, select_email};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const EMAIL: &str = "full.disk@example.de";

fn consent(action: common::ConsentAction, purpose: &str) -> gw::RecordConsentRequest {
    gw::RecordConsentRequest {
        subject: select_email(EMAIL),
        purpose: purpose.into(),
        channels: vec!["email".into()],
        action: action as i32,
        evidence: Some(common::Evidence {
            notice_version: "v3".into(),
            double_opt_in_confirmed: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn decide(cluster: &TestCluster, purpose: &str) -> Result<i32, tonic::Status> {
    let mut gateway = cluster.gateway().await.unwrap();
    let request = gw::DecideRequest {
        subject: select_email(EMAIL),
        purpose: purpose.into(),
        channel: "email".into(),
        at: None,
        ..Default::default()
    };
    gateway.decide(request).await.map(|r| r.into_inner().decision.unwrap().effect)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_deciding_loses_nothing_and_recovers() {
    if !is_root() {
        eprintln!(
            "SKIPPED: a_full_disk_refuses_writes_keeps_deciding_loses_nothing_and_recovers mounts a tmpfs: run as root"
        );
        return;
    }
    let mut cluster = TestCluster::start(BIN, &["eu-central"]).await.expect("cluster starts");
    let eu = region("eu-central");
    let mut gateway = cluster.gateway().await.unwrap();
    let request = gw::RegisterRequest {
        jurisdiction: "DE".into(),
        identifiers: vec![identifier("email", EMAIL)],
        idempotency_key: String::new(),
    };
    gateway.register(request).await.unwrap();
    gateway.record_consent(consent(common::ConsentAction::Grant, "marketing")).await.unwrap();

    // The node's whole data directory moves onto a 64 MiB tmpfs; the node restarts on it.
    cluster.cluster.stop_node(&eu).await.unwrap();
    let data_dir = cluster.cluster.node_data_dir(&eu);
    let tmpfs = Tmpfs::mount(&cluster.dir().join("datafs"), "64m").unwrap();
    let on_tmpfs = tmpfs.0.join("eu-central");
    copy_dir(&data_dir, &on_tmpfs).unwrap();
    std::fs::remove_dir_all(&data_dir).unwrap();
    std::os::unix::fs::symlink(&on_tmpfs, &data_dir).unwrap();
    cluster.cluster.restart_node(&eu).await.unwrap();
    cluster.restart_gateway().await.unwrap();
    let mut gateway = cluster.gateway().await.unwrap();
    assert_eq!(decide(&cluster, "marketing").await.unwrap(), common::Effect::Allow as i32);

    fill(&tmpfs.0.join("filler")).unwrap();
    // Writes until the first refusal (sled and the log may have room left in their last pages):
    // every acknowledged one is counted, and must be there afterwards.
    let mut acknowledged = 0;
    let refused = loop {
        let action = if acknowledged % 2 == 0 { common::ConsentAction::Deny } else { common::ConsentAction::Grant };
        match gateway.record_consent(consent(action, "survey")).await {
            Ok(_) => acknowledged += 1,
            Err(status) => break status,
        }
        assert!(acknowledged < 10_000, "writes never refused on a full disk");
    };
    eprintln!("full: {acknowledged} writes acknowledged before the first refusal: {refused:?}");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("disk is full"), "{refused:?}");
    // Decisions keep being answered from what is stored.
    for _ in 0..5 {
        assert_eq!(decide(&cluster, "marketing").await.unwrap(), common::Effect::Allow as i32);
    }
    // Further writes are refused too, quickly.
    let again = gateway.record_consent(consent(common::ConsentAction::Withdraw, "marketing")).await.unwrap_err();
    assert_eq!(again.code(), Code::ResourceExhausted, "{again:?}");

    // Space returns: writes are accepted again, without a restart.
    std::fs::remove_file(tmpfs.0.join("filler")).unwrap();
    let recovered = domicile_cluster_tests::eventually(Duration::from_secs(10), || {
        let mut gateway = gateway.clone();
        async move { gateway.record_consent(consent(common::ConsentAction::Grant, "research")).await.ok() }
    })
    .await;
    assert!(recovered.is_some(), "writes accepted again once space returned");

    // Nothing acknowledged is lost, across a restart too, and the chain verifies.
    cluster.cluster.restart_node(&eu).await.unwrap();
    cluster.restart_gateway().await.unwrap();
    let mut gateway = cluster.gateway().await.unwrap();
    let history = gateway
        .consent_history(gw::ConsentHistoryRequest { subject: select_email(EMAIL), ..Default::default() })
        .await
        .unwrap();
    let surveys = history.get_ref().entries.iter().filter(|e| e.purpose == "survey").count();
    assert!(surveys >= acknowledged, "acknowledged {acknowledged}, stored {surveys}");
    assert_eq!(decide(&cluster, "marketing").await.unwrap(), common::Effect::Allow as i32);
    cluster.stop().await;
    domicile_audit::verify_file(&on_tmpfs).expect("the audit chain verifies");
}
