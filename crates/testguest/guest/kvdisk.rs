//! The key-value service's log on the first virtio-blk disk (`disk=1`): format in
//! `src/kvlog.rs`. Opened at boot (initialized if the disk is empty, replayed if it holds
//! a log, refused otherwise); every batch of mutations is appended and flushed before any
//! reply of that batch is sent.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::blk::{VirtioBlk, MAX_IO};
use crate::kvlog::{self, HeaderKind, Next, FIRST_RECORD, SECTOR, TRAILER};
use crate::kvstore::{Mutation, Store};
use crate::virtio::Slot;

/// The open log.
pub struct DiskLog {
    blk: VirtioBlk,
    /// Disk size in bytes.
    capacity: u64,
    /// Byte offset where the next record goes.
    end: u64,
    /// Bytes of the sector containing `end`, before `end`.
    tail: Vec<u8>,
    /// Records replayed at boot.
    pub replayed: u64,
}

impl DiskLog {
    /// Bytes the log can still take.
    pub fn room(&self) -> u64 {
        self.capacity.saturating_sub(self.end + TRAILER as u64)
    }

    /// ", disk ... log ... records replayed" for the startup line.
    pub fn describe(&self) -> String {
        format!(
            ", disk {:#x} {} KiB, log {} bytes, {} records replayed",
            self.blk.base,
            self.capacity >> 10,
            self.end - FIRST_RECORD,
            self.replayed
        )
    }

    /// Appends the records of `ms` and flushes the disk.
    pub fn append(&mut self, ms: &[Mutation]) -> Result<(), String> {
        let start = self.end - self.tail.len() as u64;
        let mut buf = core::mem::take(&mut self.tail);
        for m in ms {
            kvlog::encode(m, &mut buf);
        }
        let new_end = start + buf.len() as u64;
        if new_end + TRAILER as u64 > self.capacity {
            return Err(format!(
                "log full: {} bytes needed, disk has {}",
                new_end + TRAILER as u64,
                self.capacity
            ));
        }
        let keep = buf.len() % SECTOR;
        let tail = buf[buf.len() - keep..].to_vec();
        // Zeros after the last record (at least TRAILER), up to a whole sector.
        let padded = (buf.len() + TRAILER).div_ceil(SECTOR) * SECTOR;
        buf.resize(padded, 0);
        self.blk.write(start / SECTOR as u64, &buf)?;
        self.blk.flush()?;
        self.end = new_end;
        self.tail = tail;
        Ok(())
    }
}

/// Opens the log on the first virtio-blk disk and replays it into `store`.
pub fn open(slots: &[Slot], store: &mut Store) -> Result<DiskLog, String> {
    let mmio = VirtioBlk::find(slots).ok_or_else(|| {
        format!(
            "no virtio-blk device among {} virtio_mmio.device= slot(s)",
            slots.len()
        )
    })?;
    let mut blk = VirtioBlk::new(mmio).map_err(|e| format!("{e}"))?;
    let capacity = blk.sectors * SECTOR as u64;
    if capacity < 2 * SECTOR as u64 {
        return Err(format!(
            "virtio-blk disk at {:#x} has {capacity} bytes, too small for a log",
            blk.base
        ));
    }
    let mut sector0 = vec![0u8; SECTOR];
    blk.read(0, &mut sector0)?;
    let mut log = DiskLog {
        capacity,
        end: FIRST_RECORD,
        tail: Vec::new(),
        replayed: 0,
        blk,
    };
    match kvlog::check_header(&sector0) {
        HeaderKind::Empty => {
            // Header, then a zero sector so no stale bytes follow the (empty) log.
            let mut init = kvlog::header().to_vec();
            init.resize(2 * SECTOR, 0);
            log.blk.write(0, &init)?;
            log.blk.flush()?;
        }
        HeaderKind::Log => replay(&mut log, store)?,
        HeaderKind::Foreign => {
            return Err(format!(
                "the virtio-blk disk at {:#x} ({capacity} bytes) is not a ftvm-testguest \
                 key-value log (sector 0 is neither all zero nor the log header); \
                 refusing to touch it (give an empty or zeroed disk)",
                log.blk.base
            ))
        }
    }
    store.set_recording(true);
    store.set_log_room(Some(log.room()));
    Ok(log)
}

/// Reads records from the disk in MAX_IO chunks until the log ends.
fn replay(log: &mut DiskLog, store: &mut Store) -> Result<(), String> {
    // buf holds the disk from byte `buf_start` on; `pos` is the next record.
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_start = FIRST_RECORD;
    let mut pos = FIRST_RECORD;
    loop {
        let off = (pos - buf_start) as usize;
        match kvlog::decode(&buf[off..]) {
            Next::Record(m, n) => {
                store.apply(&m);
                log.replayed += 1;
                pos += n as u64;
            }
            Next::End => break,
            Next::NeedBytes(need) => {
                let have_to = buf_start + buf.len() as u64;
                if have_to >= log.capacity || pos + need as u64 > log.capacity {
                    break;
                }
                // Drop what is consumed (whole sectors), then read the next chunk.
                let drop = (off / SECTOR) * SECTOR;
                buf.drain(..drop);
                buf_start += drop as u64;
                let want = (need.max(MAX_IO) as u64).min(log.capacity - have_to);
                let want = want.div_ceil(SECTOR as u64) * SECTOR as u64;
                let want = want.min(log.capacity - have_to);
                let old = buf.len();
                buf.resize(old + want as usize, 0);
                log.blk.read(have_to / SECTOR as u64, &mut buf[old..])?;
            }
        }
    }
    log.end = pos;
    let sector_start = pos / SECTOR as u64 * SECTOR as u64;
    let from = (sector_start - buf_start) as usize;
    let to = (pos - buf_start) as usize;
    log.tail = buf.get(from..to).map(<[u8]>::to_vec).unwrap_or_default();
    Ok(())
}
