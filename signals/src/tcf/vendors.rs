//! Vendor vectors (bitfield or range encoding) and publisher restrictions,
//! shared by the TC string, GPP `tcfeuv2` and (legacy) GPP `tcfcav1`.

use crate::bits::{BitReader, BitWriter, MAX_ID, check_ids, check_width, group_consecutive};
use crate::error::{ErrorKind, SignalError};

use super::{PublisherRestriction, RestrictionType};

/// Upper bound on vendor ids expanded across all publisher restrictions of
/// one string. Restrictions carry no MaxVendorId, so without a cap 4095
/// restrictions × 65535 ids would let a ~36 kB string demand ~0.5 GB.
pub(crate) const MAX_RESTRICTION_IDS: usize = 1 << 20;

/// How an encoder chooses range vs bitfield encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeRule {
    /// iabtcf-es `VendorVectorEncoder`: range only when MaxVendorId > 45 and
    /// its running estimate of the range length stays below the bitfield's.
    TcfEs,
    /// iabgpp-es `EncodableOptimizedFixedRange`: range when its exact length
    /// is ≤ MaxVendorId bits.
    GppEs,
}

/// A set of ids ≤ 65535 as 64-bit words; sized from the largest id so that
/// overlapping or repeated ranges cost O(words), not O(ids).
struct IdSet {
    words: Vec<u64>,
}

impl IdSet {
    fn with_max(max: u32) -> Self {
        Self { words: vec![0; max as usize / 64 + 1] }
    }

    /// Sets ids `start..=end` (caller guarantees start ≤ end ≤ max).
    fn set_range(&mut self, start: u32, end: u32) {
        let (s, e) = (start as usize, end as usize);
        let (sw, ew) = (s / 64, e / 64);
        for w in sw..=ew {
            let lo = if w == sw { s % 64 } else { 0 };
            let hi = if w == ew { e % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            if let Some(word) = self.words.get_mut(w) {
                *word |= mask;
            }
        }
    }

    fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    fn into_ids(self) -> Vec<u16> {
        let mut out = Vec::with_capacity(self.count());
        for (i, &w) in self.words.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                let bit = w.trailing_zeros() as usize;
                out.push((i * 64 + bit) as u16);
                w &= w - 1;
            }
        }
        out
    }
}

/// Reads `MaxVendorId(16) IsRangeEncoding(1)` then a bitfield or ranges.
pub(crate) fn read_vendor_vector(r: &mut BitReader) -> Result<Vec<u16>, SignalError> {
    let max = r.read(16)? as u32;
    if r.read_bool()? {
        let entries = read_range_entries(r)?;
        let mut set = IdSet::with_max(max);
        for (at, start, end) in entries {
            if end > max {
                return Err(r.err_at(at, ErrorKind::IdOutOfRange { id: end, max }));
            }
            set.set_range(start, end);
        }
        Ok(set.into_ids())
    } else {
        read_bitfield(r, max as usize)
    }
}

/// A bitfield of `n` bits → ids of the set bits. Checks the length up front
/// so a huge claimed MaxVendorId fails fast instead of looping.
fn read_bitfield(r: &mut BitReader, n: usize) -> Result<Vec<u16>, SignalError> {
    if n > r.remaining() {
        return Err(r.err(ErrorKind::UnexpectedEnd { needed: n, available: r.remaining() }));
    }
    let mut ids = Vec::new();
    let mut id = 1usize;
    let mut left = n;
    while left > 0 {
        let take = left.min(64);
        let chunk = r.read(take)?;
        let mut bits = chunk << (64 - take);
        let mut base = id;
        while bits != 0 {
            let lead = bits.leading_zeros() as usize;
            ids.push((base + lead) as u16);
            bits <<= lead;
            bits <<= 1;
            base += lead + 1;
        }
        id += take;
        left -= take;
    }
    Ok(ids)
}

/// `NumEntries(12)` then entries `IsRange(1) Start(16) [End(16)]`; returns
/// (offset, start, end) with 1 ≤ start ≤ end checked.
fn read_range_entries(r: &mut BitReader) -> Result<Vec<(usize, u32, u32)>, SignalError> {
    let n = r.read(12)? as usize;
    // Each entry takes ≥ 17 bits: a count beyond that is truncated input.
    if n.saturating_mul(17) > r.remaining() {
        return Err(r.err(ErrorKind::UnexpectedEnd { needed: n * 17, available: r.remaining() }));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let at = r.pos();
        let is_range = r.read_bool()?;
        let start = r.read(16)? as u32;
        let end = if is_range { r.read(16)? as u32 } else { start };
        if start == 0 {
            return Err(r.err_at(at, ErrorKind::IdOutOfRange { id: 0, max: MAX_ID }));
        }
        if end < start {
            return Err(r.err_at(at, ErrorKind::InvalidRange { start, end }));
        }
        out.push((at, start, end));
    }
    Ok(out)
}

