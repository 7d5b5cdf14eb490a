//! Frames: the unit of the wire protocol.
//!
//! ```text
//! off  size  field
//!   0     4  magic "FTVW"
//!   4     2  protocol version (6)
//!   6     2  kind (see `message::Kind`)
//!   8     8  sequence number: 0 for the first frame of a direction, then +1
//!  16     4  payload length (bounded by the receiver's limit)
//!  20     2  flags: bit 0 = sealed: the payload is AES-128-GCM ciphertext and its tag follows
//!  22     2  reserved, must be 0
//!  24     4  header CRC32C over bytes 0..24
//!  28     n  payload
//! plain frame (flag bit 0 clear):
//!   .     4  frame CRC32C over header ‖ payload
//! sealed frame (flag bit 0 set):
//!   .    16  AES-128-GCM tag (key: the direction's session key, nonce: the sequence
//!            number, associated data: the 28-byte header). It authenticates header and
//!            payload, so a sealed frame carries no frame CRC (version 4; version 3 had
//!            one over header ‖ ciphertext ‖ tag as well). Versions 2-5 sealed with
//!            AES-256-GCM; version 6 seals with AES-128-GCM.
//! ```
//!
//! All integers are little-endian. [`FrameReader`] validates every field
//! before trusting it (the header CRC before the length, the length before
//! allocating) and stops for good after the first error: a byte stream cannot
//! be resynchronised safely.

use std::fmt;
use std::io::{self, BufWriter, ErrorKind, Read, Write};

use crate::auth::{TagKey, TAG_LEN};
use crate::codec::{human_bytes, le_u32, le_u64, Sink};

mod in_place;
mod placing;

pub use placing::PagePlacer;

/// Frame magic, the first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"FTVW";
/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 6;
/// Length of the fixed frame header, including its CRC.
pub const HEADER_LEN: usize = 28;
/// Length of the frame CRC trailer of a plain (unsealed) frame.
pub const CRC_LEN: usize = 4;
/// Default largest payload a reader accepts (and a writer produces).
pub const DEFAULT_MAX_PAYLOAD: u32 = 16 << 20;
/// Flag bit: a [`TAG_LEN`]-byte authentication tag follows the payload.
pub const FLAG_TAGGED: u16 = 1;
/// The one frame kind (`Error`) that an authenticated reader still accepts
/// untagged, so that a peer whose key differs can say so. Such a frame is
/// returned with `authenticated: false` and is never treated as data.
pub const UNTAGGED_ERROR_KIND: u16 = 0x0003;

/// Where in a stream something happened: frame index (which equals the
/// sequence number the frame should carry) and byte offset of its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    /// Index of the frame on this connection and direction, from 0.
    pub frame: u64,
    /// Byte offset of the frame's first byte in the stream.
    pub offset: u64,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "frame {} at byte offset {}", self.frame, self.offset)
    }
}

/// Errors reading frames. Each says what was wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed.
    #[error("{at}: read failed: {source}")]
    Io {
        /// Position.
        at: At,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The connection closed in the middle of a frame.
    #[error("{at}: truncated: connection closed after {got} of {want} {part} bytes")]
    Truncated {
        /// Position.
        at: At,
        /// "header", "payload" or "trailer".
        part: &'static str,
        /// Bytes of that part received.
        got: usize,
        /// Bytes of that part expected.
        want: usize,
    },
    /// Not an ftvm frame: a foreign peer or a desynchronised stream.
    #[error("{at}: bad magic {found:#010x}, expected FTVW (0x{expected:08x}): not an ftvm-wire stream or out of sync", found = u32::from_be_bytes(*.found), expected = u32::from_be_bytes(MAGIC))]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
        /// Position.
        at: At,
    },
    /// The peer speaks another protocol version.
    #[error(
        "{at}: protocol version {version} not supported (this side speaks {PROTOCOL_VERSION})"
    )]
    UnsupportedVersion {
        /// Position.
        at: At,
        /// Version in the frame.
        version: u16,
    },
    /// The header was corrupted in transit.
    #[error("{at}: header CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderCrc {
        /// Position.
        at: At,
        /// CRC in the header.
        stored: u32,
        /// CRC computed over the header.
        computed: u32,
    },
    /// Flags or reserved bits this version does not define.
    #[error("{at}: unknown header flags {flags:#06x} / reserved {reserved:#06x} (must be 0 in version {PROTOCOL_VERSION})")]
    BadFlags {
        /// Position.
        at: At,
        /// Flags field.
        flags: u16,
        /// Reserved field.
        reserved: u16,
    },
    /// The announced payload is larger than this side accepts.
    #[error("{at}: payload length {} exceeds limit {}", human_bytes(u64::from(*.len)), human_bytes(u64::from(*.limit)))]
    PayloadTooLarge {
        /// Position.
        at: At,
        /// Announced length.
        len: u32,
        /// Configured limit.
        limit: u32,
    },
    /// A frame is missing, repeated or reordered.
    #[error("{at}: sequence {got} {}: frame lost or replayed", match .at.frame { 0 => "as the first frame, expected 0".to_string(), n => format!("after {}", n - 1) })]
    Sequence {
        /// Position.
        at: At,
        /// Sequence number in the frame.
        got: u64,
    },
    /// Payload or tag corrupted in transit.
    #[error("{at}: frame CRC mismatch: stored {stored:#010x}, computed {computed:#010x} over {len} bytes (corrupted in transit)")]
    FrameCrc {
        /// Position.
        at: At,
        /// CRC in the trailer.
        stored: u32,
        /// CRC computed.
        computed: u32,
        /// Bytes covered.
        len: u64,
    },
    /// The session is authenticated but this frame carries no tag.
    #[error("{at}: frame is not authenticated but the session requires a tag on every frame")]
    TagMissing {
        /// Position.
        at: At,
    },
    /// A tag arrived although no key was negotiated.
    #[error("{at}: frame carries an authentication tag but no session key was negotiated")]
    TagUnexpected {
        /// Position.
        at: At,
    },
    /// The tag does not verify: forged, spliced from another session, wrong key, or
    /// corrupted in transit (a sealed frame has no CRC of its own: the tag covers it).
    #[error("{at}: authentication tag mismatch: frame forged or tampered with, replayed, spliced from another session, keys differ, or corrupted in transit")]
    TagMismatch {
        /// Position.
        at: At,
    },
    /// An earlier error already ended this stream.
    #[error("{at}: stream already failed earlier; reconnect")]
    Failed {
        /// Position of the read that was refused.
        at: At,
    },
}

