//! Errors the ftvm command reports, one line each.

use std::path::PathBuf;

/// A failed ftvm command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// A file could not be opened.
    #[error("cannot open {what} {path}: {source}")]
    Open {
        /// What the file is for.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The VM layer failed.
    #[error(transparent)]
    Vmm(#[from] ftvm_vmm::VmmError),
    /// Snapshot, migration or replication failed.
    #[error(transparent)]
    Replication(#[from] ftvm_replication::ReplicationError),
    /// The API socket failed.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
}
