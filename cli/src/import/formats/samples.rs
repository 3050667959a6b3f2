//! Every sample of `cli/tests/import-samples/` read with the sample mapping, each row and error
//! asserted; and reading from a source that hands out a few bytes at a time, over 200,000
//! generated records, to show that rows come out as the input goes in (no whole-file read).
//!
//! How memory stays flat: `split` and `csv` hold one record (at most `MAX_RECORD_BYTES`, a longer
//! one is refused without being kept) besides the caller's `BufRead` buffer; [`rows`] holds the
//! rows of that one record; nothing else accumulates. The streaming tests check the first half:
//! at every row, the bytes pulled from the source are those of the records read so far plus one
//! buffer.

use std::cell::Cell;
use std::io::{BufReader, Read};
use std::rc::Rc;

use super::*;

const MAPPING: &str = include_str!("../../../tests/import-samples/mapping.toml");

fn mapping() -> Mapping {
    match Mapping::parse(MAPPING, "mapping.toml") {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    }
}

/// A row or an error in one line: `line id identifiers jurisdiction purpose channels action
/// captured expires notice`, or `line ERR field` (`SKIP` for a record with nothing to import).
fn describe(item: &Result<ImportRow, RowError>) -> String {
    let time = |ms: i64| jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default();
    match item {
        Ok(r) => format!(
            "{} {} {} {} {} {} {} {} {} {}",
            r.line,
            r.source_event_id,
            r.identifiers.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(","),
            r.jurisdiction,
            r.purpose,
            r.channels.iter().map(|c| c.as_str()).collect::<Vec<_>>().join("+"),
            r.action,
            time(r.captured_at_ms),
            r.expires_at.map_or("-".to_owned(), |s| time(s * 1000)),
            if r.notice_version.is_empty() { "-" } else { &r.notice_version },
        ),
        Err(e) => format!("{} {} {}", e.line, if e.is_skip() { "SKIP" } else { "ERR" }, e.field),
    }
}

/// Reads a sample twice: the same rows and errors both times (ids are stable), and no error
/// names a value.
fn read(format: Format, text: &str) -> Vec<String> {
    let mapping = mapping();
    let first: Vec<_> = rows(format, text.as_bytes(), &mapping).collect();
    let second: Vec<_> = rows(format, text.as_bytes(), &mapping).collect();
    assert_eq!(first, second, "a second read differs");
    let values = ["example", "hidden", "secret", "leaky", "broken", "typo", "L-0099", "2125550101", "yesterday"];
    for e in first.iter().filter_map(|r| r.as_ref().err()) {
        let text = e.to_string();
        assert!(!values.iter().any(|v| text.contains(v)), "an error names a value: {text}");
    }
    first.iter().map(describe).collect()
}

#[test]
fn onetrust_receipts() {
    let news = "8f14e45f-ceea-4e7a-9c2b-6a1d2f3b4c5d";
    let got = read(Format::OneTrust, include_str!("../../../tests/import-samples/onetrust.json"));
    let want = [
        format!(
            "2 ot-rcpt-0001#{news} email:anna.schmidt@example.com DE marketing email grant 2025-01-15T09:30:00Z 2027-01-15T09:30:00Z -"
        ),
        "2 ot-rcpt-0001#C0004 email:anna.schmidt@example.com DE profiling web deny 2025-01-15T09:30:05Z - -".into(),
        "2 SKIP purposes[2].TransactionType".into(),
        // No receipt id: the content hash (pinned: a change would break re-imports' idempotency).
        format!(
            "16 c0a57a0c9c69d1fd7a787a5996b94aad#{news} email:marc.dupont@example.com FR marketing email withdraw 2025-02-01T12:00:00Z - -"
        ),
        "26 ERR record".into(),
        // No geoLocation: the mapping's default.
        "34 ot-rcpt-0004#C0002 crm_account:CRM-000123 DE analytics web grant 2025-03-02T10:00:00Z - -".into(),
        "34 ERR purposes.C0099".into(),
        "44 ERR identifierType".into(),
        format!(
            "52 ot-rcpt-0006#{news} email:jane.doe@example.com GB marketing email withdraw 2025-03-04T16:45:00Z - -"
        ),
        "52 ot-rcpt-0006#C0004 email:jane.doe@example.com GB profiling web withdraw 2025-03-04T16:45:00Z - -".into(),
    ];
    assert_eq!(got, want);
}

