//! The embedded default: sled, one database per node, plus the key vault beside it.
//!
//! Trees: `meta` (subject id → jurisdiction, links, flags; no personal data), `subjects`
//! (subject id → sealed identifiers and profile), `links` (link → subject id), `consent`
//! (subject id ‖ sequence → sealed ledger entry), `current` (subject id ‖ purpose ‖ channel →
//! sealed record in force), `interactions` and `rights` (subject id ‖ sequence → sealed
//! interaction / rights request) and `events` (sequence → pseudonymous change event). Sealed values are
//! AES-256-GCM under the subject's key from `vault`, with the tree, subject and key as associated
//! data. Keys use vocabulary names, not enum indices, so the format survives reordering.

use std::path::Path;

use domicile_types::{Channel, Jurisdiction, Link, NormalizedIdentifier, Purpose, SUBJECT_ID_LEN, SubjectId};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::vault::{KeyVault, SubjectKey};
use super::{
    Change, ChangeEvent, ConsentRecord, CurrentConsent, Erased, Interaction, Merged, NewConsent, NewInteraction,
    Rectification, Rectified, Registered, RightsRequestRecord, Store, StoreError, SubjectMeta, SubjectRecord,
};

#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    vault: KeyVault,
    meta: sled::Tree,
    subjects: sled::Tree,
    links: sled::Tree,
    consent: sled::Tree,
    current: sled::Tree,
    interactions: sled::Tree,
    rights: sled::Tree,
    events: sled::Tree,
    /// Serialises event allocation and insertion, so events appear in sequence order and a
    /// watcher that resumes after N can never miss a smaller sequence committed later.
    write_lock: std::sync::Mutex<()>,
    /// Decision inputs already read (see [`ReadCache`]).
    cache: ReadCache,
}

/// Subjects whose decision inputs are kept in memory before the cache starts over.
const CACHED_SUBJECTS: usize = 1 << 20;

/// What every decision reads, kept in memory so a decision costs no storage read once a subject
/// has been decided for: its [`SubjectMeta`] and, per purpose × channel, the consent in force
/// (decrypted; `None` when there is none).
///
/// Never stale, by construction: every write takes the write lock through [`WriteGuard`], which
/// on release (after the write is in sled) removes the subjects it wrote and bumps the epoch of
/// their shards. A read that missed notes its subject's shard epoch before reading sled and fills
/// the cache only if that epoch is unchanged when it takes the shard's lock, so a value read
/// before a concurrent write can never land after that write's removal. Erasure removes the
/// decrypted values with the subject.
///
/// Sharded by subject so that concurrent decisions (two node threads deciding batches, say) do
/// not queue on one lock: with a single lock the lookup was a fifth of a node's CPU under batch
/// load.
#[derive(Debug)]
struct ReadCache {
    shards: Box<[std::sync::Mutex<CacheInner>]>,
}

/// Shards of [`ReadCache`] (a power of two).
const CACHE_SHARDS: usize = 64;

#[derive(Debug, Default)]
struct CacheInner {
    epoch: u64,
    subjects: hashbrown::HashMap<SubjectId, Cached>,
}

#[derive(Debug, Default)]
struct Cached {
    meta: Option<SubjectMeta>,
    current: Vec<((Purpose, Channel), Option<CurrentConsent>)>,
}

impl Cached {
    /// The consent in force for one purpose × channel, if it was read before (`Some(None)`:
    /// read, and there is none).
    fn current(&self, cell: (Purpose, Channel)) -> Option<Option<CurrentConsent>> {
        self.current.iter().find(|(k, _)| *k == cell).map(|(_, v)| v.clone())
    }
}

impl Default for ReadCache {
    fn default() -> Self {
        Self { shards: (0..CACHE_SHARDS).map(|_| std::sync::Mutex::default()).collect() }
    }
}

impl ReadCache {
    fn shard(&self, id: &SubjectId) -> std::sync::MutexGuard<'_, CacheInner> {
        // Mixed, so ids that differ only in some bytes still spread over the shards.
        let x = u128::from_le_bytes(*id.as_bytes());
        let mixed = ((x as u64) ^ ((x >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let index = (mixed >> (64 - CACHE_SHARDS.trailing_zeros())) as usize;
        let shard = &self.shards[index % CACHE_SHARDS];
        shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached value, or the epoch to fill under.
    fn get<T>(&self, id: &SubjectId, read: impl FnOnce(&Cached) -> Option<T>) -> Result<T, u64> {
        let inner = self.shard(id);
        inner.subjects.get(id).and_then(read).ok_or(inner.epoch)
    }

    /// Stores a value read from sled at `epoch`, unless a write has happened since.
    fn fill(&self, id: &SubjectId, epoch: u64, write: impl FnOnce(&mut Cached)) {
        let mut inner = self.shard(id);
        if inner.epoch != epoch {
            return;
        }
        if inner.subjects.len() >= CACHED_SUBJECTS / CACHE_SHARDS && !inner.subjects.contains_key(id) {
            inner.subjects.clear();
        }
        write(inner.subjects.entry(*id).or_default());
    }

    fn invalidate(&self, ids: &[SubjectId]) {
        for id in ids {
            let mut inner = self.shard(id);
            inner.epoch += 1;
            inner.subjects.remove(id);
        }
    }
}

/// The write lock, held for one write; releasing it invalidates the cached inputs of the subjects
/// the write touched (see [`ReadCache`]).
struct WriteGuard<'a> {
    _lock: std::sync::MutexGuard<'a, ()>,
    cache: &'a ReadCache,
    touched: Vec<SubjectId>,
}

impl WriteGuard<'_> {
    /// Adds a subject found during the write.
    fn touch(&mut self, id: SubjectId) {
        self.touched.push(id);
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.cache.invalidate(&self.touched);
    }
}

/// Stored beside the sealed record: what routing, decisions and watchers need.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct MetaEntry {
    #[serde(flatten)]
    meta: SubjectMeta,
    links: Vec<Link>,
}

/// One entry moved between subjects: old key, new key, value sealed for the new subject.
type Move = (sled::IVec, Vec<u8>, Vec<u8>);

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn abort<T>(e: StoreError) -> Result<T, ConflictableTransactionError<StoreError>> {
    Err(ConflictableTransactionError::Abort(e))
}

fn flatten<T>(result: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    result.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    })
}

/// Key of a per-subject log entry (consent ledger, interactions, rights requests): sorting by key
/// sorts by subject, then recording order.
fn consent_key(subject: &SubjectId, sequence: u64) -> [u8; SUBJECT_ID_LEN + 8] {
    let mut key = [0u8; SUBJECT_ID_LEN + 8];
    key[..SUBJECT_ID_LEN].copy_from_slice(subject.as_bytes());
    key[SUBJECT_ID_LEN..].copy_from_slice(&sequence.to_be_bytes());
    key
}

