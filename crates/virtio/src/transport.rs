//! The virtio-mmio transport, virtio 1.x "modern" layout (Version register = 2).
//!
//! The driver's register writes arrive here from vCPU MMIO exits. Queue configuration
//! goes straight into rust-vmm `virtio_queue::Queue`s through their checked setters; the
//! transport never parses rings itself. Whatever the driver does wrong (feature bits the
//! device did not offer, queue sizes that are not a power of two, misaligned ring
//! addresses, rings outside guest memory, status bits out of order) ends in a refused
//! FEATURES_OK or a NEEDS_RESET status and a config interrupt, never in a VMM panic.

use std::sync::{Arc, Mutex};

use ftvm_devices::bus::lock;
use ftvm_devices::state::{decode, encode};
use ftvm_devices::{MmioDevice, StateError};
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::device::{ActivateContext, DeviceFailure, Interrupt, VirtioDevice};
use crate::gate::IoGate;
use crate::GuestMemory;

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The modern (virtio 1.x) transport.
pub const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to the driver ("FTVM" would not fit the convention; QEMU's is used
/// by nobody here, so ftvm reports its own).
pub const VENDOR_ID: u32 = 0x4654_564d;

const STATE_ID: &str = "virtio-mmio";

/// One queue's saved configuration and position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// Next available-ring entry the device will read.
    pub next_avail: u16,
    /// Next used-ring entry the device will write.
    pub next_used: u16,
    /// VIRTIO_F_EVENT_IDX in use.
    pub event_idx: bool,
}

/// The transport's complete state (plus the device's own bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// Device type, checked on restore.
    pub device_type: u32,
    /// Status register.
    pub status: u32,
    /// DeviceFeaturesSel.
    pub features_select: u32,
    /// DriverFeaturesSel.
    pub driver_features_select: u32,
    /// Feature bits the driver wrote.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_select: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Why the device needs a reset, if it does.
    pub failure: Option<String>,
    /// Every queue.
    pub queues: Vec<QueueSnapshot>,
    /// The device's own state.
    pub device: Vec<u8>,
}

/// A virtio device behind the virtio-mmio register interface.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    gate: Arc<IoGate>,
    failure: Arc<DeviceFailure>,
    queues: Arc<Mutex<Vec<Queue>>>,
    /// Setter refusals per queue (bad size, misaligned address): such a queue can never
    /// be made ready.
    queue_errors: Vec<Option<String>>,
    queue_events: Vec<Arc<EventFd>>,
    status: u32,
    features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    config_generation: u32,
    /// The driver set feature bits beyond bit 63.
    unknown_features: bool,
    activated: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device", &self.device.name())
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

