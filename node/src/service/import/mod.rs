//! Consent brought from another system (`domicile import`, issue 22): each entry applied once per
//! source system and event id, with its original capture time, marked imported, and announced to
//! watchers only when asked. A batch is written subject by subject: a subject's new entries in one
//! store write (`Store::append_consents`; the embedded store makes it one transaction), subjects
//! concurrently, so the writes share group commits. Every entry is a consent record like any
//! other, checked as a capture is and with its own audit entry, so decisions name the imported
//! evidence.

pub(super) mod wire;

use std::collections::HashMap;

use domicile_proto::convert::SubjectKey;
use futures_util::StreamExt as _;

use super::consent::{ConsentCapture, check_capture_fields};
use super::unit::Settled;
use super::{Caller, NodeService};
use crate::error::NodeError;
use crate::store::{Idempotency, ImportEvidence, Store};

/// A group's subject and its metadata, as read when the batch was grouped.
type Resolved = Result<(domicile_types::SubjectId, crate::store::SubjectMeta), NodeError>;

/// Subjects written at once within a batch.
const SUBJECTS_IN_FLIGHT: usize = 32;

/// One entry to import, as read from the request.
pub(crate) struct ImportItem {
    pub key: SubjectKey,
    pub capture: ConsentCapture,
    pub source: ImportEvidence,
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
        let mut group_of: HashMap<String, String> = HashMap::new();
        let mut groups: HashMap<String, (Resolved, Vec<(usize, ImportItem)>)> = HashMap::new();
        for (index, (id, item)) in items.into_iter().enumerate() {
            match item {
                Ok(item) => {
                    outcomes.push((id, None));
                    let key = format!("{:?}", item.key.as_key_ref());
                    let group = match group_of.get(&key) {
                        Some(group) => group.clone(),
                        None => {
                            let resolved = self.resolve_meta(&item.key).await;
                            let group = match &resolved {
                                Ok((subject, _)) => format!("subject {subject}"),
                                Err(_) => format!("key {key}"),
                            };
                            group_of.insert(key, group.clone());
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
        let mut done = futures_util::stream::iter(groups.into_values())
            .map(|(resolved, group)| self.import_subject(caller, resolved, group, dry_run))
            .buffer_unordered(SUBJECTS_IN_FLIGHT);
        while let Some(results) = done.next().await {
            for (index, imported) in results {
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

    /// One subject's entries, in order: those whose source event its ledger already holds are
    /// duplicates (however long ago they were imported); the others are written as consent
    /// records, each under an idempotency key of its source event, so a concurrent run of the
    /// same file cannot write one twice either.
    async fn import_subject(
        &self,
        caller: &Caller,
        resolved: Resolved,
        group: Vec<(usize, ImportItem)>,
        dry_run: bool,
    ) -> Vec<(usize, Imported)> {
        let mut out = Vec::with_capacity(group.len());
        let (resolved, history) = match resolved {
            Ok((subject, meta)) => {
                let history = self.store.consent_history(&subject).await.map_err(NodeError::from);
                (Some((subject, meta)), history)
            }
            Err(e) => (None, Err(e)),
        };
        let mut seen: HashMap<(String, String), u64> = match history {
            Ok(entries) => entries
                .into_iter()
                .filter_map(|r| r.evidence.import.map(|i| ((i.source_system, i.source_event_id), r.sequence)))
                .collect(),
            Err(e) => {
                // The subject cannot be read: every entry of it fails alike.
                let status = tonic::Status::from(e);
                return group
                    .into_iter()
                    .map(|(index, _)| (index, Imported::Refused(NodeError::from_status(&status))))
                    .collect();
            }
        };
        // The entries to write, checked as a write would: written together below.
        let mut ready: Vec<(usize, domicile_types::SubjectId, crate::store::NewConsent, Idempotency)> = Vec::new();
        let mut fallback: Vec<(usize, ImportItem, Idempotency)> = Vec::new();
        // A source event repeated within the call gets the first copy's outcome, known only
        // once that copy is written (or refused).
        let mut pending: HashMap<(String, String), usize> = HashMap::new();
        let mut repeats: Vec<(usize, usize)> = Vec::new();
        for (index, item) in group {
            let source = (item.source.source_system.clone(), item.source.source_event_id.clone());
            if let Some(sequence) = seen.get(&source) {
                out.push((index, Imported::Duplicate(*sequence)));
                continue;
            }
            if let Some(first) = pending.get(&source) {
                repeats.push((index, *first));
                continue;
            }
            let Some((subject_id, meta)) = &resolved else { continue };
            let tag = self.import_tag(subject_id, &item.source, &item.capture);
            // Written by a run whose entry the ledger scan above raced with.
            match self.replayed::<(domicile_types::SubjectId, (crate::store::ConsentRecord, u64))>(Some(&tag)).await {
                Ok(Some((_, (record, _)))) => {
                    seen.insert(source, record.sequence);
                    out.push((index, Imported::Duplicate(record.sequence)));
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    out.push((index, Imported::Refused(e)));
                    continue;
                }
            }
            pending.insert(source, index);
            let mut capture = item.capture;
            capture.evidence.import = Some(item.source.clone());
            capture.evidence.captured_via = item.key.link();
            let prepared =
                check_capture_fields(&capture).and_then(|()| self.consent_for(meta, caller, capture.clone()));
            match prepared {
                Ok(_) if dry_run => out.push((index, Imported::Accepted(0))),
                Ok(consent) => {
                    ready.push((index, *subject_id, consent, tag));
                    fallback.push((index, ImportItem { key: item.key, capture, source: item.source }, tag));
                }
                Err(e) => out.push((index, Imported::Refused(e))),
            }
        }
        let Some(subject) = ready.first().map(|(_, subject, _, _)| *subject) else {
            copy_outcomes(&mut out, repeats);
            return out;
        };
        let indices: Vec<usize> = ready.iter().map(|(index, ..)| *index).collect();
        let batch = ready.into_iter().map(|(_, _, consent, tag)| (consent, Some(tag))).collect();
        match self.settle(self.store.append_consents(&subject, batch).await).await {
            Ok(Settled::Applied(results)) => {
                for (index, (record, _)) in indices.into_iter().zip(results) {
                    out.push((index, Imported::Accepted(record.sequence)));
                }
            }
            // A run writing the same events raced this one: each entry on its own, answered with
            // the first write where there was one.
            Ok(Settled::Replayed) => {
                for (index, item, tag) in fallback {
                    let replayed = self
                        .replayed::<(domicile_types::SubjectId, (crate::store::ConsentRecord, u64))>(Some(&tag))
                        .await;
                    let outcome = match replayed {
                        Ok(Some((_, (record, _)))) => Imported::Duplicate(record.sequence),
                        Ok(None) => {
                            let mut capture = item.capture;
                            capture.evidence.import = Some(item.source);
                            match self.capture_unlogged(&item.key, caller, capture, Some(&tag)).await {
                                Ok((_, record)) => Imported::Accepted(record.sequence),
                                Err(e) => Imported::Refused(e),
                            }
                        }
                        Err(e) => Imported::Refused(e),
                    };
                    out.push((index, outcome));
                }
            }
            Err(e) => {
                let status = tonic::Status::from(e);
                for index in indices {
                    out.push((index, Imported::Refused(NodeError::from_status(&status))));
                }
            }
        }
        copy_outcomes(&mut out, repeats);
        out
    }

    /// The idempotency record of an imported entry: keyed by the subject and the source event
    /// (not by caller or request), so any run that carries the event again for the subject is
    /// answered with the first entry, and another subject's event of the same id is not this
    /// one. Fingerprinted by what the entry says: two runs racing with the same event id but
    /// other content get INVALID_ARGUMENT for the second, not a silent duplicate. (Once the
    /// first is in the ledger, the event id alone makes a duplicate: the import is idempotent on
    /// source system and event id.)
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
