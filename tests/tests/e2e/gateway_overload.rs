//! Overload from one caller (real processes): with one region's node paused (SIGSTOP, so every
//! call to it waits for its deadline and requests pile up), a caller floods the gateway with
//! far more concurrent decisions than its limit, over several connections. Beyond its limit it is
//! shed at once with RESOURCE_EXHAUSTED, not queued; what was admitted fails closed; another
//! caller's decisions for the other region keep being served throughout; the gateway's memory
//! stays bounded; and once the node runs again the flooding caller is served again.

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
use domicile_cluster_tests::{Cluster as _, Paused, TestCluster, identifier, region, select_email};
use domicile_runtime::identity::Scope;
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const CONNECTIONS: usize = 4;
const PER_CONNECTION: usize = 300;
/// The gateway's default per-caller limit (`max_in_flight_per_caller`).
const LIMIT: usize = 512;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn decide_request(email: &str) -> gw::DecideRequest {
    gw::DecideRequest {
        subject: select_email(email),
        purpose: "marketing".into(),
        channel: "email".into(),
        at: None,
        ..Default::default()
    }
}

async fn register(gateway: &mut DomicileClient<Channel>, jurisdiction: &str, email: &str) {
    let request = gw::RegisterRequest {
        jurisdiction: jurisdiction.into(),
        identifiers: vec![identifier("email", email)],
        idempotency_key: String::new(),
    };
    gateway.register(request).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_caller_is_shed_at_its_limit_while_others_are_served() {
    let cluster = TestCluster::start(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let mut admin = cluster.gateway().await.unwrap();
    register(&mut admin, "DE", "flooded@example.de").await;
    register(&mut admin, "US", "steady@example.com").await;
    let gateway_pid = cluster.cluster.processes().find(|p| p.region.is_none()).and_then(|p| p.pid()).unwrap();
    let rss_before = rss_kib(gateway_pid);

    let flood = cluster.issue_caller("flood", "eu-central", &[Scope::Decide]).unwrap();
    let steady = cluster.issue_caller("steady", "us-east", &[Scope::Decide]).unwrap();
    let node_pid =
        cluster.cluster.processes().find(|p| p.region == Some(region("eu-central"))).and_then(|p| p.pid()).unwrap();
    let paused = Paused::process(node_pid).unwrap();

    // The flood: CONNECTIONS × PER_CONNECTION concurrent decisions from one caller.
    let mut flood_tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let client = cluster.gateway_as(&flood).await.unwrap();
        for _ in 0..PER_CONNECTION {
            let mut client = client.clone();
            flood_tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let result = client.decide(decide_request("flooded@example.de")).await;
                (result.map(|r| r.into_inner().decision.unwrap().effect), started.elapsed())
            }));
        }
    }
    // Meanwhile another caller, another region: served every time.
    let mut steady_client = cluster.gateway_as(&steady).await.unwrap();
    let mut served = 0;
    let steady_started = Instant::now();
    while steady_started.elapsed() < Duration::from_secs(2) {
        let effect = steady_client.decide(decide_request("steady@example.com")).await.unwrap().into_inner();
        assert!(effect.decision.is_some());
        served += 1;
    }
    let peak_rss = rss_kib(gateway_pid);

    let mut shed = Vec::new();
    let mut failed_closed = 0;
    for task in flood_tasks {
        let (result, took) = task.await.unwrap();
        match result {
            Ok(effect) => panic!("a decision for a paused region was answered: {effect}"),
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(status.message().contains("limit"), "{status:?}");
                shed.push(took);
            }
            Err(status) => {
                assert!(matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded), "{status:?}");
                failed_closed += 1;
            }
        }
    }
    shed.sort();
    let total = CONNECTIONS * PER_CONNECTION;
    eprintln!(
        "flood of {total}: {} shed (median {:?}, max {:?}), {failed_closed} admitted and failed closed; \
         steady caller served {served} decisions meanwhile; gateway RSS {rss_before} → {peak_rss} KiB",
        shed.len(),
        shed.get(shed.len() / 2),
        shed.last()
    );
    assert!(failed_closed <= LIMIT, "at most the limit admitted: {failed_closed}");
    assert!(shed.len() >= total - LIMIT, "the rest shed: {}", shed.len());
    // Shed at once, not after waiting for the paused node's deadline (2 s).
    assert!(shed[shed.len() / 2] < Duration::from_millis(1_000), "median shed time {:?}", shed[shed.len() / 2]);
    assert!(served >= 10, "the steady caller kept being served: {served}");
    assert!(peak_rss < rss_before + 256 * 1024, "memory bounded: {rss_before} → {peak_rss} KiB");

    // The node runs again: the flooding caller is served again (its slots were all returned).
    drop(paused);
    let mut client = cluster.gateway_as(&flood).await.unwrap();
    let recovered = domicile_cluster_tests::eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        async move { client.decide(decide_request("flooded@example.de")).await.ok() }
    })
    .await;
    assert!(recovered.is_some(), "served again after the node resumed");
    let effect = client.decide(decide_request("flooded@example.de")).await.unwrap().into_inner();
    assert_eq!(effect.decision.unwrap().effect, common::Effect::Deny as i32, "no consent recorded: deny");
}

