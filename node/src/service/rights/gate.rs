//! What an export, an erasure, a rectification or the lifting of a restriction needs (ARCHITECTURE.md, "Rights requests"): a verified request
//! of the matching kind for the same subject, which the work moves to `in_progress` and then
//! `completed`; or an operator's override with a reason code, audited as an override. With
//! neither, nothing is read or erased.

use domicile_proto::convert::FieldViolation;
use domicile_types::rights::{RequestId, RightsKind, RightsStatus};
use domicile_types::{Jurisdiction, SubjectId};

use super::super::NodeService;
use crate::error::NodeError;
use crate::store::{OutboxChange, RightsRequestRecord, Store};

/// On what authority a right is carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Authority {
    /// A verified request (its id).
    Request(String),
    /// An operator's override: a reason code.
    Override(String),
}

pub(crate) const NEEDS_AUTHORITY: &str = "an export, erasure or rectification needs `request_id`, a verified rights request of the subject \
     (OpenRightsRequest, VerifyRightsRequest), or `override_reason`, an operator's override";

pub(crate) const NEEDS_AUTHORITY_TO_LIFT: &str = "lifting a restriction needs `request_id`, a verified restriction request \
     of the subject, or `override_reason`, an operator's override (a restriction itself needs neither)";

/// Why an operator may carry out a right without a verified request:
/// - `identity_checked_in_person`: the requester's identity was checked by other means (at a
///   counter, by a signed letter);
/// - `court_order`, `regulator_order`: an authority ordered it;
/// - `legal_obligation`: the controller must, without a request (e.g. a retention period ran out);
/// - `controller_correction`: the controller corrects or removes data on its own account (a
///   wrong record, a test subject).
pub(crate) const OVERRIDE_REASONS: &[&str] =
    &["identity_checked_in_person", "court_order", "regulator_order", "legal_obligation", "controller_correction"];

const OVERRIDE_REASONS_TEXT: &str = "must be one of identity_checked_in_person, court_order, regulator_order, \
     legal_obligation, controller_correction";

impl Authority {
    /// [`Authority::from_fields`] for `request`'s requester: an override is an operator's, so it
    /// is taken only from a caller of this region holding the `admin` scope, or from a gateway
    /// (which forwards one only for a caller holding it); anyone else: PERMISSION_DENIED.
    pub(crate) fn of_request<T>(
        request: &tonic::Request<T>,
        request_id: &str,
        override_reason: &str,
    ) -> Result<Self, NodeError> {
        let authority = Self::from_fields(request_id, override_reason)?;
        if let Self::Override(_) = &authority {
            let operator = match crate::access::Requester::of(request) {
                Some(crate::access::Requester::InRegion(caller)) => {
                    caller.has(domicile_runtime::identity::Scope::Admin)
                }
                Some(crate::access::Requester::Gateway) => true,
                Some(crate::access::Requester::PeerNode(_)) | None => false,
            };
            if !operator {
                return Err(NodeError::PermissionDenied(
                    "an operator's override needs the admin scope: a rights service names a verified request",
                ));
            }
        }
        Ok(authority)
    }

    /// From a request's `request_id` and `override_reason` fields: exactly one of them.
    pub(crate) fn from_fields(request_id: &str, override_reason: &str) -> Result<Self, NodeError> {
        match (request_id.is_empty(), override_reason.is_empty()) {
            (true, true) => Err(NodeError::Precondition(NEEDS_AUTHORITY)),
            (false, false) => {
                Err(NodeError::InvalidArgument("give `request_id` or `override_reason`, not both".into()))
            }
            (false, true) => {
                RequestId::parse(request_id).map_err(|e| FieldViolation::new("request_id", e))?;
                Ok(Self::Request(request_id.to_owned()))
            }
            (true, false) => {
                // A closed list: the reason reaches the audit log, which outlives every erasure,
                // so no caller text (a name, a ticket note) may ride in it.
                if !OVERRIDE_REASONS.contains(&override_reason) {
                    return Err(FieldViolation::new("override_reason", OVERRIDE_REASONS_TEXT).into());
                }
                Ok(Self::Override(override_reason.to_owned()))
            }
        }
    }
}

