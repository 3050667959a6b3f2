//! The bottom of the gateway's request paths: calling a region's node, and reading what it
//! answers, failing closed. Nothing here knows the caller-facing service.
//!
//! - [`Nodes`]: each region's node connection (the client stack of `stack.rs`);
//! - [`decide_batch`] and [`outcomes`]: the one way a node `DecideBatch` is called and the one
//!   check that its reply matches the request (else every item fails, never an allow);
//! - the statuses a caller sees for a write whose outcome is unknown ([`writes`]); the others
//!   are in `error.rs`.

pub mod writes;

use domicile_proto::pb::node::v1::regional_node_client::RegionalNodeClient;
use domicile_proto::raw::{
    DECIDE_BATCH_PATH, EncodedDecideBatchRequest, RawDecideBatchResponse, RawOutcome, RawResult,
};
use domicile_types::RegionId;
use hashbrown::HashMap;
use prost::bytes::Bytes;
use tonic::codegen::http;
use tonic::{Code, Status};

use crate::error::{no_decision, node_status, unknown_region};
use crate::stack::NodeChannel;

pub type NodeClient = RegionalNodeClient<NodeChannel>;

/// Each region's node connections. Clients are made per call (`NodeClient::new` is free).
pub struct Nodes {
    channels: HashMap<RegionId, NodeChannel>,
    /// Bulk calls (imports): connections, deadline and circuit breaker of their own, so a bulk
    /// call that saturates a node and runs past the interactive deadline cannot open the circuit
    /// that the region's decisions go through (they would all fail closed until it closed).
    bulk: HashMap<RegionId, NodeChannel>,
    /// The deployment's regions, sorted.
    regions: Vec<RegionId>,
}

impl Nodes {
    pub fn new(channels: HashMap<RegionId, NodeChannel>, bulk: HashMap<RegionId, NodeChannel>) -> Self {
        let mut regions: Vec<RegionId> = channels.keys().cloned().collect();
        regions.sort();
        Self { channels, bulk, regions }
    }

    pub fn regions(&self) -> &[RegionId] {
        &self.regions
    }

    pub fn contains(&self, region: &RegionId) -> bool {
        self.channels.contains_key(region)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&RegionId, &NodeChannel)> {
        self.channels.iter()
    }

    pub fn channel(&self, region: &RegionId) -> Result<NodeChannel, Status> {
        self.channels.get(region).cloned().ok_or_else(|| unknown_region(region))
    }

    pub fn client(&self, region: &RegionId) -> Result<NodeClient, Status> {
        self.channel(region).map(NodeClient::new)
    }

    /// Makes a write on `region`'s node with `call`. In a region of several replicas, a write
    /// that got UNAVAILABLE is made again (through the spread, which takes a replica that fails
    /// its health checks out of it), up to once per replica: every write carries its idempotency
    /// key, so one that did reach a replica before its reply was lost is applied once.
    pub async fn write<Req, Resp, F, Fut>(
        &self,
        region: &RegionId,
        request: Req,
        call: F,
    ) -> Result<tonic::Response<Resp>, Status>
    where
        Req: Clone,
        F: Fn(NodeClient, Req) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        write_on(self.channel(region)?, request, call).await
    }

    /// The region's bulk connections (deadline and circuit of their own), for [`write_on`].
    pub fn bulk_channel(&self, region: &RegionId) -> Result<NodeChannel, Status> {
        self.bulk.get(region).cloned().ok_or_else(|| unknown_region(region))
    }
}

/// [`Nodes::write`] on `channel` (a region's bulk channel, say).
pub async fn write_on<Req, Resp, F, Fut>(
    channel: NodeChannel,
    request: Req,
    call: F,
) -> Result<tonic::Response<Resp>, Status>
where
    Req: Clone,
    F: Fn(NodeClient, Req) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let attempts = channel.state().replicas();
    if attempts == 1 {
        return call(NodeClient::new(channel), request).await;
    }
    let mut attempt = 1;
    loop {
        match call(NodeClient::new(channel.clone()), request.clone()).await {
            Err(status) if status.code() == Code::Unavailable && attempt < attempts => attempt += 1,
            answer => return answer,
        }
    }
}

/// Calls a node's `DecideBatch`, reading the answer with decisions kept encoded (`raw.rs`). In a
/// region of several replicas, a call that got UNAVAILABLE is made again (through the spread,
/// which takes a replica that fails its health checks out of it), up to once per replica: a
/// decision changes nothing, so asking again is safe.
pub async fn decide_batch(
    channel: NodeChannel,
    request: EncodedDecideBatchRequest,
) -> Result<RawDecideBatchResponse, Status> {
    let attempts = channel.state().replicas();
    if attempts == 1 {
        return decide_batch_once(channel, request).await;
    }
    let mut attempt = 1;
    loop {
        match decide_batch_once(channel.clone(), request.clone()).await {
            Err(status) if status.code() == Code::Unavailable && attempt < attempts => attempt += 1,
            answer => return answer,
        }
    }
}

