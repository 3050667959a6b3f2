//! `domicile packs …`: the authoring loop for legal teams: validate, test, explain, diff, and
//! keygen / sign / verify for signed pack sets.
//!
//! Exit codes, for CI: 0 success (for `diff`: no decision changed); 1 problems found (invalid
//! packs, failing or uncovered tests, changed decisions, refused signatures); 2 usage errors
//! (bad arguments, unreadable paths).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod report;

use clap::{Args, Subcommand, ValueEnum};
use domicile_policy::HOLIDAYS_FILE;
use domicile_policy::{
    Change, ConsentFact, ConsentKind, DecisionInput, Diagnostic, Facts, Pack, PackSet, PackSource, TestReport, Zone,
    diff, run_test_files,
};
use domicile_runtime::packs::{
    PackLoadError, TrustConfig, TrustedKeyFile, generate_key, load_dir_verified, read_sources, read_test_sources,
    sign_dir,
};
use domicile_types::{Channel, ConsentState, Jurisdiction, Purpose};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum PacksCommand {
    /// Check every pack; prints all problems with file:line:column. Exit 1 on any error.
    Validate {
        #[arg(default_value = "policy-packs")]
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Run every pack's tests (`<pack>/tests/*.toml`) and report rule coverage. Exit 1 on any
    /// failure, a pack without tests, or a rule no test covers.
    Test {
        #[arg(default_value = "policy-packs")]
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Trace one decision: packs consulted, rules weighed, checks that held or failed, citations.
    Explain(Box<ExplainArgs>),
    /// Every decision that changes between two versions of a pack (or of a whole set), over the
    /// whole decision space. Exit 0 when nothing changed, 1 when something did.
    Diff {
        /// The old version: a pack directory or `pack.toml`, or a whole set directory.
        old: PathBuf,
        /// The new version, of the same kind as OLD.
        new: PathBuf,
        /// Packs a single pack may extend (baselines, country packs of overlays).
        #[arg(long, default_value = "policy-packs")]
        packs: PathBuf,
        /// Reference instant (RFC 3339); windows are explored over the week after it. Default: now.
        #[arg(long)]
        at: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Write the legal workspace: a static site (open OUT/index.html, no server) with the
    /// country × purpose × channel matrix, a page per pack, residency and rights, and with
    /// --against the exact changes from another set, ready for sign-off.
    Report {
        #[arg(long, default_value = "policy-packs")]
        packs: PathBuf,
        /// Directory to write the site into (created).
        #[arg(long)]
        out: PathBuf,
        /// Another pack set (e.g. the version in force) to list every change from.
        #[arg(long)]
        against: Option<PathBuf>,
    },
    /// Write a new Ed25519 signing key (private key 0600; never commit it) and its public key.
    Keygen {
        #[arg(long)]
        private: PathBuf,
        #[arg(long)]
        public: PathBuf,
    },
    /// Sign the set (every pack, holiday calendar and test file) with one key; adds to signatures
    /// over the same content.
    Sign {
        #[arg(default_value = "policy-packs")]
        dir: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        key_id: String,
    },
    /// Verify the set's signatures. Exit 1 when unsigned, tampered or not signed by enough keys.
    Verify {
        #[arg(default_value = "policy-packs")]
        dir: PathBuf,
        /// A trusted key as `ID=PUBLIC_KEY_FILE`; repeat for several.
        #[arg(long = "trusted", required = true)]
        trusted: Vec<String>,
        #[arg(long, default_value_t = 1)]
        min_signatures: usize,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[arg(long, default_value = "policy-packs")]
    packs: PathBuf,
    /// ISO 3166-1 alpha-2 country or ISO 3166-2 subdivision: `DE`, `US-CA`, `US-TX`. A
    /// subdivision without a pack of its own is explained with its country's, saying so.
    #[arg(long)]
    jurisdiction: String,
    /// Where the jurisdiction's subjects' data lives and who may receive what (home regions,
    /// localisation, collection, transfers with conditions and citations), instead of a decision.
    #[arg(long, conflicts_with_all = ["purpose", "channel"])]
    residency: bool,
    /// How long a rights request may take in the jurisdiction (deadline, extension, citation),
    /// instead of a decision.
    #[arg(long, conflicts_with_all = ["purpose", "channel"])]
    rights: bool,
    #[arg(long, required_unless_present_any = ["residency", "rights"])]
    purpose: Option<String>,
    #[arg(long, required_unless_present_any = ["residency", "rights"])]
    channel: Option<String>,
    /// The consent on record: granted, denied or withdrawn. Omit for none.
    #[arg(long)]
    consent: Option<String>,
    /// What the consent rests on: express, implied_purchase, implied_inquiry or guardian.
    #[arg(long)]
    consent_kind: Option<String>,
    /// Calling windows of the pack the consent is limited to (repeatable), e.g. `night`.
    #[arg(long = "consent-hours")]
    consent_hours: Vec<String>,
    /// When the consent was captured (RFC 3339); default: one day before `--at`.
    #[arg(long)]
    captured_at: Option<String>,
    #[arg(long)]
    expires_at: Option<String>,
    #[arg(long)]
    double_opt_in: bool,
    /// The decision instant (RFC 3339). Default: now.
    #[arg(long)]
    at: Option<String>,
    /// The subject's IANA time zone, for calling windows.
    #[arg(long)]
    time_zone: Option<String>,
    #[arg(long)]
    contact_from_sale: bool,
    #[arg(long)]
    similar_products: bool,
    #[arg(long)]
    opt_out_offered: bool,
    /// Register screening result: true (listed) or false (screened, not listed).
    #[arg(long)]
    on_register: Option<bool>,
    /// When the subject last bought from the sender (RFC 3339): an existing business relationship.
    #[arg(long)]
    last_purchase: Option<String>,
    /// When the subject last inquired with the sender (RFC 3339).
    #[arg(long)]
    last_inquiry: Option<String>,
    /// Who the contact goes to, where rules differ: consumer or business. Omit: unknown.
    #[arg(long)]
    recipient: Option<String>,
    /// The subject's age in whole years, for rules with minors bands. Omit: unknown.
    #[arg(long)]
    age: Option<u8>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

const USAGE: u8 = 2;

/// `println!` that ignores a closed pipe (`domicile packs diff ... | head`) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub fn run(command: PacksCommand) -> ExitCode {
    match command {
        PacksCommand::Validate { dir, format } => validate(&dir, format),
        PacksCommand::Test { dir, format } => test(&dir, format),
        PacksCommand::Explain(args) => explain(&args),
        PacksCommand::Report { packs, out, against } => report_command(&packs, &out, against.as_deref()),
        PacksCommand::Diff { old, new, packs, at, format } => diff_command(&old, &new, &packs, at.as_deref(), format),
        PacksCommand::Keygen { private, public } => match generate_key(&private, &public) {
            Ok(public_hex) => {
                outln!("wrote private key {} (keep it secret) and public key {public_hex}", private.display());
                ExitCode::SUCCESS
            }
            Err(e) => usage_error(&e.to_string()),
        },
        PacksCommand::Sign { dir, key, key_id } => match sign_dir(&dir, &key_id, &key) {
            Ok(hash) => {
                outln!("signed {} as `{key_id}`: content hash {hash}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e @ PackLoadError::Io { .. }) => usage_error(&e.to_string()),
            Err(e) => failure(&e.to_string()),
        },
        PacksCommand::Verify { dir, trusted, min_signatures, format } => verify(&dir, &trusted, min_signatures, format),
    }
}

fn report_command(dir: &Path, out: &Path, against: Option<&Path>) -> ExitCode {
    let (set, _) = match compile_dir(dir, Format::Human, true) {
        Ok(set) => set,
        Err(code) => return code,
    };
    let old = match against.map(|a| compile_dir(a, Format::Human, true)).transpose() {
        Ok(old) => old.map(|(set, _)| set),
        Err(code) => return code,
    };
    match report::write_site(&set, dir, out, old.as_ref().zip(against)) {
        Ok(count) => {
            outln!("wrote the report of {count} packs to {} (open index.html)", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => failure(&format!("cannot write the report: {e:#}")),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(USAGE)
}

fn failure(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn diagnostic_json(d: &Diagnostic) -> serde_json::Value {
    json!({ "path": d.path, "line": d.line, "column": d.column, "severity": d.severity.as_str(), "message": d.message })
}

/// Compiles a set directory, printing diagnostics. `Err(code)` when it cannot.
fn compile_dir(dir: &Path, format: Format, quiet_ok: bool) -> Result<(PackSet, Vec<Diagnostic>), ExitCode> {
    let sources = read_sources(dir).map_err(|e| usage_error(&e.to_string()))?;
    match PackSet::compile(&sources) {
        Ok((set, warnings)) => {
            if format == Format::Human && !quiet_ok {
                for w in &warnings {
                    eprintln!("{w}");
                }
            }
            Ok((set, warnings))
        }
        Err(diagnostics) => {
            match format {
                Format::Human => {
                    eprintln!("{diagnostics}");
                    eprintln!("{} error(s)", diagnostics.errors().count());
                }
                Format::Json => outln!(
                    "{}",
                    json!({ "ok": false, "diagnostics": diagnostics.0.iter().map(diagnostic_json).collect::<Vec<_>>() })
                ),
            }
            Err(ExitCode::FAILURE)
        }
    }
}

fn validate(dir: &Path, format: Format) -> ExitCode {
    match compile_dir(dir, format, false) {
        Ok((set, warnings)) => {
            match format {
                Format::Human => outln!("{} packs valid, {} warning(s)", set.len(), warnings.len()),
                Format::Json => outln!(
                    "{}",
                    json!({
                        "ok": true,
                        "packs": set.packs().map(|p| p.pack_ref().to_string()).collect::<Vec<_>>(),
                        "diagnostics": warnings.iter().map(diagnostic_json).collect::<Vec<_>>(),
                    })
                ),
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn report_json(report: &TestReport) -> serde_json::Value {
    json!({
        "pack": report.pack.to_string(),
        "passed": report.passed,
        "failed": report.failed,
        "uncovered_rules": report.uncovered_rules,
        "cases": report.cases.iter().map(|c| json!({
            "name": c.name, "path": c.path, "line": c.line, "passed": c.passed, "failures": c.failures,
            "effect": c.decision.effect.as_str(), "reasons": c.decision.reasons,
        })).collect::<Vec<_>>(),
        "checks": report.checks.iter().map(|c| json!({
            "name": c.name, "path": c.path, "line": c.line, "passed": c.passed, "failures": c.failures,
            "answer": c.answer,
        })).collect::<Vec<_>>(),
    })
}

fn test(dir: &Path, format: Format) -> ExitCode {
    let (set, _) = match compile_dir(dir, format, true) {
        Ok(set) => set,
        Err(code) => return code,
    };
    let mut ok = true;
    let (mut passed, mut failed) = (0, 0);
    let mut reports = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for pack in set.packs() {
        let sources = match read_test_sources(Path::new(pack.path())) {
            Ok(s) => s,
            Err(e) => {
                problems.push(e.to_string());
                ok = false;
                continue;
            }
        };
        if sources.is_empty() {
            problems.push(format!("pack `{}` has no tests", pack.id()));
            ok = false;
            continue;
        }
        match run_test_files(pack, &sources) {
            Ok(report) => {
                if format == Format::Human {
                    outln!("{report}");
                }
                passed += report.passed;
                failed += report.failed;
                ok &= report.all_passed();
                for rule in &report.uncovered_rules {
                    problems.push(format!("rule `{rule}` of pack `{}` is not covered by any test", pack.id()));
                    ok = false;
                }
                reports.push(report);
            }
            Err(diagnostics) => {
                for d in &diagnostics.0 {
                    problems.push(d.to_string());
                }
                ok = false;
            }
        }
    }
    match format {
        Format::Human => {
            for p in &problems {
                eprintln!("error: {p}");
            }
            outln!("{passed} passed, {failed} failed");
        }
        Format::Json => outln!(
            "{}",
            json!({
                "ok": ok, "passed": passed, "failed": failed, "problems": problems,
                "packs": reports.iter().map(report_json).collect::<Vec<_>>(),
            })
        ),
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn instant(text: Option<&str>, what: &str) -> Result<i64, ExitCode> {
    match text {
        None => Ok(jiff::Timestamp::now().as_second()),
        Some(t) => domicile_policy::time::parse_rfc3339(t)
            .ok_or_else(|| usage_error(&format!("`--{what}` must be an RFC 3339 timestamp with an offset"))),
    }
}

/// `explain --residency` / `--rights`: what the jurisdiction's pack says, with its citations.
fn explain_profiles(args: &ExplainArgs) -> ExitCode {
    let jurisdiction = match Jurisdiction::parse(&args.jurisdiction) {
        Ok(j) => j,
        Err(e) => return usage_error(&e.to_string()),
    };
    let (set, _) = match compile_dir(&args.packs, args.format, true) {
        Ok(set) => set,
        Err(code) => return code,
    };
    let Some(found) = set.lookup(&jurisdiction) else {
        return failure("no policy pack covers this jurisdiction; its data is kept nowhere and decisions are denied");
    };
    let residency = args.residency.then(|| found.pack.residency_profile(found.country_fallback));
    let rights = args.rights.then(|| found.pack.rights_profile(found.country_fallback));
    match args.format {
        Format::Human => {
            if let Some(r) = &residency {
                outln!("{r}");
            }
            if let Some(r) = &rights {
                outln!("{r}");
            }
        }
        Format::Json => match serde_json::to_string_pretty(&json!({ "residency": residency, "rights": rights })) {
            Ok(text) => outln!("{text}"),
            Err(e) => return failure(&e.to_string()),
        },
    }
    ExitCode::SUCCESS
}

fn explain(args: &ExplainArgs) -> ExitCode {
    if args.residency || args.rights {
        return explain_profiles(args);
    }
    let parsed = (|| -> Result<(Jurisdiction, DecisionInput), ExitCode> {
        let jurisdiction = Jurisdiction::parse(&args.jurisdiction).map_err(|e| usage_error(&e.to_string()))?;
        let purpose =
            Purpose::parse(args.purpose.as_deref().unwrap_or_default()).map_err(|e| usage_error(&e.to_string()))?;
        let channel =
            Channel::parse(args.channel.as_deref().unwrap_or_default()).map_err(|e| usage_error(&e.to_string()))?;
        let at = instant(args.at.as_deref(), "at")?;
        let consent = match &args.consent {
            None => None,
            Some(state) => {
                let state = ConsentState::parse(state).map_err(|e| usage_error(&e.to_string()))?;
                let kind = match &args.consent_kind {
                    None => None,
                    Some(k) => Some(ConsentKind::parse(k).ok_or_else(|| {
                        usage_error(
                            "unknown consent kind; expected express, implied_purchase, implied_inquiry or guardian",
                        )
                    })?),
                };
                let captured = match &args.captured_at {
                    None => at - 86_400,
                    Some(t) => instant(Some(t), "captured-at")?,
                };
                let expires = args.expires_at.as_deref().map(|t| instant(Some(t), "expires-at")).transpose()?;
                Some(ConsentFact {
                    state,
                    captured_at_unix: captured,
                    expires_at_unix: expires,
                    double_opt_in_confirmed: args.double_opt_in,
                    kind,
                    hours: args.consent_hours.clone(),
                })
            }
        };
        let subject_time_zone = match &args.time_zone {
            None => None,
            Some(z) => Some(Zone::parse(z).ok_or_else(|| usage_error("unknown time zone; use an IANA name"))?),
        };
        let facts = Facts {
            contact_from_sale: args.contact_from_sale,
            similar_products: args.similar_products,
            opt_out_offered: args.opt_out_offered,
            on_register: args.on_register,
            last_purchase_at: args.last_purchase.as_deref().map(|t| instant(Some(t), "last-purchase")).transpose()?,
            last_inquiry_at: args.last_inquiry.as_deref().map(|t| instant(Some(t), "last-inquiry")).transpose()?,
            recipient: match &args.recipient {
                None => None,
                Some(r) => Some(
                    domicile_policy::Recipient::parse(r)
                        .ok_or_else(|| usage_error("unknown recipient; expected consumer or business"))?,
                ),
            },
            age: args.age,
        };
        Ok((jurisdiction, DecisionInput { purpose, channel, at_unix: at, consent, subject_time_zone, facts }))
    })();
    let (jurisdiction, input) = match parsed {
        Ok(p) => p,
        Err(code) => return code,
    };
    let (set, _) = match compile_dir(&args.packs, args.format, true) {
        Ok(set) => set,
        Err(code) => return code,
    };
    // A subdivision without a pack of its own is explained with its country's, saying so.
    let Some(found) = set.lookup(&jurisdiction) else {
        return failure("no policy pack covers this jurisdiction; decisions are denied");
    };
    let trace = found.explain(&input);
    match args.format {
        Format::Human => outln!("{trace}"),
        Format::Json => match serde_json::to_string_pretty(&trace) {
            Ok(text) => outln!("{text}"),
            Err(e) => return failure(&e.to_string()),
        },
    }
    ExitCode::SUCCESS
}

/// The pack id a pack file declares (`[pack] id`), read loosely: only to pair versions.
fn declared_id(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    table.get("pack")?.get("id")?.as_str().map(str::to_owned)
}

/// The calendar id a holiday calendar file declares (`[calendar] id`), read loosely: only to pair
/// versions.
fn declared_calendar(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    table.get("calendar")?.get("id")?.as_str().map(str::to_owned)
}

fn is_set_dir(path: &Path) -> bool {
    path.is_dir() && !path.join("pack.toml").is_file()
}

/// Compiles one version: a whole set directory, or one pack placed into the context set.
fn load_version(path: &Path, context: &Path) -> Result<(PackSet, Option<String>), ExitCode> {
    let sources = if is_set_dir(path) {
        read_sources(path).map_err(|e| usage_error(&e.to_string()))?
    } else {
        let file = if path.is_dir() { path.join("pack.toml") } else { path.to_owned() };
        let text = std::fs::read_to_string(&file).map_err(|e| usage_error(&format!("{}: {e}", file.display())))?;
        let id = declared_id(&text).ok_or_else(|| usage_error(&format!("{}: no `[pack] id`", file.display())))?;
        // The pack's own holiday calendar, beside it, stands in for the context's of the same id.
        let calendar = file.parent().map(|d| d.join(HOLIDAYS_FILE)).filter(|c| c.is_file());
        let calendar = match calendar {
            Some(c) => Some(PackSource::new(
                c.display().to_string(),
                std::fs::read_to_string(&c).map_err(|e| usage_error(&format!("{}: {e}", c.display())))?,
            )),
            None => None,
        };
        let calendar_id = calendar.as_ref().and_then(|c| declared_calendar(&c.text));
        let mut sources: Vec<PackSource> = read_sources(context)
            .unwrap_or_default()
            .into_iter()
            .filter(|s| declared_id(&s.text).as_deref() != Some(id.as_str()))
            .filter(|s| !s.is_holiday_calendar() || calendar_id.is_none() || declared_calendar(&s.text) != calendar_id)
            .collect();
        sources.push(PackSource::new(file.display().to_string(), text));
        sources.extend(calendar);
        return match PackSet::compile(&sources) {
            Ok((set, _)) => Ok((set, Some(id))),
            Err(d) => {
                eprintln!("{d}");
                Err(ExitCode::FAILURE)
            }
        };
    };
    match PackSet::compile(&sources) {
        Ok((set, _)) => Ok((set, None)),
        Err(d) => {
            eprintln!("{d}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// A pack id, its old and new `id@version` (when both exist), and the decisions that changed.
type PackDiff = (String, Option<(String, String)>, Vec<Change>);

fn diff_command(old: &Path, new: &Path, context: &Path, at: Option<&str>, format: Format) -> ExitCode {
    let around = match instant(at, "at") {
        Ok(t) => t,
        Err(code) => return code,
    };
    if is_set_dir(old) != is_set_dir(new) {
        return usage_error("OLD and NEW must both be pack sets or both be single packs");
    }
    let ((old_set, old_id), (new_set, new_id)) = match (load_version(old, context), load_version(new, context)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let ids: Vec<String> = match (old_id, new_id) {
        (Some(a), Some(b)) if a == b => vec![a],
        (Some(_), Some(_)) => return usage_error("OLD and NEW are different packs"),
        _ => {
            let mut ids: Vec<String> =
                old_set.packs().chain(new_set.packs()).map(|p| p.id().to_owned()).collect::<Vec<_>>();
            ids.sort();
            ids.dedup();
            ids
        }
    };
    let mut all: Vec<PackDiff> = Vec::new();
    let mut changed = false;
    for id in ids {
        let (a, b): (Option<&Pack>, Option<&Pack>) = (old_set.get_by_id(&id), new_set.get_by_id(&id));
        match (a, b) {
            (Some(a), Some(b)) => {
                let changes = diff(a, b, around);
                changed |= !changes.is_empty();
                all.push((id, Some((a.pack_ref().to_string(), b.pack_ref().to_string())), changes));
            }
            _ => {
                changed = true;
                all.push((id, None, Vec::new()));
            }
        }
    }
    match format {
        Format::Human => {
            for (id, versions, changes) in &all {
                match versions {
                    None => outln!("pack `{id}` exists in only one version"),
                    Some((a, b)) => {
                        outln!("{a} → {b}: {} decision(s) changed", changes.len());
                        for c in changes {
                            outln!("  {c}");
                        }
                    }
                }
            }
        }
        Format::Json => outln!(
            "{}",
            json!({
                "changed": changed,
                "packs": all.iter().map(|(id, versions, changes)| json!({
                    "id": id,
                    "old": versions.as_ref().map(|v| v.0.clone()),
                    "new": versions.as_ref().map(|v| v.1.clone()),
                    "changes": changes,
                })).collect::<Vec<_>>(),
            })
        ),
    }
    if changed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn verify(dir: &Path, trusted: &[String], min_signatures: usize, format: Format) -> ExitCode {
    let mut trusted_keys = Vec::new();
    for item in trusted {
        let Some((key_id, file)) = item.split_once('=') else {
            return usage_error("`--trusted` must be ID=PUBLIC_KEY_FILE");
        };
        trusted_keys.push(TrustedKeyFile { key_id: key_id.to_owned(), public_key_file: PathBuf::from(file) });
    }
    let trust = TrustConfig { trusted_keys, min_signatures };
    let result = load_dir_verified(dir, Some(&trust));
    match (format, &result) {
        (Format::Human, Ok(loaded)) => {
            outln!(
                "verified: {} packs, content hash {}, signed by {}",
                loaded.packs.len(),
                loaded.content_hash,
                loaded.signed_by.join(", ")
            );
        }
        (Format::Human, Err(e)) => eprintln!("error: {e}"),
        (Format::Json, Ok(loaded)) => outln!(
            "{}",
            json!({ "ok": true, "content_hash": loaded.content_hash, "signed_by": loaded.signed_by, "packs": loaded.packs.len() })
        ),
        (Format::Json, Err(e)) => outln!("{}", json!({ "ok": false, "error": e.to_string() })),
    }
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(PackLoadError::Io { .. } | PackLoadError::TrustedKey { .. } | PackLoadError::Empty(_)) => {
            ExitCode::from(USAGE)
        }
        Err(_) => ExitCode::FAILURE,
    }
}
