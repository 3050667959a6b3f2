//! The `domicile.gateway.v1.Domicile` implementation.
//!
//! Identifiers are turned into links here, in memory; apart from registration (which goes only
//! to the subject's home region), nodes receive links and subject refs only (invariant 2).

use std::sync::Arc;

use domicile_proto::convert::{self, FieldViolation};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::gateway::v1 as pb;
use domicile_proto::pb::gateway::v1::domicile_server::Domicile;
use domicile_proto::pb::node::v1 as node_pb;
use domicile_types::{Link, SubjectRef};
use prost::Message as _;
use tonic::{Request, Response, Status, Streaming};

use crate::directory::Update;
use crate::gateway::Gateway;

use crate::error::{invalid, malformed_subject_ref, no_decision, node_status};
use crate::node_client::writes::{WriteKey, write_status};

/// Longest interaction summary a node accepts; checked here too so an oversized payload is
/// refused before it is forwarded.
const MAX_SUMMARY: usize = 2048;

/// The generated server's half of the gateway: every method but the two decision methods the
/// route serves with encoded decisions (`route.rs`). Cheap to clone.
#[derive(Clone)]
pub struct GatewayService {
    gateway: Arc<Gateway>,
}

impl GatewayService {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

#[tonic::async_trait]
impl Domicile for GatewayService {
    type DecideStreamStream = tokio_stream::Empty<Result<pb::DecideStreamResult, Status>>;

    /// Never reached: `route::DecisionRoute` serves `DecideStream` (decisions forwarded
    /// encoded) before the generated server sees it.
    async fn decide_stream(
        &self,
        _request: Request<Streaming<pb::DecideStreamItem>>,
    ) -> Result<Response<Self::DecideStreamStream>, Status> {
        Err(Status::internal("DecideStream is served by its own route"))
    }

