//! `Store` on PostgreSQL: each method is the inherent one of the same name (the capability
//! files); scans are paged with `bigint` limits.

use domicile_audit::{AuditEvent, DecisionEntry};
use domicile_types::{Channel, Jurisdiction, Link, NormalizedIdentifier, Purpose, RegionId, SubjectId};

use super::PgStore;
use crate::store::{Audited, OutboxChange, OutboxEntry, TrackedRequest};
use crate::store::{
    ChangeEvent, Claim, ConsentRecord, CurrentConsent, DecisionInputs, Dropped, Erased, Held, Idempotency, Interaction,
    Merged, NewConsent, NewInteraction, Rectification, Rectified, Registered, Release, Replay, RightsRequestRecord,
    Store, StoreError, SubjectMeta, SubjectRecord, Unmerged,
};

impl Store for PgStore {
    async fn register(
        &self,
        jurisdiction: &Jurisdiction,
        identifiers: &[(NormalizedIdentifier, Link)],
        new_subject: SubjectId,
        now: i64,
        claimed: &[Release],
        idempotency: Option<&Idempotency>,
    ) -> Result<Registered, StoreError> {
        PgStore::register(self, jurisdiction, identifiers, new_subject, now, claimed, idempotency).await
    }

    async fn register_many(
        &self,
        items: &[crate::store::NewRegistration],
        now: i64,
    ) -> Result<crate::store::RegisteredEach, StoreError> {
        PgStore::register_many(self, items, now).await
    }

    async fn replay(&self, key: &[u8; 32]) -> Result<Option<Replay>, StoreError> {
        PgStore::replay(self, key).await
    }

    async fn purge_idempotency(&self, before: i64) -> Result<usize, StoreError> {
        PgStore::purge_idempotency(self, before).await
    }

    async fn next_generation(&self) -> Result<u64, StoreError> {
        PgStore::next_generation(self).await
    }

    async fn claim_links(
        &self,
        region: &RegionId,
        generation: u64,
        links: &[Link],
    ) -> Result<Vec<Option<RegionId>>, StoreError> {
        PgStore::claim_links(self, region, generation, links).await
    }

    async fn release_links(&self, region: &RegionId, releases: &[Release]) -> Result<usize, StoreError> {
        PgStore::release_links(self, region, releases).await
    }

    async fn claim(&self, link: &Link) -> Result<Option<Claim>, StoreError> {
        PgStore::claim(self, link).await
    }

    async fn claims_page(&self, after: Option<Link>, limit: usize) -> Result<Vec<(Link, Claim)>, StoreError> {
        PgStore::claims_page(self, after, i64::try_from(limit).unwrap_or(i64::MAX)).await
    }

    async fn pending_releases(&self, limit: usize) -> Result<Vec<Release>, StoreError> {
        PgStore::pending_releases(self, limit).await
    }

    async fn queue_releases(&self, releases: &[Release]) -> Result<(), StoreError> {
        PgStore::queue_releases(self, releases).await
    }

    async fn releases_done(&self, releases: &[Release]) -> Result<(), StoreError> {
        PgStore::releases_done(self, releases).await
    }

    async fn pending_release_count(&self) -> Result<u64, StoreError> {
        PgStore::pending_release_count(self).await
    }

    async fn held_claim(&self, link: &Link) -> Result<Option<u64>, StoreError> {
        PgStore::held_claim(self, link).await
    }

    async fn hold_claims(&self, claims: &[Release], announce: bool, now: i64) -> Result<Held, StoreError> {
        PgStore::hold_claims(self, claims, announce, now).await
    }

    async fn drop_links(
        &self,
        subject: &SubjectId,
        remove: &[(NormalizedIdentifier, Link)],
        kept_by: &RegionId,
        now: i64,
    ) -> Result<Dropped, StoreError> {
        PgStore::drop_links(self, subject, remove, kept_by, now).await
    }

    async fn subject_by_link(&self, link: &Link) -> Result<Option<SubjectId>, StoreError> {
        PgStore::subject_by_link(self, link).await
    }

    async fn subject_meta(&self, id: &SubjectId) -> Result<Option<SubjectMeta>, StoreError> {
        PgStore::subject_meta(self, id).await
    }

    async fn meta_by_link(&self, link: &Link) -> Result<Option<(SubjectId, Option<SubjectMeta>)>, StoreError> {
        PgStore::meta_by_link(self, link).await
    }

    async fn subject_record(&self, id: &SubjectId) -> Result<Option<SubjectRecord>, StoreError> {
        PgStore::subject_record(self, id).await
    }

    async fn subjects_after(&self, after: Option<SubjectId>, limit: usize) -> Result<Vec<SubjectId>, StoreError> {
        PgStore::subjects_after(self, after, limit).await
    }

    async fn append_consent(
        &self,
        subject: &SubjectId,
        consent: NewConsent,
        idempotency: Option<&Idempotency>,
    ) -> Result<(ConsentRecord, u64), StoreError> {
        PgStore::append_consent(self, subject, consent, idempotency).await
    }

    async fn current_consent(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        channel: Channel,
    ) -> Result<Option<CurrentConsent>, StoreError> {
        PgStore::current_consent(self, subject, purpose, channel).await
    }

    async fn sync_reads(&self) -> Result<(), StoreError> {
        PgStore::sync_reads(self).await
    }

    fn read_mark(&self) -> u64 {
        PgStore::read_mark(self)
    }

    async fn subjects_by_links(&self, links: &[Link]) -> Result<Vec<Option<SubjectId>>, StoreError> {
        PgStore::subjects_by_links(self, links).await
    }

