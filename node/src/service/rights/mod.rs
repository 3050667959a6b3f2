//! Data-subject rights: access (export), erasure, restriction, and the bookkeeping of every
//! rights request with its deadline from the subject's pack. Requests are tracked from receipt
//! (`track.rs`: open with a one-time challenge, verify, extend, overdue); an export, erasure,
//! rectification or lifted restriction needs a verified one or an operator's override
//! (`gate.rs`).

mod gate;
mod track;
pub(super) mod track_wire;
mod verify;
pub(super) mod wire;

pub(crate) use gate::Authority;
pub use track::{OverdueCounts, keep_counting_overdue};

use domicile_policy::Deadline;
use domicile_proto::convert::SubjectKey;
use domicile_runtime::process::now_unix;
use domicile_types::rights::{RequestId, RightsKind, RightsStatus};
use domicile_types::{Jurisdiction, SubjectId};

use super::unit::Settled;
use super::{Caller, NodeService};
use crate::error::NodeError;
use crate::store::{Erased, Idempotency, RightsRequestRecord, Store, StoreError};

/// A subject's data as delivered to it (right of access), with the request that asked for it.
pub(crate) struct Export {
    pub subject: SubjectId,
    /// The `domicile.export.v1` JSON document.
    pub document: Vec<u8>,
    pub generated_at: i64,
    pub rights_request: RightsRequestRecord,
}

/// A restriction set or lifted: the subject, whether it is now restricted, and the request.
pub(crate) type Restriction = (SubjectId, (bool, RightsRequestRecord));

impl<S: Store> NodeService<S> {
    /// A rights request with its deadline from the subject's pack, completed now (a tracked
    /// request's caller sets where it stands instead). Where the pack states none, the request
    /// has no deadline and `deadline_basis` declares the gap: no default stands in for a law.
    pub(super) fn rights_request(
        &self,
        jurisdiction: &Jurisdiction,
        kind: RightsKind,
        now: i64,
    ) -> Result<RightsRequestRecord, NodeError> {
        let id = domicile_runtime::process::random_bytes::<16>()
            .map_err(|_| NodeError::Unavailable("random source unavailable"))?;
        let loaded = self.packs.current();
        // No pack is no reason to refuse a subject its rights; nor is it a deadline.
        let pack = loaded.packs.get(jurisdiction);
        let (deadline_at, extended_deadline_at, deadline_basis, citation) = match pack {
            Some(pack) => {
                let rights = pack.rights();
                let of = format!("pack {}@{}", pack.id(), pack.version());
                match rights.deadline {
                    Some(Deadline::Within(period)) => {
                        let due = period.after(now);
                        let extended = rights.extension.map(|extension| extension.after(due));
                        let basis = match rights.extension {
                            Some(extension) => format!("{of}: {period}, extendable by {extension}"),
                            None => format!("{of}: {period}"),
                        };
                        (Some(due), extended, basis, rights.cite.clone())
                    }
                    Some(Deadline::NoFixedPeriod) => (
                        None,
                        None,
                        format!("{of}: the law fixes no period; carried out on receipt"),
                        rights.cite.clone(),
                    ),
                    // Refused when a jurisdiction's pack is compiled; kept as a declared gap.
                    None => (None, None, format!("gap: {of} states no rights deadline; carried out on receipt"), None),
                }
            }
            None => {
                (None, None, "gap: no pack covers the subject's jurisdiction; carried out on receipt".to_owned(), None)
            }
        };
        Ok(RightsRequestRecord {
            request_id: RequestId::from_bytes(id).to_string(),
            kind: kind.as_str().to_owned(),
            received_at: now,
            deadline_at,
            status: RightsStatus::Completed.as_str().to_owned(),
            deadline_basis,
            completed_at: Some(now),
            extended_deadline_at,
            citation,
            ..Default::default()
        })
    }

    /// Everything the node keeps about a subject, for the subject. Exports are delivered in the
    /// home region only: a gateway serves callers of every region (the access layer refuses
    /// gateways already; this holds for every other entry too).
    pub(crate) async fn export_subject(
        &self,
        key: &SubjectKey,
        caller: &Caller,
        authority: &Authority,
    ) -> Result<Export, NodeError> {
        if !caller.in_region {
            return Err(NodeError::PermissionDenied(
                "exports are delivered in the home region: call this region's node as a service of the region",
            ));
        }
        let (subject, meta) = self.resolve_meta(key).await?;
        let now = now_unix();
        // A verified access request (now in progress) or an operator's override, before anything
        // is read.
        let started = self.start_request(&subject, &meta.jurisdiction, RightsKind::Access, authority, now).await?;
        let record = self.store.subject_record(&subject).await?.ok_or(StoreError::NotFound)?;
        let history = self.store.consent_history(&subject).await?;
        // Bookkeeping first, so the document lists this request too.
        let rights_request = started.completed(now);
        // Durable (and audited) before the document leaves.
        self.settle_unkeyed(self.store.append_rights_request(&subject, &rights_request).await).await?;
        self.finish_request(&subject, &started, &rights_request, now).await?;
        let mut interactions = self.store.interactions(&subject).await?;
        // Held for review after an unmerge (possibly the other person's): counted, not handed over.
        let under_review = interactions.iter().filter(|i| i.review).count();
        interactions.retain(|i| !i.review);
        let rights_requests = self.store.rights_requests(&subject).await?;
        let document = serde_json::json!({
            "schema": "domicile.export.v1",
            "subject_ref": self.subject_ref(subject).to_string(),
            "region": self.region.to_string(),
            "jurisdiction": meta.jurisdiction.to_string(),
            "created_at": meta.created_at,
            "restricted": meta.restricted,
            "identifiers": record.identifiers.iter().map(|i| serde_json::json!({"kind": i.kind().as_str(), "value": i.expose_value()})).collect::<Vec<_>>(),
            "profile": record.profile,
            "consent": history,
            "interactions": interactions,
            "interactions_under_review": under_review,
            "rights_requests": rights_requests,
            "generated_at": now,
        });
        let document =
            serde_json::to_vec_pretty(&document).map_err(|_| NodeError::Internal("cannot encode the export"))?;
        tracing::info!(region = %self.region, "subject exported");
        Ok(Export { subject, document, generated_at: now, rights_request })
    }

