//! Per-subject keys on PostgreSQL: each subject's data key is stored wrapped (AES-256-GCM) under
//! the region's key-encryption key (KEK), which lives in a file beside the node, never in the
//! database. Erasure deletes the subject's row; the old row versions PostgreSQL keeps (dead tuples
//! until vacuum, WAL segments, standbys, base backups) still hold the wrapped key, and become
//! unreadable when the KEK that wrapped them is rotated away: `domicile node rotate-kek` re-wraps
//! every live key under a new KEK version and the operator then deletes the old version from the
//! file (deploy/README.md, "Erasure on PostgreSQL").
//!
//! The KEK file holds one line per version, `<version> <64 hex>`; the highest version wraps new
//! keys, every listed version unwraps.

use std::collections::BTreeMap;
use std::path::Path;

use domicile_types::SubjectId;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::store::StoreError;
use crate::store::vault::SubjectKey;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
/// Associated data of a wrapped key: binds it to its subject, so a row copied to another subject
/// does not unwrap.
const WRAP_DOMAIN: &[u8] = b"domicile.subject-key.v1\0";

/// The region's KEK versions.
pub struct Keks {
    versions: BTreeMap<i32, LessSafeKey>,
}

impl std::fmt::Debug for Keks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keks").field("versions", &self.versions.keys().collect::<Vec<_>>()).finish()
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("key-encryption key file: {what}"))
}

