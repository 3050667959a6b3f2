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
//!
//! An item that cannot be read (not valid protobuf: INVALID_ARGUMENT; over the gateway's request
//! limit: RESOURCE_EXHAUSTED, both from `domicile_proto::wire`) ends the stream with that status,
//! naming the item's position in the stream; every item read before it still gets its result
//! first. (Its id cannot be trusted, so it gets no result of its own.)

use std::sync::Arc;
use std::time::Duration;

use domicile_proto::convert::{self, SubjectKey};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::raw::{EncodedDecideBatchRequest, RawDecideStreamItem, RawOutcome};
use domicile_types::{Channel, Purpose, RegionId};
use hashbrown::HashMap;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::{Status, Streaming};

use crate::gateway::Gateway;
use crate::node_client::{decide_batch, outcomes};
use crate::stack::NodeChannel;

/// Items per node call (the node accepts up to 10,000).
pub const BATCH_SIZE: usize = 1_000;
/// Node calls in flight per caller stream.
pub const MAX_BATCHES_IN_FLIGHT: usize = 8;
/// How long a partly filled batch waits for more items before it is sent anyway.
const LINGER: Duration = Duration::from_millis(2);
/// Results buffered towards a caller, in chunks (a node call's results, or one item's error):
/// about four batches.
const OUTPUT_CHUNKS: usize = 4;

/// Results as the caller receives them: `DecideStreamResult`s, decisions as the node encoded
/// them (`raw.rs`). They arrive a node call's worth at a time (one channel message per call,
/// not per item) and leave one by one.
pub struct ResultStream {
    chunks: mpsc::Receiver<Chunk>,
    current: std::vec::IntoIter<RawOutcome>,
}

/// What the driver sends towards the caller.
enum Chunk {
    /// A node call's results, or one item's error.
    Results(Vec<RawOutcome>),
    /// The input broke: the stream's final status, sent after every earlier item's results.
    End(Status),
}

impl Stream for ResultStream {
    type Item = Result<RawOutcome, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        loop {
            if let Some(result) = self.current.next() {
                return std::task::Poll::Ready(Some(Ok(result)));
            }
            match std::task::ready!(self.chunks.poll_recv(cx)) {
                Some(Chunk::Results(chunk)) => self.current = chunk.into_iter(),
                Some(Chunk::End(status)) => {
                    self.chunks.close();
                    return std::task::Poll::Ready(Some(Err(status)));
                }
                None => return std::task::Poll::Ready(None),
            }
        }
    }
}

pub fn decide_stream(gateway: Arc<Gateway>, input: Streaming<RawDecideStreamItem>) -> ResultStream {
    let (tx, rx) = mpsc::channel(OUTPUT_CHUNKS);
    tokio::spawn(Driver { gateway, tx, pending: HashMap::new(), tasks: JoinSet::new() }.run(input));
    ResultStream { chunks: rx, current: Vec::new().into_iter() }
}

struct Driver {
    gateway: Arc<Gateway>,
    tx: mpsc::Sender<Chunk>,
    pending: HashMap<RegionId, Pending>,
    tasks: JoinSet<()>,
}

/// One region's next node call: the items encoded as they will be sent, and their ids.
struct Pending {
    ids: Vec<u64>,
    request: EncodedDecideBatchRequest,
}

impl Pending {
    /// Sized for a full batch up front: growing by doubling copied each batch several times.
    fn new() -> Self {
        Self { ids: Vec::with_capacity(BATCH_SIZE), request: EncodedDecideBatchRequest::with_capacity(BATCH_SIZE) }
    }
}