impl FrameError {
    /// Position of the error in the stream.
    pub fn at(&self) -> At {
        match self {
            FrameError::Io { at, .. }
            | FrameError::Truncated { at, .. }
            | FrameError::BadMagic { at, .. }
            | FrameError::UnsupportedVersion { at, .. }
            | FrameError::HeaderCrc { at, .. }
            | FrameError::BadFlags { at, .. }
            | FrameError::PayloadTooLarge { at, .. }
            | FrameError::Sequence { at, .. }
            | FrameError::FrameCrc { at, .. }
            | FrameError::TagMissing { at }
            | FrameError::TagUnexpected { at }
            | FrameError::TagMismatch { at }
            | FrameError::Failed { at } => *at,
        }
    }
}

/// Errors writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameWriteError {
    /// The connection failed; the stream is now unusable.
    #[error("frame {frame}: write failed: {source}")]
    Io {
        /// Index of the frame being written.
        frame: u64,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The payload is larger than the configured limit (a caller bug).
    #[error("frame {frame}: payload of {} exceeds limit {}", human_bytes(*.len), human_bytes(u64::from(*.limit)))]
    PayloadTooLarge {
        /// Index of the frame.
        frame: u64,
        /// Payload length.
        len: u64,
        /// Configured limit.
        limit: u32,
    },
    /// The encoder produced a different length than it announced (a bug).
    #[error("frame {frame}: internal error: payload announced {announced} bytes, encoder wrote {written}")]
    LengthMismatch {
        /// Index of the frame.
        frame: u64,
        /// Announced length.
        announced: u32,
        /// Bytes written.
        written: u64,
    },
    /// An earlier error already ended this stream.
    #[error("frame {frame}: stream already failed earlier; reconnect")]
    Failed {
        /// Index of the frame refused.
        frame: u64,
    },
}

/// A decoded frame header (after all header checks passed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame kind.
    pub kind: u16,
    /// Sequence number.
    pub seq: u64,
    /// Payload length.
    pub payload_len: u32,
    /// Flags ([`FLAG_TAGGED`]).
    pub flags: u16,
}

impl FrameHeader {
    /// Encodes the header, including its CRC.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        h[6..8].copy_from_slice(&self.kind.to_le_bytes());
        h[8..16].copy_from_slice(&self.seq.to_le_bytes());
        h[16..20].copy_from_slice(&self.payload_len.to_le_bytes());
        h[20..22].copy_from_slice(&self.flags.to_le_bytes());
        // 22..24 reserved, zero.
        let crc = crc32c::crc32c(&h[..24]);
        h[24..28].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Validates and decodes a header: magic, version, CRC, flags, in that order.
    /// The length limit and the sequence are checked by [`FrameReader`].
    pub fn decode(h: &[u8; HEADER_LEN], at: At) -> Result<Self, FrameError> {
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&h[0..4]);
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic, at });
        }
        // Magic and version stay at offsets 0 and 4 in every future version,
        // so a peer of another version is named as such, not as corruption.
        let version = u16::from_le_bytes([h[4], h[5]]);
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion { at, version });
        }
        let stored = le_u32(h, 24);
        let computed = crc32c::crc32c(&h[..24]);
        if stored != computed {
            return Err(FrameError::HeaderCrc {
                at,
                stored,
                computed,
            });
        }
        let flags = u16::from_le_bytes([h[20], h[21]]);
        let reserved = u16::from_le_bytes([h[22], h[23]]);
        if flags & !FLAG_TAGGED != 0 || reserved != 0 {
            return Err(FrameError::BadFlags {
                at,
                flags,
                reserved,
            });
        }
        Ok(FrameHeader {
            kind: u16::from_le_bytes([h[6], h[7]]),
            seq: le_u64(h, 8),
            payload_len: le_u32(h, 16),
            flags,
        })
    }
}

/// One frame as returned by [`FrameReader::read_frame`]; the payload borrows
/// the reader's reusable buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Frame kind.
    pub kind: u16,
    /// Where the frame started.
    pub at: At,
    /// Payload bytes (verified by CRC and, in an authenticated session, by tag).
    pub payload: &'a [u8],
    /// False only for an untagged [`UNTAGGED_ERROR_KIND`] frame received in an
    /// authenticated session: its content is unverified.
    pub authenticated: bool,
}

/// One frame as returned by [`FrameReader::read_frame_owned`]: the payload is
/// `buf[..len]` (the buffer may be longer: it is recycled without shrinking).
#[derive(Debug)]
pub struct OwnedFrame {
    /// Frame kind.
    pub kind: u16,
    /// Where the frame started.
    pub at: At,
    /// Holds the payload in its first `len` bytes.
    pub buf: Vec<u8>,
    /// Payload length.
    pub len: usize,
    /// As [`Frame::authenticated`].
    pub authenticated: bool,
    /// CRC32C of the payload alone, when the frame CRC was computed over it in plain
    /// (untagged sessions): lets an epoch digest be extended without another pass.
    pub payload_crc: Option<u32>,
    /// The frame arrived sealed and its tag verified under the session key the
    /// handshake negotiated: the tag covers it, so the epoch digest skips it (version 5).
    pub sealed: bool,
    /// Bytes of page data this frame carried that were read straight into their
    /// destination ([`FrameReader::read_frame_placing`]): the payload was `buf[..len]`
    /// followed by that many bytes, and `payload_crc` covers all of it. 0 otherwise.
    pub placed: usize,
}

impl OwnedFrame {
    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Told, before every read from the underlying stream, how many bytes of the frame being
/// read are still to come at least (what is left of its header, or of its payload and
/// trailer), so that a socket reader can ask the kernel not to wake it for less (see
/// [`FrameReader::set_wait_hint`]). The count is a lower bound on what the peer still
/// sends, never more. A socket's wait must stay well under it: Linux counts a receive
/// low-water mark from the bytes not yet copied, so a read that copied part of a frame and
/// then slept waits for a whole mark more (the replication crate's `low_water` uses at most
/// half).
pub trait ReadWaitHint: Send {
    /// At least `frame_bytes_left` (>= 1) more bytes of the current frame will arrive.
    fn before_read(&mut self, frame_bytes_left: usize);
}

/// Reads and verifies frames from a byte stream.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    offset: u64,
    next_seq: u64,
    max_payload: u32,
    key: Option<TagKey>,
    failed: bool,
    /// CRC32C of the last frame's payload (see [`OwnedFrame::payload_crc`]).
    payload_crc: Option<u32>,
    /// Whether the last frame was sealed and its tag verified (see [`OwnedFrame::sealed`]).
    sealed: bool,
    /// See [`FrameReader::set_wait_hint`].
    wait_hint: Option<Box<dyn ReadWaitHint>>,
}

