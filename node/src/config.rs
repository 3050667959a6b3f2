//! Node configuration: a versioned TOML file plus `DOMICILE_NODE_*` environment overrides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use domicile_runtime::config::{
    ConfigError, ConfigIssue, RegionEndpoint, RegionText, SocketAddrText, duplicate_regions, load,
};
use domicile_runtime::packs::TrustConfig;
use domicile_runtime::tls::TlsFiles;
use domicile_types::RegionId;

pub const ENV_PREFIX: &str = "DOMICILE_NODE";

/// The shape of a node file, declared once: its schema, which files are checked against, is
/// derived from it (`domicile_runtime::config`).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Configuration format version; only 1 exists.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// The region this node serves. It stores only subjects whose pack allows this region.
    #[schemars(with = "RegionText")]
    pub region: RegionId,
    /// Address to listen on; port 0 picks a free port (announced on stdout).
    #[schemars(with = "SocketAddrText")]
    pub listen: SocketAddr,
    /// The node's own directory: the sled database, key slots and audit log of the embedded
    /// store (`store.kind = "sled"`).
    pub data_dir: PathBuf,
    /// Where the region's state is kept; absent: the embedded store in `data_dir`.
    #[serde(default, skip_serializing_if = "StoreConfig::is_embedded")]
    pub store: StoreConfig,
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
    /// OTLP/gRPC collector for traces and metrics, e.g. `http://127.0.0.1:4317`; absent: no
    /// export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// How often metrics are exported to `otlp_endpoint`, in milliseconds; absent or 0: 10 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_metrics_interval_ms: Option<u64>,
    /// Identifier ownership: the deployment's regions. Required, even for one region: a node
    /// that assumed it was alone would let another region register the same identifier.
    pub ownership: OwnershipConfig,
    /// Revoked certificates and callers (`domicile_runtime::revocation`), reloaded while serving;
    /// the node does not start if it is given and cannot be read. Absent: nothing is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_file: Option<PathBuf>,
    /// How often to look for a changed revocation list, in milliseconds (and on SIGHUP).
    #[serde(default = "default_revocation_reload_ms")]
    pub revocation_reload_ms: u64,
    /// Where the embedded store journals erasures (one pseudonymous subject id per line), so a
    /// restore of an earlier backup erases them again; put it on storage that outlives this
    /// machine. Absent: `erasures.log` in `data_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erasure_journal_file: Option<PathBuf>,
    /// Tracked rights requests: their challenges' lifetime and attempt limit.
    #[serde(default)]
    pub rights: RightsConfig,
}

/// How rights requests are verified (ARCHITECTURE.md, "Rights requests").
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RightsConfig {
    /// How long a challenge code may be answered, in seconds (default 86400, 24 hours).
    #[serde(default = "default_challenge_ttl_secs")]
    #[schemars(range(min = 1))]
    pub challenge_ttl_secs: u64,
    /// Wrong codes that refuse a request (default 5).
    #[serde(default = "default_challenge_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub challenge_attempts: u32,
    /// How long an identifier added to an existing subject (by a later registration, a merge or a
    /// rectification) is not used to deliver challenges, in seconds (default 604800, 7 days):
    /// whoever attached it may not be the person. 0: no quarantine.
    #[serde(default = "default_identifier_quarantine_secs")]
    pub identifier_quarantine_secs: u64,
}

impl Default for RightsConfig {
    fn default() -> Self {
        Self {
            challenge_ttl_secs: default_challenge_ttl_secs(),
            challenge_attempts: default_challenge_attempts(),
            identifier_quarantine_secs: default_identifier_quarantine_secs(),
        }
    }
}

fn default_challenge_ttl_secs() -> u64 {
    86_400
}

fn default_identifier_quarantine_secs() -> u64 {
    7 * 24 * 3600
}

fn default_challenge_attempts() -> u32 {
    5
}

pub(crate) fn default_revocation_reload_ms() -> u64 {
    1_000
}

/// Where a region's state is kept.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StoreConfig {
    /// The embedded store (sled, key slots and `audit.log` in `data_dir`): one node per region.
    #[default]
    Sled,
    /// PostgreSQL: several node replicas of the region over one database (ARCHITECTURE.md,
    /// "PostgreSQL regions"; deploy/README.md for the database's failover).
    Postgres(crate::store::pg_store::PgConfig),
}

