//! Fuzz targets of the hand-written protobuf readers (`raw.rs`), each compared with prost's
//! generated decoding of the same bytes (differential): whatever the generated type reads, the
//! raw reader reads to the same fields and checks alike; whatever the raw reader reads, the
//! generated type reads too, unless a string is not UTF-8 (which the raw reader leaves to the
//! field's accessor). Corpora in `tests/fuzz-corpus/`; the engine and how to run longer are in
//! `tools/fuzz/engine.rs` and FUZZING.md.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "fuzz harness: a failed check fails the test"
)]

#[path = "../../tools/fuzz/engine.rs"]
mod engine;

use domicile_proto::convert::{self, FieldViolation};
use domicile_proto::pb::common::v1 as common;
use domicile_proto::pb::gateway::v1 as gateway;
use domicile_proto::pb::node::v1 as node;
use domicile_proto::raw::{
    EncodedDecideBatchRequest, RawDecideBatchRequest, RawDecideBatchResponse, RawDecideStreamItem, RawKey, RawResult,
    SelectorRef, SubjectKeyRef,
};
use domicile_types::{Channel, Link, Purpose, RegionId, SubjectId, SubjectRef};
use engine::ensure;
use prost::Message;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    engine::corpus(&engine::corpus_dir(env!("CARGO_MANIFEST_DIR"), target))
}

/// A prost error the raw reader may legitimately not have: a string that is not UTF-8.
fn utf8_error(e: &prost::DecodeError) -> bool {
    e.to_string().contains("UTF-8")
}

fn violation(r: Result<impl PartialEq + std::fmt::Debug, FieldViolation>) -> Result<String, (String, String)> {
    r.map(|v| format!("{v:?}")).map_err(|e| (e.field, e.description))
}

/// The node's `DecideBatchRequest`.
fn check_batch_request(bytes: &[u8]) -> Result<(), String> {
    let raw = RawDecideBatchRequest::decode(bytes);
    let generated = node::DecideBatchRequest::decode(bytes);
    match (&raw, &generated) {
        (Err(_), Err(_)) => Ok(()),
        (Err(e), Ok(_)) => Err(format!("only the generated type reads it; raw: {e}")),
        (Ok(raw), Err(e)) => {
            let strings_ok = raw.items.iter().all(|i| {
                std::str::from_utf8(&i.purpose).is_ok()
                    && std::str::from_utf8(&i.channel).is_ok()
                    && i.subject.as_ref().and_then(|s| s.key.as_ref()).is_none_or(|k| match k {
                        RawKey::Link(b) | RawKey::SubjectRef(b) => std::str::from_utf8(b).is_ok(),
                    })
            });
            ensure(!strings_ok || utf8_error(e), || format!("only the raw reader reads it; generated: {e}"))
        }
        (Ok(raw), Ok(generated)) => {
            ensure(raw.items.len() == generated.items.len(), || "item counts differ".into())?;
            ensure(raw.at == generated.at, || format!("at: {:?} vs {:?}", raw.at, generated.at))?;
            for (i, (r, g)) in raw.items.iter().zip(&generated.items).enumerate() {
                let field = format!("items[{i}]");
                ensure(r.id == g.id, || format!("{field}.id differs"))?;
                ensure(*r.purpose == *g.purpose.as_bytes() && *r.channel == *g.channel.as_bytes(), || {
                    format!("{field} strings differ")
                })?;
                let raw_key = r.subject.as_ref().map(|s| match &s.key {
                    None => (0, &[][..]),
                    Some(RawKey::Link(b)) => (1, &b[..]),
                    Some(RawKey::SubjectRef(b)) => (2, &b[..]),
                });
                let generated_key = g.subject.as_ref().map(|s| match &s.key {
                    None => (0, &[][..]),
                    Some(common::subject_key::Key::Link(t)) => (1, t.as_bytes()),
                    Some(common::subject_key::Key::SubjectRef(t)) => (2, t.as_bytes()),
                });
                ensure(raw_key == generated_key, || format!("{field}.subject differs"))?;
                // The accessors check as the generated path's conversions do, with the same messages.
                let raw_subject = violation(r.subject_key(&field).map(|k| match k {
                    SubjectKeyRef::Link(link) => link.to_string(),
                    SubjectKeyRef::Ref { region, id } => format!("{region}/{id}"),
                }));
                let generated_subject = violation(convert::subject_key(&field, g.subject.as_ref()).map(|k| match k {
                    convert::SubjectKey::Link(link) => link.to_string(),
                    convert::SubjectKey::Ref(subject) => subject.to_string(),
                }));
                ensure(raw_subject == generated_subject, || {
                    format!("{field} subject: {raw_subject:?} vs {generated_subject:?}")
                })?;
                let (rp, gp) = (violation(r.purpose(&field)), violation(convert::purpose(&field, &g.purpose)));
                ensure(rp == gp, || format!("{field} purpose: {rp:?} vs {gp:?}"))?;
                let (rc, gc) = (violation(r.channel(&field)), violation(convert::channel(&field, &g.channel)));
                ensure(rc == gc, || format!("{field} channel: {rc:?} vs {gc:?}"))?;
            }
            Ok(())
        }
    }
}

