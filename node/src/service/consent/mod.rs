//! The consent ledger: recording grants, denials and withdrawals, and reading a subject's history.

pub(super) mod wire;

use domicile_proto::convert::{self, FieldViolation, SubjectKey};
use domicile_runtime::process::now_unix_ms;
use domicile_types::{Channel, ConsentAction, ConsentState, Purpose, SubjectId};

use super::unit::Settled;
use super::{Caller, NodeService};
use crate::error::NodeError;
use crate::store::{
    CLOCK_SKEW_SECS, ConsentRecord, CurrentConsent, Evidence, Idempotency, NewConsent, Store, StoreError, SubjectMeta,
    counted_at_ms,
};

/// A consent as it was captured, whoever reports it.
#[derive(Clone)]
pub(crate) struct ConsentCapture {
    pub purpose: Purpose,
    pub channels: Vec<Channel>,
    pub action: ConsentAction,
    /// When it was captured, in milliseconds since the epoch; `None`: when it is recorded.
    pub captured_at_ms: Option<i64>,
    pub expires_at: Option<i64>,
    pub evidence: Evidence,
}

/// A subject's consent ledger, oldest first, and the record in force per purpose × channel.
pub(crate) struct ConsentHistory {
    pub subject: SubjectId,
    pub jurisdiction: domicile_types::Jurisdiction,
    pub restricted: bool,
    pub entries: Vec<ConsentRecord>,
    pub in_force: Vec<(Purpose, Channel, CurrentConsent)>,
    /// Sent out of the home regions under a transfer: one purpose's entries, without evidence.
    pub minimised: bool,
}

/// Evidence names a notice and a system as tokens, never free text (see
/// `convert::is_evidence_token`), so nothing free-form is kept with a record or leaves with a
/// history, whichever entry reported the capture.
fn check_evidence(evidence: &Evidence) -> Result<(), FieldViolation> {
    convert::evidence_token("evidence.notice_version", &evidence.notice_version)?;
    convert::evidence_token("evidence.source_system", &evidence.source_system)?;
    Ok(())
}

/// The checks of a capture that need nothing but the capture: its times against this node's
/// clock, its evidence.
pub(in crate::service) fn check_capture_fields(capture: &ConsentCapture) -> Result<(), NodeError> {
    let now = now_unix_ms().div_euclid(1000);
    let captured_at = capture.captured_at_ms.map_or(now, |ms| ms.div_euclid(1000));
    // Clocks drift; beyond that a capture time ahead of this node is a client bug. Within it,
    // the time still counts as at most the recording time (`store::counted_at`).
    if captured_at > now + CLOCK_SKEW_SECS {
        return Err(FieldViolation::new("captured_at", "is in the future").into());
    }
    if capture.expires_at.is_some_and(|e| e <= captured_at) {
        return Err(FieldViolation::new("expires_at", "must be after `captured_at`").into());
    }
    check_evidence(&capture.evidence)?;
    Ok(())
}

/// The answer to a keyed write that failed, given what its key's record says (`replayed`): the
/// first attempt's result if there is one, or the key used for another request
/// (INVALID_ARGUMENT), or its subject erased since (ALREADY_EXISTS). With no record, or none
/// readable now, the write's own error stands. Above all an unknown outcome (a commit whose reply
/// was lost, when the record cannot be read either): answered as anything else, the gateway would
/// not tell its caller to retry with the key, and a retry under a new one would write twice.
fn answer_refused<T>(refused: NodeError, replayed: Result<Option<T>, NodeError>) -> Result<T, NodeError> {
    match replayed {
        Ok(Some(first)) => Ok(first),
        Err(said @ (NodeError::Invalid(_) | NodeError::AlreadyExists(_))) => Err(said),
        Ok(None) | Err(_) => Err(refused),
    }
}

