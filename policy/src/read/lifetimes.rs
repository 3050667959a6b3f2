//! `[lifetimes.<id>]`: which consent kinds a rule accepts, and for how long each counts.

use super::document::{Span, Table};
use super::named::named_tables;
use super::values::period;
use crate::diag::Sink;
use crate::model::{ConsentKind, Lifetime};

const LIFETIME_KEYS: &[&str] = &["express", "implied_purchase", "implied_inquiry", "guardian", "cite"];

pub(crate) fn read(sink: &mut Sink<'_>, root: &Table<'_, '_>) -> Vec<(Lifetime, Span)> {
    named_tables(sink, root, "lifetimes", "a lifetime", LIFETIME_KEYS, |sink, id, t, key_span| {
        let mut kinds = [None; 4];
        for kind in ConsentKind::ALL {
            if let Some(v) = t.opt_str(sink, kind.as_str()) {
                let value =
                    if *v.get_ref() == "unlimited" { Some(None) } else { period(sink, &v, kind.as_str()).map(Some) };
                if let Some(slot) = kinds.get_mut(kind.index()) {
                    *slot = value;
                }
            }
        }
        if kinds.iter().all(Option::is_none) {
            sink.error(key_span, "a lifetime must accept at least one consent kind");
        }
        let line = sink.line_of(key_span);
        t.req_non_empty(sink, "cite").map(|cite| Lifetime { id: id.to_owned(), kinds, cite, line })
    })
}
