//! The ledger's layout (`ledger.rs`): an imported entry is found by its source event for the
//! subject whose ledger holds it, through a merge and an unmerge (an entry both halves keep is
//! found for each, and stays for one when the other is erased); an erasure takes its entries and
//! their listing; a store of the earlier layout is moved when it opens; `node check` finds a
//! directory that disagrees with the ledger.

use super::*;
use crate::store::ImportEvidence;

fn imported(state: ConsentState, captured_at: i64, event: &str) -> NewConsent {
    let mut consent = consent(state, captured_at);
    consent.evidence.import = Some(source(event));
    consent
}

fn source(event: &str) -> ImportEvidence {
    ImportEvidence {
        source_system: "onetrust".into(),
        source_event_id: event.into(),
        mapping_version: "map-1".into(),
        broadcast: false,
    }
}

/// Grants imported for `subject` from events e1 and e2, captured at 100 and 101.
async fn import_e1_e2(store: &SledStore, subject: &SubjectId) {
    for (n, event) in ["e1", "e2"].into_iter().enumerate() {
        store.append_consent(subject, imported(ConsentState::Granted, 100 + n as i64, event), None).await.unwrap();
    }
}

fn sources(events: &[&str]) -> Vec<(String, String)> {
    events.iter().map(|e| ("onetrust".to_owned(), (*e).to_owned())).collect()
}

#[tokio::test]
async fn imported_entries_are_found_for_the_subject_holding_them_through_merge_and_unmerge() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let ann = subject(&store, "ann@example.de").await;
    let bea = subject(&store, "bea.person@example.de").await;
    let at = |r: (ConsentRecord, u64)| r.0.sequence;
    let ann_e1 = at(store.append_consent(&ann, imported(ConsentState::Granted, 100, "e1"), None).await.unwrap());
    let bea_e2 = at(store.append_consent(&bea, imported(ConsentState::Granted, 110, "e2"), None).await.unwrap());
    // The same source event id imported for another subject is that subject's, not ann's.
    let bea_e1 = at(store.append_consent(&bea, imported(ConsentState::Withdrawn, 120, "e1"), None).await.unwrap());
    // A capture (not imported) is not in the index.
    store.append_consent(&ann, consent(ConsentState::Granted, 130), None).await.unwrap();
    let found = async |s: &SubjectId, events: &[&str]| store.imported_positions(s, &sources(events)).await.unwrap();
    assert_eq!(found(&ann, &["e1", "e2", "e3"]).await, vec![Some(ann_e1), None, None]);
    assert_eq!(found(&bea, &["e1", "e2"]).await, vec![Some(bea_e1), Some(bea_e2)]);

    // Merged: bea's ledger holds ann's entries at their positions, so they are bea's now.
    store.merge(&bea, &ann, 200, None).await.unwrap();
    assert_eq!(found(&bea, &["e1", "e2"]).await, vec![Some(ann_e1.min(bea_e1)), Some(bea_e2)]);
    let gone = store.imported_positions(&ann, &sources(&["e1"])).await;
    assert!(matches!(gone, Err(StoreError::NotFound)), "ann is gone: {gone:?}");
    assert!(store.directory.scan_prefix(ann.as_bytes()).next().is_none(), "ann's listing moved");
    assert!(!ledger_entries(&store).iter().any(|(s, _)| *s == ann), "and ann's entries");
    // Imported after the merge, through no identifier: the unmerge cannot tell whose it is.
    let both_e3 = at(store.append_consent(&bea, imported(ConsentState::Granted, 210, "e3"), None).await.unwrap());

    // Unmerged: each half finds the entries it took back, and only those.
    let (kept, restored) = (SubjectId::from_bytes([7; 16]), SubjectId::from_bytes([8; 16]));
    store.unmerge(&bea, &ann, &kept, &restored, 300, None).await.unwrap();
    assert_eq!(found(&restored, &["e1", "e2", "e3"]).await, vec![Some(ann_e1), None, Some(both_e3)]);
    assert_eq!(found(&kept, &["e1", "e2", "e3"]).await, vec![Some(bea_e1), Some(bea_e2), Some(both_e3)]);
    assert!(store.directory.scan_prefix(bea.as_bytes()).next().is_none(), "the merged subject's listing went");
    assert!(!ledger_entries(&store).iter().any(|(s, _)| *s == bea), "and its entries");

    // Erased: the half's index entries go with its ledger; the other half's stay, the entry
    // both kept included.
    store.erase(&restored, 400, &rights("erasure"), None).await.unwrap();
    assert!(store.directory.scan_prefix(restored.as_bytes()).next().is_none());
    assert!(!ledger_entries(&store).iter().any(|(s, _)| *s == restored));
    assert!(ledger_entries(&store).contains(&(kept, both_e3)), "the entry both kept stays for the other");
    assert_eq!(found(&kept, &["e1", "e2", "e3"]).await, vec![Some(bea_e1), Some(bea_e2), Some(both_e3)]);
    flush(&store).await;
    drop(store);
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let positions = store.imported_positions(&kept, &sources(&["e1", "e2"])).await.unwrap();
    assert_eq!(positions, vec![Some(bea_e1), Some(bea_e2)], "the index survives a reopen");
}

