//! GPP sections that are not US state bitfields: `tcfcav1` (IAB Canada,
//! section 5) and `uspv1` (the deprecated CCPA string, section 6).

use serde::{Deserialize, Serialize};

use crate::bits::{BitReader, BitWriter, Padding, check_ids, check_width};
use crate::error::{ErrorKind, SignalError};
use crate::tcf::PublisherRestriction;
use crate::tcf::vendors::{
    RangeRule, read_fibonacci_restrictions, read_fibonacci_vendor_vector, read_restrictions, read_vendor_vector,
    write_fibonacci_restrictions, write_fibonacci_vendor_vector, write_restrictions, write_vendor_vector,
};

use super::fields::OptOut;
use super::us::UsSection;

const CA: &str = "tcfcav1";
const CA_DISCLOSED: &str = "tcfcav1 disclosed vendors";
const CA_PUB: &str = "tcfcav1 publisher purposes";

/// IAB Canada TCF (section 5, version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcfCaV1 {
    /// Deciseconds since the Unix epoch, as in the string.
    pub created: u64,
    /// Deciseconds since the Unix epoch, as in the string.
    pub last_updated: u64,
    pub cmp_id: u16,
    pub cmp_version: u16,
    pub consent_screen: u8,
    pub consent_language: String,
    pub vendor_list_version: u16,
    pub tcf_policy_version: u8,
    pub use_non_standard_stacks: bool,
    pub special_feature_express_consent: Vec<u8>,
    pub purposes_express_consent: Vec<u8>,
    pub purposes_implied_consent: Vec<u8>,
    pub vendor_express_consent: Vec<u16>,
    pub vendor_implied_consent: Vec<u16>,
    pub pub_restrictions: Vec<PublisherRestriction>,
    /// Publisher purposes segment (type 3), `None` when absent.
    #[serde(default)]
    pub pub_purposes: Option<CaPublisherPurposes>,
    /// Disclosed vendors segment (type 1), `None` when absent.
    #[serde(default)]
    pub disclosed_vendors: Option<Vec<u16>>,
}

/// The `tcfcav1` publisher purposes segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaPublisherPurposes {
    pub purposes_express_consent: Vec<u8>,
    pub purposes_implied_consent: Vec<u8>,
    pub num_custom_purposes: u8,
    pub custom_purposes_express_consent: Vec<u8>,
    pub custom_purposes_implied_consent: Vec<u8>,
}

/// Vendor vectors in `tcfcav1` are Fibonacci-coded ranges per the spec; an
/// older iabgpp-es encoder wrote TCF-style fixed ranges instead. Like
/// iabgpp-es we try the spec form first and keep whichever interpretation
/// re-encodes to a prefix of the input bits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ranges {
    Fibonacci,
    Legacy,
}

impl TcfCaV1 {
    pub const ID: u16 = 5;
    pub const NAME: &'static str = CA;

    pub(crate) fn decode(text: &str) -> Result<Self, SignalError> {
        let mut parts = text.split('.');
        let core = parts.next().unwrap_or_default();
        let mut r = BitReader::from_base64url(core, CA)?;
        let mut model = try_both(&mut r, read_core, write_core)?;
        let mut seen = 0u8;
        for part in parts {
            let mut r = BitReader::from_base64url(part, CA)?;
            let t = r.read_u8(3)?;
            if t != 1 && t != 3 {
                return Err(r.err_at(0, ErrorKind::UnknownSegmentType { segment_type: t }));
            }
            if seen & (1 << t) != 0 {
                return Err(r.err_at(0, ErrorKind::DuplicateSegment { segment_type: t }));
            }
            seen |= 1 << t;
            if t == 1 {
                let mut r = r.with_segment(CA_DISCLOSED);
                model.disclosed_vendors = Some(try_both(&mut r, read_disclosed, write_disclosed)?);
            } else {
                let mut r = r.with_segment(CA_PUB);
                model.pub_purposes = Some(read_pub(&mut r)?);
            }
        }
        Ok(model)
    }

    pub(crate) fn encode(&self) -> Result<String, SignalError> {
        let mut w = BitWriter::new();
        write_core(&mut w, self, Ranges::Fibonacci)?;
        let mut out = w.into_base64url(Padding::Compressed);
        if let Some(p) = &self.pub_purposes {
            let mut w = BitWriter::new();
            write_pub(&mut w, p)?;
            out.push('.');
            out.push_str(&w.into_base64url(Padding::Compressed));
        }
        if let Some(d) = &self.disclosed_vendors {
            let mut w = BitWriter::new();
            write_disclosed(&mut w, d, Ranges::Fibonacci)?;
            out.push('.');
            out.push_str(&w.into_base64url(Padding::Compressed));
        }
        Ok(out)
    }
}

type Reader<T> = fn(&mut BitReader, Ranges) -> Result<T, SignalError>;
type Writer<T> = fn(&mut BitWriter, &T, Ranges) -> Result<(), SignalError>;

