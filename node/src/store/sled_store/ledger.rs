//! The consent ledger's layout on sled: entries in ledger order, and a directory per subject.
//!
//! Entries are in position order: new entries take the next positions, so every write appends
//! at the end. A write stores its entries in segments (tree `ledger_segments`, `segments.rs`);
//! an entry that moves (a merge, an unmerge, the move from the earlier layout) has a key of its
//! own in tree `ledger`: ledger position ‖ subject id → the sealed entry. Keyed by subject first
//! (the layout before this one, tree `consent`), each entry was a new key at a random place:
//! sled splits a leaf at 16 entries and writes every split leaf whole, which cost an import
//! 10–15 µs of CPU per row, a third of what the node may spend per row at 50,000 rows/s
//! (BENCHMARKS.md). The entry is sealed with subject id ‖ position as associated data
//! (`codec::consent_key`), as before, so the same ciphertext is valid in every layout. The
//! subject is in the key too: an entry an unmerge cannot attribute stays with both halves, at one
//! position.
//!
//! Tree `ledger_dir`: subject id ‖ chunk number → the subject's entries, [`CHUNK_ITEMS`] to a
//! chunk: each its position and, for an imported entry, the keyed digest of its source event
//! (`store::import_source`), so an import finds a subject's earlier copy of an event without
//! opening its ledger. A write rewrites the subject's last chunk (a value replaced in place)
//! and starts a new one every [`CHUNK_ITEMS`] entries. Every writer of a subject reads its
//! directory under the write lock and writes it in the transaction that writes the entries; a
//! merge moves the entries and their listing, an unmerge lists each half afresh, an erasure
//! removes both.
//!
//! A store written with the earlier layout (trees `consent` and `imports`) is moved to this one
//! when it opens ([`SledStore::with_ledger_by_position`]), one subject per transaction.

use std::collections::{BTreeMap, HashMap};

use domicile_types::{SUBJECT_ID_LEN, SubjectId};
use sled::Transactional;

use super::segments::EntryAt;
use super::{SledStore, StoreError, SubjectKey, backend, consent_key, context, open};
use crate::store::import_source::{DIGEST_LEN, LedgerSource, digest_of, source_digest};

/// `counters` key and value that fence off binaries of the earlier layout: they read this key as
/// the ledger position their import index covers, refuse a value that is not 8 bytes as corrupt,
/// and so do not open a store whose ledger they would find empty (and whose subjects their merges
/// and erasures would lose). Going back means restoring a backup taken before the upgrade.
pub(super) const EARLIER_LAYOUT_FENCE: (&[u8], &[u8]) = (b"import_index_covers", b"ledger in position order");

/// Entries listed in one directory chunk: a write rewrites at most this many, and a subject
/// with a long history is read in few values.
pub(super) const CHUNK_ITEMS: usize = 32;

/// A ledger key: the position, then the subject.
pub(super) type EntryKey = [u8; 8 + SUBJECT_ID_LEN];

/// The `ledger` key of `subject`'s entry at `position`.
pub(super) fn entry_key(subject: &SubjectId, position: u64) -> EntryKey {
    let mut key = [0u8; 8 + SUBJECT_ID_LEN];
    key[..8].copy_from_slice(&position.to_be_bytes());
    key[8..].copy_from_slice(subject.as_bytes());
    key
}

/// The position and subject of a `ledger` key.
pub(super) fn parse_entry_key(key: &[u8]) -> Result<(u64, SubjectId), StoreError> {
    let corrupt = || StoreError::Corrupt("ledger key".into());
    let position = key.get(..8).and_then(|p| <[u8; 8]>::try_from(p).ok()).ok_or_else(corrupt)?;
    let subject = key.get(8..).filter(|s| s.len() == SUBJECT_ID_LEN).ok_or_else(corrupt)?;
    Ok((u64::from_be_bytes(position), SubjectId::from_slice(subject).map_err(|_| corrupt())?))
}

/// Associated data of `subject`'s entry at `position`: the same under both layouts.
pub(super) fn entry_context(subject: &SubjectId, position: u64) -> Vec<u8> {
    context(b"consent", &consent_key(subject, position))
}

/// A merge's move of one ledger entry: where it is, its new key, its value sealed for the
/// subject it joins.
pub(super) type LedgerMove = (EntryAt, EntryKey, Vec<u8>);

