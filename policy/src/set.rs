//! A set of packs compiled together, indexed by jurisdiction.

use std::collections::BTreeMap;

use domicile_types::{Jurisdiction, RegionId};

use crate::compile;
use crate::diag::{Diagnostic, Diagnostics, PackSource};
use crate::eval::{DecisionParts, Verdict};
use crate::explain::Trace;
use crate::model::{Decision, DecisionInput, Pack};
use crate::zone::Zone;

/// Why no home region could be chosen. Deliberately carries no subject data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResidencyError {
    #[error("no policy pack covers the subject's jurisdiction")]
    NoPack,
    #[error("none of the regions the pack allows is available")]
    NoAllowedRegion,
}

/// The pack that answers for a jurisdiction ([`PackSet::lookup`]), and whether it is the
/// country's pack standing in for a subdivision that has no pack of its own. Decisions made
/// through it say so (`country_fallback`, and a note in the explanation).
#[derive(Debug, Clone, Copy)]
pub struct PackMatch<'s> {
    pub pack: &'s Pack,
    /// The jurisdiction asked for is a subdivision (`US-NY`) without a pack of its own, and this
    /// is its country's pack (`US`).
    pub country_fallback: bool,
}

impl<'s> PackMatch<'s> {
    /// [`Pack::decision_parts`], marked as a country fallback when it is one.
    pub fn decision_parts(&self, verdict: &Verdict<'s>, zone: Option<&Zone>) -> DecisionParts<'s> {
        self.pack.decision_parts(verdict, zone).with_country_fallback(self.country_fallback)
    }

    /// [`Pack::restricted_parts`], marked as a country fallback when it is one.
    pub fn restricted_parts(&self) -> DecisionParts<'s> {
        self.pack.restricted_parts().with_country_fallback(self.country_fallback)
    }

    /// [`Pack::decide`], marked as a country fallback when it is one.
    pub fn decide(&self, input: &DecisionInput) -> Decision {
        self.decision_parts(&self.pack.evaluate(input), input.subject_time_zone.as_ref()).to_decision()
    }

    /// [`Pack::explain`], saying when the country's pack stands in for the subdivision.
    pub fn explain(&self, input: &DecisionInput) -> Trace {
        let mut trace = self.pack.explain(input);
        if self.country_fallback {
            trace.country_fallback = true;
            trace.explanation = self.decide(input).explanation;
        }
        trace
    }
}

/// Every pack a process uses. Immutable once compiled: reload by compiling a new set and
/// swapping it in (e.g. behind an `Arc`), so requests in flight keep their snapshot.
#[derive(Debug, Clone, Default)]
pub struct PackSet {
    packs: Vec<Pack>,
    by_jurisdiction: BTreeMap<Jurisdiction, usize>,
}

impl PackSet {
    pub fn empty() -> PackSet {
        PackSet::default()
    }

    /// Reads, validates and compiles every source (`compile`). All problems of all files come back at
    /// once; errors make it fail, warnings are returned alongside success.
    ///
    /// Packs may extend one another (`[pack] extends = "<id>"`): a country extends a baseline, a
    /// subdivision overlay extends its country. A decision then weighs every rule of the chain
    /// that covers the purpose × channel and is in effect: **any deny beats every allow**, so a
    /// more specific pack can only tighten what it inherits, unless a rule names the inherited
    /// rule in `replaces` (visible in review, and checked to exist).
    pub fn compile(sources: &[PackSource]) -> Result<(PackSet, Vec<Diagnostic>), Diagnostics> {
        let (packs, diagnostics) = compile::compile(sources)?;
        let by_jurisdiction =
            packs.iter().enumerate().filter_map(|(i, p)| p.jurisdiction().map(|j| (j.clone(), i))).collect();
        Ok((PackSet { packs, by_jurisdiction }, diagnostics))
    }

