//! A write whose audit entries cannot be appended is not made (invariant 5; issue 18;
//! ARCHITECTURE.md "Unit of work"). The node's audit log sits on a tiny tmpfs that the test fills
//! to the last byte, so appending fails for real (ENOSPC) while the node's database does not.
//! Then a consent withdrawal, a registration, a restriction, an export and an erasure are each
//! refused (RESOURCE_EXHAUSTED "the region's disk is full", or UNAVAILABLE "audit log
//! unavailable" where the call has no write of its own to refuse first; through the gateway and
//! directly at the node) and none leaves a trace: the
//! ledger, the restriction flag and the subject's data are as before, no identifier was
//! registered, a watcher sees no change event, and the log holds no partial line; decisions fail
//! closed meanwhile. With the space back, the subject decides as before and the same writes
//! succeed, each audited once.
//!
//! Needs root (it mounts a tmpfs); without it the test says so and does nothing.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::path::Path;
use std::time::Duration;

use domicile_cluster_tests::files::{Tmpfs, fill, is_root};
use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::node::v1 as node;
use domicile_cluster_tests::{Cluster as _, TestCluster, identifier, node_ref, region, select_ref};
use tokio_stream::StreamExt as _;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");

fn entries(data_dir: &Path) -> u64 {
    let report = domicile_audit::verify_file(data_dir).expect("the audit log verifies");
    assert_eq!(report.torn_tail, None, "no partial line");
    report.entries
}

fn consent(subject: &str, action: common::ConsentAction) -> node::RecordConsentRequest {
    node::RecordConsentRequest {
        subject: node_ref(subject),
        purpose: "marketing".into(),
        channels: vec!["email".into()],
        action: action as i32,
        ..Default::default()
    }
}

fn decide(subject: &str) -> node::DecideRequest {
    node::DecideRequest {
        subject: node_ref(subject),
        purpose: "marketing".into(),
        channel: "email".into(),
        at: None,
        ..Default::default()
    }
}

