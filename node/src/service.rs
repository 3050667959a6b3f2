//! The `domicile.node.v1.RegionalNode` implementation: convert at the edge, act on domain types.

use std::pin::Pin;
use std::sync::Arc;

use domicile_policy::{ConsentFact, DecisionInput, Effect, PackSet};
use domicile_proto::convert::{self, FieldViolation, SubjectKey};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as pb;
use domicile_proto::pb::node::v1::regional_node_server::RegionalNode;
use domicile_types::{Link, LinkKey, RegionId, SubjectId, SubjectRef};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::store::{Evidence, NewConsent, Store, StoreError};

/// Captures may be stamped slightly ahead of this node's clock; beyond that they are a client bug.
const MAX_CLOCK_SKEW_SECS: i64 = 300;
const MAX_TEXT: usize = 256;
const DEFAULT_LINK_BATCH: usize = 4096;

pub struct NodeService<S> {
    region: RegionId,
    store: Arc<S>,
    packs: Arc<PackSet>,
    link_key: LinkKey,
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Maps storage failures to statuses. Messages are generic: details go to the log, which holds
/// no personal data either (store errors never carry record contents).
fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Conflict => Status::failed_precondition(
            "identifiers belong to different subjects: merge the subjects before registering them together",
        ),
        StoreError::JurisdictionMismatch => {
            Status::failed_precondition("an identifier already belongs to a subject of another jurisdiction")
        }
        StoreError::Backend(detail) => {
            tracing::error!(%detail, "storage backend failure");
            Status::unavailable("storage unavailable")
        }
        StoreError::Corrupt(detail) => {
            tracing::error!(%detail, "corrupt record in storage");
            Status::internal("stored data is corrupt")
        }
    }
}

fn invalid(v: FieldViolation) -> Status {
    v.into()
}

impl<S: Store> NodeService<S> {
    pub fn new(region: RegionId, store: Arc<S>, packs: Arc<PackSet>, link_key: LinkKey) -> Self {
        Self { region, store, packs, link_key }
    }

    fn subject_ref(&self, id: SubjectId) -> SubjectRef {
        SubjectRef { region: self.region.clone(), id }
    }

    /// Finds the subject a pseudonymous key names. A subject ref of another region is refused:
    /// this node can hold nothing about it.
    fn resolve(&self, key: &SubjectKey) -> Result<SubjectId, Status> {
        match key {
            SubjectKey::Link(link) => self
                .store
                .subject_by_link(link)
                .map_err(store_status)?
                .ok_or_else(|| Status::not_found("no subject holds this link in this region")),
            SubjectKey::Ref(subject) => {
                if subject.region != self.region {
                    return Err(Status::failed_precondition("subject ref names another region"));
                }
                match self.store.subject(&subject.id).map_err(store_status)? {
                    Some(_) => Ok(subject.id),
                    None => Err(Status::not_found("no such subject in this region")),
                }
            }
        }
    }

    fn decision_to_pb(&self, subject: SubjectId, decision: &domicile_policy::Decision) -> common::Decision {
        common::Decision {
            effect: match decision.effect {
                Effect::Allow => common::Effect::Allow,
                Effect::Deny => common::Effect::Deny,
            } as i32,
            reasons: decision.reasons.clone(),
            pack: Some(common::PackRef { id: decision.pack.id.clone(), version: decision.pack.version.clone() }),
            obligations: decision
                .obligations
                .iter()
                .map(|o| common::Obligation { id: o.id.clone(), text: o.text.clone() })
                .collect(),
            explanation: decision.explanation.clone(),
            valid_until: decision.valid_until_unix.map(convert::to_timestamp),
            subject_ref: self.subject_ref(subject).to_string(),
            region: self.region.to_string(),
        }
    }
}

type LinkStream = Pin<Box<dyn Stream<Item = Result<pb::LinkBatch, Status>> + Send>>;

