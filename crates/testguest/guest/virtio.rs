//! virtio-mmio (virtio 1.x "modern", version 2) discovery and transport, and split
//! virtqueues, for drivers that run in ring 3 and poll (no interrupts).
//!
//! Devices are found through `virtio_mmio.device=SIZE@BASE:IRQ[:ID]` words on the command
//! line (what ftvm and QEMU's microvm append). The MMIO windows and the rings are
//! identity-mapped and user-accessible (the guest's page tables map 0..4 GiB with the user
//! bit), so every register access is a plain ring-3 load or store that the VMM traps.

use alloc::alloc::{alloc_zeroed, Layout};
use alloc::vec::Vec;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

/// Register offsets (virtio 1.2, 4.2.2).
mod reg {
    pub const MAGIC: usize = 0x000;
    pub const VERSION: usize = 0x004;
    pub const DEVICE_ID: usize = 0x008;
    pub const DEVICE_FEATURES: usize = 0x010;
    pub const DEVICE_FEATURES_SEL: usize = 0x014;
    pub const DRIVER_FEATURES: usize = 0x020;
    pub const DRIVER_FEATURES_SEL: usize = 0x024;
    pub const QUEUE_SEL: usize = 0x030;
    pub const QUEUE_NUM_MAX: usize = 0x034;
    pub const QUEUE_NUM: usize = 0x038;
    pub const QUEUE_READY: usize = 0x044;
    pub const QUEUE_NOTIFY: usize = 0x050;
    pub const STATUS: usize = 0x070;
    pub const QUEUE_DESC_LOW: usize = 0x080;
    pub const QUEUE_DESC_HIGH: usize = 0x084;
    pub const QUEUE_DRIVER_LOW: usize = 0x090;
    pub const QUEUE_DRIVER_HIGH: usize = 0x094;
    pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: usize = 0x0a4;
    pub const CONFIG: usize = 0x100;
}

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_FAILED: u32 = 128;
/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;

/// virtio device IDs.
pub const ID_NET: u32 = 1;
pub const ID_BLOCK: u32 = 2;

/// Most devices the guest looks at.
pub const MAX_DEVICES: usize = 16;

/// One `virtio_mmio.device=` word: the window's base and size.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub base: u64,
    pub size: u64,
}

fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// `SIZE` with an optional K/M/G suffix.
fn parse_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    parse_num(num)?.checked_mul(1 << shift)
}

/// Parses one `virtio_mmio.device=` value: `SIZE@BASE:IRQ[:ID]`.
pub fn parse_slot(v: &str) -> Option<Slot> {
    let (size, rest) = v.split_once('@')?;
    let base = rest.split(':').next()?;
    Some(Slot {
        base: parse_num(base)?,
        size: parse_size(size)?,
    })
}

/// The virtio-mmio slots named on the command line, in order.
pub fn slots(cmdline: &str) -> Vec<Slot> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("virtio_mmio.device="))
        .filter_map(parse_slot)
        .filter(|s| s.size >= 0x200 && s.base >= 0x10_0000 && s.base + s.size <= 1 << 32)
        .take(MAX_DEVICES)
        .collect()
}

/// Why a device could not be set up.
#[derive(Debug)]
pub enum Error {
    /// Version register is not 2 (legacy transport).
    Legacy(u64, u32),
    /// The device lacks a feature the driver needs.
    MissingFeature(u64, &'static str),
    /// FEATURES_OK did not stick.
    FeaturesRejected(u64),
    /// Queue `q` has size 0 (absent).
    NoQueue(u64, u32),
    /// Out of memory for rings or buffers.
    NoMemory,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Legacy(b, v) => write!(
                f,
                "virtio-mmio device at {b:#x} has version {v}, not 2 (modern); \
                 under QEMU add -global virtio-mmio.force-legacy=false"
            ),
            Error::MissingFeature(b, what) => {
                write!(f, "virtio-mmio device at {b:#x} does not offer {what}")
            }
            Error::FeaturesRejected(b) => {
                write!(f, "virtio-mmio device at {b:#x} rejected our features")
            }
            Error::NoQueue(b, q) => write!(f, "virtio-mmio device at {b:#x} has no queue {q}"),
            Error::NoMemory => write!(f, "out of memory for virtqueues"),
        }
    }
}