#[test]
fn fuzz_decide_batch_request() {
    engine::run("decide_batch_request", &corpus("decide_batch_request"), check_batch_request);
}

/// The gateway's `DecideStreamItem`.
fn check_stream_item(bytes: &[u8]) -> Result<(), String> {
    let raw = RawDecideStreamItem::decode(bytes);
    let generated = gateway::DecideStreamItem::decode(bytes);
    match (&raw, &generated) {
        (Err(_), Err(_)) => Ok(()),
        (Err(e), Ok(_)) => Err(format!("only the generated type reads it; raw: {e}")),
        (Ok(raw), Err(e)) => {
            let view = raw.subject.as_ref().map(|s| s.view("subject"));
            let strings_ok = std::str::from_utf8(&raw.purpose).is_ok()
                && std::str::from_utf8(&raw.channel).is_ok()
                && view.is_none_or(|v| v.is_ok());
            ensure(!strings_ok || utf8_error(e), || format!("only the raw reader reads it; generated: {e}"))
        }
        (Ok(raw), Ok(generated)) => {
            ensure(raw.id == generated.id, || "id differs".into())?;
            ensure(
                *raw.purpose == *generated.purpose.as_bytes() && *raw.channel == *generated.channel.as_bytes(),
                || "strings differ".into(),
            )?;
            let raw_view = raw.subject.as_ref().map(|s| s.view("subject"));
            let generated_view = generated.subject.as_ref().map(|s| match &s.selector {
                None => None,
                Some(gateway::subject_selector::Selector::Identifier(id)) => {
                    Some(SelectorRef::Identifier { kind: &id.kind, value: &id.value })
                }
                Some(gateway::subject_selector::Selector::Link(t)) => Some(SelectorRef::Link(t)),
                Some(gateway::subject_selector::Selector::SubjectRef(t)) => Some(SelectorRef::SubjectRef(t)),
            });
            match (raw_view, generated_view) {
                (None, None) => Ok(()),
                (Some(Ok(r)), Some(g)) => ensure(r == g, || format!("subject: {r:?} vs {g:?}")),
                (r, g) => Err(format!("subject: {r:?} vs {g:?}")),
            }?;
            let (rp, gp) =
                (violation(raw.purpose("purpose")), violation(convert::purpose("purpose", &generated.purpose)));
            ensure(rp == gp, || format!("purpose: {rp:?} vs {gp:?}"))?;
            let (rc, gc) =
                (violation(raw.channel("channel")), violation(convert::channel("channel", &generated.channel)));
            ensure(rc == gc, || format!("channel: {rc:?} vs {gc:?}"))
        }
    }
}

#[test]
fn fuzz_decide_stream_item() {
    engine::run("decide_stream_item", &corpus("decide_stream_item"), check_stream_item);
}

