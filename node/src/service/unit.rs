//! The unit of work of every mutating call (ARCHITECTURE.md, "Unit of work"):
//!
//! 1. **apply**: one store write (`Store`) stores the change, its change events and its audit
//!    entries in one transaction, all derived from the write's `Recorded` facts. If the audit
//!    entries cannot be appended the transaction aborts: nothing is stored, nothing published,
//!    and the caller gets UNAVAILABLE (invariant 5).
//! 2. **make durable**: one group commit flushes the store and the audit log. If it fails, the
//!    change may or may not survive a crash: nothing is published, and the caller gets UNAVAILABLE
//!    marked as an unknown outcome, to retry with the write's idempotency key (invariant 7).
//! 3. **publish**: only now do watchers see the write's change events, and only now may claims
//!    the write queued for release be sent to their arbiters.
//!
//! Operations call [`NodeService::settle`] with what the store's write returned; none sequences
//! these steps itself.

use std::sync::Arc;

use domicile_types::RegionId;

use super::NodeService;
use crate::error::NodeError;
use crate::store::{
    ConsentRecord, Dropped, Erased, Held, Interaction, Merged, Rectified, Registered, RightsRequestRecord, Store,
    StoreError, Unmerged,
};

/// What a write leaves for the steps after it is stored: the last change event to publish and
/// whether it queued claims for release.
pub(super) trait Effects {
    fn last_event(&self) -> Option<u64> {
        None
    }
    fn queued_releases(&self) -> bool {
        false
    }
}

impl Effects for Registered {
    fn last_event(&self) -> Option<u64> {
        self.event
    }
}

/// Registrations made together (`RegisterBatch`): the last of their events.
impl Effects for Vec<Registered> {
    fn last_event(&self) -> Option<u64> {
        self.iter().filter_map(|r| r.event).max()
    }
}

/// A consent record's change event; 0 for a record not announced (`store::announced`), which has
/// none. (sled may number a first event 0 too: publishing up to 0 after the commit is harmless.)
impl Effects for (ConsentRecord, u64) {
    fn last_event(&self) -> Option<u64> {
        Some(self.1)
    }
}

impl Effects for Vec<Vec<Result<(ConsentRecord, u64), StoreError>>> {
    fn last_event(&self) -> Option<u64> {
        self.iter().flatten().filter_map(|written| written.as_ref().ok().map(|(_, event)| *event)).max()
    }
}

impl Effects for Erased {
    fn last_event(&self) -> Option<u64> {
        Some(self.event)
    }
    fn queued_releases(&self) -> bool {
        true
    }
}

impl Effects for crate::store::RestrictionSet {
    fn last_event(&self) -> Option<u64> {
        self.event
    }
}

impl Effects for Merged {
    fn last_event(&self) -> Option<u64> {
        Some(self.event)
    }
}

impl Effects for Unmerged {
    fn last_event(&self) -> Option<u64> {
        Some(self.event)
    }
}

impl Effects for Rectified {
    fn last_event(&self) -> Option<u64> {
        self.event
    }
    fn queued_releases(&self) -> bool {
        !self.removed.is_empty()
    }
}

impl Effects for Dropped {
    fn last_event(&self) -> Option<u64> {
        self.event
    }
    fn queued_releases(&self) -> bool {
        !self.removed.is_empty()
    }
}

impl Effects for Held {
    fn last_event(&self) -> Option<u64> {
        self.event
    }
    fn queued_releases(&self) -> bool {
        !self.gone.is_empty()
    }
}

/// Writes without change events: rights requests, interactions, audit entries of their own, and
/// claims kept as an arbiter.
impl Effects for RightsRequestRecord {}
impl Effects for Interaction {}
impl Effects for () {}
impl Effects for usize {}
impl Effects for Vec<Option<RegionId>> {}

/// A settled write: applied, durable and published; or found already made under its idempotency
/// key by a concurrent repeat, whose result is to be replayed.
pub(super) enum Settled<T> {
    Applied(T),
    Replayed,
}

impl<S: Store> NodeService<S> {
    /// Steps 2 and 3 for `applied`, what the store's write (step 1) returned.
    pub(super) async fn settle<T: Effects>(&self, applied: Result<T, StoreError>) -> Result<Settled<T>, NodeError> {
        let written = match applied {
            Ok(written) => written,
            Err(StoreError::Replayed) => return Ok(Settled::Replayed),
            Err(e) if self.store.disk_full(&e) => return Err(StoreError::StorageFull.into()),
            Err(e) => return Err(e.into()),
        };
        // Steps 2 and 3 run to the end even if this call is dropped: a caller that gives up (its
        // deadline, a connection lost after the request arrived) cancels the handler, and the
        // write it already applied must still be made durable and published, or its change
        // events would reach no watcher until some later write.
        let (commit, durable, ownership) =
            (Arc::clone(&self.commit), Arc::clone(&self.durable), Arc::clone(&self.ownership));
        let (last_event, queued) = (written.last_event(), written.queued_releases());
        let settled = tokio::spawn(async move {
            commit.commit().await.map_err(|e| {
                tracing::error!(error = %e, "write could not be made durable");
                NodeError::OutcomeUnknown
            })?;
            if let Some(sequence) = last_event {
                super::raise(&durable, Some(sequence));
            }
            if queued {
                ownership.releases_queued();
            }
            Ok::<(), NodeError>(())
        });
        settled.await.map_err(|_| NodeError::OutcomeUnknown)??;
        Ok(Settled::Applied(written))
    }

    /// A write found already made under its idempotency key is answered only once it is
    /// durable and published: the first attempt may have been cancelled between its write and
    /// its commit (a caller that gave up), and its answer now acknowledges it.
    pub(super) async fn settle_replay(&self) -> Result<(), NodeError> {
        let last = self.store.last_event().await?;
        self.make_durable().await?;
        super::raise(&self.durable, last);
        Ok(())
    }

    /// [`Self::settle`] for a write without an idempotency key (a replay is then impossible).
    pub(super) async fn settle_unkeyed<T: Effects>(&self, applied: Result<T, StoreError>) -> Result<T, NodeError> {
        match self.settle(applied).await? {
            Settled::Applied(written) => Ok(written),
            Settled::Replayed => Err(StoreError::Replayed.into()),
        }
    }

    /// Makes the store and the audit log durable: the point after which a write may be
    /// acknowledged (invariant 7). When that fails, a change already applied may still reach the
    /// disk (the store flushes on its own too): its outcome is unknown, and the status says so,
    /// so that a gateway tells its caller to retry with the write's idempotency key.
    pub(super) async fn make_durable(&self) -> Result<(), NodeError> {
        self.commit.commit().await.map_err(|e| {
            tracing::error!(error = %e, "write could not be made durable");
            NodeError::OutcomeUnknown
        })
    }
}
