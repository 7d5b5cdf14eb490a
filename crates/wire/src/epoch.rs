//! Epoch staging on the receiving side (invariant 2: the backup never runs
//! from a partially applied epoch).
//!
//! [`EpochAssembler`] consumes the messages of the replication stream. It
//! copies epoch `N`'s data into a [`StagedEpoch`] and hands it out only when
//! `EpochCommit{N}` arrived and its message count, page count, byte count and
//! CRC32C digest match what was received. Anything else (data for another
//! epoch, a second `EpochBegin`, an `Ack` or `Hello` on this stream, an
//! `Error`/`Goodbye` mid-epoch, the connection ending) is an error and the
//! partial epoch is dropped: its data never becomes reachable.

use std::fmt;
use std::ops::Range;

use crate::codec::human_bytes;
use crate::message::{EpochCommit, Kind, Message, PAGE_SIZE};

/// Why an epoch was rejected. Whatever was staged of it has been discarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochError {
    /// Epoch data with no epoch open.
    #[error("{kind} for epoch {epoch} arrived outside any epoch")]
    OutsideEpoch {
        /// Message kind.
        kind: Kind,
        /// Epoch it claims.
        epoch: u64,
    },
    /// Epoch data (or commit) for another epoch than the open one.
    #[error("{kind} for epoch {got} inside epoch {open}: epoch {open} discarded")]
    WrongEpoch {
        /// Message kind.
        kind: Kind,
        /// Epoch it claims.
        got: u64,
        /// The open epoch.
        open: u64,
    },
    /// A new epoch began before the open one was committed.
    #[error("EpochBegin {new} before epoch {open} was committed: epoch {open} discarded")]
    NestedBegin {
        /// The open epoch.
        open: u64,
        /// The new one.
        new: u64,
    },
    /// Epochs must follow each other without gaps.
    #[error("epoch {got} begins after committed epoch {last}: expected epoch {}", .last.wrapping_add(1))]
    Gap {
        /// Last committed epoch.
        last: u64,
        /// Epoch that began.
        got: u64,
    },
    /// The commit's totals disagree with what arrived.
    #[error(
        "epoch {epoch} incomplete: commit says {sent} {what}, received {received}: epoch discarded"
    )]
    CommitMismatch {
        /// The epoch.
        epoch: u64,
        /// "messages", "pages" or "bytes".
        what: &'static str,
        /// Value in `EpochCommit`.
        sent: u64,
        /// Value counted here.
        received: u64,
    },
    /// The commit's digest disagrees with the data received.
    #[error("epoch {epoch} corrupt: commit digest {sent:#010x}, received data digest {received:#010x}: epoch discarded")]
    DigestMismatch {
        /// The epoch.
        epoch: u64,
        /// Digest in `EpochCommit`.
        sent: u32,
        /// Digest computed here.
        received: u32,
    },
    /// A replication epoch without `State`.
    #[error("epoch {epoch} committed without a State message: epoch discarded")]
    MissingState {
        /// The epoch.
        epoch: u64,
    },
    /// Two `State` messages in one epoch.
    #[error("epoch {epoch} carries a second State message: epoch discarded")]
    DuplicateState {
        /// The epoch.
        epoch: u64,
    },
    /// `Error`, `Goodbye` or `MigrationDone` arrived inside an epoch.
    #[error("epoch {epoch} interrupted by {by} before its commit: epoch discarded")]
    Interrupted {
        /// The epoch.
        epoch: u64,
        /// The interrupting message.
        by: Kind,
    },
    /// A message that does not belong on this stream at all.
    #[error("unexpected {kind} on the epoch stream{}", match .open { Some(e) => format!(" inside epoch {e}: epoch {e} discarded"), None => String::new() })]
    Unexpected {
        /// Message kind.
        kind: Kind,
        /// Epoch that was open (and is now discarded).
        open: Option<u64>,
    },
    /// The epoch needs more staging memory than allowed.
    #[error("epoch {epoch} exceeds the staging limit of {}: epoch discarded", human_bytes(*.limit))]
    TooLarge {
        /// The epoch.
        epoch: u64,
        /// Configured limit.
        limit: u64,
    },
    /// The epoch carries more pages than the guest has (a legitimate epoch sends each
    /// page of guest RAM at most once).
    #[error("epoch {epoch} carries more than {limit} pages (the guest's RAM): epoch discarded")]
    TooManyPages {
        /// The epoch.
        epoch: u64,
        /// Configured limit.
        limit: u64,
    },
    /// A page lies outside guest memory.
    #[error("epoch {epoch}: page run at gpa {gpa:#x} ({npages} pages) lies beyond guest memory end {limit:#x}: epoch discarded")]
    GpaOutOfRange {
        /// The epoch.
        epoch: u64,
        /// Run start.
        gpa: u64,
        /// Run length in pages.
        npages: u64,
        /// Configured end of guest-physical space.
        limit: u64,
    },
    /// The connection ended inside an epoch.
    #[error(
        "connection ended inside epoch {epoch} after {messages} data messages: epoch discarded"
    )]
    ConnectionLost {
        /// The epoch.
        epoch: u64,
        /// Data messages received of it.
        messages: u32,
    },
}

