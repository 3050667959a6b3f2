//! `domicile import`: reads a source file row by row (`formats`), maps each row through the
//! purpose-mapping file, registers its subject where needed (routed to the home region by its
//! jurisdiction's pack, through the gateway), and writes the entries in batches with
//! `ImportConsent`. Every row gets a receipt (accepted, duplicate, refused with the field and the
//! reason, never a value). A checkpoint file next to the receipts says up to which line every row
//! has its receipt, so a run killed at any point resumes there; rows after it are sent again and
//! the nodes answer those already written as duplicates.
//!
//! Memory stays flat over any file size: rows are parsed on a blocking thread, at most one
//! window of `--group` batches ahead (`window.rs`), into a bounded channel, at most `--in-flight`
//! batches are outstanding, and the subject cache is bounded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::gateway::v1 as pb;
use domicile_proto::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_proto::pb::gateway::v1::subject_selector::Selector;
use domicile_runtime::tls::TlsFiles;
use futures_util::StreamExt as _;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::formats::{self, Format};
use super::mapping::Mapping;
use super::row::{ImportRow, RowError};

/// Subjects remembered across batches (identifiers → subject ref); cleared when full, so memory
/// stays bounded whatever the file holds.
const SUBJECT_CACHE: usize = 200_000;
/// Largest ImportConsent call sent: under the gateway's limit on an import request (1 MiB).
const MAX_CALL_BYTES: usize = 960 * 1024;
/// Attempts for items a region answers with a transient status (with [`backoff`], about half a
/// minute: a region whose gateway circuit opened under the load has time to close it).
pub(super) const MAX_ATTEMPTS: u32 = 12;

/// A status that says "not now" rather than "never": the item is sent again
/// ([`crate::client::send_again`], or shed for load). As a refusal it would be receipted and
/// skipped by every re-run.
pub(super) fn transient(code: tonic::Code) -> bool {
    crate::client::send_again(code) || code == tonic::Code::ResourceExhausted
}

/// 50 ms, doubling, at most 3.2 s.
pub(super) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64 << attempt.min(6))
}

/// Registrations in flight, across all batches: each may claim its identifiers in other regions,
/// and more at once only queue at the nodes, past the gateway's deadline for a node call.
const REGISTRATIONS_IN_FLIGHT: usize = 64;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file to import.
    file: PathBuf,
    /// The source format: onetrust (consent receipts, JSON), fides (consent reports, JSON),
    /// transcend (consent CSV), ketch (consent requests, NDJSON) or ndjson (Domicile's own).
    #[arg(long)]
    format: String,
    /// The purpose-mapping file (TOML, versioned): source purpose or cookie group → purpose ×
    /// channels.
    #[arg(long)]
    mapping: PathBuf,
    /// Per-row receipts (NDJSON, appended). `<receipts>.checkpoint` records how many rows, in
    /// reading order, all have one; a re-run of the same file with the same mapping resumes
    /// after them.
    #[arg(long)]
    receipts: PathBuf,
    /// Check every row as a write would (mapping, subject, residency); write nothing, register
    /// no one.
    #[arg(long)]
    dry_run: bool,
    /// Tell watchers of the imported entries (default: not announced).
    #[arg(long)]
    broadcast: bool,
    /// Rows per ImportConsent call.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Batches in flight.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Rows of this many batches (1–64) are read ahead and the rows that share an identifier
    /// put together, in file order, before they are cut into batches: a region pays for a
    /// subject once per call, not once per row. A re-run after a kill starts at the first row of
    /// such a group. 1 keeps every batch a run of consecutive rows (with `--batch 1`, a pipe's
    /// rows go out as they come).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=64))]
    group: u16,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
    /// The gateway to import through (with --ca, --cert, --key); default: the cluster in
    /// --cluster-dir.
    #[arg(long, requires_all = ["ca", "cert", "key"])]
    gateway: Option<SocketAddr>,
    #[arg(long)]
    ca: Option<PathBuf>,
    #[arg(long)]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
    /// Directory of a cluster started with `domicile cluster up`.
    #[arg(long, default_value = ".domicile", env = "DOMICILE_CLUSTER_DIR")]
    cluster_dir: PathBuf,
}

/// What became of the rows, for the summary.
#[derive(Debug, Default)]
struct Tally {
    accepted: AtomicU64,
    duplicate: AtomicU64,
    refused: AtomicU64,
    /// Rows before the checkpoint of an earlier run.
    skipped: AtomicU64,
    /// Source records that are no consent (receipt status `skipped`).
    not_consent: AtomicU64,
}

/// One row's receipt.
enum Receipt {
    Accepted(u64),
    Duplicate(u64),
    Refused {
        field: String,
        reason: String,
    },
    /// A source record that is not a consent or refusal (e.g. OneTrust PENDING): not imported,
    /// and not an error either.
    Skipped {
        field: String,
        reason: String,
    },
}

/// Where a checkpoint puts a re-run: how many rows, counted from 1 in reading order, all have
/// their receipt, and the digest of every row up to there (`row::feed`).
pub(super) type Checkpoint = (usize, String);

/// A batch: the rows read (with their file position) and the rows refused while reading.
pub(super) struct Batch {
    pub(super) rows: Vec<ImportRow>,
    pub(super) refused: Vec<RowError>,
    /// On the last batch of a window (`window.rs`): the window's end, which the checkpoint
    /// keeps once this batch and every one before it are done.
    pub(super) checkpoint: Option<Checkpoint>,
}

