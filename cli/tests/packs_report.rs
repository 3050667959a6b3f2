//! The legal workspace (`domicile packs report`) in a real headless browser: Debian's chromium,
//! driven over the DevTools protocol by `browser/check_report.py`. The matrix shows the 18
//! countries, a cell's link opens its rule with the citation, and changing one rule in a copy of
//! the set makes the change page list exactly that change. The matrix screenshot is kept in the
//! build's temporary directory (`CARGO_TARGET_TMPDIR`, `packs-report-matrix.png`), not committed.
//!
//! `.ci/run` installs chromium; without it this test fails and says what to install
//! (`DOMICILE_SKIP_BROWSER=1` skips it explicitly).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers; clippy.toml only exempts the #[test] fns themselves"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

const OLD_CITE: &str = "cite = \"§ 7 Abs. 2 Nr. 1 UWG; § 7a UWG\"";
const NEW_CITE: &str = "§ 7 Abs. 2 Nr. 1 UWG; § 7a UWG (consent documented for 5 years)";

#[test]
fn the_report_in_a_browser_shows_the_matrix_links_rules_and_lists_exactly_the_change() {
    if std::env::var_os("DOMICILE_SKIP_BROWSER").is_some() {
        eprintln!("SKIPPED: DOMICILE_SKIP_BROWSER is set");
        return;
    }
    let has_chromium = ["chromium", "chromium-browser"].iter().any(|b| {
        Command::new("sh").args(["-c", &format!("command -v {b}")]).output().is_ok_and(|o| o.status.success())
    });
    assert!(has_chromium, "this test needs a real browser: install Debian's chromium (apt-get install chromium)");

    let work = tempfile::tempdir().unwrap();
    let next = work.path().join("next");
    copy_dir(&root().join("policy-packs"), &next);
    let de = next.join("de/pack.toml");
    let text = std::fs::read_to_string(&de).unwrap();
    assert_eq!(text.matches(OLD_CITE).count(), 1, "the rule to change is de.marketing.voice");
    std::fs::write(&de, text.replace(OLD_CITE, &format!("cite = \"{NEW_CITE}\""))).unwrap();

    let out = work.path().join("site");
    let written = Command::new(env!("CARGO_BIN_EXE_domicile"))
        .args(["packs", "report", "--packs"])
        .arg(&next)
        .arg("--out")
        .arg(&out)
        .arg("--against")
        .arg(root().join("policy-packs"))
        .output()
        .unwrap();
    assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stderr));

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packs-report-matrix.png");
    let checked = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/check_report.py"))
        .arg(&out)
        .arg(&screenshot)
        .output()
        .unwrap();
    assert!(checked.status.success(), "browser run failed: {}", String::from_utf8_lossy(&checked.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&checked.stdout).unwrap();

    let countries: Vec<&str> =
        seen["matrix"]["countries"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(countries.len(), 18, "{countries:?}");
    for country in
        ["AU", "BR", "CA", "CH", "CN", "DE", "ES", "FR", "GB", "IN", "IT", "JP", "KR", "NL", "RU", "SG", "US", "ZA"]
    {
        assert!(countries.contains(&country), "{country} in the matrix");
    }
    assert_eq!(
        seen["matrix"]["subdivisions"],
        serde_json::json!([
            "US-CA", "US-CO", "US-CT", "US-DE", "US-IA", "US-MD", "US-MN", "US-MT", "US-NE", "US-NH", "US-NJ", "US-OR",
            "US-TX"
        ])
    );
    assert_eq!(seen["matrix"]["cells_without_text"], 0, "every cell says its basis in words");

    // The cell's link, clicked, lands on its rule, which names the citation the cell promised.
    assert_eq!(seen["link"]["href"], "pack-de.html#rule-de.marketing.voice");
    assert_eq!(seen["landed"]["id"], "rule-de.marketing.voice");
    assert_eq!(seen["landed"]["citation"], NEW_CITE);
    assert_eq!(seen["landed"]["citation"], seen["link"]["title"]);
    assert_eq!(seen["landed"]["basis"], seen["link"]["text"]);

    // Exactly the one change.
    let changes = seen["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{changes:#?}");
    assert_eq!(changes[0]["jurisdiction"], "DE");
    assert_eq!(changes[0]["what"], "rule de.marketing.voice");
    assert_eq!(changes[0]["before"], "citation: § 7 Abs. 2 Nr. 1 UWG; § 7a UWG");
    assert_eq!(changes[0]["after"], format!("citation: {NEW_CITE}"));

    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a screenshot of the matrix");
}

/// Without changes, the change page says so; the site is complete without a server.
#[test]
fn a_report_against_the_same_set_lists_no_change_and_links_every_page() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("site");
    let written = Command::new(env!("CARGO_BIN_EXE_domicile"))
        .args(["packs", "report", "--out"])
        .arg(&out)
        .args(["--against", "policy-packs"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stderr));
    let diff = std::fs::read_to_string(out.join("diff.html")).unwrap();
    assert!(diff.contains("class=\"nochange\""), "no change against itself");
    let index = std::fs::read_to_string(out.join("index.html")).unwrap();
    // Every link of the matrix points at a page that exists, at an anchor that exists there.
    let mut checked = 0;
    for href in index.split("href=\"").skip(1).map(|s| &s[..s.find('"').unwrap()]) {
        let href = href.replace("&#x2f;", "/");
        let (file, anchor) = href.split_once('#').unwrap_or((&href, ""));
        let file = if file.is_empty() { "index.html" } else { file };
        let page = std::fs::read_to_string(out.join(file)).unwrap_or_else(|_| panic!("{file} exists"));
        if !anchor.is_empty() {
            assert!(page.contains(&format!("id=\"{anchor}\"")), "{href}: anchor exists");
        }
        checked += 1;
    }
    assert!(checked > 18 * 7, "{checked} links checked");
    let style = std::fs::read_to_string(out.join("style.css")).unwrap();
    assert!(style.contains("@media print"), "printable");
    assert!(style.contains(":focus-visible"), "keyboard focus is visible");
}
