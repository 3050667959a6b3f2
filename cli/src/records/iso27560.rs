//! ISO/IEC TS 27560:2023 consent records in JSON-LD with W3C DPV terms, as the DPV community's
//! guide maps the TS's fields (`w3c/dpv guides/consent-27560.html`, CG-FINAL 2024-08-01).
//!
//! One record per purpose and channels (a "processing" in 27560's terms); the ledger entries for
//! it are the record's `events`, oldest first. Field mapping:
//!
//! | 27560 (DPV guide) | Domicile |
//! |---|---|
//! | `schema_version` | `ISO/IEC TS 27560:2023` |
//! | `record_id` | stable id of subject, purpose, channels |
//! | `pii_principal_id` | the subject ref (pseudonymous; identifiers never leave the ledger) |
//! | `notice.privacy_notice` | the notice version of the latest event |
//! | `processing.purposes` | a DPV purpose (`dpv:DirectMarketing` …) and `domicile:purpose` |
//! | `processing.lawful_basis` | `dpv:Consent` |
//! | `processing.processing_method` | the channels (`domicile:channels`) |
//! | `processing.jurisdiction` | the subject's jurisdiction |
//! | `events[].event_time` | when the person acted (captured at) |
//! | `events[].event_type` / `event_state` | `dpv:ConsentGiven`, `dpv:ConsentWithdrawn`, `dpv:ConsentRefused` |
//! | `events[].validity_duration` | `PT<n>S` until the grant lapses |
//! | `events[].entity_id` | the capturing system |
//! | `events[].domicile:*` | ledger sequence, expiry, capture channel, double opt-in, notice |
//!
//! Import reads `domicile:purpose` and `domicile:channels` when present (exact round trips) and
//! otherwise the DPV purpose, refusing a record it cannot map rather than guessing.

use domicile_types::{Channel, ConsentState, Purpose};
use serde_json::{Value, json};

use super::{Entry, Principal, parse_rfc3339, rfc3339, stable_id};

const SCHEMA_VERSION: &str = "ISO/IEC TS 27560:2023";

/// The DPV term for a purpose, where DPV has one that says the same; else the generic
/// `dpv:Purpose` (the Domicile purpose is always given beside it).
fn dpv_purpose(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Marketing => "dpv:DirectMarketing",
        Purpose::Research => "dpv:ResearchAndDevelopment",
        Purpose::Service => "dpv:ServiceProvision",
        Purpose::Analytics => "dpv:ServiceUsageAnalytics",
        Purpose::Profiling => "dpv:PersonalisedAdvertising",
        Purpose::Survey | Purpose::Recording => "dpv:Purpose",
    }
}

fn purpose_from_dpv(term: &str) -> Option<Purpose> {
    Purpose::ALL.iter().copied().find(|p| dpv_purpose(*p) == term && term != "dpv:Purpose")
}

fn dpv_state(state: ConsentState) -> &'static str {
    match state {
        ConsentState::Granted => "dpv:ConsentGiven",
        ConsentState::Withdrawn => "dpv:ConsentWithdrawn",
        ConsentState::Denied => "dpv:ConsentRefused",
    }
}

fn state_from_dpv(term: &str) -> Option<ConsentState> {
    ConsentState::ALL.iter().copied().find(|s| dpv_state(*s) == term)
}

