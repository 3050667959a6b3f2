//! Batch decisions forwarded as the home region encoded them.
//!
//! A node's `DecideOutcome` and the gateway's `DecideStreamResult` are the same message on the
//! wire, so the gateway reads each outcome with the decision as opaque bytes
//! ([`RawOutcome`], in `domicile_proto::raw` with the tests pinning the equivalence), checks only
//! the id and which variant is set, and writes the same bytes to the caller: no decoding and
//! re-encoding of a decision's strings per item (a quarter of the gateway's CPU in batch), and
//! the gateway cannot alter a decision on the way.
//!
//! Unary `Decide` answers the same way ([`RawDecideResponse`]): the node's encoded decision is
//! the caller's. The route in [`DecisionRoute`] serves these two methods with these types
//! and hands every other method to the generated service.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use domicile_proto::pb::gateway::v1 as pb;
use domicile_proto::pb::gateway::v1::domicile_server::DomicileServer;
use domicile_proto::raw::{DECIDE_PATH, DECIDE_STREAM_PATH, RawDecideResponse, RawDecideStreamItem, RawOutcome};
use domicile_proto::wire::RequestCodec;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;

use crate::gateway::Gateway;
use crate::service::GatewayService;

/// The gateway's `Domicile` service as mounted: `DecideStream` is served here with
/// [`RawOutcome`] results, every other method by the generated server. Requests are read with
/// the generated server's codec ([`RequestCodec`]), so a malformed one is answered alike.
#[derive(Clone)]
pub struct DecisionRoute {
    typed: DomicileServer<GatewayService>,
    /// What the typed server's service holds too; the route is cloned for every request.
    gateway: Arc<Gateway>,
    max_request: usize,
}

impl DecisionRoute {
    /// `max_request` bounds DecideStream's messages; the typed methods decode up to the larger
    /// `max_typed` (the wire guard bounds each method's messages before they are decoded).
    pub fn new(gateway: Arc<Gateway>, max_request: usize, max_typed: usize) -> Self {
        let service = GatewayService::new(Arc::clone(&gateway));
        let typed = DomicileServer::new(service).max_decoding_message_size(max_typed.max(max_request));
        Self { typed, gateway, max_request }
    }
}

impl tonic::server::NamedService for DecisionRoute {
    const NAME: &'static str = <DomicileServer<GatewayService> as tonic::server::NamedService>::NAME;
}

struct Handler(Arc<Gateway>);

impl tonic::server::StreamingService<RawDecideStreamItem> for Handler {
    type Response = RawOutcome;
    type ResponseStream = crate::metrics::CountedResults<crate::batch::ResultStream>;
    type Future = std::future::Ready<Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<RawDecideStreamItem>>) -> Self::Future {
        let results = crate::batch::decide_stream(Arc::clone(&self.0), request.into_inner());
        std::future::ready(Ok(tonic::Response::new(crate::metrics::counted(results))))
    }
}

struct UnaryHandler(Arc<Gateway>);

impl tonic::server::UnaryService<pb::DecideRequest> for UnaryHandler {
    type Response = RawDecideResponse;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<RawDecideResponse>, Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<pb::DecideRequest>) -> Self::Future {
        let gateway = Arc::clone(&self.0);
        Box::pin(async move {
            let decision = crate::decide::decide(&gateway, request.into_inner()).await?;
            Ok(tonic::Response::new(RawDecideResponse { decision }))
        })
    }
}

impl tower::Service<http::Request<Body>> for DecisionRoute {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let max_request = self.max_request;
        match request.uri().path() {
            DECIDE_STREAM_PATH => {
                let handler = Handler(Arc::clone(&self.gateway));
                Box::pin(async move {
                    let codec = RequestCodec::<RawOutcome, RawDecideStreamItem>::default();
                    let mut grpc =
                        tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(max_request), None);
                    Ok(grpc.streaming(handler, request).await)
                })
            }
            DECIDE_PATH => {
                let handler = UnaryHandler(Arc::clone(&self.gateway));
                Box::pin(async move {
                    let codec = RequestCodec::<RawDecideResponse, pb::DecideRequest>::default();
                    let mut grpc =
                        tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(max_request), None);
                    Ok(grpc.unary(handler, request).await)
                })
            }
            _ => Box::pin(self.typed.call(request)),
        }
    }
}
