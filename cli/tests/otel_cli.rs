//! OTLP export end to end: a real local cluster exports to an in-test OTLP receiver (traces and
//! metrics).
//!
//! - One decide yields a gateway span and a node span in the same trace, with no personal data
//!   in any span.
//! - Metrics: decisions by role, effect, region and pack version, RPC durations, the gateway's
//!   directory size and watch lag arrive; and personal data seeded through the gateway (emails,
//!   phones, a name in an interaction, consent evidence) appears in no metric, span or log line.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers; clippy.toml only exempts the #[test] fns themselves"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domicile_cli::cluster::{ClusterOptions, LocalCluster};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::gateway::v1 as gw;
use domicile_proto::prost::Message as _;
use domicile_types::RegionId;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use tonic::{Request, Response, Status};

const EMAIL: &str = "otel.probe.person@example.de";

/// (service name, trace id, span attributes as `key=value`) of every span received.
type Spans = Arc<Mutex<Vec<(String, Vec<u8>, Vec<String>)>>>;

/// Latest value of every metric point: (service, resource region, metric, attributes) → value
/// (sums and gauges: the value; histograms: the count).
type PointMap = BTreeMap<(String, String, String, BTreeMap<String, String>), f64>;
type Points = Arc<Mutex<PointMap>>;

