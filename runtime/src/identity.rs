//! Caller identities carried in mutual-TLS client certificates.
//!
//! A caller certificate from the cluster CA carries exactly one URI subject alternative name:
//!
//! ```text
//! domicile://caller/<name>?region=<region>&scopes=<scope>,<scope>,...
//! ```
//!
//! `<name>` is the calling service (`[a-z0-9-]`, 1–63 characters), `<region>` the region it runs
//! in, and the scopes are the operations it may use: `decide`, `capture`, `context`, `rights`,
//! `admin`. A certificate without such a name, with two of them, or naming an unknown scope
//! identifies nobody (fail closed). The gateway reads the name (gateway/src/auth.rs); this module
//! only formats, parses and issues it, so the CLI, tests and operators share one definition.

use std::fmt;
use std::path::Path;

use domicile_types::RegionId;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use x509_parser::extensions::GeneralName;

use crate::pki::{ClusterPki, PkiError};
use crate::tls::TlsFiles;

pub const CALLER_URI_PREFIX: &str = "domicile://caller/";

/// An operation family a caller may be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Decisions (unary and batch).
    Decide,
    /// Registration and consent capture.
    Capture,
    /// Identity resolution, consent history and change events.
    Context,
    /// Data-subject rights: erasure (and later export, rectification).
    Rights,
    /// Operator functions.
    Admin,
    /// The region's consent report for auditors (every consent in force with its evidence, or
    /// the ledger of a period), in region only: apart from `admin`, so an auditor holds neither
    /// backups nor keys nor the repair functions.
    Audit,
}

impl Scope {
    pub const ALL: [Scope; 6] =
        [Scope::Decide, Scope::Capture, Scope::Context, Scope::Rights, Scope::Admin, Scope::Audit];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Decide => "decide",
            Scope::Capture => "capture",
            Scope::Context => "context",
            Scope::Rights => "rights",
            Scope::Admin => "admin",
            Scope::Audit => "audit",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling: a service name, its region and its scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    pub name: String,
    pub region: RegionId,
    scopes: u8,
}

/// Why a URI is not a caller identity. Messages name the part, never echo it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("not a Domicile caller URI")]
    NotCallerUri,
    #[error("caller name must be 1-63 characters of a-z, 0-9 and '-'")]
    BadName,
    #[error("caller URI lacks a valid `region`")]
    BadRegion,
    #[error("caller URI names an unknown scope")]
    UnknownScope,
    #[error("caller URI has an unknown or repeated parameter")]
    BadParameter,
}

fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn bit(scope: Scope) -> u8 {
    1 << (scope as u8)
}

impl CallerIdentity {
    pub fn new(name: &str, region: RegionId, scopes: &[Scope]) -> Result<Self, IdentityError> {
        if !valid_name(name) {
            return Err(IdentityError::BadName);
        }
        Ok(Self { name: name.to_owned(), region, scopes: scopes.iter().fold(0, |acc, s| acc | bit(*s)) })
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.scopes & bit(scope) != 0
    }

    pub fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        Scope::ALL.into_iter().filter(|s| self.has(*s))
    }

    /// The URI SAN that names this caller.
    pub fn to_uri(&self) -> String {
        let scopes: Vec<&str> = self.scopes().map(Scope::as_str).collect();
        format!("{CALLER_URI_PREFIX}{}?region={}&scopes={}", self.name, self.region, scopes.join(","))
    }

    pub fn parse_uri(uri: &str) -> Result<Self, IdentityError> {
        let rest = uri.strip_prefix(CALLER_URI_PREFIX).ok_or(IdentityError::NotCallerUri)?;
        let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
        if !valid_name(name) {
            return Err(IdentityError::BadName);
        }
        let (mut region, mut scopes) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("region", value)) if region.is_none() => {
                    region = Some(RegionId::parse(value).map_err(|_| IdentityError::BadRegion)?);
                }
                Some(("scopes", value)) if scopes.is_none() => {
                    let mut bits = 0;
                    for scope in value.split(',').filter(|s| !s.is_empty()) {
                        bits |= bit(Scope::parse(scope).ok_or(IdentityError::UnknownScope)?);
                    }
                    scopes = Some(bits);
                }
                _ => return Err(IdentityError::BadParameter),
            }
        }
        Ok(Self { name: name.to_owned(), region: region.ok_or(IdentityError::BadRegion)?, scopes: scopes.unwrap_or(0) })
    }
}

/// Issues (or reuses, if it names exactly this identity) a caller certificate signed by the
/// cluster CA in `pki_dir`, as `<pki_dir>/<file_stem>.pem` and `.key`. Creates the CA if absent.
pub fn issue_caller_cert(pki_dir: &Path, file_stem: &str, caller: &CallerIdentity) -> Result<TlsFiles, PkiError> {
    ClusterPki::open_or_create(pki_dir)?.caller_as(file_stem, caller)
}

/// What a peer's leaf certificate says about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerNames {
    pub dns: Vec<String>,
    /// The caller identity, if the certificate carries exactly one valid caller URI.
    pub caller: Option<Result<CallerIdentity, &'static str>>,
}

