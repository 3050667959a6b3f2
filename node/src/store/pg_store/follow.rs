//! What followers read on PostgreSQL (the link snapshot, change events, counts), and audit
//! entries that record no stored change (decisions, transfers).

use domicile_audit::{AuditEvent, DecisionEntry};
use domicile_types::{Link, SubjectId, SubjectRef};

use super::{PgStore, int, pg, subject_id, uint};
use crate::store::codec::decode;
use crate::store::{ChangeEvent, StoreError};

impl PgStore {
    /// `(link, subject)` pairs whose link starts with a byte in `first_bytes`, `limit` after
    /// `after`, in link order (keyset pages of [`crate::store::Store::links`]).
    pub async fn links_page(
        &self,
        first_bytes: std::ops::RangeInclusive<u8>,
        after: Option<Link>,
        limit: i64,
    ) -> Result<Vec<(Link, SubjectId)>, StoreError> {
        let (first, last) = first_bytes.into_inner();
        if first > last {
            return Ok(Vec::new());
        }
        let start = after.map_or_else(|| vec![first], |l| l.as_bytes().to_vec());
        let client = self.client().await?;
        // Links are 16 bytes: every link starting with `last` sorts before [last, 0xff × 16].
        let end: Vec<u8> = std::iter::once(last).chain(std::iter::repeat_n(0xff, 16)).collect();
        let op = if after.is_some() { ">" } else { ">=" };
        let rows = client
            .query(
                &format!("SELECT link, subject FROM links WHERE link {op} $1 AND link <= $2 ORDER BY link LIMIT $3"),
                &[&start, &end, &limit],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|row| {
                let link = Link::from_slice(row.get(0)).map_err(|_| StoreError::Corrupt("link".into()))?;
                Ok((link, subject_id(row.get(1))?))
            })
            .collect()
    }

    /// Change events after `after` (all if `None`), at most `limit`, in sequence order.
    pub async fn events_page(&self, after: Option<u64>, limit: i64) -> Result<Vec<ChangeEvent>, StoreError> {
        let client = self.client().await?;
        let after = after.map_or(0, int);
        let rows = client
            .query("SELECT body FROM events WHERE sequence > $1 ORDER BY sequence LIMIT $2", &[&after, &limit])
            .await
            .map_err(pg)?;
        rows.iter().map(|row| decode(row.get(0))).collect()
    }

    pub async fn last_event(&self) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        let row = client.query_one("SELECT last_event FROM region_head WHERE id = 1", &[]).await.map_err(pg)?;
        let last = uint(row.get(0))?;
        Ok((last > 0).then_some(last))
    }

    pub async fn counts(&self) -> Result<(u64, u64), StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT (SELECT count(*) FROM subjects), (SELECT count(*) FROM links)", &[])
            .await
            .map_err(pg)?;
        Ok((uint(row.get(0))?, uint(row.get(1))?))
    }

    pub async fn audit(&self, event: AuditEvent, subject: &SubjectId, at: i64) -> Result<(), StoreError> {
        let subject = SubjectRef { region: self.region.clone(), id: *subject };
        self.write(at, async |w| w.audit(event, &subject).await).await
    }

    /// Decisions audited in batch entries. Their commit does not wait for the WAL flush
    /// (`synchronous_commit = off` for this transaction only): a decision changes nothing, and
    /// the entries become durable with the next write's commit, as the file log's do with its
    /// next sync.
    ///
    /// Group commit of decisions: every write locks the region's head row, so batches of
    /// decisions audited one transaction each would queue behind one another. A caller leaves its
    /// entries in a queue and waits for the writer; whoever holds the writer writes everything
    /// queued by then in one transaction and tells each caller how it went. A decision is still
    /// answered only after its entry is in the log.
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
                let result = self.write_decisions(&batch).await.map_err(|e| e.to_string());
                for pending in batch {
                    let _ = pending.done.send(result.clone());
                }
            }
        }
        match written.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(StoreError::Backend(message)),
            Err(_) => Err(StoreError::Backend("the decisions' audit write was abandoned".into())),
        }
    }

    async fn write_decisions(&self, batch: &[Pending]) -> Result<(), StoreError> {
        let at = batch.iter().map(|p| p.at).max().unwrap_or_default();
        let reasons: Vec<Vec<&str>> =
            batch.iter().flat_map(|p| &p.entries).map(|d| d.reasons.iter().map(String::as_str).collect()).collect();
        let entries: Vec<DecisionEntry<'_>> = batch
            .iter()
            .flat_map(|p| &p.entries)
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
        self.write(at, async |w| {
            w.tx().batch_execute("SET LOCAL synchronous_commit = off").await.map_err(pg)?;
            w.audit_decisions(&entries).await
        })
        .await
    }

    /// Every audit line in order, for `domicile audit verify` against a database.
    pub async fn audit_lines(&self, after: u64, limit: i64) -> Result<Vec<(u64, String)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT seq, line FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2", &[&int(after), &limit])
            .await
            .map_err(pg)?;
        rows.iter().map(|row| Ok((uint(row.get(0))?, row.get(1)))).collect()
    }
}

/// Decision entries waiting to be audited, and the one writer of them.
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

/// A [`DecisionEntry`] that owns its strings, while it waits in the queue.
#[derive(Debug)]
struct OwnedDecision {
    subject: SubjectId,
    purpose: domicile_types::Purpose,
    channel: domicile_types::Channel,
    effect: domicile_policy::Effect,
    reasons: Vec<String>,
    pack: domicile_policy::PackRef,
}

impl From<&DecisionEntry<'_>> for OwnedDecision {
    fn from(entry: &DecisionEntry<'_>) -> Self {
        Self {
            subject: entry.subject,
            purpose: entry.purpose,
            channel: entry.channel,
            effect: entry.effect,
            reasons: entry.reasons.iter().map(|r| (*r).to_owned()).collect(),
            pack: entry.pack.clone(),
        }
    }
}
