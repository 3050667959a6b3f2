//! Signed pack sets on a running cluster: a new signed version is picked up without a restart and
//! named by the very next decisions; a tampered or unsigned set is refused and the previous set
//! keeps serving; no decision fails during reloads.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use domicile_cluster_tests::files::copy_dir;
use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::node::v1 as node;
use domicile_cluster_tests::{Cluster as _, ScenarioCluster, TestOptions, region, repo_packs};
use domicile_runtime::packs::{TrustConfig, TrustedKeyFile, generate_key, sign_dir};

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const PATIENCE: Duration = Duration::from_secs(20);

fn set_de_version(packs: &Path, version: &str) {
    let path = packs.join("de/pack.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text.lines().find(|l| l.starts_with("version = ")).unwrap().to_owned();
    std::fs::write(&path, text.replacen(&line, &format!("version = \"{version}\""), 1)).unwrap();
}

fn decide_request() -> gw::DecideRequest {
    gw::DecideRequest {
        subject: Some(gw::SubjectSelector {
            selector: Some(gw::subject_selector::Selector::Identifier(common::Identifier {
                kind: "email".into(),
                value: "reload.probe@example.de".into(),
            })),
        }),
        purpose: "marketing".into(),
        channel: "email".into(),
        at: None,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_sets_reload_live_and_tampered_sets_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let packs = work.path().join("packs");
    copy_dir(&repo_packs(), &packs).unwrap();
    let (private, public) = (work.path().join("legal.key"), work.path().join("legal.pub"));
    generate_key(&private, &public).unwrap();
    sign_dir(&packs, "legal", &private).unwrap();
    let trust = TrustConfig {
        trusted_keys: vec![TrustedKeyFile { key_id: "legal".into(), public_key_file: public.clone() }],
        min_signatures: 1,
    };
    let options = TestOptions {
        packs_dir: Some(packs.clone()),
        packs_trust: Some(trust),
        packs_reload_ms: Some(100),
        ..TestOptions::default()
    };
    let cluster = ScenarioCluster::start_with(BIN, &["eu-central"], options).await.expect("signed set loads");
    let mut client = cluster.gateway().await.unwrap();
    client
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![common::Identifier { kind: "email".into(), value: "reload.probe@example.de".into() }],
            idempotency_key: String::new(),
        })
        .await
        .unwrap();
    let version = |d: &common::Decision| d.pack.as_ref().map(|p| p.version.clone()).unwrap_or_default();
    let first = client.decide(decide_request()).await.unwrap().into_inner().decision.unwrap();
    assert_eq!(version(&first), "2026.11.0");

    // Decisions run continuously while the set changes underneath; none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let background = {
        let (stop, done, failed) = (Arc::clone(&stop), Arc::clone(&done), Arc::clone(&failed));
        let mut client = cluster.gateway().await.unwrap();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.decide(decide_request()).await {
                    Ok(reply) if reply.get_ref().decision.is_some() => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };

    // A new version, signed: the next decisions name it, without a restart.
    set_de_version(&packs, "2026.11.1");
    sign_dir(&packs, "legal", &private).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let d = client.decide(decide_request()).await.unwrap().into_inner().decision.unwrap();
        if version(&d) == "2026.11.1" {
            break;
        }
        assert!(Instant::now() < deadline, "the signed new version was not picked up");
        tokio::task::yield_now().await;
    }

    // Tampered: an edit nobody signed. Refused, with the reason reported; the old set serves.
    set_de_version(&packs, "2026.11.2");
    let mut eu = cluster.node(&region("eu-central")).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    let reason = loop {
        let info = eu.info(node::InfoRequest {}).await.unwrap().into_inner();
        if !info.packs_reload_error.is_empty() {
            break info.packs_reload_error;
        }
        assert!(Instant::now() < deadline, "the tampered set was not refused");
        tokio::task::yield_now().await;
    };
    assert!(reason.contains("sign"), "the refusal names the signature problem: {reason}");
    for _ in 0..20 {
        let d = client.decide(decide_request()).await.unwrap().into_inner().decision.unwrap();
        assert_eq!(version(&d), "2026.11.1", "the previous set keeps serving");
    }

    // Unsigned altogether: refused too, for that reason, while the signed set keeps serving.
    std::fs::remove_file(packs.join("SIGNATURES.toml")).unwrap();
    set_de_version(&packs, "2026.11.3");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let info = eu.info(node::InfoRequest {}).await.unwrap().into_inner();
        if info.packs_reload_error.contains("not signed") {
            break;
        }
        assert!(Instant::now() < deadline, "the unsigned set was not refused: {}", info.packs_reload_error);
        tokio::task::yield_now().await;
    }
    let d = client.decide(decide_request()).await.unwrap().into_inner().decision.unwrap();
    assert_eq!(version(&d), "2026.11.1");

    stop.store(true, Ordering::Relaxed);
    background.await.unwrap();
    assert!(done.load(Ordering::Relaxed) > 0, "decisions ran during the reloads");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "a reload failed a request");
}
