//! Hand-written wire types for the batch decision path, wire-identical to generated ones.
//!
//! A node answers `DecideBatch` for every decision the gateway asks for (unary calls are
//! coalesced into batches), so this is the node's hot path. The generated types cost an
//! allocation per string both ways: three per request item, about ten per decision (rule ids,
//! pack ref, obligations, explanation, subject ref, region) plus the encoding of the owned
//! copies. Here the request's strings stay slices of the received buffer ([`RawDecideItem`]),
//! and each decision is encoded straight from the pack's borrowed [`DecisionParts`]
//! ([`EncodedDecideBatch`]). Tests below pin both to the generated messages byte for byte.

use std::fmt;

use domicile_policy::{DecisionParts, Effect};
use domicile_types::{SubjectId, SubjectRef};
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, skip_field};

use crate::convert::{self, FieldViolation};
use crate::pb::common::v1 as common;

/// A message built already encoded (its `bytes`): prost writes those bytes as they are. Never
/// decoded (the other side reads the generated or raw type); `clear` empties it.
macro_rules! encoded_message {
    ($name:ident) => {
        impl prost::Message for $name {
            fn encode_raw(&self, buf: &mut impl BufMut) {
                buf.put_slice(&self.bytes);
            }

            fn merge_field(
                &mut self,
                tag: u32,
                wire_type: WireType,
                buf: &mut impl Buf,
                ctx: DecodeContext,
            ) -> Result<(), prost::DecodeError> {
                skip_field(wire_type, tag, buf, ctx)
            }

            fn encoded_len(&self) -> usize {
                self.bytes.len()
            }

            fn clear(&mut self) {
                *self = Self::default();
            }
        }
    };
}

/// The node method [`RawDecideBatchRequest`] and [`EncodedDecideBatch`] are the wire types of.
pub const DECIDE_BATCH_PATH: &str = "/domicile.node.v1.RegionalNode/DecideBatch";

/// The gateway method [`RawDecideResponse`] answers.
pub const DECIDE_PATH: &str = "/domicile.gateway.v1.Domicile/Decide";

/// The gateway method whose results [`RawOutcome`] reads.
pub const DECIDE_STREAM_PATH: &str = "/domicile.gateway.v1.Domicile/DecideStream";

/// `domicile.node.v1.DecideBatchRequest` with its strings kept as received.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawDecideBatchRequest {
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<RawDecideItem>,
    #[prost(message, optional, tag = "2")]
    pub at: Option<prost_types::Timestamp>,
}

/// `domicile.node.v1.DecideItem`; strings are checked for UTF-8 where they are read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawDecideItem {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, optional, tag = "2")]
    pub subject: Option<RawSubjectKey>,
    #[prost(bytes = "bytes", tag = "3")]
    pub purpose: Bytes,
    #[prost(bytes = "bytes", tag = "4")]
    pub channel: Bytes,
    /// Rare on the hot path, so the generated type (it allocates only when present).
    #[prost(message, optional, tag = "5")]
    pub facts: Option<common::DecisionFacts>,
}

/// `domicile.common.v1.SubjectKey`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawSubjectKey {
    #[prost(oneof = "RawKey", tags = "1, 2")]
    pub key: Option<RawKey>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RawKey {
    #[prost(bytes = "bytes", tag = "1")]
    Link(Bytes),
    #[prost(bytes = "bytes", tag = "2")]
    SubjectRef(Bytes),
}

/// A subject key read without allocating: a subject ref's region stays borrowed, for the node
/// to compare with its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKeyRef<'a> {
    Link(domicile_types::Link),
    Ref { region: &'a str, id: SubjectId },
}

impl convert::SubjectKey {
    pub fn as_key_ref(&self) -> SubjectKeyRef<'_> {
        match self {
            convert::SubjectKey::Link(link) => SubjectKeyRef::Link(*link),
            convert::SubjectKey::Ref(subject) => SubjectKeyRef::Ref { region: subject.region.as_str(), id: subject.id },
        }
    }
}

fn utf8<'a>(field: &str, bytes: &'a [u8]) -> Result<&'a str, FieldViolation> {
    std::str::from_utf8(bytes).map_err(|_| FieldViolation::new(field, "is not UTF-8"))
}

