//! Revoked caller credentials: a deny-list file that gateways and nodes reload while they serve.
//!
//! A certificate from the cluster CA or a token signed with the cluster's key stays valid until
//! it expires; a stolen laptop or a leaked kiosk token must stop working before that. The list
//! names what to refuse, three ways:
//!
//! ```toml
//! version = 1
//!
//! [[certificate]]       # one certificate, by the SHA-256 of its DER
//! sha256 = "5F:0B:…"    # as `openssl x509 -noout -fingerprint -sha256 -in cert.pem` prints it
//! reason = "laptop lost"
//!
//! [[token]]             # one token, by the id `domicile cluster issue token` printed
//! id = "9c1d…"
//!
//! [[caller]]            # every certificate and token of a caller issued before a time
//! name = "kiosk"
//! region = "eu-central"
//! issued_before = "2026-12-05T08:00:00Z"
//! ```
//!
//! Reloading is fail-safe in the direction that matters: a list that cannot be read or parsed
//! never replaces the one in force (which would un-revoke everything), it is logged and counted,
//! and a process refuses to start on one. Decisions about a credential are cached per connection
//! certificate or token; every cache is keyed by the list's generation ([`GenerationCache`]), so
//! a reload reaches requests on connections that are already open.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use hashbrown::{HashMap, HashSet};

use crate::identity::CallerIdentity;

/// Why a credential is refused; the status a caller sees says only "revoked".
pub const REVOKED: &str = "the caller's credential has been revoked";

#[derive(Debug, thiserror::Error)]
#[error("revocation list {path}: {message}")]
pub struct RevocationError {
    pub path: String,
    pub message: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListFile {
    version: u32,
    #[serde(default)]
    certificate: Vec<CertificateEntry>,
    #[serde(default)]
    token: Vec<TokenEntry>,
    #[serde(default)]
    caller: Vec<CallerEntry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateEntry {
    sha256: String,
    #[serde(default)]
    #[allow(dead_code, reason = "kept in the file for the operator; not needed to refuse")]
    reason: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    id: String,
    #[serde(default)]
    #[allow(dead_code, reason = "kept in the file for the operator; not needed to refuse")]
    reason: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CallerEntry {
    name: String,
    region: String,
    issued_before: String,
    #[serde(default)]
    #[allow(dead_code, reason = "kept in the file for the operator; not needed to refuse")]
    reason: String,
}

/// One version of the list, as parsed.
#[derive(Debug, Default)]
pub struct RevocationList {
    generation: u64,
    certificates: HashSet<[u8; 32]>,
    tokens: HashSet<String>,
    /// (caller name, region) → credentials issued before this Unix time are revoked.
    callers: HashMap<(String, String), i64>,
}

impl RevocationList {
    /// Parses a list; every problem is reported at once, none is skipped.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: ListFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut problems = Vec::new();
        if file.version != 1 {
            problems.push(format!("`version` is {}, only 1 exists", file.version));
        }
        let mut list = Self::default();
        for (i, entry) in file.certificate.iter().enumerate() {
            match fingerprint(&entry.sha256) {
                Some(digest) => {
                    list.certificates.insert(digest);
                }
                None => problems.push(format!("certificate[{i}].sha256 is not 32 bytes of hex")),
            }
        }
        for (i, entry) in file.token.iter().enumerate() {
            let id = entry.id.trim().to_ascii_lowercase();
            if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                problems.push(format!("token[{i}].id is not a token id (32 hex digits)"));
            }
            list.tokens.insert(id);
        }
        for (i, entry) in file.caller.iter().enumerate() {
            // Checked like a caller identity: a name or region that no credential can carry
            // would revoke nothing while looking as if it did.
            let valid = domicile_types::RegionId::parse(&entry.region)
                .ok()
                .and_then(|region| CallerIdentity::new(&entry.name, region, &[]).ok())
                .is_some_and(|c| c.name == entry.name);
            if !valid {
                problems.push(format!("caller[{i}] is not a caller name and region a credential can carry"));
                continue;
            }
            match unix_seconds(&entry.issued_before) {
                Some(before) => {
                    let key = (entry.name.clone(), entry.region.clone());
                    let at = list.callers.entry(key).or_insert(i64::MIN);
                    *at = (*at).max(before);
                }
                None => problems.push(format!("caller[{i}].issued_before is not an RFC 3339 time with an offset")),
            }
        }
        if problems.is_empty() { Ok(list) } else { Err(problems.join("; ")) }
    }

    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty() && self.tokens.is_empty() && self.callers.is_empty()
    }

