//! Where every process of a local cluster listens, decided before the first one starts.
//!
//! Every address is known up front (a map region → address, and one address per gateway), so a
//! process's configuration can name any other's, and a process restarted by a test or by
//! `cluster up` comes back where its peers and callers expect it.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::Context;
use domicile_types::RegionId;

use super::ClusterOptions;

/// Written in the cluster directory by `cluster up`: the ports it chose, reused at every start.
pub const ADDRESSES_FILE: &str = "addresses.toml";

/// Nodes always listen on loopback: only the gateways and local operators call them.
const NODE_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Lowest port of the pool fresh ports are drawn from; the pool ends where the kernel's
/// ephemeral range starts.
const POOL_LOW: u16 = 20_000;
/// Linux's default ephemeral range starts here; used when it cannot be read.
const DEFAULT_EPHEMERAL_LOW: u16 = 32_768;
/// Free ports tried for one address before giving up.
const PICK_ATTEMPTS: usize = 200;

/// How [`super::LocalCluster::start`] picks its processes' ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortChoice {
    /// `cluster up`: ports next to the first gateway's (50052, 50053, … when it listens on
    /// 50051) unless another process holds them, written to `<dir>/addresses.toml` at the first
    /// start and reused at every later one, so a node's address never changes. A remembered
    /// port held by another process is an error that names the file.
    Remembered,
    /// Tests, many clusters on one machine: free ports drawn afresh at every start from below the
    /// kernel's ephemeral range (so no outgoing connection and no port-0 listener of another test
    /// takes the port of a process that is being restarted); the whole start is retried on new
    /// ports when another process binds one first.
    Fresh,
}

/// Every listening address of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterAddresses {
    pub nodes: BTreeMap<RegionId, SocketAddr>,
    /// One per gateway; the first is the cluster's main gateway (`cluster.json`).
    pub gateways: Vec<SocketAddr>,
}

impl ClusterAddresses {
    /// The address of `region`'s node.
    pub fn node(&self, region: &RegionId) -> Option<SocketAddr> {
        self.nodes.get(region).copied()
    }
}

/// The addresses chosen for a start, with what an operator should be told about them.
#[derive(Debug)]
pub struct Plan {
    pub addresses: ClusterAddresses,
    /// Ports that could not be the default ones, said out loud.
    pub notes: Vec<String>,
}

/// The remembered ports of a `cluster up` directory.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Remembered {
    version: u32,
    /// Gateways after the first (the first listens on `--gateway-listen`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    extra_gateways: Vec<SocketAddr>,
    #[serde(default)]
    nodes: BTreeMap<RegionId, SocketAddr>,
}

fn remembered_path(dir: &Path) -> PathBuf {
    dir.join(ADDRESSES_FILE)
}

fn read_remembered(path: &Path) -> anyhow::Result<Remembered> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let file: Remembered = toml::from_str(&text).with_context(|| {
                format!("cannot parse {} (fix it, or delete it to choose every port again)", path.display())
            })?;
            anyhow::ensure!(file.version == 1, "{}: unsupported `version` (expected 1)", path.display());
            Ok(file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Remembered { version: 1, ..Remembered::default() }),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_remembered(path: &Path, file: &Remembered) -> anyhow::Result<()> {
    let text = toml::to_string_pretty(file)?;
    let header = "# Ports of this local cluster, chosen at its first `domicile cluster up` and kept so that\n\
                  # every node (and extra gateway) listens on the same address at every start.\n\
                  # Delete a line (or the file) to have the next `cluster up` choose that port again.\n";
    std::fs::write(path, format!("{header}{text}")).with_context(|| format!("cannot write {}", path.display()))
}

/// Whether a server could listen on `addr` now (with `SO_REUSEADDR`, as nodes and gateways bind,
/// so connections of an earlier run lingering in TIME_WAIT do not count as taken).
pub(super) async fn is_free(addr: SocketAddr) -> bool {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    };
    let Ok(socket) = socket else { return false };
    socket.set_reuseaddr(true).is_ok() && socket.bind(addr).is_ok() && socket.listen(1).is_ok()
}

/// Start of the kernel's ephemeral port range (Linux), where port-0 binds and outgoing
/// connections take their local ports.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next().and_then(|low| low.parse().ok()))
        .unwrap_or(DEFAULT_EPHEMERAL_LOW)
}

