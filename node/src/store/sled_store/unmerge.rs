//! Undoing a merge on sled: the plan is `store::split`'s; this reads the merged subject whole and
//! writes both halves in one transaction with the change events and the audit entry.

use domicile_types::{Link, SUBJECT_ID_LEN, SubjectId};
use sled::Transactional;

use super::claims::{check_replay, record_replay};
use super::ledger::{Directory, Listed, entry_key};
use super::{
    MetaEntry, Recorded, SledStore, StoreError, SubjectKey, abort, backend, consent_key, current_key, encode, flatten,
    open, seal,
};
use crate::store::split::{Half, Whole, split};
use crate::store::{Idempotency, LogPositions, RightsRequestRecord, Unmerged};

/// The position a per-subject log key ends with.
pub(super) fn position_of(key: &[u8]) -> Result<u64, StoreError> {
    let tail = key.get(SUBJECT_ID_LEN..).and_then(|t| <[u8; 8]>::try_from(t).ok());
    tail.map(u64::from_be_bytes).ok_or_else(|| StoreError::Corrupt("log key".into()))
}

/// A half's sealed values: (tree name, key, sealed) for every log entry and cell in force, and
/// its sealed record.
struct Sealed {
    entries: Vec<(usize, Vec<u8>, Vec<u8>)>,
    record: Vec<u8>,
    meta: Vec<u8>,
}

const CONSENT: usize = 0;
const CURRENT: usize = 1;
const INTERACTIONS: usize = 2;
const RIGHTS: usize = 3;
const DIRECTORY: usize = 4;

fn seal_half(subject: &SubjectId, key: &SubjectKey, half: &Half) -> Result<Sealed, StoreError> {
    let mut entries = Vec::new();
    for entry in &half.ledger {
        let sealed = seal(key, b"consent", &consent_key(subject, entry.sequence), entry)?;
        entries.push((CONSENT, entry_key(subject, entry.sequence).to_vec(), sealed));
    }
    let listed: Vec<Listed> =
        half.ledger.iter().map(|e| Listed::of(key, e.sequence, e.evidence.import.as_ref())).collect();
    for (k, listing) in Directory::fresh(subject, &listed) {
        entries.push((DIRECTORY, k, listing));
    }
    for ((purpose, channel), current) in &half.current {
        let k = current_key(subject, *purpose, *channel);
        entries.push((CURRENT, k.clone(), seal(key, b"current", &k, current)?));
    }
    for entry in &half.interactions {
        let k = consent_key(subject, entry.sequence);
        entries.push((INTERACTIONS, k.to_vec(), seal(key, b"interactions", &k, entry)?));
    }
    for (position, request) in &half.rights {
        let k = consent_key(subject, *position);
        entries.push((RIGHTS, k.to_vec(), seal(key, b"rights", &k, request)?));
    }
    Ok(Sealed {
        entries,
        record: seal(key, b"subjects", subject.as_bytes(), &half.record)?,
        meta: encode(&MetaEntry { meta: half.meta.clone(), links: half.links.clone() })?,
    })
}

impl SledStore {
    /// Every tree a merge or an unmerge writes, in the order their transactions name them:
    /// meta, subjects, links, ledger, current, interactions, rights, ledger_dir, events,
    /// event_subjects, retiring, idempotency, ledger_segments.
    pub(super) fn subject_trees(&self) -> [&sled::Tree; 13] {
        [
            &self.meta,
            &self.subjects,
            &self.links,
            &self.ledger,
            &self.current,
            &self.interactions,
            &self.rights,
            &self.directory,
            &self.events,
            &self.event_index,
            &self.retiring,
            &self.idempotency,
            &self.segments,
        ]
    }

    /// The positions of a subject's entries in its three logs.
    pub(super) fn positions(&self, subject: &SubjectId) -> Result<LogPositions, StoreError> {
        let of = |tree: &sled::Tree| -> Result<Vec<u64>, StoreError> {
            Self::prefix_keys(tree, subject)?.iter().map(|k| position_of(k)).collect()
        };
        Ok(LogPositions {
            consent: self.directory(subject)?.positions(),
            interactions: of(&self.interactions)?,
            rights: of(&self.rights)?,
        })
    }

