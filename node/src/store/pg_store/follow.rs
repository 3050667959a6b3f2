//! What followers read on PostgreSQL (the link snapshot, change events, counts), and audit
//! entries that record no stored change (transfers; decisions: `decisions.rs`).

use domicile_audit::AuditEvent;
use domicile_types::{Link, SubjectId, SubjectRef};

use super::prepared::Prepared as _;
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
            .query_cached(
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
            .query_cached("SELECT body FROM events WHERE sequence > $1 ORDER BY sequence LIMIT $2", &[&after, &limit])
            .await
            .map_err(pg)?;
        rows.iter().map(|row| decode(row.get(0))).collect()
    }

    pub async fn last_event(&self) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        let row = client.query_one_cached("SELECT last_event FROM region_head WHERE id = 1", &[]).await.map_err(pg)?;
        let last = uint(row.get(0))?;
        Ok((last > 0).then_some(last))
    }

    pub async fn counts(&self) -> Result<(u64, u64), StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one_cached("SELECT (SELECT count(*) FROM subjects), (SELECT count(*) FROM links)", &[])
            .await
            .map_err(pg)?;
        Ok((uint(row.get(0))?, uint(row.get(1))?))
    }

    pub async fn audit(&self, event: AuditEvent, subject: &SubjectId, at: i64) -> Result<(), StoreError> {
        let subject = SubjectRef { region: self.region.clone(), id: *subject };
        self.write(at, async |w| w.audit(event, &subject).await).await
    }

    /// Every audit line in order, for `domicile audit verify` against a database.
    pub async fn audit_lines(&self, after: u64, limit: i64) -> Result<Vec<(u64, String)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query_cached("SELECT seq, line FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2", &[&int(after), &limit])
            .await
            .map_err(pg)?;
        rows.iter().map(|row| Ok((uint(row.get(0))?, row.get(1)))).collect()
    }
}
