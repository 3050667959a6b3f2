//! The import index on PostgreSQL: column `consent.import_source` (migration V5) holds each ledger
//! entry's source-event digest under the subject's key (`store::import_source`), empty for an entry
//! not imported, NULL for one written before the column existed. Partial indexes make both a point
//! lookup: `consent_import_source` (subject, digest) over imported entries, `consent_unclassified`
//! (subject, position) over the NULL ones (none once classified).
//!
//! - Every writer of `consent` fills it: the consent writer (`batch.rs`), a merge re-keying the
//!   absorbed ledger (`identity.rs`), an unmerge storing each half (`unmerge.rs`); an erasure
//!   deletes the rows, digests included.
//! - [`PgStore::imported_positions`] reads the digests asked for and opens only unclassified
//!   entries (classifying them as it goes), so an entry written by an older binary (before the
//!   migration, or during a rolling upgrade) is still found: a lookup never depends on the
//!   background pass having run. Digests and unclassified entries are read in one statement, so
//!   in one snapshot: an entry classified meanwhile cannot fall between two reads.
//! - The lookups are planned on every call (`prepared::Planned`, the unnamed statement), not prepared
//!   once: a prepared statement's generic plan, made while `consent` was small (the start of a
//!   first import), seq-scanned the table on every later call, as its estimated cost never grew
//!   (one 60,000-row import: some 800 full scans of `consent`, twice PostgreSQL's CPU per row).
//! - [`classify`] (started with the store) fills in unclassified entries in the background, a page
//!   at a time.
//! - The consent writer checks its imported entries against the index inside its transaction,
//!   under the region head's lock ([`Sources::held`]), so two racing runs, or a run racing a merge or an
//!   unmerge that moved the entry to another subject, write an event once however long ago its
//!   idempotency record was purged.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deadpool_postgres::Pool;
use domicile_types::SubjectId;
use tokio_postgres::types::Type;

use super::prepared::{Planned, Prepared};
use super::{Keks, PgStore, int, pg, pool_error, subject_id, uint};
use crate::store::codec::{consent_key, context};
use crate::store::import_source::{DIGEST_LEN, LedgerSource, digest_of, source_digest};
use crate::store::vault::SubjectKey;
use crate::store::{ConsentRecord, ImportEvidence, StoreError};

/// Unclassified entries read per page by the backfill.
const CLASSIFY_PAGE: i64 = 500;

/// The `import_source` value of an entry imported from `source`, or of one not imported (empty).
fn column_of(key: &SubjectKey, source: Option<&ImportEvidence>) -> Vec<u8> {
    source.map_or_else(Vec::new, |source| digest_of(key, source).to_vec())
}

/// The `import_source` value of a ledger entry.
pub(super) fn column(key: &SubjectKey, record: &ConsentRecord) -> Vec<u8> {
    column_of(key, record.evidence.import.as_ref())
}

/// The `import_source` value of a ledger entry from its plaintext (a merge re-keys entries as
/// bytes, without decoding them otherwise).
pub(super) fn column_of_plain(key: &SubjectKey, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
    let imported = LedgerSource::imported_of_plain(plain)?;
    Ok(column_of(key, imported.as_ref().map(|(source, _)| source)))
}

/// The source digests of a batch's imported entries and the keys they are under.
pub(super) struct Sources {
    wanted: Vec<(SubjectId, [u8; DIGEST_LEN])>,
    keys: HashMap<SubjectId, SubjectKey>,
}

