//! Tracked rights requests and the challenge outbox on sled (`store/tracked.rs`): trees
//! `rights_tracked` (request id → PII-free tracked request) and `rights_outbox` (request id →
//! pseudonymous fields and the sealed delivery).

use sled::Transactional;

use super::claims::{check_replay, record_replay};
use super::{Recorded, SledStore, StoreError, abort, backend, decode, encode, flatten, open, seal};
use crate::store::tracked::StoredOutbox;
use crate::store::{Delivery, Idempotency, OutboxChange, OutboxEntry, TrackedRequest};

/// The associated data of a sealed delivery: the tree and the request id.
const OUTBOX: &[u8] = b"outbox";

impl SledStore {
    pub(super) fn write_tracked(
        &self,
        request: &TrackedRequest,
        expected: Option<&TrackedRequest>,
        outbox: OutboxChange<'_>,
        at: i64,
        idempotency: Option<&Idempotency>,
    ) -> Result<(), StoreError> {
        let expected = expected.map(encode).transpose()?;
        let subject = &request.subject;
        let id = request.record.request_id.as_bytes();
        // The subject's key only where something is sealed with it.
        let key = match (outbox, idempotency) {
            (OutboxChange::Put(_), _) | (_, Some(_)) => Some(self.key(subject)?),
            _ => None,
        };
        let put = match (outbox, &key) {
            (OutboxChange::Put(entry), Some(key)) => {
                let sealed = seal(key, OUTBOX, id, &entry.delivery)?;
                let stored = StoredOutbox {
                    subject: *subject,
                    created_at: entry.created_at,
                    expires_at: entry.expires_at,
                    sealed: hex::encode(sealed),
                };
                Some(encode(&stored)?)
            }
            _ => None,
        };
        let value = encode(request)?;
        let _serial = self.serialise_writes(&[*subject]);
        let recorded = [Recorded::RightsRequest { subject: *subject, request: &request.record }];
        let audited = self.audited(at)?;
        let result = (&self.tracked, &self.outbox, &self.idempotency).transaction(|(tracked, outbox_tree, replays)| {
            check_replay(replays, idempotency)?;
            // Compare-and-set: the step was judged against what it read.
            if tracked.get(id)?.as_deref() != expected.as_deref() {
                return abort(StoreError::Retry);
            }
            tracked.insert(id, value.as_slice())?;
            match (&put, outbox) {
                (Some(bytes), _) => {
                    outbox_tree.insert(id, bytes.as_slice())?;
                }
                (None, OutboxChange::Remove) => {
                    outbox_tree.remove(id)?;
                }
                (None, _) => {}
            }
            record_replay(replays, idempotency, key.as_ref().map(|k| (subject, k)), &request.record)?;
            audited.append(&recorded)
        });
        flatten(result)?;
        audited.commit();
        Ok(())
    }

    pub(super) fn read_tracked(&self, request_id: &str) -> Result<Option<TrackedRequest>, StoreError> {
        self.tracked.get(request_id.as_bytes()).map_err(backend)?.map(|v| decode(&v)).transpose()
    }

    pub(super) fn read_all_tracked(&self) -> Result<Vec<TrackedRequest>, StoreError> {
        self.tracked.iter().values().map(|v| decode(&v.map_err(backend)?)).collect()
    }

    pub(super) fn read_outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut entries = Vec::new();
        for item in self.outbox.iter() {
            let (k, v) = item.map_err(backend)?;
            let stored: StoredOutbox = decode(&v)?;
            // Erased: the delivery cannot be opened any more, and is removed with the erasure.
            let Some(key) = self.vault.get(&stored.subject)? else { continue };
            let sealed = hex::decode(&stored.sealed).map_err(|_| StoreError::Corrupt("outbox entry".into()))?;
            let delivery: Delivery = open(&key, OUTBOX, &k, &sealed)?;
            let request_id = String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt("outbox key".into()))?;
            entries.push(OutboxEntry {
                request_id,
                subject: stored.subject,
                created_at: stored.created_at,
                expires_at: stored.expires_at,
                delivery,
            });
        }
        entries.sort_by(|a, b| (a.created_at, &a.request_id).cmp(&(b.created_at, &b.request_id)));
        entries.truncate(limit);
        Ok(entries)
    }

    pub(super) fn delete_outbox(&self, request_ids: &[String]) -> Result<usize, StoreError> {
        let mut removed = 0;
        for id in request_ids {
            if self.outbox.remove(id.as_bytes()).map_err(backend)?.is_some() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}
