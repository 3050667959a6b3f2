//! The heads written beside the database after each group commit (`store.head`), and the
//! erasure journal's file: small files whose only job is to make a later loss visible.

use std::path::Path;

use std::sync::Arc;

use super::{SledStore, StoreError, backend};

/// Beside the database: the last change event known flushed. sled recovers its log by stopping
/// at the first record that fails its checksum, so a damaged byte can silently cut every later
/// write; a database whose last event is older than this file names has lost acknowledged
/// writes, and the node refuses it.
pub const STORE_HEAD_FILE: &str = "store.head";

/// Beside the database: the last consent-ledger position known flushed, for the same check as
/// [`STORE_HEAD_FILE`]. Not every ledger entry is a change event (an imported grant without
/// broadcast is none: `store::announced`), so a database cut after a run of such entries still
/// ends at the event `store.head` names; this head sees that it lost them. A file of its own, so
/// a binary from before it (a rollback) still reads `store.head`.
pub const LEDGER_HEAD_FILE: &str = "ledger.head";

/// The event sequence `store.head` in `dir` names (0 without one).
pub fn read_store_head(dir: &Path) -> Result<u64, StoreError> {
    read_head(dir, STORE_HEAD_FILE)
}

/// The ledger position `ledger.head` in `dir` names (0 without one).
pub fn read_ledger_head(dir: &Path) -> Result<u64, StoreError> {
    read_head(dir, LEDGER_HEAD_FILE)
}

