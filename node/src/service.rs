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

use crate::audit::{AuditEvent, AuditLog, erasure_proof};
use crate::store::{Change, ChangeEvent, ConsentRecord, Evidence, NewConsent, Store, StoreError};

/// Captures may be stamped slightly ahead of this node's clock; beyond that they are a client bug.
const MAX_CLOCK_SKEW_SECS: i64 = 300;
const MAX_TEXT: usize = 256;
const DEFAULT_LINK_BATCH: usize = 4096;

pub struct NodeService<S> {
    region: RegionId,
    store: Arc<S>,
    packs: Arc<PackSet>,
    link_key: LinkKey,
    /// Highest change-event sequence known durable. Watchers deliver nothing beyond it, so a
    /// subscriber never sees a change that a crash could still undo.
    durable: tokio::sync::watch::Sender<Option<u64>>,
    audit: Arc<AuditLog>,
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
        StoreError::NotFound => Status::not_found("no such subject in this region"),
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
    pub fn new(
        region: RegionId,
        store: Arc<S>,
        packs: Arc<PackSet>,
        link_key: LinkKey,
        audit: Arc<AuditLog>,
    ) -> Result<Self, StoreError> {
        // Everything recovered from disk is durable.
        let (durable, _) = tokio::sync::watch::channel(store.last_event()?);
        Ok(Self { region, store, packs, link_key, durable, audit })
    }

    /// Records an audit entry. A change or decision that cannot be audited is refused
    /// (invariant 5), never served unaudited.
    fn audit(&self, event: AuditEvent, subject: SubjectId) -> Result<(), Status> {
        self.audit.append(event, Some(&self.subject_ref(subject)), now_unix()).map(|_| ()).map_err(|e| {
            tracing::error!(error = %e, "audit log append failed");
            Status::unavailable("audit log unavailable")
        })
    }

    /// Makes the store and the audit log durable: the point after which a write may be
    /// acknowledged (invariant 7).
    async fn make_durable(&self) -> Result<(), Status> {
        let audit = Arc::clone(&self.audit);
        let (store, audit) = tokio::join!(self.store.flush(), tokio::task::spawn_blocking(move || audit.sync()));
        store.map_err(store_status)?;
        match audit {
            Ok(Ok(())) => Ok(()),
            _ => {
                tracing::error!("audit log sync failed");
                Err(Status::unavailable("audit log unavailable"))
            }
        }
    }

    /// Marks events up to `sequence` durable and wakes watchers. Called after a flush.
    fn publish(&self, sequence: u64) {
        self.durable.send_if_modified(|current| match current {
            Some(c) if *c >= sequence => false,
            _ => {
                *current = Some(sequence);
                true
            }
        });
    }

    fn entry_to_pb(record: &ConsentRecord) -> common::ConsentEntry {
        common::ConsentEntry {
            sequence: record.sequence,
            purpose: record.purpose.to_string(),
            channels: record.channels.iter().map(ToString::to_string).collect(),
            state: record.state.to_string(),
            captured_at: Some(convert::to_timestamp(record.captured_at)),
            recorded_at: Some(convert::to_timestamp(record.recorded_at)),
            expires_at: record.expires_at.map(convert::to_timestamp),
            evidence: Some(common::Evidence {
                notice_version: record.evidence.notice_version.clone(),
                capture_channel: record.evidence.capture_channel.map(|c| c.to_string()).unwrap_or_default(),
                source_system: record.evidence.source_system.clone(),
                double_opt_in_confirmed: record.evidence.double_opt_in_confirmed,
            }),
        }
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
                match self.store.subject_meta(&subject.id).map_err(store_status)? {
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

/// Turns stored events into wire events; owned by each watch task.
struct EventRenderer {
    region: RegionId,
}

impl EventRenderer {
    fn render(&self, event: &ChangeEvent) -> common::ChangeEvent {
        let mut pb = common::ChangeEvent {
            sequence: event.sequence,
            at: Some(convert::to_timestamp(event.at)),
            region: self.region.to_string(),
            subject_ref: SubjectRef { region: self.region.clone(), id: event.subject }.to_string(),
            links: event.links.iter().map(Link::to_string).collect(),
            ..Default::default()
        };
        match &event.change {
            Change::Registered => pb.kind = common::ChangeKind::Registered as i32,
            Change::Erased => pb.kind = common::ChangeKind::Erased as i32,
            Change::Consent { purpose, channels, state } => {
                pb.kind = common::ChangeKind::Consent as i32;
                pb.purpose = purpose.to_string();
                pb.channels = channels.iter().map(ToString::to_string).collect();
                pb.state = state.to_string();
            }
        }
        pb
    }
}

type LinkStream = Pin<Box<dyn Stream<Item = Result<pb::LinkBatch, Status>> + Send>>;
type EventStream = Pin<Box<dyn Stream<Item = Result<common::ChangeEvent, Status>> + Send>>;

/// Events sent to one watcher per read of the store, bounding the work of one wake-up.
const WATCH_BATCH: usize = 1024;

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
        self.audit(
            AuditEvent::Registration { identifiers: linked.len(), jurisdiction: jurisdiction.clone() },
            registered.subject,
        )?;
        self.make_durable().await?;
        if let Some(event) = registered.event {
            self.publish(event);
        }
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
        let (record, event) = self
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
        self.audit(
            AuditEvent::Consent {
                purpose: record.purpose,
                channels: record.channels.clone(),
                state: record.state,
                sequence: record.sequence,
            },
            subject,
        )?;
        // Acknowledge only once durable (invariant 7); every later decision reads this state.
        self.make_durable().await?;
        self.publish(event);
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
        let meta = self
            .store
            .subject_meta(&subject)
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found("no such subject in this region"))?;
        // No pack: fail closed with a status, never a default allow (invariant 3).
        let pack = self
            .packs
            .get(&meta.jurisdiction)
            .ok_or_else(|| Status::failed_precondition("no policy pack covers the subject's jurisdiction"))?;
        let consent =
            self.store.current_consent(&subject, purpose, channel).map_err(store_status)?.map(|c| ConsentFact {
                state: c.state,
                captured_at_unix: c.captured_at,
                expires_at_unix: c.expires_at,
                double_opt_in_confirmed: c.double_opt_in_confirmed,
            });
        let decision = pack.decide(&DecisionInput { purpose, channel, at_unix: at, consent });
        self.audit(AuditEvent::decision(purpose, channel, &decision), subject)?;
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

    async fn consent_history(
        &self,
        request: Request<pb::ConsentHistoryRequest>,
    ) -> Result<Response<pb::ConsentHistoryResponse>, Status> {
        let key = convert::subject_key("subject", request.get_ref().subject.as_ref()).map_err(invalid)?;
        let subject = self.resolve(&key)?;
        let history = self.store.consent_history(&subject).map_err(store_status)?;
        Ok(Response::new(pb::ConsentHistoryResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            entries: history.iter().map(Self::entry_to_pb).collect(),
        }))
    }

