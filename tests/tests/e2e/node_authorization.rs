//! Authorization at the node's own door (invariant 10, issue 17 "Nodes ignore caller scopes"):
//! every method of `domicile.node.v1.RegionalNode` called directly, over mutual TLS, by each kind
//! of certificate the cluster CA issues. The expected table is written out below from the rules
//! in `node/src/access.rs` (`rule()`), not derived from them, so a change of the rules has to
//! change this table too. Every permitted cell must really work (a valid request, a fresh subject
//! where the method changes or erases one, its answer checked); every refused cell must be
//! PERMISSION_DENIED and change nothing.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::fmt::Write as _;
use std::time::Duration;

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::node::v1 as node;
use domicile_cluster_tests::pb::node::v1::regional_node_client::RegionalNodeClient;
use domicile_cluster_tests::{Cluster as _, ScenarioCluster, channel, identifier, node_ref, region};
use domicile_runtime::identity::Scope;
use domicile_runtime::tls::TlsFiles;
use domicile_types::{ArbiterMap, Link, RegionId};
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const REGIONS: &[&str] = &["eu-central", "us-east", "sa-east"];
/// The node under test; its subjects are of the US pack (home region us-east).
const HOME: &str = "us-east";
/// Another region of the deployment.
const OTHER: &str = "eu-central";

type Client = RegionalNodeClient<Channel>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Register,
    RegisterBatch,
    RecordConsent,
    ImportConsent,
    Decide,
    DecideBatch,
    ListLinks,
    Info,
    ConsentHistory,
    Export,
    Erase,
    Watch,
    Merge,
    Unmerge,
    RecordInteraction,
    GetContext,
    Rectify,
    Restrict,
    ListRightsRequests,
    OpenRightsRequest,
    VerifyRightsRequest,
    GetRightsRequest,
    ExtendRightsRequest,
    ListOverdueRightsRequests,
    ReadChallengeOutbox,
    AckChallengeOutbox,
    ClaimLinks,
    ReleaseLinks,
}

/// Every method of the service, in the order of `node.proto` (the table's columns).
const METHODS: [Method; 28] = [
    Method::Register,
    Method::RegisterBatch,
    Method::RecordConsent,
    Method::ImportConsent,
    Method::Decide,
    Method::DecideBatch,
    Method::ListLinks,
    Method::Info,
    Method::ConsentHistory,
    Method::Export,
    Method::Erase,
    Method::Watch,
    Method::Merge,
    Method::Unmerge,
    Method::RecordInteraction,
    Method::GetContext,
    Method::Rectify,
    Method::Restrict,
    Method::ListRightsRequests,
    Method::OpenRightsRequest,
    Method::VerifyRightsRequest,
    Method::GetRightsRequest,
    Method::ExtendRightsRequest,
    Method::ListOverdueRightsRequests,
    Method::ReadChallengeOutbox,
    Method::AckChallengeOutbox,
    Method::ClaimLinks,
    Method::ReleaseLinks,
];

/// Methods that change or erase a subject: each such cell gets fresh subjects, and a refused
/// one must leave them as they were.
fn mutates(method: Method) -> bool {
    matches!(
        method,
        Method::RecordConsent
            | Method::ImportConsent
            | Method::Erase
            | Method::Merge
            | Method::Unmerge
            | Method::RecordInteraction
            | Method::Rectify
            | Method::Restrict
            | Method::OpenRightsRequest
            | Method::VerifyRightsRequest
            | Method::ExtendRightsRequest
            | Method::AckChallengeOutbox
    )
}

/// `Y`: served (OK); `N`: PERMISSION_DENIED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell {
    Y,
    N,
}
use Cell::{N, Y};

