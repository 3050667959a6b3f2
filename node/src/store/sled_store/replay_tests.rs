//! Restores of a real staged backup with the erasure journal (found by a review): subjects made on
//! the lost machine after the backup are not in it, yet they may hold what it holds (a subject of
//! the backup merged into one of them), and their erasures must erase that; events written after
//! a restore are numbered above those the lost machine wrote; a forged manifest or a journal that
//! cannot be applied leaves nothing to serve.

use super::*;
use crate::store::{BackupManifest, JournalEntry, read_erasure_journal, restore_sled};

/// The lost machine: its store in `live`, and a backup of it (in `backup`, as the operator keeps
/// it) taken while it held `x` (with a marketing-email grant) and `keep`.
struct Lost {
    dir: tempfile::TempDir,
    live: Option<SledStore>,
    manifest: BackupManifest,
    x: SubjectId,
    x_key: [u8; 32],
    keep: SubjectId,
}

const X: &str = "x@example.de";
const Y: &str = "yusuf.y@example.de";

async fn lost_machine(also_y: bool) -> (Lost, Option<SubjectId>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("live"), &home()).unwrap();
    let x = subject(&store, X).await;
    let keep = subject(&store, "keep.kept@example.de").await;
    let y = if also_y { Some(subject(&store, Y).await) } else { None };
    for s in [Some(x), Some(keep), y].into_iter().flatten() {
        store.append_consent(&s, consent(ConsentState::Granted, 100), None).await.unwrap();
    }
    flush(&store).await;
    let (_, manifest) = keep_backup(&store, dir.path(), 150);
    let x_key = store.raw_key(&x).unwrap();
    (Lost { dir, live: Some(store), manifest, x, x_key, keep }, y)
}

/// Stages a backup of `store` at `now` and copies it to `dir`/backup, as an operator keeps it.
fn keep_backup(store: &SledStore, dir: &std::path::Path, now: i64) -> (std::path::PathBuf, BackupManifest) {
    let staged = store.stage_backup(now).unwrap();
    let backup = dir.join("backup");
    std::fs::create_dir(&backup).unwrap();
    for file in staged.files() {
        std::fs::copy(&file, backup.join(file.file_name().unwrap())).unwrap();
    }
    (backup, staged.manifest.clone())
}

impl Lost {
    fn store(&self) -> &SledStore {
        self.live.as_ref().unwrap()
    }

    /// The lost machine's node restarts (sled skips its ids ahead at every open).
    fn restart(&mut self) {
        self.live = None;
        self.live = Some(SledStore::open(&self.dir.path().join("live"), &home()).unwrap());
    }

    fn journal(&self) -> Vec<JournalEntry> {
        read_erasure_journal(&self.dir.path().join("live").join(super::super::backup::ERASURE_JOURNAL_FILE)).unwrap()
    }

    /// Restores the backup into `name` with `journal` and opens it.
    async fn restore(&self, name: &str, journal: &[JournalEntry]) -> SledStore {
        let into = self.dir.path().join(name);
        restore_sled(&self.dir.path().join("backup"), &into, &home(), journal, 500).await.unwrap();
        SledStore::open(&into, &home()).unwrap()
    }

    /// Whether anything of `subject` (registered with `email`) is back in `restored`.
    async fn back(&self, restored: &SledStore, subject: &SubjectId, email: &str) -> Vec<&'static str> {
        let mut back = Vec::new();
        if restored.subject_meta(subject).await.unwrap().is_some() {
            back.push("metadata");
        }
        if restored.subject_record(subject).await.unwrap().is_some() {
            back.push("identifiers and profile");
        }
        if restored.subject_by_link(&ident(IdentifierKind::Email, email).1).await.unwrap().is_some() {
            back.push("link");
        }
        if matches!(restored.current_consent(subject, Purpose::Marketing, Channel::Email).await, Ok(Some(_))) {
            back.push("consent in force");
        }
        if matches!(restored.consent_history(subject).await, Ok(h) if !h.is_empty()) {
            back.push("consent ledger");
        }
        if restored.raw_key(subject).is_some() {
            back.push("key");
        }
        back
    }

    /// Whether `x`'s key is anywhere in the restored directory `name`.
    fn x_key_on_disk(&self, name: &str) -> bool {
        let needle = self.x_key;
        walk(&self.dir.path().join(name))
            .into_iter()
            .any(|p| std::fs::read(p).unwrap().windows(needle.len()).any(|w| w == needle))
    }
}

