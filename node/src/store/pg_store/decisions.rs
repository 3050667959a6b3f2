//! Decisions' audit entries on PostgreSQL: queued in `decision_entries`, then chained.
//!
//! A decision is answered only after its entry is stored, as on the embedded store (where it is
//! in the log file before the answer, synced with the next write). Chaining an entry needs the
//! region head (the chain's last hash), and the head is locked by every write through its commit's
//! flush; so instead of taking it per decision batch, the entries of the decisions made meanwhile
//! are inserted into `decision_entries` with one statement (pipelined with its `BEGIN` and
//! `COMMIT`, one round trip, `synchronous_commit = off`: a decision changes nothing). The same
//! statement checks that the decisions read no value a write has changed since (`fresh.rs`), and
//! inserts the entries of the others only. Every write moves the waiting entries into the chain first,
//! under the head lock, before its own entries (`unit.rs`), so the chain keeps the order in which
//! decisions and changes became visible: a decision made after a write was acknowledged is
//! chained after it. When no write comes, each replica's chainer does the same every
//! [`CHAIN_EVERY`]. A crash may lose the last few decision entries (never a change's), as before.

use std::time::Duration;

use deadpool_postgres::Pool;
use domicile_audit::DecisionEntry;
use domicile_types::{Channel, Purpose, RegionId, SubjectId};

use super::fresh::CATCH_UP_PAGE;
use super::prepared::Prepared as _;
use super::unit::{Turns, Write};
use super::{PgStore, int, pg, pool_error, subject_id, uint};
use crate::store::codec::{decode, encode};
use crate::store::{Audited, StoreError};

/// How often a replica chains entries that no write has chained.
pub(super) const CHAIN_EVERY: Duration = Duration::from_millis(20);

/// A [`DecisionEntry`] that owns its strings: while it waits in the queue, and stored.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct OwnedDecision {
    subject: SubjectId,
    purpose: String,
    channel: String,
    allow: bool,
    reasons: Vec<String>,
    pack_id: String,
    pack_version: String,
}

impl From<&DecisionEntry<'_>> for OwnedDecision {
    fn from(entry: &DecisionEntry<'_>) -> Self {
        Self {
            subject: entry.subject,
            purpose: entry.purpose.as_str().to_owned(),
            channel: entry.channel.as_str().to_owned(),
            allow: entry.effect == domicile_policy::Effect::Allow,
            reasons: entry.reasons.iter().map(|r| (*r).to_owned()).collect(),
            pack_id: entry.pack.id.clone(),
            pack_version: entry.pack.version.clone(),
        }
    }
}

/// Stored decisions, decoded for the chain.
struct Parsed {
    subject: SubjectId,
    purpose: Purpose,
    channel: Channel,
    effect: domicile_policy::Effect,
    reasons: Vec<String>,
    pack: domicile_policy::PackRef,
}

fn parse(stored: OwnedDecision) -> Result<Parsed, StoreError> {
    let corrupt = || StoreError::Corrupt("stored decision entry".into());
    Ok(Parsed {
        subject: stored.subject,
        purpose: Purpose::parse(&stored.purpose).map_err(|_| corrupt())?,
        channel: Channel::parse(&stored.channel).map_err(|_| corrupt())?,
        effect: if stored.allow { domicile_policy::Effect::Allow } else { domicile_policy::Effect::Deny },
        reasons: stored.reasons,
        pack: domicile_policy::PackRef { id: stored.pack_id, version: stored.pack_version },
    })
}

/// Decision entries waiting for the next insert, and the one inserter.
#[derive(Debug, Default)]
pub(super) struct DecisionAudits {
    pending: std::sync::Mutex<Vec<Pending>>,
    writer: tokio::sync::Mutex<()>,
}

impl DecisionAudits {
    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Debug)]
struct Pending {
    entries: Vec<OwnedDecision>,
    at: i64,
    /// For decisions that read through the cache: the mark they read at, and their subjects.
    check: Option<(u64, Vec<SubjectId>)>,
    /// Whether the entries were stored.
    done: tokio::sync::oneshot::Sender<Result<bool, String>>,
}

