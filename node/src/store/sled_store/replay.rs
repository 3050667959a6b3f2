//! The erasure journal read back and replayed after a restore (deploy/README.md, "Backup and
//! restore of a node"): every merge, unmerge and erasure made since the backup is made again on
//! what the backup holds, so nothing erased since comes back (invariant 6).
//!
//! The journal names subjects by the ids they had on the lost machine; subjects created there
//! after the backup (registrations, an unmerge's halves) are not in the restored store, yet they
//! may hold what it holds (a subject of the backup merged into one of them). The replay keeps an
//! alias map for them: an id the restored store does not hold → the restored subject holding
//! that id's data from the backup. Rules, for each line in order (`resolve(id)` = `id` if the
//! store holds it, else its alias's target, else `id`):
//!
//! - `merge F I` with both resolved ids held: merged again (as the lost machine did), at its
//!   journaled time. With only `resolve(F)` held: `I` becomes an alias of it (I holds F's data
//!   now); this also carries an alias on when an aliased subject is merged into another new
//!   one (`merge X N`, `merge N M`: M → X). With `resolve(F)` not held: nothing of the backup
//!   moved.
//! - `unmerge M F K R` (M split into K, its own side, and R, F's side), `m = resolve(M)`,
//!   `f = resolve(F)`:
//!   - `m` not held: M holds nothing of the backup; R is an alias of `f` if the store holds it
//!     (a merge of F into M the journal lost: it is appended after the merge commits);
//!   - `f` in `m`'s lineage (the merge of F was in the backup or replayed): split again, with
//!     the ids K and R;
//!   - `f == m`: M was made after the backup and took F's data (`merge F M` made M an alias):
//!     R, F's side, is an alias of `m`, K holds nothing of the backup. Subjects merged into
//!     M since (replayed as merges into `m`: its lineage beyond the one the alias recorded)
//!     are K's: they are split off `m` into K, one by one (the first with the id K, each
//!     later one with a fresh id merged into K), and what is left gets the id R;
//!   - otherwise (F brought nothing of the backup): K is an alias of `m`, R of `f` if held.
//! - an erasure of `S`: `resolve(S)` erased if the store holds it (erasing an alias erases its
//!   target, with everything merged into it). An erasure is journaled as one line for each
//!   subject merged into `S` (its lineage), then `S`'s own: a merge's line, written after its
//!   commit, may be lost with a node that died in between, and the backup then holds the
//!   merged-away subject apart; its line erases it (after a replayed merge it is held by no one,
//!   and changes nothing).
//!
//! Lines from before the backup name retired subjects (a merge's `F`, an unmerge's `M`), which
//! the store does not hold: they change nothing. An alias made for an id that is later retired
//! (merged away, split) stays: only an unmerge's `F` names such an id again, to find its data
//! in a lineage. Every line the replay cannot apply is an error, and the restore then leaves its
//! directory unusable (`backup::RESTORE_PENDING_FILE`).

use std::collections::HashMap;
use std::path::Path;

use domicile_types::SubjectId;

use super::{SledStore, backend};
use crate::store::{RightsRequestRecord, StoreError};

/// One line of the erasure journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalEntry {
    /// `<subject> <unix seconds>`
    Erasure { subject: SubjectId, at: i64 },
    /// `merge <from> <into> <unix seconds>`
    Merge { from: SubjectId, into: SubjectId, at: i64 },
    /// `unmerge <merged> <from> <kept> <restored> <unix seconds>`
    Unmerge { merged: SubjectId, from: SubjectId, kept: SubjectId, restored: SubjectId, at: i64 },
}

impl JournalEntry {
    fn at(&self) -> i64 {
        match self {
            Self::Erasure { at, .. } | Self::Merge { at, .. } | Self::Unmerge { at, .. } => *at,
        }
    }
}

