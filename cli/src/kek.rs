//! `domicile kek`: rotating a PostgreSQL region's key-encryption key (KEK), the operator step
//! that makes erasure reach every copy PostgreSQL keeps (deploy/README.md, "Erasure on
//! PostgreSQL"). Each subject's data key is stored wrapped under a KEK version kept in a file
//! beside the node, never in the database; an erased subject's wrapped key can linger in old row
//! versions, WAL, standbys and backups, and becomes unreadable once the version that wrapped it is
//! retired. The steps, in order: `add` (a new version), restart every replica of the region (each
//! wraps new keys with it from then on), `rewrap` (every stored key under the new version),
//! `retire` (the older versions leave the file; refused while a stored key still needs one).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use domicile_node::NodeConfig;
use domicile_node::StoreConfig;
use domicile_node::store::pg_store::{Keks, PgConfig, PgStore};

#[derive(Debug, Subcommand)]
pub enum KekCommand {
    /// Add a new KEK version to the region's KEK file. Then restart every replica of the
    /// region (copy the file to each first, if each has its own copy), then run `rewrap`.
    Add {
        /// The node's configuration file (its `[store]` names the database and the KEK file).
        #[arg(long)]
        config: PathBuf,
    },
    /// Re-wrap every subject key of the region's database under the newest KEK version. Run
    /// after every replica was restarted with the new version.
    Rewrap {
        #[arg(long)]
        config: PathBuf,
    },
    /// Remove every older KEK version from the file, once no stored key is wrapped with one:
    /// the copies of erased subjects' keys that PostgreSQL still keeps become unreadable. Then
    /// restart every replica (copy the file to each first).
    Retire {
        #[arg(long)]
        config: PathBuf,
    },
}

pub async fn run(command: KekCommand) -> anyhow::Result<()> {
    match command {
        KekCommand::Add { config } => {
            let (_, pg) = postgres_config(&config)?;
            let version = Keks::add_version(&pg.kek_file)?;
            println!(
                "KEK version {version} added to {}. Next: restart every replica of the region with this file, \
                 then `domicile kek rewrap --config {}`.",
                pg.kek_file.display(),
                config.display()
            );
        }
        KekCommand::Rewrap { config } => {
            let store = open(&config).await?;
            let moved = store.rewrap_keys().await?;
            let current = store.kek_versions().last().copied().unwrap_or_default();
            println!(
                "{moved} subject key(s) re-wrapped under KEK version {current}. Next: `domicile kek retire --config {}`.",
                config.display()
            );
        }
        KekCommand::Retire { config } => {
            let (_, pg) = postgres_config(&config)?;
            let store = open(&config).await?;
            let current = store.kek_versions().last().copied().unwrap_or_default();
            let still: Vec<String> = store
                .keys_per_version()
                .await?
                .into_iter()
                .filter(|(version, count)| *version != current && *count > 0)
                .map(|(version, count)| format!("{count} under version {version}"))
                .collect();
            if !still.is_empty() {
                bail!(
                    "stored subject keys still need an older KEK version ({}): run `domicile kek rewrap` after \
                     every replica runs with version {current}; nothing was retired",
                    still.join(", ")
                );
            }
            let retired = Keks::retire_older(&pg.kek_file)?;
            println!(
                "Retired KEK version(s) {retired:?} from {}: every copy of a key they wrapped is unreadable. \
                 Next: restart every replica of the region with this file.",
                pg.kek_file.display()
            );
        }
    }
    Ok(())
}

fn postgres_config(path: &Path) -> anyhow::Result<(NodeConfig, PgConfig)> {
    let config = NodeConfig::load(path)?;
    match &config.store {
        StoreConfig::Postgres(pg) => {
            let pg = pg.clone();
            Ok((config, pg))
        }
        StoreConfig::Sled => bail!(
            "{} keeps the region in the embedded store, whose keys are erased in place; KEK rotation is for \
             PostgreSQL regions",
            path.display()
        ),
    }
}

async fn open(path: &Path) -> anyhow::Result<PgStore> {
    let (config, pg) = postgres_config(path)?;
    PgStore::open(&pg, &config.region).await.context("cannot open the region's database")
}
