//! `ImportConsent`: a batch of imported consent entries, each sent to its subject's home region
//! (one node call per region, concurrently), outcomes back in the caller's order. The node
//! applies each entry once per source event, so a call retried on another replica is safe.

use domicile_proto::pb::gateway::v1 as pb;
use domicile_proto::pb::node::v1 as node_pb;
use domicile_proto::{convert, limits};
use domicile_runtime::identity::CallerIdentity;
use domicile_types::RegionId;
use tonic::Status;

use crate::error::invalid;
use crate::gateway::Gateway;
use crate::node_client::write_on;

/// The outcome of an item refused before any node saw it.
fn refused(id: u64, status: &Status) -> pb::ImportConsentOutcome {
    pb::ImportConsentOutcome {
        id,
        result: Some(pb::import_consent_outcome::Result::Refused(convert::item_error(status))),
    }
}

pub async fn import_consent(
    gateway: &Gateway,
    caller: &CallerIdentity,
    req: pb::ImportConsentRequest,
) -> Result<pb::ImportConsentResponse, Status> {
    // Counted before decoding too (`wire::RequestCodec`): this is the node's own bound.
    limits::IMPORT_ITEMS.check("items", req.items.len()).map_err(invalid)?;
    let ids: Vec<u64> = req.items.iter().map(|item| item.id).collect();
    let mut outcomes: Vec<Option<pb::ImportConsentOutcome>> = vec![None; req.items.len()];
    // Per region: the node request, whose items carry their position in the caller's request.
    let mut per_region: Vec<(RegionId, node_pb::ImportConsentRequest)> = Vec::new();
    for (index, item) in req.items.into_iter().enumerate() {
        // Checked here too, so a bad item never reaches a node.
        let checked = convert::record_shape(&item.channels, item.evidence.as_ref())
            .and_then(|_| convert::purpose("purpose", &item.purpose).map(|_| ()))
            .and_then(|()| convert::consent_action("action", item.action).map(|_| ()))
            .map_err(invalid)
            .and_then(|()| gateway.capture_target(item.subject.as_ref()));
        let (region, key) = match checked {
            Ok(target) => target,
            Err(status) => {
                if let Some(slot) = outcomes.get_mut(index) {
                    *slot = Some(refused(item.id, &status));
                }
                continue;
            }
        };
        let node_item = node_pb::ImportConsentItem {
            id: index as u64,
            subject: Some(key.to_pb()),
            purpose: item.purpose,
            channels: item.channels,
            action: item.action,
            evidence: item.evidence,
            captured_at: item.captured_at,
            expires_at: item.expires_at,
            source_system: item.source_system,
            source_event_id: item.source_event_id,
        };
        match per_region.iter_mut().find(|(r, _)| *r == region) {
            Some((_, request)) => request.items.push(node_item),
            None => per_region.push((
                region,
                node_pb::ImportConsentRequest {
                    items: vec![node_item],
                    broadcast: req.broadcast,
                    mapping_version: req.mapping_version.clone(),
                    dry_run: req.dry_run,
                    caller_region: caller.region.to_string(),
                },
            )),
        }
    }
    let calls = per_region.into_iter().map(|(region, request)| async move {
        let positions: Vec<usize> = request.items.iter().map(|item| item.id as usize).collect();
        let reply = match gateway.nodes.bulk_channel(&region) {
            Ok(bulk) => {
                write_on(bulk, request, |mut node, request| async move { node.import_consent(request).await }).await
            }
            Err(status) => Err(status),
        };
        (region, positions, reply)
    });
    for (region, positions, reply) in futures_util::future::join_all(calls).await {
        match reply {
            Ok(reply) => {
                for outcome in reply.into_inner().outcomes {
                    let position = outcome.id as usize;
                    let (Some(&id), Some(slot)) = (ids.get(position), outcomes.get_mut(position)) else { continue };
                    let result = outcome.result.map(|r| match r {
                        node_pb::import_consent_outcome::Result::Accepted(s) => {
                            pb::import_consent_outcome::Result::Accepted(s)
                        }
                        node_pb::import_consent_outcome::Result::Duplicate(s) => {
                            pb::import_consent_outcome::Result::Duplicate(s)
                        }
                        node_pb::import_consent_outcome::Result::Refused(e) => {
                            pb::import_consent_outcome::Result::Refused(e)
                        }
                    });
                    *slot = Some(pb::ImportConsentOutcome { id, result });
                }
            }
            Err(status) => {
                tracing::warn!(%region, code = ?status.code(), "an import batch failed in a region");
                for position in positions {
                    if let (Some(&id), Some(slot)) = (ids.get(position), outcomes.get_mut(position)) {
                        *slot = Some(refused(id, &status));
                    }
                }
            }
        }
    }
    // Every item has an outcome: one a node left out is refused, never reported written.
    let lost = Status::internal("no outcome from the subject's region");
    Ok(pb::ImportConsentResponse {
        outcomes: outcomes
            .into_iter()
            .zip(ids)
            .map(|(outcome, id)| outcome.unwrap_or_else(|| refused(id, &lost)))
            .collect(),
    })
}
