//! TC string decoding (structure only; policy rules live in
//! [`TcModel::check_policy`](super::TcModel::check_policy)).

use crate::bits::BitReader;
use crate::error::{ErrorKind, SignalError};

use super::vendors::{read_restrictions, read_vendor_vector};
use super::{Flavor, PublisherTc, TcModel};

pub(crate) const CORE: &str = "core";
pub(crate) const DISCLOSED: &str = "disclosed vendors";
pub(crate) const ALLOWED: &str = "allowed vendors";
pub(crate) const PUBLISHER_TC: &str = "publisher tc";

/// Decodes all segments. The flavour does not change decoding (both IAB
/// libraries read the same bits); it is taken for symmetry with encoding.
pub(crate) fn decode_with(input: &str, _flavor: Flavor) -> Result<TcModel, SignalError> {
    if input.is_empty() {
        return Err(SignalError::encode(CORE, ErrorKind::EmptyInput));
    }
    let mut parts = input.split('.');
    let core = parts.next().unwrap_or_default();
    let mut model = decode_core(core)?;
    let mut seen = 0u8;
    for part in parts {
        if part.is_empty() {
            return Err(SignalError::encode("segment", ErrorKind::EmptySegment));
        }
        let mut r = BitReader::from_base64url(part, "segment")?;
        let segment_type = r.read_u8(3)?;
        let bit = 1u8 << segment_type;
        if segment_type == 0 {
            return Err(r.err_at(0, ErrorKind::CoreNotFirst));
        }
        if segment_type > 3 {
            return Err(r.err_at(0, ErrorKind::UnknownSegmentType { segment_type }));
        }
        if seen & bit != 0 {
            return Err(r.err_at(0, ErrorKind::DuplicateSegment { segment_type }));
        }
        seen |= bit;
        match segment_type {
            1 => {
                let mut r = rename(r, DISCLOSED);
                model.disclosed_vendors = Some(read_vendor_vector(&mut r)?);
            }
            2 => {
                let mut r = rename(r, ALLOWED);
                model.allowed_vendors = Some(read_vendor_vector(&mut r)?);
            }
            _ => {
                let mut r = rename(r, PUBLISHER_TC);
                model.publisher_tc = Some(read_publisher_tc(&mut r)?);
            }
        }
    }
    Ok(model)
}

/// Re-labels a reader once its segment type is known, for better errors.
fn rename(r: BitReader, segment: &'static str) -> BitReader {
    r.with_segment(segment)
}

fn decode_core(text: &str) -> Result<TcModel, SignalError> {
    let mut r = BitReader::from_base64url(text, CORE)?;
    let version = r.read_u8(6)?;
    if version != 2 {
        return Err(r.err_at(0, ErrorKind::UnsupportedVersion { found: u64::from(version) }));
    }
    Ok(TcModel {
        version,
        created: r.read(36)?,
        last_updated: r.read(36)?,
        cmp_id: r.read_u16(12)?,
        cmp_version: r.read_u16(12)?,
        consent_screen: r.read_u8(6)?,
        consent_language: r.read_letters()?,
        vendor_list_version: r.read_u16(12)?,
        policy_version: r.read_u8(6)?,
        is_service_specific: r.read_bool()?,
        use_non_standard_texts: r.read_bool()?,
        special_feature_opt_ins: r.read_id_set_u8(12)?,
        purposes_consent: r.read_id_set_u8(24)?,
        purposes_li_transparency: r.read_id_set_u8(24)?,
        purpose_one_treatment: r.read_bool()?,
        publisher_cc: r.read_letters()?,
        vendor_consents: read_vendor_vector(&mut r)?,
        vendor_legitimate_interests: read_vendor_vector(&mut r)?,
        publisher_restrictions: read_restrictions(&mut r)?,
        disclosed_vendors: None,
        allowed_vendors: None,
        publisher_tc: None,
    })
}

pub(crate) fn read_publisher_tc(r: &mut BitReader) -> Result<PublisherTc, SignalError> {
    let purposes_consent = r.read_id_set_u8(24)?;
    let purposes_li_transparency = r.read_id_set_u8(24)?;
    let num_custom_purposes = r.read_u8(6)?;
    let n = usize::from(num_custom_purposes);
    Ok(PublisherTc {
        purposes_consent,
        purposes_li_transparency,
        num_custom_purposes,
        custom_purposes_consent: r.read_id_set_u8(n)?,
        custom_purposes_li_transparency: r.read_id_set_u8(n)?,
    })
}
