//! Storage behind a trait, so a region can move from sled to another engine without touching the
//! gRPC layer. Every mutating call is durable once `flush` returns (invariant 7), and personal data
//! is encrypted per subject at rest so erasure can destroy it (invariant 6).

mod change;
pub(crate) mod codec;
pub mod pg_store;
mod sled_store;
pub mod vault;

pub use change::{Change, ChangeEvent, Recorded};
pub use sled_store::SledStore;

use std::collections::BTreeMap;

use domicile_types::{Channel, ConsentState, Jurisdiction, Link, NormalizedIdentifier, Purpose, RegionId, SubjectId};

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
    /// A write's commit went unanswered (a database connection lost during it): it may or may
    /// not have been made; a retry with its idempotency key settles it.
    #[error("the write's commit went unanswered")]
    OutcomeUnknown,
    /// The write's audit entries could not be appended: the write was not stored (invariant 5).
    #[error("audit log: {0}")]
    Audit(domicile_audit::AuditError),
}

/// What a node keeps about a subject outside the encrypted record: enough to route and decide,
/// nothing that identifies the person.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubjectMeta {
    /// As recorded: a subdivision stored before codes were checked (or since withdrawn from
    /// ISO 3166-2) stays readable, and its decisions fall back to the country's pack, saying so.
    #[serde(deserialize_with = "Jurisdiction::deserialize_recorded")]
    pub jurisdiction: Jurisdiction,
    pub created_at: i64,
    /// Processing restricted (GDPR Art. 18): decisions deny until lifted.
    #[serde(default)]
    pub restricted: bool,
}

/// The subject's personal data. Stored only encrypted with the subject's key.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubjectRecord {
    pub identifiers: Vec<NormalizedIdentifier>,
    /// Free-form profile fields (name, language, …), personal data.
    #[serde(default)]
    pub profile: BTreeMap<String, String>,
}

/// How a consent was captured.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Evidence {
    pub notice_version: String,
    pub capture_channel: Option<Channel>,
    pub source_system: String,
    pub double_opt_in_confirmed: bool,
}

/// One entry of the append-only consent ledger.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsentRecord {
    pub sequence: u64,
    pub purpose: Purpose,
    pub channels: Vec<Channel>,
    pub state: ConsentState,
    pub captured_at: i64,
    pub recorded_at: i64,
    pub expires_at: Option<i64>,
    pub evidence: Evidence,
}

/// The record currently in force for one purpose × channel, kept beside the ledger so a decision
/// costs one point read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CurrentConsent {
    pub sequence: u64,
    pub state: ConsentState,
    pub captured_at: i64,
    pub expires_at: Option<i64>,
    pub double_opt_in_confirmed: bool,
    /// When the node recorded it; absent in records stored before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<i64>,
    /// The time the record counts at when ordered ([`counted_at_ms`]), in milliseconds; absent in
    /// records stored before it was kept (their capture time then counts as it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_at_ms: Option<i64>,
}

/// How far a capture time may lie from the time a node records it, either way, before it is
/// refused (ahead) or trusted as an order (behind). Clocks of capture systems drift; within this
/// window the order of two records cannot be told from their capture times.
pub const CLOCK_SKEW_SECS: i64 = 300;

/// The time a record counts at when records are ordered, in milliseconds (policy-packs/README.md,
/// "Order of consent records"):
/// - a capture cannot have happened after the node recorded it, so a capture time ahead of the
///   recording counts as the recording time (a future-dated grant cannot outrank a withdrawal
///   recorded before it);
/// - a withdrawal or denial captured within [`CLOCK_SKEW_SECS`] before its recording counts as
///   recorded: its capture time may be skewed, and an acknowledged withdrawal must beat every
///   grant recorded before it (invariant 4);
/// - otherwise (a grant, or a restriction captured long before it was entered) the capture time.
pub fn counted_at_ms(state: ConsentState, captured_at_ms: i64, recorded_at_ms: i64) -> i64 {
    let restrictive = !matches!(state, ConsentState::Granted);
    if restrictive && captured_at_ms >= recorded_at_ms.saturating_sub(CLOCK_SKEW_SECS * 1000) {
        recorded_at_ms
    } else {
        captured_at_ms.min(recorded_at_ms)
    }
}

