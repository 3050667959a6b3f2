use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use domicile_types::{RegionId, SubjectRef};

use crate::{
    AuditError, AuditEvent, AuditHead, AuditRecord, Chain, DecisionEntry, FILE_NAME, HEAD_FILE_NAME, VerifyError, scan,
};

// ---------------------------------------------------------------------------------------------
// The writer.
// ---------------------------------------------------------------------------------------------

struct State {
    file: File,
    /// Bytes of complete, verified entries: where a failed append is rolled back to.
    len: u64,
    chain: Chain,
    /// Set when a partial line could not be removed; appending after it would break the chain.
    unwritable: bool,
}

/// Where a [`AuditTxn`] started: what its removal restores.
struct Mark {
    len: u64,
    chain: Chain,
}

/// The audit entries of one store write, held until the write commits (see [`AuditLog::begin`]).
pub struct AuditTxn<'a> {
    log: &'a AuditLog,
    state: std::sync::MutexGuard<'a, State>,
    start: Mark,
    appended: bool,
    done: bool,
}

impl AuditTxn<'_> {
    /// Appends an entry of the write (written to the file now, durable with the next sync).
    pub fn append(&mut self, event: AuditEvent, subject: Option<&SubjectRef>, at: i64) -> Result<(), AuditError> {
        if self.state.unwritable {
            return Err(AuditError::Unwritable);
        }
        self.appended = true;
        self.log.append_locked(&mut self.state, event, subject, at).map(|_| ())
    }

    /// Appends entries of the write with one `write` of all their lines (an import's batch has
    /// one per record: a `write` each was a fortieth of a node's CPU per imported row). All or
    /// nothing: on an error nothing of them is written.
    pub fn append_all(
        &mut self,
        entries: impl IntoIterator<Item = (AuditEvent, Option<SubjectRef>)>,
        at: i64,
    ) -> Result<(), AuditError> {
        if self.state.unwritable {
            return Err(AuditError::Unwritable);
        }
        let mut lines = Vec::new();
        let mut chain = self.state.chain.clone();
        for (event, subject) in entries {
            chain.entry(&mut lines, event, subject.as_ref(), at)?;
        }
        if lines.is_empty() {
            return Ok(());
        }
        self.appended = true;
        AuditLog::write(&mut self.state, &lines, chain)
    }

    /// Removes every entry appended so far (a store transaction that runs its body again
    /// appends them again). If the file cannot be cut back, the log refuses every later append
    /// ([`AuditError::Unwritable`]): entries of a write that was not stored must not stay.
    pub fn rollback(&mut self) -> Result<(), AuditError> {
        if !self.appended {
            return Ok(());
        }
        let state = &mut *self.state;
        if let Err(e) = state.file.set_len(self.start.len) {
            state.unwritable = true;
            tracing::error!(error = %e, "audit entries of a write that was not stored could not be removed");
            return Err(AuditError::Unwritable);
        }
        state.len = self.start.len;
        state.chain.clone_from(&self.start.chain);
        self.appended = false;
        Ok(())
    }

    /// Keeps the entries: the write they record has committed.
    pub fn commit(mut self) {
        self.done = true;
    }
}

impl Drop for AuditTxn<'_> {
    fn drop(&mut self) {
        if !self.done {
            // The write did not commit; the error is logged and the log marked unwritable there.
            let _ = self.rollback();
        }
    }
}

impl fmt::Debug for AuditTxn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditTxn").field("appended", &self.appended).finish_non_exhaustive()
    }
}

