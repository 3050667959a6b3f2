//! What every source format is read into: one [`ImportRow`] per consent event (a source record
//! with several purposes gives several rows), or a [`RowError`] that names where and which field,
//! never the value (identifiers and free text are personal data).
//!
//! A record that is well-formed but says nothing Domicile can record as a consent, a refusal or a
//! withdrawal (a OneTrust `PENDING` purpose, a Fides `acknowledge`, a Transcend preference resolved
//! from defaults, a Ketch grant on a legal basis other than opt-in consent) is a [`RowError`]
//! too, made by [`RowError::skipped`]: it is never imported as a grant, and its reason starts
//! with [`SKIPPED`] so that receipts can tell "nothing to import" from "malformed".

use std::fmt;

/// One consent event to import, in Domicile's terms, from one source record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRow {
    /// 1-based line of the source file where the record starts (for receipts and errors).
    pub line: usize,
    /// `onetrust`, `fides`, `transcend`, `ketch`, or the NDJSON row's `source_system`.
    pub source_system: String,
    /// Unique within the source system and stable across re-reads of the same file: the source's
    /// own event/receipt id where it has one (suffixed `#<purpose-key>` when one source record
    /// yields several rows), else a SHA-256 (hex, 32 chars) of the record's canonical content.
    pub source_event_id: String,
    /// (kind, value): kinds are Domicile identifier kinds `email`, `phone`, `device`, `chat_handle`, `crm_account`.
    pub identifiers: Vec<(String, String)>,
    /// ISO 3166-1 alpha-2 or ISO 3166-2 (`DE`, `US-CA`), from the record or the mapping's declared default.
    pub jurisdiction: String,
    pub purpose: domicile_types::Purpose,
    pub channels: Vec<domicile_types::Channel>,
    pub action: domicile_types::ConsentAction,
    /// When the person acted, milliseconds since the epoch (the original capture time, kept).
    pub captured_at_ms: i64,
    /// When a grant lapses, in Unix SECONDS (as the ledger and `records` keep expiries; the
    /// driver sends it as such); `None` for denials and withdrawals.
    pub expires_at: Option<i64>,
    /// A token (letters, digits, `.`, `_`, `:`, `-`; ≤ 64 chars) naming the notice/version if the source has one, else empty.
    pub notice_version: String,
}

/// Feeds what a row says (as read and mapped) to `digest`, each field length-prefixed: the
/// checkpoint of a run is bound to the rows it covers (`driver.rs`), so a resume with another file,
/// or the same file under another mapping or format, is refused rather than skipping rows.
pub fn feed(digest: &mut sha2::Sha256, row: &Result<ImportRow, RowError>) {
    use sha2::Digest as _;
    let mut field = |bytes: &[u8]| {
        digest.update((bytes.len() as u64).to_be_bytes());
        digest.update(bytes);
    };
    match row {
        Ok(row) => {
            field(b"row");
            field(row.source_system.as_bytes());
            field(row.source_event_id.as_bytes());
            for (kind, value) in &row.identifiers {
                field(kind.as_bytes());
                field(value.as_bytes());
            }
            field(row.jurisdiction.as_bytes());
            field(row.purpose.as_str().as_bytes());
            for channel in &row.channels {
                field(channel.as_str().as_bytes());
            }
            field(format!("{:?}", row.action).as_bytes());
            field(&row.captured_at_ms.to_be_bytes());
            field(&row.expires_at.unwrap_or(i64::MIN).to_be_bytes());
            field(row.notice_version.as_bytes());
        }
        Err(e) => {
            field(b"error");
            field(e.field.as_bytes());
            field(e.reason.as_bytes());
        }
    }
}

/// Why a source record (or one of its fields) could not be imported. Names the line and the field, NEVER the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: usize,
    pub field: String,
    pub reason: String,
}

/// How the reason of a record that holds nothing to import starts.
pub const SKIPPED: &str = "not imported: ";

impl RowError {
    /// `reason` must be fixed text of this crate's, never text taken from the source.
    pub fn new(line: usize, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { line, field: field.into(), reason: reason.into() }
    }

    /// A well-formed record that is not a consent, a refusal or a withdrawal.
    pub fn skipped(line: usize, field: impl Into<String>, why: &str) -> Self {
        Self::new(line, field, format!("{SKIPPED}{why}"))
    }

    /// Whether the record was well-formed but held nothing to import (see [`RowError::skipped`]).
    pub fn is_skip(&self) -> bool {
        self.reason.starts_with(SKIPPED)
    }
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: `{}`: {}", self.line, self.field, self.reason)
    }
}

impl std::error::Error for RowError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_line_and_field_and_skips_are_told_apart() {
        let bad = RowError::new(7, "purposes[1].TransactionType", "not a known OneTrust transaction type");
        assert_eq!(bad.to_string(), "line 7: `purposes[1].TransactionType`: not a known OneTrust transaction type");
        assert!(!bad.is_skip());
        let skip = RowError::skipped(8, "preference", "an acknowledgement of a notice is not a consent");
        assert!(skip.is_skip() && skip.reason.starts_with(SKIPPED));
    }
}
