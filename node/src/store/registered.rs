//! What a registration takes and gives ([`super::Store::register`] and
//! [`super::Store::register_many`]).

use domicile_types::{Jurisdiction, Link, NormalizedIdentifier, SubjectId};

use super::{Idempotency, Release, StoreError};

/// Outcome of a registration.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Registered {
    pub subject: SubjectId,
    pub links: Vec<Link>,
    pub created: bool,
    /// Sequence of the change event, if new links were added.
    pub event: Option<u64>,
}

/// What became of each item of [`super::Store::register_many`], in order.
pub type RegisteredEach = Vec<Result<Registered, StoreError>>;

/// One subject of a batch to register ([`super::Store::register_many`]): as
/// [`super::Store::register`] takes it, without an idempotency key.
#[derive(Debug, Clone)]
pub struct NewRegistration {
    pub jurisdiction: Jurisdiction,
    pub identifiers: Vec<(NormalizedIdentifier, Link)>,
    pub new_subject: SubjectId,
    pub claimed: Vec<Release>,
}

/// One subject to register (or to find by its identifiers, adding the new ones), as the engines
/// take it: [`super::Store::register`]'s arguments, or an item of a batch.
pub struct Registering<'a> {
    pub jurisdiction: &'a Jurisdiction,
    pub identifiers: &'a [(NormalizedIdentifier, Link)],
    /// The id a new subject gets.
    pub new_subject: SubjectId,
    /// This region's granted claims for the links no subject holds.
    pub claimed: &'a [Release],
    pub idempotency: Option<&'a Idempotency>,
}

impl<'a> Registering<'a> {
    /// An item of a batch (no idempotency key).
    pub fn of(item: &'a NewRegistration) -> Self {
        Self {
            jurisdiction: &item.jurisdiction,
            identifiers: &item.identifiers,
            new_subject: item.new_subject,
            claimed: &item.claimed,
            idempotency: None,
        }
    }
}
