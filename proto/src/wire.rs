//! How a request that cannot be read is answered, by every server of the workspace (gateway and
//! node; generated services, the hand-written routes of `raw.rs`, health and reflection alike).
//!
//! - Not valid protobuf (garbage, truncated, a string field that is not UTF-8, nesting deeper than
//!   prost's recursion limit): `INVALID_ARGUMENT`, from [`decode_error_status`], the one mapping
//!   of a decode error to a status. Servers read requests with [`RequestCodec`] (generated
//!   servers via `codec_path` in `build.rs`, the raw routes by name), which applies it; tonic's
//!   own codec would answer `INTERNAL`, the code operators alert on as the server's fault.
//! - Larger than the process's limit: `RESOURCE_EXHAUSTED` (gRPC's code for a message over the
//!   receiver's limit), from [`WireLayer`], which reads each gRPC frame header as the body streams
//!   in and ends the body with the status before tonic sees the header (tonic would answer
//!   `OUT_OF_RANGE`). Nothing is buffered: the layer keeps the 5-byte header and a count.
//! - A broken gRPC frame (the body ends inside a message, a compression flag the request did not
//!   announce, no message at all in a unary call): `INVALID_ARGUMENT`, also from [`WireLayer`].
//! - A method the process does not serve: `UNIMPLEMENTED` naming the services it does serve.
//!
//! Messages name fields and limits, never a byte of the request (invariant 8).
//!
//! Replies read by a client keep tonic's codec: a reply that is not valid protobuf is the
//! server's fault, and `INTERNAL` is right there.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http_body::{Frame, SizeHint};
use prost::bytes::Bytes;
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::codegen::http;

/// What prost's `DecodeError` says first (`Display`), also in tonic's `INTERNAL` statuses.
const DECODE_PREFIX: &str = "failed to decode Protobuf message: ";
/// gRPC frame header: compression flag (1 byte), message length (4 bytes, big-endian).
const HEADER: usize = 5;

/// The status for a request message prost cannot decode: `INVALID_ARGUMENT` naming the field
/// (by its path from the request, e.g. `identifiers.value`) and the problem.
pub fn decode_error_status(error: &prost::DecodeError) -> Status {
    decode_text_status(&error.to_string())
}

/// [`decode_error_status`] from the error's text. prost's descriptions are matched against a
/// closed list; anything else (some name values read from the input, such as an invalid key) is
/// reported without its description.
fn decode_text_status(text: &str) -> Status {
    let mut rest = text.strip_prefix(DECODE_PREFIX).unwrap_or(text);
    // `Message.field: ` entries, innermost first, then the description.
    let mut fields = Vec::new();
    while let Some((entry, tail)) = rest.split_once(": ") {
        let Some((message, field)) = entry.split_once('.') else { break };
        if !is_identifier(message) || !is_identifier(field) {
            break;
        }
        fields.push(field);
        rest = tail;
    }
    fields.reverse();
    let path = fields.join(".");
    let at = if path.is_empty() { String::new() } else { format!(" at `{path}`") };
    match rest {
        "invalid string value: data is not UTF-8 encoded" if !path.is_empty() => {
            Status::invalid_argument(format!("invalid `{path}`: is not UTF-8"))
        }
        "invalid string value: data is not UTF-8 encoded" => {
            Status::invalid_argument("malformed request: a string field is not UTF-8")
        }
        "recursion limit reached" => Status::invalid_argument(format!("malformed request: nested too deeply{at}")),
        _ => Status::invalid_argument(format!("malformed request: not a valid protobuf message{at}")),
    }
}

