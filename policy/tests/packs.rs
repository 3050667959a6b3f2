//! Loads the real packs under `policy-packs/`, compiles them together and runs their tests.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers; clippy.toml only exempts the #[test] fns themselves"
)]

use std::fs;
use std::path::{Path, PathBuf};

use domicile_policy::{Deadline, HOLIDAYS_FILE, PackSet, PackSource, run_test_files};

fn packs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-packs")
}

fn read(path: &Path) -> PackSource {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let shown = path.strip_prefix(packs_dir()).unwrap_or(path);
    PackSource::new(shown.display().to_string(), text)
}

fn pack_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(packs_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("pack.toml").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// Every pack file, and beside each its holiday calendar when it has one.
fn set_sources(dirs: &[PathBuf]) -> Vec<PackSource> {
    let mut sources = Vec::new();
    for dir in dirs {
        sources.push(read(&dir.join("pack.toml")));
        if dir.join(HOLIDAYS_FILE).is_file() {
            sources.push(read(&dir.join(HOLIDAYS_FILE)));
        }
    }
    sources
}

fn test_files(dir: &Path) -> Vec<PackSource> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join("tests"))
        .map(|rd| rd.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().map(|p| read(p)).collect()
}

#[test]
fn every_pack_compiles_and_passes_its_tests_with_full_rule_coverage() {
    let dirs = pack_dirs();
    assert!(dirs.len() >= 4, "expected at least the de, fr, us and br packs");
    let sources = set_sources(&dirs);
    let (set, warnings) = PackSet::compile(&sources).unwrap_or_else(|d| panic!("packs do not compile:\n{d}"));
    assert!(warnings.iter().all(|w| !w.is_error()));
    for w in &warnings {
        println!("{w}");
    }
    // Schema-2 packs declare every gap and have no unreachable rules: they compile clean.
    for pack in set.packs().filter(|p| p.schema() >= 2) {
        let own: Vec<String> = warnings.iter().filter(|w| w.path == pack.path()).map(ToString::to_string).collect();
        assert!(own.is_empty(), "{}: {own:#?}", pack.id());
    }
    assert_eq!(set.len(), dirs.len());
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_str().unwrap();
        // Baselines live in `_`-prefixed directories; every other directory is named after its pack.
        let pack = if name.starts_with('_') {
            let path = format!("{name}/pack.toml");
            set.packs().find(|p| p.path() == path).unwrap_or_else(|| panic!("{path} did not compile"))
        } else {
            set.get_by_id(name).unwrap_or_else(|| panic!("pack in {name}/ must have id `{name}`"))
        };
        let id = pack.id();
        let tests = test_files(dir);
        assert!(!tests.is_empty(), "{id}: no tests/*.toml");
        let report = run_test_files(pack, &tests).unwrap_or_else(|d| panic!("{id}: bad test file:\n{d}"));
        println!("{report}");
        assert!(report.all_passed(), "{id}: failing cases:\n{report}");
        assert!(report.uncovered_rules.is_empty(), "{id}: uncovered rules {:?}", report.uncovered_rules);
    }
}

fn compiled() -> PackSet {
    PackSet::compile(&set_sources(&pack_dirs())).unwrap().0
}

#[test]
fn rule_ids_other_crates_depend_on_are_stable() {
    use domicile_policy::{DecisionInput, Effect};
    use domicile_types::{Channel, Jurisdiction, Purpose, RegionId};

    let set = compiled();
    let input = DecisionInput::new(Purpose::Marketing, Channel::Email, 1_795_428_000, None);

    let de = set.get(&Jurisdiction::parse("DE").unwrap()).unwrap();
    let d = de.decide(&input);
    // The DE rule replaces the EU baseline's electronic-mail rule, so it is the only reason.
    assert_eq!((d.effect, d.reasons.as_slice()), (Effect::Deny, ["de.marketing.email".to_owned()].as_slice()));
    assert_eq!(d.pack.to_string(), "de@2026.11.0");

    // The US-CA overlay inherits the federal email rule.
    let us = set.get(&Jurisdiction::parse("US-CA").unwrap()).unwrap();
    let d = us.decide(&input);
    assert_eq!((d.effect, d.reasons.as_slice()), (Effect::Allow, ["us.marketing.email".to_owned()].as_slice()));
    assert!(d.obligations.iter().any(|o| o.id == "unsubscribe"));

    let regions: Vec<RegionId> =
        ["us-east", "eu-central", "sa-east"].iter().map(|r| RegionId::parse(r).unwrap()).collect();
    for (cc, home) in [("DE", "eu-central"), ("FR", "eu-central"), ("US", "us-east"), ("BR", "sa-east")] {
        let j = Jurisdiction::parse(cc).unwrap();
        assert_eq!(set.home_region(&j, &regions).unwrap().as_str(), home, "{cc}");
    }
    assert!(set.home_region(&Jurisdiction::parse("JP").unwrap(), &regions).is_err());
}

