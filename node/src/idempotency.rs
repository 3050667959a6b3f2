//! Idempotency keys of writes: a write repeated with its key (after a reply was lost, say) is
//! applied once and answered as the first time (issue: outcome of a write that timed out).
//!
//! The store never sees a caller's key or request: it gets keyed digests under the deployment's
//! key, the key scoped by method and by who sent it (a gateway scopes its callers' keys by caller
//! name itself), the request as a fingerprint, so a key reused for a different request is told
//! apart and refused.

use crate::access::Requester;
use crate::error::NodeError;
use crate::store::{Idempotency, Replay, Store};
use domicile_proto::convert::FieldViolation;
use domicile_proto::prost::Message;
use domicile_runtime::process::now_unix;
use domicile_types::LinkKey;

/// Longest key a node accepts (a gateway's scoped keys are `<caller>/<key>`).
/// Room for a gateway's key: the caller's name (63) and region, then the caller's key (64).
const MAX_KEY: usize = 192;
/// How long a write's result is kept for a repeat.
pub const RETENTION_SECS: i64 = 24 * 3600;

fn valid_key(key: &str) -> bool {
    (1..=MAX_KEY).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b))
}

/// The store's idempotency record for a write `method` with `request` (whose `key` field is the
/// caller's idempotency key, cleared by `clear_key` before fingerprinting); `None` when the
/// request carries no key.
pub fn tag<M: Message + Clone>(
    link_key: &LinkKey,
    method: &str,
    requester: Option<&Requester>,
    key: &str,
    request: &M,
    clear_key: impl FnOnce(&mut M),
) -> Result<Option<Idempotency>, NodeError> {
    if key.is_empty() {
        return Ok(None);
    }
    if !valid_key(key) {
        return Err(FieldViolation::new(
            "idempotency_key",
            format!("must be 1-{MAX_KEY} characters of `A-Z`, `a-z`, `0-9`, `.`, `_`, `:`, `/` and `-`"),
        )
        .into());
    }
    let scope = match requester {
        Some(Requester::Gateway) => "gateway".to_owned(),
        Some(Requester::InRegion(caller)) => format!("caller:{}", caller.name),
        Some(Requester::PeerNode(region)) => format!("node:{region}"),
        None => "in-process".to_owned(),
    };
    let mut bare = request.clone();
    clear_key(&mut bare);
    let encoded = bare.encode_to_vec();
    Ok(Some(Idempotency {
        key: link_key.digest(b"domicile/idempotency-key/v1", &[method.as_bytes(), scope.as_bytes(), key.as_bytes()]),
        fingerprint: link_key.digest(b"domicile/idempotency-request/v1", &[method.as_bytes(), &encoded]),
        at: now_unix(),
    }))
}

/// The earlier result for `tag`'s key, decoded as `T`, if the key was used before: the same
/// request gets it; another request under the same key is INVALID_ARGUMENT; a result sealed for
/// a subject erased since is ALREADY_EXISTS (the write was applied; its answer is gone with the
/// subject).
pub fn replayed<T: serde::de::DeserializeOwned>(
    tag: &Idempotency,
    replay: Option<Replay>,
) -> Result<Option<T>, NodeError> {
    let Some(replay) = replay else { return Ok(None) };
    if replay.fingerprint != tag.fingerprint {
        return Err(FieldViolation::new("idempotency_key", "was used before for a different request").into());
    }
    match replay.result {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| NodeError::Internal("stored result of an earlier write is unreadable")),
        None => Err(NodeError::AlreadyExists(
            "this write was applied earlier; its subject has been erased since, and its answer with it",
        )),
    }
}

/// Forgets idempotency records older than [`RETENTION_SECS`], hourly, for the node's lifetime.
pub async fn purge_expired<S: Store>(store: std::sync::Arc<S>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        every.tick().await;
        match store.purge_idempotency(now_unix() - RETENTION_SECS).await {
            Ok(n) if n > 0 => tracing::info!(records = n, "expired idempotency records purged"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot purge idempotency records"),
        }
    }
}