/// Reads `NumPubRestrictions(12)` and the restriction entries.
pub(crate) fn read_restrictions(r: &mut BitReader) -> Result<Vec<PublisherRestriction>, SignalError> {
    let n = r.read(12)? as usize;
    let mut out = Vec::with_capacity(n.min(64));
    let mut total = 0usize;
    for _ in 0..n {
        let purpose_id = r.read_u8(6)?;
        let restriction_type = RestrictionType::from_bits(r.read(2)?);
        let at = r.pos();
        let entries = read_range_entries(r)?;
        let max = entries.iter().map(|e| e.2).max().unwrap_or(0);
        let mut set = IdSet::with_max(max);
        for (_, s, e) in entries {
            set.set_range(s, e);
        }
        total += set.count();
        if total > MAX_RESTRICTION_IDS {
            return Err(r.err_at(at, ErrorKind::TooManyIds { limit: MAX_RESTRICTION_IDS }));
        }
        out.push(PublisherRestriction { purpose_id, restriction_type, vendors: set.into_ids() });
    }
    Ok(out)
}

/// Encoded length in bits of the range entries for `groups` (without the
/// 12-bit count).
fn range_entries_len(groups: &[(u16, u16)]) -> usize {
    groups.iter().map(|(s, e)| if s == e { 17 } else { 33 }).sum()
}

/// Whether the encoder picks range encoding, mirroring the IAB libraries.
fn use_range(groups: &[(u16, u16)], max: usize, rule: RangeRule) -> bool {
    match rule {
        RangeRule::GppEs => 12 + range_entries_len(groups) <= max,
        RangeRule::TcfEs => {
            // iabtcf-es walks ids 1..=max, growing an estimate that starts at
            // header(17) + numEntries(12) and adds 17 when a range opens and
            // 16 when it closes (so a single id costs 16, one bit short of
            // the real 17). The decision is the last comparison, made at
            // id `max` before that id's own contribution is added.
            if max <= 45 {
                return false;
            }
            let estimate: usize = 29 + groups.iter().map(|(s, e)| if s == e { 16 } else { 33 }).sum::<usize>();
            estimate - 16 < 17 + max
        }
    }
}

/// Writes a vendor vector, choosing range or bitfield like the IAB library
/// for `rule`.
pub(crate) fn write_vendor_vector(
    w: &mut BitWriter,
    segment: &'static str,
    field: &'static str,
    ids: &[u16],
    rule: RangeRule,
) -> Result<(), SignalError> {
    check_ids(segment, field, ids, MAX_ID)?;
    let max = ids.last().copied().unwrap_or(0);
    w.write(u64::from(max), 16);
    let groups = group_consecutive(ids);
    if use_range(&groups, usize::from(max), rule) {
        w.write_bool(true);
        write_range_entries(w, &groups);
    } else {
        w.write_bool(false);
        w.write_id_set(ids, usize::from(max));
    }
    Ok(())
}

fn write_range_entries(w: &mut BitWriter, groups: &[(u16, u16)]) {
    w.write(groups.len() as u64, 12);
    for &(s, e) in groups {
        w.write_bool(s != e);
        w.write(u64::from(s), 16);
        if s != e {
            w.write(u64::from(e), 16);
        }
    }
}

/// Writes publisher restrictions (always range-coded, consecutive ids
/// grouped, as iabtcf-es does without a GVL at hand).
pub(crate) fn write_restrictions(
    w: &mut BitWriter,
    segment: &'static str,
    restrictions: &[PublisherRestriction],
) -> Result<(), SignalError> {
    check_width(segment, "publisher_restrictions", restrictions.len() as u64, 12)?;
    for pr in restrictions {
        check_width(segment, "purpose_id", u64::from(pr.purpose_id), 6)?;
        check_ids(segment, "publisher_restrictions.vendors", &pr.vendors, MAX_ID)?;
    }
    w.write(restrictions.len() as u64, 12);
    for pr in restrictions {
        let groups = group_consecutive(&pr.vendors);
        check_width(segment, "publisher_restrictions.vendors", groups.len() as u64, 12)?;
        w.write(u64::from(pr.purpose_id), 6);
        w.write(pr.restriction_type.bits(), 2);
        write_range_entries(w, &groups);
    }
    Ok(())
}

