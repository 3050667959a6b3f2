//! Decision facts on the API (issue 20): what a caller knows about a contact (recipient type, the
//! subject's age, register screening, time zone) and how a consent was given (its kind, the hours
//! it covers) reach the subject's pack through the gateway, unary and streamed, and directly at
//! the node, on a real cluster. Korea's separate consent to night-time advertising, California's
//! opt-in for minors, Canada's DNCL exemption for business calls. Unknown facts never allow; bad
//! facts are INVALID_ARGUMENT naming the field, never echoing the value.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::collections::HashMap;

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::node::v1 as node;
use domicile_cluster_tests::{Cluster as _, TestCluster, identifier, node_ref, region, select_ref};
use domicile_proto::prost_types::Timestamp;
use tonic::Code;
use tonic::transport::Channel;

type Client = gw::domicile_client::DomicileClient<Channel>;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");

/// Monday 4 Jan 2027 13:00 UTC = 22:00 in Seoul, 08:00 in Toronto.
const KR_NIGHT: i64 = 1_799_067_600;
/// The same Monday 02:00 UTC = 11:00 in Seoul.
const KR_DAY: i64 = 1_799_028_000;
/// The same Monday 18:00 UTC: every Canadian zone inside its calling hours.
const CA_AFTERNOON: i64 = 1_799_085_600;

fn at(unix: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds: unix, nanos: 0 })
}

