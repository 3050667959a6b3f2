//! What every write does besides its own change (ARCHITECTURE.md, "Unit of work"): its change
//! events and its audit entries, both derived from its [`Recorded`] facts and written in its
//! transaction.

use std::cell::RefCell;

use domicile_audit::AuditTxn;

use super::retire::{Dropped, NumberedEvent};
use super::{ChangeEvent, Recorded, SledStore, StoreError, TxResult, encode, or_abort};
use crate::store::Change;

/// The audit entries of one write (ARCHITECTURE.md, "Unit of work"). The write takes them under
/// its write lock, before its transaction starts, holding the audit log; the transaction appends
/// them as its last step ([`Audited::append`]), so entries that cannot be appended abort it and
/// nothing is stored; they are kept when it commits ([`Audited::commit`]) and removed when it
/// does not (dropped).
pub(super) struct Audited<'a> {
    txn: RefCell<AuditTxn<'a>>,
    region: &'a domicile_types::RegionId,
    at: i64,
}

impl Audited<'_> {
    /// Inside the write's transaction: appends the audit entries of `recorded`. sled may run a
    /// transaction's body again; the entries of an earlier run are removed first.
    pub(super) fn append(&self, recorded: &[Recorded<'_>]) -> TxResult<()> {
        or_abort(self.append_now(recorded))
    }

    /// Appends the audit entries of `recorded` (replacing any appended before), outside a
    /// transaction: for a write with a step that cannot be undone before its transaction (an
    /// erasure destroys the subject's key first).
    pub(super) fn append_now(&self, recorded: &[Recorded<'_>]) -> Result<(), StoreError> {
        let mut txn = self.txn.borrow_mut();
        txn.rollback().map_err(StoreError::Audit)?;
        let mut entries = Vec::with_capacity(recorded.len());
        for fact in recorded {
            if let Some((event, subject)) = fact.audit(self.region, self.at)? {
                entries.push((event, Some(subject)));
            }
        }
        txn.append_all(entries, self.at).map_err(StoreError::Audit)
    }

    /// The write committed: its entries stay.
    pub(super) fn commit(self) {
        self.txn.into_inner().commit();
    }
}

/// The change events of `recorded`, numbered with `sequences` (allocated beforehand, one per
/// event at most; [`SledStore::events_of`]); the `ERASED` of a subject a fact retires also names
/// the links its removed events named (`dropped`, `retire.rs`).
pub(super) fn number_events(
    recorded: &[Recorded<'_>],
    at: i64,
    sequences: &[u64],
    dropped: &Dropped,
) -> Result<Vec<NumberedEvent>, StoreError> {
    let mut sequences = sequences.iter();
    let mut out = Vec::new();
    for fact in recorded {
        let retired = fact.retires();
        let changes = match retired.and_then(|s| dropped.get(&s)) {
            Some(links) => fact.changes_dropping(links),
            None => fact.changes(),
        };
        for (subject, links, change) in changes {
            let Some(&sequence) = sequences.next() else {
                return Err(StoreError::Backend("fewer event sequences than change events".into()));
            };
            let retires = retired == Some(subject) && change == Change::Erased;
            let bytes = encode(&ChangeEvent { sequence, at, subject, links, change })?;
            out.push(NumberedEvent { sequence, subject, bytes, retires });
        }
    }
    Ok(out)
}

impl SledStore {
    /// The change events of `recorded` ([`Recorded::changes`]), numbered.
    /// Not inside a transaction: sled's ids take the lock a transaction holds.
    pub(super) fn events_of(&self, recorded: &[Recorded<'_>], at: i64) -> Result<Vec<NumberedEvent>, StoreError> {
        let count = recorded.iter().map(|fact| fact.changes().len()).sum();
        let sequences = (0..count).map(|_| self.next_id()).collect::<Result<Vec<_>, _>>()?;
        number_events(recorded, at, &sequences, &self.dropped_links(recorded)?)
    }

    /// Starts the audit of a write at `at`; taken after the write lock (lock order: write lock,
    /// audit log, sled's transaction).
    pub(super) fn audited(&self, at: i64) -> Result<Audited<'_>, StoreError> {
        // A full disk refuses writes here, before anything is written (`space.rs`).
        self.space.check_writable(|| self.db.flush().map(|_| ()).map_err(super::backend))?;
        let txn = self.audit.begin().map_err(StoreError::Audit)?;
        Ok(Audited { txn: RefCell::new(txn), region: &self.region, at })
    }
}
