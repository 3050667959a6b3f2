//! Who may call a node, and which methods: gateways, peer nodes (for identifier claims only) and
//! callers of the node's own region, each per method (invariant 10, least privilege at every
//! door). A certificate from the cluster CA is not enough on its own: a caller of another region
//! must go through a gateway, which only ever sends it links and decisions (invariant 2), and a
//! caller of this region gets exactly the methods its scopes allow, with the same scopes as at
//! the gateway (`gateway/src/auth.rs`). A certificate on the revocation list in force is refused
//! whoever it names (`domicile_runtime::revocation`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use domicile_runtime::identity::{CallerIdentity, Scope, peer_certs, peer_names};
use domicile_runtime::pki::GATEWAY_SERVER_NAME;
use domicile_runtime::revocation::{GenerationCache, REVOKED, RevocationList, Revocations};
use domicile_types::RegionId;
use tonic::Status;
use tonic::codegen::http;

/// Who an admitted peer is; handlers read it from the request's extensions, because what a
/// peer may receive differs: a gateway serves callers of every region, so it gets no export and
/// no full context, and states the region of the caller it acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requester {
    /// A gateway: forwards for callers it has authorised itself, and is the only requester whose
    /// `caller_region` fields are believed.
    Gateway,
    /// A service or operator of this node's region, with the scopes its certificate names.
    InRegion(Arc<CallerIdentity>),
    /// Another region's node, claiming or releasing identifiers this node arbitrates.
    PeerNode(RegionId),
}

impl Requester {
    /// The requester of a request that passed [`AccessLayer`]; `None` if it did not (an
    /// in-process call), which handlers treat as the least trusted case.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&Self> {
        request.extensions().get::<Requester>()
    }

    pub fn is_in_region(this: Option<&Self>) -> bool {
        matches!(this, Some(Requester::InRegion(_)))
    }
}

/// What one method of `domicile.node.v1.RegionalNode` requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Health and reflection: any admitted peer.
    Open,
    /// A gateway, or a caller of this region holding the scope.
    Scoped(Scope),
    /// A caller of this region holding the scope; never a gateway (personal data that is
    /// delivered in the home region only).
    InRegionOnly(Scope),
    /// Another region's node: identifier claims.
    Peer,
}

const SERVICE_PREFIX: &str = "/domicile.node.v1.RegionalNode/";

/// The rule of a method path. A method without an entry needs `admin` from a caller of this
/// region, and no gateway or peer may call it (fail closed until someone decides).
pub fn rule(path: &str) -> Rule {
    let Some(method) = path.strip_prefix(SERVICE_PREFIX) else {
        // Health and reflection reveal nothing personal; an unknown path is answered
        // UNIMPLEMENTED by the router.
        return Rule::Open;
    };
    match method {
        "Decide" | "DecideBatch" => Rule::Scoped(Scope::Decide),
        "Register" | "RegisterBatch" | "RecordConsent" | "RecordSignal" | "RecordInteraction" | "ImportConsent" => {
            Rule::Scoped(Scope::Capture)
        }
        "ConsentHistory" | "Watch" | "GetContext" => Rule::Scoped(Scope::Context),
        // A merge hands one person's identifiers, profile and history to another (the holder of
        // the other's identifiers could then have them exported), and undoing one gives personal
        // data back to a person: the rights scope, as a rectification, never a capture credential.
        "Erase" | "Rectify" | "Restrict" | "Merge" | "Unmerge" => Rule::Scoped(Scope::Rights),
        // Every request of a subject with its id: ids are handles only their openers hold, and
        // the gateway routes this nowhere; the region's rights desk only.
        "ListRightsRequests" => Rule::InRegionOnly(Scope::Rights),
        // Tracked rights requests of one subject: like the rights they lead to.
        "OpenRightsRequest" | "VerifyRightsRequest" | "GetRightsRequest" | "ExtendRightsRequest" => {
            Rule::Scoped(Scope::Rights)
        }
        // The challenge outbox holds identifiers and codes (personal data, delivered in the home
        // region like an export), and the overdue listing is the whole region's queue: the
        // region's rights desk and delivery system, never a gateway.
        "ReadChallengeOutbox" | "AckChallengeOutbox" | "ListOverdueRightsRequests" => Rule::InRegionOnly(Scope::Rights),
        // Pseudonymous, but the whole region at once: operators need `admin`.
        "ListLinks" | "Info" => Rule::Scoped(Scope::Admin),
        "Export" => Rule::InRegionOnly(Scope::Rights),
        // The whole region's personal data: its operators only.
        "Backup" => Rule::InRegionOnly(Scope::Admin),
        // The region's consent with its evidence, by subject ref: its auditors (not `admin`,
        // which also opens backups, keys and the repair functions), in region only.
        "ConsentReport" => Rule::InRegionOnly(Scope::Audit),
        "ClaimLinks" | "ReleaseLinks" => Rule::Peer,
        // Ownership repair acts on the whole region: its operators only.
        "ClaimsOf" | "ListClaims" | "ReassertClaims" | "DropLinks" | "ReleaseOrphanClaims" => {
            Rule::InRegionOnly(Scope::Admin)
        }
        _ => Rule::InRegionOnly(Scope::Admin),
    }
}