/// A right being carried out: its request as recorded, and the tracked request it answers
/// (none on an override).
pub(in crate::service) struct Started {
    tracked: bool,
    record: RightsRequestRecord,
}

impl Started {
    /// The request as completed at `now`.
    pub(in crate::service) fn completed(&self, now: i64) -> RightsRequestRecord {
        let mut record = self.record.clone();
        record.status = RightsStatus::Completed.as_str().to_owned();
        record.completed_at = Some(now);
        record
    }
}

impl<S: Store> NodeService<S> {
    /// Checks the authority for carrying out `kind` for the subject; a verified request moves to
    /// `in_progress` (durable and audited) before the work begins.
    pub(in crate::service) async fn start_request(
        &self,
        subject: &SubjectId,
        jurisdiction: &Jurisdiction,
        kind: RightsKind,
        authority: &Authority,
        now: i64,
    ) -> Result<Started, NodeError> {
        let id = match authority {
            Authority::Override(reason) => {
                let mut record = self.rights_request(jurisdiction, kind, now)?;
                record.override_reason = Some(reason.clone());
                tracing::warn!(region = %self.region, kind = kind.as_str(), reason = %reason, "rights request carried out on an operator's override");
                return Ok(Started { tracked: false, record });
            }
            Authority::Request(id) => id,
        };
        let _one_at_a_time = self.rights_lock.lock().await;
        let read = match self.store.tracked_request(id).await? {
            Some(tracked) if tracked.subject == *subject => tracked,
            _ => return Err(NodeError::Precondition("`request_id` names no rights request of this subject")),
        };
        let mut tracked = read.clone();
        let matches = tracked.record.kind == kind.as_str()
            || (kind == RightsKind::Access && tracked.record.kind == RightsKind::Portability.as_str());
        if !matches {
            return Err(NodeError::Precondition("`request_id` names a rights request of another kind"));
        }
        match RightsStatus::parse(&tracked.record.status) {
            Some(RightsStatus::Verified) => {
                tracked.record.status = RightsStatus::InProgress.as_str().to_owned();
                tracked.record.started_at = Some(now);
                self.track(&tracked, Some(&read), OutboxChange::Keep, now, None).await?;
            }
            // Begun before: perhaps still running (another call, another replica), so taken over
            // only once its lease has run out (it was interrupted), never to do it twice at once.
            Some(RightsStatus::InProgress) => {
                let begun = tracked.record.started_at.or(tracked.record.verified_at).unwrap_or(0);
                if now < begun.saturating_add(super::super::RIGHTS_WORK_LEASE_SECS) {
                    // ABORTED: concurrent work on the same request; retried later, it finds the
                    // request completed (and refused) or its lease run out.
                    return Err(crate::store::StoreError::Retry.into());
                }
                tracked.record.started_at = Some(now);
                self.track(&tracked, Some(&read), OutboxChange::Keep, now, None).await?;
            }
            Some(RightsStatus::Received | RightsStatus::Extended | RightsStatus::Verifying) => {
                return Err(NodeError::Precondition(
                    "the rights request is not verified: its requester has not answered the challenge (VerifyRightsRequest)",
                ));
            }
            Some(RightsStatus::Completed | RightsStatus::Refused | RightsStatus::Linked) | None => {
                return Err(NodeError::Precondition(
                    "the rights request is closed (completed, refused, or linked to another): open a new one",
                ));
            }
        }
        Ok(Started { tracked: true, record: tracked.record })
    }

    /// Records a tracked request `completed` once its work is done.
    pub(in crate::service) async fn finish_request(
        &self,
        subject: &SubjectId,
        started: &Started,
        completed: &RightsRequestRecord,
        now: i64,
    ) -> Result<(), NodeError> {
        if started.tracked {
            self.complete_tracked(subject, completed, now).await?;
        }
        Ok(())
    }