/// Found by an attacker's review: a stream holds up to 8 node calls of a region for as long as
/// it runs, so one caller's DecideStreams, within its limit of requests in flight, could take
/// every node-call slot of a region and starve everyone's decisions. A caller may now have 32
/// streams open; the next is refused at once, and other callers (and its own unary decisions)
/// are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_cannot_hold_more_than_its_share_of_streams() {
    const STREAMS: usize = 32;
    let cluster = TestCluster::start(BIN, &["eu-central"]).await.expect("cluster starts");
    let mut admin = cluster.gateway().await.unwrap();
    register(&mut admin, "DE", "streamed@example.de").await;
    let hog = cluster.issue_caller("stream-hog", "eu-central", &[Scope::Decide, Scope::Context]).unwrap();
    let other = cluster.issue_caller("other-desk", "eu-central", &[Scope::Decide]).unwrap();
    let hog = cluster.gateway_as(&hog).await.unwrap();
    let item = |id: u64| gw::DecideStreamItem {
        id,
        subject: select_email("streamed@example.de"),
        purpose: "marketing".into(),
        channel: "email".into(),
        ..Default::default()
    };
    // Streams left open: each answers its first item and keeps its slot.
    let mut open = Vec::new();
    for n in 0..STREAMS {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut client = hog.clone();
        let mut results = client
            .decide_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("within the limit")
            .into_inner();
        tx.send(item(n as u64)).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), results.message()).await.unwrap().unwrap();
        assert!(first.is_some(), "stream {n} serves");
        open.push((tx, results));
    }
    let (_tx, rx) = tokio::sync::mpsc::channel::<gw::DecideStreamItem>(1);
    let status = hog.clone().decide_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("streams"), "{status:?}");
    let status = hog.clone().watch(gw::WatchRequest { resume_token: String::new() }).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "a Watch counts as a stream: {status:?}");
    // Unary decisions, its own and another caller's, are served meanwhile.
    hog.clone().decide(decide_request("streamed@example.de")).await.expect("its unary decisions");
    let mut other = cluster.gateway_as(&other).await.unwrap();
    other.decide(decide_request("streamed@example.de")).await.expect("another caller's decisions");
    // A stream closed returns its slot.
    drop(open.pop());
    let reopened = domicile_cluster_tests::eventually(Duration::from_secs(5), || {
        let mut client = hog.clone();
        async move {
            let (_tx, rx) = tokio::sync::mpsc::channel::<gw::DecideStreamItem>(1);
            client.decide_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.ok().map(|_| ())
        }
    })
    .await;
    assert!(reopened.is_some(), "a closed stream's slot is returned");
}
