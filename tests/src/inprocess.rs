//! In-process clusters: every region's node and every gateway run in the test process, each on
//! a Tokio runtime of its own, by the very `serve` functions the `domicile node` and `domicile
//! gateway` processes run, on the very files `LocalCluster` writes for them (the cluster CA and
//! certificates, the link key, `config/*.toml`, sled data under `data/<region>/`, the
//! repository's packs). Callers reach them as they reach processes: mutual TLS over loopback
//! sockets. What differs is what a process boundary gives: no binary is spawned and no port can
//! be lost to another process (each listener is bound before any server starts and handed to
//! its server), and a server cannot be killed with a signal, paused or restarted. Tests of those
//! (kill -9, SIGSTOP, SIGTERM, supervision, restarts) and proofs about every byte a process
//! wrote (its stderr included) stay on [`crate::TestCluster`].
//!
//! What a process has to itself is kept per server here:
//! - **Tasks.** A server spawns background work that lives as long as its process (pack reloads,
//!   claim releases, directory followers); on its own runtime, all of it ends when the runtime
//!   is shut down, as at process exit. The runtime is built as the CLI builds a server's
//!   (`domicile_cli::server_runtime`; one worker thread per node, as `TestCluster` runs nodes),
//!   and `serve` runs in `block_on` on a thread of its own, as on a process's main thread.
//! - **Logs.** A process logs to stderr (`logs/<name>.log` under a `LocalCluster`). Here each
//!   runtime's threads log to `logs/<name>.log` through a subscriber of their own (set as the
//!   thread's default; no global subscriber is installed), filtered by `DOMICILE_LOG` as in a
//!   process. Records of the `log` crate and direct writes to stderr are not captured.
//! - **Process-wide state** is shared and safe to share: the rustls crypto provider is installed
//!   once (`install_crypto_provider` is idempotent); OTLP export and metrics are process globals
//!   and stay off (the configurations name no endpoint; `cli/tests/otel_cli.rs` tests them on
//!   processes); a SIGHUP to the test process would reload every server's packs; environment
//!   overrides (`DOMICILE_NODE_*`, `DOMICILE_GATEWAY_*`) apply to every server alike, as to every
//!   child of a `LocalCluster`, since configurations are loaded from their files the same way.
//! - **Stopping.** [`InProcessCluster::stop`] is a process's SIGTERM: each server's shutdown
//!   future resolves and `serve` returns after its own drain (a node flushes its store and syncs
//!   its audit log), gateways first; dropping the cluster stands for `kill -9`: the `serve`
//!   futures and every task are dropped where they stand, with no drain and no final flush (but
//!   destructors run, so it is no proof of what survives a crash: those tests stay on
//!   processes). Either way the runtimes are shut down and their threads joined before the
//!   directory is removed, so nothing outlives the cluster: no task, no listener, no open
//!   database (sled's own I/O thread pool, shared by the process, idles on).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use domicile_cli::cluster::{
    ClusterAddresses, ClusterDatabase, ClusterFiles, ClusterOptions, ClusterStore, ProcessFiles,
};
use domicile_gateway::GatewayConfig;
use domicile_node::NodeConfig;
use domicile_runtime::tls::{TlsFiles, install_crypto_provider};
use domicile_types::RegionId;
use tokio::sync::{oneshot, watch};

use crate::{Cluster, TestOptions, check_serving, region, repo_packs};

/// How long a server may take from start to serving.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server gets to stop after its shutdown future resolves before it is dropped where
/// it stands (as `LocalCluster` kills a process still running `STOP_GRACE` after SIGTERM).
const STOP_GRACE: Duration = domicile_cli::cluster::STOP_GRACE;
/// How long a stopped server's runtime waits for blocking work still running (a store operation
/// on a blocking thread) before it is left to finish alone.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(5);

/// A cluster of nodes and gateways running in this process (see the module documentation).
pub struct InProcessCluster {
    files: ClusterFiles,
    addresses: ClusterAddresses,
    /// Gateways before nodes: the order they are stopped and dropped in.
    gateways: Vec<InProcessServer>,
    nodes: BTreeMap<RegionId, InProcessServer>,
    /// The regions' PostgreSQL server (`ClusterStore::Postgres`), stopped when dropped, after
    /// every node.
    database: Option<ClusterDatabase>,
    // Dropped last: holds the cluster's files.
    _dir: tempfile::TempDir,
}

impl InProcessCluster {
    /// Starts one node per region and a gateway with the repository's packs, and waits until
    /// each answers a health check over mutual TLS.
    pub async fn start(regions: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(regions, TestOptions::default()).await
    }

