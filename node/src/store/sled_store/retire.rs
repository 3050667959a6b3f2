//! A gone subject's change events go with it (invariant 6).
//!
//! A change event names its subject's links (keyed digests of identifiers: with the region's
//! link key, a dictionary of e-mail addresses or phone numbers finds whose they are) and, for
//! consent, what the person chose and when. Kept after the subject is erased, any watcher
//! starting from the beginning would read who the person was and their consent history. So a
//! write that retires a subject (an erasure, the merged-away half of a merge, the merged subject
//! of an unmerge: [`Recorded::retires`]) takes that subject's earlier events with it, and only the
//! `ERASED` event stays, which followers need to drop its links. That `ERASED` also names every
//! link the removed events named ([`Recorded::changes_dropping`]), so a follower resuming from
//! before them ends where one that read them does: it drops each link that still names the
//! subject (a merge or an unmerge announced whoever holds the others now before it).
//!
//! The removal waits until the `ERASED` is durable: the write marks the subject in `retiring`
//! (subject id → the `ERASED` sequence) in its transaction, and the flush that makes that event
//! durable removes the earlier ones ([`SledStore::after_flush`]). Removed at once, a watcher
//! could page past them, and a crash before the flush bring them back with the write undone, the
//! watcher past one it never read (a withdrawal).
//!
//! `event_subjects` indexes events by subject (subject id ‖ sequence → empty), written with each
//! event; its `COVERS` entry is a sequence up to which every event is indexed (noted at each
//! flush). At open, the
//! events after it (written by an older binary) are indexed and the `ERASED` events among them
//! marked, and every marked subject's earlier events removed: a store from before this index is
//! cleaned up at its first start.

use std::collections::HashMap;

use domicile_types::{Link, SUBJECT_ID_LEN, SubjectId};
use sled::Transactional;
use sled::transaction::TransactionalTree;

use super::{ChangeEvent, Recorded, SledStore, StoreError, TxResult, backend, decode, flatten};
use crate::store::Change;

/// `event_subjects` entry holding the last sequence indexed (a key no index entry has: those
/// are a subject id and a sequence long).
const COVERS: &[u8] = b"covers";

/// One change event of a write, numbered and encoded, with the subject it names.
pub(super) struct NumberedEvent {
    pub sequence: u64,
    pub subject: SubjectId,
    pub bytes: Vec<u8>,
    /// The `ERASED` of the subject its write retires.
    pub retires: bool,
}

/// Per subject a write retires, the links its stored events name.
pub(super) type Dropped = HashMap<SubjectId, Vec<Link>>;

fn index_key(subject: &SubjectId, sequence: u64) -> [u8; SUBJECT_ID_LEN + 8] {
    let mut key = [0u8; SUBJECT_ID_LEN + 8];
    key[..SUBJECT_ID_LEN].copy_from_slice(subject.as_bytes());
    key[SUBJECT_ID_LEN..].copy_from_slice(&sequence.to_be_bytes());
    key
}

fn sequence_of(bytes: &[u8], at: usize) -> Result<u64, StoreError> {
    bytes
        .get(at..)
        .and_then(|tail| <[u8; 8]>::try_from(tail).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("event index".into()))
}

/// Inside a write's transaction: its events and their index entries.
pub(super) fn put_events(
    events: &TransactionalTree,
    index: &TransactionalTree,
    numbered: &[NumberedEvent],
) -> TxResult<()> {
    numbered.iter().try_for_each(|event| put_event(events, index, event))
}

/// Inside a write's transaction: one event and its index entry.
pub(super) fn put_event(events: &TransactionalTree, index: &TransactionalTree, event: &NumberedEvent) -> TxResult<()> {
    events.insert(&event.sequence.to_be_bytes()[..], event.bytes.as_slice())?;
    index.insert(&index_key(&event.subject, event.sequence)[..], &[][..])?;
    Ok(())
}