fn current_key(subject: &SubjectId, purpose: Purpose, channel: Channel) -> Vec<u8> {
    let mut key = Vec::with_capacity(SUBJECT_ID_LEN + 32);
    key.extend_from_slice(subject.as_bytes());
    key.extend_from_slice(purpose.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(channel.as_str().as_bytes());
    key
}

/// Associated data binding a sealed value to its tree and key.
fn context(tree: &[u8], key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(tree.len() + 1 + key.len());
    out.extend_from_slice(tree);
    out.push(0);
    out.extend_from_slice(key);
    out
}

fn seal<T: serde::Serialize>(key: &SubjectKey, tree: &[u8], db_key: &[u8], value: &T) -> Result<Vec<u8>, StoreError> {
    key.seal(&context(tree, db_key), &encode(value)?)
}

fn open<T: serde::de::DeserializeOwned>(
    key: &SubjectKey,
    tree: &[u8],
    db_key: &[u8],
    sealed: &[u8],
) -> Result<T, StoreError> {
    decode(&key.open(&context(tree, db_key), sealed)?)
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let db = sled::Config::new().path(dir.join("db")).open().map_err(backend)?;
        Ok(Self {
            vault: KeyVault::open(dir)?,
            meta: db.open_tree("meta").map_err(backend)?,
            subjects: db.open_tree("subjects").map_err(backend)?,
            links: db.open_tree("links").map_err(backend)?,
            consent: db.open_tree("consent").map_err(backend)?,
            current: db.open_tree("current").map_err(backend)?,
            interactions: db.open_tree("interactions").map_err(backend)?,
            rights: db.open_tree("rights").map_err(backend)?,
            events: db.open_tree("events").map_err(backend)?,
            write_lock: std::sync::Mutex::new(()),
            cache: ReadCache::default(),
            db,
        })
    }

    fn meta_entry(&self, id: &SubjectId) -> Result<Option<MetaEntry>, StoreError> {
        self.meta_as(id)
    }

    /// The subject's stored metadata decoded as `T` (`MetaEntry`, or only its `SubjectMeta`).
    fn meta_as<T: serde::de::DeserializeOwned>(&self, id: &SubjectId) -> Result<Option<T>, StoreError> {
        match self.meta.get(id.as_bytes()).map_err(backend)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }

    fn key(&self, id: &SubjectId) -> Result<SubjectKey, StoreError> {
        self.vault.get(id)?.ok_or(StoreError::NotFound)
    }

    /// Takes the write lock for a write to `subjects` (their cached inputs go when it is released).
    fn serialise_writes(&self, subjects: &[SubjectId]) -> WriteGuard<'_> {
        WriteGuard {
            _lock: self.write_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
            cache: &self.cache,
            touched: subjects.to_vec(),
        }
    }

    fn event_bytes(
        &self,
        subject: SubjectId,
        links: Vec<Link>,
        change: Change,
        at: i64,
    ) -> Result<(u64, Vec<u8>), StoreError> {
        let sequence = self.db.generate_id().map_err(backend)?;
        let event = ChangeEvent { sequence, at, subject, links, change };
        Ok((sequence, encode(&event)?))
    }

    fn prefix_keys(tree: &sled::Tree, subject: &SubjectId) -> Result<Vec<sled::IVec>, StoreError> {
        tree.scan_prefix(subject.as_bytes()).keys().collect::<Result<_, _>>().map_err(backend)
    }

    /// Opens every sealed entry of a per-subject log, in key order.
    fn open_log<T: serde::de::DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        name: &[u8],
        subject: &SubjectId,
    ) -> Result<Vec<T>, StoreError> {
        let key = self.key(subject)?;
        tree.scan_prefix(subject.as_bytes())
            .map(|item| {
                let (k, value) = item.map_err(backend)?;
                open(&key, name, &k, &value)
            })
            .collect()
    }

    /// Re-seals every entry of `from`'s log in `tree` under `into`'s key, keeping the sequence
    /// part of each key. Returns (old key, new key, new sealed value) triples.
    fn reseal_log(
        tree: &sled::Tree,
        name: &[u8],
        from: (&SubjectId, &SubjectKey),
        into: (&SubjectId, &SubjectKey),
    ) -> Result<Vec<Move>, StoreError> {
        tree.scan_prefix(from.0.as_bytes())
            .map(|item| {
                let (old, value) = item.map_err(backend)?;
                let plain = from.1.open(&context(name, &old), &value)?;
                let mut new = Vec::with_capacity(old.len());
                new.extend_from_slice(into.0.as_bytes());
                new.extend_from_slice(&old[SUBJECT_ID_LEN..]);
                let sealed = into.1.seal(&context(name, &new), &plain)?;
                Ok((old, new, sealed))
            })
            .collect()
    }

    /// Raw key bytes of a subject, for tests that prove erasure by searching the disk.
    #[cfg(test)]
    pub(crate) fn raw_key(&self, id: &SubjectId) -> Option<[u8; 32]> {
        self.vault.raw_key(id)
    }
}

impl Store for SledStore {
    fn register(
        &self,
        jurisdiction: &Jurisdiction,
        identifiers: &[(NormalizedIdentifier, Link)],
        new_subject: SubjectId,
        now: i64,
    ) -> Result<Registered, StoreError> {
        // Find the existing subject (outside the transaction only to pick the key; the
        // transaction re-checks every link).
        let mut candidate = new_subject;
        for (_, link) in identifiers {
            if let Some(id) = self.subject_by_link(link)? {
                candidate = id;
                break;
            }
        }
        // Created before any sealed value refers to it; durable at the next flush.
        let key = self.vault.get_or_create(&candidate)?;
        let mut serial = self.serialise_writes(&[candidate]);
        let event_seq = self.db.generate_id().map_err(backend)?;
        let result =
            (&self.meta, &self.subjects, &self.links, &self.events).transaction(|(meta, subjects, links, events)| {
                let mut existing: Option<SubjectId> = None;
                for (_, link) in identifiers {
                    if let Some(value) = links.get(link.as_bytes())? {
                        let Ok(id) = SubjectId::from_slice(&value) else {
                            return abort(StoreError::Corrupt("link entry".into()));
                        };
                        match existing {
                            Some(other) if other != id => return abort(StoreError::Conflict),
                            _ => existing = Some(id),
                        }
                    }
                }
                let subject = existing.unwrap_or(new_subject);
                if subject != candidate {
                    // A concurrent registration moved the links; the caller retries.
                    return abort(StoreError::Conflict);
                }
                let (mut entry, mut record, created) = match meta.get(subject.as_bytes())? {
                    Some(bytes) => {
                        let entry: MetaEntry = match decode(&bytes) {
                            Ok(e) => e,
                            Err(e) => return abort(e),
                        };
                        if &entry.meta.jurisdiction != jurisdiction {
                            return abort(StoreError::JurisdictionMismatch);
                        }
                        let record: SubjectRecord = match subjects.get(subject.as_bytes())? {
                            Some(sealed) => match open(&key, b"subjects", subject.as_bytes(), &sealed) {
                                Ok(r) => r,
                                Err(e) => return abort(e),
                            },
                            None => SubjectRecord::default(),
                        };
                        (entry, record, false)
                    }
                    None => {
                        let meta =
                            SubjectMeta { jurisdiction: jurisdiction.clone(), created_at: now, restricted: false };
                        (MetaEntry { meta, links: Vec::new() }, SubjectRecord::default(), true)
                    }
                };
                let mut added = Vec::new();
                for (identifier, link) in identifiers {
                    if !record.identifiers.contains(identifier) {
                        record.identifiers.push(identifier.clone());
                    }
                    if !entry.links.contains(link) {
                        entry.links.push(*link);
                        added.push(*link);
                    }
                    links.insert(&link.as_bytes()[..], &subject.as_bytes()[..])?;
                }
                let sealed = match seal(&key, b"subjects", subject.as_bytes(), &record) {
                    Ok(s) => s,
                    Err(e) => return abort(e),
                };
                subjects.insert(&subject.as_bytes()[..], sealed)?;
                let meta_bytes = match encode(&entry) {
                    Ok(b) => b,
                    Err(e) => return abort(e),
                };
                meta.insert(&subject.as_bytes()[..], meta_bytes)?;
                let added_any = !added.is_empty();
                if added_any {
                    let event =
                        ChangeEvent { sequence: event_seq, at: now, subject, links: added, change: Change::Registered };
                    let bytes = match encode(&event) {
                        Ok(b) => b,
                        Err(e) => return abort(e),
                    };
                    events.insert(&event_seq.to_be_bytes()[..], bytes)?;
                }
                Ok(Registered {
                    subject,
                    links: identifiers.iter().map(|(_, l)| *l).collect(),
                    created,
                    event: added_any.then_some(event_seq),
                })
            });
        let registered = flatten(result)?;
        serial.touch(registered.subject);
        Ok(registered)
    }

