//! `domicile cluster repair-ownership`: finds identifiers held in more than one region, links
//! without a claim at their arbiter (data stored before identifier ownership existed) and claims
//! naming a region that does not hold the link, and with `--apply` resolves them
//! (ARCHITECTURE.md "Identifier ownership", *Repair*; deploy/README.md).
//!
//! It speaks to every region's node as an operator of that region, with a certificate issued
//! from the cluster's PKI, and sees links, subject refs, region names and consent states only:
//! never an identifier.
//!
//! Resolution of a link held in several regions: the region the link's arbiter names is kept if
//! it is one of the holders, else the first holder in sorted order. For every other holder, the
//! strictest consent state wins: per purpose × channel, a withdrawal or denial in force on the
//! removed copy is recorded on the kept subject unless its own state in force is one already,
//! and a restriction of processing is carried over. Then the kept region claims the link (and
//! announces it to gateways again), the others drop it, and every region claims its links that
//! have no recorded claim. Every step is idempotent: a run that stopped half-way is finished by
//! the next one, and a run after a complete one finds nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use domicile_node::NodeConfig;
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as pb;
use domicile_proto::pb::node::v1::regional_node_client::RegionalNodeClient;
use domicile_runtime::identity::{CallerIdentity, Scope};
use domicile_runtime::pki::ClusterPki;
use domicile_runtime::tls::{TlsMaterial, install_crypto_provider};
use domicile_types::{ArbiterMap, ConsentState, Link, RegionId, SubjectId, SubjectRef};
use tonic::transport::{Channel, Endpoint};

/// What consent recorded by the repair names as its source (an evidence token).
pub const SOURCE_SYSTEM: &str = "ownership-repair";
/// Links per ClaimsOf, ReassertClaims or DropLinks call (the nodes' limit).
const CHUNK: usize = 10_000;
/// Deadline of one call to a node.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// Cluster directory: its `pki/` issues the operator certificates (one per region) and its
    /// `config/node-*.toml` name the regions and their nodes' addresses.
    #[arg(long, default_value = ".domicile")]
    dir: PathBuf,
    /// Resolve what is found. Without it, report only and change nothing.
    #[arg(long)]
    apply: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// One region's holding of a link.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Holder {
    pub region: RegionId,
    pub subject_ref: String,
}

/// A link held in more than one region.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Duplicate {
    pub link: String,
    /// Sorted by region.
    pub holders: Vec<Holder>,
    pub arbiter: RegionId,
    /// The region the arbiter's claim names, if any.
    pub claimed_by: Option<RegionId>,
    /// The holder that keeps the link.
    pub keep: RegionId,
}

/// A link held in one region whose arbiter names another (an orphan claim blocking it).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Misclaim {
    pub link: String,
    pub holder: Holder,
    pub arbiter: RegionId,
    pub claimed_by: RegionId,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RegionSurvey {
    pub region: RegionId,
    pub links: u64,
    /// Links the region holds without a recorded claim (it would not release them on erasure).
    pub without_recorded_claim: u64,
    /// Links held only here that their arbiter has no claim for.
    pub unclaimed_at_arbiter: u64,
}

/// A claim on a link no region holds (left by a write that failed after claiming): it would
/// refuse the identifier to every other region.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Orphan {
    pub link: String,
    pub arbiter: RegionId,
    pub claimed_by: RegionId,
}

/// The cluster's state of identifier ownership.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Survey {
    pub regions: Vec<RegionSurvey>,
    pub duplicates: Vec<Duplicate>,
    pub misclaimed: Vec<Misclaim>,
    pub orphaned: Vec<Orphan>,
    /// Claims kept by a region that no longer arbitrates their link (the deployment's regions
    /// changed): never consulted, left alone.
    pub stale_claims: u64,
    /// Per region, the links it alone holds that their arbiter has no claim for (counted in
    /// `regions`).
    #[serde(skip)]
    pub unclaimed: BTreeMap<RegionId, Vec<Link>>,
}

