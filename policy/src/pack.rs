//! One policy pack: reading, validating and compiling a `pack.toml`.

use std::collections::BTreeMap;
use std::fmt;

use domicile_types::{Channel, Jurisdiction, Purpose, RegionId};
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::diag::{PackSource, Sink};
use crate::eval::DecisionTable;
use crate::model::{Basis, Confidence, Localisation, Obligation, Rule};
use crate::reader::{Span, Table, parse_document};

/// The schema version this engine reads. A pack declaring another version is refused rather than
/// half-understood.
pub const SCHEMA_VERSION: i64 = 1;

/// Names the exact pack text a decision came from: `id@version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackRef {
    pub id: String,
    pub version: String,
}

impl fmt::Display for PackRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.version)
    }
}

/// A validated, compiled pack for one jurisdiction.
#[derive(Debug, Clone)]
pub struct Pack {
    pack_ref: PackRef,
    title: String,
    jurisdiction: Jurisdiction,
    home_regions: Vec<RegionId>,
    localisation: Localisation,
    obligations: Vec<Obligation>,
    rules: Vec<Rule>,
    revision: String,
    path: String,
    table: DecisionTable,
}

impl Pack {
    pub fn pack_ref(&self) -> PackRef {
        self.pack_ref.clone()
    }

    pub fn id(&self) -> &str {
        &self.pack_ref.id
    }

    pub fn version(&self) -> &str {
        &self.pack_ref.version
    }

    pub fn title(&self) -> &str {
        &self.title
    }

    pub fn jurisdiction(&self) -> &Jurisdiction {
        &self.jurisdiction
    }

    /// Allowed storage regions for the pack's subjects, in order of preference.
    pub fn home_regions(&self) -> &[RegionId] {
        &self.home_regions
    }

    pub fn localisation(&self) -> Localisation {
        self.localisation
    }

