//! Channel identifiers and their normalisation.
//!
//! Two captures of the same address must produce the same bytes, or links (keyed pseudonyms of
//! identifiers) would split one person into two. Normalisation is therefore strict and shared by
//! every component that computes links (node and gateway).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentifierKind {
    Email,
    Phone,
    Device,
    ChatHandle,
    CrmAccount,
}

impl IdentifierKind {
    pub const ALL: &'static [IdentifierKind] = &[
        IdentifierKind::Email,
        IdentifierKind::Phone,
        IdentifierKind::Device,
        IdentifierKind::ChatHandle,
        IdentifierKind::CrmAccount,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IdentifierKind::Email => "email",
            IdentifierKind::Phone => "phone",
            IdentifierKind::Device => "device",
            IdentifierKind::ChatHandle => "chat_handle",
            IdentifierKind::CrmAccount => "crm_account",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == text)
    }
}

impl fmt::Display for IdentifierKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an identifier was refused. Never carries the value (it is personal data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("{kind} identifier is empty")]
    Empty { kind: IdentifierKind },
    #[error("{kind} identifier is longer than {max} bytes")]
    TooLong { kind: IdentifierKind, max: usize },
    #[error("{kind} identifier is malformed: {reason}")]
    Malformed { kind: IdentifierKind, reason: &'static str },
}

impl IdentifierError {
    pub fn kind(&self) -> IdentifierKind {
        match self {
            IdentifierError::Empty { kind }
            | IdentifierError::TooLong { kind, .. }
            | IdentifierError::Malformed { kind, .. } => *kind,
        }
    }
}

/// An identifier in canonical form. Its `Debug` is redacted so it cannot leak through a log.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct NormalizedIdentifier {
    kind: IdentifierKind,
    value: String,
}

impl fmt::Debug for NormalizedIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NormalizedIdentifier({}, <redacted>)", self.kind)
    }
}

const MAX_EMAIL: usize = 254;
const MAX_OPAQUE: usize = 128;

impl NormalizedIdentifier {
    /// Validates and canonicalises `raw` as an identifier of `kind`.
    pub fn normalize(kind: IdentifierKind, raw: &str) -> Result<Self, IdentifierError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(IdentifierError::Empty { kind });
        }
        let value = match kind {
            IdentifierKind::Email => normalize_email(raw)?,
            IdentifierKind::Phone => normalize_phone(raw)?,
            IdentifierKind::Device => normalize_token(kind, raw, MAX_OPAQUE, 8)?,
            IdentifierKind::CrmAccount => normalize_token(kind, raw, 64, 1)?,
            IdentifierKind::ChatHandle => normalize_chat(raw)?,
        };
        Ok(Self { kind, value })
    }

    pub fn kind(&self) -> IdentifierKind {
        self.kind
    }

    /// The canonical value. Personal data: keep it inside the home region.
    pub fn expose_value(&self) -> &str {
        &self.value
    }
}

fn malformed(kind: IdentifierKind, reason: &'static str) -> IdentifierError {
    IdentifierError::Malformed { kind, reason }
}

/// Characters RFC 5322 allows in a local part besides letters and digits.
const LOCAL_SPECIALS: &[u8] = b"!#$%&'*+-/=?^_`{|}~.";

/// The common case in one pass and one allocation: an ASCII address with a valid local part and
/// a plain letters-digits-hyphens domain without punycode labels, which `normalize_email` would
/// lower-case in full. `None` for everything else, valid or not, which `normalize_email` then
/// judges (so every error comes from one place). Campaign batches normalise every identifier in
/// the gateway, which made the general path a tenth of its CPU.
fn email_fast(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    if bytes.len() > MAX_EMAIL {
        return None;
    }
    let at = bytes.iter().rposition(|&b| b == b'@')?;
    let (local, domain) = (&bytes[..at], &bytes[at + 1..]);
    if local.is_empty() || local.len() > 64 || local.first() == Some(&b'.') || local.last() == Some(&b'.') {
        return None;
    }
    let mut previous = 0u8;
    for &b in local {
        if !(b.is_ascii_alphanumeric() || LOCAL_SPECIALS.contains(&b)) || (b == b'.' && previous == b'.') {
            return None;
        }
        previous = b;
    }
    let mut labels = 0;
    for label in domain.split(|&b| b == b'.') {
        labels += 1;
        let plain = (1..=63).contains(&label.len())
            && label.first() != Some(&b'-')
            && label.last() != Some(&b'-')
            && label.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-')
            && !(label.len() >= 4 && label[..4].eq_ignore_ascii_case(b"xn--"));
        if !plain {
            return None;
        }
    }
    if labels < 2 {
        return None;
    }
    // All ASCII here, so lower-casing bytes is lower-casing characters.
    let mut out = raw.to_owned();
    out.make_ascii_lowercase();
    Some(out)
}

