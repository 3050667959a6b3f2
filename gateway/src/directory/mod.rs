//! The link directory: link → subject ref, in memory only (invariant 1: the gateway persists
//! nothing). Rebuilt from every node at start.
//!
//! Entries are 16-byte links mapped to a 2-byte region index plus a 16-byte subject id, so the
//! directory stays compact at millions of links.

use std::sync::RwLock;

use domicile_types::{Link, RegionId, SubjectId, SubjectRef};
use hashbrown::{HashMap, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    region: u16,
    subject: SubjectId,
}

/// Why a lookup found nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// Every region is loaded and none holds the link.
    Unknown,
    /// Some region has not been loaded yet: the link may be there (fail closed: unavailable).
    Incomplete,
}

/// A change to the directory, as a change event or a write's reply states it.
#[derive(Debug, Clone, Copy)]
pub enum Update<'a> {
    /// These links name the subject (REGISTERED; a registration's or rectification's reply).
    Map(&'a SubjectRef, &'a [Link]),
    /// These links stop naming the subject, where they still do (ERASED, LINKS_REMOVED; an
    /// erasure's or a rectification's reply).
    Unmap(&'a SubjectRef, &'a [Link]),
    /// These links, where they name `from` now or nothing, name `to` (a merge's or an unmerge's
    /// reply).
    Move { from: &'a SubjectRef, to: &'a SubjectRef, links: &'a [Link] },
}

#[derive(Debug)]
pub struct Directory {
    regions: Vec<RegionId>,
    inner: RwLock<Inner>,
}

/// A sorted array holds most links at 34 bytes each; a small hash map holds changes since the
/// last merge (`None` marks a removal) and is folded into the array once it grows past a
/// fraction of it. A hash table alone would cost 40–80 bytes per link depending on where it is
/// in its growth cycle.
#[derive(Debug, Default)]
struct Inner {
    base: Vec<(Link, Entry)>,
    /// `buckets[p]` is where links whose top `bucket_bits` bits equal `p` start in `base`
    /// (`buckets[p + 1]` where they end). Links are keyed hashes, so evenly spread: a lookup
    /// binary-searches its bucket of a few entries (one or two cache lines) instead of the whole
    /// array (about twenty dependent cache misses at a million links). One to two bytes per link.
    buckets: Vec<u32>,
    bucket_bits: u32,
    delta: HashMap<Link, Option<Entry>>,
    /// Snapshots being loaded, per region, as the batches the node sent; invisible until the
    /// region is marked synced (its lookups answer "incomplete" meanwhile, which fails closed).
    staging: HashMap<u16, Vec<Vec<(Link, Entry)>>>,
    synced: HashSet<u16>,
    /// Per region, the last change event applied (or the snapshot's): a write's reply that says
    /// no more than that is not applied again (`Directory::apply_reply`).
    applied: HashMap<u16, u64>,
    /// Links two regions' snapshots disagree on (one region dropped it in an ownership repair
    /// after the other's snapshot was taken, or a duplicate awaiting repair): looked up as
    /// incomplete (fail closed) until a change event for the link settles it; the entry kept is
    /// the one loaded first, the other is held here. Without this, the region loaded last won,
    /// and decisions went to a copy its own next event removed.
    contested: HashMap<Link, Entry>,
}

impl Inner {
    /// A region's snapshot merged into the base. What the directory holds for a link when a
    /// region's snapshot merges came, in the gateway,
    /// from other regions (the region's own events are applied only after its snapshot, and
    /// replies only once it is synced): another region's mapping contests the link; a removal (a
    /// tombstone in `delta`, whose region it does not say) gives way to the snapshot, which would
    /// otherwise stay hidden behind it and leave the link to nobody; a change of this region's
    /// own in `delta` stays newer.
    fn merge_snapshot(&mut self, staged: Vec<(Link, Entry)>) {
        let mut newer = Vec::with_capacity(staged.len());
        for (link, entry) in staged {
            match self.get(&link) {
                Some(existing) if existing.region != entry.region => {
                    self.contested.insert(link, entry);
                }
                // A change of this region's own recorded since stays newer.
                Some(_) if self.delta.contains_key(&link) => {}
                _ => {
                    self.delta.remove(&link);
                    newer.push((link, Some(entry)));
                }
            }
        }
        self.merge(newer);
    }

    fn get(&self, link: &Link) -> Option<Entry> {
        match self.delta.get(link) {
            Some(change) => *change,
            None => self.position(link).and_then(|i| self.base.get(i)).map(|(_, e)| *e),
        }
    }

