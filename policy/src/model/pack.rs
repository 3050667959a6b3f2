//! A compiled pack: what its file says ([`Metadata`]), what it inherits through `extends`, and
//! its decision table. Built by `compile`, read by `eval`, `explain` and the test runner; the
//! accessors here only read data, so this module needs nothing above the model.

use domicile_types::{Channel, Jurisdiction, Purpose, RegionId};

use super::residency::{Residency, ResidencyRefusal, Transfer, TransferConsentFact};
use super::rule::{Lifetime, Minors, Obligation, Register, Rule};
use super::table::DecisionTable;
use super::terms::{Localisation, PackKind, PackRef, Period};
use super::window::CallingWindow;
use crate::zone::Zone;

/// Data-subject rights and age thresholds; informative for callers, not used in decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rights {
    /// Time to answer an access (or similar) request, as the law states it. `None`: not stated
    /// (refused in a jurisdiction's pack: a missing fact is an error, never a default).
    pub deadline: Option<Deadline>,
    /// Extension allowed on notice.
    pub extension: Option<Period>,
    /// Age below which consent must come from (or with) a parent or guardian.
    pub age_of_digital_consent: Option<u8>,
    pub cite: Option<String>,
}

/// A rights deadline as a pack states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// Within this period of receipt.
    Within(Period),
    /// The law states no fixed period (e.g. "without delay", "a reasonable period"): declared, so
    /// a request carries no deadline and says why, rather than a default no law states.
    NoFixedPeriod,
}

impl Deadline {
    /// The instant a request received at `received` is due, if the law fixes one.
    pub fn due(self, received: i64) -> Option<i64> {
        match self {
            Deadline::Within(period) => Some(period.after(received)),
            Deadline::NoFixedPeriod => None,
        }
    }
}

impl std::fmt::Display for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Deadline::Within(period) => period.fmt(f),
            Deadline::NoFixedPeriod => f.write_str("no fixed period"),
        }
    }
}

/// What a pack file states about the pack itself: its `[pack]` table, and the file it came from.
/// A compiled pack keeps it as read; what the pack inherits sits beside it in [`Pack`].
#[derive(Debug, Clone)]
pub(crate) struct Metadata {
    pub(crate) pack_ref: PackRef,
    pub(crate) schema: i64,
    pub(crate) kind: PackKind,
    pub(crate) title: String,
    pub(crate) jurisdiction: Option<Jurisdiction>,
    pub(crate) owners: Vec<String>,
    pub(crate) references: Vec<String>,
    pub(crate) effective_from: Option<i64>,
    pub(crate) effective_until: Option<i64>,
    /// SHA-256 (hex) of the file's text.
    pub(crate) revision: String,
    pub(crate) path: String,
}

/// A validated, compiled pack for one jurisdiction (or a baseline), with what it inherits.
#[derive(Debug, Clone)]
pub struct Pack {
    pub(crate) meta: Metadata,
    /// This pack first, then the packs it extends, nearest first.
    pub(crate) chain: Vec<PackRef>,
    /// The nearest pack's `time_zones` that lists any.
    pub(crate) time_zones: Vec<Zone>,
    pub(crate) residency: Residency,
    pub(crate) rights: Rights,
    pub(crate) signals: super::signals::Signals,
    pub(crate) obligations: Vec<Obligation>,
    pub(crate) lifetimes: Vec<Lifetime>,
    pub(crate) windows: Vec<CallingWindow>,
    pub(crate) registers: Vec<Register>,
    /// `[minors]` definitions visible to this pack (its own shadow inherited ones of the same id).
    pub(crate) minors: Vec<Minors>,
    /// Rules this pack's file defines.
    pub(crate) rules: Vec<Rule>,
    /// Rules that decide for this pack: its own and those it inherits, most specific first.
    pub(crate) effective_rules: Vec<Rule>,
    pub(crate) table: DecisionTable,
}

impl Pack {
    pub fn pack_ref(&self) -> PackRef {
        self.meta.pack_ref.clone()
    }

    /// Whether a caller of `caller_region` (`None`: unknown) may capture personal data of this
    /// pack's subjects (`in_country_collection`).
    pub fn check_collection(&self, caller_region: Option<&RegionId>) -> Result<(), ResidencyRefusal> {
        self.residency.check_collection(&self.meta.pack_ref, caller_region)
    }

    /// Whether `region` (`None`: unknown, never) is one of this pack's home regions: where its
    /// subjects may be stored, and whose callers get their data without a transfer.
    pub fn is_home(&self, region: Option<&RegionId>) -> bool {
        self.residency.is_home(region)
    }

    /// Whether this pack's subjects' data may reach a caller of `caller_region` (`None`:
    /// unknown, never allowed) for `purpose`: `Ok(None)` for a caller of a home region,
    /// `Ok(Some(transfer))` for the transfer that allows it. `consent` is the subject's consent to
    /// transfers for `purpose` in force in its ledger, for transfers that need one; `at` the
    /// instant of the request.
    pub fn check_transfer(
        &self,
        caller_region: Option<&RegionId>,
        purpose: Purpose,
        consent: Option<&TransferConsentFact>,
        at: i64,
    ) -> Result<Option<&Transfer>, ResidencyRefusal> {
        self.residency.check_transfer(&self.meta.pack_ref, caller_region, purpose, consent, at)
    }

