//! What every gateway path shares: the packs, the link key, the directory, each region's node,
//! the decision coalescer and the server's shutdown, and the one way a request's subject is
//! resolved to its home region and the pseudonymous key sent there.

use std::sync::Arc;

use domicile_policy::ResidencyError;
use domicile_proto::convert::{self, FieldViolation, SubjectKey};
use domicile_proto::pb::gateway::v1 as pb;
use domicile_proto::pb::gateway::v1::subject_selector::Selector;
use domicile_proto::pb::node::v1 as node_pb;
use domicile_proto::raw::SelectorRef;
use domicile_runtime::identity::CallerIdentity;
use domicile_runtime::packs::PackReloader;
use domicile_runtime::process::Shutdown;
use domicile_types::{Jurisdiction, Link, LinkKey, RegionId, SubjectRef};
use tonic::Status;

use crate::coalesce::Coalescer;
use crate::directory::{Directory, Miss, Update};
use crate::error::{directory_loading, held_elsewhere, invalid, malformed_subject_ref, not_registered};
use crate::node_client::Nodes;

pub struct Gateway {
    pub packs: Arc<PackReloader>,
    pub link_key: LinkKey,
    pub directory: Arc<Directory>,
    pub nodes: Nodes,
    pub coalescer: Coalescer,
    /// The server's shutdown: callers' watch streams end when it begins (`watch.rs`).
    pub shutdown: Shutdown,
}

impl Gateway {
    /// Starts the coalescer's per-region tasks (inside the Tokio runtime).
    pub fn new(
        packs: Arc<PackReloader>,
        link_key: LinkKey,
        directory: Arc<Directory>,
        nodes: Nodes,
        shutdown: Shutdown,
    ) -> Self {
        let coalescer = Coalescer::start(&nodes);
        Self { packs, link_key, directory, nodes, coalescer, shutdown }
    }

    /// The home region of a new subject of `jurisdiction` registered by `caller`: its pack's
    /// first region this deployment has. In-country collection is refused here, before any
    /// identifier is sent anywhere.
    pub fn registration_home(&self, caller: &CallerIdentity, jurisdiction: &Jurisdiction) -> Result<RegionId, Status> {
        let loaded = self.packs.current();
        let home = loaded.packs.home_region(jurisdiction, self.nodes.regions()).map_err(|e| match e {
            ResidencyError::NoPack => Status::failed_precondition("no policy pack covers this jurisdiction"),
            ResidencyError::NoAllowedRegion => {
                Status::failed_precondition("no region of this deployment may hold subjects of this jurisdiction")
            }
        })?;
        if let Some(pack) = loaded.packs.get(jurisdiction) {
            pack.check_collection(Some(&caller.region)).map_err(convert::residency_refused)?;
        }
        Ok(home)
    }

    /// A node's answer to a registration the gateway sent to `home` with `links`: checked (the
    /// node must have computed the same links and placed the subject in that region) and applied
    /// to the directory, then answered as the caller sees it.
    pub fn registered(
        &self,
        home: &RegionId,
        links: &[Link],
        reply: node_pb::RegisterResponse,
    ) -> Result<pb::RegisterResponse, Status> {
        let subject = SubjectRef::parse(&reply.subject_ref).map_err(|_| malformed_subject_ref())?;
        let node_links: Vec<String> = links.iter().map(Link::to_string).collect();
        if reply.links != node_links || &subject.region != home {
            // Gateway and node disagree on the link key or the region: a deployment fault that
            // would split identities, so refuse loudly.
            tracing::error!(region = %home, "link key or region mismatch between gateway and node");
            return Err(Status::internal("gateway and node disagree on links: check the deployment's link key"));
        }
        // Read-your-writes before the change event arrives; a replayed reply older than the
        // events applied here changes nothing (`Directory::apply_reply`).
        self.directory.apply_reply(home, Some(reply.event_sequence), Update::Map(&subject, links));
        Ok(pb::RegisterResponse {
            subject_ref: subject.to_string(),
            home_region: home.to_string(),
            links: node_links,
            created: reply.created,
        })
    }

