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
//! - More entries in a list than its handler takes (`ImportConsent` items, `DecideBatch` items,
//!   identifiers, links, …; the limits are in [`crate::limits`]): the handler's own
//!   `INVALID_ARGUMENT` ("invalid `items`: at most 5000 items per call"), from [`RequestCodec`],
//!   which counts them in the message's bytes before prost decodes it ([`decode_request`]). Only
//!   request types with such lists are counted; the others are decoded as before.
//! - A method the process does not serve: `UNIMPLEMENTED` naming the services it does serve.
//!
//! Messages name fields and limits, never a byte of the request (invariant 8).
//!
//! Replies read by a client keep tonic's codec: a reply that is not valid protobuf is the
//! server's fault, and `INTERNAL` is right there.

use std::any::TypeId;
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http_body::{Frame, SizeHint};
use prost::bytes::{Buf, Bytes};
use prost::encoding::{DecodeContext, WireType, decode_key, skip_field};
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::codegen::http;

use crate::limits::{self, MaxItems};
use crate::pb::gateway::v1 as gateway;
use crate::pb::node::v1 as node;
use crate::raw::RawDecideBatchRequest;

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

impl<D: prost::Message + Default + 'static> Decoder for RequestDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        decode_request(buf).map(Some)
    }
}

// ---------------------------------------------------------------------------------------------
// Lists counted before decoding.
// ---------------------------------------------------------------------------------------------

/// A list of a request (a repeated field, or several fields counted together) and its limit; or,
/// with a limit of 0, a field the request may not carry at all (its contents never decoded).
#[derive(Debug, Clone, Copy)]
struct BoundedList {
    /// The fields of the message messages it is in, from the request down (none: the request's
    /// own); counted per message it is in.
    within: &'static [u32],
    /// Its field numbers, each length-delimited on the wire (a message, string, bytes or map
    /// entry): any other wire type there is malformed, as prost finds too.
    tags: &'static [u32],
    /// The field the refusal names (the handler's name for it); in a nested list, each `[]`
    /// is the index of the repeated message it is in.
    field: &'static str,
    limit: MaxItems,
}

const fn list(tags: &'static [u32], field: &'static str, limit: MaxItems) -> BoundedList {
    BoundedList { within: &[], tags, field, limit }
}

/// A list inside messages of the request (`within`: their fields, from the request down).
const fn nested(within: &'static [u32], tags: &'static [u32], field: &'static str, limit: MaxItems) -> BoundedList {
    BoundedList { within, tags, field, limit }
}

/// The most lists one request type has here.
const MAX_LISTS: usize = 4;

/// Declares the request types whose lists are bounded: [`bounded_lists`] (by type, for the
/// decoder) and, for tests, the same table by protobuf name.
macro_rules! bounded_requests {
    ($($ty:ty = $name:literal => [$($list:expr),+ $(,)?]),+ $(,)?) => {
        /// The bounded lists of request type `D`; none for most. Each comparison is of two
        /// constants, so for a type without lists (`Decide`, say) this folds to nothing.
        fn bounded_lists<D: 'static>() -> &'static [BoundedList] {
            let id = TypeId::of::<D>();
            $(
                if id == TypeId::of::<$ty>() {
                    const LISTS: &[BoundedList] = &[$($list),+];
                    const { assert!(LISTS.len() <= MAX_LISTS) };
                    return LISTS;
                }
            )+
            &[]
        }

        /// `(protobuf message name, its bounded lists)`, as [`bounded_lists`] knows them.
        #[cfg(test)]
        const BOUNDED_REQUESTS: &[(&str, &[BoundedList])] = &[$(($name, &[$($list),+])),+];
    };
}

