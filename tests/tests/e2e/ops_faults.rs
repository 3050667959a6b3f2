//! Operational faults on real processes: the gateway killed with SIGKILL and started again
//! rebuilds its directory from the nodes and answers exactly as before (erased subjects stay
//! unknown, changes made while it was down are picked up), and a rolling restart of every node
//! under write and decision load loses no acknowledged write, never answers an allow that
//! contradicts an acknowledged withdrawal, and keeps the other regions served. A node (or the
//! gateway) asked to stop with SIGTERM while Watch streams follow it ends them and exits on its
//! own within seconds, keeping every acknowledged write.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domicile_cli::cluster::{STOP_GRACE, Stopped};
use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_cluster_tests::pb::node::v1 as node;
use domicile_cluster_tests::{Cluster as _, TestCluster, eventually, identifier, region};
use domicile_cluster_tests::{node_ref, select as by, select_ref as by_ref};
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
/// The default local topology (deploy/local/topology.toml): DE lives in eu-central, US in
/// us-east, BR in sa-east.
const REGIONS: [&str; 3] = ["eu-central", "us-east", "sa-east"];
const JURISDICTIONS: [(&str, &str, &str); 3] =
    [("DE", "example.de", "eu-central"), ("US", "example.com", "us-east"), ("BR", "example.com.br", "sa-east")];
/// Cells decided for every subject: opt-in, opt-out / legitimate interest and service rules.
const CELLS: [(&str, &str); 4] =
    [("marketing", "email"), ("marketing", "post"), ("survey", "email"), ("service", "email")];
/// A process asked to stop with SIGTERM exits on its own well within this, even with Watch
/// streams open; the harness would only SIGKILL it after `STOP_GRACE` (10 s).
const GRACEFUL_STOP_MAX: Duration = Duration::from_secs(3);

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn ts(seconds: i64) -> Option<domicile_proto::prost_types::Timestamp> {
    Some(domicile_proto::prost_types::Timestamp { seconds, nanos: 0 })
}

fn evidence() -> Option<common::Evidence> {
    Some(common::Evidence {
        notice_version: "notice-v3".into(),
        capture_channel: "web".into(),
        source_system: "preference-centre".into(),
        double_opt_in_confirmed: true,
        signal: None,
        ..Default::default()
    })
}

async fn register(client: &mut DomicileClient<Channel>, jurisdiction: &str, ids: &[(&str, &str)]) -> String {
    client
        .register(gw::RegisterRequest {
            jurisdiction: jurisdiction.into(),
            identifiers: ids.iter().map(|(k, v)| identifier(k, v)).collect(),
            idempotency_key: String::new(),
        })
        .await
        .expect("register")
        .into_inner()
        .subject_ref
}