/// The subject's ledger as 27560 records (a JSON array).
pub fn export(principal: &Principal, entries: &[Entry]) -> Value {
    let mut groups: Vec<(Purpose, Vec<Channel>, Vec<&Entry>)> = Vec::new();
    for entry in entries {
        match groups.iter_mut().find(|g| g.0 == entry.purpose && g.1 == entry.channels) {
            Some(group) => group.2.push(entry),
            None => groups.push((entry.purpose, entry.channels.clone(), vec![entry])),
        }
    }
    let records: Vec<Value> = groups
        .into_iter()
        .map(|(purpose, channels, events)| {
            let channel_names: Vec<&str> = channels.iter().map(|c| c.as_str()).collect();
            let notice = events.last().map(|e| e.notice_version.clone()).unwrap_or_default();
            json!({
                "@context": {
                    "dpv": "https://w3id.org/dpv#",
                    "iso27560": "https://w3id.org/dpv/guides/consent-27560#",
                    "domicile": "https://domicile.example/records#"
                },
                "@type": "iso27560:ConsentRecord",
                "schema_version": SCHEMA_VERSION,
                "record_id": format!("urn:uuid:{}", stable_id(&[&principal.subject_ref, purpose.as_str(), &channel_names.join(",")])),
                "pii_principal_id": principal.subject_ref,
                "notice": { "privacy_notice": notice },
                "processing": {
                    "purposes": [{ "@id": dpv_purpose(purpose), "domicile:purpose": purpose.as_str() }],
                    "lawful_basis": "dpv:Consent",
                    "processing_method": channel_names,
                    "domicile:channels": channel_names,
                    "jurisdiction": principal.jurisdiction,
                },
                "events": events.iter().map(|e| event(e)).collect::<Vec<_>>(),
            })
        })
        .collect();
    Value::Array(records)
}

fn event(entry: &Entry) -> Value {
    let mut event = json!({
        "event_time": rfc3339(entry.captured_at),
        "event_type": dpv_state(entry.state),
        "event_state": dpv_state(entry.state),
        "entity_id": entry.source_system,
        "domicile:sequence": entry.sequence,
        "domicile:notice_version": entry.notice_version,
        "domicile:double_opt_in_confirmed": entry.double_opt_in_confirmed,
    });
    if let Some(expires) = entry.expires_at {
        event["validity_duration"] = json!(format!("PT{}S", expires - entry.captured_at));
        event["domicile:expires_at"] = json!(rfc3339(expires));
    }
    if let Some(channel) = entry.capture_channel {
        event["domicile:capture_channel"] = json!(channel.as_str());
    }
    if !entry.consent_kind.is_empty() {
        event["domicile:consent_kind"] = json!(entry.consent_kind);
    }
    if !entry.hours.is_empty() {
        event["domicile:hours"] = json!(entry.hours);
    }
    event
}

/// A list of strings (absent: empty); `Err` for anything else.
pub(super) fn strings(value: Option<&Value>) -> Result<Vec<String>, ()> {
    match value {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(|v| v.as_str().map(str::to_owned).ok_or(())).collect(),
        Some(_) => Err(()),
    }
}

