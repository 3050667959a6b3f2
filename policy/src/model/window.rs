//! Calling windows: times of the week contact is allowed, in the subject's local time. The type
//! and its arithmetic (is an instant inside, when does the current slot close, when does the next
//! one open in every zone at once) live together; `zone.rs` only answers local-time questions.

use crate::zone::Zone;

/// Times of the week contact is allowed, in the subject's local time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallingWindow {
    pub id: String,
    /// Per weekday, Monday first: `[start, end)` minute-of-day slots, sorted and disjoint.
    pub days: [Vec<(u16, u16)>; 7],
    pub cite: String,
    pub line: usize,
}

pub(crate) const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

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

impl CallingWindow {
    /// When `at_unix` is inside the window in `zone`: the instant the current slot closes.
    pub(crate) fn open_until(&self, zone: &Zone, at_unix: i64) -> Option<i64> {
        let dt = zone.civil(at_unix)?;
        let day = self.days.get(dt.weekday().to_monday_zero_offset() as usize)?;
        let minute = u16::try_from(i32::from(dt.hour()) * 60 + i32::from(dt.minute())).ok()?;
        let &(_, end) = day.iter().find(|(s, e)| *s <= minute && minute < *e)?;
        zone.instant(dt.date(), end)
    }

    /// The first instant after `at_unix` at which a slot opens in `zone` (looks 8 days ahead).
    pub(crate) fn next_open(&self, zone: &Zone, at_unix: i64) -> Option<i64> {
        let mut date = zone.civil(at_unix)?.date();
        for _ in 0..=8 {
            let day = self.days.get(date.weekday().to_monday_zero_offset() as usize)?;
            for &(start, _) in day {
                if let Some(t) = zone.instant(date, start)
                    && t > at_unix
                {
                    return Some(t);
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// Whether contact at `at_unix` is inside the window in every zone. `Ok(close)` gives when the
    /// earliest current slot closes; `Err(next)` when it is next open in all zones at once.
    pub(crate) fn check(&self, zones: &[Zone], at_unix: i64) -> Result<i64, Option<i64>> {
        if let Some(close) =
            zones.iter().map(|z| self.open_until(z, at_unix)).try_fold(i64::MAX, |acc, c| c.map(|c| acc.min(c)))
        {
            return Ok(close);
        }
        // Advance to the next opening of each zone that is closed until all are open together.
        let mut t = at_unix;
        for _ in 0..64 {
            let mut all_open = true;
            for zone in zones {
                if self.open_until(zone, t).is_none() {
                    all_open = false;
                    t = t.max(self.next_open(zone, t).ok_or(None)?);
                }
            }
            if all_open {
                return Err(Some(t));
            }
        }
        Err(None)
    }

    /// `mon 10:00-13:00, 14:00-20:00; sat closed; ...` for explanations.
    pub fn describe(&self) -> String {
        WEEKDAYS
            .iter()
            .zip(&self.days)
            .map(|(name, slots)| {
                if slots.is_empty() {
                    format!("{name} closed")
                } else {
                    format!("{name} {}", slots.iter().map(|s| format_slot(*s)).collect::<Vec<_>>().join(", "))
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_rfc3339;

    fn fr_window() -> CallingWindow {
        let weekday = vec![(600, 780), (840, 1200)];
        CallingWindow {
            id: "w".into(),
            days: [weekday.clone(), weekday.clone(), weekday.clone(), weekday.clone(), weekday, vec![], vec![]],
            cite: "c".into(),
            line: 1,
        }
    }

    #[test]
    fn slots_parse() {
        assert_eq!(parse_slot("10:00-13:00"), Some((600, 780)));
        assert_eq!(parse_slot("21:00-24:00"), Some((1260, 1440)));
        for bad in ["10-13", "13:00-10:00", "10:00-10:00", "25:00-26:00", "10:60-11:00", "1:00-2:00"] {
            assert_eq!(parse_slot(bad), None, "{bad}");
        }
        assert_eq!(format_slot((600, 780)), "10:00-13:00");
    }

    #[test]
    fn window_in_local_time_with_next_opening() {
        let paris = Zone::parse("Europe/Paris").unwrap();
        let w = fr_window();
        let t = |s| parse_rfc3339(s).unwrap();
        // Monday 23 Nov 2026 10:30 Paris (UTC+1) is inside; the slot closes at 13:00 local.
        assert_eq!(w.check(std::slice::from_ref(&paris), t("2026-11-23T09:30:00Z")), Ok(t("2026-11-23T12:00:00Z")));
        // Saturday: next opening Monday 10:00 local.
        assert_eq!(
            w.check(std::slice::from_ref(&paris), t("2026-11-28T10:00:00Z")),
            Err(Some(t("2026-11-30T09:00:00Z")))
        );
        // Lunch break: 13:30 local reopens at 14:00.
        assert_eq!(
            w.check(std::slice::from_ref(&paris), t("2026-11-23T12:30:00Z")),
            Err(Some(t("2026-11-23T13:00:00Z")))
        );
        assert_eq!(paris.describe(t("2026-11-30T09:00:00Z")), "Mon 2026-11-30 10:00 Europe/Paris");
        assert!(Zone::parse("Mars/Olympus").is_none());
    }

    #[test]
    fn several_zones_must_all_be_inside() {
        let zones = [Zone::parse("America/New_York").unwrap(), Zone::parse("America/Los_Angeles").unwrap()];
        let every_day = vec![(480, 1260)];
        let w = CallingWindow {
            id: "w".into(),
            days: std::array::from_fn(|_| every_day.clone()),
            cite: "c".into(),
            line: 1,
        };
        let t = |s| parse_rfc3339(s).unwrap();
        // 12:00 UTC is 07:00 New York (closed) and 04:00 Los Angeles (closed): next is 08:00 LA = 16:00 UTC.
        assert_eq!(w.check(&zones, t("2026-11-23T12:00:00Z")), Err(Some(t("2026-11-23T16:00:00Z"))));
        // 20:00 UTC: 15:00 NY, 12:00 LA; closes at 21:00 NY = 02:00 UTC.
        assert_eq!(w.check(&zones, t("2026-11-23T20:00:00Z")), Ok(t("2026-11-24T02:00:00Z")));
    }
}
