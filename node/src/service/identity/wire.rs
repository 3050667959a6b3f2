//! `Register`, `Merge` and `Rectify` on the wire: requests into domain values, results into
//! replies.

use std::collections::BTreeMap;

use domicile_proto::convert::{self, FieldViolation};
use domicile_proto::limits;
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as pb;
use domicile_types::{Link, NormalizedIdentifier, SubjectId};
use tonic::Request;

use crate::service::rights::Authority;

use super::{Correction, Registration};
use crate::error::NodeError;
use crate::service::NodeService;
use crate::service::rights::wire::rights_to_pb;
use crate::service::wire::token;
use crate::store::{Merged, Rectified, Registered, Store};

const MAX_PROFILE_NAME: usize = 64;
const MAX_PROFILE_VALUE: usize = 256;

pub(in crate::service) async fn register<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::RegisterRequest>,
) -> Result<pb::RegisterResponse, NodeError> {
    let caller = node.caller(&request, &request.get_ref().caller_region)?;
    let req = request.get_ref();
    let registration = Registration {
        jurisdiction: convert::jurisdiction("jurisdiction", &req.jurisdiction)?,
        identifiers: convert::identifiers("identifiers", &req.identifiers)?,
    };
    let tag = node.idempotency("Register", &request, &req.idempotency_key, req, |r| r.idempotency_key.clear())?;
    let registered = node.register_subject(&caller, registration, tag.as_ref()).await?;
    Ok(registered_to_pb(node, &registered))
}

pub(in crate::service) async fn register_batch<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::RegisterBatchRequest>,
) -> Result<pb::RegisterBatchResponse, NodeError> {
    let caller = node.caller(&request, &request.get_ref().caller_region)?;
    let req = request.into_inner();
    limits::REGISTER_BATCH_ITEMS.check("items", req.items.len())?;
    let ids: Vec<u64> = req.items.iter().map(|item| item.id).collect();
    let items = req
        .items
        .iter()
        .map(|item| {
            Ok(Registration {
                jurisdiction: convert::jurisdiction("jurisdiction", &item.jurisdiction)?,
                identifiers: convert::identifiers("identifiers", &item.identifiers)?,
            })
        })
        .collect();
    let outcomes = node.register_subjects(&caller, items).await;
    let outcomes = ids
        .into_iter()
        .zip(outcomes)
        .map(|(id, outcome)| pb::RegisterBatchOutcome {
            id,
            result: Some(match outcome {
                Ok(registered) => pb::register_batch_outcome::Result::Registered(registered_to_pb(node, &registered)),
                Err(status) => pb::register_batch_outcome::Result::Refused(convert::item_error(&status)),
            }),
        })
        .collect();
    Ok(pb::RegisterBatchResponse { outcomes })
}

pub(in crate::service) async fn merge<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::MergeRequest>,
) -> Result<pb::MergeResponse, NodeError> {
    let req = request.get_ref();
    let into = convert::subject_key("into", req.into.as_ref())?;
    let from = convert::subject_key("from", req.from.as_ref())?;
    let tag = node.idempotency("Merge", &request, &req.idempotency_key, req, |r| r.idempotency_key.clear())?;
    let (into, merged) = node.merge_subjects(&into, &from, tag.as_ref()).await?;
    Ok(merged_to_pb(node, into, &merged))
}

pub(in crate::service) async fn unmerge<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::UnmergeRequest>,
) -> Result<pb::UnmergeResponse, NodeError> {
    let req = request.get_ref();
    let subject = convert::subject_key("subject", req.subject.as_ref())?;
    let merged = convert::subject_ref("merged_subject_ref", &req.merged_subject_ref)?;
    let tag = node.idempotency("Unmerge", &request, &req.idempotency_key, req, |r| r.idempotency_key.clear())?;
    let (subject, unmerged) = node.unmerge_subject(&subject, &merged, tag.as_ref()).await?;
    Ok(pb::UnmergeResponse {
        subject_ref: node.subject_ref(subject).to_string(),
        restored_subject_ref: node.subject_ref(unmerged.restored).to_string(),
        links: unmerged.links.iter().map(Link::to_string).collect(),
        kept_links: unmerged.kept_links.iter().map(Link::to_string).collect(),
        consent_records: unmerged.consent_records as u64,
        interactions: unmerged.interactions as u64,
        flagged_for_review: unmerged.flagged as u64,
        event_sequence: unmerged.event,
    })
}

