//! Typed messages carried in frames, with strict validating decoders.
//!
//! Every message is one frame; the frame kind is the message kind. Payload
//! layouts are documented in `docs/protocol.md` and on each [`Kind`]. Decoding
//! borrows from the frame payload (no copies of page data); every decoder
//! checks every count against the bytes actually present before looping,
//! every guest-physical address for page alignment, every string for UTF-8
//! and length, and rejects trailing bytes, so each message has exactly one
//! valid encoding.

use std::borrow::Cow;
use std::fmt;

use crate::auth::{Nonce, NONCE_LEN, PROOF_LEN};
use crate::codec::{human_bytes, le_u32, le_u64, CrcSink, Cursor, Sink};
use crate::frame::PROTOCOL_VERSION;

/// Guest page size. Every gpa on the wire is aligned to it.
pub const PAGE_SIZE: usize = 4096;
/// Disk writes are sector-granular: offsets and lengths are multiples of this.
pub const SECTOR_SIZE: usize = 512;
/// Longest `Error` message text, in bytes.
pub const MAX_ERROR_MESSAGE: usize = 4096;
/// Bytes of one page or zero-page run descriptor: gpa u64 + page count u32.
pub const RUN_DESCRIPTOR_LEN: usize = 12;
/// Most disks of a VM; disk indexes on the wire are below this.
pub const MAX_DISKS: usize = 4;
/// Bytes of one block hash in `DiskHashes` (SHA-256).
pub const DISK_HASH_LEN: usize = 32;
/// Largest block size of a `DiskHashes` message.
pub const MAX_HASH_BLOCK: u32 = 1 << 20;

/// Message (and frame) kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Kind {
    /// `version u16, role u8, flags u8, memory_bytes u64, vcpus u32, device_fingerprint u64, nonce [32]`
    Hello = 0x0001,
    /// `version u16, role u8, flags u8, nonce [32], proof [32] if flags bit 0`
    HelloAck = 0x0002,
    /// `code u16, len u16, message [len] (UTF-8)`
    Error = 0x0003,
    /// empty
    Goodbye = 0x0004,
    /// `epoch u64, sent_unix_nanos u64`
    Heartbeat = 0x0005,
    /// `epoch u64`
    EpochBegin = 0x0010,
    /// `epoch u64, count u32, count × (gpa u64, npages u32), data [Σ npages × 4096]`
    Pages = 0x0011,
    /// `epoch u64, count u32, count × (gpa u64, npages u32)`
    ZeroPages = 0x0012,
    /// `epoch u64, disk u8, count u32, count × (offset u64, len u32, data [len])`
    DiskWrites = 0x0013,
    /// `epoch u64, stream u16, len u32, bytes [len]`
    Outputs = 0x0014,
    /// `epoch u64, len u32, blob [len]`
    State = 0x0015,
    /// `epoch u64, messages u32, pages u64, bytes u64, digest u32`
    EpochCommit = 0x0016,
    /// `epoch u64`
    Ack = 0x0017,
    /// `epoch u64`
    MigrationDone = 0x0018,
    /// `epoch u64, disk u8`: the guest flushed disk `disk` during the epoch.
    DiskFlush = 0x0020,
    /// `disk u8, disks u8, block_size u32, disk_bytes u64, first_block u64, count u32,
    /// hashes [count × 32]`: SHA-256 of blocks of the receiver's disk image (initial sync).
    DiskHashes = 0x0021,
    /// `epoch u64, phase u8, flags u8`: planned switchover of roles after epoch `epoch`
    /// ([`SwitchoverPhase`]; flags bit 0: the old primary stops instead of becoming the
    /// backup).
    Switchover = 0x0030,
}

impl Kind {
    /// All kinds, in numeric order.
    pub const ALL: [Kind; 17] = [
        Kind::Hello,
        Kind::HelloAck,
        Kind::Error,
        Kind::Goodbye,
        Kind::Heartbeat,
        Kind::EpochBegin,
        Kind::Pages,
        Kind::ZeroPages,
        Kind::DiskWrites,
        Kind::Outputs,
        Kind::State,
        Kind::EpochCommit,
        Kind::Ack,
        Kind::MigrationDone,
        Kind::DiskFlush,
        Kind::DiskHashes,
        Kind::Switchover,
    ];

    /// The kind with this wire code, if any.
    pub fn from_u16(code: u16) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u16 == code)
    }

    /// The message's name, as used in errors and docs.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "Hello",
            Kind::HelloAck => "HelloAck",
            Kind::Error => "Error",
            Kind::Goodbye => "Goodbye",
            Kind::Heartbeat => "Heartbeat",
            Kind::EpochBegin => "EpochBegin",
            Kind::Pages => "Pages",
            Kind::ZeroPages => "ZeroPages",
            Kind::DiskWrites => "DiskWrites",
            Kind::Outputs => "Outputs",
            Kind::State => "State",
            Kind::EpochCommit => "EpochCommit",
            Kind::Ack => "Ack",
            Kind::MigrationDone => "MigrationDone",
            Kind::DiskFlush => "DiskFlush",
            Kind::DiskHashes => "DiskHashes",
            Kind::Switchover => "Switchover",
        }
    }

    /// Whether this kind is epoch data: counted by `EpochCommit`.
    pub fn is_epoch_data(self) -> bool {
        matches!(
            self,
            Kind::Pages
                | Kind::ZeroPages
                | Kind::DiskWrites
                | Kind::DiskFlush
                | Kind::Outputs
                | Kind::State
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())
    }
}

