//! `RegisterBatch` (what `domicile import` registers new subjects with), on real processes:
//! each item answered as `Register` would answer it, and invariant 9 (one identifier, one
//! subject, one home) kept when the same identifiers arrive in batches for three regions at once
//! through three gateways.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_cluster_tests::pb::node::v1 as node_pb;
use domicile_cluster_tests::{Cluster as _, TestCluster, eventually, identifier, region};
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const REGIONS: [&str; 3] = ["eu-central", "us-east", "sa-east"];
/// Jurisdictions whose home is each region, in the order of [`REGIONS`].
const JURISDICTIONS: [&str; 3] = ["DE", "US", "BR"];

fn item(id: u64, jurisdiction: &str, identifiers: &[(&str, &str)]) -> gw::RegisterBatchItem {
    gw::RegisterBatchItem {
        id,
        jurisdiction: jurisdiction.into(),
        identifiers: identifiers.iter().map(|(kind, value)| identifier(kind, value)).collect(),
    }
}

fn registered(outcome: &gw::RegisterBatchOutcome) -> Option<&gw::RegisterResponse> {
    match &outcome.result {
        Some(gw::register_batch_outcome::Result::Registered(r)) => Some(r),
        _ => None,
    }
}

fn refused(outcome: &gw::RegisterBatchOutcome) -> Option<(Code, &str)> {
    match &outcome.result {
        Some(gw::register_batch_outcome::Result::Refused(e)) => Some((Code::from(e.code), e.message.as_str())),
        _ => None,
    }
}

async fn batch(
    gateway: &mut DomicileClient<Channel>,
    items: Vec<gw::RegisterBatchItem>,
) -> Vec<gw::RegisterBatchOutcome> {
    let ids: Vec<u64> = items.iter().map(|i| i.id).collect();
    let outcomes = gateway.register_batch(gw::RegisterBatchRequest { items }).await.unwrap().into_inner().outcomes;
    assert_eq!(outcomes.iter().map(|o| o.id).collect::<Vec<_>>(), ids, "one outcome per item, in order");
    outcomes
}

/// The outcomes of `items()` sent again until every item is registered (up to 20 s), or `None`.
async fn all_registered(
    gateway: &DomicileClient<Channel>,
    items: impl Fn() -> Vec<gw::RegisterBatchItem>,
) -> Option<Vec<gw::RegisterBatchOutcome>> {
    eventually(Duration::from_secs(20), || {
        let (mut gateway, items) = (gateway.clone(), items());
        async move {
            let outcomes = gateway.register_batch(gw::RegisterBatchRequest { items }).await.ok()?.into_inner().outcomes;
            outcomes.iter().all(|o| registered(o).is_some()).then_some(outcomes)
        }
    })
    .await
}

