//! Jurisdictions: an ISO 3166-1 alpha-2 country, optionally narrowed by an ISO 3166-2
//! subdivision (`US-CA`). A jurisdiction picks the subject's policy pack: the subdivision's own
//! pack where there is one, else its country's (an explicit fallback, see `PackSet::lookup`).
//!
//! Subdivision codes come from the `rust_iso3166` crate (pure data: static maps, no IO), whose
//! ISO 3166-2 table is refreshed from Debian's iso-codes (`iso_3166-2.json`, 4.20.1 in
//! `rust_iso3166` 0.2.0). A data update changes which subdivisions are accepted, so the tests
//! below pin the table's size and a few codes that changed: review them on every update.

use std::fmt;

/// Officially assigned ISO 3166-1 alpha-2 codes, sorted, two bytes each.
const ISO_3166_ALPHA2: &str = "ADAEAFAGAIALAMAOAQARASATAUAWAXAZBABBBDBEBFBGBHBIBJBLBMBNBOBQBRBSBTBVBWBYBZCACCCDCFCGCHCICKCLCMCNCOCRCUCVCWCXCYCZDEDJDKDMDODZECEEEGEHERESETFIFJFKFMFOFRGAGBGDGEGFGGGHGIGLGMGNGPGQGRGSGTGUGWGYHKHMHNHRHTHUIDIEILIMINIOIQIRISITJEJMJOJPKEKGKHKIKMKNKPKRKWKYKZLALBLCLILKLRLSLTLULVLYMAMCMDMEMFMGMHMKMLMMMNMOMPMQMRMSMTMUMVMWMXMYMZNANCNENFNGNINLNONPNRNUNZOMPAPEPFPGPHPKPLPMPNPRPSPTPWPYQARERORSRURWSASBSCSDSESGSHSISJSKSLSMSNSOSRSSSTSVSXSYSZTCTDTFTGTHTJTKTLTMTNTOTRTTTVTWTZUAUGUMUSUYUZVAVCVEVGVIVNVUWFWSYEYTZAZMZW";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JurisdictionError {
    #[error("jurisdiction must be an ISO 3166-1 alpha-2 country code, optionally with a subdivision (`US-CA`)")]
    Malformed,
    #[error("jurisdiction is not an assigned ISO 3166-1 alpha-2 country code")]
    UnknownCountry,
    #[error("jurisdiction names a subdivision that is not an ISO 3166-2 code of its country")]
    UnknownSubdivision,
}

/// A validated jurisdiction, stored upper-case: `DE`, `US`, `US-CA`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jurisdiction {
    country: [u8; 2],
    subdivision: Option<String>,
}

impl Jurisdiction {
    /// Accepts `de`, `DE`, `us-ca`, `US-CA`, surrounding whitespace trimmed: an assigned ISO
    /// 3166-1 alpha-2 country, optionally with a subdivision that ISO 3166-2 lists for that
    /// country (`US-CAL`, `DE-ZZ` are refused). For anything read from outside.
    pub fn parse(text: &str) -> Result<Self, JurisdictionError> {
        let parsed = Self::parse_recorded(text)?;
        match &parsed.subdivision {
            Some(sub) if !is_subdivision_of(parsed.country, sub) => Err(JurisdictionError::UnknownSubdivision),
            _ => Ok(parsed),
        }
    }

