//! Loading versioned TOML configuration with environment overrides, reporting every problem at
//! once.
//!
//! `DOMICILE_NODE_LISTEN=127.0.0.1:0` overrides `listen` in a node file; `__` separates nesting
//! levels so snake_case keys survive (`DOMICILE_NODE_TLS__CA`).
//!
//! serde stops at the first error, so before deserialising, the merged file + environment is
//! walked against the configuration type's own shape (its JSON schema, derived from the serde
//! struct with `schemars`, so each shape is declared once) collecting unknown keys, missing
//! required keys, wrong types and unparsable values, each with its key path. Fields of domain
//! types name their check with `#[schemars(with = "RegionText")]` and the like. The final serde
//! pass then reads the checked value.

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

/// A configuration shape, declared once: the serde struct, whose JSON schema (derived with
/// `schemars`, every nested table inline) is what files and environment are checked against
/// before serde reads them, so that every problem is reported at once with its key path.
pub trait ConfigShape: DeserializeOwned + schemars::JsonSchema {}

impl<T: DeserializeOwned + schemars::JsonSchema> ConfigShape for T {}

/// The JSON schema of `T`, nested tables inline (no `$ref`s to follow).
pub fn schema_of<T: schemars::JsonSchema>() -> Value {
    let generator =
        schemars::generate::SchemaSettings::draft2020_12().with(|s| s.inline_subschemas = true).into_generator();
    generator.into_root_schema_for::<T>().to_value()
}

/// Checks a text value; the error describes what was expected, without the value.
type TextCheck = fn(&str) -> Result<(), String>;

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

/// The text checks a schema names in its `format`.
fn text_check(format: &str) -> Option<TextCheck> {
    match format {
        REGION_FORMAT => Some(check_region),
        SOCKET_ADDR_FORMAT => Some(check_socket_addr),
        HOST_PORT_FORMAT => Some(check_host_port),
        _ => None,
    }
}

const REGION_FORMAT: &str = "domicile-region";
const SOCKET_ADDR_FORMAT: &str = "domicile-socket-address";
const HOST_PORT_FORMAT: &str = "domicile-host-port";

/// A schema for text checked by one of this module's checks (`#[schemars(with = "…")]`).
macro_rules! checked_text {
    ($(#[$doc:meta])* $name:ident, $format:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "format": $format })
            }
        }
    };
}

checked_text!(
    /// A region id (`eu-central`), for fields of type `RegionId`: `#[schemars(with = "RegionText")]`.
    RegionText,
    REGION_FORMAT
);
checked_text!(
    /// An `ip:port` socket address.
    SocketAddrText,
    SOCKET_ADDR_FORMAT
);
checked_text!(
    /// A `host:port` endpoint.
    HostPortText,
    HOST_PORT_FORMAT
);

/// One region of a deployment and where its node listens (gateways route to it; nodes claim
/// identifiers at it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionEndpoint {
    #[schemars(with = "RegionText")]
    pub id: domicile_types::RegionId,
    /// `host:port` of the region's node.
    #[schemars(with = "HostPortText")]
    pub endpoint: String,
    /// `host:port` of further node replicas of the region (a PostgreSQL-backed region runs
    /// several over one database): gateways spread calls over the healthy ones. Nodes claim
    /// identifiers at `endpoint` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<HostPortText>")]
    pub replicas: Vec<String>,
}

impl RegionEndpoint {
    /// The region's node and its further replicas, `endpoint` first.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.endpoint.as_str()).chain(self.replicas.iter().map(String::as_str))
    }
}

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

/// Reads `path` (TOML), applies `<env_prefix>_…` overrides, checks the result against `T`'s
/// shape (every problem at once), then deserialises into `T`.
pub fn load<T: ConfigShape>(path: &Path, env_prefix: &str) -> Result<T, ConfigError> {
    let origin = path.display().to_string();
    let builder = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml).required(true))
        .add_source(
            config::Environment::with_prefix(env_prefix).prefix_separator("_").separator("__").try_parsing(true),
        );
    check_and_build(&origin, builder)
}

