//! Registration of many subjects in one call (`RegisterBatch`, which `domicile import` uses).
//!
//! Registered one by one, a subject costs a claim call to each arbiter of its identifiers and a
//! durable commit of its own, each a round of fsyncs: an import of new subjects spent most of its
//! time there. Here the call's links are locked together, their claims asked of each arbiter in
//! one call, and everything stored made durable by one commit. Each item still ends as
//! [`NodeService::register_subject`] would have left it: the same residency checks, a claim
//! granted for every link no subject of this region holds (under the links' locks, so no other
//! write of this region claims them meanwhile), the same store write, nothing answered before it
//! is durable. An item that shares a link with an earlier item of the call, or that a concurrent
//! change upset ([`StoreError::Retry`]), is registered on its own afterwards, exactly as
//! `Register` would.

use std::collections::{HashMap, HashSet};

use futures_util::StreamExt as _;

use domicile_runtime::process::now_unix;
use domicile_types::{Jurisdiction, Link, NormalizedIdentifier};
use tonic::Status;

use super::{Registration, fresh_subject};
use crate::error::NodeError;
use crate::ownership::{ClaimOutcome, settle_claims};
use crate::service::unit::Settled;
use crate::service::{Caller, NodeService};
use crate::store::{NewRegistration, Registered, Store, StoreError};

/// Items of a call registered on their own at once (sharing an identifier with an earlier item,
/// or upset by a concurrent change).
const ALONE_IN_FLIGHT: usize = 8;

/// What became of one item: as `Register` would have answered it.
pub(crate) type ItemOutcome = Result<Registered, Status>;

/// An item of the call to register with the others.
struct Pending {
    position: usize,
    jurisdiction: Jurisdiction,
    linked: Vec<(NormalizedIdentifier, Link)>,
    /// Kept for a registration on its own, should this one be upset.
    identifiers: Vec<NormalizedIdentifier>,
}

