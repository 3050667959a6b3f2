//! `VerifyRightsRequest`: a request's challenge answered with the code its subject received
//! (ARCHITECTURE.md, "Rights requests").
//!
//! A request linked to another that still waits for its code (`track.rs`) is verified through its
//! own id, against that request's challenge: the code reached the subject, and whoever presents
//! it through a request proves as much as a second challenge would. The request it was presented
//! through is the one verified; the other is then linked to it (answered with it). So a request
//! id is only ever acted on by the desk that opened it, and one desk's verification never
//! serves another desk's requester.

use domicile_proto::convert::SubjectKey;
use domicile_runtime::process::now_unix;
use domicile_types::SubjectId;
use domicile_types::rights::RightsStatus;

use super::super::NodeService;
use super::track::{Answered, same_digest};
use crate::error::NodeError;
use crate::store::{OutboxChange, Store, TrackedRequest};

impl<S: Store> NodeService<S> {
    /// Answers a request's challenge with `code`.
    pub(crate) async fn verify_rights_request(
        &self,
        key: &SubjectKey,
        request_id: &str,
        code: &str,
    ) -> Result<Answered, NodeError> {
        let _one_at_a_time = self.rights_lock.lock().await;
        let subject = self.resolve(key).await?;
        let read = self.tracked_of(&subject, request_id).await?;
        let status = RightsStatus::parse(&read.record.status);
        // Verified already: the same code again is a repeated answer (a reply lost, say); any
        // other code proves nothing, and must not read as verified to whoever sent it.
        if matches!(status, Some(RightsStatus::Verified | RightsStatus::InProgress | RightsStatus::Completed)) {
            let digest = self.challenge_digest(request_id, code);
            if !read.verified_by.as_ref().is_some_and(|d| same_digest(digest.as_bytes(), d.as_bytes())) {
                return Err(NodeError::Precondition(
                    "the rights request was verified already, and not with this code: the code proves nothing",
                ));
            }
            return Ok(Answered { request: read.record, verified: true, attempts_left: 0 });
        }
        // The challenge the code answers: the request's own, or that of the request it is linked
        // to while that one waits for its code. Refused or answered otherwise: nothing changes.
        let unanswerable =
            |read: TrackedRequest| Ok(Answered { request: read.record, verified: false, attempts_left: 0 });
        let challenged_read = match (status, read.record.linked_to.as_deref()) {
            (Some(RightsStatus::Verifying), _) => read.clone(),
            (Some(RightsStatus::Linked), Some(active)) => {
                let active = self.tracked_of(&subject, active).await?;
                if RightsStatus::parse(&active.record.status) != Some(RightsStatus::Verifying) {
                    return unanswerable(read);
                }
                active
            }
            _ => return unanswerable(read),
        };
        let Some(mut challenge) = challenged_read.challenge.clone() else { return unanswerable(read) };
        let now = now_unix();
        let mut challenged = challenged_read.clone();
        // Presented through a request linked to the one challenged.
        let through_link = challenged_read.record.request_id != read.record.request_id;
        let right = same_digest(
            self.challenge_digest(&challenged.record.request_id, code).as_bytes(),
            challenge.digest.as_bytes(),
        );
        let mut verified = false;
        let mut attempts_left = 0;
        if now >= challenge.expires_at {
            challenged.refuse("challenge_expired", now);
            self.track(&challenged, Some(&challenged_read), OutboxChange::Remove, now, None).await?;
            self.answer_linked(&subject, &challenged.record, now).await?;
        } else if !right && through_link {
            // Through a linked request: counted against it alone (its opener must not be able to
            // refuse the other requester's request by sending wrong codes through its own).
            let mut linked = read.clone();
            linked.linked_failures = linked.linked_failures.saturating_add(1);
            attempts_left = challenge.max_failures.saturating_sub(linked.linked_failures);
            if linked.linked_failures >= challenge.max_failures {
                // `linked_to` kept: the opening of further requests counts it (`track.rs`).
                linked.refuse("verification_failed", now);
            }
            self.track(&linked, Some(&read), OutboxChange::Keep, now, None).await?;
        } else if !right {
            challenge.failures = challenge.failures.saturating_add(1);
            attempts_left = challenge.max_failures.saturating_sub(challenge.failures);
            if challenge.failures >= challenge.max_failures {
                challenged.refuse("verification_failed", now);
                self.track(&challenged, Some(&challenged_read), OutboxChange::Remove, now, None).await?;
                self.answer_linked(&subject, &challenged.record, now).await?;
            } else {
                challenged.challenge = Some(challenge.clone());
                self.track(&challenged, Some(&challenged_read), OutboxChange::Keep, now, None).await?;
            }
        } else {
            verified = true;
            let mut answering = if through_link { read.clone() } else { challenged.clone() };
            answering.record.status = RightsStatus::Verified.as_str().to_owned();
            answering.record.verified_at = Some(now);
            answering.record.linked_to = None;
            // Over the id the code was presented through: an answer sent again through it (a
            // reply lost) is recognised.
            answering.verified_by = Some(self.challenge_digest(&answering.record.request_id, code));
            answering.challenge = None;
            if through_link {
                // Verified first: a stop before the second step leaves the other request waiting
                // for a code already spent, which only the code's holder could answer anyway.
                self.track(&answering, Some(&read), OutboxChange::Keep, now, None).await?;
                self.relink(&subject, &challenged_read, &answering.record.request_id, now).await?;
            } else {
                self.track(&answering, Some(&challenged_read), OutboxChange::Remove, now, None).await?;
            }
        }
        let answered = self.tracked_of(&subject, request_id).await?;
        if !RightsStatus::parse(&answered.record.status)
            .is_some_and(|s| s == RightsStatus::Verifying || s == RightsStatus::Linked)
        {
            attempts_left = 0;
        }
        tracing::info!(region = %self.region, status = %answered.record.status, "rights request challenge answered");
        Ok(Answered { request: answered.record, verified, attempts_left })
    }

    /// After a linked request was verified with the code of `spent` (the request it was linked
    /// to): `spent` and every request linked to it are linked to the verified one `to`, answered
    /// with it; `spent`'s challenge leaves the outbox.
    async fn relink(&self, subject: &SubjectId, spent: &TrackedRequest, to: &str, now: i64) -> Result<(), NodeError> {
        let mut linked = spent.clone();
        linked.record.status = RightsStatus::Linked.as_str().to_owned();
        linked.record.linked_to = Some(to.to_owned());
        linked.challenge = None;
        self.track(&linked, Some(spent), OutboxChange::Remove, now, None).await?;
        let others: Vec<String> = self
            .store
            .tracked_requests_of(subject)
            .await?
            .into_iter()
            .filter(|t| {
                t.record.linked_to.as_deref() == Some(spent.record.request_id.as_str())
                    && RightsStatus::parse(&t.record.status) == Some(RightsStatus::Linked)
            })
            .map(|t| t.record.request_id)
            .collect();
        for id in others {
            self.track_step(&id, now, |tracked| {
                if tracked.record.linked_to.as_deref() != Some(spent.record.request_id.as_str()) {
                    return false;
                }
                tracked.record.linked_to = Some(to.to_owned());
                true
            })
            .await?;
        }
        Ok(())
    }
}
