//! Residency rules on every flow, end to end (issue: gateway residency):
//! - in-country collection: RU's pack requires it, so captures of RU subjects by callers of
//!   another region are refused and store nothing, while decisions still cross;
//! - context: a caller outside the subject's home region gets the minimised context only under
//!   a `[[residency.transfer]]` of the subject's pack for its region and purpose (DE → us-east
//!   for service via the EU baseline's DPF transfer; BR to anyone), else PERMISSION_DENIED; a
//!   served transfer is audited in the home region;
//! - exports and full context are served only to callers of the home region, never to a
//!   gateway.

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
use domicile_cluster_tests::pb::node::v1::regional_node_client::RegionalNodeClient;
use domicile_cluster_tests::{
    Cluster as _, RegionAudit, ScenarioCluster, channel, node_ref, region, select, select_ref,
};
use domicile_runtime::identity::Scope;
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const REGIONS: &[&str] = &["eu-central", "us-east", "sa-east", "ru-central"];
// `admin` too: the rectifications below state an operator's override of the verification.
const SCOPES: &[Scope] = &[Scope::Decide, Scope::Capture, Scope::Context, Scope::Rights, Scope::Admin];

const RU_EMAIL: &str = "ivan.residency-probe@example.ru";
const DE_EMAIL: &str = "lena.residency-probe@example.de";
const BR_EMAIL: &str = "caio.residency-probe@example.com.br";
/// A profile field the packs never name as minimised: it must never leave the home region.
const SECRET_TIER: &str = "Platinum-Residency-Probe";

async fn agent(cluster: &ScenarioCluster, region_id: &str) -> DomicileClient<Channel> {
    let tls = cluster.issue_caller(&format!("agent-{region_id}"), region_id, SCOPES).unwrap();
    cluster.gateway_as(&tls).await.unwrap()
}

fn register(jurisdiction: &str, email: &str) -> gw::RegisterRequest {
    gw::RegisterRequest {
        jurisdiction: jurisdiction.into(),
        identifiers: vec![common::Identifier { kind: "email".into(), value: email.into() }],
        idempotency_key: String::new(),
    }
}

fn grant(subject_ref: &str) -> gw::RecordConsentRequest {
    gw::RecordConsentRequest {
        subject: select_ref(subject_ref),
        purpose: "marketing".into(),
        channels: vec!["email".into()],
        action: common::ConsentAction::Grant as i32,
        evidence: Some(common::Evidence { notice_version: "n1".into(), ..Default::default() }),
        ..Default::default()
    }
}

fn interaction(subject_ref: &str, summary: &str) -> gw::RecordInteractionRequest {
    gw::RecordInteractionRequest {
        subject: select_ref(subject_ref),
        channel: "chat".into(),
        kind: "message".into(),
        intent: "billing.dispute".into(),
        summary: summary.into(),
        open: true,
        ..Default::default()
    }
}

fn context(subject_ref: &str, purpose: &str) -> gw::GetContextRequest {
    gw::GetContextRequest { subject: select_ref(subject_ref), purpose: purpose.into(), ..Default::default() }
}

