//! The values a store keeps and returns: subjects, consent records, interactions, rights
//! bookkeeping, claims. Plain data, shared by every engine (sled, PostgreSQL) and the service.

use std::collections::BTreeMap;

use domicile_types::{Channel, ConsentState, Jurisdiction, Link, NormalizedIdentifier, Purpose, RegionId, SubjectId};

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
    /// The merges that made this subject, oldest first: what each merged-away subject brought,
    /// so an unmerge can split it back out ([`crate::store::split`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lineage: Vec<MergeLineage>,
    /// When each identifier added after the subject was created (by a later registration, a
    /// rectification or a merge) was added, by its link; identifiers the subject was created with
    /// are absent. A rights challenge is not delivered through one added recently: whoever
    /// attached it may not be the person.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub added_at: BTreeMap<Link, i64>,
}

/// What one merge brought into the subject that remains, kept (sealed with its record) so the
/// merge can be undone: the merged-away subject's identifiers, links, profile and metadata, and
/// the positions of both halves' log entries at the time of the merge. An entry at a position
/// neither half held is later than the merge.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MergeLineage {
    /// The id the merged-away subject had (its key was destroyed by the merge; an unmerge gives
    /// it a new id and key).
    pub from: SubjectId,
    pub merged_at: i64,
    pub identifiers: Vec<NormalizedIdentifier>,
    pub links: Vec<Link>,
    /// The remaining subject's links at the merge: an entry captured since through a link in
    /// neither list (an identifier added since) cannot be attributed.
    #[serde(default)]
    pub into_links: Vec<Link>,
    /// Whether `into_links` was recorded (every merge since it was): a lineage without it cannot
    /// tell an identifier added since the merge from one the remaining subject held; one with it
    /// can, even when the remaining subject held no link at the merge.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub into_links_recorded: bool,
    /// The merged-away subject's profile as it was.
    pub profile: BTreeMap<String, String>,
    /// Profile fields only the merged-away subject had, which the merge added to the remaining
    /// one (removed again by an unmerge if still unchanged).
    pub added_fields: BTreeMap<String, String>,
    pub from_created_at: i64,
    pub into_created_at: i64,
    pub from_restricted: bool,
    pub from_positions: LogPositions,
    pub into_positions: LogPositions,
    /// The merged-away subject's own lineage (it may have been made by merges too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nested: Vec<MergeLineage>,
    /// The merged-away subject's [`SubjectRecord::added_at`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub added_at: BTreeMap<Link, i64>,
}

/// Positions of a subject's entries in its three logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogPositions {
    pub consent: Vec<u64>,
    pub interactions: Vec<u64>,
    pub rights: Vec<u64>,
}

/// How a consent was captured.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Evidence {
    pub notice_version: String,
    pub capture_channel: Option<Channel>,
    pub source_system: String,
    pub double_opt_in_confirmed: bool,
    /// The web consent signal this entry came from (`RecordSignal`); absent on older entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalEvidence>,
    /// What the consent rests on (a pack's consent kind, e.g. `implied_purchase`); absent: express.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_kind: Option<String>,
    /// Ids of the subject's pack's calling windows the consent is limited to; empty: every hour.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hours: Vec<String>,
    /// The pack whose windows `hours` name (set with them): under another pack they cover nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours_pack: Option<String>,
    /// Set on entries `domicile import` brought from another system: where they came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportEvidence>,
    /// The link of the identifier the entry was captured through (absent when the caller named
    /// the subject by its ref): decides which half keeps the entry if a merge is undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_via: Option<Link>,
}

/// What an imported entry's idempotency record keeps: its ledger position, all an import
/// answers a repeat with. A full [`ConsentRecord`] (the record of an entry written by the capture
/// path) reads as one too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportedEntry {
    pub sequence: u64,
}

/// Where an imported ledger entry came from. The entry keeps the source's capture time; the
/// pair (source system, event id) is applied once.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportEvidence {
    pub source_system: String,
    pub source_event_id: String,
    /// The purpose-mapping file's version the entry was mapped with.
    pub mapping_version: String,
    /// Whether watchers were told (`--broadcast`); otherwise the entry is not announced.
    pub broadcast: bool,
}

/// A web consent signal kept as evidence with the entries it produced: what it was, who
/// captured it, what gave it its meaning, and the string itself (sealed with the entry; it never
/// leaves the home region).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignalEvidence {
    /// `tcf`, `gpp` or `gpc`.
    pub kind: String,
    pub cmp_id: u32,
    pub cmp_version: u32,
    pub vendor_list_version: u32,
    pub policy_version: u32,
    pub gpp_sections: Vec<u32>,
    /// The pack's citation for the meaning given to the signal.
    pub cite: String,
    /// The TC or GPP string as received (`Sec-GPC: 1` for GPC).
    pub raw: String,
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
    /// The time the entry counts at when ordered ([`counted_at_ms`]); absent on entries stored
    /// before it was kept (recomputed from their times, [`ConsentRecord::counted_at_ms`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_at_ms: Option<i64>,
    /// Kept with both halves of an unmerge because the identifier it was captured through is not
    /// known: to be reviewed. A grant so marked counts for neither half (fail closed); a denial
    /// or withdrawal counts for both.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub review: bool,
}