    /// As [`InProcessCluster::start`], with the options a [`crate::TestCluster`] takes.
    pub async fn start_with(regions: &[&str], options: TestOptions) -> anyhow::Result<Self> {
        install_crypto_provider();
        let dir = tempfile::tempdir()?;
        let regions: Vec<RegionId> = regions.iter().map(|r| region(r)).collect();
        // Every listener is bound now and handed to its server: the addresses every
        // configuration names are this process's already, so no other process can take one.
        let mut node_listeners = BTreeMap::new();
        for id in &regions {
            node_listeners.insert(id.clone(), loopback_listener()?);
        }
        let gateway_listeners = (0..options.gateways.unwrap_or(1).max(1))
            .map(|_| loopback_listener())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let addresses = ClusterAddresses {
            nodes: node_listeners
                .iter()
                .map(|(id, l)| Ok((id.clone(), l.local_addr()?)))
                .collect::<anyhow::Result<_>>()?,
            gateways: gateway_listeners.iter().map(|l| l.local_addr()).collect::<Result<_, _>>()?,
        };
        let defaults = ClusterOptions::new(
            dir.path(),
            options.packs_dir.unwrap_or_else(repo_packs),
            regions,
            // No binary runs: the servers are this process.
            PathBuf::new(),
        );
        let cluster_options = ClusterOptions {
            gateways: addresses.gateways.len(),
            packs_trust: options.packs_trust,
            packs_reload_ms: options.packs_reload_ms.unwrap_or(defaults.packs_reload_ms),
            store: options.store,
            ..defaults
        };
        let database = match options.store {
            ClusterStore::Sled => None,
            ClusterStore::Postgres => {
                let (dir, regions) = (dir.path().to_owned(), cluster_options.regions.clone());
                let mut database =
                    tokio::task::spawn_blocking(move || ClusterDatabase::start(&dir, &regions)).await??;
                // A test's database server leaves nothing behind (root's lives outside `dir`).
                database.discard_on_drop();
                Some(database)
            }
        };
        let files = ClusterFiles::write(&cluster_options, &addresses, database.as_ref())?;

        // Nodes first (each other's arbiters, every gateway's upstreams), all starting at once.
        let mut starting = Vec::new();
        for node in &files.nodes {
            let id = node.region.clone().context("a node without a region")?;
            let listener = node_listeners.remove(&id).context("no listener for a node")?;
            let config = NodeConfig::load(&node.config)?;
            // As `TestCluster` runs nodes: every cluster shares the machine's cores.
            starting.push((id, InProcessServer::spawn(node, Server::Node(config), Some(1), listener)));
        }
        let mut cluster =
            Self { files: files.clone(), addresses, gateways: Vec::new(), nodes: BTreeMap::new(), database, _dir: dir };
        let mut failure = None;
        for (id, spawned) in starting {
            match spawned {
                Ok(starting) => match starting.ready().await {
                    Ok(server) => {
                        cluster.nodes.insert(id, server);
                    }
                    Err(e) => failure = failure.or(Some(e)),
                },
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            cluster.stop().await;
            return Err(e);
        }
        for (gateway, listener) in files.gateways.iter().zip(gateway_listeners) {
            let config = GatewayConfig::load(&gateway.config)?;
            let started = match InProcessServer::spawn(gateway, Server::Gateway(config), None, listener) {
                Ok(starting) => starting.ready().await,
                Err(e) => Err(e),
            };
            match started {
                Ok(server) => cluster.gateways.push(server),
                Err(e) => {
                    cluster.stop().await;
                    return Err(e);
                }
            }
        }
        cluster.wait_healthy().await?;
        Ok(cluster)
    }

    /// Starts one more gateway in this process on the cluster's gateway configuration, with some
    /// regions' node endpoints replaced (e.g. by a recording proxy). It shares nothing with the
    /// cluster's own gateways but the nodes; it stops when the returned handle is dropped.
    pub async fn start_gateway(
        &self,
        label: &str,
        endpoints: &[(RegionId, SocketAddr)],
    ) -> anyhow::Result<InProcessServer> {
        let listener = loopback_listener()?;
        let addr = listener.local_addr()?;
        let config = crate::extra_gateway_config(self.dir(), label, addr, endpoints)?;
        let files = ProcessFiles {
            role: "gateway",
            region: None,
            name: format!("gateway-{label}"),
            addr,
            config: config.clone(),
            log: self.dir().join("logs").join(format!("gateway-{label}.log")),
        };
        let server = InProcessServer::spawn(&files, Server::Gateway(GatewayConfig::load(&config)?), None, listener)?
            .ready()
            .await?;
        check_serving(self.gateway_channel_at(addr).await?, "domicile.gateway.v1.Domicile").await?;
        Ok(server)
    }

    /// Stops every server as SIGTERM stops a process, gateways first, and waits until each has
    /// returned and its runtime is shut down, so the cluster's files can be inspected.
    pub async fn stop(&mut self) {
        for gateway in &mut self.gateways {
            gateway.stop().await;
        }
        for node in self.nodes.values_mut() {
            node.stop().await;
        }
    }
}

impl Drop for InProcessCluster {
    fn drop(&mut self) {
        // Every server is told at once, then each is waited for as its field drops.
        for server in self.gateways.iter().chain(self.nodes.values()) {
            server.abort();
        }
    }
}

impl Cluster for InProcessCluster {
    fn dir(&self) -> &Path {
        &self.files.dir
    }

