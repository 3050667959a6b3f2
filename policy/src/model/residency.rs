//! Residency: where a pack's subjects' data is stored, and what may reach callers elsewhere.
//! The checks here are the one place residency rules are judged (the node and gateway call them
//! through [`crate::Pack::check_collection`] and [`crate::Pack::check_transfer`]); refusals name
//! pack and regions only, so they can go to any caller and any log.

use std::fmt;

use domicile_types::{Purpose, RegionId};

use super::terms::{Localisation, PackRef};

/// Where the pack's subjects' data lives and what may leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Residency {
    /// Allowed storage regions, in order of preference.
    pub home_regions: Vec<RegionId>,
    pub localisation: Localisation,
    /// Personal data must be collected in-country: captures (registration, consent,
    /// interactions, rectification) are accepted only from callers of a home region.
    pub in_country_collection: bool,
    /// Profile fields that may leave the home region in minimised context (e.g. `country`,
    /// `language`), where a transfer allows context to leave at all.
    pub minimised_fields: Vec<String>,
    pub transfers: Vec<Transfer>,
    /// The law that sets where the subjects' data lives and what may leave: named in refusals.
    pub cite: Option<String>,
}

/// Whether data of a pack's subject may be served to a caller of some region (see
/// [`Residency::transfer_to`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferCheck<'a> {
    /// The caller's region is one of the home regions: nothing leaves them.
    Domestic,
    /// A `[[residency.transfer]]` of the pack allows it (minimised fields only).
    Permitted(&'a Transfer),
    /// No transfer of the pack names that region and purpose (default deny).
    Refused,
}

impl Residency {
    /// Whether a caller of `region` may capture personal data of the pack's subjects.
    pub fn collection_allowed_from(&self, region: &RegionId) -> bool {
        !self.in_country_collection || self.home_regions.contains(region)
    }

    /// Whether the pack lets its subjects' data reach a caller of `region` for `purpose`: the
    /// first transfer whose regions (empty: any) and purposes (empty: any) both match.
    /// Localisation does not widen this: without a matching transfer, nothing leaves.
    pub fn transfer_to(&self, region: &RegionId, purpose: Purpose) -> TransferCheck<'_> {
        if self.home_regions.contains(region) {
            return TransferCheck::Domestic;
        }
        self.transfers
            .iter()
            .find(|t| {
                (t.to.is_empty() || t.to.contains(region)) && (t.purposes.is_empty() || t.purposes.contains(&purpose))
            })
            .map_or(TransferCheck::Refused, TransferCheck::Permitted)
    }
}

impl Residency {
    /// [`Residency::collection_allowed_from`] for a caller of `caller_region` (`None`: unknown),
    /// with the refusal `pack` gives otherwise.
    pub(crate) fn check_collection(
        &self,
        pack: &PackRef,
        caller_region: Option<&RegionId>,
    ) -> Result<(), ResidencyRefusal> {
        match caller_region {
            Some(region) if self.collection_allowed_from(region) => Ok(()),
            None if !self.in_country_collection => Ok(()),
            _ => Err(ResidencyRefusal::Collection {
                pack: pack.clone(),
                caller_region: caller_region.cloned(),
                cite: self.cite.clone(),
            }),
        }
    }

    /// [`Residency::transfer_to`] for a caller of `caller_region` (`None`: unknown, never
    /// allowed): `Ok(None)` for a home region, `Ok(Some(transfer))` for the transfer that allows
    /// it, else the refusal `pack` gives.
    pub(crate) fn check_transfer(
        &self,
        pack: &PackRef,
        caller_region: Option<&RegionId>,
        purpose: Purpose,
    ) -> Result<Option<&Transfer>, ResidencyRefusal> {
        let refused = || ResidencyRefusal::Transfer {
            pack: pack.clone(),
            caller_region: caller_region.cloned(),
            purpose,
            cite: self.cite.clone(),
        };
        match caller_region.map(|r| self.transfer_to(r, purpose)) {
            Some(TransferCheck::Domestic) => Ok(None),
            Some(TransferCheck::Permitted(transfer)) => Ok(Some(transfer)),
            Some(TransferCheck::Refused) | None => Err(refused()),
        }
    }

    /// Whether `region` (`None`: unknown, never) is one of the home regions.
    pub(crate) fn is_home(&self, region: Option<&RegionId>) -> bool {
        region.is_some_and(|r| self.home_regions.contains(r))
    }
}

/// A permitted transfer of the pack's subjects' data out of their home regions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub id: String,
    /// Destination regions; empty means any region.
    pub to: Vec<RegionId>,
    /// Purposes the transfer is allowed for; empty means any purpose.
    pub purposes: Vec<Purpose>,
    /// The mechanism that makes it lawful (adequacy, SCCs, PIA, ...).
    pub condition: String,
    pub cite: String,
    /// Only the pack's minimised fields may be sent.
    pub minimised_only: bool,
}

/// Why a pack's residency rules refuse a request. The message names the pack and regions only,
/// so it can go to any caller and any log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResidencyRefusal {
    /// `in_country_collection`: the caller is not of a home region (or its region is unknown).
    Collection { pack: PackRef, caller_region: Option<RegionId>, cite: Option<String> },
    /// No `[[residency.transfer]]` lets the data reach the caller's region for the purpose.
    Transfer { pack: PackRef, caller_region: Option<RegionId>, purpose: Purpose, cite: Option<String> },
}

impl fmt::Display for ResidencyRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let region = |r: &Option<RegionId>| {
            r.as_ref().map_or_else(|| "an unknown region".to_owned(), |r| format!("region `{r}`"))
        };
        let cite = match self {
            ResidencyRefusal::Collection { pack, caller_region, cite } => {
                write!(
                    f,
                    "pack `{pack}` requires in-country collection: a caller of {} may not capture its subjects' data",
                    region(caller_region)
                )?;
                cite
            }
            ResidencyRefusal::Transfer { pack, caller_region, purpose, cite } => {
                write!(
                    f,
                    "pack `{pack}` lists no transfer to {} for purpose `{purpose}`: the data stays in its home region",
                    region(caller_region)
                )?;
                cite
            }
        };
        match cite {
            Some(cite) => write!(f, " (basis: {cite})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for ResidencyRefusal {}
