//! The directory stays current from node change events: a second gateway that never saw a
//! request learns registrations and erasures made through another gateway.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::time::Duration;

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_cluster_tests::{Cluster as _, ScenarioCluster, eventually};
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
/// Propagation bound: events are pushed as soon as they are durable; this is generous for CI.
const PROPAGATION: Duration = Duration::from_secs(10);

fn email(value: &str) -> common::Identifier {
    common::Identifier { kind: "email".into(), value: value.into() }
}

async fn resolve(client: &mut DomicileClient<Channel>, value: &str) -> Result<gw::ResolveResponse, tonic::Status> {
    client.resolve(gw::ResolveRequest { identifier: Some(email(value)) }).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_learns_registrations_and_erasures_from_node_events() {
    let cluster = ScenarioCluster::start(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let mut a = cluster.gateway().await.unwrap();
    // Registered before gateway B exists: B must find it through its start-up load.
    let early = a
        .register(gw::RegisterRequest {
            jurisdiction: "US".into(),
            identifiers: vec![email("early.dir@example.com")],
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();

    let second = cluster.start_gateway("b", &[]).await.expect("second gateway starts");
    let mut b = cluster.gateway_at(second.addr).await.unwrap();
    assert_eq!(resolve(&mut b, "early.dir@example.com").await.unwrap().subject_ref, early.subject_ref);
    assert_eq!(resolve(&mut b, "late.dir@example.de").await.unwrap_err().code(), Code::NotFound);

    // Registered through A after B started: B learns it from the node's change stream.
    let late = a
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![email("late.dir@example.de")],
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let seen = eventually(PROPAGATION, || {
        let mut b = b.clone();
        async move { resolve(&mut b, "late.dir@example.de").await.ok() }
    })
    .await
    .expect("gateway B resolves a subject registered through gateway A");
    assert_eq!(seen.subject_ref, late.subject_ref);
    assert_eq!(seen.home_region, "eu-central");

    // Erased through A: B forgets both subjects' links.
    for value in ["late.dir@example.de", "early.dir@example.com"] {
        let selector = gw::SubjectSelector { selector: Some(gw::subject_selector::Selector::Identifier(email(value))) };
        a.erase(gw::EraseRequest {
            subject: Some(selector),
            idempotency_key: String::new(),
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let gone = eventually(PROPAGATION, || {
            let mut b = b.clone();
            async move { (resolve(&mut b, value).await.err()?.code() == Code::NotFound).then_some(()) }
        })
        .await;
        assert!(gone.is_some(), "gateway B forgets an erased subject");
    }
}

/// Found by a review: a write retried after its reply was lost is answered again from its
/// idempotency record, and that reply may be older than what the change events said since. A
/// replayed registration mapped an identifier back to the subject a rectification had taken it
/// from, so this gateway decided with another person's consent (an allow where every other
/// gateway refused). A reply is now applied only if the gateway has not applied the region's
/// events that far.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_registration_never_maps_an_identifier_back_to_a_subject_that_lost_it() {
    let cluster = ScenarioCluster::start(BIN, &["eu-central"]).await.expect("cluster starts");
    let mut g = cluster.gateway().await.unwrap();
    let (mail, phone) = ("moved.dir@example.de", "+4915112345678");
    let phone_id = || common::Identifier { kind: "phone".into(), value: phone.into() };
    let registration = gw::RegisterRequest {
        jurisdiction: "DE".into(),
        identifiers: vec![email(mail), phone_id()],
        idempotency_key: "reg-lost-reply-1".into(),
    };
    let first = g.register(registration.clone()).await.unwrap().into_inner();
    let by = |identifier: common::Identifier| {
        Some(gw::SubjectSelector { selector: Some(gw::subject_selector::Selector::Identifier(identifier)) })
    };
    // The first subject grants marketing email.
    g.record_consent(gw::RecordConsentRequest {
        subject: by(phone_id()),
        purpose: "marketing".into(),
        channels: vec!["email".into()],
        action: common::ConsentAction::Grant as i32,
        evidence: Some(common::Evidence {
            notice_version: "v3".into(),
            capture_channel: "web".into(),
            source_system: "shop".into(),
            double_opt_in_confirmed: true,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    // The email was not theirs: removed from them, then registered to its owner.
    g.rectify(gw::RectifyRequest {
        subject: by(phone_id()),
        remove_identifiers: vec![email(mail)],
        override_reason: "controller_correction".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let owner = g
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![email(mail)],
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(owner.subject_ref, first.subject_ref);
    let decide = async |g: &mut DomicileClient<Channel>| {
        let request = gw::DecideRequest {
            subject: by(email(mail)),
            purpose: "marketing".into(),
            channel: "email".into(),
            ..Default::default()
        };
        g.decide(request).await.unwrap().into_inner().decision.unwrap()
    };
    // This gateway has applied the region's events that far.
    let until = tokio::time::Instant::now() + PROPAGATION;
    while decide(&mut g).await.subject_ref != owner.subject_ref {
        assert!(tokio::time::Instant::now() < until, "the email names its owner in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The caller whose first reply was lost retries with its key: answered as the first time.
    let replay = g.register(registration).await.unwrap().into_inner();
    assert_eq!(replay.subject_ref, first.subject_ref, "a replay answers as the first time");
    let d = decide(&mut g).await;
    assert_eq!(d.subject_ref, owner.subject_ref, "the email still names its owner");
    assert_eq!(d.effect, common::Effect::Deny as i32, "never the first subject's grant: {}", d.explanation);
    assert_eq!(resolve(&mut g, mail).await.unwrap().subject_ref, owner.subject_ref);
}
