//! `domicile audit …`: offline checks of a region's audit log (no node needs to run), kept in a
//! file (`audit.log` of an embedded-store node) or in a PostgreSQL region's `audit` table.

use std::io::{BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use domicile_audit::{VerifyError, VerifyReport, verify, verify_file};

/// Exit status when the log is readable but does not verify.
const EXIT_TAMPERED: u8 = 1;
/// Exit status when the log cannot be read at all.
const EXIT_UNREADABLE: u8 = 2;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify a node's audit log offline: every entry's hash and the chain between them. Exit 1
    /// naming the first tampered entry. Compare the printed head with an externally recorded
    /// head (the node's Info RPC) to also detect a cut tail.
    Verify {
        /// The node's data directory or its `audit.log` file (not with --database-url).
        #[arg(required_unless_present = "database_url", conflicts_with = "database_url")]
        path: Option<PathBuf>,
        /// A PostgreSQL region's database, `postgres://user@host:port/db` (no password in it).
        #[arg(long)]
        database_url: Option<String>,
        /// File whose first line is the database password (else $PGPASSWORD, else none).
        #[arg(long, requires = "database_url")]
        password_file: Option<PathBuf>,
        /// Print the result as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// Lines read from the database per query.
const PAGE: i64 = 10_000;

/// Verifies the chain kept in a PostgreSQL region's `audit` table, streamed in `seq` order
/// through the same verifier as a file. A read that fails part-way is an error, never a shorter
/// log that verifies.
fn verify_database(url: &str, password_file: Option<&Path>) -> Result<VerifyReport, VerifyError> {
    let io = |what: String| VerifyError::Io(std::io::Error::other(what));
    let mut config: tokio_postgres::Config = url.parse().map_err(|_| io("not a PostgreSQL URL".into()))?;
    if config.get_password().is_some() {
        return Err(io("the URL holds a password: give it with --password-file or $PGPASSWORD".into()));
    }
    let password = match password_file {
        Some(file) => Some(std::fs::read_to_string(file)?.lines().next().unwrap_or_default().to_owned()),
        None => std::env::var("PGPASSWORD").ok(),
    };
    if let Some(password) = password {
        config.password(password);
    }
    let (reader, mut writer) = std::io::pipe()?;
    let fetch = std::thread::spawn(move || -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let (client, connection) =
                config.connect(tokio_postgres::NoTls).await.map_err(|e| format!("cannot connect: {e}"))?;
            tokio::spawn(connection);
            let mut after: i64 = 0;
            loop {
                let rows = client
                    .query("SELECT seq, line FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2", &[&after, &PAGE])
                    .await
                    .map_err(|e| format!("cannot read the audit table: {e}"))?;
                let Some(last) = rows.last() else { return Ok(()) };
                after = last.get(0);
                for row in &rows {
                    let line: &str = row.get(1);
                    // The verifier stops reading at the first bad entry: a closed pipe then.
                    if writer.write_all(line.as_bytes()).and_then(|()| writer.write_all(b"\n")).is_err() {
                        return Ok(());
                    }
                }
            }
        })
    });
    let report = verify(BufReader::new(reader));
    match fetch.join() {
        Ok(Ok(())) => report,
        Ok(Err(e)) => Err(report.err().filter(|r| matches!(r, VerifyError::Tampered(_))).unwrap_or(io(e))),
        Err(_) => Err(io("the database reader failed".into())),
    }
}

pub fn run(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Verify { path, database_url, password_file, json } => {
            let (what, result) = match (&path, &database_url) {
                (Some(path), _) => (path.display().to_string(), verify_file(path)),
                (None, Some(url)) => {
                    ("the database's audit table".to_owned(), verify_database(url, password_file.as_deref()))
                }
                (None, None) => ("nothing".to_owned(), Err(VerifyError::Io(std::io::Error::other("no log named")))),
            };
            let (code, stdout, stderr) = render(&what, &result, json);
            if let Some(text) = stdout {
                println!("{text}");
            }
            if let Some(text) = stderr {
                eprintln!("{text}");
            }
            ExitCode::from(code)
        }
    }
}

