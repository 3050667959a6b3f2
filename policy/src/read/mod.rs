//! Reading: pack files and pack test files, from TOML text to model values, every problem
//! reported at its own `path:line:column` (`diag.rs`) and all of them in one run.
//!
//! A pack file is read table by table, one module each, in file-independent order: the schema
//! and `[pack]` (`metadata`), `[residency]`, `[rights]`, the named definitions
//! (`[obligations.<id>]`, `[lifetimes.<id>]`, `[windows.<id>]`, `[registers.<id>]`, `[minors.<id>]`, sharing one
//! namespace: `refs`), then `[[rule]]`. Reading checks a file on its own; what needs other packs
//! (`extends`, inherited references, coverage) is `compile`'s. `document` is the typed reader over
//! toml's spanned tree, `values` the value readers the tables share, `cases` the test files,
//! `calendar` the holiday calendar files (`holidays.toml`).

pub(crate) mod calendar;
pub(crate) mod cases;
mod document;
mod lifetimes;
mod metadata;
mod minors;
mod named;
mod obligations;
mod refs;
mod registers;
mod residency;
mod rights;
mod rules;
mod signals;
mod values;
mod windows;

use domicile_types::Jurisdiction;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::diag::{PackSource, Sink};
use crate::model::pack::Metadata;
use crate::model::{PackKind, PackRef, Rights, Signals};
use crate::zone::Zone;

use document::Span;
pub use metadata::{MIN_SCHEMA_VERSION, SCHEMA_VERSION};
use refs::Definitions;
pub(crate) use refs::RefKind;
use residency::ParsedResidency;
use rules::ParsedRule;

const ROOT_KEYS: &[&str] = &[
    "schema",
    "pack",
    "residency",
    "rights",
    "signals",
    "obligations",
    "lifetimes",
    "windows",
    "registers",
    "minors",
    "rule",
];

/// One pack file, read and checked on its own; `compile` resolves `extends` and references.
pub(crate) struct PackFile {
    pub(crate) meta: Metadata,
    /// The `[pack]` table, where pack-wide problems are shown.
    pub(crate) span: Span,
    /// The file's own `time_zones` (empty: inherited).
    pub(crate) time_zones: Vec<Zone>,
    /// `None`: inherited.
    pub(crate) residency: Option<ParsedResidency>,
    pub(crate) rights: Rights,
    /// As this file states it (each part `None`: inherited).
    pub(crate) signals: Signals,
    pub(crate) definitions: Definitions,
    pub(crate) rules: Vec<ParsedRule>,
}

/// What cross-pack checks need even from a pack file that has errors of its own.
pub(crate) struct Header {
    pub(crate) id: Option<Spanned<String>>,
    pub(crate) jurisdiction: Option<Spanned<Jurisdiction>>,
    pub(crate) baseline: bool,
    pub(crate) extends: Option<Spanned<String>>,
    /// References not defined in this file, to resolve against the packs it extends.
    pub(crate) unresolved: Vec<(RefKind, String, Span)>,
}

