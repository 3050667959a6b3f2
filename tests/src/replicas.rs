//! Further node replicas of a region over its PostgreSQL database, and gateways that spread over
//! them, for tests of a region with several replicas (ARCHITECTURE.md "PostgreSQL regions"). A
//! replica is a `domicile node` process on the region's own node configuration with an address
//! and a log of its own: the same database, key-encryption keys, packs and certificate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use domicile_proto::pb::node::v1 as node;
use domicile_proto::pb::node::v1::regional_node_client::RegionalNodeClient;
use domicile_runtime::identity::{CallerIdentity, Scope};
use domicile_types::RegionId;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::{Cluster, ExtraGateway, Running, TestCluster, channel, eventually};

/// How long a replica or gateway may take to serve.
const READY: Duration = Duration::from_secs(60);

/// A further node process of a region.
pub struct Replica {
    child: Child,
    pub addr: SocketAddr,
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    region: RegionId,
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl Replica {
    /// Starts a replica of `region` (whose node keeps its state in PostgreSQL) and waits until it
    /// serves.
    pub async fn start(cluster: &TestCluster, region: &RegionId) -> anyhow::Result<Self> {
        let dir = cluster.dir();
        let text = std::fs::read_to_string(dir.join(format!("config/node-{region}.toml")))?;
        let mut config: toml::Table = text.parse()?;
        let addr = free_addr()?;
        config.insert("listen".into(), toml::Value::String(addr.to_string()));
        let path = dir.join(format!("config/node-{region}-replica.toml"));
        std::fs::write(&path, toml::to_string(&config)?)?;
        let log = dir.join(format!("logs/node-{region}-replica.log"));
        let binary = cluster.binary().to_owned();
        let child = spawn(&binary, &["node", "--worker-threads", "1"], &path, &log)?;
        let mut replica = Self { child, addr, binary, config: path, log, region: region.clone() };
        replica.wait_serving(cluster).await?;
        Ok(replica)
    }

    /// Starts it again on its address, after [`Replica::kill`].
    pub async fn restart(&mut self, cluster: &TestCluster) -> anyhow::Result<()> {
        self.child = spawn(&self.binary, &["node", "--worker-threads", "1"], &self.config, &self.log)?;
        self.wait_serving(cluster).await
    }

    async fn wait_serving(&mut self, cluster: &TestCluster) -> anyhow::Result<()> {
        let serving = eventually(READY, || async {
            let mut client = self.client(cluster).await.ok()?;
            client.info(node::InfoRequest {}).await.ok().map(|_| ())
        })
        .await;
        serving.with_context(|| format!("the replica does not serve; see {}", self.log.display()))
    }

    /// A client of the replica as an operator of its region (every scope), as
    /// [`Cluster::node`] is of the region's node.
    pub async fn client(&self, cluster: &TestCluster) -> anyhow::Result<RegionalNodeClient<Channel>> {
        let operator = CallerIdentity::new(&format!("operator-{}", self.region), self.region.clone(), &Scope::ALL)?;
        let tls = cluster.pki()?.caller(&operator)?;
        let channel = channel(&self.addr.to_string(), &tls, &self.region.node_server_name()).await?;
        Ok(RegionalNodeClient::new(channel))
    }

    /// The replica's process id (to pause it: [`crate::Paused::process`]).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// kill -9.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        Ok(self.child.kill().await?)
    }
}

fn spawn(binary: &Path, args: &[&str], config: &Path, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    Ok(Command::new(binary)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?)
}

/// A gateway process of its own (`name`) on the cluster's gateway configuration, with each
/// region's `replicas` listed as further node replicas of it; returns once it answers.
pub async fn gateway_over_replicas(
    cluster: &TestCluster,
    name: &str,
    replicas: &BTreeMap<RegionId, Vec<SocketAddr>>,
) -> anyhow::Result<ExtraGateway> {
    let dir = cluster.dir();
    let mut config: toml::Table = std::fs::read_to_string(dir.join("config/gateway.toml"))?.parse()?;
    let addr = free_addr()?;
    config.insert("listen".into(), toml::Value::String(addr.to_string()));
    let regions = config.get_mut("regions").and_then(toml::Value::as_array_mut).context("no regions")?;
    for entry in regions.iter_mut().filter_map(toml::Value::as_table_mut) {
        let listed = entry.get("id").and_then(toml::Value::as_str).and_then(|id| RegionId::parse(id).ok());
        if let Some(addrs) = listed.and_then(|id| replicas.get(&id)) {
            let list = addrs.iter().map(|a| toml::Value::String(a.to_string())).collect();
            entry.insert("replicas".into(), toml::Value::Array(list));
        }
    }
    let path = dir.join(format!("config/gateway-{name}.toml"));
    std::fs::write(&path, toml::to_string(&config)?)?;
    let log = dir.join(format!("logs/gateway-{name}.log"));
    let child = spawn(cluster.binary(), &["gateway"], &path, &log)?;
    let up = eventually(READY, || async {
        let mut client = cluster.gateway_at(addr).await.ok()?;
        let probe = crate::pb::gateway::v1::ResolveRequest {
            identifier: Some(crate::identifier("email", "nobody@example.org")),
        };
        // Serving: any answer from the gateway itself (NOT_FOUND for an unknown identifier).
        client.resolve(probe).await.err().filter(|s| s.code() == tonic::Code::NotFound).map(|_| ())
    })
    .await;
    up.with_context(|| format!("the gateway does not serve; see {}", log.display()))?;
    Ok(ExtraGateway { addr, _running: Running::Process { _child: child } })
}
