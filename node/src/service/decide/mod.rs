//! Decisions: every one made by [`NodeService::decide_items`], for a batch of items against one
//! pack-set snapshot, audited together. The decisions stay borrowed from the packs, so the wire
//! encodes each straight from the pack's own strings (`wire.rs`).

pub(super) mod wire;

use domicile_audit::DecisionEntry;
use domicile_policy::{ConsentFact, DecisionInput, DecisionParts};
use domicile_proto::convert::FieldViolation;
use domicile_proto::raw::SubjectKeyRef;
use domicile_runtime::packs::LoadedPacks;
use domicile_runtime::process::now_unix;
use domicile_types::{Channel, Purpose, SubjectId};

use super::NodeService;
use crate::error::NodeError;
use crate::store::Store;

/// One decision about one subject, borrowed from the packs it was made with.
pub(crate) struct SubjectDecision<'p> {
    pub subject: SubjectId,
    pub purpose: Purpose,
    pub channel: Channel,
    pub parts: DecisionParts<'p>,
}

/// The outcome of a batch of decisions.
pub(crate) struct Decided<'p> {
    /// Per item, in the order given: its id, and the index of its decision in `decisions` or why
    /// it has none.
    pub outcomes: Vec<(u64, Result<usize, NodeError>)>,
    pub decisions: Vec<SubjectDecision<'p>>,
    /// Whether `decisions` were audited. A decision that cannot be audited is not served
    /// (invariant 5): then every one fails with this.
    pub audited: Result<(), NodeError>,
}

impl<'p> Decided<'p> {
    /// The one decision of a batch of one, or why there is none (its own refusal first).
    pub fn into_only(mut self) -> Result<SubjectDecision<'p>, NodeError> {
        let index = match self.outcomes.pop() {
            Some((_, outcome)) => outcome?,
            None => return Err(NodeError::Internal("batch encoding failed")),
        };
        self.audited?;
        if index < self.decisions.len() {
            Ok(self.decisions.swap_remove(index))
        } else {
            Err(NodeError::Internal("batch encoding failed"))
        }
    }
}

impl<S: Store> NodeService<S> {
    async fn evaluate<'p>(
        &self,
        loaded: &'p LoadedPacks,
        key: SubjectKeyRef<'_>,
        purpose: Purpose,
        channel: Channel,
        at: i64,
    ) -> Result<SubjectDecision<'p>, NodeError> {
        let subject = self.resolve_key(key).await?;
        let (meta, current) = self
            .store
            .decision_inputs(&subject, purpose, channel)
            .await?
            .ok_or(NodeError::NotFound("no such subject in this region"))?;
        // A subdivision without a pack of its own gets its country's, and the decision says so.
        let found = Self::pack_match(loaded, &meta.jurisdiction)?;
        let pack = found.pack;
        if meta.restricted {
            // Right to restriction: nothing is processed for the subject until lifted, whatever
            // consent says. Still audited and explainable like any decision.
            return Ok(SubjectDecision { subject, purpose, channel, parts: found.restricted_parts() });
        }
        let consent = current.map(|c| ConsentFact {
            state: c.state,
            // A capture cannot have happened after it was recorded: a future-dated one counts
            // from its recording (lifetimes too).
            captured_at_unix: c.captured_at.min(c.recorded_at.unwrap_or(c.captured_at)),
            expires_at_unix: c.expires_at,
            double_opt_in_confirmed: c.double_opt_in_confirmed,
            kind: None,
        });
        let input = DecisionInput::new(purpose, channel, at, consent);
        let parts = found.decision_parts(&pack.evaluate(&input), input.subject_time_zone.as_ref());
        tracing::debug!(region = %self.region, pack = %parts.pack, %purpose, %channel, effect = parts.effect.as_str(), "decision");
        Ok(SubjectDecision { subject, purpose, channel, parts })
    }

    /// Decides `items` at `at` with the packs of `loaded`, and audits all the decisions with one
    /// write. An item may come refused already (its request could not be read): it is answered
    /// with that, in its place.
    pub(crate) async fn decide_items<'k, 'p>(
        &self,
        loaded: &'p LoadedPacks,
        items: impl ExactSizeIterator<Item = (u64, Result<(SubjectKeyRef<'k>, Purpose, Channel), FieldViolation>)>,
        at: i64,
    ) -> Decided<'p> {
        let count = items.len();
        let mut decisions = Vec::with_capacity(count);
        let mut outcomes = Vec::with_capacity(count);
        for (id, item) in items {
            let evaluated = match item {
                Ok((key, purpose, channel)) => self.evaluate(loaded, key, purpose, channel, at).await,
                Err(e) => Err(NodeError::from(e)),
            };
            match evaluated {
                Ok(decision) => {
                    outcomes.push((id, Ok(decisions.len())));
                    decisions.push(decision);
                }
                Err(e) => outcomes.push((id, Err(e))),
            }
        }
        // Every reason of the batch in one list; each entry borrows its own slice of it.
        let mut reasons: Vec<&str> = Vec::with_capacity(decisions.len() * 2);
        let mut spans = Vec::with_capacity(decisions.len());
        for decision in &decisions {
            let start = reasons.len();
            reasons.extend(decision.parts.reasons());
            spans.push(start..reasons.len());
        }
        let entries: Vec<DecisionEntry<'_>> = decisions
            .iter()
            .zip(spans)
            .map(|(decision, span)| DecisionEntry {
                subject: decision.subject,
                purpose: decision.purpose,
                channel: decision.channel,
                effect: decision.parts.effect,
                reasons: reasons.get(span).unwrap_or_default(),
                pack: decision.parts.pack,
            })
            .collect();
        let audited = self.store.audit_decisions(&entries, now_unix()).await.map_err(NodeError::from);
        if audited.is_ok() {
            for decision in &decisions {
                domicile_runtime::metrics::decided(&self.region, decision.parts.effect, decision.parts.pack);
            }
        }
        Decided { outcomes, decisions, audited }
    }
}
