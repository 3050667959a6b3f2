//! Local multi-region clusters made of real processes: one node per region and a gateway, on
//! loopback, with a generated CA and sled data under one directory.
//!
//! The same code runs `domicile cluster up` and the end-to-end test harness, so what the tests
//! prove is what a newcomer runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use domicile_gateway::GatewayConfig;
use domicile_gateway::config::RegionEndpoint;
use domicile_node::NodeConfig;
use domicile_runtime::identity::{CallerIdentity, Scope};
use domicile_runtime::packs::TrustConfig;
use domicile_runtime::pki::{ClusterPki, GATEWAY_SERVER_NAME};
use domicile_runtime::process::{ReadyLine, load_or_create_secret, shutdown_signal};
use domicile_runtime::tls::{TlsFiles, TlsMaterial, install_crypto_provider};
use domicile_types::RegionId;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

use crate::client::ClusterFile;
use crate::topology::Topology;

/// How long a process may take from spawn to its ready line before start-up is declared failed.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long processes get to stop after SIGTERM before they are killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Local clusters pick up pack edits quickly.
pub const DEFAULT_PACKS_RELOAD_MS: u64 = 2_000;

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Start every region's node and a gateway; Ctrl-C stops them. Reuses data from earlier runs.
    Up {
        /// Directory for certificates, keys, configs, logs and sled data.
        #[arg(long, default_value = ".domicile")]
        dir: PathBuf,
        /// Policy pack directory.
        #[arg(long, default_value = "policy-packs")]
        packs: PathBuf,
        /// Topology file (default: the built-in 3-region topology, deploy/local/topology.toml).
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Address for the gateway.
        #[arg(long, default_value = "127.0.0.1:50051")]
        gateway_listen: SocketAddr,
        /// Runtime worker threads of each node (0: one per core). Every process of a local
        /// cluster shares this machine; one thread per node leaves the cores to the gateway and
        /// the callers instead of oversubscribing them (BENCHMARKS.md).
        #[arg(long, default_value_t = 1)]
        node_worker_threads: u16,
    },
    /// Report the regions, nodes (reachability, subjects, links, packs) and gateway of a running
    /// `cluster up`.
    Status {
        #[arg(long, default_value = ".domicile")]
        dir: PathBuf,
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a running `cluster up` (SIGTERM to its supervisor) and wait until it has exited.
    Down {
        #[arg(long, default_value = ".domicile")]
        dir: PathBuf,
    },
    /// Issue a certificate from the cluster CA in `--pki` (created if absent) for a deployment.
    /// An existing node or gateway certificate is kept; delete its files to re-issue (rotation).
    Issue {
        /// Directory holding `ca.pem` and `ca.key`; certificates are written beside them.
        #[arg(long)]
        pki: PathBuf,
        #[command(subcommand)]
        what: IssueCommand,
    },
    /// Find identifiers held in more than one region (and links without a claim at their
    /// arbiter) and, with --apply, resolve them: the strictest consent state wins. Exit 0 when
    /// nothing is left to repair.
    RepairOwnership(crate::repair::RepairArgs),
    /// Check one process's grpc.health.v1 over mutual TLS; exit 0 when it serves. For exec probes
    /// (Kubernetes' native gRPC probe cannot present a client certificate).
    Probe {
        /// `host:port` of the node or gateway.
        #[arg(long)]
        addr: String,
        /// Name the server's certificate must carry, e.g. `eu-central.node.domicile.internal`
        /// or `gateway.domicile.internal`.
        #[arg(long)]
        server_name: String,
        #[arg(long)]
        ca: PathBuf,
        /// Client certificate: for a node, a caller of the node's region.
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value_t = 3_000)]
        timeout_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
