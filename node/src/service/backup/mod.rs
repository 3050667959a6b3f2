//! `Backup`: a staged online backup (`store::sled_store::backup`) streamed to an operator of the
//! region as files, the manifest last, then removed from the node's disk.

use std::pin::Pin;

use domicile_proto::pb::node::v1 as pb;
use tokio::io::AsyncReadExt as _;
use tokio_stream::Stream;
use tonic::{Request, Status};

use super::NodeService;
use crate::access::Requester;
use crate::error::NodeError;
use crate::store::Store;

pub type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

/// Bytes per chunk.
const CHUNK: usize = 1 << 20;

pub(in crate::service) async fn backup<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::BackupRequest>,
) -> Result<BackupStream, NodeError> {
    if !Requester::is_in_region(Requester::of(&request)) {
        return Err(NodeError::PermissionDenied("a backup is served to operators of this region only"));
    }
    let staged = node.store.backup(domicile_runtime::process::now_unix()).await?;
    tracing::info!(
        subjects = staged.manifest.subjects,
        audit_seq = staged.manifest.audit_seq,
        last_event = staged.manifest.last_event,
        "backup staged"
    );
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        // Holds the staged files until the last chunk is sent (or the caller goes away).
        for path in staged.files() {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let sent = send_file(&path, &name, &sender).await;
            if let Err(status) = sent {
                let _ = sender.send(Err(status)).await;
                return;
            }
        }
        drop(staged);
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver)))
}

async fn send_file(
    path: &std::path::Path,
    name: &str,
    sender: &tokio::sync::mpsc::Sender<Result<pb::BackupChunk, Status>>,
) -> Result<(), Status> {
    let unreadable = |e: std::io::Error| {
        tracing::error!(error = %e, file = name, "cannot read a staged backup file");
        Status::internal("cannot read the staged backup")
    };
    let mut file = tokio::fs::File::open(path).await.map_err(unreadable)?;
    let mut first = true;
    loop {
        let mut data = vec![0u8; CHUNK];
        let n = file.read(&mut data).await.map_err(unreadable)?;
        if n == 0 && !first {
            return Ok(());
        }
        data.truncate(n);
        first = false;
        if sender.send(Ok(pb::BackupChunk { file: name.to_owned(), data })).await.is_err() {
            return Err(Status::cancelled("the caller went away"));
        }
        if n == 0 {
            return Ok(());
        }
    }
}
