//! Several node replicas of one region over one PostgreSQL database are one region (issue 19,
//! item 4), on real processes: a second `domicile node` of the region runs beside the cluster's
//! own on the same database. Writes acknowledged by either replica are what the very next
//! decision on the other one sees (no stale allow from a replica of its own); a watcher of one
//! replica receives every change acknowledged by either, in one order, and resumes from its
//! cursor on the other replica after its own was killed (kill -9); concurrent writers on both
//! replicas leave one audit chain that `domicile audit verify` accepts from the database. A
//! replica paused (SIGSTOP) while the other acknowledges a withdrawal answers a decision sent to
//! it meanwhile with the withdrawal once it runs again; one paused in the middle of a write holds
//! up the region's other writes for two stall limits at most, not until it runs again.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use domicile_cli::cluster::{ClusterStore, database_name};
use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::node::v1 as node;
use domicile_cluster_tests::pb::node::v1::regional_node_client::RegionalNodeClient;
use domicile_cluster_tests::{
    Churn, Cluster as _, Paused, RegionAudit, Replica, TestCluster, TestOptions, consent_churn, eventually,
    gateway_over_replicas, identifier, node_ref, region,
};
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const ROUNDS: usize = 20;

type NodeClient = RegionalNodeClient<Channel>;

/// One region (eu-central) on PostgreSQL with a second node replica over its database: the
/// cluster, the replica, a client of the cluster's own node and one of the replica.
async fn two_replicas() -> (TestCluster, Replica, NodeClient, NodeClient) {
    let options = TestOptions { store: ClusterStore::Postgres, ..Default::default() };
    let cluster = TestCluster::start_with(BIN, &["eu-central"], options).await.expect("cluster starts");
    let eu = region("eu-central");
    let replica = Replica::start(&cluster, &eu).await.unwrap();
    let own = cluster.node(&eu).await.unwrap();
    let other = replica.client(&cluster).await.unwrap();
    (cluster, replica, own, other)
}