/// Reads the keys of the subjects of `imported` (subject, source) and digests the sources, on
/// `client` before the consent writer takes the region's lock: a subject's data key never
/// changes (a KEK rotation re-wraps it), and a subject gone by the write is refused by the
/// write's own read. So [`Sources::held`] goes out together with the write's other reads.
pub(super) async fn sources<'a>(
    client: &impl Planned,
    keks: &Keks,
    imported: impl Iterator<Item = (&'a SubjectId, &'a ImportEvidence)>,
) -> Result<Sources, StoreError> {
    let imported: Vec<_> = imported.collect();
    let mut keys = HashMap::new();
    if imported.is_empty() {
        return Ok(Sources { wanted: Vec::new(), keys });
    }
    let mut ids: Vec<&[u8]> = imported.iter().map(|(s, _)| s.as_bytes().as_slice()).collect();
    ids.sort_unstable();
    ids.dedup();
    let rows = client
        .query_planned(
            "SELECT subject, kek, wrapped FROM subject_keys WHERE subject = ANY($1::bytea[])",
            &[(&ids, Type::BYTEA_ARRAY)],
        )
        .await
        .map_err(pg)?;
    for row in &rows {
        let subject = subject_id(row.get(0))?;
        keys.insert(subject, keks.unwrap(&subject, row.get(1), row.get(2))?);
    }
    let wanted = imported
        .into_iter()
        .filter_map(|(subject, source)| Some((*subject, digest_of(keys.get(subject)?, source))))
        .collect();
    Ok(Sources { wanted, keys })
}

impl Sources {
    /// Whether the subject's imported entries were checked (its key was read).
    pub(super) fn checked(&self, subject: &SubjectId) -> bool {
        self.keys.contains_key(subject)
    }

    /// Which of the batch's (subject, source digest) the ledger holds already, read in the
    /// consent writer's transaction under the region's lock: one statement for the whole batch,
    /// through `consent_import_source`; entries not yet classified are opened.
    pub(super) async fn held(&self, tx: &impl Planned) -> Result<HashSet<(SubjectId, [u8; DIGEST_LEN])>, StoreError> {
        let mut held = HashSet::new();
        if self.wanted.is_empty() {
            return Ok(held);
        }
        let subjects: Vec<&[u8]> = self.wanted.iter().map(|(s, _)| s.as_bytes().as_slice()).collect();
        let digests: Vec<&[u8]> = self.wanted.iter().map(|(_, d)| d.as_slice()).collect();
        let mut distinct = subjects.clone();
        distinct.sort_unstable();
        distinct.dedup();
        // One statement, so one snapshot: in two, an entry that `classify` filled in between
        // them would be in neither (unclassified for the first read, classified for the second).
        let rows = tx
            .query_planned(
                "SELECT c.subject, c.import_source, NULL::bigint, NULL::bytea FROM consent c \
                 JOIN unnest($1::bytea[], $2::bytea[]) AS w (subject, source) \
                   ON c.subject = w.subject AND c.import_source = w.source \
                 WHERE octet_length(c.import_source) > 0 \
                 UNION ALL \
                 SELECT subject, NULL, position, sealed FROM consent \
                 WHERE subject = ANY($3::bytea[]) AND import_source IS NULL",
                &[(&subjects, Type::BYTEA_ARRAY), (&digests, Type::BYTEA_ARRAY), (&distinct, Type::BYTEA_ARRAY)],
            )
            .await
            .map_err(pg)?;
        for row in &rows {
            let subject = subject_id(row.get(0))?;
            match row.get::<_, Option<&[u8]>>(1) {
                Some(source) => {
                    held.insert((subject, digest(source)?));
                }
                None => {
                    let Some(key) = self.keys.get(&subject) else { continue };
                    if let Some((source, _)) = open_source(key, &subject, uint(row.get(2))?, row.get(3))? {
                        held.insert((subject, digest_of(key, &source)));
                    }
                }
            }
        }
        Ok(held)
    }
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
) -> Result<Option<(ImportEvidence, u64)>, StoreError> {
    let plain = key.open(&context(b"consent", &consent_key(subject, position)), sealed)?;
    LedgerSource::imported_of_plain(&plain)
}