impl<R> fmt::Debug for FrameReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameReader")
            .field("offset", &self.offset)
            .field("next_seq", &self.next_seq)
            .field("max_payload", &self.max_payload)
            .field("authenticated", &self.key.is_some())
            .field("failed", &self.failed)
            .field("wait_hint", &self.wait_hint.is_some())
            .finish()
    }
}

impl<R: Read> FrameReader<R> {
    /// A reader with the default payload limit ([`DEFAULT_MAX_PAYLOAD`]).
    pub fn new(inner: R) -> Self {
        Self::with_limit(inner, DEFAULT_MAX_PAYLOAD)
    }

    /// A reader that refuses payloads longer than `max_payload` bytes.
    pub fn with_limit(inner: R, max_payload: u32) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
            offset: 0,
            next_seq: 0,
            max_payload,
            key: None,
            failed: false,
            payload_crc: None,
            sealed: false,
            wait_hint: None,
        }
    }

    /// From now on, tell `hint` before every read how many bytes of the current frame are
    /// still to come (see [`ReadWaitHint`]): for a socket whose reader should be woken once
    /// per large piece of a frame instead of once per packet.
    pub fn set_wait_hint(&mut self, hint: Box<dyn ReadWaitHint>) {
        self.wait_hint = Some(hint);
    }

    /// From now on, every frame must carry a valid tag under `key`.
    pub fn set_key(&mut self, key: TagKey) {
        self.key = Some(key);
    }

    /// Whether frames are being authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.key.is_some()
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.offset
    }

    /// Frames read so far (= the next expected sequence number).
    pub fn frames_read(&self) -> u64 {
        self.next_seq
    }

    /// The payload limit.
    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Marks the stream failed (a layer above rejected a frame's content):
    /// every later read fails.
    pub fn mark_failed(&mut self) {
        self.failed = true;
    }

    /// Reads the next frame. `Ok(None)` means the peer closed the connection
    /// cleanly at a frame boundary. After any error the reader refuses
    /// further reads.
    pub fn read_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        let at = At {
            frame: self.next_seq,
            offset: self.offset,
        };
        if self.failed {
            return Err(FrameError::Failed { at });
        }
        self.failed = true;
        let Some((kind, len, authenticated)) = self.read_verified(at)? else {
            self.failed = false;
            return Ok(None);
        };
        // An unauthenticated error ends the stream: nothing after it is read.
        self.failed = !authenticated;
        self.next_seq += 1;
        Ok(Some(Frame {
            kind,
            at,
            payload: &self.buf[..len],
            authenticated,
        }))
    }

    /// [`FrameReader::read_frame`], handing the payload over in an owned buffer; `spare`
    /// (a buffer handed over earlier, or empty) takes its place for later frames. For a
    /// reader on another thread than the consumer: no copy of the payload is made.
    pub fn read_frame_owned(&mut self, spare: Vec<u8>) -> Result<Option<OwnedFrame>, FrameError> {
        let (kind, at, len, authenticated) = match self.read_frame()? {
            None => return Ok(None),
            Some(f) => (f.kind, f.at, f.payload.len(), f.authenticated),
        };
        let buf = std::mem::replace(&mut self.buf, spare);
        Ok(Some(OwnedFrame {
            kind,
            at,
            buf,
            len,
            authenticated,
            payload_crc: self.payload_crc,
            sealed: self.sealed,
            placed: 0,
        }))
    }

    /// Reads one frame into `self.buf`; returns (kind, payload length, authenticated).
    fn read_verified(&mut self, at: At) -> Result<Option<(u16, usize, bool)>, FrameError> {
        match self.read_header(at)? {
            None => Ok(None),
            Some((header, h)) => self.read_payload(at, header, &h).map(Some),
        }
    }

    /// Reads and checks the next frame's header (`None`: the stream ended cleanly).
    fn read_header(
        &mut self,
        at: At,
    ) -> Result<Option<(FrameHeader, [u8; HEADER_LEN])>, FrameError> {
        let mut h = [0u8; HEADER_LEN];
        let got = self.fill(&mut h, at)?;
        if got == 0 {
            return Ok(None);
        }
        if got < HEADER_LEN {
            return Err(FrameError::Truncated {
                at,
                part: "header",
                got,
                want: HEADER_LEN,
            });
        }
        let header = FrameHeader::decode(&h, at)?;
        if header.payload_len > self.max_payload {
            return Err(FrameError::PayloadTooLarge {
                at,
                len: header.payload_len,
                limit: self.max_payload,
            });
        }
        if header.seq != self.next_seq {
            return Err(FrameError::Sequence {
                at,
                got: header.seq,
            });
        }
        let tagged = header.flags & FLAG_TAGGED != 0;
        match (tagged, self.key.is_some()) {
            (false, true) if header.kind != UNTAGGED_ERROR_KIND => {
                return Err(FrameError::TagMissing { at })
            }
            (true, false) => return Err(FrameError::TagUnexpected { at }),
            _ => {}
        }
        Ok(Some((header, h)))
    }

    /// Reads the payload and trailer of the frame whose header (`header`, raw `h`) was
    /// just read into `self.buf`, and verifies them; returns (kind, payload length,
    /// authenticated).
    fn read_payload(
        &mut self,
        at: At,
        header: FrameHeader,
        h: &[u8; HEADER_LEN],
    ) -> Result<(u16, usize, bool), FrameError> {
        let tagged = header.flags & FLAG_TAGGED != 0;
        let len = header.payload_len as usize;
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        // A sealed frame ends with its tag, a plain one with its frame CRC.
        let trailer_len = if tagged { TAG_LEN } else { CRC_LEN };
        let mut payload = std::mem::take(&mut self.buf);
        let got = self.fill_before(&mut payload[..len], trailer_len, at);
        self.buf = payload;
        let got = got?;
        if got < len {
            return Err(FrameError::Truncated {
                at,
                part: "payload",
                got,
                want: len,
            });
        }
        let mut trailer = [0u8; TAG_LEN];
        let got = self.fill(&mut trailer[..trailer_len], at)?;
        if got < trailer_len {
            return Err(FrameError::Truncated {
                at,
                part: "trailer",
                got,
                want: trailer_len,
            });
        }
        match self.key.as_ref().filter(|_| tagged) {
            // The tag authenticates header and payload: no CRC pass over a sealed frame,
            // and no payload CRC for the epoch digest (the payload was ciphertext).
            Some(key) => {
                self.payload_crc = None;
                self.sealed = false;
                if !key.open(header.seq, h, &mut self.buf[..len], &trailer) {
                    return Err(FrameError::TagMismatch { at });
                }
                self.sealed = true;
            }
            None => {
                // One pass over the payload: its own CRC, combined with the header's. The
                // payload is the plain message, so its CRC is kept for the epoch digest.
                let payload_crc = crc32c::crc32c(&self.buf[..len]);
                self.verify_plain(at, h, payload_crc, len, le_u32(&trailer, 0))?;
            }
        }
        Ok((header.kind, len, tagged || self.key.is_none()))
    }

    /// Records a plain frame (header `h`, a `len`-byte payload whose CRC is `payload_crc`)
    /// as read and checks its stored frame CRC against the header's CRC combined with the
    /// payload's. The payload CRC is kept for the epoch digest.
    fn verify_plain(
        &mut self,
        at: At,
        h: &[u8; HEADER_LEN],
        payload_crc: u32,
        len: usize,
        stored: u32,
    ) -> Result<(), FrameError> {
        self.sealed = false;
        self.payload_crc = Some(payload_crc);
        let computed = crate::crc_combine::crc32c_combine(crc32c::crc32c(h), payload_crc, len);
        if stored != computed {
            return Err(FrameError::FrameCrc {
                at,
                stored,
                computed,
                len: (HEADER_LEN + len) as u64,
            });
        }
        Ok(())
    }

    /// Reads until `buf` is full or the stream ends; returns bytes read.
    fn fill(&mut self, buf: &mut [u8], at: At) -> Result<usize, FrameError> {
        self.fill_before(buf, 0, at)
    }

    /// [`FrameReader::fill`], where at least `then` more bytes of the same frame follow
    /// `buf` (for the wait hint).
    fn fill_before(&mut self, buf: &mut [u8], then: usize, at: At) -> Result<usize, FrameError> {
        let mut done = 0;
        while done < buf.len() {
            if let Some(h) = self.wait_hint.as_mut() {
                h.before_read(buf.len() - done + then);
            }
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => return Err(FrameError::Io { at, source }),
            }
        }
        Ok(done)
    }
}