    /// Refuses links this gateway knows to be held in a region other than `home`, before any
    /// identifier is sent there: its value is not sent to a second region. This is a courtesy,
    /// not the guarantee: the home node claims every new link at its arbiter before storing it
    /// (ARCHITECTURE.md "Identifier ownership"), so a link this gateway does not know yet (a
    /// region still loading, a registration a moment ago through another gateway) is refused
    /// there instead.
    pub fn refuse_links_held_elsewhere(&self, links: &[Link], home: &RegionId) -> Result<(), Status> {
        for link in links {
            match self.directory.lookup(link) {
                Ok(existing) if &existing.region != home => {
                    return Err(held_elsewhere());
                }
                Ok(_) | Err(Miss::Unknown | Miss::Incomplete) => {}
            }
        }
        Ok(())
    }

    pub fn lookup(&self, link: &Link) -> Result<SubjectRef, Status> {
        self.directory.lookup(link).map_err(|miss| match miss {
            Miss::Unknown => not_registered(),
            Miss::Incomplete => directory_loading(),
        })
    }

    /// Finds the home region of the selected subject and the pseudonymous key to send there.
    pub fn target(&self, selector: Option<&pb::SubjectSelector>) -> Result<(RegionId, SubjectKey), Status> {
        self.target_field("subject", selector)
    }

    /// [`Self::target`] for a selector in field `field` (errors name it).
    pub fn target_field(
        &self,
        field: &str,
        selector: Option<&pb::SubjectSelector>,
    ) -> Result<(RegionId, SubjectKey), Status> {
        self.target_of(field, selector_ref(selector))
    }

    /// [`Self::target`] for a capture (consent, signal, interaction, import): a subject selected by
    /// identifier or link is named to its node by that link, so the entry records which
    /// identifier it came through (an unmerge gives it to that identifier's half); by subject
    /// ref, by the ref.
    pub fn capture_target(&self, selector: Option<&pb::SubjectSelector>) -> Result<(RegionId, SubjectKey), Status> {
        let (subject, link) = self.resolve_selector("subject", selector_ref(selector))?;
        Ok((subject.region.clone(), link.map_or(SubjectKey::Ref(subject), SubjectKey::Link)))
    }

    /// [`Self::target_field`] for a selector however it was read (`DecideStream` reads in place).
    pub fn target_of(&self, field: &str, selector: Option<SelectorRef<'_>>) -> Result<(RegionId, SubjectKey), Status> {
        let (subject, _) = self.resolve_selector(field, selector)?;
        Ok((subject.region.clone(), SubjectKey::Ref(subject)))
    }

    /// The subject a selector names, and the link it was named by (none for a subject ref).
    fn resolve_selector(
        &self,
        field: &str,
        selector: Option<SelectorRef<'_>>,
    ) -> Result<(SubjectRef, Option<Link>), Status> {
        let selector =
            selector.ok_or_else(|| FieldViolation::new(field, "an identifier, a link or a subject ref is required"))?;
        // Field paths for errors; spelled out for the common `subject` so the batch path does not
        // format one per item.
        let path = |leaf: &'static str| -> std::borrow::Cow<'static, str> {
            match (field, leaf) {
                ("subject", "identifier") => "subject.identifier".into(),
                ("subject", "link") => "subject.link".into(),
                ("subject", "subject_ref") => "subject.subject_ref".into(),
                _ => format!("{field}.{leaf}").into(),
            }
        };
        match selector {
            SelectorRef::Identifier { kind, value } => {
                let identifier = convert::identifier_parts(&path("identifier"), kind, value).map_err(invalid)?;
                let link = self.link_key.link(&identifier);
                Ok((self.lookup(&link)?, Some(link)))
            }
            SelectorRef::Link(text) => {
                let link = convert::link(&path("link"), text).map_err(invalid)?;
                Ok((self.lookup(&link)?, Some(link)))
            }
            SelectorRef::SubjectRef(text) => {
                let subject = convert::subject_ref(&path("subject_ref"), text).map_err(invalid)?;
                if !self.nodes.contains(&subject.region) {
                    return Err(Status::not_found("subject ref names a region this deployment does not have"));
                }
                Ok((subject, None))
            }
        }
    }
}

/// A generated selector as [`SelectorRef`], borrowed.
fn selector_ref(selector: Option<&pb::SubjectSelector>) -> Option<SelectorRef<'_>> {
    selector.and_then(|s| s.selector.as_ref()).map(|s| match s {
        Selector::Identifier(id) => SelectorRef::Identifier { kind: &id.kind, value: &id.value },
        Selector::Link(text) => SelectorRef::Link(text),
        Selector::SubjectRef(text) => SelectorRef::SubjectRef(text),
    })
}
