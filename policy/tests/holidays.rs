//! Public holidays in calling windows, through the public API: the calendar file format and its
//! diagnostics (every problem at line:column), how windows name a calendar, the validator's
//! warnings for missing or short data, and decisions that fail closed where the data ends.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers; clippy.toml only exempts the #[test] fns themselves"
)]

use domicile_policy::time::parse_rfc3339;
use domicile_policy::{DecisionInput, Diagnostic, Effect, Outcome, PackSet, PackSource, Severity};
use domicile_types::{Channel, Jurisdiction, Purpose};

const CALENDAR: &str = "# generated\n\
[calendar]\n\
id = \"xx\"\n\
country = \"FR\"\n\
source = \"python-holidays 0.108\"\n\
generated_by = \"python3 tools/holidays.py --years 2026 2027\"\n\
years = [2026, 2027]\n\
regional = \"not included: regional holidays [U]\"\n\
confidence = \"S\"\n\
\n\
[dates]\n\
2026-11-11 = \"Armistice Day\"\n\
2026-12-25 = \"Christmas Day\"\n\
2027-01-01 = \"New Year's Day\"\n";

/// A French-style pack: weekdays 10-13 and 14-20, closed on the holidays of calendar `xx`.
fn pack(window_extra: &str) -> String {
    format!(
        "schema = 1\n[pack]\nid = \"xx\"\njurisdiction = \"FR\"\nversion = \"1\"\ntitle = \"t\"\n\
         effective_from = 2026-01-01T00:00:00+01:00\ntime_zones = [\"Europe/Paris\"]\n\
         [rights]\ndeadline = \"1 month\"\ncite = \"c\"\n\
         [residency]\nhome_regions = [\"eu-central\"]\nlocalisation = \"none\"\ncite = \"c\"\n\
         [windows.w]\nmon = [\"10:00-13:00\", \"14:00-20:00\"]\ntue = [\"10:00-13:00\", \"14:00-20:00\"]\n\
         wed = [\"10:00-13:00\", \"14:00-20:00\"]\nthu = [\"10:00-13:00\", \"14:00-20:00\"]\n\
         fri = [\"10:00-13:00\", \"14:00-20:00\"]\n{window_extra}cite = \"c\"\n\
         [[rule]]\nid = \"xx.voice\"\npurpose = \"marketing\"\nchannels = [\"voice\"]\nbasis = \"opt_out\"\n\
         window = \"w\"\ncite = \"c\"\nconfidence = \"P\"\n"
    )
}

const CLOSED: &str = "holiday_calendar = \"xx\"\nholiday = []\n";

fn compile(sources: &[PackSource]) -> Result<(PackSet, Vec<Diagnostic>), Vec<Diagnostic>> {
    PackSet::compile(sources).map_err(|d| d.0)
}

/// `(line, column, message)` of the diagnostics of `path` with `severity` that concern holidays
/// (the test packs are schema 1, so their undeclared cells warn too).
fn located(diagnostics: &[Diagnostic], path: &str, severity: Severity) -> Vec<(usize, usize, String)> {
    diagnostics
        .iter()
        .filter(|d| d.path == path && d.severity == severity)
        .filter(|d| d.severity == Severity::Error || d.message.contains("holiday") || d.message.contains("calendar"))
        .map(|d| (d.line, d.column, d.message.clone()))
        .collect()
}

fn t(s: &str) -> i64 {
    parse_rfc3339(s).unwrap()
}

fn voice(set: &PackSet, at: &str) -> domicile_policy::Decision {
    let pack = set.get(&Jurisdiction::parse("FR").unwrap()).unwrap();
    pack.decide(&DecisionInput::new(Purpose::Marketing, Channel::Voice, t(at), None))
}

