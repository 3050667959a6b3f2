//! The `domicile.node.v1.RegionalNode` implementation. Each method is a thin gRPC adapter over a
//! domain operation: it converts the request into domain values, calls the operation on
//! [`NodeService`] and renders its result; a [`NodeError`] becomes a status in one place
//! (`crate::error`). The operations take and return domain types only, so another entry (consent
//! signals from HTTP headers, say) can call them as they are. Per capability, `<capability>/mod.rs`
//! holds the operations and their domain types, and `<capability>/wire.rs` the adapters with the
//! inbound and outbound conversions side by side:
//!
//! - `identity`: registration, merge, rectification (and the identifier claims they need);
//! - `consent`: the consent ledger;
//! - `decide`: decisions, one and in batches;
//! - `rights`: export, erasure, restriction, the rights requests' bookkeeping;
//! - `context`: interactions and the warm hand-off context;
//! - `follow`: change events (Watch), the link snapshot and the node's info;
//! - `claims`: this node as the arbiter of other regions' identifier claims;
//! - `repair`: operators' repair of identifier ownership (identifiers held twice, claims
//!   missing or orphaned).
//!
//! `unit.rs` is the unit of work every mutating operation ends with (durable, then published);
//! `wire.rs` what the adapters share (the caller, idempotency keys, text fields). What the
//! operations share is here: resolving subject keys, the subject's pack and the residency checks
//! on it, replays.

mod backup;
mod claims;
mod consent;
mod context;
mod decide;
mod follow;
mod identity;
mod import;
mod repair;
mod report;
pub(crate) mod rights;
mod signals;
#[cfg(test)]
mod tests;
mod unit;
mod wire;

use std::sync::Arc;

use domicile_policy::{Pack, PackMatch};
use domicile_proto::convert::SubjectKey;
use domicile_proto::pb::node::v1 as pb;
use domicile_proto::pb::node::v1::regional_node_server::RegionalNode;
use domicile_proto::raw::SubjectKeyRef;
use domicile_runtime::packs::{LoadedPacks, PackReloader};
use domicile_runtime::process::Shutdown;
use domicile_types::{Jurisdiction, LinkKey, RegionId, SubjectId, SubjectRef};
use tonic::{Request, Response, Status};

use crate::commit::{FlushFn, GroupCommit};
use crate::error::NodeError;
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
    durable: Arc<tokio::sync::watch::Sender<Option<u64>>>,
    /// The server's shutdown: open watch streams end when it begins (see `follow_events`).
    shutdown: Shutdown,
    commit: Arc<GroupCommit>,
    ownership: Arc<Ownership<S>>,
    /// How rights requests are verified (`rights/track.rs`).
    rights: crate::config::RightsConfig,
    /// One step of a tracked rights request at a time on this node (they are rare; this keeps
    /// a challenge from being answered twice at once).
    rights_lock: tokio::sync::Mutex<()>,
    /// Overdue rights requests per kind, as last counted (the `domicile.rights.overdue` gauge).
    overdue: Arc<rights::OverdueCounts>,
    /// Decision batches made again because a subject they read had just changed
    /// (`decide::decide_items`; the `domicile.decision_batches.redone` counter).
    redone: Arc<std::sync::atomic::AtomicU64>,
}

/// How often a node over a shared store ([`Store::shared`]) looks for changes other replicas
/// made: the bound on how late its watchers see them (a withdrawal through one replica reaches
/// every replica's watchers within it). Decisions never wait for it: they read the store.
/// How long a rights request's work (`in_progress`) is held by the call that began it before
/// another call may take it over (it was interrupted): longer than any export or erasure takes.
pub const RIGHTS_WORK_LEASE_SECS: i64 = 300;

