//! Shared plumbing for Domicile's server processes (nodes and gateways) and their tools.
//!
//! No domain logic lives here: TLS and the cluster PKI, telemetry, configuration loading,
//! readiness reporting and shutdown signals.

pub mod config;
pub mod identity;
pub mod metrics;
pub mod packs;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod replicas;
pub mod revocation;
pub mod telemetry;
pub mod tls;
pub mod token;
