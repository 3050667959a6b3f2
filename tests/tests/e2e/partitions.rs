//! A region cut off, not killed (real processes; the node in a network namespace the test
//! creates, joined to the gateway's side by a veth pair; traffic stays inside them): a symmetric
//! cut, an asymmetric cut (requests arrive, replies are lost), a slow lossy link (200 ms each way,
//! 5 % loss), and the heal. Fail closed within the node deadline, writes of unknown outcome
//! settled once by their idempotency key, a change made inside the cut-off region during the cut
//! reaches the gateway's watchers after the heal with nothing missed, decisions follow it, and
//! the gateway's directory follows the region again.
//!
//! Cuts and loss are netfilter rules on the veth (`iptables`, in a chain of the test's own in the
//! root namespace and in the node's namespace); the delay is a relay in the test process between
//! the gateway and the veth, since this machine's kernel has no `netem` qdisc. Needs root and
//! iptables (`.ci/run` installs it); without them the test prints SKIPPED and passes.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_cluster_tests::{channel, identifier, select_email};
use domicile_gateway::GatewayConfig;
use domicile_gateway::config::RegionEndpoint;
use domicile_node::NodeConfig;
use domicile_runtime::identity::{CallerIdentity, Scope};
use domicile_runtime::pki::{ClusterPki, GATEWAY_SERVER_NAME};
use domicile_types::RegionId;
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const NODE_TIMEOUT_MS: u64 = 1_000;
const EMAIL: &str = "part.ition@example.de";

/// Runs a command, failing the test on error.
fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The iptables this machine's kernel serves: the legacy tables where present (the kernel's
/// `ip_tables`), else the nftables-based one.
fn iptables() -> Option<&'static str> {
    ["iptables-legacy", "iptables"]
        .into_iter()
        .find(|bin| Command::new(bin).args(["-w", "-L", "-n"]).output().is_ok_and(|o| o.status.success()))
}

/// The test's network: namespace `ns` holding the node's end of a veth pair, the gateway's end in
/// the root namespace, and a netfilter chain of the test's own on each side. Removed on drop
/// (deleting the namespace removes the pair and its rules).
struct Net {
    ns: String,
    outer: String,
    inner: String,
    node_ip: String,
    chain: String,
    iptables: &'static str,
}

impl Net {
    fn create() -> Option<Self> {
        let root = Command::new("id").arg("-u").output().ok().is_some_and(|o| o.stdout.starts_with(b"0"));
        let ip = Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
        if !root || !ip {
            return None;
        }
        let iptables = iptables()?;
        let id = std::process::id() % 100_000;
        let subnet = 1 + id % 250;
        let net = Self {
            ns: format!("dmc-part-{id}"),
            outer: format!("dmo{id}"),
            inner: format!("dmi{id}"),
            node_ip: format!("10.231.{subnet}.2"),
            chain: format!("DMCPART{id}"),
            iptables,
        };
        sh(&["ip", "netns", "add", &net.ns]);
        sh(&["ip", "link", "add", &net.outer, "type", "veth", "peer", "name", &net.inner]);
        sh(&["ip", "link", "set", &net.inner, "netns", &net.ns]);
        sh(&["ip", "addr", "add", &format!("10.231.{subnet}.1/30"), "dev", &net.outer]);
        sh(&["ip", "link", "set", &net.outer, "up"]);
        net.exec(&["ip", "addr", "add", &format!("{}/30", net.node_ip), "dev", &net.inner]);
        net.exec(&["ip", "link", "set", &net.inner, "up"]);
        net.exec(&["ip", "link", "set", "lo", "up"]);
        // Root side: only what leaves through the test's veth goes through the test's chain.
        sh(&[iptables, "-w", "-N", &net.chain]);
        sh(&[iptables, "-w", "-I", "OUTPUT", "-o", &net.outer, "-j", &net.chain]);
        Some(net)
    }

