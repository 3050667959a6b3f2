//! The fuzz engine shared by every crate's `tests/fuzz.rs` (included with `#[path]`, so no crate
//! of its own): replays a target's checked-in corpus, then runs proptest over arbitrary bytes
//! and mutations of the corpus seeds (bit flips, byte insertions and deletions, truncations,
//! splices of two seeds, tokens replaced by boundary values), checking the target's properties.
//!
//! `DOMICILE_FUZZ_CASES` (default 256) is the number of cases per proptest round;
//! `DOMICILE_FUZZ_SECS`, when set, repeats rounds (each with a fresh random seed) until that
//! many seconds are spent. Each target prints `fuzz <target>: <N> inputs, <F> findings`, and
//! fails with the minimised input of every finding. See FUZZING.md.

#![allow(dead_code, reason = "each fuzz test binary uses part of the engine")]

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRunner};

/// Cases per proptest round.
pub fn cases() -> u32 {
    std::env::var("DOMICILE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

/// Time budget: `None` runs one round.
pub fn budget() -> Option<Duration> {
    std::env::var("DOMICILE_FUZZ_SECS").ok().and_then(|v| v.parse::<f64>().ok()).map(Duration::from_secs_f64)
}

/// `<crate>/tests/fuzz-corpus/<target>/`.
pub fn corpus_dir(manifest_dir: &str, target: &str) -> PathBuf {
    Path::new(manifest_dir).join("tests/fuzz-corpus").join(target)
}

/// Every file of a corpus directory, sorted by name: (file name, bytes).
pub fn corpus(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

/// Tokens a mutation may put in place of another: boundary values of numbers and lengths.
const BOUNDARY: &[&[u8]] = &[
    b"",
    b"0",
    b"-1",
    b"18446744073709551615",
    b"18446744073709551616",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"99999999999999999999999999999999",
    b"1e309",
    b"NaN",
    b"\"\"",
    b"[]",
    b"{}",
    b"\xff\xfe",
    b"\x00",
    b"\xc3\xa9",
    b"\xe2\x80\xae",
    b"\\u0000",
    b"\n",
    b"\"",
    b"'''",
    b"\xf0\x9f\x98\x80",
    b"\x7f\xff\xff\xff\xff\xff\xff\xff\xff\x01",
];

/// One edit of a seed. Positions are taken modulo the current length.
#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit {
        at: usize,
        bit: u8,
    },
    SetByte {
        at: usize,
        byte: u8,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Truncate {
        at: usize,
    },
    /// Replaces `len` bytes at `at` with a boundary value.
    Boundary {
        at: usize,
        len: usize,
        value: usize,
    },
    /// Replaces the tail from `at` with the tail of another seed from `from`.
    Splice {
        seed: usize,
        at: usize,
        from: usize,
    },
    /// Repeats a slice (duplicated lines, sections, fields).
    Duplicate {
        at: usize,
        len: usize,
    },
}

fn mutation(seeds: usize) -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte { at, byte }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), 0usize..24, 0..BOUNDARY.len()).prop_map(|(at, len, value)| Mutation::Boundary {
            at,
            len,
            value
        }),
        (0..seeds.max(1), any::<usize>(), any::<usize>()).prop_map(|(seed, at, from)| Mutation::Splice {
            seed,
            at,
            from
        }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
    ]
}

fn apply(mut data: Vec<u8>, mutation: &Mutation, seeds: &[Vec<u8>]) -> Vec<u8> {
    let pos = |at: usize, len: usize| if len == 0 { 0 } else { at % (len + 1) };
    match mutation {
        Mutation::FlipBit { at, bit } => {
            if !data.is_empty() {
                let i = at % data.len();
                data[i] ^= 1 << bit;
            }
        }
        Mutation::SetByte { at, byte } => {
            if !data.is_empty() {
                let i = at % data.len();
                data[i] = *byte;
            }
        }
        Mutation::Insert { at, bytes } => {
            let i = pos(*at, data.len());
            data.splice(i..i, bytes.iter().copied());
        }
        Mutation::Delete { at, len } => {
            let i = pos(*at, data.len());
            let end = (i + len).min(data.len());
            data.drain(i..end);
        }
        Mutation::Truncate { at } => {
            let i = pos(*at, data.len());
            data.truncate(i);
        }
        Mutation::Boundary { at, len, value } => {
            let i = pos(*at, data.len());
            let end = (i + len).min(data.len());
            data.splice(i..end, BOUNDARY[*value].iter().copied());
        }
        Mutation::Splice { seed, at, from } => {
            if let Some(other) = seeds.get(*seed) {
                let i = pos(*at, data.len());
                let j = pos(*from, other.len());
                data.truncate(i);
                data.extend_from_slice(&other[j..]);
            }
        }
        Mutation::Duplicate { at, len } => {
            let i = pos(*at, data.len());
            let end = (i + len).min(data.len());
            let copy = data[i..end].to_vec();
            data.splice(end..end, copy);
        }
    }
    data
}