pub async fn run(args: ImportArgs) -> ExitCode {
    match import(args).await {
        Ok(tally) => {
            let refused = tally.refused.load(Ordering::Relaxed);
            if refused > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn connect(args: &ImportArgs) -> anyhow::Result<DomicileClient<Channel>> {
    match (&args.gateway, &args.ca, &args.cert, &args.key) {
        (Some(gateway), Some(ca), Some(cert), Some(key)) => {
            let tls = TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() };
            crate::client::connect(*gateway, &tls).await
        }
        _ => crate::client::connect_to_cluster(&args.cluster_dir).await,
    }
}

fn checkpoint_path(receipts: &Path) -> PathBuf {
    let mut name = receipts.as_os_str().to_owned();
    name.push(".checkpoint");
    PathBuf::from(name)
}

/// The number of rows, in reading order, that all have their receipt (0: none), and the digest
/// of those rows (none in a checkpoint written before it was kept).
fn read_checkpoint(path: &Path) -> anyhow::Result<(usize, Option<String>)> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut parts = text.split_whitespace();
            let line = parts.next().unwrap_or_default();
            let line = line.parse().with_context(|| format!("{} is not a checkpoint", path.display()))?;
            Ok((line, parts.next().map(str::to_owned)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((0, None)),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The digest of the rows read so far, as the checkpoint keeps it.
fn rows_digest(digest: &sha2::Sha256) -> String {
    use sha2::Digest as _;
    digest.clone().finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Replaces the checkpoint atomically (write, sync, rename), after the receipts it covers are
/// synced.
fn write_checkpoint(path: &Path, line: usize, rows_digest: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("checkpoint.tmp");
    let mut file = File::create(&tmp)?;
    writeln!(file, "{line} {rows_digest}")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A run killed while writing a receipt leaves half a line: it goes, so the receipts a re-run
/// appends start on a line of their own (the row is past the checkpoint and gets a new receipt).
fn drop_partial_line(path: &Path) -> anyhow::Result<()> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if bytes.last().is_some_and(|b| *b != b'\n') {
        let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(keep as u64)?;
        file.sync_all()?;
    }
    Ok(())
}

/// Counts the bytes read, for progress and ETA.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

async fn import(args: ImportArgs) -> anyhow::Result<Tally> {
    let format = Format::parse(&args.format).map_err(|e| anyhow::anyhow!("--format: {e}"))?;
    let mapping_text =
        std::fs::read_to_string(&args.mapping).with_context(|| format!("cannot read {}", args.mapping.display()))?;
    let mapping = Mapping::parse(&mapping_text, &args.mapping.display().to_string())
        .map_err(|e| anyhow::anyhow!("the mapping file has problems:\n{e}"))?;
    let mapping_version = mapping.version().to_owned();
    let total_bytes =
        std::fs::metadata(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?.len();
    let file = File::open(&args.file).with_context(|| format!("cannot open {}", args.file.display()))?;
    let checkpoint = checkpoint_path(&args.receipts);
    let (resume_after, resume_digest) = if args.dry_run { (0, None) } else { read_checkpoint(&checkpoint)? };
    let client = connect(&args).await?;
    drop_partial_line(&args.receipts)?;
    let receipts = Arc::new(Mutex::new(BufWriter::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args.receipts)
            .with_context(|| format!("cannot open {}", args.receipts.display()))?,
    )));

    // Rows are parsed on a blocking thread; the channel bounds how many wait.
    let read_bytes = Arc::new(AtomicU64::new(0));
    let (tx, mut batches) = mpsc::channel::<Batch>(args.in_flight.max(1) * 2);
    let batch_size = args.batch.clamp(1, domicile_proto::limits::IMPORT_ITEMS.max);
    let group = usize::from(args.group);
    let counting = Counting { inner: file, read: Arc::clone(&read_bytes) };
    let tally = Arc::new(Tally::default());
    let reader_tally = Arc::clone(&tally);
    let checkpoint_name = checkpoint.display().to_string();
    let format_name = args.format.clone();
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        use sha2::Digest as _;
        let mut window = super::window::Window::new(batch_size, group);
        // Whether every batch went out (else the import has stopped).
        let sent = |batches: Vec<Batch>| batches.into_iter().all(|batch| tx.blocking_send(batch).is_ok());
        // Bound to the format and the mapping's version too: the same file read otherwise gives
        // other rows.
        let mut digest = sha2::Sha256::new();
        digest.update(format!("{format_name}\u{1f}{}\u{1f}", mapping.version()).as_bytes());
        let other_rows = || {
            anyhow::anyhow!(
                "{checkpoint_name} was written for other rows than the first {resume_after} of this file (another file, or this one under another mapping or format): import with another --receipts file, or remove the checkpoint to start from the first row (rows already imported are then answered as duplicates)"
            )
        };
        // Rows are counted in the order the reader yields them (the same for the same file and
        // mapping): the checkpoint is a row count, not a line, since a JSON array on one line
        // puts every record on line 1 and one record may yield several rows.
        let mut read = 0;
        for (ordinal, row) in formats::rows(format, BufReader::with_capacity(1 << 20, counting), &mapping).enumerate() {
            let ordinal = ordinal + 1;
            read = ordinal;
            super::row::feed(&mut digest, &row);
            if ordinal <= resume_after {
                reader_tally.skipped.fetch_add(1, Ordering::Relaxed);
                if ordinal == resume_after && resume_digest.as_ref().is_some_and(|d| *d != rows_digest(&digest)) {
                    return Err(other_rows());
                }
                continue;
            }
            window.push(row);
            // The digest of the rows up to the window's last, made once per window (a SHA-256
            // finished and written in hex per row was a sixth of the importer's CPU).
            if window.is_full() && !sent(window.cut((ordinal, rows_digest(&digest)))) {
                return Ok(());
            }
        }
        if read < resume_after && resume_digest.is_some() {
            return Err(other_rows());
        }
        if !window.is_empty() {
            sent(window.cut((read, rows_digest(&digest))));
        }
        Ok(())
    });

    let started = Instant::now();
    let registrations = Arc::new(tokio::sync::Semaphore::new(REGISTRATIONS_IN_FLIGHT));
    let one_by_one_only = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let subjects: Arc<Mutex<HashMap<String, String>>> = Arc::new(Mutex::new(HashMap::new()));
    let gone: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(HashSet::new()));
    let seen: Arc<Mutex<HashSet<u64>>> = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks: JoinSet<anyhow::Result<(usize, Option<Checkpoint>)>> = JoinSet::new();
    // Batches done out of order, each with its checkpoint if it ends a window: the checkpoint
    // advances over the contiguous prefix only, to the last window whose batches are all in it.
    let mut order = 0usize;
    let mut finished: BTreeMap<usize, Option<Checkpoint>> = BTreeMap::new();
    let mut next_to_checkpoint = 0usize;
    let mut last_progress = Instant::now();
    let mut reading = true;
    loop {
        // Keep `in_flight` batches outstanding.
        while reading && tasks.len() < args.in_flight.max(1) {
            match batches.recv().await {
                Some(mut batch) => {
                    let job = BatchJob {
                        client: client.clone(),
                        subjects: Arc::clone(&subjects),
                        gone: Arc::clone(&gone),
                        seen: Arc::clone(&seen),
                        receipts: Arc::clone(&receipts),
                        tally: Arc::clone(&tally),
                        mapping_version: mapping_version.clone(),
                        dry_run: args.dry_run,
                        broadcast: args.broadcast,
                        registrations: Arc::clone(&registrations),
                        one_by_one_only: Arc::clone(&one_by_one_only),
                    };
                    let index = order;
                    order += 1;
                    let window_end = batch.checkpoint.take();
                    tasks.spawn(async move { job.run(batch).await.map(|()| (index, window_end)) });
                }
                None => reading = false,
            }
        }
        let Some(done) = tasks.join_next().await else { break };
        let (index, window_end) = done.context("an import batch task failed")??;
        finished.insert(index, window_end);
        let mut advanced = None;
        while let Some(window_end) = finished.remove(&next_to_checkpoint) {
            advanced = window_end.or(advanced);
            next_to_checkpoint += 1;
        }
        if let Some((line, rows_digest)) = advanced
            && !args.dry_run
        {
            {
                let mut out = receipts.lock().map_err(|_| anyhow::anyhow!("receipts lock poisoned"))?;
                out.flush()?;
                out.get_ref().sync_data()?;
            }
            write_checkpoint(&checkpoint, line, &rows_digest)?;
        }
        if !args.quiet && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress(&tally, read_bytes.load(Ordering::Relaxed), total_bytes, started.elapsed());
        }
    }
    reader.await.context("the reader thread failed")??;
    receipts.lock().map_err(|_| anyhow::anyhow!("receipts lock poisoned"))?.flush()?;
    if !args.quiet {
        progress(&tally, total_bytes, total_bytes, started.elapsed());
        eprintln!();
    }
    let (a, d, r, s, n) = (
        tally.accepted.load(Ordering::Relaxed),
        tally.duplicate.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.skipped.load(Ordering::Relaxed),
        tally.not_consent.load(Ordering::Relaxed),
    );
    let seconds = started.elapsed().as_secs_f64();
    let verb = if args.dry_run { "would be accepted" } else { "accepted" };
    eprintln!(
        "{a} {verb}, {d} duplicate, {r} refused, {n} not a consent, {s} before the checkpoint in {seconds:.1} s ({:.0} rows/s); receipts in {}",
        (a + d + r) as f64 / seconds.max(1e-9),
        args.receipts.display()
    );
    Ok(Arc::try_unwrap(tally).unwrap_or_default())
}

