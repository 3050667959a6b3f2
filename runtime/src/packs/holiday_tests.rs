//! Holiday calendars on disk: read beside their pack, compiled with it, covered by the set's
//! signature, and refused when changed or removed after signing.

use super::tests::PACK;
use super::*;

/// A pack whose calling window is closed on the public holidays of `de/holidays.toml`.
fn write_holiday_set(dir: &Path, christmas: &str) {
    std::fs::create_dir_all(dir.join("de/tests")).unwrap();
    let pack = PACK.replace("title = \"t\"\n", "title = \"t\"\ntime_zones = [\"Europe/Berlin\"]\n")
        + "[windows.w]\nmon = [\"09:00-20:00\"]\ntue = [\"09:00-20:00\"]\nwed = [\"09:00-20:00\"]\n\
           thu = [\"09:00-20:00\"]\nfri = [\"09:00-20:00\"]\nholiday_calendar = \"de\"\nholiday = []\ncite = \"c\"\n\
           [[rule]]\nid = \"de.v\"\npurpose = \"marketing\"\nchannels = [\"voice\"]\nbasis = \"opt_out\"\n\
           window = \"w\"\ncite = \"c\"\nconfidence = \"P\"\n";
    std::fs::write(dir.join("de/pack.toml"), pack).unwrap();
    std::fs::write(
        dir.join("de").join(HOLIDAYS_FILE),
        format!(
            "[calendar]\nid = \"de\"\ncountry = \"DE\"\nsource = \"test\"\ngenerated_by = \"hand\"\n\
             years = [2026]\nregional = \"none\"\nconfidence = \"S\"\n[dates]\n{christmas} = \"Christmas Day\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("de/tests/t.toml"),
        "[[case]]\nname = \"n\"\npurpose = \"marketing\"\nchannel = \"voice\"\nat = \"2026-12-24T09:00:00Z\"\n\
         expect = \"allow\"\n",
    )
    .unwrap();
}

#[test]
fn holiday_calendars_are_loaded_signed_and_refused_when_changed_after_signing() {
    use domicile_policy::{DecisionInput, Effect, Outcome};
    use domicile_types::{Channel, Jurisdiction, Purpose};

    let tmp = tempfile::tempdir().unwrap();
    let (set, keys) = (tmp.path().join("packs"), tmp.path().join("keys"));
    std::fs::create_dir_all(&keys).unwrap();
    write_holiday_set(&set, "2026-12-25");

    // The calendar is read beside its pack, compiled with it, and covered by the signature.
    let sources = read_sources(&set).unwrap();
    assert!(sources.iter().any(|s| s.path.ends_with("de/holidays.toml") && s.is_holiday_calendar()));
    let files: Vec<String> = read_set_files(&set).unwrap().into_iter().map(|f| f.path).collect();
    assert_eq!(files, ["de/holidays.toml", "de/pack.toml", "de/tests/t.toml"]);
    let loaded = load_dir_verified(&set, None).unwrap();
    // One year of data only: the validator warns that the year after is not covered.
    let holiday_warnings: Vec<&str> =
        loaded.warnings.iter().filter(|w| w.message.contains("holiday")).map(|w| w.message.as_str()).collect();
    assert_eq!(holiday_warnings.len(), 1, "{holiday_warnings:?}");
    assert!(holiday_warnings[0].contains("covers 2026 but not 2027"), "{holiday_warnings:?}");
    let de = loaded.packs.get(&Jurisdiction::parse("DE").unwrap()).unwrap().clone();
    let decide = |at: &str| {
        let at = domicile_policy::time::parse_rfc3339(at).unwrap();
        de.evaluate(&DecisionInput::new(Purpose::Marketing, Channel::Voice, at, None)).outcome
    };
    assert_eq!(decide("2026-12-24T09:00:00Z"), Outcome::NoObjection);
    assert_eq!(decide("2026-12-25T09:00:00Z"), Outcome::OutsideWindow);
    assert_eq!(decide("2027-01-04T09:00:00Z"), Outcome::HolidaysNotCovered);
    let uncovered = domicile_policy::time::parse_rfc3339("2027-01-04T09:00:00Z").unwrap();
    let d = de.decide(&DecisionInput::new(Purpose::Marketing, Channel::Voice, uncovered, None));
    assert_eq!(d.effect, Effect::Deny);
    assert!(d.explanation.contains("calendar `de` covers 2026"), "{}", d.explanation);

    generate_key(&keys.join("legal.key"), &keys.join("legal.pub")).unwrap();
    let trust = TrustConfig {
        trusted_keys: vec![TrustedKeyFile { key_id: "legal".into(), public_key_file: keys.join("legal.pub") }],
        min_signatures: 1,
    };
    sign_dir(&set, "legal", &keys.join("legal.key")).unwrap();
    let reloader = PackReloader::new(set.clone(), Some(trust)).unwrap();

    // Another holiday date without a new signature: refused, the signed calendar keeps serving.
    write_holiday_set(&set, "2026-12-24");
    let err = reloader.reload().unwrap_err();
    assert!(
        matches!(err, PackLoadError::Signature(SignatureError::FileChanged(ref p)) if p == "de/holidays.toml"),
        "{err}"
    );
    // Removing the calendar is tampering too.
    std::fs::remove_file(set.join("de").join(HOLIDAYS_FILE)).unwrap();
    let err = reloader.reload().unwrap_err();
    assert!(
        matches!(err, PackLoadError::Signature(SignatureError::FileRemoved(ref p)) if p == "de/holidays.toml"),
        "{err}"
    );
    let current = reloader.current();
    let de = current.packs.get(&Jurisdiction::parse("DE").unwrap()).unwrap();
    let christmas = domicile_policy::time::parse_rfc3339("2026-12-25T09:00:00Z").unwrap();
    assert_eq!(
        de.evaluate(&DecisionInput::new(Purpose::Marketing, Channel::Voice, christmas, None)).outcome,
        Outcome::OutsideWindow
    );

    // Unsigned, a set whose calendar is gone still loads, but the window fails closed and says why.
    let loaded = load_dir_verified(&set, None).unwrap();
    assert!(loaded.warnings.iter().any(|w| w.message.contains("which no `holidays.toml` of the set provides")));
    let de = loaded.packs.get(&Jurisdiction::parse("DE").unwrap()).unwrap();
    let eve = domicile_policy::time::parse_rfc3339("2026-12-24T09:00:00Z").unwrap();
    assert_eq!(
        de.evaluate(&DecisionInput::new(Purpose::Marketing, Channel::Voice, eve, None)).outcome,
        Outcome::HolidaysNotCovered
    );
}