/// Limits and rules of an [`EpochAssembler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssemblerConfig {
    /// Every epoch must carry exactly one `State` (replication). Migration
    /// pre-copy rounds carry none.
    pub require_state: bool,
    /// Most bytes (page data + disk data + outputs + state) one epoch may stage.
    pub max_staged_bytes: u64,
    /// Pages must lie below this guest-physical address, if set.
    pub gpa_limit: Option<u64>,
    /// Most pages (data and zero runs together) one epoch may carry.
    pub max_pages: u64,
}

impl AssemblerConfig {
    /// Replication: `State` required, 2 GiB staging limit, no gpa limit.
    pub fn replication() -> Self {
        AssemblerConfig {
            require_state: true,
            max_staged_bytes: 2 << 30,
            gpa_limit: None,
            max_pages: u64::MAX,
        }
    }

    /// Migration: `State` optional (only the final epoch has it).
    pub fn migration() -> Self {
        AssemblerConfig {
            require_state: false,
            ..Self::replication()
        }
    }

    /// A receiver of a guest with `memory_bytes` of RAM ending at guest-physical address
    /// `gpa_end`, with `disks` disks whose per-epoch write logs hold at most
    /// `disk_epoch_bytes` each: `State` optional (initial-sync epochs carry none; the
    /// receiver requires it once it has a replica), every page below `gpa_end`, at most
    /// the guest's RAM in pages per epoch, and staging bounded by the guest's RAM plus
    /// its disks' epoch logs plus `extra_bytes` (outputs and state). A peer that sends
    /// endless page runs is refused before the receiver's memory is exhausted.
    pub fn for_guest(
        memory_bytes: u64,
        gpa_end: u64,
        disks: u64,
        disk_epoch_bytes: u64,
        extra_bytes: u64,
    ) -> Self {
        AssemblerConfig {
            require_state: false,
            max_staged_bytes: memory_bytes
                .saturating_add(disks.saturating_mul(disk_epoch_bytes))
                .saturating_add(extra_bytes),
            gpa_limit: Some(gpa_end),
            max_pages: memory_bytes / PAGE_SIZE as u64,
        }
    }
}

#[path = "epoch_frames.rs"]
mod frames;
use frames::{in_payload, InPlace};
pub use frames::{FedFrame, FrameFeedError};