fn is_identifier(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The status for a request message larger than the receiving process's limit.
pub fn too_large_status(role: &str, limit: usize) -> Status {
    Status::resource_exhausted(format!("request message larger than this {role}'s limit of {limit} bytes"))
}

/// tonic's prost codec, except that a request that is not valid protobuf is answered with
/// [`decode_error_status`]. The codec of every server in the workspace.
pub struct RequestCodec<E, D> {
    _types: PhantomData<fn() -> (E, D)>,
}

impl<E, D> Default for RequestCodec<E, D> {
    fn default() -> Self {
        Self { _types: PhantomData }
    }
}

impl<E, D> Codec for RequestCodec<E, D>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = tonic_prost::ProstEncoder<E>;
    type Decoder = RequestDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder { _type: PhantomData }
    }
}

/// The decoding half of [`RequestCodec`].
pub struct RequestDecoder<D> {
    _type: PhantomData<fn() -> D>,
}

impl<D: prost::Message + Default> Decoder for RequestDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(buf).map(Some).map_err(|e| decode_error_status(&e))
    }
}

// ---------------------------------------------------------------------------------------------
// The server layer: methods served, frame sizes and shapes.
// ---------------------------------------------------------------------------------------------

/// What a process serves and accepts; shared by every request.
#[derive(Debug)]
struct Rules {
    role: &'static str,
    limit: usize,
    methods: HashMap<String, Method>,
    /// The services, for the message of an unknown method.
    services: String,
}

#[derive(Debug, Clone, Copy)]
struct Method {
    /// The caller streams requests (else a request carries exactly one message).
    client_streaming: bool,
    /// Served with tonic's codec, not [`RequestCodec`] (health, reflection).
    foreign_codec: bool,
    /// Its largest request message, where it is not the process's ([`WireLayer::with_limit`]).
    limit: Option<usize>,
}

/// A server layer, innermost (after authentication, so only identified callers learn what a
/// process serves): unknown methods get `UNIMPLEMENTED` naming the services served; request
/// bodies are checked frame by frame (see the module docs).
#[derive(Debug, Clone)]
pub struct WireLayer {
    rules: Arc<Rules>,
}

impl WireLayer {
    /// `role` names the process in messages (`gateway`, `node`); `limit` is its largest request
    /// message in bytes (give tonic's services the same or a larger one); `own` is the encoded
    /// descriptor set of the services it serves with [`RequestCodec`], `others` those of the
    /// services it mounts with tonic's codec (health, reflection). Nothing else is served.
    pub fn new(role: &'static str, limit: usize, own: &[u8], others: &[&[u8]]) -> Self {
        use prost::Message as _;
        let mut methods = HashMap::new();
        let mut services = Vec::new();
        let sets = std::iter::once((own, false)).chain(others.iter().map(|set| (*set, true)));
        for (set, foreign_codec) in sets {
            // Compiled-in constants: one that does not decode contributes nothing.
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else { continue };
            for file in &set.file {
                for service in &file.service {
                    let name = match file.package() {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    for method in &service.method {
                        let client_streaming = method.client_streaming();
                        methods.insert(
                            format!("/{name}/{}", method.name()),
                            Method { client_streaming, foreign_codec, limit: None },
                        );
                    }
                    services.push(name);
                }
            }
        }
        services.sort();
        services.dedup();
        Self { rules: Arc::new(Rules { role, limit, methods, services: services.join(", ") }) }
    }

    /// Gives `method` (`/package.Service/Method`) its own largest request message, e.g. a bulk
    /// write whose callers send large batches; a method not served is left alone.
    #[must_use]
    pub fn with_limit(mut self, method: &str, limit: usize) -> Self {
        if let Some(rules) = Arc::get_mut(&mut self.rules)
            && let Some(served) = rules.methods.get_mut(method)
        {
            served.limit = Some(limit);
        }
        self
    }
}

impl<S> tower::Layer<S> for WireLayer {
    type Service = WireGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WireGuard { inner, rules: Arc::clone(&self.rules) }
    }
}

/// The service of [`WireLayer`].
#[derive(Debug, Clone)]
pub struct WireGuard<S> {
    inner: S,
    rules: Arc<Rules>,
}

