//! Test harness: real clusters of real processes on loopback, and the same clusters in-process.
//!
//! Two layers, one client API ([`Cluster`]):
//! - [`TestCluster`] runs every node and gateway as a process of its own, through the CLI's
//!   `LocalCluster` (the code behind `domicile cluster up`), so tests exercise exactly what
//!   operators run, and can kill (-9), signal, pause, stop and restart processes and read every
//!   byte they wrote.
//! - [`InProcessCluster`] (`inprocess.rs`) runs the same `serve` functions on the same files in
//!   the test process, for scenarios that need none of that; [`ScenarioCluster`] is what those
//!   scenarios start: in-process, or on processes with `DOMICILE_TEST_CLUSTER=processes`.
//!
//! Readiness is a server's ready signal (a process's ready line) followed by a real health RPC;
//! there are no sleeps and no fixed ports: every process's port is a free one chosen before the
//! cluster starts (so many clusters run side by side, and a restarted process comes back on its
//! address), and a start that loses a port to another process is retried on new ones.

mod audit;
mod churn;
mod clients;
pub mod files;
mod inprocess;
mod pause;
mod replicas;
mod scenario;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use domicile_cli::cluster::{ClusterOptions, LocalCluster};
use domicile_gateway::GatewayConfig;
use domicile_runtime::process::ReadyLine;
use domicile_runtime::tls::{TlsFiles, TlsMaterial, install_crypto_provider};
use domicile_types::RegionId;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub use audit::RegionAudit;
pub use churn::{Churn, consent_churn};
pub use clients::Cluster;
pub use domicile_proto::pb;
pub use inprocess::{InProcessCluster, InProcessServer};
pub use pause::Paused;
pub use replicas::{Replica, gateway_over_replicas};
pub use scenario::{HARNESS_ENV, STORE_ENV, ScenarioCluster, apply_store_env};

/// The policy packs shipped in the repository.
pub fn repo_packs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-packs")
}

#[allow(clippy::panic, reason = "test helper: a malformed region literal is a bug in the test")]
pub fn region(id: &str) -> RegionId {
    RegionId::parse(id).unwrap_or_else(|e| panic!("bad region {id}: {e}"))
}

/// What a test may change about a cluster.
#[derive(Debug, Default)]
pub struct TestOptions {
    /// Default: the repository's `policy-packs/`.
    pub packs_dir: Option<PathBuf>,
    pub packs_trust: Option<domicile_runtime::packs::TrustConfig>,
    /// Default: `DEFAULT_PACKS_RELOAD_MS`.
    pub packs_reload_ms: Option<u64>,
    /// Gateways to run, each following every node (default: one). Clients:
    /// [`Cluster::gateway_at_index`], [`Cluster::gateways`].
    pub gateways: Option<usize>,
    /// Where the regions keep their state (default: sled; `Postgres`: a PostgreSQL server the
    /// cluster starts, one database per region).
    pub store: domicile_cli::cluster::ClusterStore,
    /// How the nodes verify rights requests (default: the node's defaults).
    pub node_rights: Option<domicile_node::config::RightsConfig>,
}

/// A cluster of real processes (see the crate documentation).
pub struct TestCluster {
    pub cluster: LocalCluster,
    binary: PathBuf,
    // Dropped last: holds the cluster's files.
    _dir: tempfile::TempDir,
}

impl TestCluster {
    /// The `domicile` binary its processes run.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Starts one node per region and a gateway with the repository's packs, and waits until
    /// each answers a health check over mutual TLS.
    pub async fn start(binary: &str, regions: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(binary, regions, TestOptions::default()).await
    }

    /// As [`TestCluster::start`], on the engine [`STORE_ENV`] names (sled by default): for tests
    /// of engine-independent behaviour (fail-closed, kill -9, rolling restarts), which `.ci/run`
    /// runs on both engines.
    pub async fn start_on_env_store(binary: &str, regions: &[&str]) -> anyhow::Result<Self> {
        let mut options = TestOptions::default();
        apply_store_env(&mut options)?;
        Self::start_with(binary, regions, options).await
    }

