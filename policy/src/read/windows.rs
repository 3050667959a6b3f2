//! `[windows.<id>]`: calling windows, per weekday `HH:MM-HH:MM` slots in the subject's local time,
//! and what public holidays do to them (`holiday_calendar`, `holiday`, `holiday_eve`).

use std::sync::Arc;

use toml::Spanned;

use super::document::{Span, Table};
use super::named::named_tables;
use super::values::is_id_segment;
use crate::diag::Sink;
use crate::model::calendar::HolidayCalendar;
use crate::model::window::{CallingWindow, HolidayRule, WEEKDAYS, parse_slot};

const WINDOW_KEYS: &[&str] =
    &["mon", "tue", "wed", "thu", "fri", "sat", "sun", "holiday_calendar", "holiday", "holiday_eve", "cite"];

/// A list of slots, sorted; `None` when the key is absent. Bad or overlapping slots are reported.
fn slots(sink: &mut Sink<'_>, t: &Table<'_, '_>, key: &str) -> Option<Spanned<Vec<(u16, u16)>>> {
    let list = t.opt_strings(sink, key)?;
    let mut out: Vec<(u16, u16)> = Vec::new();
    for item in list.get_ref() {
        match parse_slot(item.get_ref()) {
            Some(slot) if out.iter().any(|s| s.0 < slot.1 && slot.0 < s.1) => {
                sink.error(&item.span(), "time slot overlaps another slot of the same day");
            }
            Some(slot) => out.push(slot),
            None => sink.error(&item.span(), "time slot must be `HH:MM-HH:MM`, start before end"),
        }
    }
    out.sort_unstable();
    Some(Spanned::new(list.span(), out))
}

/// `holiday_calendar`, `holiday` and `holiday_eve` go together: a calendar without a statement
/// of what a holiday does (or the reverse) is refused rather than given a default.
fn holiday_rule(sink: &mut Sink<'_>, t: &Table<'_, '_>) -> Option<HolidayRule> {
    let calendar = t.opt_str(sink, "holiday_calendar");
    let holiday = slots(sink, t, "holiday");
    let eve = slots(sink, t, "holiday_eve");
    let Some(calendar) = calendar else {
        for span in [holiday.as_ref().map(Spanned::span), eve.as_ref().map(Spanned::span)].into_iter().flatten() {
            sink.error(
                &span,
                "holiday slots need `holiday_calendar`: the calendar that says which days are public holidays",
            );
        }
        return None;
    };
    let id = *calendar.get_ref();
    if !is_id_segment(id) {
        sink.error(&calendar.span(), "`holiday_calendar` must name a calendar id (`a-z`, `0-9`, `_` or `-`)");
        return None;
    }
    let Some(holiday) = holiday else {
        sink.error(
            &calendar.span(),
            "`holiday_calendar` needs `holiday`: the slots on a public holiday (`holiday = []`: closed)",
        );
        return None;
    };
    Some(HolidayRule {
        calendar_id: id.to_owned(),
        holiday: holiday.into_inner(),
        eve: eve.map(Spanned::into_inner),
        calendar: Arc::new(HolidayCalendar::missing(id)),
    })
}

pub(crate) fn read(sink: &mut Sink<'_>, root: &Table<'_, '_>) -> Vec<(CallingWindow, Span)> {
    named_tables(sink, root, "windows", "a calling window", WINDOW_KEYS, |sink, id, t, key_span| {
        let mut days: [Vec<(u16, u16)>; 7] = Default::default();
        for (day, name) in days.iter_mut().zip(WEEKDAYS) {
            if let Some(list) = slots(sink, t, name) {
                *day = list.into_inner();
            }
        }
        if days.iter().all(Vec::is_empty) {
            sink.warning(key_span, "calling window has no slots; contact is never allowed");
        }
        let holidays = holiday_rule(sink, t);
        let line = sink.line_of(key_span);
        t.req_non_empty(sink, "cite").map(|cite| CallingWindow { id: id.to_owned(), days, holidays, cite, line })
    })
}