#[test]
fn fides_consent_reports() {
    let got = read(Format::Fides, include_str!("../../../tests/import-samples/fides.json"));
    let want = [
        "2 fides-pref-0001 email:lena.meyer@example.com DE marketing email grant 2025-03-10T08:15:30.25Z - pri_0a1b2c3d-email-v2",
        "3 fides-pref-0002 phone:+12125550147 US-CA marketing sms withdraw 2025-03-11T17:00:00Z - pri_7d8e9f00-sms-v1",
        "4 ERR record",
        "5 SKIP preference",
        "6 979e2f3ccea6ada01ae982a3f050bbe5 email:min-jun.kim@example.com KR survey email grant 2025-03-13T16:00:00Z - pri_5b2e1c7a-survey-v1",
        "7 fides-pref-0006 email:no.geo@example.com DE marketing email withdraw 2025-03-15T12:00:00Z - -",
        "8 ERR identifier",
    ];
    assert_eq!(got, want);
}

#[test]
fn transcend_consent_csv() {
    let got = read(Format::Transcend, include_str!("../../../tests/import-samples/transcend.csv"));
    // Transcend rows have no id: the content hash of the row, the same for every purpose of it.
    let mut hashes = Vec::new();
    let masked: Vec<String> = got
        .iter()
        .map(|row| match row.split(' ').nth(1).and_then(|id| id.split_once('#')) {
            Some((hash, _)) if hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
                hashes.push((row.split(' ').next().unwrap_or_default().to_owned(), hash.to_owned()));
                row.replacen(hash, "<sha>", 1)
            }
            _ => row.clone(),
        })
        .collect();
    let want = [
        "2 <sha>#Analytics email:sofia.rossi@example.com DE analytics web withdraw 2025-04-02T10:00:00Z - -",
        "2 <sha>#Marketing email:sofia.rossi@example.com DE marketing email grant 2025-04-02T10:00:00Z - -",
        "3 <sha>#Marketing email:paul.martin@example.com GB marketing email withdraw 2025-04-03T11:30:00Z - -",
        "4 <sha>#Marketing email:oliver.smith@example.com GB marketing email grant 2025-04-04T09:00:00Z - -",
        "4 ERR purposes.SaleOfInfo",
        "5 ERR timestamp",
        // A quoted field over two lines: the record starts on line 6.
        "6 <sha>#Advertising email:quoted.newline@example.com US-CA profiling web grant 2025-04-05T08:00:00Z - -",
        "6 <sha>#Marketing email:quoted.newline@example.com US-CA marketing email grant 2025-04-05T08:00:00Z - -",
        "8 SKIP confirmed",
        "9 ERR record",
        "10 <sha>#Advertising email:auto.user@example.com FR profiling web grant 2025-04-06T12:00:00Z - -",
        "10 SKIP purposes.Marketing",
    ];
    assert_eq!(masked, want);
    for (line, hash) in &hashes {
        assert!(hashes.iter().all(|(l, h)| (l == line) == (h == hash)), "one hash per record");
    }
}

#[test]
fn ketch_consent_requests() {
    let got = read(Format::Ketch, include_str!("../../../tests/import-samples/ketch.ndjson"));
    let uid = "b1f7c0de-2a4e-4f6b-9c1d-0e2f3a4b5c6d";
    let want = [
        "1 SKIP request.purposes.advertising".to_owned(),
        format!("1 {uid}#analytics email:claire.bernard@example.com FR analytics web deny 2025-04-08T08:00:00Z - -"),
        format!(
            "1 {uid}#email_mktg email:claire.bernard@example.com FR marketing email grant 2025-04-08T08:00:00Z - -"
        ),
        "2 ketch-req-0002#sms_mktg phone:+442079460958 GB marketing sms grant 2025-04-09T14:00:00Z - -".into(),
        "3 ERR record".into(),
        "4 ketch-req-0004#email_mktg email:tom.berg@example.com DE marketing email withdraw 2025-04-09T12:00:00Z - -"
            .into(),
        "6 ketch-req-0005#advertising email:ca.resident@example.com US-CA profiling web deny 2025-04-10T15:46:40Z - -"
            .into(),
        "7 ERR identities[0].identitySpace".into(),
        "8 ketch-req-0007#analytics email:ji-woo.park@example.com KR analytics web grant 2025-04-11T19:33:20Z - -"
            .into(),
        "8 ketch-req-0007#email_mktg email:ji-woo.park@example.com KR marketing email grant 2025-04-11T19:33:20Z - -"
            .into(),
    ];
    assert_eq!(got, want);
}

