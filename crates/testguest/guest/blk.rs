//! virtio-blk driver (modern, one split virtqueue, polling from ring 3, one request at a
//! time): read, write and flush of 512-byte sectors.

use alloc::string::String;
use core::fmt::Write;

use crate::virtio::{self, dma_alloc, Error, Mmio, Virtqueue, DESC_F_NEXT, DESC_F_WRITE};

const F_FLUSH: u64 = 1 << 9;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const S_OK: u8 = 0;
/// Largest transfer in one request.
pub const MAX_IO: usize = 64 * 1024;
pub const SECTOR: u64 = 512;

/// A virtio-blk device, initialized and running.
pub struct VirtioBlk {
    pub base: u64,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Whether the device needs (and offers) flush.
    flush: bool,
    vq: Virtqueue,
    /// Request header (16 bytes) at 0, status byte at 16.
    req: *mut u8,
    /// Bounce buffer of MAX_IO bytes.
    data: *mut u8,
}

impl VirtioBlk {
    /// The first virtio-blk device among `slots`.
    pub fn find(slots: &[virtio::Slot]) -> Option<Mmio> {
        slots
            .iter()
            .map(|s| Mmio { base: s.base })
            .find(|m| m.probe() == Some(virtio::ID_BLOCK))
    }

    pub fn new(mmio: Mmio) -> Result<Self, Error> {
        let (mut queues, features) = mmio.init(F_FLUSH, 1, 8)?;
        let vq = queues.pop().ok_or(Error::NoQueue(mmio.base, 0))?;
        let sectors = u64::from(mmio.config_u32(0)) | u64::from(mmio.config_u32(4)) << 32;
        let req = dma_alloc(64, 64).ok_or(Error::NoMemory)?;
        let data = dma_alloc(MAX_IO, 4096).ok_or(Error::NoMemory)?;
        mmio.driver_ok();
        Ok(VirtioBlk {
            base: mmio.base,
            sectors,
            flush: features & F_FLUSH != 0,
            vq,
            req,
            data,
        })
    }

    fn request(&mut self, kind: u32, sector: u64, len: usize) -> Result<(), String> {
        // SAFETY: `req` is our 64-byte DMA block: header at 0..16, status at 16.
        unsafe {
            core::ptr::write_volatile(self.req as *mut u32, kind);
            core::ptr::write_volatile(self.req.add(4) as *mut u32, 0);
            core::ptr::write_volatile(self.req.add(8) as *mut u64, sector);
            core::ptr::write_volatile(self.req.add(16), 0xff);
        }
        let req = self.req as u64;
        if len > 0 {
            let dflags = if kind == T_IN { DESC_F_WRITE } else { 0 };
            self.vq.set_desc(0, req, 16, DESC_F_NEXT, 1);
            self.vq.set_desc(1, self.data as u64, len as u32, dflags | DESC_F_NEXT, 2);
            self.vq.set_desc(2, req + 16, 1, DESC_F_WRITE, 0);
        } else {
            self.vq.set_desc(0, req, 16, DESC_F_NEXT, 2);
            self.vq.set_desc(2, req + 16, 1, DESC_F_WRITE, 0);
        }
        self.vq.push(0);
        self.vq.notify();
        loop {
            if self.vq.pop_used().is_some() {
                break;
            }
            core::hint::spin_loop();
        }
        // SAFETY: as above; the device wrote the status byte.
        let status = unsafe { core::ptr::read_volatile(self.req.add(16)) };
        if status != S_OK {
            let mut m = String::new();
            let _ = write!(
                m,
                "virtio-blk at {:#x}: request type {kind} at sector {sector} ({len} bytes) failed with status {status}",
                self.base
            );
            return Err(m);
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes (a multiple of 512) from `sector`.
    pub fn read(&mut self, mut sector: u64, buf: &mut [u8]) -> Result<(), String> {
        for chunk in buf.chunks_mut(MAX_IO) {
            self.request(T_IN, sector, chunk.len())?;
            // SAFETY: the device wrote chunk.len() <= MAX_IO bytes into `data`.
            let src = unsafe { core::slice::from_raw_parts(self.data, chunk.len()) };
            chunk.copy_from_slice(src);
            sector += chunk.len() as u64 / SECTOR;
        }
        Ok(())
    }

    /// Writes `buf` (a multiple of 512 bytes) at `sector`.
    pub fn write(&mut self, mut sector: u64, buf: &[u8]) -> Result<(), String> {
        for chunk in buf.chunks(MAX_IO) {
            // SAFETY: `data` holds MAX_IO >= chunk.len() bytes, not in use by the device.
            let dst = unsafe { core::slice::from_raw_parts_mut(self.data, chunk.len()) };
            dst.copy_from_slice(chunk);
            self.request(T_OUT, sector, chunk.len())?;
            sector += chunk.len() as u64 / SECTOR;
        }
        Ok(())
    }

    /// Makes completed writes durable (no-op if the device offers no flush: then it is
    /// write-through).
    pub fn flush(&mut self) -> Result<(), String> {
        if self.flush {
            self.request(T_FLUSH, 0, 0)
        } else {
            Ok(())
        }
    }
}
