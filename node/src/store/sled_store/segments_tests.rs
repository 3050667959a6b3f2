//! Ledger segments (`segments.rs`): a write's entries share values, and every way an entry
//! leaves one (erasure, merge, unmerge) empties only its own slot, even when subjects sharing a
//! segment are erased at once; stores written before segments open with their ledger position and
//! fence earlier versions off; a damaged segment is refused, never misread, and blocks neither an
//! erasure nor another subject's reads; a counter behind the entries refuses writes.

use super::*;

/// `count` subjects of DE, registered with ids 1.., each with its own email.
async fn subjects(store: &SledStore, count: u8) -> Vec<SubjectId> {
    let de = Jurisdiction::parse("DE").unwrap();
    let mut out = Vec::new();
    for n in 1..=count {
        let id = ident(IdentifierKind::Email, &format!("person{n}@example.de"));
        let fresh = SubjectId::from_bytes([n; 16]);
        let claim = claim_all(std::slice::from_ref(&id));
        out.push(store.register(&de, &[id], fresh, 0, &claim, None).await.unwrap().subject);
    }
    out
}

/// One write of `per_subject` entries for each of `subjects`, interleaved as an import's batch
/// is not (each subject's entries together): positions run across subjects.
async fn write(store: &SledStore, subjects: &[SubjectId], per_subject: i64, from: i64) {
    let batch = subjects
        .iter()
        .map(|s| {
            let entries = (0..per_subject)
                .map(|n| {
                    let state = if n % 3 == 2 { ConsentState::Withdrawn } else { ConsentState::Granted };
                    (consent(state, from + n), None)
                })
                .collect();
            (*s, entries)
        })
        .collect();
    for written in store.append_consents(batch).await.unwrap() {
        assert!(written.iter().all(Result::is_ok), "{written:?}");
    }
}

fn segment_count(store: &SledStore) -> usize {
    store.segments.len()
}

fn positions(history: &[ConsentRecord]) -> Vec<u64> {
    history.iter().map(|r| r.sequence).collect()
}

#[tokio::test]
async fn a_writes_entries_share_segments_and_each_reads_back_for_its_subject() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let people = subjects(&store, 3).await;
    write(&store, &people, 40, 100).await;
    assert_eq!(segment_count(&store), 120usize.div_ceil(segments::SEGMENT_ENTRIES), "one key per segment");
    assert!(store.ledger.is_empty(), "no entry of its own");
    for (at, person) in people.iter().enumerate() {
        let history = store.consent_history(person).await.unwrap();
        let first = 1 + 40 * at as u64;
        assert_eq!(positions(&history), (first..first + 40).collect::<Vec<_>>(), "its own entries, in order");
        assert_eq!(history.iter().map(|r| r.captured_at).collect::<Vec<_>>(), (100..140).collect::<Vec<_>>());
    }
    // A position held by another subject's slot is not this subject's.
    assert!(store.find_entry(&people[0], 41).unwrap().is_none());
    let report = checked(store, dir.path()).await;
    assert!(report.is_sound() && report.notes.is_empty(), "{report:?}");
    assert_eq!(report.sealed_records, 120 + 3 * 2, "every entry opened (and the subjects' records, cells)");
}

#[tokio::test]
async fn an_erasure_empties_only_its_subjects_slots_and_the_last_takes_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let people = subjects(&store, 2).await;
    write(&store, &people, 5, 100).await;
    assert_eq!(segment_count(&store), 1);
    let bea = store.consent_history(&people[1]).await.unwrap();
    let erased = store.erase(&people[0], 500, &rights("erasure"), None).await.unwrap();
    assert_eq!(erased.consent_records, 5);
    assert_eq!(store.consent_history(&people[1]).await.unwrap(), bea, "the other subject's entries stay");
    let (key, value) = store.segments.first().unwrap().unwrap();
    let left = segments::segment_entries(&key, &value).unwrap();
    assert_eq!(
        left.iter().map(|(p, s, _)| (*p, *s)).collect::<Vec<_>>(),
        positions(&bea).into_iter().map(|p| (p, people[1])).collect::<Vec<_>>()
    );
    assert!(!value.windows(16).any(|w| w == people[0].as_bytes()), "not even the erased subject's id stays");
    store.erase(&people[1], 600, &rights("erasure"), None).await.unwrap();
    assert_eq!(segment_count(&store), 0, "the segment goes with its last entry");
    let report = checked(store, dir.path()).await;
    assert!(report.is_sound() && report.notes.is_empty(), "{report:?}");
}

