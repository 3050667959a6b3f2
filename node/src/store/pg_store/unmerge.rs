//! Undoing a merge on PostgreSQL: the plan is `store::split`'s; this reads the merged subject
//! whole inside one write and stores both halves with the change events and the audit entry.

use domicile_types::SubjectId;

use super::claims::{check_replay, record_replay};
use super::prepared::Prepared as _;
use super::unit::Write;
use super::{PgStore, pg, uint};
use crate::store::codec::{consent_key, current_key, open, seal};
use crate::store::split::{Half, Whole, split};
use crate::store::vault::SubjectKey;
use crate::store::{
    ConsentRecord, Idempotency, Interaction, LogPositions, Recorded, RightsRequestRecord, StoreError, Unmerged,
};

fn bytes(subject: &SubjectId) -> &[u8] {
    subject.as_bytes().as_slice()
}

/// The three per-subject logs: (table, position column, sealing name).
const LOGS: [(&str, &str, &[u8]); 3] = [
    ("consent", "position", b"consent"),
    ("interactions", "sequence", b"interactions"),
    ("rights_requests", "sequence", b"rights"),
];

impl PgStore {
    /// The positions of a subject's entries in its three logs, inside a write.
    pub(super) async fn positions(&self, w: &Write<'_>, subject: &SubjectId) -> Result<LogPositions, StoreError> {
        let mut out = [Vec::new(), Vec::new(), Vec::new()];
        for (i, (table, order, _)) in LOGS.iter().enumerate() {
            let rows = w
                .tx()
                .query_cached(
                    &format!("SELECT {order} FROM {table} WHERE subject = $1 ORDER BY {order}"),
                    &[&bytes(subject)],
                )
                .await
                .map_err(pg)?;
            out[i] = rows.iter().map(|row| uint(row.get(0))).collect::<Result<_, _>>()?;
        }
        let [consent, interactions, rights] = out;
        Ok(LogPositions { consent, interactions, rights })
    }

    /// Every entry of a subject's log `i` of [`LOGS`], opened, with its position.
    async fn log_in<T: serde::de::DeserializeOwned>(
        &self,
        w: &Write<'_>,
        i: usize,
        subject: &SubjectId,
        key: &SubjectKey,
    ) -> Result<Vec<(u64, T)>, StoreError> {
        let (table, order, name) = LOGS[i];
        let rows = w
            .tx()
            .query_cached(
                &format!("SELECT {order}, sealed FROM {table} WHERE subject = $1 ORDER BY {order}"),
                &[&bytes(subject)],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|row| {
                let position = uint(row.get(0))?;
                Ok((position, open(key, name, &consent_key(subject, position), row.get(1))?))
            })
            .collect()
    }