fn normalize_email(raw: &str) -> Result<String, IdentifierError> {
    email_fast(raw).map_or_else(|| normalize_email_general(raw), Ok)
}

fn normalize_email_general(raw: &str) -> Result<String, IdentifierError> {
    let kind = IdentifierKind::Email;
    if raw.len() > MAX_EMAIL {
        return Err(IdentifierError::TooLong { kind, max: MAX_EMAIL });
    }
    let (local, domain) = raw.rsplit_once('@').ok_or_else(|| malformed(kind, "missing `@`"))?;
    // Mailbox providers treat local parts case-insensitively in practice; matching people across
    // channels matters more than RFC 5321's theoretical case sensitivity. Checked once lower-cased
    // so the canonical form passes the same checks (`İ` lower-cases to `i` and a combining dot,
    // which is not allowed; found by fuzzing, FUZZING.md).
    let local = local.to_lowercase();
    if local.is_empty() || local.len() > 64 {
        return Err(malformed(kind, "local part must be 1-64 bytes"));
    }
    let local_ok = local.chars().all(|c| c.is_alphanumeric() || (c.is_ascii() && LOCAL_SPECIALS.contains(&(c as u8))))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    if !local_ok {
        return Err(malformed(kind, "local part has characters that are not allowed"));
    }
    // Internationalised domains are compared in their ASCII (punycode) form. A plain ASCII
    // letters-digits-hyphens name without punycode labels maps to its lower case under UTS 46,
    // so the common case skips the IDNA machinery (the gateway normalises every identifier of a
    // campaign batch).
    let plain_ascii = domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !domain.split('.').any(|label| label.len() >= 4 && label[..4].eq_ignore_ascii_case("xn--"));
    let domain = if plain_ascii {
        domain.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(domain).map_err(|_| malformed(kind, "domain is not a valid host name"))?
    };
    let labels: Vec<&str> = domain.split('.').collect();
    let labels_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !labels_ok {
        return Err(malformed(kind, "domain is not a valid host name"));
    }
    let canonical = format!("{local}@{domain}");
    // Punycode and lower case can lengthen the address: the canonical form obeys the limit too.
    if canonical.len() > MAX_EMAIL {
        return Err(IdentifierError::TooLong { kind, max: MAX_EMAIL });
    }
    Ok(canonical)
}

/// Longest raw phone input accepted: E.164 has at most 15 digits; this leaves room for
/// separators and bounds the parser's work on hostile input.
const MAX_PHONE_INPUT: usize = 40;

