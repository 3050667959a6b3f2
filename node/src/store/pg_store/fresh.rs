//! The read cache of decision inputs on PostgreSQL, kept exact across replicas.
//!
//! Every write commits, with its change, one `touched` row per subject whose decision inputs it
//! changed, numbered under the region head's lock (`unit.rs`), so rows become visible in number
//! order. A replica drops the subjects of those rows from its cache (their inputs and their
//! links) as it reads them; its **mark** is the last row it dropped, and every value in the cache
//! reflects every write numbered up to the mark (values missing from the cache are read in one
//! batch query and filled under the epoch rule of [`ReadCache`], so a value read before a
//! concurrent write cannot land after that write's invalidation).
//!
//! Decisions read the cache as it stands, after taking the mark, and are checked when their
//! audit entries are stored (`decisions.rs`): the one statement that inserts the entries also
//! reads the rows after the mark, inserts only the entries none of whose subjects is among them,
//! and returns the rows, which the replica then drops ([`PgStore::caught_up`]). A write
//! acknowledged by any replica before a decision arrived is committed before that statement is
//! sent, hence visible to it: a decision that read a value it changed is not stored, and is made
//! again after [`PgStore::sync_reads`], which reads the rows after the mark with a statement sent
//! after the decision arrived. No stale allow from the cache, on any replica (tested by
//! `tests/tests/e2e/postgres_replicas.rs`), and a decision costs one round trip to the database,
//! shared by the decisions waiting, unless a subject it read has just changed.
//!
//! Concurrent `sync_reads` share rounds: a caller waits for the round in flight (which may have
//! started before it arrived) and then starts one, or finds that another caller already finished
//! one started after it arrived.

use std::sync::atomic::{AtomicU64, Ordering};

use domicile_types::{Channel, Link, Purpose, SubjectId};

use super::prepared::Prepared as _;
use super::{PgStore, int, pg, subject_id, uint};
use crate::store::{DecisionInputs, StoreError};

/// Rows read per catch-up query.
pub(super) const CATCH_UP_PAGE: i64 = 4096;

#[derive(Debug, Default)]
pub(super) struct Fresh {
    /// Rounds started so far.
    started: AtomicU64,
    /// `Applied::seq`, readable without waiting for a round: set after the rows up to it were
    /// dropped from the cache.
    mark: AtomicU64,
    /// One round at a time; what the last completed one applied.
    applied: tokio::sync::Mutex<Applied>,
}

#[derive(Debug, Default)]
struct Applied {
    /// The last touched row dropped from the cache (or the head's when the cache was emptied).
    seq: u64,
    /// The number of the last round that completed.
    round: u64,
}

impl Fresh {
    /// Starts following at the head's `touch_seq`: the cache is empty, so nothing before it
    /// matters.
    pub(super) fn at(seq: u64) -> Self {
        Self {
            started: AtomicU64::new(0),
            mark: AtomicU64::new(seq),
            applied: tokio::sync::Mutex::new(Applied { seq, round: 0 }),
        }
    }
}

impl PgStore {
    /// The cache's mark (see the module doc).
    pub fn read_mark(&self) -> u64 {
        self.fresh.mark.load(Ordering::Acquire)
    }

    /// Drops the subjects of `touched` from the cache and moves the mark to `head`: `touched` are
    /// the rows after `from` up to `head`, read in one snapshot. Rows this replica had not
    /// dropped yet are all among them when `from` is at most its mark; those it had are skipped
    /// (values read since are still good).
    pub(super) async fn caught_up(&self, from: u64, head: u64, touched: &[(u64, SubjectId)]) {
        let mut applied = self.fresh.applied.lock().await;
        if head <= applied.seq || from > applied.seq {
            return;
        }
        let subjects: Vec<SubjectId> =
            touched.iter().filter(|(seq, _)| *seq > applied.seq).map(|(_, subject)| *subject).collect();
        self.cache.invalidate(&subjects);
        self.links.invalidate(&subjects);
        self.advance(&mut applied, head);
    }

    fn advance(&self, applied: &mut Applied, seq: u64) {
        applied.seq = seq;
        self.fresh.mark.store(seq, Ordering::Release);
    }

    /// Brings the read cache up to every write committed before this call (see the module doc).
    /// An error leaves the cache as it was and fails the decisions that needed it.
    pub async fn sync_reads(&self) -> Result<(), StoreError> {
        let ticket = self.fresh.started.load(Ordering::Acquire);
        let mut applied = self.fresh.applied.lock().await;
        if applied.round > ticket {
            // A round that started after this call arrived has completed.
            return Ok(());
        }
        let round = self.fresh.started.fetch_add(1, Ordering::AcqRel) + 1;
        self.catch_up(&mut applied).await?;
        applied.round = round;
        Ok(())
    }

