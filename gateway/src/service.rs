//! The `domicile.gateway.v1.Domicile` implementation.
//!
//! Identifiers are turned into links here, in memory; apart from registration (which goes only
//! to the subject's home region), nodes receive links and subject refs only (invariant 2).

use std::sync::Arc;

use domicile_policy::ResidencyError;
use domicile_proto::convert::{self, FieldViolation, SubjectKey};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::gateway::v1 as pb;
use domicile_proto::pb::gateway::v1::domicile_server::Domicile;
use domicile_proto::pb::gateway::v1::subject_selector::Selector;
use domicile_proto::pb::node::v1 as node_pb;
use domicile_proto::pb::node::v1::regional_node_client::RegionalNodeClient;
use domicile_proto::raw::{RawResult, SelectorRef};
use domicile_runtime::packs::PackReloader;
use domicile_runtime::process::Shutdown;
use domicile_types::{Link, LinkKey, RegionId, SubjectRef};
use hashbrown::HashMap;
use prost::Message as _;
use prost::bytes::Bytes;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::coalesce::Coalescer;
use crate::directory::{Directory, Miss};
use crate::stack::NodeChannel;
use crate::writes::{WriteKey, write_status};

pub type NodeClient = RegionalNodeClient<NodeChannel>;

/// Longest interaction summary a node accepts; checked here too so an oversized payload is
/// refused before it is forwarded.
const MAX_SUMMARY: usize = 2048;

/// Cheap to clone: streaming handlers hand a clone to their tasks.
#[derive(Clone)]
pub struct GatewayService {
    packs: Arc<PackReloader>,
    link_key: Arc<LinkKey>,
    directory: Arc<Directory>,
    /// Each region's node connection (clients are made per call: `NodeClient::new` is free).
    channels: Arc<HashMap<RegionId, NodeChannel>>,
    regions: Arc<Vec<RegionId>>,
    coalescer: Arc<Coalescer>,
    /// The server's shutdown: callers' watch streams end when it begins (`watch.rs`).
    shutdown: Shutdown,
}

fn invalid(v: FieldViolation) -> Status {
    v.into()
}

/// A node's answer, as the caller sees it. Node statuses are PII-free by construction and pass
/// through; transport failures become UNAVAILABLE for that region only (fail closed). A status the
/// node marked with its cause (`domicile_proto::CAUSE_METADATA`, e.g. an identifier's arbiter
/// is unreachable) passes through as it is, whatever its code.
pub(crate) fn node_status(region: &RegionId, status: Status) -> Status {
    if status.metadata().contains_key(domicile_proto::CAUSE_METADATA) {
        return status;
    }
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
            tracing::warn!(%region, code = ?status.code(), "home region unreachable");
            region_unavailable(region)
        }
        _ => status,
    }
}

/// What a caller sees for a region that cannot answer (never an allow).
pub(crate) fn region_unavailable(region: &RegionId) -> Status {
    Status::unavailable(format!("home region `{region}` is unavailable"))
}

/// A region this gateway was not configured with.
pub(crate) fn unknown_region(region: &RegionId) -> Status {
    Status::failed_precondition(format!("region `{region}` is not part of this deployment"))
}

impl GatewayService {
    pub fn new(
        packs: Arc<PackReloader>,
        link_key: LinkKey,
        directory: Arc<Directory>,
        channels: Arc<HashMap<RegionId, NodeChannel>>,
    ) -> Self {
        let mut regions: Vec<RegionId> = channels.keys().cloned().collect();
        regions.sort();
        let coalescer = Arc::new(Coalescer::start(&channels));
        Self {
            packs,
            link_key: Arc::new(link_key),
            directory,
            channels,
            regions: Arc::new(regions),
            coalescer,
            shutdown: Shutdown::new(),
        }
    }

    /// Ends every caller's watch stream when `shutdown` begins, so a graceful stop is not held
    /// up by the connections they keep open.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    pub(crate) fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// The deployment's regions, sorted.
    pub(crate) fn regions(&self) -> &[RegionId] {
        &self.regions
    }

