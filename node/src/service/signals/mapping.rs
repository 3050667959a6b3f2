//! The signal as evidence: what it was, for the ledger entries its meaning produced
//! (`domicile_policy::signal_meaning`).

use domicile_policy::signal_meaning::Decoded;
use domicile_signals::gpp::Section;
use domicile_signals::tcf::TcModel;

use crate::store::SignalEvidence;

/// The signal as evidence (without the citation, which its meaning gives).
pub(crate) fn evidence(decoded: &Decoded, raw: &str) -> SignalEvidence {
    let mut evidence = SignalEvidence { raw: raw.to_owned(), ..SignalEvidence::default() };
    let tcf = |e: &mut SignalEvidence, m: &TcModel| {
        e.cmp_id = u32::from(m.cmp_id);
        e.cmp_version = u32::from(m.cmp_version);
        e.vendor_list_version = u32::from(m.vendor_list_version);
        e.policy_version = u32::from(m.policy_version);
    };
    match decoded {
        Decoded::Tcf(model) => {
            evidence.kind = "tcf".into();
            tcf(&mut evidence, model);
        }
        Decoded::Gpp(gpp) => {
            evidence.kind = "gpp".into();
            evidence.gpp_sections = gpp.sections.iter().map(|s| u32::from(s.id())).collect();
            if let Some(model) = gpp.sections.iter().find_map(|s| match s {
                Section::TcfEuV2(m) => Some(m),
                _ => None,
            }) {
                tcf(&mut evidence, model);
            }
        }
        Decoded::Gpc => evidence.kind = "gpc".into(),
    }
    evidence
}
