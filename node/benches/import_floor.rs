//! What an imported row costs a sled region, against the least sled itself costs for one, in
//! the same run (issue 22's import target; BENCHMARKS.md, "What bounds the two open targets on
//! this machine").
//!
//! - **node**: `ImportConsent` into an in-process `NodeService` over real sled files (no gRPC
//!   transport, subjects named by ref): rows of known subjects, every row a different subject as
//!   in `bench/import.sh`'s second file, a fifth of them withdrawals, calls of 667 rows (what a
//!   gateway forwards to each of three regions of a 2,000-row batch), each durable before the
//!   next is sent.
//! - **floor**: the same rows written straight into sled trees of the same sizes, with nothing
//!   but sled's own work: one transaction per 512 rows (the node's most per write), a flush after
//!   each, values of the sizes the node stored. Every layout reads and overwrites the record in
//!   force and writes each withdrawal's change event and events-index entry, as the store does;
//!   the store's layout (`sled_store/segments.rs`, `ledger.rs`) appends the transaction's ledger
//!   entries in segments of 32 at the end of a tree in position order and rewrites each subject's
//!   directory chunk (its position and source digest appended). Then the layouts compared with
//!   it: the one before segments (an entry per key, appended); the earlier one, two new keys at
//!   random places per row (ledger entry keyed by subject first, import index entry); one new key;
//!   none; and the ledger and index entries appended to per-subject chunks (a lower bound).
//!   No sealing, audit, identity or checks.
//!
//! CPU is the process's (`/proc/self/stat`, every thread, sled's own included, in 10 ms ticks:
//! ±1 tick is ±10 % of the smallest figure), per row.
//! `cargo bench -p domicile-node --bench import_floor` (env: IMPORT_FLOOR_ROWS,
//! IMPORT_FLOOR_SUBJECTS; the defaults, 66,667 rows over 6,667 subjects, are one region's share
//! of `bench/import.sh`'s second file).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "benchmark harness")]

use std::sync::Arc;

use Layout::{Chunked, Keys, Positioned, Segmented};
use domicile_node::NodeService;
use domicile_node::store::{SledStore, Store};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as pb;
use domicile_proto::pb::node::v1::regional_node_server::RegionalNode;
use domicile_types::{IdentifierKind, Jurisdiction, LinkKey, NormalizedIdentifier, RegionId, SubjectId};
use sled::Transactional;
use tonic::Request;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The process's CPU time so far, in µs (user + system, all threads; clock ticks of 10 ms).
fn cpu_micros() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may hold spaces): state is the 3rd field, utime the
    // 14th and stime the 15th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks * 10_000.0
}

/// One pass of `rows` import rows over `subjects` (row n names subject n % subjects).
fn items(pass: usize, rows: usize, subjects: &[String]) -> Vec<pb::ImportConsentItem> {
    (0..rows)
        .map(|n| {
            let subject = &subjects[n % subjects.len()];
            let action = if (n / subjects.len()) % 5 == 4 {
                common::ConsentAction::Withdraw
            } else {
                common::ConsentAction::Grant
            };
            pb::ImportConsentItem {
                id: n as u64,
                subject: Some(common::SubjectKey { key: Some(common::subject_key::Key::SubjectRef(subject.clone())) }),
                purpose: "marketing".into(),
                channels: vec!["email".into()],
                action: action as i32,
                evidence: Some(common::Evidence { source_system: "bench".into(), ..Default::default() }),
                captured_at: Some(domicile_proto::prost_types::Timestamp {
                    seconds: 1_700_000_000 + (pass * rows + n) as i64,
                    nanos: 0,
                }),
                source_system: "bench".into(),
                source_event_id: format!("p{pass}-e{n}"),
                ..Default::default()
            }
        })
        .collect()
}

