//! Value types of the GPP US sections: 2-bit enumerations and N-bitfields
//! of them, with their bit codec.

use serde::{Deserialize, Serialize};

use crate::bits::{BitReader, BitWriter};
use crate::error::{ErrorKind, SignalError};

/// A field that knows how to read and write itself.
pub(crate) trait Field: Sized {
    fn read(r: &mut BitReader, field: &'static str) -> Result<Self, SignalError>;
    fn write(&self, w: &mut BitWriter);
    /// `Some` only for [`OptOut`] values, so the US-signals helper can pick
    /// opt-out fields out of any section generically.
    fn as_opt_out(&self) -> Option<OptOut> {
        None
    }
}

macro_rules! two_bit_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $v:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            #[default]
            $($(#[$vm])* $variant),+
        }

        impl $name {
            /// The 2-bit wire value.
            pub fn bits(self) -> u8 {
                match self { $(Self::$variant => $v),+ }
            }

            /// From the 2-bit wire value; 3 is reserved in every GPP field.
            pub fn from_bits(v: u8) -> Option<Self> {
                match v { $($v => Some(Self::$variant),)+ _ => None }
            }
        }

        impl Field for $name {
            fn read(r: &mut BitReader, field: &'static str) -> Result<Self, SignalError> {
                let at = r.pos();
                let v = r.read_u8(2)?;
                Self::from_bits(v).ok_or(r.err_at(at, ErrorKind::InvalidValue { field, value: u64::from(v) }))
            }
            fn write(&self, w: &mut BitWriter) {
                w.write(u64::from(self.bits()), 2);
            }
            two_bit_enum!(@opt_out $name);
        }
    };
    (@opt_out OptOut) => {
        fn as_opt_out(&self) -> Option<OptOut> { Some(*self) }
    };
    (@opt_out $other:ident) => {};
}

two_bit_enum! {
    /// Whether a notice was given (0 N/A, 1 provided, 2 not provided).
    Notice { NotApplicable = 0, Provided = 1, NotProvided = 2 }
}

two_bit_enum! {
    /// An opt-out choice (0 N/A, 1 opted out, 2 did not opt out).
    OptOut { NotApplicable = 0, OptedOut = 1, DidNotOptOut = 2 }
}

two_bit_enum! {
    /// A consent choice (0 N/A, 1 no consent, 2 consent).
    Consent { NotApplicable = 0, NoConsent = 1, Consent = 2 }
}

two_bit_enum! {
    /// MSPA yes/no flags (covered transaction, opt-out option mode, service
    /// provider mode). 0 is accepted for the covered-transaction flag too,
    /// although the spec only defines 1 and 2, so that odd CMP output still
    /// decodes.
    MspaFlag { NotApplicable = 0, Yes = 1, No = 2 }
}

two_bit_enum! {
    /// `MspaMode` of the 2025 sections (usmd, usin, usky, usri).
    MspaMode { NotApplicable = 0, OptOutOptionMode = 1, ServiceProviderMode = 2 }
}

/// An N-Bitfield(2, N) as a fixed-size array.
impl<T: Field + Copy + Default, const N: usize> Field for [T; N] {
    fn read(r: &mut BitReader, field: &'static str) -> Result<Self, SignalError> {
        let mut out = [T::default(); N];
        for slot in out.iter_mut() {
            *slot = T::read(r, field)?;
        }
        Ok(out)
    }
    fn write(&self, w: &mut BitWriter) {
        for v in self {
            v.write(w);
        }
    }
}

/// Reads `n` 2-bit consent values (usnat, whose length depends on version).
pub(crate) fn read_consents(r: &mut BitReader, field: &'static str, n: usize) -> Result<Vec<Consent>, SignalError> {
    (0..n).map(|_| Consent::read(r, field)).collect()
}

/// An optional subsection after the core, separated by `.`.
pub(crate) trait Subsection: Sized {
    fn decode(text: Option<&str>, segment: &'static str) -> Result<Self, SignalError>;
    fn encode(&self) -> Option<String>;
    /// The GPC flag, for GPC subsections.
    fn gpc(&self) -> Option<bool> {
        None
    }
}

/// The GPC subsection: `SubsectionType(2) = 1`, `Gpc(1)`.
impl Subsection for Option<bool> {
    fn decode(text: Option<&str>, segment: &'static str) -> Result<Self, SignalError> {
        let Some(text) = text else { return Ok(None) };
        let mut r = BitReader::from_base64url(text, segment)?;
        let kind = r.read(2)?;
        if kind != 1 {
            return Err(r.err_at(0, ErrorKind::InvalidSubsection));
        }
        Ok(Some(r.read_bool()?))
    }
    fn encode(&self) -> Option<String> {
        self.map(|gpc| {
            let mut w = BitWriter::new();
            w.write(1, 2);
            w.write_bool(gpc);
            w.into_base64url(crate::bits::Padding::Compressed)
        })
    }
    fn gpc(&self) -> Option<bool> {
        *self
    }
}

/// The sensitive-data-consents subsection of usin/usky/usri: an
/// N-Bitfield(2,8) with no type field (iabgpp-es identifies it by position).
impl Subsection for Option<[Consent; 8]> {
    fn decode(text: Option<&str>, segment: &'static str) -> Result<Self, SignalError> {
        let Some(text) = text else { return Ok(None) };
        let mut r = BitReader::from_base64url(text, segment)?;
        Ok(Some(<[Consent; 8]>::read(&mut r, "sensitive_data_processing")?))
    }
    fn encode(&self) -> Option<String> {
        self.map(|v| {
            let mut w = BitWriter::new();
            v.write(&mut w);
            w.into_base64url(crate::bits::Padding::Compressed)
        })
    }
}