    /// As [`TestCluster::start`], with a pack directory and signature policy of the test's own.
    pub async fn start_with(binary: &str, regions: &[&str], options: TestOptions) -> anyhow::Result<Self> {
        install_crypto_provider();
        let dir = tempfile::tempdir()?;
        let packs_dir = options.packs_dir.unwrap_or_else(repo_packs);
        let regions = regions.iter().map(|r| region(r)).collect();
        let defaults = ClusterOptions::new(dir.path(), packs_dir, regions, binary);
        let cluster = LocalCluster::start(ClusterOptions {
            gateways: options.gateways.unwrap_or(1),
            packs_trust: options.packs_trust,
            packs_reload_ms: options.packs_reload_ms.unwrap_or(defaults.packs_reload_ms),
            // As `cluster up`: every test cluster shares the test machine's cores.
            node_worker_threads: Some(1),
            store: options.store,
            node_rights: options.node_rights.unwrap_or_default(),
            ..defaults
        })
        .await?;
        // A test's database server leaves nothing behind (root's lives outside `dir`).
        let mut cluster = cluster;
        cluster.discard_database_on_drop();
        let this = Self { cluster, binary: PathBuf::from(binary), _dir: dir };
        this.wait_healthy().await?;
        Ok(this)
    }

    /// Starts one more gateway process on the cluster's configuration, with some regions' node
    /// endpoints replaced (e.g. by a recording proxy). It shares nothing with the cluster's own
    /// gateway but the nodes.
    pub async fn start_gateway(
        &self,
        label: &str,
        endpoints: &[(RegionId, SocketAddr)],
    ) -> anyhow::Result<ExtraGateway> {
        // The process binds port 0 and announces the port it got.
        let path = extra_gateway_config(self.dir(), label, "127.0.0.1:0".parse()?, endpoints)?;
        let log = self.dir().join("logs").join(format!("gateway-{label}.log"));
        let mut child = tokio::process::Command::new(&self.binary)
            .arg("gateway")
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(ready) = ReadyLine::parse(&line) {
                    return Ok::<_, std::io::Error>(Some(ready));
                }
            }
            Ok(None)
        })
        .await
        .context("gateway not ready in time")??
        .with_context(|| format!("gateway {label} exited before it was ready; see {}", log.display()))?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let gateway = ExtraGateway { addr: ready.addr, _running: Running::Process { _child: child } };
        check_serving(self.gateway_channel_at(gateway.addr).await?, "domicile.gateway.v1.Domicile").await?;
        Ok(gateway)
    }

    /// Starts the cluster's gateway again on its address (see `LocalCluster::restart_gateway`)
    /// and waits until it and every node answer a health check.
    pub async fn restart_gateway(&mut self) -> anyhow::Result<()> {
        self.restart_gateway_at(0).await
    }

    /// Starts gateway `index` again on its address and waits until every process answers a
    /// health check.
    pub async fn restart_gateway_at(&mut self, index: usize) -> anyhow::Result<()> {
        self.cluster.restart_gateway_at(index).await?;
        self.wait_healthy().await
    }

    /// Stops every process (SIGTERM, graceful) so their files can be inspected.
    pub async fn stop(&mut self) {
        self.cluster.stop().await;
    }
}

impl Cluster for TestCluster {
    fn dir(&self) -> &Path {
        self.cluster.dir()
    }

    fn client_tls(&self) -> &TlsFiles {
        self.cluster.client_tls()
    }

    fn gateway_addr(&self) -> SocketAddr {
        self.cluster.gateway_addr()
    }

    fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.cluster.gateway_addrs()
    }

    fn regions(&self) -> Vec<RegionId> {
        self.cluster.processes().filter_map(|p| p.region.clone()).collect()
    }

    fn database(&self) -> Option<&domicile_cli::cluster::ClusterDatabase> {
        self.cluster.database()
    }

    fn node_addr(&self, region: &RegionId) -> Option<SocketAddr> {
        self.cluster.node_addr(region)
    }
}

/// Writes `config/gateway-<label>.toml`: the cluster's gateway configuration listening on
/// `listen`, with some regions' node endpoints replaced.
fn extra_gateway_config(
    dir: &Path,
    label: &str,
    listen: SocketAddr,
    endpoints: &[(RegionId, SocketAddr)],
) -> anyhow::Result<PathBuf> {
    let mut config = GatewayConfig::load(&dir.join("config").join("gateway.toml"))?;
    config.listen = listen;
    for (id, addr) in endpoints {
        let slot = config.regions.iter_mut().find(|r| &r.id == id).context("no such region")?;
        slot.endpoint = addr.to_string();
    }
    let path = dir.join("config").join(format!("gateway-{label}.toml"));
    std::fs::write(&path, toml::to_string_pretty(&config)?)?;
    Ok(path)
}

// === request builders shared by the scenarios ===

pub fn identifier(kind: &str, value: &str) -> pb::common::v1::Identifier {
    pb::common::v1::Identifier { kind: kind.into(), value: value.into() }
}

/// Selects a subject through the gateway by one of its identifiers.
pub fn select(kind: &str, value: &str) -> Option<pb::gateway::v1::SubjectSelector> {
    use pb::gateway::v1::{SubjectSelector, subject_selector::Selector};
    Some(SubjectSelector { selector: Some(Selector::Identifier(identifier(kind, value))) })
}

