//! Identifier ownership across regions (invariant 9: one identifier, one subject, one home).
//!
//! Each link has one arbiter region (`domicile_types::ArbiterMap`), whose node keeps which region
//! holds the link. Before this node makes a link live (registration, an identifier added by
//! rectification) it claims the link at its arbiter, under a fencing generation; only a granted
//! claim lets the store take the link. When a link leaves (erasure, removal) or a claimed write
//! does not complete, the claim is released, from a durable queue, by a background task. The
//! protocol, its failure cases and why it is safe are in ARCHITECTURE.md ("Identifier
//! ownership").
//!
//! Within this region, writes that claim the same link are serialised by [`LinkLocks`], so a
//! claim is made only for a link that no subject here holds, and a claim given up after a failed
//! write cannot belong to a link another write made live meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use domicile_proto::limits;
use domicile_proto::pb::node::v1 as pb;
use domicile_proto::pb::node::v1::regional_node_client::RegionalNodeClient;
use domicile_runtime::tls::TlsMaterial;
use domicile_types::{ArbiterMap, Link, RegionId};
use hashbrown::HashMap;
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};
use tonic::transport::{Channel, Endpoint};

use crate::config::OwnershipConfig;
use crate::store::{Release, Store, StoreError};

/// Lock stripes: links that share one are serialised together (rarely, and only briefly).
const STRIPES: usize = 1024;
/// Releases sent to one arbiter per call.
const RELEASE_BATCH: usize = 1000;
/// How long the release task waits before trying an unreachable arbiter again.
const RELEASE_RETRY: Duration = Duration::from_secs(2);

/// Why links could not all be claimed. Nothing stays claimed for the write (its granted claims
/// are released) and nothing is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimError {
    /// Another region holds at least one of the links.
    HeldElsewhere,
    /// The arbiter of at least one link could not be asked, or did not answer in time.
    Unreachable(RegionId),
    /// An arbiter uses another map of the deployment's regions: a configuration fault.
    MapMismatch(RegionId),
    Store(String),
}

/// Region-local locks per link (striped), held by a write from its claims until its store write.
pub struct LinkLocks {
    stripes: Vec<Arc<Mutex<()>>>,
}

impl Default for LinkLocks {
    fn default() -> Self {
        Self { stripes: (0..STRIPES).map(|_| Arc::new(Mutex::new(()))).collect() }
    }
}

/// The locks of one write, released on drop.
pub struct LinkGuard {
    _held: Vec<OwnedMutexGuard<()>>,
}

impl LinkLocks {
    /// Takes the stripes of `links`, in stripe order (so two writes never wait on each other in
    /// a circle).
    pub async fn lock(&self, links: &[Link]) -> LinkGuard {
        let mut stripes: Vec<usize> = links
            .iter()
            .map(|l| usize::from(u16::from_be_bytes([l.as_bytes()[0], l.as_bytes()[1]])) % STRIPES)
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut held = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            if let Some(lock) = self.stripes.get(stripe) {
                held.push(Arc::clone(lock).lock_owned().await);
            }
        }
        LinkGuard { _held: held }
    }
}

/// This node's part in identifier ownership: claimant for its own writes, arbiter for the links
/// the map gives its region.
pub struct Ownership<S> {
    region: RegionId,
    map: ArbiterMap,
    store: Arc<S>,
    /// The other regions' nodes (lazy connections).
    peers: HashMap<RegionId, RegionalNodeClient<Channel>>,
    locks: LinkLocks,
    /// Wakes the release task.
    released: Notify,
}

impl<S: Store> Ownership<S> {
    pub fn new(region: RegionId, config: &OwnershipConfig, tls: &TlsMaterial, store: Arc<S>) -> anyhow::Result<Self> {
        let map = ArbiterMap::new(config.regions.iter().map(|r| r.id.clone()))?;
        anyhow::ensure!(map.contains(&region), "the ownership regions must list this node's region");
        let timeout = Duration::from_millis(config.claim_timeout_ms);
        let mut peers = HashMap::new();
        for peer in config.regions.iter().filter(|r| r.id != region) {
            let endpoint = |address: &str| -> anyhow::Result<Endpoint> {
                Ok(Endpoint::from_shared(format!("https://{address}"))?
                    .tls_config(tls.client(&peer.id.node_server_name()))?
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .tcp_nodelay(true))
            };
            // An arbiter region with several replicas is asked at whichever is healthy: claims
            // must not fail because the first listed replica is down.
            let endpoints: Vec<&str> = peer.endpoints().collect();
            let channel = match endpoints.as_slice() {
                [one] => endpoint(one)?.connect_lazy(),
                several => domicile_runtime::replicas::spread(
                    several.iter().map(|a| endpoint(a)).collect::<anyhow::Result<_>>()?,
                ),
            };
            peers.insert(peer.id.clone(), RegionalNodeClient::new(channel));
        }
        Ok(Self { region, map, store, peers, locks: LinkLocks::default(), released: Notify::new() })
    }

