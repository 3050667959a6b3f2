//! Decisions' audit entries on PostgreSQL: queued in `decision_entries`, then chained.
//!
//! A decision is answered only after its entry is stored, as on the embedded store (where it is
//! in the log file before the answer, synced with the next write). Chaining an entry needs the
//! region head (the chain's last hash), and the head is locked by every write through its commit's
//! flush; so instead of taking it per decision batch, the entries of the decisions made meanwhile
//! are inserted into `decision_entries` with one statement (pipelined with its `BEGIN` and
//! `COMMIT`, one round trip, `synchronous_commit = off`: a decision changes nothing). Every write
//! moves the waiting entries into the chain first, under the head lock, before its own entries
//! (`unit.rs`), so the chain keeps the order in which decisions and changes became visible: a
//! decision made after a write was acknowledged is chained after it. When no write comes, each
//! replica's chainer does the same every [`CHAIN_EVERY`]. A crash may lose the last few decision
//! entries (never a change's), as before.

use std::time::Duration;

use deadpool_postgres::Pool;
use domicile_audit::DecisionEntry;
use domicile_types::{Channel, Purpose, RegionId, SubjectId};

use super::prepared::Prepared as _;
use super::unit::Write;
use super::{PgStore, pg, pool_error};
use crate::store::StoreError;
use crate::store::codec::{decode, encode};

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
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

impl PgStore {
    /// Stores decisions' audit entries (see the module doc). Concurrent callers share one insert:
    /// a caller leaves its entries in a queue; whoever holds the inserter inserts everything
    /// queued by then, on a task of its own (so a caller that goes away cancels no one's insert),
    /// and tells each caller how it went.
    pub async fn audit_decisions(&self, entries: &[DecisionEntry<'_>], at: i64) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let (done, written) = tokio::sync::oneshot::channel();
        let owned = entries.iter().map(OwnedDecision::from).collect();
        self.decisions.queue().push(Pending { entries: owned, at, done });
        {
            let _writer = self.decisions.writer.lock().await;
            let batch = std::mem::take(&mut *self.decisions.queue());
            if !batch.is_empty() {
                let pool = self.pool.clone();
                let _ = tokio::spawn(async move {
                    let result = insert(&pool, &batch).await.map_err(|e| e.to_string());
                    for pending in batch {
                        let _ = pending.done.send(result.clone());
                    }
                })
                .await;
            }
        }
        match written.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(StoreError::Backend(message)),
            Err(_) => Err(StoreError::Backend("the decisions' audit write was abandoned".into())),
        }
    }
}

/// One row per caller's batch, in one statement between `BEGIN` and `COMMIT` sent together.
async fn insert(pool: &Pool, batch: &[Pending]) -> Result<(), StoreError> {
    let at: Vec<i64> = batch.iter().map(|p| p.at).collect();
    let bodies = batch.iter().map(|p| encode(&p.entries)).collect::<Result<Vec<_>, _>>()?;
    let client = pool.get().await.map_err(pool_error)?;
    // Prepared first (cached per connection): executing a prepared statement sends it at once,
    // so the three below go out back to back, in order, and the insert is inside the transaction.
    const INSERT: &str = "INSERT INTO decision_entries (at, body) SELECT * FROM unnest($1::bigint[], $2::bytea[])";
    let insert = client.prepare_cached(INSERT).await.map_err(pg)?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&at, &bodies];
    let (begun, inserted, committed) = tokio::join!(
        client.batch_execute("BEGIN; SET LOCAL synchronous_commit = off"),
        client.execute(&insert, &params),
        client.batch_execute("COMMIT"),
    );
    // A failed insert aborts the transaction, and the COMMIT after it rolls back without an error:
    // the insert's own result says whether the entries are stored.
    begun.map_err(pg)?;
    // A statement the session lost is prepared again next time (`prepared.rs`).
    inserted.inspect_err(|e| super::prepared::forget_if_stale(&client.statement_cache, INSERT, e)).map_err(pg)?;
    committed.map_err(pg)
}

impl Write<'_> {
    /// Moves every decision entry waiting in `decision_entries` into the chain (called under the
    /// head lock, before the write's own entries), in the order they were stored.
    pub(super) async fn chain_waiting_decisions(&mut self, rows: Vec<tokio_postgres::Row>) -> Result<(), StoreError> {
        let mut rows: Vec<(i64, i64, Vec<OwnedDecision>)> = rows
            .iter()
            .map(|row| Ok((row.get(0), row.get(1), decode(row.get::<_, &[u8]>(2))?)))
            .collect::<Result<_, StoreError>>()?;
        rows.sort_by_key(|(id, _, _)| *id);
        for (_, at, stored) in rows {
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
            self.audit_decisions(&entries, at).await?;
        }
        Ok(())
    }
}

/// Chains waiting decision entries when no write does (one replica's share; any replica's
/// chainer or write may take them first). Runs until the pool is closed.
pub(super) async fn chainer(pool: Pool, region: RegionId) {
    loop {
        tokio::time::sleep(CHAIN_EVERY).await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = chain_once(&pool, &region).await {
            tracing::warn!(error = %e, "chaining decision entries failed; retried");
        }
    }
}

async fn chain_once(pool: &Pool, region: &RegionId) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let waiting = client.query_one_cached("SELECT EXISTS (SELECT 1 FROM decision_entries)", &[]).await.map_err(pg)?;
    if !waiting.get::<_, bool>(0) {
        return Ok(());
    }
    let tx = client.build_transaction().start().await.map_err(pg)?;
    tx.batch_execute("SET LOCAL synchronous_commit = off").await.map_err(pg)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let write = Write::begin(tx, region, i64::try_from(now).unwrap_or(i64::MAX)).await?;
    write.commit().await
}
