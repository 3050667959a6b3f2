//! The authoring tools on the real packs: explain, diff, strict schema-2 validation, and the
//! acceptance scenarios of the pack issue (FR calling window, CA implied consent).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers; clippy.toml only exempts the #[test] fns themselves"
)]

use std::fs;
use std::path::{Path, PathBuf};

use domicile_policy::time::parse_rfc3339;
use domicile_policy::{
    ConsentFact, ConsentKind, DecisionInput, Effect, Facts, Outcome, PackSet, PackSource, Severity, diff,
};
use domicile_types::{Channel, ConsentState, Jurisdiction, Purpose};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sources(dir: &Path) -> Vec<PackSource> {
    let mut paths: Vec<PathBuf> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().path().join("pack.toml")).filter(|p| p.is_file()).collect();
    paths.sort();
    paths
        .iter()
        .map(|p| PackSource::new(p.strip_prefix(root()).unwrap().display().to_string(), fs::read_to_string(p).unwrap()))
        .collect()
}

fn real() -> PackSet {
    PackSet::compile(&sources(&root().join("policy-packs"))).unwrap().0
}

fn t(s: &str) -> i64 {
    parse_rfc3339(s).unwrap()
}

#[test]
fn explain_de_marketing_by_phone_without_consent_names_the_rule_and_its_citation() {
    let set = real();
    let de = set.get(&Jurisdiction::parse("DE").unwrap()).unwrap();
    let trace = de.explain(&DecisionInput::new(Purpose::Marketing, Channel::Voice, t("2026-11-23T10:00:00Z"), None));
    assert_eq!(trace.effect, "deny");
    assert_eq!(trace.reasons, ["de.marketing.voice"]);
    assert_eq!(trace.chain, ["de@2026.11.0", "eu@2026.11.0"]);
    let rule = &trace.rules[0];
    assert_eq!((rule.rule.as_str(), rule.cite.as_str()), ("de.marketing.voice", "§ 7 Abs. 2 Nr. 1 UWG; § 7a UWG"));
    assert!(rule.checks.iter().any(|c| !c.held && c.what.contains("consent granted")), "{trace}");
    let text = trace.to_string();
    assert!(text.contains("rule de.marketing.voice") && text.contains("§ 7 Abs. 2 Nr. 1 UWG"), "{text}");
}

#[test]
fn france_telemarketing_outside_the_window_is_denied_with_when_it_may_happen() {
    let set = real();
    let fr = set.get(&Jurisdiction::parse("FR").unwrap()).unwrap();
    let consent = ConsentFact {
        state: ConsentState::Granted,
        captured_at_unix: t("2026-10-01T00:00:00Z"),
        expires_at_unix: None,
        double_opt_in_confirmed: false,
        kind: None,
    };
    // Saturday 28 Nov 2026, 11:00 in Paris.
    let d =
        fr.decide(&DecisionInput::new(Purpose::Marketing, Channel::Voice, t("2026-11-28T10:00:00Z"), Some(consent)));
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.reasons, ["fr.marketing.voice"]);
    let o = d.obligations.iter().find(|o| o.id == "outside-window").unwrap();
    assert!(o.text.contains("Mon 2026-11-30 10:00 Europe/Paris"), "{}", o.text);
    assert_eq!(d.valid_until_unix, Some(t("2026-11-30T09:00:00Z")));
    // Inside the window the same call is allowed until the slot closes at 13:00 Paris.
    let d =
        fr.decide(&DecisionInput::new(Purpose::Marketing, Channel::Voice, t("2026-11-30T09:30:00Z"), Some(consent)));
    assert_eq!((d.effect, d.valid_until_unix), (Effect::Allow, Some(t("2026-11-30T12:00:00Z"))));
}

#[test]
fn canada_implied_consent_from_a_purchase_lapses_after_two_years() {
    let set = real();
    let ca = set.get(&Jurisdiction::parse("CA").unwrap()).unwrap();
    let at = t("2026-11-23T15:00:00Z");
    let purchase = |captured: &str| ConsentFact {
        state: ConsentState::Granted,
        captured_at_unix: t(captured),
        expires_at_unix: None,
        double_opt_in_confirmed: false,
        kind: Some(ConsentKind::ImpliedPurchase),
    };
    let v = ca.evaluate(&DecisionInput::new(
        Purpose::Marketing,
        Channel::Email,
        at,
        Some(purchase("2024-10-23T15:00:00Z")),
    ));
    assert_eq!((v.effect, v.outcome), (Effect::Deny, Outcome::ConsentExpired));
    let d =
        ca.decide(&DecisionInput::new(Purpose::Marketing, Channel::Email, at, Some(purchase("2025-10-23T15:00:00Z"))));
    assert_eq!((d.effect, d.valid_until_unix), (Effect::Allow, Some(t("2027-10-23T15:00:00Z"))));
}

