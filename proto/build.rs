//! Compiles the .proto files with protox (pure Rust), so a fresh machine needs only cargo.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let files = [
        root.join("domicile/common/v1/common.proto"),
        root.join("domicile/gateway/v1/gateway.proto"),
        root.join("domicile/node/v1/node.proto"),
    ];
    // compile_fds() emits no rerun-if-changed of its own.
    println!("cargo:rerun-if-changed={}", root.join("domicile").display());
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Served by tonic-reflection; compile_fds() does not write it for us.
    std::fs::write(out.join("domicile_descriptor.bin"), protox::prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .type_attribute(".", "#[allow(clippy::all)]")
        .compile_fds(fds)?;
    Ok(())
}
