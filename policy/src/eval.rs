//! The evaluator: a precompiled purpose × channel table, so a decision is one array lookup and a
//! few comparisons per applicable rule (at most one per pack in the `extends` chain). Everything
//! a decision returns as text is built when the pack is compiled, except the next opening of a
//! calling window.

use std::fmt;

use domicile_types::{Channel, ConsentState, Jurisdiction, Purpose};

use crate::model::{Basis, CallingWindow, ConsentKind, Lifetime, Obligation, Register, Rule};
use crate::pack::{Pack, PackRef};
use crate::zone::Zone;

/// Number of purpose × channel cells in a compiled table.
pub(crate) const CELLS: usize = Purpose::COUNT * Channel::COUNT;

/// Obligation ids the engine attaches itself; packs may not define them.
pub(crate) const BUILTIN_OBLIGATIONS: &[&str] = &[CALLING_WINDOW];
/// Attached to a deny outside a calling window: when contact may happen next.
pub const CALLING_WINDOW: &str = "outside-window";

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
    /// The subject's time zone, for calling windows. `None`: the window must hold in every zone
    /// the pack lists, which fails safe for countries with several zones.
    pub subject_time_zone: Option<Zone>,
    /// Facts the caller asserts about this contact (soft opt-in conditions, register screening).
    pub facts: Facts,
}

impl DecisionInput {
    /// An input with no time zone and no asserted facts.
    pub fn new(purpose: Purpose, channel: Channel, at_unix: i64, consent: Option<ConsentFact>) -> Self {
        Self { purpose, channel, at_unix, consent, subject_time_zone: None, facts: Facts::default() }
    }
}

/// Facts about one contact that rules may depend on. The default asserts nothing, which never
/// turns a deny into an allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    /// Soft opt-in: the contact details were obtained from the subject in a sale.
    pub contact_from_sale: bool,
    /// Soft opt-in: the message is about the sender's own similar products or services.
    pub similar_products: bool,
    /// Soft opt-in: a clear, free opt-out was offered at collection and is in every message.
    pub opt_out_offered: bool,
    /// Result of screening the contact against the register the rule names: `Some(true)` = listed
    /// (deny), `Some(false)` = screened and not listed, `None` = not screened yet (the decision
    /// carries an obligation to screen).
    pub on_register: Option<bool>,
}

/// The current consent state for one purpose × channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsentFact {
    pub state: ConsentState,
    /// When the consent was given; for implied consent, the date of the purchase or inquiry.
    pub captured_at_unix: i64,
    pub expires_at_unix: Option<i64>,
    pub double_opt_in_confirmed: bool,
    /// What the consent rests on; `None` is read as express consent.
    pub kind: Option<ConsentKind>,
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
    Gap => "gap", "declared gap", Deny;
    ConsentGranted => "consent_granted", "consent granted", Allow;
    SoftOptIn => "soft_opt_in", "soft opt-in conditions hold", Allow;
    NoObjection => "no_objection", "no objection", Allow;
    NoConsent => "no_consent", "no consent", Deny;
    ConsentDenied => "consent_denied", "consent denied", Deny;
    ConsentWithdrawn => "consent_withdrawn", "consent withdrawn", Deny;
    ConsentExpired => "consent_expired", "consent expired", Deny;
    ConsentKindNotAccepted => "consent_kind_not_accepted", "consent kind not accepted", Deny;
    DoubleOptInUnconfirmed => "double_opt_in_unconfirmed", "double opt-in not confirmed", Deny;
    OnRegister => "on_register", "on a do-not-contact register", Deny;
    OutsideWindow => "outside_window", "outside the calling window", Deny;
    NotInEffect => "not_in_effect", "pack not in effect", Deny;
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
    /// The deciding rule ids (every denying rule of a deny, every allowing rule of an allow), or
    /// `<pack-id>.default-deny` / `<pack-id>.not-in-effect`.
    pub reasons: Vec<String>,
    pub pack: PackRef,
    /// The allowing rules' obligations; on a deny outside a calling window, when contact may happen.
    pub obligations: Vec<Obligation>,
    pub explanation: String,
    /// When the decision stops holding: an allow's consent expiry or window close, or when a deny
    /// outside a calling window turns into a window; `None` when it does not change by itself.
    pub valid_until_unix: Option<i64>,
    /// The jurisdiction of the pack that decided (`US-CA`, `US`).
    pub jurisdiction: String,
    /// The subject's jurisdiction is a subdivision without a pack of its own (`US-TX`) and its
    /// country's pack decided ([`crate::PackSet::lookup`]); the explanation says so too.
    pub country_fallback: bool,
}

