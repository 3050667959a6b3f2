//! `RegisterBatch`: many subjects registered in one call (`domicile import` registers the
//! subjects of a file this way), each item sent to its home region as `Register` would send it
//! (one node call per region, concurrently, on the region's bulk connections), outcomes back in
//! the caller's order. Each item is checked here as `Register` checks it (jurisdiction,
//! identifiers, residency, in-country collection, links this gateway knows to be held in another
//! region), so a refused item's identifiers are sent nowhere.

use domicile_proto::pb::gateway::v1 as pb;
use domicile_proto::pb::node::v1 as node_pb;
use domicile_proto::{convert, limits};
use domicile_runtime::identity::CallerIdentity;
use domicile_types::{Link, RegionId};
use tonic::Status;

use crate::error::{invalid, node_status};
use crate::gateway::Gateway;
use crate::node_client::write_on;

fn refused(id: u64, status: &Status) -> pb::RegisterBatchOutcome {
    pb::RegisterBatchOutcome {
        id,
        result: Some(pb::register_batch_outcome::Result::Refused(convert::item_error(status))),
    }
}

pub async fn register_batch(
    gateway: &Gateway,
    caller: &CallerIdentity,
    req: pb::RegisterBatchRequest,
) -> Result<pb::RegisterBatchResponse, Status> {
    // Counted before decoding too (`wire::RequestCodec`): the node's own bound.
    limits::REGISTER_BATCH_ITEMS.check("items", req.items.len()).map_err(invalid)?;
    let ids: Vec<u64> = req.items.iter().map(|item| item.id).collect();
    let mut outcomes: Vec<Option<pb::RegisterBatchOutcome>> = vec![None; req.items.len()];
    // Per item, the links this gateway computed, to check the node's answer against.
    let mut links_of: Vec<Vec<Link>> = vec![Vec::new(); req.items.len()];
    // Per region: the node request and the positions it carries (in increasing order).
    let mut per_region: Vec<(RegionId, node_pb::RegisterBatchRequest, Vec<usize>)> = Vec::new();
    for (position, item) in req.items.into_iter().enumerate() {
        let checked = convert::jurisdiction("jurisdiction", &item.jurisdiction)
            .and_then(|j| convert::identifiers("identifiers", &item.identifiers).map(|ids| (j, ids)))
            .map_err(invalid)
            .and_then(|(jurisdiction, identifiers)| {
                let home = gateway.registration_home(caller, &jurisdiction)?;
                let links: Vec<Link> = identifiers.iter().map(|id| gateway.link_key.link(id)).collect();
                gateway.refuse_links_held_elsewhere(&links, &home)?;
                Ok((home, jurisdiction, identifiers, links))
            });
        let (home, jurisdiction, identifiers, links) = match checked {
            Ok(checked) => checked,
            Err(status) => {
                outcomes[position] = Some(refused(item.id, &status));
                continue;
            }
        };
        let node_item = node_pb::RegisterBatchItem {
            id: position as u64,
            jurisdiction: jurisdiction.to_string(),
            identifiers: identifiers.iter().map(convert::identifier_to_pb).collect(),
        };
        links_of[position] = links;
        match per_region.iter_mut().find(|(r, ..)| *r == home) {
            Some((_, request, positions)) => {
                request.items.push(node_item);
                positions.push(position);
            }
            None => per_region.push((
                home,
                node_pb::RegisterBatchRequest { items: vec![node_item], caller_region: caller.region.to_string() },
                vec![position],
            )),
        }
    }
    let calls = per_region.into_iter().map(|(region, request, positions)| async move {
        let reply = match gateway.nodes.bulk_channel(&region) {
            Ok(bulk) => {
                write_on(bulk, request, |mut node, request| async move { node.register_batch(request).await }).await
            }
            Err(status) => Err(status),
        };
        (region, positions, reply)
    });
    for (region, positions, reply) in futures_util::future::join_all(calls).await {
        let answers = match reply {
            Ok(reply) => reply.into_inner().outcomes,
            Err(status) => {
                // Registering again finds what was stored: the caller may send these again.
                let status = node_status(&region, status);
                for position in positions {
                    if let (Some(&id), Some(slot)) = (ids.get(position), outcomes.get_mut(position)) {
                        *slot = Some(refused(id, &status));
                    }
                }
                continue;
            }
        };
        for answer in answers {
            let position = answer.id as usize;
            // Only an item sent to this region is answered by it.
            if positions.binary_search(&position).is_err() {
                continue;
            }
            // Once: an item answered twice keeps its first answer.
            let (Some(&id), Some(slot @ None), Some(links)) =
                (ids.get(position), outcomes.get_mut(position), links_of.get(position))
            else {
                continue;
            };
            let result = match answer.result {
                Some(node_pb::register_batch_outcome::Result::Registered(registered)) => {
                    match gateway.registered(&region, links, registered) {
                        Ok(registered) => pb::register_batch_outcome::Result::Registered(registered),
                        Err(status) => pb::register_batch_outcome::Result::Refused(convert::item_error(&status)),
                    }
                }
                Some(node_pb::register_batch_outcome::Result::Refused(e)) => {
                    pb::register_batch_outcome::Result::Refused(e)
                }
                None => continue,
            };
            *slot = Some(pb::RegisterBatchOutcome { id, result: Some(result) });
        }
    }
    // Every item has an outcome: one a node left out is refused, never reported registered.
    let lost = Status::internal("no outcome from the subject's home region");
    Ok(pb::RegisterBatchResponse {
        outcomes: outcomes
            .into_iter()
            .zip(ids)
            .map(|(outcome, id)| outcome.unwrap_or_else(|| refused(id, &lost)))
            .collect(),
    })
}