    pub(super) fn unmerge_subject(
        &self,
        subject: &SubjectId,
        from: &SubjectId,
        kept: &SubjectId,
        restored: &SubjectId,
        now: i64,
        idempotency: Option<&Idempotency>,
    ) -> Result<Unmerged, StoreError> {
        if kept == restored || [kept, restored].contains(&subject) {
            return Err(StoreError::Conflict);
        }
        let _serial = self.serialise_writes(&[*subject, *kept, *restored]);
        let entry = self.meta_entry(subject)?.ok_or(StoreError::NotFound)?;
        if self.meta_entry(kept)?.is_some() || self.meta_entry(restored)?.is_some() {
            return Err(StoreError::Conflict);
        }
        let key = self.key(subject)?;
        let record = self.subject_record_raw(subject)?.unwrap_or_default();
        if !record.lineage.iter().any(|l| l.from == *from) {
            return Err(StoreError::NotFound);
        }
        let rights = self
            .rights
            .scan_prefix(subject.as_bytes())
            .map(|item| {
                let (k, value) = item.map_err(backend)?;
                Ok((position_of(&k)?, open::<RightsRequestRecord>(&key, b"rights", &k, &value)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Read once: what the halves get, and where the merged subject's entries are removed from.
        let located = self.located_ledger(subject)?;
        let ledger = located
            .iter()
            .map(|(position, _, sealed)| super::ledger::open_entry(&key, subject, *position, sealed))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let whole = Whole {
            meta: entry.meta.clone(),
            record,
            links: entry.links.clone(),
            ledger,
            interactions: self.open_log(&self.interactions, b"interactions", subject)?,
            rights,
        };
        let plan = split(whole, from)?;
        // Created (and durable) before any sealed value refers to them.
        let kept_key = self.vault.get_or_create(kept)?;
        let restored_key = self.vault.get_or_create(restored)?;
        self.vault.sync()?;
        let kept_half = seal_half(kept, &kept_key, &plan.kept)?;
        let back = seal_half(restored, &restored_key, &plan.restored)?;
        let mut old: Vec<(usize, sled::IVec)> = [(CURRENT, &self.current)]
            .into_iter()
            .chain([(INTERACTIONS, &self.interactions), (RIGHTS, &self.rights)])
            .map(|(i, tree)| Ok(Self::prefix_keys(tree, subject)?.into_iter().map(move |k| (i, k))))
            .collect::<Result<Vec<_>, StoreError>>()?
            .into_iter()
            .flatten()
            .collect();
        let old_entries: Vec<_> = located.into_iter().map(|(_, at, _)| at).collect();
        old.extend(Self::prefix_keys(&self.directory, subject)?.into_iter().map(|k| (DIRECTORY, k)));
        let kept_consent = plan.kept.announced(now);
        let restored_consent = plan.restored.announced(now);
        let links: &[Link] = &plan.restored.links;
        let recorded = [Recorded::Unmerge {
            merged: *subject,
            kept: *kept,
            restored: *restored,
            was: *from,
            links,
            kept_links: &plan.kept.links,
            kept_consent: &kept_consent,
            restored_consent: &restored_consent,
            restricted: [plan.kept.meta.restricted, plan.restored.meta.restricted],
            flagged: plan.flagged,
        }];
        let events_out = self.events_of(&recorded, now)?;
        let unmerged = Unmerged {
            kept: *kept,
            kept_links: plan.kept.links.clone(),
            restored: *restored,
            was: *from,
            links: links.to_vec(),
            consent_records: plan.restored.ledger.len(),
            interactions: plan.restored.interactions.len(),
            flagged: plan.flagged,
            event: events_out.last().map_or(0, |e| e.sequence),
        };
        let audited = self.audited(now)?;
        let trees = self.subject_trees();
        let result = trees.as_slice().transaction(|trees| {
            let [
                meta,
                subjects,
                link_tree,
                consent,
                current,
                interactions,
                rights,
                directory,
                events,
                event_index,
                retiring,
                replays,
                segments,
            ] = trees.as_slice()
            else {
                return abort(StoreError::Backend("transaction trees".into()));
            };
            check_replay(replays, idempotency)?;
            let logs = [consent, current, interactions, rights, directory];
            for (tree, k) in &old {
                logs[*tree].remove(k)?;
            }
            super::segments::remove_entries(consent, segments, &old_entries)?;
            meta.remove(&subject.as_bytes()[..])?;
            subjects.remove(&subject.as_bytes()[..])?;
            for (id, half, held) in [(kept, &kept_half, &plan.kept.links), (restored, &back, &plan.restored.links)] {
                meta.insert(&id.as_bytes()[..], half.meta.as_slice())?;
                subjects.insert(&id.as_bytes()[..], half.record.as_slice())?;
                for (tree, k, sealed) in &half.entries {
                    logs[*tree].insert(k.as_slice(), sealed.as_slice())?;
                }
                // Links stay in this region, so their claims (and `held` generations) stay as
                // they are.
                for link in held {
                    link_tree.insert(&link.as_bytes()[..], &id.as_bytes()[..])?;
                }
            }
            super::retire::put_events(events, event_index, &events_out)?;
            super::retire::mark_retiring(retiring, &events_out)?;
            record_replay(replays, idempotency, Some((kept, &kept_key)), &(*kept, &unmerged))?;
            audited.append(&recorded)
        });
        flatten(result)?;
        audited.commit();
        // Durable before the merged subject's key goes (as in a merge), and journaled first, so a
        // restore of an earlier backup splits it again before it replays later erasures.
        self.db.flush().map_err(backend)?;
        self.journal_unmerge(subject, from, kept, restored, now)?;
        self.vault.destroy(subject)?;
        Ok(unmerged)
    }

    /// Destroys, at open, every key whose subject the database does not hold: a merged or
    /// unmerged subject retired by a write that committed but whose node stopped before it
    /// destroyed the key (the key is destroyed after the commit, so the commit never names a
    /// subject without one), or a key made for a registration or an unmerge's half whose write
    /// never committed. Left, such a key keeps the retired subject's data readable in sled's old
    /// segments and backups; nothing else would ever remove it.
    /// One pass over the subjects in key order (not a lookup per key: this runs at every start).
    pub(super) fn without_orphan_keys(self) -> Result<Self, StoreError> {
        let mut orphans: std::collections::HashSet<SubjectId> = self.vault.subjects().into_iter().collect();
        for held in self.meta.iter().keys() {
            if let Ok(subject) = SubjectId::from_slice(&held.map_err(backend)?) {
                orphans.remove(&subject);
            }
        }
        let mut destroyed = 0usize;
        for subject in orphans {
            if self.vault.destroy(&subject)? {
                destroyed += 1;
            }
        }
        if destroyed > 0 {
            self.vault.sync()?;
            tracing::warn!(destroyed, "keys of subjects the database does not hold destroyed at open");
        }
        Ok(self)
    }
}
