//! `domicile load`: drives a running cluster through its gateway over gRPC and reports throughput
//! and latency percentiles, each next to a plain tonic echo service measured in the same run on
//! the same machine with the same mutual-TLS client, so figures read as "what fraction of gRPC".
//!
//! Subjects are synthetic (`load-<n>@example.test`); nothing personal is generated or printed.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::gateway::v1 as pb;
use domicile_proto::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_proto::raw::{DECIDE_STREAM_PATH, RawOutcome, RawResult};
use domicile_runtime::identity::{CallerIdentity, Scope};
use domicile_runtime::pki::{ClusterPki, GATEWAY_SERVER_NAME};
use domicile_runtime::tls::{TlsFiles, TlsMaterial, install_crypto_provider};
use domicile_types::RegionId;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tonic::codegen::{BoxFuture, Service, http};
use tonic::transport::{Channel, Endpoint};

use crate::client::ClusterFile;

/// Jurisdictions the dataset cycles through: five EU countries, two North American, one Brazilian,
/// so every region of the default topology holds subjects.
const JURISDICTIONS: [&str; 8] = ["DE", "FR", "IT", "ES", "NL", "US", "CA", "BR"];
/// One sentinel jurisdiction per default region, used to know the Watch backlog is drained.
const SENTINELS: [&str; 3] = ["DE", "US", "BR"];
const PURPOSE: &str = "marketing";
/// TCP connect and TLS handshake must finish within this, so a dead address fails promptly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// No single call may hang the run.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a withdrawal's change event may take to reach the watcher before it counts as missing.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Baseline only: unary calls to an in-process tonic echo service (same mTLS, same client).
    Echo,
    /// Unary Decide through the gateway.
    Decide,
    /// DecideStream batches through the gateway.
    Batch,
    /// RecordConsent (durable writes) through the gateway.
    Writes,
    /// Withdrawal acknowledgement -> Watch arrival, and read-your-writes after every withdrawal.
    Withdrawal,
    /// Load the dataset: --subjects subjects with consent, spread across regions.
    Setup,
    /// Setup, then every scenario, each with its ratio to the echo baseline.
    All,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    #[arg(value_enum)]
    scenario: Scenario,
    /// Concurrent callers (in-flight requests) for echo, decide, batch and writes.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds each timed scenario runs.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Dataset size: subjects `load-0` .. `load-<N-1>` (setup creates them; others use them).
    #[arg(long, default_value_t = 10_000)]
    subjects: u64,
    /// Directory of a cluster started with `domicile cluster up` (reads its cluster.json).
    #[arg(long, default_value = ".domicile", env = "DOMICILE_CLUSTER_DIR")]
    cluster_dir: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Fixed request rate (per second, all callers together) instead of as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
    /// Items per DecideStream call.
    #[arg(long, default_value_t = 1_000)]
    batch_size: usize,
    /// Withdrawals for the propagation and read-your-writes scenario (capped at --subjects).
    #[arg(long, default_value_t = 10_000)]
    withdrawals: u64,
    /// Concurrent subjects in flight while loading the dataset.
    #[arg(long, default_value_t = 256)]
    setup_concurrency: usize,
    /// HTTP/2 connections the callers share (round robin).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// With `all`: skip dataset setup (it is already loaded).
    #[arg(long)]
    skip_setup: bool,
    /// Skip the echo baseline (a soak's repeated runs, which measure the cluster alone).
    #[arg(long)]
    no_echo: bool,
    /// Abort the whole run after this many seconds.
    #[arg(long, default_value_t = 3_600)]
    deadline: u64,
}

