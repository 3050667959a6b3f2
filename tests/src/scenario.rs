//! The cluster a scenario test starts: in this process by default ([`InProcessCluster`]), on
//! real processes ([`TestCluster`]) with `DOMICILE_TEST_CLUSTER=processes`. Scenarios use only
//! the client API ([`Cluster`]) and what both layers offer (an extra gateway, a graceful stop),
//! so the same body runs on either; tests that kill, signal, pause or restart processes start a
//! [`TestCluster`] themselves.

use std::net::SocketAddr;
use std::path::Path;

use domicile_cli::cluster::ClusterStore;
use domicile_runtime::tls::TlsFiles;
use domicile_types::RegionId;

use crate::{Cluster, ExtraGateway, InProcessCluster, Running, TestCluster, TestOptions};

/// Environment variable choosing the layer scenario tests run on: `in-process` (the default) or
/// `processes`.
pub const HARNESS_ENV: &str = "DOMICILE_TEST_CLUSTER";

/// Environment variable choosing where the regions of scenario tests keep their state: `sled`
/// (the default) or `postgres` (a PostgreSQL server each cluster starts, one database per
/// region), so that every scenario proves both engines alike (`.ci/run` runs them on both).
pub const STORE_ENV: &str = "DOMICILE_TEST_STORE";

/// Sets `options.store` from [`STORE_ENV`], when set. Scenario clusters and process clusters of
/// tests that prove an engine-independent behaviour (fail-closed, kill -9, rolling restarts)
/// follow it; tests about the embedded store's own files do not call it.
pub fn apply_store_env(options: &mut TestOptions) -> anyhow::Result<()> {
    match std::env::var(STORE_ENV).as_deref() {
        Err(_) | Ok("" | "sled") => {}
        Ok("postgres") => options.store = ClusterStore::Postgres,
        Ok(other) => anyhow::bail!("{STORE_ENV}={other}: expected `sled` or `postgres`"),
    }
    Ok(())
}

/// A cluster for a scenario test (see the module documentation).
pub enum ScenarioCluster {
    InProcess(InProcessCluster),
    Processes(TestCluster),
}

/// `match` over the layers, the same expression for each.
macro_rules! on_layer {
    ($self:expr, $cluster:ident => $e:expr) => {
        match $self {
            ScenarioCluster::InProcess($cluster) => $e,
            ScenarioCluster::Processes($cluster) => $e,
        }
    };
}

impl ScenarioCluster {
    /// Starts one node per region and a gateway with the repository's packs on the layer
    /// [`HARNESS_ENV`] names (`binary` runs the processes, if they are processes), and waits
    /// until each answers a health check over mutual TLS.
    pub async fn start(binary: &str, regions: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(binary, regions, TestOptions::default()).await
    }

    /// As [`ScenarioCluster::start`], with options of the test's own.
    pub async fn start_with(binary: &str, regions: &[&str], mut options: TestOptions) -> anyhow::Result<Self> {
        apply_store_env(&mut options)?;
        match std::env::var(HARNESS_ENV).as_deref() {
            Err(_) | Ok("" | "in-process") => {
                Ok(Self::InProcess(InProcessCluster::start_with(regions, options).await?))
            }
            Ok("processes") => Ok(Self::Processes(TestCluster::start_with(binary, regions, options).await?)),
            Ok(other) => anyhow::bail!("{HARNESS_ENV}={other}: expected `in-process` or `processes`"),
        }
    }

    /// Starts one more gateway on the cluster's gateway configuration, with some regions' node
    /// endpoints replaced (e.g. by a recording proxy), on the cluster's layer. It shares nothing
    /// with the cluster's own gateways but the nodes.
    pub async fn start_gateway(
        &self,
        label: &str,
        endpoints: &[(RegionId, SocketAddr)],
    ) -> anyhow::Result<ExtraGateway> {
        match self {
            Self::InProcess(cluster) => {
                let server = cluster.start_gateway(label, endpoints).await?;
                Ok(ExtraGateway { addr: server.addr, _running: Running::InProcess { _server: server } })
            }
            Self::Processes(cluster) => cluster.start_gateway(label, endpoints).await,
        }
    }

    /// Stops every node and gateway gracefully (SIGTERM, or its in-process equivalent), gateways
    /// first, so the cluster's files can be inspected.
    pub async fn stop(&mut self) {
        on_layer!(self, cluster => cluster.stop().await)
    }
}

impl Cluster for ScenarioCluster {
    fn dir(&self) -> &Path {
        on_layer!(self, cluster => cluster.dir())
    }

    fn client_tls(&self) -> &TlsFiles {
        on_layer!(self, cluster => cluster.client_tls())
    }

    fn gateway_addr(&self) -> SocketAddr {
        on_layer!(self, cluster => cluster.gateway_addr())
    }

    fn gateway_addrs(&self) -> Vec<SocketAddr> {
        on_layer!(self, cluster => cluster.gateway_addrs())
    }

    fn regions(&self) -> Vec<RegionId> {
        on_layer!(self, cluster => cluster.regions())
    }

    fn database(&self) -> Option<&domicile_cli::cluster::ClusterDatabase> {
        on_layer!(self, c => c.database())
    }

    fn node_addr(&self, region: &RegionId) -> Option<SocketAddr> {
        on_layer!(self, cluster => cluster.node_addr(region))
    }
}
