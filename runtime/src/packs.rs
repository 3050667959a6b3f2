//! Reads a pack directory (`<dir>/<pack>/pack.toml`, the generated holiday calendars
//! `<dir>/<pack>/holidays.toml`, `<dir>/<pack>/tests/*.toml`, `<dir>/SIGNATURES.toml`) into sources
//! for the pure policy compiler, verifies signatures when configured, and keeps the last good set
//! across reloads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use domicile_policy::signing::{self, SIGNATURES_FILE, SignatureError, TrustedKey, VerifiedSet};
use domicile_policy::{Diagnostic, HOLIDAYS_FILE, PackSet, PackSource};

#[derive(Debug, thiserror::Error)]
pub enum PackLoadError {
    #[error("cannot read pack directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no packs found under {0}")]
    Empty(PathBuf),
    #[error("invalid packs:\n{0}")]
    Invalid(domicile_policy::Diagnostics),
    #[error("pack set refused: {0}")]
    Signature(#[from] SignatureError),
    #[error("invalid trusted key {key_id}: {reason}")]
    TrustedKey { key_id: String, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackLoadError + use<> {
    let path = path.to_owned();
    move |source| PackLoadError::Io { path, source }
}

/// Every `<dir>/*/pack.toml`, and beside each the holiday calendar `holidays.toml` if there is
/// one, sorted by path so diagnostics come out in a stable order. The compiler tells the two
/// kinds apart by file name ([`PackSource::is_holiday_calendar`]).
pub fn read_sources(dir: &Path) -> Result<Vec<PackSource>, PackLoadError> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let candidate = entry.path().join("pack.toml");
        if candidate.is_file() {
            paths.push(candidate);
            let calendar = entry.path().join(HOLIDAYS_FILE);
            if calendar.is_file() {
                paths.push(calendar);
            }
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(PackLoadError::Empty(dir.to_owned()));
    }
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            Ok(PackSource { path: path.display().to_string(), text })
        })
        .collect()
}

/// Reads and compiles every pack under `dir`; all problems are reported together.
pub fn load_dir(dir: &Path) -> Result<(PackSet, Vec<Diagnostic>), PackLoadError> {
    let sources = read_sources(dir)?;
    PackSet::compile(&sources).map_err(PackLoadError::Invalid)
}

/// The test files beside a pack: `<pack dir>/tests/*.toml`, sorted.
pub fn read_test_sources(pack_path: &Path) -> Result<Vec<PackSource>, PackLoadError> {
    let Some(tests_dir) = pack_path.parent().map(|p| p.join("tests")) else { return Ok(Vec::new()) };
    if !tests_dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(&tests_dir).map_err(io(&tests_dir))? {
        let path = entry.map_err(io(&tests_dir))?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            Ok(PackSource { path: path.display().to_string(), text })
        })
        .collect()
}

