//! Compiles the .proto files with protox (pure Rust), so a fresh machine needs only cargo.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let common = root.join("domicile/common/v1/common.proto");
    let gateway = root.join("domicile/gateway/v1/gateway.proto");
    let node = root.join("domicile/node/v1/node.proto");
    // compile_fds() emits no rerun-if-changed of its own.
    println!("cargo:rerun-if-changed={}", root.join("domicile").display());
    let fds = protox::compile([&common, &gateway, &node], [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let encode = protox::prost::Message::encode_to_vec;
    // compile_fds() does not write descriptor sets for us. Every service, for tests and tools:
    std::fs::write(out.join("domicile_descriptor.bin"), encode(&fds))?;
    // and one per process, each service with what it imports: what that process's reflection
    // lists (a gateway does not advertise the node API, nor a node the gateway's).
    std::fs::write(out.join("gateway_descriptor.bin"), encode(&protox::compile([&gateway], [&root])?))?;
    std::fs::write(out.join("node_descriptor.bin"), encode(&protox::compile([&node], [&root])?))?;
    // Messages and servers. Servers read requests with `wire::RequestCodec`, so a request that is
    // not valid protobuf is INVALID_ARGUMENT (the caller's fault), not tonic's INTERNAL.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .codec_path("crate::wire::RequestCodec")
        .type_attribute(".", "#[allow(clippy::all)]")
        .compile_fds(fds.clone())?;
    // Clients, over the messages above (`extern_path`: nothing generated twice), with tonic's
    // own codec: a reply that is not valid protobuf is the server's fault and stays INTERNAL.
    let clients = out.join("clients");
    std::fs::create_dir_all(&clients)?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .out_dir(&clients)
        .extern_path(".domicile", "crate::pb")
        .compile_fds(fds)?;
    Ok(())
}