/// The allocation-free core of a decision; [`Pack::decide`] turns it into a [`Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'p> {
    pub effect: Effect,
    pub outcome: Outcome,
    /// The deciding rule (the first denying one of a deny); `None` for a default deny.
    pub rule: Option<&'p Rule>,
    pub valid_until_unix: Option<i64>,
    cell: usize,
    /// Position of the deciding rule in the table's entries.
    position: usize,
    /// Which of the cell's entries are reasons (bit k = k-th entry of the cell).
    mask: u32,
    /// Which entries denied only because of the calling window.
    window_mask: u32,
}

impl Verdict<'_> {
    /// The rules that are reasons for this verdict, in the pack's order (most specific first).
    pub fn reasons<'a>(&'a self, pack: &'a Pack) -> impl Iterator<Item = &'a Rule> + 'a {
        let (start, len) = pack.table().cell(self.cell);
        deciding_rules(pack, pack.table().entries.get(start..start + len).unwrap_or(&[]), self.mask)
    }
}

/// A rule with its references resolved.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    pub(crate) obligations: Vec<Obligation>,
    pub(crate) lifetime: Lifetime,
    pub(crate) window: Option<CallingWindow>,
    pub(crate) register: Option<Register>,
}

/// At most this many rules (one per pack of a chain, or dated versions) may share a cell.
pub(crate) const MAX_RULES_PER_CELL: usize = 32;

/// The compiled form of a pack's rules.
#[derive(Debug, Clone)]
pub(crate) struct DecisionTable {
    /// Per purpose × channel cell: the slice of `entries` that applies.
    cells: [(u16, u8); CELLS],
    /// Indices into the pack's effective rules, per cell, most specific first.
    pub(crate) entries: Box<[u16]>,
    /// Parallel to the pack's effective rules.
    pub(crate) compiled: Box<[CompiledRule]>,
    /// `explanations[position * Outcome::COUNT + outcome]`, prebuilt so deciding only clones.
    explanations: Box<[String]>,
    zones: Vec<Zone>,
    effective: (Option<i64>, Option<i64>),
    default_reason: String,
    not_in_effect_reason: String,
    restricted_reason: String,
    default_explanations: Box<[String]>,
    /// The pack's jurisdiction as decisions name it (`US`; empty for a baseline).
    jurisdiction: String,
    /// Appended to the explanation when a country pack answers for a subdivision without a pack
    /// of its own (empty for packs that are not a country's).
    fallback_note: String,
}

impl DecisionTable {
    /// Builds the table from per-cell rule lists (indices into `rules`). Validation rejected
    /// overlaps and dangling references, so this cannot fail; lists longer than the cap are cut.
    pub(crate) fn compile(
        pack: &PackRef,
        jurisdiction: Option<&Jurisdiction>,
        rules: &[Rule],
        cell_rules: &[Vec<u16>],
        compiled: Vec<CompiledRule>,
        zones: Vec<Zone>,
        effective: (Option<i64>, Option<i64>),
    ) -> Self {
        let mut cells = [(0u16, 0u8); CELLS];
        let mut entries = Vec::new();
        let mut explanations = Vec::new();
        for &purpose in Purpose::ALL {
            for &channel in Channel::ALL {
                let cell = cell_index(purpose, channel);
                let list = cell_rules.get(cell).map_or(&[][..], |l| &l[..l.len().min(MAX_RULES_PER_CELL)]);
                if let (Some(slot), Ok(start), Ok(len)) =
                    (cells.get_mut(cell), u16::try_from(entries.len()), u8::try_from(list.len()))
                {
                    *slot = (start, len);
                }
                for &i in list {
                    entries.push(i);
                    let rule = rules.get(usize::from(i));
                    for &outcome in Outcome::ALL {
                        explanations.push(explain(pack, purpose, channel, rule, outcome));
                    }
                }
            }
        }
        let default_explanations = [Outcome::DefaultDeny, Outcome::NotInEffect]
            .iter()
            .map(|&o| match o {
                Outcome::NotInEffect => format!("{}: {pack} is not in effect at the decision time", o.phrase()),
                _ => format!("{}: no rule of {pack} decides this purpose and channel; denied by default", o.phrase()),
            })
            .collect();
        Self {
            cells,
            entries: entries.into_boxed_slice(),
            compiled: compiled.into_boxed_slice(),
            explanations: explanations.into_boxed_slice(),
            zones,
            effective,
            default_reason: format!("{}.default-deny", pack.id),
            not_in_effect_reason: format!("{}.not-in-effect", pack.id),
            restricted_reason: format!("{}.restricted", pack.id),
            default_explanations,
            jurisdiction: jurisdiction.map(ToString::to_string).unwrap_or_default(),
            fallback_note: match jurisdiction {
                Some(j) if j.subdivision().is_none() => format!(
                    "; country fallback: no pack covers the subject's subdivision, so {pack}, the pack of its country {j}, applied"
                ),
                _ => String::new(),
            },
        }
    }

