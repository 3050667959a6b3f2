//! Unary decisions, answered with the decision as the subject's home region encoded it (the
//! gateway neither decodes nor alters it). Every decision path sends its node the same request,
//! built one way from domain values parsed once (`EncodedDecideBatchRequest`): now, decisions are
//! coalesced with concurrent ones (`coalesce.rs`); at a stated time, a batch of one at that time;
//! the stream's items go in batches (`batch.rs`).

use domicile_proto::convert;
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::gateway::v1 as pb;
use domicile_proto::raw::EncodedDecideBatchRequest;
use prost::Message as _;
use prost::bytes::Bytes;
use tonic::Status;

use crate::error::{invalid, no_decision};
use crate::gateway::Gateway;
use crate::node_client::{decide_batch, decision_of, outcomes};

/// Decides one request: the decision as its home region encoded it.
pub async fn decide(gateway: &Gateway, req: pb::DecideRequest) -> Result<Bytes, Status> {
    let purpose = convert::purpose("purpose", &req.purpose).map_err(invalid)?;
    let channel = convert::channel("channel", &req.channel).map_err(invalid)?;
    let at = convert::timestamp("at", req.at.as_ref()).map_err(invalid)?;
    // Checked here (a bad fact costs no node call), forwarded as sent to the home region only.
    convert::decision_facts("facts", req.facts.as_ref()).map_err(invalid)?;
    let (region, key) = gateway.target(req.subject.as_ref())?;
    let decision = match at {
        None => gateway.coalescer.decide(&region, key, purpose, channel, req.facts).await?,
        Some(at) => {
            let mut request = EncodedDecideBatchRequest::with_capacity(1);
            request.push(0, &key, purpose, channel, req.facts.as_ref());
            let reply = decide_batch(gateway.nodes.channel(&region)?, request.at(at)).await;
            let outcome = outcomes(&region, &[0], reply).pop();
            decision_of(&region, outcome.ok_or_else(no_decision)?)?
        }
    };
    if domicile_runtime::metrics::enabled() {
        // Counting by pack needs the pack: decoded only while metrics are exported.
        match common::Decision::decode(decision.clone()) {
            Ok(decoded) => crate::metrics::decided(&decoded),
            Err(_) => return Err(no_decision()),
        }
    }
    Ok(decision)
}
