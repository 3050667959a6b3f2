//! The purpose-mapping file of an import (TOML), versioned like a pack: which Domicile purpose
//! and channels each source purpose stands for, what each source identifier type is, and the
//! jurisdiction of records that carry none.
//!
//! ```toml
//! version = "acme-2026-03"              # required; named in every receipt
//!
//! [jurisdiction]                        # optional
//! default = "DE"                        # only for records that carry no jurisdiction at all
//! aliases = { ccpa = "US-CA" }          # source codes that name exactly one ISO jurisdiction
//!
//! [identifiers]                         # source identifier type -> Domicile kind, or "skip"
//! onetrust.Email = "email"
//! transcend.userId = "email"
//! ketch.swb_website = "skip"
//!
//! [[purpose]]
//! source = "onetrust"                   # onetrust | fides | transcend | ketch | "*"
//! key = "C0004"                         # source purpose id, cookie group, purpose name, notice key
//! maps_to = "marketing"
//! channels = ["email"]
//! ```
//!
//! An entry for the record's own source wins over a `*` entry with the same key. Nothing is
//! guessed: a source purpose without an entry, an identifier type not listed, a record without
//! a jurisdiction when no default is declared, each is an error of that row (`formats`). Every
//! problem of the file itself is reported, each as `file:line:column: message`.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use domicile_types::{Channel, IdentifierKind, Jurisdiction, Purpose};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The source systems a `[[purpose]]` entry may name (besides `*`, any of them).
pub const SOURCES: &[&str] = &["onetrust", "fides", "transcend", "ketch"];
/// The sources whose identifier types the mapping names (Fides names its identifier fields).
const IDENTIFIER_SOURCES: &[&str] = &["onetrust", "transcend", "ketch"];

/// What a source purpose is in Domicile's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub purpose: Purpose,
    pub channels: Vec<Channel>,
}

/// What a source identifier type is: a Domicile identifier kind, or one to leave out (a cookie
/// id that identifies no person).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifierMapping {
    Kind(IdentifierKind),
    Skip,
}

/// A read and checked mapping file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapping {
    version: String,
    default_jurisdiction: Option<String>,
    /// Lower-cased source code -> ISO jurisdiction.
    aliases: HashMap<String, String>,
    /// Source -> source identifier type -> mapping.
    identifiers: HashMap<String, HashMap<String, IdentifierMapping>>,
    /// Source (or `*`) -> source purpose key -> target.
    purposes: HashMap<String, HashMap<String, Target>>,
}

/// Every problem of a mapping file, each `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingError {
    pub problems: Vec<String>,
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

impl std::error::Error for MappingError {}

impl Mapping {
    /// Reads a mapping file's text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, MappingError> {
        let mut reader = Reader { text, file, problems: Vec::new() };
        let (root, errors) = DeTable::parse_recoverable(text);
        if !errors.is_empty() {
            for error in errors {
                let message = error.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>();
                reader.error(error.span().unwrap_or(0..0), &format!("invalid toml: {}", message.join("; ")));
            }
            return Err(MappingError { problems: reader.problems });
        }
        let mapping = reader.mapping(root.get_ref());
        if reader.problems.is_empty() { Ok(mapping) } else { Err(MappingError { problems: reader.problems }) }
    }

    /// The file's `version`, named in receipts.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The entry for `key` of `source`, else the `*` entry for `key`.
    pub fn purpose(&self, source: &str, key: &str) -> Option<&Target> {
        let of = |s: &str| self.purposes.get(s).and_then(|keys| keys.get(key));
        of(source).or_else(|| of("*"))
    }

    pub fn identifier(&self, source: &str, type_name: &str) -> Option<IdentifierMapping> {
        self.identifiers.get(source).and_then(|types| types.get(type_name)).copied()
    }

    /// The declared jurisdiction of records that carry none.
    pub fn default_jurisdiction(&self) -> Option<&str> {
        self.default_jurisdiction.as_deref()
    }

    /// The ISO jurisdiction a source code stands for (case-insensitive).
    pub fn jurisdiction_alias(&self, code: &str) -> Option<&str> {
        self.aliases.get(&code.trim().to_ascii_lowercase()).map(String::as_str)
    }
}

