//! The consent ledger: recording grants, denials and withdrawals, and reading a subject's history.

use domicile_proto::convert::{self, FieldViolation};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as pb;
use domicile_runtime::process::now_unix_ms;
use domicile_types::SubjectId;
use tonic::{Request, Status};

use super::NodeService;
use super::unit::Settled;
use crate::error::{invalid, store_status};
use crate::store::{CLOCK_SKEW_SECS, ConsentRecord, Evidence, NewConsent, Store, counted_at_ms};

/// How a consent was captured, checked: evidence names a notice and a system as tokens, never
/// free text (see `convert::is_evidence_token`).
fn evidence(pb: Option<&common::Evidence>) -> Result<Evidence, FieldViolation> {
    let Some(e) = pb else { return Ok(Evidence::default()) };
    Ok(Evidence {
        notice_version: convert::evidence_token("evidence.notice_version", &e.notice_version)?,
        capture_channel: if e.capture_channel.is_empty() {
            None
        } else {
            Some(convert::channel("evidence.capture_channel", &e.capture_channel)?)
        },
        source_system: convert::evidence_token("evidence.source_system", &e.source_system)?,
        double_opt_in_confirmed: e.double_opt_in_confirmed,
    })
}

/// A ledger entry as it leaves the node. Evidence stored before it had to be a token is left
/// out unless it is one, so nothing free-form leaves with a history.
pub(super) fn entry_to_pb(record: &ConsentRecord) -> common::ConsentEntry {
    let token = |text: &str| if convert::is_evidence_token(text) { text.to_owned() } else { String::new() };
    common::ConsentEntry {
        sequence: record.sequence,
        purpose: record.purpose.to_string(),
        channels: record.channels.iter().map(ToString::to_string).collect(),
        state: record.state.to_string(),
        captured_at: Some(convert::to_timestamp(record.captured_at)),
        recorded_at: Some(convert::to_timestamp(record.recorded_at)),
        expires_at: record.expires_at.map(convert::to_timestamp),
        evidence: Some(common::Evidence {
            notice_version: token(&record.evidence.notice_version),
            capture_channel: record.evidence.capture_channel.map(|c| c.to_string()).unwrap_or_default(),
            source_system: token(&record.evidence.source_system),
            double_opt_in_confirmed: record.evidence.double_opt_in_confirmed,
        }),
    }
}

impl<S: Store> NodeService<S> {
    pub(super) async fn record_consent_entry(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<pb::RecordConsentResponse, Status> {
        let caller_region = self.caller_region(&request, &request.get_ref().caller_region)?;
        let req = request.get_ref();
        let key = convert::subject_key("subject", req.subject.as_ref()).map_err(invalid)?;
        let purpose = convert::purpose("purpose", &req.purpose).map_err(invalid)?;
        let channels = convert::channels("channels", &req.channels).map_err(invalid)?;
        let action = convert::consent_action("action", req.action).map_err(invalid)?;
        let now_ms = now_unix_ms();
        let now = now_ms.div_euclid(1000);
        let captured_at_ms =
            convert::timestamp_ms("captured_at", req.captured_at.as_ref()).map_err(invalid)?.unwrap_or(now_ms);
        let captured_at = captured_at_ms.div_euclid(1000);
        // Clocks drift; beyond that a capture time ahead of this node is a client bug. Within it,
        // the time still counts as at most the recording time (`store::counted_at`).
        if captured_at > now + CLOCK_SKEW_SECS {
            return Err(FieldViolation::new("captured_at", "is in the future").into());
        }
        let expires_at = convert::timestamp("expires_at", req.expires_at.as_ref()).map_err(invalid)?;
        if expires_at.is_some_and(|e| e <= captured_at) {
            return Err(FieldViolation::new("expires_at", "must be after `captured_at`").into());
        }
        let evidence = evidence(req.evidence.as_ref()).map_err(invalid)?;
        let tag =
            self.idempotency("RecordConsent", &request, &req.idempotency_key, req, |r| r.idempotency_key.clear())?;
        let render = |subject: SubjectId, record: &ConsentRecord| pb::RecordConsentResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            sequence: record.sequence,
            recorded_at: Some(convert::to_timestamp(record.recorded_at)),
        };
        if let Some((subject, (record, _))) = self.replayed::<(SubjectId, (ConsentRecord, u64))>(tag.as_ref())? {
            return Ok(render(subject, &record));
        }
        let (subject, meta) = self.resolve_meta(&key)?;
        self.check_collection_for(&meta.jurisdiction, caller_region.as_ref())?;
        let consent = NewConsent {
            purpose,
            channels,
            state: action.resulting_state(),
            captured_at,
            recorded_at: now,
            counted_at_ms: counted_at_ms(action.resulting_state(), captured_at_ms, now_ms),
            expires_at,
            evidence,
        };
        // Acknowledged only once durable (invariant 7); every later decision reads this state.
        let (record, _) = match self.settle(self.store.append_consent(&subject, consent, tag.as_ref())).await? {
            Settled::Applied(recorded) => recorded,
            Settled::Replayed => {
                return self.replay_or(tag.as_ref(), |(s, (r, _)): (SubjectId, (ConsentRecord, u64))| render(s, &r));
            }
        };
        tracing::info!(region = %self.region, %purpose, state = %record.state, sequence = record.sequence, "consent recorded");
        Ok(render(subject, &record))
    }

    pub(super) fn consent_entries(
        &self,
        request: Request<pb::ConsentHistoryRequest>,
    ) -> Result<pb::ConsentHistoryResponse, Status> {
        let key = convert::subject_key("subject", request.get_ref().subject.as_ref()).map_err(invalid)?;
        let (subject, meta) = self.resolve_meta(&key)?;
        let history = self.store.consent_history(&subject).map_err(store_status)?;
        let in_force = self.store.consent_in_force(&subject).map_err(store_status)?;
        Ok(pb::ConsentHistoryResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            entries: history.iter().map(entry_to_pb).collect(),
            restricted: meta.restricted,
            in_force: in_force
                .into_iter()
                .map(|(purpose, channel, current)| pb::ConsentInForce {
                    purpose: purpose.to_string(),
                    channel: channel.to_string(),
                    state: current.state.to_string(),
                    sequence: current.sequence,
                })
                .collect(),
        })
    }
}