#[test]
fn a_window_reads_the_calendar_of_the_set_and_fails_closed_where_its_data_ends() {
    let sources = [PackSource::new("xx/pack.toml", pack(CLOSED)), PackSource::new("xx/holidays.toml", CALENDAR)];
    assert!(sources[1].is_holiday_calendar() && !sources[0].is_holiday_calendar());
    let (set, warnings) = compile(&sources).unwrap();
    assert!(warnings.iter().all(|w| !w.message.contains("holiday")), "{warnings:?}");

    // Armistice Day 10:30 Paris: closed, reopening Thursday 10:00; the obligation says when.
    let d = voice(&set, "2026-11-11T09:30:00Z");
    assert_eq!((d.effect, d.valid_until_unix), (Effect::Deny, Some(t("2026-11-12T09:00:00Z"))));
    assert!(d.obligations.iter().any(|o| o.id == "outside-window" && o.text.contains("Thu 2026-11-12 10:00")));
    // The day before and after are open.
    assert_eq!(voice(&set, "2026-11-10T09:30:00Z").effect, Effect::Allow);
    assert_eq!(voice(&set, "2026-11-12T09:30:00Z").effect, Effect::Allow);

    // 2028: no data, no decision inside the window; the explanation says which data is missing.
    let d = voice(&set, "2028-03-01T09:30:00Z");
    assert_eq!((d.effect, d.valid_until_unix), (Effect::Deny, None));
    assert!(d.obligations.is_empty(), "{:?}", d.obligations);
    assert!(
        d.explanation
            .starts_with("the holiday data does not cover the date: marketing by voice is denied by rule xx.voice"),
        "{}",
        d.explanation
    );
    assert!(d.explanation.contains("calendar `xx` covers 2026-2027: refresh"), "{}", d.explanation);
    let pack = set.get(&Jurisdiction::parse("FR").unwrap()).unwrap();
    let input = DecisionInput::new(Purpose::Marketing, Channel::Voice, t("2028-03-01T09:30:00Z"), None);
    assert_eq!(pack.evaluate(&input).outcome, Outcome::HolidaysNotCovered);
    assert_eq!(Outcome::parse("holidays_not_covered"), Some(Outcome::HolidaysNotCovered));

    // Friday 31 December 2027 after 20:00: the next opening would be in 2028, so none is known.
    let d = voice(&set, "2027-12-31T19:30:00Z");
    assert_eq!((d.effect, d.valid_until_unix), (Effect::Deny, None));
    assert!(d.explanation.contains("no opening of the calling window is known before the holiday data ends"));

    // The trace shows the calendar, its coverage and the day.
    let trace = pack.explain(&DecisionInput::new(Purpose::Marketing, Channel::Voice, t("2026-12-25T10:00:00Z"), None));
    let text = trace.to_string();
    assert!(text.contains("public holidays (calendar `xx`, 2026-2027) closed"), "{text}");
    assert!(text.contains("✓ holiday calendar `xx` (python-holidays 0.108) covers 2026-2027: 2026-12-25 in Europe/Paris: public holiday (Christmas Day)"), "{text}");
    let trace = pack.explain(&input);
    assert!(trace.to_string().contains("✗ holiday calendar `xx`"), "{trace}");
    assert_eq!(trace.outcome, "holidays_not_covered");
}

