//! Fuzz targets of the pack language: pack TOML through the whole chain from text to a compiled
//! set and decisions made with it, and pack test files (tests as data). Corpora in
//! `tests/fuzz-corpus/`; the engine and how to run longer are in `tools/fuzz/engine.rs` and
//! FUZZING.md.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "fuzz harness: a failed check fails the test"
)]

#[path = "../../tools/fuzz/engine.rs"]
mod engine;

use std::sync::OnceLock;

use domicile_policy::{ConsentFact, DecisionInput, Diagnostic, PackSet, PackSource, run_tests};
use domicile_types::{Channel, ConsentState, Purpose};
use engine::{ensure, text};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    engine::corpus(&engine::corpus_dir(env!("CARGO_MANIFEST_DIR"), target))
}

/// Where a diagnostic may point: a line of the input (or just past its end) and a column
/// within that line (or just past its end), both 1-based, columns in characters.
fn inside(diagnostic: &Diagnostic, text: &str) -> bool {
    let lines: Vec<&str> = text.split('\n').collect();
    diagnostic.line >= 1
        && diagnostic.column >= 1
        && lines.get(diagnostic.line - 1).is_some_and(|line| diagnostic.column <= line.chars().count() + 1)
}

fn located(diagnostics: &[Diagnostic], sources: &[PackSource]) -> Result<(), String> {
    for d in diagnostics {
        let source = sources.iter().find(|s| s.path == d.path).ok_or_else(|| format!("{d} names no input"))?;
        ensure(inside(d, &source.text), || format!("{d} is outside its input"))?;
        ensure(!d.message.is_empty(), || format!("{d} has no message"))?;
    }
    Ok(())
}

/// The repository's baseline and US packs, which fuzzed packs may extend.
fn context() -> &'static [PackSource] {
    static CONTEXT: OnceLock<Vec<PackSource>> = OnceLock::new();
    CONTEXT.get_or_init(|| {
        let dir = engine::corpus_dir(env!("CARGO_MANIFEST_DIR"), "pack");
        ["_baseline.toml", "us.toml"]
            .iter()
            .map(|name| PackSource::new(format!("context/{name}"), std::fs::read_to_string(dir.join(name)).unwrap()))
            .collect()
    })
}

/// Every purpose × channel at instants from the far past to the far future, without consent and
/// with each consent state captured at extreme times: decisions never panic, allow only with a
/// reason, and name the pack.
fn decide_everything(set: &PackSet) -> Result<(), String> {
    const TIMES: [i64; 5] = [i64::MIN, -1, 0, 1_795_428_000, i64::MAX];
    for pack in set.packs() {
        for &purpose in Purpose::ALL {
            for &channel in Channel::ALL {
                for (i, &at) in TIMES.iter().enumerate() {
                    let captured = TIMES[(i + 2) % TIMES.len()];
                    let consents = [None, Some(ConsentState::Granted), Some(ConsentState::Withdrawn)];
                    for state in consents {
                        let consent = state.map(|state| ConsentFact {
                            state,
                            captured_at_unix: captured,
                            expires_at_unix: Some(TIMES[(i + 4) % TIMES.len()]),
                            double_opt_in_confirmed: true,
                            kind: None,
                            hours: Vec::new(),
                        });
                        let decision = pack.decide(&DecisionInput::new(purpose, channel, at, consent));
                        ensure(decision.pack.id == pack.id(), || format!("decision names pack {}", decision.pack.id))?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Pack text → compiled set → decisions, alone and next to the packs it may extend.
fn check_pack(bytes: &[u8]) -> Result<(), String> {
    let fuzzed = PackSource::new("fuzz/pack.toml", text(bytes));
    let alone = std::slice::from_ref(&fuzzed);
    let mut with_context = context().to_vec();
    with_context.push(fuzzed.clone());
    for sources in [alone, with_context.as_slice()] {
        match PackSet::compile(sources) {
            Ok((set, warnings)) => {
                located(&warnings, sources)?;
                ensure(warnings.iter().all(|w| !w.is_error()), || "an error came back as a warning".into())?;
                decide_everything(&set)?;
            }
            Err(diagnostics) => {
                ensure(diagnostics.has_errors(), || "failed without an error".into())?;
                located(&diagnostics.0, sources)?;
            }
        }
    }
    Ok(())
}

#[test]
fn fuzz_pack() {
    engine::run("pack", &corpus("pack"), check_pack);
}

/// The pack corpus's real packs (copies of `policy-packs/`), compiled once: what fuzzed test
/// files run against. Read from the corpus, not from `policy-packs/`, so that editing a pack does
/// not change what this target runs.
fn repo_set() -> &'static PackSet {
    static SET: OnceLock<PackSet> = OnceLock::new();
    SET.get_or_init(|| {
        let dir = engine::corpus_dir(env!("CARGO_MANIFEST_DIR"), "pack");
        let sources: Vec<PackSource> = ["_baseline.toml", "de.toml", "us.toml", "us-ca.toml"]
            .iter()
            .map(|name| PackSource::new(*name, std::fs::read_to_string(dir.join(name)).unwrap()))
            .collect();
        PackSet::compile(&sources)
            .unwrap_or_else(|e| panic!("the pack corpus no longer compiles; refresh it from policy-packs/:\n{e}"))
            .0
    })
}

/// A test file against the pack it names (or `de`): a report, or diagnostics inside the file.
fn check_pack_tests(bytes: &[u8]) -> Result<(), String> {
    let source = PackSource::new("fuzz/tests.toml", text(bytes));
    let set = repo_set();
    let named = source
        .text
        .lines()
        .find_map(|l| l.strip_prefix("pack = \"").and_then(|r| r.strip_suffix('"')))
        .and_then(|id| set.get_by_id(id));
    let pack = named.or_else(|| set.get_by_id("de")).ok_or("no pack `de`")?;
    match run_tests(pack, &source) {
        Ok(report) => {
            let ran = report.cases.len() + report.checks.len();
            ensure(report.passed + report.failed == ran, || {
                format!("{} passed + {} failed but {ran} cases and checks", report.passed, report.failed)
            })
        }
        Err(diagnostics) => {
            ensure(diagnostics.has_errors(), || "failed without an error".into())?;
            located(&diagnostics.0, std::slice::from_ref(&source))
        }
    }
}

#[test]
fn fuzz_pack_tests() {
    engine::run("pack_tests", &corpus("pack_tests"), check_pack_tests);
}
