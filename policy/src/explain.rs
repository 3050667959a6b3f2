//! Explain and diff: the authoring tools' view of the evaluator.
//!
//! `explain` traces one decision: which packs were consulted, which rules cover the cell, which
//! conditions held, and the legal citation of each. `diff` evaluates two versions of a pack over
//! a generated decision space and lists every decision that changed.

use std::fmt;

use domicile_types::{Channel, ConsentState, Purpose};
use serde::Serialize;

use crate::eval::judge;
use crate::model::table::{CompiledRule, DecisionTable};
use crate::model::terms::Recipient;
use crate::model::{Basis, ConsentFact, ConsentKind, Decision, DecisionInput, Facts, Outcome, Pack, Rule};
use crate::time::format_rfc3339;

/// One check a rule made, and whether it held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub what: String,
    pub held: bool,
}

/// One rule the evaluator weighed for the cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceRule {
    pub rule: String,
    /// The pack that defines the rule (the decided pack or one it extends).
    pub defined_in: String,
    pub path: String,
    pub line: usize,
    pub basis: String,
    pub cite: String,
    pub source: Option<String>,
    pub confidence: String,
    pub note: Option<String>,
    pub in_effect: bool,
    /// `None` when the rule was not in effect and so not judged.
    pub outcome: Option<String>,
    pub effect: Option<String>,
    pub checks: Vec<Check>,
}

/// Why one decision came out the way it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trace {
    pub pack: String,
    /// The jurisdiction of the pack that decided (`US-CA`, `US`).
    pub jurisdiction: String,
    /// The pack is the country's, standing in for a subdivision without a pack of its own
    /// ([`crate::PackMatch::explain`]).
    pub country_fallback: bool,
    /// The packs consulted, nearest first (`de@2026.11.0`, `eu@2026.11.0`).
    pub chain: Vec<String>,
    pub purpose: String,
    pub channel: String,
    pub at: String,
    pub time_zones: Vec<String>,
    pub rules: Vec<TraceRule>,
    pub effect: String,
    pub outcome: String,
    pub reasons: Vec<String>,
    pub obligations: Vec<(String, String)>,
    pub explanation: String,
    pub valid_until: Option<String>,
}

