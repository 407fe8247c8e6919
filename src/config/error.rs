//! Config errors as the operator reads them: `FILE:LINE:COL: message`, then `  hint: ...`.
//! Spans from the parser are byte ranges; they are turned into 1-based lines and character
//! columns here, the one place that knows the text, so no byte offset is ever printed.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a config file, at the value (or key) that causes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based, counted in characters.
    pub col: usize,
    /// What is wrong and what it would cause.
    pub message: String,
    /// How to fix it, when there is something to suggest.
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one config file, in file order. Displayed as one block per
/// error, each ending in a newline, ready for `eprint!`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for error in &self.0 {
            writeln!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors while one file is checked.
pub(super) struct Report<'a> {
    text: &'a str,
    file: &'a Path,
    /// Where each line starts, built by the first position asked for: a config of 10,000
    /// SNI entries can warn 10,000 times, and each position is then a binary search instead
    /// of a walk from the top of the file.
    lines: std::cell::OnceCell<Lines>,
    /// With the byte offset they were reported at, to sort them into file order.
    errors: Vec<(usize, ConfigError)>,
    /// Accepted but worth telling: never fail a check.
    warnings: Vec<(usize, ConfigError)>,
}

impl<'a> Report<'a> {
    pub(super) fn new(text: &'a str, file: &'a Path) -> Self {
        Report {
            text,
            file,
            lines: std::cell::OnceCell::new(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// An error at `span` with a suggested fix.
    pub(super) fn error(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(span.start, message.into(), Some(hint.into()));
    }

    /// An error at `span` that carries its own explanation (parser and type errors).
    pub(super) fn bare(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.push(span.start, message.into(), None);
    }

    /// A warning at `span`: `message` is printed after `warning: `; checking goes on.
    pub(super) fn warn(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = self.line_col(span.start);
        let warning = ConfigError {
            file: self.file.to_owned(),
            line,
            col,
            message: format!("warning: {}", message.into()),
            hint: None,
        };
        self.warnings.push((span.start, warning));
    }

    /// The warnings so far, in file order, taken out of the report.
    pub(super) fn take_warnings(&mut self) -> Vec<ConfigError> {
        let mut warnings = std::mem::take(&mut self.warnings);
        warnings.sort_by_key(|(offset, _)| *offset);
        warnings.into_iter().map(|(_, w)| w).collect()
    }

    /// A span rendered as `LINE:COL`, for hints that point at another place in the file.
    pub(super) fn position(&self, span: &Range<usize>) -> String {
        let (line, col) = self.line_col(span.start);
        format!("{line}:{col}")
    }

    /// The validated value when nothing was reported, otherwise every error in file order.
    pub(super) fn finish<T>(self, value: Option<T>) -> Result<T, ConfigErrors> {
        match value {
            Some(value) if self.errors.is_empty() => Ok(value),
            _ => {
                debug_assert!(
                    !self.errors.is_empty(),
                    "validation failed without saying why"
                );
                let mut errors = self.errors;
                // Stable: errors at the same place keep the order they were found in.
                errors.sort_by_key(|(offset, _)| *offset);
                Err(ConfigErrors(errors.into_iter().map(|(_, e)| e).collect()))
            }
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        self.lines
            .get_or_init(|| Lines::new(self.text))
            .line_col(self.text, offset)
    }

    fn push(&mut self, offset: usize, message: String, hint: Option<String>) {
        let (line, col) = self.line_col(offset);
        let error = ConfigError {
            file: self.file.to_owned(),
            line,
            col,
            message,
            hint,
        };
        self.errors.push((offset, error));
    }
}

/// The byte offsets at which a text's lines start, and the last position worked out.
struct Lines {
    starts: Vec<usize>,
    /// (offset, column) of the last position asked for: the next one on the same line, at
    /// or after it, counts characters from there. Positions come mostly in file order, so
    /// a file written on one long line costs one walk of that line, not one per position.
    last: std::cell::Cell<(usize, usize)>,
}

impl Lines {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Lines {
            starts,
            last: std::cell::Cell::new((0, 0)),
        }
    }

    /// 1-based line and character column of a byte offset; offsets past the end (a parser
    /// error at end of file) land just after the last character, and an offset inside a
    /// character counts as that character.
    fn line_col(&self, text: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(text.len());
        // The last line starting at or before the offset.
        let index = self.starts.partition_point(|&start| start <= offset) - 1;
        let line_start = self.starts[index];
        // Characters before `from` on this line: `counted`.
        let (from, counted) = match self.last.get() {
            (last, col) if line_start <= last && last <= offset => (last, col),
            _ => (line_start, 0),
        };
        // A character that starts before the offset counts, also when the offset is inside
        // it; `from` is always a character boundary.
        let col = counted
            + text[from..]
                .char_indices()
                .take_while(|(i, _)| from + i < offset)
                .count();
        // Resume only from a character boundary.
        if text.is_char_boundary(offset) {
            self.last.set((offset, col));
        }
        (index + 1, col + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::Lines;
    use proptest::prelude::*;

    /// Character by character from the top of the file: what `Lines` must agree with.
    fn walked(text: &str, offset: usize) -> (usize, usize) {
        let (mut line, mut col) = (1, 1);
        for (i, c) in text.char_indices() {
            if i >= offset {
                break;
            }
            if c == '\n' {
                (line, col) = (line + 1, 1);
            } else {
                col += 1;
            }
        }
        (line, col)
    }

    proptest! {
        #[test]
        fn positions_match_a_walk_from_the_top(
            text in "[a\\n\\r=é日\"]{0,40}",
            queries in proptest::collection::vec(0usize..50, 0..30),
        ) {
            // In file order, as validation mostly asks, and then in any order.
            let lines = Lines::new(&text);
            for offset in (0..=text.len() + 2).chain(queries) {
                prop_assert_eq!(lines.line_col(&text, offset), walked(&text, offset), "offset {}", offset);
            }
        }
    }
}
