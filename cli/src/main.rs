//! The `domicile` binary: everything lives in the library so tests run the same code.

/// mimalloc: the gateway and nodes allocate many small buffers on one thread and free them on
/// another (HTTP/2 tasks and handlers); glibc's arenas make that the costliest part of a batch.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    domicile_cli::main()
}
