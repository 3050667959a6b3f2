//! A local cluster's topology: which regions run a node. Which jurisdiction lives where comes
//! from the packs (`residency.home_regions`), not from here.

use std::path::Path;

use domicile_types::RegionId;

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub version: u32,
    #[serde(rename = "region")]
    pub regions: Vec<TopologyRegion>,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyRegion {
    pub id: RegionId,
    /// Free text for operators, e.g. "EU countries".
    #[serde(default)]
    pub description: String,
}

/// The default: three regions, matching the home regions of the bundled packs.
pub const DEFAULT_TOPOLOGY: &str = include_str!("../../deploy/local/topology.toml");

impl Topology {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let topology: Topology = toml::from_str(text)?;
        anyhow::ensure!(topology.version == 1, "unsupported topology `version`: expected 1");
        anyhow::ensure!(!topology.regions.is_empty(), "a topology needs at least one region");
        Ok(topology)
    }

    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        match path {
            None => Self::parse(DEFAULT_TOPOLOGY),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read topology {}: {e}", path.display()))?;
                Self::parse(&text).map_err(|e| anyhow::anyhow!("topology {}: {e}", path.display()))
            }
        }
    }

    pub fn region_ids(&self) -> Vec<RegionId> {
        self.regions.iter().map(|r| r.id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_topology_parses() {
        let t = Topology::parse(DEFAULT_TOPOLOGY).unwrap();
        let ids: Vec<String> = t.region_ids().iter().map(ToString::to_string).collect();
        assert_eq!(ids, ["eu-central", "us-east", "sa-east"]);
    }
}