pub(in crate::service) async fn rectify<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::RectifyRequest>,
) -> Result<pb::RectifyResponse, NodeError> {
    let caller = node.caller(&request, &request.get_ref().caller_region)?;
    let req = request.get_ref();
    let key = convert::subject_key("subject", req.subject.as_ref())?;
    let correction = correction_from_pb(req)?;
    let authority = Authority::of_request(&request, &req.request_id, &req.override_reason)?;
    let tag = node.idempotency("Rectify", &request, &req.idempotency_key, req, |r| r.idempotency_key.clear())?;
    let (subject, rectified) = node.rectify_subject(&key, &caller, correction, &authority, tag.as_ref()).await?;
    Ok(rectified_to_pb(node, subject, &rectified))
}

fn correction_from_pb(req: &pb::RectifyRequest) -> Result<Correction, FieldViolation> {
    let identifiers = |field: &str, pbs: &[common::Identifier]| -> Result<Vec<NormalizedIdentifier>, FieldViolation> {
        if pbs.is_empty() { Ok(Vec::new()) } else { convert::identifiers(field, pbs) }
    };
    let add = identifiers("add_identifiers", &req.add_identifiers)?;
    let remove = identifiers("remove_identifiers", &req.remove_identifiers)?;
    if add.iter().any(|a| remove.contains(a)) {
        return Err(FieldViolation::new("remove_identifiers", "names an identifier also in `add_identifiers`"));
    }
    limits::PROFILE_FIELDS.check("set_profile", req.set_profile.len() + req.remove_profile.len())?;
    let mut set_profile = BTreeMap::new();
    for (name, value) in &req.set_profile {
        let name = token("set_profile.key", name, MAX_PROFILE_NAME)?;
        let value = convert::short_text("set_profile.value", value, MAX_PROFILE_VALUE)?;
        set_profile.insert(name, value);
    }
    let remove_profile = req
        .remove_profile
        .iter()
        .map(|name| token("remove_profile", name, MAX_PROFILE_NAME))
        .collect::<Result<Vec<_>, _>>()?;
    if remove_profile.iter().any(|name| set_profile.contains_key(name)) {
        return Err(FieldViolation::new("remove_profile", "names a field also in `set_profile`"));
    }
    if add.is_empty() && remove.is_empty() && set_profile.is_empty() && remove_profile.is_empty() {
        return Err(FieldViolation::new("subject", "nothing to rectify: no identifier or profile change"));
    }
    Ok(Correction { add, remove, set_profile, remove_profile })
}

fn registered_to_pb<S: Store>(node: &NodeService<S>, registered: &Registered) -> pb::RegisterResponse {
    pb::RegisterResponse {
        subject_ref: node.subject_ref(registered.subject).to_string(),
        links: registered.links.iter().map(Link::to_string).collect(),
        created: registered.created,
        event_sequence: registered.event.unwrap_or_default(),
    }
}

fn merged_to_pb<S: Store>(node: &NodeService<S>, into: SubjectId, merged: &Merged) -> pb::MergeResponse {
    pb::MergeResponse {
        subject_ref: node.subject_ref(into).to_string(),
        links_moved: merged.links.len() as u64,
        consent_records_moved: merged.consent_records as u64,
        links: merged.links.iter().map(Link::to_string).collect(),
        interactions_moved: merged.interactions as u64,
        merged_subject_ref: node.subject_ref(merged.from).to_string(),
        event_sequence: merged.event,
    }
}

fn rectified_to_pb<S: Store>(node: &NodeService<S>, subject: SubjectId, rectified: &Rectified) -> pb::RectifyResponse {
    pb::RectifyResponse {
        subject_ref: node.subject_ref(subject).to_string(),
        links_added: rectified.added.iter().map(Link::to_string).collect(),
        links_removed: rectified.removed.iter().map(Link::to_string).collect(),
        rights_request: Some(rights_to_pb(&rectified.rights_request)),
        event_sequence: rectified.event.unwrap_or_default(),
    }
}
