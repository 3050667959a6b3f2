//! Holiday calendars across a pack set: each `holidays.toml` read on its own, each calendar id
//! used once in the set, and every calling window that names a calendar joined to its dates
//! before the packs are linked. Where a window would fail closed because the data is missing or
//! runs out too soon, the window's pack gets a warning: the decisions are safe (denied), but the
//! pack no longer does what its authors meant.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::diag::{PackSource, Sink};
use crate::model::HolidayCalendar;
use crate::read::calendar::read_calendar;
use crate::read::{Header, PackFile};

type Span = std::ops::Range<usize>;

/// A calendar of the set, with where its file's diagnostics go.
pub(crate) struct Read {
    calendar: Arc<HolidayCalendar>,
    /// Index of the file's sink.
    sink: usize,
    id_span: Span,
}

/// Reads every calendar file (one sink each, in order). A calendar id claimed twice is an error
/// in the later file; a file with errors provides no calendar.
pub(crate) fn read<'a>(files: &[&'a PackSource], sinks: &mut Vec<Sink<'a>>) -> BTreeMap<String, Read> {
    let mut calendars: BTreeMap<String, Read> = BTreeMap::new();
    let mut claimed: BTreeMap<String, &str> = BTreeMap::new();
    for &file in files {
        let mut sink = Sink::new(file);
        let (calendar, id) = read_calendar(file, &mut sink);
        if let Some(id) = &id {
            match claimed.get(id.get_ref()) {
                Some(first) => sink.error(&id.span(), format!("holiday calendar id is already used by {first}")),
                None => {
                    claimed.insert(id.get_ref().clone(), &file.path);
                    if let Some(calendar) = calendar {
                        let read = Read { calendar: Arc::new(calendar), sink: sinks.len(), id_span: id.span() };
                        calendars.insert(id.get_ref().clone(), read);
                    }
                }
            }
        }
        sinks.push(sink);
    }
    calendars
}

/// The year of an instant at its latest local date anywhere (UTC+14): a pack that takes effect
/// at midnight in its own zone is counted in the year it names.
fn latest_local_year(unix: i64) -> Option<i16> {
    let ts = jiff::Timestamp::from_second(unix.saturating_add(14 * 3600)).ok()?;
    Some(jiff::tz::TimeZone::UTC.to_datetime(ts).year())
}

/// Joins each window that names a calendar to it, warning (on the window's pack) where the
/// calendar is missing or does not cover the year the pack takes effect and the year after (for a
/// pack without `effective_from`, the calendar's first year and the year after). Calendars no
/// window reads are flagged on their own file.
pub(crate) fn join(
    parsed: &mut [(Option<PackFile>, Header)],
    sinks: &mut [Sink<'_>],
    calendars: &BTreeMap<String, Read>,
    calendar_sinks: &mut [Sink<'_>],
) {
    let mut used: BTreeSet<String> = BTreeSet::new();
    for (i, (file, _)) in parsed.iter_mut().enumerate() {
        let Some(file) = file else { continue };
        let effective_from = file.meta.effective_from;
        for (window, span) in &mut file.definitions.windows {
            let Some(rule) = window.holidays.as_mut() else { continue };
            let Some(sink) = sinks.get_mut(i) else { continue };
            let Some(Read { calendar, .. }) = calendars.get(&rule.calendar_id) else {
                sink.warning(
                    span,
                    format!(
                        "calling window `{}` reads holiday calendar `{}`, which no `holidays.toml` of the set \
                         provides: every decision inside the window is denied (fail closed); add the file \
                         `tools/holidays.py` generates",
                        window.id, rule.calendar_id
                    ),
                );
                continue;
            };
            used.insert(rule.calendar_id.clone());
            rule.calendar = Arc::clone(calendar);
            let from = match effective_from.and_then(latest_local_year) {
                Some(year) => Some((year, format!("the year the pack takes effect ({year})"))),
                None => calendar.years.first().map(|&y| {
                    (y, format!("its first year ({y}; the pack states no `effective_from` to check against)"))
                }),
            };
            let Some((year, why)) = from else {
                sink.warning(
                    span,
                    format!(
                        "holiday calendar `{}` ({}) covers no year: every decision inside calling window `{}` \
                         is denied (fail closed)",
                        rule.calendar_id, calendar.path, window.id
                    ),
                );
                continue;
            };
            let missing: Vec<String> = [year, year.saturating_add(1)]
                .iter()
                .filter(|y| !calendar.covers(**y))
                .map(ToString::to_string)
                .collect();
            if !missing.is_empty() {
                sink.warning(
                    span,
                    format!(
                        "holiday calendar `{}` ({}) covers {} but not {}: it must cover {why} and the year \
                         after; decisions inside calling window `{}` on dates it does not cover are denied \
                         (fail closed); refresh it with `tools/holidays.py`",
                        rule.calendar_id,
                        calendar.path,
                        calendar.years_text(),
                        missing.join(" and "),
                        window.id
                    ),
                );
            }
        }
    }
    // A restriction only described: an obligation about public holidays on a rule whose window
    // (defined in the same file) reads no calendar.
    for (i, (file, _)) in parsed.iter().enumerate() {
        let (Some(file), Some(sink)) = (file, sinks.get_mut(i)) else { continue };
        for parsed_rule in &file.rules {
            let rule = &parsed_rule.rule;
            let Some(window_id) = &rule.window else { continue };
            let Some((window, _)) = file.definitions.windows.iter().find(|(w, _)| &w.id == window_id) else { continue };
            if window.holidays.is_some() {
                continue;
            }
            let described = file
                .definitions
                .obligations
                .iter()
                .find(|(o, _)| rule.obligations.contains(&o.id) && o.text.to_lowercase().contains("holiday"));
            if let Some((obligation, _)) = described {
                sink.warning(
                    parsed_rule.window_span.as_ref().unwrap_or(&parsed_rule.span),
                    format!(
                        "rule `{}`: obligation `{}` speaks of public holidays, but calling window `{window_id}` reads \
                         no `holiday_calendar`: a call on a public holiday is still allowed",
                        rule.id, obligation.id
                    ),
                );
            }
        }
    }
    for (id, read) in calendars {
        if !used.contains(id)
            && let Some(sink) = calendar_sinks.get_mut(read.sink)
        {
            sink.warning(&read.id_span, format!("holiday calendar `{id}` is not read by any calling window"));
        }
    }
}
