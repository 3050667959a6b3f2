//! The `domicile.node.v1.RegionalNode` implementation: convert at the edge, act on domain types.

use std::pin::Pin;
use std::sync::Arc;

use domicile_policy::{ConsentFact, DecisionInput, DecisionParts, Period};
use domicile_proto::convert::{self, FieldViolation, SubjectKey};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as pb;
use domicile_proto::pb::node::v1::regional_node_server::RegionalNode;
use domicile_proto::raw::{EncodedDecideBatch, RawDecideBatchRequest, SubjectKeyRef};
use domicile_runtime::packs::{LoadedPacks, PackReloader};
use domicile_runtime::process::{Shutdown, now_unix};
use domicile_types::{Channel, Jurisdiction, Link, LinkKey, Purpose, RegionId, SubjectId, SubjectRef};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::access::Requester;
use crate::audit::{AuditEvent, AuditLog, DecisionEntry, RequestId, RightsKind, RightsStatus, erasure_proof};
use crate::commit::{FlushFn, GroupCommit};
use crate::store::{
    Change, ChangeEvent, ConsentRecord, Evidence, Interaction, InteractionKind, NewConsent, NewInteraction,
    Rectification, RightsRequestRecord, Store, StoreError, SubjectMeta,
};

/// Captures may be stamped slightly ahead of this node's clock; beyond that they are a client bug.
const MAX_CLOCK_SKEW_SECS: i64 = 300;
const MAX_TEXT: usize = 256;
const DEFAULT_LINK_BATCH: usize = 4096;
/// At most this many threads scan links for one ListLinks call.
const MAX_LINK_SCAN_PARTS: usize = 4;
/// Bounds one batch call's work; gateways split audiences into batches of this size or less.
pub const MAX_BATCH_ITEMS: usize = 10_000;
const MAX_SUMMARY: usize = 2048;
const MAX_REFERENCE: usize = 128;
const MAX_INTENT: usize = 64;
const DEFAULT_CONTEXT: usize = 20;
const MAX_CONTEXT: usize = 100;
const MAX_PROFILE_FIELDS: usize = 64;
const MAX_PROFILE_NAME: usize = 64;
/// Used when the subject's pack names no rights deadline; the response says so.
const DEFAULT_RIGHTS_DEADLINE: Period = Period::Days(30);

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
    audit: Arc<AuditLog>,
    commit: Arc<GroupCommit>,
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
        StoreError::MergeJurisdictionMismatch => {
            Status::failed_precondition("merging subjects of different jurisdictions is not allowed")
        }
        StoreError::NotHeld => Status::failed_precondition("an identifier to remove does not belong to the subject"),
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

/// A change or decision that cannot be audited is refused, never served unaudited (invariant 5).
fn audit_unavailable(e: crate::audit::AuditError) -> Status {
    tracing::error!(error = %e, "audit log append failed");
    Status::unavailable("audit log unavailable")
}

fn invalid(v: FieldViolation) -> Status {
    v.into()
}

/// `[a-z0-9._-]{1,max}`: intents and profile field names are vocabulary, not free text.
fn token(field: &str, text: &str, max: usize) -> Result<String, FieldViolation> {
    if text.is_empty() || text.len() > max {
        return Err(FieldViolation::new(field, format!("must be 1-{max} bytes")));
    }
    if !text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)) {
        return Err(FieldViolation::new(field, "may contain only `a-z`, `0-9`, `.`, `_` and `-`"));
    }
    Ok(text.to_owned())
}

/// Free text such as an interaction summary: line breaks and tabs allowed, other controls not.
fn free_text(field: &str, text: &str, max: usize) -> Result<String, FieldViolation> {
    if text.len() > max {
        return Err(FieldViolation::new(field, format!("is longer than {max} bytes")));
    }
    if text.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Err(FieldViolation::new(field, "contains control characters"));
    }
    Ok(text.to_owned())
}