/// One page write of a staged epoch, in arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageWrite<'a> {
    /// Copy `data` (a multiple of 4096 bytes) to `gpa`.
    Data {
        /// Guest-physical address, page-aligned.
        gpa: u64,
        /// Contents of `data.len() / 4096` pages.
        data: &'a [u8],
    },
    /// Zero `npages` pages from `gpa`.
    Zero {
        /// Guest-physical address, page-aligned.
        gpa: u64,
        /// Number of pages.
        npages: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Run {
    Data {
        gpa: u64,
        range: Range<usize>,
    },
    Zero {
        gpa: u64,
        npages: u32,
    },
    /// Data left in place in a received frame's payload (`StagedEpoch::frames`).
    Framed {
        gpa: u64,
        frame: usize,
        range: Range<usize>,
    },
}

/// A complete, verified epoch, ready to apply. Page writes must be applied in
/// order (a page may appear more than once; the last write wins).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct StagedEpoch {
    epoch: u64,
    runs: Vec<Run>,
    page_data: Vec<u8>,
    /// Received `Pages` frame buffers whose payloads hold `Run::Framed` data.
    frames: Vec<Vec<u8>>,
    /// Page bytes staged in `frames`.
    framed_bytes: u64,
    disk: Vec<(u8, u64, Range<usize>)>,
    disk_data: Vec<u8>,
    disk_flushes: u8,
    outputs: Vec<(u16, Range<usize>)>,
    output_data: Vec<u8>,
    state: Vec<u8>,
    has_state: bool,
    commit: EpochCommit,
}

impl fmt::Debug for StagedEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StagedEpoch")
            .field("epoch", &self.epoch)
            .field("page_writes", &self.runs.len())
            .field("pages", &self.commit.pages)
            .field("disk_writes", &self.disk.len())
            .field("disk_flushes", &self.disk_flushes)
            .field("outputs", &self.outputs.len())
            .field("state_bytes", &self.state.len())
            .finish()
    }
}

impl StagedEpoch {
    /// The epoch number.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The verified totals (as sent in `EpochCommit`).
    pub fn commit(&self) -> EpochCommit {
        self.commit
    }

    /// Page writes in arrival order.
    pub fn page_writes(&self) -> impl Iterator<Item = PageWrite<'_>> + '_ {
        self.runs.iter().map(|r| match r {
            Run::Data { gpa, range } => PageWrite::Data {
                gpa: *gpa,
                data: &self.page_data[range.clone()],
            },
            Run::Zero { gpa, npages } => PageWrite::Zero {
                gpa: *gpa,
                npages: *npages,
            },
            Run::Framed { gpa, frame, range } => PageWrite::Data {
                gpa: *gpa,
                data: &self.frames[*frame][range.clone()],
            },
        })
    }

    /// Disk writes `(disk, byte offset, data)` in arrival order.
    pub fn disk_writes(&self) -> impl Iterator<Item = (u8, u64, &[u8])> + '_ {
        self.disk
            .iter()
            .map(|(disk, off, r)| (*disk, *off, &self.disk_data[r.clone()]))
    }

    /// The disks the guest flushed during the epoch (indexes).
    pub fn flushed_disks(&self) -> impl Iterator<Item = u8> + '_ {
        (0..8u8).filter(|d| self.disk_flushes & (1 << d) != 0)
    }

    /// Outputs `(stream, bytes)` in arrival order.
    pub fn outputs(&self) -> impl Iterator<Item = (u16, &[u8])> + '_ {
        self.outputs
            .iter()
            .map(|(s, r)| (*s, &self.output_data[r.clone()]))
    }

    /// The state blob, if the epoch carried one.
    pub fn state(&self) -> Option<&[u8]> {
        self.has_state.then_some(&self.state[..])
    }

    fn staged_bytes(&self) -> u64 {
        (self.page_data.len() + self.disk_data.len() + self.output_data.len() + self.state.len())
            as u64
            + self.framed_bytes
    }

    /// Empties the epoch, keeping allocations for reuse.
    fn reset(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.runs.clear();
        self.page_data.clear();
        self.frames.clear();
        self.framed_bytes = 0;
        self.disk.clear();
        self.disk_data.clear();
        self.disk_flushes = 0;
        self.outputs.clear();
        self.output_data.clear();
        self.state.clear();
        self.has_state = false;
        self.commit = EpochCommit {
            epoch,
            ..EpochCommit::default()
        };
    }
}

