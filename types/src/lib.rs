//! Domicile's shared vocabulary.
//!
//! Everything here is pure and deterministic: no IO, no clock, no randomness, no async.
//! Values are validated on construction, so a `Purpose`, `Jurisdiction` or `NormalizedIdentifier`
//! in hand is known-good. Error messages name the offending *field kind* but never echo the
//! value: identifiers are personal data (invariant 8).

mod identifier;
mod import;
mod jurisdiction;
mod link;
mod ownership;
mod region;
pub mod rights;
mod subject;
mod vocab;

pub use identifier::{IdentifierError, IdentifierKind, NormalizedIdentifier};
pub use import::{IMPORT_TOKEN_MAX, is_import_token};
pub use jurisdiction::{Jurisdiction, JurisdictionError};
pub use link::{LINK_LEN, Link, LinkError, LinkKey, LinkKeyError};
pub use ownership::{ArbiterMap, ArbiterMapError};
pub use region::{RegionError, RegionId};
pub use subject::{SUBJECT_ID_LEN, SubjectId, SubjectRef, SubjectRefError};
pub use vocab::{Channel, ConsentAction, ConsentState, Purpose, UnknownTerm};
