//! The region's tamper-evident audit log (invariant 5): consent changes, decisions, rights
//! requests, erasures, merges and registrations, hash-chained and verifiable offline.
//!
//! # Storage
//!
//! One append-only file, `audit.log`, in the node's data directory. It is deliberately not in
//! sled: sled's own checksums would hide or silently drop an edited entry, and a plain file can be
//! verified with no node running (`domicile audit verify <data dir>`).
//!
//! Each entry is one line of JSON terminated by `\n`, with the members in exactly this order:
//!
//! ```text
//! {"seq":1,"at":1700000000,"region":"eu-central","kind":"consent","subject":"eu-central/<32 hex>",
//!  "detail":{"channels":"email","purpose":"marketing","sequence":"4","state":"granted"},
//!  "prev":"<64 hex>","hash":"<64 hex>"}
//! ```
//!
//! - `seq` starts at 1 and grows by exactly 1 per entry.
//! - `at` is unix seconds, supplied by the caller.
//! - `kind` is one of `registration`, `consent`, `decisions`, `decision` (older logs and single
//!   [`AuditLog::append`]s), `rights_request`, `erasure`, `merge`, `transfer`, `ownership_repair`.
//! - `subject` is a subject ref or `null`.
//! - `detail` is a string → string map with keys in byte order (see [`AuditEvent`] for its keys,
//!   and below for `decisions`).
//! - `prev` is the previous entry's `hash`; the first entry's `prev` is 64 zeros ([`GENESIS`]).
//!
//! # Decisions entries
//!
//! Decisions are audited in batches ([`AuditLog::append_decisions`]): one `decisions` entry holds
//! many decisions, so a 10,000-item `DecideBatch` costs about 20 entries (one line and one
//! SHA-256 each), not 10,000. Its `subject` is `null` and its `detail` has exactly two
//! keys:
//!
//! - `count`: the number of decisions in the entry, in decimal (at least 1);
//! - `decisions`: the decisions joined by `;`, each six fields joined by one space:
//!   `<subject id> <purpose> <channel> <effect> <reasons> <pack>`, where the subject id is the
//!   32 lower-case hex digits of a subject of the entry's `region` (a node's log holds only its
//!   own region's subjects), `reasons` are the deciding rule ids joined by `,` (empty only for a
//!   decision without reasons, which the evaluator never makes) and `pack` is `id@version`.
//!
//! ```text
//! {"seq":2,"at":1700000001,"region":"eu-central","kind":"decisions","subject":null,
//!  "detail":{"count":"2","decisions":"0101…01 marketing email deny de.marketing.email,de.withdrawn
//!  de@2026.1+r2;0202…02 marketing sms allow de.marketing.sms de@2026.1"},"prev":"<64 hex>",
//!  "hash":"<64 hex>"}
//! ```
//!
//! Every field is a vocabulary term, hex digits or a pack-grammar token, none of which contains
//! ` `, `;`, `,`, `@`, `"` or `\`, so the string needs no JSON escaping and parses back
//! unambiguously ([`AuditRecord::decisions`]). An entry's `decisions` string is at most 48 KiB: a
//! larger batch continues in the next entry (next `seq`, chained as usual), and a single decision
//! longer than that is refused. [`verify`] also requires every `decisions` entry to parse and its
//! `count` to match.
//!
//! # Canonical hash
//!
//! `hash` = lower-case hex of SHA-256 over the entry's canonical bytes, which are the entry's
//! line *without* its `hash` member: `{"seq":…,"at":…,"region":…,"kind":…,"subject":…,"detail":
//! {…},"prev":"…"}`, members in the order above, no whitespace, `detail` keys sorted, strings
//! escaped as `serde_json` does (`"` `\` and control characters only; everything else literal
//! UTF-8). Equivalently: take the line, drop the trailing `\n`, remove `,"hash":"<64 hex>"`, and
//! hash what is left. A verifier also requires every line to be exactly the canonical
//! serialisation of the entry it parses to, so any change to any byte of a line is detected.
//!
//! # What is detected, and what needs an anchor
//!
//! [`verify`] names the first bad entry (its `seq` where readable, and its line): edited fields,
//! bad hashes, deleted, inserted, duplicated or reordered entries, a foreign region. The chain has
//! no secret, so someone who can write the file can also *rewrite every later entry* or *cut the
//! tail*; both change the head. The node therefore reports the head ([`AuditLog::head`]) in its
//! Info RPC, and an operator who records it elsewhere (the external anchor) detects truncation
//! and rewrites by comparing it with the verified head.
//!
//! # Crashes
//!
//! Each entry is written with one `write` of the whole line, so a crash can only leave an
//! unterminated final line. [`AuditLog::open`] drops such a line with a warning (it was never
//! acknowledged: acknowledgement follows [`AuditLog::sync`], which follows a complete write) and
//! [`verify`] reports it as [`VerifyReport::torn_tail`] rather than as tampering. A
//! newline-terminated line that does not verify, last or not, is tampering, and `open` refuses to
//! append to it.
//!
//! # Personal data
//!
//! None. The API takes a typed [`AuditEvent`] whose fields are closed vocabularies, validated
//! ids, counts, times and digests; callers cannot put free text into the log. Erasures keep only
//! [`erasure_proof`], a digest an auditor who holds the subject ref and its links can recompute.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use domicile_policy::{Decision, Effect, PackRef};
use domicile_types::{
    Channel, ConsentState, Jurisdiction, Link, Purpose, RegionId, SUBJECT_ID_LEN, SubjectId, SubjectRef,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The audit log's file name inside a node's data directory.
pub const FILE_NAME: &str = "audit.log";

/// `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Our entries are a few hundred bytes, `decisions` entries at most about 49 KiB; a longer line
/// was not written by a node, and the cap keeps a hostile file from exhausting the verifier's
/// memory.
const MAX_LINE: u64 = 1024 * 1024;

/// The most bytes of a `decisions` entry's `decisions` string; a batch past it continues in the
/// next entry.
const MAX_DECISIONS_BYTES: usize = 48 * 1024;

const ERASURE_PROOF_DOMAIN: &[u8] = b"domicile.audit.erasure-proof.v1\0";

// ---------------------------------------------------------------------------------------------
// Events: the only way in, so the log cannot hold personal data.
// ---------------------------------------------------------------------------------------------

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    Registration,
    Consent,
    /// One decision ([`AuditEvent::Decision`]); batches write [`AuditKind::Decisions`].
    Decision,
    /// Many decisions in one entry (see the module doc).
    Decisions,
    RightsRequest,
    Erasure,
    Merge,
    /// Personal data served to a caller outside the subject's home regions under a pack transfer.
    Transfer,
    /// Identifiers removed from a subject because another region keeps them (an identifier held
    /// twice, resolved by `domicile cluster repair-ownership`).
    OwnershipRepair,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Registration => "registration",
            AuditKind::Consent => "consent",
            AuditKind::Decision => "decision",
            AuditKind::Decisions => "decisions",
            AuditKind::RightsRequest => "rights_request",
            AuditKind::Erasure => "erasure",
            AuditKind::Merge => "merge",
            AuditKind::Transfer => "transfer",
            AuditKind::OwnershipRepair => "ownership_repair",
        }
    }
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A data subject right (GDPR art. 15-18, 20 and their equivalents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RightsKind {
    Access,
    Rectification,
    Erasure,
    Restriction,
    Portability,
}

impl RightsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RightsKind::Access => "access",
            RightsKind::Rectification => "rectification",
            RightsKind::Erasure => "erasure",
            RightsKind::Restriction => "restriction",
            RightsKind::Portability => "portability",
        }
    }
}

/// Where a rights request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RightsStatus {
    Received,
    /// The deadline was extended as the pack allows.
    Extended,
    Completed,
    Refused,
}

impl RightsStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RightsStatus::Received => "received",
            RightsStatus::Extended => "extended",
            RightsStatus::Completed => "completed",
            RightsStatus::Refused => "refused",
        }
    }
}

pub const REQUEST_ID_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rights request id must be 32 lower-case hex digits")]
pub struct RequestIdError;

/// A rights request's random id; text form is 32 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId([u8; REQUEST_ID_LEN]);

impl RequestId {
    pub fn from_bytes(bytes: [u8; REQUEST_ID_LEN]) -> Self {
        Self(bytes)
    }

    pub fn parse(text: &str) -> Result<Self, RequestIdError> {
        if text.len() != REQUEST_ID_LEN * 2 || text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(RequestIdError);
        }
        let mut bytes = [0u8; REQUEST_ID_LEN];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| RequestIdError)?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A PII-free digest proving which links of which subject were erased when; see
/// [`erasure_proof`]. Only that function makes one, so an erasure entry can hold nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErasureProof([u8; 32]);

