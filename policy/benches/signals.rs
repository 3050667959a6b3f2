//! Decode and map one web consent signal, as `RecordSignal` does before it writes: a TC string
//! under the German pack (the EU baseline's TCF mapping) and a GPP string with a usnat section
//! under California's pack, beside the decode-only crates `lib_tcstring` and `iab_gpp` on the
//! same strings in the same run (target: decode + map ≤ 2 µs each).
//! `cargo bench -p domicile-policy --bench signals`
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark setup")]

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use domicile_policy::signal_meaning::{Decoded, map};
use domicile_policy::{Pack, PackSet, PackSource};
use domicile_types::Jurisdiction;

/// A TCF v2.3 string (policy version 5, disclosed vendors segment), from iabtcf-es
/// `modules/core/test/ReportedIssues.test.ts` (as in the signals crate's test data).
const TC: &str = "CQd924AQd924AASACCENCNFsAP_gAEIAACiQL6QBAAGAAOANmAcAF9IAIADgAA.IL6AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.YIAAAAAAAAAA";
/// usnat v2 with GPC, from iabgpp-es `modules/cmpapi/test/encoder/section/UsNat.test.ts`.
const GPP: &str = "DBABLA~CVVVkkkkkpFY.YA";
const AT: i64 = 1_795_428_000;

fn pack(dirs: &[&str], jurisdiction: &str) -> Pack {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-packs");
    let sources: Vec<PackSource> = dirs
        .iter()
        .map(|d| {
            let path = root.join(d).join("pack.toml");
            PackSource::new(path.display().to_string(), std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    let (set, _) = PackSet::compile(&sources).unwrap();
    set.get(&Jurisdiction::parse(jurisdiction).unwrap()).unwrap().clone()
}

fn bench(c: &mut Criterion) {
    let de = pack(&["_baseline", "de"], "DE");
    let ca = pack(&["us", "us-ca"], "US-CA");
    let tcf =
        |text: &str| map(&Decoded::Tcf(Box::new(domicile_signals::tcf::decode(text).unwrap())), de.signals(), "de", AT);
    let gpp = |text: &str| map(&Decoded::Gpp(domicile_signals::gpp::decode(text).unwrap()), ca.signals(), "us-ca", AT);
    // Sanity: both map to entries; the other crates decode the same strings.
    assert!(!tcf(TC).entries.is_empty());
    assert!(!gpp(GPP).entries.is_empty());
    assert!(lib_tcstring::TcModelV2::try_from(TC).is_ok());
    assert!(iab_gpp::v1::GPPString::parse_str(GPP).unwrap().decode_all_sections().iter().all(Result::is_ok));

    let mut g = c.benchmark_group("tc_string");
    g.bench_function("decode_and_map", |b| b.iter(|| tcf(black_box(TC))));
    g.bench_function("lib_tcstring_decode", |b| b.iter(|| lib_tcstring::TcModelV2::try_from(black_box(TC))));
    g.finish();
    let mut g = c.benchmark_group("gpp_usnat");
    g.bench_function("decode_and_map", |b| b.iter(|| gpp(black_box(GPP))));
    g.bench_function("iab_gpp_decode", |b| {
        b.iter(|| iab_gpp::v1::GPPString::parse_str(black_box(GPP)).map(|s| s.decode_all_sections()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
