//! Online backup and restore of an embedded-store region, and the erasure journal that keeps
//! erasures made after a backup erased after its restore (deploy/README.md, "Backup and restore
//! of a node").
//!
//! A backup is taken while the node serves: under the write lock (writes wait; decisions do not)
//! it copies every sled tree into `db.export`, the key slots and the audit log's committed
//! prefix, so the three are of one instant; the id generator's next value and the heads go into
//! `manifest.json` with each file's SHA-256. Restore is offline: it checks the manifest, rebuilds
//! the database, copies the rest, writes `audit.head` and `store.head` from the manifest, starts
//! new ids far above the backup's next one (`ids.rs`: above whatever the lost machine handed out
//! since), and replays the erasure journal (`replay.rs`), all under `restore.pending`, which only
//! a restore that finished removes.
//!
//! The erasure journal (`erasures.log`, or `erasure_journal_file` on another disk) gets one line
//! per erasure, `<subject id> <unix seconds>`, per merge, `merge <from> <into> <unix seconds>` (a
//! merge destroys `from`'s key), and per unmerge, each synced before the key is destroyed.
//! Subject ids are random and pseudonymous.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use domicile_types::{RegionId, SubjectId};

use super::heads::{LEDGER_HEAD_FILE, STORE_HEAD_FILE, last_event, ledger_position};
pub use super::replay::{JournalEntry, combine_journals, read_erasure_journal};
use super::{SledStore, backend, ids};
use crate::store::StoreError;
use crate::store::vault::VaultScan;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const DB_EXPORT_FILE: &str = "db.export";
pub const ERASURE_JOURNAL_FILE: &str = "erasures.log";
const FORMAT: u32 = 4;
/// The formats this build restores: 1, written before a store's ids had a base (`ids.rs`); 2,
/// before the ledger's position-ordered layout (`ledger.rs`; moved when the restored store
/// opens); 3, before ledger segments (`segments.rs`; read as they are); and 4. A backup of a
/// restored store is format 2, so a build from before the base refuses it rather than step
/// sled's id generator up to its next id, a loop of up to 2^40 steps (found by a review); a
/// format 3 backup, so a build of the earlier layout refuses it rather than serve its ledgers as
/// empty; a format 4 backup, so a build without segments refuses it rather than answer that its
/// ledgers are corrupt.
const RESTORES: [u32; 4] = [1, 2, 3, 4];
const EXPORT_MAGIC: &[u8] = b"domicile-sled-export-1\n";

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What a backup holds, written last (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub region: String,
    pub created_at: i64,
    pub subjects: u64,
    pub audit_seq: u64,
    pub audit_hash: String,
    pub last_event: u64,
    /// The id generator's next value at the backup: a restore starts it there.
    pub next_id: u64,
    pub files: Vec<BackupFile>,
}

/// A backup staged on the node's disk, removed when dropped (after it was streamed).
#[derive(Debug)]
pub struct StagedBackup {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl StagedBackup {
    /// The files to send, the manifest last.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.manifest.files.iter().map(|f| self.dir.join(&f.name)).collect();
        files.push(self.dir.join(MANIFEST_FILE));
        files
    }
}

impl Drop for StagedBackup {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(error = %e, dir = %self.dir.display(), "cannot remove a staged backup");
        }
    }
}

fn write_chunk(out: &mut impl Write, tag: u8, parts: &[&[u8]]) -> std::io::Result<()> {
    out.write_all(&[tag])?;
    for part in parts {
        out.write_all(&(part.len() as u32).to_be_bytes())?;
        out.write_all(part)?;
    }
    Ok(())
}

fn read_part(input: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    // Bounded by what sled accepts for a key or value; a damaged length is refused, not allocated.
    if len > 64 << 20 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "part longer than any sled value"));
    }
    let mut bytes = vec![0u8; len];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn sha256_of(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = BufReader::new(File::open(path)?);
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buffer[..n]);
    }
    Ok((total, hex::encode(hasher.finish())))
}

fn copy_prefix(from: &Path, to: &Path, len: u64) -> std::io::Result<()> {
    let mut input = File::open(from)?.take(len);
    let mut output = File::create(to)?;
    let copied = std::io::copy(&mut input, &mut output)?;
    if copied != len {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file shorter than its committed length"));
    }
    output.sync_all()
}

