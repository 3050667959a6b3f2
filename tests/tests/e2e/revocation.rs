//! Revoking callers while the cluster serves (real processes): a certificate, a token, or every
//! credential of a caller issued before a time is refused from the next request on, on
//! connections that are already open, at the gateway and at a node called directly; a damaged
//! list leaves the previous one in force; tokens are bounded in time whatever their issuer wrote.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::time::{Duration, Instant};

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::node::v1 as node;
use domicile_cluster_tests::{Cluster as _, TestCluster, TestOptions, channel, region};
use domicile_runtime::identity::{CallerIdentity, Scope};
use domicile_runtime::token::TokenIssuer;
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");

/// Reload interval of the cluster's lists: a change must be in force within a few of these.
const RELOAD_MS: u64 = 100;

fn decide_request() -> gw::DecideRequest {
    gw::DecideRequest {
        subject: Some(gw::SubjectSelector {
            selector: Some(gw::subject_selector::Selector::Identifier(common::Identifier {
                kind: "email".into(),
                value: "nobody.revoked@example.com".into(),
            })),
        }),
        purpose: "marketing".into(),
        channel: "email".into(),
        at: None,
        ..Default::default()
    }
}

/// NOT_FOUND: authorised (the subject is unknown); UNAUTHENTICATED: refused. A macro: token
/// clients and certificate clients are different types.
macro_rules! gateway_code {
    ($client:expr) => {
        $client.decide(decide_request()).await.map(|_| Code::Ok).unwrap_or_else(|s| s.code())
    };
}

async fn node_code(client: &mut node::regional_node_client::RegionalNodeClient<Channel>) -> Code {
    client.info(node::InfoRequest {}).await.map(|_| Code::Ok).unwrap_or_else(|s| s.code())
}

