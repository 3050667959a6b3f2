//! Loading versioned TOML configuration with environment overrides, reporting every problem at
//! once.
//!
//! `DOMICILE_NODE_LISTEN=127.0.0.1:0` overrides `listen` in a node file; `__` separates nesting
//! levels so snake_case keys survive (`DOMICILE_NODE_TLS__CA`).
//!
//! serde stops at the first error, so before deserialising, the merged file + environment is
//! walked against a [`Table`] schema that collects unknown keys, missing required keys, wrong
//! types and unparsable values, each with its key path. The final serde pass (types use
//! `deny_unknown_fields`) stays as a backstop should a schema drift from its struct.

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;

/// One problem in a configuration: the key path (`tls.cert`, `regions[1].id`) and what is wrong.
/// Messages describe the expected shape and never repeat the configured value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() { write!(f, "{}", self.message) } else { write!(f, "`{}`: {}", self.key, self.message) }
    }
}

/// Every problem found in one configuration file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub path: String,
    pub issues: Vec<ConfigIssue>,
}

impl ConfigError {
    pub fn single(path: &str, key: &str, message: impl Into<String>) -> Self {
        Self { path: path.to_owned(), issues: vec![ConfigIssue { key: key.to_owned(), message: message.into() }] }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.issues.as_slice() {
            [one] => write!(f, "configuration {}: {one}", self.path),
            issues => {
                write!(f, "configuration {}: {} problems", self.path, issues.len())?;
                for issue in issues {
                    write!(f, "\n  {}: {issue}", self.path)?;
                }
                Ok(())
            }
        }
    }
}

/// Process exit code for a bad configuration (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// Checks a text value; the error describes what was expected, without the value.
pub type TextCheck = fn(&str) -> Result<(), String>;

/// The expected shape of a value.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Any scalar, read as text (environment values may arrive as numbers).
    Text,
    /// Text that must pass a check, e.g. an address or a region id.
    Checked(TextCheck),
    /// A non-negative integer, optionally equal to a fixed value (format versions).
    Unsigned {
        exactly: Option<u64>,
    },
    Table(&'static Table),
    /// An array whose items all have one shape, with at least `min_len` items.
    Array {
        item: &'static Kind,
        min_len: usize,
    },
}

/// One allowed key of a table.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub required: bool,
    pub kind: Kind,
}

/// The allowed keys of a table; any other key is an error.
#[derive(Debug)]
pub struct Table {
    pub fields: &'static [Field],
}

pub const fn required(name: &'static str, kind: Kind) -> Field {
    Field { name, required: true, kind }
}

pub const fn optional(name: &'static str, kind: Kind) -> Field {
    Field { name, required: false, kind }
}

/// `version = 1`, the only format version so far.
pub const VERSION_1: Field = required("version", Kind::Unsigned { exactly: Some(1) });

fn check_socket_addr(text: &str) -> Result<(), String> {
    text.parse::<std::net::SocketAddr>().map(|_| ()).map_err(|_| "expected an `ip:port` socket address".to_owned())
}

fn check_region(text: &str) -> Result<(), String> {
    domicile_types::RegionId::parse(text)
        .map(|_| ())
        .map_err(|_| "expected a region id (lowercase letters, digits and `-`, e.g. `eu-central`)".to_owned())
}

fn check_host_port(text: &str) -> Result<(), String> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err("expected `host:port`".to_owned()),
    }
}

pub const SOCKET_ADDR: Kind = Kind::Checked(check_socket_addr);
pub const REGION: Kind = Kind::Checked(check_region);
pub const HOST_PORT: Kind = Kind::Checked(check_host_port);
pub const UNSIGNED: Kind = Kind::Unsigned { exactly: None };

/// One region of a deployment and where its node listens (gateways route to it; nodes claim
/// identifiers at it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegionEndpoint {
    pub id: domicile_types::RegionId,
    /// `host:port` of the region's node.
    pub endpoint: String,
}

/// [`RegionEndpoint`].
pub static REGION_ENDPOINT_TABLE: Table = Table { fields: &[required("id", REGION), required("endpoint", HOST_PORT)] };

/// Issues for regions listed twice in `regions` (at key `path[i].id`).
pub fn duplicate_regions(path: &str, regions: &[RegionEndpoint]) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    for (i, region) in regions.iter().enumerate() {
        if regions[..i].iter().any(|r| r.id == region.id) {
            issues.push(ConfigIssue { key: format!("{path}[{i}].id"), message: "region listed twice".to_owned() });
        }
    }
    issues
}

/// [`crate::tls::TlsFiles`].
pub static TLS_TABLE: Table =
    Table { fields: &[required("ca", Kind::Text), required("cert", Kind::Text), required("key", Kind::Text)] };

static TRUSTED_KEY_TABLE: Table =
    Table { fields: &[required("key_id", Kind::Text), required("public_key_file", Kind::Text)] };

/// [`crate::packs::TrustConfig`].
pub static TRUST_TABLE: Table = Table {
    fields: &[
        required("trusted_keys", Kind::Array { item: &Kind::Table(&TRUSTED_KEY_TABLE), min_len: 0 }),
        required("min_signatures", UNSIGNED),
    ],
};

/// Reads `path` (TOML), applies `<env_prefix>_…` overrides, checks the result against `schema`
/// (every problem at once), then deserialises into `T`.
pub fn load<T: DeserializeOwned>(path: &Path, env_prefix: &str, schema: &Table) -> Result<T, ConfigError> {
    let origin = path.display().to_string();
    let builder = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml).required(true))
        .add_source(
            config::Environment::with_prefix(env_prefix).prefix_separator("_").separator("__").try_parsing(true),
        );
    check_and_build(&origin, builder, schema)
}

