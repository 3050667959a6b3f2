//! Ketch consent requests (`ketch-com/ketch-forwarder`, `api/consent/v1/Consent.md`), one per
//! line: either the forwarded message (`{apiVersion, kind, metadata: {uid}, request: {..}}`) or
//! its `request` body alone. One row per entry of `purposes`, in key order; the purpose code is
//! the mapping key.
//!
//! | request | row |
//! |---|---|
//! | `identities[]` `{identitySpace|space|type, identityValue|value, identityFormat|format}`, or `{space: value}` | identifiers, kind by space from `[identifiers.ketch]` |
//! | `jurisdiction` (or `jurisdictionCode`) | jurisdiction: an ISO code, else a mapping alias (Ketch's own codes such as `eugdpr` name no single country) |
//! | `collectedAt` | capture time: UNIX seconds as Ketch documents, or RFC 3339 |
//! | `metadata.uid`, else `id` or `requestId` | source event id, `#<purpose code>` per row; else the content hash |
//!
//! An identity space missing from `[identifiers.ketch]` refuses the record (list it, as `"skip"`
//! if it identifies no person). Hashed identities (`identityFormat` other than `raw`) are left out:
//! a hash is no identifier the node can normalise or match.
//!
//! `purposes.<code>` is `"granted"`/`"denied"` or `{allowed: .., legalBasis: ..}`; the legal basis
//! may also come from `legalBasis.<code>`. Only a grant on opt-in consent (or on no stated basis)
//! is a grant: one on `consent_optout`, `disclosure` or another basis records that the person did
//! not object, not that they consented, and is skipped. A denial under `consent_optout` is an
//! opt-out (withdraw); any other denial is a refusal (deny).

use domicile_types::ConsentAction;
use serde_json::{Map, Value};

use super::{Common, Epoch, Out, identifier, jurisdiction, record_id, target, text, time_ms};
use crate::import::mapping::{IdentifierMapping, Mapping};
use crate::import::row::{ImportRow, RowError};

const SOURCE: &str = "ketch";

pub(super) fn convert(line: usize, record: &Map<String, Value>, mapping: &Mapping, out: &mut Out) {
    let (body, prefix, own) = match record.get("request").and_then(Value::as_object) {
        Some(request) => {
            (request, "request.", record.get("metadata").and_then(|m| m.get("uid")).map(|v| ("metadata.uid", v)))
        }
        None => (record, "", ["id", "requestId"].into_iter().find_map(|k| record.get(k).map(|v| (k, v)))),
    };
    let common = match common(line, body, prefix, own.filter(|(_, v)| !v.is_null()), record, mapping) {
        Ok(common) => common,
        Err(e) => return out.push_back(Err(e)),
    };
    let Some(purposes) = body.get("purposes").and_then(Value::as_object).filter(|p| !p.is_empty()) else {
        return out.push_back(Err(RowError::new(line, format!("{prefix}purposes"), "the request lists no purposes")));
    };
    let mut codes: Vec<_> = purposes.iter().collect();
    codes.sort_by(|a, b| a.0.cmp(b.0));
    for (i, (code, status)) in codes.into_iter().enumerate() {
        let basis = body.get("legalBasis").and_then(|b| b.get(code.as_str()));
        out.push_back(row(&common, prefix, i, code, status, basis, mapping));
    }
}

fn common(
    line: usize,
    body: &Map<String, Value>,
    prefix: &str,
    own: Option<(&str, &Value)>,
    record: &Map<String, Value>,
    mapping: &Mapping,
) -> Result<Common, RowError> {
    let identifiers = identities(line, body, prefix, mapping)?;
    let raw = text(body, "jurisdiction").or_else(|| text(body, "jurisdictionCode"));
    let jurisdiction = jurisdiction(line, raw, &format!("{prefix}jurisdiction"), mapping)?;
    let captured_at_ms = body.get("collectedAt").and_then(|v| time_ms(v, Epoch::Seconds, false)).ok_or_else(|| {
        RowError::new(line, format!("{prefix}collectedAt"), "missing or not UNIX seconds (or RFC 3339)")
    })?;
    Ok(Common {
        line,
        source_system: SOURCE.to_owned(),
        base_id: record_id(line, own, record)?,
        identifiers,
        jurisdiction,
        captured_at_ms,
        notice_version: String::new(),
    })
}

