//! Who a subject is: registration, merge and rectification. Links are made live here only with
//! this region's granted claim (`crate::ownership`), so no identifier is held in two regions.

use std::collections::BTreeMap;

use domicile_proto::convert::{self, FieldViolation, SubjectKey};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as pb;
use domicile_runtime::process::now_unix;
use domicile_types::{Link, NormalizedIdentifier, SubjectId};
use tonic::{Request, Status};

use super::NodeService;
use super::rights::wire::rights_to_pb;
use super::unit::Settled;
use super::wire::token;
use crate::error::{claim_status, invalid, store_status};
use crate::store::{Merged, Rectification, Rectified, Registered, Release, Store, StoreError};
use domicile_types::rights::RightsKind;

/// Attempts of a write whose links a concurrent change moved (an erasure freeing a link it found
/// held, say) before it gives up with ABORTED.
const MAX_ATTEMPTS: usize = 3;
const MAX_PROFILE_FIELDS: usize = 64;
const MAX_PROFILE_NAME: usize = 64;
const MAX_PROFILE_VALUE: usize = 256;

impl<S: Store> NodeService<S> {
    /// Runs a write that makes `links` live here: with their region-local locks held, it claims
    /// at their arbiters those no subject of this region holds, then lets `write` store them with
    /// the claims. A write that fails gives its claims up; one that a concurrent change upset
    /// ([`StoreError::Retry`]) starts over. The outer error is the claims' (or the lock's), the
    /// inner one the store's.
    async fn with_claims<T>(
        &self,
        links: &[Link],
        mut write: impl FnMut(&[Release]) -> Result<T, StoreError>,
    ) -> Result<Result<T, StoreError>, Status> {
        let _locks = self.ownership.lock(links).await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut free = Vec::new();
            for link in links {
                if self.store.subject_by_link(link).map_err(store_status)?.is_none() && !free.contains(link) {
                    free.push(*link);
                }
            }
            let claimed = self.ownership.claim(&free).await.map_err(claim_status)?;
            match write(&claimed) {
                Ok(done) => return Ok(Ok(done)),
                Err(e) => {
                    // Nothing of the write is stored: under the locks, no other write made these
                    // links live meanwhile, so their claims can go.
                    self.ownership.abandon(&claimed);
                    if matches!(e, StoreError::Retry) && attempt < MAX_ATTEMPTS {
                        continue;
                    }
                    return Ok(Err(e));
                }
            }
        }
    }

    pub(super) async fn register_subject(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<pb::RegisterResponse, Status> {
        let caller_region = self.caller_region(&request, &request.get_ref().caller_region)?;
        let req = request.get_ref();
        let jurisdiction = convert::jurisdiction("jurisdiction", &req.jurisdiction).map_err(invalid)?;
        let identifiers = convert::identifiers("identifiers", &req.identifiers).map_err(invalid)?;
        // Defence in depth for residency (invariant 1): even a misrouted request cannot make this
        // node store a subject its pack does not allow here.
        {
            let loaded = self.packs.current();
            let pack = Self::pack_of(&loaded, &jurisdiction)?;
            if !pack.is_home(Some(&self.region)) {
                return Err(Status::failed_precondition("this region may not hold subjects of this jurisdiction"));
            }
            pack.check_collection(caller_region.as_ref()).map_err(convert::residency_refused)?;
        }
        let tag = self.idempotency("Register", &request, &req.idempotency_key, req, |r| r.idempotency_key.clear())?;
        let render = |registered: &Registered| pb::RegisterResponse {
            subject_ref: self.subject_ref(registered.subject).to_string(),
            links: registered.links.iter().map(Link::to_string).collect(),
            created: registered.created,
        };
        if let Some((_, registered)) = self.replayed::<(SubjectId, Registered)>(tag.as_ref())? {
            return Ok(render(&registered));
        }
        let linked: Vec<(NormalizedIdentifier, Link)> =
            identifiers.into_iter().map(|id| (self.link_key.link(&id), id)).map(|(l, id)| (id, l)).collect();
        let links: Vec<Link> = linked.iter().map(|(_, l)| *l).collect();
        let new_subject = SubjectId::from_bytes(
            domicile_runtime::process::random_bytes::<16>()
                .map_err(|_| Status::unavailable("random source unavailable"))?,
        );
        let written = self
            .with_claims(&links, |claimed| {
                self.store.register(&jurisdiction, &linked, new_subject, now_unix(), claimed, tag.as_ref())
            })
            .await?;
        let registered = match self.settle(written).await? {
            Settled::Applied(registered) => registered,
            Settled::Replayed => return self.replay_or(tag.as_ref(), |(_, r): (SubjectId, Registered)| render(&r)),
        };
        tracing::info!(region = %self.region, %jurisdiction, created = registered.created, identifiers = linked.len(), "subject registered");
        Ok(render(&registered))
    }

    /// The response of an earlier write made with the same idempotency key, which a concurrent
    /// repeat found recorded (`StoreError::Replayed`).
    pub(super) fn replay_or<T: serde::de::DeserializeOwned, R>(
        &self,
        tag: Option<&crate::store::Idempotency>,
        render: impl FnOnce(T) -> R,
    ) -> Result<R, Status> {
        match self.replayed::<T>(tag)? {
            Some(result) => Ok(render(result)),
            None => Err(store_status(StoreError::Replayed)),
        }
    }

    pub(super) async fn merge_subjects(&self, request: Request<pb::MergeRequest>) -> Result<pb::MergeResponse, Status> {
        let req = request.get_ref();
        let into_key = convert::subject_key("into", req.into.as_ref()).map_err(invalid)?;
        let from_key = convert::subject_key("from", req.from.as_ref()).map_err(invalid)?;
        // Identity never spans regions: each half's data must stay where it is.
        for key in [&into_key, &from_key] {
            if let SubjectKey::Ref(subject) = key
                && subject.region != self.region
            {
                return Err(Status::failed_precondition("merging subjects of different regions is not allowed"));
            }
        }
        let tag = self.idempotency("Merge", &request, &req.idempotency_key, req, |r| r.idempotency_key.clear())?;
        let render = |into: SubjectId, merged: &Merged| pb::MergeResponse {
            subject_ref: self.subject_ref(into).to_string(),
            links_moved: merged.links.len() as u64,
            consent_records_moved: merged.consent_records as u64,
            links: merged.links.iter().map(Link::to_string).collect(),
            interactions_moved: merged.interactions as u64,
            merged_subject_ref: self.subject_ref(merged.from).to_string(),
        };
        if let Some((into, merged)) = self.replayed::<(SubjectId, Merged)>(tag.as_ref())? {
            return Ok(render(into, &merged));
        }
        let into = self.resolve(&into_key)?;
        let from = self.resolve(&from_key)?;
        if into == from {
            return Err(FieldViolation::new("from", "names the same subject as `into`").into());
        }
        // Both halves are of this region: the links' claims stay with it as they are.
        let merged = match self.settle(self.store.merge(&into, &from, now_unix(), tag.as_ref())).await? {
            Settled::Applied(merged) => merged,
            Settled::Replayed => {
                return self.replay_or(tag.as_ref(), |(into, m): (SubjectId, Merged)| render(into, &m));
            }
        };
        tracing::info!(region = %self.region, links = merged.links.len(), consent_records = merged.consent_records, interactions = merged.interactions, "subjects merged");
        Ok(render(into, &merged))
    }

    pub(super) async fn rectify_subject(
        &self,
        request: Request<pb::RectifyRequest>,
    ) -> Result<pb::RectifyResponse, Status> {
        let caller_region = self.caller_region(&request, &request.get_ref().caller_region)?;
        let req = request.get_ref();
        let key = convert::subject_key("subject", req.subject.as_ref()).map_err(invalid)?;
        let linked = |field: &str, pbs: &[common::Identifier]| -> Result<Vec<_>, Status> {
            if pbs.is_empty() {
                return Ok(Vec::new());
            }
            Ok(convert::identifiers(field, pbs)
                .map_err(invalid)?
                .into_iter()
                .map(|id| {
                    let link = self.link_key.link(&id);
                    (id, link)
                })
                .collect())
        };
        let add = linked("add_identifiers", &req.add_identifiers)?;
        let remove = linked("remove_identifiers", &req.remove_identifiers)?;
        if add.iter().any(|(_, l)| remove.iter().any(|(_, r)| r == l)) {
            return Err(
                FieldViolation::new("remove_identifiers", "names an identifier also in `add_identifiers`").into()
            );
        }
        if req.set_profile.len() + req.remove_profile.len() > MAX_PROFILE_FIELDS {
            return Err(FieldViolation::new(
                "set_profile",
                format!("at most {MAX_PROFILE_FIELDS} profile fields per request"),
            )
            .into());
        }
        let mut set_profile = BTreeMap::new();
        for (name, value) in &req.set_profile {
            let name = token("set_profile.key", name, MAX_PROFILE_NAME).map_err(invalid)?;
            let value = convert::short_text("set_profile.value", value, MAX_PROFILE_VALUE).map_err(invalid)?;
            set_profile.insert(name, value);
        }
        let remove_profile = req
            .remove_profile
            .iter()
            .map(|name| token("remove_profile", name, MAX_PROFILE_NAME))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        if remove_profile.iter().any(|name| set_profile.contains_key(name)) {
            return Err(FieldViolation::new("remove_profile", "names a field also in `set_profile`").into());
        }
        if add.is_empty() && remove.is_empty() && set_profile.is_empty() && remove_profile.is_empty() {
            return Err(FieldViolation::new("subject", "nothing to rectify: no identifier or profile change").into());
        }
        let tag = self.idempotency("Rectify", &request, &req.idempotency_key, req, |r| r.idempotency_key.clear())?;
        let render = |subject: SubjectId, rectified: &Rectified| pb::RectifyResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            links_added: rectified.added.iter().map(Link::to_string).collect(),
            links_removed: rectified.removed.iter().map(Link::to_string).collect(),
            rights_request: Some(rights_to_pb(&rectified.rights_request)),
        };
        if let Some((subject, rectified)) = self.replayed::<(SubjectId, Rectified)>(tag.as_ref())? {
            return Ok(render(subject, &rectified));
        }
        let (subject, meta) = self.resolve_meta(&key)?;
        // Adding identifiers or profile values collects personal data; removing does not.
        if !add.is_empty() || !set_profile.is_empty() {
            self.check_collection_for(&meta.jurisdiction, caller_region.as_ref())?;
        }
        let now = now_unix();
        let rights_request = self.rights_request(&meta.jurisdiction, RightsKind::Rectification, now)?;
        let added: Vec<Link> = add.iter().map(|(_, l)| *l).collect();
        let change = Rectification { add, remove, set_profile, remove_profile };
        let written = self
            .with_claims(&added, |claimed| {
                self.store.rectify(&subject, &change, now, &rights_request, claimed, tag.as_ref())
            })
            .await?;
        let rectified = match self.settle(written).await? {
            Settled::Applied(rectified) => rectified,
            Settled::Replayed => {
                return self.replay_or(tag.as_ref(), |(s, r): (SubjectId, Rectified)| render(s, &r));
            }
        };
        tracing::info!(region = %self.region, added = rectified.added.len(), removed = rectified.removed.len(), "subject rectified");
        Ok(render(subject, &rectified))
    }
}
