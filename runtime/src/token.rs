//! Signed caller tokens: the gateway's alternative to a client certificate for callers that
//! cannot hold one (a kiosk, a browser-side component behind a proxy, a SaaS connector).
//!
//! A token names exactly what a caller certificate names (caller, region, scopes: the same
//! [`CallerIdentity`] URI) plus its own id, when it was issued and when it expires, signed with
//! the cluster's Ed25519 token key:
//!
//! ```text
//! dmt2.<hex(payload)>.<hex(signature)>
//!     payload   = "<id: 32 hex digits> <issued_at> <expires_at> <caller URI>"   (Unix seconds)
//!     signature = Ed25519(token key, "domicile-token-v2\0" ‖ payload)
//! ```
//!
//! Sent as `authorization: Bearer <token>` over TLS. Hex keeps it header-safe without another
//! encoding dependency; the domain prefix keeps the key from signing anything else by accident.
//! The id lets one token be revoked (`revocation.rs`); the issue time lets every token of a
//! caller issued before an incident be revoked at once, and bounds replay: a verifier refuses a
//! token whose lifetime exceeds its maximum or that claims to be issued in the future, so a
//! token copied from a log cannot be used for longer than the verifier allows, whatever the
//! issuer wrote. The first format (`dmt1.`, no id or issue time) is refused: it could be neither
//! revoked alone nor bounded. Tokens carry no personal data, and errors never echo the token.

use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::identity::CallerIdentity;

pub const TOKEN_PREFIX: &str = "dmt2.";
const OLD_PREFIX: &str = "dmt1.";
const DOMAIN: &[u8] = b"domicile-token-v2\0";
/// How far in the future an issue time may be (clocks of issuer and verifier differ).
pub const MAX_CLOCK_SKEW_SECS: i64 = 60;
/// Longest token accepted; a longer header value is refused before any work.
const MAX_TOKEN_LEN: usize = 1024;

/// File names in a cluster's PKI directory.
pub const SIGNING_KEY_FILE: &str = "token-signing.key";
pub const PUBLIC_KEY_FILE: &str = "token-signing.pub";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a Domicile token")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token claims to be issued in the future")]
    NotYetValid,
    #[error("token lifetime exceeds what this verifier accepts")]
    LifetimeTooLong,
    #[error("token format dmt1 is no longer accepted; issue a new token")]
    OldFormat,
    #[error("token has been revoked")]
    Revoked,
    #[error("token names an invalid caller")]
    BadCaller,
    #[error("token key is invalid: {0}")]
    BadKey(&'static str),
    #[error("cannot read or write the token key {path}: {message}")]
    Io { path: String, message: String },
}

/// Issues tokens with the cluster's private token key.
pub struct TokenIssuer {
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenIssuer(<redacted>)")
    }
}

impl TokenIssuer {
    /// Opens `<pki_dir>/token-signing.key`, creating it (0600) and `token-signing.pub` (hex of
    /// the public key, what gateways are configured with) if absent.
    pub fn open_or_create(pki_dir: &Path) -> Result<Self, TokenError> {
        let path = pki_dir.join(SIGNING_KEY_FILE);
        let io = |e: std::io::Error| TokenError::Io { path: path.display().to_string(), message: e.to_string() };
        let pkcs8 = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let generated = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| TokenError::BadKey("system random source failed"))?;
                std::fs::create_dir_all(pki_dir).map_err(io)?;
                crate::process::write_private_file(&path, generated.as_ref()).map_err(io)?;
                generated.as_ref().to_vec()
            }
            Err(e) => return Err(io(e)),
        };
        let key = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| TokenError::BadKey("not an Ed25519 PKCS#8 key"))?;
        let public = pki_dir.join(PUBLIC_KEY_FILE);
        if !public.exists() {
            std::fs::write(&public, format!("{}\n", hex::encode(key.public_key().as_ref())))
                .map_err(|e| TokenError::Io { path: public.display().to_string(), message: e.to_string() })?;
        }
        Ok(Self { key })
    }

    /// A token for `caller`, issued at `issued_at` and valid until `expires_at` (Unix seconds),
    /// and its id (what a revocation list names).
    pub fn issue(&self, caller: &CallerIdentity, issued_at: i64, expires_at: i64) -> Result<Issued, TokenError> {
        let id = hex::encode(
            crate::process::random_bytes::<16>().map_err(|_| TokenError::BadKey("system random source failed"))?,
        );
        let payload = format!("{id} {issued_at} {expires_at} {}", caller.to_uri());
        let mut message = DOMAIN.to_vec();
        message.extend_from_slice(payload.as_bytes());
        let signature = self.key.sign(&message);
        let token = format!("{TOKEN_PREFIX}{}.{}", hex::encode(payload), hex::encode(signature.as_ref()));
        Ok(Issued { token, id })
    }
}

