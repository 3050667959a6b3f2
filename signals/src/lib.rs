//! Decode, validate and encode IAB consent signals for Domicile.
//!
//! Pure code: no IO, no clock, no async. Everything decodes to plain
//! structs that serialise to snake_case JSON and deserialise back, so a JSON
//! model can be encoded again.
//!
//! # Covered
//!
//! - **TCF v2.2 / v2.3 TC strings** ([`tcf`]): core, disclosed vendors,
//!   allowed vendors (deprecated; decoded and kept) and publisher TC
//!   segments; bitfield and range vendor encodings; publisher restrictions.
//!   [`tcf::decode`] refuses withdrawn policy versions (< 4) and, from policy
//!   version 5 (v2.3), strings without disclosed vendors;
//!   [`tcf::decode_lenient`] checks structure only. The encoder picks range
//!   or bitfield exactly as iabtcf-es does and pads like it.
//! - **GPP strings** ([`gpp`]): the header (Fibonacci-coded section ids) and
//!   the sections `tcfeuv2` (2), `tcfcav1` (5), `uspv1` (6), `usnat` (7, v1
//!   and v2) and the US states 8–27 (`usca` … `usri`) with their GPC or
//!   sensitive-data subsections. Unknown section ids are kept as
//!   [`gpp::Section::Unsupported`] instead of failing the string. Encoding
//!   reproduces the iabgpp-es reference encoder bit for bit.
//! - [`gpp::GppString::us_signals`]: GPC and the sale / sharing /
//!   targeted-advertising opt-outs per US section.
//!
//! # Not covered
//!
//! - TCF v1 strings and the GPP `tcfeuv1` section (kept as unsupported).
//! - Global Vendor List lookups: ids are decoded, not interpreted.
//! - Preserving a string's exact `MaxVendorId` or non-canonical encodings:
//!   re-encoding a foreign string yields the canonical encoding of the same
//!   model, which may differ from the input bytes.
//!
//! # Errors
//!
//! Every failure is a [`SignalError`] naming the segment or section, the
//! bit offset and what was wrong. Errors never contain the input or any
//! piece of it.
//!
//! # Choices where the specifications are ambiguous
//!
//! - Times are the integer deciseconds stored in the strings (exact round
//!   trips), not RFC 3339.
//! - 2-bit GPP fields refuse the reserved value 3 (iabgpp-es accepts it).
//! - Field layouts of the 2025 sections (usmd, usin, usky, usri) follow the
//!   iabgpp-es reference encoder, which has no per-section header although
//!   the newer state specifications describe one.

pub(crate) mod bits;
pub mod error;
pub mod gpp;
pub mod tcf;

pub use error::{ErrorKind, SignalError};
