//! Backup and restore of an embedded-store region (real processes, real files): an online
//! backup taken while writes and decisions go on, the machine then "lost" (its data directory
//! deleted) after an erasure, and the region restored into a new directory from the backup and
//! the erasure journal: the erased subject stays erased, every other decision is the one of the
//! backup's instant, the consent ledger is a prefix of what was acknowledged, the audit chain
//! continues, and new writes work. A damaged backup is refused.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use domicile_cluster_tests::files::copy_dir;
use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::{Cluster as _, TestCluster, identifier, region, select_email};
use domicile_runtime::identity::Scope;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const ERASED: &str = "erased.after.backup@example.de";
const KEPT: &str = "kept.granted@example.de";
const NEVER: &str = "kept.never.asked@example.de";
const BUSY: &str = "busy.during.backup@example.de";
const MERGED: &str = "merged.after.backup@example.de";

fn domicile(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn consent(email: &str, action: common::ConsentAction) -> gw::RecordConsentRequest {
    gw::RecordConsentRequest {
        subject: select_email(email),
        purpose: "marketing".into(),
        channels: vec!["email".into()],
        action: action as i32,
        evidence: Some(common::Evidence {
            notice_version: "v3".into(),
            capture_channel: "web".into(),
            source_system: "shop".into(),
            double_opt_in_confirmed: true,
            signal: None,
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn decide(cluster: &TestCluster, email: &str) -> Result<i32, Code> {
    let request = gw::DecideRequest {
        subject: select_email(email),
        purpose: "marketing".into(),
        channel: "email".into(),
        at: None,
        ..Default::default()
    };
    let mut gateway = cluster.gateway().await.unwrap();
    gateway.decide(request).await.map(|r| r.into_inner().decision.unwrap().effect).map_err(|s| s.code())
}

async fn history(cluster: &TestCluster, email: &str) -> Vec<(u64, String)> {
    let mut gateway = cluster.gateway().await.unwrap();
    let response = gateway
        .consent_history(gw::ConsentHistoryRequest { subject: select_email(email), ..Default::default() })
        .await
        .unwrap();
    response.into_inner().entries.into_iter().map(|e| (e.sequence, e.state)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_restores_the_same_decisions_keeps_later_erasures_and_continues_the_chain() {
    let eu = region("eu-central");
    let mut cluster = TestCluster::start(BIN, &["eu-central"]).await.expect("cluster starts");
    let mut gateway = cluster.gateway().await.unwrap();
    for email in [ERASED, KEPT, NEVER, BUSY, MERGED] {
        let request = gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", email)],
            idempotency_key: String::new(),
        };
        gateway.register(request).await.unwrap();
    }
    for email in [ERASED, KEPT] {
        gateway.record_consent(consent(email, common::ConsentAction::Grant)).await.unwrap();
    }

    // Writes and decisions keep going while the backup is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, acknowledged) = (Arc::clone(&stop), Arc::clone(&acknowledged));
        let mut gateway = cluster.gateway().await.unwrap();
        tokio::spawn(async move {
            let mut grant = true;
            while !stop.load(Ordering::Relaxed) {
                let action = if grant { common::ConsentAction::Grant } else { common::ConsentAction::Withdraw };
                gateway.record_consent(consent(BUSY, action)).await.unwrap();
                acknowledged.fetch_add(1, Ordering::Relaxed);
                grant = !grant;
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let ops = cluster.issue_caller("backup-ops", "eu-central", &[Scope::Admin]).unwrap();
    let backup_dir = tempfile::tempdir().unwrap();
    let backup = backup_dir.path().join("eu-central-backup");
    let node_addr = cluster.node_addr(&eu).unwrap().to_string();
    let args = [
        "node",
        "backup",
        "--addr",
        &node_addr,
        "--region",
        "eu-central",
        "--ca",
        ops.ca.to_str().unwrap(),
        "--cert",
        ops.cert.to_str().unwrap(),
        "--key",
        ops.key.to_str().unwrap(),
        "--out",
        backup.to_str().unwrap(),
    ];
    let during = acknowledged.load(Ordering::Relaxed);
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        domicile(&args)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("5 subjects"), "{out}");
    let after = acknowledged.load(Ordering::Relaxed);
    assert!(after > during, "writes went on around the backup ({during} → {after})");
    // Decisions as of now (the busy subject's state is whatever the backup caught).
    let before: Vec<_> = {
        let mut effects = Vec::new();
        for email in [KEPT, NEVER] {
            effects.push(decide(&cluster, email).await.unwrap());
        }
        effects
    };
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let busy_before = history(&cluster, BUSY).await;

    // A non-operator cannot take a backup; neither can the gateway's callers (no such method).
    let shop = cluster.issue_caller("shop-backup", "eu-central", &[Scope::Decide, Scope::Capture]).unwrap();
    let refused = domicile(&[
        "node",
        "backup",
        "--addr",
        &node_addr,
        "--region",
        "eu-central",
        "--ca",
        shop.ca.to_str().unwrap(),
        "--cert",
        shop.cert.to_str().unwrap(),
        "--key",
        shop.key.to_str().unwrap(),
        "--out",
        backup_dir.path().join("refused").to_str().unwrap(),
    ]);
    assert_ne!(refused.0, 0);
    assert!(refused.2.contains("admin"), "{}", refused.2);

    // After the backup: a subject merged into another, which is then erased (the merged person
    // must not come back through the half the backup holds apart). Then the machine is lost.
    let merge = gw::MergeRequest { into: select_email(ERASED), from: select_email(MERGED), ..Default::default() };
    gateway.merge(merge).await.unwrap();
    gateway
        .erase(gw::EraseRequest {
            subject: select_email(ERASED),
            idempotency_key: String::new(),
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(decide(&cluster, ERASED).await, Err(Code::NotFound));
    cluster.stop().await;
    let data = cluster.dir().join("data").join("eu-central");
    std::fs::remove_dir_all(&data).unwrap();

    // Without the erasure journal, a restore is refused unless asked for knowingly.
    let journal = cluster.dir().join("erasure-journals").join("eu-central.log");
    let (code, _, err) = domicile(&[
        "node",
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--region",
        "eu-central",
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("erasure journal"), "{err}");

    // A damaged backup is refused before anything is written.
    let damaged = backup_dir.path().join("damaged");
    copy_dir(&backup, &damaged).unwrap();
    let export = damaged.join("db.export");
    let mut bytes = std::fs::read(&export).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&export, bytes).unwrap();
    let scratch = backup_dir.path().join("scratch");
    let (code, out, err) = domicile(&[
        "node",
        "restore",
        "--from",
        damaged.to_str().unwrap(),
        "--data-dir",
        scratch.to_str().unwrap(),
        "--region",
        "eu-central",
        "--erasures",
        journal.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("db.export does not match the manifest"), "{err}");
    assert!(!scratch.join("db").exists(), "nothing restored from a damaged backup");

    let (code, out, err) = domicile(&[
        "node",
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--region",
        "eu-central",
        "--erasures",
        journal.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 merges and erasures replayed") && out.contains("sound"), "{out}");

    cluster.cluster.restart_node(&eu).await.unwrap();
    cluster.restart_gateway().await.unwrap();
    assert_eq!(decide(&cluster, ERASED).await, Err(Code::NotFound), "erased after the backup: stays erased");
    assert_eq!(decide(&cluster, MERGED).await, Err(Code::NotFound), "merged into it, then erased with it");
    for (email, effect) in [KEPT, NEVER].iter().zip(&before) {
        assert_eq!(decide(&cluster, email).await.unwrap(), *effect, "{email}");
    }
    // The busy subject's ledger is a prefix of what was acknowledged: nothing invented or
    // reordered, at most the writes after the backup missing.
    let busy_after = history(&cluster, BUSY).await;
    assert!(!busy_after.is_empty() && busy_after.len() <= busy_before.len());
    assert_eq!(busy_after, busy_before[..busy_after.len()]);
    eprintln!("busy subject: {} of {} ledger entries in the backup", busy_after.len(), busy_before.len());

    // New writes work and the audit chain continues from the backup's head.
    cluster.gateway().await.unwrap().record_consent(consent(NEVER, common::ConsentAction::Grant)).await.unwrap();
    assert_eq!(decide(&cluster, NEVER).await.unwrap(), gw_allow());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup.join("manifest.json")).unwrap()).unwrap();
    cluster.stop().await;
    let (code, out, err) = domicile(&["audit", "verify", data.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let verified: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        verified["head_seq"].as_u64().unwrap() > manifest["audit_seq"].as_u64().unwrap(),
        "the chain continues past the backup's head: {verified} vs {manifest}"
    );
    let (code, out, _) = domicile(&["node", "check", "--data-dir", data.to_str().unwrap(), "--region", "eu-central"]);
    assert_eq!(code, 0, "{out}");
}

fn gw_allow() -> i32 {
    common::Effect::Allow as i32
}
