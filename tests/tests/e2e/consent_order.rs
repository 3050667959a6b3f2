//! The order of consent records under clock skew, both ways, through the gateway on a real
//! cluster (invariants 4 and 9; issue 17, item 3; the rule is policy-packs/README.md "Order of
//! consent records"):
//!
//! 1. a capture cannot have happened after it was recorded (a grant stamped up to 300 s ahead
//!    counts from its recording; further ahead it is refused);
//! 2. an acknowledged withdrawal beats every grant recorded before it, even when the capture
//!    system's clock runs behind;
//! 3. otherwise the capture time orders (a withdrawal typed in long after leaves a grant given
//!    since in force);
//! 4. a re-grant recorded after a withdrawal, in the same second, is in force, also when its capture
//!    system stamps whole seconds; one stamped a second earlier is not.
//!
//! US marketing email is opt-out (allow until withdrawn) and DE's needs consent (deny without
//! it), so each step's decision tells the states apart.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_cluster_tests::{Cluster as _, ScenarioCluster, identifier, select_ref};
use domicile_proto::prost_types::Timestamp;
use tonic::transport::Channel;
use tonic::{Code, Status};

use common::ConsentAction::{Grant, Withdraw};
use common::Effect::{Allow, Deny};

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");

type Client = DomicileClient<Channel>;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// `offset_ms` from now, with millisecond precision.
fn from_now(offset_ms: i64) -> Timestamp {
    let at = now_ms() + offset_ms;
    Timestamp { seconds: at.div_euclid(1000), nanos: (at.rem_euclid(1000) * 1_000_000) as i32 }
}

const SECOND: i64 = 1000;

