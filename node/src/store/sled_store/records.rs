//! What is recorded about a subject: consent, interactions, and the restriction of processing.

use std::collections::HashMap;

use domicile_types::{Channel, Purpose, SUBJECT_ID_LEN, SubjectId};
use sled::Transactional;

use super::claims::{check_replay, record_replay};
use super::ledger::{ChunkWrites, Listed, Tail};
use super::segments::{SEGMENT_ENTRIES, encode_segment, segment_key};
use super::{
    ConsentRecord, CurrentConsent, Idempotency, Interaction, LEDGER_POSITION, NewConsent, NewInteraction, Recorded,
    RightsRequestRecord, SledStore, StoreError, SubjectMeta, abort, backend, consent_key, current_key, encode, flatten,
    open, or_abort, seal,
};
use crate::store::import_source::{DIGEST_LEN, digest_of};
use crate::store::vault::SubjectKey;
use crate::store::{AppendedConsents, ConsentBatch, RestrictionSet};

/// A cell's candidates from one batch, in order, each with its sealed form and the index of its
/// record among its write's records.
type SealedCandidates = Vec<(CurrentConsent, Vec<u8>, usize)>;

/// Per consent of a write, its source event's digest if it is imported.
type Sources = Vec<Option<[u8; DIGEST_LEN]>>;

/// A current-consent cell's key and its sealed record.
type SealedCell = (Vec<u8>, Vec<u8>);

/// What became of one subject's part of a batch: its records as stored with their change
/// events' sequences, or why none was written.
pub(super) type SubjectWritten = Result<Vec<(ConsentRecord, u64)>, StoreError>;

/// One subject's part of a batch of consent records.
struct SubjectWrite {
    /// Its place in the batch.
    slot: usize,
    subject: SubjectId,
    key: SubjectKey,
    links: Vec<domicile_types::Link>,
    /// The tail of its ledger directory, read under the write lock (`ledger.rs`).
    tail: Tail,
    /// Per consent, its source event's digest if it is imported (made once, by `writable`).
    sources: Sources,
    /// Taken when its records are made.
    consents: Vec<NewConsent>,
    tags: Vec<Option<Idempotency>>,
    records: Vec<ConsentRecord>,
}

impl SledStore {
    pub(super) fn record_consent(
        &self,
        subject: &SubjectId,
        consent: NewConsent,
        idempotency: Option<&Idempotency>,
    ) -> Result<(ConsentRecord, u64), StoreError> {
        // One record is a batch of one: one code path for the ledger, the cells, the event, the
        // audit entry and the idempotency record.
        self.record_consents(vec![(*subject, vec![(consent, idempotency.copied())])])?
            .pop()
            .ok_or_else(|| StoreError::Backend("one subject written, none returned".into()))??
            .pop()
            .ok_or_else(|| StoreError::Backend("one record written, none returned".into()))
    }

