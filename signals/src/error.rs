//! The crate's single error type.
//!
//! Consent strings are personal-data adjacent (they can be joined with other
//! data to single out a browser), so an error **never** embeds the input or
//! any part of it: only the segment/section name, a bit offset and what was
//! wrong. `tests/no_leak.rs` enforces this.

/// What went wrong while decoding or encoding a consent signal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    #[error("the input is empty")]
    EmptyInput,
    #[error("empty segment")]
    EmptySegment,
    #[error("invalid base64url character at character index {char_index}")]
    InvalidBase64 { char_index: usize },
    #[error("unexpected end of data: needed {needed} bits, {available} left")]
    UnexpectedEnd { needed: usize, available: usize },
    #[error("unsupported version {found}")]
    UnsupportedVersion { found: u64 },
    #[error("TCF policy version {found} is withdrawn (TCF v2.2 requires policy version 4 or later)")]
    WithdrawnPolicyVersion { found: u8 },
    #[error("the disclosed vendors segment is mandatory from TCF policy version 5 (TCF v2.3)")]
    MissingDisclosedVendors,
    #[error("segment type {segment_type} appears more than once")]
    DuplicateSegment { segment_type: u8 },
    #[error("unknown segment type {segment_type}")]
    UnknownSegmentType { segment_type: u8 },
    #[error("the core segment must come first and only once")]
    CoreNotFirst,
    #[error("invalid two-letter code (letters must be A-Z)")]
    InvalidLetterCode,
    #[error("invalid range: end {end} is before start {start}")]
    InvalidRange { start: u32, end: u32 },
    #[error("id {id} is outside 1..={max}")]
    IdOutOfRange { id: u32, max: u32 },
    #[error("more than {limit} ids")]
    TooManyIds { limit: usize },
    #[error("invalid Fibonacci-coded integer")]
    InvalidFibonacci,
    #[error("invalid value {value} for field {field}")]
    InvalidValue { field: &'static str, value: u64 },
    #[error("header type must be 3, found {found}")]
    InvalidHeaderType { found: u64 },
    #[error("the header lists {listed} sections but {found} are present")]
    SectionCountMismatch { listed: usize, found: usize },
    #[error("section ids must be listed in increasing order without duplicates")]
    SectionOrder,
    #[error("invalid subsection")]
    InvalidSubsection,
    #[error("field {field} does not fit in {bits} bits")]
    ValueTooLarge { field: &'static str, bits: u32 },
    #[error("field {field} must be a strictly increasing list of valid ids")]
    InvalidIdList { field: &'static str },
    #[error("field {field} must have exactly {expected} entries")]
    WrongLength { field: &'static str, expected: usize },
    #[error("field {field} is not valid: {reason}")]
    InvalidModel { field: &'static str, reason: &'static str },
}

/// A decoding or encoding failure, locating the problem without quoting the
/// input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{segment}{}: {kind}", offset.map(|o| format!(" at bit {o}")).unwrap_or_default())]
pub struct SignalError {
    /// Segment or section: `"core"`, `"disclosed vendors"`, `"publisher tc"`,
    /// `"header"`, `"usnat"`, `"usnat gpc"`, ...
    pub segment: &'static str,
    /// Bit offset within that segment, when decoding.
    pub offset: Option<usize>,
    /// What was wrong.
    pub kind: ErrorKind,
}

impl SignalError {
    pub(crate) fn new(segment: &'static str, offset: usize, kind: ErrorKind) -> Self {
        Self { segment, offset: Some(offset), kind }
    }

    /// An error with no bit position (structure-level or encode-side).
    pub(crate) fn encode(segment: &'static str, kind: ErrorKind) -> Self {
        Self { segment, offset: None, kind }
    }
}
