//! Data-subject rights: access (export), erasure, restriction, and the bookkeeping of every
//! rights request with its deadline from the subject's pack.

use domicile_policy::Period;
use domicile_proto::convert;
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::node::v1 as pb;
use domicile_runtime::process::now_unix;
use domicile_types::{Jurisdiction, Link, SubjectId};
use tonic::{Request, Status};

use super::NodeService;
use super::unit::Settled;
use crate::access::Requester;
use crate::error::{invalid, store_status};
use crate::store::{Erased, RightsRequestRecord, Store, StoreError};
use domicile_types::rights::{RequestId, RightsKind, RightsStatus};

/// Used when the subject's pack names no rights deadline; the response says so.
const DEFAULT_RIGHTS_DEADLINE: Period = Period::Days(30);

pub(super) fn rights_to_pb(record: &RightsRequestRecord) -> common::RightsRequest {
    common::RightsRequest {
        request_id: record.request_id.clone(),
        kind: record.kind.clone(),
        received_at: Some(convert::to_timestamp(record.received_at)),
        deadline_at: Some(convert::to_timestamp(record.deadline_at)),
        status: record.status.clone(),
        deadline_basis: record.deadline_basis.clone(),
        completed_at: record.completed_at.map(convert::to_timestamp),
    }
}

impl<S: Store> NodeService<S> {
    /// A completed rights request with its deadline from the subject's pack (or the default,
    /// named as such in `deadline_basis`).
    pub(super) fn rights_request(
        &self,
        jurisdiction: &Jurisdiction,
        kind: RightsKind,
        now: i64,
    ) -> Result<RightsRequestRecord, Status> {
        let id = domicile_runtime::process::random_bytes::<16>()
            .map_err(|_| Status::unavailable("random source unavailable"))?;
        let loaded = self.packs.current();
        let pack = loaded.packs.get(jurisdiction);
        let (deadline_at, deadline_basis) = match pack.and_then(|p| p.rights().deadline.map(|d| (p, d))) {
            Some((pack, period)) => (period.after(now), format!("pack {}@{}: {period}", pack.id(), pack.version())),
            None => (
                DEFAULT_RIGHTS_DEADLINE.after(now),
                format!("default: {DEFAULT_RIGHTS_DEADLINE} (the subject's pack sets no rights deadline)"),
            ),
        };
        Ok(RightsRequestRecord {
            request_id: RequestId::from_bytes(id).to_string(),
            kind: kind.as_str().to_owned(),
            received_at: now,
            deadline_at,
            status: RightsStatus::Completed.as_str().to_owned(),
            deadline_basis,
            completed_at: Some(now),
        })
    }

    pub(super) async fn export_subject(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<pb::ExportResponse, Status> {
        // Exports are delivered in the home region: a gateway serves callers of every region
        // (the access layer refuses gateways already; this holds for in-process callers too).
        if !Requester::is_in_region(Requester::of(&request)) {
            return Err(Status::permission_denied(
                "exports are delivered in the home region: call this region's node as a service of the region",
            ));
        }
        let key = convert::subject_key("subject", request.get_ref().subject.as_ref()).map_err(invalid)?;
        let (subject, meta) = self.resolve_meta(&key)?;
        let record = self
            .store
            .subject_record(&subject)
            .map_err(store_status)?
            .ok_or_else(|| store_status(StoreError::NotFound))?;
        let history = self.store.consent_history(&subject).map_err(store_status)?;
        let now = now_unix();
        // Bookkeeping first, so the document lists this request too.
        let rights_request = self.rights_request(&meta.jurisdiction, RightsKind::Access, now)?;
        // Durable (and audited) before the document leaves.
        self.settle_unkeyed(self.store.append_rights_request(&subject, &rights_request)).await?;
        let interactions = self.store.interactions(&subject).map_err(store_status)?;
        let rights_requests = self.store.rights_requests(&subject).map_err(store_status)?;
        let document = serde_json::json!({
            "schema": "domicile.export.v1",
            "subject_ref": self.subject_ref(subject).to_string(),
            "region": self.region.to_string(),
            "jurisdiction": meta.jurisdiction.to_string(),
            "created_at": meta.created_at,
            "restricted": meta.restricted,
            "identifiers": record.identifiers.iter().map(|i| serde_json::json!({"kind": i.kind().as_str(), "value": i.expose_value()})).collect::<Vec<_>>(),
            "profile": record.profile,
            "consent": history,
            "interactions": interactions,
            "rights_requests": rights_requests,
            "generated_at": now,
        });
        let document =
            serde_json::to_vec_pretty(&document).map_err(|_| Status::internal("cannot encode the export"))?;
        tracing::info!(region = %self.region, "subject exported");
        Ok(pb::ExportResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            document,
            generated_at: Some(convert::to_timestamp(now)),
            rights_request: Some(rights_to_pb(&rights_request)),
        })
    }