/// Every link each region's node holds, with the regions holding it.
async fn census(cluster: &TestCluster) -> BTreeMap<Vec<u8>, Vec<&'static str>> {
    let mut holders: BTreeMap<Vec<u8>, Vec<&'static str>> = BTreeMap::new();
    for id in REGIONS {
        let mut node = cluster.node(&region(id)).await.unwrap();
        let mut batches = node.list_links(node_pb::ListLinksRequest { batch_size: 0 }).await.unwrap().into_inner();
        while let Some(batch) = batches.message().await.unwrap() {
            for entry in batch.entries {
                holders.entry(entry.link).or_default().push(id);
            }
        }
    }
    holders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_item_is_answered_as_register_would_and_a_batch_sent_again_changes_nothing() {
    let cluster = TestCluster::start_on_env_store(BIN, &REGIONS).await.expect("cluster starts");
    let mut gateway = cluster.gateway().await.unwrap();
    // Before the batch: a US subject (held in us-east) and a DE subject.
    let us = gateway
        .register(gw::RegisterRequest {
            jurisdiction: "US".into(),
            identifiers: vec![identifier("email", "held.in.us@example.org")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let de = gateway
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", "known@example.org")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let items = vec![
        item(10, "DE", &[("email", "new.de@example.org")]),
        item(11, "BR", &[("email", "new.br@example.org"), ("phone", "+5511912345678")]),
        // Known: found, not created; with a new identifier, which the subject gains.
        item(12, "DE", &[("email", "known@example.org")]),
        item(13, "DE", &[("email", "known@example.org"), ("phone", "+4915112345678")]),
        // Two items of one new person: the second finds what the first stored.
        item(14, "US", &[("email", "twice@example.org")]),
        item(15, "US", &[("email", "twice@example.org"), ("phone", "+12025550143")]),
        // Refused, each alone.
        item(16, "DE", &[("email", "not an address")]),
        item(17, "NO", &[("email", "nowhere@example.org")]),
        item(18, "DE", &[("email", "held.in.us@example.org")]),
        item(19, "DE", &[]),
    ];
    let first = batch(&mut gateway, items.clone()).await;
    let by_id: BTreeMap<u64, &gw::RegisterBatchOutcome> = first.iter().map(|o| (o.id, o)).collect();
    let ok = |id: u64| registered(by_id[&id]).unwrap_or_else(|| panic!("item {id}: {:?}", by_id[&id]));
    assert!(ok(10).created && ok(10).home_region == "eu-central" && ok(10).subject_ref.starts_with("eu-central/"));
    assert!(ok(11).created && ok(11).home_region == "sa-east" && ok(11).links.len() == 2);
    assert_eq!((ok(12).subject_ref.as_str(), ok(12).created), (de.subject_ref.as_str(), false));
    assert_eq!((ok(13).subject_ref.as_str(), ok(13).created), (de.subject_ref.as_str(), false));
    assert!(ok(14).created && ok(14).home_region == "us-east");
    assert_eq!((ok(15).subject_ref.as_str(), ok(15).created), (ok(14).subject_ref.as_str(), false));
    let (code, message) = refused(by_id[&16]).unwrap();
    assert_eq!(code, Code::InvalidArgument);
    assert!(!message.contains("not an address"), "the value is never echoed: {message}");
    assert_eq!(refused(by_id[&17]).unwrap().0, Code::FailedPrecondition);
    let (code, message) = refused(by_id[&18]).unwrap();
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    assert!(!message.contains("held.in.us"), "{message}");
    assert_eq!(refused(by_id[&19]).unwrap().0, Code::InvalidArgument);

    // What each found, the directory knows: through this gateway at once, through a second one
    // from the change events.
    let second = cluster.start_gateway("second", &[]).await.expect("second gateway");
    let other = cluster.gateway_at(second.addr).await.unwrap();
    for (kind, value, expected) in [
        ("phone", "+4915112345678", de.subject_ref.clone()),
        ("phone", "+12025550143", ok(14).subject_ref.clone()),
        ("phone", "+5511912345678", ok(11).subject_ref.clone()),
        ("email", "new.de@example.org", ok(10).subject_ref.clone()),
    ] {
        let resolve = gw::ResolveRequest { identifier: Some(identifier(kind, value)) };
        let here = gateway.resolve(resolve.clone()).await.unwrap().into_inner();
        assert_eq!(here.subject_ref, expected, "{kind} resolved through the gateway that registered it");
        let there = eventually(Duration::from_secs(10), || {
            let (mut other, resolve) = (other.clone(), resolve.clone());
            async move { other.resolve(resolve).await.ok().map(|r| r.into_inner().subject_ref) }
        })
        .await;
        assert_eq!(there, Some(expected), "{kind} resolved through another gateway");
    }
    // The US subject stayed where it was, with only its own identifier.
    let held = gateway.resolve(gw::ResolveRequest { identifier: Some(identifier("email", "held.in.us@example.org")) });
    assert_eq!(held.await.unwrap().into_inner().subject_ref, us.subject_ref);

    // Items refused past the gateway (sent to the node directly): one at the arbiter, whose
    // other, new identifier's claim is given up, so another region can have it; one by the store
    // (the DE subject's identifier under FR, with a new phone), rolled back alone while the item
    // beside it is written.
    let mut node = cluster.node(&region("eu-central")).await.unwrap();
    let direct = node
        .register_batch(node_pb::RegisterBatchRequest {
            items: vec![
                node_pb::RegisterBatchItem {
                    id: 1,
                    jurisdiction: "DE".into(),
                    identifiers: vec![
                        identifier("email", "given.up@example.org"),
                        identifier("email", "held.in.us@example.org"),
                    ],
                },
                node_pb::RegisterBatchItem {
                    id: 2,
                    jurisdiction: "FR".into(),
                    identifiers: vec![identifier("email", "known@example.org"), identifier("phone", "+33612345678")],
                },
                node_pb::RegisterBatchItem {
                    id: 3,
                    jurisdiction: "DE".into(),
                    identifiers: vec![identifier("email", "beside.them@example.org")],
                },
            ],
            caller_region: "eu-central".into(),
        })
        .await
        .unwrap()
        .into_inner();
    match direct.outcomes.as_slice() {
        [
            node_pb::RegisterBatchOutcome {
                id: 1,
                result: Some(node_pb::register_batch_outcome::Result::Refused(at_arbiter)),
            },
            node_pb::RegisterBatchOutcome {
                id: 2,
                result: Some(node_pb::register_batch_outcome::Result::Refused(in_store)),
            },
            node_pb::RegisterBatchOutcome {
                id: 3,
                result: Some(node_pb::register_batch_outcome::Result::Registered(beside)),
            },
        ] => {
            assert_eq!(Code::from(at_arbiter.code), Code::FailedPrecondition, "{}", at_arbiter.message);
            assert_eq!(Code::from(in_store.code), Code::FailedPrecondition, "{}", in_store.message);
            assert!(in_store.message.contains("jurisdiction"), "{}", in_store.message);
            assert!(beside.created && beside.subject_ref.starts_with("eu-central/"), "{beside:?}");
        }
        other => panic!("refused at the arbiter, refused by the store, registered: {other:?}"),
    }
    let phone = gw::ResolveRequest { identifier: Some(identifier("phone", "+33612345678")) };
    assert_eq!(gateway.resolve(phone).await.unwrap_err().code(), Code::NotFound, "the refused item left nothing");
    let elsewhere = eventually(Duration::from_secs(10), || {
        let mut gateway = gateway.clone();
        async move {
            let request = gw::RegisterRequest {
                jurisdiction: "BR".into(),
                identifiers: vec![identifier("email", "given.up@example.org")],
                ..Default::default()
            };
            gateway.register(request).await.ok().map(|r| r.into_inner().home_region)
        }
    })
    .await;
    assert_eq!(elsewhere.as_deref(), Some("sa-east"), "the refused item's claim was given up");

    // The same batch again: the same subjects, none created, the same refusals.
    let before = census(&cluster).await;
    let again = batch(&mut gateway, items).await;
    for (a, b) in first.iter().zip(&again) {
        match (registered(a), registered(b)) {
            (Some(a), Some(b)) => assert_eq!((&a.subject_ref, &a.links, false), (&b.subject_ref, &b.links, b.created)),
            (None, None) => assert_eq!(refused(a).unwrap().0, refused(b).unwrap().0, "item {}", a.id),
            _ => panic!("item {}: {a:?} then {b:?}", a.id),
        }
    }
    assert_eq!(census(&cluster).await, before, "a batch sent again changes no link");

    // Too many items: the whole call refused, before any is decoded.
    let many: Vec<gw::RegisterBatchItem> =
        (0..1001).map(|i| item(i, "DE", &[("email", &format!("many.{i}@example.org"))])).collect();
    let status = gateway.register_batch(gw::RegisterBatchRequest { items: many }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(census(&cluster).await, before, "none of them registered");
}

/// The same new identifiers sent in batches for three regions at once (a file imported into
/// three gateways under three jurisdictions), with single registrations racing them: every
/// identifier ends up held by one subject in one region, each gateway's answer names that
/// subject or refuses, and every gateway resolves it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_batched_into_three_regions_at_once_land_in_one() {
    const IDENTIFIERS: usize = 240;
    const PER_CALL: usize = 60;
    let cluster = TestCluster::start_on_env_store(BIN, &REGIONS).await.expect("cluster starts");
    let second = cluster.start_gateway("second", &[]).await.expect("second gateway");
    let third = cluster.start_gateway("third", &[]).await.expect("third gateway");
    let gateways = [
        cluster.gateway().await.unwrap(),
        cluster.gateway_at(second.addr).await.unwrap(),
        cluster.gateway_at(third.addr).await.unwrap(),
    ];
    let email = |i: usize| format!("batch.race.{i}@example.org");
    let mut calls = Vec::new();
    for (g, gateway) in gateways.iter().enumerate() {
        // Each gateway asks for every identifier, under the jurisdiction of another region, in
        // its own order, in calls of its own.
        let mut order: Vec<usize> = (0..IDENTIFIERS).collect();
        order.rotate_left(g * IDENTIFIERS / 3);
        if g == 1 {
            order.reverse();
        }
        for chunk in order.chunks(PER_CALL) {
            let items: Vec<gw::RegisterBatchItem> =
                chunk.iter().map(|&i| item(i as u64, JURISDICTIONS[(i + g) % 3], &[("email", &email(i))])).collect();
            let mut gateway = gateway.clone();
            calls.push(tokio::spawn(async move {
                let outcomes = gateway.register_batch(gw::RegisterBatchRequest { items }).await.unwrap();
                (g, outcomes.into_inner().outcomes)
            }));
        }
        // And single registrations of every tenth, racing the batches.
        for i in (g..IDENTIFIERS).step_by(10) {
            let mut gateway = gateway.clone();
            let request = gw::RegisterRequest {
                jurisdiction: JURISDICTIONS[(i + g + 1) % 3].into(),
                identifiers: vec![identifier("email", &email(i))],
                ..Default::default()
            };
            calls.push(tokio::spawn(async move {
                let outcome = match gateway.register(request).await {
                    Ok(reply) => gw::register_batch_outcome::Result::Registered(reply.into_inner()),
                    Err(status) => {
                        gw::register_batch_outcome::Result::Refused(domicile_cluster_tests::pb::common::v1::ItemError {
                            code: status.code() as i32,
                            message: status.message().into(),
                        })
                    }
                };
                (g, vec![gw::RegisterBatchOutcome { id: i as u64, result: Some(outcome) }])
            }));
        }
    }
    let mut answers: BTreeMap<usize, Vec<(usize, gw::RegisterBatchOutcome)>> = BTreeMap::new();
    for call in calls {
        let (g, outcomes) = call.await.unwrap();
        for outcome in outcomes {
            answers.entry(outcome.id as usize).or_default().push((g, outcome));
        }
    }
    let mut homes: BTreeMap<usize, String> = BTreeMap::new();
    for (i, answers) in &answers {
        let refs: BTreeSet<&str> =
            answers.iter().filter_map(|(_, o)| registered(o)).map(|r| r.subject_ref.as_str()).collect();
        assert_eq!(refs.len(), 1, "identifier {i}: registered as {refs:?}; answers {answers:?}");
        for (g, outcome) in answers {
            if let Some((code, message)) = refused(outcome) {
                // Another region holds it (at its arbiter, or known to this gateway already).
                assert_eq!(code, Code::FailedPrecondition, "identifier {i} through gateway {g}: {message}");
            }
        }
        let subject_ref = refs.into_iter().next().unwrap();
        homes.insert(*i, subject_ref.split('/').next().unwrap().to_owned());
    }
    assert_eq!(answers.len(), IDENTIFIERS);
    let regions_won: BTreeSet<&String> = homes.values().collect();
    assert!(regions_won.len() > 1, "the race was a race: homes {regions_won:?}");

    // The census: every identifier's link held once, in the region that answered it.
    let holders = census(&cluster).await;
    let doubles: Vec<_> = holders.values().filter(|h| h.len() > 1).collect();
    assert!(doubles.is_empty(), "{} links held twice, e.g. {:?}", doubles.len(), doubles.first());
    let link_key = domicile_runtime::process::read_link_key(&cluster.dir().join("pki").join("link.key")).unwrap();
    for (i, home) in &homes {
        let id =
            domicile_types::NormalizedIdentifier::normalize(domicile_types::IdentifierKind::Email, &email(*i)).unwrap();
        let held = holders.get(&link_key.link(&id).as_bytes()[..]).cloned().unwrap_or_default();
        assert_eq!(held, [home.as_str()], "identifier {i}");
    }
    // Every gateway resolves every identifier to that home (the others learn it from events).
    for (g, gateway) in gateways.iter().enumerate() {
        for (i, home) in &homes {
            let resolve = gw::ResolveRequest { identifier: Some(identifier("email", &email(*i))) };
            let found = eventually(Duration::from_secs(10), || {
                let (mut gateway, resolve) = (gateway.clone(), resolve.clone());
                async move { gateway.resolve(resolve).await.ok().map(|r| r.into_inner().home_region) }
            })
            .await;
            assert_eq!(found.as_ref(), Some(home), "identifier {i} through gateway {g}");
        }
    }
}

/// A region down (kill -9) mid-deployment: the items of a batch whose identifiers it arbitrates
/// fail closed (UNAVAILABLE naming it, nothing stored, no claim kept by them), the others are
/// registered; the same batch once it is back registers the rest and finds the others again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_whose_arbiter_is_down_fail_closed_alone_and_register_once_it_is_back() {
    let mut cluster = TestCluster::start_on_env_store(BIN, &REGIONS).await.expect("cluster starts");
    let mut gateway = cluster.gateway().await.unwrap();
    let link_key = domicile_runtime::process::read_link_key(&cluster.dir().join("pki").join("link.key")).unwrap();
    let map = domicile_types::ArbiterMap::new(REGIONS.map(region)).unwrap();
    let down = region("sa-east");
    let email = |i: usize| format!("arbiter.down.{i}@example.org");
    let arbitrated_by_down: Vec<bool> = (0..60)
        .map(|i| {
            let id = domicile_types::NormalizedIdentifier::normalize(domicile_types::IdentifierKind::Email, &email(i))
                .unwrap();
            map.arbiter(&link_key.link(&id)) == &down
        })
        .collect();
    assert!(arbitrated_by_down.iter().any(|d| *d) && arbitrated_by_down.iter().any(|d| !*d));
    let items = || (0..60).map(|i| item(i as u64, "DE", &[("email", &email(i))])).collect::<Vec<_>>();

    cluster.cluster.kill_node(&down).await.unwrap();
    let first = batch(&mut gateway, items()).await;
    for (outcome, down_arbitrates) in first.iter().zip(&arbitrated_by_down) {
        if *down_arbitrates {
            let (code, message) = refused(outcome).unwrap_or_else(|| panic!("item {}: {outcome:?}", outcome.id));
            assert_eq!(code, Code::Unavailable, "item {}: {message}", outcome.id);
            assert!(message.contains("sa-east"), "names the arbiter: {message}");
        } else {
            let registered = registered(outcome).unwrap_or_else(|| panic!("item {}: {outcome:?}", outcome.id));
            assert!(registered.created && registered.home_region == "eu-central", "{registered:?}");
        }
    }
    let refused_count = arbitrated_by_down.iter().filter(|d| **d).count();

    cluster.cluster.restart_node(&down).await.expect("the region comes back on its data");
    // What the first call left: the registered items' links only.
    let held = census(&cluster).await.len();
    assert_eq!(held, 60 - refused_count, "a refused item stored nothing");
    let second = all_registered(&gateway, items).await.expect("every item registered once the arbiter is back");
    for ((before, after), down_arbitrates) in first.iter().zip(&second).zip(&arbitrated_by_down) {
        let after = registered(after).unwrap();
        match registered(before) {
            Some(before) => assert_eq!((&after.subject_ref, after.created), (&before.subject_ref, false)),
            None => assert!(*down_arbitrates && after.created && after.home_region == "eu-central", "{after:?}"),
        }
    }
    let holders = census(&cluster).await;
    assert_eq!(holders.len(), held + refused_count, "each link once, the refused ones added");
    assert!(holders.values().all(|h| h.len() == 1));
}

/// The home node paused (SIGSTOP) with a batch in its socket: the gateway answers each item
/// UNAVAILABLE once the bulk deadline passes (never registered), the node registers the batch
/// when it runs again with nobody to tell, and the same batch sent again finds every subject it
/// stored and registers the rest, each identifier held once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_answer_is_lost_to_a_paused_node_is_found_when_sent_again() {
    let mut cluster = TestCluster::start_on_env_store(BIN, &REGIONS).await.expect("cluster starts");
    let path = cluster.dir().join("config/gateway.toml");
    let mut config: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    config.insert("bulk_timeout_ms".into(), toml::Value::Integer(500));
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    cluster.restart_gateway().await.unwrap();
    let mut gateway = cluster.gateway().await.unwrap();
    let items =
        || (0..40u64).map(|i| item(i, "DE", &[("email", &format!("paused.{i}@example.org"))])).collect::<Vec<_>>();

    // The bulk connection made first (a gateway in service has it; a connection still to be made
    // to a paused node waits for its TLS handshake until the caller's own deadline instead).
    let warm = batch(&mut gateway, vec![item(99, "DE", &[("email", "warm@example.org")])]).await;
    assert!(registered(&warm[0]).is_some());
    let paused = domicile_cluster_tests::Paused::node(&cluster, &region("eu-central")).unwrap();
    let first = batch(&mut gateway, items()).await;
    for outcome in &first {
        let (code, message) = refused(outcome).unwrap_or_else(|| panic!("item {}: {outcome:?}", outcome.id));
        assert_eq!(code, Code::Unavailable, "item {}: {message}", outcome.id);
    }
    drop(paused);

    let second = all_registered(&gateway, items).await.expect("every item registered once the node runs again");
    let refs: BTreeSet<&str> = second.iter().filter_map(registered).map(|r| r.subject_ref.as_str()).collect();
    assert_eq!(refs.len(), 40, "one subject per identifier");
    assert!(refs.iter().all(|r| r.starts_with("eu-central/")));
    let holders = census(&cluster).await;
    assert_eq!(holders.len(), 41, "each link held once (and the first call's)");
    assert!(holders.values().all(|h| h == &["eu-central"]));
    // Sent a third time: the same subjects, none created.
    let third = batch(&mut gateway, items()).await;
    for (a, b) in second.iter().zip(&third) {
        let (a, b) = (registered(a).unwrap(), registered(b).unwrap());
        assert_eq!((&a.subject_ref, false), (&b.subject_ref, b.created));
    }
}
