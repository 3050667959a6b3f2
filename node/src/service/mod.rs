//! The `domicile.node.v1.RegionalNode` implementation: thin gRPC handlers (convert in, call,
//! render out) over the node's operations, grouped by capability:
//!
//! - `identity.rs`: registration, merge, rectification (and the identifier claims they need);
//! - `consent.rs`: the consent ledger;
//! - `decide.rs`: decisions, one and in batches;
//! - `rights.rs`: export, erasure, restriction, the rights requests' bookkeeping;
//! - `context.rs`: interactions and the warm hand-off context;
//! - `follow.rs`: change events, the link snapshot and the node's info;
//! - `claims.rs`: this node as the arbiter of other regions' identifier claims;
//! - `repair.rs`: operators' repair of identifier ownership (identifiers held twice, claims
//!   missing or orphaned).
//!
//! `unit.rs` is the unit of work every mutating call ends with (durable, then published). What
//! the handlers share otherwise is here: resolving subject keys, the caller's region, residency
//! checks, idempotency.

mod claims;
mod consent;
mod context;
mod decide;
mod follow;
mod identity;
mod repair;
mod rights;
#[cfg(test)]
mod tests;
mod unit;

use std::sync::Arc;

use domicile_policy::{Pack, PackMatch};
use domicile_proto::convert::{self, FieldViolation, SubjectKey};
use domicile_proto::pb::node::v1 as pb;
use domicile_proto::pb::node::v1::regional_node_server::RegionalNode;
use domicile_proto::raw::SubjectKeyRef;
use domicile_runtime::packs::{LoadedPacks, PackReloader};
use domicile_runtime::process::Shutdown;
use domicile_types::{Jurisdiction, LinkKey, RegionId, SubjectId, SubjectRef};
use tonic::{Request, Response, Status};

use crate::access::Requester;
use crate::commit::{FlushFn, GroupCommit};
use crate::error::store_status;
use crate::idempotency;
use crate::ownership::Ownership;
use crate::store::{Idempotency, Store, StoreError, SubjectMeta};

pub struct NodeService<S> {
    region: RegionId,
    store: Arc<S>,
    packs: Arc<PackReloader>,
    link_key: LinkKey,
    /// Highest change-event sequence known durable. Watchers deliver nothing beyond it, so a
    /// subscriber never sees a change that a crash could still undo.
    durable: tokio::sync::watch::Sender<Option<u64>>,
    /// The server's shutdown: open watch streams end when it begins (see `watch`).
    shutdown: Shutdown,
    commit: Arc<GroupCommit>,
    ownership: Arc<Ownership<S>>,
}

impl<S: Store> NodeService<S> {
    pub fn new(
        region: RegionId,
        store: Arc<S>,
        packs: Arc<PackReloader>,
        link_key: LinkKey,
        ownership: Arc<Ownership<S>>,
    ) -> Result<Self, StoreError> {
        // Everything recovered from disk is durable.
        let (durable, _) = tokio::sync::watch::channel(store.last_event()?);
        // One flush (store and audit log) serves every write waiting when it starts.
        let flush: FlushFn = {
            let store = Arc::clone(&store);
            Arc::new(move || {
                let store = Arc::clone(&store);
                Box::pin(async move { store.flush().await.map_err(|e| e.to_string()) })
            })
        };
        let commit = GroupCommit::start(flush);
        Ok(Self { region, store, packs, link_key, durable, shutdown: Shutdown::new(), commit, ownership })
    }

    /// Ends every open watch stream when `shutdown` begins, so a graceful stop is not held up by
    /// the connections they keep open.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Group-commit figures (commits, flushes, time spent flushing).
    pub fn commit_stats(&self) -> crate::commit::CommitStats {
        self.commit.stats()
    }

    /// The region of the caller a request is for: this node's own for a caller of its region;
    /// for a gateway, the region it states (`stated`, from the caller's certificate or token);
    /// `None` when unknown (a gateway that states none, or an in-process call), which every
    /// residency rule that depends on it treats as "outside".
    fn caller_region<T>(&self, request: &Request<T>, stated: &str) -> Result<Option<RegionId>, Status> {
        Ok(match Requester::of(request) {
            Some(Requester::InRegion(_)) => Some(self.region.clone()),
            // Only a gateway forwards for callers of other regions: only its statement counts.
            Some(Requester::Gateway) if !stated.is_empty() => {
                Some(RegionId::parse(stated).map_err(|_| FieldViolation::new("caller_region", "is not a region id"))?)
            }
            Some(Requester::Gateway | Requester::PeerNode(_)) | None => None,
        })
    }

