//! Calling windows: times of the week contact is allowed, in the subject's local time, cut down
//! on public holidays (and on their eves) where the window reads a holiday calendar. The type and
//! its arithmetic (is an instant inside, when does the current slot close, when does the next one
//! open in every zone at once) live together; `zone.rs` only answers local-time questions.
//!
//! A date whose year the calendar does not cover is neither a holiday nor an ordinary day: the
//! window cannot say whether it is open, so [`Opening::Uncovered`] (the decision is denied).

use std::sync::Arc;

use jiff::civil::Date;

use super::calendar::HolidayCalendar;
use crate::zone::Zone;

/// Times of the week contact is allowed, in the subject's local time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallingWindow {
    pub id: String,
    /// Per weekday, Monday first: `[start, end)` minute-of-day slots, sorted and disjoint.
    pub days: [Vec<(u16, u16)>; 7],
    /// What public holidays do to the window; `None`: they are ordinary days.
    pub holidays: Option<HolidayRule>,
    pub cite: String,
    pub line: usize,
}

/// How a window treats public holidays: on a holiday (and, where stated, on the day before one)
/// contact is allowed only where both the weekday's slots and these slots allow it, so a holiday
/// can close or shorten a day and never opens hours its weekday does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolidayRule {
    /// The calendar's id (`holiday_calendar`), as the pack names it.
    pub calendar_id: String,
    /// Slots a public holiday is cut down to; empty: closed.
    pub holiday: Vec<(u16, u16)>,
    /// Slots the day before a public holiday is cut down to (Italy's "prefestivi"); `None`: the
    /// eve is an ordinary day.
    pub eve: Option<Vec<(u16, u16)>>,
    /// The dates, joined in when the pack set is compiled; a calendar no file of the set provides
    /// stays empty, covers no year, and so denies every decision inside the window.
    pub calendar: Arc<HolidayCalendar>,
}

/// What a window says about an instant, in every zone at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opening {
    /// Inside; the earliest current slot closes then.
    Open(i64),
    /// Outside; the next instant it is open in all zones, if one is known (the search stops at
    /// dates the holiday calendar does not cover).
    Closed(Option<i64>),
    /// The holiday calendar does not cover the date (in some zone): fail closed.
    Uncovered,
}

/// The holiday calendar does not cover a date the answer depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Uncovered;

pub(crate) const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// How far ahead the next opening is searched for: a week for a plain window; for one with public
/// holidays, a month, so runs such as Christmas to New Year or Easter with its weekend are passed
/// even by a window open one day a week.
const PLAIN_LOOKAHEAD_DAYS: usize = 8;
const HOLIDAY_LOOKAHEAD_DAYS: usize = 31;

const FULL_DAY: &[(u16, u16)] = &[(0, 1440)];

/// `"10:00-13:00"` → minutes `[600, 780)`. `24:00` is allowed as an end.
pub(crate) fn parse_slot(text: &str) -> Option<(u16, u16)> {
    let (start, end) = text.split_once('-')?;
    let minutes = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
    };
    let (start, end) = (minutes(start)?, minutes(end)?);
    (start < end && start < 1440).then_some((start, end))
}

pub(crate) fn format_slot((start, end): (u16, u16)) -> String {
    format!("{:02}:{:02}-{:02}:{:02}", start / 60, start % 60, end / 60, end % 60)
}

fn format_slots(slots: &[(u16, u16)]) -> String {
    if slots.is_empty() {
        "closed".to_owned()
    } else {
        slots.iter().map(|s| format_slot(*s)).collect::<Vec<_>>().join(", ")
    }
}

/// The parts of `slot` inside `bounds`, in order.
fn intersect(slot: (u16, u16), bounds: &[(u16, u16)]) -> impl Iterator<Item = (u16, u16)> + '_ {
    bounds.iter().filter_map(move |&(s, e)| {
        let (start, end) = (slot.0.max(s), slot.1.min(e));
        (start < end).then_some((start, end))
    })
}

