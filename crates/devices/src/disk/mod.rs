//! Disks: raw image files ([`RawImage`]) and the write tracking that replication,
//! initial sync and migration need ([`Disk`], [`EpochDiskWrites`]).
//!
//! A [`Disk`] is what a block device (virtio-blk) reads and writes. Every guest write
//! goes to the image at once and, depending on the tracking mode, is also recorded:
//! - [`Tracking::Off`]: nothing is recorded (unprotected VM).
//! - [`Tracking::Blocks`]: which [`TRACK_BLOCK`]-byte blocks were written (a bitmap;
//!   used while the whole disk is copied, like dirty pages during a memory pre-copy).
//! - [`Tracking::Data`]: every write's offset and data, plus whether the guest flushed,
//!   in order; the replication engine drains this log into each epoch while the vCPUs
//!   are parked, so epoch `N` carries exactly the writes the guest made in epoch `N`.
//!
//! The image write and its record happen under one lock, so a drain (or a bitmap
//! take) sees each write either entirely before or entirely after it.

mod image;
mod log;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub use image::RawImage;
pub use log::{EpochDiskWrites, Tracking};

use crate::bus::lock;
use log::WriteLog;

/// Sector size: offsets and lengths of disk I/O are multiples of it.
pub const SECTOR: u64 = 512;
/// Granularity of block tracking and of initial-sync hashing (64 KiB).
pub const TRACK_BLOCK: u64 = 64 * 1024;
/// Default bound of one epoch's write log; beyond it the log overflows (replication
/// then ends loudly rather than hold unbounded memory).
pub const DEFAULT_LOG_LIMIT: u64 = 512 << 20;

/// What went wrong with a disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image could not be opened.
    #[error("cannot open disk image {} ({}): {source}", .path.display(), if *.readonly { "read-only" } else { "read-write" })]
    Open {
        /// The image.
        path: PathBuf,
        /// Whether it was opened read-only.
        readonly: bool,
        /// Why.
        source: std::io::Error,
    },
    /// The image's size is not usable.
    #[error("disk image {} is {size} bytes: the size must be a positive multiple of 512", .path.display())]
    BadSize {
        /// The image.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// An access past the end of the image.
    #[error("disk image {}: {len} bytes at offset {offset} lie beyond its end ({size} bytes)", .path.display())]
    OutOfRange {
        /// The image.
        path: PathBuf,
        /// Start of the access.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// Image size.
        size: u64,
    },
    /// A write to a read-only disk.
    #[error("disk image {} is read-only: write refused", .path.display())]
    ReadOnly {
        /// The image.
        path: PathBuf,
    },
    /// The operating system refused an I/O.
    #[error("disk image {}: {op} of {len} bytes at offset {offset} failed: {source}", .path.display())]
    Io {
        /// The image.
        path: PathBuf,
        /// "read", "write", "fdatasync".
        op: &'static str,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Why.
        source: std::io::Error,
    },
    /// The epoch's write log outgrew its bound: the writes cannot be replicated.
    #[error("disk image {}: the guest wrote more than {limit} bytes in one epoch; the write log overflowed", .path.display())]
    LogOverflow {
        /// The image.
        path: PathBuf,
        /// The bound.
        limit: u64,
    },
}

impl DiskError {
    /// The OS error number, if the error came from the OS (ENOSPC, EIO, ...).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            DiskError::Open { source, .. } | DiskError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A disk: an image plus write tracking. Shared by the block device and replication.
#[derive(Debug)]
pub struct Disk {
    image: RawImage,
    log: Mutex<WriteLog>,
    /// Bumped whenever the tracking mode is (re)set: a user of the tracking state (a
    /// snapshot chain, replication, migration) sees whether someone else took it over.
    tracking_generation: AtomicU64,
}

impl Disk {
    /// Opens an image as a disk, with tracking off.
    pub fn open(path: &Path, readonly: bool) -> Result<Self, DiskError> {
        let image = RawImage::open(path, readonly)?;
        let blocks = image.size().div_ceil(TRACK_BLOCK);
        Ok(Disk {
            image,
            log: Mutex::new(WriteLog::new(blocks, DEFAULT_LOG_LIMIT)),
            tracking_generation: AtomicU64::new(0),
        })
    }

    /// The image.
    pub fn image(&self) -> &RawImage {
        &self.image
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.image.size()
    }

    /// Whether the disk is read-only.
    pub fn readonly(&self) -> bool {
        self.image.readonly()
    }

    /// Number of [`TRACK_BLOCK`] blocks (the last may be partial).
    pub fn blocks(&self) -> u64 {
        self.image.size().div_ceil(TRACK_BLOCK)
    }

    /// Byte range `(offset, len)` of block `b`.
    pub fn block_range(&self, b: u64) -> (u64, usize) {
        let off = b * TRACK_BLOCK;
        (off, (self.size() - off).min(TRACK_BLOCK) as usize)
    }

    /// A guest read.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.image.read_at(offset, buf)
    }

