//! Transcend consent CSV (`transcend consent upload-consent-preferences`, and the rows of its
//! exports): a header row, then one row per user. Columns are found by name, in any order;
//! others (`updated`, `prompted`, `airgapVersion`, `usp`, `tcf`, `gpp`, per-purpose columns of
//! exports) are read past.
//!
//! | column | row |
//! |---|---|
//! | `userId` | the identifier; its kind from the mapping (`[identifiers] transcend.userId = "email"`), never guessed |
//! | `timestamp` | capture time (RFC 3339, or epoch milliseconds as JavaScript writes them) |
//! | `purposes` | JSON `{"<purpose>": true \| false \| "Auto"}`: one row per purpose, in key order, the purpose the mapping key |
//! | `confirmed` | `false`: the preferences were resolved from defaults, not chosen by the person |
//! | `jurisdiction` | not Transcend's: an optional column for the jurisdiction; without it the mapping's default |
//!
//! `true` → grant, `false` → withdraw. Not imported (skipped, with the reason): a row with
//! `confirmed` = `false` (neither its trues nor its falses are the person's), and a purpose set to
//! `Auto` (left to the consent manager's default). Rows have no event id in Transcend: the source
//! event id is the content hash of the row (column name → value), `#<purpose>` per row.

use std::io::BufRead;

use domicile_types::ConsentAction;
use serde_json::{Map, Value};

use super::csv::Csv;
use super::{Common, Epoch, Out, identifier, jurisdiction, record_id, target, text, time_ms};
use crate::import::mapping::{IdentifierMapping, Mapping};
use crate::import::row::{ImportRow, RowError};

const SOURCE: &str = "transcend";
const REQUIRED: &[&str] = &["userId", "timestamp", "purposes"];

pub(super) struct Reader<R> {
    csv: Csv<R>,
    /// Column names, once the header is read.
    header: Option<Vec<String>>,
    /// The header lacks a column every row needs.
    unreadable: bool,
}

impl<R: BufRead> Reader<R> {
    pub(super) fn new(input: R) -> Self {
        Self { csv: Csv::new(input), header: None, unreadable: false }
    }

    /// Reads the next record into `out`; `false` at the end of the input (or of a file whose
    /// header cannot be used: one error for it, not one per row).
    pub(super) fn next_into(&mut self, mapping: &Mapping, out: &mut Out) -> bool {
        if self.unreadable {
            return false;
        }
        let Some(record) = self.csv.next_record() else { return false };
        let (line, fields) = match record {
            Ok(record) => record,
            Err(e) => {
                out.push_back(Err(e));
                return true;
            }
        };
        let Some(header) = &self.header else {
            let names: Vec<String> =
                fields.iter().map(|f| f.trim().trim_start_matches('\u{feff}').to_owned()).collect();
            if let Some(missing) = REQUIRED.iter().find(|r| !names.iter().any(|n| n == *r)) {
                out.push_back(Err(RowError::new(
                    line,
                    "header",
                    format!("no `{missing}` column: cannot read this file"),
                )));
                self.unreadable = true;
                return false;
            }
            self.header = Some(names);
            return true;
        };
        if fields.len() != header.len() {
            let why = format!("{} fields where the header has {}", fields.len(), header.len());
            out.push_back(Err(RowError::new(line, "record", why)));
            return true;
        }
        let row: Map<String, Value> = header.iter().cloned().zip(fields.into_iter().map(Value::String)).collect();
        convert(line, &row, mapping, out);
        true
    }
}

fn convert(line: usize, row: &Map<String, Value>, mapping: &Mapping, out: &mut Out) {
    match text(row, "confirmed").map(str::to_ascii_lowercase).as_deref() {
        None | Some("true") => {}
        Some("false") => {
            let why = "resolved from defaults, not confirmed by the person";
            return out.push_back(Err(RowError::skipped(line, "confirmed", why)));
        }
        Some(_) => return out.push_back(Err(RowError::new(line, "confirmed", "not true or false"))),
    }
    let common = match common(line, row, mapping) {
        Ok(common) => common,
        Err(e) => return out.push_back(Err(e)),
    };
    let purposes = text(row, "purposes").and_then(|p| serde_json::from_str::<Value>(p).ok());
    let Some(Value::Object(purposes)) = purposes else {
        return out.push_back(Err(RowError::new(line, "purposes", "not a JSON object of purpose → true/false")));
    };
    if purposes.is_empty() {
        return out.push_back(Err(RowError::new(line, "purposes", "names no purpose")));
    }
    let mut keys: Vec<_> = purposes.iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    for (i, (key, value)) in keys.into_iter().enumerate() {
        out.push_back(purpose_row(&common, i, key, value, mapping));
    }
}