    async fn catch_up(&self, applied: &mut Applied) -> Result<(), StoreError> {
        let client = self.client().await?;
        loop {
            let rows = client
                .query_cached(
                    "SELECT h.touch_seq, t.seq, t.subject FROM region_head h LEFT JOIN LATERAL \
                     (SELECT seq, subject FROM touched WHERE seq > $1 ORDER BY seq LIMIT $2) t ON true WHERE h.id = 1",
                    &[&int(applied.seq), &CATCH_UP_PAGE],
                )
                .await
                .map_err(pg)?;
            let head = match rows.first() {
                Some(row) => uint(row.get(0))?,
                None => return Err(StoreError::Corrupt("region head missing".into())),
            };
            let touched: Vec<(u64, SubjectId)> = rows
                .iter()
                .filter_map(|row| row.get::<_, Option<i64>>(1).map(|seq| (seq, row.get::<_, &[u8]>(2))))
                .map(|(seq, subject)| Ok((uint(seq)?, subject_id(subject)?)))
                .collect::<Result<_, StoreError>>()?;
            let contiguous = touched.iter().zip(applied.seq + 1..).all(|((seq, _), expected)| *seq == expected);
            if head > applied.seq && (touched.is_empty() || !contiguous) {
                // Rows this replica never read were pruned: it cannot tell what changed.
                self.cache.clear();
                self.links.clear();
                self.advance(applied, head);
                return Ok(());
            }
            let subjects: Vec<SubjectId> = touched.iter().map(|(_, s)| *s).collect();
            self.cache.invalidate(&subjects);
            self.links.invalidate(&subjects);
            if let Some((last, _)) = touched.last() {
                self.advance(applied, *last);
            }
            if (touched.len() as i64) < CATCH_UP_PAGE {
                return Ok(());
            }
        }
    }

    /// The subjects holding `links`, in order: from the cache, the rest in one query. Exact as
    /// of the mark taken before (see the module doc).
    pub async fn subjects_by_links(&self, links: &[Link]) -> Result<Vec<Option<SubjectId>>, StoreError> {
        let (mut found, epoch) = self.links.get_many(links);
        let missing: Vec<Link> = links.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(l, _)| *l).collect();
        if missing.is_empty() {
            return Ok(found);
        }
        let mut read = self.read_subjects_by_links(&missing).await?.into_iter();
        let mut fill = Vec::new();
        for (link, slot) in links.iter().zip(found.iter_mut()) {
            if slot.is_none() {
                *slot = read.next().flatten();
                if let Some(subject) = slot {
                    fill.push((*link, *subject));
                }
            }
        }
        self.links.fill(epoch, &fill);
        Ok(found)
    }

    /// [`Self::decision_inputs`] of every item, in order: from the cache, the rest in one query.
    /// Exact as of the mark taken before (see the module doc).
    pub async fn decision_inputs_many(
        &self,
        items: &[(SubjectId, Purpose, Channel)],
    ) -> Result<Vec<Option<DecisionInputs>>, StoreError> {
        let mut found: Vec<Option<DecisionInputs>> = Vec::with_capacity(items.len());
        let mut missing = Vec::new();
        for (i, (subject, purpose, channel)) in items.iter().enumerate() {
            let cell = (*purpose, *channel);
            match self.cache.get(subject, |c| Some((c.meta.clone()?, c.current(cell)?))) {
                Ok(inputs) => found.push(Some(inputs)),
                Err(epoch) => {
                    found.push(None);
                    missing.push((i, epoch));
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let wanted: Vec<(SubjectId, Purpose, Channel)> = missing.iter().map(|(i, _)| items[*i]).collect();
        let read = self.read_decision_inputs_many(&wanted).await?;
        for ((i, epoch), inputs) in missing.into_iter().zip(read) {
            let (subject, purpose, channel) = items[i];
            if let Some((meta, current)) = &inputs {
                self.cache.fill(&subject, epoch, |c| {
                    c.meta = Some(meta.clone());
                    if c.current((purpose, channel)).is_none() {
                        c.current.push(((purpose, channel), current.clone()));
                    }
                });
            }
            found[i] = inputs;
        }
        Ok(found)
    }
}
