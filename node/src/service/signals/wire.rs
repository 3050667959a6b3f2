//! `RecordSignal` on the wire: the signal decoded (a malformed string is INVALID_ARGUMENT naming
//! the segment or section and the bit offset, never the string), the result as ledger entries.

use domicile_proto::convert::{self, FieldViolation};
use domicile_proto::pb::node::v1 as pb;
use tonic::Request;

use super::SignalCapture;
use crate::error::NodeError;
use crate::service::NodeService;
use crate::service::consent::wire::entry_to_pb;
use crate::store::Store;
use domicile_policy::signal_meaning::Decoded;

/// Longest signal string accepted (GPP strings with many sections stay far below).
const MAX_SIGNAL_LEN: usize = 16 * 1024;

pub(in crate::service) async fn record_signal<S: Store>(
    node: &NodeService<S>,
    request: Request<pb::RecordSignalRequest>,
) -> Result<pb::RecordSignalResponse, NodeError> {
    let caller = node.caller(&request, &request.get_ref().caller_region)?;
    let req = request.get_ref();
    let key = convert::subject_key("subject", req.subject.as_ref())?;
    let (decoded, raw) = decode(req.signal.as_ref())?;
    let captured_at_ms = convert::timestamp_ms("captured_at", req.captured_at.as_ref())?;
    convert::evidence_token("source_system", &req.source_system)?;
    let tag = node.idempotency("RecordSignal", &request, &req.idempotency_key, req, |r| r.idempotency_key.clear())?;
    let capture = SignalCapture { decoded, raw, captured_at_ms, source_system: req.source_system.clone() };
    let recorded = node.record_signal(&key, &caller, capture, tag.as_ref()).await?;
    Ok(pb::RecordSignalResponse {
        subject_ref: node.subject_ref(recorded.subject).to_string(),
        recorded: recorded.entries.iter().map(entry_to_pb).collect(),
        recorded_only: recorded.recorded_only.join("; "),
    })
}

/// The signal of a request, decoded and validated, and its text as kept for evidence.
pub(crate) fn decode(signal: Option<&pb::record_signal_request::Signal>) -> Result<(Decoded, String), FieldViolation> {
    use pb::record_signal_request::Signal;
    let too_long = |field: &str| FieldViolation::new(field, format!("is longer than {MAX_SIGNAL_LEN} bytes"));
    match signal {
        None => Err(FieldViolation::new("signal", "give one of `tcf`, `gpp`, `gpc`")),
        Some(Signal::Tcf(text)) if text.len() > MAX_SIGNAL_LEN => Err(too_long("tcf")),
        Some(Signal::Gpp(text)) if text.len() > MAX_SIGNAL_LEN => Err(too_long("gpp")),
        Some(Signal::Tcf(text)) => domicile_signals::tcf::decode(text)
            .map(|model| (Decoded::Tcf(Box::new(model)), text.clone()))
            .map_err(|e| FieldViolation::new("tcf", e.to_string())),
        Some(Signal::Gpp(text)) => domicile_signals::gpp::decode(text)
            .map(|gpp| (Decoded::Gpp(gpp), text.clone()))
            .map_err(|e| FieldViolation::new("gpp", e.to_string())),
        Some(Signal::Gpc(true)) => Ok((Decoded::Gpc, "Sec-GPC: 1".to_owned())),
        Some(Signal::Gpc(false)) => Err(FieldViolation::new("gpc", "only `true` (`Sec-GPC: 1`) is a signal")),
    }
}