/// Why a payload is not a valid message. Offsets are from the payload start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No message has this kind.
    #[error("unknown frame kind {0:#06x}")]
    UnknownKind(u16),
    /// The payload ends inside a field.
    #[error("truncated {what}: needs {need} bytes at payload offset {offset}, only {have} remain")]
    Truncated {
        /// Field.
        what: &'static str,
        /// Offset of the field.
        offset: usize,
        /// Bytes needed.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// Bytes after the end of the message body.
    #[error("{extra} trailing bytes after the {kind} body (payload offset {offset})")]
    TrailingBytes {
        /// Message kind.
        kind: &'static str,
        /// Number of extra bytes.
        extra: usize,
        /// Where the body ended.
        offset: usize,
    },
    /// A guest-physical address or disk offset is not aligned.
    #[error("{what} {value:#x} is not {align}-byte aligned (payload offset {offset})")]
    Misaligned {
        /// Field.
        what: &'static str,
        /// Value found.
        value: u64,
        /// Required alignment.
        align: usize,
        /// Offset of the field.
        offset: usize,
    },
    /// A length that must be a positive multiple of a unit is not.
    #[error("{what} {len} is not a positive multiple of {unit} (payload offset {offset})")]
    BadLength {
        /// Field.
        what: &'static str,
        /// Value found.
        len: u64,
        /// Unit.
        unit: usize,
        /// Offset of the field.
        offset: usize,
    },
    /// A range runs past the end of the 64-bit address space.
    #[error("{what} at {start:#x} + {len:#x} bytes overflows 64 bits (payload offset {offset})")]
    Overflow {
        /// Field.
        what: &'static str,
        /// Start.
        start: u64,
        /// Length in bytes.
        len: u64,
        /// Offset of the field.
        offset: usize,
    },
    /// A list that must not be empty is.
    #[error("{kind} carries no entries")]
    Empty {
        /// Message kind.
        kind: &'static str,
    },
    /// A count cannot fit in the payload.
    #[error("{what} count {count} needs at least {need} more bytes, payload has {have} left")]
    CountTooLarge {
        /// Field.
        what: &'static str,
        /// Count found.
        count: u64,
        /// Bytes the count implies.
        need: u64,
        /// Bytes left.
        have: usize,
    },
    /// The page data does not match the run table.
    #[error("page runs describe {} of data but the payload carries {}", human_bytes(*.expected), human_bytes(*.found))]
    PageDataLength {
        /// Bytes the runs describe.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// A string is longer than allowed.
    #[error("{what} is {len} bytes, longer than the limit of {limit}")]
    TooLong {
        /// Field.
        what: &'static str,
        /// Length.
        len: usize,
        /// Limit.
        limit: usize,
    },
    /// A string is not UTF-8.
    #[error("{what} is not valid UTF-8 (at byte {valid_up_to} of the string)")]
    Utf8 {
        /// Field.
        what: &'static str,
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// An enumerated or flag field has a value this version does not define.
    #[error("{what} has undefined value {value:#x} (payload offset {offset})")]
    BadValue {
        /// Field.
        what: &'static str,
        /// Value found.
        value: u64,
        /// Offset of the field.
        offset: usize,
    },
}

/// What a peer is, announced in `Hello` / `HelloAck`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    /// Runs the protected VM and replicates it (initiator).
    Primary = 1,
    /// Receives replication and takes over on failover (responder).
    Backup = 2,
    /// Sends a VM in live migration (initiator).
    MigrationSource = 3,
    /// Receives a VM in live migration (responder).
    MigrationTarget = 4,
}

impl Role {
    fn from_u8(v: u8) -> Option<Role> {
        [
            Role::Primary,
            Role::Backup,
            Role::MigrationSource,
            Role::MigrationTarget,
        ]
        .into_iter()
        .find(|r| *r as u8 == v)
    }

    /// The role a peer must have to talk to this one.
    pub fn counterpart(self) -> Role {
        match self {
            Role::Primary => Role::Backup,
            Role::Backup => Role::Primary,
            Role::MigrationSource => Role::MigrationTarget,
            Role::MigrationTarget => Role::MigrationSource,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
            Role::MigrationSource => "migration source",
            Role::MigrationTarget => "migration target",
        })
    }
}

pub use crate::shape::{DiskShape, VmShape};

/// Opens a connection (sent by the initiator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version of the sender (equals the frame header's).
    pub version: u16,
    /// Sender's role: [`Role::Primary`] or [`Role::MigrationSource`].
    pub role: Role,
    /// Sender's VM shape.
    pub shape: VmShape,
    /// Fresh random nonce.
    pub nonce: Nonce,
    /// The sender holds a pre-shared key and requires authentication.
    pub auth: bool,
}

/// Accepts a connection (sent by the responder). Refusal is an `Error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloAck {
    /// Protocol version of the responder.
    pub version: u16,
    /// Responder's role.
    pub role: Role,
    /// Fresh random nonce.
    pub nonce: Nonce,
    /// Responder's proof of the key, present iff the session is authenticated.
    pub proof: Option<[u8; PROOF_LEN]>,
}

/// Error codes in `Error` messages. Unknown codes are kept as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: protocol version not supported.
    Version,
    /// 2: VM shapes differ.
    ShapeMismatch,
    /// 3: the peer's role cannot talk to this side.
    RoleRefused,
    /// 4: this side requires authentication, the peer offered none.
    AuthRequired,
    /// 5: authentication failed (wrong key, bad proof or tag).
    AuthFailed,
    /// 6: a frame or message could not be decoded.
    Malformed,
    /// 7: a valid message arrived where the protocol does not allow it.
    Protocol,
    /// 8: an epoch did not verify at commit (counts or digest).
    EpochRejected,
    /// 9: this side already serves another peer.
    Busy,
    /// 10: this side failed for its own reasons (disk full, ...).
    Internal,
    /// Any other code.
    Other(u16),
}

