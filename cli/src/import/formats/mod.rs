//! Source formats read into [`ImportRow`]s, streaming: [`rows`] holds one source record at a time
//! (at most 1 MiB of it, `split::MAX_RECORD_BYTES`) and the rows made from it, whatever the size of
//! the file, so memory stays flat over a file of millions of records.
//!
//! | format | file | records |
//! |---|---|---|
//! | `onetrust` | `onetrust.rs` | consent receipts: a JSON array, or one JSON object per line |
//! | `fides` | `fides.rs` | `ConsentReportingSchema` rows: a JSON array, or one per line |
//! | `transcend` | `transcend.rs` | consent CSV (RFC 4180) with a header row |
//! | `ketch` | `ketch.rs` | `ConsentRequest`s, one per line (a JSON array is read too) |
//! | `ndjson` | `ndjson.rs` | Domicile's own rows, one per line (a JSON array is read too) |
//!
//! Rules shared by every format: a jurisdiction is normalised to ISO form (`de`, `us_ca` → `DE`,
//! `US-CA`); a code that is not one is looked up in the mapping's aliases, else the row is refused;
//! a record without one takes the mapping's declared default, else is refused on `jurisdiction`.
//! Identifiers are normalised as the node would (`NormalizedIdentifier`), so a malformed one is
//! refused here with its line and field; a record with none is refused on `identifier`. Every
//! error names the line where the record starts and the field, never the field's value.

mod csv;
mod fides;
mod ketch;
mod ndjson;
mod onetrust;
mod split;
mod transcend;

#[cfg(test)]
mod samples;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::BufRead;

use domicile_types::{ConsentAction, IdentifierKind, Jurisdiction, NormalizedIdentifier};
use serde_json::{Map, Value};

use super::mapping::{Mapping, Target};
use super::row::{ImportRow, RowError};

/// A source format `domicile import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    OneTrust,
    Fides,
    Transcend,
    Ketch,
    Ndjson,
}

impl Format {
    pub const ALL: &'static [Format] =
        &[Format::OneTrust, Format::Fides, Format::Transcend, Format::Ketch, Format::Ndjson];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::OneTrust => "onetrust",
            Format::Fides => "fides",
            Format::Transcend => "transcend",
            Format::Ketch => "ketch",
            Format::Ndjson => "ndjson",
        }
    }

    /// `onetrust`, `fides`, `transcend`, `ketch` or `ndjson`.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL.iter().copied().find(|f| f.as_str() == text).ok_or_else(|| {
            let names = Self::ALL.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", ");
            format!("unknown import format: expected one of {names}")
        })
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rows of `input`, read as `format` through `mapping`, in file order: for each source
/// record its rows, or the errors of the record or of its fields (a record with one bad purpose
/// still gives the rows of its other purposes). Reading goes on after a bad record.
pub fn rows<R: BufRead>(
    format: Format,
    input: R,
    mapping: &Mapping,
) -> impl Iterator<Item = Result<ImportRow, RowError>> {
    let source = match format {
        Format::Transcend => Source::Csv(transcend::Reader::new(input)),
        _ => Source::Json(split::JsonRecords::new(input)),
    };
    Rows { format, mapping, source, pending: VecDeque::new() }
}

type Out = VecDeque<Result<ImportRow, RowError>>;

enum Source<R> {
    Json(split::JsonRecords<R>),
    Csv(transcend::Reader<R>),
}

struct Rows<'m, R> {
    format: Format,
    mapping: &'m Mapping,
    source: Source<R>,
    /// The rows of the current record not yet handed out.
    pending: Out,
}

impl<R: BufRead> Iterator for Rows<'_, R> {
    type Item = Result<ImportRow, RowError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item.and_then(accepted_by_the_node));
            }
            match &mut self.source {
                Source::Csv(reader) => {
                    if !reader.next_into(self.mapping, &mut self.pending) && self.pending.is_empty() {
                        return None;
                    }
                }
                Source::Json(records) => match records.next()?.and_then(|(line, text)| object(line, &text)) {
                    Err(e) => return Some(Err(e)),
                    Ok((line, record)) => {
                        let (mapping, out) = (self.mapping, &mut self.pending);
                        match self.format {
                            Format::OneTrust => onetrust::convert(line, &record, mapping, out),
                            Format::Fides => fides::convert(line, &record, mapping, out),
                            Format::Ketch => ketch::convert(line, &record, mapping, out),
                            Format::Ndjson => ndjson::convert(line, &record, mapping, out),
                            // Read by `Source::Csv`, never as JSON.
                            Format::Transcend => {}
                        }
                    }
                },
            }
        }
    }
}

