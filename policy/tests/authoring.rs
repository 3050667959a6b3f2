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
    // Each pack file, and its holiday calendar where it has one.
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .flat_map(|e| {
            let dir = e.unwrap().path();
            [dir.join("pack.toml"), dir.join(domicile_policy::HOLIDAYS_FILE)]
        })
        .filter(|p| p.is_file())
        .collect();
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
    assert_eq!(trace.chain, ["de@2026.11.0", "eu@2026.12.0"]);
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
        hours: Vec::new(),
    };
    // Saturday 28 Nov 2026, 11:00 in Paris.
    let d = fr.decide(&DecisionInput::new(
        Purpose::Marketing,
        Channel::Voice,
        t("2026-11-28T10:00:00Z"),
        Some(consent.clone()),
    ));
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
        hours: Vec::new(),
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
    let soft = Facts { contact_from_sale: true, similar_products: true, opt_out_offered: true, ..Facts::default() };
    let mut input = DecisionInput::new(Purpose::Marketing, Channel::Post, t("2026-11-23T10:00:00Z"), None);
    input.facts = soft;
    assert_eq!(de.decide(&input).reasons, ["de.marketing.post", "eu.marketing.post"]);
    let objection = ConsentFact {
        state: ConsentState::Withdrawn,
        captured_at_unix: t("2026-01-01T00:00:00Z"),
        expires_at_unix: None,
        double_opt_in_confirmed: false,
        kind: None,
        hours: Vec::new(),
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

/// Residency on the real packs: an overlay that states only its home region inherits the
/// baseline's transfers and minimised fields; transfers are default deny; RU collects in-country.
#[test]
fn residency_is_inherited_key_by_key_and_transfers_are_default_deny() {
    use domicile_policy::TransferCheck;
    use domicile_types::RegionId;
    let set = real();
    let pack = |j: &str| set.get(&Jurisdiction::parse(j).unwrap()).unwrap();
    let region = |r: &str| RegionId::parse(r).unwrap();

    let de = pack("DE").residency();
    assert_eq!(de.home_regions, [region("eu-central")], "DE's own home region wins");
    assert_eq!(de.minimised_fields, ["country", "language"], "inherited from the EU baseline");
    assert_eq!(de.transfer_to(&region("eu-central"), Purpose::Marketing), TransferCheck::Domestic);
    match de.transfer_to(&region("us-east"), Purpose::Service) {
        TransferCheck::Permitted(t) => assert_eq!(t.id, "us-dpf"),
        other => panic!("the baseline's DPF transfer applies to DE: {other:?}"),
    }
    assert_eq!(de.transfer_to(&region("us-east"), Purpose::Marketing), TransferCheck::Refused, "purpose not named");
    // To sa-east only the Art. 49(1)(a) derogation names service data, and it needs the subject's
    // explicit consent to the transfer.
    assert!(
        matches!(de.transfer_to(&region("sa-east"), Purpose::Service), TransferCheck::NeedsConsent(t) if t.id == "explicit-consent")
    );
    let consent = |state, kind| domicile_policy::TransferConsentFact {
        state,
        kind,
        captured_at_unix: 1_790_000_000,
        expires_at_unix: None,
    };
    let at = 1_795_000_000;
    let explicit = consent(domicile_types::ConsentState::Granted, domicile_policy::TransferConsent::Explicit);
    assert!(matches!(
        de.transfer_with(&region("sa-east"), Purpose::Service, Some(&explicit), at),
        TransferCheck::Permitted(t) if t.id == "explicit-consent"
    ));
    assert!(
        matches!(
            de.transfer_with(&region("sa-east"), Purpose::Service, Some(&explicit), 1_780_000_000),
            TransferCheck::NeedsConsent(_)
        ),
        "a consent captured after the request does not count for it"
    );
    let withdrawn = consent(domicile_types::ConsentState::Withdrawn, domicile_policy::TransferConsent::Explicit);
    assert!(matches!(
        de.transfer_with(&region("sa-east"), Purpose::Service, Some(&withdrawn), at),
        TransferCheck::NeedsConsent(_)
    ));
    let separate = consent(domicile_types::ConsentState::Granted, domicile_policy::TransferConsent::Separate);
    assert!(matches!(
        de.transfer_with(&region("sa-east"), Purpose::Service, Some(&separate), at),
        TransferCheck::NeedsConsent(_)
    ));
    // A consent never widens what no transfer names.
    assert_eq!(de.transfer_with(&region("sa-east"), Purpose::Marketing, Some(&explicit), at), TransferCheck::Refused);
    // The DPF transfer needs no consent, so the first matching one still answers for us-east.
    assert!(
        matches!(de.transfer_with(&region("us-east"), Purpose::Service, None, at), TransferCheck::Permitted(t) if t.id == "us-dpf")
    );

    // BR: one transfer for any region and purpose.
    assert!(
        matches!(pack("BR").residency().transfer_to(&region("eu-central"), Purpose::Marketing), TransferCheck::Permitted(t) if t.id == "anpd-scc")
    );
    // CN is strict and lists no transfer; RU says `transfer = []` and collects in-country.
    assert_eq!(pack("CN").residency().transfer_to(&region("us-east"), Purpose::Service), TransferCheck::Refused);
    let ru = pack("RU").residency();
    assert_eq!(ru.transfer_to(&region("eu-central"), Purpose::Service), TransferCheck::Refused);
    assert!(ru.in_country_collection);
    assert!(ru.collection_allowed_from(&region("ru-central")));
    assert!(!ru.collection_allowed_from(&region("eu-central")));
    assert!(pack("DE").residency().collection_allowed_from(&region("us-east")), "no in-country rule for DE");
    // A subdivision overlay without [residency] inherits it whole.
    assert_eq!(pack("US-CA").residency(), pack("US").residency());
}

/// `transfer = []` in an overlay drops inherited transfers; a bad minimised field is reported
/// at its position.
#[test]
fn an_overlay_can_drop_inherited_transfers_and_bad_minimised_fields_are_located() {
    use domicile_policy::TransferCheck;
    use domicile_types::RegionId;
    let base = PackSource::new(
        "base/pack.toml",
        "schema = 1\n[pack]\nid = \"base\"\nkind = \"baseline\"\nversion = \"1\"\ntitle = \"b\"\n\
         [rights]\ndeadline = \"1 month\"\ncite = \"c\"\n[residency]\nhome_regions = [\"eu-central\"]\nlocalisation = \"none\"\ncite = \"c\"\nminimised_fields = [\"country\"]\n\
         [[residency.transfer]]\nid = \"any\"\ncondition = \"c\"\ncite = \"c\"\n",
    );
    let overlay = |extra: &str| {
        PackSource::new(
            "xx/pack.toml",
            format!(
                "schema = 1\n[pack]\nid = \"xx\"\njurisdiction = \"DE\"\nversion = \"1\"\ntitle = \"x\"\nextends = \"base\"\n\
                 [residency]\nhome_regions = [\"eu-west\"]\nlocalisation = \"none\"\n{extra}"
            ),
        )
    };
    let (set, _) = PackSet::compile(&[base.clone(), overlay("transfer = []\n")]).unwrap();
    let r = set.get(&Jurisdiction::parse("DE").unwrap()).unwrap().residency().clone();
    assert_eq!(r.minimised_fields, ["country"]);
    assert_eq!(r.transfer_to(&RegionId::parse("us-east").unwrap(), Purpose::Service), TransferCheck::Refused);

    let errors = PackSet::compile(&[base, overlay("minimised_fields = [\"Country Name\"]\n")]).unwrap_err();
    let error = errors.errors().next().expect("one error");
    assert_eq!((error.path.as_str(), error.line), ("xx/pack.toml", 11), "{error}");
    assert!(error.message.contains("profile field names"), "{error}");
}
