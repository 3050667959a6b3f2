//! The acceptance journey end to end: a person starts on the web (cookie), moves to chat
//! (chat handle + email) and is then called (phone number). Consent given on the web and
//! withdrawn on chat is honoured on the phone, and the agent's context shows the chat.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_cluster_tests::pb::node::v1 as node;
use domicile_cluster_tests::{Cluster as _, ScenarioCluster, region};
use domicile_cluster_tests::{identifier, select as by};
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");

const COOKIE: &str = "cookie-journey-7f3a9c41";
const CHAT: &str = "webchat:Anna.Journey";
const EMAIL: &str = "anna.journey@example.de";
const PHONE: &str = "+49 151 2468 9753";
const CHAT_SUMMARY: &str = "Customer disputes invoice 4711, asked for a callback tomorrow";

async fn register(client: &mut DomicileClient<Channel>, identifiers: &[(&str, &str)]) -> gw::RegisterResponse {
    client
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: identifiers.iter().map(|(k, v)| identifier(k, v)).collect(),
            idempotency_key: String::new(),
        })
        .await
        .expect("register")
        .into_inner()
}

async fn consent(
    client: &mut DomicileClient<Channel>,
    subject: Option<gw::SubjectSelector>,
    action: common::ConsentAction,
    captured_on: &str,
) {
    client
        .record_consent(gw::RecordConsentRequest {
            subject,
            purpose: "marketing".into(),
            channels: vec!["voice".into()],
            action: action as i32,
            evidence: Some(common::Evidence {
                notice_version: "privacy-notice-v3".into(),
                capture_channel: captured_on.into(),
                source_system: format!("{captured_on}-frontend"),
                double_opt_in_confirmed: false,
                signal: None,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("record consent");
}

async fn call_allowed(client: &mut DomicileClient<Channel>, subject: Option<gw::SubjectSelector>) -> common::Decision {
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

async fn interaction(
    client: &mut DomicileClient<Channel>,
    subject: Option<gw::SubjectSelector>,
    channel: &str,
    kind: &str,
    intent: &str,
    summary: &str,
    open: bool,
) {
    client
        .record_interaction(gw::RecordInteractionRequest {
            subject,
            channel: channel.into(),
            occurred_at: None,
            kind: kind.into(),
            intent: intent.into(),
            summary: summary.into(),
            reference: format!("{channel}-ref-1"),
            open,
            idempotency_key: String::new(),
        })
        .await
        .expect("record interaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_to_chat_to_phone_honours_the_withdrawal_and_hands_off_the_context() {
    let cluster = ScenarioCluster::start(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();

    // Web: an anonymous visitor known by a cookie gives consent to marketing calls.
    let web = register(&mut client, &[("device", COOKIE)]).await;
    assert!(web.created);
    assert_eq!(web.home_region, "eu-central");
    consent(&mut client, by("device", COOKIE), common::ConsentAction::Grant, "web").await;
    interaction(&mut client, by("device", COOKIE), "web", "visit", "pricing.compare", "Viewed the pricing page", false)
        .await;
    let before = call_allowed(&mut client, by("device", COOKIE)).await;
    assert_eq!(before.effect, common::Effect::Allow as i32, "the web consent allows calls: {before:?}");

    // Chat: the handle and the email are captured together with the cookie, so they join the
    // same subject; the person withdraws on chat.
    let chat = register(&mut client, &[("chat_handle", CHAT), ("email", EMAIL), ("device", COOKIE)]).await;
    assert!(!chat.created);
    assert_eq!(chat.subject_ref, web.subject_ref, "identifiers captured together belong to one subject");
    interaction(&mut client, by("chat_handle", CHAT), "chat", "message", "billing.dispute", CHAT_SUMMARY, true).await;
    consent(&mut client, by("chat_handle", CHAT), common::ConsentAction::Withdraw, "chat").await;

    // Phone: the number is captured together with the email the caller gives.
    let phone = register(&mut client, &[("phone", PHONE), ("email", EMAIL)]).await;
    assert_eq!(phone.subject_ref, web.subject_ref);

    // The agent may not call for marketing: the chat withdrawal is honoured on the phone.
    let decision = call_allowed(&mut client, by("phone", PHONE)).await;
    assert_eq!(decision.effect, common::Effect::Deny as i32, "{decision:?}");
    assert_eq!(decision.subject_ref, web.subject_ref);
    assert_eq!(decision.pack.as_ref().unwrap().id, "de");
    assert!(decision.reasons.iter().any(|r| r.starts_with("de.")), "{decision:?}");

    // The ledger shows where each record was captured.
    let history = client
        .consent_history(gw::ConsentHistoryRequest { subject: by("phone", PHONE), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let captured: Vec<(&str, &str)> = history
        .entries
        .iter()
        .map(|e| (e.state.as_str(), e.evidence.as_ref().unwrap().capture_channel.as_str()))
        .collect();
    assert_eq!(captured, [("granted", "web"), ("withdrawn", "chat")]);

    // The agent's context (through the gateway, minimised) shows the chat and its open intent.
    let context = client
        .get_context(gw::GetContextRequest { subject: by("phone", PHONE), ..Default::default() })
        .await
        .expect("context")
        .into_inner();
    assert!(context.minimised);
    assert_eq!(context.subject_ref, web.subject_ref);
    assert_eq!(context.home_region, "eu-central");
    let latest_chat =
        context.latest_by_channel.iter().find(|i| i.channel == "chat").expect("the chat is in the context");
    assert_eq!((latest_chat.kind.as_str(), latest_chat.intent.as_str()), ("message", "billing.dispute"));
    assert!(latest_chat.open);
    assert_eq!(context.recent.first().map(|i| i.channel.as_str()), Some("chat"), "the chat is the latest");
    assert!(context.latest_by_channel.iter().any(|i| i.channel == "web"));
    assert_eq!(context.open_intents, ["billing.dispute"]);
    for i in context.recent.iter().chain(&context.latest_by_channel) {
        assert!(i.summary.is_empty() && i.reference.is_empty(), "no interaction content leaves the region");
    }

    // In the home region the full context, with the chat summary, is available.
    let mut eu = cluster.node(&region("eu-central")).await.unwrap();
    let full = eu
        .get_context(node::GetContextRequest {
            subject: Some(common::SubjectKey {
                key: Some(common::subject_key::Key::SubjectRef(web.subject_ref.clone())),
            }),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("in-region context")
        .into_inner();
    assert!(!full.minimised);
    assert_eq!(full.recent.first().map(|i| i.summary.as_str()), Some(CHAT_SUMMARY));
    assert_eq!(full.recent.len(), 2);

    // Bad interactions are refused with a status naming the field, never the value.
    for (kind, intent, field) in [("gossip", "billing.dispute", "kind"), ("message", "Billing Dispute", "intent")] {
        let status = client
            .record_interaction(gw::RecordInteractionRequest {
                subject: by("phone", PHONE),
                channel: "voice".into(),
                kind: kind.into(),
                intent: intent.into(),
                summary: "secret-summary-text".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{status:?}");
        assert!(!status.message().contains("secret-summary-text") && !status.message().contains(intent));
    }
    let status = client
        .record_interaction(gw::RecordInteractionRequest {
            subject: by("phone", PHONE),
            channel: "voice".into(),
            kind: "call".into(),
            intent: "x".into(),
            summary: "s".repeat(2049),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}
