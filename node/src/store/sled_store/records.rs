//! What is recorded about a subject: consent, interactions, and the restriction of processing.

use domicile_types::{Channel, Purpose, SUBJECT_ID_LEN, SubjectId};
use sled::Transactional;

use super::claims::{check_replay, record_replay};
use super::{
    ConsentRecord, CurrentConsent, Idempotency, Interaction, LEDGER_POSITION, NewConsent, NewInteraction, Recorded,
    RightsRequestRecord, SledStore, StoreError, SubjectMeta, abort, backend, consent_key, current_key, encode, flatten,
    open, or_abort, seal,
};

/// A cell's candidates from one batch, in order, each with its sealed form.
type SealedCandidates<'a> = Vec<(&'a CurrentConsent, Vec<u8>)>;

impl SledStore {
    pub(super) fn record_consent(
        &self,
        subject: &SubjectId,
        consent: NewConsent,
        idempotency: Option<&Idempotency>,
    ) -> Result<(ConsentRecord, u64), StoreError> {
        // One record is a batch of one: one code path for the ledger, the cells, the event, the
        // audit entry and the idempotency record.
        self.record_consents(subject, vec![(consent, idempotency.copied())])?
            .pop()
            .ok_or_else(|| StoreError::Backend("one record written, none returned".into()))
    }

