//! Process lifecycle: readiness reporting, shutdown signals, private files.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

/// The line a server prints on stdout once it accepts connections. Supervisors (the CLI's
/// cluster command, the test harness) read it instead of sleeping or polling ports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadyLine {
    pub event: String,
    pub role: String,
    pub region: Option<String>,
    pub addr: SocketAddr,
}

impl ReadyLine {
    pub const EVENT: &'static str = "ready";

    pub fn new(role: &str, region: Option<&str>, addr: SocketAddr) -> Self {
        Self { event: Self::EVENT.to_owned(), role: role.to_owned(), region: region.map(str::to_owned), addr }
    }

    /// Parses a stdout line; `None` for anything that is not a ready line.
    pub fn parse(line: &str) -> Option<Self> {
        serde_json::from_str::<Self>(line).ok().filter(|r| r.event == Self::EVENT)
    }

    /// Prints the line on stdout and flushes it.
    pub fn announce(&self) -> std::io::Result<()> {
        let text = serde_json::to_string(self).map_err(std::io::Error::other)?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")?;
        out.flush()
    }
}

/// Resolves on SIGINT or SIGTERM (Ctrl-C or a supervisor's stop).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A server's shutdown, broadcast to the work that must end for it to finish.
///
/// tonic's graceful shutdown stops accepting, then waits for every open connection to close.
/// A long-lived response stream (a `Watch` that a gateway or a caller follows) keeps its
/// connection open for as long as it runs, so those streams select on [`Shutdown::begun`] and
/// end as soon as shutdown starts; the server's shutdown future is wrapped in
/// [`Shutdown::after`] so that both happen at the same moment. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(std::sync::Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// Not begun yet.
    pub fn new() -> Self {
        Self(std::sync::Arc::new(tokio::sync::watch::channel(false).0))
    }

    /// Starts shutdown: every [`Shutdown::begun`] resolves, now and later. Idempotent.
    pub fn begin(&self) {
        self.0.send_replace(true);
    }

    pub fn has_begun(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown has begun (at once if it already has).
    pub async fn begun(&self) {
        let mut begun = self.0.subscribe();
        // The sender lives in `self`, so this cannot fail while we wait.
        let _ = begun.wait_for(|b| *b).await;
    }

    /// `signal`, then [`Shutdown::begin`]: the future to hand the server as its shutdown signal.
    pub fn after<F>(&self, signal: F) -> impl std::future::Future<Output = ()> + use<F>
    where
        F: std::future::Future<Output = ()>,
    {
        let this = self.clone();
        async move {
            signal.await;
            this.begin();
        }
    }

    /// Runs `server` (whose shutdown signal is [`Shutdown::after`]) to completion, or until
    /// `drain` has passed since shutdown began with connections still open: a client holding
    /// some other stream open must not keep the process from stopping. `None` if it gave up.
    /// Requests still running then are abandoned, never acknowledged: a write is acknowledged
    /// only once it is durable, so giving up loses none that was.
    pub async fn drain<T>(
        &self,
        server: impl std::future::Future<Output = T>,
        drain: std::time::Duration,
    ) -> Option<T> {
        tokio::select! {
            output = server => Some(output),
            () = async {
                self.begun().await;
                tokio::time::sleep(drain).await;
            } => None,
        }
    }
}

/// Writes a file only the owner can read (keys, link secrets).
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Refuses a file whose mode is looser than its contents allow: a secret (private key, link key,
/// key-encryption key) that group or others may read or write, or public material (certificate,
/// CA) that they may write: a loose mode is how a key leaks or a trust anchor gets replaced.
/// Checked when a process starts; the error names no contents, only the mode and the fix.
pub fn check_file_mode(path: &Path, secret: bool) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        let (loose, allowed, fix) =
            if secret { (0o077, "group or others", "600") } else { (0o022, "group or others to write", "644") };
        if mode & loose != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("mode {mode:03o} allows {allowed} access; refused (chmod {fix})"),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, secret);
    Ok(())
}

