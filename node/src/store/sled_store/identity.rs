//! Who a subject is: registration, rectification and erasure (a merge: `merge.rs`).
//!
//! Every link made live here must be held by the subject already or come with this region's
//! granted claim (`claimed`, ARCHITECTURE.md "Identifier ownership"); every link removed queues
//! the release of its claim in the same transaction.

use domicile_types::{Link, NormalizedIdentifier, RegionId, SubjectId};
use sled::Transactional;

use super::claims::{check_replay, hold, live_subject, record_replay, release_held};
use super::retire::{mark_retiring, put_events};
use super::{
    Dropped, Erased, Idempotency, Recorded, Rectification, Rectified, Release, RightsRequestRecord, SledStore,
    StoreError, SubjectRecord, TxResult, abort, backend, consent_key, encode, flatten, open, seal,
};
use crate::store::Holding;

/// The claim of `claimed` for `link`: a link that no subject holds may become live only with one.
fn claim_for<'a>(claimed: &'a [Release], link: &Link) -> TxResult<&'a Release> {
    match claimed.iter().find(|c| c.link == *link) {
        Some(claim) => Ok(claim),
        // Free now but not claimed by this write: it was held when the write looked, and a
        // concurrent erasure or rectification freed it. Start over.
        None => abort(StoreError::Retry),
    }
}

