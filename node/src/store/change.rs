//! What a write did, in one vocabulary. A store describes each write as [`Recorded`] facts and
//! derives from them both the change events it keeps for watchers ([`Recorded::changes`]) and the
//! audit entries it appends in the same transaction ([`Recorded::audit`]), so the watch stream and
//! the audit log cannot tell different stories about one write, and no handler writes either by
//! hand.

use domicile_audit::{AuditEvent, erasure_proof};
use domicile_types::rights::{RequestId, RightsKind, RightsStatus};
use domicile_types::{Channel, ConsentState, Jurisdiction, Link, Purpose, RegionId, SubjectId, SubjectRef};

use std::collections::BTreeMap;

use super::{ConsentRecord, CurrentConsent, RightsRequestRecord, StoreError};

/// A pseudonymous change, as watchers see it. Carries links and vocabulary values only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeEvent {
    pub sequence: u64,
    pub at: i64,
    pub subject: SubjectId,
    pub links: Vec<Link>,
    pub change: Change,
}

/// Every link `events` name, each once, in order: what the `ERASED` of a retired subject names
/// besides its own (`Recorded::changes_dropping`), from its removed events.
pub fn links_named(events: &[ChangeEvent]) -> Vec<Link> {
    let mut links: Vec<Link> = Vec::new();
    add_new_links(&mut links, events.iter().flat_map(|e| &e.links));
    links
}

/// Appends to `links` each of `more` it does not hold yet, in order.
fn add_new_links<'a>(links: &mut Vec<Link>, more: impl IntoIterator<Item = &'a Link>) {
    for link in more {
        if !links.contains(link) {
            links.push(*link);
        }
    }
}

/// The kind of a [`ChangeEvent`] (stored as it is: variants are only ever added).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Change {
    Registered,
    Consent {
        purpose: Purpose,
        channels: Vec<Channel>,
        state: ConsentState,
        /// An imported grant written without broadcast (`domicile import`). Such grants are no
        /// longer stored as events at all ([`announced`]); an event stored so by an older binary
        /// is still kept from watchers (`service/follow/wire.rs`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        quiet: bool,
        /// What a grant holds under (empty for refusals, and in events stored before it was kept).
        #[serde(default, skip_serializing_if = "GrantTerms::is_unconditional")]
        terms: GrantTerms,
    },
    Erased,
    /// Identifiers were removed from a subject that remains (rectification).
    LinksRemoved,
    /// The subject's processing is restricted (no decision allows anything for it) or no longer.
    Restricted {
        restricted: bool,
    },
}

/// The terms a grant holds under, as a follower needs them to keep a suppression list true: told
/// only "granted", it would keep sending after the grant lapsed, where every decision refuses.
/// A time and a flag, no more: events cross borders, and a grant's consent kind (a guardian's
/// consent tells a minor), hours or capture time are consent facts that stay home.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct GrantTerms {
    /// The grant's own expiry (Unix seconds): it lapses then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The grant rests on a consent kind other than express, is limited to some hours, or its
    /// double opt-in is unconfirmed: the subject's pack may end it sooner (a lifetime for its
    /// kind), bound it (hour windows) or not count it (a rule that asks for double opt-in).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub conditional: bool,
}

impl GrantTerms {
    /// The terms of a grant with these facts; none for a refusal.
    pub fn of(
        state: ConsentState,
        expires_at: Option<i64>,
        kind: Option<&String>,
        hours: &[String],
        double_opt_in_confirmed: bool,
    ) -> Self {
        if state != ConsentState::Granted {
            return Self::default();
        }
        let express = kind.is_none_or(|k| k == "express");
        Self { expires_at, conditional: !express || !hours.is_empty() || !double_opt_in_confirmed }
    }

    fn is_unconditional(&self) -> bool {
        *self == Self::default()
    }
}

