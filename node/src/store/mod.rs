//! Storage behind a trait, so a region can move from sled to another engine without touching the
//! gRPC layer. Every mutating call is durable once `flush` returns (invariant 7), and personal data
//! is encrypted per subject at rest so erasure can destroy it (invariant 6).

mod change;
pub(crate) mod codec;
pub(crate) mod import_source;
mod model;
pub mod pg_store;
mod read_cache;
mod registered;
mod sled_store;
pub mod split;
mod tracked;
pub mod vault;

pub use change::{
    Announced, Change, ChangeEvent, GrantTerms, Holding, Recorded, RestrictionSet, announced, announced_channels,
    announced_in_force, links_named,
};
pub use model::*;
pub use registered::{NewRegistration, Registered, RegisteredEach, Registering};
pub use sled_store::SledStore;
pub use sled_store::backup::{
    JournalEntry, Manifest as BackupManifest, StagedBackup, combine_journals, read_backup, read_erasure_journal,
    restore as restore_sled,
};
pub use sled_store::check::{CheckReport, check as check_sled};
pub use sled_store::heads::sled_config;
pub use tracked::{Challenge, Delivery, OutboxChange, OutboxEntry, TrackedRequest};

use std::future::Future;

use domicile_types::{Channel, Jurisdiction, Link, NormalizedIdentifier, Purpose, RegionId, SubjectId};

