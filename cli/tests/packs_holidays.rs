//! `domicile packs …` with public-holiday calendars (`<pack>/holidays.toml`): explain shows the
//! calendar and fails closed past its data, diff sees a changed calendar, sign covers it and
//! verify refuses it changed, and the report lists it.

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

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn explain_fr_voice(at: &str) -> serde_json::Value {
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
        at,
        "--format",
        "json",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn explain_names_the_holiday_and_fails_closed_past_the_data() {
    // Armistice Day 2026, 10:30 Paris.
    let trace = explain_fr_voice("2026-11-11T09:30:00Z");
    assert_eq!((trace["effect"].as_str(), trace["outcome"].as_str()), (Some("deny"), Some("outside_window")));
    assert_eq!(trace["valid_until"], "2026-11-12T09:00:00Z");
    let rules = trace["rules"].as_array().unwrap();
    let rule = rules.iter().find(|r| r["rule"] == "fr.marketing.voice").unwrap();
    let checks = rule["checks"].to_string();
    assert!(checks.contains("public holiday (Armistice Day)"), "{checks}");
    assert!(checks.contains("public holidays (calendar `fr`, 2026-2027) closed"), "{checks}");
    // 2028: the holiday data ends in 2027.
    let trace = explain_fr_voice("2028-03-01T09:30:00Z");
    assert_eq!((trace["effect"].as_str(), trace["outcome"].as_str()), (Some("deny"), Some("holidays_not_covered")));
    assert!(trace["explanation"].as_str().unwrap().contains("calendar `fr` covers 2026-2027"), "{trace}");
}

#[test]
fn a_changed_calendar_is_a_changed_decision_a_changed_report_and_a_tampered_set() {
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("set");
    copy_dir(&root().join("policy-packs"), &set);
    // A new public holiday on Monday 23 November 2026.
    let calendar = set.join("fr/holidays.toml");
    let text_before = std::fs::read_to_string(&calendar).unwrap();
    let changed = text_before.replace("2026-12-25 = ", "2026-11-23 = \"A new holiday\"\n2026-12-25 = ");
    std::fs::write(&calendar, &changed).unwrap();

    // `diff` of the single pack takes its own calendar, not the context's.
    let out = domicile(&["packs", "diff", "policy-packs/fr", &s(&set.join("fr")), "--at", "2026-11-23T09:00:00Z"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("marketing by voice at 2026-11-23T09:00:00Z"), "{stdout}");
    assert!(stdout.contains("→ deny (outside_window"), "{stdout}");
    let same = domicile(&["packs", "diff", "policy-packs/fr", "policy-packs/fr", "--at", "2026-11-23T09:00:00Z"]);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same).0);

    // The report lists the calendar on the pack's page and the change on the diff page.
    let site = tmp.path().join("site");
    let out = domicile(&["packs", "report", "--packs", &s(&set), "--against", "policy-packs", "--out", &s(&site)]);
    assert!(out.status.success(), "{:?}", text(&out));
    let page = std::fs::read_to_string(site.join("pack-fr.html")).unwrap();
    assert!(page.contains("id=\"holidays-fr\"") && page.contains("2026-11-23 A new holiday"), "fr page");
    assert!(page.contains("python-holidays 0.108"), "fr page names the source");
    let diff = std::fs::read_to_string(site.join("diff.html")).unwrap();
    assert!(diff.contains("public holidays") && diff.contains("2026-11-23 A new holiday"), "diff page");
    let index = std::fs::read_to_string(site.join("index.html")).unwrap();
    assert!(index.contains("<span class=\"mark\">holidays</span>"), "matrix marks");

    // Signed, then changed: refused, naming the calendar.
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (key, public) = (keys.join("legal.key"), keys.join("legal.pub"));
    assert!(domicile(&["packs", "keygen", "--private", &s(&key), "--public", &s(&public)]).status.success());
    assert!(domicile(&["packs", "sign", &s(&set), "--key", &s(&key), "--key-id", "legal"]).status.success());
    let signatures = std::fs::read_to_string(set.join("SIGNATURES.toml")).unwrap();
    assert!(signatures.contains("path = \"fr/holidays.toml\""), "{signatures}");
    let trusted = format!("legal={}", s(&public));
    assert!(domicile(&["packs", "verify", &s(&set), "--trusted", &trusted]).status.success());
    std::fs::write(&calendar, &text_before).unwrap();
    let out = domicile(&["packs", "verify", &s(&set), "--trusted", &trusted]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("pack file changed after signing: fr/holidays.toml"), "{stderr}");
}
