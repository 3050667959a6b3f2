//! A PostgreSQL server of this machine's own, from its installed binaries (`initdb`, `pg_ctl`):
//! what `domicile cluster up --store postgres` runs its regions on, and what tests start and
//! stop around themselves (never a mock).
//!
//! The server listens on 127.0.0.1 and on a Unix socket in its data directory, with one role,
//! `domicile`, whose password is generated into `<dir>/password` (mode 0600): TCP connections
//! must give it (SCRAM), so the node's password handling is exercised as in production. PostgreSQL
//! refuses to run as root; run by root, the server runs as the `postgres` user on a data
//! directory that user owns, placed where it can reach it.

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The role every database of the server belongs to.
pub const ROLE: &str = "domicile";

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error(
        "PostgreSQL is not installed here: `initdb` and `pg_ctl` were not found on PATH or under \
         /usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)"
    )]
    NotInstalled,
    #[error("PostgreSQL runs as root only through another user, and user `postgres` does not exist")]
    NoServiceUser,
    #[error("{what} failed ({status}): {stderr}")]
    Command { what: String, status: String, stderr: String },
    #[error("i/o on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PostgresError + '_ {
    move |source| PostgresError::Io { path: path.to_owned(), source }
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: PATH first, then the newest Debian
/// version directory.
pub fn binaries() -> Result<PathBuf, PostgresError> {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file());
    if let Some(dir) = on_path {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or(PostgresError::NotInstalled)
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// One local server: its data directory, port and password.
#[derive(Debug)]
pub struct LocalPostgres {
    /// Holds `data/` (the cluster), `password`, `server.log`.
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// Run through `runuser -u postgres` (this process is root).
    as_postgres: bool,
    /// Stopped when dropped (not for a server another process started and keeps).
    stop_on_drop: bool,
    /// A standby's settings (`primary_conninfo`), kept in the configuration written at start.
    standby_of: Option<String>,
    /// Its directory is removed once it has stopped (a test's throwaway server; root's servers
    /// live outside the test's temporary directory, see [`LocalPostgres::reachable_dir`]).
    remove_on_drop: bool,
}

impl LocalPostgres {
    /// Creates a server in `dir` listening on 127.0.0.1:`port` (initialising it the first time)
    /// and starts it. Run by root, `dir` must be reachable by user `postgres` (see
    /// [`LocalPostgres::reachable_dir`]).
    pub fn start(dir: &Path, port: u16) -> Result<Self, PostgresError> {
        let bin = binaries()?;
        let as_postgres = running_as_root();
        if as_postgres && !Command::new("id").arg("postgres").output().is_ok_and(|o| o.status.success()) {
            return Err(PostgresError::NoServiceUser);
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let server = Self {
            dir: dir.to_owned(),
            bin,
            port,
            as_postgres,
            stop_on_drop: true,
            standby_of: None,
            remove_on_drop: false,
        };
        if !server.data_dir().join("PG_VERSION").is_file() {
            server.init()?;
        }
        server.launch()?;
        Ok(server)
    }

    fn launch(&self) -> Result<(), PostgresError> {
        let server = self;
        server.configure()?;
        if server.data_dir().join("postmaster.pid").is_file() {
            // A server left running by an owner that was killed (its data directory is this
            // owner's alone): stopped, so that it starts with this configuration. Nothing
            // committed is lost by a fast stop.
            let _ = server.stop();
        }
        server.pg_ctl(&["start", "-w", "-t", "60", "-l"], Some(&server.dir.join("server.log")))?;
        Ok(())
    }

    /// A streaming standby of this server in `dir` on `port`, named `name` (its
    /// `application_name`): a base backup over the primary's Unix socket, then started following
    /// the primary. Make it synchronous with [`Self::require_synchronous_standby`].
    pub fn start_standby(&self, dir: &Path, port: u16, name: &str) -> Result<Self, PostgresError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let standby = Self {
            dir: dir.to_owned(),
            bin: self.bin.clone(),
            port,
            as_postgres: self.as_postgres,
            stop_on_drop: true,
            remove_on_drop: false,
            standby_of: Some(format!(
                "host={} port={} user={ROLE} application_name={name}",
                self.data_dir().display(),
                self.port
            )),
        };
        std::fs::copy(self.password_file(), standby.password_file()).map_err(io(dir))?;
        standby.give_to_postgres(dir)?;
        let data = standby.data_dir();
        let socket = self.data_dir();
        let port_arg = self.port.to_string();
        let args: Vec<&OsStr> = vec![
            OsStr::new("-D"),
            data.as_os_str(),
            OsStr::new("-h"),
            socket.as_os_str(),
            OsStr::new("-p"),
            OsStr::new(&port_arg),
            OsStr::new("-U"),
            OsStr::new(ROLE),
            OsStr::new("-X"),
            OsStr::new("stream"),
            OsStr::new("--checkpoint=fast"),
        ];
        self.run("pg_basebackup", &self.tool("pg_basebackup"), &args)?;
        let signal = data.join("standby.signal");
        std::fs::write(&signal, b"").map_err(io(&signal))?;
        standby.give_to_postgres(&signal)?;
        standby.launch()?;
        Ok(standby)
    }

    /// Commits on this server wait until standby `name` has flushed them (synchronous
    /// replication): a commit acknowledged here survives the loss of this server.
    pub fn require_synchronous_standby(&self, name: &str) -> Result<(), PostgresError> {
        self.psql("postgres", &format!("ALTER SYSTEM SET synchronous_standby_names = '{name}'"))?;
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        Ok(())
    }

    /// Promotes this standby to a primary (returns once it accepts writes).
    pub fn promote(&self) -> Result<(), PostgresError> {
        self.pg_ctl(&["promote", "-w", "-t", "60"], None).map(|_| ())
    }

    /// A directory for a server that user `postgres` can reach when this process is root:
    /// `under` itself otherwise. Root's own directories (a test's temp dir, `/root`) are not
    /// reachable, so root gets a fresh directory under the system temp dir, named after `name`.
    pub fn reachable_dir(under: &Path, name: &str) -> Result<PathBuf, PostgresError> {
        if !running_as_root() {
            return Ok(under.join(name));
        }
        let tmp = std::env::temp_dir();
        let dir = tempfile_dir(&tmp, &format!("domicile-{name}-")).map_err(io(&tmp))?;
        Ok(dir)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The generated password of [`ROLE`] (mode 0600).
    pub fn password_file(&self) -> PathBuf {
        self.dir.join("password")
    }

    /// A connection URL for database `db` (no password in it: see [`Self::password_file`]).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{db}", self.port)
    }

    /// Removes the server's directory (data, password, log) once it has stopped when this value
    /// is dropped: a throwaway server leaves nothing behind.
    pub fn remove_on_drop(mut self) -> Self {
        self.remove_on_drop = true;
        self
    }

    /// [`Self::remove_on_drop`] for a server held elsewhere.
    pub fn set_remove_on_drop(&mut self) {
        self.remove_on_drop = true;
    }

    /// Keeps the server running after this value is dropped (a cluster's server, stopped by
    /// `cluster down`).
    pub fn detach(mut self) {
        self.stop_on_drop = false;
    }

    /// Creates database `name` owned by [`ROLE`] unless it exists.
    pub fn create_database(&self, name: &str) -> Result<(), PostgresError> {
        let exists = self.psql("postgres", &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"))?;
        if String::from_utf8_lossy(&exists.stdout).trim() != "1" {
            self.psql("postgres", &format!("CREATE DATABASE \"{name}\" OWNER {ROLE}"))?;
        }
        Ok(())
    }

    /// Runs `sql` in database `db` over the server's Unix socket as [`ROLE`].
    pub fn psql(&self, db: &str, sql: &str) -> Result<Output, PostgresError> {
        let socket = self.data_dir();
        let port = self.port.to_string();
        let args: Vec<&OsStr> = vec![
            OsStr::new("-X"),
            OsStr::new("-A"),
            OsStr::new("-t"),
            OsStr::new("-v"),
            OsStr::new("ON_ERROR_STOP=1"),
            OsStr::new("-h"),
            socket.as_os_str(),
            OsStr::new("-p"),
            OsStr::new(&port),
            OsStr::new("-U"),
            OsStr::new(ROLE),
            OsStr::new("-d"),
            OsStr::new(db),
            OsStr::new("-c"),
            OsStr::new(sql),
        ];
        self.run("psql", &self.tool("psql"), &args)
    }

    /// Stops the server (fast shutdown: sessions are ended, nothing committed is lost).
    pub fn stop(&self) -> Result<(), PostgresError> {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"], None).map(|_| ())
    }

    /// The postmaster's process id while it runs (for tests that kill it).
    pub fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Waits until the server accepts connections again (after a crash, its recovery).
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), PostgresError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.psql("postgres", "SELECT 1") {
                Ok(_) => return Ok(()),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn init(&self) -> Result<(), PostgresError> {
        let password = hex_password()?;
        let password_file = self.password_file();
        write_private(&password_file, password.as_bytes())?;
        // initdb reads the password as the server's user; a copy it can read, removed after.
        let pwfile = self.dir.join("initdb-password");
        write_private(&pwfile, password.as_bytes())?;
        self.give_to_postgres(&self.dir)?;
        self.give_to_postgres(&pwfile)?;
        let data = self.data_dir();
        let pwfile_arg = format!("--pwfile={}", pwfile.display());
        let args: Vec<&OsStr> = vec![
            OsStr::new("-D"),
            data.as_os_str(),
            OsStr::new("-U"),
            OsStr::new(ROLE),
            OsStr::new(&pwfile_arg),
            OsStr::new("--auth-local=trust"),
            OsStr::new("--auth-host=scram-sha-256"),
            OsStr::new("--encoding=UTF8"),
            OsStr::new("--locale=C"),
            OsStr::new("--no-instructions"),
        ];
        let result = self.run("initdb", &self.bin.join("initdb"), &args);
        let _ = std::fs::remove_file(&pwfile);
        result.map(|_| ())
    }

    /// Settings for a local server: loopback TCP on its port, the socket in its data directory
    /// (no system directory needed), durable commits, enough connections for several nodes.
    fn configure(&self) -> Result<(), PostgresError> {
        let conf = self.data_dir().join("postgresql.auto.conf");
        let text = format!(
            "# Written by domicile (runtime/src/postgres.rs) at every start.\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{socket}'\n\
             max_connections = 200\n\
             fsync = on\n\
             synchronous_commit = on\n\
             full_page_writes = on\n\
             log_min_messages = warning\n\
             wal_level = replica\n\
             max_wal_senders = 4\n\
             {standby}",
            port = self.port,
            socket = self.data_dir().display(),
            standby = self.standby_of.as_ref().map(|c| format!("primary_conninfo = '{c}'\n")).unwrap_or_default(),
        );
        std::fs::write(&conf, text).map_err(io(&conf))?;
        self.give_to_postgres(&conf)
    }

    /// A client program of the installation: beside `initdb` and `pg_ctl` (which may be
    /// wrappers of their own, as on Debian), else in the newest Debian version directory, else
    /// on PATH.
    fn tool(&self, name: &str) -> PathBuf {
        if self.bin.join(name).is_file() {
            return self.bin.join(name);
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                let path = entry.path().join("bin").join(name);
                path.is_file().then_some((version, path))
            })
            .collect();
        versions.sort();
        versions.pop().map_or_else(|| PathBuf::from(name), |(_, path)| path)
    }

    fn pg_ctl(&self, args: &[&str], log: Option<&Path>) -> Result<Output, PostgresError> {
        let data = self.data_dir();
        let mut all: Vec<&OsStr> = vec![OsStr::new("-D"), data.as_os_str()];
        all.extend(args.iter().map(OsStr::new));
        if let Some(log) = log {
            all.push(log.as_os_str());
        }
        self.run("pg_ctl", &self.bin.join("pg_ctl"), &all)
    }

    fn run(&self, what: &str, program: &Path, args: &[&OsStr]) -> Result<Output, PostgresError> {
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        // pg_ctl's server inherits these: keep its output out of ours.
        command.args(args).stdin(Stdio::null()).env("LC_ALL", "C");
        let output = command.output().map_err(io(program))?;
        if !output.status.success() {
            return Err(PostgresError::Command {
                what: what.to_owned(),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(output)
    }

    /// Hands `path` to user `postgres` when this process is root (a no-op otherwise).
    fn give_to_postgres(&self, path: &Path) -> Result<(), PostgresError> {
        if !self.as_postgres {
            return Ok(());
        }
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).status().map_err(io(path))?;
        if status.success() {
            Ok(())
        } else {
            Err(PostgresError::Command {
                what: "chown".into(),
                status: status.to_string(),
                stderr: format!("cannot give {} to user postgres", path.display()),
            })
        }
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if self.stop_on_drop
            && self.pid().is_some()
            && let Err(e) = self.stop()
        {
            tracing::warn!(error = %e, "local PostgreSQL did not stop cleanly");
        }
        if self.remove_on_drop && self.stop_on_drop {
            // A server that did not stop (killed, or its postmaster gone) has nothing running
            // on the files any more either way once its processes exit.
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn hex_password() -> Result<String, PostgresError> {
    let bytes = crate::process::random_bytes::<24>().map_err(io(Path::new("/dev/urandom")))?;
    Ok(hex::encode(bytes))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PostgresError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))
}

/// A new directory `<parent>/<prefix><random>`, mode 0755 so the server's user can enter it.
fn tempfile_dir(parent: &Path, prefix: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let suffix = hex::encode(crate::process::random_bytes::<6>()?);
    let dir = parent.join(format!("{prefix}{suffix}"));
    std::fs::create_dir(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}
