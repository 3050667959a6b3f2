//! `domicile load`: fails promptly and clearly without a cluster, and runs every scenario against
//! a real local cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers: a failed setup step is a failed test")]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use domicile_cli::client::ClusterFile;
use domicile_cli::cluster::{ClusterOptions, LocalCluster};
use domicile_runtime::identity::{CallerIdentity, Scope};
use domicile_runtime::pki::ClusterPki;
use domicile_types::RegionId;

const BIN: &str = env!("CARGO_BIN_EXE_domicile");

/// Runs `domicile load ...` and returns its output and how long it took.
async fn load(args: &[&str], limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let child = tokio::process::Command::new(BIN).arg("load").args(args).kill_on_drop(true).output();
    let output = tokio::time::timeout(limit, child).await.expect("domicile load hung").expect("cannot run domicile");
    (output, start.elapsed())
}

fn region(id: &str) -> RegionId {
    RegionId::parse(id).unwrap()
}

/// A cluster.json naming `addr`, with a valid client certificate of a throwaway CA.
fn cluster_file(dir: &Path, addr: std::net::SocketAddr) {
    let pki = ClusterPki::open_or_create(&dir.join("pki")).unwrap();
    let tls = pki.caller(&CallerIdentity::new("load-test", region("eu-central"), &Scope::ALL).unwrap()).unwrap();
    let file = ClusterFile { gateway: addr, tls };
    std::fs::write(dir.join("cluster.json"), serde_json::to_vec(&file).unwrap()).unwrap();
}

#[tokio::test]
async fn missing_cluster_dir_fails_at_once_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let (out, took) = load(&["decide", "--cluster-dir", missing.to_str().unwrap()], Duration::from_secs(20)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cluster.json") && stderr.contains("cluster up"), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn dead_address_fails_promptly() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was just free: connection refused.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    cluster_file(dir.path(), addr);
    let (out, took) = load(&["all", "--cluster-dir", dir.path().to_str().unwrap()], Duration::from_secs(30)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unreachable") && stderr.contains(&addr.to_string()), "{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[tokio::test]
async fn silent_server_fails_promptly() {
    let dir = tempfile::tempdir().unwrap();
    // Accepts TCP connections (the kernel backlog does) but never speaks TLS.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    cluster_file(dir.path(), silent.local_addr().unwrap());
    let (out, took) = load(&["decide", "--cluster-dir", dir.path().to_str().unwrap()], Duration::from_secs(30)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_scenarios_against_a_local_cluster() {
    domicile_runtime::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let regions = ["eu-central", "us-east", "sa-east"].into_iter().map(region).collect();
    let packs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policy-packs");
    let mut cluster = LocalCluster::start(ClusterOptions {
        node_worker_threads: Some(1),
        ..ClusterOptions::new(dir.path(), packs, regions, BIN)
    })
    .await
    .unwrap();
    let args = [
        "all",
        "--cluster-dir",
        dir.path().to_str().unwrap(),
        "--subjects",
        "200",
        "--withdrawals",
        "30",
        "--duration",
        "1",
        "--concurrency",
        "8",
        "--batch-size",
        "100",
        "--json",
    ];
    let (out, _) = load(&args, Duration::from_secs(240)).await;
    cluster.stop().await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let scenarios = &report["scenarios"];
    for name in ["setup", "echo", "decide", "decide_at_half_max_rate", "batch", "writes", "withdrawal"] {
        let s = &scenarios[name];
        assert!(s["ops"].as_u64().unwrap() > 0, "{name}: {s}");
        assert!(s["latency"]["p99_us"].as_u64().is_some(), "{name}: {s}");
        assert!(s["ratio_to_echo"]["throughput"].as_f64().is_some(), "{name}: {s}");
    }
    assert_eq!(scenarios["setup"]["ops"], 200);
    let withdrawal = &scenarios["withdrawal"];
    assert_eq!(withdrawal["ops"], 30, "{withdrawal}");
    assert_eq!(withdrawal["stale_allows"], 0, "{withdrawal}");
    assert_eq!(withdrawal["missing_events"], 0, "{withdrawal}");
    // Proof the check is not vacuous: every subject was allowed right before its withdrawal.
    assert_eq!(withdrawal["allows_before_withdrawal"], 30, "{withdrawal}");
}