#[tokio::test]
async fn a_backup_subject_merged_into_a_later_one_that_was_then_erased_stays_erased() {
    let (lost, _) = lost_machine(false).await;
    let n = subject(lost.store(), "nora@example.de").await;
    lost.store().merge(&n, &lost.x, 200, None).await.unwrap();
    lost.store().erase(&n, 300, &rights("erasure"), None).await.unwrap();
    flush(lost.store()).await;

    let restored = lost.restore("restored", &lost.journal()).await;
    assert_eq!(lost.back(&restored, &lost.x, X).await, Vec::<&str>::new(), "merged into N, erased with N");
    assert!(!lost.x_key_on_disk("restored"), "its key is destroyed");
    assert!(restored.subject_record(&lost.keep).await.unwrap().is_some(), "others are untouched");
}

/// A merge's journal line is written after its commit: a node that dies in between loses it. The
/// erasure of the subject that remains still names the one merged into it, so a restore of a
/// backup that holds the two apart erases both.
#[tokio::test]
async fn an_erasure_after_a_merge_whose_journal_line_was_lost_erases_what_was_merged_in() {
    let (lost, y) = lost_machine(true).await;
    lost.store().merge(&lost.keep, &lost.x, 200, None).await.unwrap();
    // The merge's line, lost with the node that died after the commit.
    let path = lost.dir.path().join("live").join(super::super::backup::ERASURE_JOURNAL_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let without: String = text.lines().filter(|l| !l.starts_with("merge ")).map(|l| format!("{l}\n")).collect();
    assert_ne!(without, text, "the merge was journaled");
    std::fs::write(&path, without).unwrap();
    lost.store().erase(&lost.keep, 300, &rights("erasure"), None).await.unwrap();
    flush(lost.store()).await;
    let journal = lost.journal();
    assert!(journal.iter().all(|e| !matches!(e, JournalEntry::Merge { .. })));

    let restored = lost.restore("restored", &journal).await;
    assert_eq!(lost.back(&restored, &lost.x, X).await, Vec::<&str>::new(), "merged into the erased subject");
    assert!(!lost.x_key_on_disk("restored"), "its key is destroyed");
    assert!(restored.subject_record(&lost.keep).await.unwrap().is_none(), "the erased subject itself");
    assert!(restored.subject_record(&y.unwrap()).await.unwrap().is_some(), "others are untouched");
}

#[tokio::test]
async fn a_chain_of_merges_into_later_subjects_carries_the_erasure_through() {
    let (lost, _) = lost_machine(false).await;
    let n = subject(lost.store(), "nora@example.de").await;
    let m = subject(lost.store(), "marta.mm@example.de").await;
    lost.store().merge(&n, &lost.x, 200, None).await.unwrap();
    lost.store().merge(&m, &n, 210, None).await.unwrap();
    lost.store().erase(&m, 300, &rights("erasure"), None).await.unwrap();
    flush(lost.store()).await;

    let restored = lost.restore("restored", &lost.journal()).await;
    assert_eq!(lost.back(&restored, &lost.x, X).await, Vec::<&str>::new());
    assert!(!lost.x_key_on_disk("restored"));
    assert!(restored.subject_record(&lost.keep).await.unwrap().is_some());
}

#[tokio::test]
async fn the_restored_half_of_a_later_unmerge_erased_stays_erased_and_the_other_half_erases_nothing_of_it() {
    let (lost, _) = lost_machine(false).await;
    let n = subject(lost.store(), "nora@example.de").await;
    lost.store().merge(&n, &lost.x, 200, None).await.unwrap();
    let (kept, back) = (SubjectId::from_bytes([7; 16]), SubjectId::from_bytes([8; 16]));
    lost.store().unmerge(&n, &lost.x, &kept, &back, 250, None).await.unwrap();
    lost.store().erase(&kept, 300, &rights("erasure"), None).await.unwrap();
    lost.store().erase(&back, 310, &rights("erasure"), None).await.unwrap();
    flush(lost.store()).await;
    let journal = lost.journal();
    assert!(matches!(journal.last(), Some(JournalEntry::Erasure { subject, .. }) if *subject == back));

    // Erasing N's own half (nothing of the backup) leaves X as the backup held it.
    let partial = lost.restore("partial", &journal[..journal.len() - 1]).await;
    let in_force = partial.current_consent(&lost.x, Purpose::Marketing, Channel::Email).await.unwrap();
    assert_eq!(in_force.map(|c| c.state), Some(ConsentState::Granted));
    assert_eq!(partial.subject_by_link(&ident(IdentifierKind::Email, X).1).await.unwrap(), Some(lost.x));
    // Erasing the half that holds X's data erases X.
    let restored = lost.restore("restored", &journal).await;
    assert_eq!(lost.back(&restored, &lost.x, X).await, Vec::<&str>::new());
    assert!(!lost.x_key_on_disk("restored"));
}

#[tokio::test]
async fn a_later_unmerge_gives_each_half_what_the_backup_held_of_it() {
    // X and Y in the backup; both merged into N, made after it; N split from X: K holds N's own
    // and Y's data, R X's.
    let (lost, y) = lost_machine(true).await;
    let y = y.unwrap();
    let n = subject(lost.store(), "nora@example.de").await;
    lost.store().merge(&n, &lost.x, 200, None).await.unwrap();
    lost.store().merge(&n, &y, 210, None).await.unwrap();
    let (kept, back) = (SubjectId::from_bytes([7; 16]), SubjectId::from_bytes([8; 16]));
    lost.store().unmerge(&n, &lost.x, &kept, &back, 250, None).await.unwrap();
    lost.store().erase(&kept, 300, &rights("erasure"), None).await.unwrap();
    flush(lost.store()).await;
    let journal = lost.journal();
    // Up to the erasure (whose lines name K and Y, merged into it).
    let erasure = journal.iter().position(|e| matches!(e, JournalEntry::Erasure { .. })).unwrap();

    let split = lost.restore("split", &journal[..erasure]).await;
    let link = |email| ident(IdentifierKind::Email, email).1;
    assert_eq!(split.subject_by_link(&link(X)).await.unwrap(), Some(back));
    assert_eq!(split.subject_by_link(&link(Y)).await.unwrap(), Some(kept));
    // K erased: Y's data goes with it, X's (R) stays.
    let restored = lost.restore("restored", &journal).await;
    assert_eq!(lost.back(&restored, &y, Y).await, Vec::<&str>::new());
    assert_eq!(restored.subject_by_link(&link(Y)).await.unwrap(), None);
    assert_eq!(restored.subject_by_link(&link(X)).await.unwrap(), Some(back));
    assert!(restored.subject_record(&back).await.unwrap().is_some());
}

#[tokio::test]
async fn events_after_a_restore_are_numbered_above_those_the_lost_machine_wrote() {
    let (mut lost, _) = lost_machine(false).await;
    let at_backup = lost.manifest.last_event;
    // The lost tail: events a watcher saw before the machine was lost, some after a restart of
    // its node.
    lost.restart();
    for t in 0..5 {
        let state = if t % 2 == 0 { ConsentState::Withdrawn } else { ConsentState::Granted };
        lost.store().append_consent(&lost.x, consent(state, 200 + t), None).await.unwrap();
    }
    let cursor = lost.store().last_event().await.unwrap().unwrap();
    assert!(cursor >= at_backup + 5);

    let restored = lost.restore("restored", &lost.journal()).await;
    assert_eq!(restored.last_event().await.unwrap(), Some(at_backup));
    let (_, sequence) = restored.append_consent(&lost.x, consent(ConsentState::Withdrawn, 400), None).await.unwrap();
    assert!(sequence > cursor, "event {sequence} after the restore, the watcher's cursor is {cursor}");
    // A watcher resuming with its cursor from before the loss gets the withdrawal.
    let resumed = restored.events_page(Some(cursor), usize::MAX).await.unwrap();
    assert_eq!(resumed.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![sequence]);
    // And a reopen keeps numbering above it.
    drop(restored);
    let reopened = SledStore::open(&lost.dir.path().join("restored"), &home()).unwrap();
    let (_, next) = reopened.append_consent(&lost.x, consent(ConsentState::Granted, 401), None).await.unwrap();
    assert!(next > sequence);
}

/// Found by a review: consent ledger positions (which leave the node as a record's sequence) were
/// restored from the backup's counter, so new entries reused the positions the lost tail handed out.
#[tokio::test]
async fn ledger_positions_after_a_restore_are_above_those_the_lost_machine_handed_out() {
    let (mut lost, _) = lost_machine(false).await;
    lost.restart();
    let mut handed_out = 0;
    for t in 0..5 {
        let (record, _) =
            lost.store().append_consent(&lost.x, consent(ConsentState::Withdrawn, 200 + t), None).await.unwrap();
        handed_out = handed_out.max(record.sequence);
    }
    let restored = lost.restore("restored", &lost.journal()).await;
    let (record, _) = restored.append_consent(&lost.x, consent(ConsentState::Granted, 400), None).await.unwrap();
    assert!(record.sequence > handed_out, "position {} after the restore, {handed_out} before", record.sequence);
    // And after the next open.
    drop(restored);
    let reopened = SledStore::open(&lost.dir.path().join("restored"), &home()).unwrap();
    let (next, _) = reopened.append_consent(&lost.x, consent(ConsentState::Withdrawn, 401), None).await.unwrap();
    assert!(next.sequence > record.sequence);
}

/// Restores `backup` into `into` on a thread of its own: `None` if it has not finished in 30 s.
fn restore_within(backup: &std::path::Path, into: &std::path::Path) -> Option<Result<(), StoreError>> {
    let (backup, into) = (backup.to_owned(), into.to_owned());
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _ = done.send(runtime.block_on(restore_sled(&backup, &into, &home(), &[], 500)).map(|_| ()));
    });
    wait.recv_timeout(std::time::Duration::from_secs(30)).ok()
}