impl PeerNames {
    pub fn has_dns(&self, name: &str) -> bool {
        self.dns.iter().any(|d| d == name)
    }

    /// Whether the certificate is a Domicile component's (a gateway's or a node's, by its DNS
    /// names) rather than a service's: it names no caller identity.
    pub fn is_component(&self) -> bool {
        self.caller.is_none()
            && (self.has_dns(crate::pki::GATEWAY_SERVER_NAME)
                || self.dns.iter().any(|d| RegionId::of_node_server_name(d).is_some()))
    }
}

/// Reads the DNS names and the caller identity of a DER certificate.
pub fn peer_names(der: &[u8]) -> Result<PeerNames, &'static str> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| "unreadable client certificate")?;
    let san = cert.subject_alternative_name().map_err(|_| "malformed subject alternative names")?;
    let mut names = PeerNames::default();
    let mut uris = Vec::new();
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(dns) => names.dns.push((*dns).to_owned()),
            GeneralName::URI(uri) if uri.starts_with(CALLER_URI_PREFIX) => uris.push(*uri),
            _ => {}
        }
    }
    names.caller = match uris.as_slice() {
        [] => None,
        [uri] => Some(CallerIdentity::parse_uri(uri).map_err(|_| "client certificate has a malformed caller identity")),
        _ => Some(Err("client certificate names more than one caller identity")),
    };
    Ok(names)
}

/// The caller identity in a DER certificate, if it has exactly one valid caller URI.
pub fn caller_from_der(der: &[u8]) -> Result<CallerIdentity, &'static str> {
    peer_names(der)?.caller.unwrap_or(Err("client certificate names no caller identity"))
}

/// The certificates the peer presented on this request's TLS connection, leaf first.
pub fn peer_certs<B>(request: &http::Request<B>) -> Option<PeerCerts> {
    let certs = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|info| info.peer_certs())?;
    (!certs.is_empty()).then_some(PeerCerts(certs))
}

/// A non-empty peer certificate chain.
#[derive(Debug, Clone)]
pub struct PeerCerts(std::sync::Arc<Vec<rustls_pki_types::CertificateDer<'static>>>);

impl PeerCerts {
    pub fn leaf(&self) -> &[u8] {
        self.0.first().map(|c| c.as_ref()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trips_and_rejects_what_it_does_not_know() {
        let region = RegionId::parse("eu-central").unwrap();
        let caller = CallerIdentity::new("web-shop", region, &[Scope::Decide, Scope::Capture]).unwrap();
        let uri = caller.to_uri();
        assert_eq!(uri, "domicile://caller/web-shop?region=eu-central&scopes=decide,capture");
        let parsed = CallerIdentity::parse_uri(&uri).unwrap();
        assert_eq!(parsed, caller);
        assert!(parsed.has(Scope::Decide) && !parsed.has(Scope::Rights));
        for bad in [
            "spiffe://domicile/caller/x?region=eu-central",
            "domicile://caller/Web?region=eu-central",
            "domicile://caller/web?scopes=decide",
            "domicile://caller/web?region=eu-central&scopes=decide,root",
            "domicile://caller/web?region=eu-central&region=us-east",
            "domicile://caller/web?region=eu-central&colour=blue",
        ] {
            assert!(CallerIdentity::parse_uri(bad).is_err(), "{bad}");
        }
    }

    /// Gateways and nodes are components (their trace context is continued); a service's
    /// certificate, which names a caller, is not, whatever DNS names it also carries.
    #[test]
    fn components_are_told_from_services_by_their_certificates() {
        use rustls_pki_types::pem::PemObject as _;
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::open_or_create(dir.path()).unwrap();
        let names = |files: TlsFiles| {
            let der = rustls_pki_types::CertificateDer::from_pem_file(&files.cert).unwrap();
            peer_names(der.as_ref()).unwrap()
        };
        let region = RegionId::parse("eu-central").unwrap();
        assert!(names(pki.gateway().unwrap()).is_component());
        assert!(names(pki.node(&region).unwrap()).is_component());
        let caller = CallerIdentity::new("web-shop", region.clone(), &[Scope::Decide]).unwrap();
        assert!(!names(pki.caller(&caller).unwrap()).is_component());
        let pretending = PeerNames {
            dns: vec![crate::pki::GATEWAY_SERVER_NAME.to_owned(), region.node_server_name()],
            caller: Some(Ok(caller)),
        };
        assert!(!pretending.is_component(), "a caller identity makes a service");
        let odd = PeerNames { dns: vec!["Not A Region.node.domicile.internal".to_owned()], caller: None };
        assert!(!odd.is_component());
    }

    #[test]
    fn issued_certificates_carry_the_caller_uri() {
        let dir = tempfile::tempdir().unwrap();
        let region = RegionId::parse("us-east").unwrap();
        let caller = CallerIdentity::new("survey", region, &[Scope::Decide]).unwrap();
        let files = issue_caller_cert(dir.path(), "client-survey", &caller).unwrap();
        let pem = std::fs::read_to_string(&files.cert).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(files.ca.exists() && files.key.exists());
    }
}