impl RawDecideItem {
    /// The item's subject, with the same checks and messages as [`convert::subject_key`].
    pub fn subject_key(&self, field: &str) -> Result<SubjectKeyRef<'_>, FieldViolation> {
        match self.subject.as_ref().and_then(|k| k.key.as_ref()) {
            None => Err(FieldViolation::new(field, "a link or a subject ref is required")),
            Some(RawKey::Link(bytes)) => {
                let field = format!("{field}.link");
                convert::link(&field, utf8(&field, bytes)?).map(SubjectKeyRef::Link)
            }
            Some(RawKey::SubjectRef(bytes)) => {
                let parsed = std::str::from_utf8(bytes).ok().map(SubjectRef::parse_parts);
                match parsed {
                    Some(Ok((region, id))) => Ok(SubjectKeyRef::Ref { region, id }),
                    Some(Err(e)) => Err(FieldViolation::new(format!("{field}.subject_ref"), e)),
                    None => Err(FieldViolation::new(format!("{field}.subject_ref"), "is not UTF-8")),
                }
            }
        }
    }

    pub fn purpose(&self, field: &str) -> Result<domicile_types::Purpose, FieldViolation> {
        convert::purpose(field, utf8(field, &self.purpose)?)
    }

    pub fn channel(&self, field: &str) -> Result<domicile_types::Channel, FieldViolation> {
        convert::channel(field, utf8(field, &self.channel)?)
    }
}

/// `domicile.gateway.v1.DecideStreamItem` with its strings kept as received: what the gateway
/// reads from a caller's `DecideStream`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawDecideStreamItem {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, optional, tag = "2")]
    pub subject: Option<RawSubjectSelector>,
    #[prost(bytes = "bytes", tag = "3")]
    pub purpose: Bytes,
    #[prost(bytes = "bytes", tag = "4")]
    pub channel: Bytes,
    #[prost(message, optional, tag = "5")]
    pub facts: Option<common::DecisionFacts>,
}

/// `domicile.gateway.v1.SubjectSelector`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawSubjectSelector {
    #[prost(oneof = "RawSelector", tags = "1, 2, 3")]
    pub selector: Option<RawSelector>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RawSelector {
    #[prost(message, tag = "1")]
    Identifier(RawIdentifier),
    #[prost(bytes = "bytes", tag = "2")]
    Link(Bytes),
    #[prost(bytes = "bytes", tag = "3")]
    SubjectRef(Bytes),
}

/// `domicile.common.v1.Identifier`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawIdentifier {
    #[prost(bytes = "bytes", tag = "1")]
    pub kind: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// A subject selector read in place; strings are checked for UTF-8 where they are read
/// ([`RawSubjectSelector::view`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorRef<'a> {
    Identifier { kind: &'a str, value: &'a str },
    Link(&'a str),
    SubjectRef(&'a str),
}

impl RawSubjectSelector {
    /// The selector's strings; `field` names the selector in errors (`<field>.link`, …).
    pub fn view(&self, field: &str) -> Result<Option<SelectorRef<'_>>, FieldViolation> {
        fn text<'b>(field: &str, leaf: &str, bytes: &'b [u8]) -> Result<&'b str, FieldViolation> {
            std::str::from_utf8(bytes).map_err(|_| FieldViolation::new(format!("{field}.{leaf}"), "is not UTF-8"))
        }
        Ok(match &self.selector {
            None => None,
            Some(RawSelector::Identifier(id)) => Some(SelectorRef::Identifier {
                kind: text(field, "identifier.kind", &id.kind)?,
                value: text(field, "identifier.value", &id.value)?,
            }),
            Some(RawSelector::Link(bytes)) => Some(SelectorRef::Link(text(field, "link", bytes)?)),
            Some(RawSelector::SubjectRef(bytes)) => Some(SelectorRef::SubjectRef(text(field, "subject_ref", bytes)?)),
        })
    }
}

impl RawDecideStreamItem {
    pub fn purpose(&self, field: &str) -> Result<domicile_types::Purpose, FieldViolation> {
        convert::purpose(field, utf8(field, &self.purpose)?)
    }

    pub fn channel(&self, field: &str) -> Result<domicile_types::Channel, FieldViolation> {
        convert::channel(field, utf8(field, &self.channel)?)
    }
}

/// A node `DecideBatchRequest` (`repeated DecideItem items = 1`, `at = 2`) encoded item by item,
/// from domain values: what the gateway sends a home region for every decision path.
#[derive(Default, Clone, PartialEq)]
pub struct EncodedDecideBatchRequest {
    bytes: Vec<u8>,
    items: usize,
}

impl fmt::Debug for EncodedDecideBatchRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedDecideBatchRequest").field("items", &self.items).finish_non_exhaustive()
    }
}

impl EncodedDecideBatchRequest {
    pub fn with_capacity(items: usize) -> Self {
        Self { bytes: Vec::with_capacity(items * 72), items: 0 }
    }