/// One entry of a subject's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Listed {
    pub(super) position: u64,
    /// The keyed digest of an imported entry's source event.
    pub(super) source: Option<[u8; DIGEST_LEN]>,
}

impl Listed {
    /// The listing of a ledger entry with `source` (imported from it) at `position`.
    pub(super) fn of(key: &SubjectKey, position: u64, source: Option<&crate::store::ImportEvidence>) -> Self {
        Self { position, source: source.map(|s| digest_of(key, s)) }
    }
}

fn chunk_key(subject: &SubjectId, chunk: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(SUBJECT_ID_LEN + 4);
    key.extend_from_slice(subject.as_bytes());
    key.extend_from_slice(&chunk.to_be_bytes());
    key
}

fn chunk_number(key: &[u8]) -> Result<u32, StoreError> {
    let chunk = key.get(SUBJECT_ID_LEN..).and_then(|c| <[u8; 4]>::try_from(c).ok());
    chunk.map(u32::from_be_bytes).ok_or_else(|| StoreError::Corrupt("ledger directory key".into()))
}

fn encode_chunk(items: &[Listed]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.len() * (9 + DIGEST_LEN));
    for item in items {
        out.extend_from_slice(&item.position.to_be_bytes());
        match item.source {
            Some(digest) => {
                out.push(1);
                out.extend_from_slice(&digest);
            }
            None => out.push(0),
        }
    }
    out
}

fn decode_chunk(mut bytes: &[u8]) -> Result<Vec<Listed>, StoreError> {
    let corrupt = || StoreError::Corrupt("ledger directory".into());
    let mut items = Vec::new();
    while !bytes.is_empty() {
        let (position, rest) = bytes.split_first_chunk::<8>().ok_or_else(corrupt)?;
        let (tag, rest) = rest.split_first().ok_or_else(corrupt)?;
        let (source, rest) = match tag {
            0 => (None, rest),
            1 => {
                let (digest, rest) = rest.split_first_chunk::<DIGEST_LEN>().ok_or_else(corrupt)?;
                (Some(*digest), rest)
            }
            _ => return Err(corrupt()),
        };
        items.push(Listed { position: u64::from_be_bytes(*position), source });
        bytes = rest;
    }
    Ok(items)
}

/// A subject's directory as read under the write lock: its chunks, in order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Directory {
    chunks: Vec<(u32, Vec<Listed>)>,
}

/// A directory's writes: (chunk key, its new value).
pub(super) type ChunkWrites = Vec<(Vec<u8>, Vec<u8>)>;

impl Directory {
    /// Every entry listed, in position order.
    pub(super) fn listed(&self) -> Vec<Listed> {
        let mut all: Vec<Listed> = self.chunks.iter().flat_map(|(_, items)| items.iter().copied()).collect();
        all.sort_by_key(|l| l.position);
        all
    }

    pub(super) fn positions(&self) -> Vec<u64> {
        self.listed().into_iter().map(|l| l.position).collect()
    }

    /// Per digest sought (`None`: not an imported entry), the lowest position of the entries
    /// imported from its event (a merge can bring two). One pass over the listing, against the
    /// few digests a call brings for the subject (a map of them only for many): a map of a long
    /// history's listing, built per row, cost an import of hundreds of entries per subject a
    /// quarter of its rate.
    pub(super) fn find_sources(&self, sought: &[Option<[u8; DIGEST_LEN]>]) -> Vec<Option<u64>> {
        let mut found: Vec<Option<u64>> = vec![None; sought.len()];
        let mut note = |at: usize, position: u64| {
            if let Some(slot) = found.get_mut(at) {
                *slot = Some(slot.map_or(position, |p| p.min(position)));
            }
        };
        let items = self.chunks.iter().flat_map(|(_, items)| items);
        let wanted: Vec<(usize, [u8; DIGEST_LEN])> =
            sought.iter().enumerate().filter_map(|(at, digest)| Some((at, (*digest)?))).collect();
        if wanted.len() <= FEW_SOUGHT {
            for item in items {
                let Some(digest) = item.source else { continue };
                for (at, _) in wanted.iter().filter(|(_, d)| *d == digest) {
                    note(*at, item.position);
                }
            }
        } else {
            let mut by_digest: HashMap<[u8; DIGEST_LEN], Vec<usize>> = HashMap::new();
            for (at, digest) in wanted {
                by_digest.entry(digest).or_default().push(at);
            }
            for item in items {
                for at in item.source.and_then(|d| by_digest.get(&d)).into_iter().flatten() {
                    note(*at, item.position);
                }
            }
        }
        found
    }

