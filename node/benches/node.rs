//! Node benchmarks, in process, on real sled files with real fsync (no gRPC transport):
//!
//! - durable consent writes per second, one writer vs many concurrent writers (group commit);
//! - node-side decision latency with N subjects stored.
//!
//! `cargo bench -p domicile-node --bench node` (env: BENCH_SUBJECTS=1000000, BENCH_SECS=5).
//! Prints a table; BENCHMARKS.md records the figures with the machine and date.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "benchmark harness")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use domicile_node::NodeService;
use domicile_node::store::{SledStore, Store};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as pb;
use domicile_proto::pb::node::v1::regional_node_server::RegionalNode;
use domicile_proto::prost::Message as _;
use domicile_proto::raw::RawDecideBatchRequest;
use domicile_types::{IdentifierKind, Jurisdiction, LinkKey, NormalizedIdentifier, RegionId, SubjectId};
use hdrhistogram::Histogram;
use tonic::Request;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Fixture {
    service: Arc<NodeService<SledStore>>,
    store: Arc<SledStore>,
    subjects: Vec<String>,
    _dir: tempfile::TempDir,
}

fn packs() -> Arc<domicile_runtime::packs::PackReloader> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-packs");
    Arc::new(domicile_runtime::packs::PackReloader::new(dir, None).expect("packs"))
}

/// Registers `n` DE subjects straight into the store (the bulk path), `subject_refs` returned.
async fn fixture(n: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let region = RegionId::parse("eu-central").unwrap();
    let store = Arc::new(SledStore::open(dir.path(), &region).unwrap());
    let key = LinkKey::from_bytes(&[7; 32]).unwrap();
    let de = Jurisdiction::parse("DE").unwrap();
    let started = Instant::now();
    let mut subjects = Vec::with_capacity(n);
    for i in 0..n {
        let id = NormalizedIdentifier::normalize(IdentifierKind::CrmAccount, &format!("acct-{i}")).unwrap();
        let link = key.link(&id);
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&(i as u64).to_be_bytes());
        raw[8..].copy_from_slice(&[0x5a; 8]);
        // The region is the only one, so it arbitrates its own links: granted as claimed.
        let claim = [domicile_node::store::Release { link, generation: 1 }];
        let registered = store.register(&de, &[(id, link)], SubjectId::from_bytes(raw), 0, &claim, None).await.unwrap();
        subjects.push(format!("eu-central/{}", registered.subject));
        if n >= 100_000 && i % 100_000 == 0 && i > 0 {
            eprintln!("  loaded {i} subjects ({:.0}/s)", i as f64 / started.elapsed().as_secs_f64());
        }
    }
    store.flush().await.unwrap();
    let ownership =
        Arc::new(domicile_node::ownership::Ownership::single_region(region.clone(), Arc::clone(&store)).unwrap());
    let service = Arc::new(NodeService::new(region, Arc::clone(&store), packs(), key, ownership).await.unwrap());
    Fixture { service, store, subjects, _dir: dir }
}

fn subject_key(subject_ref: &str) -> Option<common::SubjectKey> {
    Some(common::SubjectKey { key: Some(common::subject_key::Key::SubjectRef(subject_ref.to_owned())) })
}

async fn durable_writes(fixture: &Fixture, writers: usize, secs: u64) -> (f64, Histogram<u64>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let service = Arc::clone(&fixture.service);
        let subjects = fixture.subjects.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).unwrap();
            let mut i = w;
            while Instant::now() < deadline {
                let subject = &subjects[i % subjects.len()];
                let action = if i % 2 == 0 { common::ConsentAction::Grant } else { common::ConsentAction::Withdraw };
                let t = Instant::now();
                service
                    .record_consent(Request::new(pb::RecordConsentRequest {
                        subject: subject_key(subject),
                        purpose: "marketing".into(),
                        channels: vec!["email".into()],
                        action: action as i32,
                        ..Default::default()
                    }))
                    .await
                    .unwrap();
                hist.record(t.elapsed().as_micros() as u64).unwrap();
                i += writers;
            }
            hist
        }));
    }
    let start = Instant::now();
    let mut total = Histogram::<u64>::new(3).unwrap();
    for task in tasks {
        total.add(task.await.unwrap()).unwrap();
    }
    (total.len() as f64 / start.elapsed().as_secs_f64(), total)
}

