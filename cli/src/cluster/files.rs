//! The files a local cluster's processes start from, written before the first one starts: the
//! cluster CA and every certificate, the link key, and one configuration file per process.
//! [`super::LocalCluster`] starts processes on them; the test harness's in-process cluster runs
//! the same `serve` functions on the same files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use domicile_gateway::GatewayConfig;
use domicile_gateway::config::RegionEndpoint;
use domicile_node::NodeConfig;
use domicile_runtime::identity::{CallerIdentity, Scope};
use domicile_runtime::pki::ClusterPki;
use domicile_runtime::process::load_or_create_secret;
use domicile_runtime::tls::TlsFiles;
use domicile_types::RegionId;

use super::{ClusterAddresses, ClusterDatabase, ClusterOptions, absolute};

/// Everything a cluster's processes start from, under its directory (`pki/`, `config/`; `logs/`
/// and `data/` are created for them).
#[derive(Debug, Clone)]
pub struct ClusterFiles {
    /// The cluster directory, absolute.
    pub dir: PathBuf,
    /// One per region, in the order of [`ClusterOptions::regions`].
    pub nodes: Vec<ProcessFiles>,
    /// One per gateway, the first one first.
    pub gateways: Vec<ProcessFiles>,
    /// The CLI's certificate: an operator of the first region with every scope.
    pub client_tls: TlsFiles,
}

/// What one process starts from.
#[derive(Debug, Clone)]
pub struct ProcessFiles {
    /// `node` or `gateway`: the subcommand that runs it.
    pub role: &'static str,
    /// A node's region.
    pub region: Option<RegionId>,
    /// `node-<region>`, `gateway`, `gateway-2`, …: the stem of its configuration and log files.
    pub name: String,
    /// Where it listens (its configuration's `listen`).
    pub addr: SocketAddr,
    /// Its configuration file, `config/<name>.toml`.
    pub config: PathBuf,
    /// Its log file, `logs/<name>.log`.
    pub log: PathBuf,
}