impl CurrentConsent {
    /// The time this record counts at when ordered against another ([`counted_at_ms`]).
    pub fn counted_at_ms(&self) -> i64 {
        self.counted_at_ms.unwrap_or_else(|| self.captured_at.saturating_mul(1000))
    }

    /// Whether `self` (a newly appended record) replaces `existing` as the one in force.
    /// The later counted time wins ([`counted_at_ms`]), whatever order records arrive in, so an
    /// old grant replayed after a withdrawal never revives consent, nor does a grant dated in the
    /// future. At equal times the more restrictive wins, then the later recorded.
    ///
    /// One exception, for capture systems that stamp whole seconds (or run a little slow): a grant
    /// recorded after a withdrawal or denial, and captured in the same second that restriction was
    /// recorded or later, is a re-grant and wins, though its capture time in milliseconds may lie
    /// just before the restriction's recording. A grant captured in an earlier second (a replay,
    /// a clock further behind) still loses.
    pub fn supersedes(&self, existing: &CurrentConsent) -> bool {
        let restrictiveness = |s: ConsentState| match s {
            ConsentState::Granted => 0,
            ConsentState::Denied | ConsentState::Withdrawn => 1,
        };
        let regrant = self.state == ConsentState::Granted
            && existing.state != ConsentState::Granted
            && self.sequence > existing.sequence
            && existing.recorded_at.is_some_and(|recorded| self.captured_at >= recorded);
        regrant
            || (self.counted_at_ms(), restrictiveness(self.state), self.sequence)
                > (existing.counted_at_ms(), restrictiveness(existing.state), existing.sequence)
    }
}

/// Outcome of a registration.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Registered {
    pub subject: SubjectId,
    pub links: Vec<Link>,
    pub created: bool,
    /// Sequence of the change event, if new links were added.
    pub event: Option<u64>,
}

/// A new consent record before the store assigns its sequence number.
#[derive(Debug, Clone)]
pub struct NewConsent {
    pub purpose: Purpose,
    pub channels: Vec<Channel>,
    pub state: ConsentState,
    pub captured_at: i64,
    pub recorded_at: i64,
    /// The time the record counts at when ordered ([`counted_at_ms`]).
    pub counted_at_ms: i64,
    pub expires_at: Option<i64>,
    pub evidence: Evidence,
}

/// What erasure removed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Erased {
    /// Empty in a replayed result: nothing of the subject is kept, its links neither.
    pub links: Vec<Link>,
    pub consent_records: usize,
    pub event: u64,
    pub at: i64,
    pub rights_request: RightsRequestRecord,
}

/// What a channel interaction was. A closed vocabulary, so context stays comparable across
/// channel systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InteractionKind {
    Message,
    Call,
    Email,
    Visit,
    SurveyResponse,
    Purchase,
    Complaint,
}

impl InteractionKind {
    pub const ALL: &'static [InteractionKind] = &[
        InteractionKind::Message,
        InteractionKind::Call,
        InteractionKind::Email,
        InteractionKind::Visit,
        InteractionKind::SurveyResponse,
        InteractionKind::Purchase,
        InteractionKind::Complaint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InteractionKind::Message => "message",
            InteractionKind::Call => "call",
            InteractionKind::Email => "email",
            InteractionKind::Visit => "visit",
            InteractionKind::SurveyResponse => "survey_response",
            InteractionKind::Purchase => "purchase",
            InteractionKind::Complaint => "complaint",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == text)
    }
}

