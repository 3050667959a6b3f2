//! Cutting a JSON input into its records without reading it whole: each call hands out the next
//! record's text and the line it starts on, having read only up to the record's end from the
//! `BufRead` (whose own buffer is all that is held besides the record).
//!
//! Two layouts, told apart by the first character after any byte order mark and white space:
//! - `[`: a JSON array, elements cut one by one by a bracket- and string-aware scanner, so the
//!   array may spread over lines, hold one element per line or be a single 2 GB line;
//!   `[..] [..]` (arrays one after the other) is read too.
//! - anything else: one JSON value per line (NDJSON); blank lines are skipped. A broken line is
//!   that line's error only, the next line is read as usual.
//!
//! A record longer than [`MAX_RECORD_BYTES`] is refused (its end is still found, without keeping
//! its text), which bounds memory. In an array, a record whose brackets do not match is refused
//! at the mismatch and scanning goes on from there; one that is never closed runs to the end of
//! the file and is refused as cut short.

use std::io::{BufRead, ErrorKind, Read as _};

use crate::import::row::RowError;

/// The longest record read (OneTrust caps a receipt's custom payload at 4,000 characters).
pub(crate) const MAX_RECORD_BYTES: usize = 1 << 20;
/// Brackets tracked by kind; deeper ones are only counted (serde_json refuses them anyway).
const MAX_TRACKED_DEPTH: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Start,
    Lines,
    Array,
    AfterArray,
    Done,
}

pub(crate) struct JsonRecords<R> {
    input: R,
    /// The line the next unread byte is on (1-based).
    line: usize,
    mode: Mode,
}

type Item = Result<(usize, String), RowError>;

impl<R: BufRead> JsonRecords<R> {
    pub(crate) fn new(input: R) -> Self {
        Self { input, line: 1, mode: Mode::Start }
    }

    fn io_error(&mut self, e: &std::io::Error) -> RowError {
        self.mode = Mode::Done;
        RowError::new(self.line, "file", format!("cannot read the input ({:?})", e.kind()))
    }

    fn peek(&mut self) -> Result<Option<u8>, RowError> {
        loop {
            match self.input.fill_buf() {
                Ok(buf) => return Ok(buf.first().copied()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(&e)),
            }
        }
    }

    fn bump(&mut self, byte: u8) {
        self.input.consume(1);
        if byte == b'\n' {
            self.line += 1;
        }
    }

    /// Skips white space (and, between array elements, commas); the next byte, if any.
    fn skip(&mut self, commas: bool) -> Result<Option<u8>, RowError> {
        while let Some(b) = self.peek()? {
            if !(b.is_ascii_whitespace() || (commas && b == b',')) {
                return Ok(Some(b));
            }
            self.bump(b);
        }
        Ok(None)
    }

    fn start(&mut self) -> Result<(), RowError> {
        for expected in [0xEF, 0xBB, 0xBF] {
            match self.peek()? {
                Some(b) if b == expected => self.bump(b),
                _ => break,
            }
        }
        self.mode = match self.skip(false)? {
            None => Mode::Done,
            Some(b'[') => {
                self.bump(b'[');
                Mode::Array
            }
            Some(_) => Mode::Lines,
        };
        Ok(())
    }

