//! Test harness: real clusters of real processes on loopback.
//!
//! Built on the CLI's `LocalCluster` (the code behind `domicile cluster up`), so tests exercise
//! exactly what operators run. Readiness is the child's ready line followed by a real health
//! RPC; there are no sleeps and no fixed ports.

use std::path::{Path, PathBuf};

use domicile_cli::cluster::{ClusterOptions, LocalCluster};
use domicile_proto::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_proto::pb::node::v1::regional_node_client::RegionalNodeClient;
use domicile_runtime::pki::ClusterPki;
use domicile_runtime::tls::{TlsFiles, TlsMaterial, install_crypto_provider};
use domicile_types::RegionId;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub use domicile_proto::pb;

/// The policy packs shipped in the repository.
pub fn repo_packs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-packs")
}

#[allow(clippy::panic, reason = "test helper: a malformed region literal is a bug in the test")]
pub fn region(id: &str) -> RegionId {
    RegionId::parse(id).unwrap_or_else(|e| panic!("bad region {id}: {e}"))
}

pub struct TestCluster {
    pub cluster: LocalCluster,
    // Dropped last: holds the cluster's files.
    _dir: tempfile::TempDir,
}

impl TestCluster {
    /// Starts one node per region and a gateway with the repository's packs, and waits until
    /// each answers a health check over mutual TLS.
    pub async fn start(binary: &str, regions: &[&str]) -> anyhow::Result<Self> {
        install_crypto_provider();
        let dir = tempfile::tempdir()?;
        let cluster = LocalCluster::start(ClusterOptions {
            dir: dir.path().to_owned(),
            packs_dir: repo_packs(),
            regions: regions.iter().map(|r| region(r)).collect(),
            gateway_listen: "127.0.0.1:0".parse()?,
            binary: PathBuf::from(binary),
        })
        .await?;
        let this = Self { cluster, _dir: dir };
        this.wait_healthy().await?;
        Ok(this)
    }

    async fn wait_healthy(&self) -> anyhow::Result<()> {
        let gateway = self.gateway_channel().await?;
        check_serving(gateway, "domicile.gateway.v1.Domicile").await?;
        for process in self.cluster.processes() {
            if let Some(region) = &process.region {
                check_serving(self.node_channel(region).await?, "domicile.node.v1.RegionalNode").await?;
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        self.cluster.dir()
    }

    pub fn pki(&self) -> anyhow::Result<ClusterPki> {
        Ok(ClusterPki::open_or_create(&self.dir().join("pki"))?)
    }

    pub async fn gateway_channel(&self) -> anyhow::Result<Channel> {
        channel(
            &self.cluster.gateway_addr().to_string(),
            self.cluster.client_tls(),
            domicile_runtime::pki::GATEWAY_SERVER_NAME,
        )
        .await
    }

    pub async fn gateway(&self) -> anyhow::Result<DomicileClient<Channel>> {
        Ok(DomicileClient::new(self.gateway_channel().await?))
    }

    /// A channel to a region's node with a certificate from the cluster CA.
    pub async fn node_channel(&self, region: &RegionId) -> anyhow::Result<Channel> {
        let addr = self.cluster.node_addr(region).ok_or_else(|| anyhow::anyhow!("no node for {region}"))?;
        let tls = self.pki()?.client("test-operator")?;
        channel(&addr.to_string(), &tls, &region.node_server_name()).await
    }

    pub async fn node(&self, region: &RegionId) -> anyhow::Result<RegionalNodeClient<Channel>> {
        Ok(RegionalNodeClient::new(self.node_channel(region).await?))
    }

    /// Stops every process (SIGTERM, graceful) so their files can be inspected.
    pub async fn stop(&mut self) {
        self.cluster.stop().await;
    }
}

pub async fn channel(addr: &str, tls: &TlsFiles, server_name: &str) -> anyhow::Result<Channel> {
    let material = TlsMaterial::load(tls)?;
    Ok(Endpoint::from_shared(format!("https://{addr}"))?.tls_config(material.client(server_name))?.connect().await?)
}

async fn check_serving(channel: Channel, service: &str) -> anyhow::Result<()> {
    let reply = HealthClient::new(channel).check(HealthCheckRequest { service: service.to_owned() }).await?;
    anyhow::ensure!(reply.into_inner().status == ServingStatus::Serving as i32, "{service} is not serving");
    Ok(())
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Files under `dir` whose raw bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|path| std::fs::read(path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)))
        .collect()
}
