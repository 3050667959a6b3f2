//! `DecideBatch` served with the hand-written wire types of `domicile_proto::raw`: the request's
//! strings are read in place and each outcome is encoded straight from the pack's borrowed
//! decision, so a batch allocates per call, not per string. Every other method goes to the
//! generated server. The bytes are those of the generated `DecideBatchResponse` (pinned by the
//! proto crate's tests), so callers see no difference.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use domicile_proto::pb::node::v1::regional_node_server::RegionalNodeServer;
use domicile_proto::raw::{DECIDE_BATCH_PATH, EncodedDecideBatch, RawDecideBatchRequest};
use domicile_proto::wire::RequestCodec;
use tonic::body::Body;
use tonic::codegen::http;

use crate::service::NodeService;
use crate::store::Store;

/// The node's `RegionalNode` service as mounted.
pub struct DecideBatchRoute<S: Store> {
    typed: RegionalNodeServer<NodeService<S>>,
    /// The service the typed server holds too, shared: the route is cloned for every request.
    service: Arc<NodeService<S>>,
    max_request: usize,
}

impl<S: Store> Clone for DecideBatchRoute<S> {
    fn clone(&self) -> Self {
        Self { typed: self.typed.clone(), service: Arc::clone(&self.service), max_request: self.max_request }
    }
}

impl<S: Store + 'static> DecideBatchRoute<S> {
    pub fn new(service: NodeService<S>, max_request: usize) -> Self {
        let service = Arc::new(service);
        let typed = RegionalNodeServer::from_arc(Arc::clone(&service)).max_decoding_message_size(max_request);
        Self { typed, service, max_request }
    }
}

impl<S: Store> tonic::server::NamedService for DecideBatchRoute<S> {
    const NAME: &'static str = <RegionalNodeServer<NodeService<S>> as tonic::server::NamedService>::NAME;
}

struct Handler<S>(Arc<NodeService<S>>);

impl<S: Store + 'static> tonic::server::UnaryService<RawDecideBatchRequest> for Handler<S> {
    type Response = EncodedDecideBatch;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<EncodedDecideBatch>, tonic::Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<RawDecideBatchRequest>) -> Self::Future {
        // On the embedded store this completes without waiting (reads hit the store's cache, the
        // audit append is one buffered write); on a database it awaits its queries.
        let service = Arc::clone(&self.0);
        Box::pin(async move { service.decide_batch_encoded(request.into_inner()).await.map(tonic::Response::new) })
    }
}

impl<S: Store + 'static> tower::Service<http::Request<Body>> for DecideBatchRoute<S> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != DECIDE_BATCH_PATH {
            return Box::pin(self.typed.call(request));
        }
        let handler = Handler(Arc::clone(&self.service));
        let max_request = self.max_request;
        Box::pin(async move {
            // The generated server's codec: a malformed request is answered alike.
            let codec = RequestCodec::<EncodedDecideBatch, RawDecideBatchRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(max_request), None);
            Ok(grpc.unary(handler, request).await)
        })
    }
}
