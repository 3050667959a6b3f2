//! Decisions: one, a batch at the wire (read in place, encoded from the pack's borrowed parts),
//! and the typed batch of in-process callers. `decide_items` is the one decision path.

use domicile_policy::{ConsentFact, DecisionInput, DecisionParts};
use domicile_proto::convert::{self, FieldViolation};
use domicile_proto::pb::node::v1 as pb;
use domicile_proto::raw::{EncodedDecideBatch, RawDecideBatchRequest, SubjectKeyRef};
use domicile_runtime::packs::LoadedPacks;
use domicile_runtime::process::now_unix;
use domicile_types::{Channel, Purpose, SubjectId};
use tonic::Status;

use super::NodeService;
use crate::error::{invalid, store_status};
use crate::store::Store;
use domicile_audit::DecisionEntry;

/// Bounds one batch call's work; gateways split audiences into batches of this size or less.
pub const MAX_BATCH_ITEMS: usize = 10_000;

impl<S: Store> NodeService<S> {
    pub(super) fn decide_one(&self, req: pb::DecideRequest) -> Result<pb::DecideResponse, Status> {
        let key = convert::subject_key("subject", req.subject.as_ref()).map_err(invalid)?;
        let purpose = convert::purpose("purpose", &req.purpose).map_err(invalid)?;
        let channel = convert::channel("channel", &req.channel).map_err(invalid)?;
        let at = convert::timestamp("at", req.at.as_ref()).map_err(invalid)?.unwrap_or_else(now_unix);
        let batch = self.decide_items(std::iter::once((0, Ok((key.as_key_ref(), purpose, channel)))), at);
        match decoded(&batch)?.outcomes.pop().and_then(|o| o.result) {
            Some(pb::decide_outcome::Result::Decision(decision)) => Ok(pb::DecideResponse { decision: Some(decision) }),
            Some(pb::decide_outcome::Result::Error(e)) => Err(Status::new(tonic::Code::from(e.code), e.message)),
            None => Err(Status::internal("batch encoding failed")),
        }
    }

    pub(super) fn decide_typed_batch(&self, req: pb::DecideBatchRequest) -> Result<pb::DecideBatchResponse, Status> {
        let at = batch_time(req.items.len(), req.at.as_ref())?;
        let keys: Vec<_> = req
            .items
            .iter()
            .map(|item| {
                let key = convert::subject_key("subject", item.subject.as_ref())?;
                Ok::<_, FieldViolation>((
                    key,
                    convert::purpose("purpose", &item.purpose)?,
                    convert::channel("channel", &item.channel)?,
                ))
            })
            .collect();
        let items =
            req.items.iter().zip(&keys).map(|(item, key)| {
                (item.id, key.as_ref().map(|(k, p, c)| (k.as_key_ref(), *p, *c)).map_err(Clone::clone))
            });
        decoded(&self.decide_items(items, at))
    }