impl Driver {
    async fn run(mut self, mut input: Streaming<RawDecideStreamItem>) {
        let permits = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
        // One timer, re-armed once per linger period (a timer per item cost more than the item's
        // directory lookup); armed only while some batch is partly filled.
        let linger = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger);
        let mut lingering = false;
        // Items read so far, to name the one that breaks the input.
        let mut read: u64 = 0;
        loop {
            let next = if lingering {
                // `Streaming::message` keeps its state in the stream, so giving up on it at the
                // linger deadline loses nothing.
                tokio::select! {
                    biased;
                    message = input.message() => Some(message),
                    () = &mut linger => None,
                }
            } else {
                Some(input.message().await)
            };
            match next {
                None => {
                    lingering = false;
                    if !self.flush_all(&permits).await {
                        return;
                    }
                }
                Some(Ok(Some(item))) => match batch_item(&self.gateway, item) {
                    Err((id, status)) => {
                        read += 1;
                        if self.tx.send(Chunk::Results(vec![RawOutcome::error(id, &status)])).await.is_err() {
                            return;
                        }
                    }
                    Ok((id, region, key, purpose, channel, facts)) => {
                        read += 1;
                        // No region name cloned per item: only for a region's first pending item.
                        let queue = match self.pending.get_mut(&region) {
                            Some(queue) => queue,
                            None => self.pending.entry(region.clone()).or_insert_with(Pending::new),
                        };
                        queue.ids.push(id);
                        queue.request.push(id, &key, purpose, channel, facts.as_ref());
                        if queue.ids.len() >= BATCH_SIZE {
                            let items = std::mem::replace(queue, Pending::new());
                            if !self.send_batch(&permits, region, items).await {
                                return;
                            }
                        } else if !lingering {
                            linger.as_mut().reset(Instant::now() + LINGER);
                            lingering = true;
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
                    // Every item read so far gets its result, then the stream ends with the status.
                    if self.flush_all(&permits).await {
                        while self.tasks.join_next().await.is_some() {}
                        let _ = self.tx.send(Chunk::End(broken_input(status, read + 1))).await;
                    }
                    return;
                }
            }
            while self.tasks.try_join_next().is_some() {}
        }
    }

    async fn flush_all(&mut self, permits: &Arc<Semaphore>) -> bool {
        let regions: Vec<RegionId> = self.pending.keys().cloned().collect();
        for region in regions {
            let Some(items) = self.pending.remove(&region) else { continue };
            if !items.ids.is_empty() && !self.send_batch(permits, region, items).await {
                return false;
            }
        }
        true
    }

    /// Starts one node call once a slot is free. False when the caller has gone.
    async fn send_batch(&mut self, permits: &Arc<Semaphore>, region: RegionId, items: Pending) -> bool {
        let Ok(permit) = Arc::clone(permits).acquire_owned().await else { return false };
        if self.tx.is_closed() {
            return false;
        }
        let client = self.gateway.nodes.channel(&region);
        let tx = self.tx.clone();
        self.tasks.spawn(async move {
            let results = match client {
                Ok(client) => run_batch(&region, client, items).await,
                Err(status) => items.ids.iter().map(|id| RawOutcome::error(*id, &status)).collect(),
            };
            drop(permit);
            // A caller that has gone just drops them.
            let _ = tx.send(Chunk::Results(results)).await;
        });
        true
    }
}

/// The stream's final status when item `position` (from 1) cannot be read: the wire's status
/// (`domicile_proto::wire`), saying which item it is.
fn broken_input(status: Status, position: u64) -> Status {
    match status.code() {
        code @ (tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted) => {
            Status::new(code, format!("item {position} of the stream: {}", status.message()))
        }
        _ => status,
    }
}

/// One node call; every item gets exactly one result.
async fn run_batch(region: &RegionId, channel: NodeChannel, items: Pending) -> Vec<RawOutcome> {
    let Pending { ids, request } = items;
    outcomes(region, &ids, decide_batch(channel, request).await)
}

/// Validates one item (read in place) and finds where it goes; an error is that item's result.
#[allow(clippy::type_complexity, reason = "one item's parts, taken apart at once by the caller")]
fn batch_item(
    gateway: &Gateway,
    mut item: RawDecideStreamItem,
) -> Result<(u64, RegionId, SubjectKey, Purpose, Channel, Option<common::DecisionFacts>), (u64, Status)> {
    let id = item.id;
    let fail = |status: Status| (id, status);
    let purpose = item.purpose("purpose").map_err(|v| fail(v.into()))?;
    let channel = item.channel("channel").map_err(|v| fail(v.into()))?;
    // Checked here so a bad fact is the caller's error before it costs a node call; forwarded as
    // sent, to the home region only.
    convert::decision_facts("facts", item.facts.as_ref()).map_err(|v| fail(v.into()))?;
    let facts = item.facts.take();
    let selector = match &item.subject {
        Some(subject) => subject.view("subject").map_err(|v| fail(v.into()))?,
        None => None,
    };
    let (region, key) = gateway.target_of("subject", selector).map_err(fail)?;
    Ok((id, region, key, purpose, channel, facts))
}
