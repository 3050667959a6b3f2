//! Building the decision table of one linked pack: each cell's rule list cut to the cap, and
//! every text a decision can carry (explanations per rule and outcome, reasons, the country
//! fallback note) formatted once here, so the hot path only borrows.

use domicile_types::{Channel, Jurisdiction, Purpose};

use crate::model::decision::{Effect, Outcome};
use crate::model::rule::Rule;
use crate::model::table::{CELLS, CompiledRule, DecisionTable, MAX_RULES_PER_CELL, cell_index};
use crate::model::terms::PackRef;
use crate::model::window::CallingWindow;
use crate::zone::Zone;

/// What a pack's decisions need of its local time: its zones, every calling window of its chain
/// (for consent hours), and its effective period `[from, until)`.
pub(crate) struct PackTime {
    pub(crate) zones: Vec<Zone>,
    pub(crate) windows: Vec<CallingWindow>,
    pub(crate) effective: (Option<i64>, Option<i64>),
}

/// Builds the table from per-cell rule lists (indices into `rules`, each with the recipient
/// types it applies to there). Validation rejected overlaps and dangling references, so this
/// cannot fail; lists longer than the cap are cut.
pub(crate) fn build(
    pack: &PackRef,
    jurisdiction: Option<&Jurisdiction>,
    rules: &[Rule],
    cell_rules: &[Vec<(u16, u8)>],
    compiled: Vec<CompiledRule>,
    time: PackTime,
) -> DecisionTable {
    let PackTime { zones, windows, effective } = time;
    let mut cells = [(0u16, 0u8); CELLS];
    let mut entries = Vec::new();
    let mut entry_recipients = Vec::new();
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
            for &(i, recipients) in list {
                entries.push(i);
                entry_recipients.push(recipients);
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
    DecisionTable {
        cells,
        entries: entries.into_boxed_slice(),
        entry_recipients: entry_recipients.into_boxed_slice(),
        compiled: compiled.into_boxed_slice(),
        explanations: explanations.into_boxed_slice(),
        zones,
        windows,
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

/// The explanation of `outcome` decided by `rule` (`None`: no rule) for one cell.
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