    /// Only this region, arbiter of every link (in-process tests and benches).
    pub fn single_region(region: RegionId, store: Arc<S>) -> anyhow::Result<Self> {
        let map = ArbiterMap::new([region.clone()])?;
        Ok(Self { region, map, store, peers: HashMap::new(), locks: LinkLocks::default(), released: Notify::new() })
    }

    pub fn map(&self) -> &ArbiterMap {
        &self.map
    }

    /// See [`LinkLocks::lock`].
    pub async fn lock(&self, links: &[Link]) -> LinkGuard {
        self.locks.lock(links).await
    }

    /// Claims `links` (none of them held by a subject of this region) for this region, each at
    /// its arbiter, all under one new generation. Either every claim is granted and returned, or
    /// none is kept: claims granted before a refusal or a failure are released.
    pub async fn claim(&self, links: &[Link]) -> Result<Vec<Release>, ClaimError> {
        let outcomes = self.claim_each(links).await?;
        let (granted, error) = settle_claims(outcomes.iter().map(|(_, outcome)| outcome));
        match error {
            None => Ok(granted),
            Some(e) => {
                self.abandon(&granted).await;
                Err(e)
            }
        }
    }

    /// Claims `links` for this region, each at its arbiter, all under one new generation, and
    /// says what became of each (grouped by arbiter). Unlike [`Ownership::claim`] it keeps what
    /// was granted whatever happened to the others: for links this region already holds
    /// (`ReassertClaims`), whose claims must stay. Called with the links' locks held.
    pub async fn claim_each(&self, links: &[Link]) -> Result<Vec<(Link, ClaimOutcome)>, ClaimError> {
        if links.is_empty() {
            return Ok(Vec::new());
        }
        let generation = self.store.next_generation().await.map_err(|e| ClaimError::Store(e.to_string()))?;
        let mut by_arbiter: BTreeMap<&RegionId, Vec<Link>> = BTreeMap::new();
        for link in links {
            by_arbiter.entry(self.map.arbiter(link)).or_default().push(*link);
        }
        // A batch of registrations may claim more links of one arbiter than one call carries.
        let asks = by_arbiter
            .into_iter()
            .flat_map(|(arbiter, links)| {
                let chunks: Vec<Vec<Link>> = links.chunks(limits::LINKS.max).map(<[Link]>::to_vec).collect();
                chunks.into_iter().map(move |links| (arbiter, links))
            })
            .map(|(arbiter, links)| async move {
                let outcome = self.ask(arbiter, generation, &links).await;
                (arbiter.clone(), links, outcome)
            });
        let answers = futures_join_all(asks).await;
        let mut outcomes = Vec::with_capacity(links.len());
        for (arbiter, links, outcome) in answers {
            match outcome {
                Ok(holders) => {
                    for (link, holder) in links.iter().zip(holders) {
                        outcomes.push((
                            *link,
                            match holder {
                                None => ClaimOutcome::Granted(Release { link: *link, generation }),
                                Some(region) => ClaimOutcome::HeldBy(region),
                            },
                        ));
                    }
                }
                Err(cause) => {
                    for link in &links {
                        outcomes.push((
                            *link,
                            ClaimOutcome::Unanswered {
                                arbiter: arbiter.clone(),
                                cause: cause.clone(),
                                claim: Release { link: *link, generation },
                            },
                        ));
                    }
                }
            }
        }
        Ok(outcomes)
    }