    /// The pack for a jurisdiction: an exact match (`US-CA`) first, else, for a subdivision
    /// without a pack of its own (`US-NY`), the country's (`US`), marked as that fallback so the
    /// decisions it makes say so. `None` means no pack applies and callers must deny.
    pub fn lookup(&self, jurisdiction: &Jurisdiction) -> Option<PackMatch<'_>> {
        let (index, country_fallback) = match self.by_jurisdiction.get(jurisdiction) {
            Some(&i) => (i, false),
            None if jurisdiction.subdivision().is_some() => (*self.by_jurisdiction.get(&jurisdiction.country())?, true),
            None => return None,
        };
        self.packs.get(index).map(|pack| PackMatch { pack, country_fallback })
    }

    /// The pack for a jurisdiction ([`PackSet::lookup`] without saying whether it is a country
    /// fallback): for residency, rights and collection rules, which a fallback pack sets as
    /// much as its own subjects'. Decisions go through [`PackSet::lookup`].
    pub fn get(&self, jurisdiction: &Jurisdiction) -> Option<&Pack> {
        self.lookup(jurisdiction).map(|m| m.pack)
    }

    /// Any pack by id, baselines included.
    pub fn get_by_id(&self, id: &str) -> Option<&Pack> {
        self.packs.iter().find(|p| p.id() == id)
    }

    pub fn packs(&self) -> impl Iterator<Item = &Pack> {
        self.packs.iter()
    }

    pub fn len(&self) -> usize {
        self.packs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packs.is_empty()
    }

    /// The home region for subjects of `jurisdiction`: the first of the pack's home regions that
    /// is in `available`. Fails closed when there is no pack or no allowed region is available.
    pub fn home_region(&self, jurisdiction: &Jurisdiction, available: &[RegionId]) -> Result<RegionId, ResidencyError> {
        let pack = self.get(jurisdiction).ok_or(ResidencyError::NoPack)?;
        pack.home_regions().iter().find(|r| available.contains(r)).cloned().ok_or(ResidencyError::NoAllowedRegion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(id: &str, jurisdiction: &str, region: &str) -> PackSource {
        PackSource::new(
            format!("{id}.toml"),
            format!(
                "schema = 1\n[pack]\nid = \"{id}\"\njurisdiction = \"{jurisdiction}\"\nversion = \"1\"\ntitle = \"t\"\n\
                 [rights]\ndeadline = \"1 month\"\ncite = \"c\"\n[residency]\nhome_regions = [\"{region}\"]\nlocalisation = \"none\"\ncite = \"c\"\n"
            ),
        )
    }

    #[test]
    fn subdivision_overlay_wins_then_country_pack() {
        let (set, warnings) =
            PackSet::compile(&[pack("us", "US", "us-east"), pack("us-ca", "US-CA", "us-west")]).unwrap();
        assert!(warnings.iter().all(|w| !w.is_error()));
        let get = |j: &str| set.get(&Jurisdiction::parse(j).unwrap()).map(|p| p.id().to_owned());
        assert_eq!(get("US-CA").as_deref(), Some("us-ca"));
        assert_eq!(get("US-NY").as_deref(), Some("us"));
        assert_eq!(get("US").as_deref(), Some("us"));
        assert_eq!(get("DE"), None);
        let ny = Jurisdiction::parse("us-ny").unwrap();
        assert_eq!(
            set.home_region(&ny, &[RegionId::parse("us-east").unwrap()]).map(|r| r.to_string()),
            Ok("us-east".to_owned())
        );
    }

    #[test]
    fn a_subdivision_without_a_pack_falls_back_to_its_country_explicitly() {
        let (set, _) = PackSet::compile(&[pack("us", "US", "us-east"), pack("us-ca", "US-CA", "us-west")]).unwrap();
        let lookup = |j: &str| {
            let m = set.lookup(&Jurisdiction::parse(j).unwrap()).unwrap();
            (m.pack.id().to_owned(), m.country_fallback)
        };
        assert_eq!(lookup("US-CA"), ("us-ca".to_owned(), false));
        assert_eq!(lookup("us-tx"), ("us".to_owned(), true));
        assert_eq!(lookup("US"), ("us".to_owned(), false));
        // A subdivision recorded before codes were checked falls back the same way.
        let recorded = Jurisdiction::parse_recorded("US-CAL").unwrap();
        assert!(set.lookup(&recorded).is_some_and(|m| m.pack.id() == "us" && m.country_fallback));
        assert!(set.lookup(&Jurisdiction::parse("DE-BY").unwrap()).is_none(), "no DE pack: no decision at all");

        // The decision says which pack applied, and that it was a fallback, in fields and text.
        let input = DecisionInput::new(domicile_types::Purpose::Marketing, domicile_types::Channel::Email, 0, None);
        let tx = set.lookup(&Jurisdiction::parse("US-TX").unwrap()).unwrap();
        let d = tx.decide(&input);
        assert_eq!((d.pack.id.as_str(), d.jurisdiction.as_str(), d.country_fallback), ("us", "US", true));
        assert!(
            d.explanation.ends_with(
                "; country fallback: no pack covers the subject's subdivision, so us@1, the pack of its country US, applied"
            ),
            "{}",
            d.explanation
        );
        let restricted = tx.restricted_parts().to_decision();
        assert!(restricted.country_fallback && restricted.explanation.contains("country fallback"));
        let trace = tx.explain(&input);
        assert!(trace.country_fallback && trace.explanation == d.explanation, "{trace:?}");
        assert!(trace.to_string().contains("country fallback"), "{trace}");

        for j in ["US-CA", "US"] {
            let m = set.lookup(&Jurisdiction::parse(j).unwrap()).unwrap();
            let d = m.decide(&input);
            assert_eq!((d.jurisdiction.as_str(), d.country_fallback), (j, false));
            assert!(!d.explanation.contains("fallback"), "{}", d.explanation);
            assert!(!m.restricted_parts().to_decision().country_fallback);
            let trace = m.explain(&input);
            assert!(!trace.country_fallback && !trace.to_string().contains("fallback"), "{trace}");
        }
    }

    #[test]
    fn a_pack_must_declare_an_iso_3166_2_subdivision() {
        let err = PackSet::compile(&[pack("us", "US", "us-east"), pack("us-cal", "US-CAL", "us-west")]).unwrap_err();
        let errors: Vec<String> = err.errors().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            ["us-cal.toml:4:16: error: jurisdiction names a subdivision that is not an ISO 3166-2 code of its country"],
            "{err}"
        );
    }

    #[test]
    fn a_country_pack_does_not_answer_for_another_country() {
        let (set, _) = PackSet::compile(&[pack("de", "DE", "eu-central")]).unwrap();
        assert!(set.get(&Jurisdiction::parse("AT").unwrap()).is_none());
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn duplicate_jurisdictions_and_ids_are_errors_in_the_later_file() {
        let err = PackSet::compile(&[pack("de", "DE", "eu-central"), pack("de", "de", "eu-west")]).unwrap_err();
        let errors: Vec<String> = err.errors().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{err}");
        assert!(errors.contains(&"de.toml:3:6: error: pack id is already used by de.toml".to_owned()), "{err}");
        assert!(
            errors.contains(&"de.toml:4:16: error: jurisdiction DE is already covered by de.toml".to_owned()),
            "{err}"
        );
    }

    #[test]
    fn no_sources_is_an_empty_set() {
        let (set, warnings) = PackSet::compile(&[]).unwrap();
        assert!(set.is_empty() && warnings.is_empty());
    }
}