impl ErasureProof {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ErasureProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Computes the proof kept for an erasure: lower-case hex (via `Display`) of SHA-256 over
///
/// ```text
/// "domicile.audit.erasure-proof.v1" 0x00
/// u32 big-endian byte length of the subject ref text ‖ subject ref text (`<region>/<32 hex>`)
/// i64 big-endian `at` (unix seconds, the erasure entry's `at`)
/// u32 big-endian number of distinct links ‖ each link's 16 raw bytes, ascending
/// ```
///
/// Links are sorted and deduplicated so the proof does not depend on storage order. An auditor
/// holding the subject ref and its links (e.g. recomputed from identifiers with the link key)
/// recomputes this and finds it in the erasure entry; the log alone reveals nothing.
pub fn erasure_proof(subject: &SubjectRef, links: &[Link], at: i64) -> ErasureProof {
    let mut sorted: Vec<&Link> = links.iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    let subject = subject.to_string();
    let mut hasher = Sha256::new();
    hasher.update(ERASURE_PROOF_DOMAIN);
    hasher.update(len_u32(subject.len()).to_be_bytes());
    hasher.update(subject.as_bytes());
    hasher.update(at.to_be_bytes());
    hasher.update(len_u32(sorted.len()).to_be_bytes());
    for link in sorted {
        hasher.update(link.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&hasher.finalize());
    ErasureProof(out)
}

/// Lengths here are of a subject ref or a link list; saturating keeps the encoding total without a
/// panic path, and no real input comes near 4 GiB.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// One auditable event. Fields are vocabulary values, validated ids, counts, times and digests —
/// never caller text — so the log stays free of personal data by construction.
///
/// `detail` keys per kind:
/// - registration: `identifiers` (count), `jurisdiction`
/// - consent: `purpose`, `channels` (comma-separated), `state`, `sequence` (ledger sequence)
/// - decision: `purpose`, `channel`, `effect`, `reasons` (comma-separated rule ids), `pack`
///   (`id@version`); the node audits decisions in batches instead ([`AuditLog::append_decisions`],
///   `decisions` entries: `count`, `decisions`, see the module doc)
/// - rights_request: `right`, `request_id`, `deadline_at`, `status`
/// - erasure: `links_removed`, `proof`
/// - merge: `from`, `into` (subject refs)
/// - ownership_repair: `links_removed` (count), `kept_by` (the region that keeps them)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditEvent {
    Registration {
        identifiers: usize,
        jurisdiction: Jurisdiction,
    },
    Consent {
        purpose: Purpose,
        channels: Vec<Channel>,
        state: ConsentState,
        sequence: u64,
    },
    Decision {
        purpose: Purpose,
        channel: Channel,
        effect: Effect,
        reasons: Vec<String>,
        pack: PackRef,
    },
    RightsRequest {
        kind: RightsKind,
        request_id: RequestId,
        deadline_at: i64,
        status: RightsStatus,
    },
    Erasure {
        links_removed: usize,
        proof: ErasureProof,
    },
    Merge {
        from: SubjectRef,
        into: SubjectRef,
    },
    /// What left the home regions (`what`: e.g. `context.minimised`), to which region, for
    /// which purpose, under which transfer of which pack.
    Transfer {
        what: &'static str,
        to: RegionId,
        purpose: Purpose,
        transfer: String,
        pack: PackRef,
    },
    /// Identifiers removed from the subject because another region keeps them (`DropLinks`).
    OwnershipRepair {
        links_removed: usize,
        kept_by: RegionId,
    },
}

impl AuditEvent {
    /// The audit event of a decision the node evaluated.
    pub fn decision(purpose: Purpose, channel: Channel, decision: &Decision) -> Self {
        AuditEvent::Decision {
            purpose,
            channel,
            effect: decision.effect,
            reasons: decision.reasons.clone(),
            pack: decision.pack.clone(),
        }
    }

    pub fn kind(&self) -> AuditKind {
        match self {
            AuditEvent::Registration { .. } => AuditKind::Registration,
            AuditEvent::Consent { .. } => AuditKind::Consent,
            AuditEvent::Decision { .. } => AuditKind::Decision,
            AuditEvent::RightsRequest { .. } => AuditKind::RightsRequest,
            AuditEvent::Erasure { .. } => AuditKind::Erasure,
            AuditEvent::Merge { .. } => AuditKind::Merge,
            AuditEvent::Transfer { .. } => AuditKind::Transfer,
            AuditEvent::OwnershipRepair { .. } => AuditKind::OwnershipRepair,
        }
    }

    /// Subject refs named inside the event, for the residency check.
    fn subject_refs(&self) -> impl Iterator<Item = &SubjectRef> {
        let refs = match self {
            AuditEvent::Merge { from, into } => [Some(from), Some(into)],
            _ => [None, None],
        };
        refs.into_iter().flatten()
    }

    fn detail(&self) -> Result<BTreeMap<String, String>, AuditError> {
        let mut d = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            d.insert(k.to_owned(), v);
        };
        match self {
            AuditEvent::Registration { identifiers, jurisdiction } => {
                put("identifiers", identifiers.to_string());
                put("jurisdiction", jurisdiction.to_string());
            }
            AuditEvent::Consent { purpose, channels, state, sequence } => {
                put("purpose", purpose.as_str().to_owned());
                put("channels", channels.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(","));
                put("state", state.as_str().to_owned());
                put("sequence", sequence.to_string());
            }
            AuditEvent::Decision { purpose, channel, effect, reasons, pack } => {
                // Rule ids and pack refs come from loaded packs, but they are strings in public
                // types, so check they are still the pack grammar's tokens (no `@`, spaces, …).
                check_decision(reasons, pack)?;
                put("purpose", purpose.as_str().to_owned());
                put("channel", channel.as_str().to_owned());
                put("effect", effect.as_str().to_owned());
                put("reasons", reasons.join(","));
                put("pack", pack.to_string());
            }
            AuditEvent::RightsRequest { kind, request_id, deadline_at, status } => {
                put("right", kind.as_str().to_owned());
                put("request_id", request_id.to_string());
                put("deadline_at", deadline_at.to_string());
                put("status", status.as_str().to_owned());
            }
            AuditEvent::Erasure { links_removed, proof } => {
                put("links_removed", links_removed.to_string());
                put("proof", proof.to_string());
            }
            AuditEvent::Merge { from, into } => {
                put("from", from.to_string());
                put("into", into.to_string());
            }
            AuditEvent::Transfer { what, to, purpose, transfer, pack } => {
                // The transfer id comes from a loaded pack; check it is still a pack token.
                if !is_token(transfer, false) {
                    return Err(AuditError::InvalidField { field: "transfer" });
                }
                check_pack(pack)?;
                put("what", (*what).to_owned());
                put("to", to.to_string());
                put("purpose", purpose.as_str().to_owned());
                put("transfer", transfer.clone());
                put("pack", pack.to_string());
            }
            AuditEvent::OwnershipRepair { links_removed, kept_by } => {
                put("links_removed", links_removed.to_string());
                put("kept_by", kept_by.to_string());
            }
        }
        Ok(d)
    }
}

/// The pack grammar's ids (`a-z`, `0-9`, `_`, `-`, `.`, starting with a letter) and, for versions,
/// also upper-case letters and `+`. Never `@`, whitespace or punctuation that free text needs.
fn is_token(s: &str, version: bool) -> bool {
    let b = s.as_bytes();
    (1..=128).contains(&b.len())
        && b.first().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.iter().all(|&c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, b'_' | b'-' | b'.')
                || (version && (c.is_ascii_uppercase() || c == b'+'))
        })
}

// ---------------------------------------------------------------------------------------------
// Entries and the canonical encoding.
// ---------------------------------------------------------------------------------------------

/// One entry as stored. Field order is the canonical member order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub seq: u64,
    pub at: i64,
    pub region: String,
    pub kind: AuditKind,
    pub subject: Option<String>,
    pub detail: BTreeMap<String, String>,
    pub prev: String,
    pub hash: String,
}

/// The hashed part of an entry: [`AuditRecord`] without `hash`, same order. `D` serialises as
/// a string map with keys in byte order (a `BTreeMap`).
#[derive(Serialize)]
struct Hashed<'a, D: Serialize> {
    seq: u64,
    at: i64,
    region: &'a str,
    kind: AuditKind,
    subject: Option<&'a str>,
    detail: &'a D,
    prev: &'a str,
}

/// Appends the canonical line of an entry to `out` (with its `\n`) and returns its hash as hex.
/// The line is `Hashed` with `,"hash":"…"` spliced in before the closing brace, which is exactly
/// how serde serialises [`AuditRecord`] (same members, same order, `hash` last), so the line is
/// serialised and hashed once.
fn write_entry<D: Serialize>(out: &mut Vec<u8>, hashed: &Hashed<'_, D>) -> Result<[u8; 64], serde_json::Error> {
    let start = out.len();
    serde_json::to_writer(&mut *out, hashed)?;
    let mut hex = [0u8; 64];
    // Cannot fail: the buffer is exactly twice the digest's length.
    let _ = hex::encode_to_slice(Sha256::digest(&out[start..]), &mut hex);
    out.pop(); // the closing brace
    out.extend_from_slice(b",\"hash\":\"");
    out.extend_from_slice(&hex);
    out.extend_from_slice(b"\"}\n");
    Ok(hex)
}

