use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use super::*;
use domicile_policy::{Decision, Effect, PackRef};
use domicile_types::rights::{RequestId, RightsKind, RightsStatus};
use domicile_types::{
    Channel, ConsentState, Jurisdiction, Link, Purpose, RegionId, SUBJECT_ID_LEN, SubjectId, SubjectRef,
};
use sha2::{Digest, Sha256};
use std::io::Write;

fn region() -> RegionId {
    RegionId::parse("eu-central").unwrap()
}

fn subject(byte: u8) -> SubjectRef {
    SubjectRef { region: region(), id: SubjectId::from_bytes([byte; 16]) }
}

fn consent(sequence: u64) -> AuditEvent {
    AuditEvent::Consent {
        purpose: Purpose::Marketing,
        channels: vec![Channel::Email, Channel::Sms],
        state: ConsentState::Granted,
        sequence,
    }
}

fn every_event() -> Vec<AuditEvent> {
    vec![
        AuditEvent::Registration { identifiers: 2, jurisdiction: Jurisdiction::parse("de").unwrap() },
        consent(7),
        AuditEvent::Decision {
            purpose: Purpose::Marketing,
            channel: Channel::Email,
            effect: Effect::Deny,
            reasons: vec!["de-gdpr.email-marketing".into()],
            pack: PackRef { id: "de-gdpr".into(), version: "2024.1+r2".into() },
        },
        AuditEvent::RightsRequest {
            kind: RightsKind::Access,
            request_id: RequestId::from_bytes([9; 16]),
            deadline_at: Some(1_700_086_400),
            status: RightsStatus::Received,
            reason: None,
            override_reason: None,
        },
        AuditEvent::Erasure {
            links_removed: 1,
            proof: erasure_proof(&subject(1), &[Link::from_bytes([3; 16])], 1_700_000_000),
        },
        AuditEvent::Merge { from: subject(2), into: subject(1) },
        AuditEvent::Unmerge { was: subject(2), kept: subject(4), restored: subject(3), flagged: 1 },
    ]
}

/// A log with `n` consent entries; returns the dir guard and the file path.
fn log_with(n: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), &region()).unwrap();
    for i in 0..n {
        log.append(consent(i), Some(&subject(1)), 1_700_000_000 + i as i64).unwrap();
    }
    log.sync().unwrap();
    let path = log.path().to_owned();
    (dir, path)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn tamper(path: &Path) -> TamperError {
    match verify_file(path) {
        Err(VerifyError::Tampered(t)) => t,
        other => panic!("expected tampering, got {other:?}"),
    }
}

fn pack(version: &str) -> PackRef {
    PackRef { id: "de".into(), version: version.into() }
}

/// One decision's owned inputs: subject, purpose, channel, effect, reasons, pack.
type Input = (SubjectId, Purpose, Channel, Effect, Vec<&'static str>, PackRef);

/// Owned inputs of a batch; [`Batch::entries`] borrows them as `append_decisions` takes them.
struct Batch {
    decisions: Vec<Input>,
}

impl Batch {
    fn sample() -> Self {
        Batch {
            decisions: vec![
                (
                    subject(1).id,
                    Purpose::Marketing,
                    Channel::Email,
                    Effect::Deny,
                    vec!["de.marketing.email", "de.withdrawn"],
                    pack("2026.1+r2"),
                ),
                (
                    subject(2).id,
                    Purpose::Marketing,
                    Channel::Sms,
                    Effect::Allow,
                    vec!["de.marketing.sms"],
                    pack("2026.1"),
                ),
                (
                    subject(3).id,
                    Purpose::Survey,
                    Channel::VoiceAutomated,
                    Effect::Allow,
                    vec!["de.survey.voice_automated"],
                    pack("2026.1"),
                ),
            ],
        }
    }

    /// `n` decisions of distinct subjects, about 100 bytes each.
    fn many(n: usize) -> Self {
        let decisions = (0..n)
            .map(|i| {
                let mut id = [0u8; SUBJECT_ID_LEN];
                id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                let effect = if i % 3 == 0 { Effect::Deny } else { Effect::Allow };
                let reasons = if i % 2 == 0 { vec!["de.marketing.email"] } else { vec!["de.a", "de.b", "de.c"] };
                (SubjectId::from_bytes(id), Purpose::Marketing, Channel::Email, effect, reasons, pack("2026.1"))
            })
            .collect();
        Batch { decisions }
    }

    fn entries(&self) -> Vec<DecisionEntry<'_>> {
        self.decisions
            .iter()
            .map(|(subject, purpose, channel, effect, reasons, pack)| DecisionEntry {
                subject: *subject,
                purpose: *purpose,
                channel: *channel,
                effect: *effect,
                reasons,
                pack,
            })
            .collect()
    }

    fn audited(&self) -> Vec<AuditedDecision> {
        self.decisions
            .iter()
            .map(|(subject, purpose, channel, effect, reasons, pack)| AuditedDecision {
                subject: *subject,
                purpose: *purpose,
                channel: *channel,
                effect: *effect,
                reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
                pack: pack.clone(),
            })
            .collect()
    }
}

fn record(line: &str) -> AuditRecord {
    serde_json::from_str(line).unwrap()
}