    /// Asks `arbiter` (possibly this node) to claim `links` for this region.
    async fn ask(
        &self,
        arbiter: &RegionId,
        generation: u64,
        links: &[Link],
    ) -> Result<Vec<Option<RegionId>>, AskError> {
        if arbiter == &self.region {
            return self
                .store
                .claim_links(&self.region, generation, links)
                .await
                .map_err(|e| AskError::Store(e.to_string()));
        }
        let mut peer = self.peers.get(arbiter).cloned().ok_or(AskError::Unreachable)?;
        let request = pb::ClaimLinksRequest {
            map_digest: self.map.digest().to_owned(),
            region: self.region.to_string(),
            generation,
            links: links.iter().map(|l| l.as_bytes().to_vec()).collect(),
        };
        let reply = peer.claim_links(request).await.map_err(|status| {
            if status.code() == tonic::Code::FailedPrecondition && status.message().contains("arbiter map") {
                tracing::error!(region = %self.region, %arbiter, "arbiter uses another map of the deployment's regions");
                AskError::MapMismatch
            } else {
                tracing::warn!(region = %self.region, %arbiter, code = ?status.code(), "claim not answered");
                AskError::Unreachable
            }
        })?;
        let results = reply.into_inner().results;
        if results.len() != links.len() {
            tracing::error!(region = %self.region, %arbiter, "claim answer does not match the request");
            return Err(AskError::Unreachable);
        }
        results
            .into_iter()
            .map(|r| match r.held_by.as_str() {
                "" => Ok(None),
                held_by => RegionId::parse(held_by).map(Some).map_err(|_| AskError::Unreachable),
            })
            .collect()
    }

    /// Queues the release of claims a write did not use (they are sent by the release task).
    /// Called with the links' locks held, for links no subject of this region holds.
    pub async fn abandon(&self, claims: &[Release]) {
        if claims.is_empty() {
            return;
        }
        if let Err(e) = self.store.queue_releases(claims).await {
            // The claims stay with this region (no second owner can appear); the repair
            // command finds claims no subject holds.
            tracing::error!(region = %self.region, error = %e, "cannot queue claim releases");
        }
        self.released.notify_one();
    }

    /// Gives up claims of this region now: queues them (so what cannot be sent yet is sent by
    /// the release task later), then sends them to their arbiters. Returns how many were
    /// answered and how many stay queued. For claims on links no subject of this region holds,
    /// called with their locks held (`ReleaseOrphanClaims`).
    pub async fn release_now(&self, releases: &[Release]) -> Result<(usize, usize), ClaimError> {
        if releases.is_empty() {
            return Ok((0, 0));
        }
        self.store.queue_releases(releases).await?;
        let mut by_arbiter: BTreeMap<&RegionId, Vec<Release>> = BTreeMap::new();
        for release in releases {
            by_arbiter.entry(self.map.arbiter(&release.link)).or_default().push(*release);
        }
        let (mut sent, mut queued) = (0, 0);
        for (arbiter, releases) in by_arbiter {
            for chunk in releases.chunks(RELEASE_BATCH) {
                match self.send_releases(arbiter, chunk).await {
                    Ok(()) => {
                        self.store.releases_done(chunk).await?;
                        sent += chunk.len();
                    }
                    Err(()) => queued += chunk.len(),
                }
            }
        }
        if queued > 0 {
            self.released.notify_one();
        }
        Ok((sent, queued))
    }

    /// Wakes the release task (after a write queued releases in its own transaction).
    pub fn releases_queued(&self) {
        self.released.notify_one();
    }