fn read_head(dir: &Path, name: &str) -> Result<u64, StoreError> {
    match std::fs::read_to_string(dir.join(name)) {
        // NULs are a first write that never reached the disk (a crash right after it): nothing
        // was recorded, which only weakens the check.
        Ok(text) if text.trim_matches(|c: char| c == '\0' || c.is_whitespace()).is_empty() => Ok(0),
        Ok(text) => text.trim().parse().map_err(|_| StoreError::Corrupt(format!("{name} is damaged"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(backend(e)),
    }
}

/// The consent ledger's last position in `counters` (0 when it has none yet).
pub(super) fn ledger_position(counters: &sled::Tree) -> Result<u64, StoreError> {
    Ok(stored_ledger_position(counters)?.unwrap_or(0))
}

/// The consent ledger's last position in `counters`, if it has one: under
/// [`super::LEDGER_POSITION`], or, in a store no node of the segmented ledger has opened yet,
/// under the key earlier versions kept it at ([`EARLIER_LEDGER_POSITION`]).
pub(super) fn stored_ledger_position(counters: &sled::Tree) -> Result<Option<u64>, StoreError> {
    let stored = match counters.get(super::LEDGER_POSITION).map_err(backend)? {
        Some(bytes) => Some(bytes),
        None => counters.get(EARLIER_LEDGER_POSITION.0).map_err(backend)?,
    };
    stored
        .map(|bytes| <[u8; 8]>::try_from(bytes.as_ref()).map(u64::from_be_bytes))
        .transpose()
        .map_err(|_| StoreError::Corrupt("ledger counter".into()))
}

/// `counters` key where earlier versions kept the ledger's last position, and the value that
/// replaces it once a node of the segmented ledger (`segments.rs`) has opened the store: those
/// versions read the key at every open and refuse a value that is not 8 bytes, so they do not
/// run on a ledger whose segments they cannot read. Going back means restoring a backup taken
/// before the upgrade.
pub(super) const EARLIER_LEDGER_POSITION: (&[u8], &[u8]) = (b"consent_ledger", b"segmented: see ledger_position");

/// What a database that lost its end is missing, by its heads: `None` when it holds everything
/// they say was flushed.
pub(super) fn lost(dir: &Path, events: &sled::Tree, counters: &sled::Tree) -> Result<Option<String>, StoreError> {
    let (flushed, last) = (read_store_head(dir)?, last_event(events)?);
    if last < flushed {
        return Ok(Some(format!(
            "the last change event is {last}, but event {flushed} was flushed ({STORE_HEAD_FILE})"
        )));
    }
    let (flushed, last) = (read_ledger_head(dir)?, ledger_position(counters)?);
    if last < flushed {
        return Ok(Some(format!(
            "the consent ledger ends at position {last}, but position {flushed} was flushed ({LEDGER_HEAD_FILE})"
        )));
    }
    Ok(None)
}

/// The last change event's sequence in `events` (0 when empty).
pub(super) fn last_event(events: &sled::Tree) -> Result<u64, StoreError> {
    match events.last().map_err(backend)? {
        None => Ok(0),
        Some((key, _)) => {
            let bytes = <[u8; 8]>::try_from(key.as_ref()).map_err(|_| StoreError::Corrupt("event key".into()))?;
            Ok(u64::from_be_bytes(bytes))
        }
    }
}

/// A name part no other staged backup of this process has.
pub(crate) fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{}-{n}", std::process::id(), now_ms())
}

fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// sled's log segment (and IO buffer) size for a new database: 2 MiB, four times sled's default.
/// sled writes a log item larger than a quarter of a segment to a file of its own (a "blob":
/// created, written, deleted once its segment is cleaned), and a leaf of `ledger_segments` holds
/// up to 17 values of 32 entries (about 14 KB each), so with 512 KiB segments most rewrites of a
/// full leaf became a new file. Under an import of known subjects a region created about 230 a
/// second, and ext4's inode allocation for them (scanning past the ones deleted just before) took
/// a fifth of the machine's kernel time (BENCHMARKS.md, "sled segments of 2 MiB").
pub const SEGMENT_SIZE: usize = 2 << 20;

/// sled's configuration for the database at `path`: the segment size it was created with, which
/// sled refuses to open it with any other (a database written before [`SEGMENT_SIZE`] has sled's
/// default, 512 KiB), or [`SEGMENT_SIZE`] for a new one. Every opener of a region's database
/// (the node, `node check`, a restore, tests) goes through here.
///
/// A database with data but no readable `conf` is refused, not opened with a guess: sled would
/// write a `conf` of the guessed size and read its log with the wrong segment boundaries, which
/// can cut the log where it thinks a segment ends, and the node would then destroy the keys of
/// every subject the cut log no longer holds.
pub fn sled_config(path: &Path) -> Result<sled::Config, StoreError> {
    let config = sled::Config::new().path(path);
    let conf = path.join("conf");
    // sled's own file: "segment_size: N" on its first line, a CRC after the last; sled treats a
    // file of 8 bytes or fewer as absent and writes its own.
    let stored = match std::fs::read(&conf) {
        Ok(bytes) if bytes.len() > 8 => Some(bytes),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(backend(e)),
    };
    let Some(bytes) = stored else {
        // New only if sled never wrote its log here (a first open cut short may leave it empty).
        return match std::fs::metadata(path.join("db")) {
            Ok(db) if db.len() > 0 => Err(StoreError::Corrupt(format!(
                "{}: missing or empty while the database holds data; restore it (its first line is \
                 `segment_size: 524288` for a database created before 2026-12-07, evening) or restore a backup",
                conf.display()
            ))),
            Ok(_) => Ok(config.segment_size(SEGMENT_SIZE)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(config.segment_size(SEGMENT_SIZE)),
            Err(e) => Err(backend(e)),
        };
    };
    let size = std::str::from_utf8(&bytes[..bytes.len() - 4])
        .ok()
        .and_then(|text| text.lines().find_map(|line| line.strip_prefix("segment_size: ")))
        .and_then(|size| size.trim().parse::<usize>().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("{}: sled's segment size", conf.display())))?;
    Ok(config.segment_size(size))
}

/// Makes sled's `conf` durable: sled writes it at a database's first open without a sync, and a
/// database whose `conf` is lost is refused ([`sled_config`]).
fn sync_conf(path: &Path) -> Result<(), StoreError> {
    std::fs::File::open(path.join("conf")).and_then(|f| f.sync_all()).map_err(backend)?;
    std::fs::File::open(path).and_then(|d| d.sync_all()).map_err(backend)
}

/// Opens the database, waiting up to 2 s for its file lock: a store of this process dropped just
/// before (a reopen, a restore) frees it only once sled's flusher thread stopped (`Other` IO error).
pub(super) fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    let mut waited = std::time::Duration::ZERO;
    loop {
        match sled_config(path)?.open() {
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && waited < std::time::Duration::from_secs(2) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
                waited += std::time::Duration::from_millis(20);
            }
            Ok(db) => {
                sync_conf(path)?;
                return Ok(db);
            }
            Err(e) => return Err(backend(e)),
        }
    }
}

pub(super) fn open_journal(path: &Path) -> Result<std::fs::File, StoreError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| backend(format!("erasure journal {}: {e}", path.display())))
}

/// A head file and the value last written to it.
pub(super) type Head = std::sync::Mutex<(std::fs::File, u64)>;

/// At open: removes backups a stopped process staged and never streamed, refuses a database
/// that lost change events or ledger entries its heads say were flushed, and opens the heads
/// (`store.head`, `ledger.head`).
pub(super) fn open_checked(dir: &Path, events: &sled::Tree, counters: &sled::Tree) -> Result<(Head, Head), StoreError> {
    for entry in std::fs::read_dir(dir).map_err(backend)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("backup-staging-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    if let Some(lost) = lost(dir, events, counters)? {
        return Err(StoreError::Corrupt(format!(
            "{}: {lost}: it lost acknowledged writes (damaged or replaced files); restore the region from a backup",
            dir.join("db").display()
        )));
    }
    let open = |name: &str, value: u64| -> Result<Head, StoreError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(name))
            .map_err(backend)?;
        Ok(std::sync::Mutex::new((file, value)))
    };
    Ok((open(STORE_HEAD_FILE, read_store_head(dir)?)?, open(LEDGER_HEAD_FILE, read_ledger_head(dir)?)?))
}