#[test]
fn holiday_and_eve_slots_are_read_and_their_errors_located() {
    // Own slots for holidays and eves read like weekday slots.
    let extra = "holiday_calendar = \"xx\"\nholiday = [\"10:00-12:00\"]\nholiday_eve = [\"10:00-19:00\"]\n";
    let (set, _) =
        compile(&[PackSource::new("xx/pack.toml", pack(extra)), PackSource::new("xx/holidays.toml", CALENDAR)])
            .unwrap();
    let pack_fr = set.get(&Jurisdiction::parse("FR").unwrap()).unwrap();
    let rule = pack_fr.windows()[0].holidays.as_ref().unwrap();
    assert_eq!((rule.holiday.as_slice(), rule.eve.as_deref()), (&[(600, 720)][..], Some(&[(600, 1140)][..])));
    // Armistice Day 12:30 Paris: past the holiday's 10:00-12:00, so Thursday 10:00.
    assert_eq!(voice(&set, "2026-11-11T11:30:00Z").valid_until_unix, Some(t("2026-11-12T09:00:00Z")));
    assert_eq!(voice(&set, "2026-11-11T09:30:00Z").effect, Effect::Allow);

    let broken = pack("holiday_calendar = \"Bad Id\"\nholiday = []\nholiday_eve = [\"19:00-10:00\"]\n");
    let errors = compile(&[PackSource::new("a/pack.toml", broken)]).unwrap_err();
    assert_eq!(
        located(&errors, "a/pack.toml", Severity::Error),
        [
            (22, 20, "`holiday_calendar` must name a calendar id (`a-z`, `0-9`, `_` or `-`)".to_owned()),
            (24, 16, "time slot must be `HH:MM-HH:MM`, start before end".to_owned()),
        ]
    );
    let without_holiday = pack("holiday_calendar = \"xx\"\n");
    let errors = compile(&[PackSource::new("b/pack.toml", without_holiday)]).unwrap_err();
    assert_eq!(
        located(&errors, "b/pack.toml", Severity::Error),
        [(
            22,
            20,
            "`holiday_calendar` needs `holiday`: the slots on a public holiday (`holiday = []`: closed)".to_owned()
        )]
    );
    let without_calendar = pack("holiday = []\nholiday_eve = []\n");
    let errors = compile(&[PackSource::new("c/pack.toml", without_calendar)]).unwrap_err();
    let located_c = located(&errors, "c/pack.toml", Severity::Error);
    assert_eq!(located_c.iter().map(|(l, c, _)| (*l, *c)).collect::<Vec<_>>(), [(22, 11), (23, 15)], "{located_c:?}");
    assert!(located_c.iter().all(|(_, _, m)| m.starts_with("holiday slots need `holiday_calendar`")));
}

#[test]
fn calendar_files_report_every_problem_at_its_line_and_column() {
    let broken = "[calendar]\n\
id = \"X\"\n\
country = \"FRA\"\n\
source = \"\"\n\
generated_by = \"g\"\n\
years = [2027, 2026, 1800]\n\
regional = \"r\"\n\
confidence = \"Z\"\n\
colour = \"red\"\n\
[dates]\n\
2026-02-30 = \"no such day\"\n\
2028-01-01 = \"outside the years\"\n\
2027-01-01 = 1\n\
2027-05-01 = \"  \"\n";
    let errors = compile(&[PackSource::new("x/holidays.toml", broken)]).unwrap_err();
    let found = located(&errors, "x/holidays.toml", Severity::Error);
    let at: Vec<(usize, usize)> = found.iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(
        at,
        [(2, 6), (3, 11), (4, 10), (6, 16), (6, 22), (8, 14), (9, 1), (11, 1), (12, 1), (13, 14), (14, 14)],
        "{found:#?}"
    );
    let messages: Vec<&str> = found.iter().map(|(_, _, m)| m.as_str()).collect();
    assert!(messages[0].starts_with("calendar id must be"), "{messages:?}");
    assert!(messages[3].starts_with("`years` must be ascending"), "{messages:?}");
    assert!(messages[4].starts_with("a year must lie between 1970 and 2200"), "{messages:?}");
    assert!(messages[5].starts_with("unknown confidence"), "{messages:?}");
    assert!(messages[6].starts_with("unknown key in `[calendar]`"), "{messages:?}");
    assert_eq!(messages[7], "holiday date must be `YYYY-MM-DD`, a real calendar date");
    assert_eq!(messages[8], "holiday 2028-01-01 lies outside the calendar's `years`");
    assert_eq!(messages[9], "`2027-01-01` must be a string");
    assert_eq!(messages[10], "the holiday's name must not be empty");

    // Invalid TOML, and a missing table, are located too.
    let errors = compile(&[PackSource::new("y/holidays.toml", "[calendar]\nid = \n")]).unwrap_err();
    assert!(
        located(&errors, "y/holidays.toml", Severity::Error)
            .iter()
            .any(|(l, _, m)| *l == 2 && m.starts_with("invalid toml"))
    );
    let errors = compile(&[PackSource::new("z/holidays.toml", "[dates]\n")]).unwrap_err();
    assert_eq!(
        located(&errors, "z/holidays.toml", Severity::Error),
        [(1, 1, "missing key `calendar` in a holiday calendar file".to_owned())]
    );
}

