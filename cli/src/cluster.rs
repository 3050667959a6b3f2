//! Local multi-region clusters made of real processes: one node per region and one or more
//! gateways, on loopback, with a generated CA and sled data under one directory.
//!
//! The same code runs `domicile cluster up` and the end-to-end test harness, so what the tests
//! prove is what a newcomer runs. Every address is chosen before the first process starts
//! (`addresses.rs`) and every process's files are written before the first one starts
//! (`files.rs`; the test harness's in-process clusters run on the same files); `cluster up` keeps
//! its processes running (`supervise.rs`).

mod addresses;
mod database;
mod files;
mod supervise;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use domicile_runtime::identity::{CallerIdentity, Scope};
use domicile_runtime::packs::TrustConfig;
use domicile_runtime::pki::{ClusterPki, GATEWAY_SERVER_NAME};
use domicile_runtime::process::ReadyLine;
use domicile_runtime::tls::{TlsFiles, TlsMaterial, install_crypto_provider};
use domicile_types::RegionId;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

pub use addresses::{ADDRESSES_FILE, ClusterAddresses, PortChoice};
pub use database::{ClusterDatabase, ClusterStore, database_name};
pub use files::{ClusterFiles, ProcessFiles, REVOCATION_FILE};
pub use supervise::{ProcessState, SupervisedProcess, SupervisorFile};

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
    /// Start every region's node and a gateway, and keep them running (a process that crashes is
    /// restarted, with back-off, on its address); Ctrl-C stops them. Reuses data and node
    /// addresses from earlier runs.
    Up {
        /// Directory for certificates, keys, configs, logs, sled data and the remembered ports.
        #[arg(long, default_value = ".domicile")]
        dir: PathBuf,
        /// Policy pack directory.
        #[arg(long, default_value = "policy-packs")]
        packs: PathBuf,
        /// Topology file (default: the built-in 3-region topology, deploy/local/topology.toml).
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Address for the gateway. Nodes get the ports after it (50052, 50053, … in topology
        /// order) at the first start, remembered in `<dir>/addresses.toml` for every later one.
        #[arg(long, default_value = "127.0.0.1:50051")]
        gateway_listen: SocketAddr,
        /// Gateways to run; the first listens on --gateway-listen, the others on ports chosen
        /// and remembered like the nodes'.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
        gateways: u16,
        /// Runtime worker threads of each node (0: one per core). Every process of a local
        /// cluster shares this machine; one thread per node leaves the cores to the gateway and
        /// the callers instead of oversubscribing them (BENCHMARKS.md).
        #[arg(long, default_value_t = 1)]
        node_worker_threads: u16,
        /// Where the regions keep their state: `sled` (embedded, nothing to install) or
        /// `postgres` (a PostgreSQL server the cluster starts itself from the machine's installed
        /// `initdb` and `pg_ctl`, one database per region).
        #[arg(long, value_enum, default_value_t = ClusterStore::Sled)]
        store: ClusterStore,
    },
    /// Report the regions, nodes (reachability, subjects, links, packs; stopped or restarting)
    /// and gateways of a running `cluster up`.
    Status {
        /// Directory of the cluster (`cluster up --dir`).
        #[arg(long, default_value = ".domicile")]
        dir: PathBuf,
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a running `cluster up` (SIGTERM to its supervisor) and wait until it has exited.
    Down {
        /// Directory of the cluster (`cluster up --dir`).
        #[arg(long, default_value = ".domicile")]
        dir: PathBuf,
    },
    /// Stop one region's node of the running `cluster up` (SIGTERM: it flushes and exits) and
    /// keep it stopped until `start-region`: a region-down rehearsal. The gateways and the other
    /// regions keep serving; calls for the region's subjects get UNAVAILABLE meanwhile.
    StopRegion {
        region: RegionId,
        /// Directory of the cluster (`cluster up --dir`).
        #[arg(long, default_value = ".domicile")]
        dir: PathBuf,
    },
    /// Start a region's node again (after `stop-region`, or at once when it is waiting to be
    /// restarted after a crash), on its address and data; returns when it serves.
    StartRegion {
        region: RegionId,
        /// Directory of the cluster (`cluster up --dir`).
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
        /// Caller name, e.g. `ops-eu` (files `client-<name>.{pem,key}`).
        name: String,
        /// The caller's region. A node serves callers of its own region (and gateways) only.
        #[arg(long)]
        region: RegionId,
        /// What the caller may do, comma-separated (none: health checks only).
        #[arg(long, value_delimiter = ',', value_parser = scope_parser())]
        scopes: Vec<Scope>,
    },
    /// A signed caller token (printed on stdout) for a caller that cannot hold a certificate:
    /// sent as `authorization: Bearer <token>`. Uses (or creates) `token-signing.key`; gateways
    /// verify with `token-signing.pub` (`token_public_key_file`).
    Token {
        /// Caller name the token carries.
        name: String,
        /// The caller's region.
        #[arg(long)]
        region: RegionId,
        /// What the caller may do, comma-separated.
        #[arg(long, value_delimiter = ',', value_parser = scope_parser())]
        scopes: Vec<Scope>,
        /// Lifetime in seconds (gateways refuse more than their `token_max_lifetime_secs`, by
        /// default one day).
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

/// `--scopes` values: the caller scopes of `domicile_runtime::identity::Scope`, listed in the help.
fn scope_parser() -> impl clap::builder::TypedValueParser<Value = Scope> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Scope::ALL.map(Scope::as_str))
        .try_map(|text: String| Scope::parse(&text).ok_or("unknown scope"))
}

fn issue(pki_dir: &Path, what: IssueCommand) -> anyhow::Result<()> {
    let pki = ClusterPki::open_or_create(pki_dir)?;
    let files = match what {
        IssueCommand::Node { region } => pki.node(&region)?,
        IssueCommand::Gateway => pki.gateway()?,
        IssueCommand::Caller { name, region, scopes } => pki.caller(&CallerIdentity::new(&name, region, &scopes)?)?,
        IssueCommand::Token { name, region, scopes, ttl_secs } => {
            let caller = CallerIdentity::new(&name, region, &scopes)?;
            let issuer = domicile_runtime::token::TokenIssuer::open_or_create(pki_dir)?;
            let ttl = i64::try_from(ttl_secs).context("--ttl-secs is too large")?;
            let now = domicile_runtime::process::now_unix();
            let expires_at = now.checked_add(ttl).context("--ttl-secs is too large")?;
            let issued = issuer.issue(&caller, now, expires_at)?;
            // The id on stderr: what a revocation list names (`[[token]] id = …`), kept out of
            // the output scripts capture as the token.
            eprintln!("token id {}", issued.id);
            println!("{}", issued.token);
            return Ok(());
        }
    };
    println!("ca   {}\ncert {}\nkey  {}", files.ca.display(), files.cert.display(), files.key.display());
    Ok(())
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    match args.command {
        ClusterCommand::Up { dir, packs, topology, gateway_listen, gateways, node_worker_threads, store } => {
            let topology = Topology::load(topology.as_deref())?;
            let binary = std::env::current_exe().context("cannot find the domicile binary")?;
            let options = ClusterOptions {
                gateway_listen,
                gateways: usize::from(gateways),
                ports: PortChoice::Remembered,
                node_worker_threads: (node_worker_threads > 0).then_some(node_worker_threads),
                store,
                ..ClusterOptions::new(dir, packs, topology.region_ids(), binary)
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
        ClusterCommand::StopRegion { region, dir } => {
            println!("{}", supervise::request(&dir, supervise::ControlCommand::StopRegion, &region).await?);
            Ok(())
        }
        ClusterCommand::StartRegion { region, dir } => {
            println!("{}", supervise::request(&dir, supervise::ControlCommand::StartRegion, &region).await?);
            Ok(())
        }
        ClusterCommand::Issue { pki, what } => issue(&pki, what),
        ClusterCommand::RepairOwnership(args) => crate::repair::run(args).await,
        ClusterCommand::Probe { addr, server_name, ca, cert, key, timeout_ms } => {
            let tls = TlsFiles { ca, cert, key };
            health(&addr, &server_name, &tls, Duration::from_millis(timeout_ms)).await
        }
    }
}

async fn up(options: ClusterOptions) -> anyhow::Result<()> {
    let dir = absolute(&options.dir);
    // Everything that can refuse comes before "Starting": a running cluster, ports in use.
    supervise::ensure_not_running(&dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let plan = addresses::plan(&options, &dir).await?;
    let control = supervise::ControlSocket::bind(&dir)?;
    println!("Starting a local Domicile cluster in {}", dir.display());
    for note in &plan.notes {
        eprintln!("warning: {note}");
    }
    let cluster = LocalCluster::start_at(options, plan.addresses).await?;
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
    println!(
        "Node addresses stay the same at every start ({}). A process that exits is restarted; \
         `domicile cluster stop-region <region>` / `start-region <region>` rehearse a region outage.",
        dir.join(ADDRESSES_FILE).display()
    );
    println!("Try:  domicile register --jurisdiction DE --email anna@example.de --phone +4915112345678");
    let supervisor = supervise::Supervisor::new(cluster, control)?;
    println!("Press Ctrl-C (or run `domicile cluster down`) to stop.");
    supervisor.run().await?;
    println!("Stopped. Data kept in {}; run the same command to start again.", dir.display());
    Ok(())
}

/// How long `down` waits for the supervisor to stop its children and exit.
const DOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// Stops the `cluster up` running from `dir` and waits until it has exited.
pub async fn down(dir: &Path) -> anyhow::Result<()> {
    let path = absolute(dir).join(supervise::SUPERVISOR_FILE);
    let Some(file) = supervise::read_supervisor(&path)? else {
        bail!("no cluster is running from {} ({} is absent)", absolute(dir).display(), supervise::SUPERVISOR_FILE);
    };
    if !supervise::pid_alive(file.pid) {
        let _ = std::fs::remove_file(&path);
        println!("The cluster was not running (stale {} removed).", supervise::SUPERVISOR_FILE);
        return Ok(());
    }
    let raw = i32::try_from(file.pid).context("bad pid")?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGTERM)
        .with_context(|| format!("cannot signal the cluster supervisor (pid {})", file.pid))?;
    let deadline = tokio::time::Instant::now() + DOWN_TIMEOUT;
    while supervise::pid_alive(file.pid) {
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
    /// The first gateway (the one `cluster.json` names).
    pub gateway: GatewayStatus,
    /// Every gateway, the first included.
    pub gateways: Vec<GatewayStatus>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStatus {
    pub region: RegionId,
    pub addr: SocketAddr,
    /// What the supervisor is doing with the process: running, restarting (after a crash, with
    /// back-off) or stopped (`cluster stop-region`).
    pub state: ProcessState,
    pub pid: Option<u32>,
    /// Restarts after crashes since `cluster up` started.
    pub restarts: u32,
    /// How the process last exited on its own, if it did.
    pub last_exit: Option<String>,
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
    /// `gateway`, `gateway-2`, …
    pub name: String,
    pub addr: SocketAddr,
    pub state: ProcessState,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub reachable: bool,
    /// Links the gateway's directory should hold once in sync: the sum over reachable nodes (the
    /// gateway has no RPC reporting its own directory size).
    pub directory_links_expected: u64,
    pub error: Option<String>,
}

/// Asks every process of the cluster running from `dir` how it is.
pub async fn status(dir: &Path) -> anyhow::Result<ClusterStatus> {
    let dir = absolute(dir);
    let path = dir.join(supervise::SUPERVISOR_FILE);
    let file = supervise::read_supervisor(&path)?.with_context(|| {
        format!("no cluster is running from {} ({} is absent)", dir.display(), supervise::SUPERVISOR_FILE)
    })?;
    install_crypto_provider();
    let pki = ClusterPki::open_or_create(&dir.join("pki"))?;
    let mut nodes = Vec::new();
    for node in &file.nodes {
        let region = node.region.clone().context("a node without a region in the supervisor file")?;
        nodes.push(node_status(&pki, region, node).await);
    }
    let cluster: ClusterFile =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cluster.json")).context("cannot read cluster.json")?)
            .context("cannot parse cluster.json")?;
    let links: u64 = nodes.iter().filter_map(|n| n.links).sum();
    let mut gateways = Vec::new();
    for gateway in &file.gateways {
        let health = match gateway.state {
            ProcessState::Stopped => Err(anyhow::anyhow!("stopped")),
            _ => health(&gateway.addr.to_string(), GATEWAY_SERVER_NAME, &cluster.tls, Duration::from_secs(3)).await,
        };
        gateways.push(GatewayStatus {
            name: gateway.name.clone(),
            addr: gateway.addr,
            state: gateway.state,
            pid: gateway.pid,
            restarts: gateway.restarts,
            last_exit: gateway.last_exit.clone(),
            reachable: health.is_ok(),
            directory_links_expected: links,
            error: health.err().map(|e| format!("{e:#}")),
        });
    }
    Ok(ClusterStatus {
        dir: dir.clone(),
        running: supervise::pid_alive(file.pid),
        regions: nodes.iter().map(|n| n.region.clone()).collect(),
        gateway: gateways.first().cloned().context("no gateway in the supervisor file")?,
        gateways,
        nodes,
    })
}

async fn node_status(pki: &ClusterPki, region: RegionId, node: &SupervisedProcess) -> NodeStatus {
    let mut status = NodeStatus {
        region: region.clone(),
        addr: node.addr,
        state: node.state,
        pid: node.pid,
        restarts: node.restarts,
        last_exit: node.last_exit.clone(),
        reachable: false,
        subjects: None,
        links: None,
        packs: Vec::new(),
        packs_content_hash: None,
        packs_reload_error: None,
        error: None,
    };
    if node.state == ProcessState::Stopped {
        // Kept down on purpose: nothing to ask.
        return status;
    }
    match node_info(pki, &region, node.addr).await {
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
    let caller = CallerIdentity::new(&format!("status-{region}"), region.clone(), &[Scope::Admin])?;
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

/// The STATE column: what the supervisor does with a process, then whether it answers.
fn state_word(state: ProcessState, reachable: bool) -> &'static str {
    match (state, reachable) {
        (ProcessState::Stopped, _) => "STOPPED",
        (ProcessState::Restarting, _) => "RESTARTING",
        (ProcessState::Running, true) => "up",
        (ProcessState::Running, false) => "DOWN",
    }
}

/// Lines under a process that is not simply up: why, and what brings it back.
fn print_supervision(state: ProcessState, restarts: u32, last_exit: Option<&str>, start_hint: Option<&str>) {
    if state == ProcessState::Stopped {
        match start_hint {
            Some(region) => {
                println!("      stopped with `cluster stop-region`; `domicile cluster start-region {region}` starts it")
            }
            None => println!("      stopped"),
        }
    }
    if restarts > 0 || state == ProcessState::Restarting {
        let exit = last_exit.map(|e| format!("; last exit: {e}")).unwrap_or_default();
        println!("      restarted {restarts} time(s) after exiting on its own{exit}");
    }
}

fn print_status(status: &ClusterStatus) {
    let state = if status.running { "running" } else { "supervisor not running" };
    println!("Cluster in {} ({state}); regions: {}", status.dir.display(), join_regions(&status.regions));
    println!();
    println!("  {:<12} {:<22} {:<10} {:>8} {:>8}  PACKS", "REGION", "ADDRESS", "STATE", "SUBJECTS", "LINKS");
    for node in &status.nodes {
        let state = state_word(node.state, node.reachable);
        let num = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_else(|| "-".to_owned());
        let hash = node.packs_content_hash.as_deref().map(|h| &h[..h.len().min(12)]).unwrap_or("-");
        println!(
            "  {:<12} {:<22} {:<10} {:>8} {:>8}  {} packs, set {hash}",
            node.region.as_str(),
            node.addr,
            state,
            num(node.subjects),
            num(node.links),
            node.packs.len(),
        );
        print_supervision(node.state, node.restarts, node.last_exit.as_deref(), Some(node.region.as_str()));
        if let Some(e) = &node.packs_reload_error {
            println!("      pack reload refused: {e}");
        }
        if let Some(e) = &node.error {
            println!("      {e}");
        }
    }
    for gateway in &status.gateways {
        let state = state_word(gateway.state, gateway.reachable);
        println!(
            "  {:<12} {:<22} {:<10} directory should hold {} links",
            gateway.name, gateway.addr, state, gateway.directory_links_expected
        );
        print_supervision(gateway.state, gateway.restarts, gateway.last_exit.as_deref(), None);
        if let Some(e) = &gateway.error {
            println!("      {e}");
        }
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
    /// Address of the first gateway (port 0: a free port, chosen before any process starts).
    pub gateway_listen: SocketAddr,
    /// How many gateways to run (at least one). Each follows every node and has its own
    /// configuration and log (`gateway.toml`, `gateway-2.toml`, …).
    pub gateways: usize,
    /// How node ports, and those of the gateways after the first, are chosen.
    pub ports: PortChoice,
    /// The `domicile` binary to run nodes and gateways with.
    pub binary: PathBuf,
    /// Signature policy for the pack set (none: unsigned packs load, for development).
    pub packs_trust: Option<TrustConfig>,
    /// Pack reload polling interval in milliseconds (0: only on SIGHUP).
    pub packs_reload_ms: u64,
    /// Runtime worker threads per node (`None`: one per core).
    pub node_worker_threads: Option<u16>,
    /// Where the regions keep their state.
    pub store: ClusterStore,
    /// How the nodes verify rights requests (challenge lifetime and attempts).
    pub node_rights: domicile_node::config::RightsConfig,
}

impl ClusterOptions {
    /// A cluster of `regions` in `dir` as tests run one: a single gateway, every port free and
    /// chosen at start ([`PortChoice::Fresh`]), unsigned packs polled every
    /// [`DEFAULT_PACKS_RELOAD_MS`], one node worker thread per core.
    pub fn new(
        dir: impl Into<PathBuf>,
        packs_dir: impl Into<PathBuf>,
        regions: Vec<RegionId>,
        binary: impl Into<PathBuf>,
    ) -> Self {
        Self {
            dir: dir.into(),
            packs_dir: packs_dir.into(),
            regions,
            gateway_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            gateways: 1,
            ports: PortChoice::Fresh,
            binary: binary.into(),
            packs_trust: None,
            packs_reload_ms: DEFAULT_PACKS_RELOAD_MS,
            node_worker_threads: None,
            store: ClusterStore::Sled,
            node_rights: Default::default(),
        }
    }

    fn gateway_count(&self) -> usize {
        self.gateways.max(1)
    }
}

/// A process could not listen on its address because another process holds it.
#[derive(Debug, thiserror::Error)]
#[error("{process} cannot listen on {addr}: the address is in use by another process")]
pub struct AddrInUse {
    pub process: String,
    pub addr: SocketAddr,
}

/// Whether `error` (or one of its causes) is an [`AddrInUse`].
pub fn is_addr_in_use(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<AddrInUse>())
}

/// Starts lost to another process binding a freshly chosen port first, retried on new ports.
const PORT_RACE_RETRIES: u32 = 5;

/// Everything needed to start, and start again, one process.
#[derive(Debug, Clone)]
struct Launch {
    binary: PathBuf,
    role: &'static str,
    region: Option<RegionId>,
    /// `node-<region>`, `gateway`, `gateway-2`, …; also the log file's stem.
    name: String,
    addr: SocketAddr,
    config: PathBuf,
    /// Arguments after `--config`.
    args: Vec<String>,
    log: PathBuf,
}

impl Launch {
    /// `node eu-central`, `gateway`, `gateway 2`.
    fn label(&self) -> String {
        self.name.replacen('-', " ", 1)
    }
}

/// One running child process.
#[derive(Debug)]
pub struct Process {
    pub role: &'static str,
    pub region: Option<RegionId>,
    /// `node-<region>`, `gateway`, `gateway-2`, …
    pub name: String,
    pub addr: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    launch: Launch,
    child: Child,
}

impl Process {
    pub fn label(&self) -> String {
        self.launch.label()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    options: ClusterOptions,
    addresses: ClusterAddresses,
    nodes: BTreeMap<RegionId, Process>,
    gateways: Vec<Process>,
    client_tls: TlsFiles,
    /// The regions' PostgreSQL server (`--store postgres`), stopped after every node.
    database: Option<ClusterDatabase>,
}

impl LocalCluster {
    /// Chooses every process's address ([`ClusterOptions::ports`]), then starts the cluster on
    /// them ([`LocalCluster::start_at`]). With [`PortChoice::Fresh`], a start that loses a port
    /// to another process (which bound it between the choice and the spawn) is retried on new
    /// ports.
    pub async fn start(options: ClusterOptions) -> anyhow::Result<Self> {
        let dir = absolute(&options.dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut races = 0;
        loop {
            let plan = addresses::plan(&options, &dir).await?;
            for note in &plan.notes {
                eprintln!("warning: {note}");
            }
            match Self::start_at(options.clone(), plan.addresses).await {
                Err(e) if options.ports == PortChoice::Fresh && is_addr_in_use(&e) && races < PORT_RACE_RETRIES => {
                    races += 1;
                }
                result => return result,
            }
        }
    }

    /// Writes the cluster's files ([`ClusterFiles::write`]: PKI, link key, every process's
    /// configuration for `addresses`, all chosen before the first process starts, so each
    /// configuration can name any other process), starts every node, then every gateway, and
    /// returns once each has announced readiness. If one cannot start, those already started are
    /// stopped.
    pub async fn start_at(options: ClusterOptions, addresses: ClusterAddresses) -> anyhow::Result<Self> {
        let database = match options.store {
            ClusterStore::Sled => None,
            ClusterStore::Postgres => {
                let (dir, regions) = (absolute(&options.dir), options.regions.clone());
                Some(tokio::task::spawn_blocking(move || ClusterDatabase::start(&dir, &regions)).await??)
            }
        };
        let files = ClusterFiles::write(&options, &addresses, database.as_ref())?;
        let mut cluster = Self {
            dir: files.dir.clone(),
            options,
            addresses,
            nodes: BTreeMap::new(),
            gateways: Vec::new(),
            client_tls: files.client_tls.clone(),
            database,
        };
        if let Err(e) = cluster.spawn_all(&files).await {
            cluster.stop().await;
            return Err(e);
        }
        cluster.write_cluster_file()?;
        Ok(cluster)
    }

    async fn spawn_all(&mut self, files: &ClusterFiles) -> anyhow::Result<()> {
        for node in &files.nodes {
            let region = node.region.clone().context("a node without a region")?;
            let args: Vec<String> = match self.options.node_worker_threads {
                Some(threads) => vec!["--worker-threads".to_owned(), threads.to_string()],
                None => Vec::new(),
            };
            let process = self.launch(node, args).spawn().await?;
            self.nodes.insert(region, process);
        }
        for gateway in &files.gateways {
            let process = self.launch(gateway, Vec::new()).spawn().await?;
            self.gateways.push(process);
        }
        Ok(())
    }

    fn launch(&self, files: &ProcessFiles, args: Vec<String>) -> Launch {
        Launch {
            binary: self.options.binary.clone(),
            role: files.role,
            region: files.region.clone(),
            name: files.name.clone(),
            addr: files.addr,
            config: files.config.clone(),
            args,
            log: files.log.clone(),
        }
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

    /// Every process's address, as chosen before the first one started.
    pub fn addresses(&self) -> &ClusterAddresses {
        &self.addresses
    }

    /// The first gateway's address.
    pub fn gateway_addr(&self) -> SocketAddr {
        self.addresses.gateways.first().copied().unwrap_or(self.options.gateway_listen)
    }

    /// Every gateway's address, the first one first.
    pub fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.addresses.gateways.clone()
    }

    pub fn node_addr(&self, region: &RegionId) -> Option<SocketAddr> {
        self.addresses.node(region)
    }

    pub fn node_data_dir(&self, region: &RegionId) -> PathBuf {
        files::node_data_dir(&self.dir, region)
    }

    /// Certificate and key a caller of the gateway uses.
    pub fn client_tls(&self) -> &TlsFiles {
        &self.client_tls
    }

    /// Every node, then every gateway.
    pub fn processes(&self) -> impl Iterator<Item = &Process> {
        self.nodes.values().chain(self.gateways.iter())
    }

    fn node_mut(&mut self, region: &RegionId) -> anyhow::Result<&mut Process> {
        self.nodes.get_mut(region).with_context(|| format!("no node for {region}"))
    }

    fn gateway_mut(&mut self, index: usize) -> anyhow::Result<&mut Process> {
        let count = self.gateways.len();
        self.gateways.get_mut(index).with_context(|| format!("no gateway {index} (the cluster runs {count})"))
    }

    /// Kills a region's node with SIGKILL (no chance to flush or clean up), as a crash would.
    pub async fn kill_node(&mut self, region: &RegionId) -> anyhow::Result<()> {
        self.node_mut(region)?.child.kill().await.context("cannot kill the node")
    }

    /// Stops a region's node as a supervisor would: SIGTERM, then SIGKILL if it is still running
    /// after [`STOP_GRACE`]. Start it again with [`LocalCluster::restart_node`].
    pub async fn stop_node(&mut self, region: &RegionId) -> anyhow::Result<Stopped> {
        Ok(stop_process(self.node_mut(region)?).await)
    }

    /// Starts a region's node again on the address it had, with the same data, so the gateways'
    /// connections to that region recover. A node still running is stopped first (as
    /// [`LocalCluster::stop_node`] does), and how it stopped is returned.
    pub async fn restart_node(&mut self, region: &RegionId) -> anyhow::Result<Option<Stopped>> {
        restart(self.node_mut(region)?).await
    }

    /// Kills the first gateway with SIGKILL (see [`LocalCluster::kill_gateway_at`]).
    pub async fn kill_gateway(&mut self) -> anyhow::Result<()> {
        self.kill_gateway_at(0).await
    }

    /// Kills gateway `index` (0: the first) with SIGKILL, as a crash would. It persists nothing:
    /// everything it knew is derived from the nodes.
    pub async fn kill_gateway_at(&mut self, index: usize) -> anyhow::Result<()> {
        self.gateway_mut(index)?.child.kill().await.context("cannot kill the gateway")
    }

    /// Stops the first gateway (see [`LocalCluster::stop_gateway_at`]).
    pub async fn stop_gateway(&mut self) -> anyhow::Result<Stopped> {
        self.stop_gateway_at(0).await
    }

    /// Stops gateway `index` as a supervisor would: SIGTERM, then SIGKILL after [`STOP_GRACE`].
    pub async fn stop_gateway_at(&mut self, index: usize) -> anyhow::Result<Stopped> {
        Ok(stop_process(self.gateway_mut(index)?).await)
    }

    /// Starts the first gateway again (see [`LocalCluster::restart_gateway_at`]).
    pub async fn restart_gateway(&mut self) -> anyhow::Result<()> {
        self.restart_gateway_at(0).await
    }

    /// Starts gateway `index` again on the address it had (stopping it first with SIGTERM if it
    /// still runs), so callers' channels reconnect. Its directory starts empty and is rebuilt
    /// from every node's snapshot before it reports ready.
    pub async fn restart_gateway_at(&mut self, index: usize) -> anyhow::Result<()> {
        restart(self.gateway_mut(index)?).await?;
        Ok(())
    }

    /// Asks every process to stop (SIGTERM), gateways first, and waits; kills stragglers.
    pub async fn stop(&mut self) {
        for gateway in &mut self.gateways {
            stop_process(gateway).await;
        }
        for node in self.nodes.values_mut() {
            stop_process(node).await;
        }
        if let Some(database) = self.database.take() {
            // Blocking (pg_ctl waits for the server to stop); dropping stops it too, on error.
            let _ = tokio::task::spawn_blocking(move || database.server().stop()).await;
        }
    }

    /// Removes the regions' PostgreSQL server's directory once it has stopped (a test's
    /// throwaway cluster; `cluster up` keeps it for the next start).
    pub fn discard_database_on_drop(&mut self) {
        if let Some(database) = self.database.as_mut() {
            database.discard_on_drop();
        }
    }

    /// The regions' PostgreSQL server (`--store postgres`).
    pub fn database(&self) -> Option<&ClusterDatabase> {
        self.database.as_ref()
    }
}

/// Starts `process` again with its configuration (and so on its address), stopping it first if
/// it still runs; returns how it stopped.
async fn restart(process: &mut Process) -> anyhow::Result<Option<Stopped>> {
    let stopped = match process.child.try_wait()? {
        None => Some(stop_process(process).await),
        Some(_) => None,
    };
    *process = process.launch.spawn().await?;
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

    /// E.g. `exited after SIGTERM in 0.21 s (exit status: 0)`.
    pub fn describe(&self) -> String {
        let how = if self.killed { "killed (SIGKILL) after not stopping on SIGTERM" } else { "exited after SIGTERM" };
        let status = self.status.map(|s| format!(" ({s})")).unwrap_or_default();
        format!("{how} in {:.2} s{status}", self.took.as_secs_f64())
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

impl Launch {
    /// Starts `binary <role> --config <config> <args>` and waits for its ready line on stdout.
    /// Logs go to the launch's log file (appended); the child runs in its own process group (a
    /// Ctrl-C in `cluster up`'s terminal reaches only the supervisor, which stops the gateways,
    /// then the nodes) and is killed if the handle is dropped.
    async fn spawn(&self) -> anyhow::Result<Process> {
        let log = &self.log;
        let name = &self.name;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut child = Command::new(&self.binary)
            .arg(self.role)
            .arg("--config")
            .arg(&self.config)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
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
                let status = child.wait().await;
                if status.as_ref().ok().and_then(|s| s.code()) == Some(i32::from(crate::EXIT_ADDR_IN_USE)) {
                    return Err(AddrInUse { process: self.label(), addr: self.addr }.into());
                }
                let status = status.map(|s| s.to_string()).unwrap_or_default();
                bail!("{name} exited before it was ready ({status}); see {}:\n{}", log.display(), tail(log));
            }
            Err(_) => bail!("{name} was not ready within {READY_TIMEOUT:?}; see {}", log.display()),
        };
        anyhow::ensure!(
            ready.addr == self.addr,
            "{name} announced {} instead of its configured address {}",
            ready.addr,
            self.addr
        );
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Process {
            role: self.role,
            region: self.region.clone(),
            name: self.name.clone(),
            addr: self.addr,
            config: self.config.clone(),
            log: self.log.clone(),
            launch: self.clone(),
            child,
        })
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