impl PgStore {
    /// [`crate::store::Store::imported_positions`] from the index: per source, the lowest
    /// position of its entries in the subject's ledger. The subject's key, then one statement
    /// for the digests asked for and the subject's unclassified entries (opened here, and
    /// classified on the way: [`CLASSIFY_SUBJECT`], best effort).
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
        // One statement, one snapshot (as in `held`).
        let rows = client
            .query_planned(
                "SELECT import_source, min(position), NULL::bytea FROM consent \
                 WHERE subject = $1 AND octet_length(import_source) > 0 AND import_source = ANY($2::bytea[]) \
                 GROUP BY import_source \
                 UNION ALL \
                 SELECT NULL, position, sealed FROM consent WHERE subject = $1 AND import_source IS NULL",
                &[(&id, Type::BYTEA), (&digests, Type::BYTEA_ARRAY)],
            )
            .await
            .map_err(pg)?;
        let mut lowest: HashMap<[u8; DIGEST_LEN], u64> = HashMap::new();
        let mut keep = |digest: [u8; DIGEST_LEN], position: u64| {
            let at = lowest.entry(digest).or_insert(position);
            *at = (*at).min(position);
        };
        let mut classified: (Vec<i64>, Vec<Vec<u8>>) = Default::default();
        for row in &rows {
            let position = uint(row.get(1))?;
            match row.get::<_, Option<&[u8]>>(0) {
                Some(source) => keep(digest(source)?, position),
                None => {
                    let source = open_source(&key, subject, position, row.get(2))?.map(|(source, _)| source);
                    let column = column_of(&key, source.as_ref());
                    if let Ok(digest) = <[u8; DIGEST_LEN]>::try_from(column.as_slice()) {
                        keep(digest, position);
                    }
                    classified.0.push(int(position));
                    classified.1.push(column);
                }
            }
        }
        if !classified.0.is_empty() {
            // Opened anyway: classified here, so the consent writer's check of this subject,
            // under the region's write lock, finds them in the index rather than opening them.
            // Best effort (the background pass does the rest).
            let written = client.execute_cached(CLASSIFY_SUBJECT, &[&id, &classified.0, &classified.1]).await;
            if let Err(e) = written {
                tracing::debug!(error = %pg(e), "classifying a subject's ledger entries for the import index");
            }
        }
        Ok(wanted.iter().map(|d| lowest.get(d).copied()).collect())
    }
}

/// Sets the class of a subject's unclassified entries ($1 the subject, $2 positions, $3 values).
/// It skips rows another transaction holds (a merge, an erasure, the background pass), so it
/// never waits while holding row locks and cannot deadlock with them; what it skips stays
/// unclassified for now.
const CLASSIFY_SUBJECT: &str = "UPDATE consent c SET import_source = u.source \
     FROM unnest($2::bigint[], $3::bytea[]) AS u (position, source) \
     WHERE c.subject = $1 AND c.position = u.position AND c.import_source IS NULL \
       AND c.position IN (SELECT position FROM consent \
                          WHERE subject = $1 AND import_source IS NULL FOR UPDATE SKIP LOCKED)";