fn progress(tally: &Tally, read: u64, total: u64, elapsed: Duration) {
    let done = tally.accepted.load(Ordering::Relaxed)
        + tally.duplicate.load(Ordering::Relaxed)
        + tally.refused.load(Ordering::Relaxed);
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
    let fraction = if total == 0 { 1.0 } else { read as f64 / total as f64 };
    let eta = if fraction > 0.0 { elapsed.as_secs_f64() * (1.0 - fraction) / fraction } else { 0.0 };
    eprint!("\r{done} rows, {rate:.0}/s, {:.0}% read, ETA {eta:.0} s   ", fraction * 100.0);
}

/// A row's identifiers: (kind, value).
type Identifiers = Vec<(String, String)>;

/// What one batch needs.
struct BatchJob {
    client: DomicileClient<Channel>,
    subjects: Arc<Mutex<HashMap<String, String>>>,
    /// Subjects (by identity key: whatever a row's jurisdiction) found erased during this run:
    /// their later rows are refused, never registered again.
    gone: Arc<Mutex<HashSet<String>>>,
    /// Subjects an earlier row of this run found (digests of their identity keys): a later row
    /// that finds none was erased meanwhile, not new.
    seen: Arc<Mutex<HashSet<u64>>>,
    receipts: Arc<Mutex<BufWriter<File>>>,
    tally: Arc<Tally>,
    mapping_version: String,
    dry_run: bool,
    broadcast: bool,
    /// Shared by every batch: at most [`REGISTRATIONS_IN_FLIGHT`] registrations at once.
    registrations: Arc<tokio::sync::Semaphore>,
    /// Set once the gateway is found to serve no `RegisterBatch` (`register.rs`).
    one_by_one_only: Arc<std::sync::atomic::AtomicBool>,
}

/// A subject's cache key: its jurisdiction and identifiers, in a stable order.
/// Built in one allocation: it is made several times per row (a formatted string per identifier,
/// joined, cost the importer a tenth of its CPU).
fn subject_key(row: &ImportRow) -> String {
    keyed_by_identifiers(row, &row.jurisdiction)
}

/// `prefix`, then `row`'s identifiers in a stable order, each as kind and value.
fn keyed_by_identifiers(row: &ImportRow, prefix: &str) -> String {
    let mut ids: Vec<&(String, String)> = row.identifiers.iter().collect();
    ids.sort_unstable();
    let length = ids.iter().map(|(kind, value)| kind.len() + value.len() + 2).sum::<usize>();
    let mut key = String::with_capacity(prefix.len() + length);
    key.push_str(prefix);
    for (kind, value) in ids {
        key.push('\u{1e}');
        key.push_str(kind);
        key.push('\u{1f}');
        key.push_str(value);
    }
    key
}

