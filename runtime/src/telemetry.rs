//! Structured logs on stderr (stdout is reserved for the ready line and command output), and
//! optional OTLP export of traces (with W3C trace context between gateway and nodes) and of
//! metrics (`crate::metrics`).
//!
//! Log fields and span attributes are chosen at call sites from an allow-list of non-personal
//! values: regions, pack ids, rule ids, purposes, channels, status codes, links, subject refs and
//! RPC method paths. Identifiers and consent evidence are never logged or traced. Metric
//! attributes are narrower still: no links or subject refs either.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{Link, SpanKind, TraceContextExt as _, TraceId, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample, Span, SpanData,
    SpanProcessor,
};
use tonic::codegen::http;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Environment variable holding the log filter, e.g. `info` or `domicile_node=debug`.
pub const LOG_ENV: &str = "DOMICILE_LOG";

/// The exporter, once a configuration names an endpoint. Logging starts before the
/// configuration is read, and a layer added later through `reload` cannot be downcast to (which
/// trace-context propagation needs), so the OpenTelemetry layer is always installed and only
/// its processor and sampler look here.
static EXPORT: OnceLock<BatchSpanProcessor> = OnceLock::new();
/// Keeps the provider the always-installed layer's tracer belongs to.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Forwards to [`EXPORT`] once it is set; drops spans before.
#[derive(Debug)]
struct DeferredExport;

impl SpanProcessor for DeferredExport {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        if let Some(export) = EXPORT.get() {
            export.on_start(span, cx);
        }
    }

    fn on_end(&self, span: SpanData) {
        if let Some(export) = EXPORT.get() {
            export.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        EXPORT.get().map_or(Ok(()), |export| export.force_flush())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        EXPORT.get().map_or(Ok(()), |export| export.shutdown_with_timeout(timeout))
    }
}

/// Samples (parent-based, else always) only while export is on, so spans cost little when off.
#[derive(Debug, Clone)]
struct SampleWhenExporting;

impl ShouldSample for SampleWhenExporting {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[opentelemetry::KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if EXPORT.get().is_some() {
            return Sampler::ParentBased(Box::new(Sampler::AlwaysOn)).should_sample(
                parent_context,
                trace_id,
                name,
                span_kind,
                attributes,
                links,
            );
        }
        SamplingResult {
            decision: SamplingDecision::Drop,
            attributes: Vec::new(),
            trace_state: parent_context.map(|c| c.span().span_context().trace_state().clone()).unwrap_or_default(),
        }
    }
}

/// Installs the global subscriber. `json` selects machine-readable lines.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = PROVIDER.get_or_init(|| {
        SdkTracerProvider::builder().with_span_processor(DeferredExport).with_sampler(SampleWhenExporting).build()
    });
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("domicile"));
    let ansi = std::io::stderr().is_terminal();
    let fmt_json = json.then(|| tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_target(true));
    let fmt_text = (!json)
        .then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(true).with_ansi(ansi));
    // A second init (e.g. in tests) is not an error worth failing for.
    let _ = tracing_subscriber::registry().with(filter).with(otel).with(fmt_json).with(fmt_text).try_init();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("OTLP export was already started in this process")]
    AlreadyStarted,
}

/// Flushes and stops OTLP export when the process ends.
#[derive(Debug)]
pub struct OtlpGuard(());

impl OtlpGuard {
    /// Exports what is buffered (spans, and a last collection of metrics). Runs on a blocking
    /// thread: the SDK's shutdown blocks, and on the async runtime it would starve the very
    /// export it waits for (crate-stack.md §7.5).
    pub async fn shutdown(self) {
        let done = tokio::task::spawn_blocking(|| {
            let metrics = crate::metrics::shutdown();
            EXPORT.get().map_or(Ok(()), |export| export.shutdown()).and(metrics)
        })
        .await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "OTLP exporter did not shut down cleanly");
        }
    }
}

