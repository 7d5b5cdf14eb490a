//! The full memory file: a raw image of guest memory where the byte at file
//! offset X is the byte at guest-physical address X. Zero pages and holes
//! (the MMIO gap) are not written, so the file is sparse; its length is the
//! end of the highest region. It can be `mmap`ed directly on restore.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{commit_file, io_err, tmp_path, SnapshotError};
use crate::message::PAGE_SIZE;

/// What a [`MemoryFileWriter`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryFileStats {
    /// Bytes of non-zero pages written.
    pub bytes_written: u64,
    /// Zero pages skipped (left as holes).
    pub zero_pages: u64,
    /// Final file length.
    pub file_len: u64,
}

/// Writes a full memory file region by region, skipping zero pages.
#[derive(Debug)]
pub struct MemoryFileWriter {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
    stats: MemoryFileStats,
}

/// Whether a page is all zero (vectorizes well).
pub fn is_zero(page: &[u8]) -> bool {
    page.chunks(64)
        .all(|c| c.iter().fold(0u8, |acc, b| acc | b) == 0)
}

impl MemoryFileWriter {
    /// Creates `PATH.tmp`; [`MemoryFileWriter::finish`] renames it to `path`.
    pub fn create(path: &Path) -> Result<Self, SnapshotError> {
        let tmp = tmp_path(path);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(&tmp, "create"))?;
        Ok(MemoryFileWriter {
            file,
            tmp,
            path: path.to_path_buf(),
            stats: MemoryFileStats::default(),
        })
    }

    /// Writes guest memory `data` that lives at `gpa` (page-aligned, whole pages).
    pub fn write_region(&mut self, gpa: u64, data: &[u8]) -> Result<(), SnapshotError> {
        if !gpa.is_multiple_of(PAGE_SIZE as u64)
            || !data.len().is_multiple_of(PAGE_SIZE)
            || gpa.checked_add(data.len() as u64).is_none()
        {
            return Err(SnapshotError::Invalid {
                path: self.path.clone(),
                problem: format!(
                    "memory region at gpa {gpa:#x} of {} bytes is not whole, aligned pages",
                    data.len()
                ),
            });
        }
        // Write maximal runs of non-zero pages with one pwrite each.
        let pages = data.len() / PAGE_SIZE;
        let mut i = 0;
        while i < pages {
            let page = |n: usize| &data[n * PAGE_SIZE..(n + 1) * PAGE_SIZE];
            if is_zero(page(i)) {
                self.stats.zero_pages += 1;
                i += 1;
                continue;
            }
            let start = i;
            while i < pages && !is_zero(page(i)) {
                i += 1;
            }
            let run = &data[start * PAGE_SIZE..i * PAGE_SIZE];
            self.file
                .write_all_at(run, gpa + (start * PAGE_SIZE) as u64)
                .map_err(io_err(&self.tmp, "write"))?;
            self.stats.bytes_written += run.len() as u64;
        }
        self.stats.file_len = self.stats.file_len.max(gpa + data.len() as u64);
        Ok(())
    }

    /// Sets the final length (trailing zero pages become a hole), syncs and
    /// renames the file into place.
    pub fn finish(self) -> Result<MemoryFileStats, SnapshotError> {
        self.file
            .set_len(self.stats.file_len)
            .map_err(io_err(&self.tmp, "set length of"))?;
        commit_file(self.file, &self.tmp, &self.path)?;
        Ok(self.stats)
    }
}

/// Reads guest memory at `gpa` from a full memory file into `dst`.
pub fn read_memory_region(path: &Path, gpa: u64, dst: &mut [u8]) -> Result<(), SnapshotError> {
    let file = File::open(path).map_err(io_err(path, "open"))?;
    let len = file.metadata().map_err(io_err(path, "stat"))?.len();
    let end = gpa.saturating_add(dst.len() as u64);
    if end > len {
        return Err(SnapshotError::Format {
            path: path.to_path_buf(),
            source: super::FormatError::Truncated {
                what: "memory region",
                offset: gpa,
                need: dst.len() as u64,
                len,
            },
        });
    }
    file.read_exact_at(dst, gpa).map_err(io_err(path, "read"))
}
