//! The local cluster itself: every address is chosen before the first process starts, several
//! gateways follow every node, and a process started again comes back on its address.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use domicile_cli::cluster::{ClusterAddresses, ClusterOptions, LocalCluster, is_addr_in_use};
use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_cluster_tests::{Cluster as _, TestCluster, TestOptions, eventually, region, repo_packs};
use domicile_gateway::GatewayConfig;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
/// Propagation bound for change events between gateways: generous for CI.
const PROPAGATION: Duration = Duration::from_secs(10);

fn select_email(value: &str) -> Option<gw::SubjectSelector> {
    let identifier = common::Identifier { kind: "email".into(), value: value.into() };
    Some(gw::SubjectSelector { selector: Some(gw::subject_selector::Selector::Identifier(identifier)) })
}

async fn decide(client: &DomicileClient<Channel>, email: &str) -> Result<gw::DecideResponse, tonic::Status> {
    let request = gw::DecideRequest {
        subject: select_email(email),
        purpose: "marketing".into(),
        channel: "email".into(),
        at: None,
        ..Default::default()
    };
    client.clone().decide(request).await.map(|r| r.into_inner())
}

/// Whether a server could listen on `addr` now (SO_REUSEADDR, as the cluster's processes bind).
fn is_free(addr: SocketAddr) -> bool {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).is_ok() && socket.listen(1).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_follows_every_node_and_processes_restart_on_their_addresses() {
    let options = TestOptions { gateways: Some(2), ..TestOptions::default() };
    let mut cluster = TestCluster::start_with(BIN, &["eu-central", "us-east"], options).await.expect("cluster starts");
    let addresses = cluster.cluster.addresses().clone();
    assert_eq!(addresses.gateways.len(), 2);
    assert_eq!(addresses.nodes.len(), 2);
    let ports: BTreeSet<u16> = addresses.gateways.iter().chain(addresses.nodes.values()).map(|a| a.port()).collect();
    assert_eq!(ports.len(), 4, "every process has a port of its own: {addresses:?}");
    assert_eq!(cluster.cluster.gateway_addr(), addresses.gateways[0], "the first gateway is the cluster's gateway");

    // Each gateway's configuration names every node at its planned address.
    for (index, file) in ["gateway.toml", "gateway-2.toml"].iter().enumerate() {
        let config = GatewayConfig::load(&cluster.dir().join("config").join(file)).unwrap();
        assert_eq!(config.listen, addresses.gateways[index]);
        let endpoints: Vec<(String, String)> =
            config.regions.iter().map(|r| (r.id.to_string(), r.endpoint.clone())).collect();
        let planned: Vec<(String, String)> =
            addresses.nodes.iter().map(|(id, addr)| (id.to_string(), addr.to_string())).collect();
        assert_eq!(endpoints, planned, "{file}");
    }

    // Registered through the first gateway, decided through the second.
    let clients = cluster.gateways().await.unwrap();
    assert_eq!(clients.len(), 2);
    let mut first = clients[0].clone();
    let request = gw::RegisterRequest {
        jurisdiction: "US".into(),
        identifiers: vec![common::Identifier { kind: "email".into(), value: "two.gateways@example.com".into() }],
        idempotency_key: String::new(),
    };
    let subject = first.register(request).await.unwrap().into_inner().subject_ref;
    let second = cluster.gateway_at_index(1).await.unwrap();
    let decided = eventually(PROPAGATION, || async { decide(&second, "two.gateways@example.com").await.ok() }).await;
    assert_eq!(decided.expect("the second gateway learns the registration").decision.unwrap().subject_ref, subject);

    // The second gateway, restarted, comes back on its address with its directory rebuilt.
    cluster.restart_gateway_at(1).await.unwrap();
    assert_eq!(cluster.cluster.gateway_addrs(), addresses.gateways);
    let second = cluster.gateway_at_index(1).await.unwrap();
    assert_eq!(decide(&second, "two.gateways@example.com").await.unwrap().decision.unwrap().subject_ref, subject);

    // Stopping the first gateway leaves the second serving.
    assert!(cluster.cluster.stop_gateway_at(0).await.unwrap().gracefully());
    assert!(decide(&second, "two.gateways@example.com").await.is_ok());
    assert!(cluster.cluster.stop_gateway_at(2).await.is_err(), "there is no third gateway");

    // A node killed and started again listens where every gateway's configuration says.
    let us = region("us-east");
    cluster.cluster.kill_node(&us).await.unwrap();
    cluster.cluster.restart_node(&us).await.expect("the node starts again");
    assert_eq!(cluster.cluster.node_addr(&us), addresses.node(&us));
    let node = cluster.cluster.processes().find(|p| p.region.as_ref() == Some(&us)).unwrap();
    assert_eq!(Some(node.addr), addresses.node(&us));
    let answered = eventually(PROPAGATION, || async { decide(&second, "two.gateways@example.com").await.ok() }).await;
    assert!(answered.is_some(), "the second gateway reaches the restarted node");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_taken_before_its_process_binds_it_is_reported_as_such_and_a_fresh_start_avoids_it() {
    domicile_runtime::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    // Another program holds the port planned for us-east (as if it bound it after the choice).
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_addr = held.local_addr().unwrap();
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (eu, us) = (region("eu-central"), region("us-east"));
    let addresses = ClusterAddresses {
        nodes: [(eu.clone(), free()), (us.clone(), held_addr)].into_iter().collect(),
        gateways: vec![free()],
    };
    let options = ClusterOptions {
        node_worker_threads: Some(1),
        ..ClusterOptions::new(dir.path(), repo_packs(), vec![eu.clone(), us.clone()], BIN)
    };
    let error = LocalCluster::start_at(options.clone(), addresses.clone()).await.unwrap_err();
    assert!(is_addr_in_use(&error), "{error:#}");
    let message = format!("{error:#}");
    assert!(message.contains("node us-east") && message.contains(&held_addr.to_string()), "{message}");
    // eu-central had started; it was stopped again.
    assert!(is_free(addresses.node(&eu).unwrap()), "the node that had started is stopped");

    // With fresh ports the cluster starts, and on none that is held.
    let mut cluster = LocalCluster::start(options).await.expect("a fresh start");
    let chosen = cluster.addresses().clone();
    assert!(chosen.nodes.values().chain(&chosen.gateways).all(|a| *a != held_addr), "{chosen:?}");
    cluster.stop().await;
    drop(held);
}
