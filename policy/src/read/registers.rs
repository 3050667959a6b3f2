//! `[registers.<id>]`: do-not-contact registers a rule's `screen` makes callers check.

use super::document::{Span, Table};
use super::named::named_tables;
use crate::diag::Sink;
use crate::model::Register;

const REGISTER_KEYS: &[&str] = &["name", "cite", "exempt_with_consent", "exempt_with_relationship"];

pub(crate) fn read(sink: &mut Sink<'_>, root: &Table<'_, '_>) -> Vec<(Register, Span)> {
    named_tables(sink, root, "registers", "a register", REGISTER_KEYS, |sink, id, t, key_span| {
        let name = t.req_non_empty(sink, "name");
        let cite = t.req_non_empty(sink, "cite");
        let exempt_with_consent = t.opt_bool(sink, "exempt_with_consent").is_some_and(|b| *b.get_ref());
        let relationship_exemption = super::values::relationship(sink, t, "exempt_with_relationship");
        let line = sink.line_of(key_span);
        let (Some(name), Some(cite)) = (name, cite) else { return None };
        Some(Register { id: id.to_owned(), name, cite, exempt_with_consent, relationship_exemption, line })
    })
}
