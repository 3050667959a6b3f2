//! The US state sections (ids 8–27). They are flat lists of 2-bit fields
//! and N-bitfields, so one macro generates each struct and its codec from a
//! field list. Field order and widths follow the iabgpp-es reference encoder
//! (`modules/cmpapi/src/encoder/segment/Us*CoreSegment.ts`), cross-checked
//! with the GPP `Sections/US-States/*` specifications.
//!
//! Every state section here is version 1; the 6-bit version field is checked
//! on decode and written on encode rather than stored.

use serde::{Deserialize, Serialize};

use crate::bits::{BitReader, BitWriter, Padding};
use crate::error::{ErrorKind, SignalError};

use super::fields::{Consent, Field, MspaFlag, MspaMode, Notice, OptOut, Subsection};

/// Opt-out fields and GPC as exposed to the US-signals helper.
pub(crate) trait UsSection {
    fn opt_out(&self, field: &str) -> OptOut;
    fn gpc(&self) -> Option<bool>;
}

/// Splits a section into core and one optional subsection.
pub(crate) fn split_sub<'a>(text: &'a str, name: &'static str) -> Result<(&'a str, Option<&'a str>), SignalError> {
    let mut parts = text.split('.');
    let core = parts.next().unwrap_or_default();
    let sub = parts.next();
    if parts.next().is_some() {
        return Err(SignalError::encode(name, ErrorKind::InvalidSubsection));
    }
    Ok((core, sub))
}

macro_rules! us_section {
    (
        $(#[$doc:meta])* $name:ident = $key:literal, $id:literal, version $ver:literal {
            $($field:ident : $ty:ty),+ $(,)?
        }
        $(sub $sfield:ident : $sty:ty)?
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $(pub $field: $ty,)+
            $(
                /// Optional subsection; `None` when absent from the string.
                #[serde(default)]
                pub $sfield: $sty,
            )?
        }

        impl $name {
            pub const ID: u16 = $id;
            pub const NAME: &'static str = $key;
            const VERSION: u64 = $ver;

            pub(crate) fn decode(text: &str) -> Result<Self, SignalError> {
                let (core, _sub) = split_sub(text, $key)?;
                let mut r = BitReader::from_base64url(core, $key)?;
                let version = r.read(6)?;
                if version != Self::VERSION {
                    return Err(r.err_at(0, ErrorKind::UnsupportedVersion { found: version }));
                }
                Ok(Self {
                    $($field: <$ty as Field>::read(&mut r, stringify!($field))?,)+
                    $($sfield: <$sty as Subsection>::decode(_sub, concat!($key, " subsection"))?,)?
                })
            }

            pub(crate) fn encode(&self) -> Result<String, SignalError> {
                let mut w = BitWriter::new();
                w.write(Self::VERSION, 6);
                $(self.$field.write(&mut w);)+
                #[allow(unused_mut)]
                let mut out = w.into_base64url(Padding::Compressed);
                $(
                    if let Some(sub) = Subsection::encode(&self.$sfield) {
                        out.push('.');
                        out.push_str(&sub);
                    }
                )?
                Ok(out)
            }
        }

        impl UsSection for $name {
            fn opt_out(&self, field: &str) -> OptOut {
                $(
                    if field == stringify!($field) {
                        if let Some(v) = self.$field.as_opt_out() {
                            return v;
                        }
                    }
                )+
                OptOut::NotApplicable
            }
            fn gpc(&self) -> Option<bool> {
                $(return Subsection::gpc(&self.$sfield);)?
                #[allow(unreachable_code)]
                None
            }
        }
    };
}

us_section! {
    /// California (section 8). Sensitive data entries are opt-outs (right to
    /// limit), as in the iab_gpp crate.
    UsCa = "usca", 8, version 1 {
        sale_opt_out_notice: Notice,
        sharing_opt_out_notice: Notice,
        sensitive_data_limit_use_notice: Notice,
        sale_opt_out: OptOut,
        sharing_opt_out: OptOut,
        sensitive_data_processing: [OptOut; 9],
        known_child_sensitive_data_consents: [Consent; 2],
        personal_data_consents: Consent,
        mspa_covered_transaction: MspaFlag,
        mspa_opt_out_option_mode: MspaFlag,
        mspa_service_provider_mode: MspaFlag,
    }
    sub gpc: Option<bool>
}

