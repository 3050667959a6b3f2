//! The walking skeleton end to end: real mutual TLS, real sled files. Invariants covered: 1
//! (residency at rest), 2 (only links cross), 3 (default deny), 4 (withdrawal is immediate), 5
//! (decisions name pack and rule), 8 (bad input). Residency at rest (every byte the processes
//! wrote, their logs included) and kill -9 run on real processes; the other scenarios on a
//! `ScenarioCluster` (in-process unless `DOMICILE_TEST_CLUSTER=processes`).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_cluster_tests::pb::node::v1 as node;
use domicile_cluster_tests::{Cluster as _, ScenarioCluster, TestCluster, files_containing, files_under, region};
use domicile_cluster_tests::{identifier, select as by_identifier};
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const REGIONS: &[&str] = &["eu-central", "us-east", "sa-east"];

// Distinctive values, so a byte search cannot match anything else by accident.
const DE_EMAIL: &str = "Anna.Residency-Probe@Example.DE";
const DE_EMAIL_NORMALIZED: &str = "anna.residency-probe@example.de";
const DE_PHONE: &str = "+49 151 7394 2265";
const DE_PHONE_NORMALIZED: &str = "+4915173942265";
const US_EMAIL: &str = "bob.optout-probe@example.com";

async fn decide(
    client: &mut DomicileClient<Channel>,
    subject: Option<gw::SubjectSelector>,
    purpose: &str,
    channel: &str,
) -> common::Decision {
    client
        .decide(gw::DecideRequest {
            subject,
            purpose: purpose.into(),
            channel: channel.into(),
            at: None,
            ..Default::default()
        })
        .await
        .expect("decide")
        .into_inner()
        .decision
        .expect("a decision")
}

async fn record(
    client: &mut DomicileClient<Channel>,
    subject: Option<gw::SubjectSelector>,
    action: common::ConsentAction,
    purpose: &str,
    channel: &str,
) {
    client
        .record_consent(gw::RecordConsentRequest {
            subject,
            purpose: purpose.into(),
            channels: vec![channel.into()],
            action: action as i32,
            evidence: Some(common::Evidence {
                notice_version: "notice-v3".into(),
                capture_channel: "web".into(),
                source_system: "preference-centre".into(),
                double_opt_in_confirmed: true,
                signal: None,
                ..Default::default()
            }),
            captured_at: None,
            expires_at: None,
            idempotency_key: String::new(),
        })
        .await
        .expect("record consent");
}

