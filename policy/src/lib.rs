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
//! - **One rule per cell.** Two rules covering the same purpose × channel are a compile error, so a
//!   decision never depends on rule order.
//! - **Decisions are explainable.** Each names the pack `id@version` and the deciding rule id, and
//!   carries the rule's obligations when it allows.

mod diag;
mod eval;
mod model;
mod pack;
mod reader;
mod set;
mod testing;
pub mod time;

pub use diag::{Diagnostic, Diagnostics, PackSource, Severity};
pub use eval::{ConsentFact, Decision, DecisionInput, Effect, Outcome, Verdict};
pub use model::{Basis, Confidence, Localisation, Obligation, Rule};
pub use pack::{Pack, PackRef, SCHEMA_VERSION};
pub use set::{PackSet, ResidencyError};
pub use testing::{CaseResult, TestReport, run_test_files, run_tests};