    /// Binary search of the link's bucket of the base by the link read as a big-endian integer:
    /// the same order as comparing the bytes, but one integer comparison per step instead of a
    /// `memcmp` call. The index in `base`, if the link is there.
    fn position(&self, link: &Link) -> Option<usize> {
        let key = u128::from_be_bytes(*link.as_bytes());
        let (start, end) = self.bucket(key);
        let bucket = self.base.get(start..end)?;
        bucket.binary_search_by(|(l, _)| u128::from_be_bytes(*l.as_bytes()).cmp(&key)).ok().map(|i| start + i)
    }

    /// The range of `base` that can hold `key` (all of it when there is no bucket index).
    fn bucket(&self, key: u128) -> (usize, usize) {
        let prefix = if self.bucket_bits == 0 { 0 } else { (key >> (128 - self.bucket_bits)) as usize };
        match (self.buckets.get(prefix), self.buckets.get(prefix + 1)) {
            (Some(&start), Some(&end)) => (start as usize, end as usize),
            _ => (0, self.base.len()),
        }
    }

    /// Rebuilds the bucket index after the base changed: one bucket per two to four links.
    fn index_base(&mut self) {
        self.buckets = Vec::new();
        self.bucket_bits = 0;
        let len = self.base.len();
        if len < 64 || u32::try_from(len).is_err() {
            return;
        }
        let bits = (usize::BITS - 1 - len.leading_zeros()).saturating_sub(1).min(26);
        let mut buckets = Vec::with_capacity((1usize << bits) + 1);
        let mut next = 0usize;
        for (i, (link, _)) in self.base.iter().enumerate() {
            let prefix = (u128::from_be_bytes(*link.as_bytes()) >> (128 - bits)) as usize;
            // Every bucket up to this link's starts here (empty buckets start where the next begins).
            while next <= prefix {
                buckets.push(i as u32);
                next += 1;
            }
        }
        while next <= 1usize << bits {
            buckets.push(len as u32);
            next += 1;
        }
        self.buckets = buckets;
        self.bucket_bits = bits;
    }

    fn set(&mut self, link: Link, entry: Option<Entry>) {
        self.delta.insert(link, entry);
        if self.delta.len() > 4096 + self.base.len() / 32 {
            self.fold_delta();
        }
    }

    /// Merges sorted, de-duplicated `newer` into the base; `newer` wins on equal links and
    /// `None` removes.
    fn merge(&mut self, newer: Vec<(Link, Option<Entry>)>) {
        let old = std::mem::take(&mut self.base);
        let mut merged = Vec::with_capacity(old.len() + newer.len());
        let (mut a, mut b) = (old.into_iter().peekable(), newer.into_iter().peekable());
        loop {
            let take_old = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((la, _)), Some((lb, _))) => la < lb,
            };
            if take_old {
                merged.extend(a.next());
            } else if let Some((link, change)) = b.next() {
                if a.peek().is_some_and(|(la, _)| *la == link) {
                    a.next();
                }
                if let Some(entry) = change {
                    merged.push((link, entry));
                }
            }
        }
        merged.shrink_to_fit();
        self.base = merged;
        self.index_base();
    }

    fn fold_delta(&mut self) {
        let mut changes: Vec<(Link, Option<Entry>)> = self.delta.drain().collect();
        changes.sort_unstable_by_key(|x| x.0);
        self.merge(changes);
        self.delta.shrink_to_fit();
    }
}

/// One region's snapshot batches as one sorted array without duplicate links. Nodes send
/// batches that are each in order and do not overlap (scanned in parallel, so interleaved):
/// ordered by their first link they concatenate into sorted order, which the sort then only
/// checks. Any other order is still sorted correctly, just more slowly.
fn sorted_snapshot(mut batches: Vec<Vec<(Link, Entry)>>) -> Vec<(Link, Entry)> {
    batches.sort_unstable_by_key(|b| b.first().map(|x| x.0));
    let mut all = Vec::with_capacity(batches.iter().map(Vec::len).sum());
    for batch in batches {
        all.extend(batch);
    }
    all.sort_unstable_by_key(|x| x.0);
    all.dedup_by(|x, y| x.0 == y.0);
    all
}

impl Directory {
    pub fn new(regions: Vec<RegionId>) -> Self {
        Self { regions, inner: RwLock::new(Inner::default()) }
    }