#[tokio::test]
async fn a_manifest_naming_a_next_id_it_cannot_have_is_refused_promptly() {
    let (lost, _) = lost_machine(false).await;
    for (next_id, refusal) in [(u64::MAX - 1, "leaves no room"), (1 << 60, "more than 2^56"), (1, "not above id")] {
        let forged = lost.dir.path().join(format!("forged-{next_id}"));
        std::fs::create_dir(&forged).unwrap();
        for file in std::fs::read_dir(lost.dir.path().join("backup")).unwrap() {
            let file = file.unwrap();
            std::fs::copy(file.path(), forged.join(file.file_name())).unwrap();
        }
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(forged.join("manifest.json")).unwrap()).unwrap();
        manifest["next_id"] = next_id.into();
        std::fs::write(forged.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();

        let into = lost.dir.path().join(format!("into-{next_id}"));
        let refused = restore_within(&forged, &into).expect("refused promptly, not a loop");
        let error = refused.expect_err("a forged next id is refused").to_string();
        assert!(error.contains("next id") && error.contains(refusal), "{error}");
        assert!(!into.exists() || SledStore::open(&into, &home()).is_err(), "nothing to serve: {next_id}");
    }
}

/// A backup says format 4 since ledger segments (3 since the ledger's position-ordered layout, 2
/// since ids have a base): a build from before any of them refuses it (it would find the
/// segments' entries missing, serve the ledgers as empty, or step sled's generator up to the next
/// id, 2^40 steps); this build still restores formats 1 to 3.
#[tokio::test]
async fn backups_are_format_4_and_formats_1_to_3_still_restore() {
    let (lost, _) = lost_machine(false).await;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lost.dir.path().join("backup").join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], 4);
    for (format, restores) in [(1, true), (2, true), (3, true), (5, false)] {
        let copy = lost.dir.path().join(format!("format-{format}"));
        std::fs::create_dir(&copy).unwrap();
        for file in std::fs::read_dir(lost.dir.path().join("backup")).unwrap() {
            let file = file.unwrap();
            std::fs::copy(file.path(), copy.join(file.file_name())).unwrap();
        }
        let mut edited = manifest.clone();
        edited["format"] = format.into();
        std::fs::write(copy.join("manifest.json"), serde_json::to_vec(&edited).unwrap()).unwrap();
        let into = lost.dir.path().join(format!("into-format-{format}"));
        let result = restore_within(&copy, &into).expect("promptly");
        assert_eq!(result.is_ok(), restores, "format {format}: {result:?}");
    }
}

