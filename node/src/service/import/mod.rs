//! Consent brought from another system (`domicile import`, issue 22): each entry applied once per
//! source system and event id, with its original capture time, marked imported, and announced to
//! watchers only when asked. A call's entries are checked subject by subject, then written in one
//! store write (`Store::append_consents`; the embedded store makes it one transaction and one
//! group commit for the whole call). Every entry is a consent record like any other, checked as a
//! capture is and with its own audit entry, so decisions name the imported evidence.

pub(super) mod wire;

use std::collections::HashMap;

use domicile_proto::convert::SubjectKey;
use futures_util::StreamExt as _;

use super::consent::{ConsentCapture, check_capture_fields};
use super::unit::Settled;
use super::{Caller, NodeService};
use crate::error::NodeError;
use crate::store::{ConsentBatch, Idempotency, ImportEvidence, ImportedEntry, NewConsent, Store, StoreError};

/// A group's subject and its metadata, as read when the batch was grouped.
type Resolved = Result<(domicile_types::SubjectId, crate::store::SubjectMeta), NodeError>;

/// An imported entry's idempotency record: its subject, its ledger position and its change event
/// (0 for a quiet grant, which has none).
type ImportReplay = (domicile_types::SubjectId, (ImportedEntry, u64));

/// Entries in one store write at most: on the embedded store this bounds how long an import holds
/// the region's write lock at once, so a capture or withdrawal waits for one such write at most.
const ENTRIES_PER_WRITE: usize = 512;

/// Subjects checked at once within a batch.
const SUBJECTS_IN_FLIGHT: usize = 32;

/// The entries of a call that go together: a subject's (whichever of its identifiers names
/// them), or, for a key that names no subject, that key's (refused alike).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Group {
    Subject(domicile_types::SubjectId),
    Unresolved(SubjectKey),
}

/// One entry to import, as read from the request.
pub(crate) struct ImportItem {
    pub key: SubjectKey,
    pub capture: ConsentCapture,
    pub source: ImportEvidence,
}

/// One subject's entries, checked: the outcomes known before writing, and the entries to write.
struct Prepared {
    subject: Option<domicile_types::SubjectId>,
    out: Vec<(usize, Imported)>,
    /// To write, in order; `fallback` holds the same entries as read, to write one by one.
    ready: Vec<(NewConsent, Idempotency)>,
    fallback: Vec<(usize, ImportItem, Idempotency)>,
    /// Repeats of a source event within the call: (index, first copy's index).
    repeats: Vec<(usize, usize)>,
}

/// What the batch's write said of one subject's entries.
enum Written {
    /// The store's answer for each of the subject's entries.
    Store(Vec<Result<(crate::store::ConsentRecord, u64), StoreError>>),
    /// The batch was not written as a whole: each entry on its own.
    Alone,
    /// The batch's write failed (or its durability is unknown).
    Failed(tonic::Status),
}

/// What became of one entry.
pub(crate) enum Imported {
    /// Written (a dry run: would be), at this ledger position (0 in a dry run).
    Accepted(u64),
    /// Imported before: the earlier entry's position (0 where it cannot be told).
    Duplicate(u64),
    Refused(NodeError),
}

