//! One write on PostgreSQL (ARCHITECTURE.md, "Unit of work"): the region head locked first, the
//! write's change events and audit entries derived from its `Recorded` facts and inserted in its
//! transaction, one commit.

use deadpool_postgres::Transaction;
use domicile_audit::{Chain, DecisionEntry};
use domicile_types::{RegionId, SubjectId};

use super::prepared::Prepared as _;
use super::{int, pg, uint};
use crate::store::codec::encode;
use crate::store::{ChangeEvent, Recorded, StoreError};

/// The stall limits below, set with `$set` (one place for both forms).
macro_rules! stall_limits {
    ($set:literal) => {
        concat!($set, " idle_in_transaction_session_timeout = 2000; ", $set, " tcp_user_timeout = 2000")
    };
}

/// How long the server lets a write transaction stall on its node before it ends the session
/// (rolling the write back, so nothing is acknowledged): 2 s waiting for the node's next
/// statement (`idle_in_transaction_session_timeout`), and 2 s sending it a result it does not
/// take (`tcp_user_timeout`: data unacknowledged, or a receive window the node keeps shut). A
/// write holds the region head from its first statement to its commit, so a node stopped in
/// between (SIGSTOP, a frozen VM, a partition with no TCP reset) would otherwise stall every
/// write of every replica of the region until it ran again: a stopped node's kernel keeps
/// acknowledging until its buffers fill, after which a server writing a large result (the
/// decision entries a write chains, a long ledger) waits in `ClientWrite`, where no idle timer
/// runs, for as long as the connection lives. Between two statements of a live write the node
/// computes for milliseconds, a large backlog of decision entries included (it is chained in
/// steps, [`CHAIN_STEP`]). `tcp_user_timeout` is ignored on Unix-domain sockets (nothing to wait
/// for); it needs a Linux server, and a kernel that applies it to a shut receive window too
/// (Linux 5.11 and later, as we read the kernel's history; tested here on 6.18), which is what
/// a stopped process whose buffers are full shows the server.
pub(super) const STALL_LIMITS: &str = stall_limits!("SET LOCAL");

/// [`STALL_LIMITS`] for a whole session (migrations, whose transactions refinery opens).
pub(super) const SESSION_STALL_LIMITS: &str = stall_limits!("SET");

/// Rows of one subject's log a merge or unmerge inserts per statement ([`Write::insert_log_rows`]).
const ROWS_PER_STATEMENT: usize = 1000;

/// Audit lines a write keeps before inserting them while it chains a backlog of decision
/// entries ([`Write::flush_audit_if_large`]): each insert is a statement, which restarts the server's
/// idle timer, so the limit holds at every step however large the backlog (decisions keep being
/// stored while writes wait, e.g. behind a stopped node, and chaining 1 MiB takes milliseconds).
const CHAIN_STEP: usize = 1 << 20;

const INSERT_AUDIT: &str = "INSERT INTO audit (seq, line) SELECT * FROM unnest($1::bigint[], $2::text[])";

/// A node's writes at the region head or waiting for it, at most: one holding the head lock, one
/// queued behind it in the database, so the lock passes to this node's next write without a
/// round trip to the node (with one, 41 writes under load failed in one of four runs, none with
/// two: BENCHMARKS.md, "Writes bounded against a stopped node").
const TURNS: usize = 2;

/// Turns at the region head for this node's writes ([`TURNS`] at a time), taken before a
/// write's connection and released with its commit (or its failure).
///
/// The head lock queues every write of the region in the database, and the stall limits end a
/// holder whose node stopped; but each of a stopped node's writes already queued for the lock
/// would then hold it in turn for a whole limit, so a node with its sixteen connections in writes
/// would stall the region for sixteen limits. With turns, a stopped node stalls the region's
/// writes for about [`TURNS`] limits (one more if it stopped in the middle of a page of the
/// import index's classify pass, `imports.rs`, which takes no turn: merges and erasures wait for
/// its rows while holding the head). The lock lets one write through at a time anyway, and
/// consent writes come one batch at a time from one writer task (`batch.rs`).
#[derive(Debug, Clone)]
pub(super) struct Turns(std::sync::Arc<tokio::sync::Semaphore>);

impl Default for Turns {
    fn default() -> Self {
        Self(std::sync::Arc::new(tokio::sync::Semaphore::new(TURNS)))
    }
}

