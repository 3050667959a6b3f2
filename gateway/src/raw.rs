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
pub use domicile_proto::raw::{
    DECIDE_BATCH_PATH, DECIDE_PATH, DECIDE_STREAM_PATH, RawDecideBatchResponse, RawDecideResponse, RawDecideStreamItem,
    RawOutcome, RawResult,
};
use domicile_proto::wire::RequestCodec;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;

use crate::service::GatewayService;

/// Calls a node's `DecideBatch`, reading the answer with decisions kept encoded.
/// The request is the generated `DecideBatchRequest` or an `EncodedDecideBatchRequest`.
pub async fn decide_batch<M: prost::Message + Send + Sync + 'static>(
    channel: crate::stack::NodeChannel,
    request: M,
) -> Result<RawDecideBatchResponse, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unavailable(format!("node not ready: {e}")))?;
    let codec = tonic_prost::ProstCodec::<M, RawDecideBatchResponse>::default();
    let path = http::uri::PathAndQuery::from_static(DECIDE_BATCH_PATH);
    Ok(grpc.unary(tonic::Request::new(request), path, codec).await?.into_inner())
}

/// The gateway's `Domicile` service as mounted: `DecideStream` is served here with
/// [`RawOutcome`] results, every other method by the generated server. Requests are read with
/// the generated server's codec ([`RequestCodec`]), so a malformed one is answered alike.
#[derive(Clone)]
pub struct DecisionRoute {
    typed: DomicileServer<GatewayService>,
    /// The service the typed server holds too; shared, because the route is cloned for every
    /// request and each `Arc` inside a cloned `GatewayService` is a contended counter.
    service: Arc<GatewayService>,
    max_request: usize,
}

impl DecisionRoute {
    pub fn new(service: GatewayService, max_request: usize) -> Self {
        let service = Arc::new(service);
        let typed = DomicileServer::from_arc(Arc::clone(&service)).max_decoding_message_size(max_request);
        Self { typed, service, max_request }
    }
}

impl tonic::server::NamedService for DecisionRoute {
    const NAME: &'static str = <DomicileServer<GatewayService> as tonic::server::NamedService>::NAME;
}

struct Handler(Arc<GatewayService>);

impl tonic::server::StreamingService<RawDecideStreamItem> for Handler {
    type Response = RawOutcome;
    type ResponseStream = crate::metrics::CountedResults<crate::batch::ResultStream>;
    type Future = std::future::Ready<Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<RawDecideStreamItem>>) -> Self::Future {
        let results = crate::batch::decide_stream(GatewayService::clone(&self.0), request.into_inner());
        std::future::ready(Ok(tonic::Response::new(crate::metrics::counted(results))))
    }
}

struct UnaryHandler(Arc<GatewayService>);

impl tonic::server::UnaryService<pb::DecideRequest> for UnaryHandler {
    type Response = RawDecideResponse;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<RawDecideResponse>, Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<pb::DecideRequest>) -> Self::Future {
        let service = Arc::clone(&self.0);
        Box::pin(async move {
            let decision = service.decide_encoded(request.into_inner()).await?;
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
                let handler = Handler(Arc::clone(&self.service));
                Box::pin(async move {
                    let codec = RequestCodec::<RawOutcome, RawDecideStreamItem>::default();
                    let mut grpc =
                        tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(max_request), None);
                    Ok(grpc.streaming(handler, request).await)
                })
            }
            DECIDE_PATH => {
                let handler = UnaryHandler(Arc::clone(&self.service));
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