impl SledStore {
    /// [`SledStore::stage_backup`], long and blocking (every tree copied, fsyncs): the runtime
    /// worker hands its other tasks on first, so decisions on this node go on meanwhile.
    pub(super) fn stage_backup_off_workers(&self, now: i64) -> Result<StagedBackup, StoreError> {
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| self.stage_backup(now)),
            _ => self.stage_backup(now),
        }
    }

    /// Stages an online backup under the data directory (see the module documentation).
    pub fn stage_backup(&self, now: i64) -> Result<StagedBackup, StoreError> {
        let dir = self.dir.join(format!("backup-staging-{}", super::heads::unique_suffix()));
        std::fs::create_dir(&dir).map_err(backend)?;
        let mut staged = StagedBackup { dir, manifest: Manifest::empty(&self.region, now) };
        let (mut manifest, dir) = (staged.manifest.clone(), staged.dir.clone());
        {
            // Writes wait here; decisions (reads) go on.
            let _serial = self.serialise_writes(&[]);
            let mut out = BufWriter::new(File::create(dir.join(DB_EXPORT_FILE)).map_err(backend)?);
            out.write_all(EXPORT_MAGIC).map_err(backend)?;
            for name in self.db.tree_names() {
                write_chunk(&mut out, b'T', &[&name]).map_err(backend)?;
                for item in self.db.open_tree(&name).map_err(backend)?.iter() {
                    let (key, value) = item.map_err(backend)?;
                    write_chunk(&mut out, b'K', &[&key, &value]).map_err(backend)?;
                }
            }
            write_chunk(&mut out, b'E', &[]).map_err(backend)?;
            out.into_inner().map_err(|e| backend(e.error()))?.sync_all().map_err(backend)?;
            manifest.next_id = self.next_id()?;
            manifest.last_event = last_event(&self.events)?;
            manifest.subjects = self.meta.len() as u64;
            self.vault.sync()?;
            let keys = self.dir.join(VaultScan::FILE_NAME);
            let key_len = std::fs::metadata(&keys).map_err(backend)?.len();
            copy_prefix(&keys, &dir.join(VaultScan::FILE_NAME), key_len).map_err(backend)?;
            let (audit_len, head) = self.audit.committed();
            copy_prefix(self.audit.path(), &dir.join(domicile_audit::FILE_NAME), audit_len).map_err(backend)?;
            manifest.audit_seq = head.seq;
            manifest.audit_hash = head.hash;
        }
        for name in [DB_EXPORT_FILE, VaultScan::FILE_NAME, domicile_audit::FILE_NAME] {
            let (bytes, sha256) = sha256_of(&dir.join(name)).map_err(backend)?;
            manifest.files.push(BackupFile { name: name.to_owned(), bytes, sha256 });
        }
        let text = serde_json::to_vec_pretty(&manifest).map_err(backend)?;
        std::fs::write(dir.join(MANIFEST_FILE), text).map_err(backend)?;
        staged.manifest = manifest;
        Ok(staged)
    }

    /// Appends `subject`'s erasure to the journal and syncs it, before its key is destroyed,
    /// with an erasure line first for each subject merged into it (`merged_in`, from its
    /// lineage). A merge's own line is written after its commit, so a node that dies in between
    /// loses it; a restore of a backup from before that merge then holds the merged-away subject
    /// apart, and without these lines the erasure of the subject it went into would leave it
    /// there. Replayed, each erases what the backup holds of that id, and nothing when the merge
    /// was replayed too (the id is then held by no one).
    pub(super) fn journal_erasure(
        &self,
        subject: &SubjectId,
        merged_in: &[SubjectId],
        now: i64,
    ) -> Result<(), StoreError> {
        let mut lines: String = merged_in.iter().map(|id| format!("{id} {now}\n")).collect();
        lines.push_str(&format!("{subject} {now}\n"));
        self.append_journal(&lines)
    }

    /// Appends a merge of `from` into `into` to the journal and syncs it, before `from`'s key is
    /// destroyed: replayed after a restore, so a subject merged and then erased after the backup
    /// does not come back through the half the backup still holds apart.
    pub(super) fn journal_merge(&self, from: &SubjectId, into: &SubjectId, now: i64) -> Result<(), StoreError> {
        self.append_journal(&format!("merge {from} {into} {now}\n"))
    }

    /// Journals an unmerge (the merged subject, the merged-away id, the two new ids) before the
    /// merged subject's key is destroyed: a restore of an earlier backup splits it again, so an
    /// erasure journaled later of either half finds the half to erase.
    pub(super) fn journal_unmerge(
        &self,
        merged: &SubjectId,
        from: &SubjectId,
        kept: &SubjectId,
        restored: &SubjectId,
        now: i64,
    ) -> Result<(), StoreError> {
        self.append_journal(&format!("unmerge {merged} {from} {kept} {restored} {now}\n"))
    }

    /// Appends `line` to the erasure journal and syncs it.
    fn append_journal(&self, line: &str) -> Result<(), StoreError> {
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        journal.write_all(line.as_bytes()).map_err(|e| backend(format!("erasure journal: {e}")))?;
        journal.sync_data().map_err(|e| backend(format!("erasure journal: {e}")))
    }
}