/// A freshly issued token and its id.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub id: String,
}

/// Verifies tokens with the cluster's public token key (all a gateway holds).
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    public_key: Vec<u8>,
    /// Longest lifetime (expiry minus issue time) accepted, in seconds.
    max_lifetime_secs: i64,
}

/// The longest token lifetime a verifier accepts unless configured otherwise: a working day.
pub const DEFAULT_MAX_LIFETIME_SECS: i64 = 24 * 3600;

/// A verified token: its id, who calls, and until when the token may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub id: String,
    pub caller: CallerIdentity,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// An Ed25519 public key from its hex text (as in `token-signing.pub` and pack trust keys).
pub(crate) fn ed25519_public_key(text: &str) -> Result<Vec<u8>, &'static str> {
    let key = hex::decode(text.trim()).map_err(|_| "not hex")?;
    if key.len() != 32 {
        return Err("an Ed25519 public key is 32 bytes");
    }
    Ok(key)
}

impl TokenVerifier {
    /// From the hex public key, as in `token-signing.pub`.
    pub fn from_hex(text: &str) -> Result<Self, TokenError> {
        Ok(Self {
            public_key: ed25519_public_key(text).map_err(TokenError::BadKey)?,
            max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS,
        })
    }

    /// The same verifier, accepting lifetimes up to `secs`.
    pub fn with_max_lifetime(self, secs: i64) -> Self {
        Self { max_lifetime_secs: secs, ..self }
    }

    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TokenError::Io { path: path.display().to_string(), message: e.to_string() })?;
        Self::from_hex(&text)
    }

    /// Checks form, signature, then issue time, lifetime and expiry against `now` (Unix
    /// seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Verified, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        if token.starts_with(OLD_PREFIX) {
            return Err(TokenError::OldFormat);
        }
        let rest = token.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Malformed)?;
        let (payload, signature) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        // One spelling per token: `hex::decode` also reads upper case, which made every signed
        // token verify in 2^n spellings, each a miss of the gateway's token cache (found by
        // fuzzing, FUZZING.md). Issuers write lower case only.
        let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !lower_hex(payload) || !lower_hex(signature) {
            return Err(TokenError::Malformed);
        }
        let payload = hex::decode(payload).map_err(|_| TokenError::Malformed)?;
        let signature = hex::decode(signature).map_err(|_| TokenError::Malformed)?;
        let mut message = DOMAIN.to_vec();
        message.extend_from_slice(&payload);
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(&message, &signature)
            .map_err(|_| TokenError::BadSignature)?;
        // Only signed bytes are parsed from here on.
        let payload = std::str::from_utf8(&payload).map_err(|_| TokenError::Malformed)?;
        let mut fields = payload.splitn(4, ' ');
        let mut next = || fields.next().ok_or(TokenError::Malformed);
        let (id, issued_at, expires_at, uri) = (next()?, next()?, next()?, next()?);
        if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(TokenError::Malformed);
        }
        let issued_at: i64 = issued_at.parse().map_err(|_| TokenError::Malformed)?;
        let expires_at: i64 = expires_at.parse().map_err(|_| TokenError::Malformed)?;
        if expires_at <= now {
            return Err(TokenError::Expired);
        }
        if issued_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(TokenError::NotYetValid);
        }
        if expires_at.saturating_sub(issued_at) > self.max_lifetime_secs {
            return Err(TokenError::LifetimeTooLong);
        }
        let caller = CallerIdentity::parse_uri(uri).map_err(|_| TokenError::BadCaller)?;
        Ok(Verified { id: id.to_owned(), caller, issued_at, expires_at })
    }
}

#[cfg(test)]
mod tests {
    use domicile_types::RegionId;

    use super::*;
    use crate::identity::Scope;

