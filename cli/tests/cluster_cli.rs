//! `domicile cluster up | status | down` as an operator runs them: real processes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers; clippy.toml only exempts the #[test] fns themselves"
)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domicile_proto::pb::common::v1::Identifier;
use domicile_proto::pb::gateway::v1 as gw;
use domicile_proto::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_runtime::tls::TlsFiles;
use tonic::transport::Channel;

fn domicile() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_domicile"));
    command.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    command
}

/// A `domicile cluster up` child process, from its ready line on; its output is kept for
/// assertions and failure messages. Dropping it stops the cluster (SIGTERM to the supervisor,
/// which stops its processes).
struct Up {
    child: Child,
    dir: PathBuf,
    output: Arc<Mutex<Vec<String>>>,
}

impl Up {
    fn start(dir: &Path, args: &[&str]) -> Up {
        let mut child = domicile()
            .args(["cluster", "up", "--dir", dir.to_str().unwrap()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (stream, ready) in
            [(Box::new(stdout) as Box<dyn std::io::Read + Send>, Some(ready_tx)), (Box::new(stderr), None)]
        {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if let Some(ready) = &ready
                        && line.starts_with("Press Ctrl-C")
                    {
                        let _ = ready.send(());
                    }
                    output.lock().unwrap().push(line);
                }
            });
        }
        let up = Up { child, dir: dir.to_owned(), output };
        if ready_rx.recv_timeout(Duration::from_secs(120)).is_err() {
            panic!("cluster up did not get ready:\n{}", up.output());
        }
        up
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// `cluster down`, then checks that `cluster up` exited cleanly.
    fn down(mut self) {
        let out = domicile().args(["cluster", "down", "--dir", self.dir.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let deadline = Instant::now() + Duration::from_secs(5);
        let exit = loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                break exit;
            }
            assert!(Instant::now() < deadline, "cluster up still running after `down` returned");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(exit.success(), "{exit}\n{}", self.output());
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

fn supervisor(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("supervisor.json")).unwrap()).unwrap()
}

/// The entry of `region`'s node in `supervisor.json`.
fn node_entry(dir: &Path, region: &str) -> serde_json::Value {
    supervisor(dir)["nodes"].as_array().unwrap().iter().find(|n| n["region"] == region).unwrap().clone()
}

fn node_addrs(dir: &Path) -> Vec<(String, String)> {
    let file = supervisor(dir);
    let mut addrs: Vec<(String, String)> = file["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["region"].as_str().unwrap().to_owned(), n["addr"].as_str().unwrap().to_owned()))
        .collect();
    addrs.sort();
    addrs
}

fn status_json(dir: &Path) -> serde_json::Value {
    let out = domicile().args(["cluster", "status", "--json", "--dir", dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `domicile <args>` and returns (success, stdout, stderr).
fn run(args: &[&str]) -> (bool, String, String) {
    let out = domicile().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `probe` every 50 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !probe() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn up_status_down() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let mut up = domicile()
        .args(["cluster", "up", "--dir", dir_arg, "--gateway-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("cluster up exited before it was ready").unwrap();
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});

    let out = domicile().args(["cluster", "status", "--dir", dir_arg, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["running"], true);
    assert_eq!(status["regions"].as_array().unwrap().len(), 3, "{status}");
    for node in status["nodes"].as_array().unwrap() {
        assert_eq!(node["reachable"], true, "{node}");
        assert_eq!(node["subjects"], 0, "{node}");
        assert!(!node["packs"].as_array().unwrap().is_empty(), "{node}");
        assert!(node["packs_content_hash"].as_str().is_some_and(|h| !h.is_empty()), "{node}");
    }
    assert_eq!(status["gateway"]["reachable"], true, "{status}");

    // The exec probe the Kubernetes manifests use: a scope-less caller of the node's region.
    let pki = dir.path().join("pki");
    let out = domicile()
        .args([
            "cluster",
            "issue",
            "--pki",
            pki.to_str().unwrap(),
            "caller",
            "probe-eu-central",
            "--region",
            "eu-central",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let node = status["nodes"].as_array().unwrap().iter().find(|n| n["region"] == "eu-central").unwrap();
    let probe = |addr: &str, server_name: &str| {
        domicile()
            .args(["cluster", "probe", "--addr", addr, "--server-name", server_name])
            .arg("--ca")
            .arg(pki.join("ca.pem"))
            .arg("--cert")
            .arg(pki.join("client-probe-eu-central.pem"))
            .arg("--key")
            .arg(pki.join("client-probe-eu-central.key"))
            .output()
            .unwrap()
            .status
    };
    assert!(probe(node["addr"].as_str().unwrap(), "eu-central.node.domicile.internal").success());
    assert!(probe(status["gateway"]["addr"].as_str().unwrap(), "gateway.domicile.internal").success());
    // A certificate must name the server it dials: a node is not the gateway.
    assert!(!probe(node["addr"].as_str().unwrap(), "gateway.domicile.internal").success());

    // A token issued by the CLI from the cluster's key works at the gateway `cluster up`
    // configured, for a caller with no certificate at all.
    let out = domicile()
        .args(["cluster", "issue", "--pki", pki.to_str().unwrap(), "token", "kiosk", "--region", "eu-central"])
        .args(["--scopes", "decide", "--ttl-secs", "120"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let gateway = status["gateway"]["addr"].as_str().unwrap().to_owned();
    let codes = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let ca = tonic::transport::Certificate::from_pem(std::fs::read(pki.join("ca.pem")).unwrap());
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(ca).domain_name("gateway.domicile.internal");
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{gateway}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut codes = Vec::new();
        for bearer in [token.clone(), format!("{token}00")] {
            let mut request = tonic::Request::new(domicile_proto::pb::gateway::v1::DecideRequest {
                subject: Some(domicile_proto::pb::gateway::v1::SubjectSelector {
                    selector: Some(domicile_proto::pb::gateway::v1::subject_selector::Selector::SubjectRef(
                        "eu-central/00000000000000000000000000000000".into(),
                    )),
                }),
                purpose: "marketing".into(),
                channel: "email".into(),
                at: None,
                ..Default::default()
            });
            request.metadata_mut().insert("authorization", format!("Bearer {bearer}").parse().unwrap());
            let mut client = domicile_proto::pb::gateway::v1::domicile_client::DomicileClient::new(channel.clone());
            codes.push(client.decide(request).await.unwrap_err().code());
        }
        codes
    });
    // Authorised (the subject is simply unknown); a corrupted token is not.
    assert_eq!(codes, vec![tonic::Code::NotFound, tonic::Code::Unauthenticated]);

    let out = domicile().args(["cluster", "down", "--dir", dir_arg]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(5);
    let exit = loop {
        if let Some(exit) = up.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "cluster up still running after `down` returned");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit}");
    assert!(!dir.path().join("supervisor.json").exists());

    // Nothing left to stop.
    let out = domicile().args(["cluster", "down", "--dir", dir_arg]).output().unwrap();
    assert!(!out.status.success());
}

/// A listener on `addr` (with SO_REUSEADDR, so an earlier run's TIME_WAIT does not stop it), as
/// another program holding a port would be.
fn hold(addr: SocketAddr) -> std::net::TcpListener {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        socket.listen(8).unwrap().into_std().unwrap()
    })
}

fn free(port: u16) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], port))).is_ok() && socket.listen(1).is_ok()
    })
}

