use super::super::Evidence;
use super::*;
use crate::store::Change;
use domicile_types::{ConsentState, IdentifierKind, LinkKey};

fn home() -> RegionId {
    RegionId::parse("eu-central").unwrap()
}

fn ident(kind: IdentifierKind, v: &str) -> (NormalizedIdentifier, Link) {
    let id = NormalizedIdentifier::normalize(kind, v).unwrap();
    let link = LinkKey::from_bytes(&[9; 32]).unwrap().link(&id);
    (id, link)
}

/// Claims for every link of `identifiers`, as granted by their arbiter (these tests are the
/// region's only store).
fn claim_all(identifiers: &[(NormalizedIdentifier, Link)]) -> Vec<Release> {
    identifiers.iter().map(|(_, link)| Release { link: *link, generation: 1 }).collect()
}

fn claims_for(change: &Rectification) -> Vec<Release> {
    claim_all(&change.add)
}

fn consent(state: ConsentState, captured_at: i64) -> NewConsent {
    NewConsent {
        purpose: Purpose::Marketing,
        channels: vec![Channel::Email],
        state,
        captured_at,
        recorded_at: captured_at,
        counted_at_ms: captured_at * 1000,
        expires_at: None,
        evidence: Evidence::default(),
    }
}

async fn flush(store: &SledStore) {
    store.flush().await.unwrap();
}

/// Copies a closed store's directory (a backup as the file system sees it).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// What `domicile node check` says of `store`'s files in `dir` once it is flushed and closed.
async fn checked(store: SledStore, dir: &std::path::Path) -> check::CheckReport {
    flush(&store).await;
    drop(store);
    // sled's flusher thread lets go of the database's file lock a moment after the drop (met in
    // a test run): checked again until it has, as an operator would run the check again.
    for _ in 0..100 {
        let report = check::check(dir, &home());
        if !report.problems.iter().any(|p| p.contains("could not acquire lock")) {
            return report;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    check::check(dir, &home())
}

/// Puts `subjects`' ledger back as a version before ledger segments left it: every entry on a key
/// of its own, no segment, the ledger position at the key those versions kept it at (returned).
fn to_layout_before_segments(store: &SledStore, subjects: &[SubjectId]) -> u64 {
    for subject in subjects {
        for (position, sealed) in store.sealed_ledger(subject).unwrap() {
            store.ledger.insert(ledger::entry_key(subject, position), sealed).unwrap();
        }
    }
    store.segments.clear().unwrap();
    let position = store.counters.remove(LEDGER_POSITION).unwrap().unwrap();
    store.counters.insert(heads::EARLIER_LEDGER_POSITION.0, position.clone()).unwrap();
    u64::from_be_bytes(<[u8; 8]>::try_from(position.as_ref()).unwrap())
}

async fn subject(store: &SledStore, email: &str) -> SubjectId {
    let de = Jurisdiction::parse("DE").unwrap();
    let fresh = SubjectId::from_bytes(*b"0123456789abcdef");
    let fresh = SubjectId::from_bytes(fresh.as_bytes().map(|b| b ^ email.len() as u8));
    store
        .register(
            &de,
            &[ident(IdentifierKind::Email, email)],
            fresh,
            0,
            &claim_all(&[ident(IdentifierKind::Email, email)]),
            None,
        )
        .await
        .unwrap()
        .subject
}

#[tokio::test]
async fn link_ranges_partition_the_links_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let de = Jurisdiction::parse("DE").unwrap();
    for s in 0..300u32 {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&s.to_be_bytes());
        let id = ident(IdentifierKind::CrmAccount, &format!("acct-{s}"));
        store
            .register(
                &de,
                std::slice::from_ref(&id),
                SubjectId::from_bytes(raw),
                0,
                &claim_all(std::slice::from_ref(&id)),
                None,
            )
            .await
            .unwrap();
    }
    let scan = async |r: std::ops::RangeInclusive<u8>| {
        store.links_page(r, None, usize::MAX).await.unwrap().into_iter().map(|(link, _)| link).collect::<Vec<_>>()
    };
    let all = scan(0..=255).await;
    assert_eq!(all.len(), 300);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "in link order");
    // Parts split at a byte boundary together give every link exactly once.
    for split in [0u8, 1, 0x7f, 0x80, 0xfe] {
        let (low, high) = (scan(0..=split).await, scan(split + 1..=255).await);
        assert!(low.iter().all(|l| l.as_bytes()[0] <= split));
        assert!(high.iter().all(|l| l.as_bytes()[0] > split));
        assert_eq!([low, high].concat(), all, "split after {split:#x}");
    }
    assert_eq!(scan(0xff..=0xff).await, all.iter().copied().filter(|l| l.as_bytes()[0] == 0xff).collect::<Vec<_>>());
    #[allow(clippy::reversed_empty_ranges, reason = "an empty range yields nothing")]
    let empty = scan(9..=8).await;
    assert!(empty.is_empty());
}

#[tokio::test]
async fn register_merges_known_identifiers_and_refuses_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let de = Jurisdiction::parse("DE").unwrap();
    let email = ident(IdentifierKind::Email, "a@example.de");
    let phone = ident(IdentifierKind::Phone, "+4915112345678");
    let first = store
        .register(
            &de,
            std::slice::from_ref(&email),
            SubjectId::from_bytes([1; 16]),
            0,
            &claim_all(std::slice::from_ref(&email)),
            None,
        )
        .await
        .unwrap();
    assert!(first.created);
    let again = store
        .register(
            &de,
            &[email.clone(), phone.clone()],
            SubjectId::from_bytes([2; 16]),
            0,
            &claim_all(&[email.clone(), phone.clone()]),
            None,
        )
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.subject, first.subject);
    assert_eq!(store.subject_by_link(&phone.1).await.unwrap(), Some(first.subject));
    let record = store.subject_record(&first.subject).await.unwrap().unwrap();
    assert_eq!(record.identifiers.len(), 2);

    let other = ident(IdentifierKind::Email, "b@example.de");
    store
        .register(
            &de,
            std::slice::from_ref(&other),
            SubjectId::from_bytes([3; 16]),
            0,
            &claim_all(std::slice::from_ref(&other)),
            None,
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .register(
                &de,
                &[email.clone(), other.clone()],
                SubjectId::from_bytes([4; 16]),
                0,
                &claim_all(&[email.clone(), other]),
                None
            )
            .await,
        Err(StoreError::Conflict)
    ));
    let fr = Jurisdiction::parse("FR").unwrap();
    assert!(matches!(
        store
            .register(
                &fr,
                std::slice::from_ref(&email),
                SubjectId::from_bytes([5; 16]),
                0,
                &claim_all(std::slice::from_ref(&email)),
                None
            )
            .await,
        Err(StoreError::JurisdictionMismatch)
    ));
}

