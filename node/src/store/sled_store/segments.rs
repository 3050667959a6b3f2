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
//! with its slot emptied, in the transaction that removes the rest of its subject; the segment
//! goes with its last entry. Segments of different subjects share values, so the rewrite reads
//! the segment inside the transaction: sled runs transactions one at a time, so two subjects'
//! erasures that empty slots of one segment both hold.
//!
//! Value layout: the slot count (u16), then per slot the subject id and the end (u32) of its
//! sealed bytes in the data that follows. All big-endian. A slot whose bytes are empty was
//! emptied: a sealed entry is never empty (it carries its authentication tag).

use domicile_types::{SUBJECT_ID_LEN, SubjectId};
use sled::transaction::TransactionalTree;

use super::ledger::{EntryKey, entry_key};
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
    /// Slot `slot` of the segment that starts at position `first`.
    Segment { first: u64, slot: usize },
}

/// The `ledger_segments` key of the segment starting at `first`.
pub(super) fn segment_key(first: u64) -> [u8; 8] {
    first.to_be_bytes()
}

fn corrupt() -> StoreError {
    StoreError::Corrupt("ledger segment".into())
}

/// A segment of `entries`, each its subject's id bytes and sealed bytes, at consecutive
/// positions.
pub(super) fn encode_segment<'a>(entries: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let count = entries.len();
    let data: usize = entries.clone().map(|(_, sealed)| sealed.len()).sum();
    let mut out = Vec::with_capacity(2 + count * SLOT_LEN + data);
    out.extend_from_slice(&u16::try_from(count).unwrap_or(u16::MAX).to_be_bytes());
    let mut end = 0usize;
    for (subject, sealed) in entries.clone() {
        end += sealed.len();
        out.extend_from_slice(subject);
        out.extend_from_slice(&u32::try_from(end).unwrap_or(u32::MAX).to_be_bytes());
    }
    for (_, sealed) in entries {
        out.extend_from_slice(sealed);
    }
    out
}

/// A slot: its subject's id bytes and the range of its sealed bytes in the value.
type Slot<'a> = (&'a [u8], std::ops::Range<usize>);

/// A segment's slots: each its subject's id bytes and the range of its sealed bytes in the
/// value (empty for an emptied slot). Checked whole, so a damaged value is refused, not misread.
fn slots(value: &[u8]) -> Result<Vec<Slot<'_>>, StoreError> {
    let (count, rest) = value.split_first_chunk::<2>().ok_or_else(corrupt)?;
    let count = usize::from(u16::from_be_bytes(*count));
    let header = rest.get(..count * SLOT_LEN).ok_or_else(corrupt)?;
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

/// A segment with slot `index` emptied (its subject id zeroed too), or `None` when no entry is
/// left in it.
fn without(value: &[u8], index: usize) -> Result<Option<Vec<u8>>, StoreError> {
    let slots = slots(value)?;
    let mut entries: Vec<(&[u8], &[u8])> = Vec::with_capacity(slots.len());
    for (at, (subject, range)) in slots.iter().enumerate() {
        let kept = at != index && !range.is_empty();
        entries.push(if kept { (subject, value.get(range.clone()).ok_or_else(corrupt)?) } else { (&EMPTIED, &[]) });
    }
    if entries.iter().all(|(_, sealed)| sealed.is_empty()) {
        return Ok(None);
    }
    Ok(Some(encode_segment(entries.iter().copied())))
}

/// The id an emptied slot names: no subject's (ids are random).
const EMPTIED: [u8; SUBJECT_ID_LEN] = [0; SUBJECT_ID_LEN];

/// Every entry of segment `key` → `value` (for `domicile node check`): position, subject and
/// sealed bytes, or why the value cannot be read.
pub(super) fn segment_entries(key: &[u8], value: &sled::IVec) -> Result<Vec<(u64, SubjectId, sled::IVec)>, StoreError> {
    let first = <[u8; 8]>::try_from(key).map(u64::from_be_bytes).map_err(|_| corrupt())?;
    let mut out = Vec::new();
    for (index, (subject, range)) in slots(value)?.into_iter().enumerate() {
        if range.is_empty() {
            continue;
        }
        let subject = SubjectId::from_slice(subject).map_err(|_| corrupt())?;
        out.push((first + index as u64, subject, value.subslice(range.start, range.len())));
    }
    Ok(out)
}

/// Removes the entries at `at` in a transaction over trees `ledger` and `ledger_segments`: a
/// single entry's key, or a segment rewritten without the entry (read here, in the
/// transaction: another subject's removal may have rewritten it since `at` was found).
pub(super) fn remove_entries(ledger: &TransactionalTree, segments: &TransactionalTree, at: &[EntryAt]) -> TxResult<()> {
    for entry in at {
        match entry {
            EntryAt::Single(key) => {
                ledger.remove(&key[..])?;
            }
            EntryAt::Segment { first, slot } => {
                let key = segment_key(*first);
                let Some(value) = segments.get(key)? else { continue };
                match or_abort(without(&value, *slot))? {
                    Some(rest) => segments.insert(&key[..], rest)?,
                    None => segments.remove(&key[..])?,
                };
            }
        }
    }
    Ok(())
}

impl SledStore {
    /// `subject`'s entry at `position`: where it is stored and its sealed bytes, or `None`.
    /// Segments first: every write but a merge's, an unmerge's or the layout move's makes one.
    pub(super) fn find_entry(
        &self,
        subject: &SubjectId,
        position: u64,
    ) -> Result<Option<(EntryAt, sled::IVec)>, StoreError> {
        if let Some(item) = self.segments.range(..=segment_key(position)).next_back() {
            let (key, value) = item.map_err(backend)?;
            let first = <[u8; 8]>::try_from(key.as_ref()).map(u64::from_be_bytes).map_err(|_| corrupt())?;
            let index = position.checked_sub(first).and_then(|i| usize::try_from(i).ok()).unwrap_or(usize::MAX);
            if let Some((owner, sealed)) = slot(&value, index)?
                && owner == *subject
            {
                return Ok(Some((EntryAt::Segment { first, slot: index }, sealed)));
            }
        }
        let key = entry_key(subject, position);
        Ok(self.ledger.get(key).map_err(backend)?.map(|sealed| (EntryAt::Single(key), sealed)))
    }
}
