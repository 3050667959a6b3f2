//! OTLP trace export end to end: a real local cluster exports to an in-test OTLP receiver, and one
//! decide yields a gateway span and a node span in the same trace, with no personal data in any
//! span.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers; clippy.toml only exempts the #[test] fns themselves"
)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domicile_cli::cluster::{ClusterOptions, LocalCluster};
use domicile_types::RegionId;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tonic::{Request, Response, Status};

const EMAIL: &str = "otel.probe.person@example.de";

/// (service name, trace id, span attributes as `key=value`) of every span received.
type Spans = Arc<Mutex<Vec<(String, Vec<u8>, Vec<String>)>>>;

#[derive(Clone, Default)]
struct Receiver {
    spans: Spans,
    raw: Arc<Mutex<String>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let request = request.into_inner();
        self.raw.lock().unwrap().push_str(&format!("{request:?}"));
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
                        .collect();
                    spans.push((service.clone(), span.trace_id, attributes));
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `cluster` spawns its binary with the test's environment; a wrapper adds the OTLP settings
/// (setting this process's environment would need `unsafe`).
fn wrapper(dir: &Path, endpoint: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("domicile-with-otlp.sh");
    let script = format!(
        "#!/bin/sh\nexport DOMICILE_NODE_OTLP_ENDPOINT={endpoint}\nexport DOMICILE_GATEWAY_OTLP_ENDPOINT={endpoint}\n\
         export OTEL_BSP_SCHEDULE_DELAY=100\nexec {} \"$@\"\n",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_decide_is_one_trace_across_gateway_and_node() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let receiver = Receiver::default();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);

    let dir = tempfile::tempdir().unwrap();
    let options = ClusterOptions {
        dir: dir.path().join("cluster"),
        packs_dir: root().join("policy-packs"),
        regions: ["eu-central", "us-east", "sa-east"].map(|r| RegionId::parse(r).unwrap()).to_vec(),
        gateway_listen: "127.0.0.1:0".parse().unwrap(),
        binary: wrapper(dir.path(), &endpoint),
        packs_trust: None,
        packs_reload_ms: 0,
    };
    let mut cluster = LocalCluster::start(options).await.unwrap();
    let cluster_dir = cluster.dir().to_owned();
    let cluster_dir = cluster_dir.to_str().unwrap();
    cli(Path::new(cluster_dir), &["register", "--jurisdiction", "DE", "--email", EMAIL]).await;
    cli(Path::new(cluster_dir), &["decide", "--email", EMAIL, "--purpose", "marketing", "--channel", "email"]).await;

    // The decide's gateway span, then a node span in the same trace.
    let deadline = Instant::now() + Duration::from_secs(20);
    let shared = loop {
        {
            let spans = receiver.spans.lock().unwrap();
            let decides: Vec<&Vec<u8>> = spans
                .iter()
                .filter(|(service, _, attrs)| {
                    service == "domicile-gateway" && attrs.iter().any(|a| a.ends_with("/Decide"))
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
    assert!(shared.1.iter().any(|a| a.starts_with("rpc=/domicile.node.v1.")), "{:?}", shared.1);

    cluster.stop().await;
    // Nothing personal in any span: the identifier and its parts appear nowhere.
    let raw = receiver.raw.lock().unwrap();
    for needle in [EMAIL, "otel.probe.person"] {
        assert!(!raw.contains(needle), "personal data in exported spans");
    }
}