/// Ports this process has drawn from the pool: never handed out twice, so clusters started side
/// by side in one process (parallel tests) never race each other for a port, nor take the port
/// of another's process while it is being restarted.
static DRAWN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A free port on `ip` that is not in `taken`: drawn at random from below the ephemeral range,
/// or, when that range leaves no room, from the kernel (port 0).
async fn pick_free(ip: IpAddr, taken: &BTreeSet<u16>) -> anyhow::Result<SocketAddr> {
    let high = ephemeral_low();
    if high > POOL_LOW + 1_000 {
        let random = RandomState::new();
        for attempt in 0..PICK_ATTEMPTS {
            let offset = random.hash_one(attempt) % u64::from(high - POOL_LOW);
            let port = POOL_LOW + u16::try_from(offset).unwrap_or(0);
            let addr = SocketAddr::new(ip, port);
            let drawn = DRAWN.lock().unwrap_or_else(PoisonError::into_inner).contains(&port);
            if !drawn && !taken.contains(&port) && is_free(addr).await {
                // Another task may have drawn it meanwhile: the set decides.
                if DRAWN.lock().unwrap_or_else(PoisonError::into_inner).insert(port) {
                    return Ok(addr);
                }
            }
        }
    }
    for _ in 0..PICK_ATTEMPTS {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .with_context(|| format!("cannot find a free port on {ip}"))?;
        let addr = listener.local_addr()?;
        if !taken.contains(&addr.port()) {
            return Ok(addr);
        }
    }
    anyhow::bail!("cannot find a free port on {ip}")
}

/// The first free port after `after` on `ip` that is not in `taken`, within a few hundred ports.
async fn next_free(ip: IpAddr, after: u16, taken: &BTreeSet<u16>) -> Option<SocketAddr> {
    let mut port = after;
    for _ in 0..PICK_ATTEMPTS {
        port = port.checked_add(1)?;
        let addr = SocketAddr::new(ip, port);
        if !taken.contains(&port) && is_free(addr).await {
            return Some(addr);
        }
    }
    None
}

/// Chooses every address of a cluster before any process starts.
pub(super) async fn plan(options: &ClusterOptions, dir: &Path) -> anyhow::Result<Plan> {
    match options.ports {
        PortChoice::Fresh => plan_fresh(options).await,
        PortChoice::Remembered => plan_remembered(options, dir).await,
    }
}

async fn plan_fresh(options: &ClusterOptions) -> anyhow::Result<Plan> {
    let mut taken = BTreeSet::new();
    let mut gateways = Vec::new();
    for index in 0..options.gateway_count() {
        let addr = match (index, options.gateway_listen) {
            (0, listen) if listen.port() != 0 => listen,
            (_, listen) => pick_free(listen.ip(), &taken).await?,
        };
        taken.insert(addr.port());
        gateways.push(addr);
    }
    let mut nodes = BTreeMap::new();
    for region in &options.regions {
        let addr = pick_free(NODE_IP, &taken).await?;
        taken.insert(addr.port());
        nodes.insert(region.clone(), addr);
    }
    Ok(Plan { addresses: ClusterAddresses { nodes, gateways }, notes: Vec::new() })
}

/// A remembered address that another process holds: say which, and how to get out of it.
fn taken_error(what: &str, addr: SocketAddr, file: &Path, key: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what}'s address {addr} is in use by another process. {what} keeps this address across restarts \
         (remembered in {}): stop the process holding it (`ss -ltnp 'sport = :{}'` names it), or delete the \
         `{key}` entry from that file to have `cluster up` choose a new port",
        file.display(),
        addr.port()
    )
}

/// Picks ports for `cluster up` processes that have none remembered yet.
struct Chooser {
    /// The last port handed out next to the first gateway's; `None` when that one was itself
    /// chosen freely (`--gateway-listen` with port 0), so there is nothing to be next to.
    cursor: Option<u16>,
    notes: Vec<String>,
    file: PathBuf,
}