impl Pack {
    /// Traces one decision. Slower than [`Pack::decide`] (it allocates a report); same answer.
    pub fn explain(&self, input: &DecisionInput) -> Trace {
        let decision = self.decide(input);
        let verdict = self.evaluate(input);
        let zones: Vec<String> = match &input.subject_time_zone {
            Some(z) => vec![z.name().to_owned()],
            None => self.time_zones().iter().map(|z| z.name().to_owned()).collect(),
        };
        let mut rules = Vec::new();
        for (rule, recipients) in self.rules_for_recipients(input.purpose, input.channel) {
            let index = self.effective_rules().iter().position(|r| r.id == rule.id);
            let compiled = index.and_then(|i| self.table().compiled.get(i));
            let in_effect = rule.in_effect(input.at_unix);
            let mut checks = vec![Check {
                what: match (rule.effective_from, rule.effective_until) {
                    (None, None) => "rule has no effective dates".to_owned(),
                    (f, u) => format!(
                        "rule in effect from {} until {}",
                        f.map_or_else(|| "always".to_owned(), format_rfc3339),
                        u.map_or_else(|| "further notice".to_owned(), format_rfc3339)
                    ),
                },
                held: in_effect,
            }];
            // A rule for other recipient types does not apply (as the decision weighs it, after
            // `replaces`); with the type unknown every rule of the cell is weighed.
            let applies_to_recipient = DecisionTable::weighed_for(recipients, input.facts.recipient);
            let types: Vec<&str> =
                Recipient::ALL.iter().filter(|r| recipients & r.bit() != 0).map(|r| r.as_str()).collect();
            if types.len() < Recipient::ALL.len() {
                checks.push(Check {
                    what: format!(
                        "rule applies to {} recipients (recipient: {})",
                        types.join(" and "),
                        input.facts.recipient.map_or("not known, so every type's rule is weighed", |r| r.as_str())
                    ),
                    held: applies_to_recipient,
                });
            }
            let (outcome, effect) = match (in_effect && applies_to_recipient, compiled) {
                (true, Some(compiled)) => {
                    checks.extend(consent_checks(rule.basis, input, compiled, rule));
                    let (outcome, _) = judge(rule, compiled, input, self.table().zones(), &self.table().windows);
                    if let Some(register) = &compiled.register {
                        checks.push(Check {
                            what: format!(
                                "contact not on {} (screened: {})",
                                register.name,
                                match input.facts.on_register {
                                    None => "not yet; obligation to screen",
                                    Some(true) => "listed",
                                    Some(false) => "not listed",
                                }
                            ),
                            held: input.facts.on_register != Some(true),
                        });
                    }
                    if let Some(window) = &compiled.window {
                        checks.push(Check {
                            what: format!(
                                "inside calling window `{}` in {} ({})",
                                window.id,
                                zones.join(", "),
                                window.describe()
                            ),
                            held: !matches!(outcome, Outcome::OutsideWindow | Outcome::HolidaysNotCovered),
                        });
                        let window_zones =
                            input.subject_time_zone.as_ref().map_or(self.time_zones(), std::slice::from_ref);
                        if let Some((what, held)) = window.holiday_note(window_zones, input.at_unix) {
                            checks.push(Check { what, held });
                        }
                    }
                    (Some(outcome.as_str().to_owned()), Some(outcome.effect().as_str().to_owned()))
                }
                _ => (None, None),
            };
            rules.push(TraceRule {
                rule: rule.id.clone(),
                defined_in: rule.pack_id.clone(),
                path: rule.path.clone(),
                line: rule.line,
                basis: rule.basis.as_str().to_owned(),
                cite: rule.cite.clone(),
                source: rule.source.clone(),
                confidence: rule.confidence.as_str().to_owned(),
                note: rule.note.clone(),
                in_effect,
                outcome,
                effect,
                checks,
            });
        }
        Trace {
            pack: self.pack_ref().to_string(),
            jurisdiction: decision.jurisdiction.clone(),
            country_fallback: decision.country_fallback,
            chain: self.chain().iter().map(ToString::to_string).collect(),
            purpose: input.purpose.as_str().to_owned(),
            channel: input.channel.as_str().to_owned(),
            at: format_rfc3339(input.at_unix),
            time_zones: zones,
            rules,
            effect: decision.effect.as_str().to_owned(),
            outcome: verdict.outcome.as_str().to_owned(),
            reasons: decision.reasons.clone(),
            obligations: decision.obligations.iter().map(|o| (o.id.clone(), o.text.clone())).collect(),
            explanation: decision.explanation.clone(),
            valid_until: decision.valid_until_unix.map(format_rfc3339),
        }
    }
}

