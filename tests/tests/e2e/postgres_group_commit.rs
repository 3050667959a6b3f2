//! Consent writes on PostgreSQL are group-committed: the writes queued while one transaction
//! commits share the next one (node/src/store/pg_store/batch.rs). Sharing a transaction must not
//! change what any single write means, which is what this test checks on a real node and a real
//! server with many writes in flight at once: a repeated idempotency key applies once even when
//! its copies land in one batch, a write for an unknown subject fails alone, every acknowledged
//! write is in the ledger once at its own position, what decisions read is the record in force
//! the ledger's ordering rule gives, and the region's audit log stays one chain.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::collections::{BTreeMap, BTreeSet};

use domicile_cli::cluster::ClusterStore;
use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::node::v1 as node;
use domicile_cluster_tests::{Cluster as _, RegionAudit, TestCluster, TestOptions, identifier, node_ref, region};

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const SUBJECTS: usize = 8;
const WRITES_PER_SUBJECT: usize = 40;
/// Copies of each write sent at once under its idempotency key.
const COPIES: usize = 3;
const UNKNOWN: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_writes_sharing_a_transaction_keep_the_rules_of_a_single_write() {
    let options = TestOptions { store: ClusterStore::Postgres, ..Default::default() };
    let cluster = TestCluster::start_with(BIN, &["eu-central"], options).await.expect("cluster starts");
    let eu = region("eu-central");
    let mut client = cluster.node(&eu).await.unwrap();
    let mut subjects = Vec::new();
    for s in 0..SUBJECTS {
        let registered = client
            .register(node::RegisterRequest {
                jurisdiction: "DE".into(),
                identifiers: vec![identifier("email", &format!("batch.{s}@example.de"))],
                caller_region: "eu-central".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        subjects.push(registered.subject_ref);
    }

    // Decisions all along: their audit entries wait in the database until a write (or a
    // replica's chainer) chains them under the head lock, so every write also takes them. (A
    // write that took them before the head lock could deadlock with another; the benchmark
    // found that once. This run exercises the path; it does not reliably reproduce the race.)
    let deciding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut deciders = tokio::task::JoinSet::new();
    for d in 0..4 {
        let (mut client, subject, deciding) = (client.clone(), subjects[d % SUBJECTS].clone(), deciding.clone());
        deciders.spawn(async move {
            let mut decided = 0u64;
            while deciding.load(std::sync::atomic::Ordering::Relaxed) {
                let request = node::DecideRequest {
                    subject: node_ref(&subject),
                    purpose: "marketing".into(),
                    channel: "email".into(),
                    at: None,
                    ..Default::default()
                };
                if let Err(status) = client.decide(request).await {
                    panic!("a decision during the writes failed: {status:?}");
                }
                decided += 1;
            }
            decided
        });
    }

    // Every write at once: alternating grants and withdrawals per subject, each sent COPIES
    // times under one key, and writes for a subject the region does not hold.
    let mut tasks = tokio::task::JoinSet::new();
    for (s, subject) in subjects.iter().enumerate() {
        for i in 0..WRITES_PER_SUBJECT {
            for _ in 0..COPIES {
                let (mut client, subject) = (client.clone(), subject.clone());
                let action = if i % 2 == 0 { common::ConsentAction::Grant } else { common::ConsentAction::Withdraw };
                tasks.spawn(async move {
                    let answer = client.record_consent(consent(&subject, action, &format!("key-{s}-{i}"))).await;
                    (Some((s, i)), answer.map(|r| r.into_inner().sequence).map_err(|e| e.code()))
                });
            }
        }
    }
    for u in 0..UNKNOWN {
        let mut client = client.clone();
        tasks.spawn(async move {
            let unknown = format!("eu-central/{u:032x}");
            let answer = client.record_consent(consent(&unknown, common::ConsentAction::Grant, "")).await;
            (None, answer.map(|r| r.into_inner().sequence).map_err(|e| e.code()))
        });
    }
    let mut sequences: BTreeMap<(usize, usize), BTreeSet<u64>> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            (Some(write), Ok(sequence)) => {
                sequences.entry(write).or_default().insert(sequence);
            }
            (Some(write), Err(code)) => panic!("write {write:?} refused: {code:?}"),
            (None, answer) => assert_eq!(answer, Err(tonic::Code::NotFound), "an unknown subject fails alone"),
        }
    }
    deciding.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut decided = 0;
    while let Some(done) = deciders.join_next().await {
        decided += done.unwrap();
    }
    assert!(decided > 0, "decisions ran during the writes");
    assert_eq!(sequences.len(), SUBJECTS * WRITES_PER_SUBJECT, "every write acknowledged");
    for (write, seen) in &sequences {
        assert_eq!(seen.len(), 1, "write {write:?}: every copy answered with the one record it made");
    }
    let acknowledged: BTreeSet<u64> = sequences.values().flatten().copied().collect();
    assert_eq!(acknowledged.len(), SUBJECTS * WRITES_PER_SUBJECT, "each write at a position of its own");

    let mut in_ledger = BTreeSet::new();
    for subject in &subjects {
        let history = client
            .consent_history(node::ConsentHistoryRequest { subject: node_ref(subject), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(history.entries.len(), WRITES_PER_SUBJECT, "applied once per key");
        in_ledger.extend(history.entries.iter().map(|e| e.sequence));
        let in_force = history
            .in_force
            .iter()
            .find(|c| c.purpose == "marketing" && c.channel == "email")
            .expect("a record in force");
        let decision = client
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
            .unwrap();
        let expected = if in_force.state == "granted" { common::Effect::Allow } else { common::Effect::Deny };
        assert_eq!(decision.effect, expected as i32, "decisions read the record the ledger's rule puts in force");
    }
    assert_eq!(in_ledger, acknowledged, "the ledger holds exactly the acknowledged writes");

    let audit = RegionAudit::of(&cluster, &eu);
    let verified = audit.verify(BIN, true).unwrap();
    assert!(verified.status.success(), "one chain: {}", String::from_utf8_lossy(&verified.stdout));
    let consents = audit.lines().unwrap().iter().filter(|l| l.contains("\"kind\":\"consent\"")).count();
    assert_eq!(consents, SUBJECTS * WRITES_PER_SUBJECT, "one audit entry per applied write");
}

fn consent(subject: &str, action: common::ConsentAction, key: &str) -> node::RecordConsentRequest {
    node::RecordConsentRequest {
        subject: node_ref(subject),
        purpose: "marketing".into(),
        channels: vec!["email".into()],
        action: action as i32,
        evidence: Some(common::Evidence { notice_version: "n1".into(), ..Default::default() }),
        caller_region: "eu-central".into(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}
