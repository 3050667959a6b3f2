//! What is recorded about a subject on PostgreSQL: consent, interactions, rights requests and the
//! restriction of processing, and the reads decisions and histories make.

use domicile_types::{Channel, Jurisdiction, Link, Purpose, SubjectId};
use tokio_postgres::types::Type;

use super::claims::{check_replay, record_replay};
use super::prepared::{Planned, Prepared};
use super::unit::Write;
use super::{PgStore, int, pg, subject_id, uint};
use crate::store::codec::{consent_key, current_key, open, seal};
use crate::store::vault::SubjectKey;
use crate::store::{
    ConsentRecord, CurrentConsent, DecisionInputs, Idempotency, Interaction, NewConsent, NewInteraction, Recorded,
    RestrictionSet, RightsRequestRecord, StoreError, SubjectMeta,
};

fn bytes(subject: &SubjectId) -> &[u8] {
    subject.as_bytes().as_slice()
}

fn meta_of(row: &tokio_postgres::Row, first: usize) -> Result<SubjectMeta, StoreError> {
    let jurisdiction: &str = row.get(first);
    Ok(SubjectMeta {
        jurisdiction: Jurisdiction::parse_recorded(jurisdiction)
            .map_err(|_| StoreError::Corrupt("subject jurisdiction".into()))?,
        created_at: row.get(first + 1),
        restricted: row.get(first + 2),
    })
}

impl PgStore {
    /// The subject's metadata, read in `client` (a write's transaction or a pooled connection).
    pub(super) async fn meta_in(
        &self,
        client: &impl Prepared,
        subject: &SubjectId,
    ) -> Result<Option<SubjectMeta>, StoreError> {
        let row = client
            .query_opt_cached(
                "SELECT jurisdiction, created_at, restricted FROM subjects WHERE id = $1",
                &[&bytes(subject)],
            )
            .await
            .map_err(pg)?;
        row.map(|row| meta_of(&row, 0)).transpose()
    }

    /// The subject's links, in link order.
    pub(super) async fn links_of(&self, client: &impl Prepared, subject: &SubjectId) -> Result<Vec<Link>, StoreError> {
        let rows = client
            .query_cached("SELECT link FROM links WHERE subject = $1 ORDER BY link", &[&bytes(subject)])
            .await
            .map_err(pg)?;
        rows.iter().map(|row| Link::from_slice(row.get(0)).map_err(|_| StoreError::Corrupt("link".into()))).collect()
    }

    /// The subject's key inside a write, or `NotFound` (no such subject, or erased).
    pub(super) async fn live_key(&self, write: &Write<'_>, subject: &SubjectId) -> Result<SubjectKey, StoreError> {
        if self.meta_in(write.tx(), subject).await?.is_none() {
            return Err(StoreError::NotFound);
        }
        self.key(write.tx(), subject).await?.ok_or(StoreError::NotFound)
    }

    /// Appends a consent record, group-committed with the others queued meanwhile (`batch.rs`).
    pub async fn append_consent(
        &self,
        subject: &SubjectId,
        consent: NewConsent,
        idempotency: Option<&Idempotency>,
    ) -> Result<(ConsentRecord, u64), StoreError> {
        self.consents.append(*subject, consent, idempotency.cloned()).await
    }

    pub async fn set_restricted(
        &self,
        subject: &SubjectId,
        restricted: bool,
        rights_request: &RightsRequestRecord,
        idempotency: Option<&Idempotency>,
    ) -> Result<RestrictionSet, StoreError> {
        self.write(rights_request.received_at, async |w| {
            check_replay(w, idempotency).await?;
            let key = self.live_key(w, subject).await?;
            w.tx()
                .execute_cached("UPDATE subjects SET restricted = $2 WHERE id = $1", &[&bytes(subject), &restricted])
                .await
                .map_err(pg)?;
            self.insert_rights_request(w, subject, &key, rights_request).await?;
            // Followers are told (`Change::Restricted`): while it holds, every decision refuses.
            let links = self.links_of(w.tx(), subject).await?;
            let event = w
                .record(&[
                    Recorded::RightsRequest { subject: *subject, request: rights_request },
                    Recorded::Restriction { subject: *subject, links: &links, restricted },
                ])
                .await?;
            record_replay(w, idempotency, Some((subject, &key)), &(*subject, (restricted, rights_request))).await?;
            Ok(RestrictionSet { request: rights_request.clone(), event })
        })
        .await
    }