/// Whether a consent record is announced to watchers as a change event. An imported grant written
/// without broadcast is not (issue 22: no propagation side effects of a migration unless asked),
/// and it is not stored as an event either: watchers were never sent one, read caches are kept by
/// the write lock on sled and by `touched` rows on PostgreSQL, and sled's check that its database
/// lost no flushed write reads the ledger position too (`ledger.head`), not only the last event;
/// stored, such events doubled the event log of an imported region, and every watcher of the
/// region read and dropped each. Withdrawals and denials are always announced: a
/// follower's suppression list must not keep a person granted whom an import has just opted out.
///
/// A grant is announced only on the channels where a grant is in force once the write applied
/// it (`in_force`: itself, or a grant captured later): one the ledger's order puts behind a
/// refusal that stays in force (an import of older history, a capture backdated past a later
/// withdrawal) changes no decision, and announced as `granted` it would leave a follower granted
/// where every decision refuses. A denial or withdrawal is announced on all its channels even
/// where a later grant keeps force: a follower then errs toward suppression, never toward sending.
pub fn announced(record: &ConsentRecord, in_force: &[Channel]) -> bool {
    !announced_channels(record, in_force).is_empty()
}

/// The channels [`announced`] announces `record` on (none: no event).
pub fn announced_channels(record: &ConsentRecord, in_force: &[Channel]) -> Vec<Channel> {
    if record.state != ConsentState::Granted {
        return record.channels.clone();
    }
    if record.evidence.import.as_ref().is_some_and(|i| !i.broadcast) {
        return Vec::new();
    }
    // Lapsed before it was recorded (older history imported late): no decision allows on it.
    if record.expires_at.is_some_and(|expires| expires <= record.recorded_at) {
        return Vec::new();
    }
    record.channels.iter().copied().filter(|c| in_force.contains(c)).collect()
}

/// A restriction set or lifted: its rights request, and the change event that tells followers.
#[derive(Debug, Clone)]
pub struct RestrictionSet {
    pub request: RightsRequestRecord,
    pub event: Option<u64>,
}

/// Consent in force announced at a merge or an unmerge: (purpose, state, channels, terms).
pub type Announced = (Purpose, ConsentState, Vec<Channel>, GrantTerms);

/// What a subject holds that links new to it must be told with (their REGISTERED carries no
/// state over): its consent in force, announced, and its restriction. Without it a follower held
/// nothing for an identifier added to a subject that had withdrawn, or was restricted, and in an
/// opt-out country sent where every decision refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct Holding<'a> {
    pub consent: &'a [Announced],
    pub restricted: bool,
}

/// A subject's consent in force (purpose × channel → record) as watchers are told it at `at`,
/// grouped by purpose, state and terms. A grant that has lapsed by then is not announced: the
/// links it is announced on come to the subject afresh or with a state this replaces, and no
/// decision allows on a lapsed grant.
pub fn announced_in_force<'c>(
    cells: impl IntoIterator<Item = (&'c (Purpose, Channel), &'c CurrentConsent)>,
    at: i64,
) -> Vec<Announced> {
    let mut grouped: BTreeMap<(Purpose, u8, GrantTerms), (ConsentState, Vec<Channel>)> = BTreeMap::new();
    for ((purpose, channel), current) in cells {
        let order = match current.state {
            ConsentState::Granted if !current.grants_at(at) => continue,
            ConsentState::Granted => 0,
            ConsentState::Denied => 1,
            ConsentState::Withdrawn => 2,
        };
        let terms = GrantTerms::of(
            current.state,
            current.expires_at,
            current.kind.as_ref(),
            &current.hours,
            current.double_opt_in_confirmed,
        );
        grouped.entry((*purpose, order, terms)).or_insert_with(|| (current.state, Vec::new())).1.push(*channel);
    }
    grouped.into_iter().map(|((purpose, _, terms), (state, channels))| (purpose, state, channels, terms)).collect()
}