/// A write's turn at the head (see [`Turns`]).
pub(super) struct Turn {
    _held: tokio::sync::OwnedSemaphorePermit,
}

impl Turns {
    /// Waits for a turn: for one of this node's writes before it to finish.
    pub(super) async fn take(&self) -> Result<Turn, StoreError> {
        let held = self.0.clone().acquire_owned().await;
        // The semaphore is never closed.
        held.map(|held| Turn { _held: held }).map_err(|_| StoreError::Backend("write turns closed".into()))
    }

    /// A turn, if no write of this node is under way (the chainer's: such a write chains what
    /// waits itself).
    pub(super) fn try_take_idle(&self) -> Option<Turn> {
        if self.0.available_permits() < TURNS {
            return None;
        }
        self.0.clone().try_acquire_owned().ok().map(|held| Turn { _held: held })
    }
}

/// A write in progress: its transaction and the region head it holds.
pub(super) struct Write<'c> {
    /// Released when the write ends.
    _turn: Turn,
    tx: Transaction<'c>,
    at: i64,
    last_event: u64,
    ledger_position: u64,
    log_position: u64,
    generation: u64,
    chain: Chain,
    /// The last touched-subject row (`fresh.rs`).
    touch_seq: u64,
    /// Subjects whose decision inputs this write changed, for every replica's read cache.
    touched: Vec<SubjectId>,
    /// Change events (sequence, body, subject) and audit lines, inserted with the commit (one
    /// statement each).
    events: Vec<(i64, Vec<u8>, Vec<u8>)>,
    audit: Vec<(i64, String)>,
    /// The bytes of `audit`.
    audit_bytes: usize,
}

impl<'c> Write<'c> {
    /// Locks the region head: from here until commit, no other write of any replica runs.
    pub(super) async fn begin(turn: Turn, tx: Transaction<'c>, region: &RegionId, at: i64) -> Result<Self, StoreError> {
        // The head first, then the waiting decision entries, one after the other: every
        // transaction must take the head lock before any other lock, or two writes can deadlock
        // (sent pipelined, the second statement could reach the server first). The idle limit
        // takes no lock, so it goes out with the head's statement, in the same round trip.
        let (_, row) = tokio::try_join!(
            tx.batch_execute(STALL_LIMITS),
            tx.query_one_cached(
                "SELECT last_event, ledger_position, generation, audit_seq, audit_hash, log_position, touch_seq \
                 FROM region_head WHERE id = 1 FOR UPDATE",
                &[],
            )
        )
        .map_err(pg)?;
        let waiting = tx.query_cached("DELETE FROM decision_entries RETURNING id, at, body", &[]).await.map_err(pg)?;
        let chain = Chain::after(region.clone(), uint(row.get(3))?, row.get(4));
        let mut write = Self {
            _turn: turn,
            tx,
            at,
            last_event: uint(row.get(0))?,
            ledger_position: uint(row.get(1))?,
            generation: uint(row.get(2))?,
            log_position: uint(row.get(5))?,
            chain,
            touch_seq: uint(row.get(6))?,
            touched: Vec::new(),
            events: Vec::new(),
            audit: Vec::new(),
            audit_bytes: 0,
        };
        write.chain_waiting_decisions(waiting).await?;
        Ok(write)
    }