#[test]
fn a_batch_is_one_decisions_entry_that_chains_verifies_and_reads_back() {
    let (dir, path) = log_with(1);
    let log = AuditLog::open(dir.path(), &region()).unwrap();
    let batch = Batch::sample();
    log.append_decisions(&batch.entries(), 1_700_000_001).unwrap();
    assert_eq!(log.head().seq, 2);
    let after = log.append(consent(2), Some(&subject(2)), 1_700_000_002).unwrap();
    drop(log);

    let all = lines(&path);
    assert_eq!(all.len(), 3, "one entry for the whole batch");
    let entry = record(&all[1]);
    assert_eq!((entry.seq, entry.kind, entry.subject.as_deref()), (2, AuditKind::Decisions, None));
    assert_eq!(entry.prev, record(&all[0]).hash);
    assert_eq!(after.prev, entry.hash, "the chain continues after the batch");
    assert_eq!(entry.detail.keys().collect::<Vec<_>>(), ["count", "decisions"]);
    assert_eq!(entry.detail["count"], "3");
    assert_eq!(
        entry.detail["decisions"],
        format!(
            "{} marketing email deny de.marketing.email,de.withdrawn de@2026.1+r2;\
             {} marketing sms allow de.marketing.sms de@2026.1;\
             {} survey voice_automated allow de.survey.voice_automated de@2026.1",
            "01".repeat(16),
            "02".repeat(16),
            "03".repeat(16)
        )
    );
    assert_eq!(entry.decisions(), Some(Ok(batch.audited())));
    assert_eq!(record(&all[0]).decisions(), None, "other kinds hold no decisions");
    let report = verify_file(dir.path()).unwrap();
    assert_eq!((report.entries, report.head_hash), (3, after.hash));
}

/// The hot path writes the line by hand; it must be exactly what serde writes for the same
/// record, or `verify` (which demands canonical lines) would call the log tampered.
#[test]
fn a_decisions_line_is_byte_identical_to_the_serialised_record() {
    for at in [1_700_000_001, 0, -5, i64::MAX] {
        let (dir, path) = log_with(1);
        let log = AuditLog::open(dir.path(), &region()).unwrap();
        let prev = log.head().hash;
        let batch = Batch::sample();
        log.append_decisions(&batch.entries(), at).unwrap();
        drop(log);

        let decisions = batch
            .decisions
            .iter()
            .map(|(subject, purpose, channel, effect, reasons, pack)| {
                format!("{subject} {purpose} {channel} {effect} {} {pack}", reasons.join(","))
            })
            .collect::<Vec<_>>()
            .join(";");
        let detail: BTreeMap<String, String> =
            [("count".to_owned(), "3".to_owned()), ("decisions".to_owned(), decisions)].into();
        let mut expected = AuditRecord {
            seq: 2,
            at,
            region: "eu-central".into(),
            kind: AuditKind::Decisions,
            subject: None,
            detail,
            prev,
            hash: String::new(),
        };
        expected.hash = expected.compute_hash().unwrap();
        let mut bytes = serde_json::to_vec(&expected).unwrap();
        bytes.push(b'\n');
        let file = std::fs::read(&path).unwrap();
        let second = file.iter().position(|&b| b == b'\n').unwrap() + 1;
        assert_eq!(String::from_utf8_lossy(&file[second..]), String::from_utf8_lossy(&bytes), "at {at}");
        assert_eq!(verify_file(&path).unwrap().entries, 2);
    }
}

#[test]
fn a_large_batch_is_cut_into_chained_entries_below_the_cap() {
    let (dir, path) = log_with(1);
    let log = AuditLog::open(dir.path(), &region()).unwrap();
    let batch = Batch::many(10_000);
    let entries = batch.entries();
    log.append_decisions(&entries, 1_700_000_001).unwrap();
    let head = log.head();
    drop(log);

    let all = lines(&path);
    let records: Vec<AuditRecord> = all[1..].iter().map(|l| record(l)).collect();
    assert!((10..40).contains(&records.len()), "{} entries", records.len());
    assert_eq!(head.seq, 1 + records.len() as u64);
    let mut read_back = Vec::new();
    let mut prev = record(&all[0]).hash;
    for (i, (line, entry)) in all[1..].iter().zip(&records).enumerate() {
        assert_eq!((entry.seq, &entry.prev), (2 + i as u64, &prev));
        prev.clone_from(&entry.hash);
        assert!(line.len() < MAX_LINE as usize);
        let text = &entry.detail["decisions"];
        assert!(text.len() <= MAX_DECISIONS_BYTES, "entry {i}: {} bytes", text.len());
        let decisions = entry.decisions().unwrap().unwrap();
        assert_eq!(entry.detail["count"], decisions.len().to_string());
        // Greedy: an entry is cut only where the next decision would not fit.
        if let Some(next) = entries.get(read_back.len() + decisions.len()) {
            assert!(text.len() + 1 + next.encoded_len() > MAX_DECISIONS_BYTES, "entry {i} cut early");
        }
        read_back.extend(decisions);
    }
    assert_eq!(head.hash, prev);
    assert_eq!(read_back, batch.audited());
    assert_eq!(verify_file(dir.path()).unwrap().entries, head.seq);
}