fn normalize_phone(raw: &str) -> Result<String, IdentifierError> {
    let kind = IdentifierKind::Phone;
    if raw.len() > MAX_PHONE_INPUT {
        return Err(IdentifierError::TooLong { kind, max: MAX_PHONE_INPUT });
    }
    // International form only: without a country code the number's meaning depends on where it
    // was dialled, and node and gateway must derive the same link without such context.
    let Some(rest) = raw.strip_prefix('+') else {
        return Err(malformed(kind, "must be in international E.164 form starting with `+`"));
    };
    // Checked before the library sees it: libphonenumber accepts vanity letters and extensions,
    // which would make two spellings of one line differ (or one spelling mean two lines).
    if !rest.chars().all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')')) {
        return Err(malformed(kind, "may contain only digits and separators"));
    }
    if rest.trim_start_matches([' ', '-', '.', '(', ')']).starts_with('0') {
        return Err(malformed(kind, "country calling codes never start with 0"));
    }
    let number = phonenumber::parse(None, raw).map_err(|e| {
        malformed(
            kind,
            match e {
                phonenumber::ParseError::InvalidCountryCode => "unknown country calling code",
                phonenumber::ParseError::TooShortNsn | phonenumber::ParseError::TooShortAfterIdd => {
                    "too short for its country"
                }
                phonenumber::ParseError::TooLong => "too long for its country",
                _ => "not a phone number",
            },
        )
    })?;
    // libphonenumber's metadata decides: a number no operator could have assigned is refused, so
    // typos do not become identities that never match the real number.
    if !phonenumber::is_valid(&number) {
        return Err(malformed(kind, "not a valid number for its country"));
    }
    let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
    // E.164 numbers have at most 15 digits; libphonenumber's patterns for some countries (DE)
    // admit longer ones, which no operator can have assigned (found by fuzzing, FUZZING.md).
    if e164.len() > 1 + MAX_E164_DIGITS {
        return Err(malformed(kind, "longer than the 15 digits E.164 allows"));
    }
    Ok(e164)
}

/// Most digits of an E.164 number (country code included).
const MAX_E164_DIGITS: usize = 15;

fn normalize_token(kind: IdentifierKind, raw: &str, max: usize, min: usize) -> Result<String, IdentifierError> {
    if raw.len() > max {
        return Err(IdentifierError::TooLong { kind, max });
    }
    if raw.len() < min {
        return Err(malformed(kind, "too short"));
    }
    if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)) {
        return Err(malformed(kind, "may contain only letters, digits and `._:-`"));
    }
    Ok(raw.to_owned())
}

