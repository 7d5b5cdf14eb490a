//! Message-level streaming over frames: [`MessageWriter`] batches pages and
//! disk writes into frames straight from borrowed slices and keeps the
//! running epoch totals for `EpochCommit`; [`MessageReader`] decodes frames
//! into [`Message`]s that borrow its reusable buffer.

use std::borrow::Cow;
use std::io::{Read, Write};

use crate::codec::Sink;

mod pages_in_place;
use crate::frame::{
    At, FrameError, FrameReader, FrameWriteError, FrameWriter, DEFAULT_MAX_PAYLOAD,
};
use crate::message::{
    DecodeError, EpochCommit, ErrorCode, Kind, Message, PAGE_SIZE, RUN_DESCRIPTOR_LEN, SECTOR_SIZE,
};
pub use pages_in_place::{pages_frame_len, PagesInPlace};

/// Default amount of page data per `Pages` frame (1 MiB = 256 pages).
pub const DEFAULT_BATCH_BYTES: usize = 1 << 20;

/// Errors sending messages.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Writing the frame failed.
    #[error(transparent)]
    Frame(#[from] FrameWriteError),
    /// The message is not valid (a caller bug); nothing was sent for it.
    #[error("cannot send {kind}: {source}")]
    Invalid {
        /// Message kind.
        kind: Kind,
        /// What is wrong.
        #[source]
        source: DecodeError,
    },
    /// One item handed to a streaming send is invalid (a caller bug).
    #[error("cannot send {kind}: item {index}: {problem}")]
    InvalidItem {
        /// Message kind.
        kind: Kind,
        /// Index of the item in the caller's iterator.
        index: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// Epoch data sent while no epoch is open.
    #[error("cannot send {kind} for epoch {epoch}: no epoch is open (begin_epoch first)")]
    NoOpenEpoch {
        /// Message kind.
        kind: Kind,
        /// Epoch of the message.
        epoch: u64,
    },
    /// Epoch data for another epoch than the open one.
    #[error("cannot send {kind} for epoch {epoch} while epoch {open} is open")]
    WrongEpoch {
        /// Message kind.
        kind: Kind,
        /// Epoch of the message.
        epoch: u64,
        /// The open epoch.
        open: u64,
    },
    /// `EpochBegin` while an epoch is still open.
    #[error("cannot begin epoch {epoch}: epoch {open} is still open (commit it first)")]
    EpochStillOpen {
        /// Requested epoch.
        epoch: u64,
        /// The open epoch.
        open: u64,
    },
    /// [`MessageWriter::map_inner`] while an epoch is open.
    #[error("cannot move the stream to another writer while epoch {open} is open")]
    OpenAtSwitch {
        /// The open epoch.
        open: u64,
    },
    /// `EpochCommit` must be produced by [`MessageWriter::commit_epoch`].
    #[error("EpochCommit is computed by commit_epoch(), not sent by hand")]
    ManualCommit,
    /// The configured limits leave no room for one page or sector.
    #[error("payload limit {limit} too small to carry one {unit}-byte unit")]
    LimitTooSmall {
        /// Configured payload limit.
        limit: u32,
        /// Unit size.
        unit: usize,
    },
}

/// Errors receiving messages.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The frame layer rejected the stream.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A verified frame carries an invalid message.
    #[error("{at}: invalid {} payload: {source}", kind_name(*.kind))]
    Decode {
        /// Position.
        at: At,
        /// Frame kind.
        kind: u16,
        /// What is wrong.
        #[source]
        source: DecodeError,
    },
    /// In an authenticated session the peer sent an untagged `Error` frame
    /// (typically: its key differs). Its content is unverified.
    #[error("{at}: peer sent an unauthenticated error (keys probably differ): {code}: {message}")]
    UnauthenticatedError {
        /// Position.
        at: At,
        /// Code claimed by the peer.
        code: ErrorCode,
        /// Text claimed by the peer.
        message: String,
    },
}

fn kind_name(kind: u16) -> String {
    match Kind::from_u16(kind) {
        Some(k) => k.name().to_string(),
        None => format!("kind {kind:#06x}"),
    }
}