    pub(super) fn tx(&self) -> &Transaction<'c> {
        &self.tx
    }

    /// The consent ledger's next position.
    pub(super) fn next_ledger_position(&mut self) -> u64 {
        self.ledger_position += 1;
        self.ledger_position
    }

    /// The next position of a subject's interactions and rights requests.
    pub(super) fn next_log_position(&mut self) -> u64 {
        self.log_position += 1;
        self.log_position
    }

    /// A new claim fencing generation, greater than every one before.
    pub(super) fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// Stores the change events and audit entries of `recorded`; returns the last event's
    /// sequence, if any.
    pub(super) async fn record(&mut self, recorded: &[Recorded<'_>]) -> Result<Option<u64>, StoreError> {
        let mut last = None;
        for fact in recorded {
            for subject in fact.touched() {
                if !self.touched.contains(&subject) {
                    self.touched.push(subject);
                }
            }
            // A retired subject's earlier events go with it (`retire.rs`); every write holds the
            // region head, so none of them is being written meanwhile.
            let changes = match fact.retires() {
                Some(subject) => {
                    fact.changes_dropping(&super::retire::retire(&self.tx, &subject, self.last_event + 1).await?)
                }
                None => fact.changes(),
            };
            for (subject, links, change) in changes {
                let sequence = self.last_event + 1;
                let body = encode(&ChangeEvent { sequence, at: self.at, subject, links, change })?;
                self.events.push((int(sequence), body, subject.as_bytes().to_vec()));
                self.last_event = sequence;
                last = Some(sequence);
            }
        }
        let region = self.chain.region().clone();
        for fact in recorded {
            if let Some((event, subject)) = fact.audit(&region, self.at)? {
                let mut line = Vec::with_capacity(512);
                self.chain.entry(&mut line, event, Some(&subject), self.at).map_err(StoreError::Audit)?;
                self.insert_audit_lines(&line).await?;
            }
        }
        Ok(last)
    }

    /// Appends decisions made at `at` to the audit chain (batch entries, as the file log writes
    /// them).
    pub(super) async fn audit_decisions(&mut self, entries: &[DecisionEntry<'_>], at: i64) -> Result<(), StoreError> {
        let mut lines = Vec::new();
        self.chain.decisions(&mut lines, entries, at).map_err(StoreError::Audit)?;
        self.insert_audit_lines(&lines).await
    }

    /// Appends one audit entry that records no stored change.
    pub(super) async fn audit(
        &mut self,
        event: domicile_audit::AuditEvent,
        subject: &domicile_types::SubjectRef,
    ) -> Result<(), StoreError> {
        let mut line = Vec::with_capacity(512);
        self.chain.entry(&mut line, event, Some(subject), self.at).map_err(StoreError::Audit)?;
        self.insert_audit_lines(&line).await
    }

    /// Keeps complete canonical lines (each ending in `\n`) for the commit, numbered from the
    /// chain's entries just encoded.
    async fn insert_audit_lines(&mut self, lines: &[u8]) -> Result<(), StoreError> {
        let text = std::str::from_utf8(lines).map_err(|_| StoreError::Corrupt("audit line".into()))?;
        let lines: Vec<&str> = text.lines().collect();
        let first = self.chain.last_seq() + 1 - lines.len() as u64;
        for (i, line) in lines.iter().enumerate() {
            self.audit.push((int(first + i as u64), (*line).to_owned()));
            self.audit_bytes += line.len();
        }
        Ok(())
    }

    /// Inserts the audit lines kept so far once they reach [`CHAIN_STEP`]; the rest go with the
    /// commit.
    pub(super) async fn flush_audit_if_large(&mut self) -> Result<(), StoreError> {
        if self.audit_bytes < CHAIN_STEP {
            return Ok(());
        }
        let (seqs, lines): (Vec<i64>, Vec<&str>) = self.audit.iter().map(|(seq, line)| (*seq, line.as_str())).unzip();
        self.tx.execute_cached(INSERT_AUDIT, &[&seqs, &lines]).await.map_err(pg)?;
        self.audit.clear();
        self.audit_bytes = 0;
        Ok(())
    }

    /// Inserts one subject's rows of a log table (`consent`, `interactions`, `rights_requests`):
    /// (position, sealed, and for `consent` the import index's column), [`ROWS_PER_STATEMENT`] to
    /// a statement. A merge or unmerge moves a subject's whole history under the region head;
    /// one statement per row held every write of the region for a round trip per entry (twenty
    /// thousand entries: seconds), each statement restarting the idle limit, so a stalled node
    /// was not even ended. `keep_existing` leaves a row already there (an entry both halves held).
    pub(super) async fn insert_log_rows(
        &self,
        (table, order): (&str, &str),
        subject: &SubjectId,
        rows: &[(u64, Vec<u8>, Vec<u8>)],
        keep_existing: bool,
    ) -> Result<(), StoreError> {
        let conflict = if keep_existing { " ON CONFLICT DO NOTHING" } else { "" };
        let sql = if table == "consent" {
            format!(
                "INSERT INTO consent (subject, position, sealed, import_source) \
                 SELECT $1::bytea, * FROM unnest($2::bigint[], $3::bytea[], $4::bytea[]){conflict}"
            )
        } else {
            format!(
                "INSERT INTO {table} (subject, {order}, sealed) SELECT $1::bytea, * FROM unnest($2::bigint[], $3::bytea[]){conflict}"
            )
        };
        for slice in rows.chunks(ROWS_PER_STATEMENT) {
            let positions: Vec<i64> = slice.iter().map(|(p, ..)| int(*p)).collect();
            let sealed: Vec<&[u8]> = slice.iter().map(|(_, s, _)| s.as_slice()).collect();
            let id = subject.as_bytes().as_slice();
            if table == "consent" {
                let sources: Vec<&[u8]> = slice.iter().map(|(.., source)| source.as_slice()).collect();
                self.tx.execute_cached(&sql, &[&id, &positions, &sealed, &sources]).await.map_err(pg)?;
            } else {
                self.tx.execute_cached(&sql, &[&id, &positions, &sealed]).await.map_err(pg)?;
            }
        }
        Ok(())
    }

    /// Sets the time the next recorded facts carry (a batch of writes made at different times).
    pub(super) fn set_at(&mut self, at: i64) {
        self.at = at;
    }

    /// Saves the head and commits. A commit whose answer is lost may or may not have happened:
    /// [`StoreError::OutcomeUnknown`], retried with the write's idempotency key.
    pub(super) async fn commit(mut self) -> Result<(), StoreError> {
        // The subjects this write touched, numbered after every earlier write's, for the
        // replicas' read caches (`fresh.rs`); now and then rows every replica has long read are
        // pruned (one that has not empties its cache).
        let first_touch = self.touch_seq + 1;
        self.touch_seq += self.touched.len() as u64;
        let touch_seqs: Vec<i64> = (first_touch..=self.touch_seq).map(int).collect();
        let touched: Vec<&[u8]> = self.touched.iter().map(|s| s.as_bytes().as_slice()).collect();
        let prune_below = (self.touch_seq / TOUCHED_PRUNE_EVERY != (first_touch - 1) / TOUCHED_PRUNE_EVERY)
            .then(|| int(self.touch_seq.saturating_sub(TOUCHED_KEPT)));
        let touch = async {
            if touch_seqs.is_empty() {
                return Ok(0);
            }
            if let Some(below) = prune_below {
                self.tx.execute_cached("DELETE FROM touched WHERE seq <= $1", &[&below]).await?;
            }
            self.tx
                .execute_cached(
                    "INSERT INTO touched (seq, subject) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
                    &[&touch_seqs, &touched],
                )
                .await
        };
        // Sent together (the connection pipelines them), so a write pays one round trip here.
        let event_seqs: Vec<i64> = self.events.iter().map(|(seq, ..)| *seq).collect();
        let event_bodies: Vec<&[u8]> = self.events.iter().map(|(_, body, _)| body.as_slice()).collect();
        let event_subjects: Vec<&[u8]> = self.events.iter().map(|(.., subject)| subject.as_slice()).collect();
        let (audit_seqs, audit_lines): (Vec<i64>, Vec<&str>) =
            self.audit.iter().map(|(seq, line)| (*seq, line.as_str())).unzip();
        let events = async {
            if event_seqs.is_empty() {
                return Ok(0);
            }
            self.tx
                .execute_cached(
                    "INSERT INTO events (sequence, body, subject) \
                     SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[])",
                    &[&event_seqs, &event_bodies, &event_subjects],
                )
                .await
        };
        let audit = async {
            if audit_seqs.is_empty() {
                return Ok(0);
            }
            self.tx.execute_cached(INSERT_AUDIT, &[&audit_seqs, &audit_lines]).await
        };
        let counters = [
            int(self.last_event),
            int(self.ledger_position),
            int(self.generation),
            int(self.chain.last_seq()),
            int(self.log_position),
            int(self.touch_seq),
        ];
        let hash = self.chain.last_hash();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
            [&counters[0], &counters[1], &counters[2], &counters[3], &hash, &counters[4], &counters[5]];
        let head = self.tx.execute_cached(
            "UPDATE region_head SET last_event = $1, ledger_position = $2, generation = $3, audit_seq = $4, \
             audit_hash = $5, log_position = $6, touch_seq = $7 WHERE id = 1",
            &params,
        );
        tokio::try_join!(touch, events, audit, head).map_err(pg)?;
        self.tx.commit().await.map_err(|e| {
            if e.code().is_some() {
                // The server answered: the transaction did not commit.
                return pg(e);
            }
            tracing::error!(error = %pg(e), "postgres commit unanswered");
            StoreError::OutcomeUnknown
        })
    }
}

/// Touched-subject rows kept for replicas that fall behind, and how often older ones are pruned.
const TOUCHED_KEPT: u64 = 1 << 18;
const TOUCHED_PRUNE_EVERY: u64 = 1 << 12;
