//! TC string encoding.

use crate::bits::{BitWriter, Padding, check_ids, check_width};
use crate::error::{ErrorKind, SignalError};

use super::decode::{ALLOWED, CORE, DISCLOSED, PUBLISHER_TC};
use super::vendors::{RangeRule, write_restrictions, write_vendor_vector};
use super::{Flavor, PublisherTc, TcModel};

/// Checks a two-letter A–Z code.
pub(crate) fn check_letters(segment: &'static str, field: &'static str, code: &str) -> Result<(), SignalError> {
    let ok = code.len() == 2 && code.bytes().all(|c| c.is_ascii_uppercase());
    if ok {
        Ok(())
    } else {
        Err(SignalError::encode(segment, ErrorKind::InvalidModel { field, reason: "must be two letters A-Z" }))
    }
}

pub(crate) fn encode_with(m: &TcModel, flavor: Flavor) -> Result<String, SignalError> {
    let (padding, rule) = match flavor {
        Flavor::Tcf => (Padding::Lcm24, RangeRule::TcfEs),
        Flavor::Gpp => (Padding::Lcm24, RangeRule::GppEs),
    };
    if m.version != 2 {
        return Err(SignalError::encode(CORE, ErrorKind::UnsupportedVersion { found: u64::from(m.version) }));
    }
    check_width(CORE, "created", m.created, 36)?;
    check_width(CORE, "last_updated", m.last_updated, 36)?;
    check_width(CORE, "cmp_id", u64::from(m.cmp_id), 12)?;
    check_width(CORE, "cmp_version", u64::from(m.cmp_version), 12)?;
    check_width(CORE, "consent_screen", u64::from(m.consent_screen), 6)?;
    check_letters(CORE, "consent_language", &m.consent_language)?;
    check_width(CORE, "vendor_list_version", u64::from(m.vendor_list_version), 12)?;
    check_width(CORE, "policy_version", u64::from(m.policy_version), 6)?;
    check_ids(CORE, "special_feature_opt_ins", &m.special_feature_opt_ins, 12)?;
    check_ids(CORE, "purposes_consent", &m.purposes_consent, 24)?;
    check_ids(CORE, "purposes_li_transparency", &m.purposes_li_transparency, 24)?;
    check_letters(CORE, "publisher_cc", &m.publisher_cc)?;

    let mut w = BitWriter::new();
    w.write(u64::from(m.version), 6);
    w.write(m.created, 36);
    w.write(m.last_updated, 36);
    w.write(u64::from(m.cmp_id), 12);
    w.write(u64::from(m.cmp_version), 12);
    w.write(u64::from(m.consent_screen), 6);
    w.write_letters(&m.consent_language);
    w.write(u64::from(m.vendor_list_version), 12);
    w.write(u64::from(m.policy_version), 6);
    w.write_bool(m.is_service_specific);
    w.write_bool(m.use_non_standard_texts);
    w.write_id_set(&m.special_feature_opt_ins, 12);
    w.write_id_set(&m.purposes_consent, 24);
    w.write_id_set(&m.purposes_li_transparency, 24);
    w.write_bool(m.purpose_one_treatment);
    w.write_letters(&m.publisher_cc);
    write_vendor_vector(&mut w, CORE, "vendor_consents", &m.vendor_consents, rule)?;
    write_vendor_vector(&mut w, CORE, "vendor_legitimate_interests", &m.vendor_legitimate_interests, rule)?;
    write_restrictions(&mut w, CORE, &m.publisher_restrictions)?;
    let mut out = w.into_base64url(padding);

    // Segment order follows iabtcf-es: disclosed, allowed, publisher TC.
    if let Some(ids) = &m.disclosed_vendors {
        let mut w = BitWriter::new();
        w.write(1, 3);
        write_vendor_vector(&mut w, DISCLOSED, "disclosed_vendors", ids, rule)?;
        out.push('.');
        out.push_str(&w.into_base64url(padding));
    }
    if let Some(ids) = &m.allowed_vendors {
        let mut w = BitWriter::new();
        w.write(2, 3);
        write_vendor_vector(&mut w, ALLOWED, "allowed_vendors", ids, rule)?;
        out.push('.');
        out.push_str(&w.into_base64url(padding));
    }
    if let Some(p) = &m.publisher_tc {
        let mut w = BitWriter::new();
        w.write(3, 3);
        write_publisher_tc(&mut w, p)?;
        out.push('.');
        out.push_str(&w.into_base64url(padding));
    }
    Ok(out)
}

pub(crate) fn write_publisher_tc(w: &mut BitWriter, p: &PublisherTc) -> Result<(), SignalError> {
    check_ids(PUBLISHER_TC, "purposes_consent", &p.purposes_consent, 24)?;
    check_ids(PUBLISHER_TC, "purposes_li_transparency", &p.purposes_li_transparency, 24)?;
    check_width(PUBLISHER_TC, "num_custom_purposes", u64::from(p.num_custom_purposes), 6)?;
    let n = u32::from(p.num_custom_purposes);
    check_ids(PUBLISHER_TC, "custom_purposes_consent", &p.custom_purposes_consent, n)?;
    check_ids(PUBLISHER_TC, "custom_purposes_li_transparency", &p.custom_purposes_li_transparency, n)?;
    w.write_id_set(&p.purposes_consent, 24);
    w.write_id_set(&p.purposes_li_transparency, 24);
    w.write(u64::from(p.num_custom_purposes), 6);
    w.write_id_set(&p.custom_purposes_consent, n as usize);
    w.write_id_set(&p.custom_purposes_li_transparency, n as usize);
    Ok(())
}
