//! pb -> domain conversions for request fields, with field-precise, PII-free errors.

use std::fmt;

use domicile_types::{
    Channel, ConsentAction, IdentifierKind, Jurisdiction, Link, NormalizedIdentifier, Purpose, SubjectRef,
};

use crate::pb::common::v1 as common;

/// A request field that failed validation. `Display` names the field and the rule broken, never
/// the value that was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl fmt::Display) -> Self {
        Self { field: field.into(), description: description.to_string() }
    }

    pub fn required(field: impl Into<String>) -> Self {
        Self::new(field, "is required")
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.field, self.description)
    }
}

impl std::error::Error for FieldViolation {}

pub fn pack_ref_to_pb(pack: domicile_policy::PackRef) -> common::PackRef {
    common::PackRef { id: pack.id, version: pack.version }
}

/// A batch item's refusal as its outcome carries it: the status's code and its message (PII-free,
/// as every status of the error contract).
pub fn item_error(status: &tonic::Status) -> common::ItemError {
    common::ItemError { code: status.code() as i32, message: status.message().to_owned() }
}

/// A request the subject's pack does not allow from the caller's region. The refusal names the
/// pack and regions only, so it is safe for any caller.
pub fn residency_refused(refusal: domicile_policy::ResidencyRefusal) -> tonic::Status {
    tonic::Status::permission_denied(refusal.to_string())
}

impl From<FieldViolation> for tonic::Status {
    fn from(v: FieldViolation) -> Self {
        tonic::Status::invalid_argument(v.to_string())
    }
}

/// A subject named pseudonymously: what may travel to a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SubjectKey {
    Link(Link),
    Ref(SubjectRef),
}

impl SubjectKey {
    /// The link the subject was named by, if it was named by one (not by its ref).
    pub fn link(&self) -> Option<Link> {
        match self {
            SubjectKey::Link(link) => Some(*link),
            SubjectKey::Ref(_) => None,
        }
    }

    pub fn to_pb(&self) -> common::SubjectKey {
        let key = match self {
            SubjectKey::Link(link) => common::subject_key::Key::Link(link.to_string()),
            SubjectKey::Ref(subject) => common::subject_key::Key::SubjectRef(subject.to_string()),
        };
        common::SubjectKey { key: Some(key) }
    }
}

pub fn jurisdiction(field: &str, text: &str) -> Result<Jurisdiction, FieldViolation> {
    if text.is_empty() {
        return Err(FieldViolation::required(field));
    }
    Jurisdiction::parse(text).map_err(|e| FieldViolation::new(field, e))
}

pub fn purpose(field: &str, text: &str) -> Result<Purpose, FieldViolation> {
    if text.is_empty() {
        return Err(FieldViolation::required(field));
    }
    Purpose::parse(text).map_err(|e| FieldViolation::new(field, e))
}

pub fn channel(field: &str, text: &str) -> Result<Channel, FieldViolation> {
    if text.is_empty() {
        return Err(FieldViolation::required(field));
    }
    Channel::parse(text).map_err(|e| FieldViolation::new(field, e))
}

/// Channels of a consent record: at least one, no duplicates.
pub fn channels(field: &str, texts: &[String]) -> Result<Vec<Channel>, FieldViolation> {
    if texts.is_empty() {
        return Err(FieldViolation::required(field));
    }
    crate::limits::CHANNELS.check(field, texts.len())?;
    let mut out = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let c = channel(&format!("{field}[{i}]"), text)?;
        if out.contains(&c) {
            return Err(FieldViolation::new(format!("{field}[{i}]"), "repeats an earlier channel"));
        }
        out.push(c);
    }
    Ok(out)
}

pub fn identifier(field: &str, pb: Option<&common::Identifier>) -> Result<NormalizedIdentifier, FieldViolation> {
    let pb = pb.ok_or_else(|| FieldViolation::required(field))?;
    identifier_parts(field, &pb.kind, &pb.value)
}

/// [`identifier`] from its kind and value, however they were read.
pub fn identifier_parts(field: &str, kind: &str, value: &str) -> Result<NormalizedIdentifier, FieldViolation> {
    if kind.is_empty() {
        return Err(FieldViolation::required(format!("{field}.kind")));
    }
    let kind = IdentifierKind::parse(kind).ok_or_else(|| {
        let expected: Vec<&str> = IdentifierKind::ALL.iter().map(|k| k.as_str()).collect();
        FieldViolation::new(
            format!("{field}.kind"),
            format!("unknown identifier kind: expected one of {}", expected.join(", ")),
        )
    })?;
    NormalizedIdentifier::normalize(kind, value).map_err(|e| FieldViolation::new(format!("{field}.value"), e))
}

