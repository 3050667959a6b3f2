//! OneTrust consent receipts, as `POST /consentreceipts` takes them (and exports give them): one
//! row per entry of `purposes`, whose `Id` (a purpose GUID or a cookie group such as `C0004`) is
//! the mapping key.
//!
//! | receipt | row |
//! |---|---|
//! | `identifier`, `identifierType` | the identifier; its kind from `[identifiers.onetrust]` by type name |
//! | `geoLocation` | jurisdiction (`DE`, `us_ca`; or `{country, state}`) |
//! | `consentDate` | capture time of grants (else `interactionDate`) |
//! | `withdrawnDate`, `interactionDate` | capture time of withdrawals and refusals (else `consentDate`) |
//! | `purposes[].ExpiryDate` | expiry of a grant |
//! | `receiptId` (or `id`) | source event id, `#<purpose Id>` per row; else the content hash |
//!
//! OneTrust states dates in UTC, so one without an offset is read as UTC.
//!
//! `TransactionType` → action, chosen so that nothing short of a clear consent becomes a grant:
//!
//! | TransactionType | action |
//! |---|---|
//! | `CONFIRMED`, `IMPLICIT` | grant |
//! | `NOTGIVEN` | deny |
//! | `WITHDRAWN`, `OPT_OUT`, `HARD_OPT_OUT` | withdraw |
//! | `EXPIRED` | withdraw: the consent no longer holds |
//! | `CANCEL` | withdraw: if it undoes an earlier consent, keeping that consent would be the harm |
//! | `PENDING` | skipped: awaiting confirmation (double opt-in), not yet a consent |
//! | `NO_CHOICE` | skipped: the person chose nothing |
//! | `EXTEND` | skipped: prolongs an earlier consent (import that one); its expiry stays the earlier one's |
//! | `CHANGE_PREFERENCES` | skipped: changes custom preferences, not the purpose's consent |
//!
//! A missing or unknown `TransactionType` is an error of that purpose's row, and so is a purpose
//! the receipt lists a second time (its row would carry the first one's event id).

use domicile_types::ConsentAction;
use serde_json::{Map, Value};

use super::{Common, Epoch, Out, identifier, jurisdiction, record_id, target, text, time_ms};
use crate::import::mapping::{IdentifierMapping, Mapping};
use crate::import::row::RowError;

const SOURCE: &str = "onetrust";

enum Transaction {
    Act(ConsentAction),
    Skip(&'static str),
}

fn transaction(name: &str) -> Option<Transaction> {
    use ConsentAction::{Deny, Grant, Withdraw};
    Some(match name.trim().to_ascii_uppercase().as_str() {
        "CONFIRMED" | "IMPLICIT" => Transaction::Act(Grant),
        "NOTGIVEN" | "NOT_GIVEN" => Transaction::Act(Deny),
        "WITHDRAWN" | "OPT_OUT" | "HARD_OPT_OUT" | "EXPIRED" | "CANCEL" => Transaction::Act(Withdraw),
        "PENDING" => Transaction::Skip("a PENDING purpose awaits confirmation: not yet a consent"),
        "NO_CHOICE" => Transaction::Skip("NO_CHOICE: the person made no choice"),
        "EXTEND" => Transaction::Skip("EXTEND prolongs an earlier consent: import that consent itself"),
        "CHANGE_PREFERENCES" => Transaction::Skip("CHANGE_PREFERENCES changes custom preferences, not the consent"),
        _ => return None,
    })
}

pub(super) fn convert(line: usize, record: &Map<String, Value>, mapping: &Mapping, out: &mut Out) {
    let dates = match Dates::read(line, record) {
        Ok(dates) => dates,
        Err(e) => return out.push_back(Err(e)),
    };
    let common = match common(line, record, mapping) {
        Ok(common) => common,
        Err(e) => return out.push_back(Err(e)),
    };
    match record.get("purposes").and_then(Value::as_array).filter(|p| !p.is_empty()) {
        None => out.push_back(Err(RowError::new(line, "purposes", "the receipt lists no purposes"))),
        Some(purposes) => {
            let mut seen = Vec::new();
            for (i, purpose) in purposes.iter().enumerate() {
                // Rows are told apart by purpose Id: a second entry for one would look like a
                // duplicate event and be dropped unnoticed.
                let id = purpose.get("Id").and_then(Value::as_str).map(str::trim);
                if id.is_some_and(|id| seen.contains(&id)) {
                    let field = format!("purposes[{i}].Id");
                    out.push_back(Err(RowError::new(line, field, "the receipt lists this purpose twice")));
                    continue;
                }
                seen.extend(id);
                out.push_back(row(&common, &dates, i, purpose, mapping));
            }
        }
    }
}

/// The receipt's dates, each checked when present.
struct Dates {
    consent: Option<i64>,
    interaction: Option<i64>,
    withdrawn: Option<i64>,
}

impl Dates {
    fn read(line: usize, record: &Map<String, Value>) -> Result<Self, RowError> {
        let date = |field: &str| match record.get(field).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(v) => time_ms(v, Epoch::Millis, true)
                .map(Some)
                .ok_or_else(|| RowError::new(line, field, "not a date (RFC 3339, or UTC without an offset)")),
        };
        let dates = Self {
            consent: date("consentDate")?,
            interaction: date("interactionDate")?,
            withdrawn: date("withdrawnDate")?,
        };
        if dates.consent.or(dates.interaction).is_none() {
            return Err(RowError::new(
                line,
                "consentDate",
                "the receipt has neither `consentDate` nor `interactionDate`",
            ));
        }
        Ok(dates)
    }