async fn decisions(fixture: &Fixture, count: usize) -> Histogram<u64> {
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let n = fixture.subjects.len();
    // A cheap deterministic spread over the key space (no rand dependency).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let subject = &fixture.subjects[(x as usize) % n];
        let t = Instant::now();
        let reply = fixture
            .service
            .decide(Request::new(pb::DecideRequest {
                subject: subject_key(subject),
                purpose: "marketing".into(),
                channel: "email".into(),
                at: None,
                ..Default::default()
            }))
            .await
            .unwrap();
        hist.record(t.elapsed().as_nanos() as u64).unwrap();
        assert!(reply.into_inner().decision.is_some());
    }
    hist
}

/// `DecideBatch` calls of 1,000 items from `callers` concurrent callers for `secs`.
async fn batch_decisions(fixture: &Fixture, callers: usize, secs: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..callers {
        let service = Arc::clone(&fixture.service);
        let subjects = fixture.subjects.clone();
        tasks.push(tokio::spawn(async move {
            let mut decided = 0usize;
            let mut next = c * 7919;
            while Instant::now() < deadline {
                let items = (0..1000)
                    .map(|i| {
                        next = next.wrapping_add(104_729);
                        pb::DecideItem {
                            id: i,
                            subject: subject_key(&subjects[next % subjects.len()]),
                            purpose: "marketing".into(),
                            channel: "email".into(),
                            ..Default::default()
                        }
                    })
                    .collect();
                // As the server does: read the request in place, encode the outcomes as sent.
                let wire = pb::DecideBatchRequest { items, at: None }.encode_to_vec();
                let raw = RawDecideBatchRequest::decode(wire.as_slice()).unwrap();
                let reply = service.decide_batch_encoded(raw).await.unwrap();
                if decided == 0 {
                    let outcomes = pb::DecideBatchResponse::decode(reply.as_bytes()).unwrap().outcomes;
                    assert!(outcomes.iter().all(|o| matches!(o.result, Some(pb::decide_outcome::Result::Decision(_)))));
                }
                decided += 1000;
            }
            decided
        }));
    }
    let start = Instant::now();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let subjects = env_usize("BENCH_SUBJECTS", 1_000_000);
    let secs = env_usize("BENCH_SECS", 5) as u64;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();

    // BENCH_ONLY=decide skips the write figures (e.g. to profile decisions under callgrind).
    let writes = std::env::var("BENCH_ONLY").map_or(true, |only| only != "decide");
    println!("== durable consent writes (record_consent → sled flush + audit fsync before the reply)");
    let small = rt.block_on(fixture(if writes { 10_000 } else { 10 }));
    for writers in [1, 16, 64, 256].into_iter().filter(|_| writes) {
        let before = small.service.commit_stats();
        let (rate, hist) = rt.block_on(durable_writes(&small, writers, secs));
        let after = small.service.commit_stats();
        let flushes = after.flushes - before.flushes;
        println!(
            "writers {writers:>4}: {rate:>9.0} writes/s   latency p50 {:>6} µs  p99 {:>6} µs  max {:>6} µs   {:.1} writes/flush, flush {:.2} ms",
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.99),
            hist.max(),
            (after.commits - before.commits) as f64 / flushes.max(1) as f64,
            (after.flush_micros - before.flush_micros) as f64 / flushes.max(1) as f64 / 1000.0,
        );
    }
    drop(small);

    println!("== node-side decisions with {subjects} subjects stored (one caller, sequential)");
    let t = Instant::now();
    let big = rt.block_on(fixture(subjects));
    println!("loaded {subjects} subjects in {:.1} s", t.elapsed().as_secs_f64());
    for callers in [1, 2] {
        let rate = rt.block_on(batch_decisions(&big, callers, secs));
        println!("decide batch (1,000 items per call), {callers} caller(s): {rate:.0} decisions/s");
    }
    let (stored, links) = rt.block_on(big.store.counts()).unwrap();
    assert_eq!(stored as usize, subjects);
    assert_eq!(links as usize, subjects);
    let _warm = rt.block_on(decisions(&big, 20_000));
    let hist = rt.block_on(decisions(&big, 200_000));
    println!(
        "decide: p50 {:.1} µs  p90 {:.1} µs  p99 {:.1} µs  max {:.1} µs  ({} decisions)",
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.9) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
        hist.len()
    );
}
