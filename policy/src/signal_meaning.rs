//! What a decoded web consent signal means for a subject, by the subject's pack (`[signals]`,
//! `model/signals.rs`): the consent records it produces, or why it produces none. Pure: no IO,
//! no clock. The node records what this returns (`RecordSignal`).
//!
//! - TCF (a TC string, or a GPP `tcfeuv2` section): each `[[signals.tcf]]` mapping reads one bit
//!   the string states. Mappings onto the same purpose and channels combine: every stated bit set
//!   is a grant, any stated bit unset a withdrawal; a bit the string does not state (a publisher
//!   purpose without a publisher segment) says nothing.
//! - A GPP US section whose sale, sharing or targeted-advertising opt-out is `opted_out`: a
//!   withdrawal of `[signals.opt_out]`. `did_not_opt_out` and `not_applicable` say nothing (a
//!   signal that says less than the ledger knows never overrides it).
//! - GPC (the header, or a GPP section's GPC subsection): a withdrawal of `[signals.opt_out]`
//!   where `[signals.gpc]` binds at the capture time; else recorded as evidence only.

use domicile_signals::gpp::{GppString, OptOut, Section};
use domicile_signals::tcf::TcModel;
use domicile_types::{Channel, ConsentAction, Purpose};

use crate::model::{Signals, TcfSource};

/// A signal as decoded from the request, with the text it came from.
pub enum Decoded {
    Tcf(Box<TcModel>),
    Gpp(GppString),
    Gpc,
}

/// One ledger entry a signal produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedEntry {
    pub purpose: Purpose,
    pub channels: Vec<Channel>,
    pub action: ConsentAction,
    pub cite: String,
}

/// What a signal means for one subject.
#[derive(Debug, Default)]
pub struct Mapped {
    pub entries: Vec<MappedEntry>,
    /// Why parts of the signal changed nothing (each with its citation, or naming what the pack
    /// does not state).
    pub unmapped: Vec<String>,
}

/// The entries `decoded`, captured at `at` (Unix seconds), produces under `signals` of the pack
/// `pack` (for messages).
pub fn map(decoded: &Decoded, signals: &Signals, pack: &str, at: i64) -> Mapped {
    let mut mapped = Mapped::default();
    match decoded {
        Decoded::Tcf(model) => map_tcf(model, signals, pack, &mut mapped),
        Decoded::Gpp(gpp) => {
            for section in &gpp.sections {
                if let Section::TcfEuV2(model) = section {
                    map_tcf(model, signals, pack, &mut mapped);
                }
            }
            let us = gpp.us_signals();
            let opted_out = us.sections.iter().any(|s| {
                [s.sale_opt_out, s.sharing_opt_out, s.targeted_advertising_opt_out].contains(&OptOut::OptedOut)
            });
            if opted_out {
                opt_out(signals, pack, "a GPP opt-out of sale, sharing or targeted advertising", &mut mapped);
            }
            if us.gpc {
                gpc(signals, pack, at, &mut mapped);
            }
            if mapped.entries.is_empty() && mapped.unmapped.is_empty() {
                mapped.unmapped.push("the GPP string states no consent or opt-out this deployment maps".into());
            }
        }
        Decoded::Gpc => gpc(signals, pack, at, &mut mapped),
    }
    dedup(&mut mapped.entries);
    // Restrictive entries last: written one by one, a signal that fails part-way never leaves
    // a grant standing after its withdrawal was refused, and a withdrawal is the latest word.
    mapped.entries.sort_by_key(|e| e.action != ConsentAction::Grant);
    mapped
}

/// The stated TCF bits mapped onto one purpose and channel (per channel: mappings onto
/// overlapping channel lists must combine where they overlap).
struct Cell {
    purpose: Purpose,
    channel: Channel,
    /// Every stated bit mapped here is set.
    all_set: bool,
    cites: Vec<String>,
}

