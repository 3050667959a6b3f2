//! `domicile node check`: a stopped embedded-store node's files verified offline (store, key
//! slots, audit log against each other; `domicile_node::store::check_sled`). Exit 0 when sound,
//! 1 naming every problem found, 2 when the files cannot be checked at all.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use domicile_node::config::StoreConfig;
use domicile_types::RegionId;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Verify a stopped node's files: every sealed record opens under its subject's key, links
    /// and metadata agree, key slots are whole, the audit chain verifies and still holds every
    /// entry it synced. Names each damaged file and what is wrong; prints no personal data.
    Check {
        /// The node's configuration (its data directory and region).
        #[arg(long, conflicts_with_all = ["data_dir", "region"], required_unless_present = "data_dir")]
        config: Option<PathBuf>,
        /// The node's data directory (with --region), e.g. a restored copy without a config.
        #[arg(long, requires = "region")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        region: Option<RegionId>,
        /// Print the report as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: NodeCommand) -> ExitCode {
    let NodeCommand::Check { config, data_dir, region, json } = command;
    let (dir, region) = match (config, data_dir, region) {
        (Some(path), _, _) => match domicile_node::NodeConfig::load(&path) {
            Ok(config) if matches!(config.store, StoreConfig::Sled) => (config.data_dir, config.region),
            Ok(_) => {
                eprintln!(
                    "error: this node keeps its state in PostgreSQL: check the database with its own tools \
                     (pg_amcheck) and the audit chain with `domicile audit verify --database-url`"
                );
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        (None, Some(dir), Some(region)) => (dir, region),
        _ => {
            eprintln!("error: give --config, or --data-dir and --region");
            return ExitCode::from(64);
        }
    };
    if !dir.is_dir() {
        eprintln!("error: {} is not a directory", dir.display());
        return ExitCode::from(2);
    }
    let report = domicile_node::store::check_sled(&dir, &region);
    if json {
        match serde_json::to_string(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        println!(
            "{}: {} subjects, {} sealed records, {} audit entries",
            dir.display(),
            report.subjects,
            report.sealed_records,
            report.audit_entries
        );
        for note in &report.notes {
            println!("note: {note}");
        }
        for problem in &report.problems {
            println!("DAMAGED: {problem}");
        }
        println!(
            "{}",
            if report.is_sound() { "sound" } else { "damaged: do not serve from these files; restore from a backup" }
        );
    }
    if report.is_sound() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
