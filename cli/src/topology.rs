//! A local cluster's topology: which regions run a node. Which jurisdiction lives where comes
//! from the packs (`residency.home_regions`), not from here.

use std::path::Path;

use domicile_runtime::config::{Kind, REGION, Table, VERSION_1, optional, required};
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

static REGION_TABLE: Table = Table { fields: &[required("id", REGION), optional("description", Kind::Text)] };

/// The keys a topology file may hold.
pub static SCHEMA: Table =
    Table { fields: &[VERSION_1, required("region", Kind::Array { item: &Kind::Table(&REGION_TABLE), min_len: 1 })] };

impl Topology {
    /// Parses and checks topology text, reporting every problem; `origin` names it in errors.
    pub fn parse_named(origin: &str, text: &str) -> Result<Self, domicile_runtime::config::ConfigError> {
        let topology: Topology = domicile_runtime::config::parse(origin, text, &SCHEMA)?;
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
