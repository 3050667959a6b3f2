//! Group commit of consent writes on PostgreSQL.
//!
//! Every write locks the region head until its commit is durable (`unit.rs`), so consent writes
//! made one transaction each queue behind one another at one WAL flush (and, with a synchronous
//! standby, one standby round trip) apiece. Instead, callers hand their write to one writer task
//! per node, which takes every write queued meanwhile (up to [`MAX_BATCH`]) into one
//! transaction: the state they need is read with three queries for the whole batch (four with
//! imported entries: their source events, checked against the import index, `imports.rs`), each write is
//! applied in order in memory exactly as it would be alone (its ledger position, the record in
//! force per cell, its change event and audit entry, its idempotency row), everything is inserted
//! with one statement per table, and one commit makes the whole batch durable. Only then is any
//! of them acknowledged.
//!
//! A write that fails on its own (no such subject; its idempotency key already used) fails alone.
//! A batch the database refuses is tried again one write at a time, so one bad write cannot fail
//! its neighbours; a batch whose commit goes unanswered is an unknown outcome for every write in
//! it (each is retried with its idempotency key).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deadpool_postgres::Pool;
use domicile_types::{Channel, Link, Purpose, RegionId, SubjectId};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::Type;

use super::claims::replay_row;
use super::imports;
use super::prepared::{Planned as _, Prepared as _};
use super::unit::{Turns, Write};
use super::{Keks, int, pg, pool_error, subject_id};
use crate::store::codec::{consent_key, current_key, open, seal};
use crate::store::import_source::{DIGEST_LEN, digest_of};
use crate::store::vault::SubjectKey;
use crate::store::{ConsentRecord, CurrentConsent, Idempotency, NewConsent, Recorded, StoreError};

/// Writes taken into one transaction at most.
const MAX_BATCH: usize = 512;

type Appended = Result<(ConsentRecord, u64), StoreError>;

struct Job {
    subject: SubjectId,
    consent: NewConsent,
    idempotency: Option<Idempotency>,
    done: oneshot::Sender<Appended>,
}

/// The handle callers queue consent writes through; the writer task stops with it.
#[derive(Debug)]
pub(super) struct ConsentWriter {
    jobs: mpsc::UnboundedSender<Job>,
}

impl ConsentWriter {
    pub(super) fn start(pool: Pool, keks: Arc<Keks>, region: RegionId, turns: Turns) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(queue, Batcher { pool, keks, region, turns }));
        Self { jobs }
    }

    /// Appends one consent record; answers once it is durable (or refused).
    pub(super) async fn append(
        &self,
        subject: SubjectId,
        consent: NewConsent,
        idempotency: Option<Idempotency>,
    ) -> Appended {
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Job { subject, consent, idempotency, done })
            .map_err(|_| StoreError::Backend("the consent writer has stopped".into()))?;
        // A writer that went away mid-batch may have committed it.
        answer.await.unwrap_or(Err(StoreError::OutcomeUnknown))
    }
}

async fn run(mut queue: mpsc::UnboundedReceiver<Job>, batcher: Batcher) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (writes, replies): (Vec<_>, Vec<_>) =
            jobs.into_iter().map(|j| ((j.subject, j.consent, j.idempotency), j.done)).unzip();
        let outcomes = match batcher.write(&writes).await {
            Ok(outcomes) => outcomes,
            Err(e) if writes.len() > 1 && !matches!(e, StoreError::OutcomeUnknown) => {
                // Refused and rolled back: each write on its own, so only a bad one fails.
                let mut outcomes = Vec::with_capacity(writes.len());
                for write in &writes {
                    outcomes.push(match batcher.write(std::slice::from_ref(write)).await {
                        Ok(mut one) => one.pop().unwrap_or(Err(StoreError::OutcomeUnknown)),
                        Err(e) => Err(e),
                    });
                }
                outcomes
            }
            Err(e) => writes.iter().map(|_| Err(e.for_each_caller())).collect(),
        };
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            let _ = reply.send(outcome);
        }
    }
}

/// Ledger entries of a batch, as the columns `unnest` takes.
#[derive(Default)]
struct ConsentColumns<'a> {
    subjects: Vec<&'a [u8]>,
    positions: Vec<i64>,
    sealed: Vec<Vec<u8>>,
    /// The import index's column (`imports.rs`).
    sources: Vec<Vec<u8>>,
}