    fn region_index(&self, region: &RegionId) -> Option<u16> {
        self.regions.iter().position(|r| r == region).and_then(|i| u16::try_from(i).ok())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn lookup(&self, link: &Link) -> Result<SubjectRef, Miss> {
        let inner = self.read();
        if !inner.contested.is_empty() && inner.contested.contains_key(link) {
            return Err(Miss::Incomplete);
        }
        match inner.get(link) {
            Some(entry) => match self.regions.get(usize::from(entry.region)) {
                Some(region) => Ok(SubjectRef { region: region.clone(), id: entry.subject }),
                None => Err(Miss::Incomplete),
            },
            None if inner.synced.len() == self.regions.len() => Err(Miss::Unknown),
            None => Err(Miss::Incomplete),
        }
    }

    /// Records links of one subject. Returns false if the region is not part of the topology.
    pub fn insert(&self, subject: &SubjectRef, links: &[Link]) -> bool {
        let Some(region) = self.region_index(&subject.region) else { return false };
        Self::map_in(&mut self.write(), region, subject, links);
        true
    }

    fn map_in(inner: &mut Inner, region: u16, subject: &SubjectRef, links: &[Link]) {
        for link in links {
            inner.set(*link, Some(Entry { region, subject: subject.id }));
        }
    }

    /// Applies `update` under the lock already held; returns how many links changed.
    fn update_in(&self, inner: &mut Inner, update: Update<'_>) -> usize {
        match update {
            Update::Map(subject, links) => match self.region_index(&subject.region) {
                Some(region) => {
                    Self::map_in(inner, region, subject, links);
                    links.len()
                }
                None => 0,
            },
            Update::Unmap(subject, links) => self.unmap_in(inner, subject, links),
            Update::Move { from, to, links } => self.move_in(inner, from, to, links),
        }
    }

    /// Applies change event `sequence` of `region` (its sync task, in order) and notes it applied.
    pub fn apply_event(&self, region: &RegionId, sequence: u64, update: Update<'_>) -> usize {
        let Some(index) = self.region_index(region) else { return 0 };
        let mut inner = self.write();
        // An event about a contested link settles it: applied as any other, over the entry the
        // first snapshot kept; if that leaves the link to nobody, the other snapshot's entry
        // holds, unless the event removed that very entry.
        let mut settled = Vec::new();
        if !inner.contested.is_empty() {
            let links = match update {
                Update::Map(_, links) | Update::Unmap(_, links) | Update::Move { links, .. } => links,
            };
            settled.extend(links.iter().filter_map(|l| inner.contested.remove(l).map(|other| (*l, other))));
        }
        let changed = self.update_in(&mut inner, update);
        for (link, other) in settled {
            let removed = match update {
                Update::Unmap(subject, _) => {
                    self.region_index(&subject.region) == Some(other.region) && subject.id == other.subject
                }
                _ => false,
            };
            if inner.get(&link).is_none() && !removed {
                inner.set(link, Some(other));
            }
        }
        let applied = inner.applied.entry(index).or_default();
        *applied = (*applied).max(sequence);
        changed
    }

    /// Applies what a write's reply says, for read-your-writes before its change events arrive,
    /// unless this directory has applied `region`'s events up to the write's (`sequence`): they
    /// said the same or something newer. A reply is a replay when its write was retried, and a
    /// replayed registration would otherwise map a link back to a subject that has lost it since
    /// (a rectification, an erasure), so decisions through this gateway would go to the wrong
    /// person. A reply with no event changes nothing here. Returns whether it was applied.
    pub fn apply_reply(&self, region: &RegionId, sequence: Option<u64>, update: Update<'_>) -> bool {
        let (Some(index), Some(sequence)) = (self.region_index(region), sequence.filter(|s| *s > 0)) else {
            return false;
        };
        let mut inner = self.write();
        // Not before the region is synced: its snapshot, taken later, would give way to a
        // replayed reply applied meanwhile (`mark_synced`), and the stale mapping would stay.
        if !inner.synced.contains(&index) || inner.applied.get(&index).is_some_and(|applied| *applied >= sequence) {
            return false;
        }
        self.update_in(&mut inner, update);
        true
    }

    /// The region's snapshot reflects its events up to `as_of`.
    pub fn set_applied(&self, region: &RegionId, as_of: Option<u64>) {
        if let (Some(index), Some(as_of)) = (self.region_index(region), as_of) {
            let mut inner = self.write();
            let applied = inner.applied.entry(index).or_default();
            *applied = (*applied).max(as_of);
        }
    }

    /// Forgets links (after an erasure). Returns how many were present.
    pub fn remove(&self, links: &[Link]) -> usize {
        let mut inner = self.write();
        let mut removed = 0;
        for link in links {
            if inner.get(link).is_some() {
                inner.set(*link, None);
                removed += 1;
            }
        }
        removed
    }

    /// Forgets links that still name `subject` (an ERASED change event). A link that names
    /// someone else by now was re-registered after the erasure and stays.
    pub fn remove_subject_links(&self, subject: &SubjectRef, links: &[Link]) -> usize {
        self.unmap_in(&mut self.write(), subject, links)
    }

    fn unmap_in(&self, inner: &mut Inner, subject: &SubjectRef, links: &[Link]) -> usize {
        let Some(region) = self.region_index(&subject.region) else { return 0 };
        let wanted = Entry { region, subject: subject.id };
        let mut removed = 0;
        for link in links {
            if inner.get(link) == Some(wanted) {
                inner.set(*link, None);
                removed += 1;
            }
        }
        removed
    }

    /// Maps to `to` the links of `links` that name `from` now (or are unknown): what a merge's or
    /// an unmerge's reply moved. A link that names someone else by now stays: the reply may be a
    /// replay of a write whose effect a later one (an unmerge, an erasure) has undone. Returns
    /// how many were mapped.
    pub fn move_links(&self, from: &SubjectRef, to: &SubjectRef, links: &[Link]) -> usize {
        self.move_in(&mut self.write(), from, to, links)
    }

    fn move_in(&self, inner: &mut Inner, from: &SubjectRef, to: &SubjectRef, links: &[Link]) -> usize {
        let (Some(from_region), Some(to_region)) = (self.region_index(&from.region), self.region_index(&to.region))
        else {
            return 0;
        };
        let expected = Entry { region: from_region, subject: from.id };
        let mut moved = 0;
        for link in links {
            if inner.get(link).is_none_or(|current| current == expected) {
                inner.set(*link, Some(Entry { region: to_region, subject: to.id }));
                moved += 1;
            }
        }
        moved
    }

    /// Starts (or restarts, after a failed attempt) loading a region's snapshot.
    pub fn begin_load(&self, region: &RegionId) {
        if let Some(index) = self.region_index(region) {
            self.write().staging.remove(&index);
        }
    }

    /// Loads a batch of a region's snapshot; visible once the region is marked synced.
    pub fn load_batch(&self, region: &RegionId, entries: impl IntoIterator<Item = (Link, SubjectId)>) {
        let Some(index) = self.region_index(region) else { return };
        let batch: Vec<_> =
            entries.into_iter().map(|(link, subject)| (link, Entry { region: index, subject })).collect();
        self.write().staging.entry(index).or_default().push(batch);
    }

    /// The region's snapshot is complete: merge it in (changes recorded since, in `delta`, stay
    /// newer) and let misses for it become "unknown".
    pub fn mark_synced(&self, region: &RegionId) {
        let Some(index) = self.region_index(region) else { return };
        // Sorted outside the lock, so lookups for other regions carry on meanwhile; only this
        // region's sync task stages its snapshot.
        let staged = self.write().staging.remove(&index).map(sorted_snapshot);
        let mut inner = self.write();
        if let Some(staged) = staged {
            if inner.base.is_empty() && inner.delta.is_empty() {
                // The usual cold start: the first region's snapshot becomes the array as it is.
                inner.base = staged;
                inner.index_base();
            } else {
                inner.merge_snapshot(staged);
            }
        }
        inner.synced.insert(index);
    }

    pub fn is_synced(&self, region: &RegionId) -> bool {
        let inner = self.read();
        self.region_index(region).is_some_and(|i| inner.synced.contains(&i))
    }

    /// Links that name a subject now.
    pub fn len(&self) -> usize {
        let inner = self.read();
        let in_base = |link: &Link| inner.position(link).is_some();
        let adjust: isize = inner
            .delta
            .iter()
            .map(|(link, change)| match (change.is_some(), in_base(link)) {
                (true, false) => 1,
                (false, true) => -1,
                _ => 0,
            })
            .sum();
        inner.base.len().saturating_add_signed(adjust)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held for links: the sorted array's capacity, its bucket index, and the change
    /// map's buckets (used or not) with their control bytes.
    pub fn table_bytes(&self) -> usize {
        let inner = self.read();
        let delta_buckets =
            if inner.delta.capacity() == 0 { 0 } else { (inner.delta.capacity() * 8 / 7).next_power_of_two() };
        inner.base.capacity() * std::mem::size_of::<(Link, Entry)>()
            + inner.buckets.capacity() * std::mem::size_of::<u32>()
            + delta_buckets * (std::mem::size_of::<(Link, Option<Entry>)>() + 1)
    }
}

#[cfg(test)]
mod tests;