/// Reads that the cache serves must change with every kind of write (invariant 4: a
/// withdrawal, restriction, erasure or merge is seen by the very next decision).
#[tokio::test]
async fn cached_decision_inputs_follow_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let state = async |s: &SubjectId| {
        store.current_consent(s, Purpose::Marketing, Channel::Email).await.unwrap().map(|c| c.state)
    };
    let a = subject(&store, "ca@example.de").await;
    // (The helper derives ids from the e-mail's length, hence the different lengths.)
    // Cached as "none", then as granted: each read twice so the second is served from memory.
    assert_eq!(state(&a).await, None);
    assert_eq!(state(&a).await, None);
    store.append_consent(&a, consent(ConsentState::Granted, 100), None).await.unwrap();
    assert_eq!(state(&a).await, Some(ConsentState::Granted));
    assert_eq!(state(&a).await, Some(ConsentState::Granted));
    // The decision path reads both at once (one cache lookup): same answers.
    let inputs = async |s: &SubjectId| {
        store
            .decision_inputs(s, Purpose::Marketing, Channel::Email)
            .await
            .unwrap()
            .map(|(meta, current)| (meta.restricted, current.map(|c| c.state)))
    };
    assert_eq!(inputs(&a).await, Some((false, Some(ConsentState::Granted))));
    store.append_consent(&a, consent(ConsentState::Withdrawn, 200), None).await.unwrap();
    assert_eq!(state(&a).await, Some(ConsentState::Withdrawn));
    assert_eq!(inputs(&a).await, Some((false, Some(ConsentState::Withdrawn))));

    assert!(!store.subject_meta(&a).await.unwrap().unwrap().restricted);
    store.set_restricted(&a, true, &rights("restriction"), None).await.unwrap();
    assert!(store.subject_meta(&a).await.unwrap().unwrap().restricted);
    assert_eq!(inputs(&a).await, Some((true, Some(ConsentState::Withdrawn))));

    // Merge: `into` sees the merged records; `from` is gone.
    let b = subject(&store, "cbb@example.de").await;
    store.append_consent(&b, consent(ConsentState::Granted, 300), None).await.unwrap();
    let c = subject(&store, "cccc@example.de").await;
    assert_eq!(state(&c).await, None);
    assert_eq!(state(&b).await, Some(ConsentState::Granted));
    store.merge(&c, &b, 400, None).await.unwrap();
    assert_eq!(state(&c).await, Some(ConsentState::Granted));
    assert!(store.subject_meta(&b).await.unwrap().is_none());
    assert_eq!(state(&b).await, None);

    // Erasure: nothing decrypted survives in memory either.
    store.erase(&c, 500, &rights("erasure"), None).await.unwrap();
    assert!(store.subject_meta(&c).await.unwrap().is_none());
    assert_eq!(inputs(&c).await, None);
    assert_eq!(state(&c).await, None);
    assert!(store.cache.shard(&c).subjects.get(&c).is_none());
}

/// A value read before a write must not be cached after that write's invalidation.
#[tokio::test]
async fn a_read_racing_a_write_never_caches_the_old_value() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let s = subject(&store, "race@example.de").await;
    store.append_consent(&s, consent(ConsentState::Granted, 100), None).await.unwrap();
    // A reader misses and notes the epoch, reads "granted" from sled …
    let epoch = store.cache.get(&s, |c| c.current.first().map(|(_, v)| v.clone())).unwrap_err();
    let stale = store.current.get(current_key(&s, Purpose::Marketing, Channel::Email)).unwrap();
    assert!(stale.is_some());
    // … a withdrawal commits and releases the write lock …
    store.append_consent(&s, consent(ConsentState::Withdrawn, 200), None).await.unwrap();
    // … and the reader's late fill with the old value is dropped.
    let old = CurrentConsent {
        sequence: 1,
        state: ConsentState::Granted,
        captured_at: 100,
        expires_at: None,
        double_opt_in_confirmed: false,
        recorded_at: None,
        counted_at_ms: None,
        kind: None,
        hours: Vec::new(),
        hours_pack: None,
    };
    store.cache.fill(&s, epoch, |c| c.current.push(((Purpose::Marketing, Channel::Email), Some(old))));
    let now = store.current_consent(&s, Purpose::Marketing, Channel::Email).await.unwrap().unwrap();
    assert_eq!(now.state, ConsentState::Withdrawn);
}

#[tokio::test]
async fn older_grant_never_overrides_newer_withdrawal() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let s = subject(&store, "w@example.de").await;
    store.append_consent(&s, consent(ConsentState::Granted, 100), None).await.unwrap();
    store.append_consent(&s, consent(ConsentState::Withdrawn, 200), None).await.unwrap();
    // A grant captured earlier but recorded later (e.g. a delayed batch) must not win.
    store.append_consent(&s, consent(ConsentState::Granted, 150), None).await.unwrap();
    let current = store.current_consent(&s, Purpose::Marketing, Channel::Email).await.unwrap().unwrap();
    assert_eq!(current.state, ConsentState::Withdrawn);
    // Equal capture times: a withdrawal recorded after the grant wins; a grant recorded after the
    // withdrawal, captured in the second the withdrawal was recorded, is a re-grant
    // (policy-packs/README.md, "Order of consent records", rule 4).
    store.append_consent(&s, consent(ConsentState::Granted, 300), None).await.unwrap();
    store.append_consent(&s, consent(ConsentState::Withdrawn, 300), None).await.unwrap();
    let current = store.current_consent(&s, Purpose::Marketing, Channel::Email).await.unwrap().unwrap();
    assert_eq!(current.state, ConsentState::Withdrawn);
    store.append_consent(&s, consent(ConsentState::Granted, 300), None).await.unwrap();
    let current = store.current_consent(&s, Purpose::Marketing, Channel::Email).await.unwrap().unwrap();
    assert_eq!(current.state, ConsentState::Granted);
    assert_eq!(store.consent_history(&s).await.unwrap().len(), 6, "the ledger keeps every record");
    assert_eq!(
        store.consent_in_force(&s).await.unwrap(),
        vec![(Purpose::Marketing, Channel::Email, current)],
        "what is in force, per cell, is what decisions read"
    );
    assert!(store.current_consent(&s, Purpose::Marketing, Channel::Sms).await.unwrap().is_none());
}