#[test]
fn an_invalid_reason_or_pack_refuses_the_whole_batch_writing_nothing() {
    let (dir, path) = log_with(1);
    let before = std::fs::read(&path).unwrap();
    let log = AuditLog::open(dir.path(), &region()).unwrap();
    let head = log.head();
    let batch = Batch::sample();
    let good = batch.entries();
    let bad_pack = PackRef { id: "de".into(), version: "+49 151 1234567".into() };
    let long: Vec<String> = (0..400).map(|i| format!("{i:0>128}")).collect();
    let long: Vec<&str> = long.iter().map(String::as_str).collect();
    let cases: [(&[&str], &PackRef, &str); 6] = [
        (&["jane@example.com"], good[1].pack, "reasons"),
        (&["de gdpr"], good[1].pack, "reasons"),
        (&[""], good[1].pack, "reasons"),
        (&["a;b"], good[1].pack, "reasons"),
        (&long, good[1].pack, "reasons"),
        (good[1].reasons, &bad_pack, "pack"),
    ];
    for (reasons, pack, expected) in cases {
        let mut entries = good.clone();
        entries[2] = DecisionEntry { reasons, pack, ..entries[2] };
        match log.append_decisions(&entries, 1_700_000_001) {
            Err(AuditError::InvalidField { field }) => assert_eq!(field, expected),
            other => panic!("expected a refusal of `{expected}`, got {other:?}"),
        }
    }
    log.append_decisions(&[], 1_700_000_001).unwrap();
    assert_eq!(log.head(), head);
    drop(log);
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was written");
}

#[test]
fn flipping_one_decisions_effect_is_detected_naming_the_entry() {
    let (dir, path) = log_with(1);
    let log = AuditLog::open(dir.path(), &region()).unwrap();
    log.append_decisions(&Batch::sample().entries(), 1_700_000_001).unwrap();
    log.append(consent(2), Some(&subject(2)), 1_700_000_002).unwrap();
    drop(log);
    let mut all = lines(&path);
    assert!(all[1].contains(" allow "));
    all[1] = all[1].replacen(" allow ", " deny ", 1);
    write_lines(&path, &all);
    let t = tamper(&path);
    assert_eq!((t.seq, t.line, t.reason), (Some(2), 2, TamperReason::HashMismatch));
}

/// Someone who rewrites the chain could still not slip in a decisions entry a node would not
/// write: verify reads every one back.
#[test]
fn a_rehashed_malformed_decisions_entry_is_tampering() {
    let edits: [(&str, &str, DecisionsError); 4] = [
        ("count", "2", DecisionsError::Count),
        ("count", "03", DecisionsError::Count),
        ("decisions", "", DecisionsError::FieldCount { position: 1 }),
        ("extra", "1", DecisionsError::Keys),
    ];
    for (key, value, expected) in edits {
        let (dir, path) = log_with(1);
        let log = AuditLog::open(dir.path(), &region()).unwrap();
        log.append_decisions(&Batch::sample().entries(), 1_700_000_001).unwrap();
        drop(log);
        let mut all = lines(&path);
        let mut entry = record(&all[1]);
        entry.detail.insert(key.into(), value.into());
        entry.hash = entry.compute_hash().unwrap();
        all[1] = serde_json::to_string(&entry).unwrap();
        write_lines(&path, &all);
        let t = tamper(&path);
        assert_eq!((t.seq, t.line, t.reason), (Some(2), 2, TamperReason::BadDecisions(expected)));
    }
}

#[test]
fn decisions_read_back_strictly() {
    let entry = |subject: Option<&str>, count: &str, decisions: &str| AuditRecord {
        seq: 1,
        at: 0,
        region: "eu-central".into(),
        kind: AuditKind::Decisions,
        subject: subject.map(str::to_owned),
        detail: [("count".to_owned(), count.to_owned()), ("decisions".to_owned(), decisions.to_owned())].into(),
        prev: GENESIS.into(),
        hash: String::new(),
    };
    let id = "ab".repeat(16);
    let good = format!("{id} marketing email allow de.a,de.b de@1");
    let parsed = entry(None, "1", &good).decisions().unwrap().unwrap();
    assert_eq!(parsed[0].subject, SubjectId::from_bytes([0xab; 16]));
    assert_eq!(parsed[0].reasons, ["de.a", "de.b"]);
    assert_eq!(parsed[0].pack, PackRef { id: "de".into(), version: "1".into() });
    let no_reasons = format!("{id} marketing email allow  de@1");
    assert_eq!(entry(None, "1", &no_reasons).decisions().unwrap().unwrap()[0].reasons, Vec::<String>::new());

    let field = |position, field| DecisionsError::Field { position, field };
    let cases: Vec<(Option<&str>, &str, String, DecisionsError)> = vec![
        (Some("eu-central/ab"), "1", good.clone(), DecisionsError::Subject),
        (None, "2", good.clone(), DecisionsError::Count),
        (None, "1", format!("{good};{good}"), DecisionsError::Count),
        (None, "2", format!("{good};"), DecisionsError::FieldCount { position: 2 }),
        (None, "1", format!("{good} extra"), DecisionsError::FieldCount { position: 1 }),
        (None, "1", format!("{id}  marketing email allow de.a de@1"), DecisionsError::FieldCount { position: 1 }),
        (None, "1", good.replace(&id, &"AB".repeat(16)), field(1, "subject")),
        (None, "1", good.replace(&id, "abab"), field(1, "subject")),
        (None, "1", good.replace("marketing", "spam"), field(1, "purpose")),
        (None, "1", good.replace("email", "fax"), field(1, "channel")),
        (None, "1", good.replace("allow", "maybe"), field(1, "effect")),
        (None, "1", good.replace("de.a,de.b", "de.a,,de.b"), field(1, "reasons")),
        (None, "1", good.replace("de.a", "De.a"), field(1, "reasons")),
        (None, "1", good.replace("de@1", "de1"), field(1, "pack")),
        (None, "1", good.replace("de@1", "de@1@2"), field(1, "pack")),
    ];
    for (subject, count, decisions, expected) in cases {
        assert_eq!(entry(subject, count, &decisions).decisions(), Some(Err(expected)), "{decisions}");
    }
    let mut record = entry(None, "1", &good);
    record.detail.remove("count");
    assert_eq!(record.decisions(), Some(Err(DecisionsError::Keys)));
}