/// Several journals (say, one per disk the journal moved to) as one, in the order given, which
/// must be the order they were written in: a journal that starts before the one before it ends
/// is refused (replayed out of order, an erasure would run before the merge that gave it what
/// the backup holds, and the erased person would come back). A line found again (an overlapping
/// copy) is replayed once. Found by a review.
pub fn combine_journals(journals: Vec<(String, Vec<JournalEntry>)>) -> Result<Vec<JournalEntry>, StoreError> {
    let mut out: Vec<JournalEntry> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut previous: Option<(String, i64)> = None;
    for (name, entries) in journals {
        if let (Some((before, ended)), Some(first)) = (&previous, entries.first())
            && first.at() < *ended
        {
            return Err(StoreError::Corrupt(format!(
                "{name} starts before {before} ends: give the erasure journals oldest first"
            )));
        }
        if let Some(last) = entries.iter().map(JournalEntry::at).max() {
            previous = Some((name.clone(), last.max(previous.as_ref().map_or(i64::MIN, |(_, t)| *t))));
        }
        for entry in entries {
            if seen.insert(format!("{entry:?}")) {
                out.push(entry);
            }
        }
    }
    Ok(out)
}

/// Reads an erasure journal, line by line. A damaged line is an error naming its number: a
/// journal that cannot be read whole must not be replayed in part.
pub fn read_erasure_journal(path: &Path) -> Result<Vec<JournalEntry>, StoreError> {
    let text = std::fs::read_to_string(path).map_err(|e| backend(format!("{}: {e}", path.display())))?;
    let subject = |id: &str| hex::decode(id).ok().and_then(|id| SubjectId::from_slice(&id).ok());
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split(' ').collect();
        let parsed = match fields.as_slice() {
            ["merge", from, into, at] => match (subject(from), subject(into), at.parse::<i64>()) {
                (Some(from), Some(into), Ok(at)) => Some(JournalEntry::Merge { from, into, at }),
                _ => None,
            },
            ["unmerge", merged, from, kept, restored, at] => {
                match (subject(merged), subject(from), subject(kept), subject(restored), at.parse::<i64>()) {
                    (Some(merged), Some(from), Some(kept), Some(restored), Ok(at)) => {
                        Some(JournalEntry::Unmerge { merged, from, kept, restored, at })
                    }
                    _ => None,
                }
            }
            [id, at] => match (subject(id), at.parse::<i64>()) {
                (Some(subject), Ok(at)) => Some(JournalEntry::Erasure { subject, at }),
                _ => None,
            },
            _ => None,
        };
        match parsed {
            Some(entry) => out.push(entry),
            // A last line cut by a crash was never followed by its key's destruction.
            None if n + 1 == text.lines().count() && !text.ends_with('\n') => {}
            None => {
                return Err(StoreError::Corrupt(format!(
                    "{} line {}: not `<subject id> <time>`",
                    path.display(),
                    n + 1
                )));
            }
        }
    }
    Ok(out)
}

/// What the restored store holds of an id it does not hold (see the module documentation).
struct Alias {
    /// The restored subject holding that id's data from the backup.
    target: SubjectId,
    /// `target`'s lineage when the alias was made: subjects merged into `target` since are not
    /// part of the data the alias was made from.
    lineage: Vec<SubjectId>,
}

/// One replay of a journal on a restored store.
struct Replay<'a> {
    store: &'a SledStore,
    aliases: HashMap<SubjectId, Alias>,
    now: i64,
    /// How many lines changed the store.
    applied: usize,
}