fn consent_checks(basis: Basis, input: &DecisionInput, compiled: &CompiledRule, rule: &Rule) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut basis = basis;
    if let Some(minors) = &compiled.minors {
        let band = minors.bands_for(input.facts.age).first();
        let age =
            input.facts.age.map_or_else(|| format!("not known, treated as {}", minors.unknown_age), |a| a.to_string());
        checks.push(Check {
            what: match band {
                Some(b) => format!(
                    "subject is under {} (age {age}): {} with {} consent ({})",
                    b.under,
                    b.basis,
                    if b.consent.is_empty() {
                        "no".to_owned()
                    } else {
                        b.consent.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" or ")
                    },
                    minors.cite
                ),
                None => format!("subject is not a minor under `{}` (age {age})", minors.id),
            },
            held: band.is_none(),
        });
        if let Some(b) = band {
            basis = b.basis;
        }
    }
    if let Some(hours) = &compiled.separate_hours {
        checks.push(Check {
            what: format!("during `{}` ({}), only a consent naming those hours counts", hours.id, hours.describe()),
            held: input.consent.as_ref().is_some_and(|c| c.hours.contains(&hours.id)),
        });
    }
    if let Some(c) = input.consent.as_ref().filter(|c| !c.hours.is_empty()) {
        checks.push(Check { what: format!("consent limited to hours {}", c.hours.join(", ")), held: true });
    }
    let state = input.consent.as_ref().map(|c| c.state);
    let objection = matches!(state, Some(ConsentState::Denied | ConsentState::Withdrawn));
    match basis {
        Basis::Prohibited => checks.push(Check { what: "prohibited: never allowed".into(), held: false }),
        Basis::Gap => checks.push(Check { what: "declared gap: no lawful basis modelled".into(), held: false }),
        Basis::OptOut | Basis::LegitimateInterest => {
            checks.push(Check { what: "subject has not objected".into(), held: !objection });
        }
        Basis::OptIn | Basis::DoubleOptIn | Basis::SoftOptIn => {
            let granted = input
                .consent
                .as_ref()
                .filter(|c| c.state == ConsentState::Granted && c.captured_at_unix <= input.at_unix);
            checks.push(Check { what: "consent granted before the decision time".into(), held: granted.is_some() });
            if let Some(c) = granted {
                let kind = c.kind.unwrap_or(ConsentKind::Express);
                match compiled.lifetime.accepts(kind) {
                    None => {
                        checks.push(Check { what: format!("consent kind `{kind}` accepted by the rule"), held: false })
                    }
                    Some(limit) => {
                        let lapses = limit.map(|p| p.after(c.captured_at_unix));
                        let expiry = [c.expires_at_unix, lapses].into_iter().flatten().min();
                        let what = match (limit, expiry) {
                            (Some(p), Some(e)) => {
                                format!("`{kind}` consent counts for {p}: valid until {}", format_rfc3339(e))
                            }
                            (None, Some(e)) => format!("consent valid until {}", format_rfc3339(e)),
                            (_, None) => format!("`{kind}` consent does not lapse"),
                        };
                        checks.push(Check { what, held: expiry.is_none_or(|e| e > input.at_unix) });
                    }
                }
                if basis == Basis::DoubleOptIn {
                    checks.push(Check { what: "double opt-in confirmed".into(), held: c.double_opt_in_confirmed });
                }
            }
            if basis == Basis::SoftOptIn && granted.is_none() {
                checks.push(Check { what: "subject has not objected".into(), held: !objection });
                for condition in &rule.conditions {
                    checks
                        .push(Check { what: format!("soft opt-in: {condition}"), held: input.facts.holds(*condition) });
                }
            }
        }
    }
    checks
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} by {} at {} in {}", self.purpose, self.channel, self.at, self.pack)?;
        if self.country_fallback {
            writeln!(
                f,
                "country fallback: no pack covers the subject's subdivision; {}, the pack of its country {}, applies",
                self.pack, self.jurisdiction
            )?;
        }
        writeln!(f, "packs consulted: {}", self.chain.join(" → "))?;
        if self.rules.is_empty() {
            writeln!(f, "no rule covers this purpose and channel")?;
        }
        for rule in &self.rules {
            let verdict = match (&rule.effect, &rule.outcome) {
                (Some(e), Some(o)) => format!("{e} ({o})"),
                _ => "not in effect".to_owned(),
            };
            writeln!(f, "  rule {} [{}:{}]: {verdict}", rule.rule, rule.path, rule.line)?;
            writeln!(f, "    basis {}; cites {} [{}]", rule.basis, rule.cite, rule.confidence)?;
            if let Some(source) = &rule.source {
                writeln!(f, "    source: {source}")?;
            }
            if let Some(note) = &rule.note {
                writeln!(f, "    note: {note}")?;
            }
            for check in &rule.checks {
                writeln!(f, "    {} {}", if check.held { "✓" } else { "✗" }, check.what)?;
            }
        }
        writeln!(f, "decision: {} ({})", self.effect, self.explanation)?;
        writeln!(f, "reasons: {}", self.reasons.join(", "))?;
        for (id, text) in &self.obligations {
            writeln!(f, "obligation {id}: {text}")?;
        }
        if let Some(until) = &self.valid_until {
            writeln!(f, "valid until {until}")?;
        }
        Ok(())
    }
}

/// A decision reduced to what a reviewer compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionSummary {
    pub effect: String,
    pub outcome: String,
    pub reasons: Vec<String>,
    pub obligations: Vec<String>,
}