pub const SHARED_STORE_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Raises `durable` to the last change event any writer of the shared store committed (every
/// committed event is durable there), until the service is gone. A failed read is retried at the
/// next tick: watchers then wait, they never see an event that is not committed.
async fn follow_other_writers<S: Store>(
    store: Arc<S>,
    durable: std::sync::Weak<tokio::sync::watch::Sender<Option<u64>>>,
) {
    let mut tick = tokio::time::interval(SHARED_STORE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Said once when reads start failing and once when they work again, not every tick.
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(durable) = durable.upgrade() else { return };
        match store.last_event().await {
            Ok(last) if failing => {
                failing = false;
                tracing::info!("the shared store answers again");
                raise(&durable, last);
            }
            Ok(last) => raise(&durable, last),
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read the shared store's last change; watchers wait");
            }
            Err(_) => {}
        }
    }
}

/// Raises `durable` to `last` (never lowers it).
fn raise(durable: &tokio::sync::watch::Sender<Option<u64>>, last: Option<u64>) {
    let Some(last) = last else { return };
    durable.send_if_modified(|current| match current {
        Some(c) if *c >= last => false,
        _ => {
            *current = Some(last);
            true
        }
    });
}

/// Who an operation is for, as the node's rules need to know it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    /// The caller's region; `None` when unknown, which every residency rule treats as outside.
    pub region: Option<RegionId>,
    /// A service of this region calling the node itself (not a gateway acting for a caller of
    /// any region): only it may be given personal data in full (exports, full context).
    pub in_region: bool,
}

impl<S: Store> NodeService<S> {
    pub async fn new(
        region: RegionId,
        store: Arc<S>,
        packs: Arc<PackReloader>,
        link_key: LinkKey,
        ownership: Arc<Ownership<S>>,
    ) -> Result<Self, StoreError> {
        // Everything recovered from disk is durable.
        let (durable, _) = tokio::sync::watch::channel(store.last_event().await?);
        // One flush (store and audit log) serves every write waiting when it starts.
        let flush: FlushFn = {
            let store = Arc::clone(&store);
            Arc::new(move || {
                let store = Arc::clone(&store);
                Box::pin(async move { store.flush().await.map_err(|e| e.to_string()) })
            })
        };
        let commit = GroupCommit::start(flush);
        let durable = Arc::new(durable);
        if store.shared() {
            tokio::spawn(follow_other_writers(Arc::clone(&store), Arc::downgrade(&durable)));
        }
        Ok(Self {
            region,
            store,
            packs,
            link_key,
            durable,
            shutdown: Shutdown::new(),
            commit,
            ownership,
            rights: crate::config::RightsConfig::default(),
            rights_lock: tokio::sync::Mutex::new(()),
            overdue: Arc::default(),
            redone: Arc::default(),
        })
    }

    /// Verifies rights requests as `config` says (default: `RightsConfig::default`).
    pub fn with_rights(mut self, config: crate::config::RightsConfig) -> Self {
        self.rights = config;
        self
    }

    /// The overdue rights requests per kind, as last counted (for the gauge).
    pub fn overdue_counts(&self) -> Arc<rights::OverdueCounts> {
        Arc::clone(&self.overdue)
    }

