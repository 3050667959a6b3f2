//! `ImportConsent` on the wire: items read and checked one by one (a bad item is refused alone,
//! naming its field), outcomes in request order.

use domicile_proto::convert::{self, FieldViolation};
use domicile_proto::limits;
use domicile_proto::pb::node::v1 as pb;
use tonic::{Request, Status};

use super::{ImportItem, Imported};
use crate::error::NodeError;
use crate::service::NodeService;
use crate::service::consent::wire::capture_of;
use crate::store::{ImportEvidence, Store};

/// A source system or event id: a token, so nothing free-form is kept with an entry.
fn source_token(field: &str, text: &str) -> Result<String, FieldViolation> {
    if domicile_types::is_import_token(text) {
        Ok(text.to_owned())
    } else {
        Err(FieldViolation::new(field, "must be 1-128 characters of `A-Z a-z 0-9 . _ : / # -`"))
    }
}

fn item_of(item: &pb::ImportConsentItem, mapping_version: &str, broadcast: bool) -> Result<ImportItem, FieldViolation> {
    // A live capture without a time was captured now; an imported entry was captured when its
    // source says, and taken as now it would outrank every earlier withdrawal.
    if item.captured_at.is_none() {
        return Err(FieldViolation::new("captured_at", "required for an imported entry: its original capture time"));
    }
    Ok(ImportItem {
        key: convert::subject_key("subject", item.subject.as_ref())?,
        capture: capture_of(
            &item.purpose,
            &item.channels,
            item.action,
            item.evidence.as_ref(),
            item.captured_at.as_ref(),
            item.expires_at.as_ref(),
        )?,
        source: ImportEvidence {
            source_system: source_token("source_system", &item.source_system)?,
            source_event_id: source_token("source_event_id", &item.source_event_id)?,
            mapping_version: mapping_version.to_owned(),
            broadcast,
        },
    })
}

pub(in crate::service) async fn import_consent<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::ImportConsentRequest>,
) -> Result<pb::ImportConsentResponse, NodeError> {
    let caller = node.caller(&request, &request.get_ref().caller_region)?;
    let req = request.into_inner();
    // Bounds one call's work (`domicile import` sends batches of this size or less); counted
    // before decoding too (`wire::RequestCodec`).
    limits::IMPORT_ITEMS.check("items", req.items.len())?;
    let mapping_version = if req.mapping_version.is_empty() {
        String::new()
    } else {
        source_token("mapping_version", &req.mapping_version)?
    };
    let items = req
        .items
        .iter()
        .map(|item| (item.id, item_of(item, &mapping_version, req.broadcast).map_err(NodeError::from)))
        .collect();
    let outcomes = node.import_consents(&caller, items, req.dry_run).await;
    let (mut accepted, mut duplicates, mut refused) = (0usize, 0usize, 0usize);
    let outcomes = outcomes
        .into_iter()
        .map(|(id, imported)| {
            let result = match imported {
                Imported::Accepted(sequence) => {
                    accepted += 1;
                    pb::import_consent_outcome::Result::Accepted(sequence)
                }
                Imported::Duplicate(sequence) => {
                    duplicates += 1;
                    pb::import_consent_outcome::Result::Duplicate(sequence)
                }
                Imported::Refused(e) => {
                    refused += 1;
                    pb::import_consent_outcome::Result::Refused(convert::item_error(&Status::from(e)))
                }
            };
            pb::ImportConsentOutcome { id, result: Some(result) }
        })
        .collect();
    tracing::info!(region = %node.region, accepted, duplicates, refused, dry_run = req.dry_run, "consent imported");
    Ok(pb::ImportConsentResponse { outcomes })
}
