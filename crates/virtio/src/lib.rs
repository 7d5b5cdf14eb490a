//! ftvm's virtio devices.
//!
//! - [`transport::MmioTransport`]: the virtio-mmio transport (virtio 1.x "modern" register
//!   layout, version 2) with split virtqueues from rust-vmm's `virtio-queue`. It is what
//!   the guest's driver talks to; it owns the queues' configuration, feature negotiation,
//!   the device status and the interrupt status, and hands a ready device its queues.
//! - [`device::VirtioDevice`]: what a device type (net, block) implements.
//! - [`net`]: virtio-net over a host TAP device, with transmitted frames going through the
//!   VM's output sink (output commit).
//! - [`gate::IoGate`]: device worker threads touch guest memory only while the VM's
//!   vCPUs run, so a paused VM (an epoch boundary, a snapshot) is a consistent image.
//!
//! Every write a device makes into guest memory goes through vm-memory's `Bytes` methods
//! on [`GuestMemory`], whose `AtomicBitmap` records the page: the replication engine sends
//! those pages in the next epoch (a device write missing from the epoch would be the
//! classic replication bug).

pub mod block;
pub mod chain;
pub mod device;
pub mod gate;
pub mod layout;
pub mod net;
pub mod transport;
mod worker;

pub use device::{ActivateContext, DeviceError, DeviceFailure, Interrupt, VirtioDevice};
pub use gate::IoGate;
pub use transport::MmioTransport;

/// Guest memory as devices see it: vm-memory's mmap backend with the VMM's dirty bitmap.
pub type GuestMemory = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

/// Pages written through `mem` since the last call (test helper).
#[cfg(test)]
pub(crate) fn memory_dirty_reset(mem: &GuestMemory) -> Vec<u64> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let mut pages = Vec::new();
    for region in mem.iter() {
        let base = region.start_addr().0 / 4096;
        let words = std::ops::Deref::deref(region).bitmap().get_and_reset();
        for (i, w) in words.iter().enumerate() {
            for b in 0..64 {
                if w & (1 << b) != 0 {
                    pages.push(base + i as u64 * 64 + b);
                }
            }
        }
    }
    pages
}
