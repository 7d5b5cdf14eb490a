//! Errors returned by the audit library.

use std::path::PathBuf;

/// Everything that can make an audit run fail as a whole.
///
/// Problems with single files (unreadable, binary, not parseable) are not errors:
/// they are reported in the output as skipped files and the run goes on.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A path given on the command line does not exist or cannot be inspected.
    #[error("cannot audit {path}: {source}")]
    Path {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown keys.
    #[error("config file {path} is not valid: {message}")]
    ConfigParse { path: PathBuf, message: String },
    /// The config file names a rule that does not exist.
    #[error(
        "config file {path} names unknown rule `{rule}` (see `docs/audit-rules.md` for the list)"
    )]
    UnknownRule { path: PathBuf, rule: String },
    /// A path exclusion pattern is not a valid glob.
    #[error("exclude pattern `{pattern}` is not a valid glob: {message}")]
    BadExclude { pattern: String, message: String },
    /// The baseline file could not be read.
    #[error("cannot read baseline file {path}: {source}")]
    BaselineRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The baseline file is not the JSON this tool writes.
    #[error("baseline file {path} is not a valid baseline: {source}")]
    BaselineParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Writing an output file (baseline, bench result) failed.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Serializing the report failed (should not happen for well-formed findings).
    #[error("cannot serialize the {format} report: {source}")]
    Serialize {
        format: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// Writing the report to stdout failed (e.g. closed pipe).
    #[error("cannot write the report to stdout: {0}")]
    Stdout(#[source] std::io::Error),
    /// A tree-sitter grammar could not be loaded (ABI mismatch between grammar and library).
    #[error("tree-sitter grammar for {lang} cannot be loaded: {message}")]
    Grammar { lang: &'static str, message: String },
    /// A worker thread could not be started.
    #[error("cannot start scanner thread: {0}")]
    Thread(#[source] std::io::Error),
}