/// A channel interaction before the store assigns its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInteraction {
    pub channel: Channel,
    pub occurred_at: i64,
    pub recorded_at: i64,
    pub kind: InteractionKind,
    pub intent: String,
    /// Personal data.
    pub summary: String,
    pub reference: String,
    pub open: bool,
}

/// One entry of a subject's interaction log. Stored only sealed with the subject's key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Interaction {
    pub sequence: u64,
    pub channel: Channel,
    pub occurred_at: i64,
    pub recorded_at: i64,
    pub kind: InteractionKind,
    pub intent: String,
    pub summary: String,
    pub reference: String,
    pub open: bool,
}

/// The bookkeeping of one rights request (export, rectification, restriction). Vocabulary values
/// as text so the stored format does not depend on the audit module's enums.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RightsRequestRecord {
    pub request_id: String,
    pub kind: String,
    pub received_at: i64,
    pub deadline_at: i64,
    pub status: String,
    pub deadline_basis: String,
    pub completed_at: Option<i64>,
}

/// What a merge moved.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Merged {
    /// The subject merged into the other and gone.
    pub from: SubjectId,
    /// Links that named `from` and now name `into`.
    pub links: Vec<Link>,
    pub consent_records: usize,
    pub interactions: usize,
    /// Sequence of the last change event (the REGISTERED one for `into`).
    pub event: u64,
}

/// A rectification of identifiers and profile fields.
#[derive(Debug, Clone, Default)]
pub struct Rectification {
    pub add: Vec<(NormalizedIdentifier, Link)>,
    pub remove: Vec<(NormalizedIdentifier, Link)>,
    pub set_profile: BTreeMap<String, String>,
    pub remove_profile: Vec<String>,
}

/// What a rectification changed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Rectified {
    pub added: Vec<Link>,
    pub removed: Vec<Link>,
    /// Sequence of the last change event, if links changed.
    pub event: Option<u64>,
    pub rights_request: RightsRequestRecord,
}

/// A write's idempotency: the key it was sent with and the fingerprint of the request (keyed
/// hashes the service computes, so neither reveals the request), kept with the write's result in
/// the same transaction, so a repeated request is applied once (issue: unknown outcomes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotency {
    pub key: [u8; 32],
    pub fingerprint: [u8; 32],
    pub at: i64,
}

/// What an earlier write with the same idempotency key left. Its result is the pair of the
/// write's subject and what the store method returned (for a restriction: the flag and the
/// rights request; for an erasure: [`Erased`] without its links).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    pub fingerprint: [u8; 32],
    pub at: i64,
    /// The write's result as the store returned it (encoded), or `None` when it can no longer be
    /// read: it was sealed with the key of a subject erased since.
    pub result: Option<Vec<u8>>,
}

/// A region's claim on a link, as the link's arbiter keeps it (ARCHITECTURE.md, "Identifier
/// ownership").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub region: RegionId,
    /// The highest fencing generation the region claimed it with.
    pub generation: u64,
}

/// A link this region claimed and must give up at its arbiter (a link removed by erasure or
/// rectification, or claimed for a write that did not complete).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release {
    pub link: Link,
    pub generation: u64,
}

/// What [`Store::hold_claims`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    /// Links this region holds whose claims are now recorded.
    pub held: Vec<Link>,
    /// Claims on links no subject of this region holds any more (removed since they were
    /// claimed): queued for release instead.
    pub gone: Vec<Release>,
    /// Change events emitted to announce the held links (one per subject) and the last one's
    /// sequence.
    pub announced: usize,
    pub event: Option<u64>,
}