/// Subjects sharing segments erased at once: each erasure rewrites the segments its entries are
/// in, and none writes back another's emptied slots or takes a kept subject's (the store's write
/// lock orders the erasures; this checks what they leave).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erasures_of_subjects_sharing_segments_at_once_each_take_only_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), &home()).unwrap());
    let people = subjects(&store, 16).await;
    // Each subject's 3 entries in a write of its own, round after round: every segment of a round
    // holds all 16 subjects.
    for round in 0..3 {
        let batch = people.iter().map(|s| (*s, vec![(consent(ConsentState::Granted, 100 + round), None)])).collect();
        store.append_consents(batch).await.unwrap();
    }
    assert_eq!(segment_count(&store), 3);
    let (erase, keep) = people.split_at(12);
    let tasks: Vec<_> = erase
        .iter()
        .enumerate()
        .map(|(n, s)| {
            let (store, s) = (Arc::clone(&store), *s);
            tokio::spawn(async move { store.erase(&s, 500 + n as i64, &rights("erasure"), None).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().consent_records, 3);
    }
    let mut left: Vec<(u64, SubjectId)> = Vec::new();
    for item in store.segments.iter() {
        let (k, v) = item.unwrap();
        left.extend(segments::segment_entries(&k, &v).unwrap().into_iter().map(|(p, s, _)| (p, s)));
    }
    left.sort();
    let mut kept: Vec<(u64, SubjectId)> = Vec::new();
    for person in keep {
        let history = store.consent_history(person).await.unwrap();
        assert_eq!(history.len(), 3, "a kept subject has all its entries");
        kept.extend(history.iter().map(|r| (r.sequence, *person)));
    }
    kept.sort();
    assert_eq!(left, kept, "the segments hold the kept subjects' entries and nothing else");
    let report = checked(Arc::into_inner(store).expect("the erasures are done"), dir.path()).await;
    assert!(report.is_sound() && report.notes.is_empty(), "{report:?}");
}

/// A merge takes the absorbed subject's entries out of their segments (they are re-sealed for the
/// subject it joins, as entries of their own); an unmerge writes both halves afresh. Every entry
/// is where one reading finds it, once.
#[tokio::test]
async fn a_merge_and_an_unmerge_move_entries_out_of_segments_and_keep_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let people = subjects(&store, 3).await;
    write(&store, &people, 4, 100).await;
    let (into, from, other) = (people[0], people[1], people[2]);
    let other_history = store.consent_history(&other).await.unwrap();
    let before = [store.consent_history(&into).await.unwrap(), store.consent_history(&from).await.unwrap()].concat();
    store.merge(&into, &from, 300, None).await.unwrap();
    let merged = store.consent_history(&into).await.unwrap();
    let mut want = positions(&before);
    want.sort_unstable();
    assert_eq!(positions(&merged), want, "both histories, in ledger order");
    assert_eq!(store.ledger.len(), 4, "the absorbed subject's entries have keys of their own now");
    assert_eq!(store.consent_history(&other).await.unwrap(), other_history);
    let (kept, restored) = (SubjectId::from_bytes([40; 16]), SubjectId::from_bytes([41; 16]));
    store.unmerge(&into, &from, &kept, &restored, 400, None).await.unwrap();
    assert_eq!(store.consent_history(&kept).await.unwrap().len(), 4);
    assert_eq!(store.consent_history(&restored).await.unwrap().len(), 4);
    assert_eq!(store.consent_history(&other).await.unwrap(), other_history, "the third subject's slots untouched");
    let (key, value) = store.segments.first().unwrap().unwrap();
    let left: Vec<SubjectId> =
        segments::segment_entries(&key, &value).unwrap().into_iter().map(|(_, s, _)| s).collect();
    assert_eq!(left, vec![other; 4], "only the third subject's entries stay in the segment");
    let report = checked(store, dir.path()).await;
    assert!(report.is_sound(), "{report:?}");
}

