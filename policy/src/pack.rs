//! One policy pack file: reading and validating a `pack.toml` on its own.

use std::collections::BTreeMap;

use domicile_types::{Channel, Jurisdiction, Purpose, RegionId};
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::diag::{PackSource, Sink};
use crate::model::decision::BUILTIN_OBLIGATIONS;
use crate::model::window::{CallingWindow, WEEKDAYS, parse_slot};
use crate::model::{
    Basis, Confidence, ConsentKind, Lifetime, Localisation, Obligation, PackKind, Period, Register, Rights, Rule,
    SoftCondition, Transfer,
};
use crate::reader::{Span, Table, parse_document, timestamp_text};
use crate::time::parse_rfc3339;
use crate::zone::Zone;

/// The newest schema version this engine reads. A pack declaring another version is refused
/// rather than half-understood. Schema 2 adds nothing schema 1 packs cannot use; it makes
/// coverage strict: a purpose × channel no rule decides is an error, not a warning.
pub const SCHEMA_VERSION: i64 = 2;
/// The oldest schema version still read.
pub const MIN_SCHEMA_VERSION: i64 = 1;

/// `[residency]` as one file states it. The optional keys a file leaves out are inherited from
/// the packs it extends (`link.rs`); `transfer = []` states "none".
#[derive(Debug, Clone)]
pub(crate) struct ParsedResidency {
    pub(crate) home_regions: Vec<RegionId>,
    pub(crate) localisation: Localisation,
    pub(crate) in_country_collection: Option<bool>,
    pub(crate) minimised_fields: Option<Vec<String>>,
    pub(crate) transfers: Option<Vec<Transfer>>,
}

/// A rule with the spans of everything it refers to, for set-level checks.
pub(crate) struct ParsedRule {
    pub(crate) rule: Rule,
    pub(crate) span: Span,
    pub(crate) window_span: Option<Span>,
    pub(crate) replaces_spans: Vec<Span>,
}

/// One pack file, read and checked on its own; the set resolves `extends` and references.
pub(crate) struct Parsed {
    pub(crate) schema: i64,
    pub(crate) id: String,
    pub(crate) version: String,
    pub(crate) title: String,
    pub(crate) kind: PackKind,
    pub(crate) jurisdiction: Option<Jurisdiction>,
    pub(crate) owners: Vec<String>,
    pub(crate) references: Vec<String>,
    pub(crate) effective_from: Option<i64>,
    pub(crate) effective_until: Option<i64>,
    pub(crate) time_zones: Vec<Zone>,
    pub(crate) residency: Option<ParsedResidency>,
    pub(crate) rights: Rights,
    pub(crate) obligations: Vec<(Obligation, Span)>,
    pub(crate) lifetimes: Vec<(Lifetime, Span)>,
    pub(crate) windows: Vec<(CallingWindow, Span)>,
    pub(crate) registers: Vec<(Register, Span)>,
    pub(crate) rules: Vec<ParsedRule>,
    pub(crate) pack_span: Span,
    pub(crate) revision: String,
    pub(crate) path: String,
}

/// What a rule refers to by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefKind {
    Obligation,
    Lifetime,
    Window,
    Register,
    Replaces,
}

impl RefKind {
    pub(crate) fn undefined(self) -> &'static str {
        match self {
            RefKind::Obligation => "undefined obligation; define it under [obligations]",
            RefKind::Lifetime => "undefined lifetime; define it under [lifetimes]",
            RefKind::Window => "undefined calling window; define it under [windows]",
            RefKind::Register => "undefined register; define it under [registers]",
            RefKind::Replaces => "`replaces` names no rule of an extended pack",
        }
    }
}

/// What cross-pack checks need even from a pack that has errors of its own.
pub(crate) struct Header {
    pub(crate) id: Option<Spanned<String>>,
    pub(crate) jurisdiction: Option<Spanned<Jurisdiction>>,
    pub(crate) baseline: bool,
    pub(crate) extends: Option<Spanned<String>>,
    /// References not defined in this file, to resolve against the packs it extends.
    pub(crate) unresolved: Vec<(RefKind, String, Span)>,
}