impl DecisionSummary {
    fn of(decision: &Decision, outcome: Outcome) -> Self {
        let mut obligations: Vec<String> = decision.obligations.iter().map(|o| o.id.clone()).collect();
        obligations.sort();
        Self {
            effect: decision.effect.as_str().to_owned(),
            outcome: outcome.as_str().to_owned(),
            reasons: decision.reasons.clone(),
            obligations,
        }
    }
}

impl fmt::Display for DecisionSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}; {})", self.effect, self.outcome, self.reasons.join(", "))?;
        if !self.obligations.is_empty() {
            write!(f, " [{}]", self.obligations.join(", "))?;
        }
        Ok(())
    }
}

/// One decision that differs between two versions of a pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub purpose: String,
    pub channel: String,
    /// The consent and facts of the input, e.g. `consent granted (implied_purchase, 25 months old)`.
    pub scenario: String,
    pub at: String,
    pub old: DecisionSummary,
    pub new: DecisionSummary,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} by {} at {} with {}: {} → {}",
            self.purpose, self.channel, self.at, self.scenario, self.old, self.new
        )
    }
}

/// Every decision that changes between `old` and `new` over the decision space: every purpose ×
/// channel, consent states and kinds at ages around common lifetimes, soft opt-in and register
/// facts, at `around` and at every boundary either version defines (rule and pack effective
/// dates, calling-window openings and closings in the week after `around`).
pub fn diff(old: &Pack, new: &Pack, around: i64) -> Vec<Change> {
    let instants = instants(old, new, around);
    let scenarios = scenarios();
    let mut changes = Vec::new();
    for &purpose in Purpose::ALL {
        for &channel in Channel::ALL {
            for &at in &instants {
                for (label, consent, facts) in &scenarios {
                    let consent = consent.map(|(state, age, kind, doi, expired)| ConsentFact {
                        state,
                        captured_at_unix: age.before(at),
                        expires_at_unix: expired.then_some(at - 1),
                        double_opt_in_confirmed: doi,
                        kind: Some(kind),
                        hours: Vec::new(),
                    });
                    let input = DecisionInput {
                        purpose,
                        channel,
                        at_unix: at,
                        consent,
                        subject_time_zone: None,
                        // A scenario's relationship dates are ages: seconds before the instant.
                        facts: Facts {
                            last_purchase_at: facts.last_purchase_at.map(|age| at - age),
                            last_inquiry_at: facts.last_inquiry_at.map(|age| at - age),
                            ..*facts
                        },
                    };
                    let (a, b) = (old.evaluate(&input), new.evaluate(&input));
                    let (a, b) = (
                        DecisionSummary::of(&old.decision(&a), a.outcome),
                        DecisionSummary::of(&new.decision(&b), b.outcome),
                    );
                    if a != b {
                        changes.push(Change {
                            purpose: purpose.as_str().to_owned(),
                            channel: channel.as_str().to_owned(),
                            scenario: label.clone(),
                            at: format_rfc3339(at),
                            old: a,
                            new: b,
                        });
                    }
                }
            }
        }
    }
    changes
}

/// How long before the decision a consent was captured.
#[derive(Debug, Clone, Copy)]
enum Age {
    Days(i64),
    Months(u32),
}

impl Age {
    fn before(self, at: i64) -> i64 {
        match self {
            Age::Days(d) => at - d * 86_400,
            Age::Months(m) => crate::time::sub_months(at, m),
        }
    }
}

type Scenario = (String, Option<(ConsentState, Age, ConsentKind, bool, bool)>, Facts);