    /// How many decision batches were made again (for the counter).
    pub fn redone_decisions(&self) -> Arc<std::sync::atomic::AtomicU64> {
        Arc::clone(&self.redone)
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

    /// The pack of a subject's jurisdiction in `loaded` (a subdivision without a pack of its own:
    /// its country's, marked as such). No pack: fail closed, never a default (invariant 3). The
    /// one place a node looks a subject's pack up.
    fn pack_match<'p>(loaded: &'p LoadedPacks, jurisdiction: &Jurisdiction) -> Result<PackMatch<'p>, NodeError> {
        loaded
            .packs
            .lookup(jurisdiction)
            .ok_or(NodeError::Precondition("no policy pack covers the subject's jurisdiction"))
    }

    /// [`Self::pack_match`]'s pack.
    fn pack_of<'p>(loaded: &'p LoadedPacks, jurisdiction: &Jurisdiction) -> Result<&'p Pack, NodeError> {
        Self::pack_match(loaded, jurisdiction).map(|m| m.pack)
    }

    /// Whether a caller of `caller_region` is in a home region of `pack`'s subjects. A caller of
    /// this region always is: this node holds only subjects whose pack lists it.
    fn at_home(&self, pack: &Pack, caller_region: Option<&RegionId>) -> bool {
        caller_region == Some(&self.region) || pack.is_home(caller_region)
    }

    /// Refuses a capture for a subject of `pack` when it requires in-country collection and the
    /// caller is not of a home region (a caller of this region always is, see [`Self::at_home`]).
    fn check_collection(&self, pack: &Pack, caller_region: Option<&RegionId>) -> Result<(), NodeError> {
        if caller_region == Some(&self.region) {
            return Ok(());
        }
        Ok(pack.check_collection(caller_region)?)
    }

    /// [`Self::check_collection`] for a subject of `jurisdiction`, with the current packs.
    fn check_collection_for(
        &self,
        jurisdiction: &Jurisdiction,
        caller_region: Option<&RegionId>,
    ) -> Result<(), NodeError> {
        let loaded = self.packs.current();
        self.check_collection(Self::pack_of(&loaded, jurisdiction)?, caller_region)
    }

    fn subject_ref(&self, id: SubjectId) -> SubjectRef {
        SubjectRef { region: self.region.clone(), id }
    }

    /// Finds the subject a pseudonymous key names. A subject ref of another region is refused:
    /// this node can hold nothing about it.
    async fn resolve(&self, key: &SubjectKey) -> Result<SubjectId, NodeError> {
        self.resolve_meta(key).await.map(|(id, _)| id)
    }

    /// [`Self::resolve`], also returning the subject's metadata (read once).
    async fn resolve_meta(&self, key: &SubjectKey) -> Result<(SubjectId, SubjectMeta), NodeError> {
        // By link, the subject may be retired between the two reads (an unmerge or a merge that
        // moved the link committed in between, seen on PostgreSQL): the link is read again.
        let mut attempt = 0;
        loop {
            let (id, meta) = match key.as_key_ref() {
                SubjectKeyRef::Link(link) => self
                    .store
                    .meta_by_link(&link)
                    .await?
                    .ok_or(NodeError::NotFound("no subject holds this link in this region"))?,
                by_ref => {
                    let id = self.resolve_key(by_ref).await?;
                    (id, self.store.subject_meta(&id).await?)
                }
            };
            match meta {
                Some(meta) => return Ok((id, meta)),
                None if attempt < 2 && key.link().is_some() => attempt += 1,
                None => return Err(NodeError::NotFound("no such subject in this region")),
            }
        }
    }

    async fn resolve_key(&self, key: SubjectKeyRef<'_>) -> Result<SubjectId, NodeError> {
        Ok(match key {
            SubjectKeyRef::Link(link) => self
                .store
                .subject_by_link(&link)
                .await?
                .ok_or(NodeError::NotFound("no subject holds this link in this region"))?,
            SubjectKeyRef::Ref { region, id } => {
                if region != self.region.as_str() {
                    return Err(NodeError::Precondition("subject ref names another region"));
                }
                id
            }
        })
    }

    /// The result an earlier write with the same idempotency key left, if any.
    async fn replayed<T: serde::de::DeserializeOwned>(
        &self,
        tag: Option<&Idempotency>,
    ) -> Result<Option<T>, NodeError> {
        let Some(tag) = tag else { return Ok(None) };
        let replayed = idempotency::replayed(tag, self.store.replay(&tag.key).await?)?;
        if replayed.is_some() {
            self.settle_replay().await?;
        }
        Ok(replayed)
    }

    /// The result of an earlier write with the same idempotency key that a concurrent repeat
    /// found recorded ([`unit::Settled::Replayed`]).
    async fn replayed_after_race<T: serde::de::DeserializeOwned>(
        &self,
        tag: Option<&Idempotency>,
    ) -> Result<T, NodeError> {
        self.replayed(tag).await?.ok_or(NodeError::Store(StoreError::Replayed))
    }
}