/// Every file a signature covers: each pack, its holiday calendar and its tests, with paths
/// relative to `dir` (`de/pack.toml`, `fr/holidays.toml`, `de/tests/marketing.toml`), sorted.
pub fn read_set_files(dir: &Path) -> Result<Vec<PackSource>, PackLoadError> {
    let mut out = Vec::new();
    for source in read_sources(dir)? {
        let full = PathBuf::from(&source.path);
        let is_pack = !source.is_holiday_calendar();
        let mut files = vec![source];
        if is_pack {
            files.extend(read_test_sources(&full)?);
        }
        for mut file in files {
            let relative = Path::new(&file.path).strip_prefix(dir).map(Path::to_path_buf).unwrap_or_default();
            file.path = relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            out.push(file);
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The signature file of a set, if there is one.
pub fn read_signatures(dir: &Path) -> Result<Option<String>, PackLoadError> {
    let path = dir.join(SIGNATURES_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

/// A public key allowed to sign pack sets, as configured: an id and a file holding the hex of
/// the raw 32-byte Ed25519 public key (as written by `domicile packs keygen`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustedKeyFile {
    pub key_id: String,
    pub public_key_file: PathBuf,
}

/// Signature policy for loading packs. Without one, sets load unsigned (development).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    pub trusted_keys: Vec<TrustedKeyFile>,
    /// Distinct trusted keys that must have signed (e.g. 2: legal and release engineering).
    pub min_signatures: usize,
}

impl TrustConfig {
    /// Reads every configured public key.
    pub fn keys(&self) -> Result<Vec<TrustedKey>, PackLoadError> {
        self.trusted_keys
            .iter()
            .map(|k| {
                let bad = |reason: String| PackLoadError::TrustedKey { key_id: k.key_id.clone(), reason };
                let text = std::fs::read_to_string(&k.public_key_file).map_err(|e| bad(e.to_string()))?;
                let public_key = crate::token::ed25519_public_key(&text).map_err(|e| bad(e.to_owned()))?;
                Ok(TrustedKey { key_id: k.key_id.clone(), public_key })
            })
            .collect()
    }
}

/// A compiled set with what was established about it.
#[derive(Debug, Clone)]
pub struct LoadedPacks {
    pub packs: PackSet,
    pub warnings: Vec<Diagnostic>,
    /// Content hash of the files (whether or not signatures were checked), for logs and health.
    pub content_hash: String,
    /// Trusted key ids whose signatures verified; empty when signatures were not required.
    pub signed_by: Vec<String>,
}

/// Reads `dir`, verifies its signatures when `trust` is given (before compiling anything), and
/// compiles it. Refuses an unsigned or tampered set when `trust` is given.
pub fn load_dir_verified(dir: &Path, trust: Option<&TrustConfig>) -> Result<LoadedPacks, PackLoadError> {
    let files = read_set_files(dir)?;
    let (content_hash, signed_by) = match trust {
        Some(trust) => {
            let keys = trust.keys()?;
            let signatures = read_signatures(dir)?;
            let VerifiedSet { content_hash, signed_by } =
                signing::verify(&files, signatures.as_deref(), &keys, trust.min_signatures)?;
            (content_hash, signed_by)
        }
        None => (signing::Manifest::of(&files).content_hash, Vec::new()),
    };
    // Compile from the very bytes that were verified (packs and holiday calendars, not tests),
    // named as on disk for diagnostics.
    let sources: Vec<PackSource> = files
        .into_iter()
        .filter(|f| f.path.ends_with("/pack.toml") || f.is_holiday_calendar())
        .map(|f| PackSource { path: dir.join(&f.path).display().to_string(), text: f.text })
        .collect();
    let (packs, warnings) = PackSet::compile(&sources).map_err(PackLoadError::Invalid)?;
    Ok(LoadedPacks { packs, warnings, content_hash, signed_by })
}

/// The packs a process serves, reloadable without restart. A reload that fails (unreadable,
/// invalid, unsigned, tampered) keeps the last good set and records why.
#[derive(Debug)]
pub struct PackReloader {
    dir: PathBuf,
    trust: Option<TrustConfig>,
    current: RwLock<Arc<LoadedPacks>>,
    last_error: RwLock<Option<String>>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new set is serving (its content hash).
    Replaced(String),
    /// The files have not changed; nothing was swapped.
    Unchanged,
}

impl PackReloader {
    /// Loads the first set; fails if it cannot (a process must not start without packs).
    pub fn new(dir: PathBuf, trust: Option<TrustConfig>) -> Result<Self, PackLoadError> {
        let loaded = load_dir_verified(&dir, trust.as_ref())?;
        Ok(Self { dir, trust, current: RwLock::new(Arc::new(loaded)), last_error: RwLock::new(None) })
    }

    /// The set serving now; requests keep the snapshot they took.
    pub fn current(&self) -> Arc<LoadedPacks> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Why the last reload was refused, if it was.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.read().map_or_else(|p| p.into_inner().clone(), |g| g.clone())
    }

    /// Loads the directory again; on success swaps the set in, on failure keeps the current one.
    pub fn reload(&self) -> Result<ReloadOutcome, PackLoadError> {
        // Polling runs every few seconds: when the files are exactly the serving set, skip the
        // signature check and the compile. (The serving set was verified when it was loaded.)
        if let Ok(files) = read_set_files(&self.dir)
            && signing::Manifest::of(&files).content_hash == self.current().content_hash
        {
            *self.last_error.write().unwrap_or_else(|p| p.into_inner()) = None;
            return Ok(ReloadOutcome::Unchanged);
        }
        let result = load_dir_verified(&self.dir, self.trust.as_ref());
        let mut last_error = self.last_error.write().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(loaded) => {
                *last_error = None;
                if loaded.content_hash == self.current().content_hash {
                    return Ok(ReloadOutcome::Unchanged);
                }
                let hash = loaded.content_hash.clone();
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
                Ok(ReloadOutcome::Replaced(hash))
            }
            Err(e) => {
                *last_error = Some(e.to_string());
                Err(e)
            }
        }
    }
}

/// Writes a new Ed25519 key: the PKCS#8 private key (hex) to `private_path` with mode 0600,
/// and the raw public key (hex) to `public_path`. Refuses to overwrite an existing key.
pub fn generate_key(private_path: &Path, public_path: &Path) -> Result<String, PackLoadError> {
    use std::io::Write;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| PackLoadError::TrustedKey { key_id: String::new(), reason: "key generation failed".into() })?;
    let public = signing::public_key(pkcs8.as_ref())?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(private_path).map_err(io(private_path))?;
    file.write_all(hex::encode(pkcs8.as_ref()).as_bytes()).map_err(io(private_path))?;
    let public_hex = hex::encode(public);
    std::fs::write(public_path, format!("{public_hex}\n")).map_err(io(public_path))?;
    Ok(public_hex)
}