fn scenarios() -> Vec<Scenario> {
    let soft = Facts { contact_from_sale: true, similar_products: true, opt_out_offered: true, ..Facts::default() };
    let listed = Facts { on_register: Some(true), ..Facts::default() };
    let days = |d: i64| Some(d * 86_400);
    let mut out: Vec<Scenario> = vec![
        (
            "no consent, soft opt-in facts, bought 2 months ago".into(),
            None,
            Facts { last_purchase_at: days(60), ..soft },
        ),
        (
            "no consent, soft opt-in facts, bought 14 months ago".into(),
            None,
            Facts { last_purchase_at: days(420), ..soft },
        ),
        ("no consent, bought 2 months ago".into(), None, Facts { last_purchase_at: days(60), ..Facts::default() }),
        ("no consent, on register, bought 2 months ago".into(), None, Facts { last_purchase_at: days(60), ..listed }),
        ("no consent, on register, bought 20 months ago".into(), None, Facts { last_purchase_at: days(600), ..listed }),
        ("no consent, on register, inquired 1 month ago".into(), None, Facts { last_inquiry_at: days(30), ..listed }),
        ("no consent, on register, inquired 4 months ago".into(), None, Facts { last_inquiry_at: days(120), ..listed }),
        ("no consent".into(), None, Facts::default()),
        ("no consent, soft opt-in facts".into(), None, soft),
        ("no consent, on register".into(), None, Facts { on_register: Some(true), ..Facts::default() }),
        ("no consent, screened not on register".into(), None, Facts { on_register: Some(false), ..Facts::default() }),
        ("consent denied".into(), Some((ConsentState::Denied, Age::Days(1), ConsentKind::Express, false, false)), soft),
        (
            "consent withdrawn".into(),
            Some((ConsentState::Withdrawn, Age::Days(1), ConsentKind::Express, false, false)),
            soft,
        ),
        (
            "consent granted, expired".into(),
            Some((ConsentState::Granted, Age::Days(30), ConsentKind::Express, true, true)),
            Facts::default(),
        ),
        (
            "consent granted (express, double opt-in)".into(),
            Some((ConsentState::Granted, Age::Days(1), ConsentKind::Express, true, false)),
            Facts::default(),
        ),
        (
            "consent granted (express), on register".into(),
            Some((ConsentState::Granted, Age::Days(1), ConsentKind::Express, false, false)),
            Facts { on_register: Some(true), ..Facts::default() },
        ),
    ];
    for recipient in Recipient::ALL {
        out.push((
            format!("no consent, {recipient} recipient"),
            None,
            Facts { recipient: Some(*recipient), ..Facts::default() },
        ));
        out.push((
            format!("consent granted (express), {recipient} recipient"),
            Some((ConsentState::Granted, Age::Days(1), ConsentKind::Express, false, false)),
            Facts { recipient: Some(*recipient), ..Facts::default() },
        ));
    }
    for age in [10u8, 12, 13, 14, 15, 16, 17] {
        for kind in [ConsentKind::Express, ConsentKind::Guardian] {
            out.push((
                format!("consent granted ({kind}), subject aged {age}"),
                Some((ConsentState::Granted, Age::Days(1), kind, false, false)),
                Facts { age: Some(age), ..Facts::default() },
            ));
        }
        out.push((format!("no consent, subject aged {age}"), None, Facts { age: Some(age), ..Facts::default() }));
    }
    for kind in ConsentKind::ALL {
        for months in [0u32, 5, 7, 17, 19, 23, 25, 35, 37] {
            let age = if months == 0 { Age::Days(1) } else { Age::Months(months) };
            let age_text = if months == 0 { "1 day".to_owned() } else { format!("{months} months") };
            out.push((
                format!("consent granted ({kind}, {age_text} old)"),
                Some((ConsentState::Granted, age, *kind, false, false)),
                Facts::default(),
            ));
        }
    }
    out
}

fn instants(old: &Pack, new: &Pack, around: i64) -> Vec<i64> {
    let week_end = around + 8 * 86_400;
    let mut out = vec![around];
    for pack in [old, new] {
        let (from, until) = pack.effective();
        for t in [from, until].into_iter().flatten() {
            out.extend([t - 1, t]);
        }
        for rule in pack.effective_rules() {
            for t in [rule.effective_from, rule.effective_until].into_iter().flatten() {
                out.extend([t - 1, t]);
            }
        }
        for window in pack.windows() {
            for zone in pack.time_zones() {
                let mut t = around;
                while let Some(open) = window.next_open(zone, t) {
                    if open > week_end {
                        break;
                    }
                    out.extend([open - 1, open]);
                    if let Some(close) = window.open_until(zone, open) {
                        out.extend([close - 1, close]);
                    }
                    t = open;
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}
