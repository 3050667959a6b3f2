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

/// Reads the deployment's link key, creating a random one if `create` and the file is absent.
pub fn load_or_create_secret(path: &Path, create: bool) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
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
    Ok(domicile_types::LinkKey::from_bytes(&bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_round_trip() {
        let line = ReadyLine::new("node", Some("eu-central"), "127.0.0.1:4000".parse().unwrap());
        let text = serde_json::to_string(&line).unwrap();
        assert_eq!(ReadyLine::parse(&text), Some(line));
        assert_eq!(ReadyLine::parse("INFO something"), None);
    }
}