#[test]
fn the_validator_warns_where_a_window_would_fail_closed_and_refuses_a_calendar_id_used_twice() {
    // No calendar in the set: the pack compiles (decisions fail closed) with a warning at the window.
    let (set, warnings) = compile(&[PackSource::new("xx/pack.toml", pack(CLOSED))]).unwrap();
    assert_eq!(
        located(&warnings, "xx/pack.toml", Severity::Warning).iter().map(|(l, c, _)| (*l, *c)).collect::<Vec<_>>(),
        [(16, 10)]
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.message.contains("reads holiday calendar `xx`, which no `holidays.toml` of the set provides"))
    );
    assert_eq!(voice(&set, "2026-11-10T09:30:00Z").effect, Effect::Deny);

    // Data that ends before the end of the year after the pack takes effect (2026): a warning.
    let short =
        CALENDAR.replace("years = [2026, 2027]", "years = [2026]").replace("2027-01-01 = \"New Year's Day\"\n", "");
    let (_, warnings) =
        compile(&[PackSource::new("xx/pack.toml", pack(CLOSED)), PackSource::new("xx/holidays.toml", short)]).unwrap();
    let found = located(&warnings, "xx/pack.toml", Severity::Warning);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].2.starts_with("holiday calendar `xx` (xx/holidays.toml) covers 2026 but not 2027"), "{found:?}");
    // Data that starts after it: the missing year is named too.
    let late = CALENDAR
        .replace("years = [2026, 2027]", "years = [2027, 2028]")
        .replace("2026-11-11 = \"Armistice Day\"\n2026-12-25 = \"Christmas Day\"\n", "");
    let (_, warnings) =
        compile(&[PackSource::new("xx/pack.toml", pack(CLOSED)), PackSource::new("xx/holidays.toml", late)]).unwrap();
    assert!(warnings.iter().any(|w| w.message.contains("covers 2027-2028 but not 2026")), "{warnings:?}");
    // No year at all.
    let empty = "[calendar]\nid = \"xx\"\ncountry = \"FR\"\nsource = \"s\"\ngenerated_by = \"g\"\nyears = []\n\
                 regional = \"r\"\nconfidence = \"S\"\n[dates]\n";
    let (_, warnings) =
        compile(&[PackSource::new("xx/pack.toml", pack(CLOSED)), PackSource::new("xx/holidays.toml", empty)]).unwrap();
    assert!(
        located(&warnings, "xx/holidays.toml", Severity::Warning)
            .iter()
            .any(|(l, _, m)| *l == 1 && m.starts_with("the calendar covers no year"))
    );
    assert!(warnings.iter().any(|w| w.path == "xx/pack.toml" && w.message.contains("covers no year")), "{warnings:?}");

    // A calendar nobody reads is flagged; an id used twice is an error in the later file.
    let (_, warnings) =
        compile(&[PackSource::new("xx/pack.toml", pack("")), PackSource::new("xx/holidays.toml", CALENDAR)]).unwrap();
    assert_eq!(
        located(&warnings, "xx/holidays.toml", Severity::Warning),
        [(3, 6, "holiday calendar `xx` is not read by any calling window".to_owned())]
    );
    let errors = compile(&[
        PackSource::new("xx/pack.toml", pack(CLOSED)),
        PackSource::new("xx/holidays.toml", CALENDAR),
        PackSource::new("yy/holidays.toml", CALENDAR),
    ])
    .unwrap_err();
    assert_eq!(
        located(&errors, "yy/holidays.toml", Severity::Error),
        [(3, 6, "holiday calendar id is already used by xx/holidays.toml".to_owned())]
    );

    // An obligation about public holidays on a rule whose window reads no calendar is flagged.
    let described = pack("")
        .replace("[[rule]]", "[obligations.hours]\ntext = \"never call on public holidays\"\n[[rule]]")
        .replace("window = \"w\"", "window = \"w\"\nobligations = [\"hours\"]");
    let (_, warnings) = compile(&[PackSource::new("xx/pack.toml", described)]).unwrap();
    let found = located(&warnings, "xx/pack.toml", Severity::Warning);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].2.starts_with("rule `xx.voice`: obligation `hours` speaks of public holidays"), "{found:?}");
}
