//! A local cluster's topology: which regions run a node. Which jurisdiction lives where comes
//! from the packs (`residency.home_regions`), not from here.

use std::path::Path;

use domicile_runtime::config::RegionText;
use domicile_types::RegionId;

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    #[serde(rename = "region")]
    #[schemars(length(min = 1))]
    pub regions: Vec<TopologyRegion>,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopologyRegion {
    #[schemars(with = "RegionText")]
    pub id: RegionId,
    /// Free text for operators, e.g. "EU countries".
    #[serde(default)]
    pub description: String,
}

/// The default: three regions, matching the home regions of the bundled packs.
pub const DEFAULT_TOPOLOGY: &str = include_str!("../../deploy/local/topology.toml");

impl Topology {
    /// Parses and checks topology text, reporting every problem; `origin` names it in errors.
    pub fn parse_named(origin: &str, text: &str) -> Result<Self, domicile_runtime::config::ConfigError> {
        let topology: Topology = domicile_runtime::config::parse(origin, text)?;
        let mut issues = Vec::new();
        for (i, region) in topology.regions.iter().enumerate() {
            if topology.regions[..i].iter().any(|r| r.id == region.id) {
                issues.push(domicile_runtime::config::ConfigIssue {
                    key: format!("region[{i}].id"),
                    message: "region listed twice".to_owned(),
                });
            }
        }
        if issues.is_empty() {
            Ok(topology)
        } else {
            Err(domicile_runtime::config::ConfigError { path: origin.to_owned(), issues })
        }
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(Self::parse_named("topology", text)?)
    }

    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        match path {
            None => Self::parse_named("built-in topology", DEFAULT_TOPOLOGY).map_err(Into::into),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read topology {}: {e}", path.display()))?;
                Ok(Self::parse_named(&path.display().to_string(), &text)?)
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
