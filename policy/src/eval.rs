//! The evaluator: a precompiled purpose × channel table, so a decision is one array lookup and a
//! few comparisons. Everything a decision returns as text is built when the pack is compiled.

use std::fmt;

use domicile_types::{Channel, ConsentState, Purpose};

use crate::model::{Basis, Obligation, Rule};
use crate::pack::{Pack, PackRef};

/// Number of purpose × channel cells in a compiled table.
pub(crate) const CELLS: usize = Purpose::COUNT * Channel::COUNT;

pub(crate) fn cell_index(purpose: Purpose, channel: Channel) -> usize {
    purpose.index() * Channel::COUNT + channel.index()
}

/// What the caller wants to do, when, and the subject's current consent for that purpose and
/// channel (the caller derives the current state from the consent history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionInput {
    pub purpose: Purpose,
    pub channel: Channel,
    /// The instant the decision is for, in unix seconds (the library has no clock).
    pub at_unix: i64,
    pub consent: Option<ConsentFact>,
}

/// The current consent state for one purpose × channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsentFact {
    pub state: ConsentState,
    pub captured_at_unix: i64,
    pub expires_at_unix: Option<i64>,
    pub double_opt_in_confirmed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "allow" => Some(Effect::Allow),
            "deny" => Some(Effect::Deny),
            _ => None,
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! outcomes {
    ($($variant:ident => $text:literal, $phrase:literal, $effect:ident;)+) => {
        /// Why a decision came out the way it did, finer than the effect.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Outcome { $($variant),+ }

        impl Outcome {
            pub const ALL: &'static [Outcome] = &[$(Outcome::$variant),+];
            pub const COUNT: usize = Self::ALL.len();

            pub fn as_str(self) -> &'static str {
                match self { $(Outcome::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some(Outcome::$variant),)+ _ => None }
            }

            /// The words an explanation starts with.
            pub fn phrase(self) -> &'static str {
                match self { $(Outcome::$variant => $phrase),+ }
            }

            pub fn effect(self) -> Effect {
                match self { $(Outcome::$variant => Effect::$effect),+ }
            }
        }
    };
}

outcomes! {
    DefaultDeny => "default_deny", "no rule", Deny;
    Prohibited => "prohibited", "prohibited", Deny;
    ConsentGranted => "consent_granted", "consent granted", Allow;
    NoObjection => "no_objection", "no objection", Allow;
    NoConsent => "no_consent", "no consent", Deny;
    ConsentDenied => "consent_denied", "consent denied", Deny;
    ConsentWithdrawn => "consent_withdrawn", "consent withdrawn", Deny;
    ConsentExpired => "consent_expired", "consent expired", Deny;
    DoubleOptInUnconfirmed => "double_opt_in_unconfirmed", "double opt-in not confirmed", Deny;
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pack's answer, carrying everything needed to explain and audit it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub effect: Effect,
    /// The deciding rule id, or `<pack-id>.default-deny`.
    pub reasons: Vec<String>,
    pub pack: PackRef,
    /// Attached to allow decisions only.
    pub obligations: Vec<Obligation>,
    pub explanation: String,
    /// When an allow stops holding (a consent's expiry); `None` when it does not lapse by itself.
    pub valid_until_unix: Option<i64>,
}

/// The allocation-free core of a decision; [`Pack::decide`] turns it into a [`Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'p> {
    pub effect: Effect,
    pub outcome: Outcome,
    /// The deciding rule; `None` for a default deny.
    pub rule: Option<&'p Rule>,
    pub valid_until_unix: Option<i64>,
    cell: usize,
    rule_index: usize,
}

/// The compiled form of a pack's rules.
#[derive(Debug, Clone)]
pub(crate) struct DecisionTable {
    /// Index into the pack's rules, per purpose × channel cell.
    cells: [Option<u16>; CELLS],
    /// `explanations[cell * Outcome::COUNT + outcome]`, prebuilt so deciding only clones.
    explanations: Box<[String]>,
    /// Resolved obligations per rule, in rule order.
    obligations: Box<[Vec<Obligation>]>,
    default_reason: String,
}

impl DecisionTable {
    /// Builds the table. Overlaps and dangling obligations were rejected by validation; here the
    /// first rule for a cell wins and unknown obligations are skipped, so this cannot fail.
    pub(crate) fn compile(pack: &PackRef, rules: &[Rule], defined: &[Obligation]) -> Self {
        let mut cells = [None; CELLS];
        for (index, rule) in rules.iter().enumerate() {
            let Ok(index) = u16::try_from(index) else {
                break;
            };
            for &channel in &rule.channels {
                if let Some(cell) = cells.get_mut(cell_index(rule.purpose, channel)) {
                    cell.get_or_insert(index);
                }
            }
        }
        let mut explanations = Vec::with_capacity(CELLS * Outcome::COUNT);
        for &purpose in Purpose::ALL {
            for &channel in Channel::ALL {
                let rule =
                    cells.get(cell_index(purpose, channel)).copied().flatten().and_then(|i| rules.get(usize::from(i)));
                for &outcome in Outcome::ALL {
                    explanations.push(explain(pack, purpose, channel, rule, outcome));
                }
            }
        }
        let obligations = rules
            .iter()
            .map(|rule| {
                rule.obligations.iter().filter_map(|id| defined.iter().find(|o| &o.id == id).cloned()).collect()
            })
            .collect();
        Self {
            cells,
            explanations: explanations.into_boxed_slice(),
            obligations,
            default_reason: format!("{}.default-deny", pack.id),
        }
    }

