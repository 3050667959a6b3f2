use domicile_types::{Channel, ConsentState, Jurisdiction, Purpose, RegionId};

use crate::{ConsentFact, DecisionInput, Effect, Obligation, Outcome, Pack, PackSet, PackSource, ResidencyError};

const T0: i64 = 1_795_428_000; // 2026-11-23T10:00:00Z

const PACK: &str = r#"
schema = 1
[pack]
id = "t"
jurisdiction = "DE"
version = "1.2.3"
title = "Test"
[residency]
home_regions = ["eu-central", "eu-west"]
localisation = "none"
cite = "law 0"
[obligations.unsubscribe]
text = "include an unsubscribe link"
[obligations.screen]
text = "screen the register"
[rights]
deadline = "1 month"
cite = "law 0"
[[rule]]
id = "t.opt-in"
purpose = "marketing"
channels = ["email", "sms"]
basis = "opt_in"
cite = "law 1"
confidence = "P"
obligations = ["unsubscribe"]
[[rule]]
id = "t.double"
purpose = "marketing"
channels = ["messaging"]
basis = "double_opt_in"
cite = "law 2"
confidence = "S"
[[rule]]
id = "t.opt-out"
purpose = "marketing"
channels = ["voice"]
basis = "opt_out"
cite = "law 3"
confidence = "K"
obligations = ["screen", "unsubscribe"]
[[rule]]
id = "t.li"
purpose = "service"
channels = ["email"]
basis = "legitimate_interest"
cite = "law 4"
confidence = "U"
[[rule]]
id = "t.never"
purpose = "marketing"
channels = ["voice_automated"]
basis = "prohibited"
cite = "law 5"
confidence = "P"
"#;

fn pack() -> Pack {
    let (set, _) = PackSet::compile(&[PackSource::new("t.toml", PACK)]).unwrap();
    set.packs().next().unwrap().clone()
}

fn input(purpose: Purpose, channel: Channel, consent: Option<ConsentFact>) -> DecisionInput {
    DecisionInput::new(purpose, channel, T0, consent)
}

fn fact(state: ConsentState) -> ConsentFact {
    ConsentFact {
        state,
        captured_at_unix: T0 - 86_400,
        expires_at_unix: None,
        double_opt_in_confirmed: false,
        kind: None,
        hours: Vec::new(),
    }
}

#[test]
fn no_rule_is_default_deny() {
    let p = pack();
    for consent in [None, Some(fact(ConsentState::Granted))] {
        let d = p.decide(&input(Purpose::Research, Channel::Web, consent));
        assert_eq!(d.effect, Effect::Deny);
        assert_eq!(d.reasons, vec!["t.default-deny".to_owned()]);
        assert!(d.obligations.is_empty());
        assert!(d.explanation.starts_with("no rule"), "{}", d.explanation);
        assert!(d.explanation.contains("t@1.2.3"));
        assert_eq!(d.valid_until_unix, None);
    }
}

#[test]
fn every_cell_is_decided_by_its_rule_or_by_default() {
    let p = pack();
    for &purpose in Purpose::ALL {
        for &channel in Channel::ALL {
            let d = p.decide(&input(purpose, channel, Some(fact(ConsentState::Granted))));
            let covering: Vec<&str> = p
                .rules()
                .iter()
                .filter(|r| r.purpose == purpose && r.channels.contains(&channel))
                .map(|r| r.id.as_str())
                .collect();
            match covering.as_slice() {
                [] => assert_eq!(d.reasons, ["t.default-deny"]),
                [id] => assert_eq!(d.reasons, [*id]),
                _ => panic!("overlap survived validation"),
            }
            assert_eq!(d.pack.to_string(), "t@1.2.3");
        }
    }
}

#[test]
fn opt_in_needs_a_current_grant() {
    let p = pack();
    let decide = |c| p.decide(&input(Purpose::Marketing, Channel::Email, c));

    let d = decide(None);
    assert_eq!((d.effect, d.explanation.starts_with("no consent")), (Effect::Deny, true));
    assert_eq!(d.reasons, ["t.opt-in"]);
    assert!(d.obligations.is_empty(), "obligations only ride on allows");

    let d = decide(Some(fact(ConsentState::Granted)));
    assert_eq!(d.effect, Effect::Allow);
    assert_eq!(d.valid_until_unix, None);
    assert_eq!(
        d.obligations,
        vec![Obligation { id: "unsubscribe".into(), text: "include an unsubscribe link".into() }]
    );

    let d = decide(Some(ConsentFact { expires_at_unix: Some(T0 + 60), ..fact(ConsentState::Granted) }));
    assert_eq!((d.effect, d.valid_until_unix), (Effect::Allow, Some(T0 + 60)));

    // Expiry is exclusive: a consent expiring at the decision instant no longer holds.
    for expiry in [T0, T0 - 1] {
        let d = decide(Some(ConsentFact { expires_at_unix: Some(expiry), ..fact(ConsentState::Granted) }));
        assert_eq!(d.effect, Effect::Deny);
        assert!(d.explanation.starts_with("consent expired"), "{}", d.explanation);
        assert_eq!(d.valid_until_unix, None);
    }

    let d = decide(Some(fact(ConsentState::Withdrawn)));
    assert!(d.effect == Effect::Deny && d.explanation.starts_with("consent withdrawn"));
    let d = decide(Some(fact(ConsentState::Denied)));
    assert!(d.effect == Effect::Deny && d.explanation.starts_with("consent denied"));

    // A grant captured after the decision instant did not exist yet.
    let d = decide(Some(ConsentFact { captured_at_unix: T0 + 1, ..fact(ConsentState::Granted) }));
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(p.evaluate(&input(Purpose::Marketing, Channel::Email, None)).outcome, Outcome::NoConsent);
}

