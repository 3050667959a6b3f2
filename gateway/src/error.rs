//! The statuses the gateway answers with, where more than one path needs them, and the one
//! mapping of a node's answer to what the caller sees. PII-free: they name fields, regions and
//! causes, never values.

use domicile_proto::convert::FieldViolation;
use domicile_types::RegionId;
use tonic::{Code, Status};

pub fn invalid(v: FieldViolation) -> Status {
    v.into()
}

/// A node's answer, as the caller sees it. Node statuses are PII-free by construction and pass
/// through; transport failures become UNAVAILABLE for that region only (fail closed). A status the
/// node marked with its cause (`domicile_proto::CAUSE_METADATA`, e.g. an identifier's arbiter
/// is unreachable) passes through as it is, whatever its code.
pub fn node_status(region: &RegionId, status: Status) -> Status {
    if status.metadata().contains_key(domicile_proto::CAUSE_METADATA) {
        return status;
    }
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
            tracing::warn!(%region, code = ?status.code(), "home region unreachable");
            region_unavailable(region)
        }
        _ => status,
    }
}

/// What a caller sees for a region that cannot answer (never an allow).
pub fn region_unavailable(region: &RegionId) -> Status {
    Status::unavailable(format!("home region `{region}` is unavailable"))
}

/// A region this gateway was not configured with.
pub fn unknown_region(region: &RegionId) -> Status {
    Status::failed_precondition(format!("region `{region}` is not part of this deployment"))
}

/// A node answered without a decision: a broken node, never read as an allow.
pub fn no_decision() -> Status {
    Status::internal("home region returned no decision")
}

/// A node answered with a subject ref that is not one.
pub fn malformed_subject_ref() -> Status {
    Status::internal("home region returned a malformed subject ref")
}

/// An identifier this gateway knows to be held in another region.
pub fn held_elsewhere() -> Status {
    Status::failed_precondition("an identifier already belongs to a subject of another region")
}

/// A lookup that cannot be answered until every region's directory has loaded.
pub fn directory_loading() -> Status {
    Status::unavailable("the directory is still loading a region: retry shortly")
}

/// No subject holds the identifier or link.
pub fn not_registered() -> Status {
    Status::not_found("no subject is registered under this identifier or link")
}