impl Manifest {
    fn empty(region: &RegionId, now: i64) -> Self {
        Self {
            format: FORMAT,
            region: region.to_string(),
            created_at: now,
            subjects: 0,
            audit_seq: 0,
            audit_hash: String::new(),
            last_event: 0,
            next_id: 0,
            files: Vec::new(),
        }
    }
}

/// Reads a backup's manifest and checks every file against it (size and SHA-256).
pub fn read_backup(from: &Path) -> Result<Manifest, StoreError> {
    let damaged = |what: String| StoreError::Corrupt(format!("backup {}: {what}", from.display()));
    let text = std::fs::read(from.join(MANIFEST_FILE)).map_err(|e| damaged(format!("{MANIFEST_FILE}: {e}")))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| damaged(format!("{MANIFEST_FILE}: {e}")))?;
    if !RESTORES.contains(&manifest.format) {
        return Err(damaged(format!("format {} (this build reads 1 to {FORMAT})", manifest.format)));
    }
    // Exactly the files a backup holds, by plain name: nothing unverified is restored, and
    // nothing outside the backup directory is read.
    let mut names: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    let mut expected = [DB_EXPORT_FILE, VaultScan::FILE_NAME, domicile_audit::FILE_NAME];
    expected.sort_unstable();
    if names != expected {
        return Err(damaged(format!("{MANIFEST_FILE} must list exactly {}", expected.join(", "))));
    }
    for file in &manifest.files {
        let (bytes, sha256) = sha256_of(&from.join(&file.name)).map_err(|e| damaged(format!("{}: {e}", file.name)))?;
        if bytes != file.bytes || sha256 != file.sha256 {
            return Err(damaged(format!("{} does not match the manifest (damaged or incomplete)", file.name)));
        }
    }
    Ok(manifest)
}

/// Beside a restored store until its erasure journal was replayed on it and the result flushed:
/// while it is there, [`SledStore::open`] (so the node) and `node check` refuse the directory,
/// so a restore that failed or stopped half-way never serves a subject erased since the backup.
pub const RESTORE_PENDING_FILE: &str = "restore.pending";

/// Why a directory holding [`RESTORE_PENDING_FILE`] is refused.
pub(crate) fn unfinished_restore(dir: &Path) -> String {
    format!(
        "{}: a restore into this directory did not finish ({RESTORE_PENDING_FILE}): subjects erased since the \
         backup may be in it; delete the directory and restore again into an empty one",
        dir.display()
    )
}