fn try_both<T>(r: &mut BitReader, read: Reader<T>, write: Writer<T>) -> Result<T, SignalError> {
    let first = read(r, Ranges::Fibonacci);
    if let Ok(v) = &first
        && reencodes_to_prefix(r, v, write, Ranges::Fibonacci)
    {
        return first;
    }
    r.rewind();
    if let Ok(v) = read(r, Ranges::Legacy)
        && reencodes_to_prefix(r, &v, write, Ranges::Legacy)
    {
        return Ok(v);
    }
    first
}

fn reencodes_to_prefix<T>(r: &BitReader, v: &T, write: Writer<T>, mode: Ranges) -> bool {
    let mut w = BitWriter::new();
    write(&mut w, v, mode).is_ok() && w.is_prefix_of(r)
}

fn read_core(r: &mut BitReader, mode: Ranges) -> Result<TcfCaV1, SignalError> {
    r.rewind();
    let version = r.read(6)?;
    if version != 1 {
        return Err(r.err_at(0, ErrorKind::UnsupportedVersion { found: version }));
    }
    let vv = |r: &mut BitReader| match mode {
        Ranges::Fibonacci => read_fibonacci_vendor_vector(r),
        Ranges::Legacy => read_vendor_vector(r),
    };
    Ok(TcfCaV1 {
        created: r.read(36)?,
        last_updated: r.read(36)?,
        cmp_id: r.read_u16(12)?,
        cmp_version: r.read_u16(12)?,
        consent_screen: r.read_u8(6)?,
        consent_language: r.read_letters()?,
        vendor_list_version: r.read_u16(12)?,
        tcf_policy_version: r.read_u8(6)?,
        use_non_standard_stacks: r.read_bool()?,
        special_feature_express_consent: r.read_id_set_u8(12)?,
        purposes_express_consent: r.read_id_set_u8(24)?,
        purposes_implied_consent: r.read_id_set_u8(24)?,
        vendor_express_consent: vv(r)?,
        vendor_implied_consent: vv(r)?,
        // Some encoders (iab_gpp's `tcfcav1_basic` vector) end the core
        // before the 12-bit restriction count; fewer than 12 bits left can
        // only be base64 padding, so read that as "no restrictions".
        pub_restrictions: match mode {
            _ if r.remaining() < 12 => Vec::new(),
            Ranges::Fibonacci => read_fibonacci_restrictions(r)?,
            Ranges::Legacy => read_restrictions(r)?,
        },
        pub_purposes: None,
        disclosed_vendors: None,
    })
}

fn write_core(w: &mut BitWriter, m: &TcfCaV1, mode: Ranges) -> Result<(), SignalError> {
    check_width(CA, "created", m.created, 36)?;
    check_width(CA, "last_updated", m.last_updated, 36)?;
    check_width(CA, "cmp_id", u64::from(m.cmp_id), 12)?;
    check_width(CA, "cmp_version", u64::from(m.cmp_version), 12)?;
    check_width(CA, "consent_screen", u64::from(m.consent_screen), 6)?;
    crate::tcf::check_letters(CA, "consent_language", &m.consent_language)?;
    check_width(CA, "vendor_list_version", u64::from(m.vendor_list_version), 12)?;
    check_width(CA, "tcf_policy_version", u64::from(m.tcf_policy_version), 6)?;
    check_ids(CA, "special_feature_express_consent", &m.special_feature_express_consent, 12)?;
    check_ids(CA, "purposes_express_consent", &m.purposes_express_consent, 24)?;
    check_ids(CA, "purposes_implied_consent", &m.purposes_implied_consent, 24)?;
    w.write(1, 6);
    w.write(m.created, 36);
    w.write(m.last_updated, 36);
    w.write(u64::from(m.cmp_id), 12);
    w.write(u64::from(m.cmp_version), 12);
    w.write(u64::from(m.consent_screen), 6);
    w.write_letters(&m.consent_language);
    w.write(u64::from(m.vendor_list_version), 12);
    w.write(u64::from(m.tcf_policy_version), 6);
    w.write_bool(m.use_non_standard_stacks);
    w.write_id_set(&m.special_feature_express_consent, 12);
    w.write_id_set(&m.purposes_express_consent, 24);
    w.write_id_set(&m.purposes_implied_consent, 24);
    match mode {
        Ranges::Fibonacci => {
            write_fibonacci_vendor_vector(w, CA, "vendor_express_consent", &m.vendor_express_consent)?;
            write_fibonacci_vendor_vector(w, CA, "vendor_implied_consent", &m.vendor_implied_consent)?;
            write_fibonacci_restrictions(w, CA, &m.pub_restrictions)
        }
        Ranges::Legacy => {
            write_vendor_vector(w, CA, "vendor_express_consent", &m.vendor_express_consent, RangeRule::GppEs)?;
            write_vendor_vector(w, CA, "vendor_implied_consent", &m.vendor_implied_consent, RangeRule::GppEs)?;
            write_restrictions(w, CA, &m.pub_restrictions)
        }
    }
}

