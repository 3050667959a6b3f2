//! A small typed reader over toml's spanned document tree.
//!
//! Packs are read from `DeTable` by hand rather than through `serde` derive so that one run can
//! report every unknown key, wrong type and bad term in a file, each at its own line:column,
//! instead of stopping at the first one.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Severity, Sink};

pub(crate) type Span = Range<usize>;
pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// Parses a document, reporting every syntax error. `None` when the file is not valid TOML:
/// a recovered tree would produce follow-on errors that only confuse the author.
pub(crate) fn parse_document<'i>(sink: &mut Sink<'_>, text: &'i str) -> Option<Spanned<DeTable<'i>>> {
    let (table, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        return Some(table);
    }
    for error in errors {
        let message = error.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
        sink.push(Severity::Error, error.span(), format!("invalid toml: {message}"));
    }
    None
}

/// A table whose keys have been checked against the keys the schema knows.
pub(crate) struct Table<'t, 'i> {
    table: &'t DeTable<'i>,
    span: Span,
    what: &'static str,
}

impl<'t, 'i> Table<'t, 'i> {
    /// Reports every key outside `known`: an unknown key is a typo or a newer schema, and
    /// ignoring it could silently drop a restriction the author meant to add.
    pub(crate) fn new(
        sink: &mut Sink<'_>,
        table: &'t DeTable<'i>,
        span: Span,
        what: &'static str,
        known: &[&str],
    ) -> Self {
        for key in table.keys() {
            if !known.contains(&key.get_ref().as_ref()) {
                let expected = known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
                sink.error(&key.span(), format!("unknown key in {what}; expected one of {expected}"));
            }
        }
        Self { table, span, what }
    }

    pub(crate) fn span(&self) -> Span {
        self.span.clone()
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'t Value<'i>> {
        self.table.get(key)
    }

    pub(crate) fn required(&self, sink: &mut Sink<'_>, key: &str) -> Option<&'t Value<'i>> {
        let value = self.table.get(key);
        if value.is_none() {
            sink.error(&self.span, format!("missing key `{key}` in {}", self.what));
        }
        value
    }

    pub(crate) fn req_str(&self, sink: &mut Sink<'_>, key: &str) -> Option<Spanned<&'t str>> {
        self.required(sink, key).and_then(|v| string(sink, v, key))
    }

    /// A required string with visible content, owned.
    pub(crate) fn req_non_empty(&self, sink: &mut Sink<'_>, key: &str) -> Option<String> {
        let value = self.req_str(sink, key)?;
        if value.get_ref().trim().is_empty() {
            sink.error(&value.span(), format!("`{key}` must not be empty"));
            return None;
        }
        Some((*value.get_ref()).to_owned())
    }

    pub(crate) fn opt_str(&self, sink: &mut Sink<'_>, key: &str) -> Option<Spanned<&'t str>> {
        self.get(key).and_then(|v| string(sink, v, key))
    }

    pub(crate) fn opt_bool(&self, sink: &mut Sink<'_>, key: &str) -> Option<Spanned<bool>> {
        let value = self.get(key)?;
        match value.get_ref() {
            DeValue::Boolean(b) => Some(Spanned::new(value.span(), *b)),
            _ => {
                sink.error(&value.span(), format!("`{key}` must be true or false"));
                None
            }
        }
    }

    pub(crate) fn opt_int(&self, sink: &mut Sink<'_>, key: &str) -> Option<Spanned<i64>> {
        self.get(key).and_then(|v| integer(sink, v, key))
    }

    /// An array of strings; a non-string element is reported and skipped.
    pub(crate) fn opt_strings(&self, sink: &mut Sink<'_>, key: &str) -> Option<Spanned<Vec<Spanned<&'t str>>>> {
        let value = self.get(key)?;
        let DeValue::Array(items) = value.get_ref() else {
            sink.error(&value.span(), format!("`{key}` must be an array of strings"));
            return None;
        };
        let strings = items.iter().filter_map(|item| string(sink, item, key)).collect();
        Some(Spanned::new(value.span(), strings))
    }

    pub(crate) fn req_strings(&self, sink: &mut Sink<'_>, key: &str) -> Option<Spanned<Vec<Spanned<&'t str>>>> {
        if self.get(key).is_none() {
            sink.error(&self.span, format!("missing key `{key}` in {}", self.what));
            return None;
        }
        self.opt_strings(sink, key)
    }

    /// A sub-table, e.g. `[residency]` or an inline `{ .. }`.
    pub(crate) fn table(&self, sink: &mut Sink<'_>, key: &str, required: bool) -> Option<(&'t DeTable<'i>, Span)> {
        let value = if required { self.required(sink, key)? } else { self.get(key)? };
        match value.get_ref() {
            DeValue::Table(t) => Some((t, value.span())),
            _ => {
                sink.error(&value.span(), format!("`{key}` must be a table"));
                None
            }
        }
    }

    /// An array of tables such as `[[rule]]`.
    pub(crate) fn tables(&self, sink: &mut Sink<'_>, key: &str) -> Vec<(&'t DeTable<'i>, Span)> {
        let Some(value) = self.get(key) else {
            return Vec::new();
        };
        let DeValue::Array(items) = value.get_ref() else {
            sink.error(&value.span(), format!("`{key}` must be an array of tables (`[[{key}]]`)"));
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| match item.get_ref() {
                DeValue::Table(t) => Some((t, item.span())),
                _ => {
                    sink.error(&item.span(), format!("each `{key}` entry must be a table"));
                    None
                }
            })
            .collect()
    }
}

pub(crate) fn string<'t>(sink: &mut Sink<'_>, value: &'t Value<'_>, key: &str) -> Option<Spanned<&'t str>> {
    match value.get_ref() {
        DeValue::String(s) => Some(Spanned::new(value.span(), s.as_ref())),
        _ => {
            sink.error(&value.span(), format!("`{key}` must be a string"));
            None
        }
    }
}

pub(crate) fn integer(sink: &mut Sink<'_>, value: &Value<'_>, key: &str) -> Option<Spanned<i64>> {
    let parsed = match value.get_ref() {
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok(),
        _ => None,
    };
    if parsed.is_none() {
        sink.error(&value.span(), format!("`{key}` must be an integer"));
    }
    parsed.map(|n| Spanned::new(value.span(), n))
}

/// The text of a string or a TOML date-time, so timestamps may be written either way.
pub(crate) fn timestamp_text(value: &Value<'_>) -> Option<String> {
    match value.get_ref() {
        DeValue::String(s) => Some(s.to_string()),
        DeValue::Datetime(d) => Some(d.to_string()),
        _ => None,
    }
}