    /// Sends queued releases until none is left; runs for the node's lifetime.
    pub async fn run_releases(self: Arc<Self>) {
        loop {
            let pending = match self.store.pending_releases(RELEASE_BATCH * 4).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(region = %self.region, error = %e, "cannot read queued claim releases");
                    Vec::new()
                }
            };
            let mut unreachable = false;
            if !pending.is_empty() {
                let mut by_arbiter: BTreeMap<&RegionId, Vec<Release>> = BTreeMap::new();
                for release in pending {
                    by_arbiter.entry(self.map.arbiter(&release.link)).or_default().push(release);
                }
                for (arbiter, releases) in by_arbiter {
                    for chunk in releases.chunks(RELEASE_BATCH) {
                        match self.send_releases(arbiter, chunk).await {
                            Ok(()) => {
                                if let Err(e) = self.store.releases_done(chunk).await {
                                    tracing::error!(region = %self.region, error = %e, "cannot drop sent releases");
                                }
                            }
                            Err(()) => unreachable = true,
                        }
                    }
                }
                if !unreachable {
                    continue;
                }
            }
            let wait = if unreachable { RELEASE_RETRY } else { Duration::from_secs(30) };
            let _ = tokio::time::timeout(wait, self.released.notified()).await;
        }
    }

    async fn send_releases(&self, arbiter: &RegionId, releases: &[Release]) -> Result<(), ()> {
        if arbiter == &self.region {
            return match self.store.release_links(&self.region, releases).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    tracing::error!(region = %self.region, error = %e, "cannot release claims");
                    Err(())
                }
            };
        }
        let mut peer = self.peers.get(arbiter).cloned().ok_or(())?;
        let request = pb::ReleaseLinksRequest {
            map_digest: self.map.digest().to_owned(),
            region: self.region.to_string(),
            releases: releases
                .iter()
                .map(|r| pb::LinkRelease { link: r.link.as_bytes().to_vec(), generation: r.generation })
                .collect(),
        };
        match peer.release_links(request).await {
            Ok(_) => Ok(()),
            Err(status) => {
                tracing::warn!(region = %self.region, %arbiter, code = ?status.code(), "claim releases not answered; retrying later");
                Err(())
            }
        }
    }
}

/// What the outcomes of one write's claims come to: the claims to pass to its store write or,
/// if one was not granted, to give up (an unanswered one may have been granted with the answer
/// lost: a release only ever undoes this generation's claim or an older one), and why the write
/// cannot go ahead. An unreachable arbiter is the most useful thing to report.
pub fn settle_claims<'o>(outcomes: impl IntoIterator<Item = &'o ClaimOutcome>) -> (Vec<Release>, Option<ClaimError>) {
    let mut granted = Vec::new();
    let mut error = None;
    for outcome in outcomes {
        match outcome {
            ClaimOutcome::Granted(claim) => granted.push(*claim),
            ClaimOutcome::HeldBy(_) => error = error.or(Some(ClaimError::HeldElsewhere)),
            ClaimOutcome::Unanswered { arbiter, cause, claim } => {
                granted.push(*claim);
                let e = match cause {
                    AskError::Unreachable => ClaimError::Unreachable(arbiter.clone()),
                    AskError::MapMismatch => ClaimError::MapMismatch(arbiter.clone()),
                    AskError::Store(e) => ClaimError::Store(e.clone()),
                };
                error = match (error, e) {
                    (Some(ClaimError::Unreachable(r)), _) => Some(ClaimError::Unreachable(r)),
                    (_, e) => Some(e),
                };
            }
        }
    }
    (granted, error)
}

/// What became of one link's claim ([`Ownership::claim_each`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Granted: the link is this region's at its arbiter, under this claim.
    Granted(Release),
    /// Another region holds the link.
    HeldBy(RegionId),
    /// The arbiter did not answer (or could not be asked): the claim may have been made.
    Unanswered { arbiter: RegionId, cause: AskError, claim: Release },
}

/// Why an arbiter did not answer a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskError {
    Unreachable,
    /// It uses another map of the deployment's regions.
    MapMismatch,
    Store(String),
}

/// Runs futures concurrently and returns their outputs in order.
async fn futures_join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in set.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

impl From<StoreError> for ClaimError {
    fn from(e: StoreError) -> Self {
        ClaimError::Store(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(first: u8, second: u8) -> Link {
        let mut bytes = [7u8; 16];
        bytes[0] = first;
        bytes[1] = second;
        Link::from_bytes(bytes)
    }

    #[tokio::test]
    async fn one_write_at_a_time_per_link_and_no_circular_wait() {
        let locks = Arc::new(LinkLocks::default());
        let (a, b) = (link(1, 1), link(200, 3));
        let held = locks.lock(&[b, a, a]).await;
        // The same links, named in the other order, wait for the first write.
        let waiting = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move { locks.lock(&[a, b]).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        // Another link is not held up.
        let other = tokio::time::timeout(Duration::from_secs(1), locks.lock(&[link(9, 9)])).await;
        assert!(other.is_ok());
        drop(held);
        assert!(tokio::time::timeout(Duration::from_secs(1), waiting).await.is_ok());
    }
}
