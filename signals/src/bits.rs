//! Bit-level plumbing shared by TCF and GPP: base64url, a bounds-checked bit
//! reader and writer, and Fibonacci-coded integers and integer ranges.
//!
//! Every read is bounds-checked and returns a [`SignalError`] naming the
//! segment and bit offset; nothing here can panic or overflow on hostile
//! input. Errors never carry input characters, only positions.

use crate::error::{ErrorKind, SignalError};

/// Largest id any IAB vendor/section field can carry (16-bit fields).
pub(crate) const MAX_ID: u32 = u16::MAX as u32;

/// How a bit string is padded before base64url encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Padding {
    /// Pad to a multiple of 24 bits (iabtcf-es `Base64Url`, iabgpp-es
    /// `TraditionalBase64UrlEncoder`, used for TCF and GPP `tcfeuv2`).
    Lcm24,
    /// Pad to a whole byte, then to a whole base64 character (iabgpp-es
    /// `CompressedBase64UrlEncoder`, used by every other GPP section).
    Compressed,
}

fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Bounds-checked MSB-first bit reader over a decoded base64url segment.
pub(crate) struct BitReader {
    bytes: Vec<u8>,
    len: usize,
    pos: usize,
    segment: &'static str,
}

impl BitReader {
    /// Decodes `text` (base64url, no padding) into bits. `segment` names the
    /// segment in errors.
    pub(crate) fn from_base64url(text: &str, segment: &'static str) -> Result<Self, SignalError> {
        if text.is_empty() {
            return Err(SignalError::new(segment, 0, ErrorKind::EmptySegment));
        }
        // Trailing '=' padding is tolerated: Java's URL encoder (used by
        // iabtcf-java's own tests) emits it, and it carries no bits.
        let raw = text.trim_end_matches('=').as_bytes();
        let mut bytes = Vec::with_capacity(raw.len() * 6 / 8 + 1);
        let mut acc: u32 = 0;
        let mut nacc = 0u32;
        for (i, &c) in raw.iter().enumerate() {
            let v = sextet(c).ok_or(SignalError::new(
                segment,
                i.saturating_mul(6),
                ErrorKind::InvalidBase64 { char_index: i },
            ))?;
            acc = (acc << 6) | u32::from(v);
            nacc += 6;
            if nacc >= 8 {
                nacc -= 8;
                bytes.push((acc >> nacc) as u8);
                acc &= (1 << nacc) - 1;
            }
        }
        if nacc > 0 {
            bytes.push((acc << (8 - nacc)) as u8);
        }
        Ok(Self { bytes, len: raw.len() * 6, pos: 0, segment })
    }

    /// The same reader, reporting errors under another segment name.
    pub(crate) fn with_segment(mut self, segment: &'static str) -> Self {
        self.segment = segment;
        self
    }