    pub fn obligations(&self) -> &[Obligation] {
        &self.obligations
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// The rule that decides `purpose` on `channel`, if any.
    pub fn rule_for(&self, purpose: Purpose, channel: Channel) -> Option<&Rule> {
        self.table.rule_at(purpose, channel).and_then(|i| self.rules.get(i))
    }

    /// The reason a default deny carries: `<pack-id>.default-deny`.
    pub fn default_reason(&self) -> &str {
        self.table.default_reason()
    }

    /// SHA-256 (hex) of the pack text, so a decision can be replayed against the exact bytes.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The path the pack was compiled from (diagnostics only).
    pub fn path(&self) -> &str {
        &self.path
    }

    pub(crate) fn table(&self) -> &DecisionTable {
        &self.table
    }
}

/// What cross-pack checks need even from a pack that has errors of its own.
pub(crate) struct Header {
    pub(crate) id: Option<Spanned<String>>,
    pub(crate) jurisdiction: Option<Spanned<Jurisdiction>>,
}

const ROOT_KEYS: &[&str] = &["schema", "pack", "residency", "obligations", "rule"];
const PACK_KEYS: &[&str] = &["id", "jurisdiction", "version", "title"];
const RESIDENCY_KEYS: &[&str] = &["home_regions", "localisation"];
const OBLIGATION_KEYS: &[&str] = &["text"];
const RULE_KEYS: &[&str] =
    &["id", "purpose", "channels", "basis", "cite", "source", "confidence", "obligations", "note"];

/// `[a-z0-9][a-z0-9_-]*`: ids appear in reasons, logs and file names.
pub(crate) fn is_id_segment(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_pack_id(s: &str) -> bool {
    s.len() <= 32 && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase()) && is_id_segment(s)
}

fn is_version(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

/// Reads and validates one pack file. Returns the pack only when the file has no errors.
pub(crate) fn parse_pack(source: &PackSource, sink: &mut Sink<'_>) -> (Option<Pack>, Header) {
    let mut header = Header { id: None, jurisdiction: None };
    let Some(doc) = parse_document(sink, &source.text) else {
        return (None, header);
    };
    let root_span = doc.span();
    let root_table = doc.get_ref();

    // The schema decides how everything else is read, so check it before the rest.
    match root_table.get("schema") {
        None => {
            sink.error(&(0..0), format!("missing key `schema`; this engine reads schema {SCHEMA_VERSION}"));
            return (None, header);
        }
        Some(value) => match crate::reader::integer(sink, value, "schema") {
            Some(v) if *v.get_ref() == SCHEMA_VERSION => {}
            Some(v) => {
                sink.error(
                    &v.span(),
                    format!("unsupported schema {}; this engine reads schema {SCHEMA_VERSION}", v.get_ref()),
                );
                return (None, header);
            }
            None => return (None, header),
        },
    }

    let root = Table::new(sink, root_table, root_span, "the pack file", ROOT_KEYS);

    // [pack]
    let mut id = None;
    let mut version = None;
    let mut title = None;
    let mut pack_span = 0..0;
    if let Some((table, span)) = root.table(sink, "pack", true) {
        let meta = Table::new(sink, table, span.clone(), "[pack]", PACK_KEYS);
        pack_span = span;
        if let Some(v) = meta.req_str(sink, "id") {
            if is_pack_id(v.get_ref()) {
                id = Some(Spanned::new(v.span(), (*v.get_ref()).to_owned()));
            } else {
                sink.error(
                    &v.span(),
                    "pack id must be 1-32 characters of `a-z`, `0-9`, `_` or `-`, starting with a letter",
                );
            }
        }
        if let Some(v) = meta.req_str(sink, "jurisdiction") {
            match Jurisdiction::parse(v.get_ref()) {
                Ok(j) => header.jurisdiction = Some(Spanned::new(v.span(), j)),
                Err(e) => sink.error(&v.span(), e.to_string()),
            }
        }
        if let Some(v) = meta.req_str(sink, "version") {
            if is_version(v.get_ref()) {
                version = Some((*v.get_ref()).to_owned());
            } else {
                sink.error(&v.span(), "version must be 1-64 characters of letters, digits, `.`, `_`, `+` or `-`");
            }
        }
        title = meta.req_non_empty(sink, "title");
    }
    header.id = id.clone();
    let pack_id = id.as_ref().map(|s| s.get_ref().clone());

    // [residency]
    let mut home_regions = Vec::new();
    let mut localisation = None;
    if let Some((table, span)) = root.table(sink, "residency", true) {
        let residency = Table::new(sink, table, span, "[residency]", RESIDENCY_KEYS);
        if let Some(list) = residency.req_strings(sink, "home_regions") {
            if list.get_ref().is_empty() {
                sink.error(&list.span(), "`home_regions` must name at least one region");
            }
            for item in list.get_ref() {
                match RegionId::parse(item.get_ref()) {
                    Ok(region) if home_regions.contains(&region) => sink.error(&item.span(), "region listed twice"),
                    Ok(region) => home_regions.push(region),
                    Err(e) => sink.error(&item.span(), e.to_string()),
                }
            }
        }
        if let Some(v) = residency.req_str(sink, "localisation") {
            localisation = Localisation::parse(v.get_ref());
            if localisation.is_none() {
                sink.error(&v.span(), Localisation::expected());
            }
        }
    }

    // [obligations.<id>]
    let mut obligations: Vec<(Obligation, Span)> = Vec::new();
    // Every key under [obligations] is an author-chosen id, so there is no unknown-key check.
    if let Some((table, _)) = root.table(sink, "obligations", false) {
        for (key, value) in table.iter() {
            let key_text: &str = key.get_ref().as_ref();
            if !is_id_segment(key_text) {
                sink.error(&key.span(), "obligation id must be `a-z`, `0-9`, `_` or `-`");
                continue;
            }
            let toml::de::DeValue::Table(body) = value.get_ref() else {
                sink.error(&value.span(), "an obligation must be a table with `text`");
                continue;
            };
            let body = Table::new(sink, body, value.span(), "an obligation", OBLIGATION_KEYS);
            if let Some(text) = body.req_non_empty(sink, "text") {
                obligations.push((Obligation { id: key_text.to_owned(), text }, key.span()));
            }
        }
    }

    // [[rule]]
    let mut rules: Vec<Rule> = Vec::new();
    let mut rule_lines: BTreeMap<String, usize> = BTreeMap::new();
    let mut covered: BTreeMap<(Purpose, Channel), (String, usize)> = BTreeMap::new();
    let mut used_obligations: Vec<&str> = Vec::new();
    let rule_tables = root.tables(sink, "rule");
    for (table, span) in &rule_tables {
        let line = sink.line_of(span);
        let r = Table::new(sink, table, span.clone(), "[[rule]]", RULE_KEYS);
        let rule_id = r.req_str(sink, "id").and_then(|v| check_rule_id(sink, &v, pack_id.as_deref(), &rule_lines));
        if let Some(rule_id) = &rule_id {
            rule_lines.insert(rule_id.clone(), line);
        }
        let purpose = r.req_str(sink, "purpose").and_then(|v| match Purpose::parse(v.get_ref()) {
            Ok(p) => Some(p),
            Err(e) => {
                sink.error(&v.span(), e.to_string());
                None
            }
        });
        let mut channels = Vec::new();
        let mut channels_ok = true;
        if let Some(list) = r.req_strings(sink, "channels") {
            if list.get_ref().is_empty() {
                sink.error(&list.span(), "`channels` must name at least one channel");
                channels_ok = false;
            }
            for item in list.get_ref() {
                match Channel::parse(item.get_ref()) {
                    Ok(c) if channels.contains(&c) => sink.error(&item.span(), "channel listed twice"),
                    Ok(c) => {
                        // Two rules for one cell would make the decision depend on rule order.
                        if let (Some(p), Some(id)) = (purpose, &rule_id) {
                            if let Some((other, other_line)) = covered.get(&(p, c)) {
                                sink.error(
                                    &item.span(),
                                    format!("{p} by {c} is already covered by rule `{other}` at line {other_line}"),
                                );
                            } else {
                                covered.insert((p, c), (id.clone(), line));
                            }
                        }
                        channels.push(c);
                    }
                    Err(e) => {
                        sink.error(&item.span(), e.to_string());
                        channels_ok = false;
                    }
                }
            }
        } else {
            channels_ok = false;
        }
        let basis = r.req_str(sink, "basis").and_then(|v| {
            let basis = Basis::parse(v.get_ref());
            if basis.is_none() {
                sink.error(&v.span(), Basis::expected());
            }
            basis
        });
        let cite = r.req_non_empty(sink, "cite");
        let source_note = r.opt_str(sink, "source").map(|s| (*s.get_ref()).to_owned());
        let confidence = r.req_str(sink, "confidence").and_then(|v| {
            let confidence = Confidence::parse(v.get_ref());
            if confidence.is_none() {
                sink.error(&v.span(), Confidence::expected());
            }
            confidence
        });
        let mut rule_obligations = Vec::new();
        if let Some(list) = r.opt_strings(sink, "obligations") {
            for item in list.get_ref() {
                let name: &str = item.get_ref();
                if !obligations.iter().any(|(o, _)| o.id == name) {
                    sink.error(&item.span(), "undefined obligation; define it under [obligations]");
                } else if rule_obligations.iter().any(|o: &String| o == name) {
                    sink.error(&item.span(), "obligation listed twice");
                } else {
                    rule_obligations.push(name.to_owned());
                    used_obligations.push(name);
                }
            }
            if basis == Some(Basis::Prohibited) && !list.get_ref().is_empty() {
                sink.warning(&list.span(), "obligations on a prohibited rule are never attached to a decision");
            }
        }
        let note = r.opt_str(sink, "note").map(|s| (*s.get_ref()).to_owned());
        if let (Some(id), Some(purpose), true, Some(basis), Some(cite), Some(confidence)) =
            (rule_id, purpose, channels_ok, basis, cite, confidence)
        {
            rules.push(Rule {
                id,
                purpose,
                channels,
                basis,
                cite,
                source: source_note,
                confidence,
                obligations: rule_obligations,
                note,
                line,
            });
        }
    }

    for (obligation, span) in &obligations {
        if !used_obligations.contains(&obligation.id.as_str()) {
            sink.warning(span, "obligation is not used by any rule");
        }
    }
    if sink.has_errors() {
        // Coverage of a pack with broken rules would only list false gaps.
    } else if rule_tables.is_empty() {
        sink.warning(&pack_span, "pack has no rules; every decision is a default deny");
    } else {
        // Default deny makes gaps safe, but a gap may also be an oversight; say which.
        for &purpose in Purpose::ALL {
            let missing: Vec<&str> =
                Channel::ALL.iter().filter(|&&c| !covered.contains_key(&(purpose, c))).map(|c| c.as_str()).collect();
            if !missing.is_empty() {
                sink.warning(
                    &pack_span,
                    format!("no rule for {purpose} by {}; these default to deny", missing.join(", ")),
                );
            }
        }
    }

    if sink.has_errors() {
        return (None, header);
    }
    let (Some(id), Some(version), Some(title), Some(jurisdiction), Some(localisation)) =
        (pack_id, version, title, header.jurisdiction.as_ref(), localisation)
    else {
        return (None, header);
    };
    let pack_ref = PackRef { id, version };
    let obligations: Vec<Obligation> = obligations.into_iter().map(|(o, _)| o).collect();
    let table = DecisionTable::compile(&pack_ref, &rules, &obligations);
    let pack = Pack {
        pack_ref,
        title,
        jurisdiction: jurisdiction.get_ref().clone(),
        home_regions,
        localisation,
        obligations,
        rules,
        revision: hex::encode(Sha256::digest(source.text.as_bytes())),
        path: source.path.clone(),
        table,
    };
    (Some(pack), header)
}

fn check_rule_id(
    sink: &mut Sink<'_>,
    value: &Spanned<&str>,
    pack_id: Option<&str>,
    seen: &BTreeMap<String, usize>,
) -> Option<String> {
    let id: &str = value.get_ref();
    let span = value.span();
    let segments: Vec<&str> = id.split('.').collect();
    if segments.len() < 2 || !segments.iter().all(|s| is_id_segment(s)) {
        sink.error(&span, "rule id must be `<pack-id>.<name>` with `.`-separated parts of `a-z`, `0-9`, `_` or `-`");
        return None;
    }
    if let Some(pack_id) = pack_id {
        if segments.first() != Some(&pack_id) {
            sink.error(&span, format!("rule id must start with `{pack_id}.` so reasons name their pack"));
            return None;
        }
        if id == format!("{pack_id}.default-deny") {
            sink.error(&span, "rule id is reserved for default-deny decisions");
            return None;
        }
    }
    if let Some(line) = seen.get(id) {
        sink.error(&span, format!("duplicate rule id; first defined at line {line}"));
        return None;
    }
    Some(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PackSet;

    fn compile(rules: &str) -> Result<Pack, String> {
        let text = format!(
            "schema = 1\n[pack]\nid = \"p\"\njurisdiction = \"FR\"\nversion = \"1\"\ntitle = \"t\"\n\
             [residency]\nhome_regions = [\"eu-central\"]\nlocalisation = \"strict\"\n{rules}"
        );
        PackSet::compile(&[PackSource::new("p.toml", text)])
            .map(|(set, _)| set.packs().next().cloned().unwrap())
            .map_err(|d| d.to_string())
    }

    const RULE: &str = "[[rule]]\nid = \"p.m\"\npurpose = \"marketing\"\nchannels = [\"email\"]\nbasis = \"opt_in\"\ncite = \"c\"\nconfidence = \"P\"\n";

    #[test]
    fn compiled_pack_exposes_its_metadata() {
        let pack = compile(RULE).unwrap();
        assert_eq!(pack.pack_ref().to_string(), "p@1");
        assert_eq!(pack.jurisdiction().to_string(), "FR");
        assert_eq!(pack.localisation(), Localisation::Strict);
        assert_eq!(pack.home_regions(), [RegionId::parse("eu-central").unwrap()]);
        assert_eq!(pack.rule_for(Purpose::Marketing, Channel::Email).map(|r| r.id.as_str()), Some("p.m"));
        assert!(pack.rule_for(Purpose::Marketing, Channel::Sms).is_none());
        assert_eq!(pack.rule("p.m").map(|r| r.line), Some(10));
        assert_eq!(pack.default_reason(), "p.default-deny");
        assert_eq!(pack.revision().len(), 64);
        assert_ne!(pack.revision(), compile(&RULE.replace("cite = \"c\"", "cite = \"d\"")).unwrap().revision());
    }

    #[test]
    fn rule_ids_are_namespaced_and_the_default_reason_is_reserved() {
        let reserved = compile(&RULE.replace("p.m", "p.default-deny")).unwrap_err();
        assert!(reserved.contains("11:6: error: rule id is reserved for default-deny decisions"), "{reserved}");
        let bare = compile(&RULE.replace("p.m", "m")).unwrap_err();
        assert!(bare.contains("error: rule id must be `<pack-id>.<name>`"), "{bare}");
        let upper = compile(&RULE.replace("p.m", "p.Marketing")).unwrap_err();
        assert!(upper.contains("error: rule id must be"), "{upper}");
    }

    #[test]
    fn double_listing_is_an_error() {
        let twice = compile(&RULE.replace("[\"email\"]", "[\"email\", \"email\"]")).unwrap_err();
        assert!(twice.contains("13:22: error: channel listed twice"), "{twice}");
    }
}