    type WatchStream = crate::watch::EventStream;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(crate::watch::watch(&self.gateway, &request.get_ref().resume_token)?))
    }

    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let caller = crate::auth::caller(&request)?;
        let req = request.into_inner();
        let jurisdiction = convert::jurisdiction("jurisdiction", &req.jurisdiction).map_err(invalid)?;
        let identifiers = convert::identifiers("identifiers", &req.identifiers).map_err(invalid)?;
        let home = self.gateway.registration_home(&caller, &jurisdiction)?;
        let key = WriteKey::new(&caller, &req.idempotency_key)?;
        let links: Vec<Link> = identifiers.iter().map(|id| self.gateway.link_key.link(id)).collect();
        self.gateway.refuse_links_held_elsewhere(&links, &home)?;
        let request = node_pb::RegisterRequest {
            jurisdiction: jurisdiction.to_string(),
            identifiers: identifiers.iter().map(convert::identifier_to_pb).collect(),
            caller_region: caller.region.to_string(),
            idempotency_key: key.for_node(),
        };
        let reply = self
            .gateway
            .nodes
            .write(&home, request, |mut node, request| async move { node.register(request).await })
            .await
            .map_err(|s| write_status(&home, s, &key))?
            .into_inner();
        let registered = self.gateway.registered(&home, &links, reply)?;
        tracing::info!(region = %home, %jurisdiction, created = registered.created, "subject registered");
        Ok(Response::new(registered))
    }

    async fn register_batch(
        &self,
        request: Request<pb::RegisterBatchRequest>,
    ) -> Result<Response<pb::RegisterBatchResponse>, Status> {
        let caller = crate::auth::caller(&request)?;
        crate::register_batch::register_batch(&self.gateway, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::RecordConsentResponse>, Status> {
        let caller = crate::auth::caller(&request)?;
        let req = request.into_inner();
        // Validate everything before routing, so bad input never reaches a node.
        convert::purpose("purpose", &req.purpose).map_err(invalid)?;
        convert::record_shape(&req.channels, req.evidence.as_ref()).map_err(invalid)?;
        convert::consent_action("action", req.action).map_err(invalid)?;
        if let Some(evidence) = &req.evidence {
            convert::evidence_token("evidence.notice_version", &evidence.notice_version).map_err(invalid)?;
            convert::evidence_token("evidence.source_system", &evidence.source_system).map_err(invalid)?;
        }
        let write = WriteKey::new(&caller, &req.idempotency_key)?;
        let (region, key) = self.gateway.capture_target(req.subject.as_ref())?;
        let reply = self
            .gateway
            .nodes
            .write(
                &region,
                node_pb::RecordConsentRequest {
                    subject: Some(key.to_pb()),
                    purpose: req.purpose,
                    channels: req.channels,
                    action: req.action,
                    evidence: req.evidence,
                    captured_at: req.captured_at,
                    expires_at: req.expires_at,
                    caller_region: caller.region.to_string(),
                    idempotency_key: write.for_node(),
                },
                |mut node, request| async move { node.record_consent(request).await },
            )
            .await
            .map_err(|s| write_status(&region, s, &write))?
            .into_inner();
        Ok(Response::new(pb::RecordConsentResponse {
            subject_ref: reply.subject_ref,
            sequence: reply.sequence,
            recorded_at: reply.recorded_at,
        }))
    }

    async fn import_consent(
        &self,
        request: Request<pb::ImportConsentRequest>,
    ) -> Result<Response<pb::ImportConsentResponse>, Status> {
        let caller = crate::auth::caller(&request)?;
        crate::import::import_consent(&self.gateway, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn record_signal(
        &self,
        request: Request<pb::RecordSignalRequest>,
    ) -> Result<Response<pb::RecordSignalResponse>, Status> {
        use pb::record_signal_request::Signal;
        let caller = crate::auth::caller(&request)?;
        let req = request.into_inner();
        // Decoded here too, so a malformed string never reaches a node; the error names the
        // segment or section and the bit offset, never the string.
        /// Longest signal string accepted (as the node: no GPP string comes near it).
        const MAX_SIGNAL_LEN: usize = 16 * 1024;
        let too_long =
            |field: &str| invalid(FieldViolation::new(field, format!("is longer than {MAX_SIGNAL_LEN} bytes")));
        let signal = match req.signal {
            None => return Err(invalid(FieldViolation::new("signal", "give one of `tcf`, `gpp`, `gpc`"))),
            Some(Signal::Tcf(text)) if text.len() > MAX_SIGNAL_LEN => return Err(too_long("tcf")),
            Some(Signal::Gpp(text)) if text.len() > MAX_SIGNAL_LEN => return Err(too_long("gpp")),
            Some(Signal::Tcf(text)) => {
                domicile_signals::tcf::decode(&text).map_err(|e| invalid(FieldViolation::new("tcf", e.to_string())))?;
                node_pb::record_signal_request::Signal::Tcf(text)
            }
            Some(Signal::Gpp(text)) => {
                domicile_signals::gpp::decode(&text).map_err(|e| invalid(FieldViolation::new("gpp", e.to_string())))?;
                node_pb::record_signal_request::Signal::Gpp(text)
            }
            Some(Signal::Gpc(true)) => node_pb::record_signal_request::Signal::Gpc(true),
            Some(Signal::Gpc(false)) => {
                return Err(invalid(FieldViolation::new("gpc", "only `true` (`Sec-GPC: 1`) is a signal")));
            }
        };
        convert::evidence_token("source_system", &req.source_system).map_err(invalid)?;
        let write = WriteKey::new(&caller, &req.idempotency_key)?;
        let (region, key) = self.gateway.capture_target(req.subject.as_ref())?;
        let reply = self
            .gateway
            .nodes
            .write(
                &region,
                node_pb::RecordSignalRequest {
                    subject: Some(key.to_pb()),
                    signal: Some(signal),
                    captured_at: req.captured_at,
                    source_system: req.source_system,
                    caller_region: caller.region.to_string(),
                    idempotency_key: write.for_node(),
                },
                |mut node, request| async move { node.record_signal(request).await },
            )
            .await
            .map_err(|s| write_status(&region, s, &write))?
            .into_inner();
        Ok(Response::new(pb::RecordSignalResponse {
            subject_ref: reply.subject_ref,
            recorded: reply.recorded,
            recorded_only: reply.recorded_only,
        }))
    }

    /// Served by `route::DecisionRoute` on the wire with the encoded decision; this typed form
    /// is for in-process callers and decodes the same bytes.
    async fn decide(&self, request: Request<pb::DecideRequest>) -> Result<Response<pb::DecideResponse>, Status> {
        let decision = crate::decide::decide(&self.gateway, request.into_inner()).await?;
        let decision = common::Decision::decode(decision).map_err(|_| no_decision())?;
        Ok(Response::new(pb::DecideResponse { decision: Some(decision) }))
    }

    async fn resolve(&self, request: Request<pb::ResolveRequest>) -> Result<Response<pb::ResolveResponse>, Status> {
        let req = request.into_inner();
        let identifier = convert::identifier("identifier", req.identifier.as_ref()).map_err(invalid)?;
        let link = self.gateway.link_key.link(&identifier);
        let subject = self.gateway.lookup(&link)?;
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
        let caller = crate::auth::caller(&request)?;
        let (region, key) = self.gateway.target(request.get_ref().subject.as_ref())?;
        // The node applies the subject's residency to the caller's region (a transfer, minimised).
        let node_request = node_pb::ConsentHistoryRequest {
            subject: Some(key.to_pb()),
            purpose: request.get_ref().purpose.clone(),
            caller_region: caller.region.to_string(),
        };
        let reply = self
            .gateway
            .nodes
            .client(&region)?
            .consent_history(node_request)
            .await
            .map_err(|s| node_status(&region, s))?
            .into_inner();
        Ok(Response::new(pb::ConsentHistoryResponse { subject_ref: reply.subject_ref, entries: reply.entries }))
    }

    async fn erase(&self, request: Request<pb::EraseRequest>) -> Result<Response<pb::EraseResponse>, Status> {
        let caller = crate::auth::caller(&request)?;
        let write = WriteKey::new(&caller, &request.get_ref().idempotency_key)?;
        let (region, key) = self.gateway.target(request.get_ref().subject.as_ref())?;
        crate::rights::override_by_operator(&caller, &request.get_ref().override_reason)?;
        let reply = self
            .gateway
            .nodes
            .write(
                &region,
                node_pb::EraseRequest {
                    subject: Some(key.to_pb()),
                    idempotency_key: write.for_node(),
                    // Checked at the node: a verified erasure request of the subject, or an
                    // operator's override (ARCHITECTURE.md, "Rights requests").
                    request_id: request.get_ref().request_id.clone(),
                    override_reason: request.get_ref().override_reason.clone(),
                },
                |mut node, request| async move { node.erase(request).await },
            )
            .await
            .map_err(|s| write_status(&region, s, &write))?
            .into_inner();
        // The node has erased; drop the links here at once so no later lookup finds the subject.
        // Other gateways learn it from the node's ERASED change event.
        let links: Vec<Link> = reply.links.iter().filter_map(|l| Link::parse(l).ok()).collect();
        if let Ok(erased) = SubjectRef::parse(&reply.subject_ref) {
            let update = Update::Unmap(&erased, &links);
            self.gateway.directory.apply_reply(&region, Some(reply.event_sequence), update);
        }
        tracing::info!(%region, links = links.len(), "subject erased");
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
        let (into_region, into_key) = self.gateway.target_field("into", req.into.as_ref())?;
        let (from_region, from_key) = self.gateway.target_field("from", req.from.as_ref())?;
        // Refused here, before any node is called: each half's data stays in its own region.
        if into_region != from_region {
            return Err(Status::failed_precondition("merging subjects of different regions is not allowed"));
        }
        let reply = self
            .gateway
            .nodes
            .write(
                &into_region,
                node_pb::MergeRequest {
                    into: Some(into_key.to_pb()),
                    from: Some(from_key.to_pb()),
                    idempotency_key: write.for_node(),
                },
                |mut node, request| async move { node.merge(request).await },
            )
            .await
            .map_err(|s| write_status(&into_region, s, &write))?
            .into_inner();
        let into = SubjectRef::parse(&reply.subject_ref).map_err(|_| malformed_subject_ref())?;
        if into.region != into_region {
            return Err(Status::internal("home region returned a subject ref of another region"));
        }
        // The moved links name `into` from now on; other gateways learn it from the change events.
        // Only links that still name `from` here: a replayed reply must not undo a later unmerge.
        let links: Vec<Link> = reply.links.iter().filter_map(|l| Link::parse(l).ok()).collect();
        if let Ok(from) = SubjectRef::parse(&reply.merged_subject_ref) {
            let update = Update::Move { from: &from, to: &into, links: &links };
            self.gateway.directory.apply_reply(&into_region, Some(reply.event_sequence), update);
        }
        tracing::info!(region = %into_region, links = links.len(), "subjects merged");
        Ok(Response::new(pb::MergeResponse {
            subject_ref: reply.subject_ref,
            links_moved: reply.links_moved,
            consent_records_moved: reply.consent_records_moved,
            interactions_moved: reply.interactions_moved,
            home_region: into_region.to_string(),
        }))
    }

    async fn unmerge(&self, request: Request<pb::UnmergeRequest>) -> Result<Response<pb::UnmergeResponse>, Status> {
        let caller = crate::auth::caller(&request)?;
        crate::unmerge::unmerge(&self.gateway, &caller, request.into_inner()).await.map(Response::new)
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
        let (region, key) = self.gateway.capture_target(req.subject.as_ref())?;
        let reply = self
            .gateway
            .nodes
            .write(
                &region,
                node_pb::RecordInteractionRequest {
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
                },
                |mut node, request| async move { node.record_interaction(request).await },
            )
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
        let (region, key) = self.gateway.target(req.subject.as_ref())?;
        // Always minimised at the source: the gateway may be in another region than the subject,
        // and interaction content is personal data no pack lets leave its home region (invariant
        // 2). The full context is served only by the node, to callers in its region. The node,
        // which knows the subject's pack, applies its transfer rules to the caller's region.
        let reply = self
            .gateway
            .nodes
            .client(&region)?
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
            let loaded = self.gateway.packs.current();
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
        let (region, key) = self.gateway.target(req.subject.as_ref())?;
        crate::rights::override_by_operator(&caller, &req.override_reason)?;
        // As for registration: an identifier held in another region stays there, and its value
        // is not sent to this subject's region.
        let added: Vec<Link> = add.iter().map(|id| self.gateway.link_key.link(id)).collect();
        self.gateway.refuse_links_held_elsewhere(&added, &region)?;
        let reply = self
            .gateway
            .nodes
            .write(
                &region,
                node_pb::RectifyRequest {
                    subject: Some(key.to_pb()),
                    add_identifiers: add.iter().map(convert::identifier_to_pb).collect(),
                    remove_identifiers: remove.iter().map(convert::identifier_to_pb).collect(),
                    set_profile: req.set_profile,
                    remove_profile: req.remove_profile,
                    caller_region: caller.region.to_string(),
                    idempotency_key: write.for_node(),
                    request_id: req.request_id,
                    override_reason: req.override_reason,
                },
                |mut node, request| async move { node.rectify(request).await },
            )
            .await
            .map_err(|s| write_status(&region, s, &write))?
            .into_inner();
        let subject = SubjectRef::parse(&reply.subject_ref).map_err(|_| malformed_subject_ref())?;
        let parse = |links: &[String]| links.iter().filter_map(|l| Link::parse(l).ok()).collect::<Vec<Link>>();
        let (removed, added) = (parse(&reply.links_removed), parse(&reply.links_added));
        let directory = &self.gateway.directory;
        if directory.apply_reply(&region, Some(reply.event_sequence), Update::Unmap(&subject, &removed)) {
            directory.apply_reply(&region, Some(reply.event_sequence), Update::Map(&subject, &added));
        }
        tracing::info!(%region, added = reply.links_added.len(), removed = reply.links_removed.len(), "subject rectified");
        Ok(Response::new(pb::RectifyResponse {
            subject_ref: reply.subject_ref,
            links_added: reply.links_added.len() as u64,
            links_removed: reply.links_removed.len() as u64,
            rights_request: reply.rights_request,
        }))
    }

    async fn open_rights_request(
        &self,
        request: Request<pb::OpenRightsRequestRequest>,
    ) -> Result<Response<pb::OpenRightsRequestResponse>, Status> {
        crate::rights::open(&self.gateway, request).await.map(Response::new)
    }

    async fn verify_rights_request(
        &self,
        request: Request<pb::VerifyRightsRequestRequest>,
    ) -> Result<Response<pb::VerifyRightsRequestResponse>, Status> {
        crate::rights::verify(&self.gateway, request.into_inner()).await.map(Response::new)
    }

    async fn get_rights_request(
        &self,
        request: Request<pb::GetRightsRequestRequest>,
    ) -> Result<Response<pb::GetRightsRequestResponse>, Status> {
        crate::rights::get(&self.gateway, request.into_inner()).await.map(Response::new)
    }

    async fn extend_rights_request(
        &self,
        request: Request<pb::ExtendRightsRequestRequest>,
    ) -> Result<Response<pb::ExtendRightsRequestResponse>, Status> {
        crate::rights::extend(&self.gateway, request.into_inner()).await.map(Response::new)
    }

    async fn restrict(&self, request: Request<pb::RestrictRequest>) -> Result<Response<pb::RestrictResponse>, Status> {
        let caller = crate::auth::caller(&request)?;
        let req = request.into_inner();
        let write = WriteKey::new(&caller, &req.idempotency_key)?;
        let (region, key) = self.gateway.target(req.subject.as_ref())?;
        crate::rights::override_by_operator(&caller, &req.override_reason)?;
        let reply = self
            .gateway
            .nodes
            .write(
                &region,
                node_pb::RestrictRequest {
                    subject: Some(key.to_pb()),
                    restricted: req.restricted,
                    idempotency_key: write.for_node(),
                    request_id: req.request_id.clone(),
                    override_reason: req.override_reason.clone(),
                },
                |mut node, request| async move { node.restrict(request).await },
            )
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