/// Identifiers of a registration: at least one, each valid.
pub fn identifiers(field: &str, pbs: &[common::Identifier]) -> Result<Vec<NormalizedIdentifier>, FieldViolation> {
    if pbs.is_empty() {
        return Err(FieldViolation::new(field, "at least one identifier is required"));
    }
    crate::limits::IDENTIFIERS.check(field, pbs.len())?;
    pbs.iter().enumerate().map(|(i, pb)| identifier(&format!("{field}[{i}]"), Some(pb))).collect()
}

pub fn link(field: &str, text: &str) -> Result<Link, FieldViolation> {
    Link::parse(text).map_err(|e| FieldViolation::new(field, e))
}

pub fn subject_ref(field: &str, text: &str) -> Result<SubjectRef, FieldViolation> {
    SubjectRef::parse(text).map_err(|e| FieldViolation::new(field, e))
}

pub fn subject_key(field: &str, pb: Option<&common::SubjectKey>) -> Result<SubjectKey, FieldViolation> {
    match pb.and_then(|k| k.key.as_ref()) {
        None => Err(FieldViolation::new(field, "a link or a subject ref is required")),
        Some(common::subject_key::Key::Link(text)) => link(&format!("{field}.link"), text).map(SubjectKey::Link),
        Some(common::subject_key::Key::SubjectRef(text)) => {
            subject_ref(&format!("{field}.subject_ref"), text).map(SubjectKey::Ref)
        }
    }
}

pub fn consent_action(field: &str, value: i32) -> Result<ConsentAction, FieldViolation> {
    match common::ConsentAction::try_from(value) {
        Ok(common::ConsentAction::Grant) => Ok(ConsentAction::Grant),
        Ok(common::ConsentAction::Deny) => Ok(ConsentAction::Deny),
        Ok(common::ConsentAction::Withdraw) => Ok(ConsentAction::Withdraw),
        Ok(common::ConsentAction::Unspecified) => Err(FieldViolation::required(field)),
        Err(_) => Err(FieldViolation::new(field, "unknown consent action")),
    }
}

pub fn consent_action_to_pb(action: ConsentAction) -> common::ConsentAction {
    match action {
        ConsentAction::Grant => common::ConsentAction::Grant,
        ConsentAction::Deny => common::ConsentAction::Deny,
        ConsentAction::Withdraw => common::ConsentAction::Withdraw,
    }
}

/// Seconds since the Unix epoch; sub-second precision is not meaningful for consent.
pub fn timestamp(field: &str, ts: Option<&prost_types::Timestamp>) -> Result<Option<i64>, FieldViolation> {
    match ts {
        None => Ok(None),
        Some(ts) if !(0..1_000_000_000).contains(&ts.nanos) => Err(FieldViolation::new(field, "nanos out of range")),
        // Years 1970..=9999: anything else is a client bug, not a date a consent was given.
        Some(ts) if !(0..=253_402_300_799).contains(&ts.seconds) => {
            Err(FieldViolation::new(field, "must be between 1970 and 9999"))
        }
        Some(ts) => Ok(Some(ts.seconds)),
    }
}

/// [`timestamp`] in milliseconds (for ordering records captured within the same second).
pub fn timestamp_ms(field: &str, ts: Option<&prost_types::Timestamp>) -> Result<Option<i64>, FieldViolation> {
    Ok(timestamp(field, ts)?.zip(ts).map(|(seconds, ts)| seconds * 1000 + i64::from(ts.nanos / 1_000_000)))
}

pub fn to_timestamp(unix: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: unix, nanos: 0 }
}

pub fn identifier_to_pb(id: &NormalizedIdentifier) -> common::Identifier {
    common::Identifier { kind: id.kind().as_str().to_owned(), value: id.expose_value().to_owned() }
}

/// Bounds free-text evidence fields so a caller cannot store arbitrary payloads.
pub fn short_text(field: &str, text: &str, max: usize) -> Result<String, FieldViolation> {
    if text.len() > max {
        return Err(FieldViolation::new(field, format!("is longer than {max} bytes")));
    }
    if text.chars().any(char::is_control) {
        return Err(FieldViolation::new(field, "contains control characters"));
    }
    Ok(text.to_owned())
}

/// Longest evidence token (`notice_version`, `source_system`).
pub const MAX_EVIDENCE_TOKEN: usize = 64;
/// Longest run of digits an evidence token may hold: dates (`20260101`) pass, a phone number
/// does not.
const MAX_DIGIT_RUN: usize = 8;

