//! `[obligations.<id>]`: what a caller must do when it acts on an allow; rules attach them by id.

use super::document::{Span, Table};
use super::named::named_tables;
use crate::diag::Sink;
use crate::model::Obligation;

const OBLIGATION_KEYS: &[&str] = &["text"];

pub(crate) fn read(sink: &mut Sink<'_>, root: &Table<'_, '_>) -> Vec<(Obligation, Span)> {
    named_tables(sink, root, "obligations", "an obligation", OBLIGATION_KEYS, |sink, id, t, _| {
        t.req_non_empty(sink, "text").map(|text| Obligation { id: id.to_owned(), text })
    })
}
