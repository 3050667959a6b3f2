//! Pack test files (`tests/*.toml`): `[[case]]` tables with the consent and facts of each case,
//! read against the compiled pack they test so that a reason or obligation naming nothing in the
//! pack is reported at its line:column rather than failing as a case. `testing.rs` runs them.

use domicile_types::{Channel, ConsentState, Purpose};

use super::document::{Table, parse_document, timestamp_text};
use super::metadata::{MIN_SCHEMA_VERSION, SCHEMA_VERSION, schema_message};
use super::values::term;
use crate::diag::{PackSource, Sink};
use crate::model::decision::BUILTIN_OBLIGATIONS;
use crate::model::terms::Recipient;
use crate::model::{ConsentFact, ConsentKind, DecisionInput, Effect, Facts, Outcome, Pack};
use crate::time::parse_rfc3339;
use crate::zone::Zone;

const ROOT_KEYS: &[&str] = &["schema", "pack", "case", "rights", "transfer", "collection"];
const RIGHTS_KEYS: &[&str] =
    &["name", "received", "received_unix", "due", "due_unix", "extended_to", "extended_to_unix", "note"];
const TRANSFER_KEYS: &[&str] =
    &["name", "caller_region", "purpose", "expect", "transfer", "note", "consent", "at", "at_unix"];
const TRANSFER_CONSENT_KEYS: &[&str] =
    &["state", "kind", "captured_at", "captured_at_unix", "expires_at", "expires_at_unix"];
const COLLECTION_KEYS: &[&str] = &["name", "caller_region", "expect", "note"];
const CASE_KEYS: &[&str] = &[
    "name",
    "purpose",
    "channel",
    "at",
    "at_unix",
    "consent",
    "expect",
    "reasons",
    "outcome",
    "obligations",
    "valid_until",
    "valid_until_unix",
    "note",
    "time_zone",
    "facts",
];
const CONSENT_KEYS: &[&str] =
    &["state", "captured_at", "captured_at_unix", "expires_at", "expires_at_unix", "double_opt_in", "kind", "hours"];
const FACT_KEYS: &[&str] = &[
    "contact_from_sale",
    "similar_products",
    "opt_out_offered",
    "on_register",
    "last_purchase",
    "last_purchase_unix",
    "last_inquiry",
    "last_inquiry_unix",
    "recipient",
    "age",
];

/// A `[[rights]]`, `[[transfer]]` or `[[collection]]` entry: what the pack says about a rights
/// request or about where its subjects' data may go, rather than a contact decision.
#[derive(Debug)]
pub(crate) struct Check {
    pub(crate) name: String,
    pub(crate) path: String,
    pub(crate) line: usize,
    pub(crate) kind: CheckKind,
}

#[derive(Debug)]
pub(crate) enum CheckKind {
    /// A request received at `received` is due at `due` (`None`: the pack says the law fixes no
    /// period) and, where given, may be extended to `extended_to` (`Some(None)`: no extension).
    Rights { received: i64, due: Option<i64>, extended_to: Option<Option<i64>> },
    /// Whether a caller of `caller_region` (`None`: outside every region) gets the pack's
    /// subjects' data for `purpose`; and through which transfer (`None`: as a home region).
    Transfer {
        caller_region: Option<domicile_types::RegionId>,
        purpose: Purpose,
        allow: bool,
        transfer: Option<String>,
        /// The subject's consent to transfers for the purpose, and the request's instant.
        consent: Option<crate::model::TransferConsentFact>,
        at: i64,
    },
    /// Whether a caller of `caller_region` may capture the pack's subjects' data.
    Collection { caller_region: Option<domicile_types::RegionId>, allow: bool },
}

/// One `[[case]]`, checked against the pack it is for.
pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) path: String,
    pub(crate) line: usize,
    pub(crate) input: DecisionInput,
    pub(crate) expect: Effect,
    pub(crate) reasons: Vec<String>,
    pub(crate) outcome: Option<Outcome>,
    pub(crate) obligations: Option<Vec<String>>,
    pub(crate) valid_until: Option<i64>,
}