    /// Appends `DecideItem { id, subject, purpose, channel, facts }`.
    pub fn push(
        &mut self,
        id: u64,
        subject: &convert::SubjectKey,
        purpose: domicile_types::Purpose,
        channel: domicile_types::Channel,
        facts: Option<&common::DecisionFacts>,
    ) {
        // `lk_` + 32 hex digits, or `<region>/` + 32 hex digits: on the stack.
        let mut hex = [0u8; 32];
        let (key_tag, prefix, raw): (u32, &str, &[u8]) = match subject {
            convert::SubjectKey::Link(link) => (1, LINK_PREFIX, link.as_bytes()),
            convert::SubjectKey::Ref(subject) => (2, subject.region.as_str(), subject.id.as_bytes()),
        };
        // Cannot fail: links and subject ids are both 16 bytes.
        let _ = hex::encode_to_slice(raw, &mut hex);
        let hex = std::str::from_utf8(&hex).unwrap_or_default();
        let slash = if key_tag == 2 { "/" } else { "" };
        let key_len = prefix.len() + slash.len() + hex.len();
        let subject_len = str_field_len(key_tag, key_len);
        let (purpose, channel) = (purpose.as_str(), channel.as_str());
        let id_len = if id == 0 { 0 } else { 1 + encoded_len_varint(id) };
        let item_len = id_len
            + 1
            + encoded_len_varint(subject_len as u64)
            + subject_len
            + str_field_len(3, purpose.len())
            + str_field_len(4, channel.len())
            + facts.map_or(0, |f| prost::encoding::message::encoded_len(5, f));
        let buf = &mut self.bytes;
        encode_key(1, WireType::LengthDelimited, buf);
        encode_varint(item_len as u64, buf);
        if id != 0 {
            encode_key(1, WireType::Varint, buf);
            encode_varint(id, buf);
        }
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(subject_len as u64, buf);
        put_str(buf, key_tag, &[prefix, slash, hex]);
        put_str(buf, 3, &[purpose]);
        put_str(buf, 4, &[channel]);
        if let Some(facts) = facts {
            prost::encoding::message::encode(5, facts, buf);
        }
        self.items += 1;
    }

    /// Sets the time every item is decided at (`at`, whole seconds); default: the node's now.
    /// Called after the last [`push`](Self::push): fields follow in number order, as prost
    /// writes them.
    pub fn at(mut self, at_unix: i64) -> Self {
        // `google.protobuf.Timestamp { seconds = 1 }`; nanos stay 0 (omitted).
        let seconds_len = if at_unix == 0 { 0 } else { 1 + encoded_len_varint(at_unix as u64) };
        encode_key(2, WireType::LengthDelimited, &mut self.bytes);
        encode_varint(seconds_len as u64, &mut self.bytes);
        if at_unix != 0 {
            encode_key(1, WireType::Varint, &mut self.bytes);
            encode_varint(at_unix as u64, &mut self.bytes);
        }
        self
    }

    pub fn len(&self) -> usize {
        self.items
    }

    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

encoded_message!(EncodedDecideBatchRequest);

/// How a link is spelled on the wire (`domicile_types::Link`'s `Display`).
const LINK_PREFIX: &str = "lk_";

/// A `DecideBatchResponse` (`repeated DecideOutcome outcomes = 1`) encoded outcome by outcome.
/// As a [`prost::Message`] it encodes to exactly these bytes; it is never decoded.
#[derive(Default, Clone, PartialEq)]
pub struct EncodedDecideBatch {
    bytes: Vec<u8>,
    /// One decision's body, before its length is known.
    scratch: Vec<u8>,
}

impl fmt::Debug for EncodedDecideBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedDecideBatch").field("bytes", &self.bytes.len()).finish_non_exhaustive()
    }
}

const OUTCOMES: u32 = 1;
const OUTCOME_ID: u32 = 1;
const OUTCOME_DECISION: u32 = 2;
const OUTCOME_ERROR: u32 = 3;

impl EncodedDecideBatch {
    /// Room for `items` typical outcomes.
    pub fn with_capacity(items: usize) -> Self {
        Self { bytes: Vec::with_capacity(items * 320), scratch: Vec::with_capacity(512) }
    }

    /// Appends the outcome of item `id`: the decision `parts` about subject `id` of `region`
    /// (the node's), as `domicile.common.v1.Decision`.
    pub fn push_decision(&mut self, id: u64, parts: &DecisionParts<'_>, region: &str, subject: SubjectId) {
        self.scratch.clear();
        put_decision(&mut self.scratch, parts, region, subject);
        self.push_outcome(id, OUTCOME_DECISION, |buf, scratch| buf.extend_from_slice(scratch));
    }

