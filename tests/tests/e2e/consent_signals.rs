//! Consent signals from the web on a real cluster (`RecordSignal`): a TC string captured for an
//! anonymous cookie, the cookie later joined to an email, the email marketing decision following
//! the mapped TCF purpose, and a later TC string that withdraws it flipping every identifier and
//! every gateway to deny at once; Global Privacy Control binding in California and Colorado (from
//! its date) and recorded only where no law makes it binding; GPP US opt-outs; malformed strings
//! refused by segment and offset without echo; the raw string never leaving the home region.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_cluster_tests::{Cluster as _, ScenarioCluster, TestOptions, identifier, select};
use domicile_signals::tcf::{PublisherTc, TcModel};
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");

/// A TCF v2.3 string from iabtcf-es (policy 5, purposes 1-11, disclosed vendors): the template
/// the test's own strings are encoded from.
const TC_TEMPLATE: &str = "CQd924AQd924AASACCENCNFsAP_gAEIAACiQL6QBAAGAAOANmAcAF9IAIADgAA.IL6AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.YIAAAAAAAAAA";

/// The template with publisher custom purpose 1 ("news and offers by email" in the baseline
/// pack's mapping) answered `email_offers`.
fn tc_string(email_offers: bool) -> String {
    let mut model: TcModel = domicile_signals::tcf::decode(TC_TEMPLATE).unwrap();
    model.publisher_tc = Some(PublisherTc {
        purposes_consent: Vec::new(),
        purposes_li_transparency: Vec::new(),
        num_custom_purposes: 1,
        custom_purposes_consent: if email_offers { vec![1] } else { Vec::new() },
        custom_purposes_li_transparency: Vec::new(),
    });
    domicile_signals::tcf::encode(&model).unwrap()
}

fn signal(subject: Option<gw::SubjectSelector>, signal: gw::record_signal_request::Signal) -> gw::RecordSignalRequest {
    gw::RecordSignalRequest {
        subject,
        signal: Some(signal),
        captured_at: None,
        source_system: "web-cmp".into(),
        idempotency_key: String::new(),
    }
}

fn at(unix: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: unix, nanos: 0 })
}

async fn decide(
    client: &mut DomicileClient<Channel>,
    subject: Option<gw::SubjectSelector>,
    purpose: &str,
    channel: &str,
) -> common::Decision {
    let request =
        gw::DecideRequest { subject, purpose: purpose.into(), channel: channel.into(), at: None, ..Default::default() };
    client.decide(request).await.unwrap().into_inner().decision.unwrap()
}

fn allowed(decision: &common::Decision) -> bool {
    decision.effect == common::Effect::Allow as i32
}