async fn register(client: &mut Client, jurisdiction: &str, email: &str) -> String {
    client
        .register(gw::RegisterRequest {
            jurisdiction: jurisdiction.into(),
            identifiers: vec![identifier("email", email)],
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("register {jurisdiction}: {e:?}"))
        .into_inner()
        .subject_ref
}

/// Records marketing-email consent, captured at `captured_at` (None: when the node records it).
async fn record(
    client: &mut Client,
    subject: &str,
    action: common::ConsentAction,
    captured_at: Option<Timestamp>,
) -> Result<gw::RecordConsentResponse, Status> {
    client
        .record_consent(gw::RecordConsentRequest {
            subject: select_ref(subject),
            purpose: "marketing".into(),
            channels: vec!["email".into()],
            action: action as i32,
            evidence: Some(common::Evidence {
                notice_version: "privacy-notice-v3".into(),
                capture_channel: "web".into(),
                source_system: "web-preference-centre".into(),
                double_opt_in_confirmed: true,
                signal: None,
                ..Default::default()
            }),
            captured_at,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The marketing-email decision as of `at` (None: now), with its explanation.
async fn decide(client: &mut Client, subject: &str, at: Option<Timestamp>) -> (common::Effect, String) {
    let decision = client
        .decide(gw::DecideRequest {
            subject: select_ref(subject),
            purpose: "marketing".into(),
            channel: "email".into(),
            at,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("decide: {e:?}"))
        .into_inner()
        .decision
        .expect("a decision");
    (common::Effect::try_from(decision.effect).unwrap(), decision.explanation)
}

/// The ledger, read as a caller of the subject's home region (it stays home).
async fn history(cluster: &impl domicile_cluster_tests::Cluster, subject: &str) -> Vec<common::ConsentEntry> {
    cluster.history_at_home(select_ref(subject)).await.expect("consent history").entries
}

/// Asserts the decision now and at each of `later_s` seconds from now.
async fn assert_effect(client: &mut Client, subject: &str, expected: common::Effect, later_s: &[i64], what: &str) {
    let (effect, why) = decide(client, subject, None).await;
    assert_eq!(effect, expected, "{what}, decided now: {why}");
    for &s in later_s {
        let (effect, why) = decide(client, subject, Some(from_now(s * SECOND))).await;
        assert_eq!(effect, expected, "{what}, decided at now+{s}s: {why}");
    }
}

/// Later instants a decision must not change at: past the 300 s skew allowance, an hour and a
/// day on.
const LATER: &[i64] = &[290, 300, 301, 360, 3600, 86_400];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_order_holds_under_clock_skew_in_both_directions() {
    let cluster = ScenarioCluster::start(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();

    // (a) The capture system's clock runs ahead: a grant stamped 290 s in the future, then an
    // acknowledged withdrawal captured now. The withdrawal is in force now and stays so when the
    // grant's stated capture time has passed (before the fix: allow five minutes later).
    for (jurisdiction, email) in [("US", "ahead.us@example.com"), ("DE", "ahead.de@example.de")] {
        let subject = register(&mut client, jurisdiction, email).await;
        record(&mut client, &subject, Grant, Some(from_now(290 * SECOND))).await.expect("a grant 290 s ahead");
        record(&mut client, &subject, Withdraw, None).await.expect("the withdrawal is acknowledged");
        assert_effect(&mut client, &subject, Deny, LATER, &format!("{jurisdiction}: clock ahead, then withdrawn"))
            .await;
        let ledger = history(&cluster, &subject).await;
        assert_eq!(
            ledger.iter().map(|e| e.state.as_str()).collect::<Vec<_>>(),
            ["granted", "withdrawn"],
            "both kept, in recording order"
        );
    }

    // (b) The capture system's clock runs behind: a grant now, then a withdrawal stamped 290 s
    // in the past. Its stated time is before the grant's, yet it was recorded after it and
    // acknowledged: it wins.
    for (jurisdiction, email) in [("US", "behind.us@example.com"), ("DE", "behind.de@example.de")] {
        let subject = register(&mut client, jurisdiction, email).await;
        record(&mut client, &subject, Grant, None).await.expect("grant");
        let (effect, why) = decide(&mut client, &subject, None).await;
        assert_eq!(effect, Allow, "{jurisdiction}: granted: {why}");
        record(&mut client, &subject, Withdraw, Some(from_now(-290 * SECOND)))
            .await
            .expect("a withdrawal 290 s behind");
        assert_effect(&mut client, &subject, Deny, LATER, &format!("{jurisdiction}: clock behind, withdrawn")).await;
    }

    // (c) A withdrawal entered long after it was given (a paper form, two days old) after a
    // recent grant: the capture time orders, the grant the person gave since stays in force.
    // DE needs consent, so an allow here is the grant's.
    let subject = register(&mut client, "DE", "paper.form@example.de").await;
    record(&mut client, &subject, Grant, None).await.expect("grant");
    record(&mut client, &subject, Withdraw, Some(from_now(-2 * 86_400 * SECOND))).await.expect("an old withdrawal");
    assert_effect(&mut client, &subject, Allow, &[60, 3600], "DE: granted after an old withdrawal entered late").await;
    assert_eq!(history(&cluster, &subject).await.len(), 2, "the late withdrawal is on record all the same");

    // (d) A grant stamped more than 300 s ahead is a client bug: INVALID_ARGUMENT naming the
    // field, and nothing is written: DE stays without consent, at any time.
    let subject = register(&mut client, "DE", "far.ahead@example.de").await;
    for ahead_s in [310, 3600] {
        let status =
            record(&mut client, &subject, Grant, Some(from_now(ahead_s * SECOND))).await.expect_err("too far ahead");
        assert_eq!(status.code(), Code::InvalidArgument, "{ahead_s} s ahead: {status:?}");
        assert!(status.message().contains("captured_at"), "names the field: {}", status.message());
    }
    assert!(history(&cluster, &subject).await.is_empty(), "nothing recorded");
    assert_effect(&mut client, &subject, Deny, &[310, 3600, 86_400], "DE: a refused future grant").await;

    // (e) A re-grant right after a withdrawal, recorded in the same second, is in force: the
    // withdrawal beats only grants recorded before it. Repeated until the two land in one
    // second (almost always the first time), so that a clock of whole seconds would show.
    let subject = register(&mut client, "DE", "regrant@example.de").await;
    record(&mut client, &subject, Grant, None).await.expect("grant");
    let mut same_second = false;
    for _ in 0..10 {
        let withdrawn = record(&mut client, &subject, Withdraw, None).await.expect("withdraw");
        let (effect, why) = decide(&mut client, &subject, None).await;
        assert_eq!(effect, Deny, "withdrawn: {why}");
        let regranted = record(&mut client, &subject, Grant, None).await.expect("re-grant");
        assert!(regranted.sequence > withdrawn.sequence, "recorded after the withdrawal");
        assert_effect(&mut client, &subject, Allow, &[1, 3600], "DE: re-granted after a withdrawal").await;
        if withdrawn.recorded_at.map(|t| t.seconds) == regranted.recorded_at.map(|t| t.seconds) {
            same_second = true;
            break;
        }
    }
    assert!(same_second, "no withdrawal and re-grant were recorded in the same second in 10 tries");

    // (f) A capture system that stamps whole seconds: the withdrawal and the re-grant both say
    // "this second" (the withdrawal counts when recorded, a few milliseconds in): the re-grant,
    // recorded after it, is in force. One stamped a second earlier (a replay) is not.
    let subject = register(&mut client, "DE", "whole.seconds@example.de").await;
    let mut stamped = false;
    for _ in 0..10 {
        let second = Timestamp { seconds: now_ms().div_euclid(1000), nanos: 0 };
        let withdrawn = record(&mut client, &subject, Withdraw, Some(second)).await.expect("withdraw");
        record(&mut client, &subject, Grant, Some(second)).await.expect("re-grant");
        if withdrawn.recorded_at.map(|t| t.seconds) == Some(second.seconds) {
            assert_effect(&mut client, &subject, Allow, &[1, 3600], "DE: re-granted, stamped whole seconds").await;
            stamped = true;
            break;
        }
    }
    assert!(stamped, "no withdrawal was recorded in the second it was stamped with in 10 tries");
    let withdrawn = record(&mut client, &subject, Withdraw, None).await.expect("withdraw again");
    let before = Timestamp { seconds: withdrawn.recorded_at.map_or(0, |t| t.seconds) - 1, nanos: 0 };
    record(&mut client, &subject, Grant, Some(before)).await.expect("a grant stamped a second earlier");
    assert_effect(&mut client, &subject, Deny, &[1, 3600], "DE: a grant from the second before the withdrawal").await;
}

/// A decision answers with the consent in force now, so a time in the past is refused: evaluated
/// then, a grant that has lapsed since allowed again (found by an attacker's review). A time
/// within the skew allowance before now counts as now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_in_the_past_is_refused_and_a_lapsed_grant_never_allows() {
    let cluster = ScenarioCluster::start(BIN, &["eu-central"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let subject = register(&mut client, "DE", "lapsing@example.de").await;
    let grant = gw::RecordConsentRequest {
        subject: select_ref(&subject),
        purpose: "marketing".into(),
        channels: vec!["email".into()],
        action: common::ConsentAction::Grant as i32,
        evidence: Some(common::Evidence {
            notice_version: "privacy-notice-v3".into(),
            capture_channel: "web".into(),
            source_system: "web-preference-centre".into(),
            double_opt_in_confirmed: true,
            ..Default::default()
        }),
        captured_at: Some(from_now(-60 * SECOND)),
        expires_at: Some(from_now(2 * SECOND)),
        ..Default::default()
    };
    client.record_consent(grant).await.unwrap();
    assert_eq!(decide(&mut client, &subject, None).await.0, common::Effect::Allow, "before it lapses");
    tokio::time::sleep(std::time::Duration::from_millis(3 * SECOND as u64)).await;
    assert_eq!(decide(&mut client, &subject, None).await.0, common::Effect::Deny, "lapsed");
    // Within the skew allowance: evaluated now, lapsed.
    let (effect, why) = decide(&mut client, &subject, Some(from_now(-30 * SECOND))).await;
    assert_eq!(effect, common::Effect::Deny, "30 s ago counts as now: {why}");
    // Before the grant lapsed, beyond the allowance: refused, never an allow.
    for (at, what) in [(from_now(-3600 * SECOND), "an hour ago"), (from_now(-301 * SECOND), "past the allowance")] {
        let status = client
            .decide(gw::DecideRequest {
                subject: select_ref(&subject),
                purpose: "marketing".into(),
                channel: "email".into(),
                at: Some(at),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains("past"), "{}", status.message());
    }
}