/// The open audit log of one region. Appends are serialised by a mutex; `sync` is not, so one
/// fsync covers every append that returned before it (group commit).
pub struct AuditLog {
    path: PathBuf,
    region: RegionId,
    state: Mutex<State>,
    /// `audit.head`, rewritten after syncs with the last committed seq they covered, and the
    /// highest seq written there.
    head_file: Mutex<(File, u64)>,
    sync_handle: File,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.path).field("region", &self.region).finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates) `<dir>/audit.log`, verifies the whole chain and continues it. A torn
    /// final line is dropped with a warning; any other failure refuses the log, naming the entry.
    pub fn open(dir: &Path, region: &RegionId) -> Result<Self, AuditError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let existed = path.exists();
        let file = OpenOptions::new().read(true).append(true).create(true).open(&path)?;
        if !existed {
            // Make the new file's directory entry durable, or a synced entry could vanish with it.
            sync_dir(dir)?;
        }
        let (report, verified_len) = match scan(BufReader::new(&file)) {
            Ok(r) => r,
            Err(VerifyError::Io(e)) => return Err(AuditError::Io(e)),
            Err(VerifyError::Tampered(t)) => return Err(AuditError::Tampered(t)),
        };
        if let Some(found) = report.region
            && found != region.as_str()
        {
            return Err(AuditError::WrongRegion { expected: region.to_string(), found });
        }
        let synced = read_synced_head(dir)?;
        if synced > report.head_seq {
            return Err(AuditError::Truncated { path: path.display().to_string(), found: report.head_seq, synced });
        }
        let head_file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join(HEAD_FILE_NAME))?;
        if let Some(torn) = report.torn_tail {
            tracing::warn!(
                line = torn.line,
                bytes = torn.bytes,
                "audit log ends in an incomplete entry (a write interrupted by a crash, never acknowledged); dropping it"
            );
            file.set_len(verified_len)?;
            file.sync_data()?;
        }
        let sync_handle = file.try_clone()?;
        let chain = Chain::after(region.clone(), report.head_seq, report.head_hash);
        let state = State { file, len: verified_len, chain, unwritable: false };
        Ok(Self {
            path,
            region: region.clone(),
            state: Mutex::new(state),
            sync_handle,
            head_file: Mutex::new((head_file, synced)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry and hands it to the OS (one `write` of the whole line). It is durable only
    /// after [`AuditLog::sync`]; the node syncs before acknowledging, together with its store.
    pub fn append(&self, event: AuditEvent, subject: Option<&SubjectRef>, at: i64) -> Result<AuditRecord, AuditError> {
        let mut state = self.lock()?;
        self.append_locked(&mut state, event, subject, at)
    }

    /// Starts the entries of one store write: they are appended as the write goes (so a write
    /// whose entries cannot be appended is aborted before it commits) and kept only when it
    /// commits ([`AuditTxn::commit`]); dropped uncommitted, they are removed again. The log is held
    /// until then, so no other entry comes between them and their removal.
    pub fn begin(&self) -> Result<AuditTxn<'_>, AuditError> {
        let state = self.lock()?;
        let start = Mark { len: state.len, chain: state.chain.clone() };
        Ok(AuditTxn { log: self, state, start, appended: false, done: false })
    }

    fn append_locked(
        &self,
        state: &mut State,
        event: AuditEvent,
        subject: Option<&SubjectRef>,
        at: i64,
    ) -> Result<AuditRecord, AuditError> {
        let mut line = Vec::with_capacity(512);
        let mut chain = state.chain.clone();
        let record = chain.entry(&mut line, event, subject, at)?;
        Self::write(state, &line, chain)?;
        Ok(record)
    }

    /// Appends a batch of decisions as `decisions` entries (see the module doc): one entry, or
    /// one more each time the entry's `decisions` string would pass 48 KiB, chained as usual and
    /// written with one `write`; the hot path of batch decisions. All or nothing: every decision
    /// is checked first and on error nothing is written. An empty batch writes nothing.
    pub fn append_decisions(&self, entries: &[DecisionEntry<'_>], at: i64) -> Result<(), AuditError> {
        let mut state = self.lock()?;
        let mut lines = Vec::new();
        let mut chain = state.chain.clone();
        if chain.decisions(&mut lines, entries, at)? == 0 {
            return Ok(());
        }
        Self::write(&mut state, &lines, chain)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, AuditError> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.unwritable {
            return Err(AuditError::Unwritable);
        }
        Ok(state)
    }

    /// Writes complete lines with one `write` and advances the chain to `chain`; on failure
    /// removes whatever part reached the file so the chain stays appendable.
    fn write(state: &mut State, lines: &[u8], chain: Chain) -> Result<(), AuditError> {
        if let Err(e) = state.file.write_all(lines) {
            let len = state.len;
            if state.file.set_len(len).is_err() {
                state.unwritable = true;
            }
            return Err(AuditError::Io(e));
        }
        state.len += lines.len() as u64;
        state.chain = chain;
        Ok(())
    }

    /// Makes every entry appended so far durable (fsync). Blocking: from async code call it where
    /// the store's flush is awaited, or in `spawn_blocking`.
    pub fn sync(&self) -> Result<(), AuditError> {
        // The committed head before the fsync: every entry up to it is durable once it returns.
        // An open write holds the state (its entries may still be removed): then this sync
        // records nothing, and a later one will.
        let committed = match self.state.try_lock() {
            Ok(state) => Some(state.chain.last_seq()),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner().chain.last_seq()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        self.sync_handle.sync_data()?;
        if let Some(seq) = committed {
            self.record_synced(seq);
        }
        Ok(())
    }

    /// Writes `seq` to `audit.head` if it is newer than what is there. Not synced itself: it
    /// only ever names entries already durable, so losing it weakens the check, never fools it.
    /// A failure is logged, not returned: the entries are durable whatever this file says.
    fn record_synced(&self, seq: u64) {
        let mut head = self.head_file.lock().unwrap_or_else(PoisonError::into_inner);
        if seq <= head.1 {
            return;
        }
        let line = format!("{seq:020}\n");
        #[cfg(unix)]
        let written = std::os::unix::fs::FileExt::write_all_at(&head.0, line.as_bytes(), 0);
        #[cfg(not(unix))]
        let written = {
            use std::io::Seek;
            head.0.seek(io::SeekFrom::Start(0)).and_then(|_| head.0.write_all(line.as_bytes()))
        };
        match written {
            Ok(()) => head.1 = seq,
            Err(e) => tracing::warn!(error = %e, "cannot record the synced audit head"),
        }
    }

    /// The length in bytes of the log's committed entries and the last one's head: what an
    /// online backup copies. Waits for a write holding the log (its entries may still go).
    pub fn committed(&self) -> (u64, AuditHead) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (state.len, AuditHead { seq: state.chain.last_seq(), hash: state.chain.last_hash().to_owned() })
    }

    /// The last entry's seq and hash, for the node's Info RPC and external anchoring.
    pub fn head(&self) -> AuditHead {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        AuditHead { seq: state.chain.last_seq(), hash: state.chain.last_hash().to_owned() }
    }
}

/// The seq `audit.head` in `dir` names (0 without one: a log from before the file existed).
pub fn read_synced_head(dir: &Path) -> Result<u64, AuditError> {
    match std::fs::read_to_string(dir.join(HEAD_FILE_NAME)) {
        // NULs are a first write that never reached the disk: nothing was recorded.
        Ok(text) if text.trim_matches(|c: char| c == '\0' || c.is_whitespace()).is_empty() => Ok(0),
        Ok(text) => text.trim().parse().map_err(|_| {
            AuditError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is damaged: not a sequence number", dir.join(HEAD_FILE_NAME).display()),
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(AuditError::Io(e)),
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Directories cannot be opened as files here; the file system orders metadata itself.
    Ok(())
}
