//! A gone subject's change events go with it (`retire.rs`): by an unmerge, and, for a store
//! written before the index, at its first open.

use super::*;

// (`subject` makes its id from the e-mail address's length: each here has its own.)

/// The subjects the events of `store` name, in order, with their kinds.
async fn named(store: &SledStore) -> Vec<(SubjectId, Change)> {
    let events = store.events_page(None, usize::MAX).await.unwrap();
    events.into_iter().map(|e| (e.subject, e.change)).collect()
}

fn kinds_of(events: &[(SubjectId, Change)], subject: &SubjectId) -> Vec<&'static str> {
    events
        .iter()
        .filter(|(s, _)| s == subject)
        .map(|(_, c)| match c {
            Change::Registered => "registered",
            Change::Consent { .. } => "consent",
            Change::Erased => "erased",
            Change::LinksRemoved => "links removed",
            Change::Restricted { .. } => "restricted",
        })
        .collect()
}

#[tokio::test]
async fn an_unmerge_retires_the_merged_subjects_events_and_announces_both_halves() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let ann = subject(&store, "ann.retire@example.de").await;
    let bea = subject(&store, "bea.retired@example.de").await;
    store.append_consent(&ann, consent(ConsentState::Granted, 100), None).await.unwrap();
    store.merge(&bea, &ann, 200, None).await.unwrap();
    store.append_consent(&bea, consent(ConsentState::Withdrawn, 250), None).await.unwrap();
    store.flush().await.unwrap();
    let before = named(&store).await;
    assert_eq!(kinds_of(&before, &ann), ["erased"], "the merge retired ann's events: {before:?}");
    assert!(kinds_of(&before, &bea).len() > 2);

    let (kept, restored) = (SubjectId::from_bytes([7; 16]), SubjectId::from_bytes([8; 16]));
    store.unmerge(&bea, &ann, &kept, &restored, 300, None).await.unwrap();
    store.flush().await.unwrap();
    let after = named(&store).await;
    assert_eq!(kinds_of(&after, &bea), ["erased"], "the merged subject's history went with it: {after:?}");
    assert_eq!(kinds_of(&after, &ann), ["erased"]);
    assert_eq!(kinds_of(&after, &kept).first(), Some(&"registered"));
    assert_eq!(kinds_of(&after, &restored).first(), Some(&"registered"));

    // The halves' own events go when each is erased, once its ERASED is durable: removed before,
    // a watcher could page past them and a crash bring them back with the erasure undone.
    store.erase(&restored, 400, &rights("erasure"), None).await.unwrap();
    assert_eq!(kinds_of(&named(&store).await, &restored), ["registered", "consent", "erased"]);
    store.flush().await.unwrap();
    assert_eq!(kinds_of(&named(&store).await, &restored), ["erased"]);
    assert!(kinds_of(&named(&store).await, &kept).len() > 1, "the other half keeps its events");
}

/// A store last written by a binary without the index (simulated: the index removed) keeps the
/// events of subjects it erased; the first open with the index removes them, once, and a later
/// erasure finds the events the old binary wrote. So does an open after an older binary wrote
/// again behind this one.
#[tokio::test]
async fn a_store_from_before_the_index_is_cleaned_up_at_its_first_open() {
    let dir = tempfile::tempdir().unwrap();
    let (gone, older, stays) = {
        let store = SledStore::open(dir.path(), &home()).unwrap();
        let gone = subject(&store, "gone.before@example.de").await;
        let older = subject(&store, "older.events@example.de").await;
        let stays = subject(&store, "stays.before.it@example.de").await;
        store.append_consent(&gone, consent(ConsentState::Granted, 100), None).await.unwrap();
        store.append_consent(&older, consent(ConsentState::Granted, 100), None).await.unwrap();
        // What an older binary's erasure left: the erased subject's earlier events, unindexed.
        let earlier: Vec<(sled::IVec, sled::IVec)> = store.events.iter().collect::<Result<_, _>>().unwrap();
        store.erase(&gone, 200, &rights("erasure"), None).await.unwrap();
        store.flush().await.unwrap();
        for (key, value) in earlier {
            store.events.insert(key, value).unwrap();
        }
        // (After the last flush, which notes what the index covers; written out on drop.)
        store.event_index.clear().unwrap();
        store.retiring.clear().unwrap();
        (gone, older, stays)
    };
    {
        let store = SledStore::open(dir.path(), &home()).unwrap();
        let events = named(&store).await;
        assert_eq!(kinds_of(&events, &gone), ["erased"], "{events:?}");
        assert_eq!(kinds_of(&events, &older), ["registered", "consent"]);
        assert_eq!(kinds_of(&events, &stays), ["registered"]);
        store.erase(&older, 300, &rights("erasure"), None).await.unwrap();
        store.flush().await.unwrap();
        assert_eq!(kinds_of(&named(&store).await, &older), ["erased"], "events from before the index are found");
        store.append_consent(&stays, consent(ConsentState::Granted, 310), None).await.unwrap();
        store.flush().await.unwrap();
        // An older binary again, after this one stopped: it erases `stays` (its ERASED unindexed;
        // sled writes it out when the store is dropped).
        let sequence = store.last_event().await.unwrap().unwrap() + 1;
        let links = store.meta_entry(&stays).unwrap().unwrap().links;
        let erased = ChangeEvent { sequence, at: 320, subject: stays, links, change: Change::Erased };
        store.events.insert(sequence.to_be_bytes(), encode(&erased).unwrap()).unwrap();
    }
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let events = named(&store).await;
    assert_eq!(kinds_of(&events, &stays), ["erased"], "what the older binary retired since goes: {events:?}");
    assert_eq!(kinds_of(&events, &older), ["erased"]);
    drop(store);
    let store = SledStore::open(dir.path(), &home()).unwrap();
    assert_eq!(named(&store).await, events, "reopened: nothing else goes");
}