impl ConsentRecord {
    /// The time the entry counts at when ordered ([`counted_at_ms`]).
    pub fn counted_at_ms(&self) -> i64 {
        self.counted_at_ms.unwrap_or_else(|| {
            counted_at_ms(self.state, self.captured_at.saturating_mul(1000), self.recorded_at.saturating_mul(1000))
        })
    }
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
    /// The record's consent kind ([`Evidence::consent_kind`]); absent: express.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The hours the record is limited to ([`Evidence::hours`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hours: Vec<String>,
    /// The pack whose windows `hours` name ([`Evidence::hours_pack`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours_pack: Option<String>,
}

impl CurrentConsent {
    /// The candidate for the record in force that a newly appended ledger entry makes, counted
    /// at `counted_at_ms` (both engines store this, sealed, per channel the entry covers).
    pub fn of(record: &ConsentRecord, counted_at_ms: i64) -> Self {
        Self {
            sequence: record.sequence,
            state: record.state,
            captured_at: record.captured_at,
            expires_at: record.expires_at,
            double_opt_in_confirmed: record.evidence.double_opt_in_confirmed,
            recorded_at: Some(record.recorded_at),
            counted_at_ms: Some(counted_at_ms),
            kind: record.evidence.consent_kind.clone(),
            hours: record.evidence.hours.clone(),
            hours_pack: record.evidence.hours_pack.clone(),
        }
    }
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
    /// Whether this record in force is a grant not yet lapsed at `at` (seconds): what a change
    /// event may announce as `granted` (`change::announced`).
    pub fn grants_at(&self, at: i64) -> bool {
        self.state == ConsentState::Granted && self.expires_at.is_none_or(|expires| expires > at)
    }

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
    /// The link of the identifier the interaction was recorded through ([`Evidence::captured_via`]).
    pub via: Option<Link>,
}

impl NewInteraction {
    /// The entry as stored, at `sequence` of the subject's log.
    pub fn numbered(self, sequence: u64) -> Interaction {
        let NewInteraction { channel, occurred_at, recorded_at, kind, intent, summary, reference, open, via } = self;
        Interaction {
            sequence,
            channel,
            occurred_at,
            recorded_at,
            kind,
            intent,
            summary,
            reference,
            open,
            via,
            review: false,
        }
    }
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Link>,
    /// Kept with both halves of an unmerge because whose it is cannot be told: held for review,
    /// never shown in a hand-off context nor handed over in an export (it may be the other
    /// person's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub review: bool,
}

/// The bookkeeping of one rights request (export, rectification, restriction). Vocabulary values
/// as text so the stored format does not depend on the audit module's enums.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RightsRequestRecord {
    pub request_id: String,
    pub kind: String,
    pub received_at: i64,
    /// `None`: the subject's pack states no deadline for the right (a declared gap, said in
    /// `deadline_basis`); never a default no law states.
    #[serde(default)]
    pub deadline_at: Option<i64>,
    pub status: String,
    pub deadline_basis: String,
    pub completed_at: Option<i64>,
    /// The latest the deadline may be extended to on notice, where the pack states an extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_deadline_at: Option<i64>,
    /// The pack's citation for the deadline (or for the law fixing none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub citation: Option<String>,
    /// Why the request was refused: a reason code (`verification_failed`, `challenge_expired`,
    /// `subject_erased`), never free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A duplicate's open request of the same kind for the same subject, which answers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_to: Option<String>,
    /// Carried out without a verified request, on an operator's override: its reason code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_reason: Option<String>,
    /// When the requester answered the challenge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<i64>,
    /// When the deadline was extended to `extended_deadline_at` (absent: not extended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_at: Option<i64>,
    /// When the work was last begun (`in_progress`): another call with the request may take it
    /// over only once [`crate::service::RIGHTS_WORK_LEASE_SECS`] have passed (a crash between the
    /// work and its completion), never while it may still be running (an export twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
}

impl RightsRequestRecord {
    /// The deadline in force: the extended one once extended, else the pack's.
    pub fn due_at(&self) -> Option<i64> {
        match self.extended_at {
            Some(_) => self.extended_deadline_at.or(self.deadline_at),
            None => self.deadline_at,
        }
    }
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
    /// Sequence of the last change event (the ERASED one for `from`).
    pub event: u64,
}

/// What an unmerge split off.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Unmerged {
    /// The subject that remained, under a new id (the merged subject's id and key are retired,
    /// so a ref or a copy kept from before cannot reach either half).
    pub kept: SubjectId,
    /// Links that now name `kept`.
    pub kept_links: Vec<Link>,
    /// The subject the merged-away one became again (a new id).
    pub restored: SubjectId,
    /// The id it had before the merge.
    pub was: SubjectId,
    /// Links that named the merged subject and now name `restored`.
    pub links: Vec<Link>,
    pub consent_records: usize,
    pub interactions: usize,
    /// Entries kept with both halves and marked for review (captured through no known identifier).
    pub flagged: usize,
    /// Sequence of the last change event.
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

/// What a decision reads about its subject: the metadata, and the consent in force for the
/// purpose × channel asked about.
pub type DecisionInputs = (SubjectMeta, Option<CurrentConsent>);
