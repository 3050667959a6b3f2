//! `domicile node check`: a region's embedded-store files verified offline, every record read the
//! way the node would read it, so damage is found before a node serves from it, and named by file
//! and what is wrong. Reports subject ids (random, pseudonymous), never what a record holds.
//!
//! What is checked, each against the others:
//! - `audit.log`: the whole hash chain, its region, and that it still holds every entry
//!   `audit.head` says was synced (a log cut at an entry boundary verifies as a shorter chain);
//! - `subject-keys.bin`: whole slots, readable subject ids, one slot per subject;
//! - `db/` (sled, which checks its own checksums as it reads, but recovers a damaged log by
//!   cutting it at the damage): still holds every change event `store.head` says was flushed;
//!   every tree readable; each
//!   subject's metadata decodes and its links point back to it; every sealed record opens
//!   (AES-GCM authenticates it with its tree and key) under its subject's key and decodes; each
//!   live subject's ledger directory lists exactly its ledger entries, each imported one with its
//!   source event's digest (`ledger.rs`: an entry not listed is not read, a digest missing would
//!   let a re-import write an event again);
//!   the events index holds every event it covers, and no retired subject's earlier event
//!   remains (`retire.rs`); a sealed record of a subject with neither metadata nor a key (one its
//!   erasure or merge left behind) is noted;
//! - `restore.pending`: a restore into the directory that did not finish (its erasure journal
//!   not replayed) is damage too.

use std::path::Path;

use domicile_types::{Link, RegionId, SUBJECT_ID_LEN, SubjectId};
use hashbrown::{HashMap, HashSet};

use super::MetaEntry;
use crate::store::codec::context;
use crate::store::vault::{SubjectKey, VaultScan};

/// What a check found.
#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub subjects: u64,
    pub sealed_records: u64,
    pub audit_entries: u64,
    /// Damage: the node must not serve from these files as they are.
    pub problems: Vec<String>,
    /// Explainable by an interrupted write (a crash): reported, not damage.
    pub notes: Vec<String>,
}

