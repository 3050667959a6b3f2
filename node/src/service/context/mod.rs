//! Channel interactions and the warm hand-off context built from them. Summaries and references
//! are personal data: full context goes only to callers of this region; anyone else gets the
//! minimised form, and a caller outside the home regions only under a pack transfer (audited).

pub(super) mod wire;

use std::collections::BTreeMap;

use domicile_audit::AuditEvent;
use domicile_policy::{PackRef, TransferConsent, TransferConsentFact};
use domicile_proto::convert::{FieldViolation, SubjectKey};
use domicile_runtime::process::now_unix;
use domicile_types::{Channel, ConsentState, Purpose, SubjectId};

use super::unit::Settled;
use super::{Caller, NodeService};
use crate::error::NodeError;
use crate::store::{
    CLOCK_SKEW_SECS, CurrentConsent, Idempotency, Interaction, InteractionKind, NewInteraction, Store, StoreError,
    counted_at_ms,
};

/// An interaction on a channel as reported, checked for form.
pub(crate) struct InteractionReport {
    pub channel: Channel,
    /// When it happened; `None`: when it is recorded.
    pub occurred_at: Option<i64>,
    pub kind: InteractionKind,
    pub intent: String,
    pub summary: String,
    pub reference: String,
    pub open: bool,
}

/// What a hand-off context is asked for.
pub(crate) struct ContextQuery {
    /// How many recent interactions, at most.
    pub limit: usize,
    /// The minimised form (no summaries, references or profile fields beyond the pack's
    /// `minimised_fields`); only callers of this region may have the full one.
    pub minimised: bool,
    /// Why it is needed: required from a caller outside the subject's home regions.
    pub purpose: Option<Purpose>,
}

/// A subject's warm hand-off context (see [`context_of`]).
pub(crate) struct Context {
    pub subject: SubjectId,
    pub latest_by_channel: Vec<Interaction>,
    pub open_intents: Vec<String>,
    pub recent: Vec<Interaction>,
    /// The minimised form: interactions without summary and reference, the profile reduced to
    /// the pack's `minimised_fields`.
    pub minimised: bool,
    pub profile: BTreeMap<String, String>,
    /// The pack transfer that let it leave the home regions, if it did.
    pub transfer: Option<String>,
    pub pack: PackRef,
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

impl<S: Store> NodeService<S> {
    /// Records an interaction in the subject's log. Returns the subject and the stored entry.
    pub(crate) async fn record_interaction_entry(
        &self,
        key: &SubjectKey,
        caller: &Caller,
        report: InteractionReport,
        tag: Option<&Idempotency>,
    ) -> Result<(SubjectId, Interaction), NodeError> {
        let now = now_unix();
        let occurred_at = report.occurred_at.unwrap_or(now);
        if occurred_at > now + CLOCK_SKEW_SECS {
            return Err(FieldViolation::new("occurred_at", "is in the future").into());
        }
        if let Some(done) = self.replayed::<(SubjectId, Interaction)>(tag).await? {
            return Ok(done);
        }
        let (subject, meta) = self.resolve_meta(key).await?;
        self.check_collection_for(&meta.jurisdiction, caller.region.as_ref())?;
        let InteractionReport { channel, kind, intent, summary, reference, open, .. } = report;
        let interaction = NewInteraction {
            channel,
            occurred_at,
            recorded_at: now,
            kind,
            intent,
            summary,
            reference,
            open,
            via: key.link(),
        };
        let stored = match self.settle(self.store.append_interaction(&subject, interaction, tag).await).await? {
            Settled::Applied(stored) => stored,
            Settled::Replayed => return self.replayed_after_race(tag).await,
        };
        tracing::info!(region = %self.region, %channel, kind = kind.as_str(), sequence = stored.sequence, "interaction recorded");
        Ok((subject, stored))
    }

