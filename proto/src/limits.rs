//! How many entries a request's lists may hold: each limit defined once, here. A handler checks
//! its lists with [`MaxItems::check`]; before that, the wire edge counts the same lists in the
//! request's bytes (`wire::RequestCodec`, see `wire::bounded_lists`), so a request with too many
//! is refused before prost builds a single one of them, with the very status the handler gives.

use crate::convert::FieldViolation;

/// At most `max` entries in a list (`at most <max> <what>`); 0: a field that must not be set
/// (`must not be set <what>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxItems {
    pub max: usize,
    /// What is counted, as the refusal says it (`items per call`); may be empty.
    what: &'static str,
}

impl MaxItems {
    pub const fn new(max: usize, what: &'static str) -> Self {
        Self { max, what }
    }

    /// The refusal of a list `field` holding more than [`max`](Self::max) entries.
    pub fn violation(&self, field: &str) -> FieldViolation {
        match (self.max, self.what) {
            // A field the request may not carry at all.
            (0, what) => FieldViolation::new(field, format!("must not be set {what}").trim_end().to_owned()),
            (max, "") => FieldViolation::new(field, format!("at most {max}")),
            (max, what) => FieldViolation::new(field, format!("at most {max} {what}")),
        }
    }

    /// Refuses `count` entries in the list `field` if they are too many.
    pub fn check(&self, field: &str, count: usize) -> Result<(), FieldViolation> {
        if count > self.max { Err(self.violation(field)) } else { Ok(()) }
    }
}

/// `ImportConsent` (gateway and node): `items`.
pub const IMPORT_ITEMS: MaxItems = MaxItems::new(5_000, "items per call");
/// `RegisterBatch` (gateway and node): `items`.
pub const REGISTER_BATCH_ITEMS: MaxItems = MaxItems::new(1_000, "items per call");
/// Node `DecideBatch`: `items`.
pub const DECIDE_BATCH_ITEMS: MaxItems = MaxItems::new(10_000, "items per batch");
/// Identifiers of a registration, and those a rectification adds or removes: bounds the work and
/// storage one request can cause.
pub const IDENTIFIERS: MaxItems = MaxItems::new(32, "identifiers per request");
/// A rectification's `set_profile` and `remove_profile`, together.
pub const PROFILE_FIELDS: MaxItems = MaxItems::new(64, "profile fields per request");
/// Links (or releases) per identifier-ownership call: claims, releases and the repair methods.
pub const LINKS: MaxItems = MaxItems::new(10_000, "links per call");
/// Node `AckChallengeOutbox`: `request_ids`; also the most `ReadChallengeOutbox` returns.
pub const CHALLENGE_OUTBOX_PAGE: MaxItems = MaxItems::new(1_000, "");
/// Channels of one consent record (`RecordConsent`, an import's item): the closed vocabulary,
/// each at most once, fits many times over; counted before decoding, it bounds what a request
/// of empty strings makes the decoder build.
pub const CHANNELS: MaxItems = MaxItems::new(16, "channels per consent");
/// `evidence.signal` on a consent write (`RecordConsent`, an import's item): none. Only
/// `RecordSignal` records signal evidence, from the signal it decodes itself; a caller's own would
/// be evidence nobody checked. Counted before decoding too, so its lists (`gpp_sections`, packed
/// numbers that decode to four times their bytes) are never built.
pub const SIGNAL_EVIDENCE: MaxItems = MaxItems::new(0, "(only RecordSignal records signal evidence)");
/// `evidence.hours`: calling windows a consent covers.
pub const HOURS: MaxItems = MaxItems::new(8, "windows");