/// Hands a whole sealed frame, in its own buffer, to the underlying writer instead of
/// copying it (see [`FrameWriter::set_hand_over`]); returns an empty buffer to seal the
/// next frame in.
pub type HandOver<W> = fn(&mut W, Vec<u8>) -> io::Result<Vec<u8>>;

/// Sealed frames at least this long are handed over whole when a [`HandOver`] is set;
/// shorter ones are copied into the writer's buffer.
pub const HAND_OVER_MIN: usize = 64 << 10;

/// Writes frames, numbering them and adding CRCs (and tags once keyed).
///
/// Output is buffered: call [`FrameWriter::flush`] (the message layer does
/// so after every control message).
pub struct FrameWriter<W: Write> {
    inner: BufWriter<W>,
    next_seq: u64,
    offset: u64,
    max_payload: u32,
    key: Option<TagKey>,
    /// The frame being sealed (keyed sessions): header, payload, tag; reused.
    sealed: Vec<u8>,
    hand_over: Option<HandOver<W>>,
    failed: bool,
}

impl<W: Write> fmt::Debug for FrameWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameWriter")
            .field("offset", &self.offset)
            .field("next_seq", &self.next_seq)
            .field("max_payload", &self.max_payload)
            .field("authenticated", &self.key.is_some())
            .field("failed", &self.failed)
            .finish()
    }
}

/// The sink handed to payload encoders: writes through and computes the
/// payload's CRC32C (one pass; the frame CRC and the epoch digest are derived
/// from it with `crate::crc_combine`). In a keyed session the payload is
/// collected for sealing instead, and its CRC computed only if the epoch digest
/// needs it.
pub(crate) struct PayloadSink<'w, W: Write> {
    out: &'w mut BufWriter<W>,
    /// In a keyed session the payload is collected here, then sealed.
    seal: Option<&'w mut Vec<u8>>,
    /// Whether `crc` is needed (always for plain frames; for sealed ones only for the
    /// epoch digest).
    want_crc: bool,
    crc: u32,
    written: u64,
    error: Option<io::Error>,
}

/// Piece of a sealed payload copied, then CRC'd while it is still in the L1 cache.
const COPY_CRC_CHUNK: usize = 16 << 10;

impl<W: Write> Sink for PayloadSink<'_, W> {
    fn put(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.written += bytes.len() as u64;
        match &mut self.seal {
            Some(buf) if self.want_crc => {
                for piece in bytes.chunks(COPY_CRC_CHUNK) {
                    let start = buf.len();
                    buf.extend_from_slice(piece);
                    self.crc = crc32c::crc32c_append(self.crc, &buf[start..]);
                }
            }
            Some(buf) => buf.extend_from_slice(bytes),
            None => {
                if let Err(e) = self.out.write_all(bytes) {
                    self.error = Some(e);
                    return;
                }
                self.crc = crc32c::crc32c_append(self.crc, bytes);
            }
        }
    }
}

impl<W: Write> FrameWriter<W> {
    /// A writer with the default payload limit.
    pub fn new(inner: W) -> Self {
        Self::with_limit(inner, DEFAULT_MAX_PAYLOAD)
    }

    /// A writer that refuses to produce payloads longer than `max_payload`.
    pub fn with_limit(inner: W, max_payload: u32) -> Self {
        FrameWriter {
            inner: BufWriter::with_capacity(256 << 10, inner),
            next_seq: 0,
            offset: 0,
            max_payload,
            key: None,
            sealed: Vec::new(),
            hand_over: None,
            failed: false,
        }
    }

    /// From now on hand sealed frames of at least [`HAND_OVER_MIN`] bytes to the
    /// underlying writer with `f`, in the buffer they were sealed in (after flushing what
    /// is buffered, so the order stays), instead of copying them: for a writer that
    /// queues owned buffers for another thread. Plain frames are written as before.
    pub fn set_hand_over(&mut self, f: HandOver<W>) {
        self.hand_over = Some(f);
    }

    /// From now on, tag every frame under `key`.
    pub fn set_key(&mut self, key: TagKey) {
        self.key = Some(key);
    }

    /// Whether frames are being tagged.
    pub fn is_authenticated(&self) -> bool {
        self.key.is_some()
    }

    /// Bytes written so far (headers, payloads and trailers).
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    /// Frames written so far (= the next sequence number).
    pub fn frames_written(&self) -> u64 {
        self.next_seq
    }

