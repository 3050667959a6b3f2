//! Configuration as operators meet it: the built binary's exit code and messages for bad files,
//! environment overrides, and every config file shipped under deploy/.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers; clippy.toml only exempts the #[test] fns themselves"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use domicile_cli::topology::Topology;
use domicile_gateway::GatewayConfig;
use domicile_gateway::config::RegionEndpoint;
use domicile_node::NodeConfig;
use domicile_runtime::config::{EXIT_CONFIG, check, schema_of};
use domicile_runtime::packs::{TrustConfig, TrustedKeyFile};
use domicile_runtime::tls::TlsFiles;
use domicile_types::RegionId;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Runs the binary with no inherited `DOMICILE_*` overrides plus `env`.
fn domicile(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_domicile"));
    for (key, _) in std::env::vars() {
        if key.starts_with("DOMICILE_") {
            command.env_remove(key);
        }
    }
    command.args(args).envs(env.iter().copied()).current_dir(root()).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write_temp(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn node_with_two_mistakes_reports_both_and_exits_64() {
    let path = fixture("node-two-mistakes.toml");
    let out = domicile(&["node", "--config", path.to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{err}");
    assert!(err.contains("node-two-mistakes.toml"), "names the file: {err}");
    assert!(err.contains("`listen`: expected an `ip:port` socket address"), "{err}");
    assert!(err.contains("`packs_reload`: unknown key"), "{err}");
    assert!(err.contains("2 problems"), "{err}");
    // The bad value itself is not echoed.
    assert!(!err.contains("\"localhost\""), "{err}");
}

#[test]
fn gateway_with_mistakes_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("deploy/examples/gateway.toml")).unwrap();
    let text = text.replace("version = 1", "version = 2").replace("[tls]\n", "[tls]\nciphers = \"all\"\n");
    let path = write_temp(&dir, "gateway.toml", &text);
    let out = domicile(&["gateway", "--config", path.to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{err}");
    assert!(err.contains("`version`: unsupported value: expected 1"), "{err}");
    assert!(err.contains("`tls.ciphers`: unknown key"), "{err}");
}

#[test]
fn environment_overrides_apply_before_checking() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("node-two-mistakes.toml")).unwrap();
    // Only the unknown key left wrong: the environment fixes `listen`.
    let path = write_temp(&dir, "node.toml", &text);
    let out = domicile(&["node", "--config", path.to_str().unwrap()], &[("DOMICILE_NODE_LISTEN", "127.0.0.1:0")]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{err}");
    assert!(!err.contains("`listen`"), "{err}");
    assert!(err.contains("`packs_reload`: unknown key"), "{err}");

    // A sound file broken by the environment, nested with `__`.
    let good = root().join("deploy/examples/node-eu-central.toml");
    let out = domicile(
        &["node", "--config", good.to_str().unwrap()],
        &[("DOMICILE_NODE_PACKS_RELOAD_MS", "soon"), ("DOMICILE_NODE_TLS__CRL", "/x")],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{err}");
    assert!(err.contains("`packs_reload_ms`: expected a non-negative integer"), "{err}");
    assert!(err.contains("`tls.crl`: unknown key"), "{err}");

    // A sound configuration gets past loading (it then fails on the missing TLS files, not 64).
    let out = domicile(
        &["node", "--config", good.to_str().unwrap()],
        &[("DOMICILE_NODE_LISTEN", "127.0.0.1:0"), ("DOMICILE_NODE_PACKS_RELOAD_MS", "0")],
    );
    assert_ne!(out.status.code(), Some(EXIT_CONFIG), "{}", stderr(&out));
}

#[test]
fn gateway_schema_matches_the_struct() {
    let config = GatewayConfig {
        version: 1,
        listen: "127.0.0.1:50051".parse().unwrap(),
        packs_dir: "/p".into(),
        link_key_file: "/k".into(),
        tls: TlsFiles { ca: "ca".into(), cert: "c".into(), key: "k".into() },
        node_timeout_ms: 1,
        bulk_timeout_ms: 1,
        regions: vec![RegionEndpoint {
            id: RegionId::parse("eu-central").unwrap(),
            endpoint: "h:1".into(),
            replicas: Vec::new(),
        }],
        packs_trust: Some(TrustConfig {
            trusted_keys: vec![TrustedKeyFile { key_id: "a".into(), public_key_file: "a.pub".into() }],
            min_signatures: 1,
        }),
        packs_reload_ms: 10,
        otlp_endpoint: Some("http://127.0.0.1:4317".into()),
        otlp_metrics_interval_ms: Some(1_000),
        token_public_key_file: Some("token-signing.pub".into()),
        token_max_lifetime_secs: Some(3600),
        revocation_file: Some("revoked.toml".into()),
        revocation_reload_ms: 1_000,
        max_in_flight_per_caller: None,
    };
    let value = serde_json::to_value(&config).unwrap();
    assert_eq!(check(&value, &schema_of::<GatewayConfig>()), vec![]);
}

#[test]
fn gateway_reports_every_problem_then_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("deploy/examples/gateway.toml")).unwrap();
    let broken = text
        .replace("node_timeout_ms = 2000", "node_timeout_ms = \"fast\"\nretries = 3")
        .replace("endpoint = \"node.us-east.internal.example:7001\"", "endpoint = \"node.us-east.internal.example\"");
    let err = GatewayConfig::load(&write_temp(&dir, "broken.toml", &broken)).unwrap_err();
    let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["node_timeout_ms", "regions[1].endpoint", "retries"], "{err}");

    let dup = text.replace("id = \"us-east\"", "id = \"eu-central\"");
    let err = GatewayConfig::load(&write_temp(&dir, "dup.toml", &dup)).unwrap_err();
    let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["regions[1].id"], "{err}");
}

