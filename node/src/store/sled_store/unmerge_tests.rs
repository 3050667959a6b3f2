//! Unmerge on sled: the merged subject is retired with its key, and the erasure journal records
//! the split, so a restore of a backup taken before it splits again and a later erasure of either
//! half still holds.

use super::*;
use crate::store::read_erasure_journal;

#[tokio::test]
async fn an_unmerge_retires_the_merged_key_and_replays_from_the_journal_before_later_erasures() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let (ann, bea) = {
        let store = SledStore::open(&live, &home()).unwrap();
        let ann = subject(&store, "ann@example.de").await;
        let bea = subject(&store, "bea.person@example.de").await;
        store.append_consent(&ann, consent(ConsentState::Granted, 100), None).await.unwrap();
        store.merge(&bea, &ann, 200, None).await.unwrap();
        store.flush().await.unwrap();
        (ann, bea)
    };
    // The "backup": the store as it was after the merge.
    let backup = dir.path().join("backup");
    copy_dir(&live, &backup);

    let (kept, restored) = (SubjectId::from_bytes([7; 16]), SubjectId::from_bytes([8; 16]));
    {
        let store = SledStore::open(&live, &home()).unwrap();
        let unmerged = store.unmerge(&bea, &ann, &kept, &restored, 300, None).await.unwrap();
        assert_eq!(unmerged.links, vec![ident(IdentifierKind::Email, "ann@example.de").1]);
        // The merged subject is gone with its key; each half decides as it did before the merge.
        assert!(store.subject_meta(&bea).await.unwrap().is_none());
        assert!(store.raw_key(&bea).is_none());
        let email = |s| store.current_consent(s, Purpose::Marketing, Channel::Email);
        assert_eq!(email(&restored).await.unwrap().map(|c| c.state), Some(ConsentState::Granted));
        assert_eq!(email(&kept).await.unwrap(), None);
        store.erase(&restored, 400, &rights("erasure"), None).await.unwrap();
        store.flush().await.unwrap();
    }

    // Restored from before the unmerge: the journal splits the subject again with the same ids,
    // then erases the half erased since.
    let journal = read_erasure_journal(&live.join(super::super::backup::ERASURE_JOURNAL_FILE)).unwrap();
    let store = SledStore::open(&backup, &home()).unwrap();
    assert!(store.subject_meta(&bea).await.unwrap().is_some(), "the backup holds the merged subject");
    store.replay_erasures(&journal, 500).unwrap();
    assert!(store.subject_meta(&bea).await.unwrap().is_none());
    assert!(store.subject_meta(&restored).await.unwrap().is_none(), "the erasure since holds");
    assert!(store.raw_key(&restored).is_none());
    let kept_record = store.subject_record(&kept).await.unwrap().expect("the remaining half is back");
    assert_eq!(kept_record.identifiers, vec![ident(IdentifierKind::Email, "bea.person@example.de").0]);
    assert!(kept_record.lineage.is_empty());
    let ann_link = ident(IdentifierKind::Email, "ann@example.de").1;
    assert_eq!(store.subject_by_link(&ann_link).await.unwrap(), None);
}

/// A node stopped after a merge committed but before it destroyed the merged-away subject's key
/// (or after making a key for a write that never committed) leaves a key no subject holds, which
/// keeps that subject's data readable in sled's old segments: the next open destroys it, and only
/// it.
#[tokio::test]
async fn a_key_no_subject_holds_is_destroyed_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let orphan = SubjectId::from_bytes([9; 16]);
    let (kept, raw) = {
        let store = SledStore::open(dir.path(), &home()).unwrap();
        let kept = subject(&store, "kept.key@example.de").await;
        store.vault.get_or_create(&orphan).unwrap();
        store.vault.sync().unwrap();
        let raw = store.raw_key(&orphan).unwrap();
        (kept, raw)
    };
    let on_disk = |needle: &[u8; 32]| {
        std::fs::read(dir.path().join("subject-keys.bin")).unwrap().windows(needle.len()).any(|w| w == needle)
    };
    assert!(on_disk(&raw), "the orphan key is on disk before the reopen");
    let store = SledStore::open(dir.path(), &home()).unwrap();
    assert!(store.vault.get(&orphan).unwrap().is_none());
    assert!(!on_disk(&raw), "its slot is overwritten");
    assert!(store.vault.get(&kept).unwrap().is_some(), "a subject's own key stays");
    assert!(store.subject_record(&kept).await.unwrap().is_some());
}