/// Why a transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A queue size the device offers is not a valid virtqueue size.
    #[error(
        "virtio {device}: queue {index} maximum size {size} is not a power of two up to 32768"
    )]
    QueueSize {
        /// Device kind.
        device: &'static str,
        /// Queue index.
        index: usize,
        /// The size.
        size: u16,
    },
    /// An eventfd could not be made.
    #[error("virtio {device}: creating a queue notification eventfd: {source}")]
    EventFd {
        /// Device kind.
        device: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

impl MmioTransport {
    /// Put `device` behind a transport. Its workers run only while `gate` is open.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        gate: Arc<IoGate>,
    ) -> Result<Self, TransportError> {
        let name = device.name();
        let mut queues = Vec::new();
        let mut queue_events = Vec::new();
        for (index, size) in device.queue_max_sizes().into_iter().enumerate() {
            queues.push(Queue::new(size).map_err(|_| TransportError::QueueSize {
                device: name,
                index,
                size,
            })?);
            queue_events.push(Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(
                |source| TransportError::EventFd {
                    device: name,
                    source,
                },
            )?));
        }
        Ok(Self {
            queue_errors: vec![None; queues.len()],
            queues: Arc::new(Mutex::new(queues)),
            queue_events,
            device,
            mem,
            interrupt,
            gate,
            failure: Arc::default(),
            status: 0,
            features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            config_generation: 0,
            unknown_features: false,
            activated: false,
        })
    }

    /// The notification eventfd of each queue, for KVM ioeventfd registration (a write of
    /// the queue's index to QueueNotify at `base + QUEUE_NOTIFY_OFFSET`).
    pub fn queue_events(&self) -> &[Arc<EventFd>] {
        &self.queue_events
    }

    /// The device.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// Features offered: the device's plus VIRTIO_F_VERSION_1.
    pub fn offered_features(&self) -> u64 {
        self.device.device_features() | (1u64 << VIRTIO_F_VERSION_1)
    }

    /// The Status register as the driver reads it.
    pub fn status(&self) -> u32 {
        if self.failure.is_failed() {
            self.status | VIRTIO_CONFIG_S_NEEDS_RESET
        } else {
            self.status
        }
    }

    /// Why the device needs a reset, if it does.
    pub fn failure(&self) -> Option<String> {
        self.failure.reason()
    }

    fn fail(&mut self, reason: String) {
        eprintln!(
            "ftvm: virtio {}: the guest's driver misbehaved: {reason}; device needs a reset",
            self.device.name()
        );
        self.failure.fail(reason);
        self.interrupt.signal_config();
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        for q in lock(&self.queues).iter_mut() {
            q.reset();
        }
        self.queue_errors.iter_mut().for_each(|e| *e = None);
        self.failure.clear();
        self.interrupt.set_status(0);
        self.status = 0;
        self.features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.unknown_features = false;
        self.queue_select = 0;
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & VIRTIO_CONFIG_S_FAILED != 0 {
            // The driver gave up on the device.
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        let old = self.status;
        let new = value & !VIRTIO_CONFIG_S_NEEDS_RESET;
        if new & old != old {
            self.fail(format!(
                "status {new:#x} clears bits of {old:#x} without a reset"
            ));
            return;
        }
        let added = new & !old;
        let order = [
            VIRTIO_CONFIG_S_ACKNOWLEDGE,
            VIRTIO_CONFIG_S_DRIVER,
            VIRTIO_CONFIG_S_FEATURES_OK,
            VIRTIO_CONFIG_S_DRIVER_OK,
        ];
        // Each step needs the ones before it.
        for (i, bit) in order.iter().enumerate() {
            if added & bit != 0 && order[..i].iter().any(|b| new & b == 0) {
                self.fail(format!(
                    "status {new:#x} sets {bit:#x} before the steps it needs"
                ));
                return;
            }
        }
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let offered = self.offered_features();
            let bogus = self.driver_features & !offered;
            if bogus != 0
                || self.unknown_features
                || self.driver_features & (1u64 << VIRTIO_F_VERSION_1) == 0
            {
                // The device does not accept these features: FEATURES_OK stays clear,
                // which the driver reads back (virtio 1.x, 3.1.1).
                eprintln!(
                    "ftvm: virtio {}: refusing driver features {:#x} (offered {offered:#x}; bits not offered {bogus:#x}; VERSION_1 is required)",
                    self.device.name(),
                    self.driver_features
                );
                self.status = new & !VIRTIO_CONFIG_S_FEATURES_OK & !VIRTIO_CONFIG_S_DRIVER_OK;
                return;
            }
        }
        self.status = new;
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if let Err(reason) = self.activate() {
                self.fail(reason);
            }
        }
    }

    fn activate(&mut self) -> Result<(), String> {
        {
            let queues = lock(&self.queues);
            for (i, q) in queues.iter().enumerate() {
                if let Some(e) = &self.queue_errors[i] {
                    return Err(format!("queue {i}: {e}"));
                }
                if !q.ready() {
                    return Err(format!("queue {i} is not ready at DRIVER_OK"));
                }
                if !q.is_valid(&self.mem) {
                    return Err(format!(
                        "queue {i} (size {}, desc {:#x}, avail {:#x}, used {:#x}) does not lie in guest memory",
                        q.size(),
                        q.desc_table(),
                        q.avail_ring(),
                        q.used_ring()
                    ));
                }
            }
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues: self.queues.clone(),
            queue_events: self.queue_events.clone(),
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
            gate: self.gate.clone(),
            failure: self.failure.clone(),
        };
        self.device.activate(ctx).map_err(|e| e.to_string())?;
        self.activated = true;
        Ok(())
    }

    /// Whether the driver may configure queues now (after FEATURES_OK, before DRIVER_OK).
    fn queue_config_allowed(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0
            && !self.failure.is_failed()
    }

    fn with_selected_queue(&mut self, f: impl FnOnce(&mut Queue) -> Result<(), String>) {
        if !self.queue_config_allowed() {
            return;
        }
        let i = self.queue_select as usize;
        let mut queues = lock(&self.queues);
        let Some(q) = queues.get_mut(i) else {
            return;
        };
        if q.ready() {
            // The spec forbids changing a live queue; ignore like real devices do.
            return;
        }
        if let Err(e) = f(q) {
            self.queue_errors[i] = Some(e);
        }
    }

    fn read_register(&self, offset: u32) -> u32 {
        let queues = lock(&self.queues);
        let q = queues.get(self.queue_select as usize);
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.features_select {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status(),
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        let lo = |old: u64| combine(old, value, false);
        let hi = |old: u64| combine(old, value, true);
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                if self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
                    || self.status & VIRTIO_CONFIG_S_DRIVER == 0
                {
                    return; // features are fixed once accepted, and need DRIVER first
                }
                match self.driver_features_select {
                    0 => self.driver_features = lo(self.driver_features),
                    1 => self.driver_features = hi(self.driver_features),
                    // No feature bits exist beyond 63: setting one is refused at FEATURES_OK.
                    _ => self.unknown_features |= value != 0,
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            VIRTIO_MMIO_QUEUE_NUM => self.with_selected_queue(|q| {
                u16::try_from(value)
                    .map_err(|_| format!("queue size {value} is too large"))
                    .and_then(|s| {
                        q.try_set_size(s).map_err(|_| {
                            format!(
                                "queue size {value} is not a power of two up to {}",
                                q.max_size()
                            )
                        })
                    })
            }),
            VIRTIO_MMIO_QUEUE_READY => {
                if value == 1 {
                    let i = self.queue_select as usize;
                    let err = self.queue_errors.get(i).cloned().flatten();
                    if let Some(e) = err {
                        if self.queue_config_allowed() {
                            self.fail(format!("queue {i}: {e}"));
                        }
                        return;
                    }
                    self.with_selected_queue(|q| {
                        q.set_ready(true);
                        Ok(())
                    });
                } else if value == 0 {
                    // Un-readying a queue before DRIVER_OK.
                    if self.queue_config_allowed() {
                        if let Some(q) = lock(&self.queues).get_mut(self.queue_select as usize) {
                            q.set_ready(false);
                        }
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                // Reached only when KVM ioeventfd is not in use for this address.
                if let Some(e) = self.queue_events.get(value as usize) {
                    let _already_pending = e.write(1);
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                let high = offset == VIRTIO_MMIO_QUEUE_DESC_HIGH;
                self.with_selected_queue(|q| {
                    let a = combine(q.desc_table(), value, high);
                    q.try_set_desc_table_address(GuestAddress(a))
                        .map_err(|e| format!("descriptor table address {a:#x}: {e}"))
                })
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                let high = offset == VIRTIO_MMIO_QUEUE_AVAIL_HIGH;
                self.with_selected_queue(|q| {
                    let a = combine(q.avail_ring(), value, high);
                    q.try_set_avail_ring_address(GuestAddress(a))
                        .map_err(|e| format!("available ring address {a:#x}: {e}"))
                })
            }
            VIRTIO_MMIO_QUEUE_USED_LOW | VIRTIO_MMIO_QUEUE_USED_HIGH => {
                let high = offset == VIRTIO_MMIO_QUEUE_USED_HIGH;
                self.with_selected_queue(|q| {
                    let a = combine(q.used_ring(), value, high);
                    q.try_set_used_ring_address(GuestAddress(a))
                        .map_err(|e| format!("used ring address {a:#x}: {e}"))
                })
            }
            _ => {}
        }
    }

    /// The transport's and the device's state. The VM must be paused (the gate closed).
    pub fn save(&self) -> Result<Vec<u8>, StateError> {
        let queues = lock(&self.queues)
            .iter()
            .map(|q| QueueSnapshot {
                max_size: q.max_size(),
                size: q.size(),
                ready: q.ready(),
                desc_table: q.desc_table(),
                avail_ring: q.avail_ring(),
                used_ring: q.used_ring(),
                next_avail: q.next_avail(),
                next_used: q.next_used(),
                event_idx: q.event_idx_enabled(),
            })
            .collect();
        encode(
            STATE_ID,
            &TransportState {
                device_type: self.device.device_type(),
                status: self.status,
                features_select: self.features_select,
                driver_features_select: self.driver_features_select,
                driver_features: self.driver_features,
                queue_select: self.queue_select,
                interrupt_status: self.interrupt.status(),
                config_generation: self.config_generation,
                failure: self.failure.reason(),
                queues,
                device: self.device.save()?,
            },
        )
    }

    /// Put back saved state (on a transport whose device never ran) and, if the driver
    /// had set DRIVER_OK, activate the device on the restored queues.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let s: TransportState = decode(STATE_ID, bytes)?;
        let invalid = |reason: String| StateError::Invalid {
            device: STATE_ID,
            reason,
        };
        if s.device_type != self.device.device_type() {
            return Err(invalid(format!(
                "saved device type {} is not this device's {}",
                s.device_type,
                self.device.device_type()
            )));
        }
        {
            let mut queues = lock(&self.queues);
            if s.queues.len() != queues.len() {
                return Err(invalid(format!(
                    "saved state has {} queues, the device has {}",
                    s.queues.len(),
                    queues.len()
                )));
            }
            for (i, (q, saved)) in queues.iter_mut().zip(&s.queues).enumerate() {
                if saved.max_size != q.max_size() {
                    return Err(invalid(format!(
                        "queue {i}: saved maximum size {} is not the device's {}",
                        saved.max_size,
                        q.max_size()
                    )));
                }
                let mut fresh =
                    Queue::new(q.max_size()).map_err(|e| invalid(format!("queue {i}: {e}")))?;
                fresh
                    .try_set_size(saved.size)
                    .and_then(|()| fresh.try_set_desc_table_address(GuestAddress(saved.desc_table)))
                    .and_then(|()| fresh.try_set_avail_ring_address(GuestAddress(saved.avail_ring)))
                    .and_then(|()| fresh.try_set_used_ring_address(GuestAddress(saved.used_ring)))
                    .map_err(|e| invalid(format!("queue {i}: {e}")))?;
                fresh.set_next_avail(saved.next_avail);
                fresh.set_next_used(saved.next_used);
                fresh.set_event_idx(saved.event_idx);
                fresh.set_ready(saved.ready);
                *q = fresh;
            }
        }
        self.device.restore(&s.device)?;
        self.status = s.status;
        self.features_select = s.features_select;
        self.driver_features_select = s.driver_features_select;
        self.driver_features = s.driver_features;
        self.queue_select = s.queue_select;
        self.config_generation = s.config_generation;
        self.interrupt.set_status(s.interrupt_status);
        self.failure.clear();
        if let Some(reason) = s.failure {
            self.failure.fail(reason);
        } else if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if let Err(reason) = self.activate() {
                return Err(invalid(format!("reactivating the device: {reason}")));
            }
        }
        Ok(())
    }

    /// Stop the device's workers (the VM ends).
    pub fn shutdown(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
    }

    /// See [`VirtioDevice::announce`].
    pub fn announce(&self) {
        self.device.announce();
    }
}

/// `old` with its low (or high) 32 bits replaced by `value`.
fn combine(old: u64, value: u32, high: bool) -> u64 {
    if high {
        (old & 0xffff_ffff) | (u64::from(value) << 32)
    } else {
        (old & !0xffff_ffff) | u64::from(value)
    }
}

/// Offset of QueueNotify, for ioeventfd registration.
pub const QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

impl MmioDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let config = u64::from(VIRTIO_MMIO_CONFIG);
        if offset >= config {
            self.device.read_config(offset - config, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        let v = self.read_register(offset as u32);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let config = u64::from(VIRTIO_MMIO_CONFIG);
        if offset >= config {
            self.device.write_config(offset - config, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            return; // registers take aligned 32-bit accesses only
        }
        let mut b = [0u8; 4];
        b.copy_from_slice(data);
        self.write_register(offset as u32, u32::from_le_bytes(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{self, ChainError};
    use crate::device::DeviceError;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
    use vm_memory::Bytes;

    const QSIZE: u16 = 16;

    /// A one-queue device that counts activations and resets.
    struct Probe {
        activations: Arc<AtomicUsize>,
        resets: Arc<AtomicUsize>,
        ctx: Arc<Mutex<Option<ActivateContext>>>,
    }
    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            42
        }
        fn name(&self) -> &'static str {
            "probe"
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![QSIZE]
        }
        fn device_features(&self) -> u64 {
            1 << 5
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), DeviceError> {
            self.activations.fetch_add(1, Ordering::SeqCst);
            *self.ctx.lock().unwrap() = Some(ctx);
            Ok(())
        }
        fn reset(&mut self) {
            self.resets.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Rig {
        t: MmioTransport,
        mem: GuestMemory,
        activations: Arc<AtomicUsize>,
        resets: Arc<AtomicUsize>,
        ctx: Arc<Mutex<Option<ActivateContext>>>,
    }

    fn rig() -> Rig {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let activations = Arc::new(AtomicUsize::new(0));
        let resets = Arc::new(AtomicUsize::new(0));
        let ctx = Arc::new(Mutex::new(None));
        let dev = Probe {
            activations: activations.clone(),
            resets: resets.clone(),
            ctx: ctx.clone(),
        };
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let t =
            MmioTransport::new(Box::new(dev), mem.clone(), irq, Arc::new(IoGate::new())).unwrap();
        Rig {
            t,
            mem,
            activations,
            resets,
            ctx,
        }
    }

    fn rd(t: &mut MmioTransport, off: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(u64::from(off), &mut b);
        u32::from_le_bytes(b)
    }
    fn wr(t: &mut MmioTransport, off: u32, v: u32) {
        t.write(u64::from(off), &v.to_le_bytes());
    }

    /// The driver's side of initialisation (virtio 1.x, 3.1.1), up to FEATURES_OK.
    fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
        wr(t, VIRTIO_MMIO_STATUS, 0);
        wr(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        wr(
            t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        wr(
            t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
        );
        rd(t, VIRTIO_MMIO_STATUS)
    }

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const OK: u64 = (1 << 32) | (1 << 5);

    fn setup_queue(t: &mut MmioTransport, size: u32, desc: u64, avail: u64, used: u64) {
        wr(t, VIRTIO_MMIO_QUEUE_SEL, 0);
        wr(t, VIRTIO_MMIO_QUEUE_NUM, size);
        wr(t, VIRTIO_MMIO_QUEUE_DESC_LOW, desc as u32);
        wr(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, (desc >> 32) as u32);
        wr(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail as u32);
        wr(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (avail >> 32) as u32);
        wr(t, VIRTIO_MMIO_QUEUE_USED_LOW, used as u32);
        wr(t, VIRTIO_MMIO_QUEUE_USED_HIGH, (used >> 32) as u32);
        wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }

    fn driver_ok(t: &mut MmioTransport) -> u32 {
        wr(
            t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE
                | VIRTIO_CONFIG_S_DRIVER
                | VIRTIO_CONFIG_S_FEATURES_OK
                | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        rd(t, VIRTIO_MMIO_STATUS)
    }

    fn put_desc(mem: &GuestMemory, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(DESC + u64::from(i) * 16);
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
    }

    fn offer(mem: &GuestMemory, slot: u16, head: u16) {
        mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * u64::from(slot)))
            .unwrap();
        mem.write_obj(slot + 1, GuestAddress(AVAIL + 2)).unwrap();
    }

    #[test]
    fn identifies_as_a_modern_virtio_mmio_device() {
        let mut r = rig();
        assert_eq!(rd(&mut r.t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(rd(&mut r.t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(rd(&mut r.t, VIRTIO_MMIO_DEVICE_ID), 42);
        wr(&mut r.t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut r.t, VIRTIO_MMIO_DEVICE_FEATURES), 1, "VERSION_1");
        wr(&mut r.t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&mut r.t, VIRTIO_MMIO_DEVICE_FEATURES), 1 << 5);
        assert_eq!(rd(&mut r.t, VIRTIO_MMIO_QUEUE_NUM_MAX), u32::from(QSIZE));
        let mut c = [0u8; 2];
        r.t.read(0x104, &mut c);
        assert_eq!(c, [4, 4], "config space from offset 0x100");
    }

    #[test]
    fn a_well_behaved_driver_activates_the_device_and_the_queue_works() {
        let mut r = rig();
        assert_ne!(negotiate(&mut r.t, OK) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
        setup_queue(&mut r.t, 8, DESC, AVAIL, USED);
        let st = driver_ok(&mut r.t);
        assert_eq!(st & VIRTIO_CONFIG_S_NEEDS_RESET, 0, "{:?}", r.t.failure());
        assert_eq!(r.activations.load(Ordering::SeqCst), 1);
        let ctx = r.ctx.lock().unwrap().clone().unwrap();
        assert_eq!(ctx.acked_features, OK);
        // The device pops a chain the driver offered and uses it through the queue crate.
        put_desc(&r.mem, 0, 0x8000, 4, VRING_DESC_F_NEXT as u16, 1);
        put_desc(&r.mem, 1, 0x9000, 8, 2 /* WRITE */, 0);
        r.mem.write_slice(b"ping", GuestAddress(0x8000)).unwrap();
        offer(&r.mem, 0, 0);
        let mut queues = ctx.queues.lock().unwrap();
        let q = &mut queues[0];
        let c = q.pop_descriptor_chain(&r.mem).unwrap();
        let (head, descs) = chain::collect(c, &r.mem, 1 << 16).unwrap();
        assert_eq!(chain::read_all(head, &descs[..1], &r.mem).unwrap(), b"ping");
        let _ = crate::memory_dirty_reset(&r.mem);
        assert_eq!(
            chain::write_all(head, &descs[1..], &r.mem, b"pong").unwrap(),
            4
        );
        q.add_used(&r.mem, head, 4).unwrap();
        let mut got = [0u8; 4];
        r.mem.read_slice(&mut got, GuestAddress(0x9000)).unwrap();
        assert_eq!(&got, b"pong");
        assert_eq!(r.mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 1);
        // The device's writes are in the VMM's dirty bitmap: data page and used ring.
        let dirty = crate::memory_dirty_reset(&r.mem);
        assert!(dirty.contains(&9) && dirty.contains(&3), "{dirty:?}");
        drop(queues);
        wr(&mut r.t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(r.resets.load(Ordering::SeqCst), 1);
        assert_eq!(rd(&mut r.t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(rd(&mut r.t, VIRTIO_MMIO_QUEUE_READY), 0);
    }

    #[test]
    fn bogus_feature_bits_are_refused_at_features_ok() {
        let mut r = rig();
        let st = negotiate(&mut r.t, OK | (1 << 7));
        assert_eq!(st & VIRTIO_CONFIG_S_FEATURES_OK, 0, "not offered");
        let st = negotiate(&mut r.t, 1 << 5);
        assert_eq!(
            st & VIRTIO_CONFIG_S_FEATURES_OK,
            0,
            "legacy driver without VERSION_1"
        );
        negotiate(&mut r.t, OK);
        wr(&mut r.t, VIRTIO_MMIO_STATUS, 0);
        wr(&mut r.t, VIRTIO_MMIO_STATUS, 1);
        wr(&mut r.t, VIRTIO_MMIO_STATUS, 3);
        wr(&mut r.t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 2);
        wr(&mut r.t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        wr(&mut r.t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(&mut r.t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        wr(&mut r.t, VIRTIO_MMIO_STATUS, 11);
        assert_eq!(
            rd(&mut r.t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0
        );
        // Without FEATURES_OK, DRIVER_OK does not activate anything.
        driver_ok(&mut r.t);
        assert_eq!(r.activations.load(Ordering::SeqCst), 0);
    }

    fn assert_needs_reset(r: &mut Rig, what: &str) {
        let st = rd(&mut r.t, VIRTIO_MMIO_STATUS);
        assert_ne!(
            st & VIRTIO_CONFIG_S_NEEDS_RESET,
            0,
            "{what}: status {st:#x}"
        );
        assert_eq!(r.activations.load(Ordering::SeqCst), 0, "{what}: activated");
        assert_ne!(
            rd(&mut r.t, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
            0,
            "{what}: config interrupt"
        );
        // A reset makes it usable again.
        negotiate(&mut r.t, OK);
        setup_queue(&mut r.t, 8, DESC, AVAIL, USED);
        let st = driver_ok(&mut r.t);
        assert_eq!(st & VIRTIO_CONFIG_S_NEEDS_RESET, 0, "{what}: after reset");
        assert_eq!(
            r.activations.load(Ordering::SeqCst),
            1,
            "{what}: after reset"
        );
    }

    #[test]
    fn bad_queue_setups_mark_the_device_needs_reset() {
        let cases: [(&str, u32, u64, u64, u64); 6] = [
            ("misaligned descriptor table", 8, DESC + 8, AVAIL, USED),
            ("misaligned used ring", 8, DESC, AVAIL, USED + 2),
            ("ring outside guest memory", 8, DESC, AVAIL, 0x7fff_f000),
            (
                "address above 4 GiB outside memory",
                8,
                0x1_0000_0000,
                AVAIL,
                USED,
            ),
            ("size not a power of two", 7, DESC, AVAIL, USED),
            ("size above the maximum", 64, DESC, AVAIL, USED),
        ];
        for (what, size, d, a, u) in cases {
            let mut r = rig();
            negotiate(&mut r.t, OK);
            setup_queue(&mut r.t, size, d, a, u);
            driver_ok(&mut r.t);
            assert_needs_reset(&mut r, what);
        }
        // DRIVER_OK with the queue never made ready.
        let mut r = rig();
        negotiate(&mut r.t, OK);
        driver_ok(&mut r.t);
        assert_needs_reset(&mut r, "queue not ready");
        // Status bits out of order.
        let mut r = rig();
        wr(&mut r.t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER_OK | 1);
        assert_needs_reset(&mut r, "DRIVER_OK first");
    }

    #[test]
    fn looping_oversized_and_stray_chains_are_errors() {
        let mut r = rig();
        negotiate(&mut r.t, OK);
        setup_queue(&mut r.t, 8, DESC, AVAIL, USED);
        driver_ok(&mut r.t);
        let ctx = r.ctx.lock().unwrap().clone().unwrap();
        let mut queues = ctx.queues.lock().unwrap();
        let q = &mut queues[0];
        let f = VRING_DESC_F_NEXT as u16;
        // 0 -> 1 -> 0 -> ...
        put_desc(&r.mem, 0, 0x8000, 4, f, 1);
        put_desc(&r.mem, 1, 0x8000, 4, f, 0);
        offer(&r.mem, 0, 0);
        let c = q.pop_descriptor_chain(&r.mem).unwrap();
        assert_eq!(
            chain::collect(c, &r.mem, 1 << 16).err(),
            Some(ChainError::Unterminated { head: 0 })
        );
        // next index beyond the queue
        put_desc(&r.mem, 2, 0x8000, 4, f, 200);
        offer(&r.mem, 1, 2);
        let c = q.pop_descriptor_chain(&r.mem).unwrap();
        assert_eq!(
            chain::collect(c, &r.mem, 1 << 16).err(),
            Some(ChainError::Unterminated { head: 2 })
        );
        // too long
        put_desc(&r.mem, 3, 0x8000, 70_000, 0, 0);
        offer(&r.mem, 2, 3);
        let c = q.pop_descriptor_chain(&r.mem).unwrap();
        assert!(matches!(
            chain::collect(c, &r.mem, 65_562),
            Err(ChainError::TooLong { .. })
        ));
        // buffer outside memory
        put_desc(&r.mem, 4, 0xf_ff00, 0x1000, 0, 0);
        offer(&r.mem, 3, 4);
        let c = q.pop_descriptor_chain(&r.mem).unwrap();
        assert!(matches!(
            chain::collect(c, &r.mem, 1 << 16),
            Err(ChainError::BadAddress { .. })
        ));
        // writable before readable
        put_desc(&r.mem, 5, 0x8000, 4, f | 2, 6);
        put_desc(&r.mem, 6, 0x8000, 4, 0, 0);
        offer(&r.mem, 4, 5);
        let c = q.pop_descriptor_chain(&r.mem).unwrap();
        assert_eq!(
            chain::collect(c, &r.mem, 1 << 16).err(),
            Some(ChainError::Order { head: 5 })
        );
        // head index beyond the queue: an empty chain
        offer(&r.mem, 5, 9999);
        let c = q.pop_descriptor_chain(&r.mem).unwrap();
        assert!(chain::collect(c, &r.mem, 1 << 16).is_err());
    }

    #[test]
    fn state_round_trips_and_reactivates() {
        let mut r = rig();
        negotiate(&mut r.t, OK);
        setup_queue(&mut r.t, 8, DESC, AVAIL, USED);
        driver_ok(&mut r.t);
        {
            let ctx = r.ctx.lock().unwrap().clone().unwrap();
            let mut queues = ctx.queues.lock().unwrap();
            queues[0].set_next_avail(5);
            queues[0].set_next_used(3);
        }
        r.t.interrupt.signal_used_queue();
        let saved = r.t.save().unwrap();
        let mut other = rig();
        other.t.restore(&saved).unwrap();
        assert_eq!(other.activations.load(Ordering::SeqCst), 1, "reactivated");
        assert_eq!(other.t.save().unwrap(), saved);
        assert_eq!(rd(&mut other.t, VIRTIO_MMIO_STATUS), 15);
        assert_eq!(rd(&mut other.t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        let ctx = other.ctx.lock().unwrap().clone().unwrap();
        assert_eq!(ctx.queues.lock().unwrap()[0].next_avail(), 5);
        // Garbage and a state for another device type are refused with a reason.
        let mut third = rig();
        assert!(third.t.restore(&saved[..saved.len() - 3]).is_err());
        let mut s: TransportState = decode(STATE_ID, &saved).unwrap();
        s.device_type = 1;
        let e = third.t.restore(&encode(STATE_ID, &s).unwrap()).unwrap_err();
        assert!(e.to_string().contains("device type"), "{e}");
        s.device_type = 42;
        s.queues[0].desc_table = 0x1001;
        assert!(third.t.restore(&encode(STATE_ID, &s).unwrap()).is_err());
    }

    /// A driver doing random things: random register writes (mostly to the real
    /// registers, with values near the interesting ones), random config accesses of every
    /// size, random ring contents. Nothing may panic, and the device is activated only
    /// through a complete, valid setup.
    #[test]
    fn random_drivers_never_panic_the_transport() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let regs = [
            0x00u32, 0x04, 0x08, 0x0c, 0x10, 0x14, 0x20, 0x24, 0x30, 0x34, 0x38, 0x44, 0x50, 0x60,
            0x64, 0x70, 0x80, 0x84, 0x90, 0x94, 0xa0, 0xa4, 0xfc,
        ];
        for round in 0..200 {
            let mut r = rig();
            for _ in 0..300 {
                let x = next();
                match x % 8 {
                    0..=4 => {
                        let off = regs[(x >> 8) as usize % regs.len()];
                        let v = match (x >> 16) % 6 {
                            0 => 0,
                            1 => (x >> 24) as u32 & 0xff,
                            2 => 1 << ((x >> 24) % 32),
                            3 => [DESC, AVAIL, USED][(x >> 24) as usize % 3] as u32,
                            4 => 8,
                            _ => (x >> 24) as u32,
                        };
                        wr(&mut r.t, off, v);
                    }
                    5 => {
                        let mut b = vec![0u8; (x >> 8) as usize % 9];
                        r.t.read((x >> 16) % 0x1000, &mut b);
                    }
                    6 => r.t.write(
                        (x >> 16) % 0x1000,
                        &(x >> 24).to_le_bytes()[..(x >> 8) as usize % 9],
                    ),
                    _ => {
                        let at = (x >> 8) % 0x8000;
                        r.mem.write_obj(x, GuestAddress(at & !7)).unwrap();
                    }
                }
            }
            // Whatever happened, the state saves and restores onto a fresh transport.
            let saved = r.t.save().unwrap();
            let mut other = rig();
            if let Err(e) = other.t.restore(&saved) {
                assert!(!e.to_string().is_empty(), "round {round}");
            }
        }
    }
}
