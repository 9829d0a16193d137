//! Configurations made from another tool's description of the same services:
//! `pilotfish import copilot` ([`copilot`]) reads AWS Copilot manifests.
//!
//! An import is a pure function from texts to a text: manifests in, a pilotfish configuration
//! (TOML, with comments) and a list of [`Note`]s out. It reads no file and calls no AWS API, so
//! it is tested on strings; the CLI (`main.rs`) reads the files and writes the output. What it
//! prints is meant to pass `pilotfish check` as it stands: every value that `check` would refuse
//! is refused here first, as an error naming the manifest and the field.

pub mod copilot;

use std::fmt;

/// Something of a manifest the import did not carry over (or did by an assumption), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The manifest, as named on the command line.
    pub file: String,
    /// The field, as a path into the manifest (`http.healthcheck.grace_period`), or an option.
    pub field: String,
    pub reason: String,
    pub kind: NoteKind,
}

/// What a [`Note`] says about its field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// The field has no pilotfish equivalent (or is not the load balancer's business).
    Unmapped,
    /// The whole manifest was left out (not a service with a load balancer).
    Skipped,
    /// Mapped, but on a guess the user should confirm (a name the manifests cannot tell).
    Assumed,
}

impl NoteKind {
    /// The word stderr and the output's comments use.
    pub fn as_str(self) -> &'static str {
        match self {
            NoteKind::Unmapped => "not mapped",
            NoteKind::Skipped => "skipped",
            NoteKind::Assumed => "assumed",
        }
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}: {}", self.file, self.kind.as_str(), self.field, self.reason)
    }
}

/// Why an import produced no configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// A manifest that cannot be read or mapped: `FILE: message`.
    #[error("{file}: {message}")]
    Manifest { file: String, message: String },
    /// Options that contradict each other or the manifests.
    #[error("{0}")]
    Usage(String),
}

/// `s` as a TOML string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// `items` as a TOML array of strings.
fn string_list<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s.as_ref())).collect();
    format!("[{}]", quoted.join(", "))
}