    /// Consent records of several subjects in one transaction (one capture, or an import's
    /// batch): appended at the next ledger positions (the ledger's own, read under the write
    /// lock every writer holds), each cell updated where the ledger's order puts a record of the
    /// batch in force, one change event, one audit entry and the idempotency record of each,
    /// with one write lock, one audit transaction and one commit for all. A subject that cannot
    /// be written (gone, its link moved, an idempotency key of its entries already recorded, an
    /// imported entry's source event already in its ledger)
    /// gets its error and nothing written; the others are written. The checks are exact: every
    /// writer of these trees holds the write lock taken here.
    pub(super) fn record_consents(&self, batch: ConsentBatch) -> Result<Vec<SubjectWritten>, StoreError> {
        let subjects: Vec<SubjectId> = batch.iter().map(|(subject, _)| *subject).collect();
        let _serial = self.serialise_writes(&subjects).consent_only();
        let mut outcomes: Vec<Option<SubjectWritten>> = Vec::with_capacity(batch.len());
        let mut writes = Vec::with_capacity(batch.len());
        for (slot, (subject, consents)) in batch.into_iter().enumerate() {
            match self.writable(&subject, &consents) {
                Ok((key, links, tail, sources)) => {
                    outcomes.push(None);
                    let (consents, tags) = consents.into_iter().unzip();
                    let records = Vec::new();
                    writes.push(SubjectWrite { slot, subject, key, links, tail, sources, consents, tags, records });
                }
                Err(e) => outcomes.push(Some(Err(e))),
            }
        }
        let mut position = self.ledger_position()?;
        let start = position;
        // Each subject and sealed entry, at positions from `start + 1` on.
        let mut sealed_entries: Vec<(SubjectId, Vec<u8>)> = Vec::new();
        // Per cell, the batch's candidates in order, each sealed: in the transaction they are
        // applied one by one to the stored record, as single writes would be (the ledger's order
        // is not transitive across its re-grant rule, so no winner is picked beforehand).
        let mut cells: Vec<(Vec<u8>, usize, Channel, SealedCandidates)> = Vec::new();
        let mut cell_index: HashMap<Vec<u8>, usize> = HashMap::new();
        for (at, write) in writes.iter_mut().enumerate() {
            for consent in std::mem::take(&mut write.consents) {
                position += 1;
                let record = ConsentRecord {
                    sequence: position,
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
                let sealed = seal(&write.key, b"consent", &consent_key(&write.subject, position), &record)?;
                sealed_entries.push((write.subject, sealed));
                let candidate = CurrentConsent::of(&record, consent.counted_at_ms);
                let index = write.records.len();
                for channel in &record.channels {
                    let k = current_key(&write.subject, record.purpose, *channel);
                    let sealed = seal(&write.key, b"current", &k, &candidate)?;
                    match cell_index.get(&k).and_then(|&cell| cells.get_mut(cell)) {
                        Some((.., list)) => list.push((candidate.clone(), sealed, index)),
                        None => {
                            cell_index.insert(k.clone(), cells.len());
                            cells.push((k, at, *channel, vec![(candidate.clone(), sealed, index)]));
                        }
                    }
                }
                write.records.push(record);
            }
        }
        let in_force = self.in_force_of(&writes, &cells)?;
        let recorded: Vec<Recorded<'_>> = writes
            .iter()
            .zip(&in_force)
            .flat_map(|(w, in_force)| {
                w.records.iter().zip(in_force).map(|(record, in_force)| Recorded::Consent {
                    subject: w.subject,
                    record,
                    links: &w.links,
                    in_force,
                })
            })
            .collect();
        let Some(recorded_at) = writes.iter().flat_map(|w| w.records.first()).map(|r| r.recorded_at).next() else {
            return Ok(outcomes.into_iter().map(|o| o.unwrap_or_else(|| Ok(Vec::new()))).collect());
        };
        let events = self.events_of(&recorded, recorded_at)?;
        let audited = self.audited(recorded_at)?;
        // No subject's presence or idempotency keys are read again in the transaction: `writable`
        // read them under the write lock, which every writer that removes a subject or records a
        // key holds until it commits.
        // Each subject's directory lists its new entries after the ones `writable` read (each
        // imported one with its source digest: `writable` found none of these events listed,
        // and `prepare_subject` sends an event once per subject).
        // A subject written twice in one batch lists its second part after the first.
        let mut tails: HashMap<SubjectId, Tail> = HashMap::new();
        let listings: Vec<ChunkWrites> = writes
            .iter()
            .map(|w| {
                let listed: Vec<Listed> = w
                    .records
                    .iter()
                    .zip(&w.sources)
                    .map(|(r, s)| Listed { position: r.sequence, source: *s })
                    .collect();
                tails.entry(w.subject).or_insert_with(|| w.tail.clone()).append(&w.subject, &listed)
            })
            .collect();
        // The entries in segments (`segments.rs`): one new key per SEGMENT_ENTRIES entries.
        if !sealed_entries.is_empty() {
            self.check_positions_free(start)?;
        }
        let segments = sealed_entries
            .chunks(SEGMENT_ENTRIES)
            .zip((start + 1..).step_by(SEGMENT_ENTRIES))
            .map(|(group, first)| {
                let entries = group.iter().map(|(subject, sealed)| (&subject.as_bytes()[..], sealed.as_slice()));
                Ok((segment_key(first), encode_segment(entries)?))
            })
            .collect::<Result<Vec<([u8; 8], Vec<u8>)>, StoreError>>()?;
        let trees = (
            &self.segments,
            &self.current,
            &self.events,
            &self.event_index,
            &self.counters,
            &self.idempotency,
            &self.directory,
        );
        let result =
            trees.transaction(|(segment_tree, current, event_tree, event_index, counters, replays, directory)| {
                for (first, segment) in &segments {
                    segment_tree.insert(&first[..], segment.as_slice())?;
                }
                for (chunk, listing) in listings.iter().flatten() {
                    directory.insert(chunk.as_slice(), listing.as_slice())?;
                }
                counters.insert(LEDGER_POSITION, &position.to_be_bytes()[..])?;
                for (k, at, _, list) in &cells {
                    let Some(key) = writes.get(*at).map(|w| &w.key) else {
                        return abort(StoreError::Backend("a cell of no subject in the batch".into()));
                    };
                    let stored = match current.get(k)? {
                        None => None,
                        Some(bytes) => Some(or_abort(open::<CurrentConsent>(key, b"current", k, &bytes))?),
                    };
                    let mut in_force: Option<&CurrentConsent> = stored.as_ref();
                    let mut write: Option<&[u8]> = None;
                    for (candidate, sealed, _) in list {
                        if in_force.is_none_or(|existing| candidate.supersedes(existing)) {
                            in_force = Some(candidate);
                            write = Some(sealed.as_slice());
                        }
                    }
                    if let Some(sealed) = write {
                        current.insert(k.as_slice(), sealed)?;
                    }
                }
                let mut events = events.iter();
                let mut results = Vec::with_capacity(writes.len());
                for (write, in_force) in writes.iter().zip(&in_force) {
                    let mut written = Vec::with_capacity(write.records.len());
                    for ((record, tag), in_force) in write.records.iter().zip(&write.tags).zip(in_force) {
                        // A record not announced has no event (`change::announced`): 0 stands for none.
                        let event_seq = if crate::store::announced(record, in_force) {
                            let Some(event) = events.next() else {
                                return abort(StoreError::Backend("fewer change events than records".into()));
                            };
                            super::retire::put_event(event_tree, event_index, event)?;
                            event.sequence
                        } else {
                            0
                        };
                        let result = (record.clone(), event_seq);
                        // An imported entry's repeat is found by its directory listing written above
                        // (permanent, unlike idempotency records): no record for it.
                        if record.evidence.import.is_none() {
                            let sealed_for = Some((&write.subject, &write.key));
                            record_replay(replays, tag.as_ref(), sealed_for, &(write.subject, &result))?;
                        }
                        written.push(result);
                    }
                    results.push(written);
                }
                audited.append(&recorded)?;
                Ok(results)
            });
        let results = flatten(result)?;
        audited.commit();
        for (write, written) in writes.iter().zip(results) {
            if let Some(slot) = outcomes.get_mut(write.slot) {
                *slot = Some(Ok(written));
            }
        }
        Ok(outcomes.into_iter().map(|o| o.unwrap_or_else(|| Ok(Vec::new()))).collect())
    }

    /// Per write, per record, the channels where a grant is in force once the record is applied
    /// as the transaction applies the batch (each cell's candidates in order over what is
    /// stored), for the grants that are announced ([`crate::store::announced`]): the others'
    /// events do not depend on it, so their cells are not read. Read under the write lock, which every writer
    /// of these cells holds: the transaction finds the same.
    fn in_force_of(
        &self,
        writes: &[SubjectWrite],
        cells: &[(Vec<u8>, usize, Channel, SealedCandidates)],
    ) -> Result<Vec<Vec<Vec<Channel>>>, StoreError> {
        let mut out: Vec<Vec<Vec<Channel>>> = writes.iter().map(|w| vec![Vec::new(); w.records.len()]).collect();
        for (k, at, channel, list) in cells {
            let Some(write) = writes.get(*at) else { continue };
            let needed = list.iter().any(|(_, _, index)| {
                write.records.get(*index).is_some_and(|r| {
                    r.state == domicile_types::ConsentState::Granted && crate::store::announced(r, &r.channels)
                })
            });
            if !needed {
                continue;
            }
            let stored = match self.current.get(k).map_err(backend)? {
                None => None,
                Some(bytes) => Some(open::<CurrentConsent>(&write.key, b"current", k, &bytes)?),
            };
            let mut in_force = stored.as_ref();
            for (candidate, _, index) in list {
                if in_force.is_none_or(|existing| candidate.supersedes(existing)) {
                    in_force = Some(candidate);
                }
                if in_force.is_some_and(|c| c.grants_at(candidate.recorded_at.unwrap_or(i64::MAX)))
                    && let Some(channels) = out.get_mut(*at).and_then(|w| w.get_mut(*index))
                {
                    channels.push(*channel);
                }
            }
        }
        Ok(out)
    }

    /// [`crate::store::Store::append_consents`]: [`Self::record_consents`], whose answer per
    /// subject stands for each of its entries (a subject is written whole or not at all).
    pub(super) fn record_consent_batch(&self, batch: ConsentBatch) -> Result<AppendedConsents, StoreError> {
        let sizes: Vec<usize> = batch.iter().map(|(_, consents)| consents.len()).collect();
        let written = self.record_consents(batch)?;
        Ok(written
            .into_iter()
            .zip(sizes)
            .map(|(subject, size)| match subject {
                Ok(records) => records.into_iter().map(Ok).collect(),
                Err(e) => (0..size).map(|_| Err(e.for_each_caller())).collect(),
            })
            .collect())
    }

    /// Whether `consents` can be written for `subject` now (under the write lock): its key and
    /// the links it holds, or why not. An entry captured through a link the subject no longer
    /// holds (an unmerge moved it since the capture resolved its subject) belongs to another
    /// subject: resolve again ([`StoreError::Retry`]). The change events name the links read here.
    fn writable(
        &self,
        subject: &SubjectId,
        consents: &[(NewConsent, Option<Idempotency>)],
    ) -> Result<(SubjectKey, Vec<domicile_types::Link>, Tail, Sources), StoreError> {
        let key = self.key(subject)?;
        let entry = self.meta_entry_under_lock(subject)?.ok_or(StoreError::NotFound)?;
        if consents.iter().any(|(c, _)| c.evidence.captured_via.is_some_and(|l| !entry.links.contains(&l))) {
            return Err(StoreError::Retry);
        }
        let sources: Sources =
            consents.iter().map(|(c, _)| c.evidence.import.as_ref().map(|s| digest_of(&key, s))).collect();
        // Imported entries are checked against every source event the directory lists; other
        // writes read only its last chunk, whatever the history's length.
        let whole = if sources.iter().any(Option::is_some) { Some(self.directory_for_write(subject)?) } else { None };
        let found = whole.as_ref().map(|directory| directory.find_sources(&sources)).unwrap_or_default();
        let tail = match &whole {
            Some(directory) => directory.tail(),
            None => self.directory_tail(subject)?,
        };
        for (at, ((_, tag), source)) in consents.iter().zip(&sources).enumerate() {
            let replayed = match (source, tag) {
                // Imported: the directory answers for the event (no idempotency record is kept).
                (Some(_), _) => found.get(at).copied().flatten().is_some(),
                (None, Some(tag)) => self.idempotency.contains_key(&tag.key[..]).map_err(backend)?,
                (None, None) => false,
            };
            if replayed {
                return Err(StoreError::Replayed);
            }
        }
        Ok((key, entry.links, tail, sources))
    }

    pub(super) fn restrict_subject(
        &self,
        subject: &SubjectId,
        restricted: bool,
        rights_request: &RightsRequestRecord,
        idempotency: Option<&Idempotency>,
    ) -> Result<RestrictionSet, StoreError> {
        let key = self.key(subject)?;
        let _serial = self.serialise_writes(&[*subject]);
        let mut entry = self.meta_entry(subject)?.ok_or(StoreError::NotFound)?;
        entry.meta.restricted = restricted;
        let meta_bytes = encode(&entry)?;
        let rights_key = consent_key(subject, self.next_id()?);
        let sealed_rights = seal(&key, b"rights", &rights_key, rights_request)?;
        // Followers are told (`Change::Restricted`): while it holds, every decision refuses.
        let recorded = [
            Recorded::RightsRequest { subject: *subject, request: rights_request },
            Recorded::Restriction { subject: *subject, links: &entry.links, restricted },
        ];
        let events_out = self.events_of(&recorded, rights_request.received_at)?;
        let audited = self.audited(rights_request.received_at)?;
        let trees = (&self.meta, &self.rights, &self.idempotency, &self.events, &self.event_index);
        let result = trees.transaction(|(meta, rights, replays, events, event_index)| {
            check_replay(replays, idempotency)?;
            if meta.get(subject.as_bytes())?.is_none() {
                return abort(StoreError::NotFound);
            }
            meta.insert(&subject.as_bytes()[..], meta_bytes.as_slice())?;
            rights.insert(&rights_key[..], sealed_rights.as_slice())?;
            super::retire::put_events(events, event_index, &events_out)?;
            record_replay(replays, idempotency, Some((subject, &key)), &(*subject, (restricted, rights_request)))?;
            audited.append(&recorded)
        });
        flatten(result)?;
        audited.commit();
        Ok(RestrictionSet { request: rights_request.clone(), event: events_out.last().map(|e| e.sequence) })
    }

    pub(super) fn record_interaction(
        &self,
        subject: &SubjectId,
        interaction: NewInteraction,
        idempotency: Option<&Idempotency>,
    ) -> Result<Interaction, StoreError> {
        let key = self.key(subject)?;
        let _serial = self.serialise_writes(&[*subject]);
        let sequence = self.next_id()?;
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

    /// For a merge of `from` into `into`: the cells of `into` to write (sealed under its key),
    /// where `from`'s record supersedes `into`'s (so an older grant of one half never overrides
    /// a withdrawal or denial of the other), and the merged subject's consent in force as
    /// watchers are told it at `now`.
    pub(super) fn merged_in_force(
        &self,
        (into, into_key): (&SubjectId, &SubjectKey),
        from: &SubjectId,
        now: i64,
    ) -> Result<(Vec<SealedCell>, Vec<crate::store::Announced>), StoreError> {
        let mut writes = Vec::new();
        let mut in_force = self.in_force_cells(into)?;
        for (purpose, channel, candidate) in self.read_consent_in_force(from)? {
            if in_force.get(&(purpose, channel)).is_none_or(|existing| candidate.supersedes(existing)) {
                let new = current_key(into, purpose, channel);
                writes.push((new.clone(), seal(into_key, b"current", &new, &candidate)?));
                in_force.insert((purpose, channel), candidate);
            }
        }
        Ok((writes, crate::store::announced_in_force(&in_force, now)))
    }

    /// What `subject` holds that `links` new to it are told with (`Holding`): its consent in
    /// force as watchers are told it at `at`, and its restriction. Nothing (and nothing read but
    /// its metadata) for a subject that does not exist (yet) or already holds every one of
    /// `links`. Read under the write lock, so the write that adds them finds the same.
    pub(super) fn holding_of(
        &self,
        subject: &SubjectId,
        links: &[domicile_types::Link],
        at: i64,
    ) -> Result<(Vec<crate::store::Announced>, bool), StoreError> {
        match self.meta_entry(subject)? {
            Some(entry) if links.iter().any(|l| !entry.links.contains(l)) => {
                let cells = self.in_force_cells(subject)?;
                Ok((crate::store::announced_in_force(&cells, at), entry.meta.restricted))
            }
            _ => Ok((Vec::new(), false)),
        }
    }

    /// A subject's consent in force by cell ([`Self::read_consent_in_force`]).
    fn in_force_cells(
        &self,
        subject: &SubjectId,
    ) -> Result<std::collections::BTreeMap<(Purpose, Channel), CurrentConsent>, StoreError> {
        Ok(self.read_consent_in_force(subject)?.into_iter().map(|(p, c, v)| ((p, c), v)).collect())
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
    /// Starts the consent ledger's position counter after every position already used, at its
    /// key, with the fence against earlier versions ([`super::heads::EARLIER_LEDGER_POSITION`])
    /// in the same batch. Stores written before the ledger had its own counter numbered records
    /// from the shared event counter, and positions order a subject's records, so they only ever
    /// grow.
    pub(super) fn with_ledger_counter(self) -> Result<Self, StoreError> {
        let fence = super::heads::EARLIER_LEDGER_POSITION;
        let last = match super::heads::stored_ledger_position(&self.counters)? {
            Some(last) => last,
            None => {
                // Only a store of the layout before the ledger in position order (`ledger.rs`)
                // can be this old.
                let mut last = 0u64;
                for key in self.db.open_tree("consent").map_err(backend)?.iter().keys() {
                    let key = key.map_err(backend)?;
                    last = last.max(super::unmerge::position_of(&key)?);
                }
                last
            }
        };
        let at = self.counters.get(LEDGER_POSITION).map_err(backend)?;
        let fenced = self.counters.get(fence.0).map_err(backend)?;
        if at.as_deref() != Some(&last.to_be_bytes()[..]) || fenced.as_deref() != Some(fence.1) {
            let mut batch = sled::Batch::default();
            batch.insert(LEDGER_POSITION, &last.to_be_bytes()[..]);
            batch.insert(fence.0, fence.1);
            self.counters.apply_batch(batch).map_err(backend)?;
            self.db.flush().map_err(backend)?;
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