#[derive(Clone, Default)]
struct Receiver {
    spans: Spans,
    raw: Arc<Mutex<String>>,
    /// Every export request as received on the wire (encoded again), spans and metrics.
    span_bytes: Arc<Mutex<Vec<u8>>>,
    metric_bytes: Arc<Mutex<Vec<u8>>>,
    points: Points,
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> String {
    attributes.iter().find(|a| a.key == key).map(|a| text(a.value.as_ref())).unwrap_or_default()
}

fn attribute_map(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes.iter().map(|a| (a.key.clone(), text(a.value.as_ref()))).collect()
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let request = request.into_inner();
        self.metric_bytes.lock().unwrap().extend(request.encode_to_vec());
        let mut points = self.points.lock().unwrap();
        for resource in &request.resource_metrics {
            let attributes = resource.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default();
            let service = attribute(attributes, "service.name");
            let region = attribute(attributes, "domicile.region");
            for scope in &resource.scope_metrics {
                for metric in &scope.metrics {
                    let mut put = |attributes: &[KeyValue], value: f64| {
                        let key = (service.clone(), region.clone(), metric.name.clone(), attribute_map(attributes));
                        points.insert(key, value);
                    };
                    match &metric.data {
                        Some(Data::Sum(sum)) => sum.data_points.iter().for_each(|p| put(&p.attributes, number(p))),
                        Some(Data::Gauge(gauge)) => {
                            gauge.data_points.iter().for_each(|p| put(&p.attributes, number(p)));
                        }
                        Some(Data::Histogram(histogram)) => {
                            histogram.data_points.iter().for_each(|p| put(&p.attributes, p.count as f64));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

fn number(point: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint) -> f64 {
    match point.value {
        Some(number_data_point::Value::AsInt(n)) => n as f64,
        Some(number_data_point::Value::AsDouble(x)) => x,
        None => f64::NAN,
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let request = request.into_inner();
        self.raw.lock().unwrap().push_str(&format!("{request:?}"));
        self.span_bytes.lock().unwrap().extend(request.encode_to_vec());
        let mut spans = self.spans.lock().unwrap();
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let attributes = span
                        .attributes
                        .iter()
                        .map(|a| match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(Value::StringValue(s)) => format!("{}={s}", a.key),
                            other => format!("{}={other:?}", a.key),
                        })
                        .chain(span.links.iter().map(|l| format!("link={}", hex(&l.trace_id))))
                        .collect();
                    spans.push((service.clone(), span.trace_id, attributes));
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `cluster` spawns its binary with the test's environment; a wrapper adds the OTLP settings
/// and `extra` variables (setting this process's environment would need `unsafe`).
fn wrapper(dir: &Path, endpoint: &str, extra: &[(&str, &str)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("domicile-with-otlp.sh");
    let extra: String = extra.iter().map(|(k, v)| format!("export {k}='{v}'\n")).collect();
    let script = format!(
        "#!/bin/sh\nexport DOMICILE_NODE_OTLP_ENDPOINT={endpoint}\nexport DOMICILE_GATEWAY_OTLP_ENDPOINT={endpoint}\n\
         export OTEL_BSP_SCHEDULE_DELAY=100\n{extra}exec {} \"$@\"\n",
        env!("CARGO_BIN_EXE_domicile")
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

async fn cli(dir: &Path, args: &[&str]) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_domicile"))
        .args(args)
        .arg("--cluster-dir")
        .arg(dir)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// An OTLP/gRPC receiver for traces and metrics on a free port; returns its endpoint.
async fn start_receiver() -> (Receiver, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let receiver = Receiver::default();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .add_service(MetricsServiceServer::new(receiver.clone()))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);
    (receiver, endpoint)
}

async fn start_cluster(dir: &Path, endpoint: &str, extra: &[(&str, &str)]) -> LocalCluster {
    let regions = ["eu-central", "us-east", "sa-east"].map(|r| RegionId::parse(r).unwrap()).to_vec();
    let options = ClusterOptions {
        packs_reload_ms: 0,
        ..ClusterOptions::new(dir.join("cluster"), root().join("policy-packs"), regions, wrapper(dir, endpoint, extra))
    };
    LocalCluster::start(options).await.unwrap()
}

/// A service's own trace id, sent with `traceparent` (flags: not sampled).
const CALLERS_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// One decide is one trace across gateway and node; a service's `traceparent` starts none of it.
/// The gateway's span links to the service's, but every span, the node's in another process
/// included, is in a trace of the gateway's own, and is exported though the service marked its
/// trace not sampled: a caller's 16 bytes do not travel to the nodes, nor decide what is traced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_decide_is_one_trace_across_gateway_and_node() {
    let (receiver, endpoint) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path(), &endpoint, &[]).await;
    let cluster_dir = cluster.dir().to_owned();
    let cluster_dir = cluster_dir.to_str().unwrap();
    cli(Path::new(cluster_dir), &["register", "--jurisdiction", "DE", "--email", EMAIL]).await;
    let mut client = domicile_cli::client::connect_to_cluster(Path::new(cluster_dir)).await.unwrap();
    let mut request = Request::new(gw::DecideRequest {
        subject: select("email", EMAIL),
        purpose: "marketing".into(),
        channel: "email".into(),
        ..Default::default()
    });
    let traceparent = format!("00-{CALLERS_TRACE}-b7ad6b7169203331-00");
    request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    client.decide(request).await.unwrap();

    // The decide's gateway span, linked to the service's, then a node span in the same trace.
    let deadline = Instant::now() + Duration::from_secs(20);
    let shared = loop {
        {
            let spans = receiver.spans.lock().unwrap();
            let decides: Vec<&Vec<u8>> = spans
                .iter()
                .filter(|(service, _, attrs)| {
                    service == "domicile-gateway"
                        && attrs.iter().any(|a| a.ends_with("/Decide"))
                        && attrs.contains(&format!("link={CALLERS_TRACE}"))
                })
                .map(|(_, trace, _)| trace)
                .collect();
            let node_span =
                spans.iter().find(|(service, trace, _)| service == "domicile-node" && decides.contains(&trace));
            if let Some((_, trace, attrs)) = node_span {
                break (trace.clone(), attrs.clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "no node span shares a trace with the gateway's Decide span: {:?}",
            receiver.spans.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(shared.0.len(), 16);
    assert_ne!(hex(&shared.0), CALLERS_TRACE);
    assert!(shared.1.iter().any(|a| a.starts_with("rpc=/domicile.node.v1.")), "{:?}", shared.1);
    let in_callers_trace = receiver.spans.lock().unwrap().iter().filter(|(_, t, _)| hex(t) == CALLERS_TRACE).count();
    assert_eq!(in_callers_trace, 0, "no span continues the service's trace");

    cluster.stop().await;
    // Nothing personal in any span: the identifier and its parts appear nowhere.
    let raw = receiver.raw.lock().unwrap();
    for needle in [EMAIL, "otel.probe.person"] {
        assert!(!raw.contains(needle), "personal data in exported spans");
    }
}

// Personal data seeded through the gateway by the metrics test. Every value carries a marker
// (`otelseed`, the surname, the phone digits) that is searched for, case-insensitively, in every
// metric payload, span and log line.
const DE_EMAIL: &str = "annegret.otelseed@example.de";
const DE_PHONE: &str = "+4915112345678";
const US_EMAIL: &str = "bob.otelseed@example.com";
const US_CRM: &str = "crm-otelseed-88412";
const BR_EMAIL: &str = "carla.otelseed@example.com.br";
const UNKNOWN_EMAIL: &str = "nobody.otelseed@example.org";
const SURNAME: &str = "Vollmerhausen";
const REFERENCE: &str = "ticket-Vollmerhausen-otelseed-4711";
const NOTICE: &str = "privacy-notice-otelseed-v3";
const SOURCE_SYSTEM: &str = "otelseed-preference-centre";
const MARKERS: [&str; 4] = ["otelseed", "vollmerhausen", "annegret", "4915112345678"];

/// Attribute keys a Domicile metric may carry: all of them name closed, non-personal sets.
const ALLOWED_KEYS: [&str; 7] = ["role", "effect", "region", "pack_version", "code", "rpc", "kind"];

fn select(kind: &str, value: &str) -> Option<gw::SubjectSelector> {
    Some(gw::SubjectSelector {
        selector: Some(gw::subject_selector::Selector::Identifier(common::Identifier {
            kind: kind.into(),
            value: value.into(),
        })),
    })
}

fn identifier(kind: &str, value: &str) -> common::Identifier {
    common::Identifier { kind: kind.into(), value: value.into() }
}

fn evidence() -> Option<common::Evidence> {
    Some(common::Evidence {
        notice_version: NOTICE.into(),
        capture_channel: "web".into(),
        source_system: SOURCE_SYSTEM.into(),
        double_opt_in_confirmed: true,
        signal: None,
        ..Default::default()
    })
}

fn effect_name(decision: &common::Decision) -> &'static str {
    match common::Effect::try_from(decision.effect) {
        Ok(common::Effect::Allow) => "allow",
        Ok(common::Effect::Deny) => "deny",
        _ => "unspecified",
    }
}

/// (region, effect, pack_version) → decisions the gateway returned.
type Tally = BTreeMap<(String, String, String), u64>;

fn tally(tally: &mut Tally, decision: &common::Decision) {
    let pack = decision.pack.as_ref().unwrap();
    let key = (decision.region.clone(), effect_name(decision).to_owned(), format!("{}@{}", pack.id, pack.version));
    *tally.entry(key).or_default() += 1;
}

fn lowercase(bytes: &[u8]) -> Vec<u8> {
    bytes.to_ascii_lowercase()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.to_ascii_lowercase();
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every attribute of every Domicile metric comes from a closed, non-personal set.
fn assert_closed_attributes(points: &PointMap, decided: &Tally) {
    for (service, _, metric, attributes) in points.keys() {
        if !metric.starts_with("domicile.") {
            continue;
        }
        for (key, value) in attributes {
            assert!(ALLOWED_KEYS.contains(&key.as_str()), "{service} {metric}: attribute `{key}`");
            let closed = match key.as_str() {
                "role" => ["gateway", "node"].contains(&value.as_str()),
                "effect" => ["allow", "deny", "error", "unspecified"].contains(&value.as_str()),
                "region" => ["eu-central", "us-east", "sa-east"].contains(&value.as_str()),
                "pack_version" => decided.keys().any(|(_, _, pack)| pack == value),
                "code" => value.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "rpc" => value == "other" || value.starts_with("/domicile.") || value.starts_with("/grpc."),
                // Rights request kinds (`domicile.rights.overdue`).
                "kind" => {
                    ["access", "rectification", "erasure", "restriction", "portability"].contains(&value.as_str())
                }
                _ => false,
            };
            assert!(closed, "{service} {metric}: `{key}` = {value:?} is not from a closed set");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_arrive_and_no_personal_data_reaches_metrics_spans_or_logs() {
    let (receiver, endpoint) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    // Short export interval; debug logs from Domicile's own crates so that every log line a
    // decision, a registration or a consent change can produce is searched.
    let extra = [
        ("DOMICILE_NODE_OTLP_METRICS_INTERVAL_MS", "200"),
        ("DOMICILE_GATEWAY_OTLP_METRICS_INTERVAL_MS", "200"),
        ("DOMICILE_LOG", "info,domicile_node=debug,domicile_gateway=debug,domicile_runtime=debug"),
    ];
    let mut cluster = start_cluster(dir.path(), &endpoint, &extra).await;
    let cluster_dir = cluster.dir().to_owned();
    let mut client = domicile_cli::client::connect_to_cluster(&cluster_dir).await.unwrap();

    // Seed: three subjects in three regions, an interaction naming a person, consent evidence.
    let mut links = Vec::new();
    let mut subject_refs = Vec::new();
    for (jurisdiction, identifiers) in [
        ("DE", vec![identifier("email", DE_EMAIL), identifier("phone", DE_PHONE)]),
        ("US", vec![identifier("email", US_EMAIL), identifier("crm_account", US_CRM)]),
        ("BR", vec![identifier("email", BR_EMAIL)]),
    ] {
        let reply = client
            .register(gw::RegisterRequest {
                jurisdiction: jurisdiction.into(),
                identifiers,
                idempotency_key: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        links.extend(reply.links);
        subject_refs.push(reply.subject_ref);
    }
    client
        .record_interaction(gw::RecordInteractionRequest {
            subject: select("phone", DE_PHONE),
            channel: "voice".into(),
            occurred_at: None,
            kind: "call".into(),
            intent: "billing.dispute".into(),
            summary: format!("Annegret {SURNAME} called from {DE_PHONE} about an invoice; reply to {DE_EMAIL}"),
            reference: REFERENCE.into(),
            open: true,
            idempotency_key: String::new(),
        })
        .await
        .unwrap();

    // Decisions: deny and allow in eu-central and us-east, one in sa-east, unary and streamed,
    // and failures (unknown subject).
    let mut decided = Tally::new();
    let mut unary_ok = 0;
    let decide = async |client: &mut domicile_proto::pb::gateway::v1::domicile_client::DomicileClient<_>,
                        kind: &str,
                        value: &str| {
        client
            .decide(gw::DecideRequest {
                subject: select(kind, value),
                purpose: "marketing".into(),
                channel: "email".into(),
                at: None,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().decision.unwrap())
    };
    let consent = |kind: &str, value: &str, action: common::ConsentAction| gw::RecordConsentRequest {
        subject: select(kind, value),
        purpose: "marketing".into(),
        channels: vec!["email".into()],
        action: action as i32,
        evidence: evidence(),
        captured_at: None,
        expires_at: None,
        idempotency_key: String::new(),
    };
    let mut expect = |decision: common::Decision, effect: &str, decided: &mut Tally| {
        assert_eq!(effect_name(&decision), effect, "{decision:?}");
        tally(decided, &decision);
        unary_ok += 1;
    };
    expect(decide(&mut client, "email", DE_EMAIL).await.unwrap(), "deny", &mut decided);
    client.record_consent(consent("email", DE_EMAIL, common::ConsentAction::Grant)).await.unwrap();
    expect(decide(&mut client, "phone", DE_PHONE).await.unwrap(), "allow", &mut decided);
    expect(decide(&mut client, "email", US_EMAIL).await.unwrap(), "allow", &mut decided);
    client.record_consent(consent("crm_account", US_CRM, common::ConsentAction::Withdraw)).await.unwrap();
    expect(decide(&mut client, "email", US_EMAIL).await.unwrap(), "deny", &mut decided);
    let br = decide(&mut client, "email", BR_EMAIL).await.unwrap();
    let br_effect = effect_name(&br);
    expect(br, br_effect, &mut decided);
    let missing = decide(&mut client, "email", UNKNOWN_EMAIL).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");

    let items: Vec<gw::DecideStreamItem> = [("email", DE_EMAIL), ("crm_account", US_CRM), ("email", BR_EMAIL)]
        .into_iter()
        .chain([("email", UNKNOWN_EMAIL)])
        .enumerate()
        .map(|(id, (kind, value))| gw::DecideStreamItem {
            id: id as u64,
            subject: select(kind, value),
            purpose: "marketing".into(),
            channel: "email".into(),
            ..Default::default()
        })
        .collect();
    let mut results = client.decide_stream(tokio_stream::iter(items)).await.unwrap().into_inner();
    let mut stream_errors = 0;
    while let Some(result) = results.message().await.unwrap() {
        match result.result.unwrap() {
            gw::decide_stream_result::Result::Decision(decision) => tally(&mut decided, &decision),
            gw::decide_stream_result::Result::Error(error) => {
                assert_eq!(error.code, tonic::Code::NotFound as i32, "{error:?}");
                stream_errors += 1;
            }
        }
    }
    assert_eq!(stream_errors, 1);
    let regions: BTreeSet<&str> = decided.keys().map(|(region, _, _)| region.as_str()).collect();
    assert_eq!(regions, BTreeSet::from(["eu-central", "sa-east", "us-east"]), "{decided:?}");

    // The metrics arrive: decisions from gateway and nodes, durations, directory size, lag.
    let point = |points: &PointMap, service: &str, metric: &str, want: &[(&str, &str)]| {
        points
            .iter()
            .filter(|((s, _, m, attributes), _)| {
                s == service
                    && m == metric
                    && want.iter().all(|(k, v)| attributes.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, value)| *value)
            .sum::<f64>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let started = Instant::now();
    loop {
        let missing: Vec<String> = {
            let points = receiver.points.lock().unwrap();
            let mut missing = Vec::new();
            for ((region, effect, pack), n) in &decided {
                for (service, role) in [("domicile-gateway", "gateway"), ("domicile-node", "node")] {
                    let want =
                        [("role", role), ("effect", effect.as_str()), ("region", region), ("pack_version", pack)];
                    let got = point(&points, service, "domicile.decisions", &want);
                    if got < *n as f64 {
                        missing.push(format!("{role} {region} {effect} {pack}: {got} < {n}"));
                    }
                }
            }
            let failed = [("role", "gateway"), ("effect", "error"), ("code", "NOT_FOUND")];
            if point(&points, "domicile-gateway", "domicile.decisions", &failed) < 2.0 {
                missing.push("gateway NOT_FOUND decisions < 2".into());
            }
            let gateway_decide = [("rpc", "/domicile.gateway.v1.Domicile/Decide"), ("code", "OK"), ("role", "gateway")];
            if point(&points, "domicile-gateway", "domicile.rpc.duration", &gateway_decide) < unary_ok as f64 {
                missing.push("gateway Decide OK durations".into());
            }
            let gateway_miss = [("rpc", "/domicile.gateway.v1.Domicile/Decide"), ("code", "NOT_FOUND")];
            if point(&points, "domicile-gateway", "domicile.rpc.duration", &gateway_miss) < 1.0 {
                missing.push("gateway Decide NOT_FOUND durations".into());
            }
            // Nodes answer unary decides with `Decide` or, when the gateway coalesces them,
            // `DecideBatch`; every region decided something.
            for region in ["eu-central", "us-east", "sa-east"] {
                let calls: f64 =
                    ["/domicile.node.v1.RegionalNode/Decide", "/domicile.node.v1.RegionalNode/DecideBatch"]
                        .into_iter()
                        .map(|rpc| {
                            let want = [("rpc", rpc), ("code", "OK"), ("role", "node"), ("region", region)];
                            point(&points, "domicile-node", "domicile.rpc.duration", &want)
                        })
                        .sum();
                if calls < 1.0 {
                    missing.push(format!("node decide durations of {region}"));
                }
            }
            let directory = point(&points, "domicile-gateway", "domicile.directory.links", &[]);
            if directory != links.len() as f64 {
                missing.push(format!("directory links {directory} != {}", links.len()));
            }
            // Every node reports its overdue rights requests per kind (none here).
            let overdue_kinds = points
                .keys()
                .filter(|(s, _, m, a)| s == "domicile-node" && m == "domicile.rights.overdue" && a.contains_key("kind"))
                .count();
            if overdue_kinds < 5 {
                missing.push(format!("overdue rights requests by kind: {overdue_kinds} series"));
            }
            for region in ["eu-central", "us-east", "sa-east"] {
                let lag = points.iter().find(|((s, _, m, a), _)| {
                    s == "domicile-gateway"
                        && m == "domicile.watch.lag"
                        && a.get("region").map(String::as_str) == Some(region)
                });
                match lag {
                    Some((_, seconds)) if *seconds < 10.0 => {}
                    other => missing.push(format!("watch lag of {region}: {other:?}")),
                }
            }
            missing
        };
        // Checked at every poll, so a personal value in a label fails at once and names itself.
        let snapshot = receiver.points.lock().unwrap().clone();
        assert_closed_attributes(&snapshot, &decided);
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "metrics incomplete after 30 s: {missing:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("metrics complete {:?} after the last request", started.elapsed());

    // Stop gracefully: the processes flush their last spans and metrics and close their logs.
    cluster.stop().await;
    let metric_bytes = lowercase(&receiver.metric_bytes.lock().unwrap());
    let span_bytes = lowercase(&receiver.span_bytes.lock().unwrap());
    let span_text = lowercase(receiver.raw.lock().unwrap().as_bytes());
    let mut log_bytes = Vec::new();
    for entry in std::fs::read_dir(cluster_dir.join("logs")).unwrap() {
        log_bytes.extend(lowercase(&std::fs::read(entry.unwrap().path()).unwrap()));
    }
    // The haystacks hold what they should, so a miss below means something.
    assert!(contains(&metric_bytes, "domicile.decisions") && contains(&metric_bytes, "pack_version"));
    assert!(contains(&span_bytes, "/domicile.gateway.v1.domicile/decide"));
    assert!(contains(&log_bytes, "pack=de@") && contains(&log_bytes, "region directory loaded"));

    let mut needles: Vec<String> = MARKERS.iter().map(|m| (*m).to_owned()).collect();
    needles.extend(
        [DE_EMAIL, DE_PHONE, US_EMAIL, US_CRM, BR_EMAIL, UNKNOWN_EMAIL, REFERENCE, NOTICE, SOURCE_SYSTEM]
            .map(String::from),
    );
    for needle in &needles {
        assert!(!contains(&metric_bytes, needle), "personal data in exported metrics: {needle}");
        assert!(!contains(&span_bytes, needle) && !contains(&span_text, needle), "personal data in spans: {needle}");
        assert!(!contains(&log_bytes, needle), "personal data in logs: {needle}");
    }
    // Metric labels are narrower than logs and spans: not even pseudonyms.
    let pseudonyms = links.iter().chain(&subject_refs).map(|p| p.rsplit(['/', '_']).next().unwrap().to_owned());
    for pseudonym in pseudonyms {
        assert_eq!(pseudonym.len(), 32, "{pseudonym}");
        assert!(!contains(&metric_bytes, &pseudonym), "a link or subject ref in exported metrics");
    }
}
