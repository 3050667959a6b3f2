//! The import index: which source events (source system, source event id) a subject's consent
//! ledger holds, so an import checks an entry with a point lookup. Before it, each call read the
//! whole ledger of each of its subjects (every entry opened and decoded), which is quadratic in
//! a subject's history: a file spreads a subject's events over many calls, and each call read
//! everything the earlier ones wrote.
//!
//! Tree `imports`: subject id ‖ digest of the source event under the subject's key → the
//! lowest ledger position of the subject holding that event (a merge can bring two). Written in
//! the ledger entry's transaction; moved by a merge and split by an unmerge with the ledger
//! entries (re-keyed under the new subject's key, in the same transaction); removed with the
//! subject's other entries by an erasure, which needs no key to find them. The digest is keyed,
//! because a source's event id may say something about a person: once the subject's key is
//! destroyed, no copy of an entry left in sled's old segments can be tied to its event.

use domicile_types::{SUBJECT_ID_LEN, SubjectId};

use super::{SledStore, StoreError, SubjectKey, backend};
use crate::store::ImportEvidence;
pub(super) use crate::store::import_source::LedgerSource;
use crate::store::import_source::{DIGEST_LEN, source_digest};

/// `counters` key: the ledger position up to which the index covers every imported entry. Every
/// consent write moves it with the ledger's own counter, so a store whose ledger is past it was
/// last written by a binary that keeps no index (from before the index, or a rollback to one)
/// and is indexed again when it opens.
pub(super) const IMPORT_INDEX_COVERS: &[u8] = b"import_index_covers";

/// `counters` key: the length of the erasure journal when this binary last appended to it. Every
/// merge, unmerge and erasure is journaled; one made by a binary without the index (which does
/// not move the index's entries with it) leaves the journal longer than recorded here, so the
/// index is built again at open. (A crash between an append and this record costs one rebuild.)
pub(super) const IMPORT_INDEX_JOURNAL: &[u8] = b"import_index_journal";

/// An index key: the subject, then the source event's digest under the subject's key.
pub(super) type IndexKey = [u8; SUBJECT_ID_LEN + DIGEST_LEN];

/// A merge's index change: the keys removed, the entries written.
pub(super) type IndexMoves = (Vec<sled::IVec>, Vec<(IndexKey, u64)>);

/// The index key of `subject`'s entries imported from (`source_system`, `source_event_id`).
fn event_key(subject: &SubjectId, key: &SubjectKey, source_system: &str, source_event_id: &str) -> IndexKey {
    let digest = source_digest(key, source_system, source_event_id);
    let mut out = [0u8; SUBJECT_ID_LEN + DIGEST_LEN];
    out[..SUBJECT_ID_LEN].copy_from_slice(subject.as_bytes());
    out[SUBJECT_ID_LEN..].copy_from_slice(&digest);
    out
}

/// The index key of `subject`'s entries imported from `source`.
pub(super) fn index_key(subject: &SubjectId, key: &SubjectKey, source: &ImportEvidence) -> IndexKey {
    event_key(subject, key, &source.source_system, &source.source_event_id)
}

/// The index entries of a subject's imported ledger entries (in ledger order): one per source
/// event, at its lowest position.
pub(super) fn index_entries<'a>(
    subject: &SubjectId,
    key: &SubjectKey,
    entries: impl IntoIterator<Item = (&'a ImportEvidence, u64)>,
) -> Vec<(IndexKey, u64)> {
    let mut lowest: std::collections::HashMap<IndexKey, u64> = std::collections::HashMap::new();
    for (source, position) in entries {
        let at = lowest.entry(index_key(subject, key, source)).or_insert(position);
        *at = (*at).min(position);
    }
    lowest.into_iter().collect()
}

fn position_of(value: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(value).map(u64::from_be_bytes).map_err(|_| StoreError::Corrupt("import index entry".into()))
}

impl SledStore {
    /// The source events of the subject's imported ledger entries, with their positions.
    fn read_imported_events(&self, subject: &SubjectId) -> Result<Vec<(ImportEvidence, u64)>, StoreError> {
        let entries: Vec<LedgerSource> = self.open_log(&self.consent, b"consent", subject)?;
        Ok(entries.into_iter().filter_map(LedgerSource::imported).collect())
    }

    /// [`crate::store::Store::imported_positions`] from the index: per source, the lowest
    /// position of its entries in the subject's ledger.
    pub(super) fn indexed_positions(
        &self,
        subject: &SubjectId,
        key: &SubjectKey,
        sources: &[(String, String)],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        sources.iter().map(|(system, event)| self.indexed_position(subject, key, system, event)).collect()
    }

