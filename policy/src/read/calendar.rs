//! Holiday calendar files (`<pack>/holidays.toml`, written by `tools/holidays.py`): a `[calendar]`
//! table saying what the data is, where it comes from and what it leaves out, and `[dates]`, one
//! `YYYY-MM-DD = "name"` line per public holiday. Every problem at its own line:column, as in
//! pack files.

use domicile_types::Jurisdiction;
use sha2::{Digest, Sha256};
use toml::Spanned;
use toml::de::DeValue;

use super::document::{Span, Table, integer, parse_document, string};
use super::values::is_id_segment;
use crate::diag::{PackSource, Sink};
use crate::model::Confidence;
use crate::model::calendar::{HolidayCalendar, parse_date};

const ROOT_KEYS: &[&str] = &["calendar", "dates"];
const CALENDAR_KEYS: &[&str] = &["id", "country", "source", "generated_by", "years", "regional", "confidence"];

/// Reads one calendar file. `None` when it has errors; the id (with its span) whenever it reads.
pub(crate) fn read_calendar(
    source: &PackSource,
    sink: &mut Sink<'_>,
) -> (Option<HolidayCalendar>, Option<Spanned<String>>) {
    let Some(doc) = parse_document(sink, &source.text) else { return (None, None) };
    let root = Table::new(sink, doc.get_ref(), doc.span(), "a holiday calendar file", ROOT_KEYS);
    let Some((table, span)) = root.table(sink, "calendar", true) else { return (None, None) };
    let t = Table::new(sink, table, span.clone(), "`[calendar]`", CALENDAR_KEYS);

    let id = t.req_str(sink, "id").and_then(|id| {
        if is_id_segment(id.get_ref()) {
            Some(Spanned::new(id.span(), (*id.get_ref()).to_owned()))
        } else {
            sink.error(&id.span(), "calendar id must be `a-z`, `0-9`, `_` or `-`");
            None
        }
    });
    let country = t.req_str(sink, "country").and_then(|c| match Jurisdiction::parse(c.get_ref()) {
        Ok(j) => Some(j.to_string()),
        Err(e) => {
            sink.error(&c.span(), e.to_string());
            None
        }
    });
    let source_text = t.req_non_empty(sink, "source");
    let generated_by = t.req_non_empty(sink, "generated_by");
    let regional = t.req_non_empty(sink, "regional");
    let confidence = t.req_str(sink, "confidence").and_then(|c| {
        let parsed = Confidence::parse(c.get_ref());
        if parsed.is_none() {
            sink.error(&c.span(), Confidence::expected());
        }
        parsed
    });
    let years = years(sink, &t);
    let dates = dates(sink, &root, years.as_deref().unwrap_or(&[]));

    if sink.has_errors() {
        return (None, id);
    }
    let (Some(id_value), Some(country), Some(source_text), Some(generated_by), Some(regional), Some(confidence)) =
        (id.as_ref(), country, source_text, generated_by, regional, confidence)
    else {
        return (None, id);
    };
    let years = years.unwrap_or_default();
    if years.is_empty() {
        sink.warning(&span, "the calendar covers no year: every decision inside a window that reads it is denied");
    }
    let calendar = HolidayCalendar {
        id: id_value.get_ref().clone(),
        country,
        source: source_text,
        generated_by,
        regional,
        confidence,
        years,
        dates,
        path: source.path.clone(),
        line: sink.line_of(&span),
        revision: hex::encode(Sha256::digest(source.text.as_bytes())),
    };
    (Some(calendar), id)
}

/// `years = [2026, 2027]`: ascending, each once, within 1970-2200.
fn years(sink: &mut Sink<'_>, t: &Table<'_, '_>) -> Option<Vec<i16>> {
    let value = t.required(sink, "years")?;
    let DeValue::Array(items) = value.get_ref() else {
        sink.error(&value.span(), "`years` must be an array of years such as `[2026, 2027]`");
        return None;
    };
    let mut out: Vec<i16> = Vec::new();
    for item in items {
        let Some(year) = integer(sink, item, "years") else { continue };
        match i16::try_from(*year.get_ref()) {
            Ok(y) if (1970..=2200).contains(&y) && out.last().is_none_or(|&last| last < y) => out.push(y),
            Ok(y) if (1970..=2200).contains(&y) => {
                sink.error(&item.span(), "`years` must be ascending, each year once");
            }
            _ => sink.error(&item.span(), "a year must lie between 1970 and 2200"),
        }
    }
    Some(out)
}

/// `[dates]`: `2026-12-25 = "Christmas Day"`, each date a real one inside `years`.
fn dates(sink: &mut Sink<'_>, root: &Table<'_, '_>, years: &[i16]) -> Vec<(jiff::civil::Date, String)> {
    let Some((table, _)) = root.table(sink, "dates", true) else { return Vec::new() };
    let mut out = Vec::new();
    for (key, value) in table.iter() {
        let key_span: Span = key.span();
        let Some(date) = parse_date(key.get_ref()) else {
            sink.error(&key_span, "holiday date must be `YYYY-MM-DD`, a real calendar date");
            continue;
        };
        if years.binary_search(&date.year()).is_err() {
            sink.error(&key_span, format!("holiday {date} lies outside the calendar's `years`"));
            continue;
        }
        let Some(name) = string(sink, value, key.get_ref()) else { continue };
        if name.get_ref().trim().is_empty() {
            sink.error(&name.span(), "the holiday's name must not be empty");
            continue;
        }
        out.push((date, (*name.get_ref()).to_owned()));
    }
    out.sort();
    out
}