    /// Appends the outcome of item `id`: the error `status` (its code and PII-free message).
    pub fn push_error(&mut self, id: u64, status: &tonic::Status) {
        let error = crate::convert::item_error(status);
        self.scratch.clear();
        prost::Message::encode_raw(&error, &mut self.scratch);
        self.push_outcome(id, OUTCOME_ERROR, |buf, scratch| buf.extend_from_slice(scratch));
    }

    /// `outcomes` entry: `{ id, <field>: scratch }`.
    fn push_outcome(&mut self, id: u64, field: u32, body: impl FnOnce(&mut Vec<u8>, &[u8])) {
        let id_len = if id == 0 { 0 } else { 1 + encoded_len_varint(id) };
        let inner = self.scratch.len();
        let outcome_len = id_len + 1 + encoded_len_varint(inner as u64) + inner;
        encode_key(OUTCOMES, WireType::LengthDelimited, &mut self.bytes);
        encode_varint(outcome_len as u64, &mut self.bytes);
        if id != 0 {
            encode_key(OUTCOME_ID, WireType::Varint, &mut self.bytes);
            encode_varint(id, &mut self.bytes);
        }
        encode_key(field, WireType::LengthDelimited, &mut self.bytes);
        encode_varint(inner as u64, &mut self.bytes);
        body(&mut self.bytes, &self.scratch);
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

encoded_message!(EncodedDecideBatch);

/// A string field made of `parts`, omitted when empty as prost omits a default.
fn put_str(buf: &mut Vec<u8>, tag: u32, parts: &[&str]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len == 0 {
        return;
    }
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
    for part in parts {
        buf.extend_from_slice(part.as_bytes());
    }
}

fn str_field_len(tag: u32, len: usize) -> usize {
    if len == 0 { 0 } else { prost::encoding::key_len(tag) + encoded_len_varint(len as u64) + len }
}

/// A message field whose body is the string fields `id = 1` and `text = 2` (PackRef,
/// Obligation), always present as prost writes a set message field.
fn put_pair(buf: &mut Vec<u8>, tag: u32, first: &str, second: &str) {
    let len = str_field_len(1, first.len()) + str_field_len(2, second.len());
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
    put_str(buf, 1, &[first]);
    put_str(buf, 2, &[second]);
}

/// The body of a `domicile.common.v1.Decision`, fields in number order as prost writes them.
fn put_decision(buf: &mut Vec<u8>, parts: &DecisionParts<'_>, region: &str, subject: SubjectId) {
    let effect = match parts.effect {
        Effect::Allow => common::Effect::Allow,
        Effect::Deny => common::Effect::Deny,
    };
    encode_key(1, WireType::Varint, buf);
    encode_varint(effect as i32 as u64, buf);
    for reason in parts.reasons() {
        // prost writes every element of a repeated string, empty or not.
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(reason.len() as u64, buf);
        buf.extend_from_slice(reason.as_bytes());
    }
    put_pair(buf, 3, &parts.pack.id, &parts.pack.version);
    for obligation in parts.obligations() {
        put_pair(buf, 4, &obligation.id, &obligation.text);
    }
    put_str(buf, 5, &parts.explanation());
    if let Some(until) = parts.valid_until_unix {
        // google.protobuf.Timestamp { seconds = 1 } (nanos are always 0 here).
        let len = if until == 0 { 0 } else { 1 + encoded_len_varint(until as u64) };
        encode_key(6, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
        if until != 0 {
            encode_key(1, WireType::Varint, buf);
            encode_varint(until as u64, buf);
        }
    }
    let mut hex = [0u8; 2 * domicile_types::SUBJECT_ID_LEN];
    // Cannot fail: the buffer is exactly twice the id's length.
    let _ = hex::encode_to_slice(subject.as_bytes(), &mut hex);
    put_str(buf, 7, &[region, "/", std::str::from_utf8(&hex).unwrap_or_default()]);
    put_str(buf, 8, &[region]);
    put_str(buf, 9, &[parts.jurisdiction]);
    if parts.country_fallback {
        // prost omits a false bool and writes a true one as the varint 1.
        encode_key(10, WireType::Varint, buf);
        encode_varint(1, buf);
    }
}

// ---------------------------------------------------------------------------------------------
// Outcomes read with each decision kept encoded (the gateway forwards them; the load tool
// counts them). A node's `DecideOutcome` and the gateway's `DecideStreamResult` are the same
// message on the wire (`uint64 id = 1; oneof result { Decision decision = 2; ItemError error =
// 3; }`), and a message field is encoded exactly like a `bytes` field of the same number.
// ---------------------------------------------------------------------------------------------

/// `DecideBatchResponse` with each decision kept encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawDecideBatchResponse {
    #[prost(message, repeated, tag = "1")]
    pub outcomes: Vec<RawOutcome>,
}

/// A node's `DecideOutcome`, which is also the caller's `DecideStreamResult`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawOutcome {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(oneof = "RawResult", tags = "2, 3")]
    pub result: Option<RawResult>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RawResult {
    /// An encoded `domicile.common.v1.Decision`.
    #[prost(bytes = "bytes", tag = "2")]
    Decision(Bytes),
    #[prost(message, tag = "3")]
    Error(common::ItemError),
}

impl RawOutcome {
    pub fn error(id: u64, status: &tonic::Status) -> Self {
        Self {
            id,
            result: Some(RawResult::Error(common::ItemError {
                code: status.code() as i32,
                message: status.message().to_owned(),
            })),
        }
    }
}

/// `domicile.gateway.v1.DecideResponse` with its decision kept as the node encoded it, so the
/// gateway answers a unary decision without decoding and re-encoding it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawDecideResponse {
    /// An encoded `domicile.common.v1.Decision`; never empty (a decision always has an effect).
    #[prost(bytes = "bytes", tag = "1")]
    pub decision: Bytes,
}

#[cfg(test)]
mod tests {
    use domicile_policy::{ConsentFact, DecisionInput, PackSet, PackSource};
    use domicile_types::{Channel, ConsentState, Purpose, RegionId};
    use prost::Message as _;