/// Who calls, and what each method must answer them. Columns as in [`METHODS`]:
/// Register, RegisterBatch, RecordConsent, ImportConsent, Decide, DecideBatch, ListLinks, Info, ConsentHistory, Export, Erase,
/// Watch, Merge, Unmerge, RecordInteraction, GetContext, Rectify, Restrict, ListRightsRequests,
/// OpenRightsRequest, VerifyRightsRequest, GetRightsRequest, ExtendRightsRequest,
/// ListOverdueRightsRequests, ReadChallengeOutbox, AckChallengeOutbox, ClaimLinks, ReleaseLinks.
#[rustfmt::skip]
const TABLE: &[(&str, [Cell; 28])] = &[
    //                        Reg RegB RecC Imp Dec DecB LstL Info Hist Expo Eras Wtch Merg Unm Intr Ctx Rect Rstr Rght Open Vrfy GetR Extd Ovrd OutR OutA Clm Rel
    ("no scopes",            [N,  N,  N, N,   N,  N,   N,   N,   N,   N,   N,   N,   N,  N,   N,   N,  N,   N,   N,   N,   N,   N,   N,   N,   N,   N,   N,  N]),
    ("decide only",          [N,  N,  N, N,   Y,  Y,   N,   N,   N,   N,   N,   N,   N,  N,   N,   N,  N,   N,   N,   N,   N,   N,   N,   N,   N,   N,   N,  N]),
    ("capture only",         [Y,  Y,  Y, Y,   N,  N,   N,   N,   N,   N,   N,   N,   N,  N,   Y,   N,  N,   N,   N,   N,   N,   N,   N,   N,   N,   N,   N,  N]),
    ("context only",         [N,  N,  N, N,   N,  N,   N,   N,   Y,   N,   N,   Y,   N,  N,   N,   Y,  N,   N,   N,   N,   N,   N,   N,   N,   N,   N,   N,  N]),
    ("rights only",          [N,  N,  N, N,   N,  N,   N,   N,   N,   Y,   Y,   N,   Y,  Y,   N,   N,  Y,   Y,   Y,   Y,   Y,   Y,   Y,   Y,   Y,   Y,   N,  N]),
    ("admin only",           [N,  N,  N, N,   N,  N,   Y,   Y,   N,   N,   N,   N,   N,  N,   N,   N,  N,   N,   N,   N,   N,   N,   N,   N,   N,   N,   N,  N]),
    ("every scope",          [Y,  Y,  Y, Y,   Y,  Y,   Y,   Y,   Y,   Y,   Y,   Y,   Y,  Y,   Y,   Y,  Y,   Y,   Y,   Y,   Y,   Y,   Y,   Y,   Y,   Y,   N,  N]),
    // Forwards for callers it authorised itself; never gets an export, the challenge outbox, the
    // region's overdue queue or a subject's whole list of requests (every request's id, which is
    // a handle only its opener holds), never claims.
    ("gateway",              [Y,  Y,  Y, Y,   Y,  Y,   Y,   Y,   Y,   N,   Y,   Y,   Y,  Y,   Y,   Y,  Y,   Y,   N,   Y,   Y,   Y,   Y,   N,   N,   N,   N,  N]),
    // A caller of another region must go through a gateway, whatever its scopes.
    ("other region, every scope", [N,  N, N, N, N, N,  N,   N,   N,   N,   N,   N,   N,  N,   N,   N,  N,   N,   N,   N,   N,   N,   N,   N,   N,   N,   N,  N]),
    // Another region's node may claim and release identifiers, nothing else.
    ("other region's node",  [N,  N,  N, N,   N,  N,   N,   N,   N,   N,   N,   N,   N,  N,   N,   N,  N,   N,   N,   N,   N,   N,   N,   N,   N,   N,   Y,  Y]),
    // This node's own certificate is nobody's: a node never calls itself remotely.
    ("this region's node",   [N,  N,  N, N,   N,  N,   N,   N,   N,   N,   N,   N,   N,  N,   N,   N,  N,   N,   N,   N,   N,   N,   N,   N,   N,   N,   N,  N]),
];

/// What a cell got.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    /// Served, and the answer was what the request asked for.
    Ok,
    /// Refused with this code.
    Refused(Code),
    /// Served, but the answer or the subject's state afterwards was wrong.
    Wrong(String),
}

impl Got {
    fn short(&self) -> String {
        match self {
            Got::Ok => "ok".into(),
            Got::Refused(Code::PermissionDenied) => "denied".into(),
            Got::Refused(code) => format!("{code:?}"),
            Got::Wrong(_) => "WRONG".into(),
        }
    }

    fn long(&self) -> String {
        match self {
            Got::Wrong(why) => format!("served, but wrong: {why}"),
            other => other.short(),
        }
    }
}

/// Everything a row's calls need: fresh subjects are registered by `admin` (an operator of the
/// region with every scope, not the identity under test).
struct Fixture {
    admin: Client,
    home: RegionId,
    other: RegionId,
    arbiters: ArbiterMap,
    /// A subject that read-only cells use.
    shared: String,
    counter: u32,
}

impl Fixture {
    fn next_email(&mut self) -> String {
        self.counter += 1;
        format!("authz-{}@example.com", self.counter)
    }

