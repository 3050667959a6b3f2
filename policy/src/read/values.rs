//! Value readers the tables share: ids, instants, effective periods, calendar periods, lists of
//! strings and vocabulary terms. Each reports a bad value at its own line:column and yields `None`
//! (or skips the item), so reading goes on and every problem of a file comes out in one run.

use std::fmt;

use toml::Spanned;

use super::document::{Table, timestamp_text};
use crate::diag::Sink;
use crate::model::Period;
use crate::time::parse_rfc3339;

/// `[a-z0-9][a-z0-9_-]*`: ids appear in reasons, logs and file names.
pub(crate) fn is_id_segment(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// An instant written as an RFC 3339 string or TOML date-time with an offset.
pub(crate) fn opt_instant(sink: &mut Sink<'_>, table: &Table<'_, '_>, key: &str) -> Option<Spanned<i64>> {
    let value = table.get(key)?;
    let parsed = timestamp_text(value).as_deref().and_then(parse_rfc3339);
    if parsed.is_none() {
        sink.error(&value.span(), format!("`{key}` must be an RFC 3339 timestamp with an offset"));
    }
    parsed.map(|t| Spanned::new(value.span(), t))
}

pub(crate) fn owned_strings(sink: &mut Sink<'_>, table: &Table<'_, '_>, key: &str) -> Vec<String> {
    table
        .opt_strings(sink, key)
        .map(|l| l.get_ref().iter().map(|s| (*s.get_ref()).to_owned()).collect())
        .unwrap_or_default()
}

/// `effective_from` / `effective_until` of a pack or a rule: `[from, until)` must not be empty.
pub(crate) fn check_range(sink: &mut Sink<'_>, from: Option<&Spanned<i64>>, until: Option<&Spanned<i64>>) {
    if let (Some(from), Some(until)) = (from, until)
        && until.get_ref() <= from.get_ref()
    {
        sink.error(&until.span(), "`effective_until` must be later than `effective_from`");
    }
}

pub(crate) fn period(sink: &mut Sink<'_>, value: &Spanned<&str>, key: &str) -> Option<Period> {
    let parsed = Period::parse(value.get_ref());
    if parsed.is_none() {
        sink.error(&value.span(), format!("`{key}` must be a period such as `30 days`, `6 months` or `2 years`"));
    }
    parsed
}

/// A term of a vocabulary whose parser explains what it expected (purposes, channels, states).
pub(crate) fn term<T, E: fmt::Display>(
    sink: &mut Sink<'_>,
    value: &Spanned<&str>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Option<T> {
    match parse(value.get_ref()) {
        Ok(t) => Some(t),
        Err(e) => {
            sink.error(&value.span(), e.to_string());
            None
        }
    }
}

/// `{ purchase = "18 months", inquiry = "3 months" }` (either may be left out, not both): how
/// long after the last purchase and the last inquiry a business relationship counts. `None` when
/// absent or invalid (reported).
pub(crate) fn relationship(
    sink: &mut Sink<'_>,
    owner: &Table<'_, '_>,
    key: &str,
) -> Option<crate::model::rule::Relationship> {
    let (table, span) = owner.table(sink, key, false)?;
    let t = Table::new(sink, table, span.clone(), "a relationship limit", &["purchase", "inquiry"]);
    let purchase = t.opt_str(sink, "purchase").and_then(|v| period(sink, &v, "purchase"));
    let inquiry = t.opt_str(sink, "inquiry").and_then(|v| period(sink, &v, "inquiry"));
    if purchase.is_none() && inquiry.is_none() {
        sink.error(&span, format!("`{key}` needs `purchase` or `inquiry`, a period such as `18 months`"));
        return None;
    }
    Some(crate::model::rule::Relationship { purchase, inquiry })
}