    /// The pack of a subject's jurisdiction in `loaded` (a subdivision without a pack of its own:
    /// its country's, marked as such). No pack: fail closed with a status, never a default
    /// (invariant 3). The one place a node looks a subject's pack up.
    fn pack_match<'p>(loaded: &'p LoadedPacks, jurisdiction: &Jurisdiction) -> Result<PackMatch<'p>, Status> {
        loaded
            .packs
            .lookup(jurisdiction)
            .ok_or_else(|| Status::failed_precondition("no policy pack covers the subject's jurisdiction"))
    }

    /// [`Self::pack_match`]'s pack.
    fn pack_of<'p>(loaded: &'p LoadedPacks, jurisdiction: &Jurisdiction) -> Result<&'p Pack, Status> {
        Self::pack_match(loaded, jurisdiction).map(|m| m.pack)
    }

    /// Refuses a capture for a subject of `jurisdiction` when its pack requires in-country
    /// collection and the caller is not of a home region. A caller of this region always is
    /// (this node holds only subjects whose pack lists it).
    fn check_collection(&self, jurisdiction: &Jurisdiction, caller_region: Option<&RegionId>) -> Result<(), Status> {
        if caller_region == Some(&self.region) {
            return Ok(());
        }
        let loaded = self.packs.current();
        Self::pack_of(&loaded, jurisdiction)?.check_collection(caller_region).map_err(convert::residency_refused)
    }

    fn subject_ref(&self, id: SubjectId) -> SubjectRef {
        SubjectRef { region: self.region.clone(), id }
    }

    /// Finds the subject a pseudonymous key names. A subject ref of another region is refused:
    /// this node can hold nothing about it.
    fn resolve(&self, key: &SubjectKey) -> Result<SubjectId, Status> {
        self.resolve_meta(key).map(|(id, _)| id)
    }

    /// [`Self::resolve`], also returning the subject's metadata (read once).
    fn resolve_meta(&self, key: &SubjectKey) -> Result<(SubjectId, SubjectMeta), Status> {
        let id = self.resolve_key(key.as_key_ref())?;
        match self.store.subject_meta(&id).map_err(store_status)? {
            Some(meta) => Ok((id, meta)),
            None => Err(Status::not_found("no such subject in this region")),
        }
    }

    fn resolve_key(&self, key: SubjectKeyRef<'_>) -> Result<SubjectId, Status> {
        Ok(match key {
            SubjectKeyRef::Link(link) => self
                .store
                .subject_by_link(&link)
                .map_err(store_status)?
                .ok_or_else(|| Status::not_found("no subject holds this link in this region"))?,
            SubjectKeyRef::Ref { region, id } => {
                if region != self.region.as_str() {
                    return Err(Status::failed_precondition("subject ref names another region"));
                }
                id
            }
        })
    }

    /// The idempotency record of a write (see `crate::idempotency`), `None` without a key.
    fn idempotency<M: domicile_proto::prost::Message + Clone, T>(
        &self,
        method: &str,
        request: &Request<T>,
        key: &str,
        body: &M,
        clear_key: impl FnOnce(&mut M),
    ) -> Result<Option<Idempotency>, Status> {
        idempotency::tag(&self.link_key, method, Requester::of(request), key, body, clear_key)
    }

    /// The result an earlier write with the same idempotency key left, if any.
    fn replayed<T: serde::de::DeserializeOwned>(&self, tag: Option<&Idempotency>) -> Result<Option<T>, Status> {
        let Some(tag) = tag else { return Ok(None) };
        idempotency::replayed(tag, self.store.replay(&tag.key).map_err(store_status)?)
    }
}