impl ErrorCode {
    /// The wire value.
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::Version => 1,
            ErrorCode::ShapeMismatch => 2,
            ErrorCode::RoleRefused => 3,
            ErrorCode::AuthRequired => 4,
            ErrorCode::AuthFailed => 5,
            ErrorCode::Malformed => 6,
            ErrorCode::Protocol => 7,
            ErrorCode::EpochRejected => 8,
            ErrorCode::Busy => 9,
            ErrorCode::Internal => 10,
            ErrorCode::Other(c) => c,
        }
    }

    /// The code for a wire value (never `Other` for a known value).
    pub fn from_u16(v: u16) -> ErrorCode {
        match v {
            1 => ErrorCode::Version,
            2 => ErrorCode::ShapeMismatch,
            3 => ErrorCode::RoleRefused,
            4 => ErrorCode::AuthRequired,
            5 => ErrorCode::AuthFailed,
            6 => ErrorCode::Malformed,
            7 => ErrorCode::Protocol,
            8 => ErrorCode::EpochRejected,
            9 => ErrorCode::Busy,
            10 => ErrorCode::Internal,
            c => ErrorCode::Other(c),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorCode::Version => "version",
            ErrorCode::ShapeMismatch => "shape mismatch",
            ErrorCode::RoleRefused => "role refused",
            ErrorCode::AuthRequired => "authentication required",
            ErrorCode::AuthFailed => "authentication failed",
            ErrorCode::Malformed => "malformed",
            ErrorCode::Protocol => "protocol violation",
            ErrorCode::EpochRejected => "epoch rejected",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
            ErrorCode::Other(_) => "unknown",
        };
        write!(f, "{name} ({})", self.as_u16())
    }
}

/// Checks a run table (gpa u64, npages u32 each) and returns the page total.
pub(crate) fn check_runs(table: &[u8], base: usize) -> Result<u64, DecodeError> {
    let mut pages = 0u64;
    for (i, d) in table.chunks_exact(RUN_DESCRIPTOR_LEN).enumerate() {
        let offset = base + i * RUN_DESCRIPTOR_LEN;
        let gpa = le_u64(d, 0);
        let npages = le_u32(d, 8);
        if !gpa.is_multiple_of(PAGE_SIZE as u64) {
            return Err(DecodeError::Misaligned {
                what: "run gpa",
                value: gpa,
                align: PAGE_SIZE,
                offset,
            });
        }
        if npages == 0 {
            return Err(DecodeError::BadLength {
                what: "run page count",
                len: 0,
                unit: 1,
                offset: offset + 8,
            });
        }
        let len = u64::from(npages) * PAGE_SIZE as u64;
        if gpa.checked_add(len).is_none() {
            return Err(DecodeError::Overflow {
                what: "page run",
                start: gpa,
                len,
                offset,
            });
        }
        pages += u64::from(npages);
    }
    Ok(pages)
}

/// Reads `count u32` followed by `count` run descriptors.
fn read_run_table<'a>(
    c: &mut Cursor<'a>,
    what: &'static str,
) -> Result<(&'a [u8], u64), DecodeError> {
    let count = c.u32("run count")?;
    let need = u64::from(count) * RUN_DESCRIPTOR_LEN as u64;
    if need > c.remaining() as u64 {
        return Err(DecodeError::CountTooLarge {
            what,
            count: u64::from(count),
            need,
            have: c.remaining(),
        });
    }
    let base = c.pos();
    let table = c.bytes(need as usize, "run table")?;
    let pages = check_runs(table, base)?;
    Ok((table, pages))
}

fn encode_runs(runs: &[(u64, u32)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(runs.len() * RUN_DESCRIPTOR_LEN);
    for (gpa, n) in runs {
        v.put_u64(*gpa);
        v.put_u32(*n);
    }
    v
}

pub(crate) fn runs_iter(table: &[u8]) -> impl Iterator<Item = (u64, u32)> + '_ {
    table
        .chunks_exact(RUN_DESCRIPTOR_LEN)
        .map(|d| (le_u64(d, 0), le_u32(d, 8)))
}

/// Guest pages with their contents, as runs of contiguous pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pages<'a> {
    epoch: u64,
    table: Cow<'a, [u8]>,
    data: &'a [u8],
    pages: u64,
}

impl<'a> Pages<'a> {
    /// Builds a message from runs `(gpa, npages)` and their concatenated data.
    /// For streaming scattered pages without copying use
    /// [`crate::MessageWriter::send_pages`].
    pub fn new(epoch: u64, runs: &[(u64, u32)], data: &'a [u8]) -> Result<Self, DecodeError> {
        if runs.is_empty() {
            return Err(DecodeError::Empty { kind: "Pages" });
        }
        let table = encode_runs(runs);
        let pages = check_runs(&table, 12)?;
        let expected = pages * PAGE_SIZE as u64;
        if expected != data.len() as u64 {
            return Err(DecodeError::PageDataLength {
                expected,
                found: data.len() as u64,
            });
        }
        Ok(Pages {
            epoch,
            table: Cow::Owned(table),
            data,
            pages,
        })
    }

    /// The epoch the pages belong to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Total number of pages.
    pub fn page_count(&self) -> u64 {
        self.pages
    }