    async fn fresh_subject(&mut self) -> String {
        let email = self.next_email();
        let reply = self
            .admin
            .register(node::RegisterRequest {
                jurisdiction: "US".into(),
                identifiers: vec![identifier("email", &email)],
                ..Default::default()
            })
            .await
            .expect("the operator registers a subject")
            .into_inner();
        assert!(reply.created);
        reply.subject_ref
    }

    /// A random link that the node under test arbitrates.
    fn link_arbitrated_here(&self) -> Link {
        loop {
            let link = Link::from_bytes(domicile_runtime::process::random_bytes::<16>().unwrap());
            if self.arbiters.arbiter(&link) == &self.home {
                return link;
            }
        }
    }

    /// What the node holds about a subject, read by the operator: a refused write must leave it.
    async fn state(&mut self, subject_ref: &str) -> String {
        let subject_ref = subject_ref.to_owned();
        let subject = node_ref(&subject_ref);
        let history = match self
            .admin
            .consent_history(node::ConsentHistoryRequest { subject: subject.clone(), ..Default::default() })
            .await
        {
            Ok(h) => h.into_inner().entries.len(),
            Err(status) => return format!("history: {:?}", status.code()),
        };
        let decision = self
            .admin
            .decide(node::DecideRequest {
                subject: subject.clone(),
                purpose: "marketing".into(),
                channel: "email".into(),
                at: None,
                ..Default::default()
            })
            .await
            .map(|d| d.into_inner().decision.map(|d| (d.effect, d.reasons)))
            .map_err(|s| s.code());
        let context = self
            .admin
            .get_context(node::GetContextRequest { subject: subject.clone(), ..Default::default() })
            .await
            .map(|c| {
                let c = c.into_inner();
                (c.recent.len(), c.profile.into_iter().collect::<Vec<_>>())
            })
            .map_err(|s| s.code());
        let rights = self
            .admin
            .list_rights_requests(node::ListRightsRequestsRequest { subject })
            .await
            .map(|r| {
                r.into_inner().requests.into_iter().map(|q| (q.status, q.extended_at.is_some())).collect::<Vec<_>>()
            })
            .map_err(|s| s.code());
        let outbox = self.outbox().await.into_iter().filter(|e| e.subject_ref == subject_ref).count();
        format!(
            "history {history}, decision {decision:?}, context {context:?}, rights requests {rights:?}, challenges {outbox}"
        )
    }

    /// A fresh subject of `jurisdiction` and the link of its one identifier.
    async fn fresh_with_link(&mut self, jurisdiction: &str) -> (String, String) {
        let email = self.next_email();
        let reply = self
            .admin
            .register(node::RegisterRequest {
                jurisdiction: jurisdiction.into(),
                identifiers: vec![identifier("email", &email)],
                ..Default::default()
            })
            .await
            .expect("the operator registers a subject")
            .into_inner();
        (reply.subject_ref, reply.links[0].clone())
    }

    /// The operator opens an access request for a fresh subject of `jurisdiction`: the
    /// subject, the request id and its challenge's code.
    async fn opened(&mut self, jurisdiction: &str) -> (String, String, String) {
        let (subject, link) = self.fresh_with_link(jurisdiction).await;
        let id = self
            .admin
            .open_rights_request(node::OpenRightsRequestRequest {
                subject: node_ref(&subject),
                kind: "access".into(),
                deliver_to_link: link,
                idempotency_key: String::new(),
            })
            .await
            .expect("the operator opens a rights request")
            .into_inner()
            .active_request_id;
        let code = self.outbox().await.into_iter().find(|e| e.request_id == id).expect("its challenge").code;
        (subject, id, code)
    }

    /// A fresh subject with a verified request of `kind` (opened, its code read from the outbox
    /// and answered by the operator): what a rights service names to export, erase or rectify.
    async fn verified(&mut self, kind: &str) -> (String, String) {
        let (subject, link) = self.fresh_with_link("US").await;
        let id = self
            .admin
            .open_rights_request(node::OpenRightsRequestRequest {
                subject: node_ref(&subject),
                kind: kind.into(),
                deliver_to_link: link,
                idempotency_key: String::new(),
            })
            .await
            .expect("the operator opens a rights request")
            .into_inner()
            .active_request_id;
        let code = self.outbox().await.into_iter().find(|e| e.request_id == id).expect("its challenge").code;
        let verify = node::VerifyRightsRequestRequest { subject: node_ref(&subject), request_id: id.clone(), code };
        let answer = self.admin.verify_rights_request(verify).await.expect("verify").into_inner();
        assert!(answer.verified);
        (subject, id)
    }