    fn exec(&self, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.ns];
        full.extend_from_slice(args);
        sh(&full);
    }

    /// Rules for what goes towards the node (root side) and towards the gateway (node side):
    /// `None` passes everything, else the extra match of a DROP rule (`[]`: every packet).
    fn filter(&self, towards_node: Option<&[&str]>, towards_gateway: Option<&[&str]>) {
        self.clear();
        if let Some(matches) = towards_node {
            let mut args = vec![self.iptables, "-w", "-A", &self.chain];
            args.extend_from_slice(matches);
            args.extend_from_slice(&["-j", "DROP"]);
            sh(&args);
        }
        if let Some(matches) = towards_gateway {
            let mut args = vec![self.iptables, "-w", "-A", "OUTPUT", "-o", &self.inner];
            args.extend_from_slice(matches);
            args.extend_from_slice(&["-j", "DROP"]);
            self.exec(&args);
        }
    }

    fn clear(&self) {
        sh(&[self.iptables, "-w", "-F", &self.chain]);
        self.exec(&[self.iptables, "-w", "-F", "OUTPUT"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new(self.iptables).args(["-w", "-D", "OUTPUT", "-o", &self.outer, "-j", &self.chain]).output();
        let _ = Command::new(self.iptables).args(["-w", "-F", &self.chain]).output();
        let _ = Command::new(self.iptables).args(["-w", "-X", &self.chain]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip").args(["link", "del", &self.outer]).output();
    }
}

/// A TCP relay between the gateway and the node that holds every chunk for `delay_ms` in each
/// direction (0: passes at once), keeping order.
async fn relay(listener: tokio::net::TcpListener, upstream: SocketAddr, delay_ms: Arc<AtomicU64>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else { return };
        let delay = Arc::clone(&delay_ms);
        tokio::spawn(async move {
            let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else { return };
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::spawn(pump(in_read, out_write, Arc::clone(&delay)));
            pump(out_read, in_write, delay).await;
        });
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = receiver.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buffer = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        let due = tokio::time::Instant::now() + Duration::from_millis(delay_ms.load(Ordering::Relaxed));
        if sender.send((due, buffer[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(sender);
    let _ = writer.await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(prefix: &[&str], role: &str, config: &Path, log: &Path) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(prefix.first().copied().unwrap_or(BIN));
    let rest: Vec<&str> =
        prefix.iter().skip(1).copied().chain(if prefix.is_empty() { vec![] } else { vec![BIN] }).collect();
    command
        .args(rest)
        .args([role, "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true);
    command.spawn().unwrap()
}

async fn decide(client: &mut DomicileClient<Channel>) -> Result<i32, tonic::Status> {
    let request = gw::DecideRequest {
        subject: select_email(EMAIL),
        purpose: "marketing".into(),
        channel: "email".into(),
        at: None,
        ..Default::default()
    };
    client.decide(request).await.map(|r| r.into_inner().decision.unwrap().effect)
}

fn withdraw(key: &str) -> gw::RecordConsentRequest {
    gw::RecordConsentRequest {
        subject: select_email(EMAIL),
        purpose: "marketing".into(),
        channels: vec!["email".into()],
        action: common::ConsentAction::Withdraw as i32,
        idempotency_key: key.into(),
        ..Default::default()
    }
}

/// Polls `decide` until it answers, returning the effect and how long it took.
async fn until_served(client: &mut DomicileClient<Channel>, within: Duration) -> (i32, Duration) {
    let started = Instant::now();
    loop {
        if let Ok(effect) = decide(client).await {
            return (effect, started.elapsed());
        }
        assert!(started.elapsed() < within, "not served again within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_cut_off_fails_closed_in_time_and_catches_up_after_the_heal_with_nothing_missed() {
    let Some(net) = Net::create() else {
        eprintln!("SKIPPED: needs root, iproute2 and iptables (network namespaces, netfilter)");
        return;
    };
    domicile_runtime::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let eu = RegionId::parse("eu-central").unwrap();
    let pki = ClusterPki::open_or_create(&dir.path().join("pki")).unwrap();
    let link_key_file = dir.path().join("link.key");
    domicile_runtime::process::write_private_file(&link_key_file, &[9u8; 32]).unwrap();
    let packs_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policy-packs");
    let node_addr: SocketAddr = format!("{}:7401", net.node_ip).parse().unwrap();
    let node_config = NodeConfig {
        version: 1,
        region: eu.clone(),
        listen: node_addr,
        data_dir: dir.path().join("data"),
        store: Default::default(),
        packs_dir: packs_dir.clone(),
        link_key_file: link_key_file.clone(),
        tls: pki.node(&eu).unwrap(),
        packs_trust: None,
        packs_reload_ms: 0,
        otlp_endpoint: None,
        otlp_metrics_interval_ms: None,
        ownership: domicile_node::config::OwnershipConfig {
            regions: vec![RegionEndpoint { id: eu.clone(), endpoint: node_addr.to_string(), replicas: Vec::new() }],
            claim_timeout_ms: NODE_TIMEOUT_MS,
        },
        revocation_file: None,
        revocation_reload_ms: 1_000,
        erasure_journal_file: None,
        rights: Default::default(),
    };
    let gateway_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let relay_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay_listener.local_addr().unwrap();
    let delay_ms = Arc::new(AtomicU64::new(0));
    tokio::spawn(relay(relay_listener, node_addr, Arc::clone(&delay_ms)));
    let gateway_config = GatewayConfig {
        version: 1,
        listen: gateway_addr,
        packs_dir,
        link_key_file,
        tls: pki.gateway().unwrap(),
        node_timeout_ms: NODE_TIMEOUT_MS,
        bulk_timeout_ms: 30_000,
        regions: vec![RegionEndpoint { id: eu.clone(), endpoint: relay_addr.to_string(), replicas: Vec::new() }],
        packs_trust: None,
        packs_reload_ms: 0,
        otlp_endpoint: None,
        otlp_metrics_interval_ms: None,
        token_public_key_file: None,
        token_max_lifetime_secs: None,
        revocation_file: None,
        revocation_reload_ms: 1_000,
        max_in_flight_per_caller: None,
    };
    let node_file = dir.path().join("node.toml");
    let gateway_file = dir.path().join("gateway.toml");
    std::fs::write(&node_file, toml::to_string(&node_config).unwrap()).unwrap();
    std::fs::write(&gateway_file, toml::to_string(&gateway_config).unwrap()).unwrap();
    let _node = spawn(&["ip", "netns", "exec", &net.ns], "node", &node_file, &dir.path().join("node.log"));
    let _gateway = spawn(&[], "gateway", &gateway_file, &dir.path().join("gateway.log"));

    let caller = CallerIdentity::new("part-ops", eu.clone(), &Scope::ALL).unwrap();
    let tls = pki.caller(&caller).unwrap();
    let mut client = loop {
        if let Ok(ch) = channel(&gateway_addr.to_string(), &tls, GATEWAY_SERVER_NAME).await {
            let mut client = DomicileClient::new(ch);
            let request = gw::RegisterRequest {
                jurisdiction: "DE".into(),
                identifiers: vec![identifier("email", EMAIL)],
                idempotency_key: String::new(),
            };
            if client.register(request).await.is_ok() {
                break client;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let subject_ref = client
        .resolve(gw::ResolveRequest { identifier: Some(identifier("email", EMAIL)) })
        .await
        .unwrap()
        .into_inner()
        .subject_ref;
    let mut grant = withdraw("");
    grant.action = common::ConsentAction::Grant as i32;
    grant.evidence =
        Some(common::Evidence { notice_version: "v3".into(), double_opt_in_confirmed: true, ..Default::default() });
    client.record_consent(grant).await.unwrap();
    assert_eq!(decide(&mut client).await.unwrap(), common::Effect::Allow as i32);
    let mut watch = client.watch(gw::WatchRequest { resume_token: String::new() }).await.unwrap().into_inner();
    let mut token = String::new();
    // The registration and the grant.
    for _ in 0..2 {
        let event = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
        token = event.resume_token;
    }

    // 1. Symmetric cut: decisions fail closed within the node deadline; a write's outcome is
    //    unknown and says how to settle it.
    net.filter(Some(&[]), Some(&[]));
    let started = Instant::now();
    let status = decide(&mut client).await.unwrap_err();
    let detected = started.elapsed();
    assert!(matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded), "{status:?}");
    assert!(detected < Duration::from_millis(NODE_TIMEOUT_MS + 1_000), "failed closed in {detected:?}");
    let lost = client.record_consent(withdraw("part-withdraw-1")).await.unwrap_err();
    assert!(matches!(lost.code(), Code::Unavailable | Code::DeadlineExceeded), "{lost:?}");
    // Inside the cut-off region, its own operator records a change (the node serves it).
    let in_region = dir.path().join("in-region.json");
    std::fs::write(
        &in_region,
        serde_json::json!([{
            "version": "KI-CR-v1.1.0", "jurisdiction": "DE", "consentTimestamp": domicile_runtime::process::now_unix(),
            "collectionMethod": "voice", "consentReceiptID": "r1", "piiPrincipalId": subject_ref,
            "services": [{"service": "survey", "purposes": [{"purpose": "survey", "piiCategory": ["voice"]}]}],
            "domicile": {"state": "denied", "channels": ["voice"], "sequence": 1}
        }])
        .to_string(),
    )
    .unwrap();
    let import = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.ns,
            BIN,
            "records",
            "import",
            "--addr",
            &node_addr.to_string(),
            "--region",
            "eu-central",
        ])
        .args([
            "--ca",
            tls.ca.to_str().unwrap(),
            "--cert",
            tls.cert.to_str().unwrap(),
            "--key",
            tls.key.to_str().unwrap(),
        ])
        .args(["--subject-ref", &subject_ref, "--format", "kantara", "--file", in_region.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));

    // 2. Asymmetric cut: requests reach the node, replies are lost. Still no answer in time, and
    //    the write retried with its key after the heal is applied once.
    net.filter(None, Some(&[]));
    let status = decide(&mut client).await.unwrap_err();
    assert!(matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded), "{status:?}");
    let _ = client.record_consent(withdraw("part-withdraw-1")).await;

    // 3. Heal: served again; the write settled once by its key.
    net.clear();
    let (effect, recovered) = until_served(&mut client, Duration::from_secs(10)).await;
    eprintln!("detected a cut in {detected:?}; served again {recovered:?} after the heal");
    client.record_consent(withdraw("part-withdraw-1")).await.unwrap();
    assert_eq!(decide(&mut client).await.unwrap(), common::Effect::Deny as i32);
    let _ = effect;
    let history = client
        .consent_history(gw::ConsentHistoryRequest { subject: select_email(EMAIL), ..Default::default() })
        .await
        .unwrap();
    let withdrawals = history.get_ref().entries.iter().filter(|e| e.state == "withdrawn").count();
    assert_eq!(withdrawals, 1, "the write of unknown outcome was applied once: {:?}", history.get_ref().entries);
    let denied_by_voice = history.get_ref().entries.iter().any(|e| e.purpose == "survey" && e.state == "denied");
    assert!(denied_by_voice, "the change made inside the region during the cut is there");

    // The watcher sees every change after its cursor, the one made during the cut included,
    // resuming on a new stream if the old one ended.
    let mut kinds = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while kinds.len() < 2 && Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(2), watch.message()).await {
            Ok(Ok(Some(event))) => {
                token = event.resume_token.clone();
                kinds.push(event.event.unwrap().kind);
            }
            _ => {
                watch = client.watch(gw::WatchRequest { resume_token: token.clone() }).await.unwrap().into_inner();
            }
        }
    }
    // Before the fix that lets a cancelled write's commit run to its end, the withdrawal applied
    // during the asymmetric cut (its caller gave up) reached no watcher: only the denial came.
    assert_eq!(kinds, [common::ChangeKind::Consent as i32; 2], "the in-region denial and the withdrawal, in order");

    // The gateway's directory follows the region again after the cut: a subject registered at
    // the node itself (not through this gateway) becomes resolvable there.
    let mut node_client = domicile_cluster_tests::pb::node::v1::regional_node_client::RegionalNodeClient::new(
        channel(&node_addr.to_string(), &tls, &eu.node_server_name()).await.unwrap(),
    );
    let direct = domicile_cluster_tests::pb::node::v1::RegisterRequest {
        jurisdiction: "DE".into(),
        identifiers: vec![identifier("email", "after.cut@example.de")],
        ..Default::default()
    };
    node_client.register(direct).await.unwrap();
    let resolved = domicile_cluster_tests::eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            let request = gw::ResolveRequest { identifier: Some(identifier("email", "after.cut@example.de")) };
            client.resolve(request).await.ok()
        }
    })
    .await;
    assert!(resolved.is_some(), "the directory caught up after the heal");

    // 4. A slow, lossy link (200 ms each way, 5 % loss): answers are slower, never wrong.
    let loss: &[&str] = &["-m", "statistic", "--mode", "random", "--probability", "0.05"];
    net.filter(Some(loss), Some(loss));
    delay_ms.store(200, Ordering::Relaxed);
    let mut answered = 0;
    for _ in 0..5 {
        match decide(&mut client).await {
            Ok(effect) => {
                assert_eq!(effect, common::Effect::Deny as i32);
                answered += 1;
            }
            Err(status) => assert!(matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded), "{status:?}"),
        }
    }
    assert!(answered >= 3, "a slow link still serves: {answered} of 5");
    delay_ms.store(0, Ordering::Relaxed);
    net.clear();
}
