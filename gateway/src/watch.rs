//! The gateway's `Watch`: every region's change events merged into one stream, resumable with a
//! token that holds a cursor per region.
//!
//! Token format (opaque to callers): `v1:` then `region=sequence` pairs joined by `,`, e.g.
//! `v1:eu-central=12,us-east=5`; a region absent from the token starts from its oldest event.
//! Events of one region keep their order; across regions the order is arrival order. A region
//! that is down contributes nothing until it returns, then resumes after its cursor; the other
//! regions keep flowing meanwhile.

use std::collections::BTreeMap;

use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::gateway::v1 as pb;
use domicile_proto::pb::node::v1 as node_pb;
use domicile_types::RegionId;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::gateway::Gateway;
use crate::node_client::NodeClient;
use crate::sync::Backoff;

const TOKEN_VERSION: &str = "v1:";
const BUFFER: usize = 256;

pub type EventStream = ReceiverStream<Result<pb::WatchEvent, Status>>;

type Cursors = BTreeMap<RegionId, Option<u64>>;

pub fn encode_token(cursors: &Cursors) -> String {
    let pairs: Vec<String> =
        cursors.iter().filter_map(|(region, seq)| seq.map(|seq| format!("{region}={seq}"))).collect();
    format!("{TOKEN_VERSION}{}", pairs.join(","))
}

/// Cursors for `regions` from a token; every region of the deployment gets an entry.
pub fn decode_token(token: &str, regions: &[RegionId]) -> Result<Cursors, Status> {
    let invalid = || Status::invalid_argument("invalid `resume_token`: pass a token from an earlier event, unchanged");
    let mut cursors: Cursors = regions.iter().map(|r| (r.clone(), None)).collect();
    if token.is_empty() {
        return Ok(cursors);
    }
    let body = token.strip_prefix(TOKEN_VERSION).ok_or_else(invalid)?;
    for pair in body.split(',').filter(|p| !p.is_empty()) {
        let (region, seq) = pair.split_once('=').ok_or_else(invalid)?;
        let region = RegionId::parse(region).map_err(|_| invalid())?;
        let seq: u64 = seq.parse().map_err(|_| invalid())?;
        match cursors.get_mut(&region) {
            Some(slot @ None) => *slot = Some(seq),
            // A repeated region, or one this deployment does not have.
            _ => return Err(invalid()),
        }
    }
    Ok(cursors)
}

pub fn watch(gateway: &Gateway, token: &str) -> Result<EventStream, Status> {
    let mut cursors = decode_token(token, gateway.nodes.regions())?;
    let mut followers = JoinSet::new();
    let (merge_tx, mut merge_rx) = mpsc::channel::<(RegionId, common::ChangeEvent)>(BUFFER);
    for (region, cursor) in &cursors {
        let client = gateway.nodes.client(region)?;
        followers.spawn(follow(region.clone(), client, *cursor, merge_tx.clone()));
    }
    drop(merge_tx);
    let (tx, rx) = mpsc::channel(BUFFER);
    let shutdown = gateway.shutdown.clone();
    tokio::spawn(async move {
        // Owning the followers here means they are aborted as soon as the caller goes away, or
        // the gateway stops.
        let _followers = followers;
        let merge = async {
            while let Some((region, event)) = merge_rx.recv().await {
                cursors.insert(region, Some(event.sequence));
                let resume_token = encode_token(&cursors);
                if tx.send(Ok(pb::WatchEvent { event: Some(event), resume_token })).await.is_err() {
                    return;
                }
            }
        };
        // The stream never ends by itself, and a graceful stop waits for every connection to
        // close: end it when shutdown begins, after the events already queued, with UNAVAILABLE
        // (retryable) so the caller resumes with its last token on another or restarted gateway.
        tokio::select! {
            biased;
            () = shutdown.begun() => {
                let _ = tx.try_send(Err(Status::unavailable("gateway is shutting down")));
            }
            () = merge => {}
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Follows one region's events after `cursor`, reconnecting with backoff, until the merger goes.
async fn follow(
    region: RegionId,
    client: NodeClient,
    mut cursor: Option<u64>,
    tx: mpsc::Sender<(RegionId, common::ChangeEvent)>,
) {
    let mut backoff = Backoff::new();
    loop {
        if let Ok(response) = client.clone().watch(node_pb::WatchRequest { after_sequence: cursor }).await {
            backoff.reset();
            let mut stream = response.into_inner();
            while let Ok(Some(event)) = stream.message().await {
                if event.region != region.as_str() || cursor.is_some_and(|c| event.sequence <= c) {
                    continue;
                }
                cursor = Some(event.sequence);
                if tx.send((region.clone(), event)).await.is_err() {
                    return;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        backoff.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let regions = [RegionId::parse("eu-central").unwrap(), RegionId::parse("us-east").unwrap()];
        let mut cursors = decode_token("", &regions).unwrap();
        assert!(cursors.values().all(Option::is_none));
        cursors.insert(regions[1].clone(), Some(42));
        let token = encode_token(&cursors);
        assert_eq!(token, "v1:us-east=42");
        assert_eq!(decode_token(&token, &regions).unwrap(), cursors);
        for bad in ["v2:us-east=1", "v1:us-east=x", "v1:ap-south=1", "v1:us-east=1,us-east=2", "garbage"] {
            assert_eq!(decode_token(bad, &regions).unwrap_err().code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }
}