async fn record(client: &mut NodeClient, subject: &str, action: common::ConsentAction) -> node::RecordConsentResponse {
    client
        .record_consent(node::RecordConsentRequest {
            subject: node_ref(subject),
            purpose: "marketing".into(),
            channels: vec!["email".into()],
            action: action as i32,
            evidence: Some(common::Evidence { notice_version: "n1".into(), ..Default::default() }),
            caller_region: "eu-central".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn effect(client: &mut NodeClient, subject: &str) -> i32 {
    client
        .decide(node::DecideRequest {
            subject: node_ref(subject),
            purpose: "marketing".into(),
            channel: "email".into(),
            at: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .decision
        .expect("a decision")
        .effect
}

async fn next_event(stream: &mut tonic::Streaming<common::ChangeEvent>) -> common::ChangeEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .expect("the stream stays open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_over_one_database_decide_watch_and_audit_as_one_region() {
    let (cluster, mut replica, mut first, mut second) = two_replicas().await;
    let eu = region("eu-central");

    let mut gateway = cluster.gateway().await.unwrap();
    let registered = gateway
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", "replicated@example.de")],
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let subject = registered.subject_ref.clone();

    // A watcher of the second replica, from the region's first change.
    let mut watch = second.watch(node::WatchRequest { after_sequence: None }).await.unwrap().into_inner();
    let registration = next_event(&mut watch).await;
    assert_eq!(registration.kind, common::ChangeKind::Registered as i32, "written through the first replica");

    // Writes alternate between the replicas; the other one decides right after each
    // acknowledgement: a grant is in force there, and so is the withdrawal after it.
    for round in 0..ROUNDS {
        let (writer, reader) = if round % 2 == 0 { (&mut first, &mut second) } else { (&mut second, &mut first) };
        record(writer, &subject, common::ConsentAction::Grant).await;
        assert_eq!(effect(reader, &subject).await, common::Effect::Allow as i32, "round {round}: the grant");
        record(writer, &subject, common::ConsentAction::Withdraw).await;
        assert_eq!(
            effect(reader, &subject).await,
            common::Effect::Deny as i32,
            "round {round}: no stale allow after an acknowledged withdrawal"
        );
    }

    // The second replica's watcher got every change, from both replicas, in one order.
    let mut last_seen = registration.sequence;
    for round in 0..ROUNDS {
        for state in ["granted", "withdrawn"] {
            let event = next_event(&mut watch).await;
            assert_eq!(
                (event.kind, event.state.as_str()),
                (common::ChangeKind::Consent as i32, state),
                "round {round}"
            );
            assert!(event.sequence > last_seen, "one order per region");
            last_seen = event.sequence;
        }
    }

    // kill -9 the second replica; changes go on through the first; the watcher resumes from
    // its cursor on the first replica and misses nothing.
    replica.kill().await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.expect("the stream ends");
    assert!(!matches!(err, Ok(Some(_))), "no event after the replica died: {err:?}");
    record(&mut first, &subject, common::ConsentAction::Grant).await;
    record(&mut first, &subject, common::ConsentAction::Deny).await;
    let mut resumed = first.watch(node::WatchRequest { after_sequence: Some(last_seen) }).await.unwrap().into_inner();
    for state in ["granted", "denied"] {
        let event = next_event(&mut resumed).await;
        assert_eq!(event.state, state, "resumed on the other replica without a gap");
        assert!(event.sequence > last_seen);
        last_seen = event.sequence;
    }

    // The second replica back (restarted on the same database): writers on both replicas at
    // once leave one audit chain.
    replica.restart(&cluster).await.unwrap();
    let second = replica.client(&cluster).await.unwrap();
    let mut writers = Vec::new();
    for i in 0..24 {
        let mut client = if i % 2 == 0 { first.clone() } else { second.clone() };
        let subject = subject.clone();
        // Refusals, each always an event: a grant racing a refusal captured after it on the other
        // replica is, rightly, no event (`change::announced`), so the count would depend on the race.
        let action = if i % 2 == 0 { common::ConsentAction::Withdraw } else { common::ConsentAction::Deny };
        writers.push(tokio::spawn(async move { record(&mut client, &subject, action).await }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let mut resumed_again = replica
        .client(&cluster)
        .await
        .unwrap()
        .watch(node::WatchRequest { after_sequence: Some(last_seen) })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..24 {
        let event = next_event(&mut resumed_again).await;
        assert!(event.sequence > last_seen, "one order per region");
        last_seen = event.sequence;
    }

    let audit = RegionAudit::of(&cluster, &eu);
    let verified = audit.verify(BIN, true).unwrap();
    assert!(verified.status.success(), "one chain: {}", String::from_utf8_lossy(&verified.stdout));
    let consents = audit.lines().unwrap().iter().filter(|l| l.contains("\"kind\":\"consent\"")).count();
    assert_eq!(consents, 2 * ROUNDS + 2 + 24, "every acknowledged change is audited once");

    // The region's decisions through the gateway still come from the database.
    let decided = eventually(Duration::from_secs(5), || {
        let mut gateway = gateway.clone();
        let subject = subject.clone();
        async move {
            let decision = gateway
                .decide(gw::DecideRequest {
                    subject: domicile_cluster_tests::select_ref(&subject),
                    purpose: "marketing".into(),
                    channel: "email".into(),
                    at: None,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .decision?;
            Some(decision.effect)
        }
    })
    .await;
    assert!(decided.is_some(), "the gateway decides for the region's subject");
}

/// Withdrawals acknowledged by one replica, each followed at once by a decision on the other,
/// which decided the grant just before (so its read cache holds the grant):
/// `DOMICILE_STALE_ROUNDS` of them (default 10,000), spread over subjects written concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_through_one_replica_is_the_next_decision_on_the_other_every_time() {
    let rounds: usize = std::env::var("DOMICILE_STALE_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(10_000);
    const SUBJECTS: usize = 16;
    let (cluster, _replica, first, second) = two_replicas().await;
    let mut gateway = cluster.gateway().await.unwrap();
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for s in 0..SUBJECTS {
        let subject = gateway
            .register(gw::RegisterRequest {
                jurisdiction: "DE".into(),
                identifiers: vec![identifier("email", &format!("stale.{s}@example.de"))],
                idempotency_key: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .subject_ref;
        let (mut a, mut b) = (first.clone(), second.clone());
        let share = rounds / SUBJECTS + usize::from(s < rounds % SUBJECTS);
        tasks.push(tokio::spawn(async move {
            let (mut stale, mut unseen_grants) = (0, 0);
            for _ in 0..share {
                record(&mut a, &subject, common::ConsentAction::Grant).await;
                // Decided on the other replica while granted, so the grant is what its read
                // cache holds when the withdrawal comes.
                if effect(&mut b, &subject).await != common::Effect::Allow as i32 {
                    unseen_grants += 1;
                }
                record(&mut a, &subject, common::ConsentAction::Withdraw).await;
                if effect(&mut b, &subject).await != common::Effect::Deny as i32 {
                    stale += 1;
                }
            }
            (stale, unseen_grants)
        }));
    }
    let (mut stale, mut unseen_grants) = (0, 0);
    for task in tasks {
        let (s, u) = task.await.unwrap();
        stale += s;
        unseen_grants += u;
    }
    eprintln!(
        "{rounds} withdrawals through one replica, decided on the other: {stale} stale, {unseen_grants} grants \
         unseen, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(stale, 0, "no stale allow after an acknowledged withdrawal");
    assert_eq!(unseen_grants, 0, "an acknowledged grant is the next decision on the other replica too");
}

/// A replica paused (SIGSTOP) with a grant in its read cache while the other acknowledges the
/// withdrawal; a decision sent to the paused replica after that acknowledgement waits in its
/// socket, and is answered when the replica runs again: with the withdrawal, every round (its
/// cache and its mark are as old as the pause; the check where its audit entry is stored is what
/// catches it). Should the pause catch it in the middle of chaining decision entries (a write),
/// the withdrawal waits for the idle limit (the next test), not for the pause to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_while_the_other_withdraws_answers_the_withdrawal_when_it_runs_again() {
    let (_cluster, replica, mut a, b) = two_replicas().await;
    let subject = register_de(&mut a, "paused.replica@example.de").await.subject_ref;
    let (allow, deny) = (common::Effect::Allow as i32, common::Effect::Deny as i32);
    for round in 0..ROUNDS {
        record(&mut a, &subject, common::ConsentAction::Grant).await;
        // Twice: the first decision's check drops what changed since B's mark (the grant among
        // it), so the second is the one that leaves the grant in B's cache.
        for _ in 0..2 {
            assert_eq!(effect(&mut b.clone(), &subject).await, allow, "round {round}: the grant");
        }
        let paused = Paused::process(replica.pid().expect("the replica runs")).unwrap();
        let withdrawn =
            tokio::time::timeout(Duration::from_secs(10), record(&mut a, &subject, common::ConsentAction::Withdraw))
                .await;
        let (mut late, who) = (b.clone(), subject.clone());
        let decision = tokio::spawn(async move { effect(&mut late, &who).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!decision.is_finished(), "round {round}: a paused replica answered");
        drop(paused);
        assert!(withdrawn.is_ok(), "round {round}: the withdrawal waited for the paused replica");
        assert_eq!(decision.await.unwrap(), deny, "round {round}: a stale allow after the pause");
    }
}

/// A replica stopped (SIGSTOP) in the middle of a write keeps the region head it locked; the
/// database ends that write after the idle limit (`node/src/store/pg_store/unit.rs`: rolled back,
/// never acknowledged), then the one queued behind it, so a write through the other replica
/// waits two limits at most, not until the stopped one runs again. The stopped replica's other writes in flight wait for their turn
/// inside it (two at the head or queued for it at most: checked in `pg_stat_activity`), not in
/// the lock's queue, where each would hold the head for a limit of its own in turn (sixteen
/// writers here, more than its four connections: four limits). Afterwards the stopped replica
/// writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_mid_write_holds_up_the_regions_writes_for_two_stall_limits_at_most() {
    let (cluster, replica, mut a, b) = two_replicas().await;
    let eu = region("eu-central");
    let subject = register_de(&mut a, "stopped.mid.write@example.de").await.subject_ref;
    let server = cluster.database().expect("a PostgreSQL cluster").server();
    let name = database_name(&eu);
    // With A idle (no decisions, so no chaining either), a session idle in a transaction that
    // holds the head is B's write, stopped there.
    let head_held_by_a_stopped_write = || {
        let out = server
            .psql(
                &name,
                "SELECT count(*) FROM pg_stat_activity s JOIN pg_locks l ON l.pid = s.pid \
                 JOIN pg_class c ON c.oid = l.relation \
                 WHERE c.relname = 'region_head' AND l.granted AND s.state = 'idle in transaction'",
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() != "0"
    };
    let interaction = |subject: &str| node::RecordInteractionRequest {
        subject: node_ref(subject),
        channel: "chat".into(),
        kind: "message".into(),
        intent: "billing".into(),
        caller_region: "eu-central".into(),
        ..Default::default()
    };

    // Sixteen writers on B (more than its four connections), one transaction per interaction.
    let running = Arc::new(AtomicBool::new(true));
    let writers: Vec<_> = (0..16)
        .map(|_| {
            let (mut b, running, request) = (b.clone(), running.clone(), interaction(&subject));
            tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    // Some fail: the writes the database ended.
                    let _ = b.record_interaction(request.clone()).await;
                }
            })
        })
        .collect();

    let pid = replica.pid().expect("the replica runs");
    let mut caught = 0;
    for attempt in 0..100 {
        if caught == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let paused = Paused::process(pid).unwrap();
        // Statements B had already sent finish; then its transaction is idle, if it is in one.
        tokio::time::sleep(Duration::from_millis(30)).await;
        if !head_held_by_a_stopped_write() {
            continue;
        }
        caught += 1;
        // Besides the write holding the head, at most one of B's waits for it (two turns).
        let out = server.psql(&name, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").unwrap();
        let queued = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(queued == "0" || queued == "1", "attempt {attempt}: {queued} of B's writes queued for the head");
        // Each a change (a repeat of the consent in force may need no write at all): grant,
        // withdraw, grant.
        let action = if caught % 2 == 1 { common::ConsentAction::Grant } else { common::ConsentAction::Withdraw };
        let started = Instant::now();
        let written = tokio::time::timeout(Duration::from_secs(10), record(&mut a, &subject, action)).await;
        let waited = started.elapsed();
        drop(paused);
        assert!(written.is_ok(), "attempt {attempt}: A's write waited 10 s for the stopped replica");
        // Two limits (B's write at the head, then the one queued behind it), and a margin.
        assert!(waited < Duration::from_millis(6500), "attempt {attempt}: A's write waited {waited:?}");
    }
    assert_eq!(caught, 3, "B stopped in the middle of a write three times");
    running.store(false, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let mut b = b.clone();
    let again = eventually(Duration::from_secs(10), || {
        let (mut b, request) = (b.clone(), interaction(&subject));
        async move { b.record_interaction(request).await.ok() }
    })
    .await;
    assert!(again.is_some(), "the stopped replica writes again");
    assert_eq!(effect(&mut b, &subject).await, common::Effect::Allow as i32, "A's grant, on B");
}

/// kill -9 of one replica of a region while writes and decisions run through a gateway that
/// spreads over both: the region keeps serving through the other replica, no acknowledged write
/// is lost, and no decision after an acknowledged withdrawal is an allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_loses_no_write_and_never_allows_a_withdrawn_subject() {
    const SUBJECTS: usize = 8;
    let options = TestOptions { store: ClusterStore::Postgres, ..Default::default() };
    let cluster = TestCluster::start_with(BIN, &["eu-central"], options).await.expect("cluster starts");
    let eu = region("eu-central");
    let replica = Replica::start(&cluster, &eu).await.unwrap();
    let extra = gateway_over_replicas(&cluster, "replicas", &[(eu.clone(), vec![replica.addr])].into_iter().collect())
        .await
        .unwrap();
    let addr = extra.addr;
    let gateway = cluster.gateway_at(addr).await.unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killed_at = std::sync::Arc::new(std::sync::OnceLock::<std::time::Instant>::new());
    let mut tasks = Vec::new();
    for s in 0..SUBJECTS {
        let (client, stop, killed_at) = (gateway.clone(), stop.clone(), killed_at.clone());
        // Failures are allowed only around the kill (until the health checks took the dead
        // replica out); after that the region serves every call.
        let late = move || killed_at.get().is_some_and(|t| t.elapsed() > Duration::from_secs(1));
        let email = format!("load.{s}@example.de");
        tasks.push(tokio::spawn(async move { consent_churn(client, &email, stop, late, Duration::ZERO).await }));
    }
    // The replica killed is the region's first endpoint: a gateway that did not spread over
    // both would lose the region with it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut cluster = cluster;
    cluster.cluster.kill_node(&eu).await.unwrap();
    killed_at.set(std::time::Instant::now()).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut node = replica.client(&cluster).await.unwrap();
    let mut total = 0;
    for task in tasks {
        let Churn { subject, acknowledged, stale, failed_late: late_failures, .. } = task.await.unwrap().unwrap();
        assert_eq!(stale, 0, "no allow after an acknowledged withdrawal");
        assert_eq!(late_failures, 0, "the region keeps serving through the surviving replica");
        let history = node
            .consent_history(node::ConsentHistoryRequest { subject: node_ref(&subject), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        // Every acknowledged write is in the ledger (a write retried on the other replica after
        // a lost reply is there once, under its idempotency key).
        assert!(
            history.entries.len() as u64 >= acknowledged,
            "{} records, {acknowledged} acknowledged",
            history.entries.len()
        );
        total += acknowledged;
    }
    eprintln!("{total} acknowledged writes through both replicas, one killed after 2 s");
    assert!(total > 0);
}

fn node_link(link: &str) -> Option<common::SubjectKey> {
    Some(common::SubjectKey { key: Some(common::subject_key::Key::Link(link.into())) })
}

/// Registers a German subject with one email directly at `client`, a node of eu-central.
async fn register_de(client: &mut NodeClient, email: &str) -> node::RegisterResponse {
    client
        .register(node::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", email)],
            caller_region: "eu-central".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// The decision on `client` for `key` (marketing × email): the effect and the subject decided
/// for, or the status code.
async fn decided(client: &mut NodeClient, key: Option<common::SubjectKey>) -> Result<(i32, String), tonic::Code> {
    decided_on(client, key, "email").await
}

/// [`decided`] for marketing on `channel`.
async fn decided_on(
    client: &mut NodeClient,
    key: Option<common::SubjectKey>,
    channel: &str,
) -> Result<(i32, String), tonic::Code> {
    let decision = client
        .decide(node::DecideRequest {
            subject: key,
            purpose: "marketing".into(),
            channel: channel.into(),
            at: None,
            ..Default::default()
        })
        .await
        .map_err(|status| status.code())?
        .into_inner()
        .decision
        .expect("a decision");
    Ok((decision.effect, decision.subject_ref))
}

/// Every kind of change that alters what a decision reads, written through one replica after the
/// other replica decided (and so cached) the state before it: a restriction and its lifting, a
/// merge that moves a link to another subject, a rectification that removes a link, an erasure.
/// The other replica's very next decision, by link and by subject ref, reflects each one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_through_one_replica_is_the_next_decision_on_the_other() {
    let (_cluster, _replica, mut a, mut b) = two_replicas().await;
    let (one, two) =
        (register_de(&mut a, "cache.one@example.de").await, register_de(&mut a, "cache.two@example.de").await);
    let (link1, link2) = (one.links[0].clone(), two.links[0].clone());
    let (allow, deny) = (common::Effect::Allow as i32, common::Effect::Deny as i32);
    record(&mut a, &two.subject_ref, common::ConsentAction::Grant).await;
    record(&mut a, &one.subject_ref, common::ConsentAction::Grant).await;
    assert_eq!(decided(&mut b, node_link(&link1)).await, Ok((allow, one.subject_ref.clone())));
    assert_eq!(decided(&mut b, node_link(&link2)).await, Ok((allow, two.subject_ref.clone())));

    // Restriction, and lifting it.
    for (restricted, expected) in [(true, deny), (false, allow)] {
        a.restrict(node::RestrictRequest {
            subject: node_ref(&one.subject_ref),
            restricted,
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(
            decided(&mut b, node_link(&link1)).await,
            Ok((expected, one.subject_ref.clone())),
            "restricted = {restricted}"
        );
    }

    // The first subject withdraws; the second is merged into it: its link now names the first.
    record(&mut a, &one.subject_ref, common::ConsentAction::Withdraw).await;
    assert_eq!(decided(&mut b, node_link(&link1)).await, Ok((deny, one.subject_ref.clone())));
    a.merge(node::MergeRequest {
        into: node_ref(&one.subject_ref),
        from: node_ref(&two.subject_ref),
        ..Default::default()
    })
    .await
    .unwrap();
    // A cell B never read for the merged subject: B's cache still holds the link as naming it,
    // and its row is gone; the answer is the remaining subject's, not NOT_FOUND.
    assert_eq!(
        decided_on(&mut b, node_link(&link2), "sms").await.map(|(_, s)| s),
        Ok(one.subject_ref.clone()),
        "a link moved by a merge, through a cell not cached"
    );
    let after_merge = decided(&mut b, node_link(&link2)).await;
    assert_eq!(
        after_merge.clone().map(|(_, s)| s),
        Ok(one.subject_ref.clone()),
        "the moved link names the remaining subject"
    );
    assert_ne!(after_merge.map(|(e, _)| e), Ok(allow), "a merge never turns a withdrawal into an allow");
    assert_eq!(decided(&mut b, node_ref(&two.subject_ref)).await, Err(tonic::Code::NotFound), "the merged subject");

    // A rectification removes the moved identifier: its link names no one.
    a.rectify(node::RectifyRequest {
        subject: node_ref(&one.subject_ref),
        remove_identifiers: vec![identifier("email", "cache.two@example.de")],
        caller_region: "eu-central".into(),
        override_reason: "controller_correction".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(decided(&mut b, node_link(&link2)).await, Err(tonic::Code::NotFound), "the removed link");
    assert_eq!(decided(&mut b, node_link(&link1)).await, Ok((deny, one.subject_ref.clone())));

    // Erasure.
    a.erase(node::EraseRequest {
        subject: node_ref(&one.subject_ref),
        override_reason: "controller_correction".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(decided(&mut b, node_link(&link1)).await, Err(tonic::Code::NotFound), "the erased subject's link");
    assert_eq!(decided(&mut b, node_ref(&one.subject_ref)).await, Err(tonic::Code::NotFound), "the erased subject");
}

/// Decisions' audit entries wait in the database until chained (node/src/store/pg_store/
/// decisions.rs): a decision made on one replica after a write acknowledged by the other is
/// chained after that write, one made before the next write before it, and entries no write
/// chains are chained by the replicas themselves; the chain verifies throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_chained_in_the_order_they_were_made_around_writes() {
    let (cluster, _replica, mut a, mut b) = two_replicas().await;
    let eu = region("eu-central");
    let subject = register_de(&mut a, "chained@example.de").await.subject_ref;
    let id = subject.split('/').nth(1).unwrap().to_owned();
    record(&mut a, &subject, common::ConsentAction::Grant).await;
    assert_eq!(effect(&mut b, &subject).await, common::Effect::Allow as i32);
    record(&mut a, &subject, common::ConsentAction::Withdraw).await;
    assert_eq!(effect(&mut b, &subject).await, common::Effect::Deny as i32);

    // No write follows the last decision: a replica's chainer chains it.
    let audit = RegionAudit::of(&cluster, &eu);
    let mine = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.contains(&id) && (l.contains("\"kind\":\"consent\"") || l.contains("\"kind\":\"decisions\"")))
            .map(|l| {
                let kind = if l.contains("\"kind\":\"consent\"") { "consent" } else { "decisions" };
                let state =
                    ["granted", "withdrawn", "allow", "deny"].into_iter().find(|s| l.contains(s)).unwrap_or("?");
                format!("{kind}:{state}")
            })
            .collect()
    };
    let chained = eventually(Duration::from_secs(5), || {
        let found = mine(&audit.lines().unwrap());
        async move { (found.len() == 4).then_some(found) }
    })
    .await
    .expect("every entry chained within 5 s");
    assert_eq!(chained, ["consent:granted", "decisions:allow", "consent:withdrawn", "decisions:deny"]);
    let verified = audit.verify(BIN, true).unwrap();
    assert!(verified.status.success(), "one chain: {}", String::from_utf8_lossy(&verified.stdout));
}

/// Identifier claims at an arbiter region with several replicas go to whichever is healthy: with
/// the first listed replica of us-east killed, a node of eu-central still registers subjects
/// whose links us-east arbitrates (before, claims went to the first endpoint only and every such
/// registration failed closed while it was down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_reach_an_arbiter_region_through_any_healthy_replica() {
    let options = TestOptions { store: ClusterStore::Postgres, ..Default::default() };
    let mut cluster = TestCluster::start_with(BIN, &["eu-central", "us-east"], options).await.expect("cluster starts");
    let (eu, us) = (region("eu-central"), region("us-east"));
    let replica = Replica::start(&cluster, &us).await.unwrap();

    // eu-central's node learns us-east's second replica, then us-east's first one goes away.
    let config_path = cluster.dir().join("config/node-eu-central.toml");
    let mut config: toml::Table = std::fs::read_to_string(&config_path).unwrap().parse().unwrap();
    let regions = config["ownership"]["regions"].as_array().unwrap().clone();
    let regions: Vec<toml::Value> = regions
        .into_iter()
        .map(|mut r| {
            if r["id"].as_str() == Some("us-east") {
                let table = r.as_table_mut().unwrap();
                table
                    .insert("replicas".into(), toml::Value::Array(vec![toml::Value::String(replica.addr.to_string())]));
            }
            r
        })
        .collect();
    config["ownership"].as_table_mut().unwrap().insert("regions".into(), toml::Value::Array(regions));
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    cluster.cluster.restart_node(&eu).await.unwrap();
    cluster.cluster.kill_node(&us).await.unwrap();

    // Registrations at eu-central's node: with two regions, each link's arbiter is one of them,
    // so some of twelve subjects' links are us-east's to grant.
    let operator = cluster.node(&eu).await.unwrap();
    for n in 0..12 {
        let request = node::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", &format!("arbiter.replica.{n}@example.de"))],
            ..Default::default()
        };
        let registered = eventually(Duration::from_secs(10), || {
            let mut operator = operator.clone();
            let request = request.clone();
            async move { operator.register(request).await.ok() }
        })
        .await;
        assert!(registered.is_some_and(|r| r.into_inner().created), "subject {n} registered through us-east's replica");
    }
    drop(replica);
}