async fn decide_batch_once(
    channel: NodeChannel,
    request: EncodedDecideBatchRequest,
) -> Result<RawDecideBatchResponse, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unavailable(format!("node not ready: {e}")))?;
    let codec = tonic_prost::ProstCodec::<EncodedDecideBatchRequest, RawDecideBatchResponse>::default();
    let path = http::uri::PathAndQuery::from_static(DECIDE_BATCH_PATH);
    Ok(grpc.unary(tonic::Request::new(request), path, codec).await?.into_inner())
}

/// One outcome per item of a node `DecideBatch` call for the items `ids` (in request order),
/// failing closed: a failed call is every item's error (the region's status, [`node_status`]); a
/// reply whose outcomes do not match the items one for one fails every item; an outcome without
/// a decision or an error is an error. Never an allow that the node did not give.
pub fn outcomes(region: &RegionId, ids: &[u64], reply: Result<RawDecideBatchResponse, Status>) -> Vec<RawOutcome> {
    let fail = |status: &Status| ids.iter().map(|id| RawOutcome::error(*id, status)).collect();
    let outcomes = match reply {
        Ok(reply) => reply.outcomes,
        Err(status) => return fail(&node_status(region, status)),
    };
    if outcomes.len() != ids.len() || outcomes.iter().zip(ids).any(|(o, id)| o.id != *id) {
        tracing::error!(%region, "node answered a batch with mismatched outcomes");
        return fail(&Status::internal("home region answered a batch incompletely"));
    }
    outcomes
        .into_iter()
        .map(|outcome| match outcome.result {
            Some(RawResult::Decision(ref decision)) if !decision.is_empty() => outcome,
            Some(RawResult::Error(_)) => outcome,
            // No decision is not an allow.
            Some(RawResult::Decision(_)) | None => RawOutcome::error(outcome.id, &no_decision()),
        })
        .collect()
}

/// One checked outcome ([`outcomes`]) as a unary answer: the decision as the node encoded it, or
/// the item's status mapped as a unary node answer would be.
pub fn decision_of(region: &RegionId, outcome: RawOutcome) -> Result<Bytes, Status> {
    match outcome.result {
        Some(RawResult::Decision(decision)) => Ok(decision),
        Some(RawResult::Error(error)) => Err(node_status(region, Status::new(Code::from(error.code), error.message))),
        None => Err(no_decision()),
    }
}

#[cfg(test)]
mod tests {
    use domicile_proto::pb::common::v1 as common;

    use super::*;

    fn decided(id: u64) -> RawOutcome {
        RawOutcome { id, result: Some(RawResult::Decision(Bytes::from_static(&[8, 2]))) }
    }

    #[test]
    fn a_reply_that_does_not_match_the_items_fails_every_item_closed() {
        let region = RegionId::parse("eu-central").unwrap();
        let answer = |outcomes| Ok(RawDecideBatchResponse { outcomes });
        let codes = |outcomes: Vec<RawOutcome>| {
            outcomes
                .into_iter()
                .map(|o| match o.result {
                    Some(RawResult::Decision(_)) => None,
                    Some(RawResult::Error(e)) => Some(Code::from(e.code)),
                    None => Some(Code::Ok),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(codes(outcomes(&region, &[4, 9], answer(vec![decided(4), decided(9)]))), [None, None]);
        for wrong in [vec![decided(4)], vec![decided(9), decided(4)], vec![decided(4), decided(9), decided(9)]] {
            assert_eq!(codes(outcomes(&region, &[4, 9], answer(wrong))), [Some(Code::Internal); 2]);
        }
        let empty = RawOutcome { id: 9, result: Some(RawResult::Decision(Bytes::new())) };
        let none = RawOutcome { id: 9, result: None };
        for missing in [empty, none] {
            assert_eq!(
                codes(outcomes(&region, &[4, 9], answer(vec![decided(4), missing]))),
                [None, Some(Code::Internal)],
                "no decision is not an allow"
            );
        }
        let item_error = RawOutcome {
            id: 4,
            result: Some(RawResult::Error(common::ItemError { code: Code::NotFound as i32, message: "x".into() })),
        };
        assert_eq!(codes(outcomes(&region, &[4], answer(vec![item_error]))), [Some(Code::NotFound)]);
        let down = outcomes(&region, &[1, 2], Err(Status::unavailable("gone")));
        assert_eq!(codes(down), [Some(Code::Unavailable); 2]);
    }
}
