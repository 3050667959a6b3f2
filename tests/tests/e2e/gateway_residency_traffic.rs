//! Proof that nothing personal crosses a border: every byte between a gateway and each region's
//! node is recorded after TLS decryption (a TLS-terminating proxy per region, see
//! `RecordingProxy`), while subjects of three regions are registered, consent is captured,
//! decisions (unary and batch) are taken, history is read, profiles are rectified, interactions
//! recorded, context is read from callers of other regions (under the packs' transfers),
//! processing is restricted, change events are watched and a subject is erased. No seeded
//! identifier (in the form given or normalised), profile value or interaction summary may appear
//! in the traffic with any node other than its home region's, and (to prove the recorder sees
//! plain bytes) each does appear in its home region's traffic.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::time::Duration;

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::select as selector;
use domicile_cluster_tests::{Cluster as _, ScenarioCluster, region};
use domicile_runtime::identity::Scope;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const REGIONS: &[&str] = &["eu-central", "us-east", "sa-east"];

struct Seed {
    jurisdiction: &'static str,
    home: &'static str,
    /// (kind, value as given, normalised forms and fragments that must not cross)
    identifiers: &'static [(&'static str, &'static str, &'static [&'static str])],
    /// A profile value (field `tier`, which no pack lets leave) and an interaction summary.
    personal: [&'static str; 2],
    /// A caller region outside the home region whose context request the pack allows.
    reader: &'static str,
}

const SEEDS: &[Seed] = &[
    Seed {
        jurisdiction: "DE",
        home: "eu-central",
        identifiers: &[
            (
                "email",
                "Greta.Traffic-Probe@Example.DE",
                &["greta.traffic-probe@example.de", "Traffic-Probe", "traffic-probe"],
            ),
            ("phone", "+49 151 2468 1357", &["+4915124681357", "15124681357", "2468 1357"]),
        ],
        personal: ["Tier-Greta-Probe-Gold", "Greta asked about invoice DE-55810"],
        reader: "us-east",
    },
    Seed {
        jurisdiction: "US",
        home: "us-east",
        identifiers: &[
            ("email", "hank.wiretap-probe@example.com", &["hank.wiretap-probe", "wiretap-probe"]),
            ("crm_account", "CRM-US-99173", &["CRM-US-99173", "crm-us-99173", "99173"]),
        ],
        personal: ["Tier-Hank-Probe-Silver", "Hank disputed order US-31337"],
        reader: "sa-east",
    },
    Seed {
        jurisdiction: "BR",
        home: "sa-east",
        identifiers: &[("email", "joana.sniffer-probe@example.com.br", &["joana.sniffer-probe", "sniffer-probe"])],
        personal: ["Tier-Joana-Probe-Bronze", "Joana queixou-se do pedido BR-27182"],
        reader: "eu-central",
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_identifier_crosses_to_a_node_of_another_region() {
    let cluster = ScenarioCluster::start(BIN, REGIONS).await.expect("cluster starts");
    let mut proxies = Vec::new();
    for r in REGIONS {
        proxies.push((r.to_owned(), cluster.recording_proxy(&region(r)).await.expect("proxy starts")));
    }
    let endpoints: Vec<_> = proxies.iter().map(|(r, p)| (region(r), p.addr)).collect();
    let gateway = cluster.start_gateway("recorded", &endpoints).await.expect("recorded gateway starts");
    let mut client = cluster.gateway_at(gateway.addr).await.unwrap();
    let scopes = [Scope::Context, Scope::Decide];
    let mut readers = std::collections::HashMap::new();
    for r in REGIONS {
        let tls = cluster.issue_caller(&format!("reader-{r}"), r, &scopes).unwrap();
        readers.insert(*r, cluster.gateway_at_as(gateway.addr, &tls).await.unwrap());
    }
    let mut watch = client.watch(gw::WatchRequest::default()).await.unwrap().into_inner();

    for seed in SEEDS {
        let registered = client
            .register(gw::RegisterRequest {
                jurisdiction: seed.jurisdiction.into(),
                identifiers: seed
                    .identifiers
                    .iter()
                    .map(|(kind, value, _)| common::Identifier { kind: (*kind).into(), value: (*value).into() })
                    .collect(),
                idempotency_key: String::new(),
            })
            .await
            .expect("register")
            .into_inner();
        assert_eq!(registered.home_region, seed.home);
        for (kind, value, _) in seed.identifiers {
            // Capture, decisions, resolution and history, each addressed by the identifier.
            client
                .record_consent(gw::RecordConsentRequest {
                    subject: selector(kind, value),
                    purpose: "marketing".into(),
                    channels: vec!["email".into(), "sms".into()],
                    action: common::ConsentAction::Grant as i32,
                    evidence: Some(common::Evidence { notice_version: "n1".into(), ..Default::default() }),
                    ..Default::default()
                })
                .await
                .expect("consent");
            client
                .decide(gw::DecideRequest {
                    subject: selector(kind, value),
                    purpose: "marketing".into(),
                    channel: "email".into(),
                    at: None,
                    ..Default::default()
                })
                .await
                .expect("decide");
            client
                .resolve(gw::ResolveRequest {
                    identifier: Some(common::Identifier { kind: (*kind).into(), value: (*value).into() }),
                })
                .await
                .expect("resolve");
            // The ledger stays home: read from another region only under a transfer for a
            // purpose (the EU baseline's for service), refused otherwise; either way no
            // identifier travels.
            let history = client
                .consent_history(gw::ConsentHistoryRequest {
                    subject: selector(kind, value),
                    purpose: "service".into(),
                })
                .await;
            assert!(
                history.as_ref().map_or_else(|s| s.code() == tonic::Code::PermissionDenied, |_| true),
                "{history:?}"
            );
        }
        // Rights and context: profile and interaction content stay home; a reader of another
        // region gets the minimised context under the pack's transfer.
        let (kind, value, _) = seed.identifiers[0];
        let [tier, summary] = seed.personal;
        client
            .rectify(gw::RectifyRequest {
                subject: selector(kind, value),
                set_profile: [("tier".to_owned(), tier.to_owned()), ("language".to_owned(), "xx".to_owned())].into(),
                override_reason: "controller_correction".into(),
                ..Default::default()
            })
            .await
            .expect("rectify");
        client
            .record_interaction(gw::RecordInteractionRequest {
                subject: selector(kind, value),
                channel: "chat".into(),
                kind: "message".into(),
                intent: "order.dispute".into(),
                summary: summary.into(),
                reference: format!("ref-{tier}"),
                open: true,
                ..Default::default()
            })
            .await
            .expect("interaction");
        let reader = readers.get_mut(seed.reader).unwrap();
        let context = reader
            .get_context(gw::GetContextRequest {
                subject: selector(kind, value),
                purpose: "service".into(),
                ..Default::default()
            })
            .await
            .expect("context under a transfer")
            .into_inner();
        assert!(!context.transfer.is_empty(), "served under a named transfer");
        assert_eq!(context.open_intents, ["order.dispute"]);
        client
            .restrict(gw::RestrictRequest {
                subject: selector(kind, value),
                restricted: true,
                idempotency_key: String::new(),
                ..Default::default()
            })
            .await
            .expect("restrict");
        client
            .restrict(gw::RestrictRequest {
                subject: selector(kind, value),
                restricted: false,
                idempotency_key: String::new(),
                override_reason: "controller_correction".into(),
                ..Default::default()
            })
            .await
            .expect("lift restriction");
    }
    // A batch over every identifier of every region.
    let items: Vec<gw::DecideStreamItem> = SEEDS
        .iter()
        .flat_map(|s| s.identifiers.iter())
        .enumerate()
        .map(|(i, (kind, value, _))| gw::DecideStreamItem {
            id: i as u64,
            subject: selector(kind, value),
            purpose: "marketing".into(),
            channel: "sms".into(),
            ..Default::default()
        })
        .collect();
    let count = items.len();
    let mut results = client.decide_stream(tokio_stream::iter(items)).await.unwrap().into_inner();
    let mut answered = 0;
    while let Some(result) = results.message().await.unwrap() {
        assert!(matches!(result.result, Some(gw::decide_stream_result::Result::Decision(_))));
        answered += 1;
    }
    assert_eq!(answered, count);
    // Change events flow through the proxies too.
    let event = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap().unwrap();
    assert!(event.event.is_some());
    // Rights: erase the US subject by its CRM id.
    client
        .erase(gw::EraseRequest {
            subject: selector("crm_account", "CRM-US-99173"),
            idempotency_key: String::new(),
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .expect("erase");

    for seed in SEEDS {
        let personal = seed.personal.iter().map(|p| ("", *p, &[][..]));
        for (_, value, fragments) in seed.identifiers.iter().copied().chain(personal) {
            for needle in std::iter::once(&value).chain(fragments.iter()) {
                for (proxy_region, proxy) in &proxies {
                    let recording = proxy.recording();
                    assert!(!recording.to_node.is_empty(), "traffic with {proxy_region} was recorded");
                    if *proxy_region == seed.home {
                        continue;
                    }
                    assert!(
                        !recording.contains(needle.as_bytes()),
                        "an identifier of a {} subject appeared in traffic with {proxy_region}",
                        seed.home
                    );
                }
            }
        }
        // The recorder sees plain bytes: registration carried the identifiers home.
        let home = &proxies.iter().find(|(r, _)| *r == seed.home).unwrap().1;
        let (_, value, fragments) = seed.identifiers[0];
        let recording = home.recording();
        assert!(
            std::iter::once(&value).chain(fragments.iter()).any(|n| recording.contains(n.as_bytes())),
            "registration reaches the home region in the clear"
        );
        for p in seed.personal {
            assert!(recording.contains(p.as_bytes()), "captures reach the home region in the clear");
        }
    }
}
