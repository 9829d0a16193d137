//! Configuration: the file schema ([`file`]), its validation and compilation into an immutable
//! [`Snapshot`] ([`compile`]), and the diagnostics that name `FILE:LINE:COL`.

pub mod compile;
pub mod file;
pub mod material;
pub mod snapshot;

use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;

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

    /// The line and column (1-based; the column in characters) of byte offset `at`.
    pub fn line_col(&self, at: usize) -> (usize, usize) {
        let at = at.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= at);
        let start = self.line_starts[line - 1];
        let col = self.text.get(start..at).map_or(at - start, |s| s.chars().count()) + 1;
        (line, col)
    }

    /// A diagnostic at `span`.
    pub fn diag(&self, span: Range<usize>, severity: Severity, message: impl Into<String>) -> ConfigError {
        let (line, col) = self.line_col(span.start);
        ConfigError { file: self.name.to_string(), line, col, message: message.into(), severity }
    }
}

/// Parses the TOML of `text` into the file schema. A syntax error is one diagnostic (nothing after
/// it can be read reliably). A file that reads whole is read once. Otherwise its schema errors
/// (an unknown key, a wrong type, a bad duration) are collected like semantic ones: every section
/// and every `[[...]]` element is read on its own, from its own lines (with every position mapped
/// back to the file's), and a member that fails is blanked and the element read again, so one bad
/// value hides neither the rest of its element nor the other elements; the work stays linear in
/// the size of the file. An element that cannot be read at all is left out; its name is kept in
/// [`file::FileConfig::unreadable`] so that references to it are not reported as unknown as well.
pub fn parse(map: &SourceMap<'_>, text: &str) -> Result<(file::FileConfig, Vec<ConfigError>), Diagnostics> {
    if let Ok(cfg) = toml::from_str::<file::FileConfig>(text) {
        return Ok((cfg, Vec::new()));
    }
    let doc = toml_edit::ImDocument::parse(text).map_err(|e| {
        Diagnostics(vec![map.diag(e.span().unwrap_or(0..0), Severity::Error, e.message().trim_end().to_string())])
    })?;
    let root = doc.as_table();
    let mut starts = Vec::new();
    header_starts(root, &mut starts);
    starts.sort_unstable();
    let mut r = Reader { map, text, starts, diags: Vec::new(), unreadable: Vec::new(), blank: Vec::new() };
    for (key, item) in root.iter() {
        let key_span = root.key(key).and_then(toml_edit::Key::span).unwrap_or(0..0);
        match key {
            "server" => r.one::<file::Server>(key, &key_span, item),
            "access_log" => r.one::<file::AccessLog>(key, &key_span, item),
            "aws" => r.one::<file::Aws>(key, &key_span, item),
            "cloudwatch" => r.one::<file::CloudWatch>(key, &key_span, item),
            "certificates" => r.each::<file::Certificate>(key, &key_span, item),
            "listeners" => r.each::<file::Listener>(key, &key_span, item),
            "rules" => r.each::<file::Rule>(key, &key_span, item),
            "target_groups" => r.each::<file::TargetGroup>(key, &key_span, item),
            other => {
                r.blank.push(r.piece(&key_span, item));
                r.diags.push(map.diag(
                    key_span,
                    Severity::Error,
                    format!(
                        "unknown key `{other}`, expected one of `server`, `access_log`, `aws`, `cloudwatch`, \
                     `certificates`, `listeners`, `rules`, `target_groups`"
                    ),
                ))
            }
        }
    }
    // The file with every member that failed (and every element that could not be read) blanked
    // in place, so what is read has the file's positions for the checks that follow.
    let mut repaired = text.as_bytes().to_vec();
    for range in r.blank.iter().flatten() {
        for b in &mut repaired[range.clone()] {
            if *b != b'\n' && *b != b'\r' {
                *b = b' ';
            }
        }
    }
    let repaired = String::from_utf8_lossy(&repaired);
    let mut cfg = match toml::from_str::<file::FileConfig>(&repaired) {
        Ok(cfg) => cfg,
        Err(e) => {
            // Not expected (each piece was read alone): report it rather than guess.
            if r.diags.is_empty() {
                r.diags.push(map.diag(e.span().unwrap_or(0..0), Severity::Error, e.message().trim_end().to_string()));
            }
            file::FileConfig::default()
        }
    };
    if r.diags.is_empty() {
        // Read whole it failed, read in pieces it did not: report the whole read's error.
        if let Err(e) = toml::from_str::<file::FileConfig>(text) {
            r.diags.push(map.diag(e.span().unwrap_or(0..0), Severity::Error, e.message().trim_end().to_string()));
        }
    }
    cfg.unreadable = r.unreadable;
    Ok((cfg, r.diags))
}

