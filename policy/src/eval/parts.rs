//! A verdict as a decision: [`DecisionParts`] borrows every text from the pack (reasons,
//! obligations, the prebuilt explanation); only a deny by a calling window formats when contact
//! may happen (or, for a date without holiday data, which data is missing). [`Decision`] is its owned form, so the node's wire encoding and the owned
//! decision cannot drift apart.

use crate::model::decision::{CALLING_WINDOW, Decision, DecisionInput, Effect, Outcome};
use crate::model::pack::Pack;
use crate::model::rule::Obligation;
use crate::model::terms::PackRef;
use crate::time::format_rfc3339;
use crate::zone::Zone;

use super::verdict::{Verdict, deciding_compiled, deciding_rules};

impl Pack {
    /// Decides one purpose × channel for one subject at one instant. Pure and O(1).
    pub fn decide(&self, input: &DecisionInput) -> Decision {
        self.decision_parts(&self.evaluate(input), input.subject_time_zone.as_ref()).to_decision()
    }

    /// Builds the owned [`Decision`] for a verdict of this pack (window times in the pack's zone).
    pub fn decision(&self, verdict: &Verdict<'_>) -> Decision {
        self.decision_parts(verdict, None).to_decision()
    }

    /// The decision of a verdict of this pack borrowed from the pack: what [`Pack::decide`]
    /// returns, without allocating it. `zone` is the subject's, for the text of a calling window.
    pub fn decision_parts<'p>(&'p self, verdict: &Verdict<'p>, zone: Option<&Zone>) -> DecisionParts<'p> {
        let table = &self.table;
        let fixed = |reason: &'p str, explanation: Option<&'p String>| DecisionParts {
            effect: verdict.effect,
            pack: &self.meta.pack_ref,
            valid_until_unix: verdict.valid_until_unix,
            jurisdiction: &table.jurisdiction,
            country_fallback: false,
            explanation: explanation.map_or("", String::as_str),
            fallback_note: &table.fallback_note,
            window: None,
            reasons: Reasons::Fixed(reason),
        };
        if verdict.rule.is_none() {
            return match verdict.outcome {
                Outcome::NotInEffect => fixed(table.not_in_effect_reason(), table.default_explanations.get(1)),
                _ => fixed(table.default_reason(), table.default_explanations.first()),
            };
        }
        let (start, len) = table.cell(verdict.cell);
        let entries = table.entries.get(start..start + len).unwrap_or(&[]);
        // The holiday calendars of the deciding rules' windows, for what a deny says about them.
        let calendars = || {
            let mut seen: Vec<String> = Vec::new();
            for compiled in deciding_compiled(self, entries, verdict.mask) {
                if let Some(rule) = compiled.window.as_ref().and_then(|w| w.holidays.as_ref()) {
                    let text = format!("calendar `{}` covers {}", rule.calendar_id, rule.calendar.years_text());
                    if !seen.contains(&text) {
                        seen.push(text);
                    }
                }
            }
            seen.join(", ")
        };
        let window = if verdict.window_mask != 0 {
            let zone = zone.or_else(|| table.zones().first());
            let when = match (verdict.valid_until_unix, zone) {
                (Some(t), Some(z)) => {
                    format!("contact may happen from {} ({})", z.describe(t), format_rfc3339(t))
                }
                (Some(t), None) => format!("contact may happen from {}", format_rfc3339(t)),
                (None, _) => match calendars() {
                    held if held.is_empty() => "no calling window opens within the next week".to_owned(),
                    held => format!("no opening of the calling window is known before the holiday data ends ({held})"),
                },
            };
            Some(Box::new(WindowNote {
                explanation: format!("; {when}"),
                obligation: Some(Obligation {
                    id: CALLING_WINDOW.to_owned(),
                    text: format!("outside the calling window; {when}"),
                }),
            }))
        } else if verdict.outcome == Outcome::HolidaysNotCovered {
            // Fail closed: without the year's holiday data no decision inside the window is made.
            Some(Box::new(WindowNote {
                explanation: format!(
                    "; {}: refresh the pack set's holiday data (tools/holidays.py) to decide this date",
                    calendars()
                ),
                obligation: None,
            }))
        } else {
            None
        };
        DecisionParts {
            effect: verdict.effect,
            pack: &self.meta.pack_ref,
            valid_until_unix: verdict.valid_until_unix,
            jurisdiction: &table.jurisdiction,
            country_fallback: false,
            explanation: table.explanation(verdict.position, verdict.outcome),
            fallback_note: &table.fallback_note,
            window,
            reasons: Reasons::Rules { pack: self, entries, mask: verdict.mask },
        }
    }