#[test]
fn node_ports_are_next_to_the_gateway_and_stay_the_same_across_runs() {
    // A gateway port with four free ports after it, the second of which another program holds.
    let base = (0..2_000u16)
        .map(|i| 21_000 + (std::process::id() as u16 % 5_000) + i * 5)
        .find(|p| (*p..*p + 5).all(free))
        .unwrap();
    let _other_program = hold(SocketAddr::from(([127, 0, 0, 1], base + 1)));
    let dir = tempfile::tempdir().unwrap();
    let gateway = format!("127.0.0.1:{base}");
    let up = Up::start(dir.path(), &["--gateway-listen", &gateway]);
    // Topology order: eu-central, us-east, sa-east; base+1 is taken, said out loud.
    let expected: Vec<(String, String)> = [("eu-central", 2), ("sa-east", 4), ("us-east", 3)]
        .iter()
        .map(|(r, offset)| ((*r).to_owned(), format!("127.0.0.1:{}", base + offset)))
        .collect();
    assert_eq!(node_addrs(dir.path()), expected, "{}", up.output());
    assert!(
        up.output().contains(&format!("warning: port {} is in use by another process: node eu-central", base + 1)),
        "{}",
        up.output()
    );
    let remembered = std::fs::read_to_string(dir.path().join("addresses.toml")).unwrap();
    for (region, addr) in &expected {
        assert!(remembered.contains(&format!("{region} = \"{addr}\"")), "{remembered}");
    }

    // A second `cluster up` on the running cluster refuses before saying anything else.
    let dir_arg = dir.path().to_str().unwrap();
    let (ok, stdout, stderr) = run(&["cluster", "up", "--dir", dir_arg, "--gateway-listen", &gateway]);
    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("already running"), "{stderr}");
    up.down();

    // The next run keeps every node address, with the blocker gone and another gateway port.
    drop(_other_program);
    let up = Up::start(dir.path(), &["--gateway-listen", "127.0.0.1:0"]);
    assert_eq!(node_addrs(dir.path()), expected, "{}", up.output());
    up.down();

    // A remembered port held by another program: a clear error naming it, before any start.
    let _holder = hold(expected[2].1.parse().unwrap());
    let (ok, stdout, stderr) = run(&["cluster", "up", "--dir", dir_arg, "--gateway-listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    for needle in [expected[2].1.as_str(), "node us-east", "addresses.toml", "in use by another process"] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    assert!(!dir.path().join("supervisor.json").exists());
    // So is the gateway's.
    let held_gateway = hold(SocketAddr::from(([127, 0, 0, 1], 0)));
    let gateway = held_gateway.local_addr().unwrap().to_string();
    let (ok, stdout, stderr) = run(&["cluster", "up", "--dir", dir_arg, "--gateway-listen", &gateway]);
    assert!(!ok && stdout.is_empty(), "{stdout}");
    assert!(stderr.contains(&format!("the gateway's address {gateway} is in use")), "{stderr}");
}

/// What the prober saw while the cluster was being hurt.
#[derive(Default)]
struct Probes {
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// Held for every call through the gateway: whoever takes it after clearing
    /// `through_gateway` knows that no such call is in flight any more.
    gateway_calls: tokio::sync::Mutex<()>,
}

/// Until `stop`: a decision through the gateway for a subject of a region that stays up, and a
/// health check of that region's node, every 20 ms; every failure is recorded.
async fn probe_steady_region(
    gateway: DomicileClient<Channel>,
    subject_ref: String,
    node: SocketAddr,
    tls: TlsFiles,
    through_gateway: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    probes: Arc<Probes>,
) {
    let fail = |what: String| probes.failures.lock().unwrap().push(what);
    while !stop.load(Ordering::SeqCst) {
        let in_flight = probes.gateway_calls.lock().await;
        if through_gateway.load(Ordering::SeqCst) {
            let mut client = gateway.clone();
            let decided =
                tokio::time::timeout(Duration::from_secs(3), client.decide(decide_request(&subject_ref))).await;
            match decided {
                Ok(Ok(reply)) if reply.get_ref().decision.is_some() => {}
                Ok(Ok(_)) => fail("gateway: a decision without a decision".to_owned()),
                Ok(Err(status)) => fail(format!("gateway: {:?} {}", status.code(), status.message())),
                Err(_) => fail("gateway: no answer within 3 s".to_owned()),
            }
        }
        drop(in_flight);
        let health = domicile_cli::cluster::health(
            &node.to_string(),
            "eu-central.node.domicile.internal",
            &tls,
            Duration::from_secs(3),
        )
        .await;
        match health {
            Ok(()) => {
                probes.ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => fail(format!("node eu-central: {e:#}")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn decide_request(subject_ref: &str) -> gw::DecideRequest {
    gw::DecideRequest {
        subject: Some(gw::SubjectSelector {
            selector: Some(gw::subject_selector::Selector::SubjectRef(subject_ref.into())),
        }),
        purpose: "marketing".into(),
        channel: "email".into(),
        at: None,
        ..Default::default()
    }
}

async fn register(client: &mut DomicileClient<Channel>, jurisdiction: &str, email: &str) -> String {
    let request = gw::RegisterRequest {
        jurisdiction: jurisdiction.into(),
        identifiers: vec![Identifier { kind: "email".into(), value: email.into() }],
        idempotency_key: String::new(),
    };
    client.register(request).await.unwrap().into_inner().subject_ref
}

/// Decides for `subject_ref` through the gateway until it answers (the region is back).
async fn decides_again(client: &DomicileClient<Channel>, subject_ref: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut client = client.clone();
        if client.decide(decide_request(subject_ref)).await.is_ok() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{subject_ref} gets no decision");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kill_9(pid: u64) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
}

async fn cli(args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || run(&args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_process_comes_back_on_its_address_and_a_stopped_region_stays_down_while_the_rest_serve() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let dir_arg = path.to_str().unwrap().to_owned();
    let up = tokio::task::spawn_blocking({
        let path = path.clone();
        move || Up::start(&path, &["--gateway-listen", "127.0.0.1:0"])
    })
    .await
    .unwrap();

    domicile_runtime::tls::install_crypto_provider();
    let cluster: domicile_cli::client::ClusterFile =
        serde_json::from_slice(&std::fs::read(path.join("cluster.json")).unwrap()).unwrap();
    let mut client = domicile_cli::client::connect(cluster.gateway, &cluster.tls).await.unwrap();
    let anna = register(&mut client, "DE", "anna@example.de").await;
    let bob = register(&mut client, "US", "bob@example.com").await;
    assert!(anna.starts_with("eu-central/") && bob.starts_with("us-east/"), "{anna} {bob}");

    // The README's direct node call: an operator certificate of eu-central issued with the CLI,
    // at eu-central's node (admitted) and at us-east's (refused: another region).
    let pki_dir = path.join("pki");
    let issue = ["cluster", "issue", "--pki", pki_dir.to_str().unwrap(), "caller", "ops-eu", "--region", "eu-central"];
    let (ok, _, stderr) = cli(&[&issue[..], &["--scopes", "decide"]].concat()).await;
    assert!(ok, "{stderr}");
    let ops_eu = TlsFiles {
        ca: pki_dir.join("ca.pem"),
        cert: pki_dir.join("client-ops-eu.pem"),
        key: pki_dir.join("client-ops-eu.key"),
    };
    for (region, admitted) in [("eu-central", true), ("us-east", false)] {
        let addr = node_entry(&path, region)["addr"].as_str().unwrap().to_owned();
        let material = domicile_runtime::tls::TlsMaterial::load(&ops_eu).unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(material.client(&format!("{region}.node.domicile.internal")))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let subject = if admitted { &anna } else { &bob };
        let request = domicile_proto::pb::node::v1::DecideRequest {
            subject: Some(domicile_proto::pb::common::v1::SubjectKey {
                key: Some(domicile_proto::pb::common::v1::subject_key::Key::SubjectRef(subject.clone())),
            }),
            purpose: "marketing".into(),
            channel: "email".into(),
            at: None,
            ..Default::default()
        };
        let mut node = domicile_proto::pb::node::v1::regional_node_client::RegionalNodeClient::new(channel);
        match node.decide(request).await {
            Ok(reply) => assert!(admitted && reply.into_inner().decision.is_some(), "{region}"),
            Err(status) => assert!(!admitted && status.code() == tonic::Code::PermissionDenied, "{region}: {status:?}"),
        }
    }

    // eu-central stays up throughout: it must answer, directly and through the gateway, every
    // time it is asked while us-east and then the gateway are killed, stopped and started.
    let pki = domicile_runtime::pki::ClusterPki::open_or_create(&path.join("pki")).unwrap();
    let region = domicile_types::RegionId::parse("eu-central").unwrap();
    let probe_tls =
        pki.caller(&domicile_runtime::identity::CallerIdentity::new("probe-eu", region, &[]).unwrap()).unwrap();
    let eu_addr: SocketAddr = node_entry(&path, "eu-central")["addr"].as_str().unwrap().parse().unwrap();
    let (stop, through_gateway, probes) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(true)), Arc::new(Probes::default()));
    let prober = tokio::spawn(probe_steady_region(
        client.clone(),
        anna.clone(),
        eu_addr,
        probe_tls,
        Arc::clone(&through_gateway),
        Arc::clone(&stop),
        Arc::clone(&probes),
    ));

    // kill -9 of us-east's node: restarted on the same address, the gateway follows.
    let before = node_entry(&path, "us-east");
    kill_9(before["pid"].as_u64().unwrap());
    let after = tokio::task::spawn_blocking({
        let path = path.clone();
        let old_pid = before["pid"].clone();
        move || {
            wait_until(Duration::from_secs(60), "us-east's node is restarted", || {
                let entry = node_entry(&path, "us-east");
                entry["state"] == "running" && entry["pid"].is_u64() && entry["pid"] != old_pid
            });
            node_entry(&path, "us-east")
        }
    })
    .await
    .unwrap();
    assert_eq!(after["addr"], before["addr"], "same address");
    assert_eq!(after["restarts"], 1);
    assert!(after["last_exit"].as_str().unwrap().contains("SIGKILL"), "{after}");
    decides_again(&client, &bob).await;
    assert!(up.output().contains("node us-east exited on its own"), "{}", up.output());

    // stop-region: down (gracefully) and kept down; start-region: back on the same address.
    let (ok, stdout, stderr) = cli(&["cluster", "stop-region", "us-east", "--dir", &dir_arg]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("stopped node us-east") && stdout.contains("start-region us-east"), "{stdout}");
    tokio::time::sleep(Duration::from_secs(2)).await; // several restart back-offs: none happens
    let entry = node_entry(&path, "us-east");
    assert_eq!(entry["state"], "stopped", "{entry}");
    assert!(entry["pid"].is_null(), "{entry}");
    assert!(tokio::net::TcpStream::connect(after["addr"].as_str().unwrap()).await.is_err(), "nothing listens");
    let status = tokio::task::spawn_blocking({
        let path = path.clone();
        move || status_json(&path)
    })
    .await
    .unwrap();
    let us = status["nodes"].as_array().unwrap().iter().find(|n| n["region"] == "us-east").unwrap();
    assert_eq!(us["state"], "stopped", "{status}");
    assert_eq!(status["gateway"]["reachable"], true, "{status}");
    let mut down = client.clone();
    let refused = down.decide(decide_request(&bob)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let (ok, _, stderr) = cli(&["cluster", "stop-region", "nowhere", "--dir", &dir_arg]).await;
    assert!(!ok && stderr.contains("no region nowhere"), "{stderr}");

    let (ok, stdout, stderr) = cli(&["cluster", "start-region", "us-east", "--dir", &dir_arg]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&format!("node us-east serves on {}", after["addr"].as_str().unwrap())), "{stdout}");
    assert_eq!(node_entry(&path, "us-east")["state"], "running");
    decides_again(&client, &bob).await;

    // kill -9 of the gateway: restarted on its address; the nodes never stop answering.
    through_gateway.store(false, Ordering::SeqCst);
    drop(probes.gateway_calls.lock().await);
    let gateway = supervisor(&path)["gateways"][0].clone();
    kill_9(gateway["pid"].as_u64().unwrap());
    tokio::task::spawn_blocking({
        let path = path.clone();
        move || {
            wait_until(Duration::from_secs(60), "the gateway is restarted", || {
                let entry = supervisor(&path)["gateways"][0].clone();
                entry["state"] == "running" && entry["pid"].is_u64() && entry["pid"] != gateway["pid"]
            })
        }
    })
    .await
    .unwrap();
    assert_eq!(supervisor(&path)["gateways"][0]["addr"], cluster.gateway.to_string());
    decides_again(&client, &anna).await;
    decides_again(&client, &bob).await;
    through_gateway.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;

    stop.store(true, Ordering::SeqCst);
    prober.await.unwrap();
    let failures = probes.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "eu-central stopped answering: {failures:?}\n{}", up.output());
    assert!(probes.ok.load(Ordering::SeqCst) > 20, "too few probes to mean anything");
    tokio::task::spawn_blocking(move || up.down()).await.unwrap();
}

/// `cluster up --store postgres`: the regions run on a PostgreSQL server the cluster starts
/// itself; the README's tour works on it, the server stops with `cluster down`, and the next
/// `cluster up --store postgres` on the same directory finds the data again.
#[test]
fn up_on_postgres_serves_stops_its_server_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let args = ["--gateway-listen", "127.0.0.1:0", "--store", "postgres"];
    let up = Up::start(dir.path(), &args);
    let cluster = ["--cluster-dir", dir_arg];
    let (ok, _, stderr) =
        run(&[&["register", "--jurisdiction", "DE", "--email", "pg.tour@example.de"][..], &cluster].concat());
    assert!(ok, "register: {stderr}\n{}", up.output());
    let grant = [
        "consent",
        "grant",
        "--email",
        "pg.tour@example.de",
        "--purpose",
        "marketing",
        "--channel",
        "email",
        "--notice-version",
        "v3",
    ];
    let (ok, _, stderr) = run(&[&grant[..], &cluster].concat());
    assert!(ok, "grant: {stderr}");
    let decide = ["decide", "--email", "pg.tour@example.de", "--purpose", "marketing", "--channel", "email", "--json"];
    let (ok, stdout, stderr) = run(&[&decide[..], &cluster].concat());
    let allowed =
        |stdout: &str| serde_json::from_str::<serde_json::Value>(stdout).is_ok_and(|v| v["effect"] == "allow");
    assert!(ok && allowed(&stdout), "decide: {stdout}{stderr}");
    let server_dir = std::fs::read_to_string(dir.path().join("postgres.dir"))
        .map(|p| PathBuf::from(p.trim()))
        .unwrap_or_else(|_| dir.path().join("postgres"));
    let pid_file = server_dir.join("data/postmaster.pid");
    assert!(pid_file.is_file(), "the cluster's server runs from {}", server_dir.display());
    up.down();
    assert!(!pid_file.exists(), "the server stopped with the cluster");

    // Again on the same directory: the subject and its consent are still there.
    let up = Up::start(dir.path(), &args);
    let (ok, stdout, stderr) = run(&[&decide[..], &cluster].concat());
    assert!(
        ok && stdout.contains("ALLOW") || stdout.to_lowercase().contains("\"allow\""),
        "decide after restart: {stdout}{stderr}\n{}",
        up.output()
    );
    up.down();
    // `cluster up` keeps its server's directory for the next start; root's lies outside the
    // cluster directory (postgres.dir), so the test removes it.
    let _ = std::fs::remove_dir_all(&server_dir);
}
