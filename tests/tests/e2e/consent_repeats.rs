//! A consent write repeated under its idempotency key, through the gateway, on either store
//! (`DOMICILE_TEST_STORE=postgres` for PostgreSQL). The node finds a repeat inside the store's
//! write, not by reading the key first (node/src/service/consent/mod.rs), so what the caller sees
//! must stay what it was:
//! - a repeat is answered with the first write's record and adds nothing to the ledger, also when
//!   copies race each other;
//! - the key sent with another request is INVALID_ARGUMENT;
//! - a repeat whose subject has been merged away since (and its key with it) is ALREADY_EXISTS and
//!   writes nothing, whether it names the retired subject ref (the write itself can no longer
//!   happen) or the identifier, which now leads to the remaining subject.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_cluster_tests::{Cluster as _, ScenarioCluster, identifier, select_email, select_ref};
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");

async fn register(gateway: &mut DomicileClient<Channel>, email: &str) -> String {
    let request = gw::RegisterRequest {
        jurisdiction: "DE".into(),
        identifiers: vec![identifier("email", email)],
        idempotency_key: String::new(),
    };
    gateway.register(request).await.unwrap().into_inner().subject_ref
}

fn grant(subject: Option<gw::SubjectSelector>, action: common::ConsentAction, key: &str) -> gw::RecordConsentRequest {
    gw::RecordConsentRequest {
        subject,
        purpose: "marketing".into(),
        channels: vec!["email".into()],
        action: action as i32,
        evidence: Some(common::Evidence {
            notice_version: "privacy-notice-v3".into(),
            capture_channel: "web".into(),
            source_system: "web-shop".into(),
            double_opt_in_confirmed: true,
            ..Default::default()
        }),
        captured_at: None,
        expires_at: None,
        idempotency_key: key.into(),
    }
}

async fn ledger_len(gateway: &mut DomicileClient<Channel>, email: &str) -> usize {
    let history = gateway
        .consent_history(gw::ConsentHistoryRequest { subject: select_email(email), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    history.entries.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_consent_write_is_applied_once_and_answered_as_its_key_says_even_after_a_merge() {
    let cluster = ScenarioCluster::start(BIN, &["eu-central"]).await.expect("cluster starts");
    let mut gateway = cluster.gateway().await.unwrap();
    let (kept, merged) = ("repeat.kept@example.de", "repeat.merged@example.de");
    let kept_ref = register(&mut gateway, kept).await;
    let merged_ref = register(&mut gateway, merged).await;

    // By subject ref and by identifier, each under its own key.
    let by_ref = grant(select_ref(&merged_ref), common::ConsentAction::Grant, "repeat-by-ref");
    let by_email = grant(select_email(merged), common::ConsentAction::Withdraw, "repeat-by-email");
    let first_by_ref = gateway.record_consent(by_ref.clone()).await.unwrap().into_inner();
    let first_by_email = gateway.record_consent(by_email.clone()).await.unwrap().into_inner();
    assert_ne!(first_by_ref.sequence, first_by_email.sequence);

    // A plain repeat: the same record, nothing added.
    for (request, first) in [(&by_ref, &first_by_ref), (&by_email, &first_by_email)] {
        let again = gateway.record_consent(request.clone()).await.unwrap().into_inner();
        assert_eq!(
            (again.sequence, &again.subject_ref),
            (first.sequence, &first.subject_ref),
            "answered as the first time"
        );
    }
    assert_eq!(ledger_len(&mut gateway, merged).await, 2, "each key applied once");

    // Copies racing each other: no first record to read beforehand, the store's write decides.
    let racing = grant(select_ref(&merged_ref), common::ConsentAction::Grant, "repeat-racing");
    let mut copies = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (mut gateway, request) = (gateway.clone(), racing.clone());
        copies.spawn(async move { gateway.record_consent(request).await.map(|r| r.into_inner().sequence) });
    }
    let mut sequences = std::collections::BTreeSet::new();
    while let Some(copy) = copies.join_next().await {
        sequences.insert(copy.unwrap().expect("every copy is answered"));
    }
    assert_eq!(sequences.len(), 1, "every copy answered with the one record: {sequences:?}");
    assert_eq!(ledger_len(&mut gateway, merged).await, 3, "racing copies applied once");

    // The key with another request: refused, and nothing written.
    let mut other = by_ref.clone();
    other.action = common::ConsentAction::Withdraw as i32;
    let refused = gateway.record_consent(other).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("idempotency_key"), "names the field: {}", refused.message());
    assert_eq!(ledger_len(&mut gateway, merged).await, 3, "a refused repeat writes nothing");

    // Merged away: the subject ref no longer names a subject, the identifier now leads to `kept`.
    gateway
        .merge(gw::MergeRequest {
            into: select_ref(&kept_ref),
            from: select_ref(&merged_ref),
            idempotency_key: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(ledger_len(&mut gateway, kept).await, 3, "the merged ledger moved to the subject that remains");
    for request in [&by_ref, &by_email] {
        // The answer was sealed with the merged subject's key, erased by the merge.
        let again = gateway.record_consent(request.clone()).await.unwrap_err();
        assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");
    }
    assert_eq!(ledger_len(&mut gateway, kept).await, 3, "no repeat wrote again after the merge");

    // A new key after the merge is a new write, on the subject that remains.
    let fresh = gateway
        .record_consent(grant(select_email(merged), common::ConsentAction::Grant, "repeat-after-merge"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fresh.subject_ref, kept_ref);
    assert_eq!(ledger_len(&mut gateway, kept).await, 4);
}

/// Found by an attacker's review: write keys were scoped by the caller's name alone, so a caller
/// of one name in another region could answer or refuse another's write with the same key (a
/// different request: INVALID_ARGUMENT; the same: the other's recorded answer). Two callers of
/// one name in two regions are two callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_a_caller_of_the_same_name_in_another_region_is_not_its_key() {
    use domicile_runtime::identity::Scope;
    let cluster = ScenarioCluster::start(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let mut admin = cluster.gateway().await.unwrap();
    let (first, second) = ("same.key.one@example.de", "same.key.two@example.de");
    register(&mut admin, first).await;
    register(&mut admin, second).await;
    let scopes = [Scope::Capture, Scope::Context];
    // (Issued one after the other into the same file names: each client reads its own first.)
    let mut us = cluster.gateway_as(&cluster.issue_caller("agent", "us-east", &scopes).unwrap()).await.unwrap();
    let mut eu = cluster.gateway_as(&cluster.issue_caller("agent", "eu-central", &scopes).unwrap()).await.unwrap();
    let key = "shared-key-1";
    let a = us.record_consent(grant(select_email(first), common::ConsentAction::Grant, key)).await.unwrap();
    let b = eu.record_consent(grant(select_email(second), common::ConsentAction::Grant, key)).await;
    let b = b.expect("another caller's key: its own write, not INVALID_ARGUMENT");
    assert_ne!(a.get_ref().sequence, b.get_ref().sequence, "two writes, not one answered twice");
    assert_eq!(ledger_len(&mut eu, second).await, 1);
    // The same request under the same key by the other caller is its own write too.
    let c = eu.record_consent(grant(select_email(first), common::ConsentAction::Grant, key)).await;
    assert!(c.is_err() || c.as_ref().is_ok_and(|c| c.get_ref().sequence != a.get_ref().sequence), "{c:?}");
}