    /// Its last chunk, which the next entries go to.
    pub(super) fn tail(&self) -> Tail {
        Tail { last: self.chunks.last().cloned() }
    }

    /// The writes that list those of `added` it does not list yet after what it lists: an entry
    /// both of a merge's halves hold (kept by both halves of an unmerge that could not attribute
    /// it) is listed once, and so is an entry both layouts hold when a store is moved.
    pub(super) fn appending_unlisted(&self, subject: &SubjectId, added: Vec<Listed>) -> ChunkWrites {
        let held: std::collections::HashSet<u64> = self.positions().into_iter().collect();
        let added: Vec<Listed> = added.into_iter().filter(|l| !held.contains(&l.position)).collect();
        self.tail().append(subject, &added)
    }

    /// The writes of a directory listing `items` for a subject that has none.
    pub(super) fn fresh(subject: &SubjectId, items: &[Listed]) -> ChunkWrites {
        Tail::default().append(subject, items)
    }
}

/// Digests a call's rows bring for one subject, up to which [`Directory::find_sources`] compares
/// each listed entry with every one of them (cheaper than hashing, for the usual one or two).
const FEW_SOUGHT: usize = 8;

/// The last chunk of a subject's directory (none if it has none): all a write needs to list its
/// entries after the others.
#[derive(Debug, Default, Clone)]
pub(super) struct Tail {
    last: Option<(u32, Vec<Listed>)>,
}

impl Tail {
    /// The writes that list `added` after what the directory lists: its last chunk filled up,
    /// then new ones. `self` becomes the directory's tail after them (a batch that writes one
    /// subject twice lists the second part after the first).
    pub(super) fn append(&mut self, subject: &SubjectId, added: &[Listed]) -> ChunkWrites {
        if added.is_empty() {
            return Vec::new();
        }
        let (mut chunk, mut items) = match self.last.take() {
            Some((chunk, items)) if items.len() < CHUNK_ITEMS => (chunk, items),
            Some((chunk, _)) => (chunk.saturating_add(1), Vec::new()),
            None => (0, Vec::new()),
        };
        let mut writes = Vec::new();
        for item in added {
            if items.len() == CHUNK_ITEMS {
                writes.push((chunk_key(subject, chunk), encode_chunk(&items)));
                chunk = chunk.saturating_add(1);
                items.clear();
            }
            items.push(*item);
        }
        writes.push((chunk_key(subject, chunk), encode_chunk(&items)));
        self.last = Some((chunk, items));
        writes
    }
}

impl SledStore {
    /// `subject`'s directory.
    pub(super) fn directory(&self, subject: &SubjectId) -> Result<Directory, StoreError> {
        read_directory(&self.directory, subject)
    }

    /// `subject`'s directory for a check before a write (outside the write lock): kept in the
    /// read cache where it is one chunk not full, for the write to find
    /// ([`Self::directory_for_write`]). The cache is exact: every writer of a directory holds the
    /// write lock and drops its subjects' entries before releasing it, and a fill is refused if
    /// any write to the shard came between the read and the fill (`read_cache.rs`).
    pub(super) fn directory_to_write(&self, subject: &SubjectId) -> Result<Directory, StoreError> {
        let epoch = self.cache.epoch(subject);
        let (directory, first) = read_chunks(&self.directory, subject)?;
        if let (Some(raw), [(_, items)]) = (first, directory.chunks.as_slice())
            && items.len() < CHUNK_ITEMS
        {
            self.cache.fill(subject, epoch, |c| c.directory = Some(raw));
        }
        Ok(directory)
    }

    /// `subject`'s directory under the write lock: from the read cache if an import's check
    /// left it there and no write has touched the subject since, else read.
    pub(super) fn directory_for_write(&self, subject: &SubjectId) -> Result<Directory, StoreError> {
        match self.cache.get(subject, |c| c.directory.clone()) {
            Ok(raw) => Ok(Directory { chunks: vec![(0, decode_chunk(&raw)?)] }),
            Err(_) => self.directory(subject),
        }
    }

