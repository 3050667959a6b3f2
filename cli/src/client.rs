//! Calling a running gateway: register, consent, decide, resolve.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::gateway::v1 as pb;
use domicile_proto::pb::gateway::v1::domicile_client::DomicileClient;
use domicile_runtime::pki::GATEWAY_SERVER_NAME;
use domicile_runtime::tls::{TlsFiles, TlsMaterial, install_crypto_provider};
use domicile_types::{Channel as ContactChannel, ConsentAction, IdentifierKind, Purpose, UnknownTerm};
use tonic::transport::{Channel, Endpoint};

/// A status that says a keyed write may be sent again as it is: its outcome is unknown (a
/// deadline; CANCELLED, the gateway's answer to a call it cut at its own deadline, tonic's
/// "Timeout expired"; a region that did not answer) or it lost a race (ABORTED). Its idempotency
/// key, or the source event id of an imported entry, applies it at most once.
pub(crate) fn send_again(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Aborted | tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    )
}

/// A value parser for a closed vocabulary of `domicile_types`: the help lists every term (so
/// `--help` shows what the gateway accepts), and anything else is refused before a call is made.
fn vocabulary<T: Copy + Send + Sync + 'static>(
    terms: &'static [T],
    name: fn(T) -> &'static str,
    parse: fn(&str) -> Result<T, UnknownTerm>,
) -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(terms.iter().map(|term| name(*term))).try_map(move |text: String| parse(&text))
}

fn purposes() -> impl TypedValueParser<Value = Purpose> {
    vocabulary(Purpose::ALL, Purpose::as_str, Purpose::parse)
}

fn channels() -> impl TypedValueParser<Value = ContactChannel> {
    vocabulary(ContactChannel::ALL, ContactChannel::as_str, ContactChannel::parse)
}

fn consent_actions() -> impl TypedValueParser<Value = ConsentAction> {
    vocabulary(ConsentAction::ALL, ConsentAction::as_str, ConsentAction::parse)
}

/// Written by `cluster up` so other commands find the gateway and a client certificate.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClusterFile {
    pub gateway: SocketAddr,
    pub tls: TlsFiles,
}

#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Directory of a cluster started with `domicile cluster up`.
    #[arg(long, global = true, default_value = ".domicile", env = "DOMICILE_CLUSTER_DIR")]
    cluster_dir: PathBuf,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
}

/// Connects to the gateway of the cluster in `dir` with its client certificate.
pub async fn connect_to_cluster(dir: &Path) -> anyhow::Result<DomicileClient<Channel>> {
    let path = dir.join("cluster.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} (is `domicile cluster up` running?)", path.display()))?;
    let file: ClusterFile = serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
    connect(file.gateway, &file.tls).await
}

pub async fn connect(gateway: SocketAddr, tls: &TlsFiles) -> anyhow::Result<DomicileClient<Channel>> {
    install_crypto_provider();
    let material = TlsMaterial::load(tls)?;
    let channel = Endpoint::from_shared(format!("https://{gateway}"))?
        .tls_config(material.client(GATEWAY_SERVER_NAME))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway}"))?;
    Ok(DomicileClient::new(channel))
}

/// Identifier flags shared by every command that names a subject: one per identifier kind of
/// `domicile_types::IdentifierKind` (a test checks that none is missing).
#[derive(Debug, Clone, Default, Args)]
pub struct IdentifierArgs {
    /// E-mail address, e.g. anna@example.de (identifier kind `email`; letter case does not
    /// matter).
    #[arg(long)]
    email: Vec<String>,
    /// Phone number in E.164 form, e.g. +4915112345678 (identifier kind `phone`).
    #[arg(long)]
    phone: Vec<String>,
    /// Device or cookie id (identifier kind `device`).
    #[arg(long)]
    device: Vec<String>,
    /// Chat handle as `platform:handle`, e.g. whatsapp:anna (identifier kind `chat_handle`).
    #[arg(long)]
    chat: Vec<String>,
    /// CRM account id (identifier kind `crm_account`).
    #[arg(long)]
    crm: Vec<String>,
}