/// The subjects the ledger holds entries of (single or in segments), with their positions.
fn ledger_entries(store: &SledStore) -> Vec<(SubjectId, u64)> {
    let singles =
        store.ledger.iter().keys().map(|k| ledger::parse_entry_key(&k.unwrap()).map(|(p, s)| (s, p)).unwrap());
    let in_segments = store.segments.iter().flat_map(|item| {
        let (k, v) = item.unwrap();
        segments::segment_entries(&k, &v).unwrap().into_iter().map(|(p, s, _)| (s, p))
    });
    singles.chain(in_segments).collect()
}

/// Removes `subject`'s entry at `position`, wherever it is stored.
fn remove_entry(store: &SledStore, subject: &SubjectId, position: u64) {
    let (at, _) = store.find_entry(subject, position).unwrap().expect("the entry");
    (&store.ledger, &store.segments)
        .transaction(|(ledger, segments)| segments::remove_entries(ledger, segments, &[at]))
        .unwrap();
}

/// Puts `subjects`' ledger entries back in the earlier layout (tree `consent`, keyed subject id
/// ‖ position, the same sealed bytes; an entry left in tree `imports`, the index that layout kept
/// beside it), as an earlier version of the node left them.
fn to_earlier_layout(store: &SledStore, subjects: &[SubjectId]) {
    let old = store.db.open_tree("consent").unwrap();
    for subject in subjects {
        for (position, sealed) in store.sealed_ledger(subject).unwrap() {
            old.insert(consent_key(subject, position), sealed).unwrap();
            remove_entry(store, subject, position);
        }
        for chunk in store.directory.scan_prefix(subject.as_bytes()).keys() {
            store.directory.remove(chunk.unwrap()).unwrap();
        }
    }
    store.db.open_tree("imports").unwrap().insert([1u8; 32], &[0u8; 8][..]).unwrap();
}