const ROOT_KEYS: &[&str] =
    &["schema", "pack", "residency", "rights", "obligations", "lifetimes", "windows", "registers", "rule"];
const PACK_KEYS: &[&str] = &[
    "id",
    "jurisdiction",
    "version",
    "title",
    "kind",
    "extends",
    "owners",
    "references",
    "effective_from",
    "effective_until",
    "time_zones",
];
const RESIDENCY_KEYS: &[&str] =
    &["home_regions", "localisation", "in_country_collection", "minimised_fields", "transfer"];
const TRANSFER_KEYS: &[&str] = &["id", "to", "purposes", "condition", "cite", "minimised_only"];
const RIGHTS_KEYS: &[&str] = &["deadline", "extension", "age_of_digital_consent", "cite"];
const OBLIGATION_KEYS: &[&str] = &["text"];
const LIFETIME_KEYS: &[&str] = &["express", "implied_purchase", "implied_inquiry", "cite"];
const WINDOW_KEYS: &[&str] = &["mon", "tue", "wed", "thu", "fri", "sat", "sun", "cite"];
const REGISTER_KEYS: &[&str] = &["name", "cite", "exempt_with_consent"];
const RULE_KEYS: &[&str] = &[
    "id",
    "purpose",
    "channels",
    "basis",
    "cite",
    "source",
    "confidence",
    "obligations",
    "note",
    "effective_from",
    "effective_until",
    "lifetime",
    "window",
    "screen",
    "conditions",
    "replaces",
];

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

fn schema_message(found: i64) -> String {
    format!("unsupported schema {found}; this engine reads schema {MIN_SCHEMA_VERSION} to {SCHEMA_VERSION}")
}

/// An instant written as an RFC 3339 string or TOML date-time with an offset.
fn opt_instant(sink: &mut Sink<'_>, table: &Table<'_, '_>, key: &str) -> Option<Spanned<i64>> {
    let value = table.get(key)?;
    let parsed = timestamp_text(value).as_deref().and_then(parse_rfc3339);
    if parsed.is_none() {
        sink.error(&value.span(), format!("`{key}` must be an RFC 3339 timestamp with an offset"));
    }
    parsed.map(|t| Spanned::new(value.span(), t))
}

fn owned_strings(sink: &mut Sink<'_>, table: &Table<'_, '_>, key: &str) -> Vec<String> {
    table
        .opt_strings(sink, key)
        .map(|l| l.get_ref().iter().map(|s| (*s.get_ref()).to_owned()).collect())
        .unwrap_or_default()
}

fn check_range(sink: &mut Sink<'_>, from: Option<&Spanned<i64>>, until: Option<&Spanned<i64>>) {
    if let (Some(from), Some(until)) = (from, until)
        && until.get_ref() <= from.get_ref()
    {
        sink.error(&until.span(), "`effective_until` must be later than `effective_from`");
    }
}

fn period(sink: &mut Sink<'_>, value: &Spanned<&str>, key: &str) -> Option<Period> {
    let parsed = Period::parse(value.get_ref());
    if parsed.is_none() {
        sink.error(&value.span(), format!("`{key}` must be a period such as `30 days`, `6 months` or `2 years`"));
    }
    parsed
}