impl RecvError {
    /// The code to put in the `Error` message answering this failure.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            RecvError::Frame(FrameError::UnsupportedVersion { .. }) => ErrorCode::Version,
            RecvError::Frame(
                FrameError::TagMissing { .. }
                | FrameError::TagUnexpected { .. }
                | FrameError::TagMismatch { .. },
            )
            | RecvError::UnauthenticatedError { .. } => ErrorCode::AuthFailed,
            RecvError::Frame(FrameError::Io { .. }) => ErrorCode::Internal,
            RecvError::Frame(_) | RecvError::Decode { .. } => ErrorCode::Malformed,
        }
    }
}

/// Receives messages. Each message borrows the reader's buffer until the
/// next call to [`MessageReader::recv`].
#[derive(Debug)]
pub struct MessageReader<R> {
    frames: FrameReader<R>,
    decode_failed: bool,
}

impl<R: Read> MessageReader<R> {
    /// A reader with the default payload limit.
    pub fn new(inner: R) -> Self {
        Self::from_frames(FrameReader::with_limit(inner, DEFAULT_MAX_PAYLOAD))
    }

    /// Wraps a frame reader (to choose the payload limit).
    pub fn from_frames(frames: FrameReader<R>) -> Self {
        MessageReader {
            frames,
            decode_failed: false,
        }
    }

    /// The frame layer (counters, key).
    pub fn frames(&self) -> &FrameReader<R> {
        &self.frames
    }

    /// The frame layer, mutably.
    pub fn frames_mut(&mut self) -> &mut FrameReader<R> {
        &mut self.frames
    }

    /// Receives the next message; `Ok(None)` when the peer closed the
    /// connection cleanly between frames.
    pub fn recv(&mut self) -> Result<Option<Message<'_>>, RecvError> {
        if self.decode_failed {
            // Nothing after an invalid message can be trusted.
            self.frames.mark_failed();
        }
        let Some(frame) = self.frames.read_frame()? else {
            return Ok(None);
        };
        let decoded = decode_frame(frame.kind, frame.at, frame.payload, frame.authenticated);
        if let Err(RecvError::Decode { .. }) = decoded {
            self.decode_failed = true;
        }
        decoded.map(Some)
    }

    /// The frame layer, for reading frames elsewhere (e.g. on another thread, see
    /// [`FrameReader::read_frame_owned`] and [`decode_frame`]).
    pub fn into_frames(self) -> FrameReader<R> {
        self.frames
    }
}

/// The message in a verified frame, as [`MessageReader::recv`] returns it: an invalid
/// payload is [`RecvError::Decode`], an unauthenticated `Error` frame (see
/// [`Frame::authenticated`](crate::Frame)) is [`RecvError::UnauthenticatedError`]. After
/// an error nothing later on the stream may be trusted.
pub fn decode_frame(
    kind: u16,
    at: At,
    payload: &[u8],
    authenticated: bool,
) -> Result<Message<'_>, RecvError> {
    let msg =
        Message::decode(kind, payload).map_err(|source| RecvError::Decode { at, kind, source })?;
    if !authenticated {
        let (code, message) = match &msg {
            Message::Error { code, message } => (*code, message.to_string()),
            other => (ErrorCode::Protocol, other.summary()),
        };
        return Err(RecvError::UnauthenticatedError { at, code, message });
    }
    Ok(msg)
}

/// Sends messages and keeps the open epoch's totals.
#[derive(Debug)]
pub struct MessageWriter<W: Write> {
    frames: FrameWriter<W>,
    open: Option<EpochCommit>,
    batch_bytes: usize,
    table: Vec<u8>,
}

impl<W: Write> MessageWriter<W> {
    /// A writer with default limits.
    pub fn new(inner: W) -> Self {
        Self::from_frames(FrameWriter::with_limit(inner, DEFAULT_MAX_PAYLOAD))
    }

    /// Wraps a frame writer (to choose the payload limit).
    pub fn from_frames(frames: FrameWriter<W>) -> Self {
        MessageWriter {
            frames,
            open: None,
            batch_bytes: DEFAULT_BATCH_BYTES,
            table: Vec::new(),
        }
    }

    /// Sets how much page or disk data goes into one frame (rounded down to
    /// whole pages; capped by the payload limit).
    pub fn set_batch_bytes(&mut self, bytes: usize) {
        self.batch_bytes = bytes;
    }