    /// The runs: `(gpa, data)` with `data.len()` a multiple of [`PAGE_SIZE`].
    pub fn runs(&self) -> impl Iterator<Item = (u64, &'a [u8])> + '_ {
        let mut data = self.data;
        runs_iter(&self.table).map(move |(gpa, n)| {
            let (run, rest) = data.split_at(n as usize * PAGE_SIZE);
            data = rest;
            (gpa, run)
        })
    }

    /// Every page: `(gpa, 4096 bytes)`.
    pub fn pages(&self) -> impl Iterator<Item = (u64, &'a [u8])> + '_ {
        self.runs().flat_map(|(gpa, run)| {
            run.chunks_exact(PAGE_SIZE)
                .enumerate()
                .map(move |(i, p)| (gpa + (i * PAGE_SIZE) as u64, p))
        })
    }

    /// The runs as `(gpa, npages)`, from the run table alone.
    pub(crate) fn run_table(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        runs_iter(&self.table)
    }

    /// A `Pages` payload whose data (`placed` bytes) was read straight into its
    /// destination: `prefix` holds the epoch and run table only, and the message returned
    /// has no data (its [`runs`](Self::runs) must not be used: only
    /// [`run_table`](Self::run_table) and the counts). The same checks as a decode.
    pub(crate) fn decode_placed(prefix: &'a [u8], placed: usize) -> Result<Self, DecodeError> {
        let mut c = Cursor::new(prefix);
        let epoch = c.u64("epoch")?;
        let (table, pages) = read_run_table(&mut c, "page run")?;
        if table.is_empty() {
            return Err(DecodeError::Empty { kind: "Pages" });
        }
        let expected = pages * PAGE_SIZE as u64;
        let found = (c.remaining() + placed) as u64;
        if expected != found || c.remaining() != 0 {
            return Err(DecodeError::PageDataLength { expected, found });
        }
        Ok(Pages {
            epoch,
            table: Cow::Borrowed(table),
            data: &[],
            pages,
        })
    }

    fn decode(c: &mut Cursor<'a>) -> Result<Self, DecodeError> {
        let epoch = c.u64("epoch")?;
        let (table, pages) = read_run_table(c, "page run")?;
        if table.is_empty() {
            return Err(DecodeError::Empty { kind: "Pages" });
        }
        let expected = pages * PAGE_SIZE as u64;
        if expected != c.remaining() as u64 {
            return Err(DecodeError::PageDataLength {
                expected,
                found: c.remaining() as u64,
            });
        }
        let data = c.bytes(c.remaining(), "page data")?;
        Ok(Pages {
            epoch,
            table: Cow::Borrowed(table),
            data,
            pages,
        })
    }

    fn encode(&self, s: &mut impl Sink) {
        s.put_u64(self.epoch);
        s.put_u32((self.table.len() / RUN_DESCRIPTOR_LEN) as u32);
        s.put(&self.table);
        s.put(self.data);
    }

    fn encoded_len(&self) -> u64 {
        12 + self.table.len() as u64 + self.data.len() as u64
    }
}

/// Runs of guest pages that are entirely zero (no data on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZeroPages<'a> {
    epoch: u64,
    table: Cow<'a, [u8]>,
    pages: u64,
}

impl<'a> ZeroPages<'a> {
    /// Builds a message from runs `(gpa, npages)`.
    pub fn new(epoch: u64, runs: &[(u64, u32)]) -> Result<Self, DecodeError> {
        if runs.is_empty() {
            return Err(DecodeError::Empty { kind: "ZeroPages" });
        }
        let table = encode_runs(runs);
        let pages = check_runs(&table, 12)?;
        Ok(ZeroPages {
            epoch,
            table: Cow::Owned(table),
            pages,
        })
    }

    /// The epoch the pages belong to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Total number of pages.
    pub fn page_count(&self) -> u64 {
        self.pages
    }

    /// The runs: `(gpa, npages)`.
    pub fn runs(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        runs_iter(&self.table)
    }

    fn decode(c: &mut Cursor<'a>) -> Result<Self, DecodeError> {
        let epoch = c.u64("epoch")?;
        let (table, pages) = read_run_table(c, "zero run")?;
        if table.is_empty() {
            return Err(DecodeError::Empty { kind: "ZeroPages" });
        }
        Ok(ZeroPages {
            epoch,
            table: Cow::Borrowed(table),
            pages,
        })
    }

    fn encode(&self, s: &mut impl Sink) {
        s.put_u64(self.epoch);
        s.put_u32((self.table.len() / RUN_DESCRIPTOR_LEN) as u32);
        s.put(&self.table);
    }

    fn encoded_len(&self) -> u64 {
        12 + self.table.len() as u64
    }
}

/// Disk writes of an epoch, applied to the backup's disk at commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskWrites<'a> {
    epoch: u64,
    disk: u8,
    count: u32,
    /// `count × (offset u64, len u32, data)`, validated.
    entries: Cow<'a, [u8]>,
}

/// Bytes of a disk write entry header: offset u64 + len u32.
const DISK_ENTRY_HEADER: usize = 12;

fn check_disk_write(offset: u64, len: u64, at: usize) -> Result<(), DecodeError> {
    if !offset.is_multiple_of(SECTOR_SIZE as u64) {
        return Err(DecodeError::Misaligned {
            what: "disk write offset",
            value: offset,
            align: SECTOR_SIZE,
            offset: at,
        });
    }
    if len == 0 || !len.is_multiple_of(SECTOR_SIZE as u64) {
        return Err(DecodeError::BadLength {
            what: "disk write length",
            len,
            unit: SECTOR_SIZE,
            offset: at + 8,
        });
    }
    if offset.checked_add(len).is_none() {
        return Err(DecodeError::Overflow {
            what: "disk write",
            start: offset,
            len,
            offset: at,
        });
    }
    Ok(())
}

