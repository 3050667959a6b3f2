//! Subject references: the only way a subject is named outside its home region.
//! `<home region>/<32 hex digits of a random id>`; the id carries no information about the person.

use std::fmt;

use crate::RegionId;

pub const SUBJECT_ID_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subject ref must be `<region>/<32 lower-case hex digits>`")]
pub struct SubjectRefError;

/// The random part of a subject ref, unique within its region.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectId([u8; SUBJECT_ID_LEN]);

impl SubjectId {
    pub fn from_bytes(bytes: [u8; SUBJECT_ID_LEN]) -> Self {
        Self(bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, SubjectRefError> {
        bytes.try_into().map(Self).map_err(|_| SubjectRefError)
    }

    pub fn as_bytes(&self) -> &[u8; SUBJECT_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // On the stack: every decision formats a subject ref (no allocation per call).
        let mut hex = [0u8; 2 * SUBJECT_ID_LEN];
        hex::encode_to_slice(self.0, &mut hex).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl serde::Serialize for SubjectId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SubjectId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut bytes = [0u8; SUBJECT_ID_LEN];
        hex::decode_to_slice(text.as_bytes(), &mut bytes).map_err(serde::de::Error::custom)?;
        Ok(Self(bytes))
    }
}

impl fmt::Debug for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// 32 lower-case hex digits (upper case is refused: a subject ref has one spelling).
fn decode_lower_hex(hex: &[u8]) -> Option<[u8; SUBJECT_ID_LEN]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let mut bytes = [0u8; SUBJECT_ID_LEN];
    if hex.len() != 2 * SUBJECT_ID_LEN {
        return None;
    }
    for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = nibble(*pair.first()?)? << 4 | nibble(*pair.get(1)?)?;
    }
    Some(bytes)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectRef {
    pub region: RegionId,
    pub id: SubjectId,
}

impl SubjectRef {
    pub fn parse(text: &str) -> Result<Self, SubjectRefError> {
        let (region, id) = Self::parse_parts(text)?;
        Ok(Self { region: RegionId::parse(region).map_err(|_| SubjectRefError)?, id })
    }

    /// [`SubjectRef::parse`] without allocating the region: its validated text and the id. For
    /// a node's hot path, which only compares the region with its own.
    pub fn parse_parts(text: &str) -> Result<(&str, SubjectId), SubjectRefError> {
        let (region, id) = text.split_once('/').ok_or(SubjectRefError)?;
        if !RegionId::is_valid(region) || id.len() != SUBJECT_ID_LEN * 2 {
            return Err(SubjectRefError);
        }
        Ok((region, SubjectId(decode_lower_hex(id.as_bytes()).ok_or(SubjectRefError)?)))
    }
}

impl fmt::Display for SubjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.region.as_str())?;
        f.write_str("/")?;
        fmt::Display::fmt(&self.id, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let r = SubjectRef { region: RegionId::parse("eu-central").unwrap(), id: SubjectId::from_bytes([0xab; 16]) };
        let text = r.to_string();
        assert_eq!(text, format!("eu-central/{}", "ab".repeat(16)));
        assert_eq!(SubjectRef::parse(&text), Ok(r.clone()));
        for bad in ["eu-central", "eu-central/abc", "EU/abababababababababababababababab", "/ab"] {
            assert!(SubjectRef::parse(bad).is_err(), "{bad}");
        }
        // Every hex digit both ways; one spelling only (no upper case, no other letters).
        let varied = SubjectRef { id: SubjectId::from_bytes(std::array::from_fn(|i| (i as u8) * 17)), ..r };
        assert_eq!(SubjectRef::parse(&varied.to_string()), Ok(varied.clone()));
        assert_eq!(SubjectRef::parse_parts(&varied.to_string()), Ok(("eu-central", varied.id)));
        let upper = format!("eu-central/{}", "AB".repeat(16));
        let not_hex = format!("eu-central/{}g", "a".repeat(31));
        let long = format!("eu-central/{}", "a".repeat(34));
        for bad in [upper, not_hex, long] {
            assert!(SubjectRef::parse_parts(&bad).is_err(), "{bad}");
        }
    }
}
