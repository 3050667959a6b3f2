//! Requests that cannot be read, sent as raw bytes over real mutual TLS to a gateway and
//! straight to a node (as an operator of its region): each gets a precise status, never
//! INTERNAL (which operators alert on as the server's fault) nor OUT_OF_RANGE, and no message
//! repeats what was sent (invariant 8). A `DecideStream` with a bad item answers every item
//! before it, then ends with the bad item's status. Reflection lists only what each process
//! serves, and a method it does not serve is UNIMPLEMENTED naming what it does. A request with
//! more items than its method takes is refused before they are built: a few such requests at
//! once leave the gateway's and the node's peak memory where it was.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed call fails the test"
)]

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use domicile_cluster_tests::pb::common::v1 as common;
use domicile_cluster_tests::pb::gateway::v1 as gw;
use domicile_cluster_tests::{Cluster as _, ScenarioCluster, TestCluster, identifier, region, select_ref};
use domicile_proto::prost::Message as _;
use domicile_proto::prost::bytes::{Buf, BufMut, Bytes};
use domicile_proto::prost::encoding::{WireType, encode_key, encode_varint};
use domicile_runtime::identity::Scope;
use domicile_runtime::pki::GATEWAY_SERVER_NAME;
use http_body::Body as _;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_domicile-e2e");
const REGION: &str = "eu-central";
/// In every malformed payload; no status may repeat it.
const PII: &str = "anna.wire-probe@example.de";

const GATEWAY_LIMIT: usize = domicile_gateway::MAX_REQUEST_BYTES;
const NODE_LIMIT: usize = domicile_node::MAX_REQUEST_BYTES;
const IMPORT_LIMIT: usize = domicile_gateway::MAX_IMPORT_REQUEST_BYTES;

const GW_REGISTER: &str = "/domicile.gateway.v1.Domicile/Register";
const GW_DECIDE: &str = "/domicile.gateway.v1.Domicile/Decide";
const GW_IMPORT: &str = "/domicile.gateway.v1.Domicile/ImportConsent";
const GW_DECIDE_STREAM: &str = "/domicile.gateway.v1.Domicile/DecideStream";
const NODE_REGISTER: &str = "/domicile.node.v1.RegionalNode/Register";
const NODE_DECIDE_BATCH: &str = "/domicile.node.v1.RegionalNode/DecideBatch";
const NODE_IMPORT: &str = "/domicile.node.v1.RegionalNode/ImportConsent";
const GW_RECORD: &str = "/domicile.gateway.v1.Domicile/RecordConsent";
const NODE_RECORD: &str = "/domicile.node.v1.RegionalNode/RecordConsent";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

// === a client that sends any bytes as a message ===

#[derive(Debug, Clone, Copy, Default)]
struct BytesCodec;

#[derive(Debug, Clone, Copy, Default)]
struct BytesCoder;

impl Codec for BytesCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = BytesCoder;
    type Decoder = BytesCoder;

    fn encoder(&mut self) -> BytesCoder {
        BytesCoder
    }

    fn decoder(&mut self) -> BytesCoder {
        BytesCoder
    }
}

impl Encoder for BytesCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for BytesCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

async fn unary(channel: &Channel, path: &'static str, message: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(message), path, BytesCodec).await.map(tonic::Response::into_inner)
}

/// Sends `items` as one `DecideStream`; the results (decoded) and how the stream ended.
async fn decide_stream(channel: &Channel, items: Vec<Vec<u8>>) -> (Vec<gw::DecideStreamResult>, tonic::Status) {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(GW_DECIDE_STREAM);
    let request = tonic::Request::new(tokio_stream::iter(items));
    let mut stream = match grpc.streaming(request, path, BytesCodec).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), status),
    };
    let mut results = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(bytes)) => results.push(gw::DecideStreamResult::decode(bytes.as_slice()).unwrap()),
            Ok(None) => return (results, tonic::Status::ok("")),
            Err(status) => return (results, status),
        }
    }
}

/// A body of one chunk of bytes, for requests tonic's client would not frame.
struct OneChunk(Option<Bytes>);

impl http_body::Body for OneChunk {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.take().map(|bytes| Ok(http_body::Frame::data(bytes))))
    }
}

