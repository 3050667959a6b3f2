//! The local PostgreSQL server tests and `cluster up --store postgres` run on: started from the
//! installed binaries, password-protected over TCP, stopped (and started again on its data).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, reason = "test")]

use std::process::Command;
use std::time::Duration;

use domicile_runtime::postgres::{LocalPostgres, ROLE, binaries};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `psql` over TCP with `password`; its exit status and output.
fn psql_tcp(server: &LocalPostgres, password: &str, sql: &str) -> (bool, String) {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p", &server.port().to_string(), "-U", ROLE, "-d", "regiondb"])
        .args(["-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn a_local_server_starts_guards_tcp_with_its_password_and_keeps_data_across_restarts() {
    if binaries().is_err() {
        panic!("PostgreSQL binaries are needed (Debian: apt-get install postgresql)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = LocalPostgres::reachable_dir(tmp.path(), "pg").unwrap();
    let port = free_port();
    let server = LocalPostgres::start(&dir, port).expect("server starts");
    server.create_database("regiondb").unwrap();
    server.create_database("regiondb").expect("creating an existing database is a no-op");
    let password = std::fs::read_to_string(server.password_file()).unwrap();

    let (ok, _) = psql_tcp(&server, "not-the-password", "SELECT 1");
    assert!(!ok, "a wrong password is refused over TCP");
    let (ok, out) = psql_tcp(&server, &password, "CREATE TABLE t (v int); INSERT INTO t VALUES (7); SELECT v FROM t");
    assert!(ok && out.ends_with('7'), "{out}");

    server.stop().unwrap();
    assert!(server.pid().is_none(), "stopped");
    drop(server);
    let server = LocalPostgres::start(&dir, port).expect("starts again on its data").remove_on_drop();
    server.wait_ready(Duration::from_secs(30)).unwrap();
    let (ok, out) = psql_tcp(&server, &password, "SELECT v FROM t");
    assert!(ok && out == "7", "{out}");
    drop(server);
    assert!(!dir.exists(), "dropping the handle stops the server and removes its throwaway directory");
}