fn identities(
    line: usize,
    body: &Map<String, Value>,
    prefix: &str,
    mapping: &Mapping,
) -> Result<Vec<(String, String)>, RowError> {
    let field = |i: usize, name: &str| format!("{prefix}identities[{i}].{name}");
    // (field of the space, space, field of the value, value, raw?)
    let mut found: Vec<(String, &str, String, Option<&str>, bool)> = Vec::new();
    match body.get("identities") {
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let item = item
                    .as_object()
                    .ok_or_else(|| RowError::new(line, format!("{prefix}identities[{i}]"), "not an object"))?;
                let pick = |names: &[&str]| names.iter().find_map(|n| text(item, n));
                let space = pick(&["identitySpace", "space", "type"])
                    .ok_or_else(|| RowError::new(line, field(i, "identitySpace"), "missing"))?;
                let format = pick(&["identityFormat", "format"]).unwrap_or("raw");
                found.push((
                    field(i, "identitySpace"),
                    space,
                    field(i, "identityValue"),
                    pick(&["identityValue", "value"]),
                    format == "raw",
                ));
            }
        }
        Some(Value::Object(map)) => {
            for (space, value) in map {
                let at = format!("{prefix}identities.{space}");
                found.push((at.clone(), space.as_str(), at, value.as_str(), true));
            }
        }
        _ => {}
    }
    let mut out = Vec::new();
    for (space_field, space, value_field, value, raw) in found {
        match mapping.identifier(SOURCE, space) {
            None => {
                let why =
                    "this identity space is not in the mapping's [identifiers.ketch] (list it, as \"skip\" if need be)";
                return Err(RowError::new(line, space_field, why));
            }
            Some(IdentifierMapping::Skip) => {}
            Some(IdentifierMapping::Kind(_)) if !raw => {}
            Some(IdentifierMapping::Kind(kind)) => {
                let value = value.map(str::trim).filter(|v| !v.is_empty());
                let value = value.ok_or_else(|| RowError::new(line, value_field.clone(), "missing"))?;
                out.push(identifier(line, &value_field, kind, value)?);
            }
        }
    }
    if out.is_empty() {
        let why = "the request has no raw identity of a space the mapping imports";
        return Err(RowError::new(line, "identifier", why));
    }
    Ok(out)
}

fn row(
    common: &Common,
    prefix: &str,
    i: usize,
    code: &str,
    status: &Value,
    basis: Option<&Value>,
    mapping: &Mapping,
) -> Result<ImportRow, RowError> {
    let line = common.line;
    let field =
        if super::is_token(code, 64) { format!("{prefix}purposes.{code}") } else { format!("{prefix}purposes[{i}]") };
    let (allowed, basis) = match status {
        Value::Object(o) => (
            o.get("allowed").or_else(|| o.get("status")),
            o.get("legalBasis").or_else(|| o.get("legalBasisCode")).or(basis),
        ),
        other => (Some(other), basis),
    };
    let granted = match allowed {
        Some(Value::String(s)) if s == "granted" => true,
        Some(Value::String(s)) if s == "denied" => false,
        Some(Value::Bool(b)) => *b,
        _ => return Err(RowError::new(line, field, "not \"granted\" or \"denied\"")),
    };
    let basis = basis.and_then(Value::as_str).map(str::trim).filter(|b| !b.is_empty());
    let action = match (granted, basis) {
        (true, None | Some("consent_optin")) => ConsentAction::Grant,
        (true, Some(_)) => {
            let why =
                "granted on a legal basis other than opt-in consent: the person did not object, which is not a consent";
            return Err(RowError::skipped(line, field, why));
        }
        (false, Some("consent_optout")) => ConsentAction::Withdraw,
        (false, _) => ConsentAction::Deny,
    };
    let target = target(line, mapping, SOURCE, code, i)?;
    Ok(common.row(Some(code), target, action, None))
}

