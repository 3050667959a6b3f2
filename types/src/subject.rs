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

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectRef {
    pub region: RegionId,
    pub id: SubjectId,
}

impl SubjectRef {
    pub fn parse(text: &str) -> Result<Self, SubjectRefError> {
        let (region, id) = text.split_once('/').ok_or(SubjectRefError)?;
        let region = RegionId::parse(region).map_err(|_| SubjectRefError)?;
        if id.len() != SUBJECT_ID_LEN * 2 || id.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(SubjectRefError);
        }
        let mut bytes = [0u8; SUBJECT_ID_LEN];
        hex::decode_to_slice(id, &mut bytes).map_err(|_| SubjectRefError)?;
        Ok(Self { region, id: SubjectId(bytes) })
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
        assert_eq!(SubjectRef::parse(&text), Ok(r));
        for bad in ["eu-central", "eu-central/abc", "EU/abababababababababababababababab", "/ab"] {
            assert!(SubjectRef::parse(bad).is_err(), "{bad}");
        }
    }
}
