//! The device side of virtio: what a device type implements, and what it gets when the
//! driver has set it up.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use ftvm_devices::bus::lock;
use ftvm_devices::StateError;
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::gate::IoGate;
use crate::GuestMemory;

/// Why a device could not be activated or run.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The driver set the device up in a way it cannot work with.
    #[error("virtio {device}: {reason}")]
    BadSetup {
        /// Device kind.
        device: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A host resource failed (thread, eventfd, TAP).
    #[error("virtio {device}: {what}: {source}")]
    Io {
        /// Device kind.
        device: &'static str,
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The device's interrupt line and its interrupt status register.
///
/// The line is an eventfd that the VMM registers with KVM as an irqfd on the slot's GSI
/// (or, where irqfd is missing, a thread that forwards it with KVM_IRQ_LINE).
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    line: EventFd,
}

impl Interrupt {
    /// An interrupt raised through `line`.
    pub fn new(line: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            line,
        }
    }

    /// The device used buffers of a queue.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// The device's configuration (or its status: NEEDS_RESET) changed.
    pub fn signal_config(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        // A full eventfd counter still means "raised": nothing is lost by ignoring EAGAIN.
        let _already_pending = self.line.write(1);
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clear `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Put back a saved status.
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// The eventfd behind the line.
    pub fn line(&self) -> &EventFd {
        &self.line
    }
}

/// A device that found the driver misbehaving (a bad descriptor chain, an address outside
/// guest memory) records it here; the transport then shows NEEDS_RESET in its status and
/// the device does nothing more until the driver resets it.
#[derive(Debug, Default)]
pub struct DeviceFailure {
    failed: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl DeviceFailure {
    /// Record the first failure (later ones are dropped: the first is the cause).
    pub fn fail(&self, reason: String) {
        let mut r = lock(&self.reason);
        if r.is_none() {
            *r = Some(reason);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Whether the device failed.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Why it failed.
    pub fn reason(&self) -> Option<String> {
        lock(&self.reason).clone()
    }

    /// Forget the failure (device reset).
    pub fn clear(&self) {
        *lock(&self.reason) = None;
        self.failed.store(false, Ordering::SeqCst);
    }
}

/// What a device gets when the driver sets DRIVER_OK.
#[derive(Debug, Clone)]
pub struct ActivateContext {
    /// Guest memory (dirty-tracked: every write through it is in the next epoch).
    pub mem: GuestMemory,
    /// The queues, validated, in queue-index order. Shared with the transport, which
    /// reads their indices when the VM state is saved (with the VM paused and the gate
    /// closed, so they are still).
    pub queues: Arc<Mutex<Vec<Queue>>>,
    /// One notification eventfd per queue: the driver wrote that queue's index to
    /// QueueNotify (through KVM ioeventfd, or the transport on an MMIO exit).
    pub queue_events: Vec<Arc<EventFd>>,
    /// Raise an interrupt.
    pub interrupt: Arc<Interrupt>,
    /// Feature bits the driver accepted.
    pub acked_features: u64,
    /// Workers run only while this gate is open (VM running).
    pub gate: Arc<IoGate>,
    /// Where a worker reports a misbehaving driver.
    pub failure: Arc<DeviceFailure>,
}

/// A virtio device type. The transport calls these from vCPU threads (with the
/// transport's lock held) and from the VMM when it saves or restores state.
pub trait VirtioDevice: Send {
    /// Virtio device ID (`VIRTIO_ID_NET`, `VIRTIO_ID_BLOCK`).
    fn device_type(&self) -> u32;
    /// Short name for messages ("net", "block").
    fn name(&self) -> &'static str;
    /// Largest size of each queue; their number is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Feature bits the device offers (the transport adds `VIRTIO_F_VERSION_1`).
    fn device_features(&self) -> u64;
    /// Read the device-specific configuration space (offset from its start).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write the device-specific configuration space; ignored by default.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK: start working on `ctx.queues`. An error marks the
    /// device NEEDS_RESET.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), DeviceError>;
    /// Stop working on the queues (driver reset, or the VM ends). After this returns, no
    /// worker touches guest memory.
    fn reset(&mut self);
    /// Device-specific state beyond the transport's (saved with it).
    fn save(&self) -> Result<Vec<u8>, StateError> {
        Ok(Vec::new())
    }
    /// Put back what [`VirtioDevice::save`] returned (before any activation).
    fn restore(&mut self, _bytes: &[u8]) -> Result<(), StateError> {
        Ok(())
    }
    /// The VM now runs on this host after a takeover or migration: tell the outside world
    /// (virtio-net announces the guest's MAC). Default: nothing to say.
    fn announce(&self) {}
}
