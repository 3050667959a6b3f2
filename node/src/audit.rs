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
//! - `kind` is one of `registration`, `consent`, `decision`, `rights_request`, `erasure`, `merge`.
//! - `subject` is a subject ref or `null`.
//! - `detail` is a string → string map with keys in byte order (see [`AuditEvent`] for its keys).
//! - `prev` is the previous entry's `hash`; the first entry's `prev` is 64 zeros ([`GENESIS`]).
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
use domicile_types::{Channel, ConsentState, Jurisdiction, Link, Purpose, RegionId, SubjectRef};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The audit log's file name inside a node's data directory.
pub const FILE_NAME: &str = "audit.log";

/// `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Our entries are a few hundred bytes; a longer line was not written by a node, and the cap
/// keeps a hostile file from exhausting the verifier's memory.
const MAX_LINE: u64 = 64 * 1024;

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
    Decision,
    RightsRequest,
    Erasure,
    Merge,
    /// Personal data served to a caller outside the subject's home regions under a pack transfer.
    Transfer,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Registration => "registration",
            AuditKind::Consent => "consent",
            AuditKind::Decision => "decision",
            AuditKind::RightsRequest => "rights_request",
            AuditKind::Erasure => "erasure",
            AuditKind::Merge => "merge",
            AuditKind::Transfer => "transfer",
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
///   (`id@version`)
/// - rights_request: `right`, `request_id`, `deadline_at`, `status`
/// - erasure: `links_removed`, `proof`
/// - merge: `from`, `into` (subject refs)
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
/// a string map with keys in byte order (a `BTreeMap`, or [`DecisionDetail`] on the hot path).
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

/// A decision's `detail` map, serialised without building one: keys in byte order, values as
/// [`AuditEvent::Decision`]'s `detail` spells them (tested to be identical).
struct DecisionDetail<'a> {
    purpose: Purpose,
    channel: Channel,
    decision: &'a Decision,
}

/// Serialises as a string through `Display`, without allocating it.
struct Shown<T>(T);

impl<T: fmt::Display> Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// Rule ids joined by commas.
struct Joined<'a>(&'a [String]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, reason) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(reason)?;
        }
        Ok(())
    }
}

impl Serialize for DecisionDetail<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("channel", self.channel.as_str())?;
        map.serialize_entry("effect", self.decision.effect.as_str())?;
        map.serialize_entry("pack", &Shown(&self.decision.pack))?;
        map.serialize_entry("purpose", self.purpose.as_str())?;
        map.serialize_entry("reasons", &Shown(Joined(&self.decision.reasons)))?;
        map.end()
    }
}

/// One decision to audit: what [`AuditLog::append_decisions`] takes.
#[derive(Debug, Clone, Copy)]
pub struct DecisionEntry<'a> {
    pub subject: &'a SubjectRef,
    pub purpose: Purpose,
    pub channel: Channel,
    pub decision: &'a Decision,
}

