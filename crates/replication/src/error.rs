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
    /// The wire handshake failed.
    #[error("handshake: {0}")]
    Handshake(#[from] ftvm_wire::HandshakeError),
    /// Sending failed.
    #[error("sending to the peer: {0}")]
    Send(#[from] ftvm_wire::SendError),
    /// Receiving failed.
    #[error("receiving from the peer: {0}")]
    Recv(#[from] ftvm_wire::RecvError),
    /// The epoch stream broke a rule.
    #[error("epoch stream: {0}")]
    Epoch(#[from] ftvm_wire::EpochError),
    /// A migration's final step did not complete in a way that proves where the VM runs.
    #[error("migration outcome unknown: {0}")]
    MigrationInDoubt(String),
    /// The peer misbehaved or went away.
    #[error("{0}")]
    Peer(String),
    /// The fence could not be taken, kept or read.
    #[error("fence: {0}")]
    Fence(String),
    /// A backup that could not take the fence after losing its primary: its replica must
    /// never be resumed.
    #[error("stale replica: {0}")]
    Stale(String),
    /// Socket or file I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A disk image failed (open, read, write, flush, write log).
    #[error(transparent)]
    Disk(#[from] ftvm_devices::disk::DiskError),
    /// Guest memory access failed.
    #[error("guest memory at {gpa:#x}: {reason}")]
    Memory {
        /// Where.
        gpa: u64,
        /// Why.
        reason: String,
    },
}

impl ReplicationError {
    /// An I/O error while doing `what`.
    pub fn io(what: &str, source: std::io::Error) -> Self {
        ReplicationError::Io {
            what: what.to_string(),
            source,
        }
    }
}
