//! Initial disk sync (on `--protect`, and on re-protection after a failover).
//!
//! 1. The receiver (backup) hashes its images in [`TRACK_BLOCK`] blocks (SHA-256) and
//!    sends the hashes (`DiskHashes`) as soon as the connection is up.
//! 2. The primary turns on block tracking, then reads its own images while the VM runs,
//!    hashes each block and sends only the blocks whose hash differs (`DiskWrites` in
//!    sync epochs, which carry no state). A backup that already holds the same image
//!    (same base image, or the old primary after a failover) receives almost nothing.
//! 3. Blocks the guest wrote during the copy are sent again (dirty-block rounds, like
//!    memory pre-copy), until few remain.
//! 4. Atomically per disk: the last written blocks are taken and the disk switches to the
//!    data log, so from that instant every guest write travels in its epoch
//!    ([`crate::disk_epoch`]); the last blocks are sent.
//!
//! Blocks are re-read after being marked, and all later writes are in the data log,
//! which the backup applies after the sync epochs: its image ends equal to the primary's.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ftvm_devices::bus::lock;
use ftvm_devices::disk::{Disk, Tracking, TRACK_BLOCK};
use ftvm_wire::{DiskHashes, Message, MessageWriter, DISK_HASH_LEN};
use sha2::{Digest, Sha256};

use crate::error::ReplicationError;
use crate::link::{Reader, Writer};

/// A block hash.
pub type BlockHash = [u8; DISK_HASH_LEN];
/// Hashes per `DiskHashes` message (1024 blocks = 64 MiB of image, 32 KiB of hashes).
const HASHES_PER_MESSAGE: u64 = 1024;
/// Disk data per sync epoch.
const SYNC_EPOCH_BYTES: usize = 32 << 20;
/// Stop the dirty-block rounds once at most this many blocks remain.
const SMALL_ROUND: usize = 64;
/// Longest wait for the next `DiskHashes` message.
const HASH_WAIT: Duration = Duration::from_secs(60);

/// SHA-256 of a block.
pub fn hash_block(data: &[u8]) -> BlockHash {
    let mut h = [0u8; DISK_HASH_LEN];
    h.copy_from_slice(&Sha256::digest(data));
    h
}

/// Hashes of every block of `disk`, in order; `per_chunk(hashes)` receives them in
/// chunks of at most [`HASHES_PER_MESSAGE`].
fn hash_disk(
    disk: &Disk,
    mut per_chunk: impl FnMut(u64, &[u8]) -> Result<(), ReplicationError>,
) -> Result<(), ReplicationError> {
    let mut buf = vec![0u8; TRACK_BLOCK as usize];
    let mut chunk = Vec::with_capacity(HASHES_PER_MESSAGE as usize * DISK_HASH_LEN);
    let mut first = 0;
    for b in 0..disk.blocks() {
        let (off, len) = disk.block_range(b);
        disk.read(off, &mut buf[..len])?;
        chunk.extend_from_slice(&hash_block(&buf[..len]));
        if (b + 1 - first) == HASHES_PER_MESSAGE || b + 1 == disk.blocks() {
            per_chunk(first, &chunk)?;
            chunk.clear();
            first = b + 1;
        }
    }
    Ok(())
}

