//! The PostgreSQL store on a real server started from the installed binaries (never a mock):
//! every capability as the embedded store has it, and one truth across two stores (two node
//! replicas) over one database: a withdrawal written through one is what the other reads next,
//! concurrent writers keep one event order and one audit chain, and a schema newer than the build
//! or a database of another region is refused. The import index: imported entries are found by
//! their source event through merge, unmerge and erasure, a repeat is refused inside the write
//! (however long ago its idempotency record went), entries of an older binary are found and then
//! classified, and a lookup reads the index, not the ledger. Decisions read through a replica's
//! cache are stored only if no write has since changed what they read. A store frozen while the
//! server sends it a large result under the region head holds the other store's writes up for
//! the stall limit, not for as long as it stays frozen.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, reason = "test")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use domicile_node::store::pg_store::{PgConfig, PgStore};
use domicile_node::store::{
    Audited, Change, ConsentRecord, Evidence, ImportEvidence, NewConsent, NewRegistration, Rectification, Release,
    RightsRequestRecord, StoreError,
};
use domicile_runtime::postgres::LocalPostgres;
use domicile_types::{
    Channel, ConsentState, IdentifierKind, Jurisdiction, Link, LinkKey, NormalizedIdentifier, Purpose, RegionId,
    SubjectId,
};