/// What [`BatchJob::register`] found: registrations refused (by subject key), subjects not
/// registered yet (a dry run), refs found.
type Registered = (HashMap<String, tonic::Status>, HashSet<String>, HashMap<String, String>);

/// What the gateway answered for one item.
enum Sent {
    Accepted(u64),
    Duplicate(u64),
    Refused(tonic::Code, String),
}

impl Sent {
    fn receipt(self) -> Receipt {
        match self {
            Sent::Accepted(sequence) => Receipt::Accepted(sequence),
            Sent::Duplicate(sequence) => Receipt::Duplicate(sequence),
            Sent::Refused(_, reason) => Receipt::Refused { field: String::new(), reason },
        }
    }
}

/// The subject a row's identifiers name now (resolved, never registered): `None` if none of them
/// names one; FAILED_PRECONDITION if they name different subjects (an unmerge split them).
async fn resolved_now(
    client: &DomicileClient<Channel>,
    identifiers: &Identifiers,
) -> Result<Option<String>, tonic::Status> {
    let mut found: Option<String> = None;
    for (kind, value) in identifiers {
        let identifier = common::Identifier { kind: kind.clone(), value: value.clone() };
        let request = || pb::ResolveRequest { identifier: Some(identifier.clone()) };
        let reply = retrying(|| {
            let mut client = client.clone();
            let request = request();
            async move { client.resolve(request).await }
        })
        .await;
        let subject_ref = match reply {
            Ok(reply) => reply.into_inner().subject_ref,
            Err(status) if status.code() == tonic::Code::NotFound => continue,
            Err(status) => return Err(status),
        };
        if found.as_ref().is_some_and(|f| *f != subject_ref) {
            return Err(tonic::Status::failed_precondition(
                "the row's identifiers name different subjects now (split by an unmerge)",
            ));
        }
        found = Some(subject_ref);
    }
    Ok(found)
}

/// Subjects [`BatchJob::saw`] remembers at most (about 40 MB).
const SEEN_SUBJECTS: usize = 2_000_000;

/// A row's identifiers, in a stable order, without its jurisdiction: what `seen` and `gone` are
/// keyed by. A person's rows may carry other jurisdictions (Fides and Ketch records carry their
/// own): keyed by the subject key, a row of a person erased during the run under another
/// jurisdiction than the rows that found them was neither known as found nor as erased, and was
/// registered again.
fn identity_key(row: &ImportRow) -> String {
    keyed_by_identifiers(row, "")
}

/// A digest of a row's identity key, for [`BatchJob::saw`] (random per run: collisions are not
/// chosen by the file's author).
fn seen_digest(row: &ImportRow) -> u64 {
    use std::hash::BuildHasher as _;
    static STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    STATE.get_or_init(std::collections::hash_map::RandomState::new).hash_one(identity_key(row))
}

/// The receipt of a row whose subject was erased during the run.
fn erased_during_the_run() -> Receipt {
    refusal(
        "identifiers",
        "the subject was erased (or its identifier removed) during the import: not registered again".to_owned(),
    )
}

fn refusal(field: &str, reason: String) -> Receipt {
    Receipt::Refused { field: field.to_owned(), reason }
}

/// A row's receipt, with what names the row in the receipts file.
fn receipt_of(row: &ImportRow, receipt: Receipt) -> (usize, String, String, Receipt) {
    (row.line, row.source_system.clone(), row.source_event_id.clone(), receipt)
}

/// How a row goes out: by its subject's ref (as `registered` found it, else as `cached`), by its
/// one identifier where `by_identifier`, or not at all (its receipt; a dry run's row whose
/// subject is not registered yet would be accepted).
fn route(
    row: &ImportRow,
    registered: &Registered,
    cached: &HashMap<String, String>,
    by_identifier: bool,
) -> Result<Selector, Receipt> {
    let (failed, unregistered, found) = registered;
    let key = subject_key(row);
    if let Some(status) = failed.get(&key) {
        return Err(refusal("identifiers", format!("registration refused: {}", status.message())));
    }
    if unregistered.contains(&key) {
        return Err(Receipt::Accepted(0));
    }
    if let Some(subject_ref) = found.get(&key).or_else(|| cached.get(&key)) {
        return Ok(Selector::SubjectRef(subject_ref.clone()));
    }
    match (by_identifier, row.identifiers.as_slice()) {
        (true, [(kind, value)]) => {
            Ok(Selector::Identifier(common::Identifier { kind: kind.clone(), value: value.clone() }))
        }
        _ => Err(refusal("identifiers", "the subject could not be resolved".to_owned())),
    }
}