    /// Total number of bits in the segment.
    pub(crate) fn len_bits(&self) -> usize {
        self.len
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// The bit at absolute index `i` (false past the end).
    fn bit(&self, i: usize) -> bool {
        self.bytes.get(i / 8).is_some_and(|b| (b >> (7 - i % 8)) & 1 == 1)
    }

    /// Restarts reading from the first bit.
    pub(crate) fn rewind(&mut self) {
        self.pos = 0;
    }

    pub(crate) fn remaining(&self) -> usize {
        self.len - self.pos
    }

    /// An error at the current offset in this reader's segment.
    pub(crate) fn err(&self, kind: ErrorKind) -> SignalError {
        SignalError::new(self.segment, self.pos, kind)
    }

    /// An error at a given offset (e.g. the start of the field just read).
    pub(crate) fn err_at(&self, offset: usize, kind: ErrorKind) -> SignalError {
        SignalError::new(self.segment, offset, kind)
    }

    /// Reads `n` ≤ 64 bits as an unsigned integer.
    pub(crate) fn read(&mut self, n: usize) -> Result<u64, SignalError> {
        debug_assert!(n <= 64);
        if n > self.remaining() {
            return Err(self.err(ErrorKind::UnexpectedEnd { needed: n, available: self.remaining() }));
        }
        let mut out: u64 = 0;
        let mut left = n;
        while left > 0 {
            let byte = self.bytes.get(self.pos / 8).copied().unwrap_or(0);
            let used = self.pos % 8;
            let avail = 8 - used;
            let take = avail.min(left);
            let chunk = (byte >> (avail - take)) & ((1u16 << take) - 1) as u8;
            out = (out << take) | u64::from(chunk);
            self.pos += take;
            left -= take;
        }
        Ok(out)
    }

    pub(crate) fn read_u8(&mut self, n: usize) -> Result<u8, SignalError> {
        Ok(self.read(n.min(8))? as u8)
    }

    pub(crate) fn read_u16(&mut self, n: usize) -> Result<u16, SignalError> {
        Ok(self.read(n.min(16))? as u16)
    }

    pub(crate) fn read_bool(&mut self) -> Result<bool, SignalError> {
        Ok(self.read(1)? == 1)
    }

    /// Reads an `n`-bit bitfield and returns the 1-based positions of set bits.
    pub(crate) fn read_id_set_u8(&mut self, n: usize) -> Result<Vec<u8>, SignalError> {
        let mut ids = Vec::new();
        for i in 1..=n {
            if self.read_bool()? {
                ids.push(i as u8);
            }
        }
        Ok(ids)
    }

    /// Reads a two-letter code (ISO 639 / 3166 style), 6 bits per letter.
    pub(crate) fn read_letters(&mut self) -> Result<String, SignalError> {
        let start = self.pos;
        let a = self.read_u8(6)?;
        let b = self.read_u8(6)?;
        if a > 25 || b > 25 {
            return Err(self.err_at(start, ErrorKind::InvalidLetterCode));
        }
        Ok([char::from(b'A' + a), char::from(b'A' + b)].iter().collect())
    }

    /// Reads one Fibonacci-coded integer (Zeckendorf bits, least significant
    /// first, terminated by `11`). Bounded to [`MAX_ID`] so a long run of
    /// bits cannot overflow.
    pub(crate) fn read_fibonacci(&mut self) -> Result<u32, SignalError> {
        let start = self.pos;
        let (mut a, mut b) = (1u32, 2u32);
        let mut value: u32 = 0;
        let mut prev = false;
        // F(25) > 65535, so 24 value bits plus the terminator are enough.
        for _ in 0..26 {
            let bit = self.read_bool()?;
            if bit && prev {
                if value == 0 || value > MAX_ID {
                    break;
                }
                return Ok(value);
            }
            if bit {
                value = value.saturating_add(a);
            }
            prev = bit;
            let next = a.saturating_add(b);
            a = b;
            b = next;
        }
        Err(self.err_at(start, ErrorKind::InvalidFibonacci))
    }

    /// Reads a Fibonacci-coded integer range (GPP header section ids, TCF CA
    /// vendors): 12-bit count, then groups of delta-coded single ids or
    /// ranges. Ids are strictly increasing by construction. `limit` bounds how
    /// many ids may be produced, so a hostile count cannot allocate much.
    pub(crate) fn read_fibonacci_range(&mut self, limit: usize) -> Result<Vec<u16>, SignalError> {
        let count = self.read(12)? as usize;
        let mut ids = Vec::new();
        let mut offset: u32 = 0;
        for _ in 0..count {
            let at = self.pos;
            let is_range = self.read_bool()?;
            let start = offset.saturating_add(self.read_fibonacci()?);
            let end = if is_range { start.saturating_add(self.read_fibonacci()?) } else { start };
            if end > MAX_ID {
                return Err(self.err_at(at, ErrorKind::IdOutOfRange { id: end, max: MAX_ID }));
            }
            if ids.len() + (end - start + 1) as usize > limit {
                return Err(self.err_at(at, ErrorKind::TooManyIds { limit }));
            }
            ids.extend((start..=end).map(|v| v as u16));
            offset = end;
        }
        Ok(ids)
    }
}

/// MSB-first bit writer.
#[derive(Default)]
pub(crate) struct BitWriter {
    bits: Vec<bool>,
}

impl BitWriter {
    pub(crate) fn new() -> Self {
        Self { bits: Vec::with_capacity(256) }
    }

    pub(crate) fn len(&self) -> usize {
        self.bits.len()
    }

    /// Writes the low `n` bits of `value`. Callers check ranges first
    /// (see [`check_width`]); extra high bits are dropped.
    pub(crate) fn write(&mut self, value: u64, n: usize) {
        for i in (0..n).rev() {
            self.bits.push((value >> i) & 1 == 1);
        }
    }

    pub(crate) fn write_bool(&mut self, v: bool) {
        self.bits.push(v);
    }

    /// Writes an `n`-bit bitfield with the given 1-based ids set.
    pub(crate) fn write_id_set<T: Copy + Into<u32>>(&mut self, ids: &[T], n: usize) {
        let start = self.bits.len();
        self.bits.resize(start + n, false);
        for &id in ids {
            let id: u32 = id.into();
            if id >= 1
                && (id as usize) <= n
                && let Some(b) = self.bits.get_mut(start + id as usize - 1)
            {
                *b = true;
            }
        }
    }

    pub(crate) fn write_letters(&mut self, code: &str) {
        for c in code.bytes() {
            self.write(u64::from(c.saturating_sub(b'A')), 6);
        }
    }