us_section! {
    /// Virginia (section 9). No GPC subsection.
    UsVa = "usva", 9, version 1 {
        sharing_notice: Notice,
        sale_opt_out_notice: Notice,
        targeted_advertising_opt_out_notice: Notice,
        sale_opt_out: OptOut,
        targeted_advertising_opt_out: OptOut,
        sensitive_data_processing: [Consent; 8],
        known_child_sensitive_data_consents: Consent,
        mspa_covered_transaction: MspaFlag,
        mspa_opt_out_option_mode: MspaFlag,
        mspa_service_provider_mode: MspaFlag,
    }
}

us_section! {
    /// Colorado (section 10).
    UsCo = "usco", 10, version 1 {
        sharing_notice: Notice,
        sale_opt_out_notice: Notice,
        targeted_advertising_opt_out_notice: Notice,
        sale_opt_out: OptOut,
        targeted_advertising_opt_out: OptOut,
        sensitive_data_processing: [Consent; 7],
        known_child_sensitive_data_consents: Consent,
        mspa_covered_transaction: MspaFlag,
        mspa_opt_out_option_mode: MspaFlag,
        mspa_service_provider_mode: MspaFlag,
    }
    sub gpc: Option<bool>
}

us_section! {
    /// Utah (section 11). No GPC subsection.
    UsUt = "usut", 11, version 1 {
        sharing_notice: Notice,
        sale_opt_out_notice: Notice,
        targeted_advertising_opt_out_notice: Notice,
        sensitive_data_processing_opt_out_notice: Notice,
        sale_opt_out: OptOut,
        targeted_advertising_opt_out: OptOut,
        sensitive_data_processing: [Consent; 8],
        known_child_sensitive_data_consents: Consent,
        mspa_covered_transaction: MspaFlag,
        mspa_opt_out_option_mode: MspaFlag,
        mspa_service_provider_mode: MspaFlag,
    }
}

us_section! {
    /// Connecticut (section 12).
    UsCt = "usct", 12, version 1 {
        sharing_notice: Notice,
        sale_opt_out_notice: Notice,
        targeted_advertising_opt_out_notice: Notice,
        sale_opt_out: OptOut,
        targeted_advertising_opt_out: OptOut,
        sensitive_data_processing: [Consent; 8],
        known_child_sensitive_data_consents: [Consent; 3],
        mspa_covered_transaction: MspaFlag,
        mspa_opt_out_option_mode: MspaFlag,
        mspa_service_provider_mode: MspaFlag,
    }
    sub gpc: Option<bool>
}

