//! The import index on PostgreSQL: column `consent.import_source` (migration V5) holds each ledger
//! entry's source-event digest under the subject's key (`store::import_source`), empty for an entry
//! not imported, NULL for one written before the column existed. Partial indexes make both a point
//! lookup: `consent_import_source` (subject, digest) over imported entries, `consent_unclassified`
//! (subject) over the NULL ones (none once classified).
//!
//! - Every writer of `consent` fills it: the consent writer (`batch.rs`), a merge re-keying the
//!   absorbed ledger (`identity.rs`), an unmerge storing each half (`unmerge.rs`); an erasure
//!   deletes the rows, digests included.
//! - [`PgStore::imported_positions`] reads the digests asked for and opens only unclassified
//!   entries, so an entry written by an older binary (before the migration, or during a rolling
//!   upgrade) is still found: a lookup never depends on the backfill having run.
//! - [`classify`] (started with the store) fills in unclassified entries in the background, a page
//!   at a time; replicas may run it at once (each update keeps `import_source IS NULL`).
//! - The consent writer checks its imported entries against the index inside its transaction,
//!   under the region head's lock ([`held`]), so two racing runs, or a run racing a merge or an
//!   unmerge that moved the entry to another subject, write an event once however long ago its
//!   idempotency record was purged.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deadpool_postgres::Pool;
use domicile_types::SubjectId;

use super::prepared::Prepared;
use super::{Keks, PgStore, int, pg, pool_error, subject_id, uint};
use crate::store::codec::{consent_key, context};
use crate::store::import_source::{DIGEST_LEN, LedgerSource, digest_of, source_digest};
use crate::store::vault::SubjectKey;
use crate::store::{ConsentRecord, StoreError};

/// Unclassified entries read per page by the backfill.
const CLASSIFY_PAGE: i64 = 500;

/// The `import_source` value of a ledger entry: its source digest, or empty when not imported.
pub(super) fn column(key: &SubjectKey, record: &ConsentRecord) -> Vec<u8> {
    record.evidence.import.as_ref().map_or_else(Vec::new, |source| digest_of(key, source).to_vec())
}

/// The `import_source` value of a ledger entry from its plaintext (a merge re-keys entries as
/// bytes, without decoding them otherwise).
pub(super) fn column_of_plain(key: &SubjectKey, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
    let entry: LedgerSource = serde_json::from_slice(plain).map_err(|_| StoreError::Corrupt("ledger entry".into()))?;
    Ok(entry.imported().map_or_else(Vec::new, |(source, _)| digest_of(key, &source).to_vec()))
}

/// Which of `wanted` (subject, source digest) the ledger holds already, read in the consent
/// writer's transaction: one statement for the whole batch, through `consent_import_source`.
/// Entries not yet classified are opened (`key_of` gives the batch's live subjects' keys).
pub(super) async fn held<'k>(
    tx: &impl Prepared,
    wanted: &[(SubjectId, [u8; DIGEST_LEN])],
    key_of: impl Fn(&SubjectId) -> Option<&'k SubjectKey>,
) -> Result<HashSet<(SubjectId, [u8; DIGEST_LEN])>, StoreError> {
    let mut held = HashSet::new();
    if wanted.is_empty() {
        return Ok(held);
    }
    let subjects: Vec<&[u8]> = wanted.iter().map(|(s, _)| s.as_bytes().as_slice()).collect();
    let digests: Vec<&[u8]> = wanted.iter().map(|(_, d)| d.as_slice()).collect();
    let mut distinct = subjects.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let indexed = async {
        tx.query_cached(
            "SELECT c.subject, c.import_source FROM consent c \
             JOIN unnest($1::bytea[], $2::bytea[]) AS w (subject, source) \
               ON c.subject = w.subject AND c.import_source = w.source \
             WHERE octet_length(c.import_source) > 0",
            &[&subjects, &digests],
        )
        .await
    };
    let unclassified = async {
        tx.query_cached(
            "SELECT subject, position, sealed FROM consent WHERE subject = ANY($1::bytea[]) AND import_source IS NULL",
            &[&distinct],
        )
        .await
    };
    let (indexed, unclassified) = tokio::try_join!(indexed, unclassified).map_err(pg)?;
    for row in &indexed {
        held.insert((subject_id(row.get(0))?, digest(row.get(1))?));
    }
    for row in &unclassified {
        let subject = subject_id(row.get(0))?;
        let Some(key) = key_of(&subject) else { continue };
        if let Some((source, _)) = open_source(key, &subject, uint(row.get(1))?, row.get(2))? {
            held.insert((subject, digest_of(key, &source)));
        }
    }
    Ok(held)
}

fn digest(bytes: &[u8]) -> Result<[u8; DIGEST_LEN], StoreError> {
    <[u8; DIGEST_LEN]>::try_from(bytes).map_err(|_| StoreError::Corrupt("import source digest".into()))
}

/// The source event of a sealed ledger entry, if it was imported.
fn open_source(
    key: &SubjectKey,
    subject: &SubjectId,
    position: u64,
    sealed: &[u8],
) -> Result<Option<(crate::store::ImportEvidence, u64)>, StoreError> {
    let plain = key.open(&context(b"consent", &consent_key(subject, position)), sealed)?;
    let entry: LedgerSource = serde_json::from_slice(&plain).map_err(|_| StoreError::Corrupt("ledger entry".into()))?;
    Ok(entry.imported())
}