    async fn export(&self, request: Request<pb::ExportRequest>) -> Result<Response<pb::ExportResponse>, Status> {
        let key = convert::subject_key("subject", request.get_ref().subject.as_ref()).map_err(invalid)?;
        let subject = self.resolve(&key)?;
        let meta = self
            .store
            .subject_meta(&subject)
            .map_err(store_status)?
            .ok_or_else(|| store_status(StoreError::NotFound))?;
        let record = self
            .store
            .subject_record(&subject)
            .map_err(store_status)?
            .ok_or_else(|| store_status(StoreError::NotFound))?;
        let history = self.store.consent_history(&subject).map_err(store_status)?;
        let now = now_unix();
        let document = serde_json::json!({
            "schema": "domicile.export.v1",
            "subject_ref": self.subject_ref(subject).to_string(),
            "region": self.region.to_string(),
            "jurisdiction": meta.jurisdiction.to_string(),
            "created_at": meta.created_at,
            "restricted": meta.restricted,
            "identifiers": record.identifiers.iter().map(|i| serde_json::json!({"kind": i.kind().as_str(), "value": i.expose_value()})).collect::<Vec<_>>(),
            "profile": record.profile,
            "consent": history,
            "generated_at": now,
        });
        let document =
            serde_json::to_vec_pretty(&document).map_err(|_| Status::internal("cannot encode the export"))?;
        tracing::info!(region = %self.region, "subject exported");
        Ok(Response::new(pb::ExportResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            document,
            generated_at: Some(convert::to_timestamp(now)),
        }))
    }

    async fn erase(&self, request: Request<pb::EraseRequest>) -> Result<Response<pb::EraseResponse>, Status> {
        let key = convert::subject_key("subject", request.get_ref().subject.as_ref()).map_err(invalid)?;
        let subject = self.resolve(&key)?;
        let now = now_unix();
        let erased = self.store.erase(&subject, now).map_err(store_status)?;
        // The audit keeps a PII-free proof: a digest an auditor holding the subject ref can check.
        let proof = erasure_proof(&self.subject_ref(subject), &erased.links, now);
        self.audit(AuditEvent::Erasure { links_removed: erased.links.len(), proof }, subject)?;
        self.make_durable().await?;
        self.publish(erased.event);
        tracing::info!(region = %self.region, links = erased.links.len(), consent_records = erased.consent_records, "subject erased");
        Ok(Response::new(pb::EraseResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            links: erased.links.iter().map(Link::to_string).collect(),
            consent_records_erased: erased.consent_records as u64,
            erased_at: Some(convert::to_timestamp(now)),
        }))
    }

    type WatchStream = EventStream;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let mut after = request.into_inner().after_sequence;
        let mut durable = self.durable.subscribe();
        let store = Arc::clone(&self.store);
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BATCH);
        let this = EventRenderer { region: self.region.clone() };
        tokio::spawn(async move {
            loop {
                let limit = *durable.borrow_and_update();
                let batch: Result<Vec<ChangeEvent>, StoreError> = store
                    .events_after(after)
                    .take_while(|e| match (e, limit) {
                        (Ok(e), Some(limit)) => e.sequence <= limit,
                        (Ok(_), None) => false,
                        (Err(_), _) => true,
                    })
                    .take(WATCH_BATCH)
                    .collect();
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(store_status(e))).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    // Wait for the next durable write; stop when the node shuts down.
                    tokio::select! {
                        changed = durable.changed() => if changed.is_err() { return },
                        () = tx.closed() => return,
                    }
                    continue;
                }
                for event in &batch {
                    after = Some(event.sequence);
                    if tx.send(Ok(this.render(event))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
