//! Damaged files of an embedded-store region (real processes, real files): a flipped byte in a
//! key slot, an audit log cut at an entry boundary, and a flipped byte in sled's database. The
//! node refuses to start or refuses the affected subject, naming what is wrong; it never serves a
//! decision from damaged data; `domicile node check` finds each offline, and passes the files it
//! started from.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::path::{Path, PathBuf};

use domicile_cluster_tests::files::copy_dir;
use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::{Cluster as _, TestCluster, identifier, region, select_email};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const EMAILS: [&str; 3] = ["first.damage@example.de", "second.damage@example.de", "third.damage@example.de"];

/// `domicile node check --config …`: (exit code, stdout).
fn node_check(config: &Path) -> (i32, String) {
    let out =
        std::process::Command::new(BIN).args(["node", "check", "--config", config.to_str().unwrap()]).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Puts the pristine copy back as the region's data directory.
fn restore(pristine: &Path, data: &Path) {
    std::fs::remove_dir_all(data).unwrap();
    copy_dir(pristine, data).unwrap();
}

fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

async fn decide(cluster: &TestCluster, email: &str) -> Result<i32, tonic::Status> {
    let mut gateway = cluster.gateway().await.unwrap();
    let request = gw::DecideRequest {
        subject: select_email(email),
        purpose: "marketing".into(),
        channel: "email".into(),
        at: None,
        ..Default::default()
    };
    gateway.decide(request).await.map(|r| r.into_inner().decision.unwrap().effect)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_key_slots_audit_logs_and_store_files_are_found_and_never_served_from() {
    let eu = region("eu-central");
    let mut cluster = TestCluster::start(BIN, &["eu-central"]).await.expect("cluster starts");
    let mut gateway = cluster.gateway().await.unwrap();
    // One after the other: the first subject's key is in slot 0.
    for email in EMAILS {
        gateway
            .register(gw::RegisterRequest {
                jurisdiction: "DE".into(),
                identifiers: vec![identifier("email", email)],
                idempotency_key: String::new(),
            })
            .await
            .unwrap();
    }
    for email in &EMAILS[..2] {
        gateway
            .record_consent(gw::RecordConsentRequest {
                subject: select_email(email),
                purpose: "marketing".into(),
                channels: vec!["email".into()],
                action: common::ConsentAction::Grant as i32,
                evidence: Some(common::Evidence {
                    notice_version: "v3".into(),
                    capture_channel: "web".into(),
                    source_system: "shop".into(),
                    double_opt_in_confirmed: true,
                    signal: None,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let allowed: Vec<i32> = {
        let mut effects = Vec::new();
        for email in EMAILS {
            effects.push(decide(&cluster, email).await.unwrap());
        }
        effects
    };
    cluster.stop().await;

    let data = cluster.dir().join("data").join("eu-central");
    let config = cluster.dir().join("config").join("node-eu-central.toml");
    let pristine_dir = tempfile::tempdir().unwrap();
    let pristine = pristine_dir.path().join("eu-central");
    copy_dir(&data, &pristine).unwrap();

    // The files as the node left them: sound.
    let (code, out) = node_check(&config);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 subjects") && out.contains("sound"), "{out}");
    for email in EMAILS {
        assert!(!out.contains(email), "no personal data in the report");
    }

    // 1. A flipped byte in the first subject's key (slot 0, after its 16-byte subject id).
    flip_byte(&data.join("subject-keys.bin"), 16 + 5);
    let (code, out) = node_check(&config);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("fail authentication") && out.contains("tree current"), "{out}");
    assert!(out.contains("DAMAGED") && out.contains("db"), "{out}");
    // The node starts (the key file is whole) and refuses that subject, serving the others.
    cluster.cluster.restart_node(&eu).await.unwrap();
    cluster.restart_gateway().await.unwrap();
    let refused = decide(&cluster, EMAILS[0]).await.expect_err("never a decision from damaged data");
    assert_eq!(refused.code(), Code::Internal, "{refused:?}");
    assert!(refused.message().contains("corrupt"), "{refused:?}");
    assert_eq!(decide(&cluster, EMAILS[1]).await.unwrap(), allowed[1]);
    assert_eq!(decide(&cluster, EMAILS[2]).await.unwrap(), allowed[2]);
    cluster.stop().await;

    // 2. The audit log cut at an entry boundary: a valid, shorter chain, but entries it had
    // synced are gone. The node refuses to start, naming the file; the check finds it.
    restore(&pristine, &data);
    let log = data.join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&log, format!("{}\n", lines[..lines.len() - 1].join("\n"))).unwrap();
    let (code, out) = node_check(&config);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("audit.log") && out.contains("entries lost from its end"), "{out}");
    let refused = cluster.cluster.restart_node(&eu).await;
    let node_log = std::fs::read_to_string(cluster.dir().join("logs").join("node-eu-central.log")).unwrap();
    assert!(refused.is_err(), "the node must not start");
    assert!(node_log.contains("lost acknowledged entries"), "{node_log}");

    // 3. A flipped byte inside sled's files where a subject's metadata is stored.
    restore(&pristine, &data);
    let (file, offset) = find_in_files(&data.join("db"), b"\"jurisdiction\"").expect("metadata in sled's files");
    flip_byte(&file, offset + 3);
    let (code, out) = node_check(&config);
    assert_eq!(code, 1, "sled's damage is found: {out}");
    assert!(out.contains("acknowledged writes lost") || out.contains("fail authentication"), "{out}");
    eprintln!("check after a flipped sled byte:\n{out}");
    // sled alone would open the database cut at the damage, with the later writes gone: the node
    // refuses it instead.
    let refused = cluster.cluster.restart_node(&eu).await;
    let node_log = std::fs::read_to_string(cluster.dir().join("logs").join("node-eu-central.log")).unwrap();
    assert!(refused.is_err(), "the node must not start");
    assert!(node_log.contains("lost acknowledged writes") || node_log.contains("corrupt"), "{node_log}");

    // The pristine files still check sound and serve the same decisions.
    restore(&pristine, &data);
    assert_eq!(node_check(&config).0, 0);
    cluster.cluster.restart_node(&eu).await.unwrap();
    cluster.restart_gateway().await.unwrap();
    for (email, effect) in EMAILS.iter().zip(&allowed) {
        assert_eq!(decide(&cluster, email).await.unwrap(), *effect);
    }
}

/// The first file under `dir` containing `needle`, and where.
fn find_in_files(dir: &Path, needle: &[u8]) -> Option<(PathBuf, usize)> {
    domicile_cluster_tests::files_under(dir).into_iter().find_map(|path| {
        let bytes = std::fs::read(&path).ok()?;
        bytes.windows(needle.len()).position(|w| w == needle).map(|at| (path, at))
    })
}
