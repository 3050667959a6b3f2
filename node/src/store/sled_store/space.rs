//! A full disk under an embedded-store region: writes are refused, decisions go on.
//!
//! Every decision is audited (invariant 5), so a disk too full for one more audit line would
//! stop decisions too. The store keeps a reserve file (`space.reserve`, [`RESERVE_BYTES`]) on the
//! same file system. The first write that fails for want of space (the audit log, sled, the key
//! slots) puts the store in *full* mode and deletes the reserve: from then on writes are refused
//! up front with [`StoreError::StorageFull`] (nothing half-written), while decisions' audit
//! entries use the space the reserve gave back. At most once a second, a write tries to put the
//! reserve back; once it fits, writes are accepted again, without a restart.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::store::StoreError;

pub(super) const RESERVE_FILE: &str = "space.reserve";
/// Room for decisions' audit entries while writes are refused: at about 300 bytes per decisions
/// entry line holding many decisions, hours of decisions at full rate.
pub(super) const RESERVE_BYTES: usize = 8 << 20;
const RETRY_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct Space {
    reserve: PathBuf,
    full: AtomicBool,
    last_try: Mutex<Option<Instant>>,
}

/// Whether `error` is a file system out of space (ENOSPC), wherever it was met.
pub(crate) fn is_disk_full(error: &StoreError) -> bool {
    match error {
        StoreError::StorageFull => true,
        StoreError::Audit(domicile_audit::AuditError::Io(e)) => e.kind() == std::io::ErrorKind::StorageFull,
        // sled's and the key file's errors reach here as text.
        StoreError::Backend(text) => text.contains("No space left on device") || text.contains("os error 28"),
        _ => false,
    }
}

impl Space {
    pub(super) fn open(dir: &Path) -> Self {
        let space = Self { reserve: dir.join(RESERVE_FILE), full: AtomicBool::new(false), last_try: Mutex::new(None) };
        if !space.reserve.exists() && space.write_reserve().is_err() {
            tracing::warn!("the data directory's file system is full: writes are refused until space returns");
            space.full.store(true, Ordering::Release);
        }
        space
    }

    fn write_reserve(&self) -> std::io::Result<()> {
        let attempt = (|| {
            let mut file = std::fs::File::create(&self.reserve)?;
            file.write_all(&vec![0u8; RESERVE_BYTES])?;
            file.sync_all()
        })();
        if attempt.is_err() {
            let _ = std::fs::remove_file(&self.reserve);
        }
        attempt
    }

    /// Before a write: refused while the disk is full (trying, at most once a second, to put
    /// the reserve back, which ends full mode once `probe`, a flush of the database, works too:
    /// sled keeps a write error it met until it is reopened, and then the node must restart).
    pub(super) fn check_writable(&self, probe: impl FnOnce() -> Result<(), StoreError>) -> Result<(), StoreError> {
        if !self.full.load(Ordering::Acquire) {
            return Ok(());
        }
        {
            let mut last = self.last_try.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < RETRY_EVERY) {
                return Err(StoreError::StorageFull);
            }
            *last = Some(Instant::now());
        }
        if self.write_reserve().is_err() {
            return Err(StoreError::StorageFull);
        }
        if let Err(e) = probe() {
            tracing::error!(error = %e, "space is back but the database still refuses writes: restart the node");
            return Err(StoreError::StorageFull);
        }
        self.full.store(false, Ordering::Release);
        tracing::info!("space is back on the data directory's file system: writes accepted again");
        Ok(())
    }

    /// After an error: if it is a full disk, enter full mode and give the reserve back for
    /// decisions' audit entries. Returns whether it was.
    pub(super) fn on_error(&self, error: &StoreError) -> bool {
        if !is_disk_full(error) {
            return false;
        }
        if !self.full.swap(true, Ordering::AcqRel) {
            let _ = std::fs::remove_file(&self.reserve);
            tracing::error!(
                "the data directory's file system is full: writes are refused, decisions go on from the reserve"
            );
        }
        true
    }
}

impl super::SledStore {
    /// Decisions' audit entries (`Store::audit_decisions`): out of space, the reserve is given
    /// back and the entries tried once more.
    pub(super) fn audit_decisions_with_reserve(
        &self,
        entries: &[domicile_audit::DecisionEntry<'_>],
        at: i64,
    ) -> Result<(), StoreError> {
        match self.audit.append_decisions(entries, at).map_err(StoreError::Audit) {
            Err(e) if self.space.on_error(&e) => self.audit.append_decisions(entries, at).map_err(StoreError::Audit),
            other => other,
        }
    }
}
