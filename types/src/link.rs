//! Links: keyed pseudonyms of identifiers. Links are what may cross borders (invariant 2).
//!
//! `link = HMAC-SHA256(deployment key, "domicile/link/v1" 0x00 kind 0x00 value)[..16]`.
//! 128 bits keep the birthday bound far beyond any realistic population while keeping the
//! gateway's directory entry small.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::NormalizedIdentifier;

pub const LINK_LEN: usize = 16;
const DOMAIN_SEPARATOR: &[u8] = b"domicile/link/v1";
const TEXT_PREFIX: &str = "lk_";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("link key must be at least 32 bytes")]
pub struct LinkKeyError;

/// The deployment's secret for computing links. `Debug` never prints it. Holds the HMAC state
/// already keyed, so a link costs the message's hash blocks only (campaign batches derive one
/// per item).
#[derive(Clone)]
pub struct LinkKey(Hmac<Sha256>);

impl fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkKey(<redacted>)")
    }
}

impl LinkKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LinkKeyError> {
        if bytes.len() < 32 {
            return Err(LinkKeyError);
        }
        // HMAC accepts keys of any length; the error arm cannot happen.
        <Hmac<Sha256> as KeyInit>::new_from_slice(bytes).map(Self).map_err(|_| LinkKeyError)
    }

    /// A keyed digest of `parts` under `domain` (distinct from every link's domain), for other
    /// pseudonyms the deployment derives from its key, such as idempotency keys: equal inputs
    /// give equal digests on every node, and nobody without the key can test a guess.
    pub fn digest(&self, domain: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.0.clone();
        mac.update(domain);
        for part in parts {
            mac.update(&[0]);
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    pub fn link(&self, identifier: &NormalizedIdentifier) -> Link {
        let mut mac = self.0.clone();
        mac.update(DOMAIN_SEPARATOR);
        mac.update(&[0]);
        mac.update(identifier.kind().as_str().as_bytes());
        mac.update(&[0]);
        mac.update(identifier.expose_value().as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = [0u8; LINK_LEN];
        out.copy_from_slice(&digest[..LINK_LEN]);
        Link(out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("link must be `lk_` followed by 32 lower-case hex digits")]
pub struct LinkError;

/// A pseudonymous link. Text form: `lk_` + 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Link([u8; LINK_LEN]);

impl Link {
    pub fn from_bytes(bytes: [u8; LINK_LEN]) -> Self {
        Self(bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, LinkError> {
        bytes.try_into().map(Self).map_err(|_| LinkError)
    }

    pub fn as_bytes(&self) -> &[u8; LINK_LEN] {
        &self.0
    }

    pub fn parse(text: &str) -> Result<Self, LinkError> {
        let hex_part = text.strip_prefix(TEXT_PREFIX).ok_or(LinkError)?;
        if hex_part.len() != LINK_LEN * 2 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(LinkError);
        }
        let mut out = [0u8; LINK_LEN];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| LinkError)?;
        Ok(Self(out))
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TEXT_PREFIX}{}", hex::encode(self.0))
    }
}

impl serde::Serialize for Link {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Link {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdentifierKind;

    fn key(byte: u8) -> LinkKey {
        LinkKey::from_bytes(&[byte; 32]).unwrap()
    }

    #[test]
    fn same_person_same_link_across_spellings() {
        let a = NormalizedIdentifier::normalize(IdentifierKind::Email, "Anna@Example.de").unwrap();
        let b = NormalizedIdentifier::normalize(IdentifierKind::Email, " anna@example.DE").unwrap();
        assert_eq!(key(1).link(&a), key(1).link(&b));
    }

    #[test]
    fn key_and_kind_separate_links() {
        let email = NormalizedIdentifier::normalize(IdentifierKind::CrmAccount, "12345678").unwrap();
        let device = NormalizedIdentifier::normalize(IdentifierKind::Device, "12345678").unwrap();
        assert_ne!(key(1).link(&email), key(1).link(&device));
        assert_ne!(key(1).link(&email), key(2).link(&email));
    }

    #[test]
    fn matches_reference_hmac() {
        // Independent computation of the construction above with the RFC 4231 primitive.
        let id = NormalizedIdentifier::normalize(IdentifierKind::Email, "a@example.com").unwrap();
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&[7u8; 32]).unwrap();
        mac.update(b"domicile/link/v1\0email\0a@example.com");
        let digest = mac.finalize().into_bytes();
        assert_eq!(key(7).link(&id).as_bytes()[..], digest[..16]);
    }

    #[test]
    fn text_round_trip() {
        let id = NormalizedIdentifier::normalize(IdentifierKind::Phone, "+4915112345678").unwrap();
        let link = key(3).link(&id);
        let text = link.to_string();
        assert!(text.starts_with("lk_") && text.len() == 35);
        assert_eq!(Link::parse(&text), Ok(link));
        assert!(Link::parse("lk_xyz").is_err());
        assert!(Link::parse(&text.to_uppercase()).is_err());
        assert!(LinkKey::from_bytes(&[0; 31]).is_err());
    }
}