/// Starts exporting spans and metrics over OTLP/gRPC (plaintext or `https://` per `endpoint`) as
/// `service_name`, with `attributes` on the resource (e.g. the region). Metrics carry `role`
/// (`gateway`, `node`) and are exported every `metrics_interval`. Must run inside the Tokio
/// runtime. Export failures are logged by the SDK and never fail requests.
pub fn start_otlp(
    service_name: &'static str,
    role: &'static str,
    endpoint: &str,
    metrics_interval: Duration,
    attributes: &[(&'static str, String)],
) -> Result<OtlpGuard, TelemetryError> {
    if EXPORT.get().is_some() {
        return Err(TelemetryError::AlreadyStarted);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name)
        .with_attributes(attributes.iter().map(|(k, v)| opentelemetry::KeyValue::new(*k, v.clone())))
        .build();
    crate::metrics::start(role, endpoint, metrics_interval, resource.clone())?;
    let mut processor = BatchSpanProcessor::builder(exporter).build();
    processor.set_resource(&resource);
    EXPORT.set(processor).map_err(|_| TelemetryError::AlreadyStarted)?;
    Ok(OtlpGuard(()))
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

/// The method paths a server serves, for its spans: any other path is recorded as `other`, so
/// a caller cannot put text (an email address, say) into an exported trace by asking for it as a
/// path (the metrics do the same, `metrics::RpcMetricsLayer`).
#[derive(Debug, Clone)]
pub struct SpanMethods(std::sync::Arc<std::collections::HashSet<Box<str>>>);

impl SpanMethods {
    pub fn new(paths: impl IntoIterator<Item = String>) -> Self {
        Self(std::sync::Arc::new(paths.into_iter().map(String::into_boxed_str).collect()))
    }

    /// `path` if served, else `other`.
    pub fn label<'a>(&self, path: &'a str) -> &'a str {
        if self.0.contains(path) { path } else { "other" }
    }
}

/// The span of one inbound RPC. Only the method path is recorded, and only a served one: request
/// contents may be personal data.
///
/// It continues the caller's W3C `traceparent` only when the caller is another Domicile
/// component (a gateway or a node, by its certificate: [`crate::identity::PeerNames::is_component`]).
/// A service's trace id is 16 bytes of its own choosing that the span would carry verbatim to the
/// nodes this request calls, in other regions too, past every rule about what crosses a border;
/// and its sampled flag would decide whether the request is traced at all. So a service's
/// request starts a trace of this process's own, with a link to the service's span (kept in the
/// span this process exports, sent to no node).
///
/// With export off and debug logging off there is no span at all: a span per request costs the
/// subscriber a few microseconds (field formatting, span storage) that only traces and debug
/// logs use, on a path that serves tens of thousands of requests per second per core.
pub fn server_span<B>(role: &'static str, request: &http::Request<B>, methods: &SpanMethods) -> tracing::Span {
    if !spans_wanted() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("rpc", otel.kind = "server", role, rpc = %methods.label(request.uri().path()));
    if let Some(remote) = caller_context(request.headers()) {
        let component = crate::identity::peer_certs(request)
            .and_then(|certs| crate::identity::peer_names(certs.leaf()).ok())
            .is_some_and(|names| names.is_component());
        if component {
            // Fails only when no OpenTelemetry layer is installed, i.e. export is off.
            let _ = span.set_parent(Context::new().with_remote_span_context(remote));
        } else {
            span.add_link(remote);
        }
    }
    span
}

/// The caller's trace context from its W3C headers, without its `tracestate`: that is free text
/// of the caller's, which would go on to the nodes this request calls and to the trace
/// collector. The trace and span ids and flags are kept.
fn caller_context(headers: &http::HeaderMap) -> Option<opentelemetry::trace::SpanContext> {
    let extracted = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let remote = extracted.span().span_context().clone();
    remote.is_valid().then(|| {
        opentelemetry::trace::SpanContext::new(
            remote.trace_id(),
            remote.span_id(),
            remote.trace_flags(),
            true,
            opentelemetry::trace::TraceState::default(),
        )
    })
}

/// Whether per-request spans are worth making: traces are exported, or debug logs are on.
pub fn spans_wanted() -> bool {
    EXPORT.get().is_some() || tracing::level_filters::LevelFilter::current() >= tracing::Level::DEBUG
}

/// Adds the current span's W3C trace context to an outbound request (nothing when export is
/// off: the context is then invalid and the propagator writes no header).
pub fn inject_context<B>(mut request: http::Request<B>) -> http::Request<B> {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut HeaderInjector(request.headers_mut()))
    });
    request
}

/// The current span's trace context, carried to work another task does on the request's behalf.
#[derive(Debug, Clone)]
pub struct TraceParent(Context);

/// Captures the current span's trace context (an empty one when export is off).
pub fn trace_parent() -> TraceParent {
    if !spans_wanted() {
        return TraceParent(Context::new());
    }
    TraceParent(tracing::Span::current().context())
}

/// Makes `span` a child of `parent`, so calls made inside it continue the parent's trace.
pub fn continue_trace(span: &tracing::Span, parent: TraceParent) {
    // Fails only when no OpenTelemetry layer is installed, i.e. export is off.
    let _ = span.set_parent(parent.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_name_only_served_methods_and_drop_the_callers_tracestate() {
        let methods = SpanMethods::new(["/domicile.node.v1.RegionalNode/Decide".to_owned()]);
        assert_eq!(methods.label("/domicile.node.v1.RegionalNode/Decide"), "/domicile.node.v1.RegionalNode/Decide");
        assert_eq!(methods.label("/anna@example.com"), "other");
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        headers.insert("tracestate", "x=anna@example.com".parse().unwrap());
        let context = caller_context(&headers).unwrap();
        assert_eq!(context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736", "the trace is read");
        assert_eq!(context.trace_state().header(), "", "the caller's tracestate goes no further");
        assert!(caller_context(&http::HeaderMap::new()).is_none());
    }
}
