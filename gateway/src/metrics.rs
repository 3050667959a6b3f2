//! The gateway's metrics (instruments and export: `domicile_runtime::metrics`; operators'
//! guide: deploy/README.md): the decisions it returns, its directory size, and how far behind
//! each region's change stream its directory may be.
//!
//! Attributes come from closed sets only: regions, pack ids and versions, effects, gRPC codes.
//! Never links, subject refs or identifiers.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use domicile_proto::pb::common::v1 as common;
use domicile_runtime::metrics::{self, KeyValue, Outcome};
use domicile_types::RegionId;
use tokio_stream::Stream;
use tonic::{Code, Status};

use prost::Message as _;

use crate::directory::Directory;
use domicile_proto::raw::{RawOutcome, RawResult};

/// The unary decide; its failures are counted by the RPC metrics layer (`stack.rs`).
pub(crate) use domicile_proto::raw::DECIDE_PATH as DECIDE_METHOD;

/// The services a gateway mounts beside its own, with tonic's codec: health and reflection v1.
pub(crate) const TONIC_SERVICES: [&[u8]; 2] =
    [tonic_health::pb::FILE_DESCRIPTOR_SET, tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET];

/// The method paths the gateway serves: the closed set its RPC metrics may name.
pub(crate) fn served_methods() -> Vec<String> {
    let [health, reflection] = TONIC_SERVICES;
    domicile_proto::method_paths(&[domicile_proto::GATEWAY_DESCRIPTOR_SET, health, reflection])
}

/// Counts a decision returned to a caller, by the effect, region and pack the node named.
#[inline]
pub(crate) fn decided(decision: &common::Decision) {
    if !metrics::enabled() {
        return;
    }
    let outcome = match common::Effect::try_from(decision.effect) {
        Ok(common::Effect::Allow) => Outcome::Allow,
        Ok(common::Effect::Deny) => Outcome::Deny,
        Ok(common::Effect::Unspecified) | Err(_) => Outcome::Unspecified,
    };
    let (pack_id, pack_version) = decision.pack.as_ref().map_or(("", ""), |p| (p.id.as_str(), p.version.as_str()));
    metrics::count_decision(outcome, &decision.region, pack_id, pack_version);
}

/// `DecideStream` results on their way to the caller, each counted as a decision or a failed
/// one (by its code).
#[derive(Debug)]
pub struct CountedResults<S> {
    inner: S,
}

/// Counts each result of `results` as it goes to the caller.
pub(crate) fn counted<S>(results: S) -> CountedResults<S> {
    CountedResults { inner: results }
}

impl<S> Stream for CountedResults<S>
where
    S: Stream<Item = Result<RawOutcome, Status>> + Unpin,
{
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(result))) = &polled
            && metrics::enabled()
        {
            match &result.result {
                // Decisions pass through encoded (`raw.rs`); only counting them decodes them,
                // and only while metrics are exported.
                Some(RawResult::Decision(bytes)) => match common::Decision::decode(bytes.clone()) {
                    Ok(decision) => decided(&decision),
                    Err(_) => metrics::decision_failed(Code::Internal),
                },
                Some(RawResult::Error(error)) => {
                    metrics::decision_failed(Code::from_i32(error.code));
                }
                None => {}
            }
        }
        polled
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// How far behind a region's node the directory may be (`domicile.watch.lag`), kept by the
/// region's follower (`sync.rs`):
/// - while the change stream is up: the delay of the last applied event, from the node making
///   it durable (its `at`) to the gateway applying it;
/// - while the region is loading or reconnecting: the time since the directory was last known
///   current for it (for a region never loaded: since the gateway started).
#[derive(Debug)]
pub(crate) struct RegionLag {
    /// Unix microseconds since which the region is not followed; 0 while it is.
    behind_since: AtomicI64,
    /// Delay of the last applied event, microseconds.
    last_delay: AtomicU64,
}

impl RegionLag {
    pub(crate) fn new() -> Self {
        Self { behind_since: AtomicI64::new(now_micros()), last_delay: AtomicU64::new(0) }
    }

    /// The directory holds the node's state as of now (snapshot loaded, or stream connected).
    pub(crate) fn following(&self) {
        self.behind_since.store(0, Ordering::Relaxed);
    }

    /// The change stream broke or could not be opened; nothing is known from now on.
    pub(crate) fn stopped(&self) {
        let _ = self.behind_since.compare_exchange(0, now_micros(), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// An event made durable at `at` (node clock) was applied now.
    pub(crate) fn applied(&self, at: Option<&domicile_proto::prost_types::Timestamp>) {
        if let Some(at) = at {
            let at_micros = at.seconds.saturating_mul(1_000_000).saturating_add(i64::from(at.nanos / 1_000));
            let delay = now_micros().saturating_sub(at_micros).max(0);
            self.last_delay.store(delay.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// The lag in seconds.
    pub(crate) fn seconds(&self) -> f64 {
        let since = self.behind_since.load(Ordering::Relaxed);
        let micros = if since != 0 {
            now_micros().saturating_sub(since).max(0).unsigned_abs()
        } else {
            self.last_delay.load(Ordering::Relaxed)
        };
        micros as f64 / 1e6
    }
}

/// Registers the directory size and per-region watch lag gauges (nothing when metrics are off).
pub(crate) fn observe(directory: Arc<Directory>, lags: Vec<(RegionId, Arc<RegionLag>)>) {
    metrics::observe_u64(
        "domicile.directory.links",
        "{link}",
        "Links in the gateway's directory (identifiers it can route)",
        move |observer| observer.observe(directory.len() as u64, &[]),
    );
    let lags: Vec<([KeyValue; 1], Arc<RegionLag>)> =
        lags.into_iter().map(|(region, lag)| ([KeyValue::new("region", region.to_string())], lag)).collect();
    metrics::observe_f64(
        "domicile.watch.lag",
        "s",
        "How far behind the region's node the gateway's directory may be",
        move |observer| {
            for (attributes, lag) in &lags {
                observer.observe(lag.seconds(), attributes);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_while_behind_and_is_the_event_delay_while_following() {
        let lag = RegionLag::new();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(lag.seconds() >= 0.02, "{}", lag.seconds());
        lag.following();
        assert_eq!(lag.seconds(), 0.0);
        let two_seconds_ago =
            domicile_proto::prost_types::Timestamp { seconds: now_micros() / 1_000_000 - 2, nanos: 0 };
        lag.applied(Some(&two_seconds_ago));
        assert!((1.0..4.0).contains(&lag.seconds()), "{}", lag.seconds());
        lag.stopped();
        let stopped = lag.seconds();
        assert!(stopped < 1.0, "{stopped}");
        // A second failure does not restart the clock.
        std::thread::sleep(std::time::Duration::from_millis(20));
        lag.stopped();
        assert!(lag.seconds() >= 0.02, "{}", lag.seconds());
    }
}
