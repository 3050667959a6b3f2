//! Mutual TLS for every hop (rustls with the ring provider only).

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// How long a new connection may take to complete its TLS handshake before it is dropped, so
/// half-open connections cannot pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in flight from one source ([`source_of`]); a connection beyond is closed at once. A
/// peer needs no certificate to open connections that never finish their handshake: without a
/// bound each holds a task and its buffers for [`HANDSHAKE_TIMEOUT`], as many as it opens. A
/// legitimate client's handshakes take milliseconds, so even a proxy in front of many clients
/// rarely reaches this.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 64;
/// Handshakes in flight in all (many source addresses): beyond, new connections are closed.
pub const MAX_HANDSHAKES: usize = 4096;
/// Open connections in all, each holding TLS and HTTP/2 buffers; beyond, new ones are closed at
/// once (and counted against no one: the caller retries).
pub const MAX_CONNECTIONS: usize = 16_384;
/// Connections open or handshaking from one source ([`source_of`]: an IPv4 address, or an IPv6
/// /64, which one peer holds whole); beyond, new ones are closed at once. Without it, one peer
/// could hold all [`MAX_CONNECTIONS`] and shut every other caller out, and it needs no
/// certificate to (the gateway serves callers with tokens and without one). A proxy or NAT in
/// front of many clients holds a few per client. Sixteen sources together still reach
/// [`MAX_CONNECTIONS`]: this bounds one peer, not many.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 1024;

/// How often a server pings a connection's peer over HTTP/2 when the connection is idle, and how
/// long it waits for the answer before closing it: a peer gone without a word (a NAT or firewall
/// that dropped the flow, a host switched off) gives back its connection and its place in its
/// source's bound ([`MAX_CONNECTIONS_PER_ADDRESS`]) within a minute, instead of holding them until
/// the server restarts. Applied by the gateway's and the node's servers.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The source a connection is counted against: an IPv4 address (also one mapped into IPv6), or
/// the /64 an IPv6 address is in.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

/// Connections open or handshaking per source, shared with each connection's [`SourceSlot`].
type OpenPerSource = Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>;

fn counts(open: &OpenPerSource) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
    open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A connection's place among its source's ([`MAX_CONNECTIONS_PER_ADDRESS`]), given back when it
/// closes (or its handshake fails).
struct SourceSlot {
    open: OpenPerSource,
    source: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = counts(&self.open);
        if let Some(count) = open.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// Installs ring as the process-wide rustls provider. Must run before any TLS config is built;
/// repeated calls are harmless. Without it, a second provider pulled in by some dependency would
/// make rustls panic at the first server handshake.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Where a process finds its TLS material.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA that signs every certificate of the cluster; peers must chain to it.
    pub ca: PathBuf,
    /// This process's certificate chain (PEM).
    pub cert: PathBuf,
    /// This process's private key (PEM, PKCS#8).
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read TLS {what} file {path}: {source}")]
pub struct TlsFileError {
    what: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    let error = |source| TlsFileError { what, path: path.to_owned(), source };
    let bytes = std::fs::read(path).map_err(error)?;
    crate::process::check_file_mode(path, what == "key").map_err(error)?;
    Ok(bytes)
}

/// Loaded PEM material.
#[derive(Clone)]
pub struct TlsMaterial {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsMaterial(<redacted>)")
    }
}

impl TlsMaterial {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsFileError> {
        Ok(Self { ca: read("ca", &files.ca)?, cert: read("cert", &files.cert)?, key: read("key", &files.key)? })
    }

    /// Server side: present our identity and require a client certificate from the cluster CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }

