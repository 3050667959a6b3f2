//! Standard consent records on a real cluster: a subject's ledger exported from its home node as
//! ISO/IEC TS 27560 records and as Kantara consent receipts, imported into other subjects, gives
//! the same consent in force and the same decisions; importing the same file again changes
//! nothing; an operator of another region is refused (in-region only).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_cluster_tests::{Cluster as _, TestCluster, identifier, region, select_email};
use domicile_runtime::identity::Scope;
use domicile_runtime::tls::TlsFiles;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");

fn domicile(args: &[String]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn node_args(addr: &str, region: &str, tls: &TlsFiles) -> Vec<String> {
    [
        "--addr",
        addr,
        "--region",
        region,
        "--ca",
        tls.ca.to_str().unwrap(),
        "--cert",
        tls.cert.to_str().unwrap(),
        "--key",
        tls.key.to_str().unwrap(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

async fn register(gateway: &mut DomicileClient<Channel>, email: &str) -> String {
    let request = gw::RegisterRequest {
        jurisdiction: "DE".into(),
        identifiers: vec![identifier("email", email)],
        idempotency_key: String::new(),
    };
    gateway.register(request).await.unwrap().into_inner().subject_ref
}

async fn consent(
    gateway: &mut DomicileClient<Channel>,
    email: &str,
    purpose: &str,
    channels: &[&str],
    action: common::ConsentAction,
    captured: i64,
    expires: Option<i64>,
) {
    let request = gw::RecordConsentRequest {
        subject: select_email(email),
        purpose: purpose.into(),
        channels: channels.iter().map(|c| (*c).to_owned()).collect(),
        action: action as i32,
        evidence: Some(common::Evidence {
            notice_version: "privacy-notice-v3".into(),
            capture_channel: "web".into(),
            source_system: "web-shop".into(),
            double_opt_in_confirmed: true,
            signal: None,
            ..Default::default()
        }),
        captured_at: Some(prost_types::Timestamp { seconds: captured, nanos: 0 }),
        expires_at: expires.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        idempotency_key: String::new(),
    };
    gateway.record_consent(request).await.unwrap();
}

/// The consent in force per purpose × channel, and the decisions on a fixed grid.
async fn state_of(gateway: &mut DomicileClient<Channel>, email: &str) -> (Vec<(String, String)>, Vec<i32>) {
    let history = gateway
        .consent_history(gw::ConsentHistoryRequest { subject: select_email(email), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    // Each entry with its kind and hours, so an implied consent or one for some hours that came
    // back as plain express consent would show.
    let mut in_force: Vec<(String, String)> = history
        .entries
        .iter()
        .map(|e| {
            let evidence = e.evidence.clone().unwrap_or_default();
            let kind = format!("{}/{}", evidence.consent_kind, evidence.hours.join("+"));
            (format!("{}/{}/{kind}", e.purpose, e.channels.join("+")), e.state.clone())
        })
        .collect();
    in_force.sort();
    let mut decisions = Vec::new();
    for (purpose, channel) in
        [("marketing", "email"), ("survey", "sms"), ("survey", "email"), ("profiling", "web"), ("research", "voice")]
    {
        let request = gw::DecideRequest {
            subject: select_email(email),
            purpose: purpose.into(),
            channel: channel.into(),
            at: None,
            ..Default::default()
        };
        decisions.push(gateway.decide(request).await.unwrap().into_inner().decision.unwrap().effect);
    }
    (in_force, decisions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_exported_as_27560_or_kantara_and_imported_elsewhere_decides_the_same() {
    let cluster = TestCluster::start(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let mut gateway = cluster.gateway().await.unwrap();
    let now = domicile_runtime::process::now_unix();
    let source = "records.source@example.de";
    let source_ref = register(&mut gateway, source).await;
    consent(&mut gateway, source, "marketing", &["email"], common::ConsentAction::Grant, now - 3000, None).await;
    consent(
        &mut gateway,
        source,
        "survey",
        &["sms", "email"],
        common::ConsentAction::Grant,
        now - 2000,
        Some(now + 86_400),
    )
    .await;
    consent(&mut gateway, source, "marketing", &["email"], common::ConsentAction::Withdraw, now - 1000, None).await;
    consent(&mut gateway, source, "profiling", &["web"], common::ConsentAction::Deny, now - 900, None).await;
    consent(&mut gateway, source, "research", &["voice"], common::ConsentAction::Grant, now - 800, None).await;
    // A consent to transfers (no channels) and an implied one travel with their kinds.
    for (purpose, channels, kind) in
        [("service", vec![], "explicit_transfer"), ("marketing", vec!["sms".to_owned()], "implied_purchase")]
    {
        let request = gw::RecordConsentRequest {
            subject: select_email(source),
            purpose: purpose.into(),
            channels,
            action: common::ConsentAction::Grant as i32,
            evidence: Some(common::Evidence {
                notice_version: "privacy-notice-v3".into(),
                source_system: "web-shop".into(),
                consent_kind: kind.into(),
                ..Default::default()
            }),
            captured_at: Some(prost_types::Timestamp { seconds: now - 700, nanos: 0 }),
            ..Default::default()
        };
        gateway.record_consent(request).await.unwrap();
    }
    let expected = state_of(&mut gateway, source).await;
    assert!(expected.0.iter().any(|(cell, _)| cell == "service//explicit_transfer/"), "{:?}", expected.0);

    let eu_addr = cluster.node_addr(&region("eu-central")).unwrap().to_string();
    let ops = cluster.issue_caller("records-ops", "eu-central", &[Scope::Context, Scope::Capture]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (format, target) in [("iso27560", "records.iso@example.de"), ("kantara", "records.kantara@example.de")] {
        let file = dir.path().join(format!("{format}.json"));
        let mut args: Vec<String> = ["records", "export"].iter().map(|s| (*s).to_owned()).collect();
        args.extend(node_args(&eu_addr, "eu-central", &ops));
        args.extend(
            [
                "--subject-ref",
                &source_ref,
                "--format",
                format,
                "--controller",
                "Example CX",
                "--out",
                file.to_str().unwrap(),
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        );
        let (code, out, err) = domicile(&args);
        assert_eq!(code, 0, "{out}{err}");
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(source), "no identifier in the records, only the subject ref");
        if format == "iso27560" {
            assert!(text.contains("ISO/IEC TS 27560:2023") && text.contains("dpv:ConsentWithdrawn"), "{text}");
        } else {
            assert!(text.contains("KI-CR-v1.1.0") && text.contains("Example CX"), "{text}");
        }

        let target_ref = register(&mut gateway, target).await;
        let mut import: Vec<String> = ["records", "import"].iter().map(|s| (*s).to_owned()).collect();
        import.extend(node_args(&eu_addr, "eu-central", &ops));
        import.extend(
            ["--subject-ref", &target_ref, "--format", format, "--file", file.to_str().unwrap()]
                .iter()
                .map(|s| (*s).to_owned()),
        );
        let (code, out, err) = domicile(&import);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(state_of(&mut gateway, target).await, expected, "{format}: the same consent state and decisions");
        // Again: nothing changes (each entry carries an idempotency key derived from the record).
        let entries_before = gateway
            .consent_history(gw::ConsentHistoryRequest { subject: select_email(target), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .entries
            .len();
        let (code, _, err) = domicile(&import);
        assert_eq!(code, 0, "{err}");
        let entries_after = gateway
            .consent_history(gw::ConsentHistoryRequest { subject: select_email(target), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .entries
            .len();
        assert_eq!(entries_after, entries_before, "{format}: importing the same file twice changes nothing");
    }

    // In-region only: an operator of another region is refused by the node.
    let foreign = cluster.issue_caller("us-records-ops", "us-east", &[Scope::Context, Scope::Capture]).unwrap();
    let mut args: Vec<String> = ["records", "export"].iter().map(|s| (*s).to_owned()).collect();
    args.extend(node_args(&eu_addr, "eu-central", &foreign));
    args.extend(["--subject-ref", &source_ref, "--format", "kantara"].iter().map(|s| (*s).to_owned()));
    let (code, out, err) = domicile(&args);
    assert_ne!(code, 0);
    assert!(err.contains("another region") && out.is_empty(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consent_report_streams_what_is_in_force_or_the_ledger_of_a_period_in_region_only() {
    let cluster = TestCluster::start(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let mut gateway = cluster.gateway().await.unwrap();
    let now = domicile_runtime::process::now_unix();
    let subjects = ["report.a@example.de", "report.b@example.de", "report.c@example.de"];
    for email in subjects {
        register(&mut gateway, email).await;
    }
    consent(&mut gateway, subjects[0], "marketing", &["email", "sms"], common::ConsentAction::Grant, now - 60, None)
        .await;
    consent(&mut gateway, subjects[1], "profiling", &["web"], common::ConsentAction::Deny, now - 30, None).await;

    let eu_addr = cluster.node_addr(&region("eu-central")).unwrap().to_string();
    let auditor = cluster.issue_caller("auditor", "eu-central", &[Scope::Audit]).unwrap();
    let report = |extra: &[&str], tls: &TlsFiles| {
        let mut args: Vec<String> = ["records", "report"].iter().map(|s| (*s).to_owned()).collect();
        args.extend(node_args(&eu_addr, "eu-central", tls));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        domicile(&args)
    };

    // In force: one row per subject, purpose and channel, with its evidence; no identifier.
    let (code, out, err) = report(&["--format", "csv"], &auditor);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("subject_ref,jurisdiction,sequence,purpose,channels,state"), "{out}");
    assert!(lines[0].ends_with(",signal,consent_kind,hours,review"), "{out}");
    assert!(lines[1..].iter().all(|l| l.ends_with(",false")), "nothing under review: {out}");
    assert_eq!(lines.len(), 4, "header + email, sms, web: {out}");
    assert!(lines.iter().any(|l| l.contains(",marketing,sms,granted,") && l.contains("web-shop")), "{out}");
    assert!(lines.iter().any(|l| l.contains(",profiling,web,denied,")), "{out}");
    for email in subjects {
        assert!(!out.contains(email), "no identifier in the report");
    }

    // The ledger of a period, as NDJSON: both entries since a minute before; none from tomorrow.
    let since = jiff::Timestamp::from_second(now - 120).unwrap().to_string();
    let (code, out, err) = report(&["--ledger", "--from", &since, "--format", "ndjson"], &auditor);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows.iter().all(|r| r["jurisdiction"] == "DE" && r["subject_ref"].as_str().unwrap().starts_with("eu-central/")),
        "{out}"
    );
    let tomorrow = jiff::Timestamp::from_second(now + 86_400).unwrap().to_string();
    let (code, out, _) = report(&["--ledger", "--from", &tomorrow, "--format", "ndjson"], &auditor);
    assert_eq!((code, out.as_str()), (0, ""));

    // In-region auditors (`audit`) only: not another region's, nor an operator's `admin`.
    let foreign = cluster.issue_caller("us-auditor", "us-east", &Scope::ALL).unwrap();
    let (code, _, err) = report(&[], &foreign);
    assert_ne!(code, 0);
    assert!(err.contains("another region"), "{err}");
    let clerk = cluster.issue_caller("clerk", "eu-central", &[Scope::Rights, Scope::Context, Scope::Admin]).unwrap();
    let (code, _, err) = report(&[], &clerk);
    assert_ne!(code, 0);
    assert!(err.contains("`audit`"), "{err}");
}
