//! The chain itself, apart from where its lines are kept: [`Chain`] encodes the next entries from
//! the head they continue. [`crate::AuditLog`] writes them to a file; a region on a database keeps
//! the same lines in a table, in the transaction of the change they record.

use domicile_types::{RegionId, SubjectRef};

use crate::{
    AuditError, AuditEvent, AuditRecord, DecisionEntry, GENESIS, Hashed, MAX_DECISIONS_BYTES, check_decision,
    write_decisions_entry, write_entry,
};

/// The head of a region's chain: the next entry's `seq` and the last entry's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    region: RegionId,
    next_seq: u64,
    head: String,
}

impl Chain {
    /// The chain of an empty log.
    pub fn new(region: RegionId) -> Self {
        Self { region, next_seq: 1, head: GENESIS.to_owned() }
    }

    /// The chain continuing after entry `last_seq` with hash `last_hash` (0 and [`GENESIS`]: an
    /// empty log).
    pub fn after(region: RegionId, last_seq: u64, last_hash: String) -> Self {
        Self { region, next_seq: last_seq + 1, head: last_hash }
    }

    pub fn region(&self) -> &RegionId {
        &self.region
    }

    /// The last entry's seq (0 for an empty log).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The last entry's hash ([`GENESIS`] for an empty log).
    pub fn last_hash(&self) -> &str {
        &self.head
    }

    /// Encodes the next entry into `out` (its canonical line with `\n`) and advances the head.
    /// The event is checked first: only vocabulary tokens, only subjects of this region.
    pub fn entry(
        &mut self,
        out: &mut Vec<u8>,
        event: AuditEvent,
        subject: Option<&SubjectRef>,
        at: i64,
    ) -> Result<AuditRecord, AuditError> {
        // Residency: a region's log only ever names its own region's subjects.
        if subject.into_iter().chain(event.subject_refs()).any(|s| s.region != self.region) {
            return Err(AuditError::ForeignSubject);
        }
        let detail = event.detail()?;
        let subject = subject.map(SubjectRef::to_string);
        let kind = event.kind();
        let seq = self.next_seq;
        let hashed = Hashed {
            seq,
            at,
            region: self.region.as_str(),
            kind,
            subject: subject.as_deref(),
            detail: &detail,
            prev: &self.head,
        };
        let hash = String::from_utf8_lossy(&write_entry(out, &hashed)?).into_owned();
        let record = AuditRecord {
            seq,
            at,
            region: self.region.to_string(),
            kind,
            subject,
            detail,
            prev: self.head.clone(),
            hash,
        };
        self.next_seq += 1;
        self.head.clone_from(&record.hash);
        Ok(record)
    }

    /// Encodes a batch of decisions as `decisions` entries (the module doc of the crate): one, or
    /// one more each time an entry's `decisions` string would pass 48 KiB. All or nothing: every
    /// decision is checked before anything is encoded. Returns how many entries were written.
    pub fn decisions(&mut self, out: &mut Vec<u8>, entries: &[DecisionEntry<'_>], at: i64) -> Result<u64, AuditError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut ends = Vec::new();
        let mut total = 0;
        let mut current = 0; // bytes of the current entry's decisions string
        for (i, entry) in entries.iter().enumerate() {
            check_decision(entry.reasons, entry.pack)?;
            let len = entry.encoded_len();
            if len > MAX_DECISIONS_BYTES {
                // Only a decision with hundreds of reasons; no pack can make one.
                return Err(AuditError::InvalidField { field: "reasons" });
            }
            if current > 0 && current + 1 + len > MAX_DECISIONS_BYTES {
                ends.push(i);
                current = 0;
            }
            current += if current > 0 { 1 + len } else { len };
            total += len + 1;
        }
        ends.push(entries.len());
        out.reserve(total + ends.len() * 320);
        let mut head = self.head.as_bytes().try_into().unwrap_or([b'0'; 64]);
        let mut start = 0;
        for (i, &end) in ends.iter().enumerate() {
            let seq = self.next_seq + i as u64;
            let decisions = entries.get(start..end).unwrap_or_default();
            head = write_decisions_entry(out, seq, at, &self.region, &head, decisions)?;
            start = end;
        }
        let written = ends.len() as u64;
        self.next_seq += written;
        self.head = String::from_utf8_lossy(&head).into_owned();
        Ok(written)
    }
}