struct Reader<'a> {
    text: &'a str,
    file: &'a str,
    problems: Vec<String>,
}

type Value<'i> = Spanned<DeValue<'i>>;

impl Reader<'_> {
    fn error(&mut self, span: Range<usize>, message: &str) {
        let before = self.text.get(..span.start).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        self.problems.push(format!("{}:{line}:{column}: {message}", self.file));
    }

    /// Reports keys of `table` outside `known`: a typo must not drop what its author meant.
    fn known_keys(&mut self, table: &DeTable<'_>, what: &str, known: &[&str]) {
        for key in table.keys() {
            if !known.contains(&key.get_ref().as_ref()) {
                let expected = known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
                self.error(key.span(), &format!("unknown key in {what}; expected one of {expected}"));
            }
        }
    }

    fn string<'t>(&mut self, value: &'t Value<'_>, key: &str) -> Option<&'t str> {
        match value.get_ref() {
            DeValue::String(s) if !s.trim().is_empty() => Some(s.as_ref()),
            DeValue::String(_) => {
                self.error(value.span(), &format!("`{key}` must not be empty"));
                None
            }
            _ => {
                self.error(value.span(), &format!("`{key}` must be a string"));
                None
            }
        }
    }

    fn table<'t, 'i>(&mut self, value: &'t Value<'i>, key: &str) -> Option<&'t DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.error(value.span(), &format!("`{key}` must be a table"));
                None
            }
        }
    }

    fn jurisdiction(&mut self, value: &Value<'_>, key: &str) -> Option<String> {
        let text = self.string(value, key)?;
        match Jurisdiction::parse(text) {
            Ok(j) => Some(j.to_string()),
            Err(e) => {
                self.error(value.span(), &format!("`{key}`: {e}"));
                None
            }
        }
    }

    fn mapping(&mut self, root: &DeTable<'_>) -> Mapping {
        self.known_keys(root, "the mapping", &["version", "jurisdiction", "identifiers", "purpose"]);
        let mut mapping = Mapping::default();
        match root.get("version") {
            Some(v) => {
                mapping.version = self.string(v, "version").unwrap_or_default().trim().to_owned();
                // Kept with every imported entry by the node, which takes a token only: checked
                // here, or the node would refuse every call of the run.
                if !mapping.version.is_empty() && !domicile_types::is_import_token(&mapping.version) {
                    self.error(v.span(), "`version` must be 1 to 128 letters, digits and `._:/#-`");
                }
            }
            None => self.error(0..0, "missing key `version`: a mapping is versioned, and receipts name the version"),
        }
        if let Some(table) = root.get("jurisdiction").and_then(|v| self.table(v, "jurisdiction")) {
            self.known_keys(table, "[jurisdiction]", &["default", "aliases"]);
            mapping.default_jurisdiction = table.get("default").and_then(|v| self.jurisdiction(v, "default"));
            let aliases = table.get("aliases").and_then(|v| self.table(v, "aliases"));
            for (code, value) in aliases.into_iter().flatten() {
                let Some(iso) = self.jurisdiction(value, code.get_ref()) else { continue };
                if mapping.aliases.insert(code.get_ref().trim().to_ascii_lowercase(), iso).is_some() {
                    self.error(code.span(), "this alias differs from another only in case");
                }
            }
        }
        if let Some(table) = root.get("identifiers").and_then(|v| self.table(v, "identifiers")) {
            self.known_keys(table, "[identifiers]", IDENTIFIER_SOURCES);
            for (source, types) in table {
                let Some(types) = self.table(types, source.get_ref()) else { continue };
                let mut out = HashMap::new();
                for (name, kind) in types {
                    let Some(text) = self.string(kind, name.get_ref()) else { continue };
                    let parsed = match text {
                        "skip" => Some(IdentifierMapping::Skip),
                        other => IdentifierKind::parse(other).map(IdentifierMapping::Kind),
                    };
                    match parsed {
                        Some(p) => {
                            out.insert(name.get_ref().to_string(), p);
                        }
                        None => {
                            let kinds = IdentifierKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ");
                            self.error(
                                kind.span(),
                                &format!("not an identifier kind: expected one of {kinds}, or skip"),
                            );
                        }
                    }
                }
                mapping.identifiers.insert(source.get_ref().to_string(), out);
            }
        }
        match root.get("purpose").map(|v| (v, v.get_ref())) {
            None => self.error(0..0, "no `[[purpose]]` entry: every source purpose needs one"),
            Some((_, DeValue::Array(entries))) => {
                let mut seen: HashMap<(String, String), Range<usize>> = HashMap::new();
                for entry in entries {
                    let Some(table) = self.table(entry, "purpose") else { continue };
                    if let Some((source, key, target)) = self.purpose(table, entry.span()) {
                        let first = seen.get(&(source.clone(), key.get_ref().clone())).cloned();
                        if let Some(first) = first {
                            let at = self.text.get(..first.start).unwrap_or_default().matches('\n').count() + 1;
                            self.error(
                                key.span(),
                                &format!("a second entry for this source and key (first at line {at})"),
                            );
                            continue;
                        }
                        seen.insert((source.clone(), key.get_ref().clone()), key.span());
                        mapping.purposes.entry(source).or_default().insert(key.into_inner(), target);
                    }
                }
            }
            Some((v, _)) => self.error(v.span(), "`purpose` must be an array of tables (`[[purpose]]`)"),
        }
        mapping
    }

    fn purpose(&mut self, table: &DeTable<'_>, span: Range<usize>) -> Option<(String, Spanned<String>, Target)> {
        self.known_keys(table, "[[purpose]]", &["source", "key", "maps_to", "channels"]);
        let required = |reader: &mut Self, key: &str| {
            let value = table.get(key);
            if value.is_none() {
                reader.error(span.clone(), &format!("missing key `{key}` in [[purpose]]"));
            }
            value
        };
        let (source, key, maps_to, channels) =
            (required(self, "source"), required(self, "key"), required(self, "maps_to"), required(self, "channels"));
        let source = source.and_then(|v| {
            let text = self.string(v, "source")?;
            if text == "*" || SOURCES.contains(&text) {
                return Some(text.to_owned());
            }
            self.error(v.span(), &format!("`source` must be one of {}, or \"*\"", SOURCES.join(", ")));
            None
        });
        let key = key.and_then(|v| self.string(v, "key").map(|k| Spanned::new(v.span(), k.to_owned())));
        let purpose = maps_to.and_then(|v| {
            let parsed = Purpose::parse(self.string(v, "maps_to")?);
            parsed.map_err(|e| self.error(v.span(), &format!("`maps_to`: {e}"))).ok()
        });
        let channels = channels.and_then(|v| self.channels(v));
        Some((source?, key?, Target { purpose: purpose?, channels: channels? }))
    }

    fn channels(&mut self, value: &Value<'_>) -> Option<Vec<Channel>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.error(value.span(), "`channels` must be an array of channel names");
            return None;
        };
        if items.is_empty() {
            self.error(value.span(), "`channels` must name at least one channel");
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            let channel = self.string(item, "channels").map(Channel::parse);
            match channel {
                Some(Ok(c)) if out.contains(&c) => {
                    self.error(item.span(), "this channel is listed twice");
                    ok = false;
                }
                Some(Ok(c)) => out.push(c),
                Some(Err(e)) => {
                    self.error(item.span(), &format!("`channels`: {e}"));
                    ok = false;
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version = "acme-1"
[jurisdiction]
default = "de"
aliases = { CCPA = "us-ca" }
[identifiers]
onetrust.Email = "email"
ketch.swb_website = "skip"
[[purpose]]
source = "*"
key = "C0004"
maps_to = "marketing"
channels = ["email"]
[[purpose]]
source = "onetrust"
key = "C0004"
maps_to = "survey"
channels = ["sms", "email"]
"#;

    #[test]
    fn reads_a_mapping_and_prefers_the_sources_own_entry() {
        let m = Mapping::parse(GOOD, "map.toml").unwrap();
        assert_eq!(m.version(), "acme-1");
        assert_eq!(m.default_jurisdiction(), Some("DE"));
        assert_eq!(m.jurisdiction_alias("ccpa"), Some("US-CA"));
        assert_eq!(m.identifier("onetrust", "Email"), Some(IdentifierMapping::Kind(IdentifierKind::Email)));
        assert_eq!(m.identifier("ketch", "swb_website"), Some(IdentifierMapping::Skip));
        assert_eq!(m.identifier("onetrust", "email"), None, "type names are case-sensitive");
        let own = m.purpose("onetrust", "C0004").unwrap();
        assert_eq!((own.purpose, own.channels.as_slice()), (Purpose::Survey, &[Channel::Sms, Channel::Email][..]));
        assert_eq!(m.purpose("ketch", "C0004").map(|t| t.purpose), Some(Purpose::Marketing));
        assert!(m.purpose("ketch", "C0005").is_none());
    }

    #[test]
    fn every_problem_is_reported_at_its_line_and_column() {
        let text = "version = \"\"\ncolour = 1\n[jurisdiction]\ndefault = \"XX\"\n[identifiers]\nfides.email = \"email\"\nonetrust.Email = \"mail\"\n[[purpose]]\nsource = \"hubspot\"\nkey = \"a\"\nmaps_to = \"spam\"\nchannels = [\"email\", \"email\"]\n[[purpose]]\nsource = \"*\"\nkey = \"b\"\n";
        let err = Mapping::parse(text, "m.toml").unwrap_err();
        let expected = [
            "m.toml:1:11: `version` must not be empty",
            "m.toml:2:1: unknown key in the mapping",
            "m.toml:4:11: `default`: jurisdiction is not an assigned",
            "m.toml:6:1: unknown key in [identifiers]",
            "m.toml:7:18: not an identifier kind",
            "m.toml:9:10: `source` must be one of",
            "m.toml:11:11: `maps_to`: unknown purpose",
            "m.toml:12:22: this channel is listed twice",
            "m.toml:13:1: missing key `maps_to` in [[purpose]]",
            "m.toml:13:1: missing key `channels` in [[purpose]]",
        ];
        for want in expected {
            assert!(err.problems.iter().any(|p| p.starts_with(want)), "{want} in {err}");
        }
    }

    #[test]
    fn a_version_the_node_would_refuse_is_refused_here() {
        for version in ["acme 2026", "v1+fix", &"v".repeat(129)] {
            let text = format!(
                "version = \"{version}\"\n[[purpose]]\nsource = \"*\"\nkey = \"k\"\nmaps_to = \"marketing\"\nchannels = [\"email\"]\n"
            );
            let err = Mapping::parse(&text, "v.toml").unwrap_err().to_string();
            assert!(err.contains("v.toml:1:11: `version` must be 1 to 128 letters"), "{err}");
        }
        let ok = "version = \"crm/2026.1#a\"\n[[purpose]]\nsource = \"*\"\nkey = \"k\"\nmaps_to = \"marketing\"\nchannels = [\"email\"]\n";
        assert!(Mapping::parse(ok, "ok.toml").is_ok());
    }

    #[test]
    fn a_missing_version_a_duplicate_entry_and_bad_syntax_are_refused() {
        let dup = "[[purpose]]\nsource = \"fides\"\nkey = \"k\"\nmaps_to = \"marketing\"\nchannels = [\"email\"]\n[[purpose]]\nsource = \"fides\"\nkey = \"k\"\nmaps_to = \"survey\"\nchannels = [\"email\"]\n";
        let err = Mapping::parse(dup, "d.toml").unwrap_err().to_string();
        assert!(err.contains("d.toml:1:1: missing key `version`"), "{err}");
        assert!(err.contains("d.toml:8:7: a second entry for this source and key (first at line 3)"), "{err}");
        let err = Mapping::parse("version = \"1\"\n[[purpose]\n", "s.toml").unwrap_err().to_string();
        assert!(err.starts_with("s.toml:2:") && err.contains("invalid toml"), "{err}");
    }
}
