//! `domicile packs report`: the legal workspace. A static site, readable from the files with no
//! server: the country × purpose × channel matrix (each cell's basis in words and colour, with
//! marks for windows, public holidays, registers, lifetimes, unverified sources and dated rules,
//! linked to its rule and citation), a page per pack (every rule deciding one of its cells, with
//! citation, confidence, source, dates, obligations and notes; the public-holiday calendars its
//! windows read; residency; rights), residency and rights across jurisdictions, and with
//! `--against` a page of exactly what changes between two sets.
//! Pages come from minijinja templates (`cli/templates/report/`), auto-escaped.

use std::collections::BTreeMap;
use std::path::Path;

use domicile_policy::time::format_rfc3339;
use domicile_policy::{Basis, PackSet, ResidencyProfile, RightsProfile, Rule};
use domicile_types::{Channel, Purpose};
use minijinja::{Environment, context};
use serde::Serialize;

const TEMPLATES: [(&str, &str); 8] = [
    ("base.html", include_str!("../../templates/report/base.html")),
    ("index.html", include_str!("../../templates/report/index.html")),
    ("pack.html", include_str!("../../templates/report/pack.html")),
    ("residency.html", include_str!("../../templates/report/residency.html")),
    ("rights.html", include_str!("../../templates/report/rights.html")),
    ("diff.html", include_str!("../../templates/report/diff.html")),
    ("residency_block.html", include_str!("../../templates/report/residency_block.html")),
    ("rights_block.html", include_str!("../../templates/report/rights_block.html")),
];
const STYLE: &str = include_str!("../../templates/report/style.css");

#[derive(Debug, Serialize)]
struct Site {
    packs: Vec<PackPage>,
    purposes: Vec<PurposeSection>,
    channels: Vec<&'static str>,
    signer: String,
    source: String,
    has_diff: bool,
    against: String,
    changes: Vec<ChangeRow>,
}

#[derive(Debug, Serialize)]
struct PackPage {
    id: String,
    pack: String,
    jurisdiction: String,
    title: String,
    /// `country` or `subdivision`.
    kind: &'static str,
    page: String,
    chain: Vec<String>,
    owners: Vec<String>,
    time_zones: Vec<String>,
    path: String,
    rules: Vec<RuleView>,
    residency: ResidencyProfile,
    rights: RightsProfile,
    /// The public-holiday calendars the pack's calling windows read.
    holidays: Vec<CalendarView>,
}

/// A public-holiday calendar as the pack set holds it: its source, coverage, declared gap and dates.
#[derive(Debug, Clone, Serialize)]
struct CalendarView {
    id: String,
    windows: Vec<String>,
    country: String,
    source: String,
    generated_by: String,
    years: String,
    regional: String,
    confidence: String,
    path: String,
    /// `2026-12-25 Christmas Day`, in date order.
    dates: Vec<String>,
}

/// The calendars the pack's windows read, each once, in window order.
fn calendars(pack: &domicile_policy::Pack) -> Vec<CalendarView> {
    let mut out: Vec<CalendarView> = Vec::new();
    for window in pack.windows() {
        let Some(rule) = &window.holidays else { continue };
        if let Some(view) = out.iter_mut().find(|c| c.id == rule.calendar_id) {
            view.windows.push(window.id.clone());
            continue;
        }
        let c = &rule.calendar;
        out.push(CalendarView {
            id: rule.calendar_id.clone(),
            windows: vec![window.id.clone()],
            country: c.country.clone(),
            source: if c.source.is_empty() {
                "no holidays.toml of the set provides it".to_owned()
            } else {
                c.source.clone()
            },
            generated_by: c.generated_by.clone(),
            years: c.years_text(),
            regional: c.regional.clone(),
            confidence: c.confidence.as_str().to_owned(),
            path: c.path.clone(),
            dates: c.dates.iter().map(|(d, name)| format!("{d} {name}")).collect(),
        });
    }
    out
}

#[derive(Debug, Clone, Serialize)]
struct RuleView {
    id: String,
    purpose: &'static str,
    channels: Vec<&'static str>,
    label: String,
    class: &'static str,
    cite: String,
    confidence: String,
    source: Option<String>,
    effective: Option<String>,
    window: Option<String>,
    register: Option<String>,
    lifetime: Option<String>,
    /// "business only" and the like; `None` for a rule of every recipient type.
    recipients: Option<String>,
    minors: Option<String>,
    separate_hours: Option<String>,
    obligations: Vec<String>,
    note: Option<String>,
    path: String,
    line: usize,
    inherited: bool,
}

