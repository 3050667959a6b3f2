//! Undoing a merge, as a pure plan both engines apply: given everything a merged subject holds
//! and the lineage of one merge, which half keeps what, and what each half's consent in force
//! is (ARCHITECTURE.md, "Merge and unmerge").
//!
//! - Entries at positions a half held when the merge happened go back to that half.
//! - Entries made since the merge go to the half whose identifier they were captured through;
//!   entries captured through no known identifier (the caller named the subject by its ref, or
//!   through an identifier added since the merge) stay with both and are marked for review.
//! - Each half's record in force per purpose × channel is its ledger replayed in order, as the
//!   store would have built it, except that a grant marked for review counts for neither half:
//!   nobody knows whose it was, and a missing fact is never an allow. A denial or withdrawal
//!   marked for review counts for both, so an unmerge never turns a refusal into an allow.
//! - A restriction of the merged subject stays on both halves (it is lifted only by a request).
//! - An identifier attached to the merged subject since the merge cannot be told to belong to
//!   either half: the unmerge is refused until a rectification removes it (`Unattributable`).

use std::collections::{BTreeMap, BTreeSet};

use domicile_types::{Channel, ConsentState, Link, NormalizedIdentifier, Purpose, SubjectId};

use super::change::{Announced, announced_in_force};
use super::{
    ConsentRecord, CurrentConsent, Interaction, LogPositions, MergeLineage, RightsRequestRecord, StoreError,
    SubjectMeta, SubjectRecord,
};

/// Everything a subject holds, read inside the write that splits it.
#[derive(Debug, Clone)]
pub struct Whole {
    pub meta: SubjectMeta,
    pub record: SubjectRecord,
    pub links: Vec<Link>,
    /// In ledger order.
    pub ledger: Vec<ConsentRecord>,
    pub interactions: Vec<Interaction>,
    /// With their log positions.
    pub rights: Vec<(u64, RightsRequestRecord)>,
}

/// One half of a split, to be stored under its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Half {
    pub meta: SubjectMeta,
    pub record: SubjectRecord,
    pub links: Vec<Link>,
    pub ledger: Vec<ConsentRecord>,
    /// The record in force per cell (cells with none are absent).
    pub current: BTreeMap<(Purpose, Channel), CurrentConsent>,
    pub interactions: Vec<Interaction>,
    pub rights: Vec<(u64, RightsRequestRecord)>,
}

impl Half {
    /// The consent in force as watchers are told it at `at` ([`announced_in_force`]).
    pub fn announced(&self, at: i64) -> Vec<Announced> {
        announced_in_force(&self.current, at)
    }
}

/// The plan of an unmerge.
#[derive(Debug, Clone)]
pub struct Split {
    /// The subject that stays, without what the merge brought.
    pub kept: Half,
    /// The merged-away subject, back.
    pub restored: Half,
    /// Consent entries kept with both halves and marked for review.
    pub flagged: usize,
    /// The lineage undone.
    pub lineage: MergeLineage,
}

/// Which half an entry goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Kept,
    Restored,
    Both,
}

/// One side of a merge as it stands before it.
pub struct MergeSide<'a> {
    pub id: SubjectId,
    pub meta: &'a SubjectMeta,
    pub links: Vec<Link>,
    pub positions: LogPositions,
}

/// Joins `from`'s record into `into`'s (both engines' merge): identifiers, the profile fields only
/// `from` had (the remaining subject's values win), the merged links' attach time (`at`: a
/// challenge quarantine, `SubjectRecord::added_at`), and the lineage that undoes it.
pub fn join_records(
    into: &mut SubjectRecord,
    from: SubjectRecord,
    into_side: MergeSide<'_>,
    from_side: MergeSide<'_>,
    at: i64,
) {
    let added_fields = from
        .profile
        .iter()
        .filter(|(field, _)| !into.profile.contains_key(*field))
        .map(|(f, v)| (f.clone(), v.clone()))
        .collect();
    for link in &from_side.links {
        into.added_at.insert(*link, at);
    }
    for identifier in &from.identifiers {
        if !into.identifiers.contains(identifier) {
            into.identifiers.push(identifier.clone());
        }
    }
    for (field, value) in &from.profile {
        into.profile.entry(field.clone()).or_insert_with(|| value.clone());
    }
    into.lineage.push(MergeLineage {
        from: from_side.id,
        merged_at: at,
        identifiers: from.identifiers,
        links: from_side.links,
        into_links: into_side.links,
        into_links_recorded: true,
        profile: from.profile,
        added_fields,
        from_created_at: from_side.meta.created_at,
        into_created_at: into_side.meta.created_at,
        from_restricted: from_side.meta.restricted,
        from_positions: from_side.positions,
        into_positions: into_side.positions,
        nested: from.lineage,
        added_at: from.added_at,
    });
}