    /// Server side for [`incoming`]: our identity, client certificates verified against the
    /// cluster CA. With [`ClientAuth::Optional`] a caller may connect without one, so that the
    /// service can refuse it with a precise status instead of an opaque handshake failure.
    pub fn acceptor(&self, client_auth: ClientAuth) -> Result<TlsAcceptor, TlsConfigError> {
        let bad = |what: &'static str| move |e: rustls_pki_types::pem::Error| TlsConfigError(format!("{what}: {e}"));
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&self.ca) {
            roots
                .add(ca.map_err(bad("CA certificate"))?)
                .map_err(|e| TlsConfigError(format!("CA certificate: {e}")))?;
        }
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
        let verifier = match client_auth {
            ClientAuth::Required => verifier,
            ClientAuth::Optional => verifier.allow_unauthenticated(),
        }
        .build()
        .map_err(|e| TlsConfigError(format!("client verifier: {e}")))?;
        let chain =
            CertificateDer::pem_slice_iter(&self.cert).collect::<Result<Vec<_>, _>>().map_err(bad("certificate"))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(bad("private key"))?;
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| TlsConfigError(format!("certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsAcceptor(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }

    /// Client side: trust only the cluster CA, present our identity, and insist the server's
    /// certificate names `server_name` (for nodes: their region's name).
    pub fn client(&self, server_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(server_name)
    }
}

/// Whether a server insists on a client certificate during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    Optional,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid TLS material: {0}")]
pub struct TlsConfigError(String);

/// The server half of mutual TLS (see [`TlsMaterial::acceptor`]).
#[derive(Clone)]
pub struct TlsAcceptor(tokio_rustls::TlsAcceptor);

/// Mutually authenticated connections accepted on `listener`, for tonic's
/// `serve_with_incoming*` on a server built *without* `tls_config`.
///
/// Why not tonic's own TLS: its TLS stream reports vectored writes, and h2 then sends every DATA
/// payload above 256 bytes as its own write instead of copying it into the connection's send
/// buffer. A decision reply is 300–500 bytes, so each reply became one `writev` and one TLS
/// record, and one loopback packet: about one syscall per decision at 40,000 decisions/s.
/// [`TlsConn`] reports plain writes, which raises h2's threshold to 1 KiB, so replies that
/// complete together leave in one write. Handshakes run concurrently, each bounded by
/// [`HANDSHAKE_TIMEOUT`]; failed ones are dropped (and logged at debug) without stopping the
/// server. Accepted sockets get `TCP_NODELAY` (without it small replies wait ~40 ms for the
/// peer's delayed ACK).
/// Connections beyond the bounds ([`MAX_HANDSHAKES_PER_ADDRESS`], [`MAX_HANDSHAKES`],
/// [`MAX_CONNECTIONS_PER_ADDRESS`], [`MAX_CONNECTIONS`]) are closed as soon as they are accepted.
pub fn incoming(listener: TcpListener, acceptor: TlsAcceptor) -> Incoming {
    Incoming {
        listener,
        acceptor,
        handshakes: JoinSet::new(),
        pending: HashMap::new(),
        open: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        per_source: OpenPerSource::default(),
        paused: None,
        warned: false,
    }
}

/// See [`incoming`].
pub struct Incoming {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<(IpAddr, Option<TlsConn>)>,
    /// Handshakes in flight per source ([`source_of`]).
    pending: HashMap<IpAddr, usize>,
    /// One permit per open connection, held by its [`TlsConn`].
    open: Arc<Semaphore>,
    /// Connections open or handshaking per source, each counted by its [`SourceSlot`].
    per_source: OpenPerSource,
    /// Accepting paused until then: the process is out of file descriptors (or memory for a
    /// socket). Accepting again at once would fail again at once, a loop at full CPU until one
    /// frees (tonic accepts again after any error of its incoming stream).
    paused: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the pause since the last connection accepted was logged (once, as a warning).
    warned: bool,
}

/// How long accepting pauses when the process is out of descriptors: handshakes and connections
/// that end meanwhile give theirs back.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

impl Incoming {
    /// Starts the handshake of a connection just accepted, or closes it (dropped) if it is over
    /// a bound.
    fn admit(&mut self, tcp: TcpStream, from: IpAddr) {
        let from = source_of(from);
        let pending = self.pending.get(&from).copied().unwrap_or(0);
        if pending >= MAX_HANDSHAKES_PER_ADDRESS || self.handshakes.len() >= MAX_HANDSHAKES {
            tracing::debug!("connection closed: too many handshakes in flight");
            return;
        }
        let Ok(permit) = Arc::clone(&self.open).try_acquire_owned() else {
            tracing::debug!("connection closed: too many open connections");
            return;
        };
        let slot = {
            let mut open = counts(&self.per_source);
            let count = open.entry(from).or_insert(0);
            if *count >= MAX_CONNECTIONS_PER_ADDRESS {
                tracing::debug!("connection closed: too many open connections from its address");
                return;
            }
            *count += 1;
            SourceSlot { open: Arc::clone(&self.per_source), source: from }
        };
        let _ = tcp.set_nodelay(true);
        self.pending.insert(from, pending + 1);
        let acceptor = self.acceptor.0.clone();
        self.handshakes.spawn(async move { (from, handshake(acceptor, tcp, permit, slot).await) });
    }

    fn finished(&mut self, from: IpAddr) {
        if let Some(count) = self.pending.get_mut(&from) {
            *count -= 1;
            if *count == 0 {
                self.pending.remove(&from);
            }
        }
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<TlsConn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // A pause (out of descriptors) ends when its timer fires.
        if let Some(pause) = self.paused.as_mut()
            && pause.as_mut().poll(cx).is_ready()
        {
            self.paused = None;
        }
        // Start a handshake for every connection waiting; each poll returning Pending below has
        // registered this task for wake-up.
        while self.paused.is_none() {
            match self.listener.poll_accept(cx) {
                Poll::Ready(Ok((tcp, peer))) => {
                    self.warned = false;
                    self.admit(tcp, peer.ip());
                }
                // The peer went away between SYN and accept: nothing to serve, keep accepting.
                Poll::Ready(Err(e)) if transient(&e) => {}
                Poll::Ready(Err(e)) if out_of_resources(&e) => {
                    if !std::mem::replace(&mut self.warned, true) {
                        tracing::warn!(error = %e, "accepting paused: out of file descriptors or socket memory");
                    }
                    let mut pause = Box::pin(tokio::time::sleep(ACCEPT_PAUSE));
                    // Registers this task for the wake-up.
                    if pause.as_mut().poll(cx).is_pending() {
                        self.paused = Some(pause);
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => break,
            }
        }
        loop {
            match self.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok((from, conn)))) => {
                    self.finished(from);
                    if let Some(conn) = conn {
                        return Poll::Ready(Some(Ok(conn)));
                    }
                    // A failed or timed-out handshake (already logged).
                }
                // A cancelled or panicked task: its address is not known, so every address's
                // count starts afresh. The tasks left then go uncounted, which loosens the bound
                // for at most the handshake timeout (each ends by then).
                Poll::Ready(Some(Err(_))) => self.pending.clear(),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The process (or the system) is out of descriptors, or of memory for a socket: accepting again
/// at once would fail again.
fn out_of_resources(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM on Linux.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    permit: OwnedSemaphorePermit,
    slot: SourceSlot,
) -> Option<TlsConn> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(TlsConn { tls, _open: permit, _source: slot }),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// One accepted mutual-TLS connection (see [`incoming`]). Its connect info is tonic's
/// [`TlsConnectInfo`], so the peer's certificates reach request extensions as with tonic's TLS.
pub struct TlsConn {
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    /// Its place among the open connections ([`MAX_CONNECTIONS`]), given back when it closes.
    _open: OwnedSemaphorePermit,
    /// Its place among its source's ([`MAX_CONNECTIONS_PER_ADDRESS`]), given back likewise.
    _source: SourceSlot,
}

impl Connected for TlsConn {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tls.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    /// Plain writes on purpose: see [`incoming`].
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::source_of;

    #[test]
    fn an_ipv6_peer_is_counted_by_its_64_and_an_ipv4_one_by_its_address() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(source_of(ip("192.0.2.7")), ip("192.0.2.7"));
        // One /64, whatever its interface part.
        assert_eq!(source_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")), ip("2001:db8:1:2::"));
        assert_eq!(source_of(ip("2001:db8:1:2::1")), source_of(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(source_of(ip("2001:db8:1:2::1")), source_of(ip("2001:db8:1:3::1")));
        // An IPv4 peer on a dual-stack socket is the IPv4 address it is.
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }
}