/// What feeding one message did.
#[derive(Debug)]
pub enum Progress {
    /// The message was staged; the epoch is not complete yet.
    Pending,
    /// The epoch is complete and verified: apply it, then acknowledge it.
    Committed(Box<StagedEpoch>),
    /// Not part of the epoch stream (`Heartbeat` anywhere; `Goodbye`,
    /// `Error`, `MigrationDone` between epochs): the caller handles it.
    Other,
}

/// Stages epochs and releases only complete, verified ones. See the module docs.
#[derive(Debug)]
pub struct EpochAssembler {
    cfg: AssemblerConfig,
    last_committed: Option<u64>,
    open: Option<Box<StagedEpoch>>,
    spare: Option<Box<StagedEpoch>>,
    /// Page messages are applied by the caller as they arrive (see
    /// [`EpochAssembler::pages_applied_on_arrival`]): only checked and counted here.
    pages_on_arrival: bool,
    /// Frame buffers of applied epochs, for [`EpochAssembler::spare_buffer`].
    pool: Vec<Vec<u8>>,
}

impl EpochAssembler {
    /// An assembler that accepts any first epoch, then strictly consecutive ones.
    pub fn new(cfg: AssemblerConfig) -> Self {
        EpochAssembler {
            cfg,
            last_committed: None,
            open: None,
            spare: None,
            pages_on_arrival: false,
            pool: Vec::new(),
        }
    }

    /// `Pages` and `ZeroPages` are no longer staged: [`feed`](Self::feed) still checks
    /// their epoch and gpa range and counts them into the epoch's totals and digest (so
    /// the commit is verified as before), but the staged epoch carries no page writes.
    /// The caller applies each page message as it arrives, once `feed` accepted it.
    ///
    /// This gives up invariant 2 for pages (a refused or interrupted epoch may already
    /// be partly written): only for a receiver that runs nothing from what it received
    /// unless the whole stream completes, i.e. a migration target.
    pub fn pages_applied_on_arrival(mut self) -> Self {
        self.pages_on_arrival = true;
        self
    }

    /// An assembler whose next epoch must be `last_committed + 1` (after a
    /// restart with an already committed replica).
    pub fn resume(cfg: AssemblerConfig, last_committed: u64) -> Self {
        EpochAssembler {
            last_committed: Some(last_committed),
            ..Self::new(cfg)
        }
    }

    /// The last epoch handed out as committed.
    pub fn last_committed(&self) -> Option<u64> {
        self.last_committed
    }

    /// The epoch being staged, if any.
    pub fn open_epoch(&self) -> Option<u64> {
        self.open.as_ref().map(|o| o.epoch)
    }

    /// Returns an applied epoch's buffers for reuse by the next one.
    pub fn recycle(&mut self, staged: Box<StagedEpoch>) {
        self.spare = Some(staged);
    }

    /// Feeds one received message. On error the open epoch is discarded.
    pub fn feed(&mut self, msg: &Message<'_>) -> Result<Progress, EpochError> {
        let result = self.feed_inner(msg, None);
        if result.is_err() {
            self.discard_open();
        }
        result
    }

    /// Discards the open epoch (if any), keeping its allocations for the next one.
    fn discard_open(&mut self) {
        if let Some(discarded) = self.open.take() {
            self.spare = Some(discarded);
        }
    }

    /// Call when the connection ended: fails (and discards) if an epoch was open.
    pub fn finish(&mut self) -> Result<(), EpochError> {
        match self.open.take() {
            None => Ok(()),
            Some(open) => {
                let err = EpochError::ConnectionLost {
                    epoch: open.epoch,
                    messages: open.commit.messages,
                };
                self.spare = Some(open);
                Err(err)
            }
        }
    }

