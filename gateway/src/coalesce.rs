//! Unary decisions coalesced into node batches ("smart batching").
//!
//! Each region has one queue and a small number of node calls in flight. A decision that finds a
//! free call slot goes out at once, alone, so a lightly loaded gateway adds no waiting. While
//! every slot is busy, arriving decisions queue, and the next free slot takes all of them (up to
//! [`MAX_ITEMS`]) in one `DecideBatch` call. Under load this replaces many node round trips, each
//! paying HTTP/2, TLS and protobuf framing on both sides, with one, without a timer.
//!
//! Semantics are those of a unary node `Decide` at the current time: the node evaluates each item
//! on its own and audits each decision; a per-item error comes back as that caller's status with
//! the node's code and message; a failed call fails (closed) every decision in it with the
//! region's UNAVAILABLE. The batch call's span is a child of the first caller's span, so a lone
//! decision's trace runs from the gateway into the node unchanged.

use std::sync::Arc;

use domicile_proto::convert::SubjectKey;
use domicile_proto::pb::common::v1 as common;
use domicile_proto::raw::EncodedDecideBatchRequest;
use domicile_runtime::telemetry::{self, TraceParent};
use domicile_types::{Channel, Purpose, RegionId};
use hashbrown::HashMap;
use prost::bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tonic::Status;
use tracing::Instrument as _;

use crate::error::{region_unavailable, unknown_region};
use crate::node_client::{Nodes, decide_batch, decision_of, outcomes};
use crate::stack::NodeChannel;

/// Node calls in flight per region. Small on purpose: queueing behind a busy call is what forms
/// batches (with more slots, calls go out nearly empty and each decision pays a round trip's
/// framing again), and one node call already uses a node thread fully.
pub const CALLS_IN_FLIGHT: usize = 2;
/// Most decisions in one coalesced call.
pub const MAX_ITEMS: usize = 512;
/// Decisions waiting per region before callers are turned away (RESOURCE_EXHAUSTED).
const QUEUE: usize = 16 * 1024;

/// The decision as the node encoded it: forwarded to the caller as is (`raw.rs`).
type Reply = oneshot::Sender<Result<Bytes, Status>>;

struct Pending {
    subject: SubjectKey,
    purpose: Purpose,
    channel: Channel,
    facts: Option<common::DecisionFacts>,
    /// The caller's trace context, so the node call continues its trace.
    parent: TraceParent,
    reply: Reply,
}

/// One queue per region; cheap to share.
pub struct Coalescer {
    queues: HashMap<RegionId, mpsc::Sender<Pending>>,
}

impl Coalescer {
    /// Starts one batching task per region. Must run inside the Tokio runtime; the tasks end
    /// when the coalescer is dropped.
    pub fn start(nodes: &Nodes) -> Self {
        let queues = nodes
            .iter()
            .map(|(region, channel)| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(batcher(region.clone(), channel.clone(), rx));
                (region.clone(), tx)
            })
            .collect();
        Self { queues }
    }

    /// Decides now for `subject` in `region`, coalesced with concurrent decisions for that region.
    pub async fn decide(
        &self,
        region: &RegionId,
        subject: SubjectKey,
        purpose: Purpose,
        channel: Channel,
        facts: Option<common::DecisionFacts>,
    ) -> Result<Bytes, Status> {
        let queue = self.queues.get(region).ok_or_else(|| unknown_region(region))?;
        let (reply, answer) = oneshot::channel();
        let parent = telemetry::trace_parent();
        queue.try_send(Pending { subject, purpose, channel, facts, parent, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                Status::resource_exhausted(format!("too many decisions waiting for region `{region}`"))
            }
            mpsc::error::TrySendError::Closed(_) => region_unavailable(region),
        })?;
        // A dropped reply means the batch task is gone: never an allow.
        answer.await.unwrap_or_else(|_| Err(region_unavailable(region)))
    }
}

/// Takes everything queued whenever a call slot is free.
async fn batcher(region: RegionId, channel: NodeChannel, mut queue: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    let mut batch = Vec::with_capacity(MAX_ITEMS);
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        if queue.recv_many(&mut batch, MAX_ITEMS).await == 0 {
            return;
        }
        let taken = std::mem::replace(&mut batch, Vec::with_capacity(MAX_ITEMS));
        tokio::spawn(call(region.clone(), channel.clone(), taken, slot));
    }
}

/// One node call for a batch; every caller still waiting gets exactly one answer.
async fn call(region: RegionId, channel: NodeChannel, batch: Vec<Pending>, slot: OwnedSemaphorePermit) {
    // Callers that gave up (deadline, disconnect) are not decided for.
    let mut request = EncodedDecideBatchRequest::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    let mut parent = None;
    for pending in batch.into_iter().filter(|p| !p.reply.is_closed()) {
        parent.get_or_insert(pending.parent);
        request.push(replies.len() as u64, &pending.subject, pending.purpose, pending.channel, pending.facts.as_ref());
        replies.push(pending.reply);
    }
    let Some(parent) = parent else { return };
    let span = if telemetry::spans_wanted() {
        let span = tracing::info_span!("decide_batch", %region, items = replies.len());
        telemetry::continue_trace(&span, parent);
        span
    } else {
        tracing::Span::none()
    };
    let answer = decide_batch(channel, request).instrument(span).await;
    drop(slot);
    let ids: Vec<u64> = (0..replies.len() as u64).collect();
    for (outcome, reply) in outcomes(&region, &ids, answer).into_iter().zip(replies) {
        // The node's own status for an item is mapped as a unary answer would be.
        let _ = reply.send(decision_of(&region, outcome));
    }
}