#[test]
fn subdivisions_use_their_own_pack_or_fall_back_to_their_country_saying_so() {
    use domicile_policy::DecisionInput;
    use domicile_types::{Channel, Jurisdiction, Purpose};

    let set = compiled();
    let input = DecisionInput::new(Purpose::Marketing, Channel::Email, 1_795_428_000, None);
    // (jurisdiction, pack that decides, jurisdiction of that pack, country fallback)
    for (j, pack, pack_jurisdiction, fallback) in [
        ("US-CA", "us-ca", "US-CA", false),
        ("us-ca", "us-ca", "US-CA", false),
        ("US", "us", "US", false),
        ("US-TX", "us-tx", "US-TX", false),
        ("US-NY", "us", "US", true),
        ("DE-BY", "de", "DE", true),
        ("BR-SP", "br", "BR", true),
        ("DE", "de", "DE", false),
    ] {
        let found = set.lookup(&Jurisdiction::parse(j).unwrap()).unwrap();
        assert_eq!((found.pack.id(), found.country_fallback), (pack, fallback), "{j}");
        let d = found.decide(&input);
        assert_eq!((d.jurisdiction.as_str(), d.country_fallback), (pack_jurisdiction, fallback), "{j}");
        assert_eq!(d.explanation.contains("country fallback"), fallback, "{j}: {}", d.explanation);
        // Same rules as the country's own subjects: only the statement differs.
        let own = set.get(&Jurisdiction::parse(pack_jurisdiction).unwrap()).unwrap().decide(&input);
        assert_eq!((d.effect, &d.reasons, &d.pack), (own.effect, &own.reasons, &own.pack), "{j}");
    }
}

#[test]
fn every_rule_is_annotated() {
    for pack in compiled().packs() {
        for rule in pack.rules() {
            assert!(rule.source.is_some(), "{}: rules cite where the fact was found", rule.id);
            assert!(rule.id.starts_with(&format!("{}.", pack.id())));
        }
    }
}

/// Spain, Italy and the Netherlands are EU member states: their packs extend the EU baseline and
/// inherit what it states (the GDPR's rights deadline, its obligations and declared gaps).
#[test]
fn eu_member_state_packs_extend_the_eu_baseline() {
    let set = compiled();
    let eu = set.get_by_id("eu").expect("the EU baseline");
    for id in ["de", "fr", "es", "it", "nl"] {
        let pack = set.get_by_id(id).unwrap_or_else(|| panic!("pack {id}"));
        assert!(pack.chain().iter().any(|p| p.id == "eu"), "{id} extends eu: {:?}", pack.chain());
        assert!(pack.rights().deadline.is_some(), "{id} states or inherits a rights deadline");
    }
    assert!(eu.rights().deadline.is_some());
}

/// The rights deadlines country-rules.md states are in the packs; where the law fixes no period
/// the pack says so with its citation (its requests carry no deadline, never a default).
#[test]
fn packs_state_the_rights_deadlines_their_sources_give() {
    let set = compiled();
    let rights = |id: &str| set.get_by_id(id).unwrap_or_else(|| panic!("pack {id}")).rights().clone();
    let days = |id: &str| rights(id).deadline.and_then(|d| d.due(0)).map(|due| (due + 43_200) / 86_400);
    for (id, expected) in [
        ("gb", 31),
        ("kr", 10),
        ("ru", 10),
        ("za", 30),
        ("ch", 30),
        ("br", 15),
        ("ca", 30),
        ("sg", 30),
        ("in", 90),
        ("us-ca", 45),
        ("de", 31),
        ("es", 31),
    ] {
        let got = days(id).unwrap_or_else(|| panic!("{id} states no rights deadline"));
        assert!((expected - 3..=expected).contains(&got), "{id}: {got} days");
    }
    for id in ["us", "jp", "cn", "au"] {
        assert_eq!(rights(id).deadline, Some(Deadline::NoFixedPeriod), "{id}: the law fixes no period, declared");
    }
    for pack in set.packs().filter(|p| p.jurisdiction().is_some()) {
        assert!(pack.rights().cite.is_some(), "{}: the rights deadline is cited", pack.id());
    }
}

