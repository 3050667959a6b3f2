//! Tracked rights requests (ARCHITECTURE.md, "Rights requests"): opened with a one-time
//! challenge delivered through an identifier the subject holds (put in the region's outbox, which
//! the region's delivery system reads: the node sends nothing itself), verified by the code,
//! extended as the pack allows, listed when overdue. Every step is one store write with its audit
//! entry (`Store::track_request`). The code is kept only as a keyed digest; logs and audit entries
//! never hold it.

use std::sync::atomic::{AtomicU64, Ordering};

use domicile_proto::convert::SubjectKey;
use domicile_runtime::process::now_unix;
use domicile_types::rights::{RightsKind, RightsStatus};
use domicile_types::{Link, SubjectId};

use super::super::{NodeService, unit::Settled};
use crate::error::NodeError;
use crate::store::{
    Challenge, Delivery, Idempotency, OutboxChange, OutboxEntry, RightsRequestRecord, Store, StoreError, TrackedRequest,
};

/// The challenge digest's domain (under the deployment's link key, `LinkKey::digest`).
const CHALLENGE_DOMAIN: &[u8] = b"domicile/rights-challenge/v1";
/// Crockford's base32 alphabet: no I, L, O or U to misread.
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters of a code: 50 bits.
pub(crate) const CODE_LEN: usize = 10;

/// A request as opened: the subject, the request recorded, the request to verify and carry out
/// (itself, or the open one it is linked to) and when its challenge expires.
pub(crate) struct Opened {
    pub subject: SubjectId,
    pub request: RightsRequestRecord,
    pub active_request_id: String,
    pub challenge_expires_at: Option<i64>,
}

/// A challenge answered: the request as it now stands, whether it is verified, and the wrong
/// answers still allowed.
pub(crate) struct Answered {
    pub request: RightsRequestRecord,
    pub verified: bool,
    pub attempts_left: u32,
}

/// Overdue requests per kind, as last counted: what the `domicile.rights.overdue` gauge reports.
#[derive(Debug, Default)]
pub struct OverdueCounts([AtomicU64; RightsKind::ALL.len()]);

impl OverdueCounts {
    pub fn set(&self, counts: &[(RightsKind, u64)]) {
        for (kind, count) in counts {
            if let Some(i) = RightsKind::ALL.iter().position(|k| k == kind) {
                self.0[i].store(*count, Ordering::Relaxed);
            }
        }
    }

    /// (kind, count) for every kind.
    pub fn get(&self) -> Vec<(RightsKind, u64)> {
        RightsKind::ALL.iter().zip(&self.0).map(|(k, c)| (*k, c.load(Ordering::Relaxed))).collect()
    }
}

/// How often the gauge's counts are taken again while the node runs.
const OVERDUE_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

/// Counts the region's overdue requests into `counts` now and then every minute, for the
/// `domicile.rights.overdue` gauge (kinds only: no personal data in its labels). A failed read
/// keeps the last counts.
pub async fn keep_counting_overdue<S: Store>(store: std::sync::Arc<S>, counts: std::sync::Arc<OverdueCounts>) {
    let mut tick = tokio::time::interval(OVERDUE_REFRESH);
    loop {
        tick.tick().await;
        if let Ok(tracked) = store.tracked_requests().await {
            counts.set(&overdue_of(tracked, now_unix()).1);
        }
    }
}

/// Overdue requests with their subjects, and their count per kind.
type Overdue = (Vec<(SubjectId, RightsRequestRecord)>, Vec<(RightsKind, u64)>);

/// The open requests past their deadline at `at`, and their count per kind.
fn overdue_of(tracked: Vec<TrackedRequest>, at: i64) -> Overdue {
    let overdue: Vec<(SubjectId, RightsRequestRecord)> = tracked
        .into_iter()
        .filter(|t| is_open(&t.record) && t.record.due_at().is_some_and(|due| due < at))
        .map(|t| (t.subject, t.record))
        .collect();
    let counts = RightsKind::ALL
        .iter()
        .map(|kind| (*kind, overdue.iter().filter(|(_, r)| r.kind == kind.as_str()).count() as u64))
        .collect();
    (overdue, counts)
}

/// A request of another subject, or none: one answer for both, so a caller learns nothing of
/// other subjects' requests.
const NO_SUCH_REQUEST: &str = "no such rights request for the subject";

/// Open statuses: not yet answered, refused or linked.
fn is_open(record: &RightsRequestRecord) -> bool {
    RightsStatus::parse(&record.status).is_some_and(RightsStatus::is_open)
}