    fn caller() -> CallerIdentity {
        CallerIdentity::new("kiosk", RegionId::parse("eu-central").unwrap(), &[Scope::Decide]).unwrap()
    }

    fn pair() -> (tempfile::TempDir, TokenIssuer, TokenVerifier) {
        let dir = tempfile::tempdir().unwrap();
        let issuer = TokenIssuer::open_or_create(dir.path()).unwrap();
        let verifier = TokenVerifier::from_file(&dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        (dir, issuer, verifier)
    }

    #[test]
    fn a_token_names_its_caller_until_it_expires() {
        let (dir, issuer, verifier) = pair();
        let issued = issuer.issue(&caller(), 900, 2_000).unwrap();
        let verified = verifier.verify(&issued.token, 1_000).unwrap();
        assert_eq!(verified, Verified { id: issued.id.clone(), caller: caller(), issued_at: 900, expires_at: 2_000 });
        assert!(verified.caller.has(Scope::Decide) && !verified.caller.has(Scope::Capture));
        assert_eq!(verifier.verify(&issued.token, 2_000), Err(TokenError::Expired));
        // Every token has its own id.
        assert_ne!(issuer.issue(&caller(), 900, 2_000).unwrap().id, issued.id);
        // Reopening keeps the key: earlier tokens still verify.
        let again = TokenIssuer::open_or_create(dir.path()).unwrap();
        assert_eq!(
            verifier.verify(&again.issue(&caller(), 900, 2_000).unwrap().token, 1_000).unwrap().caller,
            caller()
        );
    }

    #[test]
    fn a_token_is_bounded_by_the_verifier_whatever_its_issuer_wrote() {
        let (_dir, issuer, verifier) = pair();
        let now = 1_000_000;
        // A lifetime longer than the verifier's maximum, even while still inside it.
        let long = issuer.issue(&caller(), now - 10, now + DEFAULT_MAX_LIFETIME_SECS).unwrap().token;
        assert_eq!(verifier.verify(&long, now), Err(TokenError::LifetimeTooLong));
        let short = verifier.clone().with_max_lifetime(60);
        let hour = issuer.issue(&caller(), now, now + 3600).unwrap().token;
        assert!(verifier.verify(&hour, now).is_ok());
        assert_eq!(short.verify(&hour, now), Err(TokenError::LifetimeTooLong));
        // Issued in the future beyond the clock skew allowed (a clock set ahead to mint tokens).
        let ahead = issuer.issue(&caller(), now + MAX_CLOCK_SKEW_SECS + 1, now + 600).unwrap().token;
        assert_eq!(verifier.verify(&ahead, now), Err(TokenError::NotYetValid));
        let skewed = issuer.issue(&caller(), now + MAX_CLOCK_SKEW_SECS, now + 600).unwrap().token;
        assert!(verifier.verify(&skewed, now).is_ok());
        // The first format is refused by name.
        assert_eq!(verifier.verify("dmt1.00.00", now), Err(TokenError::OldFormat));
    }

    #[test]
    fn tampered_foreign_and_malformed_tokens_are_refused() {
        let (_dir, issuer, verifier) = pair();
        let token = issuer.issue(&caller(), 900, 2_000).unwrap().token;
        // Widen the scopes in the payload: the signature no longer matches.
        let (head, signature) = token.rsplit_once('.').unwrap();
        let payload = String::from_utf8(hex::decode(head.trim_start_matches(TOKEN_PREFIX)).unwrap()).unwrap();
        let widened = payload.replace("scopes=decide", "scopes=decide,admin");
        let forged = format!("{TOKEN_PREFIX}{}.{signature}", hex::encode(widened));
        assert_eq!(verifier.verify(&forged, 1_000), Err(TokenError::BadSignature));
        // Signed by another cluster's key.
        let (_other_dir, other, _) = pair();
        assert_eq!(
            verifier.verify(&other.issue(&caller(), 900, 2_000).unwrap().token, 1_000),
            Err(TokenError::BadSignature)
        );
        for junk in ["", "dmt1.", "dmt1.zz.zz", "Bearer x", &"a".repeat(5_000), &token[..token.len() - 2]] {
            assert!(verifier.verify(junk, 1_000).is_err(), "{junk:.20} must be refused");
        }
        assert!(matches!(TokenVerifier::from_hex("abcd"), Err(TokenError::BadKey(_))));
    }
}
