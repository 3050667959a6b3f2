//! `domicile rights …` for operators of a region (issue 22, item 5), on a real cluster: the
//! subject's history, restriction and its lifting (decisions follow), rectification, the
//! requests with their deadlines and citations, an export written to a file, erasure, in words
//! and as JSON; an operator of another region is refused (in-region only); and the tracked flow
//! (open, the outbox, verify, status, an export on the verified request, overdue, extend).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::{Cluster as _, TestCluster, identifier, region, select_ref};
use domicile_runtime::identity::Scope;
use domicile_runtime::tls::TlsFiles;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const EMAIL: &str = "rights.cli@example.de";

fn rights(addr: &str, node_region: &str, tls: &TlsFiles, subject: &str, command: &[&str]) -> (i32, String, String) {
    let mut args: Vec<String> = vec![
        "rights".into(),
        "--addr".into(),
        addr.into(),
        "--region".into(),
        node_region.into(),
        "--ca".into(),
        tls.ca.display().to_string(),
        "--cert".into(),
        tls.cert.display().to_string(),
        "--key".into(),
        tls.key.display().to_string(),
        "--subject-ref".into(),
        subject.into(),
    ];
    args.extend(command.iter().map(|s| (*s).to_owned()));
    let out = std::process::Command::new(BIN).args(&args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_of_the_region_exercise_rights_from_the_command_line() {
    let cluster = TestCluster::start_on_env_store(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let subject = client
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", EMAIL)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .subject_ref;
    client
        .record_consent(gw::RecordConsentRequest {
            subject: select_ref(&subject),
            purpose: "marketing".into(),
            channels: vec!["email".into()],
            action: common::ConsentAction::Grant as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let eu = cluster.node_addr(&region("eu-central")).unwrap().to_string();
    // Operators of the region: an override of the verification needs `admin`.
    let ops = cluster.issue_caller("rights-ops", "eu-central", &[Scope::Rights, Scope::Context, Scope::Admin]).unwrap();
    let run = |command: &[&str]| rights(&eu, "eu-central", &ops, &subject, command);
    let decide = || gw::DecideRequest {
        subject: select_ref(&subject),
        purpose: "marketing".into(),
        channel: "email".into(),
        ..Default::default()
    };

    let (code, out, err) = run(&["--json", "history"]);
    assert_eq!(code, 0, "{err}");
    let history = json(&out);
    assert_eq!(history["jurisdiction"], "DE");
    assert_eq!(history["entries"].as_array().map(Vec::len), Some(1), "{history}");

    let (code, out, err) = run(&["restrict"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("restricted; restriction request"), "{out}");
    let d = client.decide(decide()).await.unwrap().into_inner().decision.unwrap();
    assert_eq!(d.effect, common::Effect::Deny as i32, "restricted: {}", d.explanation);
    let (code, _, err) = run(&["lift", "--override", "controller_correction"]);
    assert_eq!(code, 0, "{err}");
    let d = client.decide(decide()).await.unwrap().into_inner().decision.unwrap();
    assert_eq!(d.effect, common::Effect::Allow as i32, "lifted: {}", d.explanation);

    let (code, out, err) = run(&["--json", "rectify", "--override", "controller_correction", "--set", "tier=gold"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["rights_request"]["kind"], "rectification");

    let dir = tempfile::tempdir().unwrap();
    let document = dir.path().join("export.json");
    let (code, out, err) = run(&["export", "--override", "controller_correction", "--out", document.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("access request") && out.contains("GDPR"), "the deadline's citation: {out}");
    let exported = std::fs::read_to_string(&document).unwrap();
    assert!(exported.contains(EMAIL) && exported.contains("gold"), "the export is complete, in the region");

    let (code, out, err) = run(&["--json", "requests"]);
    assert_eq!(code, 0, "{err}");
    let requests = json(&out)["requests"].as_array().cloned().unwrap();
    let kinds: Vec<&str> = requests.iter().filter_map(|r| r["kind"].as_str()).collect();
    assert_eq!(kinds, ["restriction", "restriction", "rectification", "access"], "{requests:?}");
    for r in &requests {
        assert!(r["deadline_at"].is_string() && r["citation"].as_str().is_some_and(|c| c.contains("GDPR")), "{r}");
        assert_eq!(r["overdue"], false, "{r}");
    }

    // An operator of another region is refused: the subject's data stays in its region.
    let us = cluster.issue_caller("us-ops", "us-east", &[Scope::Rights, Scope::Context]).unwrap();
    let (code, _, err) = rights(&eu, "eu-central", &us, &subject, &["export", "--override", "controller_correction"]);
    assert_ne!(code, 0);
    assert!(err.contains("PermissionDenied"), "{err}");

    let (code, out, err) = run(&["erase", "--override", "controller_correction"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("erased: 2 consent records") || out.starts_with("erased: 1 consent records"), "{out}");
    let (code, _, err) = run(&["history"]);
    assert_ne!(code, 0, "the subject is gone");
    assert!(err.contains("NotFound") && !err.contains(EMAIL), "{err}");
}

/// The tracked flow (issue 22, items 2 and 5): open, the outbox as the delivery system reads it,
/// a wrong and a right code, status, an export on the verified request, overdue, extend, ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_track_verified_requests_from_the_command_line() {
    let cluster = TestCluster::start_on_env_store(BIN, &["eu-central"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let registered = client
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", EMAIL)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (subject, link) = (registered.subject_ref, registered.links[0].clone());
    let eu = cluster.node_addr(&region("eu-central")).unwrap().to_string();
    let ops = cluster.issue_caller("rights-desk", "eu-central", &[Scope::Rights]).unwrap();
    let run = |command: &[&str]| rights(&eu, "eu-central", &ops, &subject, command);
    let now = domicile_runtime::process::now_unix();

    // Without a verified request or an override nothing is exported.
    let (code, _, err) = run(&["export"]);
    assert_ne!(code, 0);
    assert!(err.contains("FailedPrecondition") && err.contains("request_id"), "{err}");

    let (code, out, err) = run(&["--json", "open", "--kind", "access", "--deliver-to", &link]);
    assert_eq!(code, 0, "{err}");
    let opened = json(&out);
    assert_eq!(opened["rights_request"]["status"], "verifying", "{opened}");
    let id = opened["active_request_id"].as_str().unwrap().to_owned();

    let (code, out, err) = run(&["outbox"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("1 challenges to deliver") && out.contains(EMAIL), "{out}");
    let (code, out, err) = run(&["--json", "outbox"]);
    assert_eq!(code, 0, "{err}");
    let entry = json(&out)["entries"][0].clone();
    assert_eq!((entry["request_id"].as_str(), entry["identifier_value"].as_str()), (Some(id.as_str()), Some(EMAIL)));
    let code_sent = entry["code"].as_str().unwrap().to_owned();

    let (code, out, err) = run(&["verify", "--request", &id, "--code", "WRONG00000"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("not verified (4 attempts left)"), "{out}");
    let (code, out, err) = run(&["--json", "verify", "--request", &id, "--code", &code_sent]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["verified"], true, "{out}");
    let (code, out, err) = run(&["--json", "status", "--request", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["rights_request"]["status"], "verified");

    let dir = tempfile::tempdir().unwrap();
    let document = dir.path().join("export.json");
    let (code, out, err) = run(&["export", "--request", &id, "--out", document.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("access request {id} completed")), "{out}");
    assert!(std::fs::read_to_string(&document).unwrap().contains(EMAIL));

    // An open erasure request falls due in a month (GDPR), extendable by two.
    let (code, out, err) = run(&["--json", "open", "--kind", "erasure", "--deliver-to", &link]);
    assert_eq!(code, 0, "{err}");
    let erasure = json(&out)["active_request_id"].as_str().unwrap().to_owned();
    let in_40_days = (now + 40 * 86_400).to_string();
    let (code, out, err) = run(&["--json", "overdue", "--as-of", &in_40_days]);
    assert_eq!(code, 0, "{err}");
    let overdue = json(&out);
    assert_eq!(overdue["counts"]["erasure"], 1, "{overdue}");
    assert_eq!(overdue["requests"][0]["rights_request"]["request_id"], erasure.as_str());
    let (code, out, err) = run(&["overdue"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("0 overdue"), "{out}");
    let (code, out, err) = run(&["extend", "--request", &erasure]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("erasure request {erasure}")), "{out}");
    let (code, out, err) = run(&["--json", "overdue", "--as-of", &in_40_days]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["counts"]["erasure"], 0, "extended: {out}");

    let (code, out, err) = run(&["outbox", "--ack", &erasure]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "1 delivered challenges removed");
}