    /// Whether a certificate (its DER and, if it names one, its caller) is refused.
    pub fn revokes_certificate(&self, der: &[u8], caller: Option<&CallerIdentity>) -> bool {
        if self.is_empty() {
            return false;
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        if self.certificates.iter().any(|d| d.as_slice() == digest.as_ref()) {
            return true;
        }
        let Some(caller) = caller else { return false };
        match self.callers.get(&(caller.name.clone(), caller.region.to_string())) {
            // A certificate whose start of validity cannot be read is as old as can be.
            Some(before) => not_before(der).is_none_or(|at| at < *before),
            None => false,
        }
    }

    /// Whether a token (its id, caller and issue time) is refused.
    pub fn revokes_token(&self, id: &str, caller: &CallerIdentity, issued_at: i64) -> bool {
        if self.is_empty() {
            return false;
        }
        self.tokens.contains(id)
            || self.callers.get(&(caller.name.clone(), caller.region.to_string())).is_some_and(|b| issued_at < *b)
    }
}

/// RFC 3339 with an offset, as Unix seconds.
fn unix_seconds(text: &str) -> Option<i64> {
    text.trim().parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// A SHA-256 fingerprint in hex, with or without colons, any case.
fn fingerprint(text: &str) -> Option<[u8; 32]> {
    let hex_text: String = text.chars().filter(|c| *c != ':' && !c.is_whitespace()).collect();
    hex::decode(hex_text).ok()?.try_into().ok()
}

/// The start of a certificate's validity, Unix seconds.
fn not_before(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_before.timestamp())
}

/// The list in force, reloaded from its file.
#[derive(Debug)]
pub struct Revocations {
    path: Option<PathBuf>,
    /// Bumped after `current` is replaced: caches compare it to know whether they are stale.
    generation: AtomicU64,
    current: RwLock<Arc<RevocationList>>,
    /// The text in force, so an unchanged file is not parsed again.
    text: RwLock<String>,
    /// Reloads refused since start (a metric: the list on disk is not the one in force).
    failures: AtomicU64,
}

impl Revocations {
    /// Nothing revoked and no file: a process configured without a list.
    pub fn none() -> Arc<Self> {
        Arc::new(Self {
            path: None,
            generation: AtomicU64::new(0),
            current: RwLock::default(),
            text: RwLock::default(),
            failures: AtomicU64::new(0),
        })
    }

    /// Loads the list a process starts with; a missing or malformed file refuses the start.
    pub fn load(path: &Path) -> Result<Arc<Self>, RevocationError> {
        let this = Self {
            path: Some(path.to_owned()),
            generation: AtomicU64::new(0),
            current: RwLock::default(),
            text: RwLock::default(),
            failures: AtomicU64::new(0),
        };
        this.reload()?;
        Ok(Arc::new(this))
    }