    pub async fn append_rights_request(
        &self,
        subject: &SubjectId,
        request: &RightsRequestRecord,
    ) -> Result<(), StoreError> {
        self.write(request.received_at, async |w| {
            let key = self.live_key(w, subject).await?;
            self.insert_rights_request(w, subject, &key, request).await?;
            w.record(&[Recorded::RightsRequest { subject: *subject, request }]).await?;
            Ok(())
        })
        .await
    }

    /// Stores a rights request at the next position of the subjects' logs.
    pub(super) async fn insert_rights_request(
        &self,
        w: &mut Write<'_>,
        subject: &SubjectId,
        key: &SubjectKey,
        request: &RightsRequestRecord,
    ) -> Result<(), StoreError> {
        let sequence = w.next_log_position();
        let sealed = seal(key, b"rights", &consent_key(subject, sequence), request)?;
        w.tx()
            .execute_cached(
                "INSERT INTO rights_requests (subject, sequence, sealed) VALUES ($1, $2, $3)",
                &[&bytes(subject), &int(sequence), &sealed],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    pub async fn append_interaction(
        &self,
        subject: &SubjectId,
        interaction: NewInteraction,
        idempotency: Option<&Idempotency>,
    ) -> Result<Interaction, StoreError> {
        self.write(interaction.recorded_at, async |w| {
            check_replay(w, idempotency).await?;
            let key = self.live_key(w, subject).await?;
            let sequence = w.next_log_position();
            let stored = interaction.numbered(sequence);
            let sealed = seal(&key, b"interactions", &consent_key(subject, sequence), &stored)?;
            w.tx()
                .execute_cached(
                    "INSERT INTO interactions (subject, sequence, sealed) VALUES ($1, $2, $3)",
                    &[&bytes(subject), &int(sequence), &sealed],
                )
                .await
                .map_err(pg)?;
            record_replay(w, idempotency, Some((subject, &key)), &(*subject, &stored)).await?;
            Ok(stored)
        })
        .await
    }

    // Reads.

    pub async fn subject_by_link(&self, link: &Link) -> Result<Option<SubjectId>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt_cached("SELECT subject FROM links WHERE link = $1", &[&link.as_bytes().as_slice()])
            .await
            .map_err(pg)?;
        row.map(|row| subject_id(row.get(0))).transpose()
    }

    /// The subject holding `link` with its metadata, from one snapshot (`Store::meta_by_link`).
    pub async fn meta_by_link(&self, link: &Link) -> Result<Option<(SubjectId, Option<SubjectMeta>)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt_cached(
                "SELECT l.subject, s.jurisdiction, s.created_at, s.restricted \
                 FROM links l LEFT JOIN subjects s ON s.id = l.subject WHERE l.link = $1",
                &[&link.as_bytes().as_slice()],
            )
            .await
            .map_err(pg)?;
        let Some(row) = row else { return Ok(None) };
        let meta = row.get::<_, Option<&str>>(1).map(|_| meta_of(&row, 1)).transpose()?;
        Ok(Some((subject_id(row.get(0))?, meta)))
    }