    fn client_tls(&self) -> &TlsFiles {
        &self.files.client_tls
    }

    fn gateway_addr(&self) -> SocketAddr {
        self.addresses.gateways.first().copied().unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.addresses.gateways.clone()
    }

    fn regions(&self) -> Vec<RegionId> {
        self.nodes.keys().cloned().collect()
    }

    fn database(&self) -> Option<&ClusterDatabase> {
        self.database.as_ref()
    }

    fn node_addr(&self, region: &RegionId) -> Option<SocketAddr> {
        self.addresses.node(region)
    }
}

/// A listener on a free loopback port, ready to hand to a server's runtime.
fn loopback_listener() -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Which `serve` a server runs, with its configuration.
enum Server {
    Node(NodeConfig),
    Gateway(GatewayConfig),
}

/// What the test tells a running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Run,
    /// Its shutdown future resolves: SIGTERM.
    Stop,
    /// Its `serve` future and every task are dropped where they stand: SIGKILL.
    Abort,
}

/// One node or gateway running in this process on a runtime of its own; dropping it is `kill
/// -9` (see [`InProcessServer::stop`] for SIGTERM).
pub struct InProcessServer {
    /// `node-<region>`, `gateway`, `gateway-2`, `gateway-<label>`, …
    pub name: String,
    pub addr: SocketAddr,
    log: PathBuf,
    control: watch::Sender<Control>,
    /// What `serve` returned, sent once its runtime is shut down.
    finished: Option<oneshot::Receiver<anyhow::Result<()>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A server spawned and not yet known to serve.
struct Starting {
    server: InProcessServer,
    is_ready: oneshot::Receiver<SocketAddr>,
}

impl Starting {
    /// Waits until the server calls its `ready` (it is about to accept) and checks that it
    /// serves where its configuration says.
    async fn ready(self) -> anyhow::Result<InProcessServer> {
        let Self { mut server, is_ready } = self;
        match tokio::time::timeout(READY_TIMEOUT, is_ready).await {
            Ok(Ok(addr)) => {
                anyhow::ensure!(addr == server.addr, "{} serves {addr} instead of {}", server.name, server.addr);
                Ok(server)
            }
            Ok(Err(_)) => {
                let why = match server.wait().await {
                    Ok(()) => "it returned".to_owned(),
                    Err(e) => format!("{e:#}"),
                };
                anyhow::bail!(
                    "{} stopped before it was ready: {why}; see {}:\n{}",
                    server.name,
                    server.log.display(),
                    tail(&server.log)
                )
            }
            Err(_) => {
                anyhow::bail!("{} was not ready within {READY_TIMEOUT:?}; see {}", server.name, server.log.display())
            }
        }
    }
}

impl InProcessServer {
    /// Starts `server` on a runtime of its own, `serve` in `block_on` on a thread of its own. The
    /// runtime is built, run and shut down on that thread only: it never exists where dropping it
    /// would block an async context.
    fn spawn(
        files: &ProcessFiles,
        server: Server,
        worker_threads: Option<usize>,
        listener: std::net::TcpListener,
    ) -> anyhow::Result<Starting> {
        let log = files.log.clone();
        let dispatch = log_dispatch(&log)?;
        let name = files.name.clone();
        let (ready, is_ready) = oneshot::channel();
        let (control, controlled) = watch::channel(Control::Run);
        let (finish, finished) = oneshot::channel();
        let thread = std::thread::Builder::new().name(name.clone()).spawn(move || {
            let _logging = tracing::dispatcher::set_default(&dispatch);
            let returned = match server_runtime(&name, worker_threads, &dispatch) {
                Ok(runtime) => {
                    let returned = runtime.block_on(run(server, listener, ready, controlled));
                    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
                    returned
                }
                Err(e) => Err(e),
            };
            let _ = finish.send(returned);
        })?;
        let server = Self {
            name: files.name.clone(),
            addr: files.addr,
            log,
            control,
            finished: Some(finished),
            thread: Some(thread),
        };
        Ok(Starting { server, is_ready })
    }