impl BatchJob {
    /// Sends the batch's rows, registering (or, in a dry run, resolving) their subjects where
    /// needed, and writes their receipts.
    ///
    /// A row names its subject by the subject ref cached for its identifiers; failing that, a
    /// row with one identifier names it by that identifier, which the gateway resolves from its
    /// directory, and only a row the gateway finds unregistered is registered and sent again, so
    /// a file with more subjects than the cache holds costs no registration per row. A row with
    /// several identifiers is registered first (registering attaches every one of them).
    async fn run(mut self, batch: Batch) -> anyhow::Result<()> {
        let mut receipts: Vec<(usize, String, String, Receipt)> = batch
            .refused
            .into_iter()
            .map(|e| {
                let skip = e.is_skip();
                let receipt = if skip {
                    Receipt::Skipped { field: e.field, reason: e.reason }
                } else {
                    Receipt::Refused { field: e.field, reason: e.reason }
                };
                (e.line, String::new(), String::new(), receipt)
            })
            .collect();
        let dry_run = self.dry_run;
        let by_identifier = |row: &ImportRow| !dry_run && row.identifiers.len() == 1;
        // The refs the cache holds for this batch's rows (taken now: a concurrent batch may clear
        // the cache), and the subjects this batch must register (or resolve) before sending.
        let mut cached: HashMap<String, String> = HashMap::new();
        let mut wanted: Vec<&ImportRow> = Vec::new();
        let rows: Vec<&ImportRow> = {
            let gone = self.gone.lock().map_err(|_| anyhow::anyhow!("erased subjects poisoned"))?;
            let (erased, rows): (Vec<&ImportRow>, Vec<&ImportRow>) =
                batch.rows.iter().partition(|row| gone.contains(&identity_key(row)));
            receipts.extend(erased.into_iter().map(|row| receipt_of(row, erased_during_the_run())));
            rows
        };
        // Rows of a subject an earlier row found, no longer cached: not registered (it may have
        // been erased since), followed like a moved subject's rows.
        let mut moved: Vec<&ImportRow> = Vec::new();
        let mut routed: Vec<&ImportRow> = Vec::with_capacity(rows.len());
        {
            let cache = self.subjects.lock().map_err(|_| anyhow::anyhow!("subject cache poisoned"))?;
            for row in rows {
                let key = subject_key(row);
                match cache.get(&key) {
                    Some(subject_ref) => {
                        cached.insert(key, subject_ref.clone());
                    }
                    None if !by_identifier(row) && self.seen_before(row)? => {
                        moved.push(row);
                        continue;
                    }
                    None if !by_identifier(row) => wanted.push(row),
                    None => {}
                }
                routed.push(row);
            }
        }
        let registered = self.register(wanted).await?;
        let mut items = Vec::with_capacity(batch.rows.len());
        // Each row sent, and whether it was sent by its identifier.
        // Each row sent, whether it was sent by its identifier, and whether its subject had been
        // found by then (noted before the call: another batch may find it while this one is out).
        let mut sent: Vec<(&ImportRow, bool, bool)> = Vec::with_capacity(routed.len());
        for row in routed {
            match route(row, &registered, &cached, by_identifier(row)) {
                Ok(selector) => {
                    let by_identifier = matches!(selector, Selector::Identifier(_));
                    let found_before = by_identifier && self.seen_before(row)?;
                    items.push(item_of(items.len() as u64, selector, row));
                    sent.push((row, by_identifier, found_before));
                }
                Err(receipt) => receipts.push(receipt_of(row, receipt)),
            }
        }
        // Rows sent by identifier that the gateway found unregistered: registered, then sent by
        // their subject ref, unless a row of the run had found the subject before this one was
        // sent (it was erased since: refused, never registered again). Found only while this
        // call was out, it was registered meanwhile by another batch, or found and erased since:
        // sent once more by identifier, which tells the two apart (told after the call, a subject
        // registered meanwhile looked erased: 1,944 rows of a first run refused). A row sent by
        // its cached ref and refused NOT_FOUND names a subject merged away or erased since it was
        // cached: `send_moved`.
        let mut unknown: Vec<&ImportRow> = Vec::new();
        let mut again: Vec<&ImportRow> = Vec::new();
        let mut erased = Vec::new();
        for (id, outcome) in self.send(items).await? {
            let Some((row, by_identifier, found_before)) = sent.get(id as usize).copied() else { continue };
            match outcome {
                Sent::Refused(tonic::Code::NotFound, _) if found_before => {
                    erased.push(identity_key(row));
                    receipts.push(receipt_of(row, erased_during_the_run()));
                }
                Sent::Refused(tonic::Code::NotFound, _) if by_identifier && self.seen_before(row)? => again.push(row),
                Sent::Refused(tonic::Code::NotFound, _) if by_identifier => unknown.push(row),
                Sent::Refused(tonic::Code::NotFound, _) => moved.push(row),
                outcome => {
                    self.saw_if_found(row, &outcome)?;
                    receipts.push(receipt_of(row, outcome.receipt()));
                }
            }
        }
        if !again.is_empty() {
            for (row, outcome) in self.send_routed(again, &Registered::default(), true, &mut receipts).await? {
                match outcome {
                    // Found before this call by another batch, not found now: erased.
                    Sent::Refused(tonic::Code::NotFound, _) => {
                        erased.push(identity_key(row));
                        receipts.push(receipt_of(row, erased_during_the_run()));
                    }
                    outcome => {
                        self.saw_if_found(row, &outcome)?;
                        receipts.push(receipt_of(row, outcome.receipt()));
                    }
                }
            }
        }
        self.gone.lock().map_err(|_| anyhow::anyhow!("erased subjects poisoned"))?.extend(erased);
        if !moved.is_empty() {
            receipts.extend(self.send_moved(moved).await?);
        }
        if !unknown.is_empty() {
            // The refs as registered now, not as cached: another batch may clear the cache.
            let registered = self.register(unknown.clone()).await?;
            for (row, outcome) in self.send_routed(unknown, &registered, false, &mut receipts).await? {
                self.saw_if_found(row, &outcome)?;
                receipts.push(receipt_of(row, outcome.receipt()));
            }
        }
        receipts.sort_by_key(|r| r.0);
        let mut out = self.receipts.lock().map_err(|_| anyhow::anyhow!("receipts lock poisoned"))?;
        for (line, source_system, source_event_id, receipt) in receipts {
            let value = match receipt {
                Receipt::Accepted(sequence) => {
                    self.tally.accepted.fetch_add(1, Ordering::Relaxed);
                    json!({ "line": line, "source_system": source_system, "source_event_id": source_event_id, "status": if self.dry_run { "would_accept" } else { "accepted" }, "sequence": sequence })
                }
                Receipt::Duplicate(sequence) => {
                    self.tally.duplicate.fetch_add(1, Ordering::Relaxed);
                    json!({ "line": line, "source_system": source_system, "source_event_id": source_event_id, "status": "duplicate", "sequence": sequence })
                }
                Receipt::Skipped { field, reason } => {
                    self.tally.not_consent.fetch_add(1, Ordering::Relaxed);
                    json!({ "line": line, "status": "skipped", "field": field, "reason": reason })
                }
                Receipt::Refused { field, reason } => {
                    self.tally.refused.fetch_add(1, Ordering::Relaxed);
                    json!({ "line": line, "source_system": source_system, "source_event_id": source_event_id, "status": "refused", "field": field, "reason": reason })
                }
            };
            writeln!(out, "{value}")?;
        }
        Ok(())
    }

