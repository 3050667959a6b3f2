//! How the node and gateway accept connections (`runtime/src/tls.rs`): mutual TLS handshakes run
//! concurrently, so peers that connect and then stall, or speak something other than TLS, hold up
//! no one else and stop nothing; a node insists on a client certificate during the handshake.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::time::Duration;

use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::node::v1 as node_pb;
use domicile_cluster_tests::{Cluster as _, ScenarioCluster, region, select_email};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::{ClientTlsConfig, Endpoint};

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");

/// Connections that never complete a handshake: some send nothing, some send bytes that are not
/// TLS. Returned so that they stay open while the test goes on.
async fn stalled_and_garbage(addr: std::net::SocketAddr) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for i in 0..32 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        if i % 4 == 0 {
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        }
        held.push(tcp);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_or_non_tls_connections_block_no_one_and_nodes_require_a_client_certificate() {
    let cluster = ScenarioCluster::start(BIN, &["us-east"]).await.expect("cluster starts");
    let us = region("us-east");
    let node_addr = cluster.node_addr(&us).unwrap();

    let _held_gateway = stalled_and_garbage(cluster.gateway_addr()).await;
    let _held_node = stalled_and_garbage(node_addr).await;

    // With 64 handshakes pending, a proper caller is served at once by both servers, through
    // new connections (the first ones are made only now).
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        let mut gateway = cluster.gateway().await.unwrap();
        let status = gateway
            .decide(gw::DecideRequest {
                subject: select_email("nobody.tls@example.com"),
                purpose: "marketing".into(),
                channel: "email".into(),
                at: None,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "served and authorised: {status:?}");
        let mut node = cluster.node(&us).await.unwrap();
        node.list_links(node_pb::ListLinksRequest { batch_size: 0 }).await.expect("the node serves its operator");
    })
    .await;
    assert!(served.is_ok(), "stalled handshakes held up other callers");

    // A node never serves a peer without a certificate: the handshake itself is refused.
    let ca = std::fs::read(&cluster.client_tls().ca).unwrap();
    let anonymous = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name(us.node_server_name());
    let refused = match Endpoint::from_shared(format!("https://{node_addr}"))
        .unwrap()
        .tls_config(anonymous)
        .unwrap()
        .connect()
        .await
    {
        Err(_) => true,
        Ok(channel) => {
            let status = domicile_cluster_tests::pb::node::v1::regional_node_client::RegionalNodeClient::new(channel)
                .list_links(node_pb::ListLinksRequest { batch_size: 0 })
                .await
                .unwrap_err();
            // The server aborts the handshake; how the client reports it depends on timing.
            matches!(status.code(), Code::Unknown | Code::Unavailable | Code::Cancelled)
        }
    };
    assert!(refused, "a node served a peer without a client certificate");
}