/// One decision of a batch entry (what [`AuditLog::append_decisions`] takes).
#[derive(Debug, Clone, Copy)]
pub struct DecisionEntry<'a> {
    /// A subject of this log's region.
    pub subject: SubjectId,
    pub purpose: Purpose,
    pub channel: Channel,
    pub effect: Effect,
    /// The deciding rule ids (written comma-joined).
    pub reasons: &'a [&'a str],
    pub pack: &'a PackRef,
}

impl DecisionEntry<'_> {
    /// Bytes of this decision in a `decisions` string (see the module doc).
    fn encoded_len(&self) -> usize {
        let reasons = self.reasons.iter().map(|r| r.len() + 1).sum::<usize>().saturating_sub(1);
        2 * SUBJECT_ID_LEN
            + self.purpose.as_str().len()
            + self.channel.as_str().len()
            + self.effect.as_str().len()
            + reasons
            + self.pack.id.len()
            + 1
            + self.pack.version.len()
            + 5
    }

    /// Appends this decision's text to a `decisions` string.
    fn write_to(&self, out: &mut Vec<u8>) {
        let mut hex = [0u8; 2 * SUBJECT_ID_LEN];
        // Cannot fail: the buffer is exactly twice the id's length.
        let _ = hex::encode_to_slice(self.subject.as_bytes(), &mut hex);
        out.extend_from_slice(&hex);
        for field in [self.purpose.as_str(), self.channel.as_str(), self.effect.as_str()] {
            out.push(b' ');
            out.extend_from_slice(field.as_bytes());
        }
        out.push(b' ');
        for (i, reason) in self.reasons.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(reason.as_bytes());
        }
        out.push(b' ');
        out.extend_from_slice(self.pack.id.as_bytes());
        out.push(b'@');
        out.extend_from_slice(self.pack.version.as_bytes());
    }
}

/// Appends the canonical line of a `decisions` entry holding `decisions` (at least one) to `out`
/// (with its `\n`) and returns its hash as hex. Writes exactly what `serde_json` writes for the
/// equivalent [`AuditRecord`] (tested): `region` is a [`RegionId`] (`[a-z0-9-]`), `prev` hex and
/// the decisions string vocabulary tokens, none of which JSON escapes.
fn write_decisions_entry(
    out: &mut Vec<u8>,
    seq: u64,
    at: i64,
    region: &RegionId,
    prev: &[u8],
    decisions: &[DecisionEntry<'_>],
) -> io::Result<[u8; 64]> {
    let start = out.len();
    write!(out, "{{\"seq\":{seq},\"at\":{at},\"region\":\"{region}\",\"kind\":\"decisions\",\"subject\":null,")?;
    write!(out, "\"detail\":{{\"count\":\"{}\",\"decisions\":\"", decisions.len())?;
    for (i, decision) in decisions.iter().enumerate() {
        if i > 0 {
            out.push(b';');
        }
        decision.write_to(out);
    }
    out.extend_from_slice(b"\"},\"prev\":\"");
    out.extend_from_slice(prev);
    out.extend_from_slice(b"\"}");
    let mut hex = [0u8; 64];
    // Cannot fail: the buffer is exactly twice the digest's length.
    let _ = hex::encode_to_slice(Sha256::digest(&out[start..]), &mut hex);
    out.pop(); // the closing brace
    out.extend_from_slice(b",\"hash\":\"");
    out.extend_from_slice(&hex);
    out.extend_from_slice(b"\"}\n");
    Ok(hex)
}

/// The checks [`AuditEvent::detail`] and [`AuditLog::append_decisions`] make on a decision's
/// strings: rule ids and pack refs come from loaded packs, but they are strings in public types.
fn check_decision<R: AsRef<str>>(reasons: &[R], pack: &PackRef) -> Result<(), AuditError> {
    if !reasons.iter().all(|r| is_token(r.as_ref(), false)) {
        return Err(AuditError::InvalidField { field: "reasons" });
    }
    check_pack(pack)
}

fn check_pack(pack: &PackRef) -> Result<(), AuditError> {
    if !is_token(&pack.id, false) || !is_token(&pack.version, true) {
        return Err(AuditError::InvalidField { field: "pack" });
    }
    Ok(())
}

impl AuditRecord {
    /// Recomputes the hash from the other fields (see the module doc).
    pub fn compute_hash(&self) -> Result<String, serde_json::Error> {
        let hashed = Hashed {
            seq: self.seq,
            at: self.at,
            region: &self.region,
            kind: self.kind,
            subject: self.subject.as_deref(),
            detail: &self.detail,
            prev: &self.prev,
        };
        Ok(hex::encode(Sha256::digest(serde_json::to_vec(&hashed)?)))
    }

    /// The decisions a `decisions` entry holds, in order; `None` for entries of other kinds.
    /// Strict: the entry must be exactly what [`AuditLog::append_decisions`] writes (no subject,
    /// only `count` and `decisions`, six well-formed fields per decision, a matching count).
    pub fn decisions(&self) -> Option<Result<Vec<AuditedDecision>, DecisionsError>> {
        (self.kind == AuditKind::Decisions).then(|| self.parse_decisions())
    }

    fn parse_decisions(&self) -> Result<Vec<AuditedDecision>, DecisionsError> {
        if self.subject.is_some() {
            return Err(DecisionsError::Subject);
        }
        let (Some(count), Some(text), 2) = (self.detail.get("count"), self.detail.get("decisions"), self.detail.len())
        else {
            return Err(DecisionsError::Keys);
        };
        let decisions = text
            .split(';')
            .enumerate()
            .map(|(i, decision)| AuditedDecision::parse(decision, i + 1))
            .collect::<Result<Vec<_>, _>>()?;
        if *count != decisions.len().to_string() {
            return Err(DecisionsError::Count);
        }
        Ok(decisions)
    }
}

/// One decision read back from a `decisions` entry ([`AuditRecord::decisions`]). Its subject is
/// of the entry's region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditedDecision {
    pub subject: SubjectId,
    pub purpose: Purpose,
    pub channel: Channel,
    pub effect: Effect,
    pub reasons: Vec<String>,
    pub pack: PackRef,
}

impl AuditedDecision {
    /// Parses one `;`-separated item; `position` is 1-based, for the error.
    fn parse(text: &str, position: usize) -> Result<Self, DecisionsError> {
        let field = |field| DecisionsError::Field { position, field };
        let fields: Vec<&str> = text.split(' ').collect();
        let [subject, purpose, channel, effect, reasons, pack] = fields[..] else {
            return Err(DecisionsError::FieldCount { position });
        };
        let mut id = [0u8; SUBJECT_ID_LEN];
        if subject.bytes().any(|b| b.is_ascii_uppercase()) || hex::decode_to_slice(subject, &mut id).is_err() {
            return Err(field("subject"));
        }
        let reasons = if reasons.is_empty() { Vec::new() } else { reasons.split(',').map(str::to_owned).collect() };
        if !reasons.iter().all(|r| is_token(r, false)) {
            return Err(field("reasons"));
        }
        let pack = match pack.split_once('@') {
            Some((id, version)) if is_token(id, false) && is_token(version, true) => {
                PackRef { id: id.to_owned(), version: version.to_owned() }
            }
            _ => return Err(field("pack")),
        };
        Ok(Self {
            subject: SubjectId::from_bytes(id),
            purpose: Purpose::parse(purpose).map_err(|_| field("purpose"))?,
            channel: Channel::parse(channel).map_err(|_| field("channel"))?,
            effect: Effect::parse(effect).ok_or_else(|| field("effect"))?,
            reasons,
            pack,
        })
    }
}

/// Why a `decisions` entry does not read back ([`AuditRecord::decisions`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionsError {
    #[error("names a subject (a decisions entry's subject is null)")]
    Subject,
    #[error("detail must have exactly `count` and `decisions`")]
    Keys,
    #[error("`count` does not match the number of decisions")]
    Count,
    #[error("decision {position} does not have six space-separated fields")]
    FieldCount { position: usize },
    #[error("decision {position} has a malformed `{field}`")]
    Field { position: usize, field: &'static str },
}

/// The last entry: what the node reports so it can be anchored outside the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    /// 0 for an empty log.
    pub seq: u64,
    /// [`GENESIS`] for an empty log.
    pub hash: String,
}

// ---------------------------------------------------------------------------------------------
// Verification.
// ---------------------------------------------------------------------------------------------

