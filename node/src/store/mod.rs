//! Storage behind a trait, so a region can move from sled to another engine without touching the
//! gRPC layer. Every mutating call returns only once the change is durable (invariant 7).

mod sled_store;

pub use sled_store::SledStore;

use domicile_types::{Channel, ConsentState, Jurisdiction, Link, NormalizedIdentifier, Purpose, SubjectId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The identifiers of one request already belong to different subjects.
    #[error("identifiers belong to different subjects")]
    Conflict,
    /// An identifier already belongs to a subject of another jurisdiction.
    #[error("identifier belongs to a subject of another jurisdiction")]
    JurisdictionMismatch,
    #[error("storage failure: {0}")]
    Backend(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

/// What a node keeps about a subject.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SubjectRecord {
    pub jurisdiction: Jurisdiction,
    pub identifiers: Vec<NormalizedIdentifier>,
    pub created_at: i64,
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
    fn subject(&self, id: &SubjectId) -> Result<Option<SubjectRecord>, StoreError>;

    /// Appends to the ledger and updates the current state; returns the record as stored.
    fn append_consent(&self, subject: &SubjectId, consent: NewConsent) -> Result<ConsentRecord, StoreError>;
    fn current_consent(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
        channel: Channel,
    ) -> Result<Option<CurrentConsent>, StoreError>;
    fn consent_history(&self, subject: &SubjectId) -> Result<Vec<ConsentRecord>, StoreError>;

    /// Every (link, subject) pair, for rebuilding gateway directories.
    fn links(&self) -> Box<dyn Iterator<Item = Result<(Link, SubjectId), StoreError>> + Send>;
    fn counts(&self) -> Result<(u64, u64), StoreError>;

    /// Makes every change so far durable. Called before acknowledging a write.
    fn flush(&self) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
}
