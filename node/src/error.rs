//! The node's mapping from domain and storage failures to gRPC statuses, in one place. Messages
//! are PII-free: details go to the log, which holds no personal data either (store errors never
//! carry record contents).

use domicile_proto::convert::FieldViolation;
use tonic::Status;

use crate::store::StoreError;

/// Maps storage failures to statuses.
pub fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Conflict => Status::failed_precondition(
            "identifiers belong to different subjects: merge the subjects before registering them together",
        ),
        StoreError::JurisdictionMismatch => {
            Status::failed_precondition("an identifier already belongs to a subject of another jurisdiction")
        }
        StoreError::NotFound => Status::not_found("no such subject in this region"),
        StoreError::MergeJurisdictionMismatch => {
            Status::failed_precondition("merging subjects of different jurisdictions is not allowed")
        }
        StoreError::NotHeld => Status::failed_precondition("an identifier to remove does not belong to the subject"),
        // Handlers retry these themselves; one that still escapes was retried too often.
        StoreError::Retry | StoreError::Replayed => {
            Status::aborted("concurrent changes to the same subject or identifiers: retry")
        }
        StoreError::Backend(detail) => {
            tracing::error!(%detail, "storage backend failure");
            Status::unavailable("storage unavailable")
        }
        StoreError::Corrupt(detail) => {
            tracing::error!(%detail, "corrupt record in storage");
            Status::internal("stored data is corrupt")
        }
        StoreError::Audit(e) => audit_unavailable(e),
        StoreError::OutcomeUnknown => marked(
            Status::unavailable("storage unavailable: the change may or may not be kept"),
            domicile_proto::CAUSE_OUTCOME_UNKNOWN,
        ),
    }
}

/// A change or decision that cannot be audited is refused, never served unaudited (invariant 5).
pub fn audit_unavailable(e: domicile_audit::AuditError) -> Status {
    tracing::error!(error = %e, "audit log append failed");
    Status::unavailable("audit log unavailable")
}

pub fn invalid(v: FieldViolation) -> Status {
    v.into()
}

/// Marks `status` with a cause (`domicile_proto::CAUSE_METADATA`) so that a gateway passes it
/// through as it is instead of reading it as this node being unavailable.
pub fn marked(mut status: Status, cause: &'static str) -> Status {
    status.metadata_mut().insert(domicile_proto::CAUSE_METADATA, tonic::metadata::MetadataValue::from_static(cause));
    status
}
