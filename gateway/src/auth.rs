//! Caller authentication and authorisation, as a tower layer in front of every gateway service
//! (assembled in `stack.rs`).
//!
//! TLS has already checked that a presented certificate chains to the cluster CA (a certificate
//! of another CA never completes the handshake). This layer reads the caller identity from the
//! certificate's URI SAN (format: `domicile_runtime::identity`) and checks the scope the method
//! needs: no certificate or no valid identity → UNAUTHENTICATED, a missing scope →
//! PERMISSION_DENIED.
//!
//! A caller without a client certificate may instead send `authorization: Bearer <token>`, a
//! token signed with the cluster's token key naming the same identity plus an expiry
//! (`domicile_runtime::token`), when the gateway is configured with the public key. A presented
//! certificate always wins over a token.
//!
//! Each caller may have at most a configured number of requests in flight at this gateway
//! (`max_in_flight_per_caller`, whatever the connections it spreads them over): one more is
//! answered RESOURCE_EXHAUSTED at once, so a caller that floods the gateway is shed without
//! queueing and the others keep their latency.
//!
//! Both are checked against the revocation list in force (`domicile_runtime::revocation`),
//! reloaded while the gateway serves: a revoked certificate or token is UNAUTHENTICATED from the
//! next request on, on connections already open too.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use domicile_runtime::identity::{CallerIdentity, Scope, caller_from_der, peer_certs};
use domicile_runtime::process::now_unix;
use domicile_runtime::revocation::{GenerationCache, REVOKED, Revocations};
use domicile_runtime::token::{TokenError, TokenVerifier};
use tonic::Status;
use tonic::codegen::http;

/// What a method needs. `None`: any authenticated caller (health, reflection).
pub fn required_scope(path: &str) -> Option<Scope> {
    let Some(method) = path.strip_prefix("/domicile.gateway.v1.Domicile/") else {
        // Other services the gateway mounts (health, reflection) reveal nothing personal; an
        // unknown path is answered UNIMPLEMENTED by the router after authentication.
        return None;
    };
    Some(match method {
        "Decide" | "DecideStream" => Scope::Decide,
        "Register" | "RegisterBatch" | "RecordConsent" | "RecordSignal" | "ImportConsent" => Scope::Capture,
        "RecordInteraction" => Scope::Capture,
        "Resolve" | "ConsentHistory" | "Watch" => Scope::Context,
        "GetContext" => Scope::Context,
        "Erase" => Scope::Rights,
        // A merge hands one person's data to another (whose holder could then export it): the
        // rights scope, as a rectification, never a capture credential.
        "Rectify" | "Restrict" | "Merge" | "Unmerge" => Scope::Rights,
        "OpenRightsRequest" | "VerifyRightsRequest" | "GetRightsRequest" | "ExtendRightsRequest" => Scope::Rights,
        // A method added later without a scope here needs admin until someone decides (fail closed).
        _ => Scope::Admin,
    })
}

/// Methods whose handlers need the caller: its region, for the subject's residency rules
/// (in-country collection and transfers), and its name, which scopes a write's idempotency key.
/// Only these get it attached, so the decision path pays nothing for it.
fn needs_caller(path: &str) -> bool {
    path.strip_prefix("/domicile.gateway.v1.Domicile/").is_some_and(|method| {
        matches!(
            method,
            "Register"
                | "RegisterBatch"
                | "RecordConsent"
                | "RecordSignal"
                | "ImportConsent"
                | "RecordInteraction"
                | "Rectify"
                | "GetContext"
                | "ConsentHistory"
                | "Erase"
                | "Merge"
                | "Unmerge"
                | "Restrict"
                | "OpenRightsRequest"
        )
    })
}

/// The authenticated caller of a request, for the methods of [`needs_caller`]. Missing means the
/// stack was assembled without the auth layer: refused, never treated as a local caller.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Arc<CallerIdentity>, Status> {
    request
        .extensions()
        .get::<Arc<CallerIdentity>>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the caller is not identified"))
}

/// A certificate's caller, or why it names none.
type Identified = Result<Arc<CallerIdentity>, &'static str>;

/// What the layer shares between connections and requests, behind one `Arc`: the server clones
/// its stack for every request, and each shared counter touched then is a cache line bouncing
/// between cores.
#[derive(Debug)]
struct State {
    /// Callers by leaf certificate (DER), so a connection's certificate is parsed once per
    /// revocation list.
    cache: GenerationCache<Vec<u8>, Identified>,
    tokens: Option<TokenVerifier>,
    /// Tokens' callers and expiry (or why refused), so a caller's repeated token costs one
    /// signature check per revocation list.
    token_cache: GenerationCache<String, Result<(Arc<CallerIdentity>, i64), TokenError>>,
    revocations: Arc<Revocations>,
    limits: CallerLimits,
    /// Streams (DecideStream, Watch) open per caller: each holds up to 8 node calls of a region
    /// (or a node stream per region) for as long as it runs, so within its limit of requests in
    /// flight one caller could otherwise take every node-call slot of a region.
    streams: CallerLimits,
}

