//! The import index (`imports.rs`): an imported entry is found by its source event for the
//! subject whose ledger holds it, through a merge and an unmerge (an entry both halves keep is
//! found for each, and stays for one when the other is erased); an erasure takes its index
//! entries; a store written before the index existed is indexed when it opens.

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
    assert!(store.imports.scan_prefix(ann.as_bytes()).next().is_none(), "ann's index entries moved");
    // Imported after the merge, through no identifier: the unmerge cannot tell whose it is.
    let both_e3 = at(store.append_consent(&bea, imported(ConsentState::Granted, 210, "e3"), None).await.unwrap());

    // Unmerged: each half finds the entries it took back, and only those.
    let (kept, restored) = (SubjectId::from_bytes([7; 16]), SubjectId::from_bytes([8; 16]));
    store.unmerge(&bea, &ann, &kept, &restored, 300, None).await.unwrap();
    assert_eq!(found(&restored, &["e1", "e2", "e3"]).await, vec![Some(ann_e1), None, Some(both_e3)]);
    assert_eq!(found(&kept, &["e1", "e2", "e3"]).await, vec![Some(bea_e1), Some(bea_e2), Some(both_e3)]);
    assert!(store.imports.scan_prefix(bea.as_bytes()).next().is_none(), "the merged subject's entries went");

    // Erased: the half's index entries go with its ledger; the other half's stay, the entry
    // both kept included.
    store.erase(&restored, 400, &rights("erasure"), None).await.unwrap();
    assert!(store.imports.scan_prefix(restored.as_bytes()).next().is_none());
    assert_eq!(found(&kept, &["e1", "e2", "e3"]).await, vec![Some(bea_e1), Some(bea_e2), Some(both_e3)]);
    flush(&store).await;
    drop(store);
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let positions = store.imported_positions(&kept, &sources(&["e1", "e2"])).await.unwrap();
    assert_eq!(positions, vec![Some(bea_e1), Some(bea_e2)], "the index survives a reopen");
}

#[tokio::test]
async fn a_store_written_before_the_index_or_by_a_binary_without_it_is_indexed_when_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (ann, positions) = {
        let store = SledStore::open(dir.path(), &home()).unwrap();
        let ann = subject(&store, "ann@example.de").await;
        let mut positions = Vec::new();
        for (n, event) in ["e1", "e2"].into_iter().enumerate() {
            let written = store.append_consent(&ann, imported(ConsentState::Granted, 100 + n as i64, event), None);
            positions.push(Some(written.await.unwrap().0.sequence));
        }
        // As a store written before the index: no index entries, no position covered.
        store.imports.clear().unwrap();
        store.counters.remove(imports::IMPORT_INDEX_COVERS).unwrap();
        assert_eq!(store.imported_positions(&ann, &sources(&["e1", "e2"])).await.unwrap(), vec![None, None]);
        flush(&store).await;
        (ann, positions)
    };
    let store = SledStore::open(dir.path(), &home()).unwrap();
    assert_eq!(store.imported_positions(&ann, &sources(&["e1", "e2"])).await.unwrap(), positions);

    // A rollback to a binary without the index writes e3 (the ledger's counter moves, the
    // index's does not); back on this one, the store is indexed again.
    let e3 = store.append_consent(&ann, imported(ConsentState::Granted, 103, "e3"), None).await.unwrap().0.sequence;
    let before_e3 = store.counters.get(imports::IMPORT_INDEX_COVERS).unwrap().unwrap();
    assert_eq!(before_e3.as_ref(), e3.to_be_bytes(), "each write moves the index's position");
    store.imports.clear().unwrap();
    store.counters.insert(imports::IMPORT_INDEX_COVERS, &(e3 - 1).to_be_bytes()[..]).unwrap();
    flush(&store).await;
    drop(store);
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let found = store.imported_positions(&ann, &sources(&["e1", "e2", "e3"])).await.unwrap();
    let all = [positions.clone(), vec![Some(e3)]].concat();
    assert_eq!(found, all);

    // A rollback that only merged (or split, or erased): no consent written, but the journal
    // every such change is written to grew behind this binary's back.
    store.imports.clear().unwrap();
    flush(&store).await;
    drop(store);
    let journal = dir.path().join(super::super::backup::ERASURE_JOURNAL_FILE);
    let mut file = std::fs::OpenOptions::new().append(true).open(&journal).unwrap();
    std::io::Write::write_all(&mut file, format!("{} 500\n", SubjectId::from_bytes([5; 16])).as_bytes()).unwrap();
    drop(file);
    let store = SledStore::open(dir.path(), &home()).unwrap();
    assert_eq!(store.imported_positions(&ann, &sources(&["e1", "e2", "e3"])).await.unwrap(), all);
    // This binary's own merges and erasures keep the record: no rebuild at the next open.
    let bea = subject(&store, "bea.person@example.de").await;
    store.erase(&bea, 600, &rights("erasure"), None).await.unwrap();
    store.imports.clear().unwrap();
    flush(&store).await;
    drop(store);
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let kept = store.imported_positions(&ann, &sources(&["e1"])).await.unwrap();
    assert_eq!(kept, vec![None], "not rebuilt: the cleared index stays cleared");
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
async fn node_check_finds_an_import_index_that_disagrees_with_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let ann = {
        let store = SledStore::open(dir.path(), &home()).unwrap();
        let ann = subject(&store, "ann@example.de").await;
        for (n, event) in ["e1", "e2"].into_iter().enumerate() {
            store.append_consent(&ann, imported(ConsentState::Granted, 100 + n as i64, event), None).await.unwrap();
        }
        flush(&store).await;
        ann
    };
    let report = check::check(dir.path(), &home());
    assert!(report.is_sound() && report.notes.is_empty(), "{report:?}");
    {
        // One entry lost, as a bug or damage would lose it.
        let store = SledStore::open(dir.path(), &home()).unwrap();
        let lost = imports::index_key(&ann, &store.key(&ann).unwrap(), &source("e1"));
        assert!(store.imports.remove(lost).unwrap().is_some());
        flush(&store).await;
    }
    let report = check::check(dir.path(), &home());
    let found = report.problems.iter().any(|p| p.contains("tree imports") && p.contains(&ann.to_string()));
    assert!(found && report.problems.len() == 1, "{:?}", report.problems);
    assert!(report.problems[0].contains("1 imported source event(s) of its ledger missing"), "{:?}", report.problems);
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

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
