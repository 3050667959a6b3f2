//! Rights and change events: erasure (invariant 6; on real processes, stopped and every byte they
//! wrote read), consent history, and the resumable watch stream (on a `ScenarioCluster`).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::node::v1 as node;
use domicile_cluster_tests::{Cluster as _, RegionAudit, ScenarioCluster, TestCluster, files_containing, region};
use domicile_cluster_tests::{identifier, node_ref as by_ref, select_email as by_email};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");

fn consent(
    subject: Option<gw::SubjectSelector>,
    action: common::ConsentAction,
    channel: &str,
) -> gw::RecordConsentRequest {
    gw::RecordConsentRequest {
        subject,
        purpose: "marketing".into(),
        channels: vec![channel.into()],
        action: action as i32,
        evidence: Some(common::Evidence { notice_version: "v7".into(), ..Default::default() }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_destroys_the_subject_everywhere_and_keeps_others() {
    let mut cluster = TestCluster::start(BIN, &["eu-central"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let email = "erase.probe.person@example.fr";
    let phone = "+33612345678";
    let subject = client
        .register(gw::RegisterRequest {
            jurisdiction: "FR".into(),
            identifiers: vec![identifier("email", email), identifier("phone", phone)],
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    client
        .register(gw::RegisterRequest {
            jurisdiction: "FR".into(),
            identifiers: vec![identifier("email", "stays@example.fr")],
            idempotency_key: String::new(),
        })
        .await
        .unwrap();
    client.record_consent(consent(by_email(email), common::ConsentAction::Grant, "email")).await.unwrap();
    client.record_consent(consent(by_email(email), common::ConsentAction::Withdraw, "email")).await.unwrap();

    let history = client
        .consent_history(gw::ConsentHistoryRequest { subject: by_email(email), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let states: Vec<&str> = history.entries.iter().map(|e| e.state.as_str()).collect();
    assert_eq!(states, ["granted", "withdrawn"], "the ledger keeps every record in order");
    assert_eq!(history.entries[0].evidence.as_ref().unwrap().notice_version, "v7");

    let erased = client
        .erase(gw::EraseRequest {
            subject: by_email(email),
            idempotency_key: String::new(),
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .expect("erase")
        .into_inner();
    assert_eq!(erased.subject_ref, subject.subject_ref);
    assert_eq!(erased.links_removed, 2);
    assert_eq!(erased.consent_records_erased, 2);

    // Gone for every lookup path: identifier, link, subject ref; a second erase finds nothing.
    for selector in [
        by_email(email),
        Some(gw::SubjectSelector { selector: Some(gw::subject_selector::Selector::Link(subject.links[1].clone())) }),
        Some(gw::SubjectSelector {
            selector: Some(gw::subject_selector::Selector::SubjectRef(subject.subject_ref.clone())),
        }),
    ] {
        let status = client
            .decide(gw::DecideRequest {
                subject: selector,
                purpose: "marketing".into(),
                channel: "email".into(),
                at: None,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    assert_eq!(
        client
            .erase(gw::EraseRequest {
                subject: by_email(email),
                idempotency_key: String::new(),
                override_reason: "controller_correction".into(),
                ..Default::default()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let mut eu = cluster.node(&region("eu-central")).await.unwrap();
    let status = eu
        .export(node::ExportRequest {
            subject: by_ref(&subject.subject_ref),
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "exports fail for an erased subject");
    // Other subjects are untouched.
    let other = client
        .decide(gw::DecideRequest {
            subject: by_email("stays@example.fr"),
            purpose: "marketing".into(),
            channel: "email".into(),
            at: None,
            ..Default::default()
        })
        .await
        .expect("another subject still decides");
    assert!(other.into_inner().decision.is_some());
    // A fresh gateway would not find the links either: the node no longer lists them.
    let mut listed = eu.list_links(node::ListLinksRequest { batch_size: 0 }).await.unwrap().into_inner();
    let mut links = Vec::new();
    while let Some(batch) = listed.message().await.unwrap() {
        links.extend(batch.entries);
    }
    assert_eq!(links.len(), 1, "only the other subject's link remains");

    // Raw storage holds none of the identifiers.
    cluster.stop().await;
    for needle in [email.as_bytes(), phone.as_bytes(), b"erase.probe"] {
        assert!(files_containing(cluster.dir(), needle).is_empty());
    }

    // The region's audit log verifies offline and covers registrations, consent changes,
    // decisions and the erasure, with only a PII-free proof of the latter.
    let audit = RegionAudit::of(&cluster, &region("eu-central"));
    let ok = audit.verify(BIN, true).unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stdout));
    let log = audit.lines().unwrap().join("\n");
    for kind in ["registration", "consent", "decisions", "erasure"] {
        assert!(log.contains(&format!("\"kind\":\"{kind}\"")), "audit log has a {kind} entry");
    }
    // Tamper with one entry: turn one decision's effect around inside the first decisions entry
    // (`<subject> <purpose> <channel> <effect> <reasons> <pack>`, `;`-separated).
    let lines: Vec<&str> = log.lines().collect();
    let (index, line) = lines.iter().enumerate().find(|(_, l)| l.contains("\"kind\":\"decisions\"")).unwrap();
    let tampered_line = if line.contains(" deny ") {
        line.replacen(" deny ", " allow ", 1)
    } else {
        line.replacen(" allow ", " deny ", 1)
    };
    assert_ne!(&tampered_line, line);
    audit.replace(index, &tampered_line).unwrap();
    let bad = audit.verify(BIN, true).unwrap();
    assert_eq!(bad.status.code(), Some(1), "tampering is detected");
    let report = String::from_utf8_lossy(&bad.stdout);
    assert!(report.contains(&format!("\"line\":{}", index + 1)), "the report names the entry: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_reconnects_misses_no_event() {
    let cluster = ScenarioCluster::start(BIN, &["us-east"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let mut node_client = cluster.node(&region("us-east")).await.unwrap();
    let email = "watch.me@example.com";
    let registered = client
        .register(gw::RegisterRequest {
            jurisdiction: "US".into(),
            identifiers: vec![identifier("email", email)],
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();

    let mut stream = node_client.watch(node::WatchRequest { after_sequence: None }).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().expect("the registration event");
    assert_eq!(first.kind, common::ChangeKind::Registered as i32);
    assert_eq!(first.links, registered.links);
    assert_eq!(first.subject_ref, registered.subject_ref);

    // Live events arrive as they are acknowledged.
    client.record_consent(consent(by_email(email), common::ConsentAction::Deny, "email")).await.unwrap();
    let live = stream.message().await.unwrap().expect("a live event");
    assert_eq!(live.kind, common::ChangeKind::Consent as i32);
    assert_eq!((live.purpose.as_str(), live.state.as_str()), ("marketing", "denied"));
    assert_eq!(live.channels, ["email"]);
    assert_eq!(live.links, registered.links, "events carry links, never identifiers");
    let last_seen = live.sequence;

    // Disconnect; changes keep happening.
    drop(stream);
    client.record_consent(consent(by_email(email), common::ConsentAction::Grant, "sms")).await.unwrap();
    client.record_consent(consent(by_email(email), common::ConsentAction::Withdraw, "sms")).await.unwrap();
    client
        .erase(gw::EraseRequest {
            subject: by_email(email),
            idempotency_key: String::new(),
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Resume after the last sequence seen: exactly the three missed events, in order.
    let mut resumed =
        node_client.watch(node::WatchRequest { after_sequence: Some(last_seen) }).await.unwrap().into_inner();
    let mut missed = Vec::new();
    for _ in 0..3 {
        missed.push(resumed.message().await.unwrap().expect("missed event"));
    }
    assert!(missed.iter().all(|e| e.sequence > last_seen));
    assert!(missed.windows(2).all(|w| w[0].sequence < w[1].sequence));
    let kinds: Vec<(i32, &str)> = missed.iter().map(|e| (e.kind, e.state.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (common::ChangeKind::Consent as i32, "granted"),
            (common::ChangeKind::Consent as i32, "withdrawn"),
            (common::ChangeKind::Erased as i32, ""),
        ]
    );
    assert_eq!(missed[2].links, registered.links, "the erasure event tells watchers which links to drop");
}

/// Found by a review: a merge changes the merged subject's consent in force (a withdrawal of one
/// half outranks a grant of the other), and a restriction makes every decision refuse, yet a
/// follower was told neither and kept sending. Now both reach it on every link of the subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_learns_what_a_merge_and_a_restriction_do_to_decisions() {
    let cluster = ScenarioCluster::start(BIN, &["eu-central"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let mut node_client = cluster.node(&region("eu-central")).await.unwrap();
    let register = async |client: &mut domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient<
        tonic::transport::Channel,
    >,
                          email: &str| {
        client
            .register(gw::RegisterRequest {
                jurisdiction: "DE".into(),
                identifiers: vec![identifier("email", email)],
                idempotency_key: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
    };
    let (ann, bea) = ("merge.ann@example.de", "merge.bea@example.de");
    let ann_registered = register(&mut client, ann).await;
    let bea_registered = register(&mut client, bea).await;
    let mut grant = consent(by_email(bea), common::ConsentAction::Grant, "email");
    if let Some(evidence) = grant.evidence.as_mut() {
        evidence.double_opt_in_confirmed = true;
    }
    client.record_consent(grant).await.unwrap();
    client.record_consent(consent(by_email(ann), common::ConsentAction::Withdraw, "email")).await.unwrap();
    let decide = async |client: &mut domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient<
        tonic::transport::Channel,
    >| {
        let request = gw::DecideRequest {
            subject: by_email(bea),
            purpose: "marketing".into(),
            channel: "email".into(),
            ..Default::default()
        };
        client.decide(request).await.unwrap().into_inner().decision.unwrap().effect
    };
    assert_eq!(decide(&mut client).await, common::Effect::Allow as i32, "bea's grant, before the merge");

    let mut stream = node_client.watch(node::WatchRequest { after_sequence: None }).await.unwrap().into_inner();
    let next = async |stream: &mut tonic::Streaming<common::ChangeEvent>| {
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("stream open")
    };
    // Read up to bea's grant: the follower holds bea granted, ann withdrawn.
    loop {
        let event = next(&mut stream).await;
        if event.kind == common::ChangeKind::Consent as i32 && event.subject_ref == ann_registered.subject_ref {
            break;
        }
    }
    client
        .merge(gw::MergeRequest { into: by_email(bea), from: by_email(ann), idempotency_key: String::new() })
        .await
        .unwrap();
    assert_eq!(decide(&mut client).await, common::Effect::Deny as i32, "ann's withdrawal outranks bea's grant");
    let both: Vec<String> = {
        let mut l = vec![ann_registered.links[0].clone(), bea_registered.links[0].clone()];
        l.sort();
        l
    };
    let mut told_withdrawn = false;
    loop {
        let event = next(&mut stream).await;
        if event.kind == common::ChangeKind::Consent as i32 && event.subject_ref == bea_registered.subject_ref {
            let mut links = event.links.clone();
            links.sort();
            assert_eq!(links, both, "on every link of the merged subject");
            assert_eq!(
                (event.state.as_str(), event.channels.as_slice()),
                ("withdrawn", ["email".to_owned()].as_slice())
            );
            told_withdrawn = true;
        }
        if event.kind == common::ChangeKind::Erased as i32 {
            break;
        }
    }
    assert!(told_withdrawn, "a follower applying the merge's events holds what decisions say");

    // A restriction, set and lifted, is told on the subject's links.
    let restrict = |restricted: bool| gw::RestrictRequest {
        subject: by_email(bea),
        restricted,
        override_reason: if restricted { String::new() } else { "controller_correction".into() },
        ..Default::default()
    };
    for restricted in [true, false] {
        client.restrict(restrict(restricted)).await.unwrap();
        let event = next(&mut stream).await;
        assert_eq!(event.kind, common::ChangeKind::Restricted as i32, "{event:?}");
        assert_eq!(event.restricted, restricted);
        let mut links = event.links.clone();
        links.sort();
        assert_eq!((event.subject_ref.as_str(), links), (bea_registered.subject_ref.as_str(), both.clone()));
    }

    // An identifier added to a subject that withdrew and is restricted: its link comes with
    // what the subject holds (a follower held nothing for it, and in an opt-out country sent).
    client.restrict(restrict(true)).await.unwrap();
    assert_eq!(next(&mut stream).await.kind, common::ChangeKind::Restricted as i32);
    let added = client
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", bea), identifier("phone", "+4915155544433")],
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let phone_link = added.links[1].clone();
    let registered = next(&mut stream).await;
    assert_eq!(
        (registered.kind, registered.links.clone()),
        (common::ChangeKind::Registered as i32, vec![phone_link.clone()])
    );
    let consent = next(&mut stream).await;
    assert_eq!(consent.kind, common::ChangeKind::Consent as i32, "{consent:?}");
    assert_eq!((consent.state.as_str(), consent.links.clone()), ("withdrawn", vec![phone_link.clone()]));
    let restriction = next(&mut stream).await;
    assert_eq!((restriction.kind, restriction.restricted), (common::ChangeKind::Restricted as i32, true));
    assert_eq!(restriction.links, vec![phone_link]);
}