#[test]
fn appends_reopens_and_continues_the_chain() {
    let (dir, path) = log_with(3);
    let log = AuditLog::open(dir.path(), &region()).unwrap();
    let head = log.head();
    assert_eq!(head.seq, 3);
    let record = log.append(consent(3), Some(&subject(1)), 1_700_000_100).unwrap();
    assert_eq!(record.seq, 4);
    assert_eq!(record.prev, head.hash);
    assert_eq!(log.head(), AuditHead { seq: 4, hash: record.hash.clone() });
    drop(log);

    let report = verify_file(dir.path()).unwrap();
    assert_eq!(report.entries, 4);
    assert_eq!(report.head_seq, 4);
    assert_eq!(report.head_hash, record.hash);
    assert_eq!(report.region.as_deref(), Some("eu-central"));
    assert_eq!(report.torn_tail, None);
    assert_eq!(lines(&path).len(), 4);
}

#[test]
fn empty_log_verifies_with_genesis_head() {
    let (dir, _) = log_with(0);
    let report = verify_file(dir.path()).unwrap();
    assert_eq!((report.entries, report.head_hash.as_str()), (0, GENESIS));
    assert_eq!(AuditLog::open(dir.path(), &region()).unwrap().head(), AuditHead { seq: 0, hash: GENESIS.into() });
}

#[test]
fn first_entry_chains_from_genesis() {
    let (_dir, path) = log_with(1);
    let record: AuditRecord = serde_json::from_str(&lines(&path)[0]).unwrap();
    assert_eq!((record.seq, record.prev.as_str()), (1, GENESIS));
}

#[test]
fn hash_is_sha256_of_the_line_without_its_hash_member() {
    let (_dir, path) = log_with(2);
    for line in lines(&path) {
        let record: AuditRecord = serde_json::from_str(&line).unwrap();
        let without = line.replace(&format!(",\"hash\":\"{}\"", record.hash), "");
        assert!(without.ends_with("\"}"), "{without}");
        assert_eq!(hex::encode(Sha256::digest(without.as_bytes())), record.hash);
    }
}

#[test]
fn editing_one_byte_of_an_entry_detail_is_detected_naming_the_entry() {
    let (dir, path) = log_with(4);
    let mut all = lines(&path);
    assert!(all[2].contains("\"sequence\":\"2\""));
    all[2] = all[2].replace("\"sequence\":\"2\"", "\"sequence\":\"3\"");
    write_lines(&path, &all);

    let t = tamper(&path);
    assert_eq!((t.seq, t.line, &t.reason), (Some(3), 3, &TamperReason::HashMismatch));
    assert_eq!(t.to_string(), "entry seq 3 (line 3): contents do not match the entry's hash");
    // The node refuses to append to it.
    match AuditLog::open(dir.path(), &region()) {
        Err(AuditError::Tampered(t)) => assert_eq!((t.seq, t.line), (Some(3), 3)),
        other => panic!("expected refusal, got {other:?}"),
    }
}

#[test]
fn any_single_byte_change_is_detected_at_that_line() {
    let (_dir, path) = log_with(3);
    let original = std::fs::read(&path).unwrap();
    let second = original.iter().position(|&b| b == b'\n').unwrap() + 1;
    let end = second + original[second..].iter().position(|&b| b == b'\n').unwrap();
    for i in second..end {
        let mut bytes = original.clone();
        bytes[i] = if bytes[i] == b'x' { b'y' } else { b'x' };
        std::fs::write(&path, &bytes).unwrap();
        let t = tamper(&path);
        assert_eq!(t.line, 2, "byte {i}: {t}");
    }
}

#[test]
fn any_single_byte_change_of_a_decisions_entry_is_detected_at_that_line() {
    let (dir, path) = log_with(1);
    let log = AuditLog::open(dir.path(), &region()).unwrap();
    log.append_decisions(&Batch::sample().entries(), 1_700_000_001).unwrap();
    log.append(consent(2), Some(&subject(2)), 1_700_000_002).unwrap();
    drop(log);
    let original = std::fs::read(&path).unwrap();
    let second = original.iter().position(|&b| b == b'\n').unwrap() + 1;
    let end = second + original[second..].iter().position(|&b| b == b'\n').unwrap();
    for i in second..end {
        for replacement in [b'x', b' ', b';'] {
            let mut bytes = original.clone();
            if bytes[i] == replacement {
                continue;
            }
            bytes[i] = replacement;
            std::fs::write(&path, &bytes).unwrap();
            let t = tamper(&path);
            assert_eq!(t.line, 2, "byte {i}: {t}");
        }
    }
}

