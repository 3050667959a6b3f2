//! IANA time zones, for calling windows in the subject's local time. Zones come from jiff's bundled tz database, so evaluation
//! never reads the system's zoneinfo files and gives the same answer on every machine.

use std::fmt;
use std::sync::OnceLock;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Weekday};
use jiff::tz::{TimeZone, TimeZoneDatabase};

fn database() -> &'static TimeZoneDatabase {
    static DB: OnceLock<TimeZoneDatabase> = OnceLock::new();
    DB.get_or_init(TimeZoneDatabase::bundled)
}

/// An IANA time zone, e.g. `Europe/Paris`. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct Zone {
    name: String,
    tz: TimeZone,
}

impl Zone {
    /// `None` for a name the bundled database does not know.
    pub fn parse(name: &str) -> Option<Zone> {
        database().get(name).ok().map(|tz| Zone { name: name.to_owned(), tz })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The local date and time of an instant in this zone.
    pub(crate) fn civil(&self, at_unix: i64) -> Option<DateTime> {
        Timestamp::from_second(at_unix).ok().map(|ts| self.tz.to_datetime(ts))
    }

    /// The instant `minute_of_day` (up to 1440, the next midnight) of `date` begins in this zone.
    pub(crate) fn instant(&self, date: Date, minute_of_day: u16) -> Option<i64> {
        let (date, minute) = if minute_of_day >= 1440 { (date.tomorrow().ok()?, 0) } else { (date, minute_of_day) };
        let hour = i8::try_from(minute / 60).ok()?;
        let minute = i8::try_from(minute % 60).ok()?;
        let dt = date.to_datetime(jiff::civil::Time::new(hour, minute, 0, 0).ok()?);
        self.tz.to_timestamp(dt).ok().map(Timestamp::as_second)
    }

    /// `Mon 10:00 Europe/Paris` for an instant, for obligations and explanations.
    pub fn describe(&self, at_unix: i64) -> String {
        match self.civil(at_unix) {
            Some(dt) => format!(
                "{} {} {:02}:{:02} {}",
                weekday_name(dt.weekday()),
                dt.date(),
                dt.hour(),
                dt.minute(),
                self.name
            ),
            None => crate::time::format_rfc3339(at_unix),
        }
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({})", self.name)
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

fn weekday_name(day: Weekday) -> &'static str {
    ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"].get(day.to_monday_zero_offset() as usize).copied().unwrap_or("")
}
