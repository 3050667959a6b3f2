//! `domicile rights open|verify|status|extend|overdue|outbox`: tracked rights requests at the
//! subject's home node (ARCHITECTURE.md, "Rights requests").

use clap::Subcommand;
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as pb;
use domicile_proto::pb::node::v1::regional_node_client::RegionalNodeClient;
use serde_json::{Value, json};

use super::{describe_request, request_json, time};

#[derive(Debug, Subcommand)]
pub(super) enum TrackedCommand {
    /// Opens a rights request with a one-time challenge, delivered through an identifier the
    /// subject holds (named by its link) by the region's delivery system (`rights outbox`).
    Open {
        /// access | rectification | erasure | restriction | portability
        #[arg(long)]
        kind: String,
        /// The link (`lk_…`) of the identifier the challenge goes to.
        #[arg(long)]
        deliver_to: String,
        #[arg(long, default_value = "")]
        idempotency_key: String,
    },
    /// Answers a request's challenge with the code the requester received.
    Verify {
        #[arg(long)]
        request: String,
        #[arg(long)]
        code: String,
    },
    /// Where one request stands.
    Status {
        #[arg(long)]
        request: String,
    },
    /// Extends a request's deadline as the subject's pack permits.
    Extend {
        #[arg(long)]
        request: String,
    },
    /// The region's open requests past their deadline, and their count per kind.
    Overdue {
        /// As of this unix time (default: now).
        #[arg(long)]
        as_of: Option<i64>,
    },
    /// The challenges waiting for delivery (codes and identifiers: personal data); with `--ack`,
    /// removes delivered ones instead.
    Outbox {
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Request ids whose challenges were delivered.
        #[arg(long)]
        ack: Vec<String>,
    },
}

impl TrackedCommand {
    /// Commands about the whole region, not one subject.
    pub(super) fn region_wide(&self) -> bool {
        matches!(self, Self::Overdue { .. } | Self::Outbox { .. })
    }
}

type Node = RegionalNodeClient<tonic::transport::Channel>;

pub(super) async fn run(
    node: &mut Node,
    command: TrackedCommand,
    subject: Option<common::SubjectKey>,
    now: i64,
) -> anyhow::Result<(Value, String)> {
    let status = |e: tonic::Status| anyhow::anyhow!("{:?}: {}", e.code(), e.message());
    let one = |subject_ref: String, r: Option<&common::RightsRequest>| {
        let request = r.map_or(Value::Null, |r| request_json(r, now));
        let words = describe_request(&request);
        (json!({ "subject_ref": subject_ref, "rights_request": request }), words)
    };
    Ok(match command {
        TrackedCommand::Open { kind, deliver_to, idempotency_key } => {
            let reply = node
                .open_rights_request(pb::OpenRightsRequestRequest {
                    subject,
                    kind,
                    deliver_to_link: deliver_to,
                    idempotency_key,
                })
                .await
                .map_err(status)?
                .into_inner();
            let request = reply.request.as_ref().map_or(Value::Null, |r| request_json(r, now));
            let words = format!(
                "{}; verify {} (challenge in the outbox until {})",
                describe_request(&request),
                reply.active_request_id,
                time(reply.challenge_expires_at.as_ref()).as_str().unwrap_or("-")
            );
            let summary = json!({ "subject_ref": reply.subject_ref, "rights_request": request, "active_request_id": reply.active_request_id, "challenge_expires_at": time(reply.challenge_expires_at.as_ref()) });
            (summary, words)
        }
        TrackedCommand::Verify { request, code } => {
            let reply = node
                .verify_rights_request(pb::VerifyRightsRequestRequest { subject, request_id: request, code })
                .await
                .map_err(status)?
                .into_inner();
            let request = reply.request.as_ref().map_or(Value::Null, |r| request_json(r, now));
            let words = format!(
                "{}; {}",
                if reply.verified {
                    "verified".to_owned()
                } else {
                    format!("not verified ({} attempts left)", reply.attempts_left)
                },
                describe_request(&request)
            );
            (
                json!({ "verified": reply.verified, "attempts_left": reply.attempts_left, "rights_request": request }),
                words,
            )
        }
        TrackedCommand::Status { request } => {
            let reply = node
                .get_rights_request(pb::GetRightsRequestRequest { subject, request_id: request })
                .await
                .map_err(status)?
                .into_inner();
            one(reply.subject_ref, reply.request.as_ref())
        }
        TrackedCommand::Extend { request } => {
            let reply = node
                .extend_rights_request(pb::ExtendRightsRequestRequest { subject, request_id: request })
                .await
                .map_err(status)?
                .into_inner();
            one(reply.subject_ref, reply.request.as_ref())
        }
        TrackedCommand::Overdue { as_of } => {
            let as_of = as_of.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 });
            let reply = node
                .list_overdue_rights_requests(pb::ListOverdueRightsRequestsRequest { as_of })
                .await
                .map_err(status)?
                .into_inner();
            let requests: Vec<Value> = reply
                .requests
                .iter()
                .map(|o| json!({ "subject_ref": o.subject_ref, "rights_request": o.request.as_ref().map_or(Value::Null, |r| request_json(r, now)) }))
                .collect();
            let counts: serde_json::Map<String, Value> =
                reply.counts.iter().map(|c| (c.kind.clone(), json!(c.count))).collect();
            let mut words = format!(
                "{} overdue ({})",
                requests.len(),
                reply.counts.iter().map(|c| format!("{} {}", c.kind, c.count)).collect::<Vec<_>>().join(", ")
            );
            for r in &requests {
                words.push_str(&format!(
                    "\n{} {}",
                    r["subject_ref"].as_str().unwrap_or_default(),
                    describe_request(&r["rights_request"])
                ));
            }
            (json!({ "requests": requests, "counts": counts }), words)
        }
        TrackedCommand::Outbox { limit, ack } if ack.is_empty() => {
            let reply = node
                .read_challenge_outbox(pb::ReadChallengeOutboxRequest { limit })
                .await
                .map_err(status)?
                .into_inner();
            let entries: Vec<Value> = reply
                .entries
                .iter()
                .map(|e| json!({ "request_id": e.request_id, "subject_ref": e.subject_ref, "kind": e.kind, "identifier_kind": e.identifier_kind, "identifier_value": e.identifier_value, "code": e.code, "expires_at": time(e.expires_at.as_ref()) }))
                .collect();
            let mut words = format!("{} challenges to deliver", entries.len());
            for e in &reply.entries {
                words.push_str(&format!(
                    "\n{} {} to {} {}: {}",
                    e.request_id, e.kind, e.identifier_kind, e.identifier_value, e.code
                ));
            }
            (json!({ "entries": entries }), words)
        }
        TrackedCommand::Outbox { ack, .. } => {
            let reply = node
                .ack_challenge_outbox(pb::AckChallengeOutboxRequest { request_ids: ack })
                .await
                .map_err(status)?
                .into_inner();
            (json!({ "removed": reply.removed }), format!("{} delivered challenges removed", reply.removed))
        }
    })
}