    fn of(&self, action: ConsentAction) -> Option<i64> {
        match action {
            ConsentAction::Grant => self.consent.or(self.interaction),
            ConsentAction::Deny => self.interaction.or(self.consent),
            ConsentAction::Withdraw => self.withdrawn.or(self.interaction).or(self.consent),
        }
    }
}

fn common(line: usize, record: &Map<String, Value>, mapping: &Mapping) -> Result<Common, RowError> {
    let raw = text(record, "identifier")
        .ok_or_else(|| RowError::new(line, "identifier", "the receipt has no `identifier`"))?;
    let type_name = text(record, "identifierType")
        .ok_or_else(|| RowError::new(line, "identifierType", "missing: the type decides the identifier's kind"))?;
    let identifiers = match mapping.identifier(SOURCE, type_name) {
        None => {
            let why = "this identifier type is not in the mapping's [identifiers.onetrust]";
            return Err(RowError::new(line, "identifierType", why));
        }
        Some(IdentifierMapping::Skip) => {
            return Err(RowError::new(line, "identifier", "the mapping skips this identifier type, the only one"));
        }
        Some(IdentifierMapping::Kind(kind)) => vec![identifier(line, "identifier", kind, raw)?],
    };
    let geo = match record.get("geoLocation") {
        Some(Value::Object(geo)) => match (text(geo, "country"), text(geo, "state")) {
            (Some(country), Some(state)) => Some(format!("{country}-{state}")),
            (country, _) => country.map(str::to_owned),
        },
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let jurisdiction = jurisdiction(line, geo.as_deref(), "geoLocation", mapping)?;
    let own = ["receiptId", "id"].into_iter().find_map(|k| record.get(k).filter(|v| !v.is_null()).map(|v| (k, v)));
    Ok(Common {
        line,
        source_system: SOURCE.to_owned(),
        base_id: record_id(line, own, record)?,
        identifiers,
        jurisdiction,
        captured_at_ms: 0,
        notice_version: String::new(),
    })
}

fn row(
    common: &Common,
    dates: &Dates,
    i: usize,
    purpose: &Value,
    mapping: &Mapping,
) -> Result<crate::import::row::ImportRow, RowError> {
    let line = common.line;
    let field = |name: &str| format!("purposes[{i}].{name}");
    let purpose = purpose.as_object().ok_or_else(|| RowError::new(line, format!("purposes[{i}]"), "not an object"))?;
    let key = text(purpose, "Id").ok_or_else(|| RowError::new(line, field("Id"), "missing"))?;
    let action = match text(purpose, "TransactionType").map(transaction) {
        None => return Err(RowError::new(line, field("TransactionType"), "missing")),
        Some(None) => return Err(RowError::new(line, field("TransactionType"), "not a OneTrust transaction type")),
        Some(Some(Transaction::Skip(why))) => return Err(RowError::skipped(line, field("TransactionType"), why)),
        Some(Some(Transaction::Act(action))) => action,
    };
    let target = target(line, mapping, SOURCE, key, i)?;
    let expires_at = match purpose.get("ExpiryDate").filter(|v| !v.is_null() && v.as_str() != Some("")) {
        None => None,
        Some(v) => Some(
            time_ms(v, Epoch::Millis, true).ok_or_else(|| RowError::new(line, field("ExpiryDate"), "not a date"))?,
        ),
    };
    let mut row = common.row(Some(key), target, action, expires_at);
    // `Dates::read` saw at least one of consentDate and interactionDate.
    row.captured_at_ms = dates.of(action).unwrap_or_default();
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::super::rows;
    use super::*;
    use crate::import::formats::Format;

    const MAPPING: &str = "version = \"t1\"\n[identifiers]\nonetrust.Email = \"email\"\nonetrust.Cookie = \"skip\"\n[[purpose]]\nsource = \"onetrust\"\nkey = \"C0004\"\nmaps_to = \"profiling\"\nchannels = [\"web\"]\n[[purpose]]\nsource = \"*\"\nkey = \"news\"\nmaps_to = \"marketing\"\nchannels = [\"email\"]\n";

    fn read(input: &str) -> Vec<Result<crate::import::row::ImportRow, RowError>> {
        let mapping = Mapping::parse(MAPPING, "m").unwrap();
        rows(Format::OneTrust, input.as_bytes(), &mapping).collect()
    }

    #[test]
    fn every_transaction_type_has_a_considered_action() {
        let grant = ["CONFIRMED", "IMPLICIT"];
        let restrict = ["NOTGIVEN", "WITHDRAWN", "OPT_OUT", "HARD_OPT_OUT", "EXPIRED", "CANCEL"];
        for name in grant.iter().chain(&restrict) {
            let expect_grant = grant.contains(name);
            assert!(
                matches!(transaction(name), Some(Transaction::Act(a)) if (a == ConsentAction::Grant) == expect_grant)
            );
        }
        for name in ["PENDING", "NO_CHOICE", "EXTEND", "CHANGE_PREFERENCES"] {
            assert!(matches!(transaction(name), Some(Transaction::Skip(_))), "{name}");
        }
        assert!(transaction("MAYBE").is_none());
    }

    #[test]
    fn one_receipt_per_line_with_dates_chosen_by_action() {
        let input = concat!(
            r#"{"receiptId":"r1","identifier":"Eva@Example.com","identifierType":"Email","geoLocation":{"country":"US","state":"CA"},"consentDate":"2025-01-01T00:00:00Z","interactionDate":"2025-01-02T00:00:00Z","withdrawnDate":"2025-01-03T00:00:00Z","purposes":[{"Id":"news","TransactionType":"CONFIRMED","ExpiryDate":"2026-01-01T00:00:00"},{"Id":"C0004","TransactionType":"OPT_OUT","ExpiryDate":"2026-01-01T00:00:00"},{"Id":"news","TransactionType":"NOTGIVEN"}]}"#,
            "\n",
            r#"{"receiptId":"r2","identifier":"Eva@Example.com","identifierType":"Email","geoLocation":"us-ca","consentDate":"2025-01-01T00:00:00Z","interactionDate":"2025-01-02T00:00:00Z","purposes":[{"Id":"news","TransactionType":"NOTGIVEN"}]}"#,
            "\n",
            r#"{"identifier":"cookie-123","identifierType":"Cookie","geoLocation":"DE","consentDate":"2025-01-01T00:00:00Z","purposes":[{"Id":"news","TransactionType":"CONFIRMED"}]}"#,
            "\n"
        );
        let rows = read(input);
        assert_eq!(rows[2].as_ref().unwrap_err().field, "purposes[2].Id", "a purpose listed twice");
        let ok: Vec<_> = [&rows[0], &rows[1], &rows[3]].into_iter().map(|r| r.as_ref().unwrap()).collect();
        assert_eq!(ok[0].identifiers, vec![("email".to_owned(), "eva@example.com".to_owned())]);
        assert_eq!(ok[0].jurisdiction, "US-CA");
        assert_eq!(
            (ok[0].action, ok[0].captured_at_ms, ok[0].expires_at),
            (ConsentAction::Grant, 1_735_689_600_000, Some(1_767_225_600))
        );
        assert_eq!(
            (ok[1].action, ok[1].captured_at_ms, ok[1].expires_at),
            (ConsentAction::Withdraw, 1_735_862_400_000, None)
        );
        assert_eq!((ok[2].action, ok[2].captured_at_ms), (ConsentAction::Deny, 1_735_776_000_000));
        assert_eq!(
            ok.iter().map(|r| r.source_event_id.as_str()).collect::<Vec<_>>(),
            ["r1#news", "r1#C0004", "r2#news"]
        );
        let err = rows[4].as_ref().unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (3, "identifier"));
        assert_eq!(rows.len(), 5);
    }

    #[test]
    fn receipt_level_errors_name_the_field_not_the_value() {
        let cases = [
            (r#"{"identifierType":"Email","consentDate":"2025-01-01T00:00:00Z","purposes":[]}"#, "identifier"),
            (
                r#"{"identifier":"a@example.com","identifierType":"Fax","geoLocation":"DE","consentDate":"2025-01-01T00:00:00Z","purposes":[]}"#,
                "identifierType",
            ),
            (
                r#"{"identifier":"a@example.com","identifierType":"Email","geoLocation":"DE","consentDate":"a@example.com","purposes":[]}"#,
                "consentDate",
            ),
            (
                r#"{"identifier":"a@example.com","identifierType":"Email","geoLocation":"DE","interactionDate":"2025-01-01T00:00:00Z","purposes":[]}"#,
                "purposes",
            ),
            (
                r#"{"identifier":"a@example.com","identifierType":"Email","geoLocation":"DE","consentDate":"2025-01-01T00:00:00Z","purposes":[{"Id":"news","TransactionType":"a@example.com"}]}"#,
                "purposes[0].TransactionType",
            ),
            (
                r#"{"identifier":"a@example","identifierType":"Email","geoLocation":"DE","consentDate":"2025-01-01T00:00:00Z","purposes":[]}"#,
                "identifier",
            ),
        ];
        for (input, field) in cases {
            let rows = read(input);
            let err = rows[0].as_ref().unwrap_err();
            assert_eq!(err.field, field, "{input}");
            assert!(!err.to_string().contains("a@example"), "{err}");
        }
    }
}