impl Survey {
    /// Nothing to repair.
    pub fn is_clean(&self) -> bool {
        self.duplicates.is_empty()
            && self.misclaimed.is_empty()
            && self.orphaned.is_empty()
            && self.regions.iter().all(|r| r.without_recorded_claim == 0 && r.unclaimed_at_arbiter == 0)
    }
}

/// A restriction recorded on a kept subject because a removed copy had it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsentCarried {
    pub kept: String,
    pub from: String,
    pub purpose: String,
    pub channels: Vec<String>,
    /// `withdrawn` or `denied`.
    pub state: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Dropped {
    pub region: RegionId,
    pub subject_ref: String,
    pub kept_by: RegionId,
    pub links: Vec<String>,
    /// Links the subject still holds; 0: reachable by its subject ref only.
    pub links_left: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Reasserted {
    pub region: RegionId,
    pub candidates: u64,
    pub claimed: u64,
    pub refused: u64,
    pub unanswered: u64,
    pub announced: u64,
}

/// What `--apply` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Actions {
    pub consent_carried: Vec<ConsentCarried>,
    /// Kept subjects restricted because a removed copy was.
    pub restricted: Vec<String>,
    /// Orphan claims given up, per region.
    pub orphan_claims_released: BTreeMap<RegionId, u64>,
    /// The kept regions' claims on their duplicated links (and their announcements).
    pub kept: Vec<Reasserted>,
    pub dropped: Vec<Dropped>,
    /// Every region's claims on links without a recorded claim.
    pub reasserted: Vec<Reasserted>,
    /// Links left as they were, and why.
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub dir: PathBuf,
    pub applied: bool,
    pub before: Survey,
    pub actions: Option<Actions>,
    /// The survey after `--apply`.
    pub after: Option<Survey>,
}

