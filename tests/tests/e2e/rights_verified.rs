//! Tracked rights requests (issue 22, item 2; ARCHITECTURE.md "Rights requests"), on real
//! processes over mutual TLS: an export or erasure needs a request verified by a one-time
//! challenge (delivered through the region's outbox) or an operator's override; duplicates are
//! linked; wrong and late answers refuse; overdue requests are listed and counted; the clear code
//! is in no file the cluster wrote (logs, audit log, database). Run on sled and on PostgreSQL.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use domicile_cli::cluster::ClusterStore;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::node::v1 as node;
use domicile_cluster_tests::pb::node::v1::regional_node_client::RegionalNodeClient;
use domicile_cluster_tests::{
    Cluster as _, TestCluster, TestOptions, files_containing, identifier, node_ref, region, select_email, select_ref,
};
use domicile_node::config::RightsConfig;
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
/// Short enough to wait out in a test.
const TTL_SECS: u64 = 3;
const ATTEMPTS: u32 = 3;
const DAY: i64 = 86_400;

type Node = RegionalNodeClient<Channel>;

fn now() -> i64 {
    domicile_runtime::process::now_unix()
}

async fn register(client: &mut gw::domicile_client::DomicileClient<Channel>, email: &str) -> gw::RegisterResponse {
    client
        .register(gw::RegisterRequest {
            jurisdiction: "FR".into(),
            identifiers: vec![identifier("email", email)],
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn open(eu: &mut Node, subject: &gw::RegisterResponse, kind: &str) -> node::OpenRightsRequestResponse {
    eu.open_rights_request(node::OpenRightsRequestRequest {
        subject: node_ref(&subject.subject_ref),
        kind: kind.into(),
        deliver_to_link: subject.links[0].clone(),
        idempotency_key: String::new(),
    })
    .await
    .expect("open")
    .into_inner()
}

async fn outbox(eu: &mut Node) -> Vec<node::ChallengeDelivery> {
    eu.read_challenge_outbox(node::ReadChallengeOutboxRequest { limit: 0 }).await.unwrap().into_inner().entries
}

async fn code_of(eu: &mut Node, request_id: &str, codes: &mut Vec<String>) -> String {
    let entry =
        outbox(eu).await.into_iter().find(|e| e.request_id == request_id).expect("the challenge is in the outbox");
    codes.push(entry.code.clone());
    entry.code
}

async fn verify(eu: &mut Node, subject: &str, request_id: &str, code: &str) -> node::VerifyRightsRequestResponse {
    eu.verify_rights_request(node::VerifyRightsRequestRequest {
        subject: node_ref(subject),
        request_id: request_id.into(),
        code: code.into(),
    })
    .await
    .expect("verify")
    .into_inner()
}

async fn export(eu: &mut Node, subject: &str, request_id: &str) -> Result<node::ExportResponse, tonic::Status> {
    eu.export(node::ExportRequest { subject: node_ref(subject), request_id: request_id.into(), ..Default::default() })
        .await
        .map(tonic::Response::into_inner)
}

fn status_of(r: &node::VerifyRightsRequestResponse) -> (&str, &str) {
    let request = r.request.as_ref().unwrap();
    (request.status.as_str(), request.reason.as_str())
}

async fn lifecycle(store: ClusterStore) {
    let store_is_postgres = matches!(store, ClusterStore::Postgres);
    let options = TestOptions {
        store,
        node_rights: Some(RightsConfig {
            challenge_ttl_secs: TTL_SECS,
            challenge_attempts: ATTEMPTS,
            ..RightsConfig::default()
        }),
        ..Default::default()
    };
    let mut cluster = TestCluster::start_with(BIN, &["eu-central"], options).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let mut eu = cluster.node(&region("eu-central")).await.unwrap();
    let mut codes = Vec::new();
    let anna = register(&mut client, "anna.rights@example.fr").await;
    let bert = register(&mut client, "bert.rights@example.fr").await;

    // Neither a request nor an override: refused, nothing served.
    let refused = export(&mut eu, &anna.subject_ref, "").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("request_id"), "{}", refused.message());

    // A challenge goes only to an identifier the subject holds.
    let status = eu
        .open_rights_request(node::OpenRightsRequestRequest {
            subject: node_ref(&anna.subject_ref),
            kind: "access".into(),
            deliver_to_link: bert.links[0].clone(),
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // Opened: verifying, one challenge in the outbox, sent to the subject's own address.
    let opened = open(&mut eu, &anna, "access").await;
    let access = opened.request.clone().unwrap();
    assert_eq!(access.status, "verifying");
    assert_eq!(opened.active_request_id, access.request_id);
    assert!(opened.challenge_expires_at.is_some());
    // A deadline from the pack (GDPR: 1 month, extendable by 2).
    assert!(access.deadline_at.is_some() && access.extended_deadline_at.is_some(), "{access:?}");

    // The unverified request does not serve an export.
    let refused = export(&mut eu, &anna.subject_ref, &access.request_id).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("not verified"), "{}", refused.message());

    // A duplicate is linked to the open request, with no second challenge; its opener is not
    // told the other request's id (it verifies through its own).
    let duplicate = open(&mut eu, &anna, "access").await;
    let linked = duplicate.request.unwrap();
    assert_eq!(linked.status, "linked");
    assert_eq!(linked.linked_to, "", "another opener's request id is not handed out");
    assert_eq!(duplicate.active_request_id, linked.request_id);
    let entries = outbox(&mut eu).await;
    assert_eq!(entries.len(), 1, "one challenge for the two requests");
    assert_eq!(entries[0].identifier_kind, "email");
    assert_eq!(entries[0].identifier_value, "anna.rights@example.fr");
    let code = code_of(&mut eu, &access.request_id, &mut codes).await;

    // A wrong code counts; the right one verifies.
    let wrong = verify(&mut eu, &anna.subject_ref, &access.request_id, "WRONGCODE0").await;
    assert!(!wrong.verified);
    assert_eq!(wrong.attempts_left, ATTEMPTS - 1);
    let right = verify(&mut eu, &anna.subject_ref, &access.request_id, &code.to_lowercase()).await;
    assert!(right.verified, "{right:?}");
    assert_eq!(status_of(&right).0, "verified");
    assert!(outbox(&mut eu).await.is_empty(), "an answered challenge leaves the outbox");

    // Another subject's request, or another kind, does not serve.
    let status = export(&mut eu, &bert.subject_ref, &access.request_id).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = eu
        .erase(node::EraseRequest {
            subject: node_ref(&anna.subject_ref),
            request_id: access.request_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("another kind"), "{}", status.message());
    // Nor is anyone erased without a request or an override.
    let status =
        eu.erase(node::EraseRequest { subject: node_ref(&anna.subject_ref), ..Default::default() }).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // A rectification and the lifting of a restriction need the same; a restriction itself is
    // honoured on receipt (it only narrows processing).
    let status = eu
        .rectify(node::RectifyRequest {
            subject: node_ref(&bert.subject_ref),
            set_profile: [("tier".to_owned(), "gold".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let restrict = |restricted: bool, override_reason: &str| node::RestrictRequest {
        subject: node_ref(&bert.subject_ref),
        restricted,
        override_reason: override_reason.into(),
        ..Default::default()
    };
    eu.restrict(restrict(true, "")).await.expect("a restriction is honoured on receipt");
    let status = eu.restrict(restrict(false, "")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let lifted = eu.restrict(restrict(false, "identity_checked_in_person")).await.expect("lifted on override");
    assert_eq!(lifted.into_inner().rights_request.unwrap().override_reason, "identity_checked_in_person");

    // The verified request is served once, and completed: eight exports sent at once with it
    // are served one time (the others find it being carried out, or completed).
    let racing = (0..8).map(|_| {
        let mut node = eu.clone();
        let (subject, request) = (anna.subject_ref.clone(), access.request_id.clone());
        tokio::spawn(async move { export(&mut node, &subject, &request).await })
    });
    let mut results = Vec::new();
    for call in racing.collect::<Vec<_>>() {
        results.push(call.await.unwrap());
    }
    let served: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let outcomes: Vec<_> = results.iter().map(|r| r.as_ref().map(|_| "served").map_err(tonic::Status::code)).collect();
    assert_eq!(served.len(), 1, "one verification, one export: {outcomes:?}");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(matches!(refused.code(), Code::Aborted | Code::FailedPrecondition), "{refused:?}");
    }
    let served = served[0].clone();
    assert!(String::from_utf8_lossy(&served.document).contains("anna.rights@example.fr"));
    let done = served.rights_request.unwrap();
    assert_eq!((done.request_id.as_str(), done.status.as_str()), (access.request_id.as_str(), "completed"));
    // A replayed answer does nothing; the request does not serve twice.
    let replayed = verify(&mut eu, &anna.subject_ref, &access.request_id, &code).await;
    assert_eq!(status_of(&replayed).0, "completed");
    assert_eq!(
        export(&mut eu, &anna.subject_ref, &access.request_id).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    let got = eu
        .get_rights_request(node::GetRightsRequestRequest {
            subject: node_ref(&anna.subject_ref),
            request_id: access.request_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.request.unwrap().status, "completed");
    // Another subject asking about it learns nothing.
    let status = eu
        .get_rights_request(node::GetRightsRequestRequest {
            subject: node_ref(&bert.subject_ref),
            request_id: access.request_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // Wrong codes up to the limit refuse the request; the right code afterwards does nothing.
    let erasure = open(&mut eu, &anna, "erasure").await.request.unwrap();
    let erasure_code = code_of(&mut eu, &erasure.request_id, &mut codes).await;
    for left in (0..ATTEMPTS).rev() {
        let wrong = verify(&mut eu, &anna.subject_ref, &erasure.request_id, "0000000000").await;
        assert_eq!(wrong.attempts_left, left);
    }
    let late = verify(&mut eu, &anna.subject_ref, &erasure.request_id, &erasure_code).await;
    assert!(!late.verified);
    assert_eq!(status_of(&late), ("refused", "verification_failed"));

    // An expired challenge refuses the request.
    let expiring = open(&mut eu, &bert, "access").await.request.unwrap();
    let expiring_code = code_of(&mut eu, &expiring.request_id, &mut codes).await;
    tokio::time::sleep(std::time::Duration::from_secs(TTL_SECS + 1)).await;
    let expired = verify(&mut eu, &bert.subject_ref, &expiring.request_id, &expiring_code).await;
    assert!(!expired.verified);
    assert_eq!(status_of(&expired), ("refused", "challenge_expired"));
    // A challenge left unanswered until it expired does not keep the subject from a new one: the
    // next request of that kind is refused the old one and gets its own code.
    let abandoned = open(&mut eu, &bert, "erasure").await.request.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(TTL_SECS + 1)).await;
    let reopened = open(&mut eu, &bert, "erasure").await;
    let fresh = reopened.request.unwrap();
    assert_ne!(fresh.request_id, abandoned.request_id);
    assert_eq!(fresh.status, "verifying", "a new challenge, not linked to the abandoned request");
    let fresh_code = code_of(&mut eu, &fresh.request_id, &mut codes).await;
    assert!(!fresh_code.is_empty());
    // Closed again (wrong answers to the limit), so the overdue counts below see only theirs.
    for _ in 0..ATTEMPTS {
        verify(&mut eu, &bert.subject_ref, &fresh.request_id, "0000000000").await;
    }
    let closed = verify(&mut eu, &bert.subject_ref, &fresh.request_id, &fresh_code).await;
    assert_eq!(status_of(&closed), ("refused", "verification_failed"));

    // An identifier attached to a subject since it was created (a registration naming it beside
    // one of the subject's) is no way to reach the person yet: whoever attached it gets no code.
    let attached = client
        .register(gw::RegisterRequest {
            jurisdiction: "FR".into(),
            identifiers: vec![identifier("email", "bert.rights@example.fr"), identifier("email", "mallory@example.fr")],
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(attached.subject_ref, bert.subject_ref, "attached to Bert");
    let mallory_link = attached.links.iter().find(|l| !bert.links.contains(l)).expect("a new link").clone();
    let before = outbox(&mut eu).await.len();
    let status = eu
        .open_rights_request(node::OpenRightsRequestRequest {
            subject: node_ref(&bert.subject_ref),
            kind: "access".into(),
            deliver_to_link: mallory_link,
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("quarantine") && !status.message().contains("mallory"), "{status:?}");
    assert_eq!(outbox(&mut eu).await.len(), before, "no challenge for the attached identifier");

    // Overdue: an open request past its deadline is listed and counted, until extended.
    let pending = open(&mut eu, &bert, "portability").await.request.unwrap();
    let overdue = |as_of: i64| node::ListOverdueRightsRequestsRequest {
        as_of: Some(prost_types::Timestamp { seconds: as_of, nanos: 0 }),
    };
    let listed = eu.list_overdue_rights_requests(overdue(now() + 40 * DAY)).await.unwrap().into_inner();
    assert!(listed.requests.iter().any(|o| o.request.as_ref().unwrap().request_id == pending.request_id));
    let counted = listed.counts.iter().find(|c| c.kind == "portability").unwrap();
    assert_eq!(counted.count, 1);
    let today = eu.list_overdue_rights_requests(node::ListOverdueRightsRequestsRequest { as_of: None }).await.unwrap();
    assert!(today.into_inner().requests.is_empty(), "nothing is overdue yet");
    // Extended through the gateway (audited at the node), to the pack's permitted extension.
    let extended = client
        .extend_rights_request(gw::ExtendRightsRequestRequest {
            subject: select_ref(&bert.subject_ref),
            request_id: pending.request_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert!(extended.extended_at.is_some());
    let listed = eu.list_overdue_rights_requests(overdue(now() + 40 * DAY)).await.unwrap().into_inner();
    assert!(listed.requests.is_empty(), "extended: not overdue at 40 days");
    let listed = eu.list_overdue_rights_requests(overdue(now() + 100 * DAY)).await.unwrap().into_inner();
    assert_eq!(listed.requests.len(), 1, "overdue past the extension");

    // Through the gateway (routed to the home region; the delivery identifier named by value,
    // turned into its link there): a verified erasure erases, and the subject's challenges leave
    // the outbox with it.
    let status = client
        .open_rights_request(gw::OpenRightsRequestRequest {
            subject: select_ref(&anna.subject_ref),
            kind: "erasure".into(),
            deliver_to: select_email("bert.rights@example.fr"),
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "another subject's address: {status:?}");
    let opened = client
        .open_rights_request(gw::OpenRightsRequestRequest {
            subject: select_ref(&anna.subject_ref),
            kind: "erasure".into(),
            deliver_to: select_email("anna.rights@example.fr"),
            idempotency_key: "open-erasure-1".into(),
        })
        .await
        .expect("opened through the gateway")
        .into_inner();
    let erasure = opened.request.unwrap();
    assert_eq!(erasure.status, "verifying");
    // Repeated with its idempotency key: answered as the first time, no second challenge.
    let entries = outbox(&mut eu).await.len();
    let again = client
        .open_rights_request(gw::OpenRightsRequestRequest {
            subject: select_ref(&anna.subject_ref),
            kind: "erasure".into(),
            deliver_to: select_email("anna.rights@example.fr"),
            idempotency_key: "open-erasure-1".into(),
        })
        .await
        .expect("replayed")
        .into_inner();
    assert_eq!(again.request.unwrap().request_id, erasure.request_id);
    assert_eq!(again.active_request_id, erasure.request_id);
    assert_eq!(outbox(&mut eu).await.len(), entries);
    let erasure_code = code_of(&mut eu, &erasure.request_id, &mut codes).await;
    let other = open(&mut eu, &anna, "rectification").await.request.unwrap();
    let _ = code_of(&mut eu, &other.request_id, &mut codes).await;
    let verified = client
        .verify_rights_request(gw::VerifyRightsRequestRequest {
            subject: select_email("anna.rights@example.fr"),
            request_id: erasure.request_id.clone(),
            code: erasure_code.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(verified.verified, "{verified:?}");
    let got = client
        .get_rights_request(gw::GetRightsRequestRequest {
            subject: select_ref(&anna.subject_ref),
            request_id: erasure.request_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.request.unwrap().status, "verified");
    let erased = client
        .erase(gw::EraseRequest {
            subject: select_ref(&anna.subject_ref),
            request_id: erasure.request_id.clone(),
            ..Default::default()
        })
        .await
        .expect("erased through the gateway with the verified request")
        .into_inner();
    assert_eq!(erased.rights_request.unwrap().status, "completed");
    let left = outbox(&mut eu).await;
    assert!(left.iter().all(|e| e.subject_ref != anna.subject_ref), "{left:?}");

    // No file the cluster wrote (logs, audit log, database) holds a code in clear; the override
    // is in the audit log.
    cluster.stop().await;
    let audited = files_containing(cluster.dir(), b"\"override\":\"identity_checked_in_person\"");
    assert!(audited.iter().any(|p| p.ends_with("audit.log")) || store_is_postgres, "{audited:?}");
    for code in &codes {
        assert!(files_containing(cluster.dir(), code.as_bytes()).is_empty(), "a challenge code is in a file");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_requests_are_verified_tracked_and_listed_when_overdue_on_sled() {
    lifecycle(ClusterStore::Sled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_requests_are_verified_tracked_and_listed_when_overdue_on_postgres() {
    lifecycle(ClusterStore::Postgres).await;
}

/// An attacker guessing in parallel through two replicas of a PostgreSQL region gets exactly the
/// configured number of wrong answers: each is counted once (a step overtaken by another
/// replica's is refused, ABORTED, and writes nothing), then the request is refused and the right
/// code does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_answers_are_counted_exactly_across_replicas_on_postgres() {
    let options = TestOptions {
        store: ClusterStore::Postgres,
        node_rights: Some(RightsConfig { challenge_ttl_secs: 600, challenge_attempts: 5, ..RightsConfig::default() }),
        ..Default::default()
    };
    let cluster = TestCluster::start_with(BIN, &["eu-central"], options).await.expect("cluster starts");
    let eu = region("eu-central");
    let replica = domicile_cluster_tests::Replica::start(&cluster, &eu).await.unwrap();
    let mut first = cluster.node(&eu).await.unwrap();
    let second = replica.client(&cluster).await.unwrap();
    let mut client = cluster.gateway().await.unwrap();
    let carl = register(&mut client, "carl.rights@example.fr").await;
    let request = open(&mut first, &carl, "erasure").await.request.unwrap();
    let code = code_of(&mut first, &request.request_id, &mut Vec::new()).await;

    let mut counted = Vec::new();
    let mut aborted = 0;
    for _round in 0..20 {
        let mut tasks = Vec::new();
        for i in 0..6 {
            let mut node = if i % 2 == 0 { first.clone() } else { second.clone() };
            let (subject, id) = (carl.subject_ref.clone(), request.request_id.clone());
            tasks.push(tokio::spawn(async move {
                node.verify_rights_request(node::VerifyRightsRequestRequest {
                    subject: node_ref(&subject),
                    request_id: id,
                    code: format!("WRONG{i:05}"),
                })
                .await
            }));
        }
        for task in tasks {
            match task.await.unwrap() {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    assert!(!answer.verified);
                    if answer.request.as_ref().unwrap().status == "verifying" {
                        counted.push(answer.attempts_left);
                    }
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::Aborted, "{status:?}");
                    aborted += 1;
                }
            }
        }
        let now = first
            .get_rights_request(node::GetRightsRequestRequest {
                subject: node_ref(&carl.subject_ref),
                request_id: request.request_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .request
            .unwrap();
        if now.status == "refused" {
            assert_eq!(now.reason, "verification_failed");
            break;
        }
    }
    eprintln!("wrong answers counted {counted:?}, {aborted} overtaken");
    counted.sort_unstable();
    assert_eq!(counted, [1, 2, 3, 4], "each wrong answer counted once ({aborted} overtaken and refused)");
    let late = verify(&mut first, &carl.subject_ref, &request.request_id, &code).await;
    assert!(!late.verified);
    assert_eq!(status_of(&late), ("refused", "verification_failed"));
}

/// An override is an operator's: a rights service (the `rights` scope without `admin`) names a
/// verified request, directly at the node or through the gateway, and its override is refused
/// with nothing erased; an operator's is carried out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_operator_overrides_the_verification() {
    use domicile_runtime::identity::Scope;
    let cluster = TestCluster::start_with(BIN, &["eu-central"], TestOptions::default()).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let desk_tls = cluster.issue_caller("rights-desk", "eu-central", &[Scope::Rights]).unwrap();
    let mut desk_gateway = cluster.gateway_as(&desk_tls).await.unwrap();
    let addr = cluster.node_addr(&region("eu-central")).unwrap();
    let desk_channel =
        domicile_cluster_tests::channel(&addr.to_string(), &desk_tls, &region("eu-central").node_server_name())
            .await
            .unwrap();
    let mut desk_node = RegionalNodeClient::new(desk_channel);
    let carla = register(&mut client, "carla.rights@example.fr").await;

    let status = desk_node
        .erase(node::EraseRequest {
            subject: node_ref(&carla.subject_ref),
            override_reason: "court_order".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = desk_gateway
        .erase(gw::EraseRequest {
            subject: select_ref(&carla.subject_ref),
            override_reason: "court_order".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let mut eu = cluster.node(&region("eu-central")).await.unwrap();
    let history = eu
        .consent_history(node::ConsentHistoryRequest { subject: node_ref(&carla.subject_ref), ..Default::default() })
        .await;
    assert!(history.is_ok(), "nothing was erased");

    // The operator (every scope, this region) may.
    eu.erase(node::EraseRequest {
        subject: node_ref(&carla.subject_ref),
        override_reason: "court_order".into(),
        ..Default::default()
    })
    .await
    .expect("an operator's override");
}

/// A merge retires the merged-away subject's id: its open requests are refused
/// (`subject_merged`) and their challenges leave the outbox, so none waits for ever, overdue, on
/// an id no call can reach; the same for the merged subject an unmerge retires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_a_subject_a_merge_retires_are_closed_not_left_overdue() {
    let cluster = TestCluster::start_with(BIN, &["eu-central"], TestOptions::default()).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let mut eu = cluster.node(&region("eu-central")).await.unwrap();
    let dora = register(&mut client, "dora.rights@example.fr").await;
    let emil = register(&mut client, "emil.rights@example.fr").await;
    let overdue = |eu: &mut Node| {
        let mut eu = eu.clone();
        async move {
            let far = Some(prost_types::Timestamp { seconds: now() + 400 * 86_400, nanos: 0 });
            let listed = eu.list_overdue_rights_requests(node::ListOverdueRightsRequestsRequest { as_of: far });
            listed.await.unwrap().into_inner().requests
        }
    };
    let dora_request = open(&mut eu, &dora, "access").await.request.unwrap().request_id;
    assert!(overdue(&mut eu).await.iter().any(|o| o.request.as_ref().unwrap().request_id == dora_request));

    client
        .merge(gw::MergeRequest {
            into: select_ref(&emil.subject_ref),
            from: select_ref(&dora.subject_ref),
            idempotency_key: String::new(),
        })
        .await
        .expect("merge");
    assert!(outbox(&mut eu).await.iter().all(|e| e.request_id != dora_request), "its challenge left the outbox");
    assert!(overdue(&mut eu).await.is_empty(), "nothing left waiting on the retired id");

    // The merged subject's own request, then the unmerge that retires it.
    let merged =
        gw::RegisterResponse { subject_ref: emil.subject_ref.clone(), links: emil.links.clone(), ..Default::default() };
    let emil_request = open(&mut eu, &merged, "erasure").await.request.unwrap().request_id;
    client
        .unmerge(gw::UnmergeRequest {
            subject: select_ref(&emil.subject_ref),
            merged_subject_ref: dora.subject_ref.clone(),
            idempotency_key: String::new(),
        })
        .await
        .expect("unmerge");
    assert!(outbox(&mut eu).await.iter().all(|e| e.request_id != emil_request));
    assert!(overdue(&mut eu).await.is_empty());
}

/// A request verified by one requester is never handed to another: a second desk opening the
/// same kind for the subject gets a challenge of its own (not a link to the verified request,
/// whose id would let it act without proving anything), and a wrong code sent to the verified
/// request is refused rather than read as verified; its own requester's code, sent again (a reply
/// lost), is still verified. Runs on PostgreSQL too in `.ci/run`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_request_is_never_handed_to_another_requester() {
    use domicile_runtime::identity::Scope;
    let mut options = TestOptions::default();
    domicile_cluster_tests::apply_store_env(&mut options).expect("store from the environment");
    let cluster = TestCluster::start_with(BIN, &["eu-central"], options).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let mut eu = cluster.node(&region("eu-central")).await.unwrap();
    let other_desk = cluster.issue_caller("other-desk", "us-east", &[Scope::Rights]).unwrap();
    let mut other_desk = cluster.gateway_as(&other_desk).await.unwrap();
    let dora = register(&mut client, "dora.rights@example.fr").await;
    let mut codes = Vec::new();

    let first = open(&mut eu, &dora, "erasure").await.request.unwrap();
    let code = code_of(&mut eu, &first.request_id, &mut codes).await;
    assert!(verify(&mut eu, &dora.subject_ref, &first.request_id, &code).await.verified);

    // Another desk, another requester: not linked to the verified request.
    let second = other_desk
        .open_rights_request(gw::OpenRightsRequestRequest {
            subject: select_email("dora.rights@example.fr"),
            kind: "erasure".into(),
            deliver_to: select_email("dora.rights@example.fr"),
            idempotency_key: String::new(),
        })
        .await
        .expect("opened")
        .into_inner();
    let request = second.request.unwrap();
    assert_eq!(request.status, "verifying", "{request:?}");
    assert!(request.linked_to.is_empty(), "{request:?}");
    assert_eq!(second.active_request_id, request.request_id);
    assert_ne!(second.active_request_id, first.request_id, "the verified request's id is not handed out");
    assert!(second.challenge_expires_at.is_some());
    let second_code = code_of(&mut eu, &request.request_id, &mut codes).await;
    assert_ne!(second_code, code);

    // A wrong code to the verified request (its id learnt some other way) proves nothing.
    for wrong in [second_code.as_str(), "WRONGCODE0"] {
        let status = other_desk
            .verify_rights_request(gw::VerifyRightsRequestRequest {
                subject: select_email("dora.rights@example.fr"),
                request_id: first.request_id.clone(),
                code: wrong.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(!status.message().contains(wrong), "no code echoed: {}", status.message());
    }
    // Its own requester's code again: a repeated answer, still verified; and it serves.
    let again = verify(&mut eu, &dora.subject_ref, &first.request_id, &code.to_lowercase()).await;
    assert!(again.verified, "{again:?}");
    assert_eq!(status_of(&again).0, "verified");
    eu.erase(node::EraseRequest {
        subject: node_ref(&dora.subject_ref),
        request_id: first.request_id.clone(),
        ..Default::default()
    })
    .await
    .expect("the verified request serves its erasure");
}

/// An erasure made durable whose request could not then be recorded completed (the node stopped,
/// or that step failed: here the database refuses it once, by a trigger): the caller retries with
/// its idempotency key and is answered from the erasure's record, and that answer finishes the
/// request too. Before, the replayed answer skipped it, and the request stayed `in_progress` for
/// ever (listed as overdue, its other open requests never refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_right_answered_again_finishes_the_request_the_first_answer_left_in_progress() {
    use domicile_cli::cluster::database_name;
    let options = TestOptions { store: ClusterStore::Postgres, ..Default::default() };
    let cluster = TestCluster::start_with(BIN, &["eu-central"], options).await.expect("cluster starts");
    let eu = region("eu-central");
    let mut node = cluster.node(&eu).await.unwrap();
    let mut client = cluster.gateway().await.unwrap();
    let erin = register(&mut client, "erin.rights@example.fr").await;
    let request = open(&mut node, &erin, "erasure").await.request.unwrap();
    let code = code_of(&mut node, &request.request_id, &mut Vec::new()).await;
    assert!(verify(&mut node, &erin.subject_ref, &request.request_id, &code).await.verified);
    let other = open(&mut node, &erin, "access").await.request.unwrap();

    let db = database_name(&eu);
    let server = cluster.database().expect("a PostgreSQL cluster").server();
    let sql = |sql: &str| {
        let out = server.psql(&db, sql).unwrap();
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    sql("CREATE FUNCTION refuse_completed() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF convert_from(NEW.body, 'UTF8') LIKE '%\"status\":\"completed\"%' THEN RAISE EXCEPTION 'injected'; END IF; \
         RETURN NEW; END $$; \
         CREATE TRIGGER refuse_completed BEFORE INSERT OR UPDATE ON rights_tracked \
         FOR EACH ROW EXECUTE FUNCTION refuse_completed()");
    let status_of = |id: &str| {
        sql(&format!(
            "SELECT convert_from(body, 'UTF8')::json->'record'->>'status' FROM rights_tracked WHERE request_id = '{id}'"
        ))
    };
    let erase = || node::EraseRequest {
        subject: node_ref(&erin.subject_ref),
        request_id: request.request_id.clone(),
        idempotency_key: "erase-erin".into(),
        ..Default::default()
    };
    // A restriction the same way: set, its request left in progress; answered again, the request
    // is completed, so it cannot lift the restriction later.
    let ida = register(&mut client, "ida.rights@example.fr").await;
    let restriction = open(&mut node, &ida, "restriction").await.request.unwrap();
    let code = code_of(&mut node, &restriction.request_id, &mut Vec::new()).await;
    assert!(verify(&mut node, &ida.subject_ref, &restriction.request_id, &code).await.verified);
    let restrict = |restricted: bool| node::RestrictRequest {
        subject: node_ref(&ida.subject_ref),
        restricted,
        request_id: restriction.request_id.clone(),
        idempotency_key: if restricted { "restrict-ida".into() } else { String::new() },
        ..Default::default()
    };
    node.restrict(restrict(true)).await.unwrap_err();
    assert_eq!(status_of(&restriction.request_id), "in_progress");
    sql("DROP TRIGGER refuse_completed ON rights_tracked");
    let answered = node.restrict(restrict(true)).await.expect("answered again").into_inner();
    assert!(answered.restricted);
    assert_eq!(status_of(&restriction.request_id), "completed");
    let status = node.restrict(restrict(false)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "the request that set it lifted it: {status:?}");
    sql("CREATE TRIGGER refuse_completed BEFORE INSERT OR UPDATE ON rights_tracked \
         FOR EACH ROW EXECUTE FUNCTION refuse_completed()");

    let failed = node.erase(erase()).await.unwrap_err();
    assert_ne!(failed.code(), Code::Ok);
    assert_eq!(status_of(&request.request_id), "in_progress", "the erasure was made, its request not finished");
    let gone = node
        .consent_history(node::ConsentHistoryRequest { subject: node_ref(&erin.subject_ref), ..Default::default() })
        .await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound, "the erasure itself is durable");

    sql("DROP TRIGGER refuse_completed ON rights_tracked");
    let answered = node.erase(erase()).await.expect("answered again from the erasure's record").into_inner();
    assert_eq!(answered.rights_request.unwrap().status, "completed");
    assert_eq!(status_of(&request.request_id), "completed");
    assert_eq!(status_of(&other.request_id), "refused", "the subject's other open request is closed");
    // A third time changes nothing.
    node.erase(erase()).await.expect("answered again");
    assert_eq!(status_of(&request.request_id), "completed");
}

/// A restriction only narrows processing: set on receipt even when the request it names cannot
/// answer it (still waiting for its code), never refused (which would leave processing going on);
/// and once set it answers every open restriction request of the subject, so a request verified
/// before it (whichever way its requester meant it) cannot lift it: lifting needs a request
/// verified after it, or an operator's override.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restriction_is_always_set_and_an_earlier_request_cannot_lift_it() {
    let mut options = TestOptions::default();
    domicile_cluster_tests::apply_store_env(&mut options).expect("store from the environment");
    let cluster = TestCluster::start_with(BIN, &["eu-central"], options).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let mut eu = cluster.node(&region("eu-central")).await.unwrap();
    let fay = register(&mut client, "fay.rights@example.fr").await;
    let mut codes = Vec::new();
    let restrict = |restricted: bool, request_id: &str| node::RestrictRequest {
        subject: node_ref(&fay.subject_ref),
        restricted,
        request_id: request_id.into(),
        ..Default::default()
    };
    let decide = || node::DecideRequest {
        subject: node_ref(&fay.subject_ref),
        purpose: "marketing".into(),
        channel: "email".into(),
        ..Default::default()
    };

    // A request verified now, then a restriction set without naming it.
    let earlier = open(&mut eu, &fay, "restriction").await.request.unwrap();
    let code = code_of(&mut eu, &earlier.request_id, &mut codes).await;
    assert!(verify(&mut eu, &fay.subject_ref, &earlier.request_id, &code).await.verified);
    eu.restrict(restrict(true, "")).await.expect("honoured on receipt");
    let status = eu.restrict(restrict(false, &earlier.request_id)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "an earlier request lifted it: {status:?}");
    let decision = eu.decide(decide()).await.unwrap().into_inner().decision.unwrap();
    assert!(decision.reasons.iter().any(|r| r.contains("restrict")), "still restricted: {decision:?}");

    // Lifted by a request verified after it.
    let lift = open(&mut eu, &fay, "restriction").await.request.unwrap();
    assert_ne!(lift.request_id, earlier.request_id);
    let code = code_of(&mut eu, &lift.request_id, &mut codes).await;
    assert!(verify(&mut eu, &fay.subject_ref, &lift.request_id, &code).await.verified);
    eu.restrict(restrict(false, &lift.request_id)).await.expect("lifted by a request verified since");

    // Set again naming a request still waiting for its code: set all the same.
    let pending = open(&mut eu, &fay, "restriction").await.request.unwrap();
    let set = eu.restrict(restrict(true, &pending.request_id)).await.expect("a restriction is never refused");
    assert!(set.into_inner().restricted);
    let decision = eu.decide(decide()).await.unwrap().into_inner().decision.unwrap();
    assert!(decision.reasons.iter().any(|r| r.contains("restrict")), "restricted: {decision:?}");

    // Answered again from its idempotency record, a restriction does not answer requests opened
    // since it was first set (a request verified to lift it, say).
    let keyed = node::RestrictRequest { idempotency_key: "restrict-fay".into(), ..restrict(true, "") };
    eu.restrict(keyed.clone()).await.expect("restricted with a key");
    // (A request of the same second is answered too: seconds cannot tell which came first.)
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let later = open(&mut eu, &fay, "restriction").await.request.unwrap();
    let code = code_of(&mut eu, &later.request_id, &mut codes).await;
    assert!(verify(&mut eu, &fay.subject_ref, &later.request_id, &code).await.verified);
    eu.restrict(keyed).await.expect("answered again");
    eu.restrict(restrict(false, &later.request_id)).await.expect("the later request still lifts it");
    let decision = eu.decide(decide()).await.unwrap().into_inner().decision.unwrap();
    assert!(!decision.reasons.iter().any(|r| r.contains("restrict")), "lifted: {decision:?}");
}

/// A request linked to another is answered with it: refused with its reason when wrong codes
/// (sent by anyone holding its id) refuse it, completed when it is carried out. Before, a linked
/// request stayed `linked` for ever: its requester was never told, and it was never listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_request_is_answered_with_the_request_it_rides_on() {
    let mut options = TestOptions {
        node_rights: Some(RightsConfig { challenge_ttl_secs: 600, challenge_attempts: 2, ..RightsConfig::default() }),
        ..Default::default()
    };
    domicile_cluster_tests::apply_store_env(&mut options).expect("store from the environment");
    let cluster = TestCluster::start_with(BIN, &["eu-central"], options).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let mut eu = cluster.node(&region("eu-central")).await.unwrap();
    let gus = register(&mut client, "gus.rights@example.fr").await;
    let get = |id: &str| node::GetRightsRequestRequest { subject: node_ref(&gus.subject_ref), request_id: id.into() };

    // Refused by wrong codes: the linked request with it.
    let active = open(&mut eu, &gus, "access").await.request.unwrap();
    let linked = open(&mut eu, &gus, "access").await.request.unwrap();
    assert_eq!(linked.status, "linked");
    for wrong in ["WRONGCODE0", "WRONGCODE1"] {
        verify(&mut eu, &gus.subject_ref, &active.request_id, wrong).await;
    }
    let got = eu.get_rights_request(get(&linked.request_id)).await.unwrap().into_inner().request.unwrap();
    assert_eq!((got.status.as_str(), got.reason.as_str()), ("refused", "verification_failed"), "{got:?}");

    // Carried out: the linked request completed with it.
    let active = open(&mut eu, &gus, "access").await.request.unwrap();
    let linked = open(&mut eu, &gus, "access").await.request.unwrap();
    assert_eq!(linked.status, "linked");
    let code = code_of(&mut eu, &active.request_id, &mut Vec::new()).await;
    assert!(verify(&mut eu, &gus.subject_ref, &active.request_id, &code).await.verified);
    export(&mut eu, &gus.subject_ref, &active.request_id).await.expect("exported");
    let got = eu.get_rights_request(get(&linked.request_id)).await.unwrap().into_inner().request.unwrap();
    assert_eq!(got.status, "completed", "{got:?}");

    // At most as many requests are linked to one as it allows wrong codes (two here), so one code
    // faces a bounded number of guesses; the next gets a challenge of its own.
    let active = open(&mut eu, &gus, "access").await.request.unwrap();
    for _ in 0..2 {
        assert_eq!(open(&mut eu, &gus, "access").await.request.unwrap().status, "linked");
    }
    let own = open(&mut eu, &gus, "access").await;
    assert_eq!(own.request.unwrap().status, "verifying", "a third is not linked to {}", active.request_id);
    assert!(own.challenge_expires_at.is_some());
}

/// Two desks, one subject, one code. Desk B's request is linked to desk A's (no second code), and
/// B never learns A's request id. Whoever presents the code, through whichever request, verifies
/// that request only: the one the code was presented through is verified, and the other desk's
/// request cannot be acted on (it is linked to the verified one, answered with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_verifies_only_the_request_it_was_presented_through() {
    use domicile_runtime::identity::Scope;
    let mut options = TestOptions::default();
    domicile_cluster_tests::apply_store_env(&mut options).expect("store from the environment");
    let cluster = TestCluster::start_with(BIN, &["eu-central"], options).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let mut eu = cluster.node(&region("eu-central")).await.unwrap();
    let desk_b = cluster.issue_caller("desk-b", "us-east", &[Scope::Rights]).unwrap();
    let mut desk_b = cluster.gateway_as(&desk_b).await.unwrap();
    let mut codes = Vec::new();
    let open_b = |desk: &mut gw::domicile_client::DomicileClient<Channel>, kind: &str| {
        let mut desk = desk.clone();
        let kind = kind.to_owned();
        async move {
            desk.open_rights_request(gw::OpenRightsRequestRequest {
                subject: select_email("hana.rights@example.fr"),
                kind,
                deliver_to: select_email("hana.rights@example.fr"),
                idempotency_key: String::new(),
            })
            .await
            .expect("opened by desk B")
            .into_inner()
        }
    };
    let erase_b = |desk: &mut gw::domicile_client::DomicileClient<Channel>, request_id: &str| {
        let mut desk = desk.clone();
        let request_id = request_id.to_owned();
        async move {
            desk.erase(gw::EraseRequest {
                subject: select_email("hana.rights@example.fr"),
                request_id,
                ..Default::default()
            })
            .await
        }
    };
    let hana = register(&mut client, "hana.rights@example.fr").await;

    // Desk A's requester answers the code: A's request is verified; B's, linked, is not, and
    // B holds no id it could act on.
    let a = open(&mut eu, &hana, "erasure").await.request.unwrap();
    let b = open_b(&mut desk_b, "erasure").await;
    let b_request = b.request.unwrap();
    assert_eq!((b_request.status.as_str(), b_request.linked_to.as_str()), ("linked", ""));
    assert_eq!(b.active_request_id, b_request.request_id);
    let code = code_of(&mut eu, &a.request_id, &mut codes).await;
    assert!(verify(&mut eu, &hana.subject_ref, &a.request_id, &code).await.verified);
    let refused = erase_b(&mut desk_b, &b_request.request_id).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "B acted on A's verification: {refused:?}");
    let got = desk_b
        .get_rights_request(gw::GetRightsRequestRequest {
            subject: select_email("hana.rights@example.fr"),
            request_id: b_request.request_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(got.linked_to, "", "nor does reading its own request tell B the other's id");

    // The other way round: B's requester presents the code through B's request. B's request is
    // verified and serves B; A's, holding the same code's challenge, is now linked to it.
    let a = open(&mut eu, &hana, "access").await.request.unwrap();
    let b = open_b(&mut desk_b, "access").await.request.unwrap();
    let code = code_of(&mut eu, &a.request_id, &mut codes).await;
    let answered = desk_b
        .verify_rights_request(gw::VerifyRightsRequestRequest {
            subject: select_email("hana.rights@example.fr"),
            request_id: b.request_id.clone(),
            code: code.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answered.verified, "{answered:?}");
    assert_eq!(answered.request.unwrap().status, "verified");
    // Sent again through the same request (a reply lost): still verified.
    let again = desk_b
        .verify_rights_request(gw::VerifyRightsRequestRequest {
            subject: select_email("hana.rights@example.fr"),
            request_id: b.request_id.clone(),
            code: code.clone(),
        })
        .await
        .expect("the same code again")
        .into_inner();
    assert!(again.verified, "{again:?}");
    let status = export(&mut eu, &hana.subject_ref, &a.request_id).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "A acted on B's verification: {status:?}");
    let a_now = verify(&mut eu, &hana.subject_ref, &a.request_id, &code).await;
    assert!(!a_now.verified, "A's request is linked now, not verified: {a_now:?}");
    assert!(outbox(&mut eu).await.iter().all(|e| e.request_id != a.request_id), "the spent challenge left the outbox");
    export(&mut eu, &hana.subject_ref, &b.request_id).await.expect("B's verified request serves");
    let a_done = eu
        .get_rights_request(node::GetRightsRequestRequest {
            subject: node_ref(&hana.subject_ref),
            request_id: a.request_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(a_done.status, "completed", "answered with B's: {a_done:?}");

    // Wrong codes sent through a linked request refuse it alone: its opener cannot refuse the
    // other requester's request, which still takes its own code.
    let a = open(&mut eu, &hana, "rectification").await.request.unwrap();
    let b = open_b(&mut desk_b, "rectification").await.request.unwrap();
    assert_eq!(b.status, "linked");
    let mut last = None;
    for n in 0..5 {
        let answered = desk_b
            .verify_rights_request(gw::VerifyRightsRequestRequest {
                subject: select_email("hana.rights@example.fr"),
                request_id: b.request_id.clone(),
                code: format!("WRONGCODE{n}"),
            })
            .await
            .unwrap()
            .into_inner();
        last = answered.request;
    }
    let last = last.unwrap();
    assert_eq!((last.status.as_str(), last.reason.as_str()), ("refused", "verification_failed"), "{last:?}");
    let code = code_of(&mut eu, &a.request_id, &mut codes).await;
    assert!(verify(&mut eu, &hana.subject_ref, &a.request_id, &code).await.verified, "A's own code still verifies");
}