    use super::*;
    use crate::pb::gateway::v1 as gateway;
    use crate::pb::node::v1 as node;

    /// The repository's packs: every shape of decision a node serves.
    fn repo_packs() -> PackSet {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-packs");
        let mut sources = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path().join("pack.toml");
            if path.exists() {
                sources.push(PackSource::new(path.display().to_string(), std::fs::read_to_string(&path).unwrap()));
            }
        }
        PackSet::compile(&sources).unwrap().0
    }

    /// The typed decision the node used to build: what the encoder must reproduce.
    fn typed(parts: &DecisionParts<'_>, region: &str, subject: SubjectId) -> common::Decision {
        let d = parts.to_decision();
        common::Decision {
            effect: match d.effect {
                Effect::Allow => common::Effect::Allow,
                Effect::Deny => common::Effect::Deny,
            } as i32,
            reasons: d.reasons,
            pack: Some(convert::pack_ref_to_pb(d.pack)),
            obligations: d.obligations.into_iter().map(|o| common::Obligation { id: o.id, text: o.text }).collect(),
            explanation: d.explanation,
            valid_until: d.valid_until_unix.map(convert::to_timestamp),
            subject_ref: format!("{region}/{subject}"),
            region: region.to_owned(),
            pack_jurisdiction: d.jurisdiction,
            country_fallback: d.country_fallback,
        }
    }

