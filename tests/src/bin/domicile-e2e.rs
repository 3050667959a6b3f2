//! The `domicile` CLI, unchanged, under a name the test harness can locate.

fn main() -> std::process::ExitCode {
    domicile_cli::main()
}