    /// Stores a half under `subject` (whose rows were all removed first).
    async fn store_half(
        &self,
        w: &Write<'_>,
        subject: &SubjectId,
        key: &SubjectKey,
        half: &Half,
    ) -> Result<(), StoreError> {
        let ledger = half
            .ledger
            .iter()
            .map(|entry| {
                let sealed = seal(key, b"consent", &consent_key(subject, entry.sequence), entry)?;
                Ok((entry.sequence, sealed, super::imports::column(key, entry)))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        w.insert_log_rows(("consent", "position"), subject, &ledger, false).await?;
        let interactions = half
            .interactions
            .iter()
            .map(|e| Ok((e.sequence, seal(key, b"interactions", &consent_key(subject, e.sequence), e)?, Vec::new())))
            .collect::<Result<Vec<_>, StoreError>>()?;
        w.insert_log_rows((LOGS[1].0, LOGS[1].1), subject, &interactions, false).await?;
        let rights = half
            .rights
            .iter()
            .map(|(position, r)| {
                Ok((*position, seal(key, b"rights", &consent_key(subject, *position), r)?, Vec::new()))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        w.insert_log_rows((LOGS[2].0, LOGS[2].1), subject, &rights, false).await?;
        for ((purpose, channel), current) in &half.current {
            let sealed = seal(key, b"current", &current_key(subject, *purpose, *channel), current)?;
            w.tx()
                .execute_cached(
                    "INSERT INTO current_consent (subject, purpose, channel, sealed) VALUES ($1, $2, $3, $4)",
                    &[&bytes(subject), &purpose.as_str(), &channel.as_str(), &sealed],
                )
                .await
                .map_err(pg)?;
        }
        self.save_record(w, subject, key, &half.record).await?;
        w.tx()
            .execute_cached(
                "UPDATE subjects SET restricted = $2, created_at = $3 WHERE id = $1",
                &[&bytes(subject), &half.meta.restricted, &half.meta.created_at],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    pub async fn unmerge(
        &self,
        subject: &SubjectId,
        from: &SubjectId,
        kept: &SubjectId,
        restored: &SubjectId,
        now: i64,
        idempotency: Option<&Idempotency>,
    ) -> Result<Unmerged, StoreError> {
        if kept == restored || [kept, restored].contains(&subject) {
            return Err(StoreError::Conflict);
        }
        self.write(now, async |w| {
            check_replay(w, idempotency).await?;
            let meta = self.meta_in(w.tx(), subject).await?.ok_or(StoreError::NotFound)?;
            for id in [kept, restored] {
                if self.meta_in(w.tx(), id).await?.is_some() {
                    return Err(StoreError::Conflict);
                }
            }
            let key = self.live_key(w, subject).await?;
            let record = self.record_in(w, subject, &key).await?;
            if !record.lineage.iter().any(|l| l.from == *from) {
                return Err(StoreError::NotFound);
            }
            let ledger: Vec<(u64, ConsentRecord)> = self.log_in(w, 0, subject, &key).await?;
            let interactions: Vec<(u64, Interaction)> = self.log_in(w, 1, subject, &key).await?;
            let whole = Whole {
                meta: meta.clone(),
                record,
                links: self.links_of(w.tx(), subject).await?,
                ledger: ledger.into_iter().map(|(_, r)| r).collect(),
                interactions: interactions.into_iter().map(|(_, i)| i).collect(),
                rights: self.log_in::<RightsRequestRecord>(w, 2, subject, &key).await?,
            };
            let plan = split(whole, from)?;
            let mut keys = Vec::new();
            for (id, half) in [(kept, &plan.kept), (restored, &plan.restored)] {
                w.tx()
                    .execute_cached(
                        "INSERT INTO subjects (id, jurisdiction, created_at) VALUES ($1, $2, $3)",
                        &[&bytes(id), &half.meta.jurisdiction.to_string(), &half.meta.created_at],
                    )
                    .await
                    .map_err(pg)?;
                let id_key = self.key_or_create(w, id).await?;
                self.store_half(w, id, &id_key, half).await?;
                // Links stay in this region, so their claims (and `held` generations) stay as
                // they are.
                let moved: Vec<&[u8]> = half.links.iter().map(|l| l.as_bytes().as_slice()).collect();
                w.tx()
                    .execute_cached("UPDATE links SET subject = $1 WHERE link = ANY($2)", &[&bytes(id), &moved])
                    .await
                    .map_err(pg)?;
                keys.push(id_key);
            }
            // The merged subject is retired: its rows and its key go (the purge step of
            // deploy/README.md makes copies in old row versions and WAL unreadable, as for an
            // erasure).
            for (table, _, _) in LOGS {
                w.tx()
                    .execute_cached(&format!("DELETE FROM {table} WHERE subject = $1"), &[&bytes(subject)])
                    .await
                    .map_err(pg)?;
            }
            w.tx()
                .execute_cached("DELETE FROM current_consent WHERE subject = $1", &[&bytes(subject)])
                .await
                .map_err(pg)?;
            w.tx()
                .execute_cached("DELETE FROM subject_keys WHERE subject = $1", &[&bytes(subject)])
                .await
                .map_err(pg)?;
            w.tx().execute_cached("DELETE FROM subjects WHERE id = $1", &[&bytes(subject)]).await.map_err(pg)?;
            let kept_consent = plan.kept.announced(now);
            let restored_consent = plan.restored.announced(now);
            let recorded = [Recorded::Unmerge {
                merged: *subject,
                kept: *kept,
                restored: *restored,
                was: *from,
                links: &plan.restored.links,
                kept_links: &plan.kept.links,
                kept_consent: &kept_consent,
                restored_consent: &restored_consent,
                restricted: [plan.kept.meta.restricted, plan.restored.meta.restricted],
                flagged: plan.flagged,
            }];
            let event = w.record(&recorded).await?.ok_or_else(|| StoreError::Backend("unmerge events".into()))?;
            let unmerged = Unmerged {
                kept: *kept,
                kept_links: plan.kept.links.clone(),
                restored: *restored,
                was: *from,
                links: plan.restored.links.clone(),
                consent_records: plan.restored.ledger.len(),
                interactions: plan.restored.interactions.len(),
                flagged: plan.flagged,
                event,
            };
            let kept_key = keys.first().ok_or_else(|| StoreError::Backend("unmerge keys".into()))?;
            record_replay(w, idempotency, Some((kept, kept_key)), &(*kept, &unmerged)).await?;
            Ok(unmerged)
        })
        .await
    }
}
