//! The embedded default: sled, one database per node.
//!
//! Trees: `subjects` (subject id → record), `links` (link → subject id), `consent`
//! (subject id ++ sequence → ledger entry) and `current` (subject id ++ purpose ++ channel →
//! record in force). Keys use vocabulary names, not enum indices, so the format survives
//! reordering of the vocabularies.

use std::path::Path;

use domicile_types::{Channel, Jurisdiction, Link, NormalizedIdentifier, Purpose, SUBJECT_ID_LEN, SubjectId};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{ConsentRecord, CurrentConsent, NewConsent, Registered, Store, StoreError, SubjectRecord};

#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    subjects: sled::Tree,
    links: sled::Tree,
    consent: sled::Tree,
    current: sled::Tree,
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

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open().map_err(backend)?;
        Self::from_db(db)
    }

    fn from_db(db: sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            subjects: db.open_tree("subjects").map_err(backend)?,
            links: db.open_tree("links").map_err(backend)?,
            consent: db.open_tree("consent").map_err(backend)?,
            current: db.open_tree("current").map_err(backend)?,
            db,
        })
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
        let result = (&self.subjects, &self.links).transaction(|(subjects, links)| {
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
            let (subject, mut record, created) = match existing {
                Some(id) => {
                    let Some(bytes) = subjects.get(id.as_bytes())? else {
                        return abort(StoreError::Corrupt("link points to a missing subject".into()));
                    };
                    let record: SubjectRecord = match decode(&bytes) {
                        Ok(r) => r,
                        Err(e) => return abort(e),
                    };
                    if &record.jurisdiction != jurisdiction {
                        return abort(StoreError::JurisdictionMismatch);
                    }
                    (id, record, false)
                }
                None => {
                    let record =
                        SubjectRecord { jurisdiction: jurisdiction.clone(), identifiers: Vec::new(), created_at: now };
                    (new_subject, record, true)
                }
            };
            for (identifier, link) in identifiers {
                if !record.identifiers.contains(identifier) {
                    record.identifiers.push(identifier.clone());
                }
                links.insert(&link.as_bytes()[..], &subject.as_bytes()[..])?;
            }
            let bytes = match encode(&record) {
                Ok(b) => b,
                Err(e) => return abort(e),
            };
            subjects.insert(&subject.as_bytes()[..], bytes)?;
            Ok(Registered { subject, links: identifiers.iter().map(|(_, l)| *l).collect(), created })
        });
        flatten(result)
    }

    fn subject_by_link(&self, link: &Link) -> Result<Option<SubjectId>, StoreError> {
        match self.links.get(link.as_bytes()).map_err(backend)? {
            None => Ok(None),
            Some(v) => SubjectId::from_slice(&v).map(Some).map_err(|_| StoreError::Corrupt("link entry".into())),
        }
    }

    fn subject(&self, id: &SubjectId) -> Result<Option<SubjectRecord>, StoreError> {
        match self.subjects.get(id.as_bytes()).map_err(backend)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }

    fn append_consent(&self, subject: &SubjectId, consent: NewConsent) -> Result<ConsentRecord, StoreError> {
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
        let entry = encode(&record)?;
        let candidate = CurrentConsent {
            sequence,
            state: record.state,
            captured_at: record.captured_at,
            expires_at: record.expires_at,
            double_opt_in_confirmed: record.evidence.double_opt_in_confirmed,
        };
        let candidate_bytes = encode(&candidate)?;
        let result = (&self.consent, &self.current).transaction(|(ledger, current)| {
            ledger.insert(&consent_key(subject, sequence)[..], entry.as_slice())?;
            for channel in &record.channels {
                let key = current_key(subject, record.purpose, *channel);
                let replace = match current.get(&key)? {
                    None => true,
                    Some(bytes) => match decode::<CurrentConsent>(&bytes) {
                        Ok(existing) => candidate.supersedes(&existing),
                        Err(e) => return abort(e),
                    },
                };
                if replace {
                    current.insert(key, candidate_bytes.as_slice())?;
                }
            }
            Ok(())
        });
        flatten(result)?;
        Ok(record)
    }

    fn current_consent(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        channel: Channel,
    ) -> Result<Option<CurrentConsent>, StoreError> {
        match self.current.get(current_key(subject, purpose, channel)).map_err(backend)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }

    fn consent_history(&self, subject: &SubjectId) -> Result<Vec<ConsentRecord>, StoreError> {
        self.consent
            .scan_prefix(subject.as_bytes())
            .map(|item| {
                let (_, value) = item.map_err(backend)?;
                decode(&value)
            })
            .collect()
    }

    fn links(&self) -> Box<dyn Iterator<Item = Result<(Link, SubjectId), StoreError>> + Send> {
        Box::new(self.links.iter().map(|item| {
            let (key, value) = item.map_err(backend)?;
            let link = Link::from_slice(&key).map_err(|_| StoreError::Corrupt("link key".into()))?;
            let subject = SubjectId::from_slice(&value).map_err(|_| StoreError::Corrupt("link entry".into()))?;
            Ok((link, subject))
        }))
    }

    fn counts(&self) -> Result<(u64, u64), StoreError> {
        Ok((self.subjects.len() as u64, self.links.len() as u64))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await.map(|_| ()).map_err(backend)
    }
}

#[cfg(test)]
mod tests {
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

    use super::super::Evidence;

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
        let s = SubjectId::from_bytes([7; 16]);
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
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = SubjectId::from_bytes([8; 16]);
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.append_consent(&s, consent(ConsentState::Granted, 1)).unwrap();
            futures_flush(&store);
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.consent_history(&s).unwrap().len(), 1);
    }

    fn futures_flush(store: &SledStore) {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(store.flush()).unwrap();
    }
}