    /// The subject's consent to transfers of `purpose`'s data in force: of its ledger's records
    /// without channels and of a transfer kind, the one the ledger's order puts in force (a later
    /// withdrawal beats an earlier grant, whatever order they arrived in).
    async fn transfer_consent(
        &self,
        subject: &SubjectId,
        purpose: Purpose,
    ) -> Result<Option<TransferConsentFact>, NodeError> {
        let mut in_force: Option<(CurrentConsent, TransferConsent)> = None;
        for record in self.store.consent_history(subject).await? {
            if record.purpose != purpose || !record.channels.is_empty() {
                continue;
            }
            let Some(kind) = record.evidence.consent_kind.as_deref().and_then(TransferConsent::parse) else {
                continue;
            };
            // A grant an unmerge could not attribute counts for neither half (`store::split`).
            if record.review && record.state == ConsentState::Granted {
                continue;
            }
            // Ledger entries keep whole seconds; ties at a second go to the restrictive record.
            let counted = counted_at_ms(record.state, record.captured_at * 1000, record.recorded_at * 1000);
            let candidate = CurrentConsent::of(&record, counted);
            if in_force.as_ref().is_none_or(|(existing, _)| candidate.supersedes(existing)) {
                in_force = Some((candidate, kind));
            }
        }
        Ok(in_force.map(|(c, kind)| TransferConsentFact {
            state: c.state,
            kind,
            // A capture cannot have happened after it was recorded.
            captured_at_unix: c.captured_at.min(c.recorded_at.unwrap_or(c.captured_at)),
            expires_at_unix: c.expires_at,
        }))
    }

    /// Whether data of `subject` (of `pack`) may go to `caller`: from a home region, yes (`None`);
    /// from outside them (invariant 2), only under the pack's transfer for `purpose` (required)
    /// to the caller's region, whose id is returned, audited as `what` before anything is read.
    pub(super) async fn transfer_to(
        &self,
        pack: &domicile_policy::Pack,
        subject: &SubjectId,
        caller: &Caller,
        purpose: Option<Purpose>,
        what: &'static str,
    ) -> Result<Option<String>, NodeError> {
        let caller_region = caller.region.as_ref();
        if self.at_home(pack, caller_region) {
            return Ok(None);
        }
        let purpose = purpose.ok_or_else(|| {
            FieldViolation::new("purpose", "is required when the caller is outside the subject's home regions")
        })?;
        // Only packs with transfers that need a recorded consent cost a ledger read.
        let consent = match pack.residency().needs_consent() {
            true => self.transfer_consent(subject, purpose).await?,
            false => None,
        };
        let transfer = pack.check_transfer(caller_region, purpose, consent.as_ref(), now_unix())?;
        // `check_transfer` never permits an unknown region.
        let (Some(transfer), Some(to)) = (transfer, caller_region.cloned()) else { return Ok(None) };
        let event = AuditEvent::Transfer { what, to, purpose, transfer: transfer.id.clone(), pack: pack.pack_ref() };
        self.settle_unkeyed(self.store.audit(event, subject, now_unix()).await).await?;
        Ok(Some(transfer.id.clone()))
    }

    /// A subject's hand-off context for `caller`. Residency (invariant 2): a caller outside the
    /// home regions needs a transfer of the pack for its region and purpose, gets the minimised
    /// form only, and the transfer is audited before anything is read.
    pub(crate) async fn context_for(
        &self,
        key: &SubjectKey,
        caller: &Caller,
        query: ContextQuery,
    ) -> Result<Context, NodeError> {
        // Full context (summaries, references, every profile field) only to callers of this
        // region; a gateway may be serving anyone.
        if !query.minimised && !caller.in_region {
            return Err(NodeError::PermissionDenied(
                "full context is served only to services of the home region: ask for the minimised form",
            ));
        }
        let (subject, meta) = self.resolve_meta(key).await?;
        let loaded = self.packs.current();
        let pack = Self::pack_of(&loaded, &meta.jurisdiction)?;
        let transfer = self.transfer_to(pack, &subject, caller, query.purpose, "context.minimised").await?;
        let minimised = query.minimised || transfer.is_some();
        let record = self.store.subject_record(&subject).await?.ok_or(StoreError::NotFound)?;
        let mut profile = record.profile;
        if minimised {
            let named = &pack.residency().minimised_fields;
            profile.retain(|name, _| named.contains(name));
        }
        let mut log = self.store.interactions(&subject).await?;
        // Held for review after an unmerge: possibly the other person's.
        log.retain(|i| !i.review);
        let (mut latest_by_channel, open_intents, mut recent) = context_of(log, query.limit);
        if minimised {
            for interaction in latest_by_channel.iter_mut().chain(recent.iter_mut()) {
                interaction.summary.clear();
                interaction.reference.clear();
            }
        }
        if let Some(transfer) = &transfer {
            tracing::info!(region = %self.region, %transfer, pack = %pack.pack_ref(), "minimised context transferred");
        }
        Ok(Context {
            subject,
            latest_by_channel,
            open_intents,
            recent,
            minimised,
            profile,
            transfer,
            pack: pack.pack_ref(),
        })
    }
}