/// Exit code, stdout and stderr for a verification result; separate from printing so it is tested.
fn render(what: &str, result: &Result<VerifyReport, VerifyError>, json: bool) -> (u8, Option<String>, Option<String>) {
    match result {
        Ok(report) => {
            let warning = report.torn_tail.map(|t| {
                format!(
                    "warning: line {} is an incomplete entry ({} bytes, a write interrupted by a crash); \
                     the node drops it on start",
                    t.line, t.bytes
                )
            });
            if json {
                let value = serde_json::json!({
                    "status": "ok",
                    "entries": report.entries,
                    "head_seq": report.head_seq,
                    "head_hash": report.head_hash,
                    "region": report.region,
                    "torn_tail_line": report.torn_tail.map(|t| t.line),
                });
                (0, Some(value.to_string()), warning)
            } else {
                let text = format!("audit log ok: {} entries, head {}", report.entries, report.head_hash);
                (0, Some(text), warning)
            }
        }
        Err(VerifyError::Tampered(t)) => {
            if json {
                let value = serde_json::json!({
                    "status": "tampered",
                    "seq": t.seq,
                    "line": t.line,
                    "reason": t.reason.to_string(),
                });
                (EXIT_TAMPERED, Some(value.to_string()), None)
            } else {
                let at = match t.seq {
                    Some(seq) => format!("entry seq {seq} (line {})", t.line),
                    None => format!("line {}", t.line),
                };
                (EXIT_TAMPERED, Some(format!("audit log TAMPERED at {at}: {}", t.reason)), None)
            }
        }
        Err(VerifyError::Io(e)) => {
            let message = format!("cannot read audit log {what}: {e}");
            if json {
                let value = serde_json::json!({ "status": "error", "error": message });
                (EXIT_UNREADABLE, Some(value.to_string()), None)
            } else {
                (EXIT_UNREADABLE, None, Some(format!("error: {message}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use domicile_audit::{AuditEvent, AuditLog};
    use domicile_types::{Channel, ConsentState, Purpose, RegionId};

    use super::*;

    fn log_with(n: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), &RegionId::parse("eu-central").unwrap()).unwrap();
        for sequence in 0..n {
            let event = AuditEvent::Consent {
                purpose: Purpose::Survey,
                channels: vec![Channel::Email],
                state: ConsentState::Granted,
                sequence,
            };
            log.append(event, None, 1_700_000_000).unwrap();
        }
        log.sync().unwrap();
        dir
    }

    fn verify(path: &Path, json: bool) -> (u8, Option<String>, Option<String>) {
        render(&path.display().to_string(), &verify_file(path), json)
    }

    #[test]
    fn reports_ok_with_entries_and_head() {
        let dir = log_with(3);
        let head = AuditLog::open(dir.path(), &RegionId::parse("eu-central").unwrap()).unwrap().head();
        let (code, out, err) = verify(dir.path(), false);
        assert_eq!(code, 0);
        assert_eq!(out.unwrap(), format!("audit log ok: 3 entries, head {}", head.hash));
        assert_eq!(err, None);

        let (code, out, _) = verify(&dir.path().join("audit.log"), true);
        assert_eq!(code, 0);
        let value: serde_json::Value = serde_json::from_str(&out.unwrap()).unwrap();
        assert_eq!(value["status"], "ok");
        assert_eq!(value["entries"], 3);
        assert_eq!(value["head_hash"], head.hash.as_str());
        assert_eq!(value["region"], "eu-central");
    }

    #[test]
    fn names_the_tampered_entry_and_exits_1() {
        let dir = log_with(3);
        let path = dir.path().join("audit.log");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines[1] = lines[1].replace("\"state\":\"granted\"", "\"state\":\"withdrawn\"");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();

        let (code, out, _) = verify(dir.path(), false);
        assert_eq!(code, 1);
        assert_eq!(out.unwrap(), "audit log TAMPERED at entry seq 2 (line 2): contents do not match the entry's hash");

        let (code, out, _) = verify(dir.path(), true);
        assert_eq!(code, 1);
        let value: serde_json::Value = serde_json::from_str(&out.unwrap()).unwrap();
        assert_eq!(
            (value["status"].as_str(), value["seq"].as_u64(), value["line"].as_u64()),
            (Some("tampered"), Some(2), Some(2))
        );
    }

    #[test]
    fn warns_about_a_torn_tail_but_passes() {
        let dir = log_with(1);
        let path = dir.path().join("audit.log");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"{\"seq\":2");
        std::fs::write(&path, bytes).unwrap();
        let (code, out, err) = verify(dir.path(), false);
        assert_eq!(code, 0);
        assert!(out.unwrap().starts_with("audit log ok: 1 entries"));
        assert!(err.unwrap().contains("line 2 is an incomplete entry"));
    }

    #[test]
    fn a_missing_log_is_an_error_not_ok() {
        let dir = tempfile::tempdir().unwrap();
        let (code, out, err) = verify(dir.path(), false);
        assert_eq!((code, out), (2, None));
        assert!(err.unwrap().starts_with("error: cannot read audit log"));
    }
}
