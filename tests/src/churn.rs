//! Consent churn through a gateway, for tests that break something underneath it (a replica
//! killed, a database failing over): one subject granted and withdrawn over and over, each
//! acknowledged withdrawal followed at once by a decision that must be a deny.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::gateway::v1 as gw;
use domicile_proto::pb::gateway::v1::domicile_client::DomicileClient;
use tonic::transport::Channel;

use crate::{identifier, select_ref};

/// What one subject's churn saw.
#[derive(Debug)]
pub struct Churn {
    pub subject: String,
    /// Writes the gateway acknowledged.
    pub acknowledged: u64,
    /// Decisions after an acknowledged withdrawal that were not a deny.
    pub stale: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Calls that failed while `late()` held.
    pub failed_late: u64,
}

/// Registers a DE subject with `email`, then churns its marketing-email consent until `stop`.
/// After a failed call it waits `backoff`.
pub async fn consent_churn(
    mut client: DomicileClient<Channel>,
    email: &str,
    stop: Arc<AtomicBool>,
    late: impl Fn() -> bool,
    backoff: Duration,
) -> anyhow::Result<Churn> {
    let subject = client
        .register(gw::RegisterRequest {
            jurisdiction: "DE".into(),
            identifiers: vec![identifier("email", email)],
            idempotency_key: String::new(),
        })
        .await
        .context("register")?
        .into_inner()
        .subject_ref;
    let mut churn = Churn { subject, acknowledged: 0, stale: 0, failed: 0, failed_late: 0 };
    let mut grant = true;
    while !stop.load(Ordering::Relaxed) {
        let action = if grant { common::ConsentAction::Grant } else { common::ConsentAction::Withdraw };
        let written = client
            .record_consent(gw::RecordConsentRequest {
                subject: select_ref(&churn.subject),
                purpose: "marketing".into(),
                channels: vec!["email".into()],
                action: action as i32,
                evidence: Some(common::Evidence { notice_version: "n1".into(), ..Default::default() }),
                ..Default::default()
            })
            .await;
        if written.is_err() {
            churn.failed(&late);
            tokio::time::sleep(backoff).await;
            continue;
        }
        churn.acknowledged += 1;
        if !grant {
            let decided = client
                .decide(gw::DecideRequest {
                    subject: select_ref(&churn.subject),
                    purpose: "marketing".into(),
                    channel: "email".into(),
                    at: None,
                    ..Default::default()
                })
                .await;
            match decided {
                Ok(reply) => {
                    if reply.into_inner().decision.map(|d| d.effect) != Some(common::Effect::Deny as i32) {
                        churn.stale += 1;
                    }
                }
                Err(_) => churn.failed(&late),
            }
        }
        grant = !grant;
    }
    Ok(churn)
}

impl Churn {
    fn failed(&mut self, late: &impl Fn() -> bool) {
        self.failed += 1;
        self.failed_late += u64::from(late());
    }
}
