//! The decision inputs beyond consent: recipient type, the subject's age against minors bands,
//! and consent limited to (or required separately for) hours of the day.

use domicile_types::{Channel, ConsentState, Purpose};

use crate::{ConsentFact, ConsentKind, DecisionInput, Effect, Facts, Outcome, PackSet, PackSource, Recipient, Zone};

/// Monday 23 Nov 2026 10:00 UTC = 19:00 in Seoul.
const T0: i64 = 1_795_428_000;
const HOUR: i64 = 3_600;

const BASE: &str = r#"
schema = 2
[pack]
id = "base"
kind = "baseline"
version = "1"
title = "Baseline"
[residency]
home_regions = ["eu-central"]
localisation = "none"
cite = "law 0"
[rights]
deadline = "1 month"
cite = "law 0"
[minors.art8]
bands = [{ under = 16, basis = "opt_in", consent = ["guardian"] }]
unknown_age = "adult"
cite = "art. 8 (16 unless a member state sets lower)"
[[rule]]
id = "base.marketing.email"
purpose = "marketing"
channels = ["email"]
basis = "opt_in"
cite = "art. 13"
confidence = "P"
[[rule]]
id = "base.profiling.web"
purpose = "profiling"
channels = ["web"]
basis = "opt_out"
minors = "art8"
cite = "art. 21"
confidence = "P"
"#;

const MEMBER: &str = r#"
schema = 1
[pack]
id = "m"
jurisdiction = "FR"
extends = "base"
version = "1"
title = "Member"
time_zones = ["Asia/Seoul"]
[minors.art8]
bands = [{ under = 15, basis = "opt_in", consent = ["guardian"] }]
unknown_age = "adult"
cite = "member law art. 45 (15)"
[minors.sale]
bands = [
  { under = 13, basis = "opt_in", consent = ["guardian"] },
  { under = 16, basis = "opt_in", consent = ["express"] },
]
unknown_age = "minor"
cite = "sale of minors' data"
[windows.night]
mon = ["00:00-08:00", "21:00-24:00"]
tue = ["00:00-08:00", "21:00-24:00"]
wed = ["00:00-08:00", "21:00-24:00"]
thu = ["00:00-08:00", "21:00-24:00"]
fri = ["00:00-08:00", "21:00-24:00"]
sat = ["00:00-08:00", "21:00-24:00"]
sun = ["00:00-08:00", "21:00-24:00"]
cite = "night-time advertising"
[windows.office]
mon = ["09:00-18:00"]
tue = ["09:00-18:00"]
wed = ["09:00-18:00"]
thu = ["09:00-18:00"]
fri = ["09:00-18:00"]
cite = "hours the subject chose"
[[rule]]
id = "m.marketing.email-b2b"
purpose = "marketing"
channels = ["email"]
basis = "opt_out"
recipients = ["business"]
replaces = ["base.marketing.email"]
cite = "B2B e-mail: professional address, message about the profession"
confidence = "S"
[[rule]]
id = "m.marketing.sms"
purpose = "marketing"
channels = ["sms"]
basis = "opt_in"
separate_consent_hours = "night"
cite = "ads at night need a separate consent"
confidence = "S"
[[rule]]
id = "m.marketing.sale"
purpose = "marketing"
channels = ["web"]
basis = "opt_out"
minors = "sale"
cite = "sale: opt-out, opt-in for minors"
confidence = "S"
[[rule]]
id = "m.survey.b2c"
purpose = "survey"
channels = ["email"]
basis = "opt_in"
recipients = ["consumer"]
cite = "consumer surveys"
confidence = "S"
[[rule]]
id = "m.survey.b2b"
purpose = "survey"
channels = ["email"]
basis = "legitimate_interest"
recipients = ["business"]
cite = "business surveys"
confidence = "S"
"#;

fn set() -> PackSet {
    let (set, warnings) =
        PackSet::compile(&[PackSource::new("base.toml", BASE), PackSource::new("m.toml", MEMBER)]).unwrap();
    assert!(warnings.iter().all(|w| !w.is_error()), "{warnings:?}");
    set
}

fn grant(kind: ConsentKind, hours: &[&str]) -> ConsentFact {
    ConsentFact {
        state: ConsentState::Granted,
        captured_at_unix: T0 - 86_400,
        expires_at_unix: None,
        double_opt_in_confirmed: false,
        kind: Some(kind),
        hours: hours.iter().map(|h| (*h).to_owned()).collect(),
    }
}

