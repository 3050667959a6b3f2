//! The `domicile` command line: thin dispatch over library functions.

mod audit;
pub mod client;
pub mod cluster;
pub mod import;
mod kek;
mod load;
mod node_check;
mod packs;
mod records;
pub mod repair;
mod rights;
mod signals;
pub mod topology;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use domicile_runtime::config::EXIT_CONFIG;
use domicile_runtime::process::ReadyLine;
use domicile_runtime::telemetry;

/// Domicile: residency-aware consent and identity for every channel.
#[derive(Debug, Parser)]
#[command(name = "domicile", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a local multi-region cluster (nodes and gateways on loopback, kept running until
    /// Ctrl-C), rehearse region outages, issue certificates.
    Cluster(cluster::ClusterArgs),
    /// Register a subject of a jurisdiction with one or more identifiers.
    Register(client::RegisterArgs),
    /// Record a consent grant, denial or withdrawal.
    Consent(client::ConsentArgs),
    /// Ask whether a subject may be contacted for a purpose on a channel.
    Decide(client::DecideArgs),
    /// Show the link, subject ref and home region of an identifier.
    Resolve(client::ResolveArgs),
    /// Validate and test policy packs.
    #[command(subcommand)]
    Packs(packs::PacksCommand),
    /// A subject's consent ledger as ISO/IEC TS 27560 records or Kantara consent receipts, out of
    /// and into its home node (in-region only).
    #[command(subcommand)]
    Records(records::RecordsCommand),
    /// Data-subject rights at the subject's home node, for operators of its region: export,
    /// erase, restrict, lift, rectify, the subject's requests and deadlines, context, history.
    Rights(rights::RightsArgs),
    /// Import consent from another system (OneTrust, Fides, Transcend, Ketch or Domicile NDJSON)
    /// through the gateway: each row to its subject's home region, applied once per source event,
    /// a receipt per row, resumable.
    Import(import::driver::ImportArgs),
    /// Decode or encode IAB TCF and GPP consent strings (what a string says, in words or JSON).
    #[command(subcommand)]
    Signals(signals::SignalsCommand),
    /// Check a node's audit log offline.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Rotate a PostgreSQL region's key-encryption key (add, rewrap, retire): the purge step
    /// of erasure on PostgreSQL.
    #[command(subcommand)]
    Kek(kek::KekCommand),
    /// Measure a running cluster: decide, batch, writes, withdrawal lag, vs a gRPC echo baseline.
    Load(load::LoadArgs),
    /// Run a regional node (used by deployments and by `cluster`): `node --config FILE`; or
    /// check a stopped node's files offline: `node check`.
    Node(NodeArgs),
    /// Run a gateway (used by deployments and by `cluster`).
    Gateway(ServerArgs),
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct NodeArgs {
    #[command(subcommand)]
    command: Option<node_check::NodeCommand>,
    #[command(flatten)]
    server: Option<ServerArgs>,
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Runtime worker threads (default: one per core). Processes that share a machine, like a
    /// local cluster's nodes, serve better with fewer threads than cores between them.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
}

