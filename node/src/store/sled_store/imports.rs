//! The import index: which source events (source system, source event id) a subject's consent
//! ledger holds, so an import checks an entry with a point lookup. Before it, each call read the
//! whole ledger of each of its subjects (every entry opened and decoded), which is quadratic in
//! a subject's history: a file spreads a subject's events over many calls, and each call read
//! everything the earlier ones wrote.
//!
//! Tree `imports`: subject id ‖ digest of the source event under the subject's key ‖ ledger
//! position → nothing. Written in the ledger entry's transaction; moved by a merge and split by
//! an unmerge with the ledger entries (re-keyed under the new subject's key, in the same
//! transaction); removed with the subject's other entries by an erasure, which needs no key to
//! find them. The digest is keyed, because a source's event id may say something about a person:
//! once the subject's key is destroyed, no copy of an entry left in sled's old segments can be
//! tied to its event.

use domicile_types::{SUBJECT_ID_LEN, SubjectId};

use super::{SledStore, StoreError, SubjectKey, backend};
use crate::store::ImportEvidence;

/// `counters` key present once the index covers every imported entry (stores written before it
/// existed are indexed once, at open).
pub(super) const IMPORT_INDEX_BUILT: &[u8] = b"import_index_v1";

const DIGEST_LEN: usize = 16;

/// An index key: the subject, the source event's digest, the ledger position (big-endian).
pub(super) type IndexKey = [u8; SUBJECT_ID_LEN + DIGEST_LEN + 8];

/// The key prefix of a source event's entries for `subject`.
fn event_prefix(subject: &SubjectId, key: &SubjectKey, source_system: &str, source_event_id: &str) -> Vec<u8> {
    let digest = key.digest(b"domicile/import-source/v1", &[source_system.as_bytes(), source_event_id.as_bytes()]);
    let mut prefix = Vec::with_capacity(SUBJECT_ID_LEN + DIGEST_LEN);
    prefix.extend_from_slice(subject.as_bytes());
    prefix.extend_from_slice(&digest);
    prefix
}

/// The index key of `subject`'s ledger entry at `position`, imported from `source`.
pub(super) fn index_key(subject: &SubjectId, key: &SubjectKey, source: &ImportEvidence, position: u64) -> IndexKey {
    let mut out = [0u8; SUBJECT_ID_LEN + DIGEST_LEN + 8];
    out[..SUBJECT_ID_LEN + DIGEST_LEN].copy_from_slice(&event_prefix(
        subject,
        key,
        &source.source_system,
        &source.source_event_id,
    ));
    out[SUBJECT_ID_LEN + DIGEST_LEN..].copy_from_slice(&position.to_be_bytes());
    out
}

impl SledStore {
    /// [`crate::store::Store::imported_positions`] from the index: per source, the lowest
    /// position of its entries in the subject's ledger. NOT_FOUND for a subject that is gone
    /// (merged away, split, erased): its identifier names another subject now.
    pub(super) fn indexed_positions(
        &self,
        subject: &SubjectId,
        key: &SubjectKey,
        sources: &[(String, String)],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        sources
            .iter()
            .map(|(system, event)| {
                let Some(found) = self.imports.scan_prefix(event_prefix(subject, key, system, event)).keys().next()
                else {
                    return Ok(None);
                };
                let found = found.map_err(backend)?;
                let position = found
                    .get(SUBJECT_ID_LEN + DIGEST_LEN..)
                    .and_then(|p| <[u8; 8]>::try_from(p).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| StoreError::Corrupt("import index key".into()))?;
                Ok(Some(position))
            })
            .collect()
    }

    /// A merge's index change: `from`'s entries (removed) and the same entries keyed for `into`
    /// (read from `from`'s ledger, so before its key goes).
    pub(super) fn index_moves(
        &self,
        (from, into): (&SubjectId, &SubjectId),
        into_key: &SubjectKey,
    ) -> Result<(Vec<sled::IVec>, Vec<IndexKey>), StoreError> {
        let old = Self::prefix_keys(&self.imports, from)?;
        let new = self.read_imported_events(from)?;
        Ok((old, new.iter().map(|(source, position)| index_key(into, into_key, source, *position)).collect()))
    }

    /// Indexes every imported entry of a store written before the index existed, once (a crash
    /// part-way leaves the marker unset: the next open indexes again, which changes nothing). A
    /// subject whose ledger cannot be read is left out and counted in the log (`domicile node
    /// check` names what is damaged), rather than keeping the region down.
    pub(super) fn with_import_index(self) -> Result<Self, StoreError> {
        if self.counters.contains_key(IMPORT_INDEX_BUILT).map_err(backend)? {
            return Ok(self);
        }
        let (mut indexed, mut unreadable) = (0usize, 0usize);
        for subject in self.meta.iter().keys() {
            let subject = subject.map_err(backend)?;
            let subject = SubjectId::from_slice(&subject).map_err(|_| StoreError::Corrupt("subject id".into()))?;
            // A subject whose key is gone (an erasure interrupted part-way) has nothing readable.
            let Some(key) = self.vault.get(&subject)? else { continue };
            let events = match self.read_imported_events(&subject) {
                Ok(events) => events,
                Err(_) => {
                    unreadable += 1;
                    continue;
                }
            };
            let mut batch = sled::Batch::default();
            for (source, position) in &events {
                batch.insert(&index_key(&subject, &key, source, *position)[..], &[][..]);
            }
            self.imports.apply_batch(batch).map_err(backend)?;
            indexed += 1;
            if indexed % 100_000 == 0 {
                tracing::info!(subjects = indexed, "indexing imported consent entries");
            }
        }
        if unreadable > 0 {
            tracing::warn!(unreadable, "subjects whose ledger could not be read were left out of the import index");
        }
        self.counters.insert(IMPORT_INDEX_BUILT, &[1u8][..]).map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(self)
    }
}
