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

    // A token issued by the CLI from the cluster's key works at the gateway `cluster up`
    // configured, for a caller with no certificate at all.
    let out = domicile()
        .args(["cluster", "issue", "--pki", pki.to_str().unwrap(), "token", "kiosk", "--region", "eu-central"])
        .args(["--scopes", "decide", "--ttl-secs", "120"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let gateway = status["gateway"]["addr"].as_str().unwrap().to_owned();
    let codes = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let ca = tonic::transport::Certificate::from_pem(std::fs::read(pki.join("ca.pem")).unwrap());
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(ca).domain_name("gateway.domicile.internal");
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{gateway}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut codes = Vec::new();
        for bearer in [token.clone(), format!("{token}00")] {
            let mut request = tonic::Request::new(domicile_proto::pb::gateway::v1::DecideRequest {
                subject: Some(domicile_proto::pb::gateway::v1::SubjectSelector {
                    selector: Some(domicile_proto::pb::gateway::v1::subject_selector::Selector::SubjectRef(
                        "eu-central/00000000000000000000000000000000".into(),
                    )),
                }),
                purpose: "marketing".into(),
                channel: "email".into(),
                at: None,
            });
            request.metadata_mut().insert("authorization", format!("Bearer {bearer}").parse().unwrap());
            let mut client = domicile_proto::pb::gateway::v1::domicile_client::DomicileClient::new(channel.clone());
            codes.push(client.decide(request).await.unwrap_err().code());
        }
        codes
    });
    // Authorised (the subject is simply unknown); a corrupted token is not.
    assert_eq!(codes, vec![tonic::Code::NotFound, tonic::Code::Unauthenticated]);

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