    /// The lowest position of the subject's entries imported from (`source_system`,
    /// `source_event_id`): one point read.
    pub(super) fn indexed_position(
        &self,
        subject: &SubjectId,
        key: &SubjectKey,
        source_system: &str,
        source_event_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        let value = self.imports.get(event_key(subject, key, source_system, source_event_id)).map_err(backend)?;
        value.as_deref().map(position_of).transpose()
    }

    /// A merge's index change: `from`'s entries (removed) and the same events keyed for `into`
    /// (read from `from`'s ledger, so before its key goes), each to be kept at the lower of its
    /// position and any `into` already has.
    pub(super) fn index_moves(
        &self,
        (from, into): (&SubjectId, &SubjectId),
        into_key: &SubjectKey,
    ) -> Result<IndexMoves, StoreError> {
        let old = Self::prefix_keys(&self.imports, from)?;
        let moved = self.read_imported_events(from)?;
        let mut new = Vec::with_capacity(moved.len());
        for (key, position) in index_entries(into, into_key, moved.iter().map(|(s, p)| (s, *p))) {
            let kept = match self.imports.get(key).map_err(backend)? {
                Some(value) => position_of(&value)?.min(position),
                None => position,
            };
            new.push((key, kept));
        }
        Ok((old, new))
    }

    /// Indexes every imported entry of a store last written without the index, at open, before
    /// any write (a crash part-way leaves the position behind: the next open indexes again). A
    /// subject whose ledger cannot be decoded is left out and counted in the log (`domicile node
    /// check` names what is damaged) rather than keeping the region down; the position is then
    /// left behind too, so every open tries again until the damage is repaired. A read error of
    /// the database itself stops the open.
    pub(super) fn with_import_index(self) -> Result<Self, StoreError> {
        let ledger = self.ledger_position()?;
        let journal = self.journal_length()?;
        let covers = self.counters.get(IMPORT_INDEX_COVERS).map_err(backend)?;
        let saw = self.counters.get(IMPORT_INDEX_JOURNAL).map_err(backend)?;
        if covers.as_deref().map(position_of).transpose()? == Some(ledger)
            && saw.as_deref().map(position_of).transpose()? == Some(journal)
        {
            return Ok(self);
        }
        if ledger > 0 {
            tracing::info!("indexing imported consent entries (a store last written without the import index)");
        }
        // Built afresh: a binary without the index may have merged, split or erased subjects
        // whose entries are still here.
        self.imports.clear().map_err(backend)?;
        let (mut indexed, mut unreadable) = (0usize, 0usize);
        for subject in self.meta.iter().keys() {
            let subject = subject.map_err(backend)?;
            let subject = SubjectId::from_slice(&subject).map_err(|_| StoreError::Corrupt("subject id".into()))?;
            // A subject whose key is gone (an erasure interrupted part-way) has nothing readable.
            let Some(key) = self.vault.get(&subject)? else { continue };
            let events = match self.read_imported_events(&subject) {
                Ok(events) => events,
                Err(e @ StoreError::Backend(_)) => return Err(e),
                Err(_) => {
                    unreadable += 1;
                    continue;
                }
            };
            let mut batch = sled::Batch::default();
            for (k, position) in index_entries(&subject, &key, events.iter().map(|(s, p)| (s, *p))) {
                batch.insert(&k[..], &position.to_be_bytes()[..]);
            }
            self.imports.apply_batch(batch).map_err(backend)?;
            indexed += 1;
            if indexed % 100_000 == 0 {
                tracing::info!(subjects = indexed, "indexing imported consent entries");
            }
        }
        if unreadable > 0 {
            tracing::warn!(
                unreadable,
                "subjects whose ledger could not be decoded were left out of the import index; it is built again at the next start"
            );
        } else {
            self.counters.insert(IMPORT_INDEX_COVERS, &ledger.to_be_bytes()[..]).map_err(backend)?;
            self.counters.insert(IMPORT_INDEX_JOURNAL, &journal.to_be_bytes()[..]).map_err(backend)?;
        }
        self.db.flush().map_err(backend)?;
        Ok(self)
    }

    fn journal_length(&self) -> Result<u64, StoreError> {
        let journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        journal.metadata().map(|m| m.len()).map_err(|e| backend(format!("erasure journal: {e}")))
    }

    /// Records the journal's length after this binary appended to it (`IMPORT_INDEX_JOURNAL`).
    pub(super) fn index_saw_journal(&self, length: u64) -> Result<(), StoreError> {
        self.counters.insert(IMPORT_INDEX_JOURNAL, &length.to_be_bytes()[..]).map_err(backend)?;
        Ok(())
    }
}