#[tokio::test]
async fn personal_data_is_never_plaintext_and_erasure_destroys_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let email = "erase.me.probe@example.de";
    let s = subject(&store, email).await;
    let keep = subject(&store, "keep.me@example.de").await;
    store.append_consent(&s, consent(ConsentState::Granted, 1), None).await.unwrap();
    flush(&store).await;
    let key = store.raw_key(&s).unwrap();
    let scan = |needle: &[u8]| {
        walk(dir.path()).into_iter().any(|p| std::fs::read(p).unwrap().windows(needle.len()).any(|w| w == needle))
    };
    assert!(!scan(email.as_bytes()), "identifiers are encrypted at rest");
    assert!(scan(&key), "the key is on disk before erasure");

    let erased = store.erase(&s, 2, &rights("erasure"), None).await.unwrap();
    flush(&store).await;
    assert_eq!(erased.links.len(), 1);
    assert!(!scan(&key), "no copy of the subject key survives anywhere in the data directory");
    assert!(store.subject_record(&s).await.unwrap().is_none());
    assert!(store.subject_meta(&s).await.unwrap().is_none());
    assert!(matches!(store.consent_history(&s).await, Err(StoreError::NotFound)));
    assert!(matches!(store.erase(&s, 3, &rights("erasure"), None).await, Err(StoreError::NotFound)));
    assert!(store.subject_by_link(&erased.links[0]).await.unwrap().is_none());
    assert!(store.subject_record(&keep).await.unwrap().is_some(), "other subjects are untouched");
    let events: Vec<_> = store.events_page(None, usize::MAX).await.unwrap();
    assert!(matches!(events.last().unwrap().change, Change::Erased));
}

#[tokio::test]
async fn events_are_ordered_and_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let s = subject(&store, "e@example.de").await;
    store.append_consent(&s, consent(ConsentState::Granted, 1), None).await.unwrap();
    let (_, last) = store.append_consent(&s, consent(ConsentState::Withdrawn, 2), None).await.unwrap();
    let everything: Vec<_> = store.events_page(None, usize::MAX).await.unwrap();
    assert_eq!(everything.len(), 3, "registration and two consent changes");
    assert!(everything.windows(2).all(|w| w[0].sequence < w[1].sequence));
    assert_eq!(store.last_event().await.unwrap(), Some(last));
    let resumed: Vec<_> = store.events_page(Some(everything[0].sequence), usize::MAX).await.unwrap();
    assert_eq!(resumed, everything[1..]);
    assert!(store.events_page(Some(last), usize::MAX).await.unwrap().is_empty());
}

#[tokio::test]
async fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s;
    {
        let store = SledStore::open(dir.path(), &home()).unwrap();
        s = subject(&store, "r@example.de").await;
        store.append_consent(&s, consent(ConsentState::Granted, 1), None).await.unwrap();
        flush(&store).await;
    }
    let store = SledStore::open(dir.path(), &home()).unwrap();
    assert_eq!(store.consent_history(&s).await.unwrap().len(), 1);
    assert_eq!(store.subject_record(&s).await.unwrap().unwrap().identifiers.len(), 1);
    // The decision path's lean read sees what the full entry holds, restriction included.
    store.set_restricted(&s, true, &rights("restriction"), None).await.unwrap();
    let meta = store.subject_meta(&s).await.unwrap().unwrap();
    assert!(meta.restricted);
    assert_eq!(Some(meta), store.meta_entry(&s).unwrap().map(|e| e.meta));
}

fn consent_on(state: ConsentState, captured_at: i64, channel: Channel) -> NewConsent {
    NewConsent { channels: vec![channel], ..consent(state, captured_at) }
}

fn interaction(summary: &str, occurred_at: i64) -> NewInteraction {
    NewInteraction {
        channel: Channel::Chat,
        occurred_at,
        recorded_at: occurred_at,
        kind: super::super::InteractionKind::Message,
        intent: "billing.dispute".into(),
        summary: summary.into(),
        reference: "T-1".into(),
        open: true,
        via: None,
    }
}

fn rights(kind: &str) -> RightsRequestRecord {
    RightsRequestRecord {
        request_id: "00".repeat(16),
        kind: kind.into(),
        received_at: 1,
        deadline_at: Some(2),
        status: "completed".into(),
        deadline_basis: "test".into(),
        completed_at: Some(1),
        ..Default::default()
    }
}