impl<S: Store> NodeService<S> {
    /// Imports `items` (each already read, or refused with why) for `caller`; one outcome per
    /// item, in order.
    pub(crate) async fn import_consents(
        &self,
        caller: &Caller,
        items: Vec<(u64, Result<ImportItem, NodeError>)>,
        dry_run: bool,
    ) -> Vec<(u64, Imported)> {
        let mut outcomes: Vec<(u64, Option<Imported>)> = Vec::with_capacity(items.len());
        // A subject's entries stay in request order, whichever of its identifiers names them;
        // each subject is one task, its subject read here once. A key that names no subject is a
        // group of its own (refused).
        let mut group_of: HashMap<SubjectKey, Group> = HashMap::new();
        let mut groups: HashMap<Group, (Resolved, Vec<(usize, ImportItem)>)> = HashMap::new();
        for (index, (id, item)) in items.into_iter().enumerate() {
            match item {
                Ok(item) => {
                    outcomes.push((id, None));
                    let group = match group_of.get(&item.key) {
                        Some(group) => group.clone(),
                        None => {
                            let resolved = self.resolve_meta(&item.key).await;
                            let group = match &resolved {
                                Ok((subject, _)) => Group::Subject(*subject),
                                Err(_) => Group::Unresolved(item.key.clone()),
                            };
                            group_of.insert(item.key.clone(), group.clone());
                            groups.entry(group.clone()).or_insert_with(|| (resolved, Vec::new()));
                            group
                        }
                    };
                    if let Some((_, entries)) = groups.get_mut(&group) {
                        entries.push((index, item));
                    }
                }
                Err(e) => outcomes.push((id, Some(Imported::Refused(e)))),
            }
        }
        // Each subject's entries checked (its ledger read once), the subjects concurrently; then
        // every subject's new entries in one store write and one durable commit.
        let mut prepared: Vec<Prepared> = futures_util::stream::iter(groups.into_values())
            .map(|(resolved, group)| self.prepare_subject(caller, resolved, group, dry_run))
            .buffer_unordered(SUBJECTS_IN_FLIGHT)
            .collect()
            .await;
        let batch: ConsentBatch = prepared
            .iter_mut()
            .filter_map(|p| {
                let subject = p.subject?;
                let entries: Vec<_> = std::mem::take(&mut p.ready).into_iter().map(|(c, tag)| (c, Some(tag))).collect();
                (!entries.is_empty()).then_some((subject, entries))
            })
            .collect();
        // A duplicate found in the ledger may be a racing run's entry not yet durable: answered
        // only once it is (as a replayed idempotency record is).
        let duplicates = prepared.iter().any(|p| p.out.iter().any(|(_, o)| matches!(o, Imported::Duplicate(_))));
        if duplicates && let Err(e) = self.settle_replay().await {
            let status = tonic::Status::from(e);
            for (_, outcome) in prepared.iter_mut().flat_map(|p| p.out.iter_mut()) {
                if matches!(outcome, Imported::Duplicate(_)) {
                    *outcome = Imported::Refused(NodeError::from_status(&status));
                }
            }
        }
        let mut written = if batch.is_empty() { Vec::new() } else { self.write_batch(batch).await }.into_iter();
        for mut subject in prepared {
            if !subject.fallback.is_empty() {
                let result = written.next().unwrap_or(Written::Alone);
                self.settle_subject(caller, &mut subject, result).await;
            }
            copy_outcomes(&mut subject.out, subject.repeats);
            for (index, imported) in subject.out {
                if let Some(slot) = outcomes.get_mut(index) {
                    slot.1 = Some(imported);
                }
            }
        }
        outcomes
            .into_iter()
            .map(|(id, outcome)| (id, outcome.unwrap_or(Imported::Refused(NodeError::Internal("import outcome lost")))))
            .collect()
    }

    /// Writes `batch` in store writes of at most [`ENTRIES_PER_WRITE`] entries (a subject's
    /// entries together), so a large call holds the region's write lock (the embedded store's)
    /// for a bounded time at once and other writers (a withdrawal) get in between; then one
    /// durable commit for all of them. One answer per subject, in order.
    async fn write_batch(&self, batch: ConsentBatch) -> Vec<Written> {
        let mut writes: Vec<ConsentBatch> = Vec::new();
        let mut size = 0;
        for (subject, entries) in batch {
            if writes.last().is_none_or(|w| size + entries.len() > ENTRIES_PER_WRITE && !w.is_empty()) {
                writes.push(Vec::new());
                size = 0;
            }
            size += entries.len();
            if let Some(write) = writes.last_mut() {
                write.push((subject, entries));
            }
        }
        // One answer per subject, in order: known now for a write that failed as a whole, else
        // filled in once everything applied is durable.
        let mut out: Vec<Option<Written>> = Vec::new();
        let mut applied = Vec::new();
        for write in writes {
            let subjects = write.len();
            match self.store.append_consents(write).await {
                Ok(results) => {
                    out.extend(results.iter().map(|_| None));
                    applied.extend(results);
                }
                // Only a store that writes a batch as a whole answers so: each entry on its own.
                Err(StoreError::Replayed) => out.extend((0..subjects).map(|_| Some(Written::Alone))),
                Err(e) => {
                    let e = if self.store.disk_full(&e) { StoreError::StorageFull } else { e };
                    let status = tonic::Status::from(NodeError::from(e));
                    out.extend((0..subjects).map(|_| Some(Written::Failed(status.clone()))));
                }
            }
        }
        let mut settled = if applied.is_empty() {
            Ok(Vec::new().into_iter())
        } else {
            match self.settle(Ok(applied)).await {
                Ok(Settled::Applied(results)) => Ok(results.into_iter()),
                Ok(Settled::Replayed) => Err(tonic::Status::internal("import write answered as a replay")),
                Err(e) => Err(tonic::Status::from(e)),
            }
        };
        out.into_iter()
            .map(|answer| match (answer, &mut settled) {
                (Some(answer), _) => answer,
                (None, Ok(results)) => results.next().map_or(Written::Alone, Written::Store),
                (None, Err(status)) => Written::Failed(status.clone()),
            })
            .collect()
    }