    /// The same stream continued over another writer (see [`FrameWriter::map_inner`]);
    /// only between epochs.
    pub fn map_inner<W2: Write>(
        self,
        f: impl FnOnce(W) -> W2,
    ) -> Result<MessageWriter<W2>, SendError> {
        if let Some(open) = self.open {
            return Err(SendError::OpenAtSwitch { open: open.epoch });
        }
        Ok(MessageWriter {
            frames: self.frames.map_inner(f)?,
            open: None,
            batch_bytes: self.batch_bytes,
            table: self.table,
        })
    }

    /// The frame layer (counters, key).
    pub fn frames(&self) -> &FrameWriter<W> {
        &self.frames
    }

    /// The frame layer, mutably (e.g. to write raw frames in tests).
    pub fn frames_mut(&mut self) -> &mut FrameWriter<W> {
        &mut self.frames
    }

    /// The open epoch, if any.
    pub fn open_epoch(&self) -> Option<u64> {
        self.open.map(|o| o.epoch)
    }

    /// Flushes buffered frames.
    pub fn flush(&mut self) -> Result<(), SendError> {
        Ok(self.frames.flush()?)
    }

    /// Sends one message. Epoch data must belong to the open epoch and is
    /// added to its totals; control messages are flushed at once.
    pub fn send(&mut self, msg: &Message<'_>) -> Result<(), SendError> {
        let kind = msg.kind();
        msg.validate()
            .map_err(|source| SendError::Invalid { kind, source })?;
        match msg {
            Message::EpochBegin { epoch } => {
                if let Some(open) = self.open {
                    return Err(SendError::EpochStillOpen {
                        epoch: *epoch,
                        open: open.epoch,
                    });
                }
            }
            Message::EpochCommit(_) => return Err(SendError::ManualCommit),
            _ => {}
        }
        if let Some(epoch) = msg.data_epoch() {
            self.check_open(kind, epoch)?;
        }
        self.send_raw(msg)?;
        if let Message::EpochBegin { epoch } = msg {
            self.open = Some(EpochCommit {
                epoch: *epoch,
                ..EpochCommit::default()
            });
        }
        Ok(())
    }

    /// Sends a (valid) message with no protocol-state checks: epoch data is
    /// still added to the open epoch's totals if one is open. For tests and
    /// fault injection. Control messages are flushed.
    pub fn send_raw(&mut self, msg: &Message<'_>) -> Result<(), SendError> {
        let kind = msg.kind();
        msg.validate()
            .map_err(|source| SendError::Invalid { kind, source })?;
        let len = self.frames.check_len(msg.encoded_len())?;
        let data = kind.is_epoch_data();
        // A sealed session's epochs carry digest 0: every frame's tag already covers its
        // payload, so no CRC pass is spent on it (docs/protocol.md, version 5).
        let sealed = self.frames.is_authenticated();
        let digest = match (&mut self.open, data && !sealed) {
            (Some(open), true) => Some(&mut open.digest),
            _ => None,
        };
        self.frames
            .write_frame_with(kind as u16, len, digest, |s| msg.encode(s))?;
        if data {
            if let Some(open) = &mut self.open {
                open.messages = open.messages.wrapping_add(1);
                open.pages += msg.page_count();
                open.bytes += u64::from(len);
            }
        } else {
            self.frames.flush()?;
        }
        Ok(())
    }

    fn check_open(&self, kind: Kind, epoch: u64) -> Result<(), SendError> {
        match self.open {
            None => Err(SendError::NoOpenEpoch { kind, epoch }),
            Some(o) if o.epoch != epoch => Err(SendError::WrongEpoch {
                kind,
                epoch,
                open: o.epoch,
            }),
            Some(_) => Ok(()),
        }
    }

    fn require_open(&self, kind: Kind) -> Result<u64, SendError> {
        self.open
            .map(|o| o.epoch)
            .ok_or(SendError::NoOpenEpoch { kind, epoch: 0 })
    }

    /// Opens epoch `epoch` (sends `EpochBegin`).
    pub fn begin_epoch(&mut self, epoch: u64) -> Result<(), SendError> {
        self.send(&Message::EpochBegin { epoch })
    }

    /// Closes the open epoch: sends `EpochCommit` with its totals, flushes,
    /// and returns the totals.
    pub fn commit_epoch(&mut self) -> Result<EpochCommit, SendError> {
        let commit = self.open.ok_or(SendError::NoOpenEpoch {
            kind: Kind::EpochCommit,
            epoch: 0,
        })?;
        self.send_raw(&Message::EpochCommit(commit))?;
        self.open = None;
        Ok(commit)
    }