impl ClusterFiles {
    /// Creates the cluster directory's layout, the PKI and the link key (or reuses them), checks
    /// the pack directory, and writes every process's configuration for `addresses`, all
    /// chosen before any process starts, so each configuration can name any other process.
    /// With `database`, each region's node keeps its state in its database there.
    pub fn write(
        options: &ClusterOptions,
        addresses: &ClusterAddresses,
        database: Option<&ClusterDatabase>,
    ) -> anyhow::Result<Self> {
        let dir = absolute(&options.dir);
        for sub in ["pki", "config", "logs", "data"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        for region in &options.regions {
            anyhow::ensure!(addresses.nodes.contains_key(region), "no address for the node of {region}");
        }
        anyhow::ensure!(!addresses.gateways.is_empty(), "no address for the gateway");
        let pki = ClusterPki::open_or_create(&dir.join("pki"))?;
        let link_key_file = dir.join("pki").join("link.key");
        load_or_create_secret(&link_key_file, true).context("cannot create the link key")?;
        // The CLI may do everything; it is an operator tool of the first region.
        let first = options.regions.first().context("a cluster needs at least one region")?;
        let client_tls = pki.caller(&CallerIdentity::new("cli", first.clone(), &Scope::ALL)?)?;
        let packs_dir = absolute(&options.packs_dir);
        anyhow::ensure!(
            packs_dir.is_dir(),
            "pack directory {} does not exist (run from the repository root or pass --packs)",
            packs_dir.display()
        );
        let writer = Writer {
            options,
            addresses,
            dir: &dir,
            pki: &pki,
            packs_dir: &packs_dir,
            link_key_file: &link_key_file,
            database,
        };
        let mut nodes = Vec::new();
        for region in &options.regions {
            let mut config = writer.node_config(region)?;
            config.rights = options.node_rights.clone();
            let files = writer.process("node", Some(region.clone()), format!("node-{region}"), config.listen);
            write_toml(&files.config, &config)?;
            nodes.push(files);
        }
        let mut gateways = Vec::new();
        for index in 0..addresses.gateways.len() {
            let config = writer.gateway_config(index)?;
            let files = writer.process("gateway", None, gateway_name(index), config.listen);
            write_toml(&files.config, &config)?;
            gateways.push(files);
        }
        Ok(Self { dir, nodes, gateways, client_tls })
    }
}

/// A region's node data directory under the cluster directory `dir`.
pub(super) fn node_data_dir(dir: &Path, region: &RegionId) -> PathBuf {
    dir.join("data").join(region.as_str())
}

/// `gateway` for the first gateway, then `gateway-2`, `gateway-3`, …
fn gateway_name(index: usize) -> String {
    match index {
        0 => "gateway".to_owned(),
        n => format!("gateway-{}", n + 1),
    }
}

/// The cluster's revocation list (`domicile_runtime::revocation`), shared by its gateways and
/// nodes; created empty if absent and never rewritten, so what an operator revoked stays
/// revoked across restarts.
pub const REVOCATION_FILE: &str = "revoked.toml";

fn revocation_file(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(REVOCATION_FILE);
    if !path.exists() {
        std::fs::write(
            &path,
            "# Revoked certificates, tokens and callers; reloaded by gateways and nodes while they serve.\n\
             # Format: domicile_runtime::revocation (deploy/README.md, \"Revoking a caller\").\nversion = 1\n",
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(path)
}

/// Where the node of `region` journals erasures: `<dir>/erasure-journals/<region>.log`.
pub fn erasure_journal(dir: &Path, region: &RegionId) -> anyhow::Result<PathBuf> {
    let journals = dir.join("erasure-journals");
    std::fs::create_dir_all(&journals).with_context(|| format!("cannot create {}", journals.display()))?;
    Ok(journals.join(format!("{region}.log")))
}

/// The cluster's token public key file in `pki_dir`, creating the key pair if absent.
fn token_public_key(pki_dir: &Path) -> anyhow::Result<PathBuf> {
    domicile_runtime::token::TokenIssuer::open_or_create(pki_dir)?;
    Ok(pki_dir.join(domicile_runtime::token::PUBLIC_KEY_FILE))
}

fn write_toml<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let text = toml::to_string_pretty(value)?;
    std::fs::write(path, format!("# Generated by `domicile cluster up`; rewritten on every start.\n{text}"))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// What every configuration of one cluster is written from.
struct Writer<'a> {
    options: &'a ClusterOptions,
    addresses: &'a ClusterAddresses,
    dir: &'a Path,
    pki: &'a ClusterPki,
    packs_dir: &'a Path,
    link_key_file: &'a Path,
    database: Option<&'a ClusterDatabase>,
}

impl Writer<'_> {
    fn process(&self, role: &'static str, region: Option<RegionId>, name: String, addr: SocketAddr) -> ProcessFiles {
        ProcessFiles {
            role,
            region,
            config: self.dir.join("config").join(format!("{name}.toml")),
            log: self.dir.join("logs").join(format!("{name}.log")),
            name,
            addr,
        }
    }

    /// A node's configuration. Every address of the cluster is known here (`self.addresses`).
    fn node_config(&self, region: &RegionId) -> anyhow::Result<NodeConfig> {
        let data_dir = node_data_dir(self.dir, region);
        // Holds the region's key-encryption keys when its state is in PostgreSQL.
        std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
        Ok(NodeConfig {
            version: 1,
            region: region.clone(),
            listen: self.addresses.node(region).with_context(|| format!("no address for the node of {region}"))?,
            store: match self.database {
                Some(database) => database.store_config(region, &data_dir),
                None => Default::default(),
            },
            data_dir,
            packs_dir: self.packs_dir.to_owned(),
            link_key_file: self.link_key_file.to_owned(),
            tls: self.pki.node(region)?,
            packs_trust: self.options.packs_trust.clone(),
            packs_reload_ms: self.options.packs_reload_ms,
            otlp_endpoint: None,
            otlp_metrics_interval_ms: None,
            // Every region's node, listed alike on each (identifier ownership: nodes claim
            // identifiers at each other's addresses, all known before any node starts).
            ownership: domicile_node::config::OwnershipConfig {
                regions: self
                    .options
                    .regions
                    .iter()
                    .map(|id| {
                        let addr =
                            self.addresses.node(id).with_context(|| format!("no address for the node of {id}"))?;
                        Ok(RegionEndpoint { id: id.clone(), endpoint: addr.to_string(), replicas: Vec::new() })
                    })
                    .collect::<anyhow::Result<_>>()?,
                claim_timeout_ms: 2_000,
            },
            revocation_file: Some(revocation_file(self.dir)?),
            revocation_reload_ms: self.options.packs_reload_ms.clamp(10, 1_000),
            // Outside the region's data directory, as in production (on storage that outlives the
            // data disk): a restore of a backup replays it (deploy/README.md, "Backup and restore").
            erasure_journal_file: Some(erasure_journal(self.dir, region)?),
            rights: Default::default(),
        })
    }

    /// The configuration of gateway `index` (0: the first), following every node.
    fn gateway_config(&self, index: usize) -> anyhow::Result<GatewayConfig> {
        Ok(GatewayConfig {
            version: 1,
            listen: *self.addresses.gateways.get(index).context("no address for the gateway")?,
            packs_dir: self.packs_dir.to_owned(),
            link_key_file: self.link_key_file.to_owned(),
            tls: self.pki.gateway()?,
            node_timeout_ms: 2_000,
            bulk_timeout_ms: 30_000,
            regions: self
                .options
                .regions
                .iter()
                .filter_map(|id| self.addresses.node(id).map(|addr| (id, addr)))
                .map(|(id, addr)| RegionEndpoint { id: id.clone(), endpoint: addr.to_string(), replicas: Vec::new() })
                .collect(),
            packs_trust: self.options.packs_trust.clone(),
            packs_reload_ms: self.options.packs_reload_ms,
            otlp_endpoint: None,
            otlp_metrics_interval_ms: None,
            token_public_key_file: Some(token_public_key(&self.dir.join("pki"))?),
            token_max_lifetime_secs: None,
            revocation_file: Some(revocation_file(self.dir)?),
            revocation_reload_ms: self.options.packs_reload_ms.clamp(10, 1_000),
            max_in_flight_per_caller: None,
        })
    }
}
