//! `[<table>.<id>]` tables whose keys are ids the author chooses (obligations, lifetimes, calling
//! windows, registers): one walker checks the ids and each entry's keys, and the table's own
//! reader turns each entry into its definition.

use toml::de::DeValue;

use super::document::{Span, Table};
use super::values::is_id_segment;
use crate::diag::Sink;

/// Reads `[<key>.<id>]` entries with `each`, which yields the definition or `None` (reported).
/// Every definition comes back with the span of its id, where duplicates and unused ones are
/// shown.
pub(crate) fn named_tables<'t, 'i, T>(
    sink: &mut Sink<'_>,
    root: &Table<'t, 'i>,
    key: &str,
    what: &'static str,
    known: &[&str],
    mut each: impl FnMut(&mut Sink<'_>, &str, &Table<'t, 'i>, &Span) -> Option<T>,
) -> Vec<(T, Span)> {
    let mut out = Vec::new();
    let Some((table, _)) = root.table(sink, key, false) else { return out };
    for (name, value) in table.iter() {
        let name_text: &str = name.get_ref().as_ref();
        if !is_id_segment(name_text) {
            sink.error(
                &name.span(),
                format!("{} id must be `a-z`, `0-9`, `_` or `-`", &what[what.find(' ').map_or(0, |i| i + 1)..]),
            );
            continue;
        }
        let DeValue::Table(body) = value.get_ref() else {
            sink.error(&value.span(), format!("{what} must be a table"));
            continue;
        };
        let body = Table::new(sink, body, value.span(), what, known);
        let key_span = name.span();
        if let Some(item) = each(sink, name_text, &body, &key_span) {
            out.push((item, key_span));
        }
    }
    out
}
