//! Caller identity and scopes at the gateway: mutual TLS with the cluster CA plus a caller
//! identity (URI SAN) whose scopes cover the method.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::{TestCluster, channel, region};
use domicile_runtime::identity::Scope;
use domicile_runtime::pki::{ClusterPki, GATEWAY_SERVER_NAME};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");

fn decide_request() -> gw::DecideRequest {
    gw::DecideRequest {
        subject: Some(gw::SubjectSelector {
            selector: Some(gw::subject_selector::Selector::Identifier(common::Identifier {
                kind: "email".into(),
                value: "nobody.auth@example.com".into(),
            })),
        }),
        purpose: "marketing".into(),
        channel: "email".into(),
        at: None,
    }
}

fn register_request() -> gw::RegisterRequest {
    gw::RegisterRequest {
        jurisdiction: "US".into(),
        identifiers: vec![common::Identifier { kind: "email".into(), value: "auth.probe@example.com".into() }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_need_a_cluster_certificate_an_identity_and_the_scope() {
    let cluster = TestCluster::start(BIN, &["us-east"]).await.expect("cluster starts");

    // No certificate: TLS lets the connection through so the refusal is a precise status.
    let mut anonymous = cluster.gateway_without_certificate().await.unwrap();
    let status = anonymous.decide(decide_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A certificate from another CA: the handshake fails, nothing is served.
    let foreign_dir = tempfile::tempdir().unwrap();
    // It even claims every scope: only the CA makes an identity count.
    let intruder = domicile_runtime::identity::CallerIdentity::new("intruder", region("us-east"), &Scope::ALL).unwrap();
    let foreign = ClusterPki::open_or_create(foreign_dir.path()).unwrap().caller(&intruder).unwrap();
    let foreign = domicile_runtime::tls::TlsFiles { ca: cluster.cluster.client_tls().ca.clone(), ..foreign };
    match channel(&cluster.cluster.gateway_addr().to_string(), &foreign, GATEWAY_SERVER_NAME).await {
        Err(_) => {}
        Ok(ch) => {
            let status = domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient::new(ch)
                .decide(decide_request())
                .await
                .unwrap_err();
            assert!(
                // The server aborts the handshake; how the client reports it depends on timing.
                matches!(status.code(), Code::Unknown | Code::Unavailable | Code::Cancelled),
                "a foreign certificate is refused: {status:?}"
            );
        }
    }

    // A cluster certificate that names no caller identity (a node's certificate).
    let plain = cluster.pki().unwrap().node(&region("us-east")).unwrap();
    let mut plain = cluster.gateway_as(&plain).await.unwrap();
    assert_eq!(plain.decide(decide_request()).await.unwrap_err().code(), Code::Unauthenticated);

    // A decide-only caller: decisions pass authorisation, captures and rights do not.
    let decider = cluster.issue_caller("campaigns", "us-east", &[Scope::Decide]).unwrap();
    let mut decider = cluster.gateway_as(&decider).await.unwrap();
    let status = decider.decide(decide_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "authorised; the subject is simply unknown: {status:?}");
    let status = decider.register(register_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("capture"), "the message names the missing scope");
    let status = decider.erase(gw::EraseRequest { subject: decide_request().subject }).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = decider.resolve(gw::ResolveRequest { identifier: None }).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // A capture caller registers; the CLI certificate (every scope) does everything.
    let capture = cluster.issue_caller("web-form", "us-east", &[Scope::Capture]).unwrap();
    let mut capture = cluster.gateway_as(&capture).await.unwrap();
    capture.register(register_request()).await.expect("capture scope registers");
    let mut cli = cluster.gateway().await.unwrap();
    cli.decide(decide_request()).await.unwrap_err();
    cli.resolve(gw::ResolveRequest { identifier: register_request().identifiers.into_iter().next() })
        .await
        .expect("the CLI certificate has every scope");
}
