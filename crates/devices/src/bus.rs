//! The port-I/O bus: maps port ranges to devices.

use std::sync::{Arc, Mutex};

/// What the VMM must do after a device access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAction {
    /// Nothing: the access is complete.
    None,
    /// The guest asked to stop the VM with this exit code (debug-exit port, power-off).
    Exit(u32),
    /// The guest asked for a reset (i8042 pulse); ftvm ends the VM with code 0.
    Reset,
}

/// A device reached by port I/O.
pub trait PortDevice: Send {
    /// A guest `in` at `offset` from the device's base port.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// A guest `out` at `offset` from the device's base port.
    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction;
}

/// One device on the bus.
type Slot = (u16, u16, Arc<Mutex<dyn PortDevice>>);

/// Port ranges and the devices behind them.
#[derive(Default, Clone)]
pub struct PortBus {
    slots: Vec<Slot>,
}

impl std::fmt::Debug for PortBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<String> = self
            .slots
            .iter()
            .map(|(b, l, _)| format!("{b:#x}+{l}"))
            .collect();
        f.debug_struct("PortBus").field("ranges", &ranges).finish()
    }
}

impl PortBus {
    /// Put `device` at ports `base .. base + len`.
    pub fn insert(&mut self, base: u16, len: u16, device: Arc<Mutex<dyn PortDevice>>) {
        self.slots.push((base, len, device));
    }

    fn find(&self, port: u16) -> Option<(u16, &Arc<Mutex<dyn PortDevice>>)> {
        self.slots
            .iter()
            .find(|(base, len, _)| port >= *base && (port - *base) < *len)
            .map(|(base, _, dev)| (port - *base, dev))
    }

    /// Dispatch a guest `in`. Unclaimed ports read as all ones, like an empty ISA bus.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port) {
            Some((offset, dev)) => lock(dev).read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Dispatch a guest `out`. Writes to unclaimed ports are dropped.
    pub fn write(&self, port: u16, data: &[u8]) -> DeviceAction {
        match self.find(port) {
            Some((offset, dev)) => lock(dev).write(offset, data),
            None => DeviceAction::None,
        }
    }
}

/// Lock a device, recovering from a poisoned lock (a panicking vCPU thread must not take
/// every other device access down with it; device state is plain data and stays usable).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
