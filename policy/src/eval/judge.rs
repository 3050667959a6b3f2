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
        let mut until = None;
        if !consent.hours.is_empty() {
            let close = consent
                .hours
                .iter()
                .filter_map(|id| self.windows.iter().find(|w| &w.id == id))
                .filter_map(|w| w.check(self.zones, at).ok())
                .max()
                .ok_or(())?;
            until = Some(close);
        }
        if let Some(separate) = self.separate {
            let inside = self.zones.iter().any(|z| separate.check(std::slice::from_ref(z), at).is_ok());
            if inside && !consent.hours.contains(&separate.id) {
                return Err(());
            }
            if !inside {
                let begins = self.zones.iter().filter_map(|z| separate.next_open(z, at)).min();
                until = min_opt(until, begins);
            }
        }
        Ok(until)
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

/// The consent kinds a minors band accepts: each for as long as the rule's lifetime says when it
/// names the kind, else without a limit of its own (the record's expiry still applies).
fn band_lifetime<'a>(band: &MinorBand, lifetime: &'a Lifetime) -> Cow<'a, Lifetime> {
    let mut kinds = [None; 4];
    for kind in &band.consent {
        if let Some(slot) = kinds.get_mut(kind.index()) {
            *slot = Some(lifetime.accepts(*kind).unwrap_or(None));
        }
    }
    Cow::Owned(Lifetime { id: lifetime.id.clone(), kinds, cite: lifetime.cite.clone(), line: lifetime.line })
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
    let at = input.at_unix;
    let zones = input.subject_time_zone.as_ref().map_or(pack_zones, std::slice::from_ref);
    let hours = Hours { separate: compiled.separate_hours.as_ref(), windows, zones };
    // Below a minors band's age the band's basis and consent kinds replace the rule's.
    let band = compiled.minors.as_ref().and_then(|m| m.band(input.facts.age));
    let (basis, lifetime) = match band {
        Some(band) => (band.basis, band_lifetime(band, &compiled.lifetime)),
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
        Basis::OptIn | Basis::DoubleOptIn => judge_consent(basis, &lifetime, at, input.consent.as_ref(), &hours),
        Basis::SoftOptIn => match judge_consent(basis, &lifetime, at, input.consent.as_ref(), &hours) {
            // An objection ends a soft opt-in too.
            granted @ (Outcome::ConsentGranted, _) => granted,
            objection @ (Outcome::ConsentDenied | Outcome::ConsentWithdrawn, _) => objection,
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
    let mut valid_until = min_opt(valid_until, rule.effective_until);
    if let Some(register) = &compiled.register
        && input.facts.on_register == Some(true)
        && !(register.exempt_with_consent && consent_in_force(basis, outcome, &lifetime, input, &hours))
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
        return match window.opening(zones, at) {
            Opening::Open(close) => (outcome, min_opt(valid_until, Some(close))),
            Opening::Closed(next) => (Outcome::OutsideWindow, next),
            // No holiday data for the date: whether it is a public holiday is unknown, never assumed.
            Opening::Uncovered => (Outcome::HolidaysNotCovered, None),
        };
    }
    (outcome, valid_until)
}