/// Sends `body` as a gRPC request body exactly as given (frame headers included) and returns
/// the status the server answers with.
async fn raw_http(channel: &Channel, path: &str, body: Vec<u8>) -> tonic::Status {
    use tonic::codegen::Service as _;
    let mut channel = channel.clone();
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.unwrap();
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(OneChunk(Some(Bytes::from(body)))))
        .unwrap();
    let response = channel.call(request).await.unwrap();
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status;
    }
    let mut body = response.into_body();
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            Some(Ok(frame)) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return tonic::Status::from_header_map(&trailers).expect("a grpc-status trailer");
                }
            }
            Some(Err(status)) => return status,
            None => panic!("{path}: the response ended without a status"),
        }
    }
}

fn frame(flag: u8, declared: u32, message: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&declared.to_be_bytes());
    out.extend_from_slice(message);
    out
}

// === payloads ===

/// Field 1 of every request probed here is length-delimited (a string or a message). Returns
/// the message with field 1 holding `PII` followed by a byte that is never UTF-8.
fn invalid_utf8_in_field_1() -> Vec<u8> {
    let mut value = PII.as_bytes().to_vec();
    value.push(0xff);
    let mut out = Vec::new();
    encode_key(1, WireType::LengthDelimited, &mut out);
    encode_varint(value.len() as u64, &mut out);
    out.extend_from_slice(&value);
    out
}

fn garbage() -> Vec<u8> {
    let mut out = vec![0xff; 11];
    out.extend_from_slice(PII.as_bytes());
    out
}

/// Field 1 says it is 60 bytes long; the message ends after a few.
fn truncated() -> Vec<u8> {
    let mut out = vec![0x0a, 60];
    out.extend_from_slice(&PII.as_bytes()[..8]);
    out
}

/// Well-formed protobuf, but nested deeper than the decoder's recursion limit (100): groups of
/// an unknown field inside each other, as any message may carry.
fn deeply_nested() -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..150 {
        encode_key(1000, WireType::StartGroup, &mut out);
    }
    for _ in 0..150 {
        encode_key(1000, WireType::EndGroup, &mut out);
    }
    out
}

/// Valid protobuf (an unknown field of `PII` repeated) one byte over `limit`.
fn oversized(limit: usize) -> Vec<u8> {
    let mut key = Vec::new();
    encode_key(1000, WireType::LengthDelimited, &mut key);
    let len_len = (1..=5).find(|n| {
        let payload = limit + 1 - key.len() - n;
        domicile_proto::prost::encoding::encoded_len_varint(payload as u64) == *n
    });
    let payload = limit + 1 - key.len() - len_len.unwrap();
    let mut out = key;
    encode_varint(payload as u64, &mut out);
    out.extend(PII.bytes().cycle().take(payload));
    assert_eq!(out.len(), limit + 1);
    out
}

fn assert_status(context: &str, status: &tonic::Status, code: Code, message_starts: &str) {
    assert_eq!(status.code(), code, "{context}: {status:?}");
    assert!(status.message().starts_with(message_starts), "{context}: {status:?}");
    assert!(!status.message().contains("anna"), "{context}: the status repeats the request: {status:?}");
}