impl<S: Store> NodeService<S> {
    /// Records `capture` in the subject's ledger; acknowledged only once durable (invariant 7),
    /// so every later decision reads this state. Returns the subject and the stored record (the
    /// first one's, for a repeat under the same idempotency key).
    pub(crate) async fn capture_consent(
        &self,
        key: &SubjectKey,
        caller: &Caller,
        capture: ConsentCapture,
        tag: Option<&Idempotency>,
    ) -> Result<(SubjectId, ConsentRecord), NodeError> {
        let (subject, record) = self.capture_unlogged(key, caller, capture, tag).await?;
        tracing::info!(region = %self.region, purpose = %record.purpose, state = %record.state, sequence = record.sequence, "consent recorded");
        Ok((subject, record))
    }

    /// [`Self::capture_consent`] without its log line.
    pub(crate) async fn capture_unlogged(
        &self,
        key: &SubjectKey,
        caller: &Caller,
        capture: ConsentCapture,
        tag: Option<&Idempotency>,
    ) -> Result<(SubjectId, ConsentRecord), NodeError> {
        check_capture_fields(&capture)?;
        // A repeat under an idempotency key is found by the store's write itself, under its lock
        // (`Settled::Replayed` below), so the record it left is not looked up first: on a shared
        // store that would cost every write one more round trip. A repeat that the steps before
        // the write refuse (its subject merged away since, its pack changed) is answered as the
        // key's record says, as it was when the record was read first: the first answer, the key
        // used for another request (INVALID_ARGUMENT), or its subject erased (ALREADY_EXISTS).
        match self.capture_new(key, caller, capture, tag).await {
            Err(refused) if tag.is_some() => {
                let replayed = self.replayed::<(SubjectId, (ConsentRecord, u64))>(tag).await;
                answer_refused(refused, replayed).map(|(subject, (record, _))| (subject, record))
            }
            captured => captured,
        }
    }

    /// [`Self::capture_unlogged`] once no earlier write under its key is known.
    async fn capture_new(
        &self,
        key: &SubjectKey,
        caller: &Caller,
        capture: ConsentCapture,
        tag: Option<&Idempotency>,
    ) -> Result<(SubjectId, ConsentRecord), NodeError> {
        // Which half keeps the entry if a merge is ever undone (`store::split`).
        let mut capture = capture;
        capture.evidence.captured_via = key.link();
        let mut attempt = 0;
        loop {
            let (subject, meta) = self.resolve_meta(key).await?;
            let consent = self.consent_for(&meta, caller, capture.clone())?;
            let written = match self.store.append_consent(&subject, consent, tag).await {
                // The link moved to another subject after it was resolved (an unmerge, which also
                // retires the subject it resolved to): once more, from the link.
                Err(StoreError::Retry) | Err(StoreError::NotFound) if attempt < 2 && key.link().is_some() => {
                    attempt += 1;
                    continue;
                }
                written => written,
            };
            return match self.settle(written).await? {
                Settled::Applied((record, _)) => Ok((subject, record)),
                Settled::Replayed => {
                    let (subject, (record, _)) =
                        self.replayed_after_race::<(SubjectId, (ConsentRecord, u64))>(tag).await?;
                    Ok((subject, record))
                }
            };
        }
    }

