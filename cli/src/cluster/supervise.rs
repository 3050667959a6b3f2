//! `cluster up` as a supervisor: it keeps every process running and takes operator requests.
//!
//! Each process has a keeper task that owns the child. When the child exits on its own (a crash,
//! a kill -9) the keeper starts it again with the same configuration, so on the same address and
//! data, after a back-off that doubles from [`BACKOFF_FIRST`] up to [`BACKOFF_MAX`] and starts
//! over once the process has served for [`STABLE_AFTER`]; a start that fails counts as one more
//! exit. The other processes are not touched: the gateways keep serving the other regions, and
//! reconnect to the region when it is back. Every change is logged on `cluster up`'s output and
//! written to `supervisor.json`, which `cluster status` reads.
//!
//! **Control path.** `cluster up` listens on a Unix socket: `control.sock` in the cluster
//! directory (only the user may connect: the socket is 0600), or, when that path is too long for
//! a socket address, a socket in the user's runtime directory (or the temporary directory) named
//! by `supervisor.json`. `cluster stop-region` / `start-region` connect, send one JSON line
//! (`{"command":"stop-region","region":"us-east"}`) and read one JSON line
//! (`{"ok":true,"message":"…"}`) once the request is done: a stopped node has exited (SIGTERM:
//! it flushed), a started one serves. A region stopped this way stays stopped (no restart)
//! until `start-region`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use domicile_runtime::process::shutdown_signal;
use domicile_types::RegionId;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::{Launch, LocalCluster, Process, absolute, stop_process};

/// Written by `cluster up` while it runs, so `status`, `down` and the control commands find it.
pub const SUPERVISOR_FILE: &str = "supervisor.json";
/// The control socket's name in the cluster directory.
const CONTROL_SOCKET: &str = "control.sock";
/// Longest socket path used in the cluster directory (`sun_path` holds 108 bytes).
const MAX_SOCKET_PATH: usize = 100;
/// Wait before the first restart of a process that exited on its own.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// The back-off doubles up to this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A process that served this long before exiting is restarted after [`BACKOFF_FIRST`] again.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long a control command waits for its answer: a start waits for readiness.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(120);

/// What the supervisor is doing with a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    Running,
    /// It exited on its own (or did not start); the next start is due after a back-off.
    Restarting,
    /// Stopped by `cluster stop-region`; started again only by `cluster start-region`.
    Stopped,
}

/// One process in `supervisor.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SupervisedProcess {
    /// `node-<region>`, `gateway`, `gateway-2`, …
    pub name: String,
    pub region: Option<RegionId>,
    pub addr: SocketAddr,
    /// While it runs.
    pub pid: Option<u32>,
    pub log: PathBuf,
    pub state: ProcessState,
    /// Times it exited on its own (and was restarted, or is being restarted).
    pub restarts: u32,
    /// How it last exited on its own, or why it last failed to start.
    pub last_exit: Option<String>,
}

/// `supervisor.json`: written by `cluster up` at start and at every change, removed when it stops.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SupervisorFile {
    /// The `cluster up` process; SIGTERM makes it stop the gateways, then the nodes.
    pub pid: u32,
    /// Its control socket.
    pub control: PathBuf,
    pub gateways: Vec<SupervisedProcess>,
    pub nodes: Vec<SupervisedProcess>,
}

pub(super) fn read_supervisor(path: &Path) -> anyhow::Result<Option<SupervisorFile>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Replaces `path` in one step, so a reader never sees half a file.
fn write_supervisor(path: &Path, file: &SupervisorFile) -> anyhow::Result<()> {
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, serde_json::to_vec_pretty(file)?)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))
}

pub(super) fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    // Signal 0 checks existence only; EPERM still means the process exists.
    if matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None), Err(nix::errno::Errno::ESRCH)) {
        return false;
    }
    // A zombie has exited but still answers signal 0 until its parent reaps it (Linux only).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

