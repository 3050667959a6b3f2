//! Keeps the link directory current: one task per region loads the node's links (ListLinks) and
//! then follows its change events (Watch) for as long as the gateway runs, reconnecting with
//! backoff and resuming after the last sequence applied, so no event is missed or applied twice.
//!
//! Snapshot and stream: every link batch names the sequence of the last change event already
//! reflected in the snapshot (`as_of_sequence`), and the watch starts right after it. Events that
//! raced with the snapshot are replayed on top of it in order, which is idempotent (the last event
//! touching a link wins), so nothing is missed and no erased link reappears.

use std::sync::Arc;
use std::time::Duration;

use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as node_pb;
use domicile_types::{Link, RegionId, SubjectId, SubjectRef};
use tokio::sync::oneshot;

use crate::directory::{Directory, Update};
use crate::metrics::RegionLag;
use crate::node_client::NodeClient;

/// Reconnect delays grow from the first to the last, doubling.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Exponential backoff between reconnect attempts, reset after a success.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self { next: BACKOFF_MIN }
    }

    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(BACKOFF_MAX);
    }
}

/// Follows one region forever. `loaded` fires once its first snapshot is in the directory;
/// `lag` tracks how far behind the node the directory may be (`metrics.rs`).
pub(crate) async fn follow_region(
    region: RegionId,
    client: NodeClient,
    directory: Arc<Directory>,
    loaded: oneshot::Sender<()>,
    lag: Arc<RegionLag>,
) {
    let mut loaded = Some(loaded);
    let mut backoff = Backoff::new();
    let mut cursor: Option<u64> = None;
    while loaded.is_some() {
        match snapshot(&region, client.clone(), &directory).await {
            Ok((count, as_of)) => {
                cursor = as_of;
                directory.set_applied(&region, as_of);
                directory.mark_synced(&region);
                lag.following();
                tracing::info!(%region, links = count, "region directory loaded");
                if let Some(tx) = loaded.take() {
                    let _ = tx.send(());
                }
                backoff.reset();
            }
            Err(status) => {
                tracing::warn!(%region, code = ?status.code(), "cannot load region directory yet; retrying");
                backoff.wait().await;
            }
        }
    }
    loop {
        match client.clone().watch(node_pb::WatchRequest { after_sequence: cursor }).await {
            Ok(response) => {
                backoff.reset();
                lag.following();
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(event)) => {
                            if cursor.is_some_and(|c| event.sequence <= c) {
                                continue;
                            }
                            apply(&region, &event, &directory);
                            lag.applied(event.at.as_ref());
                            cursor = Some(event.sequence);
                        }
                        Ok(None) => {
                            tracing::info!(%region, "change stream ended; reconnecting");
                            break;
                        }
                        Err(status) => {
                            tracing::warn!(%region, code = ?status.code(), "change stream broke; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(status) => tracing::debug!(%region, code = ?status.code(), "cannot watch region yet; retrying"),
        }
        lag.stopped();
        backoff.wait().await;
    }
}

/// Applies one change event. Malformed events come from a broken node: they are logged (without
/// their contents) and skipped, leaving the node authoritative for anything they named.
fn apply(region: &RegionId, event: &common::ChangeEvent, directory: &Directory) {
    if event.region != region.as_str() {
        tracing::error!(%region, "node sent an event of another region; ignored");
        return;
    }
    let subject = match SubjectRef::parse(&event.subject_ref) {
        Ok(subject) if &subject.region == region => subject,
        _ => {
            tracing::error!(%region, sequence = event.sequence, "malformed subject ref in change event; ignored");
            return;
        }
    };
    let Ok(links) = event.links.iter().map(|l| Link::parse(l)).collect::<Result<Vec<_>, _>>() else {
        tracing::error!(%region, sequence = event.sequence, "malformed link in change event; ignored");
        return;
    };
    match common::ChangeKind::try_from(event.kind) {
        Ok(common::ChangeKind::Registered) => {
            directory.apply_event(region, event.sequence, Update::Map(&subject, &links));
        }
        Ok(common::ChangeKind::Erased) => {
            let removed = directory.apply_event(region, event.sequence, Update::Unmap(&subject, &links));
            tracing::debug!(%region, links = removed, "links dropped after an erasure");
        }
        Ok(common::ChangeKind::LinksRemoved) => {
            // Rectification: the subject stays, only these links stop naming it.
            let removed = directory.apply_event(region, event.sequence, Update::Unmap(&subject, &links));
            tracing::debug!(%region, links = removed, "links dropped after a rectification");
        }
        // Consent and restrictions are decided by the node, which reads them itself. Not noted as
        // applied either: a reply is stale only behind an event that changed a link's mapping.
        Ok(common::ChangeKind::Consent | common::ChangeKind::Restricted | common::ChangeKind::Unspecified) | Err(_) => {
        }
    }
}

/// Loads a region's links into the directory.
async fn snapshot(
    region: &RegionId,
    mut client: NodeClient,
    directory: &Directory,
) -> Result<(usize, Option<u64>), tonic::Status> {
    let mut stream = client.list_links(node_pb::ListLinksRequest { batch_size: 0 }).await?.into_inner();
    // A failed earlier attempt may have staged part of a snapshot: start over.
    directory.begin_load(region);
    let mut count = 0;
    let mut as_of = None;
    while let Some(batch) = stream.message().await? {
        as_of = batch.as_of_sequence;
        if batch.region != region.as_str() {
            return Err(tonic::Status::failed_precondition("node answered for another region"));
        }
        // A malformed entry means a broken node: refuse the whole load rather than serve a
        // directory with silent holes.
        let entries = batch
            .entries
            .iter()
            .map(|e| match (Link::from_slice(&e.link), SubjectId::from_slice(&e.subject_id)) {
                (Ok(link), Ok(subject)) => Ok((link, subject)),
                _ => Err(tonic::Status::data_loss("node sent a malformed link entry")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        count += entries.len();
        directory.load_batch(region, entries);
    }
    Ok((count, as_of))
}