/// Reads and validates one pack file on its own. `None` when the file has errors.
pub(crate) fn parse_pack(source: &PackSource, sink: &mut Sink<'_>) -> (Option<Parsed>, Header) {
    let mut header = Header { id: None, jurisdiction: None, baseline: false, extends: None, unresolved: Vec::new() };
    let Some(doc) = parse_document(sink, &source.text) else {
        return (None, header);
    };
    let root_span = doc.span();
    let root_table = doc.get_ref();

    // The schema decides how everything else is read, so check it before the rest.
    let schema = match root_table.get("schema") {
        None => {
            sink.error(
                &(0..0),
                format!("missing key `schema`; this engine reads schema {MIN_SCHEMA_VERSION} to {SCHEMA_VERSION}"),
            );
            return (None, header);
        }
        Some(value) => match crate::reader::integer(sink, value, "schema") {
            Some(v) if (MIN_SCHEMA_VERSION..=SCHEMA_VERSION).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                sink.error(&v.span(), schema_message(*v.get_ref()));
                return (None, header);
            }
            None => return (None, header),
        },
    };

    let root = Table::new(sink, root_table, root_span, "the pack file", ROOT_KEYS);

    // [pack]
    let mut id = None;
    let mut version = None;
    let mut title = None;
    let mut kind = PackKind::Jurisdiction;
    let mut extends = None;
    let mut owners = Vec::new();
    let mut references = Vec::new();
    let (mut effective_from, mut effective_until) = (None, None);
    let mut time_zones = Vec::new();
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
        if let Some(v) = meta.opt_str(sink, "kind") {
            match *v.get_ref() {
                "jurisdiction" => {}
                "baseline" => kind = PackKind::Baseline,
                _ => sink.error(&v.span(), "unknown kind; expected one of `jurisdiction`, `baseline`"),
            }
        }
        header.baseline = kind == PackKind::Baseline;
        if header.baseline {
            // A baseline answers for no jurisdiction by itself; packs opt in with `extends`.
            if let Some(v) = meta.get("jurisdiction") {
                sink.error(
                    &v.span(),
                    "a baseline answers for no jurisdiction; jurisdiction packs name it in `extends`",
                );
            }
        } else if let Some(v) = meta.req_str(sink, "jurisdiction") {
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
        if let Some(v) = meta.opt_str(sink, "extends") {
            if is_pack_id(v.get_ref()) {
                extends = Some(Spanned::new(v.span(), (*v.get_ref()).to_owned()));
            } else {
                sink.error(&v.span(), "`extends` must name a pack id");
            }
        }
        owners = owned_strings(sink, &meta, "owners");
        references = owned_strings(sink, &meta, "references");
        effective_from = opt_instant(sink, &meta, "effective_from");
        effective_until = opt_instant(sink, &meta, "effective_until");
        check_range(sink, effective_from.as_ref(), effective_until.as_ref());
        if let Some(list) = meta.opt_strings(sink, "time_zones") {
            for item in list.get_ref() {
                match Zone::parse(item.get_ref()) {
                    Some(z) if time_zones.contains(&z) => sink.error(&item.span(), "time zone listed twice"),
                    Some(z) => time_zones.push(z),
                    None => sink.error(&item.span(), "unknown time zone; use an IANA name such as `Europe/Paris`"),
                }
            }
        }
    }
    header.id = id.clone();
    header.extends = extends.clone();
    let pack_id = id.as_ref().map(|s| s.get_ref().clone());

    // [residency]: required unless inherited.
    let mut residency = None;
    if let Some((table, span)) = root.table(sink, "residency", extends.is_none()) {
        let r = Table::new(sink, table, span, "[residency]", RESIDENCY_KEYS);
        let mut home_regions = Vec::new();
        if let Some(list) = r.req_strings(sink, "home_regions") {
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
        let localisation = r.req_str(sink, "localisation").and_then(|v| {
            let l = Localisation::parse(v.get_ref());
            if l.is_none() {
                sink.error(&v.span(), Localisation::expected());
            }
            l
        });
        let in_country_collection = r.opt_bool(sink, "in_country_collection").map(|b| *b.get_ref());
        let minimised_fields = r.opt_strings(sink, "minimised_fields").map(|list| {
            let mut fields = Vec::new();
            for item in list.get_ref() {
                // Profile field names, as the node accepts them.
                if item.get_ref().len() <= 64 && item.get_ref().split('.').all(is_id_segment) {
                    fields.push((*item.get_ref()).to_owned());
                } else {
                    sink.error(&item.span(), "minimised fields are profile field names: `a-z`, `0-9`, `_`, `-`, dot-separated, at most 64 bytes");
                }
            }
            fields
        });
        let transfers_given = r.get("transfer").is_some();
        let mut transfers = Vec::new();
        for (table, span) in r.tables(sink, "transfer") {
            let t = Table::new(sink, table, span, "[[residency.transfer]]", TRANSFER_KEYS);
            let tid = t.req_str(sink, "id").and_then(|v| {
                if is_id_segment(v.get_ref()) {
                    Some((*v.get_ref()).to_owned())
                } else {
                    sink.error(&v.span(), "transfer id must be `a-z`, `0-9`, `_` or `-`");
                    None
                }
            });
            let mut to = Vec::new();
            if let Some(list) = t.opt_strings(sink, "to") {
                for item in list.get_ref() {
                    match RegionId::parse(item.get_ref()) {
                        Ok(region) => to.push(region),
                        Err(e) => sink.error(&item.span(), e.to_string()),
                    }
                }
            }
            let mut purposes = Vec::new();
            if let Some(list) = t.opt_strings(sink, "purposes") {
                for item in list.get_ref() {
                    match Purpose::parse(item.get_ref()) {
                        Ok(p) => purposes.push(p),
                        Err(e) => sink.error(&item.span(), e.to_string()),
                    }
                }
            }
            let condition = t.req_non_empty(sink, "condition");
            let cite = t.req_non_empty(sink, "cite");
            let minimised_only = t.opt_bool(sink, "minimised_only").is_none_or(|b| *b.get_ref());
            if let (Some(id), Some(condition), Some(cite)) = (tid, condition, cite) {
                transfers.push(Transfer { id, to, purposes, condition, cite, minimised_only });
            }
        }
        if let Some(localisation) = localisation {
            residency = Some(ParsedResidency {
                home_regions,
                localisation,
                in_country_collection,
                minimised_fields,
                transfers: transfers_given.then_some(transfers),
            });
        }
    }

    // [rights]
    let mut rights = Rights::default();
    if let Some((table, span)) = root.table(sink, "rights", false) {
        let r = Table::new(sink, table, span, "[rights]", RIGHTS_KEYS);
        rights.deadline = r.opt_str(sink, "deadline").and_then(|v| period(sink, &v, "deadline"));
        rights.extension = r.opt_str(sink, "extension").and_then(|v| period(sink, &v, "extension"));
        if let Some(age) = r.opt_int(sink, "age_of_digital_consent") {
            match u8::try_from(*age.get_ref()) {
                Ok(a) if (1..=25).contains(&a) => rights.age_of_digital_consent = Some(a),
                _ => sink.error(&age.span(), "`age_of_digital_consent` must be between 1 and 25"),
            }
        }
        rights.cite = r.opt_str(sink, "cite").map(|s| (*s.get_ref()).to_owned());
    }

    // [obligations.<id>], [lifetimes.<id>], [windows.<id>], [registers.<id>]: author-chosen ids.
    let mut obligations: Vec<(Obligation, Span)> = Vec::new();
    named_tables(sink, &root, "obligations", "an obligation", OBLIGATION_KEYS, |sink, id, t, key_span| {
        if let Some(text) = t.req_non_empty(sink, "text") {
            obligations.push((Obligation { id: id.to_owned(), text }, key_span));
        }
    });
    let mut lifetimes: Vec<(Lifetime, Span)> = Vec::new();
    named_tables(sink, &root, "lifetimes", "a lifetime", LIFETIME_KEYS, |sink, id, t, key_span| {
        let mut kinds = [None; 3];
        for kind in ConsentKind::ALL {
            if let Some(v) = t.opt_str(sink, kind.as_str()) {
                let value =
                    if *v.get_ref() == "unlimited" { Some(None) } else { period(sink, &v, kind.as_str()).map(Some) };
                if let Some(slot) = kinds.get_mut(kind.index()) {
                    *slot = value;
                }
            }
        }
        if kinds.iter().all(Option::is_none) {
            sink.error(&key_span, "a lifetime must accept at least one consent kind");
        }
        let line = sink.line_of(&key_span);
        if let Some(cite) = t.req_non_empty(sink, "cite") {
            lifetimes.push((Lifetime { id: id.to_owned(), kinds, cite, line }, key_span));
        }
    });
    let mut windows: Vec<(CallingWindow, Span)> = Vec::new();
    named_tables(sink, &root, "windows", "a calling window", WINDOW_KEYS, |sink, id, t, key_span| {
        let mut days: [Vec<(u16, u16)>; 7] = Default::default();
        for (day, name) in days.iter_mut().zip(WEEKDAYS) {
            let Some(list) = t.opt_strings(sink, name) else { continue };
            for item in list.get_ref() {
                match parse_slot(item.get_ref()) {
                    Some(slot) if day.iter().any(|s| s.0 < slot.1 && slot.0 < s.1) => {
                        sink.error(&item.span(), "time slot overlaps another slot of the same day");
                    }
                    Some(slot) => day.push(slot),
                    None => sink.error(&item.span(), "time slot must be `HH:MM-HH:MM`, start before end"),
                }
            }
            day.sort_unstable();
        }
        if days.iter().all(Vec::is_empty) {
            sink.warning(&key_span, "calling window has no slots; contact is never allowed");
        }
        let line = sink.line_of(&key_span);
        if let Some(cite) = t.req_non_empty(sink, "cite") {
            windows.push((CallingWindow { id: id.to_owned(), days, cite, line }, key_span));
        }
    });
    let mut registers: Vec<(Register, Span)> = Vec::new();
    named_tables(sink, &root, "registers", "a register", REGISTER_KEYS, |sink, id, t, key_span| {
        let name = t.req_non_empty(sink, "name");
        let cite = t.req_non_empty(sink, "cite");
        let exempt_with_consent = t.opt_bool(sink, "exempt_with_consent").is_some_and(|b| *b.get_ref());
        let line = sink.line_of(&key_span);
        if let (Some(name), Some(cite)) = (name, cite) {
            registers.push((Register { id: id.to_owned(), name, cite, exempt_with_consent, line }, key_span));
        }
    });
    // One namespace: obligations, lifetimes, windows and registers are all named by id in rules
    // and decisions, so an id may be defined only once per pack.
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let all_names = obligations
        .iter()
        .map(|(o, s)| (o.id.clone(), s.clone()))
        .chain(lifetimes.iter().map(|(o, s)| (o.id.clone(), s.clone())))
        .chain(windows.iter().map(|(o, s)| (o.id.clone(), s.clone())))
        .chain(registers.iter().map(|(o, s)| (o.id.clone(), s.clone())))
        .collect::<Vec<_>>();
    for (name, span) in all_names {
        let line = sink.line_of(&span);
        if BUILTIN_OBLIGATIONS.contains(&name.as_str()) {
            sink.error(&span, format!("`{name}` is a reserved obligation id"));
        } else if let Some(first) = names.get(&name) {
            sink.error(&span, format!("`{name}` is already defined at line {first}"));
        } else {
            names.insert(name, line);
        }
    }

    // A reference not defined here is an error, unless an extended pack may define it.
    let mut used: Vec<String> = Vec::new();
    let mut resolve = |sink: &mut Sink<'_>, header: &mut Header, kind: RefKind, name: &str, span: &Span| {
        let local = match kind {
            RefKind::Obligation => obligations.iter().any(|(o, _)| o.id == name),
            RefKind::Lifetime => lifetimes.iter().any(|(o, _)| o.id == name),
            RefKind::Window => windows.iter().any(|(o, _)| o.id == name),
            RefKind::Register => registers.iter().any(|(o, _)| o.id == name),
            RefKind::Replaces => false,
        };
        if local {
            used.push(name.to_owned());
        } else if header.extends.is_some() {
            header.unresolved.push((kind, name.to_owned(), span.clone()));
        } else {
            sink.error(span, kind.undefined());
        }
    };

    // [[rule]]
    let mut rules: Vec<ParsedRule> = Vec::new();
    let mut rule_lines: BTreeMap<String, usize> = BTreeMap::new();
    let mut covered: BTreeMap<(Purpose, Channel), Vec<(usize, usize)>> = BTreeMap::new();
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
        let from = opt_instant(sink, &r, "effective_from");
        let until = opt_instant(sink, &r, "effective_until");
        check_range(sink, from.as_ref(), until.as_ref());
        let mut channels = Vec::new();
        let mut channel_spans = Vec::new();
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
                        channels.push(c);
                        channel_spans.push(item.span());
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
                if rule_obligations.iter().any(|o: &String| o == name) {
                    sink.error(&item.span(), "obligation listed twice");
                } else {
                    resolve(sink, &mut header, RefKind::Obligation, name, &item.span());
                    rule_obligations.push(name.to_owned());
                }
            }
            if basis.is_some_and(|b| !b.can_allow()) && !list.get_ref().is_empty() {
                sink.warning(&list.span(), "obligations on a prohibited rule are never attached to a decision");
            }
        }
        let reference = |sink: &mut Sink<'_>, key: &str| -> Option<Spanned<String>> {
            r.opt_str(sink, key).map(|v| Spanned::new(v.span(), (*v.get_ref()).to_owned()))
        };
        let lifetime = reference(sink, "lifetime");
        let window = reference(sink, "window");
        let screen = reference(sink, "screen");
        for (kind, value) in [(RefKind::Lifetime, &lifetime), (RefKind::Window, &window), (RefKind::Register, &screen)]
        {
            if let Some(v) = value {
                resolve(sink, &mut header, kind, v.get_ref(), &v.span());
            }
        }
        if let (Some(b), Some(l)) = (basis, &lifetime)
            && !matches!(b, Basis::OptIn | Basis::DoubleOptIn | Basis::SoftOptIn)
        {
            sink.error(&l.span(), format!("`lifetime` only applies to consent-based rules, not `{b}`"));
        }
        let mut conditions = Vec::new();
        if let Some(list) = r.opt_strings(sink, "conditions") {
            if basis != Some(Basis::SoftOptIn) {
                sink.error(&list.span(), "`conditions` only applies to `soft_opt_in` rules");
            }
            for item in list.get_ref() {
                match SoftCondition::parse(item.get_ref()) {
                    Some(c) if conditions.contains(&c) => sink.error(&item.span(), "condition listed twice"),
                    Some(c) => conditions.push(c),
                    None => sink.error(&item.span(), SoftCondition::expected()),
                }
            }
            if list.get_ref().is_empty() {
                sink.error(&list.span(), "`conditions` must name at least one condition");
            }
        } else if basis == Some(Basis::SoftOptIn) {
            conditions = SoftCondition::ALL.to_vec();
        }
        let mut replaces = Vec::new();
        let mut replaces_spans = Vec::new();
        if let Some(list) = r.opt_strings(sink, "replaces") {
            if extends.is_none() {
                sink.error(&list.span(), "`replaces` needs `extends` in [pack]: only inherited rules can be replaced");
            }
            for item in list.get_ref() {
                if extends.is_some() {
                    resolve(sink, &mut header, RefKind::Replaces, item.get_ref(), &item.span());
                }
                replaces.push((*item.get_ref()).to_owned());
                replaces_spans.push(item.span());
            }
        }
        let note = r.opt_str(sink, "note").map(|s| (*s.get_ref()).to_owned());
        let Some(rule_id) = rule_id else { continue };
        let rule = Rule {
            id: rule_id,
            purpose: purpose.unwrap_or(Purpose::Marketing),
            channels,
            basis: basis.unwrap_or(Basis::Prohibited),
            cite: cite.clone().unwrap_or_default(),
            source: source_note,
            confidence: confidence.unwrap_or(Confidence::Uncertain),
            obligations: rule_obligations,
            note,
            line,
            effective_from: from.as_ref().map(|v| *v.get_ref()),
            effective_until: until.as_ref().map(|v| *v.get_ref()),
            lifetime: lifetime.as_ref().map(|v| v.get_ref().clone()),
            window: window.as_ref().map(|v| v.get_ref().clone()),
            screen: screen.as_ref().map(|v| v.get_ref().clone()),
            conditions,
            replaces,
            pack_id: pack_id.clone().unwrap_or_default(),
            path: source.path.clone(),
        };
        // Two rules for one cell in force at the same time would make the decision depend on
        // rule order; rules with disjoint effective periods may share a cell.
        if let Some(p) = purpose {
            let index = rules.len();
            for (c, cspan) in rule.channels.iter().zip(&channel_spans) {
                let entry = covered.entry((p, *c)).or_default();
                for &(other, other_line) in entry.iter() {
                    if let Some(o) = rules.get(other).map(|o| &o.rule)
                        && o.overlaps_in_time(&rule)
                    {
                        sink.error(
                            cspan,
                            format!("{p} by {c} is already covered by rule `{}` at line {other_line}", o.id),
                        );
                    }
                }
                entry.push((index, line));
            }
        }
        if purpose.is_some() && channels_ok && basis.is_some() && cite.is_some() && confidence.is_some() {
            rules.push(ParsedRule { rule, span: span.clone(), window_span: window.map(|v| v.span()), replaces_spans });
        }
    }
    if kind != PackKind::Baseline {
        for (obligation, span) in &obligations {
            if !used.contains(&obligation.id) {
                sink.warning(span, "obligation is not used by any rule");
            }
        }
    }
    if rule_tables.is_empty() && extends.is_none() {
        sink.warning(&pack_span, "pack has no rules; every decision is a default deny");
    }

    if sink.has_errors() {
        return (None, header);
    }
    let (Some(id), Some(version), Some(title)) = (pack_id, version, title) else {
        return (None, header);
    };
    let jurisdiction = header.jurisdiction.as_ref().map(|j| j.get_ref().clone());
    if jurisdiction.is_none() && kind == PackKind::Jurisdiction {
        return (None, header);
    }
    let parsed = Parsed {
        schema,
        id,
        version,
        title,
        kind,
        jurisdiction,
        owners,
        references,
        effective_from: effective_from.map(|v| *v.get_ref()),
        effective_until: effective_until.map(|v| *v.get_ref()),
        time_zones,
        residency,
        rights,
        obligations,
        lifetimes,
        windows,
        registers,
        rules,
        pack_span,
        revision: hex::encode(Sha256::digest(source.text.as_bytes())),
        path: source.path.clone(),
    };
    (Some(parsed), header)
}

/// Walks `[<key>.<id>]` tables whose keys are author-chosen ids.
fn named_tables<'t, 'i>(
    sink: &mut Sink<'_>,
    root: &Table<'t, 'i>,
    key: &str,
    what: &'static str,
    known: &[&str],
    mut each: impl FnMut(&mut Sink<'_>, &str, &Table<'t, 'i>, Span),
) {
    let Some((table, _)) = root.table(sink, key, false) else { return };
    for (name, value) in table.iter() {
        let name_text: &str = name.get_ref().as_ref();
        if !is_id_segment(name_text) {
            sink.error(
                &name.span(),
                format!("{} id must be `a-z`, `0-9`, `_` or `-`", &what[what.find(' ').map_or(0, |i| i + 1)..]),
            );
            continue;
        }
        let toml::de::DeValue::Table(body) = value.get_ref() else {
            sink.error(&value.span(), format!("{what} must be a table"));
            continue;
        };
        let body = Table::new(sink, body, value.span(), what, known);
        each(sink, name_text, &body, name.span());
    }
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
    use crate::{Pack, PackSet};

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
        assert_eq!(pack.jurisdiction().map(ToString::to_string).as_deref(), Some("FR"));
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