/// Reads one test file's cases into `out`, reporting every problem on `sink`.
pub(crate) fn read_cases(
    pack: &Pack,
    source: &PackSource,
    sink: &mut Sink<'_>,
    out: &mut Vec<Case>,
    checks: &mut Vec<Check>,
) {
    let Some(doc) = parse_document(sink, &source.text) else {
        return;
    };
    let root = Table::new(sink, doc.get_ref(), doc.span(), "the test file", ROOT_KEYS);
    if let Some(schema) = root.opt_int(sink, "schema")
        && !(MIN_SCHEMA_VERSION..=SCHEMA_VERSION).contains(schema.get_ref())
    {
        sink.error(&schema.span(), schema_message(*schema.get_ref()));
    }
    if let Some(id) = root.opt_str(sink, "pack")
        && *id.get_ref() != pack.id()
    {
        sink.error(&id.span(), format!("test file is for another pack; running against `{}`", pack.id()));
    }
    let tables = root.tables(sink, "case");
    let mut names: Vec<(String, usize)> = Vec::new();
    let before = checks.len();
    read_checks(sink, &root, source, &mut names, checks);
    if tables.is_empty() && checks.len() == before {
        // A test file that runs nothing must not look like a pass.
        sink.error(
            &root.span(),
            "test file has no `[[case]]`, `[[rights]]`, `[[transfer]]` or `[[collection]]` entries",
        );
    }
    for (table, span) in tables {
        let line = sink.line_of(&span);
        let t = Table::new(sink, table, span, "[[case]]", CASE_KEYS);
        let name = case_name(sink, &t, line, &mut names);
        let purpose = t.req_str(sink, "purpose").and_then(|v| term(sink, &v, Purpose::parse));
        let channel = t.req_str(sink, "channel").and_then(|v| term(sink, &v, Channel::parse));
        let at = instant(sink, &t, "at", true).flatten();
        let consent = read_consent(sink, &t, at);
        let expect = t.req_str(sink, "expect").and_then(|v| {
            let effect = Effect::parse(v.get_ref());
            if effect.is_none() {
                sink.error(&v.span(), "`expect` must be `allow` or `deny`");
            }
            effect
        });
        let mut reasons = Vec::new();
        if let Some(list) = t.opt_strings(sink, "reasons") {
            for item in list.get_ref() {
                let known = pack.rule(item.get_ref()).is_some()
                    || *item.get_ref() == pack.default_reason()
                    || *item.get_ref() == pack.not_in_effect_reason();
                if known {
                    reasons.push((*item.get_ref()).to_owned());
                } else {
                    sink.error(&item.span(), format!("reason is not a rule of pack `{}`", pack.id()));
                }
            }
        }
        let outcome = t.opt_str(sink, "outcome").and_then(|v| {
            let outcome = Outcome::parse(v.get_ref());
            if outcome.is_none() {
                let expected = Outcome::ALL.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ");
                sink.error(&v.span(), format!("unknown outcome; expected one of {expected}"));
            }
            outcome
        });
        let obligations = t.opt_strings(sink, "obligations").map(|list| {
            let mut ids = Vec::new();
            for item in list.get_ref() {
                let name: &str = item.get_ref();
                if pack.obligations().iter().any(|o| o.id == name)
                    || pack.registers().iter().any(|r| r.id == name)
                    || BUILTIN_OBLIGATIONS.contains(&name)
                {
                    ids.push((*item.get_ref()).to_owned());
                } else {
                    sink.error(&item.span(), format!("obligation is not defined in pack `{}`", pack.id()));
                }
            }
            ids
        });
        let valid_until = instant(sink, &t, "valid_until", false).flatten();
        let _ = t.opt_str(sink, "note");
        let mut zone_ok = true;
        let subject_time_zone = t.opt_str(sink, "time_zone").and_then(|v| {
            let zone = Zone::parse(v.get_ref());
            if zone.is_none() {
                sink.error(&v.span(), "unknown time zone; use an IANA name such as `Europe/Paris`");
                zone_ok = false;
            }
            zone
        });
        let facts = read_facts(sink, &t);
        if let (
            Some(name),
            Some(purpose),
            Some(channel),
            Some(at_unix),
            Some(consent),
            Some(expect),
            Some(facts),
            true,
        ) = (name, purpose, channel, at, consent, expect, facts, zone_ok)
        {
            out.push(Case {
                name,
                path: source.path.clone(),
                line,
                input: DecisionInput { purpose, channel, at_unix, consent, subject_time_zone, facts },
                expect,
                reasons,
                outcome,
                obligations,
                valid_until,
            });
        }
    }
}

