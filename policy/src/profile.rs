//! What a pack says about where its subjects' data lives and who may receive it, and how long a
//! rights request may take: `domicile packs explain --residency / --rights`, for legal teams
//! ("where does a subject of X live, who may receive what", "how long for an access request in
//! X"). Read-only views of the compiled pack, with every citation.

use std::fmt;

use serde::Serialize;

use crate::model::{Deadline, Pack};

/// One permitted transfer, as a reviewer reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferView {
    pub id: String,
    /// Destination regions; empty: any region.
    pub to: Vec<String>,
    /// Purposes; empty: any purpose.
    pub purposes: Vec<String>,
    pub condition: String,
    pub cite: String,
    pub minimised_only: bool,
    /// Consent kinds the subject must have recorded for the transfer; empty: none needed.
    pub consent: Vec<String>,
}

/// A pack's residency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResidencyProfile {
    pub pack: String,
    pub jurisdiction: String,
    pub country_fallback: bool,
    pub home_regions: Vec<String>,
    pub localisation: String,
    pub in_country_collection: bool,
    pub minimised_fields: Vec<String>,
    pub transfers: Vec<TransferView>,
    pub cite: Option<String>,
}

/// A pack's rights deadlines and age threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RightsProfile {
    pub pack: String,
    pub jurisdiction: String,
    pub country_fallback: bool,
    /// `"1 month"`, `"no fixed period"`, or `None` when not stated (a baseline's view).
    pub deadline: Option<String>,
    pub extension: Option<String>,
    pub age_of_digital_consent: Option<u8>,
    pub cite: Option<String>,
}

fn jurisdiction(pack: &Pack) -> String {
    pack.jurisdiction().map_or_else(|| "baseline".to_owned(), ToString::to_string)
}

impl Pack {
    pub fn residency_profile(&self, country_fallback: bool) -> ResidencyProfile {
        let r = self.residency();
        ResidencyProfile {
            pack: self.pack_ref().to_string(),
            jurisdiction: jurisdiction(self),
            country_fallback,
            home_regions: r.home_regions.iter().map(ToString::to_string).collect(),
            localisation: r.localisation.as_str().to_owned(),
            in_country_collection: r.in_country_collection,
            minimised_fields: r.minimised_fields.clone(),
            transfers: r
                .transfers
                .iter()
                .map(|t| TransferView {
                    id: t.id.clone(),
                    to: t.to.iter().map(ToString::to_string).collect(),
                    purposes: t.purposes.iter().map(|p| p.as_str().to_owned()).collect(),
                    condition: t.condition.clone(),
                    cite: t.cite.clone(),
                    minimised_only: t.minimised_only,
                    consent: t.consent.iter().map(|k| k.as_str().to_owned()).collect(),
                })
                .collect(),
            cite: r.cite.clone(),
        }
    }

    pub fn rights_profile(&self, country_fallback: bool) -> RightsProfile {
        let r = self.rights();
        RightsProfile {
            pack: self.pack_ref().to_string(),
            jurisdiction: jurisdiction(self),
            country_fallback,
            deadline: r.deadline.map(|d| d.to_string()),
            extension: r.extension.filter(|_| matches!(r.deadline, Some(Deadline::Within(_)))).map(|e| e.to_string()),
            age_of_digital_consent: r.age_of_digital_consent,
            cite: r.cite.clone(),
        }
    }
}

fn fallback_line(f: &mut fmt::Formatter<'_>, fallback: bool, pack: &str, jurisdiction: &str) -> fmt::Result {
    if fallback {
        writeln!(
            f,
            "country fallback: no pack covers the subdivision; {pack}, the pack of its country {jurisdiction}, applies"
        )?;
    }
    Ok(())
}

impl fmt::Display for ResidencyProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "residency of {} ({})", self.jurisdiction, self.pack)?;
        fallback_line(f, self.country_fallback, &self.pack, &self.jurisdiction)?;
        writeln!(f, "home regions: {} (stored in the first available)", self.home_regions.join(", "))?;
        writeln!(f, "localisation: {}", self.localisation)?;
        if self.in_country_collection {
            writeln!(f, "collection: only callers of a home region may capture its subjects' data")?;
        }
        let minimised =
            if self.minimised_fields.is_empty() { "none".to_owned() } else { self.minimised_fields.join(", ") };
        writeln!(f, "minimised context may carry: {minimised}")?;
        if self.transfers.is_empty() {
            writeln!(f, "transfers: none; personal data stays in the home regions (decisions still cross)")?;
        }
        for t in &self.transfers {
            let to = if t.to.is_empty() { "any region".to_owned() } else { t.to.join(", ") };
            let purposes = if t.purposes.is_empty() { "any purpose".to_owned() } else { t.purposes.join(", ") };
            writeln!(
                f,
                "transfer {} to {to} for {purposes}{}",
                t.id,
                if t.minimised_only { ", minimised context only" } else { "" }
            )?;
            writeln!(f, "    condition: {}", t.condition)?;
            if !t.consent.is_empty() {
                writeln!(f, "    only on the subject's recorded consent: {}", t.consent.join(" or "))?;
            }
            writeln!(f, "    cites {}", t.cite)?;
        }
        match &self.cite {
            Some(cite) => writeln!(f, "basis: {cite}"),
            None => writeln!(f, "basis: not stated"),
        }
    }
}

impl fmt::Display for RightsProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "rights requests in {} ({})", self.jurisdiction, self.pack)?;
        fallback_line(f, self.country_fallback, &self.pack, &self.jurisdiction)?;
        match &self.deadline {
            Some(d) if d == "no fixed period" => {
                writeln!(f, "deadline: the law fixes no period; requests carry none and say why")?;
            }
            Some(d) => writeln!(f, "deadline: {d} from receipt")?,
            None => writeln!(f, "deadline: not stated")?,
        }
        if let Some(e) = &self.extension {
            writeln!(f, "extension: up to {e} more, on notice to the subject")?;
        }
        if let Some(age) = self.age_of_digital_consent {
            writeln!(f, "age of digital consent: {age} (below it, a parent or guardian consents)")?;
        }
        match &self.cite {
            Some(cite) => writeln!(f, "cites {cite}"),
            None => writeln!(f, "cites nothing"),
        }
    }
}