impl<S> tower::Service<http::Request<Body>> for WireGuard<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Unpin,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = WireFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let rules = &self.rules;
        let Some(&method) = rules.methods.get(request.uri().path()) else {
            let status = Status::unimplemented(format!(
                "no such method on this {}; it serves {} (list them with gRPC reflection)",
                rules.role, rules.services
            ));
            return WireFuture::Refused(Some(status.into_http()));
        };
        // A compressed message is acceptable only if the request says how it is compressed
        // (and tonic then checks that it supports that).
        let announced = request.headers().get("grpc-encoding").is_some_and(|e| e.as_bytes() != b"identity");
        let (role, limit) = (rules.role, method.limit.unwrap_or(rules.limit));
        let unary = !method.client_streaming;
        let request = request.map(|inner| Body::new(FrameGuard::new(inner, role, limit, unary, announced)));
        WireFuture::Inner { future: self.inner.call(request), recode: method.foreign_codec }
    }
}

/// The future of [`WireGuard`].
pub enum WireFuture<F> {
    Refused(Option<http::Response<Body>>),
    Inner { future: F, recode: bool },
}

impl<F, E> Future for WireFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, E>> + Unpin,
{
    type Output = Result<http::Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            WireFuture::Refused(response) => Poll::Ready(Ok(response.take().unwrap_or_default())),
            WireFuture::Inner { future, recode: false } => Pin::new(future).poll(cx),
            WireFuture::Inner { future, recode: true } => Pin::new(future).poll(cx).map_ok(recode_decode_failure),
        }
    }
}

/// Services whose codec is not ours (health) answer a request they cannot decode with tonic's
/// `INTERNAL` before any handler runs; such an answer is recoded with [`decode_error_status`].
/// Never applied to our own services: there such an `INTERNAL` can only come from a handler,
/// e.g. the gateway failing to decode a node's reply, which is our fault and stays `INTERNAL`.
fn recode_decode_failure(response: http::Response<Body>) -> http::Response<Body> {
    let internal = response.headers().get(Status::GRPC_STATUS).is_some_and(|code| code.as_bytes() == b"13");
    if !internal {
        return response;
    }
    match Status::from_header_map(response.headers()) {
        Some(status) if status.message().starts_with(DECODE_PREFIX) => decode_text_status(status.message()).into_http(),
        _ => response,
    }
}

/// A request body checked gRPC frame by gRPC frame as it streams in. Data passes through
/// untouched up to a frame that breaks a rule; the body then ends with that rule's status, so
/// every message before it is still read (a `DecideStream` answers each of them).
struct FrameGuard {
    inner: Body,
    role: &'static str,
    limit: usize,
    /// A unary call must carry a message.
    unary: bool,
    compression_announced: bool,
    /// The frame header being read, when `header_len > 0`.
    header: [u8; HEADER],
    header_len: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
    /// Complete messages passed.
    messages: u64,
    /// Reported on the next poll, after the data before the offending frame.
    failed: Option<Status>,
    done: bool,
}

impl FrameGuard {
    fn new(inner: Body, role: &'static str, limit: usize, unary: bool, compression_announced: bool) -> Self {
        Self {
            inner,
            role,
            limit,
            unary,
            compression_announced,
            header: [0; HEADER],
            header_len: 0,
            remaining: 0,
            messages: 0,
            failed: None,
            done: false,
        }
    }

