//! Random valid models → encode → decode == model, for TCF and every GPP
//! section kind; and model → JSON → model.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use domicile_signals::gpp::{self, CaPublisherPurposes, GppString, Section, TcfCaV1, UspFlag, UspV1};
use domicile_signals::tcf::{self, PublisherRestriction, PublisherTc, RestrictionType, TcModel};
use proptest::prelude::*;

fn id_set_u8(max: u8) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::btree_set(1..=max, 0..=max as usize).prop_map(|s| s.into_iter().collect())
}

/// Vendor ids: sparse, dense runs and high ids, to exercise both encodings.
fn vendors() -> impl Strategy<Value = Vec<u16>> {
    prop_oneof![
        prop::collection::btree_set(1u16..=60, 0..40),
        prop::collection::btree_set(1u16..=2000, 0..80),
        (1u16..=60000, 0u16..3000, prop::collection::btree_set(1u16..=65535, 0..10)).prop_map(|(s, n, extra)| {
            let mut set: BTreeSet<u16> = (s..=s.saturating_add(n)).collect();
            set.extend(extra);
            set
        }),
    ]
    .prop_map(|s| s.into_iter().collect())
}

fn letters() -> impl Strategy<Value = String> {
    "[A-Z]{2}"
}

fn restriction() -> impl Strategy<Value = PublisherRestriction> {
    (
        1u8..=63,
        prop::sample::select(vec![
            RestrictionType::NotAllowed,
            RestrictionType::RequireConsent,
            RestrictionType::RequireLegitimateInterest,
            RestrictionType::Undefined,
        ]),
        vendors(),
    )
        .prop_map(|(purpose_id, restriction_type, vendors)| PublisherRestriction {
            purpose_id,
            restriction_type,
            vendors,
        })
}

fn publisher_tc() -> impl Strategy<Value = PublisherTc> {
    (id_set_u8(24), id_set_u8(24), 0u8..=63).prop_flat_map(|(c, li, n)| {
        let custom = if n == 0 { Just(Vec::new()).boxed() } else { id_set_u8(n).boxed() };
        let custom2 = if n == 0 { Just(Vec::new()).boxed() } else { id_set_u8(n).boxed() };
        (Just(c), Just(li), Just(n), custom, custom2).prop_map(|(c, li, n, cc, cl)| PublisherTc {
            purposes_consent: c,
            purposes_li_transparency: li,
            num_custom_purposes: n,
            custom_purposes_consent: cc,
            custom_purposes_li_transparency: cl,
        })
    })
}

prop_compose! {
    fn tc_model()(
        times in (0u64..(1 << 36), 0u64..(1 << 36)),
        cmp in (0u16..4096, 0u16..4096, 0u8..64, 0u16..4096),
        langs in (letters(), letters()),
        policy_version in 4u8..=5,
        flags in any::<(bool, bool, bool)>(),
        purposes in (id_set_u8(12), id_set_u8(24), id_set_u8(24)),
        vendor_consents in vendors(),
        vendor_legitimate_interests in vendors(),
        publisher_restrictions in prop::collection::vec(restriction(), 0..4),
        disclosed in vendors(),
        allowed in prop::option::of(vendors()),
        publisher_tc in prop::option::of(publisher_tc()),
    ) -> TcModel {
        TcModel {
            version: 2,
            created: times.0,
            last_updated: times.1,
            cmp_id: cmp.0,
            cmp_version: cmp.1,
            consent_screen: cmp.2,
            consent_language: langs.0,
            vendor_list_version: cmp.3,
            policy_version,
            is_service_specific: flags.0,
            use_non_standard_texts: flags.1,
            special_feature_opt_ins: purposes.0,
            purposes_consent: purposes.1,
            purposes_li_transparency: purposes.2,
            purpose_one_treatment: flags.2,
            publisher_cc: langs.1,
            vendor_consents,
            vendor_legitimate_interests,
            publisher_restrictions,
            // Mandatory from policy 5 (v2.3); always present keeps decode strict-valid.
            disclosed_vendors: Some(disclosed),
            allowed_vendors: allowed,
            publisher_tc,
        }
    }
}