    /// A guest write: to the image at once, and recorded per the tracking mode.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let mut log = lock(&self.log);
        self.image.write_at(offset, data)?;
        log.record_write(offset, data);
        Ok(())
    }

    /// A guest flush: `fdatasync` of the image, recorded in the write log.
    pub fn flush(&self) -> Result<(), DiskError> {
        let mut log = lock(&self.log);
        self.image.flush()?;
        log.record_flush();
        Ok(())
    }

    /// A write that is not the guest's (replicated, synced or migrated data): to the
    /// image only, never recorded.
    pub fn apply(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        self.image.write_at(offset, data)
    }

    /// The current tracking mode.
    pub fn tracking(&self) -> Tracking {
        lock(&self.log).mode()
    }

    /// Sets the tracking mode, dropping whatever was recorded.
    pub fn set_tracking(&self, mode: Tracking) {
        let mut log = lock(&self.log);
        log.reset(mode);
        self.tracking_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Sets the tracking mode like [`Disk::set_tracking`]; returns the new tracking
    /// generation, which [`Disk::tracking_generation`] keeps returning until the mode is
    /// set again by anyone.
    pub fn start_tracking(&self, mode: Tracking) -> u64 {
        let mut log = lock(&self.log);
        log.reset(mode);
        self.tracking_generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Changes whenever the tracking mode is set (see [`Disk::start_tracking`]).
    pub fn tracking_generation(&self) -> u64 {
        self.tracking_generation.load(Ordering::SeqCst)
    }

    /// Blocks written since tracking started or since the last take (sorted); clears
    /// the bitmap. Only meaningful in [`Tracking::Blocks`].
    pub fn take_written_blocks(&self) -> Vec<u64> {
        lock(&self.log).take_blocks()
    }

    /// Atomically: returns the blocks written so far (bitmap) and switches to
    /// [`Tracking::Data`], so every later write is in the data log.
    pub fn switch_to_data(&self) -> Vec<u64> {
        let mut log = lock(&self.log);
        let blocks = log.take_blocks();
        log.reset(Tracking::Data);
        self.tracking_generation.fetch_add(1, Ordering::SeqCst);
        blocks
    }

    /// Moves the writes recorded since the last drain into `into` (cleared first).
    /// Errors if the log overflowed; the log is then reset and further writes recorded.
    pub fn drain(&self, into: &mut EpochDiskWrites) -> Result<(), DiskError> {
        let limit = lock(&self.log).limit();
        lock(&self.log)
            .drain(into)
            .map_err(|()| DiskError::LogOverflow {
                path: self.image.path().to_path_buf(),
                limit,
            })
    }

    /// Changes the bound of one epoch's write log.
    pub fn set_log_limit(&self, limit: u64) {
        lock(&self.log).set_limit(limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(len: u64) -> (tempfile::NamedTempFile, Disk) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        let d = Disk::open(f.path(), false).unwrap();
        (f, d)
    }

    #[test]
    fn data_log_carries_writes_in_order_and_flushes() {
        let (_f, d) = disk(1 << 20);
        d.write(0, &[1u8; 512]).unwrap(); // before tracking: not recorded
        d.set_tracking(Tracking::Data);
        d.write(4096, &[2u8; 1024]).unwrap();
        d.write(4096, &[3u8; 512]).unwrap();
        d.flush().unwrap();
        let mut e = EpochDiskWrites::default();
        d.drain(&mut e).unwrap();
        let w: Vec<(u64, Vec<u8>)> = e.writes().map(|(o, b)| (o, b.to_vec())).collect();
        assert_eq!(w, vec![(4096, vec![2u8; 1024]), (4096, vec![3u8; 512])]);
        assert!(e.flushed());
        assert_eq!(e.bytes(), 1536);
        // The next epoch starts empty.
        d.write(8192, &[4u8; 512]).unwrap();
        d.drain(&mut e).unwrap();
        assert_eq!(e.writes().count(), 1);
        assert!(!e.flushed());
        // The image holds the writes.
        let mut b = [0u8; 512];
        d.read(4096, &mut b).unwrap();
        assert_eq!(b, [3u8; 512]);
    }

    #[test]
    fn block_tracking_marks_every_touched_block_then_switches_to_data() {
        let (_f, d) = disk(1 << 20);
        d.set_tracking(Tracking::Blocks);
        d.write(TRACK_BLOCK - 512, &[1u8; 1024]).unwrap(); // blocks 0 and 1
        d.write(5 * TRACK_BLOCK, &[1u8; 512]).unwrap();
        assert_eq!(d.take_written_blocks(), vec![0, 1, 5]);
        assert!(d.take_written_blocks().is_empty());
        d.write(3 * TRACK_BLOCK, &[1u8; 512]).unwrap();
        assert_eq!(d.switch_to_data(), vec![3]);
        assert_eq!(d.tracking(), Tracking::Data);
        d.write(0, &[9u8; 512]).unwrap();
        let mut e = EpochDiskWrites::default();
        d.drain(&mut e).unwrap();
        assert_eq!(e.writes().count(), 1);
    }

    #[test]
    fn log_overflow_is_reported_not_silently_dropped() {
        let (_f, d) = disk(1 << 20);
        d.set_tracking(Tracking::Data);
        d.set_log_limit(4096);
        d.write(0, &[1u8; 4096]).unwrap();
        d.write(4096, &[1u8; 512]).unwrap();
        let mut e = EpochDiskWrites::default();
        let err = d.drain(&mut e).unwrap_err();
        assert!(err.to_string().contains("overflowed"), "{err}");
        // After an overflow the next epoch records again.
        d.write(0, &[1u8; 512]).unwrap();
        d.drain(&mut e).unwrap();
        assert_eq!(e.writes().count(), 1);
    }

    #[test]
    fn replicated_writes_are_not_recorded() {
        let (_f, d) = disk(1 << 20);
        d.set_tracking(Tracking::Data);
        d.apply(0, &[5u8; 512]).unwrap();
        let mut e = EpochDiskWrites::default();
        d.drain(&mut e).unwrap();
        assert_eq!(e.writes().count(), 0);
        let mut b = [0u8; 512];
        d.read(0, &mut b).unwrap();
        assert_eq!(b, [5u8; 512]);
    }
}
