//! OpenTelemetry metrics, exported over OTLP to the collector that receives the traces
//! (`otlp_endpoint`) every `otlp_metrics_interval_ms` (default 10 s). Off unless an endpoint is
//! configured: then no exporter exists, nothing is counted, and every recording function here
//! returns after one atomic load.
//!
//! Instruments (operators' guide: deploy/README.md, "Metrics"):
//! - `domicile.decisions` (counter): decisions made (node) or returned (gateway), by `role`,
//!   `effect`, `region` and `pack_version` (`<pack id>@<version>`); failed gateway decisions
//!   have `effect = "error"` and the gRPC `code` instead of a region and pack.
//! - `domicile.rpc.duration` (histogram, seconds): every RPC a server answers, by `role`, `rpc`
//!   (method path) and `code`, from request to the end of the response (for streams: the stream's
//!   lifetime).
//! - gauges registered by the gateway (`domicile.directory.links`, `domicile.watch.lag`) and the
//!   node (`domicile.rights.overdue`) through [`observe_u64`] and [`observe_f64`], and the node's
//!   counter `domicile.decision_batches.redone` through [`observe_count_u64`].
//!
//! No personal data: attribute values come from closed sets only (roles, effects, regions, pack
//! ids and versions, the method paths of the services a process serves, gRPC code names). A
//! request path outside the served methods is recorded as `other`, so a caller cannot put text
//! into a label. Never subject refs, links or identifiers.
//!
//! Decisions are the hot path (well over 100,000 a second per process), so they are counted in
//! atomics, one set of per-thread stripes per attribute set, found through a thread-local index
//! with a borrowed-key hash lookup (no lock, no allocation), and reported by an observable
//! counter at each export.

use std::cell::RefCell;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hashbrown::{Equivalent, HashMap};
use http_body::{Frame, SizeHint};
use opentelemetry::metrics::{AsyncInstrumentBuilder, Histogram, Meter, MeterProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use tonic::Code;
use tonic::codegen::{Bytes, http};

pub use opentelemetry::KeyValue;
pub use opentelemetry::metrics::AsyncInstrument;

use crate::telemetry::TelemetryError;

/// Export interval when the configuration names none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Distinct attribute sets of `domicile.decisions` per process; past this, new sets are counted
/// under region and pack `_overflow` (a guard: regions and pack versions are few).
const MAX_DECISION_SERIES: usize = 2_048;
const OVERFLOW: &str = "_overflow";

/// Histogram bucket bounds in seconds: decisions take well under a millisecond, so the low end
/// is finer than OpenTelemetry's defaults.
const DURATION_BOUNDS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// gRPC code names, indexed by code number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The name of a gRPC code as metrics label it, e.g. `UNAVAILABLE`.
pub fn code_name(code: Code) -> &'static str {
    usize::try_from(code as i32).ok().and_then(|i| CODE_NAMES.get(i)).copied().unwrap_or("UNKNOWN")
}

/// The export interval for `otlp_metrics_interval_ms`: absent or 0 means [`DEFAULT_INTERVAL`].
pub fn interval_from_ms(ms: Option<u64>) -> Duration {
    match ms {
        None | Some(0) => DEFAULT_INTERVAL,
        Some(ms) => Duration::from_millis(ms),
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

struct Metrics {
    provider: SdkMeterProvider,
    meter: Meter,
    role: &'static str,
    decisions: Arc<DecisionCounts>,
    rpc_duration: Histogram<f64>,
}

/// Starts the meter provider with a periodic OTLP exporter; called by
/// [`crate::telemetry::start_otlp`] inside the Tokio runtime.
pub(crate) fn start(
    role: &'static str,
    endpoint: &str,
    interval: Duration,
    resource: Resource,
) -> Result<(), TelemetryError> {
    if METRICS.get().is_some() {
        return Err(TelemetryError::AlreadyStarted);
    }
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let reader = PeriodicReader::builder(exporter).with_interval(interval).build();
    let provider = SdkMeterProvider::builder().with_resource(resource).with_reader(reader).build();
    let meter = provider.meter("domicile");
    let decisions = Arc::new(DecisionCounts::new(role));
    let observed = Arc::clone(&decisions);
    // Observable instruments stay registered with the provider; the handle is not needed.
    let _ = meter
        .u64_observable_counter("domicile.decisions")
        .with_unit("{decision}")
        .with_description("Decisions made (node) or returned (gateway), by effect, region and pack version")
        .with_callback(move |observer| observed.observe(observer))
        .build();
    let rpc_duration = meter
        .f64_histogram("domicile.rpc.duration")
        .with_unit("s")
        .with_description("Time from an RPC's request to the end of its response, by method and gRPC code")
        .with_boundaries(DURATION_BOUNDS.to_vec())
        .build();
    METRICS.set(Metrics { provider, meter, role, decisions, rpc_duration }).map_err(|_| TelemetryError::AlreadyStarted)
}

/// Collects and exports once more, then stops. Blocks: call from a blocking thread.
pub(crate) fn shutdown() -> OTelSdkResult {
    METRICS.get().map_or(Ok(()), |m| m.provider.shutdown())
}

/// Whether metrics are exported in this process.
#[inline]
pub fn enabled() -> bool {
    METRICS.get().is_some()
}

/// An observable instrument's unit, description and callback: the part every `observe_*`
/// registration shares (each then builds its own kind of instrument).
fn described<'a, I, M>(
    builder: AsyncInstrumentBuilder<'a, I, M>,
    unit: &'static str,
    description: &'static str,
    callback: impl Fn(&dyn AsyncInstrument<M>) + Send + Sync + 'static,
) -> AsyncInstrumentBuilder<'a, I, M> {
    builder.with_unit(unit).with_description(description).with_callback(callback)
}