    /// The decision for a subject who restricted processing (right to restriction): a deny
    /// whatever consent says, by the pack's `<pack-id>.restricted` reason.
    pub fn restricted_parts(&self) -> DecisionParts<'_> {
        let table = &self.table;
        DecisionParts {
            effect: Effect::Deny,
            pack: &self.meta.pack_ref,
            valid_until_unix: None,
            jurisdiction: &table.jurisdiction,
            country_fallback: false,
            explanation: RESTRICTED_EXPLANATION,
            fallback_note: &table.fallback_note,
            window: None,
            reasons: Reasons::Fixed(table.restricted_reason()),
        }
    }
}

const RESTRICTED_EXPLANATION: &str = "processing restricted at the subject's request (right to restriction)";

/// A decision borrowed from its pack: the content of a [`Decision`] without the allocations
/// (only a deny outside a calling window owns the text saying when contact may happen). The
/// node encodes and audits decisions from this; [`DecisionParts::to_decision`] is the owned form.
#[derive(Debug, Clone)]
pub struct DecisionParts<'p> {
    pub effect: Effect,
    pub pack: &'p PackRef,
    pub valid_until_unix: Option<i64>,
    /// The jurisdiction of the pack that decided (`US-CA`, `US`), as the pack prebuilt it.
    pub jurisdiction: &'p str,
    /// A country's pack answering for a subdivision without a pack of its own; set through
    /// [`DecisionParts::with_country_fallback`] (or [`crate::PackMatch`]), never guessed.
    pub country_fallback: bool,
    /// The prebuilt explanation; see [`DecisionParts::explanation`] for the whole text.
    explanation: &'p str,
    /// The pack's prebuilt note saying a country fallback happened, shown when it did.
    fallback_note: &'p str,
    window: Option<Box<WindowNote>>,
    reasons: Reasons<'p>,
}

/// What a deny by a calling window adds: outside the window, when contact may happen (and the
/// `outside-window` obligation saying so); for a date without holiday data, which data is missing.
#[derive(Debug, Clone)]
struct WindowNote {
    /// Appended to the explanation.
    explanation: String,
    obligation: Option<Obligation>,
}

#[derive(Debug, Clone, Copy)]
enum Reasons<'p> {
    /// A default deny, not in effect, restricted: one reason the pack prebuilt.
    Fixed(&'p str),
    /// The cell's rules (indices into the pack's effective rules) selected by `mask`.
    Rules { pack: &'p Pack, entries: &'p [u16], mask: u32 },
}

impl<'p> DecisionParts<'p> {
    /// The ids of the rules that decided, in the pack's order (most specific first).
    pub fn reasons(&self) -> impl Iterator<Item = &'p str> + use<'p> {
        let (fixed, rules) = match self.reasons {
            Reasons::Fixed(reason) => (Some(reason), None),
            Reasons::Rules { pack, entries, mask } => (None, Some(deciding_rules(pack, entries, mask))),
        };
        fixed.into_iter().chain(rules.into_iter().flatten().map(|rule| rule.id.as_str()))
    }

    /// The allowing rules' obligations (each id once, first wins), and on a deny outside a
    /// calling window the note of when contact may happen.
    pub fn obligations(&self) -> impl Iterator<Item = &Obligation> + '_ {
        let rules = match self.reasons {
            Reasons::Rules { pack, entries, mask } if self.effect == Effect::Allow => Some((pack, entries, mask)),
            _ => None,
        };
        let all = move || {
            rules.into_iter().flat_map(|(pack, entries, mask)| {
                deciding_compiled(pack, entries, mask).flat_map(|compiled| compiled.obligations.iter())
            })
        };
        all()
            .enumerate()
            .filter(move |(n, o)| !all().take(*n).any(|earlier| earlier.id == o.id))
            .map(|(_, o)| o)
            .chain(self.window.iter().filter_map(|w| w.obligation.as_ref()))
    }

    /// The explanation in its parts (concatenated, they are [`Decision::explanation`]): the
    /// prebuilt text, outside a calling window when contact may happen, and on a country
    /// fallback the pack's note saying so.
    pub fn explanation(&self) -> [&str; 3] {
        [
            self.explanation,
            self.window.as_ref().map_or("", |w| w.explanation.as_str()),
            if self.country_fallback { self.fallback_note } else { "" },
        ]
    }

    /// Marks the decision as a country pack's answer for a subdivision without a pack of its own
    /// (`fallback` from [`crate::PackSet::lookup`]). Borrowed text only: no allocation.
    pub fn with_country_fallback(mut self, fallback: bool) -> Self {
        self.country_fallback = fallback;
        self
    }

    pub fn to_decision(&self) -> Decision {
        Decision {
            effect: self.effect,
            reasons: self.reasons().map(str::to_owned).collect(),
            pack: self.pack.clone(),
            obligations: self.obligations().cloned().collect(),
            explanation: self.explanation().concat(),
            valid_until_unix: self.valid_until_unix,
            jurisdiction: self.jurisdiction.to_owned(),
            country_fallback: self.country_fallback,
        }
    }
}