    /// A unary decision, answered with the decision as the subject's home region encoded it
    /// (the gateway neither decodes nor alters it). Decisions for now are coalesced with
    /// concurrent ones into node batches; one at a stated time is a batch of one at that time.
    pub(crate) async fn decide_encoded(&self, req: pb::DecideRequest) -> Result<Bytes, Status> {
        convert::purpose("purpose", &req.purpose).map_err(invalid)?;
        convert::channel("channel", &req.channel).map_err(invalid)?;
        convert::timestamp("at", req.at.as_ref()).map_err(invalid)?;
        let (region, key) = self.target(req.subject.as_ref())?;
        let decision = if req.at.is_none() {
            self.coalescer.decide(&region, key.to_pb(), req.purpose, req.channel).await?
        } else {
            let item =
                node_pb::DecideItem { id: 0, subject: Some(key.to_pb()), purpose: req.purpose, channel: req.channel };
            let request = node_pb::DecideBatchRequest { items: vec![item], at: req.at };
            let reply = crate::raw::decide_batch(self.node_channel(&region)?, request)
                .await
                .map_err(|s| node_status(&region, s))?;
            match reply.outcomes.into_iter().next().and_then(|o| o.result) {
                Some(RawResult::Decision(decision)) if !decision.is_empty() => decision,
                Some(RawResult::Error(e)) => {
                    return Err(node_status(&region, Status::new(Code::from(e.code), e.message)));
                }
                // A reply without a decision is a broken node: never read it as an allow.
                _ => return Err(Status::internal("home region returned no decision")),
            }
        };
        if domicile_runtime::metrics::enabled() {
            // Counting by pack needs the pack: decoded only while metrics are exported.
            match common::Decision::decode(decision.clone()) {
                Ok(decoded) => crate::metrics::decided(&decoded),
                Err(_) => return Err(Status::internal("home region returned no decision")),
            }
        }
        Ok(decision)
    }

    pub(crate) fn node_channel(&self, region: &RegionId) -> Result<NodeChannel, Status> {
        self.channels.get(region).cloned().ok_or_else(|| unknown_region(region))
    }

    pub(crate) fn node(&self, region: &RegionId) -> Result<NodeClient, Status> {
        self.node_channel(region).map(NodeClient::new)
    }

    /// Refuses links this gateway knows to be held in a region other than `home`, before any
    /// identifier is sent there: its value is not sent to a second region. This is a courtesy,
    /// not the guarantee: the home node claims every new link at its arbiter before storing it
    /// (ARCHITECTURE.md "Identifier ownership"), so a link this gateway does not know yet (a
    /// region still loading, a registration a moment ago through another gateway) is refused
    /// there instead.
    fn refuse_links_held_elsewhere(&self, links: &[Link], home: &RegionId) -> Result<(), Status> {
        for link in links {
            match self.directory.lookup(link) {
                Ok(existing) if &existing.region != home => {
                    return Err(Status::failed_precondition(
                        "an identifier already belongs to a subject of another region",
                    ));
                }
                Ok(_) | Err(Miss::Unknown | Miss::Incomplete) => {}
            }
        }
        Ok(())
    }

    fn lookup(&self, link: &Link) -> Result<SubjectRef, Status> {
        self.directory.lookup(link).map_err(|miss| match miss {
            Miss::Unknown => Status::not_found("no subject is registered under this identifier or link"),
            Miss::Incomplete => Status::unavailable("the directory is still loading a region: retry shortly"),
        })
    }

    /// Finds the home region of the selected subject and the pseudonymous key to send there.
    pub(crate) fn target(&self, selector: Option<&pb::SubjectSelector>) -> Result<(RegionId, SubjectKey), Status> {
        self.target_field("subject", selector)
    }

    /// [`Self::target`] for a selector in field `field` (errors name it).
    pub(crate) fn target_field(
        &self,
        field: &str,
        selector: Option<&pb::SubjectSelector>,
    ) -> Result<(RegionId, SubjectKey), Status> {
        let selector = selector.and_then(|s| s.selector.as_ref()).map(|s| match s {
            Selector::Identifier(id) => SelectorRef::Identifier { kind: &id.kind, value: &id.value },
            Selector::Link(text) => SelectorRef::Link(text),
            Selector::SubjectRef(text) => SelectorRef::SubjectRef(text),
        });
        self.target_of(field, selector)
    }