/// Who a certificate names, as far as this node is concerned.
#[derive(Debug, Clone)]
enum Peer {
    Gateway,
    Caller(Arc<CallerIdentity>),
    Node(RegionId),
}

/// Reads who a leaf certificate names, unless `revoked` refuses it.
fn identify(leaf_der: &[u8], revoked: &RevocationList) -> Result<Peer, Status> {
    let names = peer_names(leaf_der).map_err(Status::unauthenticated)?;
    let caller = names.caller.as_ref().and_then(|c| c.as_ref().ok());
    if revoked.revokes_certificate(leaf_der, caller) {
        return Err(Status::unauthenticated(REVOKED));
    }
    if names.has_dns(GATEWAY_SERVER_NAME) {
        return Ok(Peer::Gateway);
    }
    match names.caller {
        Some(Ok(caller)) => return Ok(Peer::Caller(Arc::new(caller))),
        Some(Err(reason)) => return Err(Status::unauthenticated(reason)),
        None => {}
    }
    let node = names.dns.iter().find_map(|d| RegionId::of_node_server_name(d));
    node.map(Peer::Node)
        .ok_or_else(|| Status::permission_denied("only gateways, nodes and services of this region may call a node"))
}

/// Whether `peer` may call a method with `rule` on the node of `region`, and as whom.
fn authorise(region: &RegionId, peer: &Peer, rule: Rule) -> Result<Requester, Status> {
    let requester = match peer {
        Peer::Gateway => Requester::Gateway,
        Peer::Caller(caller) if &caller.region == region => Requester::InRegion(Arc::clone(caller)),
        Peer::Caller(_) => {
            return Err(Status::permission_denied("callers of another region must go through a gateway"));
        }
        Peer::Node(other) if other != region => Requester::PeerNode(other.clone()),
        // A certificate of this node's own name is this node's: it never calls itself remotely.
        Peer::Node(_) => return Err(Status::permission_denied("a node does not call itself")),
    };
    let allowed = match (&requester, rule) {
        (_, Rule::Open) => true,
        (Requester::Gateway, Rule::Scoped(_)) => true,
        (Requester::InRegion(caller), Rule::Scoped(scope) | Rule::InRegionOnly(scope)) => caller.has(scope),
        (Requester::PeerNode(_), Rule::Peer) => true,
        (Requester::Gateway, Rule::InRegionOnly(_)) => {
            return Err(Status::permission_denied(
                "personal data is delivered in the home region only: call this method as a service of the region",
            ));
        }
        _ => false,
    };
    if allowed {
        return Ok(requester);
    }
    Err(match (&requester, rule) {
        (Requester::InRegion(_), Rule::Scoped(scope) | Rule::InRegionOnly(scope)) => {
            Status::permission_denied(format!("caller lacks the `{scope}` scope"))
        }
        (Requester::PeerNode(_), _) => Status::permission_denied("nodes of other regions may only claim identifiers"),
        _ => Status::permission_denied("only nodes of other regions may claim identifiers"),
    })
}

/// Why a peer is refused, or who it is if it may call `path` on this node.
#[cfg(test)]
pub fn admit(region: &RegionId, leaf_der: &[u8], path: &str) -> Result<Requester, Status> {
    authorise(region, &identify(leaf_der, &RevocationList::default())?, rule(path))
}

#[derive(Debug, Clone)]
pub struct AccessLayer {
    region: RegionId,
    /// Who each leaf certificate (DER) names, or why it names nobody, so a connection's
    /// certificate is parsed once per revocation list.
    cache: Arc<GenerationCache<Vec<u8>, Result<Peer, Status>>>,
    revocations: Arc<Revocations>,
}

impl AccessLayer {
    pub fn new(region: RegionId, revocations: Arc<Revocations>) -> Self {
        Self { region, cache: Arc::default(), revocations }
    }