/// Writes `value` to `head` if newer. Not synced: it only ever names durable writes, so losing
/// it weakens the check and never fools it; a failure is logged, not returned.
fn record(head: &Head, value: u64) {
    let mut head = head.lock().unwrap_or_else(|p| p.into_inner());
    if value <= head.1 {
        return;
    }
    let line = format!("{value:020}\n");
    match std::os::unix::fs::FileExt::write_all_at(&head.0, line.as_bytes(), 0) {
        Ok(()) => head.1 = value,
        Err(e) => tracing::warn!(error = %e, "cannot record a flushed store head"),
    }
}

impl SledStore {
    /// Keeps the erasure journal at `path` instead of the data directory (a disk that outlives
    /// this machine's: deploy/README.md, "Backup and restore of a node").
    pub fn with_erasure_journal(self, path: &Path) -> Result<Self, StoreError> {
        *self.journal.lock().unwrap_or_else(|p| p.into_inner()) = open_journal(path)?;
        Ok(self)
    }

    /// Records the last event and ledger position a flush covered in the heads.
    pub(super) fn record_flushed(&self, event: u64, ledger: u64) {
        record(&self.head, event);
        record(&self.ledger_head, ledger);
    }
    /// The group commit's flush (`Store::flush`): keys, database and audit log, then the heads.
    pub(super) async fn flush_files(&self) -> Result<(), StoreError> {
        let flushed = async {
            // Keys first: a sealed record must never be durable without the key that opens it.
            self.vault.sync()?;
            // What this flush covers at least: every event and ledger entry committed before it
            // starts.
            let covered = (last_event(&self.events)?, ledger_position(&self.counters)?);
            // The audit log's fsync beside the database's: one wait for both.
            let audit = Arc::clone(&self.audit);
            let synced = tokio::task::spawn_blocking(move || audit.sync());
            self.db.flush_async().await.map_err(backend)?;
            match synced.await {
                Ok(result) => result.map_err(StoreError::Audit)?,
                Err(e) => return Err(backend(e)),
            }
            self.record_flushed(covered.0, covered.1);
            // A retired subject's earlier events go once its `ERASED` is durable (`retire.rs`).
            // The flush itself succeeded: a failure here leaves the marks for the next one.
            if let Err(e) = self.after_flush(covered.0) {
                tracing::warn!(error = %e, "removing retired subjects' change events failed; retried at the next flush");
            }
            Ok(())
        }
        .await;
        if let Err(e) = &flushed {
            // Out of space at the flush: later writes are refused up front (`space.rs`).
            self.space.on_error(e);
        }
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(dir: &Path) -> String {
        let bytes = std::fs::read(dir.join("conf")).unwrap();
        String::from_utf8_lossy(&bytes[..bytes.len() - 4]).into_owned()
    }

    /// A database at `path` as sled's defaults make it (every store before `SEGMENT_SIZE`),
    /// holding one key.
    fn database_of_sleds_defaults(path: &Path) {
        let db = sled::Config::new().path(path).open().unwrap();
        db.insert(b"written before", b"kept").unwrap();
        db.flush().unwrap();
    }

    #[test]
    fn a_new_database_gets_segments_of_two_mib() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(open_db(&path).unwrap());
        assert!(conf(&path).contains(&format!("segment_size: {SEGMENT_SIZE}\n")), "{}", conf(&path));
    }

    /// A database sled created with its default segments (every store before `SEGMENT_SIZE`)
    /// opens with them and keeps them: sled refuses any other size for it.
    #[test]
    fn a_database_of_sleds_default_segments_opens_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        database_of_sleds_defaults(&path);
        let default = conf(&path);
        assert!(default.contains("segment_size: 524288\n"), "{default}");
        let refused = (0..100).find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            match sled::Config::new().path(&path).segment_size(SEGMENT_SIZE).open() {
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => None,
                other => Some(other),
            }
        });
        assert!(matches!(refused, Some(Err(sled::Error::Unsupported(_)))), "sled took another segment size");
        let db = open_db(&path).unwrap();
        assert_eq!(db.get(b"written before").unwrap().as_deref(), Some(&b"kept"[..]));
        drop(db);
        assert_eq!(conf(&path), default);
    }

    /// A database that holds data but lost its `conf` is refused, and left as it was (sled
    /// writes a `conf` of its own at an open).
    #[test]
    fn a_database_without_its_configuration_is_refused_not_guessed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        database_of_sleds_defaults(&path);
        std::fs::remove_file(path.join("conf")).unwrap();
        assert!(matches!(open_db(&path), Err(StoreError::Corrupt(_))));
        assert!(!path.join("conf").exists(), "nothing written in its place");
        std::fs::write(path.join("conf"), b"").unwrap();
        assert!(matches!(open_db(&path), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn a_damaged_configuration_is_refused_not_guessed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("conf"), b"segment_size: many\nuse_compression: false\n\0\0\0\0").unwrap();
        assert!(matches!(sled_config(&path), Err(StoreError::Corrupt(_))));
    }
}
