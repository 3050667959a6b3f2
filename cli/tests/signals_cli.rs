//! `domicile signals …` as a web or legal team runs it: the built binary decoding official IAB
//! strings (from the test data `signals/tests/data` keeps with their sources), encoding them
//! back from JSON, and refusing malformed or withdrawn strings without echoing them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers; clippy.toml only exempts the #[test] fns themselves"
)]

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

/// A TCF v2.3 string (policy version 5, with a disclosed-vendors segment) from iabtcf-es.
const TC_V23: &str = "CQd924AQd924AASACCENCNFsAP_gAEIAACiQL6QBAAGAAOANmAcAF9IAIADgAA.IL6AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.YIAAAAAAAAAA";
/// The TCF specification's example: policy version 2, withdrawn.
const TC_SPEC: &str = "CQSbk4AQSbk4ANwAAAENAwCgAAAAAAAAAAYgACPAAAAA.IDKQA4AAgAKAGQAygAAA.YAAAAAAAAAAA";
/// usnat v2 with GPC (iabgpp-es `UsNat.test.ts`).
const GPP_USNAT: &str = "DBABLA~CVVVkkkkkpFY.YA";

fn domicile(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_domicile"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_tc_string_decodes_to_the_documented_fields_and_encodes_back_to_the_same_model() {
    let out = domicile(&["signals", "decode", "--tcf", TC_V23, "--format", "json"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    for field in [
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
        "publisher_cc",
        "special_feature_opt_ins",
        "purposes_consent",
        "purposes_li_transparency",
        "vendor_consents",
        "vendor_legitimate_interests",
    ] {
        assert!(json.get(field).is_some(), "{field} missing from {json}");
    }
    assert_eq!(json["policy_version"], 5);
    assert_eq!(json["cmp_id"], 18);
    assert_eq!(json["purposes_consent"], serde_json::json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]));
    assert_eq!(json["vendor_consents"], serde_json::json!([12, 14, 435, 448]));

    // JSON → string → JSON: the same model.
    let encoded = domicile(&["signals", "encode", "--tcf", "-"], Some(&stdout(&out)));
    assert!(encoded.status.success(), "{}", stderr(&encoded));
    let again = domicile(&["signals", "decode", "--tcf", stdout(&encoded).trim(), "--format", "json"], None);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&stdout(&again)).unwrap(), json);

    // In words, with the times as dates.
    let human = domicile(&["signals", "decode", "--tcf", "-"], Some(TC_V23));
    assert!(human.status.success());
    let text = stdout(&human);
    assert!(text.contains("purposes consent: 1, 2, 3") && text.contains("(2026-01-13T00:00:00Z)"), "{text}");
}

#[test]
fn a_gpp_string_names_its_sections_and_us_opt_outs_and_encodes_back_bit_for_bit() {
    let out = domicile(&["signals", "decode", "--gpp", GPP_USNAT, "--format", "json"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let section = &json["sections"][0];
    assert_eq!((section["id"].as_u64(), section["name"].as_str()), (Some(7), Some("usnat")));
    assert_eq!(section["gpc"], true);
    assert_eq!(json["us_signals"]["sections"][0]["sale_opt_out"], "opted_out");
    let encoded = domicile(&["signals", "encode", "--gpp", "-"], Some(&stdout(&out)));
    assert_eq!(stdout(&encoded).trim(), GPP_USNAT);
}

#[test]
fn withdrawn_and_malformed_strings_are_refused_by_segment_and_offset_without_echo() {
    let out = domicile(&["signals", "decode", "--tcf", TC_SPEC], None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("policy version 2 is withdrawn") && err.contains("bit 132"), "{err}");
    assert!(!err.contains(&TC_SPEC[..12]), "the string is not echoed: {err}");
    // Structure only: decoded, with the policy problem said.
    let lenient = domicile(&["signals", "decode", "--tcf", TC_SPEC, "--lenient", "--format", "json"], None);
    let json: serde_json::Value = serde_json::from_str(&stdout(&lenient)).unwrap();
    assert_eq!(json["cmp_id"], 880);
    assert!(json["policy_problem"].as_str().unwrap().contains("withdrawn"));

    let cut = &TC_V23[..30];
    let out = domicile(&["signals", "decode", "--tcf", cut], None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("core at bit"), "{err}");
    assert!(!err.contains(&cut[..10]), "{err}");
    let out = domicile(&["signals", "decode", "--gpp", "DBABLA~C!!!"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("usnat"), "{}", stderr(&out));
}
