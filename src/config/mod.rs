//! Configuration: the file schema ([`file`]), its validation and compilation into an immutable
//! [`Snapshot`] ([`compile`]), and the diagnostics that name `FILE:LINE:COL`.

pub mod compile;
pub mod file;
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
/// it can be read reliably). Schema errors (an unknown key, a wrong type, a bad duration) are
/// collected like semantic ones: every section and every `[[...]]` element is read on its own
/// (from a copy of the text in which everything else is blanked, so every span is the file's),
/// and a key that fails is blanked too and the element read again, so one bad value hides
/// neither the rest of its element nor the other elements. An element that cannot be read at all
/// is left out; its name is kept in [`file::FileConfig::unreadable`] so that references to it are
/// not reported as unknown as well.
pub fn parse(map: &SourceMap<'_>, text: &str) -> Result<(file::FileConfig, Vec<ConfigError>), Diagnostics> {
    let doc = toml_edit::ImDocument::parse(text).map_err(|e| {
        Diagnostics(vec![map.diag(e.span().unwrap_or(0..0), Severity::Error, e.message().trim_end().to_string())])
    })?;
    let root = doc.as_table();
    let mut starts = Vec::new();
    header_starts(root, &mut starts);
    starts.sort_unstable();
    let mut r = Reader { map, text, starts, diags: Vec::new(), unreadable: Vec::new() };
    let mut cfg = file::FileConfig::default();
    for (key, item) in root.iter() {
        let key_span = root.key(key).and_then(toml_edit::Key::span).unwrap_or(0..0);
        let piece = |r: &Reader<'_, '_>, item: &toml_edit::Item| r.piece(&key_span, item);
        match key {
            "server" => cfg.server = r.one(key, piece(&r, item), item).unwrap_or_default(),
            "access_log" => cfg.access_log = r.one(key, piece(&r, item), item).unwrap_or_default(),
            "aws" => cfg.aws = r.one(key, piece(&r, item), item),
            "cloudwatch" => cfg.cloudwatch = r.one(key, piece(&r, item), item),
            "certificates" => cfg.certificates = r.each(key, &key_span, item),
            "listeners" => cfg.listeners = r.each(key, &key_span, item),
            "rules" => cfg.rules = r.each(key, &key_span, item),
            "target_groups" => cfg.target_groups = r.each(key, &key_span, item),
            other => r.diags.push(map.diag(
                key_span,
                Severity::Error,
                format!(
                    "unknown key `{other}`, expected one of `server`, `access_log`, `aws`, `cloudwatch`, \
                     `certificates`, `listeners`, `rules`, `target_groups`"
                ),
            )),
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
}

impl Reader<'_, '_> {
    /// The byte ranges of the text that hold `item` under `key_span`: a value written after its
    /// key (`a = ...`), or a table from its header to the next one, with its sub-tables.
    fn piece(&self, key_span: &Range<usize>, item: &toml_edit::Item) -> Vec<Range<usize>> {
        match item {
            toml_edit::Item::Value(v) => {
                std::iter::once(key_span.start..v.span().map_or(key_span.end, |s| s.end)).collect()
            }
            toml_edit::Item::Table(t) => self.table_piece(t),
            _ => Vec::new(),
        }
    }

    /// A table's header-to-next-header range and those of its sub-tables.
    fn table_piece(&self, t: &toml_edit::Table) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        if let Some(s) = t.span() {
            let next = self.starts.iter().copied().find(|&x| x > s.start).unwrap_or(self.text.len());
            out.push(s.start..next);
        }
        for (k, item) in t.iter() {
            match item {
                toml_edit::Item::Table(sub) => out.extend(self.table_piece(sub)),
                toml_edit::Item::ArrayOfTables(a) => a.iter().for_each(|sub| out.extend(self.table_piece(sub))),
                toml_edit::Item::Value(_) if t.span().is_none() => {
                    // A dotted key of an implicit table (`a.b = 1` under no header of its own).
                    let ks = t.key(k).and_then(toml_edit::Key::span).unwrap_or(0..0);
                    out.extend(self.piece(&ks, item));
                }
                _ => {}
            }
        }
        out
    }

    /// The members of a table-like `item`, each with the text it occupies.
    fn members(&self, item: &toml_edit::Item) -> Vec<(String, Vec<Range<usize>>)> {
        let Some(t) = item.as_table_like() else { return Vec::new() };
        t.iter()
            .map(|(k, v)| {
                let ks = t.key(k).and_then(toml_edit::Key::span).unwrap_or(0..0);
                (k.to_string(), self.piece(&ks, v))
            })
            .collect()
    }

    /// The text with only `keep` left (the rest blanked, line breaks kept: spans stay the file's).
    fn masked(&self, keep: &[Range<usize>], drop: &[Range<usize>]) -> String {
        let mut out: Vec<u8> = self.text.bytes().map(|b| if b == b'\n' || b == b'\r' { b } else { b' ' }).collect();
        for r in keep {
            out[r.clone()].copy_from_slice(&self.text.as_bytes()[r.clone()]);
        }
        for r in drop {
            for b in &mut out[r.clone()] {
                if *b != b'\n' && *b != b'\r' {
                    *b = b' ';
                }
            }
        }
        // Only ASCII spaces replaced whole bytes of the text, and kept ranges are whole items.
        String::from_utf8(out).unwrap_or_default()
    }

    /// One section or element, read from `keep`; a member that fails is blanked and it is read
    /// again (reporting each failure once).
    fn read<T: serde::de::DeserializeOwned>(
        &mut self,
        key: &str,
        keep: Vec<Range<usize>>,
        members: Vec<(String, Vec<Range<usize>>)>,
        whole: Range<usize>,
        array: bool,
    ) -> Option<T> {
        #[derive(Deserialize)]
        struct One<T>(std::collections::HashMap<String, T>);
        #[derive(Deserialize)]
        struct Many<T>(std::collections::HashMap<String, Vec<T>>);
        let mut dropped: Vec<Range<usize>> = Vec::new();
        let mut set_aside: Vec<&str> = Vec::new();
        for _ in 0..=members.len() {
            let text = self.masked(&keep, &dropped);
            let got = if array {
                toml::from_str::<Many<T>>(&text).map(|mut m| m.0.remove(key).and_then(|mut v| v.pop()))
            } else {
                toml::from_str::<One<T>>(&text).map(|mut m| m.0.remove(key))
            };
            let e = match got {
                Ok(v) => return v,
                Err(e) => e,
            };
            let message = e.message().trim_end().to_string();
            // A required key that was set aside for its own error is not missing as well.
            if set_aside.iter().any(|k| message == format!("missing field `{k}`")) {
                break;
            }
            let at = e.span().unwrap_or_else(|| whole.clone());
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
        None
    }

    /// A section (`[server]`).
    fn one<T: serde::de::DeserializeOwned>(
        &mut self,
        key: &str,
        keep: Vec<Range<usize>>,
        item: &toml_edit::Item,
    ) -> Option<T> {
        let members = self.members(item);
        let whole = keep.first().cloned().unwrap_or(0..0);
        self.read(key, keep, members, whole, false)
    }

    /// Every element of an array of tables (`[[listeners]]`), each on its own.
    fn each<T: serde::de::DeserializeOwned>(
        &mut self,
        key: &str,
        key_span: &Range<usize>,
        item: &toml_edit::Item,
    ) -> Vec<toml::Spanned<T>> {
        match item {
            toml_edit::Item::ArrayOfTables(a) => a
                .iter()
                .filter_map(|t| {
                    let keep = self.table_piece(t);
                    let members = self.members(&toml_edit::Item::Table(t.clone()));
                    let whole = t.span().unwrap_or(0..0);
                    let v = self.read::<toml::Spanned<T>>(key, keep, members, whole, true);
                    if v.is_none() {
                        self.unreadable.extend(t.get("name").and_then(toml_edit::Item::as_str).map(String::from));
                    }
                    v
                })
                .collect(),
            // `key = [{ ... }, ...]` inline: read as one.
            _ => {
                let keep = self.piece(key_span, item);
                let whole = keep.first().cloned().unwrap_or(0..0);
                self.read::<Vec<toml::Spanned<T>>>(key, keep, Vec::new(), whole, false).unwrap_or_default()
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
