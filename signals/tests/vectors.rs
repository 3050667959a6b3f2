//! Loads every file under `tests/iab-vectors/` and checks every documented value.
//! File format (see `tests/iab-vectors/README.md`): `{source, kind, vectors}` with
//! kind `tcf`, `gpp` or `gpp_section`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use domicile_signals::{gpp, tcf};
use serde_json::Value;

/// Checks that `expected` is a subset of `actual`: objects partially,
/// everything else exactly. A `null` expectation also accepts a missing key.
fn subset(actual: Option<&Value>, expected: &Value, path: &str, errs: &mut Vec<String>, checked: &mut usize) {
    match (expected, actual) {
        (Value::Object(exp), Some(Value::Object(act))) => {
            for (k, v) in exp {
                subset(act.get(k), v, &format!("{path}.{k}"), errs, checked);
            }
        }
        (Value::Null, None) => *checked += 1,
        (e, Some(a)) if e == a => *checked += 1,
        (e, a) => errs.push(format!("{path}: expected {e}, got {}", a.map_or("<missing>".into(), Value::to_string))),
    }
}

fn error_matches(err: &domicile_signals::SignalError, want: &str) -> bool {
    want == "any" || format!("{:?}", err.kind).starts_with(want)
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default()
}

fn check_tcf(v: &Value, errs: &mut Vec<String>, checked: &mut usize) {
    let input = v["input"].as_str().unwrap();
    let strict = v["strict"].as_bool().unwrap_or(true);
    let res = if strict { tcf::decode(input) } else { tcf::decode_lenient(input) };
    if let Some(want) = v.get("expect_error").and_then(Value::as_str) {
        match res {
            Err(e) if error_matches(&e, want) => *checked += 1,
            other => errs.push(format!("expected error {want}, got {other:?}")),
        }
        return;
    }
    let model = match res {
        Ok(m) => m,
        Err(e) => return errs.push(format!("decode failed: {e}")),
    };
    let json = serde_json::to_value(&model).unwrap();
    if let Some(exp) = v.get("expect") {
        subset(Some(&json), exp, "", errs, checked);
    }
    if let Some(Value::Object(m)) = v.get("expect_len") {
        for (path, n) in m {
            let got = path.split('.').fold(&json, |acc, k| &acc[k]).as_array().map(Vec::len);
            if got.map(|g| g as u64) == n.as_u64() {
                *checked += 1;
            } else {
                errs.push(format!("{path}: expected length {n}, got {got:?}"));
            }
        }
    }
    if let Some(Value::Object(m)) = v.get("expect_contains") {
        for (k, want) in m {
            let have = ids(&json[k]);
            if ids(want).iter().all(|w| have.contains(w)) {
                *checked += 1;
            } else {
                errs.push(format!("{k}: {have:?} does not contain {want}"));
            }
        }
    }
    if let Some(Value::Array(list)) = v.get("expect_restriction_union") {
        for r in list {
            let mut union: Vec<u64> = json["publisher_restrictions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["purpose_id"] == r["purpose_id"] && x["restriction_type"] == r["restriction_type"])
                .flat_map(|x| ids(&x["vendors"]))
                .collect();
            union.sort_unstable();
            union.dedup();
            if union == ids(&r["vendors"]) {
                *checked += 1;
            } else {
                errs.push(format!("restriction union {r}: got {union:?}"));
            }
        }
    }
    // Round trip through our encoder.
    let again = tcf::encode_lenient(&model).and_then(|s| tcf::decode_lenient(&s));
    if again.as_ref() != Ok(&model) {
        errs.push(format!("round trip changed the model: {again:?}"));
    }
}

fn check_gpp_section(v: &Value, errs: &mut Vec<String>, checked: &mut usize) {
    let input = v["input"].as_str().unwrap();
    let id = v["section_id"].as_u64().unwrap() as u16;
    let res = gpp::decode_section(id, input);
    if let Some(want) = v.get("expect_error").and_then(Value::as_str) {
        match res {
            Err(e) if error_matches(&e, want) => *checked += 1,
            other => errs.push(format!("expected error {want}, got {other:?}")),
        }
        return;
    }
    let section = match res {
        Ok(s) => s,
        Err(e) => return errs.push(format!("decode failed: {e}")),
    };
    let json = serde_json::to_value(gpp::GppString { sections: vec![section.clone()] }).unwrap();
    subset(Some(&json["sections"][0]), &v["expect"], "", errs, checked);
    // Strings the reference encoder produced must be reproduced bit for bit.
    if v["reencode_exact"].as_bool() == Some(true) {
        match gpp::encode_section(&section) {
            Ok(s) if s == input => *checked += 1,
            other => errs.push(format!("re-encode differs from the reference encoder: {:?}", other.map(|s| s.len()))),
        }
    }
    let again = gpp::encode_section(&section).and_then(|s| gpp::decode_section(id, &s));
    if again.as_ref() != Ok(&section) {
        errs.push(format!("round trip changed the section: {again:?}"));
    }
}

fn check_gpp(v: &Value, errs: &mut Vec<String>, checked: &mut usize) {
    let input = v["input"].as_str().unwrap();
    let res = gpp::decode(input);
    if let Some(want) = v.get("expect_error").and_then(Value::as_str) {
        match res {
            Err(e) if error_matches(&e, want) => *checked += 1,
            other => errs.push(format!("expected error {want}, got {other:?}")),
        }
        return;
    }
    let parsed = match res {
        Ok(g) => g,
        Err(e) => return errs.push(format!("decode failed: {e}")),
    };
    let json = serde_json::to_value(&parsed).unwrap();
    let want = v["sections"].as_array().unwrap();
    if !want.is_empty() && want.len() != parsed.sections.len() {
        errs.push(format!("expected {} sections, got {}", want.len(), parsed.sections.len()));
    }
    for (i, s) in want.iter().enumerate() {
        let got = &json["sections"][i];
        subset(Some(got), &serde_json::json!({"id": s["id"]}), &format!("[{i}]"), errs, checked);
        subset(Some(got), &s["expect"], &format!("[{i}]"), errs, checked);
        if let Some(Value::Object(secs)) = s.get("expect_seconds") {
            for (k, sec) in secs {
                if got[k].as_u64().map(|d| d / 10) == sec.as_u64() {
                    *checked += 1;
                } else {
                    errs.push(format!("[{i}].{k}: {} deciseconds is not {sec} seconds", got[k]));
                }
            }
        }
    }
    let again = gpp::encode(&parsed).and_then(|s| gpp::decode(&s));
    if again.as_ref() != Ok(&parsed) {
        errs.push("GPP round trip changed the model".to_string());
    }
}

#[test]
fn all_test_data_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/iab-vectors");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "json"));
    files.sort();
    let (mut vectors, mut checked, mut failures) = (0, 0, Vec::new());
    for path in &files {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(doc["source"].is_object(), "{} lacks its source", path.display());
        let kind = doc["kind"].as_str().unwrap();
        for (i, v) in doc["vectors"].as_array().unwrap().iter().enumerate() {
            vectors += 1;
            let mut errs = Vec::new();
            match kind {
                "tcf" => check_tcf(v, &mut errs, &mut checked),
                "gpp" => check_gpp(v, &mut errs, &mut checked),
                "gpp_section" => check_gpp_section(v, &mut errs, &mut checked),
                other => errs.push(format!("unknown kind {other}")),
            }
            let name = path.file_name().unwrap().to_string_lossy();
            failures
                .extend(errs.into_iter().map(|e| format!("{name}#{i} ({}): {e}", v["test"].as_str().unwrap_or(""))));
        }
    }
    println!("{} files, {vectors} vectors, {checked} values checked", files.len());
    assert!(files.len() >= 50, "expected the full test-data set");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