/// Inside the transaction of a write that retires a subject (the only writes whose events
/// include such an `ERASED`): marks it, for [`SledStore::after_flush`].
pub(super) fn mark_retiring(retiring: &TransactionalTree, numbered: &[NumberedEvent]) -> TxResult<()> {
    for event in numbered.iter().filter(|e| e.retires) {
        retiring.insert(event.subject.as_bytes().as_slice(), &event.sequence.to_be_bytes()[..])?;
    }
    Ok(())
}

impl SledStore {
    /// The links the stored events of each subject `recorded` retires name. Under the write lock.
    pub(super) fn dropped_links(&self, recorded: &[Recorded<'_>]) -> Result<Dropped, StoreError> {
        let mut out = Dropped::new();
        for subject in recorded.iter().filter_map(Recorded::retires) {
            let mut events = Vec::new();
            for key in self.event_index.scan_prefix(subject.as_bytes()).keys() {
                let sequence = sequence_of(&key.map_err(backend)?, SUBJECT_ID_LEN)?;
                let Some(bytes) = self.events.get(sequence.to_be_bytes()).map_err(backend)? else { continue };
                events.push(decode::<ChangeEvent>(&bytes)?);
            }
            out.insert(subject, crate::store::links_named(&events));
        }
        Ok(out)
    }

    /// After a flush that made every event up to `durable` durable: notes that the index covers
    /// them (this binary indexes each event in its write's transaction; noted once per flush, not
    /// per write, and a note lost in a crash only makes the next open index a few again), then
    /// [`Self::retire_pending`].
    pub(super) fn after_flush(&self, durable: u64) -> Result<(), StoreError> {
        self.event_index.insert(COVERS, &durable.to_be_bytes()[..]).map_err(backend)?;
        self.retire_pending(durable)
    }

    /// Removes the earlier events of every subject marked retiring whose `ERASED` is at or below
    /// `durable`, one transaction per subject, under the write lock (no event of a gone subject
    /// is written meanwhile). Not waiting for it: held by a backup for its whole export, it would
    /// hold up the flush and every write acknowledged by it; the marks stay for the next flush.
    /// Marks lost in a crash before the next flush are there at the next open.
    fn retire_pending(&self, durable: u64) -> Result<(), StoreError> {
        if self.retiring.is_empty() {
            return Ok(());
        }
        let _serial = match self.write_lock.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
        };
        for item in self.retiring.iter() {
            let (subject, value) = item.map_err(backend)?;
            let erased = sequence_of(&value, 0)?;
            if erased > durable {
                continue;
            }
            let mut earlier = Vec::new();
            for key in self.event_index.scan_prefix(&subject).keys() {
                let key = key.map_err(backend)?;
                let sequence = sequence_of(&key, SUBJECT_ID_LEN)?;
                if sequence < erased {
                    earlier.push((key, sequence));
                }
            }
            let trees = (&self.events, &self.event_index, &self.retiring);
            let removed = trees.transaction(|(events, index, retiring)| {
                for (key, sequence) in &earlier {
                    events.remove(&sequence.to_be_bytes()[..])?;
                    index.remove(key)?;
                }
                retiring.remove(&subject)?;
                Ok(())
            });
            flatten(removed)?;
        }
        Ok(())
    }

    /// At open, before any write: indexes the events an older binary wrote (all, in a store from
    /// before the index), marks the subjects the `ERASED` events among them retired, and removes
    /// every marked subject's earlier events (those of marks a crash left too). A crash part-way
    /// leaves `COVERS` behind: the next open does the rest again.
    pub(super) fn with_event_index(self) -> Result<Self, StoreError> {
        let covers = match self.event_index.get(COVERS).map_err(backend)? {
            Some(bytes) => Some(sequence_of(&bytes, 0)?),
            None => None,
        };
        let range = match covers {
            None => self.events.iter(),
            Some(n) => self.events.range(n.saturating_add(1).to_be_bytes()..),
        };
        let mut last = None;
        for item in range {
            let (_, value) = item.map_err(backend)?;
            let event: ChangeEvent = decode(&value)?;
            self.event_index.insert(index_key(&event.subject, event.sequence), &[][..]).map_err(backend)?;
            if event.change == Change::Erased {
                self.retiring.insert(event.subject.as_bytes(), &event.sequence.to_be_bytes()[..]).map_err(backend)?;
            }
            last = Some(event.sequence);
        }
        if let Some(last) = last {
            self.event_index.insert(COVERS, &last.to_be_bytes()[..]).map_err(backend)?;
            tracing::info!(after = covers.unwrap_or(0), "indexed change events by subject");
        }
        self.retire_pending(u64::MAX)?;
        self.db.flush().map_err(backend)?;
        Ok(self)
    }
}

