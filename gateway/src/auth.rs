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

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use domicile_runtime::identity::{CallerIdentity, Scope, caller_from_der, peer_certs};
use domicile_runtime::process::now_unix;
use domicile_runtime::token::{TokenError, TokenVerifier};
use hashbrown::HashMap;
use tonic::Status;
use tonic::codegen::http;

/// Distinct caller certificates remembered; past this the cache starts over (it only saves
/// re-parsing, so forgetting is harmless).
const CACHE_LIMIT: usize = 4096;

/// What a method needs. `None`: any authenticated caller (health, reflection).
pub fn required_scope(path: &str) -> Option<Scope> {
    let Some(method) = path.strip_prefix("/domicile.gateway.v1.Domicile/") else {
        // Other services the gateway mounts (health, reflection) reveal nothing personal; an
        // unknown path is answered UNIMPLEMENTED by the router after authentication.
        return None;
    };
    Some(match method {
        "Decide" | "DecideStream" => Scope::Decide,
        "Register" | "RecordConsent" => Scope::Capture,
        "Merge" | "RecordInteraction" => Scope::Capture,
        "Resolve" | "ConsentHistory" | "Watch" => Scope::Context,
        "GetContext" => Scope::Context,
        "Erase" => Scope::Rights,
        "Rectify" | "Restrict" => Scope::Rights,
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
                | "RecordConsent"
                | "RecordInteraction"
                | "Rectify"
                | "GetContext"
                | "Erase"
                | "Merge"
                | "Restrict"
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
#[derive(Debug, Default)]
struct State {
    /// Callers by leaf certificate (DER), so a connection's certificate is parsed once.
    cache: RwLock<HashMap<Vec<u8>, Identified>>,
    tokens: Option<TokenVerifier>,
    /// Verified tokens and their expiry, so a caller's repeated token costs one signature check.
    token_cache: RwLock<HashMap<String, (Arc<CallerIdentity>, i64)>>,
}

#[derive(Debug, Clone, Default)]
pub struct AuthLayer {
    state: Arc<State>,
}

impl AuthLayer {
    /// Certificates only.
    pub fn certificates_only() -> Self {
        Self::default()
    }

    /// Certificates, or tokens verified with `verifier` from callers without one.
    pub fn with_tokens(verifier: TokenVerifier) -> Self {
        Self { state: Arc::new(State { tokens: Some(verifier), ..State::default() }) }
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
        let key = certs.leaf();
        if let Some(known) = self.state.cache.read().unwrap_or_else(|p| p.into_inner()).get(key) {
            return known.clone().map_err(Status::unauthenticated);
        }
        let parsed = caller_from_der(key).map(Arc::new);
        let mut cache = self.state.cache.write().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key.to_vec(), parsed.clone());
        parsed.map_err(Status::unauthenticated)
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
        if let Some((caller, expires_at)) = self.state.token_cache.read().unwrap_or_else(|p| p.into_inner()).get(token)
            && *expires_at > now
        {
            return Ok(Arc::clone(caller));
        }
        let verified = verifier.verify(token, now).map_err(|e| {
            tracing::info!(reason = %e, "token refused");
            Status::unauthenticated(match e {
                TokenError::Expired => "token has expired",
                _ => "token is not valid for this cluster",
            })
        })?;
        let caller = Arc::new(verified.caller);
        let mut cache = self.state.token_cache.write().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(token.to_owned(), (Arc::clone(&caller), verified.expires_at));
        Ok(caller)
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
                if needs_caller(request.uri().path()) {
                    request.extensions_mut().insert(caller);
                }
                Box::pin(self.inner.call(request))
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gateway_method_needs_a_scope() {
        assert_eq!(required_scope("/domicile.gateway.v1.Domicile/Decide"), Some(Scope::Decide));
        assert_eq!(required_scope("/domicile.gateway.v1.Domicile/Erase"), Some(Scope::Rights));
        assert_eq!(required_scope("/domicile.gateway.v1.Domicile/SomethingNew"), Some(Scope::Admin));
        assert_eq!(required_scope("/grpc.health.v1.Health/Check"), None);
    }
}
