//! Domicile's own import rows, one JSON object per line, in Domicile's terms (no purpose mapping):
//!
//! ```json
//! {"source_system": "crm-legacy", "source_event_id": "evt-1",
//!  "identifiers": [{"kind": "email", "value": "anna@example.com"}], "jurisdiction": "DE",
//!  "purpose": "marketing", "channels": ["email"], "action": "grant",
//!  "captured_at": "2025-01-01T10:00:00Z", "expires_at": "2027-01-01T10:00:00Z",
//!  "notice_version": "privacy-notice-v3"}
//! ```
//!
//! `expires_at` and `notice_version` may be left out (or null); a missing `jurisdiction` takes
//! the mapping's declared default like every format. Any other member refuses the row: a
//! misspelt `expire_at` must not drop an expiry unnoticed.

use domicile_types::{Channel, ConsentAction, IdentifierKind, Purpose};
use serde_json::{Map, Value};

use super::{Out, identifier, is_token, jurisdiction, notice_version, own_id};
use crate::import::mapping::Mapping;
use crate::import::row::{ImportRow, RowError};

const FIELDS: &[&str] = &[
    "source_system",
    "source_event_id",
    "identifiers",
    "jurisdiction",
    "purpose",
    "channels",
    "action",
    "captured_at",
    "expires_at",
    "notice_version",
];

pub(super) fn convert(line: usize, record: &Map<String, Value>, mapping: &Mapping, out: &mut Out) {
    out.push_back(row(line, record, mapping));
}

fn rfc3339_ms(value: Option<&Value>) -> Option<i64> {
    let at = value?.as_str()?.trim().parse::<jiff::Timestamp>().ok()?;
    (at.as_millisecond() >= 0).then_some(at.as_millisecond())
}

fn row(line: usize, record: &Map<String, Value>, mapping: &Mapping) -> Result<ImportRow, RowError> {
    if let Some(unknown) = record.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        let field = if is_token(unknown, 64) { unknown.as_str() } else { "record" };
        return Err(RowError::new(line, field, format!("unknown member; a row has only {}", FIELDS.join(", "))));
    }
    let str_of = |field: &str| record.get(field).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    let source_system = str_of("source_system")
        .filter(|s| is_token(s, 64))
        .ok_or_else(|| RowError::new(line, "source_system", "missing or not a token (letters, digits, `._:-`)"))?;
    let source_event_id = own_id(line, "source_event_id", record.get("source_event_id").unwrap_or(&Value::Null))?;
    let items = record.get("identifiers").and_then(Value::as_array).filter(|i| !i.is_empty());
    let items = items.ok_or_else(|| RowError::new(line, "identifier", "the row has no `identifiers`"))?;
    let mut identifiers = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let kind = item.get("kind").and_then(Value::as_str).and_then(IdentifierKind::parse);
        let kind = kind.ok_or_else(|| {
            let kinds = IdentifierKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ");
            RowError::new(line, format!("identifiers[{i}].kind"), format!("not one of {kinds}"))
        })?;
        let value = item.get("value").and_then(Value::as_str).unwrap_or_default();
        identifiers.push(identifier(line, &format!("identifiers[{i}].value"), kind, value)?);
    }
    let jurisdiction = jurisdiction(line, str_of("jurisdiction"), "jurisdiction", mapping)?;
    let purpose = Purpose::parse(str_of("purpose").unwrap_or_default())
        .map_err(|e| RowError::new(line, "purpose", e.to_string()))?;
    let list = record.get("channels").and_then(Value::as_array).filter(|c| !c.is_empty());
    let list = list.ok_or_else(|| RowError::new(line, "channels", "missing or empty"))?;
    let mut channels = Vec::new();
    for (i, name) in list.iter().enumerate() {
        let channel = Channel::parse(name.as_str().unwrap_or_default())
            .map_err(|e| RowError::new(line, format!("channels[{i}]"), e.to_string()))?;
        if channels.contains(&channel) {
            return Err(RowError::new(line, format!("channels[{i}]"), "listed twice"));
        }
        channels.push(channel);
    }
    let action = ConsentAction::parse(str_of("action").unwrap_or_default())
        .map_err(|e| RowError::new(line, "action", e.to_string()))?;
    let captured_at_ms = rfc3339_ms(record.get("captured_at"))
        .ok_or_else(|| RowError::new(line, "captured_at", "missing or not RFC 3339"))?;
    let expires_at = match record.get("expires_at").filter(|v| !v.is_null()) {
        None => None,
        Some(v) => Some(rfc3339_ms(Some(v)).ok_or_else(|| RowError::new(line, "expires_at", "not RFC 3339"))?),
    };
    Ok(ImportRow {
        line,
        source_system: source_system.to_owned(),
        source_event_id,
        identifiers,
        jurisdiction,
        purpose,
        channels,
        action,
        captured_at_ms,
        expires_at: expires_at.filter(|_| action == ConsentAction::Grant).map(|ms| ms.div_euclid(1000)),
        notice_version: notice_version(line, "notice_version", str_of("notice_version"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(record: Value) -> Result<ImportRow, RowError> {
        let mapping = Mapping::parse("version = \"n1\"\n[[purpose]]\nsource = \"*\"\nkey = \"k\"\nmaps_to = \"marketing\"\nchannels = [\"email\"]\n", "m").unwrap();
        row(2, record.as_object().unwrap(), &mapping)
    }

    fn base() -> Value {
        json!({"source_system": "crm", "source_event_id": "e-1", "identifiers": [{"kind": "email", "value": "X@Example.com"}],
               "jurisdiction": "us_ca", "purpose": "survey", "channels": ["sms", "email"], "action": "grant",
               "captured_at": "2025-01-01T01:00:00+01:00", "expires_at": null, "notice_version": "v1"})
    }

    #[test]
    fn a_row_is_taken_as_written() {
        let row = one(base()).unwrap();
        assert_eq!(
            row,
            ImportRow {
                line: 2,
                source_system: "crm".into(),
                source_event_id: "e-1".into(),
                identifiers: vec![("email".into(), "x@example.com".into())],
                jurisdiction: "US-CA".into(),
                purpose: Purpose::Survey,
                channels: vec![Channel::Sms, Channel::Email],
                action: ConsentAction::Grant,
                captured_at_ms: 1_735_689_600_000,
                expires_at: None,
                notice_version: "v1".into(),
            }
        );
    }

    #[test]
    fn each_bad_member_is_named_never_its_value() {
        let secret = "Y@Example.com";
        let cases: [(&str, Value, &str); 9] = [
            ("expire_at", json!(secret), "expire_at"),
            ("identifiers", json!([]), "identifier"),
            ("identifiers", json!([{"kind": "mail", "value": secret}]), "identifiers[0].kind"),
            ("identifiers", json!([{"kind": "phone", "value": secret}]), "identifiers[0].value"),
            ("purpose", json!(secret), "purpose"),
            ("channels", json!(["email", "email"]), "channels[1]"),
            ("action", json!(secret), "action"),
            ("captured_at", json!(secret), "captured_at"),
            ("notice_version", json!(secret), "notice_version"),
        ];
        for (member, value, field) in cases {
            let mut record = base();
            record[member] = value;
            let err = one(record).unwrap_err();
            assert_eq!((err.line, err.field.as_str()), (2, field));
            assert!(!err.to_string().to_lowercase().contains("y@example"), "{err}");
        }
        let mut record = base();
        record[secret] = json!(1);
        assert_eq!(one(record).unwrap_err().field, "record");
    }
}