impl SubjectRecord {
    /// Removes an identifier (rectification, ownership repair), also from the merge lineage's
    /// copies: an unmerge must not bring it back, nor may it stay kept there.
    pub fn forget_identifier(&mut self, identifier: &NormalizedIdentifier) {
        self.identifiers.retain(|i| i != identifier);
        fn from_lineage(lineage: &mut [MergeLineage], identifier: &NormalizedIdentifier) {
            for merge in lineage {
                merge.identifiers.retain(|i| i != identifier);
                from_lineage(&mut merge.nested, identifier);
            }
        }
        from_lineage(&mut self.lineage, identifier);
    }

    /// Removes a profile field (rectification), also from the merge lineage's copies.
    pub fn forget_field(&mut self, field: &str) {
        self.profile.remove(field);
        fn from_lineage(lineage: &mut [MergeLineage], field: &str) {
            for merge in lineage {
                merge.profile.remove(field);
                merge.added_fields.remove(field);
                from_lineage(&mut merge.nested, field);
            }
        }
        from_lineage(&mut self.lineage, field);
    }
}

/// Splits `whole` along its merge with `from` (the id the merged-away subject had). `NotFound`
/// when no merge of `from` is in its lineage.
pub fn split(whole: Whole, from: &SubjectId) -> Result<Split, StoreError> {
    let Whole { meta, mut record, links, ledger, interactions, rights } = whole;
    let at = record.lineage.iter().position(|l| l.from == *from).ok_or(StoreError::NotFound)?;
    let lineage = record.lineage.remove(at);
    // Entries another merge brought (before or after this one) belong to the remaining subject.
    let mut others = LogSets::default();
    // Links of the remaining subject's side: its own at the merge, and those later (or earlier)
    // merges brought.
    let mut kept_side: BTreeSet<Link> = lineage.into_links.iter().copied().collect();
    for other in &record.lineage {
        others.add(&other.from_positions);
        kept_side.extend(other.links.iter().copied());
    }
    // An identifier attached since the merge (a registration naming it beside one of the merged
    // subject's, a rectification) came through whichever person's identifier the caller named,
    // which is not recorded: given to either half, it could carry that half's grants to the other
    // person's address (a refusal turned into an allow). Refused instead; the operator removes it
    // by a rectification first. (A lineage recorded before `into_links` was cannot tell.)
    let recorded = lineage.into_links_recorded || !lineage.into_links.is_empty();
    if recorded && links.iter().any(|l| !lineage.links.contains(l) && !kept_side.contains(l)) {
        return Err(StoreError::Unattributable);
    }
    let from_sets = LogSets::of(&lineage.from_positions);
    let into_sets = LogSets::of(&lineage.into_positions);
    let side_of = |position: u64, log: Log, via: Option<&Link>| -> Side {
        let kept_held = into_sets.has(log, position) || others.has(log, position);
        if from_sets.has(log, position) && kept_held {
            // Held by both sides at a merge: kept with both by an earlier unmerge.
            Side::Both
        } else if from_sets.has(log, position) {
            Side::Restored
        } else if kept_held {
            Side::Kept
        } else {
            // Since the merge: through whose identifier? One added since, or none (named by
            // ref), cannot be told.
            match via {
                Some(link) if lineage.links.contains(link) => Side::Restored,
                Some(link) if kept_side.contains(link) => Side::Kept,
                _ => Side::Both,
            }
        }
    };

    let (kept_ledger, restored_ledger, flagged) =
        apart(ledger, |e| side_of(e.sequence, Log::Consent, e.evidence.captured_via.as_ref()), |e| e.review = true);
    let (kept_interactions, restored_interactions, _) =
        apart(interactions, |e| side_of(e.sequence, Log::Interactions, e.via.as_ref()), |e| e.review = true);
    // A request since the merge names no identifier: it concerned the person both halves were
    // taken for, so both keep it.
    let (kept_rights, restored_rights, _) =
        apart(rights, |(position, _)| side_of(*position, Log::Rights, None), |_| {});

    // Identifiers and links: what the merge brought and the subject still holds goes back.
    let restored_links: Vec<Link> = links.iter().copied().filter(|l| lineage.links.contains(l)).collect();
    let kept_links: Vec<Link> = links.iter().copied().filter(|l| !lineage.links.contains(l)).collect();
    let restored_identifiers =
        record.identifiers.iter().filter(|i| lineage.identifiers.contains(i)).cloned().collect::<Vec<_>>();
    record.identifiers.retain(|i| !lineage.identifiers.contains(i));
    // Fields the merge added go, changed since or not (a change since cannot be attributed, and
    // the other person's data must not stay); the restored subject gets its own back as they were
    // at the merge (a rectification made since to one of them is to be made again).
    for field in lineage.added_fields.keys() {
        record.profile.remove(field);
    }
    // When identifiers were attached (for the challenge quarantine): each half keeps its own.
    record.added_at.retain(|link, _| kept_links.contains(link));
    let restored_record = SubjectRecord {
        identifiers: restored_identifiers,
        profile: lineage.profile.clone(),
        lineage: lineage.nested.clone(),
        added_at: lineage
            .added_at
            .iter()
            .filter(|(l, _)| restored_links.contains(l))
            .map(|(l, at)| (*l, *at))
            .collect(),
    };
    let kept_meta = SubjectMeta { created_at: lineage.into_created_at, ..meta.clone() };
    // Fail closed: a restriction in force stays on both halves, as does one the restored half
    // had before the merge.
    let restored_meta = SubjectMeta {
        created_at: lineage.from_created_at,
        restricted: meta.restricted || lineage.from_restricted,
        ..meta
    };
    let kept = Half {
        current: in_force(&kept_ledger),
        meta: kept_meta,
        record,
        links: kept_links,
        ledger: kept_ledger,
        interactions: kept_interactions,
        rights: kept_rights,
    };
    let restored = Half {
        current: in_force(&restored_ledger),
        meta: restored_meta,
        record: restored_record,
        links: restored_links,
        ledger: restored_ledger,
        interactions: restored_interactions,
        rights: restored_rights,
    };
    Ok(Split { kept, restored, flagged, lineage })
}