    /// The generation of the list in force (see [`GenerationCache`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<RevocationList> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads the file again; an unreadable or malformed file leaves the list in force as it
    /// is. Returns whether the list changed.
    pub fn reload(&self) -> Result<bool, RevocationError> {
        let Some(path) = &self.path else { return Ok(false) };
        let error = |message: String| RevocationError { path: path.display().to_string(), message };
        // Whoever may write the list may un-revoke: like a certificate, others must not.
        crate::process::check_file_mode(path, false).map_err(|e| error(e.to_string()))?;
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        if *self.text.read().unwrap_or_else(|p| p.into_inner()) == text && self.generation() > 0 {
            return Ok(false);
        }
        let mut list = RevocationList::parse(&text).map_err(error)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        list.generation = current.generation + 1;
        let generation = list.generation;
        *current = Arc::new(list);
        *self.text.write().unwrap_or_else(|p| p.into_inner()) = text;
        drop(current);
        self.generation.store(generation, Ordering::Release);
        Ok(true)
    }
}

/// Reloads the list every `every` and on SIGHUP while the process runs.
pub async fn keep_reloading(revocations: Arc<Revocations>, every: std::time::Duration) {
    if revocations.path.is_none() {
        return;
    }
    let observed = Arc::clone(&revocations);
    crate::metrics::observe_u64(
        "domicile.revocation.reload_failures",
        "{reload}",
        "Revocation list reloads refused (unreadable or malformed file) since start",
        move |gauge| gauge.observe(observed.failures.load(Ordering::Relaxed), &[]),
    );
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut ticker = tokio::time::interval(every.max(std::time::Duration::from_millis(10)));
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = ticker.tick() => {}
            () = hup => {}
        }
        let this = Arc::clone(&revocations);
        match tokio::task::spawn_blocking(move || this.reload()).await {
            Ok(Ok(true)) => tracing::info!(generation = revocations.generation(), "revocation list reloaded"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                revocations.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "revocation list refused; the previous list stays in force");
            }
            Err(_) => tracing::error!("revocation reload task failed; the previous list stays in force"),
        }
    }
}

/// Past this many entries a cache starts over (it only saves work, so forgetting is harmless).
const CACHE_LIMIT: usize = 4096;

/// Per-credential results (who a certificate names, whether a token verifies, and whether the
/// list revokes either), remembered until the revocation list changes.
///
/// An entry is only ever inserted for the generation it was computed under, and the map is
/// emptied when a newer generation is seen, so a result computed against an old list can never
/// outlive a reload.
#[derive(Debug)]
pub struct GenerationCache<K, V> {
    inner: RwLock<(u64, HashMap<K, V>)>,
}

