//! What the gRPC adapters share: who a request is for and the idempotency record of a write.

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
