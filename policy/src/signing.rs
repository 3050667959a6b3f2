//! Signed pack sets: a manifest of every file with its SHA-256, a content hash over the manifest,
//! and one or more Ed25519 signatures over the content hash. Pure: callers read the files and keys.
//!
//! A set verifies when the files on hand are exactly the listed ones with the listed hashes (none
//! changed, added or removed) and at least `min_signatures` distinct trusted keys signed it.

use std::collections::BTreeMap;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::diag::PackSource;

/// Separates this use of a signature from any other use of the same key.
const DOMAIN: &str = "domicile-pack-set-v1";
/// The signature file at the root of a pack directory.
pub const SIGNATURES_FILE: &str = "SIGNATURES.toml";

/// A public key allowed to sign pack sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub key_id: String,
    /// Raw 32-byte Ed25519 public key.
    pub public_key: Vec<u8>,
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSet {
    pub content_hash: String,
    /// Trusted key ids whose signatures verified, sorted.
    pub signed_by: Vec<String>,
}

/// Why a set was refused. Paths are pack file paths, never personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("pack set is not signed: no {SIGNATURES_FILE}")]
    Unsigned,
    #[error("signature file is malformed: {0}")]
    Malformed(String),
    #[error("pack file changed after signing: {0}")]
    FileChanged(String),
    #[error("pack file added after signing: {0}")]
    FileAdded(String),
    #[error("pack file removed after signing: {0}")]
    FileRemoved(String),
    #[error("content hash does not match the signed file list")]
    ContentHash,
    #[error("{valid} valid signature(s) from trusted keys; {required} required")]
    NotEnoughSignatures { valid: usize, required: usize },
    #[error("invalid signing key: {0}")]
    InvalidKey(String),
    #[error("at least one signature must be required")]
    NoSignaturesRequired,
}

/// Every file of a set with its SHA-256, sorted by path, and the hash over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub files: BTreeMap<String, String>,
    pub content_hash: String,
}

impl Manifest {
    /// Paths are used as given (callers pass paths relative to the set root, `/`-separated).
    pub fn of(sources: &[PackSource]) -> Manifest {
        let files: BTreeMap<String, String> = sources
            .iter()
            .map(|s| (s.path.replace('\\', "/"), hex::encode(Sha256::digest(s.text.as_bytes()))))
            .collect();
        let content_hash = content_hash(&files);
        Manifest { files, content_hash }
    }

    fn message(&self) -> Vec<u8> {
        format!("{DOMAIN}\n{}\n", self.content_hash).into_bytes()
    }
}

fn content_hash(files: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN.as_bytes());
    hasher.update(b"\n");
    for (path, hash) in files {
        hasher.update(path.as_bytes());
        hasher.update(b"\0");
        hasher.update(hash.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    version: i64,
    content_hash: String,
    #[serde(default)]
    file: Vec<FileEntry>,
    #[serde(default)]
    signature: Vec<SignatureEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    path: String,
    sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureEntry {
    key_id: String,
    algorithm: String,
    signature: String,
}

fn parse(text: &str) -> Result<SignatureFile, SignatureError> {
    let file: SignatureFile = toml::from_str(text).map_err(|e| SignatureError::Malformed(e.message().to_owned()))?;
    if file.version != 1 {
        return Err(SignatureError::Malformed(format!("unsupported version {}", file.version)));
    }
    Ok(file)
}

/// Verifies `sources` (every file of the set, paths relative to its root) against the signature
/// file. Refuses unsigned, tampered or insufficiently signed sets.
pub fn verify(
    sources: &[PackSource],
    signatures: Option<&str>,
    trusted: &[TrustedKey],
    min_signatures: usize,
) -> Result<VerifiedSet, SignatureError> {
    if min_signatures == 0 {
        return Err(SignatureError::NoSignaturesRequired);
    }
    let file = parse(signatures.ok_or(SignatureError::Unsigned)?)?;
    let manifest = Manifest::of(sources);
    let listed: BTreeMap<String, String> = file.file.iter().map(|f| (f.path.clone(), f.sha256.clone())).collect();
    for (path, hash) in &manifest.files {
        match listed.get(path) {
            None => return Err(SignatureError::FileAdded(path.clone())),
            Some(h) if h != hash => return Err(SignatureError::FileChanged(path.clone())),
            Some(_) => {}
        }
    }
    if let Some(path) = listed.keys().find(|p| !manifest.files.contains_key(*p)) {
        return Err(SignatureError::FileRemoved(path.clone()));
    }
    if content_hash(&listed) != file.content_hash || file.content_hash != manifest.content_hash {
        return Err(SignatureError::ContentHash);
    }
    let message = manifest.message();
    let mut signed_by: Vec<String> = file
        .signature
        .iter()
        .filter(|s| s.algorithm == "ed25519")
        .filter_map(|s| {
            let key = trusted.iter().find(|k| k.key_id == s.key_id)?;
            let signature = hex::decode(&s.signature).ok()?;
            UnparsedPublicKey::new(&ED25519, &key.public_key).verify(&message, &signature).ok()?;
            Some(s.key_id.clone())
        })
        .collect();
    signed_by.sort();
    signed_by.dedup();
    if signed_by.len() < min_signatures {
        return Err(SignatureError::NotEnoughSignatures { valid: signed_by.len(), required: min_signatures });
    }
    Ok(VerifiedSet { content_hash: manifest.content_hash, signed_by })
}

/// Signs the set with one key and returns the new signature file. Signatures in `existing` that
/// cover the same content are kept (so a second approver adds to the first); signatures over
/// other content no longer apply and are dropped.
pub fn sign(
    sources: &[PackSource],
    existing: Option<&str>,
    key_id: &str,
    pkcs8: &[u8],
) -> Result<String, SignatureError> {
    if key_id.is_empty() || !key_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b)) {
        return Err(SignatureError::InvalidKey("key id must be letters, digits, `.`, `_`, `-` or `@`".into()));
    }
    let key = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| SignatureError::InvalidKey(e.to_string()))?;
    let manifest = Manifest::of(sources);
    let mut kept: Vec<SignatureEntry> = match existing.map(parse).transpose()? {
        Some(file) if file.content_hash == manifest.content_hash => {
            file.signature.into_iter().filter(|s| s.key_id != key_id).collect()
        }
        _ => Vec::new(),
    };
    kept.push(SignatureEntry {
        key_id: key_id.to_owned(),
        algorithm: "ed25519".to_owned(),
        signature: hex::encode(key.sign(&manifest.message())),
    });
    kept.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    let mut out = String::from(
        "# Signed pack set: written by `domicile packs sign`; do not edit by hand.\n# Any change to a listed file, or an added or removed file, invalidates every signature.\n",
    );
    out.push_str(&format!("version = 1\ncontent_hash = \"{}\"\n", manifest.content_hash));
    for (path, hash) in &manifest.files {
        out.push_str(&format!("\n[[file]]\npath = {}\nsha256 = \"{hash}\"\n", toml_string(path)));
    }
    for s in &kept {
        out.push_str(&format!(
            "\n[[signature]]\nkey_id = {}\nalgorithm = \"{}\"\nsignature = \"{}\"\n",
            toml_string(&s.key_id),
            s.algorithm,
            s.signature
        ));
    }
    Ok(out)
}