    /// Fibonacci (Zeckendorf) code of `value` ≥ 1, least significant first,
    /// terminated by an extra 1.
    pub(crate) fn write_fibonacci(&mut self, value: u32) {
        let mut fibs: Vec<u32> = vec![1, 2];
        while let (Some(&a), Some(&b)) = (fibs.get(fibs.len() - 2), fibs.last()) {
            if a + b > value {
                break;
            }
            fibs.push(a + b);
        }
        while fibs.last().is_some_and(|&f| f > value) && fibs.len() > 1 {
            fibs.pop();
        }
        let mut bits = vec![false; fibs.len()];
        let mut rest = value;
        for (i, &f) in fibs.iter().enumerate().rev() {
            if f <= rest {
                if let Some(b) = bits.get_mut(i) {
                    *b = true;
                }
                rest -= f;
            }
        }
        self.bits.extend(bits);
        self.bits.push(true);
    }

    /// Fibonacci-coded range of strictly increasing ids ≥ 1.
    pub(crate) fn write_fibonacci_range(&mut self, ids: &[u16]) {
        let groups = group_consecutive(ids);
        self.write(groups.len() as u64, 12);
        let mut offset = 0u32;
        for (start, end) in groups {
            let (s, e) = (u32::from(start), u32::from(end));
            if s == e {
                self.write_bool(false);
                self.write_fibonacci(s - offset);
            } else {
                self.write_bool(true);
                self.write_fibonacci(s - offset);
                self.write_fibonacci(e - s);
            }
            offset = e;
        }
    }

    /// Whether these bits are a prefix of the reader's bits (used to tell
    /// which of two encodings produced a string: the right one re-encodes to
    /// a prefix, the rest being padding).
    pub(crate) fn is_prefix_of(&self, r: &BitReader) -> bool {
        self.bits.len() <= r.len && self.bits.iter().enumerate().all(|(i, &b)| r.bit(i) == b)
    }

    pub(crate) fn into_base64url(mut self, padding: Padding) -> String {
        match padding {
            Padding::Lcm24 => {
                while !self.bits.len().is_multiple_of(24) {
                    self.bits.push(false);
                }
            }
            Padding::Compressed => {
                while !self.bits.len().is_multiple_of(8) {
                    self.bits.push(false);
                }
                while !self.bits.len().is_multiple_of(6) {
                    self.bits.push(false);
                }
            }
        }
        self.bits
            .chunks(6)
            .map(|c| {
                let v = c.iter().fold(0usize, |acc, &b| (acc << 1) | usize::from(b));
                char::from(ALPHABET.get(v).copied().unwrap_or(b'A'))
            })
            .collect()
    }
}

/// Groups sorted ids into inclusive runs of consecutive values.
pub(crate) fn group_consecutive(ids: &[u16]) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for &id in ids {
        match out.last_mut() {
            Some((_, end)) if u32::from(*end) + 1 == u32::from(id) => *end = id,
            _ => out.push((id, id)),
        }
    }
    out
}

/// Checks that `value` fits in `bits` bits, for encoders.
pub(crate) fn check_width(
    segment: &'static str,
    field: &'static str,
    value: u64,
    bits: u32,
) -> Result<(), SignalError> {
    if bits < 64 && value >> bits != 0 {
        return Err(SignalError::encode(segment, ErrorKind::ValueTooLarge { field, bits }));
    }
    Ok(())
}

/// Checks that ids are strictly increasing and within `1..=max`.
pub(crate) fn check_ids<T: Copy + Into<u32>>(
    segment: &'static str,
    field: &'static str,
    ids: &[T],
    max: u32,
) -> Result<(), SignalError> {
    let mut prev = 0u32;
    for &id in ids {
        let id: u32 = id.into();
        if id == 0 || id > max || id <= prev {
            return Err(SignalError::encode(segment, ErrorKind::InvalidIdList { field }));
        }
        prev = id;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fibonacci_round_trip() {
        for v in [1u32, 2, 3, 4, 5, 6, 7, 8, 12, 100, 1000, 65535] {
            let mut w = BitWriter::new();
            w.write_fibonacci(v);
            let s = w.into_base64url(Padding::Compressed);
            let mut r = BitReader::from_base64url(&s, "test").unwrap();
            assert_eq!(r.read_fibonacci().unwrap(), v, "value {v}");
        }
    }

    #[test]
    fn header_example_ranges() {
        // Spec: DBACNY lists sections 2 and 6.
        let mut r = BitReader::from_base64url("DBACNY", "header").unwrap();
        assert_eq!(r.read(6).unwrap(), 3);
        assert_eq!(r.read(6).unwrap(), 1);
        assert_eq!(r.read_fibonacci_range(64).unwrap(), vec![2, 6]);
        let mut w = BitWriter::new();
        w.write(3, 6);
        w.write(1, 6);
        w.write_fibonacci_range(&[2, 6]);
        // iabgpp-es pads to a whole byte first, hence the extra `A`.
        assert_eq!(w.into_base64url(Padding::Compressed), "DBACNYA");
    }

    #[test]
    fn reader_reports_end() {
        let mut r = BitReader::from_base64url("A", "core").unwrap();
        assert!(r.read(7).is_err());
        assert_eq!(r.read(6).unwrap(), 0);
    }
}