    async fn outbox(&mut self) -> Vec<node::ChallengeDelivery> {
        let read = node::ReadChallengeOutboxRequest { limit: 1_000 };
        self.admin.read_challenge_outbox(read).await.expect("the operator reads the outbox").into_inner().entries
    }

    async fn subjects(&mut self) -> u64 {
        self.admin.info(node::InfoRequest {}).await.expect("info").into_inner().subjects
    }
}

/// The subject a cell's request names: a fresh one (its state noted, so a refusal can be
/// checked to change nothing) for a method that changes subjects, else the shared one.
async fn subject_for(method: Method, fx: &mut Fixture, untouched: &mut Vec<(String, String)>) -> String {
    if !mutates(method) {
        return fx.shared.clone();
    }
    let subject = fx.fresh_subject().await;
    let before = fx.state(&subject).await;
    untouched.push((subject.clone(), before));
    subject
}

/// [`subject_for`] for a method that needs a verified request: a fresh subject with one of
/// `kind`, its state noted after the request was verified.
async fn verified_for(fx: &mut Fixture, kind: &str, untouched: &mut Vec<(String, String)>) -> (String, String) {
    let (subject, request) = fx.verified(kind).await;
    let before = fx.state(&subject).await;
    untouched.push((subject.clone(), before));
    (subject, request)
}