    pub(crate) fn default_reason(&self) -> &str {
        &self.default_reason
    }

    pub(crate) fn not_in_effect_reason(&self) -> &str {
        &self.not_in_effect_reason
    }

    pub(crate) fn restricted_reason(&self) -> &str {
        &self.restricted_reason
    }

    pub(crate) fn cell(&self, cell: usize) -> (usize, usize) {
        self.cells.get(cell).map_or((0, 0), |&(s, l)| (usize::from(s), usize::from(l)))
    }

    pub(crate) fn entries(&self, purpose: Purpose, channel: Channel) -> &[u16] {
        let (start, len) = self.cell(cell_index(purpose, channel));
        self.entries.get(start..start + len).unwrap_or(&[])
    }

    pub(crate) fn zones(&self) -> &[Zone] {
        &self.zones
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

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
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
            None => (Outcome::NoObjection, None),
        },
        Basis::OptIn | Basis::DoubleOptIn => judge_consent(rule.basis, &compiled.lifetime, at, input.consent.as_ref()),
        Basis::SoftOptIn => match judge_consent(rule.basis, &compiled.lifetime, at, input.consent.as_ref()) {
            // An objection ends a soft opt-in too.
            granted @ (Outcome::ConsentGranted, _) => granted,
            objection @ (Outcome::ConsentDenied | Outcome::ConsentWithdrawn, _) => objection,
            _ if rule.conditions.iter().all(|c| c.holds(&input.facts)) => (Outcome::SoftOptIn, None),
            other => other,
        },
    };
    if outcome.effect() == Effect::Deny {
        return (outcome, valid_until);
    }
    let valid_until = min_opt(valid_until, rule.effective_until);
    if let Some(register) = &compiled.register
        && input.facts.on_register == Some(true)
        && !(register.exempt_with_consent && outcome == Outcome::ConsentGranted)
    {
        return (Outcome::OnRegister, None);
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

impl Pack {
    /// The decision without building its owned parts: no allocation, for hot loops and benchmarks.
    /// Every rule covering the cell and in effect is judged; any deny wins over every allow.
    pub fn evaluate(&self, input: &DecisionInput) -> Verdict<'_> {
        let cell = cell_index(input.purpose, input.channel);
        let table = self.table();
        let default = |outcome| Verdict {
            effect: Effect::Deny,
            outcome,
            rule: None,
            valid_until_unix: None,
            cell,
            position: usize::MAX,
            mask: 0,
            window_mask: 0,
        };
        let (from, until) = table.effective;
        if from.is_some_and(|f| input.at_unix < f) || until.is_some_and(|u| input.at_unix >= u) {
            return default(Outcome::NotInEffect);
        }
        let (start, len) = table.cell(cell);
        let mut allow: Option<(usize, Outcome)> = None;
        let mut deny: Option<(usize, Outcome)> = None;
        let (mut allow_mask, mut deny_mask, mut window_mask) = (0u32, 0u32, 0u32);
        let mut allow_until: Option<i64> = None;
        let mut reopen: Option<i64> = None;
        for k in 0..len {
            let position = start + k;
            let Some(index) = table.entries.get(position).map(|&i| usize::from(i)) else { break };
            let (Some(rule), Some(compiled)) = (self.effective_rules.get(index), table.compiled.get(index)) else {
                break;
            };
            if !rule.in_effect(input.at_unix) {
                continue;
            }
            let (outcome, until) = judge(rule, compiled, input, table.zones());
            if outcome.effect() == Effect::Allow {
                allow_mask |= 1 << k;
                allow_until = min_opt(allow_until, until);
                allow.get_or_insert((position, outcome));
            } else {
                deny_mask |= 1 << k;
                if outcome == Outcome::OutsideWindow {
                    window_mask |= 1 << k;
                    reopen = reopen.max(until);
                }
                deny.get_or_insert((position, outcome));
            }
        }
        let rule_at =
            |position: usize| table.entries.get(position).and_then(|&i| self.effective_rules.get(usize::from(i)));
        match (deny, allow) {
            (Some((position, outcome)), _) => Verdict {
                effect: Effect::Deny,
                outcome,
                rule: rule_at(position),
                // A deny lifts by itself only when every denying rule waits for a window.
                valid_until_unix: if window_mask == deny_mask { reopen } else { None },
                cell,
                position,
                mask: deny_mask,
                window_mask,
            },
            (None, Some((position, outcome))) => Verdict {
                effect: Effect::Allow,
                outcome,
                rule: rule_at(position),
                valid_until_unix: allow_until,
                cell,
                position,
                mask: allow_mask,
                window_mask: 0,
            },
            (None, None) => default(Outcome::DefaultDeny),
        }
    }

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
        let table = self.table();
        let fixed = |reason: &'p str, explanation: Option<&'p String>| DecisionParts {
            effect: verdict.effect,
            pack: &self.pack_ref,
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
        let window = (verdict.window_mask != 0).then(|| {
            let zone = zone.or_else(|| table.zones().first());
            let when = match (verdict.valid_until_unix, zone) {
                (Some(t), Some(z)) => {
                    format!("contact may happen from {} ({})", z.describe(t), crate::time::format_rfc3339(t))
                }
                (Some(t), None) => format!("contact may happen from {}", crate::time::format_rfc3339(t)),
                (None, _) => "no calling window opens within the next week".to_owned(),
            };
            Box::new(WindowNote {
                explanation: format!("; {when}"),
                obligation: Obligation {
                    id: CALLING_WINDOW.to_owned(),
                    text: format!("outside the calling window; {when}"),
                },
            })
        });
        let (start, len) = table.cell(verdict.cell);
        DecisionParts {
            effect: verdict.effect,
            pack: &self.pack_ref,
            valid_until_unix: verdict.valid_until_unix,
            jurisdiction: &table.jurisdiction,
            country_fallback: false,
            explanation: table
                .explanations
                .get(verdict.position * Outcome::COUNT + verdict.outcome as usize)
                .map_or("", String::as_str),
            fallback_note: &table.fallback_note,
            window,
            reasons: Reasons::Rules {
                pack: self,
                entries: table.entries.get(start..start + len).unwrap_or(&[]),
                mask: verdict.mask,
            },
        }
    }

    /// The decision for a subject who restricted processing (right to restriction): a deny
    /// whatever consent says, by the pack's `<pack-id>.restricted` reason.
    pub fn restricted_parts(&self) -> DecisionParts<'_> {
        let table = self.table();
        DecisionParts {
            effect: Effect::Deny,
            pack: &self.pack_ref,
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

#[derive(Debug, Clone)]
struct WindowNote {
    /// Appended to the explanation.
    explanation: String,
    obligation: Obligation,
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
            .chain(self.window.iter().map(|w| &w.obligation))
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

/// The cell entries `mask` selects, as positions into the pack's effective rules.
fn deciding_indices(entries: &[u16], mask: u32) -> impl Iterator<Item = usize> + '_ {
    entries.iter().enumerate().filter(move |&(k, _)| k < 32 && mask & (1 << k) != 0).map(|(_, &i)| usize::from(i))
}

fn deciding_rules<'p>(pack: &'p Pack, entries: &'p [u16], mask: u32) -> impl Iterator<Item = &'p Rule> + 'p {
    deciding_indices(entries, mask).filter_map(move |i| pack.effective_rules.get(i))
}

fn deciding_compiled<'p>(pack: &'p Pack, entries: &'p [u16], mask: u32) -> impl Iterator<Item = &'p CompiledRule> + 'p {
    deciding_indices(entries, mask).filter_map(move |i| pack.table().compiled.get(i))
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
        DecisionInput::new(purpose, channel, T0, consent)
    }

    fn fact(state: ConsentState) -> ConsentFact {
        ConsentFact {
            state,
            captured_at_unix: T0 - 86_400,
            expires_at_unix: None,
            double_opt_in_confirmed: false,
            kind: None,
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
