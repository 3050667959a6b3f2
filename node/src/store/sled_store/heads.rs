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

/// The event sequence `store.head` in `dir` names (0 without one).
pub fn read_store_head(dir: &Path) -> Result<u64, StoreError> {
    match std::fs::read_to_string(dir.join(STORE_HEAD_FILE)) {
        // NULs are a first write that never reached the disk (a crash right after it): nothing
        // was recorded, which only weakens the check.
        Ok(text) if text.trim_matches(|c: char| c == '\0' || c.is_whitespace()).is_empty() => Ok(0),
        Ok(text) => text.trim().parse().map_err(|_| StoreError::Corrupt(format!("{STORE_HEAD_FILE} is damaged"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(backend(e)),
    }
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

pub(super) fn open_journal(path: &Path) -> Result<std::fs::File, StoreError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| backend(format!("erasure journal {}: {e}", path.display())))
}

/// At open: removes backups a stopped process staged and never streamed, refuses a database
/// that lost change events `store.head` says were flushed, and opens `store.head`.
pub(super) fn open_checked(dir: &Path, events: &sled::Tree) -> Result<(std::fs::File, u64), StoreError> {
    for entry in std::fs::read_dir(dir).map_err(backend)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("backup-staging-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let flushed = read_store_head(dir)?;
    let last = last_event(events)?;
    if last < flushed {
        return Err(StoreError::Corrupt(format!(
            "{}: the database's last change event is {last}, but event {flushed} was flushed ({STORE_HEAD_FILE}): \
             it lost acknowledged writes (damaged or replaced files); restore the region from a backup",
            dir.join("db").display()
        )));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(STORE_HEAD_FILE))
        .map_err(backend)?;
    Ok((file, flushed))
}

impl SledStore {
    /// Keeps the erasure journal at `path` instead of the data directory (a disk that outlives
    /// this machine's: deploy/README.md, "Backup and restore of a node").
    pub fn with_erasure_journal(self, path: &Path) -> Result<Self, StoreError> {
        *self.journal.lock().unwrap_or_else(|p| p.into_inner()) = open_journal(path)?;
        Ok(self)
    }

    /// Writes `seq` to `store.head` if newer. Not synced: it only ever names durable events, so
    /// losing it weakens the check and never fools it; a failure is logged, not returned.
    pub(super) fn record_flushed(&self, seq: u64) {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        if seq <= head.1 {
            return;
        }
        let line = format!("{seq:020}\n");
        match std::os::unix::fs::FileExt::write_all_at(&head.0, line.as_bytes(), 0) {
            Ok(()) => head.1 = seq,
            Err(e) => tracing::warn!(error = %e, "cannot record the flushed store head"),
        }
    }
    /// The group commit's flush (`Store::flush`): keys, database and audit log, then the heads.
    pub(super) async fn flush_files(&self) -> Result<(), StoreError> {
        let flushed = async {
            // Keys first: a sealed record must never be durable without the key that opens it.
            self.vault.sync()?;
            // What this flush covers at least: every event committed before it starts.
            let covered = last_event(&self.events)?;
            // The audit log's fsync beside the database's: one wait for both.
            let audit = Arc::clone(&self.audit);
            let synced = tokio::task::spawn_blocking(move || audit.sync());
            self.db.flush_async().await.map_err(backend)?;
            match synced.await {
                Ok(result) => result.map_err(StoreError::Audit)?,
                Err(e) => return Err(backend(e)),
            }
            self.record_flushed(covered);
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
