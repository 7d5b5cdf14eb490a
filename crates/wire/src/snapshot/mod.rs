//! Snapshot files (see `docs/snapshot-format.md`).
//!
//! A snapshot is two or three files:
//! - the **state file** ([`state_file`]): a checksummed container around the
//!   VMM's opaque state body (vCPU, VM and device state, memory layout);
//! - the **memory file**, either full ([`memory_file`]: a raw, sparse image
//!   where file offset = guest-physical address) or a **diff**
//!   ([`diff_file`]: only the pages that changed since a base snapshot,
//!   each tagged with its gpa, checksummed).
//!
//! All writers write to `PATH.tmp`, fsync, and rename over `PATH`, then fsync
//! the directory: a crash leaves either the old file or the new one.

pub mod diff_file;
pub mod memory_file;
pub mod state_file;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub use diff_file::{read_memory_diff, DiffReader, DiffWriter, DIFF_MAGIC, DIFF_VERSION};
pub use memory_file::{is_zero, read_memory_region, MemoryFileStats, MemoryFileWriter};
pub use state_file::{
    decode_state, encode_state, read_state_file, write_state_file, StateFile, FLAG_DIFF_MEMORY,
    STATE_MAGIC, STATE_VERSION,
};

/// What is wrong with the bytes of a snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Shorter than the fixed header.
    #[error("file is {len} bytes, too short for an ftvm {what} header ({need} bytes)")]
    TooShort {
        /// "snapshot state" or "memory diff".
        what: &'static str,
        /// File length.
        len: u64,
        /// Header length.
        need: u64,
    },
    /// A foreign file.
    #[error("not an ftvm {what} file: magic {} ({:?}), expected {}", hex(.found), String::from_utf8_lossy(.found), String::from_utf8_lossy(.expected))]
    BadMagic {
        /// "snapshot state" or "memory diff".
        what: &'static str,
        /// Bytes found.
        found: Vec<u8>,
        /// Bytes expected.
        expected: Vec<u8>,
    },
    /// Written by another version of ftvm.
    #[error("{what} format version {found} not supported: this build reads version {supported} ({})", if .found > .supported { "file written by a newer ftvm" } else { "file written by an older ftvm" })]
    Version {
        /// "snapshot state" or "memory diff".
        what: &'static str,
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// Flags this version does not define.
    #[error("unknown flags {flags:#x} (this build knows {known:#x})")]
    UnknownFlags {
        /// Flags found.
        flags: u32,
        /// Flags defined.
        known: u32,
    },
    /// The file ends before the announced content.
    #[error("truncated: {what} needs bytes {offset}..{end} but the file ends at byte {len}", end = .offset.saturating_add(*.need))]
    Truncated {
        /// Part that is cut.
        what: &'static str,
        /// Where the part starts.
        offset: u64,
        /// Its length.
        need: u64,
        /// File length.
        len: u64,
    },
    /// Bytes after the checksum.
    #[error("{extra} unexpected bytes after the checksum at byte {offset}")]
    Trailing {
        /// How many.
        extra: u64,
        /// Where the checksum ended.
        offset: u64,
    },
    /// Content does not match its checksum.
    #[error("CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x} over {len} bytes: file corrupt")]
    Crc {
        /// Stored checksum.
        stored: u32,
        /// Computed checksum.
        computed: u32,
        /// Bytes covered.
        len: u64,
    },
    /// The body is larger than any state this build writes.
    #[error("state body of {len} bytes exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// Announced length.
        len: u64,
        /// Limit.
        limit: u64,
    },
    /// A diff page record is invalid.
    #[error("page record {index} (byte {offset}): {problem}")]
    BadPage {
        /// Record index.
        index: u64,
        /// Byte offset of the record.
        offset: u64,
        /// What is wrong.
        problem: String,
    },
    /// Reading the underlying file or stream failed.
    #[error("read failed at byte {offset}: {message}")]
    Read {
        /// Where the read started.
        offset: u64,
        /// The I/O error.
        message: String,
    },
    /// The page size in the file is not this build's.
    #[error("page size {found} not supported (this build uses {expected})")]
    PageSize {
        /// Page size in the file.
        found: u32,
        /// Page size of this build.
        expected: u32,
    },
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A snapshot file operation failed. Always names the file.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The operating system refused.
    #[error("{}: cannot {op}: {source}", .path.display())]
    Io {
        /// File.
        path: PathBuf,
        /// What was attempted.
        op: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The file's content is invalid.
    #[error("{}: {source}", .path.display())]
    Format {
        /// File.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: FormatError,
    },
    /// The caller passed invalid data to a writer.
    #[error("{}: {problem}", .path.display())]
    Invalid {
        /// File.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

pub(crate) fn io_err<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// `PATH.tmp` beside `PATH`.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Makes `tmp` durable and renames it over `path`, then syncs the directory.
pub(crate) fn commit_file(file: File, tmp: &Path, path: &Path) -> Result<(), SnapshotError> {
    file.sync_all().map_err(io_err(tmp, "fsync"))?;
    drop(file);
    std::fs::rename(tmp, path).map_err(io_err(path, "rename the temporary file over"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync directory"))?;
    Ok(())
}
