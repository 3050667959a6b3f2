//! The embedded default: sled, one database per node, plus the key vault beside it.
//!
//! Trees: `meta` (subject id → jurisdiction, links, flags; no personal data), `subjects`
//! (subject id → sealed identifiers and profile), `links` (link → subject id), `ledger_segments`
//! and `ledger` (the consent ledger in position order: `segments.rs`) and `ledger_dir` (each
//! subject's positions, with its imported entries' source digests: `ledger.rs`), `current` (subject id ‖ purpose ‖
//! channel → sealed record in force), `interactions` and `rights` (subject id ‖ sequence → sealed
//! interaction / rights request), `events` (sequence → pseudonymous change event; by subject in
//! `event_subjects`, and `retiring` while a retired subject's go: `retire.rs`), `counters` (the
//! consent ledger's last position). Identifier ownership (`claims.rs`): `claims` (link → the region
//! holding it, for links this region arbitrates), `held` (link → generation of this region's
//! claim on its own live links), `releases` (link ‖ generation → claims to give up). `idempotency`
//! (key → a write's result, sealed with its subject's key). Sealed values are
//! AES-256-GCM under the subject's key from `vault`, with the tree, subject and key as associated
//! data. Keys use vocabulary names, not enum indices, so the format survives reordering.
//!
//! The write methods live by capability: `identity.rs` (register, rectify, merge, erase),
//! `records.rs` (consent, interactions, rights, restriction, and the consent reads decisions
//! make), `claims.rs` (claims, releases, idempotency records); `unit.rs` is what every write adds
//! in its transaction (change events and audit entries, `Recorded`); `cache.rs` the decision
//! inputs already read.

use std::path::Path;
use std::sync::Arc;

use domicile_audit::{AuditEvent, AuditLog, DecisionEntry};

use domicile_types::{Channel, Jurisdiction, Link, NormalizedIdentifier, Purpose, SubjectId};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

pub mod backup;
mod cache;
pub mod check;
mod claims;
pub(super) mod heads;
mod identity;
mod ids;
mod ledger;
mod merge;
mod records;
mod registration;
mod replay;
mod retire;
mod segments;
mod space;
mod tracked;
mod unit;
mod unmerge;

use super::Registering;
use super::codec::{backend, consent_key, context, current_key, decode, encode, open, seal};
use super::read_cache::ReadCache;
use super::vault::{KeyVault, SubjectKey};
use super::{
    AppendedConsents, ChangeEvent, Claim, ConsentBatch, ConsentRecord, CurrentConsent, Dropped, Erased, Held,
    Idempotency, Interaction, Merged, NewConsent, NewInteraction, NewRegistration, OutboxChange, OutboxEntry, Recorded,
    Rectification, Rectified, Registered, RegisteredEach, Release, Replay, RightsRequestRecord, Store, StoreError,
    SubjectMeta, SubjectRecord, TrackedRequest, Unmerged,
};
use domicile_types::RegionId;
use heads::open_journal;
use unit::number_events;

#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    vault: KeyVault,
    meta: sled::Tree,
    subjects: sled::Tree,
    links: sled::Tree,
    /// The consent ledger (`segments.rs`), and each subject's directory of it (`ledger.rs`).
    ledger: sled::Tree,
    segments: sled::Tree,
    directory: sled::Tree,
    current: sled::Tree,
    interactions: sled::Tree,
    rights: sled::Tree,
    /// Tracked rights requests (request id → PII-free record), challenge outbox (`tracked.rs`).
    tracked: sled::Tree,
    outbox: sled::Tree,
    events: sled::Tree,
    counters: sled::Tree,
    claims: sled::Tree,
    held: sled::Tree,
    releases: sled::Tree,
    idempotency: sled::Tree,
    /// Events by subject, and the subjects whose events are to go (`retire.rs`).
    event_index: sled::Tree,
    retiring: sled::Tree,
    /// Serialises writes: events appear in sequence order (a watcher resuming after N never
    /// misses a smaller sequence committed later), and a scan under it holds until commit.
    write_lock: std::sync::Mutex<()>,
    cache: ReadCache,
    /// `audit.log` beside the database: every write appends its entries in its transaction.
    audit: Arc<AuditLog>,
    region: domicile_types::RegionId,
    /// `store.head` and the highest event sequence written there (see [`STORE_HEAD_FILE`]).
    head: heads::Head,
    /// `ledger.head` and the highest ledger position written there (see [`heads::LEDGER_HEAD_FILE`]).
    ledger_head: heads::Head,
    /// The data directory (backups are staged in it).
    dir: std::path::PathBuf,
    /// The erasure journal (`backup.rs`), appended and synced before a key is destroyed.
    journal: std::sync::Mutex<std::fs::File>,
    /// Full-disk mode and its reserve (`space.rs`).
    space: space::Space,
    /// Added to sled's ids (`ids.rs`): a restore moves every later id past the lost machine's.
    id_base: u64,
}