    /// [`Self::target_field`] for a selector however it was read (`DecideStream` reads in place).
    pub(crate) fn target_of(
        &self,
        field: &str,
        selector: Option<SelectorRef<'_>>,
    ) -> Result<(RegionId, SubjectKey), Status> {
        let selector =
            selector.ok_or_else(|| FieldViolation::new(field, "an identifier, a link or a subject ref is required"))?;
        // Field paths for errors; spelled out for the common `subject` so the batch path does not
        // format one per item.
        let path = |leaf: &'static str| -> std::borrow::Cow<'static, str> {
            match (field, leaf) {
                ("subject", "identifier") => "subject.identifier".into(),
                ("subject", "link") => "subject.link".into(),
                ("subject", "subject_ref") => "subject.subject_ref".into(),
                _ => format!("{field}.{leaf}").into(),
            }
        };
        let subject = match selector {
            SelectorRef::Identifier { kind, value } => {
                let identifier = convert::identifier_parts(&path("identifier"), kind, value).map_err(invalid)?;
                self.lookup(&self.link_key.link(&identifier))?
            }
            SelectorRef::Link(text) => self.lookup(&convert::link(&path("link"), text).map_err(invalid)?)?,
            SelectorRef::SubjectRef(text) => {
                let subject = convert::subject_ref(&path("subject_ref"), text).map_err(invalid)?;
                if !self.channels.contains_key(&subject.region) {
                    return Err(Status::not_found("subject ref names a region this deployment does not have"));
                }
                subject
            }
        };
        Ok((subject.region.clone(), SubjectKey::Ref(subject)))
    }
}

#[tonic::async_trait]
impl Domicile for GatewayService {
    type DecideStreamStream = tokio_stream::Empty<Result<pb::DecideStreamResult, Status>>;

    /// Never reached: `raw::DecisionRoute` serves `DecideStream` (decisions forwarded
    /// encoded) before the generated server sees it.
    async fn decide_stream(
        &self,
        _request: Request<Streaming<pb::DecideStreamItem>>,
    ) -> Result<Response<Self::DecideStreamStream>, Status> {
        Err(Status::internal("DecideStream is served by its own route"))
    }

