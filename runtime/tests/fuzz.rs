//! Fuzz targets of the runtime's parsers of outside input: caller tokens, revocation lists,
//! caller identity URIs and configuration files. Corpora in `tests/fuzz-corpus/`; the engine and
//! how to run longer are in `tools/fuzz/engine.rs` and FUZZING.md.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "fuzz harness: a failed check fails the test"
)]

#[path = "../../tools/fuzz/engine.rs"]
mod engine;

use std::path::Path;

use domicile_runtime::config::{ConfigError, RegionEndpoint, SocketAddrText};
use domicile_runtime::identity::{CallerIdentity, Scope};
use domicile_runtime::packs::TrustConfig;
use domicile_runtime::revocation::RevocationList;
use domicile_runtime::tls::TlsFiles;
use domicile_runtime::token::{TokenIssuer, TokenVerifier};
use domicile_types::RegionId;
use engine::{ensure, text};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    engine::corpus(&engine::corpus_dir(env!("CARGO_MANIFEST_DIR"), target))
}

fn fuzz_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus")
}

/// When the corpus tokens were issued, and a moment they are all valid.
const ISSUED_AT: i64 = 1_800_000_000;
const NOW: i64 = ISSUED_AT + 100;

/// The public half of the key the corpus tokens were signed with (the private half was thrown
/// away: `write_token_corpus` makes a new pair).
fn corpus_verifier() -> TokenVerifier {
    TokenVerifier::from_hex(&std::fs::read_to_string(fuzz_dir().join("token-signing.pub")).unwrap()).unwrap()
}

/// A token that verifies is one the issuer wrote, byte for byte: every mutation of a corpus
/// token fails, and whatever verifies names a valid caller within the verifier's bounds.
#[test]
fn fuzz_token() {
    let seeds = corpus("token");
    let verifier = corpus_verifier();
    // Issued tokens verify; regression files (mutations that once verified) do not.
    let issued: Vec<&[u8]> =
        seeds.iter().filter(|(name, _)| !name.starts_with("regression-")).map(|(_, t)| t.as_slice()).collect();
    for (name, token) in &seeds {
        let verifies = verifier.verify(&text(token), NOW).is_ok();
        assert_eq!(verifies, !name.starts_with("regression-"), "corpus token {name}");
    }
    engine::run("token", &seeds, |bytes| {
        let token = text(bytes);
        match verifier.verify(&token, NOW) {
            Ok(verified) => {
                ensure(issued.contains(&bytes), || format!("a token no issuer wrote verifies: {verified:?}"))?;
                ensure(verified.issued_at <= NOW + 60 && verified.expires_at > NOW, || "outside its lifetime".into())?;
                let uri = verified.caller.to_uri();
                ensure(CallerIdentity::parse_uri(&uri).as_ref() == Ok(&verified.caller), || {
                    format!("caller {uri} does not parse back")
                })
            }
            Err(e) => ensure(!e.to_string().contains(&*token) || token.len() < 8, || "error echoes the token".into()),
        }
    });
}

/// Regenerates the token corpus with a fresh key pair (the private key is not kept):
/// `cargo test -p domicile-runtime --test fuzz write_token_corpus -- --ignored`.
#[test]
#[ignore = "rewrites tests/fuzz-corpus/token; run by hand"]
fn write_token_corpus() {
    let pki = tempfile::tempdir().unwrap();
    let issuer = TokenIssuer::open_or_create(pki.path()).unwrap();
    std::fs::copy(pki.path().join("token-signing.pub"), fuzz_dir().join("token-signing.pub")).unwrap();
    let region = |r: &str| RegionId::parse(r).unwrap();
    let callers = [
        ("kiosk", CallerIdentity::new("kiosk", region("eu-central"), &[Scope::Decide]).unwrap()),
        (
            "connector",
            CallerIdentity::new("crm-connector", region("us-east"), &[Scope::Capture, Scope::Context]).unwrap(),
        ),
        ("admin", CallerIdentity::new("ops", region("sa-east"), &Scope::ALL).unwrap()),
        ("no-scopes", CallerIdentity::new("a", region("eu-central"), &[]).unwrap()),
    ];
    for (name, caller) in callers {
        let issued = issuer.issue(&caller, ISSUED_AT, ISSUED_AT + 3600).unwrap();
        std::fs::write(fuzz_dir().join("token").join(name), issued.token).unwrap();
    }
}