    /// The requests linked to `active` take its final answer (`completed`, or `refused` with its
    /// reason): a linked request is answered by the one it is linked to, and would otherwise stay
    /// `linked` for ever, its requester never told that the request it rode on was refused (a
    /// challenge left to expire, wrong codes sent by someone else) and the request not listed.
    pub(super) async fn answer_linked(
        &self,
        subject: &SubjectId,
        active: &RightsRequestRecord,
        now: i64,
    ) -> Result<(), NodeError> {
        let requests = self.store.tracked_requests_of(subject).await?;
        // Chains too (a request linked to one linked to `active`: a verification through a link
        // that stopped half-way leaves one), each request once.
        let mut answered: Vec<String> = vec![active.request_id.clone()];
        let mut next = 0;
        while let Some(to) = answered.get(next).cloned() {
            next += 1;
            let linked = requests.iter().filter(|t| {
                t.record.linked_to.as_deref() == Some(to.as_str())
                    && RightsStatus::parse(&t.record.status) == Some(RightsStatus::Linked)
                    && !answered.contains(&t.record.request_id)
            });
            let ids: Vec<String> = linked.map(|t| t.record.request_id.clone()).collect();
            for id in &ids {
                self.track_step(id, now, |tracked| {
                    if RightsStatus::parse(&tracked.record.status) != Some(RightsStatus::Linked) {
                        return false;
                    }
                    tracked.record.status = active.status.clone();
                    tracked.record.reason = active.reason.clone();
                    tracked.record.completed_at = Some(now);
                    true
                })
                .await?;
            }
            answered.extend(ids);
        }
        Ok(())
    }

    /// After a restriction was set: every open restriction request of the subject is answered by
    /// it (`completed`). A request does not say which way it goes, so one left open (verified
    /// to restrict, say) could otherwise lift the restriction later; lifting it needs a request
    /// opened, and verified, after it.
    /// `opened_by`: only requests received by then (a restriction answered again from its record
    /// answers none opened since it was first set, a request to lift it, say; one of the same
    /// second is answered: seconds cannot tell, and answering errs toward keeping it set).
    pub(super) async fn answer_restriction_requests(
        &self,
        subject: &SubjectId,
        now: i64,
        opened_by: Option<i64>,
    ) -> Result<(), NodeError> {
        let open: Vec<String> = self
            .store
            .tracked_requests_of(subject)
            .await?
            .into_iter()
            .filter(|t| t.record.kind == RightsKind::Restriction.as_str() && open_or_linked(&t.record))
            .filter(|t| opened_by.is_none_or(|by| t.record.received_at <= by))
            .map(|t| t.record.request_id)
            .collect();
        let _one_at_a_time = self.rights_lock.lock().await;
        for id in open {
            self.track_step(&id, now, |tracked| {
                if !open_or_linked(&tracked.record) {
                    return false;
                }
                tracked.record.status = RightsStatus::Completed.as_str().to_owned();
                tracked.record.completed_at = Some(now);
                tracked.challenge = None;
                true
            })
            .await?;
        }
        Ok(())
    }

    /// The tracked request `completed` (its completed record) answers, recorded so unless it is
    /// already, with the requests linked to it; an operator's override has none.
    async fn complete_tracked(
        &self,
        subject: &SubjectId,
        completed: &RightsRequestRecord,
        now: i64,
    ) -> Result<(), NodeError> {
        if completed.override_reason.is_some() {
            return Ok(());
        }
        self.track_step(&completed.request_id, now, |tracked| {
            if tracked.subject != *subject
                || RightsStatus::parse(&tracked.record.status) == Some(RightsStatus::Completed)
            {
                return false;
            }
            tracked.record = completed.clone();
            tracked.challenge = None;
            true
        })
        .await?;
        self.answer_linked(subject, completed, now).await
    }

    /// After a restriction set or lifted with `record` (its completed record, as its answer keeps
    /// it): the tracked request it answers recorded completed (with the requests linked to it),
    /// and, when set, every other open restriction request answered by it. Changes nothing the
    /// second time.
    pub(super) async fn finish_restriction(
        &self,
        subject: &SubjectId,
        restricted: bool,
        record: &RightsRequestRecord,
        now: i64,
        replayed: bool,
    ) -> Result<(), NodeError> {
        self.complete_tracked(subject, record, now).await?;
        if restricted {
            let opened_by = replayed.then_some(record.completed_at.unwrap_or(record.received_at));
            self.answer_restriction_requests(subject, now, opened_by).await?;
        }
        Ok(())
    }