#[tokio::test]
async fn a_store_of_the_earlier_layout_is_moved_to_the_position_ordered_one_when_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (ann, bea, ann_history, bea_history) = {
        let store = SledStore::open(dir.path(), &home()).unwrap();
        let ann = subject(&store, "ann@example.de").await;
        let bea = subject(&store, "bea.person@example.de").await;
        import_e1_e2(&store, &ann).await;
        store.append_consent(&ann, consent(ConsentState::Withdrawn, 110), None).await.unwrap();
        store.append_consent(&bea, imported(ConsentState::Granted, 120, "e1"), None).await.unwrap();
        let ann_history = store.consent_history(&ann).await.unwrap();
        let bea_history = store.consent_history(&bea).await.unwrap();
        to_earlier_layout(&store, &[ann, bea]);
        assert!(ledger_entries(&store).is_empty());
        flush(&store).await;
        (ann, bea, ann_history, bea_history)
    };
    let store = SledStore::open(dir.path(), &home()).unwrap();
    assert_eq!(store.consent_history(&ann).await.unwrap(), ann_history, "every entry moved, in order");
    assert_eq!(store.consent_history(&bea).await.unwrap(), bea_history);
    assert!(store.db.open_tree("consent").unwrap().is_empty(), "nothing left in the earlier layout");
    assert!(store.db.open_tree("imports").unwrap().is_empty(), "the earlier index is gone");
    let positions = |history: &[ConsentRecord]| history.iter().map(|r| Some(r.sequence)).collect::<Vec<_>>();
    // Each imported entry is found by its source event: a re-import writes nothing again.
    let found = store.imported_positions(&ann, &sources(&["e1", "e2", "e3"])).await.unwrap();
    assert_eq!(found, [positions(&ann_history)[..2].to_vec(), vec![None]].concat());
    assert_eq!(store.imported_positions(&bea, &sources(&["e1"])).await.unwrap(), positions(&bea_history));
    let again = store.append_consents(vec![(ann, vec![(imported(ConsentState::Granted, 100, "e1"), None)])]).await;
    assert!(matches!(again.as_deref(), Ok([e]) if matches!(e.as_slice(), [Err(StoreError::Replayed)])), "{again:?}");
    // Written in the new layout after it, in order.
    let (next, _) = store.append_consent(&ann, consent(ConsentState::Granted, 130), None).await.unwrap();
    assert!(next.sequence > ann_history.last().unwrap().sequence);
    assert_eq!(store.consent_history(&ann).await.unwrap().len(), 4);
    let report = checked(store, dir.path()).await;
    assert!(report.is_sound() && report.notes.is_empty(), "{report:?}");
}

/// A subject with entries in both layouts (written by this version, then by an earlier one after
/// a rollback) has them all, each listed once.
#[tokio::test]
async fn a_subject_with_entries_in_both_layouts_has_them_all_after_the_move() {
    let dir = tempfile::tempdir().unwrap();
    let (ann, early) = {
        let store = SledStore::open(dir.path(), &home()).unwrap();
        let ann = subject(&store, "ann@example.de").await;
        store.append_consent(&ann, imported(ConsentState::Granted, 100, "e1"), None).await.unwrap();
        to_earlier_layout(&store, &[ann]);
        store.append_consent(&ann, imported(ConsentState::Withdrawn, 110, "e2"), None).await.unwrap();
        let early: Vec<u64> = ledger_entries(&store).into_iter().map(|(_, p)| p).collect();
        assert_eq!(early.len(), 1, "one entry in each layout");
        flush(&store).await;
        (ann, early)
    };
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let history: Vec<u64> = store.consent_history(&ann).await.unwrap().iter().map(|r| r.sequence).collect();
    assert_eq!(history.len(), 2);
    assert!(history.contains(&early[0]));
    assert_eq!(store.directory(&ann).unwrap().positions(), history, "each listed once");
    let found = store.imported_positions(&ann, &sources(&["e1", "e2"])).await.unwrap();
    assert_eq!(found, history.iter().map(|p| Some(*p)).collect::<Vec<_>>());
    let in_force = store.read_current_consent(&ann, Purpose::Marketing, Channel::Email).unwrap();
    assert_eq!(in_force.map(|c| c.state), Some(ConsentState::Withdrawn));
}

