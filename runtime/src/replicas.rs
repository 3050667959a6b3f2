//! A region served by several node replicas (a PostgreSQL-backed region: every replica reads and
//! writes the one database, so any of them answers alike), as gateways and other regions' nodes
//! (identifier claims at an arbiter region) call it. Calls are spread over the replicas
//! (tonic's power-of-two-choices balancer over lazily connected endpoints), and each replica is
//! health-checked (`grpc.health.v1` for the node service, over the gateway's own mutual TLS)
//! every [`HEALTH_INTERVAL`]: one that does not answer serving within [`HEALTH_TIMEOUT`] leaves
//! the spread until it does again. When none answers, all stay in: calls then fail at once on
//! their connections (UNAVAILABLE, fail closed) rather than wait for a replica to appear.
//!
//! What is retried on another replica, and why it is safe, is the caller's: the gateway's
//! `node_client` (decisions, and writes with their idempotency keys), a node's ownership client
//! (claims and releases, which an arbiter applies idempotently per link and generation).

use std::time::Duration;

use tokio::sync::mpsc::Sender;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How often each replica is checked.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(250);
/// How long a replica may take to answer its check.
pub const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
/// The node service whose health is asked for.
const NODE_SERVICE: &str = "domicile.node.v1.RegionalNode";

/// A channel spreading calls over `endpoints` (two or more), kept to the healthy ones by a task
/// that ends when the channel is dropped.
pub fn spread(endpoints: Vec<Endpoint>) -> Channel {
    let (channel, changes) = Channel::balance_channel::<usize>(endpoints.len().saturating_mul(2).max(4));
    for (index, endpoint) in endpoints.iter().enumerate() {
        // Capacity exceeds the replicas: the first inserts always fit.
        let _ = changes.try_send(Change::Insert(index, endpoint.clone()));
    }
    tokio::spawn(keep_healthy(endpoints, changes));
    channel
}

async fn keep_healthy(endpoints: Vec<Endpoint>, changes: Sender<Change<usize, Endpoint>>) {
    // Probes connect on their own, so a check never queues behind the region's calls.
    let probes: Vec<Channel> = endpoints.iter().map(Endpoint::connect_lazy).collect();
    let mut spread = vec![true; endpoints.len()];
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if changes.is_closed() {
            return;
        }
        let mut healthy = Vec::with_capacity(probes.len());
        let checks: Vec<_> = probes.iter().cloned().map(|probe| tokio::spawn(serving(probe))).collect();
        for check in checks {
            healthy.push(check.await.unwrap_or(false));
        }
        let wanted = if healthy.iter().any(|h| *h) { healthy } else { vec![true; probes.len()] };
        for (index, (want, now)) in wanted.iter().zip(spread.iter_mut()).enumerate() {
            if want == now {
                continue;
            }
            let change = match (*want, endpoints.get(index)) {
                (true, Some(endpoint)) => Change::Insert(index, endpoint.clone()),
                (true, None) => continue,
                (false, _) => Change::Remove(index),
            };
            if changes.send(change).await.is_err() {
                return;
            }
            tracing::info!(
                replica = index,
                healthy = *want,
                "node replica {}",
                if *want { "back in the spread" } else { "taken out of the spread" }
            );
            *now = *want;
        }
    }
}

async fn serving(probe: Channel) -> bool {
    let mut client = HealthClient::new(probe);
    let check = client.check(HealthCheckRequest { service: NODE_SERVICE.to_owned() });
    matches!(
        tokio::time::timeout(HEALTH_TIMEOUT, check).await,
        Ok(Ok(reply)) if reply.get_ref().status == ServingStatus::Serving as i32
    )
}