/// Compares two digests in time independent of where they differ.
pub(super) fn same_digest(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

/// A code as typed: case, spaces and dashes do not matter.
fn normalise_code(code: &str) -> String {
    code.chars().filter(|c| !c.is_whitespace() && *c != '-').map(|c| c.to_ascii_uppercase()).collect()
}

impl<S: Store> NodeService<S> {
    pub(super) fn challenge_digest(&self, request_id: &str, code: &str) -> String {
        let digest = self.link_key.digest(
            CHALLENGE_DOMAIN,
            &[self.region.as_str().as_bytes(), request_id.as_bytes(), normalise_code(code).as_bytes()],
        );
        hex::encode(digest)
    }

    fn new_code() -> Result<String, NodeError> {
        let bytes = domicile_runtime::process::random_bytes::<CODE_LEN>()
            .map_err(|_| NodeError::Unavailable("random source unavailable"))?;
        Ok(bytes.iter().map(|b| char::from(CODE_ALPHABET[usize::from(b & 31)])).collect())
    }

    /// The subject's tracked request `request_id`, or NOT_FOUND (also for another subject's).
    pub(super) async fn tracked_of(&self, subject: &SubjectId, request_id: &str) -> Result<TrackedRequest, NodeError> {
        match self.store.tracked_request(request_id).await? {
            Some(tracked) if tracked.subject == *subject => Ok(tracked),
            _ => Err(NodeError::NotFound(NO_SUCH_REQUEST)),
        }
    }

    /// Stores a step of a tracked request judged against `read` (`None`: a new request),
    /// durable (and audited) before it is answered. A step another one overtook (another
    /// replica's, say) is not written: ABORTED, to be tried again.
    pub(super) async fn track(
        &self,
        tracked: &TrackedRequest,
        read: Option<&TrackedRequest>,
        outbox: OutboxChange<'_>,
        now: i64,
        tag: Option<&Idempotency>,
    ) -> Result<Settled<()>, NodeError> {
        self.settle(self.store.track_request(tracked, read, outbox, now, tag).await).await
    }

    /// Applies `step` to the tracked request `request_id` as it now stands and stores it,
    /// reading again if another step overtook it (at most a few times): for the steps that
    /// follow work already done (completing a request, closing an erased subject's requests),
    /// which must not fail on a concurrent status query's race.
    pub(super) async fn track_step(
        &self,
        request_id: &str,
        now: i64,
        step: impl Fn(&mut TrackedRequest) -> bool,
    ) -> Result<(), NodeError> {
        for _ in 0..3 {
            let Some(read) = self.store.tracked_request(request_id).await? else { return Ok(()) };
            let mut tracked = read.clone();
            if !step(&mut tracked) {
                return Ok(());
            }
            match self.store.track_request(&tracked, Some(&read), OutboxChange::Remove, now, None).await {
                Err(StoreError::Retry) => continue,
                written => {
                    self.settle(written).await?;
                    return Ok(());
                }
            }
        }
        Err(StoreError::Retry.into())
    }

    /// Opens a request of `kind` for the subject, its challenge sent through `deliver_to`, a link
    /// the subject holds; or links it to the subject's open request of that kind.
    pub(crate) async fn open_rights_request(
        &self,
        key: &SubjectKey,
        kind: RightsKind,
        deliver_to: &Link,
        tag: Option<&Idempotency>,
    ) -> Result<Opened, NodeError> {
        let _one_at_a_time = self.rights_lock.lock().await;
        if let Some(request) = self.replayed::<RightsRequestRecord>(tag).await? {
            let subject = self.resolve(key).await?;
            return self.opened(subject, request).await;
        }
        let (subject, meta) = self.resolve_meta(key).await?;
        let record = self.store.subject_record(&subject).await?.ok_or(StoreError::NotFound)?;
        let Some(identifier) = record.identifiers.iter().find(|i| self.link_key.link(i) == *deliver_to) else {
            return Err(NodeError::Precondition(
                "deliver_to_link is not a link of an identifier the subject holds: a challenge goes only to an identifier the subject already holds",
            ));
        };
        let now = now_unix();
        // An identifier attached to the subject recently (a registration naming it beside one of
        // the subject's, a merge, a rectification) may be whoever attached it: not yet a way to
        // reach the person.
        let quarantine = i64::try_from(self.rights.identifier_quarantine_secs).unwrap_or(i64::MAX);
        if record.added_at.get(deliver_to).is_some_and(|added| now < added.saturating_add(quarantine)) {
            return Err(NodeError::Precondition(
                "deliver_to_link names an identifier added to the subject recently: a challenge goes only to an identifier held longer than the region's quarantine ([rights] identifier_quarantine_secs)",
            ));
        }
        let mut request = self.rights_request(&meta.jurisdiction, kind, now)?;
        request.completed_at = None;
        // Linked only to a request still waiting for its code: its code reaches the subject, and
        // whoever answers it proves as much as a second challenge would. A request already
        // verified is never handed to another requester (its id would let them act on it without
        // proving anything): a new request then gets a challenge of its own.
        let theirs = self.store.tracked_requests_of(&subject).await?;
        // Each linked request may send as many wrong codes as the request it is linked to: at
        // most that many are linked to one (so one code faces a bounded number of guesses); past
        // them, a new request gets a challenge, and a code, of its own.
        let most = usize::try_from(self.rights.challenge_attempts).unwrap_or(usize::MAX);
        let linked_to = |id: &str| theirs.iter().filter(|t| t.record.linked_to.as_deref() == Some(id)).count();
        let mut open = theirs
            .iter()
            .find(|t| {
                t.record.kind == kind.as_str()
                    && RightsStatus::parse(&t.record.status) == Some(RightsStatus::Verifying)
                    && linked_to(&t.record.request_id) < most
            })
            .cloned();
        // A challenge that expired unanswered is refused now, not linked to: otherwise one
        // request opened and never answered would keep the subject from ever getting a code.
        if let Some(read) = open.take_if(|t| {
            RightsStatus::parse(&t.record.status) == Some(RightsStatus::Verifying)
                && t.challenge.as_ref().is_some_and(|c| now >= c.expires_at)
        }) {
            let mut expired = read.clone();
            expired.refuse("challenge_expired", now);
            self.track(&expired, Some(&read), OutboxChange::Remove, now, None).await?;
            self.answer_linked(&subject, &expired.record, now).await?;
        }
        let written = match open {
            Some(open) => {
                request.status = RightsStatus::Linked.as_str().to_owned();
                request.linked_to = Some(open.record.request_id.clone());
                let tracked = TrackedRequest::new(subject, request.clone(), None);
                self.track(&tracked, None, OutboxChange::Keep, now, tag).await?
            }
            None => {
                let code = Self::new_code()?;
                let expires_at = now.saturating_add(i64::try_from(self.rights.challenge_ttl_secs).unwrap_or(i64::MAX));
                request.status = RightsStatus::Verifying.as_str().to_owned();
                let challenge = Challenge {
                    digest: self.challenge_digest(&request.request_id, &code),
                    expires_at,
                    failures: 0,
                    max_failures: self.rights.challenge_attempts,
                };
                let entry = OutboxEntry {
                    request_id: request.request_id.clone(),
                    subject,
                    created_at: now,
                    expires_at,
                    delivery: Delivery {
                        kind: identifier.kind().as_str().to_owned(),
                        value: identifier.expose_value().to_owned(),
                        code,
                    },
                };
                let tracked = TrackedRequest::new(subject, request.clone(), Some(challenge));
                self.track(&tracked, None, OutboxChange::Put(&entry), now, tag).await?
            }
        };
        if let Settled::Replayed = written {
            let request = self.replayed_after_race::<RightsRequestRecord>(tag).await?;
            return self.opened(subject, request).await;
        }
        tracing::info!(region = %self.region, kind = kind.as_str(), status = %request.status, "rights request opened");
        self.opened(subject, request).await
    }

    async fn opened(&self, subject: SubjectId, request: RightsRequestRecord) -> Result<Opened, NodeError> {
        let challenge_expires_at = match self.store.tracked_request(&request.request_id).await? {
            Some(TrackedRequest { challenge: Some(challenge), .. }) => Some(challenge.expires_at),
            _ => None,
        };
        // Its own id, also for a linked request (verified through its own id with the code the
        // subject received): the id of the request it is linked to is never handed to another
        // opener, who could otherwise act on it once that request's own requester verified it.
        let active_request_id = request.request_id.clone();
        Ok(Opened { subject, request, active_request_id, challenge_expires_at })
    }

    /// One request of the subject.
    pub(crate) async fn rights_request_of(
        &self,
        key: &SubjectKey,
        request_id: &str,
    ) -> Result<(SubjectId, RightsRequestRecord), NodeError> {
        let subject = self.resolve(key).await?;
        Ok((subject, self.tracked_of(&subject, request_id).await?.record))
    }

    /// Extends an open request's deadline to the pack's permitted extension.
    pub(crate) async fn extend_rights_request(
        &self,
        key: &SubjectKey,
        request_id: &str,
    ) -> Result<(SubjectId, RightsRequestRecord), NodeError> {
        let _one_at_a_time = self.rights_lock.lock().await;
        let subject = self.resolve(key).await?;
        let read = self.tracked_of(&subject, request_id).await?;
        let mut tracked = read.clone();
        if !is_open(&tracked.record) {
            return Err(NodeError::Precondition("the rights request is closed (completed, refused or linked)"));
        }
        if tracked.record.extended_deadline_at.is_none() {
            return Err(NodeError::Precondition("the subject's pack states no permitted extension of the deadline"));
        }
        if tracked.record.extended_at.is_some() {
            return Ok((subject, tracked.record));
        }
        let now = now_unix();
        tracked.record.extended_at = Some(now);
        self.track(&tracked, Some(&read), OutboxChange::Keep, now, None).await?;
        tracing::info!(region = %self.region, kind = %tracked.record.kind, "rights request deadline extended");
        Ok((subject, tracked.record))
    }

    /// The region's open requests past their deadline at `as_of`, and their count per kind
    /// (which the gauge reports when `as_of` is now).
    pub(crate) async fn overdue_rights_requests(&self, as_of: Option<i64>) -> Result<Overdue, NodeError> {
        let now = now_unix();
        let at = as_of.unwrap_or(now);
        let (overdue, counts) = overdue_of(self.store.tracked_requests().await?, at);
        if as_of.is_none_or(|at| at == now) {
            self.overdue.set(&counts);
        }
        Ok((overdue, counts))
    }

    /// Up to `limit` challenges to deliver; expired ones are removed instead of returned.
    pub(crate) async fn challenge_outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, NodeError> {
        let now = now_unix();
        let (live, expired): (Vec<OutboxEntry>, Vec<OutboxEntry>) =
            self.store.outbox(limit).await?.into_iter().partition(|e| e.expires_at > now);
        if !expired.is_empty() {
            let ids: Vec<String> = expired.into_iter().map(|e| e.request_id).collect();
            self.store.remove_outbox(&ids).await?;
            self.make_durable().await?;
        }
        Ok(live)
    }

    /// Removes delivered challenges.
    pub(crate) async fn ack_challenges(&self, request_ids: &[String]) -> Result<usize, NodeError> {
        let removed = self.store.remove_outbox(request_ids).await?;
        self.make_durable().await?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(kind: RightsKind, status: RightsStatus, deadline: i64, extended: Option<i64>) -> TrackedRequest {
        TrackedRequest::new(
            SubjectId::from_bytes([7; domicile_types::SUBJECT_ID_LEN]),
            RightsRequestRecord {
                request_id: format!("{:032x}", deadline),
                kind: kind.as_str().to_owned(),
                status: status.as_str().to_owned(),
                deadline_at: Some(deadline),
                extended_deadline_at: Some(deadline + 100),
                extended_at: extended,
                ..Default::default()
            },
            None,
        )
    }

    #[test]
    fn overdue_means_open_and_past_the_deadline_in_force_and_the_gauge_counts_by_kind() {
        let now = 1_000;
        let requests = vec![
            // Open and past its deadline: overdue.
            tracked(RightsKind::Access, RightsStatus::Verifying, now - 1, None),
            tracked(RightsKind::Erasure, RightsStatus::InProgress, now - 2, None),
            // Extended: its deadline in force is later.
            tracked(RightsKind::Access, RightsStatus::Verified, now - 3, Some(now - 10)),
            // Answered, refused or linked: never overdue.
            tracked(RightsKind::Access, RightsStatus::Completed, now - 4, None),
            tracked(RightsKind::Access, RightsStatus::Refused, now - 5, None),
            tracked(RightsKind::Access, RightsStatus::Linked, now - 6, None),
            // Not yet due.
            tracked(RightsKind::Access, RightsStatus::Verifying, now + 1, None),
        ];
        let (overdue, counts) = overdue_of(requests.clone(), now);
        let ids: Vec<i64> = overdue.iter().map(|(_, r)| r.deadline_at.unwrap()).collect();
        assert_eq!(ids, [now - 1, now - 2]);
        let gauge = OverdueCounts::default();
        gauge.set(&counts);
        let by_kind = gauge.get();
        assert_eq!(by_kind.len(), RightsKind::ALL.len(), "every kind, zero included");
        assert!(by_kind.contains(&(RightsKind::Access, 1)) && by_kind.contains(&(RightsKind::Erasure, 1)));
        assert!(by_kind.contains(&(RightsKind::Portability, 0)));
        // Past the extension too: the extended one is overdue as well.
        assert_eq!(overdue_of(requests, now + 200).0.len(), 4);
    }

    #[test]
    fn codes_are_compared_whole_and_read_as_typed() {
        assert!(same_digest(b"abc", b"abc"));
        assert!(!same_digest(b"abc", b"abd") && !same_digest(b"abc", b"ab"));
        assert_eq!(normalise_code(" ab-cd 12 "), "ABCD12");
    }
}
