//! `domicile cluster repair-ownership` on real processes: a cluster holding identifiers twice
//! (as the concurrent-registration bug left them: one copy with the arbiter's claim, another with
//! a claim the arbiter never granted; and a pair from before claims existed), links without any
//! claim (pre-ownership data) or without one at their arbiter, and orphan claims is reported,
//! then repaired so that every identifier has one owner, the strictest consent state of any copy
//! wins, the arbiters' claims name the holders, gateways follow, and a second run finds nothing.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::node::v1 as node;
use domicile_cluster_tests::{Cluster as _, TestCluster, eventually, identifier, node_ref, region, select_email};
use domicile_node::store::{Evidence, NewConsent, Release, RightsRequestRecord, SledStore, Store};
use domicile_types::{
    ArbiterMap, Channel, ConsentState, IdentifierKind, Jurisdiction, Link, LinkKey, NormalizedIdentifier, Purpose,
    RegionId, SubjectId, SubjectRef,
};

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const REGIONS: [&str; 3] = ["eu-central", "us-east", "sa-east"];
const ALLOW: i32 = common::Effect::Allow as i32;
const DENY: i32 = common::Effect::Deny as i32;

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// `domicile cluster repair-ownership --dir <dir> <args>` as a child process.
async fn repair(dir: &Path, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(BIN)
        .args(["cluster", "repair-ownership", "--dir"])
        .arg(dir)
        .args(args)
        .output()
        .await
        .expect("repair-ownership runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Every link each region's node holds, and the subject holding it.
async fn links_by_region(cluster: &TestCluster) -> BTreeMap<Link, Vec<(RegionId, SubjectId)>> {
    let mut all: BTreeMap<Link, Vec<(RegionId, SubjectId)>> = BTreeMap::new();
    for name in REGIONS {
        let mut client = cluster.node(&region(name)).await.unwrap();
        let mut stream = client.list_links(node::ListLinksRequest { batch_size: 0 }).await.unwrap().into_inner();
        while let Some(batch) = stream.message().await.unwrap() {
            for entry in batch.entries {
                let link = Link::from_slice(&entry.link).unwrap();
                all.entry(link).or_default().push((region(name), SubjectId::from_slice(&entry.subject_id).unwrap()));
            }
        }
    }
    all
}

/// The region the arbiter of `link` names as its holder, if any.
async fn claim_of(cluster: &TestCluster, map: &ArbiterMap, link: &Link) -> Option<String> {
    let mut arbiter = cluster.node(map.arbiter(link)).await.unwrap();
    let reply = arbiter.claims_of(node::ClaimsOfRequest { links: vec![link.as_bytes().to_vec()] }).await.unwrap();
    Some(reply.into_inner().claims.remove(0).region).filter(|r| !r.is_empty())
}

async fn node_decision(cluster: &TestCluster, subject: &SubjectRef, purpose: &str, channel: &str) -> common::Decision {
    let mut client = cluster.node(&subject.region).await.unwrap();
    let request = node::DecideRequest {
        subject: node_ref(&subject.to_string()),
        purpose: purpose.into(),
        channel: channel.into(),
        at: None,
        ..Default::default()
    };
    client.decide(request).await.unwrap().into_inner().decision.expect("a decision")
}

fn email(value: &str) -> NormalizedIdentifier {
    NormalizedIdentifier::normalize(IdentifierKind::Email, value).unwrap()
}

fn consent(state: ConsentState, purpose: Purpose, channel: Channel, at: i64) -> NewConsent {
    NewConsent {
        purpose,
        channels: vec![channel],
        state,
        captured_at: at,
        recorded_at: at,
        counted_at_ms: at * 1000,
        expires_at: None,
        evidence: Evidence::default(),
    }
}

/// Stores a subject holding `identifiers` straight into a stopped node's data directory, with a
/// claim no arbiter granted (as the duplicate-registration bug left them).
async fn store_subject(
    store: &SledStore,
    jurisdiction: &str,
    identifiers: &[(NormalizedIdentifier, Link)],
) -> SubjectId {
    let fresh = SubjectId::from_bytes(domicile_runtime::process::random_bytes::<16>().unwrap());
    let claims: Vec<Release> = identifiers.iter().map(|(_, link)| Release { link: *link, generation: 1 }).collect();
    let jurisdiction = Jurisdiction::parse(jurisdiction).unwrap();
    store.register(&jurisdiction, identifiers, fresh, now(), &claims, None).await.unwrap().subject
}

/// Forgets that this region claimed `links` (`held`), as in a store written before claims
/// existed; the node must be stopped.
fn forget_held(data_dir: &Path, links: &[Link]) {
    // A stopped store's flusher thread lets go of sled's lock shortly after the store is gone
    // (as `SledStore::open` waits for too): tried again for up to 2 s.
    let path = data_dir.join("db");
    let mut tries = 0;
    let db = loop {
        match domicile_node::store::sled_config(&path).unwrap().open() {
            Ok(db) => break db,
            Err(e) if tries < 40 && e.to_string().contains("could not acquire lock") => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("cannot open the stopped node's sled files: {e}"),
        }
    };
    let held = db.open_tree("held").unwrap();
    for link in links {
        held.remove(link.as_bytes()).unwrap();
    }
    db.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_held_twice_are_reported_then_resolved_with_the_strictest_consent_and_claimed_once() {
    let mut cluster = TestCluster::start(BIN, &REGIONS).await.expect("cluster starts");
    let (eu, us, sa) = (region("eu-central"), region("us-east"), region("sa-east"));
    let map = ArbiterMap::new([eu.clone(), us.clone(), sa.clone()]).unwrap();
    let link_key: LinkKey = domicile_runtime::process::read_link_key(&cluster.dir().join("pki/link.key")).unwrap();
    let mut gateway = cluster.gateway().await.unwrap();

    // Anna registers in eu-central as usual (its claim is granted at the arbiter) and grants
    // marketing calls (opt-in): allowed.
    let anna = email("anna.twice@example.org");
    let anna_link = link_key.link(&anna);
    let registered = gateway
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", anna.expose_value())],
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let anna_eu = SubjectRef::parse(&registered.subject_ref).unwrap();
    gateway
        .record_consent(gw::RecordConsentRequest {
            subject: select_email(anna.expose_value()),
            purpose: "marketing".into(),
            channels: vec!["voice".into()],
            action: common::ConsentAction::Grant as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(node_decision(&cluster, &anna_eu, "marketing", "voice").await.effect, ALLOW);

    // Bruno and Carla were registered before identifier ownership existed.
    let bruno = email("bruno.old@example.com");
    let bruno_link = link_key.link(&bruno);
    // Carla's link is arbitrated by us-east, whose claims table names eu-central for it: an
    // orphan claim (left by a write that failed after claiming), which blocks her own region.
    let carla = (0..)
        .map(|i| email(&format!("carla.old{i}@example.com")))
        .find(|c| map.arbiter(&link_key.link(c)) == &us)
        .unwrap();
    let carla_link = link_key.link(&carla);
    // A claim for sa-east on a link no region holds (an orphan), also arbitrated by us-east.
    let ghost =
        (0..).map(|i| link_key.link(&email(&format!("ghost{i}@example.com")))).find(|l| map.arbiter(l) == &us).unwrap();
    // Emil's sa-east copy records a claim its arbiter does not have (as after the deployment's
    // regions changed and his link's arbiter with them).
    let emil = email("emil.moved@example.com");
    let emil_link = link_key.link(&emil);
    // Dora's e-mail ended up in sa-east and us-east, both before claims existed; the us-east
    // copy is restricted and denies marketing e-mail.
    let dora = email("dora.twice@example.com");
    let dora_link = link_key.link(&dora);

    // The bug's copy of Anna in us-east, withdrawn from marketing calls, with a claim the
    // arbiter never granted; Bruno and Dora's us-east copy from before claims.
    cluster.cluster.stop_node(&us).await.unwrap();
    let us_dir = cluster.cluster.node_data_dir(&us);
    let (anna_us, dora_us) = {
        let store = SledStore::open(&us_dir, &us).unwrap();
        let anna_us = store_subject(&store, "US", &[(anna.clone(), anna_link)]).await;
        let later = now() + 1;
        store
            .append_consent(&anna_us, consent(ConsentState::Withdrawn, Purpose::Marketing, Channel::Voice, later), None)
            .await
            .unwrap();
        store_subject(&store, "US", &[(bruno.clone(), bruno_link)]).await;
        let dora_us = store_subject(&store, "US", &[(dora.clone(), dora_link)]).await;
        store
            .append_consent(&dora_us, consent(ConsentState::Denied, Purpose::Marketing, Channel::Email, now()), None)
            .await
            .unwrap();
        let rights = RightsRequestRecord {
            request_id: "0".repeat(32),
            kind: "restriction".into(),
            received_at: now(),
            deadline_at: Some(now() + 86_400),
            status: "completed".into(),
            deadline_basis: "test".into(),
            completed_at: Some(now()),
            ..Default::default()
        };
        store.set_restricted(&dora_us, true, &rights, None).await.unwrap();
        assert_eq!(store.claim_links(&eu, 1, &[carla_link]).await.unwrap(), vec![None]);
        assert_eq!(store.claim_links(&sa, 1, &[ghost]).await.unwrap(), vec![None]);
        store.flush().await.unwrap();
        (anna_us, dora_us)
    };
    forget_held(&us_dir, &[bruno_link, dora_link]);
    cluster.cluster.restart_node(&us).await.unwrap();

    cluster.cluster.stop_node(&sa).await.unwrap();
    let sa_dir = cluster.cluster.node_data_dir(&sa);
    let dora_sa = {
        let store = SledStore::open(&sa_dir, &sa).unwrap();
        store_subject(&store, "BR", &[(carla.clone(), carla_link)]).await;
        store_subject(&store, "BR", &[(emil.clone(), emil_link)]).await;
        let dora_sa = store_subject(&store, "BR", &[(dora.clone(), dora_link)]).await;
        store
            .append_consent(&dora_sa, consent(ConsentState::Granted, Purpose::Marketing, Channel::Email, now()), None)
            .await
            .unwrap();
        store.flush().await.unwrap();
        dora_sa
    };
    forget_held(&sa_dir, &[carla_link, dora_link]);
    cluster.cluster.restart_node(&sa).await.unwrap();
    let anna_us = SubjectRef { region: us.clone(), id: anna_us };
    let dora_us = SubjectRef { region: us.clone(), id: dora_us };
    let dora_sa = SubjectRef { region: sa.clone(), id: dora_sa };
    assert_eq!(node_decision(&cluster, &anna_us, "marketing", "voice").await.effect, DENY);

    // Report only: both duplicates named (links and subject refs, never an identifier), nothing
    // changed, exit code non-zero.
    let report = repair(cluster.dir(), &["--json"]).await;
    assert_ne!(report.code, Some(0), "{}\n{}", report.stdout, report.stderr);
    for secret in [&anna, &bruno, &carla, &dora] {
        assert!(!report.stdout.contains(secret.expose_value()) && !report.stderr.contains(secret.expose_value()));
    }
    let json = report.json();
    let duplicates = json["before"]["duplicates"].as_array().unwrap();
    let by_link: BTreeMap<String, &serde_json::Value> =
        duplicates.iter().map(|d| (d["link"].as_str().unwrap().to_owned(), d)).collect();
    assert_eq!(by_link.len(), 2, "{}", report.stdout);
    let anna_dup = by_link[&anna_link.to_string()];
    assert_eq!(anna_dup["claimed_by"], "eu-central", "the arbiter names the region whose claim it granted");
    assert_eq!(anna_dup["keep"], "eu-central");
    let holders: Vec<&str> =
        anna_dup["holders"].as_array().unwrap().iter().map(|h| h["subject_ref"].as_str().unwrap()).collect();
    assert_eq!(holders, [anna_eu.to_string(), anna_us.to_string()]);
    let dora_dup = by_link[&dora_link.to_string()];
    assert_eq!(dora_dup["claimed_by"], serde_json::Value::Null);
    assert_eq!(dora_dup["keep"], "sa-east", "no claim: the first region in sorted order");
    let holders: Vec<&str> =
        dora_dup["holders"].as_array().unwrap().iter().map(|h| h["subject_ref"].as_str().unwrap()).collect();
    assert_eq!(holders, [dora_sa.to_string(), dora_us.to_string()]);
    let unrecorded: u64 = json["before"]["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["without_recorded_claim"].as_u64().unwrap())
        .sum();
    assert_eq!(unrecorded, 4, "Bruno, Carla and both copies of Dora");
    let unclaimed: u64 =
        json["before"]["regions"].as_array().unwrap().iter().map(|r| r["unclaimed_at_arbiter"].as_u64().unwrap()).sum();
    assert_eq!(unclaimed, 2, "Bruno and Emil (Carla's arbiter names eu-central; Dora is a duplicate)");
    let orphaned = &json["before"]["orphaned"];
    assert_eq!(
        orphaned,
        &serde_json::json!([{"link": ghost.to_string(), "arbiter": "us-east", "claimed_by": "sa-east"}])
    );
    let misclaimed = &json["before"]["misclaimed"];
    assert_eq!(misclaimed.as_array().unwrap().len(), 1, "{}", report.stdout);
    assert_eq!(
        (&misclaimed[0]["link"], &misclaimed[0]["claimed_by"]),
        (&serde_json::json!(carla_link.to_string()), &serde_json::json!("eu-central"))
    );
    assert_eq!(links_by_region(&cluster).await[&anna_link].len(), 2, "a report changes nothing");
    let text = repair(cluster.dir(), &[]).await;
    assert_ne!(text.code, Some(0));
    assert!(
        text.stdout.contains(&anna_link.to_string()) && text.stdout.contains(&anna_us.to_string()),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("--apply"), "{}", text.stdout);

    // Repair.
    let applied = repair(cluster.dir(), &["--apply", "--json"]).await;
    assert_eq!(applied.code, Some(0), "{}\n{}", applied.stdout, applied.stderr);
    let json = applied.json();
    assert_eq!(json["after"]["duplicates"].as_array().unwrap().len(), 0, "{}", applied.stdout);
    let carried = json["actions"]["consent_carried"].as_array().unwrap();
    assert!(
        carried.iter().any(|c| c["kept"] == anna_eu.to_string()
            && c["from"] == anna_us.to_string()
            && c["state"] == "withdrawn"
            && c["purpose"] == "marketing"),
        "{}",
        applied.stdout
    );
    assert!(carried.iter().any(|c| c["kept"] == dora_sa.to_string() && c["state"] == "denied"), "{}", applied.stdout);
    assert_eq!(json["actions"]["restricted"], serde_json::json!([dora_sa.to_string()]));
    assert_eq!(json["actions"]["orphan_claims_released"], serde_json::json!({"eu-central": 1, "sa-east": 1}));

    // Every link is held by exactly one region, the kept one.
    let links = links_by_region(&cluster).await;
    for (link, holders) in &links {
        assert_eq!(holders.len(), 1, "{link} is held by {holders:?}");
    }
    assert_eq!(links[&anna_link], vec![(eu.clone(), anna_eu.id)]);
    assert_eq!(links[&dora_link], vec![(sa.clone(), dora_sa.id)]);

    // The withdrawal that only the removed copy had now decides for the kept subject; no copy of
    // Anna allows marketing calls anywhere, nor through the gateway.
    let decision = node_decision(&cluster, &anna_eu, "marketing", "voice").await;
    assert_eq!(decision.effect, DENY, "{decision:?}");
    assert_eq!(node_decision(&cluster, &anna_us, "marketing", "voice").await.effect, DENY);
    let through_gateway = eventually(Duration::from_secs(10), || {
        let mut gateway = gateway.clone();
        let anna = anna.expose_value().to_owned();
        let anna_eu = anna_eu.to_string();
        async move {
            let resolved = gateway
                .resolve(gw::ResolveRequest { identifier: Some(identifier("email", &anna)) })
                .await
                .ok()?
                .into_inner();
            (resolved.subject_ref == anna_eu).then_some(())?;
            let decision = gateway
                .decide(gw::DecideRequest {
                    subject: select_email(&anna),
                    purpose: "marketing".into(),
                    channel: "voice".into(),
                    at: None,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .decision?;
            Some(decision.effect)
        }
    })
    .await;
    assert_eq!(through_gateway, Some(DENY), "the gateway names the kept subject and it denies");
    // Dora's kept copy carries the removed copy's restriction and denial.
    let dora_decision = node_decision(&cluster, &dora_sa, "marketing", "email").await;
    assert_eq!(dora_decision.effect, DENY);
    assert!(dora_decision.reasons.iter().any(|r| r.ends_with(".restricted")), "{dora_decision:?}");

    // The arbiters' claims name the kept regions; links from before claims are claimed for
    // their holders.
    assert_eq!(claim_of(&cluster, &map, &anna_link).await.as_deref(), Some("eu-central"));
    assert_eq!(claim_of(&cluster, &map, &dora_link).await.as_deref(), Some("sa-east"));
    assert_eq!(claim_of(&cluster, &map, &bruno_link).await.as_deref(), Some("us-east"));
    assert_eq!(claim_of(&cluster, &map, &carla_link).await.as_deref(), Some("sa-east"));
    assert_eq!(claim_of(&cluster, &map, &emil_link).await.as_deref(), Some("sa-east"));
    assert_eq!(claim_of(&cluster, &map, &ghost).await, None, "the orphan claim is given up");

    // The removal is audited in the removing region as a repair, not as the person's request.
    let audit = std::fs::read_to_string(us_dir.join("audit.log")).unwrap();
    assert_eq!(
        audit.lines().filter(|l| l.contains(r#""kind":"ownership_repair""#)).count(),
        2,
        "Anna's and Dora's copies"
    );

    // A second run finds nothing.
    let again = repair(cluster.dir(), &["--apply", "--json"]).await;
    assert_eq!(again.code, Some(0), "{}\n{}", again.stdout, again.stderr);
    let json = again.json();
    assert_eq!(json["before"]["duplicates"].as_array().unwrap().len(), 0);
    assert!(json["before"]["misclaimed"].as_array().unwrap().is_empty());
    assert!(json["before"]["orphaned"].as_array().unwrap().is_empty());
    assert!(json["actions"].is_null(), "nothing to do: {}", again.stdout);
    for r in json["before"]["regions"].as_array().unwrap() {
        assert_eq!(
            (r["without_recorded_claim"].as_u64(), r["unclaimed_at_arbiter"].as_u64()),
            (Some(0), Some(0)),
            "{r}"
        );
    }
    let text = repair(cluster.dir(), &[]).await;
    assert_eq!(text.code, Some(0));
    assert!(text.stdout.contains("nothing to repair"), "{}", text.stdout);
}
