//! Broken packs and test files: every problem reported at once, each at the right line:column.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers; clippy.toml only exempts the #[test] fns themselves"
)]

use std::fs;
use std::path::Path;

use domicile_policy::{Diagnostics, Effect, PackSet, PackSource, Severity, run_tests};

fn fixture(name: &str) -> PackSource {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    PackSource::new(name, fs::read_to_string(&path).unwrap())
}

fn real_pack(cc: &str) -> PackSource {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-packs").join(cc).join("pack.toml");
    PackSource::new(format!("{cc}/pack.toml"), fs::read_to_string(&path).unwrap())
}

/// `path:line:column: severity` plus the start of the message, for every diagnostic of `path`.
fn located(diagnostics: &Diagnostics, path: &str) -> Vec<(usize, usize, Severity, String)> {
    diagnostics.0.iter().filter(|d| d.path == path).map(|d| (d.line, d.column, d.severity, d.message.clone())).collect()
}

fn assert_has(
    found: &[(usize, usize, Severity, String)],
    line: usize,
    column: usize,
    severity: Severity,
    needle: &str,
) {
    assert!(
        found.iter().any(|(l, c, s, m)| *l == line && *c == column && *s == severity && m.contains(needle)),
        "expected {severity} at {line}:{column} containing {needle:?}; got {found:#?}"
    );
}

fn compile_broken() -> Diagnostics {
    PackSet::compile(&[
        real_pack("_baseline"),
        real_pack("de"),
        fixture("broken-semantics.toml"),
        fixture("bad-syntax.toml"),
        fixture("future-schema.toml"),
        fixture("broken-types.toml"),
    ])
    .unwrap_err()
}

#[test]
fn every_semantic_problem_of_a_pack_is_reported_in_one_run() {
    use Severity::{Error, Warning};
    let diagnostics = compile_broken();
    let found = located(&diagnostics, "broken-semantics.toml");
    assert_has(&found, 7, 16, Error, "jurisdiction DE is already covered by de/pack.toml");
    assert_has(&found, 10, 1, Error, "unknown key in [pack]");
    assert_has(&found, 13, 31, Error, "region must be");
    assert_has(&found, 14, 16, Error, "unknown localisation");
    assert_has(&found, 19, 14, Warning, "obligation is not used by any rule");
    assert_has(&found, 24, 11, Error, "unknown purpose");
    assert_has(&found, 25, 22, Error, "unknown channel");
    assert_has(&found, 29, 31, Error, "undefined obligation");
    assert_has(&found, 32, 6, Error, "duplicate rule id; first defined at line 22");
    assert_has(&found, 35, 9, Error, "unknown basis");
    assert_has(&found, 37, 14, Error, "unknown confidence");
    assert_has(&found, 38, 1, Error, "unknown key in [[rule]]");
    assert_has(&found, 51, 21, Error, "survey by email is already covered by rule `xx.survey.email` at line 40");
    assert_has(&found, 56, 1, Error, "missing key `cite` in [[rule]]");
    assert_has(&found, 57, 6, Error, "rule id must start with `xx.`");
    assert_has(&found, 59, 12, Error, "`channels` must name at least one channel");
    assert_eq!(found.iter().filter(|f| f.2 == Error).count(), 15, "{found:#?}");
    // Coverage warnings of a pack with broken rules would list false gaps.
    assert!(!found.iter().any(|f| f.3.starts_with("no rule for")), "{found:#?}");
    // File order, so authors fix top to bottom.
    assert!(found.windows(2).all(|w| (w[0].0, w[0].1) <= (w[1].0, w[1].1)));
}