#[test]
fn topology_reports_every_problem() {
    let text = "version = 1\n[[region]]\nid = \"EU\"\n[[region]]\nid = \"us-east\"\nzone = \"a\"\n";
    let err = Topology::parse_named("t.toml", text).unwrap_err();
    let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["region[0].id", "region[1].zone"], "{err}");
}

fn config_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            config_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
}

/// Every TOML file under deploy/ is a node, gateway or topology config or a revocation list and
/// must load. Kubernetes
/// ConfigMaps are generated from these files (deploy/k8s/kustomization.yaml), so they are covered.
#[test]
fn every_config_under_deploy_loads() {
    let mut files = Vec::new();
    config_files(&root().join("deploy"), &mut files);
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("topology") {
            Topology::load(Some(path)).unwrap_or_else(|e| panic!("{e:#}"));
        } else if name.starts_with("node") {
            NodeConfig::load(path).unwrap_or_else(|e| panic!("{e}"));
        } else if name.starts_with("gateway") {
            GatewayConfig::load(path).unwrap_or_else(|e| panic!("{e}"));
        } else if name.starts_with("revoked") {
            let text = std::fs::read_to_string(path).unwrap();
            domicile_runtime::revocation::RevocationList::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        } else {
            panic!("{}: not a known kind of config (name it node-*, gateway*, topology* or revoked*)", path.display());
        }
    }
    let six = Topology::load(Some(&root().join("deploy/local/topology-6.toml"))).unwrap();
    let ids: Vec<String> = six.region_ids().iter().map(ToString::to_string).collect();
    assert_eq!(ids, ["eu-central", "us-east", "sa-east", "ap-south", "cn-north", "ru-central"]);
}

/// The Kubernetes base uses every region config it ships, pins each region's StatefulSet to that
/// region, and the gateway config names exactly those regions.
#[test]
fn k8s_manifests_match_their_configs() {
    let k8s = root().join("deploy/k8s");
    let kustomization = std::fs::read_to_string(k8s.join("kustomization.yaml")).unwrap();
    let gateway = GatewayConfig::load(&k8s.join("config/gateway.toml")).unwrap();
    // The revocation list every process of the base reads parses as one.
    assert_eq!(gateway.revocation_file.as_deref(), Some(std::path::Path::new("/etc/domicile/config/revoked.toml")));
    let revoked = std::fs::read_to_string(k8s.join("config/revoked.toml")).unwrap();
    domicile_runtime::revocation::RevocationList::parse(&revoked).unwrap();
    let mut regions = Vec::new();
    for entry in std::fs::read_dir(k8s.join("config")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(kustomization.contains(&format!("config/{name}")), "{name} not in kustomization.yaml");
        let Some(region) = name.strip_prefix("node-").and_then(|n| n.strip_suffix(".toml")) else { continue };
        let config = NodeConfig::load(&k8s.join("config").join(&name)).unwrap();
        assert_eq!(config.region.as_str(), region);
        let manifest = std::fs::read_to_string(k8s.join(format!("node-{region}.yaml"))).unwrap();
        assert!(manifest.contains(&format!("values: [{region}]")), "node-{region}.yaml not pinned to its region");
        assert!(manifest.contains(&format!("--server-name={region}.node.domicile.internal")));
        assert!(kustomization.contains(&format!("node-{region}.yaml")));
        regions.push(region.to_owned());
    }
    regions.sort();
    let mut gateway_regions: Vec<String> = gateway.regions.iter().map(|r| r.id.to_string()).collect();
    gateway_regions.sort();
    assert_eq!(regions, gateway_regions);
}