    /// The next non-blank line, at most [`MAX_RECORD_BYTES`] of it kept.
    fn next_line(&mut self) -> Option<Item> {
        loop {
            let line = self.line;
            let mut buf = Vec::new();
            let limit = MAX_RECORD_BYTES as u64 + 1;
            let read = (&mut self.input).take(limit).read_until(b'\n', &mut buf);
            match read {
                Ok(0) => {
                    self.mode = Mode::Done;
                    return None;
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Some(Err(self.io_error(&e))),
            }
            if buf.last() == Some(&b'\n') {
                self.line += 1;
            } else if buf.len() > MAX_RECORD_BYTES {
                if let Err(e) = self.discard_line() {
                    return Some(Err(e));
                }
                return Some(Err(too_long(line)));
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(utf8(line, buf));
        }
    }

    fn discard_line(&mut self) -> Result<(), RowError> {
        loop {
            let (used, found) = match self.input.fill_buf() {
                Ok([]) => return Ok(()),
                Ok(buf) => match buf.iter().position(|&b| b == b'\n') {
                    Some(at) => (at + 1, true),
                    None => (buf.len(), false),
                },
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(&e)),
            };
            self.input.consume(used);
            if found {
                self.line += 1;
                return Ok(());
            }
        }
    }

    /// The next element of the array, its first byte `first` not yet consumed.
    fn element(&mut self, first: u8) -> Item {
        let line = self.line;
        let scalar = !matches!(first, b'{' | b'[' | b'"');
        let mut text = Vec::new();
        let (mut too_big, mut mismatch, mut done) = (false, false, false);
        let mut stack: Vec<u8> = Vec::new();
        let mut untracked = 0usize;
        let (mut in_string, mut escaped) = (false, false);
        while !done && !mismatch {
            let buf = match self.input.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(&e)),
            };
            if buf.is_empty() {
                if scalar && !text.is_empty() {
                    break;
                }
                self.mode = Mode::Done;
                return Err(RowError::new(line, "record", "the record is not closed: the file may be cut short"));
            }
            let (mut used, mut newlines) = (0, 0);
            for &b in buf {
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                    } else if b == b'"' {
                        in_string = false;
                        done = stack.is_empty() && untracked == 0 && !scalar;
                    }
                } else if scalar && (b.is_ascii_whitespace() || b == b',' || b == b']') {
                    done = true;
                    break;
                } else {
                    match b {
                        b'"' => in_string = true,
                        b'{' | b'[' if stack.len() < MAX_TRACKED_DEPTH => {
                            stack.push(if b == b'{' { b'}' } else { b']' })
                        }
                        b'{' | b'[' => untracked += 1,
                        b'}' | b']' if untracked > 0 => untracked -= 1,
                        b'}' | b']' if stack.last() == Some(&b) => {
                            stack.pop();
                            done = stack.is_empty();
                        }
                        // A stray `]` most likely closes the array: left unread. A stray `}`
                        // most likely closes this record: read.
                        b'}' | b']' if !scalar => {
                            mismatch = true;
                            if b == b']' {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                used += 1;
                newlines += usize::from(b == b'\n');
                if text.len() < MAX_RECORD_BYTES {
                    text.push(b);
                } else {
                    too_big = true;
                }
                if done || mismatch {
                    break;
                }
            }
            self.input.consume(used);
            self.line += newlines;
        }
        if mismatch {
            return Err(RowError::new(
                line,
                "record",
                "not valid JSON: a closing bracket does not match its opening one",
            ));
        }
        if too_big {
            return Err(too_long(line));
        }
        utf8(line, text)
    }
}

fn too_long(line: usize) -> RowError {
    RowError::new(line, "record", format!("the record is longer than {} bytes", MAX_RECORD_BYTES))
}

fn utf8(line: usize, bytes: Vec<u8>) -> Item {
    String::from_utf8(bytes).map(|text| (line, text)).map_err(|_| RowError::new(line, "record", "not valid UTF-8"))
}

impl<R: BufRead> Iterator for JsonRecords<R> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        loop {
            let step = match self.mode {
                Mode::Done => return None,
                Mode::Start => self.start().map(|()| None),
                Mode::Lines => return self.next_line(),
                Mode::Array => match self.skip(true) {
                    Ok(None) => {
                        self.mode = Mode::Done;
                        let why = "the JSON array is not closed: the file may be cut short";
                        return Some(Err(RowError::new(self.line, "file", why)));
                    }
                    Ok(Some(b']')) => {
                        self.bump(b']');
                        self.mode = Mode::AfterArray;
                        Ok(None)
                    }
                    Ok(Some(first)) => return Some(self.element(first)),
                    Err(e) => Err(e),
                },
                Mode::AfterArray => match self.skip(false) {
                    Ok(None) => return None,
                    Ok(Some(b'[')) => {
                        self.bump(b'[');
                        self.mode = Mode::Array;
                        Ok(None)
                    }
                    Ok(Some(_)) => {
                        self.mode = Mode::Done;
                        Ok(Some(RowError::new(self.line, "file", "unexpected content after the JSON array")))
                    }
                    Err(e) => Err(e),
                },
            };
            match step {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(input: &str) -> Vec<Result<(usize, String), (usize, String)>> {
        JsonRecords::new(input.as_bytes()).map(|r| r.map_err(|e| (e.line, e.field))).collect()
    }

    #[test]
    fn an_array_over_lines_and_one_object_per_line_give_the_same_records() {
        let array = "\u{feff}[\n  {\"a\": \"x]}\\\"\", \"b\": [1, {\"c\": 2}]},\n  {\n    \"a\": 2\n  }\n]\n";
        assert_eq!(
            cut(array),
            vec![
                Ok((2, "{\"a\": \"x]}\\\"\", \"b\": [1, {\"c\": 2}]}".into())),
                Ok((3, "{\n    \"a\": 2\n  }".into()))
            ]
        );
        let lines = "\n{\"a\": 1}\r\n\n  \n{\"a\": 2}";
        assert_eq!(cut(lines), vec![Ok((2, "{\"a\": 1}\r\n".into())), Ok((5, "{\"a\": 2}".into()))]);
        assert_eq!(cut(""), vec![]);
        assert_eq!(cut("[]"), vec![]);
        assert_eq!(cut("[{\"a\":1},{\"a\":2}][{\"a\":3}]").len(), 3);
    }

    #[test]
    fn broken_records_are_refused_and_reading_goes_on() {
        let input = "[\n{\"a\": 1},\n{\"a\": [1}, \n{\"a\": 3},\n42,\n{\"a\": 4}\n";
        assert_eq!(
            cut(input),
            vec![
                Ok((2, "{\"a\": 1}".into())),
                Err((3, "record".into())),
                Ok((4, "{\"a\": 3}".into())),
                Ok((5, "42".into())),
                Ok((6, "{\"a\": 4}".into())),
                Err((7, "file".into())),
            ]
        );
        assert_eq!(cut("[{\"a\": 1}, {\"a\": "), vec![Ok((1, "{\"a\": 1}".into())), Err((1, "record".into()))]);
        assert_eq!(cut("[{\"a\": 1}] x"), vec![Ok((1, "{\"a\": 1}".into())), Err((1, "file".into()))]);
        assert_eq!(cut("{\"a\": 1\n{\"a\": 2}\n"), vec![Ok((1, "{\"a\": 1\n".into())), Ok((2, "{\"a\": 2}\n".into()))]);
    }

    #[test]
    fn an_overlong_record_is_refused_without_being_kept() {
        let long = format!("{{\"a\": \"{}\"}}", "x".repeat(MAX_RECORD_BYTES));
        let array = format!("[{long},\n{{\"a\": 2}}]");
        assert_eq!(cut(&array), vec![Err((1, "record".into())), Ok((2, "{\"a\": 2}".into()))]);
        let lines = format!("{long}\n{{\"a\": 2}}\n");
        assert_eq!(cut(&lines), vec![Err((1, "record".into())), Ok((2, "{\"a\": 2}\n".into()))]);
    }
}