fn assert_refused(status: &tonic::Status, code: Code, needles: &[&str]) {
    assert_eq!(status.code(), code, "{status:?}");
    for needle in needles {
        assert!(status.message().contains(needle), "`{needle}` in {:?}", status.message());
    }
    for value in [RU_EMAIL, DE_EMAIL, BR_EMAIL, SECRET_TIER] {
        assert!(!status.message().contains(value), "the status echoes no personal data");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_context_and_exports_follow_the_subjects_pack() {
    let mut cluster = ScenarioCluster::start(BIN, REGIONS).await.expect("cluster starts");
    let (mut eu, mut us, mut sa, mut ru) = (
        agent(&cluster, "eu-central").await,
        agent(&cluster, "us-east").await,
        agent(&cluster, "sa-east").await,
        agent(&cluster, "ru-central").await,
    );

    // --- In-country collection (RU) --------------------------------------------------------
    let refused = eu.register(register("RU", RU_EMAIL)).await.unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, &["ru@", "in-country collection", "eu-central"]);
    let unknown = eu
        .resolve(gw::ResolveRequest {
            identifier: Some(common::Identifier { kind: "email".into(), value: RU_EMAIL.into() }),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "the refused registration stored nothing");

    let ivan = ru.register(register("RU", RU_EMAIL)).await.expect("an in-country caller registers").into_inner();
    assert_eq!(ivan.home_region, "ru-central");
    let refused = eu.record_consent(grant(&ivan.subject_ref)).await.unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, &["ru@", "in-country collection"]);
    let refused = us.record_interaction(interaction(&ivan.subject_ref, "from abroad")).await.unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, &["ru@", "us-east"]);
    let refused = eu
        .rectify(gw::RectifyRequest {
            subject: select_ref(&ivan.subject_ref),
            set_profile: [("tier".to_owned(), SECRET_TIER.to_owned())].into(),
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, &["ru@"]);
    let history = ru
        .consent_history(gw::ConsentHistoryRequest { subject: select_ref(&ivan.subject_ref), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(history.entries.is_empty(), "the refused capture wrote nothing");
    ru.record_consent(grant(&ivan.subject_ref)).await.expect("an in-country caller captures consent");
    // Decisions are not collection: they cross, and reflect the in-country capture.
    let decision = eu
        .decide(gw::DecideRequest {
            subject: select("email", RU_EMAIL),
            purpose: "marketing".into(),
            channel: "email".into(),
            at: None,
            ..Default::default()
        })
        .await
        .expect("decisions cross")
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(decision.effect, common::Effect::Allow as i32);
    // RU lists no transfer: its context stays home.
    let refused = eu.get_context(context(&ivan.subject_ref, "service")).await.unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, &["ru@", "no transfer", "eu-central"]);
    ru.get_context(context(&ivan.subject_ref, "")).await.expect("in-country context");
    // The consent ledger is personal data too (found by an attacker's review: any context caller
    // read it from anywhere): it stays home as the context does.
    let history = |subject: &str, purpose: &str| gw::ConsentHistoryRequest {
        subject: select_ref(subject),
        purpose: purpose.into(),
    };
    let refused = eu.consent_history(history(&ivan.subject_ref, "service")).await.unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, &["ru@", "no transfer", "eu-central"]);
    let refused = eu.consent_history(history(&ivan.subject_ref, "")).await.unwrap_err();
    assert_refused(&refused, Code::InvalidArgument, &["purpose"]);
    let home = ru.consent_history(history(&ivan.subject_ref, "")).await.expect("in-country history").into_inner();
    assert!(home.entries.iter().all(|e| e.evidence.is_some()), "in full at home");

    // --- Context under the DE pack (EU baseline: DPF transfer to us-east for service) -------
    let lena = eu.register(register("DE", DE_EMAIL)).await.unwrap().into_inner();
    eu.rectify(gw::RectifyRequest {
        subject: select_ref(&lena.subject_ref),
        set_profile: [
            ("country".to_owned(), "DE".to_owned()),
            ("language".to_owned(), "de".to_owned()),
            ("tier".to_owned(), SECRET_TIER.to_owned()),
        ]
        .into(),
        override_reason: "controller_correction".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    eu.record_interaction(interaction(&lena.subject_ref, "asked about invoice 4711")).await.unwrap();

    let home = eu.get_context(context(&lena.subject_ref, "")).await.expect("home-region context").into_inner();
    assert!(home.minimised && home.transfer.is_empty());
    assert_eq!(home.pack.as_ref().map(|p| p.id.as_str()), Some("de"));
    let minimised_profile = [("country".to_owned(), "DE".to_owned()), ("language".to_owned(), "de".to_owned())].into();
    assert_eq!(home.profile, minimised_profile, "only the pack's minimised fields, even at home, via the gateway");

    let missing = us.get_context(context(&lena.subject_ref, "")).await.unwrap_err();
    assert_refused(&missing, Code::InvalidArgument, &["purpose"]);
    let abroad = us.get_context(context(&lena.subject_ref, "service")).await.expect("DPF transfer").into_inner();
    assert_eq!(abroad.transfer, "us-dpf");
    assert!(abroad.minimised);
    assert_eq!(abroad.profile, minimised_profile);
    assert_eq!(abroad.open_intents, ["billing.dispute"]);
    for i in abroad.recent.iter().chain(&abroad.latest_by_channel) {
        assert!(i.summary.is_empty() && i.reference.is_empty(), "no interaction content crosses");
    }
    let refused = us.get_context(context(&lena.subject_ref, "marketing")).await.unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, &["de@", "us-east", "marketing"]);
    // The ledger under the same transfer: that purpose's entries only, without their evidence.
    eu.record_consent(gw::RecordConsentRequest { purpose: "service".into(), ..grant(&lena.subject_ref) })
        .await
        .expect("a service grant");
    eu.record_consent(grant(&lena.subject_ref)).await.expect("a marketing grant");
    let abroad = us.consent_history(history(&lena.subject_ref, "service")).await.expect("DPF transfer").into_inner();
    assert!(
        !abroad.entries.is_empty() && abroad.entries.iter().all(|e| e.purpose == "service" && e.evidence.is_none())
    );
    let home = eu.consent_history(history(&lena.subject_ref, "")).await.unwrap().into_inner();
    assert!(home.entries.iter().any(|e| e.purpose == "marketing") && home.entries.iter().all(|e| e.evidence.is_some()));
    let refused = us.consent_history(history(&lena.subject_ref, "marketing")).await.unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, &["de@", "us-east", "marketing"]);
    let refused = sa.get_context(context(&lena.subject_ref, "service")).await.unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, &["de@", "sa-east", "explicit_transfer"]);

    // GDPR Art. 49(1)(a): the subject's explicit consent to the transfer, recorded as a ledger
    // record without channels, lets service context reach sa-east; a withdrawal stops it again.
    // Such a record sets no contact cell: decisions are as before.
    let transfer_consent = |action: common::ConsentAction| gw::RecordConsentRequest {
        subject: select_ref(&lena.subject_ref),
        purpose: "service".into(),
        channels: vec![],
        action: action as i32,
        evidence: Some(common::Evidence {
            notice_version: "transfer-notice-v1".into(),
            consent_kind: "explicit_transfer".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut with_channel = transfer_consent(common::ConsentAction::Grant);
    with_channel.channels = vec!["email".into()];
    let status = eu.record_consent(with_channel).await.expect_err("a transfer consent names no channel");
    assert_refused(&status, Code::InvalidArgument, &["channels"]);
    let mut no_kind = transfer_consent(common::ConsentAction::Grant);
    no_kind.evidence = None;
    let status = eu.record_consent(no_kind).await.expect_err("a contact consent names a channel");
    assert_refused(&status, Code::InvalidArgument, &["channels"]);
    eu.record_consent(transfer_consent(common::ConsentAction::Grant)).await.expect("explicit transfer consent");
    let abroad = sa.get_context(context(&lena.subject_ref, "service")).await.expect("Art. 49 transfer").into_inner();
    assert_eq!(abroad.transfer, "explicit-consent");
    assert!(abroad.minimised);
    assert_eq!(abroad.profile, minimised_profile);
    let refused = sa.get_context(context(&lena.subject_ref, "marketing")).await.unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, &["de@", "sa-east", "marketing"]);
    let history = eu
        .consent_history(gw::ConsentHistoryRequest { subject: select_ref(&lena.subject_ref), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let last = history.entries.last().expect("the transfer consent is in the ledger");
    assert!(last.channels.is_empty() && last.purpose == "service");
    assert_eq!(last.evidence.as_ref().map(|e| e.consent_kind.as_str()), Some("explicit_transfer"));
    eu.record_consent(transfer_consent(common::ConsentAction::Withdraw)).await.expect("withdrawal");
    let refused = sa.get_context(context(&lena.subject_ref, "service")).await.unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, &["de@", "sa-east", "explicit_transfer"]);
    // An earlier grant arriving after the withdrawal (a replay, a late batch) does not revive it.
    let mut late = transfer_consent(common::ConsentAction::Grant);
    late.captured_at = Some(domicile_proto::prost_types::Timestamp {
        seconds: domicile_runtime::process::now_unix() - 3600,
        nanos: 0,
    });
    eu.record_consent(late).await.expect("late grant recorded");
    let refused = sa.get_context(context(&lena.subject_ref, "service")).await.unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, &["de@", "sa-east", "explicit_transfer"]);

    // BR: the ANPD clauses allow any region and purpose.
    let caio = sa.register(register("BR", BR_EMAIL)).await.unwrap().into_inner();
    let br = us.get_context(context(&caio.subject_ref, "marketing")).await.expect("ANPD transfer").into_inner();
    assert_eq!(br.transfer, "anpd-scc");

    // --- Exports and full context: home region only, never through a gateway ---------------
    let eu_region = region("eu-central");
    let addr = cluster.node_addr(&eu_region).unwrap().to_string();
    let gateway_tls = cluster.pki().unwrap().gateway().unwrap();
    let mut as_gateway =
        RegionalNodeClient::new(channel(&addr, &gateway_tls, &eu_region.node_server_name()).await.unwrap());
    let export = node::ExportRequest {
        subject: node_ref(&lena.subject_ref),
        override_reason: "controller_correction".into(),
        ..Default::default()
    };
    let refused = as_gateway.export(export.clone()).await.unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, &["home region"]);
    let full = node::GetContextRequest { subject: node_ref(&lena.subject_ref), ..Default::default() };
    let refused = as_gateway.get_context(full.clone()).await.unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, &["home region"]);
    let us_tls = cluster.issue_caller("us-exporter", "us-east", &Scope::ALL).unwrap();
    let mut foreign = RegionalNodeClient::new(channel(&addr, &us_tls, &eu_region.node_server_name()).await.unwrap());
    let refused = foreign.export(export.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "a caller of another region: {refused:?}");
    let mut local = cluster.node(&eu_region).await.unwrap();
    let document = local.export(export).await.expect("in-region export").into_inner().document;
    assert!(String::from_utf8_lossy(&document).contains(SECRET_TIER), "the export is complete, in the region");
    let full = local.get_context(full).await.expect("in-region full context").into_inner();
    assert!(!full.minimised);
    assert_eq!(full.profile.get("tier").map(String::as_str), Some(SECRET_TIER));

    // The transfer is audited in the home region, and the log still verifies.
    cluster.stop().await;
    let audit = RegionAudit::of(&cluster, &eu_region);
    let log = audit.lines().unwrap();
    let transfers: Vec<&str> = log.iter().map(String::as_str).filter(|l| l.contains("\"kind\":\"transfer\"")).collect();
    assert_eq!(transfers.len(), 3, "three served transfers, refusals move nothing");
    for field in ["\"transfer\":\"us-dpf\"", "\"to\":\"us-east\"", "\"purpose\":\"service\"", "\"pack\":\"de@"] {
        assert!(transfers[0].contains(field), "{field} in {}", transfers[0]);
        assert!(transfers[1].contains(field), "{field} in {}", transfers[1]);
    }
    assert!(transfers[0].contains("\"what\":\"context.minimised\""), "{}", transfers[0]);
    assert!(transfers[1].contains("\"what\":\"consent.history\""), "the ledger's transfer too: {}", transfers[1]);
    for field in ["\"transfer\":\"explicit-consent\"", "\"to\":\"sa-east\"", "\"purpose\":\"service\""] {
        assert!(transfers[2].contains(field), "{field} in {}", transfers[2]);
    }
    let verify = audit.verify(BIN, false).unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}
