//! One policy decision: the compiled pack table against the same rules written as Cedar policies.
//!
//! `cargo bench -p domicile-policy --bench decide` (BENCH_SECS=3 for the measurement time).
//! The Cedar policies are generated from the compiled DE pack (with the EU baseline it extends),
//! so both engines hold exactly the same rules; a differential check over every purpose × channel
//! and several consent states runs before measuring. BENCHMARKS.md records the figures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "benchmark harness")]

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use cedar_policy::{Authorizer, Decision, Entities, PolicySet};
use criterion::{Criterion, criterion_group, criterion_main};
use domicile_policy::{ConsentFact, DecisionInput, Effect, Facts, Pack, PackSet, PackSource};
use domicile_types::{Channel, ConsentState, Jurisdiction, Purpose};

// The pack as Cedar policies, shared with the PostgreSQL + Cedar baseline server (bench/baseline).
#[path = "shared/cedar.rs"]
mod cedar;
use cedar::{policies as cedar_policies, request as cedar_request};

const AT: i64 = 1_795_428_000; // 2026-11-23T10:00:00Z

fn de_pack() -> Pack {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-packs");
    let sources: Vec<PackSource> = ["_baseline", "de"]
        .iter()
        .map(|d| {
            let path = root.join(d).join("pack.toml");
            PackSource::new(path.display().to_string(), std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    let (set, _) = PackSet::compile(&sources).unwrap();
    set.get(&Jurisdiction::parse("DE").unwrap()).unwrap().clone()
}

fn consent(state: ConsentState, captured: i64, expires: Option<i64>) -> ConsentFact {
    ConsentFact {
        state,
        captured_at_unix: captured,
        expires_at_unix: expires,
        double_opt_in_confirmed: true,
        kind: None,
        hours: Vec::new(),
    }
}

/// Both engines must agree before their speed is compared.
fn differential_check(pack: &Pack, policies: &PolicySet) {
    let authorizer = Authorizer::new();
    let entities = Entities::empty();
    let soft = Facts { contact_from_sale: true, similar_products: true, opt_out_offered: true, ..Facts::default() };
    let consents = [
        None,
        Some(consent(ConsentState::Granted, AT - 86_400, None)),
        Some(consent(ConsentState::Granted, AT - 86_400, Some(AT - 1))),
        Some(consent(ConsentState::Granted, AT + 60, None)),
        Some(consent(ConsentState::Withdrawn, AT - 86_400, None)),
        Some(consent(ConsentState::Denied, AT - 86_400, None)),
    ];
    let mut checked = 0;
    for &purpose in Purpose::ALL {
        for &channel in Channel::ALL {
            for consent in &consents {
                for facts in [Facts::default(), soft] {
                    let mut input = DecisionInput::new(purpose, channel, AT, consent.clone());
                    input.facts = facts;
                    let ours = pack.evaluate(&input).effect == Effect::Allow;
                    let theirs = authorizer.is_authorized(&cedar_request(&input), policies, &entities).decision()
                        == Decision::Allow;
                    assert_eq!(ours, theirs, "engines disagree on {purpose} by {channel} with {consent:?} {facts:?}");
                    checked += 1;
                }
            }
        }
    }
    println!("differential check: {checked} inputs, Domicile and Cedar agree");
}

fn bench(c: &mut Criterion) {
    let pack = de_pack();
    let (policies, n) = cedar_policies(&pack);
    println!("DE pack: {} effective rules; Cedar: {n} policies", pack.effective_rules().len());
    differential_check(&pack, &policies);

    let allow = DecisionInput::new(
        Purpose::Marketing,
        Channel::Email,
        AT,
        Some(consent(ConsentState::Granted, AT - 86_400, Some(AT + 86_400 * 365))),
    );
    let deny = DecisionInput::new(Purpose::Marketing, Channel::Voice, AT, None);
    assert_eq!(pack.evaluate(&allow).effect, Effect::Allow);
    assert_eq!(pack.evaluate(&deny).effect, Effect::Deny);

    let mut group = c.benchmark_group("decide");
    group.bench_function("domicile/evaluate/allow", |b| b.iter(|| black_box(&pack).evaluate(black_box(&allow)).effect));
    group.bench_function("domicile/evaluate/deny", |b| b.iter(|| black_box(&pack).evaluate(black_box(&deny)).effect));
    group.bench_function("domicile/decide/allow", |b| b.iter(|| black_box(&pack).decide(black_box(&allow))));

    let authorizer = Authorizer::new();
    let entities = Entities::empty();
    let (allow_req, deny_req) = (cedar_request(&allow), cedar_request(&deny));
    group.bench_function("cedar/is_authorized/allow", |b| {
        b.iter(|| authorizer.is_authorized(black_box(&allow_req), black_box(&policies), &entities).decision())
    });
    group.bench_function("cedar/is_authorized/deny", |b| {
        b.iter(|| authorizer.is_authorized(black_box(&deny_req), black_box(&policies), &entities).decision())
    });
    group.finish();
}

fn config() -> Criterion {
    let secs = std::env::var("BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    Criterion::default()
        .measurement_time(Duration::from_secs(secs))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50)
}

criterion_group! { name = benches; config = config(); targets = bench }
criterion_main!(benches);