/// Ledger entries from 27560 records (a JSON array, or one record), in event order per record.
/// Errors name the record and field, never a value.
pub fn import(value: &Value) -> Result<Vec<Entry>, String> {
    let records: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut out = Vec::new();
    for (r, record) in records.iter().enumerate() {
        let at = |field: &str| format!("record {r}: `{field}`");
        if record.get("schema_version").and_then(Value::as_str) != Some(SCHEMA_VERSION) {
            return Err(format!("{} must be \"{SCHEMA_VERSION}\"", at("schema_version")));
        }
        let processing = record.get("processing").ok_or_else(|| format!("{} is missing", at("processing")))?;
        let purpose_entry = processing
            .get("purposes")
            .and_then(Value::as_array)
            .and_then(|p| p.first())
            .ok_or_else(|| format!("{} names no purpose", at("processing.purposes")))?;
        let purpose = match purpose_entry.get("domicile:purpose").and_then(Value::as_str) {
            Some(name) => Purpose::parse(name).map_err(|_| format!("{} is not a purpose", at("domicile:purpose")))?,
            None => purpose_entry
                .get("@id")
                .and_then(Value::as_str)
                .and_then(purpose_from_dpv)
                .ok_or_else(|| format!("{} has no DPV purpose this system maps", at("processing.purposes")))?,
        };
        let channel_names = processing
            .get("domicile:channels")
            .or_else(|| processing.get("processing_method"))
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{} lists no channels", at("processing.domicile:channels")))?;
        let mut channels = Vec::new();
        for name in channel_names {
            let channel = name.as_str().and_then(|n| Channel::parse(n).ok());
            channels.push(channel.ok_or_else(|| {
                format!("{} holds a value that is not a channel", at("processing.domicile:channels"))
            })?);
        }
        let events =
            record.get("events").and_then(Value::as_array).ok_or_else(|| format!("{} is missing", at("events")))?;
        for (e, event) in events.iter().enumerate() {
            let at = |field: &str| format!("record {r} event {e}: `{field}`");
            let state = event
                .get("event_state")
                .or_else(|| event.get("event_type"))
                .and_then(Value::as_str)
                .and_then(state_from_dpv)
                .ok_or_else(|| format!("{} is not a DPV consent status this system maps", at("event_state")))?;
            let captured_at = event
                .get("event_time")
                .and_then(Value::as_str)
                .and_then(parse_rfc3339)
                .ok_or_else(|| format!("{} is not an RFC 3339 time", at("event_time")))?;
            let expires_at = match event.get("domicile:expires_at").and_then(Value::as_str) {
                Some(text) => Some(
                    parse_rfc3339(text)
                        .ok_or_else(|| format!("{} is not an RFC 3339 time", at("domicile:expires_at")))?,
                ),
                None => match event.get("validity_duration").and_then(Value::as_str) {
                    Some(text) => Some(
                        captured_at
                            + seconds_of(text).ok_or_else(|| format!("{} is not `PT<n>S`", at("validity_duration")))?,
                    ),
                    None => None,
                },
            };
            let text = |key: &str| event.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
            out.push(Entry {
                sequence: event.get("domicile:sequence").and_then(Value::as_u64).unwrap_or_default(),
                purpose,
                channels: channels.clone(),
                state,
                captured_at,
                expires_at,
                notice_version: match event.get("domicile:notice_version") {
                    Some(_) => text("domicile:notice_version"),
                    None => {
                        record.pointer("/notice/privacy_notice").and_then(Value::as_str).unwrap_or_default().to_owned()
                    }
                },
                source_system: text("entity_id"),
                capture_channel: event
                    .get("domicile:capture_channel")
                    .and_then(Value::as_str)
                    .and_then(|c| Channel::parse(c).ok()),
                double_opt_in_confirmed: event
                    .get("domicile:double_opt_in_confirmed")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                consent_kind: text("domicile:consent_kind"),
                hours: strings(event.get("domicile:hours"))
                    .map_err(|()| format!("{} is not a list of window ids", at("domicile:hours")))?,
            });
        }
    }
    Ok(out)
}

/// `PT<n>S` (the only form this system writes).
fn seconds_of(duration: &str) -> Option<i64> {
    duration.strip_prefix("PT")?.strip_suffix('S')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_then_import_gives_the_same_entries() {
        let (principal, entries) = super::super::tests::sample();
        let records = export(&principal, &entries);
        assert_eq!(records.as_array().map(Vec::len), Some(7), "one record per purpose and channels");
        let mut back = import(&records).unwrap();
        back.sort_by_key(|e| e.sequence);
        assert_eq!(back, entries);
        let text = records.to_string();
        assert!(text.contains("dpv:ConsentWithdrawn") && text.contains("dpv:DirectMarketing"), "{text}");
    }

    #[test]
    fn a_record_without_a_mappable_purpose_is_refused_by_record_and_field() {
        let (principal, entries) = super::super::tests::sample();
        let mut records = export(&principal, &entries[..1]);
        records[0]["processing"]["purposes"][0] = json!({ "@id": "dpv:Purpose" });
        let err = import(&records).unwrap_err();
        assert!(err.contains("record 0") && err.contains("processing.purposes"), "{err}");
        records[0]["processing"]["purposes"][0] = json!({ "@id": "dpv:DirectMarketing" });
        assert_eq!(import(&records).unwrap()[0].purpose, Purpose::Marketing, "a plain DPV record maps by its term");
    }
}
