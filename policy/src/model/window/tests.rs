//! Calling windows: slots, local time, several zones, public holidays and their eves, years
//! without holiday data, DST.

use super::*;
use crate::time::parse_rfc3339;

fn fr_window() -> CallingWindow {
    let weekday = vec![(600, 780), (840, 1200)];
    CallingWindow {
        id: "w".into(),
        days: [weekday.clone(), weekday.clone(), weekday.clone(), weekday.clone(), weekday, vec![], vec![]],
        holidays: None,
        cite: "c".into(),
        line: 1,
    }
}

fn calendar(dates: &[&str], years: &[i16]) -> Arc<HolidayCalendar> {
    let mut calendar = HolidayCalendar::missing("cal");
    calendar.source = "test data".into();
    calendar.years = years.to_vec();
    calendar.dates =
        dates.iter().map(|d| (crate::model::calendar::parse_date(d).unwrap(), format!("holiday {d}"))).collect();
    Arc::new(calendar)
}

/// Paris: weekdays 10-13 and 14-20, closed on public holidays, with French 2026-2027 dates.
fn fr_with_holidays() -> CallingWindow {
    let dates = ["2026-04-06", "2026-11-11", "2026-12-25", "2027-01-01", "2027-12-25"];
    CallingWindow {
        holidays: Some(HolidayRule {
            calendar_id: "cal".into(),
            holiday: vec![],
            eve: None,
            calendar: calendar(&dates, &[2026, 2027]),
        }),
        ..fr_window()
    }
}

fn t(s: &str) -> i64 {
    parse_rfc3339(s).unwrap()
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
    assert_eq!(w.check(std::slice::from_ref(&paris), t("2026-11-28T10:00:00Z")), Err(Some(t("2026-11-30T09:00:00Z"))));
    // Lunch break: 13:30 local reopens at 14:00.
    assert_eq!(w.check(std::slice::from_ref(&paris), t("2026-11-23T12:30:00Z")), Err(Some(t("2026-11-23T13:00:00Z"))));
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
        holidays: None,
        cite: "c".into(),
        line: 1,
    };
    let t = |s| parse_rfc3339(s).unwrap();
    // 12:00 UTC is 07:00 New York (closed) and 04:00 Los Angeles (closed): next is 08:00 LA = 16:00 UTC.
    assert_eq!(w.check(&zones, t("2026-11-23T12:00:00Z")), Err(Some(t("2026-11-23T16:00:00Z"))));
    // 20:00 UTC: 15:00 NY, 12:00 LA; closes at 21:00 NY = 02:00 UTC.
    assert_eq!(w.check(&zones, t("2026-11-23T20:00:00Z")), Ok(t("2026-11-24T02:00:00Z")));
}

#[test]
fn a_public_holiday_closes_the_day_and_the_days_around_it_stay_open() {
    let paris = [Zone::parse("Europe/Paris").unwrap()];
    let w = fr_with_holidays();
    // Wednesday 11 November 2026 (Armistice) 10:30 Paris: closed; next opening Thursday 10:00.
    assert_eq!(w.opening(&paris, t("2026-11-11T09:30:00Z")), Opening::Closed(Some(t("2026-11-12T09:00:00Z"))));
    assert_eq!(w.check(&paris, t("2026-11-11T09:30:00Z")), Err(Some(t("2026-11-12T09:00:00Z"))));
    // The day before and the day after are ordinary weekdays.
    assert_eq!(w.opening(&paris, t("2026-11-10T09:30:00Z")), Opening::Open(t("2026-11-10T12:00:00Z")));
    assert_eq!(w.opening(&paris, t("2026-11-12T09:30:00Z")), Opening::Open(t("2026-11-12T12:00:00Z")));
    // Without the holiday rule the same window is open that Wednesday.
    assert_eq!(fr_window().check(&paris, t("2026-11-11T09:30:00Z")), Ok(t("2026-11-11T12:00:00Z")));
    assert!(
        w.describe().ends_with("sun closed; public holidays (calendar `cal`, 2026-2027) closed"),
        "{}",
        w.describe()
    );
}