    type WatchStream = crate::watch::EventStream;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(crate::watch::watch(self, &request.get_ref().resume_token)?))
    }

    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let caller = crate::auth::caller(&request)?;
        let req = request.into_inner();
        let jurisdiction = convert::jurisdiction("jurisdiction", &req.jurisdiction).map_err(invalid)?;
        let identifiers = convert::identifiers("identifiers", &req.identifiers).map_err(invalid)?;
        let home = {
            let loaded = self.packs.current();
            let home = loaded.packs.home_region(&jurisdiction, self.regions.as_slice()).map_err(|e| match e {
                ResidencyError::NoPack => Status::failed_precondition("no policy pack covers this jurisdiction"),
                ResidencyError::NoAllowedRegion => {
                    Status::failed_precondition("no region of this deployment may hold subjects of this jurisdiction")
                }
            })?;
            // In-country collection is refused here, before any identifier is sent anywhere.
            if let Some(pack) = loaded.packs.get(&jurisdiction) {
                pack.check_collection(Some(&caller.region)).map_err(convert::residency_refused)?;
            }
            home
        };
        let key = WriteKey::new(&caller, &req.idempotency_key)?;
        let links: Vec<Link> = identifiers.iter().map(|id| self.link_key.link(id)).collect();
        self.refuse_links_held_elsewhere(&links, &home)?;
        let mut node = self.node(&home)?;
        let reply = node
            .register(node_pb::RegisterRequest {
                jurisdiction: jurisdiction.to_string(),
                identifiers: identifiers.iter().map(convert::identifier_to_pb).collect(),
                caller_region: caller.region.to_string(),
                idempotency_key: key.for_node(),
            })
            .await
            .map_err(|s| write_status(&home, s, &key))?
            .into_inner();
        let subject = SubjectRef::parse(&reply.subject_ref)
            .map_err(|_| Status::internal("home region returned a malformed subject ref"))?;
        let node_links: Vec<String> = links.iter().map(Link::to_string).collect();
        if reply.links != node_links || subject.region != home {
            // Gateway and node disagree on the link key or the region: a deployment fault that
            // would split identities, so refuse loudly.
            tracing::error!(region = %home, "link key or region mismatch between gateway and node");
            return Err(Status::internal("gateway and node disagree on links: check the deployment's link key"));
        }
        self.directory.insert(&subject, &links);
        tracing::info!(region = %home, %jurisdiction, created = reply.created, "subject registered");
        Ok(Response::new(pb::RegisterResponse {
            subject_ref: subject.to_string(),
            home_region: home.to_string(),
            links: node_links,
            created: reply.created,
        }))
    }

    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::RecordConsentResponse>, Status> {
        let caller = crate::auth::caller(&request)?;
        let req = request.into_inner();
        // Validate everything before routing, so bad input never reaches a node.
        convert::purpose("purpose", &req.purpose).map_err(invalid)?;
        convert::channels("channels", &req.channels).map_err(invalid)?;
        convert::consent_action("action", req.action).map_err(invalid)?;
        if let Some(evidence) = &req.evidence {
            convert::evidence_token("evidence.notice_version", &evidence.notice_version).map_err(invalid)?;
            convert::evidence_token("evidence.source_system", &evidence.source_system).map_err(invalid)?;
        }
        let write = WriteKey::new(&caller, &req.idempotency_key)?;
        let (region, key) = self.target(req.subject.as_ref())?;
        let reply = self
            .node(&region)?
            .record_consent(node_pb::RecordConsentRequest {
                subject: Some(key.to_pb()),
                purpose: req.purpose,
                channels: req.channels,
                action: req.action,
                evidence: req.evidence,
                captured_at: req.captured_at,
                expires_at: req.expires_at,
                caller_region: caller.region.to_string(),
                idempotency_key: write.for_node(),
            })
            .await
            .map_err(|s| write_status(&region, s, &write))?
            .into_inner();
        Ok(Response::new(pb::RecordConsentResponse {
            subject_ref: reply.subject_ref,
            sequence: reply.sequence,
            recorded_at: reply.recorded_at,
        }))
    }

    /// Served by [`GatewayService::decide_encoded`] on the wire (`raw.rs`); this typed form is
    /// for in-process callers and decodes the same bytes.
    async fn decide(&self, request: Request<pb::DecideRequest>) -> Result<Response<pb::DecideResponse>, Status> {
        let decision = self.decide_encoded(request.into_inner()).await?;
        let decision =
            common::Decision::decode(decision).map_err(|_| Status::internal("home region returned no decision"))?;
        Ok(Response::new(pb::DecideResponse { decision: Some(decision) }))
    }

    async fn resolve(&self, request: Request<pb::ResolveRequest>) -> Result<Response<pb::ResolveResponse>, Status> {
        let req = request.into_inner();
        let identifier = convert::identifier("identifier", req.identifier.as_ref()).map_err(invalid)?;
        let link = self.link_key.link(&identifier);
        let subject = self.lookup(&link)?;
        Ok(Response::new(pb::ResolveResponse {
            link: link.to_string(),
            home_region: subject.region.to_string(),
            subject_ref: subject.to_string(),
        }))
    }

    async fn consent_history(
        &self,
        request: Request<pb::ConsentHistoryRequest>,
    ) -> Result<Response<pb::ConsentHistoryResponse>, Status> {
        let (region, key) = self.target(request.get_ref().subject.as_ref())?;
        let reply = self
            .node(&region)?
            .consent_history(node_pb::ConsentHistoryRequest { subject: Some(key.to_pb()) })
            .await
            .map_err(|s| node_status(&region, s))?
            .into_inner();
        Ok(Response::new(pb::ConsentHistoryResponse { subject_ref: reply.subject_ref, entries: reply.entries }))
    }

    async fn erase(&self, request: Request<pb::EraseRequest>) -> Result<Response<pb::EraseResponse>, Status> {
        let caller = crate::auth::caller(&request)?;
        let write = WriteKey::new(&caller, &request.get_ref().idempotency_key)?;
        let (region, key) = self.target(request.get_ref().subject.as_ref())?;
        let reply = self
            .node(&region)?
            .erase(node_pb::EraseRequest { subject: Some(key.to_pb()), idempotency_key: write.for_node() })
            .await
            .map_err(|s| write_status(&region, s, &write))?
            .into_inner();
        // The node has erased; drop the links here at once so no later lookup finds the subject.
        // Other gateways learn it from the node's ERASED change event.
        let links: Vec<Link> = reply.links.iter().filter_map(|l| Link::parse(l).ok()).collect();
        let removed = self.directory.remove(&links);
        tracing::info!(%region, links = removed, "subject erased");
        Ok(Response::new(pb::EraseResponse {
            subject_ref: reply.subject_ref,
            links_removed: reply.links.len() as u64,
            consent_records_erased: reply.consent_records_erased,
            erased_at: reply.erased_at,
            rights_request: reply.rights_request,
        }))
    }

    async fn merge(&self, request: Request<pb::MergeRequest>) -> Result<Response<pb::MergeResponse>, Status> {
        let caller = crate::auth::caller(&request)?;
        let req = request.into_inner();
        let write = WriteKey::new(&caller, &req.idempotency_key)?;
        let (into_region, into_key) = self.target_field("into", req.into.as_ref())?;
        let (from_region, from_key) = self.target_field("from", req.from.as_ref())?;
        // Refused here, before any node is called: each half's data stays in its own region.
        if into_region != from_region {
            return Err(Status::failed_precondition("merging subjects of different regions is not allowed"));
        }
        let reply = self
            .node(&into_region)?
            .merge(node_pb::MergeRequest {
                into: Some(into_key.to_pb()),
                from: Some(from_key.to_pb()),
                idempotency_key: write.for_node(),
            })
            .await
            .map_err(|s| write_status(&into_region, s, &write))?
            .into_inner();
        let into = SubjectRef::parse(&reply.subject_ref)
            .map_err(|_| Status::internal("home region returned a malformed subject ref"))?;
        if into.region != into_region {
            return Err(Status::internal("home region returned a subject ref of another region"));
        }
        // The moved links name `into` from now on; other gateways learn it from the change events.
        let links: Vec<Link> = reply.links.iter().filter_map(|l| Link::parse(l).ok()).collect();
        self.directory.insert(&into, &links);
        tracing::info!(region = %into_region, links = links.len(), "subjects merged");
        Ok(Response::new(pb::MergeResponse {
            subject_ref: reply.subject_ref,
            links_moved: reply.links_moved,
            consent_records_moved: reply.consent_records_moved,
            interactions_moved: reply.interactions_moved,
            home_region: into_region.to_string(),
        }))
    }

    async fn record_interaction(
        &self,
        request: Request<pb::RecordInteractionRequest>,
    ) -> Result<Response<pb::RecordInteractionResponse>, Status> {
        let caller = crate::auth::caller(&request)?;
        let req = request.into_inner();
        // Cheap checks before routing; the node validates the rest (kind, intent, texts).
        convert::channel("channel", &req.channel).map_err(invalid)?;
        convert::timestamp("occurred_at", req.occurred_at.as_ref()).map_err(invalid)?;
        if req.summary.len() > MAX_SUMMARY {
            return Err(FieldViolation::new("summary", format!("is longer than {MAX_SUMMARY} bytes")).into());
        }
        let write = WriteKey::new(&caller, &req.idempotency_key)?;
        let (region, key) = self.target(req.subject.as_ref())?;
        let reply = self
            .node(&region)?
            .record_interaction(node_pb::RecordInteractionRequest {
                subject: Some(key.to_pb()),
                channel: req.channel,
                occurred_at: req.occurred_at,
                kind: req.kind,
                intent: req.intent,
                summary: req.summary,
                reference: req.reference,
                open: req.open,
                caller_region: caller.region.to_string(),
                idempotency_key: write.for_node(),
            })
            .await
            .map_err(|s| write_status(&region, s, &write))?
            .into_inner();
        Ok(Response::new(pb::RecordInteractionResponse {
            subject_ref: reply.subject_ref,
            sequence: reply.sequence,
            recorded_at: reply.recorded_at,
        }))
    }

    async fn get_context(
        &self,
        request: Request<pb::GetContextRequest>,
    ) -> Result<Response<pb::GetContextResponse>, Status> {
        let caller = crate::auth::caller(&request)?;
        let req = request.into_inner();
        if !req.purpose.is_empty() {
            convert::purpose("purpose", &req.purpose).map_err(invalid)?;
        }
        let (region, key) = self.target(req.subject.as_ref())?;
        // Always minimised at the source: the gateway may be in another region than the subject,
        // and interaction content is personal data no pack lets leave its home region (invariant
        // 2). The full context is served only by the node, to callers in its region. The node,
        // which knows the subject's pack, applies its transfer rules to the caller's region.
        let reply = self
            .node(&region)?
            .get_context(node_pb::GetContextRequest {
                subject: Some(key.to_pb()),
                limit: req.limit,
                minimised: true,
                purpose: req.purpose,
                caller_region: caller.region.to_string(),
            })
            .await
            .map_err(|s| node_status(&region, s))?
            .into_inner();
        if !reply.minimised {
            tracing::error!(%region, "node ignored a minimised context request");
            return Err(Status::internal("home region returned a context that is not minimised"));
        }
        let strip = |mut i: common::Interaction| {
            i.summary.clear();
            i.reference.clear();
            i
        };
        // The same defence for the profile: only fields the named pack lets minimised context
        // carry (none if this gateway does not know the pack).
        let mut profile = reply.profile;
        {
            let loaded = self.packs.current();
            let allowed = reply.pack.as_ref().and_then(|p| loaded.packs.get_by_id(&p.id));
            profile.retain(|name, _| allowed.is_some_and(|p| p.residency().minimised_fields.contains(name)));
        }
        Ok(Response::new(pb::GetContextResponse {
            subject_ref: reply.subject_ref,
            latest_by_channel: reply.latest_by_channel.into_iter().map(strip).collect(),
            open_intents: reply.open_intents,
            recent: reply.recent.into_iter().map(strip).collect(),
            minimised: true,
            home_region: region.to_string(),
            profile,
            transfer: reply.transfer,
            pack: reply.pack,
        }))
    }

    async fn rectify(&self, request: Request<pb::RectifyRequest>) -> Result<Response<pb::RectifyResponse>, Status> {
        let caller = crate::auth::caller(&request)?;
        let req = request.into_inner();
        let normalise = |field: &str, pbs: &[common::Identifier]| {
            if pbs.is_empty() { Ok(Vec::new()) } else { convert::identifiers(field, pbs).map_err(invalid) }
        };
        let add = normalise("add_identifiers", &req.add_identifiers)?;
        let remove = normalise("remove_identifiers", &req.remove_identifiers)?;
        let write = WriteKey::new(&caller, &req.idempotency_key)?;
        let (region, key) = self.target(req.subject.as_ref())?;
        // As for registration: an identifier held in another region stays there, and its value
        // is not sent to this subject's region.
        let added: Vec<Link> = add.iter().map(|id| self.link_key.link(id)).collect();
        self.refuse_links_held_elsewhere(&added, &region)?;
        let reply = self
            .node(&region)?
            .rectify(node_pb::RectifyRequest {
                subject: Some(key.to_pb()),
                add_identifiers: add.iter().map(convert::identifier_to_pb).collect(),
                remove_identifiers: remove.iter().map(convert::identifier_to_pb).collect(),
                set_profile: req.set_profile,
                remove_profile: req.remove_profile,
                caller_region: caller.region.to_string(),
                idempotency_key: write.for_node(),
            })
            .await
            .map_err(|s| write_status(&region, s, &write))?
            .into_inner();
        let subject = SubjectRef::parse(&reply.subject_ref)
            .map_err(|_| Status::internal("home region returned a malformed subject ref"))?;
        let parse = |links: &[String]| links.iter().filter_map(|l| Link::parse(l).ok()).collect::<Vec<Link>>();
        self.directory.remove_subject_links(&subject, &parse(&reply.links_removed));
        self.directory.insert(&subject, &parse(&reply.links_added));
        tracing::info!(%region, added = reply.links_added.len(), removed = reply.links_removed.len(), "subject rectified");
        Ok(Response::new(pb::RectifyResponse {
            subject_ref: reply.subject_ref,
            links_added: reply.links_added.len() as u64,
            links_removed: reply.links_removed.len() as u64,
            rights_request: reply.rights_request,
        }))
    }

    async fn restrict(&self, request: Request<pb::RestrictRequest>) -> Result<Response<pb::RestrictResponse>, Status> {
        let caller = crate::auth::caller(&request)?;
        let req = request.into_inner();
        let write = WriteKey::new(&caller, &req.idempotency_key)?;
        let (region, key) = self.target(req.subject.as_ref())?;
        let reply = self
            .node(&region)?
            .restrict(node_pb::RestrictRequest {
                subject: Some(key.to_pb()),
                restricted: req.restricted,
                idempotency_key: write.for_node(),
            })
            .await
            .map_err(|s| write_status(&region, s, &write))?
            .into_inner();
        Ok(Response::new(pb::RestrictResponse {
            subject_ref: reply.subject_ref,
            restricted: reply.restricted,
            rights_request: reply.rights_request,
        }))
    }
}
