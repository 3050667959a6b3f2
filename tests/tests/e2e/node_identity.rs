//! Identity resolution and rights: merging subjects (a withdrawal survives an older grant,
//! cross-region merges are refused), rectification, restriction, rights-request bookkeeping (on a
//! `ScenarioCluster`), and durability of concurrent acknowledged writes across kill -9 (on real
//! processes).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_cluster_tests::pb::node::v1 as node;
use domicile_cluster_tests::{Cluster as _, ScenarioCluster, TestCluster, eventually, region};
use domicile_cluster_tests::{identifier, node_ref as key, select as by, select_ref as by_ref};
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");

async fn register(client: &mut DomicileClient<Channel>, jurisdiction: &str, ids: &[(&str, &str)]) -> String {
    client
        .register(gw::RegisterRequest {
            jurisdiction: jurisdiction.into(),
            identifiers: ids.iter().map(|(k, v)| identifier(k, v)).collect(),
            idempotency_key: String::new(),
        })
        .await
        .expect("register")
        .into_inner()
        .subject_ref
}

async fn consent(
    client: &mut DomicileClient<Channel>,
    subject: Option<gw::SubjectSelector>,
    action: common::ConsentAction,
    captured_at: i64,
) -> gw::RecordConsentResponse {
    client
        .record_consent(gw::RecordConsentRequest {
            subject,
            purpose: "marketing".into(),
            channels: vec!["voice".into()],
            action: action as i32,
            captured_at: Some(domicile_proto::prost_types::Timestamp { seconds: captured_at, nanos: 0 }),
            ..Default::default()
        })
        .await
        .expect("record consent")
        .into_inner()
}

