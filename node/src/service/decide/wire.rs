//! `Decide` and `DecideBatch` on the wire. The batch the node serves is read in place
//! (`RawDecideBatchRequest`) and its outcomes encoded straight from the packs' borrowed parts
//! (`EncodedDecideBatch`), so a batch allocates per call, not per string; the typed forms decode
//! those same bytes, so every form answers alike.

use domicile_proto::convert::{self, FieldViolation};
use domicile_proto::limits;
use domicile_proto::pb::node::v1 as pb;
use domicile_proto::raw::{EncodedDecideBatch, RawDecideBatchRequest};
use domicile_runtime::process::now_unix;
use tonic::Status;

use super::{Decided, SubjectDecision};
use crate::error::NodeError;
use crate::service::NodeService;
use crate::store::{CLOCK_SKEW_SECS, Store};

pub(in crate::service) async fn decide<S: Store>(
    node: &NodeService<S>,
    req: pb::DecideRequest,
) -> Result<pb::DecideResponse, NodeError> {
    let key = convert::subject_key("subject", req.subject.as_ref())?;
    let purpose = convert::purpose("purpose", &req.purpose)?;
    let channel = convert::channel("channel", &req.channel)?;
    let asserted = convert::decision_facts("facts", req.facts.as_ref())?;
    let at = decision_time(req.at.as_ref(), now_unix())?;
    let loaded = node.packs.current();
    let decided =
        node.decide_items(&loaded, std::iter::once((0, Ok((key.as_key_ref(), purpose, channel, asserted)))), at).await;
    // Encoded and read back as a batch's item is, so the two forms cannot differ.
    let mut batch = EncodedDecideBatch::with_capacity(1);
    push_decision(node, &mut batch, 0, &decided.into_only()?);
    match decoded(&batch)?.outcomes.pop().and_then(|o| o.result) {
        Some(pb::decide_outcome::Result::Decision(decision)) => Ok(pb::DecideResponse { decision: Some(decision) }),
        _ => Err(NodeError::Internal("batch encoding failed")),
    }
}

pub(in crate::service) async fn decide_typed_batch<S: Store>(
    node: &NodeService<S>,
    req: pb::DecideBatchRequest,
) -> Result<pb::DecideBatchResponse, NodeError> {
    let at = batch_time(req.items.len(), req.at.as_ref())?;
    let keys: Vec<_> = req
        .items
        .iter()
        .map(|item| {
            let key = convert::subject_key("subject", item.subject.as_ref())?;
            Ok::<_, FieldViolation>((
                key,
                convert::purpose("purpose", &item.purpose)?,
                convert::channel("channel", &item.channel)?,
                convert::decision_facts("facts", item.facts.as_ref())?,
            ))
        })
        .collect();
    let items = req.items.iter().zip(&keys).map(|(item, key)| {
        (item.id, key.as_ref().map(|(k, p, c, a)| (k.as_key_ref(), *p, *c, a.clone())).map_err(Clone::clone))
    });
    let loaded = node.packs.current();
    decoded(&encode(node, node.decide_items(&loaded, items, at).await))
}

impl<S: Store> NodeService<S> {
    /// `DecideBatch` with the outcomes encoded as they are sent: what the node serves (see
    /// [`crate::raw`]); the generated trait method decodes this for in-process callers.
    pub async fn decide_batch_encoded(&self, request: RawDecideBatchRequest) -> Result<EncodedDecideBatch, Status> {
        let at = batch_time(request.items.len(), request.at.as_ref())?;
        let items = request.items.iter().map(|item| {
            let read = || {
                Ok((
                    item.subject_key("subject")?,
                    item.purpose("purpose")?,
                    item.channel("channel")?,
                    convert::decision_facts("facts", item.facts.as_ref())?,
                ))
            };
            (item.id, read())
        });
        let loaded = self.packs.current();
        Ok(encode(self, self.decide_items(&loaded, items, at).await))
    }
}

/// A batch's outcomes in the order asked, each decision encoded from the pack's borrowed parts.
fn encode<S: Store>(node: &NodeService<S>, decided: Decided<'_>) -> EncodedDecideBatch {
    let Decided { outcomes, decisions, audited } = decided;
    // One status for every item when the batch could not be audited (mapped, and logged, once).
    let audited = audited.map_err(Status::from);
    let mut out = EncodedDecideBatch::with_capacity(outcomes.len());
    for (id, outcome) in outcomes {
        match (outcome, &audited) {
            (Ok(index), Ok(())) => {
                if let Some(decision) = decisions.get(index) {
                    push_decision(node, &mut out, id, decision);
                }
            }
            (Ok(_), Err(status)) => out.push_error(id, status),
            (Err(e), _) => out.push_error(id, &Status::from(e)),
        }
    }
    out
}

fn push_decision<S: Store>(
    node: &NodeService<S>,
    out: &mut EncodedDecideBatch,
    id: u64,
    decision: &SubjectDecision<'_>,
) {
    out.push_decision(id, &decision.parts, node.region.as_str(), decision.subject);
}

/// A batch's size check and evaluation time (default now), for both forms of `DecideBatch`.
fn batch_time(items: usize, at: Option<&domicile_proto::prost_types::Timestamp>) -> Result<i64, FieldViolation> {
    // Bounds one batch call's work (gateways send batches of this size or less); counted before
    // decoding too (`wire::RequestCodec`).
    limits::DECIDE_BATCH_ITEMS.check("items", items)?;
    decision_time(at, now_unix())
}

/// The time a decision is evaluated at: now, or the later time the caller names (a send it
/// schedules). A decision answers with the consent in force now, not the ledger's history, so a
/// past time is refused: evaluated then, a grant that has since lapsed allowed again. A time
/// within the clock-skew allowance before `now` counts as now.
fn decision_time(at: Option<&domicile_proto::prost_types::Timestamp>, now: i64) -> Result<i64, FieldViolation> {
    match convert::timestamp("at", at)? {
        None => Ok(now),
        Some(at) if at < now.saturating_sub(CLOCK_SKEW_SECS) => Err(FieldViolation::new(
            "at",
            "is in the past: a decision is evaluated with the consent in force now, at now or a later time",
        )),
        Some(at) => Ok(at.max(now)),
    }
}

/// The generated response of an encoded batch, for in-process callers of the trait methods.
fn decoded(batch: &EncodedDecideBatch) -> Result<pb::DecideBatchResponse, NodeError> {
    use domicile_proto::prost::Message as _;
    pb::DecideBatchResponse::decode(batch.as_bytes()).map_err(|_| NodeError::Internal("batch encoding failed"))
}