/// A store written before segments: entries of their own, and its ledger position at the key
/// those versions read. It opens with its history and its position, and leaves at that key a
/// value those versions refuse to open on (they read it at every open, as 8 bytes).
#[tokio::test]
async fn a_store_from_before_segments_opens_with_its_position_and_fences_earlier_versions_off() {
    let dir = tempfile::tempdir().unwrap();
    let (person, history) = {
        let store = SledStore::open(dir.path(), &home()).unwrap();
        let person = subjects(&store, 1).await[0];
        write(&store, &[person], 3, 100).await;
        let history = store.consent_history(&person).await.unwrap();
        to_layout_before_segments(&store, &[person]);
        flush(&store).await;
        (person, history)
    };
    let store = SledStore::open(dir.path(), &home()).unwrap();
    assert_eq!(store.consent_history(&person).await.unwrap(), history);
    let (next, _) = store.append_consent(&person, consent(ConsentState::Withdrawn, 200), None).await.unwrap();
    assert_eq!(next.sequence, 4, "positions continue after the earlier version's");
    assert_eq!(positions(&store.consent_history(&person).await.unwrap()), [1, 2, 3, 4], "both forms, in order");
    let fence = store.counters.get(heads::EARLIER_LEDGER_POSITION.0).unwrap().unwrap();
    assert_ne!(fence.len(), 8, "earlier versions read an 8-byte position here and refuse anything else");
    flush(&store).await;
    drop(store);
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let (next, _) = store.append_consent(&person, consent(ConsentState::Granted, 300), None).await.unwrap();
    assert_eq!(next.sequence, 5, "and survive a reopen");
}

/// A damaged segment fails closed: a boundary moved between two slots leaves both entries
/// failing authentication (never another entry's bytes read as this one's), slots that no longer
/// tile the value are refused whole with `Corrupt`, and `domicile node check` names both.
#[tokio::test]
async fn a_damaged_segment_is_refused_and_named_by_node_check() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let people = subjects(&store, 2).await;
    write(&store, &people, 2, 100).await;
    let (key, value) = store.segments.first().unwrap().unwrap();
    // Slots: count (2 bytes), then 4 × (subject 16, end 4): the first subject's two entries, the
    // second's two. The boundary between the first subject's entries moved by a byte.
    let end_of = |slot: usize| 2 + 20 * slot + 16 + 3;
    let mut shifted = value.to_vec();
    shifted[end_of(0)] ^= 0x01;
    store.segments.insert(&key, shifted).unwrap();
    let read = store.consent_history(&people[0]).await;
    assert!(matches!(read, Err(StoreError::Corrupt(_))), "{read:?}");
    assert_eq!(
        store.consent_history(&people[1]).await.unwrap().len(),
        2,
        "the other subject's slots read as they were"
    );
    let report = checked(store, dir.path()).await;
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("tree ledger_segments: 2 record(s)") && p.contains("fail authentication")),
        "{report:?}"
    );
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let mut untiled = value.to_vec();
    untiled[end_of(3)] ^= 0x01;
    store.segments.insert(&key, untiled).unwrap();
    for person in &people {
        let read = store.consent_history(person).await;
        assert!(matches!(read, Err(StoreError::Corrupt(_))), "{read:?}");
    }
    let report = checked(store, dir.path()).await;
    assert!(
        report.problems.iter().any(|p| p.contains("tree ledger_segments: a segment that does not decode")),
        "{report:?}"
    );
}

