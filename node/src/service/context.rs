//! Channel interactions and the warm hand-off context built from them. Summaries and references
//! are personal data: full context goes only to callers of this region; anyone else gets the
//! minimised form, and a caller outside the home regions only under a pack transfer (audited).

use domicile_proto::convert::{self, FieldViolation};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as pb;
use domicile_runtime::process::now_unix;
use domicile_types::SubjectId;
use tonic::{Request, Status};

use super::NodeService;
use super::unit::Settled;
use crate::access::Requester;
use crate::error::{invalid, store_status};
use crate::store::{CLOCK_SKEW_SECS, Interaction, InteractionKind, NewInteraction, Store, StoreError};
use domicile_audit::AuditEvent;

const MAX_SUMMARY: usize = 2048;
const MAX_REFERENCE: usize = 128;
const MAX_INTENT: usize = 64;
const DEFAULT_CONTEXT: usize = 20;
const MAX_CONTEXT: usize = 100;

/// `[a-z0-9._-]{1,max}`: intents and profile field names are vocabulary, not free text.
pub(super) fn token(field: &str, text: &str, max: usize) -> Result<String, FieldViolation> {
    if text.is_empty() || text.len() > max {
        return Err(FieldViolation::new(field, format!("must be 1-{max} bytes")));
    }
    if !text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)) {
        return Err(FieldViolation::new(field, "may contain only `a-z`, `0-9`, `.`, `_` and `-`"));
    }
    Ok(text.to_owned())
}

/// Free text such as an interaction summary: line breaks and tabs allowed, other controls not.
pub(super) fn free_text(field: &str, text: &str, max: usize) -> Result<String, FieldViolation> {
    if text.len() > max {
        return Err(FieldViolation::new(field, format!("is longer than {max} bytes")));
    }
    if text.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Err(FieldViolation::new(field, "contains control characters"));
    }
    Ok(text.to_owned())
}

/// The warm hand-off view of an interaction log: the latest interaction per channel, intents
/// whose latest interaction is still open, and the `limit` most recent, all newest first.
/// "Latest" is by occurrence time (then recording order), so late-recorded entries sort right.
pub(super) fn context_of(mut log: Vec<Interaction>, limit: usize) -> (Vec<Interaction>, Vec<String>, Vec<Interaction>) {
    log.sort_by_key(|i| std::cmp::Reverse((i.occurred_at, i.sequence)));
    let mut latest_by_channel: Vec<Interaction> = Vec::new();
    let mut seen_intents: Vec<&str> = Vec::new();
    let mut open_intents = Vec::new();
    for interaction in &log {
        if !latest_by_channel.iter().any(|i| i.channel == interaction.channel) {
            latest_by_channel.push(interaction.clone());
        }
        if !seen_intents.contains(&interaction.intent.as_str()) {
            seen_intents.push(&interaction.intent);
            if interaction.open {
                open_intents.push(interaction.intent.clone());
            }
        }
    }
    let recent = log.iter().take(limit).cloned().collect();
    (latest_by_channel, open_intents, recent)
}

fn interaction_to_pb(interaction: &Interaction, minimised: bool) -> common::Interaction {
    common::Interaction {
        sequence: interaction.sequence,
        channel: interaction.channel.to_string(),
        occurred_at: Some(convert::to_timestamp(interaction.occurred_at)),
        recorded_at: Some(convert::to_timestamp(interaction.recorded_at)),
        kind: interaction.kind.as_str().to_owned(),
        intent: interaction.intent.clone(),
        summary: if minimised { String::new() } else { interaction.summary.clone() },
        reference: if minimised { String::new() } else { interaction.reference.clone() },
        open: interaction.open,
    }
}