async fn register(
    client: &mut DomicileClient<Channel>,
    jurisdiction: &str,
    ids: &[(&str, &str)],
) -> gw::RegisterResponse {
    let request = gw::RegisterRequest {
        jurisdiction: jurisdiction.into(),
        identifiers: ids.iter().map(|(k, v)| identifier(k, v)).collect(),
        idempotency_key: String::new(),
    };
    client.register(request).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tc_string_for_a_cookie_follows_the_person_to_email_and_a_withdrawal_flips_every_door() {
    let options = TestOptions { gateways: Some(2), ..TestOptions::default() };
    let cluster = ScenarioCluster::start_with(BIN, &["eu-central"], options).await.expect("cluster starts");
    let mut first = cluster.gateway_at_index(0).await.unwrap();
    let mut second = cluster.gateway_at_index(1).await.unwrap();
    let cookie = || select("device", "cookie-7d1e2f9a0b");
    let email = || select("email", "lea.signal@example.fr");

    // An anonymous visitor: only a cookie, and the CMP's answer to "news and offers by email".
    register(&mut first, "FR", &[("device", "cookie-7d1e2f9a0b")]).await;
    let granted = tc_string(true);
    let recorded =
        first.record_signal(signal(cookie(), gw::record_signal_request::Signal::Tcf(granted.clone()))).await.unwrap();
    let recorded = recorded.into_inner();
    assert!(recorded.recorded_only.is_empty(), "{}", recorded.recorded_only);
    let email_entry = recorded
        .recorded
        .iter()
        .find(|e| e.purpose == "marketing" && e.channels == ["email"])
        .expect("custom purpose 1 maps to marketing by email");
    assert_eq!(email_entry.state, "granted");
    let evidence = email_entry.evidence.as_ref().unwrap().signal.as_ref().expect("the signal is the evidence");
    assert_eq!((evidence.kind.as_str(), evidence.cmp_id, evidence.policy_version), ("tcf", 18, 5));
    assert!(evidence.cite.contains("custom purpose 1"), "{}", evidence.cite);
    assert!(recorded.recorded.iter().any(|e| e.purpose == "profiling" && e.state == "granted"), "purposes 3 and 4");
    assert!(!format!("{recorded:?}").contains(&granted[..40]), "the raw string does not leave the node");

    // The cookie is later joined to an email: the same subject, and the email decision follows
    // the mapped purpose, through either gateway.
    let joined =
        register(&mut first, "FR", &[("device", "cookie-7d1e2f9a0b"), ("email", "lea.signal@example.fr")]).await;
    assert!(!joined.created, "joined to the cookie's subject");
    // The other gateway learns the new identifier from the region's change stream (with
    // PostgreSQL replicas within the poll interval; until then NOT_FOUND, never an allow).
    let seen = domicile_cluster_tests::eventually(std::time::Duration::from_secs(5), || {
        let mut second = second.clone();
        async move {
            let request = gw::DecideRequest {
                subject: email(),
                purpose: "marketing".into(),
                channel: "email".into(),
                at: None,
                ..Default::default()
            };
            match second.decide(request).await {
                Ok(response) => response.into_inner().decision,
                Err(status) => {
                    assert_eq!(status.code(), Code::NotFound, "{status:?}");
                    None
                }
            }
        }
    })
    .await;
    assert!(seen.is_some(), "the second gateway resolves the joined email");
    let decision = decide(&mut second, email(), "marketing", "email").await;
    assert!(allowed(&decision), "{decision:?}");

    // A later TC string without the email purpose withdraws it: the very next decision, by email
    // or by cookie, at either gateway, is a deny.
    let withdrawn = tc_string(false);
    let recorded =
        first.record_signal(signal(cookie(), gw::record_signal_request::Signal::Tcf(withdrawn))).await.unwrap();
    assert!(recorded.into_inner().recorded.iter().any(|e| e.purpose == "marketing" && e.state == "withdrawn"));
    for gateway in [&mut first, &mut second] {
        for subject in [email(), cookie()] {
            let decision = decide(gateway, subject, "marketing", "email").await;
            assert!(!allowed(&decision), "{decision:?}");
        }
    }

    // A grant captured before that withdrawal and delivered late never overrides it.
    let mut late = signal(email(), gw::record_signal_request::Signal::Tcf(granted.clone()));
    late.captured_at = at(domicile_runtime::process::now_unix() - 3600);
    first.record_signal(late).await.unwrap();
    assert!(!allowed(&decide(&mut second, email(), "marketing", "email").await));

    // The ledger keeps every signal as evidence; what leaves the node names it, not its bytes.
    let history = first
        .consent_history(gw::ConsentHistoryRequest { subject: email(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let from_signals =
        history.entries.iter().filter(|e| e.evidence.as_ref().is_some_and(|ev| ev.signal.is_some())).count();
    assert!(from_signals >= 3, "{history:?}");
    assert!(!format!("{history:?}").contains(&granted[..40]));

    // Malformed strings: INVALID_ARGUMENT naming the segment and bit offset, never the string.
    let cut = &granted[..25];
    let status =
        first.record_signal(signal(cookie(), gw::record_signal_request::Signal::Tcf(cut.into()))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("tcf") && status.message().contains("at bit"), "{}", status.message());
    assert!(!status.message().contains(&cut[..12]), "{}", status.message());
    let status = first
        .record_signal(signal(cookie(), gw::record_signal_request::Signal::Gpp("DBABLA~C!!".into())))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("usnat"), "{}", status.message());
    // A string of the withdrawn policy version 2 (the TCF specification's example) is refused.
    let spec = "CQSbk4AQSbk4ANwAAAENAwCgAAAAAAAAAAYgACPAAAAA.IDKQA4AAgAKAGQAygAAA.YAAAAAAAAAAA";
    let status =
        first.record_signal(signal(cookie(), gw::record_signal_request::Signal::Tcf(spec.into()))).await.unwrap_err();
    assert!(status.message().contains("withdrawn"), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpc_binds_where_a_state_law_says_so_from_its_date_and_is_recorded_only_elsewhere() {
    let cluster = ScenarioCluster::start(BIN, &["us-east"]).await.expect("cluster starts");
    let mut gateway = cluster.gateway().await.unwrap();
    let gpc = || gw::record_signal_request::Signal::Gpc(true);
    let ca = || select("email", "sam.gpc@example.com");
    let ny = || select("email", "nico.gpc@example.com");
    let co = || select("email", "cora.gpc@example.com");
    register(&mut gateway, "US-CA", &[("email", "sam.gpc@example.com")]).await;
    register(&mut gateway, "US-NY", &[("email", "nico.gpc@example.com")]).await;
    register(&mut gateway, "US-CO", &[("email", "cora.gpc@example.com")]).await;

    // California: sharing allowed until the opt-out; GPC is that opt-out, with rule and citation.
    assert!(allowed(&decide(&mut gateway, ca(), "profiling", "web").await));
    let recorded = gateway.record_signal(signal(ca(), gpc())).await.unwrap().into_inner();
    let entry = recorded.recorded.first().expect("a withdrawal");
    assert_eq!((entry.purpose.as_str(), entry.state.as_str()), ("profiling", "withdrawn"));
    assert_eq!(entry.channels, ["web", "push", "chat"]);
    assert!(entry.evidence.as_ref().unwrap().signal.as_ref().unwrap().cite.contains("11 CCR § 7025"));
    let decision = decide(&mut gateway, ca(), "profiling", "web").await;
    assert!(!allowed(&decision));
    assert_eq!(decision.reasons, ["us-ca.profiling.sale-share"]);
    // Other purposes are untouched.
    assert!(allowed(&decide(&mut gateway, ca(), "marketing", "email").await));

    // New York has no pack of its own: the federal pack, where GPC is recorded only.
    let before = decide(&mut gateway, ny(), "profiling", "web").await;
    let recorded = gateway.record_signal(signal(ny(), gpc())).await.unwrap().into_inner();
    assert!(recorded.recorded.is_empty());
    assert!(recorded.recorded_only.contains("recorded only") && recorded.recorded_only.contains("no federal statute"));
    let after = decide(&mut gateway, ny(), "profiling", "web").await;
    assert_eq!((after.effect, &after.reasons), (before.effect, &before.reasons), "the state's pack decides as before");
    assert!(allowed(&decide(&mut gateway, ny(), "marketing", "email").await));

    // Colorado: binding from 1 July 2024 only. A signal captured before is recorded only.
    let mut early = signal(co(), gpc());
    early.captured_at = at(1_717_200_000); // 2024-06-01
    let recorded = gateway.record_signal(early).await.unwrap().into_inner();
    assert!(recorded.recorded.is_empty() && recorded.recorded_only.contains("effective date"), "{recorded:?}");
    assert!(allowed(&decide(&mut gateway, co(), "profiling", "web").await));
    let recorded = gateway.record_signal(signal(co(), gpc())).await.unwrap().into_inner();
    assert_eq!(recorded.recorded.len(), 1);
    let decision = decide(&mut gateway, co(), "profiling", "web").await;
    assert!(!allowed(&decision));
    assert_eq!(decision.reasons, ["us-co.profiling.targeted-ads"]);

    // A GPP usnat opt-out of sale (no GPC) withdraws the same in California; one that opts out
    // of nothing changes nothing.
    let sam2 = || select("email", "sam.gpp@example.com");
    register(&mut gateway, "US-CA", &[("email", "sam.gpp@example.com")]).await;
    // usnat v1: sale, sharing and targeted advertising opted out (iab_gpp test data).
    let recorded = gateway
        .record_signal(signal(sam2(), gw::record_signal_request::Signal::Gpp("DBABLA~BVVVVVVVVWA.YA".into())))
        .await;
    let recorded = recorded.unwrap().into_inner();
    assert_eq!(recorded.recorded.len(), 1, "{recorded:?}");
    let evidence = recorded.recorded[0].evidence.as_ref().unwrap().signal.clone().unwrap();
    assert_eq!((evidence.kind.as_str(), evidence.gpp_sections.as_slice()), ("gpp", &[7][..]));
    assert!(!allowed(&decide(&mut gateway, sam2(), "profiling", "web").await));
    // usnat v2, every field not applicable: nothing to record.
    let nothing = gateway
        .record_signal(signal(ca(), gw::record_signal_request::Signal::Gpp("DBABLA~CAAAAAAAAAWA.Q".into())))
        .await
        .unwrap()
        .into_inner();
    assert!(nothing.recorded.is_empty() && !nothing.recorded_only.is_empty(), "{nothing:?}");
    // `gpc = false` is no signal.
    let status = gateway.record_signal(signal(ca(), gw::record_signal_request::Signal::Gpc(false))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}