/// A jurisdiction's pack that states no rights deadline, itself or through what it extends, is
/// refused; so is one that states a deadline without its citation.
#[test]
fn a_pack_without_a_rights_deadline_is_refused() {
    let pack = |rights: &str| {
        format!(
            "schema = 1\n[pack]\nid = \"xx\"\njurisdiction = \"JP\"\nversion = \"1\"\ntitle = \"X\"\n{rights}\n\
             [residency]\nhome_regions = [\"ap-northeast\"]\nlocalisation = \"none\"\ncite = \"c\"\n\
             [[rule]]\nid = \"xx.m\"\npurpose = \"marketing\"\nchannels = [\"email\"]\nbasis = \"opt_in\"\ncite = \"c\"\n\
             confidence = \"P\"\n"
        )
    };
    let compile = |text: String| PackSet::compile(&[PackSource::new("xx/pack.toml", text)]);
    let missing = compile(pack("")).expect_err("refused without a deadline");
    assert!(missing.to_string().contains("missing `[rights] deadline`"), "{missing}");
    let uncited = compile(pack("[rights]\ndeadline = \"30 days\"")).expect_err("refused without a citation");
    assert!(uncited.to_string().contains("without `cite`"), "{uncited}");
    let none = compile(pack("[rights]\ndeadline = \"none\"\ncite = \"APPI art. 33\""));
    assert!(none.is_ok(), "\"none\" with a citation is a declared fact: {:?}", none.err());
}

/// A residency refusal names the law it rests on (`[residency] cite`), here Russia's
/// localisation rule, inherited nowhere and stated by the pack itself.
#[test]
fn residency_refusals_name_their_citation() {
    let set = compiled();
    let ru = set.get_by_id("ru").expect("pack ru");
    let eu = domicile_types::RegionId::parse("eu-central").unwrap();
    let refused = ru.check_transfer(Some(&eu), domicile_types::Purpose::Service, None, 0).expect_err("localised");
    assert!(refused.to_string().contains("(basis: 152-FZ art. 18(5)"), "{refused}");
    let collection = ru.check_collection(Some(&eu)).expect_err("collected in Russia only");
    assert!(collection.to_string().contains("152-FZ art. 18(5)"), "{collection}");
    // Germany inherits the EU baseline's citation.
    let de = set.get_by_id("de").expect("pack de");
    let ap = domicile_types::RegionId::parse("ap-northeast").unwrap();
    let refused =
        de.check_transfer(Some(&ap), domicile_types::Purpose::Marketing, None, 0).expect_err("no transfer to Japan");
    assert!(refused.to_string().contains("GDPR Chapter V"), "{refused}");
    // A transfer that needs a recorded consent names its own basis and the consent it needs.
    let refused =
        de.check_transfer(Some(&ap), domicile_types::Purpose::Service, None, 0).expect_err("no explicit consent");
    assert!(refused.to_string().contains("(basis: GDPR Art. 49(1)(a)"), "{refused}");
    assert!(refused.to_string().contains("`explicit_transfer`"), "{refused}");
}