/// Stored beside the sealed record: what routing, decisions and watchers need.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct MetaEntry {
    #[serde(flatten)]
    meta: SubjectMeta,
    links: Vec<Link>,
}

/// `counters` key of the consent ledger's last position (`heads::ledger_position`).
const LEDGER_POSITION: &[u8] = b"ledger_position";

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// Turns a store error met inside a transaction into its abort.
fn or_abort<T>(result: Result<T, StoreError>) -> TxResult<T> {
    result.map_err(ConflictableTransactionError::Abort)
}

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn flatten<T>(result: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    result.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    })
}

impl SledStore {
    /// Opens (or creates) the region's store in `dir`: the database, the key vault and the audit
    /// log (whose whole chain is verified first). Refuses a directory a restore has not finished
    /// (`backup::RESTORE_PENDING_FILE`).
    pub fn open(dir: &Path, region: &domicile_types::RegionId) -> Result<Self, StoreError> {
        backup::refuse_unfinished_restore(dir)?;
        Self::open_restoring(dir, region)
    }

    /// [`SledStore::open`] without the check for an unfinished restore: for the restore itself.
    fn open_restoring(dir: &Path, region: &domicile_types::RegionId) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let audit = Arc::new(AuditLog::open(dir, region).map_err(StoreError::Audit)?);
        let db = heads::open_db(&dir.join("db"))?;
        let events = db.open_tree("events").map_err(backend)?;
        let counters = db.open_tree("counters").map_err(backend)?;
        let (head, ledger_head) = heads::open_checked(dir, &events, &counters)?;
        Self {
            space: space::Space::open(dir),
            journal: std::sync::Mutex::new(open_journal(&dir.join(backup::ERASURE_JOURNAL_FILE))?),
            dir: dir.to_owned(),
            head,
            ledger_head,
            audit,
            region: region.clone(),
            vault: KeyVault::open(dir)?,
            meta: db.open_tree("meta").map_err(backend)?,
            subjects: db.open_tree("subjects").map_err(backend)?,
            links: db.open_tree("links").map_err(backend)?,
            ledger: db.open_tree("ledger").map_err(backend)?,
            segments: db.open_tree("ledger_segments").map_err(backend)?,
            directory: db.open_tree("ledger_dir").map_err(backend)?,
            current: db.open_tree("current").map_err(backend)?,
            interactions: db.open_tree("interactions").map_err(backend)?,
            rights: db.open_tree("rights").map_err(backend)?,
            tracked: db.open_tree("rights_tracked").map_err(backend)?,
            outbox: db.open_tree("rights_outbox").map_err(backend)?,
            id_base: ids::read_base(&counters)?,
            events,
            counters,
            claims: db.open_tree("claims").map_err(backend)?,
            held: db.open_tree("held").map_err(backend)?,
            releases: db.open_tree("releases").map_err(backend)?,
            idempotency: db.open_tree("idempotency").map_err(backend)?,
            event_index: db.open_tree("event_subjects").map_err(backend)?,
            retiring: db.open_tree("retiring").map_err(backend)?,
            write_lock: std::sync::Mutex::new(()),
            cache: ReadCache::default(),
            db,
        }
        .with_ledger_counter()?
        .with_ledger_by_position()?
        .with_event_index()?
        .without_orphan_keys()
    }

    /// The hot path of every decision: decode the flattened `MetaEntry` as `SubjectMeta`
    /// directly (unknown members such as `links` are skipped, not built), from the read cache
    /// when it holds it.
    fn read_subject_meta(&self, id: &SubjectId) -> Result<Option<SubjectMeta>, StoreError> {
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

    /// Raw key bytes of a subject, for tests that prove erasure by searching the disk.
    #[cfg(test)]
    pub(crate) fn raw_key(&self, id: &SubjectId) -> Option<[u8; 32]> {
        self.vault.raw_key(id)
    }
}

