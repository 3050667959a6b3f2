use std::collections::BTreeMap;
use std::fmt;

use domicile_policy::{Decision, Effect, PackRef};
use domicile_types::rights::{RequestId, RightsKind, RightsStatus};
use domicile_types::{Channel, ConsentState, Jurisdiction, Link, Purpose, RegionId, SubjectRef};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{AuditError, ERASURE_PROOF_DOMAIN};

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
    /// A merge undone: the merged-away subject split off again under a new ref.
    Unmerge,
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
            AuditKind::Unmerge => "unmerge",
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
/// - rights_request: `right`, `request_id`, `deadline_at` (unix seconds, or `none` where the pack
///   states no deadline: a declared gap, never a made-up one), `status`
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
        /// `None`: the subject's pack states no deadline for the right (a declared gap).
        deadline_at: Option<i64>,
        status: RightsStatus,
        /// Why a request was refused (`verification_failed`, `challenge_expired`, …): a
        /// vocabulary token, never free text. Absent from entries before the tracked lifecycle.
        reason: Option<String>,
        /// The operator's override of the verification a request otherwise needs: its reason
        /// code (a vocabulary token). Absent unless overridden.
        override_reason: Option<String>,
    },
    Erasure {
        links_removed: usize,
        proof: ErasureProof,
    },
    Merge {
        from: SubjectRef,
        into: SubjectRef,
    },
    /// The merged subject the entry is about was split (and retired) into `kept`, the subject
    /// that remained, and `restored`, which was `was` before its merge; `flagged` consent entries
    /// were kept with both for review.
    Unmerge {
        was: SubjectRef,
        kept: SubjectRef,
        restored: SubjectRef,
        flagged: usize,
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
            AuditEvent::Unmerge { .. } => AuditKind::Unmerge,
            AuditEvent::Transfer { .. } => AuditKind::Transfer,
            AuditEvent::OwnershipRepair { .. } => AuditKind::OwnershipRepair,
        }
    }

    /// Subject refs named inside the event, for the residency check.
    pub(crate) fn subject_refs(&self) -> impl Iterator<Item = &SubjectRef> {
        let refs = match self {
            AuditEvent::Merge { from, into } => [Some(from), Some(into), None],
            AuditEvent::Unmerge { was, kept, restored, .. } => [Some(was), Some(kept), Some(restored)],
            _ => [None, None, None],
        };
        refs.into_iter().flatten()
    }

    pub(crate) fn detail(&self) -> Result<BTreeMap<String, String>, AuditError> {
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
            AuditEvent::RightsRequest { kind, request_id, deadline_at, status, reason, override_reason } => {
                // Reasons are codes of a closed grammar, but strings in a public type: check.
                for (field, value) in [("reason", reason), ("override", override_reason)] {
                    if let Some(value) = value {
                        if !is_token(value, false) {
                            return Err(AuditError::InvalidField { field });
                        }
                        put(field, value.clone());
                    }
                }
                put("right", kind.as_str().to_owned());
                put("request_id", request_id.to_string());
                put("deadline_at", deadline_at.map_or_else(|| "none".to_owned(), |at| at.to_string()));
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
            AuditEvent::Unmerge { was, kept, restored, flagged } => {
                put("was", was.to_string());
                put("kept", kept.to_string());
                put("restored", restored.to_string());
                put("flagged", flagged.to_string());
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
pub(crate) fn is_token(s: &str, version: bool) -> bool {
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

/// The checks [`AuditEvent::detail`] and [`AuditLog::append_decisions`] make on a decision's
/// strings: rule ids and pack refs come from loaded packs, but they are strings in public types.
pub(crate) fn check_decision<R: AsRef<str>>(reasons: &[R], pack: &PackRef) -> Result<(), AuditError> {
    if !reasons.iter().all(|r| is_token(r.as_ref(), false)) {
        return Err(AuditError::InvalidField { field: "reasons" });
    }
    check_pack(pack)
}

pub(crate) fn check_pack(pack: &PackRef) -> Result<(), AuditError> {
    if !is_token(&pack.id, false) || !is_token(&pack.version, true) {
        return Err(AuditError::InvalidField { field: "pack" });
    }
    Ok(())
}