    fn subject_by_link(&self, link: &Link) -> Result<Option<SubjectId>, StoreError> {
        match self.links.get(link.as_bytes()).map_err(backend)? {
            None => Ok(None),
            Some(v) => SubjectId::from_slice(&v).map(Some).map_err(|_| StoreError::Corrupt("link entry".into())),
        }
    }

    fn subject_meta(&self, id: &SubjectId) -> Result<Option<SubjectMeta>, StoreError> {
        // The hot path of every decision: decode the flattened `MetaEntry` as `SubjectMeta`
        // directly (unknown members such as `links` are skipped, not built).
        let epoch = match self.cache.get(id, |c| c.meta.clone()) {
            Ok(meta) => return Ok(Some(meta)),
            Err(epoch) => epoch,
        };
        let meta: Option<SubjectMeta> = self.meta_as(id)?;
        if let Some(meta) = &meta {
            self.cache.fill(id, epoch, |c| c.meta = Some(meta.clone()));
        }
        Ok(meta)
    }

    fn subject_record(&self, id: &SubjectId) -> Result<Option<SubjectRecord>, StoreError> {
        let Some(key) = self.vault.get(id)? else { return Ok(None) };
        match self.subjects.get(id.as_bytes()).map_err(backend)? {
            None => Ok(None),
            Some(sealed) => open(&key, b"subjects", id.as_bytes(), &sealed).map(Some),
        }
    }

    fn append_consent(&self, subject: &SubjectId, consent: NewConsent) -> Result<(ConsentRecord, u64), StoreError> {
        let key = self.key(subject)?;
        let entry = self.meta_entry(subject)?.ok_or(StoreError::NotFound)?;
        let _serial = self.serialise_writes(&[*subject]);
        let sequence = self.db.generate_id().map_err(backend)?;
        let record = ConsentRecord {
            sequence,
            purpose: consent.purpose,
            channels: consent.channels,
            state: consent.state,
            captured_at: consent.captured_at,
            recorded_at: consent.recorded_at,
            expires_at: consent.expires_at,
            evidence: consent.evidence,
        };
        let ledger_key = consent_key(subject, sequence);
        let sealed_entry = seal(&key, b"consent", &ledger_key, &record)?;
        let candidate = CurrentConsent {
            sequence,
            state: record.state,
            captured_at: record.captured_at,
            expires_at: record.expires_at,
            double_opt_in_confirmed: record.evidence.double_opt_in_confirmed,
        };
        let mut sealed_current = Vec::with_capacity(record.channels.len());
        for channel in &record.channels {
            let k = current_key(subject, record.purpose, *channel);
            let sealed = seal(&key, b"current", &k, &candidate)?;
            sealed_current.push((k, sealed));
        }
        let (event_seq, event) = self.event_bytes(
            *subject,
            entry.links,
            Change::Consent { purpose: record.purpose, channels: record.channels.clone(), state: record.state },
            record.recorded_at,
        )?;
        let result =
            (&self.meta, &self.consent, &self.current, &self.events).transaction(|(meta, ledger, current, events)| {
                // A merge or erasure that committed since the checks above took the subject away;
                // a record written now would be sealed under a destroyed key.
                if meta.get(subject.as_bytes())?.is_none() {
                    return abort(StoreError::NotFound);
                }
                ledger.insert(&ledger_key[..], sealed_entry.as_slice())?;
                for (k, sealed) in &sealed_current {
                    let replace = match current.get(k)? {
                        None => true,
                        Some(bytes) => match open::<CurrentConsent>(&key, b"current", k, &bytes) {
                            Ok(existing) => candidate.supersedes(&existing),
                            Err(e) => return abort(e),
                        },
                    };
                    if replace {
                        current.insert(k.as_slice(), sealed.as_slice())?;
                    }
                }
                events.insert(&event_seq.to_be_bytes()[..], event.as_slice())?;
                Ok(())
            });
        flatten(result)?;
        Ok((record, event_seq))
    }