fn decide(
    purpose: Purpose,
    channel: Channel,
    at: i64,
    consent: Option<ConsentFact>,
    facts: Facts,
) -> (Effect, Outcome, Vec<String>, Option<i64>) {
    let set = set();
    let pack = set.packs().find(|p| p.pack_ref().id == "m").unwrap();
    let mut input = DecisionInput::new(purpose, channel, at, consent);
    input.facts = facts;
    let d = pack.decide(&input);
    let v = pack.evaluate(&input);
    (d.effect, v.outcome, d.reasons, d.valid_until_unix)
}

fn to(recipient: Option<Recipient>) -> Facts {
    Facts { recipient, ..Facts::default() }
}

#[test]
fn recipient_type_picks_the_rule_and_an_unknown_type_must_pass_every_rule() {
    let email = |consent, recipient| decide(Purpose::Marketing, Channel::Email, T0, consent, to(recipient));
    // Business: the member's opt-out replaces the baseline's opt-in for business recipients only.
    let (effect, outcome, reasons, _) = email(None, Some(Recipient::Business));
    assert_eq!((effect, outcome), (Effect::Allow, Outcome::NoObjection));
    assert_eq!(reasons, ["m.marketing.email-b2b"]);
    // Consumers keep the baseline's opt-in.
    let (effect, outcome, reasons, _) = email(None, Some(Recipient::Consumer));
    assert_eq!((effect, outcome, reasons), (Effect::Deny, Outcome::NoConsent, vec!["base.marketing.email".to_owned()]));
    // Unknown: both rules are weighed and the consumer rule's deny wins.
    assert_eq!(email(None, None).0, Effect::Deny);
    assert_eq!(email(Some(grant(ConsentKind::Express, &[])), None).0, Effect::Allow);
    // An objection stops business contact too.
    let objection = ConsentFact { state: ConsentState::Withdrawn, ..grant(ConsentKind::Express, &[]) };
    assert_eq!(email(Some(objection), Some(Recipient::Business)).0, Effect::Deny);

    // Two rules of one file share a cell for different recipient types.
    let survey = |recipient| decide(Purpose::Survey, Channel::Email, T0, None, to(recipient)).0;
    assert_eq!(survey(Some(Recipient::Business)), Effect::Allow);
    assert_eq!(survey(Some(Recipient::Consumer)), Effect::Deny);
    assert_eq!(survey(None), Effect::Deny);
}

#[test]
fn rules_for_the_same_recipients_in_one_file_still_collide() {
    let clash =
        MEMBER.replace("recipients = [\"business\"]\ncite = \"business surveys\"", "cite = \"business surveys\"");
    let err = PackSet::compile(&[PackSource::new("base.toml", BASE), PackSource::new("m.toml", &clash)]).unwrap_err();
    assert!(err.0.iter().any(|d| d.message.contains("already covered by rule `m.survey.b2c`")), "{err:?}");
    let typo = MEMBER.replace("recipients = [\"consumer\"]", "recipients = [\"consumers\"]");
    let err = PackSet::compile(&[PackSource::new("base.toml", BASE), PackSource::new("m.toml", &typo)]).unwrap_err();
    assert!(err.0.iter().any(|d| d.message.starts_with("unknown recipient")), "{err:?}");
}