#[derive(Debug, Serialize)]
struct PurposeSection {
    purpose: &'static str,
    rows: Vec<MatrixRow>,
}

#[derive(Debug, Serialize)]
struct MatrixRow {
    jurisdiction: String,
    kind: &'static str,
    page: String,
    pack: String,
    cells: Vec<CellView>,
}

#[derive(Debug, Serialize)]
struct CellView {
    channel: &'static str,
    label: String,
    class: &'static str,
    rule: Option<String>,
    href: String,
    cite: String,
    marks: Vec<String>,
}

/// One difference between two sets, for sign-off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeRow {
    pub jurisdiction: String,
    pub what: String,
    pub before: String,
    pub after: String,
}

/// The basis in words and its colour class (the class is never the only signal).
fn basis_view(basis: Basis) -> (String, &'static str) {
    let class = match basis {
        Basis::OptIn | Basis::DoubleOptIn | Basis::SoftOptIn => "consent",
        Basis::OptOut | Basis::LegitimateInterest => "open",
        Basis::Prohibited => "prohibited",
        Basis::Gap => "gap",
    };
    (basis.as_str().replace('_', " ").replace("opt in", "opt-in").replace("opt out", "opt-out"), class)
}

fn rule_view(pack: &domicile_policy::Pack, rule: &Rule) -> RuleView {
    let (label, class) = basis_view(rule.basis);
    let window = rule.window.as_ref().map(|id| match pack.windows().iter().find(|w| &w.id == id) {
        Some(w) => format!("{id}: {} ({}; in the subject's time zone)", w.describe(), w.cite),
        None => id.clone(),
    });
    let register = rule.screen.as_ref().map(|id| match pack.registers().iter().find(|r| &r.id == id) {
        Some(r) => format!(
            "{} ({}); {}",
            r.name,
            r.cite,
            if r.exempt_with_consent { "a consent in force exempts" } else { "no exemption" }
        ),
        None => id.clone(),
    });
    let lifetime = rule.lifetime.as_ref().map(|id| match pack.lifetimes().iter().find(|l| &l.id == id) {
        Some(l) => format!("{id} ({})", l.cite),
        None => id.clone(),
    });
    let recipients = (!rule.recipients.is_empty())
        .then(|| format!("{} only", rule.recipients.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" and ")));
    let minors = rule.minors.as_ref().map(|id| match pack.minors().iter().find(|m| &m.id == id) {
        Some(m) => {
            let bands: Vec<String> = m
                .bands
                .iter()
                .map(|b| {
                    let kinds: Vec<&str> = b.consent.iter().map(|k| k.as_str()).collect();
                    format!(
                        "under {}: {} ({})",
                        b.under,
                        b.basis,
                        if kinds.is_empty() { "no consent".into() } else { kinds.join(" or ") }
                    )
                })
                .collect();
            format!("{id}: {}; unknown age as {} ({})", bands.join("; "), m.unknown_age, m.cite)
        }
        None => id.clone(),
    });
    let separate_hours =
        rule.separate_consent_hours.as_ref().map(|id| match pack.windows().iter().find(|w| &w.id == id) {
            Some(w) => format!("{id}: {} (only a consent recorded for these hours counts; {})", w.describe(), w.cite),
            None => id.clone(),
        });
    let obligations = rule
        .obligations
        .iter()
        .map(|id| match pack.obligations().iter().find(|o| &o.id == id) {
            Some(o) => format!("{id}: {}", o.text),
            None => id.clone(),
        })
        .collect();
    let effective = match (rule.effective_from, rule.effective_until) {
        (None, None) => None,
        (from, until) => Some(format!(
            "from {} until {}",
            from.map_or_else(|| "always".to_owned(), format_rfc3339),
            until.map_or_else(|| "further notice".to_owned(), format_rfc3339)
        )),
    };
    RuleView {
        id: rule.id.clone(),
        purpose: rule.purpose.as_str(),
        channels: rule.channels.iter().map(|c| c.as_str()).collect(),
        label,
        class,
        cite: rule.cite.clone(),
        confidence: rule.confidence.as_str().to_owned(),
        source: rule.source.clone(),
        effective,
        window,
        register,
        lifetime,
        recipients,
        minors,
        separate_hours,
        obligations,
        note: rule.note.clone(),
        path: rule.path.clone(),
        line: rule.line,
        inherited: rule.pack_id != pack.id(),
    }
}

