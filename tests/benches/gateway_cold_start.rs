//! Gateway cold start with a large link directory: a real node (in process, real sled files,
//! mutual TLS over loopback) holding `BENCH_LINKS` links, and a gateway started against it. The
//! figure is the time from calling the gateway's `serve` to its readiness, which it signals only
//! after every region's directory snapshot is loaded. A second gateway started afterwards shows
//! a restart against the then warm node.
//!
//! `BENCH_LINKS=1000000 cargo bench -p domicile-cluster-tests --bench gateway_cold_start`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "benchmark harness")]

use std::time::Instant;

use domicile_gateway::GatewayConfig;
use domicile_gateway::config::RegionEndpoint;
use domicile_node::NodeConfig;
use domicile_node::store::{SledStore, Store};
use domicile_proto::pb::gateway::v1 as gw;
use domicile_runtime::identity::{CallerIdentity, Scope};
use domicile_runtime::pki::{ClusterPki, GATEWAY_SERVER_NAME};
use domicile_types::{IdentifierKind, Jurisdiction, LinkKey, NormalizedIdentifier, RegionId, SubjectId};

const IDENTIFIERS_PER_SUBJECT: usize = 4;

fn main() {
    let links: usize = std::env::var("BENCH_LINKS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run(links));
}

async fn run(links: usize) {
    domicile_runtime::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let eu = RegionId::parse("eu-central").unwrap();
    let pki = ClusterPki::open_or_create(&dir.path().join("pki")).unwrap();
    let key_bytes = [7u8; 32];
    let link_key_file = dir.path().join("link.key");
    std::fs::write(&link_key_file, key_bytes).unwrap();
    let packs_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-packs");

    // The node's data: `links` links over links/4 DE subjects, written through the store.
    let data_dir = dir.path().join("data");
    let started = Instant::now();
    {
        let store = SledStore::open(&data_dir, &eu).unwrap();
        let key = LinkKey::from_bytes(&key_bytes).unwrap();
        let de = Jurisdiction::parse("DE").unwrap();
        for s in 0..links / IDENTIFIERS_PER_SUBJECT {
            let ids: Vec<_> = (0..IDENTIFIERS_PER_SUBJECT)
                .map(|k| {
                    let id =
                        NormalizedIdentifier::normalize(IdentifierKind::CrmAccount, &format!("acct-{s}-{k}")).unwrap();
                    let link = key.link(&id);
                    (id, link)
                })
                .collect();
            let mut raw = [0x33u8; 16];
            raw[..8].copy_from_slice(&(s as u64).to_be_bytes());
            // One region: it arbitrates its own links, so they are claimed as they are written.
            let claims: Vec<_> =
                ids.iter().map(|(_, link)| domicile_node::store::Release { link: *link, generation: 1 }).collect();
            store.register(&de, &ids, SubjectId::from_bytes(raw), 0, &claims, None).await.unwrap();
        }
        store.flush().await.unwrap();
        let (_, stored) = store.counts().await.unwrap();
        assert_eq!(stored as usize, links / IDENTIFIERS_PER_SUBJECT * IDENTIFIERS_PER_SUBJECT);
    }
    eprintln!("node data: {links} links written in {:.1} s", started.elapsed().as_secs_f64());

    let node_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_addr = node_listener.local_addr().unwrap();
    let node_config = NodeConfig {
        version: 1,
        region: eu.clone(),
        listen: node_addr,
        data_dir: data_dir.clone(),
        store: Default::default(),
        packs_dir: packs_dir.clone(),
        link_key_file: link_key_file.clone(),
        tls: pki.node(&eu).unwrap(),
        packs_trust: None,
        packs_reload_ms: 0,
        otlp_endpoint: None,
        otlp_metrics_interval_ms: None,
        ownership: domicile_node::config::OwnershipConfig {
            regions: vec![RegionEndpoint { id: eu.clone(), endpoint: node_addr.to_string(), replicas: Vec::new() }],
            claim_timeout_ms: 2_000,
        },
        revocation_file: None,
        revocation_reload_ms: 1_000,
        erasure_journal_file: None,
        rights: Default::default(),
    };
    let (node_ready_tx, node_ready) = tokio::sync::oneshot::channel();
    tokio::spawn(domicile_node::serve(
        node_config,
        node_listener,
        move |_| {
            let _ = node_ready_tx.send(());
        },
        std::future::pending(),
    ));
    node_ready.await.unwrap();

    let gateway_config = |listen| GatewayConfig {
        version: 1,
        listen,
        packs_dir: packs_dir.clone(),
        link_key_file: link_key_file.clone(),
        tls: pki.gateway().unwrap(),
        node_timeout_ms: 10_000,
        bulk_timeout_ms: 10_000,
        regions: vec![RegionEndpoint { id: eu.clone(), endpoint: node_addr.to_string(), replicas: Vec::new() }],
        packs_trust: None,
        packs_reload_ms: 0,
        otlp_endpoint: None,
        otlp_metrics_interval_ms: None,
        token_public_key_file: None,
        token_max_lifetime_secs: None,
        revocation_file: None,
        revocation_reload_ms: 1_000,
        max_in_flight_per_caller: None,
    };
    // Cold node and cold gateway: the node pages its links in from disk while it streams them.
    let (gateway_addr, cold_start) = start_gateway(gateway_config).await;
    // A gateway restarted against the now warm node, as in a rolling gateway deploy.
    let (_, restart) = start_gateway(gateway_config).await;

    // The directory really is complete: the last subject's last identifier resolves.
    let cli = CallerIdentity::new("bench", eu.clone(), &Scope::ALL).unwrap();
    let tls = pki.caller(&cli).unwrap();
    let channel = domicile_cluster_tests::channel(&gateway_addr.to_string(), &tls, GATEWAY_SERVER_NAME).await.unwrap();
    let mut client = domicile_proto::pb::gateway::v1::domicile_client::DomicileClient::new(channel);
    let last = links / IDENTIFIERS_PER_SUBJECT - 1;
    let reply = client
        .resolve(gw::ResolveRequest {
            identifier: Some(domicile_cluster_tests::identifier("crm_account", &format!("acct-{last}-3"))),
        })
        .await
        .expect("the last link is in the directory");
    assert!(reply.into_inner().subject_ref.starts_with("eu-central/"));
    println!("gateway cold start with {links} links in the directory: {:.2} s", cold_start.as_secs_f64());
    println!("gateway restart against the warm node, {links} links: {:.2} s", restart.as_secs_f64());
}

/// Starts a gateway on a fresh port; its address and the time from `serve` to readiness.
async fn start_gateway(
    config: impl Fn(std::net::SocketAddr) -> GatewayConfig,
) -> (std::net::SocketAddr, std::time::Duration) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let started = Instant::now();
    tokio::spawn(domicile_gateway::serve(
        config(addr),
        listener,
        move |_| {
            let _ = ready_tx.send(());
        },
        std::future::pending(),
    ));
    ready.await.unwrap();
    (addr, started.elapsed())
}