/// The pids in a `supervisor.json`, read leniently (a file left by another version still names
/// them).
#[derive(Debug, serde::Deserialize)]
struct Pids {
    pid: u32,
    #[serde(default)]
    gateways: Vec<ChildPid>,
    #[serde(default)]
    gateway: Option<ChildPid>,
    #[serde(default)]
    nodes: Vec<ChildPid>,
}

#[derive(Debug, serde::Deserialize)]
struct ChildPid {
    pid: Option<u32>,
}

/// Refuses to go on when a `cluster up` runs from `dir`, or when processes an earlier one started
/// from `dir` still run (it was killed and could not stop them): they hold its ports and data.
pub(super) fn ensure_not_running(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(SUPERVISOR_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let Ok(file) = serde_json::from_str::<Pids>(&text) else { return Ok(()) };
    if pid_alive(file.pid) {
        bail!(
            "a cluster is already running from {} (pid {}): `domicile cluster status --dir {0}` shows it, \
             `domicile cluster down --dir {0}` stops it",
            dir.display(),
            file.pid
        );
    }
    // Only pids whose command line names this directory's configs: a pid may have been reused.
    let config_dir = dir.join("config");
    let config_dir = config_dir.to_string_lossy();
    let leftovers: Vec<String> = file
        .gateways
        .iter()
        .chain(&file.gateway)
        .chain(&file.nodes)
        .filter_map(|child| child.pid)
        .filter(|pid| pid_alive(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(config_dir.as_ref()))
        })
        .map(|pid| pid.to_string())
        .collect();
    if !leftovers.is_empty() {
        bail!(
            "processes started by an earlier `cluster up` from {} are still running (pids {}): it was killed \
             before it could stop them, and they hold the cluster's ports and data. Stop them with `kill {}` \
             and run `cluster up` again",
            dir.display(),
            leftovers.join(", "),
            leftovers.join(" ")
        );
    }
    Ok(())
}

/// Where the control socket of the cluster in `dir` lives.
fn socket_path(dir: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let path = dir.join(CONTROL_SOCKET);
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return path;
    }
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let mut hasher = std::hash::DefaultHasher::new();
    dir.hash(&mut hasher);
    base.join(format!("domicile-{:016x}.sock", hasher.finish()))
}