/// Reads a private key written by [`generate_key`].
pub fn read_private_key(path: &Path) -> Result<Vec<u8>, PackLoadError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    hex::decode(text.trim()).map_err(|_| PackLoadError::TrustedKey {
        key_id: String::new(),
        reason: format!("{} is not a hex-encoded PKCS#8 key", path.display()),
    })
}

/// Signs the set under `dir` with one key, writing or updating `<dir>/SIGNATURES.toml`.
pub fn sign_dir(dir: &Path, key_id: &str, private_key: &Path) -> Result<String, PackLoadError> {
    let files = read_set_files(dir)?;
    let existing = read_signatures(dir)?;
    let pkcs8 = read_private_key(private_key)?;
    let text = signing::sign(&files, existing.as_deref(), key_id, &pkcs8)?;
    let path = dir.join(SIGNATURES_FILE);
    std::fs::write(&path, text).map_err(io(&path))?;
    Ok(signing::Manifest::of(&files).content_hash)
}

/// Reloads the pack set every `every` (if non-zero) and on SIGHUP, for as long as the process
/// runs. A refused set is logged with the reason and the previous set keeps serving.
pub async fn keep_reloading(reloader: Arc<PackReloader>, every: std::time::Duration) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut ticker = (!every.is_zero()).then(|| tokio::time::interval(every));
    loop {
        let tick = async {
            match ticker.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<()>();
        tokio::select! {
            () = tick => {}
            () = hup => tracing::info!("SIGHUP: reloading policy packs"),
        }
        let reloader = Arc::clone(&reloader);
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(Ok(ReloadOutcome::Replaced(hash))) => tracing::info!(content_hash = %hash, "policy packs reloaded"),
            Ok(Ok(ReloadOutcome::Unchanged)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "policy pack reload refused; the previous set keeps serving"),
            Err(_) => tracing::error!("policy pack reload task failed; the previous set keeps serving"),
        }
    }
}

