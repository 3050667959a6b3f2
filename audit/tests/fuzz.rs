//! Fuzz target of the offline audit verifier: audit logs written by this crate's own API,
//! mutated. Corpus in `tests/fuzz-corpus/audit_log/`; the engine and how to run longer are in
//! `tools/fuzz/engine.rs` and FUZZING.md.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "fuzz harness: a failed check fails the test"
)]

#[path = "../../tools/fuzz/engine.rs"]
mod engine;

use std::path::{Path, PathBuf};

use domicile_audit::{AuditEvent, AuditLog, DecisionEntry, VerifyReport, erasure_proof, verify};
use domicile_policy::{Effect, PackRef};
use domicile_types::rights::{RequestId, RightsKind, RightsStatus};
use domicile_types::{Channel, ConsentState, Jurisdiction, Link, Purpose, RegionId, SubjectId, SubjectRef};
use engine::ensure;
use proptest::prelude::*;

fn corpus_dir() -> PathBuf {
    engine::corpus_dir(env!("CARGO_MANIFEST_DIR"), "audit_log")
}

fn report(bytes: &[u8]) -> Option<VerifyReport> {
    verify(bytes).ok()
}

/// A log verifies when the whole of it does: no error and no torn tail.
fn verifies(report: &VerifyReport) -> bool {
    report.torn_tail.is_none()
}

/// Any input: the verifier answers without panicking; what it accepts has a consistent report;
/// an edited log (other than a cut at a line end, which only the anchored head reveals) never
/// verifies with the head of a log the API wrote.
#[test]
fn fuzz_audit_log() {
    let corpus = engine::corpus(&corpus_dir());
    let seeds: Vec<(Vec<u8>, VerifyReport)> = corpus
        .iter()
        .filter(|(name, _)| !name.starts_with("regression-"))
        .map(|(name, bytes)| (bytes.clone(), report(bytes).unwrap_or_else(|| panic!("corpus log {name} fails"))))
        .collect();
    engine::run("audit_log", &corpus, |bytes| {
        let Ok(found) = verify(bytes) else { return Ok(()) };
        ensure(found.entries == found.head_seq, || "entries and head disagree".into())?;
        ensure(found.region.is_some() == (found.entries > 0), || "region without entries".into())?;
        let hex =
            found.head_hash.len() == 64 && found.head_hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ensure(hex, || format!("head hash {:?}", found.head_hash))?;
        if !verifies(&found) {
            return Ok(());
        }
        for (seed, original) in &seeds {
            if found.head_hash == original.head_hash && found.entries == original.entries {
                ensure(bytes == seed.as_slice(), || "an edited log verifies with the original head".into())?;
            }
        }
        Ok(())
    });
}

/// Every single-byte change of every corpus log is detected: an error, or (only for the final
/// newline) a torn tail that drops the last entry.
#[test]
fn fuzz_audit_byte_flip() {
    let seeds: Vec<Vec<u8>> = engine::corpus(&corpus_dir())
        .into_iter()
        .filter(|(name, _)| !name.starts_with("regression-"))
        .map(|(_, bytes)| bytes)
        .collect();
    let count = seeds.len();
    let strategy = (0..count, any::<usize>(), 1u8..=255);
    let seeds_for_bytes = seeds.clone();
    let flip = move |(i, at, xor): &(usize, usize, u8)| {
        let mut bytes = seeds_for_bytes[*i].clone();
        let at = at % bytes.len();
        bytes[at] ^= xor;
        bytes
    };
    let flip_check = flip.clone();
    let seeds_for_check = seeds.clone();
    engine::run_with(
        "audit_byte_flip",
        &[],
        strategy,
        flip,
        move |case| {
            let original = report(&seeds_for_check[case.0]).unwrap();
            match verify(flip_check(case).as_slice()) {
                Err(_) => Ok(()),
                Ok(found) => ensure(!verifies(&found) && found.entries < original.entries, || {
                    format!("a flipped log verifies: {found:?}")
                }),
            }
        },
        |_| Ok(()),
    );
}

