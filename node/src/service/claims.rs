//! This node as the arbiter of other regions' identifier claims (ARCHITECTURE.md, "Identifier
//! ownership"). Only other regions' nodes reach these methods (`access.rs`), each for its own
//! region; a grant is durable before it is answered, so no crash can hand the link out twice.

use domicile_proto::pb::node::v1 as pb;
use domicile_types::{Link, RegionId};
use tonic::{Request, Status};

use super::NodeService;
use crate::access::Requester;
use crate::store::{Release, Store};

/// Links per claim or release call.
pub(super) const MAX_CLAIMS: usize = 10_000;

pub(super) fn links_of(bytes: &[Vec<u8>]) -> Result<Vec<Link>, Status> {
    if bytes.len() > MAX_CLAIMS {
        return Err(Status::invalid_argument(format!("at most {MAX_CLAIMS} links per call")));
    }
    bytes
        .iter()
        .map(|b| {
            Link::from_slice(b).map_err(|_| Status::invalid_argument("`links` holds a value that is not 16 bytes"))
        })
        .collect()
}

impl<S: Store> NodeService<S> {
    /// The claimant: the calling node's region, which must be the region it claims for.
    fn claimant<T>(request: &Request<T>, stated: &str) -> Result<RegionId, Status> {
        let region = RegionId::parse(stated).map_err(|_| Status::invalid_argument("`region` is not a region id"))?;
        match Requester::of(request) {
            Some(Requester::PeerNode(caller)) if *caller == region => Ok(region),
            Some(Requester::PeerNode(_)) => Err(Status::permission_denied("a node claims only for its own region")),
            _ => Err(Status::permission_denied("only nodes of other regions claim identifiers")),
        }
    }

    pub(super) async fn grant_claims(
        &self,
        request: Request<pb::ClaimLinksRequest>,
    ) -> Result<pb::ClaimLinksResponse, Status> {
        let region = Self::claimant(&request, &request.get_ref().region)?;
        let req = request.into_inner();
        let links = links_of(&req.links)?;
        self.ownership.check_request(&region, &req.map_digest, &links)?;
        // Durable before the claimant may rely on it.
        let holders = self.settle_unkeyed(self.store.claim_links(&region, req.generation, &links)).await?;
        let granted = holders.iter().filter(|h| h.is_none()).count();
        tracing::info!(region = %self.region, claimant = %region, granted, refused = holders.len() - granted, "identifier claims");
        Ok(pb::ClaimLinksResponse {
            results: holders
                .into_iter()
                .map(|h| pb::ClaimResult { held_by: h.map(|r| r.to_string()).unwrap_or_default() })
                .collect(),
        })
    }

    pub(super) async fn give_up_claims(
        &self,
        request: Request<pb::ReleaseLinksRequest>,
    ) -> Result<pb::ReleaseLinksResponse, Status> {
        let region = Self::claimant(&request, &request.get_ref().region)?;
        let req = request.into_inner();
        let links = links_of(&req.releases.iter().map(|r| r.link.clone()).collect::<Vec<_>>())?;
        self.ownership.check_request(&region, &req.map_digest, &links)?;
        let releases: Vec<Release> =
            links.into_iter().zip(&req.releases).map(|(link, r)| Release { link, generation: r.generation }).collect();
        let released = self.settle_unkeyed(self.store.release_links(&region, &releases)).await?;
        tracing::info!(region = %self.region, claimant = %region, released, "identifier claims released");
        Ok(pb::ReleaseLinksResponse { released: released as u64 })
    }
}