    /// The tail of `subject`'s directory (its last chunk, found from the end of its keys): what
    /// a write that does not check source events reads, whatever the history's length.
    pub(super) fn directory_tail(&self, subject: &SubjectId) -> Result<Tail, StoreError> {
        let Some(item) = self.directory.scan_prefix(subject.as_bytes()).next_back() else {
            return Ok(Tail::default());
        };
        let (k, v) = item.map_err(backend)?;
        Ok(Tail { last: Some((chunk_number(&k)?, decode_chunk(&v)?)) })
    }

    /// `subject`'s ledger entries, sealed, in position order, each with where it is stored
    /// (`segments.rs`). Read outside the write lock: a merge, unmerge or erasure committed
    /// between reading the directory and an entry moves or removes what it listed, so the read
    /// starts again (the subject gone: `NotFound`). Writers write an entry and its listing in one
    /// transaction, so a listing whose entry stays absent is damage.
    pub(super) fn located_ledger(&self, subject: &SubjectId) -> Result<Vec<(u64, EntryAt, sled::IVec)>, StoreError> {
        for _ in 0..3 {
            let positions = self.directory(subject)?.positions();
            let listed = positions.len();
            let mut entries = Vec::with_capacity(listed);
            for position in positions {
                match self.find_entry(subject, position)? {
                    Some((at, value)) => entries.push((position, at, value)),
                    None => break,
                }
            }
            if entries.len() == listed {
                return Ok(entries);
            }
            if self.meta.get(subject.as_bytes()).map_err(backend)?.is_none() {
                return Err(StoreError::NotFound);
            }
        }
        Err(StoreError::Corrupt("a ledger entry its directory lists".into()))
    }

    /// [`Self::located_ledger`] without the places.
    pub(super) fn sealed_ledger(&self, subject: &SubjectId) -> Result<Vec<(u64, sled::IVec)>, StoreError> {
        Ok(self.located_ledger(subject)?.into_iter().map(|(position, _, sealed)| (position, sealed)).collect())
    }

