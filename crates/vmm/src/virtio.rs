//! The VM's virtio-mmio devices: slots, KVM notification plumbing, state, and the gate
//! that keeps device threads still while the vCPUs are paused.
//!
//! Slot `i` is at `0xd000_0000 + i * 0x1000` with interrupt GSI `5 + i`; network devices
//! take the first slots in command-line order. Each device's interrupt is an eventfd
//! registered with KVM as an irqfd on its GSI. Each queue's notification is an eventfd
//! registered as a KVM ioeventfd on the slot's QueueNotify register with the queue index
//! as data match, so a notify does not exit to the VMM; where KVM refuses that, the
//! notify arrives as an ordinary MMIO exit and the transport signals the same eventfd.

use std::sync::{Arc, Mutex};

use ftvm_devices::bus::lock;
use ftvm_devices::MmioBus;
use ftvm_virtio::layout::{cmdline_word, slot_base, slot_gsi, MMIO_SLOTS, MMIO_SLOT_SIZE};
use ftvm_virtio::transport::QUEUE_NOTIFY_OFFSET;
use ftvm_virtio::{Interrupt, IoGate, MmioTransport, VirtioDevice};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::error::{kvm_err, VmmError};
use crate::memory::GuestMemory;
use crate::state::DeviceState;

/// One occupied slot.
#[derive(Debug)]
struct Slot {
    index: usize,
    transport: Arc<Mutex<MmioTransport>>,
}

/// The VM's virtio devices.
#[derive(Debug, Default)]
pub struct VirtioDevices {
    slots: Vec<Slot>,
    gate: Arc<IoGate>,
    /// Whether every queue notification goes through KVM ioeventfd.
    ioeventfd: bool,
}

/// The saved-state id of slot `i`.
pub fn state_id(i: usize) -> String {
    format!("virtio-mmio@{i}")
}

impl VirtioDevices {
    /// Put `devices` in slots 0, 1, ... on `bus`, with irqfd and ioeventfd registered.
    pub fn attach(
        fd: &VmFd,
        mem: &GuestMemory,
        bus: &mut MmioBus,
        devices: Vec<Box<dyn VirtioDevice>>,
    ) -> Result<Self, VmmError> {
        if devices.len() > MMIO_SLOTS {
            return Err(VmmError::BootSetup {
                what: "virtio devices",
                reason: format!("{} devices, at most {MMIO_SLOTS}", devices.len()),
            });
        }
        let gate = Arc::new(IoGate::new());
        let mut slots = Vec::new();
        let mut ioeventfd = true;
        for (index, device) in devices.into_iter().enumerate() {
            let name = device.name();
            let line = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::Io {
                what: format!("creating the interrupt eventfd of virtio {name}"),
                source,
            })?;
            fd.register_irqfd(&line, slot_gsi(index))
                .map_err(kvm_err("KVM_IRQFD (virtio)"))?;
            let transport = MmioTransport::new(
                device,
                mem.clone(),
                Arc::new(Interrupt::new(line)),
                gate.clone(),
            )
            .map_err(|e| VmmError::BootSetup {
                what: "virtio device",
                reason: e.to_string(),
            })?;
            let notify = IoEventAddress::Mmio(slot_base(index) + QUEUE_NOTIFY_OFFSET);
            for (q, evt) in transport.queue_events().iter().enumerate() {
                if let Err(e) = fd.register_ioevent(evt.as_ref(), &notify, q as u32) {
                    if ioeventfd {
                        eprintln!("ftvm: KVM ioeventfd refused ({e}); virtio queue notifications take the MMIO exit path");
                    }
                    ioeventfd = false;
                }
            }
            let transport = Arc::new(Mutex::new(transport));
            bus.insert(slot_base(index), MMIO_SLOT_SIZE, transport.clone())
                .map_err(|e| VmmError::BootSetup {
                    what: "virtio slot",
                    reason: e.to_string(),
                })?;
            slots.push(Slot { index, transport });
        }
        Ok(Self {
            slots,
            gate,
            ioeventfd,
        })
    }

    /// Whether queue notifications go through KVM ioeventfd.
    pub fn uses_ioeventfd(&self) -> bool {
        self.ioeventfd
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The `virtio_mmio.device=` words for the guest command line, space-separated.
    pub fn cmdline_words(&self) -> String {
        self.slots
            .iter()
            .map(|s| cmdline_word(s.index))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Let device threads run (the vCPUs are about to run).
    pub fn open(&self) {
        self.gate.open();
    }

    /// Stop device threads between batches and keep them out (the vCPUs are parked).
    pub fn close(&self) {
        self.gate.close();
    }

    /// Every device's state. Call with the gate closed.
    pub fn save(&self) -> Result<Vec<DeviceState>, VmmError> {
        self.slots
            .iter()
            .map(|s| {
                Ok(DeviceState {
                    id: state_id(s.index),
                    bytes: lock(&s.transport).save()?,
                })
            })
            .collect()
    }

    /// Restore the device whose state id is `id`; `None` if no slot has that id.
    pub fn restore(&self, id: &str, bytes: &[u8]) -> Option<Result<(), VmmError>> {
        let slot = self.slots.iter().find(|s| state_id(s.index) == id)?;
        Some(lock(&slot.transport).restore(bytes).map_err(VmmError::from))
    }

    /// The state ids of all slots.
    pub fn state_ids(&self) -> Vec<String> {
        self.slots.iter().map(|s| state_id(s.index)).collect()
    }

    /// Tell the outside world the VM runs here now (network devices announce their MAC).
    pub fn announce(&self) {
        for s in &self.slots {
            lock(&s.transport).announce();
        }
    }

    /// Stop every device thread (the VM ends).
    pub fn shutdown(&self) {
        for s in &self.slots {
            lock(&s.transport).shutdown();
        }
    }

    /// Devices that found their driver misbehaving, with the reason.
    pub fn failures(&self) -> Vec<(usize, String)> {
        self.slots
            .iter()
            .filter_map(|s| lock(&s.transport).failure().map(|r| (s.index, r)))
            .collect()
    }
}
