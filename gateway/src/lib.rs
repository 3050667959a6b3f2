//! Domicile gateway: the only door into a deployment.
//!
//! It authenticates callers (mutual TLS), validates requests, turns identifiers into links in
//! memory, finds each subject's home region in its link directory and forwards the request to
//! that region's node only. It persists nothing and logs no personal data (invariant 1).

// The modules' import order, bottom up (ARCHITECTURE.md; `tools/module-cycles.py` checks it):
// config, error, directory, guard, auth, metrics, stack, node_client, coalesce, sync, gateway,
// decide, batch, watch, service, route.
pub mod auth;
mod batch;
mod coalesce;
pub mod config;
mod deadline;
mod decide;
pub mod directory;
mod error;
mod gateway;
pub mod guard;
mod import;
mod metrics;
mod node_client;
mod register_batch;
mod rights;
mod route;
mod service;
pub mod stack;
mod sync;
mod unmerge;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use domicile_proto::pb::gateway::v1::domicile_server::DomicileServer;
use domicile_runtime::packs::start_packs;
use domicile_runtime::process::{Shutdown, read_link_key};
use domicile_runtime::tls::{TlsMaterial, install_crypto_provider};
use hashbrown::HashMap;
use tokio::net::TcpListener;

pub use config::GatewayConfig;
use directory::Directory;
pub use node_client::NodeClient;
pub use service::GatewayService;