    /// Erases a subject: audited with a PII-free proof (`store::Recorded::Erasure`); the links'
    /// claims are queued with it and released once it is durable.
    pub(crate) async fn erase_subject(
        &self,
        key: &SubjectKey,
        authority: &Authority,
        tag: Option<&Idempotency>,
    ) -> Result<(SubjectId, Erased), NodeError> {
        // Before resolving: after the first erasure the subject is gone, its answer is not. The
        // first call may have stopped after the erasure was durable and before its request was
        // recorded completed (a crash, a step that failed): finished now, as often as it is
        // retried, or nothing would ever finish it.
        if let Some((subject, erased)) = self.replayed::<(SubjectId, Erased)>(tag).await? {
            self.finish_erasure(&subject, &erased.rights_request, now_unix()).await?;
            return Ok((subject, erased));
        }
        let (subject, meta) = self.resolve_meta(key).await?;
        let now = now_unix();
        // A verified erasure request (now in progress) or an operator's override; nothing is
        // erased without one.
        let started = self.start_request(&subject, &meta.jurisdiction, RightsKind::Erasure, authority, now).await?;
        // Not stored with the subject (it is about to go): the audit log and the response keep it.
        let rights_request = started.completed(now);
        let erased = match self.settle(self.store.erase(&subject, now, &rights_request, tag).await).await? {
            Settled::Applied(erased) => erased,
            Settled::Replayed => {
                // A racing call made it: finished here too, should that call have stopped.
                let (subject, erased): (SubjectId, Erased) = self.replayed_after_race(tag).await?;
                self.finish_erasure(&subject, &erased.rights_request, now).await?;
                return Ok((subject, erased));
            }
        };
        self.finish_erasure(&subject, &rights_request, now).await?;
        tracing::info!(region = %self.region, links = erased.links.len(), consent_records = erased.consent_records, "subject erased");
        Ok((subject, erased))
    }

    /// Sets or lifts the restriction of processing. Acknowledged only once durable: every later
    /// decision reflects it.
    /// A restriction is honoured on receipt (it only narrows processing: fail closed); lifting
    /// one needs a verified restriction request or an operator's override, as an export does.
    pub(crate) async fn restrict_subject(
        &self,
        key: &SubjectKey,
        restricted: bool,
        authority: Option<&Authority>,
        tag: Option<&Idempotency>,
    ) -> Result<Restriction, NodeError> {
        // Answered again: finished again too (the first call may have stopped after the change
        // was durable, leaving its request in progress, where it could later lift what it set).
        if let Some((subject, (restricted, record))) = self.replayed::<Restriction>(tag).await? {
            self.finish_restriction(&subject, restricted, &record, now_unix(), true).await?;
            return Ok((subject, (restricted, record)));
        }
        let (subject, meta) = self.resolve_meta(key).await?;
        let now = now_unix();
        let started = match authority {
            Some(authority) => {
                match self.start_request(&subject, &meta.jurisdiction, RightsKind::Restriction, authority, now).await {
                    Ok(started) => Some(started),
                    // A restriction only narrows processing: honoured on receipt even when the
                    // request it names cannot answer it (not verified yet, closed, of another
                    // kind); refusing it would leave processing unrestricted (fail open).
                    Err(NodeError::Precondition(_)) if restricted => None,
                    Err(e) => return Err(e),
                }
            }
            None if restricted => None,
            None => return Err(NodeError::Precondition(gate::NEEDS_AUTHORITY_TO_LIFT)),
        };
        let rights_request = match &started {
            Some(started) => started.completed(now),
            None => self.rights_request(&meta.jurisdiction, RightsKind::Restriction, now)?,
        };
        let written = self.store.set_restricted(&subject, restricted, &rights_request, tag).await;
        if let Settled::Replayed = self.settle(written).await? {
            return self.replayed_after_race(tag).await;
        }
        // (A request that could not answer it, or an override, leaves no tracked request to finish.)
        self.finish_restriction(&subject, restricted, &rights_request, now, false).await?;
        tracing::info!(region = %self.region, restricted, "restriction changed");
        Ok((subject, (restricted, rights_request)))
    }

    /// A subject's rights requests, oldest first: those recorded with the subject and, as they
    /// now stand, its tracked ones (`track.rs`) that are not (open, linked or refused).
    pub(crate) async fn rights_requests_of(
        &self,
        key: &SubjectKey,
    ) -> Result<(SubjectId, Vec<RightsRequestRecord>), NodeError> {
        let subject = self.resolve(key).await?;
        let mut requests = self.store.rights_requests(&subject).await?;
        for t in self.store.tracked_requests_of(&subject).await? {
            if !requests.iter().any(|r| r.request_id == t.record.request_id) {
                requests.push(t.record);
            }
        }
        // Stable: requests recorded in one second keep their recording order.
        requests.sort_by_key(|r| r.received_at);
        Ok((subject, requests))
    }
}
