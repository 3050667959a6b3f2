//! Registering an import's new subjects in `RegisterBatch` calls: a file that brings its people
//! with it (a first import, most of its subjects new) spent most of its time registering them
//! one call each (each a claim round and a durable commit at the nodes); in calls of
//! [`ITEMS_PER_CALL`] those are paid once per call and region.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

use domicile_proto::limits;

use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::gateway::v1 as pb;
use domicile_proto::pb::gateway::v1::domicile_client::DomicileClient;
use futures_util::StreamExt as _;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

/// A subject to register: its cache key, jurisdiction and identifiers (kind, value).
pub(super) type Wanted = (String, String, Vec<(String, String)>);
/// What became of one: its subject ref, or the status its registration was refused with.
pub(super) type Found = (String, Result<Option<String>, tonic::Status>);

/// Items per `RegisterBatch` call (the gateway takes up to 1,000): a node registers a call's
/// subjects under one set of identifier locks, so smaller calls let other writes in between.
const ITEMS_PER_CALL: usize = 250;
/// Largest call sent: under the gateway's limit on a bulk request (1 MiB), as ImportConsent's.
const MAX_CALL_BYTES: usize = 960 * 1024;
/// Permits of the importer's registration semaphore one call takes: with 64, four calls at once,
/// each spread over the regions.
const PERMITS_PER_CALL: u32 = 16;

/// Registers `wanted` (or finds the subjects that hold their identifiers) in `RegisterBatch`
/// calls, at most as many at once as `permits` allows. An item answered with a transient
/// status (an arbiter unreachable for a moment, a region shedding load) is sent again, backing
/// off, as a whole call would be; one refused for good keeps its status. A gateway that serves
/// no `RegisterBatch` (an older one: UNIMPLEMENTED, or PERMISSION_DENIED where it asks `admin`
/// of a method it does not know) gets one `Register` per subject instead, for the rest of the run.
/// A subject with more identifiers than a registration takes, or a call refused whole, is sent
/// alone, so it is refused alone.
pub(super) async fn register_all(
    client: &DomicileClient<Channel>,
    wanted: Vec<Wanted>,
    permits: &Arc<Semaphore>,
    one_by_one_only: &Arc<AtomicBool>,
) -> Vec<Found> {
    // A subject with more identifiers than a registration takes is sent alone: refused alone, as
    // `Register` refuses it, not with the whole call.
    let (alone, batched): (Vec<Wanted>, Vec<Wanted>) = wanted
        .into_iter()
        .partition(|(_, _, identifiers)| identifiers.len() > limits::IDENTIFIERS.max || one_by_one_only.load(Relaxed));
    let mut calls: Vec<Vec<Wanted>> = Vec::new();
    let mut size = 0usize;
    for item in batched {
        let len = item.1.len() + item.2.iter().map(|(kind, value)| kind.len() + value.len() + 8).sum::<usize>() + 16;
        if calls.last().is_none_or(|c| c.len() == ITEMS_PER_CALL || size + len > MAX_CALL_BYTES) {
            calls.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(call) = calls.last_mut() {
            call.push(item);
        }
    }
    let mut found = if alone.is_empty() {
        Vec::new()
    } else {
        // Never closed: the semaphore lives as long as the run.
        let _permits = permits.acquire_many(PERMITS_PER_CALL).await.ok();
        one_by_one(client, alone).await
    };
    let batched: Vec<Found> = futures_util::stream::iter(calls)
        .map(|items| {
            let (client, permits, one_by_one_only) = (client.clone(), Arc::clone(permits), Arc::clone(one_by_one_only));
            async move {
                // Never closed: the semaphore lives as long as the run.
                let _permits = permits.acquire_many_owned(PERMITS_PER_CALL).await.ok();
                register_call(client, items, &one_by_one_only).await
            }
        })
        .buffer_unordered(usize::MAX)
        .flat_map(futures_util::stream::iter)
        .collect()
        .await;
    found.extend(batched);
    found
}

/// One call's items, sent until each has an answer that is not "not now".
async fn register_call(
    mut client: DomicileClient<Channel>,
    mut pending: Vec<Wanted>,
    one_by_one_only: &AtomicBool,
) -> Vec<Found> {
    let mut out = Vec::with_capacity(pending.len());
    let mut attempt = 0u32;
    while !pending.is_empty() {
        let request = pb::RegisterBatchRequest {
            items: pending
                .iter()
                .enumerate()
                .map(|(id, (_, jurisdiction, identifiers))| pb::RegisterBatchItem {
                    id: id as u64,
                    jurisdiction: jurisdiction.clone(),
                    identifiers: identifiers
                        .iter()
                        .map(|(kind, value)| common::Identifier { kind: kind.clone(), value: value.clone() })
                        .collect(),
                })
                .collect(),
        };
        let again_allowed = attempt < super::driver::MAX_ATTEMPTS;
        match client.register_batch(request).await {
            Ok(reply) => {
                let mut answers: Vec<Option<pb::register_batch_outcome::Result>> =
                    pending.iter().map(|_| None).collect();
                for outcome in reply.into_inner().outcomes {
                    if let Some(slot) = answers.get_mut(outcome.id as usize) {
                        *slot = outcome.result;
                    }
                }
                let mut again = Vec::new();
                for (item, answer) in pending.into_iter().zip(answers) {
                    match answer {
                        Some(pb::register_batch_outcome::Result::Registered(registered)) => {
                            out.push((item.0, Ok(Some(registered.subject_ref))));
                        }
                        Some(pb::register_batch_outcome::Result::Refused(error)) => {
                            let status = tonic::Status::new(tonic::Code::from(error.code), error.message);
                            if super::driver::transient(status.code()) && again_allowed {
                                again.push(item);
                            } else {
                                out.push((item.0, Err(status)));
                            }
                        }
                        // Never taken as registered.
                        None => out.push((item.0, Err(tonic::Status::internal("no outcome for a registration")))),
                    }
                }
                pending = again;
            }
            // A gateway without the method: every later call of this run goes one by one too.
            Err(status) if matches!(status.code(), tonic::Code::Unimplemented | tonic::Code::PermissionDenied) => {
                one_by_one_only.store(true, Relaxed);
                out.extend(one_by_one(&client, pending).await);
                return out;
            }
            // The call refused as a whole (an item the gateway's limits refuse before decoding):
            // each subject sent alone gets its own answer.
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                out.extend(one_by_one(&client, pending).await);
                return out;
            }
            Err(status) if super::driver::transient(status.code()) && again_allowed => {}
            Err(status) => {
                out.extend(pending.into_iter().map(|(key, ..)| (key, Err(status.clone()))));
                return out;
            }
        }
        if !pending.is_empty() {
            attempt += 1;
            tokio::time::sleep(super::driver::backoff(attempt)).await;
        }
    }
    out
}

/// `Register` per subject, a few at once (a gateway without `RegisterBatch`).
async fn one_by_one(client: &DomicileClient<Channel>, items: Vec<Wanted>) -> Vec<Found> {
    futures_util::stream::iter(items)
        .map(|(key, jurisdiction, identifiers)| {
            let client = client.clone();
            async move { (key, super::driver::subject_of(&client, jurisdiction, identifiers, false).await) }
        })
        .buffer_unordered(PERMITS_PER_CALL as usize)
        .collect()
        .await
}