    pub fn id(&self) -> &str {
        &self.meta.pack_ref.id
    }

    pub fn version(&self) -> &str {
        &self.meta.pack_ref.version
    }

    pub fn schema(&self) -> i64 {
        self.meta.schema
    }

    pub fn kind(&self) -> PackKind {
        self.meta.kind
    }

    pub fn title(&self) -> &str {
        &self.meta.title
    }

    /// The jurisdiction the pack answers for; `None` for a baseline.
    pub fn jurisdiction(&self) -> Option<&Jurisdiction> {
        self.meta.jurisdiction.as_ref()
    }

    /// `id@version` of this pack and of every pack it extends, nearest first.
    pub fn chain(&self) -> &[PackRef] {
        &self.chain
    }

    pub fn owners(&self) -> &[String] {
        &self.meta.owners
    }

    /// Legal texts the pack as a whole rests on.
    pub fn references(&self) -> &[String] {
        &self.meta.references
    }

    /// The period the pack version is meant to be in force (`[from, until)`, unix seconds).
    pub fn effective(&self) -> (Option<i64>, Option<i64>) {
        (self.meta.effective_from, self.meta.effective_until)
    }

    /// The zones calling windows are checked in when the subject's zone is not known.
    pub fn time_zones(&self) -> &[Zone] {
        &self.time_zones
    }

    pub fn residency(&self) -> &Residency {
        &self.residency
    }

    /// Allowed storage regions for the pack's subjects, in order of preference.
    pub fn home_regions(&self) -> &[RegionId] {
        &self.residency.home_regions
    }

    pub fn localisation(&self) -> Localisation {
        self.residency.localisation
    }

    pub fn rights(&self) -> &Rights {
        &self.rights
    }

    /// What consent signals mean for this pack's subjects (`[signals]`, as inherited).
    pub fn signals(&self) -> &super::signals::Signals {
        &self.signals
    }

    /// Obligations rules may attach: this pack's and inherited ones.
    pub fn obligations(&self) -> &[Obligation] {
        &self.obligations
    }

    pub fn lifetimes(&self) -> &[Lifetime] {
        &self.lifetimes
    }

    pub fn windows(&self) -> &[CallingWindow] {
        &self.windows
    }

    /// The `[minors]` definitions the pack's rules may name, nearest first.
    pub fn minors(&self) -> &[Minors] {
        &self.minors
    }

    pub fn registers(&self) -> &[Register] {
        &self.registers
    }

    /// The rules this pack's own file defines (what its tests must cover).
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Every rule that can decide for this pack: its own and inherited ones.
    pub fn effective_rules(&self) -> &[Rule] {
        &self.effective_rules
    }

    /// A rule this pack can decide by, own or inherited.
    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.effective_rules.iter().find(|r| r.id == id)
    }

    /// The most specific rule covering `purpose` on `channel` (ignoring effective dates), if any.
    pub fn rule_for(&self, purpose: Purpose, channel: Channel) -> Option<&Rule> {
        self.rules_for(purpose, channel).next()
    }

    /// [`Pack::rules_for`], each with the recipient types it applies to in this cell (its own,
    /// less those a more specific pack's rule replaced), as decisions weigh it.
    pub(crate) fn rules_for_recipients(&self, purpose: Purpose, channel: Channel) -> impl Iterator<Item = (&Rule, u8)> {
        let (start, len) = self.table.cell(super::table::cell_index(purpose, channel));
        (start..start + len).filter_map(move |position| {
            let index = usize::from(*self.table.entries.get(position)?);
            Some((self.effective_rules.get(index)?, self.table.recipients_at(position)))
        })
    }

    /// Every rule covering `purpose` on `channel`, most specific first (ignoring effective dates).
    pub fn rules_for(&self, purpose: Purpose, channel: Channel) -> impl Iterator<Item = &Rule> {
        self.table.entries(purpose, channel).iter().filter_map(|&i| self.effective_rules.get(usize::from(i)))
    }

    /// The reason a default deny carries: `<pack-id>.default-deny`.
    pub fn default_reason(&self) -> &str {
        self.table.default_reason()
    }

    /// The reason a decision outside the pack's effective period carries: `<pack-id>.not-in-effect`.
    pub fn not_in_effect_reason(&self) -> &str {
        self.table.not_in_effect_reason()
    }

    /// SHA-256 (hex) of the pack text, so a decision can be replayed against the exact bytes.
    pub fn revision(&self) -> &str {
        &self.meta.revision
    }

    /// The path the pack was compiled from (diagnostics only).
    pub fn path(&self) -> &str {
        &self.meta.path
    }

    pub(crate) fn table(&self) -> &DecisionTable {
        &self.table
    }
}
