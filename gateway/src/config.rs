//! Gateway configuration: a versioned TOML file plus `DOMICILE_GATEWAY_*` environment overrides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use domicile_runtime::config::RegionEndpoint;
use domicile_runtime::config::{ConfigError, SocketAddrText, duplicate_regions, load};
use domicile_runtime::packs::TrustConfig;
use domicile_runtime::tls::TlsFiles;

pub const ENV_PREFIX: &str = "DOMICILE_GATEWAY";

/// The shape of a gateway file, declared once: its schema, which files are checked against, is
/// derived from it (`domicile_runtime::config`).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Configuration format version; only 1 exists.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    #[schemars(with = "SocketAddrText")]
    pub listen: SocketAddr,
    /// Directory of policy packs (`<dir>/<pack>/pack.toml`).
    pub packs_dir: PathBuf,
    /// The deployment's link key (at least 32 bytes), shared with nodes.
    pub link_key_file: PathBuf,
    pub tls: TlsFiles,
    /// Deadline for one call to a node, in milliseconds.
    #[serde(default = "default_node_timeout_ms")]
    #[schemars(range(min = 1))]
    pub node_timeout_ms: u64,
    /// Deadline for one bulk call to a node (a batch of `ImportConsent`), in milliseconds. Bulk
    /// calls go over connections of their own, with a circuit breaker of their own: one that runs
    /// long never opens the circuit that the region's decisions and captures use.
    #[serde(default = "default_bulk_timeout_ms")]
    #[schemars(range(min = 1))]
    pub bulk_timeout_ms: u64,
    /// The regions of the deployment and where their nodes listen.
    #[schemars(length(min = 1))]
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
    /// The longest token lifetime accepted (expiry minus issue time), in seconds; absent: one
    /// day. A token claiming more is refused even while unexpired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_max_lifetime_secs: Option<u32>,
    /// Revoked certificates, tokens and callers (`domicile_runtime::revocation`), reloaded while
    /// serving; the gateway does not start if it is given and cannot be read. Absent: nothing is
    /// revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_file: Option<PathBuf>,
    /// How often to look for a changed revocation list, in milliseconds (and on SIGHUP).
    #[serde(default = "default_revocation_reload_ms")]
    pub revocation_reload_ms: u64,
    /// Requests one caller (certificate or token identity) may have in flight at this gateway,
    /// over all its connections; more are answered RESOURCE_EXHAUSTED at once. Absent: 512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight_per_caller: Option<u32>,
}

pub(crate) fn default_revocation_reload_ms() -> u64 {
    1_000
}

fn default_packs_reload_ms() -> u64 {
    5_000
}

fn default_node_timeout_ms() -> u64 {
    2_000
}

fn default_bulk_timeout_ms() -> u64 {
    30_000
}

impl GatewayConfig {
    /// Loads and checks a gateway file; the error lists every problem found.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: Self = load(path, ENV_PREFIX)?;
        // Duplicates are only visible once the structure is sound; report them all together.
        let issues = duplicate_regions("regions", &config.regions);
        if !issues.is_empty() {
            return Err(ConfigError { path: path.display().to_string(), issues });
        }
        Ok(config)
    }
}
