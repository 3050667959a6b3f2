//! A write whose outcome the gateway cannot know (issue 17, item 7; ARCHITECTURE.md "Outcome of
//! a write that timed out; idempotency keys"): with the home node paused (SIGSTOP) the request
//! reaches its socket but gets no answer, so the gateway answers DEADLINE_EXCEEDED naming the
//! idempotency key to retry with, never UNAVAILABLE ("not done"), which it may well be once the
//! node resumes. A retry with that key is applied at most once; the key with another request is
//! INVALID_ARGUMENT; a caller's own key works the same for Register. A node that is gone (killed,
//! connection refused) never got the write: UNAVAILABLE, and nothing is applied.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::time::{Duration, Instant};

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_cluster_tests::{Cluster as _, Paused, TestCluster, eventually, identifier, region, select_ref};
use tonic::transport::Channel;
use tonic::{Code, Status};

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const KEY_METADATA: &str = "domicile-idempotency-key";
/// Longer than the gateway's node timeout (2 s by default), so the gateway answers first.
const CALLER_DEADLINE: Duration = Duration::from_secs(10);

type Client = DomicileClient<Channel>;

fn with_deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALLER_DEADLINE);
    request
}

fn withdrawal(subject: &str, key: &str) -> gw::RecordConsentRequest {
    gw::RecordConsentRequest {
        subject: select_ref(subject),
        purpose: "marketing".into(),
        channels: vec!["email".into()],
        action: common::ConsentAction::Withdraw as i32,
        idempotency_key: key.into(),
        ..Default::default()
    }
}

fn registration(email: &str, key: &str) -> gw::RegisterRequest {
    gw::RegisterRequest {
        jurisdiction: "US".into(),
        identifiers: vec![identifier("email", email)],
        idempotency_key: key.into(),
    }
}

async fn effect(client: &mut Client, subject: &str) -> common::Effect {
    let decision = client
        .decide(gw::DecideRequest {
            subject: select_ref(subject),
            purpose: "marketing".into(),
            channel: "email".into(),
            at: None,
            ..Default::default()
        })
        .await
        .expect("decide")
        .into_inner()
        .decision
        .expect("a decision");
    common::Effect::try_from(decision.effect).unwrap()
}

/// The ledger, read as a caller of the subject's home region (it stays home).
async fn history(cluster: &impl domicile_cluster_tests::Cluster, subject: &str) -> Vec<common::ConsentEntry> {
    cluster.history_at_home(select_ref(subject)).await.expect("history").entries
}

