//! The write log of a [`super::Disk`]: a block bitmap or an ordered data log.

use std::ops::Range;

use super::TRACK_BLOCK;

/// What a disk records about guest writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracking {
    /// Nothing.
    Off,
    /// Which blocks were written.
    Blocks,
    /// Every write's offset and data, and flushes.
    Data,
}

/// One epoch's guest writes to one disk, in order, and whether the guest flushed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochDiskWrites {
    writes: Vec<(u64, Range<usize>)>,
    data: Vec<u8>,
    flushed: bool,
}

impl EpochDiskWrites {
    /// The writes `(offset, data)` in the order the guest made them.
    pub fn writes(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.writes.iter().map(|(o, r)| (*o, &self.data[r.clone()]))
    }

    /// Whether the guest flushed the disk during the epoch.
    pub fn flushed(&self) -> bool {
        self.flushed
    }

    /// Bytes of write data.
    pub fn bytes(&self) -> u64 {
        self.data.len() as u64
    }

    /// Whether there is nothing to replicate.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && !self.flushed
    }

    /// Empties it, keeping the allocations.
    pub fn clear(&mut self) {
        self.writes.clear();
        self.data.clear();
        self.flushed = false;
    }

    /// Appends a write (used by the log and by tests).
    pub fn push(&mut self, offset: u64, data: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(data);
        self.writes.push((offset, start..self.data.len()));
    }

    /// Marks the epoch as containing a flush.
    pub fn set_flushed(&mut self) {
        self.flushed = true;
    }
}

#[derive(Debug)]
pub(super) struct WriteLog {
    mode: Tracking,
    bitmap: Vec<u64>,
    current: EpochDiskWrites,
    limit: u64,
    overflowed: bool,
}

impl WriteLog {
    pub(super) fn new(blocks: u64, limit: u64) -> Self {
        WriteLog {
            mode: Tracking::Off,
            bitmap: vec![0; blocks.div_ceil(64) as usize],
            current: EpochDiskWrites::default(),
            limit,
            overflowed: false,
        }
    }

    pub(super) fn mode(&self) -> Tracking {
        self.mode
    }

    pub(super) fn limit(&self) -> u64 {
        self.limit
    }

    pub(super) fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    pub(super) fn reset(&mut self, mode: Tracking) {
        self.mode = mode;
        self.bitmap.iter_mut().for_each(|w| *w = 0);
        self.current = EpochDiskWrites::default();
        self.overflowed = false;
    }

    pub(super) fn record_write(&mut self, offset: u64, data: &[u8]) {
        match self.mode {
            Tracking::Off => {}
            Tracking::Blocks => {
                if data.is_empty() {
                    return;
                }
                let first = offset / TRACK_BLOCK;
                let last = (offset + data.len() as u64 - 1) / TRACK_BLOCK;
                for b in first..=last {
                    if let Some(w) = self.bitmap.get_mut((b / 64) as usize) {
                        *w |= 1 << (b % 64);
                    }
                }
            }
            Tracking::Data => {
                if self.overflowed {
                    return;
                }
                if self.current.bytes() + data.len() as u64 > self.limit {
                    // Keep memory bounded: the epoch is lost to replication.
                    self.overflowed = true;
                    self.current = EpochDiskWrites::default();
                    return;
                }
                self.current.push(offset, data);
            }
        }
    }

    pub(super) fn record_flush(&mut self) {
        if self.mode == Tracking::Data {
            self.current.set_flushed();
        }
    }

    pub(super) fn take_blocks(&mut self) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, w) in self.bitmap.iter_mut().enumerate() {
            let mut bits = std::mem::take(w);
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                out.push(i as u64 * 64 + b);
                bits &= bits - 1;
            }
        }
        out
    }

    /// Swaps the current epoch's log into `into`; `Err` if it overflowed.
    pub(super) fn drain(&mut self, into: &mut EpochDiskWrites) -> Result<(), ()> {
        into.clear();
        std::mem::swap(&mut self.current, into);
        if std::mem::take(&mut self.overflowed) {
            into.clear();
            return Err(());
        }
        Ok(())
    }
}