/// Entry point shared by the `domicile` binary and the test harness's copy of it.
pub fn main() -> ExitCode {
    no_transparent_huge_pages();
    open_files_up_to_the_hard_limit();
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    let server = match &cli.command {
        Command::Node(NodeArgs { server: Some(args), command: None }) | Command::Gateway(args) => Some(args),
        _ => None,
    };
    if let Some(args) = server {
        server_runtime(&mut builder);
        if let Some(threads) = args.worker_threads {
            builder.worker_threads(usize::from(threads));
        }
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

/// Transparent huge pages off, for this process and every process it starts (the flag is
/// inherited: `cluster up`'s nodes and gateways). mimalloc backs its arena with them where the
/// kernel allows (THP in `madvise` mode, mimalloc's `allow_thp`), and it hands freed 64 KiB pages
/// back to the kernel; a later allocation there faults a whole 2 MiB page in, zeroed. In a
/// profile of a node under `domicile import` a fifth of its CPU was the kernel zeroing such pages.
/// Interleaved runs on the local cluster (BENCHMARKS.md, "Bulk import"): rows of known subjects
/// 21,290–21,839 → 25,277–25,382/s, rows that register 7,989–8,333 → 10,303–10,879/s, 10 %
/// less CPU per row in each node, nodes 60 MB smaller; decisions, batches and consent writes
/// unchanged within the noise. A kernel without THP refuses the call, which changes nothing.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
}

/// Raises the soft limit of open files to the hard one, for `domicile` and the processes it
/// starts: each connection a node or gateway holds is a file, and a soft limit of 1,024 (a common
/// default outside systemd, whose units here set 65,536) is below one source's connection bound.
/// Public for the test harness, whose in-process servers need the same.
pub fn open_files_up_to_the_hard_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Nodes and gateways run without Tokio's LIFO slot. With it, a task woken by another runs right
/// after the waker: when a batch of decisions completes, each reply's HTTP/2 stream task wakes
/// its connection task, which then runs at once and flushes that one reply, so N replies cost N
/// writes and N packets. Without it the connection task runs after the stream tasks and sends
/// their replies together (with `tls::incoming`, which lets h2 copy them into one buffer).
/// In interleaved runs on the local cluster: unary decisions ≈ 38k → 46k/s, batch ≈ 240k →
/// 275k/s. Needs `--cfg tokio_unstable` (.cargo/config.toml); without it, Tokio's default.
/// Public for the test harness, which builds the runtimes of its in-process servers the same way.
pub fn server_runtime(builder: &mut tokio::runtime::Builder) {
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    #[cfg(not(tokio_unstable))]
    let _ = builder;
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Node(NodeArgs { command: Some(command), .. }) => node_check::run(command).await,
        Command::Node(NodeArgs { server: Some(args), .. }) => run_node(args).await,
        Command::Node(NodeArgs { .. }) => {
            eprintln!("error: `domicile node` needs --config FILE (run a node) or `check` (see --help)");
            ExitCode::from(64)
        }
        Command::Gateway(args) => run_gateway(args).await,
        Command::Cluster(args) => report(cluster::run(args).await),
        Command::Register(args) => client::register(args).await,
        Command::Consent(args) => client::consent(args).await,
        Command::Decide(args) => client::decide(args).await,
        Command::Resolve(args) => client::resolve(args).await,
        Command::Packs(command) => packs::run(command),
        Command::Audit(command) => audit::run(command),
        Command::Signals(command) => signals::run(command),
        Command::Records(command) => records::run(command).await,
        Command::Import(args) => import::driver::run(args).await,
        Command::Rights(args) => rights::run(args).await,
        Command::Load(args) => load::run(args).await,
        Command::Kek(command) => report(kek::run(command).await),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit code of a node or gateway whose listen address is held by another process (sysexits'
/// EX_TEMPFAIL: it may be free later). `cluster up` and the test harness tell it from other
/// failures, so a port lost to another process is reported (or retried on a new port) as such.
pub const EXIT_ADDR_IN_USE: u8 = 75;

fn announce(role: &'static str, region: Option<String>) -> impl FnOnce(std::net::SocketAddr) {
    move |addr| {
        if let Err(e) = ReadyLine::new(role, region.as_deref(), addr).announce() {
            tracing::error!(error = %e, "cannot announce readiness on stdout");
        }
    }
}

/// Loads a server's configuration (exit 64 when it is bad), binds its listener and runs it until
/// SIGINT/SIGTERM, announcing readiness on stdout.
async fn run_server<C, F>(
    args: ServerArgs,
    load: impl FnOnce(&std::path::Path) -> Result<C, domicile_runtime::config::ConfigError>,
    listen: impl FnOnce(&C) -> std::net::SocketAddr,
    serve: impl FnOnce(C, tokio::net::TcpListener) -> F,
) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    telemetry::init(args.log_json);
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let addr = listen(&config);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            let in_use = e.kind() == std::io::ErrorKind::AddrInUse;
            return if in_use { ExitCode::from(EXIT_ADDR_IN_USE) } else { ExitCode::FAILURE };
        }
    };
    report(serve(config, listener).await)
}

async fn run_node(args: ServerArgs) -> ExitCode {
    run_server(
        args,
        domicile_node::NodeConfig::load,
        |c| c.listen,
        |config, listener| {
            let region = config.region.to_string();
            domicile_node::serve(
                config,
                listener,
                announce("node", Some(region)),
                domicile_runtime::process::shutdown_signal(),
            )
        },
    )
    .await
}

async fn run_gateway(args: ServerArgs) -> ExitCode {
    run_server(
        args,
        domicile_gateway::GatewayConfig::load,
        |c| c.listen,
        |config, listener| {
            domicile_gateway::serve(
                config,
                listener,
                announce("gateway", None),
                domicile_runtime::process::shutdown_signal(),
            )
        },
    )
    .await
}