#[test]
fn deny_beats_allow_across_baseline_country_and_overlay() {
    let set = real();
    let de = set.get(&Jurisdiction::parse("DE").unwrap()).unwrap();
    // The EU baseline would allow an existing customer by soft opt-in; a DE cold call stays denied,
    // and DE postal marketing needs both the baseline and DE rules to allow.
    let soft = Facts { contact_from_sale: true, similar_products: true, opt_out_offered: true, on_register: None };
    let mut input = DecisionInput::new(Purpose::Marketing, Channel::Post, t("2026-11-23T10:00:00Z"), None);
    input.facts = soft;
    assert_eq!(de.decide(&input).reasons, ["de.marketing.post", "eu.marketing.post"]);
    let objection = ConsentFact {
        state: ConsentState::Withdrawn,
        captured_at_unix: t("2026-01-01T00:00:00Z"),
        expires_at_unix: None,
        double_opt_in_confirmed: false,
        kind: None,
    };
    input.consent = Some(objection);
    let d = de.decide(&input);
    assert_eq!(d.effect, Effect::Deny);
    assert!(d.obligations.is_empty());
    // The overlay replaced the federal profiling gap on web only.
    let ca = set.get(&Jurisdiction::parse("US-CA").unwrap()).unwrap();
    let web = ca.decide(&DecisionInput::new(Purpose::Profiling, Channel::Web, t("2026-11-23T20:00:00Z"), None));
    assert_eq!(
        (web.effect, web.reasons.as_slice()),
        (Effect::Allow, ["us-ca.profiling.sale-share".to_owned()].as_slice())
    );
    let other = set.get(&Jurisdiction::parse("US-NY").unwrap()).unwrap();
    assert_eq!(
        other.decide(&DecisionInput::new(Purpose::Profiling, Channel::Web, t("2026-11-23T20:00:00Z"), None)).effect,
        Effect::Deny
    );
}

#[test]
fn diff_lists_exactly_the_decisions_that_changed() {
    let base = sources(&root().join("policy-packs"));
    let old = PackSet::compile(&base).unwrap().0;
    let mut next: Vec<PackSource> = base.into_iter().filter(|s| s.path != "policy-packs/de/pack.toml").collect();
    let path = root().join("policy/tests/fixtures/diff/de-next/pack.toml");
    next.push(PackSource::new("de-next/pack.toml", fs::read_to_string(path).unwrap()));
    let new = PackSet::compile(&next).unwrap().0;
    let (a, b) = (old.get_by_id("de").unwrap(), new.get_by_id("de").unwrap());
    let changes = diff(a, b, t("2026-11-23T10:00:00Z"));
    assert!(!changes.is_empty());
    // Only postal marketing changed (opt-out → opt-in), and only where no valid express consent
    // is on record: no consent, an expired one, or an implied one (opt-in accepts express only).
    for c in &changes {
        assert_eq!((c.purpose.as_str(), c.channel.as_str()), ("marketing", "post"), "{c}");
        assert_eq!((c.old.effect.as_str(), c.new.effect.as_str()), ("allow", "deny"), "{c}");
        assert!(!c.scenario.contains("express"), "{c}");
    }
    let scenarios: std::collections::BTreeSet<&str> = changes.iter().map(|c| c.scenario.as_str()).collect();
    assert!(scenarios.contains("no consent") && scenarios.contains("consent granted, expired"), "{scenarios:?}");
    assert!(diff(a, a, t("2026-11-23T10:00:00Z")).is_empty());
}

#[test]
fn a_deliberately_broken_schema_2_pack_reports_every_problem() {
    let fixture = |name: &str| {
        PackSource::new(name, fs::read_to_string(root().join("policy/tests/fixtures").join(name)).unwrap())
    };
    let err = PackSet::compile(&[fixture("broken-v2.toml"), fixture("gaps-v2.toml")]).unwrap_err();
    let found: Vec<(String, usize, usize, Severity, String)> =
        err.0.iter().map(|d| (d.path.clone(), d.line, d.column, d.severity, d.message.clone())).collect();
    let has = |path: &str, line: usize, column: usize, needle: &str| {
        assert!(
            found.iter().any(|f| f.0 == path && f.1 == line && f.2 == column && f.4.contains(needle)),
            "expected {path}:{line}:{column} {needle:?} in {found:#?}"
        );
    };
    has("broken-v2.toml", 10, 11, "`extends` names no pack in this set");
    has("broken-v2.toml", 11, 15, "unknown time zone");
    has("broken-v2.toml", 12, 18, "`effective_from` must be an RFC 3339 timestamp");
    has("broken-v2.toml", 19, 23, "time slot overlaps another slot");
    has("broken-v2.toml", 20, 8, "time slot must be `HH:MM-HH:MM`");
    has("broken-v2.toml", 23, 12, "a lifetime must accept at least one consent kind");
    has("broken-v2.toml", 24, 20, "`implied_purchase` must be a period");
    has("broken-v2.toml", 32, 12, "undefined lifetime");
    has("broken-v2.toml", 39, 13, "marketing by email is already covered by rule `zz.marketing.email` at line 27");
    has("broken-v2.toml", 41, 14, "`conditions` only applies to `soft_opt_in` rules");
    has("gaps-v2.toml", 4, 1, "no rule for marketing by sms, voice");
    has("gaps-v2.toml", 4, 1, "declare them with `basis = \"gap\"`");
    assert!(found.iter().all(|f| f.3 == Severity::Error || f.0 == "broken-v2.toml"), "{found:#?}");
    let text = err.to_string();
    assert!(text.lines().all(|l| l.split(':').count() >= 4), "every line is path:line:column: ...\n{text}");
}
