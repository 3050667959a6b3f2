//! The store's ids: change-event sequences, interaction and rights-request positions and claim
//! generations are all sled's `generate_id` plus a base kept in `counters` (`id_base`, 0 until a
//! restore sets it).
//!
//! Why a base: a restore must start new ids above every id the lost machine handed out after the
//! backup (its lost tail), which no one can read any more. Watchers and gateways saw the tail's
//! change events; had the restored store numbered its new events from the backup's next id on, a
//! follower resuming with a cursor from before the loss (say 180, the backup at 100) would skip
//! the new events 101..180, a withdrawal among them (invariant 4: a stale allow at a follower).
//! sled's generator cannot be set, only stepped one id at a time (a restore used to step it up to
//! the backup's next id, a loop without end for a forged manifest naming an id near `u64::MAX`),
//! so the restore moves the base instead ([`restored_base`]).

use super::{SledStore, StoreError, backend};

/// `counters` key of the id base.
const ID_BASE: &[u8] = b"id_base";

/// The least gap a restore leaves above the backup's next id: 2^40 ids. What a node hands out is
/// one id per change event, interaction, rights request and claim generation (a durable write
/// takes a handful; nodes measure 5,000 to 12,000 writes/s) plus 2,000,000 each time the database
/// is opened (sled's recovery skips ahead): 2^40 is a year at 35,000 ids/s, or 550,000 starts.
pub const RESTORE_ID_GAP: u64 = 1 << 40;

/// Added to [`RESTORE_ID_GAP`] per second between the backup and the restore (by the manifest's
/// `created_at` and the restoring machine's clock): 2^22, more than the tail could use in that
/// second even with the node crash-looping (two starts a second) and writing at full speed. Ten
/// years after a backup this adds 2^50.
pub const RESTORE_IDS_PER_SECOND: u64 = 1 << 22;

/// How far a backup's next id may lie above the highest id its export holds: ids handed out and
/// never stored (claim generations, aborted writes, 2,000,000 per start, an earlier restore's gap
/// with nothing written since) open such a distance, never one near this (2^56).
pub const MAX_UNUSED_IDS: u64 = 1 << 56;

/// The highest id base a restore sets (2^63): at least 2^63 ids remain for the restored store.
pub const MAX_ID_BASE: u64 = 1 << 63;

/// The id base a restore of a backup whose next id is `next_id`, whose export holds ids up to
/// `highest_held`, taken at `created_at`, sets at `now`; refused for a manifest that cannot be
/// the backup's (forged or damaged: every id of the backup lies below its next id, and its next
/// id lies within [`MAX_UNUSED_IDS`] of them).
pub fn restored_base(next_id: u64, highest_held: Option<u64>, created_at: i64, now: i64) -> Result<u64, String> {
    if let Some(held) = highest_held {
        if next_id <= held {
            return Err(format!("its next id {next_id} is not above id {held} its database export holds"));
        }
        if next_id - held > MAX_UNUSED_IDS {
            return Err(format!(
                "its next id {next_id} lies more than 2^56 ids above the highest id it holds ({held})"
            ));
        }
    }
    let elapsed = u64::try_from(now.saturating_sub(created_at)).unwrap_or(0);
    let base = elapsed
        .checked_mul(RESTORE_IDS_PER_SECOND)
        .and_then(|per_second| per_second.checked_add(RESTORE_ID_GAP))
        .and_then(|gap| gap.checked_add(next_id))
        .filter(|base| *base <= MAX_ID_BASE);
    base.ok_or_else(|| {
        format!("its next id {next_id} (created at {created_at}) leaves no room for the restored store's ids")
    })
}

/// The id `key` of the database export's tree `tree` holds (events: the key; interactions and
/// rights requests: its last 8 bytes), if that tree's keys hold ids.
pub(super) fn held_id(tree: &[u8], key: &[u8]) -> Option<u64> {
    let tail = match tree {
        b"events" => key,
        b"interactions" | b"rights" => key.get(domicile_types::SUBJECT_ID_LEN..)?,
        _ => return None,
    };
    <[u8; 8]>::try_from(tail).ok().map(u64::from_be_bytes)
}

/// The id base stored in `counters` (0 without one).
pub(super) fn read_base(counters: &sled::Tree) -> Result<u64, StoreError> {
    match counters.get(ID_BASE).map_err(backend)? {
        None => Ok(0),
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt("id base".into())),
    }
}

/// Stores the id base in `counters` (a restore, before the database is flushed).
pub(super) fn write_base(counters: &sled::Tree, base: u64) -> Result<(), StoreError> {
    counters.insert(ID_BASE, &base.to_be_bytes()).map(|_| ()).map_err(backend)
}

impl SledStore {
    /// The next id: sled's (monotonic across restarts) above the base.
    pub(super) fn next_id(&self) -> Result<u64, StoreError> {
        let raw = self.db.generate_id().map_err(backend)?;
        raw.checked_add(self.id_base).ok_or_else(|| StoreError::Backend("the store's ids are exhausted".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_leaves_a_gap_that_grows_with_the_time_since_the_backup() {
        assert_eq!(restored_base(100, Some(99), 1_000, 1_000), Ok(100 + RESTORE_ID_GAP));
        assert_eq!(restored_base(100, Some(99), 1_000, 1_010), Ok(100 + RESTORE_ID_GAP + 10 * RESTORE_IDS_PER_SECOND));
        // A clock behind the backup's counts no time.
        assert_eq!(restored_base(100, None, 1_000, 10), Ok(100 + RESTORE_ID_GAP));
    }

    #[test]
    fn a_next_id_the_export_contradicts_or_near_the_end_is_refused() {
        assert!(restored_base(50, Some(50), 0, 0).unwrap_err().contains("not above id 50"));
        assert!(restored_base(u64::MAX - 1, Some(7), 0, 0).unwrap_err().contains("more than 2^56"));
        assert!(restored_base(u64::MAX - 1, None, 0, 0).unwrap_err().contains("no room"));
        assert!(restored_base(u64::MAX - 1, Some(u64::MAX - 2), 0, 0).unwrap_err().contains("no room"));
        assert!(restored_base(100, Some(99), i64::MIN, i64::MAX).unwrap_err().contains("no room"));
    }
}