/// A case's `name`: present, not empty, unique in the file.
fn case_name(sink: &mut Sink<'_>, t: &Table<'_, '_>, line: usize, names: &mut Vec<(String, usize)>) -> Option<String> {
    t.req_str(sink, "name").and_then(|v| {
        if v.get_ref().trim().is_empty() {
            sink.error(&v.span(), "`name` must not be empty");
            return None;
        }
        if let Some((_, first)) = names.iter().find(|(n, _)| n == v.get_ref()) {
            sink.error(&v.span(), format!("duplicate case name; first used at line {first}"));
            return None;
        }
        names.push(((*v.get_ref()).to_owned(), line));
        Some((*v.get_ref()).to_owned())
    })
}

/// `[[rights]]`, `[[transfer]]` and `[[collection]]` entries.
fn read_checks(
    sink: &mut Sink<'_>,
    root: &Table<'_, '_>,
    source: &PackSource,
    names: &mut Vec<(String, usize)>,
    out: &mut Vec<Check>,
) {
    let region = |sink: &mut Sink<'_>, t: &Table<'_, '_>| -> Option<Option<domicile_types::RegionId>> {
        let v = t.req_str(sink, "caller_region")?;
        if *v.get_ref() == "none" {
            return Some(None);
        }
        match domicile_types::RegionId::parse(v.get_ref()) {
            Ok(region) => Some(Some(region)),
            Err(_) => {
                sink.error(&v.span(), "`caller_region` must be a region id such as `eu-central`, or \"none\"");
                None
            }
        }
    };
    let effect = |sink: &mut Sink<'_>, t: &Table<'_, '_>| -> Option<bool> {
        let v = t.req_str(sink, "expect")?;
        match *v.get_ref() {
            "allow" => Some(true),
            "deny" => Some(false),
            _ => {
                sink.error(&v.span(), "`expect` must be `allow` or `deny`");
                None
            }
        }
    };
    for (table, span) in root.tables(sink, "rights") {
        let line = sink.line_of(&span);
        let t = Table::new(sink, table, span, "[[rights]]", RIGHTS_KEYS);
        let name = case_name(sink, &t, line, names);
        let received = instant(sink, &t, "received", true).flatten();
        let due = instant_or_none(sink, &t, "due", true).flatten();
        let extended_to = instant_or_none(sink, &t, "extended_to", false);
        let _ = t.opt_str(sink, "note");
        if let (Some(name), Some(received), Some(due), Some(extended_to)) = (name, received, due, extended_to) {
            out.push(Check {
                name,
                path: source.path.clone(),
                line,
                kind: CheckKind::Rights { received, due, extended_to },
            });
        }
    }
    for (table, span) in root.tables(sink, "transfer") {
        let line = sink.line_of(&span);
        let t = Table::new(sink, table, span, "[[transfer]]", TRANSFER_KEYS);
        let name = case_name(sink, &t, line, names);
        let caller_region = region(sink, &t);
        let purpose = t.req_str(sink, "purpose").and_then(|v| term(sink, &v, Purpose::parse));
        let allow = effect(sink, &t);
        let transfer = t.opt_str(sink, "transfer").map(|v| (*v.get_ref()).to_owned());
        let _ = t.opt_str(sink, "note");
        // Without `at` the request is at the epoch's end of 2026 (only consent dates matter).
        let at = instant(sink, &t, "at", false).map(|a| a.unwrap_or(1_798_761_600));
        let consent = at.and_then(|at| read_transfer_consent(sink, &t, at));
        if let (Some(name), Some(caller_region), Some(purpose), Some(allow), Some(at), Some(consent)) =
            (name, caller_region, purpose, allow, at, consent)
        {
            let kind = CheckKind::Transfer { caller_region, purpose, allow, transfer, consent, at };
            out.push(Check { name, path: source.path.clone(), line, kind });
        }
    }
    for (table, span) in root.tables(sink, "collection") {
        let line = sink.line_of(&span);
        let t = Table::new(sink, table, span, "[[collection]]", COLLECTION_KEYS);
        let name = case_name(sink, &t, line, names);
        let caller_region = region(sink, &t);
        let allow = effect(sink, &t);
        let _ = t.opt_str(sink, "note");
        if let (Some(name), Some(caller_region), Some(allow)) = (name, caller_region, allow) {
            out.push(Check {
                name,
                path: source.path.clone(),
                line,
                kind: CheckKind::Collection { caller_region, allow },
            });
        }
    }
}