    /// The payload limit.
    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        self.inner.get_ref()
    }

    /// The underlying writer, mutably: bytes written to it directly bypass this writer's
    /// buffer, so [`FrameWriter::flush`] first.
    pub fn get_mut(&mut self) -> &mut W {
        self.inner.get_mut()
    }

    /// The same stream (sequence, offset, key) continued over another writer: what is
    /// buffered is flushed to the old one first. Used to move a connection's sending to
    /// a sender thread after the handshake.
    pub fn map_inner<W2: Write>(
        self,
        f: impl FnOnce(W) -> W2,
    ) -> Result<FrameWriter<W2>, FrameWriteError> {
        let frame = self.next_seq;
        if self.failed {
            return Err(FrameWriteError::Failed { frame });
        }
        let inner = self.inner.into_inner().map_err(|e| FrameWriteError::Io {
            frame,
            source: e.into_error(),
        })?;
        let capacity = 256 << 10;
        Ok(FrameWriter {
            inner: BufWriter::with_capacity(capacity, f(inner)),
            next_seq: self.next_seq,
            offset: self.offset,
            max_payload: self.max_payload,
            key: self.key,
            sealed: self.sealed,
            hand_over: None,
            failed: false,
        })
    }

    /// Writes one frame with a contiguous payload.
    pub fn write_frame(&mut self, kind: u16, payload: &[u8]) -> Result<(), FrameWriteError> {
        let len = self.check_len(payload.len() as u64)?;
        self.write_frame_with(kind, len, None, |s| s.put(payload))
    }

    /// Flushes buffered frames to the underlying writer.
    pub fn flush(&mut self) -> Result<(), FrameWriteError> {
        let frame = self.next_seq;
        if self.failed {
            return Err(FrameWriteError::Failed { frame });
        }
        self.inner.flush().map_err(|source| {
            self.failed = true;
            FrameWriteError::Io { frame, source }
        })
    }

    pub(crate) fn check_len(&self, len: u64) -> Result<u32, FrameWriteError> {
        match u32::try_from(len) {
            Ok(l) if l <= self.max_payload => Ok(l),
            _ => Err(FrameWriteError::PayloadTooLarge {
                frame: self.next_seq,
                len,
                limit: self.max_payload,
            }),
        }
    }

    /// Writes one frame whose payload of exactly `len` bytes is produced by
    /// `fill`; `digest`, if given, is extended with the payload's CRC32C.
    pub(crate) fn write_frame_with(
        &mut self,
        kind: u16,
        len: u32,
        digest: Option<&mut u32>,
        fill: impl FnOnce(&mut PayloadSink<'_, W>),
    ) -> Result<(), FrameWriteError> {
        let frame = self.next_seq;
        if self.failed {
            return Err(FrameWriteError::Failed { frame });
        }
        self.check_len(u64::from(len))?;
        // Any failure below leaves a partial frame on the stream.
        self.failed = true;
        let header = FrameHeader {
            kind,
            seq: frame,
            payload_len: len,
            flags: if self.key.is_some() { FLAG_TAGGED } else { 0 },
        }
        .encode();
        let io = |source| FrameWriteError::Io { frame, source };
        let keyed = self.key.is_some();
        if keyed {
            // header ‖ payload ‖ tag assembled in one buffer, sealed in place there and
            // written with one call.
            self.sealed.clear();
            // Exactly: a buffer that came back from a hand-over is not doubled.
            self.sealed
                .reserve_exact(HEADER_LEN + len as usize + TAG_LEN);
            self.sealed.extend_from_slice(&header);
        } else {
            self.inner.write_all(&header).map_err(io)?;
        }
        let mut sink = PayloadSink {
            out: &mut self.inner,
            seal: keyed.then_some(&mut self.sealed),
            want_crc: !keyed || digest.is_some(),
            crc: 0,
            written: 0,
            error: None,
        };
        fill(&mut sink);
        let PayloadSink {
            crc,
            written,
            error,
            ..
        } = sink;
        if let Some(e) = error {
            return Err(io(e));
        }
        if written != u64::from(len) {
            return Err(FrameWriteError::LengthMismatch {
                frame,
                announced: len,
                written,
            });
        }
        if let Some(d) = digest {
            *d = crate::crc_combine::crc32c_combine(*d, crc, len as usize);
        }
        let trailer_len = match &self.key {
            Some(key) => {
                // The tag authenticates header and payload: a sealed frame has no CRC.
                let tag = key.seal(frame, &header, &mut self.sealed[HEADER_LEN..]);
                self.sealed.extend_from_slice(&tag);
                match self.hand_over {
                    Some(give) if self.sealed.len() >= HAND_OVER_MIN => {
                        self.inner.flush().map_err(io)?;
                        let whole = std::mem::take(&mut self.sealed);
                        self.sealed = give(self.inner.get_mut(), whole).map_err(io)?;
                    }
                    _ => self.inner.write_all(&self.sealed).map_err(io)?,
                }
                TAG_LEN
            }
            None => {
                let crc =
                    crate::crc_combine::crc32c_combine(crc32c::crc32c(&header), crc, len as usize);
                self.inner.write_all(&crc.to_le_bytes()).map_err(io)?;
                CRC_LEN
            }
        };
        self.failed = false;
        self.next_seq += 1;
        self.offset += (HEADER_LEN + trailer_len) as u64 + u64::from(len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthKey, Nonce};

    fn frames(list: &[(u16, &[u8])]) -> Vec<u8> {
        let mut w = FrameWriter::new(Vec::new());
        for (k, p) in list {
            w.write_frame(*k, p).unwrap();
        }
        w.flush().unwrap();
        w.get_ref().clone()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, FrameError> {
        let mut r = FrameReader::new(bytes);
        let mut out = Vec::new();
        while let Some(f) = r.read_frame()? {
            out.push((f.kind, f.payload.to_vec()));
        }
        Ok(out)
    }

    #[test]
    fn a_stream_continued_over_another_writer_keeps_its_sequence_and_key() {
        let keys = AuthKey::new(&[7; 32])
            .unwrap()
            .session_keys(&Nonce([1; 32]), &Nonce([2; 32]));
        let mut w = FrameWriter::new(Vec::new());
        w.set_key(keys.initiator_to_responder.clone());
        w.write_frame(1, b"before").unwrap();
        // Still buffered: map_inner must flush it to the old writer first.
        let mut first = Vec::new();
        let mut w = w
            .map_inner(|old| {
                first = old;
                Vec::new()
            })
            .unwrap();
        w.write_frame(2, b"after").unwrap();
        w.flush().unwrap();
        assert_eq!(w.frames_written(), 2);
        let mut all = first.clone();
        all.extend_from_slice(w.get_ref());
        let mut r = FrameReader::new(&all[..]);
        r.set_key(keys.initiator_to_responder.clone());
        assert_eq!(r.read_frame().unwrap().unwrap().payload, b"before");
        let f = r.read_frame().unwrap().unwrap();
        assert_eq!((f.kind, f.payload, f.at.frame), (2, &b"after"[..], 1));
        assert!(!first.is_empty(), "buffered frame lost at the switch");
    }

    #[test]
    fn round_trip_and_counters() {
        let bytes = frames(&[(1, b"abc"), (2, b""), (3, &[9u8; 5000])]);
        let mut r = FrameReader::new(&bytes[..]);
        let f = r.read_frame().unwrap().unwrap();
        assert_eq!(
            (f.kind, f.payload, f.at),
            (
                1,
                &b"abc"[..],
                At {
                    frame: 0,
                    offset: 0
                }
            )
        );
        assert!(f.authenticated);
        let f = r.read_frame().unwrap().unwrap();
        assert_eq!(
            f.at,
            At {
                frame: 1,
                offset: 35
            }
        );
        assert!(f.payload.is_empty());
        assert_eq!(r.read_frame().unwrap().unwrap().payload.len(), 5000);
        assert!(r.read_frame().unwrap().is_none());
        assert_eq!(r.bytes_read(), bytes.len() as u64);
        assert_eq!(r.frames_read(), 3);
    }

    #[test]
    fn bad_magic_names_position() {
        let mut bytes = frames(&[(1, b"abc"), (1, b"x")]);
        bytes[35] = b'X';
        let e = read_all(&bytes).unwrap_err();
        assert!(matches!(e, FrameError::BadMagic { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "frame 1 at byte offset 35: bad magic 0x58545657, expected FTVW (0x46545657): not an ftvm-wire stream or out of sync"
        );
    }

    #[test]
    fn version_is_named() {
        let mut bytes = frames(&[(1, b"abc")]);
        bytes[4] = 1;
        let e = read_all(&bytes).unwrap_err();
        assert_eq!(
            e.to_string(),
            "frame 0 at byte offset 0: protocol version 1 not supported (this side speaks 6)"
        );
    }

    #[test]
    fn header_corruption_is_caught_before_length_is_trusted() {
        let mut bytes = frames(&[(1, b"abc")]);
        bytes[19] = 0x7f; // payload length high byte: 2 GiB-ish
        let e = read_all(&bytes).unwrap_err();
        assert!(matches!(e, FrameError::HeaderCrc { .. }), "{e}");
    }

    #[test]
    fn oversized_payload_refused_before_allocation() {
        let h = FrameHeader {
            kind: 1,
            seq: 0,
            payload_len: 2 << 30,
            flags: 0,
        }
        .encode();
        let e = read_all(&h).unwrap_err();
        assert_eq!(
            e.to_string(),
            "frame 0 at byte offset 0: payload length 2 GiB exceeds limit 16 MiB"
        );
    }

    #[test]
    fn payload_corruption_is_crc_mismatch() {
        let mut bytes = frames(&[(1, b"abc")]);
        bytes[HEADER_LEN] ^= 1;
        assert!(matches!(
            read_all(&bytes).unwrap_err(),
            FrameError::FrameCrc { .. }
        ));
    }

    #[test]
    fn lost_and_replayed_frames() {
        let bytes = frames(&[(1, b"a"), (1, b"b"), (1, b"c")]);
        let one = HEADER_LEN + 1 + CRC_LEN;
        // drop frame 1
        let mut lost = bytes[..one].to_vec();
        lost.extend_from_slice(&bytes[2 * one..]);
        let e = read_all(&lost).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("frame 1 at byte offset {one}: sequence 2 after 0: frame lost or replayed")
        );
        // replay frame 0
        let mut replay = bytes[..one].to_vec();
        replay.extend_from_slice(&bytes[..one]);
        assert!(matches!(
            read_all(&replay).unwrap_err(),
            FrameError::Sequence { got: 0, .. }
        ));
        // start mid-stream
        let e = read_all(&bytes[one..]).unwrap_err();
        assert!(
            e.to_string()
                .contains("sequence 1 as the first frame, expected 0"),
            "{e}"
        );
    }

    #[test]
    fn truncation_everywhere() {
        let bytes = frames(&[(1, b"abcdef")]);
        for cut in 1..bytes.len() {
            let e = read_all(&bytes[..cut]).unwrap_err();
            let FrameError::Truncated {
                part, got, want, ..
            } = e
            else {
                panic!("cut {cut}: {e}");
            };
            let expect = if cut < HEADER_LEN {
                ("header", cut, HEADER_LEN)
            } else if cut < HEADER_LEN + 6 {
                ("payload", cut - HEADER_LEN, 6)
            } else {
                ("trailer", cut - HEADER_LEN - 6, 4)
            };
            assert_eq!((part, got, want), expect, "cut {cut}");
        }
        let e = read_all(&bytes[..12]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "frame 0 at byte offset 0: truncated: connection closed after 12 of 28 header bytes"
        );
    }

    #[test]
    fn reader_stays_failed() {
        let mut bytes = frames(&[(1, b"a"), (1, b"b")]);
        bytes[HEADER_LEN] ^= 1;
        let mut r = FrameReader::new(&bytes[..]);
        assert!(r.read_frame().is_err());
        assert!(matches!(r.read_frame(), Err(FrameError::Failed { .. })));
    }

    #[test]
    fn flags_must_be_known() {
        let mut h = FrameHeader {
            kind: 1,
            seq: 0,
            payload_len: 0,
            flags: 0,
        }
        .encode();
        h[20] = 4;
        let crc = crc32c::crc32c(&h[..24]);
        h[24..28].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            read_all(&h).unwrap_err(),
            FrameError::BadFlags { flags: 4, .. }
        ));
    }

    #[test]
    fn tagged_frames() {
        let key = AuthKey::new(&[5u8; 32]).unwrap();
        let keys = key.session_keys(&Nonce([1; 32]), &Nonce([2; 32]));
        let mut w = FrameWriter::new(Vec::new());
        w.set_key(keys.initiator_to_responder.clone());
        w.write_frame(7, b"payload").unwrap();
        w.write_frame(7, b"second").unwrap();
        w.flush().unwrap();
        let bytes = w.get_ref().clone();

        let mut r = FrameReader::new(&bytes[..]);
        r.set_key(keys.initiator_to_responder.clone());
        assert_eq!(r.read_frame().unwrap().unwrap().payload, b"payload");
        assert_eq!(r.read_frame().unwrap().unwrap().payload, b"second");

        // Wrong direction key.
        let mut r = FrameReader::new(&bytes[..]);
        r.set_key(keys.responder_to_initiator.clone());
        assert!(matches!(
            r.read_frame(),
            Err(FrameError::TagMismatch { .. })
        ));

        // Not keyed but tagged.
        assert!(matches!(
            read_all(&bytes),
            Err(FrameError::TagUnexpected { .. })
        ));

        // Keyed but untagged.
        let plain = frames(&[(7, b"payload")]);
        let mut r = FrameReader::new(&plain[..]);
        r.set_key(keys.initiator_to_responder.clone());
        assert!(matches!(r.read_frame(), Err(FrameError::TagMissing { .. })));

        // Keyed reader accepts an untagged Error, flagged, then stops.
        let plain = frames(&[(UNTAGGED_ERROR_KIND, b"xx"), (7, b"more")]);
        let mut r = FrameReader::new(&plain[..]);
        r.set_key(keys.initiator_to_responder.clone());
        assert!(!r.read_frame().unwrap().unwrap().authenticated);
        assert!(matches!(r.read_frame(), Err(FrameError::Failed { .. })));

        // Forgery: a changed payload byte (there is no CRC to fix up: the tag covers it).
        let mut forged = bytes.clone();
        forged[HEADER_LEN] ^= 0x20;
        let mut r = FrameReader::new(&forged[..]);
        r.set_key(keys.initiator_to_responder.clone());
        assert!(matches!(
            r.read_frame(),
            Err(FrameError::TagMismatch { .. })
        ));
    }

    #[test]
    fn sealed_frames_carry_no_crc_and_the_tag_catches_every_corruption() {
        let keys = AuthKey::new(&[5u8; 32])
            .unwrap()
            .session_keys(&Nonce([1; 32]), &Nonce([2; 32]));
        let payload: Vec<u8> = (0..100u8).collect();
        let mut w = FrameWriter::new(Vec::new());
        w.set_key(keys.initiator_to_responder.clone());
        w.write_frame(7, &payload).unwrap();
        w.write_frame(7, b"next").unwrap();
        w.flush().unwrap();
        let bytes = w.get_ref().clone();
        let flen = HEADER_LEN + payload.len() + TAG_LEN;
        // header ‖ ciphertext ‖ tag, nothing else.
        assert_eq!(bytes.len(), flen + HEADER_LEN + 4 + TAG_LEN);
        assert_eq!(w.bytes_written(), bytes.len() as u64);
        let read = |stream: &[u8]| {
            let mut r = FrameReader::new(stream);
            r.set_key(keys.initiator_to_responder.clone());
            let first = r.read_frame().map(|f| f.map(|f| f.payload.to_vec()));
            (first, r.bytes_read())
        };
        let (first, used) = read(&bytes);
        assert_eq!(first.unwrap().unwrap(), payload);
        assert_eq!(used, flen as u64);
        // Every single bit flip in payload or tag (in transit, nothing fixed up) is refused.
        for i in HEADER_LEN..flen {
            for bit in [0x01u8, 0x80] {
                let mut bad = bytes.clone();
                bad[i] ^= bit;
                let e = read(&bad).0.unwrap_err();
                assert!(matches!(e, FrameError::TagMismatch { .. }), "byte {i}: {e}");
                assert!(e.to_string().contains("corrupted in transit"), "{e}");
            }
        }
        // Cut inside the tag: a truncated trailer of 16 bytes.
        let e = read(&bytes[..flen - 3]).0.unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::Truncated {
                    part: "trailer",
                    got: 13,
                    want: TAG_LEN,
                    ..
                }
            ),
            "{e}"
        );
        // A version-3 sealed frame (tag then a CRC) and a version-5 one (AES-256-GCM)
        // are refused by their version.
        for old in [3u8, 5] {
            let mut v = bytes[..flen].to_vec();
            v[4] = old;
            let e = read(&v).0.unwrap_err();
            assert!(
                matches!(e, FrameError::UnsupportedVersion { version, .. } if version == u16::from(old)),
                "{e}"
            );
        }
    }

    /// Re-encodes frame `f` of a keyed stream (payload `len` bytes) with sequence number
    /// `seq` and every CRC fixed up, as an attacker on the wire can.
    fn reseq(f: &[u8], len: usize, seq: u64) -> Vec<u8> {
        let mut v = f.to_vec();
        v[8..16].copy_from_slice(&seq.to_le_bytes());
        let hc = crc32c::crc32c(&v[..24]);
        v[24..28].copy_from_slice(&hc.to_le_bytes());
        assert_eq!(
            v.len(),
            HEADER_LEN + len + TAG_LEN,
            "a sealed frame has no CRC"
        );
        v
    }

    #[test]
    fn sealed_frames_are_confidential_and_refuse_replay_and_reorder() {
        let key = AuthKey::new(&[5u8; 32]).unwrap();
        let keys = key.session_keys(&Nonce([1; 32]), &Nonce([2; 32]));
        let secret = b"guest memory: password=hunter2 ".repeat(8);
        let mut w = FrameWriter::new(Vec::new());
        w.set_key(keys.initiator_to_responder.clone());
        w.write_frame(7, &secret).unwrap();
        w.write_frame(7, &secret).unwrap();
        w.flush().unwrap();
        let bytes = w.get_ref().clone();
        // Confidential: no plaintext on the wire (not even a 8-byte piece of it).
        assert!(
            !bytes.windows(8).any(|x| secret.windows(8).any(|y| x == y)),
            "plaintext visible in a sealed stream"
        );
        let flen = HEADER_LEN + secret.len() + TAG_LEN;
        assert_eq!(bytes.len(), 2 * flen);
        let (f0, f1) = (&bytes[..flen], &bytes[flen..]);
        let open = |stream: &[u8]| {
            let mut r = FrameReader::new(stream);
            r.set_key(keys.initiator_to_responder.clone());
            let mut out = Vec::new();
            loop {
                match r.read_frame() {
                    Ok(Some(f)) => out.push(f.payload.to_vec()),
                    Ok(None) => return Ok(out),
                    Err(e) => return Err(e),
                }
            }
        };
        assert_eq!(open(&bytes).unwrap(), vec![secret.clone(), secret.clone()]);
        // Replayed frame 0 in place of frame 1: the sequence check refuses it.
        let replay = [f0, f0].concat();
        let e = open(&replay).unwrap_err();
        assert!(matches!(e, FrameError::Sequence { got: 0, .. }), "{e}");
        // ... and with its sequence number rewritten to 1 (CRCs fixed up): the tag refuses it.
        let replay = [f0, &reseq(f0, secret.len(), 1)].concat();
        let e = open(&replay).unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::TagMismatch {
                    at: At { frame: 1, .. }
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("replayed"), "{e}");
        // Reordered (frame 1 first, renumbered 0): refused at frame 0.
        let reordered = [&reseq(f1, secret.len(), 0)[..], &reseq(f0, secret.len(), 1)].concat();
        let e = open(&reordered).unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::TagMismatch {
                    at: At { frame: 0, .. }
                }
            ),
            "{e}"
        );
        // A changed kind in the header (CRCs fixed up): the header is authenticated too.
        let mut k = f0.to_vec();
        k[6] = 8;
        let e = open(&reseq(&k, secret.len(), 0)).unwrap_err();
        assert!(matches!(e, FrameError::TagMismatch { .. }), "{e}");
    }

    static HANDED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn hand_to_vec(out: &mut Vec<u8>, whole: Vec<u8>) -> io::Result<Vec<u8>> {
        HANDED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        out.extend_from_slice(&whole);
        Ok(Vec::new())
    }

    #[test]
    fn sealed_frames_handed_over_whole_keep_their_bytes_and_order() {
        let keys = AuthKey::new(&[5u8; 32])
            .unwrap()
            .session_keys(&Nonce([1; 32]), &Nonce([2; 32]));
        let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 13) as u8).collect();
        let list: [(u16, &[u8]); 5] = [
            (1, b"small"),
            (2, &big),
            (3, b"between"),
            (4, &big[..HAND_OVER_MIN]),
            (5, b"last"),
        ];
        let write = |hand: bool| {
            let mut w = FrameWriter::new(Vec::new());
            w.set_key(keys.initiator_to_responder.clone());
            if hand {
                w.set_hand_over(hand_to_vec);
            }
            for (k, p) in list {
                w.write_frame(k, p).unwrap();
            }
            w.flush().unwrap();
            (w.get_ref().clone(), w.bytes_written())
        };
        let before = HANDED.load(std::sync::atomic::Ordering::SeqCst);
        let (handed, n) = write(true);
        // The two large frames went over whole, the small ones through the buffer.
        assert_eq!(HANDED.load(std::sync::atomic::Ordering::SeqCst) - before, 2);
        let (copied, _) = write(false);
        assert_eq!(n, handed.len() as u64);
        assert!(handed == copied, "handing over changed the stream");
        let mut r = FrameReader::new(&handed[..]);
        r.set_key(keys.initiator_to_responder.clone());
        for (k, p) in list {
            let f = r.read_frame().unwrap().unwrap();
            assert_eq!((f.kind, f.payload), (k, p));
        }
        assert!(r.read_frame().unwrap().is_none());
    }

    /// Hands out at most `step` bytes per read and counts what it handed out.
    struct Dribble<'a> {
        bytes: &'a [u8],
        pos: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        step: usize,
    }

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let at = self.pos.load(std::sync::atomic::Ordering::SeqCst);
            let n = buf.len().min(self.step).min(self.bytes.len() - at);
            buf[..n].copy_from_slice(&self.bytes[at..at + n]);
            self.pos.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
            Ok(n)
        }
    }

    /// Records (stream position, bytes promised) at every hint.
    struct Recorder {
        pos: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        seen: std::sync::Arc<std::sync::Mutex<Vec<(usize, usize)>>>,
    }

    impl ReadWaitHint for Recorder {
        fn before_read(&mut self, left: usize) {
            let at = self.pos.load(std::sync::atomic::Ordering::SeqCst);
            self.seen.lock().unwrap().push((at, left));
        }
    }

    #[test]
    fn the_wait_hint_promises_what_the_frame_still_holds_and_never_more() {
        let keys = AuthKey::new(&[5u8; 32])
            .unwrap()
            .session_keys(&Nonce([1; 32]), &Nonce([2; 32]));
        let big = vec![0x5au8; (1 << 20) + 7];
        let list: [(u16, &[u8]); 4] = [(1, b"small"), (2, &big), (3, b""), (4, &big[..300 << 10])];
        for keyed in [false, true] {
            let mut w = FrameWriter::new(Vec::new());
            if keyed {
                w.set_key(keys.initiator_to_responder.clone());
            }
            // Where each frame ends in the stream.
            let mut ends = Vec::new();
            for (k, p) in list {
                w.write_frame(k, p).unwrap();
                w.flush().unwrap();
                ends.push(w.get_ref().len());
            }
            let bytes = w.get_ref().clone();
            let trailer = if keyed { TAG_LEN } else { CRC_LEN };
            for step in [1000, 64 << 10, usize::MAX] {
                let pos = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
                let mut r = FrameReader::new(Dribble {
                    bytes: &bytes,
                    pos: pos.clone(),
                    step,
                });
                if keyed {
                    r.set_key(keys.initiator_to_responder.clone());
                }
                r.set_wait_hint(Box::new(Recorder {
                    pos,
                    seen: seen.clone(),
                }));
                for (k, p) in list {
                    let f = r.read_frame().unwrap().unwrap();
                    assert_eq!((f.kind, f.payload), (k, p));
                }
                let seen = seen.lock().unwrap().clone();
                assert!(!seen.is_empty());
                for &(at, left) in &seen {
                    // The frame being read at `at` ends at the first end past it.
                    let end = *ends.iter().find(|&&e| e > at).unwrap();
                    assert!(
                        left >= 1 && at + left <= end,
                        "keyed {keyed}, step {step}: at byte {at} the hint promised {left} \
                         bytes but the frame ends at {end}"
                    );
                }
                // A large payload is announced whole, with its trailer: the first read of
                // the 1 MiB frame's payload is told all of it.
                let start = ends[0] + HEADER_LEN;
                assert!(
                    seen.contains(&(start, big.len() + trailer)),
                    "keyed {keyed}, step {step}: no hint of the whole payload at {start}: {:?}",
                    &seen[..seen.len().min(8)]
                );
            }
        }
    }

    #[test]
    fn writer_refuses_oversize() {
        let mut w = FrameWriter::with_limit(Vec::new(), 10);
        assert!(matches!(
            w.write_frame(1, &[0; 11]),
            Err(FrameWriteError::PayloadTooLarge {
                len: 11,
                limit: 10,
                ..
            })
        ));
        w.write_frame(1, &[0; 10]).unwrap();
    }
}