/// Calls `method` as `client` with a valid request and checks the answer. `peer` is the region
/// the certificate names if it is a node's (ClaimLinks must state it). Subjects a refused call
/// must leave unchanged are returned with their state before the call.
async fn call(
    method: Method,
    client: &mut Client,
    fx: &mut Fixture,
    peer: Option<&RegionId>,
    claim: (Link, u64),
) -> (Got, Vec<(String, String)>) {
    let here = fx.home.to_string();
    let mut untouched = Vec::new();
    let outcome: Result<Result<(), String>, tonic::Status> = match method {
        Method::Register => {
            let email = fx.next_email();
            let before = fx.subjects().await;
            untouched.push(("(subject count)".into(), before.to_string()));
            client
                .register(node::RegisterRequest {
                    jurisdiction: "US".into(),
                    identifiers: vec![identifier("email", &email)],
                    caller_region: here.clone(),
                    ..Default::default()
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    if r.created && r.subject_ref.starts_with("us-east/") && r.links.len() == 1 {
                        Ok(())
                    } else {
                        Err(format!("registered {r:?}"))
                    }
                })
        }
        Method::RegisterBatch => {
            let email = fx.next_email();
            let before = fx.subjects().await;
            untouched.push(("(subject count)".into(), before.to_string()));
            client
                .register_batch(node::RegisterBatchRequest {
                    items: vec![node::RegisterBatchItem {
                        id: 7,
                        jurisdiction: "US".into(),
                        identifiers: vec![identifier("email", &email)],
                    }],
                    caller_region: here.clone(),
                })
                .await
                .map(|r| {
                    let outcomes = r.into_inner().outcomes;
                    match outcomes.as_slice() {
                        [
                            node::RegisterBatchOutcome {
                                id: 7,
                                result: Some(node::register_batch_outcome::Result::Registered(r)),
                            },
                        ] if r.created && r.subject_ref.starts_with("us-east/") && r.links.len() == 1 => Ok(()),
                        other => Err(format!("registered {other:?}")),
                    }
                })
        }
        Method::RecordConsent => {
            let subject = subject_for(method, fx, &mut untouched).await;
            client
                .record_consent(node::RecordConsentRequest {
                    subject: node_ref(&subject),
                    purpose: "marketing".into(),
                    channels: vec!["email".into()],
                    action: common::ConsentAction::Withdraw as i32,
                    caller_region: here.clone(),
                    ..Default::default()
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    if r.subject_ref == subject && r.sequence > 0 { Ok(()) } else { Err(format!("recorded {r:?}")) }
                })
        }
        Method::ImportConsent => {
            let subject = subject_for(method, fx, &mut untouched).await;
            fx.counter += 1;
            let event = format!("authz-{}", fx.counter);
            client
                .import_consent(node::ImportConsentRequest {
                    items: vec![node::ImportConsentItem {
                        id: 1,
                        subject: node_ref(&subject),
                        purpose: "marketing".into(),
                        channels: vec!["email".into()],
                        action: common::ConsentAction::Withdraw as i32,
                        captured_at: Some(domicile_proto::prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
                        source_system: "authz".into(),
                        source_event_id: event,
                        ..Default::default()
                    }],
                    caller_region: here.clone(),
                    ..Default::default()
                })
                .await
                .map(|r| {
                    let outcomes = r.into_inner().outcomes;
                    match outcomes.first().and_then(|o| o.result.as_ref()) {
                        Some(node::import_consent_outcome::Result::Accepted(s)) if *s > 0 => Ok(()),
                        other => Err(format!("imported {other:?}")),
                    }
                })
        }
        Method::Decide => {
            let subject = subject_for(method, fx, &mut untouched).await;
            client
                .decide(node::DecideRequest {
                    subject: node_ref(&subject),
                    purpose: "marketing".into(),
                    channel: "email".into(),
                    at: None,
                    ..Default::default()
                })
                .await
                .map(|r| match r.into_inner().decision {
                    Some(d) if d.effect == common::Effect::Allow as i32 && d.subject_ref == subject => Ok(()),
                    other => Err(format!("decision {other:?}")),
                })
        }
        Method::DecideBatch => {
            let subject = subject_for(method, fx, &mut untouched).await;
            client
                .decide_batch(node::DecideBatchRequest {
                    items: vec![node::DecideItem {
                        id: 7,
                        subject: node_ref(&subject),
                        purpose: "marketing".into(),
                        channel: "email".into(),
                        ..Default::default()
                    }],
                    at: None,
                })
                .await
                .map(|r| match r.into_inner().outcomes.as_slice() {
                    [node::DecideOutcome { id: 7, result: Some(node::decide_outcome::Result::Decision(d)) }]
                        if d.effect == common::Effect::Allow as i32 =>
                    {
                        Ok(())
                    }
                    other => Err(format!("outcomes {other:?}")),
                })
        }
        Method::ListLinks => match client.list_links(node::ListLinksRequest { batch_size: 0 }).await {
            Err(status) => Err(status),
            Ok(stream) => {
                let mut stream = stream.into_inner();
                let mut entries = 0;
                loop {
                    match stream.message().await {
                        Ok(Some(batch)) => entries += batch.entries.len(),
                        Ok(None) => break Ok(if entries > 0 { Ok(()) } else { Err("no links listed".into()) }),
                        Err(status) => break Ok(Err(format!("stream failed: {status:?}"))),
                    }
                }
            }
        },
        Method::Info => client.info(node::InfoRequest {}).await.map(|r| {
            let r = r.into_inner();
            if r.region == here && r.subjects > 0 { Ok(()) } else { Err(format!("info {r:?}")) }
        }),
        Method::ConsentHistory => {
            let subject = subject_for(method, fx, &mut untouched).await;
            client
                .consent_history(node::ConsentHistoryRequest {
                    subject: node_ref(&subject),
                    // What a gateway sends for a caller of the home region (ignored from others).
                    caller_region: fx.home.to_string(),
                    ..Default::default()
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    if r.subject_ref == subject { Ok(()) } else { Err(format!("history of {}", r.subject_ref)) }
                })
        }
        Method::Export => {
            let (subject, request_id) = verified_for(fx, "access", &mut untouched).await;
            client
                .export(node::ExportRequest { subject: node_ref(&subject), request_id, ..Default::default() })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    let document = String::from_utf8_lossy(&r.document).into_owned();
                    if r.subject_ref == subject && document.contains("@example.com") {
                        Ok(())
                    } else {
                        Err("export without the subject's identifiers".into())
                    }
                })
        }
        Method::Erase => {
            let (subject, request_id) = verified_for(fx, "erasure", &mut untouched).await;
            client
                .erase(node::EraseRequest { subject: node_ref(&subject), request_id, ..Default::default() })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    if r.subject_ref == subject && r.links.len() == 1 { Ok(()) } else { Err(format!("erased {r:?}")) }
                })
        }
        Method::Watch => match client.watch(node::WatchRequest { after_sequence: None }).await {
            Err(status) => Err(status),
            // Events are retained from the start: the first is the first registration.
            Ok(stream) => Ok(match tokio::time::timeout(Duration::from_secs(5), stream.into_inner().message()).await {
                Ok(Ok(Some(event))) if event.region == here => Ok(()),
                other => Err(format!("no event: {other:?}")),
            }),
        },
        Method::Merge => {
            let into = subject_for(method, fx, &mut untouched).await;
            let from = subject_for(method, fx, &mut untouched).await;
            client
                .merge(node::MergeRequest { into: node_ref(&into), from: node_ref(&from), ..Default::default() })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    if r.subject_ref == into && r.merged_subject_ref == from && r.links_moved == 1 {
                        Ok(())
                    } else {
                        Err(format!("merged {r:?}"))
                    }
                })
        }
        Method::Unmerge => {
            // Merged by the operator; the cell's caller undoes it (a rights request's work).
            let into = subject_for(method, fx, &mut untouched).await;
            let from = fx.fresh_subject().await;
            fx.admin
                .merge(node::MergeRequest { into: node_ref(&into), from: node_ref(&from), ..Default::default() })
                .await
                .expect("the operator merges");
            if let Some(noted) = untouched.last_mut() {
                noted.1 = fx.state(&into).await;
            }
            client
                .unmerge(node::UnmergeRequest {
                    subject: node_ref(&into),
                    merged_subject_ref: from.clone(),
                    ..Default::default()
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    if r.subject_ref != into
                        && r.subject_ref.starts_with("us-east/")
                        && r.restored_subject_ref.starts_with("us-east/")
                        && r.restored_subject_ref != from
                        && r.links.len() == 1
                    {
                        Ok(())
                    } else {
                        Err(format!("unmerged {r:?}"))
                    }
                })
        }
        Method::RecordInteraction => {
            let subject = subject_for(method, fx, &mut untouched).await;
            client
                .record_interaction(node::RecordInteractionRequest {
                    subject: node_ref(&subject),
                    channel: "chat".into(),
                    kind: "message".into(),
                    intent: "billing.dispute".into(),
                    open: true,
                    caller_region: here.clone(),
                    ..Default::default()
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    if r.subject_ref == subject && r.sequence > 0 { Ok(()) } else { Err(format!("recorded {r:?}")) }
                })
        }
        Method::GetContext => {
            let subject = subject_for(method, fx, &mut untouched).await;
            // Minimised, as a gateway must ask; the caller is of the subject's home region.
            client
                .get_context(node::GetContextRequest {
                    subject: node_ref(&subject),
                    minimised: true,
                    caller_region: here.clone(),
                    ..Default::default()
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    if r.subject_ref == subject && r.minimised { Ok(()) } else { Err(format!("context {r:?}")) }
                })
        }
        Method::Rectify => {
            let (subject, request_id) = verified_for(fx, "rectification", &mut untouched).await;
            client
                .rectify(node::RectifyRequest {
                    subject: node_ref(&subject),
                    set_profile: [("tier".to_owned(), "gold".to_owned())].into(),
                    caller_region: here.clone(),
                    request_id,
                    ..Default::default()
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    if r.subject_ref == subject && r.rights_request.is_some_and(|q| q.kind == "rectification") {
                        Ok(())
                    } else {
                        Err("no rectification request".into())
                    }
                })
        }
        Method::Restrict => {
            let subject = subject_for(method, fx, &mut untouched).await;
            client
                .restrict(node::RestrictRequest { subject: node_ref(&subject), restricted: true, ..Default::default() })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    if r.subject_ref == subject && r.restricted { Ok(()) } else { Err(format!("restricted {r:?}")) }
                })
        }
        Method::ListRightsRequests => {
            let subject = subject_for(method, fx, &mut untouched).await;
            client.list_rights_requests(node::ListRightsRequestsRequest { subject: node_ref(&subject) }).await.map(
                |r| {
                    let r = r.into_inner();
                    if r.subject_ref == subject { Ok(()) } else { Err(format!("requests of {}", r.subject_ref)) }
                },
            )
        }
        Method::OpenRightsRequest => {
            let (subject, link) = fx.fresh_with_link("US").await;
            untouched.push((subject.clone(), fx.state(&subject).await));
            client
                .open_rights_request(node::OpenRightsRequestRequest {
                    subject: node_ref(&subject),
                    kind: "access".into(),
                    deliver_to_link: link,
                    idempotency_key: String::new(),
                })
                .await
                .map(|r| match r.into_inner().request {
                    Some(q) if q.status == "verifying" => Ok(()),
                    other => Err(format!("opened {other:?}")),
                })
        }
        Method::VerifyRightsRequest => {
            let (subject, id, code) = fx.opened("US").await;
            untouched.push((subject.clone(), fx.state(&subject).await));
            client
                .verify_rights_request(node::VerifyRightsRequestRequest {
                    subject: node_ref(&subject),
                    request_id: id,
                    code,
                })
                .await
                .map(|r| if r.into_inner().verified { Ok(()) } else { Err("not verified".into()) })
        }
        Method::GetRightsRequest => {
            let (subject, id, _) = fx.opened("US").await;
            client
                .get_rights_request(node::GetRightsRequestRequest {
                    subject: node_ref(&subject),
                    request_id: id.clone(),
                })
                .await
                .map(|r| match r.into_inner().request {
                    Some(q) if q.request_id == id && q.status == "verifying" => Ok(()),
                    other => Err(format!("request {other:?}")),
                })
        }
        Method::ExtendRightsRequest => {
            // California's pack permits an extension (45 days + 45).
            let (subject, id, _) = fx.opened("US-CA").await;
            untouched.push((subject.clone(), fx.state(&subject).await));
            client
                .extend_rights_request(node::ExtendRightsRequestRequest { subject: node_ref(&subject), request_id: id })
                .await
                .map(|r| match r.into_inner().request {
                    Some(q) if q.extended_at.is_some() => Ok(()),
                    other => Err(format!("extended {other:?}")),
                })
        }
        Method::ListOverdueRightsRequests => {
            let as_of = Some(prost_types::Timestamp {
                seconds: domicile_runtime::process::now_unix() + 400 * 86_400,
                nanos: 0,
            });
            client.list_overdue_rights_requests(node::ListOverdueRightsRequestsRequest { as_of }).await.map(|r| {
                let counts = r.into_inner().counts;
                if counts.len() == 5 { Ok(()) } else { Err(format!("counts {counts:?}")) }
            })
        }
        Method::ReadChallengeOutbox => {
            let (_, id, code) = fx.opened("US").await;
            client.read_challenge_outbox(node::ReadChallengeOutboxRequest { limit: 1_000 }).await.map(|r| {
                if r.into_inner().entries.iter().any(|e| e.request_id == id && e.code == code) {
                    Ok(())
                } else {
                    Err("the challenge is not listed".into())
                }
            })
        }
        Method::AckChallengeOutbox => {
            let (subject, id, _) = fx.opened("US").await;
            untouched.push((subject.clone(), fx.state(&subject).await));
            client.ack_challenge_outbox(node::AckChallengeOutboxRequest { request_ids: vec![id] }).await.map(|r| {
                let removed = r.into_inner().removed;
                if removed == 1 { Ok(()) } else { Err(format!("removed {removed}")) }
            })
        }
        Method::ClaimLinks => {
            // A valid claim for the calling node's region; for any other certificate the region
            // of another node, so that only the door can refuse it.
            let region = peer.unwrap_or(&fx.other).to_string();
            client
                .claim_links(node::ClaimLinksRequest {
                    map_digest: fx.arbiters.digest().to_owned(),
                    region,
                    generation: claim.1,
                    links: vec![claim.0.as_bytes().to_vec()],
                })
                .await
                .map(|r| match r.into_inner().results.as_slice() {
                    [granted] if granted.held_by.is_empty() => Ok(()),
                    other => Err(format!("claim {other:?}")),
                })
        }
        Method::ReleaseLinks => {
            let region = peer.unwrap_or(&fx.other).to_string();
            client
                .release_links(node::ReleaseLinksRequest {
                    map_digest: fx.arbiters.digest().to_owned(),
                    region,
                    releases: vec![node::LinkRelease { link: claim.0.as_bytes().to_vec(), generation: claim.1 }],
                })
                .await
                .map(|r| {
                    let released = r.into_inner().released;
                    // The row's ClaimLinks cell claimed this link just before.
                    if released == 1 { Ok(()) } else { Err(format!("released {released}")) }
                })
        }
    };
    let got = match outcome {
        Ok(Ok(())) => Got::Ok,
        Ok(Err(why)) => Got::Wrong(why),
        Err(status) => Got::Refused(status.code()),
    };
    (got, untouched)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_method_serves_exactly_the_callers_its_rule_admits() {
    let cluster = ScenarioCluster::start(BIN, REGIONS).await.expect("cluster starts");
    let (home, other) = (region(HOME), region(OTHER));
    let pki = cluster.pki().unwrap();
    let addr = cluster.node_addr(&home).unwrap().to_string();
    let server_name = home.node_server_name();

    let mut admin = cluster.node(&home).await.unwrap();
    let shared = admin
        .register(node::RegisterRequest {
            jurisdiction: "US".into(),
            identifiers: vec![identifier("email", "authz-shared@example.com")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .subject_ref;
    let mut fx = Fixture {
        admin,
        home: home.clone(),
        other: other.clone(),
        arbiters: ArbiterMap::new(REGIONS.iter().map(|r| region(r))).unwrap(),
        shared,
        counter: 0,
    };

    let issue = |name: &str, region: &str, scopes: &[Scope]| cluster.issue_caller(name, region, scopes).unwrap();
    let certificates: Vec<(TlsFiles, Option<RegionId>)> = vec![
        (issue("health-probe", HOME, &[]), None),
        (issue("campaigns", HOME, &[Scope::Decide]), None),
        (issue("web-form", HOME, &[Scope::Capture]), None),
        (issue("agent-desktop", HOME, &[Scope::Context]), None),
        (issue("dpo-desk", HOME, &[Scope::Rights]), None),
        (issue("ops-admin", HOME, &[Scope::Admin]), None),
        (issue("ops-all", HOME, &Scope::ALL), None),
        (pki.gateway().unwrap(), None),
        (issue("eu-ops", OTHER, &Scope::ALL), None),
        (pki.node(&other).unwrap(), Some(other.clone())),
        (pki.node(&home).unwrap(), None),
    ];
    assert_eq!(certificates.len(), TABLE.len());

    let mut got: Vec<Vec<Got>> = Vec::new();
    let mut failures = Vec::new();
    for (row, ((name, expected), (tls, peer))) in TABLE.iter().zip(&certificates).enumerate() {
        let mut client = RegionalNodeClient::new(channel(&addr, tls, &server_name).await.unwrap());
        // One link per row: its ClaimLinks cell claims it, its ReleaseLinks cell releases it.
        let claim = (fx.link_arbitrated_here(), 1 + row as u64);
        let mut cells = Vec::new();
        for (method, expect) in METHODS.iter().zip(expected) {
            let (mut outcome, untouched) = call(*method, &mut client, &mut fx, peer.as_ref(), claim).await;
            if matches!(outcome, Got::Refused(_)) {
                // A refusal changes nothing.
                for (subject, before) in untouched {
                    let after = if subject == "(subject count)" {
                        fx.subjects().await.to_string()
                    } else {
                        fx.state(&subject).await
                    };
                    if after != before {
                        outcome = Got::Wrong(format!("refused but changed {subject}: {before} -> {after}"));
                    }
                }
            }
            let right = match expect {
                Y => outcome == Got::Ok,
                N => outcome == Got::Refused(Code::PermissionDenied),
            };
            if !right {
                failures.push(format!("{name} × {method:?}: expected {expect:?}, got {}", outcome.long()));
            }
            cells.push(outcome);
        }
        got.push(cells);
    }

    // Without a certificate there is nobody to authorise: the node's TLS requires one, so not
    // even Info is served (the gateway, which also takes tokens, answers UNAUTHENTICATED instead).
    let ca = std::fs::read(&cluster.client_tls().ca).unwrap();
    let anonymous = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                .domain_name(server_name.clone()),
        )
        .unwrap()
        .connect()
        .await;
    if let Ok(anonymous) = anonymous {
        let refused = RegionalNodeClient::new(anonymous).info(node::InfoRequest {}).await;
        assert!(refused.is_err(), "a caller without a certificate was served: {refused:?}");
    }

    if !failures.is_empty() {
        // Columns abbreviated as in TABLE's comment; see the list below for each cell's detail.
        const HEADS: [&str; 26] = [
            "Reg", "RecC", "Imp", "Dec", "DecB", "LstL", "Info", "Hist", "Expo", "Eras", "Wtch", "Merg", "Intr", "Ctx",
            "Rect", "Rstr", "Rght", "Open", "Vrfy", "GetR", "Extd", "Ovrd", "OutR", "OutA", "Clm", "Rel",
        ];
        let mut table = format!("{:<27}", "");
        for head in HEADS {
            let _ = write!(table, "{head:>9}");
        }
        table.push('\n');
        for ((name, expected), cells) in TABLE.iter().zip(&got) {
            let _ = write!(table, "{name:<27}");
            for (expect, cell) in expected.iter().zip(cells) {
                let mark = match (expect, cell) {
                    (Y, Got::Ok) | (N, Got::Refused(Code::PermissionDenied)) => cell.short(),
                    _ => format!("!{}", cell.short()),
                };
                let _ = write!(table, "{mark:>9}");
            }
            table.push('\n');
        }
        panic!("{} cells differ from the table (marked !):\n{table}\n{}", failures.len(), failures.join("\n"));
    }
}