impl Store for SledStore {
    async fn register(
        &self,
        jurisdiction: &Jurisdiction,
        identifiers: &[(NormalizedIdentifier, Link)],
        new_subject: SubjectId,
        now: i64,
        claimed: &[Release],
        idempotency: Option<&Idempotency>,
    ) -> Result<Registered, StoreError> {
        self.register_subject(&Registering { jurisdiction, identifiers, new_subject, claimed, idempotency }, now)
    }

    async fn register_many(&self, items: &[NewRegistration], now: i64) -> Result<RegisteredEach, StoreError> {
        self.register_subjects(&items.iter().map(Registering::of).collect::<Vec<_>>(), now)
    }

    async fn replay(&self, key: &[u8; 32]) -> Result<Option<Replay>, StoreError> {
        self.read_replay(key)
    }

    async fn purge_idempotency(&self, before: i64) -> Result<usize, StoreError> {
        self.purge_replays(before)
    }

    async fn next_generation(&self) -> Result<u64, StoreError> {
        // sled's ids grow across restarts too (recovery skips ahead of any id handed out).
        self.next_id()
    }

    async fn claim_links(
        &self,
        region: &RegionId,
        generation: u64,
        links: &[Link],
    ) -> Result<Vec<Option<RegionId>>, StoreError> {
        self.grant_claims(region, generation, links)
    }

    async fn release_links(&self, region: &RegionId, releases: &[Release]) -> Result<usize, StoreError> {
        self.give_up_claims(region, releases)
    }

    async fn claim(&self, link: &Link) -> Result<Option<Claim>, StoreError> {
        self.read_claim(link)
    }

    async fn claims_page(&self, after: Option<Link>, limit: usize) -> Result<Vec<(Link, Claim)>, StoreError> {
        // sled pages its trees in from disk as it iterates: off the async workers.
        let claims = self.claims.clone();
        tokio::task::spawn_blocking(move || claims::read_claims(&claims, after, limit)).await.map_err(backend)?
    }

    async fn pending_releases(&self, limit: usize) -> Result<Vec<Release>, StoreError> {
        self.read_releases(limit)
    }

    async fn queue_releases(&self, releases: &[Release]) -> Result<(), StoreError> {
        self.add_releases(releases)
    }

    async fn releases_done(&self, releases: &[Release]) -> Result<(), StoreError> {
        self.remove_releases(releases)
    }

    async fn pending_release_count(&self) -> Result<u64, StoreError> {
        Ok(self.releases.len() as u64)
    }

    async fn held_claim(&self, link: &Link) -> Result<Option<u64>, StoreError> {
        self.read_held(link)
    }

    async fn hold_claims(&self, claims: &[Release], announce: bool, now: i64) -> Result<Held, StoreError> {
        self.hold_granted(claims, announce, now)
    }

    async fn drop_links(
        &self,
        subject: &SubjectId,
        remove: &[(NormalizedIdentifier, Link)],
        kept_by: &RegionId,
        now: i64,
    ) -> Result<Dropped, StoreError> {
        self.drop_subject_links(subject, remove, kept_by, now)
    }

    async fn subject_by_link(&self, link: &Link) -> Result<Option<SubjectId>, StoreError> {
        self.subject_by_link_raw(link)
    }

