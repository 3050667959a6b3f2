//! Domicile regional node.
//!
//! A node keeps the personal data of one region: subjects, their identifiers, links and the
//! consent ledger, in sled. It is the only component that touches storage and the only one that
//! ever sees identifiers at rest. Gateways reach it over mutual TLS and, apart from
//! registration, speak to it only in links and subject refs.

mod access;
pub mod commit;
pub mod config;
mod error;
mod idempotency;
pub mod ownership;
mod raw;
mod service;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use domicile_proto::pb::node::v1::regional_node_server::RegionalNodeServer;
use domicile_runtime::metrics::RpcMetricsLayer;
use domicile_runtime::packs::start_packs;
use domicile_runtime::process::{Shutdown, read_link_key};
use domicile_runtime::tls::{ClientAuth, TlsMaterial, install_crypto_provider};
use tokio::net::TcpListener;
use tonic::transport::Server;

pub use config::{NodeConfig, StoreConfig};
pub use service::NodeService;
use store::pg_store::PgStore;
use store::{SledStore, Store};

/// Largest request a node accepts: batches of decisions are the big ones.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// How long a stopping node waits for open connections to finish their requests before it
/// stops anyway. Watch streams end at once; this bounds anything else a client holds open.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The services a node mounts beside its own, with tonic's codec: health and reflection v1.
const TONIC_SERVICES: [&[u8]; 2] =
    [tonic_health::pb::FILE_DESCRIPTOR_SET, tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET];

/// The method paths a node serves: the closed set its RPC metrics may name.
fn served_methods() -> Vec<String> {
    let [health, reflection] = TONIC_SERVICES;
    domicile_proto::method_paths(&[domicile_proto::NODE_DESCRIPTOR_SET, health, reflection])
}

/// Runs a node until `shutdown` resolves. `ready` is called with the bound address once every
/// dependency (packs, store, keys, TLS) is loaded and the server is about to accept.
///
/// On `shutdown` the node stops accepting, ends every open Watch stream (UNAVAILABLE, so
/// followers reconnect), lets requests in flight finish (at most [`DRAIN_TIMEOUT`]), then
/// flushes the store and syncs the audit log before returning.
pub async fn serve(
    config: NodeConfig,
    listener: TcpListener,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    install_crypto_provider();
    let otlp = match &config.otlp_endpoint {
        Some(endpoint) => Some(domicile_runtime::telemetry::start_otlp(
            "domicile-node",
            "node",
            endpoint,
            domicile_runtime::metrics::interval_from_ms(config.otlp_metrics_interval_ms),
            &[("domicile.region", config.region.to_string())],
        )?),
        None => None,
    };
    let tls = TlsMaterial::load(&config.tls)?;
    let packs = start_packs(&config.packs_dir, config.packs_trust.as_ref(), config.packs_reload_ms)?;
    let link_key = read_link_key(&config.link_key_file)?;
    match &config.store {
        StoreConfig::Sled => {
            let mut store = SledStore::open(&config.data_dir, &config.region)
                .with_context(|| format!("cannot open data directory {}", config.data_dir.display()))?;
            if let Some(journal) = &config.erasure_journal_file {
                store = store.with_erasure_journal(journal).context("cannot open the erasure journal")?;
            }
            serve_on(config, Arc::new(store), tls, packs, link_key, otlp, listener, ready, shutdown).await
        }
        StoreConfig::Postgres(pg) => {
            let store = PgStore::open(pg, &config.region).await.context("cannot open the region's PostgreSQL store")?;
            serve_on(config, Arc::new(store), tls, packs, link_key, otlp, listener, ready, shutdown).await
        }
    }
}