#[tokio::test]
async fn merge_moves_everything_and_never_lets_an_older_grant_win() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let into = subject(&store, "into@example.de").await;
    let from = subject(&store, "from.person@example.de").await;
    // Email: `into` withdrew at 200, `from` holds an older grant (100) → withdrawn.
    store.append_consent(&into, consent(ConsentState::Withdrawn, 200), None).await.unwrap();
    store.append_consent(&from, consent(ConsentState::Granted, 100), None).await.unwrap();
    // SMS: `into` granted at 100, `from` withdrew later (300) → withdrawn.
    store.append_consent(&into, consent_on(ConsentState::Granted, 100, Channel::Sms), None).await.unwrap();
    store.append_consent(&from, consent_on(ConsentState::Withdrawn, 300, Channel::Sms), None).await.unwrap();
    // Post: only `from` has a record → it carries over.
    store.append_consent(&from, consent_on(ConsentState::Granted, 50, Channel::Post), None).await.unwrap();
    store.append_interaction(&from, interaction("moved summary", 10), None).await.unwrap();
    store.append_rights_request(&from, &rights("access")).await.unwrap();
    let from_links = store.meta_entry(&from).unwrap().unwrap().links;
    store.set_restricted(&from, true, &rights("restriction"), None).await.unwrap();

    let merged = store.merge(&into, &from, 400, None).await.unwrap();
    flush(&store).await;
    assert_eq!(merged.links, from_links);
    assert_eq!((merged.consent_records, merged.interactions), (3, 1));
    let state = async |channel| store.current_consent(&into, Purpose::Marketing, channel).await.unwrap().unwrap().state;
    assert_eq!(state(Channel::Email).await, ConsentState::Withdrawn, "an older grant never overrides a withdrawal");
    assert_eq!(state(Channel::Sms).await, ConsentState::Withdrawn, "a later withdrawal of `from` wins");
    assert_eq!(state(Channel::Post).await, ConsentState::Granted);
    let history = store.consent_history(&into).await.unwrap();
    assert_eq!(history.len(), 5);
    assert!(history.windows(2).all(|w| w[0].sequence < w[1].sequence), "ledger stays in recording order");
    assert_eq!(store.interactions(&into).await.unwrap()[0].summary, "moved summary");
    // The access request, and the restriction's (recorded with it).
    assert_eq!(store.rights_requests(&into).await.unwrap().len(), 2);
    let record = store.subject_record(&into).await.unwrap().unwrap();
    assert_eq!(record.identifiers.len(), 2);
    assert_eq!(store.subject_by_link(&from_links[0]).await.unwrap(), Some(into));
    assert!(store.subject_meta(&into).await.unwrap().unwrap().restricted, "a restriction of either half holds");
    // `from` is gone, its key destroyed.
    assert!(store.subject_meta(&from).await.unwrap().is_none());
    assert!(store.raw_key(&from).is_none());
    assert!(matches!(store.consent_history(&from).await, Err(StoreError::NotFound)));
    assert!(store.current.scan_prefix(from.as_bytes()).next().is_none());
    assert!(store.interactions.scan_prefix(from.as_bytes()).next().is_none());
    // Events: REGISTERED for `into` with `from`'s links; the merged consent in force and the
    // restriction on all of `into`'s links; then ERASED for `from` with its links.
    let events: Vec<_> = store.events_page(None, usize::MAX).await.unwrap();
    let start = events.iter().rposition(|e| e.change == Change::Registered).unwrap();
    let tail = &events[start..];
    assert_eq!((tail[0].subject, &tail[0].change, &tail[0].links), (into, &Change::Registered, &from_links));
    let last = tail.last().unwrap();
    assert_eq!((last.subject, &last.change, &last.links), (from, &Change::Erased, &from_links));
    assert_eq!(last.sequence, merged.event);
    let all_links = store.meta_entry(&into).unwrap().unwrap().links;
    let mut told = std::collections::BTreeMap::new();
    for event in &tail[1..tail.len() - 1] {
        assert_eq!((event.subject, &event.links), (into, &all_links), "on every link of the merged subject");
        match &event.change {
            Change::Consent { channels, state, .. } => channels.iter().for_each(|c| {
                told.insert(c.as_str(), *state);
            }),
            Change::Restricted { restricted } => assert!(*restricted),
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected =
        [("email", ConsentState::Withdrawn), ("post", ConsentState::Granted), ("sms", ConsentState::Withdrawn)];
    assert_eq!(told, expected.into_iter().collect(), "what decisions now read");
    assert!(tail.iter().any(|e| e.change == Change::Restricted { restricted: true }));
    assert!(matches!(store.merge(&into, &from, 401, None).await, Err(StoreError::NotFound)));
    assert!(matches!(store.merge(&into, &into, 401, None).await, Err(StoreError::Conflict)));
    // Survives a reopen: everything moved was flushed.
    drop(store);
    let store = SledStore::open(dir.path(), &home()).unwrap();
    assert_eq!(store.consent_history(&into).await.unwrap().len(), 5);
}

#[tokio::test]
async fn merge_refuses_subjects_of_different_jurisdictions() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let de = subject(&store, "de@example.de").await;
    let fr = Jurisdiction::parse("FR").unwrap();
    let other = store
        .register(
            &fr,
            &[ident(IdentifierKind::Email, "fr@example.fr")],
            SubjectId::from_bytes([7; 16]),
            0,
            &claim_all(&[ident(IdentifierKind::Email, "fr@example.fr")]),
            None,
        )
        .await
        .unwrap()
        .subject;
    assert!(matches!(store.merge(&de, &other, 1, None).await, Err(StoreError::MergeJurisdictionMismatch)));
    assert!(store.subject_meta(&other).await.unwrap().is_some(), "nothing changed");
}

/// A consent write keeps the subject's metadata and links cached (it changes neither; an
/// import's next call for the subject reads neither again) and drops its records in force; a
/// write that changes links drops them, so the next consent write checks its entries against
/// the links the subject holds now: one captured through a link rectified away is refused
/// (`Retry`), never written to the subject that lost it.
#[tokio::test]
async fn consent_writes_keep_metadata_and_links_cached_and_a_rectification_drops_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let s = subject(&store, "kept@example.de").await;
    let old = ident(IdentifierKind::Email, "kept@example.de");
    let through = |state, at: i64| {
        let mut c = consent(state, at);
        c.evidence.captured_via = Some(old.1);
        c
    };
    store.append_consent(&s, through(ConsentState::Granted, 100), None).await.unwrap();
    store.current_consent(&s, Purpose::Marketing, Channel::Email).await.unwrap();
    store.append_consent(&s, through(ConsentState::Withdrawn, 200), None).await.unwrap();
    let cached =
        |store: &SledStore| store.cache.get(&s, |c| Some((c.meta.is_some(), c.links.clone(), c.current.len()))).ok();
    assert_eq!(cached(&store), Some((true, Some(vec![old.1]), 0)), "metadata and links stay, records in force go");
    let state = store.current_consent(&s, Purpose::Marketing, Channel::Email).await.unwrap().map(|c| c.state);
    assert_eq!(state, Some(ConsentState::Withdrawn), "read again, as written");

    let new = ident(IdentifierKind::Email, "moved@example.de");
    let change = Rectification { add: vec![new.clone()], remove: vec![old.clone()], ..Default::default() };
    store.rectify(&s, &change, 300, &rights("rectification"), &claims_for(&change), None).await.unwrap();
    assert_eq!(cached(&store), None, "a change of links drops everything cached of the subject");
    let refused = store.append_consent(&s, through(ConsentState::Granted, 400), None).await;
    assert!(matches!(refused, Err(StoreError::Retry)), "{refused:?}");
    assert_eq!(store.consent_history(&s).await.unwrap().len(), 2, "nothing written");

    // A restriction changes the metadata: the cached copy goes, and decisions see it.
    store.append_consent(&s, consent(ConsentState::Granted, 500), None).await.unwrap();
    store.set_restricted(&s, true, &rights("restriction"), None).await.unwrap();
    assert!(store.subject_meta(&s).await.unwrap().unwrap().restricted);
    store.append_consent(&s, consent(ConsentState::Granted, 600), None).await.unwrap();
    assert!(store.cache.get(&s, |c| c.meta.clone()).unwrap().restricted, "cached as it is now");

    // Merged into another subject: a consent write for the one merged away finds no subject,
    // cached or not.
    let other = subject(&store, "the.other.one@example.de").await;
    store.append_consent(&other, consent(ConsentState::Granted, 700), None).await.unwrap();
    store.merge(&s, &other, 800, None).await.unwrap();
    let gone = store.append_consent(&other, consent(ConsentState::Granted, 900), None).await;
    assert!(matches!(gone, Err(StoreError::NotFound)), "{gone:?}");
    let links = store.cache.get(&s, |c| c.links.clone()).ok();
    assert!(links.is_none(), "the merge dropped the joined subject's cached links");
    store.append_consent(&s, consent(ConsentState::Granted, 1000), None).await.unwrap();
    let links = store.cache.get(&s, |c| c.links.clone()).unwrap();
    assert_eq!(links.len(), 2, "read again after the merge: both subjects' links");
}

