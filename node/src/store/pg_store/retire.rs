//! A gone subject's change events go with it (invariant 6; the sled store's `retire.rs` says
//! why). A write that retires a subject ([`Recorded::retires`](crate::store::Recorded::retires))
//! deletes the subject's earlier events in its transaction ([`retire`]) and records the subject
//! in `retired_subjects`. Events written before the `events.subject` column (migration V6) are
//! filled in by [`index_events`], a pass each node starts, which applies the same rule to them.
//! On disk, deleted rows stay in dead tuples and WAL until the purge step of deploy/README.md,
//! as for an erasure's other rows.

use deadpool_postgres::{Pool, Transaction};
use domicile_types::{Link, SubjectId};
use tokio_postgres::types::ToSql;

use super::prepared::Prepared as _;
use super::{int, pg, pool_error};
use crate::store::StoreError;
use crate::store::codec::decode;
use crate::store::{Change, ChangeEvent};

/// Events filled in per page by the pass.
const PAGE: i64 = 500;
/// Between pages: the pass holds the region head while it writes a page, as a write does.
const PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Records subjects as retired at sequences (`$1` ids, `$2` sequences), each once.
const RECORD_RETIRED: &str = "INSERT INTO retired_subjects (subject, sequence) \
     SELECT * FROM unnest($1::bytea[], $2::bigint[]) ON CONFLICT (subject) DO NOTHING";

/// Inside a write holding the region head: deletes `subject`'s events (all earlier than `at`,
/// the sequence of the event that retires it), records it as retired at `at`, and returns the
/// links the deleted events named, which its `ERASED` names too (`Recorded::changes_dropping`).
pub(super) async fn retire(tx: &Transaction<'_>, subject: &SubjectId, at: u64) -> Result<Vec<Link>, StoreError> {
    let id = subject.as_bytes().as_slice();
    let (ids, ats) = (vec![id], vec![int(at)]);
    let (delete, record): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 2]) = ([&id], [&ids, &ats]);
    // Sent together (the connection pipelines them): one round trip.
    let (deleted, _) = tokio::try_join!(
        tx.query_cached("DELETE FROM events WHERE subject = $1 RETURNING body", &delete),
        tx.execute_cached(RECORD_RETIRED, &record),
    )
    .map_err(pg)?;
    let events = deleted.iter().map(|row| decode::<ChangeEvent>(row.get(0))).collect::<Result<Vec<_>, _>>()?;
    Ok(crate::store::links_named(&events))
}

/// Fills in the subject of every event written without it, a page at a time, each page under
/// the region head (so no write runs meanwhile), and deletes the events of subjects retired
/// after them. Stops when none is left; an error ends it (the next start resumes).
pub(super) async fn index_events(pool: Pool) {
    let (mut indexed, mut removed, mut failures) = (0u64, 0u64, 0u32);
    loop {
        match index_page(&pool).await {
            Ok(None) => break,
            Ok(Some((page, gone))) => {
                (indexed, removed, failures) = (indexed + page, removed + gone, 0);
                tokio::time::sleep(PAUSE).await;
            }
            Err(e) => {
                failures += 1;
                if failures >= 10 {
                    tracing::warn!(error = %e, "indexing change events by subject stopped; the next start resumes it");
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(250) * 2u32.pow(failures.min(7))).await;
            }
        }
    }
    if indexed > 0 {
        tracing::info!(indexed, removed, "indexed change events by subject; removed those of retired subjects");
    }
}

/// One page: `None` when no event lacks its subject, else (events filled in, events deleted).
async fn index_page(pool: &Pool) -> Result<Option<(u64, u64)>, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg)?;
    tx.batch_execute(super::unit::STALL_LIMITS).await.map_err(pg)?;
    // The head first, as every write takes it: no event is written or retired meanwhile.
    tx.query_one_cached("SELECT 1 FROM region_head WHERE id = 1 FOR UPDATE", &[]).await.map_err(pg)?;
    let rows = tx
        .query_cached("SELECT sequence, body FROM events WHERE subject IS NULL ORDER BY sequence LIMIT $1", &[&PAGE])
        .await
        .map_err(pg)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let (mut sequences, mut subjects): (Vec<i64>, Vec<Vec<u8>>) = Default::default();
    let (mut erased_at, mut erased): (Vec<i64>, Vec<Vec<u8>>) = Default::default();
    for row in &rows {
        let event: ChangeEvent = decode(row.get(1))?;
        if event.change == Change::Erased {
            erased_at.push(row.get(0));
            erased.push(event.subject.as_bytes().to_vec());
        }
        sequences.push(row.get(0));
        subjects.push(event.subject.as_bytes().to_vec());
    }
    tx.execute_cached(RECORD_RETIRED, &[&erased, &erased_at]).await.map_err(pg)?;
    let indexed = tx
        .execute_cached(
            "UPDATE events e SET subject = u.subject FROM unnest($1::bigint[], $2::bytea[]) AS u (sequence, subject) \
             WHERE e.sequence = u.sequence",
            &[&sequences, &subjects],
        )
        .await
        .map_err(pg)?;
    let removed = tx
        .execute_cached(
            "DELETE FROM events e USING retired_subjects r \
             WHERE e.subject = r.subject AND e.sequence < r.sequence AND e.subject = ANY($1::bytea[])",
            &[&subjects],
        )
        .await
        .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok(Some((indexed, removed)))
}