bounded_requests! {
    gateway::ImportConsentRequest = "domicile.gateway.v1.ImportConsentRequest" => [
        list(&[1], "items", limits::IMPORT_ITEMS),
        nested(&[1], &[4], "items[].channels", limits::CHANNELS),
        nested(&[1, 6], &[7], "items[].evidence.hours", limits::HOURS),
        nested(&[1, 6], &[5], "items[].evidence.signal", limits::SIGNAL_EVIDENCE),
    ],
    gateway::RecordConsentRequest = "domicile.gateway.v1.RecordConsentRequest" => [
        list(&[3], "channels", limits::CHANNELS),
        nested(&[5], &[7], "evidence.hours", limits::HOURS),
        nested(&[5], &[5], "evidence.signal", limits::SIGNAL_EVIDENCE),
    ],
    node::RecordConsentRequest = "domicile.node.v1.RecordConsentRequest" => [
        list(&[3], "channels", limits::CHANNELS),
        nested(&[5], &[7], "evidence.hours", limits::HOURS),
        nested(&[5], &[5], "evidence.signal", limits::SIGNAL_EVIDENCE),
    ],
    gateway::RegisterRequest = "domicile.gateway.v1.RegisterRequest" => [
        list(&[2], "identifiers", limits::IDENTIFIERS),
    ],
    gateway::RegisterBatchRequest = "domicile.gateway.v1.RegisterBatchRequest" => [
        list(&[1], "items", limits::REGISTER_BATCH_ITEMS),
        nested(&[1], &[3], "items[].identifiers", limits::IDENTIFIERS),
    ],
    gateway::RectifyRequest = "domicile.gateway.v1.RectifyRequest" => [
        list(&[2], "add_identifiers", limits::IDENTIFIERS),
        list(&[3], "remove_identifiers", limits::IDENTIFIERS),
        list(&[4, 5], "set_profile", limits::PROFILE_FIELDS),
    ],
    node::ImportConsentRequest = "domicile.node.v1.ImportConsentRequest" => [
        list(&[1], "items", limits::IMPORT_ITEMS),
        nested(&[1], &[4], "items[].channels", limits::CHANNELS),
        nested(&[1, 6], &[7], "items[].evidence.hours", limits::HOURS),
        nested(&[1, 6], &[5], "items[].evidence.signal", limits::SIGNAL_EVIDENCE),
    ],
    node::DecideBatchRequest = "domicile.node.v1.DecideBatchRequest" => [
        list(&[1], "items", limits::DECIDE_BATCH_ITEMS),
    ],
    // The node's `DecideBatch` as served (`raw.rs`): the same message.
    RawDecideBatchRequest = "domicile.node.v1.DecideBatchRequest" => [
        list(&[1], "items", limits::DECIDE_BATCH_ITEMS),
    ],
    node::RegisterRequest = "domicile.node.v1.RegisterRequest" => [
        list(&[2], "identifiers", limits::IDENTIFIERS),
    ],
    node::RegisterBatchRequest = "domicile.node.v1.RegisterBatchRequest" => [
        list(&[1], "items", limits::REGISTER_BATCH_ITEMS),
        nested(&[1], &[3], "items[].identifiers", limits::IDENTIFIERS),
    ],
    node::RectifyRequest = "domicile.node.v1.RectifyRequest" => [
        list(&[2], "add_identifiers", limits::IDENTIFIERS),
        list(&[3], "remove_identifiers", limits::IDENTIFIERS),
        list(&[4, 5], "set_profile", limits::PROFILE_FIELDS),
    ],
    node::ClaimLinksRequest = "domicile.node.v1.ClaimLinksRequest" => [list(&[4], "links", limits::LINKS)],
    node::ReleaseLinksRequest = "domicile.node.v1.ReleaseLinksRequest" => [list(&[3], "releases", limits::LINKS)],
    node::ClaimsOfRequest = "domicile.node.v1.ClaimsOfRequest" => [list(&[1], "links", limits::LINKS)],
    node::ReassertClaimsRequest = "domicile.node.v1.ReassertClaimsRequest" => [list(&[3], "links", limits::LINKS)],
    node::DropLinksRequest = "domicile.node.v1.DropLinksRequest" => [list(&[2], "links", limits::LINKS)],
    node::ReleaseOrphanClaimsRequest = "domicile.node.v1.ReleaseOrphanClaimsRequest" => [
        list(&[1], "links", limits::LINKS),
    ],
    node::AckChallengeOutboxRequest = "domicile.node.v1.AckChallengeOutboxRequest" => [
        list(&[1], "request_ids", limits::CHALLENGE_OUTBOX_PAGE),
    ],
}

/// Reads a request message of type `D`: its bounded lists, if it has any, are counted in the
/// bytes first (`check_lists`), so a request with too many entries is refused before prost
/// builds any; then prost decodes it. Every error is a status of the error contract.
pub fn decode_request<D: prost::Message + Default + 'static>(mut buf: impl Buf) -> Result<D, Status> {
    let lists = bounded_lists::<D>();
    if !lists.is_empty() {
        if buf.chunk().len() < buf.remaining() {
            // Not one slice (tonic's request buffer always is): made one, at most the message.
            let bytes = buf.copy_to_bytes(buf.remaining());
            check_lists(&bytes, lists)?;
            return D::decode(bytes).map_err(|e| decode_error_status(&e));
        }
        check_lists(buf.chunk(), lists)?;
    }
    D::decode(buf).map_err(|e| decode_error_status(&e))
}

