//! Regions: deployment locations such as `eu-central`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("region must be 2-32 characters of lower-case letters, digits and `-`, starting with a letter")]
pub struct RegionError;

/// A validated region id: `[a-z][a-z0-9-]{1,31}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(String);

impl RegionId {
    pub fn parse(text: &str) -> Result<Self, RegionError> {
        if Self::is_valid(text) { Ok(Self(text.to_owned())) } else { Err(RegionError) }
    }

    /// Whether `text` is a region id (what [`RegionId::parse`] accepts).
    pub fn is_valid(text: &str) -> bool {
        let bytes = text.as_bytes();
        (2..=32).contains(&bytes.len())
            && bytes.first().is_some_and(u8::is_ascii_lowercase)
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && !text.ends_with('-')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The DNS name a node of this region presents in its certificate. The gateway dials nodes
    /// by this name, so TLS itself refuses a node certificate issued for another region.
    pub fn node_server_name(&self) -> String {
        format!("{}.node.domicile.internal", self.0)
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for RegionId {
    type Err = RegionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for RegionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RegionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates() {
        assert!(RegionId::parse("eu-central").is_ok());
        assert!(RegionId::parse("sa-east-1").is_ok());
        for bad in ["", "e", "EU", "eu_central", "-eu", "eu-", "1eu", "eu central"] {
            assert!(RegionId::parse(bad).is_err(), "{bad}");
        }
    }
}