impl<'a> DiskWrites<'a> {
    /// Builds a message (copying the data). For streaming without copies use
    /// [`crate::MessageWriter::send_disk_writes`].
    pub fn new(
        epoch: u64,
        disk: u8,
        writes: &[(u64, &[u8])],
    ) -> Result<DiskWrites<'static>, DecodeError> {
        check_disk_index(disk, 8)?;
        if writes.is_empty() {
            return Err(DecodeError::Empty { kind: "DiskWrites" });
        }
        let mut entries = Vec::new();
        for (i, (off, data)) in writes.iter().enumerate() {
            let len = u32::try_from(data.len()).map_err(|_| DecodeError::TooLong {
                what: "disk write",
                len: data.len(),
                limit: u32::MAX as usize,
            })?;
            check_disk_write(*off, u64::from(len), i)?;
            entries.put_u64(*off);
            entries.put_u32(len);
            entries.put(data);
        }
        Ok(DiskWrites {
            epoch,
            disk,
            count: writes.len() as u32,
            entries: Cow::Owned(entries),
        })
    }

    /// The epoch the writes belong to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The disk (index in command-line order) written.
    pub fn disk(&self) -> u8 {
        self.disk
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Always false for a valid message (kept for API symmetry).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The writes: `(byte offset, data)`, in order.
    pub fn writes(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        let mut rest: &[u8] = &self.entries;
        (0..self.count).map(move |_| {
            let off = le_u64(rest, 0);
            let len = le_u32(rest, 8) as usize;
            let data = &rest[DISK_ENTRY_HEADER..DISK_ENTRY_HEADER + len];
            rest = &rest[DISK_ENTRY_HEADER + len..];
            (off, data)
        })
    }

    fn decode(c: &mut Cursor<'a>) -> Result<Self, DecodeError> {
        let epoch = c.u64("epoch")?;
        let disk = c.u8("disk index")?;
        check_disk_index(disk, 8)?;
        let count = c.u32("disk write count")?;
        if count == 0 {
            return Err(DecodeError::Empty { kind: "DiskWrites" });
        }
        // Each entry is at least a header plus one sector.
        let min = u64::from(count) * (DISK_ENTRY_HEADER + SECTOR_SIZE) as u64;
        if min > c.remaining() as u64 {
            return Err(DecodeError::CountTooLarge {
                what: "disk write",
                count: u64::from(count),
                need: min,
                have: c.remaining(),
            });
        }
        let start = c.pos();
        for _ in 0..count {
            let at = c.pos();
            let off = c.u64("disk write offset")?;
            let len = c.u32("disk write length")?;
            check_disk_write(off, u64::from(len), at)?;
            c.bytes(len as usize, "disk write data")?;
        }
        let end = c.pos();
        let entries = c.span(start, end);
        Ok(DiskWrites {
            epoch,
            disk,
            count,
            entries: Cow::Borrowed(entries),
        })
    }

    fn encode(&self, s: &mut impl Sink) {
        s.put_u64(self.epoch);
        s.put_u8(self.disk);
        s.put_u32(self.count);
        s.put(&self.entries);
    }

    fn encoded_len(&self) -> u64 {
        13 + self.entries.len() as u64
    }
}

fn check_disk_index(disk: u8, offset: usize) -> Result<(), DecodeError> {
    if usize::from(disk) >= MAX_DISKS {
        return Err(DecodeError::BadValue {
            what: "disk index",
            value: u64::from(disk),
            offset,
        });
    }
    Ok(())
}

/// SHA-256 hashes of consecutive blocks of a disk image: what the receiving side of an
/// initial disk sync already holds, so that only differing blocks are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskHashes<'a> {
    /// The disk (index in command-line order).
    pub disk: u8,
    /// How many disks the sender has.
    pub disks: u8,
    /// Block size in bytes: a power of two from 512 to [`MAX_HASH_BLOCK`].
    pub block_size: u32,
    /// Size of the sender's image in bytes (a positive multiple of 512).
    pub disk_bytes: u64,
    /// Index of the first block hashed here.
    pub first_block: u64,
    hashes: Cow<'a, [u8]>,
}

impl<'a> DiskHashes<'a> {
    /// Builds a message; `hashes` is `count × 32` bytes.
    pub fn new(
        disk: u8,
        disks: u8,
        block_size: u32,
        disk_bytes: u64,
        first_block: u64,
        hashes: &'a [u8],
    ) -> Result<Self, DecodeError> {
        let h = DiskHashes {
            disk,
            disks,
            block_size,
            disk_bytes,
            first_block,
            hashes: Cow::Borrowed(hashes),
        };
        h.check()?;
        Ok(h)
    }

    /// Number of blocks the image has at this block size.
    pub fn total_blocks(&self) -> u64 {
        self.disk_bytes.div_ceil(u64::from(self.block_size.max(1)))
    }

    /// Number of hashes carried.
    pub fn count(&self) -> u64 {
        (self.hashes.len() / DISK_HASH_LEN) as u64
    }

    /// `(block index, hash)` pairs.
    pub fn hashes(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.hashes
            .chunks_exact(DISK_HASH_LEN)
            .enumerate()
            .map(|(i, h)| (self.first_block + i as u64, h))
    }

    fn check(&self) -> Result<(), DecodeError> {
        check_disk_index(self.disk, 0)?;
        if usize::from(self.disks) > MAX_DISKS || self.disk >= self.disks {
            return Err(DecodeError::BadValue {
                what: "disk count",
                value: u64::from(self.disks),
                offset: 1,
            });
        }
        if !self.block_size.is_power_of_two()
            || self.block_size < SECTOR_SIZE as u32
            || self.block_size > MAX_HASH_BLOCK
        {
            return Err(DecodeError::BadValue {
                what: "hash block size",
                value: u64::from(self.block_size),
                offset: 2,
            });
        }
        if self.disk_bytes == 0 || !self.disk_bytes.is_multiple_of(SECTOR_SIZE as u64) {
            return Err(DecodeError::BadLength {
                what: "disk size",
                len: self.disk_bytes,
                unit: SECTOR_SIZE,
                offset: 6,
            });
        }
        if self.hashes.is_empty() || !self.hashes.len().is_multiple_of(DISK_HASH_LEN) {
            return Err(DecodeError::Empty { kind: "DiskHashes" });
        }
        let end = self.first_block.checked_add(self.count());
        if end.is_none_or(|e| e > self.total_blocks()) {
            return Err(DecodeError::Overflow {
                what: "hashed blocks",
                start: self.first_block,
                len: self.count(),
                offset: 14,
            });
        }
        Ok(())
    }

    fn decode(c: &mut Cursor<'a>) -> Result<Self, DecodeError> {
        let disk = c.u8("disk index")?;
        let disks = c.u8("disk count")?;
        let block_size = c.u32("hash block size")?;
        let disk_bytes = c.u64("disk size")?;
        let first_block = c.u64("first block")?;
        let count = c.u32("hash count")?;
        let need = u64::from(count) * DISK_HASH_LEN as u64;
        if need > c.remaining() as u64 {
            return Err(DecodeError::CountTooLarge {
                what: "block hash",
                count: u64::from(count),
                need,
                have: c.remaining(),
            });
        }
        let hashes = c.bytes(need as usize, "block hashes")?;
        let h = DiskHashes {
            disk,
            disks,
            block_size,
            disk_bytes,
            first_block,
            hashes: Cow::Borrowed(hashes),
        };
        h.check()?;
        Ok(h)
    }