impl Chooser {
    async fn choose(&mut self, what: &str, ip: IpAddr, taken: &BTreeSet<u16>) -> anyhow::Result<SocketAddr> {
        let next = match self.cursor {
            Some(after) => next_free(ip, after, taken).await,
            None => None,
        };
        let addr = match next {
            Some(addr) => addr,
            None => pick_free(ip, taken).await?,
        };
        if let Some(after) = self.cursor {
            // The default was the first port after the last one handed out that this cluster
            // does not use itself; say so when another process held it.
            let default = (after.saturating_add(1)..=u16::MAX).find(|p| !taken.contains(p));
            if let Some(default) = default.filter(|d| *d != addr.port()) {
                self.notes.push(format!(
                    "port {default} is in use by another process: {what} listens on {addr} instead (remembered in {})",
                    self.file.display()
                ));
            }
            self.cursor = Some(addr.port());
        }
        Ok(addr)
    }
}

async fn plan_remembered(options: &ClusterOptions, dir: &Path) -> anyhow::Result<Plan> {
    let path = remembered_path(dir);
    let mut remembered = read_remembered(&path)?;
    let before = toml::to_string(&remembered)?;

    let first = options.gateway_listen;
    let mut taken: BTreeSet<u16> =
        remembered.nodes.values().chain(&remembered.extra_gateways).map(|a| a.port()).collect();
    let first = if first.port() == 0 {
        pick_free(first.ip(), &taken).await?
    } else if is_free(first).await {
        first
    } else {
        anyhow::bail!(
            "the gateway's address {first} is in use by another process (another local cluster, or an earlier \
             gateway still running?); stop it or pass --gateway-listen with another address"
        );
    };
    taken.insert(first.port());

    // Ports next to the first gateway's, in topology order, then the extra gateways'.
    let mut chooser = Chooser {
        cursor: (options.gateway_listen.port() != 0).then_some(first.port()),
        notes: Vec::new(),
        file: path.clone(),
    };
    let mut nodes = BTreeMap::new();
    for region in &options.regions {
        let what = format!("node {region}");
        let addr = match remembered.nodes.get(region) {
            Some(addr) if is_free(*addr).await => *addr,
            Some(addr) => return Err(taken_error(&what, *addr, &path, region.as_str())),
            None => {
                let addr = chooser.choose(&what, NODE_IP, &taken).await?;
                remembered.nodes.insert(region.clone(), addr);
                addr
            }
        };
        taken.insert(addr.port());
        nodes.insert(region.clone(), addr);
    }
    let mut gateways = vec![first];
    for index in 1..options.gateway_count() {
        let what = format!("gateway {}", index + 1);
        let addr = match remembered.extra_gateways.get(index - 1) {
            Some(addr) if is_free(*addr).await => *addr,
            Some(addr) => return Err(taken_error(&what, *addr, &path, &format!("extra_gateways[{}]", index - 1))),
            None => {
                let addr = chooser.choose(&what, first.ip(), &taken).await?;
                remembered.extra_gateways.push(addr);
                addr
            }
        };
        taken.insert(addr.port());
        gateways.push(addr);
    }
    if toml::to_string(&remembered)? != before {
        write_remembered(&path, &remembered)?;
    }
    Ok(Plan { addresses: ClusterAddresses { nodes, gateways }, notes: chooser.notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remembered_file_round_trips() {
        let file = Remembered {
            version: 1,
            extra_gateways: vec!["127.0.0.1:50055".parse().unwrap()],
            nodes: [("eu-central", "127.0.0.1:50052"), ("us-east", "127.0.0.1:50053")]
                .into_iter()
                .map(|(r, a)| (RegionId::parse(r).unwrap(), a.parse().unwrap()))
                .collect(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ADDRESSES_FILE);
        write_remembered(&path, &file).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("eu-central = \"127.0.0.1:50052\""), "{text}");
        let back = read_remembered(&path).unwrap();
        assert_eq!(back.nodes, file.nodes);
        assert_eq!(back.extra_gateways, file.extra_gateways);
    }

    #[tokio::test]
    async fn fresh_ports_are_distinct_free_and_below_the_ephemeral_range() {
        let mut taken = BTreeSet::new();
        for _ in 0..20 {
            let addr = pick_free(NODE_IP, &taken).await.unwrap();
            assert!(taken.insert(addr.port()), "{addr} drawn twice");
            assert!(addr.port() < ephemeral_low() || ephemeral_low() <= POOL_LOW + 1_000, "{addr}");
        }
        let held = tokio::net::TcpListener::bind((NODE_IP, 0)).await.unwrap();
        assert!(!is_free(held.local_addr().unwrap()).await);
    }
}