impl Keks {
    /// Reads the KEK file, creating it with a first version (mode 0600) when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            let mut key = [0u8; KEY_LEN];
            SystemRandom::new().fill(&mut key).map_err(|_| StoreError::Backend("random source failed".into()))?;
            write_private(path, format!("1 {}\n", hex::encode(key)).as_bytes())?;
        }
        Self::load(path)
    }

    pub fn load(path: &Path) -> Result<Self, StoreError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StoreError::Backend(format!("key-encryption key file {}: {e}", path.display())))?;
        domicile_runtime::process::check_file_mode(path, true)
            .map_err(|e| StoreError::Backend(format!("key-encryption key file {}: {e}", path.display())))?;
        let mut versions = BTreeMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (version, key) = line.split_once(' ').ok_or_else(|| corrupt("a line is not `<version> <hex key>`"))?;
            let version: i32 = version.parse().map_err(|_| corrupt("a version is not a number"))?;
            let key: [u8; KEY_LEN] = hex::decode(key.trim())
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| corrupt("a key is not 64 hex digits"))?;
            let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| corrupt("a key is unusable"))?;
            if versions.insert(version, LessSafeKey::new(unbound)).is_some() {
                return Err(corrupt("a version is listed twice"));
            }
        }
        if versions.is_empty() {
            return Err(corrupt("no key"));
        }
        Ok(Self { versions })
    }

    /// Appends a new KEK version (the highest so far plus one) to the file at `path`; returns
    /// it. Replicas wrap new keys with it once restarted; then `rewrap` moves every stored key.
    pub fn add_version(path: &Path) -> Result<i32, StoreError> {
        let current = Self::load(path)?.current();
        let version = current.checked_add(1).ok_or_else(|| corrupt("no version after the last"))?;
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut key).map_err(|_| StoreError::Backend("random source failed".into()))?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| StoreError::Backend(format!("key-encryption key file {}: {e}", path.display())))?;
        let text = format!("{}{version} {}\n", ensure_newline(&text), hex::encode(key));
        replace_private(path, text.as_bytes())?;
        Ok(version)
    }

    /// Removes every version but the current one from the file at `path`: each copy of a key
    /// wrapped with them (old row versions, WAL, standbys, backups) becomes unreadable. The caller
    /// first makes sure that no stored key uses them (`PgStore::keys_per_version`).
    pub fn retire_older(path: &Path) -> Result<Vec<i32>, StoreError> {
        let keks = Self::load(path)?;
        let current = keks.current();
        let text = std::fs::read_to_string(path)
            .map_err(|e| StoreError::Backend(format!("key-encryption key file {}: {e}", path.display())))?;
        let kept: String = text
            .lines()
            .filter(|line| {
                let line = line.trim();
                line.is_empty()
                    || line.starts_with('#')
                    || line.split_once(' ').is_some_and(|(v, _)| v.parse::<i32>() == Ok(current))
            })
            .map(|line| format!("{line}\n"))
            .collect();
        replace_private(path, kept.as_bytes())?;
        Ok(keks.versions.keys().copied().filter(|v| *v != current).collect())
    }

    /// The versions the file holds.
    pub fn versions(&self) -> Vec<i32> {
        self.versions.keys().copied().collect()
    }

    /// The version new keys are wrapped with.
    pub fn current(&self) -> i32 {
        self.versions.keys().next_back().copied().unwrap_or(0)
    }

    /// A new data key for `subject`: the key, and its wrapped form under the current KEK.
    pub fn create(&self, subject: &SubjectId) -> Result<(SubjectKey, i32, Vec<u8>), StoreError> {
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut key).map_err(|_| StoreError::Backend("random source failed".into()))?;
        let version = self.current();
        let wrapped = self.wrap(version, subject, &key)?;
        Ok((SubjectKey::from_bytes(&key)?, version, wrapped))
    }

    /// Re-wraps a stored key under the current KEK (rotation).
    pub fn rewrap(&self, subject: &SubjectId, version: i32, wrapped: &[u8]) -> Result<Vec<u8>, StoreError> {
        let key = self.unwrap_bytes(subject, version, wrapped)?;
        self.wrap(self.current(), subject, &key)
    }

    pub fn unwrap(&self, subject: &SubjectId, version: i32, wrapped: &[u8]) -> Result<SubjectKey, StoreError> {
        SubjectKey::from_bytes(&self.unwrap_bytes(subject, version, wrapped)?)
    }

    fn wrap(&self, version: i32, subject: &SubjectId, key: &[u8; KEY_LEN]) -> Result<Vec<u8>, StoreError> {
        let kek = self.versions.get(&version).ok_or_else(|| corrupt("the current version is missing"))?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| StoreError::Backend("random source failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + KEY_LEN + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(key);
        let tag = kek
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(subject)),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| StoreError::Backend("key wrapping failed".into()))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    fn unwrap_bytes(&self, subject: &SubjectId, version: i32, wrapped: &[u8]) -> Result<[u8; KEY_LEN], StoreError> {
        // A version rotated away: the key is as good as erased, and says so.
        let kek = self
            .versions
            .get(&version)
            .ok_or_else(|| StoreError::Corrupt("a subject key is wrapped with a retired key-encryption key".into()))?;
        if wrapped.len() != NONCE_LEN + KEY_LEN + AES_256_GCM.tag_len() {
            return Err(StoreError::Corrupt("wrapped subject key".into()));
        }
        let (nonce, body) = wrapped.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| StoreError::Corrupt("nonce".into()))?;
        let mut buffer = body.to_vec();
        let plain = kek
            .open_in_place(nonce, Aad::from(aad(subject)), &mut buffer)
            .map_err(|_| StoreError::Corrupt("wrapped subject key fails authentication".into()))?;
        plain.try_into().map_err(|_| StoreError::Corrupt("wrapped subject key".into()))
    }
}

fn aad(subject: &SubjectId) -> Vec<u8> {
    let mut aad = WRAP_DOMAIN.to_vec();
    aad.extend_from_slice(subject.as_bytes());
    aad
}

fn ensure_newline(text: &str) -> String {
    if text.is_empty() || text.ends_with('\n') { text.to_owned() } else { format!("{text}\n") }
}

/// Replaces the file at `path` by one holding `bytes` (mode 0600), atomically: written beside it,
/// synced, renamed over it, so a crash leaves the old or the new file, never half of one.
fn replace_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".new");
    let staging = path.with_file_name(name);
    let _ = std::fs::remove_file(&staging);
    write_private(&staging, bytes)?;
    std::fs::rename(&staging, path)
        .map_err(|e| StoreError::Backend(format!("key-encryption key file {}: {e}", path.display())))?;
    if let Some(dir) = path.parent().and_then(|dir| std::fs::File::open(dir).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |e: std::io::Error| StoreError::Backend(format!("key-encryption key file {}: {e}", path.display()));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}