    fn current_consent(
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

    fn decision_inputs(
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
        let Some(meta) = self.subject_meta(subject)? else { return Ok(None) };
        Ok(Some((meta, self.current_consent(subject, purpose, channel)?)))
    }

    fn consent_history(&self, subject: &SubjectId) -> Result<Vec<ConsentRecord>, StoreError> {
        self.open_log(&self.consent, b"consent", subject)
    }

    fn erase(&self, subject: &SubjectId, now: i64) -> Result<Erased, StoreError> {
        // Held throughout, so no write for this subject lands between the scan and the removal.
        let _serial = self.serialise_writes(&[*subject]);
        let entry = self.meta_entry(subject)?.ok_or(StoreError::NotFound)?;
        // Crypto-shredding first: from here on nothing sealed for this subject can be read, even
        // if the rest of the clean-up were interrupted.
        self.vault.destroy(subject)?;
        let ledger_keys = Self::prefix_keys(&self.consent, subject)?;
        let current_keys = Self::prefix_keys(&self.current, subject)?;
        let interaction_keys = Self::prefix_keys(&self.interactions, subject)?;
        let rights_keys = Self::prefix_keys(&self.rights, subject)?;
        let (event_seq, event) = self.event_bytes(*subject, entry.links.clone(), Change::Erased, now)?;
        let result = (
            &self.meta,
            &self.subjects,
            &self.links,
            &self.consent,
            &self.current,
            &self.interactions,
            &self.rights,
            &self.events,
        )
            .transaction(|(meta, subjects, links, ledger, current, interactions, rights, events)| {
                meta.remove(&subject.as_bytes()[..])?;
                subjects.remove(&subject.as_bytes()[..])?;
                for link in &entry.links {
                    links.remove(&link.as_bytes()[..])?;
                }
                for (tree, keys) in [
                    (ledger, &ledger_keys),
                    (current, &current_keys),
                    (interactions, &interaction_keys),
                    (rights, &rights_keys),
                ] {
                    for k in keys {
                        tree.remove(k)?;
                    }
                }
                events.insert(&event_seq.to_be_bytes()[..], event.as_slice())?;
                Ok(())
            });
        flatten(result)?;
        Ok(Erased { links: entry.links, consent_records: ledger_keys.len(), event: event_seq })
    }

    fn merge(&self, into: &SubjectId, from: &SubjectId, now: i64) -> Result<Merged, StoreError> {
        if into == from {
            return Err(StoreError::Conflict);
        }
        // Held throughout: every writer takes this lock, so nothing is written to either subject
        // between reading their data and replacing it.
        let _serial = self.serialise_writes(&[*into, *from]);
        let mut into_entry = self.meta_entry(into)?.ok_or(StoreError::NotFound)?;
        let from_entry = self.meta_entry(from)?.ok_or(StoreError::NotFound)?;
        if into_entry.meta.jurisdiction != from_entry.meta.jurisdiction {
            return Err(StoreError::MergeJurisdictionMismatch);
        }
        let into_key = self.key(into)?;
        let from_key = self.key(from)?;

        let mut record = self.subject_record(into)?.unwrap_or_default();
        let from_record = self.subject_record(from)?.unwrap_or_default();
        for identifier in from_record.identifiers {
            if !record.identifiers.contains(&identifier) {
                record.identifiers.push(identifier);
            }
        }
        // The remaining subject's values win; fields only `from` had are kept.
        for (field, value) in from_record.profile {
            record.profile.entry(field).or_insert(value);
        }
        let moved_links = from_entry.links.clone();
        for link in &moved_links {
            if !into_entry.links.contains(link) {
                into_entry.links.push(*link);
            }
        }
        // Fail closed: a restriction on either half holds for the merged subject.
        into_entry.meta.restricted |= from_entry.meta.restricted;
        into_entry.meta.created_at = into_entry.meta.created_at.min(from_entry.meta.created_at);
        let sealed_record = seal(&into_key, b"subjects", into.as_bytes(), &record)?;
        let meta_bytes = encode(&into_entry)?;

        let ledger = Self::reseal_log(&self.consent, b"consent", (from, &from_key), (into, &into_key))?;
        let interactions = Self::reseal_log(&self.interactions, b"interactions", (from, &from_key), (into, &into_key))?;
        let rights = Self::reseal_log(&self.rights, b"rights", (from, &from_key), (into, &into_key))?;
        // The record in force per purpose × channel is the one that supersedes the other, so an
        // older grant of one half never overrides a withdrawal or denial of the other.
        let mut current_writes = Vec::new();
        let from_current = Self::prefix_keys(&self.current, from)?;
        for old in &from_current {
            let Some(bytes) = self.current.get(old).map_err(backend)? else { continue };
            let candidate: CurrentConsent = open(&from_key, b"current", old, &bytes)?;
            let mut new = Vec::with_capacity(old.len());
            new.extend_from_slice(into.as_bytes());
            new.extend_from_slice(&old[SUBJECT_ID_LEN..]);
            let replace = match self.current.get(&new).map_err(backend)? {
                None => true,
                Some(bytes) => candidate.supersedes(&open::<CurrentConsent>(&into_key, b"current", &new, &bytes)?),
            };
            if replace {
                let sealed = seal(&into_key, b"current", &new, &candidate)?;
                current_writes.push((new, sealed));
            }
        }
        let (erased_seq, erased_event) = self.event_bytes(*from, moved_links.clone(), Change::Erased, now)?;
        let (registered_seq, registered_event) =
            self.event_bytes(*into, moved_links.clone(), Change::Registered, now)?;
        let result = (
            &self.meta,
            &self.subjects,
            &self.links,
            &self.consent,
            &self.current,
            &self.interactions,
            &self.rights,
            &self.events,
        )
            .transaction(
                |(meta, subjects, links, ledger_tree, current, interaction_tree, rights_tree, events)| {
                    meta.insert(&into.as_bytes()[..], meta_bytes.as_slice())?;
                    meta.remove(&from.as_bytes()[..])?;
                    subjects.insert(&into.as_bytes()[..], sealed_record.as_slice())?;
                    subjects.remove(&from.as_bytes()[..])?;
                    for link in &moved_links {
                        links.insert(&link.as_bytes()[..], &into.as_bytes()[..])?;
                    }
                    for (tree, moves) in
                        [(ledger_tree, &ledger), (interaction_tree, &interactions), (rights_tree, &rights)]
                    {
                        for (old, new, sealed) in moves {
                            tree.remove(old)?;
                            tree.insert(new.as_slice(), sealed.as_slice())?;
                        }
                    }
                    for old in &from_current {
                        current.remove(old)?;
                    }
                    for (new, sealed) in &current_writes {
                        current.insert(new.as_slice(), sealed.as_slice())?;
                    }
                    events.insert(&erased_seq.to_be_bytes()[..], erased_event.as_slice())?;
                    events.insert(&registered_seq.to_be_bytes()[..], registered_event.as_slice())?;
                    Ok(())
                },
            );
        flatten(result)?;
        // The moved data must be durable before `from`'s key can go: destroyed first, a crash
        // could bring back the pre-merge state with `from`'s records sealed under no key.
        self.db.flush().map_err(backend)?;
        self.vault.destroy(from)?;
        Ok(Merged {
            links: moved_links,
            consent_records: ledger.len(),
            interactions: interactions.len(),
            event: registered_seq,
        })
    }

    fn rectify(&self, subject: &SubjectId, change: &Rectification, now: i64) -> Result<Rectified, StoreError> {
        let _serial = self.serialise_writes(&[*subject]);
        let mut entry = self.meta_entry(subject)?.ok_or(StoreError::NotFound)?;
        let key = self.key(subject)?;
        let mut record = self.subject_record(subject)?.unwrap_or_default();
        let mut removed = Vec::new();
        for (identifier, link) in &change.remove {
            let held = record.identifiers.contains(identifier) || entry.links.contains(link);
            if !held {
                return Err(StoreError::NotHeld);
            }
            record.identifiers.retain(|i| i != identifier);
            entry.links.retain(|l| l != link);
            if !removed.contains(link) {
                removed.push(*link);
            }
        }
        let mut added = Vec::new();
        for (identifier, link) in &change.add {
            match self.subject_by_link(link)? {
                Some(other) if other != *subject => return Err(StoreError::Conflict),
                _ => {}
            }
            if !record.identifiers.contains(identifier) {
                record.identifiers.push(identifier.clone());
            }
            if !entry.links.contains(link) {
                entry.links.push(*link);
                added.push(*link);
            }
        }
        for field in &change.remove_profile {
            record.profile.remove(field);
        }
        for (field, value) in &change.set_profile {
            record.profile.insert(field.clone(), value.clone());
        }
        let sealed = seal(&key, b"subjects", subject.as_bytes(), &record)?;
        let meta_bytes = encode(&entry)?;
        let mut events_out = Vec::new();
        if !removed.is_empty() {
            events_out.push(self.event_bytes(*subject, removed.clone(), Change::LinksRemoved, now)?);
        }
        if !added.is_empty() {
            events_out.push(self.event_bytes(*subject, added.clone(), Change::Registered, now)?);
        }
        let result =
            (&self.meta, &self.subjects, &self.links, &self.events).transaction(|(meta, subjects, links, events)| {
                for link in &removed {
                    // Only a link that still names this subject is dropped.
                    if links.get(link.as_bytes())?.as_deref() == Some(&subject.as_bytes()[..]) {
                        links.remove(&link.as_bytes()[..])?;
                    }
                }
                for link in &added {
                    if let Some(value) = links.get(link.as_bytes())?
                        && value.as_ref() != &subject.as_bytes()[..]
                    {
                        return abort(StoreError::Conflict);
                    }
                    links.insert(&link.as_bytes()[..], &subject.as_bytes()[..])?;
                }
                subjects.insert(&subject.as_bytes()[..], sealed.as_slice())?;
                meta.insert(&subject.as_bytes()[..], meta_bytes.as_slice())?;
                for (seq, bytes) in &events_out {
                    events.insert(&seq.to_be_bytes()[..], bytes.as_slice())?;
                }
                Ok(())
            });
        flatten(result)?;
        Ok(Rectified { added, removed, event: events_out.last().map(|(seq, _)| *seq) })
    }

    fn set_restricted(&self, subject: &SubjectId, restricted: bool) -> Result<(), StoreError> {
        let _serial = self.serialise_writes(&[*subject]);
        let mut entry = self.meta_entry(subject)?.ok_or(StoreError::NotFound)?;
        entry.meta.restricted = restricted;
        self.meta.insert(subject.as_bytes(), encode(&entry)?).map_err(backend)?;
        Ok(())
    }

    fn append_interaction(&self, subject: &SubjectId, interaction: NewInteraction) -> Result<Interaction, StoreError> {
        let key = self.key(subject)?;
        let _serial = self.serialise_writes(&[*subject]);
        let sequence = self.db.generate_id().map_err(backend)?;
        let stored = Interaction {
            sequence,
            channel: interaction.channel,
            occurred_at: interaction.occurred_at,
            recorded_at: interaction.recorded_at,
            kind: interaction.kind,
            intent: interaction.intent,
            summary: interaction.summary,
            reference: interaction.reference,
            open: interaction.open,
        };
        let k = consent_key(subject, sequence);
        let sealed = seal(&key, b"interactions", &k, &stored)?;
        let result = (&self.meta, &self.interactions).transaction(|(meta, interactions)| {
            if meta.get(subject.as_bytes())?.is_none() {
                return abort(StoreError::NotFound);
            }
            interactions.insert(&k[..], sealed.as_slice())?;
            Ok(())
        });
        flatten(result)?;
        Ok(stored)
    }

    fn interactions(&self, subject: &SubjectId) -> Result<Vec<Interaction>, StoreError> {
        self.open_log(&self.interactions, b"interactions", subject)
    }

    fn append_rights_request(&self, subject: &SubjectId, request: &RightsRequestRecord) -> Result<(), StoreError> {
        let key = self.key(subject)?;
        let _serial = self.serialise_writes(&[*subject]);
        let sequence = self.db.generate_id().map_err(backend)?;
        let k = consent_key(subject, sequence);
        let sealed = seal(&key, b"rights", &k, request)?;
        let result = (&self.meta, &self.rights).transaction(|(meta, rights)| {
            if meta.get(subject.as_bytes())?.is_none() {
                return abort(StoreError::NotFound);
            }
            rights.insert(&k[..], sealed.as_slice())?;
            Ok(())
        });
        flatten(result)
    }

    fn rights_requests(&self, subject: &SubjectId) -> Result<Vec<RightsRequestRecord>, StoreError> {
        self.open_log(&self.rights, b"rights", subject)
    }

    fn links(
        &self,
        first_bytes: std::ops::RangeInclusive<u8>,
    ) -> Box<dyn Iterator<Item = Result<(Link, SubjectId), StoreError>> + Send> {
        let (first, last) = first_bytes.into_inner();
        if first > last {
            return Box::new(std::iter::empty());
        }
        // Keys are 16-byte links: [first] sorts before every link starting with `first`, and
        // [last + 1] after every link starting with `last`.
        let start = [first];
        let range = match last.checked_add(1) {
            Some(end) => self.links.range(start..[end]),
            None => self.links.range(start..),
        };
        Box::new(range.map(|item| {
            let (key, value) = item.map_err(backend)?;
            let link = Link::from_slice(&key).map_err(|_| StoreError::Corrupt("link key".into()))?;
            let subject = SubjectId::from_slice(&value).map_err(|_| StoreError::Corrupt("link entry".into()))?;
            Ok((link, subject))
        }))
    }

    fn events_after(&self, after: Option<u64>) -> Box<dyn Iterator<Item = Result<ChangeEvent, StoreError>> + Send> {
        let range = match after {
            None => self.events.iter(),
            Some(u64::MAX) => return Box::new(std::iter::empty()),
            Some(n) => self.events.range((n + 1).to_be_bytes()..),
        };
        Box::new(range.map(|item| {
            let (_, value) = item.map_err(backend)?;
            decode(&value)
        }))
    }

    fn last_event(&self) -> Result<Option<u64>, StoreError> {
        match self.events.last().map_err(backend)? {
            None => Ok(None),
            Some((k, _)) => {
                let bytes: [u8; 8] = k.as_ref().try_into().map_err(|_| StoreError::Corrupt("event key".into()))?;
                Ok(Some(u64::from_be_bytes(bytes)))
            }
        }
    }

    fn counts(&self) -> Result<(u64, u64), StoreError> {
        Ok((self.meta.len() as u64, self.links.len() as u64))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Keys first: a sealed record must never be durable without the key that opens it.
        self.vault.sync()?;
        self.db.flush_async().await.map(|_| ()).map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Evidence;
    use super::*;
    use domicile_types::{ConsentState, IdentifierKind, LinkKey};

    fn ident(kind: IdentifierKind, v: &str) -> (NormalizedIdentifier, Link) {
        let id = NormalizedIdentifier::normalize(kind, v).unwrap();
        let link = LinkKey::from_bytes(&[9; 32]).unwrap().link(&id);
        (id, link)
    }

    fn consent(state: ConsentState, captured_at: i64) -> NewConsent {
        NewConsent {
            purpose: Purpose::Marketing,
            channels: vec![Channel::Email],
            state,
            captured_at,
            recorded_at: captured_at,
            expires_at: None,
            evidence: Evidence::default(),
        }
    }

    fn flush(store: &SledStore) {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(store.flush()).unwrap();
    }

    fn subject(store: &SledStore, email: &str) -> SubjectId {
        let de = Jurisdiction::parse("DE").unwrap();
        let fresh = SubjectId::from_bytes(*b"0123456789abcdef");
        let fresh = SubjectId::from_bytes(fresh.as_bytes().map(|b| b ^ email.len() as u8));
        store.register(&de, &[ident(IdentifierKind::Email, email)], fresh, 0).unwrap().subject
    }

    #[test]
    fn link_ranges_partition_the_links_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let de = Jurisdiction::parse("DE").unwrap();
        for s in 0..300u32 {
            let mut raw = [0u8; 16];
            raw[..4].copy_from_slice(&s.to_be_bytes());
            let id = ident(IdentifierKind::CrmAccount, &format!("acct-{s}"));
            store.register(&de, &[id], SubjectId::from_bytes(raw), 0).unwrap();
        }
        let scan = |r: std::ops::RangeInclusive<u8>| store.links(r).map(|item| item.unwrap().0).collect::<Vec<_>>();
        let all = scan(0..=255);
        assert_eq!(all.len(), 300);
        assert!(all.windows(2).all(|w| w[0] < w[1]), "in link order");
        // Parts split at a byte boundary together give every link exactly once.
        for split in [0u8, 1, 0x7f, 0x80, 0xfe] {
            let (low, high) = (scan(0..=split), scan(split + 1..=255));
            assert!(low.iter().all(|l| l.as_bytes()[0] <= split));
            assert!(high.iter().all(|l| l.as_bytes()[0] > split));
            assert_eq!([low, high].concat(), all, "split after {split:#x}");
        }
        assert_eq!(scan(0xff..=0xff), all.iter().copied().filter(|l| l.as_bytes()[0] == 0xff).collect::<Vec<_>>());
        #[allow(clippy::reversed_empty_ranges, reason = "an empty range yields nothing")]
        let empty = scan(9..=8);
        assert!(empty.is_empty());
    }

    #[test]
    fn register_merges_known_identifiers_and_refuses_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let de = Jurisdiction::parse("DE").unwrap();
        let email = ident(IdentifierKind::Email, "a@example.de");
        let phone = ident(IdentifierKind::Phone, "+4915112345678");
        let first = store.register(&de, std::slice::from_ref(&email), SubjectId::from_bytes([1; 16]), 0).unwrap();
        assert!(first.created);
        let again = store.register(&de, &[email.clone(), phone.clone()], SubjectId::from_bytes([2; 16]), 0).unwrap();
        assert!(!again.created);
        assert_eq!(again.subject, first.subject);
        assert_eq!(store.subject_by_link(&phone.1).unwrap(), Some(first.subject));
        let record = store.subject_record(&first.subject).unwrap().unwrap();
        assert_eq!(record.identifiers.len(), 2);

        let other = ident(IdentifierKind::Email, "b@example.de");
        store.register(&de, std::slice::from_ref(&other), SubjectId::from_bytes([3; 16]), 0).unwrap();
        assert!(matches!(
            store.register(&de, &[email.clone(), other], SubjectId::from_bytes([4; 16]), 0),
            Err(StoreError::Conflict)
        ));
        let fr = Jurisdiction::parse("FR").unwrap();
        assert!(matches!(
            store.register(&fr, &[email], SubjectId::from_bytes([5; 16]), 0),
            Err(StoreError::JurisdictionMismatch)
        ));
    }

