//! `domicile audit verify --database-url`: a PostgreSQL region's audit chain, checked offline as a
//! file is, on a real server: it verifies as written; an edited line, a deleted row or a swapped
//! pair is found and named; a wrong password is an error, never "ok".

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, reason = "test")]

use std::process::Command;

use domicile_node::store::pg_store::{PgConfig, PgStore};
use domicile_node::store::{Evidence, NewConsent, Release};
use domicile_runtime::postgres::LocalPostgres;
use domicile_types::{
    Channel, ConsentState, IdentifierKind, Jurisdiction, LinkKey, NormalizedIdentifier, Purpose, RegionId, SubjectId,
};

const BIN: &str = env!("CARGO_BIN_EXE_domicile");

fn verify(server: &LocalPostgres, password_file: &std::path::Path) -> (i32, serde_json::Value) {
    let out = Command::new(BIN)
        .args(["audit", "verify", "--json", "--database-url", &server.url("region"), "--password-file"])
        .arg(password_file)
        .output()
        .unwrap();
    let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!("not JSON: {} / {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code().unwrap(), value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_chain_verifies_and_any_edit_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LocalPostgres::reachable_dir(tmp.path(), "pg").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server =
        LocalPostgres::start(&dir, port).expect("PostgreSQL starts (apt-get install postgresql)").remove_on_drop();
    server.create_database("region").unwrap();
    let config = PgConfig {
        url: server.url("region"),
        password_file: Some(server.password_file()),
        password_env: None,
        pool_size: 4,
        kek_file: tmp.path().join("kek"),
        tls_ca_file: None,
    };
    let store = PgStore::open(&config, &RegionId::parse("eu-central").unwrap()).await.unwrap();
    let de = Jurisdiction::parse("DE").unwrap();
    for i in 0..20u8 {
        let id = NormalizedIdentifier::normalize(IdentifierKind::Email, &format!("p{i}@example.de")).unwrap();
        let link = LinkKey::from_bytes(&[5; 32]).unwrap().link(&id);
        let claim = [Release { link, generation: 1 }];
        let subject =
            store.register(&de, &[(id, link)], SubjectId::from_bytes([i; 16]), 1, &claim, None).await.unwrap().subject;
        let consent = NewConsent {
            purpose: Purpose::Marketing,
            channels: vec![Channel::Email],
            state: ConsentState::Granted,
            captured_at: 2,
            recorded_at: 2,
            counted_at_ms: 2000,
            expires_at: None,
            evidence: Evidence::default(),
        };
        store.append_consent(&subject, consent, None).await.unwrap();
    }
    let password = server.password_file();

    let (code, report) = verify(&server, &password);
    assert_eq!((code, report["status"].as_str(), report["entries"].as_u64()), (0, Some("ok"), Some(40)), "{report}");

    // A wrong password: an error, not a verified log.
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "not-it\n").unwrap();
    let (code, report) = verify(&server, &wrong);
    assert_eq!((code, report["status"].as_str()), (2, Some("error")), "{report}");

    // An edited line.
    server.psql("region", "UPDATE audit SET line = replace(line, 'granted', 'withdrawn') WHERE seq = 12").unwrap();
    let (code, report) = verify(&server, &password);
    assert_eq!((code, report["status"].as_str(), report["seq"].as_u64()), (1, Some("tampered"), Some(12)), "{report}");
    server.psql("region", "UPDATE audit SET line = replace(line, 'withdrawn', 'granted') WHERE seq = 12").unwrap();
    assert_eq!(verify(&server, &password).0, 0, "restored");

    // A deleted row: a gap in the chain.
    server.psql("region", "DELETE FROM audit WHERE seq = 30").unwrap();
    let (code, report) = verify(&server, &password);
    assert_eq!((code, report["status"].as_str(), report["seq"].as_u64()), (1, Some("tampered"), Some(31)), "{report}");
}
