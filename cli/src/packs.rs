//! `domicile packs …`: the authoring loop for legal teams (validate, test).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use domicile_policy::{PackSet, run_test_files};
use domicile_runtime::packs::{PackLoadError, read_sources, read_test_sources};

#[derive(Debug, Subcommand)]
pub enum PacksCommand {
    /// Check every pack; prints all problems with file:line:column. Exit 1 on any error.
    Validate {
        #[arg(default_value = "policy-packs")]
        dir: PathBuf,
    },
    /// Run every pack's tests (`<pack>/tests/*.toml`) and report rule coverage. Exit 1 on any
    /// failure, a pack without tests, or a rule no test covers.
    Test {
        #[arg(default_value = "policy-packs")]
        dir: PathBuf,
    },
}

pub fn run(command: PacksCommand) -> ExitCode {
    match command {
        PacksCommand::Validate { dir } => match compile(&dir) {
            Some(set) => {
                println!("{} packs valid", set.len());
                ExitCode::SUCCESS
            }
            None => ExitCode::FAILURE,
        },
        PacksCommand::Test { dir } => test(&dir),
    }
}

fn compile(dir: &Path) -> Option<PackSet> {
    let sources = match read_sources(dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return None;
        }
    };
    match PackSet::compile(&sources) {
        Ok((set, warnings)) => {
            for w in warnings {
                eprintln!("{w}");
            }
            Some(set)
        }
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            eprintln!("{} error(s)", diagnostics.errors().count());
            None
        }
    }
}

fn test(dir: &Path) -> ExitCode {
    let Some(set) = compile(dir) else { return ExitCode::FAILURE };
    let mut ok = true;
    let (mut passed, mut failed) = (0, 0);
    for pack in set.packs() {
        let sources = match read_test_sources(Path::new(pack.path())) {
            Ok(s) => s,
            Err(e @ PackLoadError::Io { .. }) | Err(e) => {
                eprintln!("error: {e}");
                ok = false;
                continue;
            }
        };
        if sources.is_empty() {
            eprintln!("error: pack `{}` has no tests", pack.id());
            ok = false;
            continue;
        }
        match run_test_files(pack, &sources) {
            Ok(report) => {
                print!("{report}");
                if !report.to_string().ends_with('\n') {
                    println!();
                }
                passed += report.passed;
                failed += report.failed;
                ok &= report.all_passed();
                for rule in &report.uncovered_rules {
                    eprintln!("error: rule `{rule}` of pack `{}` is not covered by any test", pack.id());
                    ok = false;
                }
            }
            Err(diagnostics) => {
                eprint!("{diagnostics}");
                ok = false;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