fn unavailable<T: std::fmt::Debug>(result: Result<T, tonic::Status>, what: &str) {
    let status = result.expect_err(what);
    let full = status.code() == Code::ResourceExhausted && status.message().contains("disk is full");
    let unaudited = status.code() == Code::Unavailable && status.message().contains("audit log unavailable");
    assert!(full || unaudited, "{what}: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_cannot_be_audited_leaves_no_trace_and_is_unavailable() {
    if !is_root() {
        eprintln!(
            "SKIPPED: a_write_that_cannot_be_audited_leaves_no_trace_and_is_unavailable mounts a tmpfs: run as root"
        );
        return;
    }
    let mut cluster = TestCluster::start(BIN, &["eu-central"]).await.expect("cluster starts");
    let eu = region("eu-central");
    let mut client = cluster.gateway().await.unwrap();
    let anna = client
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", "anna.audit@example.de")],
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner()
        .subject_ref;
    let mut operator = cluster.node(&eu).await.unwrap();
    operator.record_consent(consent(&anna, common::ConsentAction::Grant)).await.expect("grant");

    // The audit log moves onto a small tmpfs; the node restarts on it.
    cluster.cluster.stop_node(&eu).await.unwrap();
    let data_dir = cluster.cluster.node_data_dir(&eu);
    let tmpfs = Tmpfs::mount(&cluster.dir().join("auditfs"), "1m").unwrap();
    let log = data_dir.join(domicile_audit::FILE_NAME);
    let moved = tmpfs.0.join(domicile_audit::FILE_NAME);
    std::fs::copy(&log, &moved).unwrap();
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&moved, &log).unwrap();
    cluster.cluster.restart_node(&eu).await.unwrap();
    let mut operator = cluster.node(&eu).await.unwrap();
    let mut client = cluster.gateway().await.unwrap();
    fill(&tmpfs.0.join("filler")).unwrap();
    // The log's last page may still have room for a few entries: writes go through until it
    // is full, and the first refused one proves the log is.
    let mut used_slack = 0;
    loop {
        match operator.record_consent(consent(&anna, common::ConsentAction::Grant)).await {
            Ok(_) => used_slack += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                break;
            }
        }
        assert!(used_slack < 64, "the audit log never filled up");
    }
    let audited_before = entries(&data_dir);

    let history = |h: node::ConsentHistoryResponse| (h.entries, h.restricted, h.in_force);
    let before = history(
        operator
            .consent_history(node::ConsentHistoryRequest { subject: node_ref(&anna), ..Default::default() })
            .await
            .unwrap()
            .into_inner(),
    );
    let last_event = {
        let mut all = operator.watch(node::WatchRequest { after_sequence: None }).await.unwrap().into_inner();
        let mut last = None;
        while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(500), all.next()).await {
            last = Some(event.unwrap().sequence);
        }
        last.expect("the registration and the grants are change events")
    };
    let mut watcher =
        operator.watch(node::WatchRequest { after_sequence: Some(last_event) }).await.unwrap().into_inner();

    // Every kind of write is refused, through the gateway and at the node.
    let through_gateway = client
        .record_consent(gw::RecordConsentRequest {
            subject: select_ref(&anna),
            purpose: "marketing".into(),
            channels: vec!["email".into()],
            action: common::ConsentAction::Withdraw as i32,
            ..Default::default()
        })
        .await;
    assert_eq!(through_gateway.expect_err("gateway withdrawal").code(), Code::ResourceExhausted);
    unavailable(operator.record_consent(consent(&anna, common::ConsentAction::Withdraw)).await, "withdrawal");
    let bruno = node::RegisterRequest {
        jurisdiction: "DE".into(),
        identifiers: vec![identifier("email", "bruno.audit@example.de")],
        ..Default::default()
    };
    unavailable(operator.register(bruno.clone()).await, "registration");
    let restrict = node::RestrictRequest { subject: node_ref(&anna), restricted: true, ..Default::default() };
    unavailable(operator.restrict(restrict.clone()).await, "restriction");
    unavailable(
        operator
            .export(node::ExportRequest {
                subject: node_ref(&anna),
                override_reason: "controller_correction".into(),
                ..Default::default()
            })
            .await,
        "export",
    );
    let erase = node::EraseRequest {
        subject: node_ref(&anna),
        override_reason: "controller_correction".into(),
        ..Default::default()
    };
    unavailable(operator.erase(erase.clone()).await, "erasure");

    // Nothing of them is stored: the ledger, the flag and what is in force are as before, the
    // subject's data is still readable (its key was not destroyed).
    let after = history(
        operator
            .consent_history(node::ConsentHistoryRequest { subject: node_ref(&anna), ..Default::default() })
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(after, before, "a refused write changed the subject");
    // A decision cannot be audited either (the reserve is on the database's file system, not
    // the log's): it fails closed, never an unaudited answer.
    let status = operator.decide(decide(&anna)).await.expect_err("decision");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // No event was published, and the log has no partial line and no entry of them.
    let quiet = tokio::time::timeout(Duration::from_secs(1), watcher.next()).await;
    assert!(quiet.is_err(), "a refused write published a change event: {quiet:?}");
    assert_eq!(entries(&data_dir), audited_before, "a refused write left an audit entry");

    // Space back: the same writes succeed, each audited once.
    std::fs::remove_file(tmpfs.0.join("filler")).unwrap();
    let decision = operator.decide(decide(&anna)).await.unwrap().into_inner().decision.unwrap();
    assert_eq!(decision.effect, common::Effect::Allow as i32, "the grant is still in force: {decision:?}");
    let withdrawn = operator.record_consent(consent(&anna, common::ConsentAction::Withdraw)).await;
    let withdrawn = withdrawn.expect("withdrawal with space").into_inner();
    let event = tokio::time::timeout(Duration::from_secs(10), watcher.next())
        .await
        .expect("the withdrawal is published")
        .unwrap()
        .unwrap();
    assert_eq!(event.kind, common::ChangeKind::Consent as i32, "{event:?}");
    assert_eq!(event.state, "withdrawn", "{event:?}");
    assert!(withdrawn.sequence > 0);
    let registered = operator.register(bruno).await.expect("registration with space").into_inner();
    assert!(registered.created, "the refused registration had created the subject");
    operator.erase(erase).await.expect("erasure with space");
    // A decision, a withdrawal, a registration, and an erasure with its rights request.
    assert_eq!(entries(&data_dir), audited_before + 5);

    cluster.stop().await;
    drop(tmpfs);
}
