//! US National (section 7), versions 1 and 2. Version 2 (Oct 2024) grew
//! sensitive data processing from 12 to 16 categories and known-child
//! consents from 2 to 3; everything else is identical.

use serde::{Deserialize, Serialize};

use crate::bits::{BitReader, BitWriter, Padding};
use crate::error::{ErrorKind, SignalError};

use super::fields::{Consent, Field, MspaFlag, Notice, OptOut, Subsection, read_consents};
use super::us::{UsSection, split_sub};

const NAME: &str = "usnat";

/// The US National section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsNat {
    /// 1 or 2.
    pub version: u8,
    pub sharing_notice: Notice,
    pub sale_opt_out_notice: Notice,
    pub sharing_opt_out_notice: Notice,
    pub targeted_advertising_opt_out_notice: Notice,
    pub sensitive_data_processing_opt_out_notice: Notice,
    pub sensitive_data_limit_use_notice: Notice,
    pub sale_opt_out: OptOut,
    pub sharing_opt_out: OptOut,
    pub targeted_advertising_opt_out: OptOut,
    /// 12 entries in version 1, 16 in version 2.
    pub sensitive_data_processing: Vec<Consent>,
    /// 2 entries in version 1, 3 in version 2.
    pub known_child_sensitive_data_consents: Vec<Consent>,
    pub personal_data_consents: Consent,
    pub mspa_covered_transaction: MspaFlag,
    pub mspa_opt_out_option_mode: MspaFlag,
    pub mspa_service_provider_mode: MspaFlag,
    /// GPC subsection; `None` when absent.
    #[serde(default)]
    pub gpc: Option<bool>,
}

impl UsNat {
    pub const ID: u16 = 7;
    pub const NAME: &'static str = NAME;

    /// (sensitive data processing, known child) lengths per version.
    fn lengths(version: u8) -> Option<(usize, usize)> {
        match version {
            1 => Some((12, 2)),
            2 => Some((16, 3)),
            _ => None,
        }
    }

    pub(crate) fn decode(text: &str) -> Result<Self, SignalError> {
        let (core, sub) = split_sub(text, NAME)?;
        let mut r = BitReader::from_base64url(core, NAME)?;
        let version = r.read_u8(6)?;
        let (sdp, kc) =
            Self::lengths(version).ok_or(r.err_at(0, ErrorKind::UnsupportedVersion { found: u64::from(version) }))?;
        // Early version-2 encoders kept the version-1 layout (12 + 2
        // entries, 60 bits, 66 once padded). iabgpp-es decodes those by
        // length and pads the lists with "not applicable"; so do we.
        let legacy_v2 = version == 2 && matches!(r.len_bits(), 60 | 66);
        let (read_sdp, read_kc) = if legacy_v2 { (12, 2) } else { (sdp, kc) };
        let pad = |mut v: Vec<Consent>, n: usize| {
            v.resize(n, Consent::NotApplicable);
            v
        };
        Ok(Self {
            version,
            sharing_notice: Field::read(&mut r, "sharing_notice")?,
            sale_opt_out_notice: Field::read(&mut r, "sale_opt_out_notice")?,
            sharing_opt_out_notice: Field::read(&mut r, "sharing_opt_out_notice")?,
            targeted_advertising_opt_out_notice: Field::read(&mut r, "targeted_advertising_opt_out_notice")?,
            sensitive_data_processing_opt_out_notice: Field::read(&mut r, "sensitive_data_processing_opt_out_notice")?,
            sensitive_data_limit_use_notice: Field::read(&mut r, "sensitive_data_limit_use_notice")?,
            sale_opt_out: Field::read(&mut r, "sale_opt_out")?,
            sharing_opt_out: Field::read(&mut r, "sharing_opt_out")?,
            targeted_advertising_opt_out: Field::read(&mut r, "targeted_advertising_opt_out")?,
            sensitive_data_processing: pad(read_consents(&mut r, "sensitive_data_processing", read_sdp)?, sdp),
            known_child_sensitive_data_consents: pad(
                read_consents(&mut r, "known_child_sensitive_data_consents", read_kc)?,
                kc,
            ),
            personal_data_consents: Field::read(&mut r, "personal_data_consents")?,
            mspa_covered_transaction: Field::read(&mut r, "mspa_covered_transaction")?,
            mspa_opt_out_option_mode: Field::read(&mut r, "mspa_opt_out_option_mode")?,
            mspa_service_provider_mode: Field::read(&mut r, "mspa_service_provider_mode")?,
            gpc: Subsection::decode(sub, "usnat gpc")?,
        })
    }

    pub(crate) fn encode(&self) -> Result<String, SignalError> {
        let (sdp, kc) = Self::lengths(self.version)
            .ok_or(SignalError::encode(NAME, ErrorKind::UnsupportedVersion { found: u64::from(self.version) }))?;
        if self.sensitive_data_processing.len() != sdp {
            return Err(SignalError::encode(
                NAME,
                ErrorKind::WrongLength { field: "sensitive_data_processing", expected: sdp },
            ));
        }
        if self.known_child_sensitive_data_consents.len() != kc {
            return Err(SignalError::encode(
                NAME,
                ErrorKind::WrongLength { field: "known_child_sensitive_data_consents", expected: kc },
            ));
        }
        let mut w = BitWriter::new();
        w.write(u64::from(self.version), 6);
        for n in [
            self.sharing_notice,
            self.sale_opt_out_notice,
            self.sharing_opt_out_notice,
            self.targeted_advertising_opt_out_notice,
            self.sensitive_data_processing_opt_out_notice,
            self.sensitive_data_limit_use_notice,
        ] {
            n.write(&mut w);
        }
        self.sale_opt_out.write(&mut w);
        self.sharing_opt_out.write(&mut w);
        self.targeted_advertising_opt_out.write(&mut w);
        for c in self.sensitive_data_processing.iter().chain(&self.known_child_sensitive_data_consents) {
            c.write(&mut w);
        }
        self.personal_data_consents.write(&mut w);
        self.mspa_covered_transaction.write(&mut w);
        self.mspa_opt_out_option_mode.write(&mut w);
        self.mspa_service_provider_mode.write(&mut w);
        let mut out = w.into_base64url(Padding::Compressed);
        if let Some(sub) = Subsection::encode(&self.gpc) {
            out.push('.');
            out.push_str(&sub);
        }
        Ok(out)
    }
}

impl UsSection for UsNat {
    fn opt_out(&self, field: &str) -> OptOut {
        match field {
            "sale_opt_out" => self.sale_opt_out,
            "sharing_opt_out" => self.sharing_opt_out,
            "targeted_advertising_opt_out" => self.targeted_advertising_opt_out,
            _ => OptOut::NotApplicable,
        }
    }
    fn gpc(&self) -> Option<bool> {
        self.gpc
    }
}
