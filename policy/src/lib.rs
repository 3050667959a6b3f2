//! Domicile's policy packs: the legal text of one jurisdiction as data, and the engine that
//! reads, validates, compiles, evaluates and tests it.
//!
//! Pure: no IO, no clock, no async. Callers pass file contents in ([`PackSource`]) and time in
//! (unix seconds), so the same library serves the node, the gateway and the CLI, and every
//! decision can be replayed.
//!
//! Semantics, fixed for every pack:
//! - **Default deny.** A purpose × channel no rule covers is denied with reason
//!   `<pack-id>.default-deny`; a jurisdiction without a pack has no decision at all and callers deny.
//! - **One rule per cell and pack.** Two rules of one pack covering the same purpose × channel at
//!   the same time are a compile error, so a decision never depends on rule order.
//! - **Deny beats allow.** Where a pack extends another (baseline → country → subdivision
//!   overlay), every rule of the chain covering the cell is weighed and any deny wins; a rule can
//!   only override an inherited one by naming it in `replaces`.
//! - **Decisions are explainable.** Each names the pack `id@version` and the deciding rule id, and
//!   carries the rule's obligations when it allows.
//!
//! Layout, each module importing only the ones before it: `diag`, `time`, `zone` (leaves);
//! `model` (the compiled model: rules, residency, decision input and output, the purpose ×
//! channel table, `Pack`); `read` (one module per table of a pack file, and test files);
//! `compile` (checks across files, `extends` linking, table building); `eval` (the decision
//! function over a compiled pack, never `compile`); `explain`, `testing`; `set` (`PackSet`).

mod compile;
mod diag;
mod eval;
mod explain;
mod model;
mod profile;
mod read;
mod set;
pub mod signal_meaning;
pub mod signing;
mod testing;
pub mod time;
mod zone;

pub use diag::{Diagnostic, Diagnostics, HOLIDAYS_FILE, PackSource, Severity};
pub use eval::{DecisionParts, Verdict};
pub use explain::{Change, Check, DecisionSummary, Trace, TraceRule, diff};
pub use model::ConsentMissing;
pub use model::{
    Basis, CALLING_WINDOW, CallingWindow, Confidence, ConsentFact, ConsentKind, Deadline, Decision, DecisionInput,
    Effect, Facts, GpcRule, Lifetime, Localisation, MinorBand, Minors, Obligation, OptOutRule, Outcome, Pack, PackKind,
    PackRef, Period, Recipient, Register, Residency, ResidencyRefusal, Rights, Rule, Signals, SoftCondition,
    TcfMapping, TcfSource, Transfer, TransferCheck, TransferConsent, TransferConsentFact, UnknownAge,
};
pub use model::{HolidayCalendar, HolidayRule};
pub use profile::{ResidencyProfile, RightsProfile, TransferView};
pub use read::{MIN_SCHEMA_VERSION, SCHEMA_VERSION};
pub use set::{PackMatch, PackSet, ResidencyError};
pub use testing::{CaseResult, CheckResult, TestReport, run_test_files, run_tests};
pub use zone::Zone;
