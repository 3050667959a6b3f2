//! Registration: one subject (`Register`) or many in one transaction (`RegisterBatch`).
//!
//! Why many in one: every sled transaction writes the log buffer out twice (before and after its
//! batch marker, `sled::pagecache::PageCache::pin_log`), each a `pwrite` and a
//! `sync_file_range`; registered one transaction each, an import's new subjects cost a node about
//! 200 µs of system time apiece there. One path serves both: a single registration is a batch of
//! one, so every test of `Register` exercises the batch's rules too.
//!
//! Each item is checked on its own inside the transaction (its links, its claims, its
//! jurisdiction) before anything of it is written; an item that fails a check is left out with
//! its error and the others are written. Items are applied in order, each checked against what
//! the ones before it wrote (sled's transactional reads see the transaction's own writes): an
//! item naming a link an earlier item made live finds it held by a subject it did not pick its
//! key for, and is refused with `Retry` (the node then registers it on its own).

use domicile_types::{Link, SubjectId};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::claims::{check_replay, hold, live_subject, record_replay};
use super::retire::put_event;
use super::{
    MetaEntry, Recorded, Registered, SledStore, StoreError, SubjectMeta, SubjectRecord, TxResult, decode, encode,
    flatten, number_events, open, or_abort, seal,
};
use crate::store::vault::SubjectKey;
use crate::store::{Announced, Holding, RegisteredEach, Registering};

/// What an item needs that is read or allocated before the transaction.
struct Prepared {
    /// The subject the item's links name now, else its new id: the key is picked outside the
    /// transaction, which re-checks every link.
    candidate: SubjectId,
    key: SubjectKey,
    named: Vec<Link>,
    /// A subject that exists tells links new to it what it holds (`Holding`).
    consent: Vec<Announced>,
    restricted: bool,
    /// Sequences of its change events (sled's ids cannot be taken inside a transaction).
    events: Vec<u64>,
}

/// An item written: its subject, whether it is new, the links new to it.
struct Applied {
    subject: SubjectId,
    created: bool,
    added: Vec<Link>,
}

/// The trees a registration writes.
struct Trees<'t> {
    meta: &'t TransactionalTree,
    subjects: &'t TransactionalTree,
    links: &'t TransactionalTree,
    held: &'t TransactionalTree,
    replays: &'t TransactionalTree,
}

impl SledStore {
    /// One registration ([`Self::register_subjects`] of one).
    pub(super) fn register_subject(&self, item: &Registering<'_>, now: i64) -> Result<Registered, StoreError> {
        self.register_subjects(std::slice::from_ref(item), now)?
            .pop()
            .unwrap_or_else(|| Err(StoreError::Backend("registration outcome lost".into())))
    }