/// Registers an observable gauge read at every export (nothing when metrics are off).
/// Attributes must come from closed, non-personal sets.
pub fn observe_u64(
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    callback: impl Fn(&dyn AsyncInstrument<u64>) + Send + Sync + 'static,
) {
    if let Some(m) = METRICS.get() {
        let _ = described(m.meter.u64_observable_gauge(name), unit, description, callback).build();
    }
}

/// Registers an observable counter (a cumulative count) read at every export (nothing when
/// metrics are off). Attributes must come from closed, non-personal sets.
pub fn observe_count_u64(
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    callback: impl Fn(&dyn AsyncInstrument<u64>) + Send + Sync + 'static,
) {
    if let Some(m) = METRICS.get() {
        let _ = described(m.meter.u64_observable_counter(name), unit, description, callback).build();
    }
}

/// [`observe_u64`] for floating-point values.
pub fn observe_f64(
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    callback: impl Fn(&dyn AsyncInstrument<f64>) + Send + Sync + 'static,
) {
    if let Some(m) = METRICS.get() {
        let _ = described(m.meter.f64_observable_gauge(name), unit, description, callback).build();
    }
}

// ---------------------------------------------------------------------------------------------
// Decisions

/// What a decision came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Allow,
    Deny,
    /// A decision without an effect (a broken node); callers must not read it as an allow.
    Unspecified,
    /// No decision: the request failed with this code.
    Error(Code),
}

impl Outcome {
    fn effect(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Unspecified => "unspecified",
            Outcome::Error(_) => "error",
        }
    }
}

impl From<domicile_policy::Effect> for Outcome {
    fn from(effect: domicile_policy::Effect) -> Self {
        match effect {
            domicile_policy::Effect::Allow => Outcome::Allow,
            domicile_policy::Effect::Deny => Outcome::Deny,
        }
    }
}

/// Counts one decision in `domicile.decisions`. `region` and the pack name the closed sets of
/// the deployment's regions and pack versions; pass empty strings when unknown.
#[inline]
pub fn count_decision(outcome: Outcome, region: &str, pack_id: &str, pack_version: &str) {
    if let Some(m) = METRICS.get() {
        m.decisions.add(SeriesRef { outcome, region, pack_id, pack_version });
    }
}

/// Counts a decision a node made (and audited).
#[inline]
pub fn decided(region: &domicile_types::RegionId, effect: domicile_policy::Effect, pack: &domicile_policy::PackRef) {
    count_decision(effect.into(), region.as_str(), &pack.id, &pack.version);
}

/// Counts a request for a decision that failed with `code`.
#[inline]
pub fn decision_failed(code: Code) {
    count_decision(Outcome::Error(code), "", "", "");
}

#[derive(Debug, PartialEq, Eq)]
struct SeriesKey {
    outcome: Outcome,
    region: Box<str>,
    pack_id: Box<str>,
    pack_version: Box<str>,
}

/// The borrowed form of [`SeriesKey`], looked up without allocating.
#[derive(Debug, Clone, Copy)]
struct SeriesRef<'a> {
    outcome: Outcome,
    region: &'a str,
    pack_id: &'a str,
    pack_version: &'a str,
}

impl Hash for SeriesRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.outcome.hash(state);
        self.region.hash(state);
        self.pack_id.hash(state);
        self.pack_version.hash(state);
    }
}

