//! The read cache of decision inputs, shared by both engines: the embedded store keeps it exact
//! with its write lock (`sled_store/cache.rs`), the PostgreSQL store with the feed of touched
//! subjects every replica follows (`pg_store/fresh.rs`).

use domicile_types::{Channel, Purpose, SubjectId};

use super::{CurrentConsent, SubjectMeta};

/// Subjects whose decision inputs are kept in memory before the cache starts over.
pub(in crate::store) const CACHED_SUBJECTS: usize = 1 << 20;

/// What every decision reads, kept in memory so a decision costs no storage read once a subject
/// has been decided for: its [`SubjectMeta`] and, per purpose × channel, the consent in force
/// (decrypted; `None` when there is none).
///
/// Never stale, by construction: every write's subjects are removed with [`ReadCache::invalidate`]
/// (which bumps the epoch of their shards) before anything can read the cache expecting that
/// write; a write of consent only ([`ReadCache::invalidate_consent`]) keeps their metadata and
/// links, which it does not change, and removes the rest. A read that missed notes its subject's
/// shard epoch before reading the store and fills the cache only if that epoch is unchanged when
/// it takes the shard's lock, so a value read before a concurrent write can never land after that
/// write's removal. Erasure removes the
/// decrypted values with the subject.
///
/// Sharded by subject so that concurrent decisions (two node threads deciding batches, say) do
/// not queue on one lock: with a single lock the lookup was a fifth of a node's CPU under batch
/// load.
#[derive(Debug)]
pub(in crate::store) struct ReadCache {
    shards: Box<[std::sync::Mutex<CacheInner>]>,
}

/// Shards of [`ReadCache`] (a power of two).
const CACHE_SHARDS: usize = 64;

#[derive(Debug, Default)]
pub(in crate::store) struct CacheInner {
    epoch: u64,
    pub(in crate::store) subjects: hashbrown::HashMap<SubjectId, Cached>,
}

#[derive(Debug, Default)]
pub(in crate::store) struct Cached {
    pub(in crate::store) meta: Option<SubjectMeta>,
    pub(in crate::store) current: Vec<((Purpose, Channel), Option<CurrentConsent>)>,
    /// The embedded store's ledger directory where it is one chunk not full (`sled_store/
    /// ledger.rs`), as stored: an import's check reads it before the write, and the write, under
    /// the write lock, finds it here instead of reading it again.
    pub(in crate::store) directory: Option<sled::IVec>,
    /// The embedded store's links of the subject, read with its metadata under the write lock by
    /// a consent write (`sled_store/cache.rs`), which keeps both: it changes neither.
    pub(in crate::store) links: Option<Vec<domicile_types::Link>>,
}

impl Cached {
    /// The consent in force for one purpose × channel, if it was read before (`Some(None)`:
    /// read, and there is none).
    pub(in crate::store) fn current(&self, cell: (Purpose, Channel)) -> Option<Option<CurrentConsent>> {
        self.current.iter().find(|(k, _)| *k == cell).map(|(_, v)| v.clone())
    }
}

impl Default for ReadCache {
    fn default() -> Self {
        Self { shards: (0..CACHE_SHARDS).map(|_| std::sync::Mutex::default()).collect() }
    }
}

