//! Gateway configuration: a versioned TOML file plus `DOMICILE_GATEWAY_*` environment overrides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use domicile_runtime::config::{ConfigError, load};
use domicile_runtime::packs::TrustConfig;
use domicile_runtime::tls::TlsFiles;
use domicile_types::RegionId;

pub const ENV_PREFIX: &str = "DOMICILE_GATEWAY";

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Configuration format version; only 1 exists.
    pub version: u32,
    pub listen: SocketAddr,
    /// Directory of policy packs (`<dir>/<pack>/pack.toml`).
    pub packs_dir: PathBuf,
    /// The deployment's link key (at least 32 bytes), shared with nodes.
    pub link_key_file: PathBuf,
    pub tls: TlsFiles,
    /// Deadline for one call to a node, in milliseconds.
    #[serde(default = "default_node_timeout_ms")]
    pub node_timeout_ms: u64,
    /// The regions of the deployment and where their nodes listen.
    pub regions: Vec<RegionEndpoint>,
    /// Who must have signed the pack set; absent: unsigned sets load (development only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packs_trust: Option<TrustConfig>,
    /// How often to look for a changed pack set, in milliseconds; 0: only on SIGHUP.
    #[serde(default = "default_packs_reload_ms")]
    pub packs_reload_ms: u64,
}

fn default_packs_reload_ms() -> u64 {
    5_000
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegionEndpoint {
    pub id: RegionId,
    /// `host:port` of the region's node.
    pub endpoint: String,
}

fn default_node_timeout_ms() -> u64 {
    2_000
}

impl GatewayConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: Self = load(path, ENV_PREFIX)?;
        let err = |message: &str| ConfigError { path: path.display().to_string(), message: message.to_owned() };
        if config.version != 1 {
            return Err(err("unsupported `version`: expected 1"));
        }
        if config.regions.is_empty() {
            return Err(err("`regions` must list at least one region"));
        }
        let mut ids: Vec<&RegionId> = config.regions.iter().map(|r| &r.id).collect();
        ids.sort();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(err("`regions` lists a region twice"));
        }
        Ok(config)
    }
}
