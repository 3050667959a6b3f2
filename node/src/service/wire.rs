//! What the gRPC adapters share: who a request is for, the idempotency record of a write, and
//! the checks of text fields that are vocabulary or bounded free text.

use domicile_proto::convert::FieldViolation;
use domicile_proto::prost::Message;
use domicile_types::RegionId;
use tonic::Request;

use super::{Caller, NodeService};
use crate::access::Requester;
use crate::error::NodeError;
use crate::idempotency;
use crate::store::{Idempotency, Store};

impl<S: Store> NodeService<S> {
    /// Who `request` is for. Its region is this node's own for a caller of its region; for a
    /// gateway, the region it states (`stated`, from the caller's certificate or token); unknown
    /// otherwise (a gateway that states none, a peer node, an in-process call).
    pub(super) fn caller<T>(&self, request: &Request<T>, stated: &str) -> Result<Caller, NodeError> {
        let requester = Requester::of(request);
        let region = match requester {
            Some(Requester::InRegion(_)) => Some(self.region.clone()),
            // Only a gateway forwards for callers of other regions: only its statement counts.
            Some(Requester::Gateway) if !stated.is_empty() => {
                Some(RegionId::parse(stated).map_err(|_| FieldViolation::new("caller_region", "is not a region id"))?)
            }
            Some(Requester::Gateway | Requester::PeerNode(_)) | None => None,
        };
        Ok(Caller { region, in_region: Requester::is_in_region(requester) })
    }

    /// The idempotency record of a write (see `crate::idempotency`), `None` without a key.
    pub(super) fn idempotency<M: Message + Clone, T>(
        &self,
        method: &str,
        request: &Request<T>,
        key: &str,
        body: &M,
        clear_key: impl FnOnce(&mut M),
    ) -> Result<Option<Idempotency>, NodeError> {
        idempotency::tag(&self.link_key, method, Requester::of(request), key, body, clear_key)
    }
}

/// `[a-z0-9._-]{1,max}`: intents and profile field names are vocabulary, not free text.
pub(super) fn token(field: &str, text: &str, max: usize) -> Result<String, FieldViolation> {
    if text.is_empty() || text.len() > max {
        return Err(FieldViolation::new(field, format!("must be 1-{max} bytes")));
    }
    if !text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)) {
        return Err(FieldViolation::new(field, "may contain only `a-z`, `0-9`, `.`, `_` and `-`"));
    }
    Ok(text.to_owned())
}

/// Free text such as an interaction summary: line breaks and tabs allowed, other controls not.
pub(super) fn free_text(field: &str, text: &str, max: usize) -> Result<String, FieldViolation> {
    if text.len() > max {
        return Err(FieldViolation::new(field, format!("is longer than {max} bytes")));
    }
    if text.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Err(FieldViolation::new(field, "contains control characters"));
    }
    Ok(text.to_owned())
}