    /// `frame`: the received payload `msg` was decoded from, when `msg`'s page data is to
    /// be staged in place (see `feed_frame`); `kept` is set when it was.
    fn feed_inner(
        &mut self,
        msg: &Message<'_>,
        frame: Option<InPlace<'_, '_>>,
    ) -> Result<Progress, EpochError> {
        let kind = msg.kind();
        let open_epoch = self.open_epoch();
        match msg {
            Message::Heartbeat { .. } => Ok(Progress::Other),
            Message::Goodbye
            | Message::Error { .. }
            | Message::MigrationDone { .. }
            | Message::Switchover { .. } => match open_epoch {
                Some(epoch) => Err(EpochError::Interrupted { epoch, by: kind }),
                None => Ok(Progress::Other),
            },
            Message::Hello(_)
            | Message::HelloAck(_)
            | Message::Ack { .. }
            | Message::DiskHashes(_) => Err(EpochError::Unexpected {
                kind,
                open: open_epoch,
            }),
            Message::EpochBegin { epoch } => {
                if let Some(open) = open_epoch {
                    return Err(EpochError::NestedBegin { open, new: *epoch });
                }
                if let Some(last) = self.last_committed {
                    if last.checked_add(1) != Some(*epoch) {
                        return Err(EpochError::Gap { last, got: *epoch });
                    }
                }
                let mut staged = self.spare.take().unwrap_or_default();
                self.take_frames(&mut staged);
                staged.reset(*epoch);
                self.open = Some(staged);
                Ok(Progress::Pending)
            }
            Message::EpochCommit(commit) => {
                let Some(open) = open_epoch else {
                    return Err(EpochError::OutsideEpoch {
                        kind,
                        epoch: commit.epoch,
                    });
                };
                if commit.epoch != open {
                    return Err(EpochError::WrongEpoch {
                        kind,
                        got: commit.epoch,
                        open,
                    });
                }
                self.commit(commit)
            }
            _ => {
                // Epoch data.
                let epoch = msg.data_epoch().unwrap_or_default();
                let Some(open) = open_epoch else {
                    return Err(EpochError::OutsideEpoch { kind, epoch });
                };
                if epoch != open {
                    return Err(EpochError::WrongEpoch {
                        kind,
                        got: epoch,
                        open,
                    });
                }
                self.stage(msg, frame)?;
                Ok(Progress::Pending)
            }
        }
    }

