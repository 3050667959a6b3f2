//! Differential test: decodes the shared vectors (every input under
//! `tests/iab-vectors/`) with this crate, with `iab_gpp` 0.1.2 (GPP) and with
//! `lib_tcstring` 0.5.0 (TCF), and compares the fields both expose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;

use domicile_signals::{gpp, tcf};
use serde_json::Value;

/// All `(kind, input, section_id)` triples from the test data.
fn inputs() -> Vec<(String, String, Option<u16>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/iab-vectors");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let kind = doc["kind"].as_str().unwrap().to_string();
        for v in doc["vectors"].as_array().unwrap() {
            let sid = v["section_id"].as_u64().map(|x| x as u16);
            out.push((kind.clone(), v["input"].as_str().unwrap().to_string(), sid));
        }
    }
    out.sort();
    out.dedup();
    out
}

fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Leaf fields of iab_gpp's JSON by name, with names and values mapped to
/// this crate's conventions. Nested objects of named categories are
/// skipped (this crate keeps them as arrays).
fn their_leaves(v: &Value, section: &str, out: &mut BTreeMap<String, Value>) {
    let Value::Object(m) = v else { return };
    for (k, val) in m {
        let name = match (section, k.as_str()) {
            (_, "personal_data_consent") => "personal_data_consents",
            ("tcfeuv2", "publisher_country_code") => "publisher_cc",
            ("tcfeuv2", "purpose_consents") => "purposes_consent",
            ("tcfeuv2", "purpose_legitimate_interests") => "purposes_li_transparency",
            ("tcfeuv2", "special_feature_optins") => "special_feature_opt_ins",
            ("tcfeuv2", "use_non_standard_stacks") => "use_non_standard_texts",
            ("tcfcav1", "policy_version") => "tcf_policy_version",
            ("tcfcav1", "special_feature_express_consents") => "special_feature_express_consent",
            ("tcfcav1", "purpose_express_consents") => "purposes_express_consent",
            ("tcfcav1", "purpose_implied_consents") => "purposes_implied_consent",
            ("tcfcav1", "vendor_express_consents") => "vendor_express_consent",
            ("tcfcav1", "vendor_implied_consents") => "vendor_implied_consent",
            (_, "publisher_purposes" | "pub_restrictions" | "publisher_restrictions") => continue,
            (_, other) => other,
        };
        let mapped = match (name, val) {
            ("mspa_covered_transaction", Value::Bool(b)) => Value::String(if *b { "yes" } else { "no" }.into()),
            ("created" | "last_updated", Value::Number(n)) => Value::from(n.as_u64().unwrap()),
            (_, Value::String(s)) if name != "consent_language" && name != "publisher_cc" => Value::String(snake(s)),
            (_, Value::Object(_)) => {
                if matches!(name, "core" | "V1" | "V2") {
                    their_leaves(val, section, out);
                }
                continue;
            }
            (_, other) => other.clone(),
        };
        out.insert(name.to_string(), mapped);
    }
}

fn compare_gpp(input: &str, stats: &mut Stats) {
    let Ok(ours) = gpp::decode(input) else {
        stats.ours_refused += 1;
        return;
    };
    let Ok(theirs) = iab_gpp::v1::GPPString::parse_str(input) else {
        stats.theirs_refused += 1;
        return;
    };
    let their_sections = theirs.decode_all_sections();
    assert_eq!(their_sections.len(), ours.sections.len(), "{input}: section count");
    for (mine, their) in ours.sections.iter().zip(their_sections) {
        let Ok(their) = their else {
            stats.theirs_refused += 1;
            continue;
        };
        if mine.name() == "unsupported" {
            continue;
        }
        let their_json = serde_json::to_value(&their).unwrap();
        let (_, body) = their_json.as_object().unwrap().iter().next().unwrap();
        let mut leaves = BTreeMap::new();
        their_leaves(body, mine.name(), &mut leaves);
        let my_json = serde_json::to_value(gpp::GppString { sections: vec![mine.clone()] }).unwrap();
        let my = &my_json["sections"][0];
        for (k, their_v) in leaves {
            let Some(my_v) = my.get(&k) else { continue };
            let my_v = if k == "created" || k == "last_updated" {
                Value::from(my_v.as_u64().unwrap() / 10)
            } else {
                my_v.clone()
            };
            assert_eq!(my_v, their_v, "{}: field {k} differs from iab_gpp", mine.name());
            stats.fields += 1;
        }
        stats.sections += 1;
    }
}

