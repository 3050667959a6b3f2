//! `RecordConsent` and `ConsentHistory` on the wire: requests into domain values, results into
//! replies.

use domicile_proto::convert::{self, FieldViolation};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as pb;
use domicile_types::SubjectId;
use tonic::Request;

use super::{ConsentCapture, ConsentHistory};
use crate::error::NodeError;
use crate::service::NodeService;
use crate::store::{ConsentRecord, Evidence, Store};

pub(in crate::service) async fn record_consent<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::RecordConsentRequest>,
) -> Result<pb::RecordConsentResponse, NodeError> {
    let caller = node.caller(&request, &request.get_ref().caller_region)?;
    let req = request.get_ref();
    let key = convert::subject_key("subject", req.subject.as_ref())?;
    let capture = capture_from_pb(req)?;
    let tag = node.idempotency("RecordConsent", &request, &req.idempotency_key, req, |r| r.idempotency_key.clear())?;
    let (subject, record) = node.capture_consent(&key, &caller, capture, tag.as_ref()).await?;
    Ok(recorded_to_pb(node, subject, &record))
}

pub(in crate::service) async fn consent_history<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::ConsentHistoryRequest>,
) -> Result<pb::ConsentHistoryResponse, NodeError> {
    let caller = node.caller(&request, &request.get_ref().caller_region)?;
    let req = request.into_inner();
    let key = convert::subject_key("subject", req.subject.as_ref())?;
    let purpose = match req.purpose.as_str() {
        "" => None,
        purpose => Some(convert::purpose("purpose", purpose)?),
    };
    let history = node.consent_history_of(&key, &caller, purpose).await?;
    let minimised = history.minimised;
    let mut reply = history_to_pb(node, history);
    if minimised {
        // Only what a decision or a change event would tell: no evidence leaves the home regions.
        for entry in &mut reply.entries {
            entry.evidence = None;
        }
    }
    Ok(reply)
}

fn capture_from_pb(req: &pb::RecordConsentRequest) -> Result<ConsentCapture, FieldViolation> {
    capture_of(
        &req.purpose,
        &req.channels,
        req.action,
        req.evidence.as_ref(),
        req.captured_at.as_ref(),
        req.expires_at.as_ref(),
    )
}

/// A capture from the fields a consent write carries (`RecordConsent`, an `ImportConsent` item).
pub(in crate::service) fn capture_of(
    purpose: &str,
    channels: &[String],
    action: i32,
    evidence: Option<&common::Evidence>,
    captured_at: Option<&domicile_proto::prost_types::Timestamp>,
    expires_at: Option<&domicile_proto::prost_types::Timestamp>,
) -> Result<ConsentCapture, FieldViolation> {
    let shape = convert::record_shape(channels, evidence)?;
    let mut stored = evidence_from_pb(evidence)?;
    stored.consent_kind = shape.kind_text().map(str::to_owned);
    let channels = match shape {
        convert::RecordShape::Contact { channels, hours, .. } => {
            stored.hours = hours;
            channels
        }
        // A consent to transfers sets no contact cell: only the ledger holds it.
        convert::RecordShape::Transfer { .. } => Vec::new(),
    };
    Ok(ConsentCapture {
        purpose: convert::purpose("purpose", purpose)?,
        channels,
        action: convert::consent_action("action", action)?,
        captured_at_ms: convert::timestamp_ms("captured_at", captured_at)?,
        expires_at: convert::timestamp("expires_at", expires_at)?,
        evidence: stored,
    })
}

/// How a consent was captured, as sent; `capture_consent` checks that its texts are tokens.
fn evidence_from_pb(pb: Option<&common::Evidence>) -> Result<Evidence, FieldViolation> {
    let Some(e) = pb else { return Ok(Evidence::default()) };
    Ok(Evidence {
        notice_version: e.notice_version.clone(),
        capture_channel: if e.capture_channel.is_empty() {
            None
        } else {
            Some(convert::channel("evidence.capture_channel", &e.capture_channel)?)
        },
        source_system: e.source_system.clone(),
        double_opt_in_confirmed: e.double_opt_in_confirmed,
        // Only `RecordSignal` sets it, from the signal it decoded itself; a caller's own was
        // refused by `convert::record_shape`.
        signal: None,
        // Set from the record's shape (`convert::record_shape`) by the caller.
        consent_kind: None,
        hours: Vec::new(),
        hours_pack: None,
        import: None,
        // Set from the key the subject was named by, never from the caller's evidence.
        captured_via: None,
    })
}

fn recorded_to_pb<S: Store>(
    node: &NodeService<S>,
    subject: SubjectId,
    record: &ConsentRecord,
) -> pb::RecordConsentResponse {
    pb::RecordConsentResponse {
        subject_ref: node.subject_ref(subject).to_string(),
        sequence: record.sequence,
        recorded_at: Some(convert::to_timestamp(record.recorded_at)),
    }
}

fn history_to_pb<S: Store>(node: &NodeService<S>, history: ConsentHistory) -> pb::ConsentHistoryResponse {
    pb::ConsentHistoryResponse {
        subject_ref: node.subject_ref(history.subject).to_string(),
        jurisdiction: history.jurisdiction.to_string(),
        entries: history.entries.iter().map(entry_to_pb).collect(),
        restricted: history.restricted,
        in_force: history
            .in_force
            .into_iter()
            .map(|(purpose, channel, current)| pb::ConsentInForce {
                purpose: purpose.to_string(),
                channel: channel.to_string(),
                state: current.state.to_string(),
                sequence: current.sequence,
            })
            .collect(),
    }
}

/// A ledger entry as it leaves the node. Evidence stored before it had to be a token is left
/// out unless it is one, so nothing free-form leaves with a history.
pub(in crate::service) fn entry_to_pb(record: &ConsentRecord) -> common::ConsentEntry {
    let token = |text: &str| if convert::is_evidence_token(text) { text.to_owned() } else { String::new() };
    common::ConsentEntry {
        sequence: record.sequence,
        purpose: record.purpose.to_string(),
        channels: record.channels.iter().map(ToString::to_string).collect(),
        state: record.state.to_string(),
        captured_at: Some(convert::to_timestamp(record.captured_at)),
        recorded_at: Some(convert::to_timestamp(record.recorded_at)),
        expires_at: record.expires_at.map(convert::to_timestamp),
        review: record.review,
        evidence: Some(common::Evidence {
            notice_version: token(&record.evidence.notice_version),
            capture_channel: record.evidence.capture_channel.map(|c| c.to_string()).unwrap_or_default(),
            source_system: token(&record.evidence.source_system),
            double_opt_in_confirmed: record.evidence.double_opt_in_confirmed,
            consent_kind: record.evidence.consent_kind.clone().unwrap_or_default(),
            hours: record.evidence.hours.clone(),
            // What the signal was, never the string.
            signal: record.evidence.signal.as_ref().map(|s| common::SignalEvidence {
                kind: s.kind.clone(),
                cmp_id: s.cmp_id,
                cmp_version: s.cmp_version,
                vendor_list_version: s.vendor_list_version,
                policy_version: s.policy_version,
                gpp_sections: s.gpp_sections.clone(),
                cite: s.cite.clone(),
            }),
        }),
    }
}