impl Replay<'_> {
    fn held(&self, id: &SubjectId) -> Result<bool, StoreError> {
        Ok(self.store.meta.get(id.as_bytes()).map_err(backend)?.is_some())
    }

    fn resolve(&self, id: &SubjectId) -> Result<SubjectId, StoreError> {
        if self.held(id)? {
            return Ok(*id);
        }
        Ok(self.aliases.get(id).map_or(*id, |alias| alias.target))
    }

    /// The ids merged into `id` (its record's lineage).
    fn lineage(&self, id: &SubjectId) -> Result<Vec<SubjectId>, StoreError> {
        let record = self.store.subject_record_raw(id)?;
        Ok(record.map(|r| r.lineage.iter().map(|l| l.from).collect()).unwrap_or_default())
    }

    fn alias(&mut self, id: &SubjectId, target: &SubjectId) -> Result<(), StoreError> {
        let lineage = self.lineage(target)?;
        self.aliases.insert(*id, Alias { target: *target, lineage });
        Ok(())
    }

    fn merge(&mut self, from: &SubjectId, into: &SubjectId, at: i64) -> Result<(), StoreError> {
        let (f, i) = (self.resolve(from)?, self.resolve(into)?);
        if !self.held(&f)? {
            return Ok(());
        }
        if !self.held(&i)? {
            return self.alias(into, &f);
        }
        if f == i {
            return Err(StoreError::Corrupt(format!(
                "erasure journal: a merge of {from} into {into}, the same subject"
            )));
        }
        self.store.merge_subjects(&i, &f, self.now, at, None)?;
        self.applied += 1;
        Ok(())
    }

    fn unmerge(&mut self, ids: [&SubjectId; 4]) -> Result<(), StoreError> {
        let [merged, from, kept, restored] = ids;
        let (m, f) = (self.resolve(merged)?, self.resolve(from)?);
        if !self.held(&m)? {
            if f != m && self.held(&f)? {
                self.alias(restored, &f)?;
            }
            return Ok(());
        }
        let lineage = self.lineage(&m)?;
        if f != m && lineage.contains(&f) {
            self.store.unmerge_subject(&m, &f, kept, restored, self.now, None)?;
            self.applied += 1;
            return Ok(());
        }
        if f != m {
            self.alias(kept, &m)?;
            if self.held(&f)? {
                self.alias(restored, &f)?;
            }
            return Ok(());
        }
        // `merged` took `from`'s data after the backup; what was merged into it since is K's.
        let made_with = [merged, from]
            .into_iter()
            .filter_map(|id| self.aliases.get(id))
            .find(|alias| alias.target == m)
            .map(|alias| alias.lineage.clone())
            .ok_or_else(|| StoreError::Corrupt(format!("erasure journal: an unmerge of {merged} from itself")))?;
        let since: Vec<SubjectId> = lineage.into_iter().filter(|id| !made_with.contains(id)).collect();
        if since.is_empty() {
            return self.alias(restored, &m);
        }
        let mut rest = m;
        for (n, split_off) in since.iter().enumerate() {
            let left = if n + 1 == since.len() { *restored } else { fresh_id()? };
            let out = if n == 0 { *kept } else { fresh_id()? };
            self.store.unmerge_subject(&rest, split_off, &left, &out, self.now, None)?;
            // Its data is `out` now (the first K itself, the others merged into K): an unmerge of
            // K from it finds it there.
            self.alias(split_off, &out)?;
            if n > 0 {
                self.store.merge_subjects(kept, &out, self.now, self.now, None)?;
            }
            rest = left;
        }
        self.applied += 1;
        Ok(())
    }

    fn erase(&mut self, subject: &SubjectId, at: i64) -> Result<(), StoreError> {
        let subject = self.resolve(subject)?;
        if !self.held(&subject)? {
            return Ok(());
        }
        let mut id = [0u8; domicile_types::rights::REQUEST_ID_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
            .map_err(|_| backend("random source failed"))?;
        let request = RightsRequestRecord {
            request_id: domicile_types::rights::RequestId::from_bytes(id).to_string(),
            kind: domicile_types::rights::RightsKind::Erasure.as_str().into(),
            received_at: at,
            deadline_at: None,
            status: "completed".into(),
            deadline_basis: "an erasure made after the restored backup, replayed from the erasure journal".into(),
            completed_at: Some(self.now),
            ..Default::default()
        };
        self.store.erase_subject(&subject, self.now, &request, None)?;
        self.applied += 1;
        Ok(())
    }
}

/// A new random subject id (an intermediate subject of a replayed unmerge).
fn fresh_id() -> Result<SubjectId, StoreError> {
    let mut id = [0u8; domicile_types::SUBJECT_ID_LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .map_err(|_| backend("random source failed"))?;
    Ok(SubjectId::from_bytes(id))
}

impl SledStore {
    /// Replays `journal` on this store (after a restore), in order, by the rules of the module
    /// documentation; returns how many lines changed something. Audited like any merge, unmerge
    /// and erasure (erasures as completed requests replayed from the journal). An error leaves
    /// the lines before it applied: the caller must not serve this store.
    pub fn replay_erasures(&self, journal: &[JournalEntry], now: i64) -> Result<usize, StoreError> {
        let mut replay = Replay { store: self, aliases: HashMap::new(), now, applied: 0 };
        for entry in journal {
            match entry {
                JournalEntry::Merge { from, into, at } => replay.merge(from, into, *at)?,
                JournalEntry::Unmerge { merged, from, kept, restored, .. } => {
                    replay.unmerge([merged, from, kept, restored])?
                }
                JournalEntry::Erasure { subject, at } => replay.erase(subject, *at)?,
            }
        }
        Ok(replay.applied)
    }
}