/// A record's text as a JSON object. serde_json's messages say what was expected where, never
/// the text found, and only the position is kept.
fn object(line: usize, text: &str) -> Result<(usize, Map<String, Value>), RowError> {
    match serde_json::from_str::<Value>(text.trim_end()) {
        Ok(Value::Object(map)) => Ok((line, map)),
        Ok(_) => Err(RowError::new(line, "record", "not a JSON object")),
        Err(e) => {
            let at = line + e.line().saturating_sub(1);
            Err(RowError::new(line, "record", format!("not valid JSON (at line {at}, column {})", e.column())))
        }
    }
}

/// What a source record's rows have in common.
struct Common {
    line: usize,
    source_system: String,
    /// The record's own id, else its content hash; rows of one purpose key get `#<key>`.
    base_id: String,
    identifiers: Vec<(String, String)>,
    jurisdiction: String,
    captured_at_ms: i64,
    notice_version: String,
}

impl Common {
    /// `expires_at_ms` (milliseconds) becomes the row's `expires_at` in seconds, for a grant only.
    fn row(&self, key: Option<&str>, target: &Target, action: ConsentAction, expires_at_ms: Option<i64>) -> ImportRow {
        ImportRow {
            line: self.line,
            source_system: self.source_system.clone(),
            source_event_id: key.map_or_else(|| self.base_id.clone(), |k| format!("{}#{k}", self.base_id)),
            identifiers: self.identifiers.clone(),
            jurisdiction: self.jurisdiction.clone(),
            purpose: target.purpose,
            channels: target.channels.clone(),
            action,
            captured_at_ms: self.captured_at_ms,
            expires_at: expires_at_ms.filter(|_| action == ConsentAction::Grant).map(|ms| ms.div_euclid(1000)),
            notice_version: self.notice_version.clone(),
        }
    }
}

/// A string member with visible content.
fn text<'v>(record: &'v Map<String, Value>, key: &str) -> Option<&'v str> {
    record.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// The record's jurisdiction in ISO form (`field` is where the source keeps it), else the
/// mapping's declared default when the record has none.
fn jurisdiction(line: usize, raw: Option<&str>, field: &str, mapping: &Mapping) -> Result<String, RowError> {
    let raw = raw.map(str::trim).filter(|r| !r.is_empty());
    let Some(raw) = raw else {
        return mapping.default_jurisdiction().map(str::to_owned).ok_or_else(|| {
            let why = format!("the record has no `{field}` and the mapping declares no [jurisdiction] default");
            RowError::new(line, "jurisdiction", why)
        });
    };
    if let Ok(iso) = Jurisdiction::parse(&raw.replace('_', "-")) {
        return Ok(iso.to_string());
    }
    mapping.jurisdiction_alias(raw).map(str::to_owned).ok_or_else(|| {
        let why = format!("`{field}` is neither an ISO 3166-1/3166-2 code nor an alias in the mapping");
        RowError::new(line, "jurisdiction", why)
    })
}

/// An identifier as the node will hold it; the error names the kind and why, never the value.
fn identifier(line: usize, field: &str, kind: IdentifierKind, raw: &str) -> Result<(String, String), RowError> {
    NormalizedIdentifier::normalize(kind, raw)
        .map(|id| (kind.as_str().to_owned(), id.expose_value().to_owned()))
        .map_err(|e| RowError::new(line, field, e.to_string()))
}

/// How a source writes epoch numbers.
#[derive(Clone, Copy)]
enum Epoch {
    Seconds,
    Millis,
}

/// Milliseconds since the epoch from an RFC 3339 string, an epoch number (or a string of
/// digits) in the source's unit, or, where the source documents UTC (`naive_utc`), a date-time
/// without an offset. `None` for anything else, and for times before 1970 or after 9999.
fn time_ms(value: &Value, epoch: Epoch, naive_utc: bool) -> Option<i64> {
    let from_epoch = |n: i64| {
        let ms = match epoch {
            Epoch::Seconds => n.checked_mul(1000)?,
            Epoch::Millis => n,
        };
        (ms >= 0).then(|| jiff::Timestamp::from_millisecond(ms).ok().map(|t| t.as_millisecond())).flatten()
    };
    match value {
        Value::Number(n) => from_epoch(n.as_i64()?),
        Value::String(s) => {
            let s = s.trim();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                return from_epoch(s.parse().ok()?);
            }
            let at = match s.parse::<jiff::Timestamp>() {
                Ok(t) => t,
                Err(_) if naive_utc => {
                    jiff::tz::Offset::UTC.to_timestamp(s.parse::<jiff::civil::DateTime>().ok()?).ok()?
                }
                Err(_) => return None,
            };
            (at.as_millisecond() >= 0).then_some(at.as_millisecond())
        }
        _ => None,
    }
}

