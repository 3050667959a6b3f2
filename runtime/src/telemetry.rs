//! Structured logs on stderr (stdout is reserved for the ready line and command output).
//!
//! Log fields are chosen at call sites from an allow-list of non-personal values: regions,
//! pack ids, rule ids, purposes, channels, status codes, links and subject refs. Identifiers
//! and consent evidence are never logged.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Environment variable holding the log filter, e.g. `info` or `domicile_node=debug`.
pub const LOG_ENV: &str = "DOMICILE_LOG";

/// Installs the global subscriber. `json` selects machine-readable lines.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (e.g. in tests) is not an error worth failing for.
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
