#!/usr/bin/env python3
"""Converts the iab_gpp crate's golden files (tests/data/*.json, crate
0.1.2) into domicile-signals' test-data format. Object-valued fields
(named sensitive-data categories) become arrays in wire order, taken from
the iab_gpp struct definitions in src/sections/<section>.rs.

Usage: convert_iab_gpp_golden.py <iab_gpp crate dir> <out dir>
"""
import glob, json, os, re, sys

CRATE, OUT = sys.argv[1], sys.argv[2]
IDS = {"TcfEuV1": 1, "TcfEuV2": 2, "TcfCaV1": 5, "UspV1": 6, "UsNat": 7, "UsCa": 8, "UsVa": 9,
       "UsCo": 10, "UsUt": 11, "UsCt": 12}

def snake(s):
    return re.sub(r"(?<!^)([A-Z])", r"_\1", s).lower()

def structs(section):
    src = open(os.path.join(CRATE, "src/sections", section.lower() + ".rs")).read()
    out = []
    for m in re.finditer(r"pub struct \w+\s*\{(.*?)\n\}", src, re.S):
        out.append(re.findall(r"pub (\w+):", m.group(1)))
    return out

def ordered(section, obj):
    for fields in structs(section):
        if set(fields) == set(obj):
            return [obj[f] for f in fields]
    raise KeyError(f"no struct for {sorted(obj)} in {section}")

def enum(v):
    if isinstance(v, bool) or isinstance(v, int) or v is None:
        return v
    return snake(v)

def us(section, core, gpc, version=None):
    exp = {}
    if version is not None:
        exp["version"] = version
    for k, v in core.items():
        if k == "personal_data_consent":
            k = "personal_data_consents"
        if k == "mspa_covered_transaction":
            v = "yes" if v else "no"
        if isinstance(v, dict):
            v = [enum(x) for x in ordered(section, v)]
        else:
            v = enum(v)
        exp[k] = v
    if section != "UsVa" and section != "UsUt":
        exp["gpc"] = gpc
    return exp

def tcfeuv2(s):
    c = s["core"]
    ren = {"publisher_country_code": "publisher_cc", "purpose_consents": "purposes_consent",
           "purpose_legitimate_interests": "purposes_li_transparency", "special_feature_optins": "special_feature_opt_ins",
           "use_non_standard_stacks": "use_non_standard_texts"}
    exp = {ren.get(k, k): v for k, v in c.items() if k not in ("created", "last_updated")}
    secs = {k: c[k] for k in ("created", "last_updated")}
    exp["disclosed_vendors"] = s.get("disclosed_vendors")
    if s.get("allowed_vendors") is not None:
        exp["allowed_vendors"] = s["allowed_vendors"]
    p = s.get("publisher_purposes")
    exp["publisher_tc"] = None if p is None else {
        "purposes_consent": p["consents"], "purposes_li_transparency": p["legitimate_interests"],
        "custom_purposes_consent": p["custom_consents"], "custom_purposes_li_transparency": p["custom_legitimate_interests"]}
    return exp, secs

def tcfcav1(s):
    c = s["core"]
    ren = {"policy_version": "tcf_policy_version", "special_feature_express_consents": "special_feature_express_consent",
           "purpose_express_consents": "purposes_express_consent", "purpose_implied_consents": "purposes_implied_consent",
           "vendor_express_consents": "vendor_express_consent", "vendor_implied_consents": "vendor_implied_consent"}
    exp = {ren.get(k, k): v for k, v in c.items() if k not in ("created", "last_updated")}
    secs = {k: c[k] for k in ("created", "last_updated")}
    exp["disclosed_vendors"] = s.get("disclosed_vendors")
    p = s.get("publisher_purposes")
    exp["pub_purposes"] = None if p is None else {
        "purposes_express_consent": p["purpose_express_consents"], "purposes_implied_consent": p["purpose_implied_consents"],
        "custom_purposes_express_consent": p["custom_purpose_express_consents"],
        "custom_purposes_implied_consent": p["custom_purpose_implied_consents"]}
    return exp, secs

for path in sorted(glob.glob(os.path.join(CRATE, "tests/data/*.json"))):
    orig = json.load(open(path))
    sections = []
    for sec in orig["expected_sections"]:
        (kind, body), = sec.items()
        entry = {"id": IDS[kind]}
        if kind == "TcfEuV1":
            entry["expect"] = {"name": "unsupported"}
            entry["note"] = "tcfeuv1 (deprecated section 1) is kept as an unsupported section"
        elif kind == "TcfEuV2":
            e, s = tcfeuv2(body); entry["expect"] = dict(e, name="tcfeuv2"); entry["expect_seconds"] = s
        elif kind == "TcfCaV1":
            e, s = tcfcav1(body); entry["expect"] = dict(e, name="tcfcav1"); entry["expect_seconds"] = s
        elif kind == "UsNat":
            (ver, core), = body["core"].items()
            entry["expect"] = dict(us(kind, core, body["gpc"], int(ver[1:])), name="usnat")
        else:
            entry["expect"] = dict(us(kind, body["core"], body.get("gpc")), name=kind.lower())
        sections.append(entry)
    name = os.path.basename(path)
    doc = {"source": {"crate": "iab_gpp 0.1.2", "repo": "noirotm/iabgpp-rs", "path": "iab_gpp/tests/data/" + name,
                      "note": "expected values converted to this crate's JSON; iab_gpp reports created/last_updated in seconds (expect_seconds = our deciseconds / 10)"},
           "kind": "gpp", "vectors": [{"input": orig["gpp_string"], "sections": sections}]}
    with open(os.path.join(OUT, "iab_gpp-" + name), "w") as fh:
        json.dump(doc, fh, indent=1); fh.write("\n")
print("converted", len(glob.glob(os.path.join(CRATE, "tests/data/*.json"))))