#[test]
fn wrong_types_and_missing_sections_are_reported_together() {
    use Severity::Error;
    let found = located(&compile_broken(), "broken-types.toml");
    assert_has(&found, 1, 1, Error, "missing key `residency` in the pack file");
    assert_has(&found, 2, 1, Error, "unknown key in the pack file");
    assert_has(&found, 5, 6, Error, "pack id must be");
    assert_has(&found, 6, 16, Error, "not an assigned ISO 3166-1 alpha-2 country code");
    assert_has(&found, 7, 11, Error, "version must be");
    assert_has(&found, 8, 9, Error, "`title` must not be empty");
    assert_has(&found, 11, 15, Error, "an obligation must be a table");
    assert_has(&found, 16, 12, Error, "`channels` must be an array of strings");
    assert_has(&found, 20, 8, Error, "`note` must be a string");
    assert_eq!(found.len(), 9, "{found:#?}");
}

#[test]
fn syntax_errors_are_all_reported_and_stop_only_their_file() {
    let diagnostics = compile_broken();
    let found = located(&diagnostics, "bad-syntax.toml");
    assert_has(&found, 4, 10, Severity::Error, "invalid toml");
    assert_has(&found, 6, 11, Severity::Error, "invalid toml");
    assert!(found.iter().all(|f| f.3.starts_with("invalid toml")), "no follow-on errors: {found:#?}");
    // The other files were still checked in the same run.
    for path in ["broken-semantics.toml", "future-schema.toml", "broken-types.toml"] {
        assert!(!located(&diagnostics, path).is_empty(), "{path} was not checked");
    }
    // The good packs among them contributed warnings only.
    assert!(located(&diagnostics, "de/pack.toml").iter().all(|f| f.2 == Severity::Warning));
    assert!(located(&diagnostics, "_baseline/pack.toml").iter().all(|f| f.2 == Severity::Warning));
}

#[test]
fn a_newer_schema_is_refused_before_anything_else_is_read() {
    let found = located(&compile_broken(), "future-schema.toml");
    assert_eq!(
        found,
        vec![(2, 10, Severity::Error, "unsupported schema 3; this engine reads schema 1 to 2".to_owned())]
    );
}

#[test]
fn diagnostics_render_as_path_line_column() {
    let diagnostics = compile_broken();
    let text = diagnostics.to_string();
    assert!(
        text.lines()
            .any(|l| l == "future-schema.toml:2:10: error: unsupported schema 3; this engine reads schema 1 to 2"),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("broken-semantics.toml:19:14: warning: ")), "{text}");
    assert_eq!(text.lines().count(), diagnostics.0.len());
    let as_error: &dyn std::error::Error = &diagnostics;
    assert!(as_error.to_string().contains("broken-types.toml:1:1: error: "));
}

#[test]
fn missing_schema_is_an_error() {
    let err = PackSet::compile(&[PackSource::new("x.toml", "[pack]\nid = \"x\"\n")]).unwrap_err();
    assert_eq!(err.to_string(), "x.toml:1:1: error: missing key `schema`; this engine reads schema 1 to 2");
}

#[test]
fn warnings_come_back_alongside_a_successful_compile() {
    let (set, warnings) = PackSet::compile(&[fixture("clean-with-warnings.toml")]).unwrap();
    assert_eq!(set.len(), 1);
    assert!(warnings.iter().all(|w| w.severity == Severity::Warning));
    let text: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert!(text.contains(&"clean-with-warnings.toml:23:15: warning: obligations on a prohibited rule are never attached to a decision".to_owned()), "{text:#?}");
    assert!(text.contains(&"clean-with-warnings.toml:3:1: warning: no rule for survey by email, sms, voice, voice_automated, post, push, messaging, chat, web; these default to deny".to_owned()), "{text:#?}");
}

