//! `ClaimLinks` and `ReleaseLinks` on the wire, and the link lists every ownership method reads.

use domicile_proto::limits;
use domicile_proto::pb::node::v1 as pb;
use domicile_types::{Link, RegionId};
use tonic::Request;

use crate::access::Requester;
use crate::error::NodeError;
use crate::service::NodeService;
use crate::store::{Release, Store};

pub(in crate::service) async fn claim_links<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::ClaimLinksRequest>,
) -> Result<pb::ClaimLinksResponse, NodeError> {
    let claimant = claimant(&request, &request.get_ref().region)?;
    let req = request.into_inner();
    let links = links_of("links", &req.links)?;
    let holders = node.grant_claims(&claimant, &req.map_digest, req.generation, &links).await?;
    Ok(pb::ClaimLinksResponse {
        results: holders
            .into_iter()
            .map(|h| pb::ClaimResult { held_by: h.map(|r| r.to_string()).unwrap_or_default() })
            .collect(),
    })
}

pub(in crate::service) async fn release_links<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::ReleaseLinksRequest>,
) -> Result<pb::ReleaseLinksResponse, NodeError> {
    let claimant = claimant(&request, &request.get_ref().region)?;
    let req = request.into_inner();
    let links = links_of("releases", &req.releases.iter().map(|r| r.link.clone()).collect::<Vec<_>>())?;
    let releases: Vec<Release> =
        links.into_iter().zip(&req.releases).map(|(link, r)| Release { link, generation: r.generation }).collect();
    let released = node.give_up_claims(&claimant, &req.map_digest, &releases).await?;
    Ok(pb::ReleaseLinksResponse { released: released as u64 })
}

/// The claimant: the calling node's region, which must be the region it claims for.
fn claimant<T>(request: &Request<T>, stated: &str) -> Result<RegionId, NodeError> {
    let region =
        RegionId::parse(stated).map_err(|_| NodeError::InvalidArgument("`region` is not a region id".into()))?;
    match Requester::of(request) {
        Some(Requester::PeerNode(caller)) if *caller == region => Ok(region),
        Some(Requester::PeerNode(_)) => Err(NodeError::PermissionDenied("a node claims only for its own region")),
        _ => Err(NodeError::PermissionDenied("only nodes of other regions claim identifiers")),
    }
}

/// Links sent as bytes in the list `field`, at most [`limits::LINKS`] of them (counted before
/// decoding too, `wire::RequestCodec`).
pub(in crate::service) fn links_of(field: &str, bytes: &[Vec<u8>]) -> Result<Vec<Link>, NodeError> {
    limits::LINKS.check(field, bytes.len())?;
    bytes
        .iter()
        .map(|b| {
            Link::from_slice(b)
                .map_err(|_| NodeError::InvalidArgument("`links` holds a value that is not 16 bytes".into()))
        })
        .collect()
}
