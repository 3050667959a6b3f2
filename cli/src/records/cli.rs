//! `domicile records export | import`: a subject's consent ledger as standard records, read from
//! and written to its home node directly with a certificate of an operator of that region (the
//! node refuses callers of other regions: in-region only).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as pb;
use domicile_types::{Channel, ConsentState, Purpose, RegionId};
use tonic::transport::Channel as GrpcChannel;

use super::{Entry, Principal, iso27560, kantara};

#[derive(Debug, Subcommand)]
pub enum RecordsCommand {
    /// Write a subject's consent ledger as ISO/IEC TS 27560 records (JSON-LD, DPV terms) or
    /// Kantara Consent Receipts v1.1, from its home node.
    Export {
        #[command(flatten)]
        node: NodeConnection,
        /// The subject (its subject ref, `region/hex`).
        #[arg(long)]
        subject_ref: String,
        #[arg(long, value_enum)]
        format: Format,
        /// Kantara `piiControllers[].piiController`: the deploying organisation's name.
        #[arg(long, default_value = "")]
        controller: String,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The region's consent report for auditors, streamed from its node: every consent in force
    /// (one row per subject, purpose and channel, with the evidence of the entry that put it in
    /// force) or, with `--ledger`, every ledger entry recorded in [--from, --until). Subjects by
    /// subject ref, never identifiers. Needs an operator of the region with `admin`.
    Report {
        #[command(flatten)]
        node: NodeConnection,
        /// Ledger entries instead of the consent in force.
        #[arg(long)]
        ledger: bool,
        /// With --ledger: entries recorded at or after this time (RFC 3339).
        #[arg(long, requires = "ledger")]
        from: Option<String>,
        /// With --ledger: entries recorded before this time (RFC 3339).
        #[arg(long, requires = "ledger")]
        until: Option<String>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Csv)]
        format: ReportFormat,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Record the entries of standard records (as `export` writes them) in a subject's ledger,
    /// oldest first, each with its original capture time and evidence. Safe to run twice within
    /// 24 hours: each entry is sent with an idempotency key derived from the record.
    Import {
        #[command(flatten)]
        node: NodeConnection,
        #[arg(long)]
        subject_ref: String,
        #[arg(long, value_enum)]
        format: Format,
        /// The records file.
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Csv,
    Ndjson,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Iso27560,
    Kantara,
}

/// A node of a region, and an operator certificate of that region.
#[derive(Debug, Args)]
pub struct NodeConnection {
    /// The node's address, `host:port`.
    #[arg(long)]
    addr: String,
    /// The node's region (its certificate names `<region>.node.domicile.internal`).
    #[arg(long)]
    region: RegionId,
    /// The cluster CA (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// The operator's certificate and key (PEM); a caller of the node's region.
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
}

impl NodeConnection {
    pub(crate) async fn connect(&self) -> anyhow::Result<pb::regional_node_client::RegionalNodeClient<GrpcChannel>> {
        domicile_runtime::tls::install_crypto_provider();
        let tls =
            domicile_runtime::tls::TlsFiles { ca: self.ca.clone(), cert: self.cert.clone(), key: self.key.clone() };
        let material = domicile_runtime::tls::TlsMaterial::load(&tls)?;
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", self.addr))?
            .tls_config(material.client(&self.region.node_server_name()))?
            .connect()
            .await
            .with_context(|| format!("cannot reach the node at {}", self.addr))?;
        Ok(pb::regional_node_client::RegionalNodeClient::new(channel))
    }
}

fn subject_key(subject_ref: &str) -> common::SubjectKey {
    common::SubjectKey { key: Some(common::subject_key::Key::SubjectRef(subject_ref.to_owned())) }
}

pub async fn run(command: RecordsCommand) -> ExitCode {
    let result = match command {
        RecordsCommand::Export { node, subject_ref, format, controller, out } => {
            export(&node, &subject_ref, format, &controller, out).await
        }
        RecordsCommand::Import { node, subject_ref, format, file } => import(&node, &subject_ref, format, &file).await,
        RecordsCommand::Report { node, ledger, from, until, format, out } => {
            report(&node, ledger, from.as_deref(), until.as_deref(), format, out).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn export(
    node: &NodeConnection,
    subject_ref: &str,
    format: Format,
    controller: &str,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut client = node.connect().await?;
    let history = client
        .consent_history(pb::ConsentHistoryRequest { subject: Some(subject_key(subject_ref)), ..Default::default() })
        .await
        .context("the node refused the ledger")?
        .into_inner();
    let principal = Principal { subject_ref: history.subject_ref.clone(), jurisdiction: history.jurisdiction.clone() };
    let entries = history.entries.iter().map(entry_from_pb).collect::<anyhow::Result<Vec<_>>>()?;
    let value = match format {
        Format::Iso27560 => iso27560::export(&principal, &entries),
        Format::Kantara => kantara::export(&principal, &entries, controller),
    };
    let text = serde_json::to_string_pretty(&value)?;
    match out {
        Some(path) => std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{text}"),
    }
    eprintln!("{} ledger entries exported", entries.len());
    Ok(())
}

async fn import(node: &NodeConnection, subject_ref: &str, format: Format, file: &PathBuf) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let mut entries = match format {
        Format::Iso27560 => iso27560::import(&value),
        Format::Kantara => kantara::import(&value),
    }
    .map_err(anyhow::Error::msg)?;
    // The ledger orders by capture time (then arrival): send them in that order.
    entries.sort_by_key(|e| (e.captured_at, e.sequence));
    let mut client = node.connect().await?;
    for (index, entry) in entries.iter().enumerate() {
        let action = match entry.state {
            ConsentState::Granted => common::ConsentAction::Grant,
            ConsentState::Denied => common::ConsentAction::Deny,
            ConsentState::Withdrawn => common::ConsentAction::Withdraw,
        };
        // From what the entry is, not where the file lies: the same entries imported again,
        // from any path, are applied once (for 24 hours).
        let channels: Vec<&str> = entry.channels.iter().map(|c| c.as_str()).collect();
        let expires = entry.expires_at.map(|t| t.to_string()).unwrap_or_default();
        let captured = entry.captured_at.to_string();
        let channels = channels.join(",");
        let hours = entry.hours.join(",");
        let mut parts = vec![
            subject_ref,
            entry.purpose.as_str(),
            &channels,
            entry.state.as_str(),
            &captured,
            &expires,
            &entry.notice_version,
            &entry.source_system,
        ];
        // Only when set, so keys of entries without them stay what earlier versions sent.
        if !entry.consent_kind.is_empty() || !entry.hours.is_empty() {
            parts.extend([entry.consent_kind.as_str(), hours.as_str()]);
        }
        let key = format!("import:{}", &super::stable_id(&parts)[..32]);
        client
            .record_consent(pb::RecordConsentRequest {
                subject: Some(subject_key(subject_ref)),
                purpose: entry.purpose.as_str().to_owned(),
                channels: entry.channels.iter().map(|c| c.as_str().to_owned()).collect(),
                action: action as i32,
                evidence: Some(common::Evidence {
                    notice_version: entry.notice_version.clone(),
                    capture_channel: entry.capture_channel.map(|c| c.as_str().to_owned()).unwrap_or_default(),
                    source_system: entry.source_system.clone(),
                    double_opt_in_confirmed: entry.double_opt_in_confirmed,
                    signal: None,
                    consent_kind: entry.consent_kind.clone(),
                    hours: entry.hours.clone(),
                }),
                captured_at: Some(domicile_proto::convert::to_timestamp(entry.captured_at)),
                expires_at: entry.expires_at.map(domicile_proto::convert::to_timestamp),
                caller_region: String::new(),
                idempotency_key: key,
            })
            .await
            .with_context(|| format!("entry {index} of {}", file.display()))?;
    }
    eprintln!("{} ledger entries recorded", entries.len());
    Ok(())
}

fn entry_from_pb(entry: &common::ConsentEntry) -> anyhow::Result<Entry> {
    let evidence = entry.evidence.clone().unwrap_or_default();
    Ok(Entry {
        sequence: entry.sequence,
        purpose: Purpose::parse(&entry.purpose)?,
        channels: entry.channels.iter().map(|c| Channel::parse(c)).collect::<Result<_, _>>()?,
        state: ConsentState::parse(&entry.state)?,
        captured_at: entry.captured_at.as_ref().map_or(0, |t| t.seconds),
        expires_at: entry.expires_at.as_ref().map(|t| t.seconds),
        notice_version: evidence.notice_version,
        source_system: evidence.source_system,
        capture_channel: Channel::parse(&evidence.capture_channel).ok(),
        double_opt_in_confirmed: evidence.double_opt_in_confirmed,
        consent_kind: evidence.consent_kind,
        hours: evidence.hours,
    })
}

/// Columns of the CSV report, in order (NDJSON objects use the same names).
const REPORT_COLUMNS: [&str; 17] = [
    "subject_ref",
    "jurisdiction",
    "sequence",
    "purpose",
    "channels",
    "state",
    "captured_at",
    "recorded_at",
    "expires_at",
    "notice_version",
    "source_system",
    "capture_channel",
    "double_opt_in_confirmed",
    "signal",
    // After the columns of the first version, so a reader of those keeps working.
    "consent_kind",
    "hours",
    // Kept with both halves of an unmerge for review: counted for neither as a grant.
    "review",
];

fn timestamp(text: Option<&str>, flag: &str) -> anyhow::Result<Option<prost_types::Timestamp>> {
    text.map(|t| {
        let at: jiff::Timestamp = t.parse().with_context(|| format!("{flag} is not an RFC 3339 time"))?;
        Ok(domicile_proto::convert::to_timestamp(at.as_second()))
    })
    .transpose()
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_owned() }
}

async fn report(
    node: &NodeConnection,
    ledger: bool,
    from: Option<&str>,
    until: Option<&str>,
    format: ReportFormat,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let request =
        pb::ConsentReportRequest { ledger, from: timestamp(from, "--from")?, until: timestamp(until, "--until")? };
    let mut client = node.connect().await?;
    let mut stream = client.consent_report(request).await.context("the node refused the report")?.into_inner();
    let mut writer: Box<dyn std::io::Write> = match &out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    if matches!(format, ReportFormat::Csv) {
        writeln!(writer, "{}", REPORT_COLUMNS.join(","))?;
    }
    let time = |t: Option<&prost_types::Timestamp>| {
        t.and_then(|t| jiff::Timestamp::from_second(t.seconds).ok()).map(|t| t.to_string()).unwrap_or_default()
    };
    let mut rows = 0u64;
    while let Some(row) = stream.message().await.context("the report stream failed")? {
        let entry = row.entry.unwrap_or_default();
        let evidence = entry.evidence.unwrap_or_default();
        let channels = if row.channel.is_empty() { entry.channels.join(" ") } else { row.channel };
        let values = [
            row.subject_ref,
            row.jurisdiction,
            entry.sequence.to_string(),
            entry.purpose,
            channels,
            entry.state,
            time(entry.captured_at.as_ref()),
            time(entry.recorded_at.as_ref()),
            time(entry.expires_at.as_ref()),
            evidence.notice_version,
            evidence.source_system,
            evidence.capture_channel,
            evidence.double_opt_in_confirmed.to_string(),
            evidence.signal.map(|s| s.kind).unwrap_or_default(),
            evidence.consent_kind,
            evidence.hours.join(" "),
            entry.review.to_string(),
        ];
        match format {
            ReportFormat::Csv => {
                let line: Vec<String> = values.iter().map(|v| csv_field(v)).collect();
                writeln!(writer, "{}", line.join(","))?;
            }
            ReportFormat::Ndjson => {
                let object: serde_json::Map<String, serde_json::Value> = REPORT_COLUMNS
                    .iter()
                    .zip(values)
                    .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v)))
                    .collect();
                writeln!(writer, "{}", serde_json::Value::Object(object))?;
            }
        }
        rows += 1;
    }
    writer.flush()?;
    eprintln!("{rows} rows");
    Ok(())
}