impl PgStore {
    /// [`crate::store::Store::imported_positions`] from the index: per source, the lowest
    /// position of its entries in the subject's ledger. Two statements sent together: the
    /// digests asked for, and the subject's unclassified entries (opened here).
    pub async fn imported_positions(
        &self,
        subject: &SubjectId,
        sources: &[(String, String)],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let client = self.client().await?;
        let key = self.key(&client, subject).await?.ok_or(StoreError::NotFound)?;
        let wanted: Vec<[u8; DIGEST_LEN]> =
            sources.iter().map(|(system, event)| source_digest(&key, system, event)).collect();
        let digests: Vec<&[u8]> = wanted.iter().map(|d| d.as_slice()).collect();
        let id = subject.as_bytes().as_slice();
        let indexed = async {
            client
                .query_cached(
                    "SELECT import_source, min(position) FROM consent \
                     WHERE subject = $1 AND octet_length(import_source) > 0 AND import_source = ANY($2::bytea[]) \
                     GROUP BY import_source",
                    &[&id, &digests],
                )
                .await
        };
        let unclassified = async {
            client
                .query_cached(
                    "SELECT position, sealed FROM consent WHERE subject = $1 AND import_source IS NULL",
                    &[&id],
                )
                .await
        };
        let (indexed, unclassified) = tokio::try_join!(indexed, unclassified).map_err(pg)?;
        let mut lowest: HashMap<[u8; DIGEST_LEN], u64> = HashMap::new();
        let mut keep = |digest: [u8; DIGEST_LEN], position: u64| {
            let at = lowest.entry(digest).or_insert(position);
            *at = (*at).min(position);
        };
        for row in &indexed {
            keep(digest(row.get(0))?, uint(row.get(1))?);
        }
        for row in &unclassified {
            if let Some((source, position)) = open_source(&key, subject, uint(row.get(0))?, row.get(1))? {
                keep(digest_of(&key, &source), position);
            }
        }
        Ok(wanted.iter().map(|d| lowest.get(d).copied()).collect())
    }
}

/// Classifies the ledger entries written before the `import_source` column (or by a binary
/// without it), a page at a time, until none is left; started with the store, in the background
/// (lookups open unclassified entries meanwhile, so nothing waits for it). An entry whose subject
/// has no key (erased between the read and the update: its rows are gone) or that cannot be
/// opened is left unclassified and counted in the log; `domicile node check` names damage. Ends
/// at the first database error (the next start tries again).
pub(super) async fn classify(pool: Pool, keks: Arc<Keks>) {
    let mut classified = 0u64;
    let mut skipped: HashSet<(Vec<u8>, i64)> = HashSet::new();
    loop {
        match classify_page(&pool, &keks, &mut skipped).await {
            Ok(0) => break,
            Ok(n) => classified += n,
            Err(e) => {
                tracing::warn!(error = %e, "classifying imported ledger entries stopped; the next start resumes it");
                return;
            }
        }
    }
    if classified > 0 || !skipped.is_empty() {
        tracing::info!(classified, unreadable = skipped.len(), "classified ledger entries for the import index");
    }
}

/// One page: returns how many entries it classified (0: none left but those skipped).
async fn classify_page(pool: &Pool, keks: &Keks, skipped: &mut HashSet<(Vec<u8>, i64)>) -> Result<u64, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let rows = client
        .query_cached(
            "SELECT c.subject, c.position, c.sealed, k.kek, k.wrapped FROM consent c \
             LEFT JOIN subject_keys k ON k.subject = c.subject \
             WHERE c.import_source IS NULL ORDER BY c.subject, c.position LIMIT $1",
            &[&(CLASSIFY_PAGE + int(skipped.len() as u64))],
        )
        .await
        .map_err(pg)?;
    let (mut subjects, mut positions, mut sources): (Vec<&[u8]>, Vec<i64>, Vec<Vec<u8>>) = Default::default();
    for row in &rows {
        let (id, position): (&[u8], i64) = (row.get(0), row.get(1));
        if skipped.contains(&(id.to_vec(), position)) {
            continue;
        }
        let source = classify_row(keks, id, position, row.get(2), row.get(3), row.get(4));
        match source {
            Ok(source) => {
                subjects.push(id);
                positions.push(position);
                sources.push(source);
            }
            Err(_) => {
                skipped.insert((id.to_vec(), position));
            }
        }
    }
    if subjects.is_empty() {
        return Ok(0);
    }
    let updated = client
        .execute_cached(
            "UPDATE consent c SET import_source = u.source \
             FROM unnest($1::bytea[], $2::bigint[], $3::bytea[]) AS u (subject, position, source) \
             WHERE c.subject = u.subject AND c.position = u.position AND c.import_source IS NULL",
            &[&subjects, &positions, &sources],
        )
        .await
        .map_err(pg)?;
    // Another replica may have classified the page first: count what was read, so the loop ends.
    Ok(updated.max(subjects.len() as u64))
}

/// The `import_source` value of one unclassified entry, with the subject's wrapped key read
/// beside it (none: the subject was erased meanwhile).
fn classify_row(
    keks: &Keks,
    id: &[u8],
    position: i64,
    sealed: &[u8],
    kek: Option<i32>,
    wrapped: Option<&[u8]>,
) -> Result<Vec<u8>, StoreError> {
    let subject = subject_id(id)?;
    let (Some(version), Some(wrapped)) = (kek, wrapped) else { return Err(StoreError::NotFound) };
    let key = keks.unwrap(&subject, version, wrapped)?;
    let source = open_source(&key, &subject, uint(position)?, sealed)?;
    Ok(source.map_or_else(Vec::new, |(source, _)| digest_of(&key, &source).to_vec()))
}