#[test]
fn domicile_ndjson() {
    let got = read(Format::Ndjson, include_str!("../../../tests/import-samples/domicile.ndjson"));
    let want = [
        "1 evt-0001 email:anna.schmidt@example.com,crm_account:CRM-000123 DE marketing email+sms grant 2024-11-20T10:00:00Z 2026-11-20T10:00:00Z privacy-notice-v3",
        "2 evt-0002 email:anna.schmidt@example.com DE marketing sms withdraw 2025-02-01T07:00:00Z - -",
        "3 ERR action",
        "4 ord-778 phone:+4915112345678 DE survey sms deny 2025-03-03T09:00:00Z - -",
        "5 ord-779 device:device-7f3a9c21 US-CA profiling web grant 2025-03-04T09:00:00Z - ccpa-notice-2025.1",
        "6 ERR expire_at",
        "7 ERR identifiers[0].value",
        "8 kiosk-0001 chat_handle:line:ji.woo_park KR marketing messaging grant 2025-03-07T09:00:00Z - -",
    ];
    assert_eq!(got, want);
}

/// Generated input, handed out at most `CHUNK` bytes per read, counting what it handed out.
struct Generated<F> {
    record: F,
    /// Records 0 (a prologue) to `last` (an epilogue).
    last: usize,
    next: usize,
    pending: Vec<u8>,
    handed_out: Rc<Cell<usize>>,
}

const CHUNK: usize = 7;
const BUFFER: usize = 64;

impl<F: Fn(usize) -> String> Read for Generated<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pending.is_empty() && self.next <= self.last {
            self.pending = (self.record)(self.next).into_bytes();
            self.next += 1;
        }
        let n = self.pending.len().min(buf.len()).min(CHUNK);
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        self.handed_out.set(self.handed_out.get() + n);
        Ok(n)
    }
}

/// Reads `total` generated records, each giving one row (record `i` is `record(i)`, 1 ≤ i ≤
/// total; 0 is a prologue and `total + 1` an epilogue), checking at each row that no more was
/// pulled from the source than the records read so far and one buffer.
fn streams(format: Format, total: usize, record: impl Fn(usize) -> String + Clone) {
    let handed_out = Rc::new(Cell::new(0));
    let source = Generated {
        record: record.clone(),
        last: total + 1,
        next: 0,
        pending: Vec::new(),
        handed_out: handed_out.clone(),
    };
    let mapping = mapping();
    let (mut through, mut count) = (record(0).len(), 0);
    for row in rows(format, BufReader::with_capacity(BUFFER, source), &mapping) {
        if let Err(e) = row {
            panic!("row {count}: {e}");
        }
        count += 1;
        through += record(count).len();
        assert!(handed_out.get() <= through + BUFFER, "row {count}: {} bytes pulled for {through}", handed_out.get());
    }
    assert_eq!(count, total);
    assert_eq!(handed_out.get(), through + record(total + 1).len(), "the whole input was read");
}

#[test]
fn ketch_lines_stream_from_a_trickling_source() {
    let record = |i: usize| match i {
        0 => String::new(),
        i if i > 200_000 => String::new(),
        i => format!(
            "{{\"id\":\"k-{i}\",\"identities\":[{{\"space\":\"email\",\"value\":\"user{i}@example.com\"}}],\"purposes\":{{\"email_mktg\":\"granted\"}},\"jurisdiction\":\"DE\",\"collectedAt\":{}}}\n",
            1_700_000_000 + i
        ),
    };
    streams(Format::Ketch, 200_000, record);
}

#[test]
fn a_one_line_json_array_streams_element_by_element() {
    let total = 50_000;
    let record = move |i: usize| match i {
        0 => "[".to_owned(),
        i if i > total => "]".to_owned(),
        i => format!(
            "{}{{\"id\":\"f-{i}\",\"email\":\"user{i}@example.com\",\"preference\":\"opt_in\",\"notice_key\":\"email_marketing\",\"user_geography\":\"fr\",\"request_timestamp\":\"2025-01-01T00:00:00Z\"}}",
            if i > 1 { "," } else { "" }
        ),
    };
    streams(Format::Fides, total, record);
}