pub async fn run(args: LoadArgs) -> ExitCode {
    let deadline = Duration::from_secs(args.deadline);
    let result = match tokio::time::timeout(deadline, run_inner(&args)).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("the load run did not finish within --deadline {}s", args.deadline)),
    };
    match result {
        Ok(report) => {
            report.print(args.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            clear_progress();
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_inner(args: &LoadArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.concurrency > 0 && args.connections > 0, "--concurrency and --connections must be positive");
    anyhow::ensure!(args.subjects > 0, "--subjects must be positive");
    anyhow::ensure!(args.duration > 0.0, "--duration must be positive");
    install_crypto_provider();
    let mut report = Report::default();
    let needs_cluster = args.scenario != Scenario::Echo;
    let cluster = if needs_cluster { Some(Gateway::connect(args).await?) } else { None };
    if let Some(gw) = &cluster {
        report.gateway = Some(gw.addr);
    }
    let duration = Duration::from_secs_f64(args.duration);
    let scenario = args.scenario;
    let gw = || cluster.as_ref().context("no cluster connection");

    if matches!(scenario, Scenario::Setup) || (scenario == Scenario::All && !args.skip_setup) {
        report.push("setup", setup(gw()?, args).await?);
    }
    if scenario != Scenario::Setup && !args.no_echo {
        report.push("echo", echo(args, duration, args.rate).await?);
    }
    if matches!(scenario, Scenario::Decide | Scenario::All) {
        let max = decide(gw()?, args, duration, if scenario == Scenario::All { None } else { args.rate }).await?;
        let half = max.ops_per_sec / 2.0;
        report.push("decide", max);
        if scenario == Scenario::All {
            report.push("decide_at_half_max_rate", decide(gw()?, args, duration, Some(half)).await?);
        }
    }
    if matches!(scenario, Scenario::Batch | Scenario::All) {
        report.push("batch", batch(gw()?, args, duration).await?);
    }
    if matches!(scenario, Scenario::Writes | Scenario::All) {
        report.push("writes", writes(gw()?, args, duration).await?);
    }
    if matches!(scenario, Scenario::Withdrawal | Scenario::All) {
        report.push("withdrawal", withdrawal(gw()?, args).await?);
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Connections

struct Gateway {
    addr: SocketAddr,
    tls: TlsFiles,
    clients: Vec<DomicileClient<Channel>>,
    /// The same connections, for calls made with hand-written wire types.
    channels: Vec<Channel>,
}

impl Gateway {
    async fn connect(args: &LoadArgs) -> anyhow::Result<Self> {
        let path = args.cluster_dir.join("cluster.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (start a cluster with `domicile cluster up --dir {}` or pass --cluster-dir)",
                path.display(),
                args.cluster_dir.display()
            )
        })?;
        let file: ClusterFile =
            serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
        let channels = channels(file.gateway, &file.tls, args.connections)
            .await
            .with_context(|| format!("the cluster in {} is unreachable", args.cluster_dir.display()))?;
        let clients = channels.iter().cloned().map(DomicileClient::new).collect();
        Ok(Self { addr: file.gateway, tls: file.tls, clients, channels })
    }

    fn client(&self, n: usize) -> DomicileClient<Channel> {
        self.clients[n % self.clients.len()].clone()
    }
}

/// `count` independent HTTP/2 connections to `addr`, as the CLI's client connects (mutual TLS,
/// server name of the gateway), each bounded by a connect deadline.
async fn channels(addr: SocketAddr, tls: &TlsFiles, count: usize) -> anyhow::Result<Vec<Channel>> {
    let material = TlsMaterial::load(tls)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(material.client(GATEWAY_SERVER_NAME))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true);
        // connect_timeout covers TCP only; the outer timeout also bounds the TLS handshake.
        let channel = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(2), endpoint.connect())
            .await
            .map_err(|_| anyhow::anyhow!("no answer from {addr} within {CONNECT_TIMEOUT:?}"))?
            .with_context(|| format!("cannot connect to {addr}"))?;
        out.push(channel);
    }
    Ok(out)
}

fn email(n: u64) -> common::Identifier {
    common::Identifier { kind: "email".to_owned(), value: format!("load-{n}@example.test") }
}

fn by_email(n: u64) -> Option<pb::SubjectSelector> {
    Some(pb::SubjectSelector { selector: Some(pb::subject_selector::Selector::Identifier(email(n))) })
}

fn consent(
    selector: Option<pb::SubjectSelector>,
    action: common::ConsentAction,
    channels: &[&str],
) -> pb::RecordConsentRequest {
    pb::RecordConsentRequest {
        subject: selector,
        purpose: PURPOSE.to_owned(),
        channels: channels.iter().map(|c| (*c).to_owned()).collect(),
        action: action as i32,
        evidence: Some(common::Evidence {
            notice_version: "load-v1".to_owned(),
            capture_channel: "web".to_owned(),
            source_system: "domicile-load".to_owned(),
            double_opt_in_confirmed: true,
            signal: None,
            ..Default::default()
        }),
        captured_at: None,
        expires_at: None,
        idempotency_key: String::new(),
    }
}

