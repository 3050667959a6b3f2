//! Streaming batch decisions (`DecideStream`): items are resolved to their home region in the
//! gateway, grouped per region into node `DecideBatch` calls, and every result goes back tagged
//! with its item's id.
//!
//! Backpressure: at most `MAX_BATCHES_IN_FLIGHT` node calls per stream; when they are all busy
//! the gateway stops reading the caller's stream (HTTP/2 flow control then slows the caller), and
//! a caller that reads results slowly fills the bounded output buffer, which holds the batches,
//! which stops reading input. Memory per stream is bounded either way.
//!
//! Fail closed: an item whose subject is unknown, whose region is down or whose node answer is
//! malformed gets an error result, never a decision.

use std::sync::Arc;
use std::time::Duration;

use domicile_proto::convert;
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::gateway::v1 as pb;
use domicile_proto::pb::node::v1 as node_pb;
use domicile_types::RegionId;
use hashbrown::HashMap;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::NodeClient;
use crate::service::{GatewayService, node_status};

/// Items per node call (the node accepts up to 10,000).
pub const BATCH_SIZE: usize = 1_000;
/// Node calls in flight per caller stream.
pub const MAX_BATCHES_IN_FLIGHT: usize = 8;
/// How long a partly filled batch waits for more items before it is sent anyway.
const LINGER: Duration = Duration::from_millis(2);
/// Results buffered towards a caller.
const OUTPUT_BUFFER: usize = 4 * BATCH_SIZE;

pub type ResultStream = ReceiverStream<Result<pb::DecideStreamResult, Status>>;

fn item_error(id: u64, status: &Status) -> pb::DecideStreamResult {
    pb::DecideStreamResult {
        id,
        result: Some(pb::decide_stream_result::Result::Error(common::ItemError {
            code: status.code() as i32,
            message: status.message().to_owned(),
        })),
    }
}

pub fn decide_stream(service: GatewayService, input: Streaming<pb::DecideStreamItem>) -> ResultStream {
    let (tx, rx) = mpsc::channel(OUTPUT_BUFFER);
    tokio::spawn(Driver { service, tx, pending: HashMap::new(), tasks: JoinSet::new() }.run(input));
    ReceiverStream::new(rx)
}

struct Driver {
    service: GatewayService,
    tx: mpsc::Sender<Result<pb::DecideStreamResult, Status>>,
    pending: HashMap<RegionId, Vec<node_pb::DecideItem>>,
    tasks: JoinSet<()>,
}

impl Driver {
    async fn run(mut self, mut input: Streaming<pb::DecideStreamItem>) {
        let permits = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
        let mut flush_at: Option<Instant> = None;
        loop {
            let next = match flush_at {
                // `Streaming::message` keeps its state in the stream, so giving up on it at the
                // linger deadline loses nothing.
                Some(at) => tokio::time::timeout_at(at, input.message()).await.ok(),
                None => Some(input.message().await),
            };
            match next {
                None => {
                    flush_at = None;
                    if !self.flush_all(&permits).await {
                        return;
                    }
                }
                Some(Ok(Some(item))) => match self.service.batch_item(item) {
                    Err((id, status)) => {
                        if self.tx.send(Ok(item_error(id, &status))).await.is_err() {
                            return;
                        }
                    }
                    Ok((region, item)) => {
                        let queue = self.pending.entry(region.clone()).or_default();
                        queue.push(item);
                        if queue.len() >= BATCH_SIZE {
                            let items = std::mem::take(queue);
                            if !self.send_batch(&permits, region, items).await {
                                return;
                            }
                        } else if flush_at.is_none() {
                            flush_at = Some(Instant::now() + LINGER);
                        }
                    }
                },
                Some(Ok(None)) => {
                    if self.flush_all(&permits).await {
                        while self.tasks.join_next().await.is_some() {}
                    }
                    return;
                }
                Some(Err(status)) => {
                    tracing::debug!(code = ?status.code(), "decide stream input broke");
                    return;
                }
            }
            while self.tasks.try_join_next().is_some() {}
        }
    }

    async fn flush_all(&mut self, permits: &Arc<Semaphore>) -> bool {
        let regions: Vec<RegionId> = self.pending.keys().cloned().collect();
        for region in regions {
            let items = self.pending.remove(&region).unwrap_or_default();
            if !items.is_empty() && !self.send_batch(permits, region, items).await {
                return false;
            }
        }
        true
    }

    /// Starts one node call once a slot is free. False when the caller has gone.
    async fn send_batch(
        &mut self,
        permits: &Arc<Semaphore>,
        region: RegionId,
        items: Vec<node_pb::DecideItem>,
    ) -> bool {
        let Ok(permit) = Arc::clone(permits).acquire_owned().await else { return false };
        if self.tx.is_closed() {
            return false;
        }
        let client = self.service.node(&region);
        let tx = self.tx.clone();
        self.tasks.spawn(async move {
            let results = match client {
                Ok(client) => run_batch(&region, client, items).await,
                Err(status) => items.iter().map(|i| item_error(i.id, &status)).collect(),
            };
            drop(permit);
            for result in results {
                if tx.send(Ok(result)).await.is_err() {
                    return;
                }
            }
        });
        true
    }
}

/// One node call; every item gets exactly one result.
async fn run_batch(
    region: &RegionId,
    mut client: NodeClient,
    items: Vec<node_pb::DecideItem>,
) -> Vec<pb::DecideStreamResult> {
    let ids: Vec<u64> = items.iter().map(|i| i.id).collect();
    let reply = client.decide_batch(node_pb::DecideBatchRequest { items, at: None }).await;
    let outcomes = match reply {
        Ok(reply) => reply.into_inner().outcomes,
        Err(status) => {
            let status = node_status(region, status);
            return ids.iter().map(|id| item_error(*id, &status)).collect();
        }
    };
    if outcomes.len() != ids.len() || outcomes.iter().zip(&ids).any(|(o, id)| o.id != *id) {
        tracing::error!(%region, "node answered a batch with mismatched outcomes");
        let status = Status::internal("home region answered a batch incompletely");
        return ids.iter().map(|id| item_error(*id, &status)).collect();
    }
    outcomes
        .into_iter()
        .map(|outcome| match outcome.result {
            Some(node_pb::decide_outcome::Result::Decision(decision)) => pb::DecideStreamResult {
                id: outcome.id,
                result: Some(pb::decide_stream_result::Result::Decision(decision)),
            },
            Some(node_pb::decide_outcome::Result::Error(error)) => {
                pb::DecideStreamResult { id: outcome.id, result: Some(pb::decide_stream_result::Result::Error(error)) }
            }
            // No decision is not an allow.
            None => item_error(outcome.id, &Status::internal("home region returned no decision")),
        })
        .collect()
}

impl GatewayService {
    /// Validates one item and finds where it goes; an error is that item's result.
    fn batch_item(&self, item: pb::DecideStreamItem) -> Result<(RegionId, node_pb::DecideItem), (u64, Status)> {
        let id = item.id;
        let fail = |status: Status| (id, status);
        convert::purpose("purpose", &item.purpose).map_err(|v| fail(v.into()))?;
        convert::channel("channel", &item.channel).map_err(|v| fail(v.into()))?;
        let (region, key) = self.target(item.subject.as_ref()).map_err(fail)?;
        Ok((
            region,
            node_pb::DecideItem { id, subject: Some(key.to_pb()), purpose: item.purpose, channel: item.channel },
        ))
    }
}
