//! Ledger segments: the entries one write appends, stored together.
//!
//! Tree `ledger_segments`: first position (8 bytes, big-endian) → the sealed entries at that
//! position and the ones after it. A write of n entries takes n consecutive positions
//! (`records.rs`) and stores them in ⌈n / [`SEGMENT_ENTRIES`]⌉ values. sled's cost is per key,
//! not per byte: an entry of its own, even appended at the tree's end, cost an import about
//! 10 µs of CPU per row (sled grows and splits the last leaf and logs it), a segment of 32 about
//! 0.3 (`cargo bench -p domicile-node --bench import_floor`, BENCHMARKS.md).
//!
//! Entries that move keep the single-entry form of tree `ledger` (position ‖ subject → entry,
//! `ledger.rs`): a merge re-seals the absorbed subject's entries for the subject it joins, an
//! unmerge writes both halves afresh, and the move from the earlier layout keeps each entry's
//! bytes. Both forms seal an entry with the same associated data, so an entry reads the same in
//! either, and a position is in exactly one of them.
//!
//! An entry leaves its segment (an erasure, a merge, an unmerge) by a rewrite of the segment
//! with its slots emptied, once per segment, in the transaction that removes the rest of its
//! subject; the segment goes with its last entry. Segments hold several subjects' entries; every
//! writer holds the store's write lock, so none rewrites a segment between another's read and
//! write (the rewrite reads it inside its transaction all the same).
//!
//! A segment that does not decode (damage) fails closed for the entries it holds, and only for
//! them: a read of another position (an entry of its own after it) looks it up by its key, and
//! an erasure leaves the damaged segment's entries, unreadable once the key is gone, for
//! `domicile node check` to name rather than fail every retry.
//!
//! Value layout: the slot count (u16), then per slot the subject id and the end (u32) of its
//! sealed bytes in the data that follows. All big-endian. A slot whose bytes are empty was
//! emptied: a sealed entry is never empty (it carries its authentication tag).

use std::collections::BTreeMap;

use domicile_types::{SUBJECT_ID_LEN, SubjectId};
use sled::transaction::TransactionalTree;

use super::ledger::{EntryKey, entry_key, parse_entry_key};
use super::{SledStore, StoreError, TxResult, backend, or_abort};

/// Entries per segment at most: an emptying rewrites at most this many, and an entry's read
/// brings this many into sled's cache.
pub(super) const SEGMENT_ENTRIES: usize = 32;

const SLOT_LEN: usize = SUBJECT_ID_LEN + 4;

/// Where a ledger entry is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EntryAt {
    /// A key of its own in tree `ledger`.
    Single(EntryKey),
    /// Slot `slot` of the segment that starts at position `first`, `subject`'s.
    Segment { first: u64, slot: usize, subject: SubjectId },
}

/// A slot: its subject's id bytes and the range of its sealed bytes in the value.
type Slot<'a> = (&'a [u8], std::ops::Range<usize>);

/// The `ledger_segments` key of the segment starting at `first`.
pub(super) fn segment_key(first: u64) -> [u8; 8] {
    first.to_be_bytes()
}

fn corrupt() -> StoreError {
    StoreError::Corrupt("ledger segment".into())
}

fn first_position(key: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(key).map(u64::from_be_bytes).map_err(|_| corrupt())
}

/// A segment of `entries`, each its subject's id bytes and sealed bytes, at consecutive
/// positions. More slots or bytes than the layout counts is an error, never a value that would
/// not read back.
pub(super) fn encode_segment<'a>(
    entries: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])> + Clone,
) -> Result<Vec<u8>, StoreError> {
    let too_large = || StoreError::Backend("a ledger segment beyond its layout's counts".into());
    let count = u16::try_from(entries.len()).map_err(|_| too_large())?;
    let data: usize = entries.clone().map(|(_, sealed)| sealed.len()).sum();
    u32::try_from(data).map_err(|_| too_large())?;
    let mut out = Vec::with_capacity(2 + entries.len() * SLOT_LEN + data);
    out.extend_from_slice(&count.to_be_bytes());
    let mut end = 0usize;
    for (subject, sealed) in entries.clone() {
        end += sealed.len();
        out.extend_from_slice(subject);
        // At most `data`, which fits (checked above).
        out.extend_from_slice(&u32::try_from(end).map_err(|_| too_large())?.to_be_bytes());
    }
    for (_, sealed) in entries {
        out.extend_from_slice(sealed);
    }
    Ok(out)
}

