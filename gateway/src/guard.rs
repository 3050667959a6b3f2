//! Per-region protection for calls to nodes: load shedding and a circuit breaker, as a tower
//! layer over each region's channel (assembled in `stack.rs`).
//!
//! - **Shedding**: at most `max_in_flight` calls to a region at once; beyond that a call fails at
//!   once with RESOURCE_EXHAUSTED instead of queueing behind a slow region.
//! - **Circuit breaking**: after `failure_threshold` consecutive failures (transport errors,
//!   deadlines, UNAVAILABLE answers) the region is short-circuited to UNAVAILABLE for
//!   `cool_down`; then one probe call goes through, and its outcome closes or re-opens the
//!   circuit. Calls to other regions are unaffected.
//!
//! Every refusal is an error status, so a down region can never turn into an allow (invariant 3).
//! A call that gets no answer from the node at all (connection refused or broken, or refused
//! by a node that is shutting down: HTTP/2 GOAWAY, which tonic would report as INTERNAL) is
//! UNAVAILABLE, so callers retry it like any other outage of the region.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use domicile_types::RegionId;
use tonic::Status;
use tonic::codegen::http;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Copy)]
pub struct GuardSettings {
    pub max_in_flight: usize,
    pub failure_threshold: u32,
    pub cool_down: Duration,
    /// Node replicas behind the region's channel: the breaker opens after `failure_threshold`
    /// consecutive failures per replica (one dead replica among healthy ones is the health
    /// checks' to take out of the spread, not a region outage), and a decision is tried on
    /// another replica after a failure (`node_client::decide_batch`).
    pub replicas: usize,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self { max_in_flight: 1024, failure_threshold: 3, cool_down: Duration::from_millis(500), replicas: 1 }
    }
}

#[derive(Debug, Default)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

/// Shared state of one region's guard (all clones of the region's client share it).
#[derive(Debug)]
pub struct RegionState {
    region: RegionId,
    settings: GuardSettings,
    in_flight: AtomicUsize,
    breaker: Mutex<Breaker>,
}

impl RegionState {
    pub fn new(region: RegionId, settings: GuardSettings) -> Arc<Self> {
        Arc::new(Self { region, settings, in_flight: AtomicUsize::new(0), breaker: Mutex::new(Breaker::default()) })
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many node replicas serve the region (at least one).
    pub fn replicas(&self) -> usize {
        self.settings.replicas.max(1)
    }

    /// Whether the circuit is open now (for tests and health reporting).
    pub fn is_open(&self) -> bool {
        self.breaker().open_until.is_some()
    }

    /// Admits a call: `Ok(true)` when it is the probe of a half-open circuit.
    fn admit(&self) -> Result<bool, Status> {
        let mut breaker = self.breaker();
        let probe = match breaker.open_until {
            None => false,
            Some(until) if Instant::now() < until || breaker.probing => {
                return Err(Status::unavailable(format!(
                    "home region `{}` is unavailable (failing; retry shortly)",
                    self.region
                )));
            }
            Some(_) => {
                breaker.probing = true;
                true
            }
        };
        drop(breaker);
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.settings.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            if probe {
                self.breaker().probing = false;
            }
            return Err(Status::resource_exhausted(format!(
                "home region `{}` is overloaded: retry later",
                self.region
            )));
        }
        Ok(probe)
    }

    fn record(&self, ok: bool, probe: bool) {
        let mut breaker = self.breaker();
        if probe {
            breaker.probing = false;
        }
        if ok {
            if breaker.open_until.is_some() {
                tracing::info!(region = %self.region, "region answers again; circuit closed");
            }
            *breaker = Breaker::default();
            return;
        }
        breaker.consecutive_failures = breaker.consecutive_failures.saturating_add(1);
        let threshold = self.settings.failure_threshold.saturating_mul(self.replicas().try_into().unwrap_or(u32::MAX));
        if probe || breaker.consecutive_failures >= threshold {
            if breaker.open_until.is_none() {
                tracing::warn!(region = %self.region, failures = breaker.consecutive_failures, "region failing; circuit open");
            }
            breaker.open_until = Some(Instant::now() + self.settings.cool_down);
        }
    }
}

/// Releases the in-flight slot and, if the call ended without an outcome (cancelled), the probe.
struct Slot {
    state: Arc<RegionState>,
    probe: bool,
    done: bool,
}

impl Slot {
    fn finish(mut self, ok: bool) {
        self.done = true;
        self.state.record(ok, self.probe);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
        if !self.done && self.probe {
            self.state.breaker().probing = false;
        }
    }
}

#[derive(Debug, Clone)]
pub struct RegionGuardLayer {
    state: Arc<RegionState>,
}

impl RegionGuardLayer {
    pub fn new(state: Arc<RegionState>) -> Self {
        Self { state }
    }
}

impl<S> tower::Layer<S> for RegionGuardLayer {
    type Service = RegionGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RegionGuard { inner, state: Arc::clone(&self.state) }
    }
}