/// Like [`load`] for TOML text that is not a file on disk (built-in defaults), without
/// environment overrides; `origin` names it in errors.
pub fn parse<T: ConfigShape>(origin: &str, text: &str) -> Result<T, ConfigError> {
    let builder = config::Config::builder().add_source(config::File::from_str(text, config::FileFormat::Toml));
    check_and_build(origin, builder)
}

fn check_and_build<T: ConfigShape>(
    origin: &str,
    builder: config::ConfigBuilder<config::builder::DefaultState>,
) -> Result<T, ConfigError> {
    // A syntax error or unreadable file leaves nothing to walk: it is the one problem.
    let merged = builder.build().map_err(|e| ConfigError::single(origin, "", without_source(&e.to_string())))?;
    let value: Value = merged.clone().try_deserialize().map_err(|e| ConfigError::single(origin, "", e.to_string()))?;
    let issues = check(&value, &schema_of::<T>());
    if !issues.is_empty() {
        return Err(ConfigError { path: origin.to_owned(), issues });
    }
    // config's own deserialiser reads env numbers into text fields, which serde_json would not.
    merged.try_deserialize::<T>().map_err(|e| ConfigError::single(origin, "", e.to_string()))
}

/// A parser's message without the lines that quote the file (`11 | key = "…"` and the `|` and
/// `^` lines around it): the quoted line may hold a credential (a URL with a password), and
/// messages never repeat configured values (found by fuzzing, FUZZING.md). Line and column stay.
fn without_source(message: &str) -> String {
    let quotes =
        |line: &str| line.trim_start().trim_start_matches(|c: char| c.is_ascii_digit()).trim_start().starts_with('|');
    message.lines().filter(|line| !quotes(line)).collect::<Vec<_>>().join("\n")
}

/// Every problem of `value` against `schema` (a JSON schema from [`schema_of`]).
pub fn check(value: &Value, schema: &Value) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    check_value(value, schema, "", &mut issues);
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

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The schema's types (`"type": "x"` or `["x", "null"]`); an `anyOf` of a schema and null (an
/// optional table) is read as that schema, optional.
fn types(schema: &Value) -> (Vec<&str>, &Value) {
    if let Some(alternatives) = schema.get("anyOf").and_then(Value::as_array) {
        let mut nullable = false;
        let mut main = schema;
        for alternative in alternatives {
            if alternative.get("type").and_then(Value::as_str) == Some("null") {
                nullable = true;
            } else {
                main = alternative;
            }
        }
        let (mut found, main) = types(main);
        if nullable {
            found.push("null");
        }
        return (found, main);
    }
    let found = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    (found, schema)
}

fn check_value(value: &Value, schema: &Value, key: &str, issues: &mut Vec<ConfigIssue>) {
    if let Some(alternatives) = schema.get("oneOf").and_then(Value::as_array) {
        return check_tagged(value, alternatives, key, issues);
    }
    let mut push = |message: String| issues.push(ConfigIssue { key: key.to_owned(), message });
    let (kinds, schema) = types(schema);
    if value.is_null() && kinds.contains(&"null") {
        return;
    }
    match kinds.iter().copied().find(|k| *k != "null") {
        Some("object") => check_table(value, schema, key, issues),
        Some("array") => match value {
            Value::Array(items) => {
                let min = schema.get("minItems").and_then(Value::as_u64).unwrap_or(0);
                if (items.len() as u64) < min {
                    push(format!("needs at least {min} item(s)"));
                }
                if let Some(item) = schema.get("items") {
                    for (i, v) in items.iter().enumerate() {
                        check_value(v, item, &format!("{key}[{i}]"), issues);
                    }
                }
            }
            other => push(format!("expected an array, found {}", type_name(other))),
        },
        Some("integer") => {
            // Environment overrides may arrive as text.
            let n = match value {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.parse::<u64>().ok(),
                _ => None,
            };
            let (min, max) =
                (schema.get("minimum").and_then(Value::as_u64), schema.get("maximum").and_then(Value::as_u64));
            match n {
                None => push(format!("expected a non-negative integer, found {}", type_name(value))),
                // A version: one value allowed.
                Some(n) if min.is_some() && min == max && Some(n) != min => {
                    push(format!("unsupported value: expected {}", min.unwrap_or_default()))
                }
                Some(n) if max.is_some_and(|max| n > max) => {
                    push(format!("must be at most {}", max.unwrap_or_default()))
                }
                _ => {}
            }
        }
        Some("boolean") => {
            if !matches!(value, Value::Bool(_)) && !matches!(value.as_str(), Some("true" | "false")) {
                push(format!("expected a boolean, found {}", type_name(value)));
            }
        }
        // Text (also what a schema without a type reads as).
        _ => match scalar_text(value) {
            Some(text) => {
                let check = schema.get("format").and_then(Value::as_str).and_then(text_check);
                if let Some(Err(message)) = check.map(|check| check(&text)) {
                    push(message);
                }
            }
            None => push(format!("expected a string, found {}", type_name(value))),
        },
    }
}