    /// As SIGTERM: resolves the server's shutdown future and waits until `serve` has returned
    /// (a node has flushed its store and synced its audit log) and its runtime is shut down. A
    /// server still running [`STOP_GRACE`] later is aborted (as SIGKILL). Errors `serve`
    /// returned are reported on stderr, as a process would log them.
    pub async fn stop(&mut self) {
        if self.finished.is_none() {
            return;
        }
        self.control.send_replace(Control::Stop);
        let returned = match tokio::time::timeout(STOP_GRACE, self.wait()).await {
            Ok(returned) => returned,
            Err(_) => {
                eprintln!("{} still running {STOP_GRACE:?} after it was asked to stop: aborting it", self.name);
                self.abort();
                self.wait().await
            }
        };
        if let Err(e) = returned {
            eprintln!("{}: {e:#}", self.name);
        }
    }

    /// As SIGKILL, without waiting (dropping the server waits).
    fn abort(&self) {
        self.control.send_replace(Control::Abort);
    }

    /// What `serve` returned, once its runtime is shut down and its thread has ended.
    async fn wait(&mut self) -> anyhow::Result<()> {
        let returned = match self.finished.take() {
            Some(finished) => finished.await.unwrap_or_else(|_| Err(anyhow::anyhow!("{} panicked", self.name))),
            None => Ok(()),
        };
        if let Some(thread) = self.thread.take() {
            // It has sent its result: it is ending, if not gone already.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        returned
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        self.abort();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A server's runtime, built as the CLI builds a node's or gateway's (`server_runtime`), its
/// threads logging to the server's log.
fn server_runtime(
    name: &str,
    worker_threads: Option<usize>,
    dispatch: &tracing::Dispatch,
) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name(name);
    domicile_cli::server_runtime(&mut builder);
    if let Some(threads) = worker_threads {
        builder.worker_threads(threads);
    }
    let on_start = dispatch.clone();
    builder.on_thread_start(move || log_to(&on_start)).on_thread_stop(stop_logging);
    builder.build().context("cannot build a server runtime")
}

/// Runs `server` on `listener` until it returns on its own (after a [`Control::Stop`]) or is
/// dropped ([`Control::Abort`], or the test's handle gone).
async fn run(
    server: Server,
    listener: std::net::TcpListener,
    ready: oneshot::Sender<SocketAddr>,
    mut control: watch::Receiver<Control>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let ready = move |addr| {
        let _ = ready.send(addr);
    };
    let mut stop = control.clone();
    let shutdown = async move {
        let _ = stop.wait_for(|c| *c != Control::Run).await;
    };
    let serve: Pin<Box<dyn Future<Output = anyhow::Result<()>>>> = match server {
        Server::Node(config) => Box::pin(domicile_node::serve(config, listener, ready, shutdown)),
        Server::Gateway(config) => Box::pin(domicile_gateway::serve(config, listener, ready, shutdown)),
    };
    tokio::select! {
        returned = serve => returned,
        _ = control.wait_for(|c| *c == Control::Abort) => Ok(()),
    }
}

thread_local! {
    /// The log subscriber of the server whose runtime this thread belongs to.
    static LOGGING: RefCell<Option<tracing::dispatcher::DefaultGuard>> = const { RefCell::new(None) };
}

/// A subscriber writing to `path` as a process writes its stderr log (text, with targets, the
/// `DOMICILE_LOG` filter or `info`).
fn log_dispatch(path: &Path) -> anyhow::Result<tracing::Dispatch> {
    use tracing_subscriber::layer::SubscriberExt as _;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_env(domicile_runtime::telemetry::LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let text = tracing_subscriber::fmt::layer().with_writer(Arc::new(file)).with_target(true).with_ansi(false);
    Ok(tracing::Dispatch::new(tracing_subscriber::registry().with(filter).with(text)))
}

fn log_to(dispatch: &tracing::Dispatch) {
    LOGGING.with(|slot| *slot.borrow_mut() = Some(tracing::dispatcher::set_default(dispatch)));
}

fn stop_logging() {
    LOGGING.with(|slot| slot.borrow_mut().take());
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