pub async fn run(args: RepairArgs) -> anyhow::Result<()> {
    let cluster = Cluster::open(&args.dir).await?;
    let before = cluster.survey().await?;
    let mut report = Report { dir: cluster.dir.clone(), applied: args.apply, before, actions: None, after: None };
    if args.apply && !report.before.is_clean() {
        report.actions = Some(cluster.resolve(&report.before).await?);
        report.after = Some(cluster.survey().await?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    let last = report.after.as_ref().unwrap_or(&report.before);
    if !last.is_clean() {
        let what = if last.duplicates.is_empty() {
            "identifier ownership is not fully repaired".to_owned()
        } else {
            format!("{} identifier(s) are held in more than one region", last.duplicates.len())
        };
        if args.apply {
            bail!("{what} after the repair (see above); run it again once every region is reachable");
        }
        bail!("{what}: run with --apply to repair");
    }
    Ok(())
}

/// The deployment's nodes, each reached as an operator of its region.
struct Cluster {
    dir: PathBuf,
    map: ArbiterMap,
    nodes: BTreeMap<RegionId, RegionalNodeClient<Channel>>,
}

impl Cluster {
    async fn open(dir: &Path) -> anyhow::Result<Self> {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        let pki_dir = dir.join("pki");
        anyhow::ensure!(
            pki_dir.join("ca.pem").is_file() && pki_dir.join("ca.key").is_file(),
            "{} holds no cluster CA (ca.pem, ca.key): point --dir at the cluster's directory",
            pki_dir.display()
        );
        let endpoints = node_endpoints(&dir.join("config"))?;
        let map = ArbiterMap::new(endpoints.keys().cloned()).context("bad region list")?;
        install_crypto_provider();
        let pki = ClusterPki::open_or_create(&pki_dir)?;
        let mut nodes = BTreeMap::new();
        for (region, endpoint) in &endpoints {
            // What the repair reads and writes: links (admin), consent histories (context),
            // restrictions carried over (capture, rights).
            let scopes = [Scope::Admin, Scope::Capture, Scope::Context, Scope::Rights];
            let caller = CallerIdentity::new(&format!("ownership-repair-{region}"), region.clone(), &scopes)?;
            let tls = TlsMaterial::load(&pki.caller(&caller)?)?;
            let channel = Endpoint::from_shared(format!("https://{endpoint}"))?
                .tls_config(tls.client(&region.node_server_name()))?
                .connect_timeout(Duration::from_secs(5))
                .timeout(CALL_TIMEOUT)
                .connect()
                .await
                .with_context(|| format!("cannot reach the node of {region} at {endpoint}: every region must be up"))?;
            let mut client = RegionalNodeClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
            let info = client.info(pb::InfoRequest {}).await.with_context(|| format!("Info of {region}"))?.into_inner();
            anyhow::ensure!(
                info.region == region.as_str(),
                "the node at {endpoint} serves {}, not {region}",
                info.region
            );
            anyhow::ensure!(
                info.arbiter_map_digest == map.digest(),
                "the node of {region} uses another list of the deployment's regions than {}: fix the nodes' \
                 `ownership.regions` first",
                dir.join("config").display()
            );
            nodes.insert(region.clone(), client);
        }
        Ok(Self { dir, map, nodes })
    }

    fn node(&self, region: &RegionId) -> anyhow::Result<RegionalNodeClient<Channel>> {
        self.nodes.get(region).cloned().with_context(|| format!("no node for {region}"))
    }

    async fn survey(&self) -> anyhow::Result<Survey> {
        let mut holders: HashMap<Link, Vec<Holder>> = HashMap::new();
        let mut regions = Vec::new();
        for (region, node) in &self.nodes {
            let mut node = node.clone();
            let mut stream = node
                .list_links(pb::ListLinksRequest { batch_size: 0 })
                .await
                .with_context(|| format!("ListLinks of {region}"))?
                .into_inner();
            let mut links = 0u64;
            while let Some(batch) = stream.message().await.with_context(|| format!("ListLinks of {region}"))? {
                for entry in batch.entries {
                    let link = Link::from_slice(&entry.link).context("a node sent a malformed link")?;
                    let id = SubjectId::from_slice(&entry.subject_id).context("a node sent a malformed subject id")?;
                    let subject_ref = SubjectRef { region: region.clone(), id }.to_string();
                    holders.entry(link).or_default().push(Holder { region: region.clone(), subject_ref });
                    links += 1;
                }
            }
            let unrecorded = node
                .reassert_claims(pb::ReassertClaimsRequest { dry_run: true, ..Default::default() })
                .await
                .with_context(|| format!("ReassertClaims (dry run) of {region}"))?
                .into_inner();
            regions.push(RegionSurvey {
                region: region.clone(),
                links,
                without_recorded_claim: unrecorded.candidates,
                unclaimed_at_arbiter: 0,
            });
        }
        let (mut claims, stale_claims) = self.claims().await?;
        let mut duplicates = Vec::new();
        let mut misclaimed = Vec::new();
        let mut unclaimed: BTreeMap<RegionId, Vec<Link>> = BTreeMap::new();
        for (link, mut held) in holders {
            held.sort();
            let arbiter = self.map.arbiter(&link).clone();
            let claimed_by = claims.remove(&link);
            if held.len() > 1 {
                let keep = match &claimed_by {
                    Some(region) if held.iter().any(|h| &h.region == region) => region.clone(),
                    _ => held[0].region.clone(),
                };
                duplicates.push(Duplicate { link: link.to_string(), holders: held, arbiter, claimed_by, keep });
                continue;
            }
            let Some(holder) = held.pop() else { continue };
            match claimed_by {
                None => {
                    if let Some(r) = regions.iter_mut().find(|r| r.region == holder.region) {
                        r.unclaimed_at_arbiter += 1;
                    }
                    unclaimed.entry(holder.region).or_default().push(link);
                }
                Some(claimed_by) if claimed_by != holder.region => {
                    misclaimed.push(Misclaim { link: link.to_string(), holder, arbiter, claimed_by });
                }
                Some(_) => {}
            }
        }
        // What is left are claims on links no region holds.
        let mut orphaned: Vec<Orphan> = claims
            .into_iter()
            .map(|(link, claimed_by)| Orphan {
                link: link.to_string(),
                arbiter: self.map.arbiter(&link).clone(),
                claimed_by,
            })
            .collect();
        duplicates.sort_by(|a, b| a.link.cmp(&b.link));
        misclaimed.sort_by(|a, b| a.link.cmp(&b.link));
        orphaned.sort_by(|a, b| a.link.cmp(&b.link));
        Ok(Survey { regions, duplicates, misclaimed, orphaned, stale_claims, unclaimed })
    }

    /// Every claim the arbiters keep (the region each names), and how many claims are kept by a
    /// region that no longer arbitrates their link.
    async fn claims(&self) -> anyhow::Result<(HashMap<Link, RegionId>, u64)> {
        let mut claims = HashMap::new();
        let mut stale = 0;
        for (arbiter, node) in &self.nodes {
            let mut stream = node
                .clone()
                .list_claims(pb::ListClaimsRequest { batch_size: 0 })
                .await
                .with_context(|| format!("ListClaims of {arbiter}"))?
                .into_inner();
            while let Some(batch) = stream.message().await.with_context(|| format!("ListClaims of {arbiter}"))? {
                for entry in batch.entries {
                    let link = Link::from_slice(&entry.link).context("a node sent a malformed link")?;
                    let claim = entry.claim.unwrap_or_default();
                    let region = RegionId::parse(&claim.region).context("an arbiter named a malformed region")?;
                    if self.map.arbiter(&link) != arbiter {
                        stale += 1;
                        continue;
                    }
                    claims.insert(link, region);
                }
            }
        }
        Ok((claims, stale))
    }

    async fn resolve(&self, survey: &Survey) -> anyhow::Result<Actions> {
        let mut actions = Actions::default();
        // 1. The strictest consent state wins: carry restrictions of removed copies over to the
        //    kept subjects before anything is removed.
        let mut histories: HashMap<String, History> = HashMap::new();
        for duplicate in &survey.duplicates {
            let Some(kept) = duplicate.holders.iter().find(|h| h.region == duplicate.keep) else { continue };
            for removed in duplicate.holders.iter().filter(|h| h.region != duplicate.keep) {
                self.carry_consent(kept, removed, &mut histories, &mut actions).await?;
            }
        }
        // 2. Claims naming a region that does not hold the link are given up by that region.
        let mut orphans: BTreeMap<RegionId, Vec<Link>> = BTreeMap::new();
        for duplicate in &survey.duplicates {
            if let Some(claimed_by) = &duplicate.claimed_by
                && !duplicate.holders.iter().any(|h| &h.region == claimed_by)
            {
                orphans.entry(claimed_by.clone()).or_default().push(Link::parse(&duplicate.link)?);
            }
        }
        for misclaim in &survey.misclaimed {
            orphans.entry(misclaim.claimed_by.clone()).or_default().push(Link::parse(&misclaim.link)?);
        }
        for orphan in &survey.orphaned {
            orphans.entry(orphan.claimed_by.clone()).or_default().push(Link::parse(&orphan.link)?);
        }
        for (region, links) in orphans {
            let mut node = self.node(&region)?;
            let mut released = 0;
            for chunk in links.chunks(CHUNK) {
                let request =
                    pb::ReleaseOrphanClaimsRequest { links: chunk.iter().map(|l| l.as_bytes().to_vec()).collect() };
                let reply = node
                    .release_orphan_claims(request)
                    .await
                    .with_context(|| format!("ReleaseOrphanClaims at {region}"))?;
                let reply = reply.into_inner();
                released += reply.released;
                if reply.queued > 0 {
                    actions.skipped.push(format!(
                        "{region}: {} orphan claim release(s) wait for an unreachable arbiter",
                        reply.queued
                    ));
                }
            }
            actions.orphan_claims_released.insert(region, released);
        }
        // 3. The kept region claims each duplicated link (whatever it recorded) and announces it
        //    again, so that gateways name its subject once the other copies are gone.
        let mut kept: BTreeMap<RegionId, Vec<Link>> = BTreeMap::new();
        for duplicate in &survey.duplicates {
            kept.entry(duplicate.keep.clone()).or_default().push(Link::parse(&duplicate.link)?);
        }
        let mut not_kept: BTreeSet<Link> = BTreeSet::new();
        for (region, links) in kept {
            let mut node = self.node(&region)?;
            let mut total = Reasserted::empty(&region);
            for chunk in links.chunks(CHUNK) {
                let request = pb::ReassertClaimsRequest {
                    links: chunk.iter().map(|l| l.as_bytes().to_vec()).collect(),
                    announce: true,
                    ..Default::default()
                };
                let reply =
                    node.reassert_claims(request).await.with_context(|| format!("ReassertClaims at {region}"))?;
                let reply = reply.into_inner();
                total.add(&reply);
                // A link the kept region could not claim stays where it is everywhere: dropping
                // the other copies could leave it to a region that is not the arbiter's choice.
                if reply.unanswered > 0 || reply.refused_total > reply.refused.len() as u64 {
                    not_kept.extend(chunk.iter().copied());
                    actions.skipped.push(format!(
                        "{region}: {} kept link(s) could not be claimed (arbiters not answering: {}); their copies \
                         stay",
                        chunk.len(),
                        reply.unreachable_arbiters.join(", ")
                    ));
                    continue;
                }
                for refused in &reply.refused {
                    let link = Link::from_slice(&refused.link).context("a node sent a malformed link")?;
                    actions.skipped.push(format!(
                        "{link}: kept by {region}, but its arbiter names {}; its copies stay",
                        refused.held_by
                    ));
                    not_kept.insert(link);
                }
            }
            actions.kept.push(total);
        }
        // 4. The other holders drop the link, as a rectification removing it would.
        let mut drops: BTreeMap<(RegionId, String, RegionId), Vec<Link>> = BTreeMap::new();
        for duplicate in &survey.duplicates {
            let link = Link::parse(&duplicate.link)?;
            if not_kept.contains(&link) {
                continue;
            }
            for removed in duplicate.holders.iter().filter(|h| h.region != duplicate.keep) {
                let key = (removed.region.clone(), removed.subject_ref.clone(), duplicate.keep.clone());
                drops.entry(key).or_default().push(link);
            }
        }
        for ((region, subject_ref, kept_by), links) in drops {
            let mut node = self.node(&region)?;
            let mut dropped = Dropped {
                region: region.clone(),
                subject_ref: subject_ref.clone(),
                kept_by: kept_by.clone(),
                links: Vec::new(),
                links_left: 0,
            };
            for chunk in links.chunks(CHUNK) {
                let request = pb::DropLinksRequest {
                    subject: Some(subject_key(&subject_ref)),
                    links: chunk.iter().map(|l| l.as_bytes().to_vec()).collect(),
                    kept_by: kept_by.to_string(),
                };
                let reply = node.drop_links(request).await.with_context(|| format!("DropLinks at {region}"))?;
                let reply = reply.into_inner();
                for link in reply.links_removed {
                    dropped.links.push(Link::from_slice(&link).context("a node sent a malformed link")?.to_string());
                }
                dropped.links_left = reply.links_left;
            }
            actions.dropped.push(dropped);
        }
        // 4b. A consent recorded on a removed copy after step 1 read it (a gateway still routing
        //     there) is carried over too: histories are read again now that no gateway sends
        //     anything to the removed copies any more (once they apply the LINKS_REMOVED events).
        let mut histories: HashMap<String, History> = HashMap::new();
        for duplicate in &survey.duplicates {
            let Some(kept) = duplicate.holders.iter().find(|h| h.region == duplicate.keep) else { continue };
            if not_kept.contains(&Link::parse(&duplicate.link)?) {
                continue;
            }
            for removed in duplicate.holders.iter().filter(|h| h.region != duplicate.keep) {
                self.carry_consent(kept, removed, &mut histories, &mut actions).await?;
            }
        }
        // 5. Every region claims the links it holds that their arbiter has no claim for (data
        //    from before claims, or an arbiter that changed with the deployment's regions), then
        //    those it has no recorded claim for.
        for (region, node) in &self.nodes {
            let mut node = node.clone();
            let mut total = Reasserted::empty(region);
            if let Some(links) = survey.unclaimed.get(region) {
                for chunk in links.chunks(CHUNK) {
                    let request = pb::ReassertClaimsRequest {
                        links: chunk.iter().map(|l| l.as_bytes().to_vec()).collect(),
                        ..Default::default()
                    };
                    let reply =
                        node.reassert_claims(request).await.with_context(|| format!("ReassertClaims at {region}"))?;
                    total.add(&reply.into_inner());
                }
            }
            let reply = node
                .reassert_claims(pb::ReassertClaimsRequest::default())
                .await
                .with_context(|| format!("ReassertClaims at {region}"))?
                .into_inner();
            total.add(&reply);
            actions.reasserted.push(total);
        }
        Ok(actions)
    }

    /// Records on `kept` every withdrawal or denial in force on `removed` that `kept` has not,
    /// and its restriction of processing.
    async fn carry_consent(
        &self,
        kept: &Holder,
        removed: &Holder,
        histories: &mut HashMap<String, History>,
        actions: &mut Actions,
    ) -> anyhow::Result<()> {
        for holder in [kept, removed] {
            if !histories.contains_key(&holder.subject_ref) {
                let history = self.history(holder).await?;
                histories.insert(holder.subject_ref.clone(), history);
            }
        }
        let (Some(kept_history), Some(removed_history)) =
            (histories.get(&kept.subject_ref), histories.get(&removed.subject_ref))
        else {
            return Ok(());
        };
        // (purpose, state) → channels to record.
        let mut carry: BTreeMap<(String, ConsentState), Vec<String>> = BTreeMap::new();
        for ((purpose, channel), state) in removed_history.in_force() {
            let restrictive = !matches!(state, ConsentState::Granted);
            let kept_state = kept_history.in_force_at(&purpose, &channel);
            if restrictive && matches!(kept_state, None | Some(ConsentState::Granted)) {
                carry.entry((purpose, state)).or_default().push(channel);
            }
        }
        let restrict = removed_history.restricted && !kept_history.restricted;
        let mut node = self.node(&kept.region)?;
        for ((purpose, state), channels) in carry {
            let action = match state {
                ConsentState::Denied => common::ConsentAction::Deny,
                _ => common::ConsentAction::Withdraw,
            };
            let request = pb::RecordConsentRequest {
                subject: Some(subject_key(&kept.subject_ref)),
                purpose: purpose.clone(),
                channels: channels.clone(),
                action: action as i32,
                evidence: Some(common::Evidence { source_system: SOURCE_SYSTEM.to_owned(), ..Default::default() }),
                ..Default::default()
            };
            node.record_consent(request).await.with_context(|| format!("RecordConsent at {}", kept.region))?;
            if let Some(history) = histories.get_mut(&kept.subject_ref) {
                for channel in &channels {
                    history.carried.insert((purpose.clone(), channel.clone()), state);
                }
            }
            actions.consent_carried.push(ConsentCarried {
                kept: kept.subject_ref.clone(),
                from: removed.subject_ref.clone(),
                purpose,
                channels,
                state: state.to_string(),
            });
        }
        if restrict {
            let request = pb::RestrictRequest {
                subject: Some(subject_key(&kept.subject_ref)),
                restricted: true,
                ..Default::default()
            };
            node.restrict(request).await.with_context(|| format!("Restrict at {}", kept.region))?;
            if let Some(history) = histories.get_mut(&kept.subject_ref) {
                history.restricted = true;
            }
            actions.restricted.push(kept.subject_ref.clone());
        }
        Ok(())
    }

    async fn history(&self, holder: &Holder) -> anyhow::Result<History> {
        let reply = self
            .node(&holder.region)?
            .consent_history(pb::ConsentHistoryRequest {
                subject: Some(subject_key(&holder.subject_ref)),
                ..Default::default()
            })
            .await
            .with_context(|| format!("ConsentHistory at {}", holder.region))?
            .into_inner();
        History::of(&reply)
    }
}

impl Reasserted {
    fn empty(region: &RegionId) -> Self {
        Self { region: region.clone(), candidates: 0, claimed: 0, refused: 0, unanswered: 0, announced: 0 }
    }

    fn add(&mut self, reply: &pb::ReassertClaimsResponse) {
        self.candidates += reply.candidates;
        self.claimed += reply.claimed;
        self.refused += reply.refused_total;
        self.unanswered += reply.unanswered;
        self.announced += reply.announced;
    }
}

fn subject_key(subject_ref: &str) -> common::SubjectKey {
    common::SubjectKey { key: Some(common::subject_key::Key::SubjectRef(subject_ref.to_owned())) }
}

/// A subject's consent in force per purpose × channel, as its node derives it (the node answers
/// it with the history: `in_force`), and what this repair has recorded on it since.
#[derive(Debug, Default)]
struct History {
    /// (purpose, channel) → state in force.
    cells: BTreeMap<(String, String), ConsentState>,
    /// Recorded by this repair (newer than anything in the ledger read).
    carried: BTreeMap<(String, String), ConsentState>,
    restricted: bool,
}

impl History {
    fn of(reply: &pb::ConsentHistoryResponse) -> anyhow::Result<Self> {
        let mut history = History { restricted: reply.restricted, ..History::default() };
        for cell in &reply.in_force {
            let state = ConsentState::parse(&cell.state).context("a node sent an unknown consent state")?;
            history.cells.insert((cell.purpose.clone(), cell.channel.clone()), state);
        }
        Ok(history)
    }

    /// Every cell's state in force.
    fn in_force(&self) -> Vec<((String, String), ConsentState)> {
        let mut cells = self.cells.clone();
        cells.extend(self.carried.iter().map(|(cell, state)| (cell.clone(), *state)));
        cells.into_iter().collect()
    }

    fn in_force_at(&self, purpose: &str, channel: &str) -> Option<ConsentState> {
        let cell = (purpose.to_owned(), channel.to_owned());
        self.carried.get(&cell).copied().or_else(|| self.cells.get(&cell).copied())
    }
}

/// Every region's node address, from the node configurations in `config_dir`: each lists the
/// whole deployment (`ownership.regions`), and they must agree.
fn node_endpoints(config_dir: &Path) -> anyhow::Result<BTreeMap<RegionId, String>> {
    let entries = std::fs::read_dir(config_dir).with_context(|| format!("cannot read {}", config_dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with("node-") && name.ends_with(".toml")
        })
        .collect();
    paths.sort();
    let mut endpoints: Option<BTreeMap<RegionId, String>> = None;
    for path in &paths {
        let config = NodeConfig::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let listed: BTreeMap<RegionId, String> =
            config.ownership.regions.iter().map(|r| (r.id.clone(), r.endpoint.clone())).collect();
        match &endpoints {
            None => endpoints = Some(listed),
            Some(first) if first.keys().eq(listed.keys()) => {}
            Some(_) => bail!("{} lists other regions than the other node configurations", path.display()),
        }
    }
    endpoints.with_context(|| format!("no node configuration (node-*.toml) in {}", config_dir.display()))
}

/// The report as text. Links and subject refs only.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Identifier ownership in {}", report.dir.display());
    survey_text(&mut out, &report.before);
    match (&report.actions, &report.after) {
        (Some(actions), Some(after)) => {
            actions_text(&mut out, actions);
            let _ = writeln!(out, "\nAfter the repair:");
            survey_text(&mut out, after);
        }
        _ if report.before.is_clean() => {}
        _ if report.applied => {}
        _ => {
            let _ = writeln!(out, "\nReport only: nothing was changed. Run again with --apply to repair.");
        }
    }
    out
}

fn survey_text(out: &mut String, survey: &Survey) {
    let _ = writeln!(out);
    let _ =
        writeln!(out, "  {:<14} {:>8} {:>22} {:>22}", "REGION", "LINKS", "NO RECORDED CLAIM", "UNCLAIMED AT ARBITER");
    for region in &survey.regions {
        let _ = writeln!(
            out,
            "  {:<14} {:>8} {:>22} {:>22}",
            region.region.as_str(),
            region.links,
            region.without_recorded_claim,
            region.unclaimed_at_arbiter
        );
    }
    let _ = writeln!(out);
    if survey.duplicates.is_empty() {
        let _ = writeln!(out, "No identifier is held in more than one region.");
    } else {
        let _ = writeln!(out, "Held in more than one region: {}", survey.duplicates.len());
        for d in &survey.duplicates {
            let holders: Vec<String> = d.holders.iter().map(|h| h.subject_ref.clone()).collect();
            let claim = d.claimed_by.as_ref().map_or("no claim".to_owned(), |r| format!("claim: {r}"));
            let _ = writeln!(out, "  link {}  held by {}", d.link, holders.join(", "));
            let _ = writeln!(out, "    arbiter {} ({claim}) -> keep {}", d.arbiter, d.keep);
        }
    }
    if !survey.misclaimed.is_empty() {
        let _ = writeln!(out, "Claimed for a region that does not hold the link: {}", survey.misclaimed.len());
        for m in &survey.misclaimed {
            let _ = writeln!(
                out,
                "  link {}  held by {}, arbiter {} names {}",
                m.link, m.holder.subject_ref, m.arbiter, m.claimed_by
            );
        }
    }
    if !survey.orphaned.is_empty() {
        let _ = writeln!(out, "Claimed for a region although no region holds the link: {}", survey.orphaned.len());
        for o in &survey.orphaned {
            let _ = writeln!(out, "  link {}  arbiter {} names {}", o.link, o.arbiter, o.claimed_by);
        }
    }
    if survey.stale_claims > 0 {
        let _ = writeln!(
            out,
            "{} claim(s) kept by a region that no longer arbitrates their link (regions changed): ignored",
            survey.stale_claims
        );
    }
    if survey.is_clean() {
        let _ = writeln!(out, "Every link is held by one region and claimed for it: nothing to repair.");
    }
}

fn actions_text(out: &mut String, actions: &Actions) {
    let _ = writeln!(out, "\nRepaired:");
    for c in &actions.consent_carried {
        let _ = writeln!(
            out,
            "  recorded {} {} [{}] on {} (in force on {})",
            c.state,
            c.purpose,
            c.channels.join(","),
            c.kept,
            c.from
        );
    }
    for subject in &actions.restricted {
        let _ = writeln!(out, "  restricted processing of {subject} (a removed copy was restricted)");
    }
    for (region, n) in &actions.orphan_claims_released {
        let _ = writeln!(out, "  {region}: released {n} claim(s) on links it does not hold");
    }
    for k in &actions.kept {
        let _ = writeln!(out, "  {}: claimed {} kept link(s), announced to gateways", k.region, k.claimed);
    }
    for d in &actions.dropped {
        let left = if d.links_left == 0 { " (it holds no link now)" } else { "" };
        let _ = writeln!(
            out,
            "  {}: dropped {} link(s) from {} (kept by {}){left}",
            d.region,
            d.links.len(),
            d.subject_ref,
            d.kept_by
        );
    }
    for r in &actions.reasserted {
        let _ = writeln!(
            out,
            "  {}: claimed {} of {} link(s) without a recorded claim ({} refused, {} unanswered)",
            r.region, r.claimed, r.candidates, r.refused, r.unanswered
        );
    }
    for s in &actions.skipped {
        let _ = writeln!(out, "  not done: {s}");
    }
}
