//! Public-holiday calendars for calling windows: the national holidays of one country for the
//! years a generated `holidays.toml` covers (`tools/holidays.py`). A date in a year the calendar
//! does not cover is unknown, never "not a holiday": windows that read the calendar fail closed
//! there (`window.rs`).

use jiff::civil::Date;

use super::terms::Confidence;

/// The public holidays of one country, for the years the data is complete for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolidayCalendar {
    /// What windows name it by (`holiday_calendar = "fr"`).
    pub id: String,
    /// The ISO 3166 code the holidays are for (`FR`).
    pub country: String,
    /// Where the dates come from, with the version (`python-holidays 0.108 ...`).
    pub source: String,
    /// The command that wrote the file, to refresh it.
    pub generated_by: String,
    /// What the calendar leaves out (regional holidays), declared rather than silently missing.
    pub regional: String,
    pub confidence: Confidence,
    /// The years the data is complete for, ascending. Any other year is not covered.
    pub years: Vec<i16>,
    /// The holidays of those years, ascending, each with its name.
    pub dates: Vec<(Date, String)>,
    /// The file the calendar was read from (empty for a calendar no file provides).
    pub path: String,
    pub line: usize,
    /// SHA-256 (hex) of the file's text, so a decision can be replayed against the exact data.
    pub revision: String,
}

impl HolidayCalendar {
    /// A calendar no file provides: it covers no year, so every date is unknown (fails closed).
    pub(crate) fn missing(id: &str) -> HolidayCalendar {
        HolidayCalendar {
            id: id.to_owned(),
            country: String::new(),
            source: String::new(),
            generated_by: String::new(),
            regional: String::new(),
            confidence: Confidence::Uncertain,
            years: Vec::new(),
            dates: Vec::new(),
            path: String::new(),
            line: 0,
            revision: String::new(),
        }
    }

    /// Whether the data covers every day of `year`.
    pub fn covers(&self, year: i16) -> bool {
        self.years.binary_search(&year).is_ok()
    }

    /// `None` when the calendar does not cover the date's year; else the holiday's name, if the
    /// date is one.
    pub fn lookup(&self, date: Date) -> Option<Option<&str>> {
        if !self.covers(date.year()) {
            return None;
        }
        Some(
            self.dates
                .binary_search_by(|(d, _)| d.cmp(&date))
                .ok()
                .and_then(|i| self.dates.get(i))
                .map(|(_, n)| n.as_str()),
        )
    }

    /// The covered years for people: `2026-2027`, `2026, 2028`, or `no year`.
    pub fn years_text(&self) -> String {
        let mut runs: Vec<(i16, i16)> = Vec::new();
        for &year in &self.years {
            match runs.last_mut() {
                Some((_, end)) if *end + 1 == year => *end = year,
                _ => runs.push((year, year)),
            }
        }
        if runs.is_empty() {
            return "no year".to_owned();
        }
        runs.iter()
            .map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `YYYY-MM-DD` as a real calendar date, nothing looser (no week dates, no times).
pub(crate) fn parse_date(text: &str) -> Option<Date> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i16> {
        let part = b.get(range)?;
        part.iter().try_fold(0i16, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + i16::from(c - b'0')))
    };
    if b.len() != 10 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    Date::new(year, i8::try_from(month).ok()?, i8::try_from(day).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_strictly_and_years_print_as_runs() {
        assert_eq!(parse_date("2026-12-25"), Some(jiff::civil::date(2026, 12, 25)));
        for bad in ["2026-02-30", "2026-13-01", "2026-1-01", "20261225", "2026-12-25T00:00", "2026/12/25", "+2026-1-1"]
        {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        let mut calendar = HolidayCalendar::missing("x");
        assert_eq!(calendar.years_text(), "no year");
        assert_eq!(calendar.lookup(jiff::civil::date(2026, 1, 1)), None);
        calendar.years = vec![2026, 2027, 2029];
        calendar.dates = vec![(jiff::civil::date(2026, 1, 1), "New Year's Day".into())];
        assert_eq!(calendar.years_text(), "2026-2027, 2029");
        assert_eq!(calendar.lookup(jiff::civil::date(2026, 1, 1)), Some(Some("New Year's Day")));
        assert_eq!(calendar.lookup(jiff::civil::date(2027, 1, 2)), Some(None));
        assert_eq!(calendar.lookup(jiff::civil::date(2028, 1, 1)), None);
    }
}