    /// Where the entries an erasure of `subject` removes are, from its directory (read under the
    /// write lock). The subject's key is gone by then, so the erasure has happened in substance:
    /// a directory or a segment that does not decode (damage) leaves its entries, unreadable, for
    /// `domicile node check` to name, rather than failing every retry and keeping the subject's
    /// metadata and links.
    pub(super) fn erased_ledger_entries(&self, subject: &SubjectId) -> Result<Vec<EntryAt>, StoreError> {
        let positions = match self.directory(subject) {
            Ok(directory) => directory.positions(),
            Err(StoreError::Corrupt(_)) => {
                tracing::warn!(%subject, "erasure: the ledger directory does not decode; its entries stay, unreadable");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let mut at = Vec::with_capacity(positions.len());
        let mut damaged = 0usize;
        for position in positions {
            match self.find_entry(subject, position) {
                Ok(Some((place, _))) => at.push(place),
                Ok(None) => {}
                Err(StoreError::Corrupt(_)) => damaged += 1,
                Err(e) => return Err(e),
            }
        }
        if damaged > 0 {
            tracing::warn!(%subject, damaged, "erasure: ledger entries in segments that do not decode stay, unreadable");
        }
        Ok(at)
    }

    /// `subject`'s ledger entries, opened, in position order.
    pub(super) fn read_ledger<T: serde::de::DeserializeOwned>(
        &self,
        subject: &SubjectId,
    ) -> Result<Vec<T>, StoreError> {
        let key = self.key(subject)?;
        self.sealed_ledger(subject)?
            .into_iter()
            .map(|(position, sealed)| open_entry(&key, subject, position, &sealed))
            .collect()
    }

    /// [`crate::store::Store::imported_positions`]: per source event, the lowest position of
    /// the subject's entries imported from it.
    pub(super) fn imported_in(
        &self,
        subject: &SubjectId,
        key: &SubjectKey,
        sources: &[(String, String)],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let directory = self.directory_to_write(subject)?;
        let sought: Vec<_> = sources.iter().map(|(system, event)| Some(source_digest(key, system, event))).collect();
        Ok(directory.find_sources(&sought))
    }

    /// A merge's ledger change: `from`'s entries re-sealed for `into` at their positions (where
    /// each is, its new key, sealed) and their listing for `into`'s directory (each imported
    /// entry's digest made again under `into`'s key).
    pub(super) fn ledger_moves(
        &self,
        from: (&SubjectId, &SubjectKey),
        into: (&SubjectId, &SubjectKey),
    ) -> Result<(Vec<LedgerMove>, Vec<Listed>), StoreError> {
        let mut moves = Vec::new();
        let mut listed = Vec::new();
        for (position, at, sealed) in self.located_ledger(from.0)? {
            let plain = from.1.open(&entry_context(from.0, position), &sealed)?;
            let source = LedgerSource::imported_of_plain(&plain)?.map(|(source, _)| source);
            listed.push(Listed::of(into.1, position, source.as_ref()));
            let resealed = into.1.seal(&entry_context(into.0, position), &plain)?;
            moves.push((at, entry_key(into.0, position), resealed));
        }
        Ok((moves, listed))
    }

    /// Moves a store written with the earlier layout (trees `consent`, subject id ‖ position →
    /// entry, and `imports`) to this one, at open, before any write: per subject, in one
    /// transaction, its entries (the same sealed bytes) at their positions and its directory,
    /// with each imported entry's digest read from the entry itself (the old index may be behind:
    /// a binary from before it wrote the store). A crash part-way leaves whole subjects moved or
    /// not; the next open moves the rest. An entry that cannot be opened (its subject's key gone
    /// with an erasure interrupted part-way, or damage `domicile node check` names) is moved
    /// without a digest, counted in the log, rather than keeping the region down.
    ///
    /// One way: a binary of the earlier layout would find every moved ledger empty, so the move
    /// leaves a value in `counters` that such a binary refuses to open on ([`EARLIER_LAYOUT_FENCE`]).
    pub(super) fn with_ledger_by_position(self) -> Result<Self, StoreError> {
        let old = self.db.open_tree("consent").map_err(backend)?;
        if old.first().map_err(backend)?.is_some() {
            tracing::info!(
                "moving the consent ledger to its position-ordered layout (a store written by an earlier version)"
            );
            let mut moved = 0usize;
            while let Some((first, _)) = old.first().map_err(backend)? {
                let subject = first.get(..SUBJECT_ID_LEN).map(SubjectId::from_slice);
                let Some(Ok(subject)) = subject else { return Err(StoreError::Corrupt("consent ledger key".into())) };
                self.move_subject_ledger(&old, &subject)?;
                moved += 1;
                if moved.is_multiple_of(100_000) {
                    tracing::info!(subjects = moved, "moving the consent ledger");
                }
            }
            tracing::info!(subjects = moved, "consent ledger moved");
        }
        // The index the earlier layout kept beside the ledger; the directory replaces it.
        let index = self.db.open_tree("imports").map_err(backend)?;
        if index.first().map_err(backend)?.is_some() {
            index.clear().map_err(backend)?;
        }
        if self.counters.get(EARLIER_LAYOUT_FENCE.0).map_err(backend)?.as_deref() != Some(EARLIER_LAYOUT_FENCE.1) {
            self.counters.insert(EARLIER_LAYOUT_FENCE.0, EARLIER_LAYOUT_FENCE.1).map_err(backend)?;
        }
        self.db.flush().map_err(backend)?;
        Ok(self)
    }

    fn move_subject_ledger(&self, old: &sled::Tree, subject: &SubjectId) -> Result<(), StoreError> {
        let key = self.vault.get(subject)?;
        let mut entries = BTreeMap::new();
        for item in old.scan_prefix(subject.as_bytes()) {
            let (k, sealed) = item.map_err(backend)?;
            entries.insert(super::unmerge::position_of(&k)?, (k, sealed));
        }
        let mut listed = Vec::with_capacity(entries.len());
        let mut unreadable = 0usize;
        for (position, (_, sealed)) in &entries {
            let source = key.as_ref().and_then(|key| {
                let plain = key.open(&entry_context(subject, *position), sealed).ok();
                let imported = plain.and_then(|plain| LedgerSource::imported_of_plain(&plain).ok());
                if imported.is_none() {
                    unreadable += 1;
                }
                Some(digest_of(key, &imported??.0))
            });
            listed.push(Listed { position: *position, source });
        }
        if unreadable > 0 {
            tracing::warn!(%subject, unreadable, "ledger entries that do not open were moved without their source digests");
        }
        // Already partly in this layout (written by this version, then by an earlier one).
        let chunks = self.directory(subject)?.appending_unlisted(subject, listed);
        let result = (old, &self.ledger, &self.directory).transaction(|(old, ledger, directory)| {
            for (position, (k, sealed)) in &entries {
                ledger.insert(&entry_key(subject, *position)[..], sealed.clone())?;
                old.remove(k)?;
            }
            for (k, v) in &chunks {
                directory.insert(k.as_slice(), v.as_slice())?;
            }
            Ok(())
        });
        super::flatten(result)
    }
}

/// `subject`'s directory in `tree`: its chunks are numbered from 0, and every one but the last
/// is full (what [`Tail::append`] writes), so it is read with a point lookup per chunk up to the
/// first that is not full. A range scan costs sled a descent of the tree per item and one more
/// to find the end: twice a lookup for the usual subject, whose directory is one chunk.
/// `domicile node check` finds a directory that breaks the rule.
pub(super) fn read_directory(tree: &sled::Tree, subject: &SubjectId) -> Result<Directory, StoreError> {
    read_chunks(tree, subject).map(|(directory, _)| directory)
}

/// [`read_directory`], with its first chunk as stored (what the read cache keeps).
fn read_chunks(tree: &sled::Tree, subject: &SubjectId) -> Result<(Directory, Option<sled::IVec>), StoreError> {
    let mut chunks = Vec::new();
    let mut first = None;
    for chunk in 0u32.. {
        let Some(value) = tree.get(chunk_key(subject, chunk)).map_err(backend)? else { break };
        let items = decode_chunk(&value)?;
        let full = items.len() >= CHUNK_ITEMS;
        chunks.push((chunk, items));
        first.get_or_insert(value);
        if !full {
            break;
        }
    }
    Ok((Directory { chunks }, first))
}

/// Every chunk of `subject`'s directory in `tree`, by a range scan (for `domicile node check`,
/// which compares it with what [`read_directory`] reads).
pub(super) fn scan_directory(tree: &sled::Tree, subject: &SubjectId) -> Result<Directory, StoreError> {
    let mut chunks = Vec::new();
    for item in tree.scan_prefix(subject.as_bytes()) {
        let (k, v) = item.map_err(backend)?;
        chunks.push((chunk_number(&k)?, decode_chunk(&v)?));
    }
    Ok(Directory { chunks })
}

/// Opens `subject`'s entry at `position`.
pub(super) fn open_entry<T: serde::de::DeserializeOwned>(
    key: &SubjectKey,
    subject: &SubjectId,
    position: u64,
    sealed: &[u8],
) -> Result<T, StoreError> {
    open(key, b"consent", &consent_key(subject, position), sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `find_sources` against the plain rule (per digest sought, the lowest position of the
    /// entries listed with it), on both of its paths: up to [`FEW_SOUGHT`] digests compared, more
    /// hashed; with digests sought twice, entries not imported, and events imported twice (a
    /// merge brings both copies).
    #[test]
    fn find_sources_gives_the_lowest_position_per_digest_sought_on_both_paths() {
        let digest = |n: u8| [n; DIGEST_LEN];
        // 3 chunks; events 0..20, each imported at two positions, some entries not imported.
        let mut listed = Vec::new();
        for position in 1..=90u64 {
            let source = (position % 7 != 0).then(|| digest((position % 20) as u8));
            listed.push(Listed { position, source });
        }
        let directory =
            Directory { chunks: listed.chunks(CHUNK_ITEMS).enumerate().map(|(n, c)| (n as u32, c.to_vec())).collect() };
        let plain = |sought: &[Option<[u8; DIGEST_LEN]>]| -> Vec<Option<u64>> {
            sought
                .iter()
                .map(|d| listed.iter().filter(|l| d.is_some() && l.source == *d).map(|l| l.position).min())
                .collect()
        };
        for count in [0, 1, FEW_SOUGHT - 1, FEW_SOUGHT, FEW_SOUGHT + 1, 30] {
            let sought: Vec<Option<[u8; DIGEST_LEN]>> = (0..count)
                .map(|n| match n % 4 {
                    0 => None,
                    1 => Some(digest(99)),
                    _ => Some(digest((n * 3 % 20) as u8)),
                })
                .chain([Some(digest(5)), Some(digest(5)), None])
                .collect();
            let found = directory.find_sources(&sought);
            assert_eq!(found, plain(&sought), "{count} sought");
            assert!(found.iter().any(Option::is_some), "the test finds something: {count}");
        }
        assert_eq!(Directory::default().find_sources(&[Some(digest(1)), None]), [None, None]);
    }
}
