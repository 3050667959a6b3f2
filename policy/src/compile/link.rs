//! Linking: one pack file plus the files it extends become one compiled [`Pack`] (its table
//! built by `table`), with the checks that need the whole chain (coverage gaps, unreachable
//! rules, replaced rules, time zones) and what is inherited (definitions, residency key by key,
//! rights, time zones).

use domicile_types::{Channel, Purpose};

use crate::diag::Sink;
use crate::model::table::{CELLS, CompiledRule, MAX_RULES_PER_CELL, cell_index};
use crate::model::{
    CallingWindow, Deadline, Lifetime, Obligation, Pack, PackKind, Register, Residency, Rights, Rule, Signals,
};
use crate::read::PackFile;

use super::table;

/// `members[0]` is the pack being linked, then the packs it extends, nearest first. Problems are
/// reported on `sink` (the file of `members[0]`); `None` when there were errors.
pub(crate) fn link(members: &[&PackFile], sink: &mut Sink<'_>) -> Option<Pack> {
    let me = *members.first()?;
    let errors_before = sink.diagnostics.iter().filter(|d| d.is_error()).count();

    // Effective rules, most specific first; each remembers how deep in the chain it was defined.
    let mut effective: Vec<(Rule, usize)> = Vec::new();
    // Per cell: rule index and the recipient types it still applies to there.
    let mut cell_rules: Vec<Vec<(u16, u8)>> = vec![Vec::new(); CELLS];
    for (depth, member) in members.iter().enumerate() {
        for parsed in &member.rules {
            let rule = &parsed.rule;
            let Ok(index) = u16::try_from(effective.len()) else { break };
            for &channel in &rule.channels {
                let cell = cell_index(rule.purpose, channel);
                // A replacing rule takes over only for the recipient types it covers.
                let replaced = effective
                    .iter()
                    .filter(|(other, d)| {
                        *d < depth
                            && other.purpose == rule.purpose
                            && other.channels.contains(&channel)
                            && other.replaces.contains(&rule.id)
                    })
                    .fold(0u8, |mask, (other, _)| mask | other.recipient_mask());
                let applies = rule.recipient_mask() & !replaced;
                if applies != 0
                    && let Some(list) = cell_rules.get_mut(cell)
                {
                    list.push((index, applies));
                }
            }
            effective.push((rule.clone(), depth));
        }
    }

    // Own rules: replaced rules must share a cell; rules that can never allow are flagged.
    for parsed in &me.rules {
        let rule = &parsed.rule;
        for (target, span) in rule.replaces.iter().zip(&parsed.replaces_spans) {
            let shares = effective.iter().any(|(other, d)| {
                *d > 0
                    && &other.id == target
                    && other.purpose == rule.purpose
                    && other.channels.iter().any(|c| rule.channels.contains(c))
            });
            if !shares {
                sink.warning(
                    span,
                    "replaced rule covers none of this rule's purpose × channel cells; nothing is replaced",
                );
            }
        }
        if rule.basis.can_allow() {
            let blocker = rule.channels.iter().try_fold(None::<&str>, |found, &channel| {
                let list = cell_rules.get(cell_index(rule.purpose, channel))?;
                let denier = list.iter().filter_map(|&(i, _)| effective.get(usize::from(i))).find(|(other, _)| {
                    !other.basis.can_allow()
                        && other.effective_from.is_none()
                        && other.effective_until.is_none()
                        && other.recipient_mask() & rule.recipient_mask() == rule.recipient_mask()
                })?;
                Some(found.or(Some(denier.0.id.as_str())))
            });
            if let Some(Some(blocker)) = blocker {
                sink.warning(
                    &parsed.span,
                    format!("unreachable rule: `{blocker}` denies every purpose × channel it covers; use `replaces` to override"),
                );
            }
        }
        let starts_after_pack = matches!((rule.effective_from, me.meta.effective_until), (Some(f), Some(u)) if f >= u);
        let ends_before_pack = matches!((rule.effective_until, me.meta.effective_from), (Some(u), Some(f)) if u <= f);
        if starts_after_pack || ends_before_pack {
            sink.warning(&parsed.span, "unreachable rule: never in effect while the pack is");
        }
    }

    for (cell, list) in cell_rules.iter().enumerate() {
        if list.len() > MAX_RULES_PER_CELL {
            sink.error(&me.span, format!("more than {MAX_RULES_PER_CELL} rules share cell {cell}"));
        }
    }

    // Coverage: gaps must be declared (`basis = "gap"`). Baselines may leave cells to countries.
    if me.meta.kind == PackKind::Jurisdiction {
        for &purpose in Purpose::ALL {
            let missing: Vec<&str> = Channel::ALL
                .iter()
                .filter(|&&c| cell_rules.get(cell_index(purpose, c)).is_none_or(Vec::is_empty))
                .map(|c| c.as_str())
                .collect();
            if missing.is_empty() {
                continue;
            }
            let message = format!("no rule for {purpose} by {}; these default to deny", missing.join(", "));
            if me.meta.schema >= 2 {
                sink.error(&me.span, format!("{message}; declare them with `basis = \"gap\"`"));
            } else {
                sink.warning(&me.span, message);
            }
        }
    }

    // Named definitions resolve lexically: from the rule's own pack outwards.
    let mut compiled = Vec::with_capacity(effective.len());
    for (rule, depth) in &effective {
        let obligations: Vec<Obligation> = rule
            .obligations
            .iter()
            .filter_map(|id| {
                members
                    .iter()
                    .skip(*depth)
                    .find_map(|m| m.definitions.obligations.iter().find(|(o, _)| &o.id == id))
                    .map(|(o, _)| o.clone())
            })
            .collect();
        let lifetime = rule
            .lifetime
            .as_ref()
            .and_then(|id| {
                members.iter().skip(*depth).find_map(|m| m.definitions.lifetimes.iter().find(|(l, _)| &l.id == id))
            })
            .map_or_else(Lifetime::express_only, |(l, _)| l.clone());
        let window: Option<CallingWindow> = rule
            .window
            .as_ref()
            .and_then(|id| {
                members.iter().skip(*depth).find_map(|m| m.definitions.windows.iter().find(|(w, _)| &w.id == id))
            })
            .map(|(w, _)| w.clone());
        let register: Option<Register> = rule
            .screen
            .as_ref()
            .and_then(|id| {
                members.iter().skip(*depth).find_map(|m| m.definitions.registers.iter().find(|(r, _)| &r.id == id))
            })
            .map(|(r, _)| r.clone());
        let mut obligations = obligations;
        if let Some(r) = &register {
            obligations.push(Obligation {
                id: r.id.clone(),
                text: format!("screen the contact against {} before contact ({})", r.name, r.cite),
            });
        }
        if *depth == 0 {
            warn_on_unenforced_restrictions(sink, me, rule, &obligations, window.is_some(), register.is_some());
        }
        // Minors bands resolve from the deciding pack outwards: the age is the member state's
        // (GDPR art. 8 lets each set it) even for a rule its baseline states.
        let minors = rule
            .minors
            .as_ref()
            .and_then(|id| members.iter().find_map(|m| m.definitions.minors.iter().find(|(d, _)| &d.id == id)))
            .map(|(d, _)| d.clone());
        let separate_hours = rule
            .separate_consent_hours
            .as_ref()
            .and_then(|id| {
                members.iter().skip(*depth).find_map(|m| m.definitions.windows.iter().find(|(w, _)| &w.id == id))
            })
            .map(|(w, _)| w.clone());
        compiled.push(CompiledRule { obligations, lifetime, window, register, minors, separate_hours });
    }

    let time_zones = members.iter().map(|m| &m.time_zones).find(|z| !z.is_empty()).cloned().unwrap_or_default();
    if time_zones.is_empty()
        && let Some((rule, _)) =
            effective.iter().find(|(r, _)| r.window.is_some() || r.separate_consent_hours.is_some())
    {
        let span = me.rules.iter().find(|p| p.rule.id == rule.id).and_then(|p| p.window_span.clone());
        sink.error(
            &span.unwrap_or_else(|| me.span.clone()),
            "calling windows need the subject's time zone: list `time_zones` in [pack]",
        );
    }
    // Residency: home regions and localisation from the nearest pack with a `[residency]`; each
    // optional key from the nearest pack that states it, so an overlay that only moves the home
    // region keeps its baseline's transfers and minimised fields.
    let stated = || members.iter().filter_map(|m| m.residency.as_ref());
    let Some(nearest) = stated().next() else {
        sink.error(&me.span, "missing key `residency` in the pack file and no extended pack defines it");
        return None;
    };
    let residency = Residency {
        home_regions: nearest.home_regions.clone(),
        localisation: nearest.localisation,
        in_country_collection: stated().find_map(|r| r.in_country_collection).unwrap_or(false),
        minimised_fields: stated().find_map(|r| r.minimised_fields.clone()).unwrap_or_default(),
        transfers: stated().find_map(|r| r.transfers.clone()).unwrap_or_default(),
        cite: stated().find_map(|r| r.cite.clone()),
    };
    if me.meta.kind == PackKind::Jurisdiction && residency.cite.is_none() {
        sink.error(
            &me.span,
            "`[residency]` needs `cite`: the law that sets where the subjects' data lives and what may leave \
             (itself or from a pack it extends); residency refusals name it",
        );
    }
    let mut rights = Rights::default();
    for m in members {
        rights.deadline = rights.deadline.or(m.rights.deadline);
        rights.extension = rights.extension.or(m.rights.extension);
        rights.age_of_digital_consent = rights.age_of_digital_consent.or(m.rights.age_of_digital_consent);
    }
    // Every citation of the chain's `[rights]` tables, nearest first: the deadline's (from the
    // pack that states it) and those of what nearer packs add (an age threshold, say).
    let mut cites: Vec<&str> = Vec::new();
    for cite in members.iter().filter_map(|m| m.rights.cite.as_deref()) {
        if !cites.contains(&cite) {
            cites.push(cite);
        }
    }
    rights.cite = (!cites.is_empty()).then(|| cites.join("; "));
    let deadline_cited = members.iter().find(|m| m.rights.deadline.is_some()).is_some_and(|m| m.rights.cite.is_some());
    // No silent default in the rights path: a jurisdiction's pack states its deadline (or that
    // the law fixes none), with the citation, itself or through the packs it extends.
    if me.meta.kind == PackKind::Jurisdiction {
        match (rights.deadline, deadline_cited) {
            (None, _) => sink.error(
                &me.span,
                "missing `[rights] deadline`: state the period the law gives to answer a request (e.g. \"1 month\"), \
                 or \"none\" where it fixes none, with `cite`",
            ),
            (Some(_), false) => sink.error(&me.span, "`[rights]` states a deadline without `cite`"),
            (Some(Deadline::NoFixedPeriod), true) if rights.extension.is_some() => {
                sink.error(&me.span, "`[rights] extension` extends a deadline the pack says the law does not fix")
            }
            _ => {}
        }
    }
    // Each part of `[signals]` from the nearest pack that states it.
    let signals = Signals {
        gpc: members.iter().find_map(|m| m.signals.gpc.clone()),
        opt_out: members.iter().find_map(|m| m.signals.opt_out.clone()),
        tcf: members.iter().find_map(|m| m.signals.tcf.clone()),
    };
    if signals.gpc.as_ref().is_some_and(|g| g.binding) && signals.opt_out.is_none() {
        sink.error(&me.span, "a binding `[signals.gpc]` needs `[signals.opt_out]`: what the opt-out withdraws");
    }
    // Definitions visible to this pack: its own shadow inherited ones of the same id.
    fn merged<T: Clone>(members: &[&PackFile], get: impl Fn(&PackFile) -> Vec<(String, T)>) -> Vec<T> {
        let mut seen: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for m in members {
            for (id, item) in get(m) {
                if !seen.contains(&id) {
                    seen.push(id);
                    out.push(item);
                }
            }
        }
        out
    }
    let obligations =
        merged(members, |m| m.definitions.obligations.iter().map(|(o, _)| (o.id.clone(), o.clone())).collect());
    let lifetimes =
        merged(members, |m| m.definitions.lifetimes.iter().map(|(o, _)| (o.id.clone(), o.clone())).collect());
    let windows = merged(members, |m| m.definitions.windows.iter().map(|(o, _)| (o.id.clone(), o.clone())).collect());
    let registers =
        merged(members, |m| m.definitions.registers.iter().map(|(o, _)| (o.id.clone(), o.clone())).collect());
    let minors = merged(members, |m| m.definitions.minors.iter().map(|(o, _)| (o.id.clone(), o.clone())).collect());

    if sink.diagnostics.iter().filter(|d| d.is_error()).count() > errors_before {
        return None;
    }
    let chain = members.iter().map(|m| m.meta.pack_ref.clone()).collect();
    let effective_rules: Vec<Rule> = effective.into_iter().map(|(r, _)| r).collect();
    let table = table::build(
        &me.meta.pack_ref,
        me.meta.jurisdiction.as_ref(),
        &effective_rules,
        &cell_rules,
        compiled,
        table::PackTime {
            zones: time_zones.clone(),
            windows: windows.clone(),
            effective: (me.meta.effective_from, me.meta.effective_until),
        },
    );
    Some(Pack {
        meta: me.meta.clone(),
        chain,
        time_zones,
        residency,
        rights,
        signals,
        obligations,
        lifetimes,
        windows,
        registers,
        minors,
        rules: me.rules.iter().map(|p| p.rule.clone()).collect(),
        effective_rules,
        table,
    })
}

