//! The source event of an imported ledger entry, as both stores keep it (sled in each subject's
//! ledger directory, `sled_store/ledger.rs`; PostgreSQL in its import index): a keyed digest of
//! (source system, source event id) under the subject's key, so an import checks an entry without
//! opening the subject's ledger (quadratic in a long history: a file
//! spreads a subject's events over many calls, and each call read everything the earlier ones
//! wrote). The digest is keyed because a source's event id may say something about a person:
//! once erasure destroys the subject's key, no copy left in old files (sled's segments,
//! PostgreSQL's dead tuples and WAL) can be tied to its event.

use super::ImportEvidence;
use super::vault::SubjectKey;

/// Bytes of a source digest.
pub(crate) const DIGEST_LEN: usize = 16;

/// The digest of the source event (`source_system`, `source_event_id`) under `key`.
pub(crate) fn source_digest(key: &SubjectKey, source_system: &str, source_event_id: &str) -> [u8; DIGEST_LEN] {
    key.digest(b"domicile/import-source/v1", &[source_system.as_bytes(), source_event_id.as_bytes()])
}

/// The digest of an imported entry's source event.
pub(crate) fn digest_of(key: &SubjectKey, source: &ImportEvidence) -> [u8; DIGEST_LEN] {
    source_digest(key, &source.source_system, &source.source_event_id)
}

/// A ledger entry with only what the index is built from decoded (serde skips the rest without
/// building it): what an index's rebuild or backfill, a merge and `domicile node check` read.
#[derive(serde::Deserialize)]
pub(crate) struct LedgerSource {
    sequence: u64,
    evidence: SourceEvidence,
}

#[derive(serde::Deserialize)]
struct SourceEvidence {
    #[serde(default)]
    import: Option<ImportEvidence>,
}

impl LedgerSource {
    /// An imported entry's source event and position.
    pub(crate) fn imported(self) -> Option<(ImportEvidence, u64)> {
        Some((self.evidence.import?, self.sequence))
    }

    /// [`Self::imported`] of a ledger entry's plaintext.
    pub(crate) fn imported_of_plain(plain: &[u8]) -> Result<Option<(ImportEvidence, u64)>, super::StoreError> {
        let entry: Self =
            serde_json::from_slice(plain).map_err(|_| super::StoreError::Corrupt("ledger entry".into()))?;
        Ok(entry.imported())
    }
}