/// What [`Store::drop_links`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    pub removed: Vec<Link>,
    /// Links the subject still holds.
    pub left: usize,
    /// Sequence of the LINKS_REMOVED change event, if links were removed.
    pub event: Option<u64>,
}

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
    ) -> Result<Registered, StoreError>;

    /// The result of an earlier write made with idempotency key `key`, if one was recorded.
    fn replay(&self, key: &[u8; 32]) -> Result<Option<Replay>, StoreError>;
    /// Forgets idempotency records made before `before`; returns how many.
    fn purge_idempotency(&self, before: i64) -> Result<usize, StoreError>;

    /// A new fencing generation for this region's claims: greater than every one before, also
    /// across restarts.
    fn next_generation(&self) -> Result<u64, StoreError>;
    /// As the arbiter of `links`: claims each for `region` unless another region holds it.
    /// Returns, per link, `None` when the claim is granted (the link was free or already the
    /// region's; the claim's generation becomes the higher of the two) or the region holding it.
    fn claim_links(
        &self,
        region: &RegionId,
        generation: u64,
        links: &[Link],
    ) -> Result<Vec<Option<RegionId>>, StoreError>;
    /// As the arbiter: gives up each claim held by `region` whose generation is not above the
    /// release's (a later claim of the region outranks an earlier release). Returns how many.
    fn release_links(&self, region: &RegionId, releases: &[Release]) -> Result<usize, StoreError>;
    /// As the arbiter: the claim on `link`, if any.
    fn claim(&self, link: &Link) -> Result<Option<Claim>, StoreError>;
    /// As the arbiter: every claim kept, in link order.
    fn claims(&self) -> Box<dyn Iterator<Item = Result<(Link, Claim), StoreError>> + Send>;
    /// Releases this region still has to send to arbiters, oldest first, at most `limit`.
    fn pending_releases(&self, limit: usize) -> Result<Vec<Release>, StoreError>;
    /// Queues releases (for claims granted to a write that did not complete).
    fn queue_releases(&self, releases: &[Release]) -> Result<(), StoreError>;
    /// Forgets releases the arbiters have answered.
    fn releases_done(&self, releases: &[Release]) -> Result<(), StoreError>;
    /// How many releases are waiting.
    fn pending_release_count(&self) -> Result<u64, StoreError>;

    /// The generation of this region's recorded claim on a link it holds (`held`), if any: links
    /// stored before claims existed have none.
    fn held_claim(&self, link: &Link) -> Result<Option<u64>, StoreError>;
    /// Records claims granted for links this region already holds (`ReassertClaims`): a link a
    /// subject here still holds gets its claim recorded (the higher generation, as a write
    /// would), so its removal releases it; a link no subject holds any more (erased or removed
    /// since) gets its claim queued for release instead. With `announce`, emits a REGISTERED
    /// change event per subject for its held links, so followers map them to it again.
    fn hold_claims(&self, claims: &[Release], announce: bool, now: i64) -> Result<Held, StoreError>;
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
    ) -> Result<Dropped, StoreError>;

    fn subject_by_link(&self, link: &Link) -> Result<Option<SubjectId>, StoreError>;
    fn subject_meta(&self, id: &SubjectId) -> Result<Option<SubjectMeta>, StoreError>;
    /// The decrypted personal record; `None` if the subject does not exist or was erased.
    fn subject_record(&self, id: &SubjectId) -> Result<Option<SubjectRecord>, StoreError>;

    /// Appends to the ledger (at the next ledger position) and updates the current state;
    /// returns the record as stored and the sequence of its change event.
    fn append_consent(
        &self,
        subject: &SubjectId,
        consent: NewConsent,
        idempotency: Option<&Idempotency>,
    ) -> Result<(ConsentRecord, u64), StoreError>;
    fn current_consent(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        channel: Channel,
    ) -> Result<Option<CurrentConsent>, StoreError>;
    /// What a decision reads: the subject's metadata and the consent in force for one
    /// purpose × channel; `None` for an unknown subject. One call, so a store can serve both from
    /// one lookup.
    fn decision_inputs(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        channel: Channel,
    ) -> Result<Option<(SubjectMeta, Option<CurrentConsent>)>, StoreError> {
        let Some(meta) = self.subject_meta(subject)? else { return Ok(None) };
        Ok(Some((meta, self.current_consent(subject, purpose, channel)?)))
    }
    fn consent_history(&self, subject: &SubjectId) -> Result<Vec<ConsentRecord>, StoreError>;
    /// The record in force per purpose × channel (what decisions read), in purpose, channel order.
    fn consent_in_force(&self, subject: &SubjectId) -> Result<Vec<(Purpose, Channel, CurrentConsent)>, StoreError>;

    /// Destroys the subject's key, then removes its records, links and current state; queues the
    /// releases of the subject's claimed links. `rights_request` is the erasure request (kept in
    /// the result only, as the subject goes).
    fn erase(
        &self,
        subject: &SubjectId,
        now: i64,
        rights_request: &RightsRequestRecord,
        idempotency: Option<&Idempotency>,
    ) -> Result<Erased, StoreError>;

    /// Moves everything of `from` (identifiers, profile, links, consent ledger, interactions,
    /// rights requests) into `into`, re-sealed with `into`'s key; the current state per purpose ×
    /// channel becomes whichever record `CurrentConsent::supersedes` the other; then `from` is
    /// erased (key destroyed). Emits ERASED for `from`'s links, then REGISTERED for `into`.
    fn merge(
        &self,
        into: &SubjectId,
        from: &SubjectId,
        now: i64,
        idempotency: Option<&Idempotency>,
    ) -> Result<Merged, StoreError>;

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
    ) -> Result<Rectified, StoreError>;

    /// Sets or lifts the restriction of processing and records `rights_request` with it.
    fn set_restricted(
        &self,
        subject: &SubjectId,
        restricted: bool,
        rights_request: &RightsRequestRecord,
        idempotency: Option<&Idempotency>,
    ) -> Result<RightsRequestRecord, StoreError>;

    fn append_interaction(
        &self,
        subject: &SubjectId,
        interaction: NewInteraction,
        idempotency: Option<&Idempotency>,
    ) -> Result<Interaction, StoreError>;
    /// The subject's interactions in recording order.
    fn interactions(&self, subject: &SubjectId) -> Result<Vec<Interaction>, StoreError>;

    fn append_rights_request(&self, subject: &SubjectId, request: &RightsRequestRecord) -> Result<(), StoreError>;
    /// The subject's rights requests in recording order.
    fn rights_requests(&self, subject: &SubjectId) -> Result<Vec<RightsRequestRecord>, StoreError>;

    /// Every (link, subject) pair whose link starts with a byte in `first_bytes`, in link order,
    /// for rebuilding gateway directories. Links are keyed hashes, so equal byte ranges hold about
    /// equal shares: disjoint ranges can be scanned in parallel.
    fn links(
        &self,
        first_bytes: std::ops::RangeInclusive<u8>,
    ) -> Box<dyn Iterator<Item = Result<(Link, SubjectId), StoreError>> + Send>;
    /// Change events with a sequence number greater than `after` (all, if `None`), in order.
    /// Events become visible in sequence order: writers allocate and insert them one at a time.
    fn events_after(&self, after: Option<u64>) -> Box<dyn Iterator<Item = Result<ChangeEvent, StoreError>> + Send>;
    /// The highest event sequence stored, if any.
    fn last_event(&self) -> Result<Option<u64>, StoreError>;
    fn counts(&self) -> Result<(u64, u64), StoreError>;

    /// Appends an audit entry about `subject` that records no stored change (a transfer of its
    /// data). Every write appends its own entries in its transaction ([`Recorded`]).
    fn audit(&self, event: domicile_audit::AuditEvent, subject: &SubjectId, at: i64) -> Result<(), StoreError>;
    /// Appends decisions to the audit log in batch entries.
    fn audit_decisions(&self, entries: &[domicile_audit::DecisionEntry<'_>], at: i64) -> Result<(), StoreError>;

    /// Makes every change so far durable, audit entries included. Called before acknowledging a
    /// write.
    fn flush(&self) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
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
