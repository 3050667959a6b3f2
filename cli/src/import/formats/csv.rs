//! A streaming RFC 4180 reader: records of fields, `,`-separated, `"`-quoted with `""` for a
//! quote, CRLF or LF line ends, quoted fields that hold commas and line breaks. One record is
//! held at a time, at most [`MAX_RECORD_BYTES`] of it (a longer one is refused and skipped to its
//! end). Blank lines are skipped. A quote closed before the end of its field (`"a"b`) refuses the
//! record; a quote never closed runs to the end of the file, which is reported as cut short.

use std::io::{BufRead, ErrorKind};

use super::split::MAX_RECORD_BYTES;
use crate::import::row::RowError;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a field.
    FieldStart,
    Unquoted,
    Quoted,
    /// Just after a `"` inside a quoted field: `""`, or the field's end.
    QuoteInQuoted,
}

pub(super) struct Csv<R> {
    input: R,
    line: usize,
    done: bool,
}

/// A record's fields and the line it starts on.
pub(super) type Record = Result<(usize, Vec<String>), RowError>;

impl<R: BufRead> Csv<R> {
    pub(super) fn new(input: R) -> Self {
        Self { input, line: 1, done: false }
    }

    pub(super) fn next_record(&mut self) -> Option<Record> {
        while !self.done {
            let record = self.read();
            if let Some(Ok((_, fields))) = &record
                && fields.len() == 1
                && fields.first().is_some_and(|f| f.trim().is_empty())
            {
                continue;
            }
            return record;
        }
        None
    }

    fn read(&mut self) -> Option<Record> {
        let line = self.line;
        let (mut fields, mut field) = (Vec::new(), Vec::new());
        let (mut state, mut size) = (State::FieldStart, 0usize);
        let mut problem: Option<&'static str> = None;
        let mut started = false;
        loop {
            let buf = match self.input.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.done = true;
                    return Some(Err(RowError::new(
                        self.line,
                        "file",
                        format!("cannot read the input ({:?})", e.kind()),
                    )));
                }
            };
            if buf.is_empty() {
                self.done = true;
                if !started {
                    return None;
                }
                if state == State::Quoted {
                    return Some(Err(RowError::new(
                        line,
                        "record",
                        "a quoted field is not closed: the file may be cut short",
                    )));
                }
                break;
            }
            started = true;
            let (mut used, mut end) = (0, false);
            for &b in buf {
                used += 1;
                if b == b'\n' {
                    self.line += 1;
                }
                size += 1;
                match (state, b) {
                    (State::Quoted, b'"') => state = State::QuoteInQuoted,
                    (State::Quoted, _) => field.push(b),
                    (State::QuoteInQuoted, b'"') => {
                        field.push(b'"');
                        state = State::Quoted;
                    }
                    (State::FieldStart, b'"') => state = State::Quoted,
                    (_, b',') => {
                        fields.push(std::mem::take(&mut field));
                        state = State::FieldStart;
                    }
                    (_, b'\n') => {
                        end = true;
                        break;
                    }
                    (State::QuoteInQuoted, b'\r') => {}
                    (State::QuoteInQuoted, _) => {
                        problem = Some("a quoted field has text after its closing quote");
                        state = State::Unquoted;
                    }
                    (State::FieldStart | State::Unquoted, _) => {
                        field.push(b);
                        state = State::Unquoted;
                    }
                }
                if size > MAX_RECORD_BYTES {
                    problem = Some("the record is longer than the longest one read (1 MiB)");
                    field.clear();
                    fields.clear();
                }
            }
            self.input.consume(used);
            if end {
                break;
            }
        }
        if state == State::Unquoted && field.last() == Some(&b'\r') {
            field.pop();
        }
        fields.push(field);
        if let Some(why) = problem {
            return Some(Err(RowError::new(line, "record", why)));
        }
        let fields: Result<Vec<String>, _> = fields.into_iter().map(String::from_utf8).collect();
        Some(fields.map(|f| (line, f)).map_err(|_| RowError::new(line, "record", "not valid UTF-8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Got = Result<(usize, Vec<String>), (usize, String)>;

    fn all(input: &str) -> Vec<Got> {
        let mut csv = Csv::new(input.as_bytes());
        std::iter::from_fn(|| csv.next_record()).map(|r| r.map_err(|e| (e.line, e.reason))).collect()
    }

    fn ok(line: usize, fields: &[&str]) -> Got {
        Ok((line, fields.iter().map(|f| (*f).to_owned()).collect()))
    }

    #[test]
    fn reads_quotes_commas_and_line_breaks_inside_fields() {
        let input = "a,b,c\r\n\"x,1\",\"say \"\"hi\"\"\",\"two\r\nlines\"\r\n\n,,\nlast,\"\",end";
        assert_eq!(
            all(input),
            vec![
                ok(1, &["a", "b", "c"]),
                ok(2, &["x,1", "say \"hi\"", "two\r\nlines"]),
                ok(5, &["", "", ""]),
                ok(6, &["last", "", "end"]),
            ]
        );
    }

    #[test]
    fn broken_records_are_refused_and_the_next_one_read() {
        let input = "\"a\"b,c\nd,e\n\"open,f\ng,h\n";
        let got = all(input);
        assert_eq!(got[0].as_ref().unwrap_err().0, 1);
        assert_eq!(got[1], ok(2, &["d", "e"]));
        assert_eq!(got[2].as_ref().unwrap_err().0, 3);
        assert_eq!(got.len(), 3);
        let long = format!("{}\nx,y\n", "z".repeat(MAX_RECORD_BYTES + 1));
        let got = all(&long);
        assert_eq!((got[0].as_ref().unwrap_err().0, &got[1]), (1, &ok(2, &["x", "y"])));
    }
}