async fn decide(client: &mut DomicileClient<Channel>, subject: Option<gw::SubjectSelector>) -> common::Decision {
    client
        .decide(gw::DecideRequest {
            subject,
            purpose: "marketing".into(),
            channel: "voice".into(),
            at: None,
            ..Default::default()
        })
        .await
        .expect("decide")
        .into_inner()
        .decision
        .expect("a decision")
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_keeps_a_withdrawal_over_an_older_grant_and_moves_everything() {
    let cluster = ScenarioCluster::start(BIN, &["eu-central"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let email = "merge.into@example.de";
    let phone = "+49 151 2222 3333";
    let into = register(&mut client, "DE", &[("email", email)]).await;
    let from = register(&mut client, "DE", &[("phone", phone)]).await;
    assert_ne!(into, from);

    // `into` withdrew an hour ago; `from` holds a grant captured two hours ago but recorded
    // later (a delayed batch). After the merge the withdrawal must stand.
    consent(&mut client, by("email", email), common::ConsentAction::Withdraw, now() - 3600).await;
    consent(&mut client, by("phone", phone), common::ConsentAction::Grant, now() - 7200).await;
    assert_eq!(decide(&mut client, by("phone", phone)).await.effect, common::Effect::Allow as i32);
    client
        .record_interaction(gw::RecordInteractionRequest {
            subject: by("phone", phone),
            channel: "voice".into(),
            kind: "call".into(),
            intent: "contract.cancel".into(),
            summary: "wants to cancel".into(),
            open: true,
            ..Default::default()
        })
        .await
        .unwrap();

    let merged = client
        .merge(gw::MergeRequest { into: by("email", email), from: by("phone", phone), idempotency_key: String::new() })
        .await
        .expect("merge")
        .into_inner();
    assert_eq!(merged.subject_ref, into);
    assert_eq!((merged.links_moved, merged.consent_records_moved, merged.interactions_moved), (1, 1, 1));

    // The phone now names `into`, whose withdrawal is in force.
    let d = decide(&mut client, by("phone", phone)).await;
    assert_eq!(d.subject_ref, into);
    assert_eq!(d.effect, common::Effect::Deny as i32, "an older grant never overrides a withdrawal: {d:?}");
    let history = client
        .consent_history(gw::ConsentHistoryRequest { subject: by("email", email), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(history.into_inner().entries.len(), 2, "both ledgers are kept");
    let context = client
        .get_context(gw::GetContextRequest { subject: by("email", email), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(context.open_intents, ["contract.cancel"]);
    let resolved =
        client.resolve(gw::ResolveRequest { identifier: Some(identifier("phone", phone)) }).await.unwrap().into_inner();
    assert_eq!(resolved.subject_ref, into, "the gateway directory names `into`");

    // `from` is gone.
    let status = client
        .decide(gw::DecideRequest {
            subject: by_ref(&from),
            purpose: "marketing".into(),
            channel: "voice".into(),
            at: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let mut eu = cluster.node(&region("eu-central")).await.unwrap();
    let status = eu
        .export(node::ExportRequest {
            subject: key(&from),
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // The node's change events let any gateway end consistent: a fresh gateway, built from the
    // node's snapshot and events, resolves the phone to `into` too.
    let fresh = cluster.start_gateway("after-merge", &[]).await.unwrap();
    let fresh_client = cluster.gateway_at(fresh.addr).await.unwrap();
    let found = eventually(Duration::from_secs(10), || {
        let mut c = fresh_client.clone();
        async move {
            c.resolve(gw::ResolveRequest { identifier: Some(identifier("phone", phone)) })
                .await
                .ok()
                .map(|r| r.into_inner().subject_ref)
        }
    })
    .await;
    assert_eq!(found.as_deref(), Some(into.as_str()));

    // Merging a subject with itself is bad input.
    let status = client
        .merge(gw::MergeRequest { into: by("email", email), from: by("phone", phone), idempotency_key: String::new() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_across_regions_or_jurisdictions_are_refused() {
    let cluster = ScenarioCluster::start(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let de = register(&mut client, "DE", &[("email", "cross.de@example.de")]).await;
    let us = register(&mut client, "US", &[("email", "cross.us@example.com")]).await;
    let fr = register(&mut client, "FR", &[("email", "cross.fr@example.fr")]).await;

    let status = client
        .merge(gw::MergeRequest { into: by_ref(&de), from: by_ref(&us), idempotency_key: String::new() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("different regions"), "{status:?}");
    // The node refuses too (defence in depth), before touching anything.
    let mut eu = cluster.node(&region("eu-central")).await.unwrap();
    let status = eu
        .merge(node::MergeRequest { into: key(&de), from: key(&us), idempotency_key: String::new() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("different regions"), "{status:?}");

    // Same region, different jurisdictions (different packs): refused as well.
    let status = client
        .merge(gw::MergeRequest { into: by_ref(&de), from: by_ref(&fr), idempotency_key: String::new() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("jurisdictions"), "{status:?}");

    // Nothing changed: all three still decide.
    for subject in [&de, &us, &fr] {
        let d = decide(&mut client, by_ref(subject)).await;
        assert_eq!(&d.subject_ref, subject);
    }
    let status = client
        .merge(gw::MergeRequest { into: by_ref(&de), from: None, idempotency_key: String::new() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("from"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rectify_restrict_and_rights_requests_carry_the_pack_deadline() {
    let cluster = ScenarioCluster::start(BIN, &["eu-central"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let old_email = "rectify.old@example.de";
    let new_email = "rectify.new@example.de";
    let phone = "+49 151 4444 5555";
    let subject = register(&mut client, "DE", &[("email", old_email), ("phone", phone)]).await;
    consent(&mut client, by("phone", phone), common::ConsentAction::Grant, now() - 60).await;

    let rectified = client
        .rectify(gw::RectifyRequest {
            subject: by("phone", phone),
            add_identifiers: vec![identifier("email", new_email)],
            remove_identifiers: vec![identifier("email", old_email)],
            set_profile: [("preferred_name".to_owned(), "Anni".to_owned())].into(),
            remove_profile: vec![],
            idempotency_key: String::new(),
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .expect("rectify")
        .into_inner();
    assert_eq!((rectified.links_added, rectified.links_removed), (1, 1));
    let request = rectified.rights_request.expect("a rights request");
    assert_eq!((request.kind.as_str(), request.status.as_str()), ("rectification", "completed"));
    assert_eq!(request.request_id.len(), 32);
    let received = request.received_at.unwrap().seconds;
    let deadline = request.deadline_at.unwrap().seconds;
    // DE inherits the GDPR's one month from the EU baseline: 28 to 31 days.
    assert!((28 * 86_400..=31 * 86_400).contains(&(deadline - received)), "{request:?}");
    assert!(request.deadline_basis.contains("de@") && request.deadline_basis.contains("1 month"), "{request:?}");
    // Extendable by two more months on notice, and cited.
    let extended = request.extended_deadline_at.unwrap().seconds;
    assert!((59 * 86_400..=62 * 86_400).contains(&(extended - deadline)), "{request:?}");
    assert!(request.citation.contains("Art. 12(3)"), "{request:?}");

    // The old email no longer names anyone; the new one does.
    let status = client.resolve(gw::ResolveRequest { identifier: Some(identifier("email", old_email)) }).await;
    assert_eq!(status.unwrap_err().code(), Code::NotFound);
    assert_eq!(decide(&mut client, by("email", new_email)).await.subject_ref, subject);
    // An identifier of another subject cannot be taken over by rectification.
    register(&mut client, "DE", &[("email", "someone.else@example.de")]).await;
    let status = client
        .rectify(gw::RectifyRequest {
            subject: by("phone", phone),
            add_identifiers: vec![identifier("email", "someone.else@example.de")],
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(!status.message().contains("someone.else"));
    let status = client
        .rectify(gw::RectifyRequest {
            subject: by("phone", phone),
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(status.unwrap_err().code(), Code::InvalidArgument, "an empty rectification is bad input");

    // Restriction: every decision denies, naming the restriction, until lifted.
    assert_eq!(decide(&mut client, by("phone", phone)).await.effect, common::Effect::Allow as i32);
    let restricted = client
        .restrict(gw::RestrictRequest {
            subject: by("phone", phone),
            restricted: true,
            idempotency_key: String::new(),
            ..Default::default()
        })
        .await
        .expect("restrict")
        .into_inner();
    assert!(restricted.restricted);
    assert_eq!(restricted.rights_request.unwrap().kind, "restriction");
    for channel in ["voice", "email", "post"] {
        let d = client
            .decide(gw::DecideRequest {
                subject: by("phone", phone),
                purpose: "marketing".into(),
                channel: channel.into(),
                at: None,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .decision
            .unwrap();
        assert_eq!(d.effect, common::Effect::Deny as i32);
        assert_eq!(d.reasons, ["de.restricted"]);
        assert_eq!(d.explanation, "processing restricted at the subject's request (right to restriction)");
    }
    client
        .restrict(gw::RestrictRequest {
            subject: by("phone", phone),
            restricted: false,
            idempotency_key: String::new(),
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(decide(&mut client, by("phone", phone)).await.effect, common::Effect::Allow as i32);

    // Export stays in-region (node only) and is booked as an access request.
    let mut eu = cluster.node(&region("eu-central")).await.unwrap();
    let export = eu
        .export(node::ExportRequest {
            subject: key(&subject),
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(export.rights_request.unwrap().kind, "access");
    let document = String::from_utf8(export.document).unwrap();
    assert!(document.contains(r#""preferred_name": "Anni""#), "{document}");
    assert!(document.contains(new_email) && !document.contains(old_email), "{document}");
    assert!(document.contains(r#""interactions": ["#) && document.contains(r#""rights_requests": ["#));

    let listed = eu.list_rights_requests(node::ListRightsRequestsRequest { subject: key(&subject) }).await.unwrap();
    let kinds: Vec<String> = listed.into_inner().requests.into_iter().map(|r| r.kind).collect();
    assert_eq!(kinds, ["rectification", "restriction", "restriction", "access"]);

    let erased = client
        .erase(gw::EraseRequest {
            subject: by("phone", phone),
            idempotency_key: String::new(),
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erased.rights_request.unwrap().kind, "erasure");
    let status = eu.list_rights_requests(node::ListRightsRequestsRequest { subject: key(&subject) }).await;
    assert_eq!(status.unwrap_err().code(), Code::NotFound);
}

/// One acknowledged write: which subject, what state, at which ledger position.
#[derive(Debug, Clone)]
struct Ack {
    subject: String,
    state: &'static str,
    sequence: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_acknowledged_writes_survive_kill_9_of_the_node() {
    const WRITERS: usize = 8;
    const SUBJECTS_PER_WRITER: usize = 4;
    let mut cluster = TestCluster::start_on_env_store(BIN, &["eu-central"]).await.expect("cluster starts");
    let eu = region("eu-central");
    let mut client = cluster.gateway().await.unwrap();
    let mut subjects = Vec::new();
    for w in 0..WRITERS {
        let mut mine = Vec::new();
        for s in 0..SUBJECTS_PER_WRITER {
            mine.push(register(&mut client, "DE", &[("crm_account", &format!("kill9-{w}-{s}"))]).await);
        }
        subjects.push(mine);
    }

    let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for mine in subjects {
        let mut client = client.clone();
        let acks = Arc::clone(&acks);
        let killed = Arc::clone(&killed);
        writers.spawn(async move {
            // Bounded so a kill that never comes cannot hang the test.
            for i in 0..5_000usize {
                let subject = &mine[i % mine.len()];
                let (action, state) = if i % 2 == 0 {
                    (common::ConsentAction::Grant, "granted")
                } else {
                    (common::ConsentAction::Withdraw, "withdrawn")
                };
                let reply = client
                    .record_consent(gw::RecordConsentRequest {
                        subject: by_ref(subject),
                        purpose: "marketing".into(),
                        channels: vec!["email".into()],
                        action: action as i32,
                        ..Default::default()
                    })
                    .await;
                match reply {
                    Ok(r) => acks.lock().unwrap().push(Ack {
                        subject: subject.clone(),
                        state,
                        sequence: r.into_inner().sequence,
                    }),
                    // After the kill: stop; anything not acknowledged may be lost.
                    Err(_) if killed.load(Ordering::SeqCst) => return,
                    // Before it (shed under load, a busy machine): not acknowledged, go on.
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        });
    }
    // Kill -9 mid-stream, once a good number of writes were acknowledged.
    let enough = eventually(Duration::from_secs(60), || {
        let n = acks.lock().unwrap().len();
        async move { (n >= 400).then_some(n) }
    })
    .await;
    assert!(enough.is_some(), "writers made progress: {} acknowledged", acks.lock().unwrap().len());
    killed.store(true, Ordering::SeqCst);
    cluster.cluster.kill_node(&eu).await.unwrap();
    while writers.join_next().await.is_some() {}
    let acks = acks.lock().unwrap().clone();

    cluster.cluster.restart_node(&eu).await.expect("node restarts on its data");
    let mut by_subject: std::collections::BTreeMap<&str, Vec<&Ack>> = Default::default();
    for ack in &acks {
        by_subject.entry(&ack.subject).or_default().push(ack);
    }
    for (subject, expected) in by_subject {
        let history = eventually(Duration::from_secs(30), || {
            let mut c = client.clone();
            async move {
                c.consent_history(gw::ConsentHistoryRequest { subject: by_ref(subject), ..Default::default() })
                    .await
                    .ok()
            }
        })
        .await
        .expect("history after restart")
        .into_inner();
        for ack in expected {
            let entry = history.entries.iter().find(|e| e.sequence == ack.sequence);
            let entry = entry.unwrap_or_else(|| panic!("acknowledged write {ack:?} lost after kill -9"));
            assert_eq!(entry.state, ack.state, "{ack:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_the_law_fixes_no_period_the_request_says_so_and_invents_none() {
    let cluster = ScenarioCluster::start(BIN, &["us-east"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let email = "no.deadline@example.com";
    register(&mut client, "US", &[("email", email)]).await;
    let rectified = client
        .rectify(gw::RectifyRequest {
            subject: by("email", email),
            add_identifiers: vec![],
            remove_identifiers: vec![],
            set_profile: [("preferred_name".to_owned(), "Sam".to_owned())].into(),
            remove_profile: vec![],
            idempotency_key: String::new(),
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .expect("rectify")
        .into_inner();
    let request = rectified.rights_request.expect("a rights request");
    assert_eq!(request.status, "completed");
    // No federal US period for these rights: none is made up (no 30 days), the pack says the law
    // fixes none and cites where.
    assert_eq!((request.deadline_at, request.extended_deadline_at), (None, None), "{request:?}");
    assert!(
        request.deadline_basis.starts_with("pack us@") && request.deadline_basis.contains("the law fixes no period"),
        "{request:?}"
    );
    assert!(request.citation.contains("No federal general privacy statute"), "{request:?}");
}