impl<S: Store> NodeService<S> {
    pub(super) async fn record_interaction_entry(
        &self,
        request: Request<pb::RecordInteractionRequest>,
    ) -> Result<pb::RecordInteractionResponse, Status> {
        let caller_region = self.caller_region(&request, &request.get_ref().caller_region)?;
        let req = request.get_ref();
        let key = convert::subject_key("subject", req.subject.as_ref()).map_err(invalid)?;
        let channel = convert::channel("channel", &req.channel).map_err(invalid)?;
        let now = now_unix();
        let occurred_at = convert::timestamp("occurred_at", req.occurred_at.as_ref()).map_err(invalid)?.unwrap_or(now);
        if occurred_at > now + CLOCK_SKEW_SECS {
            return Err(FieldViolation::new("occurred_at", "is in the future").into());
        }
        let kind = InteractionKind::parse(&req.kind).ok_or_else(|| {
            let expected: Vec<&str> = InteractionKind::ALL.iter().map(|k| k.as_str()).collect();
            FieldViolation::new("kind", format!("expected one of {}", expected.join(", ")))
        })?;
        let intent = token("intent", &req.intent, MAX_INTENT).map_err(invalid)?;
        let summary = free_text("summary", &req.summary, MAX_SUMMARY).map_err(invalid)?;
        let reference = convert::short_text("reference", &req.reference, MAX_REFERENCE).map_err(invalid)?;
        let tag =
            self.idempotency("RecordInteraction", &request, &req.idempotency_key, req, |r| r.idempotency_key.clear())?;
        let render = |subject: SubjectId, stored: &Interaction| pb::RecordInteractionResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            sequence: stored.sequence,
            recorded_at: Some(convert::to_timestamp(stored.recorded_at)),
        };
        if let Some((subject, stored)) = self.replayed::<(SubjectId, Interaction)>(tag.as_ref())? {
            return Ok(render(subject, &stored));
        }
        let (subject, meta) = self.resolve_meta(&key)?;
        self.check_collection_for(&meta.jurisdiction, caller_region.as_ref())?;
        let interaction =
            NewInteraction { channel, occurred_at, recorded_at: now, kind, intent, summary, reference, open: req.open };
        let stored = match self.settle(self.store.append_interaction(&subject, interaction, tag.as_ref())).await? {
            Settled::Applied(stored) => stored,
            Settled::Replayed => {
                return self.replay_or(tag.as_ref(), |(s, i): (SubjectId, Interaction)| render(s, &i));
            }
        };
        tracing::info!(region = %self.region, %channel, kind = kind.as_str(), sequence = stored.sequence, "interaction recorded");
        Ok(render(subject, &stored))
    }

    pub(super) async fn context(&self, request: Request<pb::GetContextRequest>) -> Result<pb::ContextResponse, Status> {
        let in_region = Requester::is_in_region(Requester::of(&request));
        let caller_region = self.caller_region(&request, &request.get_ref().caller_region)?;
        let req = request.into_inner();
        let key = convert::subject_key("subject", req.subject.as_ref()).map_err(invalid)?;
        let limit = match req.limit as usize {
            0 => DEFAULT_CONTEXT,
            n if n > MAX_CONTEXT => {
                return Err(FieldViolation::new("limit", format!("at most {MAX_CONTEXT}")).into());
            }
            n => n,
        };
        // Full context (summaries, references, every profile field) only to callers of this
        // region; a gateway may be serving anyone.
        if !req.minimised && !in_region {
            return Err(Status::permission_denied(
                "full context is served only to services of the home region: ask for the minimised form",
            ));
        }
        let purpose = if req.purpose.is_empty() {
            None
        } else {
            Some(convert::purpose("purpose", &req.purpose).map_err(invalid)?)
        };
        let (subject, meta) = self.resolve_meta(&key)?;
        let loaded = self.packs.current();
        let pack = Self::pack_of(&loaded, &meta.jurisdiction)?;
        // Residency: a caller outside the home regions needs a transfer of the pack for its
        // region and purpose (invariant 2); it is audited before anything is read. A caller of
        // this region is always at home (this node holds only subjects whose pack lists it).
        let domestic = caller_region.as_ref() == Some(&self.region) || pack.is_home(caller_region.as_ref());
        let transfer = if domestic {
            None
        } else {
            let purpose = purpose.ok_or_else(|| {
                FieldViolation::new("purpose", "is required when the caller is outside the subject's home regions")
            })?;
            let transfer = pack.check_transfer(caller_region.as_ref(), purpose).map_err(convert::residency_refused)?;
            // `check_transfer` never permits an unknown region.
            if let (Some(transfer), Some(to)) = (transfer, caller_region.clone()) {
                let event = AuditEvent::Transfer {
                    what: "context.minimised",
                    to,
                    purpose,
                    transfer: transfer.id.clone(),
                    pack: pack.pack_ref(),
                };
                self.settle_unkeyed(self.store.audit(event, &subject, now_unix())).await?;
            }
            transfer
        };
        let minimised = req.minimised || transfer.is_some();
        let record = self
            .store
            .subject_record(&subject)
            .map_err(store_status)?
            .ok_or_else(|| store_status(StoreError::NotFound))?;
        let profile = if minimised {
            let named = &pack.residency().minimised_fields;
            record.profile.into_iter().filter(|(name, _)| named.contains(name)).collect()
        } else {
            record.profile.into_iter().collect()
        };
        let log = self.store.interactions(&subject).map_err(store_status)?;
        let (latest, open_intents, recent) = context_of(log, limit);
        if let Some(transfer) = transfer {
            tracing::info!(region = %self.region, transfer = %transfer.id, pack = %pack.pack_ref(), "minimised context transferred");
        }
        Ok(pb::ContextResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            latest_by_channel: latest.iter().map(|i| interaction_to_pb(i, minimised)).collect(),
            open_intents,
            recent: recent.iter().map(|i| interaction_to_pb(i, minimised)).collect(),
            minimised,
            profile,
            transfer: transfer.map(|t| t.id.clone()).unwrap_or_default(),
            pack: Some(convert::pack_ref_to_pb(pack.pack_ref())),
        })
    }
}