/// Why identifiers change: a rectification (with its rights request) or an ownership repair
/// (another region keeps them).
#[derive(Clone, Copy)]
enum Cause<'a> {
    Rectification(&'a RightsRequestRecord),
    KeptBy(&'a RegionId),
}

/// What a rectification of identifiers did: links added, links removed, the sequence of its last
/// change event.
type IdentifierChanges = (Vec<Link>, Vec<Link>, Option<u64>);

impl SledStore {
    /// The subject a link names, read outside any transaction.
    pub(super) fn subject_by_link_raw(&self, link: &Link) -> Result<Option<SubjectId>, StoreError> {
        match self.links.get(link.as_bytes()).map_err(backend)? {
            None => Ok(None),
            Some(v) => SubjectId::from_slice(&v).map(Some).map_err(|_| StoreError::Corrupt("link entry".into())),
        }
    }

    pub(super) fn erase_subject(
        &self,
        subject: &SubjectId,
        now: i64,
        rights_request: &RightsRequestRecord,
        idempotency: Option<&Idempotency>,
    ) -> Result<Erased, StoreError> {
        // Held throughout, so no write for this subject lands between the scan and the removal.
        let _serial = self.serialise_writes(&[*subject]);
        // Checked before anything else (under the lock): the key's destruction below cannot wait
        // for the transaction to find that this erasure was already made.
        if let Some(i) = idempotency
            && self.idempotency.get(i.key).map_err(backend)?.is_some()
        {
            return Err(StoreError::Replayed);
        }
        let entry = self.meta_entry(subject)?.ok_or(StoreError::NotFound)?;
        let recorded = [
            Recorded::RightsRequest { subject: *subject, request: rights_request },
            Recorded::Erasure { subject: *subject, links: &entry.links },
        ];
        // Audited before the key goes: an erasure whose entries cannot be appended destroys
        // nothing.
        let audited = self.audited(now)?;
        audited.append_now(&recorded)?;
        // Journaled before the key goes, so a restore of an earlier backup erases it again, with
        // every subject merged into it. A record that does not open names none: the erasure
        // goes on (its merges' own lines are in the journal unless a crash lost one).
        let merged_in =
            self.subject_record_raw(subject).ok().flatten().map(|r| merged_ids(&r.lineage)).unwrap_or_default();
        self.journal_erasure(subject, &merged_in, now)?;
        // Crypto-shredding first: from here on nothing sealed for this subject can be read, even
        // if the rest of the clean-up were interrupted.
        self.vault.destroy(subject)?;
        let scanned = (|| {
            Ok::<_, StoreError>((
                self.erased_ledger_entries(subject)?,
                Self::prefix_keys(&self.current, subject)?,
                Self::prefix_keys(&self.interactions, subject)?,
                Self::prefix_keys(&self.rights, subject)?,
                Self::prefix_keys(&self.directory, subject)?,
                self.events_of(&recorded, now)?,
            ))
        })();
        let (ledger_entries, current_keys, interaction_keys, rights_keys, index_keys, events_out) = match scanned {
            Ok(scanned) => scanned,
            Err(e) => {
                // The key is gone: what the entries record has happened, whatever follows.
                audited.commit();
                return Err(e);
            }
        };
        let event_seq = events_out.last().map_or(0, |e| e.sequence);
        let erased = Erased {
            links: entry.links.clone(),
            consent_records: ledger_entries.len(),
            event: event_seq,
            at: now,
            rights_request: rights_request.clone(),
        };
        // What a repeated request gets: nothing of the subject, not even its links.
        let receipt = Erased { links: Vec::new(), ..erased.clone() };
        let trees = [
            &self.meta,
            &self.subjects,
            &self.links,
            &self.ledger,
            &self.segments,
            &self.current,
            &self.interactions,
            &self.rights,
            &self.events,
            &self.event_index,
            &self.retiring,
            &self.held,
            &self.releases,
            &self.idempotency,
            &self.directory,
        ];
        let result = trees.as_slice().transaction(|trees| {
            let [
                meta,
                subjects,
                links,
                ledger,
                segments,
                current,
                interactions,
                rights,
                events,
                event_index,
                retiring,
                held,
                releases,
                replays,
                directory,
            ] = trees.as_slice()
            else {
                return abort(StoreError::Backend("transaction trees".into()));
            };
            check_replay(replays, idempotency)?;
            meta.remove(&subject.as_bytes()[..])?;
            subjects.remove(&subject.as_bytes()[..])?;
            for link in &entry.links {
                links.remove(&link.as_bytes()[..])?;
                release_held(held, releases, link)?;
            }
            super::segments::remove_entries(ledger, segments, &ledger_entries)?;
            for (tree, keys) in [(current, &current_keys), (interactions, &interaction_keys), (rights, &rights_keys)] {
                for k in keys {
                    tree.remove(k)?;
                }
            }
            put_events(events, event_index, &events_out)?;
            mark_retiring(retiring, &events_out)?;
            for key in &index_keys {
                directory.remove(key)?;
            }
            record_replay(replays, idempotency, None, &(*subject, &receipt))?;
            Ok(())
        });
        // Kept even if the transaction failed: the key is gone, so the erasure has happened in
        // substance (a retry removes what is left and is audited again).
        audited.commit();
        flatten(result)?;
        Ok(erased)
    }

    pub(super) fn rectify_subject(
        &self,
        subject: &SubjectId,
        change: &Rectification,
        now: i64,
        rights_request: &RightsRequestRecord,
        claimed: &[Release],
        idempotency: Option<&Idempotency>,
    ) -> Result<Rectified, StoreError> {
        let (added, removed, event) =
            self.change_identifiers(subject, change, now, Cause::Rectification(rights_request), claimed, idempotency)?;
        Ok(Rectified { added, removed, event, rights_request: rights_request.clone() })
    }

    /// Removes identifiers from a subject because another region keeps them (ownership repair):
    /// a rectification without a rights request, skipping those it no longer holds.
    pub(super) fn drop_subject_links(
        &self,
        subject: &SubjectId,
        remove: &[(NormalizedIdentifier, Link)],
        kept_by: &RegionId,
        now: i64,
    ) -> Result<Dropped, StoreError> {
        let entry = self.meta_entry(subject)?.ok_or(StoreError::NotFound)?;
        let remove: Vec<_> = remove.iter().filter(|(_, link)| entry.links.contains(link)).cloned().collect();
        if remove.is_empty() {
            return Ok(Dropped { left: entry.links.len(), ..Dropped::default() });
        }
        let change = Rectification { remove, ..Rectification::default() };
        let (_, removed, event) = self.change_identifiers(subject, &change, now, Cause::KeptBy(kept_by), &[], None)?;
        let left = self.meta_entry(subject)?.map_or(0, |e| e.links.len());
        Ok(Dropped { removed, left, event })
    }

    /// Rectification of identifiers and profile, recorded with its rights request when there is
    /// one. Returns the links added, those removed and the last change event's sequence.
    fn change_identifiers(
        &self,
        subject: &SubjectId,
        change: &Rectification,
        now: i64,
        cause: Cause<'_>,
        claimed: &[Release],
        idempotency: Option<&Idempotency>,
    ) -> Result<IdentifierChanges, StoreError> {
        let _serial = self.serialise_writes(&[*subject]);
        let mut entry = self.meta_entry(subject)?.ok_or(StoreError::NotFound)?;
        let key = self.key(subject)?;
        let mut record = self.subject_record_raw(subject)?.unwrap_or_default();
        let mut removed = Vec::new();
        for (identifier, link) in &change.remove {
            let held = record.identifiers.contains(identifier) || entry.links.contains(link);
            if !held {
                return Err(StoreError::NotHeld);
            }
            record.forget_identifier(identifier);
            entry.links.retain(|l| l != link);
            if !removed.contains(link) {
                removed.push(*link);
            }
        }
        let mut added = Vec::new();
        for (identifier, link) in &change.add {
            match self.subject_by_link_raw(link)? {
                Some(other) if other != *subject => return Err(StoreError::Conflict),
                _ => {}
            }
            if !record.identifiers.contains(identifier) {
                record.identifiers.push(identifier.clone());
            }
            if !entry.links.contains(link) {
                entry.links.push(*link);
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
        let sealed = seal(&key, b"subjects", subject.as_bytes(), &record)?;
        let meta_bytes = encode(&entry)?;
        let (rights_request, kept_by) = match cause {
            Cause::Rectification(request) => (Some(request), None),
            Cause::KeptBy(region) => (None, Some(region)),
        };
        let (consent, restricted) = self.holding_of(subject, &added, now)?;
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
        let events_out = self.events_of(&recorded, now)?;
        let rights = match rights_request {
            Some(request) => {
                let rights_key = consent_key(subject, self.next_id()?);
                let sealed = seal(&key, b"rights", &rights_key, request)?;
                let rectified = Rectified {
                    added: added.clone(),
                    removed: removed.clone(),
                    event: events_out.last().map(|e| e.sequence),
                    rights_request: request.clone(),
                };
                Some((rights_key, sealed, rectified))
            }
            None => None,
        };
        let audited = self.audited(now)?;
        let trees = [
            &self.meta,
            &self.subjects,
            &self.links,
            &self.events,
            &self.event_index,
            &self.rights,
            &self.held,
            &self.releases,
            &self.idempotency,
        ];
        let result = trees.as_slice().transaction(|trees| {
            let [meta, subjects, links, events, event_index, rights_tree, held, releases, replays] = trees.as_slice()
            else {
                return abort(StoreError::Backend("transaction trees".into()));
            };
            check_replay(replays, idempotency)?;
            if meta.get(subject.as_bytes())?.is_none() {
                return abort(StoreError::NotFound);
            }
            for link in &removed {
                // Only a link that still names this subject is dropped.
                if live_subject(links, link)? == Some(*subject) {
                    links.remove(&link.as_bytes()[..])?;
                    release_held(held, releases, link)?;
                }
            }
            for link in &added {
                match live_subject(links, link)? {
                    Some(other) if other != *subject => return abort(StoreError::Conflict),
                    Some(_) => {}
                    None => hold(held, claim_for(claimed, link)?)?,
                }
                links.insert(&link.as_bytes()[..], &subject.as_bytes()[..])?;
            }
            subjects.insert(&subject.as_bytes()[..], sealed.as_slice())?;
            meta.insert(&subject.as_bytes()[..], meta_bytes.as_slice())?;
            put_events(events, event_index, &events_out)?;
            if let Some((rights_key, sealed_rights, rectified)) = &rights {
                rights_tree.insert(&rights_key[..], sealed_rights.as_slice())?;
                record_replay(replays, idempotency, Some((subject, &key)), &(*subject, rectified))?;
            }
            audited.append(&recorded)
        });
        flatten(result)?;
        audited.commit();
        let event = events_out.last().map(|e| e.sequence);
        Ok((added, removed, event))
    }

    /// The subject's decrypted record, read outside any transaction.
    pub(super) fn subject_record_raw(&self, id: &SubjectId) -> Result<Option<SubjectRecord>, StoreError> {
        let Some(key) = self.vault.get(id)? else { return Ok(None) };
        match self.subjects.get(id.as_bytes()).map_err(backend)? {
            None => Ok(None),
            Some(sealed) => open(&key, b"subjects", id.as_bytes(), &sealed).map(Some),
        }
    }
}

/// Every subject id a lineage merged in, nested merges included.
fn merged_ids(lineage: &[crate::store::MergeLineage]) -> Vec<SubjectId> {
    lineage.iter().flat_map(|l| std::iter::once(l.from).chain(merged_ids(&l.nested))).collect()
}