    fn stage(
        &mut self,
        msg: &Message<'_>,
        frame: Option<InPlace<'_, '_>>,
    ) -> Result<(), EpochError> {
        let cfg = self.cfg;
        let Some(st) = self.open.as_mut() else {
            return Err(EpochError::OutsideEpoch {
                kind: msg.kind(),
                epoch: msg.data_epoch().unwrap_or_default(),
            });
        };
        let epoch = st.epoch;
        let check_gpa = |gpa: u64, npages: u64| match cfg.gpa_limit {
            Some(limit) if gpa.saturating_add(npages.saturating_mul(PAGE_SIZE as u64)) > limit => {
                Err(EpochError::GpaOutOfRange {
                    epoch,
                    gpa,
                    npages,
                    limit,
                })
            }
            _ => Ok(()),
        };
        let on_arrival = self.pages_on_arrival;
        let incoming = match msg {
            Message::Pages(_) if on_arrival => 0,
            Message::Pages(p) => p.page_count() * PAGE_SIZE as u64,
            Message::DiskWrites(d) => d.writes().map(|w| w.1.len() as u64).sum(),
            Message::Outputs { bytes, .. } => bytes.len() as u64,
            Message::State { blob, .. } => blob.len() as u64,
            _ => 0,
        };
        let pages = msg.page_count();
        // Runs are never empty (the decoders refuse 0-page runs), so this also bounds
        // the number of run descriptors staged.
        if st.commit.pages.saturating_add(pages) > cfg.max_pages {
            return Err(EpochError::TooManyPages {
                epoch,
                limit: cfg.max_pages,
            });
        }
        if st.staged_bytes() + incoming > cfg.max_staged_bytes {
            return Err(EpochError::TooLarge {
                epoch,
                limit: cfg.max_staged_bytes,
            });
        }
        match msg {
            Message::Pages(p) if on_arrival => {
                // From the run table: a placed frame's message has no data here.
                for (gpa, npages) in p.run_table() {
                    check_gpa(gpa, u64::from(npages))?;
                }
            }
            Message::ZeroPages(z) if on_arrival => {
                for (gpa, npages) in z.runs() {
                    check_gpa(gpa, u64::from(npages))?;
                }
            }
            Message::Pages(p) if frame.is_some() => {
                let Some(InPlace { payload, kept, .. }) = frame.as_ref() else {
                    return Ok(());
                };
                let index = st.frames.len();
                for (gpa, data) in p.runs() {
                    check_gpa(gpa, (data.len() / PAGE_SIZE) as u64)?;
                    let range = in_payload(payload, data).ok_or(EpochError::Unexpected {
                        kind: Kind::Pages,
                        open: Some(epoch),
                    })?;
                    st.runs.push(Run::Framed {
                        gpa,
                        frame: index,
                        range,
                    });
                }
                st.framed_bytes += incoming;
                kept.set(true);
            }
            Message::Pages(p) => {
                for (gpa, data) in p.runs() {
                    check_gpa(gpa, (data.len() / PAGE_SIZE) as u64)?;
                    let start = st.page_data.len();
                    st.page_data.extend_from_slice(data);
                    st.runs.push(Run::Data {
                        gpa,
                        range: start..st.page_data.len(),
                    });
                }
            }
            Message::ZeroPages(z) => {
                for (gpa, npages) in z.runs() {
                    check_gpa(gpa, u64::from(npages))?;
                    st.runs.push(Run::Zero { gpa, npages });
                }
            }
            Message::DiskWrites(d) => {
                for (off, data) in d.writes() {
                    let start = st.disk_data.len();
                    st.disk_data.extend_from_slice(data);
                    st.disk.push((d.disk(), off, start..st.disk_data.len()));
                }
            }
            Message::DiskFlush { disk, .. } => {
                st.disk_flushes |= 1 << (disk & 7);
            }
            Message::Outputs { stream, bytes, .. } => {
                let start = st.output_data.len();
                st.output_data.extend_from_slice(bytes);
                st.outputs.push((*stream, start..st.output_data.len()));
            }
            Message::State { blob, .. } => {
                if st.has_state {
                    return Err(EpochError::DuplicateState { epoch });
                }
                st.state.extend_from_slice(blob);
                st.has_state = true;
            }
            _ => {}
        }
        match frame {
            // The tag verified this frame: no digest pass (the sender spent none either).
            Some(f) if f.sealed => st.commit.count_sealed(msg, f.len),
            Some(InPlace {
                crc: Some(crc),
                len,
                ..
            }) => st.commit.add_payload(msg, crc, len),
            _ => st.commit.add(msg),
        }
        Ok(())
    }

    fn commit(&mut self, sent: &EpochCommit) -> Result<Progress, EpochError> {
        let require_state = self.cfg.require_state;
        let Some(st) = self.open.as_ref() else {
            return Err(EpochError::OutsideEpoch {
                kind: Kind::EpochCommit,
                epoch: sent.epoch,
            });
        };
        let got = st.commit;
        let epoch = st.epoch;
        for (what, s, r) in [
            (
                "messages",
                u64::from(sent.messages),
                u64::from(got.messages),
            ),
            ("pages", sent.pages, got.pages),
            ("bytes", sent.bytes, got.bytes),
        ] {
            if s != r {
                return Err(EpochError::CommitMismatch {
                    epoch,
                    what,
                    sent: s,
                    received: r,
                });
            }
        }
        if sent.digest != got.digest {
            return Err(EpochError::DigestMismatch {
                epoch,
                sent: sent.digest,
                received: got.digest,
            });
        }
        if require_state && !st.has_state {
            return Err(EpochError::MissingState { epoch });
        }
        let Some(done) = self.open.take() else {
            return Err(EpochError::OutsideEpoch {
                kind: Kind::EpochCommit,
                epoch,
            });
        };
        self.last_committed = Some(epoch);
        Ok(Progress::Committed(done))
    }
}
