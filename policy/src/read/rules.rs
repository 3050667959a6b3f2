//! `[[rule]]`: one basis for one purpose on some channels, with what it cites, refers to
//! (obligations, lifetime, window, register, replaced rules) and when it is in force. Within a
//! file, ids are unique and no two rules in force at the same time share a purpose × channel, so
//! a decision never depends on rule order.

use std::collections::BTreeMap;

use domicile_types::{Channel, Purpose};
use toml::Spanned;
use toml::de::DeTable;

use super::document::{Span, Table};
use super::refs::{RefKind, References};
use super::values::{check_range, is_id_segment, opt_instant};
use crate::diag::Sink;
use crate::model::terms::Recipient;
use crate::model::{Basis, Confidence, Rule, SoftCondition};

const RULE_KEYS: &[&str] = &[
    "id",
    "purpose",
    "channels",
    "basis",
    "cite",
    "source",
    "confidence",
    "obligations",
    "note",
    "effective_from",
    "effective_until",
    "lifetime",
    "window",
    "screen",
    "conditions",
    "replaces",
    "customer_within",
    "recipients",
    "minors",
    "separate_consent_hours",
];

/// A rule with the spans of everything it refers to, for set-level checks.
pub(crate) struct ParsedRule {
    pub(crate) rule: Rule,
    pub(crate) span: Span,
    pub(crate) window_span: Option<Span>,
    pub(crate) replaces_spans: Vec<Span>,
}

/// One `[[rule]]` as read, before the file-wide overlap check.
struct RuleRead {
    parsed: ParsedRule,
    /// `None` when `purpose` was missing or unknown (the rule then joins no cell).
    purpose: Option<Purpose>,
    /// Parallel to `parsed.rule.channels`.
    channel_spans: Vec<Span>,
    /// Every required value was present and valid; only complete rules are kept.
    complete: bool,
}

/// Reads every `[[rule]]` of the file. Also says whether the file has any `[[rule]]` table at
/// all (a pack without rules and without `extends` denies everything, which deserves a warning).
pub(crate) fn read(
    sink: &mut Sink<'_>,
    root: &Table<'_, '_>,
    pack_id: Option<&str>,
    refs: &mut References<'_>,
    path: &str,
) -> (Vec<ParsedRule>, bool) {
    let mut rules: Vec<ParsedRule> = Vec::new();
    let mut rule_lines: BTreeMap<String, usize> = BTreeMap::new();
    let mut covered: BTreeMap<(Purpose, Channel), Vec<(usize, usize)>> = BTreeMap::new();
    let rule_tables = root.tables(sink, "rule");
    for (table, span) in &rule_tables {
        let Some(read) = read_rule(sink, table, span, pack_id, refs, &mut rule_lines, path) else { continue };
        let rule = &read.parsed.rule;
        // Two rules for one cell in force at the same time would make the decision depend on
        // rule order; rules with disjoint effective periods may share a cell.
        if let Some(p) = read.purpose {
            let index = rules.len();
            for (c, cspan) in rule.channels.iter().zip(&read.channel_spans) {
                let entry = covered.entry((p, *c)).or_default();
                for &(other, other_line) in entry.iter() {
                    if let Some(o) = rules.get(other).map(|o| &o.rule)
                        && o.overlaps_in_time(rule)
                        && o.recipient_mask() & rule.recipient_mask() != 0
                    {
                        sink.error(
                            cspan,
                            format!("{p} by {c} is already covered by rule `{}` at line {other_line}", o.id),
                        );
                    }
                }
                entry.push((index, rule.line));
            }
        }
        if read.complete {
            rules.push(read.parsed);
        }
    }
    (rules, !rule_tables.is_empty())
}