    /// Follows the frames through `data`. On a broken rule: where the offending frame's header
    /// starts in `data` (0 if it started in an earlier chunk) and the status.
    fn scan(&mut self, data: &[u8]) -> Result<(), (usize, Status)> {
        let mut pos = 0;
        while pos < data.len() {
            if self.remaining > 0 {
                let take = self.remaining.min(data.len() - pos);
                pos += take;
                self.remaining -= take;
                if self.remaining == 0 {
                    self.messages += 1;
                }
                continue;
            }
            let start = pos.saturating_sub(self.header_len);
            let take = (HEADER - self.header_len).min(data.len() - pos);
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[pos..pos + take]);
            self.header_len += take;
            pos += take;
            if self.header_len < HEADER {
                break;
            }
            self.header_len = 0;
            let [flag, a, b, c, d] = self.header;
            match flag {
                0 => {}
                1 if self.compression_announced => {}
                1 => {
                    return Err((
                        start,
                        Status::invalid_argument("malformed gRPC frame: compressed without an encoding"),
                    ));
                }
                _ => return Err((start, Status::invalid_argument("malformed gRPC frame: unknown compression flag"))),
            }
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            if len > self.limit {
                return Err((start, too_large_status(self.role, self.limit)));
            }
            self.remaining = len;
            if len == 0 {
                self.messages += 1;
            }
        }
        Ok(())
    }

    /// A status the body still owes at its end.
    fn owed_at_end(&self) -> Option<Status> {
        if self.header_len > 0 || self.remaining > 0 {
            Some(Status::invalid_argument("malformed gRPC frame: the request ends inside a message"))
        } else if self.unary && self.messages == 0 {
            Some(Status::invalid_argument("malformed request: no request message"))
        } else {
            None
        }
    }

    fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.done = true;
        Poll::Ready(Some(Err(status)))
    }
}

impl http_body::Body for FrameGuard {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(status) = this.failed.take() {
            return this.fail(status);
        }
        if this.done {
            return Poll::Ready(None);
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            None => {
                return match this.owed_at_end() {
                    Some(status) => this.fail(status),
                    None => {
                        this.done = true;
                        Poll::Ready(None)
                    }
                };
            }
            Some(Err(status)) => return this.fail(status),
            Some(Ok(frame)) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            // Trailers.
            Err(frame) => return Poll::Ready(Some(Ok(frame))),
        };
        match this.scan(&data) {
            Ok(()) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Err((0, status)) => this.fail(status),
            Err((start, status)) => {
                this.failed = Some(status);
                Poll::Ready(Some(Ok(Frame::data(data.slice(..start)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.failed.is_none() && self.inner.is_end_stream() && self.owed_at_end().is_none())
    }

    fn size_hint(&self) -> SizeHint {
        // Data may be cut short at a broken frame.
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    use crate::pb::common::v1 as common;
    use crate::pb::gateway::v1 as gateway;

    fn decode<M: prost::Message + Default + std::fmt::Debug>(bytes: &[u8]) -> Status {
        decode_error_status(&M::decode(bytes).unwrap_err())
    }

    #[test]
    fn decode_errors_are_invalid_argument_naming_the_field_never_the_bytes() {
        let request = gateway::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![common::Identifier { kind: "email".into(), value: "x".into() }],
            idempotency_key: String::new(),
        };
        let mut bytes = request.encode_to_vec();
        // The last byte is the value `x`: not UTF-8 once it is 0xff.
        *bytes.last_mut().unwrap() = 0xff;
        let status = decode::<gateway::RegisterRequest>(&bytes);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "invalid `identifiers.value`: is not UTF-8");

        // Truncated: a length that runs past the end.
        let whole = request.encode_to_vec();
        let truncated = &whole[..whole.len() - 1];
        let status = decode::<gateway::RegisterRequest>(truncated);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().starts_with("malformed request: not a valid protobuf message"), "{status:?}");

        // Garbage: a key beyond 32 bits, whose value prost would print.
        let garbage = [0x80, 0x80, 0x80, 0x80, 0x20];
        let status = decode::<gateway::RegisterRequest>(&garbage);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(!status.message().chars().any(|c| c.is_ascii_digit()), "{status:?}");

        // Nested unknown groups past prost's recursion limit.
        let mut nested = vec![(15 << 3) | 3; 200];
        nested.extend(vec![(15 << 3) | 4; 200]);
        let status = decode::<gateway::RegisterRequest>(&nested);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().starts_with("malformed request: nested too deeply"), "{status:?}");
    }

    /// Calls `service` (whose futures are ready at once) with an empty request to `path`.
    fn answer<S>(service: &mut S, path: &str) -> Status
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = std::convert::Infallible>,
        S::Future: Unpin,
    {
        let request = http::Request::builder().uri(path).body(Body::empty()).unwrap();
        let mut future = service.call(request);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut future).poll(&mut cx) {
            Poll::Ready(Ok(response)) => Status::from_header_map(response.headers()).unwrap(),
            Poll::Pending => panic!("not ready"),
        }
    }