#[tokio::test]
async fn rectify_relinks_identifiers_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let s = subject(&store, "old@example.de").await;
    let other = subject(&store, "someone.else@example.de").await;
    let old = ident(IdentifierKind::Email, "old@example.de");
    let new = ident(IdentifierKind::Email, "new@example.de");
    let phone = ident(IdentifierKind::Phone, "+4915112345678");
    let change = Rectification {
        add: vec![new.clone(), phone.clone()],
        remove: vec![old.clone()],
        set_profile: [("name".to_owned(), "Anna".to_owned())].into(),
        remove_profile: vec![],
    };
    let rectified = store.rectify(&s, &change, 5, &rights("rectification"), &claims_for(&change), None).await.unwrap();
    assert_eq!(rectified.added, vec![new.1, phone.1]);
    assert_eq!(rectified.removed, vec![old.1]);
    assert_eq!(store.subject_by_link(&old.1).await.unwrap(), None);
    assert_eq!(store.subject_by_link(&new.1).await.unwrap(), Some(s));
    let record = store.subject_record(&s).await.unwrap().unwrap();
    assert_eq!(record.identifiers, vec![new.0.clone(), phone.0.clone()]);
    assert_eq!(record.profile.get("name").map(String::as_str), Some("Anna"));
    let events: Vec<_> = store.events_page(None, usize::MAX).await.unwrap();
    let tail = &events[events.len() - 2..];
    assert_eq!((&tail[0].change, &tail[0].links), (&Change::LinksRemoved, &vec![old.1]));
    assert_eq!((&tail[1].change, &tail[1].links), (&Change::Registered, &vec![new.1, phone.1]));

    // Another subject's identifier, or one the subject does not hold: refused, nothing changes.
    let theirs = ident(IdentifierKind::Email, "someone.else@example.de");
    let refused = Rectification { add: vec![theirs.clone()], remove: vec![phone.clone()], ..Default::default() };
    assert!(matches!(
        store.rectify(&s, &refused, 6, &rights("rectification"), &claims_for(&refused), None).await,
        Err(StoreError::Conflict)
    ));
    let not_held = Rectification { remove: vec![old.clone()], ..Default::default() };
    assert!(matches!(
        store.rectify(&s, &not_held, 6, &rights("rectification"), &claims_for(&not_held), None).await,
        Err(StoreError::NotHeld)
    ));
    assert_eq!(store.subject_by_link(&phone.1).await.unwrap(), Some(s));
    assert_eq!(store.subject_by_link(&theirs.1).await.unwrap(), Some(other));
}

#[tokio::test]
async fn interactions_and_rights_are_sealed_and_erased() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let s = subject(&store, "talk@example.de").await;
    let summary = "customer disputes invoice probe-7731";
    let first = store.append_interaction(&s, interaction(summary, 10), None).await.unwrap();
    let second = store.append_interaction(&s, interaction("later", 5), None).await.unwrap();
    assert!(first.sequence < second.sequence);
    store.append_rights_request(&s, &rights("rectification")).await.unwrap();
    store.set_restricted(&s, true, &rights("restriction"), None).await.unwrap();
    flush(&store).await;
    assert!(store.subject_meta(&s).await.unwrap().unwrap().restricted);
    let log = store.interactions(&s).await.unwrap();
    assert_eq!(log.iter().map(|i| i.summary.as_str()).collect::<Vec<_>>(), [summary, "later"]);
    let on_disk = walk(dir.path())
        .into_iter()
        .any(|p| std::fs::read(p).unwrap().windows(summary.len()).any(|w| w == summary.as_bytes()));
    assert!(!on_disk, "interaction summaries are encrypted at rest");
    store.erase(&s, 20, &rights("erasure"), None).await.unwrap();
    assert!(matches!(store.interactions(&s).await, Err(StoreError::NotFound)));
    assert!(matches!(store.rights_requests(&s).await, Err(StoreError::NotFound)));
    assert!(store.interactions.is_empty() && store.rights.is_empty());
    assert!(matches!(store.append_interaction(&s, interaction("x", 1), None).await, Err(StoreError::NotFound)));
    assert!(matches!(store.set_restricted(&s, false, &rights("restriction"), None).await, Err(StoreError::NotFound)));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
    }
    out
}

fn region(id: &str) -> domicile_types::RegionId {
    domicile_types::RegionId::parse(id).unwrap()
}

fn link(n: u8) -> Link {
    Link::from_bytes([n; 16])
}