#[test]
fn deleting_a_middle_entry_is_detected() {
    let (_dir, path) = log_with(5);
    let mut all = lines(&path);
    all.remove(2);
    write_lines(&path, &all);
    let t = tamper(&path);
    assert_eq!((t.seq, t.line, t.reason), (Some(4), 3, TamperReason::SeqGap { expected: 3 }));
}

#[test]
fn deleting_the_first_entry_is_detected() {
    let (_dir, path) = log_with(3);
    let mut all = lines(&path);
    all.remove(0);
    write_lines(&path, &all);
    assert_eq!(tamper(&path).reason, TamperReason::SeqGap { expected: 1 });
}

#[test]
fn swapping_two_entries_is_detected() {
    let (_dir, path) = log_with(5);
    let mut all = lines(&path);
    all.swap(1, 2);
    write_lines(&path, &all);
    let t = tamper(&path);
    assert_eq!((t.seq, t.line), (Some(3), 2));
}

#[test]
fn inserting_or_duplicating_an_entry_is_detected() {
    let (_dir, path) = log_with(3);
    let mut all = lines(&path);
    all.insert(2, all[1].clone());
    write_lines(&path, &all);
    let t = tamper(&path);
    assert_eq!((t.seq, t.line, t.reason), (Some(2), 3, TamperReason::SeqBack { expected: 3 }));
}

#[test]
fn a_rehashed_edit_breaks_the_next_link() {
    let (_dir, path) = log_with(3);
    let mut all = lines(&path);
    let mut record: AuditRecord = serde_json::from_str(&all[1]).unwrap();
    record.detail.insert("state".into(), "withdrawn".into());
    record.hash = record.compute_hash().unwrap();
    all[1] = serde_json::to_string(&record).unwrap();
    write_lines(&path, &all);
    let t = tamper(&path);
    assert_eq!((t.seq, t.line, t.reason), (Some(3), 3, TamperReason::PrevMismatch { previous: 2 }));
}

#[test]
fn non_canonical_spelling_is_detected() {
    let (_dir, path) = log_with(2);
    let mut all = lines(&path);
    all[0] = all[0].replacen("{\"seq\":1,", "{\"seq\": 1,", 1);
    write_lines(&path, &all);
    let t = tamper(&path);
    assert_eq!((t.seq, t.line, t.reason), (Some(1), 1, TamperReason::NotCanonical));
}

#[test]
fn torn_tail_is_reported_by_verify_and_truncated_on_reopen() {
    let (dir, path) = log_with(2);
    let good_len = std::fs::metadata(&path).unwrap().len();
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"{\"seq\":3,\"at\":17000").unwrap();
    drop(file);

    let report = verify_file(&path).unwrap();
    assert_eq!(report.entries, 2);
    assert_eq!(report.torn_tail, Some(TornTail { line: 3, bytes: 19 }));

    let log = AuditLog::open(dir.path(), &region()).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
    assert_eq!(log.head().seq, 2);
    assert_eq!(log.append(consent(2), None, 1_700_000_200).unwrap().seq, 3);
    drop(log);
    let report = verify_file(&path).unwrap();
    assert_eq!((report.entries, report.torn_tail), (3, None));
}

#[test]
fn a_complete_but_invalid_last_line_is_tampering_not_a_torn_tail() {
    let (dir, path) = log_with(2);
    let mut all = lines(&path);
    let keep = all[1].len() - 5;
    all[1].truncate(keep);
    write_lines(&path, &all);
    let t = tamper(&path);
    assert_eq!((t.seq, t.line, t.reason), (None, 2, TamperReason::NotAnEntry));
    assert!(matches!(AuditLog::open(dir.path(), &region()), Err(AuditError::Tampered(_))));
}

#[test]
fn an_overlong_line_is_rejected_without_reading_it_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    std::fs::write(&path, vec![b'a'; MAX_LINE as usize + 10]).unwrap();
    assert_eq!(tamper(&path).reason, TamperReason::TooLong);
}

#[test]
fn refuses_a_log_of_another_region() {
    let (dir, _) = log_with(1);
    let other = RegionId::parse("us-east").unwrap();
    assert!(matches!(AuditLog::open(dir.path(), &other), Err(AuditError::WrongRegion { .. })));
}

#[test]
fn refuses_subjects_of_other_regions_and_writes_nothing() {
    let (dir, path) = log_with(1);
    let log = AuditLog::open(dir.path(), &region()).unwrap();
    let foreign = SubjectRef { region: RegionId::parse("us-east").unwrap(), id: SubjectId::from_bytes([1; 16]) };
    assert!(matches!(log.append(consent(1), Some(&foreign), 1), Err(AuditError::ForeignSubject)));
    let merge = AuditEvent::Merge { from: foreign.clone(), into: subject(1) };
    assert!(matches!(log.append(merge, Some(&subject(1)), 1), Err(AuditError::ForeignSubject)));
    let unmerge = AuditEvent::Unmerge { was: subject(2), kept: subject(4), restored: foreign, flagged: 0 };
    assert!(matches!(log.append(unmerge, Some(&subject(1)), 1), Err(AuditError::ForeignSubject)));
    assert_eq!(log.head().seq, 1);
    assert_eq!(lines(&path).len(), 1);
}