#[test]
fn the_next_opening_skips_a_holiday_and_the_weekend_after_it() {
    let paris = [Zone::parse("Europe/Paris").unwrap()];
    let w = fr_with_holidays();
    // Thursday 24 December 2026 20:30: Christmas (Fri), then the weekend; Monday 28 at 10:00.
    assert_eq!(w.opening(&paris, t("2026-12-24T19:30:00Z")), Opening::Closed(Some(t("2026-12-28T09:00:00Z"))));
    // Thursday 31 December 2026 20:30: New Year's Day (Fri 2027), then the weekend; Monday 4 January.
    assert_eq!(w.opening(&paris, t("2026-12-31T19:30:00Z")), Opening::Closed(Some(t("2027-01-04T09:00:00Z"))));
    // Friday 3 April 2026 20:30 (CEST): the weekend and Easter Monday; Tuesday 7 April 10:00 CEST.
    assert_eq!(w.opening(&paris, t("2026-04-03T18:30:00Z")), Opening::Closed(Some(t("2026-04-07T08:00:00Z"))));
    assert_eq!(w.next_open(&paris[0], t("2026-04-03T18:30:00Z")), Some(t("2026-04-07T08:00:00Z")));
}

#[test]
fn a_year_the_calendar_does_not_cover_fails_closed() {
    let paris = [Zone::parse("Europe/Paris").unwrap()];
    let w = fr_with_holidays();
    // Wednesday 1 March 2028, 10:30: inside the weekday slots, but 2028 has no holiday data.
    assert_eq!(w.opening(&paris, t("2028-03-01T09:30:00Z")), Opening::Uncovered);
    assert_eq!(w.check(&paris, t("2028-03-01T09:30:00Z")), Err(None));
    assert_eq!(w.open_until(&paris[0], t("2028-03-01T09:30:00Z")), None);
    // 2025 neither: the data starts in 2026.
    assert_eq!(w.opening(&paris, t("2025-12-31T09:30:00Z")), Opening::Uncovered);
    // Friday 31 December 2027 20:30 is covered and closed; the next opening lies in 2028, unknown.
    assert_eq!(w.opening(&paris, t("2027-12-31T19:30:00Z")), Opening::Closed(None));
    // A calendar no file provides covers nothing.
    let mut missing = fr_with_holidays();
    if let Some(rule) = missing.holidays.as_mut() {
        rule.calendar = Arc::new(HolidayCalendar::missing("cal"));
    }
    assert_eq!(missing.opening(&paris, t("2026-11-10T09:30:00Z")), Opening::Uncovered);
    let (note, covered) = missing.holiday_note(&paris, t("2026-11-10T09:30:00Z")).unwrap();
    assert!(!covered && note.contains("no file provides it") && note.contains("covers no year"), "{note}");
    let (note, covered) = w.holiday_note(&paris, t("2026-11-11T09:30:00Z")).unwrap();
    assert!(covered && note.contains("2026-11-11 in Europe/Paris: public holiday (holiday 2026-11-11)"), "{note}");
}

#[test]
fn holidays_follow_the_local_date_across_a_dst_change() {
    // Sydney leaves daylight time (UTC+11 → UTC+10) on Sunday 5 April 2026, between Good
    // Friday and Easter Monday.
    let sydney = [Zone::parse("Australia/Sydney").unwrap()];
    let weekday = vec![(540, 1200)];
    let w = CallingWindow {
        id: "w".into(),
        days: [weekday.clone(), weekday.clone(), weekday.clone(), weekday.clone(), weekday, vec![(540, 1020)], vec![]],
        holidays: Some(HolidayRule {
            calendar_id: "au".into(),
            holiday: vec![],
            eve: None,
            calendar: calendar(&["2026-04-03", "2026-04-06"], &[2026]),
        }),
        cite: "c".into(),
        line: 1,
    };
    // Thursday 2 April 20:30 AEDT: Good Friday closed; Saturday 09:00 AEDT (22:00 UTC Friday).
    assert_eq!(w.opening(&sydney, t("2026-04-02T09:30:00Z")), Opening::Closed(Some(t("2026-04-03T22:00:00Z"))));
    // Saturday 4 April 17:30 AEDT: Sunday closed, Easter Monday closed; Tuesday 09:00 AEST.
    assert_eq!(w.opening(&sydney, t("2026-04-04T06:30:00Z")), Opening::Closed(Some(t("2026-04-06T23:00:00Z"))));
    // Easter Monday 10:00 AEST (00:00 UTC) is the holiday in Sydney although UTC is still Sunday.
    assert_eq!(w.opening(&sydney, t("2026-04-06T00:00:00Z")), Opening::Closed(Some(t("2026-04-06T23:00:00Z"))));
    // Tuesday 10:00 AEST is open until 20:00 AEST.
    assert_eq!(w.opening(&sydney, t("2026-04-07T00:00:00Z")), Opening::Open(t("2026-04-07T10:00:00Z")));
}