prop_compose! {
    fn ca_model()(
        times in (0u64..(1 << 36), 0u64..(1 << 36)),
        cmp in (0u16..4096, 0u16..4096, 0u8..64, 0u16..4096, 0u8..64),
        lang in letters(),
        stacks in any::<bool>(),
        purposes in (id_set_u8(12), id_set_u8(24), id_set_u8(24)),
        vendors_ in (vendors(), vendors()),
        pub_restrictions in prop::collection::vec(restriction(), 0..3),
        pubp in prop::option::of(publisher_tc()),
        disclosed_vendors in prop::option::of(vendors()),
    ) -> TcfCaV1 {
        TcfCaV1 {
            created: times.0,
            last_updated: times.1,
            cmp_id: cmp.0,
            cmp_version: cmp.1,
            consent_screen: cmp.2,
            consent_language: lang,
            vendor_list_version: cmp.3,
            tcf_policy_version: cmp.4,
            use_non_standard_stacks: stacks,
            special_feature_express_consent: purposes.0,
            purposes_express_consent: purposes.1,
            purposes_implied_consent: purposes.2,
            vendor_express_consent: vendors_.0,
            vendor_implied_consent: vendors_.1,
            pub_restrictions,
            pub_purposes: pubp.map(|p| CaPublisherPurposes {
                purposes_express_consent: p.purposes_consent,
                purposes_implied_consent: p.purposes_li_transparency,
                num_custom_purposes: p.num_custom_purposes,
                custom_purposes_express_consent: p.custom_purposes_consent,
                custom_purposes_implied_consent: p.custom_purposes_li_transparency,
            }),
            disclosed_vendors,
        }
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn to_b64(bits: &[bool]) -> String {
    bits.chunks(6)
        .map(|c| {
            let v = c.iter().enumerate().fold(0usize, |acc, (i, &b)| acc | (usize::from(b) << (5 - i)));
            char::from(ALPHABET[v])
        })
        .collect()
}

/// A US section built from random 2-bit values in 0..=2: every such bit
/// string is a valid section, so this reaches every field value of every
/// state without a per-state strategy.
fn us_section_text(version: u64, trits: &[u8], sub: Option<Vec<bool>>) -> String {
    let mut bits: Vec<bool> = (0..6).rev().map(|i| (version >> i) & 1 == 1).collect();
    for &t in trits {
        bits.push(t & 2 != 0);
        bits.push(t & 1 != 0);
    }
    let mut s = to_b64(&bits);
    if let Some(sub) = sub {
        s.push('.');
        s.push_str(&to_b64(&sub));
    }
    s
}

fn roundtrip_section(section: &Section) {
    let text = gpp::encode_section(section).unwrap();
    let back = gpp::decode_section(section.id(), &text).unwrap();
    assert_eq!(&back, section);
    let g = GppString { sections: vec![section.clone()] };
    let json = serde_json::to_string(&g).unwrap();
    let from_json: GppString = serde_json::from_str(&json).unwrap();
    assert_eq!(from_json, g, "JSON round trip");
    assert_eq!(gpp::decode(&gpp::encode(&g).unwrap()).unwrap(), g);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn tcf_model_roundtrip(m in tc_model()) {
        let s = tcf::encode(&m).unwrap();
        prop_assert_eq!(&tcf::decode(&s).unwrap(), &m);
        let json = serde_json::to_string(&m).unwrap();
        prop_assert_eq!(&serde_json::from_str::<TcModel>(&json).unwrap(), &m);
        // Same model as a GPP tcfeuv2 section (iabgpp-es range rule).
        roundtrip_section(&Section::TcfEuV2(m));
    }

    #[test]
    fn tcfcav1_roundtrip(m in ca_model()) {
        roundtrip_section(&Section::TcfCaV1(m));
    }

    #[test]
    fn uspv1_roundtrip(f in prop::array::uniform3(prop::sample::select(vec![UspFlag::Yes, UspFlag::No, UspFlag::NotApplicable]))) {
        roundtrip_section(&Section::UspV1(UspV1 { notice: f[0], opt_out_sale: f[1], lspa_covered: f[2] }));
    }

    #[test]
    fn us_sections_roundtrip(
        id in 7u16..=27,
        v2 in any::<bool>(),
        trits in prop::collection::vec(0u8..=2, 40),
        sub in prop::option::of(prop::collection::vec(any::<bool>(), 1..4)),
        sens in prop::collection::vec(0u8..=2, 8),
    ) {
        let version = if id == 7 && v2 { 2 } else { 1 };
        let subsection = match (id, sub) {
            (_, None) => None,
            (25..=27, Some(_)) => {
                Some(sens.iter().flat_map(|&t| [t & 2 != 0, t & 1 != 0]).collect())
            }
            (9 | 11 | 13, Some(_)) => None, // no GPC subsection in VA, UT, FL
            (_, Some(gpc)) => Some([false, true, gpc[0]].to_vec()),
        };
        let text = us_section_text(version, &trits, subsection);
        let section = gpp::decode_section(id, &text).unwrap();
        prop_assert_eq!(section.id(), id);
        roundtrip_section(&section);
    }
}

#[test]
fn us_signals_helper() {
    let g = gpp::decode("DBABLA~BVVVVVVVVWA.YA").unwrap();
    let s = g.us_signals();
    assert!(s.gpc);
    assert_eq!(s.sections[0].sale_opt_out, gpp::OptOut::OptedOut);
    assert_eq!(s.sections[0].sharing_opt_out, gpp::OptOut::OptedOut);
    assert_eq!(s.sections[0].targeted_advertising_opt_out, gpp::OptOut::OptedOut);
    // usca has no targeted-advertising field.
    let g = gpp::decode("DBABBg~BVVVVVVY").unwrap();
    let s = g.us_signals();
    assert!(!s.gpc);
    assert_eq!(s.sections[0].name, "usca");
    assert_eq!(s.sections[0].gpc, None);
    assert_eq!(s.sections[0].targeted_advertising_opt_out, gpp::OptOut::NotApplicable);
    assert_eq!(s.sections[0].sale_opt_out, gpp::OptOut::OptedOut);
    // uspv1: Y/N opt-out of sale.
    let g = gpp::decode("DBACNY~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA~1YYN").unwrap();
    let s = g.us_signals();
    assert_eq!(s.sections.len(), 1);
    assert_eq!(s.sections[0].sale_opt_out, gpp::OptOut::OptedOut);
}

#[test]
fn json_shape() {
    let g = gpp::decode("DBACNY~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA~1YNN").unwrap();
    let v = serde_json::to_value(&g).unwrap();
    assert_eq!(v["sections"][0]["id"], 2);
    assert_eq!(v["sections"][0]["name"], "tcfeuv2");
    for key in [
        "version",
        "created",
        "last_updated",
        "cmp_id",
        "cmp_version",
        "consent_screen",
        "consent_language",
        "vendor_list_version",
        "policy_version",
        "is_service_specific",
        "use_non_standard_texts",
        "purpose_one_treatment",
        "publisher_cc",
        "special_feature_opt_ins",
        "purposes_consent",
        "purposes_li_transparency",
        "vendor_consents",
        "vendor_legitimate_interests",
        "publisher_restrictions",
        "disclosed_vendors",
        "publisher_tc",
    ] {
        assert!(v["sections"][0].get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["sections"][1]["name"], "uspv1");
    assert_eq!(v["sections"][1]["opt_out_sale"], "no");
    // Mismatched id and name are refused.
    let bad = r#"{"sections":[{"id":7,"name":"uspv1","notice":"yes","opt_out_sale":"no","lspa_covered":"no"}]}"#;
    assert!(serde_json::from_str::<GppString>(bad).is_err());
    // An unsupported section from JSON cannot be encoded (its raw text is never serialised).
    let unsupported: GppString = serde_json::from_str(r#"{"sections":[{"id":4,"name":"unsupported"}]}"#).unwrap();
    assert!(gpp::encode(&unsupported).is_err());
}

#[test]
fn policy_rules() {
    let mut m =
        tcf::decode_lenient("CQSbk4AQSbk4ANwAAAENAwCgAAAAAAAAAAYgACPAAAAA.IDKQA4AAgAKAGQAygAAA.YAAAAAAAAAAA").unwrap();
    assert!(tcf::encode(&m).is_err(), "policy 2 is withdrawn");
    m.policy_version = 4;
    let v22 = tcf::encode(&m).unwrap();
    assert_eq!(tcf::decode(&v22).unwrap(), m);
    m.policy_version = 5;
    m.disclosed_vendors = None;
    assert!(tcf::encode(&m).is_err(), "v2.3 requires disclosed vendors");
    let s = tcf::encode_lenient(&m).unwrap();
    let e = tcf::decode(&s).unwrap_err();
    assert_eq!(e.kind, domicile_signals::ErrorKind::MissingDisclosedVendors);
    assert_eq!(e.segment, "disclosed vendors");
}
