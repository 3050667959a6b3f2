//! One rule's verdict on one input: the legal basis (or, for a minor, the band's) against the
//! consent on record and the asserted facts, then register screening, then the calling window.
//! Fails closed throughout.

use std::borrow::Cow;

use domicile_types::ConsentState;

use crate::model::decision::{ConsentFact, DecisionInput, Effect, Outcome};
use crate::model::rule::{Lifetime, MinorBand, Rule};
use crate::model::table::CompiledRule;
use crate::model::terms::{Basis, ConsentKind};
use crate::model::window::{CallingWindow, Opening};
use crate::zone::Zone;

/// What the hours of a consent are judged against: the rule's hours that need a consent naming
/// them, the pack's windows a consent may be limited to, and the zones the subject may be in.
pub(crate) struct Hours<'a> {
    pub(crate) separate: Option<&'a CallingWindow>,
    pub(crate) windows: &'a [CallingWindow],
    pub(crate) zones: &'a [Zone],
}

impl Hours<'_> {
    /// Whether a grant covers the instant `at`: `Ok(until)` with when that coverage ends, or
    /// `Err(())`. A consent limited to named hours counts only while one of them is open in every
    /// zone the subject may be in (a window id the pack does not define covers nothing); inside
    /// the rule's separate hours (open in any of the zones) only a consent naming them counts.
    fn cover(&self, consent: &ConsentFact, at: i64) -> Result<Option<i64>, ()> {
        // Without a zone nothing can be said about local hours: hours cover nothing then.
        if self.zones.is_empty() && (!consent.hours.is_empty() || self.separate.is_some()) {
            return Err(());
        }
        let mut until = None;
        if !consent.hours.is_empty() {
            let close = consent
                .hours
                .iter()
                .filter_map(|id| self.windows.iter().find(|w| &w.id == id))
                .filter_map(|w| match w.opening(self.zones, at) {
                    Opening::Open(close) => Some(close),
                    Opening::Closed(_) | Opening::Uncovered => None,
                })
                .max()
                .ok_or(())?;
            until = Some(close);
        }
        if let Some(separate) = self.separate {
            match self.separate_begins(separate, at) {
                None if !consent.hours.contains(&separate.id) => return Err(()),
                None => {}
                Some(begins) => until = min_opt(until, begins),
            }
        }
        Ok(until)
    }

    /// When the rule's separate hours begin in some zone (`Some(None)`: not known), or `None`
    /// when they are on now in some zone, or the holiday calendar cannot tell (fail closed: as if
    /// they were on).
    fn separate_begins(&self, separate: &CallingWindow, at: i64) -> Option<Option<i64>> {
        let mut begins: Option<i64> = None;
        for zone in self.zones {
            match separate.opening(std::slice::from_ref(zone), at) {
                Opening::Open(_) | Opening::Uncovered => return None,
                Opening::Closed(next) => begins = min_opt(begins, next),
            }
        }
        Some(begins)
    }

    /// Whether the rule's separate hours are on at `at` in some zone (or cannot be told): then a
    /// contact that rests on no consent naming them is denied, whatever the basis.
    fn separate_on(&self, at: i64) -> bool {
        self.separate.is_some_and(|s| self.zones.is_empty() || self.separate_begins(s, at).is_none())
    }
}

/// What the consent on record says for a consent-based rule. Fails closed: a grant captured after
/// the decision instant does not count yet, while an objection counts whenever it was recorded.
fn judge_consent(
    basis: Basis,
    lifetime: &Lifetime,
    at_unix: i64,
    consent: Option<&ConsentFact>,
    hours: &Hours<'_>,
) -> (Outcome, Option<i64>) {
    let Some(c) = consent else { return (Outcome::NoConsent, None) };
    match c.state {
        ConsentState::Denied => (Outcome::ConsentDenied, None),
        ConsentState::Withdrawn => (Outcome::ConsentWithdrawn, None),
        ConsentState::Granted if c.captured_at_unix > at_unix => (Outcome::NoConsent, None),
        ConsentState::Granted => {
            let Some(limit) = lifetime.accepts(c.kind.unwrap_or(ConsentKind::Express)) else {
                return (Outcome::ConsentKindNotAccepted, None);
            };
            let lapses = limit.map(|p| p.after(c.captured_at_unix));
            let expiry = min_opt(c.expires_at_unix, lapses);
            if expiry.is_some_and(|e| e <= at_unix) {
                (Outcome::ConsentExpired, None)
            } else if basis == Basis::DoubleOptIn && !c.double_opt_in_confirmed {
                (Outcome::DoubleOptInUnconfirmed, None)
            } else {
                match hours.cover(c, at_unix) {
                    Ok(until) => (Outcome::ConsentGranted, min_opt(expiry, until)),
                    Err(()) => (Outcome::ConsentHoursNotCovered, None),
                }
            }
        }
    }
}

