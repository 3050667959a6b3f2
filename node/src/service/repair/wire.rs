//! The ownership repair methods on the wire (`ClaimsOf`, `ListClaims`, `ReassertClaims`,
//! `DropLinks`, `ReleaseOrphanClaims`).

use std::pin::Pin;

use domicile_proto::convert::{self, FieldViolation};
use domicile_proto::pb::node::v1 as pb;
use domicile_types::RegionId;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Status};

use super::{OrphansReleased, Reassert, ReassertScope};
use crate::access::Requester;
use crate::error::NodeError;
use crate::service::NodeService;
use crate::service::claims::wire::links_of;
use crate::store::{Claim, Store};

/// Claims per `ListClaims` batch unless the caller asks for another size.
const DEFAULT_CLAIM_BATCH: usize = 4096;

pub type ClaimStream = Pin<Box<dyn Stream<Item = Result<pb::ClaimBatch, Status>> + Send>>;

pub(in crate::service) async fn claims_of<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::ClaimsOfRequest>,
) -> Result<pb::ClaimsOfResponse, NodeError> {
    operator_only(&request)?;
    let links = links_of("links", &request.get_ref().links)?;
    let claims = node.arbitrated_claims(&links).await?;
    Ok(pb::ClaimsOfResponse {
        claims: claims.iter().map(|claim| claim.as_ref().map(claim_to_pb).unwrap_or_default()).collect(),
        arbiter_map_digest: node.ownership.map().digest().to_owned(),
    })
}

pub(in crate::service) fn list_claims<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::ListClaimsRequest>,
) -> Result<ClaimStream, NodeError> {
    operator_only(&request)?;
    let batch_size = match request.get_ref().batch_size {
        0 => DEFAULT_CLAIM_BATCH,
        n => (n as usize).min(65_536),
    };
    let batches = node.claims_snapshot(batch_size, |link, claim| pb::ClaimEntry {
        link: link.as_bytes().to_vec(),
        claim: Some(claim_to_pb(&claim)),
    });
    Ok(Box::pin(batches.map(|batch| batch.map(|entries| pb::ClaimBatch { entries }).map_err(Status::from))))
}

pub(in crate::service) async fn reassert_claims<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::ReassertClaimsRequest>,
) -> Result<pb::ReassertClaimsResponse, NodeError> {
    operator_only(&request)?;
    let req = request.into_inner();
    let scope = ReassertScope {
        links: links_of("links", &req.links)?,
        all: req.all,
        dry_run: req.dry_run,
        announce: req.announce,
    };
    Ok(reassert_to_pb(node.reassert(scope).await?))
}

pub(in crate::service) async fn drop_links<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::DropLinksRequest>,
) -> Result<pb::DropLinksResponse, NodeError> {
    operator_only(&request)?;
    let req = request.get_ref();
    let key = convert::subject_key("subject", req.subject.as_ref())?;
    let links = links_of("links", &req.links)?;
    if links.is_empty() {
        return Err(FieldViolation::new("links", "names no link").into());
    }
    let kept_by = RegionId::parse(&req.kept_by).map_err(|_| FieldViolation::new("kept_by", "is not a region id"))?;
    let (subject, dropped) = node.drop_subject_links(&key, links, &kept_by).await?;
    Ok(pb::DropLinksResponse {
        subject_ref: node.subject_ref(subject).to_string(),
        links_removed: dropped.removed.iter().map(|l| l.as_bytes().to_vec()).collect(),
        links_left: dropped.left as u64,
    })
}

pub(in crate::service) async fn release_orphan_claims<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::ReleaseOrphanClaimsRequest>,
) -> Result<pb::ReleaseOrphanClaimsResponse, NodeError> {
    operator_only(&request)?;
    let links = links_of("links", &request.get_ref().links)?;
    let OrphansReleased { released, queued, held_here } = node.release_orphans(links).await?;
    Ok(pb::ReleaseOrphanClaimsResponse { released: released as u64, queued: queued as u64, held_here })
}

/// Refuses gateways and peer nodes even if the access layer let one through: these methods act
/// on the whole region. In-process calls (tests) have no requester and pass.
fn operator_only<T>(request: &Request<T>) -> Result<(), NodeError> {
    match Requester::of(request) {
        Some(Requester::Gateway | Requester::PeerNode(_)) => {
            Err(NodeError::PermissionDenied("ownership repair is for operators of this region"))
        }
        Some(Requester::InRegion(_)) | None => Ok(()),
    }
}

fn claim_to_pb(claim: &Claim) -> pb::LinkClaim {
    pb::LinkClaim { region: claim.region.to_string(), generation: claim.generation }
}

fn reassert_to_pb(report: Reassert) -> pb::ReassertClaimsResponse {
    pb::ReassertClaimsResponse {
        candidates: report.candidates,
        claimed: report.claimed,
        refused: report
            .refused
            .into_iter()
            .map(|(link, region)| pb::RefusedClaim { link: link.as_bytes().to_vec(), held_by: region.to_string() })
            .collect(),
        refused_total: report.refused_total,
        unanswered: report.unanswered,
        unreachable_arbiters: report.unreachable.iter().map(ToString::to_string).collect(),
        gone: report.gone,
        announced: report.announced,
    }
}