    /// Sends the state blob of the open epoch.
    pub fn send_state(&mut self, blob: &[u8]) -> Result<(), SendError> {
        let epoch = self.require_open(Kind::State)?;
        self.send(&Message::State { epoch, blob })
    }

    /// Sends output of stream `stream` for the open epoch, split over several
    /// messages if longer than a frame. Empty output sends nothing.
    pub fn send_output(&mut self, stream: u16, bytes: &[u8]) -> Result<(), SendError> {
        let epoch = self.require_open(Kind::Outputs)?;
        let room = (self.frames.max_payload() as usize).saturating_sub(14);
        if room == 0 {
            return Err(SendError::LimitTooSmall {
                limit: self.frames.max_payload(),
                unit: 1,
            });
        }
        for chunk in bytes.chunks(room) {
            self.send(&Message::Outputs {
                epoch,
                stream,
                bytes: chunk,
            })?;
        }
        Ok(())
    }

    /// Largest data bytes per frame for `unit`-sized items with `per_item`
    /// bytes of descriptor each, so that the payload fits the limit.
    fn budget(&self, unit: usize, per_item: usize) -> Result<usize, SendError> {
        let limit = self.frames.max_payload() as usize;
        let items = limit.saturating_sub(12) / (unit + per_item);
        let budget = (items * unit).min(self.batch_bytes / unit * unit);
        if budget == 0 {
            return Err(SendError::LimitTooSmall {
                limit: self.frames.max_payload(),
                unit,
            });
        }
        Ok(budget)
    }