/// Every jurisdiction's pack, countries and their subdivisions in code order.
fn jurisdiction_packs(set: &PackSet) -> Vec<&domicile_policy::Pack> {
    let mut packs: Vec<_> = set.packs().filter(|p| p.jurisdiction().is_some()).collect();
    packs.sort_by_key(|p| p.jurisdiction().map(ToString::to_string));
    packs
}

/// The rules deciding at least one cell of `pack` (its own and inherited ones), in cell order.
fn deciding_rules(pack: &domicile_policy::Pack) -> Vec<RuleView> {
    let mut seen: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for &purpose in Purpose::ALL {
        for &channel in Channel::ALL {
            if let Some(rule) = pack.rule_for(purpose, channel)
                && !seen.contains(&rule.id.as_str())
            {
                seen.push(&rule.id);
                out.push(rule_view(pack, rule));
            }
        }
    }
    out
}

fn pack_page(pack: &domicile_policy::Pack) -> PackPage {
    let jurisdiction = pack.jurisdiction().map(ToString::to_string).unwrap_or_default();
    PackPage {
        id: pack.id().to_owned(),
        pack: pack.pack_ref().to_string(),
        kind: if jurisdiction.contains('-') { "subdivision" } else { "country" },
        page: format!("pack-{}.html", pack.id()),
        jurisdiction,
        title: pack.title().to_owned(),
        chain: pack.chain().iter().map(ToString::to_string).collect(),
        owners: pack.owners().to_vec(),
        time_zones: pack.time_zones().iter().map(ToString::to_string).collect(),
        path: pack.path().to_owned(),
        rules: deciding_rules(pack),
        residency: pack.residency_profile(false),
        rights: pack.rights_profile(false),
        holidays: calendars(pack),
    }
}

fn matrix(packs: &[PackPage], set: &PackSet) -> Vec<PurposeSection> {
    Purpose::ALL
        .iter()
        .map(|&purpose| PurposeSection {
            purpose: purpose.as_str(),
            rows: packs
                .iter()
                .filter_map(|page| {
                    let pack = set.get_by_id(&page.id)?;
                    let cells = Channel::ALL
                        .iter()
                        .map(|&channel| match pack.rule_for(purpose, channel) {
                            None => CellView {
                                channel: channel.as_str(),
                                label: "no rule".to_owned(),
                                class: "none",
                                rule: None,
                                href: String::new(),
                                cite: String::new(),
                                marks: Vec::new(),
                            },
                            Some(rule) => {
                                let (label, class) = basis_view(rule.basis);
                                let mut marks = Vec::new();
                                let holidays = rule
                                    .window
                                    .as_ref()
                                    .and_then(|id| pack.windows().iter().find(|w| &w.id == id))
                                    .is_some_and(|w| w.holidays.is_some());
                                for (present, mark) in [
                                    (rule.window.is_some(), "window"),
                                    (holidays, "holidays"),
                                    (rule.screen.is_some(), "register"),
                                    (rule.lifetime.is_some(), "lifetime"),
                                    (rule.minors.is_some(), "minors"),
                                    (rule.separate_consent_hours.is_some(), "separate hours"),
                                    (rule.confidence.as_str() == "U", "[U]"),
                                    (rule.effective_from.is_some() || rule.effective_until.is_some(), "dated"),
                                ] {
                                    if present {
                                        marks.push(mark.to_owned());
                                    }
                                }
                                // A cell whose rules differ by recipient type says so, with the
                                // other types' basis (each rule is on the pack's page).
                                if !rule.recipients.is_empty() {
                                    let own: Vec<&str> = rule.recipients.iter().map(|r| r.as_str()).collect();
                                    marks.push(format!("{} only", own.join(" and ")));
                                    for other in pack.rules_for(purpose, channel).skip(1) {
                                        if !other.recipients.is_empty() && other.recipients != rule.recipients {
                                            let names: Vec<&str> =
                                                other.recipients.iter().map(|r| r.as_str()).collect();
                                            marks.push(format!(
                                                "{}: {}",
                                                names.join(" and "),
                                                basis_view(other.basis).0
                                            ));
                                        }
                                    }
                                }
                                CellView {
                                    channel: channel.as_str(),
                                    label,
                                    class,
                                    rule: Some(rule.id.clone()),
                                    href: format!("{}#rule-{}", page.page, rule.id),
                                    cite: rule.cite.clone(),
                                    marks,
                                }
                            }
                        })
                        .collect();
                    Some(MatrixRow {
                        jurisdiction: page.jurisdiction.clone(),
                        kind: page.kind,
                        page: page.page.clone(),
                        pack: page.pack.clone(),
                        cells,
                    })
                })
                .collect(),
        })
        .collect()
}