/// Why an entry fails verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TamperReason {
    #[error("not a valid audit entry")]
    NotAnEntry,
    #[error("line longer than any audit entry")]
    TooLong,
    #[error("sequence gap: expected seq {expected} (entries deleted or reordered)")]
    SeqGap { expected: u64 },
    #[error("sequence goes back: expected seq {expected} (entries inserted, duplicated or reordered)")]
    SeqBack { expected: u64 },
    #[error("prev is not the genesis hash")]
    BadGenesis,
    #[error("prev does not match the hash of entry seq {previous} (this entry or that one was changed)")]
    PrevMismatch { previous: u64 },
    #[error("contents do not match the entry's hash")]
    HashMismatch,
    #[error("entry is not in canonical form")]
    NotCanonical,
    #[error("region differs from the log's region `{expected}`")]
    RegionChanged { expected: String },
    #[error("malformed decisions entry: {0}")]
    BadDecisions(DecisionsError),
}

/// The first entry that fails verification. `seq` is the entry's own (possibly edited) `seq`
/// when the line still parses; `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TamperError {
    pub line: u64,
    pub seq: Option<u64>,
    pub reason: TamperReason,
}

impl fmt::Display for TamperError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "entry seq {seq} (line {}): {}", self.line, self.reason),
            None => write!(f, "line {}: {}", self.line, self.reason),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read audit log: {0}")]
    Io(#[from] io::Error),
    #[error("audit log tampered at {0}")]
    Tampered(#[from] TamperError),
}

/// An unterminated final line: a write interrupted by a crash (or a cut tail, which only the
/// anchored head reveals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    pub line: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Verified entries (excluding a torn tail).
    pub entries: u64,
    /// The last verified entry's seq and hash (0 and [`GENESIS`] when empty).
    pub head_seq: u64,
    pub head_hash: String,
    /// The region every entry names; `None` when empty.
    pub region: Option<String>,
    pub torn_tail: Option<TornTail>,
}

/// Verifies a whole log from its first byte.
pub fn verify(reader: impl BufRead) -> Result<VerifyReport, VerifyError> {
    scan(reader).map(|(report, _)| report)
}

/// Verifies `path`, which is either a node's data directory or an audit log file.
pub fn verify_file(path: &Path) -> Result<VerifyReport, VerifyError> {
    let path = if path.is_dir() { path.join(FILE_NAME) } else { path.to_owned() };
    verify(BufReader::new(File::open(path)?))
}

/// Reads and checks every line; also returns the length in bytes of the verified prefix (where a
/// torn tail starts).
fn scan(mut reader: impl BufRead) -> Result<(VerifyReport, u64), VerifyError> {
    let mut chain = Chain { expected_seq: 1, prev: GENESIS.to_owned(), region: None };
    let mut line: u64 = 0;
    let mut offset: u64 = 0;
    let mut torn_tail = None;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader).take(MAX_LINE + 1).read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        line += 1;
        let Some(body) = buf.strip_suffix(b"\n") else {
            if n as u64 > MAX_LINE {
                return Err(TamperError { line, seq: None, reason: TamperReason::TooLong }.into());
            }
            torn_tail = Some(TornTail { line, bytes: n as u64 });
            // Anything after a cap-sized read would also be here; a short read means end of input.
            break;
        };
        chain.check(line, body)?;
        offset += n as u64;
    }
    let report = VerifyReport {
        entries: chain.expected_seq - 1,
        head_seq: chain.expected_seq - 1,
        head_hash: chain.prev,
        region: chain.region,
        torn_tail,
    };
    Ok((report, offset))
}

struct Chain {
    expected_seq: u64,
    prev: String,
    region: Option<String>,
}

