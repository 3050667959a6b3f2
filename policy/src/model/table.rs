//! The decision table: a pack's rules compiled into one slot per purpose × channel cell, each a
//! slice of rule indices (most specific first) with everything a decision names prebuilt. The
//! layout lives here, below `compile` (which fills it) and `eval` (which reads it), so neither
//! needs the other.

use domicile_types::{Channel, Purpose};

use super::decision::Outcome;
use super::rule::{Lifetime, Minors, Obligation, Register};
use super::window::CallingWindow;
use crate::zone::Zone;

/// Number of purpose × channel cells in a compiled table.
pub(crate) const CELLS: usize = Purpose::COUNT * Channel::COUNT;

/// A cell's index in [`DecisionTable::cells`].
#[inline]
pub(crate) fn cell_index(purpose: Purpose, channel: Channel) -> usize {
    purpose.index() * Channel::COUNT + channel.index()
}

/// A rule with its references resolved (obligations, lifetime, window and register looked up
/// from the rule's own pack outwards); parallel to the pack's effective rules.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    pub(crate) obligations: Vec<Obligation>,
    pub(crate) lifetime: Lifetime,
    pub(crate) window: Option<CallingWindow>,
    pub(crate) register: Option<Register>,
    pub(crate) minors: Option<Minors>,
    /// The window named by the rule's `separate_consent_hours`.
    pub(crate) separate_hours: Option<CallingWindow>,
}

/// At most this many rules (one per pack of a chain, or dated versions) may share a cell.
pub(crate) const MAX_RULES_PER_CELL: usize = 32;

/// The compiled form of a pack's rules: everything a decision reads, laid out by `compile` so
/// that deciding is one cell lookup and, for text, a borrow.
#[derive(Debug, Clone)]
pub(crate) struct DecisionTable {
    /// Per purpose × channel cell: the slice of `entries` that applies.
    pub(crate) cells: [(u16, u8); CELLS],
    /// Indices into the pack's effective rules, per cell, most specific first.
    pub(crate) entries: Box<[u16]>,
    /// Parallel to `entries`: the recipient types ([`super::terms::Recipient::bit`]) the entry
    /// applies to in its cell (its rule's, less those a more specific pack's rule replaced).
    pub(crate) entry_recipients: Box<[u8]>,
    /// Parallel to the pack's effective rules.
    pub(crate) compiled: Box<[CompiledRule]>,
    /// `explanations[position * Outcome::COUNT + outcome]` (see [`DecisionTable::explanation`]),
    /// prebuilt so deciding only borrows.
    pub(crate) explanations: Box<[String]>,
    /// The pack's time zones, for calling windows when the subject's is not known.
    pub(crate) zones: Vec<Zone>,
    /// Every calling window of the pack's chain by id (nearest definition first), which a consent
    /// may be limited to.
    pub(crate) windows: Vec<CallingWindow>,
    /// The pack's effective period, `[from, until)`.
    pub(crate) effective: (Option<i64>, Option<i64>),
    pub(crate) default_reason: String,
    pub(crate) not_in_effect_reason: String,
    pub(crate) restricted_reason: String,
    /// The explanations of a default deny (`[0]`) and of a decision outside the pack's effective
    /// period (`[1]`).
    pub(crate) default_explanations: Box<[String]>,
    /// The pack's jurisdiction as decisions name it (`US`; empty for a baseline).
    pub(crate) jurisdiction: String,
    /// Appended to the explanation when a country pack answers for a subdivision without a pack
    /// of its own (empty for packs that are not a country's).
    pub(crate) fallback_note: String,
}

impl DecisionTable {
    pub(crate) fn default_reason(&self) -> &str {
        &self.default_reason
    }

    pub(crate) fn not_in_effect_reason(&self) -> &str {
        &self.not_in_effect_reason
    }

    pub(crate) fn restricted_reason(&self) -> &str {
        &self.restricted_reason
    }

    /// `(start, len)` of a cell's slice of `entries`.
    #[inline]
    pub(crate) fn cell(&self, cell: usize) -> (usize, usize) {
        self.cells.get(cell).map_or((0, 0), |&(s, l)| (usize::from(s), usize::from(l)))
    }

    /// The recipient types the cell entry at `position` applies to ([`Self::entry_recipients`]).
    pub(crate) fn recipients_at(&self, position: usize) -> u8 {
        self.entry_recipients.get(position).copied().unwrap_or(0)
    }

    /// Whether an entry of recipient types `mask` is weighed for `recipient`: with the type
    /// unknown every entry is, so the contact must be allowed for each type.
    pub(crate) fn weighed_for(mask: u8, recipient: Option<super::terms::Recipient>) -> bool {
        recipient.is_none_or(|r| mask & r.bit() != 0)
    }

    pub(crate) fn entries(&self, purpose: Purpose, channel: Channel) -> &[u16] {
        let (start, len) = self.cell(cell_index(purpose, channel));
        self.entries.get(start..start + len).unwrap_or(&[])
    }

    pub(crate) fn zones(&self) -> &[Zone] {
        &self.zones
    }

    /// The prebuilt explanation of `outcome` decided by the rule at `position` in `entries`.
    pub(crate) fn explanation(&self, position: usize, outcome: Outcome) -> &str {
        self.explanations.get(position * Outcome::COUNT + outcome as usize).map_or("", String::as_str)
    }
}
