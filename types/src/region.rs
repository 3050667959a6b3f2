//! Regions: deployment locations such as `eu-central`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("region must be 2-32 characters of lower-case letters, digits and `-`, starting with a letter")]
pub struct RegionError;

/// Longest region id.
const MAX_LEN: usize = 32;

/// The DNS suffix of a node's certificate name, after its region.
const NODE_NAME_SUFFIX: &str = ".node.domicile.internal";

/// A validated region id: `[a-z][a-z0-9-]{1,31}`.
///
/// Held inline (no heap): every routed decision names its region, and the gateway's batch path
/// made and dropped two region strings per item. The zero padding sorts before every allowed
/// character, so the derived order is the order of the text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId {
    bytes: [u8; MAX_LEN],
    len: u8,
}

impl fmt::Debug for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RegionId").field(&self.as_str()).finish()
    }
}

impl RegionId {
    pub fn parse(text: &str) -> Result<Self, RegionError> {
        if !Self::is_valid(text) {
            return Err(RegionError);
        }
        let mut bytes = [0u8; MAX_LEN];
        bytes.get_mut(..text.len()).ok_or(RegionError)?.copy_from_slice(text.as_bytes());
        Ok(Self { bytes, len: u8::try_from(text.len()).map_err(|_| RegionError)? })
    }

    /// Whether `text` is a region id (what [`RegionId::parse`] accepts).
    pub fn is_valid(text: &str) -> bool {
        let bytes = text.as_bytes();
        (2..=MAX_LEN).contains(&bytes.len())
            && bytes.first().is_some_and(u8::is_ascii_lowercase)
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && !text.ends_with('-')
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (see `parse`), so this never falls back.
        self.bytes.get(..usize::from(self.len)).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default()
    }

    /// The DNS name a node of this region presents in its certificate. The gateway dials nodes
    /// by this name, so TLS itself refuses a node certificate issued for another region.
    pub fn node_server_name(&self) -> String {
        format!("{}{NODE_NAME_SUFFIX}", self.as_str())
    }

    /// The region whose node presents `name` ([`Self::node_server_name`]), if it is one.
    pub fn of_node_server_name(name: &str) -> Option<Self> {
        name.strip_suffix(NODE_NAME_SUFFIX).and_then(|region| Self::parse(region).ok())
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
        s.serialize_str(self.as_str())
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
        assert!(RegionId::parse(&"a".repeat(32)).is_ok());
        assert!(RegionId::parse(&"a".repeat(33)).is_err());
    }

    #[test]
    fn reads_back_and_sorts_as_its_text() {
        let mut ids: Vec<RegionId> = ["us-east", "eu", "eu-central", "eu-central-1", "ap-south", "eu-c"]
            .iter()
            .map(|t| RegionId::parse(t).unwrap())
            .collect();
        ids.sort();
        let texts: Vec<&str> = ids.iter().map(RegionId::as_str).collect();
        assert_eq!(texts, ["ap-south", "eu", "eu-c", "eu-central", "eu-central-1", "us-east"]);
        assert_eq!(format!("{:?}", ids[0]), r#"RegionId("ap-south")"#);
        assert_eq!(ids[3].to_string(), "eu-central");
        assert_eq!(RegionId::parse("eu-central").unwrap(), ids[3]);
    }
}