/// Refuses `dir` while a restore into it has not finished (or when that cannot be told).
pub(super) fn refuse_unfinished_restore(dir: &Path) -> Result<(), StoreError> {
    match dir.join(RESTORE_PENDING_FILE).try_exists() {
        Ok(false) => Ok(()),
        Ok(true) => Err(StoreError::Corrupt(unfinished_restore(dir))),
        Err(e) => Err(backend(format!("{}: {e}", dir.join(RESTORE_PENDING_FILE).display()))),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(backend)
}

/// Restores the backup in `from` into `into` (absent or empty) and replays `journal` (the
/// region's erasure journal as it is now: [`read_erasure_journal`]) on it at `now`: returns the
/// manifest and how many journal lines changed something. `into` holds [`RESTORE_PENDING_FILE`]
/// from before its first file is written until the replay is flushed: an error on the way (a
/// damaged backup, a journal line that cannot be applied, a crash) leaves a directory no node
/// opens.
pub async fn restore(
    from: &Path,
    into: &Path,
    region: &RegionId,
    journal: &[JournalEntry],
    now: i64,
) -> Result<(Manifest, usize), StoreError> {
    let restored = async {
        let manifest = rebuild(from, into, region, now)?;
        let store = SledStore::open_restoring(into, region)?;
        let replayed = store.replay_erasures(journal, now)?;
        crate::store::Store::flush(&store).await?;
        drop(store);
        std::fs::remove_file(into.join(RESTORE_PENDING_FILE)).map_err(backend)?;
        sync_dir(into)?;
        Ok((manifest, replayed))
    };
    restored.await.map_err(|e| match into.join(RESTORE_PENDING_FILE).exists() {
        true => StoreError::Backend(format!("{e}; {}", unfinished_restore(into))),
        false => e,
    })
}

/// Rebuilds a region's files in `into` (absent or empty) from the backup in `from`, checking
/// every file against the manifest first, under [`RESTORE_PENDING_FILE`].
fn rebuild(from: &Path, into: &Path, region: &RegionId, now: i64) -> Result<Manifest, StoreError> {
    let damaged = |what: String| StoreError::Corrupt(format!("backup {}: {what}", from.display()));
    let manifest = read_backup(from)?;
    if manifest.region != region.as_str() {
        return Err(damaged(format!("a backup of region `{}`, not `{region}`", manifest.region)));
    }
    // A next id that leaves no room is refused before anything is written; checked again against
    // the ids the export holds once it is read.
    ids::restored_base(manifest.next_id, None, manifest.created_at, now)
        .map_err(|e| damaged(format!("{MANIFEST_FILE}: {e}")))?;
    if into.exists() && std::fs::read_dir(into).map_err(backend)?.next().is_some() {
        return Err(StoreError::Backend(format!("{} is not empty: restore into a new directory", into.display())));
    }
    std::fs::create_dir_all(into).map_err(backend)?;
    {
        let mut pending = File::create(into.join(RESTORE_PENDING_FILE)).map_err(backend)?;
        pending.write_all(b"a restore into this directory has not finished\n").map_err(backend)?;
        pending.sync_all().map_err(backend)?;
        sync_dir(into)?;
    }
    {
        let db = super::heads::sled_config(&into.join("db"))?.open().map_err(backend)?;
        let mut input = BufReader::new(File::open(from.join(DB_EXPORT_FILE)).map_err(backend)?);
        let mut magic = vec![0u8; EXPORT_MAGIC.len()];
        input.read_exact(&mut magic).map_err(backend)?;
        if magic != EXPORT_MAGIC {
            return Err(damaged(format!("{DB_EXPORT_FILE} is not a database export")));
        }
        let mut tree: Option<(Vec<u8>, sled::Tree)> = None;
        // The highest event sequence, interaction or rights position the export holds.
        let mut highest: Option<u64> = None;
        loop {
            let mut tag = [0u8; 1];
            input.read_exact(&mut tag).map_err(|e| damaged(format!("{DB_EXPORT_FILE}: {e}")))?;
            match tag[0] {
                b'T' => {
                    let name = read_part(&mut input).map_err(backend)?;
                    tree = Some((name.clone(), db.open_tree(name).map_err(backend)?));
                }
                b'K' => {
                    let key = read_part(&mut input).map_err(backend)?;
                    let value = read_part(&mut input).map_err(backend)?;
                    let (name, tree) =
                        tree.as_ref().ok_or_else(|| damaged(format!("{DB_EXPORT_FILE}: a record before a tree")))?;
                    if let Some(id) = ids::held_id(name, &key) {
                        highest = highest.max(Some(id));
                    }
                    tree.insert(key, value).map_err(backend)?;
                }
                b'E' => break,
                _ => return Err(damaged(format!("{DB_EXPORT_FILE}: unknown record"))),
            }
        }
        // New ids (events, interaction and rights positions, generations) come after every id
        // the lost machine may have handed out since the backup (`ids.rs`).
        let base = ids::restored_base(manifest.next_id, highest, manifest.created_at, now)
            .map_err(|e| damaged(format!("{MANIFEST_FILE}: {e}")))?;
        let counters = db.open_tree("counters").map_err(backend)?;
        ids::write_base(&counters, base)?;
        // Consent ledger positions too (they leave the node as `ConsentInForce.sequence` and in
        // import receipts): the lost tail used positions above the backup's, so new entries start
        // the same gap above them. Found by a review: positions repeated after a restore.
        let position = ledger_position(&counters)?;
        let moved = base
            .checked_sub(manifest.next_id)
            .and_then(|gap| position.checked_add(gap))
            .filter(|moved| *moved <= ids::MAX_ID_BASE)
            .ok_or_else(|| damaged(format!("{MANIFEST_FILE}: its ledger position leaves no room")))?;
        counters.insert(super::LEDGER_POSITION, &moved.to_be_bytes()[..]).map_err(backend)?;
        db.flush().map_err(backend)?;
        let last = db.open_tree("events").map_err(backend).and_then(|e| last_event(&e))?;
        if last != manifest.last_event {
            return Err(damaged(format!(
                "the database export ends at event {last}, the manifest says {}",
                manifest.last_event
            )));
        }
        let ledger = db.open_tree("counters").map_err(backend).and_then(|c| ledger_position(&c))?;
        std::fs::write(into.join(LEDGER_HEAD_FILE), format!("{ledger:020}\n")).map_err(backend)?;
    }
    for name in [VaultScan::FILE_NAME, domicile_audit::FILE_NAME] {
        std::fs::copy(from.join(name), into.join(name)).map_err(backend)?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(into.join(VaultScan::FILE_NAME), private).map_err(backend)?;
    }
    std::fs::write(into.join(domicile_audit::HEAD_FILE_NAME), format!("{:020}\n", manifest.audit_seq))
        .map_err(backend)?;
    std::fs::write(into.join(STORE_HEAD_FILE), format!("{:020}\n", manifest.last_event)).map_err(backend)?;
    Ok(manifest)
}
