//! Staging received frames in place: [`EpochAssembler::feed_frame`].
//!
//! [`EpochAssembler::feed`] copies each `Pages` message's data into the epoch's staging
//! buffer, and [`EpochCommit::add`](crate::EpochCommit::add) encodes every message again
//! to extend the epoch digest. On a backup that receives an epoch every few milliseconds
//! both are a full extra pass over every page byte. `feed_frame` instead keeps the
//! received frame buffer itself as the staging of its pages (the staged epoch owns it
//! until it is applied and recycled, and the buffer then comes back through
//! [`EpochAssembler::spare_buffer`] for a later read: nothing is allocated or zeroed in
//! the steady state), and extends the digest from the payload CRC the frame layer already
//! computed. Everything else (the checks, the totals, invariant 2: only complete,
//! verified epochs come out) is [`EpochAssembler::feed`]'s.

use std::cell::Cell;
use std::ops::Range;

use super::{EpochAssembler, EpochError, Progress, StagedEpoch};
use crate::frame::OwnedFrame;
use crate::stream::{decode_frame, RecvError};

/// Frame buffers kept for reuse at most (the rest of a large epoch's are freed).
const POOL_MAX: usize = 64;

/// The payload a message was decoded from, for staging its pages in place.
#[derive(Clone, Copy)]
pub(super) struct InPlace<'p, 'k> {
    /// The whole payload.
    pub(super) payload: &'p [u8],
    /// Its CRC32C, if the frame layer computed it over the plain payload.
    pub(super) crc: Option<u32>,
    /// Set when the staged epoch refers to the payload (the buffer must be kept).
    pub(super) kept: &'k Cell<bool>,
    /// The frame was sealed and its tag verified ([`OwnedFrame::sealed`]): it is counted
    /// but not added to the epoch digest.
    pub(super) sealed: bool,
    /// The whole payload's length: `payload.len()`, plus the data of a placed frame
    /// ([`OwnedFrame::placed`]), which `payload` does not hold.
    pub(super) len: usize,
}

/// Where `part` (a sub-slice of `payload`) lies in it.
pub(super) fn in_payload(payload: &[u8], part: &[u8]) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(payload.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= payload.len()).then_some(start..end)
}

