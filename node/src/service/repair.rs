//! Repair of identifier ownership, for operators of this region (`domicile cluster
//! repair-ownership`; ARCHITECTURE.md "Identifier ownership", *Repair*): reading the claims this
//! node arbitrates, claiming the links it holds without a recorded claim (data stored before
//! claims existed), dropping links another region keeps, and giving up claims on links it does
//! not hold. Only callers of this region with `admin` reach these methods (`access.rs`); they
//! carry links, subject refs and region names only.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use domicile_proto::convert::{self, FieldViolation};
use domicile_proto::pb::node::v1 as pb;
use domicile_runtime::process::now_unix;
use domicile_types::{Link, NormalizedIdentifier, RegionId};
use tokio_stream::Stream;
use tonic::{Request, Status};

use super::NodeService;
use super::claims::links_of;
use crate::access::Requester;
use crate::error::{claim_status, invalid, store_status};
use crate::ownership::ClaimOutcome;
use crate::store::{Release, Store};

/// Claims per `ListClaims` batch unless the caller asks for another size.
const DEFAULT_CLAIM_BATCH: usize = 4096;
/// Links claimed per batch (one generation, one lock set, one flush each).
const REASSERT_BATCH: usize = 1_000;
/// Refused links listed in one answer; the count covers them all.
const MAX_REFUSED_LISTED: usize = 10_000;

/// Refuses gateways and peer nodes even if the access layer let one through: these methods act
/// on the whole region. In-process calls (tests) have no requester and pass.
fn operator_only<T>(request: &Request<T>) -> Result<(), Status> {
    match Requester::of(request) {
        Some(Requester::Gateway | Requester::PeerNode(_)) => {
            Err(Status::permission_denied("ownership repair is for operators of this region"))
        }
        Some(Requester::InRegion(_)) | None => Ok(()),
    }
}

pub type ClaimStream = Pin<Box<dyn Stream<Item = Result<pb::ClaimBatch, Status>> + Send>>;

/// Distinct links, in order.
fn distinct(links: Vec<Link>) -> Vec<Link> {
    let set: BTreeSet<Link> = links.into_iter().collect();
    set.into_iter().collect()
}

/// What a `ReassertClaims` has done so far.
#[derive(Default)]
struct Reassert {
    candidates: u64,
    claimed: u64,
    refused: Vec<pb::RefusedClaim>,
    refused_total: u64,
    unanswered: u64,
    unreachable: BTreeSet<RegionId>,
    gone: u64,
    announced: u64,
}

impl<S: Store> NodeService<S> {
    pub(super) fn arbiter_claims(&self, request: Request<pb::ClaimsOfRequest>) -> Result<pb::ClaimsOfResponse, Status> {
        operator_only(&request)?;
        let links = links_of(&request.get_ref().links)?;
        if links.iter().any(|l| self.ownership.map().arbiter(l) != &self.region) {
            return Err(FieldViolation::new("links", "names a link this region does not arbitrate").into());
        }
        let mut claims = Vec::with_capacity(links.len());
        for link in &links {
            claims.push(match self.store.claim(link).map_err(store_status)? {
                Some(claim) => pb::LinkClaim { region: claim.region.to_string(), generation: claim.generation },
                None => pb::LinkClaim::default(),
            });
        }
        Ok(pb::ClaimsOfResponse { claims, arbiter_map_digest: self.ownership.map().digest().to_owned() })
    }

