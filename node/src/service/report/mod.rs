//! `ConsentReport`: the region's consent for auditors, streamed (bounded memory): the consent in
//! force per subject, purpose and channel with the ledger entry that put it there (its
//! evidence), or the ledger entries recorded in a period. Subjects appear by subject ref only.

use std::pin::Pin;

use domicile_proto::convert;
use domicile_proto::pb::node::v1 as pb;
use tokio_stream::Stream;
use tonic::{Request, Status};

use super::NodeService;
use super::consent::wire::entry_to_pb;
use crate::access::Requester;
use crate::error::NodeError;
use crate::store::Store;

pub type ReportStream = Pin<Box<dyn Stream<Item = Result<pb::ConsentReportRow, Status>> + Send>>;

/// Subjects read per page.
const PAGE: usize = 256;

pub(in crate::service) fn consent_report<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::ConsentReportRequest>,
) -> Result<ReportStream, NodeError> {
    if !Requester::is_in_region(Requester::of(&request)) {
        return Err(NodeError::PermissionDenied("a consent report is served to operators of this region only"));
    }
    let req = request.into_inner();
    let from = convert::timestamp("from", req.from.as_ref())?;
    let until = convert::timestamp("until", req.until.as_ref())?;
    let in_period = move |at: i64| from.is_none_or(|f| at >= f) && until.is_none_or(|u| at < u);
    let (store, region) = (std::sync::Arc::clone(&node.store), node.region.clone());
    let (sender, receiver) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        let fail = |e: crate::store::StoreError| Err(Status::from(NodeError::from(e)));
        let mut after = None;
        loop {
            let page = match store.subjects_after(after, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    let _ = sender.send(fail(e)).await;
                    return;
                }
            };
            let Some(last) = page.last().copied() else {
                tracing::info!(region = %region, ledger = req.ledger, "consent report served");
                return;
            };
            after = Some(last);
            for subject in page {
                // The auditor went away: no more reading and opening every subject's history.
                if sender.is_closed() {
                    tracing::info!(region = %region, "consent report abandoned by its reader");
                    return;
                }
                // The view in force first, then the ledger: a write in between only adds
                // entries, so every record in force is found in the history read after it.
                let (meta, in_force, history) = match (
                    store.subject_meta(&subject).await,
                    store.consent_in_force(&subject).await,
                    store.consent_history(&subject).await,
                ) {
                    (Ok(Some(meta)), Ok(in_force), Ok(history)) => (meta, in_force, history),
                    // Erased meanwhile: nothing to report.
                    (Ok(None), _, _)
                    | (_, Err(crate::store::StoreError::NotFound), _)
                    | (_, _, Err(crate::store::StoreError::NotFound)) => continue,
                    (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                        let _ = sender.send(fail(e)).await;
                        return;
                    }
                };
                let subject_ref = domicile_types::SubjectRef { region: region.clone(), id: subject }.to_string();
                let jurisdiction = meta.jurisdiction.to_string();
                let rows: Vec<pb::ConsentReportRow> = if req.ledger {
                    history
                        .iter()
                        .filter(|entry| in_period(entry.recorded_at))
                        .map(|entry| pb::ConsentReportRow {
                            subject_ref: subject_ref.clone(),
                            jurisdiction: jurisdiction.clone(),
                            entry: Some(entry_to_pb(entry)),
                            channel: String::new(),
                        })
                        .collect()
                } else {
                    in_force
                        .iter()
                        .filter_map(|(_, channel, current)| {
                            let entry = history.iter().find(|e| e.sequence == current.sequence)?;
                            Some(pb::ConsentReportRow {
                                subject_ref: subject_ref.clone(),
                                jurisdiction: jurisdiction.clone(),
                                entry: Some(entry_to_pb(entry)),
                                channel: channel.to_string(),
                            })
                        })
                        .collect()
                };
                for row in rows {
                    if sender.send(Ok(row)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver)))
}
