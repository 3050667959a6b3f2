//! Jurisdictions: an ISO 3166-1 alpha-2 country, optionally narrowed by a subdivision overlay
//! (`US-CA`). A jurisdiction picks the subject's policy pack.

use std::fmt;

/// Officially assigned ISO 3166-1 alpha-2 codes, sorted, two bytes each.
const ISO_3166_ALPHA2: &str = "ADAEAFAGAIALAMAOAQARASATAUAWAXAZBABBBDBEBFBGBHBIBJBLBMBNBOBQBRBSBTBVBWBYBZCACCCDCFCGCHCICKCLCMCNCOCRCUCVCWCXCYCZDEDJDKDMDODZECEEEGEHERESETFIFJFKFMFOFRGAGBGDGEGFGGGHGIGLGMGNGPGQGRGSGTGUGWGYHKHMHNHRHTHUIDIEILIMINIOIQIRISITJEJMJOJPKEKGKHKIKMKNKPKRKWKYKZLALBLCLILKLRLSLTLULVLYMAMCMDMEMFMGMHMKMLMMMNMOMPMQMRMSMTMUMVMWMXMYMZNANCNENFNGNINLNONPNRNUNZOMPAPEPFPGPHPKPLPMPNPRPSPTPWPYQARERORSRURWSASBSCSDSESGSHSISJSKSLSMSNSOSRSSSTSVSXSYSZTCTDTFTGTHTJTKTLTMTNTOTRTTTVTWTZUAUGUMUSUYUZVAVCVEVGVIVNVUWFWSYEYTZAZMZW";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JurisdictionError {
    #[error("jurisdiction must be an ISO 3166-1 alpha-2 country code, optionally with a subdivision (`US-CA`)")]
    Malformed,
    #[error("jurisdiction is not an assigned ISO 3166-1 alpha-2 country code")]
    UnknownCountry,
}

/// A validated jurisdiction, stored upper-case: `DE`, `US`, `US-CA`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jurisdiction {
    country: [u8; 2],
    subdivision: Option<String>,
}

impl Jurisdiction {
    /// Accepts `de`, `DE`, `us-ca`, `US-CA`, surrounding whitespace trimmed.
    pub fn parse(text: &str) -> Result<Self, JurisdictionError> {
        let text = text.trim();
        let (country, subdivision) = match text.split_once('-') {
            Some((c, s)) => (c, Some(s)),
            None => (text, None),
        };
        let country_bytes: [u8; 2] = country.as_bytes().try_into().map_err(|_| JurisdictionError::Malformed)?;
        if !country_bytes.iter().all(u8::is_ascii_alphabetic) {
            return Err(JurisdictionError::Malformed);
        }
        let country_bytes = country_bytes.map(|b| b.to_ascii_uppercase());
        if !is_assigned(country_bytes) {
            return Err(JurisdictionError::UnknownCountry);
        }
        let subdivision = match subdivision {
            None => None,
            Some(s) => {
                let valid = (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric());
                if !valid {
                    return Err(JurisdictionError::Malformed);
                }
                Some(s.to_ascii_uppercase())
            }
        };
        Ok(Self { country: country_bytes, subdivision })
    }

    /// The country alone (`US` for `US-CA`).
    pub fn country(&self) -> Jurisdiction {
        Jurisdiction { country: self.country, subdivision: None }
    }

    pub fn country_code(&self) -> &str {
        // INVARIANT: both bytes are ASCII upper-case letters (checked in `parse`).
        std::str::from_utf8(&self.country).unwrap_or("??")
    }

    pub fn subdivision(&self) -> Option<&str> {
        self.subdivision.as_deref()
    }
}

fn is_assigned(code: [u8; 2]) -> bool {
    ISO_3166_ALPHA2.as_bytes().chunks_exact(2).any(|pair| pair == code)
}

impl fmt::Display for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.country_code())?;
        if let Some(sub) = &self.subdivision {
            write!(f, "-{sub}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Jurisdiction {
    type Err = JurisdictionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Jurisdiction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Jurisdiction {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_pairs() {
        let pairs: Vec<&[u8]> = ISO_3166_ALPHA2.as_bytes().chunks(2).collect();
        assert_eq!(ISO_3166_ALPHA2.len() % 2, 0);
        assert_eq!(pairs.len(), 249);
        assert!(pairs.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn parses_countries_and_overlays() {
        assert_eq!(Jurisdiction::parse("de").unwrap().to_string(), "DE");
        let ca = Jurisdiction::parse("us-ca").unwrap();
        assert_eq!(ca.to_string(), "US-CA");
        assert_eq!(ca.country().to_string(), "US");
        assert_eq!(ca.subdivision(), Some("CA"));
    }

    #[test]
    fn rejects_bad_codes() {
        assert_eq!(Jurisdiction::parse("XX"), Err(JurisdictionError::UnknownCountry));
        assert_eq!(Jurisdiction::parse("ZZ"), Err(JurisdictionError::UnknownCountry));
        assert_eq!(Jurisdiction::parse("DEU"), Err(JurisdictionError::Malformed));
        assert_eq!(Jurisdiction::parse(""), Err(JurisdictionError::Malformed));
        assert_eq!(Jurisdiction::parse("D1"), Err(JurisdictionError::Malformed));
        assert_eq!(Jurisdiction::parse("US-"), Err(JurisdictionError::Malformed));
    }
}