impl ReadCache {
    pub(in crate::store) fn shard(&self, id: &SubjectId) -> std::sync::MutexGuard<'_, CacheInner> {
        // Mixed, so ids that differ only in some bytes still spread over the shards.
        let x = u128::from_le_bytes(*id.as_bytes());
        let mixed = ((x as u64) ^ ((x >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let index = (mixed >> (64 - CACHE_SHARDS.trailing_zeros())) as usize;
        let shard = &self.shards[index % CACHE_SHARDS];
        shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached value, or the epoch to fill under.
    pub(in crate::store) fn get<T>(&self, id: &SubjectId, read: impl FnOnce(&Cached) -> Option<T>) -> Result<T, u64> {
        let inner = self.shard(id);
        inner.subjects.get(id).and_then(read).ok_or(inner.epoch)
    }

    /// The epoch to fill `id`'s entry under, noted before reading the store.
    pub(in crate::store) fn epoch(&self, id: &SubjectId) -> u64 {
        self.shard(id).epoch
    }

    /// Stores a value read from the store at `epoch`, unless a write has happened since.
    pub(in crate::store) fn fill(&self, id: &SubjectId, epoch: u64, write: impl FnOnce(&mut Cached)) {
        let mut inner = self.shard(id);
        if inner.epoch != epoch {
            return;
        }
        if inner.subjects.len() >= CACHED_SUBJECTS / CACHE_SHARDS && !inner.subjects.contains_key(id) {
            inner.subjects.clear();
        }
        write(inner.subjects.entry(*id).or_default());
    }

    pub(in crate::store) fn invalidate(&self, ids: &[SubjectId]) {
        for id in ids {
            let mut inner = self.shard(id);
            inner.epoch += 1;
            inner.subjects.remove(id);
        }
    }

    /// [`Self::invalidate`] after a write that changed only consent (the records in force and the
    /// ledger): the subjects' metadata and links stay, everything else goes. The epoch moves all
    /// the same, so no read from before the write fills anything after it.
    pub(in crate::store) fn invalidate_consent(&self, ids: &[SubjectId]) {
        for id in ids {
            let mut inner = self.shard(id);
            inner.epoch += 1;
            if let Some(cached) = inner.subjects.get_mut(id) {
                cached.current.clear();
                cached.directory = None;
            }
        }
    }
}

impl ReadCache {
    /// Forgets everything (a reader that cannot tell what changed since it last looked).
    pub(in crate::store) fn clear(&self) {
        for shard in &self.shards {
            let mut inner = shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            inner.epoch += 1;
            inner.subjects.clear();
        }
    }
}

/// Links cached before the link map starts over.
const CACHED_LINKS: usize = 1 << 22;

/// Which subject holds a link, for links found held (a link held by none is read every time, so
/// a registration through another replica is seen at once). Each subject's cached links are kept
/// beside, so that invalidating a subject drops every link that pointed to it: a link moved by a
/// merge, removed by a rectification or gone with an erasure is read again. Epoch-checked like
/// [`ReadCache`]; one lock, taken once per batch.
#[derive(Debug, Default)]
pub(in crate::store) struct LinkCache {
    inner: std::sync::Mutex<LinkInner>,
}

#[derive(Debug, Default)]
struct LinkInner {
    epoch: u64,
    by_link: hashbrown::HashMap<domicile_types::Link, SubjectId>,
    by_subject: hashbrown::HashMap<SubjectId, Vec<domicile_types::Link>>,
}

impl LinkCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, LinkInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached holder of each link (`None`: not cached), and the epoch to fill under.
    pub(in crate::store) fn get_many(&self, links: &[domicile_types::Link]) -> (Vec<Option<SubjectId>>, u64) {
        let inner = self.lock();
        (links.iter().map(|link| inner.by_link.get(link).copied()).collect(), inner.epoch)
    }

    /// Stores links found held at `epoch`, unless a subject was invalidated since.
    pub(in crate::store) fn fill(&self, epoch: u64, found: &[(domicile_types::Link, SubjectId)]) {
        let mut inner = self.lock();
        if inner.epoch != epoch || found.is_empty() {
            return;
        }
        if inner.by_link.len() + found.len() > CACHED_LINKS {
            inner.by_link.clear();
            inner.by_subject.clear();
        }
        for (link, subject) in found {
            if inner.by_link.insert(*link, *subject).is_none() {
                inner.by_subject.entry(*subject).or_default().push(*link);
            }
        }
    }

    /// Drops every cached link of `ids`.
    pub(in crate::store) fn invalidate(&self, ids: &[SubjectId]) {
        if ids.is_empty() {
            return;
        }
        let mut inner = self.lock();
        inner.epoch += 1;
        for id in ids {
            for link in inner.by_subject.remove(id).unwrap_or_default() {
                inner.by_link.remove(&link);
            }
        }
    }

    pub(in crate::store) fn clear(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.by_link.clear();
        inner.by_subject.clear();
    }
}
