//! `Export`, `Erase`, `Restrict` and `ListRightsRequests` on the wire (the tracked requests'
//! methods are in `track_wire.rs`): requests into domain
//! values, results into replies.

use domicile_proto::convert;
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as pb;
use domicile_types::{Link, SubjectId};
use tonic::Request;

use super::{Authority, Export};
use crate::error::NodeError;
use crate::service::NodeService;
use crate::store::{Erased, RightsRequestRecord, Store};

pub(in crate::service) async fn export<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::ExportRequest>,
) -> Result<pb::ExportResponse, NodeError> {
    let caller = node.caller(&request, "")?;
    let req = request.get_ref();
    let key = convert::subject_key("subject", req.subject.as_ref())?;
    let authority = Authority::of_request(&request, &req.request_id, &req.override_reason)?;
    let export = node.export_subject(&key, &caller, &authority).await?;
    Ok(export_to_pb(node, export))
}

pub(in crate::service) async fn erase<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::EraseRequest>,
) -> Result<pb::EraseResponse, NodeError> {
    let req = request.get_ref();
    let key = convert::subject_key("subject", req.subject.as_ref())?;
    let authority = Authority::of_request(&request, &req.request_id, &req.override_reason)?;
    let tag = node.idempotency("Erase", &request, &req.idempotency_key, req, |r| r.idempotency_key.clear())?;
    let (subject, erased) = node.erase_subject(&key, &authority, tag.as_ref()).await?;
    Ok(erased_to_pb(node, subject, &erased))
}

pub(in crate::service) async fn restrict<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::RestrictRequest>,
) -> Result<pb::RestrictResponse, NodeError> {
    let req = request.get_ref();
    let key = convert::subject_key("subject", req.subject.as_ref())?;
    // Optional for a restriction, required to lift one (checked with the subject's state).
    let authority = match (req.request_id.is_empty(), req.override_reason.is_empty()) {
        (true, true) => None,
        _ => Some(Authority::of_request(&request, &req.request_id, &req.override_reason)?),
    };
    let tag = node.idempotency("Restrict", &request, &req.idempotency_key, req, |r| r.idempotency_key.clear())?;
    let (subject, (restricted, rights_request)) =
        node.restrict_subject(&key, req.restricted, authority.as_ref(), tag.as_ref()).await?;
    Ok(pb::RestrictResponse {
        subject_ref: node.subject_ref(subject).to_string(),
        restricted,
        rights_request: Some(rights_to_pb(&rights_request)),
    })
}

pub(in crate::service) async fn list_rights_requests<S: Store>(
    node: &NodeService<S>,
    request: pb::ListRightsRequestsRequest,
) -> Result<pb::ListRightsRequestsResponse, NodeError> {
    let key = convert::subject_key("subject", request.subject.as_ref())?;
    let (subject, requests) = node.rights_requests_of(&key).await?;
    Ok(pb::ListRightsRequestsResponse {
        subject_ref: node.subject_ref(subject).to_string(),
        requests: requests.iter().map(rights_to_pb).collect(),
    })
}

fn export_to_pb<S: Store>(node: &NodeService<S>, export: Export) -> pb::ExportResponse {
    pb::ExportResponse {
        subject_ref: node.subject_ref(export.subject).to_string(),
        document: export.document,
        generated_at: Some(convert::to_timestamp(export.generated_at)),
        rights_request: Some(rights_to_pb(&export.rights_request)),
    }
}

fn erased_to_pb<S: Store>(node: &NodeService<S>, subject: SubjectId, erased: &Erased) -> pb::EraseResponse {
    pb::EraseResponse {
        subject_ref: node.subject_ref(subject).to_string(),
        links: erased.links.iter().map(Link::to_string).collect(),
        consent_records_erased: erased.consent_records as u64,
        erased_at: Some(convert::to_timestamp(erased.at)),
        rights_request: Some(rights_to_pb(&erased.rights_request)),
        event_sequence: erased.event,
    }
}

/// A rights request as it leaves the node (with every reply that recorded one).
pub(in crate::service) fn rights_to_pb(record: &RightsRequestRecord) -> common::RightsRequest {
    common::RightsRequest {
        request_id: record.request_id.clone(),
        kind: record.kind.clone(),
        received_at: Some(convert::to_timestamp(record.received_at)),
        deadline_at: record.deadline_at.map(convert::to_timestamp),
        status: record.status.clone(),
        deadline_basis: record.deadline_basis.clone(),
        completed_at: record.completed_at.map(convert::to_timestamp),
        extended_deadline_at: record.extended_deadline_at.map(convert::to_timestamp),
        citation: record.citation.clone().unwrap_or_default(),
        reason: record.reason.clone().unwrap_or_default(),
        linked_to: record.linked_to.clone().unwrap_or_default(),
        override_reason: record.override_reason.clone().unwrap_or_default(),
        verified_at: record.verified_at.map(convert::to_timestamp),
        extended_at: record.extended_at.map(convert::to_timestamp),
    }
}