/// Revocation lists: whatever parses revokes every token id and caller it lists.
#[test]
fn fuzz_revocation() {
    engine::run("revocation", &corpus("revocation"), |bytes| {
        let text = text(bytes);
        let Ok(list) = RevocationList::parse(&text) else { return Ok(()) };
        let Ok(file) = toml::from_str::<toml::Table>(&text) else {
            return Err("a list toml refuses was accepted".into());
        };
        let anyone = CallerIdentity::new("anyone", RegionId::parse("eu-central").unwrap(), &[]).unwrap();
        let entries = |key: &str| file.get(key).and_then(toml::Value::as_array).cloned().unwrap_or_default();
        for token in entries("token") {
            let id = token.get("id").and_then(toml::Value::as_str).unwrap_or_default().trim().to_ascii_lowercase();
            ensure(list.revokes_token(&id, &anyone, 0), || format!("token {id} is listed but not revoked"))?;
        }
        for caller in entries("caller") {
            let field = |k: &str| caller.get(k).and_then(toml::Value::as_str).unwrap_or_default().to_owned();
            let (Ok(region), name) = (RegionId::parse(&field("region")), field("name")) else { continue };
            let Ok(identity) = CallerIdentity::new(&name, region, &[]) else { continue };
            ensure(list.revokes_token(&"0".repeat(32), &identity, i64::MIN), || format!("caller {name} not revoked"))?;
        }
        ensure(
            list.is_empty()
                == (entries("token").is_empty() && entries("caller").is_empty() && entries("certificate").is_empty()),
            || "is_empty disagrees with the entries".into(),
        )
    });
}

/// Caller URIs: what parses prints as a URI that parses to the same caller.
#[test]
fn fuzz_caller_uri() {
    engine::run("caller_uri", &corpus("caller_uri"), |bytes| {
        let uri = text(bytes);
        match CallerIdentity::parse_uri(&uri) {
            Ok(caller) => {
                let again = caller.to_uri();
                ensure(CallerIdentity::parse_uri(&again).as_ref() == Ok(&caller), || {
                    format!("{uri:?} reads as {again:?}, which does not read back")
                })
            }
            Err(_) => Ok(()),
        }
    });
}

/// The gateway's configuration shape (gateway/src/config.rs, which depends on this crate), with
/// a node's store section: what the generic loader is fuzzed with.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "read by the loader only")]
struct Shape {
    #[schemars(range(min = 1, max = 1))]
    version: u32,
    #[schemars(with = "SocketAddrText")]
    listen: std::net::SocketAddr,
    packs_dir: std::path::PathBuf,
    link_key_file: std::path::PathBuf,
    tls: TlsFiles,
    #[serde(default)]
    node_timeout_ms: u64,
    #[schemars(length(min = 1))]
    regions: Vec<RegionEndpoint>,
    #[serde(default)]
    packs_trust: Option<TrustConfig>,
    #[serde(default)]
    packs_reload_ms: u64,
    #[serde(default)]
    otlp_endpoint: Option<String>,
    #[serde(default)]
    otlp_metrics_interval_ms: Option<u64>,
    #[serde(default)]
    token_public_key_file: Option<std::path::PathBuf>,
    #[serde(default)]
    token_max_lifetime_secs: Option<u32>,
    #[serde(default)]
    revocation_file: Option<std::path::PathBuf>,
    #[serde(default)]
    revocation_reload_ms: u64,
    #[serde(default)]
    store: Option<Store>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "read by the loader only")]
struct Store {
    kind: String,
    url: String,
    #[serde(default)]
    password_file: Option<String>,
    #[serde(default)]
    pool_size: Option<u32>,
}

/// A credential the corpus configs carry in URLs; no error may repeat it.
const SECRET: &str = "s3cr3t-Zq9x";

fn config_error(text: &str) -> Option<ConfigError> {
    domicile_runtime::config::parse::<Shape>("fuzz.toml", text).err()
}

/// Configuration text: loaded, or refused with issues that never repeat the secret in it.
#[test]
fn fuzz_config() {
    engine::run("config", &corpus("config"), |bytes| {
        let text = text(bytes);
        match config_error(&text) {
            None => Ok(()),
            Some(err) => {
                let shown = err.to_string();
                ensure(!err.issues.is_empty(), || "an error without issues".into())?;
                ensure(!text.contains(SECRET) || !shown.contains(SECRET), || {
                    format!("error echoes the secret: {shown}")
                })
            }
        }
    });
}

/// Findings, each pinned by its minimised input (also in the corpus as `regression-*`).
#[test]
fn regressions() {
    let read = |target: &str, name: &str| std::fs::read_to_string(fuzz_dir().join(target).join(name)).unwrap();
    // An issued token with one hex digit of its signature in upper case verified: a second
    // spelling of the same token. Only the issuer's lower-case spelling verifies now.
    let token = read("token", "regression-uppercase-hex");
    assert_eq!(corpus_verifier().verify(&token, NOW).unwrap_err(), domicile_runtime::token::TokenError::Malformed);
    assert!(corpus_verifier().verify(&token.to_ascii_lowercase(), NOW).is_ok());
    // A syntax error on a line holding a credential quoted that line in the error.
    let err = config_error(&read("config", "regression-syntax-error-quotes-secret")).unwrap();
    let shown = err.to_string();
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("line 11, column 8"), "the location stays: {shown}");
}
