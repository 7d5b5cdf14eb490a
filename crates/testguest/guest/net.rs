//! virtio-net driver (modern, split virtqueues, polling from ring 3) and its smoltcp
//! `Device`. Queue 0 receives, queue 1 transmits; every descriptor owns one fixed 2 KiB
//! buffer that starts with the 12-byte `virtio_net_hdr` (VERSION_1 layout, all zero on
//! transmit: no offloads are negotiated).

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::virtio::{self, dma_alloc, Error, Mmio, Virtqueue, DESC_F_WRITE};

const F_MAC: u64 = 1 << 5;
const HDR: usize = 12;
const BUF: usize = 2048;
const QUEUE_SIZE: u16 = 256;
/// Largest Ethernet frame without FCS (1500 + 14).
pub const MTU: usize = 1514;

struct Side {
    vq: Virtqueue,
    bufs: *mut u8,
}

impl Side {
    fn buf(&mut self, id: u16) -> &mut [u8] {
        // SAFETY: `bufs` holds `vq.size` buffers of BUF bytes, only touched by us while
        // the descriptor is not available to the device.
        unsafe { core::slice::from_raw_parts_mut(self.bufs.add(usize::from(id) * BUF), BUF) }
    }
}

/// A virtio-net device, initialized and running.
pub struct VirtioNet {
    pub mac: [u8; 6],
    rx: Side,
    tx: Side,
    /// Transmit descriptors not in flight.
    tx_free: alloc::vec::Vec<u16>,
    pub rx_frames: u64,
    pub tx_frames: u64,
}

impl VirtioNet {
    /// Sets up the device at `mmio` (its ID was checked to be net).
    pub fn new(mmio: Mmio) -> Result<Self, Error> {
        let (mut queues, features) = mmio.init(F_MAC, 2, QUEUE_SIZE)?;
        let mut mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        if features & F_MAC != 0 {
            for (i, m) in mac.iter_mut().enumerate() {
                *m = mmio.config_u8(i);
            }
        }
        let txq = queues.pop().ok_or(Error::NoQueue(mmio.base, 1))?;
        let rxq = queues.pop().ok_or(Error::NoQueue(mmio.base, 0))?;
        let alloc_bufs = |n: u16| dma_alloc(usize::from(n) * BUF, 4096).ok_or(Error::NoMemory);
        let mut rx = Side {
            bufs: alloc_bufs(rxq.size)?,
            vq: rxq,
        };
        let tx = Side {
            bufs: alloc_bufs(txq.size)?,
            vq: txq,
        };
        for id in 0..rx.vq.size {
            let addr = rx.buf(id).as_ptr() as u64;
            rx.vq.set_desc(id, addr, BUF as u32, DESC_F_WRITE, 0);
            rx.vq.push(id);
        }
        let tx_free = (0..tx.vq.size).rev().collect();
        mmio.driver_ok();
        rx.vq.notify();
        Ok(VirtioNet {
            mac,
            rx,
            tx,
            tx_free,
            rx_frames: 0,
            tx_frames: 0,
        })
    }

    /// Finds the first virtio-net device among `slots`.
    pub fn find(slots: &[virtio::Slot]) -> Option<Mmio> {
        slots
            .iter()
            .map(|s| Mmio { base: s.base })
            .find(|m| m.probe() == Some(virtio::ID_NET))
    }

    fn reclaim_tx(&mut self) {
        while let Some((id, _)) = self.tx.vq.pop_used() {
            self.tx_free.push(id);
        }
    }

    /// Sends the notifications batched during a poll.
    pub fn flush(&mut self) {
        self.tx.vq.notify();
        self.rx.vq.notify();
    }
}

pub struct RxToken<'a> {
    side: &'a mut Side,
    id: u16,
    len: usize,
}

pub struct TxToken<'a> {
    side: &'a mut Side,
    free: &'a mut alloc::vec::Vec<u16>,
    count: &'a mut u64,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let id = self.id;
        let len = self.len.clamp(HDR, BUF);
        let r = f(&self.side.buf(id)[HDR..len]);
        // Give the buffer back to the device (notified in `flush`).
        self.side.vq.push(id);
        r
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let len = len.min(BUF - HDR);
        // `transmit`/`receive` only hand out a token when a descriptor is free.
        let id = self.free.pop().unwrap_or(0);
        let buf = self.side.buf(id);
        buf[..HDR].fill(0);
        let r = f(&mut buf[HDR..HDR + len]);
        let addr = buf.as_ptr() as u64;
        self.side.vq.set_desc(id, addr, (HDR + len) as u32, 0, 0);
        self.side.vq.push(id);
        *self.count += 1;
        r
    }
}

impl Device for VirtioNet {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _t: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        self.reclaim_tx();
        if self.tx_free.is_empty() {
            return None;
        }
        let (id, len) = self.rx.vq.pop_used()?;
        self.rx_frames += 1;
        Some((
            RxToken {
                side: &mut self.rx,
                id,
                len: len as usize,
            },
            TxToken {
                side: &mut self.tx,
                free: &mut self.tx_free,
                count: &mut self.tx_frames,
            },
        ))
    }

    fn transmit(&mut self, _t: Instant) -> Option<Self::TxToken<'_>> {
        self.reclaim_tx();
        if self.tx_free.is_empty() {
            return None;
        }
        Some(TxToken {
            side: &mut self.tx,
            free: &mut self.tx_free,
            count: &mut self.tx_frames,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU;
        caps
    }
}