/// The raw public key of a PKCS#8 Ed25519 private key, for the trust configuration.
pub fn public_key(pkcs8: &[u8]) -> Result<Vec<u8>, SignatureError> {
    let key = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| SignatureError::InvalidKey(e.to_string()))?;
    Ok(key.public_key().as_ref().to_vec())
}

fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;

    use super::*;

    fn key() -> Vec<u8> {
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap().as_ref().to_vec()
    }

    fn set() -> Vec<PackSource> {
        vec![PackSource::new("de/pack.toml", "schema = 2\n"), PackSource::new("de/tests/a.toml", "pack = \"de\"\n")]
    }

    #[test]
    fn signed_set_verifies_and_any_tampering_is_refused() {
        let (legal, release) = (key(), key());
        let trusted = vec![
            TrustedKey { key_id: "legal".into(), public_key: public_key(&legal).unwrap() },
            TrustedKey { key_id: "release".into(), public_key: public_key(&release).unwrap() },
        ];
        let one = sign(&set(), None, "legal", &legal).unwrap();
        let ok = verify(&set(), Some(&one), &trusted, 1).unwrap();
        assert_eq!(ok.signed_by, ["legal"]);
        assert_eq!(
            verify(&set(), Some(&one), &trusted, 2),
            Err(SignatureError::NotEnoughSignatures { valid: 1, required: 2 })
        );
        let two = sign(&set(), Some(&one), "release", &release).unwrap();
        assert_eq!(verify(&set(), Some(&two), &trusted, 2).unwrap().signed_by, ["legal", "release"]);

        let mut changed = set();
        changed[0].text.push('\n');
        assert_eq!(verify(&changed, Some(&two), &trusted, 1), Err(SignatureError::FileChanged("de/pack.toml".into())));
        let mut added = set();
        added.push(PackSource::new("xx/pack.toml", ""));
        assert_eq!(verify(&added, Some(&two), &trusted, 1), Err(SignatureError::FileAdded("xx/pack.toml".into())));
        assert_eq!(
            verify(&set()[..1], Some(&two), &trusted, 1),
            Err(SignatureError::FileRemoved("de/tests/a.toml".into()))
        );
        assert_eq!(verify(&set(), None, &trusted, 1), Err(SignatureError::Unsigned));
        // A signature file edited to match changed content still fails: the signatures do not cover it.
        let forged = two.replace(&Manifest::of(&set()).content_hash, &Manifest::of(&changed).content_hash).replace(
            &hex::encode(Sha256::digest(set()[0].text.as_bytes())),
            &hex::encode(Sha256::digest(changed[0].text.as_bytes())),
        );
        assert_eq!(
            verify(&changed, Some(&forged), &trusted, 1),
            Err(SignatureError::NotEnoughSignatures { valid: 0, required: 1 })
        );
        // An untrusted key does not count.
        let stranger = sign(&set(), None, "stranger", &key()).unwrap();
        assert!(matches!(
            verify(&set(), Some(&stranger), &trusted, 1),
            Err(SignatureError::NotEnoughSignatures { .. })
        ));
        assert_eq!(verify(&set(), Some(&one), &trusted, 0), Err(SignatureError::NoSignaturesRequired));
        assert!(matches!(
            verify(&set(), Some("version = 2\ncontent_hash = \"\""), &trusted, 1),
            Err(SignatureError::Malformed(_))
        ));
        // Re-signing changed content drops the old signatures.
        let resigned = sign(&changed, Some(&two), "legal", &legal).unwrap();
        assert_eq!(verify(&changed, Some(&resigned), &trusted, 1).unwrap().signed_by, ["legal"]);
    }
}