/// Largest request the gateway accepts from a caller.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest `ImportConsent` (and `RegisterBatch`) request: an import's batches are large, and every entry of a batch
/// written in one store transaction per region is what makes bulk import fast (BENCHMARKS.md).
/// Still bounded: the gateway holds the whole message, and takes at most 5,000 items
/// (`domicile_proto::limits::IMPORT_ITEMS`), counted in its bytes before any is decoded.
pub const MAX_IMPORT_REQUEST_BYTES: usize = 1024 * 1024;
/// How long start-up waits for the first directory load before serving anyway; regions not
/// loaded by then keep retrying and their subjects get UNAVAILABLE meanwhile.
const INITIAL_SYNC_WAIT: Duration = Duration::from_secs(10);
/// How long a stopping gateway waits for open connections to finish their requests before it
/// stops anyway. Watch streams end at once; this bounds anything else a caller holds open (a
/// DecideStream, say).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a gateway until `shutdown` resolves; `ready` gets the bound address once it serves.
/// On `shutdown` it stops accepting, ends every caller's Watch stream (UNAVAILABLE) and lets
/// requests in flight finish, for at most [`DRAIN_TIMEOUT`].
pub async fn serve(
    config: GatewayConfig,
    listener: TcpListener,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    install_crypto_provider();
    let otlp = match &config.otlp_endpoint {
        Some(endpoint) => Some(domicile_runtime::telemetry::start_otlp(
            "domicile-gateway",
            "gateway",
            endpoint,
            domicile_runtime::metrics::interval_from_ms(config.otlp_metrics_interval_ms),
            &[],
        )?),
        None => None,
    };
    let tls = TlsMaterial::load(&config.tls)?;
    let packs = start_packs(&config.packs_dir, config.packs_trust.as_ref(), config.packs_reload_ms)?;
    let link_key = read_link_key(&config.link_key_file)?;
    let tokens = match &config.token_public_key_file {
        Some(path) => {
            let verifier =
                domicile_runtime::token::TokenVerifier::from_file(path).context("cannot load the token public key")?;
            Some(match config.token_max_lifetime_secs {
                Some(secs) => verifier.with_max_lifetime(i64::from(secs)),
                None => verifier,
            })
        }
        None => None,
    };
    let revocations = match &config.revocation_file {
        Some(path) => domicile_runtime::revocation::Revocations::load(path)?,
        None => domicile_runtime::revocation::Revocations::none(),
    };
    tokio::spawn(domicile_runtime::revocation::keep_reloading(
        Arc::clone(&revocations),
        Duration::from_millis(config.revocation_reload_ms),
    ));
    let per_caller = config
        .max_in_flight_per_caller
        .map_or(auth::DEFAULT_MAX_IN_FLIGHT_PER_CALLER, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let auth = auth::AuthLayer::new(tokens, revocations, per_caller);

    let timeout = Duration::from_millis(config.node_timeout_ms);
    let bulk_timeout = Duration::from_millis(config.bulk_timeout_ms);
    let mut channels = HashMap::new();
    let mut bulk = HashMap::new();
    for region in &config.regions {
        let endpoints: Vec<&str> = region.endpoints().collect();
        let settings = guard::GuardSettings { replicas: endpoints.len(), ..guard::GuardSettings::default() };
        // Each channel with a guard of its own: a bulk call past its deadline counts against the
        // bulk circuit only, never against the one decisions go through.
        let channel = |timeout| {
            let guard = guard::RegionState::new(region.id.clone(), settings);
            stack::node_channel(&endpoints, tls.client(&region.id.node_server_name()), timeout, guard)
                .with_context(|| format!("bad endpoint for region {}", region.id))
        };
        channels.insert(region.id.clone(), channel(timeout)?);
        bulk.insert(region.id.clone(), channel(bulk_timeout)?);
    }
    let nodes = node_client::Nodes::new(channels, bulk);
    let directory = Arc::new(Directory::new(config.regions.iter().map(|r| r.id.clone()).collect()));

    // One follower per region for the gateway's lifetime: snapshot, then change events.
    let mut initial = Vec::new();
    let mut lags = Vec::new();
    for (region, channel) in nodes.iter() {
        let (loaded, first_load) = tokio::sync::oneshot::channel();
        let lag = Arc::new(metrics::RegionLag::new());
        lags.push((region.clone(), Arc::clone(&lag)));
        tokio::spawn(sync::follow_region(
            region.clone(),
            NodeClient::new(channel.clone()),
            Arc::clone(&directory),
            loaded,
            lag,
        ));
        initial.push(first_load);
    }
    metrics::observe(Arc::clone(&directory), lags);
    let all_synced = async {
        for first_load in &mut initial {
            let _ = first_load.await;
        }
    };
    if tokio::time::timeout(INITIAL_SYNC_WAIT, all_synced).await.is_err() {
        tracing::warn!("serving before every region's directory is loaded; their subjects get UNAVAILABLE until then");
    }
    tracing::info!(links = directory.len(), "directory loaded");

    let stopping = Shutdown::new();
    let regions = nodes.regions().len();
    let gateway = Arc::new(gateway::Gateway::new(packs, link_key, Arc::clone(&directory), nodes, stopping.clone()));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<DomicileServer<GatewayService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        // The gateway's own service only: it does not serve the node API.
        .register_encoded_file_descriptor_set(domicile_proto::GATEWAY_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let addr = listener.local_addr()?;
    tracing::info!(%addr, regions, "gateway serving");
    ready(addr);
    let shutdown = stopping.after(async move {
        shutdown.await;
        tracing::info!("gateway stopping: ending watch streams, finishing requests in flight");
    });
    let incoming = stack::incoming(listener, &tls)?;
    // A bulk call's own deadline covers all of its node calls: one per replica at most (a write
    // that got UNAVAILABLE is tried on the next), each with `bulk_timeout`, plus the interactive
    // budget for reading and routing it. Shorter, it would cut a call whose node calls are still
    // within theirs, and the bulk breaker would never see those calls fail.
    let replicas = config.regions.iter().map(|r| r.endpoints().count()).max().unwrap_or(1);
    let bulk_request =
        bulk_timeout.saturating_mul(u32::try_from(replicas).unwrap_or(u32::MAX)) + stack::REQUEST_TIMEOUT;
    let server = stack::server(auth, bulk_request)
        .add_service(health_service)
        .add_service(reflection)
        // The Domicile service, with DecideStream forwarding node-encoded decisions (`route.rs`).
        .add_service(route::DecisionRoute::new(gateway, MAX_REQUEST_BYTES, MAX_IMPORT_REQUEST_BYTES))
        .serve_with_incoming_shutdown(incoming, shutdown);
    match stopping.drain(server, DRAIN_TIMEOUT).await {
        Some(served) => served?,
        None => tracing::warn!("connections still open {DRAIN_TIMEOUT:?} after shutdown began; stopping anyway"),
    }
    tracing::info!("gateway stopped");
    if let Some(otlp) = otlp {
        otlp.shutdown().await;
    }
    Ok(())
}
