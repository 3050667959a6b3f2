//! A PostgreSQL region's database fails over (issue 19, item 6), on real processes and real
//! servers: the region's primary with a synchronous standby, the node connecting with both hosts
//! and `target_session_attrs=read-write` (as it would through Patroni's or pg_auto_failover's
//! multi-host URL). Under write and decide load the primary is killed (kill -9), the standby
//! promoted, and the node reconnects by itself: no acknowledged write is lost, no decision in the
//! gap is an allow for a withdrawn subject (they fail, closed), and the time until decisions
//! succeed again is measured.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use domicile_cli::cluster::ClusterStore;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::node::v1 as node;
use domicile_cluster_tests::{Churn, Cluster as _, TestCluster, TestOptions, consent_churn, node_ref, region};
use domicile_runtime::postgres::LocalPostgres;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const SUBJECTS: usize = 6;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_fails_over_under_load_without_losing_a_write_or_allowing_a_withdrawn_subject() {
    let options = TestOptions { store: ClusterStore::Postgres, ..Default::default() };
    let mut cluster = TestCluster::start_with(BIN, &["eu-central"], options).await.expect("cluster starts");
    let eu = region("eu-central");

    // A synchronous standby of the region's primary, and the node pointed at both.
    let primary = cluster.database().expect("a PostgreSQL cluster").server();
    let standby_dir = LocalPostgres::reachable_dir(cluster.dir(), "standby").unwrap();
    let standby = primary.start_standby(&standby_dir, free_port(), "standby").unwrap().remove_on_drop();
    primary.require_synchronous_standby("standby").unwrap();
    let state = domicile_cluster_tests::eventually(Duration::from_secs(30), || async {
        let out = primary.psql("postgres", "SELECT sync_state FROM pg_stat_replication").ok()?;
        let state = String::from_utf8(out.stdout).ok()?;
        (state.trim() == "sync").then_some(())
    })
    .await;
    assert!(state.is_some(), "the standby replicates synchronously");
    let primary_pid = primary.pid().expect("the primary runs");
    let config_path = cluster.dir().join("config/node-eu-central.toml");
    let mut config: toml::Table = std::fs::read_to_string(&config_path).unwrap().parse().unwrap();
    let store = config.get_mut("store").and_then(toml::Value::as_table_mut).unwrap();
    let url = store.get("url").and_then(toml::Value::as_str).unwrap().to_owned();
    let (before, database) = url.rsplit_once('/').unwrap();
    let both = format!("{before},127.0.0.1:{}/{database}?target_session_attrs=read-write", standby.port());
    store.insert("url".into(), toml::Value::String(both));
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    cluster.cluster.restart_node(&eu).await.unwrap();
    cluster.wait_healthy().await.unwrap();

    let gateway = cluster.gateway().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for s in 0..SUBJECTS {
        let (client, stop) = (gateway.clone(), Arc::clone(&stop));
        let email = format!("failover.{s}@example.de");
        tasks.push(tokio::spawn(async move {
            consent_churn(client, &email, stop, || false, Duration::from_millis(20)).await
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    kill(Pid::from_raw(i32::try_from(primary_pid).unwrap()), Signal::SIGKILL).unwrap();
    // Operators (or Patroni) promote once the primary is known lost; here at once.
    let standby = tokio::task::spawn_blocking(move || {
        standby.promote().unwrap();
        standby
    })
    .await
    .unwrap();
    eprintln!("standby promoted {:.0} ms after the primary was killed", killed.elapsed().as_secs_f64() * 1000.0);
    // Decisions succeed again once the node has reconnected to the new primary.
    let mut probe = gateway.clone();
    let recovered = loop {
        let decided = probe
            .decide(gw::DecideRequest {
                subject: domicile_cluster_tests::select("email", "failover.0@example.de"),
                purpose: "marketing".into(),
                channel: "email".into(),
                at: None,
                ..Default::default()
            })
            .await;
        if decided.is_ok() {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "decisions never came back: {decided:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("decisions succeed again {:.0} ms after the primary was killed", recovered.as_secs_f64() * 1000.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);

    let mut node_client = cluster.node(&eu).await.unwrap();
    let (mut total, mut failures) = (0, 0);
    for task in tasks {
        let Churn { subject, acknowledged, stale, failed, .. } = task.await.unwrap().unwrap();
        assert_eq!(stale, 0, "no allow after an acknowledged withdrawal, also in the gap");
        let history = node_client
            .consent_history(node::ConsentHistoryRequest { subject: node_ref(&subject), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(
            history.entries.len() as u64 >= acknowledged,
            "no acknowledged write lost: {} entries, {acknowledged} acknowledged",
            history.entries.len()
        );
        total += acknowledged;
        failures += failed;
    }
    eprintln!("{total} acknowledged writes, {failures} failed calls around the failover");
    assert!(total > 0);
    cluster.stop().await;
    drop(standby);
}