#[tonic::async_trait]
impl<S: Store> RegionalNode for NodeService<S> {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let req = request.into_inner();
        let jurisdiction = convert::jurisdiction("jurisdiction", &req.jurisdiction).map_err(invalid)?;
        let identifiers = convert::identifiers("identifiers", &req.identifiers).map_err(invalid)?;
        // Defence in depth for residency (invariant 1): even a misrouted request cannot make this
        // node store a subject its pack does not allow here.
        let pack = self
            .packs
            .get(&jurisdiction)
            .ok_or_else(|| Status::failed_precondition("no policy pack covers this jurisdiction"))?;
        if !pack.home_regions().contains(&self.region) {
            return Err(Status::failed_precondition("this region may not hold subjects of this jurisdiction"));
        }
        let linked: Vec<_> = identifiers
            .into_iter()
            .map(|id| {
                let link = self.link_key.link(&id);
                (id, link)
            })
            .collect();
        let new_subject = domicile_runtime::process::random_bytes::<16>()
            .map_err(|_| Status::unavailable("random source unavailable"))?;
        let registered = self
            .store
            .register(&jurisdiction, &linked, SubjectId::from_bytes(new_subject), now_unix())
            .map_err(store_status)?;
        self.store.flush().await.map_err(store_status)?;
        tracing::info!(region = %self.region, %jurisdiction, created = registered.created, identifiers = linked.len(), "subject registered");
        Ok(Response::new(pb::RegisterResponse {
            subject_ref: self.subject_ref(registered.subject).to_string(),
            links: registered.links.iter().map(Link::to_string).collect(),
            created: registered.created,
        }))
    }

    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::RecordConsentResponse>, Status> {
        let req = request.into_inner();
        let key = convert::subject_key("subject", req.subject.as_ref()).map_err(invalid)?;
        let purpose = convert::purpose("purpose", &req.purpose).map_err(invalid)?;
        let channels = convert::channels("channels", &req.channels).map_err(invalid)?;
        let action = convert::consent_action("action", req.action).map_err(invalid)?;
        let now = now_unix();
        let captured_at = convert::timestamp("captured_at", req.captured_at.as_ref()).map_err(invalid)?.unwrap_or(now);
        if captured_at > now + MAX_CLOCK_SKEW_SECS {
            return Err(FieldViolation::new("captured_at", "is in the future").into());
        }
        let expires_at = convert::timestamp("expires_at", req.expires_at.as_ref()).map_err(invalid)?;
        if expires_at.is_some_and(|e| e <= captured_at) {
            return Err(FieldViolation::new("expires_at", "must be after `captured_at`").into());
        }
        let evidence = match req.evidence {
            None => Evidence::default(),
            Some(e) => Evidence {
                notice_version: convert::short_text("evidence.notice_version", &e.notice_version, MAX_TEXT)
                    .map_err(invalid)?,
                capture_channel: if e.capture_channel.is_empty() {
                    None
                } else {
                    Some(convert::channel("evidence.capture_channel", &e.capture_channel).map_err(invalid)?)
                },
                source_system: convert::short_text("evidence.source_system", &e.source_system, MAX_TEXT)
                    .map_err(invalid)?,
                double_opt_in_confirmed: e.double_opt_in_confirmed,
            },
        };
        let subject = self.resolve(&key)?;
        let record = self
            .store
            .append_consent(
                &subject,
                NewConsent {
                    purpose,
                    channels,
                    state: action.resulting_state(),
                    captured_at,
                    recorded_at: now,
                    expires_at,
                    evidence,
                },
            )
            .map_err(store_status)?;
        // Acknowledge only once durable (invariant 7); every later decision reads this state.
        self.store.flush().await.map_err(store_status)?;
        tracing::info!(region = %self.region, %purpose, state = %record.state, sequence = record.sequence, "consent recorded");
        Ok(Response::new(pb::RecordConsentResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            sequence: record.sequence,
            recorded_at: Some(convert::to_timestamp(now)),
        }))
    }

    async fn decide(&self, request: Request<pb::DecideRequest>) -> Result<Response<pb::DecideResponse>, Status> {
        let req = request.into_inner();
        let key = convert::subject_key("subject", req.subject.as_ref()).map_err(invalid)?;
        let purpose = convert::purpose("purpose", &req.purpose).map_err(invalid)?;
        let channel = convert::channel("channel", &req.channel).map_err(invalid)?;
        let at = convert::timestamp("at", req.at.as_ref()).map_err(invalid)?.unwrap_or_else(now_unix);
        let subject = self.resolve(&key)?;
        let record = self
            .store
            .subject(&subject)
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found("no such subject in this region"))?;
        // No pack: fail closed with a status, never a default allow (invariant 3).
        let pack = self
            .packs
            .get(&record.jurisdiction)
            .ok_or_else(|| Status::failed_precondition("no policy pack covers the subject's jurisdiction"))?;
        let consent =
            self.store.current_consent(&subject, purpose, channel).map_err(store_status)?.map(|c| ConsentFact {
                state: c.state,
                captured_at_unix: c.captured_at,
                expires_at_unix: c.expires_at,
                double_opt_in_confirmed: c.double_opt_in_confirmed,
            });
        let decision = pack.decide(&DecisionInput { purpose, channel, at_unix: at, consent });
        tracing::debug!(region = %self.region, pack = %decision.pack, %purpose, %channel, effect = decision.effect.as_str(), reasons = ?decision.reasons, "decision");
        Ok(Response::new(pb::DecideResponse { decision: Some(self.decision_to_pb(subject, &decision)) }))
    }

    type ListLinksStream = LinkStream;

    async fn list_links(
        &self,
        request: Request<pb::ListLinksRequest>,
    ) -> Result<Response<Self::ListLinksStream>, Status> {
        let batch_size = match request.into_inner().batch_size {
            0 => DEFAULT_LINK_BATCH,
            n => (n as usize).min(65_536),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let store = Arc::clone(&self.store);
        let region = self.region.to_string();
        // sled iteration blocks; keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(batch_size);
            for item in store.links() {
                match item {
                    Ok((link, subject)) => {
                        batch.push(pb::LinkEntry {
                            link: link.as_bytes().to_vec(),
                            subject_id: subject.as_bytes().to_vec(),
                        });
                        if batch.len() == batch_size {
                            let entries = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
                            if tx.blocking_send(Ok(pb::LinkBatch { region: region.clone(), entries })).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(store_status(e)));
                        return;
                    }
                }
            }
            if !batch.is_empty() {
                let _ = tx.blocking_send(Ok(pb::LinkBatch { region, entries: batch }));
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn info(&self, _request: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        let (subjects, links) = self.store.counts().map_err(store_status)?;
        Ok(Response::new(pb::InfoResponse {
            region: self.region.to_string(),
            packs: self
                .packs
                .packs()
                .map(|p| {
                    let r = p.pack_ref();
                    common::PackRef { id: r.id, version: r.version }
                })
                .collect(),
            subjects,
            links,
        }))
    }
}
