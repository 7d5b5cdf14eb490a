//! Raw disk image files: positional reads and writes, `fdatasync` for flush.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{DiskError, SECTOR};

/// A raw image file (no format: byte `i` of the file is byte `i` of the disk).
#[derive(Debug)]
pub struct RawImage {
    file: File,
    path: PathBuf,
    size: u64,
    readonly: bool,
}

impl RawImage {
    /// Opens `path` (read-write unless `readonly`). The file must exist, be a regular
    /// file or block device, and its size a positive multiple of 512 bytes.
    pub fn open(path: &Path, readonly: bool) -> Result<Self, DiskError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(path)
            .map_err(|source| DiskError::Open {
                path: path.to_path_buf(),
                readonly,
                source,
            })?;
        let size = image_size(&file).map_err(|source| DiskError::Open {
            path: path.to_path_buf(),
            readonly,
            source,
        })?;
        if size == 0 || size % SECTOR != 0 {
            return Err(DiskError::BadSize {
                path: path.to_path_buf(),
                size,
            });
        }
        Ok(RawImage {
            file,
            path: path.to_path_buf(),
            size,
            readonly,
        })
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes (a multiple of 512).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether writes are refused.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    fn check(&self, offset: u64, len: usize) -> Result<(), DiskError> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(DiskError::OutOfRange {
                path: self.path.clone(),
                offset,
                len: len as u64,
                size: self.size,
            });
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.check(offset, buf.len())?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| DiskError::Io {
                path: self.path.clone(),
                op: "read",
                offset,
                len: buf.len() as u64,
                source,
            })
    }

    /// Writes `data` at `offset` (reaches the page cache; [`RawImage::flush`] makes it durable).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        if self.readonly {
            return Err(DiskError::ReadOnly {
                path: self.path.clone(),
            });
        }
        self.check(offset, data.len())?;
        self.file
            .write_all_at(data, offset)
            .map_err(|source| DiskError::Io {
                path: self.path.clone(),
                op: "write",
                offset,
                len: data.len() as u64,
                source,
            })
    }

    /// `fdatasync`: every completed write is on stable storage when this returns.
    pub fn flush(&self) -> Result<(), DiskError> {
        if self.readonly {
            return Ok(());
        }
        self.file.sync_data().map_err(|source| DiskError::Io {
            path: self.path.clone(),
            op: "fdatasync",
            offset: 0,
            len: 0,
            source,
        })
    }
}

/// Size of a regular file, or of a block device (whose metadata length is 0).
fn image_size(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is a directory, not a disk image",
        ));
    }
    if meta.len() > 0 {
        return Ok(meta.len());
    }
    let mut f = file;
    f.seek(SeekFrom::End(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        f
    }

    #[test]
    fn read_write_round_trip_and_range_checks() {
        let f = image(8192);
        let img = RawImage::open(f.path(), false).unwrap();
        assert_eq!(img.size(), 8192);
        img.write_at(512, &[7u8; 1024]).unwrap();
        let mut buf = [0u8; 2048];
        img.read_at(0, &mut buf).unwrap();
        assert!(buf[..512].iter().all(|b| *b == 0));
        assert!(buf[512..1536].iter().all(|b| *b == 7));
        assert!(matches!(
            img.write_at(8192 - 512, &[0u8; 1024]),
            Err(DiskError::OutOfRange { .. })
        ));
        assert!(matches!(
            img.read_at(u64::MAX - 10, &mut buf),
            Err(DiskError::OutOfRange { .. })
        ));
        img.flush().unwrap();
    }

    #[test]
    fn readonly_refuses_writes_and_bad_files_are_refused() {
        let f = image(4096);
        let img = RawImage::open(f.path(), true).unwrap();
        let e = img.write_at(0, &[1u8; 512]).unwrap_err();
        assert!(e.to_string().contains("read-only"), "{e}");
        let mut b = [1u8; 512];
        img.read_at(0, &mut b).unwrap();
        assert_eq!(b, [0u8; 512]);

        let e = RawImage::open(Path::new("/nonexistent/disk.img"), false).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/disk.img"), "{e}");
        let odd = image(1000);
        let e = RawImage::open(odd.path(), false).unwrap_err();
        assert!(e.to_string().contains("multiple of 512"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        assert!(RawImage::open(dir.path(), true).is_err());
    }
}