pub fn select_email(value: &str) -> Option<pb::gateway::v1::SubjectSelector> {
    select("email", value)
}

/// Selects a subject through the gateway by its subject ref.
pub fn select_ref(subject_ref: &str) -> Option<pb::gateway::v1::SubjectSelector> {
    use pb::gateway::v1::{SubjectSelector, subject_selector::Selector};
    Some(SubjectSelector { selector: Some(Selector::SubjectRef(subject_ref.into())) })
}

/// Names a subject to a node by its subject ref.
pub fn node_ref(subject_ref: &str) -> Option<pb::common::v1::SubjectKey> {
    use pb::common::v1::{SubjectKey, subject_key::Key};
    Some(SubjectKey { key: Some(Key::SubjectRef(subject_ref.into())) })
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

/// A gateway started by [`TestCluster::start_gateway`] or [`ScenarioCluster::start_gateway`];
/// killed (-9, or its in-process equivalent) when dropped.
pub struct ExtraGateway {
    pub addr: SocketAddr,
    _running: Running,
}

/// What keeps an [`ExtraGateway`] running.
enum Running {
    Process { _child: tokio::process::Child },
    InProcess { _server: InProcessServer },
}

/// Polls `probe` until it returns `Some` or `deadline` passes: for effects that propagate
/// asynchronously (change events), never for readiness.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Everything one gateway↔node connection carried, decrypted.
#[derive(Debug, Default, Clone)]
pub struct Recording {
    /// Bytes the gateway sent to the node.
    pub to_node: Vec<u8>,
    /// Bytes the node sent to the gateway.
    pub from_node: Vec<u8>,
}

impl Recording {
    pub fn contains(&self, needle: &[u8]) -> bool {
        let has = |hay: &[u8]| !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle);
        has(&self.to_node) || has(&self.from_node)
    }
}

/// A man-in-the-middle between a gateway and one region's node that records every byte of
/// their conversation after TLS decryption: HTTP/2 frames with the gRPC messages inside, exactly
/// what the TLS records protect on the wire. It terminates the gateway's mutual TLS with the
/// node's own certificate (so the gateway's region-name check passes) and opens its own mutual
/// TLS to the node with the gateway's certificate. Header blocks are HPACK-compressed, so a
/// value in a header might not show up verbatim; gRPC message bodies (the only place the
/// gateway puts request data) are plain protobuf, where strings appear byte for byte.
pub struct RecordingProxy {
    pub addr: SocketAddr,
    recording: Arc<Mutex<Recording>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn certs(path: &Path) -> anyhow::Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject;
    Ok(rustls_pki_types::CertificateDer::pem_file_iter(path)?.collect::<Result<Vec<_>, _>>()?)
}

fn key(path: &Path) -> anyhow::Result<rustls_pki_types::PrivateKeyDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    Ok(rustls_pki_types::PrivateKeyDer::from_pem_file(path)?)
}

impl RecordingProxy {
    pub(crate) async fn start(
        region: &RegionId,
        upstream: SocketAddr,
        node: &TlsFiles,
        gateway: &TlsFiles,
    ) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs(&node.ca)? {
            roots.add(cert)?;
        }
        let roots = Arc::new(roots);
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()?;
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&node.cert)?, key(&node.key)?)?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs(&gateway.cert)?, key(&gateway.key)?)?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let server_name = rustls_pki_types::ServerName::try_from(region.node_server_name())?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let recording = Arc::new(Mutex::new(Recording::default()));
        let shared = Arc::clone(&recording);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let (acceptor, connector, name, rec) =
                    (acceptor.clone(), connector.clone(), server_name.clone(), Arc::clone(&shared));
                connections.spawn(async move {
                    let Ok(inbound) = acceptor.accept(inbound).await else { return };
                    let Ok(tcp) = tokio::net::TcpStream::connect(upstream).await else { return };
                    let Ok(outbound) = connector.connect(name, tcp).await else { return };
                    let (gr, gw) = tokio::io::split(inbound);
                    let (nr, nw) = tokio::io::split(outbound);
                    tokio::join!(pump(gr, nw, Arc::clone(&rec), true), pump(nr, gw, rec, false));
                });
            }
        });
        Ok(Self { addr, recording, task })
    }

    pub fn recording(&self) -> Recording {
        self.recording.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

async fn pump<R, W>(mut from: R, mut to: W, recording: Arc<Mutex<Recording>>, to_node: bool)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Ok(mut rec) = recording.lock() {
            let side = if to_node { &mut rec.to_node } else { &mut rec.from_node };
            side.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