/// A table whose shape depends on one of its keys (a serde enum tagged by, e.g., `kind`): each
/// alternative fixes the tag with a `const`. The table is checked against the alternative its tag
/// names, so a mistake is reported against the shape the author chose, not against all of them.
fn check_tagged(value: &Value, alternatives: &[Value], key: &str, issues: &mut Vec<ConfigIssue>) {
    let tag_of = |alternative: &Value| {
        alternative.get("properties").and_then(Value::as_object).and_then(|properties| {
            properties.iter().find_map(|(name, property)| {
                property.get("const").and_then(Value::as_str).map(|value| (name.clone(), value.to_owned()))
            })
        })
    };
    let tags: Vec<(String, String)> = alternatives.iter().filter_map(tag_of).collect();
    let Some(tag) = tags.first().map(|(name, _)| name.clone()) else {
        issues.push(ConfigIssue { key: key.to_owned(), message: "the schema has no tag to choose by".to_owned() });
        return;
    };
    let allowed: Vec<&str> = tags.iter().map(|(_, value)| value.as_str()).collect();
    let Value::Object(map) = value else {
        issues.push(ConfigIssue {
            key: key.to_owned(),
            message: format!("expected a table, found {}", type_name(value)),
        });
        return;
    };
    let chosen = map.get(&tag).and_then(scalar_text);
    let alternative = chosen.as_deref().and_then(|chosen| {
        alternatives.iter().find(|alternative| tag_of(alternative).is_some_and(|(_, value)| value == chosen))
    });
    match (alternative, map.contains_key(&tag)) {
        (Some(alternative), _) => check_table(value, alternative, key, issues),
        (None, false) => issues.push(ConfigIssue {
            key: join(key, &tag),
            message: format!("missing required key (one of: {})", allowed.join(", ")),
        }),
        (None, true) => issues.push(ConfigIssue {
            key: join(key, &tag),
            message: format!("unsupported value: expected one of {}", allowed.join(", ")),
        }),
    }
}