async fn register(client: &mut Client, jurisdiction: &str, email: &str) -> String {
    client
        .register(gw::RegisterRequest {
            jurisdiction: jurisdiction.into(),
            identifiers: vec![identifier("email", email)],
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner()
        .subject_ref
}

async fn grant(
    client: &mut Client,
    subject: &str,
    purpose: &str,
    channel: &str,
    kind: &str,
    hours: &[&str],
) -> Result<(), tonic::Status> {
    client
        .record_consent(gw::RecordConsentRequest {
            subject: select_ref(subject),
            purpose: purpose.into(),
            channels: vec![channel.into()],
            action: common::ConsentAction::Grant as i32,
            evidence: Some(common::Evidence {
                notice_version: "notice-v1".into(),
                source_system: "preference-centre".into(),
                consent_kind: kind.into(),
                hours: hours.iter().map(|h| (*h).to_owned()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

async fn decide(
    client: &mut Client,
    subject: &str,
    purpose: &str,
    channel: &str,
    when: i64,
    facts: Option<common::DecisionFacts>,
) -> common::Decision {
    client
        .decide(gw::DecideRequest {
            subject: select_ref(subject),
            purpose: purpose.into(),
            channel: channel.into(),
            at: at(when),
            facts,
        })
        .await
        .expect("decide")
        .into_inner()
        .decision
        .expect("a decision")
}

fn allowed(d: &common::Decision) -> bool {
    d.effect == common::Effect::Allow as i32
}

fn facts(recipient: &str, age: Option<u32>, on_register: Option<bool>) -> Option<common::DecisionFacts> {
    Some(common::DecisionFacts { recipient: recipient.into(), age, on_register, ..Default::default() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_and_consent_scope_reach_the_pack_through_every_door() {
    let cluster = TestCluster::start_on_env_store(BIN, &["ap-northeast", "us-east"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();

    // --- Korea: an ordinary consent covers the day, the night needs the separate consent. ---
    let kr = register(&mut client, "KR", "night.owl@example.kr").await;
    grant(&mut client, &kr, "marketing", "sms", "", &[]).await.expect("grant");
    let night = decide(&mut client, &kr, "marketing", "sms", KR_NIGHT, None).await;
    assert!(!allowed(&night), "an ordinary consent let an ad through at 22:00 KST: {}", night.explanation);
    assert!(night.explanation.contains("does not cover this time of day"), "{}", night.explanation);
    let day = decide(&mut client, &kr, "marketing", "sms", KR_DAY, None).await;
    assert!(allowed(&day), "{}", day.explanation);
    assert_eq!(day.valid_until.map(|t| t.seconds), Some(KR_DAY + 10 * 3600), "the allow ends at 21:00 KST");
    // A window the subject's pack does not define is refused at the node; a malformed id already
    // at the gateway. Neither is echoed, and neither changes the ledger.
    let status = grant(&mut client, &kr, "marketing", "sms", "", &["weekends"]).await.expect_err("unknown window");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("evidence.hours[0]") && !status.message().contains("weekends"), "{status:?}");
    let status = grant(&mut client, &kr, "marketing", "sms", "", &["Night Time"]).await.expect_err("malformed");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(!status.message().contains("Night Time"), "{status:?}");
    let entries = |history: gw::ConsentHistoryResponse| history.entries.len();
    let ledger = client
        .consent_history(gw::ConsentHistoryRequest { subject: select_ref(&kr), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(entries(ledger), 1, "a refused write reached the ledger");
    // A time zone the caller names must be one of the subject's pack: a caller that could name
    // any zone could move the night to its own afternoon.
    for (zone, allowed_zone) in [("Asia/Seoul", true), ("Europe/London", false), ("Etc/GMT-14", false)] {
        let facts = Some(common::DecisionFacts { time_zone: zone.into(), ..Default::default() });
        let reply = client
            .decide(gw::DecideRequest {
                subject: select_ref(&kr),
                purpose: "marketing".into(),
                channel: "sms".into(),
                at: at(KR_NIGHT),
                facts,
            })
            .await;
        match (reply, allowed_zone) {
            (Ok(reply), true) => {
                let d = reply.into_inner().decision.unwrap();
                assert!(!allowed(&d), "22:00 in Seoul: {}", d.explanation);
            }
            (Err(status), false) => {
                assert_eq!(status.code(), Code::InvalidArgument, "{zone}: {status:?}");
                assert!(status.message().contains("facts.time_zone") && !status.message().contains(zone), "{status:?}");
            }
            (other, _) => panic!("{zone}: {other:?}"),
        }
    }
    // The separate night-time consent, recorded as such, lets the ad through at night.
    grant(&mut client, &kr, "marketing", "sms", "", &["night"]).await.expect("night consent");
    let night = decide(&mut client, &kr, "marketing", "sms", KR_NIGHT, None).await;
    assert!(allowed(&night), "{}", night.explanation);
    // The history shows the hours it was given for.
    let history = client
        .consent_history(gw::ConsentHistoryRequest { subject: select_ref(&kr), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let last = history.entries.last().and_then(|e| e.evidence.clone()).expect("evidence");
    assert_eq!(last.hours, ["night"]);
    // A withdrawal is never refused over hours it repeats (here of a window the pack no longer
    // has): it covers every hour.
    let withdrawal = client
        .record_consent(gw::RecordConsentRequest {
            subject: select_ref(&kr),
            purpose: "marketing".into(),
            channels: vec!["sms".into()],
            action: common::ConsentAction::Withdraw as i32,
            evidence: Some(common::Evidence { hours: vec!["weekends".into()], ..Default::default() }),
            ..Default::default()
        })
        .await;
    assert!(withdrawal.is_ok(), "{withdrawal:?}");
    for when in [KR_NIGHT, KR_DAY] {
        assert!(!allowed(&decide(&mut client, &kr, "marketing", "sms", when, None).await), "withdrawn");
    }

    // --- California: age is an input; under 13 only a guardian's opt-in counts. ---
    let ca_minor = register(&mut client, "US-CA", "young.reader@example.com").await;
    let share = |age| facts("", age, None);
    let adult = decide(&mut client, &ca_minor, "profiling", "web", KR_DAY, share(Some(30))).await;
    assert!(allowed(&adult), "{}", adult.explanation);
    let unknown = decide(&mut client, &ca_minor, "profiling", "web", KR_DAY, share(None)).await;
    assert!(allowed(&unknown), "the CCPA's actual-knowledge standard: unknown age takes the adult rule");
    let teen = decide(&mut client, &ca_minor, "profiling", "web", KR_DAY, share(Some(14))).await;
    assert!(!allowed(&teen), "{}", teen.explanation);
    assert!(teen.explanation.contains("minor"), "{}", teen.explanation);
    grant(&mut client, &ca_minor, "profiling", "web", "guardian", &[]).await.expect("guardian opt-in");
    assert!(allowed(&decide(&mut client, &ca_minor, "profiling", "web", KR_DAY, share(Some(12))).await));
    assert!(
        !allowed(&decide(&mut client, &ca_minor, "profiling", "web", KR_DAY, share(Some(14))).await),
        "a guardian's opt-in stood in for a 14-year-old's own"
    );
    let status = grant(&mut client, &ca_minor, "profiling", "web", "parental", &[]).await.expect_err("unknown kind");
    assert!(status.code() == Code::InvalidArgument && status.message().contains("evidence.consent_kind"));

    // --- Canada: a business on the DNCL may be called, a consumer or an unknown recipient not. ---
    let ca = register(&mut client, "CA", "buyer@example.ca").await;
    let call = |recipient: &str| facts(recipient, None, Some(true));
    let business = decide(&mut client, &ca, "marketing", "voice", CA_AFTERNOON, call("business")).await;
    assert!(allowed(&business), "{}", business.explanation);
    assert_eq!(business.reasons, ["ca.marketing.voice-business"]);
    for recipient in ["consumer", ""] {
        let d = decide(&mut client, &ca, "marketing", "voice", CA_AFTERNOON, call(recipient)).await;
        assert!(!allowed(&d), "recipient {recipient:?}: {}", d.explanation);
        assert_eq!(d.reasons, ["ca.marketing.voice"]);
    }

    // --- Bad facts: INVALID_ARGUMENT naming the field, never the value. ---
    for (bad, field, value) in [
        (common::DecisionFacts { recipient: "Acme Corp".into(), ..Default::default() }, "facts.recipient", "Acme"),
        (common::DecisionFacts { age: Some(400), ..Default::default() }, "facts.age", "400"),
        (common::DecisionFacts { time_zone: "Mars/Olympus".into(), ..Default::default() }, "facts.time_zone", "Mars"),
    ] {
        let status = client
            .decide(gw::DecideRequest {
                subject: select_ref(&ca),
                purpose: "marketing".into(),
                channel: "voice".into(),
                at: at(CA_AFTERNOON),
                facts: Some(bad),
            })
            .await
            .expect_err("bad fact");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field) && !status.message().contains(value), "{status:?}");
    }

    // --- DecideStream carries facts per item; the node answers alike when called directly. ---
    let items = vec![
        gw::DecideStreamItem {
            id: 1,
            subject: select_ref(&ca),
            purpose: "marketing".into(),
            channel: "voice".into(),
            facts: call("business"),
        },
        gw::DecideStreamItem {
            id: 2,
            subject: select_ref(&ca),
            purpose: "marketing".into(),
            channel: "voice".into(),
            facts: call("consumer"),
        },
        gw::DecideStreamItem {
            id: 3,
            subject: select_ref(&ca_minor),
            purpose: "profiling".into(),
            channel: "web".into(),
            facts: share(Some(14)),
        },
        gw::DecideStreamItem {
            id: 4,
            subject: select_ref(&ca),
            purpose: "marketing".into(),
            channel: "voice".into(),
            facts: Some(common::DecisionFacts { recipient: "nobody".into(), ..Default::default() }),
        },
    ];
    let mut results = client.decide_stream(tokio_stream::iter(items)).await.expect("stream").into_inner();
    let mut by_id = HashMap::new();
    while let Some(result) = results.message().await.expect("stream result") {
        by_id.insert(result.id, result.result.expect("a result"));
    }
    // The stream decides now; the calling window may be closed at test time, so only the
    // recipient rule's reason and the minor's deny are asserted.
    let reasons = |id| match by_id.get(&id) {
        Some(gw::decide_stream_result::Result::Decision(d)) => (allowed(d), d.reasons.clone()),
        other => panic!("item {id}: {other:?}"),
    };
    assert_eq!(reasons(1).1, ["ca.marketing.voice-business"]);
    assert_eq!(reasons(2).1, ["ca.marketing.voice"]);
    assert!(!reasons(2).0, "a listed consumer was allowed");
    assert!(!reasons(3).0, "a 14-year-old was shared without opt-in");
    match by_id.get(&4) {
        Some(gw::decide_stream_result::Result::Error(e)) => {
            assert_eq!(e.code, Code::InvalidArgument as i32, "{e:?}");
            assert!(!e.message.contains("nobody"), "{e:?}");
        }
        other => panic!("a bad recipient was decided: {other:?}"),
    }

    let mut us_east = cluster.node(&region("us-east")).await.unwrap();
    let direct = |recipient: &str| node::DecideRequest {
        subject: node_ref(&ca),
        purpose: "marketing".into(),
        channel: "voice".into(),
        at: at(CA_AFTERNOON),
        facts: call(recipient),
    };
    let d = us_east.decide(direct("business")).await.unwrap().into_inner().decision.unwrap();
    assert!(allowed(&d), "{}", d.explanation);
    let d = us_east.decide(direct("consumer")).await.unwrap().into_inner().decision.unwrap();
    assert!(!allowed(&d), "{}", d.explanation);
}