/// GPP `tcfcav1` vendor vector: `MaxId(16) IsRange(1)` then a bitfield or a
/// Fibonacci-coded range (iabgpp-es `EncodableOptimizedFibonacciRange`).
pub(crate) fn read_fibonacci_vendor_vector(r: &mut BitReader) -> Result<Vec<u16>, SignalError> {
    let max = r.read(16)? as usize;
    if r.read_bool()? {
        let at = r.pos();
        let ids = r.read_fibonacci_range(max)?;
        if let Some(&last) = ids.last()
            && usize::from(last) > max
        {
            return Err(r.err_at(at, ErrorKind::IdOutOfRange { id: u32::from(last), max: max as u32 }));
        }
        Ok(ids)
    } else {
        read_bitfield(r, max)
    }
}

pub(crate) fn write_fibonacci_vendor_vector(
    w: &mut BitWriter,
    segment: &'static str,
    field: &'static str,
    ids: &[u16],
) -> Result<(), SignalError> {
    check_ids(segment, field, ids, MAX_ID)?;
    let max = ids.last().copied().unwrap_or(0);
    w.write(u64::from(max), 16);
    let mut probe = BitWriter::new();
    probe.write_fibonacci_range(ids);
    if probe.len() <= usize::from(max) {
        w.write_bool(true);
        w.write_fibonacci_range(ids);
    } else {
        w.write_bool(false);
        w.write_id_set(ids, usize::from(max));
    }
    Ok(())
}

/// GPP `tcfcav1` publisher restrictions with Fibonacci vendor vectors.
pub(crate) fn read_fibonacci_restrictions(r: &mut BitReader) -> Result<Vec<PublisherRestriction>, SignalError> {
    let n = r.read(12)? as usize;
    let mut out = Vec::with_capacity(n.min(64));
    let mut total = 0usize;
    for _ in 0..n {
        let purpose_id = r.read_u8(6)?;
        let restriction_type = RestrictionType::from_bits(r.read(2)?);
        let at = r.pos();
        let vendors = read_fibonacci_vendor_vector(r)?;
        total += vendors.len();
        if total > MAX_RESTRICTION_IDS {
            return Err(r.err_at(at, ErrorKind::TooManyIds { limit: MAX_RESTRICTION_IDS }));
        }
        out.push(PublisherRestriction { purpose_id, restriction_type, vendors });
    }
    Ok(out)
}

pub(crate) fn write_fibonacci_restrictions(
    w: &mut BitWriter,
    segment: &'static str,
    restrictions: &[PublisherRestriction],
) -> Result<(), SignalError> {
    check_width(segment, "pub_restrictions", restrictions.len() as u64, 12)?;
    w.write(restrictions.len() as u64, 12);
    for pr in restrictions {
        check_width(segment, "purpose_id", u64::from(pr.purpose_id), 6)?;
        w.write(u64::from(pr.purpose_id), 6);
        w.write(pr.restriction_type.bits(), 2);
        write_fibonacci_vendor_vector(w, segment, "pub_restrictions.vendors", &pr.vendors)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tcf_es_rule_examples() {
        // Few ids below 46: always bitfield.
        assert!(!use_range(&group_consecutive(&[1, 2, 40]), 40, RangeRule::TcfEs));
        // One long run up to a high id: range.
        assert!(use_range(&group_consecutive(&(1..=1000).collect::<Vec<u16>>()), 1000, RangeRule::TcfEs));
        // Dense alternating ids: bitfield.
        let alt: Vec<u16> = (1..=500).filter(|v| v % 2 == 1).collect();
        assert!(!use_range(&group_consecutive(&alt), 499, RangeRule::TcfEs));
    }

    #[test]
    fn idset_ranges() {
        let mut s = IdSet::with_max(200);
        s.set_range(1, 1);
        s.set_range(60, 130);
        s.set_range(64, 64);
        let ids = s.into_ids();
        assert_eq!(ids.len(), 72);
        assert_eq!(ids[0], 1);
        assert_eq!(*ids.last().unwrap(), 130);
    }
}
