//! Who a subject is: registration, merge and rectification. Links are made live here only with
//! this region's granted claim (`crate::ownership`), so no identifier is held in two regions.

mod batch;
pub(super) mod wire;

use std::collections::BTreeMap;

use domicile_proto::convert::{FieldViolation, SubjectKey};
use domicile_runtime::process::now_unix;
use domicile_types::rights::RightsKind;
use domicile_types::{Jurisdiction, Link, NormalizedIdentifier, SubjectId, SubjectRef};

use super::unit::Settled;
use super::{Caller, NodeService};
use crate::error::NodeError;
use crate::store::{Idempotency, Merged, Rectification, Rectified, Registered, Release, Store, StoreError, Unmerged};

/// Attempts of a write whose links a concurrent change moved (an erasure freeing a link it found
/// held, say) before it gives up with ABORTED.
const MAX_ATTEMPTS: usize = 3;

/// A subject to register with its identifiers (or the subject that already holds them).
pub(crate) struct Registration {
    pub jurisdiction: Jurisdiction,
    pub identifiers: Vec<NormalizedIdentifier>,
}

/// A rectification: identifiers to add and remove, profile fields to set and remove. Checked
/// as a whole by its conversion: nothing both added and removed, something to change.
pub(crate) struct Correction {
    pub add: Vec<NormalizedIdentifier>,
    pub remove: Vec<NormalizedIdentifier>,
    pub set_profile: BTreeMap<String, String>,
    pub remove_profile: Vec<String>,
}