/// A virtio-mmio register window.
#[derive(Clone, Copy)]
pub struct Mmio {
    pub base: u64,
}

impl Mmio {
    pub fn read(&self, off: usize) -> u32 {
        // SAFETY: `base` is a virtio-mmio window from the command line (below 4 GiB,
        // identity-mapped, user-accessible); reads of its registers have no memory effect.
        unsafe { read_volatile((self.base as usize + off) as *const u32) }
    }

    pub fn write(&self, off: usize, v: u32) {
        // SAFETY: as in `read`; the VMM traps the store.
        unsafe { write_volatile((self.base as usize + off) as *mut u32, v) }
    }

    pub fn config_u8(&self, off: usize) -> u8 {
        // SAFETY: as in `read` (device-specific configuration space).
        unsafe { read_volatile((self.base as usize + reg::CONFIG + off) as *const u8) }
    }

    pub fn config_u32(&self, off: usize) -> u32 {
        self.read(reg::CONFIG + off)
    }

    /// Magic and device ID, if a device is there (ID 0 = empty slot).
    pub fn probe(&self) -> Option<u32> {
        if self.read(reg::MAGIC) != MAGIC_VALUE {
            return None;
        }
        match self.read(reg::DEVICE_ID) {
            0 => None,
            id => Some(id),
        }
    }