#[tokio::test]
async fn an_arbiter_grants_each_link_to_one_region_and_only_a_current_release_frees_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let (eu, us) = (region("eu-central"), region("us-east"));
    assert_eq!(store.claim_links(&eu, 5, &[link(1), link(2)]).await.unwrap(), vec![None, None]);
    // Another region is told who holds it; a claim of the holder again is granted.
    assert_eq!(store.claim_links(&us, 9, &[link(1), link(3)]).await.unwrap(), vec![Some(eu.clone()), None]);
    assert_eq!(store.claim_links(&eu, 7, &[link(1)]).await.unwrap(), vec![None]);
    assert_eq!(store.claim(&link(1)).await.unwrap(), Some(Claim { region: eu.clone(), generation: 7 }));
    // A late claim of an older generation never lowers the generation.
    assert_eq!(store.claim_links(&eu, 6, &[link(1)]).await.unwrap(), vec![None]);
    assert_eq!(store.claim(&link(1)).await.unwrap().unwrap().generation, 7);
    // A release from before the last claim is stale: it frees nothing (the write that claimed
    // at 7 may have made the link live). Another region cannot release it either.
    assert_eq!(store.release_links(&eu, &[Release { link: link(1), generation: 5 }]).await.unwrap(), 0);
    assert_eq!(store.release_links(&us, &[Release { link: link(1), generation: 99 }]).await.unwrap(), 0);
    assert_eq!(store.release_links(&eu, &[Release { link: link(1), generation: 7 }]).await.unwrap(), 1);
    assert_eq!(store.claim(&link(1)).await.unwrap(), None);
    assert_eq!(store.claim_links(&us, 10, &[link(1)]).await.unwrap(), vec![None], "free again: anyone may claim");
    // Survives a reopen.
    flush(&store).await;
    drop(store);
    let store = SledStore::open(dir.path(), &home()).unwrap();
    assert_eq!(store.claim(&link(1)).await.unwrap(), Some(Claim { region: us, generation: 10 }));
    assert!(store.next_generation().await.unwrap() > 0);
}

#[tokio::test]
async fn a_link_becomes_live_only_with_a_claim_and_leaving_queues_its_release() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let de = Jurisdiction::parse("DE").unwrap();
    let email = ident(IdentifierKind::Email, "claimed@example.de");
    let phone = ident(IdentifierKind::Phone, "+4915112345678");
    // Without a claim for a free link the write is refused (and retried by the service).
    let unclaimed =
        store.register(&de, std::slice::from_ref(&email), SubjectId::from_bytes([1; 16]), 0, &[], None).await;
    assert!(matches!(unclaimed, Err(StoreError::Retry)));
    assert!(store.subject_by_link(&email.1).await.unwrap().is_none());
    let claim = Release { link: email.1, generation: 11 };
    let s = store.register(&de, std::slice::from_ref(&email), SubjectId::from_bytes([1; 16]), 0, &[claim], None).await;
    let s = s.unwrap().subject;
    // A link the subject holds already needs no claim.
    store.register(&de, std::slice::from_ref(&email), SubjectId::from_bytes([2; 16]), 0, &[], None).await.unwrap();
    // Rectification adds with a claim and removes by queueing the release of the removed one.
    let change = Rectification { add: vec![phone.clone()], remove: vec![email.clone()], ..Default::default() };
    let refused = store.rectify(&s, &change, 1, &rights("rectification"), &[], None).await;
    assert!(matches!(refused, Err(StoreError::Retry)));
    let phone_claim = Release { link: phone.1, generation: 12 };
    store.rectify(&s, &change, 1, &rights("rectification"), &[phone_claim], None).await.unwrap();
    assert_eq!(store.pending_releases(10).await.unwrap(), vec![claim]);
    store.releases_done(&[claim]).await.unwrap();
    // Erasure queues the rest.
    store.erase(&s, 2, &rights("erasure"), None).await.unwrap();
    assert_eq!(store.pending_releases(10).await.unwrap(), vec![phone_claim]);
    assert_eq!(store.pending_release_count().await.unwrap(), 1);
}

#[tokio::test]
async fn a_write_repeated_with_its_idempotency_key_is_applied_once_and_sealed_with_its_subject() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let s = subject(&store, "idem@example.de").await;
    let tag = Idempotency { key: [1; 32], fingerprint: [2; 32], at: 100 };
    let (first, _) = store.append_consent(&s, consent(ConsentState::Withdrawn, 10), Some(&tag)).await.unwrap();
    let again = store.append_consent(&s, consent(ConsentState::Withdrawn, 10), Some(&tag)).await;
    assert!(matches!(again, Err(StoreError::Replayed)));
    assert_eq!(store.consent_history(&s).await.unwrap().len(), 1, "applied once");
    let replay = store.replay(&tag.key).await.unwrap().unwrap();
    assert_eq!((replay.fingerprint, replay.at), (tag.fingerprint, 100));
    let (subject, (record, _)): (SubjectId, (ConsentRecord, u64)) =
        serde_json::from_slice(&replay.result.unwrap()).unwrap();
    assert_eq!((subject, record.sequence), (s, first.sequence));
    // Sealed with the subject's key: after erasure the result is gone with it, the erasure's
    // own record (which names no data of the subject) stays readable.
    let erase_tag = Idempotency { key: [3; 32], fingerprint: [4; 32], at: 100 };
    store.erase(&s, 20, &rights("erasure"), Some(&erase_tag)).await.unwrap();
    assert_eq!(store.replay(&tag.key).await.unwrap().unwrap().result, None);
    let erased: (SubjectId, Erased) =
        serde_json::from_slice(&store.replay(&erase_tag.key).await.unwrap().unwrap().result.unwrap()).unwrap();
    assert!(erased.1.links.is_empty(), "a replayed erasure names no links");
    assert_eq!(store.purge_idempotency(101).await.unwrap(), 2);
    assert!(store.replay(&erase_tag.key).await.unwrap().is_none());
}

#[tokio::test]
async fn ledger_positions_are_the_ledgers_own_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let a = subject(&store, "one@example.de").await;
    let b = subject(&store, "two@example.de").await;
    let (first, _) = store.append_consent(&a, consent(ConsentState::Granted, 1), None).await.unwrap();
    store.append_interaction(&a, interaction("between", 1), None).await.unwrap();
    let (second, _) = store.append_consent(&b, consent(ConsentState::Granted, 1), None).await.unwrap();
    assert_eq!((first.sequence, second.sequence), (1, 2), "no gaps for events or interactions");
    flush(&store).await;
    drop(store);
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let (third, _) = store.append_consent(&a, consent(ConsentState::Withdrawn, 2), None).await.unwrap();
    assert_eq!(third.sequence, 3);
}

