//! Decoding never panics, whatever the input: random strings, random
//! base64url, truncations and bit flips of valid strings, hostile length
//! fields.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use domicile_signals::{gpp, tcf};
use proptest::prelude::*;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

const VALID: &[&str] = &[
    "CQSbk4AQSbk4ANwAAAENAwCgAAAAAAAAAAYgACPAAAAA.IDKQA4AAgAKAGQAygAAA.YAAAAAAAAAAA",
    "COwBOpCOwBOpCLqAAAENAPCAAAAAAAAAAAAAFfwAYFfAV-BVkAGBVYFWAAA.IFoEUQQgAIQwgIwQABAEAAAAOIAACAIAAAAQAIAgEAACEAAAAAgAQBAAAAAAAGBAAgAAAAAAAFAAECAAAgAAQARAEQAAAAAJAAIAAgAAAYQEAAAQmAgBC3ZAYzUw",
    "DBABM~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA",
    "DBACNY~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA~1YNN",
    "DBABLA~BVVVVVVVVWA.YA",
    "DBABLA~CVVVkkkkkpFY.YA",
    "DBACLUw~CAAQAAAAAABA.QA~BQBA.QA",
    "DBABDA~BPSG_8APSG_8AAyACAENGdCgf_gfgAfgfgBhADVqxGAD0AILVgAA.fHHHA4444ao",
    "DBABDA~BPSG_8APSG_8AAAAAAENAACAAAAAAAAAAAAAAAAACCgAS7o.YAAAAAAAAAA",
];

fn decode_all(s: &str) {
    let _ = tcf::decode(s);
    let _ = tcf::decode_lenient(s);
    let _ = gpp::decode(s);
    for id in 0..=30 {
        let _ = gpp::decode_section(id, s);
    }
}

fn b64(bytes: &[u8]) -> String {
    bytes.iter().map(|b| char::from(ALPHABET[usize::from(b % 64)])).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_strings(s in ".{0,200}") {
        decode_all(&s);
    }

    #[test]
    fn random_base64url(bytes in prop::collection::vec(any::<u8>(), 0..400), prefix in prop::sample::select(vec!["", "C", "D", "DBA", "B", "CP"])) {
        let body = b64(&bytes);
        decode_all(&format!("{prefix}{body}"));
        // Also as segments / sections.
        let dotted: String = body.chars().enumerate().map(|(i, c)| if i % 37 == 36 { '.' } else { c }).collect();
        decode_all(&format!("{prefix}{dotted}"));
        let tilde: String = body.chars().enumerate().map(|(i, c)| if i % 23 == 22 { '~' } else { c }).collect();
        decode_all(&format!("DBA{tilde}"));
    }

    #[test]
    fn truncations_and_bit_flips(idx in 0..VALID.len(), cut in 0usize..400, pos in 0usize..400, bit in 0u8..6) {
        let s = VALID[idx];
        let cut = cut.min(s.len());
        decode_all(&s[..cut]);
        let mut chars: Vec<u8> = s.bytes().collect();
        let p = pos % chars.len();
        if let Some(v) = ALPHABET.iter().position(|&a| a == chars[p]) {
            chars[p] = ALPHABET[v ^ (1 << bit)];
        }
        decode_all(&String::from_utf8(chars).unwrap());
    }
}

/// Packs bits MSB first into base64url.
fn bits_to_b64(bits: &[bool]) -> String {
    bits.chunks(6)
        .map(|c| {
            let v = c.iter().enumerate().fold(0usize, |acc, (i, &b)| acc | (usize::from(b) << (5 - i)));
            char::from(ALPHABET[v])
        })
        .collect()
}

fn push(bits: &mut Vec<bool>, value: u64, n: usize) {
    for i in (0..n).rev() {
        bits.push(i < 64 && (value >> i) & 1 == 1);
    }
}

/// A TC core up to (not including) the vendor consent section.
fn core_prefix() -> Vec<bool> {
    let mut b = Vec::new();
    push(&mut b, 2, 6);
    push(&mut b, 0, 36 * 2 + 12 * 2 + 6);
    push(&mut b, 4, 6);
    push(&mut b, 13, 6); // "EN"
    push(&mut b, 1, 12);
    push(&mut b, 4, 6);
    push(&mut b, 0, 2 + 12 + 24 + 24 + 1);
    push(&mut b, 0, 12);
    b
}

#[test]
fn hostile_lengths_fail_fast() {
    // MaxVendorId 65535 bitfield with no bits behind it.
    let mut b = core_prefix();
    push(&mut b, 65535, 16);
    push(&mut b, 0, 1);
    assert!(tcf::decode_lenient(&bits_to_b64(&b)).is_err());

    // 4095 range entries claimed, none present.
    let mut b = core_prefix();
    push(&mut b, 65535, 16);
    push(&mut b, 1, 1);
    push(&mut b, 4095, 12);
    assert!(tcf::decode_lenient(&bits_to_b64(&b)).is_err());

    // A range with end < start, and one past MaxVendorId.
    for (start, end, max) in [(10u64, 5u64, 100u64), (1, 200, 100), (0, 0, 100)] {
        let mut b = core_prefix();
        push(&mut b, max, 16);
        push(&mut b, 1, 1);
        push(&mut b, 1, 12);
        push(&mut b, 1, 1);
        push(&mut b, start, 16);
        push(&mut b, end, 16);
        push(&mut b, 0, 64);
        assert!(tcf::decode_lenient(&bits_to_b64(&b)).is_err(), "{start}..{end} max {max}");
    }

    // Overlapping full ranges repeated: bounded by MaxVendorId, so the
    // result is 65535 ids, not 4095 × 65535.
    let mut b = core_prefix();
    push(&mut b, 65535, 16);
    push(&mut b, 1, 1);
    push(&mut b, 4095, 12);
    for _ in 0..4095 {
        push(&mut b, 1, 1);
        push(&mut b, 1, 16);
        push(&mut b, 65535, 16);
    }
    push(&mut b, 0, 16 + 1 + 12);
    let m = tcf::decode_lenient(&bits_to_b64(&b)).unwrap();
    assert_eq!(m.vendor_consents.len(), 65535);

    // Publisher restrictions: 4095 restrictions × 1..=65535 exceed the
    // global cap and are refused instead of allocating ~0.5 GB.
    let mut b = core_prefix();
    push(&mut b, 0, 17 * 2);
    push(&mut b, 4095, 12);
    for _ in 0..4095 {
        push(&mut b, 1, 6);
        push(&mut b, 1, 2);
        push(&mut b, 1, 12);
        push(&mut b, 1, 1);
        push(&mut b, 1, 16);
        push(&mut b, 65535, 16);
    }
    assert!(tcf::decode_lenient(&bits_to_b64(&b)).is_err());

    // GPP header listing 1..=65535 with one section present.
    let mut b = Vec::new();
    push(&mut b, 3, 6);
    push(&mut b, 1, 6);
    push(&mut b, 1, 12);
    b.push(true);
    b.extend([true, true]); // 1
    // 65534 in Fibonacci: long, but the decoder caps the expansion.
    b.extend([
        false, false, false, false, false, false, false, false, false, false, false, false, false, false, false, false,
        false, false, false, false, false, false, true, true,
    ]);
    let s = format!("{}~1YNN", bits_to_b64(&b));
    assert!(gpp::decode(&s).is_err());
}