    /// Resets the device, negotiates `wanted & offered` features (VERSION_1 required),
    /// sets up `nqueues` queues of at most `max_size` entries; returns the queues and the
    /// negotiated features. The caller fills the queues, then calls [`Mmio::driver_ok`].
    pub fn init(&self, wanted: u64, nqueues: u32, max_size: u16) -> Result<(Vec<Virtqueue>, u64), Error> {
        let version = self.read(reg::VERSION);
        if version != 2 {
            return Err(Error::Legacy(self.base, version));
        }
        self.write(reg::STATUS, 0);
        while self.read(reg::STATUS) != 0 {
            core::hint::spin_loop();
        }
        self.write(reg::STATUS, STATUS_ACKNOWLEDGE);
        self.write(reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.write(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.read(reg::DEVICE_FEATURES);
        self.write(reg::DEVICE_FEATURES_SEL, 1);
        let hi = self.read(reg::DEVICE_FEATURES);
        let offered = u64::from(lo) | u64::from(hi) << 32;
        if offered & F_VERSION_1 == 0 {
            self.fail();
            return Err(Error::MissingFeature(self.base, "VIRTIO_F_VERSION_1"));
        }
        let features = (wanted | F_VERSION_1) & offered;
        self.write(reg::DRIVER_FEATURES_SEL, 0);
        self.write(reg::DRIVER_FEATURES, features as u32);
        self.write(reg::DRIVER_FEATURES_SEL, 1);
        self.write(reg::DRIVER_FEATURES, (features >> 32) as u32);
        let st = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write(reg::STATUS, st);
        if self.read(reg::STATUS) & STATUS_FEATURES_OK == 0 {
            self.fail();
            return Err(Error::FeaturesRejected(self.base));
        }
        let mut queues = Vec::new();
        for q in 0..nqueues {
            self.write(reg::QUEUE_SEL, q);
            let max = self.read(reg::QUEUE_NUM_MAX);
            if max == 0 {
                self.fail();
                return Err(Error::NoQueue(self.base, q));
            }
            // Power of two not above the device's maximum.
            let mut size = u32::from(max_size);
            while size > max {
                size /= 2;
            }
            let vq = Virtqueue::new(*self, q, size as u16).ok_or(Error::NoMemory)?;
            self.write(reg::QUEUE_NUM, size);
            let (d, a, u) = (vq.desc as u64, vq.avail as u64, vq.used as u64);
            self.write(reg::QUEUE_DESC_LOW, d as u32);
            self.write(reg::QUEUE_DESC_HIGH, (d >> 32) as u32);
            self.write(reg::QUEUE_DRIVER_LOW, a as u32);
            self.write(reg::QUEUE_DRIVER_HIGH, (a >> 32) as u32);
            self.write(reg::QUEUE_DEVICE_LOW, u as u32);
            self.write(reg::QUEUE_DEVICE_HIGH, (u >> 32) as u32);
            self.write(reg::QUEUE_READY, 1);
            queues.push(vq);
        }
        Ok((queues, features))
    }

    /// Sets DRIVER_OK: the device is live.
    pub fn driver_ok(&self) {
        let st = self.read(reg::STATUS);
        self.write(reg::STATUS, st | STATUS_DRIVER_OK);
    }

    fn fail(&self) {
        let st = self.read(reg::STATUS);
        self.write(reg::STATUS, st | STATUS_FAILED);
    }
}

/// Allocates zeroed, aligned memory that lives forever (rings, buffers). The identity map
/// makes its address the guest-physical address the device uses.
pub fn dma_alloc(size: usize, align: usize) -> Option<*mut u8> {
    let layout = Layout::from_size_align(size.max(1), align).ok()?;
    // SAFETY: non-zero size; the memory is never freed.
    let p = unsafe { alloc_zeroed(layout) };
    (!p.is_null()).then_some(p)
}

/// Descriptor flags.
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

#[repr(C)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// A split virtqueue; the driver manages descriptor IDs itself.
pub struct Virtqueue {
    mmio: Mmio,
    index: u32,
    pub size: u16,
    desc: *mut Desc,
    /// flags u16, idx u16, ring[size] u16.
    avail: *mut u16,
    /// flags u16, idx u16, ring[size] of (id u32, len u32).
    used: *mut u8,
    avail_idx: u16,
    last_used: u16,
    /// Entries made available since the last notify.
    unnotified: bool,
}

impl Virtqueue {
    fn new(mmio: Mmio, index: u32, size: u16) -> Option<Self> {
        let n = usize::from(size);
        let desc = dma_alloc(16 * n, 4096)? as *mut Desc;
        let avail = dma_alloc(6 + 2 * n, 4096)? as *mut u16;
        let used = dma_alloc(6 + 8 * n, 4096)?;
        // We poll: ask the device not to interrupt.
        // SAFETY: `avail` points to our zeroed ring (flags at offset 0).
        unsafe { write_volatile(avail, AVAIL_F_NO_INTERRUPT) };
        Some(Virtqueue {
            mmio,
            index,
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            last_used: 0,
            unnotified: false,
        })
    }

    /// Writes descriptor `id`.
    pub fn set_desc(&mut self, id: u16, addr: u64, len: u32, flags: u16, next: u16) {
        assert!(id < self.size, "descriptor {id} out of range");
        // SAFETY: `id < size`: inside our descriptor table, which only we write.
        unsafe {
            write_volatile(
                self.desc.add(usize::from(id)),
                Desc {
                    addr,
                    len,
                    flags,
                    next,
                },
            )
        }
    }

    /// Makes the chain starting at descriptor `head` available to the device.
    pub fn push(&mut self, head: u16) {
        let slot = usize::from(self.avail_idx % self.size);
        // SAFETY: ring entries 0..size follow flags and idx in our avail ring.
        unsafe { write_volatile(self.avail.add(2 + slot), head) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The entry must be visible before the index that publishes it.
        fence(Ordering::Release);
        // SAFETY: idx is the second u16 of the avail ring.
        unsafe { write_volatile(self.avail.add(1), self.avail_idx) };
        self.unnotified = true;
    }

    /// Notifies the device if entries were added since the last notify and the device
    /// wants notifications.
    pub fn notify(&mut self) {
        if !self.unnotified {
            return;
        }
        self.unnotified = false;
        fence(Ordering::SeqCst);
        // SAFETY: the used ring's flags are its first u16 (written by the device).
        let flags = unsafe { read_volatile(self.used as *const u16) };
        if flags & USED_F_NO_NOTIFY == 0 {
            self.mmio.write(reg::QUEUE_NOTIFY, self.index);
        }
    }

    /// The next used element: (descriptor head, bytes written by the device).
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        // SAFETY: idx is the second u16 of the used ring (written by the device).
        let idx = unsafe { read_volatile((self.used as *const u16).add(1)) };
        if idx == self.last_used {
            return None;
        }
        fence(Ordering::Acquire);
        let slot = usize::from(self.last_used % self.size);
        // SAFETY: used elements (8 bytes each) start at offset 4 and slot < size.
        let (id, len) = unsafe {
            let e = self.used.add(4 + 8 * slot) as *const u32;
            (read_volatile(e), read_volatile(e.add(1)))
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some(((id % u32::from(self.size)) as u16, len))
    }
}
