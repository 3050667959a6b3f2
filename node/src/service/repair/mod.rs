//! Repair of identifier ownership, for operators of this region (`domicile cluster
//! repair-ownership`; ARCHITECTURE.md "Identifier ownership", *Repair*): reading the claims this
//! node arbitrates, claiming the links it holds without a recorded claim (data stored before
//! claims existed), dropping links another region keeps, and giving up claims on links it does
//! not hold. Only callers of this region with `admin` reach these operations (`access.rs`); they
//! carry links, subject refs and region names only.

pub(super) mod wire;

use std::collections::BTreeSet;
use std::sync::Arc;

use domicile_proto::convert::{FieldViolation, SubjectKey};
use domicile_runtime::process::now_unix;
use domicile_types::{Link, NormalizedIdentifier, RegionId, SubjectId};
use tokio_stream::wrappers::ReceiverStream;

use super::NodeService;
use crate::error::NodeError;
use crate::ownership::ClaimOutcome;
use crate::store::{Claim, Dropped, Release, Store};

/// Links claimed per batch (one generation, one lock set, one flush each).
const REASSERT_BATCH: usize = 1_000;
/// Refused links listed in one answer; the count covers them all.
const MAX_REFUSED_LISTED: usize = 10_000;

/// Which links a reassertion claims again.
pub(crate) struct ReassertScope {
    /// These links (claimed whether or not a claim is recorded); none: every link held here
    /// without a recorded claim, or with `all` every one.
    pub links: Vec<Link>,
    pub all: bool,
    /// Only count the candidates.
    pub dry_run: bool,
    /// Announce the chosen links in change events (only with `links`).
    pub announce: bool,
}

/// What a reassertion has done so far.
#[derive(Default)]
pub(crate) struct Reassert {
    pub candidates: u64,
    pub claimed: u64,
    /// Links another region holds, with that region (the first [`MAX_REFUSED_LISTED`]).
    pub refused: Vec<(Link, RegionId)>,
    pub refused_total: u64,
    pub unanswered: u64,
    pub unreachable: BTreeSet<RegionId>,
    pub gone: u64,
    pub announced: u64,
}

/// What a release of orphaned claims did: released at their arbiters, queued for an arbiter
/// that could not be reached, and skipped because this region holds the link after all.
pub(crate) struct OrphansReleased {
    pub released: usize,
    pub queued: usize,
    pub held_here: u64,
}

/// Distinct links, in order.
fn distinct(links: Vec<Link>) -> Vec<Link> {
    let set: BTreeSet<Link> = links.into_iter().collect();
    set.into_iter().collect()
}

impl<S: Store> NodeService<S> {
    /// The claims this node keeps, as the arbiter, for `links` (`None`: unclaimed).
    pub(crate) async fn arbitrated_claims(&self, links: &[Link]) -> Result<Vec<Option<Claim>>, NodeError> {
        if links.iter().any(|l| self.ownership.map().arbiter(l) != &self.region) {
            return Err(FieldViolation::new("links", "names a link this region does not arbitrate").into());
        }
        let mut claims = Vec::with_capacity(links.len());
        for link in links {
            claims.push(self.store.claim(link).await?);
        }
        Ok(claims)
    }

