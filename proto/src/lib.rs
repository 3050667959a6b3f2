//! Domicile's wire contracts.
//!
//! `pb` holds the generated types; `convert` turns them into validated domain types at the edge,
//! so no business function ever takes a `pb` type. Conversion errors name the offending field and
//! never echo its value (invariant 8).

pub mod convert;

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
        }
    }
    pub mod node {
        pub mod v1 {
            tonic::include_proto!("domicile.node.v1");
        }
    }
}

/// Encoded descriptors of every Domicile service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("domicile_descriptor");

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
    }
}
