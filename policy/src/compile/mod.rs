//! Compiling a pack set: every file read on its own (`read`), then the checks that need several
//! files (one pack per id and per jurisdiction, `extends` chains, references left to extended
//! packs, holiday calendars joined to the windows that read them: `calendars`), then each pack
//! linked with the packs it extends (`link`) into a decision table (`table`). Pure: sources come
//! in as text, and nothing here decides.

mod calendars;
mod link;
mod table;

use std::collections::BTreeMap;

use domicile_types::Jurisdiction;

use crate::diag::{Diagnostic, Diagnostics, PackSource, Sink};
use crate::model::Pack;
use crate::read::{PackFile, RefKind, read_pack};

/// Reads, validates and links every source: pack files and holiday calendars
/// ([`PackSource::is_holiday_calendar`]). All problems of all files come back at once, each on its
/// own file (pack files first, then calendars); errors make it fail, warnings come back alongside
/// the packs.
pub(crate) fn compile(all: &[PackSource]) -> Result<(Vec<Pack>, Vec<Diagnostic>), Diagnostics> {
    let (calendar_files, sources): (Vec<&PackSource>, Vec<&PackSource>) =
        all.iter().partition(|s| s.is_holiday_calendar());
    let mut calendar_sinks: Vec<Sink<'_>> = Vec::with_capacity(calendar_files.len());
    let calendars = calendars::read(&calendar_files, &mut calendar_sinks);
    let mut sinks: Vec<Sink<'_>> = Vec::with_capacity(sources.len());
    let mut parsed = Vec::with_capacity(sources.len());
    for &source in &sources {
        let mut sink = Sink::new(source);
        let (pack, header) = read_pack(source, &mut sink);
        sinks.push(sink);
        parsed.push((pack, header));
    }

    // Each jurisdiction and each pack id must belong to exactly one pack, or which pack
    // decides would depend on load order.
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    let mut jurisdictions: BTreeMap<Jurisdiction, usize> = BTreeMap::new();
    for (i, (_, header)) in parsed.iter().enumerate() {
        if let Some(id) = &header.id {
            match ids.get(id.get_ref()) {
                Some(&first) => {
                    let first_path = sources.get(first).map_or("", |s| s.path.as_str());
                    if let Some(sink) = sinks.get_mut(i) {
                        sink.error(&id.span(), format!("pack id is already used by {first_path}"));
                    }
                }
                None => {
                    ids.insert(id.get_ref().clone(), i);
                }
            }
        }
        if let Some(j) = &header.jurisdiction
            && !header.baseline
        {
            match jurisdictions.get(j.get_ref()) {
                Some(&first) => {
                    let first_path = sources.get(first).map_or("", |s| s.path.as_str());
                    if let Some(sink) = sinks.get_mut(i) {
                        sink.error(
                            &j.span(),
                            format!("jurisdiction {} is already covered by {first_path}", j.get_ref()),
                        );
                    }
                }
                None => {
                    jurisdictions.insert(j.get_ref().clone(), i);
                }
            }
        }
    }

    // Windows read their holiday calendars' dates from here on (a missing one fails closed).
    calendars::join(&mut parsed, &mut sinks, &calendars, &mut calendar_sinks);

    // Resolve `extends` into chains (this pack first).
    let mut chains: Vec<Vec<usize>> = Vec::with_capacity(parsed.len());
    for (i, (_, header)) in parsed.iter().enumerate() {
        let mut chain = vec![i];
        let mut problem = None;
        let mut current = i;
        while let Some(extends) = parsed.get(current).and_then(|(_, h)| h.extends.as_ref()) {
            match ids.get(extends.get_ref()) {
                None => {
                    if current == i {
                        problem = Some((extends.span(), "`extends` names no pack in this set".to_owned()));
                    }
                    break;
                }
                Some(&next) if chain.contains(&next) => {
                    if let Some(e) = &header.extends {
                        problem = Some((e.span(), "`extends` forms a cycle".to_owned()));
                    }
                    break;
                }
                Some(&next) => {
                    let parent_baseline = parsed.get(next).is_some_and(|(_, h)| h.baseline);
                    if current == i && header.baseline && !parent_baseline {
                        problem = Some((extends.span(), "a baseline can only extend another baseline".to_owned()));
                    }
                    chain.push(next);
                    current = next;
                }
            }
        }
        if let (Some((span, message)), Some(sink)) = (problem, sinks.get_mut(i)) {
            sink.error(&span, message);
        }
        chains.push(chain);
    }

    // References a file leaves to the packs it extends.
    for (i, chain) in chains.iter().enumerate() {
        let Some((_, header)) = parsed.get(i) else { continue };
        let ancestors: Vec<&PackFile> =
            chain.iter().skip(1).filter_map(|&a| parsed.get(a).and_then(|(p, _)| p.as_ref())).collect();
        if ancestors.len() + 1 != chain.len() || header.extends.is_none() {
            // A broken ancestor reports its own errors; resolving against it would guess.
            continue;
        }
        for (kind, name, span) in &header.unresolved {
            let found = ancestors.iter().any(|p| match kind {
                RefKind::Replaces => p.rules.iter().any(|r| &r.rule.id == name),
                _ => p.definitions.defines(*kind, name),
            });
            if !found && let Some(sink) = sinks.get_mut(i) {
                sink.error(span, kind.undefined());
            }
        }
    }

    // Link every pack whose whole chain read cleanly, so chain-level problems (gaps,
    // unreachable rules) are reported in the same run as other files' errors.
    let mut packs = Vec::new();
    for (i, chain) in chains.iter().enumerate() {
        let members: Vec<&PackFile> =
            chain.iter().filter_map(|&a| parsed.get(a).and_then(|(p, _)| p.as_ref())).collect();
        let chain_ok =
            members.len() == chain.len() && chain.iter().all(|&a| sinks.get(a).is_some_and(|s| !s.has_errors()));
        if chain_ok
            && let Some(sink) = sinks.get_mut(i)
            && let Some(pack) = link::link(&members, sink)
        {
            packs.push(pack);
        }
    }

    let mut failed = false;
    let mut diagnostics = Vec::new();
    for sink in sinks.into_iter().chain(calendar_sinks) {
        failed |= sink.has_errors();
        diagnostics.extend(sink.finish());
    }
    if failed {
        return Err(Diagnostics(diagnostics));
    }
    Ok((packs, diagnostics))
}