    /// A jurisdiction this deployment recorded itself (a stored subject's): well-formed and of an
    /// assigned country as [`Jurisdiction::parse`] requires, but the subdivision is not checked
    /// against ISO 3166-2. Subjects registered before subdivisions were checked, or under a code
    /// ISO has since withdrawn (`IN-TG`, now `IN-TS`), stay readable, and their decisions come
    /// from the country's pack, saying so. Never for input from outside.
    pub fn parse_recorded(text: &str) -> Result<Self, JurisdictionError> {
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

/// Whether ISO 3166-2 lists `<country>-<subdivision>` (both already upper-case ASCII, the
/// subdivision 1 to 3 characters): a lookup in a static map, no allocation.
fn is_subdivision_of(country: [u8; 2], subdivision: &str) -> bool {
    let mut buf = [0u8; 6];
    let Some(code) = buf.get_mut(..3 + subdivision.len()) else { return false };
    let (head, tail) = code.split_at_mut(3);
    let [a, b] = country;
    head.copy_from_slice(&[a, b, b'-']);
    tail.copy_from_slice(subdivision.as_bytes());
    std::str::from_utf8(code).is_ok_and(|code| rust_iso3166::iso3166_2::from_code(code).is_some())
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

impl Jurisdiction {
    /// For `#[serde(deserialize_with = "Jurisdiction::deserialize_recorded")]` on records this
    /// deployment wrote itself: [`Jurisdiction::parse_recorded`] (deserialising a
    /// `Jurisdiction` otherwise checks the subdivision, as [`Jurisdiction::parse`] does).
    pub fn deserialize_recorded<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        Self::parse_recorded(&text).map_err(serde::de::Error::custom)
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
    fn subdivisions_are_iso_3166_2_codes_of_their_country_in_any_case() {
        for (text, canonical) in [
            ("US-CA", "US-CA"),
            ("us-ca", "US-CA"),
            ("Us-cA", "US-CA"),
            ("US-TX", "US-TX"),
            ("DE-BY", "DE-BY"),
            ("de-by", "DE-BY"),
            ("BR-SP", "BR-SP"),
            ("br-sp", "BR-SP"),
            ("GB-ENG", "GB-ENG"),
            ("FR-75C", "FR-75C"),
            ("fr-75c", "FR-75C"),
            ("CA-QC", "CA-QC"),
            ("IN-TS", "IN-TS"),
            ("ES-M", "ES-M"),
            ("  us-ny ", "US-NY"),
        ] {
            let j = Jurisdiction::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(j.to_string(), canonical, "{text}");
            assert_eq!(Jurisdiction::parse(canonical), Ok(j.clone()));
            assert_eq!(j.country().to_string(), &canonical[..2]);
        }
        for text in [
            "US-CAL", "us-cal", "DE-ZZ", "de-zz", "BR-XX", "br-xx", "US-BY", "DE-CA", "US-0", "IN-TG", "GB-XXX", "AQ-A",
        ] {
            assert_eq!(Jurisdiction::parse(text), Err(JurisdictionError::UnknownSubdivision), "{text}");
        }
        // Well-formed is still checked first; the country before the subdivision.
        assert_eq!(Jurisdiction::parse("US-CALI"), Err(JurisdictionError::Malformed));
        assert_eq!(Jurisdiction::parse("US-C_"), Err(JurisdictionError::Malformed));
        assert_eq!(Jurisdiction::parse("QQ-CA"), Err(JurisdictionError::UnknownCountry));
    }

    #[test]
    fn errors_never_echo_the_value() {
        for text in ["US-CAL", "DE-ZZ", "BR-XX", "QQ", "us-secret"] {
            let message = Jurisdiction::parse(text).unwrap_err().to_string();
            let sub = text.split_once('-').map_or(text, |(_, s)| s);
            assert!(!message.contains(text) && !message.contains(sub), "{message}");
        }
    }

    #[test]
    fn the_iso_3166_2_table_is_the_pinned_one() {
        use rust_iso3166::iso3166_2::{SUBDIVISION_COUNTRY_MAP, SUBDIVISION_MAP};
        // rust_iso3166 0.2.0 = Debian iso-codes 4.20.1. A new table changes which subdivisions
        // are accepted: review what changed, then update these numbers.
        assert_eq!(SUBDIVISION_MAP.len(), 5046);
        assert_eq!(SUBDIVISION_COUNTRY_MAP.len(), 200);
        let count = |cc: &str| SUBDIVISION_COUNTRY_MAP.get(cc).map_or(0, |s| s.len());
        assert_eq!([count("US"), count("DE"), count("BR"), count("FR"), count("IN")], [57, 16, 27, 124, 36]);
        // Every code fits the shape `parse` reads, names an assigned country, and parses back.
        for (code, subdivision) in SUBDIVISION_MAP.entries() {
            assert_eq!(*code, subdivision.code);
            let j = Jurisdiction::parse(code).unwrap_or_else(|e| panic!("{code}: {e}"));
            assert_eq!(j.to_string(), *code);
            assert_eq!(j.country_code(), subdivision.country_code);
        }
    }

    #[test]
    fn recorded_jurisdictions_keep_subdivisions_iso_no_longer_lists() {
        let old = Jurisdiction::parse_recorded("in-tg").unwrap();
        assert_eq!(old.to_string(), "IN-TG");
        assert_eq!(old.country().to_string(), "IN");
        assert_eq!(Jurisdiction::parse_recorded("US-CAL").unwrap().subdivision(), Some("CAL"));
        assert_eq!(Jurisdiction::parse_recorded("US-CALI"), Err(JurisdictionError::Malformed));
        assert_eq!(Jurisdiction::parse_recorded("QQ"), Err(JurisdictionError::UnknownCountry));

        #[derive(serde::Deserialize)]
        struct Recorded {
            #[serde(deserialize_with = "Jurisdiction::deserialize_recorded")]
            jurisdiction: Jurisdiction,
        }
        #[derive(serde::Deserialize)]
        struct Input {
            #[allow(dead_code, reason = "only whether it deserialises matters")]
            jurisdiction: Jurisdiction,
        }
        let json = r#"{"jurisdiction":"US-CAL"}"#;
        let recorded: Recorded = serde_json::from_str(json).unwrap();
        assert_eq!(recorded.jurisdiction.to_string(), "US-CAL");
        assert!(serde_json::from_str::<Input>(json).is_err(), "outside input is checked");
        assert!(serde_json::from_str::<Input>(r#"{"jurisdiction":"us-ca"}"#).is_ok());
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