#[tokio::test]
async fn a_restore_whose_journal_cannot_be_applied_leaves_a_directory_no_node_opens() {
    let (lost, _) = lost_machine(false).await;
    // A subject of another jurisdiction, in the backup: a merge with it cannot be made again.
    let fr = Jurisdiction::parse("FR").unwrap();
    let other = ident(IdentifierKind::Email, "other.fr@example.fr");
    let z = SubjectId::from_bytes([5; 16]);
    lost.store()
        .register(&fr, std::slice::from_ref(&other), z, 0, &claim_all(std::slice::from_ref(&other)), None)
        .await
        .unwrap();
    flush(lost.store()).await;
    let backup = lost.store().stage_backup(160).unwrap();
    let journal = [
        JournalEntry::Erasure { subject: lost.keep, at: 200 },
        JournalEntry::Merge { from: z, into: lost.x, at: 210 },
        JournalEntry::Erasure { subject: lost.x, at: 220 },
    ];
    let into = lost.dir.path().join("restored");
    let error = restore_sled(&backup.dir, &into, &home(), &journal, 500).await.unwrap_err().to_string();
    assert!(error.contains("did not finish"), "{error}");
    let refused = SledStore::open(&into, &home()).unwrap_err().to_string();
    assert!(refused.contains("restore.pending") && refused.contains("did not finish"), "{refused}");
    let report = crate::store::check_sled(&into, &home());
    assert!(!report.is_sound() && report.problems.iter().any(|p| p.contains("did not finish")), "{report:?}");
    // A restore that finishes opens.
    let fine = lost.dir.path().join("fine");
    restore_sled(&backup.dir, &fine, &home(), &journal[..1], 500).await.unwrap();
    let restored = SledStore::open(&fine, &home()).unwrap();
    assert!(restored.subject_meta(&lost.keep).await.unwrap().is_none());
    drop(restored);
    assert!(crate::store::check_sled(&fine, &home()).is_sound());
}