#[tokio::test]
async fn a_store_numbered_by_the_shared_counter_continues_above_its_positions() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let a = subject(&store, "legacy@example.de").await;
    // As a store written before the ledger had its own counter (and before its position-ordered
    // layout, `ledger.rs`): a record at position 40 in tree `consent`.
    let key = store.key(&a).unwrap();
    let record = ConsentRecord {
        sequence: 40,
        purpose: Purpose::Marketing,
        channels: vec![Channel::Email],
        state: ConsentState::Granted,
        captured_at: 1,
        recorded_at: 1,
        expires_at: None,
        evidence: Evidence::default(),
        counted_at_ms: None,
        review: false,
    };
    let k = consent_key(&a, 40);
    store.db.open_tree("consent").unwrap().insert(k, seal(&key, b"consent", &k, &record).unwrap()).unwrap();
    store.counters.remove(LEDGER_POSITION).unwrap();
    store.counters.remove(heads::EARLIER_LEDGER_POSITION.0).unwrap();
    flush(&store).await;
    drop(store);
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let (next, _) = store.append_consent(&a, consent(ConsentState::Withdrawn, 2), None).await.unwrap();
    assert_eq!(next.sequence, 41);
    let history = store.consent_history(&a).await.unwrap();
    assert_eq!(history.iter().map(|r| r.sequence).collect::<Vec<_>>(), [40, 41], "recording order kept");
}

#[tokio::test]
async fn a_future_dated_grant_never_outranks_a_withdrawal_recorded_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let s = subject(&store, "skew@example.de").await;
    let at = |state, captured_at: i64, recorded_at: i64| NewConsent {
        captured_at,
        recorded_at,
        counted_at_ms: super::super::counted_at_ms(state, captured_at * 1000, recorded_at * 1000),
        ..consent(state, 0)
    };
    let current = async || store.current_consent(&s, Purpose::Marketing, Channel::Email).await.unwrap().unwrap().state;
    // Capture system 290 s ahead: the grant counts at its recording, 1000.
    store.append_consent(&s, at(ConsentState::Granted, 1290, 1000), None).await.unwrap();
    store.append_consent(&s, at(ConsentState::Withdrawn, 1005, 1005), None).await.unwrap();
    assert_eq!(
        current().await,
        ConsentState::Withdrawn,
        "clock ahead: the grant claims a capture after the withdrawal"
    );
    // A later grant, correctly dated, revives consent.
    store.append_consent(&s, at(ConsentState::Granted, 1100, 1100), None).await.unwrap();
    assert_eq!(current().await, ConsentState::Granted);
    // Capture system 290 s behind, withdrawing: within the skew window it counts as recorded.
    store.append_consent(&s, at(ConsentState::Withdrawn, 1200 - 290, 1200), None).await.unwrap();
    assert_eq!(current().await, ConsentState::Withdrawn, "clock behind: an acknowledged withdrawal still wins");
    // A withdrawal entered long after it was given (a paper form) counts at its capture time:
    // a grant given since stays in force.
    store.append_consent(&s, at(ConsentState::Granted, 1300, 1300), None).await.unwrap();
    store.append_consent(&s, at(ConsentState::Withdrawn, 500, 2000), None).await.unwrap();
    assert_eq!(current().await, ConsentState::Granted);
    // Within one millisecond of each other a withdrawal wins; a grant a moment later re-grants.
    let ms = |state, captured_ms: i64, recorded_ms: i64| NewConsent {
        captured_at: captured_ms / 1000,
        recorded_at: recorded_ms / 1000,
        counted_at_ms: super::super::counted_at_ms(state, captured_ms, recorded_ms),
        ..consent(state, 0)
    };
    store.append_consent(&s, ms(ConsentState::Withdrawn, 3_000_100, 3_000_100), None).await.unwrap();
    store.append_consent(&s, ms(ConsentState::Granted, 3_000_350, 3_000_351), None).await.unwrap();
    assert_eq!(current().await, ConsentState::Granted, "a grant a moment after the withdrawal");
    // A capture system stamping whole seconds: a re-grant captured "at 3,001 s", recorded just
    // after a withdrawal recorded at 3,001.200 s, is a re-grant.
    store.append_consent(&s, ms(ConsentState::Withdrawn, 3_001_200, 3_001_200), None).await.unwrap();
    store.append_consent(&s, ms(ConsentState::Granted, 3_001_000, 3_001_400), None).await.unwrap();
    assert_eq!(current().await, ConsentState::Granted, "a re-grant stamped with the withdrawal's second");
    // One captured in an earlier second (a replay) does not revive consent.
    store.append_consent(&s, ms(ConsentState::Withdrawn, 3_002_500, 3_002_500), None).await.unwrap();
    store.append_consent(&s, ms(ConsentState::Granted, 3_001_900, 3_002_700), None).await.unwrap();
    assert_eq!(current().await, ConsentState::Withdrawn, "a replayed grant from the second before");
}

