//! A merge: one subject of this region joins another (its links, ledger, interactions, rights
//! requests and profile), with the lineage an unmerge needs (`store::split`).

use domicile_types::{SUBJECT_ID_LEN, SubjectId};
use sled::Transactional;

use super::claims::{check_replay, record_replay};
use super::{
    Idempotency, Merged, Recorded, SledStore, StoreError, SubjectKey, abort, backend, context, encode, flatten, seal,
};
use crate::store::LogPositions;
use crate::store::split::{MergeSide, join_records};

/// One entry moved between subjects: old key, new key, value sealed for the new subject.
type Move = (sled::IVec, Vec<u8>, Vec<u8>);

impl SledStore {
    /// Merges `from` into `into` at `now`; the lineage records `merged_at` (`now`, except when a
    /// restore replays a journaled merge: its own time).
    pub(super) fn merge_subjects(
        &self,
        into: &SubjectId,
        from: &SubjectId,
        now: i64,
        merged_at: i64,
        idempotency: Option<&Idempotency>,
    ) -> Result<Merged, StoreError> {
        if into == from {
            return Err(StoreError::Conflict);
        }
        // Held throughout: every writer takes this lock, so nothing is written to either subject
        // between reading their data and replacing it.
        let _serial = self.serialise_writes(&[*into, *from]);
        let mut into_entry = self.meta_entry(into)?.ok_or(StoreError::NotFound)?;
        let from_entry = self.meta_entry(from)?.ok_or(StoreError::NotFound)?;
        if into_entry.meta.jurisdiction != from_entry.meta.jurisdiction {
            return Err(StoreError::MergeJurisdictionMismatch);
        }
        let into_key = self.key(into)?;
        let from_key = self.key(from)?;

        let mut record = self.subject_record_raw(into)?.unwrap_or_default();
        let from_record = self.subject_record_raw(from)?.unwrap_or_default();
        let sides = [(into, &into_entry), (from, &from_entry)].map(|(id, entry)| MergeSide {
            id: *id,
            meta: &entry.meta,
            links: entry.links.clone(),
            positions: LogPositions::default(),
        });
        let [mut into_side, mut from_side] = sides;
        into_side.positions = self.positions(into)?;
        from_side.positions = self.positions(from)?;
        // Kept so the merge can be undone (`store::split`).
        join_records(&mut record, from_record, into_side, from_side, merged_at);
        let moved_links = from_entry.links.clone();
        for link in &moved_links {
            if !into_entry.links.contains(link) {
                into_entry.links.push(*link);
            }
        }
        // Fail closed: a restriction on either half holds for the merged subject.
        into_entry.meta.restricted |= from_entry.meta.restricted;
        into_entry.meta.created_at = into_entry.meta.created_at.min(from_entry.meta.created_at);
        let sealed_record = seal(&into_key, b"subjects", into.as_bytes(), &record)?;
        let meta_bytes = encode(&into_entry)?;

        let (ledger, listed) = self.ledger_moves((from, &from_key), (into, &into_key))?;
        let ledger_from: Vec<_> = ledger.iter().map(|(at, ..)| *at).collect();
        let interactions = Self::reseal_log(&self.interactions, b"interactions", (from, &from_key), (into, &into_key))?;
        let rights = Self::reseal_log(&self.rights, b"rights", (from, &from_key), (into, &into_key))?;
        let index_old = Self::prefix_keys(&self.directory, from)?;
        // An entry both hold is one entry again: `from`'s copy replaces `into`'s at the same key.
        let index_new = self.directory(into)?.appending_unlisted(into, listed);
        // The record in force per purpose × channel is the one that supersedes the other, so an
        // older grant of one half never overrides a withdrawal or denial of the other.
        let from_current = Self::prefix_keys(&self.current, from)?;
        let (current_writes, consent) = self.merged_in_force((into, &into_key), from, now)?;
        let recorded = [Recorded::Merge {
            into: *into,
            from: *from,
            links: &moved_links,
            all_links: &into_entry.links,
            consent: &consent,
            restricted: into_entry.meta.restricted,
        }];
        let events_out = self.events_of(&recorded, now)?;
        let merged = Merged {
            from: *from,
            links: moved_links.clone(),
            consent_records: ledger.len(),
            interactions: interactions.len(),
            event: events_out.last().map_or(0, |e| e.sequence),
        };
        let audited = self.audited(now)?;
        let trees = self.subject_trees();
        let result = trees.as_slice().transaction(|trees| {
            let [
                meta,
                subjects,
                links,
                ledger_tree,
                current,
                interaction_tree,
                rights_tree,
                directory,
                events,
                event_index,
                retiring,
                replays,
                segment_tree,
            ] = trees.as_slice()
            else {
                return abort(StoreError::Backend("transaction trees".into()));
            };
            check_replay(replays, idempotency)?;
            meta.insert(&into.as_bytes()[..], meta_bytes.as_slice())?;
            meta.remove(&from.as_bytes()[..])?;
            subjects.insert(&into.as_bytes()[..], sealed_record.as_slice())?;
            subjects.remove(&from.as_bytes()[..])?;
            // Links stay in this region, so their claims (and `held` generations) stay as they are.
            for link in &moved_links {
                links.insert(&link.as_bytes()[..], &into.as_bytes()[..])?;
            }
            super::segments::remove_entries(ledger_tree, segment_tree, &ledger_from)?;
            for (_, new, sealed) in &ledger {
                ledger_tree.insert(&new[..], sealed.as_slice())?;
            }
            for (tree, moves) in [(interaction_tree, &interactions), (rights_tree, &rights)] {
                for (old, new, sealed) in moves {
                    tree.remove(old)?;
                    tree.insert(new.as_slice(), sealed.as_slice())?;
                }
            }
            for old in &from_current {
                current.remove(old)?;
            }
            for old in &index_old {
                directory.remove(old)?;
            }
            for (new, listing) in &index_new {
                directory.insert(new.as_slice(), listing.as_slice())?;
            }
            for (new, sealed) in &current_writes {
                current.insert(new.as_slice(), sealed.as_slice())?;
            }
            super::retire::put_events(events, event_index, &events_out)?;
            super::retire::mark_retiring(retiring, &events_out)?;
            record_replay(replays, idempotency, Some((into, &into_key)), &(*into, &merged))?;
            audited.append(&recorded)
        });
        flatten(result)?;
        audited.commit();
        // The moved data must be durable before `from`'s key can go: destroyed first, a crash
        // could bring back the pre-merge state with `from`'s records sealed under no key.
        self.db.flush().map_err(backend)?;
        // Journaled before `from`'s key goes, so a restore of an earlier backup merges again.
        self.journal_merge(from, into, now)?;
        self.vault.destroy(from)?;
        Ok(merged)
    }

    /// Re-seals every entry of `from`'s log in `tree` under `into`'s key, keeping the sequence
    /// part of each key. Returns (old key, new key, new sealed value) triples.
    pub(super) fn reseal_log(
        tree: &sled::Tree,
        name: &[u8],
        from: (&SubjectId, &SubjectKey),
        into: (&SubjectId, &SubjectKey),
    ) -> Result<Vec<Move>, StoreError> {
        tree.scan_prefix(from.0.as_bytes())
            .map(|item| {
                let (old, value) = item.map_err(backend)?;
                let plain = from.1.open(&context(name, &old), &value)?;
                let mut new = Vec::with_capacity(old.len());
                new.extend_from_slice(into.0.as_bytes());
                new.extend_from_slice(&old[SUBJECT_ID_LEN..]);
                let sealed = into.1.seal(&context(name, &new), &plain)?;
                Ok((old, new, sealed))
            })
            .collect()
    }
}