fn common(line: usize, row: &Map<String, Value>, mapping: &Mapping) -> Result<Common, RowError> {
    let kind = match mapping.identifier(SOURCE, "userId") {
        Some(IdentifierMapping::Kind(kind)) => kind,
        None | Some(IdentifierMapping::Skip) => {
            let why = "the mapping does not say what kind of identifier `userId` is ([identifiers] transcend.userId)";
            return Err(RowError::new(line, "userId", why));
        }
    };
    let user = text(row, "userId").ok_or_else(|| RowError::new(line, "identifier", "the row has no `userId`"))?;
    let identifiers = vec![identifier(line, "userId", kind, user)?];
    let jurisdiction = jurisdiction(line, text(row, "jurisdiction"), "jurisdiction", mapping)?;
    let captured_at_ms = row
        .get("timestamp")
        .and_then(|t| time_ms(t, Epoch::Millis, false))
        .ok_or_else(|| RowError::new(line, "timestamp", "missing or not a date (RFC 3339 or epoch milliseconds)"))?;
    Ok(Common {
        line,
        source_system: SOURCE.to_owned(),
        base_id: record_id(line, None, row)?,
        identifiers,
        jurisdiction,
        captured_at_ms,
        notice_version: String::new(),
    })
}

fn purpose_row(common: &Common, i: usize, key: &str, value: &Value, mapping: &Mapping) -> Result<ImportRow, RowError> {
    let line = common.line;
    let action = match value {
        Value::Bool(true) => ConsentAction::Grant,
        Value::Bool(false) => ConsentAction::Withdraw,
        other => {
            let field = if super::is_token(key, 64) { format!("purposes.{key}") } else { format!("purposes[{i}]") };
            if other.as_str() == Some("Auto") {
                return Err(RowError::skipped(
                    line,
                    field,
                    "`Auto` leaves the purpose to the consent manager's default",
                ));
            }
            return Err(RowError::new(line, field, "not true, false or \"Auto\""));
        }
    };
    let target = target(line, mapping, SOURCE, key, i)?;
    Ok(common.row(Some(key), target, action, None))
}

#[cfg(test)]
mod tests {
    use super::super::{Format, rows};
    use super::*;

    fn read(mapping: &str, input: &str) -> Vec<Result<ImportRow, RowError>> {
        let mapping = Mapping::parse(mapping, "m").unwrap();
        rows(Format::Transcend, input.as_bytes(), &mapping).collect()
    }

    const MAPPING: &str = "version = \"t\"\n[jurisdiction]\ndefault = \"GB\"\n[identifiers]\ntranscend.userId = \"email\"\n[[purpose]]\nsource = \"transcend\"\nkey = \"Email\"\nmaps_to = \"marketing\"\nchannels = [\"email\"]\n";

    #[test]
    fn columns_are_found_by_name_and_ids_hash_the_row() {
        let input = "purposes,timestamp,userId\n\"{\"\"Email\"\":true}\",2025-01-01T00:00:00Z,a@example.com\n";
        let first = read(MAPPING, input);
        let row = first[0].as_ref().unwrap();
        assert_eq!((row.line, row.action, row.jurisdiction.as_str()), (2, ConsentAction::Grant, "GB"));
        assert!(row.source_event_id.ends_with("#Email") && row.source_event_id.len() == 32 + 6);
        let reordered = "userId,timestamp,purposes\na@example.com,2025-01-01T00:00:00Z,\"{\"\"Email\"\":true}\"\n";
        assert_eq!(read(MAPPING, reordered)[0].as_ref().unwrap().source_event_id, row.source_event_id);
    }

    #[test]
    fn a_header_without_required_columns_is_one_error_and_the_end() {
        let got = read(MAPPING, "user,timestamp,purposes\na,b,c\nd,e,f\n");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].as_ref().unwrap_err().field, "header");
    }

    #[test]
    fn the_kind_of_user_id_is_never_guessed() {
        let mapping = MAPPING.replace("[identifiers]\ntranscend.userId = \"email\"\n", "");
        let got =
            read(&mapping, "userId,timestamp,purposes\na@example.com,2025-01-01T00:00:00Z,\"{\"\"Email\"\":true}\"\n");
        let err = got[0].as_ref().unwrap_err();
        assert_eq!(err.field, "userId");
        assert!(!err.reason.contains("a@example.com"));
    }
}
