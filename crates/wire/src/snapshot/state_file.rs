//! The snapshot state file: a checksummed container around an opaque body.
//!
//! ```text
//! off  size  field
//!   0     8  magic "FTVMSNAP"
//!   8     4  format version u32 (1)
//!  12     4  flags u32 (bit 0: the memory file is a diff)
//!  16     8  body length u64
//!  24     n  body (the VMM's serialized state)
//! 24+n    4  CRC32C over bytes 0..24+n
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::{commit_file, io_err, tmp_path, FormatError, SnapshotError};
use crate::codec::{le_u32, le_u64};

/// State file magic.
pub const STATE_MAGIC: [u8; 8] = *b"FTVMSNAP";
/// State file format version written and read by this build.
pub const STATE_VERSION: u32 = 1;
/// Flag: the memory file that goes with this state is a diff.
pub const FLAG_DIFF_MEMORY: u32 = 1;
/// Flags defined in this version.
pub const KNOWN_FLAGS: u32 = FLAG_DIFF_MEMORY;
/// Fixed header length.
pub const HEADER_LEN: usize = 24;
/// Largest body accepted (a state body is kilobytes; this bounds allocation).
pub const MAX_BODY: u64 = 1 << 30;

const WHAT: &str = "snapshot state";

/// A decoded state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateFile<'a> {
    /// Format version (always [`STATE_VERSION`] when decoding succeeded).
    pub version: u32,
    /// Flags ([`FLAG_DIFF_MEMORY`]).
    pub flags: u32,
    /// The body.
    pub body: &'a [u8],
}

/// Encodes a state file.
pub fn encode_state(body: &[u8], flags: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + body.len() + 4);
    v.extend_from_slice(&STATE_MAGIC);
    v.extend_from_slice(&STATE_VERSION.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&(body.len() as u64).to_le_bytes());
    v.extend_from_slice(body);
    let crc = crc32c::crc32c(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

/// Decodes and verifies a state file: magic, version, length, checksum,
/// flags, in that order.
pub fn decode_state(bytes: &[u8]) -> Result<StateFile<'_>, FormatError> {
    let len = bytes.len() as u64;
    if bytes.len() < 12 {
        // Enough for magic + version, or it is not worth naming more.
        if bytes.len() >= 8 && bytes[..8] != STATE_MAGIC {
            return Err(bad_magic(&bytes[..8]));
        }
        return Err(FormatError::TooShort {
            what: WHAT,
            len,
            need: HEADER_LEN as u64,
        });
    }
    if bytes[..8] != STATE_MAGIC {
        return Err(bad_magic(&bytes[..8]));
    }
    let version = le_u32(bytes, 8);
    if version != STATE_VERSION {
        return Err(FormatError::Version {
            what: WHAT,
            found: version,
            supported: STATE_VERSION,
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::TooShort {
            what: WHAT,
            len,
            need: HEADER_LEN as u64,
        });
    }
    let flags = le_u32(bytes, 12);
    let body_len = le_u64(bytes, 16);
    if body_len > MAX_BODY {
        return Err(FormatError::BodyTooLarge {
            len: body_len,
            limit: MAX_BODY,
        });
    }
    let body_end = HEADER_LEN as u64 + body_len;
    if len < body_end + 4 {
        let (what, offset, need) = if len < body_end {
            ("body", HEADER_LEN as u64, body_len)
        } else {
            ("checksum", body_end, 4)
        };
        return Err(FormatError::Truncated {
            what,
            offset,
            need,
            len,
        });
    }
    let body_end = body_end as usize;
    let stored = le_u32(bytes, body_end);
    let computed = crc32c::crc32c(&bytes[..body_end]);
    if stored != computed {
        return Err(FormatError::Crc {
            stored,
            computed,
            len: body_end as u64,
        });
    }
    if bytes.len() > body_end + 4 {
        return Err(FormatError::Trailing {
            extra: (bytes.len() - body_end - 4) as u64,
            offset: (body_end + 4) as u64,
        });
    }
    if flags & !KNOWN_FLAGS != 0 {
        return Err(FormatError::UnknownFlags {
            flags,
            known: KNOWN_FLAGS,
        });
    }
    Ok(StateFile {
        version,
        flags,
        body: &bytes[HEADER_LEN..body_end],
    })
}

fn bad_magic(found: &[u8]) -> FormatError {
    FormatError::BadMagic {
        what: WHAT,
        found: found.to_vec(),
        expected: STATE_MAGIC.to_vec(),
    }
}

/// Writes a state file durably (temporary file, fsync, rename, fsync dir).
pub fn write_state_file(path: &Path, body: &[u8], flags: u32) -> Result<(), SnapshotError> {
    if flags & !KNOWN_FLAGS != 0 || body.len() as u64 > MAX_BODY {
        return Err(SnapshotError::Invalid {
            path: path.to_path_buf(),
            problem: format!(
                "refusing to write state with flags {flags:#x} and a body of {} bytes (limit {MAX_BODY})",
                body.len()
            ),
        });
    }
    let tmp = tmp_path(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err(&tmp, "create"))?;
    file.write_all(&encode_state(body, flags))
        .map_err(io_err(&tmp, "write"))?;
    commit_file(file, &tmp, path)
}

/// Reads and verifies a state file; returns `(flags, body)`.
pub fn read_state_file(path: &Path) -> Result<(u32, Vec<u8>), SnapshotError> {
    let file = File::open(path).map_err(io_err(path, "open"))?;
    let len = file.metadata().map_err(io_err(path, "stat"))?.len();
    // Bound the read before allocating: a body is at most MAX_BODY.
    if len > MAX_BODY + HEADER_LEN as u64 + 4 {
        return Err(SnapshotError::Format {
            path: path.to_path_buf(),
            source: FormatError::BodyTooLarge {
                len,
                limit: MAX_BODY,
            },
        });
    }
    let bytes = std::fs::read(path).map_err(io_err(path, "read"))?;
    let st = decode_state(&bytes).map_err(|source| SnapshotError::Format {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((st.flags, st.body.to_vec()))
}
