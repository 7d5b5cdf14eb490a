//! The diff memory file: the pages that changed since a base snapshot.
//!
//! ```text
//! off  size  field
//!   0     8  magic "FTVMDIFF"
//!   8     4  format version u32 (1)
//!  12     4  page size u32 (4096)
//!  16     8  page count u64
//!  24        page count × record: gpa u64, page [4096]
//!   .     4  CRC32C over everything before
//! ```
//!
//! Records are in strictly increasing gpa order, page-aligned. The file is
//! written and read as a stream; the checksum is verified when the reader
//! reaches it, so a caller that applies pages while reading must discard the
//! target if the read fails.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{commit_file, io_err, tmp_path, FormatError, SnapshotError};
use crate::codec::{le_u32, le_u64};
use crate::message::PAGE_SIZE;

/// Diff file magic.
pub const DIFF_MAGIC: [u8; 8] = *b"FTVMDIFF";
/// Diff file format version.
pub const DIFF_VERSION: u32 = 1;
/// Fixed header length.
pub const HEADER_LEN: usize = 24;
/// One record: gpa + page.
pub const RECORD_LEN: usize = 8 + PAGE_SIZE;

const WHAT: &str = "memory diff";

/// Writes a diff file page by page.
#[derive(Debug)]
pub struct DiffWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    count: u64,
    crc: u32,
    next_min: u64,
}

impl DiffWriter {
    /// Creates `PATH.tmp`; [`DiffWriter::finish`] renames it to `path`.
    pub fn create(path: &Path) -> Result<Self, SnapshotError> {
        let tmp = tmp_path(path);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(&tmp, "create"))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // Count is patched in finish(); the CRC covers the final header.
        out.write_all(&header(0)).map_err(io_err(&tmp, "write"))?;
        Ok(DiffWriter {
            out,
            tmp,
            path: path.to_path_buf(),
            count: 0,
            crc: 0,
            next_min: 0,
        })
    }

    /// Appends one page; gpas must be page-aligned and strictly increasing.
    pub fn write_page(&mut self, gpa: u64, page: &[u8]) -> Result<(), SnapshotError> {
        if !gpa.is_multiple_of(PAGE_SIZE as u64) || page.len() != PAGE_SIZE || gpa < self.next_min {
            return Err(SnapshotError::Invalid {
                path: self.path.clone(),
                problem: format!(
                    "page {} at gpa {gpa:#x} ({} bytes): pages must be 4096 bytes, aligned, in increasing gpa order (next must be >= {:#x})",
                    self.count,
                    page.len(),
                    self.next_min
                ),
            });
        }
        let g = gpa.to_le_bytes();
        self.out.write_all(&g).map_err(io_err(&self.tmp, "write"))?;
        self.out
            .write_all(page)
            .map_err(io_err(&self.tmp, "write"))?;
        self.crc = crc32c::crc32c_append(self.crc, &g);
        self.crc = crc32c::crc32c_append(self.crc, page);
        self.count += 1;
        self.next_min = gpa.saturating_add(PAGE_SIZE as u64);
        Ok(())
    }

    /// Writes a run of pages starting at `gpa`.
    pub fn write_run(&mut self, gpa: u64, data: &[u8]) -> Result<(), SnapshotError> {
        for (i, page) in data.chunks(PAGE_SIZE).enumerate() {
            self.write_page(gpa.saturating_add((i * PAGE_SIZE) as u64), page)?;
        }
        Ok(())
    }

    /// Patches the page count, appends the checksum, syncs and renames.
    /// Returns the number of pages.
    pub fn finish(self) -> Result<u64, SnapshotError> {
        let DiffWriter {
            mut out,
            tmp,
            path,
            count,
            crc,
            ..
        } = self;
        let head = header(count);
        let records_len = count * RECORD_LEN as u64;
        let total =
            crate::crc_combine::crc32c_combine(crc32c::crc32c(&head), crc, records_len as usize);
        out.write_all(&total.to_le_bytes())
            .map_err(io_err(&tmp, "write"))?;
        let file = out.into_inner().map_err(|e| SnapshotError::Io {
            path: tmp.clone(),
            op: "write",
            source: e.into_error(),
        })?;
        file.write_all_at(&head, 0).map_err(io_err(&tmp, "write"))?;
        commit_file(file, &tmp, &path)?;
        Ok(count)
    }
}

fn header(count: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&DIFF_MAGIC);
    h[8..12].copy_from_slice(&DIFF_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    h[16..24].copy_from_slice(&count.to_le_bytes());
    h
}

/// Streams the pages of a diff file with one reusable page buffer.
#[derive(Debug)]
pub struct DiffReader<R> {
    inner: R,
    count: u64,
    index: u64,
    offset: u64,
    crc: u32,
    next_min: u64,
    page: Vec<u8>,
    len_hint: Option<u64>,
}