/// An operation's result as a gRPC reply.
fn respond<T>(result: Result<T, NodeError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl<S: Store> RegionalNode for NodeService<S> {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        respond(identity::wire::register(self, request).await)
    }

    async fn register_batch(
        &self,
        request: Request<pb::RegisterBatchRequest>,
    ) -> Result<Response<pb::RegisterBatchResponse>, Status> {
        respond(identity::wire::register_batch(self, request).await)
    }

    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::RecordConsentResponse>, Status> {
        respond(consent::wire::record_consent(self, request).await)
    }

    async fn import_consent(
        &self,
        request: Request<pb::ImportConsentRequest>,
    ) -> Result<Response<pb::ImportConsentResponse>, Status> {
        respond(import::wire::import_consent(self, request).await)
    }

    async fn decide(&self, request: Request<pb::DecideRequest>) -> Result<Response<pb::DecideResponse>, Status> {
        respond(decide::wire::decide(self, request.into_inner()).await)
    }

    /// Served by [`NodeService::decide_batch_encoded`] on the wire; this typed form is for
    /// in-process callers (tests, benches) and decodes the same bytes.
    async fn decide_batch(
        &self,
        request: Request<pb::DecideBatchRequest>,
    ) -> Result<Response<pb::DecideBatchResponse>, Status> {
        respond(decide::wire::decide_typed_batch(self, request.into_inner()).await)
    }

    type ListLinksStream = follow::wire::LinkStream;

    async fn list_links(
        &self,
        request: Request<pb::ListLinksRequest>,
    ) -> Result<Response<Self::ListLinksStream>, Status> {
        Ok(Response::new(follow::wire::list_links(self, request.into_inner())))
    }

    async fn info(&self, _request: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        respond(follow::wire::info(self).await)
    }

    async fn consent_history(
        &self,
        request: Request<pb::ConsentHistoryRequest>,
    ) -> Result<Response<pb::ConsentHistoryResponse>, Status> {
        respond(consent::wire::consent_history(self, request).await)
    }

    async fn export(&self, request: Request<pb::ExportRequest>) -> Result<Response<pb::ExportResponse>, Status> {
        respond(rights::wire::export(self, request).await)
    }

    async fn erase(&self, request: Request<pb::EraseRequest>) -> Result<Response<pb::EraseResponse>, Status> {
        respond(rights::wire::erase(self, request).await)
    }

    type WatchStream = follow::wire::EventStream;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(follow::wire::watch(self, request.into_inner())))
    }

    async fn merge(&self, request: Request<pb::MergeRequest>) -> Result<Response<pb::MergeResponse>, Status> {
        respond(identity::wire::merge(self, request).await)
    }

    async fn unmerge(&self, request: Request<pb::UnmergeRequest>) -> Result<Response<pb::UnmergeResponse>, Status> {
        respond(identity::wire::unmerge(self, request).await)
    }

    async fn record_interaction(
        &self,
        request: Request<pb::RecordInteractionRequest>,
    ) -> Result<Response<pb::RecordInteractionResponse>, Status> {
        respond(context::wire::record_interaction(self, request).await)
    }

    async fn get_context(
        &self,
        request: Request<pb::GetContextRequest>,
    ) -> Result<Response<pb::ContextResponse>, Status> {
        respond(context::wire::get_context(self, request).await)
    }

    async fn rectify(&self, request: Request<pb::RectifyRequest>) -> Result<Response<pb::RectifyResponse>, Status> {
        respond(identity::wire::rectify(self, request).await)
    }

    async fn restrict(&self, request: Request<pb::RestrictRequest>) -> Result<Response<pb::RestrictResponse>, Status> {
        respond(rights::wire::restrict(self, request).await)
    }

    async fn list_rights_requests(
        &self,
        request: Request<pb::ListRightsRequestsRequest>,
    ) -> Result<Response<pb::ListRightsRequestsResponse>, Status> {
        respond(rights::wire::list_rights_requests(self, request.into_inner()).await)
    }

    async fn open_rights_request(
        &self,
        request: Request<pb::OpenRightsRequestRequest>,
    ) -> Result<Response<pb::OpenRightsRequestResponse>, Status> {
        respond(rights::track_wire::open(self, request).await)
    }

    async fn verify_rights_request(
        &self,
        request: Request<pb::VerifyRightsRequestRequest>,
    ) -> Result<Response<pb::VerifyRightsRequestResponse>, Status> {
        respond(rights::track_wire::verify(self, request.into_inner()).await)
    }

    async fn get_rights_request(
        &self,
        request: Request<pb::GetRightsRequestRequest>,
    ) -> Result<Response<pb::GetRightsRequestResponse>, Status> {
        respond(rights::track_wire::get(self, request.into_inner()).await)
    }

    async fn extend_rights_request(
        &self,
        request: Request<pb::ExtendRightsRequestRequest>,
    ) -> Result<Response<pb::ExtendRightsRequestResponse>, Status> {
        respond(rights::track_wire::extend(self, request.into_inner()).await)
    }

    async fn list_overdue_rights_requests(
        &self,
        request: Request<pb::ListOverdueRightsRequestsRequest>,
    ) -> Result<Response<pb::ListOverdueRightsRequestsResponse>, Status> {
        respond(rights::track_wire::overdue(self, request.into_inner()).await)
    }

    async fn read_challenge_outbox(
        &self,
        request: Request<pb::ReadChallengeOutboxRequest>,
    ) -> Result<Response<pb::ReadChallengeOutboxResponse>, Status> {
        respond(rights::track_wire::read_outbox(self, request.into_inner()).await)
    }

    async fn ack_challenge_outbox(
        &self,
        request: Request<pb::AckChallengeOutboxRequest>,
    ) -> Result<Response<pb::AckChallengeOutboxResponse>, Status> {
        respond(rights::track_wire::ack_outbox(self, request.into_inner()).await)
    }

    async fn claim_links(
        &self,
        request: Request<pb::ClaimLinksRequest>,
    ) -> Result<Response<pb::ClaimLinksResponse>, Status> {
        respond(claims::wire::claim_links(self, request).await)
    }

    async fn release_links(
        &self,
        request: Request<pb::ReleaseLinksRequest>,
    ) -> Result<Response<pb::ReleaseLinksResponse>, Status> {
        respond(claims::wire::release_links(self, request).await)
    }

    async fn claims_of(&self, request: Request<pb::ClaimsOfRequest>) -> Result<Response<pb::ClaimsOfResponse>, Status> {
        respond(repair::wire::claims_of(self, request).await)
    }

    async fn record_signal(
        &self,
        request: Request<pb::RecordSignalRequest>,
    ) -> Result<Response<pb::RecordSignalResponse>, Status> {
        respond(signals::wire::record_signal(self, request).await)
    }

    type ConsentReportStream = report::ReportStream;

    async fn consent_report(
        &self,
        request: Request<pb::ConsentReportRequest>,
    ) -> Result<Response<Self::ConsentReportStream>, Status> {
        respond(report::consent_report(self, request))
    }

    type BackupStream = backup::BackupStream;

    async fn backup(&self, request: Request<pb::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        respond(backup::backup(self, request).await)
    }

    type ListClaimsStream = repair::wire::ClaimStream;

    async fn list_claims(
        &self,
        request: Request<pb::ListClaimsRequest>,
    ) -> Result<Response<Self::ListClaimsStream>, Status> {
        respond(repair::wire::list_claims(self, request))
    }

    async fn reassert_claims(
        &self,
        request: Request<pb::ReassertClaimsRequest>,
    ) -> Result<Response<pb::ReassertClaimsResponse>, Status> {
        respond(repair::wire::reassert_claims(self, request).await)
    }

    async fn drop_links(
        &self,
        request: Request<pb::DropLinksRequest>,
    ) -> Result<Response<pb::DropLinksResponse>, Status> {
        respond(repair::wire::drop_links(self, request).await)
    }

    async fn release_orphan_claims(
        &self,
        request: Request<pb::ReleaseOrphanClaimsRequest>,
    ) -> Result<Response<pb::ReleaseOrphanClaimsResponse>, Status> {
        respond(repair::wire::release_orphan_claims(self, request).await)
    }
}