impl StoreConfig {
    fn is_embedded(&self) -> bool {
        matches!(self, StoreConfig::Sled)
    }
}

/// The deployment's regions, as every node must list them alike: each identifier's claim is kept
/// by one of them (its arbiter, ARCHITECTURE.md "Identifier ownership").
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnershipConfig {
    /// Every region of the deployment, this node's own included, with its node's `host:port`
    /// (this node's own entry is not dialled).
    #[schemars(length(min = 1))]
    pub regions: Vec<RegionEndpoint>,
    /// Deadline of one claim or release at another region's node, in milliseconds.
    #[serde(default = "default_claim_timeout_ms")]
    pub claim_timeout_ms: u64,
}

fn default_claim_timeout_ms() -> u64 {
    2_000
}

pub(crate) fn default_packs_reload_ms() -> u64 {
    5_000
}

impl NodeConfig {
    /// Loads and checks a node file; the error lists every problem found.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: Self = load(path, ENV_PREFIX)?;
        let mut issues = duplicate_regions("ownership.regions", &config.ownership.regions);
        if !config.ownership.regions.iter().any(|r| r.id == config.region) {
            issues.push(ConfigIssue {
                key: "ownership.regions".to_owned(),
                message: "must list this node's own region".to_owned(),
            });
        }
        if !issues.is_empty() {
            return Err(ConfigError { path: path.display().to_string(), issues });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use domicile_runtime::config::{check, schema_of};
    use domicile_runtime::packs::{TrustConfig, TrustedKeyFile};
    use domicile_runtime::tls::TlsFiles;

    use super::*;

    fn deploy(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
    }

    #[test]
    fn schema_accepts_every_field_of_the_struct() {
        let config = NodeConfig {
            version: 1,
            region: RegionId::parse("eu-central").unwrap(),
            listen: "127.0.0.1:7001".parse().unwrap(),
            data_dir: "/d".into(),
            store: StoreConfig::Postgres(crate::store::pg_store::PgConfig {
                url: "postgres://domicile@127.0.0.1:5432/eu".into(),
                password_file: Some("/pw".into()),
                password_env: None,
                pool_size: 4,
                kek_file: "/kek".into(),
                tls_ca_file: Some("/ca.pem".into()),
            }),
            packs_dir: "/p".into(),
            link_key_file: "/k".into(),
            tls: TlsFiles { ca: "ca".into(), cert: "c".into(), key: "k".into() },
            packs_trust: Some(TrustConfig {
                trusted_keys: vec![TrustedKeyFile { key_id: "a".into(), public_key_file: "a.pub".into() }],
                min_signatures: 1,
            }),
            packs_reload_ms: 10,
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            otlp_metrics_interval_ms: Some(1_000),
            ownership: OwnershipConfig {
                regions: vec![RegionEndpoint {
                    id: RegionId::parse("eu-central").unwrap(),
                    endpoint: "127.0.0.1:7001".into(),
                    replicas: Vec::new(),
                }],
                claim_timeout_ms: 500,
            },
            revocation_file: Some("/revoked.toml".into()),
            revocation_reload_ms: 1_000,
            erasure_journal_file: Some("/journal/erasures.log".into()),
            rights: RightsConfig { challenge_ttl_secs: 600, challenge_attempts: 3, ..RightsConfig::default() },
        };
        let value = serde_json::to_value(&config).unwrap();
        assert_eq!(check(&value, &schema_of::<NodeConfig>()), vec![]);
    }

    #[test]
    fn example_config_loads() {
        let config = NodeConfig::load(&deploy("deploy/examples/node-eu-central.toml")).unwrap();
        assert_eq!(config.region.as_str(), "eu-central");
    }

    #[test]
    fn two_mistakes_are_both_reported() {
        let path = deploy("cli/tests/fixtures/node-two-mistakes.toml");
        let err = NodeConfig::load(&path).unwrap_err();
        let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["listen", "packs_reload"], "{err}");
        let text = err.to_string();
        assert!(text.contains("node-two-mistakes.toml"), "{text}");
    }
}