/// Entries apart by side: (the remaining half's, the restored half's, how many went to both,
/// each of those copies marked with `mark`).
fn apart<T: Clone>(entries: Vec<T>, side: impl Fn(&T) -> Side, mark: impl Fn(&mut T)) -> (Vec<T>, Vec<T>, usize) {
    let (mut kept, mut restored, mut both) = (Vec::new(), Vec::new(), 0);
    for mut entry in entries {
        match side(&entry) {
            Side::Kept => kept.push(entry),
            Side::Restored => restored.push(entry),
            Side::Both => {
                mark(&mut entry);
                both += 1;
                kept.push(entry.clone());
                restored.push(entry);
            }
        }
    }
    (kept, restored, both)
}

/// A ledger's records in force, replayed in order as appends build them
/// ([`CurrentConsent::supersedes`]); a grant marked for review counts for nothing.
pub fn in_force(ledger: &[ConsentRecord]) -> BTreeMap<(Purpose, Channel), CurrentConsent> {
    let mut ordered: Vec<&ConsentRecord> = ledger.iter().collect();
    ordered.sort_by_key(|r| r.sequence);
    let mut current: BTreeMap<(Purpose, Channel), CurrentConsent> = BTreeMap::new();
    for record in ordered {
        if record.review && record.state == ConsentState::Granted {
            continue;
        }
        let candidate = CurrentConsent::of(record, record.counted_at_ms());
        for channel in &record.channels {
            let cell = (record.purpose, *channel);
            if current.get(&cell).is_none_or(|existing| candidate.supersedes(existing)) {
                current.insert(cell, candidate.clone());
            }
        }
    }
    current
}

#[derive(Debug, Clone, Copy)]
enum Log {
    Consent,
    Interactions,
    Rights,
}

#[derive(Debug, Default)]
struct LogSets {
    consent: BTreeSet<u64>,
    interactions: BTreeSet<u64>,
    rights: BTreeSet<u64>,
}

impl LogSets {
    fn of(positions: &LogPositions) -> Self {
        let mut sets = Self::default();
        sets.add(positions);
        sets
    }

    fn add(&mut self, positions: &LogPositions) {
        self.consent.extend(&positions.consent);
        self.interactions.extend(&positions.interactions);
        self.rights.extend(&positions.rights);
    }

    fn has(&self, log: Log, position: u64) -> bool {
        match log {
            Log::Consent => self.consent.contains(&position),
            Log::Interactions => self.interactions.contains(&position),
            Log::Rights => self.rights.contains(&position),
        }
    }
}

#[cfg(test)]
#[path = "split_tests.rs"]
mod tests;
