//! `domicile packs …` as authors and CI run it: the built binary, its output and exit codes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers; clippy.toml only exempts the #[test] fns themselves"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn packs_dir() -> PathBuf {
    root().join("policy-packs")
}

fn domicile(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_domicile")).args(args).current_dir(root()).output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn validate_and_test_pass_on_the_shipped_packs() {
    let out = domicile(&["packs", "validate", "policy-packs"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("packs valid"), "{stdout}");

    let out = domicile(&["packs", "test", "policy-packs", "--format", "json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["failed"], 0);
    assert!(report["packs"].as_array().unwrap().iter().all(|p| p["uncovered_rules"].as_array().unwrap().is_empty()));
}

#[test]
fn a_broken_pack_reports_every_problem_with_a_location_and_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("set");
    std::fs::create_dir_all(dir.join("zz")).unwrap();
    std::fs::create_dir_all(dir.join("gaps")).unwrap();
    let fixtures = root().join("policy/tests/fixtures");
    std::fs::copy(fixtures.join("broken-v2.toml"), dir.join("zz/pack.toml")).unwrap();
    std::fs::copy(fixtures.join("gaps-v2.toml"), dir.join("gaps/pack.toml")).unwrap();
    let out = domicile(&["packs", "validate", dir.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in [
        "zz/pack.toml:10:11: error: `extends` names no pack in this set",
        "zz/pack.toml:32:12: error: undefined lifetime",
        "zz/pack.toml:39:13: error: marketing by email is already covered",
        "gaps/pack.toml:4:1: error: no rule for marketing by sms",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in\n{stderr}");
    }
    let out = domicile(&["packs", "validate", dir.to_str().unwrap(), "--format", "json"]);
    let report: serde_json::Value = serde_json::from_str(&text(&out).0).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(report["diagnostics"].as_array().unwrap().len() >= 10);
}

#[test]
fn explain_names_the_rule_and_its_legal_reference() {
    let out = domicile(&[
        "packs",
        "explain",
        "--jurisdiction",
        "DE",
        "--purpose",
        "marketing",
        "--channel",
        "voice",
        "--at",
        "2026-11-23T10:00:00Z",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("rule de.marketing.voice"), "{stdout}");
    assert!(stdout.contains("§ 7 Abs. 2 Nr. 1 UWG"), "{stdout}");
    assert!(stdout.contains("decision: deny"), "{stdout}");
    // The author's note travels with the rule into the human view.
    assert!(stdout.contains("note: Consumers only with prior express consent"), "{stdout}");

    let out = domicile(&[
        "packs",
        "explain",
        "--jurisdiction",
        "FR",
        "--purpose",
        "marketing",
        "--channel",
        "voice",
        "--consent",
        "granted",
        "--at",
        "2026-11-28T10:00:00Z",
        "--format",
        "json",
    ]);
    let trace: serde_json::Value = serde_json::from_str(&text(&out).0).unwrap();
    assert_eq!(trace["effect"], "deny");
    assert_eq!(trace["outcome"], "outside_window");
    assert_eq!(trace["valid_until"], "2026-11-30T09:00:00Z");

    let bad = domicile(&["packs", "explain", "--jurisdiction", "DE", "--purpose", "telepathy", "--channel", "voice"]);
    assert_eq!(bad.status.code(), Some(2));
    let unknown =
        domicile(&["packs", "explain", "--jurisdiction", "AR", "--purpose", "marketing", "--channel", "voice"]);
    assert_eq!(unknown.status.code(), Some(1));
}

/// "Where does a subject of X live and who may receive what", "how long for a request in X".
#[test]
fn explain_answers_residency_and_rights_with_citations() {
    let out = domicile(&["packs", "explain", "--jurisdiction", "RU", "--residency", "--rights"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("home regions: ru-central"), "{stdout}");
    assert!(stdout.contains("localisation: strict"), "{stdout}");
    assert!(stdout.contains("collection: only callers of a home region"), "{stdout}");
    assert!(stdout.contains("transfers: none"), "{stdout}");
    assert!(stdout.contains("basis: 152-FZ art. 18(5)"), "{stdout}");
    assert!(stdout.contains("deadline: 10 days from receipt"), "{stdout}");
    assert!(stdout.contains("extension: up to 5 days more"), "{stdout}");

    let out = domicile(&["packs", "explain", "--jurisdiction", "DE", "--residency", "--rights", "--format", "json"]);
    let answer: serde_json::Value = serde_json::from_str(&text(&out).0).unwrap();
    let transfers = answer["residency"]["transfers"].as_array().unwrap();
    let dpf = transfers.iter().find(|t| t["id"] == "us-dpf").expect("DE inherits the EU-US DPF transfer");
    assert_eq!(dpf["to"], serde_json::json!(["us-east"]));
    assert_eq!(dpf["purposes"], serde_json::json!(["service"]));
    assert!(dpf["cite"].as_str().unwrap().contains("2023/1795"));
    assert_eq!(answer["rights"]["deadline"], "1 month");
    assert_eq!(answer["rights"]["extension"], "2 months");
    assert!(answer["rights"]["cite"].as_str().unwrap().contains("Art. 12(3)"));

    // A decision question and a profile question are not mixed.
    let mixed = domicile(&["packs", "explain", "--jurisdiction", "DE", "--rights", "--purpose", "marketing"]);
    assert_eq!(mixed.status.code(), Some(2));
}

#[test]
fn explain_says_when_a_subdivision_falls_back_to_its_country_pack() {
    let explain = |jurisdiction: &str, format: &str| {
        domicile(&[
            "packs",
            "explain",
            "--jurisdiction",
            jurisdiction,
            "--purpose",
            "marketing",
            "--channel",
            "email",
            "--at",
            "2026-11-23T10:00:00Z",
            "--format",
            format,
        ])
    };
    // New York has no pack of its own: the federal pack explains it, and says it stands in.
    let out = explain("us-ny", "human");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("country fallback: no pack covers the subject's subdivision"), "{stdout}");
    assert!(stdout.contains("the pack of its country US"), "{stdout}");
    let trace: serde_json::Value = serde_json::from_str(&text(&explain("US-NY", "json")).0).unwrap();
    assert_eq!((trace["jurisdiction"].as_str(), trace["country_fallback"].as_bool()), (Some("US"), Some(true)));
    assert!(trace["pack"].as_str().unwrap().starts_with("us@"), "{trace}");
    assert!(trace["explanation"].as_str().unwrap().contains("country fallback"), "{trace}");

    // California has its overlay: no fallback claimed.
    let out = explain("US-CA", "human");
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    assert!(stdout.contains("us-ca@") && !stdout.contains("fallback"), "{stdout}");
    let trace: serde_json::Value = serde_json::from_str(&text(&explain("US-CA", "json")).0).unwrap();
    assert_eq!((trace["jurisdiction"].as_str(), trace["country_fallback"].as_bool()), (Some("US-CA"), Some(false)));

    // A code ISO 3166-2 does not list is a usage error that does not echo it.
    for bad in ["US-CAL", "de-zz", "BR-XX"] {
        let out = explain(bad, "human");
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stdout}{stderr}");
        assert!(stderr.contains("ISO 3166-2"), "{stderr}");
        let value = bad.split_once('-').unwrap().1;
        assert!(!stderr.contains(bad) && !stderr.contains(value), "{bad}: {stderr}");
    }
}

#[test]
fn diff_lists_changed_decisions_and_exits_1_when_something_changed() {
    let next = root().join("policy/tests/fixtures/diff/de-next");
    let out = domicile(&["packs", "diff", "policy-packs/de", next.to_str().unwrap(), "--at", "2026-11-23T10:00:00Z"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("de@2026.11.0 → de@2026.12.0"), "{stdout}");
    assert!(stdout.lines().skip(1).all(|l| l.trim_start().starts_with("marketing by post")), "{stdout}");

    let same = domicile(&["packs", "diff", "policy-packs/de", "policy-packs/de", "--at", "2026-11-23T10:00:00Z"]);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same).1);

    let out = domicile(&[
        "packs",
        "diff",
        "policy-packs/de",
        next.to_str().unwrap(),
        "--at",
        "2026-11-23T10:00:00Z",
        "--format",
        "json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&text(&out).0).unwrap();
    assert_eq!(report["changed"], true);
    let changes = report["packs"][0]["changes"].as_array().unwrap();
    assert!(!changes.is_empty() && changes.iter().all(|c| c["purpose"] == "marketing" && c["channel"] == "post"));
}

#[test]
fn keygen_sign_verify_and_a_tampered_set_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("packs");
    copy_dir(&packs_dir(), &set);
    let _ = std::fs::remove_file(set.join("SIGNATURES.toml"));
    let key = tmp.path().join("legal.key");
    let public = tmp.path().join("legal.pub");
    let s = |p: &Path| p.to_str().unwrap().to_owned();

    let out = domicile(&["packs", "keygen", "--private", &s(&key), "--public", &s(&public)]);
    assert!(out.status.success(), "{}", text(&out).1);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let trusted = format!("legal={}", s(&public));

    let unsigned = domicile(&["packs", "verify", &s(&set), "--trusted", &trusted]);
    assert_eq!(unsigned.status.code(), Some(1));
    assert!(text(&unsigned).1.contains("not signed"), "{}", text(&unsigned).1);

    let out = domicile(&["packs", "sign", &s(&set), "--key", &s(&key), "--key-id", "legal"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let out = domicile(&["packs", "verify", &s(&set), "--trusted", &trusted, "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let report: serde_json::Value = serde_json::from_str(&text(&out).0).unwrap();
    assert_eq!(report["signed_by"][0], "legal");

    let two = domicile(&["packs", "verify", &s(&set), "--trusted", &trusted, "--min-signatures", "2"]);
    assert_eq!(two.status.code(), Some(1));

    let pack = set.join("fr/pack.toml");
    let tampered = std::fs::read_to_string(&pack).unwrap().replace("10:00-13:00", "08:00-13:00");
    std::fs::write(&pack, tampered).unwrap();
    let out = domicile(&["packs", "verify", &s(&set), "--trusted", &trusted]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("changed after signing: fr/pack.toml"), "{}", text(&out).1);
}