/// Reads the deployment's link key, creating a random one if `create` and the file is absent.
pub fn load_or_create_secret(path: &Path, create: bool) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            check_file_mode(path, true)?;
            Ok(bytes)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let mut bytes = vec![0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| std::io::Error::other("system random source failed"))?;
            write_private_file(path, &bytes)?;
            Ok(bytes)
        }
        Err(e) => Err(e),
    }
}

/// Wall-clock time in unix seconds (0 if the clock is before 1970).
pub fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Fresh random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| std::io::Error::other("system random source failed"))?;
    Ok(bytes)
}

/// Reads the deployment's link key file.
pub fn read_link_key(path: &Path) -> anyhow::Result<domicile_types::LinkKey> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read link key file {}: {e}", path.display()))?;
    check_file_mode(path, true).map_err(|e| anyhow::anyhow!("link key file {}: {e}", path.display()))?;
    Ok(domicile_types::LinkKey::from_bytes(&bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn secrets_and_trust_anchors_with_loose_modes_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let mode = |m: u32| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(m)).unwrap();
        for (m, secret, ok) in [
            (0o600, true, true),
            (0o400, true, true),
            (0o640, true, false),
            (0o604, true, false),
            (0o644, false, true),
            (0o664, false, false),
            (0o646, false, false),
        ] {
            mode(m);
            let checked = check_file_mode(&file, secret);
            assert_eq!(checked.is_ok(), ok, "mode {m:o}, secret {secret}: {checked:?}");
            if let Err(e) = checked {
                assert!(e.to_string().contains(&format!("mode {m:03o}")), "{e}");
            }
        }
        // A TLS key loaded with a loose mode is refused, naming the file.
        let pki = crate::pki::ClusterPki::open_or_create(dir.path()).unwrap();
        let files = pki.gateway().unwrap();
        assert!(crate::tls::TlsMaterial::load(&files).is_ok(), "keys are written 0600");
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = crate::tls::TlsMaterial::load(&files).expect_err("a key readable by others");
        assert!(refused.to_string().contains(&files.key.display().to_string()), "{refused}");
        assert!(refused.to_string().contains("chmod 600"), "{refused}");
    }

    #[tokio::test]
    async fn shutdown_reaches_every_waiter_before_and_after_it_begins() {
        let shutdown = Shutdown::new();
        assert!(!shutdown.has_begun());
        let early = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.begun().await }
        });
        let (fire, signal) = tokio::sync::oneshot::channel::<()>();
        let stop = tokio::spawn(shutdown.after(async move {
            let _ = signal.await;
        }));
        tokio::task::yield_now().await;
        assert!(!early.is_finished());
        let _ = fire.send(());
        stop.await.unwrap();
        early.await.unwrap();
        assert!(shutdown.has_begun());
        // A waiter that arrives late is not left hanging.
        tokio::time::timeout(std::time::Duration::from_secs(1), shutdown.begun()).await.unwrap();
    }

    #[tokio::test]
    async fn drain_gives_up_on_a_server_that_never_finishes() {
        let shutdown = Shutdown::new();
        let done = shutdown.drain(async { 7 }, std::time::Duration::from_secs(60)).await;
        assert_eq!(done, Some(7));
        shutdown.begin();
        let stuck = shutdown.drain(std::future::pending::<()>(), std::time::Duration::from_millis(10)).await;
        assert_eq!(stuck, None);
    }

    #[test]
    fn ready_line_round_trip() {
        let line = ReadyLine::new("node", Some("eu-central"), "127.0.0.1:4000".parse().unwrap());
        let text = serde_json::to_string(&line).unwrap();
        assert_eq!(ReadyLine::parse(&text), Some(line));
        assert_eq!(ReadyLine::parse("INFO something"), None);
    }
}
