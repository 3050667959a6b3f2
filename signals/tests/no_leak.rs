//! Error messages must never quote the input: consent strings are
//! personal-data adjacent and errors end up in logs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use domicile_signals::{gpp, tcf};

const MALFORMED: &[&str] = &[
    // truncated TC strings
    "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAA",
    "CQSbk4AQSbk4ANwAAAENAwCgAAAAAAAAAAYgACPAAAAA.IDKQA4AAgAKAGQAygAA",
    // withdrawn policy version / v1 string / bad characters
    "COrVd1pOrVd1pACABCENAHCAAAAAAAAAAAiQAAAAAAAA",
    "BOhwdphOxFC7tAHABBFRC--AAAAuhr_7__7-_9_-_f__9uj3Or_v_f__32ccL59v_h_7v",
    "CPXxRfAPXxRfAAfKABENB+CgAAAAAAAAAAYgAAAAAAAA",
    "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA..IDKQA4AAgAKAGQAygAAA",
    "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA.IDKQA4AAgAKAGQAygAAA.IDKQA4AAgAKAGQAygAAA",
    "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA.4DKQA4AAgAKAGQAygAAA",
    // GPP: bad header, count mismatch, broken sections
    "DBABM~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAA~1YNN",
    "DBACNY~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA",
    "DBABLA~BVVVVVVVVWA.AA",
    "DBABLA~zzzzzzzzzzzzzzzzz",
    "DBABLA~BVVVVVVVVWA.YA.YA",
    "DBABTA~1YNX",
    "DBABBg~B_____________",
    "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "DBABM~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA~secret-user-token-123456",
];

fn assert_no_leak(input: &str, message: &str) {
    assert!(!message.contains(input), "error quotes the input: {message}");
    let chars: Vec<char> = input.chars().collect();
    for w in chars.windows(8) {
        let sub: String = w.iter().collect();
        assert!(!message.contains(&sub), "error contains input substring {sub:?}: {message}");
    }
}

#[test]
fn errors_never_contain_the_input() {
    let mut errors = 0;
    for input in MALFORMED {
        for res in
            [tcf::decode(input).map(|_| ()), tcf::decode_lenient(input).map(|_| ()), gpp::decode(input).map(|_| ())]
        {
            if let Err(e) = res {
                errors += 1;
                let msg = e.to_string();
                assert!(!msg.is_empty());
                assert_no_leak(input, &msg);
                assert_no_leak(input, &format!("{e:?}"));
            }
        }
    }
    // Every malformed input must fail at least one way (most fail all three).
    assert!(errors >= MALFORMED.len() * 2, "only {errors} errors");
}

#[test]
fn error_messages_locate_the_problem() {
    let e = tcf::decode("COrVd1pOrVd1pACABCENAHCAAAAAAAAAAAiQAAAAAAAA").unwrap_err();
    assert_eq!(
        e.to_string(),
        "core at bit 132: TCF policy version 2 is withdrawn (TCF v2.2 requires policy version 4 or later)"
    );
    let e = gpp::decode("DBABLA~BVVVVVVVVWA.AA").unwrap_err();
    assert_eq!(e.to_string(), "usnat gpc at bit 0: invalid subsection");
    let e = gpp::decode("DBACNY~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA").unwrap_err();
    assert!(e.to_string().starts_with("header at bit 12: "), "{e}");
}

#[test]
fn unsupported_section_debug_is_redacted() {
    let g = gpp::decode("DBABMA~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA").unwrap();
    assert_eq!(g.sections.len(), 1);
    // Build a header listing ids 1 (tcfeuv1, unsupported) and 2.
    let raw = "BOEFEAyOEFEAyAHABDENAI4AAAB9vABAASA";
    let s = format!("DBAB-A~{raw}~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA");
    let g = gpp::decode(&s).unwrap();
    assert_eq!(g.sections[0].id(), 1);
    assert_eq!(g.sections[0].name(), "unsupported");
    assert_no_leak(raw, &format!("{g:?}"));
    assert_no_leak(raw, &serde_json::to_string(&g).unwrap());
    // Re-encoding keeps the unsupported section verbatim.
    assert_eq!(gpp::encode(&g).unwrap(), s);
}
