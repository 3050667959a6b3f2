//! Tracked rights requests and the challenge outbox on PostgreSQL (`store/tracked.rs`): tables
//! `rights_tracked` and `rights_outbox` (`node/migrations/V4__rights_tracked.sql`).

use domicile_types::SubjectId;

use super::claims::{check_replay, record_replay};
use super::prepared::Prepared as _;
use super::{PgStore, pg, subject_id};
use crate::store::codec::{decode, encode, open, seal};
use crate::store::{Delivery, Idempotency, OutboxChange, OutboxEntry, Recorded, StoreError, TrackedRequest};

/// The associated data of a sealed delivery: the table and the request id (as on sled).
const OUTBOX: &[u8] = b"outbox";

fn bytes(subject: &SubjectId) -> &[u8] {
    subject.as_bytes().as_slice()
}

impl PgStore {
    pub async fn track_request(
        &self,
        request: &TrackedRequest,
        expected: Option<&TrackedRequest>,
        outbox: OutboxChange<'_>,
        at: i64,
        idempotency: Option<&Idempotency>,
    ) -> Result<(), StoreError> {
        let subject = &request.subject;
        let id = request.record.request_id.as_str();
        let body = encode(request)?;
        let expected = expected.map(encode).transpose()?;
        self.write(at, async |w| {
            check_replay(w, idempotency).await?;
            // Compare-and-set (every write holds the region head's lock: replicas take turns).
            let stored = w
                .tx()
                .query_opt_cached("SELECT body FROM rights_tracked WHERE request_id = $1", &[&id])
                .await
                .map_err(pg)?
                .map(|row| row.get::<_, Vec<u8>>(0));
            if stored != expected {
                return Err(StoreError::Retry);
            }
            let key = match (outbox, idempotency) {
                (OutboxChange::Put(_), _) | (_, Some(_)) => Some(self.live_key(w, subject).await?),
                _ => None,
            };
            w.tx()
                .execute_cached(
                    "INSERT INTO rights_tracked (request_id, subject, body) VALUES ($1, $2, $3) \
                     ON CONFLICT (request_id) DO UPDATE SET body = EXCLUDED.body",
                    &[&id, &bytes(subject), &body],
                )
                .await
                .map_err(pg)?;
            match (outbox, &key) {
                (OutboxChange::Put(entry), Some(key)) => {
                    let sealed = seal(key, OUTBOX, id.as_bytes(), &entry.delivery)?;
                    w.tx()
                        .execute_cached(
                            "INSERT INTO rights_outbox (request_id, subject, created_at, expires_at, sealed) \
                             VALUES ($1, $2, $3, $4, $5)",
                            &[&id, &bytes(subject), &entry.created_at, &entry.expires_at, &sealed],
                        )
                        .await
                        .map_err(pg)?;
                }
                (OutboxChange::Remove, _) => {
                    w.tx()
                        .execute_cached("DELETE FROM rights_outbox WHERE request_id = $1", &[&id])
                        .await
                        .map_err(pg)?;
                }
                _ => {}
            }
            w.record(&[Recorded::RightsRequest { subject: *subject, request: &request.record }]).await?;
            record_replay(w, idempotency, key.as_ref().map(|k| (subject, k)), &request.record).await?;
            Ok(())
        })
        .await
    }

    pub async fn tracked_request(&self, request_id: &str) -> Result<Option<TrackedRequest>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt_cached("SELECT body FROM rights_tracked WHERE request_id = $1", &[&request_id])
            .await
            .map_err(pg)?;
        row.map(|row| decode(row.get(0))).transpose()
    }

    pub async fn tracked_requests(&self) -> Result<Vec<TrackedRequest>, StoreError> {
        let client = self.client().await?;
        let rows = client.query_cached("SELECT body FROM rights_tracked ORDER BY request_id", &[]).await.map_err(pg)?;
        rows.iter().map(|row| decode(row.get(0))).collect()
    }

    /// Through the index `rights_tracked_subject`.
    pub async fn tracked_requests_of(&self, subject: &SubjectId) -> Result<Vec<TrackedRequest>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query_cached("SELECT body FROM rights_tracked WHERE subject = $1 ORDER BY request_id", &[&bytes(subject)])
            .await
            .map_err(pg)?;
        rows.iter().map(|row| decode(row.get(0))).collect()
    }

    pub async fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query_cached(
                "SELECT request_id, subject, created_at, expires_at, sealed FROM rights_outbox \
                 ORDER BY created_at, request_id LIMIT $1",
                &[&limit],
            )
            .await
            .map_err(pg)?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            let request_id: String = row.get(0);
            let subject = subject_id(row.get(1))?;
            // Erased meanwhile: the row goes with the subject; its delivery cannot be opened.
            let Some(key) = self.key(&client, &subject).await? else { continue };
            let delivery: Delivery = open(&key, OUTBOX, request_id.as_bytes(), row.get(4))?;
            entries.push(OutboxEntry { request_id, subject, created_at: row.get(2), expires_at: row.get(3), delivery });
        }
        Ok(entries)
    }

    pub async fn remove_outbox(&self, request_ids: &[String]) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let removed = client
            .execute_cached("DELETE FROM rights_outbox WHERE request_id = ANY($1)", &[&request_ids])
            .await
            .map_err(pg)?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }
}