#[test]
fn free_text_in_string_fields_is_refused() {
    let (dir, path) = log_with(0);
    let log = AuditLog::open(dir.path(), &region()).unwrap();
    let pack = PackRef { id: "de-gdpr".into(), version: "1".into() };
    for reasons in [vec!["jane@example.com".to_owned()], vec!["de gdpr".into()], vec![String::new()]] {
        let event = AuditEvent::Decision {
            purpose: Purpose::Marketing,
            channel: Channel::Email,
            effect: Effect::Allow,
            reasons,
            pack: pack.clone(),
        };
        assert!(matches!(log.append(event, None, 1), Err(AuditError::InvalidField { field: "reasons" })));
    }
    let event = AuditEvent::Decision {
        purpose: Purpose::Marketing,
        channel: Channel::Email,
        effect: Effect::Allow,
        reasons: vec![],
        pack: PackRef { id: "de-gdpr".into(), version: "+49 151 1234567".into() },
    };
    assert!(matches!(log.append(event, None, 1), Err(AuditError::InvalidField { field: "pack" })));
    assert_eq!(std::fs::read(&path).unwrap(), b"");
}

#[test]
fn entries_hold_only_the_typed_fields() {
    let (dir, path) = log_with(0);
    let log = AuditLog::open(dir.path(), &region()).unwrap();
    for event in every_event() {
        log.append(event, Some(&subject(1)), 1_700_000_000).unwrap();
    }
    let batch = Batch::sample();
    log.append_decisions(&batch.entries()[..2], 1_700_000_000).unwrap();
    drop(log);
    let expected_detail: [(&str, &[&str]); 8] = [
        ("registration", &["identifiers", "jurisdiction"]),
        ("consent", &["channels", "purpose", "sequence", "state"]),
        ("decision", &["channel", "effect", "pack", "purpose", "reasons"]),
        ("rights_request", &["deadline_at", "request_id", "right", "status"]),
        ("erasure", &["links_removed", "proof"]),
        ("merge", &["from", "into"]),
        ("unmerge", &["flagged", "kept", "restored", "was"]),
        ("decisions", &["count", "decisions"]),
    ];
    let all = lines(&path);
    assert_eq!(all.len(), expected_detail.len());
    for (line, (kind, detail_keys)) in all.iter().zip(expected_detail) {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let object = value.as_object().unwrap();
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        let mut expected = vec!["at", "detail", "hash", "kind", "prev", "region", "seq", "subject"];
        expected.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, expected);
        assert_eq!(object["kind"], kind);
        if kind == "decisions" {
            assert_eq!(object["subject"], serde_json::Value::Null);
        }
        let detail = object["detail"].as_object().unwrap();
        assert_eq!(detail.keys().map(String::as_str).collect::<Vec<_>>(), detail_keys, "{kind}");
        for (k, v) in detail {
            let v = v.as_str().unwrap();
            // Vocabulary, ids, numbers, digests: no spaces, no `@`-free-text, no quotes. A
            // decisions string separates such tokens with single spaces and `;`.
            let separators: &[u8] = if k == "decisions" { b" ;" } else { b"" };
            assert!(
                v.bytes().all(|b| b.is_ascii_alphanumeric() || b"@,._+-/".contains(&b) || separators.contains(&b)),
                "{kind}: {v}"
            );
        }
    }
    let detail_of = |i: usize| -> BTreeMap<String, String> {
        serde_json::from_value(serde_json::from_str::<serde_json::Value>(&all[i]).unwrap()["detail"].clone()).unwrap()
    };
    assert_eq!(detail_of(0)["jurisdiction"], "DE");
    assert_eq!(detail_of(1)["channels"], "email,sms");
    assert_eq!(detail_of(2)["pack"], "de-gdpr@2024.1+r2");
    assert_eq!(detail_of(3)["request_id"], "09".repeat(16));
    assert_eq!(detail_of(4)["proof"].len(), 64);
    assert_eq!(detail_of(5)["from"], subject(2).to_string());
    assert_eq!(detail_of(6)["restored"], subject(3).to_string());
    assert_eq!(detail_of(7)["count"], "2");
    assert_eq!(record(&all[7]).decisions(), Some(Ok(batch.audited()[..2].to_vec())));
    assert_eq!(verify_file(dir.path()).unwrap().entries, 8);
}

