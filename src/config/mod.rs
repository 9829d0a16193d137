//! Configuration: the file schema ([`file`]), its validation and compilation into an immutable
//! [`Snapshot`] ([`compile`]), and the diagnostics that name `FILE:LINE:COL`.

pub mod compile;
pub mod file;
pub mod snapshot;

use std::fmt;
use std::ops::Range;
use std::path::Path;

pub use compile::{compile, CompileInput};
pub use snapshot::Snapshot;

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a configuration file, located by line and column (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub severity: Severity,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = if self.severity == Severity::Warning { "warning: " } else { "" };
        write!(f, "{}:{}:{}: {sev}{}", self.file, self.line, self.col, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every error (and warning) of one load, in file order.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics(pub Vec<ConfigError>);

impl Diagnostics {
    /// Only the warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter().filter(|d| d.severity == Severity::Warning)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Maps byte offsets of a source text to 1-based line and column (in characters).
#[derive(Debug)]
pub struct SourceMap<'a> {
    pub name: &'a str,
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> SourceMap<'a> {
    /// Indexes `text`, called `name` in messages.
    pub fn new(name: &'a str, text: &'a str) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        SourceMap { name, text, line_starts }
    }

    /// A diagnostic at `span`.
    pub fn diag(&self, span: Range<usize>, severity: Severity, message: impl Into<String>) -> ConfigError {
        let at = span.start.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= at);
        let start = self.line_starts[line - 1];
        let col = self.text.get(start..at).map_or(at - start, |s| s.chars().count()) + 1;
        ConfigError { file: self.name.to_string(), line, col, message: message.into(), severity }
    }
}

/// Parses the TOML of `text` into the file schema; a syntax or schema error becomes one diagnostic.
pub fn parse(map: &SourceMap<'_>, text: &str) -> Result<file::FileConfig, Diagnostics> {
    toml::from_str::<file::FileConfig>(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        Diagnostics(vec![map.diag(span, Severity::Error, e.message().trim_end().to_string())])
    })
}

/// Reads `path` to a string, reporting an unreadable file as a diagnostic.
pub fn read(path: &Path) -> Result<String, Diagnostics> {
    std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![ConfigError {
            file: path.display().to_string(),
            line: 1,
            col: 1,
            message: format!("cannot read the configuration file: {e}"),
            severity: Severity::Error,
        }])
    })
}