/// Expands to a "processing notice" style state section (FL, MT, OR, TX, DE,
/// NE, NH, NJ, TN, MN), which share one layout and differ in the sensitive
/// data and known-child widths, the first notice's name and GPC.
macro_rules! processing_state {
    ($(#[$doc:meta])* $name:ident = $key:literal, $id:literal, $first:ident, $sdp:ty, $kc:ty $(, sub $s:ident : $st:ty)?) => {
        us_section! {
            $(#[$doc])*
            $name = $key, $id, version 1 {
                $first: Notice,
                sale_opt_out_notice: Notice,
                targeted_advertising_opt_out_notice: Notice,
                sale_opt_out: OptOut,
                targeted_advertising_opt_out: OptOut,
                sensitive_data_processing: $sdp,
                known_child_sensitive_data_consents: $kc,
                additional_data_processing_consent: Consent,
                mspa_covered_transaction: MspaFlag,
                mspa_opt_out_option_mode: MspaFlag,
                mspa_service_provider_mode: MspaFlag,
            }
            $(sub $s: $st)?
        }
    };
}

processing_state!(/** Florida (section 13). No GPC subsection. */ UsFl = "usfl", 13, processing_notice, [Consent; 8], [Consent; 3]);
processing_state!(/** Montana (section 14). */ UsMt = "usmt", 14, sharing_notice, [Consent; 8], [Consent; 3], sub gpc: Option<bool>);
processing_state!(/** Oregon (section 15). */ UsOr = "usor", 15, processing_notice, [Consent; 11], [Consent; 3], sub gpc: Option<bool>);
processing_state!(/** Texas (section 16). */ UsTx = "ustx", 16, processing_notice, [Consent; 8], Consent, sub gpc: Option<bool>);
processing_state!(/** Delaware (section 17). */ UsDe = "usde", 17, processing_notice, [Consent; 9], [Consent; 5], sub gpc: Option<bool>);
processing_state!(/** Nebraska (section 19). */ UsNe = "usne", 19, processing_notice, [Consent; 8], Consent, sub gpc: Option<bool>);
processing_state!(/** New Hampshire (section 20). */ UsNh = "usnh", 20, processing_notice, [Consent; 8], [Consent; 3], sub gpc: Option<bool>);
processing_state!(/** New Jersey (section 21). */ UsNj = "usnj", 21, processing_notice, [Consent; 10], [Consent; 5], sub gpc: Option<bool>);
processing_state!(/** Tennessee (section 22). */ UsTn = "ustn", 22, processing_notice, [Consent; 8], Consent, sub gpc: Option<bool>);
processing_state!(/** Minnesota (section 23). */ UsMn = "usmn", 23, processing_notice, [Consent; 8], Consent, sub gpc: Option<bool>);

us_section! {
    /// Iowa (section 18). Sensitive data entries are opt-outs per the spec.
    UsIa = "usia", 18, version 1 {
        processing_notice: Notice,
        sale_opt_out_notice: Notice,
        targeted_advertising_opt_out_notice: Notice,
        sensitive_data_opt_out_notice: Notice,
        sale_opt_out: OptOut,
        targeted_advertising_opt_out: OptOut,
        sensitive_data_processing: [OptOut; 8],
        known_child_sensitive_data_consents: Consent,
        mspa_covered_transaction: MspaFlag,
        mspa_opt_out_option_mode: MspaFlag,
        mspa_service_provider_mode: MspaFlag,
    }
    sub gpc: Option<bool>
}

us_section! {
    /// Maryland (section 24), 2025 layout: MSPA fields first, no sensitive
    /// data fields in the string.
    UsMd = "usmd", 24, version 1 {
        mspa_covered_transaction: MspaFlag,
        mspa_mode: MspaMode,
        processing_notice: Notice,
        sale_opt_out_notice: Notice,
        targeted_advertising_opt_out_notice: Notice,
        sale_opt_out: OptOut,
        targeted_advertising_opt_out: OptOut,
        additional_data_processing_consent: Consent,
    }
    sub gpc: Option<bool>
}

/// 2025-layout sections whose subsection carries sensitive-data consents
/// instead of GPC (IN, KY, RI).
macro_rules! sensitive_state {
    ($(#[$doc:meta])* $name:ident = $key:literal, $id:literal) => {
        us_section! {
            $(#[$doc])*
            $name = $key, $id, version 1 {
                mspa_covered_transaction: MspaFlag,
                mspa_mode: MspaMode,
                processing_notice: Notice,
                sale_opt_out_notice: Notice,
                targeted_advertising_opt_out_notice: Notice,
                sale_opt_out: OptOut,
                targeted_advertising_opt_out: OptOut,
                known_child_sensitive_data_consents: Consent,
                additional_data_processing_consent: Consent,
            }
            sub sensitive_data_processing: Option<[Consent; 8]>
        }
    };
}

sensitive_state!(/** Indiana (section 25). */ UsIn = "usin", 25);
sensitive_state!(/** Kentucky (section 26). */ UsKy = "usky", 26);
sensitive_state!(/** Rhode Island (section 27). */ UsRi = "usri", 27);