    /// Streams pages of the open epoch: `(gpa, data)` with `gpa` page-aligned
    /// and `data` a non-empty multiple of [`PAGE_SIZE`] (one page or a run).
    /// Contiguous input is coalesced into runs and batched into frames of
    /// about [`DEFAULT_BATCH_BYTES`]; data is written from the borrowed
    /// slices without intermediate copies. Returns the number of pages sent.
    ///
    /// On an invalid item an error is returned; earlier batches may already
    /// be on the wire, so the epoch must not be committed (close the
    /// connection).
    pub fn send_pages<'p, I>(&mut self, pages: I) -> Result<u64, SendError>
    where
        I: IntoIterator<Item = (u64, &'p [u8])>,
    {
        let epoch = self.require_open(Kind::Pages)?;
        let budget = self.budget(PAGE_SIZE, RUN_DESCRIPTOR_LEN)?;
        let mut runs: Vec<(u64, u32)> = Vec::new();
        let mut slices: Vec<&'p [u8]> = Vec::new();
        let mut batch = 0usize;
        let mut total = 0u64;
        for (i, (gpa, data)) in pages.into_iter().enumerate() {
            check_item(Kind::Pages, i, gpa, data.len() as u64, PAGE_SIZE, "gpa")?;
            let mut off = 0;
            while off < data.len() {
                if batch == budget {
                    self.emit_pages(epoch, &runs, &slices, batch)?;
                    runs.clear();
                    slices.clear();
                    batch = 0;
                }
                let take = (budget - batch).min(data.len() - off);
                let g = gpa + off as u64;
                let n = (take / PAGE_SIZE) as u32;
                match runs.last_mut() {
                    Some((rg, rn)) if *rg + u64::from(*rn) * PAGE_SIZE as u64 == g => *rn += n,
                    _ => runs.push((g, n)),
                }
                slices.push(&data[off..off + take]);
                batch += take;
                off += take;
                total += u64::from(n);
            }
        }
        if batch > 0 {
            self.emit_pages(epoch, &runs, &slices, batch)?;
        }
        Ok(total)
    }

    /// Streams page runs `(gpa, npages)` of the open epoch whose contents lie back to back
    /// in `data` (a bounce buffer): the same frames as [`MessageWriter::send_pages`] with
    /// one item per run, but each frame's data goes to the writer in one piece (a large
    /// write passes the frame writer's buffer by). Returns the number of pages sent.
    pub fn send_page_runs(&mut self, runs: &[(u64, u32)], data: &[u8]) -> Result<u64, SendError> {
        let epoch = self.require_open(Kind::Pages)?;
        let budget = self.budget(PAGE_SIZE, RUN_DESCRIPTOR_LEN)?;
        let mut need = 0u64;
        for (i, &(gpa, n)) in runs.iter().enumerate() {
            let len = u64::from(n) * PAGE_SIZE as u64;
            check_item(Kind::Pages, i, gpa, len, PAGE_SIZE, "gpa")?;
            need += len;
        }
        if need != data.len() as u64 {
            return Err(SendError::InvalidItem {
                kind: Kind::Pages,
                index: runs.len(),
                problem: format!("runs hold {need} bytes, data {} bytes", data.len()),
            });
        }
        let mut frame_runs: Vec<(u64, u32)> = Vec::new();
        let mut start = 0usize;
        let mut batch = 0usize;
        for &(gpa, n) in runs {
            let len = n as usize * PAGE_SIZE;
            let mut off = 0;
            while off < len {
                if batch == budget {
                    self.emit_pages(epoch, &frame_runs, &[&data[start..start + batch]], batch)?;
                    frame_runs.clear();
                    start += batch;
                    batch = 0;
                }
                let take = (budget - batch).min(len - off);
                let g = gpa + off as u64;
                let pages = (take / PAGE_SIZE) as u32;
                match frame_runs.last_mut() {
                    Some((rg, rn)) if *rg + u64::from(*rn) * PAGE_SIZE as u64 == g => *rn += pages,
                    _ => frame_runs.push((g, pages)),
                }
                batch += take;
                off += take;
            }
        }
        if batch > 0 {
            self.emit_pages(epoch, &frame_runs, &[&data[start..start + batch]], batch)?;
        }
        Ok(need / PAGE_SIZE as u64)
    }

    fn emit_pages(
        &mut self,
        epoch: u64,
        runs: &[(u64, u32)],
        slices: &[&[u8]],
        data_len: usize,
    ) -> Result<(), SendError> {
        self.table.clear();
        for (gpa, n) in runs {
            self.table.put_u64(*gpa);
            self.table.put_u32(*n);
        }
        let pages: u64 = runs.iter().map(|r| u64::from(r.1)).sum();
        let len = 12 + self.table.len() + data_len;
        self.emit(Kind::Pages, len, pages, |s, table| {
            s.put_u64(epoch);
            s.put_u32(runs.len() as u32);
            s.put(table);
            for sl in slices {
                s.put(sl);
            }
        })
    }

    /// Writes one epoch data frame of `len` bytes and accounts it.
    fn emit(
        &mut self,
        kind: Kind,
        len: usize,
        pages: u64,
        fill: impl FnOnce(&mut dyn Sink, &[u8]),
    ) -> Result<(), SendError> {
        let len = self.frames.check_len(len as u64)?;
        let MessageWriter {
            frames,
            open,
            table,
            ..
        } = self;
        let open = open
            .as_mut()
            .ok_or(SendError::NoOpenEpoch { kind, epoch: 0 })?;
        // Sealed: no digest (see `send_raw`).
        let digest = (!frames.is_authenticated()).then_some(&mut open.digest);
        frames.write_frame_with(kind as u16, len, digest, |s| fill(s, table))?;
        open.messages = open.messages.wrapping_add(1);
        open.pages += pages;
        open.bytes += u64::from(len);
        Ok(())
    }

    /// Sends zero-page runs `(gpa, npages)` of the open epoch, coalescing
    /// adjacent runs and batching descriptors into frames. Returns pages sent.
    pub fn send_zero_pages<I>(&mut self, runs: I) -> Result<u64, SendError>
    where
        I: IntoIterator<Item = (u64, u32)>,
    {
        let epoch = self.require_open(Kind::ZeroPages)?;
        let max_runs = (self.frames.max_payload() as usize).saturating_sub(12) / RUN_DESCRIPTOR_LEN;
        if max_runs == 0 {
            return Err(SendError::LimitTooSmall {
                limit: self.frames.max_payload(),
                unit: RUN_DESCRIPTOR_LEN,
            });
        }
        let mut batch: Vec<(u64, u32)> = Vec::new();
        let mut total = 0u64;
        for (i, (gpa, n)) in runs.into_iter().enumerate() {
            check_item(
                Kind::ZeroPages,
                i,
                gpa,
                u64::from(n) * PAGE_SIZE as u64,
                PAGE_SIZE,
                "gpa",
            )?;
            match batch.last_mut() {
                Some((rg, rn))
                    if *rg + u64::from(*rn) * PAGE_SIZE as u64 == gpa
                        && rn.checked_add(n).is_some() =>
                {
                    *rn += n
                }
                _ => {
                    if batch.len() == max_runs {
                        self.emit_zero(epoch, &batch)?;
                        batch.clear();
                    }
                    batch.push((gpa, n));
                }
            }
            total += u64::from(n);
        }
        if !batch.is_empty() {
            self.emit_zero(epoch, &batch)?;
        }
        Ok(total)
    }

    fn emit_zero(&mut self, epoch: u64, runs: &[(u64, u32)]) -> Result<(), SendError> {
        self.table.clear();
        for (gpa, n) in runs {
            self.table.put_u64(*gpa);
            self.table.put_u32(*n);
        }
        let pages: u64 = runs.iter().map(|r| u64::from(r.1)).sum();
        let len = 12 + self.table.len();
        self.emit(Kind::ZeroPages, len, pages, |s, table| {
            s.put_u64(epoch);
            s.put_u32(runs.len() as u32);
            s.put(table);
        })
    }

    /// Streams disk writes `(byte offset, data)` to disk `disk` of the open epoch
    /// (offsets and lengths multiples of [`SECTOR_SIZE`]); large writes are split,
    /// small ones batched. Returns the number of bytes of data sent.
    pub fn send_disk_writes<'d, I>(&mut self, disk: u8, writes: I) -> Result<u64, SendError>
    where
        I: IntoIterator<Item = (u64, &'d [u8])>,
    {
        let epoch = self.require_open(Kind::DiskWrites)?;
        if usize::from(disk) >= crate::message::MAX_DISKS {
            return Err(SendError::Invalid {
                kind: Kind::DiskWrites,
                source: crate::message::DecodeError::BadValue {
                    what: "disk index",
                    value: u64::from(disk),
                    offset: 8,
                },
            });
        }
        // Budget per frame, counting a 12-byte entry header per sector as worst case
        // (13: one spare byte per entry covers the disk index in the message header).
        let budget = self.budget(SECTOR_SIZE, 13)?;
        let mut entries: Vec<(u64, &'d [u8])> = Vec::new();
        let mut batch = 0usize;
        let mut total = 0u64;
        for (i, (offset, data)) in writes.into_iter().enumerate() {
            check_item(
                Kind::DiskWrites,
                i,
                offset,
                data.len() as u64,
                SECTOR_SIZE,
                "offset",
            )?;
            let mut off = 0;
            while off < data.len() {
                if batch == budget {
                    self.emit_disk(epoch, disk, &entries)?;
                    entries.clear();
                    batch = 0;
                }
                let take = (budget - batch).min(data.len() - off);
                entries.push((offset + off as u64, &data[off..off + take]));
                batch += take;
                off += take;
                total += take as u64;
            }
        }
        if !entries.is_empty() {
            self.emit_disk(epoch, disk, &entries)?;
        }
        Ok(total)
    }

    fn emit_disk(
        &mut self,
        epoch: u64,
        disk: u8,
        entries: &[(u64, &[u8])],
    ) -> Result<(), SendError> {
        let len = 13 + entries.iter().map(|e| 12 + e.1.len()).sum::<usize>();
        self.emit(Kind::DiskWrites, len, 0, |s, _| {
            s.put_u64(epoch);
            s.put_u8(disk);
            s.put_u32(entries.len() as u32);
            for (off, data) in entries {
                s.put_u64(*off);
                s.put_u32(data.len() as u32);
                s.put(data);
            }
        })
    }

    /// Sends an `Error` message (text cut to the limit at a char boundary).
    pub fn send_error(&mut self, code: ErrorCode, message: &str) -> Result<(), SendError> {
        let mut end = message.len().min(crate::message::MAX_ERROR_MESSAGE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        self.send_raw(&Message::Error {
            code,
            message: Cow::Borrowed(&message[..end]),
        })
    }
}

fn check_item(
    kind: Kind,
    index: usize,
    start: u64,
    len: u64,
    unit: usize,
    what: &str,
) -> Result<(), SendError> {
    let problem = if !start.is_multiple_of(unit as u64) {
        format!("{what} {start:#x} is not {unit}-byte aligned")
    } else if len == 0 || !len.is_multiple_of(unit as u64) {
        format!("length {len} is not a positive multiple of {unit}")
    } else if start.checked_add(len).is_none() {
        format!("{what} {start:#x} + {len:#x} bytes overflows 64 bits")
    } else {
        return Ok(());
    };
    Err(SendError::InvalidItem {
        kind,
        index,
        problem,
    })
}
