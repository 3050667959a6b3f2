//! domicile-audit: the region's tamper-evident audit log (invariant 5): consent changes, decisions, rights
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
//!
//! # Layout
//!
//! `event.rs` (what an entry can record: the only way in), `format.rs` (entries and the
//! canonical encoding, decisions entries), `log.rs` (the writer a node appends with), `verify.rs`
//! (the offline verifier). This crate links no storage engine: `domicile audit verify` and any
//! auditor's tool read a log with it alone.

mod chain;
mod error;
mod event;
mod format;
mod log;
mod verify;

pub use chain::Chain;
pub use error::*;
pub use event::*;
pub use format::*;
pub use log::*;
pub use verify::*;

/// The audit log's file name inside a node's data directory.
pub const FILE_NAME: &str = "audit.log";

/// Beside the log: the seq of the last entry known synced (`log::AuditLog::sync`), so a log that
/// lost whole entries from its end, which still verifies as a shorter chain, is told from one
/// that never had them.
pub const HEAD_FILE_NAME: &str = "audit.head";

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

#[cfg(test)]
mod tests;