impl Hash for SeriesKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must hash exactly as the borrowed form does.
        SeriesRef {
            outcome: self.outcome,
            region: &self.region,
            pack_id: &self.pack_id,
            pack_version: &self.pack_version,
        }
        .hash(state);
    }
}

impl Equivalent<SeriesKey> for SeriesRef<'_> {
    fn equivalent(&self, key: &SeriesKey) -> bool {
        self.outcome == key.outcome
            && self.region == &*key.region
            && self.pack_id == &*key.pack_id
            && self.pack_version == &*key.pack_version
    }
}

impl SeriesRef<'_> {
    fn to_owned_key(self) -> SeriesKey {
        SeriesKey {
            outcome: self.outcome,
            region: self.region.into(),
            pack_id: self.pack_id.into(),
            pack_version: self.pack_version.into(),
        }
    }

    fn attributes(self, role: &'static str) -> Vec<KeyValue> {
        let mut attributes = vec![KeyValue::new("role", role), KeyValue::new("effect", self.outcome.effect())];
        if let Outcome::Error(code) = self.outcome {
            attributes.push(KeyValue::new("code", code_name(code)));
        }
        if !self.region.is_empty() {
            attributes.push(KeyValue::new("region", self.region.to_owned()));
        }
        if !self.pack_id.is_empty() {
            let pack = if self.pack_version.is_empty() {
                self.pack_id.to_owned()
            } else {
                format!("{}@{}", self.pack_id, self.pack_version)
            };
            attributes.push(KeyValue::new("pack_version", pack));
        }
        attributes
    }
}

/// Counter stripes per series: threads add to different cache lines, so decisions on several
/// cores do not contend on one counter.
const STRIPES: usize = 8;

#[derive(Default)]
#[repr(align(64))]
struct Stripe(AtomicU64);

struct Series {
    stripes: [Stripe; STRIPES],
    attributes: Vec<KeyValue>,
}

impl Series {
    fn total(&self) -> u64 {
        self.stripes.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// Each thread's own index of the series it has counted into, so the hot path takes no shared
/// lock: a thread-local hash lookup, then one relaxed add on the thread's stripe.
struct LocalSeries {
    /// The [`DecisionCounts`] these series belong to (one per process outside tests).
    owner: u64,
    stripe: usize,
    series: HashMap<SeriesKey, Arc<Series>>,
}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);
static NEXT_COUNTS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static LOCAL: RefCell<LocalSeries> = RefCell::new(LocalSeries {
        owner: 0,
        stripe: NEXT_THREAD.fetch_add(1, Ordering::Relaxed) % STRIPES,
        series: HashMap::new(),
    });
}

struct DecisionCounts {
    id: u64,
    role: &'static str,
    series: RwLock<HashMap<SeriesKey, Arc<Series>>>,
}

impl DecisionCounts {
    fn new(role: &'static str) -> Self {
        Self { id: NEXT_COUNTS.fetch_add(1, Ordering::Relaxed), role, series: RwLock::new(HashMap::new()) }
    }