/// Whether `text` is an evidence token: 1-64 characters of `A-Z a-z 0-9 . _ : -`, starting with
/// a letter or digit, with no run of more than 8 digits. Evidence names *which* notice and
/// *which* system, so it is an identifier, never free text: nothing free-form is kept with a
/// consent record or crosses with a consent history (invariant 2). An e-mail address (`@`), a
/// phone number (`+`, long digit runs) or a name with spaces is refused.
pub fn is_evidence_token(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut run = 0;
    (1..=MAX_EVIDENCE_TOKEN).contains(&bytes.len())
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.iter().all(|b| {
            run = if b.is_ascii_digit() { run + 1 } else { 0 };
            run <= MAX_DIGIT_RUN && (b.is_ascii_alphanumeric() || b"._:-".contains(b))
        })
}

/// An evidence token field (see [`is_evidence_token`]); empty is allowed (not given).
pub fn evidence_token(field: &str, text: &str) -> Result<String, FieldViolation> {
    if text.is_empty() || is_evidence_token(text) {
        return Ok(text.to_owned());
    }
    Err(FieldViolation::new(
        field,
        format!(
            "must be an identifier of 1-{MAX_EVIDENCE_TOKEN} characters of `A-Z`, `a-z`, `0-9`, `.`, `_`, `:` and `-` \
             (e.g. `privacy-notice-v3`), with at most {MAX_DIGIT_RUN} digits in a row"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_is_a_token_never_personal_free_text() {
        for good in ["v3", "privacy-notice-v3", "web-preference-centre", "crm:salesforce", "notice_2026.01", "20260101"]
        {
            assert!(evidence_token("evidence.notice_version", good).is_ok(), "{good}");
        }
        for bad in [
            "anna@example.de",
            "+4915112345678",
            "4915112345678",
            "Anna Schmidt",
            "-leading",
            "line\nbreak",
            &"x".repeat(65),
        ] {
            let err = evidence_token("evidence.notice_version", bad).unwrap_err().to_string();
            assert!(err.contains("evidence.notice_version"), "{err}");
            assert!(!err.contains(bad), "{err}");
        }
    }

    #[test]
    fn violations_name_the_field_not_the_value() {
        let pb = common::Identifier { kind: "email".into(), value: "private.person@@example".into() };
        let err = identifier("identifiers[0]", Some(&pb)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("identifiers[0].value"), "{msg}");
        assert!(!msg.contains("private.person"), "{msg}");

        let err = purpose("purpose", "jane@example.com").unwrap_err().to_string();
        assert!(err.contains("`purpose`") && !err.contains("jane"), "{err}");
        let err = jurisdiction("jurisdiction", "").unwrap_err().to_string();
        assert!(err.contains("is required"), "{err}");
    }

    #[test]
    fn unknown_subdivisions_are_invalid_naming_the_field_never_the_value() {
        for (text, value) in [("US-CAL", "CAL"), ("de-zz", "zz"), ("BR-XX", "XX"), ("us-cal", "cal")] {
            let violation = jurisdiction("jurisdiction", text).unwrap_err();
            assert_eq!(violation.field, "jurisdiction");
            let status = tonic::Status::from(violation);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            let msg = status.message();
            assert!(msg.starts_with("invalid `jurisdiction`: ") && msg.contains("ISO 3166-2"), "{msg}");
            assert!(!msg.contains(text) && !msg.contains(value), "{text}: {msg}");
        }
        for (text, canonical) in [("US-CA", "US-CA"), ("us-tx", "US-TX"), ("de-by", "DE-BY"), ("BR-SP", "BR-SP")] {
            assert_eq!(jurisdiction("jurisdiction", text).map(|j| j.to_string()), Ok(canonical.to_owned()));
        }
    }

    #[test]
    fn subject_keys() {
        assert!(subject_key("subject", None).is_err());
        let key = common::SubjectKey { key: Some(common::subject_key::Key::Link("lk_00".into())) };
        assert_eq!(subject_key("subject", Some(&key)).unwrap_err().field, "subject.link");
    }

    #[test]
    fn descriptor_set_decodes() {
        use prost::Message;
        let fds = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).unwrap();
        let names: Vec<_> = fds.file.iter().filter_map(|f| f.package.clone()).collect();
        for pkg in ["domicile.common.v1", "domicile.gateway.v1", "domicile.node.v1"] {
            assert!(names.iter().any(|n| n == pkg), "{pkg} missing");
        }
    }
}

/// The facts a caller asserts about one contact, and the subject's time zone if it gave one.
/// Left out entirely: nothing asserted. An unknown recipient type, an age beyond a lifetime or a
/// time zone that is not an IANA name is refused, never read as unknown.
pub fn decision_facts(
    field: &str,
    pb: Option<&common::DecisionFacts>,
) -> Result<(domicile_policy::Facts, Option<domicile_policy::Zone>), FieldViolation> {
    let Some(f) = pb else { return Ok((domicile_policy::Facts::default(), None)) };
    let recipient = match f.recipient.as_str() {
        "" => None,
        text => Some(
            domicile_policy::Recipient::parse(text)
                .ok_or_else(|| FieldViolation::new(format!("{field}.recipient"), "must be `consumer` or `business`"))?,
        ),
    };
    let age = match f.age {
        None => None,
        Some(age) => Some(
            u8::try_from(age)
                .ok()
                .filter(|a| *a <= 130)
                .ok_or_else(|| FieldViolation::new(format!("{field}.age"), "must be an age in whole years"))?,
        ),
    };
    let zone = match f.time_zone.as_str() {
        "" => None,
        name => Some(
            domicile_policy::Zone::parse(name)
                .ok_or_else(|| FieldViolation::new(format!("{field}.time_zone"), "must be an IANA time zone name"))?,
        ),
    };
    let facts = domicile_policy::Facts {
        contact_from_sale: f.contact_from_sale,
        similar_products: f.similar_products,
        opt_out_offered: f.opt_out_offered,
        on_register: f.on_register,
        last_purchase_at: timestamp(&format!("{field}.last_purchase_at"), f.last_purchase_at.as_ref())?,
        last_inquiry_at: timestamp(&format!("{field}.last_inquiry_at"), f.last_inquiry_at.as_ref())?,
        recipient,
        age,
    };
    Ok((facts, zone))
}

/// What a consent record is, read from its channels and evidence: a consent to contact on the
/// channels, of a kind (`None`: express) and for some hours, or a consent to transfers of the
/// purpose's data out of the home regions (no channels, no hours).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordShape {
    Contact { channels: Vec<Channel>, kind: Option<domicile_policy::ConsentKind>, hours: Vec<String> },
    Transfer { kind: domicile_policy::TransferConsent },
}

impl RecordShape {
    /// The kind as stored with the record (`None`: express consent to contact).
    pub fn kind_text(&self) -> Option<&'static str> {
        match self {
            RecordShape::Contact { kind, .. } => kind.map(domicile_policy::ConsentKind::as_str),
            RecordShape::Transfer { kind } => Some(kind.as_str()),
        }
    }
}

