//! The evaluator: a precompiled purpose × channel table, so a decision is one array lookup and a
//! few comparisons per applicable rule (at most one per pack in the `extends` chain). Everything
//! a decision returns as text is built when the pack is compiled, except the next opening of a
//! calling window.
//!
//! `judge` weighs one rule, `verdict` holds the decision function ([`crate::Pack::evaluate`]) and
//! `parts` turns a verdict into the decision callers see ([`crate::Pack::decision_parts`],
//! [`crate::Pack::decide`]). Reads the compiled model only; building it is `compile`'s job.

mod judge;
mod parts;
mod verdict;

pub(crate) use judge::judge;
pub use parts::DecisionParts;
pub use verdict::Verdict;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_inputs;
