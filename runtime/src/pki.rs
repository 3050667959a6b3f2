//! The certificate authority of a cluster, generated per cluster with rcgen.
//!
//! Node certificates name their region (`<region>.node.domicile.internal`), so a gateway that
//! dials a region by name cannot be answered by another region's node. Private keys are written
//! with mode 0600 and never committed.

use std::path::{Path, PathBuf};

use domicile_types::RegionId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::identity::CallerIdentity;
use crate::tls::TlsFiles;

pub const GATEWAY_SERVER_NAME: &str = "gateway.domicile.internal";
const CA_COMMON_NAME: &str = "Domicile cluster CA";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write or read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A cluster CA on disk: `ca.pem` and `ca.key` under `dir`, plus leaf certificates issued on demand.
#[derive(Debug)]
pub struct ClusterPki {
    dir: PathBuf,
    ca_key: KeyPair,
}

/// The CA's name and constraints; also what issuers are rebuilt from when signing leaves.
pub(crate) fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "Domicile");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

impl ClusterPki {
    /// Opens the CA in `dir`, creating it if absent. Reuses an existing CA so a restarted
    /// cluster keeps trusting the certificates it issued before.
    pub fn open_or_create(dir: &Path) -> Result<Self, PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.to_owned(), source })?;
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.pem");
        if key_path.exists() && cert_path.exists() {
            let pem = read_string(&key_path)?;
            let ca_key = KeyPair::from_pem(&pem)?;
            return Ok(Self { dir: dir.to_owned(), ca_key });
        }
        let ca_key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&ca_key)?;
        write_private(&key_path, &ca_key.serialize_pem())?;
        write_public(&cert_path, &cert.pem())?;
        Ok(Self { dir: dir.to_owned(), ca_key })
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A node of `region`: server and client auth, named for its region.
    pub fn node(&self, region: &RegionId) -> Result<TlsFiles, PkiError> {
        let name = format!("node-{region}");
        self.leaf(&name, &[region.node_server_name()], Vec::new(), true, |_| true)
    }

    /// A gateway: server auth for callers, client auth towards nodes.
    pub fn gateway(&self) -> Result<TlsFiles, PkiError> {
        self.leaf("gateway", &[GATEWAY_SERVER_NAME.to_owned()], Vec::new(), true, |_| true)
    }

    /// A caller (the CLI, a channel service, an operator tool): a client certificate whose URI
    /// SAN names the caller, its region and its scopes (format: `identity.rs`), written as
    /// `client-<name>.pem`. An existing certificate is reused only if it names exactly this
    /// identity, so changing scopes or region re-issues it.
    pub fn caller(&self, caller: &CallerIdentity) -> Result<TlsFiles, PkiError> {
        self.caller_as(&format!("client-{}", caller.name), caller)
    }

    /// As [`ClusterPki::caller`], under a chosen file stem.
    pub fn caller_as(&self, file_stem: &str, caller: &CallerIdentity) -> Result<TlsFiles, PkiError> {
        let uri = caller.to_uri();
        let san = SanType::URI(uri.clone().try_into()?);
        let dns = [format!("{}.client.domicile.internal", caller.name)];
        self.leaf(file_stem, &dns, vec![san], false, |der| der.windows(uri.len()).any(|w| w == uri.as_bytes()))
    }

    fn leaf(
        &self,
        file_stem: &str,
        dns_names: &[String],
        extra_sans: Vec<SanType>,
        server: bool,
        reusable: impl Fn(&[u8]) -> bool,
    ) -> Result<TlsFiles, PkiError> {
        let files = TlsFiles {
            ca: self.ca_path(),
            cert: self.dir.join(format!("{file_stem}.pem")),
            key: self.dir.join(format!("{file_stem}.key")),
        };
        if files.cert.exists() && files.key.exists() {
            let existing = CertificateDer::from_pem_file(&files.cert).ok();
            if existing.is_some_and(|der| reusable(der.as_ref())) {
                return Ok(files);
            }
        }
        let mut sans: Vec<String> = dns_names.to_vec();
        if server {
            // Local clusters dial loopback; the region name check happens through SNI.
            sans.push("localhost".to_owned());
            sans.push("127.0.0.1".to_owned());
        }
        let mut params = CertificateParams::new(sans)?;
        params.subject_alt_names.extend(extra_sans);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, file_stem);
        dn.push(DnType::OrganizationName, "Domicile");
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = if server {
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.use_authority_key_identifier_extension = true;
        // Valid from the moment of issue (a minute back for clock skew), so a revocation of a
        // caller's credentials issued before a time (`revocation.rs`) spares the ones issued
        // after it; rcgen's default start is 1975.
        let now = crate::process::now_unix();
        if let Ok(start) = time::OffsetDateTime::from_unix_timestamp(now - 60) {
            params.not_before = start;
        }
        if let Ok(end) = time::OffsetDateTime::from_unix_timestamp(now + LEAF_VALIDITY_SECS) {
            params.not_after = end;
        }
        let key = KeyPair::generate()?;
        let issuer = Issuer::new(ca_params(), &self.ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        write_private(&files.key, &key.serialize_pem())?;
        write_public(&files.cert, &cert.pem())?;
        Ok(files)
    }
}

/// How long a node, gateway or caller certificate is valid: rotate before (deploy/README.md,
/// "Certificate rotation").
const LEAF_VALIDITY_SECS: i64 = 2 * 365 * 24 * 3600;

fn read_string(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.to_owned(), source })
}

fn write_public(path: &Path, contents: &str) -> Result<(), PkiError> {
    std::fs::write(path, contents).map_err(|source| PkiError::Io { path: path.to_owned(), source })
}

fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    crate::process::write_private_file(path, contents.as_bytes())
        .map_err(|source| PkiError::Io { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_certificates_are_reissued_when_the_identity_changes() {
        use crate::identity::Scope;
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::open_or_create(dir.path()).unwrap();
        let region = RegionId::parse("eu-central").unwrap();
        let decide = CallerIdentity::new("shop", region.clone(), &[Scope::Decide]).unwrap();
        let files = pki.caller(&decide).unwrap();
        let first = std::fs::read(&files.cert).unwrap();
        assert_eq!(std::fs::read(&pki.caller(&decide).unwrap().cert).unwrap(), first, "same identity: reused");
        let more = CallerIdentity::new("shop", region, &[Scope::Decide, Scope::Capture]).unwrap();
        assert_ne!(std::fs::read(&pki.caller(&more).unwrap().cert).unwrap(), first, "new scopes: re-issued");
    }

    #[test]
    fn issues_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::open_or_create(dir.path()).unwrap();
        let region = RegionId::parse("eu-central").unwrap();
        let node = pki.node(&region).unwrap();
        let before = std::fs::read(&node.cert).unwrap();
        let again = ClusterPki::open_or_create(dir.path()).unwrap().node(&region).unwrap();
        assert_eq!(std::fs::read(&again.cert).unwrap(), before, "existing certificates are reused");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&node.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "private keys are not readable by others");
        }
    }
}