fn region() -> RegionId {
    RegionId::parse("eu-central").unwrap()
}

fn subject(byte: u8) -> SubjectRef {
    SubjectRef { region: region(), id: SubjectId::from_bytes([byte; 16]) }
}

fn write_log(dir: &Path, fill: impl FnOnce(&AuditLog)) -> Vec<u8> {
    let log = AuditLog::open(dir, &region()).unwrap();
    fill(&log);
    log.sync().unwrap();
    std::fs::read(log.path()).unwrap()
}

/// Regenerates the corpus with the crate's own writer:
/// `cargo test -p domicile-audit --test fuzz write_audit_corpus -- --ignored`.
#[test]
#[ignore = "rewrites tests/fuzz-corpus/audit_log; run by hand"]
fn write_audit_corpus() {
    let at = 1_800_000_000;
    let every_event = write_log(tempfile::tempdir().unwrap().path(), |log| {
        let events = [
            AuditEvent::Registration { identifiers: 2, jurisdiction: Jurisdiction::parse("DE").unwrap() },
            AuditEvent::Consent {
                purpose: Purpose::Marketing,
                channels: vec![Channel::Email, Channel::Sms],
                state: ConsentState::Granted,
                sequence: 7,
            },
            AuditEvent::Decision {
                purpose: Purpose::Marketing,
                channel: Channel::Email,
                effect: Effect::Deny,
                reasons: vec!["de.marketing.email".into()],
                pack: PackRef { id: "de".into(), version: "2026.11.0".into() },
            },
            AuditEvent::RightsRequest {
                kind: RightsKind::Access,
                request_id: RequestId::from_bytes([9; 16]),
                deadline_at: Some(at + 30 * 86_400),
                status: RightsStatus::Received,
                reason: None,
                override_reason: None,
            },
            AuditEvent::RightsRequest {
                kind: RightsKind::Erasure,
                request_id: RequestId::from_bytes([10; 16]),
                deadline_at: None,
                status: RightsStatus::Received,
                reason: None,
                override_reason: None,
            },
            AuditEvent::Erasure {
                links_removed: 1,
                proof: erasure_proof(&subject(1), &[Link::from_bytes([3; 16])], at),
            },
            AuditEvent::Merge { from: subject(2), into: subject(1) },
            AuditEvent::OwnershipRepair { links_removed: 3, kept_by: RegionId::parse("us-east").unwrap() },
        ];
        for (i, event) in events.into_iter().enumerate() {
            let who = if i == 0 { Some(subject(1)) } else { Some(subject(2)) };
            log.append(event, who.as_ref(), at + i as i64).unwrap();
        }
    });
    let decisions = write_log(tempfile::tempdir().unwrap().path(), |log| {
        let pack = PackRef { id: "de".into(), version: "2026.11.0+r2".into() };
        let reasons: [&[&str]; 2] = [&["de.marketing.email", "eu.withdrawn"], &["de.marketing.sms"]];
        let entries: Vec<DecisionEntry<'_>> = (0..4u8)
            .map(|i| DecisionEntry {
                subject: SubjectId::from_bytes([i; 16]),
                purpose: Purpose::Marketing,
                channel: if i % 2 == 0 { Channel::Email } else { Channel::Sms },
                effect: if i % 2 == 0 { Effect::Deny } else { Effect::Allow },
                reasons: reasons[usize::from(i % 2)],
                pack: &pack,
            })
            .collect();
        log.append_decisions(&entries, at).unwrap();
        log.append_decisions(&entries[..1], at + 1).unwrap();
    });
    let dir = corpus_dir();
    std::fs::write(dir.join("every-event.log"), every_event).unwrap();
    std::fs::write(dir.join("decisions.log"), decisions).unwrap();
}