async fn record_consent(
    client: &mut DomicileClient<Channel>,
    subject_ref: &str,
    action: common::ConsentAction,
    purpose: &str,
    channels: &[&str],
    captured_at: i64,
) -> Result<gw::RecordConsentResponse, tonic::Status> {
    client
        .record_consent(gw::RecordConsentRequest {
            subject: by_ref(subject_ref),
            purpose: purpose.into(),
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            action: action as i32,
            evidence: evidence(),
            captured_at: ts(captured_at),
            expires_at: None,
            idempotency_key: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn decide(
    client: &mut DomicileClient<Channel>,
    subject: Option<gw::SubjectSelector>,
    purpose: &str,
    channel: &str,
    at: Option<i64>,
) -> Result<common::Decision, tonic::Status> {
    client
        .decide(gw::DecideRequest {
            subject,
            purpose: purpose.into(),
            channel: channel.into(),
            at: at.and_then(ts),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().decision.expect("a decision"))
}

async fn resolve(client: &mut DomicileClient<Channel>, kind: &str, value: &str) -> Result<gw::ResolveResponse, Code> {
    client
        .resolve(gw::ResolveRequest { identifier: Some(identifier(kind, value)) })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.code())
}

fn effect(d: &common::Decision) -> common::Effect {
    common::Effect::try_from(d.effect).expect("known effect")
}

/// A SIGTERM stop that ended on its own, with success, well before the harness's SIGKILL.
fn assert_graceful(what: &str, stopped: &Stopped) {
    assert!(
        stopped.gracefully(),
        "{what} exits with success on SIGTERM, without SIGKILL after {STOP_GRACE:?}: {stopped:?}"
    );
    assert!(stopped.took < GRACEFUL_STOP_MAX, "{what} stops within {GRACEFUL_STOP_MAX:?} of SIGTERM: {stopped:?}");
}

/// Links the nodes hold, summed over regions (what a gateway's directory should hold).
async fn node_links(cluster: &TestCluster) -> u64 {
    let mut total = 0;
    for r in REGIONS {
        total += cluster.node(&region(r)).await.unwrap().info(node::InfoRequest {}).await.unwrap().into_inner().links;
    }
    total
}

/// The directory size the gateway reported when it last started (its `directory loaded` line:
/// the gateway has no RPC for it, and logs this count once every region's snapshot is in).
fn gateway_directory_at_start(log: &Path) -> u64 {
    let text = std::fs::read_to_string(log).expect("gateway log");
    let line = text
        .lines()
        .rfind(|l| l.contains(": directory loaded links="))
        .unwrap_or_else(|| panic!("no `directory loaded` line in {}", log.display()));
    let count = line.rsplit("links=").next().unwrap();
    count.trim().parse().unwrap_or_else(|_| panic!("bad directory count in {line:?}"))
}

fn gateway_log(cluster: &TestCluster) -> std::path::PathBuf {
    cluster.cluster.processes().find(|p| p.role == "gateway").expect("a gateway").log.clone()
}

#[derive(Debug, Clone)]
struct Seeded {
    email: String,
    crm: String,
    subject_ref: String,
}

/// What the gateway answers for a subject: per identifier its resolution, per cell the decision.
type Answers = BTreeMap<String, BTreeMap<(&'static str, &'static str), common::Decision>>;

/// Decides every cell for every subject as of `at`, by email and by subject ref (which must agree).
async fn answers(client: &mut DomicileClient<Channel>, subjects: &[Seeded], at: i64) -> Answers {
    let mut out = Answers::new();
    for s in subjects {
        for (purpose, channel) in CELLS {
            let by_email = decide(client, by("email", &s.email), purpose, channel, Some(at))
                .await
                .unwrap_or_else(|e| panic!("decide {purpose}/{channel} by email for {}: {e:?}", s.email));
            let by_subject_ref = decide(client, by_ref(&s.subject_ref), purpose, channel, Some(at))
                .await
                .unwrap_or_else(|e| panic!("decide {purpose}/{channel} by ref for {}: {e:?}", s.email));
            assert_eq!(by_email, by_subject_ref, "{} {purpose}/{channel}: email and subject ref agree", s.email);
            assert_eq!(by_email.subject_ref, s.subject_ref);
            out.entry(s.email.clone()).or_default().insert((purpose, channel), by_email);
        }
    }
    out
}

/// Resolution of every identifier of `subjects`: (kind, value) → (link, subject ref, region).
async fn resolutions(
    client: &mut DomicileClient<Channel>,
    subjects: &[Seeded],
) -> BTreeMap<(String, String), (String, String, String)> {
    let mut out = BTreeMap::new();
    for s in subjects {
        for (kind, value) in [("email", &s.email), ("crm_account", &s.crm)] {
            let r =
                resolve(client, kind, value).await.unwrap_or_else(|c| panic!("resolve {kind} of {}: {c:?}", s.email));
            out.insert((kind.to_owned(), value.clone()), (r.link, r.subject_ref, r.home_region));
        }
    }
    out
}

/// An erased subject is unknown by every selector: never a decision, let alone an allow.
async fn assert_unknown(client: &mut DomicileClient<Channel>, s: &Seeded, when: &str) {
    for (kind, value) in [("email", &s.email), ("crm_account", &s.crm)] {
        assert_eq!(
            resolve(client, kind, value).await.err(),
            Some(Code::NotFound),
            "{when}: {kind} of an erased subject"
        );
    }
    for (purpose, channel) in CELLS {
        for selector in [by("email", &s.email), by_ref(&s.subject_ref)] {
            let status = decide(client, selector.clone(), purpose, channel, None)
                .await
                .expect_err("an erased subject gets no decision");
            assert_eq!(status.code(), Code::NotFound, "{when}: {selector:?} {purpose}/{channel}: {status:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_and_restarted_rebuilds_its_directory_from_the_nodes_and_answers_the_same() {
    let started = Instant::now();
    let mut cluster = TestCluster::start_on_env_store(BIN, &REGIONS).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let t0 = now();
    // Decisions are evaluated as of one fixed time so that "the same" means identical, calling
    // windows and lifetimes included; consent is captured before it.
    let at = t0;
    let (granted_at, withdrawn_at) = (t0 - 600, t0 - 300);
    use common::ConsentAction::{Grant, Withdraw};

    // Per region: a subject with grants, one who granted then withdrew, one with no record.
    let mut live = Vec::new();
    for (j, domain, home) in JURISDICTIONS {
        for kind in ["granted", "withdrawn", "silent"] {
            let email = format!("{kind}.gw-restart@{domain}");
            let crm = format!("gw-restart-{j}-{kind}");
            let subject_ref = register(&mut client, j, &[("email", &email), ("crm_account", &crm)]).await;
            assert!(subject_ref.starts_with(&format!("{home}/")), "{j} lives in {home}: {subject_ref}");
            if kind != "silent" {
                record_consent(&mut client, &subject_ref, Grant, "marketing", &["email", "post"], granted_at)
                    .await
                    .unwrap();
                record_consent(&mut client, &subject_ref, Grant, "survey", &["email"], granted_at).await.unwrap();
            }
            if kind == "withdrawn" {
                record_consent(&mut client, &subject_ref, Withdraw, "marketing", &["email", "post"], withdrawn_at)
                    .await
                    .unwrap();
            }
            live.push(Seeded { email, crm, subject_ref });
        }
    }
    // Erased through the gateway before the restart (DE).
    let erased = {
        let (email, crm) = ("erased.gw-restart@example.de".to_owned(), "gw-restart-DE-erased".to_owned());
        let subject_ref = register(&mut client, "DE", &[("email", &email), ("crm_account", &crm)]).await;
        record_consent(&mut client, &subject_ref, Grant, "marketing", &["email", "post"], granted_at).await.unwrap();
        let reply = client
            .erase(gw::EraseRequest {
                subject: by("email", &email),
                idempotency_key: String::new(),
                override_reason: "controller_correction".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.links_removed, 2);
        Seeded { email, crm, subject_ref }
    };
    // Erased directly at its node while the gateway is down (US): granted, so a stale directory
    // entry would be the only way to an answer.
    let erased_offline = {
        let (email, crm) = ("erased-offline.gw-restart@example.com".to_owned(), "gw-restart-US-offline".to_owned());
        let subject_ref = register(&mut client, "US", &[("email", &email), ("crm_account", &crm)]).await;
        record_consent(&mut client, &subject_ref, Grant, "marketing", &["email", "post"], granted_at).await.unwrap();
        Seeded { email, crm, subject_ref }
    };

    // Before: what the gateway, built from change events since the cluster started, answers.
    let before = answers(&mut client, &live, at).await;
    let resolved_before = resolutions(&mut client, &live).await;
    let offline_before = answers(&mut client, std::slice::from_ref(&erased_offline), at).await;
    assert_eq!(effect(&offline_before[&erased_offline.email][&("marketing", "post")]), common::Effect::Allow);
    assert_unknown(&mut client, &erased, "before the restart").await;
    for s in &live {
        let post = effect(&before[&s.email][&("marketing", "post")]);
        let expected = if s.email.starts_with("withdrawn") { common::Effect::Deny } else { common::Effect::Allow };
        assert_eq!(post, expected, "{}: marketing by post is opt-out or legitimate interest everywhere", s.email);
    }
    let effects: Vec<_> = before.values().flat_map(|cells| cells.values().map(effect)).collect();
    assert!(effects.contains(&common::Effect::Allow) && effects.contains(&common::Effect::Deny), "a mix: {effects:?}");
    let links_before = node_links(&cluster).await;
    assert_eq!(links_before, 2 * (live.len() as u64 + 1), "two links per live subject");

    // kill -9 the gateway: nothing answers meanwhile.
    let addr = cluster.cluster.gateway_addr();
    cluster.cluster.kill_gateway().await.unwrap();
    let status = decide(&mut client, by("email", &live[0].email), "marketing", "post", None).await.unwrap_err();
    // UNAVAILABLE; or, when the kill cut the client's open connection under this very call, the
    // transport's own error (tonic reports it as UNKNOWN "transport error", or as CANCELLED when
    // hyper saw the connection close with the call in flight: a CI run met it). Never an answer.
    let cut = (status.code() == Code::Unknown && status.message() == "transport error")
        || (status.code() == Code::Cancelled && status.message() == "operation was canceled");
    assert!(status.code() == Code::Unavailable || cut, "{status:?}");

    // While it is down, the nodes change: an erasure in us-east, a registration in sa-east.
    let mut us = cluster.node(&region("us-east")).await.unwrap();
    us.erase(node::EraseRequest {
        subject: node_ref(&erased_offline.subject_ref),
        idempotency_key: String::new(),
        override_reason: "controller_correction".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let newcomer_ids = [
        ("email", "newcomer.gw-restart@example.com.br"),
        ("crm_account", "gw-restart-BR-newcomer"),
        ("phone", "+55 11 91234 5678"),
    ];
    let mut sa = cluster.node(&region("sa-east")).await.unwrap();
    let newcomer = sa
        .register(node::RegisterRequest {
            jurisdiction: "BR".into(),
            identifiers: newcomer_ids.iter().map(|(k, v)| identifier(k, v)).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(newcomer.created);

    // Start it again: same address, empty memory, directory rebuilt from the nodes before ready.
    let restart = Instant::now();
    cluster.restart_gateway().await.expect("the gateway starts again");
    println!("gateway ready again {:?} after start", restart.elapsed());
    assert_eq!(cluster.cluster.gateway_addr(), addr, "same address, so callers' channels reconnect");
    let expected_links = links_before - 2 + newcomer_ids.len() as u64;
    assert_eq!(node_links(&cluster).await, expected_links);
    assert_eq!(
        gateway_directory_at_start(&gateway_log(&cluster)),
        expected_links,
        "the restarted gateway's directory holds exactly the nodes' links"
    );
    let mut client = cluster.gateway().await.unwrap();
    assert_eq!(resolutions(&mut client, &live).await, resolved_before, "every identifier resolves as before");
    let after = answers(&mut client, &live, at).await;
    for (email, cells) in &before {
        for (cell, decision) in cells {
            assert_eq!(&after[email][cell], decision, "{email} {cell:?}: same decision after the restart");
        }
    }
    assert_eq!(after, before);
    assert_unknown(&mut client, &erased, "after the restart").await;
    assert_unknown(&mut client, &erased_offline, "erased while the gateway was down").await;
    for (kind, value) in newcomer_ids {
        let r = resolve(&mut client, kind, value).await.expect("registered while the gateway was down");
        assert_eq!((r.subject_ref.as_str(), r.home_region.as_str()), (newcomer.subject_ref.as_str(), "sa-east"));
    }
    let d = decide(&mut client, by("phone", newcomer_ids[2].1), "marketing", "post", None).await.unwrap();
    assert_eq!((effect(&d), d.subject_ref.as_str()), (common::Effect::Allow, newcomer.subject_ref.as_str()));
    println!("gateway restart test: {:?} wall time", started.elapsed());
}

// === rolling restart under load ===

/// One acknowledged consent write.
#[derive(Debug, Clone)]
struct Ack {
    subject: String,
    state: &'static str,
    sequence: u64,
    captured_at: i64,
}

/// What the decision tasks saw, by region index.
#[derive(Debug, Default)]
struct Seen {
    /// Successful decisions of region `.1` while region `.0` was down.
    ok_while_down: HashMap<(usize, usize), u64>,
    /// UNAVAILABLE answers for the down region's subjects, by region.
    unavailable_while_down: HashMap<usize, u64>,
    ok: [u64; 3],
    errors: [u64; 3],
    violations: Vec<String>,
}

/// Which region is down: `NONE` or a region index.
const NONE: usize = usize::MAX;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Restart {
    Kill9,
    Graceful,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_under_load_loses_no_acknowledged_write_and_never_fails_open() {
    const WRITERS_PER_REGION: usize = 2;
    const SUBJECTS_PER_WRITER: usize = 2;
    const DECIDERS: usize = 2;
    let started = Instant::now();
    let mut cluster = TestCluster::start_on_env_store(BIN, &REGIONS).await.expect("cluster starts");
    let client = cluster.gateway().await.unwrap();
    use common::ConsentAction::{Grant, Withdraw};
    let base = now() - 86_400;

    // Withdrawn subjects: marketing by post is opt-out (DE, US) or legitimate interest (BR), so
    // with no record it is an allow; after their acknowledged withdrawal any allow is a failure.
    let mut withdrawn = Vec::new(); // (region index, email, subject ref)
    for (r, (j, domain, _)) in JURISDICTIONS.iter().enumerate() {
        for n in 0..2 {
            let email = format!("withdrawn{n}.roll@{domain}");
            let mut c = client.clone();
            let subject_ref = register(&mut c, j, &[("email", &email)]).await;
            record_consent(&mut c, &subject_ref, Grant, "marketing", &["post"], base - 10).await.unwrap();
            record_consent(&mut c, &subject_ref, Withdraw, "marketing", &["post"], base - 5).await.unwrap();
            let d = decide(&mut c, by_ref(&subject_ref), "marketing", "post", None).await.unwrap();
            assert_eq!(effect(&d), common::Effect::Deny);
            withdrawn.push((r, email, subject_ref));
        }
    }
    // Writer subjects: each writer alternates grant/withdraw on its own subjects with strictly
    // increasing capture times, so the latest write it made is the one in force.
    let mut writer_subjects = Vec::new(); // per writer: (region index, subject refs)
    for (r, (j, _, _)) in JURISDICTIONS.iter().enumerate() {
        for w in 0..WRITERS_PER_REGION {
            let mut mine = Vec::new();
            for s in 0..SUBJECTS_PER_WRITER {
                let mut c = client.clone();
                mine.push(register(&mut c, j, &[("crm_account", &format!("roll-{j}-{w}-{s}"))]).await);
            }
            writer_subjects.push((r, mine));
        }
    }

    let down = Arc::new(AtomicUsize::new(NONE));
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Arc<Mutex<Vec<Vec<Ack>>>> = Arc::new(Mutex::new(vec![Vec::new(); REGIONS.len()]));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut tasks = tokio::task::JoinSet::new();

    for (r, mine) in writer_subjects {
        let (mut c, stop, acks, seen, down) =
            (client.clone(), Arc::clone(&stop), Arc::clone(&acks), Arc::clone(&seen), Arc::clone(&down));
        tasks.spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let subject = &mine[i % mine.len()];
                let grant = (i / mine.len()).is_multiple_of(2);
                let (action, state) = if grant { (Grant, "granted") } else { (Withdraw, "withdrawn") };
                let captured_at = base + i as i64;
                i += 1;
                let was_down = down.load(Ordering::SeqCst);
                match record_consent(&mut c, subject, action, "marketing", &["post"], captured_at).await {
                    Ok(reply) => acks.lock().unwrap()[r].push(Ack {
                        subject: subject.clone(),
                        state,
                        sequence: reply.sequence,
                        captured_at,
                    }),
                    Err(status) => {
                        let is_down = [was_down, down.load(Ordering::SeqCst)].contains(&r);
                        // A write cut off by the kill may or may not have been applied: the
                        // gateway says so (DEADLINE_EXCEEDED, with the key to retry with).
                        let unknown = status.code() == Code::DeadlineExceeded
                            && status.metadata().contains_key("domicile-idempotency-key");
                        if !is_down || !(status.code() == Code::Unavailable || unknown) {
                            seen.lock().unwrap().violations.push(format!(
                                "write to {} failed while it was {}: {status:?}",
                                REGIONS[r],
                                if is_down { "down" } else { "up" }
                            ));
                        }
                        // Not acknowledged; back off a little rather than spin on a down region.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
                // Read your write: the acknowledged record is the latest, so it decides.
                match decide(&mut c, by_ref(subject), "marketing", "post", None).await {
                    Ok(d) => {
                        let expected = if grant { common::Effect::Allow } else { common::Effect::Deny };
                        if effect(&d) != expected {
                            seen.lock().unwrap().violations.push(format!(
                                "decision after an acknowledged {state} in {} was {:?}",
                                REGIONS[r],
                                effect(&d)
                            ));
                        }
                    }
                    Err(status)
                        if status.code() == Code::Unavailable
                            && [was_down, down.load(Ordering::SeqCst)].contains(&r) => {}
                    Err(status) => seen
                        .lock()
                        .unwrap()
                        .violations
                        .push(format!("decision after a write in {} failed: {status:?}", REGIONS[r])),
                }
            }
        });
    }
    for d in 0..DECIDERS {
        let (mut c, stop, seen, down, withdrawn) =
            (client.clone(), Arc::clone(&stop), Arc::clone(&seen), Arc::clone(&down), withdrawn.clone());
        tasks.spawn(async move {
            let mut i = d;
            while !stop.load(Ordering::SeqCst) {
                let (r, email, subject_ref) = &withdrawn[i % withdrawn.len()];
                let r = *r;
                let selector =
                    if (i / withdrawn.len()).is_multiple_of(2) { by("email", email) } else { by_ref(subject_ref) };
                i += 1;
                let was_down = down.load(Ordering::SeqCst);
                let result = decide(&mut c, selector, "marketing", "post", None).await;
                let now_down = down.load(Ordering::SeqCst);
                let failed = result.is_err();
                {
                    let mut seen = seen.lock().unwrap();
                    match result {
                        Ok(decision) => {
                            seen.ok[r] += 1;
                            if effect(&decision) == common::Effect::Allow {
                                seen.violations.push(format!("ALLOW for a withdrawn subject of {}", REGIONS[r]));
                            }
                            if was_down == now_down && was_down != NONE && was_down != r {
                                *seen.ok_while_down.entry((was_down, r)).or_default() += 1;
                            }
                        }
                        Err(status) => {
                            seen.errors[r] += 1;
                            let is_down = was_down == r || now_down == r;
                            if is_down && status.code() == Code::Unavailable {
                                *seen.unavailable_while_down.entry(r).or_default() += 1;
                            } else {
                                seen.violations.push(format!(
                                    "decision for {} failed while it was {}: {status:?}",
                                    REGIONS[r],
                                    if is_down { "down" } else { "up" }
                                ));
                            }
                        }
                    }
                }
                if failed {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
    }

    let acked = |r: usize| acks.lock().unwrap()[r].len();
    let total_acked = || acks.lock().unwrap().iter().map(Vec::len).sum::<usize>();
    let plan = [(0, Restart::Kill9), (1, Restart::Graceful), (2, Restart::Kill9)];
    for (r, how) in plan {
        let id = region(REGIONS[r]);
        // Under load: writes are being acknowledged before each restart.
        let target = total_acked() + 30;
        let progressed = eventually(Duration::from_secs(15), || {
            let n = total_acked();
            async move { (n >= target).then_some(n) }
        })
        .await;
        assert!(progressed.is_some(), "writes progress before restarting {id}: {} acknowledged", total_acked());

        down.store(r, Ordering::SeqCst);
        let down_at = Instant::now();
        match how {
            Restart::Kill9 => {
                cluster.cluster.kill_node(&id).await.unwrap();
                // Down: its subjects get UNAVAILABLE while both other regions keep answering.
                let others: Vec<usize> = (0..REGIONS.len()).filter(|&o| o != r).collect();
                let observed = eventually(Duration::from_secs(10), || {
                    let seen = seen.lock().unwrap();
                    let unavailable = seen.unavailable_while_down.get(&r).copied().unwrap_or(0);
                    let served = others.iter().all(|&o| seen.ok_while_down.get(&(r, o)).copied().unwrap_or(0) >= 5);
                    async move { (unavailable >= 3 && served).then_some(()) }
                })
                .await;
                assert!(observed.is_some(), "{id} down: UNAVAILABLE for it, others served: {:?}", seen.lock().unwrap());
                cluster.cluster.restart_node(&id).await.expect("node restarts on its data");
            }
            Restart::Graceful => {
                // SIGTERM, wait for exit, start again. The gateway follows the node's Watch
                // throughout: the node must end that stream and exit on its own, not hold out
                // until the harness's SIGKILL.
                let stopping = Instant::now();
                let stopped =
                    cluster.cluster.restart_node(&id).await.expect("node restarts gracefully").expect("it was running");
                println!("{id}: graceful restart took {:?} (stop: {:?})", stopping.elapsed(), stopped.took);
                assert_graceful(&format!("{id} under load"), &stopped);
            }
        }
        // Served again, for decisions and for writes, before the next node goes.
        let (_, email, _) = withdrawn.iter().find(|(w, _, _)| *w == r).unwrap();
        let served = eventually(Duration::from_secs(10), || {
            let mut c = client.clone();
            async move { decide(&mut c, by("email", email), "marketing", "post", None).await.ok() }
        })
        .await
        .unwrap_or_else(|| panic!("{id} is served again after its restart"));
        assert_eq!(effect(&served), common::Effect::Deny);
        let writes_before = acked(r);
        let resumed = eventually(Duration::from_secs(10), || {
            let n = acked(r);
            async move { (n > writes_before).then_some(()) }
        })
        .await;
        assert!(resumed.is_some(), "writes to {id} are acknowledged again after its restart");
        for o in (0..REGIONS.len()).filter(|&o| o != r) {
            let served = seen.lock().unwrap().ok_while_down.get(&(r, o)).copied().unwrap_or(0);
            assert!(served > 0, "{} was served while {id} restarted", REGIONS[o]);
        }
        down.store(NONE, Ordering::SeqCst);
        println!("{id} ({how:?}): served again {:?} after it went down", down_at.elapsed());
    }
    stop.store(true, Ordering::SeqCst);
    while let Some(joined) = tasks.join_next().await {
        joined.expect("load task");
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let acks = acks.lock().unwrap().clone();
    println!(
        "load: {:?} acknowledged writes by region, decisions ok {:?} / errors {:?} by region",
        acks.iter().map(Vec::len).collect::<Vec<_>>(),
        seen.ok,
        seen.errors
    );
    let first = &seen.violations[..seen.violations.len().min(10)];
    assert!(seen.violations.is_empty(), "{} violations, first: {first:#?}", seen.violations.len());
    for r in [0, 2] {
        assert!(seen.unavailable_while_down.get(&r).copied().unwrap_or(0) > 0, "{} was seen down", REGIONS[r]);
    }

    // After the roll every region serves, and every acknowledged write is there.
    let mut c = client.clone();
    for (r, subject_acks) in acks.iter().enumerate() {
        assert!(!subject_acks.is_empty(), "writes to {} were acknowledged", REGIONS[r]);
        let mut by_subject: BTreeMap<&str, Vec<&Ack>> = BTreeMap::new();
        for ack in subject_acks {
            by_subject.entry(&ack.subject).or_default().push(ack);
        }
        for (subject, expected) in by_subject {
            let history = cluster.history_at_home(by_ref(subject)).await.unwrap();
            for ack in &expected {
                let entry = history.entries.iter().find(|e| e.sequence == ack.sequence);
                let entry = entry.unwrap_or_else(|| panic!("acknowledged write {ack:?} lost in the rolling restart"));
                assert_eq!(
                    (entry.state.as_str(), entry.captured_at.as_ref().map(|t| t.seconds)),
                    (ack.state, Some(ack.captured_at)),
                    "{ack:?}"
                );
            }
            // The decision follows the latest record the node holds, which is never older than
            // the latest acknowledged one (a write that failed may still have been applied).
            let latest = history.entries.iter().max_by_key(|e| e.captured_at.as_ref().map(|t| t.seconds)).unwrap();
            let latest_at = latest.captured_at.as_ref().unwrap().seconds;
            let last_acked = expected.iter().map(|a| a.captured_at).max().unwrap();
            assert!(latest_at >= last_acked, "{subject}: the latest acknowledged write is in force");
            let d = decide(&mut c, by_ref(subject), "marketing", "post", None).await.expect("served after the roll");
            let want = if latest.state == "granted" { common::Effect::Allow } else { common::Effect::Deny };
            assert_eq!(effect(&d), want, "{subject}: decision reflects the latest record {latest:?}");
        }
    }
    for (r, email, subject_ref) in &withdrawn {
        for selector in [by("email", email), by_ref(subject_ref)] {
            let d = decide(&mut c, selector, "marketing", "post", None).await.expect("every region serves");
            assert_eq!(effect(&d), common::Effect::Deny, "{email}: the withdrawal stands");
            assert_eq!(d.region, REGIONS[*r]);
        }
    }
    let elapsed = started.elapsed();
    println!("rolling restart test: {elapsed:?} wall time");
    assert!(elapsed < Duration::from_secs(90), "bounded: {elapsed:?}");
}

// === graceful stop with Watch streams open ===

/// Reads `stream` until it ends, skipping events; the final status (`Ok` for a clean end).
async fn stream_end<T>(stream: &mut tonic::Streaming<T>, within: Duration) -> Result<(), tonic::Status> {
    tokio::time::timeout(within, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(status) => return Err(status),
            }
        }
    })
    .await
    .expect("the stream ends when its server stops")
}

/// Waits for the gateway Watch event naming `subject_ref` (other events are skipped).
async fn watched(stream: &mut tonic::Streaming<gw::WatchEvent>, subject_ref: &str) -> common::ChangeEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = stream.message().await.expect("gateway watch stays open").expect("not ended");
            let event = event.event.expect("an event");
            if event.subject_ref == subject_ref {
                return event;
            }
        }
    })
    .await
    .expect("the event arrives in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_followed_by_watch_streams_stops_promptly_on_sigterm_and_keeps_acknowledged_writes() {
    let mut cluster = TestCluster::start_on_env_store(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let us_east = region("us-east");
    let mut client = cluster.gateway().await.unwrap();
    let subject_ref = register(&mut client, "US", &[("email", "sigterm@example.com")]).await;

    // Followers of us-east: the gateway (always, for its directory), a caller of the gateway's
    // merged Watch, and an operator watching the node directly.
    let mut through_gateway =
        client.watch(gw::WatchRequest { resume_token: String::new() }).await.unwrap().into_inner();
    watched(&mut through_gateway, &subject_ref).await;
    let mut direct = cluster.node(&us_east).await.unwrap();
    let mut direct = direct.watch(node::WatchRequest { after_sequence: None }).await.unwrap().into_inner();

    // A write acknowledged just before the stop; the direct stream has delivered it, so it is
    // following, not idle at its start.
    let ack =
        record_consent(&mut client, &subject_ref, common::ConsentAction::Deny, "marketing", &["email"], now() - 60)
            .await
            .expect("write acknowledged");
    let delivered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = direct.message().await.expect("node watch open").expect("not ended");
            if event.subject_ref == subject_ref && event.kind == common::ChangeKind::Consent as i32 {
                return event;
            }
        }
    })
    .await
    .expect("the acknowledged write reaches the node's watcher");
    assert_eq!(delivered.region, "us-east");

    // SIGTERM: the node ends its Watch streams and exits on its own, with success.
    let stopped = cluster.cluster.stop_node(&us_east).await.unwrap();
    println!("us-east stopped {:?} after SIGTERM with two watchers", stopped.took);
    assert_graceful("us-east with Watch streams open", &stopped);
    let end = stream_end(&mut direct, Duration::from_secs(1)).await;
    assert_eq!(end.as_ref().map_err(tonic::Status::code), Err(Code::Unavailable), "told to reconnect: {end:?}");

    // Started again on its data: the acknowledged write is there.
    cluster.cluster.restart_node(&us_east).await.expect("node restarts on its data");
    let home_cluster = &cluster;
    let history = eventually(Duration::from_secs(10), || {
        let subject = by_ref(&subject_ref);
        async move { home_cluster.history_at_home(subject).await.ok() }
    })
    .await
    .expect("us-east is served again");
    let entry = history.entries.iter().find(|e| e.sequence == ack.sequence);
    let entry = entry.unwrap_or_else(|| panic!("acknowledged write {ack:?} lost over a graceful stop: {history:?}"));
    assert_eq!(entry.state, "denied");
    let d = decide(&mut client, by_ref(&subject_ref), "marketing", "email", None).await.unwrap();
    assert_eq!(effect(&d), common::Effect::Deny, "the acknowledged denial decides after the restart");

    // The gateway reconnected to the restarted node: the caller's stream, open all along, gets
    // its next change.
    let newcomer = register(&mut client, "US", &[("email", "after-sigterm@example.com")]).await;
    let event = watched(&mut through_gateway, &newcomer).await;
    assert_eq!((event.region.as_str(), event.kind), ("us-east", common::ChangeKind::Registered as i32));

    // The gateway, too, ends its callers' Watch streams and exits on its own.
    let stopped = cluster.cluster.stop_gateway().await.unwrap();
    println!("gateway stopped {:?} after SIGTERM with a caller's Watch open", stopped.took);
    assert_graceful("the gateway with a caller's Watch open", &stopped);
    let end = stream_end(&mut through_gateway, Duration::from_secs(1)).await;
    assert_eq!(end.as_ref().map_err(tonic::Status::code), Err(Code::Unavailable), "told to reconnect: {end:?}");
    for r in ["eu-central", "us-east"] {
        let stopped = cluster.cluster.stop_node(&region(r)).await.unwrap();
        assert_graceful(r, &stopped);
    }
}

/// A node out of file descriptors (its limit lowered with `prlimit` to a few more than it holds,
/// then filled by connections that never finish their TLS handshake): it pauses accepting
/// instead of retrying at full CPU, keeps serving the connections it has, and accepts again once
/// the handshakes time out and give their descriptors back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_out_of_descriptors_pauses_accepting_and_recovers() {
    let cluster = TestCluster::start(BIN, &["eu-central"]).await.expect("cluster starts");
    let home = region("eu-central");
    let mut gateway = cluster.gateway().await.unwrap();
    gateway
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", "fd@example.de")],
            ..Default::default()
        })
        .await
        .unwrap();
    let pid = cluster.cluster.processes().find(|p| p.region.as_ref() == Some(&home)).and_then(|p| p.pid()).unwrap();
    let held = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let limit = held + 16;
    let status = std::process::Command::new("prlimit")
        .args([format!("--pid={pid}"), format!("--nofile={limit}:{limit}")])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit");
    let addr = cluster.node_addr(&home).unwrap();
    // Connections that say nothing: each holds a descriptor in the node for the handshake timeout.
    let mut idle = Vec::new();
    for _ in 0..40 {
        if let Ok(tcp) = tokio::net::TcpStream::connect(addr).await {
            idle.push(tcp);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = cpu();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks = cpu() - before;
    // 2 s at full CPU is 200 ticks; a paused accept takes next to none.
    assert!(ticks < 40, "the node spent {ticks} CPU ticks in 2 s out of descriptors");
    // The gateway's connection, open before, is served meanwhile.
    let decide = || gw::DecideRequest {
        subject: by("email", "fd@example.de"),
        purpose: "marketing".into(),
        channel: "email".into(),
        ..Default::default()
    };
    let decided = gateway.decide(decide()).await.unwrap().into_inner();
    assert_eq!(decided.decision.unwrap().effect, common::Effect::Deny as i32);
    // Once the idle connections are gone, new connections are accepted again.
    drop(idle);
    let fresh = eventually(Duration::from_secs(20), || async {
        let mut node = cluster.node(&home).await.ok()?;
        node.info(node::InfoRequest {}).await.ok().map(|_| ())
    })
    .await;
    assert!(fresh.is_some(), "a new connection is served once descriptors are free");
}
