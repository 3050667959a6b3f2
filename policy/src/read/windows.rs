//! `[windows.<id>]`: calling windows, per weekday `HH:MM-HH:MM` slots in the subject's local time.

use super::document::{Span, Table};
use super::named::named_tables;
use crate::diag::Sink;
use crate::model::window::{CallingWindow, WEEKDAYS, parse_slot};

const WINDOW_KEYS: &[&str] = &["mon", "tue", "wed", "thu", "fri", "sat", "sun", "cite"];

pub(crate) fn read(sink: &mut Sink<'_>, root: &Table<'_, '_>) -> Vec<(CallingWindow, Span)> {
    named_tables(sink, root, "windows", "a calling window", WINDOW_KEYS, |sink, id, t, key_span| {
        let mut days: [Vec<(u16, u16)>; 7] = Default::default();
        for (day, name) in days.iter_mut().zip(WEEKDAYS) {
            let Some(list) = t.opt_strings(sink, name) else { continue };
            for item in list.get_ref() {
                match parse_slot(item.get_ref()) {
                    Some(slot) if day.iter().any(|s| s.0 < slot.1 && slot.0 < s.1) => {
                        sink.error(&item.span(), "time slot overlaps another slot of the same day");
                    }
                    Some(slot) => day.push(slot),
                    None => sink.error(&item.span(), "time slot must be `HH:MM-HH:MM`, start before end"),
                }
            }
            day.sort_unstable();
        }
        if days.iter().all(Vec::is_empty) {
            sink.warning(key_span, "calling window has no slots; contact is never allowed");
        }
        let line = sink.line_of(key_span);
        t.req_non_empty(sink, "cite").map(|cite| CallingWindow { id: id.to_owned(), days, cite, line })
    })
}
