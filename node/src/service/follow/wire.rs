//! `Watch`, `ListLinks` and `Info` on the wire.

use std::pin::Pin;

use domicile_proto::convert;
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as pb;
use domicile_types::{Link, RegionId, SubjectRef};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::NodeInfo;
use crate::error::NodeError;
use crate::service::NodeService;
use crate::store::{Change, ChangeEvent, Store};

const DEFAULT_LINK_BATCH: usize = 4096;

pub type LinkStream = Pin<Box<dyn Stream<Item = Result<pb::LinkBatch, Status>> + Send>>;
pub type EventStream = Pin<Box<dyn Stream<Item = Result<common::ChangeEvent, Status>> + Send>>;

pub(in crate::service) fn watch<S: Store>(node: &NodeService<S>, request: pb::WatchRequest) -> EventStream {
    let region = node.region.clone();
    let events = node.follow_events(request.after_sequence);
    // Imported entries written without broadcast are not announced (issue 22: no propagation
    // side effects of a migration unless asked).
    let announced =
        events.filter(|event| !matches!(event, Ok(ChangeEvent { change: Change::Consent { quiet: true, .. }, .. })));
    Box::pin(announced.map(move |event| event.map(|e| event_to_pb(&region, &e)).map_err(Status::from)))
}

pub(in crate::service) fn list_links<S: Store>(node: &NodeService<S>, request: pb::ListLinksRequest) -> LinkStream {
    let batch_size = match request.batch_size {
        0 => DEFAULT_LINK_BATCH,
        n => (n as usize).min(65_536),
    };
    let snapshot = node.link_snapshot(batch_size, |link, subject| pb::LinkEntry {
        link: link.as_bytes().to_vec(),
        subject_id: subject.as_bytes().to_vec(),
    });
    let (region, as_of_sequence) = (node.region.to_string(), snapshot.as_of_sequence);
    Box::pin(snapshot.batches.map(move |batch| {
        batch.map(|entries| pb::LinkBatch { region: region.clone(), entries, as_of_sequence }).map_err(Status::from)
    }))
}

pub(in crate::service) async fn info<S: Store>(node: &NodeService<S>) -> Result<pb::InfoResponse, NodeError> {
    let NodeInfo {
        packs_content_hash,
        packs_reload_error,
        packs,
        subjects,
        links,
        arbiter_map_digest,
        pending_releases,
    } = node.node_info().await?;
    Ok(pb::InfoResponse {
        region: node.region.to_string(),
        packs_content_hash,
        packs_reload_error: packs_reload_error.unwrap_or_default(),
        packs: packs.into_iter().map(convert::pack_ref_to_pb).collect(),
        subjects,
        links,
        arbiter_map_digest,
        pending_releases,
    })
}

fn event_to_pb(region: &RegionId, event: &ChangeEvent) -> common::ChangeEvent {
    let mut pb = common::ChangeEvent {
        sequence: event.sequence,
        at: Some(convert::to_timestamp(event.at)),
        region: region.to_string(),
        subject_ref: SubjectRef { region: region.clone(), id: event.subject }.to_string(),
        links: event.links.iter().map(Link::to_string).collect(),
        ..Default::default()
    };
    match &event.change {
        Change::Registered => pb.kind = common::ChangeKind::Registered as i32,
        Change::Erased => pb.kind = common::ChangeKind::Erased as i32,
        Change::LinksRemoved => pb.kind = common::ChangeKind::LinksRemoved as i32,
        Change::Restricted { restricted } => {
            pb.kind = common::ChangeKind::Restricted as i32;
            pb.restricted = *restricted;
        }
        Change::Consent { purpose, channels, state, terms, .. } => {
            pb.kind = common::ChangeKind::Consent as i32;
            pb.purpose = purpose.to_string();
            pb.channels = channels.iter().map(ToString::to_string).collect();
            pb.state = state.to_string();
            pb.expires_at = terms.expires_at.map(convert::to_timestamp);
            pb.conditional = terms.conditional;
        }
    }
    pb
}
