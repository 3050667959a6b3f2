//! `[signals]`: `[signals.gpc]`, `[signals.opt_out]` and `[[signals.tcf]]` (`model/signals.rs`).
//! Each is inherited from the nearest pack that states it (`compile/link.rs`).

use domicile_types::{Channel, Purpose};
use toml::de::DeTable;

use super::document::{Span, Table};
use super::values::{opt_instant, term};
use crate::diag::Sink;
use crate::model::{GpcRule, OptOutRule, Signals, TcfMapping, TcfSource};

const SIGNALS_KEYS: &[&str] = &["gpc", "opt_out", "tcf"];
const GPC_KEYS: &[&str] = &["binding", "effective_from", "cite", "source", "confidence"];
const OPT_OUT_KEYS: &[&str] = &["purpose", "channels", "cite"];
const TCF_KEYS: &[&str] = &[
    "purpose",
    "special_feature",
    "publisher_purpose",
    "custom_purpose",
    "vendor_id",
    "maps_to",
    "channels",
    "cite",
    "note",
];

/// Reads `[signals]` (optional; each part absent means inherited).
pub(crate) fn read(sink: &mut Sink<'_>, root: &Table<'_, '_>) -> Signals {
    let mut signals = Signals::default();
    let Some((table, span)) = root.table(sink, "signals", false) else { return signals };
    let s = Table::new(sink, table, span, "[signals]", SIGNALS_KEYS);
    if let Some((table, span)) = s.table(sink, "gpc", false) {
        signals.gpc = read_gpc(sink, table, span);
    }
    if let Some((table, span)) = s.table(sink, "opt_out", false) {
        signals.opt_out = read_opt_out(sink, table, span);
    }
    if s.get("tcf").is_some() {
        let mappings = s.tables(sink, "tcf").into_iter().filter_map(|(t, span)| read_tcf(sink, t, span)).collect();
        signals.tcf = Some(mappings);
    }
    signals
}

fn read_gpc(sink: &mut Sink<'_>, table: &DeTable<'_>, span: Span) -> Option<GpcRule> {
    let g = Table::new(sink, table, span.clone(), "[signals.gpc]", GPC_KEYS);
    let binding = g.opt_bool(sink, "binding");
    let effective_from = opt_instant(sink, &g, "effective_from").map(|t| *t.get_ref());
    let cite = g.req_non_empty(sink, "cite");
    let Some(binding) = binding else {
        sink.error(
            &span,
            "`[signals.gpc]` needs `binding = true` (a legally binding opt-out) or `false` (recorded only)",
        );
        return None;
    };
    let binding = *binding.get_ref();
    if binding && effective_from.is_none() {
        sink.error(&span, "a binding GPC needs `effective_from`: the date the law makes it binding");
    }
    Some(GpcRule { binding, effective_from, cite: cite? })
}

fn channels(sink: &mut Sink<'_>, t: &Table<'_, '_>) -> Vec<Channel> {
    let mut out = Vec::new();
    if let Some(list) = t.req_strings(sink, "channels") {
        if list.get_ref().is_empty() {
            sink.error(&list.span(), "`channels` must name at least one channel");
        }
        for item in list.get_ref() {
            match Channel::parse(item.get_ref()) {
                Ok(c) if out.contains(&c) => sink.error(&item.span(), "channel listed twice"),
                Ok(c) => out.push(c),
                Err(e) => sink.error(&item.span(), e.to_string()),
            }
        }
    }
    out
}

fn read_opt_out(sink: &mut Sink<'_>, table: &DeTable<'_>, span: Span) -> Option<OptOutRule> {
    let o = Table::new(sink, table, span, "[signals.opt_out]", OPT_OUT_KEYS);
    let purpose = o.req_str(sink, "purpose").and_then(|v| term(sink, &v, Purpose::parse));
    let channels = channels(sink, &o);
    let cite = o.req_non_empty(sink, "cite");
    Some(OptOutRule { purpose: purpose?, channels, cite: cite? })
}

fn read_tcf(sink: &mut Sink<'_>, table: &DeTable<'_>, span: Span) -> Option<TcfMapping> {
    let t = Table::new(sink, table, span.clone(), "[[signals.tcf]]", TCF_KEYS);
    let mut sources = Vec::new();
    for (key, max, make) in [
        ("purpose", 11, TcfSource::Purpose as fn(u8) -> TcfSource),
        ("special_feature", 2, TcfSource::SpecialFeature),
        ("publisher_purpose", 24, TcfSource::PublisherPurpose),
        ("custom_purpose", 64, TcfSource::CustomPurpose),
    ] {
        if let Some(n) = t.opt_int(sink, key) {
            match u8::try_from(*n.get_ref()) {
                Ok(id) if (1..=max).contains(&id) => sources.push(make(id)),
                _ => sink.error(&n.span(), format!("`{key}` must be between 1 and {max}")),
            }
        }
    }
    let vendor_id = t.opt_int(sink, "vendor_id").and_then(|n| match u16::try_from(*n.get_ref()) {
        Ok(v) if v > 0 => Some(v),
        _ => {
            sink.error(&n.span(), "`vendor_id` must be a vendor id between 1 and 65535");
            None
        }
    });
    let purpose = t.req_str(sink, "maps_to").and_then(|v| term(sink, &v, Purpose::parse));
    let channels = channels(sink, &t);
    let cite = t.req_non_empty(sink, "cite");
    let source = match sources.as_slice() {
        [one] => *one,
        _ => {
            sink.error(
                &span,
                "name exactly one of `purpose`, `special_feature`, `publisher_purpose`, `custom_purpose`",
            );
            return None;
        }
    };
    if vendor_id.is_some() && !matches!(source, TcfSource::Purpose(_)) {
        sink.error(&span, "`vendor_id` applies to a TCF `purpose` only (the vendor's consent bit)");
    }
    Some(TcfMapping { source, vendor_id, purpose: purpose?, channels, cite: cite? })
}