#[test]
fn erasure_proof_is_deterministic_order_free_and_binding() {
    let links = [Link::from_bytes([1; 16]), Link::from_bytes([2; 16])];
    let swapped = [links[1], links[0], links[1]];
    let p = erasure_proof(&subject(1), &links, 100);
    assert_eq!(p, erasure_proof(&subject(1), &swapped, 100));
    let variants: BTreeSet<String> = [
        p,
        erasure_proof(&subject(2), &links, 100),
        erasure_proof(&subject(1), &links[..1], 100),
        erasure_proof(&subject(1), &links, 101),
        erasure_proof(&subject(1), &[], 100),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(variants.len(), 5);
    let text = p.to_string();
    assert_eq!(text.len(), 64);
    assert!(text.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert!(!text.contains(&hex::encode([1u8; 16])), "the proof does not reveal a link");
}

#[test]
fn erasure_proof_encoding_is_as_documented() {
    let s = subject(1);
    let link = Link::from_bytes([7; 16]);
    let text = s.to_string();
    let mut input = b"domicile.audit.erasure-proof.v1\0".to_vec();
    input.extend((text.len() as u32).to_be_bytes());
    input.extend(text.as_bytes());
    input.extend(42i64.to_be_bytes());
    input.extend(1u32.to_be_bytes());
    input.extend([7u8; 16]);
    assert_eq!(erasure_proof(&s, &[link], 42).to_string(), hex::encode(Sha256::digest(&input)));
}

#[test]
fn decision_event_carries_the_pack_and_reasons() {
    let decision = Decision {
        effect: Effect::Allow,
        reasons: vec!["de-gdpr.email-marketing".into()],
        pack: PackRef { id: "de-gdpr".into(), version: "1".into() },
        obligations: vec![],
        explanation: "free text that must not reach the log".into(),
        valid_until_unix: None,
        jurisdiction: "DE".into(),
        country_fallback: false,
    };
    let event = AuditEvent::decision(Purpose::Marketing, Channel::Email, &decision);
    let detail = event.detail().unwrap();
    assert_eq!(detail["reasons"], "de-gdpr.email-marketing");
    assert!(detail.values().all(|v| !v.contains("free text")));
}

// A store write's entries (`AuditLog::begin`): kept when the write commits, gone when it does not.

#[test]
fn a_committed_write_keeps_its_entries_and_the_chain_continues() {
    let (dir, path) = log_with(2);
    let log = AuditLog::open(dir.path(), &region()).unwrap();
    let before = log.head();
    let mut txn = log.begin().unwrap();
    txn.append(consent(10), Some(&subject(1)), 1_700_000_010).unwrap();
    txn.append(consent(11), Some(&subject(1)), 1_700_000_010).unwrap();
    txn.commit();
    assert_eq!(log.head().seq, before.seq + 2);
    log.append(consent(12), Some(&subject(1)), 1_700_000_011).unwrap();
    drop(log);
    let report = verify_file(&path).unwrap();
    assert_eq!((report.entries, report.torn_tail), (5, None));
}

#[test]
fn a_write_that_does_not_commit_leaves_no_entry_and_the_chain_continues_from_before_it() {
    let (dir, path) = log_with(2);
    let before_bytes = std::fs::read(&path).unwrap();
    let log = AuditLog::open(dir.path(), &region()).unwrap();
    let before = log.head();
    {
        let mut txn = log.begin().unwrap();
        txn.append(consent(10), Some(&subject(1)), 1_700_000_010).unwrap();
        txn.append(consent(11), Some(&subject(1)), 1_700_000_010).unwrap();
        // Dropped without commit: the write's transaction aborted.
    }
    assert_eq!(log.head(), before);
    assert_eq!(std::fs::read(&path).unwrap(), before_bytes, "the file is as it was, byte for byte");
    let next = log.append(consent(12), Some(&subject(1)), 1_700_000_011).unwrap();
    assert_eq!((next.seq, next.prev.as_str()), (before.seq + 1, before.hash.as_str()));
    drop(log);
    assert_eq!(verify_file(&path).unwrap().entries, 3);
}

/// A write's entries appended together (`AuditTxn::append_all`): chained in order as single
/// appends would be, kept or removed with the write; one entry the log refuses (another region's
/// subject) refuses them all and writes nothing.
#[test]
fn entries_appended_together_chain_as_single_appends_and_go_all_or_nothing() {
    let (dir, path) = log_with(1);
    let log = AuditLog::open(dir.path(), &region()).unwrap();
    let before = log.head();
    let foreign = SubjectRef { region: RegionId::parse("us-east").unwrap(), ..subject(2) };
    let mut txn = log.begin().unwrap();
    let refused = txn.append_all([(consent(9), Some(subject(1))), (consent(10), Some(foreign))], 1_700_000_010);
    assert!(matches!(refused, Err(AuditError::ForeignSubject)), "{refused:?}");
    txn.append_all([(consent(10), Some(subject(1))), (consent(11), Some(subject(2)))], 1_700_000_010).unwrap();
    txn.append_all([], 1_700_000_010).unwrap();
    txn.commit();
    assert_eq!(log.head().seq, before.seq + 2);
    {
        let mut txn = log.begin().unwrap();
        txn.append_all([(consent(12), Some(subject(1)))], 1_700_000_011).unwrap();
        // Dropped without commit: removed.
    }
    log.append(consent(13), Some(&subject(1)), 1_700_000_012).unwrap();
    drop(log);
    let report = verify_file(&path).unwrap();
    assert_eq!((report.entries, report.torn_tail), (4, None));
    let sequences: Vec<String> =
        lines(&path).iter().map(|l| record(l).detail.get("sequence").cloned().unwrap_or_default()).collect();
    assert_eq!(sequences[1..], ["10", "11", "13"]);
}

#[test]
fn a_transaction_body_run_again_leaves_only_its_last_run_s_entries() {
    let (dir, path) = log_with(1);
    let log = AuditLog::open(dir.path(), &region()).unwrap();
    let mut txn = log.begin().unwrap();
    txn.append(consent(10), Some(&subject(1)), 1_700_000_010).unwrap();
    txn.append(consent(11), Some(&subject(1)), 1_700_000_010).unwrap();
    txn.rollback().unwrap();
    txn.append(consent(12), Some(&subject(1)), 1_700_000_010).unwrap();
    txn.commit();
    drop(log);
    let report = verify_file(&path).unwrap();
    assert_eq!(report.entries, 2);
    let last = record(lines(&path).last().unwrap());
    assert_eq!(last.detail.get("sequence").map(String::as_str), Some("12"));
}

#[test]
fn appends_of_others_wait_for_an_open_write_and_follow_it() {
    let (dir, path) = log_with(1);
    let log = std::sync::Arc::new(AuditLog::open(dir.path(), &region()).unwrap());
    let mut txn = log.begin().unwrap();
    txn.append(consent(10), Some(&subject(1)), 1_700_000_010).unwrap();
    let other = {
        let log = std::sync::Arc::clone(&log);
        std::thread::spawn(move || log.append(consent(20), Some(&subject(2)), 1_700_000_020).unwrap().seq)
    };
    // The other append cannot land between this write's entries and their removal.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!other.is_finished(), "an append went ahead of an open write");
    drop(txn);
    assert_eq!(other.join().unwrap(), 2, "it follows the entry before the aborted write");
    drop(log);
    let report = verify_file(&path).unwrap();
    assert_eq!(report.entries, 2);
}

#[test]
fn a_chain_kept_elsewhere_encodes_the_very_lines_the_file_log_writes() {
    let (dir, path) = log_with(0);
    let log = AuditLog::open(dir.path(), &region()).unwrap();
    let mut chain = Chain::new(region());
    let mut lines = Vec::new();
    for (i, event) in every_event().into_iter().enumerate() {
        let at = 1_700_000_000 + i as i64;
        log.append(event.clone(), Some(&subject(1)), at).unwrap();
        chain.entry(&mut lines, event, Some(&subject(1)), at).unwrap();
    }
    let reasons = ["de.marketing.email.opt_in"];
    let pack = pack("2");
    let batch: Vec<DecisionEntry<'_>> = (0..3u8)
        .map(|i| DecisionEntry {
            subject: SubjectId::from_bytes([i; 16]),
            purpose: Purpose::Marketing,
            channel: Channel::Email,
            effect: Effect::Allow,
            reasons: &reasons,
            pack: &pack,
        })
        .collect();
    log.append_decisions(&batch, 1_700_000_100).unwrap();
    assert_eq!(chain.decisions(&mut lines, &batch, 1_700_000_100).unwrap(), 1);
    drop(log);
    assert_eq!(std::fs::read(&path).unwrap(), lines, "byte for byte");
    let report = verify(&lines[..]).unwrap();
    assert_eq!((report.head_seq, report.head_hash.as_str()), (chain.last_seq(), chain.last_hash()));
    // Continuing from a stored head gives the same next line as continuing the log.
    let mut resumed = Chain::after(region(), chain.last_seq(), chain.last_hash().to_owned());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    resumed.entry(&mut a, consent(99), Some(&subject(1)), 1).unwrap();
    chain.entry(&mut b, consent(99), Some(&subject(1)), 1).unwrap();
    assert_eq!(a, b);
    assert_eq!(Chain::new(region()).entry(&mut Vec::new(), consent(1), Some(&subject(1)), 1).unwrap().prev, GENESIS);
}

#[test]
fn a_log_that_lost_synced_entries_from_its_end_is_refused_naming_both_seqs() {
    let (dir, path) = log_with(3);
    assert_eq!(read_synced_head(dir.path()).unwrap(), 3, "the sync recorded its head");
    // Cut the last whole entry: still a valid (shorter) chain, as `audit verify` alone sees it.
    let kept = lines(&path)[..2].to_vec();
    write_lines(&path, &kept);
    assert_eq!(verify_file(&path).unwrap().entries, 2);
    match AuditLog::open(dir.path(), &region()) {
        Err(AuditError::Truncated { found: 2, synced: 3, path: named }) => {
            assert!(named.ends_with("audit.log"), "{named}");
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    // A whole log replaced by an empty one is the same loss.
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(AuditLog::open(dir.path(), &region()), Err(AuditError::Truncated { found: 0, .. })));
}

#[test]
fn entries_removed_by_a_rollback_are_never_recorded_as_synced() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), &region()).unwrap();
    log.append(consent(0), None, 1_700_000_000).unwrap();
    {
        let mut txn = log.begin().unwrap();
        txn.append(consent(1), None, 1_700_000_001).unwrap();
        // A sync while the write is open (its entries may still go) records nothing of it.
        std::thread::scope(|s| s.spawn(|| log.sync().unwrap()).join().unwrap());
        // Dropped uncommitted: removed.
    }
    assert!(read_synced_head(dir.path()).unwrap() <= 1);
    log.sync().unwrap();
    assert_eq!(read_synced_head(dir.path()).unwrap(), 1);
    drop(log);
    assert_eq!(AuditLog::open(dir.path(), &region()).unwrap().head().seq, 1);
}
