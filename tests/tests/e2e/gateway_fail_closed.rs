//! Fail closed, stay up: with one region's node killed, its subjects get UNAVAILABLE (never an
//! allow) through unary and batch decisions, other regions are served, and the region is served
//! again within seconds of its return. Also covers batch decisions end to end.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_cluster_tests::select_email as by_email;
use domicile_cluster_tests::{Cluster as _, TestCluster, eventually, region};
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");

fn decide_req(value: &str) -> gw::DecideRequest {
    gw::DecideRequest {
        subject: by_email(value),
        purpose: "marketing".into(),
        channel: "email".into(),
        at: None,
        ..Default::default()
    }
}

async fn register(client: &mut DomicileClient<Channel>, jurisdiction: &str, value: &str) {
    client
        .register(gw::RegisterRequest {
            jurisdiction: jurisdiction.into(),
            identifiers: vec![common::Identifier { kind: "email".into(), value: value.into() }],
            idempotency_key: String::new(),
        })
        .await
        .expect("register");
}

fn item(id: u64, value: &str, purpose: &str) -> gw::DecideStreamItem {
    gw::DecideStreamItem {
        id,
        subject: by_email(value),
        purpose: purpose.into(),
        channel: "email".into(),
        ..Default::default()
    }
}

/// Sends `items` through DecideStream and returns the results by id (each id exactly once).
async fn decide_stream(
    client: &mut DomicileClient<Channel>,
    items: Vec<gw::DecideStreamItem>,
) -> HashMap<u64, gw::decide_stream_result::Result> {
    let expected = items.len();
    let mut results = client.decide_stream(tokio_stream::iter(items)).await.expect("stream opens").into_inner();
    let mut by_id = HashMap::new();
    while let Some(result) = results.message().await.expect("stream stays up") {
        let previous = by_id.insert(result.id, result.result.expect("every result has an outcome"));
        assert!(previous.is_none(), "id {} answered twice", result.id);
    }
    assert_eq!(by_id.len(), expected, "every item answered");
    by_id
}

fn effect_of(result: &gw::decide_stream_result::Result) -> Result<common::Effect, Code> {
    match result {
        gw::decide_stream_result::Result::Decision(d) => Ok(common::Effect::try_from(d.effect).unwrap()),
        gw::decide_stream_result::Result::Error(e) => Err(Code::from(e.code)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_region_fails_closed_while_others_are_served_and_it_returns_within_seconds() {
    let mut cluster = TestCluster::start_on_env_store(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    // US marketing email is opt-out: with no record the answer is an allow, so a fail-open bug
    // would show as an allow here.
    register(&mut client, "US", "down.region@example.com").await;
    register(&mut client, "DE", "up.region@example.de").await;
    let us = decide_req("down.region@example.com");
    let d = client.decide(us.clone()).await.unwrap().into_inner().decision.unwrap();
    assert_eq!(d.effect, common::Effect::Allow as i32);

    // Batch decisions, healthy cluster: 2,500 items over both regions (more than one node batch
    // per region), an unknown subject and a bad purpose; every result tagged with its id.
    let mut items = Vec::new();
    for id in 0..2_500u64 {
        let value = if id % 2 == 0 { "down.region@example.com" } else { "up.region@example.de" };
        items.push(item(id, value, "marketing"));
    }
    items.push(item(10_000, "stranger@example.com", "marketing"));
    items.push(item(10_001, "up.region@example.de", "astrology"));
    items.push(gw::DecideStreamItem {
        id: 10_002,
        subject: None,
        purpose: "marketing".into(),
        channel: "email".into(),
        ..Default::default()
    });
    let results = decide_stream(&mut client, items).await;
    for id in 0..2_500u64 {
        let expected = if id % 2 == 0 { common::Effect::Allow } else { common::Effect::Deny };
        assert_eq!(effect_of(&results[&id]), Ok(expected), "item {id}");
    }
    assert_eq!(effect_of(&results[&10_000]), Err(Code::NotFound));
    assert_eq!(effect_of(&results[&10_001]), Err(Code::InvalidArgument));
    assert_eq!(effect_of(&results[&10_002]), Err(Code::InvalidArgument), "no subject is no decision");

    // An interactive caller: a few items with the stream left open are answered anyway (a partly
    // filled node batch goes out after a short linger), and the stream keeps serving after it.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut open =
        client.decide_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("stream opens").into_inner();
    for round in 0..2u64 {
        for id in 0..3u64 {
            let value = if id % 2 == 0 { "down.region@example.com" } else { "up.region@example.de" };
            tx.send(item(round * 10 + id, value, "marketing")).await.unwrap();
        }
        let mut answered = Vec::new();
        for _ in 0..3 {
            let result = tokio::time::timeout(Duration::from_secs(5), open.message())
                .await
                .expect("answered while the stream is still open")
                .expect("stream stays up")
                .expect("a result");
            answered.push(result.id);
        }
        answered.sort_unstable();
        assert_eq!(answered, [round * 10, round * 10 + 1, round * 10 + 2]);
    }
    drop(tx);
    assert!(open.message().await.expect("clean end").is_none(), "the stream ends once the input does");

    // Kill us-east (SIGKILL, as a crash).
    let us_east = region("us-east");
    cluster.cluster.kill_node(&us_east).await.unwrap();
    for _ in 0..10 {
        let status = client.decide(us.clone()).await.expect_err("a down region never answers allow");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(!status.message().contains("down.region"), "no personal data in errors");
        let d = client.decide(decide_req("up.region@example.de")).await.expect("other regions are served");
        assert_eq!(d.into_inner().decision.unwrap().region, "eu-central");
    }
    // Once the circuit is open, the down region is refused without waiting for a deadline.
    let started = Instant::now();
    assert_eq!(client.decide(us.clone()).await.unwrap_err().code(), Code::Unavailable);
    assert!(started.elapsed() < Duration::from_millis(500), "short-circuited: {:?}", started.elapsed());
    // Batches: the down region's items get UNAVAILABLE, the others decisions.
    let items = (0..200u64)
        .map(|id| item(id, if id % 2 == 0 { "down.region@example.com" } else { "up.region@example.de" }, "marketing"))
        .collect();
    let results = decide_stream(&mut client, items).await;
    for (id, result) in &results {
        if id % 2 == 0 {
            assert_eq!(effect_of(result), Err(Code::Unavailable), "item {id}");
        } else {
            assert_eq!(effect_of(result), Ok(common::Effect::Deny), "item {id}");
        }
    }

    // Back up: served again within seconds.
    cluster.cluster.restart_node(&us_east).await.unwrap();
    let returned = Instant::now();
    let decision = eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        let us = us.clone();
        async move { client.decide(us).await.ok() }
    })
    .await
    .expect("the region is served again after its return");
    assert_eq!(decision.into_inner().decision.unwrap().effect, common::Effect::Allow as i32);
    println!("us-east served again {:?} after its node was ready", returned.elapsed());
    assert!(returned.elapsed() < Duration::from_secs(5));
}