#[test]
fn holiday_and_eve_slots_only_narrow_the_day() {
    let rome = [Zone::parse("Europe/Rome").unwrap()];
    let weekday = vec![(540, 1200)];
    // Italy: weekdays 09-20, Saturday 10-19, never Sundays or holidays, eves 10-19. 2 November
    // 2026 (a Monday) is a made-up holiday, to put an eve on a Sunday.
    let dates = ["2026-11-02", "2026-12-08", "2026-12-25", "2026-12-26", "2027-01-01"];
    let mut w = CallingWindow {
        id: "w".into(),
        days: [weekday.clone(), weekday.clone(), weekday.clone(), weekday.clone(), weekday, vec![(600, 1140)], vec![]],
        holidays: Some(HolidayRule {
            calendar_id: "it".into(),
            holiday: vec![],
            eve: Some(vec![(600, 1140)]),
            calendar: calendar(&dates, &[2026, 2027]),
        }),
        cite: "c".into(),
        line: 1,
    };
    // Monday 7 December 09:30 (CET), the eve of the Immaculate Conception: opens at 10:00.
    assert_eq!(w.opening(&rome, t("2026-12-07T08:30:00Z")), Opening::Closed(Some(t("2026-12-07T09:00:00Z"))));
    // 12:00 is open until 19:00; 19:30 waits past the holiday for Wednesday 09:00.
    assert_eq!(w.opening(&rome, t("2026-12-07T11:00:00Z")), Opening::Open(t("2026-12-07T18:00:00Z")));
    assert_eq!(w.opening(&rome, t("2026-12-07T18:30:00Z")), Opening::Closed(Some(t("2026-12-09T08:00:00Z"))));
    // The eve of a Monday holiday is a Sunday, and stays closed.
    assert_eq!(w.opening(&rome, t("2026-11-01T11:00:00Z")), Opening::Closed(Some(t("2026-11-03T08:00:00Z"))));
    // Christmas is a holiday and the eve of Saint Stephen's Day: closed.
    assert!(matches!(w.opening(&rome, t("2026-12-25T11:00:00Z")), Opening::Closed(_)));
    // 31 December 2026 is the eve of New Year's Day: 10-19.
    assert_eq!(w.opening(&rome, t("2026-12-31T09:30:00Z")), Opening::Open(t("2026-12-31T18:00:00Z")));
    // 31 December 2027 needs 1 January 2028, which the data does not cover.
    assert_eq!(w.opening(&rome, t("2027-12-31T09:30:00Z")), Opening::Uncovered);
    assert!(
        w.describe().ends_with(
            "public holidays (calendar `it`, 2026-2027) closed; the day before a public holiday at most 10:00-19:00"
        ),
        "{}",
        w.describe()
    );
    // Holiday slots of their own cut the weekday's down: 10:00-13:00 inside 09:00-20:00.
    if let Some(rule) = w.holidays.as_mut() {
        rule.holiday = vec![(600, 780)];
        rule.eve = None;
    }
    assert_eq!(w.opening(&rome, t("2026-12-08T08:30:00Z")), Opening::Closed(Some(t("2026-12-08T09:00:00Z"))));
    assert_eq!(w.opening(&rome, t("2026-12-08T10:00:00Z")), Opening::Open(t("2026-12-08T12:00:00Z")));
    // Saturday 26 December: the Saturday's 10:00-19:00 ∩ 10:00-13:00.
    assert_eq!(w.opening(&rome, t("2026-12-26T12:30:00Z")), Opening::Closed(Some(t("2026-12-28T08:00:00Z"))));
}