/// Entries of many subjects written in one call go in ledger order, each subject's directory
/// past a chunk's length listing all of them.
#[tokio::test]
async fn a_long_history_spans_directory_chunks_and_reads_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let ann = subject(&store, "ann@example.de").await;
    let bea = subject(&store, "bea.person@example.de").await;
    let total = ledger::CHUNK_ITEMS * 2 + 3;
    let events: Vec<String> = (0..total).map(|n| format!("e{n}")).collect();
    for batch in events.chunks(10) {
        let rows = |who| {
            batch
                .iter()
                .enumerate()
                .map(move |(n, e)| (imported(ConsentState::Granted, 100 + n as i64, e), who))
                .collect()
        };
        let written = store.append_consents(vec![(ann, rows(None)), (bea, rows(None))]).await.unwrap();
        assert!(written.iter().flatten().all(Result::is_ok), "{written:?}");
    }
    assert_eq!(store.directory.scan_prefix(ann.as_bytes()).count(), 3, "three chunks");
    let history = store.consent_history(&ann).await.unwrap();
    assert_eq!(history.len(), total);
    assert!(history.windows(2).all(|w| w[0].sequence < w[1].sequence), "in ledger order");
    let all: Vec<&str> = events.iter().map(String::as_str).collect();
    let found = store.imported_positions(&ann, &sources(&all)).await.unwrap();
    assert_eq!(found, history.iter().map(|r| Some(r.sequence)).collect::<Vec<_>>());
    // A few events sought (compared with each listed entry, not hashed), in every chunk, one
    // twice, one never imported.
    let last = total - 1;
    let few = [format!("e{last}"), "e0".to_owned(), "nope".to_owned(), "e40".to_owned(), "e0".to_owned()];
    let few: Vec<&str> = few.iter().map(String::as_str).collect();
    let at = |n: usize| Some(history[n].sequence);
    assert_eq!(store.imported_positions(&ann, &sources(&few)).await.unwrap(), [at(last), at(0), None, at(40), at(0)]);
    // A write of an event listed in the first chunk, with new ones after it: refused whole.
    let again = store
        .append_consents(vec![(
            ann,
            vec![
                (imported(ConsentState::Withdrawn, 900, "new-1"), None),
                (imported(ConsentState::Withdrawn, 901, "e3"), None),
            ],
        )])
        .await
        .unwrap();
    assert!(
        matches!(again.as_slice(), [entries] if entries.iter().all(|e| matches!(e, Err(StoreError::Replayed)))),
        "{again:?}"
    );
    assert_eq!(store.consent_history(&ann).await.unwrap().len(), total, "nothing written");
    let keys = ledger_entries(&store);
    assert!(keys.windows(2).all(|w| w[0].1 <= w[1].1), "the tree is in position order");
    let report = checked(store, dir.path()).await;
    assert!(report.is_sound() && report.notes.is_empty(), "{report:?}");
}

/// An import that resolved a subject before a merge moved its entry, and writes again for the
/// subject its identifier names now, carries another idempotency key: the index, checked under
/// the write lock, still refuses the second copy.
#[tokio::test]
async fn an_entry_moved_by_a_merge_is_not_written_again_for_the_subject_it_moved_to() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let ann = subject(&store, "ann@example.de").await;
    let bea = subject(&store, "bea.person@example.de").await;
    store.append_consent(&ann, imported(ConsentState::Granted, 100, "e1"), None).await.unwrap();
    store.merge(&bea, &ann, 200, None).await.unwrap();
    let tag = Idempotency { key: [1; 32], fingerprint: [2; 32], at: 0 };
    let again = store.append_consents(vec![(bea, vec![(imported(ConsentState::Granted, 100, "e1"), Some(tag))])]).await;
    assert!(
        matches!(again.as_deref(), Ok([entries]) if matches!(entries.as_slice(), [Err(StoreError::Replayed)])),
        "{again:?}"
    );
    // Another event of the same call's subject is written.
    let tag = Idempotency { key: [3; 32], ..tag };
    let other = store.append_consents(vec![(bea, vec![(imported(ConsentState::Granted, 110, "e2"), Some(tag))])]).await;
    assert!(matches!(other.as_deref(), Ok([entries]) if matches!(entries.as_slice(), [Ok(_)])), "{other:?}");
    assert_eq!(store.consent_history(&bea).await.unwrap().len(), 2);
}

