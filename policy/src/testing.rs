//! Table-driven pack tests: `policy-packs/<cc>/tests/*.toml` run against the compiled pack.

use std::fmt;

use crate::diag::{Diagnostics, PackSource, Sink};
use crate::model::{Decision, Outcome, Pack, PackRef, ResidencyRefusal};
use crate::read::cases::{Case, Check, CheckKind, read_cases};
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

/// The result of a rights, transfer or collection check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub name: String,
    pub path: String,
    pub line: usize,
    pub passed: bool,
    pub failures: Vec<String>,
    /// What the pack answered, in words (e.g. `due 2027-02-28T10:00:00Z (1 month; cite …)`).
    pub answer: String,
}

/// The results of a pack's test files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestReport {
    pub pack: PackRef,
    pub cases: Vec<CaseResult>,
    /// `[[rights]]`, `[[transfer]]` and `[[collection]]` entries.
    pub checks: Vec<CheckResult>,
    pub passed: usize,
    pub failed: usize,
    /// Rules no case exercised (as the deciding rule), in pack order.
    pub uncovered_rules: Vec<String>,
}

impl TestReport {
    /// At least one case ran and none failed.
    pub fn all_passed(&self) -> bool {
        self.failed == 0 && !(self.cases.is_empty() && self.checks.is_empty())
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
        for check in &self.checks {
            if check.passed {
                writeln!(f, "ok     {}: {} ({})", self.pack.id, check.name, check.answer)?;
            } else {
                writeln!(
                    f,
                    "FAILED {}: {} ({}:{}): {}",
                    self.pack.id,
                    check.name,
                    check.path,
                    check.line,
                    check.failures.join("; ")
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
    let mut checks = Vec::new();
    let mut diagnostics = Vec::new();
    let mut failed = false;
    for source in sources {
        let mut sink = Sink::new(source);
        read_cases(pack, source, &mut sink, &mut cases, &mut checks);
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
    let checks: Vec<CheckResult> = checks.into_iter().map(|c| run_check(pack, c)).collect();
    let passed = results.iter().filter(|r| r.passed).count() + checks.iter().filter(|c| c.passed).count();
    let failed = results.len() + checks.len() - passed;
    let uncovered_rules =
        pack.rules().iter().zip(&covered).filter(|(_, covered)| !**covered).map(|(rule, _)| rule.id.clone()).collect();
    Ok(TestReport { pack: pack.pack_ref(), failed, passed, cases: results, checks, uncovered_rules })
}

fn run_check(pack: &Pack, check: Check) -> CheckResult {
    let when = |t: Option<i64>| t.map_or_else(|| "none".to_owned(), format_rfc3339);
    let mut failures = Vec::new();
    let answer = match check.kind {
        CheckKind::Rights { received, due, extended_to } => {
            let rights = pack.rights();
            let got_due = rights.deadline.and_then(|d| d.due(received));
            let got_extended = got_due.and_then(|due| rights.extension.map(|e| e.after(due)));
            if got_due != due {
                failures.push(format!("expected due {}, got {}", when(due), when(got_due)));
            }
            if let Some(expected) = extended_to
                && expected != got_extended
            {
                failures.push(format!("expected extended to {}, got {}", when(expected), when(got_extended)));
            }
            let stated = rights.deadline.map_or_else(|| "not stated".to_owned(), |d| d.to_string());
            let cite = rights.cite.as_deref().unwrap_or("no citation");
            format!("due {} ({stated}; {cite})", when(got_due))
        }
        CheckKind::Transfer { caller_region, purpose, allow, transfer, consent, at } => {
            let got = pack.check_transfer(caller_region.as_ref(), purpose, consent.as_ref(), at);
            let (got_allow, got_transfer, answer) = match &got {
                Ok(None) => (true, None, "allowed: a home region".to_owned()),
                Ok(Some(t)) => (true, Some(t.id.clone()), format!("allowed by transfer `{}` ({})", t.id, t.cite)),
                Err(refusal) => (false, None, refusal_text(refusal)),
            };
            if got_allow != allow {
                failures.push(format!("expected {}, got {answer}", if allow { "allow" } else { "deny" }));
            } else if transfer.is_some() && got_transfer != transfer {
                let expected = transfer.unwrap_or_default();
                failures.push(format!("expected transfer `{expected}`, got {answer}"));
            }
            answer
        }
        CheckKind::Collection { caller_region, allow } => {
            let got = pack.check_collection(caller_region.as_ref());
            let answer = match &got {
                Ok(()) => "allowed".to_owned(),
                Err(refusal) => refusal_text(refusal),
            };
            if got.is_ok() != allow {
                failures.push(format!("expected {}, got {answer}", if allow { "allow" } else { "deny" }));
            }
            answer
        }
    };
    CheckResult { name: check.name, path: check.path, line: check.line, passed: failures.is_empty(), failures, answer }
}

fn refusal_text(refusal: &ResidencyRefusal) -> String {
    format!("refused: {refusal}")
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