#[test]
fn minors_bands_tighten_by_age_and_take_the_deciding_packs_age() {
    let sale = |age, consent| decide(Purpose::Marketing, Channel::Web, T0, consent, Facts { age, ..Facts::default() });
    // Adults: opt-out.
    assert_eq!(sale(Some(30), None).0, Effect::Allow);
    // 13 to 15: the minor's own opt-in; a guardian's consent is not the kind the band names.
    assert_eq!(sale(Some(14), None).1, Outcome::MinorConsentRequired);
    assert_eq!(sale(Some(14), Some(grant(ConsentKind::Express, &[]))).0, Effect::Allow);
    assert_eq!(sale(Some(14), Some(grant(ConsentKind::Guardian, &[]))).1, Outcome::MinorConsentRequired);
    // Under 13: only the guardian's.
    assert_eq!(sale(Some(12), Some(grant(ConsentKind::Express, &[]))).1, Outcome::MinorConsentRequired);
    assert_eq!(sale(Some(12), Some(grant(ConsentKind::Guardian, &[]))).0, Effect::Allow);
    // Unknown age, which this definition says to treat as a minor's: the contact must pass every
    // band, and no one consent kind does here (the guardian's fails 13-15, the minor's own under
    // 13): the caller has to learn the age.
    assert_eq!(sale(None, None).1, Outcome::MinorConsentRequired);
    assert_eq!(sale(None, Some(grant(ConsentKind::Guardian, &[]))).1, Outcome::MinorConsentRequired);
    assert_eq!(sale(None, Some(grant(ConsentKind::Express, &[]))).1, Outcome::MinorConsentRequired);
    // A withdrawal stays a withdrawal, whatever the age.
    let withdrawn = ConsentFact { state: ConsentState::Withdrawn, ..grant(ConsentKind::Guardian, &[]) };
    assert_eq!(sale(Some(12), Some(withdrawn)).1, Outcome::ConsentWithdrawn);

    // The baseline's rule names `art8`; the member's definition (15, not 16) applies.
    let profiling =
        |age| decide(Purpose::Profiling, Channel::Web, T0, None, Facts { age: Some(age), ..Facts::default() }).0;
    assert_eq!(profiling(14), Effect::Deny);
    assert_eq!(profiling(15), Effect::Allow);
    // Unknown age: `art8` says adult.
    assert_eq!(decide(Purpose::Profiling, Channel::Web, T0, None, Facts::default()).0, Effect::Allow);
}

#[test]
fn minors_definitions_are_checked() {
    for (bad, message) in [
        ("unknown_age = \"minor\"\ncite = \"sale", "missing key `unknown_age`"),
        ("{ under = 16, basis = \"opt_in\", consent = [\"express\"] }", "youngest first"),
        ("{ under = 13, basis = \"opt_in\", consent = [\"guardian\"] }", "only tightens"),
    ] {
        let broken = match message {
            "missing key `unknown_age`" => MEMBER.replace(bad, "cite = \"sale"),
            "youngest first" => {
                MEMBER.replace(bad, "{ under = 12, basis = \"opt_in\", consent = [\"express\"] }").replace(
                    "{ under = 13, basis = \"opt_in\", consent = [\"guardian\"] }",
                    "{ under = 14, basis = \"opt_in\", consent = [\"guardian\"] }",
                )
            }
            _ => MEMBER.replace(bad, "{ under = 13, basis = \"opt_out\", consent = [\"guardian\"] }"),
        };
        let err = PackSet::compile(&[PackSource::new("base.toml", BASE), PackSource::new("m.toml", &broken)])
            .expect_err(message);
        assert!(err.0.iter().any(|d| d.message.contains(message)), "{message}: {err:?}");
        assert!(err.0.iter().all(|d| d.line > 0), "errors carry a line: {err:?}");
    }
}

#[test]
fn a_consent_limited_to_hours_counts_only_inside_them() {
    // `office` is 09:00-18:00 Seoul on weekdays; 10:00 UTC is 19:00 Seoul (closed); 01:00 UTC is
    // 10:00 Seoul (open, closes 09:00 UTC).
    let email = |at, hours: &[&str]| {
        decide(
            Purpose::Marketing,
            Channel::Email,
            at,
            Some(grant(ConsentKind::Express, hours)),
            to(Some(Recipient::Consumer)),
        )
    };
    let (effect, outcome, _, _) = email(T0, &["office"]);
    assert_eq!((effect, outcome), (Effect::Deny, Outcome::ConsentHoursNotCovered));
    let morning = T0 + 15 * HOUR; // Tuesday 01:00 UTC = 10:00 Seoul
    let (effect, _, _, until) = email(morning, &["office"]);
    assert_eq!(effect, Effect::Allow);
    assert_eq!(until, Some(morning + 8 * HOUR), "the allow ends when the hours close");
    // Without hours the consent covers every hour.
    assert_eq!(email(T0, &[]).0, Effect::Allow);
    // Hours the pack does not define cover nothing.
    assert_eq!(email(morning, &["weekends"]).1, Outcome::ConsentHoursNotCovered);
}