/// `domicile node check` finds an event the index misses (its subject's erasure would leave it)
/// and a retired subject's event that remains; a pending removal is not damage.
#[tokio::test]
async fn node_check_finds_an_unindexed_event_and_a_retired_subjects_event_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let problems = || super::super::check::check(dir.path(), &home()).problems;
    let (gone, stays, earlier) = {
        let store = SledStore::open(dir.path(), &home()).unwrap();
        let gone = subject(&store, "gone.check@example.de").await;
        let stays = subject(&store, "stays.checked@example.de").await;
        store.append_consent(&gone, consent(ConsentState::Granted, 100), None).await.unwrap();
        let earlier: Vec<(sled::IVec, sled::IVec)> = store.events.iter().collect::<Result<_, _>>().unwrap();
        store.erase(&gone, 200, &rights("erasure"), None).await.unwrap();
        store.flush().await.unwrap();
        (gone, stays, earlier)
    };
    assert_eq!(problems(), Vec::<String>::new());

    {
        let db = super::heads::sled_config(&dir.path().join("db")).unwrap().open().unwrap();
        let events = db.open_tree("events").unwrap();
        for (key, value) in &earlier {
            events.insert(key, value).unwrap();
        }
        db.flush().unwrap();
    }
    let found = problems();
    assert!(found.iter().any(|p| p.contains(&format!("retired subject {gone} remain"))), "{found:?}");

    {
        let db = super::heads::sled_config(&dir.path().join("db")).unwrap().open().unwrap();
        let events = db.open_tree("events").unwrap();
        for (key, value) in &earlier {
            if decode::<ChangeEvent>(value).unwrap().subject == gone {
                events.remove(key).unwrap();
            }
        }
        let index = db.open_tree("event_subjects").unwrap();
        let entry = index.scan_prefix(stays.as_bytes()).keys().next().unwrap().unwrap();
        index.remove(entry).unwrap();
        db.flush().unwrap();
    }
    let found = problems();
    assert!(found.iter().any(|p| p.contains(&format!("subject {stays} not indexed"))), "{found:?}");
    assert!(!found.iter().any(|p| p.contains("remain")), "{found:?}");
}

/// A record left under an erased subject (as a capture that checked its subject before the
/// erasure and committed after it would leave, were it not under the write lock) is unreadable,
/// its key destroyed; `domicile node check` names it as a note, not as damage, and says nothing
/// of the subjects that are whole.
#[tokio::test]
async fn node_check_notes_a_record_left_under_an_erased_subject() {
    let dir = tempfile::tempdir().unwrap();
    let check = || super::super::check::check(dir.path(), &home());
    let (gone, stays, late) = {
        let store = SledStore::open(dir.path(), &home()).unwrap();
        let gone = subject(&store, "gone.late@example.de").await;
        let stays = subject(&store, "stays.whole@example.de").await;
        store.append_consent(&gone, consent(ConsentState::Granted, 100), None).await.unwrap();
        store.append_consent(&stays, consent(ConsentState::Granted, 110), None).await.unwrap();
        let late: Vec<(u64, sled::IVec)> = store.sealed_ledger(&gone).unwrap();
        store.erase(&gone, 200, &rights("erasure"), None).await.unwrap();
        store.flush().await.unwrap();
        (gone, stays, late)
    };
    assert_eq!(late.len(), 1, "the record the late capture writes");
    let report = check();
    assert_eq!((report.problems.clone(), report.notes.clone()), (Vec::new(), Vec::new()));

    {
        let db = super::heads::sled_config(&dir.path().join("db")).unwrap().open().unwrap();
        let ledger = db.open_tree("ledger").unwrap();
        for (position, value) in &late {
            ledger.insert(super::super::ledger::entry_key(&gone, *position), value).unwrap();
        }
        db.flush().unwrap();
    }
    let report = check();
    assert!(report.is_sound(), "unreadable leftovers are not damage: {:?}", report.problems);
    let expected = format!("tree ledger: 1 record(s) of subject {gone}, which has neither metadata nor a key");
    assert!(report.notes.iter().any(|n| n.contains(&expected)), "{:?}", report.notes);
    assert!(!report.notes.iter().any(|n| n.contains(&stays.to_string())), "{:?}", report.notes);
}