    /// The record `capture` makes for a subject already read (`meta`), after the checks that
    /// need the subject: the collection rule of its pack, hours its pack defines. The capture's
    /// own fields are checked by the caller ([`check_capture_fields`]). Writes nothing (an
    /// import's dry run stops here).
    pub(crate) fn consent_for(
        &self,
        meta: &SubjectMeta,
        caller: &Caller,
        capture: ConsentCapture,
    ) -> Result<NewConsent, NodeError> {
        let now_ms = now_unix_ms();
        let now = now_ms.div_euclid(1000);
        let captured_at_ms = capture.captured_at_ms.unwrap_or(now_ms);
        let captured_at = captured_at_ms.div_euclid(1000);
        self.check_collection_for(&meta.jurisdiction, caller.region.as_ref())?;
        let state = capture.action.resulting_state();
        let mut evidence = capture.evidence;
        if state != ConsentState::Granted {
            // A denial or withdrawal covers every hour: hours it repeats (perhaps of a window
            // since renamed) neither limit it nor make it refusable.
            evidence.hours.clear();
        }
        if !evidence.hours.is_empty() {
            // Hours name calling windows of the subject's pack: one it does not define would cover
            // nothing, so it is refused here rather than recorded as a consent that never counts.
            // The pack is kept with them: under another pack the same ids mean nothing.
            let loaded = self.packs.current();
            let pack = Self::pack_match(&loaded, &meta.jurisdiction)?.pack;
            if let Some(i) = evidence.hours.iter().position(|h| !pack.windows().iter().any(|w| &w.id == h)) {
                return Err(FieldViolation::new(
                    format!("evidence.hours[{i}]"),
                    "names no calling window of the subject's pack",
                )
                .into());
            }
            evidence.hours_pack = Some(pack.id().to_owned());
        }
        let consent = NewConsent {
            purpose: capture.purpose,
            channels: capture.channels,
            state,
            captured_at,
            recorded_at: now,
            counted_at_ms: counted_at_ms(state, captured_at_ms, now_ms),
            expires_at: capture.expires_at,
            evidence,
        };
        Ok(consent)
    }

    /// A subject's ledger and consent in force for `caller`. The ledger is personal data
    /// (invariant 2): outside the subject's home regions it goes only under a pack transfer for
    /// `purpose` (audited), minimised to that purpose's entries without their evidence.
    pub(crate) async fn consent_history_of(
        &self,
        key: &SubjectKey,
        caller: &Caller,
        purpose: Option<Purpose>,
    ) -> Result<ConsentHistory, NodeError> {
        let (subject, meta) = self.resolve_meta(key).await?;
        let transfer = {
            let loaded = self.packs.current();
            let pack = Self::pack_of(&loaded, &meta.jurisdiction)?;
            self.transfer_to(pack, &subject, caller, purpose, "consent.history").await?
        };
        let mut entries = self.store.consent_history(&subject).await?;
        let mut in_force = self.store.consent_in_force(&subject).await?;
        let minimised = transfer.is_some();
        if let (true, Some(purpose)) = (minimised, purpose) {
            entries.retain(|e| e.purpose == purpose);
            in_force.retain(|(p, ..)| *p == purpose);
        }
        Ok(ConsentHistory {
            subject,
            jurisdiction: meta.jurisdiction,
            restricted: meta.restricted,
            entries,
            in_force,
            minimised,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::answer_refused;
    use crate::error::NodeError;
    use crate::store::StoreError;
    use domicile_proto::convert::FieldViolation;

    #[test]
    fn a_refused_keyed_write_keeps_an_unknown_outcome_when_its_record_cannot_be_read() {
        let unreadable = || Err(NodeError::Store(StoreError::Backend("connection closed".into())));
        let unknown = answer_refused::<u64>(NodeError::OutcomeUnknown, unreadable());
        assert!(matches!(unknown, Err(NodeError::OutcomeUnknown)), "{unknown:?}");
        let unknown = answer_refused::<u64>(NodeError::Store(StoreError::OutcomeUnknown), Ok(None));
        assert!(matches!(unknown, Err(NodeError::Store(StoreError::OutcomeUnknown))), "{unknown:?}");
        let gone = answer_refused::<u64>(NodeError::NotFound("no such subject"), unreadable());
        assert!(matches!(gone, Err(NodeError::NotFound(_))), "{gone:?}");
    }

    #[test]
    fn a_refused_keyed_write_is_answered_as_its_record_says() {
        assert!(matches!(answer_refused(NodeError::NotFound("merged away"), Ok(Some(7u64))), Ok(7)));
        let reused = Err(FieldViolation::new("idempotency_key", "was used before for a different request").into());
        let answer = answer_refused::<u64>(NodeError::NotFound("merged away"), reused);
        assert!(matches!(answer, Err(NodeError::Invalid(_))), "{answer:?}");
        let erased = answer_refused::<u64>(NodeError::OutcomeUnknown, Err(NodeError::AlreadyExists("erased")));
        assert!(matches!(erased, Err(NodeError::AlreadyExists(_))), "{erased:?}");
    }
}
