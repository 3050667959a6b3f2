//! The GPP header: `Type(6) = 3`, `Version(6) = 1`, then the section ids as
//! a Fibonacci-coded integer range.

use crate::bits::{BitReader, BitWriter, Padding};
use crate::error::{ErrorKind, SignalError};

pub(crate) const NAME: &str = "header";

/// Decodes the header and checks that it lists exactly `found` sections.
pub(crate) fn decode(text: &str, found: usize) -> Result<Vec<u16>, SignalError> {
    let mut r = BitReader::from_base64url(text, NAME)?;
    let kind = r.read(6)?;
    if kind != 3 {
        return Err(r.err_at(0, ErrorKind::InvalidHeaderType { found: kind }));
    }
    let version = r.read(6)?;
    if version != 1 {
        return Err(r.err_at(6, ErrorKind::UnsupportedVersion { found: version }));
    }
    let at = r.pos();
    // Never expand more ids than there are sections: a hostile range such
    // as 1..=65535 fails here instead of allocating.
    let ids = r.read_fibonacci_range(found).map_err(|e| match e.kind {
        ErrorKind::TooManyIds { .. } => r.err_at(at, ErrorKind::SectionCountMismatch { listed: found + 1, found }),
        _ => e,
    })?;
    if ids.len() != found {
        return Err(r.err_at(at, ErrorKind::SectionCountMismatch { listed: ids.len(), found }));
    }
    Ok(ids)
}

pub(crate) fn encode(ids: &[u16]) -> Result<String, SignalError> {
    let mut prev = 0u16;
    for &id in ids {
        if id <= prev {
            return Err(SignalError::encode(NAME, ErrorKind::SectionOrder));
        }
        prev = id;
    }
    if ids.len() > 4095 {
        return Err(SignalError::encode(NAME, ErrorKind::ValueTooLarge { field: "section_ids", bits: 12 }));
    }
    let mut w = BitWriter::new();
    w.write(3, 6);
    w.write(1, 6);
    w.write_fibonacci_range(ids);
    Ok(w.into_base64url(Padding::Compressed))
}