    fn add(&self, key: SeriesRef<'_>) {
        let counted = LOCAL.try_with(|local| {
            let Ok(mut local) = local.try_borrow_mut() else { return false };
            if local.owner != self.id || local.series.len() > 2 * MAX_DECISION_SERIES {
                local.owner = self.id;
                local.series.clear();
            }
            let stripe = local.stripe;
            if let Some(series) = local.series.get(&key) {
                series.stripes[stripe].0.fetch_add(1, Ordering::Relaxed);
            } else {
                let series = self.shared(key);
                series.stripes[stripe].0.fetch_add(1, Ordering::Relaxed);
                local.series.insert(key.to_owned_key(), series);
            }
            true
        });
        if counted != Ok(true) {
            // Thread teardown: count without the thread's index.
            self.shared(key).stripes[0].0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The process-wide series for `key` (created on first use; past the cap, the overflow one).
    fn shared(&self, key: SeriesRef<'_>) -> Arc<Series> {
        if let Some(found) = self.series.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Arc::clone(found);
        }
        let mut series = self.series.write().unwrap_or_else(|p| p.into_inner());
        let key = if series.len() >= MAX_DECISION_SERIES && series.get(&key).is_none() {
            SeriesRef { region: OVERFLOW, pack_id: OVERFLOW, pack_version: "", ..key }
        } else {
            key
        };
        if let Some(found) = series.get(&key) {
            return Arc::clone(found);
        }
        let created = Arc::new(Series { stripes: Default::default(), attributes: key.attributes(self.role) });
        series.insert(key.to_owned_key(), Arc::clone(&created));
        created
    }

    fn observe(&self, observer: &dyn AsyncInstrument<u64>) {
        let series = self.series.read().unwrap_or_else(|p| p.into_inner());
        for one in series.values() {
            observer.observe(one.total(), &one.attributes);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RPC durations

/// A tower layer recording `domicile.rpc.duration` for every call a server answers. Outermost
/// of a server's layers, so refusals by the layers inside it (authentication, access) count
/// too. Without metrics it passes calls through untouched.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    table: Option<Arc<RpcTable>>,
}

impl std::fmt::Debug for RpcMetricsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcMetricsLayer").field("enabled", &self.table.is_some()).finish()
    }
}

struct RpcTable {
    histogram: Histogram<f64>,
    methods: HashMap<Box<str>, usize>,
    /// Attribute sets per method (the last one is `other`) × code.
    attributes: Vec<Vec<KeyValue>>,
    /// A method whose failures also count as failed decisions.
    decision_method: Option<usize>,
}

impl RpcMetricsLayer {
    /// `methods`: every method path this server serves (`/package.Service/Method`); calls of
    /// any other path are recorded as `rpc = "other"`. `constant`: attributes added to every
    /// point, e.g. a node's region. Call after [`crate::telemetry::start_otlp`].
    pub fn new(methods: impl IntoIterator<Item = String>, constant: &[(&'static str, String)]) -> Self {
        let Some(m) = METRICS.get() else { return Self { table: None } };
        let mut paths: Vec<String> = methods.into_iter().collect();
        paths.sort();
        paths.dedup();
        let mut attributes = Vec::with_capacity((paths.len() + 1) * CODE_NAMES.len());
        for path in paths.iter().map(String::as_str).chain(["other"]) {
            for code in CODE_NAMES {
                let mut set = vec![
                    KeyValue::new("role", m.role),
                    KeyValue::new("rpc", path.to_owned()),
                    KeyValue::new("code", code),
                ];
                set.extend(constant.iter().map(|(k, v)| KeyValue::new(*k, v.clone())));
                attributes.push(set);
            }
        }
        let methods = paths.into_iter().enumerate().map(|(i, p)| (p.into_boxed_str(), i)).collect();
        Self {
            table: Some(Arc::new(RpcTable {
                histogram: m.rpc_duration.clone(),
                methods,
                attributes,
                decision_method: None,
            })),
        }
    }

    /// Also counts every failed call of `method` as a failed decision (`domicile.decisions`
    /// with `effect = "error"`): the gateway's unary `Decide`, whose handler counts successes.
    pub fn counting_failures_as_decisions(mut self, method: &str) -> Self {
        if let Some(table) = self.table.as_mut().and_then(Arc::get_mut) {
            table.decision_method = table.methods.get(method).copied();
        }
        self
    }
}

impl RpcTable {
    fn method(&self, path: &str) -> usize {
        self.methods.get(path).copied().unwrap_or(self.methods.len())
    }

    fn record(&self, method: usize, code: Code, elapsed: Duration) {
        let code_index = usize::try_from(code as i32).ok().filter(|i| *i < CODE_NAMES.len()).unwrap_or(2);
        if let Some(attributes) = self.attributes.get(method * CODE_NAMES.len() + code_index) {
            self.histogram.record(elapsed.as_secs_f64(), attributes);
        }
        if code != Code::Ok && self.decision_method == Some(method) {
            decision_failed(code);
        }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner, table: self.table.clone() }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    table: Option<Arc<RpcTable>>,
}

impl<S, B> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Unpin,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = RpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = self.table.as_ref().map(|table| Call {
            method: table.method(request.uri().path()),
            table: Arc::clone(table),
            start: Instant::now(),
            code: None,
            done: false,
        });
        RpcFuture { inner: self.inner.call(request), call }
    }
}

/// One call being measured; records once, at the end of the response or when dropped before.
struct Call {
    table: Arc<RpcTable>,
    method: usize,
    start: Instant,
    /// The status once known (trailers-only responses carry it in the headers).
    code: Option<Code>,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if !std::mem::replace(&mut self.done, true) {
            self.table.record(self.method, code, self.start.elapsed());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Dropped before the response ended: the caller went away or the deadline passed.
        let code = self.code.unwrap_or(Code::Cancelled);
        self.finish(code);
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    headers.get("grpc-status").map(|v| Code::from_bytes(v.as_bytes()))
}

pub struct RpcFuture<F> {
    inner: F,
    call: Option<Call>,
}

impl<F, E> Future for RpcFuture<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let result = ready!(Pin::new(&mut this.inner).poll(cx));
        let Some(mut call) = this.call.take() else { return Poll::Ready(result) };
        Poll::Ready(match result {
            Ok(response) => {
                call.code = grpc_status(response.headers());
                Ok(response.map(|body| tonic::body::Body::new(MeteredBody { body, call })))
            }
            Err(e) => {
                call.finish(Code::Unknown);
                Err(e)
            }
        })
    }
}

