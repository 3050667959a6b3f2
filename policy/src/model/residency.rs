//! Residency: where a pack's subjects' data is stored, and what may reach callers elsewhere.
//! The checks here are the one place residency rules are judged (the node and gateway call them
//! through [`crate::Pack::check_collection`] and [`crate::Pack::check_transfer`]); refusals name
//! pack and regions only, so they can go to any caller and any log.

use std::fmt;

use domicile_types::{ConsentState, Purpose, RegionId};

use super::terms::{Localisation, PackRef, TransferConsent};

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
    /// Only transfers that need the subject's recorded consent name that region and purpose, and
    /// no such consent is in force: the first of them.
    NeedsConsent(&'a Transfer),
    /// No transfer of the pack names that region and purpose (default deny).
    Refused,
}

/// The subject's consent to transfers for one purpose, the record in force in its ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferConsentFact {
    pub state: ConsentState,
    pub kind: TransferConsent,
    pub captured_at_unix: i64,
    pub expires_at_unix: Option<i64>,
}

impl Transfer {
    /// Whether the transfer's consent condition holds at `at` for `consent` (none needed, or a
    /// grant of a named kind, captured by then and not expired).
    pub fn consent_holds(&self, consent: Option<&TransferConsentFact>, at: i64) -> bool {
        self.consent.is_empty()
            || consent.is_some_and(|c| {
                c.state == ConsentState::Granted
                    && self.consent.contains(&c.kind)
                    && c.captured_at_unix <= at
                    && c.expires_at_unix.is_none_or(|e| e > at)
            })
    }
}

impl Residency {
    /// Whether a caller of `region` may capture personal data of the pack's subjects.
    pub fn collection_allowed_from(&self, region: &RegionId) -> bool {
        !self.in_country_collection || self.home_regions.contains(region)
    }

    /// Whether the pack lets its subjects' data reach a caller of `region` for `purpose`, with
    /// no consent to transfers on record: [`Residency::transfer_with`].
    pub fn transfer_to(&self, region: &RegionId, purpose: Purpose) -> TransferCheck<'_> {
        self.transfer_with(region, purpose, None, 0)
    }

    /// Whether the pack lets its subjects' data reach a caller of `region` for `purpose` at `at`,
    /// given the subject's consent to transfers for that purpose: the first transfer whose
    /// regions (empty: any) and purposes (empty: any) match and whose consent condition holds.
    /// Localisation does not widen this: without a matching transfer, nothing leaves.
    pub fn transfer_with(
        &self,
        region: &RegionId,
        purpose: Purpose,
        consent: Option<&TransferConsentFact>,
        at: i64,
    ) -> TransferCheck<'_> {
        if self.home_regions.contains(region) {
            return TransferCheck::Domestic;
        }
        let mut matching = self.transfers.iter().filter(|t| {
            (t.to.is_empty() || t.to.contains(region)) && (t.purposes.is_empty() || t.purposes.contains(&purpose))
        });
        let Some(first) = matching.clone().next() else { return TransferCheck::Refused };
        matching
            .find(|t| t.consent_holds(consent, at))
            .map_or(TransferCheck::NeedsConsent(first), TransferCheck::Permitted)
    }

    /// Whether any transfer needs a recorded consent (so callers read one only then).
    pub fn needs_consent(&self) -> bool {
        self.transfers.iter().any(|t| !t.consent.is_empty())
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
        consent: Option<&TransferConsentFact>,
        at: i64,
    ) -> Result<Option<&Transfer>, ResidencyRefusal> {
        let refused = || ResidencyRefusal::Transfer {
            pack: pack.clone(),
            caller_region: caller_region.cloned(),
            purpose,
            cite: self.cite.clone(),
        };
        match caller_region.map(|r| self.transfer_with(r, purpose, consent, at)) {
            Some(TransferCheck::Domestic) => Ok(None),
            Some(TransferCheck::Permitted(transfer)) => Ok(Some(transfer)),
            Some(TransferCheck::NeedsConsent(transfer)) => {
                Err(ResidencyRefusal::TransferConsent(Box::new(ConsentMissing {
                    pack: pack.clone(),
                    caller_region: caller_region.cloned(),
                    purpose,
                    transfer: transfer.id.clone(),
                    kinds: transfer.consent.clone(),
                    cite: transfer.cite.clone(),
                })))
            }
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
    /// The transfer permits only on the subject's recorded consent of one of these kinds; empty:
    /// no consent needed.
    pub consent: Vec<TransferConsent>,
}

/// Why a pack's residency rules refuse a request. The message names the pack and regions only,
/// so it can go to any caller and any log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResidencyRefusal {
    /// `in_country_collection`: the caller is not of a home region (or its region is unknown).
    Collection { pack: PackRef, caller_region: Option<RegionId>, cite: Option<String> },
    /// No `[[residency.transfer]]` lets the data reach the caller's region for the purpose.
    Transfer { pack: PackRef, caller_region: Option<RegionId>, purpose: Purpose, cite: Option<String> },
    /// The transfer that would let it needs the subject's recorded consent of a named kind, and
    /// none is in force.
    TransferConsent(Box<ConsentMissing>),
}

/// [`ResidencyRefusal::TransferConsent`]: which transfer needed which consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentMissing {
    pub pack: PackRef,
    pub caller_region: Option<RegionId>,
    pub purpose: Purpose,
    pub transfer: String,
    pub kinds: Vec<TransferConsent>,
    pub cite: String,
}

impl fmt::Display for ResidencyRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let region = |r: &Option<RegionId>| {
            r.as_ref().map_or_else(|| "an unknown region".to_owned(), |r| format!("region `{r}`"))
        };
        let consent_cite;
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
            ResidencyRefusal::TransferConsent(missing) => {
                let ConsentMissing { pack, caller_region, purpose, transfer, kinds, cite } = missing.as_ref();
                write!(
                    f,
                    "pack `{pack}` transfers to {} for purpose `{purpose}` only with the subject's recorded {} consent to the transfer (`{transfer}`), and none is in force",
                    region(caller_region),
                    kinds.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(" or ")
                )?;
                consent_cite = Some(cite.clone());
                &consent_cite
            }
        };
        match cite {
            Some(cite) => write!(f, " (basis: {cite})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for ResidencyRefusal {}
