//! Fuzz targets of the vocabulary's parsers of outside input: identifier normalisers (every
//! kind), jurisdictions, regions, subject refs and links. Corpora in `tests/fuzz-corpus/`; the
//! engine and how to run longer are in `tools/fuzz/engine.rs` and FUZZING.md.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "fuzz harness: a failed check fails the test"
)]

#[path = "../../tools/fuzz/engine.rs"]
mod engine;

use domicile_types::{IdentifierKind, Jurisdiction, Link, NormalizedIdentifier, RegionId, SubjectRef};
use engine::{ensure, text};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    engine::corpus(&engine::corpus_dir(env!("CARGO_MANIFEST_DIR"), target))
}

/// Properties of one normalisation: canonical output normalises to itself (idempotence) and
/// has only the characters its kind allows; errors name the kind and never echo the input.
fn check_identifier(kind: IdentifierKind, bytes: &[u8]) -> Result<(), String> {
    let raw = text(bytes);
    match NormalizedIdentifier::normalize(kind, &raw) {
        Ok(id) => {
            let value = id.expose_value();
            ensure(id.kind() == kind, || "kind changed".into())?;
            ensure(!value.is_empty() && value.trim() == value, || format!("{value:?} is empty or padded"))?;
            let again = NormalizedIdentifier::normalize(kind, value);
            ensure(again.as_ref() == Ok(&id), || format!("not idempotent: {value:?} normalises to {again:?}"))?;
            let allowed = match kind {
                IdentifierKind::Email => {
                    value.matches('@').count() >= 1
                        && !value.chars().any(|c| c.is_whitespace() || c.is_control() || c.is_ascii_uppercase())
                        && value.rsplit_once('@').is_some_and(|(_, d)| d.is_ascii() && d == d.to_ascii_lowercase())
                }
                IdentifierKind::Phone => {
                    value.starts_with('+') && value[1..].bytes().all(|b| b.is_ascii_digit()) && value.len() <= 16
                }
                IdentifierKind::Device | IdentifierKind::CrmAccount => {
                    value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
                }
                IdentifierKind::ChatHandle => {
                    !value.chars().any(|c| c.is_whitespace() || c.is_control())
                        && value.split_once(':').is_some_and(|(p, _)| !p.bytes().any(|b| b.is_ascii_uppercase()))
                }
            };
            ensure(allowed, || format!("{kind} {value:?} has characters the normaliser strips or refuses"))
        }
        Err(e) => {
            ensure(e.kind() == kind, || format!("error of kind {} for {kind}", e.kind()))?;
            let message = e.to_string();
            let trimmed = raw.trim();
            let personal = trimmed.len() >= 8 && trimmed.bytes().any(|b| b == b'@' || b.is_ascii_digit());
            ensure(!personal || !message.contains(trimmed), || format!("error {message:?} echoes the input"))
        }
    }
}

fn identifier_target(target: &str, kind: IdentifierKind) {
    engine::run(target, &corpus(target), |bytes| check_identifier(kind, bytes));
}

#[test]
fn fuzz_email() {
    identifier_target("email", IdentifierKind::Email);
}

#[test]
fn fuzz_phone() {
    identifier_target("phone", IdentifierKind::Phone);
}

#[test]
fn fuzz_device() {
    identifier_target("device", IdentifierKind::Device);
}

#[test]
fn fuzz_chat_handle() {
    identifier_target("chat_handle", IdentifierKind::ChatHandle);
}

#[test]
fn fuzz_crm_account() {
    identifier_target("crm_account", IdentifierKind::CrmAccount);
}

/// Accepted jurisdictions print in their one canonical form, which parses back to them; what
/// `parse` accepts `parse_recorded` accepts alike.
#[test]
fn fuzz_jurisdiction() {
    engine::run("jurisdiction", &corpus("jurisdiction"), |bytes| {
        let raw = text(bytes);
        let recorded = Jurisdiction::parse_recorded(&raw);
        match Jurisdiction::parse(&raw) {
            Ok(j) => {
                let shown = j.to_string();
                let canonical = shown.len() >= 2
                    && shown.bytes().take(2).all(|b| b.is_ascii_uppercase())
                    && j.subdivision().is_none_or(|s| {
                        shown.len() == 3 + s.len()
                            && (1..=3).contains(&s.len())
                            && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                    });
                ensure(canonical, || format!("{shown:?} is not canonical"))?;
                ensure(Jurisdiction::parse(&shown).as_ref() == Ok(&j), || format!("{shown:?} does not parse back"))?;
                ensure(recorded.as_ref() == Ok(&j), || format!("parse_recorded disagrees: {recorded:?}"))?;
                ensure(j.country().subdivision().is_none(), || "country keeps a subdivision".into())
            }
            Err(_) => Ok(()),
        }
    });
}