    pub(super) async fn erase_subject(&self, request: Request<pb::EraseRequest>) -> Result<pb::EraseResponse, Status> {
        let req = request.get_ref();
        let key = convert::subject_key("subject", req.subject.as_ref()).map_err(invalid)?;
        let tag = self.idempotency("Erase", &request, &req.idempotency_key, req, |r| r.idempotency_key.clear())?;
        let render = |subject: SubjectId, erased: &Erased| pb::EraseResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            links: erased.links.iter().map(Link::to_string).collect(),
            consent_records_erased: erased.consent_records as u64,
            erased_at: Some(convert::to_timestamp(erased.at)),
            rights_request: Some(rights_to_pb(&erased.rights_request)),
        };
        // Before resolving: after the first erasure the subject is gone, its answer is not.
        if let Some((subject, erased)) = self.replayed::<(SubjectId, Erased)>(tag.as_ref())? {
            return Ok(render(subject, &erased));
        }
        let (subject, meta) = self.resolve_meta(&key)?;
        let now = now_unix();
        // Not stored with the subject (it is about to go): the audit log and the response keep it.
        let rights_request = self.rights_request(&meta.jurisdiction, RightsKind::Erasure, now)?;
        // Audited with a PII-free proof (`store::Recorded::Erasure`); the links' claims were
        // queued with it, released once it is durable.
        let erased = match self.settle(self.store.erase(&subject, now, &rights_request, tag.as_ref())).await? {
            Settled::Applied(erased) => erased,
            Settled::Replayed => return self.replay_or(tag.as_ref(), |(s, e): (SubjectId, Erased)| render(s, &e)),
        };
        tracing::info!(region = %self.region, links = erased.links.len(), consent_records = erased.consent_records, "subject erased");
        Ok(render(subject, &erased))
    }

    pub(super) async fn restrict_subject(
        &self,
        request: Request<pb::RestrictRequest>,
    ) -> Result<pb::RestrictResponse, Status> {
        let req = request.get_ref();
        let key = convert::subject_key("subject", req.subject.as_ref()).map_err(invalid)?;
        let tag = self.idempotency("Restrict", &request, &req.idempotency_key, req, |r| r.idempotency_key.clear())?;
        let render = |subject: SubjectId, restricted: bool, rights: &RightsRequestRecord| pb::RestrictResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            restricted,
            rights_request: Some(rights_to_pb(rights)),
        };
        type Restricted = (SubjectId, (bool, RightsRequestRecord));
        if let Some((subject, (restricted, rights))) = self.replayed::<Restricted>(tag.as_ref())? {
            return Ok(render(subject, restricted, &rights));
        }
        let (subject, meta) = self.resolve_meta(&key)?;
        let now = now_unix();
        let rights_request = self.rights_request(&meta.jurisdiction, RightsKind::Restriction, now)?;
        // Acknowledged only once durable: every later decision reflects it.
        let written = self.store.set_restricted(&subject, req.restricted, &rights_request, tag.as_ref());
        if let Settled::Replayed = self.settle(written).await? {
            return self.replay_or(tag.as_ref(), |(s, (r, rights)): Restricted| render(s, r, &rights));
        }
        tracing::info!(region = %self.region, restricted = req.restricted, "restriction changed");
        Ok(render(subject, req.restricted, &rights_request))
    }

    pub(super) fn rights_requests(
        &self,
        request: pb::ListRightsRequestsRequest,
    ) -> Result<pb::ListRightsRequestsResponse, Status> {
        let key = convert::subject_key("subject", request.subject.as_ref()).map_err(invalid)?;
        let subject = self.resolve(&key)?;
        let requests = self.store.rights_requests(&subject).map_err(store_status)?;
        Ok(pb::ListRightsRequestsResponse {
            subject_ref: self.subject_ref(subject).to_string(),
            requests: requests.iter().map(rights_to_pb).collect(),
        })
    }
}