/// The protocol floor and the cipher suites, tried from outside with OpenSSL's client against the
/// gateway and a node: TLS 1.1 and a non-AEAD TLS 1.2 suite are refused in the handshake, TLS 1.2
/// with an AEAD suite and TLS 1.3 are accepted (deploy/README.md lists the suites).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_below_1_2_and_non_aead_suites_are_refused() {
    let has_openssl = std::process::Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success());
    assert!(has_openssl, "this test needs OpenSSL's command-line client (Debian: apt-get install openssl)");
    let cluster = ScenarioCluster::start(BIN, &["eu-central"]).await.expect("cluster starts");
    let tls = cluster.client_tls().clone();
    let node_addr = cluster.node_addr(&region("eu-central")).unwrap();
    for addr in [cluster.gateway_addr(), node_addr] {
        let handshake = |args: &[&str]| {
            let mut command = std::process::Command::new("openssl");
            command
                .arg("s_client")
                .args(["-connect", &addr.to_string()])
                .arg("-cert")
                .arg(&tls.cert)
                .arg("-key")
                .arg(&tls.key)
                .arg("-CAfile")
                .arg(&tls.ca)
                .args(args)
                .stdin(std::process::Stdio::null());
            let out = command.output().unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            (out.status.success() && text.contains("Cipher is ") && !text.contains("Cipher is (NONE)"), text)
        };
        // SECLEVEL=0 lets this client offer what a weak client would; refusing is the server's job.
        let (ok, text) = handshake(&["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]);
        assert!(!ok, "{addr}: TLS 1.1 must be refused: {text}");
        let (ok, text) = handshake(&["-tls1_2", "-cipher", "AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA"]);
        assert!(!ok, "{addr}: a non-AEAD suite must be refused: {text}");
        let (ok, text) = handshake(&["-tls1_2"]);
        assert!(ok && text.contains("TLSv1.2"), "{addr}: TLS 1.2 with an AEAD suite is accepted: {text}");
        let (ok, text) = handshake(&["-tls1_3"]);
        assert!(ok && text.contains("TLSv1.3"), "{addr}: TLS 1.3 is accepted: {text}");
    }
}

/// A TLS connection to the gateway from `local` (an address of the loopback network), without a
/// client certificate: served (its calls are answered, UNAUTHENTICATED) or closed by the server.
async fn anonymous_from(cluster: &ScenarioCluster, local: &str) -> Result<Code, tonic::transport::Error> {
    Ok(decided(anonymous_connection(cluster, local).await?).await)
}

/// The code of a decision asked for on `channel` (UNAUTHENTICATED without a credential).
async fn decided(channel: tonic::transport::Channel) -> Code {
    let request = gw::DecideRequest {
        subject: select_email("nobody.bounded@example.com"),
        purpose: "marketing".into(),
        channel: "email".into(),
        ..Default::default()
    };
    let answer = gw::domicile_client::DomicileClient::new(channel).decide(request).await;
    answer.map_or_else(|s| s.code(), |_| Code::Ok)
}

/// An anonymous TLS connection to the gateway from `local`, its HTTP/2 handshake done: held open
/// by the caller, or refused (closed at once by the server).
async fn anonymous_connection(
    cluster: &ScenarioCluster,
    local: &str,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let ca = std::fs::read(&cluster.client_tls().ca).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name(domicile_runtime::pki::GATEWAY_SERVER_NAME);
    Endpoint::from_shared(format!("https://{}", cluster.gateway_addr()))
        .unwrap()
        .local_address(Some(local.parse().unwrap()))
        .connect_timeout(Duration::from_secs(2))
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
}

/// Found by a review: a peer needs no certificate to open connections that never finish their
/// handshake, and each held a task and its buffers for the handshake timeout, as many as it
/// opened. Now one source address holds at most `MAX_HANDSHAKES_PER_ADDRESS` handshakes: the
/// connections beyond are closed at once, callers from other addresses are served meanwhile, and
/// once the stalled connections go the address is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_a_bounded_number_of_handshakes() {
    let cluster = ScenarioCluster::start(BIN, &["us-east"]).await.expect("cluster starts");
    let limit = domicile_runtime::tls::MAX_HANDSHAKES_PER_ADDRESS;
    let mut held = Vec::new();
    for _ in 0..limit + 16 {
        held.push(TcpStream::connect(cluster.gateway_addr()).await.unwrap());
    }
    // Which the server closed (a read ends) and which it keeps waiting for a ClientHello.
    let mut reads = tokio::task::JoinSet::new();
    for (i, mut tcp) in held.into_iter().enumerate() {
        reads.spawn(async move {
            let mut byte = [0u8; 1];
            let closed =
                matches!(tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut byte)).await, Ok(Ok(0) | Err(_)));
            (i, closed, tcp)
        });
    }
    let mut results: Vec<(usize, bool, TcpStream)> = reads.join_all().await;
    results.sort_by_key(|(i, ..)| *i);
    let closed: Vec<usize> = results.iter().filter(|(_, closed, _)| *closed).map(|(i, ..)| *i).collect();
    assert_eq!(closed, (limit..limit + 16).collect::<Vec<_>>(), "exactly the connections beyond the bound are closed");

    assert_eq!(
        anonymous_from(&cluster, "127.0.0.2").await.unwrap(),
        Code::Unauthenticated,
        "another address is served"
    );
    assert!(anonymous_from(&cluster, "127.0.0.1").await.is_err(), "the address holding the stalled handshakes is not");
    drop(results);
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(code) = anonymous_from(&cluster, "127.0.0.1").await {
                return code;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("served again once the stalled connections are gone");
    assert_eq!(served, Code::Unauthenticated);
}