/// Every malformed and oversized shape, at one unary method; `utf8` is the message a string
/// that is not UTF-8 gets (None: the method reads that field as bytes and checks it per item).
async fn probe_unary(channel: &Channel, path: &'static str, limit: usize, utf8: Option<&str>) {
    if let Some(expected) = utf8 {
        let status = unary(channel, path, invalid_utf8_in_field_1()).await.unwrap_err();
        assert_status(&format!("{path} utf8"), &status, Code::InvalidArgument, expected);
    }
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("garbage", garbage(), "malformed request: not a valid protobuf message"),
        ("truncated", truncated(), "malformed request: not a valid protobuf message"),
        ("nested", deeply_nested(), "malformed request: nested too deeply"),
    ];
    for (name, message, expected) in cases {
        let status = unary(channel, path, message).await.unwrap_err();
        assert_status(&format!("{path} {name}"), &status, Code::InvalidArgument, expected);
    }
    let status = unary(channel, path, oversized(limit)).await.unwrap_err();
    assert_status(&format!("{path} oversized"), &status, Code::ResourceExhausted, "request message larger than");
    assert!(status.message().contains(&limit.to_string()), "{status:?}");

    // Broken gRPC framing, below what tonic's client would ever send.
    let cut = frame(0, 40, b"only a few bytes");
    let status = raw_http(channel, path, cut).await;
    assert_status(&format!("{path} cut frame"), &status, Code::InvalidArgument, "malformed gRPC frame");
    let status = raw_http(channel, path, Vec::new()).await;
    assert_status(
        &format!("{path} no message"),
        &status,
        Code::InvalidArgument,
        "malformed request: no request message",
    );
    let status = raw_http(channel, path, frame(1, 2, &[8, 1])).await;
    assert_status(&format!("{path} compressed flag"), &status, Code::InvalidArgument, "malformed gRPC frame");
    let status = raw_http(channel, path, frame(7, 2, &[8, 1])).await;
    assert_status(&format!("{path} unknown flag"), &status, Code::InvalidArgument, "malformed gRPC frame");
    // The header alone says it is too large: no byte of the message is needed.
    let status = raw_http(channel, path, frame(0, u32::MAX, &[])).await;
    assert_status(&format!("{path} huge header"), &status, Code::ResourceExhausted, "request message larger than");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_precise_codes_at_the_gateway_and_the_node() {
    let cluster = ScenarioCluster::start(BIN, &[REGION]).await.expect("cluster starts");
    let gateway = cluster.gateway_channel().await.unwrap();
    let node = cluster.node_channel(&region(REGION)).await.unwrap();

    // Generated services, the hand-written routes, and health (a codec that is not ours).
    probe_unary(&gateway, GW_REGISTER, GATEWAY_LIMIT, Some("invalid `jurisdiction`: is not UTF-8")).await;
    probe_unary(&gateway, GW_DECIDE, GATEWAY_LIMIT, None).await;
    probe_unary(&gateway, HEALTH_CHECK, GATEWAY_LIMIT, Some("invalid `service`: is not UTF-8")).await;
    // ImportConsent alone has a larger limit of its own: a message over the general one is
    // served (this one carries no items), one over its own is refused like any other.
    probe_unary(&gateway, GW_IMPORT, IMPORT_LIMIT, None).await;
    const { assert!(GATEWAY_LIMIT < IMPORT_LIMIT) };
    let reply = unary(&gateway, GW_IMPORT, oversized(GATEWAY_LIMIT)).await.expect("an import over 64 KiB is served");
    assert!(reply.is_empty(), "no items, no outcomes: {reply:?}");
    probe_unary(&node, NODE_REGISTER, NODE_LIMIT, Some("invalid `jurisdiction`: is not UTF-8")).await;
    probe_unary(&node, NODE_DECIDE_BATCH, NODE_LIMIT, None).await;
    probe_unary(&node, HEALTH_CHECK, NODE_LIMIT, Some("invalid `service`: is not UTF-8")).await;

    // Where strings are read in place, a string that is not UTF-8 is refused by field name.
    let mut decide = Vec::new();
    encode_key(2, WireType::LengthDelimited, &mut decide);
    encode_varint(PII.len() as u64 + 1, &mut decide);
    decide.extend_from_slice(PII.as_bytes());
    decide.push(0xff);
    let status = unary(&gateway, GW_DECIDE, decide).await.unwrap_err();
    assert_status("gateway Decide utf8", &status, Code::InvalidArgument, "invalid `purpose`: is not UTF-8");
    let item = domicile_cluster_tests::pb::node::v1::DecideItem {
        id: 7,
        subject: domicile_cluster_tests::node_ref(&format!("{REGION}/{}", "ab".repeat(16))),
        purpose: "marketing".into(),
        channel: "email".into(),
        ..Default::default()
    };
    let mut item = item.encode_to_vec();
    let at = item.windows(5).position(|w| w == b"email").unwrap();
    item[at] = 0xff;
    let mut batch = Vec::new();
    encode_key(1, WireType::LengthDelimited, &mut batch);
    encode_varint(item.len() as u64, &mut batch);
    batch.extend_from_slice(&item);
    let reply = unary(&node, NODE_DECIDE_BATCH, batch).await.unwrap();
    let reply = domicile_cluster_tests::pb::node::v1::DecideBatchResponse::decode(reply.as_slice()).unwrap();
    match &reply.outcomes[..] {
        [outcome] => match &outcome.result {
            Some(domicile_cluster_tests::pb::node::v1::decide_outcome::Result::Error(e)) => {
                assert_eq!((outcome.id, e.code), (7, Code::InvalidArgument as i32), "{e:?}");
                assert_eq!(e.message, "invalid `channel`: is not UTF-8");
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }

    // The servers served all of that without a crash.
    cluster
        .gateway()
        .await
        .unwrap()
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", "after.the.probes@example.de")],
            idempotency_key: String::new(),
        })
        .await
        .expect("the gateway and the node still serve");
}