impl<K, V> Default for GenerationCache<K, V> {
    fn default() -> Self {
        Self { inner: RwLock::new((0, HashMap::new())) }
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> GenerationCache<K, V> {
    /// The cached value for `key` under the list in force, or `compute(list)`'s, remembered if
    /// `compute` says so (a result that depends on the time, say, is not).
    pub fn get_or_compute<Q>(
        &self,
        revocations: &Revocations,
        key: &Q,
        compute: impl FnOnce(&RevocationList) -> (V, bool),
    ) -> V
    where
        Q: std::hash::Hash + hashbrown::Equivalent<K> + ToOwned<Owned = K> + ?Sized,
    {
        let generation = revocations.generation();
        {
            let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
            if inner.0 == generation
                && let Some(value) = inner.1.get(key)
            {
                return value.clone();
            }
        }
        let list = revocations.current();
        let (value, remember) = compute(&list);
        if !remember {
            return value;
        }
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if inner.0 < list.generation {
            inner.0 = list.generation;
            inner.1.clear();
        }
        if inner.0 == list.generation {
            if inner.1.len() >= CACHE_LIMIT {
                inner.1.clear();
            }
            inner.1.insert(key.to_owned(), value.clone());
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use domicile_types::RegionId;

    use super::*;
    use crate::identity::Scope;
    use crate::pki::ClusterPki;

    fn der(path: &Path) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_file(path).unwrap().as_ref().to_vec()
    }

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn certificates_tokens_and_callers_are_revoked_and_a_bad_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::open_or_create(&dir.path().join("pki")).unwrap();
        let eu = RegionId::parse("eu-central").unwrap();
        let kiosk = CallerIdentity::new("kiosk", eu.clone(), &[Scope::Decide]).unwrap();
        let shop = CallerIdentity::new("shop", eu.clone(), &[Scope::Decide]).unwrap();
        let kiosk_cert = der(&pki.caller(&kiosk).unwrap().cert);
        let shop_cert = der(&pki.caller(&shop).unwrap().cert);
        let list_path = dir.path().join("revoked.toml");
        write(&list_path, "version = 1\n");
        let revocations = Revocations::load(&list_path).unwrap();
        assert!(!revocations.current().revokes_certificate(&kiosk_cert, Some(&kiosk)));

        // By fingerprint, as openssl prints it (upper case, colons).
        let digest = ring::digest::digest(&ring::digest::SHA256, &kiosk_cert);
        let openssl_style: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        write(&list_path, &format!("version = 1\n[[certificate]]\nsha256 = \"{}\"\n", openssl_style.join(":")));
        assert!(revocations.reload().unwrap());
        assert_eq!(revocations.generation(), 2);
        let list = revocations.current();
        assert!(list.revokes_certificate(&kiosk_cert, Some(&kiosk)));
        assert!(!list.revokes_certificate(&shop_cert, Some(&shop)));

        // A malformed list (every problem named) leaves the list in force.
        write(
            &list_path,
            "version = 2\n[[certificate]]\nsha256 = \"zz\"\n[[caller]]\nname = \"shop\"\nregion = \"eu-central\"\nissued_before = \"yesterday\"\n",
        );
        let refused = revocations.reload().unwrap_err().to_string();
        for problem in ["`version` is 2", "certificate[0].sha256", "caller[0].issued_before"] {
            assert!(refused.contains(problem), "{refused}");
        }
        assert_eq!(revocations.generation(), 2);
        assert!(revocations.current().revokes_certificate(&kiosk_cert, Some(&kiosk)));

        // By caller: credentials issued before the time, not after.
        write(
            &list_path,
            "version = 1\n[[caller]]\nname = \"shop\"\nregion = \"eu-central\"\nissued_before = \"2100-01-01T00:00:00Z\"\n[[token]]\nid = \"00112233445566778899AABBCCDDEEFF\"\n",
        );
        assert!(revocations.reload().unwrap());
        let list = revocations.current();
        assert!(list.revokes_certificate(&shop_cert, Some(&shop)));
        assert!(!list.revokes_certificate(&kiosk_cert, Some(&kiosk)), "the fingerprint entry is gone");
        assert!(list.revokes_token("aaaa", &shop, 1_000));
        assert!(!list.revokes_token("aaaa", &shop, 4_102_444_800), "issued after the cut-off");
        assert!(list.revokes_token("00112233445566778899aabbccddeeff", &kiosk, 1_000));
        assert!(!list.revokes_token("00112233445566778899aabbccddeefe", &kiosk, 1_000));
        // Unchanged text: no new generation.
        assert!(!revocations.reload().unwrap());
        // A deleted file is an error, never an empty list.
        std::fs::remove_file(&list_path).unwrap();
        assert!(revocations.reload().is_err());
        assert!(revocations.current().revokes_certificate(&shop_cert, Some(&shop)));
        assert!(Revocations::load(&list_path).is_err(), "a process does not start without its list");
    }

    #[test]
    fn a_cached_result_does_not_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked.toml");
        write(&path, "version = 1\n");
        let revocations = Revocations::load(&path).unwrap();
        let cache: GenerationCache<String, bool> = GenerationCache::default();
        let id = "00112233445566778899aabbccddeeff";
        let eu = RegionId::parse("eu-central").unwrap();
        let caller = CallerIdentity::new("kiosk", eu, &[Scope::Decide]).unwrap();
        let check = |list: &RevocationList| (list.revokes_token(id, &caller, 0), true);
        assert!(!cache.get_or_compute(&revocations, id, check));
        write(&path, &format!("version = 1\n[[token]]\nid = \"{id}\"\n"));
        revocations.reload().unwrap();
        assert!(cache.get_or_compute(&revocations, id, check));
        // Not recomputed while the list stays: the cached answer is served.
        assert!(cache.get_or_compute(&revocations, id, |_| (false, true)));
    }
}