    fn encode(&self, s: &mut impl Sink) {
        s.put_u8(self.disk);
        s.put_u8(self.disks);
        s.put_u32(self.block_size);
        s.put_u64(self.disk_bytes);
        s.put_u64(self.first_block);
        s.put_u32(self.count() as u32);
        s.put(&self.hashes);
    }

    fn encoded_len(&self) -> u64 {
        26 + self.hashes.len() as u64
    }
}

/// Totals of an epoch, sent in `EpochCommit` and recomputed by the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EpochCommit {
    /// The epoch.
    pub epoch: u64,
    /// Number of data messages (Pages, ZeroPages, DiskWrites, Outputs, State).
    pub messages: u32,
    /// Pages carried (Pages and ZeroPages).
    pub pages: u64,
    /// Sum of the data messages' payload lengths.
    pub bytes: u64,
    /// CRC32C over the concatenated payloads of the data messages, in order.
    pub digest: u32,
}

impl EpochCommit {
    /// Adds one data message to the running totals.
    pub fn add(&mut self, msg: &Message<'_>) {
        let mut crc = CrcSink {
            crc: self.digest,
            len: 0,
        };
        msg.encode(&mut crc);
        self.count(msg, crc.len);
        self.digest = crc.crc;
    }

    /// [`add`](Self::add) for a message decoded from a received payload of `len` bytes
    /// whose CRC32C is `payload_crc` (computed once by the frame layer): the digest is
    /// extended by combining CRCs instead of encoding the message again. The digest is
    /// defined over the payloads, so this is the same value for every payload `msg`
    /// encodes to.
    pub fn add_payload(&mut self, msg: &Message<'_>, payload_crc: u32, len: usize) {
        self.count(msg, len as u64);
        self.digest = crate::crc_combine::crc32c_combine(self.digest, payload_crc, len);
    }

    /// [`add`](Self::add) for a message that arrived in a sealed frame (its tag verified):
    /// counted, but the digest is left as it is. A sealed session's sender extends no
    /// digest either, so its commits carry the initial value 0 (protocol version 5).
    pub fn count_sealed(&mut self, msg: &Message<'_>, len: usize) {
        self.count(msg, len as u64);
    }

    /// The message, page and byte totals every `add*` keeps.
    fn count(&mut self, msg: &Message<'_>, len: u64) {
        self.messages = self.messages.wrapping_add(1);
        self.pages += msg.page_count();
        self.bytes += len;
    }
}