/// Who signed the set, from `SIGNATURES.toml` beside the packs (verified by `packs verify`).
fn signer(dir: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(dir.join(domicile_policy::signing::SIGNATURES_FILE)) else {
        return "unsigned (no SIGNATURES.toml)".to_owned();
    };
    let keys: Vec<String> = toml::from_str::<toml::Value>(&text)
        .ok()
        .and_then(|v| v.get("signature").and_then(|s| s.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.get("key_id").and_then(|k| k.as_str()).map(str::to_owned))
        .collect();
    if keys.is_empty() {
        "SIGNATURES.toml lists no signature".to_owned()
    } else {
        format!("signed by {} (check with `domicile packs verify`)", keys.join(", "))
    }
}

/// What changes from `old` to `new`, per jurisdiction: each rule deciding a cell (added,
/// removed, or the fields that differ), and each rights and residency fact.
pub fn changes(old: &PackSet, new: &PackSet) -> Vec<ChangeRow> {
    let pages = |set: &PackSet| -> BTreeMap<String, PackPage> {
        jurisdiction_packs(set).into_iter().map(pack_page).map(|p| (p.jurisdiction.clone(), p)).collect()
    };
    let (old, new) = (pages(old), pages(new));
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for jurisdiction in keys {
        let change = |what: String, before: String, after: String| ChangeRow {
            jurisdiction: jurisdiction.clone(),
            what,
            before,
            after,
        };
        match (old.get(jurisdiction), new.get(jurisdiction)) {
            (None, Some(p)) => out.push(change("pack".into(), "none".into(), p.pack.clone())),
            (Some(p), None) => out.push(change("pack".into(), p.pack.clone(), "none".into())),
            (Some(a), Some(b)) => {
                let rules = |p: &PackPage| -> BTreeMap<String, RuleView> {
                    p.rules.iter().map(|r| (r.id.clone(), r.clone())).collect()
                };
                let (ra, rb) = (rules(a), rules(b));
                let ids: std::collections::BTreeSet<&String> = ra.keys().chain(rb.keys()).collect();
                for id in ids {
                    match (ra.get(id), rb.get(id)) {
                        (None, Some(r)) => out.push(change(format!("rule {id}"), "none".into(), summary(r))),
                        (Some(r), None) => out.push(change(format!("rule {id}"), summary(r), "none".into())),
                        (Some(x), Some(y)) => {
                            let (before, after) = rule_fields(x, y);
                            if !before.is_empty() {
                                out.push(change(format!("rule {id}"), before.join("; "), after.join("; ")));
                            }
                        }
                        (None, None) => {}
                    }
                }
                for (what, x, y) in facts(a).into_iter().zip(facts(b)).map(|((w, x), (_, y))| (w, x, y)) {
                    if x != y {
                        out.push(change(what.to_owned(), x, y));
                    }
                }
            }
            (None, None) => {}
        }
    }
    out
}

fn summary(rule: &RuleView) -> String {
    format!("{} for {} by {} ({})", rule.label, rule.purpose, rule.channels.join(", "), rule.cite)
}

/// The fields of a rule that differ, as `name: value` before and after.
fn rule_fields(a: &RuleView, b: &RuleView) -> (Vec<String>, Vec<String>) {
    let fields = |r: &RuleView| -> Vec<(&'static str, String)> {
        vec![
            ("basis", r.label.clone()),
            ("channels", r.channels.join(", ")),
            ("citation", r.cite.clone()),
            ("confidence", r.confidence.clone()),
            ("in effect", r.effective.clone().unwrap_or_else(|| "always".into())),
            ("window", r.window.clone().unwrap_or_else(|| "none".into())),
            ("register", r.register.clone().unwrap_or_else(|| "none".into())),
            ("lifetime", r.lifetime.clone().unwrap_or_else(|| "none".into())),
            ("recipients", r.recipients.clone().unwrap_or_else(|| "every type".into())),
            ("minors", r.minors.clone().unwrap_or_else(|| "none".into())),
            ("separate consent hours", r.separate_hours.clone().unwrap_or_else(|| "none".into())),
            ("obligations", r.obligations.join(" | ")),
        ]
    };
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for ((name, x), (_, y)) in fields(a).into_iter().zip(fields(b)) {
        if x != y {
            before.push(format!("{name}: {x}"));
            after.push(format!("{name}: {y}"));
        }
    }
    (before, after)
}

/// Rights and residency facts, in a fixed order.
fn facts(p: &PackPage) -> Vec<(&'static str, String)> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "not stated".into());
    let r = &p.residency;
    vec![
        ("rights deadline", opt(&p.rights.deadline)),
        ("rights extension", opt(&p.rights.extension)),
        (
            "age of digital consent",
            p.rights.age_of_digital_consent.map_or_else(|| "not stated".into(), |a| a.to_string()),
        ),
        ("rights citation", opt(&p.rights.cite)),
        ("home regions", r.home_regions.join(", ")),
        ("localisation", r.localisation.clone()),
        ("in-country collection", r.in_country_collection.to_string()),
        ("minimised fields", r.minimised_fields.join(", ")),
        ("residency citation", opt(&r.cite)),
        (
            "public holidays",
            p.holidays
                .iter()
                .map(|c| format!("{} ({}; {}): {}", c.id, c.source, c.years, c.dates.join(", ")))
                .collect::<Vec<_>>()
                .join(" | "),
        ),
        (
            "transfers",
            r.transfers
                .iter()
                .map(|t| {
                    let consent = if t.consent.is_empty() {
                        String::new()
                    } else {
                        format!(" on {} consent", t.consent.join("/"))
                    };
                    format!("{} to {} for {}{consent} ({})", t.id, t.to.join("/"), t.purposes.join("/"), t.cite)
                })
                .collect::<Vec<_>>()
                .join(" | "),
        ),
    ]
}

/// Writes the site into `out`. `against`: the set to compare with and where it came from.
pub fn write_site(set: &PackSet, dir: &Path, out: &Path, against: Option<(&PackSet, &Path)>) -> anyhow::Result<usize> {
    let packs: Vec<PackPage> = jurisdiction_packs(set).into_iter().map(pack_page).collect();
    let purposes = matrix(&packs, set);
    let changes = against.map(|(old, _)| changes(old, set)).unwrap_or_default();
    let site = Site {
        purposes,
        channels: Channel::ALL.iter().map(|c| c.as_str()).collect(),
        signer: signer(dir),
        source: dir.display().to_string(),
        has_diff: against.is_some(),
        against: against.map(|(_, p)| p.display().to_string()).unwrap_or_default(),
        changes,
        packs,
    };
    let mut env = Environment::new();
    for (name, source) in TEMPLATES {
        env.add_template(name, source)?;
    }
    std::fs::create_dir_all(out)?;
    let render = |name: &str, file: &str, ctx: minijinja::Value| -> anyhow::Result<()> {
        let html = env.get_template(name)?.render(ctx)?;
        std::fs::write(out.join(file), html)?;
        Ok(())
    };
    render("index.html", "index.html", context! { site => &site })?;
    render("residency.html", "residency.html", context! { site => &site })?;
    render("rights.html", "rights.html", context! { site => &site })?;
    if site.has_diff {
        render("diff.html", "diff.html", context! { site => &site })?;
    }
    for pack in &site.packs {
        render("pack.html", &pack.page, context! { site => &site, pack => pack })?;
    }
    std::fs::write(out.join("style.css"), STYLE)?;
    Ok(site.packs.len())
}