    pub(super) fn claims_snapshot(&self, request: Request<pb::ListClaimsRequest>) -> Result<ClaimStream, Status> {
        operator_only(&request)?;
        let batch_size = match request.get_ref().batch_size {
            0 => DEFAULT_CLAIM_BATCH,
            n => (n as usize).min(65_536),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let store = Arc::clone(&self.store);
        // sled iteration blocks; keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            let mut entries = Vec::with_capacity(batch_size);
            for item in store.claims() {
                match item {
                    Ok((link, claim)) => {
                        entries.push(pb::ClaimEntry {
                            link: link.as_bytes().to_vec(),
                            claim: Some(pb::LinkClaim {
                                region: claim.region.to_string(),
                                generation: claim.generation,
                            }),
                        });
                        if entries.len() == batch_size {
                            let batch = pb::ClaimBatch { entries: std::mem::take(&mut entries) };
                            if tx.blocking_send(Ok(batch)).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(store_status(e)));
                        return;
                    }
                }
            }
            if !entries.is_empty() {
                let _ = tx.blocking_send(Ok(pb::ClaimBatch { entries }));
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    pub(super) async fn reassert(
        &self,
        request: Request<pb::ReassertClaimsRequest>,
    ) -> Result<pb::ReassertClaimsResponse, Status> {
        operator_only(&request)?;
        let req = request.into_inner();
        let chosen = distinct(links_of(&req.links)?);
        let mut report = Reassert::default();
        if !chosen.is_empty() {
            // Links the repair keeps here, or finds unclaimed at their arbiters: claimed whatever
            // `held` says.
            for batch in chosen.chunks(REASSERT_BATCH) {
                self.reassert_batch(batch, true, req.dry_run, req.announce, &mut report).await?;
            }
        } else {
            let mut scan = self.store.links(0..=u8::MAX);
            let mut batch = Vec::with_capacity(REASSERT_BATCH);
            loop {
                batch.clear();
                // Cheap filter first; the batch is checked again under its locks.
                for item in scan.by_ref() {
                    let (link, _) = item.map_err(store_status)?;
                    if req.all || self.store.held_claim(&link).map_err(store_status)?.is_none() {
                        batch.push(link);
                        if batch.len() == REASSERT_BATCH {
                            break;
                        }
                    }
                }
                if batch.is_empty() {
                    break;
                }
                self.reassert_batch(&batch, req.all, req.dry_run, false, &mut report).await?;
            }
        }
        tracing::info!(
            region = %self.region,
            dry_run = req.dry_run,
            candidates = report.candidates,
            claimed = report.claimed,
            refused = report.refused_total,
            unanswered = report.unanswered,
            gone = report.gone,
            "identifier claims reasserted"
        );
        Ok(pb::ReassertClaimsResponse {
            candidates: report.candidates,
            claimed: report.claimed,
            refused: report.refused,
            refused_total: report.refused_total,
            unanswered: report.unanswered,
            unreachable_arbiters: report.unreachable.iter().map(ToString::to_string).collect(),
            gone: report.gone,
            announced: report.announced,
        })
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
    ) -> Result<(), Status> {
        // A dry run only counts: it holds up no registration.
        let _locks = if dry_run { None } else { Some(self.ownership.lock(batch).await) };
        let mut todo = Vec::with_capacity(batch.len());
        for link in batch {
            let held_here = self.store.subject_by_link(link).map_err(store_status)?.is_some();
            if held_here && (every || self.store.held_claim(link).map_err(store_status)?.is_none()) {
                todo.push(*link);
            }
        }
        report.candidates += todo.len() as u64;
        if dry_run || todo.is_empty() {
            return Ok(());
        }
        let mut granted = Vec::with_capacity(todo.len());
        for (link, outcome) in self.ownership.claim_each(&todo).await.map_err(claim_status)? {
            match outcome {
                ClaimOutcome::Granted(claim) => granted.push(claim),
                ClaimOutcome::HeldBy(region) => {
                    report.refused_total += 1;
                    if report.refused.len() < MAX_REFUSED_LISTED {
                        report
                            .refused
                            .push(pb::RefusedClaim { link: link.as_bytes().to_vec(), held_by: region.to_string() });
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
        let held = self.settle_unkeyed(self.store.hold_claims(&granted, announce, now_unix())).await?;
        report.claimed += held.held.len() as u64;
        report.gone += held.gone.len() as u64;
        report.announced += held.announced as u64;
        Ok(())
    }

    pub(super) async fn drop_subject_links(
        &self,
        request: Request<pb::DropLinksRequest>,
    ) -> Result<pb::DropLinksResponse, Status> {
        operator_only(&request)?;
        let req = request.get_ref();
        let key = convert::subject_key("subject", req.subject.as_ref()).map_err(invalid)?;
        let links = distinct(links_of(&req.links)?);
        if links.is_empty() {
            return Err(FieldViolation::new("links", "names no link").into());
        }
        let kept_by =
            RegionId::parse(&req.kept_by).map_err(|_| FieldViolation::new("kept_by", "is not a region id"))?;
        if kept_by == self.region || !self.ownership.map().contains(&kept_by) {
            return Err(FieldViolation::new("kept_by", "is not another region of this deployment").into());
        }
        let (subject, _) = self.resolve_meta(&key)?;
        let record = self.store.subject_record(&subject).map_err(store_status)?;
        let identifiers = record.map(|r| r.identifiers).unwrap_or_default();
        let mut remove: Vec<(NormalizedIdentifier, Link)> = Vec::new();
        for link in &links {
            // Only links that still name this subject; others are skipped (a second run).
            if self.store.subject_by_link(link).map_err(store_status)? != Some(subject) {
                continue;
            }
            match identifiers.iter().find(|id| self.link_key.link(id) == *link) {
                Some(identifier) => remove.push((identifier.clone(), *link)),
                None => {
                    return Err(Status::failed_precondition(
                        "none of the subject's identifiers gives one of these links: is this node's link key the \
                         deployment's?",
                    ));
                }
            }
        }
        // Audited as an ownership repair; their claims (if this region had any) were queued
        // with the change.
        let dropped = self.settle_unkeyed(self.store.drop_links(&subject, &remove, &kept_by, now_unix())).await?;
        let left = dropped.left;
        tracing::info!(region = %self.region, %kept_by, removed = dropped.removed.len(), left, "links dropped for ownership repair");
        Ok(pb::DropLinksResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            links_removed: dropped.removed.iter().map(|l| l.as_bytes().to_vec()).collect(),
            links_left: left as u64,
        })
    }

    pub(super) async fn release_orphans(
        &self,
        request: Request<pb::ReleaseOrphanClaimsRequest>,
    ) -> Result<pb::ReleaseOrphanClaimsResponse, Status> {
        operator_only(&request)?;
        let links = distinct(links_of(&request.get_ref().links)?);
        // Held until the releases are sent: no claim of this region for these links is in
        // flight meanwhile, and any later one gets a generation above the releases'.
        let _locks = self.ownership.lock(&links).await;
        let mut orphans = Vec::with_capacity(links.len());
        let mut held_here = 0u64;
        for link in &links {
            if self.store.subject_by_link(link).map_err(store_status)?.is_some() {
                held_here += 1;
            } else {
                orphans.push(*link);
            }
        }
        let (mut released, mut queued) = (0, 0);
        if !orphans.is_empty() {
            // Above every generation this region claimed with, so the release frees whichever
            // claim of this region the arbiter keeps.
            let generation = self.store.next_generation().map_err(store_status)?;
            let releases: Vec<Release> = orphans.iter().map(|link| Release { link: *link, generation }).collect();
            (released, queued) = self.ownership.release_now(&releases).await.map_err(claim_status)?;
        }
        tracing::info!(region = %self.region, released, queued, held_here, "orphan claims released");
        Ok(pb::ReleaseOrphanClaimsResponse { released: released as u64, queued: queued as u64, held_here })
    }
}
