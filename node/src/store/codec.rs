//! How both engines encode and seal what they store, so a sealed value means the same under
//! sled and PostgreSQL: JSON for values, AES-256-GCM under the subject's key with the record's
//! table ("tree") and key as associated data, so a ciphertext cannot be moved to another subject
//! or record.

use domicile_types::{Channel, Purpose, SUBJECT_ID_LEN, SubjectId};

use super::StoreError;
use super::vault::SubjectKey;

pub(crate) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Key of a per-subject log entry (consent ledger, interactions, rights requests): sorting by key
/// sorts by subject, then recording order.
pub(crate) fn consent_key(subject: &SubjectId, sequence: u64) -> [u8; SUBJECT_ID_LEN + 8] {
    let mut key = [0u8; SUBJECT_ID_LEN + 8];
    key[..SUBJECT_ID_LEN].copy_from_slice(subject.as_bytes());
    key[SUBJECT_ID_LEN..].copy_from_slice(&sequence.to_be_bytes());
    key
}

pub(crate) fn current_key(subject: &SubjectId, purpose: Purpose, channel: Channel) -> Vec<u8> {
    let mut key = Vec::with_capacity(SUBJECT_ID_LEN + 32);
    key.extend_from_slice(subject.as_bytes());
    key.extend_from_slice(purpose.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(channel.as_str().as_bytes());
    key
}

/// Associated data binding a sealed value to its tree and key.
pub(crate) fn context(tree: &[u8], key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(tree.len() + 1 + key.len());
    out.extend_from_slice(tree);
    out.push(0);
    out.extend_from_slice(key);
    out
}

pub(crate) fn seal<T: serde::Serialize>(
    key: &SubjectKey,
    tree: &[u8],
    db_key: &[u8],
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    key.seal(&context(tree, db_key), &encode(value)?)
}

pub(crate) fn open<T: serde::de::DeserializeOwned>(
    key: &SubjectKey,
    tree: &[u8],
    db_key: &[u8],
    sealed: &[u8],
) -> Result<T, StoreError> {
    decode(&key.open(&context(tree, db_key), sealed)?)
}
