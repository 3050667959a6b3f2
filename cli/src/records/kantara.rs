//! Kantara Initiative Consent Receipts v1.1 (`KI-CR-v1.1.0`), one receipt per ledger entry.
//!
//! Receipt fields: `version`, `jurisdiction` (the subject's), `consentTimestamp` (Unix seconds,
//! when the person acted), `collectionMethod` (the capture channel, else `unknown`),
//! `consentReceiptID` (stable id of the entry), `piiPrincipalId` (the subject ref:
//! pseudonymous), `piiControllers` (the deployment, named by `--controller`), `policyUrl`
//! (the notice version), `services[].purposes[]` (`purpose`, `purposeCategory`, `consentType`
//! `EXPLICIT`, `piiCategory` = the channels, `primaryPurpose`, `termination`,
//! `thirdPartyDisclosure` false), `sensitive` false, `spiCat` []. The receipt format has no
//! withdrawal or refusal: those entries, the channels, an expiry and the ledger sequence travel in
//! an extension member `domicile` that import reads first; a receipt without it is a grant.

use domicile_types::{Channel, ConsentState, Purpose};
use serde_json::{Value, json};

use super::{Entry, Principal, stable_id};

pub const VERSION: &str = "KI-CR-v1.1.0";

/// The subject's ledger as receipts (a JSON array).
pub fn export(principal: &Principal, entries: &[Entry], controller: &str) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                let channels: Vec<&str> = e.channels.iter().map(|c| c.as_str()).collect();
                let mut extension = json!({
                    "state": e.state.as_str(),
                    "channels": channels,
                    "sequence": e.sequence,
                    "source_system": e.source_system,
                    "double_opt_in_confirmed": e.double_opt_in_confirmed,
                });
                if let Some(expires) = e.expires_at {
                    extension["expires_at"] = json!(expires);
                }
                if !e.consent_kind.is_empty() {
                    extension["consent_kind"] = json!(e.consent_kind);
                }
                if !e.hours.is_empty() {
                    extension["hours"] = json!(e.hours);
                }
                json!({
                    "version": VERSION,
                    "jurisdiction": principal.jurisdiction,
                    "consentTimestamp": e.captured_at,
                    "collectionMethod": e.capture_channel.map_or("unknown", |c| c.as_str()),
                    "consentReceiptID": stable_id(&[&principal.subject_ref, &e.sequence.to_string(), e.state.as_str()]),
                    "publicKey": "",
                    "language": "",
                    "piiPrincipalId": principal.subject_ref,
                    "piiControllers": [{ "piiController": controller, "onBehalf": false }],
                    "policyUrl": e.notice_version,
                    "services": [{
                        "service": e.purpose.as_str(),
                        "purposes": [{
                            "purpose": e.purpose.as_str(),
                            "purposeCategory": [e.purpose.as_str()],
                            "consentType": if e.consent_kind.starts_with("implied") { "IMPLICIT" } else { "EXPLICIT" },
                            "piiCategory": channels,
                            "primaryPurpose": true,
                            "termination": e.expires_at.map_or_else(|| "until withdrawn".to_owned(), |t| format!("at {t} (Unix seconds)")),
                            "thirdPartyDisclosure": false,
                        }],
                    }],
                    "sensitive": false,
                    "spiCat": [],
                    "domicile": extension,
                })
            })
            .collect(),
    )
}

/// Ledger entries from receipts (a JSON array, or one receipt). Errors name the receipt and
/// field, never a value.
pub fn import(value: &Value) -> Result<Vec<Entry>, String> {
    let receipts: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut out = Vec::new();
    for (r, receipt) in receipts.iter().enumerate() {
        let at = |field: &str| format!("receipt {r}: `{field}`");
        if receipt.get("version").and_then(Value::as_str) != Some(VERSION) {
            return Err(format!("{} must be \"{VERSION}\"", at("version")));
        }
        let captured_at = receipt
            .get("consentTimestamp")
            .and_then(Value::as_i64)
            .ok_or_else(|| format!("{} is not Unix seconds", at("consentTimestamp")))?;
        let purpose_entry = receipt
            .pointer("/services/0/purposes/0")
            .ok_or_else(|| format!("{} names no purpose", at("services[0].purposes[0]")))?;
        let purpose =
            purpose_entry.get("purpose").and_then(Value::as_str).and_then(|p| Purpose::parse(p).ok()).ok_or_else(
                || format!("{} is not a purpose this system knows", at("services[0].purposes[0].purpose")),
            )?;
        let extension = receipt.get("domicile");
        let channel_list = extension
            .and_then(|d| d.get("channels"))
            .or_else(|| purpose_entry.get("piiCategory"))
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{} lists no channels", at("services[0].purposes[0].piiCategory")))?;
        let mut channels = Vec::new();
        for name in channel_list {
            let channel = name.as_str().and_then(|n| Channel::parse(n).ok());
            channels.push(channel.ok_or_else(|| format!("{} holds a value that is not a channel", at("piiCategory")))?);
        }
        let state = match extension.and_then(|d| d.get("state")).and_then(Value::as_str) {
            Some(name) => {
                ConsentState::parse(name).map_err(|_| format!("{} is not a consent state", at("domicile.state")))?
            }
            None => ConsentState::Granted,
        };
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
        out.push(Entry {
            sequence: extension.and_then(|d| d.get("sequence")).and_then(Value::as_u64).unwrap_or_default(),
            purpose,
            channels,
            state,
            captured_at,
            expires_at: extension.and_then(|d| d.get("expires_at")).and_then(Value::as_i64),
            notice_version: text(receipt.get("policyUrl")),
            source_system: text(extension.and_then(|d| d.get("source_system"))),
            capture_channel: receipt
                .get("collectionMethod")
                .and_then(Value::as_str)
                .and_then(|c| Channel::parse(c).ok()),
            double_opt_in_confirmed: extension
                .and_then(|d| d.get("double_opt_in_confirmed"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            consent_kind: text(extension.and_then(|d| d.get("consent_kind"))),
            hours: super::iso27560::strings(extension.and_then(|d| d.get("hours")))
                .map_err(|()| format!("{} is not a list of window ids", at("domicile.hours")))?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_then_import_gives_the_same_entries() {
        let (principal, entries) = super::super::tests::sample();
        let receipts = export(&principal, &entries, "example-cx");
        assert_eq!(receipts.as_array().map(Vec::len), Some(entries.len()));
        assert_eq!(receipts[0]["version"], VERSION);
        assert_eq!(import(&receipts).unwrap(), entries);
    }

    #[test]
    fn a_plain_receipt_is_a_grant_and_a_bad_one_is_refused_by_field() {
        let (principal, entries) = super::super::tests::sample();
        let mut receipts = export(&principal, &entries[..1], "example-cx");
        if let Some(receipt) = receipts[0].as_object_mut() {
            receipt.remove("domicile");
        }
        let plain = import(&receipts).unwrap();
        assert_eq!((plain[0].state, plain[0].channels.as_slice()), (ConsentState::Granted, &[Channel::Email][..]));
        receipts[0]["services"][0]["purposes"][0]["purpose"] = json!("anna@example.de");
        let err = import(&receipts).unwrap_err();
        assert!(err.contains("receipt 0") && !err.contains("anna"), "{err}");
    }
}