/// Counts the entries of `lists` in the encoded message `bytes`, following keys, varints and
/// lengths exactly as prost does (its own readers) but building nothing and reading inside a
/// field only where a nested list is. The first list found longer than its limit is refused
/// with its handler's own status (`INVALID_ARGUMENT "invalid `items`: at most …"`); bytes that
/// cannot be followed are refused as not valid protobuf (prost would fail there too).
fn check_lists(bytes: &[u8], lists: &[BoundedList]) -> Result<(), Status> {
    check_level(bytes, lists, &[], &[], &mut [0; MAX_LISTS])
}

/// The deepest a nested list is here.
const MAX_DEPTH: usize = 3;

/// The name of the message field at `depth` on the way to `list` (`items[]`, `items[].evidence`):
/// the list's name up to that field (no allocation: this runs for every message on the way).
fn parent_name(list: &BoundedList, depth: usize) -> &'static str {
    let field = list.field;
    let end = field.match_indices('.').nth(depth).map_or(field.len(), |(at, _)| at);
    field.get(..end).unwrap_or(field)
}

/// One message at `path` (the fields leading to it from the request; `indexes`, the index of
/// each among its repeated siblings). `counts` (per list, by its place in `lists`) are those of
/// the nearest repeated message it is in: prost merges every occurrence of a message field that
/// is not repeated (`evidence` sent twice is one evidence with both lists), so its lists are
/// counted across occurrences; each entry of a repeated one (`items[]`) counts afresh.
fn check_level(
    mut bytes: &[u8],
    lists: &[BoundedList],
    path: &[u32],
    indexes: &[usize],
    counts: &mut [usize; MAX_LISTS],
) -> Result<(), Status> {
    // Instances seen of each repeated field leading to a nested list (their indexes in its name).
    let mut seen: [(u32, usize); MAX_LISTS] = [(0, 0); MAX_LISTS];
    while !bytes.is_empty() {
        let (tag, wire_type) = decode_key(&mut bytes).map_err(|e| decode_error_status(&e))?;
        let counted = lists.iter().position(|list| list.within == path && list.tags.contains(&tag));
        let parent = lists
            .iter()
            .find(|l| l.within.len() > path.len() && l.within.starts_with(path) && l.within[path.len()] == tag);
        let named = match (counted.and_then(|at| lists.get(at)), parent) {
            (Some(list), _) => list.field,
            (None, Some(parent)) => parent_name(parent, path.len()),
            (None, None) => {
                skip_field(wire_type, tag, &mut bytes, DecodeContext::default())
                    .map_err(|e| decode_error_status(&e))?;
                continue;
            }
        };
        let malformed = || {
            Status::invalid_argument(format!(
                "malformed request: not a valid protobuf message at `{}`",
                field_name(named, indexes)
            ))
        };
        if wire_type != WireType::LengthDelimited {
            return Err(malformed());
        }
        if let Some(at) = counted
            && let (Some(list), Some(count)) = (lists.get(at), counts.get_mut(at))
        {
            *count += 1;
            if *count > list.limit.max {
                return Err(list.limit.violation(&field_name(list.field, indexes)).into());
            }
        }
        let Some(parent) = parent.filter(|_| path.len() < MAX_DEPTH) else {
            skip_field(wire_type, tag, &mut bytes, DecodeContext::default()).map_err(|_| malformed())?;
            continue;
        };
        let len = prost::encoding::decode_varint(&mut bytes).map_err(|_| malformed())?;
        let len = usize::try_from(len).map_err(|_| malformed())?;
        let (inner, rest) = bytes.split_at_checked(len).ok_or_else(malformed)?;
        let (mut deeper, mut at) = ([0u32; MAX_DEPTH], [0usize; MAX_DEPTH]);
        deeper[..path.len()].copy_from_slice(path);
        deeper[path.len()] = tag;
        at[..indexes.len()].copy_from_slice(indexes);
        if parent_name(parent, path.len()).ends_with("[]") {
            let slot = seen.iter_mut().find(|(t, _)| *t == tag || *t == 0).ok_or_else(malformed)?;
            *slot = (tag, slot.1 + usize::from(slot.0 == tag));
            at[indexes.len()] = slot.1;
            check_level(inner, lists, &deeper[..=path.len()], &at[..=indexes.len()], &mut [0; MAX_LISTS])?;
        } else {
            check_level(inner, lists, &deeper[..=path.len()], &at[..=indexes.len()], counts)?;
        }
        bytes = rest;
    }
    Ok(())
}

