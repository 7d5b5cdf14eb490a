//! Errors of snapshot, migration and replication.

use std::path::PathBuf;

/// What went wrong moving VM state.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The VM layer failed.
    #[error(transparent)]
    Vmm(#[from] ftvm_vmm::VmmError),
    /// A snapshot file is unusable.
    #[error(transparent)]
    Snapshot(#[from] ftvm_wire::snapshot::SnapshotError),
    /// A snapshot directory problem.
    #[error("snapshot {path}: {reason}")]
    SnapshotDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Guest memory access failed.
    #[error("guest memory at {gpa:#x}: {reason}")]
    Memory {
        /// Where.
        gpa: u64,
        /// Why.
        reason: String,
    },
}