/// Idempotency rows of a batch, as the columns `unnest` takes.
#[derive(Default)]
struct ReplayColumns<'a> {
    keys: Vec<&'a [u8]>,
    fingerprints: Vec<&'a [u8]>,
    at: Vec<i64>,
    subjects: Vec<Option<Vec<u8>>>,
    results: Vec<Vec<u8>>,
}

/// Records in force a batch changed, as the columns `unnest` takes.
#[derive(Default)]
struct CellColumns<'a> {
    subjects: Vec<&'a [u8]>,
    purposes: Vec<&'a str>,
    channels: Vec<&'a str>,
    sealed: Vec<Vec<u8>>,
}

struct Batcher {
    pool: Pool,
    keks: Arc<Keks>,
    region: RegionId,
    turns: Turns,
}

/// What a batch reads before applying its writes: the live subjects' keys and links.
type Subjects = HashMap<SubjectId, (SubjectKey, Vec<Link>)>;
type Cell = (SubjectId, Purpose, Channel);

impl Batcher {
    async fn write(
        &self,
        writes: &[(SubjectId, NewConsent, Option<Idempotency>)],
    ) -> Result<Vec<Appended>, StoreError> {
        let turn = self.turns.take().await?;
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let imported = writes.iter().filter_map(|(s, c, _)| Some((s, c.evidence.import.as_ref()?)));
        let sources = imports::sources(&client, &self.keks, imported).await?;
        let tx = client.build_transaction().start().await.map_err(pg)?;
        let at = writes.first().map_or(0, |(_, c, _)| c.recorded_at);
        let mut w = Write::begin(turn, tx, &self.region, at).await?;
        let ((replayed, subjects, mut current), held) = tokio::try_join!(self.read(&w, writes), sources.held(w.tx()))?;

        let mut outcomes = Vec::with_capacity(writes.len());
        let mut used_keys: HashSet<[u8; 32]> = HashSet::new();
        let mut consent_rows = ConsentColumns::default();
        let mut used_sources: HashSet<(SubjectId, [u8; DIGEST_LEN])> = HashSet::new();
        let mut replay_rows = ReplayColumns::default();
        let mut dirty: Vec<Cell> = Vec::new();
        for (subject, consent, idempotency) in writes {
            if let Some(i) = idempotency
                && (replayed.contains(&i.key) || used_keys.contains(&i.key))
            {
                outcomes.push(Err(StoreError::Replayed));
                continue;
            }
            let Some((key, links)) = subjects.get(subject) else {
                outcomes.push(Err(StoreError::NotFound));
                continue;
            };
            // An imported entry whose source event the subject's ledger holds already (a racing
            // run wrote it, or a merge or unmerge moved it here): refused as a replay, which the
            // import answers as that entry's duplicate.
            let source = consent.evidence.import.as_ref().map(|source| (*subject, digest_of(key, source)));
            // Its key was not there when the digests were read (registered since): not checked,
            // so not written; resolve again.
            if source.is_some() && !sources.checked(subject) {
                outcomes.push(Err(StoreError::Retry));
                continue;
            }
            if let Some(source) = &source
                && (held.contains(source) || used_sources.contains(source))
            {
                outcomes.push(Err(StoreError::Replayed));
                continue;
            }
            // Captured through a link the subject no longer holds (an unmerge moved it since the
            // link was resolved): it belongs to another subject, resolve again.
            if consent.evidence.captured_via.is_some_and(|l| !links.contains(&l)) {
                outcomes.push(Err(StoreError::Retry));
                continue;
            }
            let sequence = w.next_ledger_position();
            let record = ConsentRecord {
                sequence,
                purpose: consent.purpose,
                channels: consent.channels.clone(),
                state: consent.state,
                captured_at: consent.captured_at,
                recorded_at: consent.recorded_at,
                expires_at: consent.expires_at,
                evidence: consent.evidence.clone(),
                counted_at_ms: Some(consent.counted_at_ms),
                review: false,
            };
            consent_rows.subjects.push(subject.as_bytes().as_slice());
            consent_rows.positions.push(int(sequence));
            consent_rows.sealed.push(seal(key, b"consent", &consent_key(subject, sequence), &record)?);
            consent_rows.sources.push(imports::column(key, &record));
            used_sources.extend(source);
            let candidate = CurrentConsent::of(&record, consent.counted_at_ms);
            // The channels where a grant is in force once it is applied (itself, or one captured
            // later): a grant is announced on those (`change::announced`).
            let mut in_force = Vec::with_capacity(record.channels.len());
            for channel in &record.channels {
                let cell = (*subject, record.purpose, *channel);
                let replace = current.get(&cell).is_none_or(|existing| candidate.supersedes(existing));
                if replace {
                    current.insert(cell, candidate.clone());
                    if !dirty.contains(&cell) {
                        dirty.push(cell);
                    }
                }
                if current.get(&cell).is_some_and(|c| c.grants_at(record.recorded_at)) {
                    in_force.push(*channel);
                }
            }
            w.set_at(consent.recorded_at);
            let recorded = [Recorded::Consent { subject: *subject, record: &record, links, in_force: &in_force }];
            // A record not announced has no event (`change::announced`): 0 stands for none.
            let event = match w.record(&recorded).await? {
                Some(event) => event,
                None if !crate::store::announced(&record, &in_force) => 0,
                None => return Err(StoreError::Backend("consent event".into())),
            };
            let result = (record, event);
            if let Some(i) = idempotency {
                let (sealed_for, stored) = replay_row(i, Some((subject, key)), &(*subject, &result))?;
                replay_rows.keys.push(&i.key[..]);
                replay_rows.fingerprints.push(&i.fingerprint[..]);
                replay_rows.at.push(i.at);
                replay_rows.subjects.push(sealed_for);
                replay_rows.results.push(stored);
                used_keys.insert(i.key);
            }
            outcomes.push(Ok(result));
        }

        let mut cells = CellColumns::default();
        for cell in &dirty {
            let (subject, purpose, channel) = cell;
            let (Some((key, _)), Some(value)) = (subjects.get(subject), current.get(cell)) else { continue };
            cells.subjects.push(subject.as_bytes().as_slice());
            cells.purposes.push(purpose.as_str());
            cells.channels.push(channel.as_str());
            cells.sealed.push(seal(key, b"current", &current_key(subject, *purpose, *channel), value)?);
        }
        let tx = w.tx();
        let consent = async {
            if consent_rows.subjects.is_empty() {
                return Ok(0);
            }
            tx.execute_cached(
                "INSERT INTO consent (subject, position, sealed, import_source) \
                 SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bytea[], $4::bytea[])",
                &[&consent_rows.subjects, &consent_rows.positions, &consent_rows.sealed, &consent_rows.sources],
            )
            .await
        };
        let in_force = async {
            if cells.subjects.is_empty() {
                return Ok(0);
            }
            tx.execute_cached(
                "INSERT INTO current_consent (subject, purpose, channel, sealed) \
                 SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::bytea[]) \
                 ON CONFLICT (subject, purpose, channel) DO UPDATE SET sealed = EXCLUDED.sealed",
                &[&cells.subjects, &cells.purposes, &cells.channels, &cells.sealed],
            )
            .await
        };
        let replays = async {
            if replay_rows.keys.is_empty() {
                return Ok(0);
            }
            tx.execute_cached(
                "INSERT INTO idempotency (key, fingerprint, at, subject, result) \
                 SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bigint[], $4::bytea[], $5::bytea[])",
                &[
                    &replay_rows.keys,
                    &replay_rows.fingerprints,
                    &replay_rows.at,
                    &replay_rows.subjects,
                    &replay_rows.results,
                ],
            )
            .await
        };
        tokio::try_join!(consent, in_force, replays).map_err(pg)?;
        w.commit().await?;
        Ok(outcomes)
    }