/// Found by a review: journals given in the wrong order replayed an erasure before the merge that
/// gave the erased subject what the backup holds (the person came back), and an overlapping copy
/// of a merge line was refused as damage.
#[test]
fn journals_are_replayed_oldest_first_and_a_line_found_again_once() {
    let (x, n) = (SubjectId::from_bytes([1; 16]), SubjectId::from_bytes([2; 16]));
    let older = vec![JournalEntry::Merge { from: x, into: n, at: 100 }];
    let newer = vec![JournalEntry::Merge { from: x, into: n, at: 100 }, JournalEntry::Erasure { subject: n, at: 200 }];
    let refused =
        super::replay::combine_journals(vec![("new.log".into(), newer.clone()), ("old.log".into(), older.clone())]);
    assert!(matches!(&refused, Err(StoreError::Corrupt(m)) if m.contains("oldest first")), "{refused:?}");
    let combined = super::replay::combine_journals(vec![("old.log".into(), older), ("new.log".into(), newer)]).unwrap();
    assert_eq!(
        combined,
        vec![JournalEntry::Merge { from: x, into: n, at: 100 }, JournalEntry::Erasure { subject: n, at: 200 }],
        "the overlapping merge line once, then the erasure"
    );
}

/// A real format-3 backup (a store from before ledger segments: every entry a key of its own, the
/// ledger position at the key those versions kept it at, no segments) restores into this build:
/// histories read as they were, new positions continue above the backup's, and the restored
/// store is fenced against those versions like any other it opens.
#[tokio::test]
async fn a_format_3_backup_from_before_segments_restores_with_its_ledger_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("live"), &home()).unwrap();
    let x = subject(&store, X).await;
    let keep = subject(&store, "keep.kept@example.de").await;
    for (n, s) in [x, keep, x].into_iter().enumerate() {
        store.append_consent(&s, consent(ConsentState::Granted, 100 + n as i64), None).await.unwrap();
    }
    let histories = [store.consent_history(&x).await.unwrap(), store.consent_history(&keep).await.unwrap()];
    assert_eq!(to_layout_before_segments(&store, &[x, keep]), 3);
    flush(&store).await;
    let (backup, kept) = keep_backup(&store, dir.path(), 150);
    let manifest_path = backup.join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["format"] = 3.into();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let next_id = kept.next_id;

    let into = dir.path().join("restored");
    restore_sled(&backup, &into, &home(), &[], 500).await.expect("a format 3 backup restores");
    let restored = SledStore::open(&into, &home()).unwrap();
    assert_eq!(restored.consent_history(&x).await.unwrap(), histories[0]);
    assert_eq!(restored.consent_history(&keep).await.unwrap(), histories[1]);
    assert_eq!(restored.segments.len(), 0, "nothing moved: the entries keep their own keys");
    let (next, _) = restored.append_consent(&keep, consent(ConsentState::Withdrawn, 200), None).await.unwrap();
    // The lost machine's later positions are skipped by the gap its ids are (`backup.rs`).
    let gap = restored.id_base - next_id;
    assert_eq!(next.sequence, 3 + gap + 1, "the backup's last position, the gap, then this one");
    assert_eq!(restored.consent_history(&keep).await.unwrap().len(), 2, "both forms, read together");
    let fence = restored.counters.get(heads::EARLIER_LEDGER_POSITION.0).unwrap().unwrap();
    assert_ne!(fence.len(), 8, "fenced against the versions the backup came from");
}
