//! The read cache of decision inputs and the write lock that keeps it exact.

use domicile_types::{Channel, Purpose, SubjectId};

use super::super::{CurrentConsent, SubjectMeta};

/// Subjects whose decision inputs are kept in memory before the cache starts over.
pub(super) const CACHED_SUBJECTS: usize = 1 << 20;

/// What every decision reads, kept in memory so a decision costs no storage read once a subject
/// has been decided for: its [`SubjectMeta`] and, per purpose × channel, the consent in force
/// (decrypted; `None` when there is none).
///
/// Never stale, by construction: every write takes the write lock through [`WriteGuard`], which
/// on release (after the write is in sled) removes the subjects it wrote and bumps the epoch of
/// their shards. A read that missed notes its subject's shard epoch before reading sled and fills
/// the cache only if that epoch is unchanged when it takes the shard's lock, so a value read
/// before a concurrent write can never land after that write's removal. Erasure removes the
/// decrypted values with the subject.
///
/// Sharded by subject so that concurrent decisions (two node threads deciding batches, say) do
/// not queue on one lock: with a single lock the lookup was a fifth of a node's CPU under batch
/// load.
#[derive(Debug)]
pub(super) struct ReadCache {
    shards: Box<[std::sync::Mutex<CacheInner>]>,
}

/// Shards of [`ReadCache`] (a power of two).
const CACHE_SHARDS: usize = 64;

#[derive(Debug, Default)]
pub(super) struct CacheInner {
    epoch: u64,
    pub(super) subjects: hashbrown::HashMap<SubjectId, Cached>,
}

#[derive(Debug, Default)]
pub(super) struct Cached {
    pub(super) meta: Option<SubjectMeta>,
    pub(super) current: Vec<((Purpose, Channel), Option<CurrentConsent>)>,
}

impl Cached {
    /// The consent in force for one purpose × channel, if it was read before (`Some(None)`:
    /// read, and there is none).
    pub(super) fn current(&self, cell: (Purpose, Channel)) -> Option<Option<CurrentConsent>> {
        self.current.iter().find(|(k, _)| *k == cell).map(|(_, v)| v.clone())
    }
}

impl Default for ReadCache {
    fn default() -> Self {
        Self { shards: (0..CACHE_SHARDS).map(|_| std::sync::Mutex::default()).collect() }
    }
}

impl ReadCache {
    pub(super) fn shard(&self, id: &SubjectId) -> std::sync::MutexGuard<'_, CacheInner> {
        // Mixed, so ids that differ only in some bytes still spread over the shards.
        let x = u128::from_le_bytes(*id.as_bytes());
        let mixed = ((x as u64) ^ ((x >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let index = (mixed >> (64 - CACHE_SHARDS.trailing_zeros())) as usize;
        let shard = &self.shards[index % CACHE_SHARDS];
        shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached value, or the epoch to fill under.
    pub(super) fn get<T>(&self, id: &SubjectId, read: impl FnOnce(&Cached) -> Option<T>) -> Result<T, u64> {
        let inner = self.shard(id);
        inner.subjects.get(id).and_then(read).ok_or(inner.epoch)
    }

    /// Stores a value read from sled at `epoch`, unless a write has happened since.
    pub(super) fn fill(&self, id: &SubjectId, epoch: u64, write: impl FnOnce(&mut Cached)) {
        let mut inner = self.shard(id);
        if inner.epoch != epoch {
            return;
        }
        if inner.subjects.len() >= CACHED_SUBJECTS / CACHE_SHARDS && !inner.subjects.contains_key(id) {
            inner.subjects.clear();
        }
        write(inner.subjects.entry(*id).or_default());
    }

    pub(super) fn invalidate(&self, ids: &[SubjectId]) {
        for id in ids {
            let mut inner = self.shard(id);
            inner.epoch += 1;
            inner.subjects.remove(id);
        }
    }
}

/// The write lock, held for one write; releasing it invalidates the cached inputs of the subjects
/// the write touched (see [`ReadCache`]).
pub(super) struct WriteGuard<'a> {
    pub(super) _lock: std::sync::MutexGuard<'a, ()>,
    pub(super) cache: &'a ReadCache,
    pub(super) touched: Vec<SubjectId>,
}

impl WriteGuard<'_> {
    /// Adds a subject found during the write.
    pub(super) fn touch(&mut self, id: SubjectId) {
        self.touched.push(id);
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.cache.invalidate(&self.touched);
    }
}
