//! `RecordSignal`: a web consent signal (TCF, GPP, GPC) turned into ledger entries by the
//! subject's pack (`domicile_policy::signal_meaning`), each recorded like any consent capture and keeping the signal
//! as evidence; a signal the pack gives no meaning to is kept as evidence in the subject's
//! interaction log and changes no decision.

pub(super) mod mapping;
pub(super) mod wire;

use domicile_proto::convert::SubjectKey;
use domicile_runtime::process::now_unix_ms;
use domicile_types::{Channel, SubjectId};

use super::consent::ConsentCapture;
use super::context::InteractionReport;
use super::{Caller, NodeService};
use crate::error::NodeError;
use crate::store::{ConsentRecord, Evidence, Idempotency, InteractionKind, Store};
use domicile_policy::signal_meaning::{self, Decoded};

/// A signal as received: decoded, its text (kept as evidence), when and by what it was captured.
pub(crate) struct SignalCapture {
    pub decoded: Decoded,
    pub raw: String,
    /// Milliseconds since the epoch; `None`: when it is recorded.
    pub captured_at_ms: Option<i64>,
    pub source_system: String,
}

/// What a signal changed.
pub(crate) struct SignalRecorded {
    pub subject: SubjectId,
    pub entries: Vec<ConsentRecord>,
    /// Why (parts of) the signal changed nothing; empty when every part was mapped.
    pub recorded_only: Vec<String>,
}

/// When the TC string (alone or in a GPP string) was last updated, in milliseconds.
fn stated_at_ms(decoded: &Decoded) -> Option<i64> {
    let deciseconds = match decoded {
        Decoded::Tcf(model) => Some(model.last_updated),
        Decoded::Gpp(gpp) => gpp.sections.iter().find_map(|s| match s {
            domicile_signals::gpp::Section::TcfEuV2(model) => Some(model.last_updated),
            _ => None,
        }),
        Decoded::Gpc => None,
    }?;
    i64::try_from(deciseconds).ok()?.checked_mul(100)
}

/// The idempotency key of the `index`th entry of one signal: each entry is one ledger write,
/// so a retried signal applies each once, including those a failed attempt already applied.
fn entry_tag(tag: Option<&Idempotency>, index: usize) -> Option<Idempotency> {
    tag.map(|t| {
        let mut input = t.key.to_vec();
        input.extend_from_slice(&(index as u64).to_be_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        Idempotency { key, ..*t }
    })
}

impl<S: Store> NodeService<S> {
    pub(crate) async fn record_signal(
        &self,
        key: &SubjectKey,
        caller: &Caller,
        capture: SignalCapture,
        tag: Option<&Idempotency>,
    ) -> Result<SignalRecorded, NodeError> {
        let SignalCapture { decoded, raw, captured_at_ms, source_system } = capture;
        let captured_at_ms = captured_at_ms.unwrap_or_else(now_unix_ms);
        let (subject, meta) = self.resolve_meta(key).await?;
        self.check_collection_for(&meta.jurisdiction, caller.region.as_ref())?;
        let (mapped, pack_label) = {
            let loaded = self.packs.current();
            let pack = Self::pack_of(&loaded, &meta.jurisdiction)?;
            let label = format!("{}@{}", pack.id(), pack.version());
            (signal_meaning::map(&decoded, pack.signals(), &label, captured_at_ms.div_euclid(1000)), label)
        };
        let evidence = mapping::evidence(&decoded, &raw);
        // A grant is dated no later than the TC string says the person answered (its last
        // update): a string stored in a browser since before a withdrawal, sent again later, must
        // not count as a grant made after it. Withdrawals keep the capture time (a later date
        // only makes them stronger).
        let answered_ms = stated_at_ms(&decoded);
        let mut entries = Vec::new();
        for (index, entry) in mapped.entries.iter().enumerate() {
            let signal = crate::store::SignalEvidence { cite: entry.cite.clone(), ..evidence.clone() };
            let capture = ConsentCapture {
                purpose: entry.purpose,
                channels: entry.channels.clone(),
                action: entry.action,
                captured_at_ms: Some(match (entry.action, answered_ms) {
                    (domicile_types::ConsentAction::Grant, Some(answered)) => captured_at_ms.min(answered),
                    _ => captured_at_ms,
                }),
                expires_at: None,
                evidence: Evidence {
                    notice_version: format!("{}-signal", evidence.kind),
                    capture_channel: Some(Channel::Web),
                    source_system: source_system.clone(),
                    double_opt_in_confirmed: false,
                    signal: Some(signal),
                    consent_kind: None,
                    hours: Vec::new(),
                    hours_pack: None,
                    import: None,
                    // Set by `capture_consent` from the key the subject was named by.
                    captured_via: None,
                },
            };
            let (_, record) = self.capture_consent(key, caller, capture, entry_tag(tag, index).as_ref()).await?;
            entries.push(record);
        }
        if entries.is_empty() {
            // Kept as evidence where the subject's other web visits are: what came, and why it
            // changed nothing (the string itself stays sealed in the home region).
            let summary = format!("{} signal received; {}", evidence.kind, mapped.unmapped.join("; "));
            let report = InteractionReport {
                channel: Channel::Web,
                occurred_at: Some(captured_at_ms.div_euclid(1000)),
                kind: InteractionKind::Visit,
                intent: format!("consent-signal.{}", evidence.kind),
                summary,
                reference: String::new(),
                open: false,
            };
            self.record_interaction_entry(key, caller, report, entry_tag(tag, usize::MAX).as_ref()).await?;
        }
        tracing::info!(region = %self.region, pack = %pack_label, kind = %evidence.kind, entries = entries.len(), "consent signal recorded");
        Ok(SignalRecorded { subject, entries, recorded_only: mapped.unmapped })
    }
}
