//! The MMIO bus: maps guest-physical address ranges to devices (virtio-mmio slots).
//!
//! A vCPU's MMIO exit is dispatched here by address. Unclaimed addresses read as all ones
//! and writes to them are dropped, like an empty bus.

use std::sync::{Arc, Mutex};

use crate::bus::lock;

/// A device reached by memory-mapped I/O.
pub trait MmioDevice: Send {
    /// A guest load of `data.len()` bytes at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest store at `offset` from the device's base.
    fn write(&mut self, offset: u64, data: &[u8]);
}

type Slot = (u64, u64, Arc<Mutex<dyn MmioDevice>>);

/// Address ranges and the devices behind them.
#[derive(Default, Clone)]
pub struct MmioBus {
    slots: Vec<Slot>,
}

impl std::fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<String> = self
            .slots
            .iter()
            .map(|(b, l, _)| format!("{b:#x}+{l:#x}"))
            .collect();
        f.debug_struct("MmioBus").field("ranges", &ranges).finish()
    }
}

/// Why a device could not be put on the bus.
#[derive(Debug, thiserror::Error)]
#[error("MMIO range {base:#x}+{len:#x} overlaps a device already at {other:#x}")]
pub struct MmioOverlap {
    /// Requested base.
    pub base: u64,
    /// Requested length.
    pub len: u64,
    /// Base of the device in the way.
    pub other: u64,
}

impl MmioBus {
    /// Put `device` at `base .. base + len`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn MmioDevice>>,
    ) -> Result<(), MmioOverlap> {
        if let Some((other, _, _)) = self
            .slots
            .iter()
            .find(|(b, l, _)| base < b.saturating_add(*l) && *b < base.saturating_add(len))
        {
            return Err(MmioOverlap {
                base,
                len,
                other: *other,
            });
        }
        self.slots.push((base, len, device));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Arc<Mutex<dyn MmioDevice>>)> {
        self.slots
            .iter()
            .find(|(base, len, _)| addr >= *base && addr - *base < *len)
            .map(|(base, _, dev)| (addr - *base, dev))
    }

    /// Dispatch a guest load; `false` when no device claims `addr` (the data reads as ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatch a guest store; `false` when no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Reg(Vec<(u64, Vec<u8>)>);
    impl MmioDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_address_and_refuses_overlaps() {
        let mut bus = MmioBus::default();
        let a = Arc::new(Mutex::new(Reg::default()));
        bus.insert(0xd000_0000, 0x1000, a.clone()).unwrap();
        assert!(bus
            .insert(0xd000_0800, 0x1000, Arc::new(Mutex::new(Reg::default())))
            .is_err());
        bus.insert(0xd000_1000, 0x1000, Arc::new(Mutex::new(Reg::default())))
            .unwrap();
        let mut d = [0u8; 4];
        assert!(bus.read(0xd000_0010, &mut d));
        assert_eq!(d, [0x10; 4]);
        assert!(!bus.read(0xd000_2000, &mut d));
        assert_eq!(d, [0xff; 4]);
        assert!(bus.write(0xd000_0ffc, &[1, 2]));
        assert!(!bus.write(0xcfff_ffff, &[1]));
        assert_eq!(a.lock().unwrap().0, vec![(0xffc, vec![1, 2])]);
    }
}
