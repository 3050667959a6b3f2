//! The crate's errors, at the bottom of its imports: appending ([`AuditError`]), verifying
//! ([`VerifyError`], [`TamperError`]) and reading decisions back ([`DecisionsError`]).

use std::fmt;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log i/o failed: {0}")]
    Io(#[from] io::Error),
    #[error("audit log is tampered at {0}; refusing to append to a broken chain")]
    Tampered(TamperError),
    #[error(
        "audit log {path} ends at entry {found}, but entry {synced} was written and synced (audit.head): \
         the log lost acknowledged entries (truncated or replaced); restore it from a backup"
    )]
    Truncated { path: String, found: u64, synced: u64 },
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
