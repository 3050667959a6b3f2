//! Domicile's wire contracts.
//!
//! `pb` holds the generated types; `convert` turns them into validated domain types at the edge,
//! so no business function ever takes a `pb` type. Conversion errors name the offending field and
//! never echo its value (invariant 8).

pub mod convert;
pub mod limits;
pub mod raw;
pub mod wire;

#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "generated code")]
pub mod pb {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("domicile.common.v1");
        }
    }
    pub mod gateway {
        pub mod v1 {
            tonic::include_proto!("domicile.gateway.v1");
            include!(concat!(env!("OUT_DIR"), "/clients/domicile.gateway.v1.rs"));
        }
    }
    pub mod node {
        pub mod v1 {
            tonic::include_proto!("domicile.node.v1");
            include!(concat!(env!("OUT_DIR"), "/clients/domicile.node.v1.rs"));
        }
    }
}

/// Status metadata key by which a node marks a status its gateway must pass to the caller as it
/// is, rather than read as the region failing: the value names the cause. Set only on statuses
/// whose code alone would mislead (UNAVAILABLE or DEADLINE_EXCEEDED that are not an outage of
/// the node itself).
pub const CAUSE_METADATA: &str = "domicile-cause";
/// [`CAUSE_METADATA`]: the region arbitrating an identifier could not be reached (identifier
/// ownership); the node itself serves.
pub const CAUSE_ARBITER_UNREACHABLE: &str = "arbiter-unreachable";
/// [`CAUSE_METADATA`]: a write's outcome is unknown; retry it with the same idempotency key.
pub const CAUSE_OUTCOME_UNKNOWN: &str = "outcome-unknown";
/// Status metadata key holding the idempotency key to retry a write with.
pub const IDEMPOTENCY_KEY_METADATA: &str = "domicile-idempotency-key";

/// Encoded descriptors of every Domicile service (tests and tools; each process serves one of
/// the two below).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("domicile_descriptor");

/// `domicile.gateway.v1.Domicile` with what it imports: what a gateway's reflection lists.
pub const GATEWAY_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("gateway_descriptor");

/// `domicile.node.v1.RegionalNode` with what it imports: what a node's reflection lists.
pub const NODE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("node_descriptor");

pub use prost;
pub use prost_types;
pub use tonic;

/// The gRPC method paths (`/package.Service/Method`) of every service in encoded descriptor
/// sets, sorted: the closed set of values RPC metrics may label a call with.
pub fn method_paths(descriptor_sets: &[&[u8]]) -> Vec<String> {
    use prost::Message as _;
    let mut paths = Vec::new();
    for set in descriptor_sets {
        // Compiled-in constants: one that does not decode contributes nothing.
        let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else { continue };
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                let service_name = match package {
                    "" => service.name().to_owned(),
                    package => format!("{package}.{}", service.name()),
                };
                paths.extend(service.method.iter().map(|m| format!("/{service_name}/{}", m.name())));
            }
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

#[cfg(test)]
mod tests {
    #[test]
    fn method_paths_name_every_service_method() {
        let paths = super::method_paths(&[super::FILE_DESCRIPTOR_SET]);
        assert!(paths.iter().any(|p| p == "/domicile.gateway.v1.Domicile/Decide"), "{paths:?}");
        assert!(paths.iter().any(|p| p == "/domicile.node.v1.RegionalNode/DecideBatch"), "{paths:?}");
        assert!(paths.iter().all(|p| p.starts_with("/domicile.")), "{paths:?}");
        // The hand-written wire types name real methods.
        for path in [super::raw::DECIDE_BATCH_PATH, super::raw::DECIDE_STREAM_PATH] {
            assert!(paths.iter().any(|p| p == path), "{path}");
        }
    }

    /// Each process lists only the service it serves, with every file that service imports.
    #[test]
    fn each_process_descriptor_set_holds_its_own_service_and_its_imports() {
        use prost::Message as _;
        for (set, service) in [
            (super::GATEWAY_DESCRIPTOR_SET, "/domicile.gateway.v1.Domicile/"),
            (super::NODE_DESCRIPTOR_SET, "/domicile.node.v1.RegionalNode/"),
        ] {
            let paths = super::method_paths(&[set]);
            assert!(!paths.is_empty() && paths.iter().all(|p| p.starts_with(service)), "{paths:?}");
            let set = prost_types::FileDescriptorSet::decode(set).unwrap();
            let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
            for file in &set.file {
                for dependency in &file.dependency {
                    assert!(names.contains(&dependency.as_str()), "{service}: {dependency} missing");
                }
            }
        }
    }

    /// The gateway forwards a node's encoded `DecideOutcome`s as `DecideStreamResult`s
    /// (gateway/src/raw.rs): every field must match in number, type, label and oneof.
    #[test]
    fn decide_outcome_and_decide_stream_result_are_one_message_on_the_wire() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let message = |package: &str, name: &str| {
            let file = set.file.iter().find(|f| f.package() == package).unwrap();
            let message = file.message_type.iter().find(|m| m.name() == name).unwrap();
            let mut fields: Vec<_> = message
                .field
                .iter()
                .map(|f| (f.number(), f.r#type(), f.label(), f.type_name().to_owned(), f.oneof_index))
                .collect();
            fields.sort_by_key(|f| f.0);
            fields
        };
        let node = message("domicile.node.v1", "DecideOutcome");
        assert!(!node.is_empty());
        assert_eq!(node, message("domicile.gateway.v1", "DecideStreamResult"));
    }
}