/// How many slots a segment has, from its first bytes alone (whether it covers a position).
fn slot_count(value: &[u8]) -> Result<usize, StoreError> {
    value.first_chunk::<2>().map(|count| usize::from(u16::from_be_bytes(*count))).ok_or_else(corrupt)
}

/// A segment's slots. Checked whole, so a damaged value is refused, not misread.
fn slots(value: &[u8]) -> Result<Vec<Slot<'_>>, StoreError> {
    let count = slot_count(value)?;
    let header = value.get(2..2 + count * SLOT_LEN).ok_or_else(corrupt)?;
    let data_start = 2 + count * SLOT_LEN;
    let mut start = data_start;
    let mut out = Vec::with_capacity(count);
    for slot in header.chunks_exact(SLOT_LEN) {
        let (subject, end) = slot.split_at(SUBJECT_ID_LEN);
        let end = <[u8; 4]>::try_from(end).map_err(|_| corrupt())?;
        let end = data_start + u32::from_be_bytes(end) as usize;
        if end < start || end > value.len() {
            return Err(corrupt());
        }
        out.push((subject, start..end));
        start = end;
    }
    if start != value.len() {
        return Err(corrupt());
    }
    Ok(out)
}

/// Slot `index` of a segment, if it holds an entry: its subject and sealed bytes (a slice of the
/// value, not a copy).
fn slot(value: &sled::IVec, index: usize) -> Result<Option<(SubjectId, sled::IVec)>, StoreError> {
    let slots = slots(value)?;
    let Some((subject, range)) = slots.get(index) else { return Ok(None) };
    if range.is_empty() {
        return Ok(None);
    }
    let subject = SubjectId::from_slice(subject).map_err(|_| corrupt())?;
    Ok(Some((subject, value.subslice(range.start, range.len()))))
}

/// A segment with the `emptied` slots (each with the subject it is expected to hold) emptied,
/// their subject ids zeroed too, or `None` when no entry is left in it. A slot that holds
/// another subject's entry is refused: a place found for one subject never empties another's.
fn without(value: &[u8], emptied: &[(usize, SubjectId)]) -> Result<Option<Vec<u8>>, StoreError> {
    let slots = slots(value)?;
    for (index, subject) in emptied {
        match slots.get(*index) {
            Some((owner, range)) if range.is_empty() || *owner == subject.as_bytes().as_slice() => {}
            _ => return Err(StoreError::Corrupt("a ledger segment slot of another subject".into())),
        }
    }
    let mut entries: Vec<(&[u8], &[u8])> = Vec::with_capacity(slots.len());
    for (at, (subject, range)) in slots.iter().enumerate() {
        let kept = !range.is_empty() && !emptied.iter().any(|(index, _)| *index == at);
        entries.push(if kept { (subject, value.get(range.clone()).ok_or_else(corrupt)?) } else { (&EMPTIED, &[]) });
    }
    if entries.iter().all(|(_, sealed)| sealed.is_empty()) {
        return Ok(None);
    }
    encode_segment(entries.iter().copied()).map(Some)
}

/// The id an emptied slot names: no subject's (ids are random).
const EMPTIED: [u8; SUBJECT_ID_LEN] = [0; SUBJECT_ID_LEN];

