//! Domicile gateway: the only door into a deployment.
//!
//! It authenticates callers (mutual TLS), validates requests, turns identifiers into links in
//! memory, finds each subject's home region in its link directory and forwards the request to
//! that region's node only. It persists nothing and logs no personal data (invariant 1).

pub mod config;
pub mod directory;
mod service;
pub mod stack;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use domicile_proto::pb::gateway::v1::domicile_server::DomicileServer;
use domicile_proto::pb::node::v1 as node_pb;
use domicile_runtime::tls::{TlsMaterial, install_crypto_provider};
use domicile_types::{Link, LinkKey, RegionId, SubjectId};
use hashbrown::HashMap;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

pub use config::GatewayConfig;
use directory::Directory;
pub use service::{GatewayService, NodeClient};

/// Largest request the gateway accepts from a caller.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How long start-up waits for the first directory load before serving anyway; regions not
/// loaded by then keep retrying and their subjects get UNAVAILABLE meanwhile.
const INITIAL_SYNC_WAIT: Duration = Duration::from_secs(10);
const SYNC_RETRY: Duration = Duration::from_millis(500);

/// Runs a gateway until `shutdown` resolves; `ready` gets the bound address once it serves.
pub async fn serve(
    config: GatewayConfig,
    listener: TcpListener,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    install_crypto_provider();
    let tls = TlsMaterial::load(&config.tls)?;
    let (packs, warnings) = domicile_runtime::packs::load_dir(&config.packs_dir)?;
    for warning in &warnings {
        tracing::warn!(%warning, "policy pack warning");
    }
    let key_bytes = std::fs::read(&config.link_key_file)
        .with_context(|| format!("cannot read link key file {}", config.link_key_file.display()))?;
    let link_key = LinkKey::from_bytes(&key_bytes)?;

    let timeout = Duration::from_millis(config.node_timeout_ms);
    let mut nodes = HashMap::new();
    for region in &config.regions {
        let channel = stack::node_channel(&region.endpoint, tls.client(&region.id.node_server_name()), timeout)
            .with_context(|| format!("bad endpoint for region {}", region.id))?;
        nodes.insert(region.id.clone(), NodeClient::new(channel));
    }
    let nodes = Arc::new(nodes);
    let directory = Arc::new(Directory::new(config.regions.iter().map(|r| r.id.clone()).collect()));

    let mut initial = Vec::new();
    for (region, client) in nodes.iter() {
        initial.push(tokio::spawn(keep_syncing(region.clone(), client.clone(), Arc::clone(&directory))));
    }
    let all_synced = async {
        for task in &mut initial {
            let _ = task.await;
        }
    };
    if tokio::time::timeout(INITIAL_SYNC_WAIT, all_synced).await.is_err() {
        tracing::warn!("serving before every region's directory is loaded; their subjects get UNAVAILABLE until then");
    }
    tracing::info!(links = directory.len(), "directory loaded");

    let service = GatewayService::new(Arc::new(packs), link_key, Arc::clone(&directory), Arc::clone(&nodes));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<DomicileServer<GatewayService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(domicile_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let addr = listener.local_addr()?;
    tracing::info!(%addr, regions = nodes.len(), "gateway serving");
    ready(addr);
    stack::server(tls.server())?
        .add_service(health_service)
        .add_service(reflection)
        .add_service(DomicileServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Loads one region's links into the directory, retrying until it succeeds.
async fn keep_syncing(region: RegionId, client: NodeClient, directory: Arc<Directory>) {
    loop {
        match sync_region(&region, client.clone(), &directory).await {
            Ok(count) => {
                directory.mark_synced(&region);
                tracing::info!(%region, links = count, "region directory loaded");
                return;
            }
            Err(status) => {
                tracing::warn!(%region, code = ?status.code(), "cannot load region directory yet; retrying");
                tokio::time::sleep(SYNC_RETRY).await;
            }
        }
    }
}

async fn sync_region(region: &RegionId, mut client: NodeClient, directory: &Directory) -> Result<usize, tonic::Status> {
    let mut stream = client.list_links(node_pb::ListLinksRequest { batch_size: 0 }).await?.into_inner();
    let mut count = 0;
    while let Some(batch) = stream.message().await? {
        if batch.region != region.as_str() {
            return Err(tonic::Status::failed_precondition("node answered for another region"));
        }
        // A malformed entry means a broken node: refuse the whole load rather than serve a
        // directory with silent holes.
        let entries = batch
            .entries
            .iter()
            .map(|e| match (Link::from_slice(&e.link), SubjectId::from_slice(&e.subject_id)) {
                (Ok(link), Ok(subject)) => Ok((link, subject)),
                _ => Err(tonic::Status::data_loss("node sent a malformed link entry")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        count += entries.len();
        directory.load_batch(region, entries);
    }
    Ok(count)
}