fn read_disclosed(r: &mut BitReader, mode: Ranges) -> Result<Vec<u16>, SignalError> {
    r.rewind();
    r.read(3)?;
    match mode {
        Ranges::Fibonacci => read_fibonacci_vendor_vector(r),
        Ranges::Legacy => read_vendor_vector(r),
    }
}

// `&Vec` because it must fit the `Writer<Vec<u16>>` function type.
#[allow(clippy::ptr_arg)]
fn write_disclosed(w: &mut BitWriter, ids: &Vec<u16>, mode: Ranges) -> Result<(), SignalError> {
    w.write(1, 3);
    match mode {
        Ranges::Fibonacci => write_fibonacci_vendor_vector(w, CA_DISCLOSED, "disclosed_vendors", ids),
        Ranges::Legacy => write_vendor_vector(w, CA_DISCLOSED, "disclosed_vendors", ids, RangeRule::GppEs),
    }
}

fn read_pub(r: &mut BitReader) -> Result<CaPublisherPurposes, SignalError> {
    let purposes_express_consent = r.read_id_set_u8(24)?;
    let purposes_implied_consent = r.read_id_set_u8(24)?;
    let num_custom_purposes = r.read_u8(6)?;
    let n = usize::from(num_custom_purposes);
    Ok(CaPublisherPurposes {
        purposes_express_consent,
        purposes_implied_consent,
        num_custom_purposes,
        custom_purposes_express_consent: r.read_id_set_u8(n)?,
        custom_purposes_implied_consent: r.read_id_set_u8(n)?,
    })
}

fn write_pub(w: &mut BitWriter, p: &CaPublisherPurposes) -> Result<(), SignalError> {
    check_ids(CA_PUB, "purposes_express_consent", &p.purposes_express_consent, 24)?;
    check_ids(CA_PUB, "purposes_implied_consent", &p.purposes_implied_consent, 24)?;
    check_width(CA_PUB, "num_custom_purposes", u64::from(p.num_custom_purposes), 6)?;
    let n = u32::from(p.num_custom_purposes);
    check_ids(CA_PUB, "custom_purposes_express_consent", &p.custom_purposes_express_consent, n)?;
    check_ids(CA_PUB, "custom_purposes_implied_consent", &p.custom_purposes_implied_consent, n)?;
    w.write(3, 3);
    w.write_id_set(&p.purposes_express_consent, 24);
    w.write_id_set(&p.purposes_implied_consent, 24);
    w.write(u64::from(p.num_custom_purposes), 6);
    w.write_id_set(&p.custom_purposes_express_consent, n as usize);
    w.write_id_set(&p.custom_purposes_implied_consent, n as usize);
    Ok(())
}

/// A `uspv1` flag character: `Y`, `N` or `-`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UspFlag {
    Yes,
    No,
    NotApplicable,
}

impl UspFlag {
    fn from_char(c: u8) -> Option<Self> {
        match c {
            b'Y' | b'y' => Some(Self::Yes),
            b'N' | b'n' => Some(Self::No),
            b'-' => Some(Self::NotApplicable),
            _ => None,
        }
    }

    fn to_char(self) -> char {
        match self {
            Self::Yes => 'Y',
            Self::No => 'N',
            Self::NotApplicable => '-',
        }
    }
}

/// The deprecated US Privacy (CCPA) string, section 6: four characters,
/// version `1` then notice, opt-out-of-sale and LSPA-covered flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UspV1 {
    pub notice: UspFlag,
    pub opt_out_sale: UspFlag,
    pub lspa_covered: UspFlag,
}

impl UspV1 {
    pub const ID: u16 = 6;
    pub const NAME: &'static str = "uspv1";

    pub(crate) fn decode(text: &str) -> Result<Self, SignalError> {
        let b = text.as_bytes();
        let field = |i: usize, name: &'static str| {
            b.get(i).copied().and_then(UspFlag::from_char).ok_or(SignalError::new(
                Self::NAME,
                i * 8,
                ErrorKind::InvalidModel { field: name, reason: "must be Y, N or -" },
            ))
        };
        if b.len() != 4 {
            return Err(SignalError::encode(Self::NAME, ErrorKind::WrongLength { field: "uspv1", expected: 4 }));
        }
        if b.first() != Some(&b'1') {
            return Err(SignalError::new(Self::NAME, 0, ErrorKind::UnsupportedVersion { found: 0 }));
        }
        Ok(Self {
            notice: field(1, "notice")?,
            opt_out_sale: field(2, "opt_out_sale")?,
            lspa_covered: field(3, "lspa_covered")?,
        })
    }

    pub(crate) fn encode(&self) -> String {
        ['1', self.notice.to_char(), self.opt_out_sale.to_char(), self.lspa_covered.to_char()].iter().collect()
    }
}

impl UsSection for UspV1 {
    fn opt_out(&self, field: &str) -> OptOut {
        match (field, self.opt_out_sale) {
            ("sale_opt_out", UspFlag::Yes) => OptOut::OptedOut,
            ("sale_opt_out", UspFlag::No) => OptOut::DidNotOptOut,
            _ => OptOut::NotApplicable,
        }
    }
    fn gpc(&self) -> Option<bool> {
        None
    }
}
