//! Caller identity and scopes at the gateway: mutual TLS with the cluster CA plus a caller
//! identity (URI SAN) whose scopes cover the method, or, without a certificate, a token signed
//! with the cluster's token key.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::{Cluster as _, ScenarioCluster, channel, region};
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
        ..Default::default()
    }
}

fn register_request() -> gw::RegisterRequest {
    gw::RegisterRequest {
        jurisdiction: "US".into(),
        identifiers: vec![common::Identifier { kind: "email".into(), value: "auth.probe@example.com".into() }],
        idempotency_key: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_need_a_cluster_certificate_an_identity_and_the_scope() {
    let cluster = ScenarioCluster::start(BIN, &["us-east"]).await.expect("cluster starts");

    // No certificate: TLS lets the connection through so the refusal is a precise status.
    let mut anonymous = cluster.gateway_without_certificate().await.unwrap();
    let status = anonymous.decide(decide_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A certificate from another CA: the handshake fails, nothing is served.
    let foreign_dir = tempfile::tempdir().unwrap();
    // It even claims every scope: only the CA makes an identity count.
    let intruder = domicile_runtime::identity::CallerIdentity::new("intruder", region("us-east"), &Scope::ALL).unwrap();
    let foreign = ClusterPki::open_or_create(foreign_dir.path()).unwrap().caller(&intruder).unwrap();
    let foreign = domicile_runtime::tls::TlsFiles { ca: cluster.client_tls().ca.clone(), ..foreign };
    match channel(&cluster.gateway_addr().to_string(), &foreign, GATEWAY_SERVER_NAME).await {
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
    let status = decider
        .erase(gw::EraseRequest {
            subject: decide_request().subject,
            idempotency_key: String::new(),
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = decider.resolve(gw::ResolveRequest { identifier: None }).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // A capture caller registers; the CLI certificate (every scope) does everything.
    let capture = cluster.issue_caller("web-form", "us-east", &[Scope::Capture]).unwrap();
    let mut capture = cluster.gateway_as(&capture).await.unwrap();
    capture.register(register_request()).await.expect("capture scope registers");
    // A merge hands one person's data to another, whose holder could then have it exported: a
    // capture credential (a web form, a kiosk) may not merge (found by an attacker's review).
    let status = capture
        .merge(gw::MergeRequest {
            into: register_request()
                .identifiers
                .into_iter()
                .next()
                .map(|i| gw::SubjectSelector { selector: Some(gw::subject_selector::Selector::Identifier(i)) }),
            from: register_request()
                .identifiers
                .into_iter()
                .next()
                .map(|i| gw::SubjectSelector { selector: Some(gw::subject_selector::Selector::Identifier(i)) }),
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let mut cli = cluster.gateway().await.unwrap();
    cli.decide(decide_request()).await.unwrap_err();
    cli.resolve(gw::ResolveRequest { identifier: register_request().identifiers.into_iter().next() })
        .await
        .expect("the CLI certificate has every scope");
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

type TokenClient = domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

fn with_token(channel: tonic::transport::Channel, token: String) -> TokenClient {
    let bearer = Bearer(format!("Bearer {token}").parse().unwrap());
    domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient::with_interceptor(channel, bearer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_certificate_can_use_a_signed_token_with_its_scopes_and_expiry() {
    use domicile_runtime::identity::CallerIdentity;
    use domicile_runtime::token::TokenIssuer;

    let cluster = ScenarioCluster::start(BIN, &["us-east"]).await.expect("cluster starts");
    let issuer = TokenIssuer::open_or_create(&cluster.dir().join("pki")).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let kiosk = CallerIdentity::new("kiosk", region("us-east"), &[Scope::Decide]).unwrap();
    let channel = cluster.channel_without_certificate().await.unwrap();

    // A decide-only token: decisions pass authorisation, captures do not.
    let mut client = with_token(channel.clone(), issuer.issue(&kiosk, now, now + 600).unwrap().token);
    let status = client.decide(decide_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "authorised; the subject is simply unknown: {status:?}");
    let status = client.register(register_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Expired, tampered, and signed by another cluster's key: all UNAUTHENTICATED, and the
    // status never repeats the token.
    let expired = issuer.issue(&kiosk, now - 600, now - 1).unwrap().token;
    let everything = CallerIdentity::new("kiosk", region("us-east"), &Scope::ALL).unwrap();
    let genuine = issuer.issue(&kiosk, now, now + 600).unwrap().token;
    let widened = issuer.issue(&everything, now, now + 600).unwrap().token;
    // The payload of a widened token with the genuine token's signature.
    let tampered = format!("{}.{}", widened.rsplit_once('.').unwrap().0, genuine.rsplit_once('.').unwrap().1);
    let other_dir = tempfile::tempdir().unwrap();
    let foreign =
        TokenIssuer::open_or_create(other_dir.path()).unwrap().issue(&everything, now, now + 600).unwrap().token;
    for token in [&expired, &tampered, &foreign, &"dmt1.not-a-token".to_owned()] {
        let status = with_token(channel.clone(), token.clone()).decide(decide_request()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(!status.message().contains(token.as_str()), "no token in the status");
    }

    // A capture token registers.
    let form = CallerIdentity::new("web-form", region("us-east"), &[Scope::Capture]).unwrap();
    let mut form = with_token(channel.clone(), issuer.issue(&form, now, now + 600).unwrap().token);
    form.register(register_request()).await.expect("a capture token registers");

    // A certificate wins over a token: the decide-only certificate stays decide-only even
    // with an all-scopes token beside it.
    let decider = cluster.issue_caller("campaigns", "us-east", &[Scope::Decide]).unwrap();
    let tls_channel =
        domicile_cluster_tests::channel(&cluster.gateway_addr().to_string(), &decider, GATEWAY_SERVER_NAME)
            .await
            .unwrap();
    let status = with_token(tls_channel, widened.clone()).register(register_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}
