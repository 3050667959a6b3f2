//! The tracked rights requests' methods on the wire (`track.rs`): `OpenRightsRequest`,
//! `VerifyRightsRequest`, `GetRightsRequest`, `ExtendRightsRequest`,
//! `ListOverdueRightsRequests`, `ReadChallengeOutbox`, `AckChallengeOutbox`.

use domicile_proto::convert::{self, FieldViolation};
use domicile_proto::limits;
use domicile_proto::pb::node::v1 as pb;
use domicile_types::Link;
use domicile_types::rights::{RequestId, RightsKind};
use tonic::Request;

use super::wire::rights_to_pb;
use crate::error::NodeError;
use crate::service::NodeService;
use crate::store::Store;

/// The most entries one outbox read returns, and one acknowledgement names.
const OUTBOX_PAGE: usize = limits::CHALLENGE_OUTBOX_PAGE.max;

/// A request as its own opener sees it: without `linked_to`, the id of another opener's request
/// (only the region's desk sees it, `ListRightsRequests`), which would let this one act on that
/// request once its own requester verified it.
fn to_opener(record: &crate::store::RightsRequestRecord) -> domicile_proto::pb::common::v1::RightsRequest {
    domicile_proto::pb::common::v1::RightsRequest { linked_to: String::new(), ..rights_to_pb(record) }
}

fn request_id(text: &str) -> Result<String, FieldViolation> {
    RequestId::parse(text).map(|id| id.to_string()).map_err(|e| FieldViolation::new("request_id", e))
}

fn kind(text: &str) -> Result<RightsKind, FieldViolation> {
    RightsKind::parse(text).ok_or_else(|| {
        FieldViolation::new("kind", "must be one of access, rectification, erasure, restriction, portability")
    })
}

pub(in crate::service) async fn open<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::OpenRightsRequestRequest>,
) -> Result<pb::OpenRightsRequestResponse, NodeError> {
    let req = request.get_ref();
    let key = convert::subject_key("subject", req.subject.as_ref())?;
    let kind = kind(&req.kind)?;
    let link = Link::parse(&req.deliver_to_link).map_err(|e| FieldViolation::new("deliver_to_link", e))?;
    let tag =
        node.idempotency("OpenRightsRequest", &request, &req.idempotency_key, req, |r| r.idempotency_key.clear())?;
    let opened = node.open_rights_request(&key, kind, &link, tag.as_ref()).await?;
    Ok(pb::OpenRightsRequestResponse {
        subject_ref: node.subject_ref(opened.subject).to_string(),
        request: Some(to_opener(&opened.request)),
        active_request_id: opened.active_request_id,
        challenge_expires_at: opened.challenge_expires_at.map(convert::to_timestamp),
    })
}

pub(in crate::service) async fn verify<S: Store>(
    node: &NodeService<S>,
    request: pb::VerifyRightsRequestRequest,
) -> Result<pb::VerifyRightsRequestResponse, NodeError> {
    let key = convert::subject_key("subject", request.subject.as_ref())?;
    let id = request_id(&request.request_id)?;
    if request.code.is_empty() || request.code.len() > 64 {
        return Err(FieldViolation::new("code", "must be 1-64 bytes").into());
    }
    let answered = node.verify_rights_request(&key, &id, &request.code).await?;
    Ok(pb::VerifyRightsRequestResponse {
        request: Some(to_opener(&answered.request)),
        verified: answered.verified,
        attempts_left: answered.attempts_left,
    })
}

pub(in crate::service) async fn get<S: Store>(
    node: &NodeService<S>,
    request: pb::GetRightsRequestRequest,
) -> Result<pb::GetRightsRequestResponse, NodeError> {
    let key = convert::subject_key("subject", request.subject.as_ref())?;
    let (subject, record) = node.rights_request_of(&key, &request_id(&request.request_id)?).await?;
    Ok(pb::GetRightsRequestResponse {
        subject_ref: node.subject_ref(subject).to_string(),
        request: Some(to_opener(&record)),
    })
}

pub(in crate::service) async fn extend<S: Store>(
    node: &NodeService<S>,
    request: pb::ExtendRightsRequestRequest,
) -> Result<pb::ExtendRightsRequestResponse, NodeError> {
    let key = convert::subject_key("subject", request.subject.as_ref())?;
    let (subject, record) = node.extend_rights_request(&key, &request_id(&request.request_id)?).await?;
    Ok(pb::ExtendRightsRequestResponse {
        subject_ref: node.subject_ref(subject).to_string(),
        request: Some(to_opener(&record)),
    })
}

pub(in crate::service) async fn overdue<S: Store>(
    node: &NodeService<S>,
    request: pb::ListOverdueRightsRequestsRequest,
) -> Result<pb::ListOverdueRightsRequestsResponse, NodeError> {
    let as_of = request.as_of.as_ref().map(|t| t.seconds);
    let (overdue, counts) = node.overdue_rights_requests(as_of).await?;
    Ok(pb::ListOverdueRightsRequestsResponse {
        requests: overdue
            .iter()
            .map(|(subject, record)| pb::OverdueRightsRequest {
                subject_ref: node.subject_ref(*subject).to_string(),
                request: Some(rights_to_pb(record)),
            })
            .collect(),
        counts: counts
            .into_iter()
            .map(|(kind, count)| pb::OverdueCount { kind: kind.as_str().to_owned(), count })
            .collect(),
    })
}

pub(in crate::service) async fn read_outbox<S: Store>(
    node: &NodeService<S>,
    request: pb::ReadChallengeOutboxRequest,
) -> Result<pb::ReadChallengeOutboxResponse, NodeError> {
    let limit = match request.limit {
        0 => 100,
        n => usize::try_from(n).unwrap_or(OUTBOX_PAGE).min(OUTBOX_PAGE),
    };
    let entries = node.challenge_outbox(limit).await?;
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let kind = match node.store.tracked_request(&entry.request_id).await? {
            Some(tracked) => tracked.record.kind,
            None => String::new(),
        };
        out.push(pb::ChallengeDelivery {
            request_id: entry.request_id,
            subject_ref: node.subject_ref(entry.subject).to_string(),
            kind,
            identifier_kind: entry.delivery.kind.clone(),
            identifier_value: entry.delivery.value.clone(),
            code: entry.delivery.code.clone(),
            expires_at: Some(convert::to_timestamp(entry.expires_at)),
        });
    }
    Ok(pb::ReadChallengeOutboxResponse { entries: out })
}

pub(in crate::service) async fn ack_outbox<S: Store>(
    node: &NodeService<S>,
    request: pb::AckChallengeOutboxRequest,
) -> Result<pb::AckChallengeOutboxResponse, NodeError> {
    limits::CHALLENGE_OUTBOX_PAGE.check("request_ids", request.request_ids.len())?;
    let ids = request.request_ids.iter().map(|id| request_id(id)).collect::<Result<Vec<_>, _>>()?;
    let removed = node.ack_challenges(&ids).await?;
    Ok(pb::AckChallengeOutboxResponse { removed: removed as u64 })
}