/// Words in an obligation's text that describe a register to screen against.
const REGISTER_WORDS: &[&str] =
    &["do-not-call", "do not call", "dnc", "register", "robinson", "bloctel", "tps", "ncpr", "opt-out list"];
/// Words that describe calling hours or days.
const WINDOW_WORDS: &[&str] =
    &["calling hours", "contact hours", "o'clock", "sunday", "saturday", "public holiday", "weekday", "a.m", "p.m"];

/// A restriction written only into an obligation's text is not enforced: a caller that reads the
/// effect contacts the person anyway. Warns where a rule's obligation reads like register
/// screening while the rule has no `screen`, or like calling hours while it has no `window`.
fn warn_on_unenforced_restrictions(
    sink: &mut Sink<'_>,
    me: &PackFile,
    rule: &Rule,
    obligations: &[Obligation],
    has_window: bool,
    has_register: bool,
) {
    let span = me.rules.iter().find(|p| p.rule.id == rule.id).map_or_else(|| me.span.clone(), |p| p.span.clone());
    for obligation in obligations {
        let text = obligation.text.to_lowercase();
        let tokens: Vec<&str> = text
            .split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '\'' || c == '.'))
            .map(|t| t.trim_end_matches('.'))
            .collect();
        // One-word terms match whole words ("tps", not "https"); phrases match anywhere.
        let words =
            |list: &[&str]| list.iter().any(|w| if w.contains(' ') { text.contains(w) } else { tokens.contains(w) });
        // A time of day such as 08:00.
        let clock = text.as_bytes().windows(5).any(|w| {
            w[0].is_ascii_digit()
                && w[1].is_ascii_digit()
                && w[2] == b':'
                && w[3].is_ascii_digit()
                && w[4].is_ascii_digit()
        });
        if !has_register && words(REGISTER_WORDS) {
            sink.warning(
                &span,
                format!(
                    "rule `{}`: obligation `{}` reads like register screening, but the rule has no `screen`: \
                     a number reported as listed is still allowed",
                    rule.id, obligation.id
                ),
            );
        }
        if !has_window && (words(WINDOW_WORDS) || clock) {
            sink.warning(
                &span,
                format!(
                    "rule `{}`: obligation `{}` reads like calling hours, but the rule has no `window`: \
                     a call at a forbidden hour is still allowed",
                    rule.id, obligation.id
                ),
            );
        }
    }
}