/// The supervisor's end of the control path.
pub(super) struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Listens on the control socket of the cluster in `dir` (replacing one left by a `cluster
    /// up` that did not stop cleanly; the caller has checked that none runs).
    pub(super) fn bind(dir: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let path = socket_path(dir);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot remove the old control socket {}", path.display()));
            }
        }
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on the control socket {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
        Ok(Self { listener, path })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What an operator asks the running `cluster up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum ControlCommand {
    StopRegion,
    StartRegion,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ControlRequest {
    command: ControlCommand,
    region: RegionId,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ControlReply {
    ok: bool,
    message: String,
}

/// Sends `command` for `region` to the `cluster up` running from `dir`; returns its answer once
/// the request is done.
pub(super) async fn request(dir: &Path, command: ControlCommand, region: &RegionId) -> anyhow::Result<String> {
    let dir = absolute(dir);
    let file = read_supervisor(&dir.join(SUPERVISOR_FILE))?.filter(|file| pid_alive(file.pid)).with_context(|| {
        format!("no cluster is running from {} (start one with `domicile cluster up`)", dir.display())
    })?;
    let stream = UnixStream::connect(&file.control)
        .await
        .with_context(|| format!("cannot reach the running `cluster up` on {}", file.control.display()))?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(&ControlRequest { command, region: region.clone() })?;
    line.push('\n');
    write.write_all(line.as_bytes()).await.context("cannot send the request to `cluster up`")?;
    let mut answer = String::new();
    tokio::time::timeout(CONTROL_TIMEOUT, BufReader::new(read).read_line(&mut answer))
        .await
        .with_context(|| format!("`cluster up` did not answer within {CONTROL_TIMEOUT:?}"))?
        .context("cannot read the answer of `cluster up`")?;
    anyhow::ensure!(!answer.is_empty(), "`cluster up` closed the connection without answering (is it stopping?)");
    let reply: ControlReply = serde_json::from_str(&answer).context("cannot parse the answer of `cluster up`")?;
    if reply.ok { Ok(reply.message) } else { bail!("{}", reply.message) }
}

/// A control request handed to a keeper, with where its answer goes.
struct Order {
    command: ControlCommand,
    reply: oneshot::Sender<Result<String, String>>,
}

/// The shared `supervisor.json`, rewritten at every change.
#[derive(Clone)]
struct Board {
    path: PathBuf,
    file: Arc<Mutex<SupervisorFile>>,
}

impl Board {
    fn update(&self, name: &str, change: impl FnOnce(&mut SupervisedProcess)) {
        let Ok(mut file) = self.file.lock() else { return };
        let file = &mut *file;
        if let Some(entry) = file.gateways.iter_mut().chain(file.nodes.iter_mut()).find(|p| p.name == name) {
            change(entry);
        }
        if let Err(e) = write_supervisor(&self.path, file) {
            eprintln!("warning: {e:#}");
        }
    }
}

fn entry(process: &Process) -> SupervisedProcess {
    SupervisedProcess {
        name: process.name.clone(),
        region: process.region.clone(),
        addr: process.addr,
        pid: process.pid(),
        log: process.log.clone(),
        state: ProcessState::Running,
        restarts: 0,
        last_exit: None,
    }
}

/// The wait before start number `failures + 1` in a row.
fn backoff(failures: u32) -> Duration {
    BACKOFF_FIRST.saturating_mul(1u32 << failures.min(16)).min(BACKOFF_MAX)
}

/// Resolves once the supervisor asks its keepers to stop (or is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn seconds(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}

/// A running cluster under supervision.
pub(super) struct Supervisor {
    dir: PathBuf,
    control: ControlSocket,
    board: Board,
    stop_gateways: watch::Sender<bool>,
    stop_nodes: watch::Sender<bool>,
    gateways: Vec<tokio::task::JoinHandle<()>>,
    nodes: Vec<tokio::task::JoinHandle<()>>,
    regions: Arc<BTreeMap<RegionId, mpsc::Sender<Order>>>,
    /// The regions' PostgreSQL server (`--store postgres`): stopped after the nodes.
    database: Option<super::ClusterDatabase>,
}

impl Supervisor {
    /// Takes over `cluster`'s processes: writes `supervisor.json` and starts one keeper each.
    pub(super) fn new(mut cluster: LocalCluster, control: ControlSocket) -> anyhow::Result<Self> {
        let nodes = std::mem::take(&mut cluster.nodes);
        let gateways = std::mem::take(&mut cluster.gateways);
        let database = cluster.database.take();
        let path = cluster.dir.join(SUPERVISOR_FILE);
        let file = SupervisorFile {
            pid: std::process::id(),
            control: control.path.clone(),
            gateways: gateways.iter().map(entry).collect(),
            nodes: nodes.values().map(entry).collect(),
        };
        write_supervisor(&path, &file)?;
        let board = Board { path, file: Arc::new(Mutex::new(file)) };
        let (stop_gateways, gateways_stop) = watch::channel(false);
        let (stop_nodes, nodes_stop) = watch::channel(false);
        let mut regions = BTreeMap::new();
        let mut node_tasks = Vec::new();
        for (region, process) in nodes {
            let (orders, inbox) = mpsc::channel(4);
            regions.insert(region, orders);
            node_tasks.push(tokio::spawn(Keeper::new(process, board.clone()).run(inbox, nodes_stop.clone())));
        }
        let mut gateway_tasks = Vec::new();
        for process in gateways {
            // Gateways take no orders: their inbox is closed from the start.
            let (_, inbox) = mpsc::channel(1);
            gateway_tasks.push(tokio::spawn(Keeper::new(process, board.clone()).run(inbox, gateways_stop.clone())));
        }
        Ok(Self {
            dir: cluster.dir.clone(),
            control,
            board,
            stop_gateways,
            stop_nodes,
            gateways: gateway_tasks,
            nodes: node_tasks,
            regions: Arc::new(regions),
            database,
        })
    }

    /// Serves control requests until SIGINT/SIGTERM, then stops the gateways, then the nodes.
    pub(super) async fn run(self) -> anyhow::Result<()> {
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.control.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(serve_control(stream, Arc::clone(&self.regions)));
                    }
                    Err(e) => {
                        eprintln!("warning: control socket: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        println!("\nStopping...");
        let _ = self.stop_gateways.send(true);
        for task in self.gateways {
            let _ = task.await;
        }
        let _ = self.stop_nodes.send(true);
        for task in self.nodes {
            let _ = task.await;
        }
        if let Some(database) = self.database {
            let _ = tokio::task::spawn_blocking(move || database.server().stop()).await;
        }
        drop(self.board);
        let _ = std::fs::remove_file(self.dir.join(SUPERVISOR_FILE));
        Ok(())
    }
}

async fn serve_control(stream: UnixStream, regions: Arc<BTreeMap<RegionId, mpsc::Sender<Order>>>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), BufReader::new(read.take(4096)).read_line(&mut line)).await;
    let outcome = match read {
        Ok(Ok(_)) => handle(&line, &regions).await,
        _ => Err("no request received".to_owned()),
    };
    let reply = match outcome {
        Ok(message) => ControlReply { ok: true, message },
        Err(message) => ControlReply { ok: false, message },
    };
    if let Ok(mut text) = serde_json::to_string(&reply) {
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
    }
}

async fn handle(line: &str, regions: &BTreeMap<RegionId, mpsc::Sender<Order>>) -> Result<String, String> {
    let request: ControlRequest = serde_json::from_str(line).map_err(|e| format!("bad control request: {e}"))?;
    let Some(orders) = regions.get(&request.region) else {
        let known: Vec<&str> = regions.keys().map(RegionId::as_str).collect();
        return Err(format!("this cluster has no region {} (its regions: {})", request.region, known.join(", ")));
    };
    let gone = || "the cluster is stopping".to_owned();
    let (reply, answer) = oneshot::channel();
    orders.send(Order { command: request.command, reply }).await.map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

/// Keeps one process running.
struct Keeper {
    launch: Launch,
    board: Board,
    current: Option<Process>,
    /// When the current process became ready.
    since: Instant,
    /// Exits and failed starts in a row, for the back-off.
    failures: u32,
    /// Times it exited on its own.
    restarts: u32,
    /// When the next start is due; `None` while it runs or while it is stopped on request.
    restart_at: Option<Instant>,
}

impl Keeper {
    fn new(process: Process, board: Board) -> Self {
        Self {
            launch: process.launch.clone(),
            board,
            current: Some(process),
            since: Instant::now(),
            failures: 0,
            restarts: 0,
            restart_at: None,
        }
    }

    fn region_hint(&self) -> String {
        self.launch.region.as_ref().map(|r| r.to_string()).unwrap_or_default()
    }

    async fn run(mut self, mut orders: mpsc::Receiver<Order>, mut shutdown: watch::Receiver<bool>) {
        let label = self.launch.label();
        let name = self.launch.name.clone();
        loop {
            if let Some(process) = self.current.as_mut() {
                tokio::select! {
                    status = process.child.wait() => {
                        let exit = match status {
                            Ok(status) => status.to_string(),
                            Err(e) => format!("cannot tell how: {e}"),
                        };
                        self.current = None;
                        if self.since.elapsed() >= STABLE_AFTER {
                            self.failures = 0;
                        }
                        let delay = backoff(self.failures);
                        self.failures = self.failures.saturating_add(1);
                        self.restarts = self.restarts.saturating_add(1);
                        self.restart_at = Some(Instant::now() + delay);
                        eprintln!("{label} exited on its own ({exit}): restarting it in {}", seconds(delay));
                        let restarts = self.restarts;
                        self.board.update(&name, |entry| {
                            entry.state = ProcessState::Restarting;
                            entry.pid = None;
                            entry.restarts = restarts;
                            entry.last_exit = Some(exit);
                        });
                    }
                    Some(order) = orders.recv() => match order.command {
                        ControlCommand::StopRegion => {
                            let stopped = stop_process(process).await;
                            self.current = None;
                            self.stopped(&name, order, &format!("stopped {label} ({})", stopped.describe()));
                        }
                        ControlCommand::StartRegion => {
                            let _ = order.reply.send(Ok(format!("{label} is already running on {}", self.launch.addr)));
                        }
                    },
                    () = stopping(&mut shutdown) => {
                        stop_process(process).await;
                        return;
                    }
                }
            } else {
                let due = self.restart_at;
                let wake = async move {
                    match due {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = wake => {
                        if self.start(&label, &name, &mut shutdown).await.is_none() {
                            return;
                        }
                    }
                    Some(order) = orders.recv() => match order.command {
                        ControlCommand::StopRegion => {
                            let message = match self.restart_at {
                                Some(_) => format!("{label} was down, waiting to be restarted: it stays stopped"),
                                None => format!("{label} is already stopped"),
                            };
                            self.stopped(&name, order, &message);
                        }
                        ControlCommand::StartRegion => match self.start(&label, &name, &mut shutdown).await {
                            Some(outcome) => {
                                let _ = order.reply.send(outcome);
                            }
                            None => return,
                        },
                    },
                    () = stopping(&mut shutdown) => return,
                }
            }
        }
    }

    /// Records a stop on request and answers it.
    fn stopped(&mut self, name: &str, order: Order, message: &str) {
        self.restart_at = None;
        self.failures = 0;
        self.board.update(name, |entry| {
            entry.state = ProcessState::Stopped;
            entry.pid = None;
        });
        let message =
            format!("{message}; it stays stopped until `domicile cluster start-region {}`", self.region_hint());
        println!("{message}");
        let _ = order.reply.send(Ok(message));
    }

    /// Starts the process on its address; on failure schedules the next attempt after a
    /// back-off. `None` when the supervisor shut down meanwhile.
    async fn start(
        &mut self,
        label: &str,
        name: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Result<String, String>> {
        let started = tokio::select! {
            started = self.launch.spawn() => started,
            () = stopping(shutdown) => return None,
        };
        match started {
            Ok(process) => {
                let pid = process.pid();
                self.current = Some(process);
                self.since = Instant::now();
                self.restart_at = None;
                self.board.update(name, |entry| {
                    entry.state = ProcessState::Running;
                    entry.pid = pid;
                });
                let pid = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
                let message = format!("{label} serves on {}{pid}", self.launch.addr);
                println!("{message}");
                Some(Ok(message))
            }
            Err(e) => {
                let delay = backoff(self.failures);
                self.failures = self.failures.saturating_add(1);
                self.restart_at = Some(Instant::now() + delay);
                let why = format!("{e:#}");
                let message = format!("{label} did not start: {why}; next attempt in {}", seconds(delay));
                eprintln!("{message}");
                self.board.update(name, |entry| {
                    entry.state = ProcessState::Restarting;
                    entry.pid = None;
                    entry.last_exit = Some(why);
                });
                Some(Err(message))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let waits: Vec<Duration> = (0..8).map(backoff).collect();
        assert_eq!(waits[0], BACKOFF_FIRST);
        assert_eq!(waits[1], BACKOFF_FIRST * 2);
        assert_eq!(waits[2], BACKOFF_FIRST * 4);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(backoff(7), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn long_cluster_paths_get_a_short_socket_elsewhere() {
        let short = std::env::temp_dir().join("c");
        assert_eq!(socket_path(&short), short.join("control.sock"));
        let long = std::env::temp_dir().join("d".repeat(120));
        let path = socket_path(&long);
        assert!(path.as_os_str().len() < 108, "{}", path.display());
        assert_eq!(path, socket_path(&long), "the same directory always gets the same socket");
    }
}
