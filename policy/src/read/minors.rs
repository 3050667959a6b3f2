//! `[minors.<id>]`: what a rule requires below an age, in bands, and how a subject of unknown age
//! is treated (stated, never assumed).
//!
//! ```toml
//! [minors.sale]
//! bands = [
//!   { under = 13, basis = "opt_in", consent = ["guardian"] },
//!   { under = 16, basis = "opt_in", consent = ["express"] },
//! ]
//! unknown_age = "adult"
//! cite = "Cal. Civ. Code § 1798.120(c)"
//! ```

use super::document::{Span, Table, integer};
use super::named::named_tables;
use crate::diag::Sink;
use crate::model::rule::{MinorBand, Minors};
use crate::model::terms::{Basis, ConsentKind, UnknownAge};

const MINORS_KEYS: &[&str] = &["bands", "unknown_age", "cite"];
const BAND_KEYS: &[&str] = &["under", "basis", "consent"];

pub(crate) fn read(sink: &mut Sink<'_>, root: &Table<'_, '_>) -> Vec<(Minors, Span)> {
    named_tables(sink, root, "minors", "a minors definition", MINORS_KEYS, |sink, id, t, key_span| {
        let bands = t.tables(sink, "bands");
        if t.get("bands").is_none() || bands.is_empty() {
            sink.error(key_span, "a minors definition needs `bands`, youngest first");
        }
        let mut read_bands: Vec<MinorBand> = Vec::new();
        let mut ok = true;
        for (table, span) in &bands {
            match band(sink, table, span) {
                Some(b) => {
                    if read_bands.last().is_some_and(|prev| prev.under >= b.under) {
                        sink.error(span, "bands must be youngest first, each `under` greater than the one before");
                        ok = false;
                    }
                    read_bands.push(b);
                }
                None => ok = false,
            }
        }
        let unknown_age = t.req_str(sink, "unknown_age").and_then(|v| {
            let parsed = UnknownAge::parse(v.get_ref());
            if parsed.is_none() {
                sink.error(&v.span(), UnknownAge::expected());
            }
            parsed
        });
        let cite = t.req_non_empty(sink, "cite");
        let line = sink.line_of(key_span);
        let (Some(unknown_age), Some(cite), true, false) = (unknown_age, cite, ok, read_bands.is_empty()) else {
            return None;
        };
        Some(Minors { id: id.to_owned(), bands: read_bands, unknown_age, cite, line })
    })
}

/// One `{ under, basis, consent }` band.
fn band(sink: &mut Sink<'_>, table: &toml::de::DeTable<'_>, span: &Span) -> Option<MinorBand> {
    let t = Table::new(sink, table, span.clone(), "a minors band", BAND_KEYS);
    let under = t.get("under").and_then(|v| integer(sink, v, "under")).and_then(|v| {
        let age = u8::try_from(*v.get_ref()).ok().filter(|a| (1..=21).contains(a));
        if age.is_none() {
            sink.error(&v.span(), "`under` must be an age in years from 1 to 21");
        }
        age
    });
    if t.get("under").is_none() {
        sink.error(span, "missing key `under` in a minors band");
    }
    let basis = t.req_str(sink, "basis").and_then(|v| match Basis::parse(v.get_ref()) {
        Some(b @ (Basis::OptIn | Basis::DoubleOptIn | Basis::Prohibited)) => Some(b),
        Some(_) => {
            sink.error(&v.span(), "a minors band only tightens: `opt_in`, `double_opt_in` or `prohibited`");
            None
        }
        None => {
            sink.error(&v.span(), Basis::expected());
            None
        }
    });
    let mut consent = Vec::new();
    match t.opt_strings(sink, "consent") {
        Some(list) => {
            for item in list.get_ref() {
                match ConsentKind::parse(item.get_ref()) {
                    Some(k) if consent.contains(&k) => sink.error(&item.span(), "consent kind listed twice"),
                    Some(k) => consent.push(k),
                    None => sink.error(&item.span(), ConsentKind::expected()),
                }
            }
            if basis == Some(Basis::Prohibited) && !list.get_ref().is_empty() {
                sink.error(&list.span(), "a `prohibited` band accepts no consent");
            }
        }
        None if basis.is_some_and(|b| b != Basis::Prohibited) => {
            sink.error(span, "a consent-based band must name the consent kinds that count (`consent = [..]`)");
            return None;
        }
        None => {}
    }
    Some(MinorBand { under: under?, basis: basis?, consent })
}