/// What [`Store::audit_decisions_if_current`] did with decisions' audit entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audited {
    /// Appended: the decisions may be served.
    Stored,
    /// Not appended: a subject they read changed after their mark, or the changes since it can
    /// no longer all be read (pruned, or too many); they must be made again.
    Stale,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The identifiers of one request already belong to different subjects.
    #[error("identifiers belong to different subjects")]
    Conflict,
    /// An identifier already belongs to a subject of another jurisdiction.
    #[error("identifier belongs to a subject of another jurisdiction")]
    JurisdictionMismatch,
    #[error("no such subject")]
    NotFound,
    /// A merge named subjects of different jurisdictions (their packs differ).
    #[error("subjects belong to different jurisdictions")]
    MergeJurisdictionMismatch,
    /// A rectification removes an identifier the subject does not hold.
    #[error("identifier does not belong to the subject")]
    NotHeld,
    /// An unmerge found identifiers attached to the merged subject since the merge (a
    /// registration or a rectification) whose half cannot be told: refused, never guessed.
    #[error("identifiers added since the merge cannot be attributed")]
    Unattributable,
    /// A concurrent change moved something this write relied on (a link it found held or free);
    /// nothing was written, and the write may be tried again from the start.
    #[error("a concurrent change interfered; retry")]
    Retry,
    /// A write with the same idempotency key was recorded meanwhile: nothing was written, and
    /// the earlier write's result is to be replayed.
    #[error("the write was already applied under its idempotency key")]
    Replayed,
    #[error("storage failure: {0}")]
    Backend(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// The region's disk is full: writes are refused until space returns; decisions go on
    /// (`sled_store/space.rs`).
    #[error("the region's disk is full")]
    StorageFull,
    /// The operation does not exist on this engine (e.g. an online backup of a PostgreSQL region,
    /// which PostgreSQL's own tools take).
    #[error("not available on this store: {0}")]
    Unsupported(&'static str),
    /// A write's commit went unanswered (a database connection lost during it): it may or may
    /// not have been made; a retry with its idempotency key settles it.
    #[error("the write's commit went unanswered")]
    OutcomeUnknown,
    /// The write's audit entries could not be appended: the write was not stored (invariant 5).
    #[error("audit log: {0}")]
    Audit(domicile_audit::AuditError),
}

impl StoreError {
    /// This error again, for each of the many calls one failed read or write served (a batch):
    /// the kinds that change what a caller does next are kept, the others become `Backend` with
    /// the same text.
    pub(crate) fn for_each_caller(&self) -> StoreError {
        match self {
            StoreError::OutcomeUnknown => StoreError::OutcomeUnknown,
            StoreError::Corrupt(what) => StoreError::Corrupt(what.clone()),
            StoreError::StorageFull => StoreError::StorageFull,
            StoreError::Replayed => StoreError::Replayed,
            StoreError::Retry => StoreError::Retry,
            StoreError::NotFound => StoreError::NotFound,
            other => StoreError::Backend(other.to_string()),
        }
    }
}

/// An import's batch of consent records: per subject, its entries in order, each with its
/// idempotency record.
pub type ConsentBatch = Vec<(SubjectId, Vec<(NewConsent, Option<Idempotency>)>)>;
/// What became of each entry of a [`ConsentBatch`], in its shape: the record as stored and the
/// sequence of its change event (0 for a record that has none: [`announced`]), or why it was not
/// written.
pub type AppendedConsents = Vec<Vec<Result<(ConsentRecord, u64), StoreError>>>;

/// A region's durable state: subjects, consent, claims, change events and the audit log.
///
/// Every write method is one unit (ARCHITECTURE.md, "Unit of work"): it describes what it does as
/// [`Recorded`] facts, and in one transaction stores the change, its change events and its audit
/// entries, all derived from those facts. A write whose audit entries cannot be appended stores
/// nothing ([`StoreError::Audit`]). Nothing is durable before [`Store::flush`].
pub trait Store: Send + Sync + 'static {
    /// Stores a subject with its identifiers (already normalised, with their links), or adds new
    /// identifiers to the one subject that already holds some of them. A link no subject of this
    /// region holds is stored only if it is in `claimed` (this region's granted claims, with their
    /// generations, ARCHITECTURE.md "Identifier ownership"); one that another write took or
    /// freed meanwhile makes the whole write [`StoreError::Retry`].
    fn register(
        &self,
        jurisdiction: &Jurisdiction,
        identifiers: &[(NormalizedIdentifier, Link)],
        new_subject: SubjectId,
        now: i64,
        claimed: &[Release],
        idempotency: Option<&Idempotency>,
    ) -> impl Future<Output = Result<Registered, StoreError>> + Send;

    /// Registers each of `items` as [`Store::register`] would: one outcome per item, in order;
    /// an item refused leaves the others to be written. A store that can writes them at once
    /// (sled: one transaction; PostgreSQL: one); by default, one after the other. The outer error: none written.
    fn register_many(
        &self,
        items: &[NewRegistration],
        now: i64,
    ) -> impl Future<Output = Result<RegisteredEach, StoreError>> + Send {
        async move {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let registered = self
                    .register(&item.jurisdiction, &item.identifiers, item.new_subject, now, &item.claimed, None)
                    .await;
                out.push(registered);
            }
            Ok(out)
        }
    }

    /// The result of an earlier write made with idempotency key `key`, if one was recorded.
    fn replay(&self, key: &[u8; 32]) -> impl Future<Output = Result<Option<Replay>, StoreError>> + Send;
    /// Forgets idempotency records made before `before`; returns how many.
    fn purge_idempotency(&self, before: i64) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// A new fencing generation for this region's claims: greater than every one before, also
    /// across restarts.
    fn next_generation(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// As the arbiter of `links`: claims each for `region` unless another region holds it.
    /// Returns, per link, `None` when the claim is granted (the link was free or already the
    /// region's; the claim's generation becomes the higher of the two) or the region holding it.
    fn claim_links(
        &self,
        region: &RegionId,
        generation: u64,
        links: &[Link],
    ) -> impl Future<Output = Result<Vec<Option<RegionId>>, StoreError>> + Send;
    /// As the arbiter: gives up each claim held by `region` whose generation is not above the
    /// release's (a later claim of the region outranks an earlier release). Returns how many.
    fn release_links(
        &self,
        region: &RegionId,
        releases: &[Release],
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;
    /// As the arbiter: the claim on `link`, if any.
    fn claim(&self, link: &Link) -> impl Future<Output = Result<Option<Claim>, StoreError>> + Send;
    /// As the arbiter: every claim kept, in link order.
    fn claims_page(
        &self,
        after: Option<Link>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(Link, Claim)>, StoreError>> + Send;
    /// Releases this region still has to send to arbiters, oldest first, at most `limit`.
    fn pending_releases(&self, limit: usize) -> impl Future<Output = Result<Vec<Release>, StoreError>> + Send;
    /// Queues releases (for claims granted to a write that did not complete).
    fn queue_releases(&self, releases: &[Release]) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Forgets releases the arbiters have answered.
    fn releases_done(&self, releases: &[Release]) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// How many releases are waiting.
    fn pending_release_count(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The generation of this region's recorded claim on a link it holds (`held`), if any: links
    /// stored before claims existed have none.
    fn held_claim(&self, link: &Link) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;
    /// Records claims granted for links this region already holds (`ReassertClaims`): a link a
    /// subject here still holds gets its claim recorded (the higher generation, as a write
    /// would), so its removal releases it; a link no subject holds any more (erased or removed
    /// since) gets its claim queued for release instead. With `announce`, emits a REGISTERED
    /// change event per subject for its held links, so followers map them to it again.
    fn hold_claims(
        &self,
        claims: &[Release],
        announce: bool,
        now: i64,
    ) -> impl Future<Output = Result<Held, StoreError>> + Send;
    /// Removes identifiers and their links from a subject as a rectification removing them would
    /// (LINKS_REMOVED change event, claims queued for release), without a rights request: for an
    /// identifier held twice across regions, which region `kept_by` keeps (audited as an
    /// ownership repair). Links the subject does
    /// not hold (any more) are skipped.
    fn drop_links(
        &self,
        subject: &SubjectId,
        remove: &[(NormalizedIdentifier, Link)],
        kept_by: &RegionId,
        now: i64,
    ) -> impl Future<Output = Result<Dropped, StoreError>> + Send;

    fn subject_by_link(&self, link: &Link) -> impl Future<Output = Result<Option<SubjectId>, StoreError>> + Send;
    fn subject_meta(&self, id: &SubjectId) -> impl Future<Output = Result<Option<SubjectMeta>, StoreError>> + Send;
    /// The subject holding `link` and its metadata. `Ok(None)`: no subject holds the link;
    /// `Some((id, None))`: the link named a subject that is gone by the second read (a store that
    /// reads both at once never answers that). PostgreSQL reads both in one statement: a consent
    /// write resolves its subject with it, one round trip instead of two.
    fn meta_by_link(
        &self,
        link: &Link,
    ) -> impl Future<Output = Result<Option<(SubjectId, Option<SubjectMeta>)>, StoreError>> + Send {
        async move {
            let Some(id) = self.subject_by_link(link).await? else { return Ok(None) };
            Ok(Some((id, self.subject_meta(&id).await?)))
        }
    }
    /// Up to `limit` subject ids after `after` (from the first when `None`), in id order: a
    /// region-wide report pages through its subjects with it.
    fn subjects_after(
        &self,
        after: Option<SubjectId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<SubjectId>, StoreError>> + Send;
    /// The decrypted personal record; `None` if the subject does not exist or was erased.
    fn subject_record(&self, id: &SubjectId) -> impl Future<Output = Result<Option<SubjectRecord>, StoreError>> + Send;

    /// Appends to the ledger (at the next ledger position) and updates the current state;
    /// returns the record as stored and the sequence of its change event (0 for a record that
    /// has none: [`announced`]).
    fn append_consent(
        &self,
        subject: &SubjectId,
        consent: NewConsent,
        idempotency: Option<&Idempotency>,
    ) -> impl Future<Output = Result<(ConsentRecord, u64), StoreError>> + Send;
    /// Consent records of several subjects (an import's batch), each with its idempotency
    /// record; one result per entry, in the batch's shape: an entry that cannot be written (its
    /// subject gone, a link moved, [`StoreError::Replayed`] for an idempotency key already
    /// recorded) gets its error. By default one [`Store::append_consent`] per entry, the subjects
    /// concurrently and each subject's entries in order; a store may write the batch in one
    /// transaction (the embedded store does, where a subject any of whose entries cannot be
    /// written has none written). The outer error is for a batch that failed as a whole.
    fn append_consents(
        &self,
        batch: ConsentBatch,
    ) -> impl Future<Output = Result<AppendedConsents, StoreError>> + Send {
        async move {
            let subjects = batch.into_iter().map(|(subject, consents)| async move {
                let mut out = Vec::with_capacity(consents.len());
                for (consent, tag) in consents {
                    out.push(self.append_consent(&subject, consent, tag.as_ref()).await);
                }
                out
            });
            Ok(futures_util::future::join_all(subjects).await)
        }
    }
    fn current_consent(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        channel: Channel,
    ) -> impl Future<Output = Result<Option<CurrentConsent>, StoreError>> + Send;
    /// What a decision reads: the subject's metadata and the consent in force for one
    /// purpose × channel; `None` for an unknown subject. One call, so a store can serve both from
    /// one lookup.
    fn decision_inputs(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        channel: Channel,
    ) -> impl Future<Output = Result<Option<(SubjectMeta, Option<CurrentConsent>)>, StoreError>> + Send {
        async move {
            let Some(meta) = self.subject_meta(subject).await? else { return Ok(None) };
            Ok(Some((meta, self.current_consent(subject, purpose, channel).await?)))
        }
    }
    /// Makes the next [`Store::subjects_by_links`] and [`Store::decision_inputs_many`] see every
    /// write acknowledged before this call, by this process or any other over the same store.
    /// The embedded store's cache is exact without it; a store shared by replicas catches its
    /// cache up here. Decisions read without it first, and call it only when
    /// [`Store::audit_decisions_if_current`] finds they read a value since changed.
    fn sync_reads(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
    /// Where this process's reads stand in the store's stream of changes, taken before decisions
    /// read, for [`Store::audit_decisions_if_current`]. An exact cache has one mark.
    fn read_mark(&self) -> u64 {
        0
    }
    /// The subjects holding `links`, in order (`None`: held by none here): what a batch of
    /// decisions resolves at once. By default one [`Store::subject_by_link`] each; a store over a
    /// network answers all in one query.
    fn subjects_by_links(
        &self,
        links: &[Link],
    ) -> impl Future<Output = Result<Vec<Option<SubjectId>>, StoreError>> + Send {
        async move {
            let mut found = Vec::with_capacity(links.len());
            for link in links {
                found.push(self.subject_by_link(link).await?);
            }
            Ok(found)
        }
    }
    /// [`Store::decision_inputs`] of every item, in order: a batch of decisions reads at once. By
    /// default one call each.
    fn decision_inputs_many(
        &self,
        items: &[(SubjectId, Purpose, Channel)],
    ) -> impl Future<Output = Result<Vec<Option<DecisionInputs>>, StoreError>> + Send {
        async move {
            let mut found = Vec::with_capacity(items.len());
            for (subject, purpose, channel) in items {
                found.push(self.decision_inputs(subject, *purpose, *channel).await?);
            }
            Ok(found)
        }
    }
    fn consent_history(
        &self,
        subject: &SubjectId,
    ) -> impl Future<Output = Result<Vec<ConsentRecord>, StoreError>> + Send;
    /// Where each of `sources` (source system, source event id) already is in the subject's
    /// ledger: the position of its first entry, or `None`. What an import checks its entries
    /// against; a store may answer from an index instead of reading the whole ledger (which
    /// grows with every run, so reading it per call makes a long history quadratic).
    fn imported_positions(
        &self,
        subject: &SubjectId,
        sources: &[(String, String)],
    ) -> impl Future<Output = Result<Vec<Option<u64>>, StoreError>> + Send {
        async move {
            let mut found: std::collections::HashMap<(String, String), u64> = std::collections::HashMap::new();
            for record in self.consent_history(subject).await? {
                if let Some(import) = record.evidence.import {
                    found.entry((import.source_system, import.source_event_id)).or_insert(record.sequence);
                }
            }
            Ok(sources.iter().map(|source| found.get(source).copied()).collect())
        }
    }
    /// The record in force per purpose × channel (what decisions read), in purpose, channel order.
    fn consent_in_force(
        &self,
        subject: &SubjectId,
    ) -> impl Future<Output = Result<Vec<(Purpose, Channel, CurrentConsent)>, StoreError>> + Send;

    /// Destroys the subject's key, then removes its records, links and current state; queues the
    /// releases of the subject's claimed links. `rights_request` is the erasure request (kept in
    /// the result only, as the subject goes).
    fn erase(
        &self,
        subject: &SubjectId,
        now: i64,
        rights_request: &RightsRequestRecord,
        idempotency: Option<&Idempotency>,
    ) -> impl Future<Output = Result<Erased, StoreError>> + Send;

    /// Moves everything of `from` (identifiers, profile, links, consent ledger, interactions,
    /// rights requests) into `into`, re-sealed with `into`'s key; the current state per purpose ×
    /// channel becomes whichever record `CurrentConsent::supersedes` the other; then `from` is
    /// erased (key destroyed). Emits REGISTERED for `into` with `from`'s links, then ERASED for
    /// `from` (`Recorded::Merge`).
    fn merge(
        &self,
        into: &SubjectId,
        from: &SubjectId,
        now: i64,
        idempotency: Option<&Idempotency>,
    ) -> impl Future<Output = Result<Merged, StoreError>> + Send;

    /// Undoes the merge of `from` (the id the merged-away subject had) into `subject`: both halves
    /// get new ids and keys, `kept` with what [`split::split`] leaves the remaining subject and
    /// `restored` with what it gives back, and `subject` is retired (its key destroyed, so copies
    /// of its data in old row versions or log segments cannot be read, and a stale ref reaches
    /// nobody), in one write with the change events and the audit entry ([`Recorded::Unmerge`]).
    /// `NotFound` when `subject`'s lineage holds no merge of `from`; `Conflict` when a new id
    /// exists.
    fn unmerge(
        &self,
        subject: &SubjectId,
        from: &SubjectId,
        kept: &SubjectId,
        restored: &SubjectId,
        now: i64,
        idempotency: Option<&Idempotency>,
    ) -> impl Future<Output = Result<Unmerged, StoreError>> + Send;

    /// Adds and removes identifiers (re-linking them) and sets or removes profile fields, all or
    /// nothing, and records `rights_request` with them. Emits LINKS_REMOVED for removed links
    /// (their claims are queued for release) and REGISTERED for added ones, which, as in
    /// [`Store::register`], must be held by the subject already or be in `claimed`.
    fn rectify(
        &self,
        subject: &SubjectId,
        change: &Rectification,
        now: i64,
        rights_request: &RightsRequestRecord,
        claimed: &[Release],
        idempotency: Option<&Idempotency>,
    ) -> impl Future<Output = Result<Rectified, StoreError>> + Send;

    /// Sets or lifts the restriction of processing and records `rights_request` with it.
    fn set_restricted(
        &self,
        subject: &SubjectId,
        restricted: bool,
        rights_request: &RightsRequestRecord,
        idempotency: Option<&Idempotency>,
    ) -> impl Future<Output = Result<RestrictionSet, StoreError>> + Send;

    fn append_interaction(
        &self,
        subject: &SubjectId,
        interaction: NewInteraction,
        idempotency: Option<&Idempotency>,
    ) -> impl Future<Output = Result<Interaction, StoreError>> + Send;
    /// The subject's interactions in recording order.
    fn interactions(&self, subject: &SubjectId) -> impl Future<Output = Result<Vec<Interaction>, StoreError>> + Send;

    fn append_rights_request(
        &self,
        subject: &SubjectId,
        request: &RightsRequestRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The subject's rights requests in recording order.
    fn rights_requests(
        &self,
        subject: &SubjectId,
    ) -> impl Future<Output = Result<Vec<RightsRequestRecord>, StoreError>> + Send;

    /// Stores a tracked rights request (`store/tracked.rs`; replacing the one with its id), its
    /// audit entry (`Recorded::RightsRequest`: every step of a request is audited) and its
    /// outbox change in one transaction, with the write's idempotency record (result: the
    /// request's record). `expected` is the request as the step read it (`None`: a new one): if
    /// the stored one differs (another step came first, in this process or another replica of
    /// the region), nothing is written and the answer is [`StoreError::Retry`], so a challenge's
    /// wrong answers are counted exactly however many replicas take them. An outbox entry is
    /// sealed under the subject's key, so adding one needs a live subject; the other changes do
    /// not (an erasure request is completed after its subject is gone).
    fn track_request(
        &self,
        request: &TrackedRequest,
        expected: Option<&TrackedRequest>,
        outbox: OutboxChange<'_>,
        at: i64,
        idempotency: Option<&Idempotency>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The tracked request with id `request_id`.
    fn tracked_request(
        &self,
        request_id: &str,
    ) -> impl Future<Output = Result<Option<TrackedRequest>, StoreError>> + Send;
    /// Every tracked request of the region, in id order (PII-free: what the overdue listing
    /// and its gauge read without unsealing a subject).
    fn tracked_requests(&self) -> impl Future<Output = Result<Vec<TrackedRequest>, StoreError>> + Send;
    /// The tracked requests of one subject. By default a scan of [`Store::tracked_requests`];
    /// a store with an index by subject reads only the subject's.
    fn tracked_requests_of(
        &self,
        subject: &SubjectId,
    ) -> impl Future<Output = Result<Vec<TrackedRequest>, StoreError>> + Send {
        async move { Ok(self.tracked_requests().await?.into_iter().filter(|t| t.subject == *subject).collect()) }
    }
    /// Up to `limit` outbox entries, oldest first, their deliveries opened; entries whose
    /// subject's key is gone (erased) are skipped.
    fn outbox(&self, limit: usize) -> impl Future<Output = Result<Vec<OutboxEntry>, StoreError>> + Send;
    /// Removes the outbox entries of these requests; returns how many were there.
    fn remove_outbox(&self, request_ids: &[String]) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Every (link, subject) pair whose link starts with a byte in `first_bytes`, in link order,
    /// for rebuilding gateway directories. Links are keyed hashes, so equal byte ranges hold about
    /// equal shares: disjoint ranges can be scanned in parallel.
    fn links_page(
        &self,
        first_bytes: std::ops::RangeInclusive<u8>,
        after: Option<Link>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(Link, SubjectId)>, StoreError>> + Send;
    /// Change events with a sequence number greater than `after` (all, if `None`), in order.
    /// Events become visible in sequence order: writers allocate and insert them one at a time.
    fn events_page(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ChangeEvent>, StoreError>> + Send;
    /// The highest event sequence stored, if any.
    fn last_event(&self) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;
    /// Whether other processes write this store too (node replicas of a region over one
    /// database): a node then learns of their changes from [`Store::last_event`], not only from
    /// its own writes, so its watchers miss none. An embedded store has one writer.
    fn shared(&self) -> bool {
        false
    }
    fn counts(&self) -> impl Future<Output = Result<(u64, u64), StoreError>> + Send;

    /// Appends an audit entry about `subject` that records no stored change (a transfer of its
    /// data). Every write appends its own entries in its transaction ([`Recorded`]).
    fn audit(
        &self,
        event: domicile_audit::AuditEvent,
        subject: &SubjectId,
        at: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Whether `error` (a write's, a flush's) means the region's disk is full; a store that
    /// handles that (`sled_store/space.rs`) enters its full mode. Default: never.
    fn disk_full(&self, error: &StoreError) -> bool {
        let _ = error;
        false
    }

    /// Appends decisions to the audit log in batch entries.
    fn audit_decisions(
        &self,
        entries: &[domicile_audit::DecisionEntry<'_>],
        at: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// [`Store::audit_decisions`] for a batch of decisions that read at `mark`
    /// ([`Store::read_mark`]) without [`Store::sync_reads`]: appends them only if no write
    /// committed before this call changed a subject in `read` (every subject the batch read, the
    /// entries' and those of items that ended without a decision) after `mark`, and the store can
    /// still tell; otherwise appends nothing and answers [`Audited::Stale`], and the caller
    /// answers the batch again after `sync_reads`. A write acknowledged before the decisions
    /// arrived is committed before this call, so no answer read from before it is stored or
    /// served. By default the reads are exact (one process writes the store) and the entries are
    /// appended.
    fn audit_decisions_if_current(
        &self,
        entries: &[domicile_audit::DecisionEntry<'_>],
        read: &[SubjectId],
        at: i64,
        mark: u64,
    ) -> impl Future<Output = Result<Audited, StoreError>> + Send {
        let _ = (read, mark);
        async move { self.audit_decisions(entries, at).await.map(|()| Audited::Stored) }
    }

    /// Makes every change so far durable, audit entries included. Called before acknowledging a
    /// write.
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stages an online backup of the region's files, consistent with each other, on the node's
    /// disk (`sled_store::backup`); the caller streams and then drops it. The embedded store
    /// only: a PostgreSQL region is backed up with PostgreSQL's tools.
    fn backup(&self, now: i64) -> impl Future<Output = Result<StagedBackup, StoreError>> + Send {
        let _ = now;
        async { Err(StoreError::Unsupported("back up a PostgreSQL region with PostgreSQL's own tools")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subdivision_recorded_before_codes_were_checked_stays_readable() {
        let meta: SubjectMeta = serde_json::from_str(r#"{"jurisdiction":"US-CAL","created_at":1}"#).unwrap();
        assert_eq!(meta.jurisdiction.to_string(), "US-CAL");
        assert_eq!(meta.jurisdiction.country().to_string(), "US");
        assert!(serde_json::from_str::<SubjectMeta>(r#"{"jurisdiction":"QQ","created_at":1}"#).is_err());
    }
}