fn decide_request(n: u64, channel: &str) -> pb::DecideRequest {
    pb::DecideRequest {
        subject: by_email(n),
        purpose: PURPOSE.to_owned(),
        channel: channel.to_owned(),
        at: None,
        ..Default::default()
    }
}

fn is_allow(decision: Option<&common::Decision>) -> bool {
    decision.is_some_and(|d| d.effect == common::Effect::Allow as i32)
}

/// Cheap per-caller pseudo-random subject picker (xorshift): no dependency, no shared state.
struct Pick(u64);

impl Pick {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

// ---------------------------------------------------------------------------------------------
// Measurement

#[derive(Debug, Clone, Default, serde::Serialize)]
struct Latency {
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    max_us: u64,
    mean_us: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Measured {
    /// What one op is ("calls", "decisions", "subjects", "withdrawals").
    unit: &'static str,
    ops: u64,
    errors: u64,
    seconds: f64,
    ops_per_sec: f64,
    /// What the latency figures time.
    latency_of: &'static str,
    latency: Latency,
    extra: serde_json::Map<String, Value>,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).context("cannot create a latency histogram")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
}

/// Progress on stderr: a rewritten line on a terminal, a line every few seconds otherwise.
struct Progress {
    done: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(label: String, total: Option<u64>) -> Self {
        let done = Arc::new(AtomicU64::new(0));
        let counter = done.clone();
        let tty = std::io::stderr().is_terminal();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let every = if tty { Duration::from_millis(250) } else { Duration::from_secs(5) };
            loop {
                tokio::time::sleep(every).await;
                let n = counter.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64().max(1e-9);
                let rate = n as f64 / secs;
                let line = match total {
                    Some(t) if t > 0 => {
                        let frac = (n as f64 / t as f64).min(1.0);
                        let width = 30usize;
                        let filled = ((frac * width as f64) as usize).min(width);
                        let eta = if rate > 0.0 { (t.saturating_sub(n)) as f64 / rate } else { 0.0 };
                        format!(
                            "{label} [{}{}] {n}/{t} {:5.1}% {rate:.0}/s eta {eta:.0}s",
                            "#".repeat(filled),
                            "-".repeat(width - filled),
                            frac * 100.0
                        )
                    }
                    _ => format!("{label} {n} in {secs:.1}s, {rate:.0}/s"),
                };
                let mut err = std::io::stderr().lock();
                if tty {
                    let _ = write!(err, "\r\x1b[K{line}");
                } else {
                    let _ = writeln!(err, "{line}");
                }
                let _ = err.flush();
            }
        });
        Self { done, task }
    }

    fn finish(self) {
        self.task.abort();
        clear_progress();
    }
}

fn clear_progress() {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K");
    }
}

/// Runs `concurrency` callers for `duration`, each calling `call(caller, n)` in a loop (or on a
/// fixed schedule when `rate` is set). `call` returns how many ops the call completed. With a
/// rate, latency is measured from the scheduled start, so a stalled server is not hidden
/// (coordinated omission).
/// The resolution of Tokio's timer.
const TIMER_TICK: Duration = Duration::from_millis(1);