enum IssueCommand {
    /// A node certificate naming `<region>.node.domicile.internal` (`node-<region>.{pem,key}`).
    Node { region: RegionId },
    /// The gateway certificate, naming `gateway.domicile.internal` (`gateway.{pem,key}`).
    Gateway,
    /// A caller certificate (`client-<name>.{pem,key}`): operators, services, health probes.
    Caller {
        name: String,
        #[arg(long)]
        region: RegionId,
        /// Comma-separated: decide, capture, context, rights, admin (none: health only).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
    },
    /// A signed caller token (printed on stdout) for a caller that cannot hold a certificate:
    /// sent as `authorization: Bearer <token>`. Uses (or creates) `token-signing.key`; gateways
    /// verify with `token-signing.pub` (`token_public_key_file`).
    Token {
        name: String,
        #[arg(long)]
        region: RegionId,
        /// Comma-separated: decide, capture, context, rights, admin.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

fn parse_scopes(scopes: &[String]) -> anyhow::Result<Vec<Scope>> {
    scopes
        .iter()
        .map(|s| Scope::parse(s).with_context(|| format!("unknown scope (known: {:?})", Scope::ALL.map(Scope::as_str))))
        .collect()
}

/// The cluster's token public key file in `pki_dir`, creating the key pair if absent.
fn token_public_key(pki_dir: &Path) -> anyhow::Result<PathBuf> {
    domicile_runtime::token::TokenIssuer::open_or_create(pki_dir)?;
    Ok(pki_dir.join(domicile_runtime::token::PUBLIC_KEY_FILE))
}

fn issue(pki_dir: &Path, what: IssueCommand) -> anyhow::Result<()> {
    let pki = ClusterPki::open_or_create(pki_dir)?;
    let files = match what {
        IssueCommand::Node { region } => pki.node(&region)?,
        IssueCommand::Gateway => pki.gateway()?,
        IssueCommand::Caller { name, region, scopes } => {
            pki.caller(&CallerIdentity::new(&name, region, &parse_scopes(&scopes)?)?)?
        }
        IssueCommand::Token { name, region, scopes, ttl_secs } => {
            let caller = CallerIdentity::new(&name, region, &parse_scopes(&scopes)?)?;
            let issuer = domicile_runtime::token::TokenIssuer::open_or_create(pki_dir)?;
            let ttl = i64::try_from(ttl_secs).context("--ttl-secs is too large")?;
            let expires_at =
                domicile_runtime::process::now_unix().checked_add(ttl).context("--ttl-secs is too large")?;
            println!("{}", issuer.issue(&caller, expires_at));
            return Ok(());
        }
    };
    println!("ca   {}\ncert {}\nkey  {}", files.ca.display(), files.cert.display(), files.key.display());
    Ok(())
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    match args.command {
        ClusterCommand::Up { dir, packs, topology, gateway_listen, node_worker_threads } => {
            let topology = Topology::load(topology.as_deref())?;
            let options = ClusterOptions {
                dir,
                packs_dir: packs,
                regions: topology.region_ids(),
                gateway_listen,
                binary: std::env::current_exe().context("cannot find the domicile binary")?,
                packs_trust: None,
                packs_reload_ms: DEFAULT_PACKS_RELOAD_MS,
                node_worker_threads: (node_worker_threads > 0).then_some(node_worker_threads),
            };
            up(options).await
        }
        ClusterCommand::Status { dir, json } => {
            let status = status(&dir).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(())
        }
        ClusterCommand::Down { dir } => down(&dir).await,
        ClusterCommand::Issue { pki, what } => issue(&pki, what),
        ClusterCommand::RepairOwnership(args) => crate::repair::run(args).await,
        ClusterCommand::Probe { addr, server_name, ca, cert, key, timeout_ms } => {
            let tls = TlsFiles { ca, cert, key };
            health(&addr, &server_name, &tls, Duration::from_millis(timeout_ms)).await
        }
    }
}

async fn up(options: ClusterOptions) -> anyhow::Result<()> {
    println!("Starting a local Domicile cluster in {}", absolute(&options.dir).display());
    let supervisor_path = absolute(&options.dir).join(SUPERVISOR_FILE);
    if let Some(running) = read_supervisor(&supervisor_path)?
        && pid_alive(running.pid)
    {
        bail!(
            "a cluster is already running from {} (pid {}); stop it with `domicile cluster down`",
            supervisor_path.display(),
            running.pid
        );
    }
    let mut cluster = LocalCluster::start(options).await?;
    write_supervisor(&supervisor_path, &cluster)?;
    println!();
    println!("  {:<16} {:<22} LOG", "ROLE", "ADDRESS");
    for process in cluster.processes() {
        println!("  {:<16} {:<22} {}", process.label(), process.addr, process.log.display());
    }
    println!();
    println!(
        "Gateway ready on {} (mutual TLS; client certificate in {}).",
        cluster.gateway_addr(),
        cluster.dir().join("pki").display()
    );
    println!("Try:  domicile register --jurisdiction DE --email anna@example.de --phone +4915112345678");
    println!("Press Ctrl-C (or run `domicile cluster down`) to stop.");
    tokio::select! {
        _ = shutdown_signal() => {
            println!("\nStopping...");
        }
        exited = cluster.wait_for_exit() => {
            eprintln!("error: {exited}: stopping the cluster");
        }
    }
    cluster.stop().await;
    let _ = std::fs::remove_file(&supervisor_path);
    println!("Stopped. Data kept in {}; run the same command to start again.", cluster.dir().display());
    Ok(())
}

/// Written by `cluster up` while it runs, so `status` and `down` find the processes.
const SUPERVISOR_FILE: &str = "supervisor.json";
/// How long `down` waits for the supervisor to stop its children and exit.
const DOWN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SupervisorFile {
    /// The `cluster up` process; SIGTERM makes it stop the gateway, then the nodes.
    pid: u32,
    gateway: SupervisedProcess,
    nodes: Vec<SupervisedProcess>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SupervisedProcess {
    region: Option<RegionId>,
    addr: SocketAddr,
    pid: Option<u32>,
    log: PathBuf,
}

impl SupervisedProcess {
    fn of(process: &Process) -> Self {
        Self { region: process.region.clone(), addr: process.addr, pid: process.pid(), log: process.log.clone() }
    }
}

fn write_supervisor(path: &Path, cluster: &LocalCluster) -> anyhow::Result<()> {
    let gateway = cluster.gateway.as_ref().context("the gateway did not start")?;
    let file = SupervisorFile {
        pid: std::process::id(),
        gateway: SupervisedProcess::of(gateway),
        nodes: cluster.nodes.values().map(SupervisedProcess::of).collect(),
    };
    std::fs::write(path, serde_json::to_vec_pretty(&file)?).with_context(|| format!("cannot write {}", path.display()))
}

fn read_supervisor(path: &Path) -> anyhow::Result<Option<SupervisorFile>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    // Signal 0 checks existence only; EPERM still means the process exists.
    if matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None), Err(nix::errno::Errno::ESRCH)) {
        return false;
    }
    // A zombie has exited but still answers signal 0 until its parent reaps it (Linux only).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

/// Stops the `cluster up` running from `dir` and waits until it has exited.
pub async fn down(dir: &Path) -> anyhow::Result<()> {
    let path = absolute(dir).join(SUPERVISOR_FILE);
    let Some(file) = read_supervisor(&path)? else {
        bail!("no cluster is running from {} ({} is absent)", absolute(dir).display(), SUPERVISOR_FILE);
    };
    if !pid_alive(file.pid) {
        let _ = std::fs::remove_file(&path);
        println!("The cluster was not running (stale {SUPERVISOR_FILE} removed).");
        return Ok(());
    }
    let raw = i32::try_from(file.pid).context("bad pid")?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGTERM)
        .with_context(|| format!("cannot signal the cluster supervisor (pid {})", file.pid))?;
    let deadline = tokio::time::Instant::now() + DOWN_TIMEOUT;
    while pid_alive(file.pid) {
        // `cluster up` may be a child of this shell's parent, not ours: poll rather than wait.
        if tokio::time::Instant::now() > deadline {
            bail!("the cluster supervisor (pid {}) did not exit within {DOWN_TIMEOUT:?}", file.pid);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_file(&path);
    println!("Stopped the cluster in {}.", absolute(dir).display());
    Ok(())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterStatus {
    pub dir: PathBuf,
    /// Whether the `cluster up` supervisor is alive.
    pub running: bool,
    pub regions: Vec<RegionId>,
    pub nodes: Vec<NodeStatus>,
    pub gateway: GatewayStatus,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStatus {
    pub region: RegionId,
    pub addr: SocketAddr,
    pub reachable: bool,
    pub subjects: Option<u64>,
    pub links: Option<u64>,
    /// `id@version` of each pack the node serves.
    pub packs: Vec<String>,
    pub packs_content_hash: Option<String>,
    /// Why the last pack reload was refused, if it was.
    pub packs_reload_error: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GatewayStatus {
    pub addr: SocketAddr,
    pub reachable: bool,
    /// Links the gateway's directory should hold once in sync: the sum over reachable nodes (the
    /// gateway has no RPC reporting its own directory size).
    pub directory_links_expected: u64,
    pub error: Option<String>,
}

/// Asks every process of the cluster running from `dir` how it is.
pub async fn status(dir: &Path) -> anyhow::Result<ClusterStatus> {
    let dir = absolute(dir);
    let path = dir.join(SUPERVISOR_FILE);
    let file = read_supervisor(&path)?
        .with_context(|| format!("no cluster is running from {} ({SUPERVISOR_FILE} is absent)", dir.display()))?;
    install_crypto_provider();
    let pki = ClusterPki::open_or_create(&dir.join("pki"))?;
    let mut nodes = Vec::new();
    for node in &file.nodes {
        let region = node.region.clone().context("a node without a region in the supervisor file")?;
        nodes.push(node_status(&pki, region, node.addr).await);
    }
    let cluster: ClusterFile =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cluster.json")).context("cannot read cluster.json")?)
            .context("cannot parse cluster.json")?;
    let gateway_health =
        health(&file.gateway.addr.to_string(), GATEWAY_SERVER_NAME, &cluster.tls, Duration::from_secs(3)).await;
    Ok(ClusterStatus {
        dir: dir.clone(),
        running: pid_alive(file.pid),
        regions: nodes.iter().map(|n| n.region.clone()).collect(),
        gateway: GatewayStatus {
            addr: file.gateway.addr,
            reachable: gateway_health.is_ok(),
            directory_links_expected: nodes.iter().filter_map(|n| n.links).sum(),
            error: gateway_health.err().map(|e| format!("{e:#}")),
        },
        nodes,
    })
}

async fn node_status(pki: &ClusterPki, region: RegionId, addr: SocketAddr) -> NodeStatus {
    let mut status = NodeStatus {
        region: region.clone(),
        addr,
        reachable: false,
        subjects: None,
        links: None,
        packs: Vec::new(),
        packs_content_hash: None,
        packs_reload_error: None,
        error: None,
    };
    match node_info(pki, &region, addr).await {
        Ok(info) => {
            status.reachable = true;
            status.subjects = Some(info.subjects);
            status.links = Some(info.links);
            status.packs = info.packs.iter().map(|p| format!("{}@{}", p.id, p.version)).collect();
            status.packs_content_hash = Some(info.packs_content_hash);
            status.packs_reload_error = Some(info.packs_reload_error).filter(|e| !e.is_empty());
        }
        Err(e) => status.error = Some(format!("{e:#}")),
    }
    status
}

/// The node's Info, called as an operator of the node's own region (nodes admit only gateways
/// and in-region callers; they check no scopes).
async fn node_info(
    pki: &ClusterPki,
    region: &RegionId,
    addr: SocketAddr,
) -> anyhow::Result<domicile_proto::pb::node::v1::InfoResponse> {
    use domicile_proto::pb::node::v1::InfoRequest;
    use domicile_proto::pb::node::v1::regional_node_client::RegionalNodeClient;
    let caller = CallerIdentity::new(&format!("operator-{region}"), region.clone(), &[Scope::Admin])?;
    let tls = pki.caller(&caller)?;
    let channel = tls_channel(&addr.to_string(), &region.node_server_name(), &tls, Duration::from_secs(3)).await?;
    let info = RegionalNodeClient::new(channel).info(InfoRequest {}).await?;
    Ok(info.into_inner())
}

async fn tls_channel(addr: &str, server_name: &str, tls: &TlsFiles, timeout: Duration) -> anyhow::Result<Channel> {
    install_crypto_provider();
    let material = TlsMaterial::load(tls)?;
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(material.client(server_name))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("cannot reach {addr}"))
}

/// `Ok` if the process at `addr` reports SERVING on grpc.health.v1 (overall status).
pub async fn health(addr: &str, server_name: &str, tls: &TlsFiles, timeout: Duration) -> anyhow::Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tls_channel(addr, server_name, tls, timeout).await?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .with_context(|| format!("health check of {addr} failed"))?;
    let serving = response.into_inner().status == ServingStatus::Serving as i32;
    anyhow::ensure!(serving, "{addr} is not serving");
    Ok(())
}

fn print_status(status: &ClusterStatus) {
    let state = if status.running { "running" } else { "supervisor not running" };
    println!("Cluster in {} ({state}); regions: {}", status.dir.display(), join_regions(&status.regions));
    println!();
    println!("  {:<12} {:<22} {:<9} {:>8} {:>8}  PACKS", "REGION", "ADDRESS", "STATE", "SUBJECTS", "LINKS");
    for node in &status.nodes {
        let state = if node.reachable { "up" } else { "DOWN" };
        let num = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_else(|| "-".to_owned());
        let hash = node.packs_content_hash.as_deref().map(|h| &h[..h.len().min(12)]).unwrap_or("-");
        println!(
            "  {:<12} {:<22} {:<9} {:>8} {:>8}  {} packs, set {hash}",
            node.region.as_str(),
            node.addr,
            state,
            num(node.subjects),
            num(node.links),
            node.packs.len(),
        );
        if let Some(e) = &node.packs_reload_error {
            println!("      pack reload refused: {e}");
        }
        if let Some(e) = &node.error {
            println!("      {e}");
        }
    }
    let state = if status.gateway.reachable { "up" } else { "DOWN" };
    println!(
        "  {:<12} {:<22} {:<9} directory should hold {} links",
        "gateway", status.gateway.addr, state, status.gateway.directory_links_expected
    );
    if let Some(e) = &status.gateway.error {
        println!("      {e}");
    }
}

fn join_regions(regions: &[RegionId]) -> String {
    regions.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub dir: PathBuf,
    pub packs_dir: PathBuf,
    pub regions: Vec<RegionId>,
    pub gateway_listen: SocketAddr,
    /// The `domicile` binary to run nodes and the gateway with.
    pub binary: PathBuf,
    /// Signature policy for the pack set (none: unsigned packs load, for development).
    pub packs_trust: Option<TrustConfig>,
    /// Pack reload polling interval in milliseconds (0: only on SIGHUP).
    pub packs_reload_ms: u64,
    /// Runtime worker threads per node (`None`: one per core).
    pub node_worker_threads: Option<u16>,
}

/// One running child process.
#[derive(Debug)]
pub struct Process {
    pub role: &'static str,
    pub region: Option<RegionId>,
    pub addr: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    /// Arguments after `--config`, kept for a restart.
    args: Vec<String>,
    child: Child,
}

impl Process {
    pub fn label(&self) -> String {
        match &self.region {
            Some(region) => format!("{} {region}", self.role),
            None => self.role.to_owned(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    options: ClusterOptions,
    nodes: BTreeMap<RegionId, Process>,
    gateway: Option<Process>,
    client_tls: TlsFiles,
}

impl LocalCluster {
    /// Generates (or reuses) the PKI and link key, starts every node, then the gateway, and
    /// returns once each has announced readiness.
    pub async fn start(options: ClusterOptions) -> anyhow::Result<Self> {
        let dir = absolute(&options.dir);
        for sub in ["pki", "config", "logs", "data"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
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

        let mut cluster =
            Self { dir: dir.clone(), options: options.clone(), nodes: BTreeMap::new(), gateway: None, client_tls };
        // Every node's address is known before any starts: each node's configuration lists them
        // all (identifier ownership: nodes claim identifiers at each other).
        let mut addrs = BTreeMap::new();
        for region in &options.regions {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").context("no free port for a node")?;
            addrs.insert(region.clone(), probe.local_addr()?);
        }
        let ownership = domicile_node::config::OwnershipConfig {
            regions: addrs
                .iter()
                .map(|(id, addr)| RegionEndpoint { id: id.clone(), endpoint: addr.to_string() })
                .collect(),
            claim_timeout_ms: 2_000,
        };
        for region in &options.regions {
            let config = NodeConfig {
                version: 1,
                region: region.clone(),
                listen: *addrs.get(region).context("a region without an address")?,
                data_dir: dir.join("data").join(region.as_str()),
                packs_dir: packs_dir.clone(),
                link_key_file: link_key_file.clone(),
                tls: pki.node(region)?,
                packs_trust: options.packs_trust.clone(),
                packs_reload_ms: options.packs_reload_ms,
                otlp_endpoint: None,
                otlp_metrics_interval_ms: None,
                ownership: ownership.clone(),
            };
            let path = dir.join("config").join(format!("node-{region}.toml"));
            write_toml(&path, &config)?;
            let args: Vec<String> = match options.node_worker_threads {
                Some(threads) => vec!["--worker-threads".to_owned(), threads.to_string()],
                None => Vec::new(),
            };
            let process = spawn(&options.binary, "node", Some(region.clone()), &path, &args, &dir, &[]).await?;
            cluster.nodes.insert(region.clone(), process);
        }
        cluster.start_gateway(&pki, &packs_dir, &link_key_file).await?;
        cluster.write_cluster_file()?;
        Ok(cluster)
    }

    async fn start_gateway(&mut self, pki: &ClusterPki, packs_dir: &Path, link_key_file: &Path) -> anyhow::Result<()> {
        let config = GatewayConfig {
            version: 1,
            listen: self.options.gateway_listen,
            packs_dir: packs_dir.to_owned(),
            link_key_file: link_key_file.to_owned(),
            tls: pki.gateway()?,
            node_timeout_ms: 2_000,
            regions: self
                .nodes
                .iter()
                .map(|(id, p)| RegionEndpoint { id: id.clone(), endpoint: p.addr.to_string() })
                .collect(),
            packs_trust: self.options.packs_trust.clone(),
            packs_reload_ms: self.options.packs_reload_ms,
            otlp_endpoint: None,
            otlp_metrics_interval_ms: None,
            token_public_key_file: Some(token_public_key(&self.dir.join("pki"))?),
        };
        let path = self.dir.join("config").join("gateway.toml");
        write_toml(&path, &config)?;
        self.gateway = Some(spawn(&self.options.binary, "gateway", None, &path, &[], &self.dir, &[]).await?);
        Ok(())
    }

    fn write_cluster_file(&self) -> anyhow::Result<()> {
        let file = ClusterFile { gateway: self.gateway_addr(), tls: self.client_tls.clone() };
        let path = self.dir.join("cluster.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&file)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway.as_ref().map(|g| g.addr).unwrap_or(self.options.gateway_listen)
    }

    pub fn node_addr(&self, region: &RegionId) -> Option<SocketAddr> {
        self.nodes.get(region).map(|p| p.addr)
    }

    pub fn node_data_dir(&self, region: &RegionId) -> PathBuf {
        self.dir.join("data").join(region.as_str())
    }

    /// Certificate and key a caller of the gateway uses.
    pub fn client_tls(&self) -> &TlsFiles {
        &self.client_tls
    }

    pub fn processes(&self) -> impl Iterator<Item = &Process> {
        self.nodes.values().chain(self.gateway.iter())
    }

    /// Resolves when any process exits on its own, naming it.
    pub async fn wait_for_exit(&mut self) -> String {
        let mut waits = Vec::new();
        for process in self.nodes.values_mut().chain(self.gateway.iter_mut()) {
            let label = process.label();
            let child = &mut process.child;
            waits.push(Box::pin(async move {
                let status = child.wait().await;
                format!("{label} exited ({})", status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()))
            }));
        }
        if waits.is_empty() {
            return "no processes".to_owned();
        }
        first_ready(waits).await
    }

    /// Kills a region's node with SIGKILL (no chance to flush or clean up), as a crash would.
    pub async fn kill_node(&mut self, region: &RegionId) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(region).with_context(|| format!("no node for {region}"))?;
        node.child.kill().await.context("cannot kill the node")?;
        Ok(())
    }

    /// Stops a region's node as a supervisor would: SIGTERM, then SIGKILL if it is still running
    /// after [`STOP_GRACE`]. Start it again with [`LocalCluster::restart_node`].
    pub async fn stop_node(&mut self, region: &RegionId) -> anyhow::Result<Stopped> {
        let node = self.nodes.get_mut(region).with_context(|| format!("no node for {region}"))?;
        Ok(stop_process(node).await)
    }

    /// Starts a region's node again on the address it had, with the same data, so the gateway's
    /// connection to that region recovers. A node still running is stopped first (as
    /// [`LocalCluster::stop_node`] does), and how it stopped is returned.
    pub async fn restart_node(&mut self, region: &RegionId) -> anyhow::Result<Option<Stopped>> {
        let node = self.nodes.get_mut(region).with_context(|| format!("no node for {region}"))?;
        respawn(node, &self.options.binary, &self.dir, "DOMICILE_NODE_LISTEN").await
    }

    /// Kills the gateway with SIGKILL, as a crash would. It persists nothing: everything it knew
    /// is derived from the nodes.
    pub async fn kill_gateway(&mut self) -> anyhow::Result<()> {
        let gateway = self.gateway.as_mut().context("the gateway did not start")?;
        gateway.child.kill().await.context("cannot kill the gateway")?;
        Ok(())
    }

    /// Stops the gateway as a supervisor would: SIGTERM, then SIGKILL after [`STOP_GRACE`].
    pub async fn stop_gateway(&mut self) -> anyhow::Result<Stopped> {
        let gateway = self.gateway.as_mut().context("the gateway did not start")?;
        Ok(stop_process(gateway).await)
    }

    /// Starts the gateway again on the address it had (stopping it first with SIGTERM if it still
    /// runs), so callers' channels reconnect. Its directory starts empty and is rebuilt from every
    /// node's snapshot before it reports ready.
    pub async fn restart_gateway(&mut self) -> anyhow::Result<()> {
        let gateway = self.gateway.as_mut().context("the gateway did not start")?;
        respawn(gateway, &self.options.binary, &self.dir, "DOMICILE_GATEWAY_LISTEN").await?;
        Ok(())
    }

    /// Asks every process to stop (SIGTERM), gateway first, and waits; kills stragglers.
    pub async fn stop(&mut self) {
        if let Some(gateway) = self.gateway.as_mut() {
            stop_process(gateway).await;
        }
        for node in self.nodes.values_mut() {
            stop_process(node).await;
        }
    }
}

/// Output of whichever future finishes first.
async fn first_ready<F: std::future::Future + Unpin>(mut futures: Vec<F>) -> F::Output {
    std::future::poll_fn(move |cx| {
        for f in futures.iter_mut() {
            if let std::task::Poll::Ready(output) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(output);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Starts `process` again with its configuration on the address it had (`listen_var` overrides
/// the configured listen address), stopping it first if it still runs; returns how it stopped.
async fn respawn(
    process: &mut Process,
    binary: &Path,
    dir: &Path,
    listen_var: &'static str,
) -> anyhow::Result<Option<Stopped>> {
    let stopped = match process.child.try_wait()? {
        None => Some(stop_process(process).await),
        Some(_) => None,
    };
    let listen = process.addr.to_string();
    let args = std::mem::take(&mut process.args);
    *process =
        spawn(binary, process.role, process.region.clone(), &process.config, &args, dir, &[(listen_var, listen)])
            .await?;
    Ok(stopped)
}

/// How a process stopped when asked to.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    /// Its exit status, if it could be collected.
    pub status: Option<std::process::ExitStatus>,
    /// It was still running [`STOP_GRACE`] after SIGTERM and had to be killed (SIGKILL).
    pub killed: bool,
    /// From SIGTERM to exit.
    pub took: Duration,
}

impl Stopped {
    /// Stopped on its own after SIGTERM, exiting with success.
    pub fn gracefully(&self) -> bool {
        !self.killed && self.status.is_some_and(|s| s.success())
    }
}

/// SIGTERM, then SIGKILL if the process is still running after [`STOP_GRACE`].
async fn stop_process(process: &mut Process) -> Stopped {
    let started = Instant::now();
    if let Some(pid) = process.child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    let (status, killed) = match tokio::time::timeout(STOP_GRACE, process.child.wait()).await {
        Ok(status) => (status.ok(), false),
        Err(_) => {
            eprintln!("{} still running {STOP_GRACE:?} after SIGTERM: killing it", process.label());
            let _ = process.child.kill().await;
            (process.child.wait().await.ok(), true)
        }
    };
    Stopped { status, killed, took: started.elapsed() }
}

fn write_toml<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let text = toml::to_string_pretty(value)?;
    std::fs::write(path, format!("# Generated by `domicile cluster up`; rewritten on every start.\n{text}"))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Starts `binary <role> --config <config> <args>` and waits for its ready line on stdout. Logs
/// go to `<dir>/logs/<label>.log`; the child is killed if the handle is dropped.
async fn spawn(
    binary: &Path,
    role: &'static str,
    region: Option<RegionId>,
    config: &Path,
    args: &[String],
    dir: &Path,
    env: &[(&str, String)],
) -> anyhow::Result<Process> {
    let name = match &region {
        Some(r) => format!("{role}-{r}"),
        None => role.to_owned(),
    };
    let log = dir.join("logs").join(format!("{name}.log"));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let mut child = Command::new(binary)
        .arg(role)
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let stdout = child.stdout.take().context("child has no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(READY_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(ready) = ReadyLine::parse(&line) {
                return Ok::<_, std::io::Error>(Some(ready));
            }
        }
        Ok(None)
    })
    .await;
    let ready = match ready {
        Ok(Ok(Some(ready))) => ready,
        Ok(Ok(None)) | Ok(Err(_)) => {
            let status = child.wait().await.map(|s| s.to_string()).unwrap_or_default();
            bail!("{name} exited before it was ready ({status}); see {}:\n{}", log.display(), tail(&log));
        }
        Err(_) => bail!("{name} was not ready within {READY_TIMEOUT:?}; see {}", log.display()),
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Process { role, region, addr: ready.addr, config: config.to_owned(), log, args: args.to_vec(), child })
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
