//! Who may call a node: gateways, and callers of the node's own region (operators and in-region
//! services). A certificate from the cluster CA is not enough on its own: a caller of another
//! region must go through a gateway, which only ever sends it links and decisions (invariant 2).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use domicile_runtime::identity::{peer_certs, peer_names};
use domicile_runtime::pki::GATEWAY_SERVER_NAME;
use domicile_types::RegionId;
use tonic::Status;
use tonic::codegen::http;

/// Who an admitted peer is; handlers read it from the request's extensions, because what a
/// peer may receive differs: a gateway serves callers of every region, so it gets no export and
/// no full context, and states the region of the caller it acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requester {
    Gateway,
    /// A service or operator of this node's region.
    InRegion,
}

impl Requester {
    /// The requester of a request that passed [`AccessLayer`]; `None` if it did not (an
    /// in-process call), which handlers treat as the least trusted case.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Self> {
        request.extensions().get::<Requester>().copied()
    }
}

/// Why a peer is refused, or who it is if it may call this node.
pub fn admit(region: &RegionId, leaf_der: &[u8]) -> Result<Requester, Status> {
    let names = peer_names(leaf_der).map_err(Status::unauthenticated)?;
    if names.has_dns(GATEWAY_SERVER_NAME) {
        return Ok(Requester::Gateway);
    }
    match names.caller {
        Some(Ok(caller)) if &caller.region == region => Ok(Requester::InRegion),
        Some(Ok(_)) => Err(Status::permission_denied("callers of another region must go through a gateway")),
        Some(Err(reason)) => Err(Status::unauthenticated(reason)),
        None => Err(Status::permission_denied("only gateways and services of this region may call a node")),
    }
}

#[derive(Debug, Clone)]
pub struct AccessLayer {
    region: RegionId,
}

impl AccessLayer {
    pub fn new(region: RegionId) -> Self {
        Self { region }
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Access { inner, region: self.region.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct Access<S> {
    inner: S,
    region: RegionId,
}

impl<S, B> tower::Service<http::Request<B>> for Access<S>
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
        let verdict = match peer_certs(&request) {
            None => Err(Status::unauthenticated("a client certificate from the cluster CA is required")),
            Some(certs) => admit(&self.region, certs.leaf()),
        };
        match verdict {
            Ok(requester) => {
                request.extensions_mut().insert(requester);
                Box::pin(self.inner.call(request))
            }
            Err(status) => {
                tracing::info!(region = %self.region, code = ?status.code(), "node call refused");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domicile_runtime::identity::{CallerIdentity, Scope};
    use domicile_runtime::pki::ClusterPki;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    fn der(path: &std::path::Path) -> Vec<u8> {
        CertificateDer::from_pem_file(path).unwrap().as_ref().to_vec()
    }

    #[test]
    fn gateways_and_in_region_callers_only() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::open_or_create(dir.path()).unwrap();
        let eu = RegionId::parse("eu-central").unwrap();
        let us = RegionId::parse("us-east").unwrap();
        assert_eq!(admit(&eu, &der(&pki.gateway().unwrap().cert)).unwrap(), Requester::Gateway);
        let local = CallerIdentity::new("ops", eu.clone(), &[Scope::Admin]).unwrap();
        assert_eq!(admit(&eu, &der(&pki.caller(&local).unwrap().cert)).unwrap(), Requester::InRegion);
        let foreign = CallerIdentity::new("us-ops", us.clone(), &Scope::ALL).unwrap();
        let refused = admit(&eu, &der(&pki.caller(&foreign).unwrap().cert)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        // Another region's node is not a gateway either.
        let node = admit(&eu, &der(&pki.node(&us).unwrap().cert)).unwrap_err();
        assert_eq!(node.code(), tonic::Code::PermissionDenied);
    }
}
