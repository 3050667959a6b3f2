//! `domicile rights …`: data-subject rights for operators of a region, at the subject's home
//! node with a certificate of that region (the node serves full data only to its own region:
//! in-region only). Each command prints what it did and the rights request it recorded (deadline
//! from the subject's pack, with its citation), in words or, with `--json`, as JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as pb;
use serde_json::{Value, json};

use crate::records::NodeConnection;

#[path = "rights_tracked.rs"]
mod tracked;

#[derive(Debug, Args)]
pub struct RightsArgs {
    #[command(subcommand)]
    command: RightsCommand,
    #[command(flatten)]
    node: NodeConnection,
    /// The subject (its subject ref, `region/hex`).
    #[arg(long, global = true, default_value = "")]
    subject_ref: String,
    /// Print JSON instead of words.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum RightsCommand {
    /// Right of access: the subject's data (identifiers, profile, consent ledger) as the
    /// `domicile.export.v1` JSON document.
    Export {
        /// Where the document goes (default: stdout; the summary then goes to stderr).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        authority: Authority,
    },
    /// Right to erasure: identifiers, profile, ledger and interactions destroyed (crypto-shredded).
    Erase {
        /// Makes a retry safe (applied once).
        #[arg(long, default_value = "")]
        idempotency_key: String,
        #[command(flatten)]
        authority: Authority,
    },
    #[command(flatten)]
    Tracked(tracked::TrackedCommand),
    /// Right to restriction: nothing is processed for the subject until lifted (honoured on
    /// receipt; `--request` names the restriction request it answers).
    Restrict {
        #[command(flatten)]
        authority: Authority,
    },
    /// Lift a restriction (needs `--request` or `--override`).
    Lift {
        #[command(flatten)]
        authority: Authority,
    },
    /// Right to rectification: identifiers added or removed (`KIND=VALUE`), profile fields set
    /// (`NAME=VALUE`) or removed.
    Rectify {
        #[arg(long = "add")]
        add: Vec<String>,
        #[arg(long = "remove")]
        remove: Vec<String>,
        #[arg(long = "set")]
        set: Vec<String>,
        #[arg(long = "unset")]
        unset: Vec<String>,
        #[command(flatten)]
        authority: Authority,
    },
    /// The subject's rights requests with their deadlines, newest last; overdue ones marked.
    Requests,
    /// The subject's hand-off context (latest interaction per channel, open intents, profile).
    Context {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// The subject's consent ledger and what is in force.
    History,
}

/// On what authority a right is carried out: a verified request, or an operator's override (the
/// node says which rights need one).
#[derive(Debug, Args)]
#[group(required = false, multiple = false)]
struct Authority {
    /// The verified rights request this answers (`rights open`, then `rights verify`).
    #[arg(long = "request")]
    request: Option<String>,
    /// An operator's override of the verification (needs the admin scope), audited as one:
    /// identity_checked_in_person, court_order, regulator_order, legal_obligation or
    /// controller_correction.
    #[arg(long = "override")]
    override_reason: Option<String>,
}

impl Authority {
    fn fields(self) -> (String, String) {
        (self.request.unwrap_or_default(), self.override_reason.unwrap_or_default())
    }
}

fn key(subject_ref: &str) -> Option<common::SubjectKey> {
    Some(common::SubjectKey { key: Some(common::subject_key::Key::SubjectRef(subject_ref.to_owned())) })
}

/// `KIND=VALUE` or `NAME=VALUE`; the error names the flag, never the value.
fn pair(flag: &str, text: &str) -> anyhow::Result<(String, String)> {
    text.split_once('=')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .with_context(|| format!("--{flag} takes NAME=VALUE"))
}

pub(super) fn time(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.and_then(|t| jiff::Timestamp::from_second(t.seconds).ok()).map_or(Value::Null, |t| json!(t.to_string()))
}

/// A rights request as JSON, with whether it is overdue now.
pub(super) fn request_json(r: &common::RightsRequest, now: i64) -> Value {
    let open = !matches!(r.status.as_str(), "completed" | "refused" | "linked");
    let due = if r.extended_at.is_some() { r.extended_deadline_at.as_ref() } else { r.deadline_at.as_ref() };
    let overdue = open && due.is_some_and(|d| d.seconds < now);
    json!({
        "request_id": r.request_id,
        "kind": r.kind,
        "status": r.status,
        "reason": r.reason,
        "linked_to": r.linked_to,
        "override_reason": r.override_reason,
        "verified_at": time(r.verified_at.as_ref()),
        "extended_at": time(r.extended_at.as_ref()),
        "received_at": time(r.received_at.as_ref()),
        "deadline_at": time(r.deadline_at.as_ref()),
        "extended_deadline_at": time(r.extended_deadline_at.as_ref()),
        "completed_at": time(r.completed_at.as_ref()),
        "deadline_basis": r.deadline_basis,
        "citation": r.citation,
        "overdue": overdue,
    })
}

pub(super) fn describe_request(r: &Value) -> String {
    let deadline = match r["deadline_at"].as_str() {
        Some(d) => format!("due {d}"),
        None => "no deadline".to_owned(),
    };
    format!(
        "{} request {} {} ({}; {}{}){}",
        r["kind"].as_str().unwrap_or_default(),
        r["request_id"].as_str().unwrap_or_default(),
        r["status"].as_str().unwrap_or_default(),
        deadline,
        r["deadline_basis"].as_str().unwrap_or_default(),
        r["citation"].as_str().filter(|c| !c.is_empty()).map(|c| format!("; {c}")).unwrap_or_default(),
        if r["overdue"] == true { " OVERDUE" } else { "" }
    )
}

pub async fn run(args: RightsArgs) -> ExitCode {
    match rights(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn rights(args: RightsArgs) -> anyhow::Result<()> {
    let region_wide = matches!(args.command, RightsCommand::Tracked(ref c) if c.region_wide());
    anyhow::ensure!(region_wide || !args.subject_ref.is_empty(), "--subject-ref is required");
    let mut node = args.node.connect().await?;
    let now = domicile_runtime::process::now_unix();
    let subject = key(&args.subject_ref);
    let status = |e: tonic::Status| anyhow::anyhow!("{:?}: {}", e.code(), e.message());
    // An export without --out writes the document on stdout: the summary goes to stderr then.
    let summary_on_stderr = matches!(args.command, RightsCommand::Export { out: None, .. });
    let restricted = matches!(args.command, RightsCommand::Restrict { .. });
    let (summary, words): (Value, String) = match args.command {
        RightsCommand::Tracked(command) => tracked::run(&mut node, command, subject, now).await?,
        RightsCommand::Export { out, authority } => {
            let (request_id, override_reason) = authority.fields();
            let reply = node
                .export(pb::ExportRequest { subject, request_id, override_reason })
                .await
                .map_err(status)?
                .into_inner();
            match &out {
                Some(path) => {
                    std::fs::write(path, &reply.document).with_context(|| format!("cannot write {}", path.display()))?
                }
                None => {
                    use std::io::Write as _;
                    std::io::stdout().write_all(&reply.document)?;
                }
            }
            let request = reply.rights_request.as_ref().map_or(Value::Null, |r| request_json(r, now));
            let words = format!("exported ({} bytes); {}", reply.document.len(), describe_request(&request));
            (
                json!({ "subject_ref": reply.subject_ref, "bytes": reply.document.len(), "rights_request": request }),
                words,
            )
        }
        RightsCommand::Erase { idempotency_key, authority } => {
            let (request_id, override_reason) = authority.fields();
            let reply = node
                .erase(pb::EraseRequest { subject, idempotency_key, request_id, override_reason })
                .await
                .map_err(status)?
                .into_inner();
            let request = reply.rights_request.as_ref().map_or(Value::Null, |r| request_json(r, now));
            let words = format!(
                "erased: {} consent records, {} links dropped; {}",
                reply.consent_records_erased,
                reply.links.len(),
                describe_request(&request)
            );
            (
                json!({ "subject_ref": reply.subject_ref, "consent_records_erased": reply.consent_records_erased, "links_dropped": reply.links.len(), "rights_request": request }),
                words,
            )
        }
        RightsCommand::Restrict { authority } | RightsCommand::Lift { authority } => {
            let (request_id, override_reason) = authority.fields();
            let reply = node
                .restrict(pb::RestrictRequest {
                    subject,
                    restricted,
                    idempotency_key: String::new(),
                    request_id,
                    override_reason,
                })
                .await
                .map_err(status)?
                .into_inner();
            let request = reply.rights_request.as_ref().map_or(Value::Null, |r| request_json(r, now));
            let words = format!(
                "{}; {}",
                if reply.restricted { "restricted" } else { "restriction lifted" },
                describe_request(&request)
            );
            (
                json!({ "subject_ref": reply.subject_ref, "restricted": reply.restricted, "rights_request": request }),
                words,
            )
        }
        RightsCommand::Rectify { add, remove, set, unset, authority } => {
            let (request_id, override_reason) = authority.fields();
            let identifier =
                |flag: &str, text: &String| pair(flag, text).map(|(kind, value)| common::Identifier { kind, value });
            let request = pb::RectifyRequest {
                subject,
                add_identifiers: add.iter().map(|t| identifier("add", t)).collect::<anyhow::Result<_>>()?,
                remove_identifiers: remove.iter().map(|t| identifier("remove", t)).collect::<anyhow::Result<_>>()?,
                set_profile: set.iter().map(|t| pair("set", t)).collect::<anyhow::Result<_>>()?,
                remove_profile: unset,
                request_id,
                override_reason,
                ..Default::default()
            };
            let reply = node.rectify(request).await.map_err(status)?.into_inner();
            let request = reply.rights_request.as_ref().map_or(Value::Null, |r| request_json(r, now));
            let words = format!(
                "rectified: {} links added, {} removed; {}",
                reply.links_added.len(),
                reply.links_removed.len(),
                describe_request(&request)
            );
            (
                json!({ "subject_ref": reply.subject_ref, "links_added": reply.links_added.len(), "links_removed": reply.links_removed.len(), "rights_request": request }),
                words,
            )
        }
        RightsCommand::Requests => {
            let reply = node
                .list_rights_requests(pb::ListRightsRequestsRequest { subject })
                .await
                .map_err(status)?
                .into_inner();
            let requests: Vec<Value> = reply.requests.iter().map(|r| request_json(r, now)).collect();
            let words = if requests.is_empty() {
                "no rights requests".to_owned()
            } else {
                requests.iter().map(describe_request).collect::<Vec<_>>().join("\n")
            };
            (json!({ "subject_ref": reply.subject_ref, "requests": requests }), words)
        }
        RightsCommand::Context { limit } => {
            let reply = node
                .get_context(pb::GetContextRequest { subject, limit, ..Default::default() })
                .await
                .map_err(status)?
                .into_inner();
            let interactions: Vec<Value> = reply
                .recent
                .iter()
                .map(|i| json!({ "channel": i.channel, "kind": i.kind, "intent": i.intent, "summary": i.summary, "occurred_at": time(i.occurred_at.as_ref()), "open": i.open }))
                .collect();
            let mut words = format!(
                "open intents: {}\nprofile: {}",
                if reply.open_intents.is_empty() { "none".to_owned() } else { reply.open_intents.join(", ") },
                reply.profile.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
            );
            for i in &interactions {
                words.push_str(&format!(
                    "\n{} {} {} {}{}",
                    i["occurred_at"].as_str().unwrap_or_default(),
                    i["channel"].as_str().unwrap_or_default(),
                    i["kind"].as_str().unwrap_or_default(),
                    i["intent"].as_str().unwrap_or_default(),
                    if i["open"] == true { " (open)" } else { "" }
                ));
            }
            (
                json!({ "subject_ref": reply.subject_ref, "open_intents": reply.open_intents, "profile": reply.profile, "recent": interactions }),
                words,
            )
        }
        RightsCommand::History => {
            let reply = node
                .consent_history(pb::ConsentHistoryRequest { subject, ..Default::default() })
                .await
                .map_err(status)?
                .into_inner();
            let entries: Vec<Value> = reply
                .entries
                .iter()
                .map(|e| {
                    let evidence = e.evidence.clone().unwrap_or_default();
                    json!({ "sequence": e.sequence, "purpose": e.purpose, "channels": e.channels, "state": e.state, "captured_at": time(e.captured_at.as_ref()), "expires_at": time(e.expires_at.as_ref()), "source_system": evidence.source_system, "notice_version": evidence.notice_version, "consent_kind": evidence.consent_kind, "hours": evidence.hours })
                })
                .collect();
            let in_force: Vec<Value> = reply
                .in_force
                .iter()
                .map(
                    |c| json!({ "purpose": c.purpose, "channel": c.channel, "state": c.state, "sequence": c.sequence }),
                )
                .collect();
            let mut words =
                format!("jurisdiction {}{}", reply.jurisdiction, if reply.restricted { ", restricted" } else { "" });
            for c in &in_force {
                words.push_str(&format!(
                    "\nin force: {} by {}: {} (entry {})",
                    c["purpose"].as_str().unwrap_or_default(),
                    c["channel"].as_str().unwrap_or_default(),
                    c["state"].as_str().unwrap_or_default(),
                    c["sequence"]
                ));
            }
            (
                json!({ "subject_ref": reply.subject_ref, "jurisdiction": reply.jurisdiction, "restricted": reply.restricted, "entries": entries, "in_force": in_force }),
                words,
            )
        }
    };
    let text = if args.json { summary.to_string() } else { words };
    if summary_on_stderr {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    Ok(())
}