/// A response body that records its call when the trailers (or the end) go out.
struct MeteredBody {
    body: tonic::body::Body,
    call: Call,
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc_status(trailers).or(this.call.code).unwrap_or(Code::Unknown);
                    this.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => this.call.finish(status.code()),
            // A gRPC response that ends without any status is an error (UNKNOWN).
            Poll::Ready(None) => {
                let code = this.call.code.unwrap_or(Code::Unknown);
                this.call.finish(code);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::DefaultHasher;

    use super::*;

    fn hash_of(value: &impl Hash) -> u64 {
        let mut hasher = DefaultHasher::new();
        value.hash(&mut hasher);
        hasher.finish()
    }

    #[test]
    fn owned_and_borrowed_keys_hash_alike() {
        let borrowed =
            SeriesRef { outcome: Outcome::Deny, region: "eu-central", pack_id: "de", pack_version: "2026.11.0" };
        let owned = borrowed.to_owned_key();
        assert_eq!(hash_of(&borrowed), hash_of(&owned));
        assert!(borrowed.equivalent(&owned));
        let other = SeriesRef { region: "eu-centra", pack_id: "lde", ..borrowed };
        assert!(!other.equivalent(&owned));
    }

    #[test]
    fn counts_per_attribute_set_with_closed_values() {
        let counts = DecisionCounts::new("node");
        let allow = SeriesRef { outcome: Outcome::Allow, region: "us-east", pack_id: "us", pack_version: "1" };
        for _ in 0..3 {
            counts.add(allow);
        }
        counts.add(SeriesRef { outcome: Outcome::Error(Code::Unavailable), region: "", pack_id: "", pack_version: "" });
        let series = counts.series.read().unwrap();
        assert_eq!(series.len(), 2);
        let allowed = series.get(&allow).unwrap();
        assert_eq!(allowed.total(), 3);
        let labels: Vec<String> = allowed.attributes.iter().map(|kv| format!("{}={}", kv.key, kv.value)).collect();
        assert_eq!(labels, ["role=node", "effect=allow", "region=us-east", "pack_version=us@1"]);
        let failed = series.values().find(|s| s.attributes.len() == 3).unwrap();
        let labels: Vec<String> = failed.attributes.iter().map(|kv| format!("{}={}", kv.key, kv.value)).collect();
        assert_eq!(labels, ["role=node", "effect=error", "code=UNAVAILABLE"]);
    }

    #[test]
    fn attribute_sets_beyond_the_cap_fold_into_overflow() {
        let counts = DecisionCounts::new("gateway");
        let versions: Vec<String> = (0..MAX_DECISION_SERIES + 10).map(|i| i.to_string()).collect();
        for version in &versions {
            counts.add(SeriesRef {
                outcome: Outcome::Allow,
                region: "eu-central",
                pack_id: "de",
                pack_version: version,
            });
        }
        let series = counts.series.read().unwrap();
        assert_eq!(series.len(), MAX_DECISION_SERIES + 1);
        let overflow =
            series.get(&SeriesRef { outcome: Outcome::Allow, region: OVERFLOW, pack_id: OVERFLOW, pack_version: "" });
        assert_eq!(overflow.unwrap().total(), 10);
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let counts = Arc::new(DecisionCounts::new("node"));
        let key = SeriesRef { outcome: Outcome::Deny, region: "eu-central", pack_id: "de", pack_version: "1" };
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counts = Arc::clone(&counts);
                std::thread::spawn(move || (0..1000).for_each(|_| counts.add(key)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        counts.add(key);
        assert_eq!(counts.series.read().unwrap().get(&key).unwrap().total(), 4001);
    }

    #[test]
    fn code_names_follow_the_grpc_numbering() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
        assert_eq!(interval_from_ms(None), DEFAULT_INTERVAL);
        assert_eq!(interval_from_ms(Some(0)), DEFAULT_INTERVAL);
        assert_eq!(interval_from_ms(Some(250)), Duration::from_millis(250));
    }
}
