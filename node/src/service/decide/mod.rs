//! Decisions: every one made by [`NodeService::decide_items`], for a batch of items against one
//! pack-set snapshot, audited together. The decisions stay borrowed from the packs, so the wire
//! encodes each straight from the pack's own strings (`wire.rs`).

pub(super) mod wire;

use domicile_audit::DecisionEntry;
use domicile_policy::{ConsentFact, ConsentKind, DecisionInput, DecisionParts, Facts, Zone};
use domicile_proto::convert::FieldViolation;
use domicile_proto::raw::SubjectKeyRef;
use domicile_runtime::packs::LoadedPacks;
use domicile_runtime::process::now_unix;
use domicile_types::{Channel, Link, Purpose, SubjectId};

use super::NodeService;
use crate::error::NodeError;
use crate::store::{Audited, CurrentConsent, Store, StoreError, SubjectMeta};

/// What the caller asserted about one contact: the facts the pack may decide on, and the
/// subject's time zone (`None`: every zone of the pack).
pub(crate) type Asserted = (Facts, Option<Zone>);

/// One item of a batch as the wire gave it: its id, and its subject key, purpose, channel and
/// asserted facts, or why it could not be read.
pub(crate) type BatchItem<'k> = (u64, Result<(SubjectKeyRef<'k>, Purpose, Channel, Asserted), FieldViolation>);

/// An item whose subject is known: what the store reads for, and what the caller asserted.
type Resolved = ((SubjectId, Purpose, Channel), Asserted);

