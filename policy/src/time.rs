//! RFC 3339 timestamps to and from unix seconds, by hand: the library takes time as an input
//! and needs only this much calendar arithmetic, so it carries no date-time dependency.

/// Parses `YYYY-MM-DDTHH:MM[:SS[.fraction]](Z|±HH:MM)` into unix seconds. Fractions are
/// truncated. A timestamp without an offset is rejected: a local time is ambiguous.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let year = digits(b, 0, 4)?;
    expect(b, 4, b'-')?;
    let month = digits(b, 5, 2)?;
    expect(b, 7, b'-')?;
    let day = digits(b, 8, 2)?;
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let hour = digits(b, 11, 2)?;
    expect(b, 13, b':')?;
    let minute = digits(b, 14, 2)?;
    let mut i = 16;
    let mut second = 0;
    if b.get(i) == Some(&b':') {
        second = digits(b, i + 1, 2)?;
        i += 3;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return None;
            }
        }
    }
    let offset_seconds = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() => {
            let oh = digits(b, i + 1, 2)?;
            expect(b, i + 3, b':')?;
            let om = digits(b, i + 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let magnitude = oh * 3600 + om * 60;
            if *sign == b'+' { magnitude } else { -magnitude }
        }
        _ => return None,
    };
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second < 60;
    if !valid {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds)
}

/// Formats unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// `unix` plus `months` calendar months in UTC, the day clamped to the target month's length.
pub(crate) fn add_months(unix: i64, months: u32) -> i64 {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let total = y * 12 + (m - 1) + i64::from(months);
    let (ty, tm) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    let td = d.min(days_in_month(ty, tm));
    days_from_civil(ty, tm, td) * 86_400 + secs
}

/// `unix` minus `months` calendar months in UTC, the day clamped to the target month's length.
pub(crate) fn sub_months(unix: i64, months: u32) -> i64 {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let total = y * 12 + (m - 1) - i64::from(months);
    let (ty, tm) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    days_from_civil(ty, tm, d.min(days_in_month(ty, tm))) * 86_400 + secs
}

fn digits(b: &[u8], start: usize, len: usize) -> Option<i64> {
    let slice = b.get(start..start + len)?;
    slice.iter().try_fold(0i64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0')))
}

fn expect(b: &[u8], at: usize, c: u8) -> Option<()> {
    (b.get(at) == Some(&c)).then_some(())
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil calendar algorithms (proleptic Gregorian, days since 1970-01-01).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_instants() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-23T10:00:00Z"), Some(1_795_428_000));
        assert_eq!(parse_rfc3339("2026-11-23T11:00:00+01:00"), Some(1_795_428_000));
        assert_eq!(parse_rfc3339("2026-11-23T05:00:00.999-05:00"), Some(1_795_428_000));
        assert_eq!(parse_rfc3339("2000-02-29T00:00Z"), Some(951_782_400));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some(-1));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "2026-11-23",
            "2026-11-23T10:00:00",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T10:00:00.Z",
            "2026-11-23T10:00:00Zjunk",
            "2026-11-23T10:00:00+0100",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn adds_calendar_months() {
        let t = |s| parse_rfc3339(s).unwrap();
        assert_eq!(add_months(t("2024-11-23T10:00:00Z"), 24), t("2026-11-23T10:00:00Z"));
        assert_eq!(add_months(t("2026-01-31T00:00:00Z"), 1), t("2026-02-28T00:00:00Z"));
        assert_eq!(add_months(t("2023-12-31T23:59:59Z"), 2), t("2024-02-29T23:59:59Z"));
        assert_eq!(add_months(t("2026-05-01T00:00:00Z"), 6), t("2026-11-01T00:00:00Z"));
    }

    #[test]
    fn round_trips() {
        for t in [0, 1_795_428_000, -86_401, 4_102_444_800, 951_782_400] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t));
        }
        assert_eq!(format_rfc3339(1_795_428_000), "2026-11-23T10:00:00Z");
    }
}
