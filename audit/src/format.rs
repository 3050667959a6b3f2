use std::collections::BTreeMap;
use std::io::{self, Write};

use domicile_policy::{Effect, PackRef};
use domicile_types::{Channel, Purpose, RegionId, SUBJECT_ID_LEN, SubjectId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{AuditKind, DecisionsError, is_token};

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
pub(crate) struct Hashed<'a, D: Serialize> {
    pub(crate) seq: u64,
    pub(crate) at: i64,
    pub(crate) region: &'a str,
    pub(crate) kind: AuditKind,
    pub(crate) subject: Option<&'a str>,
    pub(crate) detail: &'a D,
    pub(crate) prev: &'a str,
}

/// Appends the canonical line of an entry to `out` (with its `\n`) and returns its hash as hex.
/// The line is `Hashed` with `,"hash":"…"` spliced in before the closing brace, which is exactly
/// how serde serialises [`AuditRecord`] (same members, same order, `hash` last), so the line is
/// serialised and hashed once.
pub(crate) fn write_entry<D: Serialize>(
    out: &mut Vec<u8>,
    hashed: &Hashed<'_, D>,
) -> Result<[u8; 64], serde_json::Error> {
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
    pub(crate) fn encoded_len(&self) -> usize {
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
pub(crate) fn write_decisions_entry(
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

/// The last entry: what the node reports so it can be anchored outside the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    /// 0 for an empty log.
    pub seq: u64,
    /// [`GENESIS`] for an empty log.
    pub hash: String,
}