fn normalize_chat(raw: &str) -> Result<String, IdentifierError> {
    let kind = IdentifierKind::ChatHandle;
    if raw.len() > MAX_OPAQUE {
        return Err(IdentifierError::TooLong { kind, max: MAX_OPAQUE });
    }
    let (platform, handle) = raw.split_once(':').ok_or_else(|| malformed(kind, "must be `platform:handle`"))?;
    let platform_ok = (1..=32).contains(&platform.len())
        && platform.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !platform_ok {
        return Err(malformed(kind, "platform must be letters, digits, `_` or `-`"));
    }
    if handle.is_empty() || handle.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(malformed(kind, "handle must be non-empty without spaces"));
    }
    let canonical = format!("{}:{}", platform.to_ascii_lowercase(), handle.to_lowercase());
    // Lower case can lengthen the handle (`İ`): the canonical form obeys the limit too.
    if canonical.len() > MAX_OPAQUE {
        return Err(IdentifierError::TooLong { kind, max: MAX_OPAQUE });
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(kind: IdentifierKind, raw: &str) -> Result<String, IdentifierError> {
        NormalizedIdentifier::normalize(kind, raw).map(|n| n.expose_value().to_owned())
    }

    #[test]
    fn email_is_canonical() {
        assert_eq!(norm(IdentifierKind::Email, "  Anna.Schmidt@Example.DE ").unwrap(), "anna.schmidt@example.de");
        assert_eq!(norm(IdentifierKind::Email, "jürgen@bücher.de").unwrap(), "jürgen@xn--bcher-kva.de");
        // Punycode labels still go through IDNA (and are validated there), in any case.
        assert_eq!(norm(IdentifierKind::Email, "j@XN--BCHER-KVA.de").unwrap(), "j@xn--bcher-kva.de");
        assert!(norm(IdentifierKind::Email, "j@xn--zz-not-punycode-.de").is_err());
        for bad in ["", "no-at", "@example.de", "a@b", "a..b@example.de", "a b@example.de", "a@-x.de", ".a@example.de"]
        {
            assert!(norm(IdentifierKind::Email, bad).is_err(), "{bad:?} should be rejected");
        }
    }

    /// The fast path is an optimisation only: wherever it answers, the general rules give the
    /// same answer. Random addresses over an alphabet of every character class the rules treat
    /// differently (case, specials, dots, hyphens, `@`, punycode prefixes, non-ASCII).
    #[test]
    fn email_fast_path_agrees_with_the_general_rules() {
        const PIECES: &[&str] = &[
            "a", "Z", "0", "9", ".", "..", "-", "_", "+", "!", "~", "@", "xn--", "XN--", "é", "ß", " ", "(", ",",
            "example", "DE", "x", "b\u{0}",
        ];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut fast_hits, mut agreed) = (0, 0);
        for _ in 0..200_000 {
            let len = 1 + next() % 12;
            let mut raw: String = (0..len).map(|_| PIECES[(next() % PIECES.len() as u64) as usize]).collect();
            if next() % 2 == 0 {
                // Most real addresses have exactly one `@` followed by a dotted domain.
                raw = format!("{raw}@{}.{}", PIECES[(next() % 4) as usize + 19], PIECES[(next() % 3) as usize + 20]);
            }
            let general = normalize_email_general(&raw);
            if let Some(fast) = email_fast(&raw) {
                fast_hits += 1;
                assert_eq!(Ok(fast), general, "{raw:?}");
            } else if general.is_ok() && raw.is_ascii() && !raw.to_ascii_lowercase().contains("xn--") {
                panic!("{raw:?} is plain ASCII and valid, but the fast path gave up on it");
            }
            agreed += 1;
        }
        assert!(fast_hits > 5_000, "only {fast_hits} of {agreed} inputs took the fast path");
    }

    #[test]
    fn phone_is_e164() {
        assert_eq!(norm(IdentifierKind::Phone, "+49 151 1234-5678").unwrap(), "+4915112345678");
        assert_eq!(norm(IdentifierKind::Phone, "+1 (212) 555-0100").unwrap(), "+12125550100");
        assert_eq!(norm(IdentifierKind::Phone, "+49 151 7394 2265").unwrap(), "+4915173942265");
        assert_eq!(norm(IdentifierKind::Phone, "+33 6 12 34 56 78").unwrap(), "+33612345678");
        assert_eq!(norm(IdentifierKind::Phone, "+55 11 98765-4321").unwrap(), "+5511987654321");
        // The written "(0)" trunk prefix is not part of the international number.
        assert_eq!(norm(IdentifierKind::Phone, "+49 (0)151 1234 5678").unwrap(), "+4915112345678");
        for bad in [
            "015112345678",
            "+0151123456",
            "+49",
            "+4915112345678901234",
            "+49abc12345678",
            "+1-800-FLOWERS",
            "+49 151 1234 5678 ext. 9",
            // Right length, but North American area codes never start with 0 or 1.
            "+1 012 555 0100",
            // Unassigned country calling code.
            "+999 1234 5678",
            // Too short for the German plan.
            "+49 151 1",
        ] {
            assert!(norm(IdentifierKind::Phone, bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn errors_never_echo_the_value() {
        let err = NormalizedIdentifier::normalize(IdentifierKind::Email, "secret-person@@").unwrap_err();
        assert!(!err.to_string().contains("secret"));
        let err = NormalizedIdentifier::normalize(IdentifierKind::Phone, "+49 999 999").unwrap_err();
        assert!(!err.to_string().contains("999"));
        let id = NormalizedIdentifier::normalize(IdentifierKind::Email, "secret@example.com").unwrap();
        assert!(!format!("{id:?}").contains("secret"));
    }

    #[test]
    fn chat_and_tokens() {
        assert_eq!(norm(IdentifierKind::ChatHandle, "WhatsApp:AnnaS").unwrap(), "whatsapp:annas");
        assert!(norm(IdentifierKind::ChatHandle, "nohandle").is_err());
        assert!(norm(IdentifierKind::Device, "short").is_err());
        assert_eq!(norm(IdentifierKind::Device, "cookie-1234abcd").unwrap(), "cookie-1234abcd");
        assert!(norm(IdentifierKind::CrmAccount, "acc 1").is_err());
    }
}