fn check_table(value: &Value, schema: &Value, prefix: &str, issues: &mut Vec<ConfigIssue>) {
    let Value::Object(map) = value else {
        issues.push(ConfigIssue {
            key: prefix.to_owned(),
            message: format!("expected a table, found {}", type_name(value)),
        });
        return;
    };
    let empty = serde_json::Map::new();
    let properties = schema.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, property) in properties {
        let key = join(prefix, name);
        match map.get(name) {
            Some(v) => check_value(v, property, &key, issues),
            None if required.contains(&name.as_str()) => {
                issues.push(ConfigIssue { key, message: "missing required key".to_owned() })
            }
            None => {}
        }
    }
    for name in map.keys() {
        if !properties.contains_key(name) {
            let allowed: Vec<&str> = properties.keys().map(String::as_str).collect();
            issues.push(ConfigIssue {
                key: join(prefix, name),
                message: format!("unknown key (allowed here: {})", allowed.join(", ")),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "read only through its schema")]
    struct Sample {
        #[schemars(range(min = 1, max = 1))]
        version: u32,
        #[schemars(with = "SocketAddrText")]
        listen: std::net::SocketAddr,
        #[serde(default)]
        reload_ms: u64,
        tls: crate::tls::TlsFiles,
        #[schemars(length(min = 1))]
        regions: Vec<RegionEndpoint>,
        #[serde(default)]
        otlp: Option<String>,
    }

    fn issues(text: &str) -> Vec<String> {
        match parse::<Sample>("test.toml", text) {
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
            endpoint = "localhost"
        "#;
        let found = issues(text);
        let keys = [
            "`version`",
            "`listen`",
            "`reload_ms`",
            "`tls.key`",
            "`tls.kee`",
            "`regions[0].id`",
            "`regions[0].endpoint`",
            "`colour`",
        ];
        for key in keys {
            assert!(found.iter().any(|i| i.starts_with(key)), "{key} not reported in {found:?}");
        }
        assert_eq!(found.len(), keys.len(), "{found:?}");
        assert!(found.iter().any(|i| i.contains("unsupported value: expected 1")), "{found:?}");
        // Values are never echoed.
        assert!(!found.iter().any(|i| i.contains("nowhere") || i.contains("blue")), "{found:?}");
    }

    #[test]
    fn an_empty_list_and_a_missing_table_are_reported() {
        let found = issues("version = 1\nlisten = \"127.0.0.1:1\"\nregions = []\n");
        assert!(found.iter().any(|i| i.starts_with("`regions`: needs at least 1")), "{found:?}");
        assert!(found.iter().any(|i| i.starts_with("`tls`: missing required key")), "{found:?}");
    }

    #[test]
    fn syntax_error_is_one_issue() {
        assert_eq!(issues("version = ").len(), 1);
    }

    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    #[serde(tag = "kind", rename_all = "lowercase")]
    #[allow(dead_code, reason = "read only through its schema")]
    enum Engine {
        Embedded,
        Server { url: String, pool_size: u32 },
    }

    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "read only through its schema")]
    struct WithEngine {
        engine: Engine,
    }

    fn engine_issues(text: &str) -> Vec<String> {
        match parse::<WithEngine>("test.toml", text) {
            Ok(_) => Vec::new(),
            Err(e) => e.issues.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_tagged_table_is_checked_against_the_shape_its_tag_names() {
        assert_eq!(engine_issues("[engine]\nkind = \"embedded\"\n"), Vec::<String>::new());
        assert_eq!(engine_issues("[engine]\nkind = \"server\"\nurl = \"u\"\npool_size = 2\n"), Vec::<String>::new());
        // The server shape's own mistakes, all of them, against its keys.
        let found = engine_issues("[engine]\nkind = \"server\"\npool_size = \"many\"\nuri = \"u\"\n");
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found.iter().any(|i| i.starts_with("`engine.url`: missing required key")), "{found:?}");
        assert!(
            found.iter().any(|i| i.starts_with("`engine.pool_size`: expected a non-negative integer")),
            "{found:?}"
        );
        assert!(found.iter().any(|i| i.starts_with("`engine.uri`: unknown key")), "{found:?}");
        // An unknown or missing tag names the choices, and never echoes the value.
        let found = engine_issues("[engine]\nkind = \"mysql-secret\"\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("`engine.kind`: unsupported value: expected one of embedded, server"),
            "{found:?}"
        );
        assert!(!found[0].contains("mysql-secret"), "{found:?}");
        let found = engine_issues("[engine]\nurl = \"u\"\n");
        assert!(found[0].starts_with("`engine.kind`: missing required key (one of: embedded, server)"), "{found:?}");
        let found = engine_issues("engine = 3\n");
        assert!(found[0].starts_with("`engine`: expected a table"), "{found:?}");
    }
}