    #[test]
    fn encoded_decisions_are_the_generated_encoding_byte_for_byte() {
        let set = repo_packs();
        let region = RegionId::parse("eu-central").unwrap();
        let consents = [None, Some(ConsentState::Granted), Some(ConsentState::Denied), Some(ConsentState::Withdrawn)];
        // Weekday daytime, night, and before every pack's effect (not in effect).
        let times = [1_795_428_000, 1_795_470_000, 0];
        let mut batch = EncodedDecideBatch::default();
        let mut expected = node::DecideBatchResponse::default();
        let mut id = 0u64;
        for pack in set.packs() {
            // A country's pack also answers, as a fallback, for its subdivisions without a pack.
            let country = pack.jurisdiction().is_some_and(|j| j.subdivision().is_none());
            let fallbacks: &[bool] = if country { &[false, true] } else { &[false] };
            for &purpose in Purpose::ALL {
                for &channel in Channel::ALL {
                    for state in consents {
                        for at in times {
                            for &fallback in fallbacks {
                                let consent = state.map(|state| ConsentFact {
                                    state,
                                    captured_at_unix: 1_700_000_000,
                                    expires_at_unix: Some(1_900_000_000),
                                    double_opt_in_confirmed: false,
                                    kind: None,
                                    hours: Vec::new(),
                                });
                                let input = DecisionInput::new(purpose, channel, at, consent);
                                let subject = SubjectId::from_bytes(std::array::from_fn(|i| (i as u8) ^ (id as u8)));
                                let parts =
                                    pack.decision_parts(&pack.evaluate(&input), None).with_country_fallback(fallback);
                                batch.push_decision(id, &parts, region.as_str(), subject);
                                expected.outcomes.push(node::DecideOutcome {
                                    id,
                                    result: Some(node::decide_outcome::Result::Decision(typed(
                                        &parts,
                                        region.as_str(),
                                        subject,
                                    ))),
                                });
                                id += 1;
                            }
                        }
                    }
                }
            }
        }
        let us_tx = set.lookup(&domicile_types::Jurisdiction::parse("US-NY").unwrap()).unwrap();
        let pack = set.packs().next().unwrap();
        for restricted in [pack.restricted_parts(), us_tx.restricted_parts()] {
            batch.push_decision(id, &restricted, region.as_str(), SubjectId::from_bytes([1; 16]));
            expected.outcomes.push(node::DecideOutcome {
                id,
                result: Some(node::decide_outcome::Result::Decision(typed(
                    &restricted,
                    region.as_str(),
                    SubjectId::from_bytes([1; 16]),
                ))),
            });
            id += 1;
        }
        let status = tonic::Status::not_found("no such subject in this region");
        batch.push_error(id, &status);
        expected.outcomes.push(node::DecideOutcome {
            id,
            result: Some(node::decide_outcome::Result::Error(common::ItemError {
                code: tonic::Code::NotFound as i32,
                message: "no such subject in this region".into(),
            })),
        });
        // The set covers allows with obligations, window denies with their note, defaults.
        let decisions: Vec<&common::Decision> = expected
            .outcomes
            .iter()
            .filter_map(|o| match &o.result {
                Some(node::decide_outcome::Result::Decision(d)) => Some(d),
                _ => None,
            })
            .collect();
        assert!(decisions.iter().any(|d| d.obligations.iter().any(|o| o.id == "unsubscribe")));
        assert!(decisions.iter().any(|d| d.obligations.iter().any(|o| o.id == domicile_policy::CALLING_WINDOW)));
        assert!(decisions.iter().any(|d| d.valid_until.is_some()));
        assert!(decisions.iter().any(|d| d.reasons.iter().any(|r| r.ends_with(".default-deny"))));
        assert!(decisions.iter().any(|d| d.reasons.iter().any(|r| r.ends_with(".restricted"))));
        // Every decision names its pack's jurisdiction; country fallbacks say so, overlays not.
        assert!(
            decisions.iter().all(|d| !d.pack_jurisdiction.is_empty() || d.pack.as_ref().is_some_and(|p| p.id == "eu"))
        );
        assert!(decisions.iter().any(|d| d.pack_jurisdiction == "US-CA" && !d.country_fallback));
        assert!(decisions.iter().any(|d| d.pack_jurisdiction == "US" && d.country_fallback));
        assert!(decisions.iter().filter(|d| d.country_fallback).all(|d| d.explanation.contains("country fallback")));
        assert!(decisions.iter().any(|d| d.country_fallback && d.reasons.iter().any(|r| r == "us.restricted")));
        assert_eq!(batch.as_bytes(), expected.encode_to_vec().as_slice());
        assert_eq!(prost::Message::encoded_len(&batch), batch.as_bytes().len());
        assert_eq!(node::DecideBatchResponse::decode(batch.encode_to_vec().as_slice()).unwrap(), expected);
    }

