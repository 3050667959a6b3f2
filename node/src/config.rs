//! Node configuration: a versioned TOML file plus `DOMICILE_NODE_*` environment overrides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use domicile_runtime::config::{ConfigError, load};
use domicile_runtime::packs::TrustConfig;
use domicile_runtime::tls::TlsFiles;
use domicile_types::RegionId;

pub const ENV_PREFIX: &str = "DOMICILE_NODE";

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Configuration format version; only 1 exists.
    pub version: u32,
    /// The region this node serves. It stores only subjects whose pack allows this region.
    pub region: RegionId,
    /// Address to listen on; port 0 picks a free port (announced on stdout).
    pub listen: SocketAddr,
    /// Directory of the sled database.
    pub data_dir: PathBuf,
    /// Directory of policy packs (`<dir>/<pack>/pack.toml`).
    pub packs_dir: PathBuf,
    /// The deployment's link key (at least 32 bytes), shared with gateways.
    pub link_key_file: PathBuf,
    pub tls: TlsFiles,
    /// Who must have signed the pack set; absent: unsigned sets load (development only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packs_trust: Option<TrustConfig>,
    /// How often to look for a changed pack set, in milliseconds; 0: only on SIGHUP.
    #[serde(default = "default_packs_reload_ms")]
    pub packs_reload_ms: u64,
}

pub(crate) fn default_packs_reload_ms() -> u64 {
    5_000
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: Self = load(path, ENV_PREFIX)?;
        if config.version != 1 {
            return Err(ConfigError {
                path: path.display().to_string(),
                message: "unsupported `version`: expected 1".into(),
            });
        }
        Ok(config)
    }
}
