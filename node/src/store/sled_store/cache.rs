//! The write lock that keeps the embedded store's read cache exact (`store/read_cache.rs`).

use domicile_types::SubjectId;

use super::super::read_cache::ReadCache;
use super::{MetaEntry, SledStore, StoreError};

/// The write lock, held for one write; releasing it invalidates the cached inputs of the subjects
/// the write touched (see [`ReadCache`]).
pub(super) struct WriteGuard<'a> {
    pub(super) _lock: std::sync::MutexGuard<'a, ()>,
    pub(super) cache: &'a ReadCache,
    pub(super) touched: Vec<SubjectId>,
    /// The write changes consent only: the touched subjects' metadata and links stay cached.
    pub(super) consent_only: bool,
}

impl WriteGuard<'_> {
    /// Adds a subject found during the write.
    pub(super) fn touch(&mut self, id: SubjectId) {
        self.touched.push(id);
    }

    /// For a write that changes no subject's metadata or links (consent records): they stay
    /// cached, so an import's next call for the subject reads neither again.
    pub(super) fn consent_only(mut self) -> Self {
        self.consent_only = true;
        self
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if self.consent_only {
            self.cache.invalidate_consent(&self.touched);
        } else {
            self.cache.invalidate(&self.touched);
        }
    }
}

impl SledStore {
    /// Takes the write lock for a write to `subjects` (their cached inputs go when it is released).
    /// A write that changes a subject's metadata or links names it here (or [`WriteGuard::touch`]es
    /// it): consent writes trust the cached copies under the lock ([`Self::meta_entry_under_lock`]).
    pub(super) fn serialise_writes(&self, subjects: &[SubjectId]) -> WriteGuard<'_> {
        WriteGuard {
            _lock: self.write_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
            cache: &self.cache,
            touched: subjects.to_vec(),
            consent_only: false,
        }
    }

    /// The subject's metadata and links, read under the write lock (which makes a cached copy
    /// exact: every writer that changes them invalidates it before letting go of the lock), from
    /// the read cache when it holds both, else from the store, kept for the next write.
    pub(super) fn meta_entry_under_lock(&self, id: &SubjectId) -> Result<Option<MetaEntry>, StoreError> {
        let cached = self.cache.get(id, |c| Some(MetaEntry { meta: c.meta.clone()?, links: c.links.clone()? }));
        let epoch = match cached {
            Ok(entry) => {
                // Every test run checks the rule above: a cached copy is what the store holds.
                #[cfg(debug_assertions)]
                if let Ok(stored) = self.meta_entry(id) {
                    let same = stored.as_ref().is_some_and(|s| s.links == entry.links && s.meta == entry.meta);
                    debug_assert!(same, "a cached subject's metadata or links differ from the store's");
                }
                return Ok(Some(entry));
            }
            Err(epoch) => epoch,
        };
        let entry = self.meta_entry(id)?;
        if let Some(entry) = &entry {
            self.cache.fill(id, epoch, |c| {
                c.meta = Some(entry.meta.clone());
                c.links = Some(entry.links.clone());
            });
        }
        Ok(entry)
    }
}