#[tokio::test]
async fn reasserted_claims_are_recorded_and_announced_and_dropped_links_leave_as_removals_do() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let de = Jurisdiction::parse("DE").unwrap();
    let email = ident(IdentifierKind::Email, "twice@example.de");
    let phone = ident(IdentifierKind::Phone, "+4915112345678");
    let both = [email.clone(), phone.clone()];
    let s =
        store.register(&de, &both, SubjectId::from_bytes([3; 16]), 0, &claim_all(&both), None).await.unwrap().subject;
    // Data stored before claims existed has no `held` entry.
    store.held.remove(email.1.as_bytes()).unwrap();
    assert_eq!(store.held_claim(&email.1).await.unwrap(), None);
    assert_eq!(store.held_claim(&phone.1).await.unwrap(), Some(1));

    // A granted claim is recorded for a link held here; one for a link gone meanwhile is
    // queued for release; the held links are announced to followers again.
    let gone = Release { link: link(77), generation: 6 };
    let held = store.hold_claims(&[Release { link: email.1, generation: 5 }, gone], true, 3).await.unwrap();
    assert_eq!((held.held, held.gone, held.announced), (vec![email.1], vec![gone], 1));
    assert_eq!(store.held_claim(&email.1).await.unwrap(), Some(5));
    assert_eq!(store.pending_releases(10).await.unwrap(), vec![gone]);
    let last = store.events_page(None, usize::MAX).await.unwrap().last().cloned().unwrap();
    assert_eq!(
        (last.sequence, last.subject, last.links, last.change),
        (held.event.unwrap(), s, vec![email.1], Change::Registered)
    );
    store.releases_done(&[gone]).await.unwrap();

    // Dropping a link another region keeps: gone from the subject as a removal would, its claim
    // queued for release, no rights request recorded (the person asked for nothing).
    let dropped =
        store.drop_links(&s, std::slice::from_ref(&email), &RegionId::parse("us-east").unwrap(), 4).await.unwrap();
    assert_eq!((dropped.removed.clone(), dropped.left), (vec![email.1], 1));
    assert_eq!(store.subject_by_link(&email.1).await.unwrap(), None);
    assert_eq!(store.subject_record(&s).await.unwrap().unwrap().identifiers, vec![phone.0.clone()]);
    assert_eq!(store.pending_releases(10).await.unwrap(), vec![Release { link: email.1, generation: 5 }]);
    let last = store.events_page(None, usize::MAX).await.unwrap().last().cloned().unwrap();
    assert_eq!((last.sequence, last.links, last.change), (dropped.event.unwrap(), vec![email.1], Change::LinksRemoved));
    assert!(store.rights_requests(&s).await.unwrap().is_empty());
    // Again: nothing left to drop.
    let again =
        store.drop_links(&s, std::slice::from_ref(&email), &RegionId::parse("us-east").unwrap(), 5).await.unwrap();
    assert_eq!((again.removed, again.left, again.event), (Vec::new(), 1, None));
}

#[tokio::test]
async fn tracked_requests_are_pii_free_and_outbox_deliveries_sealed_until_erasure() {
    use crate::store::{Challenge, Delivery, OutboxChange, OutboxEntry, TrackedRequest};
    let dir = tempfile::tempdir().unwrap();
    let email = "tracked.probe@example.de";
    let code = "ZXCVBNM123";
    let (s, tracked) = {
        let store = SledStore::open(dir.path(), &home()).unwrap();
        let s = subject(&store, email).await;
        let mut record = rights("access");
        record.request_id = "ab".repeat(16);
        record.status = "verifying".into();
        let challenge = Challenge { digest: "00".repeat(32), expires_at: 100, failures: 0, max_failures: 5 };
        let tracked = TrackedRequest::new(s, record, Some(challenge));
        let entry = OutboxEntry {
            request_id: tracked.record.request_id.clone(),
            subject: s,
            created_at: 1,
            expires_at: 100,
            delivery: Delivery { kind: "email".into(), value: email.into(), code: code.into() },
        };
        store.track_request(&tracked, None, OutboxChange::Put(&entry), 1, None).await.unwrap();
        flush(&store).await;
        (s, tracked)
    };
    let scan = |needle: &[u8]| {
        walk(dir.path()).into_iter().any(|p| std::fs::read(p).unwrap().windows(needle.len()).any(|w| w == needle))
    };
    assert!(!scan(code.as_bytes()), "the code is sealed at rest");
    assert!(!scan(email.as_bytes()), "the delivery's identifier is sealed at rest");

    // Durable: read back after reopening, region-wide and by id; the delivery opens.
    let store = SledStore::open(dir.path(), &home()).unwrap();
    assert_eq!(store.tracked_request(&tracked.record.request_id).await.unwrap(), Some(tracked.clone()));
    assert_eq!(store.tracked_requests().await.unwrap(), vec![tracked.clone()]);
    let outbox = store.outbox(10).await.unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!((outbox[0].delivery.value.as_str(), outbox[0].delivery.code.as_str()), (email, code));

    // A step that removes the entry; the index keeps the request (PII-free).
    let mut verified = tracked.clone();
    verified.record.status = "verified".into();
    verified.challenge = None;
    // A step judged against a stale read is refused, and writes nothing.
    let mut stale = tracked.clone();
    stale.record.status = "verifying".into();
    stale.challenge = None;
    assert!(matches!(
        store.track_request(&verified, Some(&stale), OutboxChange::Remove, 2, None).await,
        Err(StoreError::Retry)
    ));
    assert_eq!(store.outbox(10).await.unwrap().len(), 1);
    assert!(matches!(
        store.track_request(&verified, None, OutboxChange::Remove, 2, None).await,
        Err(StoreError::Retry)
    ));
    store.track_request(&verified, Some(&tracked), OutboxChange::Remove, 2, None).await.unwrap();
    assert!(store.outbox(10).await.unwrap().is_empty());
    assert_eq!(store.tracked_request(&tracked.record.request_id).await.unwrap(), Some(verified));

    // After an erasure an entry left behind cannot be opened: it is skipped, then removed.
    let mut again = tracked.clone();
    again.record.request_id = "cd".repeat(16);
    let entry = OutboxEntry {
        request_id: again.record.request_id.clone(),
        subject: s,
        created_at: 3,
        expires_at: 100,
        delivery: Delivery { kind: "email".into(), value: email.into(), code: code.into() },
    };
    store.track_request(&again, None, OutboxChange::Put(&entry), 3, None).await.unwrap();
    store.erase(&s, 4, &rights("erasure"), None).await.unwrap();
    assert!(store.outbox(10).await.unwrap().is_empty(), "an erased subject's delivery is unreadable");
    assert_eq!(store.remove_outbox(&[again.record.request_id.clone()]).await.unwrap(), 1);
    // A step of a request of the erased subject needs no key (no delivery, no replay record).
    let before = again.clone();
    again.record.status = "refused".into();
    store.track_request(&again, Some(&before), OutboxChange::Remove, 5, None).await.unwrap();
}

#[path = "unmerge_tests.rs"]
mod unmerge_tests;

#[path = "ledger_tests.rs"]
mod ledger_tests;

#[path = "replay_tests.rs"]
mod replay_tests;

#[path = "retire_tests.rs"]
mod retire_tests;

#[path = "segments_tests.rs"]
mod segments_tests;

#[path = "registration_tests.rs"]
mod registration_tests;