#[tokio::test]
async fn node_check_finds_a_directory_that_disagrees_with_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let ann = {
        let store = SledStore::open(dir.path(), &home()).unwrap();
        let ann = subject(&store, "ann@example.de").await;
        import_e1_e2(&store, &ann).await;
        flush(&store).await;
        ann
    };
    let report = check::check(dir.path(), &home());
    assert!(report.is_sound() && report.notes.is_empty(), "{report:?}");
    {
        // One entry's source digest lost, as a bug or damage would lose it.
        let store = SledStore::open(dir.path(), &home()).unwrap();
        let directory = store.directory(&ann).unwrap();
        let mut listed = directory.listed();
        assert!(listed[0].source.take().is_some());
        for chunk in store.directory.scan_prefix(ann.as_bytes()).keys() {
            store.directory.remove(chunk.unwrap()).unwrap();
        }
        for (k, v) in ledger::Directory::fresh(&ann, &listed) {
            store.directory.insert(k, v).unwrap();
        }
        flush(&store).await;
    }
    let report = check::check(dir.path(), &home());
    let found = report.problems.iter().any(|p| p.contains("tree ledger_dir") && p.contains(&ann.to_string()));
    assert!(found && report.problems.len() == 1, "{:?}", report.problems);
    let expected =
        "1 ledger entr(ies) not listed as they are (unread, or a re-import would write them again), 1 listing(s)";
    assert!(report.problems[0].contains(expected), "{:?}", report.problems);
    {
        // An entry not listed at all: no read finds it.
        let store = SledStore::open(dir.path(), &home()).unwrap();
        for chunk in store.directory.scan_prefix(ann.as_bytes()).keys() {
            store.directory.remove(chunk.unwrap()).unwrap();
        }
        flush(&store).await;
    }
    let report = check::check(dir.path(), &home());
    assert!(report.problems.iter().any(|p| p.contains("2 ledger entr(ies) not listed")), "{:?}", report.problems);
}

/// An imported grant without broadcast is not a change event (`change::announced`): none is
/// stored, yet it is in force for decisions at once. An imported withdrawal, and a grant imported
/// with broadcast, are events.
#[tokio::test]
async fn an_imported_grant_without_broadcast_stores_no_change_event_but_is_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let ann = subject(&store, "ann@example.de").await;
    let events = store.events.len();
    let (_, event) = store.append_consent(&ann, imported(ConsentState::Granted, 100, "e1"), None).await.unwrap();
    assert_eq!((event, store.events.len()), (0, events), "a quiet grant is no event");
    let in_force = store.read_current_consent(&ann, Purpose::Marketing, Channel::Email).unwrap();
    assert_eq!(in_force.map(|c| c.state), Some(ConsentState::Granted), "and yet in force");
    let (_, event) = store.append_consent(&ann, imported(ConsentState::Withdrawn, 110, "e2"), None).await.unwrap();
    assert_eq!(store.events.len(), events + 1, "an imported withdrawal is announced");
    assert_eq!(store.last_event().await.unwrap(), Some(event));
    let mut loud = imported(ConsentState::Granted, 120, "e3");
    if let Some(import) = loud.evidence.import.as_mut() {
        import.broadcast = true;
    }
    store.append_consent(&ann, loud, None).await.unwrap();
    assert_eq!(store.events.len(), events + 2, "a grant imported with broadcast is announced");
    let in_force = store.read_current_consent(&ann, Purpose::Marketing, Channel::Email).unwrap();
    assert_eq!(in_force.map(|c| c.state), Some(ConsentState::Granted));
}

/// Quiet imported grants are no change events, so `store.head` does not move for them;
/// `ledger.head` does. A database that lost them from its end (here: the files from before the
/// import, with the heads a flush wrote after it) is refused at open, and `node check` would
/// report it, where `store.head` alone let it start without them.
#[tokio::test]
async fn a_database_that_lost_quiet_imports_from_its_end_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (live, before) = (dir.path().join("live"), dir.path().join("before"));
    let store = SledStore::open(&live, &home()).unwrap();
    let ann = subject(&store, "ann@example.de").await;
    store.flush().await.unwrap();
    drop(store);
    copy_dir(&live, &before);
    let store = SledStore::open(&live, &home()).unwrap();
    for (n, at) in [(1, 100), (2, 110)] {
        store.append_consent(&ann, imported(ConsentState::Granted, at, &format!("e{n}")), None).await.unwrap();
    }
    store.flush().await.unwrap();
    drop(store);
    let store_head = crate::store::sled_store::heads::read_store_head;
    assert_eq!(store_head(&before).unwrap(), store_head(&live).unwrap(), "no event moved store.head");
    for head in [super::heads::STORE_HEAD_FILE, super::heads::LEDGER_HEAD_FILE] {
        std::fs::copy(live.join(head), before.join(head)).unwrap();
    }
    let Err(refused) = SledStore::open(&before, &home()) else {
        panic!("a database without flushed entries is refused");
    };
    assert!(refused.to_string().contains("consent ledger ends at position"), "{refused}");
    SledStore::open(&live, &home()).expect("the whole database opens");
}