/// The outcome is unknown: DEADLINE_EXCEEDED, with the key to retry with and nothing personal.
fn assert_unknown(status: &Status, elapsed: Duration, what: &str) -> String {
    assert_eq!(status.code(), Code::DeadlineExceeded, "{what} to a paused node: {status:?}");
    assert!(elapsed < Duration::from_secs(5), "{what}: answered by the gateway's node timeout, not ours: {elapsed:?}");
    assert!(!status.message().contains("example.com"), "{what}: no personal data: {}", status.message());
    status
        .metadata()
        .get(KEY_METADATA)
        .unwrap_or_else(|| panic!("{what}: no {KEY_METADATA} metadata: {status:?}"))
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_timed_out_is_unknown_and_its_retry_is_applied_once() {
    let mut cluster = TestCluster::start_on_env_store(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let us = region("us-east");
    let mut client = cluster.gateway().await.unwrap();
    let subject =
        client.register(registration("paused.write@example.com", "")).await.expect("register").into_inner().subject_ref;
    assert_eq!(effect(&mut client, &subject).await, common::Effect::Allow, "US email marketing is opt-out");

    // Pause us-east and send two writes at once: a withdrawal with no key of the caller's, and a
    // registration with the caller's own key.
    let caller_key = "signup-form:4711";
    let paused = Paused::node(&cluster, &us).expect("SIGSTOP");
    let started = Instant::now();
    let (mut c1, mut c2) = (client.clone(), client.clone());
    let (withdrawn, registered) = tokio::join!(
        c1.record_consent(with_deadline(withdrawal(&subject, ""))),
        c2.register(with_deadline(registration("paused.signup@example.com", caller_key))),
    );
    let elapsed = started.elapsed();
    let withdrawn = withdrawn.expect_err("a paused node does not answer");
    let key = assert_unknown(&withdrawn, elapsed, "RecordConsent");
    assert!(!key.is_empty());
    let registered = registered.expect_err("a paused node does not answer");
    assert_eq!(assert_unknown(&registered, elapsed, "Register"), caller_key, "the caller's own key is named");
    println!("DEADLINE_EXCEEDED after {elapsed:?}, gateway's key {key:?}");
    drop(paused);

    // Whether or not the node applied them on resuming, the retries with the keys are applied
    // once. Informational: did the paused withdrawal get applied on resume?
    let reader = &cluster;
    let applied = eventually(Duration::from_millis(500), || {
        let s = subject.clone();
        async move { (!history(reader, &s).await.is_empty()).then_some(()) }
    })
    .await;
    println!(
        "the paused withdrawal was {}applied when the node resumed",
        if applied.is_some() { "" } else { "not (yet) " }
    );
    let first = client.record_consent(withdrawal(&subject, &key)).await.expect("retry with the key").into_inner();
    let again = client.record_consent(withdrawal(&subject, &key)).await.expect("and again").into_inner();
    assert_eq!(again, first, "a repeat is answered as the first time");
    let ledger = history(&cluster, &subject).await;
    assert_eq!(ledger.len(), 1, "exactly one withdrawal in the ledger: {ledger:?}");
    assert_eq!((ledger[0].sequence, ledger[0].state.as_str()), (first.sequence, "withdrawn"));
    assert_eq!(effect(&mut client, &subject).await, common::Effect::Deny);

    // The same key with a different request: refused, and nothing written.
    let mut grant = withdrawal(&subject, &key);
    grant.action = common::ConsentAction::Grant as i32;
    let status = client.record_consent(grant).await.expect_err("another request under the key");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("idempotency_key"), "{}", status.message());
    assert_eq!(history(&cluster, &subject).await.len(), 1);
    assert_eq!(effect(&mut client, &subject).await, common::Effect::Deny);

    // Register under the caller's key: one subject, the identical answer each time (`created`
    // included: a registration without the key now says the subject already existed).
    let first = client.register(registration("paused.signup@example.com", caller_key)).await.expect("retry");
    let first = first.into_inner();
    let again = client.register(registration("paused.signup@example.com", caller_key)).await.unwrap().into_inner();
    assert_eq!(again, first);
    assert!(first.created, "the recorded answer of the write that created the subject");
    let unkeyed = client.register(registration("paused.signup@example.com", "")).await.unwrap().into_inner();
    assert_eq!((unkeyed.subject_ref.as_str(), unkeyed.created), (first.subject_ref.as_str(), false), "one subject");
    let status = client
        .register(registration("other.signup@example.com", caller_key))
        .await
        .expect_err("another registration under the key");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(!status.message().contains("example.com"), "{}", status.message());

    // A node that is gone: the connection is refused, the write never left the gateway, so it is
    // UNAVAILABLE (not unknown) and nothing is applied.
    let other = client.register(registration("killed.node@example.com", "")).await.unwrap().into_inner().subject_ref;
    cluster.cluster.kill_node(&us).await.unwrap();
    // Let the gateway see its connection close, so the write dials (and is refused). A call
    // handed to the old connection before the gateway noticed would have been written to a dead
    // socket, which the gateway cannot tell from a node that died after reading it (unknown); a
    // decision absorbs that case, should the close not have been noticed yet.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let decision = client
        .decide(gw::DecideRequest {
            subject: select_ref(&other),
            purpose: "marketing".into(),
            channel: "email".into(),
            at: None,
            ..Default::default()
        })
        .await;
    assert_eq!(decision.map_err(|s| s.code()).err(), Some(Code::Unavailable), "a down region never decides");
    let started = Instant::now();
    let status = client.record_consent(with_deadline(withdrawal(&other, ""))).await.expect_err("the node is gone");
    println!("write to a killed node: {:?} after {:?}: {}", status.code(), started.elapsed(), status.message());
    assert_eq!(status.code(), Code::Unavailable, "never sent, so not an unknown outcome: {status:?}");
    assert!(status.metadata().get(KEY_METADATA).is_none(), "nothing to retry with a key: {status:?}");
    cluster.cluster.restart_node(&us).await.unwrap();
    let reader = &cluster;
    let served = eventually(Duration::from_secs(10), || {
        let s = other.clone();
        async move { reader.history_at_home(select_ref(&s)).await.ok() }
    })
    .await
    .expect("us-east is served again");
    assert!(served.entries.is_empty(), "the refused write was not applied");
    assert_eq!(effect(&mut client, &other).await, common::Effect::Allow);
}