    fn peer(&self, leaf: &[u8]) -> Result<Peer, Status> {
        self.cache.get_or_compute(&self.revocations, leaf, |revoked| (identify(leaf, revoked), true))
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Access { inner, layer: self.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct Access<S> {
    inner: S,
    layer: AccessLayer,
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
        let region = &self.layer.region;
        let verdict = match peer_certs(&request) {
            None => Err(Status::unauthenticated("a client certificate from the cluster CA is required")),
            Some(certs) => {
                self.layer.peer(certs.leaf()).and_then(|peer| authorise(region, &peer, rule(request.uri().path())))
            }
        };
        match verdict {
            Ok(requester) => {
                request.extensions_mut().insert(requester);
                Box::pin(self.inner.call(request))
            }
            Err(status) => {
                tracing::info!(%region, code = ?status.code(), "node call refused");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domicile_runtime::pki::ClusterPki;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    fn der(path: &std::path::Path) -> Vec<u8> {
        CertificateDer::from_pem_file(path).unwrap().as_ref().to_vec()
    }

    const EXPORT: &str = "/domicile.node.v1.RegionalNode/Export";
    const DECIDE: &str = "/domicile.node.v1.RegionalNode/Decide";
    const CLAIM: &str = "/domicile.node.v1.RegionalNode/ClaimLinks";

    #[test]
    fn gateways_in_region_callers_and_peer_nodes_each_get_their_methods() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::open_or_create(dir.path()).unwrap();
        let eu = RegionId::parse("eu-central").unwrap();
        let us = RegionId::parse("us-east").unwrap();
        let gateway = der(&pki.gateway().unwrap().cert);
        assert_eq!(admit(&eu, &gateway, DECIDE).unwrap(), Requester::Gateway);
        assert_eq!(admit(&eu, &gateway, EXPORT).unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(admit(&eu, &gateway, CLAIM).unwrap_err().code(), tonic::Code::PermissionDenied);

        let ops = CallerIdentity::new("ops", eu.clone(), &[Scope::Admin]).unwrap();
        let ops = der(&pki.caller(&ops).unwrap().cert);
        assert!(matches!(admit(&eu, &ops, "/domicile.node.v1.RegionalNode/Info").unwrap(), Requester::InRegion(_)));
        let refused = admit(&eu, &ops, DECIDE).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("`decide`"), "{}", refused.message());

        let foreign = CallerIdentity::new("us-ops", us.clone(), &Scope::ALL).unwrap();
        let refused = admit(&eu, &der(&pki.caller(&foreign).unwrap().cert), DECIDE).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);

        // Another region's node may claim, and nothing else.
        let node = der(&pki.node(&us).unwrap().cert);
        assert_eq!(admit(&eu, &node, CLAIM).unwrap(), Requester::PeerNode(us.clone()));
        assert_eq!(admit(&eu, &node, DECIDE).unwrap_err().code(), tonic::Code::PermissionDenied);
        // This node's own certificate is nobody's.
        assert_eq!(
            admit(&eu, &der(&pki.node(&eu).unwrap().cert), CLAIM).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn ownership_repair_is_for_admins_of_the_region_only() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::open_or_create(dir.path()).unwrap();
        let eu = RegionId::parse("eu-central").unwrap();
        let us = RegionId::parse("us-east").unwrap();
        let admin = der(&pki.caller(&CallerIdentity::new("ops", eu.clone(), &[Scope::Admin]).unwrap()).unwrap().cert);
        let rights = der(&pki.caller(&CallerIdentity::new("dpo", eu.clone(), &[Scope::Rights]).unwrap()).unwrap().cert);
        let foreign = der(&pki.caller(&CallerIdentity::new("us-ops", us.clone(), &Scope::ALL).unwrap()).unwrap().cert);
        let gateway = der(&pki.gateway().unwrap().cert);
        let node = der(&pki.node(&us).unwrap().cert);
        for method in ["ClaimsOf", "ListClaims", "ReassertClaims", "DropLinks", "ReleaseOrphanClaims"] {
            let path = format!("/domicile.node.v1.RegionalNode/{method}");
            assert_eq!(rule(&path), Rule::InRegionOnly(Scope::Admin), "{method}");
            assert!(matches!(admit(&eu, &admin, &path).unwrap(), Requester::InRegion(_)), "{method}");
            for refused in [&rights, &foreign, &gateway, &node] {
                assert_eq!(admit(&eu, refused, &path).unwrap_err().code(), tonic::Code::PermissionDenied, "{method}");
            }
        }
    }

    #[test]
    fn an_auditor_reads_the_consent_report_and_nothing_an_operator_holds() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::open_or_create(dir.path()).unwrap();
        let eu = RegionId::parse("eu-central").unwrap();
        let caller =
            |scopes: &[Scope]| der(&pki.caller(&CallerIdentity::new("c", eu.clone(), scopes).unwrap()).unwrap().cert);
        let (auditor, admin) = (caller(&[Scope::Audit]), caller(&[Scope::Admin]));
        let path = |method: &str| format!("/domicile.node.v1.RegionalNode/{method}");
        assert!(matches!(admit(&eu, &auditor, &path("ConsentReport")).unwrap(), Requester::InRegion(_)));
        assert_eq!(admit(&eu, &admin, &path("ConsentReport")).unwrap_err().code(), tonic::Code::PermissionDenied);
        for method in ["Backup", "ListLinks", "DropLinks", "Export", "ConsentHistory", "Info"] {
            assert_eq!(
                admit(&eu, &auditor, &path(method)).unwrap_err().code(),
                tonic::Code::PermissionDenied,
                "{method}"
            );
        }
        let gateway = der(&pki.gateway().unwrap().cert);
        assert_eq!(admit(&eu, &gateway, &path("ConsentReport")).unwrap_err().code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn an_unlisted_method_needs_admin_in_region() {
        assert_eq!(rule("/domicile.node.v1.RegionalNode/SomethingNew"), Rule::InRegionOnly(Scope::Admin));
        assert_eq!(rule("/grpc.health.v1.Health/Check"), Rule::Open);
    }
}