/// A damaged segment fails closed for its own entries only: a subject whose entries were moved to
/// keys of their own at positions after it still reads them, a merge of the damaged subject is
/// refused with nothing changed, and its erasure completes (its entries stay, unreadable under
/// the destroyed key, for `node check`), where it failed every retry before (found by a review).
#[tokio::test]
async fn a_damaged_segment_blocks_neither_an_erasure_nor_other_subjects_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let [w, x, y] = subjects(&store, 3).await[..] else { panic!("three subjects") };
    for person in [w, x, y] {
        write(&store, &[person], 2, 100).await;
    }
    store.merge(&y, &x, 200, None).await.unwrap();
    let y_history = store.consent_history(&y).await.unwrap();
    assert_eq!(positions(&y_history), [3, 4, 5, 6]);
    assert_eq!(store.ledger.len(), 2, "x's entries, re-sealed for y, on keys of their own at 3 and 4");
    let (key, value) = store.segments.first().unwrap().unwrap();
    assert_eq!(key.as_ref(), &segments::segment_key(1)[..], "w's segment, before them");
    // Its slot count damaged so that it seems to reach past x's old positions: it no longer
    // decodes, and a read of position 3 or 4 cannot tell from it alone whose they are.
    let mut damaged = value.to_vec();
    damaged[..2].copy_from_slice(&[0xff, 0xff]);
    store.segments.insert(&key, damaged).unwrap();
    assert_eq!(store.consent_history(&y).await.unwrap(), y_history, "read past w's damaged segment");
    assert!(matches!(store.consent_history(&w).await, Err(StoreError::Corrupt(_))));
    let merged = store.merge(&y, &w, 300, None).await;
    assert!(matches!(merged, Err(StoreError::Corrupt(_))), "{merged:?}");
    assert_eq!(store.consent_history(&y).await.unwrap(), y_history, "nothing changed");
    let erased = store.erase(&w, 400, &rights("erasure"), None).await.expect("the erasure completes");
    assert_eq!(erased.consent_records, 0, "its entries could not be found in the damaged segment");
    assert!(matches!(store.consent_history(&w).await, Err(StoreError::NotFound)), "w is gone");
    let report = checked(store, dir.path()).await;
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(report.problems[0].contains("tree ledger_segments: a segment that does not decode"), "{report:?}");
}

/// A ledger counter behind the entries stored (damage, a hand edit) refuses every consent write
/// rather than let a new segment replace or hide other subjects' entries (found by a review).
#[tokio::test]
async fn a_ledger_counter_behind_its_entries_refuses_writes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let people = subjects(&store, 2).await;
    write(&store, &people, 3, 100).await;
    let before = store.consent_history(&people[1]).await.unwrap();
    for behind in [0u64, 2, 5] {
        store.counters.insert(LEDGER_POSITION, &behind.to_be_bytes()[..]).unwrap();
        let written = store.append_consent(&people[0], consent(ConsentState::Granted, 300), None).await;
        assert!(matches!(written, Err(StoreError::Corrupt(_))), "counter at {behind}: {written:?}");
        assert_eq!(store.consent_history(&people[1]).await.unwrap(), before);
    }
    store.counters.insert(LEDGER_POSITION, &6u64.to_be_bytes()[..]).unwrap();
    let (next, _) = store.append_consent(&people[0], consent(ConsentState::Granted, 300), None).await.unwrap();
    assert_eq!(next.sequence, 7, "at its place again, writes go on");
}

/// Emptying a slot names the subject it is expected to hold: a place that names another subject
/// is refused, nothing emptied.
#[tokio::test]
async fn a_slot_is_emptied_only_for_the_subject_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let people = subjects(&store, 2).await;
    write(&store, &people, 1, 100).await;
    let (at, _) = store.find_entry(&people[1], 2).unwrap().expect("bea's entry");
    let segments::EntryAt::Segment { first, slot, .. } = at else { panic!("in a segment: {at:?}") };
    let wrong = segments::EntryAt::Segment { first, slot, subject: people[0] };
    let result = (&store.ledger, &store.segments)
        .transaction(|(ledger, segments)| segments::remove_entries(ledger, segments, &[wrong]));
    assert!(matches!(result, Err(sled::transaction::TransactionError::Abort(StoreError::Corrupt(_)))), "{result:?}");
    assert_eq!(store.consent_history(&people[1]).await.unwrap().len(), 1, "nothing emptied");
    (&store.ledger, &store.segments)
        .transaction(|(ledger, segments)| segments::remove_entries(ledger, segments, &[at]))
        .unwrap();
    assert!(store.find_entry(&people[1], 2).unwrap().is_none(), "its own place empties it");
    assert!(store.find_entry(&people[0], 1).unwrap().is_some(), "and only it");
}