    /// After an erasure made with `erasure` (its completed record, as the erasure's answer keeps
    /// it): the tracked request it answers recorded completed (an operator's override has none),
    /// and the subject's other open requests refused. Changes nothing the second time.
    pub(super) async fn finish_erasure(
        &self,
        subject: &SubjectId,
        erasure: &RightsRequestRecord,
        now: i64,
    ) -> Result<(), NodeError> {
        self.complete_tracked(subject, erasure, now).await?;
        self.close_requests_of_erased(subject, &erasure.request_id, now).await
    }

    /// After an erasure: the subject's other open requests are refused (`subject_erased`) and its
    /// challenges leave the outbox (their deliveries are unreadable already, the key is gone).
    pub(super) async fn close_requests_of_erased(
        &self,
        subject: &SubjectId,
        erasure: &str,
        now: i64,
    ) -> Result<(), NodeError> {
        self.close_requests_of_gone(subject, erasure, "subject_erased", now).await
    }

    /// After a merge or an unmerge retired `subject` (its id names nobody now): its open requests
    /// are refused (`subject_merged`), so none waits for ever on an id no call can reach; the
    /// requester opens one for the subject it is now part of. The merge is done whatever this
    /// meets: a failure leaves the requests open (listed as overdue), logged, rather than failing
    /// a write that was applied.
    pub(in crate::service) async fn close_requests_of_merged(&self, subject: &SubjectId, now: i64) {
        if let Err(error) = self.close_requests_of_gone(subject, "", "subject_merged", now).await {
            let code = tonic::Status::from(error).code();
            tracing::warn!(region = %self.region, ?code, "rights requests of a retired subject left open");
        }
    }

    /// The subject's open requests but `except` refused with `reason`, its challenges out of the
    /// outbox.
    async fn close_requests_of_gone(
        &self,
        subject: &SubjectId,
        except: &str,
        reason: &'static str,
        now: i64,
    ) -> Result<(), NodeError> {
        let _one_at_a_time = self.rights_lock.lock().await;
        let theirs = self.store.tracked_requests_of(subject).await?;
        let ids: Vec<String> = theirs.iter().map(|t| t.record.request_id.clone()).collect();
        for id in ids.iter().filter(|id| id.as_str() != except) {
            self.track_step(id, now, |tracked| {
                if !open_or_linked(&tracked.record) {
                    return false;
                }
                tracked.refuse(reason, now);
                true
            })
            .await?;
        }
        self.store.remove_outbox(&ids).await?;
        self.make_durable().await?;
        Ok(())
    }
}

/// Open, or linked to an open request (answered with it): what a step that answers every request
/// of a subject (or of a kind) answers.
fn open_or_linked(record: &RightsRequestRecord) -> bool {
    RightsStatus::parse(&record.status).is_some_and(|s| s.is_open() || s == RightsStatus::Linked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_authority_and_reason_codes_only() {
        let id = "ab".repeat(16);
        assert!(matches!(Authority::from_fields(&id, ""), Ok(Authority::Request(r)) if r == id));
        assert!(matches!(Authority::from_fields("", "court_order"), Ok(Authority::Override(o)) if o == "court_order"));
        for reason in OVERRIDE_REASONS {
            assert!(matches!(Authority::from_fields("", reason), Ok(Authority::Override(_))), "{reason}");
        }
        assert!(matches!(Authority::from_fields("", ""), Err(NodeError::Precondition(_))));
        assert!(matches!(Authority::from_fields(&id, "court_order"), Err(NodeError::InvalidArgument(_))));
        // Only the closed list: also no well-formed code of the caller's own (a name would do).
        for bad in [
            "_x",
            "Court",
            "court order",
            "court-order",
            "x1",
            &"a".repeat(41),
            "anna@example.com",
            "requested_by_anna",
        ] {
            let err = Authority::from_fields("", bad).unwrap_err();
            assert!(
                matches!(&err, NodeError::Invalid(v) if v.field == "override_reason" && !v.description.contains(bad)),
                "{bad}"
            );
        }
        assert!(
            matches!(Authority::from_fields("not-an-id", ""), Err(NodeError::Invalid(v)) if v.field == "request_id")
        );
    }
}