/// `field` with each `[]` the index of the message it is in (`items[3].channels`).
fn field_name(field: &str, indexes: &[usize]) -> String {
    let mut out = String::with_capacity(field.len() + 8);
    let mut indexes = indexes.iter();
    let mut parts = field.split("[]").peekable();
    while let Some(part) = parts.next() {
        out.push_str(part);
        if parts.peek().is_some() {
            out.push_str(&format!("[{}]", indexes.next().copied().unwrap_or(0)));
        }
    }
    out
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

    // === lists counted before decoding ===

    /// `n` empty entries of field `tag` (key, then length 0).
    fn empty_entries(tag: u32, n: usize) -> Vec<u8> {
        let mut entry = Vec::new();
        prost::encoding::encode_key(tag, WireType::LengthDelimited, &mut entry);
        entry.push(0);
        entry.repeat(n)
    }

    fn refused<D: prost::Message + Default + 'static>(bytes: &[u8]) -> Status {
        decode_request::<D>(bytes).err().unwrap_or_else(|| panic!("{} read", std::any::type_name::<D>()))
    }

    #[test]
    fn lists_longer_than_their_handler_takes_are_refused_before_decoding_with_its_status() {
        let max = limits::IMPORT_ITEMS.max;
        let read = decode_request::<gateway::ImportConsentRequest>(&empty_entries(1, max)[..]).unwrap();
        assert_eq!(read.items.len(), max);
        let status = refused::<gateway::ImportConsentRequest>(&empty_entries(1, max + 1));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "invalid `items`: at most 5000 items per call");
        // The very status the handlers give.
        let handler = Status::from(limits::IMPORT_ITEMS.check("items", max + 1).unwrap_err());
        assert_eq!((handler.code(), handler.message()), (status.code(), status.message()));
        assert_eq!(refused::<node::ImportConsentRequest>(&empty_entries(1, max + 1)).message(), status.message());

        // Counted wherever they are among the other fields, known or not.
        let mut mixed =
            node::ImportConsentRequest { broadcast: true, mapping_version: "v1".into(), ..Default::default() }
                .encode_to_vec();
        mixed.extend(empty_entries(1, max / 2));
        mixed.extend(empty_entries(1000, 3));
        // Unknown groups (field 992), one holding an entry of field 1.
        mixed.extend([0x83, 0x3e, 0x0a, 0x00, 0x84, 0x3e, 0x83, 0x3e, 0x84, 0x3e]);
        // An unknown varint (field 20).
        mixed.extend([0xa0, 0x01, 0x01]);
        mixed.extend(empty_entries(1, max - max / 2));
        assert_eq!(decode_request::<node::ImportConsentRequest>(&mixed[..]).unwrap().items.len(), max);
        mixed.extend(empty_entries(1, 1));
        assert_eq!(refused::<node::ImportConsentRequest>(&mixed).message(), status.message());

        // Decision batches, generated and as the node reads them.
        let max = limits::DECIDE_BATCH_ITEMS.max;
        let too_many = empty_entries(1, max + 1);
        let expected = "invalid `items`: at most 10000 items per batch";
        assert_eq!(refused::<node::DecideBatchRequest>(&too_many).message(), expected);
        assert_eq!(refused::<RawDecideBatchRequest>(&too_many).message(), expected);
        assert_eq!(decode_request::<RawDecideBatchRequest>(&empty_entries(1, max)[..]).unwrap().items.len(), max);

        // Several lists of one request, and two fields counted as one list.
        let mut rectify = empty_entries(2, 32);
        rectify.extend(empty_entries(3, 32));
        rectify.extend(empty_entries(4, 40));
        rectify.extend(empty_entries(5, 24));
        let read = decode_request::<gateway::RectifyRequest>(&rectify[..]).unwrap();
        assert_eq!((read.add_identifiers.len(), read.remove_identifiers.len()), (32, 32));
        rectify.extend(empty_entries(5, 1));
        let expected = "invalid `set_profile`: at most 64 profile fields per request";
        assert_eq!(refused::<gateway::RectifyRequest>(&rectify).message(), expected);
        assert_eq!(refused::<node::RectifyRequest>(&rectify).message(), expected);
        let expected = "invalid `remove_identifiers`: at most 32 identifiers per request";
        assert_eq!(refused::<node::RectifyRequest>(&empty_entries(3, 33)).message(), expected);
        let expected = "invalid `identifiers`: at most 32 identifiers per request";
        assert_eq!(refused::<gateway::RegisterRequest>(&empty_entries(2, 33)).message(), expected);
        assert_eq!(refused::<node::RegisterRequest>(&empty_entries(2, 33)).message(), expected);
        let expected = "invalid `releases`: at most 10000 links per call";
        assert_eq!(refused::<node::ReleaseLinksRequest>(&empty_entries(3, 10_001)).message(), expected);
        let expected = "invalid `request_ids`: at most 1000";
        assert_eq!(refused::<node::AckChallengeOutboxRequest>(&empty_entries(1, 1_001)).message(), expected);

        // Requests without bounded lists are decoded as they were, with no count.
        assert!(bounded_lists::<gateway::DecideRequest>().is_empty());
        assert!(bounded_lists::<gateway::DecideStreamItem>().is_empty());
        assert!(bounded_lists::<crate::raw::RawDecideStreamItem>().is_empty());
    }

    #[test]
    fn entries_inside_a_field_are_not_counted() {
        let max = limits::IMPORT_ITEMS.max;
        // Field 1 entries inside an unknown field, inside an unknown group, and an item's own
        // repeated field: none is an item.
        let mut inner = empty_entries(1, max + 1);
        let mut bytes = Vec::new();
        prost::encoding::encode_key(1000, WireType::LengthDelimited, &mut bytes);
        prost::encoding::encode_varint(inner.len() as u64, &mut bytes);
        bytes.append(&mut inner);
        prost::encoding::encode_key(1001, WireType::StartGroup, &mut bytes);
        bytes.extend(empty_entries(1, max + 1));
        prost::encoding::encode_key(1001, WireType::EndGroup, &mut bytes);
        let channels = limits::CHANNELS.max;
        let item = gateway::ImportConsentItem { channels: vec![String::new(); channels], ..Default::default() };
        prost::encoding::message::encode(1, &item, &mut bytes);
        let read = decode_request::<gateway::ImportConsentRequest>(&bytes[..]).unwrap();
        assert_eq!(read.items.len(), 1);
        assert_eq!(read.items[0].channels.len(), channels);
    }

    #[test]
    fn lists_inside_messages_are_counted_per_message_and_named_by_its_index() {
        let item = |channels: usize, hours: usize| gateway::ImportConsentItem {
            channels: vec![String::new(); channels],
            evidence: Some(crate::pb::common::v1::Evidence { hours: vec![String::new(); hours], ..Default::default() }),
            ..Default::default()
        };
        let (channels, hours) = (limits::CHANNELS.max, limits::HOURS.max);
        // Each item at the limit: read, however many items.
        let request = gateway::ImportConsentRequest { items: vec![item(channels, hours); 3], ..Default::default() };
        let read = decode_request::<gateway::ImportConsentRequest>(&request.encode_to_vec()[..]).unwrap();
        assert_eq!(read.items.len(), 3);
        // One over, in the third item: refused naming it, at the gateway and the node alike.
        let mut over = request.clone();
        over.items[2] = item(channels + 1, 0);
        let expected = "invalid `items[2].channels`: at most 16 channels per consent";
        assert_eq!(refused::<gateway::ImportConsentRequest>(&over.encode_to_vec()).message(), expected);
        assert_eq!(refused::<node::ImportConsentRequest>(&over.encode_to_vec()).message(), expected);
        over.items[2] = item(1, hours + 1);
        let expected = "invalid `items[2].evidence.hours`: at most 8 windows";
        assert_eq!(refused::<gateway::ImportConsentRequest>(&over.encode_to_vec()).message(), expected);
        // A consent record's own, with the handler's status.
        let record =
            gateway::RecordConsentRequest { channels: vec![String::new(); channels + 1], ..Default::default() };
        let status = refused::<gateway::RecordConsentRequest>(&record.encode_to_vec());
        let handler = Status::from(crate::convert::channels("channels", &record.channels).unwrap_err());
        assert_eq!((status.code(), status.message()), (handler.code(), handler.message()));
        assert_eq!(refused::<node::RecordConsentRequest>(&record.encode_to_vec()).message(), handler.message());
        let record = gateway::RecordConsentRequest {
            evidence: Some(crate::pb::common::v1::Evidence {
                hours: vec![String::new(); hours + 1],
                ..Default::default()
            }),
            ..Default::default()
        };
        let status = refused::<gateway::RecordConsentRequest>(&record.encode_to_vec());
        let handler =
            Status::from(crate::convert::consent_hours("evidence.hours", &vec![String::new(); 9]).unwrap_err());
        assert_eq!(status.message(), handler.message());
        // A message field that is not repeated, sent twice, is one message with both lists
        // (prost merges them): counted together.
        let mut twice = Vec::new();
        let evidence = crate::pb::common::v1::Evidence { hours: vec![String::new(); hours], ..Default::default() };
        prost::encoding::message::encode(5, &evidence, &mut twice);
        prost::encoding::message::encode(5, &evidence, &mut twice);
        assert_eq!(gateway::RecordConsentRequest::decode(&twice[..]).unwrap().evidence.unwrap().hours.len(), 2 * hours);
        assert_eq!(
            refused::<node::RecordConsentRequest>(&twice).message(),
            "invalid `evidence.hours`: at most 8 windows"
        );
        let mut item = Vec::new();
        prost::encoding::message::encode(6, &evidence, &mut item);
        prost::encoding::message::encode(6, &evidence, &mut item);
        let mut request = Vec::new();
        prost::encoding::bytes::encode(1, &item, &mut request);
        let expected = "invalid `items[0].evidence.hours`: at most 8 windows";
        assert_eq!(refused::<gateway::ImportConsentRequest>(&request).message(), expected);
        // A nested list or a message on the way to one that is not length-delimited, or longer
        // than the message it is in: malformed, named.
        let lists = bounded_lists::<gateway::ImportConsentRequest>();
        let at = |bytes: &[u8]| check_lists(bytes, lists).unwrap_err().message().to_owned();
        assert_eq!(
            at(&[0x0a, 0x02, 0x20, 0x01]),
            "malformed request: not a valid protobuf message at `items[0].channels`"
        );
        assert_eq!(
            at(&[0x0a, 0x02, 0x30, 0x01]),
            "malformed request: not a valid protobuf message at `items[0].evidence`"
        );
        assert!(check_lists(&[0x0a, 0x03, 0x22, 0x00], bounded_lists::<gateway::ImportConsentRequest>()).is_err());
    }

    #[test]
    fn signal_evidence_on_a_consent_write_is_refused_before_its_lists_are_built() {
        use crate::pb::common::v1::{Evidence, SignalEvidence};
        // 4 MiB of packed section ids decode to 4,194,304 numbers (16 MiB): refused unread.
        let signal = SignalEvidence { gpp_sections: vec![1; 4 << 20], ..Default::default() };
        let evidence = Evidence { signal: Some(signal), ..Default::default() };
        let record = gateway::RecordConsentRequest {
            channels: vec!["email".into()],
            evidence: Some(evidence.clone()),
            ..Default::default()
        };
        let bytes = record.encode_to_vec();
        assert!(bytes.len() > 4 << 20);
        let handler =
            Status::from(crate::convert::record_shape(&record.channels, record.evidence.as_ref()).unwrap_err());
        let expected = "invalid `evidence.signal`: must not be set (only RecordSignal records signal evidence)";
        assert_eq!((handler.code(), handler.message()), (tonic::Code::InvalidArgument, expected));
        for status in [refused::<gateway::RecordConsentRequest>(&bytes), refused::<node::RecordConsentRequest>(&bytes)]
        {
            assert_eq!((status.code(), status.message()), (handler.code(), handler.message()));
        }
        // An empty one is refused alike: the field itself is the caller's claim.
        let empty = Evidence { signal: Some(SignalEvidence::default()), ..Default::default() };
        let record = gateway::RecordConsentRequest { evidence: Some(empty.clone()), ..Default::default() };
        assert_eq!(refused::<node::RecordConsentRequest>(&record.encode_to_vec()).message(), expected);
        // In an import, named by its item, wherever the item is.
        let item = |evidence: Evidence| gateway::ImportConsentItem { evidence: Some(evidence), ..Default::default() };
        let import = gateway::ImportConsentRequest {
            items: vec![item(Evidence::default()), item(Evidence::default()), item(evidence)],
            ..Default::default()
        };
        let expected =
            "invalid `items[2].evidence.signal`: must not be set (only RecordSignal records signal evidence)";
        for status in [
            refused::<gateway::ImportConsentRequest>(&import.encode_to_vec()),
            refused::<node::ImportConsentRequest>(&import.encode_to_vec()),
        ] {
            assert_eq!((status.code(), status.message()), (tonic::Code::InvalidArgument, expected));
        }
        // Evidence without a signal is read as before.
        let plain = gateway::ImportConsentRequest { items: vec![item(Evidence::default()); 3], ..Default::default() };
        assert_eq!(decode_request::<node::ImportConsentRequest>(&plain.encode_to_vec()[..]).unwrap().items.len(), 3);
    }

    /// The bounded lists of the gateway's `ImportConsentRequest`, with a limit of 3.
    const THREE_ITEMS: &[BoundedList] = &[list(&[1], "items", MaxItems::new(3, "items"))];
    /// The same, and at most 2 channels and 2 hours per item.
    const TWO_CHANNELS: &[BoundedList] = &[
        list(&[1], "items", MaxItems::new(3, "items")),
        nested(&[1], &[4], "items[].channels", MaxItems::new(2, "channels")),
        nested(&[1, 6], &[7], "items[].evidence.hours", MaxItems::new(2, "hours")),
    ];

    #[test]
    fn bytes_the_count_cannot_follow_are_refused_as_prost_refuses_them() {
        let malformed = "malformed request: not a valid protobuf message";
        let at_items = "malformed request: not a valid protobuf message at `items`";
        // Groups of field 992 (start `83 3e`, end `84 3e`) inside each other.
        let mut deep = [0x83, 0x3e].repeat(150);
        deep.extend([0x84, 0x3e].repeat(150));
        let cases: [(&str, Vec<u8>, &str); 11] = [
            ("a key cut short", vec![0x0a, 0x00, 0x80], malformed),
            ("a key of 11 bytes", [vec![0x80; 10], vec![0x01]].concat(), malformed),
            ("a key beyond 32 bits", vec![0x80, 0x80, 0x80, 0x80, 0x20], malformed),
            ("field 0", vec![0x00, 0x00], malformed),
            ("wire type 7", vec![0x0f], malformed),
            ("an end group never started", vec![0x14], malformed),
            ("an unknown field longer than the message", vec![0x82, 0x3e, 0x05, 0x01], malformed),
            ("an item's length cut short", vec![0x0a, 0x00, 0x0a, 0x80], at_items),
            ("an item longer than the message", vec![0x0a, 0x05, 0x01, 0x02], at_items),
            ("an item that is a varint", vec![0x08, 0x01], at_items),
            ("unknown groups nested too deeply", deep, "malformed request: nested too deeply"),
        ];
        for (name, bytes, expected) in cases {
            let status = check_lists(&bytes, THREE_ITEMS).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{name}");
            assert_eq!(status.message(), expected, "{name}");
            assert!(gateway::ImportConsentRequest::decode(&bytes[..]).is_err(), "{name}: prost reads it");
        }
        // Too many items before the bytes break: refused for the items.
        let mut bytes = empty_entries(1, 4);
        bytes.push(0x80);
        assert_eq!(check_lists(&bytes, THREE_ITEMS).unwrap_err().message(), "invalid `items`: at most 3 items");
    }

    /// One top-level field of an `ImportConsentRequest`-like message, for the property below.
    fn field() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            // An item, empty or with fields of its own: most fields, so lists are often too long.
            // Its evidence sent up to twice (prost merges them), with hours.
            6 => (0u64..3, proptest::collection::vec(0u8..2, 0..3), proptest::collection::vec(0usize..3, 0..3))
                .prop_map(|(id, channels, evidences)| {
                    let item = gateway::ImportConsentItem {
                        id,
                        channels: channels.iter().map(|c| c.to_string()).collect(),
                        ..Default::default()
                    };
                    let mut inner = item.encode_to_vec();
                    for hours in evidences {
                        let evidence =
                            crate::pb::common::v1::Evidence { hours: vec![String::new(); hours], ..Default::default() };
                        prost::encoding::message::encode(6, &evidence, &mut inner);
                    }
                    let mut out = Vec::new();
                    prost::encoding::bytes::encode(1, &inner, &mut out);
                    out
                }),
            1 => Just(vec![0x10, 0x01]),
            1 => Just(vec![0x1a, 0x02, b'v', b'1']),
            1 => Just(vec![0x82, 0x3e, 0x02, 0x0a, 0x00]),
            1 => Just(vec![0x85, 0x3e, 1, 2, 3, 4]),
            1 => Just(vec![0x81, 0x3e, 1, 2, 3, 4, 5, 6, 7, 8]),
            1 => Just(vec![0x83, 0x3e, 0x0a, 0x00, 0x84, 0x3e]),
        ]
    }

    proptest::proptest! {
        /// Against prost on the same bytes, well-formed or damaged: whatever prost reads, the
        /// count refuses exactly when prost reads too many items; and the count never calls
        /// malformed what prost reads.
        #[test]
        fn the_count_agrees_with_prost(
            fields in proptest::collection::vec(field(), 0..10),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            flip in proptest::option::of((proptest::prelude::any::<proptest::sample::Index>(), 0u8..=255)),
        ) {
            let mut bytes = fields.concat();
            if let Some((at, value)) = flip && !bytes.is_empty() {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            let counted = check_lists(&bytes, THREE_ITEMS);
            match gateway::ImportConsentRequest::decode(&bytes[..]) {
                Ok(read) if read.items.len() > 3 => {
                    let status = counted.unwrap_err();
                    proptest::prop_assert_eq!(status.message(), "invalid `items`: at most 3 items");
                }
                Ok(_) => proptest::prop_assert!(counted.is_ok(), "{:?}", counted),
                Err(_) => {}
            }
            // With the items' channels counted too: the first list too long in the bytes' order
            // (an item is counted before its channels).
            if let Ok(read) = gateway::ImportConsentRequest::decode(&bytes[..]) {
                // Within an item, channels come first in these bytes, then its evidences.
                let expected = read.items.iter().enumerate().find_map(|(k, item)| {
                    let hours = item.evidence.as_ref().map_or(0, |e| e.hours.len());
                    if k >= 3 {
                        Some("invalid `items`: at most 3 items".to_owned())
                    } else if item.channels.len() > 2 {
                        Some(format!("invalid `items[{k}].channels`: at most 2 channels"))
                    } else if hours > 2 {
                        Some(format!("invalid `items[{k}].evidence.hours`: at most 2 hours"))
                    } else {
                        None
                    }
                });
                let nested = check_lists(&bytes, TWO_CHANNELS);
                proptest::prop_assert_eq!(nested.err().map(|s| s.message().to_owned()), expected);
            }
        }
    }

    #[test]
    fn every_bounded_list_is_a_repeated_field_of_its_request_and_every_other_list_is_named() {
        use prost_types::field_descriptor_proto::{Label, Type};
        let set = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).unwrap();
        let messages: HashMap<String, &prost_types::DescriptorProto> = set
            .file
            .iter()
            .flat_map(|file| file.message_type.iter().map(move |m| (format!("{}.{}", file.package(), m.name()), m)))
            .collect();
        for (name, lists) in BOUNDED_REQUESTS {
            assert!(lists.len() <= MAX_LISTS, "{name}");
            for list in *lists {
                // The message the list is in: down `within` from the request.
                let mut message = messages[*name];
                assert!(list.within.len() < MAX_DEPTH, "{name}");
                let segments: Vec<&str> = list.field.split('.').collect();
                assert_eq!(
                    segments.len(),
                    list.within.len() + 1,
                    "{name}: {} names each message on the way",
                    list.field
                );
                for (tag, segment) in list.within.iter().zip(&segments) {
                    let field = message.field.iter().find(|f| f.number() == *tag as i32).unwrap();
                    assert_eq!(field.r#type(), Type::Message, "{name}: within a message");
                    assert_eq!(field.name(), segment.trim_end_matches("[]"), "{name}: {}", list.field);
                    // `[]` marks a repeated one: each entry counts afresh, others add up.
                    assert_eq!(field.label() == Label::Repeated, segment.ends_with("[]"), "{name}: {}", list.field);
                    message = messages[field.type_name().trim_start_matches('.')];
                }
                assert!(!list.tags.is_empty(), "{name}");
                for tag in list.tags {
                    let field = message.field.iter().find(|f| f.number() == *tag as i32);
                    let field = field.unwrap_or_else(|| panic!("{name} has no field {tag}"));
                    // A list, or a field no request may carry (a limit of 0: any occurrence is
                    // one too many, `evidence.signal`).
                    assert!(field.label() == Label::Repeated || list.limit.max == 0, "{name}.{}", field.name());
                    // Length-delimited on the wire: never packed.
                    assert!(
                        matches!(field.r#type(), Type::Message | Type::String | Type::Bytes),
                        "{name}.{}",
                        field.name()
                    );
                }
                let first = message.field.iter().find(|f| f.number() == list.tags[0] as i32).unwrap();
                let last = list.field.rsplit('.').next().unwrap();
                assert_eq!(first.name(), last, "{name}: the refusal names the field");
            }
        }
        // Every request of either service with a list: bounded above, or open here on purpose.
        let open: [&str; 0] = [];
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let name = method.input_type().trim_start_matches('.');
                    let bounded = BOUNDED_REQUESTS.iter().find(|(n, _)| *n == name).map_or(&[][..], |(_, l)| *l);
                    for field in &messages[name].field {
                        if field.label() != Label::Repeated {
                            continue;
                        }
                        let tag = field.number() as u32;
                        let listed = bounded.iter().any(|l| l.within.is_empty() && l.tags.contains(&tag));
                        let path = format!("{name}.{}", field.name());
                        assert!(listed || open.contains(&path.as_str()), "{path}: a list without a bound here");
                    }
                }
            }
        }
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