/// The consent kinds a minors band accepts, each for as long as the rule's lifetime lets it
/// count: a kind the rule's lifetime refuses stays refused, except `guardian`, which counts as
/// long as the rule lets express consent count when the lifetime does not name it.
fn band_lifetime<'a>(band: &MinorBand, lifetime: &'a Lifetime) -> Cow<'a, Lifetime> {
    let mut kinds = [None; 4];
    for kind in &band.consent {
        let limit = match kind {
            ConsentKind::Guardian => lifetime.accepts(*kind).or_else(|| lifetime.accepts(ConsentKind::Express)),
            _ => lifetime.accepts(*kind),
        };
        if let Some(slot) = kinds.get_mut(kind.index()) {
            *slot = limit;
        }
    }
    Cow::Owned(Lifetime { id: lifetime.id.clone(), kinds, cite: lifetime.cite.clone(), line: lifetime.line })
}

/// How strict a basis is, for a minors band that may only tighten its rule.
fn strictness(basis: Basis) -> u8 {
    match basis {
        Basis::OptOut | Basis::LegitimateInterest => 0,
        Basis::SoftOptIn => 1,
        Basis::OptIn => 2,
        Basis::DoubleOptIn => 3,
        Basis::Prohibited | Basis::Gap => 4,
    }
}

/// Whether a consent on record is in force for a register's exemption: the rule's own verdict for
/// a consent-based rule; for an opt-out rule (whose verdict does not look at a grant's validity)
/// the grant judged as an opt-in would be, against the rule's lifetime: of an accepted kind, not
/// expired, captured no later than the decision instant. A grant that would not count for an
/// opt-in never lets a listed number through.
fn consent_in_force(
    basis: Basis,
    outcome: Outcome,
    lifetime: &Lifetime,
    input: &DecisionInput,
    hours: &Hours<'_>,
) -> bool {
    match basis {
        Basis::OptIn | Basis::DoubleOptIn | Basis::SoftOptIn => outcome == Outcome::ConsentGranted,
        Basis::OptOut | Basis::LegitimateInterest | Basis::Prohibited | Basis::Gap => {
            judge_consent(Basis::OptIn, lifetime, input.at_unix, input.consent.as_ref(), hours).0
                == Outcome::ConsentGranted
        }
    }
}

/// Contact without consent limited to recent customers (`customer_within`): the verdict stands,
/// until the relationship lapses, only for a subject with one recent enough.
fn recent_customer(rule: &Rule, input: &DecisionInput, verdict: (Outcome, Option<i64>)) -> (Outcome, Option<i64>) {
    match rule.customer_within {
        None => verdict,
        Some(limit) => {
            match limit.holds_until(input.facts.last_purchase_at, input.facts.last_inquiry_at, input.at_unix) {
                Some(end) => (verdict.0, min_opt(verdict.1, Some(end))),
                None => (Outcome::NoRecentRelationship, None),
            }
        }
    }
}

/// The earlier of two optional instants (`None` = never).
pub(crate) fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One rule's verdict on an input: the outcome and until when it holds. `windows` are the pack's
/// calling windows, which a consent may be limited to.
pub(crate) fn judge(
    rule: &Rule,
    compiled: &CompiledRule,
    input: &DecisionInput,
    pack_zones: &[Zone],
    windows: &[CallingWindow],
) -> (Outcome, Option<i64>) {
    let zones = input.subject_time_zone.as_ref().map_or(pack_zones, std::slice::from_ref);
    let hours = Hours { separate: compiled.separate_hours.as_ref(), windows, zones };
    // Below a minors band's age the band tightens the rule. With the age unknown and the pack
    // saying to treat it as a minor's, the contact must pass every band.
    let Some(minors) = &compiled.minors else { return judge_as(rule, compiled, input, &hours, None) };
    let bands = minors.bands_for(input.facts.age);
    if bands.is_empty() {
        return judge_as(rule, compiled, input, &hours, None);
    }
    let mut allowed: Option<(Outcome, Option<i64>)> = None;
    for band in bands {
        let verdict = judge_as(rule, compiled, input, &hours, Some(band));
        if verdict.0.effect() == Effect::Deny {
            return verdict;
        }
        allowed = Some(match allowed {
            None => verdict,
            Some((outcome, until)) => (outcome, min_opt(until, verdict.1)),
        });
    }
    allowed.unwrap_or((Outcome::MinorConsentRequired, None))
}