/// Pause between pages of the background pass, so it leaves the database to the region's
/// traffic.
const CLASSIFY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Classifies the ledger entries written before the `import_source` column (or by a binary
/// without it) in the background, a page at a time in (subject, position) order, started with
/// the store; lookups open unclassified entries meanwhile, so nothing waits for it. One page is
/// worked on at a time in the region (a transaction-level advisory lock per page: the passes of
/// several nodes interleave page by page, each finding less to do), and a page's transaction
/// ends itself if left idle (a node gone mid-page). Rows another transaction holds are skipped (`SKIP LOCKED`), never
/// waited for. An entry that cannot be opened (no key, damaged) is passed over and counted in
/// the log. A database error (a failover, say) is retried with backoff; ten in a row end the
/// pass until the next start. Entries an older replica writes later are classified by the next
/// start of any node, and found by lookups until then.
pub(super) async fn classify(pool: Pool, keks: Arc<Keks>) {
    let (mut classified, mut unreadable, mut failures) = (0u64, 0u64, 0u32);
    let mut after: (Vec<u8>, i64) = (Vec::new(), -1);
    loop {
        match classify_page(&pool, &keks, &after).await {
            Ok(Page::Done) => break,
            Ok(Page::Busy) => tokio::time::sleep(CLASSIFY_PAUSE * 25).await,
            Ok(Page::Read { last, done, skipped }) => {
                (classified, unreadable, failures) = (classified + done, unreadable + skipped, 0);
                after = last;
                tokio::time::sleep(CLASSIFY_PAUSE).await;
            }
            Err(e) => {
                failures += 1;
                if failures >= 10 {
                    tracing::warn!(error = %e, "classifying ledger entries for the import index stopped; the next start resumes it");
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(250) * 2u32.pow(failures.min(7))).await;
            }
        }
    }
    if classified > 0 || unreadable > 0 {
        tracing::info!(classified, unreadable, "classified ledger entries for the import index");
    }
}

enum Page {
    /// No unclassified entry after the cursor.
    Done,
    /// Another node holds the pass's lock.
    Busy,
    /// A page read: the cursor after it, entries classified, entries passed over.
    Read { last: (Vec<u8>, i64), done: u64, skipped: u64 },
}

/// One page, in one transaction.
async fn classify_page(pool: &Pool, keks: &Keks, (subject, position): &(Vec<u8>, i64)) -> Result<Page, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg)?;
    // A node that stops mid-page (its host gone) must not hold the page's rows, which merges
    // and erasures wait for holding the region head, until PostgreSQL notices the connection
    // is dead: the limits of a write (a page is milliseconds of work).
    tx.batch_execute(super::unit::STALL_LIMITS).await.map_err(pg)?;
    let locked = tx.query_one_cached("SELECT pg_try_advisory_xact_lock(7002)", &[]).await.map_err(pg)?;
    if !locked.get::<_, bool>(0) {
        return Ok(Page::Busy);
    }
    let rows = tx
        .query_cached(
            "SELECT c.subject, c.position, c.sealed, k.kek, k.wrapped FROM consent c \
             LEFT JOIN subject_keys k ON k.subject = c.subject \
             WHERE c.import_source IS NULL AND (c.subject, c.position) > ($1, $2) \
             ORDER BY c.subject, c.position LIMIT $3 FOR UPDATE OF c SKIP LOCKED",
            &[&subject.as_slice(), position, &CLASSIFY_PAGE],
        )
        .await
        .map_err(pg)?;
    let Some(last) = rows.last().map(|row| (row.get::<_, &[u8]>(0).to_vec(), row.get::<_, i64>(1))) else {
        return Ok(Page::Done);
    };
    let (mut subjects, mut positions, mut sources): (Vec<&[u8]>, Vec<i64>, Vec<Vec<u8>>) = Default::default();
    let mut skipped = 0;
    for row in &rows {
        let (id, position): (&[u8], i64) = (row.get(0), row.get(1));
        match classify_row(keks, id, position, row.get(2), row.get(3), row.get(4)) {
            Ok(source) => {
                subjects.push(id);
                positions.push(position);
                sources.push(source);
            }
            Err(_) => skipped += 1,
        }
    }
    // The rows are locked by this transaction since the read: none changed meanwhile.
    let done = tx
        .execute_cached(
            "UPDATE consent c SET import_source = u.source \
             FROM unnest($1::bytea[], $2::bigint[], $3::bytea[]) AS u (subject, position, source) \
             WHERE c.subject = u.subject AND c.position = u.position",
            &[&subjects, &positions, &sources],
        )
        .await
        .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok(Page::Read { last, done, skipped })
}

/// The `import_source` value of one unclassified entry, with the subject's wrapped key read
/// beside it (none: a subject whose erasure left rows behind, which it does not).
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
    Ok(column_of(&key, source.as_ref().map(|(source, _)| source)))
}
