//! The node's domain error, [`NodeError`], and its one mapping to gRPC statuses. Operations
//! return it; only the gRPC adapters turn it into a `Status`, so every code, message and cause
//! mark a caller sees is decided here. Messages are PII-free: details go to the log, which holds
//! no personal data either (store errors never carry record contents, claim errors name regions).

use std::borrow::Cow;

use domicile_policy::ResidencyRefusal;
use domicile_proto::convert::FieldViolation;
use tonic::Status;

use crate::ownership::ClaimError;
use crate::store::StoreError;

/// Why the node refuses or fails an operation.
#[derive(Debug)]
pub enum NodeError {
    /// A request field breaks a rule: INVALID_ARGUMENT naming the field and the rule.
    Invalid(FieldViolation),
    /// An argument that is wrong as a whole: INVALID_ARGUMENT with this message.
    InvalidArgument(Cow<'static, str>),
    /// What the request names is not here: NOT_FOUND.
    NotFound(&'static str),
    /// The node's state or configuration does not allow the request: FAILED_PRECONDITION with a
    /// reason that names no personal data.
    Precondition(&'static str),
    /// The subject's pack does not allow the request from the caller's region: PERMISSION_DENIED
    /// naming pack and regions only.
    Residency(ResidencyRefusal),
    /// The caller may not be given this, whatever the request says: PERMISSION_DENIED.
    PermissionDenied(&'static str),
    /// A write applied earlier under the same idempotency key whose answer is gone: ALREADY_EXISTS.
    AlreadyExists(&'static str),
    Store(StoreError),
    /// Identifier claims at their arbiters failed (`crate::ownership`).
    Claims(ClaimError),
    /// Something other than storage that the operation needs is not available now: UNAVAILABLE.
    Unavailable(&'static str),
    /// A write may or may not have been made (applied but not made durable, or its commit went
    /// unanswered): UNAVAILABLE marked `outcome-unknown`, so that a gateway tells its caller to
    /// retry with the write's idempotency key.
    OutcomeUnknown,
    /// A fault of this node: INTERNAL.
    Internal(&'static str),
    /// A status already mapped once, repeated for another item of a batch.
    Replay(tonic::Code, String),
}

impl NodeError {
    /// The same refusal again for another item of a batch (errors are not `Clone`): code and
    /// message kept.
    pub(crate) fn from_status(status: &Status) -> NodeError {
        NodeError::Replay(status.code(), status.message().to_owned())
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Invalid(v) => v.into(),
            NodeError::InvalidArgument(message) => Status::invalid_argument(message),
            NodeError::NotFound(message) => Status::not_found(message),
            NodeError::Precondition(reason) => Status::failed_precondition(reason),
            NodeError::Residency(refusal) => domicile_proto::convert::residency_refused(refusal),
            NodeError::PermissionDenied(message) => Status::permission_denied(message),
            NodeError::AlreadyExists(message) => Status::already_exists(message),
            NodeError::Store(e) => store_status(e),
            NodeError::Claims(e) => claim_status(e),
            NodeError::Unavailable(message) => Status::unavailable(message),
            NodeError::OutcomeUnknown => outcome_unknown(),
            NodeError::Replay(code, message) => Status::new(code, message),
            NodeError::Internal(message) => Status::internal(message),
        }
    }
}

impl From<FieldViolation> for NodeError {
    fn from(v: FieldViolation) -> Self {
        NodeError::Invalid(v)
    }
}

impl From<StoreError> for NodeError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::OutcomeUnknown => NodeError::OutcomeUnknown,
            e => NodeError::Store(e),
        }
    }
}

impl From<ClaimError> for NodeError {
    fn from(e: ClaimError) -> Self {
        NodeError::Claims(e)
    }
}

impl From<ResidencyRefusal> for NodeError {
    fn from(refusal: ResidencyRefusal) -> Self {
        NodeError::Residency(refusal)
    }
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Conflict => Status::failed_precondition(
            "identifiers belong to different subjects: merge the subjects before registering them together",
        ),
        StoreError::JurisdictionMismatch => {
            Status::failed_precondition("an identifier already belongs to a subject of another jurisdiction")
        }
        StoreError::NotFound => Status::not_found("no such subject in this region"),
        StoreError::StorageFull => Status::resource_exhausted(
            "the region's disk is full: writes are refused until space returns; decisions are served",
        ),
        StoreError::Unsupported(what) => Status::failed_precondition(what.to_string()),
        StoreError::MergeJurisdictionMismatch => {
            Status::failed_precondition("merging subjects of different jurisdictions is not allowed")
        }
        StoreError::NotHeld => Status::failed_precondition("an identifier to remove does not belong to the subject"),
        StoreError::Unattributable => Status::failed_precondition(
            "the subject holds identifiers attached since the merge, which cannot be told to belong to either half: remove them by a rectification, unmerge, then register each with its subject",
        ),
        // Operations retry these themselves; one that still escapes was retried too often.
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
        // A change or decision that cannot be audited is refused, never served unaudited
        // (invariant 5).
        StoreError::Audit(e) => {
            tracing::error!(error = %e, "audit log append failed");
            Status::unavailable("audit log unavailable")
        }
        StoreError::OutcomeUnknown => outcome_unknown(),
    }
}

/// A write that may or may not have been made: the caller is to retry it with its idempotency key.
fn outcome_unknown() -> Status {
    marked(
        Status::unavailable("storage unavailable: the change may or may not be kept"),
        domicile_proto::CAUSE_OUTCOME_UNKNOWN,
    )
}

fn claim_status(error: ClaimError) -> Status {
    match error {
        ClaimError::HeldElsewhere => {
            Status::failed_precondition("an identifier already belongs to a subject of another region")
        }
        ClaimError::Unreachable(arbiter) => marked(
            Status::unavailable(format!(
                "region `{arbiter}` arbitrates one of these identifiers and cannot be reached: the registration \
                 is refused rather than risk a second owner; retry later"
            )),
            domicile_proto::CAUSE_ARBITER_UNREACHABLE,
        ),
        ClaimError::MapMismatch(arbiter) => Status::failed_precondition(format!(
            "region `{arbiter}` lists other regions for this deployment: the nodes' ownership configuration must agree"
        )),
        ClaimError::Store(detail) => {
            tracing::error!(%detail, "storage failure while claiming identifiers");
            Status::unavailable("storage unavailable")
        }
    }
}

/// Marks `status` with a cause (`domicile_proto::CAUSE_METADATA`) so that a gateway passes it
/// through as it is instead of reading it as this node being unavailable.
fn marked(mut status: Status, cause: &'static str) -> Status {
    status.metadata_mut().insert(domicile_proto::CAUSE_METADATA, tonic::metadata::MetadataValue::from_static(cause));
    status
}

#[cfg(test)]
mod tests {
    use domicile_policy::PackRef;
    use domicile_types::RegionId;
    use tonic::Code;

    use super::*;

    fn cause(status: &Status) -> Option<&str> {
        status.metadata().get(domicile_proto::CAUSE_METADATA).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn only_unknown_outcomes_and_unreachable_arbiters_are_marked() {
        let unknown = Status::from(NodeError::OutcomeUnknown);
        assert_eq!(unknown.code(), Code::Unavailable);
        assert_eq!(cause(&unknown), Some(domicile_proto::CAUSE_OUTCOME_UNKNOWN));
        let region = RegionId::parse("us-east").unwrap();
        let unreachable = Status::from(NodeError::Claims(ClaimError::Unreachable(region)));
        assert_eq!(unreachable.code(), Code::Unavailable);
        assert_eq!(cause(&unreachable), Some(domicile_proto::CAUSE_ARBITER_UNREACHABLE));
        let storage = Status::from(NodeError::Store(StoreError::Backend("disk".into())));
        assert_eq!((storage.code(), storage.message()), (Code::Unavailable, "storage unavailable"));
        assert_eq!(cause(&storage), None);
    }

    #[test]
    fn refusals_keep_their_codes_and_name_no_value() {
        let invalid = Status::from(NodeError::from(FieldViolation::new("purpose", "is required")));
        assert_eq!((invalid.code(), invalid.message()), (Code::InvalidArgument, "invalid `purpose`: is required"));
        let pack = PackRef { id: "de".into(), version: "1".into() };
        let refused = Status::from(NodeError::from(ResidencyRefusal::Collection {
            pack,
            caller_region: None,
            cite: Some("law 1".into()),
        }));
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(refused.message().contains("an unknown region"), "{}", refused.message());
        assert!(refused.message().ends_with("(basis: law 1)"), "the refusal names its citation: {}", refused.message());
        let missing = Status::from(NodeError::Store(StoreError::NotFound));
        assert_eq!((missing.code(), missing.message()), (Code::NotFound, "no such subject in this region"));
        let raced = Status::from(NodeError::Store(StoreError::Replayed));
        assert_eq!(raced.code(), Code::Aborted);
    }
}