    /// One subject's entries, in order: those whose source event its ledger already holds are
    /// duplicates (however long ago they were imported; `Store::imported_positions`); the others
    /// are checked as a capture would be and made ready to write, each under an idempotency key
    /// of its source event, so a concurrent run of the same file cannot write one twice either.
    async fn prepare_subject(
        &self,
        caller: &Caller,
        resolved: Resolved,
        group: Vec<(usize, ImportItem)>,
        dry_run: bool,
    ) -> Prepared {
        let mut prepared = Prepared {
            subject: None,
            out: Vec::with_capacity(group.len()),
            ready: Vec::new(),
            fallback: Vec::new(),
            repeats: Vec::new(),
        };
        let sources: Vec<(String, String)> = group
            .iter()
            .map(|(_, item)| (item.source.source_system.clone(), item.source.source_event_id.clone()))
            .collect();
        let (resolved, history) = match resolved {
            Ok((subject, meta)) => {
                let history = self.store.imported_positions(&subject, &sources).await.map_err(NodeError::from);
                (Some((subject, meta)), history)
            }
            Err(e) => (None, Err(e)),
        };
        let seen: HashMap<(String, String), u64> = match history {
            Ok(positions) => {
                sources.into_iter().zip(positions).filter_map(|(source, position)| Some((source, position?))).collect()
            }
            Err(e) => {
                // The subject cannot be read: every entry of it fails alike.
                let status = tonic::Status::from(e);
                prepared.out = group
                    .into_iter()
                    .map(|(index, _)| (index, Imported::Refused(NodeError::from_status(&status))))
                    .collect();
                return prepared;
            }
        };
        prepared.subject = resolved.as_ref().map(|(subject, _)| *subject);
        // A source event repeated within the call gets the first copy's outcome, known only
        // once that copy is written (or refused).
        let mut pending: HashMap<(String, String), usize> = HashMap::new();
        for (index, item) in group {
            let source = (item.source.source_system.clone(), item.source.source_event_id.clone());
            if let Some(sequence) = seen.get(&source) {
                prepared.out.push((index, Imported::Duplicate(*sequence)));
                continue;
            }
            if let Some(first) = pending.get(&source) {
                prepared.repeats.push((index, *first));
                continue;
            }
            let Some((subject_id, meta)) = &resolved else { continue };
            // A run racing this one may write the event after the lookup above: the store's
            // write then refuses it (the tag, or on the embedded store the ledger directory, checked
            // under its write lock) and `import_one` answers it as that run's duplicate.
            let tag = self.import_tag(subject_id, &item.source, &item.capture);
            pending.insert(source, index);
            let mut capture = item.capture;
            capture.evidence.import = Some(item.source.clone());
            capture.evidence.captured_via = item.key.link();
            let checked = check_capture_fields(&capture).and_then(|()| self.consent_for(meta, caller, capture.clone()));
            match checked {
                Ok(_) if dry_run => prepared.out.push((index, Imported::Accepted(0))),
                Ok(consent) => {
                    prepared.ready.push((consent, tag));
                    prepared.fallback.push((index, ImportItem { key: item.key, capture, source: item.source }, tag));
                }
                Err(e) => prepared.out.push((index, Imported::Refused(e))),
            }
        }
        prepared
    }

    /// The outcomes of a subject's entries sent to the store, from what the batch's write said of
    /// each. An entry found written by a run racing this one (its idempotency key recorded) is a
    /// duplicate of that write; one whose subject moved (an unmerge) or was not written with the
    /// batch goes on its own ([`Self::import_one`]).
    async fn settle_subject(&self, caller: &Caller, subject: &mut Prepared, result: Written) {
        let fallback = std::mem::take(&mut subject.fallback);
        let mut results = match result {
            Written::Store(results) => results.into_iter().map(Some).collect(),
            Written::Alone => Vec::new(),
            Written::Failed(status) => {
                for (index, ..) in fallback {
                    subject.out.push((index, Imported::Refused(NodeError::from_status(&status))));
                }
                return;
            }
        }
        .into_iter();
        for (index, item, tag) in fallback {
            let outcome = match results.next().flatten() {
                Some(Ok((record, _))) => Imported::Accepted(record.sequence),
                None | Some(Err(StoreError::Replayed | StoreError::Retry | StoreError::NotFound)) => {
                    self.import_one(caller, item, &tag).await
                }
                Some(Err(e)) => Imported::Refused(NodeError::from(e)),
            };
            subject.out.push((index, outcome));
        }
    }