    /// Whether an earlier row of this run found `row`'s subject (by a digest of its identity key).
    fn seen_before(&self, row: &ImportRow) -> anyhow::Result<bool> {
        let seen = self.seen.lock().map_err(|_| anyhow::anyhow!("seen subjects poisoned"))?;
        Ok(seen.contains(&seen_digest(row)))
    }

    /// [`Self::saw`] when `outcome` shows the row's subject was found (not in a dry run, whose
    /// rows may name subjects not registered yet).
    fn saw_if_found(&self, row: &ImportRow, outcome: &Sent) -> anyhow::Result<()> {
        if !self.dry_run && matches!(outcome, Sent::Accepted(_) | Sent::Duplicate(_)) {
            self.saw(row)?;
        }
        Ok(())
    }

    /// Remembers that `row`'s subject was found (a bounded set: past [`SEEN_SUBJECTS`] it starts
    /// again, and a subject erased after that is told only by its cached ref).
    fn saw(&self, row: &ImportRow) -> anyhow::Result<()> {
        let mut seen = self.seen.lock().map_err(|_| anyhow::anyhow!("seen subjects poisoned"))?;
        if seen.len() >= SEEN_SUBJECTS {
            seen.clear();
        }
        seen.insert(seen_digest(row));
        Ok(())
    }

    /// Rows whose cached subject ref names nobody now: that subject was merged into another, or
    /// erased. Each is sent again by its first identifier, which the gateway resolves to the
    /// subject it names now (the merged one: the capture scope an import has is enough); one it
    /// finds nowhere was erased: refused, and the subject's later rows of this run with it, never
    /// registered again. Before, every such row was refused, a withdrawal included, and the
    /// checkpoint moved past it, so a merge during an import lost rows for good.
    async fn send_moved(&mut self, rows: Vec<&ImportRow>) -> anyhow::Result<Vec<(usize, String, String, Receipt)>> {
        {
            let mut cache = self.subjects.lock().map_err(|_| anyhow::anyhow!("subject cache poisoned"))?;
            for row in &rows {
                cache.remove(&subject_key(row));
            }
        }
        let mut receipts = Vec::new();
        let mut erased = Vec::new();
        let (mut items, mut sent) = (Vec::new(), Vec::new());
        // Several identifiers may name several subjects now (an unmerge split them): resolved,
        // each, where the certificate allows (`context`), at most REGISTRATIONS_IN_FLIGHT subjects
        // at once, and sent only where they agree. Without `context`, by the first identifier.
        let wanted: HashMap<String, Identifiers> = rows
            .iter()
            .filter(|row| row.identifiers.len() > 1)
            .map(|row| (subject_key(row), row.identifiers.clone()))
            .collect();
        let client = self.client.clone();
        let now: HashMap<String, Result<Option<String>, tonic::Status>> = futures_util::stream::iter(wanted)
            .map(|(key, identifiers)| {
                let client = client.clone();
                async move { (key, resolved_now(&client, &identifiers).await) }
            })
            .buffer_unordered(REGISTRATIONS_IN_FLIGHT)
            .collect()
            .await;
        for row in rows {
            let by_first = || {
                row.identifiers.first().map(|(kind, value)| {
                    Selector::Identifier(common::Identifier { kind: kind.clone(), value: value.clone() })
                })
            };
            let selector = match now.get(&subject_key(row)) {
                None => by_first(),
                Some(Ok(Some(subject_ref))) => Some(Selector::SubjectRef(subject_ref.clone())),
                Some(Ok(None)) => None,
                Some(Err(status)) if status.code() == tonic::Code::PermissionDenied => by_first(),
                Some(Err(status)) if transient(status.code()) => anyhow::bail!(
                    "following a merged subject kept failing ({:?}: {}); re-run to resume",
                    status.code(),
                    status.message()
                ),
                Some(Err(status)) => {
                    receipts.push(receipt_of(row, refusal("identifiers", status.message().to_owned())));
                    continue;
                }
            };
            match selector {
                Some(selector) => {
                    items.push(item_of(items.len() as u64, selector, row));
                    sent.push(row);
                }
                None => {
                    erased.push(identity_key(row));
                    receipts.push(receipt_of(row, erased_during_the_run()));
                }
            }
        }
        // The refs found go back in the cache: the subject's later rows need no resolving again.
        {
            let mut cache = self.subjects.lock().map_err(|_| anyhow::anyhow!("subject cache poisoned"))?;
            for (key, found) in &now {
                if let Ok(Some(subject_ref)) = found
                    && cache.len() < SUBJECT_CACHE
                {
                    cache.insert(key.clone(), subject_ref.clone());
                }
            }
        }
        for (id, outcome) in self.send(items).await? {
            let Some(row) = sent.get(id as usize).copied() else { continue };
            match outcome {
                Sent::Refused(tonic::Code::NotFound, _) => {
                    erased.push(identity_key(row));
                    receipts.push(receipt_of(row, erased_during_the_run()));
                }
                outcome => receipts.push(receipt_of(row, outcome.receipt())),
            }
        }
        self.gone.lock().map_err(|_| anyhow::anyhow!("erased subjects poisoned"))?.extend(erased);
        Ok(receipts)
    }

