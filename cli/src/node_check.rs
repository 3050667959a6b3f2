//! `domicile node check | backup | restore`: a region's embedded-store files, offline and online.
//!
//! - `check`: a stopped node's files verified (store, key slots, audit log against each other;
//!   `domicile_node::store::check_sled`). Exit 0 when sound, 1 naming every problem found, 2 when
//!   the files cannot be checked at all.
//! - `backup`: an online backup streamed from a running node (`Backup`) into a new directory,
//!   checked against its manifest.
//! - `restore`: a backup rebuilt into a new data directory, the erasure journal replayed, then
//!   checked like `check`.

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
    /// Take an online backup of a running embedded-store node: its database, key slots and audit
    /// log of one instant (writes wait while it is taken, decisions do not), written to a new
    /// directory and checked against the manifest. Needs a certificate of an operator of the
    /// node's region with the `admin` scope. The backup is the region's personal data: keep it
    /// encrypted and in the region.
    Backup {
        /// The node's address, `host:port`.
        #[arg(long)]
        addr: String,
        /// The node's region (its certificate names `<region>.node.domicile.internal`).
        #[arg(long)]
        region: RegionId,
        /// The cluster CA (PEM).
        #[arg(long)]
        ca: PathBuf,
        /// The operator's certificate and key (PEM).
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Directory to create and write the backup into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Rebuild a region's data directory from a backup (offline, into a new directory), replay
    /// the erasure journal (every subject erased after the backup is erased again), and check
    /// the result. A restore that fails leaves a directory no node opens (`restore.pending`):
    /// delete it and restore again. Then point the node's `data_dir` at it, start it, restart the
    /// gateways, and run `domicile cluster repair-ownership` (claims made after the backup are
    /// gone).
    Restore {
        /// The backup directory (`node backup --out`).
        #[arg(long)]
        from: PathBuf,
        /// The new data directory (absent or empty).
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        region: RegionId,
        /// The region's erasure journal as it is now (the node's `erasure_journal_file`); may be
        /// given more than once. Without it, erasures made after the backup come back.
        #[arg(long)]
        erasures: Vec<PathBuf>,
        /// Restore although no erasure journal is given.
        #[arg(long)]
        without_erasure_journal: bool,
    },
}

pub async fn run(command: NodeCommand) -> ExitCode {
    match command {
        NodeCommand::Check { config, data_dir, region, json } => check(config, data_dir, region, json),
        NodeCommand::Backup { addr, region, ca, cert, key, out } => {
            let tls = domicile_runtime::tls::TlsFiles { ca, cert, key };
            match backup(&addr, &region, &tls, &out).await {
                Ok(manifest) => {
                    println!(
                        "backup of {region} in {}: {} subjects, audit entry {}, change event {}",
                        out.display(),
                        manifest.subjects,
                        manifest.audit_seq,
                        manifest.last_event
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        NodeCommand::Restore { from, data_dir, region, erasures, without_erasure_journal } => {
            if erasures.is_empty() && !without_erasure_journal {
                eprintln!(
                    "error: give the region's erasure journal (--erasures FILE), or --without-erasure-journal \
                     to restore knowing that erasures made after the backup come back"
                );
                return ExitCode::from(64);
            }
            match restore(&from, &data_dir, &region, &erasures).await {
                Ok(replayed) => {
                    println!(
                        "restored {region} into {} ({replayed} merges and erasures replayed from the journal)",
                        data_dir.display()
                    );
                    check(None, Some(data_dir), Some(region), false)
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

async fn backup(
    addr: &str,
    region: &RegionId,
    tls: &domicile_runtime::tls::TlsFiles,
    out: &std::path::Path,
) -> anyhow::Result<domicile_node::store::BackupManifest> {
    use anyhow::Context as _;
    use domicile_proto::pb::node::v1 as pb;
    use std::io::Write as _;
    domicile_runtime::tls::install_crypto_provider();
    let material = domicile_runtime::tls::TlsMaterial::load(tls)?;
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(material.client(&region.node_server_name()))?
        .connect()
        .await
        .with_context(|| format!("cannot reach the node at {addr}"))?;
    let mut client = pb::regional_node_client::RegionalNodeClient::new(channel).max_decoding_message_size(4 << 20);
    // The backup holds every subject's key: readable by its owner only.
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(out)
            .with_context(|| format!("cannot create {} (it must not exist)", out.display()))?;
    }
    let mut stream = client.backup(pb::BackupRequest {}).await.context("the node refused the backup")?.into_inner();
    let mut current: Option<(String, std::fs::File)> = None;
    while let Some(chunk) = stream.message().await.context("the backup stream failed")? {
        let name = chunk.file;
        // A file name the node sends must be a plain name: nothing outside `out` is written.
        anyhow::ensure!(
            !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..",
            "the node sent an invalid file name"
        );
        if current.as_ref().is_none_or(|(open, _)| *open != name) {
            if let Some((_, file)) = current.take() {
                file.sync_all()?;
            }
            let path = out.join(&name);
            let file = {
                use std::os::unix::fs::OpenOptionsExt as _;
                std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)
            }
            .with_context(|| format!("cannot create {}", path.display()))?;
            current = Some((name, file));
        }
        if let Some((_, file)) = current.as_mut() {
            file.write_all(&chunk.data)?;
        }
    }
    if let Some((_, file)) = current.take() {
        file.sync_all()?;
    }
    verify_backup(out)
}

/// Checks every file of a backup against its manifest.
fn verify_backup(dir: &std::path::Path) -> anyhow::Result<domicile_node::store::BackupManifest> {
    Ok(domicile_node::store::read_backup(dir)?)
}

async fn restore(
    from: &std::path::Path,
    into: &std::path::Path,
    region: &RegionId,
    journals: &[PathBuf],
) -> anyhow::Result<usize> {
    let mut read = Vec::new();
    for journal in journals {
        read.push((journal.display().to_string(), domicile_node::store::read_erasure_journal(journal)?));
    }
    let erased = domicile_node::store::combine_journals(read)?;
    // Until the journal is replayed and flushed, `into` is marked as a restore in progress and
    // no node opens it: a failure here leaves nothing to serve.
    let now = domicile_runtime::process::now_unix();
    let (_, replayed) = domicile_node::store::restore_sled(from, into, region, &erased, now).await?;
    Ok(replayed)
}

fn check(config: Option<PathBuf>, data_dir: Option<PathBuf>, region: Option<RegionId>, json: bool) -> ExitCode {
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