impl CheckReport {
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Trees whose values are sealed under the subject their key names (after the position in
/// `ledger`, first in the others). `consent` is the ledger's earlier layout (`ledger.rs`), empty
/// once a node of this version has opened the files; until then its entries are checked too.
/// `ledger_segments` holds several per value (`segments.rs`).
const SEALED_TREES: [&str; 7] =
    ["subjects", "ledger", "ledger_segments", "consent", "current", "interactions", "rights"];

/// The subject a key of tree `name` names, and the associated data its value is sealed with.
fn sealed_for(name: &str, key: &[u8]) -> Option<(SubjectId, Vec<u8>)> {
    if name == "ledger" {
        let (position, subject) = super::ledger::parse_entry_key(key).ok()?;
        return Some((subject, super::ledger::entry_context(&subject, position)));
    }
    let subject = SubjectId::from_slice(key.get(..SUBJECT_ID_LEN)?).ok()?;
    Some((subject, context(name.as_bytes(), key)))
}

/// Calls `each` with every sealed value of tree `name`: the subject it is sealed for, its
/// associated data and its bytes, one at a time (a region's ledger does not fit in memory).
/// What cannot be read goes to `problems` (and ends the tree's reading, if sled fails).
fn each_sealed(
    tree: &sled::Tree,
    name: &str,
    db_name: &str,
    problems: &mut Vec<String>,
    mut each: impl FnMut(SubjectId, &[u8], &[u8]),
) {
    for item in tree.iter() {
        let (key, value) = match item {
            Ok(kv) => kv,
            Err(e) => {
                problems.push(format!("{db_name} tree {name}: unreadable: {e}"));
                break;
            }
        };
        if name == "ledger_segments" {
            match super::segments::segment_entries(&key, &value) {
                Ok(entries) => {
                    for (position, subject, sealed) in entries {
                        each(subject, &super::ledger::entry_context(&subject, position), &sealed);
                    }
                }
                Err(_) => problems.push(format!("{db_name} tree {name}: a segment that does not decode")),
            }
            continue;
        }
        match sealed_for(name, &key) {
            Some((subject, sealed_with)) => each(subject, &sealed_with, &value),
            None => problems.push(format!("{db_name} tree {name}: a key that names no subject")),
        }
    }
}

/// Checks the embedded-store files of `region` in `dir` (the node must be stopped: sled holds a
/// lock on its database while a node runs).
pub fn check(dir: &Path, region: &RegionId) -> CheckReport {
    let mut report = CheckReport::default();
    if dir.join(super::backup::RESTORE_PENDING_FILE).exists() {
        report.problems.push(super::backup::unfinished_restore(dir));
    }
    check_audit(dir, region, &mut report);
    let keys = check_vault(dir, &mut report);
    check_db(dir, keys.as_ref(), &mut report);
    report
}

fn check_audit(dir: &Path, region: &RegionId, report: &mut CheckReport) {
    let path = dir.join(domicile_audit::FILE_NAME);
    match domicile_audit::verify_file(&path) {
        Ok(verified) => {
            report.audit_entries = verified.entries;
            if let Some(found) = &verified.region
                && found != region.as_str()
            {
                report.problems.push(format!("{}: entries of region `{found}`, not `{region}`", path.display()));
            }
            if let Some(torn) = verified.torn_tail {
                report.notes.push(format!(
                    "{}: line {} is an incomplete entry ({} bytes; a write cut short by a crash, dropped at start)",
                    path.display(),
                    torn.line,
                    torn.bytes
                ));
            }
            match domicile_audit::read_synced_head(dir) {
                Ok(synced) if synced > verified.head_seq => report.problems.push(format!(
                    "{}: ends at entry {}, but entry {synced} was synced (audit.head): entries lost from its end",
                    path.display(),
                    verified.head_seq
                )),
                Ok(_) => {}
                Err(e) => report.problems.push(e.to_string()),
            }
        }
        Err(domicile_audit::VerifyError::Tampered(t)) => {
            report.problems.push(format!("{}: chain broken at {t}", path.display()));
        }
        Err(domicile_audit::VerifyError::Io(e)) => {
            report.problems.push(format!("{}: cannot read: {e}", path.display()));
        }
    }
}

fn check_vault(dir: &Path, report: &mut CheckReport) -> Option<HashMap<SubjectId, [u8; 32]>> {
    let path = dir.join(VaultScan::FILE_NAME);
    let scan = match VaultScan::read(dir) {
        Ok(scan) => scan,
        Err(e) => {
            report.problems.push(format!("{}: cannot read: {e}", path.display()));
            return None;
        }
    };
    if scan.trailing != 0 {
        report.notes.push(format!(
            "{}: {} bytes after the last whole key slot (a slot write cut short, or a truncated file)",
            path.display(),
            scan.trailing
        ));
    }
    for index in &scan.unreadable {
        report.problems.push(format!("{}: key slot {index} names no valid subject id", path.display()));
    }
    let mut keys = HashMap::new();
    for (index, subject, key) in scan.slots {
        if keys.insert(subject, key).is_some() {
            report.problems.push(format!("{}: key slot {index} repeats subject {subject}", path.display()));
        }
    }
    Some(keys)
}

fn check_db(dir: &Path, keys: Option<&HashMap<SubjectId, [u8; 32]>>, report: &mut CheckReport) {
    let path = dir.join("db");
    if !path.exists() {
        report.problems.push(format!("{}: missing", path.display()));
        return;
    }
    let db = match super::heads::sled_config(&path).and_then(|config| config.open().map_err(super::backend)) {
        Ok(db) => db,
        Err(e) => {
            report.problems.push(format!("{}: cannot open (is the node still running?): {e}", path.display()));
            return;
        }
    };
    let trees = db.open_tree("events").and_then(|events| Ok((events, db.open_tree("counters")?)));
    match trees.map_err(super::backend).and_then(|(events, counters)| super::heads::lost(dir, &events, &counters)) {
        Ok(Some(lost)) => report.problems.push(format!("{}: {lost}: acknowledged writes lost", path.display())),
        Ok(None) => {}
        Err(e) => report.problems.push(format!("{}: {e}", path.display())),
    }
    super::retire::check(&db, &path.display().to_string(), &mut report.problems, &mut report.notes);
    let tree = |name: &str| db.open_tree(name);
    let (meta, links) = match (tree("meta"), tree("links")) {
        (Ok(meta), Ok(links)) => (meta, links),
        (Err(e), _) | (_, Err(e)) => {
            report.problems.push(format!("{}: cannot open a tree: {e}", path.display()));
            return;
        }
    };
    let db_name = path.display().to_string();

    // Subjects and their links.
    let mut subjects = HashSet::new();
    let mut link_owner: HashMap<Vec<u8>, SubjectId> = HashMap::new();
    for item in meta.iter() {
        let (key, value) = match item {
            Ok(kv) => kv,
            Err(e) => {
                report.problems.push(format!("{db_name} tree meta: unreadable: {e}"));
                break;
            }
        };
        let Ok(subject) = SubjectId::from_slice(&key) else {
            report.problems.push(format!("{db_name} tree meta: a key that is not a subject id"));
            continue;
        };
        subjects.insert(subject);
        match serde_json::from_slice::<MetaEntry>(&value) {
            Ok(entry) => {
                for link in entry.links {
                    link_owner.insert(link.as_bytes().to_vec(), subject);
                }
            }
            Err(_) => report.problems.push(format!("{db_name} tree meta: subject {subject}: metadata does not decode")),
        }
        if keys.is_some_and(|k| !k.contains_key(&subject)) {
            report.problems.push(format!(
                "{db_name}: subject {subject} has no key slot in {} (its sealed records cannot be read; \
                 an erasure interrupted by a crash, or a damaged key file)",
                VaultScan::FILE_NAME
            ));
        }
    }
    report.subjects = subjects.len() as u64;
    for item in links.iter() {
        let (key, value) = match item {
            Ok(kv) => kv,
            Err(e) => {
                report.problems.push(format!("{db_name} tree links: unreadable: {e}"));
                break;
            }
        };
        let (Ok(_link), Ok(subject)) = (Link::from_slice(&key), SubjectId::from_slice(&value)) else {
            report.problems.push(format!("{db_name} tree links: an entry that is not a link and a subject id"));
            continue;
        };
        if !subjects.contains(&subject) {
            report.problems.push(format!("{db_name} tree links: a link to subject {subject}, which has no metadata"));
        } else if link_owner.get(key.as_ref()) != Some(&subject) {
            report
                .problems
                .push(format!("{db_name} tree links: a link of subject {subject} its metadata does not list"));
        }
    }

    // Every sealed record, opened as the node would.
    let Some(keys) = keys else { return };
    check_directory(&db, keys, &db_name, report);
    for name in SEALED_TREES {
        let tree = match db.open_tree(name) {
            Ok(tree) => tree,
            Err(e) => {
                report.problems.push(format!("{db_name} tree {name}: cannot open: {e}"));
                continue;
            }
        };
        let mut failed: HashMap<SubjectId, u64> = HashMap::new();
        let mut orphaned: HashMap<SubjectId, u64> = HashMap::new();
        let mut sealed_records = 0;
        each_sealed(&tree, name, &db_name, &mut report.problems, |subject, sealed_with, value| {
            sealed_records += 1;
            let Some(key_bytes) = keys.get(&subject) else {
                // Without metadata either, the subject is gone (a subject with metadata but no key
                // is damage, reported above).
                if !subjects.contains(&subject) {
                    *orphaned.entry(subject).or_default() += 1;
                }
                return;
            };
            let opened = SubjectKey::from_bytes(key_bytes)
                .and_then(|k| k.open(sealed_with, value))
                .ok()
                .filter(|plain| serde_json::from_slice::<serde::de::IgnoredAny>(plain).is_ok());
            if opened.is_none() {
                *failed.entry(subject).or_default() += 1;
            }
        });
        report.sealed_records += sealed_records;
        // An erasure or merge removes every record of the subject whose key it destroys, in the
        // transaction that removes its metadata, and every writer checks its subject under the
        // write lock: none should be left. One that is cannot be read (its key is gone), so it
        // is a note, not damage, named for the operator.
        let mut orphaned: Vec<_> = orphaned.into_iter().collect();
        orphaned.sort();
        for (subject, count) in orphaned {
            report.notes.push(format!(
                "{db_name} tree {name}: {count} record(s) of subject {subject}, which has neither metadata nor a key: \
                 left behind by its erasure or merge (unreadable: its key is destroyed)"
            ));
        }
        let mut failed: Vec<_> = failed.into_iter().collect();
        failed.sort();
        for (subject, count) in failed {
            report.problems.push(format!(
                "{db_name} tree {name}: {count} record(s) of subject {subject} fail authentication (damaged record or key)"
            ));
        }
    }
}

/// Each live subject's ledger directory against its ledger entries: every entry listed once,
/// with its source event's digest if it was imported, and nothing else listed. Entries of
/// subjects without a key are noted with the sealed trees above.
fn check_directory(db: &sled::Db, keys: &HashMap<SubjectId, [u8; 32]>, db_name: &str, report: &mut CheckReport) {
    use super::ledger::{Listed, entry_context, parse_entry_key, read_directory, scan_directory};
    use crate::store::import_source::{LedgerSource, digest_of};
    let trees = (db.open_tree("ledger"), db.open_tree("ledger_segments"), db.open_tree("ledger_dir"));
    let (Ok(ledger), Ok(segments), Ok(directory)) = trees else {
        report.problems.push(format!("{db_name}: cannot open the ledger, ledger_segments or ledger_dir tree"));
        return;
    };
    if let Ok(earlier) = db.open_tree("consent")
        && !earlier.is_empty()
    {
        report.notes.push(format!(
            "{db_name} tree consent: {} ledger entr(ies) in the earlier layout, moved when a node of this version opens the files",
            earlier.len()
        ));
    }
    let mut expected: HashMap<SubjectId, Vec<Listed>> = HashMap::new();
    let singles = ledger.iter().flatten().filter_map(|(key, value)| {
        let (position, subject) = parse_entry_key(&key).ok()?;
        Some((position, subject, value))
    });
    // Segments that do not decode are reported with the sealed trees.
    let in_segments = segments
        .iter()
        .flatten()
        .flat_map(|(key, value)| super::segments::segment_entries(&key, &value).unwrap_or_default());
    for (position, subject, value) in singles.chain(in_segments) {
        let Some(Ok(subject_key)) = keys.get(&subject).map(SubjectKey::from_bytes) else { continue };
        // An entry that does not open is reported with its tree.
        let Ok(plain) = subject_key.open(&entry_context(&subject, position), &value) else { continue };
        let source = LedgerSource::imported_of_plain(&plain).ok().flatten().map(|(s, _)| digest_of(&subject_key, &s));
        expected.entry(subject).or_default().push(Listed { position, source });
    }
    let mut listed_subjects: HashSet<SubjectId> = HashSet::new();
    let mut keyless: HashMap<SubjectId, u64> = HashMap::new();
    for key in directory.iter().keys().flatten() {
        if let Some(Ok(subject)) = key.get(..SUBJECT_ID_LEN).map(SubjectId::from_slice) {
            if keys.contains_key(&subject) {
                listed_subjects.insert(subject);
            } else {
                *keyless.entry(subject).or_default() += 1;
            }
        }
    }
    // As with the sealed trees' leftovers: a listing of a subject whose key is gone names only
    // positions and keyed digests nothing can tie to an event any more.
    let mut keyless: Vec<_> = keyless.into_iter().collect();
    keyless.sort();
    for (subject, chunks) in keyless {
        report.notes.push(format!(
            "{db_name} tree ledger_dir: {chunks} chunk(s) of subject {subject}, which has no key: left behind by its erasure or merge"
        ));
    }
    let mut subjects: Vec<SubjectId> = expected.keys().copied().chain(listed_subjects).collect();
    subjects.sort();
    subjects.dedup();
    for subject in subjects {
        let listed = match (read_directory(&directory, &subject), scan_directory(&directory, &subject)) {
            (Ok(read), Ok(scanned)) if read == scanned => read.listed(),
            (Ok(_), Ok(_)) => {
                report.problems.push(format!(
                    "{db_name} tree ledger_dir: subject {subject}: chunks not numbered from 0 or not full before the last (the node reads only up to the first not full)"
                ));
                continue;
            }
            _ => {
                report
                    .problems
                    .push(format!("{db_name} tree ledger_dir: subject {subject}: a chunk that does not decode"));
                continue;
            }
        };
        let mut want = expected.remove(&subject).unwrap_or_default();
        want.sort_by_key(|l| l.position);
        if listed != want {
            let (listed_set, want_set): (HashSet<Listed>, HashSet<Listed>) =
                (listed.iter().copied().collect(), want.iter().copied().collect());
            let twice = listed.len() - listed_set.len();
            let missing = want_set.difference(&listed_set).count();
            let other = listed_set.difference(&want_set).count() + twice;
            report.problems.push(format!(
                "{db_name} tree ledger_dir: subject {subject}: {missing} ledger entr(ies) not listed as they are \
                 (unread, or a re-import would write them again), {other} listing(s) no entry backs"
            ));
        }
    }
}