/// Every entry of segment `key` → `value` (for `domicile node check`): position, subject and
/// sealed bytes, or why the value cannot be read.
pub(super) fn segment_entries(key: &[u8], value: &sled::IVec) -> Result<Vec<(u64, SubjectId, sled::IVec)>, StoreError> {
    let first = first_position(key)?;
    let mut out = Vec::new();
    for (index, (subject, range)) in slots(value)?.into_iter().enumerate() {
        if range.is_empty() {
            continue;
        }
        let subject = SubjectId::from_slice(subject).map_err(|_| corrupt())?;
        let position = first.checked_add(index as u64).ok_or_else(corrupt)?;
        out.push((position, subject, value.subslice(range.start, range.len())));
    }
    Ok(out)
}

/// Removes the entries at `at` in a transaction over trees `ledger` and `ledger_segments`: a
/// single entry's key, or its segment rewritten once without all of them.
pub(super) fn remove_entries(ledger: &TransactionalTree, segments: &TransactionalTree, at: &[EntryAt]) -> TxResult<()> {
    let mut by_segment: BTreeMap<u64, Vec<(usize, SubjectId)>> = BTreeMap::new();
    for entry in at {
        match entry {
            EntryAt::Single(key) => {
                ledger.remove(&key[..])?;
            }
            EntryAt::Segment { first, slot, subject } => by_segment.entry(*first).or_default().push((*slot, *subject)),
        }
    }
    for (first, emptied) in by_segment {
        let key = segment_key(first);
        let Some(value) = segments.get(key)? else { continue };
        match or_abort(without(&value, &emptied))? {
            Some(rest) => segments.insert(&key[..], rest)?,
            None => segments.remove(&key[..])?,
        };
    }
    Ok(())
}

impl SledStore {
    /// `subject`'s entry at `position`: where it is stored and its sealed bytes, or `None`.
    /// Segments first: every write but a merge's, an unmerge's or the layout move's makes one.
    /// A damaged segment that may hold the position is `Corrupt` only if the entry has no key of
    /// its own either.
    pub(super) fn find_entry(
        &self,
        subject: &SubjectId,
        position: u64,
    ) -> Result<Option<(EntryAt, sled::IVec)>, StoreError> {
        let mut damaged = None;
        if let Some(item) = self.segments.range(..=segment_key(position)).next_back() {
            let (key, value) = item.map_err(backend)?;
            let first = first_position(&key)?;
            let index = position.checked_sub(first).and_then(|i| usize::try_from(i).ok()).unwrap_or(usize::MAX);
            let found = slot_count(&value).and_then(|count| if index < count { slot(&value, index) } else { Ok(None) });
            match found {
                Ok(Some((owner, sealed))) if owner == *subject => {
                    return Ok(Some((EntryAt::Segment { first, slot: index, subject: owner }, sealed)));
                }
                Ok(_) => {}
                Err(e) => damaged = Some(e),
            }
        }
        let key = entry_key(subject, position);
        match (self.ledger.get(key).map_err(backend)?, damaged) {
            (Some(sealed), _) => Ok(Some((EntryAt::Single(key), sealed))),
            (None, Some(e)) => Err(e),
            (None, None) => Ok(None),
        }
    }

    /// Refuses a write whose first position is not past every entry stored (a ledger counter
    /// behind its entries, by damage or a hand edit): its segment would replace, or hide, other
    /// subjects' entries. Read under the write lock: the last key of each ledger tree.
    pub(super) fn check_positions_free(&self, start: u64) -> Result<(), StoreError> {
        let behind = || StoreError::Corrupt("the ledger counter is behind its entries".into());
        if let Some((key, value)) = self.segments.last().map_err(backend)? {
            let end = first_position(&key)?.saturating_add(slot_count(&value)? as u64);
            if end > start.saturating_add(1) {
                return Err(behind());
            }
        }
        if let Some((key, _)) = self.ledger.last().map_err(backend)?
            && parse_entry_key(&key)?.0 > start
        {
            return Err(behind());
        }
        Ok(())
    }
}
