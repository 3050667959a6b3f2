//! Fides consent reports (`ConsentReportingSchema`, `ethyca/fides`): one preference for one
//! privacy notice per record, so one row per record.
//!
//! | report | row |
//! |---|---|
//! | `email`, `phone_number`, `fides_user_device_id` | identifiers (`email`, `phone`, `device`) |
//! | `notice_key`, else `privacy_notice_history_id` | the mapping key |
//! | `privacy_notice_history_id` | notice version |
//! | `user_geography` (`us_ca`, `fr`) | jurisdiction |
//! | `request_timestamp` | capture time (RFC 3339; without an offset, UTC as Fides stores it) |
//! | `id` | source event id; else the content hash |
//!
//! `preference`: `opt_in` → grant, `opt_out` → withdraw (Fides records a change of preference,
//! GPC included, and an opt-out ends whatever consent there was). `acknowledge` (a notice that
//! only informs) and `tcf` (preferences held in a TC string, which `domicile signals` decodes)
//! are not consents: skipped, with that reason, never imported.

use domicile_types::{ConsentAction, IdentifierKind};
use serde_json::{Map, Value};

use super::{Common, Epoch, Out, identifier, jurisdiction, notice_version, record_id, target, text, time_ms};
use crate::import::mapping::Mapping;
use crate::import::row::{ImportRow, RowError};

const SOURCE: &str = "fides";

pub(super) fn convert(line: usize, record: &Map<String, Value>, mapping: &Mapping, out: &mut Out) {
    out.push_back(row(line, record, mapping));
}

fn row(line: usize, record: &Map<String, Value>, mapping: &Mapping) -> Result<ImportRow, RowError> {
    let action = match text(record, "preference") {
        Some("opt_in") => ConsentAction::Grant,
        Some("opt_out") => ConsentAction::Withdraw,
        Some("acknowledge") => {
            return Err(RowError::skipped(line, "preference", "an acknowledged notice is not a consent"));
        }
        Some("tcf") => {
            return Err(RowError::skipped(line, "preference", "TCF preferences are in the TC string, not the report"));
        }
        Some(_) => return Err(RowError::new(line, "preference", "not opt_in, opt_out, acknowledge or tcf")),
        None => return Err(RowError::new(line, "preference", "missing")),
    };
    let mut identifiers = Vec::new();
    let fields = [
        ("email", IdentifierKind::Email),
        ("phone_number", IdentifierKind::Phone),
        ("fides_user_device_id", IdentifierKind::Device),
    ];
    for (field, kind) in fields {
        if let Some(raw) = text(record, field) {
            identifiers.push(identifier(line, field, kind, raw)?);
        }
    }
    if identifiers.is_empty() {
        let why = "the record has none of `email`, `phone_number`, `fides_user_device_id`";
        return Err(RowError::new(line, "identifier", why));
    }
    let history = text(record, "privacy_notice_history_id");
    let key = text(record, "notice_key").or(history).ok_or_else(|| {
        RowError::new(line, "notice_key", "the record names no notice (`notice_key`, `privacy_notice_history_id`)")
    })?;
    let target = target(line, mapping, SOURCE, key, 0)?;
    let jurisdiction = jurisdiction(line, text(record, "user_geography"), "user_geography", mapping)?;
    let captured_at_ms = record
        .get("request_timestamp")
        .and_then(|v| time_ms(v, Epoch::Millis, true))
        .ok_or_else(|| RowError::new(line, "request_timestamp", "missing or not a date (RFC 3339)"))?;
    let common = Common {
        line,
        source_system: SOURCE.to_owned(),
        base_id: record_id(line, record.get("id").filter(|v| !v.is_null()).map(|v| ("id", v)), record)?,
        identifiers,
        jurisdiction,
        captured_at_ms,
        notice_version: notice_version(line, "privacy_notice_history_id", history)?,
    };
    Ok(common.row(None, target, action, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping() -> Mapping {
        let text = "version = \"f1\"\n[[purpose]]\nsource = \"fides\"\nkey = \"email_marketing\"\nmaps_to = \"marketing\"\nchannels = [\"email\"]\n[[purpose]]\nsource = \"fides\"\nkey = \"pri_1\"\nmaps_to = \"survey\"\nchannels = [\"sms\"]\n";
        Mapping::parse(text, "m").unwrap()
    }

    fn one(record: Value) -> Result<ImportRow, RowError> {
        row(4, record.as_object().unwrap(), &mapping())
    }

    #[test]
    fn preferences_become_grants_and_withdrawals_and_the_rest_is_skipped() {
        let base = serde_json::json!({"id": "p1", "email": "x@example.com", "fides_user_device_id": "0b3c5d7e-1111", "notice_key": "email_marketing", "privacy_notice_history_id": "pri_1", "user_geography": "fr", "request_timestamp": "2025-01-01T00:00:00.250000+00:00"});
        let mut grant = base.clone();
        grant["preference"] = "opt_in".into();
        let row = one(grant).unwrap();
        assert_eq!(
            (row.action, row.purpose, row.jurisdiction.as_str()),
            (ConsentAction::Grant, domicile_types::Purpose::Marketing, "FR")
        );
        assert_eq!(
            (row.captured_at_ms, row.notice_version.as_str(), row.source_event_id.as_str()),
            (1_735_689_600_250, "pri_1", "p1")
        );
        assert_eq!(row.identifiers.len(), 2);
        let mut out = base.clone();
        out["preference"] = "opt_out".into();
        out.as_object_mut().unwrap().remove("notice_key");
        let row = one(out).unwrap();
        assert_eq!((row.action, row.purpose), (ConsentAction::Withdraw, domicile_types::Purpose::Survey));
        for skip in ["acknowledge", "tcf"] {
            let mut rec = base.clone();
            rec["preference"] = skip.into();
            let err = one(rec).unwrap_err();
            assert!(err.is_skip() && err.field == "preference", "{err}");
        }
    }

    #[test]
    fn bad_records_are_refused_by_field() {
        let cases = [
            (
                serde_json::json!({"preference": "opt_in", "notice_key": "email_marketing", "user_geography": "de", "request_timestamp": "2025-01-01T00:00:00Z"}),
                "identifier",
            ),
            (
                serde_json::json!({"preference": "opt_in", "phone_number": "0151 2345", "notice_key": "email_marketing", "user_geography": "de", "request_timestamp": "2025-01-01T00:00:00Z"}),
                "phone_number",
            ),
            (
                serde_json::json!({"preference": "opt_in", "email": "x@example.com", "notice_key": "sms", "user_geography": "de", "request_timestamp": "2025-01-01T00:00:00Z"}),
                "purposes.sms",
            ),
            (
                serde_json::json!({"preference": "opt_in", "email": "x@example.com", "notice_key": "email_marketing", "user_geography": "de", "request_timestamp": "0151 2345"}),
                "request_timestamp",
            ),
            (serde_json::json!({"preference": "0151 2345", "email": "x@example.com"}), "preference"),
            (
                serde_json::json!({"preference": "opt_in", "email": "x@example.com", "notice_key": "email_marketing", "request_timestamp": "2025-01-01T00:00:00Z"}),
                "jurisdiction",
            ),
        ];
        for (record, field) in cases {
            let err = one(record).unwrap_err();
            assert_eq!((err.line, err.field.as_str()), (4, field));
            assert!(!err.to_string().contains("0151") && !err.is_skip(), "{err}");
        }
    }
}
