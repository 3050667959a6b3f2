//! The `domicile.gateway.v1.Domicile` implementation.
//!
//! Identifiers are turned into links here, in memory; apart from registration (which goes only
//! to the subject's home region), nodes receive links and subject refs only (invariant 2).

use std::sync::Arc;

use domicile_policy::{PackSet, ResidencyError};
use domicile_proto::convert::{self, FieldViolation, SubjectKey};
use domicile_proto::pb::gateway::v1 as pb;
use domicile_proto::pb::gateway::v1::domicile_server::Domicile;
use domicile_proto::pb::gateway::v1::subject_selector::Selector;
use domicile_proto::pb::node::v1 as node_pb;
use domicile_proto::pb::node::v1::regional_node_client::RegionalNodeClient;
use domicile_types::{Link, LinkKey, RegionId, SubjectRef};
use hashbrown::HashMap;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::directory::{Directory, Miss};

pub type NodeClient = RegionalNodeClient<Channel>;

pub struct GatewayService {
    packs: Arc<PackSet>,
    link_key: LinkKey,
    directory: Arc<Directory>,
    nodes: Arc<HashMap<RegionId, NodeClient>>,
    regions: Vec<RegionId>,
}

fn invalid(v: FieldViolation) -> Status {
    v.into()
}

/// A node's answer, as the caller sees it. Node statuses are PII-free by construction and pass
/// through; transport failures become UNAVAILABLE for that region only (fail closed).
fn node_status(region: &RegionId, status: Status) -> Status {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
            tracing::warn!(%region, code = ?status.code(), "home region unreachable");
            Status::unavailable(format!("home region `{region}` is unavailable"))
        }
        _ => status,
    }
}

impl GatewayService {
    pub fn new(
        packs: Arc<PackSet>,
        link_key: LinkKey,
        directory: Arc<Directory>,
        nodes: Arc<HashMap<RegionId, NodeClient>>,
    ) -> Self {
        let mut regions: Vec<RegionId> = nodes.keys().cloned().collect();
        regions.sort();
        Self { packs, link_key, directory, nodes, regions }
    }

    fn node(&self, region: &RegionId) -> Result<NodeClient, Status> {
        self.nodes
            .get(region)
            .cloned()
            .ok_or_else(|| Status::failed_precondition(format!("region `{region}` is not part of this deployment")))
    }

    fn lookup(&self, link: &Link) -> Result<SubjectRef, Status> {
        self.directory.lookup(link).map_err(|miss| match miss {
            Miss::Unknown => Status::not_found("no subject is registered under this identifier or link"),
            Miss::Incomplete => Status::unavailable("the directory is still loading a region: retry shortly"),
        })
    }

    /// Finds the home region of the selected subject and the pseudonymous key to send there.
    fn target(&self, selector: Option<&pb::SubjectSelector>) -> Result<(RegionId, SubjectKey), Status> {
        let selector = selector
            .and_then(|s| s.selector.as_ref())
            .ok_or_else(|| FieldViolation::new("subject", "an identifier, a link or a subject ref is required"))?;
        let subject = match selector {
            Selector::Identifier(id) => {
                let identifier = convert::identifier("subject.identifier", Some(id)).map_err(invalid)?;
                self.lookup(&self.link_key.link(&identifier))?
            }
            Selector::Link(text) => self.lookup(&convert::link("subject.link", text).map_err(invalid)?)?,
            Selector::SubjectRef(text) => {
                let subject = convert::subject_ref("subject.subject_ref", text).map_err(invalid)?;
                if !self.nodes.contains_key(&subject.region) {
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
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let req = request.into_inner();
        let jurisdiction = convert::jurisdiction("jurisdiction", &req.jurisdiction).map_err(invalid)?;
        let identifiers = convert::identifiers("identifiers", &req.identifiers).map_err(invalid)?;
        let home = self.packs.home_region(&jurisdiction, &self.regions).map_err(|e| match e {
            ResidencyError::NoPack => Status::failed_precondition("no policy pack covers this jurisdiction"),
            ResidencyError::NoAllowedRegion => {
                Status::failed_precondition("no region of this deployment may hold subjects of this jurisdiction")
            }
        })?;
        let links: Vec<Link> = identifiers.iter().map(|id| self.link_key.link(id)).collect();
        // Identity never spans regions: an identifier already held elsewhere stays there, and its
        // value is not sent to a second region.
        for link in &links {
            match self.directory.lookup(link) {
                Ok(existing) if existing.region != home => {
                    return Err(Status::failed_precondition(
                        "an identifier already belongs to a subject of another region",
                    ));
                }
                Ok(_) | Err(Miss::Unknown) => {}
                Err(Miss::Incomplete) => {
                    return Err(Status::unavailable("the directory is still loading a region: retry shortly"));
                }
            }
        }
        let mut node = self.node(&home)?;
        let reply = node
            .register(node_pb::RegisterRequest {
                jurisdiction: jurisdiction.to_string(),
                identifiers: identifiers.iter().map(convert::identifier_to_pb).collect(),
            })
            .await
            .map_err(|s| node_status(&home, s))?
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
        let req = request.into_inner();
        // Validate everything before routing, so bad input never reaches a node.
        convert::purpose("purpose", &req.purpose).map_err(invalid)?;
        convert::channels("channels", &req.channels).map_err(invalid)?;
        convert::consent_action("action", req.action).map_err(invalid)?;
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
            })
            .await
            .map_err(|s| node_status(&region, s))?
            .into_inner();
        Ok(Response::new(pb::RecordConsentResponse {
            subject_ref: reply.subject_ref,
            sequence: reply.sequence,
            recorded_at: reply.recorded_at,
        }))
    }

    async fn decide(&self, request: Request<pb::DecideRequest>) -> Result<Response<pb::DecideResponse>, Status> {
        let req = request.into_inner();
        convert::purpose("purpose", &req.purpose).map_err(invalid)?;
        convert::channel("channel", &req.channel).map_err(invalid)?;
        convert::timestamp("at", req.at.as_ref()).map_err(invalid)?;
        let (region, key) = self.target(req.subject.as_ref())?;
        let reply = self
            .node(&region)?
            .decide(node_pb::DecideRequest {
                subject: Some(key.to_pb()),
                purpose: req.purpose,
                channel: req.channel,
                at: req.at,
            })
            .await
            .map_err(|s| node_status(&region, s))?
            .into_inner();
        // A reply without a decision is a broken node: never read it as an allow.
        let decision = reply.decision.ok_or_else(|| Status::internal("home region returned no decision"))?;
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
        let (region, key) = self.target(request.get_ref().subject.as_ref())?;
        let reply = self
            .node(&region)?
            .erase(node_pb::EraseRequest { subject: Some(key.to_pb()) })
            .await
            .map_err(|s| node_status(&region, s))?
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
        }))
    }
}
