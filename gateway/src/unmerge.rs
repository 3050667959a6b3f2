//! `Unmerge`: routed to the merged subject's home region; the links of each half move in this
//! gateway's directory only where they still name the merged subject (a replayed answer must not
//! undo a later write).

use domicile_proto::convert::SubjectKey;
use domicile_proto::pb::gateway::v1 as pb;
use domicile_proto::pb::node::v1 as node_pb;
use domicile_runtime::identity::CallerIdentity;
use domicile_types::{Link, SubjectRef};
use tonic::Status;

use crate::directory::Update;
use crate::error::malformed_subject_ref;
use crate::gateway::Gateway;
use crate::node_client::writes::{WriteKey, write_status};

pub async fn unmerge(
    gateway: &Gateway,
    caller: &CallerIdentity,
    req: pb::UnmergeRequest,
) -> Result<pb::UnmergeResponse, Status> {
    let write = WriteKey::new(caller, &req.idempotency_key)?;
    let (region, key) = gateway.target_field("subject", req.subject.as_ref())?;
    let merged = SubjectRef::parse(&req.merged_subject_ref)
        .map_err(|_| Status::invalid_argument("merged_subject_ref: must be `<region>/<32 lower-case hex digits>`"))?;
    // A merge never spans regions, so neither does its undoing.
    if merged.region != region {
        return Err(Status::failed_precondition("the merged subject ref names another region than the subject"));
    }
    let reply = gateway
        .nodes
        .write(
            &region,
            node_pb::UnmergeRequest {
                subject: Some(key.to_pb()),
                merged_subject_ref: req.merged_subject_ref.clone(),
                idempotency_key: write.for_node(),
            },
            |mut node, request| async move { node.unmerge(request).await },
        )
        .await
        .map_err(|s| write_status(&region, s, &write))?
        .into_inner();
    let restored = SubjectRef::parse(&reply.restored_subject_ref).map_err(|_| malformed_subject_ref())?;
    let kept = SubjectRef::parse(&reply.subject_ref).map_err(|_| malformed_subject_ref())?;
    if restored.region != region || kept.region != region {
        return Err(Status::internal("home region returned a subject ref of another region"));
    }
    // Each half's links name its new ref from now on (the merged ref is retired); other
    // gateways learn it from the change events.
    let links: Vec<Link> = reply.links.iter().filter_map(|l| Link::parse(l).ok()).collect();
    let kept_links: Vec<Link> = reply.kept_links.iter().filter_map(|l| Link::parse(l).ok()).collect();
    // Only links that still name the merged subject here: a replayed reply must not bring
    // back links a later write moved or erased.
    if let SubjectKey::Ref(merged) = &key {
        let sequence = Some(reply.event_sequence);
        let restore = Update::Move { from: merged, to: &restored, links: &links };
        if gateway.directory.apply_reply(&region, sequence, restore) {
            gateway.directory.apply_reply(
                &region,
                sequence,
                Update::Move { from: merged, to: &kept, links: &kept_links },
            );
        }
    }
    tracing::info!(%region, links = links.len(), flagged = reply.flagged_for_review, "merge undone");
    Ok(pb::UnmergeResponse {
        subject_ref: reply.subject_ref,
        restored_subject_ref: reply.restored_subject_ref,
        links_moved: links.len() as u64,
        consent_records: reply.consent_records,
        interactions: reply.interactions,
        flagged_for_review: reply.flagged_for_review,
        home_region: region.to_string(),
    })
}
