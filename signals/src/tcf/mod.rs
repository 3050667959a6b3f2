//! IAB TCF v2.2 / v2.3 TC strings.
//!
//! A TC string is base64url segments joined by `.`: the core segment first,
//! then optionally disclosed vendors (type 1), allowed vendors (type 2,
//! deprecated; decoded and kept) and publisher TC (type 3), each at most once.
//!
//! [`decode`] is strict: besides the structure it refuses withdrawn policy
//! versions (< 4, i.e. pre-v2.2) and, from policy version 5 (v2.3), a string
//! without a disclosed-vendors segment. [`decode_lenient`] checks only the
//! structure, for archives and for the GPP `tcfeuv2` section, whose published
//! examples predate v2.2; call [`TcModel::check_policy`] on its result to
//! apply the policy rules later.

mod decode;
mod encode;
pub(crate) mod vendors;

use serde::{Deserialize, Serialize};

use crate::error::SignalError;

pub(crate) use decode::decode_with;
pub(crate) use encode::{check_letters, encode_with};

/// A decoded TC string. Ids (purposes, special features, vendors) are lists
/// of 1-based ids in increasing order, not bitmaps.
///
/// `created` and `last_updated` are kept as the integer **deciseconds since
/// the Unix epoch** stored in the string, so that a decode → encode round trip
/// is exact (RFC 3339 would need a clock-free formatter and loses nothing but
/// also adds nothing the caller cannot derive: divide by 10 for seconds).
///
/// The string's `MaxVendorId` fields are not kept: they are derived from the
/// largest id when encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcModel {
    /// Always 2.
    pub version: u8,
    /// Deciseconds since the Unix epoch.
    pub created: u64,
    /// Deciseconds since the Unix epoch.
    pub last_updated: u64,
    pub cmp_id: u16,
    pub cmp_version: u16,
    pub consent_screen: u8,
    /// Two uppercase letters (ISO 639-1), e.g. `"EN"`.
    pub consent_language: String,
    pub vendor_list_version: u16,
    /// 4 for TCF v2.2, 5 for TCF v2.3.
    pub policy_version: u8,
    pub is_service_specific: bool,
    pub use_non_standard_texts: bool,
    /// Special feature ids 1..=12.
    pub special_feature_opt_ins: Vec<u8>,
    /// Purpose ids 1..=24.
    pub purposes_consent: Vec<u8>,
    /// Purpose ids 1..=24.
    pub purposes_li_transparency: Vec<u8>,
    pub purpose_one_treatment: bool,
    /// Two uppercase letters (ISO 3166-1 alpha-2), e.g. `"DE"`; `"AA"` means unknown.
    pub publisher_cc: String,
    pub vendor_consents: Vec<u16>,
    pub vendor_legitimate_interests: Vec<u16>,
    pub publisher_restrictions: Vec<PublisherRestriction>,
    /// `None` when the segment is absent (distinct from present but empty).
    #[serde(default)]
    pub disclosed_vendors: Option<Vec<u16>>,
    /// Deprecated allowed-vendors segment (type 2), kept when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_vendors: Option<Vec<u16>>,
    #[serde(default)]
    pub publisher_tc: Option<PublisherTc>,
}

/// One publisher restriction: a purpose, a restriction type and the vendors
/// it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherRestriction {
    /// Purpose id, 1..=63 (6 bits).
    pub purpose_id: u8,
    pub restriction_type: RestrictionType,
    /// Vendor ids in increasing order.
    pub vendors: Vec<u16>,
}

/// Publisher restriction type (2 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestrictionType {
    /// 0: purpose flatly not allowed by the publisher.
    NotAllowed,
    /// 1: require consent.
    RequireConsent,
    /// 2: require legitimate interest.
    RequireLegitimateInterest,
    /// 3: reserved by the spec; decoded rather than refused so that future
    /// strings still decode.
    Undefined,
}

impl RestrictionType {
    pub(crate) fn from_bits(v: u64) -> Self {
        match v {
            0 => Self::NotAllowed,
            1 => Self::RequireConsent,
            2 => Self::RequireLegitimateInterest,
            _ => Self::Undefined,
        }
    }

    pub(crate) fn bits(self) -> u64 {
        match self {
            Self::NotAllowed => 0,
            Self::RequireConsent => 1,
            Self::RequireLegitimateInterest => 2,
            Self::Undefined => 3,
        }
    }
}

/// The publisher TC segment (type 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherTc {
    /// Purpose ids 1..=24.
    pub purposes_consent: Vec<u8>,
    /// Purpose ids 1..=24.
    pub purposes_li_transparency: Vec<u8>,
    /// 0..=63.
    pub num_custom_purposes: u8,
    /// Custom purpose ids 1..=`num_custom_purposes`.
    pub custom_purposes_consent: Vec<u8>,
    /// Custom purpose ids 1..=`num_custom_purposes`.
    pub custom_purposes_li_transparency: Vec<u8>,
}

/// Bit offset of `TcfPolicyVersion` in the core segment, for error reports.
pub(crate) const POLICY_VERSION_OFFSET: usize = 6 + 36 + 36 + 12 + 12 + 6 + 12 + 12;

/// First policy version that is not withdrawn (TCF v2.2).
pub const MIN_POLICY_VERSION: u8 = 4;
/// Policy version from which disclosed vendors are mandatory (TCF v2.3).
pub const DISCLOSED_VENDORS_MANDATORY_FROM: u8 = 5;

impl TcModel {
    /// Applies the policy-level rules that [`decode`] enforces: policy
    /// version ≥ 4, and a disclosed-vendors segment from policy version 5.
    pub fn check_policy(&self) -> Result<(), SignalError> {
        use crate::error::ErrorKind;
        if self.policy_version < MIN_POLICY_VERSION {
            return Err(SignalError::new(
                "core",
                POLICY_VERSION_OFFSET,
                ErrorKind::WithdrawnPolicyVersion { found: self.policy_version },
            ));
        }
        if self.policy_version >= DISCLOSED_VENDORS_MANDATORY_FROM && self.disclosed_vendors.is_none() {
            return Err(SignalError::encode("disclosed vendors", ErrorKind::MissingDisclosedVendors));
        }
        Ok(())
    }
}

/// Flavour of the bit-level encoding: the standalone TC string follows
/// iabtcf-es, the GPP `tcfeuv2` section follows iabgpp-es. They differ only
/// in base64 padding and in how the encoder picks range vs bitfield.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    Tcf,
    Gpp,
}

/// Decodes and validates a TC string (structure and TCF v2.2/v2.3 policy).
pub fn decode(input: &str) -> Result<TcModel, SignalError> {
    let model = decode_with(input, Flavor::Tcf)?;
    model.check_policy()?;
    Ok(model)
}

/// Decodes a TC string checking only its structure (withdrawn policy
/// versions and a missing disclosed-vendors segment are accepted).
pub fn decode_lenient(input: &str) -> Result<TcModel, SignalError> {
    decode_with(input, Flavor::Tcf)
}

/// Encodes a model as a TC string, refusing models that [`decode`] would
/// refuse. Padding and the range/bitfield choice follow iabtcf-es.
pub fn encode(model: &TcModel) -> Result<String, SignalError> {
    model.check_policy()?;
    encode_with(model, Flavor::Tcf)
}

/// Encodes without the policy checks (e.g. to re-emit an archived string).
pub fn encode_lenient(model: &TcModel) -> Result<String, SignalError> {
    encode_with(model, Flavor::Tcf)
}
