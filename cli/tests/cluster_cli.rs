//! `domicile cluster up | status | down` as an operator runs them: real processes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers; clippy.toml only exempts the #[test] fns themselves"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn domicile() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_domicile"));
    command.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    command
}

#[test]
fn up_status_down() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let mut up = domicile()
        .args(["cluster", "up", "--dir", dir_arg, "--gateway-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("cluster up exited before it was ready").unwrap();
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});

    let out = domicile().args(["cluster", "status", "--dir", dir_arg, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["running"], true);
    assert_eq!(status["regions"].as_array().unwrap().len(), 3, "{status}");
    for node in status["nodes"].as_array().unwrap() {
        assert_eq!(node["reachable"], true, "{node}");
        assert_eq!(node["subjects"], 0, "{node}");
        assert!(!node["packs"].as_array().unwrap().is_empty(), "{node}");
        assert!(node["packs_content_hash"].as_str().is_some_and(|h| !h.is_empty()), "{node}");
    }
    assert_eq!(status["gateway"]["reachable"], true, "{status}");

    // The exec probe the Kubernetes manifests use: a scope-less caller of the node's region.
    let pki = dir.path().join("pki");
    let out = domicile()
        .args([
            "cluster",
            "issue",
            "--pki",
            pki.to_str().unwrap(),
            "caller",
            "probe-eu-central",
            "--region",
            "eu-central",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let node = status["nodes"].as_array().unwrap().iter().find(|n| n["region"] == "eu-central").unwrap();
    let probe = |addr: &str, server_name: &str| {
        domicile()
            .args(["cluster", "probe", "--addr", addr, "--server-name", server_name])
            .arg("--ca")
            .arg(pki.join("ca.pem"))
            .arg("--cert")
            .arg(pki.join("client-probe-eu-central.pem"))
            .arg("--key")
            .arg(pki.join("client-probe-eu-central.key"))
            .output()
            .unwrap()
            .status
    };
    assert!(probe(node["addr"].as_str().unwrap(), "eu-central.node.domicile.internal").success());
    assert!(probe(status["gateway"]["addr"].as_str().unwrap(), "gateway.domicile.internal").success());
    // A certificate must name the server it dials: a node is not the gateway.
    assert!(!probe(node["addr"].as_str().unwrap(), "gateway.domicile.internal").success());

    let out = domicile().args(["cluster", "down", "--dir", dir_arg]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(5);
    let exit = loop {
        if let Some(exit) = up.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "cluster up still running after `down` returned");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit}");
    assert!(!dir.path().join("supervisor.json").exists());

    // Nothing left to stop.
    let out = domicile().args(["cluster", "down", "--dir", dir_arg]).output().unwrap();
    assert!(!out.status.success());
}