/// Backup: sends the hashes of every disk (right after the handshake).
pub fn send_disk_hashes(disks: &[Arc<Disk>], w: &Mutex<Writer>) -> Result<(), ReplicationError> {
    let t = Instant::now();
    for (i, disk) in disks.iter().enumerate() {
        hash_disk(disk, |first, hashes| {
            let msg = DiskHashes::new(
                i as u8,
                disks.len() as u8,
                TRACK_BLOCK as u32,
                disk.size(),
                first,
                hashes,
            )
            .map_err(|e| ReplicationError::Peer(format!("disk hashes: {e}")))?;
            let mut w = lock(w);
            w.send(&Message::DiskHashes(msg))?;
            Ok(w.flush()?)
        })?;
    }
    if !disks.is_empty() {
        eprintln!(
            "ftvm: hashed {} disk(s) for the initial sync in {:.2} s",
            disks.len(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Primary: receives the backup's hashes of every disk; checks count and sizes.
fn receive_disk_hashes(
    disks: &[Arc<Disk>],
    r: &mut Reader,
) -> Result<Vec<Vec<BlockHash>>, ReplicationError> {
    let mut out: Vec<Vec<BlockHash>> = disks
        .iter()
        .map(|d| Vec::with_capacity(d.blocks() as usize))
        .collect();
    let mut last = Instant::now();
    while out
        .iter()
        .zip(disks)
        .any(|(h, d)| (h.len() as u64) < d.blocks())
    {
        if last.elapsed() > HASH_WAIT {
            return Err(ReplicationError::Peer(format!(
                "the backup sent no disk hashes for {} s: does it have the same --disk options ({} disk(s) here)?",
                HASH_WAIT.as_secs(),
                disks.len()
            )));
        }
        let msg = match r.recv()? {
            Some(m) => m,
            None => {
                return Err(ReplicationError::Peer(
                    "backup closed the connection during the disk hash exchange".into(),
                ))
            }
        };
        let h = match msg {
            Message::Heartbeat { .. } => continue,
            Message::DiskHashes(h) => h,
            Message::Error { code, message } => {
                return Err(ReplicationError::Peer(format!(
                    "backup reported {code:?}: {message}"
                )))
            }
            other => {
                return Err(ReplicationError::Peer(format!(
                    "unexpected {} from the backup during the disk hash exchange",
                    other.summary()
                )))
            }
        };
        last = Instant::now();
        if usize::from(h.disks) != disks.len() {
            return Err(ReplicationError::Peer(format!(
                "the backup has {} disk(s), this VM has {}: give both the same --disk options",
                h.disks,
                disks.len()
            )));
        }
        let disk = &disks[usize::from(h.disk)];
        if h.disk_bytes != disk.size() {
            return Err(ReplicationError::Peer(format!(
                "disk {}: the backup's image is {} bytes, this VM's {} ({}) is {} bytes: images must have the same size",
                h.disk,
                h.disk_bytes,
                h.disk,
                disk.image().path().display(),
                disk.size()
            )));
        }
        if h.block_size as u64 != TRACK_BLOCK {
            return Err(ReplicationError::Peer(format!(
                "disk {}: backup hashes {}-byte blocks, expected {TRACK_BLOCK}",
                h.disk, h.block_size
            )));
        }
        let have = &mut out[usize::from(h.disk)];
        if h.first_block != have.len() as u64 {
            return Err(ReplicationError::Peer(format!(
                "disk {}: hashes from block {} arrived, expected block {}",
                h.disk,
                h.first_block,
                have.len()
            )));
        }
        for (_, x) in h.hashes() {
            let mut b = [0u8; DISK_HASH_LEN];
            b.copy_from_slice(x);
            have.push(b);
        }
    }
    Ok(out)
}

/// What the initial disk sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskSyncStats {
    /// Blocks compared.
    pub blocks: u64,
    /// Blocks whose hash differed (sent in the first pass).
    pub differing: u64,
    /// Blocks sent again because the guest wrote them during the sync.
    pub resent: u64,
    /// Bytes of disk data sent.
    pub bytes: u64,
}

/// Sends disk data in sync epochs of about [`SYNC_EPOCH_BYTES`].
struct EpochBatcher<'w, W: Write> {
    w: &'w mut MessageWriter<W>,
    epoch: u64,
    pending: Vec<(u8, u64, Vec<u8>)>,
    bytes: usize,
    sent: u64,
    last_send: Instant,
}

/// Longest silence towards the backup during the sync: it declares the primary lost
/// after its heartbeat timeout (at least 200 ms), and comparing equal blocks sends
/// nothing for a long time.
const KEEPALIVE: Duration = Duration::from_millis(50);

impl<W: Write> EpochBatcher<'_, W> {
    /// Sends a heartbeat if nothing was sent for [`KEEPALIVE`].
    fn keepalive(&mut self) -> Result<(), ReplicationError> {
        if self.last_send.elapsed() >= KEEPALIVE {
            self.w.send(&Message::Heartbeat {
                epoch: 0,
                sent_unix_nanos: crate::link::unix_nanos(),
            })?;
            self.w.flush()?;
            self.last_send = Instant::now();
        }
        Ok(())
    }

    fn push(&mut self, disk: u8, offset: u64, data: Vec<u8>) -> Result<(), ReplicationError> {
        self.bytes += data.len();
        self.pending.push((disk, offset, data));
        if self.bytes >= SYNC_EPOCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ReplicationError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.epoch += 1;
        self.w.begin_epoch(self.epoch)?;
        for (disk, offset, data) in &self.pending {
            self.w.send_disk_writes(*disk, [(*offset, &data[..])])?;
        }
        self.w.commit_epoch()?;
        self.w.flush()?;
        self.sent += self.bytes as u64;
        self.last_send = Instant::now();
        self.pending.clear();
        self.bytes = 0;
        Ok(())
    }
}

/// Primary: the whole initial disk sync (see the module docs). `last_epoch` is the last
/// epoch number used so far; returns the last one used by the sync. On return every disk
/// records guest writes in its data log. On error the disks' tracking is turned off.
pub fn sync_disks(
    disks: &[Arc<Disk>],
    r: &mut Reader,
    w: &mut Writer,
    last_epoch: u64,
) -> Result<(u64, DiskSyncStats), ReplicationError> {
    if disks.is_empty() {
        return Ok((last_epoch, DiskSyncStats::default()));
    }
    for d in disks {
        d.set_tracking(Tracking::Blocks);
    }
    let result = sync_inner(disks, r, w, last_epoch).map_err(|e| explain(r, e));
    if result.is_err() {
        crate::disk_epoch::stop_tracking(disks);
    }
    result
}

/// A send failed: the backup may have said why before it closed (disk full, ...).
pub(crate) fn explain(r: &mut Reader, e: ReplicationError) -> ReplicationError {
    if !matches!(e, ReplicationError::Send(_)) {
        return e;
    }
    let _ = r
        .frames()
        .get_ref()
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(2)));
    for _ in 0..10_000 {
        match r.recv() {
            Ok(Some(Message::Error { code, message })) => {
                return ReplicationError::Peer(format!("backup reported {code:?}: {message}"))
            }
            Ok(Some(_)) => continue,
            _ => break,
        }
    }
    e
}