/// A protocol message. Borrows its bulk data (page contents, blobs) from the
/// frame payload it was decoded from, or from the caller when sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// Opens a connection.
    Hello(Hello),
    /// Accepts a connection.
    HelloAck(HelloAck),
    /// Reports a failure; the sender closes the connection after it.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// Human-readable explanation (UTF-8, at most [`MAX_ERROR_MESSAGE`] bytes).
        message: Cow<'a, str>,
    },
    /// Orderly close.
    Goodbye,
    /// Liveness, both ways.
    Heartbeat {
        /// Sender's latest epoch (primary: last sent; backup: last committed).
        epoch: u64,
        /// Sender's wall clock, nanoseconds since the Unix epoch.
        sent_unix_nanos: u64,
    },
    /// Starts epoch `epoch`.
    EpochBegin {
        /// The epoch.
        epoch: u64,
    },
    /// Page contents.
    Pages(Pages<'a>),
    /// Zero pages.
    ZeroPages(ZeroPages<'a>),
    /// Disk writes.
    DiskWrites(DiskWrites<'a>),
    /// The guest flushed a disk during the epoch: the receiver makes the epoch's
    /// writes durable before acknowledging it.
    DiskFlush {
        /// The epoch.
        epoch: u64,
        /// The disk.
        disk: u8,
    },
    /// Block hashes of the receiver's disk image (initial sync).
    DiskHashes(DiskHashes<'a>),
    /// Buffered output released once the epoch is acknowledged.
    Outputs {
        /// The epoch.
        epoch: u64,
        /// Output stream (device) id, assigned by the VMM.
        stream: u16,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// vCPU + VM + device state (opaque to this crate).
    State {
        /// The epoch.
        epoch: u64,
        /// The serialized state.
        blob: &'a [u8],
    },
    /// Ends an epoch; the totals let the receiver verify completeness.
    EpochCommit(EpochCommit),
    /// The backup committed `epoch`.
    Ack {
        /// The epoch.
        epoch: u64,
    },
    /// Migration finished with epoch `epoch`; the target may start the VM.
    MigrationDone {
        /// The final epoch.
        epoch: u64,
    },
    /// A step of a planned switchover of roles after epoch `epoch`.
    Switchover {
        /// The last epoch the old primary ran (its final, complete epoch).
        epoch: u64,
        /// Which step.
        phase: SwitchoverPhase,
        /// The old primary stops instead of becoming the new backup.
        stop: bool,
    },
}

/// The steps of a planned switchover (see docs/protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SwitchoverPhase {
    /// Primary to backup, after the final epoch: "this was my last epoch; take over".
    Request = 1,
    /// Backup to primary: "I committed that epoch and hold its state; ready".
    Ready = 2,
    /// Primary to backup: "its output is released, my output gate is closed and the
    /// fence released: the VM is yours".
    Released = 3,
}

impl SwitchoverPhase {
    /// The phase with wire value `v`.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Request),
            2 => Some(Self::Ready),
            3 => Some(Self::Released),
            _ => None,
        }
    }
}

impl<'a> Message<'a> {
    /// The message's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::HelloAck(_) => Kind::HelloAck,
            Message::Error { .. } => Kind::Error,
            Message::Goodbye => Kind::Goodbye,
            Message::Heartbeat { .. } => Kind::Heartbeat,
            Message::EpochBegin { .. } => Kind::EpochBegin,
            Message::Pages(_) => Kind::Pages,
            Message::ZeroPages(_) => Kind::ZeroPages,
            Message::DiskWrites(_) => Kind::DiskWrites,
            Message::DiskFlush { .. } => Kind::DiskFlush,
            Message::DiskHashes(_) => Kind::DiskHashes,
            Message::Outputs { .. } => Kind::Outputs,
            Message::State { .. } => Kind::State,
            Message::EpochCommit(_) => Kind::EpochCommit,
            Message::Ack { .. } => Kind::Ack,
            Message::MigrationDone { .. } => Kind::MigrationDone,
            Message::Switchover { .. } => Kind::Switchover,
        }
    }

    /// The epoch of an epoch data message (`Pages` ... `State`), else `None`.
    pub fn data_epoch(&self) -> Option<u64> {
        match self {
            Message::Pages(p) => Some(p.epoch),
            Message::ZeroPages(z) => Some(z.epoch),
            Message::DiskWrites(d) => Some(d.epoch),
            Message::DiskFlush { epoch, .. } => Some(*epoch),
            Message::Outputs { epoch, .. } | Message::State { epoch, .. } => Some(*epoch),
            _ => None,
        }
    }

    /// Pages carried by `Pages` and `ZeroPages`; 0 for anything else.
    pub fn page_count(&self) -> u64 {
        match self {
            Message::Pages(p) => p.pages,
            Message::ZeroPages(z) => z.pages,
            _ => 0,
        }
    }

    /// Decodes and validates a payload of the given frame kind.
    pub fn decode(kind: u16, payload: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        let kind = Kind::from_u16(kind).ok_or(DecodeError::UnknownKind(kind))?;
        let mut c = Cursor::new(payload);
        let msg = match kind {
            Kind::Hello => {
                let version = c.u16("version")?;
                let role = decode_role(&mut c)?;
                let flags = decode_flags(&mut c)?;
                let mut shape = VmShape::decode_head(&mut c)?;
                let nonce = Nonce(c.array::<NONCE_LEN>("nonce")?);
                shape.decode_tail(&mut c)?;
                Message::Hello(Hello {
                    version,
                    role,
                    shape,
                    nonce,
                    auth: flags,
                })
            }
            Kind::HelloAck => {
                let version = c.u16("version")?;
                let role = decode_role(&mut c)?;
                let has_proof = decode_flags(&mut c)?;
                let nonce = Nonce(c.array::<NONCE_LEN>("nonce")?);
                let proof = if has_proof {
                    Some(c.array::<PROOF_LEN>("proof")?)
                } else {
                    None
                };
                Message::HelloAck(HelloAck {
                    version,
                    role,
                    nonce,
                    proof,
                })
            }
            Kind::Error => {
                let code = ErrorCode::from_u16(c.u16("error code")?);
                let len = c.u16("error message length")? as usize;
                if len > MAX_ERROR_MESSAGE {
                    return Err(DecodeError::TooLong {
                        what: "error message",
                        len,
                        limit: MAX_ERROR_MESSAGE,
                    });
                }
                let bytes = c.bytes(len, "error message")?;
                let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::Utf8 {
                    what: "error message",
                    valid_up_to: e.valid_up_to(),
                })?;
                Message::Error {
                    code,
                    message: Cow::Borrowed(text),
                }
            }
            Kind::Goodbye => Message::Goodbye,
            Kind::Heartbeat => Message::Heartbeat {
                epoch: c.u64("epoch")?,
                sent_unix_nanos: c.u64("sent_unix_nanos")?,
            },
            Kind::EpochBegin => Message::EpochBegin {
                epoch: c.u64("epoch")?,
            },
            Kind::Pages => Message::Pages(Pages::decode(&mut c)?),
            Kind::ZeroPages => Message::ZeroPages(ZeroPages::decode(&mut c)?),
            Kind::DiskWrites => Message::DiskWrites(DiskWrites::decode(&mut c)?),
            Kind::DiskFlush => {
                let epoch = c.u64("epoch")?;
                let disk = c.u8("disk index")?;
                check_disk_index(disk, 8)?;
                Message::DiskFlush { epoch, disk }
            }
            Kind::DiskHashes => Message::DiskHashes(DiskHashes::decode(&mut c)?),
            Kind::Outputs => {
                let epoch = c.u64("epoch")?;
                let stream = c.u16("stream")?;
                let len = c.u32("output length")? as usize;
                if len == 0 {
                    return Err(DecodeError::Empty { kind: "Outputs" });
                }
                let bytes = c.bytes(len, "output bytes")?;
                Message::Outputs {
                    epoch,
                    stream,
                    bytes,
                }
            }
            Kind::State => {
                let epoch = c.u64("epoch")?;
                let len = c.u32("state length")? as usize;
                let blob = c.bytes(len, "state blob")?;
                Message::State { epoch, blob }
            }
            Kind::EpochCommit => Message::EpochCommit(EpochCommit {
                epoch: c.u64("epoch")?,
                messages: c.u32("message count")?,
                pages: c.u64("page count")?,
                bytes: c.u64("byte count")?,
                digest: c.u32("digest")?,
            }),
            Kind::Ack => Message::Ack {
                epoch: c.u64("epoch")?,
            },
            Kind::MigrationDone => Message::MigrationDone {
                epoch: c.u64("epoch")?,
            },
            Kind::Switchover => {
                let epoch = c.u64("epoch")?;
                let at = c.pos();
                let v = c.u8("switchover phase")?;
                let phase = SwitchoverPhase::from_u8(v).ok_or(DecodeError::BadValue {
                    what: "switchover phase",
                    value: u64::from(v),
                    offset: at,
                })?;
                let at = c.pos();
                let stop = match c.u8("switchover flags")? {
                    0 => false,
                    1 => true,
                    v => {
                        return Err(DecodeError::BadValue {
                            what: "switchover flags",
                            value: u64::from(v),
                            offset: at,
                        })
                    }
                };
                Message::Switchover { epoch, phase, stop }
            }
        };
        c.finish(kind.name())?;
        Ok(msg)
    }

    /// Length of the encoded payload.
    pub fn encoded_len(&self) -> u64 {
        match self {
            Message::Hello(h) => 4 + h.shape.encoded_len() + NONCE_LEN as u64,
            Message::HelloAck(a) => {
                4 + NONCE_LEN as u64
                    + if a.proof.is_some() {
                        PROOF_LEN as u64
                    } else {
                        0
                    }
            }
            Message::Error { message, .. } => 4 + message.len() as u64,
            Message::Goodbye => 0,
            Message::Heartbeat { .. } => 16,
            Message::EpochBegin { .. } | Message::Ack { .. } | Message::MigrationDone { .. } => 8,
            Message::Pages(p) => p.encoded_len(),
            Message::ZeroPages(z) => z.encoded_len(),
            Message::DiskWrites(d) => d.encoded_len(),
            Message::DiskFlush { .. } => 9,
            Message::DiskHashes(h) => h.encoded_len(),
            Message::Outputs { bytes, .. } => 14 + bytes.len() as u64,
            Message::State { blob, .. } => 12 + blob.len() as u64,
            Message::EpochCommit(_) => 32,
            Message::Switchover { .. } => 10,
        }
    }

    /// Checks the parts of a message built by a caller that the type system
    /// does not: string and length limits, non-empty outputs.
    pub fn validate(&self) -> Result<(), DecodeError> {
        match self {
            Message::Error { message, .. } if message.len() > MAX_ERROR_MESSAGE => {
                Err(DecodeError::TooLong {
                    what: "error message",
                    len: message.len(),
                    limit: MAX_ERROR_MESSAGE,
                })
            }
            Message::Outputs { bytes: &[], .. } => Err(DecodeError::Empty { kind: "Outputs" }),
            Message::DiskFlush { disk, .. } => check_disk_index(*disk, 8),
            Message::DiskHashes(h) => h.check(),
            Message::Outputs { bytes, .. } | Message::State { blob: bytes, .. }
                if bytes.len() > u32::MAX as usize =>
            {
                Err(DecodeError::TooLong {
                    what: "blob",
                    len: bytes.len(),
                    limit: u32::MAX as usize,
                })
            }
            _ => Ok(()),
        }
    }

    /// Encodes the payload into `s` (call [`Message::validate`] first).
    pub(crate) fn encode(&self, s: &mut impl Sink) {
        match self {
            Message::Hello(h) => {
                s.put_u16(h.version);
                s.put_u8(h.role as u8);
                s.put_u8(u8::from(h.auth));
                h.shape.encode_head(s);
                s.put(&h.nonce.0);
                h.shape.encode_tail(s);
            }
            Message::HelloAck(a) => {
                s.put_u16(a.version);
                s.put_u8(a.role as u8);
                s.put_u8(u8::from(a.proof.is_some()));
                s.put(&a.nonce.0);
                if let Some(p) = &a.proof {
                    s.put(p);
                }
            }
            Message::Error { code, message } => {
                s.put_u16(code.as_u16());
                s.put_u16(message.len() as u16);
                s.put(message.as_bytes());
            }
            Message::Goodbye => {}
            Message::Heartbeat {
                epoch,
                sent_unix_nanos,
            } => {
                s.put_u64(*epoch);
                s.put_u64(*sent_unix_nanos);
            }
            Message::EpochBegin { epoch }
            | Message::Ack { epoch }
            | Message::MigrationDone { epoch } => s.put_u64(*epoch),
            Message::Pages(p) => p.encode(s),
            Message::ZeroPages(z) => z.encode(s),
            Message::DiskWrites(d) => d.encode(s),
            Message::DiskFlush { epoch, disk } => {
                s.put_u64(*epoch);
                s.put_u8(*disk);
            }
            Message::DiskHashes(h) => h.encode(s),
            Message::Outputs {
                epoch,
                stream,
                bytes,
            } => {
                s.put_u64(*epoch);
                s.put_u16(*stream);
                s.put_u32(bytes.len() as u32);
                s.put(bytes);
            }
            Message::State { epoch, blob } => {
                s.put_u64(*epoch);
                s.put_u32(blob.len() as u32);
                s.put(blob);
            }
            Message::EpochCommit(e) => {
                s.put_u64(e.epoch);
                s.put_u32(e.messages);
                s.put_u64(e.pages);
                s.put_u64(e.bytes);
                s.put_u32(e.digest);
            }
            Message::Switchover { epoch, phase, stop } => {
                s.put_u64(*epoch);
                s.put_u8(*phase as u8);
                s.put_u8(u8::from(*stop));
            }
        }
    }

    /// The encoded payload as a new vector.
    pub fn to_payload(&self) -> Result<Vec<u8>, DecodeError> {
        self.validate()?;
        let mut v = Vec::with_capacity(self.encoded_len() as usize);
        self.encode(&mut v);
        Ok(v)
    }

    /// A short description for logs: kind and epoch.
    pub fn summary(&self) -> String {
        match self.data_epoch() {
            Some(e) => format!("{} (epoch {e})", self.kind()),
            None => self.kind().to_string(),
        }
    }
}

impl Hello {
    /// A hello for this crate's protocol version.
    pub fn new(role: Role, shape: VmShape, nonce: Nonce, auth: bool) -> Self {
        Hello {
            version: PROTOCOL_VERSION,
            role,
            shape,
            nonce,
            auth,
        }
    }
}

fn decode_role(c: &mut Cursor<'_>) -> Result<Role, DecodeError> {
    let offset = c.pos();
    let v = c.u8("role")?;
    Role::from_u8(v).ok_or(DecodeError::BadValue {
        what: "role",
        value: u64::from(v),
        offset,
    })
}

fn decode_flags(c: &mut Cursor<'_>) -> Result<bool, DecodeError> {
    let offset = c.pos();
    match c.u8("flags")? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(DecodeError::BadValue {
            what: "flags",
            value: u64::from(v),
            offset,
        }),
    }
}
