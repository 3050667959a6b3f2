//! Standard consent records out of and into a region's consent ledger: ISO/IEC TS 27560:2023
//! records in JSON-LD with W3C DPV terms (`iso27560.rs`) and Kantara Consent Receipts v1.1
//! (`kantara.rs`), for auditors and for moving consent between systems. The conversions are pure
//! (ledger entries ⇄ JSON); `domicile records export|import` (`cli.rs`) reads and writes the
//! ledger through the subject's home node with a certificate of that region: like every export,
//! in-region only (a node refuses callers of other regions).

mod cli;
pub mod iso27560;
pub mod kantara;

pub use cli::{NodeConnection, RecordsCommand, run};

use domicile_types::{Channel, ConsentState, Purpose};

/// A subject as the records name it: pseudonymously (its subject ref), with its jurisdiction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject_ref: String,
    pub jurisdiction: String,
}

/// One consent ledger entry, as standard records carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sequence: u64,
    pub purpose: Purpose,
    pub channels: Vec<Channel>,
    pub state: ConsentState,
    /// Unix seconds.
    pub captured_at: i64,
    pub expires_at: Option<i64>,
    pub notice_version: String,
    pub source_system: String,
    pub capture_channel: Option<Channel>,
    pub double_opt_in_confirmed: bool,
    /// What the consent rests on (`implied_purchase`, `guardian`, `explicit_transfer`, ...); empty:
    /// express. A consent to transfers has no channels.
    pub consent_kind: String,
    /// The calling windows of the subject's pack the consent is limited to; empty: every hour.
    pub hours: Vec<String>,
}

/// RFC 3339 in UTC, seconds.
fn rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map(|t| t.to_string()).unwrap_or_default()
}

fn parse_rfc3339(text: &str) -> Option<i64> {
    text.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// A stable id for a record or event, from what it is: re-exporting gives the same ids, and
/// importing the same file twice sends the same idempotency keys.
fn stable_id(parts: &[&str]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(parts.join("\u{1f}").as_bytes());
    let b = digest.as_slice();
    // Shaped as a UUID (version 8: custom), as 27560 and Kantara expect an id of that form.
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-8{:x}{:02x}-{:x}{:x}{:02x}-{}",
        b[0],
        b[1],
        b[2],
        b[3],
        b[4],
        b[5],
        b[6] & 0x0f,
        b[7],
        (b[8] & 0x3f) >> 4 | 0x8,
        b[8] & 0x0f,
        b[9],
        hex_of(&b[10..16])
    )
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn sample() -> (Principal, Vec<Entry>) {
        let principal =
            Principal { subject_ref: "eu-central/00112233445566778899aabbccddeeff".into(), jurisdiction: "DE".into() };
        let entry = |sequence, purpose, channels: &[Channel], state, captured_at, expires_at| Entry {
            sequence,
            purpose,
            channels: channels.to_vec(),
            state,
            captured_at,
            expires_at,
            notice_version: "privacy-notice-v3".into(),
            source_system: "web-shop".into(),
            capture_channel: Some(Channel::Web),
            double_opt_in_confirmed: sequence % 2 == 0,
            consent_kind: String::new(),
            hours: Vec::new(),
        };
        let mut entries = vec![
            entry(1, Purpose::Marketing, &[Channel::Email], ConsentState::Granted, 1_760_000_000, None),
            entry(
                2,
                Purpose::Survey,
                &[Channel::Sms, Channel::Email],
                ConsentState::Granted,
                1_760_000_100,
                Some(1_790_000_000),
            ),
            entry(3, Purpose::Marketing, &[Channel::Email], ConsentState::Withdrawn, 1_760_000_200, None),
            entry(4, Purpose::Profiling, &[Channel::Web], ConsentState::Denied, 1_760_000_300, None),
            entry(5, Purpose::Research, &[Channel::Voice], ConsentState::Granted, 1_760_000_400, None),
            // A consent of another kind, one limited to hours, and a consent to transfers (no
            // channels): each must come back as it left.
            entry(6, Purpose::Marketing, &[Channel::Sms], ConsentState::Granted, 1_760_000_500, None),
            entry(7, Purpose::Marketing, &[Channel::Push], ConsentState::Granted, 1_760_000_600, None),
            entry(8, Purpose::Service, &[], ConsentState::Granted, 1_760_000_700, None),
        ];
        entries[5].consent_kind = "implied_purchase".into();
        entries[6].hours = vec!["night".into()];
        entries[7].consent_kind = "explicit_transfer".into();
        (principal, entries)
    }

    #[test]
    fn ids_are_stable_and_uuid_shaped() {
        let id = stable_id(&["a", "b"]);
        assert_eq!(id, stable_id(&["a", "b"]));
        assert_ne!(id, stable_id(&["a", "c"]));
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'8');
    }
}