/// One local date's slots: the weekday's, cut down by the holiday and eve slots that apply.
#[derive(Debug, Clone, Copy)]
struct DaySlots<'w> {
    weekday: &'w [(u16, u16)],
    holiday: Option<&'w [(u16, u16)]>,
    eve: Option<&'w [(u16, u16)]>,
}

impl<'w> DaySlots<'w> {
    /// Sorted and disjoint, as the weekday's are. No allocation.
    fn slots(self) -> impl Iterator<Item = (u16, u16)> + 'w {
        let (holiday, eve) = (self.holiday.unwrap_or(FULL_DAY), self.eve.unwrap_or(FULL_DAY));
        self.weekday.iter().flat_map(move |&s| intersect(s, holiday).flat_map(move |s| intersect(s, eve)))
    }
}

impl CallingWindow {
    /// The slots of a local date; `Err` when they depend on a year the calendar does not cover.
    fn day(&self, date: Date) -> Result<DaySlots<'_>, Uncovered> {
        let weekday = self.days.get(date.weekday().to_monday_zero_offset() as usize).map_or(&[][..], Vec::as_slice);
        let Some(rule) = &self.holidays else { return Ok(DaySlots { weekday, holiday: None, eve: None }) };
        let is_holiday = rule.calendar.lookup(date).ok_or(Uncovered)?.is_some();
        let eve = match &rule.eve {
            Some(eve) => {
                let next = date.tomorrow().map_err(|_| Uncovered)?;
                rule.calendar.lookup(next).ok_or(Uncovered)?.is_some().then_some(eve.as_slice())
            }
            None => None,
        };
        Ok(DaySlots { weekday, holiday: is_holiday.then_some(rule.holiday.as_slice()), eve })
    }

    /// Inside the window at `at_unix` in `zone`: `Ok(Some(close))`, when the current slot closes.
    fn open_at(&self, zone: &Zone, at_unix: i64) -> Result<Option<i64>, Uncovered> {
        let Some(dt) = zone.civil(at_unix) else { return Ok(None) };
        let day = self.day(dt.date())?;
        let Ok(minute) = u16::try_from(i32::from(dt.hour()) * 60 + i32::from(dt.minute())) else { return Ok(None) };
        Ok(day.slots().find(|&(s, e)| s <= minute && minute < e).and_then(|(_, end)| zone.instant(dt.date(), end)))
    }

    /// The first instant after `at_unix` a slot opens in `zone`, searching ahead a week (a month
    /// for a window with holidays); `Err` when the search meets a date the calendar does not cover.
    fn next_opening(&self, zone: &Zone, at_unix: i64) -> Result<Option<i64>, Uncovered> {
        let Some(dt) = zone.civil(at_unix) else { return Ok(None) };
        let mut date = dt.date();
        let days = if self.holidays.is_some() { HOLIDAY_LOOKAHEAD_DAYS } else { PLAIN_LOOKAHEAD_DAYS };
        for _ in 0..=days {
            for (start, _) in self.day(date)?.slots() {
                if let Some(t) = zone.instant(date, start)
                    && t > at_unix
                {
                    return Ok(Some(t));
                }
            }
            let Ok(next) = date.tomorrow() else { return Ok(None) };
            date = next;
        }
        Ok(None)
    }

    /// When `at_unix` is inside the window in `zone`: the instant the current slot closes.
    pub(crate) fn open_until(&self, zone: &Zone, at_unix: i64) -> Option<i64> {
        self.open_at(zone, at_unix).ok().flatten()
    }

    /// The first instant after `at_unix` at which a slot opens in `zone` (`None` also where the
    /// holiday calendar runs out first).
    pub(crate) fn next_open(&self, zone: &Zone, at_unix: i64) -> Option<i64> {
        self.next_opening(zone, at_unix).ok().flatten()
    }

    /// Whether contact at `at_unix` is inside the window in every zone, when the current slot
    /// closes, or when the window is next open in all zones at once.
    pub(crate) fn opening(&self, zones: &[Zone], at_unix: i64) -> Opening {
        let mut close = i64::MAX;
        let mut inside = true;
        for zone in zones {
            match self.open_at(zone, at_unix) {
                Err(Uncovered) => return Opening::Uncovered,
                Ok(Some(c)) => close = close.min(c),
                Ok(None) => inside = false,
            }
        }
        if inside {
            return Opening::Open(close);
        }
        // Advance to the next opening of each zone that is closed until all are open together.
        let mut t = at_unix;
        for _ in 0..64 {
            let mut all_open = true;
            for zone in zones {
                if !matches!(self.open_at(zone, t), Ok(Some(_))) {
                    all_open = false;
                    match self.next_opening(zone, t) {
                        Ok(Some(next)) => t = t.max(next),
                        Ok(None) | Err(Uncovered) => return Opening::Closed(None),
                    }
                }
            }
            if all_open {
                return Opening::Closed(Some(t));
            }
        }
        Opening::Closed(None)
    }

    /// Whether contact at `at_unix` is inside the window in every zone. `Ok(close)` gives when the
    /// earliest current slot closes; `Err(next)` when it is next open in all zones at once, and
    /// `Err(None)` also for a date the holiday calendar does not cover (never open). For tests:
    /// the engine matches on [`CallingWindow::opening`].
    #[cfg(test)]
    pub(crate) fn check(&self, zones: &[Zone], at_unix: i64) -> Result<i64, Option<i64>> {
        match self.opening(zones, at_unix) {
            Opening::Open(close) => Ok(close),
            Opening::Closed(next) => Err(next),
            Opening::Uncovered => Err(None),
        }
    }

    /// For explanations: the holiday calendar's coverage and what the local date of `at_unix` is
    /// in each zone, and whether the calendar covers it. `None` for a window without holidays.
    pub fn holiday_note(&self, zones: &[Zone], at_unix: i64) -> Option<(String, bool)> {
        let rule = self.holidays.as_ref()?;
        let calendar = &rule.calendar;
        let mut covered = true;
        // What each local date is, with the zones it is the date in (most often one date).
        let mut days: Vec<(Date, String, Vec<&str>)> = Vec::new();
        for zone in zones {
            let Some(date) = zone.civil(at_unix).map(|dt| dt.date()) else { continue };
            let status = match calendar.lookup(date) {
                None => {
                    covered = false;
                    "not covered".to_owned()
                }
                Some(Some(name)) => format!("public holiday ({name})"),
                Some(None) if rule.eve.is_some() && calendar.lookup(date.tomorrow().ok()?).flatten().is_some() => {
                    "the day before a public holiday".to_owned()
                }
                Some(None) => "no holiday".to_owned(),
            };
            match days.iter_mut().find(|(d, s, _)| *d == date && *s == status) {
                Some((_, _, names)) => names.push(zone.name()),
                None => days.push((date, status, vec![zone.name()])),
            }
        }
        let days: Vec<String> =
            days.into_iter().map(|(date, status, names)| format!("{date} in {}: {status}", names.join(", "))).collect();
        let source =
            if calendar.source.is_empty() { "no file provides it".to_owned() } else { calendar.source.clone() };
        let what = format!(
            "holiday calendar `{}` ({source}) covers {}: {}",
            rule.calendar_id,
            calendar.years_text(),
            days.join("; ")
        );
        Some((what, covered))
    }

    /// `mon 10:00-13:00, 14:00-20:00; sat closed; ...; public holidays (calendar `fr`, 2026-2027)
    /// closed` for explanations.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> =
            WEEKDAYS.iter().zip(&self.days).map(|(name, slots)| format!("{name} {}", format_slots(slots))).collect();
        if let Some(rule) = &self.holidays {
            let bounded = |slots: &[(u16, u16)]| match slots {
                [] => "closed".to_owned(),
                _ => format!("at most {}", format_slots(slots)),
            };
            parts.push(format!(
                "public holidays (calendar `{}`, {}) {}",
                rule.calendar_id,
                rule.calendar.years_text(),
                bounded(&rule.holiday)
            ));
            if let Some(eve) = &rule.eve {
                parts.push(format!("the day before a public holiday {}", bounded(eve)));
            }
        }
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests;
