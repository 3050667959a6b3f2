//! `RecordInteraction` and `GetContext` on the wire: requests into domain values, results into
//! replies.

use domicile_proto::convert::{self, FieldViolation};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as pb;
use domicile_types::SubjectId;
use tonic::Request;

use super::{Context, ContextQuery, InteractionReport};
use crate::error::NodeError;
use crate::service::NodeService;
use crate::service::wire::{free_text, token};
use crate::store::{Interaction, InteractionKind, Store};

const MAX_SUMMARY: usize = 2048;
const MAX_REFERENCE: usize = 128;
const MAX_INTENT: usize = 64;
const DEFAULT_CONTEXT: usize = 20;
const MAX_CONTEXT: usize = 100;

pub(in crate::service) async fn record_interaction<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::RecordInteractionRequest>,
) -> Result<pb::RecordInteractionResponse, NodeError> {
    let caller = node.caller(&request, &request.get_ref().caller_region)?;
    let req = request.get_ref();
    let key = convert::subject_key("subject", req.subject.as_ref())?;
    let report = report_from_pb(req)?;
    let tag =
        node.idempotency("RecordInteraction", &request, &req.idempotency_key, req, |r| r.idempotency_key.clear())?;
    let (subject, stored) = node.record_interaction_entry(&key, &caller, report, tag.as_ref()).await?;
    Ok(recorded_to_pb(node, subject, &stored))
}

pub(in crate::service) async fn get_context<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::GetContextRequest>,
) -> Result<pb::ContextResponse, NodeError> {
    let caller = node.caller(&request, &request.get_ref().caller_region)?;
    let req = request.into_inner();
    let key = convert::subject_key("subject", req.subject.as_ref())?;
    let query = query_from_pb(&req)?;
    let context = node.context_for(&key, &caller, query).await?;
    Ok(context_to_pb(node, context))
}

fn report_from_pb(req: &pb::RecordInteractionRequest) -> Result<InteractionReport, FieldViolation> {
    let channel = convert::channel("channel", &req.channel)?;
    let occurred_at = convert::timestamp("occurred_at", req.occurred_at.as_ref())?;
    let kind = InteractionKind::parse(&req.kind).ok_or_else(|| {
        let expected: Vec<&str> = InteractionKind::ALL.iter().map(|k| k.as_str()).collect();
        FieldViolation::new("kind", format!("expected one of {}", expected.join(", ")))
    })?;
    Ok(InteractionReport {
        channel,
        occurred_at,
        kind,
        intent: token("intent", &req.intent, MAX_INTENT)?,
        summary: free_text("summary", &req.summary, MAX_SUMMARY)?,
        reference: convert::short_text("reference", &req.reference, MAX_REFERENCE)?,
        open: req.open,
    })
}

fn query_from_pb(req: &pb::GetContextRequest) -> Result<ContextQuery, FieldViolation> {
    let limit = match req.limit as usize {
        0 => DEFAULT_CONTEXT,
        n if n > MAX_CONTEXT => return Err(FieldViolation::new("limit", format!("at most {MAX_CONTEXT}"))),
        n => n,
    };
    let purpose = if req.purpose.is_empty() { None } else { Some(convert::purpose("purpose", &req.purpose)?) };
    Ok(ContextQuery { limit, minimised: req.minimised, purpose })
}

fn recorded_to_pb<S: Store>(
    node: &NodeService<S>,
    subject: SubjectId,
    stored: &Interaction,
) -> pb::RecordInteractionResponse {
    pb::RecordInteractionResponse {
        subject_ref: node.subject_ref(subject).to_string(),
        sequence: stored.sequence,
        recorded_at: Some(convert::to_timestamp(stored.recorded_at)),
    }
}

fn context_to_pb<S: Store>(node: &NodeService<S>, context: Context) -> pb::ContextResponse {
    pb::ContextResponse {
        subject_ref: node.subject_ref(context.subject).to_string(),
        latest_by_channel: context.latest_by_channel.into_iter().map(interaction_to_pb).collect(),
        open_intents: context.open_intents,
        recent: context.recent.into_iter().map(interaction_to_pb).collect(),
        minimised: context.minimised,
        profile: context.profile.into_iter().collect(),
        transfer: context.transfer.unwrap_or_default(),
        pack: Some(convert::pack_ref_to_pb(context.pack)),
    }
}

fn interaction_to_pb(interaction: Interaction) -> common::Interaction {
    common::Interaction {
        sequence: interaction.sequence,
        channel: interaction.channel.to_string(),
        occurred_at: Some(convert::to_timestamp(interaction.occurred_at)),
        recorded_at: Some(convert::to_timestamp(interaction.recorded_at)),
        kind: interaction.kind.as_str().to_owned(),
        intent: interaction.intent,
        summary: interaction.summary,
        reference: interaction.reference,
        open: interaction.open,
    }
}
