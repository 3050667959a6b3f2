//! `[residency]` and its `[[residency.transfer]]` entries: where the pack's subjects are stored
//! and what may reach callers of other regions. Keys a file leaves out are inherited key by key
//! from the packs it extends (`compile/link.rs`).

use domicile_types::{Purpose, RegionId};
use toml::de::DeTable;

use super::document::{Span, Table};
use super::values::is_id_segment;
use crate::diag::Sink;
use crate::model::terms::TransferConsent;
use crate::model::{Localisation, Transfer};

const RESIDENCY_KEYS: &[&str] =
    &["home_regions", "localisation", "in_country_collection", "minimised_fields", "transfer", "cite"];
const TRANSFER_KEYS: &[&str] = &["id", "to", "purposes", "condition", "cite", "minimised_only", "consent"];

/// `[residency]` as one file states it. The optional keys a file leaves out are inherited from
/// the packs it extends; `transfer = []` states "none".
#[derive(Debug, Clone)]
pub(crate) struct ParsedResidency {
    pub(crate) home_regions: Vec<RegionId>,
    pub(crate) localisation: Localisation,
    pub(crate) in_country_collection: Option<bool>,
    pub(crate) minimised_fields: Option<Vec<String>>,
    pub(crate) transfers: Option<Vec<Transfer>>,
    /// The law that sets where the subjects' data lives and what may leave.
    pub(crate) cite: Option<String>,
}

/// Reads `[residency]`, required unless an extended pack may define it. `None` when absent or
/// without a valid `localisation`.
pub(crate) fn read(sink: &mut Sink<'_>, root: &Table<'_, '_>, required: bool) -> Option<ParsedResidency> {
    let (table, span) = root.table(sink, "residency", required)?;
    let r = Table::new(sink, table, span, "[residency]", RESIDENCY_KEYS);
    let mut home_regions = Vec::new();
    if let Some(list) = r.req_strings(sink, "home_regions") {
        if list.get_ref().is_empty() {
            sink.error(&list.span(), "`home_regions` must name at least one region");
        }
        for item in list.get_ref() {
            match RegionId::parse(item.get_ref()) {
                Ok(region) if home_regions.contains(&region) => sink.error(&item.span(), "region listed twice"),
                Ok(region) => home_regions.push(region),
                Err(e) => sink.error(&item.span(), e.to_string()),
            }
        }
    }
    let localisation = r.req_str(sink, "localisation").and_then(|v| {
        let l = Localisation::parse(v.get_ref());
        if l.is_none() {
            sink.error(&v.span(), Localisation::expected());
        }
        l
    });
    let in_country_collection = r.opt_bool(sink, "in_country_collection").map(|b| *b.get_ref());
    let minimised_fields = r.opt_strings(sink, "minimised_fields").map(|list| {
        let mut fields = Vec::new();
        for item in list.get_ref() {
            // Profile field names, as the node accepts them.
            if item.get_ref().len() <= 64 && item.get_ref().split('.').all(is_id_segment) {
                fields.push((*item.get_ref()).to_owned());
            } else {
                sink.error(
                    &item.span(),
                    "minimised fields are profile field names: `a-z`, `0-9`, `_`, `-`, dot-separated, at most 64 bytes",
                );
            }
        }
        fields
    });
    let transfers_given = r.get("transfer").is_some();
    let transfers: Vec<Transfer> =
        r.tables(sink, "transfer").into_iter().filter_map(|(table, span)| read_transfer(sink, table, span)).collect();
    let cite = r.opt_str(sink, "cite").map(|c| (*c.get_ref()).to_owned());
    localisation.map(|localisation| ParsedResidency {
        home_regions,
        localisation,
        in_country_collection,
        minimised_fields,
        transfers: transfers_given.then_some(transfers),
        cite,
    })
}

/// One `[[residency.transfer]]`; `None` when a required value is missing or bad.
fn read_transfer(sink: &mut Sink<'_>, table: &DeTable<'_>, span: Span) -> Option<Transfer> {
    let t = Table::new(sink, table, span, "[[residency.transfer]]", TRANSFER_KEYS);
    let tid = t.req_str(sink, "id").and_then(|v| {
        if is_id_segment(v.get_ref()) {
            Some((*v.get_ref()).to_owned())
        } else {
            sink.error(&v.span(), "transfer id must be `a-z`, `0-9`, `_` or `-`");
            None
        }
    });
    let mut to = Vec::new();
    if let Some(list) = t.opt_strings(sink, "to") {
        for item in list.get_ref() {
            match RegionId::parse(item.get_ref()) {
                Ok(region) => to.push(region),
                Err(e) => sink.error(&item.span(), e.to_string()),
            }
        }
    }
    let mut purposes = Vec::new();
    if let Some(list) = t.opt_strings(sink, "purposes") {
        for item in list.get_ref() {
            match Purpose::parse(item.get_ref()) {
                Ok(p) => purposes.push(p),
                Err(e) => sink.error(&item.span(), e.to_string()),
            }
        }
    }
    let condition = t.req_non_empty(sink, "condition");
    let cite = t.req_non_empty(sink, "cite");
    let minimised_only = t.opt_bool(sink, "minimised_only").is_none_or(|b| *b.get_ref());
    let mut consent = Vec::new();
    if let Some(list) = t.opt_strings(sink, "consent") {
        for item in list.get_ref() {
            match TransferConsent::parse(item.get_ref()) {
                Some(k) if consent.contains(&k) => sink.error(&item.span(), "consent kind listed twice"),
                Some(k) => consent.push(k),
                None => sink.error(&item.span(), TransferConsent::expected()),
            }
        }
        if list.get_ref().is_empty() {
            sink.error(&list.span(), "`consent` must name a kind (leave it out when no consent is needed)");
        }
    }
    let (Some(id), Some(condition), Some(cite)) = (tid, condition, cite) else { return None };
    Some(Transfer { id, to, purposes, condition, cite, minimised_only, consent })
}
