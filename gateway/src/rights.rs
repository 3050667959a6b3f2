//! Tracked rights requests through the gateway (ARCHITECTURE.md, "Rights requests"): each call
//! goes to the subject's home region, naming the subject by link or subject ref and the delivery
//! identifier by its link (turned from an identifier here, in memory): no identifier crosses.
//! The challenge outbox and the overdue listing are the home region's own, served by its node to
//! its own callers only; the gateway has neither.

use domicile_proto::convert::{self, FieldViolation};
use domicile_proto::pb::gateway::v1 as pb;
use domicile_proto::pb::gateway::v1::subject_selector::Selector;
use domicile_proto::pb::node::v1 as node_pb;
use domicile_types::Link;
use tonic::{Request, Status};

use crate::error::{invalid, node_status};
use crate::gateway::Gateway;
use crate::node_client::writes::{WriteKey, write_status};

pub(crate) async fn open(
    gateway: &Gateway,
    request: Request<pb::OpenRightsRequestRequest>,
) -> Result<pb::OpenRightsRequestResponse, Status> {
    let caller = crate::auth::caller(&request)?;
    let req = request.into_inner();
    let write = WriteKey::new(&caller, &req.idempotency_key)?;
    let (region, key) = gateway.target(req.subject.as_ref())?;
    // The identifier becomes its link here; the node checks the subject holds it.
    let link = match req.deliver_to.as_ref().and_then(|s| s.selector.as_ref()) {
        Some(Selector::Identifier(id)) => {
            gateway.link_key.link(&convert::identifier("deliver_to.identifier", Some(id)).map_err(invalid)?)
        }
        Some(Selector::Link(text)) => {
            Link::parse(text).map_err(|e| invalid(FieldViolation::new("deliver_to.link", e)))?
        }
        Some(Selector::SubjectRef(_)) | None => {
            return Err(invalid(FieldViolation::new(
                "deliver_to",
                "an identifier or a link of the subject is required",
            )));
        }
    };
    let reply = gateway
        .nodes
        .write(
            &region,
            node_pb::OpenRightsRequestRequest {
                subject: Some(key.to_pb()),
                kind: req.kind,
                deliver_to_link: link.to_string(),
                idempotency_key: write.for_node(),
            },
            |mut node, request| async move { node.open_rights_request(request).await },
        )
        .await
        .map_err(|s| write_status(&region, s, &write))?
        .into_inner();
    Ok(pb::OpenRightsRequestResponse {
        subject_ref: reply.subject_ref,
        request: reply.request,
        active_request_id: reply.active_request_id,
        challenge_expires_at: reply.challenge_expires_at,
    })
}

pub(crate) async fn verify(
    gateway: &Gateway,
    request: pb::VerifyRightsRequestRequest,
) -> Result<pb::VerifyRightsRequestResponse, Status> {
    let (region, key) = gateway.target(request.subject.as_ref())?;
    let reply = gateway
        .nodes
        .client(&region)?
        .verify_rights_request(node_pb::VerifyRightsRequestRequest {
            subject: Some(key.to_pb()),
            request_id: request.request_id,
            code: request.code,
        })
        .await
        .map_err(|s| node_status(&region, s))?
        .into_inner();
    Ok(pb::VerifyRightsRequestResponse {
        request: reply.request,
        verified: reply.verified,
        attempts_left: reply.attempts_left,
    })
}

pub(crate) async fn get(
    gateway: &Gateway,
    request: pb::GetRightsRequestRequest,
) -> Result<pb::GetRightsRequestResponse, Status> {
    let (region, key) = gateway.target(request.subject.as_ref())?;
    let reply = gateway
        .nodes
        .client(&region)?
        .get_rights_request(node_pb::GetRightsRequestRequest {
            subject: Some(key.to_pb()),
            request_id: request.request_id,
        })
        .await
        .map_err(|s| node_status(&region, s))?
        .into_inner();
    Ok(pb::GetRightsRequestResponse { subject_ref: reply.subject_ref, request: reply.request })
}

pub(crate) async fn extend(
    gateway: &Gateway,
    request: pb::ExtendRightsRequestRequest,
) -> Result<pb::ExtendRightsRequestResponse, Status> {
    let (region, key) = gateway.target(request.subject.as_ref())?;
    // Extending twice is extending once: a retry after a lost reply is safe as it is.
    let reply = gateway
        .nodes
        .client(&region)?
        .extend_rights_request(node_pb::ExtendRightsRequestRequest {
            subject: Some(key.to_pb()),
            request_id: request.request_id,
        })
        .await
        .map_err(|s| node_status(&region, s))?
        .into_inner();
    Ok(pb::ExtendRightsRequestResponse { subject_ref: reply.subject_ref, request: reply.request })
}

/// An operator's override of a rights request's verification is forwarded only for a caller
/// holding the `admin` scope (a rights service names a verified request), and logged here with
/// the caller's name (a service's, not a person's), which the node does not see; the node audits
/// the override.
pub fn override_by_operator(
    caller: &domicile_runtime::identity::CallerIdentity,
    override_reason: &str,
) -> Result<(), Status> {
    if override_reason.is_empty() {
        return Ok(());
    }
    if !caller.has(domicile_runtime::identity::Scope::Admin) {
        return Err(Status::permission_denied(
            "an operator's override needs the admin scope: a rights service names a verified request",
        ));
    }
    tracing::warn!(caller = %caller.name, "rights request override forwarded");
    Ok(())
}
