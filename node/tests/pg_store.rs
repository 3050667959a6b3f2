//! The PostgreSQL store on a real server started from the installed binaries (never a mock):
//! every capability as the embedded store has it, and one truth across two stores (two node
//! replicas) over one database: a withdrawal written through one is what the other reads next,
//! concurrent writers keep one event order and one audit chain, and a schema newer than the build
//! or a database of another region is refused.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, reason = "test")]

use std::sync::Arc;

use domicile_node::store::pg_store::{PgConfig, PgStore};
use domicile_node::store::{
    Change, ConsentRecord, Evidence, NewConsent, Rectification, Release, RightsRequestRecord, StoreError,
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
