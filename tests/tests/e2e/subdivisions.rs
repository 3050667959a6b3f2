//! Subdivisions end to end (issue 17, item 6): only ISO 3166-2 codes are accepted, at the gateway
//! and at a node, an unknown one is INVALID_ARGUMENT that names the field, not the value, and
//! stores nothing; a subdivision without a pack of its own is decided by its country's pack and
//! every decision says so, in unary decisions and in streams alike. Invariants 3, 5 and 8.

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
use domicile_cluster_tests::{Cluster as _, ScenarioCluster, identifier, region, select as by_identifier};
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const REGIONS: &[&str] = &["eu-central", "us-east", "sa-east"];

const TYPO_EMAIL: &str = "typo.subdivision-probe@example.com";

async fn decide(client: &mut DomicileClient<Channel>, email: &str, purpose: &str, channel: &str) -> common::Decision {
    client
        .decide(gw::DecideRequest {
            subject: by_identifier("email", email),
            purpose: purpose.into(),
            channel: channel.into(),
            at: None,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("decide for {email}: {e:?}"))
        .into_inner()
        .decision
        .expect("a decision")
}

async fn register(client: &mut DomicileClient<Channel>, jurisdiction: &str, email: &str) -> gw::RegisterResponse {
    client
        .register(gw::RegisterRequest {
            jurisdiction: jurisdiction.into(),
            identifiers: vec![identifier("email", email)],
            idempotency_key: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("register {jurisdiction}: {e:?}"))
        .into_inner()
}

/// INVALID_ARGUMENT naming `jurisdiction`, saying what is wrong, and echoing nothing of the value.
fn assert_unknown_subdivision(what: &str, status: &tonic::Status, sent: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    let message = status.message();
    assert!(message.contains("`jurisdiction`") && message.contains("ISO 3166-2"), "{what}: {message}");
    let subdivision = sent.split_once('-').map_or(sent, |(_, s)| s);
    for echo in [sent, subdivision, &sent.to_ascii_uppercase(), &subdivision.to_ascii_uppercase()] {
        assert!(!message.contains(echo), "{what}: the message echoes {echo:?}: {message}");
    }
}

fn pack_id(d: &common::Decision) -> &str {
    d.pack.as_ref().map_or("", |p| p.id.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_subdivisions_are_refused_and_known_ones_without_a_pack_fall_back_explicitly() {
    let cluster = ScenarioCluster::start(BIN, REGIONS).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let counts = || async {
        let mut all = Vec::new();
        for r in REGIONS {
            let info = cluster.node(&region(r)).await.unwrap().info(node::InfoRequest {}).await.unwrap().into_inner();
            all.push((info.subjects, info.links));
        }
        all
    };
    let before = counts().await;

    // Typos of real subdivisions, in any case, through the gateway.
    for sent in ["US-CAL", "DE-ZZ", "BR-XX", "us-cal", "de-zz", "Br-Xx"] {
        let status = client
            .register(gw::RegisterRequest {
                jurisdiction: sent.into(),
                identifiers: vec![identifier("email", TYPO_EMAIL)],
                idempotency_key: String::new(),
            })
            .await
            .expect_err(sent);
        assert_unknown_subdivision(&format!("gateway {sent}"), &status, sent);
    }
    // A node parses the same way for its direct callers (defence in depth).
    for (home, sent) in [("us-east", "US-CAL"), ("eu-central", "de-zz"), ("sa-east", "BR-XX")] {
        let status = cluster
            .node(&region(home))
            .await
            .unwrap()
            .register(node::RegisterRequest {
                jurisdiction: sent.into(),
                identifiers: vec![identifier("email", TYPO_EMAIL)],
                caller_region: String::new(),
                idempotency_key: String::new(),
            })
            .await
            .expect_err(sent);
        assert_unknown_subdivision(&format!("node {home} {sent}"), &status, sent);
    }
    // Nothing was stored anywhere, and the identifier belongs to no one.
    assert_eq!(counts().await, before, "an unknown subdivision wrote nothing on any node");
    let status = client
        .decide(gw::DecideRequest {
            subject: by_identifier("email", TYPO_EMAIL),
            purpose: "marketing".into(),
            channel: "email".into(),
            at: None,
            ..Default::default()
        })
        .await
        .expect_err("no subject holds the identifier");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // New York has no pack of its own: the federal pack decides, and the decision says it stood in.
    let ny = register(&mut client, "us-ny", "newyork.subject@example.com").await;
    assert_eq!(ny.home_region, "us-east");
    let d = decide(&mut client, "newyork.subject@example.com", "marketing", "email").await;
    assert_eq!(pack_id(&d), "us");
    assert_eq!((d.pack_jurisdiction.as_str(), d.country_fallback), ("US", true), "{d:?}");
    assert_eq!(d.reasons, ["us.marketing.email"]);
    assert!(
        d.explanation.contains("country fallback: no pack covers the subject's subdivision")
            && d.explanation.contains("the pack of its country US"),
        "{}",
        d.explanation
    );
    assert!(!d.explanation.contains("NY"), "the subject's subdivision is not named: {}", d.explanation);

    // California has its overlay: it decides, and no fallback is claimed.
    let ca = register(&mut client, "US-CA", "california.subject@example.com").await;
    assert_eq!(ca.home_region, "us-east");
    let d = decide(&mut client, "california.subject@example.com", "profiling", "web").await;
    assert_eq!(pack_id(&d), "us-ca");
    assert_eq!((d.pack_jurisdiction.as_str(), d.country_fallback), ("US-CA", false), "{d:?}");
    assert_eq!(d.reasons, ["us-ca.profiling.sale-share"], "the overlay's own rule decides");
    assert!(!d.explanation.contains("fallback"), "{}", d.explanation);
    // The same purpose and channel for New York: the federal gap, since no overlay applies.
    let d = decide(&mut client, "newyork.subject@example.com", "profiling", "web").await;
    assert_eq!((pack_id(&d), d.country_fallback), ("us", true), "{d:?}");
    assert_ne!(d.reasons, ["us-ca.profiling.sale-share"]);

    // Other countries: Bavaria and São Paulo fall back to the German and Brazilian packs; a
    // country's own subjects are not a fallback.
    register(&mut client, "DE-BY", "bavaria.subject@example.de").await;
    register(&mut client, "br-sp", "sao-paulo.subject@example.com.br").await;
    register(&mut client, "DE", "germany.subject@example.de").await;
    for (email, pack, jurisdiction, fallback) in [
        ("bavaria.subject@example.de", "de", "DE", true),
        ("sao-paulo.subject@example.com.br", "br", "BR", true),
        ("germany.subject@example.de", "de", "DE", false),
    ] {
        let d = decide(&mut client, email, "marketing", "email").await;
        assert_eq!((pack_id(&d), d.pack_jurisdiction.as_str(), d.country_fallback), (pack, jurisdiction, fallback));
        assert_eq!(d.explanation.contains("country fallback"), fallback, "{}", d.explanation);
    }

    // DecideStream forwards the node's encoded decisions: they say the same.
    let items: Vec<gw::DecideStreamItem> =
        [(1, "newyork.subject@example.com"), (2, "california.subject@example.com"), (3, "bavaria.subject@example.de")]
            .into_iter()
            .map(|(id, email)| gw::DecideStreamItem {
                id,
                subject: by_identifier("email", email),
                purpose: "marketing".into(),
                channel: "email".into(),
                ..Default::default()
            })
            .collect();
    let mut results = client.decide_stream(tokio_stream::iter(items)).await.expect("stream opens").into_inner();
    let mut seen = Vec::new();
    while let Some(result) = results.message().await.expect("stream stays up") {
        let Some(gw::decide_stream_result::Result::Decision(d)) = result.result else {
            panic!("item {} has no decision: {result:?}", result.id)
        };
        seen.push((result.id, pack_id(&d).to_owned(), d.pack_jurisdiction.clone(), d.country_fallback));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            (1, "us".to_owned(), "US".to_owned(), true),
            (2, "us-ca".to_owned(), "US-CA".to_owned(), false),
            (3, "de".to_owned(), "DE".to_owned(), true),
        ]
    );
}