#[test]
fn double_opt_in_needs_confirmation() {
    let p = pack();
    let unconfirmed = fact(ConsentState::Granted);
    let v = p.evaluate(&input(Purpose::Marketing, Channel::Messaging, Some(unconfirmed.clone())));
    assert_eq!((v.effect, v.outcome), (Effect::Deny, Outcome::DoubleOptInUnconfirmed));
    let confirmed = ConsentFact { double_opt_in_confirmed: true, ..unconfirmed };
    let d = p.decide(&input(Purpose::Marketing, Channel::Messaging, Some(confirmed.clone())));
    assert_eq!(d.effect, Effect::Allow);
    assert_eq!(d.reasons, ["t.double"]);
    let expired = ConsentFact { expires_at_unix: Some(T0), ..confirmed };
    let v = p.evaluate(&input(Purpose::Marketing, Channel::Messaging, Some(expired)));
    assert_eq!(v.outcome, Outcome::ConsentExpired);
    assert_eq!(p.evaluate(&input(Purpose::Marketing, Channel::Messaging, None)).outcome, Outcome::NoConsent);
}

#[test]
fn opt_out_and_legitimate_interest_stop_on_objection_only() {
    let p = pack();
    for (purpose, channel, id) in
        [(Purpose::Marketing, Channel::Voice, "t.opt-out"), (Purpose::Service, Channel::Email, "t.li")]
    {
        let d = p.decide(&input(purpose, channel, None));
        assert_eq!((d.effect, d.reasons.as_slice()), (Effect::Allow, [id.to_owned()].as_slice()));
        assert!(d.explanation.starts_with("no objection"));
        assert_eq!(d.valid_until_unix, None);

        // An expired grant does not matter where no consent is needed.
        let stale = ConsentFact { expires_at_unix: Some(T0 - 10), ..fact(ConsentState::Granted) };
        assert_eq!(p.decide(&input(purpose, channel, Some(stale))).effect, Effect::Allow);

        // An objection never expires and counts whenever it was recorded.
        for state in [ConsentState::Withdrawn, ConsentState::Denied] {
            let objection = ConsentFact { captured_at_unix: T0 + 3600, expires_at_unix: Some(T0 - 10), ..fact(state) };
            let d = p.decide(&input(purpose, channel, Some(objection)));
            assert_eq!(d.effect, Effect::Deny, "{state}");
            assert!(d.obligations.is_empty());
        }
    }
    let d = p.decide(&input(Purpose::Marketing, Channel::Voice, None));
    let ids: Vec<&str> = d.obligations.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, ["screen", "unsubscribe"], "rule order of obligations is kept");
    assert!(p.decide(&input(Purpose::Service, Channel::Email, None)).explanation.contains("legitimate_interest"));
}

#[test]
fn prohibited_is_always_denied() {
    let p = pack();
    let confirmed = ConsentFact { double_opt_in_confirmed: true, ..fact(ConsentState::Granted) };
    for consent in [None, Some(confirmed)] {
        let d = p.decide(&input(Purpose::Marketing, Channel::VoiceAutomated, consent));
        assert_eq!(d.effect, Effect::Deny);
        assert_eq!(d.reasons, ["t.never"]);
        assert!(d.explanation.starts_with("prohibited"));
    }
}

#[test]
fn outcome_vocabulary_round_trips() {
    for o in Outcome::ALL {
        assert_eq!(Outcome::parse(o.as_str()), Some(*o));
    }
    assert_eq!(Effect::parse("allow"), Some(Effect::Allow));
    assert_eq!(Effect::Deny.as_str(), "deny");
}

#[test]
fn residency_picks_the_first_available_home_region_and_fails_closed() {
    let (set, _) = PackSet::compile(&[PackSource::new("t.toml", PACK)]).unwrap();
    let de = Jurisdiction::parse("DE").unwrap();
    let west = RegionId::parse("eu-west").unwrap();
    let central = RegionId::parse("eu-central").unwrap();
    let us = RegionId::parse("us-east").unwrap();
    assert_eq!(set.home_region(&de, &[west.clone(), central.clone()]), Ok(central.clone()));
    assert_eq!(set.home_region(&de, &[us.clone(), west.clone()]), Ok(west));
    assert_eq!(set.home_region(&de, std::slice::from_ref(&us)), Err(ResidencyError::NoAllowedRegion));
    assert_eq!(set.home_region(&de, &[]), Err(ResidencyError::NoAllowedRegion));
    let fr = Jurisdiction::parse("FR").unwrap();
    assert_eq!(set.home_region(&fr, &[central]), Err(ResidencyError::NoPack));
    assert!(PackSet::empty().get(&de).is_none());
    assert_eq!(ResidencyError::NoPack.to_string(), "no policy pack covers the subject's jurisdiction");
}