fn effect(d: &common::Decision) -> common::Effect {
    common::Effect::try_from(d.effect).expect("known effect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_follows_the_person_across_identifiers_and_data_stays_home() {
    let mut cluster = TestCluster::start_on_env_store(BIN, REGIONS).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();

    // A DE subject with an email and a phone number.
    let registered = client
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", DE_EMAIL), identifier("phone", DE_PHONE)],
            idempotency_key: String::new(),
        })
        .await
        .expect("register DE subject")
        .into_inner();
    assert_eq!(registered.home_region, "eu-central");
    assert!(registered.subject_ref.starts_with("eu-central/"));
    assert_eq!(registered.links.len(), 2);
    assert!(registered.created);

    let email = || by_identifier("email", DE_EMAIL);
    let phone = || by_identifier("phone", DE_PHONE);

    // Opt-in country, no consent yet: deny, naming the rule and the pack.
    let d = decide(&mut client, email(), "marketing", "email").await;
    assert_eq!(effect(&d), common::Effect::Deny);
    assert_eq!(d.reasons, ["de.marketing.email"]);
    let pack = d.pack.as_ref().expect("pack named");
    assert_eq!(pack.id, "de");
    assert!(!pack.version.is_empty());
    assert_eq!(d.region, "eu-central");
    assert_eq!(d.subject_ref, registered.subject_ref);

    // Opt-in, then allow.
    record(&mut client, email(), common::ConsentAction::Grant, "marketing", "email").await;
    let d = decide(&mut client, email(), "marketing", "email").await;
    assert_eq!(effect(&d), common::Effect::Allow, "{}", d.explanation);
    assert_eq!(d.reasons, ["de.marketing.email"]);

    // A decision at a later stated time is evaluated at that time (a send it schedules): a minute
    // from now the grant holds. A past time is refused (consent_order.rs).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let d = client
        .decide(gw::DecideRequest {
            subject: email(),
            purpose: "marketing".into(),
            channel: "email".into(),
            at: Some(domicile_proto::prost_types::Timestamp { seconds: now + 60, nanos: 0 }),
            ..Default::default()
        })
        .await
        .expect("decide at a time")
        .into_inner()
        .decision
        .expect("a decision");
    assert_eq!(effect(&d), common::Effect::Allow, "at now+60s: {}", d.explanation);
    assert_eq!(
        (d.reasons.as_slice(), d.subject_ref.as_str()),
        (&["de.marketing.email".to_owned()][..], registered.subject_ref.as_str())
    );

    // The same person reached by phone number gets the same decision.
    let d = decide(&mut client, phone(), "marketing", "email").await;
    assert_eq!(effect(&d), common::Effect::Allow, "consent follows the person across identifiers");

    // Consent for email says nothing about SMS.
    let d = decide(&mut client, phone(), "marketing", "sms").await;
    assert_eq!(effect(&d), common::Effect::Deny);

    // Withdrawal through the phone identifier: the very next decision, by email, denies.
    record(&mut client, phone(), common::ConsentAction::Withdraw, "marketing", "email").await;
    let d = decide(&mut client, email(), "marketing", "email").await;
    assert_eq!(effect(&d), common::Effect::Deny, "withdrawal is immediate");
    assert_eq!(d.reasons, ["de.marketing.email"]);
    let d = decide(&mut client, phone(), "marketing", "email").await;
    assert_eq!(effect(&d), common::Effect::Deny);

    // Lookups by link and by subject ref agree too.
    let by_link =
        Some(gw::SubjectSelector { selector: Some(gw::subject_selector::Selector::Link(registered.links[1].clone())) });
    assert_eq!(effect(&decide(&mut client, by_link, "marketing", "email").await), common::Effect::Deny);
    let resolved = client
        .resolve(gw::ResolveRequest { identifier: Some(identifier("phone", DE_PHONE_NORMALIZED)) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.subject_ref, registered.subject_ref);
    assert_eq!(resolved.link, registered.links[1]);

    // US: marketing email is opt-out. Allowed without consent, denied after an opt-out.
    let us = client
        .register(gw::RegisterRequest {
            jurisdiction: "US".into(),
            identifiers: vec![identifier("email", US_EMAIL)],
            idempotency_key: String::new(),
        })
        .await
        .expect("register US subject")
        .into_inner();
    assert_eq!(us.home_region, "us-east");
    let d = decide(&mut client, by_identifier("email", US_EMAIL), "marketing", "email").await;
    assert_eq!(effect(&d), common::Effect::Allow, "{}", d.explanation);
    assert_eq!(d.reasons, ["us.marketing.email"]);
    assert_eq!(d.pack.as_ref().unwrap().id, "us");
    assert!(!d.obligations.is_empty(), "an allow carries the rule's obligations (e.g. unsubscribe)");
    record(&mut client, by_identifier("email", US_EMAIL), common::ConsentAction::Deny, "marketing", "email").await;
    let d = decide(&mut client, by_identifier("email", US_EMAIL), "marketing", "email").await;
    assert_eq!(effect(&d), common::Effect::Deny, "an opt-out is honoured at once");

    // Registering again with a known identifier finds the same subject.
    let again = client
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", DE_EMAIL_NORMALIZED)],
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.subject_ref, registered.subject_ref);
    assert!(!again.created);

    // An identifier held in one region cannot be claimed by a subject of another.
    let err = client
        .register(gw::RegisterRequest {
            jurisdiction: "BR".into(),
            identifiers: vec![identifier("email", DE_EMAIL)],
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // The EU node holds the DE subject (read back in-region through its export).
    let mut eu_node = cluster.node(&region("eu-central")).await.unwrap();
    let export = eu_node
        .export(node::ExportRequest {
            subject: Some(common::SubjectKey {
                key: Some(common::subject_key::Key::SubjectRef(registered.subject_ref.clone())),
            }),
            override_reason: "controller_correction".into(),
            ..Default::default()
        })
        .await
        .expect("export in-region")
        .into_inner();
    let document = String::from_utf8(export.document).unwrap();
    assert!(document.contains(DE_EMAIL_NORMALIZED) && document.contains(DE_PHONE_NORMALIZED));
    for other in ["us-east", "sa-east"] {
        let info = cluster.node(&region(other)).await.unwrap().info(node::InfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.subjects, u64::from(other == "us-east"), "{other} holds only its own subjects");
    }

    // Residency at rest: stop everything (flushing sled) and read the raw files. Nothing the
    // cluster wrote outside the EU node holds the DE identifiers, and even there they are
    // encrypted at rest (checked below by searching every file, EU included).
    cluster.stop().await;
    let dir = cluster.dir().to_owned();
    let eu = dir.join("data/eu-central");
    assert!(!files_under(&eu).is_empty(), "the EU node wrote its database");
    let mut needles: Vec<&[u8]> =
        vec![DE_EMAIL.as_bytes(), DE_EMAIL_NORMALIZED.as_bytes(), DE_PHONE.as_bytes(), DE_PHONE_NORMALIZED.as_bytes()];
    needles.push(b"residency-probe");
    for other in ["data/us-east", "data/sa-east"] {
        let path = dir.join(other);
        assert!(!files_under(&path).is_empty(), "{other} has sled files to inspect");
        for needle in &needles {
            assert!(files_containing(&path, needle).is_empty(), "{other} holds DE personal data");
        }
    }
    // Everything the cluster wrote: configs, certificates, every process's logs (including the
    // gateway's and the EU node's own), and the EU node's own storage, where identifiers are
    // sealed with the subject's key (on PostgreSQL: every region's database files, WAL included).
    let database_files = cluster.database().map(|d| files_under(&d.server().data_dir())).unwrap_or_default();
    for path in files_under(&dir).into_iter().chain(database_files) {
        let bytes = std::fs::read(&path).unwrap();
        for needle in &needles {
            assert!(!bytes.windows(needle.len()).any(|w| w == *needle), "{} contains DE personal data", path.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_invalid_argument_naming_the_field_and_writes_nothing() {
    let cluster = ScenarioCluster::start(BIN, REGIONS).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let secret = "Zz.Secret-Value";
    client
        .register(gw::RegisterRequest {
            jurisdiction: "FR".into(),
            identifiers: vec![identifier("email", "known@example.fr")],
            idempotency_key: String::new(),
        })
        .await
        .expect("valid registration");
    let counts = || async {
        let mut total = Vec::new();
        for r in REGIONS {
            let info = cluster.node(&region(r)).await.unwrap().info(node::InfoRequest {}).await.unwrap().into_inner();
            total.push((info.subjects, info.links));
        }
        total
    };
    let before = counts().await;

    let register_cases: Vec<(&str, gw::RegisterRequest, &str)> = vec![
        ("empty request", gw::RegisterRequest::default(), "jurisdiction"),
        (
            "unknown country",
            gw::RegisterRequest {
                jurisdiction: "QQ".into(),
                identifiers: vec![identifier("email", "a@example.com")],
                idempotency_key: String::new(),
            },
            "jurisdiction",
        ),
        (
            "malformed country",
            gw::RegisterRequest {
                jurisdiction: secret.into(),
                identifiers: vec![identifier("email", "a@example.com")],
                idempotency_key: String::new(),
            },
            "jurisdiction",
        ),
        (
            "no identifiers",
            gw::RegisterRequest { jurisdiction: "DE".into(), identifiers: vec![], idempotency_key: String::new() },
            "identifiers",
        ),
        (
            "malformed email",
            gw::RegisterRequest {
                jurisdiction: "DE".into(),
                identifiers: vec![identifier("email", &format!("{secret}@@example"))],
                idempotency_key: String::new(),
            },
            "identifiers[0].value",
        ),
        (
            "malformed phone",
            gw::RegisterRequest {
                jurisdiction: "DE".into(),
                identifiers: vec![identifier("email", "ok@example.de"), identifier("phone", &format!("0049{secret}"))],
                idempotency_key: String::new(),
            },
            "identifiers[1].value",
        ),
        (
            "unknown identifier kind",
            gw::RegisterRequest {
                jurisdiction: "DE".into(),
                identifiers: vec![identifier(secret, "x")],
                idempotency_key: String::new(),
            },
            "identifiers[0].kind",
        ),
    ];
    for (name, request, field) in register_cases {
        assert_invalid_field(name, client.register(request).await.expect_err(name), field, secret);
    }

    let known = || by_identifier("email", "known@example.fr");
    let decide_cases: Vec<(&str, gw::DecideRequest, &str)> = vec![
        ("empty request", gw::DecideRequest::default(), "purpose"),
        (
            "unknown purpose",
            gw::DecideRequest {
                subject: known(),
                purpose: secret.into(),
                channel: "email".into(),
                at: None,
                ..Default::default()
            },
            "purpose",
        ),
        (
            "unknown channel",
            gw::DecideRequest {
                subject: known(),
                purpose: "marketing".into(),
                channel: secret.into(),
                at: None,
                ..Default::default()
            },
            "channel",
        ),
        (
            "no subject",
            gw::DecideRequest {
                subject: None,
                purpose: "marketing".into(),
                channel: "email".into(),
                at: None,
                ..Default::default()
            },
            "subject",
        ),
        (
            "malformed email",
            gw::DecideRequest {
                subject: by_identifier("email", secret),
                purpose: "marketing".into(),
                channel: "email".into(),
                at: None,
                ..Default::default()
            },
            "subject.identifier.value",
        ),
        (
            "malformed phone",
            gw::DecideRequest {
                subject: by_identifier("phone", secret),
                purpose: "marketing".into(),
                channel: "email".into(),
                at: None,
                ..Default::default()
            },
            "subject.identifier.value",
        ),
        (
            "malformed link",
            gw::DecideRequest {
                subject: Some(gw::SubjectSelector {
                    selector: Some(gw::subject_selector::Selector::Link(secret.into())),
                }),
                purpose: "marketing".into(),
                channel: "email".into(),
                at: None,
                ..Default::default()
            },
            "subject.link",
        ),
    ];
    for (name, request, field) in decide_cases {
        assert_invalid_field(name, client.decide(request).await.expect_err(name), field, secret);
    }

    let consent_cases: Vec<(&str, gw::RecordConsentRequest, &str)> = vec![
        ("empty request", gw::RecordConsentRequest::default(), "purpose"),
        (
            "unknown channel",
            gw::RecordConsentRequest {
                subject: known(),
                purpose: "marketing".into(),
                channels: vec!["email".into(), secret.into()],
                action: common::ConsentAction::Grant as i32,
                ..Default::default()
            },
            "channels[1]",
        ),
        (
            "no action",
            gw::RecordConsentRequest {
                subject: known(),
                purpose: "marketing".into(),
                channels: vec!["email".into()],
                ..Default::default()
            },
            "action",
        ),
        (
            "oversized evidence",
            gw::RecordConsentRequest {
                subject: known(),
                purpose: "marketing".into(),
                channels: vec!["email".into()],
                action: common::ConsentAction::Grant as i32,
                evidence: Some(common::Evidence { notice_version: secret.repeat(100), ..Default::default() }),
                ..Default::default()
            },
            "evidence.notice_version",
        ),
        (
            "future capture",
            gw::RecordConsentRequest {
                subject: known(),
                purpose: "marketing".into(),
                channels: vec!["email".into()],
                action: common::ConsentAction::Grant as i32,
                captured_at: Some(domicile_proto::prost_types::Timestamp { seconds: 4_000_000_000, nanos: 0 }),
                ..Default::default()
            },
            "captured_at",
        ),
    ];
    for (name, request, field) in consent_cases {
        assert_invalid_field(name, client.record_consent(request).await.expect_err(name), field, secret);
    }

    // Oversized payloads are refused before they reach any handler.
    let huge = identifier("email", &format!("{}@example.com", "a".repeat(200_000)));
    let status = client
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![huge],
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Unknown subject and a country without a pack fail closed, not open.
    let status = client
        .decide(gw::DecideRequest {
            subject: by_identifier("email", "stranger@example.com"),
            purpose: "marketing".into(),
            channel: "email".into(),
            at: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .register(gw::RegisterRequest {
            jurisdiction: "JP".into(),
            identifiers: vec![identifier("email", "jp@example.jp")],
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "JP subjects live in ap-northeast, which this cluster lacks: refused"
    );

    // Consent records for a valid subject with no consent ledger change keep the ledger empty:
    // the FR subject's decisions still carry no consent.
    let d = decide(&mut client, known(), "marketing", "email").await;
    assert_eq!(effect(&d), common::Effect::Deny);
    assert!(d.explanation.contains("no consent"), "{}", d.explanation);
    assert_eq!(counts().await, before, "bad input wrote nothing on any node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_refuse_callers_without_a_cluster_certificate() {
    let cluster = ScenarioCluster::start(BIN, &["eu-central"]).await.expect("cluster starts");
    let eu = region("eu-central");
    let addr = cluster.node_addr(&eu).unwrap();
    let ca = std::fs::read(cluster.dir().join("pki/ca.pem")).unwrap();

    // With a cluster certificate: served.
    let mut good = cluster.node(&eu).await.unwrap();
    assert_eq!(good.info(node::InfoRequest {}).await.unwrap().into_inner().region, "eu-central");

    // No client certificate at all. Under TLS 1.3 the refusal surfaces on the first RPC.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name(eu.node_server_name());
    let result = async {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?.connect().await?;
        let mut client = domicile_cluster_tests::pb::node::v1::regional_node_client::RegionalNodeClient::new(channel);
        Ok::<_, anyhow::Error>(client.info(node::InfoRequest {}).await?)
    }
    .await;
    assert!(result.is_err(), "a caller without a certificate was served");

    // A certificate from another CA.
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = domicile_runtime::pki::ClusterPki::open_or_create(foreign_dir.path()).unwrap();
    let intruder = domicile_runtime::identity::CallerIdentity::new(
        "intruder",
        eu.clone(),
        &domicile_runtime::identity::Scope::ALL,
    )
    .unwrap();
    let mut foreign_files = foreign.caller(&intruder).unwrap();
    foreign_files.ca = cluster.dir().join("pki/ca.pem"); // trusts the real server, presents a foreign identity
    let result = async {
        let channel =
            domicile_cluster_tests::channel(&addr.to_string(), &foreign_files, &eu.node_server_name()).await?;
        let mut client = domicile_cluster_tests::pb::node::v1::regional_node_client::RegionalNodeClient::new(channel);
        Ok::<_, anyhow::Error>(client.info(node::InfoRequest {}).await?)
    }
    .await;
    assert!(result.is_err(), "a caller with a foreign certificate was served");

    // A valid cluster caller of another region must go through a gateway.
    let us_operator = domicile_runtime::identity::CallerIdentity::new(
        "us-operator",
        region("us-east"),
        &domicile_runtime::identity::Scope::ALL,
    )
    .unwrap();
    let us_files = cluster.pki().unwrap().caller(&us_operator).unwrap();
    let channel = domicile_cluster_tests::channel(&addr.to_string(), &us_files, &eu.node_server_name()).await.unwrap();
    let status = domicile_cluster_tests::pb::node::v1::regional_node_client::RegionalNodeClient::new(channel)
        .info(node::InfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // A node certificate names its region: dialling eu-central while expecting us-east fails.
    let operator = domicile_runtime::identity::CallerIdentity::new(
        "operator",
        eu.clone(),
        &domicile_runtime::identity::Scope::ALL,
    )
    .unwrap();
    let tls = cluster.pki().unwrap().caller(&operator).unwrap();
    let result = domicile_cluster_tests::channel(&addr.to_string(), &tls, &region("us-east").node_server_name()).await;
    assert!(result.is_err(), "a node answered for another region's name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_serves_health_and_reflection() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let cluster = ScenarioCluster::start(BIN, &["eu-central", "us-east"]).await.expect("cluster starts");
    let mut channels = vec![("gateway", cluster.gateway_channel().await.unwrap(), "domicile.gateway.v1.Domicile")];
    for r in ["eu-central", "us-east"] {
        channels.push((r, cluster.node_channel(&region(r)).await.unwrap(), "domicile.node.v1.RegionalNode"));
    }
    for (name, channel, expected) in channels {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::once(request))
            .await
            .expect("reflection answers")
            .into_inner();
        let reply = stream.message().await.unwrap().expect("one reply");
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("{name}: unexpected reply")
        };
        let services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(services.iter().any(|s| s == expected), "{name} lists {services:?}");
        assert!(services.iter().any(|s| s == "grpc.health.v1.Health"), "{name} lists {services:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_of_the_node() {
    let mut cluster = TestCluster::start_on_env_store(BIN, &["eu-central"]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let eu = region("eu-central");
    let mut people = Vec::new();
    for i in 0..20 {
        let email = format!("durable-{i}@example.de");
        client
            .register(gw::RegisterRequest {
                jurisdiction: "DE".into(),
                identifiers: vec![identifier("email", &email)],
                idempotency_key: String::new(),
            })
            .await
            .expect("register");
        record(&mut client, by_identifier("email", &email), common::ConsentAction::Grant, "marketing", "email").await;
        people.push(email);
    }
    // The last acknowledged write is a withdrawal; kill -9 right after its acknowledgement.
    record(&mut client, by_identifier("email", &people[0]), common::ConsentAction::Withdraw, "marketing", "email")
        .await;
    cluster.cluster.kill_node(&eu).await.unwrap();

    // While the region is down its subjects get UNAVAILABLE, never an allow.
    let status = client
        .decide(gw::DecideRequest {
            subject: by_identifier("email", &people[1]),
            purpose: "marketing".into(),
            channel: "email".into(),
            at: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    cluster.cluster.restart_node(&eu).await.expect("node restarts on its data");
    let d = decide(&mut client, by_identifier("email", &people[0]), "marketing", "email").await;
    assert_eq!(effect(&d), common::Effect::Deny, "the acknowledged withdrawal survived kill -9");
    for email in &people[1..] {
        let d = decide(&mut client, by_identifier("email", email), "marketing", "email").await;
        assert_eq!(effect(&d), common::Effect::Allow, "the acknowledged grant survived kill -9");
    }
    let info = cluster.node(&eu).await.unwrap().info(node::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.subjects, 20);
}

/// A bad-input refusal: INVALID_ARGUMENT naming `field`, never echoing `secret`.
fn assert_invalid_field(name: &str, status: tonic::Status, field: &str, secret: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
    assert!(status.message().contains(&format!("`{field}`")), "{name}: message names `{field}`: {}", status.message());
    assert!(!status.message().contains(secret), "{name}: message echoes the value");
}