/// [`instant`], or `"none"`: `Some(Some(None))` for "none", `Some(None)` when absent.
fn instant_or_none(
    sink: &mut Sink<'_>,
    table: &Table<'_, '_>,
    key: &str,
    required: bool,
) -> Option<Option<Option<i64>>> {
    if table.get(key).and_then(timestamp_text).as_deref() == Some("none") {
        return Some(Some(None));
    }
    instant(sink, table, key, required).map(|v| v.map(Some))
}

/// Reads `<key>` (RFC 3339 string or TOML date-time) or `<key>_unix` (integer seconds).
/// `None` on error, `Some(None)` when absent and optional.
fn instant(sink: &mut Sink<'_>, table: &Table<'_, '_>, key: &str, required: bool) -> Option<Option<i64>> {
    let unix_key = format!("{key}_unix");
    match (table.get(key), table.get(&unix_key)) {
        (Some(_), Some(v)) => {
            sink.error(&v.span(), format!("give either `{key}` or `{unix_key}`, not both"));
            None
        }
        (Some(v), None) => {
            let parsed = timestamp_text(v).as_deref().and_then(parse_rfc3339);
            if parsed.is_none() {
                sink.error(
                    &v.span(),
                    format!("`{key}` must be an RFC 3339 timestamp with an offset, e.g. `2026-11-23T10:00:00Z`"),
                );
                return None;
            }
            Some(parsed)
        }
        (None, Some(_)) => table.opt_int(sink, &unix_key).map(|v| Some(*v.get_ref())),
        (None, None) if required => {
            sink.error(&table.span(), format!("missing key `{key}` (or `{unix_key}`)"));
            None
        }
        (None, None) => Some(None),
    }
}

/// `None` on error; `Some(None)` when the case has no consent on record.
fn read_consent(sink: &mut Sink<'_>, case: &Table<'_, '_>, at: Option<i64>) -> Option<Option<ConsentFact>> {
    let Some((table, span)) = case.table(sink, "consent", false) else {
        return if case.get("consent").is_some() { None } else { Some(None) };
    };
    let t = Table::new(sink, table, span, "`consent`", CONSENT_KEYS);
    let state = t.req_str(sink, "state").and_then(|v| term(sink, &v, ConsentState::parse));
    // Without `captured_at` the consent is taken as captured at the decision instant.
    let captured = instant(sink, &t, "captured_at", false).map(|c| c.or(at));
    let expires = instant(sink, &t, "expires_at", false);
    let double_opt_in = t.opt_bool(sink, "double_opt_in").is_some_and(|b| *b.get_ref());
    let mut kind_ok = true;
    let kind = t.opt_str(sink, "kind").and_then(|v| {
        let kind = ConsentKind::parse(v.get_ref());
        if kind.is_none() {
            sink.error(&v.span(), ConsentKind::expected());
            kind_ok = false;
        }
        kind
    });
    // Hours are window ids of the pack; one it does not define covers nothing (the engine's rule).
    let hours: Vec<String> = t
        .opt_strings(sink, "hours")
        .map(|list| list.get_ref().iter().map(|h| (*h.get_ref()).to_owned()).collect())
        .unwrap_or_default();
    match (state, captured, expires, kind_ok) {
        (Some(state), Some(Some(captured_at_unix)), Some(expires_at_unix), true) => Some(Some(ConsentFact {
            state,
            captured_at_unix,
            expires_at_unix,
            double_opt_in_confirmed: double_opt_in,
            kind,
            hours,
        })),
        _ => None,
    }
}