impl<R: Read> DiffReader<R> {
    /// Reads and checks the header. `len` (the file length, if known) lets
    /// the reader refuse a truncated file before reading any page.
    pub fn new(mut inner: R, len: Option<u64>) -> Result<Self, FormatError> {
        let mut h = [0u8; HEADER_LEN];
        let got = read_full(&mut inner, &mut h).map_err(|e| read_error(0, e))?;
        if got >= 8 && h[..8] != DIFF_MAGIC {
            return Err(FormatError::BadMagic {
                what: WHAT,
                found: h[..8].to_vec(),
                expected: DIFF_MAGIC.to_vec(),
            });
        }
        if got >= 12 && le_u32(&h, 8) != DIFF_VERSION {
            return Err(FormatError::Version {
                what: WHAT,
                found: le_u32(&h, 8),
                supported: DIFF_VERSION,
            });
        }
        if got < HEADER_LEN {
            return Err(FormatError::TooShort {
                what: WHAT,
                len: got as u64,
                need: HEADER_LEN as u64,
            });
        }
        let page_size = le_u32(&h, 12);
        if page_size as usize != PAGE_SIZE {
            return Err(FormatError::PageSize {
                found: page_size,
                expected: PAGE_SIZE as u32,
            });
        }
        let count = le_u64(&h, 16);
        if let Some(len) = len {
            let need = count
                .checked_mul(RECORD_LEN as u64)
                .and_then(|r| r.checked_add(4));
            match need {
                Some(need) if HEADER_LEN as u64 + need <= len => {
                    let end = HEADER_LEN as u64 + need;
                    if end < len {
                        return Err(FormatError::Trailing {
                            extra: len - end,
                            offset: end,
                        });
                    }
                }
                _ => {
                    return Err(FormatError::Truncated {
                        what: "page records and checksum",
                        offset: HEADER_LEN as u64,
                        need: need.unwrap_or(u64::MAX),
                        len,
                    })
                }
            }
        }
        Ok(DiffReader {
            inner,
            count,
            index: 0,
            offset: HEADER_LEN as u64,
            crc: crc32c::crc32c(&h),
            next_min: 0,
            page: vec![0u8; PAGE_SIZE],
            len_hint: len,
        })
    }

    /// Pages announced by the header.
    pub fn page_count(&self) -> u64 {
        self.count
    }

    fn truncated(&self, what: &'static str, need: u64, got: usize) -> FormatError {
        FormatError::Truncated {
            what,
            offset: self.offset,
            need,
            len: self.len_hint.unwrap_or(self.offset + got as u64),
        }
    }

    /// The next `(gpa, page)`, or `None` after the last page once the
    /// checksum verified.
    pub fn next_page(&mut self) -> Result<Option<(u64, &[u8])>, FormatError> {
        if self.index == self.count {
            self.finish()?;
            return Ok(None);
        }
        let mut g = [0u8; 8];
        let got = read_full(&mut self.inner, &mut g).map_err(|e| read_error(self.offset, e))?;
        if got < 8 {
            return Err(self.truncated("page record", RECORD_LEN as u64, got));
        }
        let gpa = u64::from_le_bytes(g);
        let got = read_full(&mut self.inner, &mut self.page)
            .map_err(|e| read_error(self.offset + 8, e))?;
        if got < PAGE_SIZE {
            return Err(self.truncated("page record", RECORD_LEN as u64, got + 8));
        }
        let problem = if gpa % PAGE_SIZE as u64 != 0 {
            Some(format!("gpa {gpa:#x} is not page-aligned"))
        } else if gpa < self.next_min {
            Some(format!(
                "gpa {gpa:#x} is not above the previous page (records must be in increasing order)"
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(FormatError::BadPage {
                index: self.index,
                offset: self.offset,
                problem,
            });
        }
        self.crc = crc32c::crc32c_append(self.crc, &g);
        self.crc = crc32c::crc32c_append(self.crc, &self.page);
        self.next_min = gpa.saturating_add(PAGE_SIZE as u64);
        self.index += 1;
        self.offset += RECORD_LEN as u64;
        if gpa.checked_add(PAGE_SIZE as u64).is_none() {
            return Err(FormatError::BadPage {
                index: self.index - 1,
                offset: self.offset - RECORD_LEN as u64,
                problem: format!("gpa {gpa:#x} + 4096 overflows 64 bits"),
            });
        }
        Ok(Some((gpa, &self.page)))
    }

    fn finish(&mut self) -> Result<(), FormatError> {
        let mut c = [0u8; 4];
        let got = read_full(&mut self.inner, &mut c).map_err(|e| read_error(self.offset, e))?;
        if got < 4 {
            return Err(self.truncated("checksum", 4, got));
        }
        let stored = u32::from_le_bytes(c);
        if stored != self.crc {
            return Err(FormatError::Crc {
                stored,
                computed: self.crc,
                len: self.offset,
            });
        }
        let mut extra = [0u8; 1];
        if read_full(&mut self.inner, &mut extra).map_err(|e| read_error(self.offset + 4, e))? != 0
        {
            return Err(FormatError::Trailing {
                extra: 1,
                offset: self.offset + 4,
            });
        }
        // Make a repeated call idempotent: nothing more to read.
        self.count = self.index;
        Ok(())
    }
}

fn read_error(offset: u64, e: std::io::Error) -> FormatError {
    FormatError::Read {
        offset,
        message: e.to_string(),
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads a diff file, calling `apply(gpa, page)` for each page in order.
/// The checksum is verified after the last page: on error, discard whatever
/// `apply` did. Returns the number of pages.
pub fn read_memory_diff(
    path: &Path,
    mut apply: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> Result<u64, SnapshotError> {
    let file = File::open(path).map_err(io_err(path, "open"))?;
    let len = file.metadata().map_err(io_err(path, "stat"))?.len();
    let format = |source| SnapshotError::Format {
        path: path.to_path_buf(),
        source,
    };
    let mut r =
        DiffReader::new(BufReader::with_capacity(1 << 20, file), Some(len)).map_err(format)?;
    let mut n = 0;
    while let Some((gpa, page)) = r.next_page().map_err(format)? {
        apply(gpa, page).map_err(io_err(path, "apply a page from"))?;
        n += 1;
    }
    Ok(n)
}