    #[test]
    fn raw_requests_read_what_the_generated_request_holds() {
        let typed = node::DecideBatchRequest {
            items: vec![
                node::DecideItem {
                    id: 3,
                    subject: Some(common::SubjectKey {
                        key: Some(common::subject_key::Key::SubjectRef(format!("eu-central/{}", "ab".repeat(16)))),
                    }),
                    purpose: "marketing".into(),
                    channel: "email".into(),
                    ..Default::default()
                },
                node::DecideItem {
                    id: 0,
                    subject: Some(common::SubjectKey {
                        key: Some(common::subject_key::Key::Link(format!("lk_{}", "0f".repeat(16)))),
                    }),
                    purpose: "service".into(),
                    channel: "sms".into(),
                    ..Default::default()
                },
                node::DecideItem {
                    id: 9,
                    subject: None,
                    purpose: "nope".into(),
                    channel: "\u{e9}".into(),
                    ..Default::default()
                },
            ],
            at: Some(convert::to_timestamp(1_700_000_000)),
        };
        let raw = RawDecideBatchRequest::decode(typed.encode_to_vec().as_slice()).unwrap();
        assert_eq!(raw.at, typed.at);
        assert_eq!(raw.items.len(), 3);
        for (raw, typed) in raw.items.iter().zip(&typed.items) {
            assert_eq!(raw.id, typed.id);
            let expected = convert::subject_key("subject", typed.subject.as_ref());
            assert_eq!(
                raw.subject_key("subject"),
                expected.as_ref().map(convert::SubjectKey::as_key_ref).map_err(Clone::clone)
            );
            assert_eq!(raw.purpose("purpose"), convert::purpose("purpose", &typed.purpose));
            assert_eq!(raw.channel("channel"), convert::channel("channel", &typed.channel));
        }
        // Bytes that are not UTF-8 are refused by name, like any bad field.
        let bad = RawDecideItem { purpose: Bytes::from_static(b"\xff"), ..raw.items[0].clone() };
        assert_eq!(bad.purpose("items[0].purpose").unwrap_err().field, "items[0].purpose");
        let bad = RawDecideItem {
            subject: Some(RawSubjectKey { key: Some(RawKey::SubjectRef(Bytes::from_static(b"eu-central/\xff"))) }),
            ..raw.items[0].clone()
        };
        assert_eq!(bad.subject_key("subject").unwrap_err().field, "subject.subject_ref");
    }

    fn decision() -> common::Decision {
        common::Decision {
            effect: common::Effect::Allow as i32,
            reasons: vec!["de.marketing.email".into()],
            pack: Some(common::PackRef { id: "de".into(), version: "2026.11.0".into() }),
            obligations: vec![common::Obligation { id: "unsubscribe".into(), text: "offer a way out".into() }],
            explanation: "consent granted".into(),
            valid_until: None,
            subject_ref: "eu-central/00112233445566778899aabbccddeeff".into(),
            region: "eu-central".into(),
            pack_jurisdiction: "DE".into(),
            country_fallback: true,
        }
    }

    /// A node's encoded outcome, read raw and written again, is byte for byte what the caller
    /// would have received from a typed `DecideStreamResult`, for decisions and errors.
    #[test]
    fn raw_outcomes_are_the_callers_results_on_the_wire() {
        let node = node::DecideBatchResponse {
            outcomes: vec![
                node::DecideOutcome { id: 7, result: Some(node::decide_outcome::Result::Decision(decision())) },
                node::DecideOutcome {
                    id: 8,
                    result: Some(node::decide_outcome::Result::Error(common::ItemError {
                        code: 5,
                        message: "no such subject in this region".into(),
                    })),
                },
                node::DecideOutcome { id: 9, result: None },
            ],
        };
        let raw = RawDecideBatchResponse::decode(node.encode_to_vec().as_slice()).unwrap();
        assert_eq!(raw.outcomes.len(), 3);
        assert!(matches!(raw.outcomes[0].result, Some(RawResult::Decision(_))));
        assert!(matches!(raw.outcomes[1].result, Some(RawResult::Error(ref e)) if e.code == 5));
        assert_eq!(raw.outcomes[2].result, None);
        for (raw, typed) in raw.outcomes.iter().zip(&node.outcomes) {
            let expected = gateway::DecideStreamResult {
                id: typed.id,
                result: typed.result.clone().map(|r| match r {
                    node::decide_outcome::Result::Decision(d) => gateway::decide_stream_result::Result::Decision(d),
                    node::decide_outcome::Result::Error(e) => gateway::decide_stream_result::Result::Error(e),
                }),
            };
            assert_eq!(raw.encode_to_vec(), expected.encode_to_vec());
            assert_eq!(gateway::DecideStreamResult::decode(raw.encode_to_vec().as_slice()).unwrap(), expected);
        }
    }

    /// A decision forwarded as encoded is the caller's typed `DecideResponse` byte for byte.
    #[test]
    fn a_forwarded_decision_is_the_callers_decide_response() {
        let typed = gateway::DecideResponse { decision: Some(decision()) };
        let raw = RawDecideResponse { decision: Bytes::from(decision().encode_to_vec()) };
        assert_eq!(raw.encode_to_vec(), typed.encode_to_vec());
        assert_eq!(gateway::DecideResponse::decode(raw.encode_to_vec().as_slice()).unwrap(), typed);
    }