/// Loads the pack set a server starts with, logs its warnings, and keeps it current in the
/// background (polling every `reload_ms`, and on SIGHUP). Fails if the first set cannot load.
pub fn start_packs(
    dir: &Path,
    trust: Option<&TrustConfig>,
    reload_ms: u64,
) -> Result<Arc<PackReloader>, PackLoadError> {
    let packs = Arc::new(PackReloader::new(dir.to_owned(), trust.cloned())?);
    for warning in &packs.current().warnings {
        tracing::warn!(%warning, "policy pack warning");
    }
    tokio::spawn(keep_reloading(Arc::clone(&packs), std::time::Duration::from_millis(reload_ms)));
    Ok(packs)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const PACK: &str = "schema = 1\n[pack]\nid = \"de\"\njurisdiction = \"DE\"\nversion = \"1\"\ntitle = \"t\"\n\
        [rights]\ndeadline = \"1 month\"\ncite = \"c\"\n[residency]\nhome_regions = [\"eu-central\"]\nlocalisation = \"none\"\ncite = \"c\"\n\
        [[rule]]\nid = \"de.m\"\npurpose = \"marketing\"\nchannels = [\"email\"]\nbasis = \"opt_in\"\ncite = \"c\"\nconfidence = \"P\"\n";

    fn write_set(dir: &Path, version: &str) {
        std::fs::create_dir_all(dir.join("de/tests")).unwrap();
        std::fs::write(dir.join("de/pack.toml"), PACK.replace("version = \"1\"", &format!("version = \"{version}\"")))
            .unwrap();
        std::fs::write(
            dir.join("de/tests/t.toml"),
            "[[case]]\nname = \"n\"\npurpose = \"marketing\"\nchannel = \"email\"\nat_unix = 0\nexpect = \"deny\"\n",
        )
        .unwrap();
    }

    #[test]
    fn a_tampered_signed_set_is_refused_and_the_previous_set_keeps_serving() {
        let tmp = tempfile::tempdir().unwrap();
        let (set, keys) = (tmp.path().join("packs"), tmp.path().join("keys"));
        std::fs::create_dir_all(&keys).unwrap();
        write_set(&set, "1");
        generate_key(&keys.join("legal.key"), &keys.join("legal.pub")).unwrap();
        let trust = TrustConfig {
            trusted_keys: vec![TrustedKeyFile { key_id: "legal".into(), public_key_file: keys.join("legal.pub") }],
            min_signatures: 1,
        };
        // Unsigned: refused when signatures are required, loads when they are not.
        assert!(matches!(
            load_dir_verified(&set, Some(&trust)),
            Err(PackLoadError::Signature(SignatureError::Unsigned))
        ));
        assert!(load_dir_verified(&set, None).is_ok());

        sign_dir(&set, "legal", &keys.join("legal.key")).unwrap();
        let reloader = PackReloader::new(set.clone(), Some(trust.clone())).unwrap();
        assert_eq!(reloader.current().signed_by, ["legal"]);
        assert_eq!(reloader.current().packs.get_by_id("de").unwrap().version(), "1");

        // Tamper: a new version without a new signature.
        write_set(&set, "2");
        let err = reloader.reload().unwrap_err();
        assert!(
            matches!(err, PackLoadError::Signature(SignatureError::FileChanged(ref p)) if p == "de/pack.toml"),
            "{err}"
        );
        assert_eq!(reloader.current().packs.get_by_id("de").unwrap().version(), "1", "last good set keeps serving");
        assert!(reloader.last_error().unwrap().contains("changed after signing: de/pack.toml"));

        // Signed again: the reload takes it.
        sign_dir(&set, "legal", &keys.join("legal.key")).unwrap();
        assert!(matches!(reloader.reload().unwrap(), ReloadOutcome::Replaced(_)));
        assert_eq!(reloader.current().packs.get_by_id("de").unwrap().version(), "2");
        assert_eq!(reloader.last_error(), None);
        assert_eq!(reloader.reload().unwrap(), ReloadOutcome::Unchanged);

        // A signed but invalid set is refused too, and the old one stays.
        std::fs::write(set.join("de/pack.toml"), "schema = 1\n[pack]\n").unwrap();
        sign_dir(&set, "legal", &keys.join("legal.key")).unwrap();
        assert!(matches!(reloader.reload(), Err(PackLoadError::Invalid(_))));
        assert_eq!(reloader.current().packs.get_by_id("de").unwrap().version(), "2");

        // An extra file is tampering as well.
        write_set(&set, "2");
        sign_dir(&set, "legal", &keys.join("legal.key")).unwrap();
        std::fs::write(set.join("de/tests/extra.toml"), "").unwrap();
        assert!(matches!(reloader.reload(), Err(PackLoadError::Signature(SignatureError::FileAdded(_)))));
        assert!(generate_key(&keys.join("legal.key"), &keys.join("other.pub")).is_err(), "never overwrites a key");
    }
}

#[cfg(test)]
mod holiday_tests;
