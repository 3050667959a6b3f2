//! The one place where the gateway's service stacks are assembled: the server stack that faces
//! callers and the client stack towards each region's node. Read top to bottom, outermost first.

use std::sync::Arc;
use std::time::Duration;

use domicile_proto::wire::WireLayer;
use domicile_runtime::metrics::RpcMetricsLayer;
use domicile_runtime::tls::{ClientAuth, Incoming, TlsConfigError, TlsMaterial};
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Server};
use tower::layer::util::{Identity, Stack};
use tower::util::MapRequest;

use crate::auth::AuthLayer;
use crate::deadline::{BULK_PATHS, InteractiveDeadlineLayer};
use crate::guard::{RegionGuard, RegionGuardLayer, RegionState};

/// Deadline for a whole interactive caller request (covers the node hop and directory work); bulk
/// calls get the server's longer one (`deadline.rs`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests in flight per caller connection before new ones are shed.
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Adds the W3C trace context of the calling span to each node call.
type InjectTrace = fn(http::Request<Body>) -> http::Request<Body>;

/// The caller-facing server's own layers (see [`server`]).
pub type ServerLayers =
    Stack<WireLayer, Stack<AuthLayer, Stack<RpcMetricsLayer, Stack<InteractiveDeadlineLayer, Identity>>>>;

/// The client stack to one region's node.
pub type NodeChannel = RegionGuard<MapRequest<Channel, InjectTrace>>;

/// Caller connections: mutual TLS, where a presented certificate must chain to the cluster CA
/// (else the handshake fails). A certificate is optional at the TLS layer only so that its
/// absence gets a precise UNAUTHENTICATED from [`server`]'s (5) instead of an opaque handshake
/// failure. Accepted by `domicile_runtime::tls::incoming` rather than tonic, so that replies
/// completing together share one write (see there).
pub fn incoming(listener: TcpListener, tls: &TlsMaterial) -> Result<Incoming, TlsConfigError> {
    Ok(domicile_runtime::tls::incoming(listener, tls.acceptor(ClientAuth::Optional)?))
}

/// Caller-facing server for the connections of [`incoming`], outermost first:
/// 1. mutual TLS ([`incoming`]);
/// 2. a request deadline that also honours the caller's `grpc-timeout`: `bulk` (at least
///    [`REQUEST_TIMEOUT`]) for a bulk call, and within it (3);
/// 3. [`REQUEST_TIMEOUT`] for every other call (`deadline.rs`);
/// 4. load shedding: overload answers RESOURCE_EXHAUSTED quickly instead of queueing;
/// 5. RPC metrics (`domicile.rpc.duration` by method and code; failed unary decides also count
///    as failed decisions), so (6)'s refusals are measured too;
/// 6. caller identity (client certificate, else a signed token when `auth` accepts them) and
///    scopes (`auth.rs`): UNAUTHENTICATED / PERMISSION_DENIED;
/// 7. the wire guard (`domicile_proto::wire`): a method the gateway does not serve is
///    UNIMPLEMENTED naming what it serves; a request message over [`crate::MAX_REQUEST_BYTES`]
///    ([`crate::MAX_IMPORT_REQUEST_BYTES`] for `ImportConsent`) is RESOURCE_EXHAUSTED, a broken
///    gRPC frame INVALID_ARGUMENT (no input is buffered for it). Past the stack, the codec
///    (`wire::RequestCodec`) counts a request's bounded lists (`ImportConsent` items, …) in its
///    bytes before decoding it: too many is INVALID_ARGUMENT before any entry is built.
pub fn server(auth: AuthLayer, bulk: Duration) -> Server<ServerLayers> {
    let span_methods = domicile_runtime::telemetry::SpanMethods::new(crate::metrics::served_methods());
    Server::builder()
        // A peer gone without a word gives back its connection (`tls::KEEPALIVE_INTERVAL`).
        .http2_keepalive_interval(Some(domicile_runtime::tls::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(domicile_runtime::tls::KEEPALIVE_TIMEOUT))
        .timeout(bulk.max(REQUEST_TIMEOUT))
        .concurrency_limit_per_connection(MAX_IN_FLIGHT_PER_CONNECTION)
        .load_shed(true)
        // One span per request, continuing the caller's W3C trace if it sent one.
        .trace_fn(move |request| domicile_runtime::telemetry::server_span("gateway", request, &span_methods))
        .layer(InteractiveDeadlineLayer::new(REQUEST_TIMEOUT))
        .layer(
            RpcMetricsLayer::new(crate::metrics::served_methods(), &[])
                .counting_failures_as_decisions(crate::metrics::DECIDE_METHOD),
        )
        .layer(auth)
        .layer(BULK_PATHS.into_iter().fold(
            WireLayer::new(
                "gateway",
                crate::MAX_REQUEST_BYTES,
                domicile_proto::GATEWAY_DESCRIPTOR_SET,
                &crate::metrics::TONIC_SERVICES,
            ),
            |layer, path| layer.with_limit(path, crate::MAX_IMPORT_REQUEST_BYTES),
        ))
}

/// Client stack to one region's node, outermost first:
/// 1. the region guard (`guard.rs`): load shedding and a circuit breaker per region;
/// 2. a per-call deadline (the region's budget; expiry counts as a failure in (1));
/// 3. mutual TLS where the node's certificate must name the region (the TLS config carries the
///    region's server name), so nothing is sent to a node of another region;
/// 4. W3C trace context of the calling request's span (nothing when OTLP export is off);
/// 5. lazy connection, so a region that is down at start does not stop the gateway from serving
///    the others, and a reconnect is attempted on the next call after a failure;
/// 6. a region of several node replicas (`endpoints`): calls spread over the healthy ones
///    (`replicas.rs`).
pub fn node_channel(
    endpoints: &[&str],
    tls: ClientTlsConfig,
    timeout: Duration,
    guard: Arc<RegionState>,
) -> Result<NodeChannel, tonic::transport::Error> {
    let endpoint = |address: &str| -> Result<Endpoint, tonic::transport::Error> {
        Ok(Endpoint::from_shared(format!("https://{address}"))?
            .tls_config(tls.clone())?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .tcp_nodelay(true))
    };
    let channel = match endpoints {
        [one] => endpoint(one)?.connect_lazy(),
        several => domicile_runtime::replicas::spread(several.iter().map(|a| endpoint(a)).collect::<Result<_, _>>()?),
    };
    let inject: InjectTrace = domicile_runtime::telemetry::inject_context;
    Ok(tower::ServiceBuilder::new().layer(RegionGuardLayer::new(guard)).map_request(inject).service(channel))
}
