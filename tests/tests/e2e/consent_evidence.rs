//! Consent evidence carries no personal data (invariants 2 and 8; issue 17, item 5): the notice
//! version and the source system are tokens, so an email address, a phone number (with or
//! without its `+`) or free text with spaces is INVALID_ARGUMENT, at the gateway and directly at
//! the node, with a message that does not echo it, and nothing is stored; legal tokens round-trip
//! byte for byte; and a caller of another region reads the history only under a transfer, without
//! evidence.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::node::v1 as node;
use domicile_cluster_tests::{Cluster as _, TestCluster, files_containing, identifier, node_ref, region, select_ref};
use domicile_proto::prost::Message as _;
use domicile_runtime::identity::Scope;
use tonic::Code;
use tonic::transport::Channel;

type Client = gw::domicile_client::DomicileClient<Channel>;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");

const EMAIL: &str = "evidence.leak-probe@example.de";
const PHONE: &str = "+4915112345678";
const PHONE_BARE: &str = "4915112345678";
const FREE_TEXT: &str = "signed by Anna Probe at the counter";
const BAD: [&str; 4] = [EMAIL, PHONE, PHONE_BARE, FREE_TEXT];

const NOTICE: &str = "privacy-notice-v3";
const SOURCE: &str = "web-preference-centre";

fn evidence(notice_version: &str, source_system: &str) -> common::Evidence {
    common::Evidence {
        notice_version: notice_version.into(),
        capture_channel: "web".into(),
        source_system: source_system.into(),
        double_opt_in_confirmed: true,
        signal: None,
        ..Default::default()
    }
}

/// The two evidence fields, each holding `bad` while the other is legal.
fn bad_evidence(bad: &str) -> [(&'static str, common::Evidence); 2] {
    [("evidence.notice_version", evidence(bad, SOURCE)), ("evidence.source_system", evidence(NOTICE, bad))]
}

fn assert_refused_without_echo(status: &tonic::Status, field: &str, bad: &str, at: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{at}, {field} = {bad:?}: {status:?}");
    let message = status.message();
    assert!(message.contains(field), "{at}: the message names the field {field}: {message}");
    // Not the value, nor any telling part of it.
    for part in [bad, "example.de", PHONE_BARE, "Anna"] {
        assert!(!message.contains(part), "{at}: the message echoes {part:?}: {message}");
    }
}

async fn ledger(client: &mut Client, subject: &str) -> gw::ConsentHistoryResponse {
    client
        .consent_history(gw::ConsentHistoryRequest { subject: select_ref(subject), ..Default::default() })
        .await
        .expect("history")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_is_tokens_refused_without_echo_and_only_tokens_cross() {
    let cluster = TestCluster::start(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let eu = region("eu-central");
    let mut operator = cluster.node(&eu).await.unwrap();

    let subject = client
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", "evidence.subject@example.de")],
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner()
        .subject_ref;
    let gateway_request = |evidence: common::Evidence| gw::RecordConsentRequest {
        subject: select_ref(&subject),
        purpose: "marketing".into(),
        channels: vec!["email".into()],
        action: common::ConsentAction::Grant as i32,
        evidence: Some(evidence),
        ..Default::default()
    };
    let node_request = |evidence: common::Evidence| node::RecordConsentRequest {
        subject: node_ref(&subject),
        purpose: "marketing".into(),
        channels: vec!["email".into()],
        action: common::ConsentAction::Grant as i32,
        evidence: Some(evidence),
        ..Default::default()
    };

    // Personal data or free text in either field: refused at both doors, never echoed.
    for bad in BAD {
        for (field, evidence) in bad_evidence(bad) {
            let status = client.record_consent(gateway_request(evidence.clone())).await.expect_err("gateway refuses");
            assert_refused_without_echo(&status, field, bad, "gateway");
            let status = operator.record_consent(node_request(evidence)).await.expect_err("node refuses");
            assert_refused_without_echo(&status, field, bad, "node");
        }
    }
    // Nothing was stored: no ledger entry, and DE (consent needed) still denies.
    assert!(ledger(&mut client, &subject).await.entries.is_empty(), "a refused record left an entry");
    let decision = client
        .decide(gw::DecideRequest {
            subject: select_ref(&subject),
            purpose: "marketing".into(),
            channel: "email".into(),
            at: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(decision.effect, common::Effect::Deny as i32, "no grant was stored: {}", decision.explanation);

    // Legal tokens: recorded through the gateway and at the node, returned byte for byte.
    client.record_consent(gateway_request(evidence(NOTICE, SOURCE))).await.expect("tokens are evidence");
    operator.record_consent(node_request(evidence("notice_2026.01", "crm:salesforce"))).await.expect("at the node");
    let seeded = [evidence(NOTICE, SOURCE), evidence("notice_2026.01", "crm:salesforce")];
    let at_home = ledger(&mut client, &subject).await;
    assert_eq!(at_home.entries.iter().map(|e| e.evidence.clone().unwrap()).collect::<Vec<_>>(), seeded);

    // A caller of another region (context scope, certificate of us-east) reads the DE subject's
    // history through the gateway only under the pack's transfer for a purpose (the EU baseline's
    // DPF transfer, for service): that purpose's entries, without evidence; for marketing, no
    // transfer, refused. None of the refused values anywhere in the encoded replies.
    let foreign = cluster.issue_caller("us-agent-desk", "us-east", &[Scope::Context]).unwrap();
    let mut foreign = cluster.gateway_as(&foreign).await.unwrap();
    let abroad = |purpose: &str| gw::ConsentHistoryRequest { subject: select_ref(&subject), purpose: purpose.into() };
    let refused = foreign.consent_history(abroad("marketing")).await.expect_err("no transfer for marketing");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let served = foreign.consent_history(abroad("service")).await.expect("under the DPF transfer").into_inner();
    assert!(served.entries.iter().all(|e| e.purpose == "service" && e.evidence.is_none()), "{served:?}");
    let bytes = served.encode_to_vec();
    for needle in BAD.iter().chain(&["example.de", "Anna"]).map(|b| b.as_bytes()) {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{:?} crossed", String::from_utf8_lossy(needle));
    }

    // Nor did any refused value reach a file of the cluster: logs, audit logs, stores.
    for bad in BAD {
        let found = files_containing(cluster.dir(), bad.as_bytes());
        assert!(found.is_empty(), "{bad:?} written to {found:?}");
    }
}