    fn evaluate<'p>(
        &self,
        loaded: &'p LoadedPacks,
        key: SubjectKeyRef<'_>,
        purpose: Purpose,
        channel: Channel,
        at: i64,
    ) -> Result<(SubjectId, DecisionParts<'p>), Status> {
        let subject = self.resolve_key(key)?;
        let (meta, current) = self
            .store
            .decision_inputs(&subject, purpose, channel)
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found("no such subject in this region"))?;
        // A subdivision without a pack of its own gets its country's, and the decision says so.
        let found = Self::pack_match(loaded, &meta.jurisdiction)?;
        let pack = found.pack;
        if meta.restricted {
            // Right to restriction: nothing is processed for the subject until lifted, whatever
            // consent says. Still audited and explainable like any decision.
            return Ok((subject, found.restricted_parts()));
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
        Ok((subject, parts))
    }

    /// Decides a batch: every item against one pack-set snapshot, all decisions audited with one
    /// write, each outcome encoded from the pack's borrowed parts (no owned decision is built).
    /// A decision that cannot be audited is not served (invariant 5): then every one fails.
    /// Used for both `Decide` and `DecideBatch`.
    pub fn decide_items<'k>(
        &self,
        items: impl ExactSizeIterator<Item = (u64, Result<(SubjectKeyRef<'k>, Purpose, Channel), FieldViolation>)>,
        at: i64,
    ) -> EncodedDecideBatch {
        let loaded = self.packs.current();
        let count = items.len();
        let mut decided = Vec::with_capacity(count);
        let mut outcomes = Vec::with_capacity(count);
        for (id, item) in items {
            let evaluated = item.map_err(Status::from).and_then(|(key, purpose, channel)| {
                self.evaluate(&loaded, key, purpose, channel, at)
                    .map(|(subject, parts)| (subject, purpose, channel, parts))
            });
            match evaluated {
                Ok(decision) => {
                    outcomes.push((id, Ok(decided.len())));
                    decided.push(decision);
                }
                Err(status) => outcomes.push((id, Err(status))),
            }
        }
        // Every reason of the batch in one list; each entry borrows its own slice of it.
        let mut reasons: Vec<&str> = Vec::with_capacity(decided.len() * 2);
        let mut spans = Vec::with_capacity(decided.len());
        for (.., parts) in &decided {
            let start = reasons.len();
            reasons.extend(parts.reasons());
            spans.push(start..reasons.len());
        }
        let entries: Vec<DecisionEntry<'_>> = decided
            .iter()
            .zip(spans)
            .map(|((subject, purpose, channel, parts), span)| DecisionEntry {
                subject: *subject,
                purpose: *purpose,
                channel: *channel,
                effect: parts.effect,
                reasons: reasons.get(span).unwrap_or_default(),
                pack: parts.pack,
            })
            .collect();
        let audited = self.store.audit_decisions(&entries, now_unix()).map_err(store_status);
        let mut out = EncodedDecideBatch::with_capacity(count);
        for (id, outcome) in outcomes {
            match (outcome, &audited) {
                (Ok(index), Ok(())) => {
                    if let Some((subject, _, _, parts)) = decided.get(index) {
                        domicile_runtime::metrics::decided(&self.region, parts.effect, parts.pack);
                        out.push_decision(id, parts, self.region.as_str(), *subject);
                    }
                }
                (Ok(_), Err(status)) => out.push_error(id, status),
                (Err(status), _) => out.push_error(id, &status),
            }
        }
        out
    }

    /// `DecideBatch` with the outcomes encoded as they are sent: what the node serves (see
    /// [`crate::raw`]); the generated trait method decodes this for in-process callers.
    pub fn decide_batch_encoded(&self, request: RawDecideBatchRequest) -> Result<EncodedDecideBatch, Status> {
        let at = batch_time(request.items.len(), request.at.as_ref())?;
        let items = request.items.iter().map(|item| {
            let read = || Ok((item.subject_key("subject")?, item.purpose("purpose")?, item.channel("channel")?));
            (item.id, read())
        });
        Ok(self.decide_items(items, at))
    }
}

/// A batch's size check and evaluation time (default now), for both forms of `DecideBatch`.
fn batch_time(items: usize, at: Option<&domicile_proto::prost_types::Timestamp>) -> Result<i64, Status> {
    if items > MAX_BATCH_ITEMS {
        return Err(FieldViolation::new("items", format!("at most {MAX_BATCH_ITEMS} items per batch")).into());
    }
    Ok(convert::timestamp("at", at).map_err(invalid)?.unwrap_or_else(now_unix))
}

/// The generated response of an encoded batch, for in-process callers of the trait methods.
fn decoded(batch: &EncodedDecideBatch) -> Result<pb::DecideBatchResponse, Status> {
    use domicile_proto::prost::Message as _;
    pb::DecideBatchResponse::decode(batch.as_bytes()).map_err(|_| Status::internal("batch encoding failed"))
}
