//! Registrations written together (`registration.rs`): an item refused inside the transaction
//! (another subject's jurisdiction, a link it holds no claim for, links of two subjects, a link an
//! earlier item of the batch made live) is left out whole while the others are written; events
//! are those of the items written, and `node check` finds the store sound.

use super::*;

fn new(jurisdiction: &str, identifiers: &[(NormalizedIdentifier, Link)], id: u8, claimed: bool) -> NewRegistration {
    NewRegistration {
        jurisdiction: Jurisdiction::parse(jurisdiction).unwrap(),
        identifiers: identifiers.to_vec(),
        new_subject: SubjectId::from_bytes([id; 16]),
        claimed: if claimed { claim_all(identifiers) } else { Vec::new() },
    }
}

#[tokio::test]
async fn a_refused_item_is_left_out_whole_and_the_others_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &home()).unwrap();
    let de_known = ident(IdentifierKind::Email, "known@example.de");
    let fr_known = ident(IdentifierKind::Email, "known@example.fr");
    let known = subject(&store, "known@example.de").await;
    let other = store
        .register(
            &Jurisdiction::parse("FR").unwrap(),
            std::slice::from_ref(&fr_known),
            SubjectId::from_bytes([77; 16]),
            0,
            &claim_all(std::slice::from_ref(&fr_known)),
            None,
        )
        .await
        .unwrap()
        .subject;
    let last_event = store.last_event().await.unwrap();

    let fresh = ident(IdentifierKind::Email, "fresh@example.de");
    let phone = ident(IdentifierKind::Phone, "+4915112345678");
    let unclaimed = ident(IdentifierKind::Email, "unclaimed@example.de");
    let wrong_place = ident(IdentifierKind::Phone, "+4915199999999");
    let both = ident(IdentifierKind::Phone, "+4915188888888");
    let items = vec![
        new("DE", std::slice::from_ref(&fresh), 1, true),
        // A link free but not claimed by this write: Retry, nothing of it written.
        new("DE", std::slice::from_ref(&unclaimed), 2, false),
        // The known subject with a new phone.
        new("DE", &[de_known.clone(), phone.clone()], 3, true),
        // The known subject under another jurisdiction: refused, its new link not written.
        new("FR", &[de_known.clone(), wrong_place.clone()], 4, true),
        // Links of two subjects.
        new("DE", &[de_known.clone(), fr_known.clone(), both.clone()], 5, true),
        // A link the first item made live: picked as new before the batch, found held inside it
        // (the node registers such an item on its own afterwards).
        new("DE", &[fresh.clone(), ident(IdentifierKind::Phone, "+4915177777777")], 6, true),
        // The other known subject, gaining a link in the same batch.
        new("FR", &[fr_known.clone(), ident(IdentifierKind::Phone, "+33612345678")], 7, true),
    ];
    let outcomes = store.register_many(&items, 10).await.unwrap();
    assert_eq!(outcomes.len(), items.len());
    let created = outcomes[0].as_ref().unwrap();
    assert!(created.created && created.subject == SubjectId::from_bytes([1; 16]));
    assert!(matches!(outcomes[1], Err(StoreError::Retry)), "{:?}", outcomes[1]);
    let found = outcomes[2].as_ref().unwrap();
    assert_eq!((found.subject, found.created), (known, false));
    assert!(matches!(outcomes[3], Err(StoreError::JurisdictionMismatch)), "{:?}", outcomes[3]);
    assert!(matches!(outcomes[4], Err(StoreError::Conflict)), "{:?}", outcomes[4]);
    assert!(matches!(outcomes[5], Err(StoreError::Retry)), "{:?}", outcomes[5]);
    let gained = outcomes[6].as_ref().unwrap();
    assert_eq!((gained.subject, gained.created), (other, false));

    // Refused items left no link behind; written ones hold theirs.
    for (link, holder) in [
        (&unclaimed.1, None),
        (&wrong_place.1, None),
        (&both.1, None),
        (&phone.1, Some(known)),
        (&fr_known.1, Some(other)),
        (&fresh.1, Some(created.subject)),
        (&ident(IdentifierKind::Phone, "+4915177777777").1, None),
        (&ident(IdentifierKind::Phone, "+33612345678").1, Some(other)),
    ] {
        assert_eq!(store.subject_by_link(link).await.unwrap(), holder);
    }
    // Claims held for exactly the links written: a refused item's claims are the node's to give
    // up, and none of them was recorded as held here.
    for link in [&unclaimed.1, &wrong_place.1, &both.1, &ident(IdentifierKind::Phone, "+4915177777777").1] {
        assert_eq!(store.read_held(link).unwrap(), None);
    }
    for link in [&fresh.1, &phone.1, &ident(IdentifierKind::Phone, "+33612345678").1] {
        assert_eq!(store.read_held(link).unwrap(), Some(1));
    }
    assert_eq!(store.subject_meta(&known).await.unwrap().unwrap().jurisdiction, Jurisdiction::parse("DE").unwrap());
    // One REGISTERED event per item written, in order, each naming only its own new links.
    let events = store.events_page(last_event, 100).await.unwrap();
    let registered: Vec<(SubjectId, usize)> =
        events.iter().filter(|e| matches!(e.change, Change::Registered)).map(|e| (e.subject, e.links.len())).collect();
    assert_eq!(registered, [(created.subject, 1), (known, 1), (other, 1)]);
    assert_eq!(
        [created.event, found.event, gained.event].map(|e| e.is_some()),
        [true; 3],
        "each item written names its event"
    );
    let report = checked(store, dir.path()).await;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
