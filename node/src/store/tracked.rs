//! Tracked rights requests (ARCHITECTURE.md, "Rights requests"): the region-wide, PII-free index
//! of requests and where each stands, and the outbox of challenges the region's delivery system
//! sends. A tracked request names its subject by pseudonymous id only and holds its challenge as a
//! keyed digest, never the code; the outbox's delivery (identifier and code) is personal data,
//! sealed under the subject's key like the rest, so an erasure makes it unreadable and removes it.

use domicile_types::SubjectId;

use super::RightsRequestRecord;

/// A rights request and where it stands; no personal data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrackedRequest {
    pub subject: SubjectId,
    pub record: RightsRequestRecord,
    /// The one-time challenge while the request is being verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<Challenge>,
    /// The digest of the code that verified the request (`Challenge::digest`): an answer repeated
    /// later is `verified` only with that code, so a request verified by one requester never
    /// reads as verified to another who holds its id but not its code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_by: Option<String>,
    /// Wrong codes sent through this request while it is linked to another (checked against that
    /// one's challenge): counted here, so a linked request's opener refuses only its own request,
    /// never the other requester's (`rights/verify.rs`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub linked_failures: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TrackedRequest {
    /// A request as opened: no answer yet.
    pub fn new(subject: SubjectId, record: RightsRequestRecord, challenge: Option<Challenge>) -> Self {
        Self { subject, record, challenge, verified_by: None, linked_failures: 0 }
    }

    /// Refused with `reason` (a reason code) at `now`: closed, its challenge gone.
    pub fn refuse(&mut self, reason: &str, now: i64) {
        self.record.status = domicile_types::rights::RightsStatus::Refused.as_str().to_owned();
        self.record.reason = Some(reason.to_owned());
        self.record.completed_at = Some(now);
        self.challenge = None;
    }
}

/// A one-time challenge: the code's keyed digest (hex), never the code.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Challenge {
    pub digest: String,
    pub expires_at: i64,
    /// Wrong answers so far.
    pub failures: u32,
    /// Wrong answers that refuse the request.
    pub max_failures: u32,
}

/// A challenge waiting for the region's delivery system: which request, whose, until when, and
/// what to send where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub request_id: String,
    pub subject: SubjectId,
    pub created_at: i64,
    pub expires_at: i64,
    pub delivery: Delivery,
}

/// What the delivery system sends: personal data, sealed at rest under the subject's key.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Delivery {
    /// The identifier's kind (`email`, `phone`, …) and normalised value.
    pub kind: String,
    pub value: String,
    /// The one-time code in clear.
    pub code: String,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// What a tracked write does to the outbox beside the request.
#[derive(Debug, Clone, Copy)]
pub enum OutboxChange<'a> {
    Keep,
    /// Adds the request's challenge.
    Put(&'a OutboxEntry),
    /// Removes the request's entry (answered, refused or expired), if there is one.
    Remove,
}

/// The outbox entry's stored form: pseudonymous fields in clear, the delivery sealed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredOutbox {
    pub subject: SubjectId,
    pub created_at: i64,
    pub expires_at: i64,
    /// Hex of the sealed [`Delivery`].
    pub sealed: String,
}
