//! Who a subject is, on PostgreSQL: registration, rectification, merge, erasure, and links
//! dropped for ownership repair. The rules are the embedded store's (`sled_store/identity.rs`):
//! a link becomes live only if the subject holds it already or with this region's granted claim,
//! and every link removed queues the release of its claim, in the same transaction.

use std::collections::BTreeMap;

use domicile_types::{Jurisdiction, Link, NormalizedIdentifier, RegionId, SubjectId};

use super::claims::{check_replay, hold, record_replay, release_held};
use super::prepared::Prepared as _;
use super::unit::Write;
use super::{PgStore, pg, subject_id, uint};
use crate::store::codec::{consent_key, current_key, open, seal};
use crate::store::split::{MergeSide, join_records};
use crate::store::vault::SubjectKey;
use crate::store::{
    CurrentConsent, Dropped, Erased, Idempotency, Merged, Recorded, Rectification, Rectified, Registered, Release,
    RightsRequestRecord, StoreError, SubjectRecord,
};
use crate::store::{Holding, NewRegistration, RegisteredEach, Registering, announced_in_force};

fn bytes(subject: &SubjectId) -> &[u8] {
    subject.as_bytes().as_slice()
}

fn link_bytes(link: &Link) -> &[u8] {
    link.as_bytes().as_slice()
}

/// The claim of `claimed` for `link`: a link that no subject holds may become live only with one.
fn claim_for<'a>(claimed: &'a [Release], link: &Link) -> Result<&'a Release, StoreError> {
    // Free but not claimed by this write: it was held when the write looked, and a concurrent
    // erasure or rectification freed it. Start over.
    claimed.iter().find(|c| c.link == *link).ok_or(StoreError::Retry)
}