    /// Registers `items` in one transaction: one outcome per item, in order. The outer error
    /// fails them all (nothing written); an item's own error (`Retry`, `Conflict`,
    /// `JurisdictionMismatch`, `Replayed`) leaves only it out.
    pub(super) fn register_subjects(&self, items: &[Registering<'_>], now: i64) -> Result<RegisteredEach, StoreError> {
        let mut candidates = Vec::with_capacity(items.len());
        for item in items {
            let mut candidate = item.new_subject;
            for (_, link) in item.identifiers {
                if let Some(id) = self.subject_by_link_raw(link)? {
                    candidate = id;
                    break;
                }
            }
            candidates.push(candidate);
        }
        // Created before any sealed value refers to them; durable at the next flush.
        let keys = candidates.iter().map(|c| self.vault.get_or_create(c)).collect::<Result<Vec<_>, _>>()?;
        let mut serial = self.serialise_writes(&candidates);
        let mut prepared = Vec::with_capacity(items.len());
        for ((item, candidate), key) in items.iter().zip(candidates).zip(keys) {
            let named: Vec<Link> = item.identifiers.iter().map(|(_, l)| *l).collect();
            let (consent, restricted) = self.holding_of(&candidate, &named, now)?;
            let events = (0..1 + consent.len() + usize::from(restricted))
                .map(|_| self.next_id())
                .collect::<Result<Vec<_>, _>>()?;
            prepared.push(Prepared { candidate, key, named, consent, restricted, events });
        }
        let audited = self.audited(now)?;
        let trees =
            (&self.meta, &self.subjects, &self.links, &self.events, &self.event_index, &self.held, &self.idempotency);
        let result = trees.transaction(|(meta, subjects, links, events, event_index, held, replays)| {
            let trees = Trees { meta, subjects, links, held, replays };
            let mut applied = Vec::with_capacity(items.len());
            for (item, prepared) in items.iter().zip(&prepared) {
                applied.push(apply(&trees, item, prepared, now)?);
            }
            // Facts borrow what each item added: collected first, then announced and audited.
            let mut outcomes: Vec<Result<Option<Registered>, StoreError>> = Vec::with_capacity(items.len());
            let mut written = Vec::with_capacity(items.len());
            for ((item, prepared), applied) in items.iter().zip(&prepared).zip(applied) {
                match applied {
                    Ok(applied) => {
                        written.push((outcomes.len(), item, prepared, applied));
                        outcomes.push(Ok(None));
                    }
                    Err(e) => outcomes.push(Err(e)),
                }
            }
            let mut recorded = Vec::with_capacity(written.len());
            for (position, item, prepared, applied) in &written {
                let fact = Recorded::Registration {
                    subject: applied.subject,
                    jurisdiction: item.jurisdiction,
                    identifiers: item.identifiers.len(),
                    added: &applied.added,
                    // (Nothing for a subject created here, or for no new link: `holding_of`
                    // read none.)
                    holding: Holding { consent: &prepared.consent, restricted: prepared.restricted },
                };
                let mut last_event = None;
                // (A registration retires no subject: nothing dropped.)
                for event in or_abort(number_events(&[fact], now, &prepared.events, &Default::default()))? {
                    put_event(events, event_index, &event)?;
                    last_event = Some(event.sequence);
                }
                let registered = Registered {
                    subject: applied.subject,
                    links: prepared.named.clone(),
                    created: applied.created,
                    event: last_event,
                };
                let subject = applied.subject;
                record_replay(replays, item.idempotency, Some((&subject, &prepared.key)), &(subject, &registered))?;
                recorded.push(fact);
                outcomes[*position] = Ok(Some(registered));
            }
            audited.append(&recorded)?;
            Ok(outcomes)
        });
        let outcomes: RegisteredEach = flatten(result)?
            .into_iter()
            .map(|outcome| outcome?.ok_or_else(|| StoreError::Backend("registration outcome lost".into())))
            .collect();
        audited.commit();
        for registered in outcomes.iter().flatten() {
            serial.touch(registered.subject);
        }
        Ok(outcomes)
    }
}

/// Inside the transaction: checks one item against what is stored (and what the items before it
/// wrote), then writes it. `Ok(Err(_))`: the item is refused and nothing of it written.
fn apply(
    trees: &Trees<'_>,
    item: &Registering<'_>,
    prepared: &Prepared,
    now: i64,
) -> TxResult<Result<Applied, StoreError>> {
    let Trees { meta, subjects, links, held, replays } = *trees;
    match check_replay(replays, item.idempotency) {
        Ok(()) => {}
        Err(ConflictableTransactionError::Abort(e)) => return Ok(Err(e)),
        Err(other) => return Err(other),
    }
    let mut existing: Option<SubjectId> = None;
    let mut free = Vec::new();
    for (_, link) in item.identifiers {
        match live_subject(links, link)? {
            Some(id) => match existing {
                Some(other) if other != id => return Ok(Err(StoreError::Conflict)),
                _ => existing = Some(id),
            },
            None => free.push(link),
        }
    }
    let subject = existing.unwrap_or(item.new_subject);
    if subject != prepared.candidate {
        // A concurrent write moved the links since the candidate was picked.
        return Ok(Err(StoreError::Retry));
    }
    let (mut entry, mut record, created) = match meta.get(subject.as_bytes())? {
        Some(bytes) => {
            let entry: MetaEntry = or_abort(decode(&bytes))?;
            if &entry.meta.jurisdiction != item.jurisdiction {
                return Ok(Err(StoreError::JurisdictionMismatch));
            }
            let record: SubjectRecord = match subjects.get(subject.as_bytes())? {
                Some(sealed) => or_abort(open(&prepared.key, b"subjects", subject.as_bytes(), &sealed))?,
                None => SubjectRecord::default(),
            };
            (entry, record, false)
        }
        None => {
            let meta = SubjectMeta { jurisdiction: item.jurisdiction.clone(), created_at: now, restricted: false };
            (MetaEntry { meta, links: Vec::new() }, SubjectRecord::default(), true)
        }
    };
    // A link no subject holds may become live only with this region's claim. Free now but not
    // claimed by this write: it was held when the write looked, and a concurrent erasure or
    // rectification freed it. Start over.
    let mut claims = Vec::with_capacity(free.len());
    for link in free {
        match item.claimed.iter().find(|c| c.link == *link) {
            Some(claim) => claims.push(claim),
            None => return Ok(Err(StoreError::Retry)),
        }
    }
    // Checked: from here on the item is written.
    for claim in claims {
        hold(held, claim)?;
    }
    let mut added = Vec::new();
    for (identifier, link) in item.identifiers {
        if !record.identifiers.contains(identifier) {
            record.identifiers.push(identifier.clone());
        }
        if !entry.links.contains(link) {
            entry.links.push(*link);
            added.push(*link);
            if !created {
                record.added_at.insert(*link, now);
            }
        }
        links.insert(&link.as_bytes()[..], &subject.as_bytes()[..])?;
    }
    subjects
        .insert(&subject.as_bytes()[..], or_abort(seal(&prepared.key, b"subjects", subject.as_bytes(), &record))?)?;
    meta.insert(&subject.as_bytes()[..], or_abort(encode(&entry))?)?;
    Ok(Ok(Applied { subject, created, added }))
}
