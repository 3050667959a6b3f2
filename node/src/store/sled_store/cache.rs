//! The write lock that keeps the embedded store's read cache exact (`store/read_cache.rs`).

use domicile_types::SubjectId;

use super::super::read_cache::ReadCache;

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