/// Serves the node on `store` (the rest of [`serve`], whichever the store).
#[allow(clippy::too_many_arguments, reason = "serve's own parts, handed on once")]
async fn serve_on<S: Store>(
    config: NodeConfig,
    store: Arc<S>,
    tls: TlsMaterial,
    packs: Arc<domicile_runtime::packs::PackReloader>,
    link_key: domicile_types::LinkKey,
    otlp: Option<domicile_runtime::telemetry::OtlpGuard>,
    listener: TcpListener,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let ownership = Arc::new(
        ownership::Ownership::new(config.region.clone(), &config.ownership, &tls, Arc::clone(&store))
            .context("bad ownership configuration")?,
    );
    tracing::info!(region = %config.region, arbiter_map = ownership.map().digest(), regions = ownership.map().regions().len(), "identifier ownership");
    // Claims to give up (from erasures, removals, writes that did not complete) are sent from
    // a durable queue for the node's lifetime; idempotency records expire after a day.
    tokio::spawn(Arc::clone(&ownership).run_releases());
    tokio::spawn(idempotency::purge_expired(Arc::clone(&store)));
    let stopping = Shutdown::new();
    let service = NodeService::new(config.region.clone(), Arc::clone(&store), packs, link_key, Arc::clone(&ownership))
        .await?
        .with_shutdown(stopping.clone())
        .with_rights(config.rights.clone());
    // Overdue rights requests per kind, counted every minute, reported as a gauge.
    let overdue = service.overdue_counts();
    tokio::spawn(service::rights::keep_counting_overdue(Arc::clone(&store), Arc::clone(&overdue)));
    domicile_runtime::metrics::observe_u64(
        "domicile.rights.overdue",
        "{request}",
        "Open rights requests past their (extended) deadline, by kind",
        move |observer| {
            for (kind, count) in overdue.get() {
                observer.observe(count, &[domicile_runtime::metrics::KeyValue::new("kind", kind.as_str())]);
            }
        },
    );

    // Decision batches made again because a subject they read through a replica's cache had
    // just changed (a store shared by replicas): a measure of how often decisions race writes.
    let redone = service.redone_decisions();
    domicile_runtime::metrics::observe_count_u64(
        "domicile.decision_batches.redone",
        "{batch}",
        "Decision batches made again after their audit write found a subject they read changed",
        move |observer| {
            observer.observe(redone.load(std::sync::atomic::Ordering::Relaxed), &[]);
        },
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RegionalNodeServer<NodeService<S>>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        // The node's own service only: it does not serve the gateway API.
        .register_encoded_file_descriptor_set(domicile_proto::NODE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let revocations = match &config.revocation_file {
        Some(path) => domicile_runtime::revocation::Revocations::load(path)?,
        None => domicile_runtime::revocation::Revocations::none(),
    };
    tokio::spawn(domicile_runtime::revocation::keep_reloading(
        Arc::clone(&revocations),
        std::time::Duration::from_millis(config.revocation_reload_ms),
    ));

    let addr = listener.local_addr()?;
    tracing::info!(region = %config.region, %addr, "node serving");
    ready(addr);
    let region = config.region.clone();
    let shutdown = stopping.after(async move {
        shutdown.await;
        tracing::info!(%region, "node stopping: ending watch streams, finishing requests in flight");
    });
    // Mutual TLS with a client certificate required; accepted by the runtime rather than tonic
    // so that replies completing together share one write (see `tls::incoming`).
    let incoming = domicile_runtime::tls::incoming(listener, tls.acceptor(ClientAuth::Required)?);
    let span_methods = domicile_runtime::telemetry::SpanMethods::new(served_methods());
    let server = Server::builder()
        // A peer gone without a word gives back its connection (`tls::KEEPALIVE_INTERVAL`).
        .http2_keepalive_interval(Some(domicile_runtime::tls::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(domicile_runtime::tls::KEEPALIVE_TIMEOUT))
        // One span per request, continuing the gateway's W3C trace.
        .trace_fn(move |request| domicile_runtime::telemetry::server_span("node", request, &span_methods))
        // Duration and code of every call, refusals by the access layer included.
        .layer(RpcMetricsLayer::new(served_methods(), &[("region", config.region.to_string())]))
        .layer(access::AccessLayer::new(config.region.clone(), revocations))
        // Innermost: unknown methods (UNIMPLEMENTED naming what a node serves), request messages
        // over MAX_REQUEST_BYTES (RESOURCE_EXHAUSTED) and broken gRPC frames (INVALID_ARGUMENT).
        .layer(domicile_proto::wire::WireLayer::new(
            "node",
            MAX_REQUEST_BYTES,
            domicile_proto::NODE_DESCRIPTOR_SET,
            &TONIC_SERVICES,
        ))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(raw::DecideBatchRoute::new(service, MAX_REQUEST_BYTES))
        .serve_with_incoming_shutdown(incoming, shutdown);
    match stopping.drain(server, DRAIN_TIMEOUT).await {
        Some(served) => served?,
        None => tracing::warn!(
            region = %config.region,
            "connections still open {DRAIN_TIMEOUT:?} after shutdown began; stopping anyway"
        ),
    }
    // Every acknowledged write is durable already (acknowledged only after a flush); this
    // covers anything applied since.
    store.flush().await?;
    tracing::info!(region = %config.region, "node stopped");
    if let Some(otlp) = otlp {
        otlp.shutdown().await;
    }
    Ok(())
}