/// The warm hand-off view of an interaction log: the latest interaction per channel, intents
/// whose latest interaction is still open, and the `limit` most recent, all newest first.
/// "Latest" is by occurrence time (then recording order), so late-recorded entries sort right.
fn context_of(mut log: Vec<Interaction>, limit: usize) -> (Vec<Interaction>, Vec<String>, Vec<Interaction>) {
    log.sort_by_key(|i| std::cmp::Reverse((i.occurred_at, i.sequence)));
    let mut latest_by_channel: Vec<Interaction> = Vec::new();
    let mut seen_intents: Vec<&str> = Vec::new();
    let mut open_intents = Vec::new();
    for interaction in &log {
        if !latest_by_channel.iter().any(|i| i.channel == interaction.channel) {
            latest_by_channel.push(interaction.clone());
        }
        if !seen_intents.contains(&interaction.intent.as_str()) {
            seen_intents.push(&interaction.intent);
            if interaction.open {
                open_intents.push(interaction.intent.clone());
            }
        }
    }
    let recent = log.iter().take(limit).cloned().collect();
    (latest_by_channel, open_intents, recent)
}

impl<S: Store> NodeService<S> {
    pub fn new(
        region: RegionId,
        store: Arc<S>,
        packs: Arc<PackReloader>,
        link_key: LinkKey,
        audit: Arc<AuditLog>,
    ) -> Result<Self, StoreError> {
        // Everything recovered from disk is durable.
        let (durable, _) = tokio::sync::watch::channel(store.last_event()?);
        // One flush (store and audit log) serves every write waiting when it starts.
        let flush: FlushFn = {
            let (store, audit) = (Arc::clone(&store), Arc::clone(&audit));
            Arc::new(move || {
                let (store, audit) = (Arc::clone(&store), Arc::clone(&audit));
                Box::pin(async move {
                    let synced = tokio::task::spawn_blocking(move || audit.sync());
                    store.flush().await.map_err(|e| e.to_string())?;
                    match synced.await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                })
            })
        };
        let commit = GroupCommit::start(flush);
        Ok(Self { region, store, packs, link_key, durable, shutdown: Shutdown::new(), audit, commit })
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

    /// Records an audit entry. A change or decision that cannot be audited is refused
    /// (invariant 5), never served unaudited.
    fn audit(&self, event: AuditEvent, subject: SubjectId) -> Result<(), Status> {
        self.audit.append(event, Some(&self.subject_ref(subject)), now_unix()).map(|_| ()).map_err(audit_unavailable)
    }

    /// Makes the store and the audit log durable: the point after which a write may be
    /// acknowledged (invariant 7).
    async fn make_durable(&self) -> Result<(), Status> {
        self.commit.commit().await.map_err(|e| {
            tracing::error!(error = %e, "write could not be made durable");
            Status::unavailable("storage unavailable")
        })
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

    /// A completed rights request with its deadline from the subject's pack (or the default,
    /// named as such in `deadline_basis`).
    fn rights_request(
        &self,
        jurisdiction: &Jurisdiction,
        kind: RightsKind,
        now: i64,
    ) -> Result<RightsRequestRecord, Status> {
        let id = domicile_runtime::process::random_bytes::<16>()
            .map_err(|_| Status::unavailable("random source unavailable"))?;
        let loaded = self.packs.current();
        let pack = loaded.packs.get(jurisdiction);
        let (deadline_at, deadline_basis) = match pack.and_then(|p| p.rights().deadline.map(|d| (p, d))) {
            Some((pack, period)) => (period.after(now), format!("pack {}@{}: {period}", pack.id(), pack.version())),
            None => (
                DEFAULT_RIGHTS_DEADLINE.after(now),
                format!("default: {DEFAULT_RIGHTS_DEADLINE} (the subject's pack sets no rights deadline)"),
            ),
        };
        Ok(RightsRequestRecord {
            request_id: RequestId::from_bytes(id).to_string(),
            kind: kind.as_str().to_owned(),
            received_at: now,
            deadline_at,
            status: RightsStatus::Completed.as_str().to_owned(),
            deadline_basis,
            completed_at: Some(now),
        })
    }

    /// Audits a rights request (the audit keeps it even after the subject is erased).
    fn audit_rights(&self, record: &RightsRequestRecord, kind: RightsKind, subject: SubjectId) -> Result<(), Status> {
        let request_id = RequestId::parse(&record.request_id).map_err(|_| Status::internal("malformed request id"))?;
        self.audit(
            AuditEvent::RightsRequest {
                kind,
                request_id,
                deadline_at: record.deadline_at,
                status: RightsStatus::Completed,
            },
            subject,
        )
    }

    /// Records, audits and (with the caller's `make_durable`) keeps a rights request.
    fn book_rights(&self, subject: SubjectId, kind: RightsKind, now: i64) -> Result<RightsRequestRecord, Status> {
        let meta = self
            .store
            .subject_meta(&subject)
            .map_err(store_status)?
            .ok_or_else(|| store_status(StoreError::NotFound))?;
        let record = self.rights_request(&meta.jurisdiction, kind, now)?;
        self.store.append_rights_request(&subject, &record).map_err(store_status)?;
        self.audit_rights(&record, kind, subject)?;
        Ok(record)
    }

    fn rights_to_pb(record: &RightsRequestRecord) -> common::RightsRequest {
        common::RightsRequest {
            request_id: record.request_id.clone(),
            kind: record.kind.clone(),
            received_at: Some(convert::to_timestamp(record.received_at)),
            deadline_at: Some(convert::to_timestamp(record.deadline_at)),
            status: record.status.clone(),
            deadline_basis: record.deadline_basis.clone(),
            completed_at: record.completed_at.map(convert::to_timestamp),
        }
    }

    fn interaction_to_pb(interaction: &Interaction, minimised: bool) -> common::Interaction {
        common::Interaction {
            sequence: interaction.sequence,
            channel: interaction.channel.to_string(),
            occurred_at: Some(convert::to_timestamp(interaction.occurred_at)),
            recorded_at: Some(convert::to_timestamp(interaction.recorded_at)),
            kind: interaction.kind.as_str().to_owned(),
            intent: interaction.intent.clone(),
            summary: if minimised { String::new() } else { interaction.summary.clone() },
            reference: if minimised { String::new() } else { interaction.reference.clone() },
            open: interaction.open,
        }
    }

    /// The region of the caller a request is for: this node's own for a caller of its region;
    /// for a gateway, the region it states (`stated`, from the caller's certificate or token);
    /// `None` when unknown (a gateway that states none, or an in-process call), which every
    /// residency rule that depends on it treats as "outside".
    fn caller_region<T>(&self, request: &Request<T>, stated: &str) -> Result<Option<RegionId>, Status> {
        Ok(match Requester::of(request) {
            Some(Requester::InRegion) => Some(self.region.clone()),
            Some(Requester::Gateway) if !stated.is_empty() => {
                Some(RegionId::parse(stated).map_err(|_| FieldViolation::new("caller_region", "is not a region id"))?)
            }
            Some(Requester::Gateway) | None => None,
        })
    }

    /// Refuses a capture for a subject of `jurisdiction` when its pack requires in-country
    /// collection and the caller is not of a home region. A caller of this region always is
    /// (this node holds only subjects whose pack lists it).
    fn check_collection(&self, jurisdiction: &Jurisdiction, caller_region: Option<&RegionId>) -> Result<(), Status> {
        if caller_region == Some(&self.region) {
            return Ok(());
        }
        let loaded = self.packs.current();
        let pack = loaded
            .packs
            .get(jurisdiction)
            .ok_or_else(|| Status::failed_precondition("no policy pack covers the subject's jurisdiction"))?;
        pack.check_collection(caller_region).map_err(convert::residency_refused)
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
        let id = self.resolve_id(key)?;
        match self.store.subject_meta(&id).map_err(store_status)? {
            Some(meta) => Ok((id, meta)),
            None => Err(Status::not_found("no such subject in this region")),
        }
    }

    /// The subject id a key names, without checking the subject exists (a ref) yet.
    fn resolve_id(&self, key: &SubjectKey) -> Result<SubjectId, Status> {
        self.resolve_key(key.as_key_ref())
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

    /// One decision: the subject's pack (from `loaded`, the call's snapshot of the pack set, so a
    /// reload meanwhile cannot mix versions) evaluated against the current consent, borrowed from
    /// the pack. Not yet audited: the caller audits before answering.
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
        // No pack: fail closed with a status, never a default allow (invariant 3). A subdivision
        // without a pack of its own gets its country's, and the decision says so.
        let found = loaded
            .packs
            .lookup(&meta.jurisdiction)
            .ok_or_else(|| Status::failed_precondition("no policy pack covers the subject's jurisdiction"))?;
        let pack = found.pack;
        if meta.restricted {
            // Right to restriction: nothing is processed for the subject until lifted, whatever
            // consent says. Still audited and explainable like any decision.
            return Ok((subject, found.restricted_parts()));
        }
        let consent = current.map(|c| ConsentFact {
            state: c.state,
            captured_at_unix: c.captured_at,
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
        let audited = self.audit.append_decisions(&entries, now_unix()).map_err(audit_unavailable);
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
            Change::LinksRemoved => pb.kind = common::ChangeKind::LinksRemoved as i32,
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
        let caller_region = self.caller_region(&request, &request.get_ref().caller_region)?;
        let req = request.into_inner();
        let jurisdiction = convert::jurisdiction("jurisdiction", &req.jurisdiction).map_err(invalid)?;
        let identifiers = convert::identifiers("identifiers", &req.identifiers).map_err(invalid)?;
        // Defence in depth for residency (invariant 1): even a misrouted request cannot make this
        // node store a subject its pack does not allow here.
        let loaded = self.packs.current();
        let pack = loaded
            .packs
            .get(&jurisdiction)
            .ok_or_else(|| Status::failed_precondition("no policy pack covers this jurisdiction"))?;
        if !pack.home_regions().contains(&self.region) {
            return Err(Status::failed_precondition("this region may not hold subjects of this jurisdiction"));
        }
        pack.check_collection(caller_region.as_ref()).map_err(convert::residency_refused)?;
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
        let caller_region = self.caller_region(&request, &request.get_ref().caller_region)?;
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
        let (subject, meta) = self.resolve_meta(&key)?;
        self.check_collection(&meta.jurisdiction, caller_region.as_ref())?;
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
        let batch = self.decide_items(std::iter::once((0, Ok((key.as_key_ref(), purpose, channel)))), at);
        match decoded(&batch)?.outcomes.pop().and_then(|o| o.result) {
            Some(pb::decide_outcome::Result::Decision(decision)) => {
                Ok(Response::new(pb::DecideResponse { decision: Some(decision) }))
            }
            Some(pb::decide_outcome::Result::Error(e)) => Err(Status::new(tonic::Code::from(e.code), e.message)),
            None => Err(Status::internal("batch encoding failed")),
        }
    }

    /// Served by [`NodeService::decide_batch_encoded`] on the wire; this typed form is for
    /// in-process callers (tests, benches) and decodes the same bytes.
    async fn decide_batch(
        &self,
        request: Request<pb::DecideBatchRequest>,
    ) -> Result<Response<pb::DecideBatchResponse>, Status> {
        let req = request.into_inner();
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
        Ok(Response::new(decoded(&self.decide_items(items, at))?))
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
        // A cold node pages its links tree in from disk as it goes; that dominates a gateway's
        // cold start, so the key space is split into parts scanned side by side. Batches of
        // different parts interleave; each holds links in order and parts do not overlap.
        let parts = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_LINK_SCAN_PARTS);
        let (tx, rx) = tokio::sync::mpsc::channel(2 * parts);
        let region = self.region.to_string();
        // Read before iterating: every durable event up to here is already in the links tree.
        let as_of_sequence = *self.durable.borrow();
        for first_bytes in link_scan_parts(parts) {
            let (store, tx, region) = (Arc::clone(&self.store), tx.clone(), region.clone());
            // sled iteration blocks; keep it off the async workers.
            tokio::task::spawn_blocking(move || {
                let mut batch = Vec::with_capacity(batch_size);
                for item in store.links(first_bytes) {
                    match item {
                        Ok((link, subject)) => {
                            batch.push(pb::LinkEntry {
                                link: link.as_bytes().to_vec(),
                                subject_id: subject.as_bytes().to_vec(),
                            });
                            if batch.len() == batch_size {
                                let entries = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
                                let batch = pb::LinkBatch { region: region.clone(), entries, as_of_sequence };
                                if tx.blocking_send(Ok(batch)).is_err() {
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
                    let _ = tx.blocking_send(Ok(pb::LinkBatch { region, entries: batch, as_of_sequence }));
                }
            });
        }
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn info(&self, _request: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        let (subjects, links) = self.store.counts().map_err(store_status)?;
        let loaded = self.packs.current();
        Ok(Response::new(pb::InfoResponse {
            region: self.region.to_string(),
            packs_content_hash: loaded.content_hash.clone(),
            packs_reload_error: self.packs.last_error().unwrap_or_default(),
            packs: loaded.packs.packs().map(|p| convert::pack_ref_to_pb(p.pack_ref())).collect(),
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
        // Exports are delivered in the home region: a gateway serves callers of every region.
        if Requester::of(&request) != Some(Requester::InRegion) {
            return Err(Status::permission_denied(
                "exports are delivered in the home region: call this region's node as a service of the region",
            ));
        }
        let key = convert::subject_key("subject", request.get_ref().subject.as_ref()).map_err(invalid)?;
        let (subject, meta) = self.resolve_meta(&key)?;
        let record = self
            .store
            .subject_record(&subject)
            .map_err(store_status)?
            .ok_or_else(|| store_status(StoreError::NotFound))?;
        let history = self.store.consent_history(&subject).map_err(store_status)?;
        let now = now_unix();
        // Bookkeeping first, so the document lists this request too.
        let rights_request = self.book_rights(subject, RightsKind::Access, now)?;
        let interactions = self.store.interactions(&subject).map_err(store_status)?;
        let rights_requests = self.store.rights_requests(&subject).map_err(store_status)?;
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
            "interactions": interactions,
            "rights_requests": rights_requests,
            "generated_at": now,
        });
        let document =
            serde_json::to_vec_pretty(&document).map_err(|_| Status::internal("cannot encode the export"))?;
        self.make_durable().await?;
        tracing::info!(region = %self.region, "subject exported");
        Ok(Response::new(pb::ExportResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            document,
            generated_at: Some(convert::to_timestamp(now)),
            rights_request: Some(Self::rights_to_pb(&rights_request)),
        }))
    }

    async fn erase(&self, request: Request<pb::EraseRequest>) -> Result<Response<pb::EraseResponse>, Status> {
        let key = convert::subject_key("subject", request.get_ref().subject.as_ref()).map_err(invalid)?;
        let (subject, meta) = self.resolve_meta(&key)?;
        let now = now_unix();
        // Not stored with the subject (it is about to go): the audit log and the response keep it.
        let rights_request = self.rights_request(&meta.jurisdiction, RightsKind::Erasure, now)?;
        let erased = self.store.erase(&subject, now).map_err(store_status)?;
        self.audit_rights(&rights_request, RightsKind::Erasure, subject)?;
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
            rights_request: Some(Self::rights_to_pb(&rights_request)),
        }))
    }

    type WatchStream = EventStream;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let mut after = request.into_inner().after_sequence;
        let mut durable = self.durable.subscribe();
        let store = Arc::clone(&self.store);
        let shutdown = self.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BATCH);
        let this = EventRenderer { region: self.region.clone() };
        tokio::spawn(async move {
            let follow = async {
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
                        // Wait for the next durable write; stop if the service goes away.
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
            };
            // A graceful stop waits for every connection to close, and a follower's stream never
            // ends by itself: it would hold the gateway's connection (and this process) open. So
            // it ends when shutdown begins, with UNAVAILABLE after the events already queued: the
            // follower reconnects (to this node once it is back) and resumes after its cursor.
            // A follower not reading gets no status (its queue is full), just the end of stream,
            // on which followers reconnect too.
            tokio::select! {
                biased;
                () = shutdown.begun() => {
                    let _ = tx.try_send(Err(Status::unavailable("node is shutting down")));
                }
                () = follow => {}
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn merge(&self, request: Request<pb::MergeRequest>) -> Result<Response<pb::MergeResponse>, Status> {
        let req = request.into_inner();
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
        let into = self.resolve(&into_key)?;
        let from = self.resolve(&from_key)?;
        if into == from {
            return Err(FieldViolation::new("from", "names the same subject as `into`").into());
        }
        let now = now_unix();
        let merged = self.store.merge(&into, &from, now).map_err(store_status)?;
        self.audit(AuditEvent::Merge { from: self.subject_ref(from), into: self.subject_ref(into) }, into)?;
        self.make_durable().await?;
        self.publish(merged.event);
        tracing::info!(region = %self.region, links = merged.links.len(), consent_records = merged.consent_records, interactions = merged.interactions, "subjects merged");
        Ok(Response::new(pb::MergeResponse {
            subject_ref: self.subject_ref(into).to_string(),
            links_moved: merged.links.len() as u64,
            consent_records_moved: merged.consent_records as u64,
            links: merged.links.iter().map(Link::to_string).collect(),
            interactions_moved: merged.interactions as u64,
            merged_subject_ref: self.subject_ref(from).to_string(),
        }))
    }

    async fn record_interaction(
        &self,
        request: Request<pb::RecordInteractionRequest>,
    ) -> Result<Response<pb::RecordInteractionResponse>, Status> {
        let caller_region = self.caller_region(&request, &request.get_ref().caller_region)?;
        let req = request.into_inner();
        let key = convert::subject_key("subject", req.subject.as_ref()).map_err(invalid)?;
        let channel = convert::channel("channel", &req.channel).map_err(invalid)?;
        let now = now_unix();
        let occurred_at = convert::timestamp("occurred_at", req.occurred_at.as_ref()).map_err(invalid)?.unwrap_or(now);
        if occurred_at > now + MAX_CLOCK_SKEW_SECS {
            return Err(FieldViolation::new("occurred_at", "is in the future").into());
        }
        let kind = InteractionKind::parse(&req.kind).ok_or_else(|| {
            let expected: Vec<&str> = InteractionKind::ALL.iter().map(|k| k.as_str()).collect();
            FieldViolation::new("kind", format!("expected one of {}", expected.join(", ")))
        })?;
        let intent = token("intent", &req.intent, MAX_INTENT).map_err(invalid)?;
        let summary = free_text("summary", &req.summary, MAX_SUMMARY).map_err(invalid)?;
        let reference = convert::short_text("reference", &req.reference, MAX_REFERENCE).map_err(invalid)?;
        let (subject, meta) = self.resolve_meta(&key)?;
        self.check_collection(&meta.jurisdiction, caller_region.as_ref())?;
        let stored = self
            .store
            .append_interaction(
                &subject,
                NewInteraction {
                    channel,
                    occurred_at,
                    recorded_at: now,
                    kind,
                    intent,
                    summary,
                    reference,
                    open: req.open,
                },
            )
            .map_err(store_status)?;
        self.make_durable().await?;
        tracing::info!(region = %self.region, %channel, kind = kind.as_str(), sequence = stored.sequence, "interaction recorded");
        Ok(Response::new(pb::RecordInteractionResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            sequence: stored.sequence,
            recorded_at: Some(convert::to_timestamp(now)),
        }))
    }

    async fn get_context(
        &self,
        request: Request<pb::GetContextRequest>,
    ) -> Result<Response<pb::ContextResponse>, Status> {
        let requester = Requester::of(&request);
        let caller_region = self.caller_region(&request, &request.get_ref().caller_region)?;
        let req = request.into_inner();
        let key = convert::subject_key("subject", req.subject.as_ref()).map_err(invalid)?;
        let limit = match req.limit as usize {
            0 => DEFAULT_CONTEXT,
            n if n > MAX_CONTEXT => {
                return Err(FieldViolation::new("limit", format!("at most {MAX_CONTEXT}")).into());
            }
            n => n,
        };
        // Full context (summaries, references, every profile field) only to callers of this
        // region; a gateway may be serving anyone.
        if !req.minimised && requester != Some(Requester::InRegion) {
            return Err(Status::permission_denied(
                "full context is served only to services of the home region: ask for the minimised form",
            ));
        }
        let purpose = if req.purpose.is_empty() {
            None
        } else {
            Some(convert::purpose("purpose", &req.purpose).map_err(invalid)?)
        };
        let (subject, meta) = self.resolve_meta(&key)?;
        let loaded = self.packs.current();
        let pack = loaded
            .packs
            .get(&meta.jurisdiction)
            .ok_or_else(|| Status::failed_precondition("no policy pack covers the subject's jurisdiction"))?;
        // Residency: a caller outside the home regions needs a transfer of the pack for its
        // region and purpose (invariant 2); it is audited before anything is read.
        let domestic = caller_region.as_ref().is_some_and(|r| *r == self.region || pack.home_regions().contains(r));
        let transfer = if domestic {
            None
        } else {
            let purpose = purpose.ok_or_else(|| {
                FieldViolation::new("purpose", "is required when the caller is outside the subject's home regions")
            })?;
            let transfer = pack.check_transfer(caller_region.as_ref(), purpose).map_err(convert::residency_refused)?;
            // `check_transfer` never permits an unknown region.
            if let (Some(transfer), Some(to)) = (transfer, caller_region.clone()) {
                self.audit(
                    AuditEvent::Transfer {
                        what: "context.minimised",
                        to,
                        purpose,
                        transfer: transfer.id.clone(),
                        pack: pack.pack_ref(),
                    },
                    subject,
                )?;
                self.make_durable().await?;
            }
            transfer
        };
        let minimised = req.minimised || transfer.is_some();
        let record = self
            .store
            .subject_record(&subject)
            .map_err(store_status)?
            .ok_or_else(|| store_status(StoreError::NotFound))?;
        let profile = if minimised {
            let named = &pack.residency().minimised_fields;
            record.profile.into_iter().filter(|(name, _)| named.contains(name)).collect()
        } else {
            record.profile.into_iter().collect()
        };
        let log = self.store.interactions(&subject).map_err(store_status)?;
        let (latest, open_intents, recent) = context_of(log, limit);
        if let Some(transfer) = transfer {
            tracing::info!(region = %self.region, transfer = %transfer.id, pack = %pack.pack_ref(), "minimised context transferred");
        }
        Ok(Response::new(pb::ContextResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            latest_by_channel: latest.iter().map(|i| Self::interaction_to_pb(i, minimised)).collect(),
            open_intents,
            recent: recent.iter().map(|i| Self::interaction_to_pb(i, minimised)).collect(),
            minimised,
            profile,
            transfer: transfer.map(|t| t.id.clone()).unwrap_or_default(),
            pack: Some(convert::pack_ref_to_pb(pack.pack_ref())),
        }))
    }

    async fn rectify(&self, request: Request<pb::RectifyRequest>) -> Result<Response<pb::RectifyResponse>, Status> {
        let caller_region = self.caller_region(&request, &request.get_ref().caller_region)?;
        let req = request.into_inner();
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
        let mut set_profile = std::collections::BTreeMap::new();
        for (name, value) in &req.set_profile {
            let name = token("set_profile.key", name, MAX_PROFILE_NAME).map_err(invalid)?;
            let value = convert::short_text("set_profile.value", value, MAX_TEXT).map_err(invalid)?;
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
        let (subject, meta) = self.resolve_meta(&key)?;
        // Adding identifiers or profile values collects personal data; removing does not.
        if !add.is_empty() || !set_profile.is_empty() {
            self.check_collection(&meta.jurisdiction, caller_region.as_ref())?;
        }
        let now = now_unix();
        let change = Rectification { add, remove, set_profile, remove_profile };
        let rectified = self.store.rectify(&subject, &change, now).map_err(store_status)?;
        let rights_request = self.book_rights(subject, RightsKind::Rectification, now)?;
        self.make_durable().await?;
        if let Some(event) = rectified.event {
            self.publish(event);
        }
        tracing::info!(region = %self.region, added = rectified.added.len(), removed = rectified.removed.len(), "subject rectified");
        Ok(Response::new(pb::RectifyResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            links_added: rectified.added.iter().map(Link::to_string).collect(),
            links_removed: rectified.removed.iter().map(Link::to_string).collect(),
            rights_request: Some(Self::rights_to_pb(&rights_request)),
        }))
    }

    async fn restrict(&self, request: Request<pb::RestrictRequest>) -> Result<Response<pb::RestrictResponse>, Status> {
        let req = request.into_inner();
        let key = convert::subject_key("subject", req.subject.as_ref()).map_err(invalid)?;
        let subject = self.resolve(&key)?;
        let now = now_unix();
        self.store.set_restricted(&subject, req.restricted).map_err(store_status)?;
        let rights_request = self.book_rights(subject, RightsKind::Restriction, now)?;
        // Acknowledged only once durable: every later decision reflects it.
        self.make_durable().await?;
        tracing::info!(region = %self.region, restricted = req.restricted, "restriction changed");
        Ok(Response::new(pb::RestrictResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            restricted: req.restricted,
            rights_request: Some(Self::rights_to_pb(&rights_request)),
        }))
    }

    async fn list_rights_requests(
        &self,
        request: Request<pb::ListRightsRequestsRequest>,
    ) -> Result<Response<pb::ListRightsRequestsResponse>, Status> {
        let key = convert::subject_key("subject", request.get_ref().subject.as_ref()).map_err(invalid)?;
        let subject = self.resolve(&key)?;
        let requests = self.store.rights_requests(&subject).map_err(store_status)?;
        Ok(Response::new(pb::ListRightsRequestsResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            requests: requests.iter().map(Self::rights_to_pb).collect(),
        }))
    }
}

/// Splits the first-byte space of links into `parts` contiguous, disjoint ranges covering it all.
fn link_scan_parts(parts: usize) -> Vec<std::ops::RangeInclusive<u8>> {
    let parts = parts.clamp(1, 256);
    (0..parts)
        .map(|i| {
            let first = (i * 256 / parts) as u8;
            let last = ((i + 1) * 256 / parts - 1) as u8;
            first..=last
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_scan_parts_cover_every_first_byte_once() {
        for parts in [1, 2, 3, 4, 7, 256, 1000] {
            let ranges = link_scan_parts(parts);
            assert_eq!(ranges.len(), parts.min(256));
            let covered: Vec<u8> = ranges.iter().flat_map(|r| r.clone()).collect();
            assert_eq!(covered, (0..=255).collect::<Vec<u8>>(), "{parts} parts");
        }
    }

    fn at(sequence: u64, channel: Channel, occurred_at: i64, intent: &str, open: bool) -> Interaction {
        Interaction {
            sequence,
            channel,
            occurred_at,
            recorded_at: occurred_at,
            kind: InteractionKind::Message,
            intent: intent.into(),
            summary: format!("summary {sequence}"),
            reference: String::new(),
            open,
        }
    }

    #[test]
    fn context_shows_latest_per_channel_and_open_intents() {
        let log = vec![
            at(1, Channel::Web, 10, "billing.dispute", true),
            at(2, Channel::Chat, 20, "billing.dispute", true),
            at(3, Channel::Chat, 30, "delivery.status", true),
            // Recorded last but happened before: sorts by occurrence.
            at(4, Channel::Voice, 15, "billing.dispute", false),
            at(5, Channel::Email, 25, "address.change", false),
        ];
        let (latest, open, recent) = context_of(log, 3);
        let seqs = |v: &[Interaction]| v.iter().map(|i| i.sequence).collect::<Vec<_>>();
        assert_eq!(seqs(&latest), [3, 5, 4, 1], "one per channel, newest first");
        // billing.dispute's latest (chat at 20) is open; address.change closed.
        assert_eq!(open, ["delivery.status", "billing.dispute"]);
        assert_eq!(seqs(&recent), [3, 5, 2]);
    }

    #[test]
    fn tokens_and_free_text_are_checked_without_echoing() {
        assert!(token("intent", "billing.dispute", 64).is_ok());
        for bad in ["", "Billing", "a b", &"x".repeat(65)] {
            let err = token("intent", bad, 64).unwrap_err().to_string();
            assert!(err.contains("intent"), "{err}");
            assert!(bad.is_empty() || !err.contains(bad), "{err}");
        }
        assert!(free_text("summary", "line one\nline two\ttab", 2048).is_ok());
        assert!(free_text("summary", "bell\u{7}", 2048).is_err());
        assert!(free_text("summary", &"x".repeat(2049), 2048).is_err());
    }
}