#[derive(Debug, Clone)]
pub struct RegionGuard<S> {
    inner: S,
    state: Arc<RegionState>,
}

/// The status of a call that got no response from the node. Statuses (ours, tonic's) pass
/// through; transport failures are UNAVAILABLE. A node that is shutting down sends GOAWAY, and
/// a call the channel hands to that connection before it reconnects is refused unsent
/// (`GoAway(NO_ERROR)`), which tonic codes as INTERNAL; it is an outage of the region like any
/// other, never an answer.
///
/// Whether the request may have reached the node is kept with the status ([`SENT_METADATA`]):
/// a call refused before it was sent (no connection could be made) was certainly not applied;
/// any other (a timeout, a connection lost mid-call) may have been, which a write reports as an
/// unknown outcome (`writes.rs`).
fn unanswered(region: &RegionId, error: BoxError) -> BoxError {
    match error.downcast::<Status>() {
        Ok(status) => status,
        Err(error) => {
            tracing::debug!(%region, error = %error, "node call failed in transport");
            let sent = if never_sent(&*error) { "no" } else { "maybe" };
            let mut status = Status::unavailable(format!("region `{region}` did not answer"));
            status.metadata_mut().insert(SENT_METADATA, tonic::metadata::MetadataValue::from_static(sent));
            Box::new(status)
        }
    }
}

/// Status metadata the gateway sets on a node call that got no answer: `no` when the request
/// certainly never left (the connection could not be made), `maybe` otherwise.
pub const SENT_METADATA: &str = "domicile-sent";

/// Whether `error` means the request never left this process: the connection to the node could
/// not be established (refused, unreachable, name not found).
fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::NotFound
            )
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// gRPC `UNAVAILABLE` in response headers (a trailers-only reply): the node is up but cannot
/// serve, which counts as a failure like a broken connection, unless the node marked it with a
/// cause of its own (`domicile_proto::CAUSE_METADATA`: it serves, but an identifier's arbiter
/// could not be reached, say).
fn is_unavailable<B>(response: &http::Response<B>) -> bool {
    response.headers().get("grpc-status").is_some_and(|v| v.as_bytes() == b"14")
        && !response.headers().contains_key(domicile_proto::CAUSE_METADATA)
}

impl<S> RegionGuard<S> {
    /// The region's shared guard state.
    pub fn state(&self) -> &RegionState {
        &self.state
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RegionGuard<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let probe = match self.state.admit() {
            Ok(probe) => probe,
            Err(status) => return Box::pin(std::future::ready(Err(Box::new(status) as BoxError))),
        };
        let slot = Slot { state: Arc::clone(&self.state), probe, done: false };
        let call = self.inner.call(request);
        Box::pin(async move {
            match call.await {
                Ok(response) => {
                    slot.finish(!is_unavailable(&response));
                    Ok(response)
                }
                Err(e) => {
                    let e = unanswered(&slot.state.region, e.into());
                    slot.finish(false);
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> Arc<RegionState> {
        RegionState::new(
            RegionId::parse("eu-central").unwrap(),
            GuardSettings { max_in_flight: 2, failure_threshold: 2, cool_down: Duration::from_millis(30), replicas: 1 },
        )
    }

    #[test]
    fn opens_after_repeated_failures_then_probes_once_and_closes() {
        let s = state();
        for _ in 0..2 {
            let probe = s.admit().unwrap();
            s.in_flight.fetch_sub(1, Ordering::AcqRel);
            s.record(false, probe);
        }
        assert!(s.is_open());
        assert_eq!(s.admit().unwrap_err().code(), tonic::Code::Unavailable);
        std::thread::sleep(Duration::from_millis(40));
        assert!(s.admit().unwrap(), "first call after the cool-down is the probe");
        assert_eq!(s.admit().unwrap_err().code(), tonic::Code::Unavailable, "one probe at a time");
        s.record(true, true);
        assert!(!s.is_open());
        assert!(!s.admit().unwrap());
    }

    #[test]
    fn a_call_without_an_answer_is_unavailable_and_statuses_pass_through() {
        let region = RegionId::parse("eu-central").unwrap();
        let refused: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let status = unanswered(&region, refused).downcast::<Status>().unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.metadata().get(SENT_METADATA).unwrap(), "no", "refused: never sent");
        let reset: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let status = unanswered(&region, reset).downcast::<Status>().unwrap();
        assert_eq!(status.metadata().get(SENT_METADATA).unwrap(), "maybe", "reset mid-call: maybe applied");
        let ours: BoxError = Box::new(Status::resource_exhausted("shed"));
        assert_eq!(unanswered(&region, ours).downcast::<Status>().unwrap().code(), tonic::Code::ResourceExhausted);
    }

    #[test]
    fn sheds_beyond_the_in_flight_limit() {
        let s = state();
        s.admit().unwrap();
        s.admit().unwrap();
        assert_eq!(s.admit().unwrap_err().code(), tonic::Code::ResourceExhausted);
    }
}
