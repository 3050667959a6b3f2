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