    /// One entry on its own, as the batch would have written it: a duplicate if a run racing
    /// this one wrote it first, else written for the subject its identifier names now (resolved
    /// again if an unmerge moved it meanwhile).
    async fn import_one(&self, caller: &Caller, item: ImportItem, tag: &Idempotency) -> Imported {
        let mut attempt = 0;
        let source = [(item.source.source_system.clone(), item.source.source_event_id.clone())];
        loop {
            match self.replayed::<ImportReplay>(Some(tag)).await {
                Ok(Some((_, (entry, _)))) => return Imported::Duplicate(entry.sequence),
                Ok(None) => {}
                Err(e) => return Imported::Refused(e),
            }
            let (subject, meta) = match self.resolve_meta(&item.key).await {
                Ok(resolved) => resolved,
                Err(e) => return Imported::Refused(e),
            };
            // In the subject's ledger already (the embedded store keeps no idempotency record
            // for an imported entry: its ledger directory answers instead).
            match self.store.imported_positions(&subject, &source).await {
                Ok(found) => {
                    if let Some(Some(sequence)) = found.first() {
                        return match self.settle_replay().await {
                            Ok(()) => Imported::Duplicate(*sequence),
                            Err(e) => Imported::Refused(e),
                        };
                    }
                }
                // The subject went (merged, split, erased) since it was resolved: again.
                Err(StoreError::NotFound | StoreError::Retry) if attempt < 2 && item.key.link().is_some() => {
                    attempt += 1;
                    continue;
                }
                Err(e) => return Imported::Refused(NodeError::from(e)),
            }
            let consent = match self.consent_for(&meta, caller, item.capture.clone()) {
                Ok(consent) => consent,
                Err(e) => return Imported::Refused(e),
            };
            let written = self.store.append_consents(vec![(subject, vec![(consent, Some(*tag))])]).await;
            let written = match self.settle(written).await {
                Ok(Settled::Applied(mut results)) => results.pop().and_then(|mut r| r.pop()),
                Ok(Settled::Replayed) => Some(Err(StoreError::Replayed)),
                Err(e) => return Imported::Refused(e),
            };
            match written {
                Some(Ok((record, _))) => return Imported::Accepted(record.sequence),
                // Written by a racing run since the check above: its entry, once more (even after
                // the retries for a moved subject, so a replay is answered as a duplicate).
                Some(Err(StoreError::Replayed)) if attempt < 3 => {}
                Some(Err(StoreError::Retry | StoreError::NotFound)) if attempt < 2 && item.key.link().is_some() => {}
                Some(Err(e)) => return Imported::Refused(NodeError::from(e)),
                None => return Imported::Refused(NodeError::Internal("import outcome lost")),
            }
            attempt += 1;
        }
    }

    /// The idempotency record of an imported entry: keyed by the subject and the source event
    /// (not by caller or request), so any run that carries the event again for the subject is
    /// answered with the first entry, and another subject's event of the same id is not this
    /// one. Fingerprinted by what the entry says: on a store that keeps the record, two runs
    /// racing with the same event id but other content get INVALID_ARGUMENT for the second. (Once
    /// the first is in the ledger, the event id alone makes a duplicate: the import is
    /// idempotent on source system and event id. The embedded store keeps no record for an
    /// imported entry: its ledger directory, written with the ledger entry, is that check.)
    fn import_tag(
        &self,
        subject: &domicile_types::SubjectId,
        source: &ImportEvidence,
        capture: &ConsentCapture,
    ) -> Idempotency {
        let key = [subject.as_bytes().as_slice(), source.source_system.as_bytes(), source.source_event_id.as_bytes()];
        let channels: Vec<&str> = capture.channels.iter().map(|c| c.as_str()).collect();
        let content = format!(
            "{}|{}|{}|{:?}|{:?}|{:?}|{}",
            capture.purpose,
            channels.join(","),
            capture.action.resulting_state(),
            capture.captured_at_ms,
            capture.expires_at,
            capture.evidence.consent_kind,
            capture.evidence.hours.join(","),
        );
        Idempotency {
            key: self.link_key.digest(b"domicile/import-event/v2", &key),
            fingerprint: self.link_key.digest(b"domicile/import-event-body/v2", &[content.as_bytes()]),
            at: domicile_runtime::process::now_unix(),
        }
    }
}

/// Gives each repeat of a source event within one call (`(index, first index)`) its first copy's
/// outcome: written → duplicate of it; refused → the same refusal.
fn copy_outcomes(out: &mut Vec<(usize, Imported)>, repeats: Vec<(usize, usize)>) {
    for (index, first) in repeats {
        let copy = match out.iter_mut().find(|(i, _)| *i == first).map(|(_, outcome)| outcome) {
            Some(Imported::Accepted(sequence) | Imported::Duplicate(sequence)) => Imported::Duplicate(*sequence),
            Some(slot) => {
                let taken = std::mem::replace(slot, Imported::Duplicate(0));
                let status = match taken {
                    Imported::Refused(e) => tonic::Status::from(e),
                    _ => tonic::Status::internal("import outcome lost"),
                };
                *slot = Imported::Refused(NodeError::from_status(&status));
                Imported::Refused(NodeError::from_status(&status))
            }
            None => Imported::Refused(NodeError::Internal("import outcome lost")),
        };
        out.push((index, copy));
    }
}