/// A node's `DecideBatchResponse`, which the gateway reads with decisions kept encoded: whatever
/// the generated type reads, the raw reader reads to the same ids and results, and a decision
/// kept encoded is one the generated `Decision` reads.
fn check_batch_response(bytes: &[u8]) -> Result<(), String> {
    let raw = RawDecideBatchResponse::decode(bytes);
    let Ok(generated) = node::DecideBatchResponse::decode(bytes) else { return Ok(()) };
    let raw = raw.map_err(|e| format!("only the generated type reads it; raw: {e}"))?;
    ensure(raw.outcomes.len() == generated.outcomes.len(), || "outcome counts differ".into())?;
    for (r, g) in raw.outcomes.iter().zip(&generated.outcomes) {
        ensure(r.id == g.id, || "ids differ".into())?;
        match (&r.result, &g.result) {
            (None, None) => {}
            (Some(RawResult::Decision(b)), Some(node::decide_outcome::Result::Decision(_))) => {
                ensure(common::Decision::decode(&b[..]).is_ok(), || "a kept decision does not read".into())?;
            }
            (Some(RawResult::Error(r)), Some(node::decide_outcome::Result::Error(g))) => {
                ensure(r == g, || format!("errors differ: {r:?} vs {g:?}"))?;
            }
            (r, g) => return Err(format!("results differ: {r:?} vs {g:?}")),
        }
    }
    Ok(())
}

#[test]
fn fuzz_decide_batch_response() {
    engine::run("decide_batch_response", &corpus("decide_batch_response"), check_batch_response);
}

/// Regenerates the corpora, requests as the gateway's encoder writes them:
/// `cargo test -p domicile-proto --test fuzz write_proto_corpus -- --ignored`.
#[test]
#[ignore = "rewrites tests/fuzz-corpus; run by hand"]
fn write_proto_corpus() {
    let dir = |target: &str| engine::corpus_dir(env!("CARGO_MANIFEST_DIR"), target);
    let link = Link::from_bytes(*b"0123456789abcdef");
    let subject = SubjectRef { region: RegionId::parse("eu-central").unwrap(), id: SubjectId::from_bytes([0xab; 16]) };
    let mut batch = EncodedDecideBatchRequest::with_capacity(3);
    batch.push(1, &convert::SubjectKey::Link(link), Purpose::Marketing, Channel::Email, None);
    batch.push(2, &convert::SubjectKey::Ref(subject.clone()), Purpose::Survey, Channel::Sms, None);
    batch.push(u64::MAX, &convert::SubjectKey::Link(link), Purpose::Service, Channel::VoiceAutomated, None);
    std::fs::write(dir("decide_batch_request").join("three-items-at"), batch.clone().at(1_800_000_000).as_bytes())
        .unwrap();
    std::fs::write(dir("decide_batch_request").join("three-items"), batch.as_bytes()).unwrap();
    std::fs::write(dir("decide_batch_request").join("empty"), b"").unwrap();

    let item = |id, selector, purpose: &str, channel: &str| gateway::DecideStreamItem {
        id,
        subject: Some(gateway::SubjectSelector { selector: Some(selector) }),
        purpose: purpose.into(),
        channel: channel.into(),
        ..Default::default()
    };
    let items = [
        (
            "identifier",
            item(
                7,
                gateway::subject_selector::Selector::Identifier(common::Identifier {
                    kind: "email".into(),
                    value: "anna.schmidt@example.de".into(),
                }),
                "marketing",
                "email",
            ),
        ),
        ("link", item(8, gateway::subject_selector::Selector::Link(link.to_string()), "survey", "sms")),
        (
            "subject-ref",
            item(9, gateway::subject_selector::Selector::SubjectRef(subject.to_string()), "service", "voice_live"),
        ),
    ];
    for (name, item) in items {
        std::fs::write(dir("decide_stream_item").join(name), item.encode_to_vec()).unwrap();
    }

    let response = node::DecideBatchResponse {
        outcomes: vec![
            node::DecideOutcome {
                id: 1,
                result: Some(node::decide_outcome::Result::Decision(common::Decision {
                    effect: common::Effect::Deny as i32,
                    reasons: vec!["de.marketing.email".into()],
                    pack: Some(common::PackRef { id: "de".into(), version: "2026.11.0".into() }),
                    obligations: vec![common::Obligation { id: "unsubscribe".into(), text: "include one".into() }],
                    explanation: "no consent".into(),
                    valid_until: Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 0 }),
                    subject_ref: subject.to_string(),
                    region: "eu-central".into(),
                    pack_jurisdiction: "DE".into(),
                    country_fallback: false,
                })),
            },
            node::DecideOutcome {
                id: 2,
                result: Some(node::decide_outcome::Result::Error(common::ItemError {
                    code: 5,
                    message: "subject not found".into(),
                })),
            },
        ],
    };
    std::fs::write(dir("decide_batch_response").join("decision-and-error"), response.encode_to_vec()).unwrap();
}