impl Chain {
    fn check(&mut self, line: u64, body: &[u8]) -> Result<(), TamperError> {
        let record: AuditRecord = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(_) => {
                // Name the entry by its seq if the damage left that readable.
                let seq = serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64));
                return Err(TamperError { line, seq, reason: TamperReason::NotAnEntry });
            }
        };
        let fail = |reason| TamperError { line, seq: Some(record.seq), reason };
        if record.seq > self.expected_seq {
            return Err(fail(TamperReason::SeqGap { expected: self.expected_seq }));
        }
        if record.seq < self.expected_seq {
            return Err(fail(TamperReason::SeqBack { expected: self.expected_seq }));
        }
        if record.prev != self.prev {
            return Err(fail(if record.seq == 1 {
                TamperReason::BadGenesis
            } else {
                TamperReason::PrevMismatch { previous: record.seq - 1 }
            }));
        }
        if record.compute_hash().ok().as_deref() != Some(record.hash.as_str()) {
            return Err(fail(TamperReason::HashMismatch));
        }
        // Hash-equal but differently spelled lines (escapes, spacing, member order) are edits too.
        if serde_json::to_vec(&record).ok().as_deref() != Some(body) {
            return Err(fail(TamperReason::NotCanonical));
        }
        // A node writes only well-formed decisions entries, so anything else was rewritten.
        if let Some(Err(e)) = record.decisions() {
            return Err(fail(TamperReason::BadDecisions(e)));
        }
        match &self.region {
            None => self.region = Some(record.region.clone()),
            Some(region) if *region != record.region => {
                return Err(fail(TamperReason::RegionChanged { expected: region.clone() }));
            }
            Some(_) => {}
        }
        self.expected_seq += 1;
        self.prev = record.hash;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The writer.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log i/o failed: {0}")]
    Io(#[from] io::Error),
    #[error("audit log is tampered at {0}; refusing to append to a broken chain")]
    Tampered(TamperError),
    #[error("audit log belongs to region `{found}`, not `{expected}`")]
    WrongRegion { expected: String, found: String },
    #[error("audit field `{field}` is not a vocabulary token")]
    InvalidField { field: &'static str },
    #[error("audit event names a subject of another region")]
    ForeignSubject,
    #[error("audit log is unwritable: a failed append could not be rolled back; restart the node")]
    Unwritable,
    #[error("audit entry cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

struct State {
    file: File,
    /// Bytes of complete, verified entries: where a failed append is rolled back to.
    len: u64,
    next_seq: u64,
    head: String,
    /// Set when a partial line could not be removed; appending after it would break the chain.
    unwritable: bool,
}

/// The open audit log of one region. Appends are serialised by a mutex; `sync` is not, so one
/// fsync covers every append that returned before it (group commit).
pub struct AuditLog {
    path: PathBuf,
    region: RegionId,
    state: Mutex<State>,
    sync_handle: File,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.path).field("region", &self.region).finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates) `<dir>/audit.log`, verifies the whole chain and continues it. A torn
    /// final line is dropped with a warning; any other failure refuses the log, naming the entry.
    pub fn open(dir: &Path, region: &RegionId) -> Result<Self, AuditError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let existed = path.exists();
        let file = OpenOptions::new().read(true).append(true).create(true).open(&path)?;
        if !existed {
            // Make the new file's directory entry durable, or a synced entry could vanish with it.
            sync_dir(dir)?;
        }
        let (report, verified_len) = match scan(BufReader::new(&file)) {
            Ok(r) => r,
            Err(VerifyError::Io(e)) => return Err(AuditError::Io(e)),
            Err(VerifyError::Tampered(t)) => return Err(AuditError::Tampered(t)),
        };
        if let Some(found) = report.region
            && found != region.as_str()
        {
            return Err(AuditError::WrongRegion { expected: region.to_string(), found });
        }
        if let Some(torn) = report.torn_tail {
            tracing::warn!(
                line = torn.line,
                bytes = torn.bytes,
                "audit log ends in an incomplete entry (a write interrupted by a crash, never acknowledged); dropping it"
            );
            file.set_len(verified_len)?;
            file.sync_data()?;
        }
        let sync_handle = file.try_clone()?;
        let state =
            State { file, len: verified_len, next_seq: report.head_seq + 1, head: report.head_hash, unwritable: false };
        Ok(Self { path, region: region.clone(), state: Mutex::new(state), sync_handle })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry and hands it to the OS (one `write` of the whole line). It is durable only
    /// after [`AuditLog::sync`]; the node syncs before acknowledging, together with its store.
    pub fn append(&self, event: AuditEvent, subject: Option<&SubjectRef>, at: i64) -> Result<AuditRecord, AuditError> {
        // Residency: a node's log only ever names its own region's subjects.
        if subject.into_iter().chain(event.subject_refs()).any(|s| s.region != self.region) {
            return Err(AuditError::ForeignSubject);
        }
        let detail = event.detail()?;
        let subject = subject.map(SubjectRef::to_string);
        let kind = event.kind();
        let mut state = self.lock()?;
        let mut line = Vec::with_capacity(512);
        let seq = state.next_seq;
        let hashed = Hashed {
            seq,
            at,
            region: self.region.as_str(),
            kind,
            subject: subject.as_deref(),
            detail: &detail,
            prev: &state.head,
        };
        let hash = write_entry(&mut line, &hashed)?;
        let record = AuditRecord {
            seq,
            at,
            region: self.region.to_string(),
            kind,
            subject,
            detail,
            prev: state.head.clone(),
            hash: String::from_utf8_lossy(&hash).into_owned(),
        };
        Self::write(&mut state, &line, 1, &hash)?;
        Ok(record)
    }

    /// Appends a batch of decisions as `decisions` entries (see the module doc): one entry, or
    /// one more each time the entry's `decisions` string would pass 48 KiB, chained as usual and
    /// written with one `write`; the hot path of batch decisions. All or nothing: every decision
    /// is checked first and on error nothing is written. An empty batch writes nothing.
    pub fn append_decisions(&self, entries: &[DecisionEntry<'_>], at: i64) -> Result<(), AuditError> {
        if entries.is_empty() {
            return Ok(());
        }
        // Check every decision and cut the batch into entries before touching the file.
        let mut ends = Vec::new();
        let mut total = 0;
        let mut current = 0; // bytes of the current entry's decisions string
        for (i, entry) in entries.iter().enumerate() {
            check_decision(entry.reasons, entry.pack)?;
            let len = entry.encoded_len();
            if len > MAX_DECISIONS_BYTES {
                // Only a decision with hundreds of reasons; no pack can make one.
                return Err(AuditError::InvalidField { field: "reasons" });
            }
            if current > 0 && current + 1 + len > MAX_DECISIONS_BYTES {
                ends.push(i);
                current = 0;
            }
            current += if current > 0 { 1 + len } else { len };
            total += len + 1;
        }
        ends.push(entries.len());

        let mut state = self.lock()?;
        let mut lines = Vec::with_capacity(total + ends.len() * 320);
        let mut head = state.head.as_bytes().try_into().unwrap_or([b'0'; 64]);
        let mut start = 0;
        for (i, &end) in ends.iter().enumerate() {
            let seq = state.next_seq + i as u64;
            let decisions = entries.get(start..end).unwrap_or_default();
            head = write_decisions_entry(&mut lines, seq, at, &self.region, &head, decisions)?;
            start = end;
        }
        Self::write(&mut state, &lines, ends.len() as u64, &head)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, AuditError> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.unwritable {
            return Err(AuditError::Unwritable);
        }
        Ok(state)
    }

    /// Writes complete lines with one `write` and advances the chain to `head`; on failure
    /// removes whatever part reached the file so the chain stays appendable.
    fn write(state: &mut State, lines: &[u8], entries: u64, head: &[u8; 64]) -> Result<(), AuditError> {
        if let Err(e) = state.file.write_all(lines) {
            let len = state.len;
            if state.file.set_len(len).is_err() {
                state.unwritable = true;
            }
            return Err(AuditError::Io(e));
        }
        state.len += lines.len() as u64;
        state.next_seq += entries;
        state.head.clear();
        state.head.push_str(std::str::from_utf8(head).unwrap_or(GENESIS));
        Ok(())
    }

    /// Makes every entry appended so far durable (fsync). Blocking: from async code call it where
    /// the store's flush is awaited, or in `spawn_blocking`.
    pub fn sync(&self) -> Result<(), AuditError> {
        self.sync_handle.sync_data()?;
        Ok(())
    }

    /// The last entry's seq and hash, for the node's Info RPC and external anchoring.
    pub fn head(&self) -> AuditHead {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        AuditHead { seq: state.next_seq - 1, hash: state.head.clone() }
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Directories cannot be opened as files here; the file system orders metadata itself.
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn region() -> RegionId {
        RegionId::parse("eu-central").unwrap()
    }

    fn subject(byte: u8) -> SubjectRef {
        SubjectRef { region: region(), id: SubjectId::from_bytes([byte; 16]) }
    }

    fn consent(sequence: u64) -> AuditEvent {
        AuditEvent::Consent {
            purpose: Purpose::Marketing,
            channels: vec![Channel::Email, Channel::Sms],
            state: ConsentState::Granted,
            sequence,
        }
    }

    fn every_event() -> Vec<AuditEvent> {
        vec![
            AuditEvent::Registration { identifiers: 2, jurisdiction: Jurisdiction::parse("de").unwrap() },
            consent(7),
            AuditEvent::Decision {
                purpose: Purpose::Marketing,
                channel: Channel::Email,
                effect: Effect::Deny,
                reasons: vec!["de-gdpr.email-marketing".into()],
                pack: PackRef { id: "de-gdpr".into(), version: "2024.1+r2".into() },
            },
            AuditEvent::RightsRequest {
                kind: RightsKind::Access,
                request_id: RequestId::from_bytes([9; 16]),
                deadline_at: 1_700_086_400,
                status: RightsStatus::Received,
            },
            AuditEvent::Erasure {
                links_removed: 1,
                proof: erasure_proof(&subject(1), &[Link::from_bytes([3; 16])], 1_700_000_000),
            },
            AuditEvent::Merge { from: subject(2), into: subject(1) },
        ]
    }

    /// A log with `n` consent entries; returns the dir guard and the file path.
    fn log_with(n: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), &region()).unwrap();
        for i in 0..n {
            log.append(consent(i), Some(&subject(1)), 1_700_000_000 + i as i64).unwrap();
        }
        log.sync().unwrap();
        let path = log.path().to_owned();
        (dir, path)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(path, text).unwrap();
    }

    fn tamper(path: &Path) -> TamperError {
        match verify_file(path) {
            Err(VerifyError::Tampered(t)) => t,
            other => panic!("expected tampering, got {other:?}"),
        }
    }

    fn pack(version: &str) -> PackRef {
        PackRef { id: "de".into(), version: version.into() }
    }

    /// One decision's owned inputs: subject, purpose, channel, effect, reasons, pack.
    type Input = (SubjectId, Purpose, Channel, Effect, Vec<&'static str>, PackRef);

    /// Owned inputs of a batch; [`Batch::entries`] borrows them as `append_decisions` takes them.
    struct Batch {
        decisions: Vec<Input>,
    }

    impl Batch {
        fn sample() -> Self {
            Batch {
                decisions: vec![
                    (
                        subject(1).id,
                        Purpose::Marketing,
                        Channel::Email,
                        Effect::Deny,
                        vec!["de.marketing.email", "de.withdrawn"],
                        pack("2026.1+r2"),
                    ),
                    (
                        subject(2).id,
                        Purpose::Marketing,
                        Channel::Sms,
                        Effect::Allow,
                        vec!["de.marketing.sms"],
                        pack("2026.1"),
                    ),
                    (
                        subject(3).id,
                        Purpose::Survey,
                        Channel::VoiceAutomated,
                        Effect::Allow,
                        vec!["de.survey.voice_automated"],
                        pack("2026.1"),
                    ),
                ],
            }
        }

        /// `n` decisions of distinct subjects, about 100 bytes each.
        fn many(n: usize) -> Self {
            let decisions = (0..n)
                .map(|i| {
                    let mut id = [0u8; SUBJECT_ID_LEN];
                    id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    let effect = if i % 3 == 0 { Effect::Deny } else { Effect::Allow };
                    let reasons = if i % 2 == 0 { vec!["de.marketing.email"] } else { vec!["de.a", "de.b", "de.c"] };
                    (SubjectId::from_bytes(id), Purpose::Marketing, Channel::Email, effect, reasons, pack("2026.1"))
                })
                .collect();
            Batch { decisions }
        }

        fn entries(&self) -> Vec<DecisionEntry<'_>> {
            self.decisions
                .iter()
                .map(|(subject, purpose, channel, effect, reasons, pack)| DecisionEntry {
                    subject: *subject,
                    purpose: *purpose,
                    channel: *channel,
                    effect: *effect,
                    reasons,
                    pack,
                })
                .collect()
        }

        fn audited(&self) -> Vec<AuditedDecision> {
            self.decisions
                .iter()
                .map(|(subject, purpose, channel, effect, reasons, pack)| AuditedDecision {
                    subject: *subject,
                    purpose: *purpose,
                    channel: *channel,
                    effect: *effect,
                    reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
                    pack: pack.clone(),
                })
                .collect()
        }
    }

    fn record(line: &str) -> AuditRecord {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn a_batch_is_one_decisions_entry_that_chains_verifies_and_reads_back() {
        let (dir, path) = log_with(1);
        let log = AuditLog::open(dir.path(), &region()).unwrap();
        let batch = Batch::sample();
        log.append_decisions(&batch.entries(), 1_700_000_001).unwrap();
        assert_eq!(log.head().seq, 2);
        let after = log.append(consent(2), Some(&subject(2)), 1_700_000_002).unwrap();
        drop(log);

        let all = lines(&path);
        assert_eq!(all.len(), 3, "one entry for the whole batch");
        let entry = record(&all[1]);
        assert_eq!((entry.seq, entry.kind, entry.subject.as_deref()), (2, AuditKind::Decisions, None));
        assert_eq!(entry.prev, record(&all[0]).hash);
        assert_eq!(after.prev, entry.hash, "the chain continues after the batch");
        assert_eq!(entry.detail.keys().collect::<Vec<_>>(), ["count", "decisions"]);
        assert_eq!(entry.detail["count"], "3");
        assert_eq!(
            entry.detail["decisions"],
            format!(
                "{} marketing email deny de.marketing.email,de.withdrawn de@2026.1+r2;\
                 {} marketing sms allow de.marketing.sms de@2026.1;\
                 {} survey voice_automated allow de.survey.voice_automated de@2026.1",
                "01".repeat(16),
                "02".repeat(16),
                "03".repeat(16)
            )
        );
        assert_eq!(entry.decisions(), Some(Ok(batch.audited())));
        assert_eq!(record(&all[0]).decisions(), None, "other kinds hold no decisions");
        let report = verify_file(dir.path()).unwrap();
        assert_eq!((report.entries, report.head_hash), (3, after.hash));
    }

    /// The hot path writes the line by hand; it must be exactly what serde writes for the same
    /// record, or `verify` (which demands canonical lines) would call the log tampered.
    #[test]
    fn a_decisions_line_is_byte_identical_to_the_serialised_record() {
        for at in [1_700_000_001, 0, -5, i64::MAX] {
            let (dir, path) = log_with(1);
            let log = AuditLog::open(dir.path(), &region()).unwrap();
            let prev = log.head().hash;
            let batch = Batch::sample();
            log.append_decisions(&batch.entries(), at).unwrap();
            drop(log);

            let decisions = batch
                .decisions
                .iter()
                .map(|(subject, purpose, channel, effect, reasons, pack)| {
                    format!("{subject} {purpose} {channel} {effect} {} {pack}", reasons.join(","))
                })
                .collect::<Vec<_>>()
                .join(";");
            let detail: BTreeMap<String, String> =
                [("count".to_owned(), "3".to_owned()), ("decisions".to_owned(), decisions)].into();
            let mut expected = AuditRecord {
                seq: 2,
                at,
                region: "eu-central".into(),
                kind: AuditKind::Decisions,
                subject: None,
                detail,
                prev,
                hash: String::new(),
            };
            expected.hash = expected.compute_hash().unwrap();
            let mut bytes = serde_json::to_vec(&expected).unwrap();
            bytes.push(b'\n');
            let file = std::fs::read(&path).unwrap();
            let second = file.iter().position(|&b| b == b'\n').unwrap() + 1;
            assert_eq!(String::from_utf8_lossy(&file[second..]), String::from_utf8_lossy(&bytes), "at {at}");
            assert_eq!(verify_file(&path).unwrap().entries, 2);
        }
    }

    #[test]
    fn a_large_batch_is_cut_into_chained_entries_below_the_cap() {
        let (dir, path) = log_with(1);
        let log = AuditLog::open(dir.path(), &region()).unwrap();
        let batch = Batch::many(10_000);
        let entries = batch.entries();
        log.append_decisions(&entries, 1_700_000_001).unwrap();
        let head = log.head();
        drop(log);

        let all = lines(&path);
        let records: Vec<AuditRecord> = all[1..].iter().map(|l| record(l)).collect();
        assert!((10..40).contains(&records.len()), "{} entries", records.len());
        assert_eq!(head.seq, 1 + records.len() as u64);
        let mut read_back = Vec::new();
        let mut prev = record(&all[0]).hash;
        for (i, (line, entry)) in all[1..].iter().zip(&records).enumerate() {
            assert_eq!((entry.seq, &entry.prev), (2 + i as u64, &prev));
            prev.clone_from(&entry.hash);
            assert!(line.len() < MAX_LINE as usize);
            let text = &entry.detail["decisions"];
            assert!(text.len() <= MAX_DECISIONS_BYTES, "entry {i}: {} bytes", text.len());
            let decisions = entry.decisions().unwrap().unwrap();
            assert_eq!(entry.detail["count"], decisions.len().to_string());
            // Greedy: an entry is cut only where the next decision would not fit.
            if let Some(next) = entries.get(read_back.len() + decisions.len()) {
                assert!(text.len() + 1 + next.encoded_len() > MAX_DECISIONS_BYTES, "entry {i} cut early");
            }
            read_back.extend(decisions);
        }
        assert_eq!(head.hash, prev);
        assert_eq!(read_back, batch.audited());
        assert_eq!(verify_file(dir.path()).unwrap().entries, head.seq);
    }

    #[test]
    fn an_invalid_reason_or_pack_refuses_the_whole_batch_writing_nothing() {
        let (dir, path) = log_with(1);
        let before = std::fs::read(&path).unwrap();
        let log = AuditLog::open(dir.path(), &region()).unwrap();
        let head = log.head();
        let batch = Batch::sample();
        let good = batch.entries();
        let bad_pack = PackRef { id: "de".into(), version: "+49 151 1234567".into() };
        let long: Vec<String> = (0..400).map(|i| format!("{i:0>128}")).collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        let cases: [(&[&str], &PackRef, &str); 6] = [
            (&["jane@example.com"], good[1].pack, "reasons"),
            (&["de gdpr"], good[1].pack, "reasons"),
            (&[""], good[1].pack, "reasons"),
            (&["a;b"], good[1].pack, "reasons"),
            (&long, good[1].pack, "reasons"),
            (good[1].reasons, &bad_pack, "pack"),
        ];
        for (reasons, pack, expected) in cases {
            let mut entries = good.clone();
            entries[2] = DecisionEntry { reasons, pack, ..entries[2] };
            match log.append_decisions(&entries, 1_700_000_001) {
                Err(AuditError::InvalidField { field }) => assert_eq!(field, expected),
                other => panic!("expected a refusal of `{expected}`, got {other:?}"),
            }
        }
        log.append_decisions(&[], 1_700_000_001).unwrap();
        assert_eq!(log.head(), head);
        drop(log);
        assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was written");
    }

    #[test]
    fn flipping_one_decisions_effect_is_detected_naming_the_entry() {
        let (dir, path) = log_with(1);
        let log = AuditLog::open(dir.path(), &region()).unwrap();
        log.append_decisions(&Batch::sample().entries(), 1_700_000_001).unwrap();
        log.append(consent(2), Some(&subject(2)), 1_700_000_002).unwrap();
        drop(log);
        let mut all = lines(&path);
        assert!(all[1].contains(" allow "));
        all[1] = all[1].replacen(" allow ", " deny ", 1);
        write_lines(&path, &all);
        let t = tamper(&path);
        assert_eq!((t.seq, t.line, t.reason), (Some(2), 2, TamperReason::HashMismatch));
    }

    /// Someone who rewrites the chain could still not slip in a decisions entry a node would not
    /// write: verify reads every one back.
    #[test]
    fn a_rehashed_malformed_decisions_entry_is_tampering() {
        let edits: [(&str, &str, DecisionsError); 4] = [
            ("count", "2", DecisionsError::Count),
            ("count", "03", DecisionsError::Count),
            ("decisions", "", DecisionsError::FieldCount { position: 1 }),
            ("extra", "1", DecisionsError::Keys),
        ];
        for (key, value, expected) in edits {
            let (dir, path) = log_with(1);
            let log = AuditLog::open(dir.path(), &region()).unwrap();
            log.append_decisions(&Batch::sample().entries(), 1_700_000_001).unwrap();
            drop(log);
            let mut all = lines(&path);
            let mut entry = record(&all[1]);
            entry.detail.insert(key.into(), value.into());
            entry.hash = entry.compute_hash().unwrap();
            all[1] = serde_json::to_string(&entry).unwrap();
            write_lines(&path, &all);
            let t = tamper(&path);
            assert_eq!((t.seq, t.line, t.reason), (Some(2), 2, TamperReason::BadDecisions(expected)));
        }
    }

    #[test]
    fn decisions_read_back_strictly() {
        let entry = |subject: Option<&str>, count: &str, decisions: &str| AuditRecord {
            seq: 1,
            at: 0,
            region: "eu-central".into(),
            kind: AuditKind::Decisions,
            subject: subject.map(str::to_owned),
            detail: [("count".to_owned(), count.to_owned()), ("decisions".to_owned(), decisions.to_owned())].into(),
            prev: GENESIS.into(),
            hash: String::new(),
        };
        let id = "ab".repeat(16);
        let good = format!("{id} marketing email allow de.a,de.b de@1");
        let parsed = entry(None, "1", &good).decisions().unwrap().unwrap();
        assert_eq!(parsed[0].subject, SubjectId::from_bytes([0xab; 16]));
        assert_eq!(parsed[0].reasons, ["de.a", "de.b"]);
        assert_eq!(parsed[0].pack, PackRef { id: "de".into(), version: "1".into() });
        let no_reasons = format!("{id} marketing email allow  de@1");
        assert_eq!(entry(None, "1", &no_reasons).decisions().unwrap().unwrap()[0].reasons, Vec::<String>::new());

        let field = |position, field| DecisionsError::Field { position, field };
        let cases: Vec<(Option<&str>, &str, String, DecisionsError)> = vec![
            (Some("eu-central/ab"), "1", good.clone(), DecisionsError::Subject),
            (None, "2", good.clone(), DecisionsError::Count),
            (None, "1", format!("{good};{good}"), DecisionsError::Count),
            (None, "2", format!("{good};"), DecisionsError::FieldCount { position: 2 }),
            (None, "1", format!("{good} extra"), DecisionsError::FieldCount { position: 1 }),
            (None, "1", format!("{id}  marketing email allow de.a de@1"), DecisionsError::FieldCount { position: 1 }),
            (None, "1", good.replace(&id, &"AB".repeat(16)), field(1, "subject")),
            (None, "1", good.replace(&id, "abab"), field(1, "subject")),
            (None, "1", good.replace("marketing", "spam"), field(1, "purpose")),
            (None, "1", good.replace("email", "fax"), field(1, "channel")),
            (None, "1", good.replace("allow", "maybe"), field(1, "effect")),
            (None, "1", good.replace("de.a,de.b", "de.a,,de.b"), field(1, "reasons")),
            (None, "1", good.replace("de.a", "De.a"), field(1, "reasons")),
            (None, "1", good.replace("de@1", "de1"), field(1, "pack")),
            (None, "1", good.replace("de@1", "de@1@2"), field(1, "pack")),
        ];
        for (subject, count, decisions, expected) in cases {
            assert_eq!(entry(subject, count, &decisions).decisions(), Some(Err(expected)), "{decisions}");
        }
        let mut record = entry(None, "1", &good);
        record.detail.remove("count");
        assert_eq!(record.decisions(), Some(Err(DecisionsError::Keys)));
    }

    #[test]
    fn appends_reopens_and_continues_the_chain() {
        let (dir, path) = log_with(3);
        let log = AuditLog::open(dir.path(), &region()).unwrap();
        let head = log.head();
        assert_eq!(head.seq, 3);
        let record = log.append(consent(3), Some(&subject(1)), 1_700_000_100).unwrap();
        assert_eq!(record.seq, 4);
        assert_eq!(record.prev, head.hash);
        assert_eq!(log.head(), AuditHead { seq: 4, hash: record.hash.clone() });
        drop(log);

        let report = verify_file(dir.path()).unwrap();
        assert_eq!(report.entries, 4);
        assert_eq!(report.head_seq, 4);
        assert_eq!(report.head_hash, record.hash);
        assert_eq!(report.region.as_deref(), Some("eu-central"));
        assert_eq!(report.torn_tail, None);
        assert_eq!(lines(&path).len(), 4);
    }

    #[test]
    fn empty_log_verifies_with_genesis_head() {
        let (dir, _) = log_with(0);
        let report = verify_file(dir.path()).unwrap();
        assert_eq!((report.entries, report.head_hash.as_str()), (0, GENESIS));
        assert_eq!(AuditLog::open(dir.path(), &region()).unwrap().head(), AuditHead { seq: 0, hash: GENESIS.into() });
    }

    #[test]
    fn first_entry_chains_from_genesis() {
        let (_dir, path) = log_with(1);
        let record: AuditRecord = serde_json::from_str(&lines(&path)[0]).unwrap();
        assert_eq!((record.seq, record.prev.as_str()), (1, GENESIS));
    }

    #[test]
    fn hash_is_sha256_of_the_line_without_its_hash_member() {
        let (_dir, path) = log_with(2);
        for line in lines(&path) {
            let record: AuditRecord = serde_json::from_str(&line).unwrap();
            let without = line.replace(&format!(",\"hash\":\"{}\"", record.hash), "");
            assert!(without.ends_with("\"}"), "{without}");
            assert_eq!(hex::encode(Sha256::digest(without.as_bytes())), record.hash);
        }
    }

    #[test]
    fn editing_one_byte_of_an_entry_detail_is_detected_naming_the_entry() {
        let (dir, path) = log_with(4);
        let mut all = lines(&path);
        assert!(all[2].contains("\"sequence\":\"2\""));
        all[2] = all[2].replace("\"sequence\":\"2\"", "\"sequence\":\"3\"");
        write_lines(&path, &all);

        let t = tamper(&path);
        assert_eq!((t.seq, t.line, &t.reason), (Some(3), 3, &TamperReason::HashMismatch));
        assert_eq!(t.to_string(), "entry seq 3 (line 3): contents do not match the entry's hash");
        // The node refuses to append to it.
        match AuditLog::open(dir.path(), &region()) {
            Err(AuditError::Tampered(t)) => assert_eq!((t.seq, t.line), (Some(3), 3)),
            other => panic!("expected refusal, got {other:?}"),
        }
    }

    #[test]
    fn any_single_byte_change_is_detected_at_that_line() {
        let (_dir, path) = log_with(3);
        let original = std::fs::read(&path).unwrap();
        let second = original.iter().position(|&b| b == b'\n').unwrap() + 1;
        let end = second + original[second..].iter().position(|&b| b == b'\n').unwrap();
        for i in second..end {
            let mut bytes = original.clone();
            bytes[i] = if bytes[i] == b'x' { b'y' } else { b'x' };
            std::fs::write(&path, &bytes).unwrap();
            let t = tamper(&path);
            assert_eq!(t.line, 2, "byte {i}: {t}");
        }
    }

    #[test]
    fn any_single_byte_change_of_a_decisions_entry_is_detected_at_that_line() {
        let (dir, path) = log_with(1);
        let log = AuditLog::open(dir.path(), &region()).unwrap();
        log.append_decisions(&Batch::sample().entries(), 1_700_000_001).unwrap();
        log.append(consent(2), Some(&subject(2)), 1_700_000_002).unwrap();
        drop(log);
        let original = std::fs::read(&path).unwrap();
        let second = original.iter().position(|&b| b == b'\n').unwrap() + 1;
        let end = second + original[second..].iter().position(|&b| b == b'\n').unwrap();
        for i in second..end {
            for replacement in [b'x', b' ', b';'] {
                let mut bytes = original.clone();
                if bytes[i] == replacement {
                    continue;
                }
                bytes[i] = replacement;
                std::fs::write(&path, &bytes).unwrap();
                let t = tamper(&path);
                assert_eq!(t.line, 2, "byte {i}: {t}");
            }
        }
    }

    #[test]
    fn deleting_a_middle_entry_is_detected() {
        let (_dir, path) = log_with(5);
        let mut all = lines(&path);
        all.remove(2);
        write_lines(&path, &all);
        let t = tamper(&path);
        assert_eq!((t.seq, t.line, t.reason), (Some(4), 3, TamperReason::SeqGap { expected: 3 }));
    }

    #[test]
    fn deleting_the_first_entry_is_detected() {
        let (_dir, path) = log_with(3);
        let mut all = lines(&path);
        all.remove(0);
        write_lines(&path, &all);
        assert_eq!(tamper(&path).reason, TamperReason::SeqGap { expected: 1 });
    }

    #[test]
    fn swapping_two_entries_is_detected() {
        let (_dir, path) = log_with(5);
        let mut all = lines(&path);
        all.swap(1, 2);
        write_lines(&path, &all);
        let t = tamper(&path);
        assert_eq!((t.seq, t.line), (Some(3), 2));
    }

    #[test]
    fn inserting_or_duplicating_an_entry_is_detected() {
        let (_dir, path) = log_with(3);
        let mut all = lines(&path);
        all.insert(2, all[1].clone());
        write_lines(&path, &all);
        let t = tamper(&path);
        assert_eq!((t.seq, t.line, t.reason), (Some(2), 3, TamperReason::SeqBack { expected: 3 }));
    }

    #[test]
    fn a_rehashed_edit_breaks_the_next_link() {
        let (_dir, path) = log_with(3);
        let mut all = lines(&path);
        let mut record: AuditRecord = serde_json::from_str(&all[1]).unwrap();
        record.detail.insert("state".into(), "withdrawn".into());
        record.hash = record.compute_hash().unwrap();
        all[1] = serde_json::to_string(&record).unwrap();
        write_lines(&path, &all);
        let t = tamper(&path);
        assert_eq!((t.seq, t.line, t.reason), (Some(3), 3, TamperReason::PrevMismatch { previous: 2 }));
    }

    #[test]
    fn non_canonical_spelling_is_detected() {
        let (_dir, path) = log_with(2);
        let mut all = lines(&path);
        all[0] = all[0].replacen("{\"seq\":1,", "{\"seq\": 1,", 1);
        write_lines(&path, &all);
        let t = tamper(&path);
        assert_eq!((t.seq, t.line, t.reason), (Some(1), 1, TamperReason::NotCanonical));
    }

    #[test]
    fn torn_tail_is_reported_by_verify_and_truncated_on_reopen() {
        let (dir, path) = log_with(2);
        let good_len = std::fs::metadata(&path).unwrap().len();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":3,\"at\":17000").unwrap();
        drop(file);

        let report = verify_file(&path).unwrap();
        assert_eq!(report.entries, 2);
        assert_eq!(report.torn_tail, Some(TornTail { line: 3, bytes: 19 }));

        let log = AuditLog::open(dir.path(), &region()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
        assert_eq!(log.head().seq, 2);
        assert_eq!(log.append(consent(2), None, 1_700_000_200).unwrap().seq, 3);
        drop(log);
        let report = verify_file(&path).unwrap();
        assert_eq!((report.entries, report.torn_tail), (3, None));
    }

    #[test]
    fn a_complete_but_invalid_last_line_is_tampering_not_a_torn_tail() {
        let (dir, path) = log_with(2);
        let mut all = lines(&path);
        let keep = all[1].len() - 5;
        all[1].truncate(keep);
        write_lines(&path, &all);
        let t = tamper(&path);
        assert_eq!((t.seq, t.line, t.reason), (None, 2, TamperReason::NotAnEntry));
        assert!(matches!(AuditLog::open(dir.path(), &region()), Err(AuditError::Tampered(_))));
    }

    #[test]
    fn an_overlong_line_is_rejected_without_reading_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, vec![b'a'; MAX_LINE as usize + 10]).unwrap();
        assert_eq!(tamper(&path).reason, TamperReason::TooLong);
    }

    #[test]
    fn refuses_a_log_of_another_region() {
        let (dir, _) = log_with(1);
        let other = RegionId::parse("us-east").unwrap();
        assert!(matches!(AuditLog::open(dir.path(), &other), Err(AuditError::WrongRegion { .. })));
    }

    #[test]
    fn refuses_subjects_of_other_regions_and_writes_nothing() {
        let (dir, path) = log_with(1);
        let log = AuditLog::open(dir.path(), &region()).unwrap();
        let foreign = SubjectRef { region: RegionId::parse("us-east").unwrap(), id: SubjectId::from_bytes([1; 16]) };
        assert!(matches!(log.append(consent(1), Some(&foreign), 1), Err(AuditError::ForeignSubject)));
        let merge = AuditEvent::Merge { from: foreign, into: subject(1) };
        assert!(matches!(log.append(merge, Some(&subject(1)), 1), Err(AuditError::ForeignSubject)));
        assert_eq!(log.head().seq, 1);
        assert_eq!(lines(&path).len(), 1);
    }

    #[test]
    fn free_text_in_string_fields_is_refused() {
        let (dir, path) = log_with(0);
        let log = AuditLog::open(dir.path(), &region()).unwrap();
        let pack = PackRef { id: "de-gdpr".into(), version: "1".into() };
        for reasons in [vec!["jane@example.com".to_owned()], vec!["de gdpr".into()], vec![String::new()]] {
            let event = AuditEvent::Decision {
                purpose: Purpose::Marketing,
                channel: Channel::Email,
                effect: Effect::Allow,
                reasons,
                pack: pack.clone(),
            };
            assert!(matches!(log.append(event, None, 1), Err(AuditError::InvalidField { field: "reasons" })));
        }
        let event = AuditEvent::Decision {
            purpose: Purpose::Marketing,
            channel: Channel::Email,
            effect: Effect::Allow,
            reasons: vec![],
            pack: PackRef { id: "de-gdpr".into(), version: "+49 151 1234567".into() },
        };
        assert!(matches!(log.append(event, None, 1), Err(AuditError::InvalidField { field: "pack" })));
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }

    #[test]
    fn entries_hold_only_the_typed_fields() {
        let (dir, path) = log_with(0);
        let log = AuditLog::open(dir.path(), &region()).unwrap();
        for event in every_event() {
            log.append(event, Some(&subject(1)), 1_700_000_000).unwrap();
        }
        let batch = Batch::sample();
        log.append_decisions(&batch.entries()[..2], 1_700_000_000).unwrap();
        drop(log);
        let expected_detail: [(&str, &[&str]); 7] = [
            ("registration", &["identifiers", "jurisdiction"]),
            ("consent", &["channels", "purpose", "sequence", "state"]),
            ("decision", &["channel", "effect", "pack", "purpose", "reasons"]),
            ("rights_request", &["deadline_at", "request_id", "right", "status"]),
            ("erasure", &["links_removed", "proof"]),
            ("merge", &["from", "into"]),
            ("decisions", &["count", "decisions"]),
        ];
        let all = lines(&path);
        assert_eq!(all.len(), expected_detail.len());
        for (line, (kind, detail_keys)) in all.iter().zip(expected_detail) {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let object = value.as_object().unwrap();
            let keys: Vec<&str> = object.keys().map(String::as_str).collect();
            let mut expected = vec!["at", "detail", "hash", "kind", "prev", "region", "seq", "subject"];
            expected.sort_unstable();
            let mut keys_sorted = keys.clone();
            keys_sorted.sort_unstable();
            assert_eq!(keys_sorted, expected);
            assert_eq!(object["kind"], kind);
            if kind == "decisions" {
                assert_eq!(object["subject"], serde_json::Value::Null);
            }
            let detail = object["detail"].as_object().unwrap();
            assert_eq!(detail.keys().map(String::as_str).collect::<Vec<_>>(), detail_keys, "{kind}");
            for (k, v) in detail {
                let v = v.as_str().unwrap();
                // Vocabulary, ids, numbers, digests: no spaces, no `@`-free-text, no quotes. A
                // decisions string separates such tokens with single spaces and `;`.
                let separators: &[u8] = if k == "decisions" { b" ;" } else { b"" };
                assert!(
                    v.bytes().all(|b| b.is_ascii_alphanumeric() || b"@,._+-/".contains(&b) || separators.contains(&b)),
                    "{kind}: {v}"
                );
            }
        }
        let detail_of = |i: usize| -> BTreeMap<String, String> {
            serde_json::from_value(serde_json::from_str::<serde_json::Value>(&all[i]).unwrap()["detail"].clone())
                .unwrap()
        };
        assert_eq!(detail_of(0)["jurisdiction"], "DE");
        assert_eq!(detail_of(1)["channels"], "email,sms");
        assert_eq!(detail_of(2)["pack"], "de-gdpr@2024.1+r2");
        assert_eq!(detail_of(3)["request_id"], "09".repeat(16));
        assert_eq!(detail_of(4)["proof"].len(), 64);
        assert_eq!(detail_of(5)["from"], subject(2).to_string());
        assert_eq!(detail_of(6)["count"], "2");
        assert_eq!(record(&all[6]).decisions(), Some(Ok(batch.audited()[..2].to_vec())));
        assert_eq!(verify_file(dir.path()).unwrap().entries, 7);
    }

    #[test]
    fn erasure_proof_is_deterministic_order_free_and_binding() {
        let links = [Link::from_bytes([1; 16]), Link::from_bytes([2; 16])];
        let swapped = [links[1], links[0], links[1]];
        let p = erasure_proof(&subject(1), &links, 100);
        assert_eq!(p, erasure_proof(&subject(1), &swapped, 100));
        let variants: BTreeSet<String> = [
            p,
            erasure_proof(&subject(2), &links, 100),
            erasure_proof(&subject(1), &links[..1], 100),
            erasure_proof(&subject(1), &links, 101),
            erasure_proof(&subject(1), &[], 100),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(variants.len(), 5);
        let text = p.to_string();
        assert_eq!(text.len(), 64);
        assert!(text.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(!text.contains(&hex::encode([1u8; 16])), "the proof does not reveal a link");
    }

    #[test]
    fn erasure_proof_encoding_is_as_documented() {
        let s = subject(1);
        let link = Link::from_bytes([7; 16]);
        let text = s.to_string();
        let mut input = b"domicile.audit.erasure-proof.v1\0".to_vec();
        input.extend((text.len() as u32).to_be_bytes());
        input.extend(text.as_bytes());
        input.extend(42i64.to_be_bytes());
        input.extend(1u32.to_be_bytes());
        input.extend([7u8; 16]);
        assert_eq!(erasure_proof(&s, &[link], 42).to_string(), hex::encode(Sha256::digest(&input)));
    }

    #[test]
    fn request_ids_parse_only_their_own_form() {
        let id = RequestId::from_bytes([0xab; 16]);
        assert_eq!(RequestId::parse(&id.to_string()), Ok(id));
        for bad in ["", "ab", &"AB".repeat(16), &"zz".repeat(16)] {
            assert!(RequestId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decision_event_carries_the_pack_and_reasons() {
        let decision = Decision {
            effect: Effect::Allow,
            reasons: vec!["de-gdpr.email-marketing".into()],
            pack: PackRef { id: "de-gdpr".into(), version: "1".into() },
            obligations: vec![],
            explanation: "free text that must not reach the log".into(),
            valid_until_unix: None,
            jurisdiction: "DE".into(),
            country_fallback: false,
        };
        let event = AuditEvent::decision(Purpose::Marketing, Channel::Email, &decision);
        let detail = event.detail().unwrap();
        assert_eq!(detail["reasons"], "de-gdpr.email-marketing");
        assert!(detail.values().all(|v| !v.contains("free text")));
    }
}