struct Db {
    server: LocalPostgres,
    _tmp: tempfile::TempDir,
    kek: std::path::PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start() -> Db {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LocalPostgres::reachable_dir(tmp.path(), "pg").unwrap();
    let server = LocalPostgres::start(&dir, free_port())
        .expect("PostgreSQL starts (apt-get install postgresql)")
        .remove_on_drop();
    let kek = tmp.path().join("kek");
    Db { server, _tmp: tmp, kek }
}

impl Db {
    fn config(&self, db: &str) -> PgConfig {
        self.server.create_database(db).unwrap();
        PgConfig {
            url: self.server.url(db),
            password_file: Some(self.server.password_file()),
            password_env: None,
            pool_size: 8,
            kek_file: self.kek.clone(),
            tls_ca_file: None,
        }
    }
}

fn region() -> RegionId {
    RegionId::parse("eu-central").unwrap()
}

fn ident(value: &str) -> (NormalizedIdentifier, Link) {
    let id = NormalizedIdentifier::normalize(IdentifierKind::Email, value).unwrap();
    let link = LinkKey::from_bytes(&[9; 32]).unwrap().link(&id);
    (id, link)
}

fn claims(identifiers: &[(NormalizedIdentifier, Link)]) -> Vec<Release> {
    identifiers.iter().map(|(_, link)| Release { link: *link, generation: 1 }).collect()
}

fn consent(state: ConsentState, at: i64) -> NewConsent {
    NewConsent {
        purpose: Purpose::Marketing,
        channels: vec![Channel::Email, Channel::Sms],
        state,
        captured_at: at,
        recorded_at: at,
        counted_at_ms: at * 1000,
        expires_at: None,
        evidence: Evidence::default(),
    }
}

fn rights(kind: &str, at: i64) -> RightsRequestRecord {
    RightsRequestRecord {
        request_id: "ab".repeat(16),
        kind: kind.into(),
        received_at: at,
        deadline_at: Some(at + 86_400),
        status: "completed".into(),
        deadline_basis: "test".into(),
        completed_at: Some(at),
        ..Default::default()
    }
}

async fn register(store: &PgStore, email: &str) -> SubjectId {
    let ids = [ident(email)];
    let de = Jurisdiction::parse("DE").unwrap();
    let id = SubjectId::from_bytes(domicile_runtime::process::random_bytes::<16>().unwrap());
    store.register(&de, &ids, id, 1_700_000_000, &claims(&ids), None).await.unwrap().subject
}

/// The audit chain as stored verifies with the offline verifier, and has `entries` entries.
async fn audit_verifies(store: &PgStore) -> u64 {
    let mut text = String::new();
    let mut after = 0;
    loop {
        let page = store.audit_lines(after, 1000).await.unwrap();
        let Some((last, _)) = page.last() else { break };
        after = *last;
        for (_, line) in &page {
            text.push_str(line);
            text.push('\n');
        }
    }
    let report = domicile_audit::verify(text.as_bytes()).expect("the stored chain verifies");
    report.entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_capability_as_the_embedded_store_has_it() {
    let db = start();
    let store = PgStore::open(&db.config("caps"), &region()).await.unwrap();
    let de = Jurisdiction::parse("DE").unwrap();

    // Registration, idempotent per link; a second identifier joins the same subject.
    let anna = ident("anna@example.de");
    let first = SubjectId::from_bytes([1; 16]);
    let registered = store
        .register(&de, std::slice::from_ref(&anna), first, 10, &claims(std::slice::from_ref(&anna)), None)
        .await
        .unwrap();
    assert!(registered.created && registered.subject == first);
    let phone = ident("anna.two@example.de");
    let both = [anna.clone(), phone.clone()];
    let again = store.register(&de, &both, SubjectId::from_bytes([2; 16]), 11, &claims(&both), None).await.unwrap();
    assert_eq!((again.subject, again.created), (first, false));
    assert_eq!(store.subject_by_link(&phone.1).await.unwrap(), Some(first));
    // A free link without a claim: retry; another jurisdiction: refused.
    let bruno = ident("bruno@example.de");
    let retry = store.register(&de, std::slice::from_ref(&bruno), SubjectId::from_bytes([3; 16]), 12, &[], None).await;
    assert!(matches!(retry, Err(StoreError::Retry)), "{retry:?}");
    let fr = Jurisdiction::parse("FR").unwrap();
    let other = store.register(&fr, std::slice::from_ref(&anna), SubjectId::from_bytes([4; 16]), 12, &[], None).await;
    assert!(matches!(other, Err(StoreError::JurisdictionMismatch)), "{other:?}");

    // Consent: ledger, state in force, ordering (a later withdrawal beats an earlier grant
    // arriving after it), history.
    let (granted, _) = store.append_consent(&first, consent(ConsentState::Granted, 100), None).await.unwrap();
    let (withdrawn, _) = store.append_consent(&first, consent(ConsentState::Withdrawn, 200), None).await.unwrap();
    store.append_consent(&first, consent(ConsentState::Granted, 150), None).await.unwrap();
    let (meta, current) =
        store.decision_inputs(&first, Purpose::Marketing, Channel::Email).await.unwrap().expect("subject");
    assert_eq!(meta.jurisdiction, de);
    assert_eq!(current.unwrap().state, ConsentState::Withdrawn);
    let history: Vec<ConsentRecord> = store.consent_history(&first).await.unwrap();
    assert_eq!(history.len(), 3);
    assert!(granted.sequence < withdrawn.sequence);
    assert_eq!(store.consent_in_force(&first).await.unwrap().len(), 2, "email and sms");

    // Restriction and rights requests are kept, sealed; the record opens.
    store.set_restricted(&first, true, &rights("restriction", 300), None).await.unwrap();
    assert!(store.subject_meta(&first).await.unwrap().unwrap().restricted);
    store.append_rights_request(&first, &rights("access", 301)).await.unwrap();
    assert_eq!(store.rights_requests(&first).await.unwrap().len(), 2);
    assert_eq!(store.subject_record(&first).await.unwrap().unwrap().identifiers.len(), 2);

    // Rectification: remove one identifier (its claim queued for release), add another.
    let carla = ident("carla@example.de");
    let change = Rectification { add: vec![carla.clone()], remove: vec![phone.clone()], ..Default::default() };
    let rectified = store
        .rectify(&first, &change, 400, &rights("rectification", 400), &claims(std::slice::from_ref(&carla)), None)
        .await
        .unwrap();
    assert_eq!((rectified.added, rectified.removed), (vec![carla.1], vec![phone.1]));
    assert_eq!(store.subject_by_link(&phone.1).await.unwrap(), None);
    assert!(store.pending_releases(10).await.unwrap().iter().any(|r| r.link == phone.1));

    // Merge: the other subject's consent moves; the more restrictive state in force stays.
    let second = register(&store, "dora@example.de").await;
    store.append_consent(&second, consent(ConsentState::Granted, 500), None).await.unwrap();
    let merged = store.merge(&first, &second, 600, None).await.unwrap();
    assert_eq!(merged.consent_records, 1);
    assert_eq!(store.subject_meta(&second).await.unwrap(), None);
    assert_eq!(store.consent_history(&first).await.unwrap().len(), 4);
    let (_, current) = store.decision_inputs(&first, Purpose::Marketing, Channel::Email).await.unwrap().unwrap();
    assert_eq!(current.unwrap().state, ConsentState::Granted, "the later grant (500) supersedes the withdrawal (200)");

    // Erasure: everything goes in one transaction, the links' claims are queued for release.
    let links_before = store.counts().await.unwrap().1;
    let erased = store.erase(&first, 700, &rights("erasure", 700), None).await.unwrap();
    assert_eq!(erased.consent_records, 4);
    assert_eq!(store.subject_meta(&first).await.unwrap(), None);
    assert_eq!(store.subject_record(&first).await.unwrap(), None);
    assert!(matches!(store.consent_history(&first).await, Err(StoreError::NotFound)));
    assert_eq!(store.counts().await.unwrap().1, links_before - erased.links.len() as u64);

    // Events in order, one per change; the audit chain verifies.
    let events = store.events_page(None, 1000).await.unwrap();
    assert!(events.windows(2).all(|w| w[1].sequence == w[0].sequence + 1), "contiguous sequences");
    assert!(matches!(events.last().unwrap().change, Change::Erased));
    assert_eq!(store.last_event().await.unwrap(), Some(events.last().unwrap().sequence));
    assert!(audit_verifies(&store).await >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_over_one_database_keep_one_truth() {
    let db = start();
    let config = db.config("replicas");
    let a = Arc::new(PgStore::open(&config, &region()).await.unwrap());
    let b = Arc::new(PgStore::open(&config, &region()).await.unwrap());
    let subject = register(&a, "eva@example.de").await;

    // A withdrawal through A is what B reads at once, every time.
    for i in 0..200 {
        let at = 1_700_000_000 + 2 * i;
        a.append_consent(&subject, consent(ConsentState::Granted, at), None).await.unwrap();
        a.append_consent(&subject, consent(ConsentState::Withdrawn, at + 1), None).await.unwrap();
        let (_, current) = b.decision_inputs(&subject, Purpose::Marketing, Channel::Email).await.unwrap().unwrap();
        assert_eq!(current.unwrap().state, ConsentState::Withdrawn, "round {i}: a stale allow on the other replica");
    }

    // Concurrent writers on both: one event order without gaps, one audit chain.
    let mut tasks = Vec::new();
    for (n, store) in [Arc::clone(&a), Arc::clone(&b)].into_iter().enumerate() {
        for t in 0..4 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    let who = register(&store, &format!("writer-{n}-{t}-{i}@example.de")).await;
                    store.append_consent(&who, consent(ConsentState::Granted, 1_800_000_000 + i), None).await.unwrap();
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let events = b.events_page(None, 100_000).await.unwrap();
    assert!(events.windows(2).all(|w| w[1].sequence == w[0].sequence + 1), "no gap, no reorder");
    assert_eq!(events.len(), 1 + 400 + 400, "every change once");
    let entries = audit_verifies(&a).await;
    assert_eq!(entries, 1 + 400 + 400, "every change audited once, one chain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_another_region_or_a_newer_schema_is_refused() {
    let db = start();
    let config = db.config("guarded");
    drop(PgStore::open(&config, &region()).await.unwrap());
    let us = RegionId::parse("us-east").unwrap();
    let refused = PgStore::open(&config, &us).await.expect_err("another region's database");
    assert!(refused.to_string().contains("eu-central"), "{refused}");

    // A migration this build does not know: the schema is newer than the build.
    db.server
        .psql(
            "guarded",
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) VALUES (999, 'future', '2030-01-01T00:00:00Z', '0')",
        )
        .unwrap();
    let refused = PgStore::open(&config, &region()).await.expect_err("a newer schema");
    assert!(refused.to_string().contains("schema"), "{refused}");

    // A password in the URL is refused before connecting.
    let mut leaky = db.config("guarded");
    leaky.url = leaky.url.replace("domicile@", "domicile:secret@");
    let refused = PgStore::open(&leaky, &region()).await.expect_err("a password in the URL");
    assert!(!refused.to_string().contains("secret"), "{refused}");
}

fn imported(state: ConsentState, at: i64, event: &str) -> NewConsent {
    let mut consent = consent(state, at);
    consent.evidence.import = Some(ImportEvidence {
        source_system: "onetrust".into(),
        source_event_id: event.into(),
        mapping_version: "map-1".into(),
        broadcast: false,
    });
    consent
}

fn sources(events: &[&str]) -> Vec<(String, String)> {
    events.iter().map(|e| ("onetrust".to_owned(), (*e).to_owned())).collect()
}

/// Rows of `sql` (one value per line), as psql prints them.
fn psql_lines(db: &Db, name: &str, sql: &str) -> Vec<String> {
    let out = db.server.psql(name, sql).unwrap();
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).filter(|l| !l.is_empty()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_entries_are_found_by_their_source_through_merge_unmerge_and_erasure() {
    let db = start();
    let config = db.config("imports");
    let store = PgStore::open(&config, &region()).await.unwrap();
    let ann = register(&store, "ann@example.de").await;
    let bea = register(&store, "bea.person@example.de").await;
    let at = |r: (ConsentRecord, u64)| r.0.sequence;
    let ann_e1 = at(store.append_consent(&ann, imported(ConsentState::Granted, 100, "e1"), None).await.unwrap());
    let bea_e2 = at(store.append_consent(&bea, imported(ConsentState::Granted, 110, "e2"), None).await.unwrap());
    // The same source event id imported for another subject is that subject's, not ann's.
    let bea_e1 = at(store.append_consent(&bea, imported(ConsentState::Withdrawn, 120, "e1"), None).await.unwrap());
    // A capture (not imported) is not in the index.
    store.append_consent(&ann, consent(ConsentState::Granted, 130), None).await.unwrap();
    store.append_consent(&bea, consent(ConsentState::Granted, 130), None).await.unwrap();
    let found = async |s: &SubjectId, events: &[&str]| store.imported_positions(s, &sources(events)).await.unwrap();
    assert_eq!(found(&ann, &["e1", "e2", "e3"]).await, vec![Some(ann_e1), None, None]);
    assert_eq!(found(&bea, &["e1", "e2"]).await, vec![Some(bea_e1), Some(bea_e2)]);

    // A repeat with no idempotency record (purged after 24 h, or never sent) is refused in the
    // write itself, as is one of two copies written at once (one batch, or two in a row).
    let again = store.append_consent(&ann, imported(ConsentState::Withdrawn, 140, "e1"), None).await;
    assert!(matches!(again, Err(StoreError::Replayed)), "{again:?}");
    let (one, two) = tokio::join!(
        store.append_consent(&bea, imported(ConsentState::Granted, 150, "e4"), None),
        store.append_consent(&bea, imported(ConsentState::Granted, 150, "e4"), None),
    );
    let refused = [&one, &two].iter().filter(|r| matches!(r, Err(StoreError::Replayed))).count();
    assert!(refused == 1 && (one.is_ok() || two.is_ok()), "{one:?} {two:?}");
    let bea_e4 = found(&bea, &["e4"]).await[0].expect("e4 written once");

    // Merged: bea's ledger holds ann's entries at their positions, so they are bea's now.
    store.merge(&bea, &ann, 200, None).await.unwrap();
    assert_eq!(found(&bea, &["e1", "e2"]).await, vec![Some(ann_e1.min(bea_e1)), Some(bea_e2)]);
    assert!(matches!(store.imported_positions(&ann, &sources(&["e1"])).await, Err(StoreError::NotFound)));
    let again = store.append_consent(&bea, imported(ConsentState::Granted, 210, "e1"), None).await;
    assert!(matches!(again, Err(StoreError::Replayed)), "the merged-in entry is bea's: {again:?}");
    // Imported after the merge, through no identifier: the unmerge cannot tell whose it is.
    let both_e3 = at(store.append_consent(&bea, imported(ConsentState::Granted, 210, "e3"), None).await.unwrap());

    // Unmerged: each half finds the entries it took back, and only those.
    let (kept, restored) = (SubjectId::from_bytes([7; 16]), SubjectId::from_bytes([8; 16]));
    store.unmerge(&bea, &ann, &kept, &restored, 300, None).await.unwrap();
    assert_eq!(found(&restored, &["e1", "e2", "e3"]).await, vec![Some(ann_e1), None, Some(both_e3)]);
    let kept_positions = vec![Some(bea_e1), Some(bea_e2), Some(both_e3), Some(bea_e4)];
    assert_eq!(found(&kept, &["e1", "e2", "e3", "e4"]).await, kept_positions);

    // Erased: the half's entries go, digests included; the other half's stay.
    store.erase(&restored, 400, &rights("erasure", 400), None).await.unwrap();
    assert_eq!(found(&kept, &["e1", "e2", "e3", "e4"]).await, kept_positions);
    let rows = psql_lines(&db, "imports", "SELECT count(*) FROM consent WHERE octet_length(import_source) > 0");
    assert_eq!(rows, vec!["4"], "kept's four imported entries, each with its digest");
    let empty = psql_lines(&db, "imports", "SELECT count(*) FROM consent WHERE import_source = ''::bytea");
    assert_eq!(empty, vec!["1"], "bea's capture, now kept's, classified as not imported");

    // Entries of a binary from before the column (NULL, as an older replica still writes them
    // during a rolling upgrade): the writer's check opens them, and a lookup finds them and
    // classifies them as it goes.
    let unclassified = || psql_lines(&db, "imports", "SELECT count(*) FROM consent WHERE import_source IS NULL");
    db.server.psql("imports", "UPDATE consent SET import_source = NULL").unwrap();
    let again = store.append_consent(&kept, imported(ConsentState::Withdrawn, 500, "e2"), None).await;
    assert!(matches!(again, Err(StoreError::Replayed)), "an unclassified entry is checked too: {again:?}");
    assert_eq!(found(&kept, &["e1", "e2", "e3", "e4"]).await, kept_positions);
    assert_eq!(unclassified(), vec!["0"], "classified by the lookup");
    let rows = psql_lines(&db, "imports", "SELECT count(*) FROM consent WHERE octet_length(import_source) > 0");
    assert_eq!(rows, vec!["4"], "classified as they were written");

    // Left unclassified, they are classified by the next start, in the background.
    db.server.psql("imports", "UPDATE consent SET import_source = NULL").unwrap();
    drop(store);
    let store = PgStore::open(&config, &region()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while unclassified() != vec!["0"] {
        assert!(std::time::Instant::now() < deadline, "entries left unclassified");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let rows = psql_lines(&db, "imports", "SELECT count(*) FROM consent WHERE octet_length(import_source) > 0");
    assert_eq!(rows, vec!["4"], "classified as they were written");
    let found = async |s: &SubjectId, events: &[&str]| store.imported_positions(s, &sources(events)).await.unwrap();
    assert_eq!(found(&kept, &["e1", "e2", "e3", "e4"]).await, kept_positions);

    // A lookup is an index read, not a read of the subject's ledger.
    let plan = psql_lines(
        &db,
        "imports",
        "SET enable_seqscan = off; EXPLAIN SELECT import_source, min(position) FROM consent \
         WHERE subject = '\\x07070707070707070707070707070707' AND octet_length(import_source) > 0 \
         AND import_source = ANY(ARRAY['\\x00'::bytea]) GROUP BY import_source",
    )
    .join("\n");
    assert!(plan.contains("consent_import_source"), "{plan}");
}

/// A merge and an unmerge move a subject's whole history under the region head, which every
/// write of the region waits for: its rows go a thousand to a statement, not one round trip each
/// (2,500 entries were 2,500 statements, each restarting the idle limit). Counted from the
/// server's own statement log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_and_an_unmerge_move_a_long_history_in_few_statements() {
    const ENTRIES: usize = 2_500;
    let db = start();
    let config = db.config("moves");
    let store = Arc::new(PgStore::open(&config, &region()).await.unwrap());
    let ann = register(&store, "ann.long@example.de").await;
    let bea = register(&store, "bea.long@example.de").await;
    let mut writes = tokio::task::JoinSet::new();
    for n in 0..ENTRIES {
        let (store, subject) = (store.clone(), if n % 25 == 0 { bea } else { ann });
        let at = 1_700_000_000 + i64::try_from(n).unwrap();
        writes.spawn(async move { store.append_consent(&subject, consent(ConsentState::Granted, at), None).await });
    }
    while let Some(written) = writes.join_next().await {
        written.unwrap().unwrap();
    }
    drop(store);
    // Connections opened from now on log every statement that changes data.
    db.server.psql("moves", "ALTER DATABASE moves SET log_statement = 'mod'").unwrap();
    let store = PgStore::open(&config, &region()).await.unwrap();
    let log = db.server.data_dir().parent().unwrap().join("server.log");
    let length = || usize::try_from(std::fs::metadata(&log).unwrap().len()).unwrap();
    let inserts_since = |from: usize| {
        let text = std::fs::read(&log).unwrap();
        let text = String::from_utf8_lossy(&text[from..]).into_owned();
        text.lines().filter(|l| l.contains("INSERT INTO consent ")).count()
    };

    let mark = length();
    store.merge(&bea, &ann, 1_800_000_000, None).await.unwrap();
    let merged = inserts_since(mark);
    assert!((1..=3).contains(&merged), "a merge inserted {} entries in {merged} statements", ENTRIES * 24 / 25);
    let (kept, restored) = (SubjectId::from_bytes([7; 16]), SubjectId::from_bytes([8; 16]));
    let mark = length();
    store.unmerge(&bea, &ann, &kept, &restored, 1_800_000_100, None).await.unwrap();
    let unmerged = inserts_since(mark);
    assert!((2..=4).contains(&unmerged), "an unmerge inserted {ENTRIES} entries in {unmerged} statements");
    let count = |subject: &SubjectId| {
        psql_lines(&db, "moves", &format!("SELECT count(*) FROM consent WHERE subject = '\\x{}'", hex(subject)))
    };
    assert_eq!(count(&restored), [(ENTRIES * 24 / 25).to_string()], "every entry back with its half");
    assert_eq!(count(&kept), [(ENTRIES / 25).to_string()]);
    audit_verifies(&store).await;
}

fn hex(subject: &SubjectId) -> String {
    subject.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// One decision's audit entry about `subject`, as the node makes it.
fn entry<'a>(subject: SubjectId, pack: &'a domicile_policy::PackRef) -> domicile_audit::DecisionEntry<'a> {
    domicile_audit::DecisionEntry {
        subject,
        purpose: Purpose::Marketing,
        channel: Channel::Email,
        effect: domicile_policy::Effect::Allow,
        reasons: &[],
        pack,
    }
}

/// Decisions' audit entries in the chain once the chainers have moved every waiting one.
async fn chained(db: &Db, name: &str, store: &PgStore) -> u64 {
    for _ in 0..1000 {
        if psql_lines(db, name, "SELECT count(*) FROM decision_entries") == ["0"] {
            return audit_verifies(store).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("decision entries still waiting after 20 s: the chainers did not run");
}

/// A replica reads its cache without catching up first; the statement that stores the
/// decisions' audit entries is what checks them (`pg_store/fresh.rs`). Replica B holds a grant
/// in its cache; A withdraws it; B's decision read at the mark before the withdrawal is not
/// stored (the caller makes it again), one about an untouched subject is, the statement drops the
/// withdrawn subject from B's cache and moves its mark, and rows B can no longer read (pruned
/// past its mark) make every checked decision stale, then `sync_reads` starts B's cache over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_read_from_a_cache_a_write_has_since_changed_is_not_stored() {
    let db = start();
    let config = db.config("checked");
    let a = PgStore::open(&config, &region()).await.unwrap();
    let b = PgStore::open(&config, &region()).await.unwrap();
    let pack = domicile_policy::PackRef { id: "de".into(), version: "test".into() };
    let (eva, otto) = (register(&a, "eva.checked@example.de").await, register(&a, "otto.checked@example.de").await);
    a.append_consent(&eva, consent(ConsentState::Granted, 1_700_000_000), None).await.unwrap();
    let cells = [(eva, Purpose::Marketing, Channel::Email), (otto, Purpose::Marketing, Channel::Email)];
    b.sync_reads().await.unwrap();
    let state = |inputs: &[Option<domicile_node::store::DecisionInputs>]| {
        inputs[0].as_ref().and_then(|(_, current)| current.as_ref().map(|c| c.state))
    };
    assert_eq!(state(&b.decision_inputs_many(&cells).await.unwrap()), Some(ConsentState::Granted));
    let mark = b.read_mark();

    a.append_consent(&eva, consent(ConsentState::Withdrawn, 1_700_000_001), None).await.unwrap();
    let before = chained(&db, "checked", &b).await;
    // The premise: B's cache still holds the grant; only the check stands between it and a
    // stored (hence served) allow.
    assert_eq!(state(&b.decision_inputs_many(&cells).await.unwrap()), Some(ConsentState::Granted));
    let otto_entry = [entry(otto, &pack)];
    assert_eq!(b.audit_decisions_if_current(&otto_entry, &[], 1_700_000_002, mark).await.unwrap(), Audited::Stored);
    let eva_entry = [entry(eva, &pack)];
    assert_eq!(
        b.audit_decisions_if_current(&eva_entry, &[], 1_700_000_002, mark).await.unwrap(),
        Audited::Stale,
        "a decision read before an acknowledged withdrawal is not stored"
    );
    // An answer without a decision (the subject's row was gone, say) rests on what it read too.
    assert_eq!(b.audit_decisions_if_current(&[], &[eva], 1_700_000_002, mark).await.unwrap(), Audited::Stale);
    assert_eq!(b.audit_decisions_if_current(&[], &[otto], 1_700_000_002, mark).await.unwrap(), Audited::Stored);
    assert_eq!(chained(&db, "checked", &b).await, before + 1, "only the current decision is in the chain");
    // The statement dropped what changed and moved the mark: the next read is the withdrawal,
    // and a decision read at the new mark is stored.
    assert!(b.read_mark() > mark);
    assert_eq!(state(&b.decision_inputs_many(&cells).await.unwrap()), Some(ConsentState::Withdrawn));
    assert_eq!(
        b.audit_decisions_if_current(&eva_entry, &[], 1_700_000_003, b.read_mark()).await.unwrap(),
        Audited::Stored
    );
    assert_eq!(chained(&db, "checked", &b).await, before + 2);

    // Rows pruned past B's mark: B cannot tell what changed, so nothing checked is stored, not
    // even about a subject no write touched; unchecked entries still are.
    let mark = b.read_mark();
    a.append_consent(&eva, consent(ConsentState::Granted, 1_700_000_004), None).await.unwrap();
    let before = chained(&db, "checked", &b).await;
    let _ = psql_lines(&db, "checked", "DELETE FROM touched");
    assert_eq!(b.audit_decisions_if_current(&otto_entry, &[], 1_700_000_005, mark).await.unwrap(), Audited::Stale);
    assert_eq!(b.read_mark(), mark, "nothing read, nothing dropped");
    b.audit_decisions(&otto_entry, 1_700_000_005).await.unwrap();
    assert_eq!(chained(&db, "checked", &b).await, before + 1);
    // `sync_reads` finds the gap and starts the cache over: the grant is read again.
    b.sync_reads().await.unwrap();
    assert_eq!(state(&b.decision_inputs_many(&cells).await.unwrap()), Some(ConsentState::Granted));
    assert_eq!(
        b.audit_decisions_if_current(&eva_entry, &[], 1_700_000_006, b.read_mark()).await.unwrap(),
        Audited::Stored
    );
}

/// A relay between a store and the database that stops moving bytes, both ways, once armed and
/// past `after` bytes from the server: the store's host frozen in the middle of reading a result
/// (a VM frozen, a process stopped once its socket buffers are full), the connections left open.
struct Relay {
    port: u16,
    state: Arc<RelayState>,
}

struct RelayState {
    after: usize,
    armed: AtomicBool,
    passed: AtomicUsize,
    frozen: AtomicBool,
}

impl Relay {
    async fn start(server_port: u16, after: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(RelayState {
            after,
            armed: AtomicBool::new(false),
            passed: AtomicUsize::new(0),
            frozen: AtomicBool::new(false),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(("127.0.0.1", server_port)).await.unwrap();
                let ((client_in, client_out), (server_in, server_out)) = (client.into_split(), server.into_split());
                tokio::spawn(relay(client_in, server_out, shared.clone(), false));
                tokio::spawn(relay(server_in, client_out, shared.clone(), true));
            }
        });
        Self { port, state }
    }
}

async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<RelayState>,
    from_server: bool,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if from_server
            && state.armed.load(Ordering::SeqCst)
            && state.passed.fetch_add(n, Ordering::SeqCst) + n > state.after
        {
            state.frozen.store(true, Ordering::SeqCst);
        }
        if state.frozen.load(Ordering::SeqCst) {
            // Frozen: nothing read or sent again; the sockets stay open.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Replica B reaches the database through a relay that freezes while the server sends B the
/// 40 MiB of decision entries its chainer takes under the region head (more than the sockets
/// buffer, so the server waits in `ClientWrite`, where no idle timer runs): the server ends B's
/// transaction after `tcp_user_timeout` (`pg_store/unit.rs`), and A's write goes through once A
/// (its chainer or the write) has chained the whole backlog, which takes this debug build longer
/// than the 2 s idle limit (so it is chained in steps, each inserted as it is made); every
/// decision is in the chain once, and the chain verifies. Without the TCP limit, A waits as long
/// as B stays frozen; chained in one go, A's write is ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_frozen_while_reading_a_large_result_under_the_head_holds_up_writes_for_the_stall_limit() {
    let db = start();
    let config = db.config("frozen");
    let relay = Relay::start(db.server.port(), 1 << 20).await;
    let direct = format!(":{}/", db.server.port());
    let through_relay = PgConfig { url: config.url.replace(&direct, &format!(":{}/", relay.port)), ..config.clone() };
    assert_ne!(through_relay.url, config.url);
    let b = PgStore::open(&through_relay, &region()).await.unwrap();
    let subject = register(&b, "frozen.reader@example.de").await;

    // The head held by a session of the test while B stores 40 MiB of decision entries.
    let mut holder_config: tokio_postgres::Config = config.url.parse().unwrap();
    holder_config.password(std::fs::read_to_string(db.server.password_file()).unwrap().trim());
    let (holder, connection) = holder_config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    holder.batch_execute("BEGIN; SELECT 1 FROM region_head WHERE id = 1 FOR UPDATE").await.unwrap();
    let pack = domicile_policy::PackRef { id: "de".into(), version: "test".into() };
    // Reasons are vocabulary tokens of at most 128 bytes: sixteen make an entry about 2 KiB.
    let reasons: Vec<String> = (0..16).map(|n| format!("r{n}{}", "x".repeat(120))).collect();
    let reasons: Vec<&str> = reasons.iter().map(String::as_str).collect();
    let entries: Vec<_> =
        (0..1000).map(|_| domicile_audit::DecisionEntry { reasons: &reasons, ..entry(subject, &pack) }).collect();
    for n in 0..20 {
        b.audit_decisions(&entries, 1_700_000_000 + n).await.unwrap();
    }
    relay.state.armed.store(true, Ordering::SeqCst);
    holder.batch_execute("COMMIT").await.unwrap();

    // B's chainer takes the head and the backlog; the relay freezes in the middle of it, and
    // B's backend waits to send the rest, holding the head.
    let stuck = "SELECT s.pid FROM pg_stat_activity s JOIN pg_locks l ON l.pid = s.pid \
                 JOIN pg_class c ON c.oid = l.relation \
                 WHERE c.relname = 'region_head' AND l.granted AND s.wait_event = 'ClientWrite'";
    // Only once the relay has frozen: before, a backend sending faster than the relay reads also
    // waits in `ClientWrite` for a moment (seen once dependencies were optimised in tests).
    let seen = Instant::now();
    let pid: i32 = loop {
        if relay.state.frozen.load(Ordering::SeqCst)
            && let Some(row) = holder.query_opt(stuck, &[]).await.unwrap()
        {
            break row.get(0);
        }
        assert!(seen.elapsed() < Duration::from_secs(10), "B's transaction never stuck sending under the head");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let seen = Instant::now();
    while holder.query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid]).await.unwrap().is_some() {
        assert!(seen.elapsed() < Duration::from_secs(5), "B's stuck transaction still there after 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("B's stuck transaction ended after {:?}", seen.elapsed());

    let a = PgStore::open(&config, &region()).await.unwrap();
    let started = Instant::now();
    let written = tokio::time::timeout(
        Duration::from_secs(30),
        a.append_consent(&subject, consent(ConsentState::Granted, 1_700_000_100), None),
    )
    .await;
    let took = started.elapsed();
    assert!(written.is_ok(), "A's write waited 30 s for the frozen store");
    written.unwrap().unwrap();
    assert!(took < Duration::from_secs(20), "A's write waited {took:?}");
    eprintln!("A's write went through after {took:?}");
    // Every waiting decision chained once (B's transaction rolled back), and the chain verifies.
    chained(&db, "frozen", &a).await;
    let decisions = psql_lines(
        &db,
        "frozen",
        "SELECT sum(substring(line from '\"count\":\"([0-9]+)\"')::bigint) FROM audit \
         WHERE line LIKE '%\"kind\":\"decisions\"%'",
    );
    assert_eq!(decisions, ["20000"], "the whole backlog in the chain, once");
}

/// The kinds of the events that name `subject`, in order.
async fn kinds_of(store: &PgStore, subject: &SubjectId) -> Vec<&'static str> {
    let events = store.events_page(None, 100_000).await.unwrap();
    events
        .iter()
        .filter(|e| &e.subject == subject)
        .map(|e| match e.change {
            Change::Registered => "registered",
            Change::Consent { .. } => "consent",
            Change::Erased => "erased",
            Change::LinksRemoved => "links removed",
            Change::Restricted { .. } => "restricted",
        })
        .collect()
}

/// Invariant 6: a retired subject's earlier change events go with it (`retire.rs`), here by an
/// erasure and by a merge. Events an older binary wrote (without their subject), among them the
/// earlier events of a subject it erased, are filled in by the pass a store starts, which removes
/// those; a later erasure finds the older binary's events of its subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_subjects_events_go_with_it_and_an_older_binarys_are_cleaned_up() {
    let db = start();
    let config = db.config("retire");
    let (gone, older, stays) = {
        let store = PgStore::open(&config, &region()).await.unwrap();
        let gone = register(&store, "gone.pg@example.de").await;
        let older = register(&store, "older.pg@example.de").await;
        let stays = register(&store, "stays.pg@example.de").await;
        let alias = register(&store, "alias.pg@example.de").await;
        store.append_consent(&gone, consent(ConsentState::Granted, 100), None).await.unwrap();
        store.append_consent(&older, consent(ConsentState::Granted, 100), None).await.unwrap();
        store.append_consent(&alias, consent(ConsentState::Denied, 100), None).await.unwrap();
        store.merge(&older, &alias, 150, None).await.unwrap();
        assert_eq!(kinds_of(&store, &alias).await, ["erased"], "the merge retired the merged-away half's events");
        psql_lines(&db, "retire", "CREATE TABLE saved AS SELECT sequence, body FROM events");
        store.erase(&gone, 200, &rights("erasure", 200), None).await.unwrap();
        assert_eq!(kinds_of(&store, &gone).await, ["erased"]);
        assert_eq!(kinds_of(&store, &stays).await, ["registered"]);
        // What an older binary's erasure left: the erased subject's earlier events, and no
        // event's subject filled in.
        psql_lines(
            &db,
            "retire",
            "INSERT INTO events (sequence, body) SELECT sequence, body FROM saved \
             WHERE sequence NOT IN (SELECT sequence FROM events); \
             UPDATE events SET subject = NULL; DELETE FROM retired_subjects; DROP TABLE saved",
        );
        assert_eq!(kinds_of(&store, &gone).await, ["registered", "consent", "erased"]);
        (gone, older, stays)
    };
    let store = PgStore::open(&config, &region()).await.unwrap();
    let started = Instant::now();
    while psql_lines(&db, "retire", "SELECT count(*) FROM events WHERE subject IS NULL") != ["0"] {
        assert!(started.elapsed() < Duration::from_secs(30), "the pass fills every event in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(kinds_of(&store, &gone).await, ["erased"], "the pass removed what the older binary kept");
    assert_eq!(kinds_of(&store, &older).await.first(), Some(&"registered"));
    assert_eq!(kinds_of(&store, &stays).await, ["registered"]);
    store.erase(&older, 300, &rights("erasure", 300), None).await.unwrap();
    assert_eq!(kinds_of(&store, &older).await, ["erased"], "events from before the column are found");
    assert_eq!(kinds_of(&store, &stays).await, ["registered"]);
}

/// Registrations written together (`RegisterBatch`): one transaction. An item refused for a
/// link it holds no claim for, named after one it does, writes nothing (neither link is live,
/// its subject does not exist), the items around it are written, and the write's events and
/// audit chain are those of the written items only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_written_together_leave_nothing_of_a_refused_item() {
    let db = start();
    let store = PgStore::open(&db.config("batch"), &region()).await.unwrap();
    let de = Jurisdiction::parse("DE").unwrap();
    let known = register(&store, "known@example.de").await;
    let events_before = store.last_event().await.unwrap().unwrap();
    let audited_before = audit_verifies(&store).await;
    let (first, half, unclaimed, last) =
        (ident("first@example.de"), ident("half@example.de"), ident("unclaimed@example.de"), ident("last@example.de"));
    let item = |identifiers: &[(NormalizedIdentifier, Link)], claimed: Vec<Release>, id: u8| NewRegistration {
        jurisdiction: de.clone(),
        identifiers: identifiers.to_vec(),
        new_subject: SubjectId::from_bytes([id; 16]),
        claimed,
    };
    let items = [
        item(std::slice::from_ref(&first), claims(std::slice::from_ref(&first)), 1),
        // Claimed for `half` only: `unclaimed` refuses the item, `half` must not be left live.
        item(&[half.clone(), unclaimed.clone()], claims(std::slice::from_ref(&half)), 2),
        // Another jurisdiction's subject.
        NewRegistration {
            jurisdiction: Jurisdiction::parse("FR").unwrap(),
            ..item(&[ident("known@example.de")], vec![], 3)
        },
        item(std::slice::from_ref(&last), claims(std::slice::from_ref(&last)), 4),
    ];
    let outcomes = store.register_many(&items, 1_700_000_100).await.unwrap();
    assert_eq!(outcomes.len(), 4);
    assert!(outcomes[0].as_ref().is_ok_and(|r| r.created && r.subject == SubjectId::from_bytes([1; 16])));
    assert!(matches!(outcomes[1], Err(StoreError::Retry)), "{:?}", outcomes[1]);
    assert!(matches!(outcomes[2], Err(StoreError::JurisdictionMismatch)), "{:?}", outcomes[2]);
    assert!(outcomes[3].as_ref().is_ok_and(|r| r.created && r.subject == SubjectId::from_bytes([4; 16])));
    for (link, holder) in [
        (&first.1, Some(SubjectId::from_bytes([1; 16]))),
        (&half.1, None),
        (&unclaimed.1, None),
        (&last.1, Some(SubjectId::from_bytes([4; 16]))),
        (&ident("known@example.de").1, Some(known)),
    ] {
        assert_eq!(store.subject_by_link(link).await.unwrap(), holder);
    }
    assert!(store.subject_meta(&SubjectId::from_bytes([2; 16])).await.unwrap().is_none(), "the refused item's subject");
    // One REGISTERED event and one audit entry per item written.
    let events = store.events_page(Some(events_before), 100).await.unwrap();
    let subjects: Vec<SubjectId> = events.iter().map(|e| e.subject).collect();
    assert_eq!(subjects, [SubjectId::from_bytes([1; 16]), SubjectId::from_bytes([4; 16])]);
    assert_eq!(audit_verifies(&store).await, audited_before + 2);
}

/// A relay that passes everything until a connection's client sends a COMMIT after it sent
/// `INSERT INTO links` (a registration's transaction): the server gets the COMMIT and commits, and
/// its answer is never delivered; both sides of that connection are closed.
async fn commit_cut_relay(server_port: u16) -> (u16, Arc<AtomicBool>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cut = Arc::new(AtomicBool::new(false));
    let shared = Arc::clone(&cut);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(("127.0.0.1", server_port)).await.unwrap();
            let ((mut client_in, mut client_out), (mut server_in, mut server_out)) =
                (client.into_split(), server.into_split());
            // Set once this connection sent its COMMIT: the server's answer is dropped.
            let committing = Arc::new(AtomicBool::new(false));
            let (to_server, cut) = (Arc::clone(&committing), Arc::clone(&shared));
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut linking = false;
                loop {
                    let n = match client_in.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let chunk = &buf[..n];
                    linking |= chunk.windows(17).any(|w| w == b"INSERT INTO links");
                    let commit = linking && chunk.windows(6).any(|w| w == b"COMMIT");
                    if server_out.write_all(chunk).await.is_err() {
                        return;
                    }
                    if commit && !cut.swap(true, Ordering::SeqCst) {
                        to_server.store(true, Ordering::SeqCst);
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match server_in.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if committing.load(Ordering::SeqCst) {
                        // The COMMIT's answer, or what follows it: never delivered.
                        let _ = client_out.shutdown().await;
                        return;
                    }
                    if client_out.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, cut)
}

/// Invariant 9 across a lost commit answer: a registration whose COMMIT reached the server but
/// whose answer did not come back may have made its links live, so the node keeps their claims
/// (an orphan claim is safe; a release would let the arbiter grant the link to another region
/// while this one holds it). The caller is told the outcome is unknown, never that nothing
/// happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_whose_commit_answer_is_lost_keeps_its_claims() {
    use domicile_proto::pb::node::v1 as pb;
    use domicile_proto::pb::node::v1::regional_node_server::RegionalNode as _;
    let db = start();
    let config = db.config("lost");
    let (port, cut) = commit_cut_relay(db.server.port()).await;
    let direct = format!(":{}/", db.server.port());
    let through = PgConfig { url: config.url.replace(&direct, &format!(":{port}/")), ..config.clone() };
    let store = Arc::new(PgStore::open(&through, &region()).await.unwrap());
    let ownership = Arc::new(domicile_node::ownership::Ownership::single_region(region(), Arc::clone(&store)).unwrap());
    let packs = Arc::new(
        domicile_runtime::packs::PackReloader::new(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-packs"),
            None,
        )
        .unwrap(),
    );
    let key = LinkKey::from_bytes(&[9; 32]).unwrap();
    let node = domicile_node::NodeService::new(region(), Arc::clone(&store), packs, key, ownership).await.unwrap();
    let request = pb::RegisterRequest {
        jurisdiction: "DE".into(),
        identifiers: vec![domicile_proto::pb::common::v1::Identifier {
            kind: "email".into(),
            value: "lost.answer@example.de".into(),
        }],
        ..Default::default()
    };
    let status = node.register(tonic::Request::new(request)).await.expect_err("the commit's answer was lost");
    assert!(cut.load(Ordering::SeqCst), "the relay cut a registration's COMMIT");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    // Read past the relay: the server committed; the claim is this region's and stays.
    let reader = PgStore::open(&config, &region()).await.unwrap();
    let link = ident("lost.answer@example.de").1;
    assert!(reader.subject_by_link(&link).await.unwrap().is_some(), "the COMMIT went through");
    let claim = reader.claim(&link).await.unwrap().expect("claimed");
    assert_eq!(claim.region, region());
    assert_eq!(reader.pending_releases(100).await.unwrap(), Vec::new(), "no release queued for a live link");
}