/// A row whose source system or event id the node would refuse (`domicile_types::
/// is_import_token`), refused here with the field named: an id
/// such as an e-mail address is then never sent, nor written back into its receipt.
fn accepted_by_the_node(row: ImportRow) -> Result<ImportRow, RowError> {
    let token = domicile_types::is_import_token;
    if !token(&row.source_system) {
        return Err(RowError::new(row.line, "source_system", "1 to 128 letters, digits and `._:/#-`"));
    }
    if !token(&row.source_event_id) {
        return Err(RowError::new(
            row.line,
            "source_event_id",
            "1 to 128 letters, digits and `._:/#-` (with `#<purpose key>` added where a record gives several rows)",
        ));
    }
    Ok(row)
}

/// Whether `text` is a token: letters, digits, `.`, `_`, `:`, `-`, at most `max` bytes.
fn is_token(text: &str, max: usize) -> bool {
    !text.is_empty() && text.len() <= max && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// A notice version from the source, which must be a token of at most 64 bytes.
fn notice_version(line: usize, field: &str, raw: Option<&str>) -> Result<String, RowError> {
    match raw.map(str::trim).filter(|r| !r.is_empty()) {
        None => Ok(String::new()),
        Some(v) if is_token(v, 64) => Ok(v.to_owned()),
        Some(_) => Err(RowError::new(line, field, "not a notice version: letters, digits and `._:-`, at most 64")),
    }
}

/// The source's own event or receipt id: printable ASCII without spaces or `#`, at most 128.
fn own_id(line: usize, field: &str, raw: &Value) -> Result<String, RowError> {
    let id = match raw {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) if n.is_u64() => n.to_string(),
        _ => String::new(),
    };
    let ok = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
    if ok { Ok(id) } else { Err(RowError::new(line, field, "not an event id: 1 to 128 printable characters, no `#`")) }
}

/// The record's id: its own where it has one (`id`: member of the record holding it), else the
/// SHA-256 of its canonical content (keys sorted, no spaces), 32 hex characters.
fn record_id(line: usize, own: Option<(&str, &Value)>, record: &Map<String, Value>) -> Result<String, RowError> {
    if let Some((field, raw)) = own {
        return own_id(line, field, raw);
    }
    let mut canonical = String::new();
    write_object(record, &mut canonical);
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(canonical.as_bytes());
    let mut hex = String::with_capacity(32);
    for byte in digest.iter().take(16) {
        let _ = write!(hex, "{byte:02x}");
    }
    Ok(hex)
}

