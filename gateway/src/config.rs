//! Gateway configuration: a versioned TOML file plus `DOMICILE_GATEWAY_*` environment overrides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use domicile_runtime::config::RegionEndpoint;
use domicile_runtime::config::{
    ConfigError, Kind, REGION_ENDPOINT_TABLE, SOCKET_ADDR, TLS_TABLE, TRUST_TABLE, Table, UNSIGNED, VERSION_1,
    duplicate_regions, load, optional, required,
};
use domicile_runtime::packs::TrustConfig;
use domicile_runtime::tls::TlsFiles;

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
    /// OTLP/gRPC collector for traces and metrics, e.g. `http://127.0.0.1:4317`; absent: no
    /// export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// How often metrics are exported to `otlp_endpoint`, in milliseconds; absent or 0: 10 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_metrics_interval_ms: Option<u64>,
    /// The cluster's token public key (hex, `token-signing.pub`): callers without a client
    /// certificate may then present a signed token. Absent: certificates only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_public_key_file: Option<PathBuf>,
}

fn default_packs_reload_ms() -> u64 {
    5_000
}

fn default_node_timeout_ms() -> u64 {
    2_000
}

/// The keys a gateway file may hold; kept beside the struct (the test below checks they agree).
pub static SCHEMA: Table = Table {
    fields: &[
        VERSION_1,
        required("listen", SOCKET_ADDR),
        required("packs_dir", Kind::Text),
        required("link_key_file", Kind::Text),
        required("tls", Kind::Table(&TLS_TABLE)),
        optional("node_timeout_ms", UNSIGNED),
        required("regions", Kind::Array { item: &Kind::Table(&REGION_ENDPOINT_TABLE), min_len: 1 }),
        optional("packs_trust", Kind::Table(&TRUST_TABLE)),
        optional("packs_reload_ms", UNSIGNED),
        optional("otlp_endpoint", Kind::Text),
        optional("otlp_metrics_interval_ms", UNSIGNED),
        optional("token_public_key_file", Kind::Text),
    ],
};

impl GatewayConfig {
    /// Loads and checks a gateway file; the error lists every problem found.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: Self = load(path, ENV_PREFIX, &SCHEMA)?;
        // Duplicates are only visible once the structure is sound; report them all together.
        let issues = duplicate_regions("regions", &config.regions);
        if !issues.is_empty() {
            return Err(ConfigError { path: path.display().to_string(), issues });
        }
        Ok(config)
    }
}