fn compare_tcf(input: &str, stats: &mut Stats) {
    let Ok(m) = tcf::decode_lenient(input) else {
        stats.ours_refused += 1;
        return;
    };
    let Ok(t) = lib_tcstring::TcModelV2::try_from(input) else {
        stats.theirs_refused += 1;
        return;
    };
    let u8s = |v: &[u8]| v.to_vec();
    assert_eq!(m.created * 100, t.created_at, "created (ms)");
    assert_eq!(m.last_updated * 100, t.updated_at, "last_updated (ms)");
    assert_eq!(m.cmp_id, t.cmp_id);
    assert_eq!(m.cmp_version, t.cmp_version);
    assert_eq!(m.consent_screen, t.consent_screen);
    assert_eq!(m.consent_language, t.consent_language);
    assert_eq!(m.vendor_list_version, t.vendor_list_version);
    assert_eq!(u16::from(m.policy_version), t.tcf_policy_version);
    assert_eq!(m.is_service_specific, t.is_service_specific);
    assert_eq!(m.use_non_standard_texts, t.use_non_standard_stacks);
    assert_eq!(m.special_feature_opt_ins, u8s(&t.special_feature_opt_ins));
    assert_eq!(m.purposes_consent, t.purposes_consent);
    assert_eq!(m.purposes_li_transparency, t.purposes_li_transparency);
    assert_eq!(m.purpose_one_treatment, t.purpose_one_treatment);
    assert_eq!(m.publisher_cc, t.publisher_country_code);
    assert_eq!(m.vendor_consents, t.vendors_consent);
    assert_eq!(m.vendor_legitimate_interests, t.vendors_li_consent);
    assert_eq!(m.disclosed_vendors.clone().unwrap_or_default(), t.disclosed_vendors);
    assert_eq!(m.allowed_vendors.clone().unwrap_or_default(), t.allowed_vendors);
    let p = m.publisher_tc.clone();
    assert_eq!(p.as_ref().map(|p| p.purposes_consent.clone()).unwrap_or_default(), t.publisher_purposes_consent);
    assert_eq!(
        p.as_ref().map(|p| p.purposes_li_transparency.clone()).unwrap_or_default(),
        t.publisher_purposes_li_transparency
    );
    assert_eq!(p.as_ref().map(|p| p.custom_purposes_consent.clone()).unwrap_or_default(), t.custom_purposes_consent);
    assert_eq!(
        p.as_ref().map(|p| p.custom_purposes_li_transparency.clone()).unwrap_or_default(),
        t.custom_purposes_li_transparency
    );
    // Restrictions: lib_tcstring merges entries per (purpose, type); compare unions.
    let mut mine: BTreeMap<(u8, u8), Vec<u16>> = BTreeMap::new();
    for r in &m.publisher_restrictions {
        let ty = serde_json::to_value(r.restriction_type).unwrap().as_str().unwrap().len() as u8;
        mine.entry((r.purpose_id, ty)).or_default().extend(&r.vendors);
    }
    let mut theirs: BTreeMap<(u8, u8), Vec<u16>> = BTreeMap::new();
    for r in &t.publisher_restrictions {
        let ty = match r.restriction_type {
            lib_tcstring::PublisherRestrictionType::NotAllowed => "not_allowed",
            lib_tcstring::PublisherRestrictionType::RequireConsent => "require_consent",
            lib_tcstring::PublisherRestrictionType::RequireLegitimateInterest => "require_legitimate_interest",
            lib_tcstring::PublisherRestrictionType::Undefined => "undefined",
        }
        .len() as u8;
        theirs.entry((r.purpose_id, ty)).or_default().extend(&r.vendor_list);
    }
    for v in mine.values_mut().chain(theirs.values_mut()) {
        v.sort_unstable();
        v.dedup();
    }
    assert_eq!(mine, theirs, "publisher restrictions");
    stats.fields += 24;
    stats.sections += 1;
}

#[derive(Default, Debug)]
struct Stats {
    sections: usize,
    fields: usize,
    ours_refused: usize,
    theirs_refused: usize,
}

#[test]
fn agrees_with_iab_gpp_and_lib_tcstring() {
    let (mut g, mut t) = (Stats::default(), Stats::default());
    for (kind, input, sid) in inputs() {
        match kind.as_str() {
            "tcf" => compare_tcf(&input, &mut t),
            "gpp" => compare_gpp(&input, &mut g),
            _ => {
                // A bare section: wrap it in a header listing its id.
                let Ok(section) = gpp::decode_section(sid.unwrap(), &input) else {
                    continue;
                };
                let full = gpp::encode(&gpp::GppString { sections: vec![section] }).unwrap();
                let header = full.split('~').next().unwrap();
                let wrapped = format!("{header}~{input}");
                compare_gpp(&wrapped, &mut g);
                if sid == Some(2) {
                    compare_tcf(&input, &mut t);
                }
            }
        }
    }
    println!("iab_gpp: {g:?}\nlib_tcstring: {t:?}");
    assert!(g.sections >= 80 && g.fields >= 800, "too little GPP overlap: {g:?}");
    assert!(t.sections >= 10, "too little TCF overlap: {t:?}");
}
