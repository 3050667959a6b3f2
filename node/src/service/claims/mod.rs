//! This node as the arbiter of other regions' identifier claims (ARCHITECTURE.md, "Identifier
//! ownership"). Only other regions' nodes reach these operations (`access.rs`), each for its own
//! region; a grant is durable before it is answered, so no crash can hand the link out twice.

pub(super) mod wire;

use domicile_types::{Link, RegionId};

use super::NodeService;
use crate::error::NodeError;
use crate::store::{Release, Store};

impl<S: Store> NodeService<S> {
    /// Checks that a claim or release of `claimant` made under arbiter map `digest` is for this
    /// node, and that every link is one this region arbitrates.
    fn check_claimant(&self, claimant: &RegionId, digest: &str, links: &[Link]) -> Result<(), NodeError> {
        let map = self.ownership.map();
        if digest != map.digest() {
            tracing::error!(region = %self.region, %claimant, "claim under another arbiter map refused");
            return Err(NodeError::Precondition(
                "the claimant's arbiter map differs from this node's: the nodes must list the same regions",
            ));
        }
        if !map.contains(claimant) || claimant == &self.region {
            return Err(NodeError::InvalidArgument("`region` is not another region of this deployment".into()));
        }
        if links.iter().any(|l| map.arbiter(l) != &self.region) {
            return Err(NodeError::InvalidArgument("`links` names a link this region does not arbitrate".into()));
        }
        Ok(())
    }

    /// Claims `links` for `claimant` under `generation`. Per link: `None` if granted, else the
    /// region that holds it.
    pub(crate) async fn grant_claims(
        &self,
        claimant: &RegionId,
        digest: &str,
        generation: u64,
        links: &[Link],
    ) -> Result<Vec<Option<RegionId>>, NodeError> {
        self.check_claimant(claimant, digest, links)?;
        // Durable before the claimant may rely on it.
        let holders = self.settle_unkeyed(self.store.claim_links(claimant, generation, links).await).await?;
        let granted = holders.iter().filter(|h| h.is_none()).count();
        tracing::info!(region = %self.region, %claimant, granted, refused = holders.len() - granted, "identifier claims");
        Ok(holders)
    }

    /// Gives up claims of `claimant` (those still under the releases' generations). Returns how
    /// many were released.
    pub(crate) async fn give_up_claims(
        &self,
        claimant: &RegionId,
        digest: &str,
        releases: &[Release],
    ) -> Result<usize, NodeError> {
        let links: Vec<Link> = releases.iter().map(|r| r.link).collect();
        self.check_claimant(claimant, digest, &links)?;
        let released = self.settle_unkeyed(self.store.release_links(claimant, releases).await).await?;
        tracing::info!(region = %self.region, %claimant, released, "identifier claims released");
        Ok(released)
    }
}