async fn drive<F, Fut>(
    label: &str,
    unit: &'static str,
    concurrency: usize,
    duration: Duration,
    rate: Option<f64>,
    call: F,
) -> anyhow::Result<Measured>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, String>> + Send + 'static,
{
    let progress = Progress::start(format!("{label}:"), None);
    let start = Instant::now();
    let end = start + duration;
    let interval = rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(concurrency as f64 / r));
    let mut workers = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let call = call.clone();
        let done = progress.done.clone();
        let mut hist = histogram()?;
        workers.push(tokio::spawn(async move {
            let (mut ops, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
            let mut n = 0u64;
            loop {
                let scheduled = match interval {
                    // Callers are phase-shifted so the combined schedule is even.
                    Some(iv) => start + iv.mul_f64(n as f64 + w as f64 / concurrency as f64),
                    None => Instant::now(),
                };
                if scheduled >= end {
                    break;
                }
                if interval.is_some() {
                    // Tokio's timer has millisecond ticks and fires on a tick after the deadline
                    // (rounded up, then the driver's own wait rounded up), so waiting for
                    // `scheduled` itself started calls 1-2 ms late and counted that as latency (an
                    // echo paced at 1,000/s measured 1.5 ms p50, against 70 µs in a closed loop).
                    // Wake up to two ticks early instead.
                    let wake = scheduled.checked_sub(2 * TIMER_TICK).unwrap_or(scheduled);
                    tokio::time::sleep_until(wake.into()).await;
                }
                // Latency runs from the schedule when the call starts late (no coordinated
                // omission: a stalled system is charged for the wait), from the call itself
                // when it starts early.
                let from = Instant::now().min(scheduled);
                match call(w, n).await {
                    Ok(k) => {
                        record(&mut hist, from.elapsed());
                        ops += k;
                        done.fetch_add(k, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
                n += 1;
            }
            (hist, ops, errors, first_error)
        }));
    }
    let mut hist = histogram()?;
    let (mut ops, mut errors, mut first_error) = (0u64, 0u64, None);
    for w in workers {
        let (h, o, e, f) = w.await.context("a load caller failed")?;
        hist.add(&h).context("cannot merge histograms")?;
        ops += o;
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    progress.finish();
    if ops == 0
        && let Some(e) = &first_error
    {
        bail!("{label}: every call failed; first error: {e}");
    }
    let mut extra = serde_json::Map::new();
    if let Some(e) = first_error {
        extra.insert("first_error".into(), Value::String(e));
    }
    if let Some(r) = rate {
        extra.insert("target_rate_per_sec".into(), json!(r.round()));
    }
    extra.insert("concurrency".into(), json!(concurrency));
    Ok(Measured {
        unit,
        ops,
        errors,
        seconds,
        ops_per_sec: ops as f64 / seconds.max(1e-9),
        latency_of: "call",
        latency: Latency::of(&hist),
        extra,
    })
}

fn status(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// A setup write made as the API asks of callers: one whose outcome is unknown (a deadline, a
/// region that did not answer, a call the gateway cut) is sent again under the same idempotency
/// key, which applies it at most once; up to 6 attempts, backing off from 100 ms. Before, a
/// PostgreSQL region saturated by the setup left a few subjects of 20,000 unregistered, and each
/// later scenario counted their decisions as errors.
async fn retried<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut attempt = 0u32;
    loop {
        match call().await {
            Err(e) if attempt < 5 && crate::client::send_again(e.code()) => {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                attempt += 1;
            }
            answer => return answer,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn setup(gw: &Gateway, args: &LoadArgs) -> anyhow::Result<Measured> {
    let total = args.subjects;
    let progress = Progress::start(format!("setup: {total} subjects"), Some(total));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    // Idempotency keys of this run (a setup run again over the same subjects sends new ones).
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut workers = Vec::new();
    for w in 0..args.setup_concurrency.max(1) {
        let client = gw.client(w);
        let next = next.clone();
        let done = progress.done.clone();
        let mut hist = histogram()?;
        workers.push(tokio::spawn(async move {
            let (mut errors, mut first_error) = (0u64, None::<String>);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let t0 = Instant::now();
                let jurisdiction = JURISDICTIONS[(n % JURISDICTIONS.len() as u64) as usize];
                let register = pb::RegisterRequest {
                    jurisdiction: jurisdiction.to_owned(),
                    identifiers: vec![email(n)],
                    idempotency_key: format!("load-setup-{run}-{n}-register"),
                };
                let registered = retried(|| {
                    let mut client = client.clone();
                    let request = register.clone();
                    async move { client.register(request).await }
                })
                .await;
                // Consent by link: the gateway routes it without resolving the identifier again.
                let result = match registered {
                    Ok(r) => {
                        let link = r.into_inner().links.into_iter().next().unwrap_or_default();
                        let selector =
                            Some(pb::SubjectSelector { selector: Some(pb::subject_selector::Selector::Link(link)) });
                        let mut grant = consent(selector, common::ConsentAction::Grant, &["email", "sms"]);
                        grant.idempotency_key = format!("load-setup-{run}-{n}-grant");
                        retried(|| {
                            let mut client = client.clone();
                            let request = grant.clone();
                            async move { client.record_consent(request).await }
                        })
                        .await
                        .map(|_| ())
                    }
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => record(&mut hist, t0.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| status(e));
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (hist, errors, first_error)
        }));
    }
    let mut hist = histogram()?;
    let (mut errors, mut first_error) = (0u64, None);
    for w in workers {
        let (h, e, f) = w.await.context("a setup worker failed")?;
        hist.add(&h).context("cannot merge histograms")?;
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    progress.finish();
    if errors == total {
        bail!("setup: every subject failed; first error: {}", first_error.unwrap_or_default());
    }
    let ok = total - errors;
    let mut extra = serde_json::Map::new();
    extra.insert("concurrency".into(), json!(args.setup_concurrency));
    extra.insert("jurisdictions".into(), json!(JURISDICTIONS));
    if let Some(e) = first_error {
        extra.insert("first_error".into(), Value::String(e));
    }
    Ok(Measured {
        unit: "subjects",
        ops: ok,
        errors,
        seconds,
        ops_per_sec: ok as f64 / seconds.max(1e-9),
        latency_of: "register + grant",
        latency: Latency::of(&hist),
        extra,
    })
}

/// The baseline: a tonic server with one unary method that answers a `DecideRequest` with a canned
/// `DecideResponse`, on loopback, with a throwaway CA issued the same way as the cluster's.
async fn echo(args: &LoadArgs, duration: Duration, rate: Option<f64>) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory for the echo PKI")?;
    let pki = ClusterPki::open_or_create(dir.path())?;
    let server_tls = TlsMaterial::load(&pki.gateway()?)?;
    let region = RegionId::parse("eu-central").map_err(|e| anyhow::anyhow!("{e}"))?;
    let client_tls = pki.caller(&CallerIdentity::new("load", region, &Scope::ALL)?)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot bind the echo server")?;
    let addr = listener.local_addr()?;
    let server = tonic::transport::Server::builder()
        .tls_config(server_tls.server())?
        .add_service(EchoService)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let server = tokio::spawn(server);
    let clients: Vec<tonic::client::Grpc<Channel>> =
        channels(addr, &client_tls, args.connections).await?.into_iter().map(tonic::client::Grpc::new).collect();
    let subjects = args.subjects;
    let measured = drive("echo", "calls", args.concurrency, duration, rate, move |w, n| {
        let mut client = clients[w % clients.len()].clone();
        async move {
            let request = decide_request(Pick::new((w as u64) << 32 | n).below(subjects), "email");
            client.ready().await.map_err(|e| e.to_string())?;
            let path = http::uri::PathAndQuery::from_static("/domicile.load.v1.Echo/Echo");
            let reply: tonic::Response<pb::DecideResponse> = client
                .unary(tonic::Request::new(request), path, tonic_prost::ProstCodec::default())
                .await
                .map_err(status)?;
            if reply.get_ref().decision.is_none() {
                return Err("echo returned no decision".to_owned());
            }
            Ok(1)
        }
    })
    .await;
    server.abort();
    measured
}

#[derive(Debug, Clone)]
struct EchoService;

impl tonic::server::NamedService for EchoService {
    const NAME: &'static str = "domicile.load.v1.Echo";
}

impl Service<http::Request<tonic::body::Body>> for EchoService {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(EchoUnary, request).await)
        })
    }
}

struct EchoUnary;

impl tonic::server::UnaryService<pb::DecideRequest> for EchoUnary {
    type Response = pb::DecideResponse;
    type Future = BoxFuture<tonic::Response<pb::DecideResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<pb::DecideRequest>) -> Self::Future {
        Box::pin(async move {
            let request = request.into_inner();
            // A decision-shaped reply echoing the request's fields. At about 60 bytes it is smaller
            // than a real decision (300-500 bytes with reasons, obligations and explanation); the
            // baseline is left that way rather than padded (BENCHMARKS.md).
            let decision = common::Decision {
                effect: common::Effect::Allow as i32,
                reasons: vec![format!("echo.{}.{}", request.purpose, request.channel)],
                explanation: "echo".to_owned(),
                subject_ref: "echo/0000000000000000".to_owned(),
                region: "echo".to_owned(),
                ..Default::default()
            };
            Ok(tonic::Response::new(pb::DecideResponse { decision: Some(decision) }))
        })
    }
}

async fn decide(gw: &Gateway, args: &LoadArgs, duration: Duration, rate: Option<f64>) -> anyhow::Result<Measured> {
    let clients = gw.clients.clone();
    let subjects = args.subjects;
    let allows = Arc::new(AtomicU64::new(0));
    let counted = allows.clone();
    let label = if rate.is_some() { "decide (rate-limited)" } else { "decide" };
    let mut m = drive(label, "decisions", args.concurrency, duration, rate, move |w, n| {
        let mut client = clients[w % clients.len()].clone();
        let allows = counted.clone();
        async move {
            let request = decide_request(Pick::new((w as u64) << 32 | n).below(subjects), "email");
            let reply = client.decide(request).await.map_err(status)?.into_inner();
            if is_allow(reply.decision.as_ref()) {
                allows.fetch_add(1, Ordering::Relaxed);
            }
            Ok(1)
        }
    })
    .await?;
    m.extra.insert("allows".into(), json!(allows.load(Ordering::Relaxed)));
    Ok(m)
}

async fn batch(gw: &Gateway, args: &LoadArgs, duration: Duration) -> anyhow::Result<Measured> {
    let channels = gw.channels.clone();
    let (subjects, size) = (args.subjects, args.batch_size.max(1));
    let item_errors = Arc::new(AtomicU64::new(0));
    let counted = item_errors.clone();
    // Fewer callers than for unary: each one already carries a whole batch.
    let concurrency = args.concurrency.clamp(1, 16);
    let mut m = drive("batch", "decisions", concurrency, duration, args.rate, move |w, n| {
        let mut grpc = tonic::client::Grpc::new(channels[w % channels.len()].clone());
        let item_errors = counted.clone();
        async move {
            let mut pick = Pick::new((w as u64) << 32 | n);
            let items: Vec<pb::DecideStreamItem> = (0..size as u64)
                .map(|id| pb::DecideStreamItem {
                    id,
                    subject: by_email(pick.below(subjects)),
                    purpose: PURPOSE.to_owned(),
                    channel: "email".to_owned(),
                    ..Default::default()
                })
                .collect();
            // Results read with each decision kept encoded (`RawOutcome`, wire-identical to
            // `DecideStreamResult`): the tool counts decisions and errors, and decoding every
            // decision's strings would cost the shared cores more than the gateway's forwarding.
            grpc.ready().await.map_err(|e| format!("gateway not ready: {e}"))?;
            let codec = tonic_prost::ProstCodec::<pb::DecideStreamItem, RawOutcome>::default();
            let path = http::uri::PathAndQuery::from_static(DECIDE_STREAM_PATH);
            let request = tonic::Request::new(tokio_stream::iter(items));
            let mut stream = grpc.streaming(request, path, codec).await.map_err(status)?.into_inner();
            let mut decisions = 0;
            while let Some(result) = stream.message().await.map_err(status)? {
                match result.result {
                    Some(RawResult::Decision(ref decision)) if !decision.is_empty() => decisions += 1,
                    _ => {
                        item_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(decisions)
        }
    })
    .await?;
    m.latency_of = "batch";
    m.extra.insert("batch_size".into(), json!(size));
    m.extra.insert("item_errors".into(), json!(item_errors.load(Ordering::Relaxed)));
    Ok(m)
}

async fn writes(gw: &Gateway, args: &LoadArgs, duration: Duration) -> anyhow::Result<Measured> {
    let clients = gw.clients.clone();
    let subjects = args.subjects;
    drive("writes", "writes", args.concurrency, duration, args.rate, move |w, n| {
        let mut client = clients[w % clients.len()].clone();
        async move {
            let subject = by_email(Pick::new((w as u64) << 32 | n).below(subjects));
            client
                .record_consent(consent(subject, common::ConsentAction::Grant, &["email", "sms"]))
                .await
                .map_err(status)?;
            Ok(1)
        }
    })
    .await
}

/// One at a time: grant sms, decide (must allow), withdraw sms, stamp the acknowledgement, decide
/// (must deny: a stale allow otherwise), then wait for the withdrawal's event on a Watch stream
/// opened before the run. Lag is event arrival minus acknowledgement (0 if the event won).
async fn withdrawal(gw: &Gateway, args: &LoadArgs) -> anyhow::Result<Measured> {
    let mut client = gw.client(0);
    // A connection of its own, as a separate subscriber would have.
    let watch_channel = channels(gw.addr, &gw.tls, 1).await?.into_iter().next().context("no watch connection")?;
    let mut watcher = DomicileClient::new(watch_channel);
    let mut stream = watcher
        .watch(pb::WatchRequest { resume_token: String::new() })
        .await
        .map_err(|s| anyhow::anyhow!("cannot open a Watch stream: {}", status(s)))?
        .into_inner();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String, Instant)>();
    let watch_task = tokio::spawn(async move {
        while let Ok(Some(event)) = stream.message().await {
            let arrived = Instant::now();
            if let Some(e) = event.event
                && e.kind == common::ChangeKind::Consent as i32
                && tx.send((e.subject_ref, e.state, arrived)).is_err()
            {
                break;
            }
        }
    });

    // The stream starts at the oldest retained events: drain them by waiting for a fresh sentinel
    // subject's consent event in every region (each region's events arrive in order).
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut pending = std::collections::HashSet::new();
    for (i, jurisdiction) in SENTINELS.iter().enumerate() {
        let id = common::Identifier { kind: "email".into(), value: format!("load-sentinel-{stamp}-{i}@example.test") };
        let r = client
            .register(pb::RegisterRequest {
                jurisdiction: (*jurisdiction).to_owned(),
                identifiers: vec![id],
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow::anyhow!("withdrawal: cannot register a sentinel: {}", status(s)))?
            .into_inner();
        let selector = Some(pb::SubjectSelector {
            selector: Some(pb::subject_selector::Selector::SubjectRef(r.subject_ref.clone())),
        });
        client
            .record_consent(consent(selector, common::ConsentAction::Grant, &["email"]))
            .await
            .map_err(|s| anyhow::anyhow!("withdrawal: cannot record a sentinel consent: {}", status(s)))?;
        pending.insert(r.subject_ref);
    }
    let drain = Progress::start("withdrawal: draining the Watch backlog".into(), None);
    let drained = tokio::time::timeout(Duration::from_secs(600), async {
        let mut n = 0u64;
        while !pending.is_empty() {
            let Some((subject, _, _)) = rx.recv().await else { return false };
            pending.remove(&subject);
            n += 1;
            drain.done.store(n, Ordering::Relaxed);
        }
        true
    })
    .await;
    drain.finish();
    if !matches!(drained, Ok(true)) {
        watch_task.abort();
        bail!("withdrawal: the Watch stream did not deliver the sentinel events");
    }

    let total = args.withdrawals.min(args.subjects);
    let progress = Progress::start(format!("withdrawal: {total} withdrawals"), Some(total));
    let (mut lag, mut ack, mut from_send) = (histogram()?, histogram()?, histogram()?);
    let (mut stale_allows, mut allows_before, mut missing_events, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let mut first_error = None::<String>;
    let start = Instant::now();
    // Email: no jurisdiction of the dataset limits it to calling hours (texts are under the US
    // TCPA hours), so "allowed before the withdrawal" does not depend on the time of day.
    for k in 0..total {
        let n = k;
        let step = async {
            client
                .record_consent(consent(by_email(n), common::ConsentAction::Grant, &["email"]))
                .await
                .map_err(status)?;
            let before = client.decide(decide_request(n, "email")).await.map_err(status)?.into_inner();
            let sent = Instant::now();
            let reply = client
                .record_consent(consent(by_email(n), common::ConsentAction::Withdraw, &["email"]))
                .await
                .map_err(status)?
                .into_inner();
            let acked = Instant::now();
            let after = client.decide(decide_request(n, "email")).await.map_err(status)?.into_inner();
            Ok::<_, String>((
                is_allow(before.decision.as_ref()),
                reply.subject_ref,
                sent,
                acked,
                is_allow(after.decision.as_ref()),
            ))
        };
        let (allowed_before, subject, sent, acked, allowed_after) = match step.await {
            Ok(v) => v,
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
                progress.done.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        record(&mut ack, acked - sent);
        allows_before += u64::from(allowed_before);
        stale_allows += u64::from(allowed_after);
        // Skip the grant's event; the withdrawal's is the first later one for this subject.
        let arrival = tokio::time::timeout(EVENT_TIMEOUT, async {
            while let Some((s, state, at)) = rx.recv().await {
                if s == subject && state != "granted" {
                    return Some(at);
                }
            }
            None
        })
        .await;
        match arrival {
            Ok(Some(at)) => {
                record(&mut lag, at.saturating_duration_since(acked));
                record(&mut from_send, at.saturating_duration_since(sent));
            }
            _ => missing_events += 1,
        }
        progress.done.fetch_add(1, Ordering::Relaxed);
    }
    let seconds = start.elapsed().as_secs_f64();
    progress.finish();
    watch_task.abort();
    let done = total - errors;
    if done == 0 && total > 0 {
        bail!("withdrawal: every step failed; first error: {}", first_error.unwrap_or_default());
    }
    let mut extra = serde_json::Map::new();
    extra.insert("stale_allows".into(), json!(stale_allows));
    extra.insert("allows_before_withdrawal".into(), json!(allows_before));
    extra.insert("missing_events".into(), json!(missing_events));
    extra.insert("withdrawal_ack_latency".into(), serde_json::to_value(Latency::of(&ack))?);
    // The event often beats the acknowledgement to the client (lag then counts as 0), so the
    // request-sent -> watcher time is reported as well.
    extra.insert("sent_to_watcher_latency".into(), serde_json::to_value(Latency::of(&from_send))?);
    if let Some(e) = first_error {
        extra.insert("first_error".into(), Value::String(e));
    }
    Ok(Measured {
        unit: "withdrawals",
        ops: done,
        errors,
        seconds,
        ops_per_sec: done as f64 / seconds.max(1e-9),
        latency_of: "ack -> watcher",
        latency: Latency::of(&lag),
        extra,
    })
}

// ---------------------------------------------------------------------------------------------
// Report

#[derive(Debug, Default)]
struct Report {
    gateway: Option<SocketAddr>,
    entries: Vec<(&'static str, Measured)>,
}

impl Report {
    fn push(&mut self, name: &'static str, m: Measured) {
        self.entries.push((name, m));
    }

    fn echo(&self) -> Option<&Measured> {
        self.entries.iter().find(|(n, _)| *n == "echo").map(|(_, m)| m)
    }

    fn ratios(&self, m: &Measured) -> Option<Value> {
        let echo = self.echo()?;
        let r = |a: f64, b: f64| if b > 0.0 { (a / b * 1000.0).round() / 1000.0 } else { 0.0 };
        Some(json!({
            "throughput": r(m.ops_per_sec, echo.ops_per_sec),
            "p50": r(m.latency.p50_us as f64, echo.latency.p50_us as f64),
            "p99": r(m.latency.p99_us as f64, echo.latency.p99_us as f64),
        }))
    }

    fn print(&self, as_json: bool) {
        if as_json {
            let mut scenarios = serde_json::Map::new();
            for (name, m) in &self.entries {
                let mut o = serde_json::Map::new();
                o.insert("unit".into(), json!(m.unit));
                o.insert("ops".into(), json!(m.ops));
                o.insert("errors".into(), json!(m.errors));
                o.insert("seconds".into(), json!(m.seconds));
                o.insert("ops_per_sec".into(), json!(m.ops_per_sec.round()));
                o.insert("latency_of".into(), json!(m.latency_of));
                o.insert("latency".into(), serde_json::to_value(&m.latency).unwrap_or(Value::Null));
                if let Some(r) = self.ratios(m) {
                    o.insert("ratio_to_echo".into(), r);
                }
                o.extend(m.extra.clone());
                scenarios.insert((*name).to_owned(), Value::Object(o));
            }
            let body = json!({
                "gateway": self.gateway.map(|a| a.to_string()),
                "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                "scenarios": scenarios,
            });
            println!("{body}");
            return;
        }
        println!(
            "{:<24} {:>11} {:>12} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8} {:>8}",
            "scenario", "ops", "ops/s", "p50", "p90", "p99", "max", "errors", "x echo", "p99/echo"
        );
        for (name, m) in &self.entries {
            let ratios = self.ratios(m);
            let ratio =
                |k: &str| ratios.as_ref().and_then(|r| r[k].as_f64()).map(|v| format!("{v:.3}")).unwrap_or_default();
            println!(
                "{:<24} {:>11} {:>12.0} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8} {:>8}",
                name,
                format!("{} {}", m.ops, short(m.unit)),
                m.ops_per_sec,
                us(m.latency.p50_us),
                us(m.latency.p90_us),
                us(m.latency.p99_us),
                us(m.latency.max_us),
                m.errors,
                ratio("throughput"),
                ratio("p99"),
            );
        }
        println!();
        for (name, m) in &self.entries {
            let extra: Vec<String> = m.extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("  {name}: latency of one {}; {}", m.latency_of, extra.join(", "));
        }
    }
}

fn short(unit: &str) -> &str {
    match unit {
        "decisions" => "dec",
        "subjects" => "subj",
        "withdrawals" => "wd",
        other => other,
    }
}

fn us(v: u64) -> String {
    if v >= 10_000 { format!("{:.1}ms", v as f64 / 1000.0) } else { format!("{v}us") }
}