/// Every item of a batch fails alike when the store could not read for the batch.
fn batch_read_failed(e: &StoreError) -> NodeError {
    NodeError::from(e.for_each_caller())
}

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
    /// One decision from what the store read for it (`inputs`: the subject's metadata and the
    /// consent in force for the purpose × channel).
    fn judge<'p>(
        loaded: &'p LoadedPacks,
        ((subject, purpose, channel), (facts, zone)): Resolved,
        (meta, current): (SubjectMeta, Option<CurrentConsent>),
        at: i64,
    ) -> Result<SubjectDecision<'p>, NodeError> {
        // A subdivision without a pack of its own gets its country's, and the decision says so.
        let found = Self::pack_match(loaded, &meta.jurisdiction)?;
        let pack = found.pack;
        if meta.restricted {
            // Right to restriction: nothing is processed for the subject until lifted, whatever
            // consent says. Still audited and explainable like any decision.
            return Ok(SubjectDecision { subject, purpose, channel, parts: found.restricted_parts() });
        }
        let consent = match current {
            None => None,
            Some(c) => Some(ConsentFact {
                state: c.state,
                // A capture cannot have happened after it was recorded: a future-dated one counts
                // from its recording (lifetimes too).
                captured_at_unix: c.captured_at.min(c.recorded_at.unwrap_or(c.captured_at)),
                expires_at_unix: c.expires_at,
                double_opt_in_confirmed: c.double_opt_in_confirmed,
                // Checked when recorded; a kind this build does not know fails the decision.
                kind: match c.kind.as_deref() {
                    None => None,
                    Some(kind) => {
                        Some(ConsentKind::parse(kind).ok_or(NodeError::Internal("stored consent kind is unknown"))?)
                    }
                },
                // Hours name windows of the pack they were recorded under; under another they
                // cover nothing (an id with `:` matches no window).
                hours: match c.hours_pack.as_deref() {
                    Some(recorded) if recorded != pack.id() => {
                        c.hours.iter().map(|h| format!("{recorded}:{h}")).collect()
                    }
                    _ => c.hours,
                },
            }),
        };
        // A caller may narrow the zones to the subject's own, never widen or move them: a zone the
        // pack does not list would let it pick the local time of calling windows.
        if let Some(zone) = &zone
            && !pack.time_zones().iter().any(|z| z.name() == zone.name())
        {
            return Err(
                FieldViolation::new("facts.time_zone", "is not one of the time zones of the subject's pack").into()
            );
        }
        let input = DecisionInput { purpose, channel, at_unix: at, consent, subject_time_zone: zone, facts };
        let parts = found.decision_parts(&pack.evaluate(&input), input.subject_time_zone.as_ref());
        tracing::debug!(pack = %parts.pack, %purpose, %channel, effect = parts.effect.as_str(), "decision");
        Ok(SubjectDecision { subject, purpose, channel, parts })
    }

    /// The subject of every readable item: links resolved with one store call for the batch,
    /// subject refs checked to be of this region.
    async fn resolve_items(&self, items: &[BatchItem<'_>]) -> Vec<(u64, Result<Resolved, NodeError>)> {
        let links: Vec<Link> = items
            .iter()
            .filter_map(|(_, item)| match item {
                Ok((SubjectKeyRef::Link(link), _, _, _)) => Some(*link),
                _ => None,
            })
            .collect();
        let mut found = match links.is_empty() {
            true => Ok(Vec::new().into_iter()),
            false => self.store.subjects_by_links(&links).await.map(Vec::into_iter),
        };
        items
            .iter()
            .map(|(id, item)| {
                let resolved = match item {
                    Err(e) => Err(NodeError::from(e.clone())),
                    Ok((key, purpose, channel, asserted)) => {
                        let subject = match key {
                            SubjectKeyRef::Link(_) => match &mut found {
                                Ok(found) => found
                                    .next()
                                    .flatten()
                                    .ok_or(NodeError::NotFound("no subject holds this link in this region")),
                                Err(e) => Err(batch_read_failed(e)),
                            },
                            SubjectKeyRef::Ref { region, id } if *region == self.region.as_str() => Ok(*id),
                            SubjectKeyRef::Ref { .. } => {
                                Err(NodeError::Precondition("subject ref names another region"))
                            }
                        };
                        subject.map(|subject| ((subject, *purpose, *channel), asserted.clone()))
                    }
                };
                (*id, resolved)
            })
            .collect()
    }

    /// Decides `items` at `at` with the packs of `loaded`, and audits all the decisions with one
    /// write. An item may come refused already (its request could not be read): it is answered
    /// with that, in its place. The store is read once for the whole batch (links, then decision
    /// inputs), so a store over a network pays two round trips per batch, not two per item.
    ///
    /// The decisions read the store's cache as it stands, and the store checks, as it stores their
    /// audit entries, that no write acknowledged meanwhile changed a subject they read
    /// ([`Store::audit_decisions_if_current`]): a store shared by replicas pays one round trip for
    /// that, not one to catch up before reading and another to store. Decisions found stale are
    /// made again after [`Store::sync_reads`] and stored as they are.
    pub(crate) async fn decide_items<'k, 'p>(
        &self,
        loaded: &'p LoadedPacks,
        items: impl ExactSizeIterator<Item = BatchItem<'k>>,
        at: i64,
    ) -> Decided<'p> {
        let items: Vec<BatchItem<'k>> = items.collect();
        let mark = self.store.read_mark();
        let resolved = self.resolve_items(&items).await;
        // Every subject read, also those whose items end without a decision (a subject gone
        // since its link was cached answers NOT_FOUND): each answer rests on what was read.
        let read: Vec<SubjectId> =
            resolved.iter().filter_map(|(_, item)| item.as_ref().ok().map(|((subject, _, _), _)| *subject)).collect();
        let (mut outcomes, mut decisions) = self.evaluate(loaded, resolved, at).await;
        let mut audited = self.audit(&decisions, Some((mark, &read))).await;
        if matches!(audited, Ok(Audited::Stale)) {
            self.redone.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let resolved = match self.store.sync_reads().await {
                Ok(()) => self.resolve_items(&items).await,
                Err(e) => items
                    .into_iter()
                    .map(|(id, item)| (id, item.map_err(NodeError::from).and(Err(batch_read_failed(&e)))))
                    .collect(),
            };
            (outcomes, decisions) = self.evaluate(loaded, resolved, at).await;
            audited = self.audit(&decisions, None).await;
        }
        let audited = match audited {
            Ok(Audited::Stored) => Ok(()),
            Ok(Audited::Stale) => Err(NodeError::Internal("decisions found stale after catching up")),
            Err(e) => Err(NodeError::from(e)),
        };
        if audited.is_ok() {
            for decision in &decisions {
                domicile_runtime::metrics::decided(&self.region, decision.parts.effect, decision.parts.pack);
            }
        }
        Decided { outcomes, decisions, audited }
    }

    /// The decisions of resolved items, read from the store in one call for the batch: per item,
    /// its id and the index of its decision or why it has none.
    async fn evaluate<'p>(
        &self,
        loaded: &'p LoadedPacks,
        resolved: Vec<(u64, Result<Resolved, NodeError>)>,
        at: i64,
    ) -> (Vec<(u64, Result<usize, NodeError>)>, Vec<SubjectDecision<'p>>) {
        let wanted: Vec<(SubjectId, Purpose, Channel)> =
            resolved.iter().filter_map(|(_, item)| item.as_ref().ok().map(|(wanted, _)| *wanted)).collect();
        let mut inputs = match wanted.is_empty() {
            true => Ok(Vec::new().into_iter()),
            false => self.store.decision_inputs_many(&wanted).await.map(Vec::into_iter),
        };
        let mut decisions = Vec::with_capacity(wanted.len());
        let mut outcomes = Vec::with_capacity(resolved.len());
        for (id, item) in resolved {
            let evaluated = item.and_then(|item| match &mut inputs {
                Ok(inputs) => match inputs.next().flatten() {
                    Some(read) => Self::judge(loaded, item, read, at),
                    None => Err(NodeError::NotFound("no such subject in this region")),
                },
                Err(e) => Err(batch_read_failed(e)),
            });
            match evaluated {
                Ok(decision) => {
                    outcomes.push((id, Ok(decisions.len())));
                    decisions.push(decision);
                }
                Err(e) => outcomes.push((id, Err(e))),
            }
        }
        (outcomes, decisions)
    }

    /// Stores the audit entries of `decisions` in one write: checked, with every subject the
    /// batch read, against the mark they read at when they read without catching up first
    /// ([`Store::audit_decisions_if_current`]).
    async fn audit(
        &self,
        decisions: &[SubjectDecision<'_>],
        check: Option<(u64, &[SubjectId])>,
    ) -> Result<Audited, StoreError> {
        // Every reason of the batch in one list; each entry borrows its own slice of it.
        let mut reasons: Vec<&str> = Vec::with_capacity(decisions.len() * 2);
        let mut spans = Vec::with_capacity(decisions.len());
        for decision in decisions {
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
        match check {
            Some((mark, read)) => self.store.audit_decisions_if_current(&entries, read, now_unix(), mark).await,
            None => self.store.audit_decisions(&entries, now_unix()).await.map(|()| Audited::Stored),
        }
    }
}