    /// Registers (in `RegisterBatch` calls: `register.rs`) or, in a dry run, resolves (one call
    /// each, `REGISTRATIONS_IN_FLIGHT` at a time) the subjects of `rows`, and caches them: the registrations refused (by subject key), in a dry run the
    /// subjects not registered yet, and the refs found (the caller uses these, not the cache,
    /// which a concurrent batch may clear in between).
    async fn register(&self, rows: Vec<&ImportRow>) -> anyhow::Result<Registered> {
        let mut wanted: Vec<(String, String, Identifiers)> = Vec::new();
        let mut keys: HashSet<String> = HashSet::new();
        for row in rows {
            let key = subject_key(row);
            if keys.insert(key.clone()) {
                wanted.push((key, row.jurisdiction.clone(), row.identifiers.clone()));
            }
        }
        let client = self.client.clone();
        let permits = Arc::clone(&self.registrations);
        let found: Vec<(String, Result<Option<String>, tonic::Status>)> = if self.dry_run {
            futures_util::stream::iter(wanted)
                .map(move |(key, jurisdiction, identifiers)| {
                    let client = client.clone();
                    let permits = Arc::clone(&permits);
                    async move {
                        // Never closed: the semaphore lives as long as the run.
                        let _permit = permits.acquire_owned().await.ok();
                        (key, subject_of(&client, jurisdiction, identifiers, true).await)
                    }
                })
                .buffer_unordered(REGISTRATIONS_IN_FLIGHT)
                .collect()
                .await
        } else {
            super::register::register_all(&client, wanted, &permits, &self.one_by_one_only).await
        };
        let mut failed: HashMap<String, tonic::Status> = HashMap::new();
        let mut unregistered: HashSet<String> = HashSet::new();
        let mut refs: HashMap<String, String> = HashMap::new();
        let mut cache = self.subjects.lock().map_err(|_| anyhow::anyhow!("subject cache poisoned"))?;
        if cache.len() + found.len() > SUBJECT_CACHE {
            cache.clear();
        }
        for (key, result) in found {
            match result {
                Ok(Some(subject_ref)) => {
                    cache.insert(key.clone(), subject_ref.clone());
                    refs.insert(key, subject_ref);
                }
                Ok(None) => {
                    unregistered.insert(key);
                }
                // Still "not now" after the retries: no receipts for this batch, so a re-run
                // sends it again rather than skipping rows refused for a passing reason.
                Err(status) if transient(status.code()) => anyhow::bail!(
                    "registration kept failing ({:?}: {}); re-run to resume",
                    status.code(),
                    status.message()
                ),
                Err(status) => {
                    failed.insert(key, status);
                }
            }
        }
        Ok((failed, unregistered, refs))
    }

    /// Sends `items` in calls under the gateway's request size limit; the outcome of each (by
    /// item id). Items a region answered with a transient status (a conflict with a concurrent
    /// write to the subject, a region failing over) are sent again, never receipted as refused:
    /// a refusal before the checkpoint would not be retried by a re-run.
    /// Sends `rows` again, each as [`route`] routes it with `registered` and no cached ref: each
    /// row sent with what the gateway answered; a row that cannot be routed gets its receipt.
    async fn send_routed<'r>(
        &mut self,
        rows: Vec<&'r ImportRow>,
        registered: &Registered,
        by_identifier: bool,
        receipts: &mut Vec<(usize, String, String, Receipt)>,
    ) -> anyhow::Result<Vec<(&'r ImportRow, Sent)>> {
        let mut items = Vec::with_capacity(rows.len());
        let mut sent: Vec<&ImportRow> = Vec::with_capacity(rows.len());
        for row in rows {
            match route(row, registered, &HashMap::new(), by_identifier) {
                Ok(selector) => {
                    items.push(item_of(items.len() as u64, selector, row));
                    sent.push(row);
                }
                Err(receipt) => receipts.push(receipt_of(row, receipt)),
            }
        }
        let answered = self.send(items).await?;
        Ok(answered.into_iter().filter_map(|(id, outcome)| Some((*sent.get(id as usize)?, outcome))).collect())
    }

    async fn send(&mut self, items: Vec<pb::ImportConsentItem>) -> anyhow::Result<Vec<(u64, Sent)>> {
        let mut chunks: Vec<Vec<pb::ImportConsentItem>> = Vec::new();
        let mut size = 0usize;
        for item in items {
            let len = domicile_proto::prost::Message::encoded_len(&item) + 8;
            if chunks.last().is_none_or(|c| size + len > MAX_CALL_BYTES && !c.is_empty()) {
                chunks.push(Vec::new());
                size = 0;
            }
            size += len;
            if let Some(chunk) = chunks.last_mut() {
                chunk.push(item);
            }
        }
        let mut out = Vec::new();
        for chunk in chunks {
            let mut pending = chunk;
            let mut attempt = 0u32;
            while !pending.is_empty() {
                let request = pb::ImportConsentRequest {
                    items: pending.clone(),
                    broadcast: self.broadcast,
                    mapping_version: self.mapping_version.clone(),
                    dry_run: self.dry_run,
                };
                let reply = match self.client.import_consent(request).await {
                    Ok(reply) => reply.into_inner(),
                    // Too large for this gateway (one older than its 1 MiB import limit): the
                    // same call would be refused every time.
                    Err(status)
                        if status.code() == tonic::Code::ResourceExhausted
                            && status.message().starts_with("request message larger than") =>
                    {
                        anyhow::bail!(
                            "the gateway refuses import calls of {} KiB ({}); is it older than this CLI?",
                            MAX_CALL_BYTES / 1024,
                            status.message()
                        )
                    }
                    Err(status) if transient(status.code()) && attempt < MAX_ATTEMPTS => {
                        attempt += 1;
                        tokio::time::sleep(backoff(attempt)).await;
                        continue;
                    }
                    // The outcome is unknown: no receipts, so the checkpoint does not pass the
                    // batch and a re-run sends it again (the nodes apply each entry once).
                    Err(status) => anyhow::bail!(
                        "an ImportConsent call failed ({:?}: {}); re-run to resume",
                        status.code(),
                        status.message()
                    ),
                };
                // An item the reply leaves unanswered has an unknown outcome: receipted as anything,
                // or left without a receipt while the batch counts as done, the checkpoint would
                // pass a row that may never have been written.
                let missing = unanswered(&pending, &reply.outcomes);
                if missing > 0 {
                    anyhow::bail!(
                        "the gateway answered no outcome for {missing} of {} items; re-run to resume",
                        pending.len()
                    );
                }
                let mut again = Vec::new();
                for outcome in reply.outcomes {
                    let sent = match outcome.result {
                        Some(pb::import_consent_outcome::Result::Accepted(s)) => Sent::Accepted(s),
                        Some(pb::import_consent_outcome::Result::Duplicate(s)) => Sent::Duplicate(s),
                        Some(pb::import_consent_outcome::Result::Refused(e))
                            if transient(tonic::Code::from_i32(e.code)) =>
                        {
                            if attempt >= MAX_ATTEMPTS {
                                anyhow::bail!("a region kept refusing an item ({}); re-run to resume", e.message);
                            }
                            if let Some(item) = pending.iter().find(|i| i.id == outcome.id) {
                                again.push(item.clone());
                            }
                            continue;
                        }
                        Some(pb::import_consent_outcome::Result::Refused(e)) => {
                            Sent::Refused(tonic::Code::from_i32(e.code), e.message)
                        }
                        // Counted by `unanswered` above, which failed the call.
                        None => continue,
                    };
                    out.push((outcome.id, sent));
                }
                if !again.is_empty() {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                pending = again;
            }
        }
        Ok(out)
    }
}