    async fn subject_meta(&self, id: &SubjectId) -> Result<Option<SubjectMeta>, StoreError> {
        self.read_subject_meta(id)
    }

    async fn subjects_after(&self, after: Option<SubjectId>, limit: usize) -> Result<Vec<SubjectId>, StoreError> {
        self.subject_ids_after(after, limit)
    }

    async fn subject_record(&self, id: &SubjectId) -> Result<Option<SubjectRecord>, StoreError> {
        self.subject_record_raw(id)
    }

    async fn current_consent(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        channel: Channel,
    ) -> Result<Option<CurrentConsent>, StoreError> {
        self.read_current_consent(subject, purpose, channel)
    }

    async fn decision_inputs(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        channel: Channel,
    ) -> Result<Option<(SubjectMeta, Option<CurrentConsent>)>, StoreError> {
        self.read_decision_inputs(subject, purpose, channel)
    }

    async fn consent_in_force(
        &self,
        subject: &SubjectId,
    ) -> Result<Vec<(Purpose, Channel, CurrentConsent)>, StoreError> {
        self.read_consent_in_force(subject)
    }

    async fn consent_history(&self, subject: &SubjectId) -> Result<Vec<ConsentRecord>, StoreError> {
        self.read_ledger(subject)
    }

    async fn imported_positions(
        &self,
        subject: &SubjectId,
        sources: &[(String, String)],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        self.imported_in(subject, &self.key(subject)?, sources)
    }

    async fn interactions(&self, subject: &SubjectId) -> Result<Vec<Interaction>, StoreError> {
        self.open_log(&self.interactions, b"interactions", subject)
    }

    async fn append_rights_request(
        &self,
        subject: &SubjectId,
        request: &RightsRequestRecord,
    ) -> Result<(), StoreError> {
        let key = self.key(subject)?;
        let _serial = self.serialise_writes(&[*subject]);
        let sequence = self.next_id()?;
        let k = consent_key(subject, sequence);
        let sealed = seal(&key, b"rights", &k, request)?;
        let recorded = [Recorded::RightsRequest { subject: *subject, request }];
        let audited = self.audited(request.received_at)?;
        let result = (&self.meta, &self.rights).transaction(|(meta, rights)| {
            if meta.get(subject.as_bytes())?.is_none() {
                return abort(StoreError::NotFound);
            }
            rights.insert(&k[..], sealed.as_slice())?;
            audited.append(&recorded)
        });
        flatten(result)?;
        audited.commit();
        Ok(())
    }

    async fn rights_requests(&self, subject: &SubjectId) -> Result<Vec<RightsRequestRecord>, StoreError> {
        self.open_log(&self.rights, b"rights", subject)
    }

    async fn track_request(
        &self,
        request: &TrackedRequest,
        expected: Option<&TrackedRequest>,
        outbox: OutboxChange<'_>,
        at: i64,
        idempotency: Option<&Idempotency>,
    ) -> Result<(), StoreError> {
        self.write_tracked(request, expected, outbox, at, idempotency)
    }

    async fn tracked_request(&self, request_id: &str) -> Result<Option<TrackedRequest>, StoreError> {
        self.read_tracked(request_id)
    }

    async fn tracked_requests(&self) -> Result<Vec<TrackedRequest>, StoreError> {
        self.read_all_tracked()
    }