    async fn decision_inputs_many(
        &self,
        items: &[(SubjectId, Purpose, Channel)],
    ) -> Result<Vec<Option<DecisionInputs>>, StoreError> {
        PgStore::decision_inputs_many(self, items).await
    }

    async fn decision_inputs(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        channel: Channel,
    ) -> Result<Option<(SubjectMeta, Option<CurrentConsent>)>, StoreError> {
        // One query for both (the trait's default makes two).
        PgStore::decision_inputs(self, subject, purpose, channel).await
    }

    async fn consent_history(&self, subject: &SubjectId) -> Result<Vec<ConsentRecord>, StoreError> {
        PgStore::consent_history(self, subject).await
    }

    async fn imported_positions(
        &self,
        subject: &SubjectId,
        sources: &[(String, String)],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        // From the index (`imports.rs`), not the whole ledger.
        PgStore::imported_positions(self, subject, sources).await
    }

    async fn consent_in_force(
        &self,
        subject: &SubjectId,
    ) -> Result<Vec<(Purpose, Channel, CurrentConsent)>, StoreError> {
        PgStore::consent_in_force(self, subject).await
    }

    async fn erase(
        &self,
        subject: &SubjectId,
        now: i64,
        rights_request: &RightsRequestRecord,
        idempotency: Option<&Idempotency>,
    ) -> Result<Erased, StoreError> {
        PgStore::erase(self, subject, now, rights_request, idempotency).await
    }

    async fn merge(
        &self,
        into: &SubjectId,
        from: &SubjectId,
        now: i64,
        idempotency: Option<&Idempotency>,
    ) -> Result<Merged, StoreError> {
        PgStore::merge(self, into, from, now, idempotency).await
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
        PgStore::unmerge(self, subject, from, kept, restored, now, idempotency).await
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
        PgStore::rectify(self, subject, change, now, rights_request, claimed, idempotency).await
    }

    async fn set_restricted(
        &self,
        subject: &SubjectId,
        restricted: bool,
        rights_request: &RightsRequestRecord,
        idempotency: Option<&Idempotency>,
    ) -> Result<crate::store::RestrictionSet, StoreError> {
        PgStore::set_restricted(self, subject, restricted, rights_request, idempotency).await
    }

    async fn append_interaction(
        &self,
        subject: &SubjectId,
        interaction: NewInteraction,
        idempotency: Option<&Idempotency>,
    ) -> Result<Interaction, StoreError> {
        PgStore::append_interaction(self, subject, interaction, idempotency).await
    }

    async fn interactions(&self, subject: &SubjectId) -> Result<Vec<Interaction>, StoreError> {
        PgStore::interactions(self, subject).await
    }

    async fn append_rights_request(
        &self,
        subject: &SubjectId,
        request: &RightsRequestRecord,
    ) -> Result<(), StoreError> {
        PgStore::append_rights_request(self, subject, request).await
    }

    async fn rights_requests(&self, subject: &SubjectId) -> Result<Vec<RightsRequestRecord>, StoreError> {
        PgStore::rights_requests(self, subject).await
    }

    async fn track_request(
        &self,
        request: &TrackedRequest,
        expected: Option<&TrackedRequest>,
        outbox: OutboxChange<'_>,
        at: i64,
        idempotency: Option<&Idempotency>,
    ) -> Result<(), StoreError> {
        PgStore::track_request(self, request, expected, outbox, at, idempotency).await
    }

    async fn tracked_request(&self, request_id: &str) -> Result<Option<TrackedRequest>, StoreError> {
        PgStore::tracked_request(self, request_id).await
    }

    async fn tracked_requests(&self) -> Result<Vec<TrackedRequest>, StoreError> {
        PgStore::tracked_requests(self).await
    }

    async fn tracked_requests_of(&self, subject: &SubjectId) -> Result<Vec<TrackedRequest>, StoreError> {
        PgStore::tracked_requests_of(self, subject).await
    }

    async fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        PgStore::outbox(self, limit).await
    }

    async fn remove_outbox(&self, request_ids: &[String]) -> Result<usize, StoreError> {
        PgStore::remove_outbox(self, request_ids).await
    }

    async fn links_page(
        &self,
        first_bytes: std::ops::RangeInclusive<u8>,
        after: Option<Link>,
        limit: usize,
    ) -> Result<Vec<(Link, SubjectId)>, StoreError> {
        PgStore::links_page(self, first_bytes, after, i64::try_from(limit).unwrap_or(i64::MAX)).await
    }

    async fn events_page(&self, after: Option<u64>, limit: usize) -> Result<Vec<ChangeEvent>, StoreError> {
        PgStore::events_page(self, after, i64::try_from(limit).unwrap_or(i64::MAX)).await
    }

    async fn last_event(&self) -> Result<Option<u64>, StoreError> {
        PgStore::last_event(self).await
    }

    fn shared(&self) -> bool {
        true
    }

    async fn counts(&self) -> Result<(u64, u64), StoreError> {
        PgStore::counts(self).await
    }

    async fn audit(&self, event: AuditEvent, subject: &SubjectId, at: i64) -> Result<(), StoreError> {
        PgStore::audit(self, event, subject, at).await
    }

    async fn audit_decisions(&self, entries: &[DecisionEntry<'_>], at: i64) -> Result<(), StoreError> {
        PgStore::audit_decisions(self, entries, at).await
    }

    async fn audit_decisions_if_current(
        &self,
        entries: &[DecisionEntry<'_>],
        read: &[SubjectId],
        at: i64,
        mark: u64,
    ) -> Result<Audited, StoreError> {
        PgStore::audit_decisions_if_current(self, entries, read, at, mark).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every write is durable at its commit.
        Ok(())
    }
}