/// `domicile node check` (`check.rs`): every event up to what the index covers has its index
/// entry (one without would stay after its subject's erasure), and no retired subject's earlier
/// event remains unless its removal is still pending. Problems name subject ids only.
pub(super) fn check(db: &sled::Db, db_name: &str, problems: &mut Vec<String>, notes: &mut Vec<String>) {
    let trees = (db.open_tree("events"), db.open_tree("event_subjects"), db.open_tree("retiring"));
    let (Ok(events), Ok(index), Ok(retiring)) = trees else {
        problems.push(format!("{db_name}: cannot open the events, event_subjects or retiring tree"));
        return;
    };
    let covers = match index.get(COVERS) {
        Ok(Some(bytes)) => match sequence_of(&bytes, 0) {
            Ok(covers) => covers,
            Err(_) => return problems.push(format!("{db_name} tree event_subjects: what it covers does not decode")),
        },
        Ok(None) => {
            if !events.is_empty() {
                notes.push(format!("{db_name} tree event_subjects: not checked; the node builds it at its next start"));
            }
            return;
        }
        Err(e) => return problems.push(format!("{db_name} tree event_subjects: unreadable: {e}")),
    };
    // Two passes, holding only the retired subjects: every ERASED first, then the others.
    let mut erased: HashMap<SubjectId, u64> = HashMap::new();
    let (mut undecodable, mut unreadable) = (0usize, 0usize);
    let mut unindexed: HashMap<SubjectId, usize> = HashMap::new();
    let mut remaining: HashMap<SubjectId, usize> = HashMap::new();
    for pass in [0, 1] {
        for item in events.range(..=covers.to_be_bytes()) {
            let Ok((key, value)) = item else {
                unreadable += usize::from(pass == 0);
                continue;
            };
            let event = decode::<ChangeEvent>(&value).ok().filter(|e| key.as_ref() == e.sequence.to_be_bytes());
            let Some(event) = event else {
                undecodable += usize::from(pass == 0);
                continue;
            };
            if pass == 0 {
                if event.change == Change::Erased {
                    erased.insert(event.subject, event.sequence);
                }
                if !matches!(index.contains_key(index_key(&event.subject, event.sequence)), Ok(true)) {
                    *unindexed.entry(event.subject).or_default() += 1;
                }
            } else if event.change != Change::Erased
                && erased.get(&event.subject).is_some_and(|at| event.sequence < *at)
                && !matches!(retiring.contains_key(event.subject.as_bytes()), Ok(true))
            {
                *remaining.entry(event.subject).or_default() += 1;
            }
        }
    }
    if unreadable > 0 {
        problems.push(format!("{db_name} tree events: {unreadable} entr(ies) unreadable"));
    }
    if undecodable > 0 {
        problems.push(format!("{db_name} tree events: {undecodable} event(s) that do not decode under their sequence"));
    }
    let mut unindexed: Vec<_> = unindexed.into_iter().collect();
    unindexed.sort();
    for (subject, count) in unindexed {
        problems.push(format!(
            "{db_name} tree event_subjects: {count} event(s) of subject {subject} not indexed (its erasure would leave them)"
        ));
    }
    let mut remaining: Vec<_> = remaining.into_iter().collect();
    remaining.sort();
    for (subject, count) in remaining {
        problems.push(format!("{db_name} tree events: {count} event(s) of retired subject {subject} remain"));
    }
}
