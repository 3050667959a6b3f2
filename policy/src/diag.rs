//! Diagnostics: every problem in a pack or test file, located as `path:line:column`.

use std::fmt;
use std::ops::Range;

/// The file name of a holiday calendar beside a pack (`fr/holidays.toml`).
pub const HOLIDAYS_FILE: &str = "holidays.toml";

/// One input file. `path` appears in diagnostics, and its file name tells a holiday calendar
/// ([`HOLIDAYS_FILE`]) from a pack file; nothing here reads the file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackSource {
    pub path: String,
    pub text: String,
}

impl PackSource {
    pub fn new(path: impl Into<String>, text: impl Into<String>) -> Self {
        Self { path: path.into(), text: text.into() }
    }

    /// Whether the file is a holiday calendar (`…/holidays.toml`) rather than a pack file. Pack
    /// sets are compiled from both kinds ([`crate::PackSet::compile`]).
    pub fn is_holiday_calendar(&self) -> bool {
        self.path.rsplit(['/', '\\']).next() == Some(HOLIDAYS_FILE)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A located problem. `line` and `column` are 1-based; the column counts characters, not bytes,
/// so it matches what an editor shows for non-ASCII citations such as `§ 7`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub severity: Severity,
    pub message: String,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}: {}", self.path, self.line, self.column, self.severity, self.message)
    }
}

/// Every problem found in one run, errors and warnings, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Collects diagnostics for one file and turns byte spans into line:column.
pub(crate) struct Sink<'a> {
    path: &'a str,
    text: &'a str,
    line_starts: Vec<usize>,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(source: &'a PackSource) -> Self {
        let text = source.text.as_str();
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Self { path: &source.path, text, line_starts, diagnostics: Vec::new() }
    }

    /// 1-based line and character column of a byte offset.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line_index = self.line_starts.partition_point(|&start| start <= offset).saturating_sub(1);
        let start = self.line_starts.get(line_index).copied().unwrap_or(0);
        let column = self.text.get(start..offset).map_or(offset - start, |s| s.chars().count());
        (line_index + 1, column + 1)
    }

    pub(crate) fn line_of(&self, span: &Range<usize>) -> usize {
        self.position(span.start).0
    }

    pub(crate) fn push(&mut self, severity: Severity, span: Option<Range<usize>>, message: impl Into<String>) {
        let (line, column) = span.map_or((1, 1), |s| self.position(s.start));
        self.diagnostics.push(Diagnostic {
            path: self.path.to_owned(),
            line,
            column,
            severity,
            message: message.into(),
        });
    }

    pub(crate) fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
        self.push(Severity::Error, Some(span.clone()), message);
    }

    pub(crate) fn warning(&mut self, span: &Range<usize>, message: impl Into<String>) {
        self.push(Severity::Warning, Some(span.clone()), message);
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// Diagnostics in file order, so authors can fix them top to bottom.
    pub(crate) fn finish(mut self) -> Vec<Diagnostic> {
        self.diagnostics.sort_by_key(|d| (d.line, d.column));
        self.diagnostics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_count_characters_and_lines_start_at_one() {
        let source = PackSource::new("p.toml", "a = 1\ncite = \"§ 7\" x\n\nlast");
        let sink = Sink::new(&source);
        assert_eq!(sink.position(0), (1, 1));
        assert_eq!(sink.position(4), (1, 5));
        assert_eq!(sink.position(6), (2, 1));
        // `x` is the 14th character of its line but would be column 15 counted in bytes (`§` is two).
        let x = source.text.find(" x").unwrap() + 1;
        assert_eq!(sink.position(x), (2, 14));
        assert_eq!(sink.position(source.text.len()), (4, 5));
        assert_eq!(sink.position(usize::MAX), (4, 5));
    }

    #[test]
    fn display_formats() {
        let d = Diagnostic {
            path: "de/pack.toml".into(),
            line: 3,
            column: 7,
            severity: Severity::Warning,
            message: "something".into(),
        };
        assert_eq!(d.to_string(), "de/pack.toml:3:7: warning: something");
        let all = Diagnostics(vec![d.clone(), Diagnostic { severity: Severity::Error, ..d }]);
        assert_eq!(all.to_string(), "de/pack.toml:3:7: warning: something\nde/pack.toml:3:7: error: something");
        assert!(all.has_errors());
        assert_eq!(all.errors().count(), 1);
    }
}