#[test]
fn separate_consent_hours_need_a_consent_naming_them() {
    let sms = |at, hours: &[&str]| {
        let mut input =
            DecisionInput::new(Purpose::Marketing, Channel::Sms, at, Some(grant(ConsentKind::Express, hours)));
        input.subject_time_zone = Zone::parse("Asia/Seoul");
        let set = set();
        let pack = set.packs().find(|p| p.pack_ref().id == "m").unwrap();
        let d = pack.decide(&input);
        (d.effect, pack.evaluate(&input).outcome, d.valid_until_unix)
    };
    let night = T0 + 3 * HOUR; // 22:00 Seoul
    assert_eq!(sms(night, &[]).1, Outcome::ConsentHoursNotCovered);
    assert_eq!(sms(night, &["night"]).0, Effect::Allow);
    // By day an ordinary consent counts, until the night hours begin (21:00 Seoul = 12:00 UTC).
    let (effect, _, until) = sms(T0, &[]);
    assert_eq!(effect, Effect::Allow);
    assert_eq!(until, Some(T0 + 2 * HOUR));
    // A consent limited to the night hours does not cover the day.
    assert_eq!(sms(T0, &["night"]).1, Outcome::ConsentHoursNotCovered);
    assert_eq!(sms(T0, &["night", "office"]).1, Outcome::ConsentHoursNotCovered, "office is closed at 19:00");
}

#[test]
fn a_minors_band_never_loosens_its_rule() {
    // A prohibited rule and a double opt-in rule, each with an opt-in band: the band may not let a
    // minor through on a plain consent where an adult could not be.
    let strict = MEMBER.replace(
        "[[rule]]\nid = \"m.survey.b2c\"",
        "[[rule]]\nid = \"m.research.never\"\npurpose = \"research\"\nchannels = [\"sms\"]\nbasis = \"prohibited\"\n\
         minors = \"sale\"\ncite = \"never\"\nconfidence = \"S\"\n[[rule]]\nid = \"m.research.doi\"\npurpose = \"research\"\n\
         channels = [\"email\"]\nbasis = \"double_opt_in\"\nminors = \"sale\"\ncite = \"doi\"\nconfidence = \"S\"\n\
         [[rule]]\nid = \"m.survey.b2c\"",
    );
    let (set, _) = PackSet::compile(&[PackSource::new("base.toml", BASE), PackSource::new("m.toml", &strict)]).unwrap();
    let pack = set.packs().find(|p| p.pack_ref().id == "m").unwrap();
    let decide = |channel, age, consent: Option<ConsentFact>| {
        let mut input = DecisionInput::new(Purpose::Research, channel, T0, consent);
        input.facts.age = Some(age);
        pack.evaluate(&input).outcome
    };
    let guardian = grant(ConsentKind::Guardian, &[]);
    assert_eq!(decide(Channel::Sms, 12, Some(guardian.clone())), Outcome::Prohibited);
    // Double opt-in stays double opt-in under the band: an unconfirmed guardian consent fails.
    assert_eq!(decide(Channel::Email, 12, Some(guardian.clone())), Outcome::DoubleOptInUnconfirmed);
    let confirmed = ConsentFact { double_opt_in_confirmed: true, ..guardian };
    assert_eq!(decide(Channel::Email, 12, Some(confirmed)), Outcome::ConsentGranted);
}

#[test]
fn inside_separate_hours_no_allow_rests_on_anything_but_a_consent_naming_them() {
    // A soft opt-in rule with separate hours: the soft opt-in facts reach the day, not the night.
    let soft = MEMBER.replace(
        "id = \"m.marketing.sms\"\npurpose = \"marketing\"\nchannels = [\"sms\"]\nbasis = \"opt_in\"",
        "id = \"m.marketing.sms\"\npurpose = \"marketing\"\nchannels = [\"sms\"]\nbasis = \"soft_opt_in\"",
    );
    let (set, _) = PackSet::compile(&[PackSource::new("base.toml", BASE), PackSource::new("m.toml", &soft)]).unwrap();
    let pack = set.packs().find(|p| p.pack_ref().id == "m").unwrap();
    let decide = |at, consent: Option<ConsentFact>| {
        let mut input = DecisionInput::new(Purpose::Marketing, Channel::Sms, at, consent);
        input.facts =
            Facts { contact_from_sale: true, similar_products: true, opt_out_offered: true, ..Facts::default() };
        pack.evaluate(&input).outcome
    };
    assert_eq!(decide(T0 - 8 * HOUR, None), Outcome::SoftOptIn, "11:00 Seoul");
    assert_eq!(decide(T0 + 3 * HOUR, None), Outcome::ConsentHoursNotCovered, "22:00 Seoul");
    assert_eq!(decide(T0 + 3 * HOUR, Some(grant(ConsentKind::Express, &[]))), Outcome::ConsentHoursNotCovered);
    assert_eq!(decide(T0 + 3 * HOUR, Some(grant(ConsentKind::Express, &["night"]))), Outcome::ConsentGranted);
}