/// The checks [`AuditEvent::detail`] makes on a decision's strings.
fn check_decision(reasons: &[String], pack: &PackRef) -> Result<(), AuditError> {
    if !reasons.iter().all(|r| is_token(r, false)) {
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

    /// Appends one entry per decision, in order, with one `write` for all of them: the hot path of
    /// batch decisions. Entries are the same as [`AuditLog::append`] writes for
    /// [`AuditEvent::decision`]. All or nothing: on error no entry is kept.
    pub fn append_decisions(&self, entries: &[DecisionEntry<'_>], at: i64) -> Result<(), AuditError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut refs = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.subject.region != self.region {
                return Err(AuditError::ForeignSubject);
            }
            check_decision(&entry.decision.reasons, &entry.decision.pack)?;
            refs.push(entry.subject.to_string());
        }
        let mut state = self.lock()?;
        let mut lines = Vec::with_capacity(entries.len() * 384);
        let mut prev = state.head.as_bytes().try_into().unwrap_or([b'0'; 64]);
        for (i, (entry, subject)) in entries.iter().zip(&refs).enumerate() {
            let detail = DecisionDetail { purpose: entry.purpose, channel: entry.channel, decision: entry.decision };
            let hashed = Hashed {
                seq: state.next_seq + i as u64,
                at,
                region: self.region.as_str(),
                kind: AuditKind::Decision,
                subject: Some(subject),
                detail: &detail,
                // Hex digits only, so always UTF-8.
                prev: std::str::from_utf8(&prev).unwrap_or(GENESIS),
            };
            prev = write_entry(&mut lines, &hashed)?;
        }
        Self::write(&mut state, &lines, entries.len() as u64, &prev)
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

    use domicile_types::SubjectId;

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

    /// The batch path must write byte for byte what one `append` per decision writes, or
    /// `verify` (which demands canonical lines) would call the log tampered.
    #[test]
    fn batched_decisions_are_the_same_entries_as_single_appends() {
        let decisions = [
            Decision {
                effect: Effect::Deny,
                reasons: vec!["de.marketing.email".into(), "de.withdrawn".into()],
                pack: PackRef { id: "de".into(), version: "2026.1+r2".into() },
                obligations: Vec::new(),
                explanation: "not in the log".into(),
                valid_until_unix: None,
            },
            Decision {
                effect: Effect::Allow,
                reasons: vec!["de.marketing.email".into()],
                pack: PackRef { id: "de".into(), version: "2026.1".into() },
                obligations: Vec::new(),
                explanation: String::new(),
                valid_until_unix: Some(1_800_000_000),
            },
        ];
        let (one, batched) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let single = AuditLog::open(one.path(), &region()).unwrap();
        let batch = AuditLog::open(batched.path(), &region()).unwrap();
        single.append(consent(1), Some(&subject(1)), 1_700_000_000).unwrap();
        batch.append(consent(1), Some(&subject(1)), 1_700_000_000).unwrap();
        let subjects = [subject(1), subject(2)];
        let mut entries = Vec::new();
        for (decision, subject) in decisions.iter().zip(&subjects) {
            single
                .append(
                    AuditEvent::decision(Purpose::Marketing, Channel::Email, decision),
                    Some(subject),
                    1_700_000_001,
                )
                .unwrap();
            entries.push(DecisionEntry { subject, purpose: Purpose::Marketing, channel: Channel::Email, decision });
        }
        batch.append_decisions(&entries, 1_700_000_001).unwrap();
        // And the chain continues from the batch's last entry.
        single.append(consent(2), Some(&subject(2)), 1_700_000_002).unwrap();
        batch.append(consent(2), Some(&subject(2)), 1_700_000_002).unwrap();
        assert_eq!(single.head(), batch.head());
        assert_eq!(std::fs::read(single.path()).unwrap(), std::fs::read(batch.path()).unwrap());
        assert_eq!(verify_file(batch.path()).unwrap().entries, 4);

        // A foreign subject or a non-token rule id refuses the whole batch, writing nothing.
        let foreign = SubjectRef { region: RegionId::parse("us-east").unwrap(), id: SubjectId::from_bytes([5; 16]) };
        let bad = [entries[0], DecisionEntry { subject: &foreign, ..entries[1] }];
        assert!(matches!(batch.append_decisions(&bad, 1), Err(AuditError::ForeignSubject)));
        let odd = Decision { reasons: vec!["has space".into()], ..decisions[0].clone() };
        let bad = [entries[0], DecisionEntry { decision: &odd, ..entries[1] }];
        assert!(matches!(batch.append_decisions(&bad, 1), Err(AuditError::InvalidField { field: "reasons" })));
        assert_eq!(verify_file(batch.path()).unwrap().entries, 4);
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
        drop(log);
        let expected_detail: [(&str, &[&str]); 6] = [
            ("registration", &["identifiers", "jurisdiction"]),
            ("consent", &["channels", "purpose", "sequence", "state"]),
            ("decision", &["channel", "effect", "pack", "purpose", "reasons"]),
            ("rights_request", &["deadline_at", "request_id", "right", "status"]),
            ("erasure", &["links_removed", "proof"]),
            ("merge", &["from", "into"]),
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
            let detail = object["detail"].as_object().unwrap();
            assert_eq!(detail.keys().map(String::as_str).collect::<Vec<_>>(), detail_keys, "{kind}");
            for v in detail.values() {
                let v = v.as_str().unwrap();
                // Vocabulary, ids, numbers, digests: no spaces, no `@`-free-text, no quotes.
                assert!(v.bytes().all(|b| b.is_ascii_alphanumeric() || b"@,._+-/".contains(&b)), "{kind}: {v}");
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
        assert_eq!(verify_file(dir.path()).unwrap().entries, 6);
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
        };
        let event = AuditEvent::decision(Purpose::Marketing, Channel::Email, &decision);
        let detail = event.detail().unwrap();
        assert_eq!(detail["reasons"], "de-gdpr.email-marketing");
        assert!(detail.values().all(|v| !v.contains("free text")));
    }
}
