//! Decode latency: this crate vs `lib_tcstring` (TC string) and `iab_gpp`
//! (GPP string with a usnat section), on the same strings in one run.
//! Run quickly with `cargo bench -- --quick`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

/// A TCF v2.3 string (policy version 5, disclosed vendors segment), from
/// iabtcf-es `modules/core/test/ReportedIssues.test.ts`.
const TC: &str = "CQd924AQd924AASACCENCNFsAP_gAEIAACiQL6QBAAGAAOANmAcAF9IAIADgAA.IL6AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.YIAAAAAAAAAA";

/// usnat v2 with GPC, from iabgpp-es `modules/cmpapi/test/encoder/section/UsNat.test.ts`.
const GPP: &str = "DBABLA~CVVVkkkkkpFY.YA";

fn bench(c: &mut Criterion) {
    // Sanity: all three decoders accept the strings.
    assert!(domicile_signals::tcf::decode(TC).is_ok());
    assert!(lib_tcstring::TcModelV2::try_from(TC).is_ok());
    assert!(domicile_signals::gpp::decode(GPP).is_ok());
    assert!(iab_gpp::v1::GPPString::parse_str(GPP).unwrap().decode_all_sections().iter().all(Result::is_ok));

    let mut g = c.benchmark_group("tc_string");
    g.bench_function("domicile_signals", |b| b.iter(|| domicile_signals::tcf::decode(black_box(TC))));
    g.bench_function("lib_tcstring", |b| b.iter(|| lib_tcstring::TcModelV2::try_from(black_box(TC))));
    g.finish();

    let mut g = c.benchmark_group("gpp_usnat");
    g.bench_function("domicile_signals", |b| b.iter(|| domicile_signals::gpp::decode(black_box(GPP))));
    g.bench_function("iab_gpp", |b| {
        b.iter(|| iab_gpp::v1::GPPString::parse_str(black_box(GPP)).map(|s| s.decode_all_sections()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