/// An entry both halves of an unmerge kept (imported after the merge, through no identifier) is
/// one entry again when they are merged once more: read once, listed once.
#[tokio::test]
async fn an_entry_both_halves_kept_is_one_entry_after_they_merge_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let ann = subject(&store, "ann@example.de").await;
    let bea = subject(&store, "bea.person@example.de").await;
    store.append_consent(&ann, imported(ConsentState::Granted, 100, "e1"), None).await.unwrap();
    store.merge(&bea, &ann, 200, None).await.unwrap();
    let both = store.append_consent(&bea, imported(ConsentState::Granted, 210, "e2"), None).await.unwrap().0.sequence;
    let (kept, restored) = (SubjectId::from_bytes([7; 16]), SubjectId::from_bytes([8; 16]));
    store.unmerge(&bea, &ann, &kept, &restored, 300, None).await.unwrap();
    for half in [kept, restored] {
        assert!(store.consent_history(&half).await.unwrap().iter().any(|r| r.sequence == both));
    }
    store.merge(&kept, &restored, 400, None).await.unwrap();
    let history: Vec<u64> = store.consent_history(&kept).await.unwrap().iter().map(|r| r.sequence).collect();
    assert_eq!(history.iter().filter(|p| **p == both).count(), 1, "{history:?}");
    assert_eq!(store.directory(&kept).unwrap().positions(), history);
    assert_eq!(store.imported_positions(&kept, &sources(&["e2"])).await.unwrap(), vec![Some(both)]);
    let report = checked(store, dir.path()).await;
    assert!(report.is_sound(), "{report:?}");
}

/// Found by a review: the move of an earlier-layout store failed its open on one entry that does
/// not open (damage), keeping the region down. It moves the entry without a digest instead,
/// `node check` names the damage, and the layout is fenced off from earlier binaries.
#[tokio::test]
async fn an_entry_that_does_not_open_is_moved_and_named_by_node_check_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let ann = {
        let store = SledStore::open(dir.path(), &home()).unwrap();
        let ann = subject(&store, "ann@example.de").await;
        import_e1_e2(&store, &ann).await;
        to_earlier_layout(&store, &[ann]);
        let old = store.db.open_tree("consent").unwrap();
        let (k, v) = old.first().unwrap().unwrap();
        let mut damaged = v.to_vec();
        *damaged.last_mut().unwrap() ^= 1;
        old.insert(k, damaged).unwrap();
        flush(&store).await;
        ann
    };
    let report = check::check(dir.path(), &home());
    assert!(
        report.notes.iter().any(|n| n.contains("tree consent: 2 ledger entr(ies) in the earlier layout")),
        "{report:?}"
    );
    assert!(
        report.problems.iter().any(|p| p.contains("tree consent: 1 record(s)") && p.contains("fail authentication"))
    );
    let store = SledStore::open(dir.path(), &home()).expect("opens");
    assert_eq!(store.directory(&ann).unwrap().positions().len(), 2, "both moved");
    let fence = store.counters.get(ledger::EARLIER_LAYOUT_FENCE.0).unwrap().unwrap();
    assert_ne!(fence.len(), 8, "earlier binaries read an 8-byte position here and refuse anything else");
    let report = checked(store, dir.path()).await;
    assert!(
        report.problems.iter().any(|p| p.contains("tree ledger: 1 record(s)") && p.contains("fail authentication"))
    );
}

/// Found by a review: an erasure read the subject's directory after destroying its key, so a
/// chunk that does not decode failed it and every retry, leaving the subject's metadata and
/// links. It completes; the entries it could not find stay, unreadable, for `node check`.
#[tokio::test]
async fn an_erasure_completes_when_the_directory_does_not_decode() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let ann = subject(&store, "ann@example.de").await;
    store.append_consent(&ann, imported(ConsentState::Granted, 100, "e1"), None).await.unwrap();
    let chunk = store.directory.scan_prefix(ann.as_bytes()).keys().next().unwrap().unwrap();
    store.directory.insert(chunk, &[9u8; 3][..]).unwrap();
    store.erase(&ann, 200, &rights("erasure"), None).await.expect("erased");
    assert!(matches!(store.consent_history(&ann).await, Err(StoreError::NotFound)));
    assert!(store.directory.scan_prefix(ann.as_bytes()).next().is_none(), "its chunks go, decoded or not");
    let report = checked(store, dir.path()).await;
    assert!(report.is_sound(), "{report:?}");
    assert!(
        report.notes.iter().any(|n| n.contains("tree ledger_segments: 1 record(s)") && n.contains(&ann.to_string()))
    );
}