    /// The batch's idempotency keys already used, its live subjects (key and links), and the
    /// records in force of the cells it writes: three queries, sent together.
    async fn read(
        &self,
        w: &Write<'_>,
        writes: &[(SubjectId, NewConsent, Option<Idempotency>)],
    ) -> Result<(HashSet<[u8; 32]>, Subjects, HashMap<Cell, CurrentConsent>), StoreError> {
        let keys: Vec<&[u8]> = writes.iter().filter_map(|(_, _, i)| i.as_ref().map(|i| &i.key[..])).collect();
        let mut ids: Vec<&[u8]> = writes.iter().map(|(s, _, _)| s.as_bytes().as_slice()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut cells: Vec<(&[u8], &str, &str)> = writes
            .iter()
            .flat_map(|(s, c, _)| {
                c.channels.iter().map(|ch| (s.as_bytes().as_slice(), c.purpose.as_str(), ch.as_str()))
            })
            .collect();
        cells.sort_unstable();
        cells.dedup();
        let (cell_subjects, cell_purposes, cell_channels): (Vec<&[u8]>, Vec<&str>, Vec<&str>) =
            cells.into_iter().fold(Default::default(), |mut acc, (s, p, c)| {
                acc.0.push(s);
                acc.1.push(p);
                acc.2.push(c);
                acc
            });
        let tx = w.tx();
        let replayed = async {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            // Planned at each call (`prepared::Planned`), as is `in_force`: the generic plan of a
            // prepared statement made while the table was small seq-scanned it at every batch
            // after it had grown (an import of 200,000 rows read 51 million idempotency rows).
            tx.query_planned("SELECT key FROM idempotency WHERE key = ANY($1::bytea[])", &[(&keys, Type::BYTEA_ARRAY)])
                .await
        };
        let live = async {
            tx.query_cached(
            // One index lookup per subject of the batch, whatever plan the statement is given: as a
            // plain join, the plan made once for the prepared statement (`prepared.rs`) scanned
            // every subject key (`OFFSET 0` keeps the lateral part from being folded into a join).
            "SELECT q.id, k.kek, k.wrapped, ARRAY(SELECT l.link FROM links l WHERE l.subject = q.id ORDER BY l.link) \
             FROM unnest($1::bytea[]) AS q(id) CROSS JOIN LATERAL \
             (SELECT k.kek, k.wrapped FROM subject_keys k JOIN subjects s ON s.id = k.subject \
              WHERE k.subject = q.id OFFSET 0) AS k",
            &[&ids],
        )
        .await
        };
        let in_force = async {
            tx.query_planned(
                // One primary-key lookup per cell (as `live`): as a join, PostgreSQL's costs
                // (random_page_cost) made a hash join over a seq scan of the whole table look
                // cheaper, 2.3 ms a batch under the region's lock on a 6,000-row table.
                "SELECT q.subject, q.purpose, q.channel, c.sealed \
             FROM unnest($1::bytea[], $2::text[], $3::text[]) AS q(subject, purpose, channel) CROSS JOIN LATERAL \
             (SELECT c.sealed FROM current_consent c \
              WHERE c.subject = q.subject AND c.purpose = q.purpose AND c.channel = q.channel OFFSET 0) AS c",
                &[
                    (&cell_subjects, Type::BYTEA_ARRAY),
                    (&cell_purposes, Type::TEXT_ARRAY),
                    (&cell_channels, Type::TEXT_ARRAY),
                ],
            )
            .await
        };
        let (replayed, live, in_force) = tokio::try_join!(replayed, live, in_force).map_err(pg)?;

        let replayed = replayed
            .iter()
            .map(|row| {
                <[u8; 32]>::try_from(row.get::<_, &[u8]>(0)).map_err(|_| StoreError::Corrupt("idempotency key".into()))
            })
            .collect::<Result<_, _>>()?;
        let mut subjects = Subjects::with_capacity(live.len());
        for row in &live {
            let subject = subject_id(row.get(0))?;
            let key = self.keks.unwrap(&subject, row.get(1), row.get(2))?;
            let links = row
                .get::<_, Vec<&[u8]>>(3)
                .into_iter()
                .map(|l| Link::from_slice(l).map_err(|_| StoreError::Corrupt("link".into())))
                .collect::<Result<_, _>>()?;
            subjects.insert(subject, (key, links));
        }
        let mut current = HashMap::with_capacity(in_force.len());
        for row in &in_force {
            let subject = subject_id(row.get(0))?;
            let corrupt = || StoreError::Corrupt("current consent cell".into());
            let purpose = Purpose::parse(row.get(1)).map_err(|_| corrupt())?;
            let channel = Channel::parse(row.get(2)).map_err(|_| corrupt())?;
            // A cell of a subject without a key belongs to an erased subject: its write fails
            // with NotFound, so the cell is not needed.
            let Some((key, _)) = subjects.get(&subject) else { continue };
            let value: CurrentConsent = open(key, b"current", &current_key(&subject, purpose, channel), row.get(3))?;
            current.insert((subject, purpose, channel), value);
        }
        Ok((replayed, subjects, current))
    }
}