#[test]
fn broken_test_files_report_every_problem() {
    let (set, _) = PackSet::compile(&[fixture("clean-with-warnings.toml")]).unwrap();
    let pack = set.packs().next().unwrap();
    let err = run_tests(pack, &fixture("bad-tests.toml")).unwrap_err();
    let found = located(&err, "bad-tests.toml");
    assert_has(&found, 6, 11, Severity::Error, "unknown purpose");
    assert_has(&found, 10, 12, Severity::Error, "reason is not a rule of pack `ok`");
    assert_has(&found, 16, 6, Severity::Error, "`at` must be an RFC 3339 timestamp");
    assert_has(&found, 17, 10, Severity::Error, "`expect` must be `allow` or `deny`");
    assert_has(&found, 20, 8, Severity::Error, "duplicate case name; first used at line 12");
    assert_has(&found, 24, 32, Severity::Error, "unknown key in `consent`");
    assert_eq!(found.len(), 6, "{found:#?}");
}

#[test]
fn a_test_file_without_cases_fails() {
    let (set, _) = PackSet::compile(&[fixture("clean-with-warnings.toml")]).unwrap();
    let pack = set.packs().next().unwrap();
    let err = run_tests(pack, &PackSource::new("empty.toml", "pack = \"ok\"\n")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "empty.toml:1:1: error: test file has no `[[case]]`, `[[rights]]`, `[[transfer]]` or `[[collection]]` entries"
    );
    let err = run_tests(pack, &PackSource::new("other.toml", "pack = \"de\"\n[[case]]\nname = \"n\"\npurpose = \"marketing\"\nchannel = \"email\"\nat_unix = 0\nexpect = \"deny\"\n")).unwrap_err();
    assert_eq!(err.to_string(), "other.toml:1:8: error: test file is for another pack; running against `ok`");
}

#[test]
fn failing_cases_and_uncovered_rules_are_reported() {
    let (set, _) = PackSet::compile(&[fixture("clean-with-warnings.toml")]).unwrap();
    let pack = set.packs().next().unwrap();
    let tests = PackSource::new(
        "t.toml",
        r#"
[[case]]
name = "wrongly expects an allow"
purpose = "marketing"
channel = "email"
at = 2026-11-23T10:00:00Z
consent = { state = "granted", captured_at_unix = 0, double_opt_in = true }
expect = "allow"
reasons = ["ok.default-deny"]
outcome = "consent_granted"
obligations = ["spare"]
valid_until = "2027-01-01T00:00:00Z"

[[case]]
name = "default deny"
purpose = "survey"
channel = "sms"
at_unix = 1795428000
expect = "deny"
reasons = ["ok.default-deny"]
outcome = "default_deny"
"#,
    );
    let report = run_tests(pack, &tests).unwrap();
    assert_eq!((report.passed, report.failed), (1, 1));
    assert!(!report.all_passed());
    let failed = &report.cases[0];
    assert!(!failed.passed);
    assert_eq!((failed.path.as_str(), failed.line), ("t.toml", 2));
    assert_eq!(failed.decision.effect, Effect::Deny);
    assert_eq!(failed.failures.len(), 5, "{:#?}", failed.failures);
    assert!(failed.failures[0].starts_with("expected allow, got deny (prohibited: "), "{}", failed.failures[0]);
    assert_eq!(failed.failures[1], "expected reason `ok.default-deny`, got [ok.marketing.email]");
    assert_eq!(failed.failures[2], "expected outcome consent_granted, got prohibited");
    assert_eq!(failed.failures[3], "expected obligations [spare], got []");
    assert_eq!(failed.failures[4], "expected valid_until 2027-01-01T00:00:00Z, got none");
    // The failing case still exercised the rule, so coverage is complete.
    assert!(report.uncovered_rules.is_empty());
    let text = report.to_string();
    assert!(text.contains("FAILED ok: wrongly expects an allow (t.toml:2)"), "{text}");
    assert!(text.ends_with("ok@2026.1: 1 passed, 1 failed"), "{text}");

    let only_default = PackSource::new(
        "d.toml",
        "[[case]]\nname = \"d\"\npurpose = \"survey\"\nchannel = \"sms\"\nat_unix = 0\nexpect = \"deny\"\n",
    );
    let report = run_tests(pack, &only_default).unwrap();
    assert!(report.all_passed());
    assert_eq!(report.uncovered_rules, ["ok.marketing.email"]);
}