fn write_object(map: &Map<String, Value>, out: &mut String) {
    let mut members: Vec<_> = map.iter().collect();
    members.sort_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (key, member)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::from(key.as_str()).to_string());
        out.push(':');
        write_canonical(member, out);
    }
    out.push('}');
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => write_object(map, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The mapping's entry for a source purpose. A key that is not a token (it may be personal data
/// put in the wrong place) is named by its position instead of its text.
fn target<'m>(
    line: usize,
    mapping: &'m Mapping,
    source: &str,
    key: &str,
    index: usize,
) -> Result<&'m Target, RowError> {
    mapping.purpose(source, key).ok_or_else(|| {
        let field = if is_token(key, 64) { format!("purposes.{key}") } else { format!("purposes[{index}]") };
        let why = format!("no [[purpose]] entry for this {source} purpose in mapping version {}", mapping.version());
        RowError::new(line, field, why)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_id_or_source_the_node_would_refuse_is_refused_by_field_never_echoed() {
        let mapping = Mapping::parse(
            "version = \"1\"\n[[purpose]]\nsource = \"*\"\nkey = \"k\"\nmaps_to = \"marketing\"\nchannels = [\"email\"]\n",
            "m",
        )
        .unwrap();
        let line = |system: &str, id: &str| {
            format!(
                "{{\"source_system\":\"{system}\",\"source_event_id\":\"{id}\",\"identifiers\":[{{\"kind\":\"email\",\"value\":\"a@example.com\"}}],\"jurisdiction\":\"DE\",\"purpose\":\"marketing\",\"channels\":[\"email\"],\"action\":\"grant\",\"captured_at\":\"2026-01-01T10:00:00Z\"}}\n"
            )
        };
        let text =
            [line("crm", "jane@x.com"), line("crm", &"e".repeat(129)), line("crm+x", "e1"), line("crm", "ok/1:a")]
                .concat();
        let out: Vec<_> = rows(Format::Ndjson, text.as_bytes(), &mapping).collect();
        let fields: Vec<&str> = out.iter().filter_map(|r| r.as_ref().err()).map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["source_event_id", "source_event_id", "source_system"]);
        for e in out.iter().filter_map(|r| r.as_ref().err()) {
            assert!(!e.to_string().contains("jane") && !e.to_string().contains("crm+x"), "{e}");
        }
        assert_eq!(out[3].as_ref().map(|r| r.source_event_id.as_str()), Ok("ok/1:a"));
    }

    #[test]
    fn formats_parse_by_name() {
        for f in Format::ALL {
            assert_eq!(f.as_str().parse::<Format>(), Ok(*f));
        }
        assert!(Format::parse("OneTrust").is_err());
    }

    #[test]
    fn times_are_read_in_the_sources_units() {
        let ms = |v: Value, e, naive| time_ms(&v, e, naive);
        assert_eq!(ms(json!("2025-03-01T10:00:00Z"), Epoch::Millis, false), Some(1_740_823_200_000));
        assert_eq!(ms(json!("2025-03-01T11:00:00+01:00"), Epoch::Millis, false), Some(1_740_823_200_000));
        assert_eq!(ms(json!("2025-03-01T10:00:00"), Epoch::Millis, false), None);
        assert_eq!(ms(json!("2025-03-01T10:00:00.5"), Epoch::Millis, true), Some(1_740_823_200_500));
        assert_eq!(ms(json!(1_740_823_200), Epoch::Seconds, false), Some(1_740_823_200_000));
        assert_eq!(ms(json!("1740823200000"), Epoch::Millis, false), Some(1_740_823_200_000));
        assert_eq!(ms(json!(1_740_823_200_000_i64), Epoch::Seconds, false), None, "ms where seconds are documented");
        assert_eq!(ms(json!(-5), Epoch::Seconds, false), None);
        assert_eq!(ms(json!("yesterday"), Epoch::Seconds, true), None);
    }

    #[test]
    fn jurisdictions_are_normalised_or_refused_without_their_value() {
        let with_default = Mapping::parse(
            "version = \"1\"\n[jurisdiction]\ndefault = \"FR\"\naliases = { ccpa = \"US-CA\" }\n[[purpose]]\nsource = \"*\"\nkey = \"k\"\nmaps_to = \"marketing\"\nchannels = [\"email\"]\n",
            "m",
        )
        .unwrap();
        let ok = |raw| jurisdiction(1, raw, "geo", &with_default);
        assert_eq!(ok(Some("de")).unwrap(), "DE");
        assert_eq!(ok(Some("us_ca")).unwrap(), "US-CA");
        assert_eq!(ok(Some(" US ")).unwrap(), "US");
        assert_eq!(ok(Some("CCPA")).unwrap(), "US-CA");
        assert_eq!(ok(None).unwrap(), "FR");
        assert_eq!(ok(Some("")).unwrap(), "FR");
        let err = ok(Some("Atlantis")).unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (1, "jurisdiction"));
        assert!(!err.reason.contains("Atlantis"), "{err}");
        let without = Mapping::parse(
            "version = \"1\"\n[[purpose]]\nsource = \"*\"\nkey = \"k\"\nmaps_to = \"marketing\"\nchannels = [\"email\"]\n",
            "m",
        )
        .unwrap();
        let err = jurisdiction(4, None, "geo", &without).unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (4, "jurisdiction"));
    }

    #[test]
    fn content_ids_ignore_key_order_and_are_32_hex() {
        let id = |v: Value| record_id(1, None, v.as_object().unwrap()).unwrap();
        let a = id(json!({"b": 1, "a": {"y": [1, "x"], "x": null}}));
        assert_eq!(a, id(json!({"a": {"x": null, "y": [1, "x"]}, "b": 1})));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, id(json!({"b": 2})));
        let err = record_id(3, Some(("id", &json!("has space"))), &Map::new()).unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (3, "id"));
    }

    #[test]
    fn unmapped_purposes_are_named_by_key_unless_the_key_looks_like_data() {
        let m = Mapping::parse(
            "version = \"v7\"\n[[purpose]]\nsource = \"*\"\nkey = \"k\"\nmaps_to = \"marketing\"\nchannels = [\"email\"]\n",
            "m",
        )
        .unwrap();
        assert_eq!(target(2, &m, "ketch", "C0009", 0).unwrap_err().field, "purposes.C0009");
        let err = target(2, &m, "ketch", "anna@example.com", 3).unwrap_err();
        assert_eq!(err.field, "purposes[3]");
        assert!(err.reason.contains("v7") && !err.reason.contains("anna"));
    }
}