/// Polls until `$probe` gives `$want`, for at most 20 reload intervals; the time it took.
macro_rules! within_reloads {
    ($want:expr, $probe:expr) => {{
        let started = Instant::now();
        loop {
            let got = $probe;
            if got == $want {
                break started.elapsed();
            }
            assert!(started.elapsed() < Duration::from_millis(RELOAD_MS * 20), "still {got:?}, want {:?}", $want);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }};
}

fn sha256_of(pem_path: &std::path::Path) -> String {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(pem_path).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    // As `openssl x509 -fingerprint -sha256` prints it.
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificates_tokens_and_callers_are_refused_on_open_connections_at_gateway_and_node() {
    let options = TestOptions { packs_reload_ms: Some(RELOAD_MS), ..TestOptions::default() };
    let cluster = TestCluster::start_with(BIN, &["eu-central"], options).await.expect("cluster starts");
    let list = cluster.dir().join(domicile_cli::cluster::REVOCATION_FILE);
    assert!(std::fs::read_to_string(&list).unwrap().contains("version = 1"), "the cluster starts with an empty list");
    let eu = region("eu-central");

    // Open connections, used before any revocation: a gateway caller, a token caller, and an
    // operator of the region calling its node directly.
    let laptop = cluster.issue_caller("laptop", "eu-central", &[Scope::Decide]).unwrap();
    let mut laptop_gw = cluster.gateway_as(&laptop).await.unwrap();
    let shop = cluster.issue_caller("shop", "eu-central", &[Scope::Decide]).unwrap();
    let mut shop_gw = cluster.gateway_as(&shop).await.unwrap();
    let ops = cluster.issue_caller("ops", "eu-central", &[Scope::Admin]).unwrap();
    let node_addr = cluster.node_addr(&eu).unwrap().to_string();
    let mut ops_node = node::regional_node_client::RegionalNodeClient::new(
        channel(&node_addr, &ops, &eu.node_server_name()).await.unwrap(),
    );
    let issuer = TokenIssuer::open_or_create(&cluster.dir().join("pki")).unwrap();
    let now = domicile_runtime::process::now_unix();
    let kiosk = CallerIdentity::new("kiosk", eu.clone(), &[Scope::Decide]).unwrap();
    let kiosk_token = issuer.issue(&kiosk, now, now + 600).unwrap();
    let other_kiosk_token = issuer.issue(&kiosk, now, now + 600).unwrap();
    let bare = cluster.channel_without_certificate().await.unwrap();
    let mut kiosk_gw = token_client(bare.clone(), &kiosk_token.token);
    let mut other_kiosk_gw = token_client(bare.clone(), &other_kiosk_token.token);
    assert_eq!(gateway_code!(laptop_gw), Code::NotFound);
    assert_eq!(gateway_code!(shop_gw), Code::NotFound);
    assert_eq!(gateway_code!(kiosk_gw), Code::NotFound);
    assert_eq!(gateway_code!(other_kiosk_gw), Code::NotFound);
    assert_eq!(node_code(&mut ops_node).await, Code::Ok);

    // One certificate (the laptop's) and one token (the first kiosk token), by fingerprint and id.
    std::fs::write(
        &list,
        format!(
            "version = 1\n[[certificate]]\nsha256 = \"{}\"\nreason = \"laptop lost\"\n[[certificate]]\nsha256 = \"{}\"\n[[token]]\nid = \"{}\"\n",
            sha256_of(&laptop.cert),
            sha256_of(&ops.cert),
            kiosk_token.id
        ),
    )
    .unwrap();
    let took = within_reloads!(Code::Unauthenticated, gateway_code!(laptop_gw));
    eprintln!("certificate revoked at the gateway after {took:?}");
    within_reloads!(Code::Unauthenticated, gateway_code!(kiosk_gw));
    let took = within_reloads!(Code::Unauthenticated, node_code(&mut ops_node).await);
    eprintln!("certificate revoked at the node after {took:?}");
    let status = laptop_gw.decide(decide_request()).await.unwrap_err();
    assert_eq!(status.message(), domicile_runtime::revocation::REVOKED);
    // Nobody else is touched.
    assert_eq!(gateway_code!(shop_gw), Code::NotFound);
    assert_eq!(gateway_code!(other_kiosk_gw), Code::NotFound);
    // A new connection with the revoked certificate fares no better.
    let mut again = cluster.gateway_as(&laptop).await.unwrap();
    assert_eq!(gateway_code!(again), Code::Unauthenticated);

    // A damaged list (a half-written edit) keeps the list in force: nothing comes back.
    std::fs::write(&list, "version = 1\n[[certificate]]\nsha256 = \"5F:0B").unwrap();
    tokio::time::sleep(Duration::from_millis(RELOAD_MS * 5)).await;
    assert_eq!(gateway_code!(laptop_gw), Code::Unauthenticated);
    assert_eq!(gateway_code!(kiosk_gw), Code::Unauthenticated);
    assert_eq!(node_code(&mut ops_node).await, Code::Unauthenticated);

    // A caller revoked as a whole: every certificate and token of `shop` and `kiosk` issued up
    // to now, on open connections; one issued afterwards works.
    let cut_off = jiff::Timestamp::from_second(domicile_runtime::process::now_unix() + 1).unwrap();
    std::fs::write(
        &list,
        format!(
            "version = 1\n[[caller]]\nname = \"shop\"\nregion = \"eu-central\"\nissued_before = \"{cut_off}\"\n\
             [[caller]]\nname = \"kiosk\"\nregion = \"eu-central\"\nissued_before = \"{cut_off}\"\n"
        ),
    )
    .unwrap();
    within_reloads!(Code::Unauthenticated, gateway_code!(shop_gw));
    within_reloads!(Code::Unauthenticated, gateway_code!(other_kiosk_gw));
    // The fingerprint entries are gone from the list: the laptop and the operator are back.
    within_reloads!(Code::NotFound, gateway_code!(laptop_gw));
    within_reloads!(Code::Ok, node_code(&mut ops_node).await);
    // Re-issued after the cut-off (certificates' validity starts a minute back: wait it out for
    // the token only, whose issue time this test chooses).
    let later = cut_off.as_second() + 1;
    let fresh = issuer.issue(&kiosk, later, later + 600).unwrap();
    let mut fresh_gw = token_client(bare.clone(), &fresh.token);
    assert_eq!(gateway_code!(fresh_gw), Code::NotFound, "a token issued after the cut-off is admitted");

    // Clearing the list restores everyone, live.
    std::fs::write(&list, "version = 1\n").unwrap();
    within_reloads!(Code::NotFound, gateway_code!(shop_gw));
    within_reloads!(Code::NotFound, gateway_code!(other_kiosk_gw));

    // A gateway or a node does not start on a list it cannot read (it would serve revoked
    // callers): damaged, then restarted.
    std::fs::write(&list, "version = 1\n[[token]]\nid = \"not-an-id\"\n").unwrap();
    let mut cluster = cluster;
    let refused = cluster.cluster.restart_gateway().await.expect_err("the gateway refuses to start");
    let log = std::fs::read_to_string(cluster.dir().join("logs").join("gateway.log")).unwrap_or_default();
    let said = format!("{refused:#}\n{log}");
    assert!(said.contains("revocation list") && said.contains("token[0].id"), "{said}");
    let refused = cluster.cluster.restart_node(&eu).await;
    let log = std::fs::read_to_string(cluster.dir().join("logs").join("node-eu-central.log")).unwrap_or_default();
    assert!(refused.is_err() || log.contains("revocation list"), "{refused:?}\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_outside_the_lifetime_the_gateway_accepts_are_refused() {
    let cluster = TestCluster::start(BIN, &["eu-central"]).await.expect("cluster starts");
    let issuer = TokenIssuer::open_or_create(&cluster.dir().join("pki")).unwrap();
    let kiosk = CallerIdentity::new("kiosk", region("eu-central"), &[Scope::Decide]).unwrap();
    let bare = cluster.channel_without_certificate().await.unwrap();
    let now = domicile_runtime::process::now_unix();
    let cases = [
        ("a day and a second", now - 1, now + 24 * 3600, Code::Unauthenticated),
        ("issued ten minutes ahead", now + 600, now + 1200, Code::Unauthenticated),
        ("expired a second ago", now - 600, now - 1, Code::Unauthenticated),
        ("an hour, now", now, now + 3600, Code::NotFound),
    ];
    for (what, issued_at, expires_at, want) in cases {
        let token = issuer.issue(&kiosk, issued_at, expires_at).unwrap().token;
        let status = token_client(bare.clone(), &token).decide(decide_request()).await;
        let code = status.as_ref().map(|_| Code::Ok).unwrap_or_else(|s| s.code());
        assert_eq!(code, want, "{what}: {status:?}");
        if let Err(status) = status {
            assert!(!status.message().contains(&token), "{what}: the status never repeats the token");
        }
    }
    // The first token format (no id, no issue time) is refused by name.
    let status = token_client(bare, "dmt1.3130.00").decide(decide_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("no longer accepted"), "{}", status.message());
}

type TokenClient =
    gw::domicile_client::DomicileClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

fn token_client(channel: Channel, token: &str) -> TokenClient {
    let bearer = Bearer(format!("Bearer {token}").parse().unwrap());
    gw::domicile_client::DomicileClient::with_interceptor(channel, bearer)
}