impl<S: Store> NodeService<S> {
    /// Runs a write that makes `links` live here: with their region-local locks held, it claims
    /// at their arbiters those no subject of this region holds, then lets `write` store them with
    /// the claims. A write that fails gives its claims up; one that a concurrent change upset
    /// ([`StoreError::Retry`]) starts over. The outer error is the claims' (or the lock's), the
    /// inner one the store's.
    async fn with_claims<T, F: Future<Output = Result<T, StoreError>>>(
        &self,
        links: &[Link],
        mut write: impl FnMut(Vec<Release>) -> F,
    ) -> Result<Result<T, StoreError>, NodeError> {
        let _locks = self.ownership.lock(links).await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut free = Vec::new();
            for link in links {
                if self.store.subject_by_link(link).await?.is_none() && !free.contains(link) {
                    free.push(*link);
                }
            }
            let claimed = self.ownership.claim(&free).await?;
            match write(claimed.clone()).await {
                Ok(done) => return Ok(Ok(done)),
                // A commit whose answer was lost may have made the links live: their claims stay
                // (an orphan claim is safe, a second owner is not; the repair command finds it).
                Err(e @ StoreError::OutcomeUnknown) => return Ok(Err(e)),
                Err(e) => {
                    // Nothing of the write is stored: under the locks, no other write made these
                    // links live meanwhile, so their claims can go.
                    self.ownership.abandon(&claimed).await;
                    if matches!(e, StoreError::Retry) && attempt < MAX_ATTEMPTS {
                        continue;
                    }
                    return Ok(Err(e));
                }
            }
        }
    }

    /// Registers a subject with its identifiers here, or finds the one that holds them.
    pub(crate) async fn register_subject(
        &self,
        caller: &Caller,
        registration: Registration,
        tag: Option<&Idempotency>,
    ) -> Result<Registered, NodeError> {
        let Registration { jurisdiction, identifiers } = registration;
        self.check_registration(caller, &jurisdiction)?;
        if let Some((_, registered)) = self.replayed::<(SubjectId, Registered)>(tag).await? {
            return Ok(registered);
        }
        let linked = self.linked(identifiers);
        let links: Vec<Link> = linked.iter().map(|(_, l)| *l).collect();
        let new_subject = fresh_subject()?;
        let written = self
            .with_claims(&links, |claimed| {
                let (jurisdiction, linked) = (&jurisdiction, &linked);
                async move { self.store.register(jurisdiction, linked, new_subject, now_unix(), &claimed, tag).await }
            })
            .await?;
        let registered = match self.settle(written).await? {
            Settled::Applied(registered) => registered,
            Settled::Replayed => return Ok(self.replayed_after_race::<(SubjectId, Registered)>(tag).await?.1),
        };
        tracing::info!(region = %self.region, %jurisdiction, created = registered.created, identifiers = linked.len(), "subject registered");
        Ok(registered)
    }

    /// Defence in depth for residency (invariant 1): even a misrouted request cannot make this
    /// node store a subject its pack does not allow here, nor one its caller may not collect.
    fn check_registration(&self, caller: &Caller, jurisdiction: &Jurisdiction) -> Result<(), NodeError> {
        let loaded = self.packs.current();
        let pack = Self::pack_of(&loaded, jurisdiction)?;
        if !pack.is_home(Some(&self.region)) {
            return Err(NodeError::Precondition("this region may not hold subjects of this jurisdiction"));
        }
        self.check_collection(pack, caller.region.as_ref())
    }

    /// Identifiers with their links (this region's link key).
    fn linked(&self, identifiers: Vec<NormalizedIdentifier>) -> Vec<(NormalizedIdentifier, Link)> {
        identifiers.into_iter().map(|id| (self.link_key.link(&id), id)).map(|(l, id)| (id, l)).collect()
    }

    /// Merges subject `from` into `into`, both of this region. Returns `into` and what moved.
    pub(crate) async fn merge_subjects(
        &self,
        into: &SubjectKey,
        from: &SubjectKey,
        tag: Option<&Idempotency>,
    ) -> Result<(SubjectId, Merged), NodeError> {
        // Identity never spans regions: each half's data must stay where it is.
        for key in [into, from] {
            if let SubjectKey::Ref(subject) = key
                && subject.region != self.region
            {
                return Err(NodeError::Precondition("merging subjects of different regions is not allowed"));
            }
        }
        if let Some(done) = self.replayed::<(SubjectId, Merged)>(tag).await? {
            return Ok(done);
        }
        let into = self.resolve(into).await?;
        let from = self.resolve(from).await?;
        if into == from {
            return Err(FieldViolation::new("from", "names the same subject as `into`").into());
        }
        // Both halves are of this region: the links' claims stay with it as they are.
        let merged = match self.settle(self.store.merge(&into, &from, now_unix(), tag).await).await? {
            Settled::Applied(merged) => merged,
            Settled::Replayed => return self.replayed_after_race(tag).await,
        };
        self.close_requests_of_merged(&from, now_unix()).await;
        tracing::info!(region = %self.region, links = merged.links.len(), consent_records = merged.consent_records, interactions = merged.interactions, "subjects merged");
        Ok((into, merged))
    }

    /// Undoes the merge that brought `merged` (the ref the merged-away subject had) into the
    /// subject `key` names. Returns the remaining subject (under its new id) and what was split
    /// off.
    pub(crate) async fn unmerge_subject(
        &self,
        key: &SubjectKey,
        merged: &SubjectRef,
        tag: Option<&Idempotency>,
    ) -> Result<(SubjectId, Unmerged), NodeError> {
        if merged.region != self.region {
            return Err(NodeError::Precondition("the merged subject ref names another region"));
        }
        if let Some(done) = self.replayed::<(SubjectId, Unmerged)>(tag).await? {
            return Ok(done);
        }
        // The same unmerge sent again while the first was under way finds the merged subject
        // gone once the first commits: answered with the first's result, not NOT_FOUND.
        let gone = async |e: NodeError| match self.replayed::<(SubjectId, Unmerged)>(tag).await? {
            Some(done) => Ok(done),
            None => Err(e),
        };
        let subject = match self.resolve(key).await {
            Ok(subject) => subject,
            Err(e @ NodeError::NotFound(_)) => return gone(e).await,
            Err(e) => return Err(e),
        };
        let (kept, restored) = (fresh_subject()?, fresh_subject()?);
        let unmerged = match self.store.unmerge(&subject, &merged.id, &kept, &restored, now_unix(), tag).await {
            Err(StoreError::NotFound) => {
                return gone(NodeError::NotFound("no merge of that subject ref in this subject's lineage")).await;
            }
            written => match self.settle(written).await? {
                Settled::Applied(unmerged) => unmerged,
                Settled::Replayed => return self.replayed_after_race(tag).await,
            },
        };
        self.close_requests_of_merged(&subject, now_unix()).await;
        tracing::info!(region = %self.region, links = unmerged.links.len(), consent_records = unmerged.consent_records, flagged = unmerged.flagged, "merge undone");
        Ok((unmerged.kept, unmerged))
    }

    /// Corrects a subject's identifiers and profile, recorded as a rectification request.
    pub(crate) async fn rectify_subject(
        &self,
        key: &SubjectKey,
        caller: &Caller,
        correction: Correction,
        authority: &crate::service::rights::Authority,
        tag: Option<&Idempotency>,
    ) -> Result<(SubjectId, Rectified), NodeError> {
        if let Some(done) = self.replayed::<(SubjectId, Rectified)>(tag).await? {
            return Ok(done);
        }
        let (subject, meta) = self.resolve_meta(key).await?;
        // Adding identifiers or profile values collects personal data; removing does not.
        if !correction.add.is_empty() || !correction.set_profile.is_empty() {
            self.check_collection_for(&meta.jurisdiction, caller.region.as_ref())?;
        }
        let now = now_unix();
        // A verified rectification request (now in progress) or an operator's override.
        let started =
            self.start_request(&subject, &meta.jurisdiction, RightsKind::Rectification, authority, now).await?;
        let rights_request = started.completed(now);
        let linked = |ids: Vec<NormalizedIdentifier>| -> Vec<(NormalizedIdentifier, Link)> {
            ids.into_iter()
                .map(|id| {
                    let link = self.link_key.link(&id);
                    (id, link)
                })
                .collect()
        };
        let change = Rectification {
            add: linked(correction.add),
            remove: linked(correction.remove),
            set_profile: correction.set_profile,
            remove_profile: correction.remove_profile,
        };
        let added: Vec<Link> = change.add.iter().map(|(_, l)| *l).collect();
        let written = self
            .with_claims(&added, |claimed| {
                let (subject, change, rights_request) = (&subject, &change, &rights_request);
                async move { self.store.rectify(subject, change, now, rights_request, &claimed, tag).await }
            })
            .await?;
        let rectified = match self.settle(written).await? {
            Settled::Applied(rectified) => rectified,
            Settled::Replayed => return self.replayed_after_race(tag).await,
        };
        self.finish_request(&subject, &started, &rights_request, now).await?;
        tracing::info!(region = %self.region, added = rectified.added.len(), removed = rectified.removed.len(), "subject rectified");
        Ok((subject, rectified))
    }
}

/// A new subject id (random: ids say nothing of who or when).
fn fresh_subject() -> Result<SubjectId, NodeError> {
    domicile_runtime::process::random_bytes::<16>()
        .map(SubjectId::from_bytes)
        .map_err(|_| NodeError::Unavailable("random source unavailable"))
}