/// Requests in flight per caller (name and region), each bounded by `per_caller`.
#[derive(Debug)]
struct CallerLimits {
    per_caller: usize,
    in_flight: std::sync::RwLock<hashbrown::HashMap<(String, String), Arc<tokio::sync::Semaphore>>>,
}

/// Distinct callers tracked; past this, idle entries are forgotten (a caller with requests in
/// flight keeps its entry, so no limit is ever reset while it is reached).
const MAX_TRACKED_CALLERS: usize = 10_000;

impl CallerLimits {
    fn new(per_caller: usize) -> Self {
        Self { per_caller: per_caller.max(1), in_flight: std::sync::RwLock::default() }
    }

    /// A slot for one more request of `caller`, or `None` when it has `per_caller` in flight.
    fn admit(&self, caller: &CallerIdentity) -> Option<tokio::sync::OwnedSemaphorePermit> {
        // Looked up by borrowed name and region: nothing is allocated per request once a caller
        // is known.
        let key = CallerKey(&caller.name, caller.region.as_str());
        let known = self.in_flight.read().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        let semaphore = match known {
            Some(semaphore) => semaphore,
            None => {
                let mut map = self.in_flight.write().unwrap_or_else(|p| p.into_inner());
                if map.len() >= MAX_TRACKED_CALLERS {
                    let full = self.per_caller;
                    map.retain(|_, s| s.available_permits() < full);
                }
                let owned = (caller.name.clone(), caller.region.to_string());
                Arc::clone(map.entry(owned).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_caller))))
            }
        };
        semaphore.try_acquire_owned().ok()
    }
}

/// A caller's (name, region) borrowed: hashes as the owned key does (a tuple of two strings).
#[derive(Hash)]
struct CallerKey<'a>(&'a str, &'a str);

impl hashbrown::Equivalent<(String, String)> for CallerKey<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

/// Requests in flight per caller unless configured otherwise: well above what one service
/// needs at the gateway's capacity, low enough that one caller cannot hold every slot.
pub const DEFAULT_MAX_IN_FLIGHT_PER_CALLER: usize = 512;

/// Streams (DecideStream, Watch) one caller may have open at once: 32 decision streams hold at
/// most 256 of a region's 1,024 node-call slots (`guard.rs`, 8 per stream), so one caller cannot
/// starve the others' decisions (found by an attacker's review: 128 streams took every slot).
/// Twice what the load tool opens, so a stream whose slot is returned a moment after its caller
/// starts the next is no refusal.
pub const MAX_STREAMS_PER_CALLER: usize = 32;

/// The methods whose response is a stream that runs as long as the caller keeps it.
fn is_stream(path: &str) -> bool {
    matches!(path.strip_prefix("/domicile.gateway.v1.Domicile/"), Some("DecideStream" | "Watch"))
}

#[derive(Debug, Clone)]
pub struct AuthLayer {
    state: Arc<State>,
}

impl AuthLayer {
    /// Certificates only, none revoked.
    pub fn certificates_only() -> Self {
        Self::new(None, Revocations::none(), DEFAULT_MAX_IN_FLIGHT_PER_CALLER)
    }

    /// Certificates, or tokens verified with `tokens` from callers without one (if given), each
    /// checked against `revocations`; at most `per_caller` requests in flight per caller.
    pub fn new(tokens: Option<TokenVerifier>, revocations: Arc<Revocations>, per_caller: usize) -> Self {
        Self {
            state: Arc::new(State {
                cache: GenerationCache::default(),
                tokens,
                token_cache: GenerationCache::default(),
                revocations,
                limits: CallerLimits::new(per_caller),
                streams: CallerLimits::new(MAX_STREAMS_PER_CALLER),
            }),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, state: Arc::clone(&self.state) }
    }
}

#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    state: Arc<State>,
}

impl<S> Auth<S> {
    fn identify<B>(&self, request: &http::Request<B>) -> Result<Arc<CallerIdentity>, Status> {
        let Some(certs) = peer_certs(request) else { return self.identify_by_token(request) };
        let leaf = certs.leaf();
        let identified = self.state.cache.get_or_compute(&self.state.revocations, leaf, |revoked| {
            let caller = caller_from_der(leaf).map(Arc::new);
            let refused = match &caller {
                Ok(caller) => revoked.revokes_certificate(leaf, Some(caller)),
                Err(_) => revoked.revokes_certificate(leaf, None),
            };
            if refused {
                tracing::info!("call refused: revoked certificate");
            }
            (if refused { Err(REVOKED) } else { caller }, true)
        });
        identified.map_err(Status::unauthenticated)
    }