impl<S: Store> NodeService<S> {
    /// Registers each item (or finds the subject that holds its identifiers), as
    /// [`Self::register_subject`] would without an idempotency key. One outcome per item, in
    /// order; an item refused refuses only itself.
    pub(crate) async fn register_subjects(
        &self,
        caller: &Caller,
        items: Vec<Result<Registration, NodeError>>,
    ) -> Vec<ItemOutcome> {
        let mut out: Vec<Option<ItemOutcome>> = items.iter().map(|_| None).collect();
        let mut together = Vec::new();
        let mut alone: Vec<(usize, Registration)> = Vec::new();
        let mut seen: HashSet<Link> = HashSet::new();
        for (position, item) in items.into_iter().enumerate() {
            let registration = match item.and_then(|r| self.check_registration(caller, &r.jurisdiction).map(|()| r)) {
                Ok(registration) => registration,
                Err(e) => {
                    out[position] = Some(Err(Status::from(e)));
                    continue;
                }
            };
            let identifiers = registration.identifiers.clone();
            let linked = self.linked(registration.identifiers);
            // Two items naming one identifier: the second must see what the first stored (it
            // finds that subject and adds its other identifiers), so it goes after, on its own.
            if linked.iter().any(|(_, link)| seen.contains(link)) {
                alone.push((position, Registration { jurisdiction: registration.jurisdiction, identifiers }));
                continue;
            }
            seen.extend(linked.iter().map(|(_, link)| *link));
            together.push(Pending { position, jurisdiction: registration.jurisdiction, linked, identifiers });
        }
        let (registered, refused, upset) = self.register_together(together).await;
        alone.extend(upset);
        alone.sort_by_key(|(position, _)| *position);
        for (position, outcome) in registered.into_iter().chain(refused) {
            out[position] = Some(outcome);
        }
        // Each on its own, as `Register` would (its own locks: those sharing a link wait on each
        // other), a few at once.
        let alone: Vec<(usize, ItemOutcome)> = futures_util::stream::iter(alone)
            .map(|(position, registration)| async move {
                (position, self.register_subject(caller, registration, None).await.map_err(Status::from))
            })
            .buffer_unordered(ALONE_IN_FLIGHT)
            .collect()
            .await;
        for (position, outcome) in alone {
            out[position] = Some(outcome);
        }
        let (mut created, mut found, mut failed) = (0usize, 0usize, 0usize);
        let outcomes: Vec<ItemOutcome> = out
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(|| Err(Status::internal("registration outcome lost"))))
            .inspect(|outcome| match outcome {
                Ok(registered) if registered.created => created += 1,
                Ok(_) => found += 1,
                Err(_) => failed += 1,
            })
            .collect();
        tracing::info!(region = %self.region, created, found, refused = failed, "subjects registered in a batch");
        outcomes
    }

    /// Registers `items` (no two sharing a link) under one set of locks, one claim call per
    /// arbiter and one durable commit. Returns the outcomes (registered, refused) by position,
    /// and the items a concurrent change upset, to be registered on their own once the locks
    /// are given back.
    async fn register_together(
        &self,
        items: Vec<Pending>,
    ) -> (Vec<(usize, ItemOutcome)>, Vec<(usize, ItemOutcome)>, Vec<(usize, Registration)>) {
        let (mut refused, mut upset) = (Vec::new(), Vec::new());
        if items.is_empty() {
            return (Vec::new(), refused, upset);
        }
        let every: Vec<Link> = items.iter().flat_map(|item| item.linked.iter().map(|(_, link)| *link)).collect();
        let locks = self.ownership.lock(&every).await;
        let fail_all = |items: Vec<Pending>, status: Status| -> Vec<(usize, ItemOutcome)> {
            items.into_iter().map(|item| (item.position, Err(status.clone()))).collect()
        };
        // Links no subject of this region holds are claimed, each at its arbiter; the others are
        // this region's already (under the locks, they stay so until the store writes).
        let mut free = Vec::new();
        let mut free_set = HashSet::new();
        for link in &every {
            match self.store.subject_by_link(link).await {
                Ok(None) if free_set.insert(*link) => free.push(*link),
                Ok(_) => {}
                Err(e) => return (Vec::new(), fail_all(items, Status::from(NodeError::from(e))), upset),
            }
        }
        let outcomes: HashMap<Link, ClaimOutcome> = match self.ownership.claim_each(&free).await {
            Ok(outcomes) => outcomes.into_iter().collect(),
            Err(e) => return (Vec::new(), fail_all(items, Status::from(NodeError::from(e))), upset),
        };
        // Items whose every free link was granted go to the store together, with their claims.
        let (mut ready, mut registrations): (Vec<Pending>, Vec<NewRegistration>) = (Vec::new(), Vec::new());
        for item in items {
            let (claims, refusal) = settle_claims(item.linked.iter().filter_map(|(_, link)| outcomes.get(link)));
            let new_subject = match refusal {
                Some(e) => Err(NodeError::from(e)),
                None => fresh_subject(),
            };
            match new_subject {
                Ok(new_subject) => {
                    let registration = NewRegistration {
                        jurisdiction: item.jurisdiction.clone(),
                        identifiers: item.linked.clone(),
                        new_subject,
                        claimed: claims,
                    };
                    ready.push(item);
                    registrations.push(registration);
                }
                Err(e) => {
                    self.ownership.abandon(&claims).await;
                    refused.push((item.position, Err(Status::from(e))));
                }
            }
        }
        if registrations.is_empty() {
            return (Vec::new(), refused, upset);
        }
        let written = match self.store.register_many(&registrations, now_unix()).await {
            Ok(written) if written.len() == registrations.len() => written,
            Ok(_) => {
                // Nothing can be matched to its item: none answered as stored. The claims stay
                // (some items may be live): orphans at worst, found by the repair command.
                tracing::error!(region = %self.region, "the store answered a batch of registrations out of shape");
                let status = Status::internal("registration outcome lost");
                refused.extend(ready.into_iter().map(|item| (item.position, Err(status.clone()))));
                return (Vec::new(), refused, upset);
            }
            Err(e) => {
                let e = if self.store.disk_full(&e) { StoreError::StorageFull } else { e };
                // A commit whose answer was lost may have made the links live: their claims stay
                // (an orphan claim is safe, a second owner is not).
                if !matches!(e, StoreError::OutcomeUnknown) {
                    for registration in &registrations {
                        self.ownership.abandon(&registration.claimed).await;
                    }
                }
                let status = Status::from(NodeError::from(e));
                refused.extend(ready.into_iter().map(|item| (item.position, Err(status.clone()))));
                return (Vec::new(), refused, upset);
            }
        };
        let mut applied: Vec<(usize, Registered)> = Vec::new();
        for ((item, registration), written) in ready.into_iter().zip(registrations).zip(written) {
            match written {
                Ok(registered) => applied.push((item.position, registered)),
                Err(e) => {
                    // Nothing of this item is stored: under the locks, no other write made its
                    // links live meanwhile, so its claims can go.
                    self.ownership.abandon(&registration.claimed).await;
                    match e {
                        StoreError::Retry => upset.push((
                            item.position,
                            Registration { jurisdiction: item.jurisdiction, identifiers: item.identifiers },
                        )),
                        e => {
                            let e = if self.store.disk_full(&e) { StoreError::StorageFull } else { e };
                            refused.push((item.position, Err(Status::from(NodeError::from(e)))));
                        }
                    }
                }
            }
        }
        // As `with_claims` does: the links stay locked from their claims until their store write
        // (and the give-up of what was not used), not through the durable commit.
        drop(locks);
        let (positions, written): (Vec<usize>, Vec<Registered>) = applied.into_iter().unzip();
        if written.is_empty() {
            return (Vec::new(), refused, upset);
        }
        let registered = match self.settle(Ok(written)).await {
            Ok(Settled::Applied(written)) => positions.into_iter().zip(written.into_iter().map(Ok)).collect(),
            // Written without idempotency keys: never answered as a replay.
            Ok(Settled::Replayed) => {
                positions.into_iter().map(|p| (p, Err(Status::internal("registration answered as a replay")))).collect()
            }
            // Applied but not durable: each outcome unknown, as `Register`'s would be.
            Err(e) => {
                let status = Status::from(e);
                positions.into_iter().map(|p| (p, Err(status.clone()))).collect()
            }
        };
        (registered, refused, upset)
    }
}
