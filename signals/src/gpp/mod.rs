//! IAB Global Privacy Platform (GPP) strings.
//!
//! A GPP string is `header~section~section…`. The header (type 3, version 1)
//! lists the section ids, Fibonacci-range coded, in the order the sections
//! follow. Sections this crate does not know (e.g. the deprecated
//! `tcfeuv1`, id 1) are kept as [`Section::Unsupported`] rather than failing
//! the whole string: one unknown section must not hide a readable `usnat`.
//!
//! The `tcfeuv2` section is decoded structurally (like
//! [`tcf::decode_lenient`](crate::tcf::decode_lenient)); call
//! [`TcModel::check_policy`] to apply the TCF v2.2/v2.3 policy rules.

mod fields;
mod header;
mod other;
mod us;
mod usnat;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, SignalError};
use crate::tcf::{Flavor, TcModel};

pub use fields::{Consent, MspaFlag, MspaMode, Notice, OptOut};
pub use other::{CaPublisherPurposes, TcfCaV1, UspFlag, UspV1};
pub use us::{
    UsCa, UsCo, UsCt, UsDe, UsFl, UsIa, UsIn, UsKy, UsMd, UsMn, UsMt, UsNe, UsNh, UsNj, UsOr, UsRi, UsTn, UsTx, UsUt,
    UsVa,
};
pub use usnat::UsNat;

use us::UsSection;

/// A decoded GPP string: its sections in header order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GppString {
    /// Each serialises as `{"id": …, "name": …, <fields>}`.
    #[serde(with = "tagged")]
    pub sections: Vec<Section>,
}

/// The undecoded text of an unsupported section. Kept so that
/// [`encode`] can re-emit it; never serialised, and its `Debug` is redacted
/// because it is a piece of the consent string.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RawSection(String);

impl std::fmt::Debug for RawSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawSection(<{} chars redacted>)", self.0.len())
    }
}

macro_rules! sections {
    ($($variant:ident($ty:ident) = $key:literal, us: $us:tt;)+) => {
        /// One GPP section. Variant names follow the GPP API prefixes.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(tag = "name")]
        #[allow(clippy::large_enum_variant)]
        pub enum Section {
            $(#[serde(rename = $key)] $variant($ty),)+
            /// A section id this crate does not decode, kept verbatim
            /// (internally) for re-encoding.
            #[serde(rename = "unsupported")]
            Unsupported {
                #[serde(skip)]
                id: u16,
                #[serde(skip)]
                raw: RawSection,
            },
        }

        impl Section {
            /// The GPP section id.
            pub fn id(&self) -> u16 {
                match self {
                    $(Self::$variant(_) => <$ty>::ID,)+
                    Self::Unsupported { id, .. } => *id,
                }
            }

            /// The GPP client API prefix, e.g. `"usnat"`.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => <$ty>::NAME,)+
                    Self::Unsupported { .. } => "unsupported",
                }
            }

            fn decode(id: u16, text: &str) -> Result<Self, SignalError> {
                Ok(match id {
                    $(<$ty>::ID => Self::$variant(<$ty>::decode(text)?),)+
                    _ => Self::Unsupported { id, raw: RawSection(text.to_owned()) },
                })
            }

            fn encode(&self) -> Result<String, SignalError> {
                match self {
                    $(Self::$variant(s) => sections!(@encode s, $ty),)+
                    Self::Unsupported { raw, .. } => {
                        if raw.0.is_empty() {
                            return Err(SignalError::encode("unsupported", ErrorKind::InvalidModel {
                                field: "raw",
                                reason: "an unsupported section read from JSON has no data to encode",
                            }));
                        }
                        Ok(raw.0.clone())
                    }
                }
            }

            fn us(&self) -> Option<&dyn UsSection> {
                match self {
                    $(Self::$variant(s) => sections!(@us s, $us),)+
                    Self::Unsupported { .. } => None,
                }
            }
        }
    };
    (@encode $s:ident, TcModel) => { crate::tcf::encode_with($s, Flavor::Gpp) };
    (@encode $s:ident, UspV1) => { Ok($s.encode()) };
    (@encode $s:ident, $ty:ident) => { $s.encode() };
    (@us $s:ident, yes) => { Some($s as &dyn UsSection) };
    (@us $s:ident, no) => {{ let _ = $s; None }};
}

/// `TcModel` as the `tcfeuv2` section (id 2).
impl TcModel {
    pub const ID: u16 = 2;
    pub const NAME: &'static str = "tcfeuv2";

    fn decode(text: &str) -> Result<Self, SignalError> {
        crate::tcf::decode_with(text, Flavor::Gpp)
    }
}