/// One rule's verdict under its own basis, or under a minors band's where that is stricter.
fn judge_as(
    rule: &Rule,
    compiled: &CompiledRule,
    input: &DecisionInput,
    hours: &Hours<'_>,
    band: Option<&MinorBand>,
) -> (Outcome, Option<i64>) {
    let at = input.at_unix;
    let (basis, lifetime) = match band {
        Some(band) if strictness(band.basis) >= strictness(rule.basis) => {
            (band.basis, band_lifetime(band, &compiled.lifetime))
        }
        // A band never loosens: the rule's own basis stands, with the band's consent kinds.
        Some(band) => (rule.basis, band_lifetime(band, &compiled.lifetime)),
        None => (rule.basis, Cow::Borrowed(&compiled.lifetime)),
    };
    let state = input.consent.as_ref().map(|c| c.state);
    let (outcome, valid_until) = match basis {
        Basis::Prohibited => return (Outcome::Prohibited, None),
        Basis::Gap => return (Outcome::Gap, None),
        Basis::OptOut | Basis::LegitimateInterest => match state {
            Some(ConsentState::Denied) => (Outcome::ConsentDenied, None),
            Some(ConsentState::Withdrawn) => (Outcome::ConsentWithdrawn, None),
            Some(ConsentState::Granted) => (Outcome::ConsentGranted, None),
            None => recent_customer(rule, input, (Outcome::NoObjection, None)),
        },
        Basis::OptIn | Basis::DoubleOptIn => judge_consent(basis, &lifetime, at, input.consent.as_ref(), hours),
        Basis::SoftOptIn => match judge_consent(basis, &lifetime, at, input.consent.as_ref(), hours) {
            // An objection ends a soft opt-in too, and hours that need a consent naming them are
            // not reached by the soft opt-in either.
            granted @ (Outcome::ConsentGranted, _) => granted,
            stop @ (Outcome::ConsentDenied | Outcome::ConsentWithdrawn | Outcome::ConsentHoursNotCovered, _) => stop,
            _ if rule.conditions.iter().all(|c| input.facts.holds(*c)) => {
                recent_customer(rule, input, (Outcome::SoftOptIn, None))
            }
            other => other,
        },
    };
    if outcome.effect() == Effect::Deny {
        let outcome = match (band, outcome) {
            (Some(_), Outcome::NoConsent | Outcome::ConsentKindNotAccepted) => Outcome::MinorConsentRequired,
            _ => outcome,
        };
        return (outcome, valid_until);
    }
    // Inside hours that need a consent naming them, an allow that rests on no such consent
    // (no objection, soft opt-in) does not hold.
    if outcome != Outcome::ConsentGranted && hours.separate_on(at) {
        return (Outcome::ConsentHoursNotCovered, None);
    }
    let mut valid_until = min_opt(valid_until, rule.effective_until);
    if let Some(register) = &compiled.register
        && input.facts.on_register == Some(true)
        && !(register.exempt_with_consent && consent_in_force(basis, outcome, &lifetime, input, hours))
    {
        // An existing business relationship may exempt a listed number, for as long as it lasts.
        match register
            .relationship_exemption
            .and_then(|r| r.holds_until(input.facts.last_purchase_at, input.facts.last_inquiry_at, at))
        {
            Some(end) => valid_until = min_opt(valid_until, Some(end)),
            None => return (Outcome::OnRegister, None),
        }
    }
    if let Some(window) = &compiled.window {
        return match window.opening(hours.zones, at) {
            Opening::Open(close) => (outcome, min_opt(valid_until, Some(close))),
            Opening::Closed(next) => (Outcome::OutsideWindow, next),
            // No holiday data for the date: whether it is a public holiday is unknown, never assumed.
            Opening::Uncovered => (Outcome::HolidaysNotCovered, None),
        };
    }
    (outcome, valid_until)
}
