//! Storage behind a trait, so a region can move from sled to another engine without touching the
//! gRPC layer. Every mutating call is durable once `flush` returns (invariant 7), and personal data
//! is encrypted per subject at rest so erasure can destroy it (invariant 6).

mod sled_store;
pub mod vault;

pub use sled_store::SledStore;

use std::collections::BTreeMap;

use domicile_types::{Channel, ConsentState, Jurisdiction, Link, NormalizedIdentifier, Purpose, SubjectId};

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
    #[error("storage failure: {0}")]
    Backend(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
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
}

impl CurrentConsent {
    /// Whether `self` (a newly appended record) replaces `existing` as the one in force.
    /// Later capture wins, whatever order records arrive in, so an old grant replayed after a
    /// withdrawal never revives consent. At equal capture times the more restrictive wins.
    pub fn supersedes(&self, existing: &CurrentConsent) -> bool {
        let restrictiveness = |s: ConsentState| match s {
            ConsentState::Granted => 0,
            ConsentState::Denied | ConsentState::Withdrawn => 1,
        };
        (self.captured_at, restrictiveness(self.state), self.sequence)
            > (existing.captured_at, restrictiveness(existing.state), existing.sequence)
    }
}

/// Outcome of a registration.
#[derive(Debug, Clone)]
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
    pub expires_at: Option<i64>,
    pub evidence: Evidence,
}

/// What erasure removed.
#[derive(Debug, Clone)]
pub struct Erased {
    pub links: Vec<Link>,
    pub consent_records: usize,
    pub event: u64,
}

/// A pseudonymous change, as watchers see it. Carries links and vocabulary values only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeEvent {
    pub sequence: u64,
    pub at: i64,
    pub subject: SubjectId,
    pub links: Vec<Link>,
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Change {
    Registered,
    Consent {
        purpose: Purpose,
        channels: Vec<Channel>,
        state: ConsentState,
    },
    Erased,
    /// Identifiers were removed from a subject that remains (rectification).
    LinksRemoved,
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
#[derive(Debug, Clone)]
pub struct Merged {
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
#[derive(Debug, Clone)]
pub struct Rectified {
    pub added: Vec<Link>,
    pub removed: Vec<Link>,
    /// Sequence of the last change event, if links changed.
    pub event: Option<u64>,
}

pub trait Store: Send + Sync + 'static {
    /// Stores a subject with its identifiers (already normalised, with their links), or adds new
    /// identifiers to the one subject that already holds some of them.
    fn register(
        &self,
        jurisdiction: &Jurisdiction,
        identifiers: &[(NormalizedIdentifier, Link)],
        new_subject: SubjectId,
        now: i64,
    ) -> Result<Registered, StoreError>;

    fn subject_by_link(&self, link: &Link) -> Result<Option<SubjectId>, StoreError>;
    fn subject_meta(&self, id: &SubjectId) -> Result<Option<SubjectMeta>, StoreError>;
    /// The decrypted personal record; `None` if the subject does not exist or was erased.
    fn subject_record(&self, id: &SubjectId) -> Result<Option<SubjectRecord>, StoreError>;

    /// Appends to the ledger and updates the current state; returns the record as stored and the
    /// sequence of its change event.
    fn append_consent(&self, subject: &SubjectId, consent: NewConsent) -> Result<(ConsentRecord, u64), StoreError>;
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

    /// Destroys the subject's key, then removes its records, links and current state.
    fn erase(&self, subject: &SubjectId, now: i64) -> Result<Erased, StoreError>;

    /// Moves everything of `from` (identifiers, profile, links, consent ledger, interactions,
    /// rights requests) into `into`, re-sealed with `into`'s key; the current state per purpose ×
    /// channel becomes whichever record `CurrentConsent::supersedes` the other; then `from` is
    /// erased (key destroyed). Emits ERASED for `from`'s links, then REGISTERED for `into`.
    fn merge(&self, into: &SubjectId, from: &SubjectId, now: i64) -> Result<Merged, StoreError>;

    /// Adds and removes identifiers (re-linking them) and sets or removes profile fields, all or
    /// nothing. Emits LINKS_REMOVED for removed links and REGISTERED for added ones.
    fn rectify(&self, subject: &SubjectId, change: &Rectification, now: i64) -> Result<Rectified, StoreError>;

    /// Sets or lifts the restriction of processing.
    fn set_restricted(&self, subject: &SubjectId, restricted: bool) -> Result<(), StoreError>;

    fn append_interaction(&self, subject: &SubjectId, interaction: NewInteraction) -> Result<Interaction, StoreError>;
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

    /// Makes every change so far durable. Called before acknowledging a write.
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