#[tonic::async_trait]
impl<S: Store> RegionalNode for NodeService<S> {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        self.register_subject(request).await.map(Response::new)
    }

    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::RecordConsentResponse>, Status> {
        self.record_consent_entry(request).await.map(Response::new)
    }

    async fn decide(&self, request: Request<pb::DecideRequest>) -> Result<Response<pb::DecideResponse>, Status> {
        self.decide_one(request.into_inner()).map(Response::new)
    }

    /// Served by [`NodeService::decide_batch_encoded`] on the wire; this typed form is for
    /// in-process callers (tests, benches) and decodes the same bytes.
    async fn decide_batch(
        &self,
        request: Request<pb::DecideBatchRequest>,
    ) -> Result<Response<pb::DecideBatchResponse>, Status> {
        self.decide_typed_batch(request.into_inner()).map(Response::new)
    }

    type ListLinksStream = follow::LinkStream;

    async fn list_links(
        &self,
        request: Request<pb::ListLinksRequest>,
    ) -> Result<Response<Self::ListLinksStream>, Status> {
        Ok(Response::new(self.link_snapshot(request.into_inner())))
    }

    async fn info(&self, _request: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        self.node_info().map(Response::new)
    }

    async fn consent_history(
        &self,
        request: Request<pb::ConsentHistoryRequest>,
    ) -> Result<Response<pb::ConsentHistoryResponse>, Status> {
        self.consent_entries(request).map(Response::new)
    }

    async fn export(&self, request: Request<pb::ExportRequest>) -> Result<Response<pb::ExportResponse>, Status> {
        self.export_subject(request).await.map(Response::new)
    }

    async fn erase(&self, request: Request<pb::EraseRequest>) -> Result<Response<pb::EraseResponse>, Status> {
        self.erase_subject(request).await.map(Response::new)
    }

    type WatchStream = follow::EventStream;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(self.follow_events(request.into_inner().after_sequence)))
    }

    async fn merge(&self, request: Request<pb::MergeRequest>) -> Result<Response<pb::MergeResponse>, Status> {
        self.merge_subjects(request).await.map(Response::new)
    }

    async fn record_interaction(
        &self,
        request: Request<pb::RecordInteractionRequest>,
    ) -> Result<Response<pb::RecordInteractionResponse>, Status> {
        self.record_interaction_entry(request).await.map(Response::new)
    }

    async fn get_context(
        &self,
        request: Request<pb::GetContextRequest>,
    ) -> Result<Response<pb::ContextResponse>, Status> {
        self.context(request).await.map(Response::new)
    }

    async fn rectify(&self, request: Request<pb::RectifyRequest>) -> Result<Response<pb::RectifyResponse>, Status> {
        self.rectify_subject(request).await.map(Response::new)
    }

    async fn restrict(&self, request: Request<pb::RestrictRequest>) -> Result<Response<pb::RestrictResponse>, Status> {
        self.restrict_subject(request).await.map(Response::new)
    }

    async fn list_rights_requests(
        &self,
        request: Request<pb::ListRightsRequestsRequest>,
    ) -> Result<Response<pb::ListRightsRequestsResponse>, Status> {
        self.rights_requests(request.into_inner()).map(Response::new)
    }

    async fn claim_links(
        &self,
        request: Request<pb::ClaimLinksRequest>,
    ) -> Result<Response<pb::ClaimLinksResponse>, Status> {
        self.grant_claims(request).await.map(Response::new)
    }

    async fn release_links(
        &self,
        request: Request<pb::ReleaseLinksRequest>,
    ) -> Result<Response<pb::ReleaseLinksResponse>, Status> {
        self.give_up_claims(request).await.map(Response::new)
    }

    async fn claims_of(&self, request: Request<pb::ClaimsOfRequest>) -> Result<Response<pb::ClaimsOfResponse>, Status> {
        self.arbiter_claims(request).map(Response::new)
    }

    type ListClaimsStream = repair::ClaimStream;

    async fn list_claims(
        &self,
        request: Request<pb::ListClaimsRequest>,
    ) -> Result<Response<Self::ListClaimsStream>, Status> {
        self.claims_snapshot(request).map(Response::new)
    }

    async fn reassert_claims(
        &self,
        request: Request<pb::ReassertClaimsRequest>,
    ) -> Result<Response<pb::ReassertClaimsResponse>, Status> {
        self.reassert(request).await.map(Response::new)
    }

    async fn drop_links(
        &self,
        request: Request<pb::DropLinksRequest>,
    ) -> Result<Response<pb::DropLinksResponse>, Status> {
        self.drop_subject_links(request).await.map(Response::new)
    }

    async fn release_orphan_claims(
        &self,
        request: Request<pb::ReleaseOrphanClaimsRequest>,
    ) -> Result<Response<pb::ReleaseOrphanClaimsResponse>, Status> {
        self.release_orphans(request).await.map(Response::new)
    }
}
