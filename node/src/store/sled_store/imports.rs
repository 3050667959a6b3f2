//! The import index: which source events (source system, source event id) the consent ledger
//! holds, so an import checks an entry with a point lookup. Before it, each call read the whole
//! ledger of each of its subjects (every entry opened and decoded): a third of a node's import
//! work, and quadratic in a subject's history, since a file spreads a subject's events over
//! many calls and each call read everything the earlier ones wrote.
//!
//! Tree `imports`: digest of the source event ‖ ledger position → nothing. The key holds no
//! subject: merges and unmerges move ledger entries between subjects but keep their positions,
//! so the index never changes with them; a lookup for a subject counts a position only where
//! that subject's ledger holds it. The digest is a hash of an opaque id from another system,
//! never an identifier; an erasure removes its subject's entries anyway.

use domicile_types::SubjectId;

use super::{SledStore, StoreError, backend, consent_key};
use crate::store::ImportEvidence;

/// `counters` key present once the index covers every imported entry (stores written before it
/// existed are indexed once, at open).
pub(super) const IMPORT_INDEX_BUILT: &[u8] = b"import_index_v1";

const DIGEST_LEN: usize = 16;

/// An index key: the source event's digest, then the ledger position (big-endian).
pub(super) type IndexKey = [u8; DIGEST_LEN + 8];

fn digest(source_system: &str, source_event_id: &str) -> [u8; DIGEST_LEN] {
    let mut input = Vec::with_capacity(48 + source_system.len() + source_event_id.len());
    input.extend_from_slice(b"domicile/import-source/v1");
    for part in [source_system.as_bytes(), source_event_id.as_bytes()] {
        input.extend_from_slice(&(part.len() as u64).to_be_bytes());
        input.extend_from_slice(part);
    }
    let hash = ring::digest::digest(&ring::digest::SHA256, &input);
    let mut out = [0u8; DIGEST_LEN];
    out.copy_from_slice(&hash.as_ref()[..DIGEST_LEN]);
    out
}

/// The index key of the ledger entry at `position` imported from `source`.
pub(super) fn index_key(source: &ImportEvidence, position: u64) -> IndexKey {
    let mut key = [0u8; DIGEST_LEN + 8];
    key[..DIGEST_LEN].copy_from_slice(&digest(&source.source_system, &source.source_event_id));
    key[DIGEST_LEN..].copy_from_slice(&position.to_be_bytes());
    key
}

impl SledStore {
    /// [`crate::store::Store::imported_positions`] from the index: per source, the lowest
    /// position the subject's ledger holds among those indexed for it.
    pub(super) fn indexed_positions(
        &self,
        subject: &SubjectId,
        sources: &[(String, String)],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let mut out = Vec::with_capacity(sources.len());
        for (system, event) in sources {
            let mut found = None;
            for key in self.imports.scan_prefix(digest(system, event)).keys() {
                let key = key.map_err(backend)?;
                let position = key
                    .get(DIGEST_LEN..)
                    .and_then(|p| <[u8; 8]>::try_from(p).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| StoreError::Corrupt("import index key".into()))?;
                // Another subject's entry of the same source event (or one erased since) is not
                // this subject's.
                if self.consent.contains_key(consent_key(subject, position)).map_err(backend)? {
                    found = Some(position);
                    break;
                }
            }
            out.push(found);
        }
        Ok(out)
    }

    /// The index keys of the subject's imported entries (read from its ledger, so before its key
    /// is destroyed): what an erasure removes. None once the key is gone (an erasure retried
    /// after it was destroyed: its ledger can no longer be read, and its index entries stay as
    /// digests of positions no ledger holds).
    pub(super) fn import_index_keys(&self, subject: &SubjectId) -> Result<Vec<IndexKey>, StoreError> {
        if self.vault.get(subject)?.is_none() {
            return Ok(Vec::new());
        }
        Ok(self.read_imported_events(subject)?.iter().map(|(source, position)| index_key(source, *position)).collect())
    }

    /// Indexes every imported entry of a store written before the index existed, once (a crash
    /// part-way leaves the marker unset: the next open indexes again, which changes nothing).
    pub(super) fn with_import_index(self) -> Result<Self, StoreError> {
        if self.counters.contains_key(IMPORT_INDEX_BUILT).map_err(backend)? {
            return Ok(self);
        }
        for subject in self.meta.iter().keys() {
            let subject = subject.map_err(backend)?;
            let subject = SubjectId::from_slice(&subject).map_err(|_| StoreError::Corrupt("subject id".into()))?;
            let mut batch = sled::Batch::default();
            for key in self.import_index_keys(&subject)? {
                batch.insert(&key[..], &[][..]);
            }
            self.imports.apply_batch(batch).map_err(backend)?;
        }
        self.counters.insert(IMPORT_INDEX_BUILT, &[1u8][..]).map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(self)
    }
}