/// One thing a write did.
#[derive(Debug, Clone, Copy)]
pub enum Recorded<'a> {
    /// Identifiers registered to `subject`: `identifiers` of the request, `added` the links new
    /// to the subject; `holding` its consent in force and restriction (of a subject that existed).
    Registration {
        subject: SubjectId,
        jurisdiction: &'a Jurisdiction,
        identifiers: usize,
        added: &'a [Link],
        holding: Holding<'a>,
    },
    /// A consent record appended to the subject's ledger; `links` are the subject's; `in_force`
    /// the record's channels where a grant is in force once it is applied ([`announced`]).
    Consent { subject: SubjectId, record: &'a ConsentRecord, links: &'a [Link], in_force: &'a [Channel] },
    /// Links added to a subject by a rectification (audited as its rights request); `holding` its
    /// consent in force and restriction.
    LinksAdded { subject: SubjectId, links: &'a [Link], holding: Holding<'a> },
    /// Links removed from a subject that remains: by a rectification (`kept_by` is `None`; audited
    /// as its rights request), or because region `kept_by` keeps them (ownership repair).
    LinksRemoved { subject: SubjectId, links: &'a [Link], kept_by: Option<&'a RegionId> },
    /// Links a subject holds, announced again so followers map them to it (reasserted claims).
    /// Nothing changed, so nothing is audited.
    Announced { subject: SubjectId, links: &'a [Link] },
    /// A rights request recorded or moved on for `subject` (each step of its lifecycle; kept in
    /// the audit log even after an erasure).
    RightsRequest { subject: SubjectId, request: &'a RightsRequestRecord },
    /// Everything of `subject` removed, its key destroyed; `links` were its links.
    Erasure { subject: SubjectId, links: &'a [Link] },
    /// `from` merged into `into`; `links` moved with it; `all_links` are `into`'s now, `consent`
    /// its consent in force and `restricted` its restriction, once merged.
    Merge {
        into: SubjectId,
        from: SubjectId,
        links: &'a [Link],
        all_links: &'a [Link],
        consent: &'a [Announced],
        restricted: bool,
    },
    /// The subject's processing restricted or no longer (audited as its rights request).
    Restriction { subject: SubjectId, links: &'a [Link], restricted: bool },
    /// A merge undone: `merged` is retired; `kept` (the remaining subject, new id) keeps
    /// `kept_links`, `restored` (once `was`, new id) gets `links`; each half's consent in force as
    /// (purpose, state, channels, terms) (`split::Half::announced`); `flagged` entries were kept
    /// with both for review.
    Unmerge {
        merged: SubjectId,
        kept: SubjectId,
        restored: SubjectId,
        was: SubjectId,
        links: &'a [Link],
        kept_links: &'a [Link],
        kept_consent: &'a [Announced],
        restored_consent: &'a [Announced],
        /// Each half's restriction (a restriction stays on both).
        restricted: [bool; 2],
        flagged: usize,
    },
}

/// A subject's consent in force announced on `links`, then its restriction if it is restricted.
fn consent_changes(
    subject: SubjectId,
    links: &[Link],
    consent: &[Announced],
    restricted: bool,
) -> Vec<(SubjectId, Vec<Link>, Change)> {
    if links.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<(SubjectId, Vec<Link>, Change)> = consent
        .iter()
        .map(|(purpose, state, channels, terms)| {
            let change = Change::Consent {
                purpose: *purpose,
                channels: channels.clone(),
                state: *state,
                quiet: false,
                terms: terms.clone(),
            };
            (subject, links.to_vec(), change)
        })
        .collect();
    if restricted {
        out.push((subject, links.to_vec(), Change::Restricted { restricted: true }));
    }
    out
}

impl Recorded<'_> {
    /// The change events watchers see: (subject, links, change), in order.
    pub fn changes(&self) -> Vec<(SubjectId, Vec<Link>, Change)> {
        let one = |subject: SubjectId, links: &[Link], change: Change| {
            if links.is_empty() { Vec::new() } else { vec![(subject, links.to_vec(), change)] }
        };
        match *self {
            Recorded::Registration { subject, added: links, holding, .. }
            | Recorded::LinksAdded { subject, links, holding } => {
                let mut out = one(subject, links, Change::Registered);
                out.extend(consent_changes(subject, links, holding.consent, holding.restricted));
                out
            }
            Recorded::Announced { subject, links } => one(subject, links, Change::Registered),
            // A subject's consent changes are announced even while it holds no link.
            Recorded::Consent { subject, record, links, in_force } => {
                let channels = announced_channels(record, in_force);
                if channels.is_empty() {
                    return Vec::new();
                }
                let terms = GrantTerms::of(
                    record.state,
                    record.expires_at,
                    record.evidence.consent_kind.as_ref(),
                    &record.evidence.hours,
                    record.evidence.double_opt_in_confirmed,
                );
                let change =
                    Change::Consent { purpose: record.purpose, channels, state: record.state, quiet: false, terms };
                vec![(subject, links.to_vec(), change)]
            }
            Recorded::LinksRemoved { subject, links, .. } => one(subject, links, Change::LinksRemoved),
            Recorded::RightsRequest { .. } => Vec::new(),
            Recorded::Erasure { subject, links } => vec![(subject, links.to_vec(), Change::Erased)],
            // Followers map `from`'s links to `into`, then retire `from`: a follower that drops
            // only links still naming an erased subject (as the proto asks, and gateways do)
            // never has one of them unmapped in between, which would refuse a capture through it.
            //
            // Between the two, the merged subject's consent in force and its restriction on all
            // its links: the merge may have changed both (a withdrawal of one half outranks a
            // grant of the other), and a follower told nothing kept the grant.
            Recorded::Merge { into, from, links, all_links, consent, restricted } => {
                let mut out = one(into, links, Change::Registered);
                out.extend(consent_changes(into, all_links, consent, restricted));
                out.push((from, links.to_vec(), Change::Erased));
                out
            }
            Recorded::Restriction { subject, links, restricted } => {
                one(subject, links, Change::Restricted { restricted })
            }
            // Each half's links are mapped afresh and its consent in force announced (a link that
            // moves to another subject carries none of its old state, so a grant only one half
            // gave does not stay on the other's); then the merged subject goes as an erased one.
            Recorded::Unmerge {
                merged,
                kept,
                restored,
                links,
                kept_links,
                kept_consent,
                restored_consent,
                restricted: [kept_restricted, restored_restricted],
                ..
            } => {
                let mut out = Vec::new();
                for (subject, held, consent, restricted) in [
                    (kept, kept_links, kept_consent, kept_restricted),
                    (restored, links, restored_consent, restored_restricted),
                ] {
                    out.extend(one(subject, held, Change::Registered));
                    out.extend(consent_changes(subject, held, consent, restricted));
                }
                // Last: by now every link names a half, so a follower that drops only links still
                // naming the erased subject (as gateways do) never has an identifier unmapped in
                // between, which would refuse a capture through it as unknown.
                let all: Vec<Link> = kept_links.iter().chain(links).copied().collect();
                out.push((merged, all, Change::Erased));
                out
            }
        }
    }

    /// [`Recorded::changes`], the `ERASED` of the subject this retires also naming `dropped`:
    /// the links its removed events named (`retires`). A follower that resumes from before them
    /// may still map a link the subject lost earlier (a rectification's `LINKS_REMOVED` goes with
    /// them); told here, it drops it if it still names the subject, as for the links it holds.
    pub fn changes_dropping(&self, dropped: &[Link]) -> Vec<(SubjectId, Vec<Link>, Change)> {
        let mut changes = self.changes();
        if let Some(retired) = self.retires() {
            for (subject, links, change) in &mut changes {
                if *subject == retired && *change == Change::Erased {
                    add_new_links(links, dropped);
                }
            }
        }
        changes
    }

    /// The subject this write retires, whose earlier change events go with it (invariant 6):
    /// the one erased, the merged-away half of a merge, the merged subject of an unmerge (each
    /// announced by the `ERASED` event that stays). Every store removes them in the write's
    /// transaction.
    pub fn retires(&self) -> Option<SubjectId> {
        match *self {
            Recorded::Erasure { subject, .. } => Some(subject),
            Recorded::Merge { from, .. } => Some(from),
            Recorded::Unmerge { merged, .. } => Some(merged),
            _ => None,
        }
    }

    /// The subjects whose decision inputs (metadata, consent in force, key, links) this may
    /// have changed: what a read cache must drop. A rights request is included, as a restriction
    /// is recorded as one; a re-announcement changes nothing.
    pub fn touched(&self) -> impl Iterator<Item = SubjectId> {
        let subjects = match *self {
            Recorded::Registration { subject, .. }
            | Recorded::Consent { subject, .. }
            | Recorded::LinksAdded { subject, .. }
            | Recorded::LinksRemoved { subject, .. }
            | Recorded::RightsRequest { subject, .. }
            | Recorded::Restriction { subject, .. }
            | Recorded::Erasure { subject, .. } => [Some(subject), None, None],
            Recorded::Merge { into, from, .. } => [Some(into), Some(from), None],
            Recorded::Unmerge { merged, kept, restored, .. } => [Some(merged), Some(kept), Some(restored)],
            Recorded::Announced { .. } => [None, None, None],
        };
        subjects.into_iter().flatten()
    }

    /// The audit entry: the event and the subject it is about (of `region`), at `at`; `None` for
    /// what the audit log does not record on its own.
    pub fn audit(&self, region: &RegionId, at: i64) -> Result<Option<(AuditEvent, SubjectRef)>, StoreError> {
        let of = |id: SubjectId| SubjectRef { region: region.clone(), id };
        Ok(match *self {
            Recorded::Registration { subject, jurisdiction, identifiers, .. } => {
                Some((AuditEvent::Registration { identifiers, jurisdiction: jurisdiction.clone() }, of(subject)))
            }
            Recorded::Consent { subject, record, .. } => Some((
                AuditEvent::Consent {
                    purpose: record.purpose,
                    channels: record.channels.clone(),
                    state: record.state,
                    sequence: record.sequence,
                },
                of(subject),
            )),
            // A restriction is audited as the rights request that set or lifted it.
            Recorded::LinksAdded { .. } | Recorded::Announced { .. } | Recorded::Restriction { .. } => None,
            Recorded::LinksRemoved { kept_by: None, .. } => None,
            Recorded::LinksRemoved { subject, links, kept_by: Some(kept_by) } => Some((
                AuditEvent::OwnershipRepair { links_removed: links.len(), kept_by: kept_by.clone() },
                of(subject),
            )),
            Recorded::RightsRequest { subject, request } => {
                let corrupt = |what: &str| StoreError::Corrupt(format!("rights request {what}"));
                let event = AuditEvent::RightsRequest {
                    kind: RightsKind::parse(&request.kind).ok_or_else(|| corrupt("kind"))?,
                    request_id: RequestId::parse(&request.request_id).map_err(|_| corrupt("id"))?,
                    deadline_at: request.deadline_at,
                    status: RightsStatus::parse(&request.status).ok_or_else(|| corrupt("status"))?,
                    reason: request.reason.clone(),
                    override_reason: request.override_reason.clone(),
                };
                Some((event, of(subject)))
            }
            // A PII-free proof: a digest an auditor holding the subject ref can check.
            Recorded::Erasure { subject, links } => Some((
                AuditEvent::Erasure { links_removed: links.len(), proof: erasure_proof(&of(subject), links, at) },
                of(subject),
            )),
            Recorded::Merge { into, from, .. } => {
                Some((AuditEvent::Merge { from: of(from), into: of(into) }, of(into)))
            }
            Recorded::Unmerge { merged, kept, restored, was, flagged, .. } => Some((
                AuditEvent::Unmerge { was: of(was), kept: of(kept), restored: of(restored), flagged },
                of(merged),
            )),
        })
    }
}

#[cfg(test)]
#[path = "change_tests.rs"]
mod tests;