    /// Reads that the cache serves must change with every kind of write (invariant 4: a
    /// withdrawal, restriction, erasure or merge is seen by the very next decision).
    #[test]
    fn cached_decision_inputs_follow_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let state =
            |s: &SubjectId| store.current_consent(s, Purpose::Marketing, Channel::Email).unwrap().map(|c| c.state);
        let a = subject(&store, "ca@example.de");
        // (The helper derives ids from the e-mail's length, hence the different lengths.)
        // Cached as "none", then as granted: each read twice so the second is served from memory.
        assert_eq!(state(&a), None);
        assert_eq!(state(&a), None);
        store.append_consent(&a, consent(ConsentState::Granted, 100)).unwrap();
        assert_eq!(state(&a), Some(ConsentState::Granted));
        assert_eq!(state(&a), Some(ConsentState::Granted));
        // The decision path reads both at once (one cache lookup): same answers.
        let inputs = |s: &SubjectId| {
            store
                .decision_inputs(s, Purpose::Marketing, Channel::Email)
                .unwrap()
                .map(|(meta, current)| (meta.restricted, current.map(|c| c.state)))
        };
        assert_eq!(inputs(&a), Some((false, Some(ConsentState::Granted))));
        store.append_consent(&a, consent(ConsentState::Withdrawn, 200)).unwrap();
        assert_eq!(state(&a), Some(ConsentState::Withdrawn));
        assert_eq!(inputs(&a), Some((false, Some(ConsentState::Withdrawn))));