fn map_tcf(model: &TcModel, signals: &Signals, pack: &str, mapped: &mut Mapped) {
    let Some(mappings) = signals.tcf.as_ref().filter(|m| !m.is_empty()) else {
        mapped.unmapped.push(format!("pack {pack} maps no TCF purpose (`[[signals.tcf]]`): recorded only"));
        return;
    };
    let mut cells: Vec<Cell> = Vec::new();
    for m in mappings {
        let stated_set = match m.source {
            TcfSource::Purpose(n) => Some(
                model.purposes_consent.contains(&n)
                    && m.vendor_id.is_none_or(|vendor| model.vendor_consents.contains(&vendor)),
            ),
            TcfSource::SpecialFeature(n) => Some(model.special_feature_opt_ins.contains(&n)),
            TcfSource::PublisherPurpose(n) => model.publisher_tc.as_ref().map(|p| p.purposes_consent.contains(&n)),
            TcfSource::CustomPurpose(n) => model
                .publisher_tc
                .as_ref()
                .filter(|p| n <= p.num_custom_purposes)
                .map(|p| p.custom_purposes_consent.contains(&n)),
        };
        let Some(set) = stated_set else { continue };
        for &channel in &m.channels {
            match cells.iter_mut().find(|c| c.purpose == m.purpose && c.channel == channel) {
                Some(cell) => {
                    cell.all_set &= set;
                    if !cell.cites.contains(&m.cite) {
                        cell.cites.push(m.cite.clone());
                    }
                }
                None => cells.push(Cell { purpose: m.purpose, channel, all_set: set, cites: vec![m.cite.clone()] }),
            }
        }
    }
    if cells.is_empty() {
        mapped.unmapped.push("the TC string states none of the purposes the pack maps".into());
    }
    for Cell { purpose, channel, all_set, cites } in cells {
        let action = if all_set { ConsentAction::Grant } else { ConsentAction::Withdraw };
        mapped.entries.push(MappedEntry { purpose, channels: vec![channel], action, cite: cites.join("; ") });
    }
}

fn opt_out(signals: &Signals, pack: &str, what: &str, mapped: &mut Mapped) {
    match &signals.opt_out {
        Some(rule) => mapped.entries.push(MappedEntry {
            purpose: rule.purpose,
            channels: rule.channels.clone(),
            action: ConsentAction::Withdraw,
            cite: rule.cite.clone(),
        }),
        None => mapped.unmapped.push(format!("{what}: pack {pack} states no `[signals.opt_out]`: recorded only")),
    }
}

fn gpc(signals: &Signals, pack: &str, at: i64, mapped: &mut Mapped) {
    match &signals.gpc {
        Some(rule) if rule.binds_at(at) => {
            let before = mapped.entries.len();
            opt_out(signals, pack, "Global Privacy Control", mapped);
            if let Some(entry) = mapped.entries.get_mut(before) {
                entry.cite = format!("{}; {}", rule.cite, entry.cite);
            }
        }
        Some(rule) if rule.binding => mapped.unmapped.push(format!(
            "Global Privacy Control is binding for pack {pack} only from its effective date, after this capture: recorded only ({})",
            rule.cite
        )),
        Some(rule) => mapped.unmapped.push(format!("Global Privacy Control is recorded only for pack {pack}: {}", rule.cite)),
        None => mapped.unmapped.push(format!("pack {pack} states nothing about Global Privacy Control: recorded only")),
    }
}

/// One entry per purpose, channels and action (a GPP string may carry GPC and an opt-out).
fn dedup(entries: &mut Vec<MappedEntry>) {
    let mut seen: Vec<MappedEntry> = Vec::new();
    for entry in entries.drain(..) {
        match seen
            .iter_mut()
            .find(|e| e.purpose == entry.purpose && e.channels == entry.channels && e.action == entry.action)
        {
            Some(existing) if !existing.cite.contains(&entry.cite) => {
                existing.cite = format!("{}; {}", existing.cite, entry.cite);
            }
            Some(_) => {}
            None => seen.push(entry),
        }
    }
    *entries = seen;
}
