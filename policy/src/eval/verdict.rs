//! The decision function: a compiled pack and a [`DecisionInput`] give a [`Verdict`]. One table
//! lookup finds the cell's rules (at most one per pack of the `extends` chain, or dated
//! versions); each in effect is judged, and any deny beats every allow. No allocation.

use crate::model::decision::{DecisionInput, Effect, Outcome};
use crate::model::pack::Pack;
use crate::model::rule::Rule;
use crate::model::table::{CompiledRule, DecisionTable, cell_index};

use super::judge::{judge, min_opt};

/// The allocation-free core of a decision; [`Pack::decide`] turns it into a [`crate::Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'p> {
    pub effect: Effect,
    pub outcome: Outcome,
    /// The deciding rule (the first denying one of a deny); `None` for a default deny.
    pub rule: Option<&'p Rule>,
    pub valid_until_unix: Option<i64>,
    pub(crate) cell: usize,
    /// Position of the deciding rule in the table's entries.
    pub(crate) position: usize,
    /// Which of the cell's entries are reasons (bit k = k-th entry of the cell).
    pub(crate) mask: u32,
    /// Which entries denied only because of the calling window.
    pub(crate) window_mask: u32,
}

impl Verdict<'_> {
    /// The rules that are reasons for this verdict, in the pack's order (most specific first).
    pub fn reasons<'a>(&'a self, pack: &'a Pack) -> impl Iterator<Item = &'a Rule> + 'a {
        let (start, len) = pack.table.cell(self.cell);
        deciding_rules(pack, pack.table.entries.get(start..start + len).unwrap_or(&[]), self.mask)
    }
}

impl Pack {
    /// The decision without building its owned parts: no allocation, for hot loops and benchmarks.
    /// Every rule covering the cell and in effect is judged; any deny wins over every allow.
    pub fn evaluate(&self, input: &DecisionInput) -> Verdict<'_> {
        let cell = cell_index(input.purpose, input.channel);
        let table = &self.table;
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
            // A rule for other recipients does not apply; with the recipient unknown every rule
            // of the cell is weighed, so the contact must be allowed for each type.
            if !DecisionTable::weighed_for(table.recipients_at(position), input.facts.recipient) {
                continue;
            }
            let (outcome, until) = judge(rule, compiled, input, table.zones(), &table.windows);
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
}

/// The cell entries `mask` selects, as positions into the pack's effective rules.
fn deciding_indices(entries: &[u16], mask: u32) -> impl Iterator<Item = usize> + '_ {
    entries.iter().enumerate().filter(move |&(k, _)| k < 32 && mask & (1 << k) != 0).map(|(_, &i)| usize::from(i))
}

pub(crate) fn deciding_rules<'p>(pack: &'p Pack, entries: &'p [u16], mask: u32) -> impl Iterator<Item = &'p Rule> + 'p {
    deciding_indices(entries, mask).filter_map(move |i| pack.effective_rules.get(i))
}

pub(crate) fn deciding_compiled<'p>(
    pack: &'p Pack,
    entries: &'p [u16],
    mask: u32,
) -> impl Iterator<Item = &'p CompiledRule> + 'p {
    deciding_indices(entries, mask).filter_map(move |i| pack.table.compiled.get(i))
}