    /// Every claim this node keeps as the arbiter, made into entries by `entry`, in link order,
    /// in batches of at most `batch_size`.
    pub(crate) fn claims_snapshot<E: Send + 'static>(
        &self,
        batch_size: usize,
        entry: fn(Link, Claim) -> E,
    ) -> ReceiverStream<Result<Vec<E>, NodeError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            let mut after = None;
            loop {
                let page = match store.claims_page(after, batch_size.max(1)).await {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let Some((last, _)) = page.last() else { return };
                after = Some(*last);
                let full = page.len() == batch_size.max(1);
                let entries = page.into_iter().map(|(link, claim)| entry(link, claim)).collect();
                if tx.send(Ok(entries)).await.is_err() || !full {
                    return;
                }
            }
        });
        ReceiverStream::new(rx)
    }

    /// Claims again, at their arbiters, the links of `scope` this region holds, through the
    /// registration's claim path, and records the granted claims.
    pub(crate) async fn reassert(&self, scope: ReassertScope) -> Result<Reassert, NodeError> {
        let chosen = distinct(scope.links);
        let mut report = Reassert::default();
        if !chosen.is_empty() {
            // Links the repair keeps here, or finds unclaimed at their arbiters: claimed whatever
            // `held` says.
            for batch in chosen.chunks(REASSERT_BATCH) {
                self.reassert_batch(batch, true, scope.dry_run, scope.announce, &mut report).await?;
            }
        } else {
            let mut after = None;
            loop {
                let page = self.store.links_page(0..=u8::MAX, after, REASSERT_BATCH).await?;
                let Some((last, _)) = page.last() else { break };
                after = Some(*last);
                // Cheap filter first; the batch is checked again under its locks.
                let mut batch = Vec::with_capacity(page.len());
                for (link, _) in &page {
                    if scope.all || self.store.held_claim(link).await?.is_none() {
                        batch.push(*link);
                    }
                }
                if !batch.is_empty() {
                    self.reassert_batch(&batch, scope.all, scope.dry_run, false, &mut report).await?;
                }
                if page.len() < REASSERT_BATCH {
                    break;
                }
            }
        }
        tracing::info!(
            region = %self.region,
            dry_run = scope.dry_run,
            candidates = report.candidates,
            claimed = report.claimed,
            refused = report.refused_total,
            unanswered = report.unanswered,
            gone = report.gone,
            "identifier claims reasserted"
        );
        Ok(report)
    }

    /// Claims the links of `batch` this region holds (all of them with `every`, else those
    /// without a recorded claim) under their locks, through the registration's claim path, and
    /// records the granted claims (announcing the links with `announce`).
    async fn reassert_batch(
        &self,
        batch: &[Link],
        every: bool,
        dry_run: bool,
        announce: bool,
        report: &mut Reassert,
    ) -> Result<(), NodeError> {
        // A dry run only counts: it holds up no registration.
        let _locks = if dry_run { None } else { Some(self.ownership.lock(batch).await) };
        let mut todo = Vec::with_capacity(batch.len());
        for link in batch {
            let held_here = self.store.subject_by_link(link).await?.is_some();
            if held_here && (every || self.store.held_claim(link).await?.is_none()) {
                todo.push(*link);
            }
        }
        report.candidates += todo.len() as u64;
        if dry_run || todo.is_empty() {
            return Ok(());
        }
        let mut granted = Vec::with_capacity(todo.len());
        for (link, outcome) in self.ownership.claim_each(&todo).await? {
            match outcome {
                ClaimOutcome::Granted(claim) => granted.push(claim),
                ClaimOutcome::HeldBy(region) => {
                    report.refused_total += 1;
                    if report.refused.len() < MAX_REFUSED_LISTED {
                        report.refused.push((link, region));
                    }
                }
                // The claim may have been granted: the link is this region's, so it may keep it;
                // a later run records it.
                ClaimOutcome::Unanswered { arbiter, .. } => {
                    report.unanswered += 1;
                    report.unreachable.insert(arbiter);
                }
            }
        }
        let held = self.settle_unkeyed(self.store.hold_claims(&granted, announce, now_unix()).await).await?;
        report.claimed += held.held.len() as u64;
        report.gone += held.gone.len() as u64;
        report.announced += held.announced as u64;
        Ok(())
    }

    /// Removes `links` from the subject `key` names because region `kept_by` keeps them (an
    /// identifier held twice across regions). Links that no longer name the subject are skipped,
    /// so a second run changes nothing.
    pub(crate) async fn drop_subject_links(
        &self,
        key: &SubjectKey,
        links: Vec<Link>,
        kept_by: &RegionId,
    ) -> Result<(SubjectId, Dropped), NodeError> {
        if kept_by == &self.region || !self.ownership.map().contains(kept_by) {
            return Err(FieldViolation::new("kept_by", "is not another region of this deployment").into());
        }
        let (subject, _) = self.resolve_meta(key).await?;
        let record = self.store.subject_record(&subject).await?;
        let identifiers = record.map(|r| r.identifiers).unwrap_or_default();
        let mut remove: Vec<(NormalizedIdentifier, Link)> = Vec::new();
        for link in distinct(links) {
            if self.store.subject_by_link(&link).await? != Some(subject) {
                continue;
            }
            match identifiers.iter().find(|id| self.link_key.link(id) == link) {
                Some(identifier) => remove.push((identifier.clone(), link)),
                None => {
                    return Err(NodeError::Precondition(
                        "none of the subject's identifiers gives one of these links: is this node's link key the \
                         deployment's?",
                    ));
                }
            }
        }
        // Audited as an ownership repair; their claims (if this region had any) were queued
        // with the change.
        let dropped = self.settle_unkeyed(self.store.drop_links(&subject, &remove, kept_by, now_unix()).await).await?;
        tracing::info!(region = %self.region, %kept_by, removed = dropped.removed.len(), left = dropped.left, "links dropped for ownership repair");
        Ok((subject, dropped))
    }

    /// Gives up this region's claims on `links` no subject here holds, at their arbiters now (or
    /// queued for one that cannot be reached).
    pub(crate) async fn release_orphans(&self, links: Vec<Link>) -> Result<OrphansReleased, NodeError> {
        let links = distinct(links);
        // Held until the releases are sent: no claim of this region for these links is in
        // flight meanwhile, and any later one gets a generation above the releases'.
        let _locks = self.ownership.lock(&links).await;
        let mut orphans = Vec::with_capacity(links.len());
        let mut held_here = 0u64;
        for link in &links {
            if self.store.subject_by_link(link).await?.is_some() {
                held_here += 1;
            } else {
                orphans.push(*link);
            }
        }
        let (mut released, mut queued) = (0, 0);
        if !orphans.is_empty() {
            // Above every generation this region claimed with, so the release frees whichever
            // claim of this region the arbiter keeps.
            let generation = self.store.next_generation().await?;
            let releases: Vec<Release> = orphans.iter().map(|link| Release { link: *link, generation }).collect();
            (released, queued) = self.ownership.release_now(&releases).await?;
        }
        tracing::info!(region = %self.region, released, queued, held_here, "orphan claims released");
        Ok(OrphansReleased { released, queued, held_here })
    }
}