/// Found by a review: two parts of one batch for the same subject each listed their entries on
/// the same chunk, so the second's listing replaced the first's.
#[tokio::test]
async fn a_subject_written_twice_in_one_batch_lists_both_parts() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let ann = subject(&store, "ann@example.de").await;
    let written = store
        .append_consents(vec![
            (ann, vec![(imported(ConsentState::Granted, 100, "e1"), None)]),
            (ann, vec![(imported(ConsentState::Withdrawn, 110, "e2"), None)]),
        ])
        .await
        .unwrap();
    assert!(written.iter().flatten().all(Result::is_ok), "{written:?}");
    assert_eq!(store.consent_history(&ann).await.unwrap().len(), 2);
    let found = store.imported_positions(&ann, &sources(&["e1", "e2"])).await.unwrap();
    assert!(found.iter().all(Option::is_some), "{found:?}");
    flush(&store).await;
    drop(store);
    assert!(check::check(dir.path(), &home()).is_sound());
}

/// Found by a review: a history read outside the write lock, racing a merge of its subject,
/// found an entry its directory listed gone and answered "corrupt". It answers the history as it
/// was or after (empty, then the subject gone: not found), never corrupt.
#[tokio::test]
async fn a_history_read_racing_merges_is_never_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(SledStore::open(dir.path(), &home()).unwrap());
    let into = subject(&store, "into@example.de").await;
    for round in 0..40 {
        let from = subject(&store, &format!("from{round}@example.de")).await;
        for n in 0..40 {
            store.append_consent(&from, consent(ConsentState::Granted, 100 + n), None).await.unwrap();
        }
        let reader = {
            let store = store.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                loop {
                    match runtime.block_on(store.consent_history(&from)) {
                        // Empty: merged, its key not yet destroyed (as before this layout).
                        Ok(history) => assert!(matches!(history.len(), 0 | 40), "{}", history.len()),
                        Err(StoreError::NotFound) => return,
                        Err(e) => panic!("round {round}: {e:?}"),
                    }
                }
            })
        };
        store.merge(&into, &from, 200, None).await.unwrap();
        reader.join().unwrap();
    }
}

/// An import's check keeps the subject's directory in the read cache for its write to find; a
/// write in between (this import's own earlier call, or a merge bringing the event) drops it, so
/// the write checks what is stored and refuses the event it holds.
#[tokio::test]
async fn a_directory_kept_by_an_imports_check_is_dropped_by_any_write_of_its_subject() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let ann = subject(&store, "ann@example.de").await;
    let bea = subject(&store, "bea.person@example.de").await;
    let refused = async |events: &[&str]| {
        let rows = events.iter().map(|e| (imported(ConsentState::Granted, 100, e), None)).collect();
        let again = store.append_consents(vec![(ann, rows)]).await.unwrap();
        matches!(again.as_slice(), [entries] if entries.iter().all(|e| matches!(e, Err(StoreError::Replayed))))
    };
    assert_eq!(store.imported_positions(&ann, &sources(&["e1"])).await.unwrap(), vec![None]);
    store.append_consent(&ann, imported(ConsentState::Granted, 100, "e1"), None).await.unwrap();
    assert!(refused(&["e1"]).await, "written after the check: refused");

    store.append_consent(&bea, imported(ConsentState::Granted, 110, "e2"), None).await.unwrap();
    assert_eq!(store.imported_positions(&ann, &sources(&["e2"])).await.unwrap(), vec![None]);
    store.merge(&ann, &bea, 200, None).await.unwrap();
    assert!(refused(&["e2"]).await, "brought by a merge after the check: refused");
    assert_eq!(store.consent_history(&ann).await.unwrap().len(), 2);
}