    #[test]
    fn only_answers_of_a_foreign_codec_are_recoded_and_unknown_methods_are_unimplemented() {
        use tower::Layer as _;
        // The node's service stands in for health: mounted with tonic's codec.
        let layer = WireLayer::new("gateway", 100, crate::GATEWAY_DESCRIPTOR_SET, &[crate::NODE_DESCRIPTOR_SET]);
        let text = "failed to decode Protobuf message: Identifier.value: RegisterRequest.identifiers: invalid string \
                    value: data is not UTF-8 encoded";
        let mut service = layer.layer(tower::service_fn(|_: http::Request<Body>| {
            std::future::ready(Ok::<_, std::convert::Infallible>(Status::internal(text).into_http::<Body>()))
        }));
        let recoded = answer(&mut service, "/domicile.node.v1.RegionalNode/Register");
        assert_eq!(recoded.code(), tonic::Code::InvalidArgument);
        assert_eq!(recoded.message(), "invalid `identifiers.value`: is not UTF-8");
        // Our own services decode with RequestCodec: an INTERNAL from them is a handler's (say, a
        // node reply the gateway could not decode) and stays INTERNAL.
        let kept = answer(&mut service, "/domicile.gateway.v1.Domicile/Register");
        assert_eq!(kept.code(), tonic::Code::Internal);
        let unknown = answer(&mut service, "/domicile.gateway.v1.Domicile/Nothing");
        assert_eq!(unknown.code(), tonic::Code::Unimplemented);
        assert_eq!(
            unknown.message(),
            "no such method on this gateway; it serves domicile.gateway.v1.Domicile, domicile.node.v1.RegionalNode \
             (list them with gRPC reflection)"
        );
    }

    fn guard(limit: usize, unary: bool) -> FrameGuard {
        FrameGuard::new(Body::empty(), "test", limit, unary, false)
    }

    fn frame(len: usize) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend(std::iter::repeat_n(7, len));
        out
    }

    #[test]
    fn frames_are_followed_across_chunks_and_the_first_oversized_one_is_cut_at_its_header() {
        let mut bytes = frame(3);
        bytes.extend(frame(0));
        bytes.extend(frame(10));
        let oversized_at = bytes.len();
        bytes.extend(frame(11));
        // Any split into chunks finds the oversized frame at its header.
        for split in 0..bytes.len() {
            let mut g = guard(10, false);
            let (a, b) = bytes.split_at(split);
            let found = match g.scan(a) {
                Err((start, status)) => Some((start, status)),
                Ok(()) => g.scan(b).err().map(|(start, status)| (start + split, status)),
            };
            let (start, status) = found.unwrap();
            assert_eq!(status.code(), tonic::Code::ResourceExhausted);
            let expected = if split >= oversized_at + HEADER { oversized_at } else { oversized_at.max(split) };
            assert_eq!(start, expected, "split {split}");
            assert_eq!(g.messages, 3);
        }
        let mut g = guard(10, true);
        g.scan(&frame(4)[..6]).unwrap();
        assert_eq!(g.owed_at_end().unwrap().code(), tonic::Code::InvalidArgument);
        assert_eq!(guard(10, true).owed_at_end().unwrap().code(), tonic::Code::InvalidArgument);
        assert!(guard(10, false).owed_at_end().is_none());
        let mut flagged = frame(1);
        flagged[0] = 2;
        assert_eq!(guard(10, false).scan(&flagged).unwrap_err().1.code(), tonic::Code::InvalidArgument);
    }
}
