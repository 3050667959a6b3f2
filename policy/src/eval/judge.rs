//! One rule's verdict on one input: the legal basis against the consent on record and the
//! asserted facts, then register screening, then the calling window. Fails closed throughout.

use domicile_types::ConsentState;

use crate::model::decision::{ConsentFact, DecisionInput, Effect, Outcome};
use crate::model::rule::{Lifetime, Rule};
use crate::model::table::CompiledRule;
use crate::model::terms::{Basis, ConsentKind};
use crate::zone::Zone;

/// What the consent on record says for a consent-based rule. Fails closed: a grant captured after
/// the decision instant does not count yet, while an objection counts whenever it was recorded.
fn judge_consent(
    basis: Basis,
    lifetime: &Lifetime,
    at_unix: i64,
    consent: Option<&ConsentFact>,
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
            let expiry = match (c.expires_at_unix, lapses) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if expiry.is_some_and(|e| e <= at_unix) {
                (Outcome::ConsentExpired, None)
            } else if basis == Basis::DoubleOptIn && !c.double_opt_in_confirmed {
                (Outcome::DoubleOptInUnconfirmed, None)
            } else {
                (Outcome::ConsentGranted, expiry)
            }
        }
    }
}

/// Whether a consent on record is in force for a register's exemption: the rule's own verdict for
/// a consent-based rule; for an opt-out rule (whose verdict does not look at a grant's validity)
/// the grant judged as an opt-in would be, against the rule's lifetime: of an accepted kind, not
/// expired, captured no later than the decision instant. A grant that would not count for an
/// opt-in never lets a listed number through.
fn consent_in_force(basis: Basis, outcome: Outcome, lifetime: &Lifetime, input: &DecisionInput) -> bool {
    match basis {
        Basis::OptIn | Basis::DoubleOptIn | Basis::SoftOptIn => outcome == Outcome::ConsentGranted,
        Basis::OptOut | Basis::LegitimateInterest | Basis::Prohibited | Basis::Gap => {
            judge_consent(Basis::OptIn, lifetime, input.at_unix, input.consent.as_ref()).0 == Outcome::ConsentGranted
        }
    }
}

/// Contact without consent limited to recent customers (`customer_within`): the verdict stands,
/// until the relationship lapses, only for a subject with one recent enough.
fn recent_customer(rule: &Rule, input: &DecisionInput, verdict: (Outcome, Option<i64>)) -> (Outcome, Option<i64>) {
    match rule.customer_within {
        None => verdict,
        Some(limit) => match limit.holds_until(&input.facts, input.at_unix) {
            Some(end) => (verdict.0, min_opt(verdict.1, Some(end))),
            None => (Outcome::NoRecentRelationship, None),
        },
    }
}

/// The earlier of two optional instants (`None` = never).
pub(crate) fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One rule's verdict on an input: the outcome and until when it holds.
pub(crate) fn judge(
    rule: &Rule,
    compiled: &CompiledRule,
    input: &DecisionInput,
    pack_zones: &[Zone],
) -> (Outcome, Option<i64>) {
    let at = input.at_unix;
    let state = input.consent.as_ref().map(|c| c.state);
    let (outcome, valid_until) = match rule.basis {
        Basis::Prohibited => return (Outcome::Prohibited, None),
        Basis::Gap => return (Outcome::Gap, None),
        Basis::OptOut | Basis::LegitimateInterest => match state {
            Some(ConsentState::Denied) => (Outcome::ConsentDenied, None),
            Some(ConsentState::Withdrawn) => (Outcome::ConsentWithdrawn, None),
            Some(ConsentState::Granted) => (Outcome::ConsentGranted, None),
            None => recent_customer(rule, input, (Outcome::NoObjection, None)),
        },
        Basis::OptIn | Basis::DoubleOptIn => judge_consent(rule.basis, &compiled.lifetime, at, input.consent.as_ref()),
        Basis::SoftOptIn => match judge_consent(rule.basis, &compiled.lifetime, at, input.consent.as_ref()) {
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
        return (outcome, valid_until);
    }
    let valid_until = min_opt(valid_until, rule.effective_until);
    let mut valid_until = valid_until;
    if let Some(register) = &compiled.register
        && input.facts.on_register == Some(true)
        && !(register.exempt_with_consent && consent_in_force(rule.basis, outcome, &compiled.lifetime, input))
    {
        // An existing business relationship may exempt a listed number, for as long as it lasts.
        match register.relationship_exemption.and_then(|r| r.holds_until(&input.facts, at)) {
            Some(end) => valid_until = min_opt(valid_until, Some(end)),
            None => return (Outcome::OnRegister, None),
        }
    }
    if let Some(window) = &compiled.window {
        let zones = input.subject_time_zone.as_ref().map_or(pack_zones, std::slice::from_ref);
        return match window.check(zones, at) {
            Ok(close) => (outcome, min_opt(valid_until, Some(close))),
            Err(next) => (Outcome::OutsideWindow, next),
        };
    }
    (outcome, valid_until)
}
