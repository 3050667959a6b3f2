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
