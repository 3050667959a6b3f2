//! The one place where the gateway's service stacks are assembled: the server stack that faces
//! callers and the client stack towards each region's node. Read top to bottom, outermost first.

use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Server, ServerTlsConfig};

/// Deadline for a whole caller request (covers the node hop and directory work).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests in flight per caller connection before new ones are shed.
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Caller-facing server: mutual TLS (callers need a certificate from the cluster CA), a request
/// deadline that also honours the caller's `grpc-timeout`, and load shedding so overload answers
/// RESOURCE_EXHAUSTED quickly instead of queueing without bound.
pub fn server(tls: ServerTlsConfig) -> Result<Server, tonic::transport::Error> {
    Ok(Server::builder()
        .tls_config(tls)?
        .timeout(REQUEST_TIMEOUT)
        .concurrency_limit_per_connection(MAX_IN_FLIGHT_PER_CONNECTION)
        .load_shed(true)
        .tcp_nodelay(true))
}

/// Channel to one region's node: mutual TLS where the node's certificate must name the region
/// (the TLS config carries the region's server name), a per-call deadline, lazy connection so a
/// region that is down at start does not stop the gateway from serving the others.
pub fn node_channel(
    endpoint: &str,
    tls: ClientTlsConfig,
    timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("https://{endpoint}"))?
        .tls_config(tls)?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .tcp_nodelay(true)
        .connect_lazy())
}