    /// Consent records of one subject in one transaction (one capture, or an import's entries for
    /// the subject): appended at the next ledger positions (the ledger's own, read under the
    /// write lock every writer holds), each cell updated where the ledger's order puts a record of
    /// the batch in force, one change event, one audit entry and the idempotency record of each,
    /// with one write lock, one audit transaction and one commit for all. Any idempotency key
    /// already recorded aborts the whole batch ([`StoreError::Replayed`]).
    pub(super) fn record_consents(
        &self,
        subject: &SubjectId,
        consents: Vec<(NewConsent, Option<Idempotency>)>,
    ) -> Result<Vec<(ConsentRecord, u64)>, StoreError> {
        let key = self.key(subject)?;
        let _serial = self.serialise_writes(&[*subject]);
        // Read under the lock every writer takes, so nothing moves them until this commits: the
        // change event names the links the subject holds now, and an entry captured through a
        // link it no longer holds (an unmerge moved it since the capture resolved its subject)
        // belongs to another subject: resolve again.
        let entry = self.meta_entry(subject)?.ok_or(StoreError::NotFound)?;
        if consents.iter().any(|(c, _)| c.evidence.captured_via.is_some_and(|l| !entry.links.contains(&l))) {
            return Err(StoreError::Retry);
        }
        let first = self.ledger_position()? + 1;
        let mut records = Vec::with_capacity(consents.len());
        let mut tags = Vec::with_capacity(consents.len());
        let mut sealed_entries = Vec::with_capacity(consents.len());
        let mut candidates = Vec::with_capacity(consents.len());
        for (offset, (consent, tag)) in consents.into_iter().enumerate() {
            let sequence = first + offset as u64;
            let record = ConsentRecord {
                sequence,
                purpose: consent.purpose,
                channels: consent.channels,
                state: consent.state,
                captured_at: consent.captured_at,
                recorded_at: consent.recorded_at,
                expires_at: consent.expires_at,
                evidence: consent.evidence,
                counted_at_ms: Some(consent.counted_at_ms),
                review: false,
            };
            let ledger_key = consent_key(subject, sequence);
            sealed_entries.push((ledger_key, seal(&key, b"consent", &ledger_key, &record)?));
            candidates.push(CurrentConsent::of(&record, consent.counted_at_ms));
            records.push(record);
            tags.push(tag);
        }
        let Some(last) = records.last().map(|r| r.sequence) else { return Ok(Vec::new()) };
        // Per cell, the batch's candidates in order, each sealed: in the transaction they are
        // applied one by one to the stored record, as single writes would be (the ledger's order
        // is not transitive across its re-grant rule, so no winner is picked beforehand).
        let mut cells: Vec<(Vec<u8>, SealedCandidates<'_>)> = Vec::new();
        for (record, candidate) in records.iter().zip(&candidates) {
            for channel in &record.channels {
                let k = current_key(subject, record.purpose, *channel);
                let sealed = seal(&key, b"current", &k, candidate)?;
                match cells.iter_mut().find(|(cell, _)| *cell == k) {
                    Some((_, list)) => list.push((candidate, sealed)),
                    None => cells.push((k, vec![(candidate, sealed)])),
                }
            }
        }
        let recorded: Vec<Recorded<'_>> =
            records.iter().map(|record| Recorded::Consent { subject: *subject, record, links: &entry.links }).collect();
        let recorded_at = records.first().map_or(0, |r| r.recorded_at);
        let events = self.events_of(&recorded, recorded_at)?;
        let audited = self.audited(recorded_at)?;
        let result = (&self.meta, &self.consent, &self.current, &self.events, &self.counters, &self.idempotency)
            .transaction(|(meta, ledger, current, event_tree, counters, replays)| {
                for tag in &tags {
                    check_replay(replays, tag.as_ref())?;
                }
                // A merge or erasure that committed since the checks above took the subject away;
                // a record written now would be sealed under a destroyed key.
                if meta.get(subject.as_bytes())?.is_none() {
                    return abort(StoreError::NotFound);
                }
                for (ledger_key, sealed) in &sealed_entries {
                    ledger.insert(&ledger_key[..], sealed.as_slice())?;
                }
                counters.insert(LEDGER_POSITION, &last.to_be_bytes()[..])?;
                for (k, list) in &cells {
                    let stored = match current.get(k)? {
                        None => None,
                        Some(bytes) => Some(or_abort(open::<CurrentConsent>(&key, b"current", k, &bytes))?),
                    };
                    let mut in_force: Option<&CurrentConsent> = stored.as_ref();
                    let mut write: Option<&[u8]> = None;
                    for (candidate, sealed) in list {
                        if in_force.is_none_or(|existing| candidate.supersedes(existing)) {
                            in_force = Some(*candidate);
                            write = Some(sealed.as_slice());
                        }
                    }
                    if let Some(sealed) = write {
                        current.insert(k.as_slice(), sealed)?;
                    }
                }
                let mut results = Vec::with_capacity(records.len());
                for ((record, (event_seq, event)), tag) in records.iter().zip(&events).zip(&tags) {
                    event_tree.insert(&event_seq.to_be_bytes()[..], event.as_slice())?;
                    let result = (record.clone(), *event_seq);
                    record_replay(replays, tag.as_ref(), Some((subject, &key)), &(*subject, &result))?;
                    results.push(result);
                }
                audited.append(&recorded)?;
                Ok(results)
            });
        let result = flatten(result)?;
        audited.commit();
        Ok(result)
    }

    pub(super) fn restrict_subject(
        &self,
        subject: &SubjectId,
        restricted: bool,
        rights_request: &RightsRequestRecord,
        idempotency: Option<&Idempotency>,
    ) -> Result<RightsRequestRecord, StoreError> {
        let key = self.key(subject)?;
        let _serial = self.serialise_writes(&[*subject]);
        let mut entry = self.meta_entry(subject)?.ok_or(StoreError::NotFound)?;
        entry.meta.restricted = restricted;
        let meta_bytes = encode(&entry)?;
        let rights_key = consent_key(subject, self.db.generate_id().map_err(backend)?);
        let sealed_rights = seal(&key, b"rights", &rights_key, rights_request)?;
        let recorded = [Recorded::RightsRequest { subject: *subject, request: rights_request }];
        let audited = self.audited(rights_request.received_at)?;
        let result = (&self.meta, &self.rights, &self.idempotency).transaction(|(meta, rights, replays)| {
            check_replay(replays, idempotency)?;
            if meta.get(subject.as_bytes())?.is_none() {
                return abort(StoreError::NotFound);
            }
            meta.insert(&subject.as_bytes()[..], meta_bytes.as_slice())?;
            rights.insert(&rights_key[..], sealed_rights.as_slice())?;
            record_replay(replays, idempotency, Some((subject, &key)), &(*subject, (restricted, rights_request)))?;
            audited.append(&recorded)
        });
        flatten(result)?;
        audited.commit();
        Ok(rights_request.clone())
    }

    pub(super) fn record_interaction(
        &self,
        subject: &SubjectId,
        interaction: NewInteraction,
        idempotency: Option<&Idempotency>,
    ) -> Result<Interaction, StoreError> {
        let key = self.key(subject)?;
        let _serial = self.serialise_writes(&[*subject]);
        let sequence = self.db.generate_id().map_err(backend)?;
        let stored = interaction.numbered(sequence);
        let k = consent_key(subject, sequence);
        let sealed = seal(&key, b"interactions", &k, &stored)?;
        let result =
            (&self.meta, &self.interactions, &self.idempotency).transaction(|(meta, interactions, replays)| {
                check_replay(replays, idempotency)?;
                if meta.get(subject.as_bytes())?.is_none() {
                    return abort(StoreError::NotFound);
                }
                interactions.insert(&k[..], sealed.as_slice())?;
                record_replay(replays, idempotency, Some((subject, &key)), &(*subject, &stored))?;
                Ok(())
            });
        flatten(result)?;
        Ok(stored)
    }

    // Reads: what decisions and histories see.

    pub(super) fn read_current_consent(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        channel: Channel,
    ) -> Result<Option<CurrentConsent>, StoreError> {
        let cell = (purpose, channel);
        let cached = self.cache.get(subject, |c| c.current(cell));
        let epoch = match cached {
            Ok(current) => return Ok(current),
            Err(epoch) => epoch,
        };
        let k = current_key(subject, purpose, channel);
        let key = self.vault.get(subject)?;
        let current: Option<CurrentConsent> = match (self.current.get(&k).map_err(backend)?, &key) {
            (None, _) => None,
            (Some(bytes), Some(key)) => Some(open(key, b"current", &k, &bytes)?),
            (Some(_), None) => return Err(StoreError::NotFound),
        };
        // Only for subjects that exist: a `None` for an erased or unknown subject is not kept.
        if key.is_some() {
            self.cache.fill(subject, epoch, |c| c.current.push((cell, current.clone())));
        }
        Ok(current)
    }

    pub(super) fn read_decision_inputs(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        channel: Channel,
    ) -> Result<Option<(SubjectMeta, Option<CurrentConsent>)>, StoreError> {
        // Both from one cache lookup when a decision for this cell was made before.
        let cell = (purpose, channel);
        let cached = self.cache.get(subject, |c| {
            let current = c.current(cell)?;
            Some((c.meta.clone()?, current))
        });
        if let Ok((meta, current)) = cached {
            return Ok(Some((meta, current)));
        }
        let Some(meta) = self.read_subject_meta(subject)? else { return Ok(None) };
        Ok(Some((meta, self.read_current_consent(subject, purpose, channel)?)))
    }

    pub(super) fn read_consent_in_force(
        &self,
        subject: &SubjectId,
    ) -> Result<Vec<(Purpose, Channel, CurrentConsent)>, StoreError> {
        let key = self.key(subject)?;
        let mut cells = Vec::new();
        for item in self.current.scan_prefix(subject.as_bytes()) {
            let (k, value) = item.map_err(backend)?;
            let corrupt = || StoreError::Corrupt("current consent key".into());
            let (purpose, channel) = std::str::from_utf8(&k[SUBJECT_ID_LEN..])
                .ok()
                .and_then(|cell| cell.split_once('\0'))
                .ok_or_else(corrupt)?;
            let purpose = Purpose::parse(purpose).map_err(|_| corrupt())?;
            let channel = Channel::parse(channel).map_err(|_| corrupt())?;
            cells.push((purpose, channel, open(&key, b"current", &k, &value)?));
        }
        cells.sort_by(|a, b| (a.0.as_str(), a.1.as_str()).cmp(&(b.0.as_str(), b.1.as_str())));
        Ok(cells)
    }
}

impl SledStore {
    /// Up to `limit` subject ids after `after`, in id order (`Store::subjects_after`).
    pub(super) fn subject_ids_after(
        &self,
        after: Option<SubjectId>,
        limit: usize,
    ) -> Result<Vec<SubjectId>, StoreError> {
        let range = match after {
            Some(id) => {
                self.meta.range((std::ops::Bound::Excluded(id.as_bytes().to_vec()), std::ops::Bound::Unbounded))
            }
            None => self.meta.iter(),
        };
        let id = |k: sled::IVec| SubjectId::from_slice(&k).map_err(|_| StoreError::Corrupt("subject id".into()));
        range.keys().take(limit).map(|k| k.map_err(backend).and_then(id)).collect()
    }
}

/// The consent ledger's own position counter (`counters` tree).
impl SledStore {
    /// Starts the consent ledger's position counter after every position already used: stores
    /// written before the ledger had its own counter numbered records from the shared event
    /// counter, and positions order a subject's records, so they only ever grow.
    pub(super) fn with_ledger_counter(self) -> Result<Self, StoreError> {
        if self.counters.get(LEDGER_POSITION).map_err(backend)?.is_none() {
            let mut last = 0u64;
            for key in self.consent.iter().keys() {
                let key = key.map_err(backend)?;
                last = last.max(super::unmerge::position_of(&key)?);
            }
            self.counters.insert(LEDGER_POSITION, &last.to_be_bytes()).map_err(backend)?;
        }
        Ok(self)
    }

    /// The consent ledger's last position; read under the write lock.
    pub(super) fn ledger_position(&self) -> Result<u64, StoreError> {
        let bytes = self.counters.get(LEDGER_POSITION).map_err(backend)?;
        let bytes = bytes.as_deref().and_then(|b| <[u8; 8]>::try_from(b).ok());
        bytes.map(u64::from_be_bytes).ok_or_else(|| StoreError::Corrupt("ledger counter".into()))
    }
}