/// Why identifiers change: a rectification (with its rights request) or an ownership repair
/// (another region keeps them).
#[derive(Clone, Copy)]
enum Cause<'a> {
    Rectification(&'a RightsRequestRecord),
    KeptBy(&'a RegionId),
}

impl PgStore {
    /// The subject a live link names, inside a write.
    async fn live_subject(&self, w: &Write<'_>, link: &Link) -> Result<Option<SubjectId>, StoreError> {
        let row = w
            .tx()
            .query_opt_cached("SELECT subject FROM links WHERE link = $1", &[&link_bytes(link)])
            .await
            .map_err(pg)?;
        row.map(|row| subject_id(row.get(0))).transpose()
    }

    /// The subject's sealed record, opened (empty when it has none).
    pub(super) async fn record_in(
        &self,
        w: &Write<'_>,
        subject: &SubjectId,
        key: &SubjectKey,
    ) -> Result<SubjectRecord, StoreError> {
        let row = w
            .tx()
            .query_opt_cached("SELECT record FROM subjects WHERE id = $1", &[&bytes(subject)])
            .await
            .map_err(pg)?;
        match row.as_ref().and_then(|row| row.get::<_, Option<&[u8]>>(0)) {
            None => Ok(SubjectRecord::default()),
            Some(sealed) => open(key, b"subjects", subject.as_bytes(), sealed),
        }
    }

    pub(super) async fn save_record(
        &self,
        w: &Write<'_>,
        subject: &SubjectId,
        key: &SubjectKey,
        record: &SubjectRecord,
    ) -> Result<(), StoreError> {
        let sealed = seal(key, b"subjects", subject.as_bytes(), record)?;
        w.tx()
            .execute_cached("UPDATE subjects SET record = $2 WHERE id = $1", &[&bytes(subject), &sealed])
            .await
            .map_err(pg)?;
        Ok(())
    }

    pub async fn register(
        &self,
        jurisdiction: &Jurisdiction,
        identifiers: &[(NormalizedIdentifier, Link)],
        new_subject: SubjectId,
        now: i64,
        claimed: &[Release],
        idempotency: Option<&Idempotency>,
    ) -> Result<Registered, StoreError> {
        let item = Registering { jurisdiction, identifiers, new_subject, claimed, idempotency };
        self.write(now, async |w| self.register_in(w, &item, now).await).await
    }

    /// Registers each of `items` in one transaction (one hold of the region head, one WAL flush:
    /// registered one transaction each, an import's new subjects waited for a flush apiece). An
    /// item refused for itself (links of two subjects, another jurisdiction's subject, a free link
    /// it holds no claim for) is refused by [`Self::register_in`] before it writes anything, so
    /// the others are written and nothing of it is; no savepoints (a subtransaction per item,
    /// hundreds per call, would overflow each backend's cache of them and slow every snapshot).
    pub async fn register_many(&self, items: &[NewRegistration], now: i64) -> Result<RegisteredEach, StoreError> {
        self.write(now, async |w| {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match self.register_in(w, &Registering::of(item), now).await {
                    Ok(registered) => out.push(Ok(registered)),
                    Err(e @ (StoreError::Conflict | StoreError::JurisdictionMismatch | StoreError::Retry)) => {
                        out.push(Err(e));
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        })
        .await
    }

    /// One registration inside `w` ([`Self::register`]).
    async fn register_in(&self, w: &mut Write<'_>, item: &Registering<'_>, now: i64) -> Result<Registered, StoreError> {
        let Registering { jurisdiction, identifiers, new_subject, claimed, idempotency } = *item;
        check_replay(w, idempotency).await?;
        let mut existing: Option<SubjectId> = None;
        let mut free = Vec::new();
        for (_, link) in identifiers {
            match self.live_subject(w, link).await? {
                Some(id) => match existing {
                    Some(other) if other != id => return Err(StoreError::Conflict),
                    _ => existing = Some(id),
                },
                None => free.push(link),
            }
        }
        let subject = existing.unwrap_or(new_subject);
        let meta = self.meta_in(w.tx(), &subject).await?;
        if meta.as_ref().is_some_and(|meta| &meta.jurisdiction != jurisdiction) {
            return Err(StoreError::JurisdictionMismatch);
        }
        // Every refusal comes before the first statement that writes: a batch's refused item
        // leaves nothing behind (`register_many`).
        for link in free {
            claim_for(claimed, link)?;
        }
        let created = match meta {
            Some(_) => false,
            None => {
                w.tx()
                    .execute_cached(
                        "INSERT INTO subjects (id, jurisdiction, created_at) VALUES ($1, $2, $3)",
                        &[&bytes(&subject), &jurisdiction.to_string(), &now],
                    )
                    .await
                    .map_err(pg)?;
                true
            }
        };
        let key = self.key_or_create(w, &subject).await?;
        let mut record = self.record_in(w, &subject, &key).await?;
        let held = self.links_of(w.tx(), &subject).await?;
        let mut added = Vec::new();
        for (identifier, link) in identifiers {
            if self.live_subject(w, link).await?.is_none() {
                hold(w, claim_for(claimed, link)?).await?;
                w.tx()
                    .execute_cached(
                        "INSERT INTO links (link, subject) VALUES ($1, $2)",
                        &[&link_bytes(link), &bytes(&subject)],
                    )
                    .await
                    .map_err(pg)?;
            }
            if !record.identifiers.contains(identifier) {
                record.identifiers.push(identifier.clone());
            }
            if !held.contains(link) && !added.contains(link) {
                added.push(*link);
                if !created {
                    record.added_at.insert(*link, now);
                }
            }
        }
        self.save_record(w, &subject, &key, &record).await?;
        // A subject that existed tells links new to it what it holds (`Holding`).
        let (consent, restricted) = match created || added.is_empty() {
            true => (Vec::new(), false),
            false => self.holding_in(w, &subject, &key, now).await?,
        };
        let holding = Holding { consent: &consent, restricted };
        let recorded =
            [Recorded::Registration { subject, jurisdiction, identifiers: identifiers.len(), added: &added, holding }];
        let event = w.record(&recorded).await?;
        let registered = Registered { subject, links: identifiers.iter().map(|(_, l)| *l).collect(), created, event };
        record_replay(w, idempotency, Some((&subject, &key)), &(subject, &registered)).await?;
        Ok(registered)
    }

    pub async fn erase(
        &self,
        subject: &SubjectId,
        now: i64,
        rights_request: &RightsRequestRecord,
        idempotency: Option<&Idempotency>,
    ) -> Result<Erased, StoreError> {
        self.write(now, async |w| {
            check_replay(w, idempotency).await?;
            if self.meta_in(w.tx(), subject).await?.is_none() {
                return Err(StoreError::NotFound);
            }
            let links = self.links_of(w.tx(), subject).await?;
            for link in &links {
                release_held(w, link).await?;
            }
            let consent_records = w
                .tx()
                .query_one_cached("SELECT count(*) FROM consent WHERE subject = $1", &[&bytes(subject)])
                .await
                .map_err(pg)?;
            let consent_records = usize::try_from(uint(consent_records.get(0))?).unwrap_or(usize::MAX);
            // One transaction: the key row and every record go together (links, ledger, current
            // state, interactions and rights requests by cascade). Copies of the key left in old
            // row versions are covered by KEK rotation (keys.rs).
            w.tx()
                .execute_cached("DELETE FROM subject_keys WHERE subject = $1", &[&bytes(subject)])
                .await
                .map_err(pg)?;
            w.tx().execute_cached("DELETE FROM subjects WHERE id = $1", &[&bytes(subject)]).await.map_err(pg)?;
            let recorded = [
                Recorded::RightsRequest { subject: *subject, request: rights_request },
                Recorded::Erasure { subject: *subject, links: &links },
            ];
            let event = w.record(&recorded).await?.ok_or_else(|| StoreError::Backend("erasure event".into()))?;
            let erased = Erased { links, consent_records, event, at: now, rights_request: rights_request.clone() };
            // What a repeated request gets: nothing of the subject, not even its links.
            let receipt = Erased { links: Vec::new(), ..erased.clone() };
            record_replay(w, idempotency, None, &(*subject, &receipt)).await?;
            Ok(erased)
        })
        .await
    }

    pub async fn merge(
        &self,
        into: &SubjectId,
        from: &SubjectId,
        now: i64,
        idempotency: Option<&Idempotency>,
    ) -> Result<Merged, StoreError> {
        if into == from {
            return Err(StoreError::Conflict);
        }
        self.write(now, async |w| {
            check_replay(w, idempotency).await?;
            let into_meta = self.meta_in(w.tx(), into).await?.ok_or(StoreError::NotFound)?;
            let from_meta = self.meta_in(w.tx(), from).await?.ok_or(StoreError::NotFound)?;
            if into_meta.jurisdiction != from_meta.jurisdiction {
                return Err(StoreError::MergeJurisdictionMismatch);
            }
            let into_key = self.live_key(w, into).await?;
            let from_key = self.live_key(w, from).await?;
            let mut record = self.record_in(w, into, &into_key).await?;
            let from_record = self.record_in(w, from, &from_key).await?;
            // Kept so the merge can be undone (`store::split`).
            let into_side = MergeSide {
                id: *into,
                meta: &into_meta,
                links: self.links_of(w.tx(), into).await?,
                positions: self.positions(w, into).await?,
            };
            let from_side = MergeSide {
                id: *from,
                meta: &from_meta,
                links: self.links_of(w.tx(), from).await?,
                positions: self.positions(w, from).await?,
            };
            join_records(&mut record, from_record, into_side, from_side, now);
            self.save_record(w, into, &into_key, &record).await?;
            // Fail closed: a restriction on either half holds for the merged subject.
            w.tx()
                .execute_cached(
                    "UPDATE subjects SET restricted = restricted OR $2, created_at = LEAST(created_at, $3) WHERE id = $1",
                    &[&bytes(into), &from_meta.restricted, &from_meta.created_at],
                )
                .await
                .map_err(pg)?;
            let moved_links = self.links_of(w.tx(), from).await?;
            // Links stay in this region, so their claims (and `held` generations) stay as they are.
            w.tx()
                .execute_cached("UPDATE links SET subject = $1 WHERE subject = $2", &[&bytes(into), &bytes(from)])
                .await
                .map_err(pg)?;
            let keys = (from, &from_key, into, &into_key);
            let consent_records = self.reseal(w, "consent", "position", b"consent", keys).await?;
            let interactions = self.reseal(w, "interactions", "sequence", b"interactions", keys).await?;
            self.reseal(w, "rights_requests", "sequence", b"rights", keys).await?;
            // The record in force per purpose × channel is the one that supersedes the other, so
            // an older grant of one half never overrides a withdrawal or denial of the other.
            // Both halves' cells in one read each; `in_force` ends as the merged subject's consent
            // in force, announced to watchers.
            let mut in_force: BTreeMap<_, _> = self.cells_in(w, into, &into_key).await?.into_iter().collect();
            for ((purpose, channel), candidate) in self.cells_in(w, from, &from_key).await? {
                if in_force.get(&(purpose, channel)).is_none_or(|existing: &CurrentConsent| candidate.supersedes(existing)) {
                    let sealed = seal(&into_key, b"current", &current_key(into, purpose, channel), &candidate)?;
                    w.tx()
                        .execute_cached(
                            "INSERT INTO current_consent (subject, purpose, channel, sealed) VALUES ($1, $2, $3, $4) \
                             ON CONFLICT (subject, purpose, channel) DO UPDATE SET sealed = EXCLUDED.sealed",
                            &[&bytes(into), &purpose.as_str(), &channel.as_str(), &sealed],
                        )
                        .await
                        .map_err(pg)?;
                    in_force.insert((purpose, channel), candidate);
                }
            }
            let consent = announced_in_force(&in_force, now);
            w.tx().execute_cached("DELETE FROM subject_keys WHERE subject = $1", &[&bytes(from)]).await.map_err(pg)?;
            w.tx().execute_cached("DELETE FROM subjects WHERE id = $1", &[&bytes(from)]).await.map_err(pg)?;
            let all_links = self.links_of(w.tx(), into).await?;
            let recorded = [Recorded::Merge {
                into: *into,
                from: *from,
                links: &moved_links,
                all_links: &all_links,
                consent: &consent,
                restricted: into_meta.restricted || from_meta.restricted,
            }];
            let event = w.record(&recorded).await?.ok_or_else(|| StoreError::Backend("merge events".into()))?;
            let merged = Merged { from: *from, links: moved_links.clone(), consent_records, interactions, event };
            record_replay(w, idempotency, Some((into, &into_key)), &(*into, &merged)).await?;
            Ok(merged)
        })
        .await
    }

    /// Moves every entry of `from`'s log in `table` to `into`, re-sealed under `into`'s key with
    /// the same position. Returns how many.
    async fn reseal(
        &self,
        w: &Write<'_>,
        table: &str,
        order: &str,
        name: &[u8],
        (from, from_key, into, into_key): (&SubjectId, &SubjectKey, &SubjectId, &SubjectKey),
    ) -> Result<usize, StoreError> {
        let rows = w
            .tx()
            .query_cached(&format!("DELETE FROM {table} WHERE subject = $1 RETURNING {order}, sealed"), &[&bytes(from)])
            .await
            .map_err(pg)?;
        let mut moved = Vec::with_capacity(rows.len());
        for row in &rows {
            let position = uint(row.get(0))?;
            let plain = from_key.open(&crate::store::codec::context(name, &consent_key(from, position)), row.get(1))?;
            let sealed = into_key.seal(&crate::store::codec::context(name, &consent_key(into, position)), &plain)?;
            // The import index's digest, under the key of the subject now holding the entry.
            let source =
                if table == "consent" { super::imports::column_of_plain(into_key, &plain)? } else { Vec::new() };
            moved.push((position, sealed, source));
        }
        // An entry both halves hold (kept with both by an earlier unmerge) is kept once.
        w.insert_log_rows((table, order), into, &moved, true).await?;
        Ok(rows.len())
    }

    pub async fn rectify(
        &self,
        subject: &SubjectId,
        change: &Rectification,
        now: i64,
        rights_request: &RightsRequestRecord,
        claimed: &[Release],
        idempotency: Option<&Idempotency>,
    ) -> Result<Rectified, StoreError> {
        self.write(now, async |w| {
            check_replay(w, idempotency).await?;
            let (added, removed, event) =
                self.change_identifiers(w, subject, change, Cause::Rectification(rights_request), claimed, now).await?;
            let rectified = Rectified { added, removed, event, rights_request: rights_request.clone() };
            let key = self.live_key(w, subject).await?;
            record_replay(w, idempotency, Some((subject, &key)), &(*subject, &rectified)).await?;
            Ok(rectified)
        })
        .await
    }

    pub async fn drop_links(
        &self,
        subject: &SubjectId,
        remove: &[(NormalizedIdentifier, Link)],
        kept_by: &RegionId,
        now: i64,
    ) -> Result<Dropped, StoreError> {
        self.write(now, async |w| {
            let links = self.links_of(w.tx(), subject).await?;
            if self.meta_in(w.tx(), subject).await?.is_none() {
                return Err(StoreError::NotFound);
            }
            let remove: Vec<_> = remove.iter().filter(|(_, link)| links.contains(link)).cloned().collect();
            if remove.is_empty() {
                return Ok(Dropped { left: links.len(), ..Dropped::default() });
            }
            let change = Rectification { remove, ..Rectification::default() };
            let (_, removed, event) =
                self.change_identifiers(w, subject, &change, Cause::KeptBy(kept_by), &[], now).await?;
            let left = self.links_of(w.tx(), subject).await?.len();
            Ok(Dropped { removed, left, event })
        })
        .await
    }

    /// Rectification of identifiers and profile inside a write, recorded with its rights request
    /// or as an ownership repair. Returns the links added, those removed and the last change
    /// event's sequence.
    async fn change_identifiers(
        &self,
        w: &mut Write<'_>,
        subject: &SubjectId,
        change: &Rectification,
        cause: Cause<'_>,
        claimed: &[Release],
        now: i64,
    ) -> Result<(Vec<Link>, Vec<Link>, Option<u64>), StoreError> {
        let key = self.live_key(w, subject).await?;
        let mut links = self.links_of(w.tx(), subject).await?;
        let mut record = self.record_in(w, subject, &key).await?;
        let mut removed = Vec::new();
        for (identifier, link) in &change.remove {
            if !record.identifiers.contains(identifier) && !links.contains(link) {
                return Err(StoreError::NotHeld);
            }
            record.forget_identifier(identifier);
            if links.contains(link) {
                links.retain(|l| l != link);
                w.tx().execute_cached("DELETE FROM links WHERE link = $1", &[&link_bytes(link)]).await.map_err(pg)?;
                release_held(w, link).await?;
            }
            if !removed.contains(link) {
                removed.push(*link);
            }
        }
        let mut added = Vec::new();
        for (identifier, link) in &change.add {
            match self.live_subject(w, link).await? {
                Some(other) if other != *subject => return Err(StoreError::Conflict),
                Some(_) => {}
                None => {
                    hold(w, claim_for(claimed, link)?).await?;
                    w.tx()
                        .execute_cached(
                            "INSERT INTO links (link, subject) VALUES ($1, $2)",
                            &[&link_bytes(link), &bytes(subject)],
                        )
                        .await
                        .map_err(pg)?;
                }
            }
            if !record.identifiers.contains(identifier) {
                record.identifiers.push(identifier.clone());
            }
            if !links.contains(link) {
                links.push(*link);
                added.push(*link);
                record.added_at.insert(*link, now);
            }
        }
        for field in &change.remove_profile {
            record.forget_field(field);
        }
        for (field, value) in &change.set_profile {
            // The old value goes from the merge lineage's copies too (it was corrected).
            record.forget_field(field);
            record.profile.insert(field.clone(), value.clone());
        }
        self.save_record(w, subject, &key, &record).await?;
        let (rights_request, kept_by) = match cause {
            Cause::Rectification(request) => (Some(request), None),
            Cause::KeptBy(region) => (None, Some(region)),
        };
        if let Some(request) = rights_request {
            self.insert_rights_request(w, subject, &key, request).await?;
        }
        let (consent, restricted) = match added.is_empty() {
            true => (Vec::new(), false),
            false => self.holding_in(w, subject, &key, now).await?,
        };
        let mut recorded = vec![
            Recorded::LinksRemoved { subject: *subject, links: &removed, kept_by },
            Recorded::LinksAdded {
                subject: *subject,
                links: &added,
                holding: Holding { consent: &consent, restricted },
            },
        ];
        if let Some(request) = rights_request {
            recorded.push(Recorded::RightsRequest { subject: *subject, request });
        }
        let event = w.record(&recorded).await?;
        Ok((added, removed, event))
    }
}

impl PgStore {
    /// A subject's consent in force, cell by cell, read in the write.
    async fn cells_in(
        &self,
        w: &Write<'_>,
        subject: &SubjectId,
        key: &SubjectKey,
    ) -> Result<Vec<((domicile_types::Purpose, domicile_types::Channel), CurrentConsent)>, StoreError> {
        let rows = w
            .tx()
            .query_cached("SELECT purpose, channel, sealed FROM current_consent WHERE subject = $1", &[&bytes(subject)])
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|row| {
                let (purpose, channel) = parse_cell(row.get(0), row.get(1))?;
                let cell =
                    open::<CurrentConsent>(key, b"current", &current_key(subject, purpose, channel), row.get(2))?;
                Ok(((purpose, channel), cell))
            })
            .collect()
    }

    /// What `subject` holds that links new to it are told with (`Holding`): its consent in force
    /// as watchers are told it at `at`, and its restriction.
    async fn holding_in(
        &self,
        w: &Write<'_>,
        subject: &SubjectId,
        key: &SubjectKey,
        at: i64,
    ) -> Result<(Vec<crate::store::Announced>, bool), StoreError> {
        let cells: BTreeMap<_, _> = self.cells_in(w, subject, key).await?.into_iter().collect();
        let restricted = self.meta_in(w.tx(), subject).await?.is_some_and(|m| m.restricted);
        Ok((announced_in_force(&cells, at), restricted))
    }
}

fn parse_cell(purpose: &str, channel: &str) -> Result<(domicile_types::Purpose, domicile_types::Channel), StoreError> {
    let corrupt = || StoreError::Corrupt("current consent cell".into());
    Ok((
        domicile_types::Purpose::parse(purpose).map_err(|_| corrupt())?,
        domicile_types::Channel::parse(channel).map_err(|_| corrupt())?,
    ))
}
