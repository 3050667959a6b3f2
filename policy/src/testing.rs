//! Table-driven pack tests: `policy-packs/<cc>/tests/*.toml` run against the compiled pack.

use std::fmt;

use crate::diag::{Diagnostics, PackSource, Sink};
use crate::model::{Decision, Outcome, Pack, PackRef};
use crate::read::cases::{Case, read_cases};
use crate::time::format_rfc3339;

/// The result of one test case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    pub name: String,
    pub path: String,
    pub line: usize,
    pub passed: bool,
    /// What did not match, one entry per expectation.
    pub failures: Vec<String>,
    pub decision: Decision,
}

/// The results of a pack's test files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestReport {
    pub pack: PackRef,
    pub cases: Vec<CaseResult>,
    pub passed: usize,
    pub failed: usize,
    /// Rules no case exercised (as the deciding rule), in pack order.
    pub uncovered_rules: Vec<String>,
}

impl TestReport {
    /// At least one case ran and none failed.
    pub fn all_passed(&self) -> bool {
        self.failed == 0 && !self.cases.is_empty()
    }
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for case in &self.cases {
            if case.passed {
                writeln!(f, "ok     {}: {}", self.pack.id, case.name)?;
            } else {
                writeln!(
                    f,
                    "FAILED {}: {} ({}:{}): {}",
                    self.pack.id,
                    case.name,
                    case.path,
                    case.line,
                    case.failures.join("; ")
                )?;
            }
        }
        write!(f, "{}: {} passed, {} failed", self.pack, self.passed, self.failed)?;
        if !self.uncovered_rules.is_empty() {
            write!(f, "; uncovered rules: {}", self.uncovered_rules.join(", "))?;
        }
        Ok(())
    }
}

/// Runs one test file against `pack`. Pure. A malformed file is an `Err` with every problem found.
pub fn run_tests(pack: &Pack, source: &PackSource) -> Result<TestReport, Diagnostics> {
    run_test_files(pack, std::slice::from_ref(source))
}

/// Runs several test files against `pack`; coverage is computed over all of them together.
pub fn run_test_files(pack: &Pack, sources: &[PackSource]) -> Result<TestReport, Diagnostics> {
    let mut cases = Vec::new();
    let mut diagnostics = Vec::new();
    let mut failed = false;
    for source in sources {
        let mut sink = Sink::new(source);
        read_cases(pack, source, &mut sink, &mut cases);
        failed |= sink.has_errors();
        diagnostics.extend(sink.finish());
    }
    if failed {
        return Err(Diagnostics(diagnostics));
    }

    let mut covered = vec![false; pack.rules().len()];
    let mut results = Vec::with_capacity(cases.len());
    for case in cases {
        let verdict = pack.evaluate(&case.input);
        // A rule is covered when it is one of the reasons of some case's decision.
        for rule in verdict.reasons(pack) {
            if let Some(i) = pack.rules().iter().position(|r| r.id == rule.id)
                && let Some(flag) = covered.get_mut(i)
            {
                *flag = true;
            }
        }
        let decision = pack.decide(&case.input);
        let failures = check(&case, &decision, verdict.outcome);
        results.push(CaseResult {
            name: case.name,
            path: case.path,
            line: case.line,
            passed: failures.is_empty(),
            failures,
            decision,
        });
    }
    let passed = results.iter().filter(|r| r.passed).count();
    let uncovered_rules =
        pack.rules().iter().zip(&covered).filter(|(_, covered)| !**covered).map(|(rule, _)| rule.id.clone()).collect();
    Ok(TestReport { pack: pack.pack_ref(), failed: results.len() - passed, passed, cases: results, uncovered_rules })
}

fn check(case: &Case, decision: &Decision, outcome: Outcome) -> Vec<String> {
    let mut failures = Vec::new();
    if decision.effect != case.expect {
        failures.push(format!("expected {}, got {} ({})", case.expect, decision.effect, decision.explanation));
    }
    for reason in &case.reasons {
        if !decision.reasons.contains(reason) {
            failures.push(format!("expected reason `{reason}`, got [{}]", decision.reasons.join(", ")));
        }
    }
    if let Some(expected) = case.outcome
        && expected != outcome
    {
        failures.push(format!("expected outcome {expected}, got {outcome}"));
    }
    if let Some(expected) = &case.obligations {
        let mut expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        let mut got: Vec<&str> = decision.obligations.iter().map(|o| o.id.as_str()).collect();
        expected.sort_unstable();
        got.sort_unstable();
        if expected != got {
            failures.push(format!("expected obligations [{}], got [{}]", expected.join(", "), got.join(", ")));
        }
    }
    if let Some(expected) = case.valid_until
        && decision.valid_until_unix != Some(expected)
    {
        let got = decision.valid_until_unix.map_or_else(|| "none".to_owned(), format_rfc3339);
        failures.push(format!("expected valid_until {}, got {got}", format_rfc3339(expected)));
    }
    failures
}