impl PgStore {
    /// Stores decisions' audit entries (see the module doc).
    pub async fn audit_decisions(&self, entries: &[DecisionEntry<'_>], at: i64) -> Result<(), StoreError> {
        match self.store_decisions(entries, at, None).await? {
            Audited::Stored => Ok(()),
            Audited::Stale => Err(StoreError::Backend("decision entries without a check were not stored".into())),
        }
    }

    /// Stores decisions' audit entries unless one of their subjects changed after `mark`
    /// (`Store::audit_decisions_if_current`, `fresh.rs`).
    pub async fn audit_decisions_if_current(
        &self,
        entries: &[DecisionEntry<'_>],
        read: &[SubjectId],
        at: i64,
        mark: u64,
    ) -> Result<Audited, StoreError> {
        self.store_decisions(entries, at, Some((mark, read))).await
    }

    /// Concurrent callers share one statement: a caller leaves its entries in a queue; whoever
    /// holds the inserter inserts everything queued by then, on a task of its own (so a caller
    /// that goes away cancels no one's insert), tells each caller how it went, and then drops
    /// from the cache what the statement found changed.
    /// A batch with no entries but subjects to check still goes to the database: an answer
    /// without a decision (a subject gone) rests on what was read too.
    async fn store_decisions(
        &self,
        entries: &[DecisionEntry<'_>],
        at: i64,
        check: Option<(u64, &[SubjectId])>,
    ) -> Result<Audited, StoreError> {
        let check = check.map(|(mark, read)| {
            let mut subjects: Vec<SubjectId> = entries.iter().map(|e| e.subject).chain(read.iter().copied()).collect();
            subjects.sort_unstable();
            subjects.dedup();
            (mark, subjects)
        });
        if entries.is_empty() && check.as_ref().is_none_or(|(_, subjects)| subjects.is_empty()) {
            return Ok(Audited::Stored);
        }
        let (done, written) = tokio::sync::oneshot::channel();
        let owned = entries.iter().map(OwnedDecision::from).collect();
        self.decisions.queue().push(Pending { entries: owned, at, check, done });
        let caught_up = {
            let _writer = self.decisions.writer.lock().await;
            let batch = std::mem::take(&mut *self.decisions.queue());
            if batch.is_empty() {
                None
            } else {
                // Rows after the oldest mark among the callers', and after the cache's own: so
                // the statement reads every row this replica has not dropped yet.
                let from =
                    batch.iter().filter_map(|p| p.check.as_ref().map(|(m, _)| *m)).fold(self.read_mark(), u64::min);
                let pool = self.pool.clone();
                tokio::spawn(async move {
                    let result = insert(&pool, &batch, from).await;
                    match &result {
                        Ok(outcome) => {
                            for (i, pending) in batch.into_iter().enumerate() {
                                let _ = pending.done.send(Ok(!outcome.stale.contains(&i)));
                            }
                        }
                        Err(e) => {
                            for pending in batch {
                                let _ = pending.done.send(Err(e.to_string()));
                            }
                        }
                    }
                    result.ok().and_then(|outcome| outcome.caught_up.map(|(head, touched)| (from, head, touched)))
                })
                .await
                .ok()
                .flatten()
            }
        };
        // After the inserter is free: dropping may wait for a `sync_reads` round in flight.
        if let Some((from, head, touched)) = caught_up {
            self.caught_up(from, head, &touched).await;
        }
        match written.await {
            Ok(Ok(true)) => Ok(Audited::Stored),
            Ok(Ok(false)) => Ok(Audited::Stale),
            Ok(Err(message)) => Err(StoreError::Backend(message)),
            Err(_) => Err(StoreError::Backend("the decisions' audit write was abandoned".into())),
        }
    }
}

/// What the shared statement did.
struct Outcome {
    /// The callers (by their index in the batch) whose entries were not stored.
    stale: Vec<usize>,
    /// The head's last touched row and every row after `from` up to it, when the statement
    /// could read them all.
    caught_up: Option<(u64, Vec<(u64, SubjectId)>)>,
}

/// One statement, in one snapshot: the touched rows after `from` (`t`); whether they are all
/// there (no more than a page, none pruned: `complete`); the callers whose subjects are among the
/// rows after their own mark, or every checked caller when the rows are not complete (`stale`);
/// one `decision_entries` row per other caller that has entries; and the rows, for the cache.
/// `$2` bounds the rows read, so a replica long idle falls back to `sync_reads`' paging. A
/// missing head reads as incomplete: nothing checked is stored.
const INSERT: &str = "WITH h AS (SELECT touch_seq FROM region_head WHERE id = 1), \
     t AS (SELECT seq, subject FROM touched WHERE seq > $1::bigint AND seq <= $1::bigint + $2::bigint), \
     complete AS (SELECT coalesce((SELECT touch_seq FROM h) - $1 <= $2 AND ((SELECT touch_seq FROM h) <= $1 \
       OR EXISTS (SELECT 1 FROM t WHERE t.seq = $1 + 1)), false) AS ok), \
     stale AS (SELECT DISTINCT w.n FROM unnest($5::bigint[], $6::bytea[], $7::bigint[]) w(n, subject, mark) \
       JOIN t ON t.subject = w.subject AND t.seq > w.mark \
       UNION SELECT c.n FROM unnest($8::bigint[]) c(n) WHERE NOT (SELECT ok FROM complete)), \
     ins AS (INSERT INTO decision_entries (at, body) \
       SELECT r.at, r.body FROM unnest($3::bigint[], $4::bytea[]) WITH ORDINALITY r(at, body, n) \
       WHERE r.n NOT IN (SELECT n FROM stale) AND octet_length(r.body) > 0) \
     SELECT (SELECT touch_seq FROM h), (SELECT ok FROM complete), ARRAY(SELECT n FROM stale), t.seq, t.subject \
     FROM (SELECT 1) one LEFT JOIN t ON (SELECT ok FROM complete) ORDER BY t.seq";

/// The shared statement (see [`INSERT`]), sent together with its `BEGIN` and `COMMIT`.
async fn insert(pool: &Pool, batch: &[Pending], from: u64) -> Result<Outcome, StoreError> {
    let at: Vec<i64> = batch.iter().map(|p| p.at).collect();
    // A caller with subjects to check but no entries has an empty body: checked, nothing stored.
    let bodies = batch
        .iter()
        .map(|p| if p.entries.is_empty() { Ok(Vec::new()) } else { encode(&p.entries) })
        .collect::<Result<Vec<_>, _>>()?;
    // Callers are numbered from 1, as `WITH ORDINALITY` numbers the rows.
    let (mut numbers, mut subjects, mut marks, mut checked) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (n, pending) in (1_i64..).zip(batch) {
        if let Some((mark, of)) = &pending.check {
            checked.push(n);
            for subject in of {
                numbers.push(n);
                subjects.push(subject.as_bytes().as_slice());
                marks.push(int(*mark));
            }
        }
    }
    let client = pool.get().await.map_err(pool_error)?;
    // Prepared first (cached per connection): executing a prepared statement sends it at once,
    // so the three below go out back to back, in order, and the statement is inside the
    // transaction. `SET LOCAL`, not a session setting: it reaches the server through any pooler.
    let statement = client.prepare_cached(INSERT).await.map_err(pg)?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] =
        [&int(from), &CATCH_UP_PAGE, &at, &bodies, &numbers, &subjects, &marks, &checked];
    let (begun, rows, committed) = tokio::join!(
        client.batch_execute("BEGIN; SET LOCAL synchronous_commit = off"),
        client.query(&statement, &params),
        client.batch_execute("COMMIT"),
    );
    // A failed statement aborts the transaction, and the COMMIT after it rolls back without an
    // error: the statement's own result says whether anything was stored.
    begun.map_err(pg)?;
    // A statement the session lost is prepared again next time (`prepared.rs`).
    let rows =
        rows.inspect_err(|e| super::prepared::forget_if_stale(&client.statement_cache, INSERT, e)).map_err(pg)?;
    committed.map_err(pg)?;
    let first = rows.first().ok_or_else(|| StoreError::Corrupt("region head missing".into()))?;
    let head = uint(first.get::<_, Option<i64>>(0).ok_or_else(|| StoreError::Corrupt("region head missing".into()))?)?;
    let complete = first.get::<_, Option<bool>>(1) == Some(true);
    let stale = first
        .get::<_, Vec<i64>>(2)
        .into_iter()
        .map(|n| usize::try_from(n - 1).map_err(|_| StoreError::Corrupt("caller number".into())))
        .collect::<Result<_, _>>()?;
    let caught_up = match complete {
        false => None,
        true => {
            let mut touched = Vec::new();
            for row in &rows {
                if let (Some(seq), Some(subject)) = (row.get::<_, Option<i64>>(3), row.get::<_, Option<&[u8]>>(4)) {
                    touched.push((uint(seq)?, subject_id(subject)?));
                }
            }
            Some((head, touched))
        }
    };
    Ok(Outcome { stale, caught_up })
}

impl Write<'_> {
    /// Moves every decision entry waiting in `decision_entries` into the chain (called under the
    /// head lock, before the write's own entries), in the order they were stored: a slice of a
    /// row at a time, the lines inserted whenever they reach a MiB (`unit.rs`), so a large backlog
    /// never leaves the transaction idle long enough for the server's limit (`unit.rs`).
    pub(super) async fn chain_waiting_decisions(
        &mut self,
        mut rows: Vec<tokio_postgres::Row>,
    ) -> Result<(), StoreError> {
        rows.sort_by_key(|row| row.get::<_, i64>(0));
        for row in rows {
            let (at, stored): (i64, Vec<OwnedDecision>) = (row.get(1), decode(row.get::<_, &[u8]>(2))?);
            let parsed = stored.into_iter().map(parse).collect::<Result<Vec<_>, _>>()?;
            let reasons: Vec<Vec<&str>> =
                parsed.iter().map(|d| d.reasons.iter().map(String::as_str).collect()).collect();
            let entries: Vec<DecisionEntry<'_>> = parsed
                .iter()
                .zip(&reasons)
                .map(|(d, reasons)| DecisionEntry {
                    subject: d.subject,
                    purpose: d.purpose,
                    channel: d.channel,
                    effect: d.effect,
                    reasons,
                    pack: &d.pack,
                })
                .collect();
            // One row is one batch of decisions, up to 10,000: chained a slice at a time too.
            for slice in entries.chunks(CHAIN_SLICE) {
                self.audit_decisions(slice, at).await?;
                self.flush_audit_if_large().await?;
            }
        }
        Ok(())
    }
}

/// Decisions of one stored row chained before the lines kept are checked for size
/// ([`Write::flush_audit_if_large`]).
const CHAIN_SLICE: usize = 256;

/// Chains waiting decision entries when no write does (one replica's share; any replica's
/// chainer or write may take them first). Runs until the pool is closed.
pub(super) async fn chainer(pool: Pool, region: RegionId, turns: Turns) {
    loop {
        tokio::time::sleep(CHAIN_EVERY).await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = chain_once(&pool, &region, &turns).await {
            tracing::warn!(error = %e, "chaining decision entries failed; retried");
        }
    }
}

async fn chain_once(pool: &Pool, region: &RegionId, turns: &Turns) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let waiting = client.query_one_cached("SELECT EXISTS (SELECT 1 FROM decision_entries)", &[]).await.map_err(pg)?;
    if !waiting.get::<_, bool>(0) {
        return Ok(());
    }
    // A write of this node under way chains the waiting entries itself.
    let Some(turn) = turns.try_take_idle() else {
        return Ok(());
    };
    let tx = client.build_transaction().start().await.map_err(pg)?;
    tx.batch_execute("SET LOCAL synchronous_commit = off").await.map_err(pg)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let write = Write::begin(turn, tx, region, i64::try_from(now).unwrap_or(i64::MAX)).await?;
    write.commit().await
}