    #[test]
    fn encoded_node_requests_are_the_generated_encoding_byte_for_byte() {
        use domicile_types::{Channel, Link, Purpose, RegionId, SubjectRef};
        let keys = [
            convert::SubjectKey::Link(Link::from_bytes(std::array::from_fn(|i| (i as u8) * 17))),
            convert::SubjectKey::Ref(SubjectRef {
                region: RegionId::parse("sa-east").unwrap(),
                id: SubjectId::from_bytes(std::array::from_fn(|i| 255 - i as u8)),
            }),
        ];
        let mut encoded = EncodedDecideBatchRequest::default();
        let mut typed = node::DecideBatchRequest::default();
        for (n, (key, purpose, channel)) in [
            (&keys[0], Purpose::Marketing, Channel::Email),
            (&keys[1], Purpose::Service, Channel::VoiceAutomated),
            (&keys[0], Purpose::Research, Channel::Sms),
        ]
        .into_iter()
        .enumerate()
        {
            // Ids 0 (omitted on the wire), small and large.
            let id = [0, 7, u64::MAX][n];
            // The middle item carries facts (a nested message after the strings).
            let facts = (n == 1).then(|| common::DecisionFacts {
                on_register: Some(false),
                recipient: "business".into(),
                age: Some(12),
                time_zone: "Asia/Seoul".into(),
                last_purchase_at: Some(prost_types::Timestamp { seconds: 1_790_000_000, nanos: 0 }),
                ..Default::default()
            });
            encoded.push(id, key, purpose, channel, facts.as_ref());
            typed.items.push(node::DecideItem {
                id,
                subject: Some(key.to_pb()),
                purpose: purpose.as_str().into(),
                channel: channel.as_str().into(),
                facts,
            });
        }
        assert_eq!(encoded.len(), 3);
        assert_eq!(encoded.as_bytes(), typed.encode_to_vec().as_slice());
        // With a decision time too, whatever its size (and the epoch itself).
        for at in [1_790_000_000, 0, 1] {
            let timed = encoded.clone().at(at);
            let typed = node::DecideBatchRequest {
                at: Some(prost_types::Timestamp { seconds: at, nanos: 0 }),
                ..typed.clone()
            };
            assert_eq!(timed.as_bytes(), typed.encode_to_vec().as_slice(), "at {at}");
            let read = RawDecideBatchRequest::decode(timed.as_bytes()).unwrap();
            assert_eq!(read.at.map(|t| t.seconds), Some(at));
        }
        assert_eq!(prost::Message::encoded_len(&encoded), encoded.as_bytes().len());
        // And the node reads it back as sent.
        let read = RawDecideBatchRequest::decode(encoded.encode_to_vec().as_slice()).unwrap();
        for (raw, key) in read.items.iter().zip([&keys[0], &keys[1], &keys[0]]) {
            assert_eq!(raw.subject_key("subject").unwrap(), key.as_key_ref());
        }
    }

    #[test]
    fn raw_stream_items_read_what_the_generated_item_holds() {
        let selectors = [
            gateway::subject_selector::Selector::Identifier(common::Identifier {
                kind: "email".into(),
                value: "a@example.com".into(),
            }),
            gateway::subject_selector::Selector::Link("lk_x".into()),
            gateway::subject_selector::Selector::SubjectRef("eu-central/00".into()),
        ];
        for selector in selectors {
            let typed = gateway::DecideStreamItem {
                id: 42,
                subject: Some(gateway::SubjectSelector { selector: Some(selector.clone()) }),
                purpose: "marketing".into(),
                channel: "sms".into(),
                ..Default::default()
            };
            let raw = RawDecideStreamItem::decode(typed.encode_to_vec().as_slice()).unwrap();
            assert_eq!(raw.id, 42);
            assert_eq!(raw.purpose("purpose"), convert::purpose("purpose", "marketing"));
            assert_eq!(raw.channel("channel"), convert::channel("channel", "sms"));
            let view = raw.subject.as_ref().unwrap().view("subject").unwrap().unwrap();
            let expected = match &selector {
                gateway::subject_selector::Selector::Identifier(id) => {
                    SelectorRef::Identifier { kind: &id.kind, value: &id.value }
                }
                gateway::subject_selector::Selector::Link(l) => SelectorRef::Link(l),
                gateway::subject_selector::Selector::SubjectRef(s) => SelectorRef::SubjectRef(s),
            };
            assert_eq!(view, expected);
        }
        let bad = RawSubjectSelector { selector: Some(RawSelector::Link(Bytes::from_static(b"\xc3"))) };
        assert_eq!(bad.view("items.subject").unwrap_err().field, "items.subject.link");
        assert_eq!(RawSubjectSelector { selector: None }.view("subject").unwrap(), None);
    }
}