    /// A caller without a certificate: a valid, unexpired token, or UNAUTHENTICATED. The status
    /// never repeats the token.
    fn identify_by_token<B>(&self, request: &http::Request<B>) -> Result<Arc<CallerIdentity>, Status> {
        let Some(verifier) = &self.state.tokens else {
            return Err(Status::unauthenticated("a client certificate from the cluster CA is required"));
        };
        let token = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("a client certificate from the cluster CA or a signed token is required")
            })?;
        let now = now_unix();
        let checked = self.state.token_cache.get_or_compute(&self.state.revocations, token, |revoked| {
            let checked = verifier.verify(token, now).and_then(|verified| {
                if revoked.revokes_token(&verified.id, &verified.caller, verified.issued_at) {
                    Err(TokenError::Revoked)
                } else {
                    Ok((Arc::new(verified.caller), verified.expires_at))
                }
            });
            // A token issued a little ahead of this clock becomes valid: do not remember that.
            // Nor junk (malformed, forged): remembering it would let anyone push real callers'
            // tokens out of the cache.
            let remember =
                !matches!(checked, Err(TokenError::NotYetValid | TokenError::Malformed | TokenError::BadSignature));
            (checked, remember)
        });
        let refused = match checked {
            Ok((caller, expires_at)) if expires_at > now => return Ok(caller),
            Ok(_) => TokenError::Expired,
            Err(e) => e,
        };
        tracing::info!(reason = %refused, "token refused");
        Err(Status::unauthenticated(match refused {
            TokenError::Expired => "token has expired",
            TokenError::Revoked => REVOKED,
            TokenError::NotYetValid | TokenError::LifetimeTooLong => {
                "token lifetime is outside what this gateway accepts: issue a shorter-lived token with a correct clock"
            }
            TokenError::OldFormat => "token format no longer accepted: issue a new token",
            _ => "token is not valid for this cluster",
        }))
    }

    fn authorise<B>(&self, request: &http::Request<B>) -> Result<Arc<CallerIdentity>, Status> {
        let caller = self.identify(request)?;
        if let Some(scope) = required_scope(request.uri().path())
            && !caller.has(scope)
        {
            tracing::info!(caller = %caller.name, %scope, "call refused: missing scope");
            return Err(Status::permission_denied(format!("caller lacks the `{scope}` scope")));
        }
        Ok(caller)
    }
}

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.authorise(&request) {
            Ok(caller) => {
                let Some(permit) = self.state.limits.admit(&caller) else {
                    tracing::info!(caller = %caller.name, "call shed: the caller is at its limit of requests in flight");
                    let status = Status::resource_exhausted(format!(
                        "the caller has {} requests in flight at this gateway, its limit: retry later",
                        self.state.limits.per_caller
                    ));
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                };
                let stream = match is_stream(request.uri().path()) {
                    true => match self.state.streams.admit(&caller) {
                        Some(stream) => Some(stream),
                        None => {
                            tracing::info!(caller = %caller.name, "stream refused: the caller is at its limit of streams");
                            let status = Status::resource_exhausted(format!(
                                "the caller has {MAX_STREAMS_PER_CALLER} streams open at this gateway, its limit: \
                                 close one or retry later"
                            ));
                            return Box::pin(std::future::ready(Ok(status.into_http())));
                        }
                    },
                    false => None,
                };
                if needs_caller(request.uri().path()) {
                    request.extensions_mut().insert(caller);
                }
                let response = self.inner.call(request);
                // The slot is held until the response body ends: a stream (DecideStream, Watch)
                // counts for as long as it runs, not only until its headers.
                Box::pin(async move {
                    let response = response.await?;
                    Ok(response
                        .map(|body| tonic::body::Body::new(PermitBody { body, _permit: permit, _stream: stream })))
                })
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

/// A response body holding its caller's in-flight slot until the body is done.
struct PermitBody {
    body: tonic::body::Body,
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// A stream's slot among its caller's streams.
    _stream: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl http_body::Body for PermitBody {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_caller_is_found_by_its_borrowed_key() {
        let limits = CallerLimits::new(1);
        let caller =
            CallerIdentity::new("kiosk", domicile_types::RegionId::parse("eu-central").unwrap(), &[Scope::Decide])
                .unwrap();
        let held = limits.admit(&caller).unwrap();
        let map = limits.in_flight.read().unwrap();
        assert!(map.get(&CallerKey("kiosk", "eu-central")).is_some(), "hashes as the owned key");
        drop(map);
        assert!(limits.admit(&caller).is_none(), "its one slot is taken");
        drop(held);
        assert!(limits.admit(&caller).is_some());
    }

    #[test]
    fn every_gateway_method_needs_a_scope() {
        assert_eq!(required_scope("/domicile.gateway.v1.Domicile/Decide"), Some(Scope::Decide));
        assert_eq!(required_scope("/domicile.gateway.v1.Domicile/Erase"), Some(Scope::Rights));
        assert_eq!(required_scope("/domicile.gateway.v1.Domicile/OpenRightsRequest"), Some(Scope::Rights));
        assert_eq!(required_scope("/domicile.gateway.v1.Domicile/VerifyRightsRequest"), Some(Scope::Rights));
        assert_eq!(required_scope("/domicile.gateway.v1.Domicile/SomethingNew"), Some(Scope::Admin));
        assert_eq!(required_scope("/grpc.health.v1.Health/Check"), None);
    }
}