    async fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.read_outbox(limit)
    }

    async fn remove_outbox(&self, request_ids: &[String]) -> Result<usize, StoreError> {
        self.delete_outbox(request_ids)
    }

    async fn links_page(
        &self,
        first_bytes: std::ops::RangeInclusive<u8>,
        after: Option<Link>,
        limit: usize,
    ) -> Result<Vec<(Link, SubjectId)>, StoreError> {
        // sled pages its trees in from disk as it iterates: off the async workers (a gateway's
        // cold start scans parts of the key space side by side, each on a blocking thread).
        let links = self.links.clone();
        tokio::task::spawn_blocking(move || claims::read_links(&links, first_bytes, after, limit))
            .await
            .map_err(backend)?
    }

    async fn events_page(&self, after: Option<u64>, limit: usize) -> Result<Vec<ChangeEvent>, StoreError> {
        let range = match after {
            None => self.events.iter(),
            Some(u64::MAX) => return Ok(Vec::new()),
            Some(n) => self.events.range((n + 1).to_be_bytes()..),
        };
        range
            .take(limit)
            .map(|item| {
                let (_, value) = item.map_err(backend)?;
                decode(&value)
            })
            .collect()
    }

    async fn last_event(&self) -> Result<Option<u64>, StoreError> {
        match self.events.last().map_err(backend)? {
            None => Ok(None),
            Some((k, _)) => {
                let bytes: [u8; 8] = k.as_ref().try_into().map_err(|_| StoreError::Corrupt("event key".into()))?;
                Ok(Some(u64::from_be_bytes(bytes)))
            }
        }
    }

    async fn counts(&self) -> Result<(u64, u64), StoreError> {
        Ok((self.meta.len() as u64, self.links.len() as u64))
    }

    async fn audit(&self, event: AuditEvent, subject: &SubjectId, at: i64) -> Result<(), StoreError> {
        let subject = domicile_types::SubjectRef { region: self.region.clone(), id: *subject };
        self.audit.append(event, Some(&subject), at).map(|_| ()).map_err(StoreError::Audit)
    }

    async fn audit_decisions(&self, entries: &[DecisionEntry<'_>], at: i64) -> Result<(), StoreError> {
        self.audit_decisions_with_reserve(entries, at)
    }

    fn disk_full(&self, error: &StoreError) -> bool {
        self.space.on_error(error)
    }

    async fn backup(&self, now: i64) -> Result<backup::StagedBackup, StoreError> {
        self.stage_backup_off_workers(now)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.flush_files().await
    }

    async fn append_consent(
        &self,
        subject: &SubjectId,
        consent: NewConsent,
        idempotency: Option<&Idempotency>,
    ) -> Result<(ConsentRecord, u64), StoreError> {
        self.record_consent(subject, consent, idempotency)
    }

    async fn append_consents(&self, batch: ConsentBatch) -> Result<AppendedConsents, StoreError> {
        self.record_consent_batch(batch)
    }

    async fn erase(
        &self,
        subject: &SubjectId,
        now: i64,
        rights_request: &RightsRequestRecord,
        idempotency: Option<&Idempotency>,
    ) -> Result<Erased, StoreError> {
        self.erase_subject(subject, now, rights_request, idempotency)
    }

    async fn merge(
        &self,
        into: &SubjectId,
        from: &SubjectId,
        now: i64,
        idempotency: Option<&Idempotency>,
    ) -> Result<Merged, StoreError> {
        self.merge_subjects(into, from, now, now, idempotency)
    }

    async fn unmerge(
        &self,
        subject: &SubjectId,
        from: &SubjectId,
        kept: &SubjectId,
        restored: &SubjectId,
        now: i64,
        idempotency: Option<&Idempotency>,
    ) -> Result<Unmerged, StoreError> {
        self.unmerge_subject(subject, from, kept, restored, now, idempotency)
    }

    async fn rectify(
        &self,
        subject: &SubjectId,
        change: &Rectification,
        now: i64,
        rights_request: &RightsRequestRecord,
        claimed: &[Release],
        idempotency: Option<&Idempotency>,
    ) -> Result<Rectified, StoreError> {
        self.rectify_subject(subject, change, now, rights_request, claimed, idempotency)
    }

    async fn set_restricted(
        &self,
        subject: &SubjectId,
        restricted: bool,
        rights_request: &RightsRequestRecord,
        idempotency: Option<&Idempotency>,
    ) -> Result<crate::store::RestrictionSet, StoreError> {
        self.restrict_subject(subject, restricted, rights_request, idempotency)
    }

    async fn append_interaction(
        &self,
        subject: &SubjectId,
        interaction: NewInteraction,
        idempotency: Option<&Idempotency>,
    ) -> Result<Interaction, StoreError> {
        self.record_interaction(subject, interaction, idempotency)
    }
}

#[cfg(test)]
mod tests;