fn sync_inner(
    disks: &[Arc<Disk>],
    r: &mut Reader,
    w: &mut Writer,
    last_epoch: u64,
) -> Result<(u64, DiskSyncStats), ReplicationError> {
    let t = Instant::now();
    let theirs = receive_disk_hashes(disks, r)?;
    let mut stats = DiskSyncStats::default();
    let mut batch = EpochBatcher {
        w,
        epoch: last_epoch,
        pending: Vec::new(),
        bytes: 0,
        sent: 0,
        last_send: Instant::now(),
    };
    let total: u64 = disks.iter().map(|d| d.blocks()).sum();
    let mut shown = Instant::now();
    for (i, (disk, hashes)) in disks.iter().zip(&theirs).enumerate() {
        for b in 0..disk.blocks() {
            let (off, len) = disk.block_range(b);
            let mut data = vec![0u8; len];
            disk.read(off, &mut data)?;
            stats.blocks += 1;
            batch.keepalive()?;
            if hash_block(&data) != hashes[b as usize] {
                stats.differing += 1;
                batch.push(i as u8, off, data)?;
            }
            if shown.elapsed() >= Duration::from_secs(2) {
                shown = Instant::now();
                eprintln!(
                    "ftvm: disk sync: {:.0}% compared, {} of {} blocks differ so far, {} MiB sent",
                    stats.blocks as f64 * 100.0 / total.max(1) as f64,
                    stats.differing,
                    stats.blocks,
                    batch.sent >> 20
                );
            }
        }
    }
    batch.flush()?;
    // Dirty-block rounds while the guest runs.
    for _ in 0..8 {
        let written: Vec<Vec<u64>> = disks.iter().map(|d| d.take_written_blocks()).collect();
        let n: usize = written.iter().map(Vec::len).sum();
        resend(disks, &written, &mut batch, &mut stats)?;
        if n <= SMALL_ROUND {
            break;
        }
    }
    // Switch to the data log; send what was written since the last round.
    let written: Vec<Vec<u64>> = disks.iter().map(|d| d.switch_to_data()).collect();
    resend(disks, &written, &mut batch, &mut stats)?;
    batch.flush()?;
    stats.bytes = batch.sent;
    eprintln!(
        "ftvm: disk sync done in {:.2} s: {} disk(s), {} blocks compared, {} differed, {} re-sent after guest writes, {} bytes sent",
        t.elapsed().as_secs_f64(),
        disks.len(),
        stats.blocks,
        stats.differing,
        stats.resent,
        stats.bytes
    );
    Ok((batch.epoch, stats))
}

fn resend<W: Write>(
    disks: &[Arc<Disk>],
    written: &[Vec<u64>],
    batch: &mut EpochBatcher<'_, W>,
    stats: &mut DiskSyncStats,
) -> Result<(), ReplicationError> {
    for (i, (disk, blocks)) in disks.iter().zip(written).enumerate() {
        for &b in blocks {
            let (off, len) = disk.block_range(b);
            let mut data = vec![0u8; len];
            disk.read(off, &mut data)?;
            stats.resent += 1;
            batch.keepalive()?;
            batch.push(i as u8, off, data)?;
        }
    }
    batch.flush()
}
