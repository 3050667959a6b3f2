//! Which region arbitrates the ownership of each link (invariant 9: one identifier, one subject,
//! one home).
//!
//! Every link has exactly one **arbiter**: the region whose node keeps the link's claim (which
//! region holds it). The arbiter is chosen by rendezvous hashing over the deployment's regions:
//! the region with the highest `SHA-256("domicile/arbiter/v1" 0 region 0 link)` wins. Links are
//! keyed hashes, so claims spread evenly, and adding a region moves only the claims that the new
//! region wins (about one in N).
//!
//! Every node of a deployment must use the same map, or two nodes could ask different arbiters
//! about one link. Claims therefore carry the claimant's [`ArbiterMap::digest`], and an arbiter
//! refuses a claim made under another map (fail closed). The protocol built on this is described
//! in ARCHITECTURE.md ("Identifier ownership").

use sha2::{Digest, Sha256};

use crate::{Link, RegionId};

const ARBITER_DOMAIN: &[u8] = b"domicile/arbiter/v1";
const DIGEST_DOMAIN: &[u8] = b"domicile/arbiter-map/v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArbiterMapError {
    #[error("an arbiter map needs at least one region")]
    Empty,
    #[error("a region is listed twice in the arbiter map")]
    Duplicate,
}

/// The deployment's regions, as every node and gateway must agree on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArbiterMap {
    /// Sorted, unique.
    regions: Vec<RegionId>,
    digest: String,
}

impl ArbiterMap {
    pub fn new(regions: impl IntoIterator<Item = RegionId>) -> Result<Self, ArbiterMapError> {
        let mut regions: Vec<RegionId> = regions.into_iter().collect();
        regions.sort();
        if regions.is_empty() {
            return Err(ArbiterMapError::Empty);
        }
        if regions.windows(2).any(|w| w[0] == w[1]) {
            return Err(ArbiterMapError::Duplicate);
        }
        let mut hash = Sha256::new();
        hash.update(DIGEST_DOMAIN);
        for region in &regions {
            hash.update([0]);
            hash.update(region.as_str().as_bytes());
        }
        let digest = hex::encode(&hash.finalize()[..16]);
        Ok(Self { regions, digest })
    }

    /// The regions, sorted.
    pub fn regions(&self) -> &[RegionId] {
        &self.regions
    }

    pub fn contains(&self, region: &RegionId) -> bool {
        self.regions.binary_search(region).is_ok()
    }

    /// A short text naming this exact set of regions (32 hex digits).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The region that arbitrates `link`.
    pub fn arbiter(&self, link: &Link) -> &RegionId {
        let score = |region: &RegionId| {
            let mut hash = Sha256::new();
            hash.update(ARBITER_DOMAIN);
            hash.update([0]);
            hash.update(region.as_str().as_bytes());
            hash.update([0]);
            hash.update(link.as_bytes());
            let digest = hash.finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            u64::from_be_bytes(first)
        };
        // Non-empty by construction; equal scores (never seen in practice) go to the first region.
        let mut best = &self.regions[0];
        let mut best_score = score(best);
        for region in &self.regions[1..] {
            let s = score(region);
            if s > best_score {
                best = region;
                best_score = s;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions(ids: &[&str]) -> Vec<RegionId> {
        ids.iter().map(|r| RegionId::parse(r).unwrap()).collect()
    }

    fn link(i: u32) -> Link {
        let mut bytes = [0u8; 16];
        let digest = Sha256::digest(i.to_be_bytes());
        bytes.copy_from_slice(&digest[..16]);
        Link::from_bytes(bytes)
    }

    #[test]
    fn every_region_arbitrates_a_fair_share_and_order_does_not_matter() {
        let map = ArbiterMap::new(regions(&["eu-central", "us-east", "sa-east"])).unwrap();
        let shuffled = ArbiterMap::new(regions(&["sa-east", "eu-central", "us-east"])).unwrap();
        assert_eq!(map, shuffled);
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..30_000 {
            let arbiter = map.arbiter(&link(i));
            assert_eq!(arbiter, shuffled.arbiter(&link(i)));
            *counts.entry(arbiter.as_str().to_owned()).or_insert(0u32) += 1;
        }
        assert_eq!(counts.len(), 3);
        for (region, n) in counts {
            assert!((9_000..11_000).contains(&n), "{region} arbitrates {n} of 30000");
        }
    }

    #[test]
    fn adding_a_region_moves_only_the_links_it_wins() {
        let three = ArbiterMap::new(regions(&["eu-central", "us-east", "sa-east"])).unwrap();
        let four = ArbiterMap::new(regions(&["eu-central", "us-east", "sa-east", "ap-south"])).unwrap();
        assert_ne!(three.digest(), four.digest());
        let mut moved = 0;
        for i in 0..10_000 {
            let (before, after) = (three.arbiter(&link(i)), four.arbiter(&link(i)));
            if before != after {
                assert_eq!(after.as_str(), "ap-south");
                moved += 1;
            }
        }
        assert!((2_000..3_000).contains(&moved), "{moved}");
    }

    #[test]
    fn a_map_needs_distinct_regions() {
        assert_eq!(ArbiterMap::new(Vec::new()), Err(ArbiterMapError::Empty));
        assert_eq!(ArbiterMap::new(regions(&["eu-central", "eu-central"])), Err(ArbiterMapError::Duplicate));
        let one = ArbiterMap::new(regions(&["eu-central"])).unwrap();
        assert_eq!(one.arbiter(&link(7)).as_str(), "eu-central");
        assert_eq!(one.digest().len(), 32);
    }
}
