//! Following a node: its change events (Watch), a snapshot of its links (ListLinks, to build a
//! gateway's directory) and what it reports about itself (Info).

use std::pin::Pin;
use std::sync::Arc;

use domicile_proto::convert;
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as pb;
use domicile_types::{Link, RegionId, SubjectRef};
use tokio_stream::Stream;
use tonic::Status;

use super::NodeService;
use crate::error::store_status;
use crate::store::{Change, ChangeEvent, Store, StoreError};

const DEFAULT_LINK_BATCH: usize = 4096;
/// At most this many threads scan links for one ListLinks call.
const MAX_LINK_SCAN_PARTS: usize = 4;

/// Turns stored events into wire events; owned by each watch task.
struct EventRenderer {
    region: RegionId,
}

impl EventRenderer {
    fn render(&self, event: &ChangeEvent) -> common::ChangeEvent {
        let mut pb = common::ChangeEvent {
            sequence: event.sequence,
            at: Some(convert::to_timestamp(event.at)),
            region: self.region.to_string(),
            subject_ref: SubjectRef { region: self.region.clone(), id: event.subject }.to_string(),
            links: event.links.iter().map(Link::to_string).collect(),
            ..Default::default()
        };
        match &event.change {
            Change::Registered => pb.kind = common::ChangeKind::Registered as i32,
            Change::Erased => pb.kind = common::ChangeKind::Erased as i32,
            Change::LinksRemoved => pb.kind = common::ChangeKind::LinksRemoved as i32,
            Change::Consent { purpose, channels, state } => {
                pb.kind = common::ChangeKind::Consent as i32;
                pb.purpose = purpose.to_string();
                pb.channels = channels.iter().map(ToString::to_string).collect();
                pb.state = state.to_string();
            }
        }
        pb
    }
}

pub type LinkStream = Pin<Box<dyn Stream<Item = Result<pb::LinkBatch, Status>> + Send>>;
pub type EventStream = Pin<Box<dyn Stream<Item = Result<common::ChangeEvent, Status>> + Send>>;

/// Events sent to one watcher per read of the store, bounding the work of one wake-up.
const WATCH_BATCH: usize = 1024;

impl<S: Store> NodeService<S> {
    pub(super) fn link_snapshot(&self, request: pb::ListLinksRequest) -> LinkStream {
        let batch_size = match request.batch_size {
            0 => DEFAULT_LINK_BATCH,
            n => (n as usize).min(65_536),
        };
        // A cold node pages its links tree in from disk as it goes; that dominates a gateway's
        // cold start, so the key space is split into parts scanned side by side. Batches of
        // different parts interleave; each holds links in order and parts do not overlap.
        let parts = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_LINK_SCAN_PARTS);
        let (tx, rx) = tokio::sync::mpsc::channel(2 * parts);
        let region = self.region.to_string();
        // Read before iterating: every durable event up to here is already in the links tree.
        let as_of_sequence = *self.durable.borrow();
        for first_bytes in link_scan_parts(parts) {
            let (store, tx, region) = (Arc::clone(&self.store), tx.clone(), region.clone());
            // sled iteration blocks; keep it off the async workers.
            tokio::task::spawn_blocking(move || {
                let mut batch = Vec::with_capacity(batch_size);
                for item in store.links(first_bytes) {
                    match item {
                        Ok((link, subject)) => {
                            batch.push(pb::LinkEntry {
                                link: link.as_bytes().to_vec(),
                                subject_id: subject.as_bytes().to_vec(),
                            });
                            if batch.len() == batch_size {
                                let entries = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
                                let batch = pb::LinkBatch { region: region.clone(), entries, as_of_sequence };
                                if tx.blocking_send(Ok(batch)).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            let _ = tx.blocking_send(Err(store_status(e)));
                            return;
                        }
                    }
                }
                if !batch.is_empty() {
                    let _ = tx.blocking_send(Ok(pb::LinkBatch { region, entries: batch, as_of_sequence }));
                }
            });
        }
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    pub(super) fn node_info(&self) -> Result<pb::InfoResponse, Status> {
        let (subjects, links) = self.store.counts().map_err(store_status)?;
        let loaded = self.packs.current();
        Ok(pb::InfoResponse {
            region: self.region.to_string(),
            packs_content_hash: loaded.content_hash.clone(),
            packs_reload_error: self.packs.last_error().unwrap_or_default(),
            packs: loaded.packs.packs().map(|p| convert::pack_ref_to_pb(p.pack_ref())).collect(),
            subjects,
            links,
            arbiter_map_digest: self.ownership.map().digest().to_owned(),
            pending_releases: self.store.pending_release_count().map_err(store_status)?,
        })
    }

    pub(super) fn follow_events(&self, after_sequence: Option<u64>) -> EventStream {
        let mut after = after_sequence;
        let mut durable = self.durable.subscribe();
        let store = Arc::clone(&self.store);
        let shutdown = self.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BATCH);
        let this = EventRenderer { region: self.region.clone() };
        tokio::spawn(async move {
            let follow = async {
                loop {
                    let limit = *durable.borrow_and_update();
                    let batch: Result<Vec<ChangeEvent>, StoreError> = store
                        .events_after(after)
                        .take_while(|e| match (e, limit) {
                            (Ok(e), Some(limit)) => e.sequence <= limit,
                            (Ok(_), None) => false,
                            (Err(_), _) => true,
                        })
                        .take(WATCH_BATCH)
                        .collect();
                    let batch = match batch {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = tx.send(Err(store_status(e))).await;
                            return;
                        }
                    };
                    if batch.is_empty() {
                        // Wait for the next durable write; stop if the service goes away.
                        tokio::select! {
                            changed = durable.changed() => if changed.is_err() { return },
                            () = tx.closed() => return,
                        }
                        continue;
                    }
                    for event in &batch {
                        after = Some(event.sequence);
                        if tx.send(Ok(this.render(event))).await.is_err() {
                            return;
                        }
                    }
                }
            };
            // A graceful stop waits for every connection to close, and a follower's stream never
            // ends by itself: it would hold the gateway's connection (and this process) open. So
            // it ends when shutdown begins, with UNAVAILABLE after the events already queued: the
            // follower reconnects (to this node once it is back) and resumes after its cursor.
            // A follower not reading gets no status (its queue is full), just the end of stream,
            // on which followers reconnect too.
            tokio::select! {
                biased;
                () = shutdown.begun() => {
                    let _ = tx.try_send(Err(Status::unavailable("node is shutting down")));
                }
                () = follow => {}
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

/// Splits the first-byte space of links into `parts` contiguous, disjoint ranges covering it all.
pub(super) fn link_scan_parts(parts: usize) -> Vec<std::ops::RangeInclusive<u8>> {
    let parts = parts.clamp(1, 256);
    (0..parts)
        .map(|i| {
            let first = (i * 256 / parts) as u8;
            let last = ((i + 1) * 256 / parts - 1) as u8;
            first..=last
        })
        .collect()
}