/// Where every table header (`[a]`, `[[a]]`, `[a.b]`) starts.
fn header_starts(t: &toml_edit::Table, out: &mut Vec<usize>) {
    for (_, item) in t.iter() {
        match item {
            toml_edit::Item::Table(t) => {
                out.extend(t.span().map(|s| s.start));
                header_starts(t, out);
            }
            toml_edit::Item::ArrayOfTables(a) => {
                for t in a.iter() {
                    out.extend(t.span().map(|s| s.start));
                    header_starts(t, out);
                }
            }
            _ => {}
        }
    }
}

/// Reads sections and elements of one document, collecting their errors.
struct Reader<'a, 'm> {
    map: &'a SourceMap<'m>,
    text: &'a str,
    /// Every table header's start, in order.
    starts: Vec<usize>,
    diags: Vec<ConfigError>,
    unreadable: Vec<String>,
    /// What the whole read leaves out: members that failed, pieces that could not be read.
    blank: Vec<Vec<Range<usize>>>,
}

/// Text made of pieces of the file, and where each piece came from.
struct Extract {
    text: String,
    /// (offset in `text`, offset in the file, length), in order.
    pieces: Vec<(usize, usize, usize)>,
}

impl Extract {
    /// The file's offset for an offset of the extract.
    fn to_file(&self, at: usize) -> usize {
        let i = self.pieces.partition_point(|&(start, _, _)| start <= at).saturating_sub(1);
        self.pieces.get(i).map_or(0, |&(start, file, len)| file + (at - start).min(len))
    }
}

impl Reader<'_, '_> {
    /// Where the line holding `at` starts (a key-value pair, dotted or not, owns its line).
    fn line_start(&self, at: usize) -> usize {
        self.text[..at.min(self.text.len())].rfind('\n').map_or(0, |i| i + 1)
    }

    /// The byte ranges of the text that hold `item` under `key_span`: a key-value pair from the
    /// start of its line, or a table from its header to the next one, with its sub-tables.
    fn piece(&self, key_span: &Range<usize>, item: &toml_edit::Item) -> Vec<Range<usize>> {
        match item {
            toml_edit::Item::Value(v) => {
                std::iter::once(self.line_start(key_span.start)..v.span().map_or(key_span.end, |s| s.end)).collect()
            }
            toml_edit::Item::Table(t) => self.table_piece(t),
            toml_edit::Item::ArrayOfTables(a) => a.iter().flat_map(|t| self.table_piece(t)).collect(),
            toml_edit::Item::None => Vec::new(),
        }
    }

