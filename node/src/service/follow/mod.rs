//! Following a node: its change events (Watch), a snapshot of its links (to build a gateway's
//! directory) and what it reports about itself (Info).

pub(super) mod wire;

use std::sync::Arc;

use domicile_policy::PackRef;
use domicile_types::{Link, SubjectId};
use tokio_stream::wrappers::ReceiverStream;

use super::NodeService;
use crate::error::NodeError;
use crate::store::{ChangeEvent, Store, StoreError};

/// At most this many threads scan links for one snapshot.
const MAX_LINK_SCAN_PARTS: usize = 4;
/// Events sent to one watcher per read of the store, bounding the work of one wake-up.
const WATCH_BATCH: usize = 1024;

/// The links of this node, in batches, as of a point in its change events.
pub(crate) struct LinkSnapshot<E> {
    /// Every durable change event up to this one is reflected in the batches.
    pub as_of_sequence: Option<u64>,
    pub batches: ReceiverStream<Result<Vec<E>, NodeError>>,
}

/// What a node reports about itself: its region, packs, counts and ownership state.
pub(crate) struct NodeInfo {
    pub packs_content_hash: String,
    /// Why the last reload of the packs failed, if it did (the packs in use are older).
    pub packs_reload_error: Option<String>,
    pub packs: Vec<PackRef>,
    pub subjects: u64,
    pub links: u64,
    pub arbiter_map_digest: String,
    pub pending_releases: u64,
}

impl<S: Store> NodeService<S> {
    /// Every (link, subject) pair of this region, made into entries by `entry`, in batches of at
    /// most `batch_size`. Batches of different parts of the key space interleave; each holds
    /// links in order and parts do not overlap.
    pub(crate) fn link_snapshot<E: Send + 'static>(
        &self,
        batch_size: usize,
        entry: fn(Link, SubjectId) -> E,
    ) -> LinkSnapshot<E> {
        // A cold node pages its links tree in from disk as it goes; that dominates a gateway's
        // cold start, so the key space is split into parts scanned side by side (entries are
        // made there too, off the stream's task).
        let parts = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_LINK_SCAN_PARTS);
        let (tx, rx) = tokio::sync::mpsc::channel(2 * parts);
        // Read before iterating: every durable event up to here is already in the links tree.
        let as_of_sequence = *self.durable.borrow();
        let batch_size = batch_size.max(1);
        for first_bytes in link_scan_parts(parts) {
            let (store, tx) = (Arc::clone(&self.store), tx.clone());
            // Each part pages through its range on its own (the store keeps blocking reads off
            // the async workers).
            tokio::spawn(async move {
                let mut after = None;
                loop {
                    let page = match store.links_page(first_bytes.clone(), after, batch_size).await {
                        Ok(page) => page,
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    };
                    let Some((last, _)) = page.last() else { return };
                    after = Some(*last);
                    let full = page.len() == batch_size;
                    let batch = page.into_iter().map(|(link, subject)| entry(link, subject)).collect();
                    if tx.send(Ok(batch)).await.is_err() || !full {
                        return;
                    }
                }
            });
        }
        LinkSnapshot { as_of_sequence, batches: ReceiverStream::new(rx) }
    }

    pub(crate) async fn node_info(&self) -> Result<NodeInfo, NodeError> {
        let (subjects, links) = self.store.counts().await?;
        let loaded = self.packs.current();
        Ok(NodeInfo {
            packs_content_hash: loaded.content_hash.clone(),
            packs_reload_error: self.packs.last_error(),
            packs: loaded.packs.packs().map(|p| p.pack_ref()).collect(),
            subjects,
            links,
            arbiter_map_digest: self.ownership.map().digest().to_owned(),
            pending_releases: self.store.pending_release_count().await?,
        })
    }

    /// The change events after `after_sequence` (all without), then each one as it becomes
    /// durable, never one a crash could still undo. Ends when the node begins shutting down.
    pub(crate) fn follow_events(&self, after_sequence: Option<u64>) -> ReceiverStream<Result<ChangeEvent, NodeError>> {
        let mut after = after_sequence;
        let mut durable = self.durable.subscribe();
        let store = Arc::clone(&self.store);
        let shutdown = self.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BATCH);
        tokio::spawn(async move {
            let follow = async {
                loop {
                    let limit = *durable.borrow_and_update();
                    // Only events known durable (up to `limit`), never one a crash could undo.
                    let batch: Result<Vec<ChangeEvent>, StoreError> = match limit {
                        None => Ok(Vec::new()),
                        Some(limit) => store
                            .events_page(after, WATCH_BATCH)
                            .await
                            .map(|page| page.into_iter().take_while(|e| e.sequence <= limit).collect()),
                    };
                    let batch = match batch {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
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
                    for event in batch {
                        after = Some(event.sequence);
                        if tx.send(Ok(event)).await.is_err() {
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
                    let _ = tx.try_send(Err(NodeError::Unavailable("node is shutting down")));
                }
                () = follow => {}
            }
        });
        ReceiverStream::new(rx)
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