sections! {
    TcfEuV2(TcModel) = "tcfeuv2", us: no;
    TcfCaV1(TcfCaV1) = "tcfcav1", us: no;
    UspV1(UspV1) = "uspv1", us: yes;
    UsNat(UsNat) = "usnat", us: yes;
    UsCa(UsCa) = "usca", us: yes;
    UsVa(UsVa) = "usva", us: yes;
    UsCo(UsCo) = "usco", us: yes;
    UsUt(UsUt) = "usut", us: yes;
    UsCt(UsCt) = "usct", us: yes;
    UsFl(UsFl) = "usfl", us: yes;
    UsMt(UsMt) = "usmt", us: yes;
    UsOr(UsOr) = "usor", us: yes;
    UsTx(UsTx) = "ustx", us: yes;
    UsDe(UsDe) = "usde", us: yes;
    UsIa(UsIa) = "usia", us: yes;
    UsNe(UsNe) = "usne", us: yes;
    UsNh(UsNh) = "usnh", us: yes;
    UsNj(UsNj) = "usnj", us: yes;
    UsTn(UsTn) = "ustn", us: yes;
    UsMn(UsMn) = "usmn", us: yes;
    UsMd(UsMd) = "usmd", us: yes;
    UsIn(UsIn) = "usin", us: yes;
    UsKy(UsKy) = "usky", us: yes;
    UsRi(UsRi) = "usri", us: yes;
}

/// Decodes a GPP string. Unknown section ids become
/// [`Section::Unsupported`]; a malformed known section is an error.
pub fn decode(input: &str) -> Result<GppString, SignalError> {
    if input.is_empty() {
        return Err(SignalError::encode(header::NAME, ErrorKind::EmptyInput));
    }
    let mut parts = input.split('~');
    let head = parts.next().unwrap_or_default();
    let bodies: Vec<&str> = parts.collect();
    let ids = header::decode(head, bodies.len())?;
    let sections =
        ids.iter().zip(&bodies).map(|(&id, text)| Section::decode(id, text)).collect::<Result<Vec<_>, _>>()?;
    Ok(GppString { sections })
}

/// Encodes a GPP string. Sections must be in strictly increasing id order
/// (the header's range coding cannot express any other order).
pub fn encode(gpp: &GppString) -> Result<String, SignalError> {
    let ids: Vec<u16> = gpp.sections.iter().map(Section::id).collect();
    let mut out = header::encode(&ids)?;
    for s in &gpp.sections {
        out.push('~');
        out.push_str(&s.encode()?);
    }
    Ok(out)
}

/// Decodes one section body given its id (as listed in a header).
pub fn decode_section(id: u16, text: &str) -> Result<Section, SignalError> {
    Section::decode(id, text)
}

/// Encodes one section body (without header).
pub fn encode_section(section: &Section) -> Result<String, SignalError> {
    section.encode()
}

/// Opt-out state of one US section, for mapping onto Domicile purposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsSectionSignals {
    pub id: u16,
    pub name: &'static str,
    /// The section's GPC subsection; `None` if absent or not defined for it.
    pub gpc: Option<bool>,
    pub sale_opt_out: OptOut,
    /// `NotApplicable` for sections without the field.
    pub sharing_opt_out: OptOut,
    /// `NotApplicable` for sections without the field.
    pub targeted_advertising_opt_out: OptOut,
}

/// US signals of a whole GPP string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsSignals {
    /// True if any US section carries GPC = true.
    pub gpc: bool,
    /// One entry per US section (`uspv1`, `usnat`, states), in string order.
    pub sections: Vec<UsSectionSignals>,
}

impl GppString {
    /// The GPC flag and the sale / sharing / targeted-advertising opt-outs
    /// of every US section. `uspv1`'s `Y`/`N` opt-out-of-sale maps to
    /// `OptedOut`/`DidNotOptOut`.
    pub fn us_signals(&self) -> UsSignals {
        let sections: Vec<UsSectionSignals> = self
            .sections
            .iter()
            .filter_map(|s| {
                s.us().map(|u| UsSectionSignals {
                    id: s.id(),
                    name: s.name(),
                    gpc: u.gpc(),
                    sale_opt_out: u.opt_out("sale_opt_out"),
                    sharing_opt_out: u.opt_out("sharing_opt_out"),
                    targeted_advertising_opt_out: u.opt_out("targeted_advertising_opt_out"),
                })
            })
            .collect();
        UsSignals { gpc: sections.iter().any(|s| s.gpc == Some(true)), sections }
    }
}

/// Serde glue adding `id` next to the `name` tag of each section.
mod tagged {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Section;

    #[derive(Serialize)]
    struct Out<'a> {
        id: u16,
        #[serde(flatten)]
        section: &'a Section,
    }

    #[derive(Deserialize)]
    struct In {
        id: u16,
        #[serde(flatten)]
        section: Section,
    }

    pub(super) fn serialize<S: Serializer>(v: &[Section], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|section| Out { id: section.id(), section }))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Section>, D::Error> {
        let items = Vec::<In>::deserialize(d)?;
        items
            .into_iter()
            .map(|In { id, section }| match section {
                Section::Unsupported { raw, .. } => Ok(Section::Unsupported { id, raw }),
                s if s.id() == id => Ok(s),
                s => Err(serde::de::Error::custom(format!("section {} has id {}, not {id}", s.name(), s.id()))),
            })
            .collect()
    }
}