/// A region id is accepted exactly as written, only in the documented alphabet.
#[test]
fn fuzz_region() {
    engine::run("region", &corpus("region"), |bytes| {
        let raw = text(bytes);
        let valid = RegionId::is_valid(&raw);
        match RegionId::parse(&raw) {
            Ok(region) => {
                ensure(valid, || "parse accepts what is_valid refuses".into())?;
                ensure(region.as_str() == raw, || format!("{:?} read as {:?}", raw, region.as_str()))?;
                let shape = (2..=32).contains(&raw.len())
                    && raw.starts_with(|c: char| c.is_ascii_lowercase())
                    && raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                ensure(shape, || format!("{raw:?} is outside [a-z][a-z0-9-]{{1,31}}"))
            }
            Err(_) => ensure(!valid, || "is_valid accepts what parse refuses".into()),
        }
    });
}

/// Subject refs and links have one spelling: what parses prints back byte for byte.
#[test]
fn fuzz_subject_ref() {
    engine::run("subject_ref", &corpus("subject_ref"), |bytes| {
        let raw = text(bytes);
        let parts = SubjectRef::parse_parts(&raw);
        match SubjectRef::parse(&raw) {
            Ok(r) => {
                ensure(r.to_string() == raw, || format!("{raw:?} prints as {r}"))?;
                ensure(parts.is_ok_and(|(region, id)| region == r.region.as_str() && id == r.id), || {
                    "parse_parts disagrees".into()
                })
            }
            Err(_) => ensure(parts.is_err(), || "parse_parts accepts what parse refuses".into()),
        }
    });
}

#[test]
fn fuzz_link() {
    engine::run("link", &corpus("link"), |bytes| {
        let raw = text(bytes);
        match Link::parse(&raw) {
            Ok(link) => ensure(link.to_string() == raw, || format!("{raw:?} prints as {link}")),
            Err(_) => Ok(()),
        }
    });
}

/// Findings, each pinned by its minimised input (also in the corpus as `regression-*`).
#[test]
fn regressions() {
    // libphonenumber's German patterns admitted 16 digits, beyond E.164's 15: refused now.
    let bytes =
        std::fs::read(engine::corpus_dir(env!("CARGO_MANIFEST_DIR"), "phone").join("regression-16-digits")).unwrap();
    let err = NormalizedIdentifier::normalize(IdentifierKind::Phone, &text(&bytes)).unwrap_err();
    assert_eq!(err.to_string(), "phone identifier is malformed: longer than the 15 digits E.164 allows");
    let regression = |target: &str, name: &str| {
        let path = engine::corpus_dir(env!("CARGO_MANIFEST_DIR"), target).join(name);
        text(&std::fs::read(path).unwrap()).into_owned()
    };
    // `İ` lower-cased to `i` + U+0307, which the normaliser itself refuses: now refused at once.
    let err =
        NormalizedIdentifier::normalize(IdentifierKind::Email, &regression("email", "regression-dotted-capital-i"))
            .unwrap_err();
    assert_eq!(err.to_string(), "email identifier is malformed: local part has characters that are not allowed");
    // A 252-byte address whose punycode domain is over 254 bytes: too long, judged on the canonical form.
    let err =
        NormalizedIdentifier::normalize(IdentifierKind::Email, &regression("email", "regression-punycode-longer"))
            .unwrap_err();
    assert_eq!(err, domicile_types::IdentifierError::TooLong { kind: IdentifierKind::Email, max: 254 });
    // A 122-byte chat handle whose lower case is 182 bytes.
    let err = NormalizedIdentifier::normalize(
        IdentifierKind::ChatHandle,
        &regression("chat_handle", "regression-lowercase-longer"),
    )
    .unwrap_err();
    assert_eq!(err, domicile_types::IdentifierError::TooLong { kind: IdentifierKind::ChatHandle, max: 128 });
    // Fifteen digits, the most E.164 allows, still pass.
    assert_eq!(
        NormalizedIdentifier::normalize(IdentifierKind::Phone, "+49 151 1234 5678").unwrap().expose_value(),
        "+4915112345678"
    );
}
