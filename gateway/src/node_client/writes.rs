//! Writes through the gateway: their idempotency keys, and what the caller is told when a write's
//! outcome cannot be known.
//!
//! Every write reaches its node with an idempotency key: the caller's own (scoped by the caller's
//! name, so two callers' keys never meet) or one the gateway makes up. When the node did not
//! answer after the request may have reached it (a timeout, a connection lost mid-call, a node
//! that could not make the write durable), the write may or may not have been applied: the caller
//! gets DEADLINE_EXCEEDED naming the key to retry with (`domicile-idempotency-key` metadata), and
//! a retry with it is applied at most once. A write that certainly never left (no connection
//! could be made, a refused circuit) stays UNAVAILABLE: nothing was applied.

use domicile_proto::convert::FieldViolation;
use domicile_proto::{CAUSE_METADATA, CAUSE_OUTCOME_UNKNOWN, IDEMPOTENCY_KEY_METADATA};
use domicile_runtime::identity::CallerIdentity;
use domicile_types::RegionId;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::error::node_status;
use crate::guard::SENT_METADATA;

const MAX_KEY: usize = 64;

/// A write's idempotency key: as the caller knows it, and as its node gets it.
#[derive(Debug, Clone)]
pub struct WriteKey {
    caller: String,
    node: String,
}

impl WriteKey {
    /// The caller's key (`given`, checked), or a new one when it sent none.
    pub fn new(caller: &CallerIdentity, given: &str) -> Result<Self, Status> {
        let key = if given.is_empty() {
            let bytes = domicile_runtime::process::random_bytes::<16>()
                .map_err(|_| Status::unavailable("random source unavailable"))?;
            format!("gw-{}", hex::encode(bytes))
        } else if given.len() <= MAX_KEY && given.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)) {
            given.to_owned()
        } else {
            return Err(FieldViolation::new(
                "idempotency_key",
                format!("must be 1-{MAX_KEY} characters of `A-Z`, `a-z`, `0-9`, `.`, `_`, `:` and `-`"),
            )
            .into());
        };
        // Scoped by the caller's name and region, as its identity is: two callers of one name in
        // two regions are two callers, and one's key must not answer (or refuse) the other's write.
        Ok(Self { node: format!("{}:{}/{key}", caller.name, caller.region), caller: key })
    }

    /// The key the node gets.
    pub fn for_node(&self) -> String {
        self.node.clone()
    }
}

/// What the caller of a write is told when its node call failed.
pub fn write_status(region: &RegionId, status: Status, key: &WriteKey) -> Status {
    let cause = status.metadata().get(CAUSE_METADATA).and_then(|v| v.to_str().ok());
    let maybe_applied = match status.code() {
        Code::Unavailable => {
            status.metadata().get(SENT_METADATA).is_some_and(|v| v == "maybe") || cause == Some(CAUSE_OUTCOME_UNKNOWN)
        }
        // A deadline, a cancelled or broken call: the node may have applied it meanwhile.
        Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => true,
        _ => false,
    };
    if !maybe_applied {
        return node_status(region, status);
    }
    tracing::warn!(%region, code = ?status.code(), "write outcome unknown");
    let mut unknown = Status::deadline_exceeded(format!(
        "the outcome of this write is unknown: home region `{region}` did not answer in time; retry it with the \
         same idempotency key (metadata `{IDEMPOTENCY_KEY_METADATA}`), which applies it at most once"
    ));
    if let Ok(value) = MetadataValue::try_from(key.caller.as_str()) {
        unknown.metadata_mut().insert(IDEMPOTENCY_KEY_METADATA, value);
    }
    unknown.metadata_mut().insert(CAUSE_METADATA, MetadataValue::from_static(CAUSE_OUTCOME_UNKNOWN));
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> CallerIdentity {
        CallerIdentity::new("shop", RegionId::parse("eu-central").unwrap(), &[]).unwrap()
    }

    #[test]
    fn keys_are_the_callers_scoped_or_made_up_and_checked() {
        let given = WriteKey::new(&caller(), "order-17:consent").unwrap();
        assert_eq!(given.for_node(), "shop:eu-central/order-17:consent");
        let made = WriteKey::new(&caller(), "").unwrap();
        assert!(made.caller.starts_with("gw-") && made.for_node().starts_with("shop:eu-central/gw-"));
        assert_ne!(made.caller, WriteKey::new(&caller(), "").unwrap().caller);
        for bad in ["a b", "x@y", &"k".repeat(65)] {
            let err = WriteKey::new(&caller(), bad).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(!err.message().contains(bad));
        }
    }

    #[test]
    fn only_a_write_that_may_have_been_applied_is_an_unknown_outcome() {
        let region = RegionId::parse("eu-central").unwrap();
        let key = WriteKey::new(&caller(), "k1").unwrap();
        let sent = |value: &'static str| {
            let mut s = Status::unavailable("region did not answer");
            s.metadata_mut().insert(SENT_METADATA, MetadataValue::from_static(value));
            s
        };
        let unknown = write_status(&region, sent("maybe"), &key);
        assert_eq!(unknown.code(), Code::DeadlineExceeded);
        assert_eq!(unknown.metadata().get(IDEMPOTENCY_KEY_METADATA).unwrap(), "k1");
        assert_eq!(write_status(&region, sent("no"), &key).code(), Code::Unavailable, "never sent: not applied");
        assert_eq!(write_status(&region, Status::deadline_exceeded("t"), &key).code(), Code::DeadlineExceeded);
        let refused = write_status(&region, Status::failed_precondition("held elsewhere"), &key);
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(refused.metadata().get(IDEMPOTENCY_KEY_METADATA).is_none());
    }
}