#[cfg(test)]
mod tests {
    use super::super::{Format, rows};
    use super::*;

    fn read(input: &str) -> Vec<Result<ImportRow, RowError>> {
        let text = "version = \"k1\"\n[identifiers]\nketch.email = \"email\"\nketch.cookie = \"skip\"\n[[purpose]]\nsource = \"ketch\"\nkey = \"ads\"\nmaps_to = \"profiling\"\nchannels = [\"web\"]\n[[purpose]]\nsource = \"ketch\"\nkey = \"mail\"\nmaps_to = \"marketing\"\nchannels = [\"email\"]\n";
        let mapping = Mapping::parse(text, "m").unwrap();
        rows(Format::Ketch, input.as_bytes(), &mapping).collect()
    }

    #[test]
    fn status_and_legal_basis_decide_the_action() {
        let cases = [
            (r#""granted""#, "null", Some(ConsentAction::Grant)),
            (r#""granted""#, r#""consent_optin""#, Some(ConsentAction::Grant)),
            (r#"{"allowed":"granted","legalBasis":"consent_optout"}"#, "null", None),
            (r#""granted""#, r#""disclosure""#, None),
            (r#""denied""#, r#""consent_optout""#, Some(ConsentAction::Withdraw)),
            (r#"{"allowed":"denied"}"#, r#""consent_optin""#, Some(ConsentAction::Deny)),
            (r#"false"#, "null", Some(ConsentAction::Deny)),
        ];
        for (status, basis, want) in cases {
            let input = format!(
                r#"{{"id":"k","identities":[{{"space":"email","value":"a@example.com"}}],"jurisdiction":"DE","collectedAt":1700000000,"purposes":{{"ads":{status}}},"legalBasis":{{"ads":{basis}}}}}"#
            );
            let rows = read(&input);
            match want {
                Some(action) => assert_eq!(rows[0].as_ref().unwrap().action, action, "{input}"),
                None => assert!(rows[0].as_ref().unwrap_err().is_skip(), "{input}"),
            }
        }
    }

    #[test]
    fn identities_are_mapped_by_space_and_hashes_left_out() {
        let input = concat!(
            r#"{"id":"k1","identities":{"email":"a@example.com","cookie":"c-1"},"jurisdiction":"de","collectedAt":"2025-01-01T00:00:00Z","purposes":{"mail":"granted"}}"#,
            "\n",
            r#"{"id":"k2","identities":[{"identitySpace":"email","identityFormat":"sha256","identityValue":"ab12"}],"jurisdiction":"de","collectedAt":1,"purposes":{"mail":"granted"}}"#,
            "\n",
            r#"{"id":"k3","identities":[{"space":"loyalty","value":"a@example.com"}],"jurisdiction":"de","collectedAt":1,"purposes":{"mail":"granted"}}"#,
            "\n",
            r#"{"id":"k4","identities":[{"space":"email","value":"a@example.com"}],"jurisdiction":"eugdpr","collectedAt":1,"purposes":{"mail":"granted"}}"#,
            "\n",
        );
        let rows = read(input);
        let first = rows[0].as_ref().unwrap();
        assert_eq!(first.identifiers, vec![("email".to_owned(), "a@example.com".to_owned())]);
        assert_eq!((first.captured_at_ms, first.source_event_id.as_str()), (1_735_689_600_000, "k1#mail"));
        let fields: Vec<_> = rows[1..].iter().map(|r| r.as_ref().unwrap_err().field.as_str()).collect();
        assert_eq!(fields, ["identifier", "identities[0].identitySpace", "jurisdiction"]);
    }
}