    /// A table's header-to-next-header range and those of its sub-tables (and, for a table
    /// made by dotted keys, the lines of those keys).
    fn table_piece(&self, t: &toml_edit::Table) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        if let Some(s) = t.span() {
            let i = self.starts.partition_point(|&x| x <= s.start);
            out.push(s.start..self.starts.get(i).copied().unwrap_or(self.text.len()));
        }
        for (k, item) in t.iter() {
            match item {
                toml_edit::Item::Table(sub) => out.extend(self.table_piece(sub)),
                toml_edit::Item::ArrayOfTables(a) => a.iter().for_each(|sub| out.extend(self.table_piece(sub))),
                toml_edit::Item::Value(_) if t.span().is_none() => {
                    let ks = t.key(k).and_then(toml_edit::Key::span).unwrap_or(0..0);
                    out.extend(self.piece(&ks, item));
                }
                _ => {}
            }
        }
        out.sort_by_key(|r| r.start);
        out.dedup_by(|b, a| b.start < a.end);
        out
    }

    /// The members of a table written with headers, each with the text it occupies (none for an
    /// inline table: blanking one of its members would break the syntax, so its first error is
    /// its only one).
    fn members(&self, item: &toml_edit::Item) -> Vec<(String, Vec<Range<usize>>)> {
        let toml_edit::Item::Table(t) = item else { return Vec::new() };
        t.iter()
            .map(|(k, v)| {
                let ks = t.key(k).and_then(toml_edit::Key::span).unwrap_or(0..0);
                (k.to_string(), self.piece(&ks, v))
            })
            .collect()
    }

    /// The text of `keep` (in order, each on its own lines), with `drop` blanked.
    fn extract(&self, keep: &[Range<usize>], drop: &[Range<usize>]) -> Extract {
        let mut text = String::new();
        let mut pieces = Vec::new();
        for r in keep {
            let mut piece = self.text[r.clone()].as_bytes().to_vec();
            for d in drop.iter().filter(|d| d.start >= r.start && d.end <= r.end) {
                for b in &mut piece[d.start - r.start..d.end - r.start] {
                    if *b != b'\n' && *b != b'\r' {
                        *b = b' ';
                    }
                }
            }
            pieces.push((text.len(), r.start, r.len()));
            // Whole items were blanked (every byte of them), so the rest is still UTF-8.
            text.push_str(&String::from_utf8_lossy(&piece));
            text.push('\n');
        }
        Extract { text, pieces }
    }

    /// One section or element, read from `keep`; a member that fails is blanked and it is read
    /// again (reporting each failure once). What failed is blanked for the whole read too; false
    /// when the piece could not be read at all (then it is blanked whole).
    fn read<T: serde::de::DeserializeOwned>(
        &mut self,
        key: &str,
        keep: Vec<Range<usize>>,
        members: Vec<(String, Vec<Range<usize>>)>,
        whole: Range<usize>,
        array: bool,
    ) -> bool {
        let ok = self.try_read::<T>(key, &keep, &members, whole, array);
        if !ok {
            self.blank.push(keep);
        }
        ok
    }

    fn try_read<T: serde::de::DeserializeOwned>(
        &mut self,
        key: &str,
        keep: &[Range<usize>],
        members: &[(String, Vec<Range<usize>>)],
        whole: Range<usize>,
        array: bool,
    ) -> bool {
        #[derive(Deserialize)]
        struct One<T>(std::collections::HashMap<String, T>);
        #[derive(Deserialize)]
        struct Many<T>(std::collections::HashMap<String, Vec<T>>);
        let mut dropped: Vec<Range<usize>> = Vec::new();
        let mut set_aside: Vec<&str> = Vec::new();
        for _ in 0..=members.len() {
            let x = self.extract(keep, &dropped);
            let got = if array {
                toml::from_str::<Many<T>>(&x.text).map(|mut m| m.0.remove(key).and_then(|mut v| v.pop()))
            } else {
                toml::from_str::<One<T>>(&x.text).map(|mut m| m.0.remove(key))
            };
            let e = match got {
                Ok(Some(_)) => {
                    self.blank.push(dropped);
                    return true;
                }
                Ok(None) => {
                    let what = if array { "an array of tables ([[...]])" } else { "a table" };
                    self.diags.push(self.map.diag(whole.clone(), Severity::Error, format!("`{key}` must be {what}")));
                    return false;
                }
                Err(e) => e,
            };
            let message = e.message().trim_end().to_string();
            // A required key that was set aside for its own error is not missing as well.
            if set_aside.iter().any(|k| message == format!("missing field `{k}`")) {
                break;
            }
            let at = e.span().map_or_else(|| whole.clone(), |s| x.to_file(s.start)..x.to_file(s.end));
            self.diags.push(self.map.diag(at.clone(), Severity::Error, message));
            let culprit = members.iter().find(|(_, rs)| rs.iter().any(|r| r.start <= at.start && at.start < r.end));
            match culprit {
                Some((k, rs)) if !set_aside.contains(&k.as_str()) => {
                    dropped.extend(rs.iter().cloned());
                    set_aside.push(k);
                }
                _ => break,
            }
        }
        false
    }

    /// A section (`[server]`).
    fn one<T: serde::de::DeserializeOwned>(&mut self, key: &str, key_span: &Range<usize>, item: &toml_edit::Item) {
        let keep = self.piece(key_span, item);
        let members = self.members(item);
        self.read::<T>(key, keep, members, key_span.clone(), false);
    }

    /// Every element of an array of tables (`[[listeners]]`), each on its own.
    fn each<T: serde::de::DeserializeOwned>(&mut self, key: &str, key_span: &Range<usize>, item: &toml_edit::Item) {
        match item {
            toml_edit::Item::ArrayOfTables(a) => {
                for t in a.iter() {
                    let keep = self.table_piece(t);
                    let members = self.members(&toml_edit::Item::Table(t.clone()));
                    let whole = t.span().unwrap_or_else(|| key_span.clone());
                    if !self.read::<file::Spanned<T>>(key, keep, members, whole, true) {
                        self.unreadable.extend(t.get("name").and_then(toml_edit::Item::as_str).map(String::from));
                    }
                }
            }
            // `key = [{ ... }, ...]` inline, or something else: read as one.
            _ => {
                let keep = self.piece(key_span, item);
                self.read::<Vec<file::Spanned<T>>>(key, keep, Vec::new(), key_span.clone(), false);
            }
        }
    }
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