        assert!(!store.subject_meta(&a).unwrap().unwrap().restricted);
        store.set_restricted(&a, true).unwrap();
        assert!(store.subject_meta(&a).unwrap().unwrap().restricted);
        assert_eq!(inputs(&a), Some((true, Some(ConsentState::Withdrawn))));

        // Merge: `into` sees the merged records; `from` is gone.
        let b = subject(&store, "cbb@example.de");
        store.append_consent(&b, consent(ConsentState::Granted, 300)).unwrap();
        let c = subject(&store, "cccc@example.de");
        assert_eq!(state(&c), None);
        assert_eq!(state(&b), Some(ConsentState::Granted));
        store.merge(&c, &b, 400).unwrap();
        assert_eq!(state(&c), Some(ConsentState::Granted));
        assert!(store.subject_meta(&b).unwrap().is_none());
        assert_eq!(state(&b), None);

        // Erasure: nothing decrypted survives in memory either.
        store.erase(&c, 500).unwrap();
        assert!(store.subject_meta(&c).unwrap().is_none());
        assert_eq!(inputs(&c), None);
        assert_eq!(state(&c), None);
        assert!(store.cache.shard(&c).subjects.get(&c).is_none());
    }

    /// A value read before a write must not be cached after that write's invalidation.
    #[test]
    fn a_read_racing_a_write_never_caches_the_old_value() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let s = subject(&store, "race@example.de");
        store.append_consent(&s, consent(ConsentState::Granted, 100)).unwrap();
        // A reader misses and notes the epoch, reads "granted" from sled …
        let epoch = store.cache.get(&s, |c| c.current.first().map(|(_, v)| v.clone())).unwrap_err();
        let stale = store.current.get(current_key(&s, Purpose::Marketing, Channel::Email)).unwrap();
        assert!(stale.is_some());
        // … a withdrawal commits and releases the write lock …
        store.append_consent(&s, consent(ConsentState::Withdrawn, 200)).unwrap();
        // … and the reader's late fill with the old value is dropped.
        let old = CurrentConsent {
            sequence: 1,
            state: ConsentState::Granted,
            captured_at: 100,
            expires_at: None,
            double_opt_in_confirmed: false,
        };
        store.cache.fill(&s, epoch, |c| c.current.push(((Purpose::Marketing, Channel::Email), Some(old))));
        let now = store.current_consent(&s, Purpose::Marketing, Channel::Email).unwrap().unwrap();
        assert_eq!(now.state, ConsentState::Withdrawn);
    }

    #[test]
    fn older_grant_never_overrides_newer_withdrawal() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let s = subject(&store, "w@example.de");
        store.append_consent(&s, consent(ConsentState::Granted, 100)).unwrap();
        store.append_consent(&s, consent(ConsentState::Withdrawn, 200)).unwrap();
        // A grant captured earlier but recorded later (e.g. a delayed batch) must not win.
        store.append_consent(&s, consent(ConsentState::Granted, 150)).unwrap();
        let current = store.current_consent(&s, Purpose::Marketing, Channel::Email).unwrap().unwrap();
        assert_eq!(current.state, ConsentState::Withdrawn);
        // Equal capture times: the restrictive record wins.
        store.append_consent(&s, consent(ConsentState::Granted, 200)).unwrap();
        let current = store.current_consent(&s, Purpose::Marketing, Channel::Email).unwrap().unwrap();
        assert_eq!(current.state, ConsentState::Withdrawn);
        assert_eq!(store.consent_history(&s).unwrap().len(), 4, "the ledger keeps every record");
        assert!(store.current_consent(&s, Purpose::Marketing, Channel::Sms).unwrap().is_none());
    }

    #[test]
    fn personal_data_is_never_plaintext_and_erasure_destroys_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let email = "erase.me.probe@example.de";
        let s = subject(&store, email);
        let keep = subject(&store, "keep.me@example.de");
        store.append_consent(&s, consent(ConsentState::Granted, 1)).unwrap();
        flush(&store);
        let key = store.raw_key(&s).unwrap();
        let scan = |needle: &[u8]| {
            walk(dir.path()).into_iter().any(|p| std::fs::read(p).unwrap().windows(needle.len()).any(|w| w == needle))
        };
        assert!(!scan(email.as_bytes()), "identifiers are encrypted at rest");
        assert!(scan(&key), "the key is on disk before erasure");

        let erased = store.erase(&s, 2).unwrap();
        flush(&store);
        assert_eq!(erased.links.len(), 1);
        assert!(!scan(&key), "no copy of the subject key survives anywhere in the data directory");
        assert!(store.subject_record(&s).unwrap().is_none());
        assert!(store.subject_meta(&s).unwrap().is_none());
        assert!(matches!(store.consent_history(&s), Err(StoreError::NotFound)));
        assert!(matches!(store.erase(&s, 3), Err(StoreError::NotFound)));
        assert!(store.subject_by_link(&erased.links[0]).unwrap().is_none());
        assert!(store.subject_record(&keep).unwrap().is_some(), "other subjects are untouched");
        let events: Vec<_> = store.events_after(None).map(Result::unwrap).collect();
        assert!(matches!(events.last().unwrap().change, Change::Erased));
    }

    #[test]
    fn events_are_ordered_and_resumable() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let s = subject(&store, "e@example.de");
        store.append_consent(&s, consent(ConsentState::Granted, 1)).unwrap();
        let (_, last) = store.append_consent(&s, consent(ConsentState::Withdrawn, 2)).unwrap();
        let everything: Vec<_> = store.events_after(None).map(Result::unwrap).collect();
        assert_eq!(everything.len(), 3, "registration and two consent changes");
        assert!(everything.windows(2).all(|w| w[0].sequence < w[1].sequence));
        assert_eq!(store.last_event().unwrap(), Some(last));
        let resumed: Vec<_> = store.events_after(Some(everything[0].sequence)).map(Result::unwrap).collect();
        assert_eq!(resumed, everything[1..]);
        assert!(store.events_after(Some(last)).next().is_none());
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s;
        {
            let store = SledStore::open(dir.path()).unwrap();
            s = subject(&store, "r@example.de");
            store.append_consent(&s, consent(ConsentState::Granted, 1)).unwrap();
            flush(&store);
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.consent_history(&s).unwrap().len(), 1);
        assert_eq!(store.subject_record(&s).unwrap().unwrap().identifiers.len(), 1);
        // The decision path's lean read sees what the full entry holds, restriction included.
        store.set_restricted(&s, true).unwrap();
        let meta = store.subject_meta(&s).unwrap().unwrap();
        assert!(meta.restricted);
        assert_eq!(Some(meta), store.meta_entry(&s).unwrap().map(|e| e.meta));
    }

    fn consent_on(state: ConsentState, captured_at: i64, channel: Channel) -> NewConsent {
        NewConsent { channels: vec![channel], ..consent(state, captured_at) }
    }

    fn interaction(summary: &str, occurred_at: i64) -> NewInteraction {
        NewInteraction {
            channel: Channel::Chat,
            occurred_at,
            recorded_at: occurred_at,
            kind: super::super::InteractionKind::Message,
            intent: "billing.dispute".into(),
            summary: summary.into(),
            reference: "T-1".into(),
            open: true,
        }
    }

    fn rights(kind: &str) -> RightsRequestRecord {
        RightsRequestRecord {
            request_id: "00".repeat(16),
            kind: kind.into(),
            received_at: 1,
            deadline_at: 2,
            status: "completed".into(),
            deadline_basis: "test".into(),
            completed_at: Some(1),
        }
    }

    #[test]
    fn merge_moves_everything_and_never_lets_an_older_grant_win() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let into = subject(&store, "into@example.de");
        let from = subject(&store, "from.person@example.de");
        // Email: `into` withdrew at 200, `from` holds an older grant (100) → withdrawn.
        store.append_consent(&into, consent(ConsentState::Withdrawn, 200)).unwrap();
        store.append_consent(&from, consent(ConsentState::Granted, 100)).unwrap();
        // SMS: `into` granted at 100, `from` withdrew later (300) → withdrawn.
        store.append_consent(&into, consent_on(ConsentState::Granted, 100, Channel::Sms)).unwrap();
        store.append_consent(&from, consent_on(ConsentState::Withdrawn, 300, Channel::Sms)).unwrap();
        // Post: only `from` has a record → it carries over.
        store.append_consent(&from, consent_on(ConsentState::Granted, 50, Channel::Post)).unwrap();
        store.append_interaction(&from, interaction("moved summary", 10)).unwrap();
        store.append_rights_request(&from, &rights("access")).unwrap();
        let from_links = store.meta_entry(&from).unwrap().unwrap().links;
        store.set_restricted(&from, true).unwrap();

        let merged = store.merge(&into, &from, 400).unwrap();
        flush(&store);
        assert_eq!(merged.links, from_links);
        assert_eq!((merged.consent_records, merged.interactions), (3, 1));
        let state = |channel| store.current_consent(&into, Purpose::Marketing, channel).unwrap().unwrap().state;
        assert_eq!(state(Channel::Email), ConsentState::Withdrawn, "an older grant never overrides a withdrawal");
        assert_eq!(state(Channel::Sms), ConsentState::Withdrawn, "a later withdrawal of `from` wins");
        assert_eq!(state(Channel::Post), ConsentState::Granted);
        let history = store.consent_history(&into).unwrap();
        assert_eq!(history.len(), 5);
        assert!(history.windows(2).all(|w| w[0].sequence < w[1].sequence), "ledger stays in recording order");
        assert_eq!(store.interactions(&into).unwrap()[0].summary, "moved summary");
        assert_eq!(store.rights_requests(&into).unwrap().len(), 1);
        let record = store.subject_record(&into).unwrap().unwrap();
        assert_eq!(record.identifiers.len(), 2);
        assert_eq!(store.subject_by_link(&from_links[0]).unwrap(), Some(into));
        assert!(store.subject_meta(&into).unwrap().unwrap().restricted, "a restriction of either half holds");
        // `from` is gone, its key destroyed.
        assert!(store.subject_meta(&from).unwrap().is_none());
        assert!(store.raw_key(&from).is_none());
        assert!(matches!(store.consent_history(&from), Err(StoreError::NotFound)));
        assert!(store.current.scan_prefix(from.as_bytes()).next().is_none());
        assert!(store.interactions.scan_prefix(from.as_bytes()).next().is_none());
        // Events: ERASED for `from`'s links, then REGISTERED for `into` with the same links.
        let events: Vec<_> = store.events_after(None).map(Result::unwrap).collect();
        let tail = &events[events.len() - 2..];
        assert_eq!((tail[0].subject, &tail[0].change, &tail[0].links), (from, &Change::Erased, &from_links));
        assert_eq!((tail[1].subject, &tail[1].change, &tail[1].links), (into, &Change::Registered, &from_links));
        assert_eq!(tail[1].sequence, merged.event);
        assert!(matches!(store.merge(&into, &from, 401), Err(StoreError::NotFound)));
        assert!(matches!(store.merge(&into, &into, 401), Err(StoreError::Conflict)));
        // Survives a reopen: everything moved was flushed.
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.consent_history(&into).unwrap().len(), 5);
    }

    #[test]
    fn merge_refuses_subjects_of_different_jurisdictions() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let de = subject(&store, "de@example.de");
        let fr = Jurisdiction::parse("FR").unwrap();
        let other = store
            .register(&fr, &[ident(IdentifierKind::Email, "fr@example.fr")], SubjectId::from_bytes([7; 16]), 0)
            .unwrap()
            .subject;
        assert!(matches!(store.merge(&de, &other, 1), Err(StoreError::MergeJurisdictionMismatch)));
        assert!(store.subject_meta(&other).unwrap().is_some(), "nothing changed");
    }

    #[test]
    fn rectify_relinks_identifiers_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let s = subject(&store, "old@example.de");
        let other = subject(&store, "someone.else@example.de");
        let old = ident(IdentifierKind::Email, "old@example.de");
        let new = ident(IdentifierKind::Email, "new@example.de");
        let phone = ident(IdentifierKind::Phone, "+4915112345678");
        let change = Rectification {
            add: vec![new.clone(), phone.clone()],
            remove: vec![old.clone()],
            set_profile: [("name".to_owned(), "Anna".to_owned())].into(),
            remove_profile: vec![],
        };
        let rectified = store.rectify(&s, &change, 5).unwrap();
        assert_eq!(rectified.added, vec![new.1, phone.1]);
        assert_eq!(rectified.removed, vec![old.1]);
        assert_eq!(store.subject_by_link(&old.1).unwrap(), None);
        assert_eq!(store.subject_by_link(&new.1).unwrap(), Some(s));
        let record = store.subject_record(&s).unwrap().unwrap();
        assert_eq!(record.identifiers, vec![new.0.clone(), phone.0.clone()]);
        assert_eq!(record.profile.get("name").map(String::as_str), Some("Anna"));
        let events: Vec<_> = store.events_after(None).map(Result::unwrap).collect();
        let tail = &events[events.len() - 2..];
        assert_eq!((&tail[0].change, &tail[0].links), (&Change::LinksRemoved, &vec![old.1]));
        assert_eq!((&tail[1].change, &tail[1].links), (&Change::Registered, &vec![new.1, phone.1]));

        // Another subject's identifier, or one the subject does not hold: refused, nothing changes.
        let theirs = ident(IdentifierKind::Email, "someone.else@example.de");
        let refused = Rectification { add: vec![theirs.clone()], remove: vec![phone.clone()], ..Default::default() };
        assert!(matches!(store.rectify(&s, &refused, 6), Err(StoreError::Conflict)));
        let not_held = Rectification { remove: vec![old.clone()], ..Default::default() };
        assert!(matches!(store.rectify(&s, &not_held, 6), Err(StoreError::NotHeld)));
        assert_eq!(store.subject_by_link(&phone.1).unwrap(), Some(s));
        assert_eq!(store.subject_by_link(&theirs.1).unwrap(), Some(other));
    }

    #[test]
    fn interactions_and_rights_are_sealed_and_erased() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let s = subject(&store, "talk@example.de");
        let summary = "customer disputes invoice probe-7731";
        let first = store.append_interaction(&s, interaction(summary, 10)).unwrap();
        let second = store.append_interaction(&s, interaction("later", 5)).unwrap();
        assert!(first.sequence < second.sequence);
        store.append_rights_request(&s, &rights("rectification")).unwrap();
        store.set_restricted(&s, true).unwrap();
        flush(&store);
        assert!(store.subject_meta(&s).unwrap().unwrap().restricted);
        let log = store.interactions(&s).unwrap();
        assert_eq!(log.iter().map(|i| i.summary.as_str()).collect::<Vec<_>>(), [summary, "later"]);
        let on_disk = walk(dir.path())
            .into_iter()
            .any(|p| std::fs::read(p).unwrap().windows(summary.len()).any(|w| w == summary.as_bytes()));
        assert!(!on_disk, "interaction summaries are encrypted at rest");
        store.erase(&s, 20).unwrap();
        assert!(matches!(store.interactions(&s), Err(StoreError::NotFound)));
        assert!(matches!(store.rights_requests(&s), Err(StoreError::NotFound)));
        assert!(store.interactions.is_empty() && store.rights.is_empty());
        assert!(matches!(store.append_interaction(&s, interaction("x", 1)), Err(StoreError::NotFound)));
        assert!(matches!(store.set_restricted(&s, false), Err(StoreError::NotFound)));
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
        }
        out
    }
}