/// CPU µs per row of one import pass through the node service.
async fn node_pass(service: &NodeService<SledStore>, pass: usize, rows: usize, subjects: &[String]) -> f64 {
    let all = items(pass, rows, subjects);
    let cpu = cpu_micros();
    for call in all.chunks(667) {
        let reply = service
            .import_consent(Request::new(pb::ImportConsentRequest {
                items: call.to_vec(),
                mapping_version: "bench-1".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let accepted = reply
            .outcomes
            .iter()
            .filter(|o| matches!(o.result, Some(pb::import_consent_outcome::Result::Accepted(_))))
            .count();
        assert_eq!(accepted, call.len(), "every row of a new pass is accepted");
    }
    (cpu_micros() - cpu) / rows as f64
}

/// How the floor lays out a row.
#[derive(Clone, Copy)]
enum Layout {
    /// The record in force overwritten in place, plus 0, 1 or 2 new keys per row (the ledger
    /// entry, the import index entry), as the store's trees have them.
    Keys(usize),
    /// The record in force overwritten, the ledger entry and the index entry appended to the
    /// subject's open chunk of `n` entries (read, extended, written back: a new key only when a
    /// chunk fills).
    Chunked(usize),
    /// The layout before segments: the ledger entry keyed position ‖ subject (appended at the
    /// tree's end), the subject's directory chunk of 32 read, extended by position and digest,
    /// written back.
    Positioned,
    /// The store's (`sled_store/segments.rs`): as [`Positioned`], but the ledger entries of a
    /// transaction in segments of `n`, one key per segment at the tree's end.
    Segmented(usize),
}

/// CPU µs per row of a pass of `rows` rows (row n names subject n % subjects) in `layout`, in
/// transactions of 512 rows with a flush after each.
fn floor_pass(
    db: &sled::Db,
    trees: &[sled::Tree; 6],
    pass: usize,
    rows: usize,
    subjects: usize,
    layout: Layout,
    sizes: Sizes,
) -> f64 {
    let ledger_value = vec![0x5a_u8; sizes.ledger];
    let current_value = vec![0xa5_u8; sizes.current];
    let event_value = vec![0x3c_u8; sizes.event];
    let cpu = cpu_micros();
    let position = (pass * rows) as u64;
    for chunk in (0..rows).collect::<Vec<_>>().chunks(512) {
        let [ledger, current, imports, counters, events, event_subjects] = trees;
        (ledger, current, imports, counters, events, event_subjects)
            .transaction(|(ledger, current, imports, counters, events, event_subjects)| {
                for &n in chunk {
                    let subject = subject_bytes(n % subjects);
                    let mut cell = subject.to_vec();
                    cell.extend_from_slice(b"marketing\0email");
                    let _stored = current.get(&cell)?;
                    current.insert(cell, current_value.as_slice())?;
                    let at = position + n as u64;
                    // A withdrawal (a fifth of the rows, as in the node's pass) is announced: its
                    // change event, keyed by sequence, and its entry in the events index.
                    if (n / subjects) % 5 == 4 {
                        events.insert(&at.to_be_bytes()[..], event_value.as_slice())?;
                        let mut key = subject.to_vec();
                        key.extend_from_slice(&at.to_be_bytes());
                        event_subjects.insert(key, &[][..])?;
                    }
                    match layout {
                        Keys(new) => {
                            if new >= 1 {
                                let mut key = subject.to_vec();
                                key.extend_from_slice(&at.to_be_bytes());
                                ledger.insert(key, ledger_value.as_slice())?;
                            }
                            if new >= 2 {
                                let mut key = subject.to_vec();
                                key.extend_from_slice(&digest(pass, n));
                                imports.insert(key, &at.to_be_bytes()[..])?;
                            }
                        }
                        Positioned | Segmented(_) => {
                            if let Positioned = layout {
                                let mut key = at.to_be_bytes().to_vec();
                                key.extend_from_slice(&subject);
                                ledger.insert(key, ledger_value.as_slice())?;
                            }
                            let per_pass = rows / subjects + usize::from(n % subjects < rows % subjects);
                            let ordinal = (pass - 1) * per_pass + n / subjects;
                            let mut chunk_key = subject.to_vec();
                            chunk_key.extend_from_slice(&((ordinal / 32) as u32).to_be_bytes());
                            let mut listing = imports.get(&chunk_key)?.map(|v| v.to_vec()).unwrap_or_default();
                            listing.extend_from_slice(&at.to_be_bytes());
                            listing.push(1);
                            listing.extend_from_slice(&digest(pass, n));
                            imports.insert(chunk_key, listing)?;
                        }
                        Chunked(size) => {
                            // The subject's entries before this one: as many per earlier pass
                            // as in this one (the first `rows % subjects` subjects get one more).
                            let per_pass = rows / subjects + usize::from(n % subjects < rows % subjects);
                            let ordinal = (pass - 1) * per_pass + n / subjects;
                            let mut key = subject.to_vec();
                            key.extend_from_slice(&((ordinal / size) as u32).to_be_bytes());
                            let mut entries = ledger.get(&key)?.map(|v| v.to_vec()).unwrap_or_default();
                            entries.extend_from_slice(&ledger_value);
                            ledger.insert(key.clone(), entries)?;
                            let mut index = imports.get(&key)?.map(|v| v.to_vec()).unwrap_or_default();
                            index.extend_from_slice(&digest(pass, n));
                            index.extend_from_slice(&at.to_be_bytes());
                            imports.insert(key, index)?;
                        }
                    }
                }
                if let Segmented(per) = layout {
                    for group in chunk.chunks(per) {
                        let mut segment = Vec::with_capacity(2 + group.len() * (20 + ledger_value.len()));
                        segment.extend_from_slice(&(group.len() as u16).to_be_bytes());
                        for (slot, &n) in group.iter().enumerate() {
                            segment.extend_from_slice(&subject_bytes(n % subjects));
                            segment.extend_from_slice(&(((slot + 1) * ledger_value.len()) as u32).to_be_bytes());
                        }
                        for _ in group {
                            segment.extend_from_slice(&ledger_value);
                        }
                        ledger.insert(&(position + group[0] as u64).to_be_bytes()[..], segment)?;
                    }
                }
                let last = chunk.last().map_or(0, |&n| n as u64 + 1);
                counters.insert(b"ledger", &(position + last).to_be_bytes()[..])?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .unwrap();
        db.flush().unwrap();
    }
    (cpu_micros() - cpu) / rows as f64
}

/// A subject id as random-looking as a real one (ids are random 16 bytes).
fn subject_bytes(n: usize) -> [u8; 16] {
    let mut x = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD6E8_FEB8_6659_FD93;
    let mut out = [0u8; 16];
    for chunk in out.chunks_mut(8) {
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        chunk.copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn digest(pass: usize, n: usize) -> [u8; 16] {
    subject_bytes(pass.wrapping_mul(1_000_003).wrapping_add(n).wrapping_add(1 << 40))
}

async fn node_fixture(subjects: usize, dir: &std::path::Path) -> (NodeService<SledStore>, Vec<String>) {
    let region = RegionId::parse("eu-central").unwrap();
    let store = Arc::new(SledStore::open(dir, &region).unwrap());
    let key = LinkKey::from_bytes(&[7; 32]).unwrap();
    let de = Jurisdiction::parse("DE").unwrap();
    let mut refs = Vec::with_capacity(subjects);
    for i in 0..subjects {
        let id = NormalizedIdentifier::normalize(IdentifierKind::CrmAccount, &format!("acct-{i}")).unwrap();
        let link = key.link(&id);
        let claim = [domicile_node::store::Release { link, generation: 1 }];
        let subject = SubjectId::from_bytes(subject_bytes(i));
        let registered = store.register(&de, &[(id, link)], subject, 0, &claim, None).await.unwrap();
        refs.push(format!("eu-central/{}", registered.subject));
    }
    store.flush().await.unwrap();
    let ownership =
        Arc::new(domicile_node::ownership::Ownership::single_region(region.clone(), Arc::clone(&store)).unwrap());
    let packs = Arc::new(
        domicile_runtime::packs::PackReloader::new(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-packs"),
            None,
        )
        .unwrap(),
    );
    (NodeService::new(region, store, packs, key, ownership).await.unwrap(), refs)
}

/// The mean sizes of the values the node stored, in bytes: the floor writes values of these sizes.
#[derive(Clone, Copy)]
struct Sizes {
    ledger: usize,
    current: usize,
    event: usize,
}

/// [`Sizes`], read once the node's store is closed (sled's flusher thread lets go of the files
/// shortly after).
fn stored_value_sizes(dir: &std::path::Path) -> Sizes {
    let db = (0..100)
        .find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            domicile_node::store::sled_config(&dir.join("db")).ok()?.open().ok()
        })
        .expect("the node's sled files, once closed");
    let mean = |name: &str| {
        let tree = db.open_tree(name).unwrap();
        let (count, bytes) = tree.iter().values().fold((0usize, 0usize), |(c, b), v| (c + 1, b + v.unwrap().len()));
        assert!(count > 0, "the node stored entries in {name}");
        bytes / count
    };
    // Ledger entries are stored in segments: count (2 bytes), per slot subject and end (20), then
    // the sealed entries.
    let (entries, bytes) = db.open_tree("ledger_segments").unwrap().iter().values().fold((0, 0), |(e, b), v| {
        let v = v.unwrap();
        let count = usize::from(u16::from_be_bytes([v[0], v[1]]));
        (e + count, b + v.len() - 2 - 20 * count)
    });
    assert!(entries > 0, "the node stored ledger segments");
    Sizes { ledger: bytes / entries, current: mean("current"), event: mean("events") }
}

fn main() {
    let rows = env_usize("IMPORT_FLOOR_ROWS", 66_667);
    let subjects = env_usize("IMPORT_FLOOR_SUBJECTS", 6_667);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!("== one region, {rows} rows per pass over {subjects} subjects (every row a different subject in turn)");

    let node_dir = tempfile::tempdir().unwrap();
    let (service, refs) = rt.block_on(node_fixture(subjects, node_dir.path()));
    let first = rt.block_on(node_pass(&service, 1, rows, &refs));
    let node = rt.block_on(node_pass(&service, 2, rows, &refs));
    println!("node ImportConsent: {first:.1} µs CPU per row (first pass), {node:.1} (second, measured)");
    drop(service);
    // The node's background tasks hold its store until their runtime stops.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    let sizes = stored_value_sizes(node_dir.path());
    println!(
        "the node's values: ledger entry {} bytes, record in force {}, change event {} (means)",
        sizes.ledger, sizes.current, sizes.event
    );

    // Each layout on sled files of its own: a first pass as the node had, then the measured one.
    let mut floors = Vec::new();
    for (label, layout) in [
        (
            "the store's layout: ledger in segments of 32 appended in position order, directory chunk rewritten",
            Segmented(32),
        ),
        ("the layout before segments: an entry per key, appended in position order", Positioned),
        ("the earlier layout: ledger entry and index entry, two new keys", Keys(2)),
        ("one new key (the ledger entry)", Keys(1)),
        ("no new key", Keys(0)),
        ("ledger and index entries appended to per-subject chunks of 8", Chunked(8)),
        ("chunks of 32", Chunked(32)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        // The node's segment size, so the floor pays what the store's sled does.
        let db = domicile_node::store::sled_config(dir.path()).unwrap().open().unwrap();
        let trees = ["consent", "current", "imports", "counters", "events", "event_subjects"]
            .map(|name| db.open_tree(name).unwrap());
        floor_pass(&db, &trees, 1, rows, subjects, layout, sizes);
        let floor = floor_pass(&db, &trees, 2, rows, subjects, layout, sizes);
        println!("sled floor, {label}: {floor:.1} µs CPU per row; node / floor {:.2}", node / floor);
        floors.push(floor);
    }
    println!(
        "50,000 rows/s on 2 cores leaves 40 µs of CPU per row for importer, gateway and node together; \
         the store's layout's floor is {:.0} % of it",
        floors[0] / 40.0 * 100.0
    );
}