/// Reads and validates one pack file on its own. `None` when the file has errors.
pub(crate) fn read_pack(source: &PackSource, sink: &mut Sink<'_>) -> (Option<PackFile>, Header) {
    let mut header = Header { id: None, jurisdiction: None, baseline: false, extends: None, unresolved: Vec::new() };
    let Some(doc) = document::parse_document(sink, &source.text) else {
        return (None, header);
    };
    // The schema decides how everything else is read, so check it before the rest.
    let Some(schema) = metadata::schema(sink, doc.get_ref()) else {
        return (None, header);
    };
    let root = document::Table::new(sink, doc.get_ref(), doc.span(), "the pack file", ROOT_KEYS);

    let pack = metadata::read(sink, &root);
    header.baseline = pack.kind == PackKind::Baseline;
    header.jurisdiction = pack.jurisdiction.clone();
    header.id = pack.id.clone();
    header.extends = pack.extends.clone();
    let extends = pack.extends.is_some();

    let residency = residency::read(sink, &root, !extends);
    let rights = rights::read(sink, &root);
    let signals = signals::read(sink, &root);
    let definitions = Definitions {
        obligations: obligations::read(sink, &root),
        lifetimes: lifetimes::read(sink, &root),
        windows: windows::read(sink, &root),
        registers: registers::read(sink, &root),
        minors: minors::read(sink, &root),
    };
    definitions.check_names(sink);

    let mut refs = refs::References::new(&definitions, extends);
    let pack_id = pack.id.as_ref().map(|s| s.get_ref().as_str());
    let (rules, has_rule_tables) = rules::read(sink, &root, pack_id, &mut refs, &source.path);
    let refs::References { used, unresolved, .. } = refs;
    header.unresolved = unresolved;
    if pack.kind != PackKind::Baseline {
        for (obligation, span) in &definitions.obligations {
            if !used.contains(&obligation.id) {
                sink.warning(span, "obligation is not used by any rule");
            }
        }
    }
    if !has_rule_tables && !extends {
        sink.warning(&pack.span, "pack has no rules; every decision is a default deny");
    }

    if sink.has_errors() {
        return (None, header);
    }
    let (Some(id), Some(version), Some(title)) = (pack.id, pack.version, pack.title) else {
        return (None, header);
    };
    let jurisdiction = pack.jurisdiction.map(|j| j.into_inner());
    if jurisdiction.is_none() && pack.kind == PackKind::Jurisdiction {
        return (None, header);
    }
    let meta = Metadata {
        pack_ref: PackRef { id: id.into_inner(), version },
        schema,
        kind: pack.kind,
        title,
        jurisdiction,
        owners: pack.owners,
        references: pack.references,
        effective_from: pack.effective_from.map(|v| *v.get_ref()),
        effective_until: pack.effective_until.map(|v| *v.get_ref()),
        revision: hex::encode(Sha256::digest(source.text.as_bytes())),
        path: source.path.clone(),
    };
    let file =
        PackFile { meta, span: pack.span, time_zones: pack.time_zones, residency, rights, signals, definitions, rules };
    (Some(file), header)
}

#[cfg(test)]
mod tests {
    use domicile_types::{Channel, Purpose, RegionId};

    use crate::{Localisation, Pack, PackSet, PackSource};

    fn compile(rules: &str) -> Result<Pack, String> {
        let text = format!(
            "schema = 1\n[pack]\nid = \"p\"\njurisdiction = \"FR\"\nversion = \"1\"\ntitle = \"t\"\n\
             [residency]\nhome_regions = [\"eu-central\"]\nlocalisation = \"strict\"\ncite = \"c\"\n{rules}\n[rights]\ndeadline = \"1 month\"\ncite = \"c\"\n"
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
        assert_eq!(pack.rule("p.m").map(|r| r.line), Some(11));
        assert_eq!(pack.default_reason(), "p.default-deny");
        assert_eq!(pack.revision().len(), 64);
        assert_ne!(pack.revision(), compile(&RULE.replace("cite = \"c\"", "cite = \"d\"")).unwrap().revision());
    }

    #[test]
    fn rule_ids_are_namespaced_and_the_default_reason_is_reserved() {
        let reserved = compile(&RULE.replace("p.m", "p.default-deny")).unwrap_err();
        assert!(reserved.contains("12:6: error: rule id is reserved for default-deny decisions"), "{reserved}");
        let bare = compile(&RULE.replace("p.m", "m")).unwrap_err();
        assert!(bare.contains("error: rule id must be `<pack-id>.<name>`"), "{bare}");
        let upper = compile(&RULE.replace("p.m", "p.Marketing")).unwrap_err();
        assert!(upper.contains("error: rule id must be"), "{upper}");
    }

    #[test]
    fn double_listing_is_an_error() {
        let twice = compile(&RULE.replace("[\"email\"]", "[\"email\", \"email\"]")).unwrap_err();
        assert!(twice.contains("14:22: error: channel listed twice"), "{twice}");
    }
}