/// A consent record's channels and `evidence.consent_kind` / `evidence.hours`, checked together:
/// a transfer consent (`explicit_transfer`, `separate_transfer`) names no channel and no hours;
/// any other record names at least one channel. A caller's `evidence.signal` is refused
/// ([`crate::limits::SIGNAL_EVIDENCE`]).
pub fn record_shape(channels: &[String], evidence: Option<&common::Evidence>) -> Result<RecordShape, FieldViolation> {
    crate::limits::SIGNAL_EVIDENCE
        .check("evidence.signal", usize::from(evidence.is_some_and(|e| e.signal.is_some())))?;
    let (kind, hours) = evidence.map_or(("", &[][..]), |e| (e.consent_kind.as_str(), &e.hours[..]));
    if let Some(kind) = domicile_policy::TransferConsent::parse(kind) {
        if !channels.is_empty() {
            return Err(FieldViolation::new("channels", "must be empty for a consent to transfers"));
        }
        if !hours.is_empty() {
            return Err(FieldViolation::new("evidence.hours", "must be empty for a consent to transfers"));
        }
        return Ok(RecordShape::Transfer { kind });
    }
    let kind = match kind {
        "" => None,
        text => Some(domicile_policy::ConsentKind::parse(text).ok_or_else(|| {
            FieldViolation::new(
                "evidence.consent_kind",
                "must be `express`, `implied_purchase`, `implied_inquiry`, `guardian`, `explicit_transfer` or `separate_transfer`",
            )
        })?),
    };
    Ok(RecordShape::Contact {
        channels: self::channels("channels", channels)?,
        kind,
        hours: consent_hours("evidence.hours", hours)?,
    })
}

/// `evidence.hours`: ids of calling windows (`a-z`, `0-9`, `_`, `-`; at most 8, each at most 64
/// characters, no repeats). Whether the subject's pack defines them is the node's check.
pub fn consent_hours(field: &str, hours: &[String]) -> Result<Vec<String>, FieldViolation> {
    crate::limits::HOURS.check(field, hours.len())?;
    for (i, id) in hours.iter().enumerate() {
        let valid = (1..=64).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return Err(FieldViolation::new(
                format!("{field}[{i}]"),
                "must be a window id of `a-z`, `0-9`, `_` or `-`",
            ));
        }
        if hours[..i].contains(id) {
            return Err(FieldViolation::new(format!("{field}[{i}]"), "is listed twice"));
        }
    }
    Ok(hours.to_vec())
}