/// A transfer check's `consent = { state, kind, captured_at, expires_at }`: `None` on error,
/// `Some(None)` when the subject has none on record.
fn read_transfer_consent(
    sink: &mut Sink<'_>,
    check: &Table<'_, '_>,
    at: i64,
) -> Option<Option<crate::model::TransferConsentFact>> {
    let Some((table, span)) = check.table(sink, "consent", false) else {
        return if check.get("consent").is_some() { None } else { Some(None) };
    };
    let t = Table::new(sink, table, span, "`consent`", TRANSFER_CONSENT_KEYS);
    let state = t.req_str(sink, "state").and_then(|v| term(sink, &v, ConsentState::parse));
    let kind = t.req_str(sink, "kind").and_then(|v| {
        let kind = crate::model::TransferConsent::parse(v.get_ref());
        if kind.is_none() {
            sink.error(&v.span(), crate::model::TransferConsent::expected());
        }
        kind
    });
    let captured = instant(sink, &t, "captured_at", false).map(|c| c.unwrap_or(at));
    let expires = instant(sink, &t, "expires_at", false);
    match (state, kind, captured, expires) {
        (Some(state), Some(kind), Some(captured_at_unix), Some(expires_at_unix)) => {
            Some(Some(crate::model::TransferConsentFact { state, kind, captured_at_unix, expires_at_unix }))
        }
        _ => None,
    }
}

/// `facts = { contact_from_sale = true, on_register = false, ... }`; `None` on error.
fn read_facts(sink: &mut Sink<'_>, case: &Table<'_, '_>) -> Option<Facts> {
    let Some((table, span)) = case.table(sink, "facts", false) else {
        return if case.get("facts").is_some() { None } else { Some(Facts::default()) };
    };
    let t = Table::new(sink, table, span, "`facts`", FACT_KEYS);
    let flag = |sink: &mut Sink<'_>, key| t.opt_bool(sink, key).is_some_and(|b| *b.get_ref());
    let last_purchase_at = instant(sink, &t, "last_purchase", false)?;
    let last_inquiry_at = instant(sink, &t, "last_inquiry", false)?;
    let mut ok = true;
    let recipient = t.opt_str(sink, "recipient").and_then(|v| {
        let parsed = Recipient::parse(v.get_ref());
        if parsed.is_none() {
            sink.error(&v.span(), Recipient::expected());
            ok = false;
        }
        parsed
    });
    let age = t.opt_int(sink, "age").and_then(|v| {
        let age = u8::try_from(*v.get_ref()).ok().filter(|a| *a <= 130);
        if age.is_none() {
            sink.error(&v.span(), "`age` must be the subject's age in whole years");
            ok = false;
        }
        age
    });
    if !ok {
        return None;
    }
    Some(Facts {
        contact_from_sale: flag(sink, "contact_from_sale"),
        similar_products: flag(sink, "similar_products"),
        opt_out_offered: flag(sink, "opt_out_offered"),
        on_register: t.opt_bool(sink, "on_register").map(|b| *b.get_ref()),
        last_purchase_at,
        last_inquiry_at,
        recipient,
        age,
    })
}
