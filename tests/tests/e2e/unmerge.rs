//! Unmerge (issue 22): a merge of two people who turn out to be two people is undone. Each half
//! gets back its identifiers and the consent it brought; entries since the merge follow the
//! identifier they were captured through; entries captured by subject ref stay with both,
//! flagged, a flagged grant counting for neither. Checked against a control pair that was never
//! merged and was given the same consent, on a real cluster (and on PostgreSQL in `.ci/run`),
//! with a second gateway and a watcher that must see the split.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::time::Duration;

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::{
    Cluster as _, TestCluster, TestOptions, apply_store_env, eventually, identifier, select, select_email, select_ref,
};
use tonic::Code;
use tonic::transport::Channel;

type Client = gw::domicile_client::DomicileClient<Channel>;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");

async fn register(client: &mut Client, email: &str) -> String {
    let request = gw::RegisterRequest {
        jurisdiction: "DE".into(),
        identifiers: vec![identifier("email", email)],
        ..Default::default()
    };
    client.register(request).await.expect("register").into_inner().subject_ref
}

async fn consent(
    client: &mut Client,
    subject: Option<gw::SubjectSelector>,
    purpose: &str,
    channel: &str,
    action: common::ConsentAction,
) {
    client
        .record_consent(gw::RecordConsentRequest {
            subject,
            purpose: purpose.into(),
            channels: vec![channel.into()],
            action: action as i32,
            evidence: Some(common::Evidence {
                notice_version: "notice-v1".into(),
                source_system: "preference-centre".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("record consent");
}

/// (purpose, channel) → (effect, deciding rules) for a subject, over the cells the test touches.
async fn decisions(client: &mut Client, subject: Option<gw::SubjectSelector>) -> Vec<(String, i32, Vec<String>)> {
    let mut out = Vec::new();
    for purpose in ["marketing", "survey"] {
        for channel in ["email", "sms", "voice", "post"] {
            let decision = client
                .decide(gw::DecideRequest {
                    subject: subject.clone(),
                    purpose: purpose.into(),
                    channel: channel.into(),
                    ..Default::default()
                })
                .await
                .expect("decide")
                .into_inner()
                .decision
                .expect("a decision");
            out.push((format!("{purpose}/{channel}"), decision.effect, decision.reasons));
        }
    }
    out
}

fn effect_of(table: &[(String, i32, Vec<String>)], cell: &str) -> common::Effect {
    let (_, effect, _) = table.iter().find(|(c, ..)| c == cell).expect("cell decided");
    common::Effect::try_from(*effect).expect("an effect")
}

fn unmerge_request(subject: &str, merged: &str, key: &str) -> gw::UnmergeRequest {
    gw::UnmergeRequest {
        subject: select_ref(subject),
        merged_subject_ref: merged.to_owned(),
        idempotency_key: key.to_owned(),
    }
}

async fn resolve(client: &mut Client, email: &str) -> Option<(String, String)> {
    let reply = client.resolve(gw::ResolveRequest { identifier: Some(identifier("email", email)) }).await.ok()?;
    let reply = reply.into_inner();
    Some((reply.link, reply.subject_ref))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmerge_gives_each_half_the_decisions_it_would_have_had_without_the_merge() {
    use common::ConsentAction::{Grant, Withdraw};
    let mut options = TestOptions { gateways: Some(2), ..TestOptions::default() };
    apply_store_env(&mut options).expect("store from the environment");
    let cluster = TestCluster::start_with(BIN, &["eu-central"], options).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let other_gateway = cluster.gateway_at_index(1).await.unwrap();

    // Two people taken for one, and a control pair given the same consent, never merged.
    let ann = register(&mut client, "ann@example.com").await;
    let bea = register(&mut client, "bea@example.com").await;
    let control_ann = register(&mut client, "control-ann@example.com").await;
    let control_bea = register(&mut client, "control-bea@example.com").await;
    let (ann_link, _) = resolve(&mut client, "ann@example.com").await.expect("ann resolves");
    for (a, b) in [("ann@example.com", "bea@example.com"), ("control-ann@example.com", "control-bea@example.com")] {
        consent(&mut client, select_email(a), "marketing", "email", Grant).await;
        consent(&mut client, select_email(b), "marketing", "sms", Grant).await;
        // Later than the grant above: in the merged subject it wins.
        consent(&mut client, select_email(b), "marketing", "email", Withdraw).await;
    }

    let merged = client
        .merge(gw::MergeRequest { into: select_ref(&bea), from: select_ref(&ann), idempotency_key: String::new() })
        .await
        .expect("merge")
        .into_inner();
    assert_eq!(merged.subject_ref, bea);
    let before = decisions(&mut client, select_email("ann@example.com")).await;
    assert_eq!(effect_of(&before, "marketing/email"), common::Effect::Deny, "merged: the later withdrawal wins");

    // Since the merge: through each person's identifier, and twice by subject ref (whose?).
    consent(&mut client, select_email("ann@example.com"), "marketing", "voice", Grant).await;
    consent(&mut client, select_email("control-ann@example.com"), "marketing", "voice", Grant).await;
    consent(&mut client, select_email("bea@example.com"), "survey", "email", Grant).await;
    consent(&mut client, select_email("control-bea@example.com"), "survey", "email", Grant).await;
    consent(&mut client, select_ref(&bea), "survey", "sms", Grant).await;
    consent(&mut client, select_ref(&bea), "marketing", "post", Withdraw).await;
    for control in [&control_ann, &control_bea] {
        consent(&mut client, select_ref(control), "marketing", "post", Withdraw).await;
    }
    let merged_now = decisions(&mut client, select_ref(&bea)).await;
    assert_eq!(effect_of(&merged_now, "survey/sms"), common::Effect::Allow, "merged: the grant by ref counts");

    let mut watch = client.watch(gw::WatchRequest { resume_token: String::new() }).await.unwrap().into_inner();

    let unmerged = client.unmerge(unmerge_request(&bea, &ann, "unmerge-1")).await.expect("unmerge").into_inner();
    // Both halves get new refs: the merged ref is retired, so a ref kept from before reaches
    // neither person.
    assert_ne!(unmerged.subject_ref, bea);
    assert_ne!(unmerged.restored_subject_ref, ann, "the merged-away subject comes back under a new ref");
    let kept = unmerged.subject_ref.clone();
    assert_eq!(unmerged.links_moved, 1);
    assert_eq!(unmerged.flagged_for_review, 2, "the two entries recorded by ref");
    let restored = unmerged.restored_subject_ref.clone();

    // Each half decides as its never-merged control does, flagged entries aside: the grant by
    // ref counts for neither (no allow nobody can account for), the withdrawal by ref for both.
    let ann_after = decisions(&mut client, select_email("ann@example.com")).await;
    let bea_after = decisions(&mut client, select_email("bea@example.com")).await;
    assert_eq!(ann_after, decisions(&mut client, select_email("control-ann@example.com")).await);
    assert_eq!(bea_after, decisions(&mut client, select_email("control-bea@example.com")).await);
    assert_eq!(effect_of(&ann_after, "marketing/email"), common::Effect::Allow, "Ann's own grant, as before the merge");
    assert_eq!(effect_of(&bea_after, "marketing/email"), common::Effect::Deny);
    assert_eq!(effect_of(&ann_after, "marketing/voice"), common::Effect::Allow);
    assert_eq!(effect_of(&bea_after, "marketing/voice"), common::Effect::Deny);
    for half in [&ann_after, &bea_after] {
        assert_eq!(effect_of(half, "survey/sms"), common::Effect::Deny, "a flagged grant is no allow");
        assert_eq!(effect_of(half, "marketing/post"), common::Effect::Deny, "a flagged withdrawal holds for both");
    }

    // Each half's history shows the flagged entries; the restored one names its new ref.
    let history = client
        .consent_history(gw::ConsentHistoryRequest { subject: select_email("ann@example.com"), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.subject_ref, restored);
    assert_eq!(history.entries.iter().filter(|e| e.review).count(), 2);
    assert_eq!(history.entries.len(), 4, "Ann's grant, her voice grant, the two flagged entries");

    // The gateway that served it, the other gateway (from the change events) and a watcher all
    // see the split.
    assert_eq!(resolve(&mut client, "ann@example.com").await.map(|(_, s)| s), Some(restored.clone()));
    assert_eq!(resolve(&mut client, "bea@example.com").await.map(|(_, s)| s), Some(kept.clone()));
    for old in [&bea, &ann] {
        let status = client
            .decide(gw::DecideRequest {
                subject: select_ref(old),
                purpose: "marketing".into(),
                channel: "email".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "a retired ref names nobody");
    }
    let seen = eventually(Duration::from_secs(20), || {
        let mut other = other_gateway.clone();
        let restored = restored.clone();
        async move { (resolve(&mut other, "ann@example.com").await?.1 == restored).then_some(()) }
    })
    .await;
    assert!(seen.is_some(), "the other gateway's directory follows the split");
    let mut removed_from_bea = false;
    let mut registered_to_restored = false;
    let mut restored_consent = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !(removed_from_bea && registered_to_restored && restored_consent.len() >= 2) {
        let event = tokio::time::timeout_at(deadline, watch.message()).await.expect("events arrive in time");
        let event = event.unwrap().expect("stream open").event.expect("an event");
        let kind = common::ChangeKind::try_from(event.kind).unwrap();
        if event.subject_ref == bea && kind == common::ChangeKind::Erased && event.links.contains(&ann_link) {
            removed_from_bea = true;
        }
        if event.subject_ref == restored && kind == common::ChangeKind::Registered {
            assert_eq!(event.links, vec![ann_link.clone()]);
            registered_to_restored = true;
        }
        if event.subject_ref == restored && kind == common::ChangeKind::Consent {
            assert!(registered_to_restored, "a half's consent is announced after its links");
            restored_consent.push((event.purpose.clone(), event.state.clone(), event.channels.clone()));
        }
    }
    assert!(restored_consent.contains(&("marketing".into(), "granted".into(), vec!["email".into(), "voice".into()])));

    // A repeat with the same key answers as the first time; the merge is gone from the lineage.
    let again = client.unmerge(unmerge_request(&bea, &ann, "unmerge-1")).await.expect("replayed").into_inner();
    assert_eq!(again.restored_subject_ref, restored);
    let status = client.unmerge(unmerge_request(&bea, &ann, "")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(!status.message().contains(&ann[ann.len() - 32..]), "no ref echoed: {}", status.message());
    // Never merged: nothing to undo. A ref of another region: refused before any node is called.
    let status = client.unmerge(unmerge_request(&control_bea, &control_ann, "")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let foreign = format!("us-east/{}", &control_ann[control_ann.len() - 32..]);
    let status = client.unmerge(unmerge_request(&control_bea, &foreign, "")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // A merge of the restored half into the other is possible again, and undone again.
    let merged = client
        .merge(gw::MergeRequest {
            into: select_ref(&kept),
            from: select_ref(&restored),
            idempotency_key: String::new(),
        })
        .await
        .expect("merge again");
    assert_eq!(merged.into_inner().subject_ref, kept);
    let split_again = client.unmerge(unmerge_request(&kept, &restored, "")).await.expect("second unmerge").into_inner();
    assert_eq!(split_again.flagged_for_review, 2, "entries flagged by the first unmerge stay flagged");
    assert_eq!(decisions(&mut client, select_email("ann@example.com")).await, ann_after);
    assert_eq!(decisions(&mut client, select_email("bea@example.com")).await, bea_after);
}

/// A withdrawal through one person's identifier racing the unmerge that gives that identifier
/// back to its person: wherever the race falls, the acknowledged withdrawal holds for that person
/// (never lands on the other half because the link moved while the write was under way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_racing_an_unmerge_holds_for_the_person_whose_identifier_it_came_through() {
    use common::ConsentAction::{Grant, Withdraw};
    let cluster = TestCluster::start_on_env_store(BIN, &["eu-central"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    for round in 0..25 {
        let ann_email = format!("race-ann-{round}@example.com");
        let bea_email = format!("race-bea-{round}@example.com");
        let ann = register(&mut client, &ann_email).await;
        let bea = register(&mut client, &bea_email).await;
        consent(&mut client, select_email(&ann_email), "marketing", "email", Grant).await;
        consent(&mut client, select_email(&bea_email), "marketing", "email", Grant).await;
        client
            .merge(gw::MergeRequest { into: select_ref(&bea), from: select_ref(&ann), idempotency_key: String::new() })
            .await
            .expect("merge");
        // Withdrawals through Ann's identifier keep coming while the unmerge runs (some resolve
        // the link before it commits and write after).
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for _ in 0..4 {
            let mut writer = client.clone();
            let selector = select_email(&ann_email);
            let done = done.clone();
            writers.push(tokio::spawn(async move {
                let mut sent = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) || sent == 0 {
                    consent(&mut writer, selector.clone(), "marketing", "email", Withdraw).await;
                    sent += 1;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let unmerged = client.unmerge(unmerge_request(&bea, &ann, "")).await.expect("unmerge").into_inner();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        for writer in writers {
            writer.await.expect("every withdrawal is acknowledged");
        }
        let ann_after = decisions(&mut client, select_email(&ann_email)).await;
        let bea_after = decisions(&mut client, select_email(&bea_email)).await;
        assert_eq!(effect_of(&ann_after, "marketing/email"), common::Effect::Deny, "round {round}: Ann withdrew");
        assert_eq!(effect_of(&bea_after, "marketing/email"), common::Effect::Allow, "round {round}: Bea did not");
        assert_eq!(unmerged.flagged_for_review, 0, "round {round}: everything came through an identifier");
    }
}

/// A merge seen by another gateway through its watch: every capture through the merged-away
/// identifier at that gateway, before, during and after it learns of the merge, is acknowledged
/// (none finds the identifier unknown while the gateway moves it to the remaining subject), and
/// the withdrawals hold for the merged person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_seen_by_another_gateway_never_leaves_the_moved_identifier_unknown() {
    use common::ConsentAction::{Grant, Withdraw};
    let mut options = TestOptions { gateways: Some(2), ..TestOptions::default() };
    apply_store_env(&mut options).expect("store from the environment");
    let cluster = TestCluster::start_with(BIN, &["eu-central"], options).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let other = cluster.gateway_at_index(1).await.unwrap();
    for round in 0..15 {
        let ann_email = format!("merge-seen-ann-{round}@example.com");
        let bea_email = format!("merge-seen-bea-{round}@example.com");
        let ann = register(&mut client, &ann_email).await;
        let bea = register(&mut client, &bea_email).await;
        consent(&mut client, select_email(&bea_email), "marketing", "email", Grant).await;
        let mut watcher = other.clone();
        let known = eventually(Duration::from_secs(10), || {
            let mut watcher = watcher.clone();
            let ann_email = ann_email.clone();
            async move { resolve(&mut watcher, &ann_email).await.map(|_| ()) }
        })
        .await;
        assert!(known.is_some(), "round {round}: the other gateway never learnt of Ann");
        // Withdrawals through Ann's identifier at the other gateway, until it has moved her
        // identifier to Bea (and a few after); a refusal panics its writer.
        let moved = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for _ in 0..3 {
            let mut writer = other.clone();
            let (selector, moved) = (select_email(&ann_email), moved.clone());
            writers.push(tokio::spawn(async move {
                let mut after = 0;
                while after < 3 {
                    consent(&mut writer, selector.clone(), "marketing", "email", Withdraw).await;
                    if moved.load(std::sync::atomic::Ordering::SeqCst) {
                        after += 1;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        client
            .merge(gw::MergeRequest { into: select_ref(&bea), from: select_ref(&ann), idempotency_key: String::new() })
            .await
            .expect("merge");
        let seen = eventually(Duration::from_secs(10), || {
            let mut watcher = watcher.clone();
            let (ann_email, bea) = (ann_email.clone(), bea.clone());
            async move { resolve(&mut watcher, &ann_email).await.filter(|(_, subject)| *subject == bea).map(|_| ()) }
        })
        .await;
        assert!(seen.is_some(), "round {round}: the other gateway never moved Ann's identifier to Bea");
        moved.store(true, std::sync::atomic::Ordering::SeqCst);
        for writer in writers {
            writer.await.expect("every withdrawal through the other gateway is acknowledged");
        }
        let after = decisions(&mut watcher, select_email(&ann_email)).await;
        assert_eq!(
            effect_of(&after, "marketing/email"),
            common::Effect::Deny,
            "round {round}: the merged person withdrew"
        );
    }
}

/// A merge retried with its idempotency key after it was undone: the gateway must not map the
/// identifiers back to the merged subject, and nobody is routed to the wrong person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_replayed_after_its_unmerge_routes_nobody_to_the_wrong_person() {
    use common::ConsentAction::{Grant, Withdraw};
    let cluster = TestCluster::start_on_env_store(BIN, &["eu-central"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let ann = register(&mut client, "replay-ann@example.com").await;
    let bea = register(&mut client, "replay-bea@example.com").await;
    consent(&mut client, select_email("replay-bea@example.com"), "marketing", "sms", Grant).await;
    consent(&mut client, select_email("replay-ann@example.com"), "marketing", "sms", Withdraw).await;
    let merge = gw::MergeRequest { into: select_ref(&bea), from: select_ref(&ann), idempotency_key: "m-1".into() };
    client.merge(merge.clone()).await.expect("merge");
    let unmerged = client.unmerge(unmerge_request(&bea, &ann, "")).await.expect("unmerge").into_inner();
    // Its answer was sealed with the merged subject's key, retired with it: the retry learns the
    // write was applied and its subject is gone, and nothing is routed anywhere.
    let status = client.merge(merge).await.expect_err("the merged subject is retired");
    assert_eq!(status.code(), Code::AlreadyExists);
    let resolved = resolve(&mut client, "replay-ann@example.com").await.map(|(_, s)| s);
    assert_eq!(resolved, Some(unmerged.restored_subject_ref.clone()));
    let ann_now = decisions(&mut client, select_email("replay-ann@example.com")).await;
    assert_eq!(effect_of(&ann_now, "marketing/sms"), common::Effect::Deny, "Ann withdrew");
    let bea_now = decisions(&mut client, select_email("replay-bea@example.com")).await;
    assert_eq!(effect_of(&bea_now, "marketing/sms"), common::Effect::Allow, "Bea granted");
}

/// A consent to transfers recorded by ref on the merged subject cannot be attributed: after the
/// unmerge neither half's data may leave the region on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flagged_transfer_consent_lets_no_half_s_data_leave_the_region() {
    use domicile_cluster_tests::ScenarioCluster;
    use domicile_runtime::identity::Scope;
    let cluster = ScenarioCluster::start(BIN, &["eu-central", "sa-east"]).await.expect("cluster starts");
    let scopes = [Scope::Decide, Scope::Capture, Scope::Context, Scope::Rights];
    let mut eu = cluster.gateway_as(&cluster.issue_caller("agent-eu", "eu-central", &scopes).unwrap()).await.unwrap();
    let mut sa = cluster.gateway_as(&cluster.issue_caller("agent-sa", "sa-east", &scopes).unwrap()).await.unwrap();
    let ann = register(&mut eu, "transfer-ann@example.de").await;
    let bea = register(&mut eu, "transfer-bea@example.de").await;
    let context = |subject: &str| gw::GetContextRequest {
        subject: select_ref(subject),
        purpose: "service".into(),
        ..Default::default()
    };
    eu.merge(gw::MergeRequest { into: select_ref(&bea), from: select_ref(&ann), idempotency_key: String::new() })
        .await
        .expect("merge");
    // Someone's explicit consent to the transfer, recorded by ref on the merged subject.
    eu.record_consent(gw::RecordConsentRequest {
        subject: select_ref(&bea),
        purpose: "service".into(),
        channels: vec![],
        action: common::ConsentAction::Grant as i32,
        evidence: Some(common::Evidence {
            notice_version: "transfer-notice-v1".into(),
            consent_kind: "explicit_transfer".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("transfer consent");
    assert!(sa.get_context(context(&bea)).await.is_ok(), "merged: the consent counts");
    let unmerged = eu.unmerge(unmerge_request(&bea, &ann, "")).await.expect("unmerge").into_inner();
    assert_eq!(unmerged.flagged_for_review, 1);
    for half in [&unmerged.subject_ref, &unmerged.restored_subject_ref] {
        let status = sa.get_context(context(half)).await.expect_err("no transfer on a flagged consent");
        assert_eq!(status.code(), Code::PermissionDenied);
    }
}

/// A phone attached to the merged subject since the merge, through the merged-away person's
/// email: whose phone is it? Given to the remaining half, it would be allowed SMS on the other
/// person's grant where the merged subject was refused. The unmerge is refused instead (no
/// guess), decisions for the phone stay as they were, and once a rectification removed the
/// phone, the unmerge goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identifier_attached_since_the_merge_is_never_given_to_a_half_that_would_allow_it() {
    use common::ConsentAction::{Deny, Grant};
    let mut options = TestOptions::default();
    apply_store_env(&mut options).expect("store from the environment");
    let cluster = TestCluster::start_with(BIN, &["eu-central"], options).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let cal = register(&mut client, "cal@example.com").await;
    let dee = register(&mut client, "dee@example.com").await;
    consent(&mut client, select_email("cal@example.com"), "marketing", "sms", Grant).await;
    consent(&mut client, select_email("dee@example.com"), "marketing", "sms", Deny).await;
    client
        .merge(gw::MergeRequest { into: select_ref(&cal), from: select_ref(&dee), idempotency_key: String::new() })
        .await
        .expect("merge");
    // Dee's phone, registered beside her email: attached to the merged subject.
    let phone = identifier("phone", "+4915112345678");
    let registered = client
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", "dee@example.com"), phone.clone()],
            ..Default::default()
        })
        .await
        .expect("register the phone")
        .into_inner();
    assert_eq!(registered.subject_ref, cal, "the phone joins the merged subject");
    async fn sms(client: &mut Client) -> common::Effect {
        effect_of(&decisions(client, select("phone", "+4915112345678")).await, "marketing/sms")
    }
    assert_eq!(sms(&mut client).await, common::Effect::Deny, "merged: the later denial wins");

    let status = client.unmerge(unmerge_request(&cal, &dee, "unmerge-phone")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{}", status.message());
    assert!(status.message().contains("attached since the merge"), "{}", status.message());
    assert!(!status.message().contains("4915112345678"), "no identifier echoed: {}", status.message());
    assert_eq!(sms(&mut client).await, common::Effect::Deny, "nothing was split");
    assert_eq!(resolve(&mut client, "dee@example.com").await.map(|(_, s)| s), Some(cal.clone()));

    // The operator takes the phone off, unmerges, and registers it where it belongs.
    client
        .rectify(gw::RectifyRequest {
            subject: select_ref(&cal),
            remove_identifiers: vec![phone.clone()],
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .expect("rectify");
    let unmerged = client.unmerge(unmerge_request(&cal, &dee, "unmerge-phone")).await.expect("unmerge").into_inner();
    let dee_again = unmerged.restored_subject_ref;
    let back = client
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", "dee@example.com"), phone],
            ..Default::default()
        })
        .await
        .expect("register the phone with its person")
        .into_inner();
    assert_eq!(back.subject_ref, dee_again);
    assert_eq!(sms(&mut client).await, common::Effect::Deny, "the phone decides as its person");
    assert_eq!(
        effect_of(&decisions(&mut client, select_email("cal@example.com")).await, "marketing/sms"),
        common::Effect::Allow,
        "the other half's own grant"
    );
}
