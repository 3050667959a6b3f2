//! The gateway's Watch merges every region's change events and resumes from a token.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::time::Duration;

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::{Cluster as _, ScenarioCluster};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const WAIT: Duration = Duration::from_secs(10);

fn email(value: &str) -> common::Identifier {
    common::Identifier { kind: "email".into(), value: value.into() }
}

async fn next(stream: &mut tonic::Streaming<gw::WatchEvent>) -> gw::WatchEvent {
    tokio::time::timeout(WAIT, stream.message()).await.expect("an event in time").unwrap().expect("stream open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_merges_every_region_and_resumes_from_a_token() {
    let cluster = ScenarioCluster::start(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let de = client
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![email("watch.de@example.de")],
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let us = client
        .register(gw::RegisterRequest {
            jurisdiction: "US".into(),
            identifiers: vec![email("watch.us@example.com")],
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();

    let mut stream = client.watch(gw::WatchRequest { resume_token: String::new() }).await.unwrap().into_inner();
    let first = next(&mut stream).await;
    let second = next(&mut stream).await;
    let mut refs: Vec<String> =
        [&first, &second].iter().map(|e| e.event.as_ref().unwrap().subject_ref.clone()).collect();
    refs.sort();
    let mut expected = vec![de.subject_ref.clone(), us.subject_ref.clone()];
    expected.sort();
    assert_eq!(refs, expected, "both regions' registrations on one stream");
    let token = second.resume_token.clone();
    drop(stream);

    // Changes while disconnected, in both regions.
    for (value, channel) in [("watch.de@example.de", "sms"), ("watch.us@example.com", "email")] {
        client
            .record_consent(gw::RecordConsentRequest {
                subject: Some(gw::SubjectSelector {
                    selector: Some(gw::subject_selector::Selector::Identifier(email(value))),
                }),
                purpose: "marketing".into(),
                channels: vec![channel.into()],
                action: common::ConsentAction::Deny as i32,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut resumed = client.watch(gw::WatchRequest { resume_token: token }).await.unwrap().into_inner();
    let mut missed = [next(&mut resumed).await, next(&mut resumed).await];
    missed.sort_by_key(|e| e.event.as_ref().unwrap().region.clone());
    let kinds: Vec<(String, i32, String)> = missed
        .iter()
        .map(|e| {
            let e = e.event.as_ref().unwrap();
            (e.region.clone(), e.kind, e.channels.join(","))
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("eu-central".to_owned(), common::ChangeKind::Consent as i32, "sms".to_owned()),
            ("us-east".to_owned(), common::ChangeKind::Consent as i32, "email".to_owned()),
        ],
        "exactly the missed events, none replayed"
    );
    assert!(
        missed.iter().all(|e| e.event.as_ref().is_some_and(|e| !e.conditional && e.expires_at.is_none())),
        "a refusal carries no grant terms"
    );
    // Nothing else is pending.
    assert!(tokio::time::timeout(Duration::from_millis(300), resumed.message()).await.is_err());

    // A grant reaches the watcher with the terms it holds under: a follower told only "granted"
    // would keep sending after it lapsed, where every decision refuses.
    let now = domicile_runtime::process::now_unix();
    let timestamp = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
    client
        .record_consent(gw::RecordConsentRequest {
            subject: Some(gw::SubjectSelector {
                selector: Some(gw::subject_selector::Selector::Identifier(email("watch.us@example.com"))),
            }),
            purpose: "marketing".into(),
            channels: vec!["sms".into()],
            action: common::ConsentAction::Grant as i32,
            captured_at: timestamp(now - 60),
            expires_at: timestamp(now + 3_600),
            evidence: Some(common::Evidence {
                notice_version: "privacy-notice-v3".into(),
                capture_channel: "web".into(),
                source_system: "web-shop".into(),
                double_opt_in_confirmed: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let grant = next(&mut resumed).await.event.unwrap();
    assert_eq!((grant.state.as_str(), grant.channels.as_slice()), ("granted", ["sms".to_owned()].as_slice()));
    assert_eq!(grant.expires_at.map(|t| t.seconds), Some(now + 3_600), "its expiry");
    assert!(!grant.conditional, "express, any hour");

    let status = client.watch(gw::WatchRequest { resume_token: "v1:mars-north=1".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}
