//! Batch decisions forwarded as the home region encoded them.
//!
//! A node's `DecideOutcome` and the gateway's `DecideStreamResult` are the same message on the
//! wire (`uint64 id = 1; oneof result { Decision decision = 2; ItemError error = 3; }`), and a
//! protobuf message field is encoded exactly like a `bytes` field with the same number. So the
//! gateway reads each outcome with the decision as opaque bytes, checks only the id and which
//! variant is set, and writes the same bytes to the caller: no decoding and re-encoding of a
//! decision's strings per item (a quarter of the gateway's CPU in batch), and the gateway cannot
//! alter a decision on the way. Tests below pin the wire equivalence.
//!
//! Used by `DecideStream` only: the route in [`DecideStreamRoute`] serves that one method with
//! these types and hands every other method to the generated service.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::gateway::v1 as pb;
use domicile_proto::pb::gateway::v1::domicile_server::DomicileServer;
use domicile_proto::pb::node::v1 as node_pb;
use prost::bytes::Bytes;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;

use crate::service::GatewayService;

/// `DecideBatchResponse` with each decision kept encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawDecideBatchResponse {
    #[prost(message, repeated, tag = "1")]
    pub outcomes: Vec<RawOutcome>,
}

/// A node's `DecideOutcome`, which is also the caller's `DecideStreamResult`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawOutcome {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(oneof = "RawResult", tags = "2, 3")]
    pub result: Option<RawResult>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RawResult {
    /// An encoded `domicile.common.v1.Decision`.
    #[prost(bytes = "bytes", tag = "2")]
    Decision(Bytes),
    #[prost(message, tag = "3")]
    Error(common::ItemError),
}

impl RawOutcome {
    pub fn error(id: u64, status: &Status) -> Self {
        Self {
            id,
            result: Some(RawResult::Error(common::ItemError {
                code: status.code() as i32,
                message: status.message().to_owned(),
            })),
        }
    }
}

pub const DECIDE_STREAM_PATH: &str = "/domicile.gateway.v1.Domicile/DecideStream";
const DECIDE_BATCH_PATH: &str = "/domicile.node.v1.RegionalNode/DecideBatch";

/// Calls a node's `DecideBatch`, reading the answer with decisions kept encoded.
pub async fn decide_batch(
    channel: crate::stack::NodeChannel,
    request: node_pb::DecideBatchRequest,
) -> Result<RawDecideBatchResponse, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unavailable(format!("node not ready: {e}")))?;
    let codec = tonic_prost::ProstCodec::<node_pb::DecideBatchRequest, RawDecideBatchResponse>::default();
    let path = http::uri::PathAndQuery::from_static(DECIDE_BATCH_PATH);
    Ok(grpc.unary(tonic::Request::new(request), path, codec).await?.into_inner())
}

/// The gateway's `Domicile` service as mounted: `DecideStream` is served here with
/// [`RawOutcome`] results, every other method by the generated server.
#[derive(Clone)]
pub struct DecideStreamRoute {
    typed: DomicileServer<GatewayService>,
    /// The service the typed server holds too; shared, because the route is cloned for every
    /// request and each `Arc` inside a cloned `GatewayService` is a contended counter.
    service: Arc<GatewayService>,
    max_request: usize,
}

impl DecideStreamRoute {
    pub fn new(service: GatewayService, max_request: usize) -> Self {
        let service = Arc::new(service);
        let typed = DomicileServer::from_arc(Arc::clone(&service)).max_decoding_message_size(max_request);
        Self { typed, service, max_request }
    }
}

impl tonic::server::NamedService for DecideStreamRoute {
    const NAME: &'static str = <DomicileServer<GatewayService> as tonic::server::NamedService>::NAME;
}

struct Handler(Arc<GatewayService>);

impl tonic::server::StreamingService<pb::DecideStreamItem> for Handler {
    type Response = RawOutcome;
    type ResponseStream = crate::metrics::CountedResults<crate::batch::ResultStream>;
    type Future = std::future::Ready<Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<pb::DecideStreamItem>>) -> Self::Future {
        let results = crate::batch::decide_stream(GatewayService::clone(&self.0), request.into_inner());
        std::future::ready(Ok(tonic::Response::new(crate::metrics::counted(results))))
    }
}

impl tower::Service<http::Request<Body>> for DecideStreamRoute {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != DECIDE_STREAM_PATH {
            return Box::pin(self.typed.call(request));
        }
        let handler = Handler(Arc::clone(&self.service));
        let max_request = self.max_request;
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<RawOutcome, pb::DecideStreamItem>::default();
            let mut grpc = tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(max_request), None);
            Ok(grpc.streaming(handler, request).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn decision() -> common::Decision {
        common::Decision {
            effect: common::Effect::Allow as i32,
            reasons: vec!["de.marketing.email".into()],
            pack: Some(common::PackRef { id: "de".into(), version: "2026.11.0".into() }),
            obligations: vec![common::Obligation { id: "unsubscribe".into(), text: "offer a way out".into() }],
            explanation: "consent granted".into(),
            valid_until: None,
            subject_ref: "eu-central/00112233445566778899aabbccddeeff".into(),
            region: "eu-central".into(),
        }
    }

    /// A node's encoded outcome, read raw and written again, is byte for byte what the caller
    /// would have received from a typed `DecideStreamResult`, for decisions and errors.
    #[test]
    fn raw_outcomes_are_the_callers_results_on_the_wire() {
        let node = node_pb::DecideBatchResponse {
            outcomes: vec![
                node_pb::DecideOutcome { id: 7, result: Some(node_pb::decide_outcome::Result::Decision(decision())) },
                node_pb::DecideOutcome {
                    id: 8,
                    result: Some(node_pb::decide_outcome::Result::Error(common::ItemError {
                        code: 5,
                        message: "no such subject in this region".into(),
                    })),
                },
                node_pb::DecideOutcome { id: 9, result: None },
            ],
        };
        let raw = RawDecideBatchResponse::decode(node.encode_to_vec().as_slice()).unwrap();
        assert_eq!(raw.outcomes.len(), 3);
        assert!(matches!(raw.outcomes[0].result, Some(RawResult::Decision(_))));
        assert!(matches!(raw.outcomes[1].result, Some(RawResult::Error(ref e)) if e.code == 5));
        assert_eq!(raw.outcomes[2].result, None);
        for (raw, typed) in raw.outcomes.iter().zip(&node.outcomes) {
            let expected = pb::DecideStreamResult {
                id: typed.id,
                result: typed.result.clone().map(|r| match r {
                    node_pb::decide_outcome::Result::Decision(d) => pb::decide_stream_result::Result::Decision(d),
                    node_pb::decide_outcome::Result::Error(e) => pb::decide_stream_result::Result::Error(e),
                }),
            };
            assert_eq!(raw.encode_to_vec(), expected.encode_to_vec());
            assert_eq!(pb::DecideStreamResult::decode(raw.encode_to_vec().as_slice()).unwrap(), expected);
        }
    }
}
