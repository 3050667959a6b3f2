use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::{AuditRecord, FILE_NAME, GENESIS, MAX_LINE, TamperError, TamperReason, VerifyError};

// ---------------------------------------------------------------------------------------------
// Verification.
// ---------------------------------------------------------------------------------------------

/// An unterminated final line: a write interrupted by a crash (or a cut tail, which only the
/// anchored head reveals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    pub line: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Verified entries (excluding a torn tail).
    pub entries: u64,
    /// The last verified entry's seq and hash (0 and [`GENESIS`] when empty).
    pub head_seq: u64,
    pub head_hash: String,
    /// The region every entry names; `None` when empty.
    pub region: Option<String>,
    pub torn_tail: Option<TornTail>,
}

/// Verifies a whole log from its first byte.
pub fn verify(reader: impl BufRead) -> Result<VerifyReport, VerifyError> {
    scan(reader).map(|(report, _)| report)
}

/// Verifies `path`, which is either a node's data directory or an audit log file.
pub fn verify_file(path: &Path) -> Result<VerifyReport, VerifyError> {
    let path = if path.is_dir() { path.join(FILE_NAME) } else { path.to_owned() };
    verify(BufReader::new(File::open(path)?))
}

/// Reads and checks every line; also returns the length in bytes of the verified prefix (where a
/// torn tail starts).
pub(crate) fn scan(mut reader: impl BufRead) -> Result<(VerifyReport, u64), VerifyError> {
    let mut chain = ChainCheck { expected_seq: 1, prev: GENESIS.to_owned(), region: None };
    let mut line: u64 = 0;
    let mut offset: u64 = 0;
    let mut torn_tail = None;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader).take(MAX_LINE + 1).read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        line += 1;
        let Some(body) = buf.strip_suffix(b"\n") else {
            if n as u64 > MAX_LINE {
                return Err(TamperError { line, seq: None, reason: TamperReason::TooLong }.into());
            }
            torn_tail = Some(TornTail { line, bytes: n as u64 });
            // Anything after a cap-sized read would also be here; a short read means end of input.
            break;
        };
        chain.check(line, body)?;
        offset += n as u64;
    }
    let report = VerifyReport {
        entries: chain.expected_seq - 1,
        head_seq: chain.expected_seq - 1,
        head_hash: chain.prev,
        region: chain.region,
        torn_tail,
    };
    Ok((report, offset))
}

struct ChainCheck {
    expected_seq: u64,
    prev: String,
    region: Option<String>,
}

impl ChainCheck {
    fn check(&mut self, line: u64, body: &[u8]) -> Result<(), TamperError> {
        let record: AuditRecord = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(_) => {
                // Name the entry by its seq if the damage left that readable.
                let seq = serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64));
                return Err(TamperError { line, seq, reason: TamperReason::NotAnEntry });
            }
        };
        let fail = |reason| TamperError { line, seq: Some(record.seq), reason };
        if record.seq > self.expected_seq {
            return Err(fail(TamperReason::SeqGap { expected: self.expected_seq }));
        }
        if record.seq < self.expected_seq {
            return Err(fail(TamperReason::SeqBack { expected: self.expected_seq }));
        }
        if record.prev != self.prev {
            return Err(fail(if record.seq == 1 {
                TamperReason::BadGenesis
            } else {
                TamperReason::PrevMismatch { previous: record.seq - 1 }
            }));
        }
        if record.compute_hash().ok().as_deref() != Some(record.hash.as_str()) {
            return Err(fail(TamperReason::HashMismatch));
        }
        // Hash-equal but differently spelled lines (escapes, spacing, member order) are edits too.
        if serde_json::to_vec(&record).ok().as_deref() != Some(body) {
            return Err(fail(TamperReason::NotCanonical));
        }
        // A node writes only well-formed decisions entries, so anything else was rewritten.
        if let Some(Err(e)) = record.decisions() {
            return Err(fail(TamperReason::BadDecisions(e)));
        }
        match &self.region {
            None => self.region = Some(record.region.clone()),
            Some(region) if *region != record.region => {
                return Err(fail(TamperReason::RegionChanged { expected: region.clone() }));
            }
            Some(_) => {}
        }
        self.expected_seq += 1;
        self.prev = record.hash;
        Ok(())
    }
}