/// How many of `pending` the `outcomes` of their call leave without a result.
fn unanswered(pending: &[pb::ImportConsentItem], outcomes: &[pb::ImportConsentOutcome]) -> usize {
    let answered: HashSet<u64> = outcomes.iter().filter(|o| o.result.is_some()).map(|o| o.id).collect();
    pending.iter().filter(|item| !answered.contains(&item.id)).count()
}

/// The subject a row names: registered (the gateway routes it to its home region; registering
/// known identifiers returns their subject), or in a dry run resolved, `None` when it is not
/// registered yet.
pub(super) async fn subject_of(
    client: &DomicileClient<Channel>,
    jurisdiction: String,
    identifiers: Identifiers,
    dry_run: bool,
) -> Result<Option<String>, tonic::Status> {
    let identifiers: Vec<common::Identifier> =
        identifiers.into_iter().map(|(kind, value)| common::Identifier { kind, value }).collect();
    let (jurisdiction, identifiers) = (&jurisdiction, &identifiers);
    retrying(|| {
        let mut client = client.clone();
        async move { try_subject_of(&mut client, jurisdiction, identifiers, dry_run).await }
    })
    .await
}

/// `call`, made again after a transient failure (backing off), up to [`MAX_ATTEMPTS`] times.
async fn retrying<T, Fut>(mut call: impl FnMut() -> Fut) -> Result<T, tonic::Status>
where
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(status) if transient(status.code()) && attempt < MAX_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
            other => return other,
        }
    }
}

async fn try_subject_of(
    client: &mut DomicileClient<Channel>,
    jurisdiction: &str,
    identifiers: &[common::Identifier],
    dry_run: bool,
) -> Result<Option<String>, tonic::Status> {
    if dry_run {
        let Some(first) = identifiers.first().cloned() else { return Ok(None) };
        return match client.resolve(pb::ResolveRequest { identifier: Some(first) }).await {
            Ok(reply) => Ok(Some(reply.into_inner().subject_ref)),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(status),
        };
    }
    let reply = client
        .register(pb::RegisterRequest {
            jurisdiction: jurisdiction.to_owned(),
            identifiers: identifiers.to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(Some(reply.into_inner().subject_ref))
}

fn item_of(id: u64, selector: Selector, row: &ImportRow) -> pb::ImportConsentItem {
    let action = match row.action {
        domicile_types::ConsentAction::Grant => common::ConsentAction::Grant,
        domicile_types::ConsentAction::Deny => common::ConsentAction::Deny,
        domicile_types::ConsentAction::Withdraw => common::ConsentAction::Withdraw,
    };
    pb::ImportConsentItem {
        id,
        subject: Some(pb::SubjectSelector { selector: Some(selector) }),
        purpose: row.purpose.as_str().to_owned(),
        channels: row.channels.iter().map(|c| c.as_str().to_owned()).collect(),
        action: action as i32,
        evidence: Some(common::Evidence {
            notice_version: row.notice_version.clone(),
            source_system: row.source_system.clone(),
            ..Default::default()
        }),
        captured_at: Some(domicile_proto::prost_types::Timestamp {
            seconds: row.captured_at_ms.div_euclid(1000),
            nanos: (row.captured_at_ms.rem_euclid(1000) * 1_000_000) as i32,
        }),
        expires_at: row.expires_at.map(domicile_proto::convert::to_timestamp),
        source_system: row.source_system.clone(),
        source_event_id: row.source_event_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item of a call must come back with a result: one left out, or answered without
    /// one, is counted (and fails the call), whatever else the reply holds.
    #[test]
    fn items_a_reply_leaves_unanswered_are_counted() {
        let item = |id| pb::ImportConsentItem { id, ..Default::default() };
        let outcome = |id, result| pb::ImportConsentOutcome { id, result };
        let accepted = Some(pb::import_consent_outcome::Result::Accepted(7));
        let pending = [item(0), item(1), item(2)];
        let all = [outcome(0, accepted.clone()), outcome(1, accepted.clone()), outcome(2, accepted.clone())];
        assert_eq!(unanswered(&pending, &all), 0);
        let one_left_out = [outcome(0, accepted.clone()), outcome(2, accepted.clone())];
        assert_eq!(unanswered(&pending, &one_left_out), 1);
        let without_result = [outcome(0, accepted.clone()), outcome(1, None), outcome(2, accepted.clone())];
        assert_eq!(unanswered(&pending, &without_result), 1);
        // An answer for an item not sent stands for none of those sent.
        let other_ids = [outcome(0, accepted.clone()), outcome(1, accepted.clone()), outcome(9, accepted)];
        assert_eq!(unanswered(&pending, &other_ids), 1);
    }
}