/// Why [`EpochAssembler::feed_frame`] refused a frame. Either way the open epoch (if
/// any) is discarded.
#[derive(Debug, thiserror::Error)]
pub enum FrameFeedError {
    /// The payload is not a valid message (or an unauthenticated error frame).
    #[error(transparent)]
    Decode(#[from] RecvError),
    /// The message broke the epoch stream.
    #[error(transparent)]
    Epoch(#[from] EpochError),
}

/// What [`EpochAssembler::feed_frame`] did with a frame.
#[derive(Debug)]
pub struct FedFrame {
    /// As [`EpochAssembler::feed`]'s result. For [`Progress::Other`], decode `frame`
    /// (with [`decode_frame`]) to handle the message.
    pub progress: Progress,
    /// The frame, given back unless the staged epoch kept its buffer: hand its buffer to
    /// [`EpochAssembler::return_buffer`] (or decode it first, see `progress`).
    pub frame: Option<OwnedFrame>,
}

impl EpochAssembler {
    /// [`feed`](Self::feed) for a frame read with
    /// [`FrameReader::read_frame_owned`](crate::FrameReader::read_frame_owned): the
    /// frame's message is decoded here, and a `Pages` payload is staged in place (the
    /// staged epoch keeps the buffer) rather than copied. On an assembler whose pages are
    /// applied on arrival this stages nothing in place (the frame is always given back).
    /// Either way the epoch digest is extended from the frame layer's payload CRC, and a
    /// sealed frame (its tag verified) is not added to the digest at all: a sealed
    /// session's commits carry digest 0, so a sealed epoch fed message by message
    /// through [`feed`](Self::feed) fails its digest check.
    pub fn feed_frame(&mut self, frame: OwnedFrame) -> Result<FedFrame, FrameFeedError> {
        let kept = Cell::new(false);
        if frame.placed > 0 {
            return self.feed_placed(frame, &kept);
        }
        let result = match decode_frame(frame.kind, frame.at, frame.payload(), frame.authenticated)
        {
            Err(e) => Err(FrameFeedError::Decode(e)),
            Ok(msg) => {
                // With pages applied on arrival nothing is staged in place (`stage` checks
                // that first), but the payload CRC and the seal still spare the digest pass.
                let in_place = Some(InPlace {
                    payload: frame.payload(),
                    crc: frame.payload_crc,
                    kept: &kept,
                    sealed: frame.sealed,
                    len: frame.len,
                });
                self.feed_inner(&msg, in_place)
                    .map_err(FrameFeedError::Epoch)
            }
        };
        let progress = match result {
            Ok(p) => p,
            Err(e) => {
                self.discard_open();
                self.return_buffer(frame.buf);
                return Err(e);
            }
        };
        if !kept.get() {
            return Ok(FedFrame {
                progress,
                frame: Some(frame),
            });
        }
        match self.open.as_mut() {
            Some(open) => {
                open.frames.push(frame.buf);
                Ok(FedFrame {
                    progress,
                    frame: None,
                })
            }
            // Unreachable: pages are staged only into an open epoch, and a Pages message
            // never closes it. Refuse rather than hand out runs without their data.
            None => Err(FrameFeedError::Epoch(EpochError::OutsideEpoch {
                kind: crate::message::Kind::Pages,
                epoch: 0,
            })),
        }
    }

    /// [`feed_frame`](Self::feed_frame) for a `Pages` frame whose data was read straight
    /// into its destination ([`OwnedFrame::placed`]): only an assembler whose pages are
    /// applied on arrival takes one (nothing is staged: the data is already where it
    /// goes). Checked and counted as any `Pages` frame, its digest extended from the
    /// payload CRC the frame layer computed over the whole payload as it was placed.
    fn feed_placed(
        &mut self,
        frame: OwnedFrame,
        kept: &Cell<bool>,
    ) -> Result<FedFrame, FrameFeedError> {
        let pages_kind = crate::message::Kind::Pages;
        let result = if !self.pages_on_arrival || frame.kind != pages_kind as u16 {
            Err(FrameFeedError::Epoch(EpochError::Unexpected {
                kind: pages_kind,
                open: self.open_epoch(),
            }))
        } else {
            match crate::message::Pages::decode_placed(frame.payload(), frame.placed) {
                Err(source) => Err(FrameFeedError::Decode(RecvError::Decode {
                    at: frame.at,
                    kind: frame.kind,
                    source,
                })),
                Ok(pages) => {
                    let in_place = Some(InPlace {
                        payload: frame.payload(),
                        crc: frame.payload_crc,
                        kept,
                        sealed: false,
                        len: frame.len + frame.placed,
                    });
                    self.feed_inner(&crate::message::Message::Pages(pages), in_place)
                        .map_err(FrameFeedError::Epoch)
                }
            }
        };
        match result {
            Ok(progress) => Ok(FedFrame {
                progress,
                frame: Some(frame),
            }),
            Err(e) => {
                self.discard_open();
                self.return_buffer(frame.buf);
                Err(e)
            }
        }
    }

    /// A buffer for the next [`FrameReader::read_frame_owned`](crate::FrameReader::read_frame_owned):
    /// one an applied epoch held (already grown and written: reading into it neither
    /// allocates nor zeroes), or an empty one.
    pub fn spare_buffer(&mut self) -> Vec<u8> {
        if self.pool.is_empty() {
            if let Some(mut spare) = self.spare.take() {
                self.take_frames(&mut spare);
                spare.runs.clear();
                self.spare = Some(spare);
            }
        }
        self.pool.pop().unwrap_or_default()
    }

    /// Gives a frame buffer back for reuse (see [`spare_buffer`](Self::spare_buffer)).
    pub fn return_buffer(&mut self, buf: Vec<u8>) {
        if self.pool.len() < POOL_MAX && buf.capacity() > 0 {
            self.pool.push(buf);
        }
    }

    /// Frame buffers waiting for reuse.
    pub fn pooled_buffers(&self) -> usize {
        self.pool.len()
    }

    /// Moves the frame buffers of a recycled epoch to the pool (at most `POOL_MAX`).
    pub(super) fn take_frames(&mut self, staged: &mut StagedEpoch) {
        for buf in staged.frames.drain(..) {
            if self.pool.len() >= POOL_MAX {
                break;
            }
            self.pool.push(buf);
        }
        staged.framed_bytes = 0;
    }
}