/// A restriction written only into an obligation's text is flagged: the validator warns where an
/// obligation reads like register screening or calling hours and the rule enforces neither.
#[test]
fn obligations_that_restrict_contact_without_a_screen_or_window_are_flagged() {
    let pack = |rule_extra: &str| {
        format!(
            "schema = 1\n[pack]\nid = \"xx\"\njurisdiction = \"JP\"\nversion = \"1\"\ntitle = \"X\"\ntime_zones = [\"Asia/Tokyo\"]\n\
             [rights]\ndeadline = \"none\"\ncite = \"c\"\n\
             [residency]\nhome_regions = [\"ap-northeast\"]\nlocalisation = \"none\"\ncite = \"c\"\n\
             [obligations.dnc]\ntext = \"screen the number against the national do-not-call register\"\n\
             [obligations.hours]\ntext = \"call only between 09:00 and 20:00, never on a Sunday\"\n\
             [registers.national]\nname = \"the national register\"\ncite = \"c\"\nexempt_with_consent = false\n\
             [windows.day]\nmon = [\"09:00-20:00\"]\ncite = \"c\"\n\
             [[rule]]\nid = \"xx.m\"\npurpose = \"marketing\"\nchannels = [\"voice\"]\nbasis = \"opt_out\"\ncite = \"c\"\n\
             confidence = \"P\"\nobligations = [\"dnc\", \"hours\"]\n{rule_extra}"
        )
    };
    let warnings = |text: String| -> Vec<String> {
        let source = PackSource::new("xx/pack.toml", text);
        let (_, warnings) = PackSet::compile(&[source]).expect("compiles");
        warnings.iter().map(ToString::to_string).collect()
    };
    let described = warnings(pack(""));
    assert!(described.iter().any(|w| w.contains("reads like register screening")), "{described:#?}");
    assert!(described.iter().any(|w| w.contains("reads like calling hours")), "{described:#?}");
    let enforced = warnings(pack("screen = \"national\"\nwindow = \"day\"\n"));
    assert!(!enforced.iter().any(|w| w.contains("reads like")), "{enforced:#?}");
}

#[test]
fn windows_of_countries_that_close_on_public_holidays_read_a_generated_calendar_that_names_its_source() {
    use domicile_types::Jurisdiction;

    let set = compiled();
    // country-rules.md: FR (D.223-9), IT (code of conduct, with pre-holidays), ES (TRLGDCU 96.2),
    // AU (Industry Standard, national holidays), ZA (CPA s.12).
    for (cc, windows, eve) in [
        ("FR", &["telemarketing"][..], false),
        ("IT", &["calling"][..], true),
        ("ES", &["calling"][..], false),
        ("AU", &["telemarketing", "research"][..], false),
        ("ZA", &["consumer-hours"][..], false),
    ] {
        let pack = set.get(&Jurisdiction::parse(cc).unwrap()).unwrap();
        for id in windows {
            let window = pack.windows().iter().find(|w| w.id == *id).unwrap_or_else(|| panic!("{cc}: no window {id}"));
            let rule = window.holidays.as_ref().unwrap_or_else(|| panic!("{cc}/{id}: no holiday calendar"));
            assert!(rule.holiday.is_empty(), "{cc}/{id}: closed on public holidays");
            assert_eq!(rule.eve.is_some(), eve, "{cc}/{id}: eve slots");
            let calendar = &rule.calendar;
            assert_eq!(calendar.country, cc);
            assert_eq!(calendar.path, format!("{}/holidays.toml", pack.id()));
            assert!(
                calendar.source.starts_with("python-holidays 0.108 (PyPI package `holidays`)"),
                "{}",
                calendar.source
            );
            assert!(calendar.generated_by.starts_with("python3 tools/holidays.py"), "{}", calendar.generated_by);
            assert!(calendar.regional.ends_with("[U]"), "{cc}: the regional gap is declared: {}", calendar.regional);
            assert!(calendar.covers(2026) && calendar.covers(2027), "{cc}: {}", calendar.years_text());
            assert!(calendar.dates.len() >= 7, "{cc}: {} holidays", calendar.dates.len());
            assert!(window.describe().contains("public holidays (calendar"), "{}", window.describe());
            assert!(!window.cite.contains("not modelled [U])"), "{cc}/{id}: {}", window.cite);
        }
    }
    // The generated files say how to reproduce them.
    for dir in pack_dirs().iter().filter(|d| d.join(HOLIDAYS_FILE).is_file()) {
        let text = fs::read_to_string(dir.join(HOLIDAYS_FILE)).unwrap();
        assert!(text.starts_with("# Public holidays for the calling windows of"), "{}", dir.display());
        assert!(text.contains("#   pip install holidays==0.108 && python3 tools/holidays.py --years 2026 2027\n"));
    }
}