impl IdentifierArgs {
    /// Each identifier kind with its flag.
    const FLAGS: [(IdentifierKind, &'static str); 5] = [
        (IdentifierKind::Email, "email"),
        (IdentifierKind::Phone, "phone"),
        (IdentifierKind::Device, "device"),
        (IdentifierKind::ChatHandle, "chat"),
        (IdentifierKind::CrmAccount, "crm"),
    ];

    fn values(&self, kind: IdentifierKind) -> &[String] {
        match kind {
            IdentifierKind::Email => &self.email,
            IdentifierKind::Phone => &self.phone,
            IdentifierKind::Device => &self.device,
            IdentifierKind::ChatHandle => &self.chat,
            IdentifierKind::CrmAccount => &self.crm,
        }
    }

    fn identifiers(&self) -> Vec<common::Identifier> {
        let mut out = Vec::new();
        for (kind, _) in Self::FLAGS {
            let values = self.values(kind);
            out.extend(values.iter().map(|v| common::Identifier { kind: kind.as_str().to_owned(), value: v.clone() }));
        }
        out
    }

    /// `--email, --phone, --device, --chat or --crm`.
    fn flag_list() -> String {
        let flags: Vec<String> = Self::FLAGS.iter().map(|(_, flag)| format!("--{flag}")).collect();
        match flags.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => flags.join(""),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct SubjectArgs {
    #[command(flatten)]
    identifiers: IdentifierArgs,
    /// A link (`lk_…`).
    #[arg(long)]
    link: Option<String>,
    /// A subject ref (`<region>/<id>`).
    #[arg(long)]
    subject: Option<String>,
}

impl SubjectArgs {
    fn selector(&self) -> anyhow::Result<pb::SubjectSelector> {
        use pb::subject_selector::Selector;
        let mut choices: Vec<Selector> = self.identifiers.identifiers().into_iter().map(Selector::Identifier).collect();
        choices.extend(self.link.clone().map(Selector::Link));
        choices.extend(self.subject.clone().map(Selector::SubjectRef));
        anyhow::ensure!(
            choices.len() == 1,
            "name the subject with exactly one of {}, --link or --subject",
            IdentifierArgs::flag_list().replace(" or ", ", ")
        );
        Ok(pb::SubjectSelector { selector: choices.pop() })
    }
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Jurisdiction: an ISO 3166-1 alpha-2 country (DE, US) or an ISO 3166-2 subdivision (US-CA,
    /// US-NY), any case. A subdivision without a pack of its own is decided by its country's pack,
    /// and decisions say so.
    #[arg(long)]
    jurisdiction: String,
    #[command(flatten)]
    identifiers: IdentifierArgs,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
pub struct ConsentArgs {
    /// What to record.
    #[arg(value_parser = consent_actions())]
    action: ConsentAction,
    #[command(flatten)]
    subject: SubjectArgs,
    /// What the consent is for.
    #[arg(long, value_parser = purposes())]
    purpose: Purpose,
    /// Channel(s) the record covers; repeat for several.
    #[arg(long = "channel", required = true, value_parser = channels())]
    channels: Vec<ContactChannel>,
    /// Version of the notice the person saw: an identifier such as `privacy-notice-v3` (letters,
    /// digits, `.`, `_`, `:`, `-`; never personal data).
    #[arg(long, default_value = "")]
    notice_version: String,
    /// System that captured the consent, as an identifier (like `--notice-version`).
    #[arg(long, default_value = "domicile-cli")]
    source_system: String,
    /// The double opt-in confirmation step has completed.
    #[arg(long)]
    double_opt_in: bool,
    /// When the person acted (RFC 3339); default now.
    #[arg(long)]
    captured_at: Option<String>,
    /// When a grant lapses (RFC 3339).
    #[arg(long)]
    expires_at: Option<String>,
    /// What the consent rests on: express (default), implied_purchase, implied_inquiry or
    /// guardian (given for a minor by a parent or guardian).
    #[arg(long, default_value = "")]
    consent_kind: String,
    /// The consent covers only these hours: a calling window of the subject's pack (repeatable),
    /// e.g. `--hours night` for Korea's separate consent to night-time advertising.
    #[arg(long = "hours")]
    hours: Vec<String>,
    /// Makes a retry safe: the same record sent again with the same key is applied once. After a
    /// DEADLINE_EXCEEDED (outcome unknown), retry with the key the error names.
    #[arg(long, default_value = "")]
    idempotency_key: String,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    #[command(flatten)]
    subject: SubjectArgs,
    /// What the contact would be for.
    #[arg(long, value_parser = purposes())]
    purpose: Purpose,
    /// How the subject would be contacted.
    #[arg(long, value_parser = channels())]
    channel: ContactChannel,
    /// Decide as of this time (RFC 3339); default now.
    #[arg(long)]
    at: Option<String>,
    /// Who the contact goes to, where the pack's rules differ: consumer or business.
    #[arg(long, default_value = "")]
    recipient: String,
    /// The subject's age in whole years, for rules that differ for minors.
    #[arg(long)]
    age: Option<u32>,
    /// The subject's IANA time zone, for calling windows; default: every zone of the pack.
    #[arg(long, default_value = "")]
    time_zone: String,
    /// The result of screening the contact against the register the rule names: true (listed)
    /// or false (screened, not listed).
    #[arg(long)]
    on_register: Option<bool>,
    /// When the subject last bought from the sender (RFC 3339).
    #[arg(long)]
    last_purchase: Option<String>,
    /// When the subject last inquired with the sender (RFC 3339).
    #[arg(long)]
    last_inquiry: Option<String>,
    /// Soft opt-in facts: the details came from a sale, the message is about similar products,
    /// an opt-out was offered at collection and in every message.
    #[arg(long)]
    contact_from_sale: bool,
    #[arg(long)]
    similar_products: bool,
    #[arg(long)]
    opt_out_offered: bool,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
pub struct ResolveArgs {
    #[command(flatten)]
    identifiers: IdentifierArgs,
    #[command(flatten)]
    connection: Connection,
}

fn timestamp(flag: &str, text: Option<&String>) -> anyhow::Result<Option<prost_types::Timestamp>> {
    text.map(|t| {
        let ts: jiff::Timestamp =
            t.parse().with_context(|| format!("--{flag} must be an RFC 3339 time, e.g. 2026-11-23T10:00:00Z"))?;
        Ok(prost_types::Timestamp { seconds: ts.as_second(), nanos: 0 })
    })
    .transpose()
}

use domicile_proto::prost_types;

/// Runs one call and turns its outcome into output and an exit code: 0 on success, 1 when the
/// gateway refused (with the gRPC code and message), 2 for bad command-line input.
async fn call<T>(
    connection: &Connection,
    request: impl AsyncFnOnce(&mut DomicileClient<Channel>) -> Result<T, tonic::Status>,
    print: impl FnOnce(&T, bool),
) -> ExitCode {
    let mut client = match connect_to_cluster(&connection.cluster_dir).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match request(&mut client).await {
        Ok(reply) => {
            print(&reply, connection.json);
            ExitCode::SUCCESS
        }
        Err(status) => {
            if connection.json {
                let body =
                    serde_json::json!({"error": {"code": format!("{:?}", status.code()), "message": status.message()}});
                println!("{body}");
            } else {
                eprintln!("error: {:?}: {}", status.code(), status.message());
            }
            ExitCode::FAILURE
        }
    }
}

fn usage(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(2)
}

pub async fn register(args: RegisterArgs) -> ExitCode {
    let request = pb::RegisterRequest {
        jurisdiction: args.jurisdiction.clone(),
        identifiers: args.identifiers.identifiers(),
        ..Default::default()
    };
    call(&args.connection, async |c| c.register(request).await.map(|r| r.into_inner()), |r, json| {
        if json {
            println!("{}", serde_json::json!({"subject_ref": r.subject_ref, "home_region": r.home_region, "links": r.links, "created": r.created}));
        } else {
            println!("{} subject {}", if r.created { "Registered" } else { "Found existing" }, r.subject_ref);
            println!("  home region  {}", r.home_region);
            for link in &r.links {
                println!("  link         {link}");
            }
        }
    })
    .await
}

pub async fn consent(args: ConsentArgs) -> ExitCode {
    let selector = match args.subject.selector() {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    let (captured_at, expires_at) = match (
        timestamp("captured-at", args.captured_at.as_ref()),
        timestamp("expires-at", args.expires_at.as_ref()),
    ) {
        (Ok(c), Ok(e)) => (c, e),
        (Err(e), _) | (_, Err(e)) => return usage(e),
    };
    let action = match args.action {
        ConsentAction::Grant => common::ConsentAction::Grant,
        ConsentAction::Deny => common::ConsentAction::Deny,
        ConsentAction::Withdraw => common::ConsentAction::Withdraw,
    };
    let channels: Vec<String> = args.channels.iter().map(ToString::to_string).collect();
    let request = pb::RecordConsentRequest {
        subject: Some(selector),
        purpose: args.purpose.to_string(),
        channels: channels.clone(),
        action: action as i32,
        evidence: Some(common::Evidence {
            notice_version: args.notice_version.clone(),
            capture_channel: String::new(),
            source_system: args.source_system.clone(),
            double_opt_in_confirmed: args.double_opt_in,
            signal: None,
            consent_kind: args.consent_kind.clone(),
            hours: args.hours.clone(),
        }),
        captured_at,
        expires_at,
        idempotency_key: args.idempotency_key.clone(),
    };
    let verb = match args.action {
        ConsentAction::Grant => "Granted",
        ConsentAction::Deny => "Denied",
        ConsentAction::Withdraw => "Withdrew",
    };
    let what = format!("{} via {}", args.purpose, channels.join(", "));
    call(&args.connection, async |c| c.record_consent(request).await.map(|r| r.into_inner()), |r, json| {
        if json {
            println!("{}", serde_json::json!({"subject_ref": r.subject_ref, "sequence": r.sequence, "recorded_at": r.recorded_at.map(|t| t.seconds)}));
        } else {
            println!("{verb} {what} for {} (ledger entry {})", r.subject_ref, r.sequence);
        }
    })
    .await
}

pub async fn decide(args: DecideArgs) -> ExitCode {
    let selector = match args.subject.selector() {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    let (at, last_purchase_at, last_inquiry_at) = match (
        timestamp("at", args.at.as_ref()),
        timestamp("last-purchase", args.last_purchase.as_ref()),
        timestamp("last-inquiry", args.last_inquiry.as_ref()),
    ) {
        (Ok(at), Ok(purchase), Ok(inquiry)) => (at, purchase, inquiry),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return usage(e),
    };
    let facts = common::DecisionFacts {
        contact_from_sale: args.contact_from_sale,
        similar_products: args.similar_products,
        opt_out_offered: args.opt_out_offered,
        on_register: args.on_register,
        last_purchase_at,
        last_inquiry_at,
        recipient: args.recipient.clone(),
        age: args.age,
        time_zone: args.time_zone.clone(),
    };
    let request = pb::DecideRequest {
        subject: Some(selector),
        purpose: args.purpose.to_string(),
        channel: args.channel.to_string(),
        at,
        facts: (facts != common::DecisionFacts::default()).then_some(facts),
    };
    let what = format!("{} via {}", args.purpose, args.channel);
    call(&args.connection, async |c| c.decide(request).await.map(|r| r.into_inner()), |r, json| {
        let Some(d) = &r.decision else { return };
        let effect = match common::Effect::try_from(d.effect) {
            Ok(common::Effect::Allow) => "allow",
            _ => "deny",
        };
        let pack = d.pack.as_ref().map(|p| format!("{}@{}", p.id, p.version)).unwrap_or_default();
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "effect": effect, "reasons": d.reasons, "pack": pack, "explanation": d.explanation,
                    "obligations": d.obligations.iter().map(|o| serde_json::json!({"id": o.id, "text": o.text})).collect::<Vec<_>>(),
                    "valid_until": d.valid_until.map(|t| t.seconds), "subject_ref": d.subject_ref, "region": d.region,
                    "pack_jurisdiction": d.pack_jurisdiction, "country_fallback": d.country_fallback,
                })
            );
        } else {
            println!("{} {what}", effect.to_uppercase());
            println!("  subject      {} (decided in {})", d.subject_ref, d.region);
            if d.country_fallback {
                println!("  pack         {pack} ({}: country fallback, no pack of the subdivision)", d.pack_jurisdiction);
            } else {
                println!("  pack         {pack} ({})", d.pack_jurisdiction);
            }
            println!("  reasons      {}", d.reasons.join(", "));
            println!("  why          {}", d.explanation);
            for o in &d.obligations {
                println!("  obligation   {}: {}", o.id, o.text);
            }
        }
    })
    .await
}

pub async fn resolve(args: ResolveArgs) -> ExitCode {
    let mut ids = args.identifiers.identifiers();
    if ids.len() != 1 {
        return usage(anyhow::anyhow!("name exactly one identifier ({})", IdentifierArgs::flag_list()));
    }
    let request = pb::ResolveRequest { identifier: ids.pop() };
    call(
        &args.connection,
        async |c| c.resolve(request).await.map(|r| r.into_inner()),
        |r, json| {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"link": r.link, "subject_ref": r.subject_ref, "home_region": r.home_region})
                );
            } else {
                println!("link         {}", r.link);
                println!("subject      {}", r.subject_ref);
                println!("home region  {}", r.home_region);
            }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Decide {
        #[command(flatten)]
        args: DecideArgs,
    }

    #[derive(Debug, Parser)]
    struct Consent {
        #[command(flatten)]
        args: ConsentArgs,
    }

    #[test]
    fn every_identifier_kind_has_a_flag() {
        let command = IdentifierArgs::augment_args(clap::Command::new("t"));
        for kind in IdentifierKind::ALL {
            let (_, flag) = IdentifierArgs::FLAGS.iter().find(|(k, _)| k == kind).expect("a flag for every kind");
            let arg = command.get_arguments().find(|a| a.get_long() == Some(flag)).expect("the flag exists");
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            assert!(help.contains(&format!("`{}`", kind.as_str())), "--{flag}: {help}");
        }
        let mut args = IdentifierArgs::default();
        args.chat.push("whatsapp:anna".to_owned());
        assert_eq!(args.identifiers()[0].kind, "chat_handle");
        assert_eq!(IdentifierArgs::flag_list(), "--email, --phone, --device, --chat or --crm");
    }

    #[test]
    fn help_lists_every_purpose_channel_and_action_of_the_vocabulary() {
        let help = Decide::command().render_long_help().to_string();
        for term in Purpose::ALL.iter().map(|p| p.as_str()).chain(ContactChannel::ALL.iter().map(|c| c.as_str())) {
            assert!(help.contains(term), "{term} missing from:\n{help}");
        }
        let help = Consent::command().render_long_help().to_string();
        for term in ConsentAction::ALL.iter().map(|a| a.as_str()).chain(ContactChannel::ALL.iter().map(|c| c.as_str()))
        {
            assert!(help.contains(term), "{term} missing from:\n{help}");
        }
    }

    #[test]
    fn vocabulary_flags_parse_to_domain_values_and_refuse_others() {
        let decide =
            Decide::try_parse_from(["t", "--email", "a@b.de", "--purpose", "survey", "--channel", "voice_automated"])
                .unwrap();
        assert_eq!(decide.args.purpose, Purpose::Survey);
        assert_eq!(decide.args.channel, ContactChannel::VoiceAutomated);
        let consent = Consent::try_parse_from(["t", "withdraw", "--phone", "+49151", "--purpose", "marketing"])
            .map(|_| ())
            .unwrap_err();
        assert_eq!(consent.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let wrong =
            Decide::try_parse_from(["t", "--email", "a@b.de", "--purpose", "spam", "--channel", "email"]).unwrap_err();
        assert_eq!(wrong.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(wrong.to_string().contains("marketing"), "{wrong}");
    }
}