/// A peer needs no certificate for a connection to the gateway (token callers have none), and
/// the per-address bound held only its handshakes: from one address, as many finished
/// connections as the server's whole bound, shutting every other caller out. Now one source
/// holds at most `MAX_CONNECTIONS_PER_ADDRESS` connections: the ones beyond are closed at once,
/// another address is served meanwhile, and once some close the address is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_a_bounded_number_of_open_connections() {
    let limit = domicile_runtime::tls::MAX_CONNECTIONS_PER_ADDRESS;
    // Both ends of each connection may be in this process (the in-process cluster), and other
    // tests run beside it: as `domicile` does, the soft limit of open files goes up to the hard.
    domicile_cli::open_files_up_to_the_hard_limit();
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let needed = 4 * limit as u64;
    assert!(hard >= needed, "this test holds about {needed} open files; the hard limit is {hard} (raise `ulimit -Hn`)");
    let cluster = ScenarioCluster::start(BIN, &["us-east"]).await.expect("cluster starts");
    // An address nothing else in the test connects from.
    let flood = "127.0.0.3";
    let mut held = Vec::with_capacity(limit);
    for n in 0..limit {
        let channel = anonymous_connection(&cluster, flood).await;
        held.push(channel.unwrap_or_else(|e| panic!("connection {n} of {limit} is accepted: {e:?}")));
    }
    for _ in 0..8 {
        assert!(anonymous_connection(&cluster, flood).await.is_err(), "a connection beyond the bound is closed");
    }
    // The ones held are still served, and so is another address.
    assert_eq!(decided(held[limit - 1].clone()).await, Code::Unauthenticated, "a held connection is answered");
    assert_eq!(
        anonymous_from(&cluster, "127.0.0.2").await.unwrap(),
        Code::Unauthenticated,
        "another address is served"
    );
    // Closing some frees their places.
    held.truncate(limit - 4);
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if anonymous_connection(&cluster, flood).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "served again once connections of the address close");
}

/// A peer that finishes its TLS and HTTP/2 handshakes and then goes silent (a host switched off,
/// a NAT that dropped the flow: nothing answers the server's pings) loses its connection, and
/// with it its place among its source's connections, once a keepalive ping goes unanswered:
/// `KEEPALIVE_INTERVAL` of silence, then `KEEPALIVE_TIMEOUT`. Without keepalive it would stay
/// open for as long as the server runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gone_silent_loses_its_connection_to_an_unanswered_keepalive_ping() {
    use rustls_pki_types::pem::PemObject;
    let cluster = ScenarioCluster::start(BIN, &["us-east"]).await.expect("cluster starts");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(&cluster.client_tls().ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let name = rustls_pki_types::ServerName::try_from(domicile_runtime::pki::GATEWAY_SERVER_NAME).unwrap();
    let tcp = TcpStream::connect(cluster.gateway_addr()).await.unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("the TLS handshake");
    // The HTTP/2 preface and an empty SETTINGS frame; then the server's own SETTINGS arrive.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    let mut frame = [0u8; 9];
    tls.read_exact(&mut frame).await.expect("the server's first frame");
    assert_eq!(frame[3], 0x04, "a SETTINGS frame");
    // Silent from here on: nothing read, nothing answered.
    let silent = std::time::Instant::now();
    let interval = domicile_runtime::tls::KEEPALIVE_INTERVAL;
    let limit = interval + domicile_runtime::tls::KEEPALIVE_TIMEOUT + Duration::from_secs(15);
    tokio::time::sleep(interval.saturating_sub(Duration::from_secs(5))).await;
    // Then read what the server sent meanwhile, until it closes the connection.
    let closed = tokio::time::timeout(limit.saturating_sub(silent.elapsed()), async {
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return silent.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closes a connection whose peer answers no ping");
    assert!(closed >= interval, "closed by the unanswered ping, not before it: after {closed:?}");
}