    pub(crate) fn default_reason(&self) -> &str {
        &self.default_reason
    }

    pub(crate) fn rule_at(&self, purpose: Purpose, channel: Channel) -> Option<usize> {
        self.cells.get(cell_index(purpose, channel)).copied().flatten().map(usize::from)
    }
}

fn explain(pack: &PackRef, purpose: Purpose, channel: Channel, rule: Option<&Rule>, outcome: Outcome) -> String {
    let verb = match outcome.effect() {
        Effect::Allow => "allowed",
        Effect::Deny => "denied",
    };
    match rule {
        None => format!("{}: {purpose} by {channel} is denied by default in {pack}", outcome.phrase()),
        Some(rule) => format!(
            "{}: {purpose} by {channel} is {verb} by rule {} ({}; {}) in {pack}",
            outcome.phrase(),
            rule.id,
            rule.basis,
            rule.cite
        ),
    }
}

/// Applies a basis to the consent on record. Fails closed: a grant captured after the decision
/// instant does not count yet, while an objection counts whenever it was recorded.
fn judge(basis: Basis, at_unix: i64, consent: Option<&ConsentFact>) -> (Outcome, Option<i64>) {
    let state = consent.map(|c| c.state);
    match basis {
        Basis::Prohibited => (Outcome::Prohibited, None),
        Basis::OptOut | Basis::LegitimateInterest => match state {
            Some(ConsentState::Denied) => (Outcome::ConsentDenied, None),
            Some(ConsentState::Withdrawn) => (Outcome::ConsentWithdrawn, None),
            Some(ConsentState::Granted) => (Outcome::ConsentGranted, None),
            None => (Outcome::NoObjection, None),
        },
        Basis::OptIn | Basis::DoubleOptIn => match consent {
            None => (Outcome::NoConsent, None),
            Some(c) => match c.state {
                ConsentState::Denied => (Outcome::ConsentDenied, None),
                ConsentState::Withdrawn => (Outcome::ConsentWithdrawn, None),
                ConsentState::Granted if c.captured_at_unix > at_unix => (Outcome::NoConsent, None),
                ConsentState::Granted if c.expires_at_unix.is_some_and(|e| e <= at_unix) => {
                    (Outcome::ConsentExpired, None)
                }
                ConsentState::Granted if basis == Basis::DoubleOptIn && !c.double_opt_in_confirmed => {
                    (Outcome::DoubleOptInUnconfirmed, None)
                }
                ConsentState::Granted => (Outcome::ConsentGranted, c.expires_at_unix),
            },
        },
    }
}

impl Pack {
    /// The decision without building its owned parts: no allocation, for hot loops and benchmarks.
    pub fn evaluate(&self, input: &DecisionInput) -> Verdict<'_> {
        let cell = cell_index(input.purpose, input.channel);
        let table = self.table();
        let rule_index = table.cells.get(cell).copied().flatten().map_or(usize::MAX, usize::from);
        let rule = self.rules().get(rule_index);
        let (outcome, valid_until_unix) = match rule {
            None => (Outcome::DefaultDeny, None),
            Some(rule) => judge(rule.basis, input.at_unix, input.consent.as_ref()),
        };
        Verdict { effect: outcome.effect(), outcome, rule, valid_until_unix, cell, rule_index }
    }

    /// Decides one purpose × channel for one subject at one instant. Pure and O(1).
    pub fn decide(&self, input: &DecisionInput) -> Decision {
        self.decision(&self.evaluate(input))
    }

    /// Builds the owned [`Decision`] for a verdict of this pack.
    pub fn decision(&self, verdict: &Verdict<'_>) -> Decision {
        let table = self.table();
        let reason = verdict.rule.map_or(table.default_reason.as_str(), |r| r.id.as_str());
        let obligations = match (verdict.effect, verdict.rule) {
            (Effect::Allow, Some(_)) => table.obligations.get(verdict.rule_index).cloned().unwrap_or_default(),
            _ => Vec::new(),
        };
        let explanation = table
            .explanations
            .get(verdict.cell * Outcome::COUNT + verdict.outcome as usize)
            .cloned()
            .unwrap_or_default();
        Decision {
            effect: verdict.effect,
            reasons: vec![reason.to_owned()],
            pack: self.pack_ref(),
            obligations,
            explanation,
            valid_until_unix: verdict.valid_until_unix,
        }
    }
}

#[cfg(test)]
mod tests {
    use domicile_types::{Channel, ConsentState, Jurisdiction, Purpose, RegionId};

    use super::*;
    use crate::{PackSet, PackSource, ResidencyError};

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
[obligations.unsubscribe]
text = "include an unsubscribe link"
[obligations.screen]
text = "screen the register"
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
        DecisionInput { purpose, channel, at_unix: T0, consent }
    }

    fn fact(state: ConsentState) -> ConsentFact {
        ConsentFact { state, captured_at_unix: T0 - 86_400, expires_at_unix: None, double_opt_in_confirmed: false }
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
        let v = p.evaluate(&input(Purpose::Marketing, Channel::Messaging, Some(unconfirmed)));
        assert_eq!((v.effect, v.outcome), (Effect::Deny, Outcome::DoubleOptInUnconfirmed));
        let confirmed = ConsentFact { double_opt_in_confirmed: true, ..unconfirmed };
        let d = p.decide(&input(Purpose::Marketing, Channel::Messaging, Some(confirmed)));
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
                let objection =
                    ConsentFact { captured_at_unix: T0 + 3600, expires_at_unix: Some(T0 - 10), ..fact(state) };
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
}