fn item(id: u64, subject_ref: &str) -> Vec<u8> {
    gw::DecideStreamItem {
        id,
        subject: select_ref(subject_ref),
        purpose: "marketing".into(),
        channel: "email".into(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Asserts that `results` answer exactly `ids`, each with a decision.
fn assert_every_item_decided(context: &str, results: &[gw::DecideStreamResult], ids: std::ops::RangeInclusive<u64>) {
    let mut seen: Vec<u64> = results.iter().map(|r| r.id).collect();
    seen.sort_unstable();
    let expected: Vec<u64> = ids.collect();
    assert_eq!(seen.len(), expected.len(), "{context}: every earlier item gets one result");
    assert_eq!(seen, expected, "{context}");
    for result in results {
        assert!(
            matches!(result.result, Some(gw::decide_stream_result::Result::Decision(_))),
            "{context}: item {} got {:?}",
            result.id,
            result.result
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_decide_stream_item_ends_the_stream_precisely_after_every_earlier_item_is_answered() {
    let cluster = ScenarioCluster::start(BIN, &[REGION]).await.expect("cluster starts");
    let mut client = cluster.gateway().await.unwrap();
    let mut subjects = Vec::new();
    for n in 0..3 {
        let reply = client
            .register(gw::RegisterRequest {
                jurisdiction: "DE".into(),
                identifiers: vec![identifier("email", &format!("stream.{n}@example.de"))],
                idempotency_key: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        subjects.push(reply.subject_ref);
    }
    let gateway = cluster.gateway_channel().await.unwrap();
    // Two full node batches and a partial one in flight or waiting when the bad item arrives.
    const VALID: u64 = 2_500;
    let valid = || (1..=VALID).map(|id| item(id, &subjects[id as usize % subjects.len()])).collect::<Vec<_>>();

    let cases: [(&str, Vec<Vec<u8>>, Code, String); 4] = [
        (
            "oversized, then garbage",
            vec![oversized(GATEWAY_LIMIT), garbage()],
            Code::ResourceExhausted,
            format!("item {} of the stream: request message larger than", VALID + 1),
        ),
        (
            "garbage",
            vec![garbage(), item(VALID + 2, &subjects[0])],
            Code::InvalidArgument,
            format!("item {} of the stream: malformed request", VALID + 1),
        ),
        (
            "truncated",
            vec![truncated()],
            Code::InvalidArgument,
            format!("item {} of the stream: malformed request", VALID + 1),
        ),
        (
            "nested",
            vec![deeply_nested()],
            Code::InvalidArgument,
            format!("item {} of the stream: malformed request: nested too deeply", VALID + 1),
        ),
    ];
    for (name, bad, code, message) in cases {
        let mut items = valid();
        items.extend(bad);
        let (results, status) = decide_stream(&gateway, items).await;
        assert_status(name, &status, code, &message);
        assert_every_item_decided(name, &results, 1..=VALID);
    }

    // A bad item right at the start: no result, the precise status.
    let (results, status) = decide_stream(&gateway, vec![oversized(GATEWAY_LIMIT)]).await;
    assert!(results.is_empty());
    assert_status("oversized first", &status, Code::ResourceExhausted, "item 1 of the stream:");

    // An item that reads as protobuf but holds a string that is not UTF-8 fails alone, by id,
    // and the stream goes on.
    let mut items = valid();
    let mut bad = gw::DecideStreamItem {
        id: VALID + 1,
        subject: select_ref(&subjects[0]),
        purpose: "marketing".into(),
        channel: "email".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let at = bad.windows(5).position(|w| w == b"email").unwrap();
    bad[at] = 0xff;
    items.push(bad);
    items.push(item(VALID + 2, &subjects[1]));
    let (mut results, status) = decide_stream(&gateway, items).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    let failed = results.iter().position(|r| r.id == VALID + 1).expect("the bad item's result");
    let failed = results.remove(failed);
    match failed.result {
        Some(gw::decide_stream_result::Result::Error(common::ItemError { code, message })) => {
            assert_eq!(code, Code::InvalidArgument as i32);
            assert_eq!(message, "invalid `channel`: is not UTF-8");
        }
        other => panic!("{other:?}"),
    }
    let last = results.iter().position(|r| r.id == VALID + 2).expect("the item after it");
    results.remove(last);
    assert_every_item_decided("utf8", &results, 1..=VALID);
}

async fn list_services(channel: &Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().expect("a reply");
    match reply.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("{other:?}"),
    }
}

async fn file_containing(channel: &Channel, symbol: &str) -> Result<(), tonic::Status> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_owned())),
    };
    let mut replies = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    match replies.message().await?.and_then(|r| r.message_response) {
        Some(MessageResponse::FileDescriptorResponse(_)) => Ok(()),
        Some(MessageResponse::ErrorResponse(e)) => {
            Err(tonic::Status::new(Code::from_i32(e.error_code), e.error_message))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_process_lists_and_serves_only_its_own_services() {
    let cluster = ScenarioCluster::start(BIN, &[REGION]).await.expect("cluster starts");
    let gateway = cluster.gateway_channel().await.unwrap();
    let node = cluster.node_channel(&region(REGION)).await.unwrap();
    let common = ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"];

    let mut expected = vec!["domicile.gateway.v1.Domicile".to_owned()];
    expected.extend(common.map(String::from));
    assert_eq!(list_services(&gateway).await, expected);
    let mut expected = vec!["domicile.node.v1.RegionalNode".to_owned()];
    expected.extend(common.map(String::from));
    assert_eq!(list_services(&node).await, expected);

    // Each describes its own API in full and nothing of the other's.
    file_containing(&gateway, "domicile.gateway.v1.Domicile").await.unwrap();
    file_containing(&gateway, "domicile.common.v1.Decision").await.unwrap();
    file_containing(&node, "domicile.node.v1.RegionalNode").await.unwrap();
    assert!(file_containing(&gateway, "domicile.node.v1.RegionalNode").await.is_err());
    assert!(file_containing(&node, "domicile.gateway.v1.Domicile").await.is_err());

    // A method of the other process: UNIMPLEMENTED, saying what this one serves.
    let status = unary(&gateway, NODE_DECIDE_BATCH, Vec::new()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(
        status.message(),
        "no such method on this gateway; it serves domicile.gateway.v1.Domicile, grpc.health.v1.Health, \
         grpc.reflection.v1.ServerReflection (list them with gRPC reflection)"
    );
    let status = unary(&node, GW_REGISTER, Vec::new()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(
        status.message(),
        "no such method on this node; it serves domicile.node.v1.RegionalNode, grpc.health.v1.Health, \
         grpc.reflection.v1.ServerReflection (list them with gRPC reflection)"
    );
    // An unknown method of a service the node does serve, and a made-up service.
    for path in ["/domicile.node.v1.RegionalNode/Nothing", "/made.up.Service/Call"] {
        let mut grpc = tonic::client::Grpc::new(node.clone());
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(tonic::Request::new(Vec::new()), http::uri::PathAndQuery::try_from(path).unwrap(), BytesCodec)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{path}: {status:?}");
        assert!(status.message().contains("domicile.node.v1.RegionalNode"), "{path}: {status:?}");
    }
}

// === too many items ===

/// Hostile requests of each kind sent at once.
const AT_ONCE: usize = 4;
/// How much a process's peak resident memory may grow while it refuses them all: a few times
/// their bytes (each is buffered whole), never their items.
const GROWTH_ALLOWED_KIB: u64 = 64 * 1024;

/// The peak resident memory of process `pid` so far (VmHWM), in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `bytes` bytes of empty items in field 1 (`0a 00` repeated): valid protobuf for every request
/// whose field 1 is its list of items, one item per two bytes.
fn empty_items(bytes: usize) -> Vec<u8> {
    [0x0a, 0x00].repeat(bytes / 2)
}

/// About `bytes` bytes holding one item whose channels (field 4) are empty strings (`22 00`
/// repeated): a list inside an item, two bytes an entry.
fn one_item_of_empty_channels(bytes: usize) -> Vec<u8> {
    delimited(1, &[0x22, 0x00].repeat((bytes - 8) / 2))
}

/// `payload` as length-delimited field `tag`.
fn delimited(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(tag << 3) | 2];
    encode_varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

/// About `bytes` bytes holding one import item (or, with `item: false`, a consent record) whose
/// `evidence.signal.gpp_sections` (packed numbers, one byte each) fill the request: each byte
/// decodes to a 4-byte number, so a decoder would build four times the request.
fn signal_sections(bytes: usize, item: bool) -> Vec<u8> {
    let signal = delimited(5, &delimited(6, &vec![0x01; bytes - 24]));
    // An import item's `evidence` is its field 6; a consent record's, its field 5.
    if item { delimited(1, &delimited(6, &signal)) } else { delimited(5, &signal) }
}

/// Sends `message` to `path` `AT_ONCE` times at once, each on a connection of its own, and
/// asserts that every one is refused with `code` and exactly `expected`.
async fn refused_at_once(channels: &[Channel], path: &'static str, message: &[u8], code: Code, expected: &str) {
    let calls = channels.iter().map(|channel| {
        let (channel, message) = (channel.clone(), message.to_vec());
        tokio::spawn(async move { unary(&channel, path, message).await })
    });
    let calls: Vec<_> = calls.collect();
    for call in calls {
        let status = call.await.unwrap().expect_err("too many items are refused");
        assert_eq!((status.code(), status.message()), (code, expected), "{path}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_items_are_refused_before_they_are_built_at_the_gateway_and_the_node() {
    let cluster = TestCluster::start(BIN, &[REGION]).await.expect("cluster starts");
    let pid = |in_region: bool| {
        cluster.cluster.processes().find(|p| p.region.is_some() == in_region).and_then(|p| p.pid()).unwrap()
    };
    let (gateway_pid, node_pid) = (pid(false), pid(true));
    // What the attacker held: a capture credential (and, in the region, a decide one).
    let caller = cluster.issue_caller("bulk-importer", REGION, &[Scope::Capture, Scope::Decide]).unwrap();
    let gateway_addr = cluster.gateway_addr().to_string();
    let node_addr = cluster.node_addr(&region(REGION)).unwrap().to_string();
    let node_name = region(REGION).node_server_name();
    let mut gateways = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..AT_ONCE {
        gateways.push(domicile_cluster_tests::channel(&gateway_addr, &caller, GATEWAY_SERVER_NAME).await.unwrap());
        nodes.push(domicile_cluster_tests::channel(&node_addr, &caller, &node_name).await.unwrap());
    }

    // Warm-up: requests as large as the hostile ones, but without items, on every connection,
    // so the baseline includes buffers for messages of that size.
    for channel in &gateways {
        let reply = unary(channel, GW_IMPORT, oversized(IMPORT_LIMIT - 1)).await.expect("an import without items");
        assert!(reply.is_empty(), "no items, no outcomes");
    }
    for channel in &nodes {
        unary(channel, NODE_IMPORT, oversized(NODE_LIMIT - 1)).await.expect("an import without items");
        unary(channel, NODE_DECIDE_BATCH, oversized(NODE_LIMIT - 1)).await.expect("a batch without items");
    }
    let (gateway_before, node_before) = (peak_kib(gateway_pid), peak_kib(node_pid));

    // 524,288 empty items in 1 MiB at the gateway; 2,097,152 in 4 MiB at the node: within the
    // size limits, far beyond the item limits (5,000 per import, 10,000 per decision batch).
    let import_limit = domicile_proto::limits::IMPORT_ITEMS.max;
    let batch_limit = domicile_proto::limits::DECIDE_BATCH_ITEMS.max;
    let too_many_imports = format!("invalid `items`: at most {import_limit} items per call");
    let too_many_decisions = format!("invalid `items`: at most {batch_limit} items per batch");
    let gateway_items = empty_items(IMPORT_LIMIT);
    let node_items = empty_items(NODE_LIMIT);
    refused_at_once(&gateways, GW_IMPORT, &gateway_items, Code::InvalidArgument, &too_many_imports).await;
    refused_at_once(&nodes, NODE_IMPORT, &node_items, Code::InvalidArgument, &too_many_imports).await;
    refused_at_once(&nodes, NODE_DECIDE_BATCH, &node_items, Code::InvalidArgument, &too_many_decisions).await;
    // One item over the limit is refused alike (the limit itself is served, below).
    let over = empty_items(2 * (import_limit + 1));
    refused_at_once(&gateways[..1], GW_IMPORT, &over, Code::InvalidArgument, &too_many_imports).await;
    // A list inside an item: one item whose channels fill the request (2,097,148 empty strings
    // at the node, some 50 MB built each before they were counted there too).
    let channels_limit = domicile_proto::limits::CHANNELS.max;
    let too_many_channels = format!("invalid `items[0].channels`: at most {channels_limit} channels per consent");
    let gateway_channels = one_item_of_empty_channels(IMPORT_LIMIT);
    let node_channels = one_item_of_empty_channels(NODE_LIMIT);
    refused_at_once(&gateways, GW_IMPORT, &gateway_channels, Code::InvalidArgument, &too_many_channels).await;
    refused_at_once(&nodes, NODE_IMPORT, &node_channels, Code::InvalidArgument, &too_many_channels).await;

    // A consent write carrying signal evidence of its own (only RecordSignal records any),
    // whose packed section ids would decode to four bytes per byte sent: refused unread.
    let no_signal =
        |field: &str| format!("invalid `{field}`: must not be set (only RecordSignal records signal evidence)");
    let (in_item, in_record) = (no_signal("items[0].evidence.signal"), no_signal("evidence.signal"));
    let code = Code::InvalidArgument;
    refused_at_once(&gateways, GW_IMPORT, &signal_sections(IMPORT_LIMIT, true), code, &in_item).await;
    refused_at_once(&nodes, NODE_IMPORT, &signal_sections(NODE_LIMIT, true), code, &in_item).await;
    refused_at_once(&gateways, GW_RECORD, &signal_sections(GATEWAY_LIMIT, false), code, &in_record).await;
    refused_at_once(&nodes, NODE_RECORD, &signal_sections(NODE_LIMIT, false), code, &in_record).await;
    let (gateway_after, node_after) = (peak_kib(gateway_pid), peak_kib(node_pid));
    eprintln!(
        "peak resident memory around {AT_ONCE} requests of each kind: gateway {gateway_before} → {gateway_after} \
         KiB, node {node_before} → {node_after} KiB"
    );
    assert!(
        gateway_after < gateway_before + GROWTH_ALLOWED_KIB,
        "the gateway built the items: peak {gateway_before} → {gateway_after} KiB"
    );
    assert!(
        node_after < node_before + GROWTH_ALLOWED_KIB,
        "the node built the items: peak {node_before} → {node_after} KiB"
    );

    // Both still serve, and an import of as many empty items as allowed is read at each (every
    // item refused on its own, for what it lacks).
    let at_limit = empty_items(2 * import_limit);
    let reply = unary(&gateways[0], GW_IMPORT, at_limit.clone()).await.expect("an import at the limit is served");
    let reply = gw::ImportConsentResponse::decode(reply.as_slice()).unwrap();
    assert_eq!(reply.outcomes.len(), import_limit);
    assert!(reply.outcomes.iter().all(|o| matches!(o.result, Some(gw::import_consent_outcome::Result::Refused(_)))));
    let reply = unary(&nodes[0], NODE_IMPORT, at_limit).await.expect("an import at the limit is served");
    let reply = domicile_cluster_tests::pb::node::v1::ImportConsentResponse::decode(reply.as_slice()).unwrap();
    assert_eq!(reply.outcomes.len(), import_limit);
}