/// Inputs: arbitrary bytes, arbitrary text, and one to four mutations of a seed.
pub fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let count = seeds.len();
    let seeds = std::sync::Arc::new(seeds);
    let mutated = (0..count.max(1), proptest::collection::vec(mutation(count), 1..5)).prop_map(move |(i, edits)| {
        let start = seeds.get(i).cloned().unwrap_or_default();
        edits.iter().fold(start, |data, edit| apply(data, edit, &seeds))
    });
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..256),
        1 => any::<String>().prop_map(String::into_bytes),
        8 => mutated,
    ]
}

/// The figures of one target's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    pub inputs: u64,
    pub findings: u64,
}

/// Replays `corpus` (every file must pass `check`), then fuzzes `check` with `strategy` for
/// [`cases`] cases or the [`budget`]. Prints the figures and fails on any finding.
pub fn run_with<S: Strategy>(
    target: &str,
    corpus: &[(String, Vec<u8>)],
    strategy: S,
    to_bytes: impl Fn(&S::Value) -> Vec<u8>,
    check: impl Fn(&S::Value) -> Result<(), String>,
    replay: impl Fn(&[u8]) -> Result<(), String>,
) -> Figures
where
    S::Value: std::fmt::Debug,
{
    let inputs = Cell::new(0u64);
    let mut findings = Vec::new();
    for (name, bytes) in corpus {
        inputs.set(inputs.get() + 1);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| replay(bytes)));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(why)) => findings.push(format!("corpus file {name}: {why}")),
            Err(_) => findings.push(format!("corpus file {name}: panicked")),
        }
    }
    let started = Instant::now();
    let budget = budget();
    loop {
        let config = Config { cases: cases(), failure_persistence: None, max_shrink_iters: 2048, ..Config::default() };
        let mut runner = TestRunner::new(config);
        let result = runner.run(&strategy, |value| {
            inputs.set(inputs.get() + 1);
            check(&value).map_err(TestCaseError::fail)
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, value)) => {
                let bytes = to_bytes(&value);
                findings.push(format!(
                    "{why}\n  minimised input: {:?}\n  as text: {:?}",
                    value,
                    String::from_utf8_lossy(&bytes)
                ))
            }
            Err(TestError::Abort(why)) => findings.push(format!("aborted: {why}")),
        }
        match budget {
            Some(budget) if started.elapsed() < budget && findings.len() < 16 => continue,
            _ => break,
        }
    }
    let figures = Figures { inputs: inputs.get(), findings: findings.len() as u64 };
    println!("fuzz {target}: {} inputs, {} findings", figures.inputs, figures.findings);
    assert!(findings.is_empty(), "fuzz {target}: {} finding(s):\n{}", findings.len(), findings.join("\n"));
    figures
}

/// [`run_with`] over byte inputs: the corpus replayed with `check` and fuzzed with [`inputs`].
pub fn run(target: &str, corpus: &[(String, Vec<u8>)], check: impl Fn(&[u8]) -> Result<(), String>) -> Figures {
    let seeds = corpus.iter().map(|(_, b)| b.clone()).collect();
    run_with(target, corpus, inputs(seeds), Clone::clone, |v: &Vec<u8>| check(v), &check)
}

/// Text for parsers of `&str`: the bytes if UTF-8, else their lossy decoding (so mutations that
/// break UTF-8 still reach the parser).
pub fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Fails with `why` unless `ok`.
pub fn ensure(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(why()) }
}