/// Reads one `[[rule]]`, reporting every problem; `None` when it has no usable id.
fn read_rule(
    sink: &mut Sink<'_>,
    table: &DeTable<'_>,
    span: &Span,
    pack_id: Option<&str>,
    refs: &mut References<'_>,
    rule_lines: &mut BTreeMap<String, usize>,
    path: &str,
) -> Option<RuleRead> {
    let line = sink.line_of(span);
    let r = Table::new(sink, table, span.clone(), "[[rule]]", RULE_KEYS);
    let rule_id = r.req_str(sink, "id").and_then(|v| check_rule_id(sink, &v, pack_id, rule_lines));
    if let Some(rule_id) = &rule_id {
        rule_lines.insert(rule_id.clone(), line);
    }
    let purpose = r.req_str(sink, "purpose").and_then(|v| match Purpose::parse(v.get_ref()) {
        Ok(p) => Some(p),
        Err(e) => {
            sink.error(&v.span(), e.to_string());
            None
        }
    });
    let from = opt_instant(sink, &r, "effective_from");
    let until = opt_instant(sink, &r, "effective_until");
    check_range(sink, from.as_ref(), until.as_ref());
    let mut channels = Vec::new();
    let mut channel_spans = Vec::new();
    let mut channels_ok = true;
    if let Some(list) = r.req_strings(sink, "channels") {
        if list.get_ref().is_empty() {
            sink.error(&list.span(), "`channels` must name at least one channel");
            channels_ok = false;
        }
        for item in list.get_ref() {
            match Channel::parse(item.get_ref()) {
                Ok(c) if channels.contains(&c) => sink.error(&item.span(), "channel listed twice"),
                Ok(c) => {
                    channels.push(c);
                    channel_spans.push(item.span());
                }
                Err(e) => {
                    sink.error(&item.span(), e.to_string());
                    channels_ok = false;
                }
            }
        }
    } else {
        channels_ok = false;
    }
    let basis = r.req_str(sink, "basis").and_then(|v| {
        let basis = Basis::parse(v.get_ref());
        if basis.is_none() {
            sink.error(&v.span(), Basis::expected());
        }
        basis
    });
    let cite = r.req_non_empty(sink, "cite");
    let source_note = r.opt_str(sink, "source").map(|s| (*s.get_ref()).to_owned());
    let confidence = r.req_str(sink, "confidence").and_then(|v| {
        let confidence = Confidence::parse(v.get_ref());
        if confidence.is_none() {
            sink.error(&v.span(), Confidence::expected());
        }
        confidence
    });
    let mut rule_obligations = Vec::new();
    if let Some(list) = r.opt_strings(sink, "obligations") {
        for item in list.get_ref() {
            let name: &str = item.get_ref();
            if rule_obligations.iter().any(|o: &String| o == name) {
                sink.error(&item.span(), "obligation listed twice");
            } else {
                refs.resolve(sink, RefKind::Obligation, name, &item.span());
                rule_obligations.push(name.to_owned());
            }
        }
        if basis.is_some_and(|b| !b.can_allow()) && !list.get_ref().is_empty() {
            sink.warning(&list.span(), "obligations on a prohibited rule are never attached to a decision");
        }
    }
    let reference = |sink: &mut Sink<'_>, key: &str| -> Option<Spanned<String>> {
        r.opt_str(sink, key).map(|v| Spanned::new(v.span(), (*v.get_ref()).to_owned()))
    };
    let lifetime = reference(sink, "lifetime");
    let window = reference(sink, "window");
    let screen = reference(sink, "screen");
    let minors = reference(sink, "minors");
    let separate_hours = reference(sink, "separate_consent_hours");
    for (kind, value) in [
        (RefKind::Lifetime, &lifetime),
        (RefKind::Window, &window),
        (RefKind::Register, &screen),
        (RefKind::Minors, &minors),
        (RefKind::Window, &separate_hours),
    ] {
        if let Some(v) = value {
            refs.resolve(sink, kind, v.get_ref(), &v.span());
        }
    }
    if let (Some(b), Some(l)) = (basis, &lifetime)
        && !matches!(b, Basis::OptIn | Basis::DoubleOptIn | Basis::SoftOptIn)
    {
        sink.error(&l.span(), format!("`lifetime` only applies to consent-based rules, not `{b}`"));
    }
    let mut conditions = Vec::new();
    if let Some(list) = r.opt_strings(sink, "conditions") {
        if basis != Some(Basis::SoftOptIn) {
            sink.error(&list.span(), "`conditions` only applies to `soft_opt_in` rules");
        }
        for item in list.get_ref() {
            match SoftCondition::parse(item.get_ref()) {
                Some(c) if conditions.contains(&c) => sink.error(&item.span(), "condition listed twice"),
                Some(c) => conditions.push(c),
                None => sink.error(&item.span(), SoftCondition::expected()),
            }
        }
        if list.get_ref().is_empty() {
            sink.error(&list.span(), "`conditions` must name at least one condition");
        }
    } else if basis == Some(Basis::SoftOptIn) {
        conditions = SoftCondition::ALL.to_vec();
    }
    let mut replaces = Vec::new();
    let mut replaces_spans = Vec::new();
    if let Some(list) = r.opt_strings(sink, "replaces") {
        if !refs.extends() {
            sink.error(&list.span(), "`replaces` needs `extends` in [pack]: only inherited rules can be replaced");
        }
        for item in list.get_ref() {
            if refs.extends() {
                refs.resolve(sink, RefKind::Replaces, item.get_ref(), &item.span());
            }
            replaces.push((*item.get_ref()).to_owned());
            replaces_spans.push(item.span());
        }
    }
    if let (Some(b), Some(h)) = (basis, &separate_hours)
        && !matches!(b, Basis::OptIn | Basis::DoubleOptIn | Basis::SoftOptIn)
    {
        sink.error(&h.span(), format!("`separate_consent_hours` only applies to consent-based rules, not `{b}`"));
    }
    let mut recipients = Vec::new();
    if let Some(list) = r.opt_strings(sink, "recipients") {
        for item in list.get_ref() {
            match Recipient::parse(item.get_ref()) {
                Some(t) if recipients.contains(&t) => sink.error(&item.span(), "recipient type listed twice"),
                Some(t) => recipients.push(t),
                None => sink.error(&item.span(), Recipient::expected()),
            }
        }
        if list.get_ref().is_empty() {
            sink.error(
                &list.span(),
                "`recipients` must name at least one recipient type (leave it out for every type)",
            );
        }
    }
    let note = r.opt_str(sink, "note").map(|s| (*s.get_ref()).to_owned());
    let customer_within = super::values::relationship(sink, &r, "customer_within");
    if customer_within.is_some()
        && !matches!(basis, Some(Basis::OptOut | Basis::LegitimateInterest | Basis::SoftOptIn))
        && let Some(v) = r.get("customer_within")
    {
        sink.error(
            &v.span(),
            "`customer_within` limits contact without consent: only for `opt_out`, `legitimate_interest` or `soft_opt_in`",
        );
    }
    let rule_id = rule_id?;
    let rule = Rule {
        id: rule_id,
        purpose: purpose.unwrap_or(Purpose::Marketing),
        channels,
        basis: basis.unwrap_or(Basis::Prohibited),
        cite: cite.clone().unwrap_or_default(),
        source: source_note,
        confidence: confidence.unwrap_or(Confidence::Uncertain),
        obligations: rule_obligations,
        note,
        line,
        effective_from: from.as_ref().map(|v| *v.get_ref()),
        effective_until: until.as_ref().map(|v| *v.get_ref()),
        lifetime: lifetime.as_ref().map(|v| v.get_ref().clone()),
        window: window.as_ref().map(|v| v.get_ref().clone()),
        screen: screen.as_ref().map(|v| v.get_ref().clone()),
        conditions,
        replaces,
        customer_within,
        recipients,
        minors: minors.as_ref().map(|v| v.get_ref().clone()),
        separate_consent_hours: separate_hours.as_ref().map(|v| v.get_ref().clone()),
        pack_id: pack_id.unwrap_or_default().to_owned(),
        path: path.to_owned(),
    };
    let complete = purpose.is_some() && channels_ok && basis.is_some() && cite.is_some() && confidence.is_some();
    Some(RuleRead {
        parsed: ParsedRule { rule, span: span.clone(), window_span: window.map(|v| v.span()), replaces_spans },
        purpose,
        channel_spans,
        complete,
    })
}

/// A rule id: `<pack-id>.<name>`, unique in the file, not the reserved default-deny reason.
fn check_rule_id(
    sink: &mut Sink<'_>,
    value: &Spanned<&str>,
    pack_id: Option<&str>,
    seen: &BTreeMap<String, usize>,
) -> Option<String> {
    let id: &str = value.get_ref();
    let span = value.span();
    let segments: Vec<&str> = id.split('.').collect();
    if segments.len() < 2 || !segments.iter().all(|s| is_id_segment(s)) {
        sink.error(&span, "rule id must be `<pack-id>.<name>` with `.`-separated parts of `a-z`, `0-9`, `_` or `-`");
        return None;
    }
    if let Some(pack_id) = pack_id {
        if segments.first() != Some(&pack_id) {
            sink.error(&span, format!("rule id must start with `{pack_id}.` so reasons name their pack"));
            return None;
        }
        if id == format!("{pack_id}.default-deny") {
            sink.error(&span, "rule id is reserved for default-deny decisions");
            return None;
        }
    }
    if let Some(line) = seen.get(id) {
        sink.error(&span, format!("duplicate rule id; first defined at line {line}"));
        return None;
    }
    Some(id.to_owned())
}
