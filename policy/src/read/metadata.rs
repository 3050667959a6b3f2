//! The schema version and `[pack]`: what the pack is, which jurisdiction it answers for, what it
//! extends, and when it is in force. Read first: the schema decides how everything else is read,
//! and `extends` decides whether later tables may leave things to the packs extended.

use domicile_types::Jurisdiction;
use toml::Spanned;
use toml::de::DeTable;

use super::document::{Span, Table, integer};
use super::values::{check_range, is_id_segment, opt_instant, owned_strings};
use crate::diag::Sink;
use crate::model::PackKind;
use crate::zone::Zone;

/// The newest schema version this engine reads. A pack declaring another version is refused
/// rather than half-understood. Schema 2 adds nothing schema 1 packs cannot use; it makes
/// coverage strict: a purpose × channel no rule decides is an error, not a warning.
pub const SCHEMA_VERSION: i64 = 2;
/// The oldest schema version still read.
pub const MIN_SCHEMA_VERSION: i64 = 1;

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

/// `[pack]` as read; a value with a problem is `None` (its diagnostic is on the sink).
pub(crate) struct PackTable {
    /// The `[pack]` table, where pack-wide problems (coverage gaps, missing residency) are shown.
    pub(crate) span: Span,
    pub(crate) id: Option<Spanned<String>>,
    pub(crate) kind: PackKind,
    pub(crate) jurisdiction: Option<Spanned<Jurisdiction>>,
    pub(crate) version: Option<String>,
    pub(crate) title: Option<String>,
    pub(crate) extends: Option<Spanned<String>>,
    pub(crate) owners: Vec<String>,
    pub(crate) references: Vec<String>,
    pub(crate) effective_from: Option<Spanned<i64>>,
    pub(crate) effective_until: Option<Spanned<i64>>,
    pub(crate) time_zones: Vec<Zone>,
}

pub(crate) fn schema_message(found: i64) -> String {
    format!("unsupported schema {found}; this engine reads schema {MIN_SCHEMA_VERSION} to {SCHEMA_VERSION}")
}

/// The file's `schema`, checked before anything else; `None` (reported) when it is missing,
/// not an integer or not a version this engine reads.
pub(crate) fn schema(sink: &mut Sink<'_>, root: &DeTable<'_>) -> Option<i64> {
    match root.get("schema") {
        None => {
            sink.error(
                &(0..0),
                format!("missing key `schema`; this engine reads schema {MIN_SCHEMA_VERSION} to {SCHEMA_VERSION}"),
            );
            None
        }
        Some(value) => match integer(sink, value, "schema") {
            Some(v) if (MIN_SCHEMA_VERSION..=SCHEMA_VERSION).contains(v.get_ref()) => Some(*v.get_ref()),
            Some(v) => {
                sink.error(&v.span(), schema_message(*v.get_ref()));
                None
            }
            None => None,
        },
    }
}

fn is_pack_id(s: &str) -> bool {
    s.len() <= 32 && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase()) && is_id_segment(s)
}

fn is_version(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

/// Reads `[pack]` (required).
pub(crate) fn read(sink: &mut Sink<'_>, root: &Table<'_, '_>) -> PackTable {
    let mut pack = PackTable {
        span: 0..0,
        id: None,
        kind: PackKind::Jurisdiction,
        jurisdiction: None,
        version: None,
        title: None,
        extends: None,
        owners: Vec::new(),
        references: Vec::new(),
        effective_from: None,
        effective_until: None,
        time_zones: Vec::new(),
    };
    let Some((table, span)) = root.table(sink, "pack", true) else { return pack };
    let meta = Table::new(sink, table, span.clone(), "[pack]", PACK_KEYS);
    pack.span = span;
    if let Some(v) = meta.req_str(sink, "id") {
        if is_pack_id(v.get_ref()) {
            pack.id = Some(Spanned::new(v.span(), (*v.get_ref()).to_owned()));
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
            "baseline" => pack.kind = PackKind::Baseline,
            _ => sink.error(&v.span(), "unknown kind; expected one of `jurisdiction`, `baseline`"),
        }
    }
    if pack.kind == PackKind::Baseline {
        // A baseline answers for no jurisdiction by itself; packs opt in with `extends`.
        if let Some(v) = meta.get("jurisdiction") {
            sink.error(&v.span(), "a baseline answers for no jurisdiction; jurisdiction packs name it in `extends`");
        }
    } else if let Some(v) = meta.req_str(sink, "jurisdiction") {
        match Jurisdiction::parse(v.get_ref()) {
            Ok(j) => pack.jurisdiction = Some(Spanned::new(v.span(), j)),
            Err(e) => sink.error(&v.span(), e.to_string()),
        }
    }
    if let Some(v) = meta.req_str(sink, "version") {
        if is_version(v.get_ref()) {
            pack.version = Some((*v.get_ref()).to_owned());
        } else {
            sink.error(&v.span(), "version must be 1-64 characters of letters, digits, `.`, `_`, `+` or `-`");
        }
    }
    pack.title = meta.req_non_empty(sink, "title");
    if let Some(v) = meta.opt_str(sink, "extends") {
        if is_pack_id(v.get_ref()) {
            pack.extends = Some(Spanned::new(v.span(), (*v.get_ref()).to_owned()));
        } else {
            sink.error(&v.span(), "`extends` must name a pack id");
        }
    }
    pack.owners = owned_strings(sink, &meta, "owners");
    pack.references = owned_strings(sink, &meta, "references");
    pack.effective_from = opt_instant(sink, &meta, "effective_from");
    pack.effective_until = opt_instant(sink, &meta, "effective_until");
    check_range(sink, pack.effective_from.as_ref(), pack.effective_until.as_ref());
    if let Some(list) = meta.opt_strings(sink, "time_zones") {
        for item in list.get_ref() {
            match Zone::parse(item.get_ref()) {
                Some(z) if pack.time_zones.contains(&z) => sink.error(&item.span(), "time zone listed twice"),
                Some(z) => pack.time_zones.push(z),
                None => sink.error(&item.span(), "unknown time zone; use an IANA name such as `Europe/Paris`"),
            }
        }
    }
    pack
}
