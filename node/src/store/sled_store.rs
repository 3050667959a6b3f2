//! The embedded default: sled, one database per node, plus the key vault beside it.
//!
//! Trees: `meta` (subject id → jurisdiction, links, flags; no personal data), `subjects`
//! (subject id → sealed identifiers and profile), `links` (link → subject id), `consent`
//! (subject id ‖ sequence → sealed ledger entry), `current` (subject id ‖ purpose ‖ channel →
//! sealed record in force) and `events` (sequence → pseudonymous change event). Sealed values are
//! AES-256-GCM under the subject's key from `vault`, with the tree, subject and key as associated
//! data. Keys use vocabulary names, not enum indices, so the format survives reordering.

use std::path::Path;

use domicile_types::{Channel, Jurisdiction, Link, NormalizedIdentifier, Purpose, SUBJECT_ID_LEN, SubjectId};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::vault::{KeyVault, SubjectKey};
use super::{
    Change, ChangeEvent, ConsentRecord, CurrentConsent, Erased, NewConsent, Registered, Store, StoreError, SubjectMeta,
    SubjectRecord,
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
    events: sled::Tree,
    /// Serialises event allocation and insertion, so events appear in sequence order and a
    /// watcher that resumes after N can never miss a smaller sequence committed later.
    write_lock: std::sync::Mutex<()>,
}

/// Stored beside the sealed record: what routing, decisions and watchers need.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct MetaEntry {
    #[serde(flatten)]
    meta: SubjectMeta,
    links: Vec<Link>,
}

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
            events: db.open_tree("events").map_err(backend)?,
            write_lock: std::sync::Mutex::new(()),
            db,
        })
    }

    fn meta_entry(&self, id: &SubjectId) -> Result<Option<MetaEntry>, StoreError> {
        match self.meta.get(id.as_bytes()).map_err(backend)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }

    fn key(&self, id: &SubjectId) -> Result<SubjectKey, StoreError> {
        self.vault.get(id)?.ok_or(StoreError::NotFound)
    }

    fn serialise_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
        // Created (and synced) before any sealed value refers to it.
        let key = self.vault.get_or_create(&candidate)?;
        let _serial = self.serialise_writes();
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
        flatten(result)
    }

    fn subject_by_link(&self, link: &Link) -> Result<Option<SubjectId>, StoreError> {
        match self.links.get(link.as_bytes()).map_err(backend)? {
            None => Ok(None),
            Some(v) => SubjectId::from_slice(&v).map(Some).map_err(|_| StoreError::Corrupt("link entry".into())),
        }
    }

    fn subject_meta(&self, id: &SubjectId) -> Result<Option<SubjectMeta>, StoreError> {
        Ok(self.meta_entry(id)?.map(|e| e.meta))
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
        let _serial = self.serialise_writes();
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
        let result = (&self.consent, &self.current, &self.events).transaction(|(ledger, current, events)| {
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
        let k = current_key(subject, purpose, channel);
        match self.current.get(&k).map_err(backend)? {
            None => Ok(None),
            Some(bytes) => open(&self.key(subject)?, b"current", &k, &bytes).map(Some),
        }
    }

    fn consent_history(&self, subject: &SubjectId) -> Result<Vec<ConsentRecord>, StoreError> {
        let key = self.key(subject)?;
        self.consent
            .scan_prefix(subject.as_bytes())
            .map(|item| {
                let (k, value) = item.map_err(backend)?;
                open(&key, b"consent", &k, &value)
            })
            .collect()
    }

    fn erase(&self, subject: &SubjectId, now: i64) -> Result<Erased, StoreError> {
        let entry = self.meta_entry(subject)?.ok_or(StoreError::NotFound)?;
        // Crypto-shredding first: from here on nothing sealed for this subject can be read, even
        // if the rest of the clean-up were interrupted.
        self.vault.destroy(subject)?;
        let ledger_keys: Vec<sled::IVec> =
            self.consent.scan_prefix(subject.as_bytes()).keys().collect::<Result<_, _>>().map_err(backend)?;
        let current_keys: Vec<sled::IVec> =
            self.current.scan_prefix(subject.as_bytes()).keys().collect::<Result<_, _>>().map_err(backend)?;
        let _serial = self.serialise_writes();
        let (event_seq, event) = self.event_bytes(*subject, entry.links.clone(), Change::Erased, now)?;
        let result = (&self.meta, &self.subjects, &self.links, &self.consent, &self.current, &self.events).transaction(
            |(meta, subjects, links, ledger, current, events)| {
                meta.remove(&subject.as_bytes()[..])?;
                subjects.remove(&subject.as_bytes()[..])?;
                for link in &entry.links {
                    links.remove(&link.as_bytes()[..])?;
                }
                for k in &ledger_keys {
                    ledger.remove(k)?;
                }
                for k in &current_keys {
                    current.remove(k)?;
                }
                events.insert(&event_seq.to_be_bytes()[..], event.as_slice())?;
                Ok(())
            },
        );
        flatten(result)?;
        Ok(Erased { links: entry.links, consent_records: ledger_keys.len(), event: event_seq })
    }

    fn links(&self) -> Box<dyn Iterator<Item = Result<(Link, SubjectId), StoreError>> + Send> {
        Box::new(self.links.iter().map(|item| {
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