/// Like [`load`] for TOML text that is not a file on disk (built-in defaults), without
/// environment overrides; `origin` names it in errors.
pub fn parse<T: DeserializeOwned>(origin: &str, text: &str, schema: &Table) -> Result<T, ConfigError> {
    let builder = config::Config::builder().add_source(config::File::from_str(text, config::FileFormat::Toml));
    check_and_build(origin, builder, schema)
}

fn check_and_build<T: DeserializeOwned>(
    origin: &str,
    builder: config::ConfigBuilder<config::builder::DefaultState>,
    schema: &Table,
) -> Result<T, ConfigError> {
    // A syntax error or unreadable file leaves nothing to walk: it is the one problem.
    let merged = builder.build().map_err(|e| ConfigError::single(origin, "", e.to_string()))?;
    let value: Value = merged.clone().try_deserialize().map_err(|e| ConfigError::single(origin, "", e.to_string()))?;
    let issues = check(&value, schema);
    if !issues.is_empty() {
        return Err(ConfigError { path: origin.to_owned(), issues });
    }
    // config's own deserialiser reads env numbers into text fields, which serde_json would not.
    merged.try_deserialize::<T>().map_err(|e| ConfigError::single(origin, "", e.to_string()))
}

/// Every problem of `value` against `schema`, in key order of the schema then the file.
pub fn check(value: &Value, schema: &Table) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    check_table(value, schema, "", &mut issues);
    issues
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

fn check_table(value: &Value, table: &Table, prefix: &str, issues: &mut Vec<ConfigIssue>) {
    let Value::Object(map) = value else {
        issues.push(ConfigIssue {
            key: prefix.to_owned(),
            message: format!("expected a table, found {}", type_name(value)),
        });
        return;
    };
    for field in table.fields {
        let key = join(prefix, field.name);
        match map.get(field.name) {
            Some(v) => check_value(v, &field.kind, &key, issues),
            None if field.required => issues.push(ConfigIssue { key, message: "missing required key".to_owned() }),
            None => {}
        }
    }
    for name in map.keys() {
        if !table.fields.iter().any(|f| f.name == name) {
            let allowed: Vec<&str> = table.fields.iter().map(|f| f.name).collect();
            issues.push(ConfigIssue {
                key: join(prefix, name),
                message: format!("unknown key (allowed here: {})", allowed.join(", ")),
            });
        }
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn check_value(value: &Value, kind: &Kind, key: &str, issues: &mut Vec<ConfigIssue>) {
    let mut push = |message: String| issues.push(ConfigIssue { key: key.to_owned(), message });
    match kind {
        Kind::Text => {
            if scalar_text(value).is_none() {
                push(format!("expected a string, found {}", type_name(value)));
            }
        }
        Kind::Checked(check) => match scalar_text(value) {
            Some(text) => {
                if let Err(message) = check(&text) {
                    push(message);
                }
            }
            None => push(format!("expected a string, found {}", type_name(value))),
        },
        Kind::Unsigned { exactly } => {
            // Environment overrides may arrive as text.
            let n = match value {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.parse::<u64>().ok(),
                _ => None,
            };
            match (n, exactly) {
                (None, _) => push(format!("expected a non-negative integer, found {}", type_name(value))),
                (Some(n), Some(want)) if n != *want => push(format!("unsupported value: expected {want}")),
                _ => {}
            }
        }
        Kind::Table(table) => check_table(value, table, key, issues),
        Kind::Array { item, min_len } => match value {
            Value::Array(items) => {
                if items.len() < *min_len {
                    push(format!("needs at least {min_len} item(s)"));
                }
                for (i, v) in items.iter().enumerate() {
                    check_value(v, item, &format!("{key}[{i}]"), issues);
                }
            }
            other => push(format!("expected an array, found {}", type_name(other))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static INNER: Table = Table { fields: &[required("id", REGION), required("endpoint", HOST_PORT)] };
    static SCHEMA: Table = Table {
        fields: &[
            VERSION_1,
            required("listen", SOCKET_ADDR),
            optional("reload_ms", UNSIGNED),
            required("tls", Kind::Table(&TLS_TABLE)),
            required("regions", Kind::Array { item: &Kind::Table(&INNER), min_len: 1 }),
        ],
    };

    fn issues(text: &str) -> Vec<String> {
        match parse::<Value>("test.toml", text, &SCHEMA) {
            Ok(_) => Vec::new(),
            Err(e) => e.issues.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn good_file_has_no_issues() {
        let text = r#"
            version = 1
            listen = "127.0.0.1:7001"
            [tls]
            ca = "ca.pem"
            cert = "c.pem"
            key = "c.key"
            [[regions]]
            id = "eu-central"
            endpoint = "localhost:7001"
        "#;
        assert!(issues(text).is_empty(), "{:?}", issues(text));
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let text = r#"
            version = 2
            listen = "nowhere"
            reload_ms = "soon"
            colour = "blue"
            [tls]
            ca = "ca.pem"
            cert = "c.pem"
            kee = "c.key"
            [[regions]]
            id = "EU!"
            endpoint = "localhost:7001"
        "#;
        let found = issues(text);
        let keys = ["`version`", "`listen`", "`reload_ms`", "`tls.key`", "`tls.kee`", "`regions[0].id`", "`colour`"];
        for key in keys {
            assert!(found.iter().any(|i| i.starts_with(key)), "{key} not reported in {found:?}");
        }
        assert_eq!(found.len(), keys.len(), "{found:?}");
        // Values are never echoed.
        assert!(!found.iter().any(|i| i.contains("nowhere") || i.contains("blue")), "{found:?}");
    }

    #[test]
    fn syntax_error_is_one_issue() {
        assert_eq!(issues("version = ").len(), 1);
    }
}