    pub async fn subjects_after(&self, after: Option<SubjectId>, limit: usize) -> Result<Vec<SubjectId>, StoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after: Vec<u8> = after.map(|id| id.as_bytes().to_vec()).unwrap_or_default();
        let rows = client
            .query_cached("SELECT id FROM subjects WHERE id > $1 ORDER BY id LIMIT $2", &[&after, &limit])
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|row| {
                SubjectId::from_slice(row.get::<_, &[u8]>(0)).map_err(|_| StoreError::Corrupt("subject id".into()))
            })
            .collect()
    }

    pub async fn subject_meta(&self, subject: &SubjectId) -> Result<Option<SubjectMeta>, StoreError> {
        self.meta_in(&self.client().await?, subject).await
    }

    pub async fn subject_record(&self, subject: &SubjectId) -> Result<Option<crate::store::SubjectRecord>, StoreError> {
        let client = self.client().await?;
        let Some(key) = self.key(&client, subject).await? else { return Ok(None) };
        let row = client
            .query_opt_cached("SELECT record FROM subjects WHERE id = $1", &[&bytes(subject)])
            .await
            .map_err(pg)?;
        match row.as_ref().and_then(|row| row.get::<_, Option<&[u8]>>(0)) {
            None => Ok(None),
            Some(sealed) => open(&key, b"subjects", subject.as_bytes(), sealed).map(Some),
        }
    }

    pub async fn current_consent(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        channel: Channel,
    ) -> Result<Option<CurrentConsent>, StoreError> {
        Ok(self.decision_inputs(subject, purpose, channel).await?.and_then(|(_, current)| current))
    }

    /// A subject's metadata and the consent in force for one cell, in one query.
    pub async fn decision_inputs(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        channel: Channel,
    ) -> Result<Option<DecisionInputs>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt_cached(
                "SELECT s.jurisdiction, s.created_at, s.restricted, c.sealed, k.kek, k.wrapped FROM subjects s \
                 LEFT JOIN current_consent c ON c.subject = s.id AND c.purpose = $2 AND c.channel = $3 \
                 LEFT JOIN subject_keys k ON k.subject = s.id WHERE s.id = $1",
                &[&bytes(subject), &purpose.as_str(), &channel.as_str()],
            )
            .await
            .map_err(pg)?;
        match row {
            Some(row) => self.inputs_of(&row, subject, purpose, channel),
            None => Ok(None),
        }
    }

    /// Decision inputs from a row of `jurisdiction, created_at, restricted, sealed current
    /// consent, kek, wrapped key` (a subject left-joined to its consent and key; no jurisdiction:
    /// no such subject).
    fn inputs_of(
        &self,
        row: &tokio_postgres::Row,
        subject: &SubjectId,
        purpose: Purpose,
        channel: Channel,
    ) -> Result<Option<DecisionInputs>, StoreError> {
        if row.get::<_, Option<&str>>(0).is_none() {
            return Ok(None);
        }
        let meta = meta_of(row, 0)?;
        let current = match (row.get::<_, Option<&[u8]>>(3), row.get::<_, Option<i32>>(4)) {
            (None, _) => None,
            (Some(sealed), Some(kek)) => {
                let key = self.keks.unwrap(subject, kek, row.get(5))?;
                Some(open(&key, b"current", &current_key(subject, purpose, channel), sealed)?)
            }
            (Some(_), None) => return Err(StoreError::NotFound),
        };
        Ok(Some((meta, current)))
    }

    /// The subjects holding `links`, in order, in one query (no cache: `fresh.rs`).
    pub(super) async fn read_subjects_by_links(&self, links: &[Link]) -> Result<Vec<Option<SubjectId>>, StoreError> {
        if links.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&[u8]> = links.iter().map(|l| l.as_bytes().as_slice()).collect();
        let client = self.client().await?;
        let rows = client
            // A primary-key lookup per link, planned at each call, as the decision inputs below.
            .query_planned(
                "SELECT l.subject FROM unnest($1::bytea[]) WITH ORDINALITY AS q(link, n) \
                 LEFT JOIN LATERAL (SELECT l.subject FROM links l WHERE l.link = q.link OFFSET 0) l ON true \
                 ORDER BY q.n",
                &[(&keys, Type::BYTEA_ARRAY)],
            )
            .await
            .map_err(pg)?;
        if rows.len() != links.len() {
            return Err(StoreError::Corrupt("link lookup answered another count".into()));
        }
        rows.iter().map(|row| row.get::<_, Option<&[u8]>>(0).map(subject_id).transpose()).collect()
    }

    /// [`Self::decision_inputs`] of every item, in order, in one query (no cache: `fresh.rs`).
    pub(super) async fn read_decision_inputs_many(
        &self,
        items: &[(SubjectId, Purpose, Channel)],
    ) -> Result<Vec<Option<DecisionInputs>>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let subjects: Vec<&[u8]> = items.iter().map(|(s, _, _)| s.as_bytes().as_slice()).collect();
        let purposes: Vec<&str> = items.iter().map(|(_, p, _)| p.as_str()).collect();
        let channels: Vec<&str> = items.iter().map(|(_, _, c)| c.as_str()).collect();
        let client = self.client().await?;
        let rows = client
            // Primary-key lookups per item, planned at each call (`prepared::Planned`): as plain
            // joins, the planner hash-joined over seq scans of `subjects` and `current_consent`
            // (6 ms for a hundred items on a 20,000-subject region), and a generic plan made
            // while the tables were small would keep doing so after they grew.
            .query_planned(
                "SELECT s.jurisdiction, s.created_at, s.restricted, c.sealed, k.kek, k.wrapped \
                 FROM unnest($1::bytea[], $2::text[], $3::text[]) WITH ORDINALITY AS q(id, purpose, channel, n) \
                 LEFT JOIN LATERAL (SELECT s.jurisdiction, s.created_at, s.restricted FROM subjects s \
                   WHERE s.id = q.id OFFSET 0) s ON true \
                 LEFT JOIN LATERAL (SELECT c.sealed FROM current_consent c \
                   WHERE c.subject = q.id AND c.purpose = q.purpose AND c.channel = q.channel OFFSET 0) c ON true \
                 LEFT JOIN LATERAL (SELECT k.kek, k.wrapped FROM subject_keys k \
                   WHERE k.subject = q.id OFFSET 0) k ON true \
                 ORDER BY q.n",
                &[(&subjects, Type::BYTEA_ARRAY), (&purposes, Type::TEXT_ARRAY), (&channels, Type::TEXT_ARRAY)],
            )
            .await
            .map_err(pg)?;
        if rows.len() != items.len() {
            return Err(StoreError::Corrupt("decision inputs answered another count".into()));
        }
        rows.iter()
            .zip(items)
            .map(|(row, (subject, purpose, channel))| self.inputs_of(row, subject, *purpose, *channel))
            .collect()
    }

    pub async fn consent_history(&self, subject: &SubjectId) -> Result<Vec<ConsentRecord>, StoreError> {
        self.open_log("consent", "position", b"consent", subject).await
    }

    pub async fn interactions(&self, subject: &SubjectId) -> Result<Vec<Interaction>, StoreError> {
        self.open_log("interactions", "sequence", b"interactions", subject).await
    }

    pub async fn rights_requests(&self, subject: &SubjectId) -> Result<Vec<RightsRequestRecord>, StoreError> {
        self.open_log("rights_requests", "sequence", b"rights", subject).await
    }

    pub async fn consent_in_force(
        &self,
        subject: &SubjectId,
    ) -> Result<Vec<(Purpose, Channel, CurrentConsent)>, StoreError> {
        let client = self.client().await?;
        let key = self.key(&client, subject).await?.ok_or(StoreError::NotFound)?;
        let rows = client
            .query_cached(
                "SELECT purpose, channel, sealed FROM current_consent WHERE subject = $1 ORDER BY purpose, channel",
                &[&bytes(subject)],
            )
            .await
            .map_err(pg)?;
        let corrupt = || StoreError::Corrupt("current consent cell".into());
        rows.iter()
            .map(|row| {
                let purpose = Purpose::parse(row.get(0)).map_err(|_| corrupt())?;
                let channel = Channel::parse(row.get(1)).map_err(|_| corrupt())?;
                let current = open(&key, b"current", &current_key(subject, purpose, channel), row.get(2))?;
                Ok((purpose, channel, current))
            })
            .collect()
    }

    /// Opens every entry of a per-subject log table, in recording order.
    async fn open_log<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        order: &str,
        name: &[u8],
        subject: &SubjectId,
    ) -> Result<Vec<T>, StoreError> {
        let client = self.client().await?;
        let key = self.key(&client, subject).await?.ok_or(StoreError::NotFound)?;
        let rows = client
            .query_cached(
                &format!("SELECT {order}, sealed FROM {table} WHERE subject = $1 ORDER BY {order}"),
                &[&bytes(subject)],
            )
            .await
            .map_err(pg)?;
        rows.iter().map(|row| open(&key, name, &consent_key(subject, uint(row.get(0))?), row.get(1))).collect()
    }
}
