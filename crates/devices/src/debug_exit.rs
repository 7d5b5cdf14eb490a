//! The debug-exit port: a guest `out` of a 32-bit value ends the VM with that exit code.
//!
//! Same port and meaning as QEMU's `isa-debug-exit,iobase=0xf4,iosize=4` (QEMU exits with
//! `(code << 1) | 1`; ftvm exits with `code` itself).

use crate::bus::{DeviceAction, PortDevice};

/// The base port.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// The debug-exit device. Stateless.
#[derive(Debug, Default)]
pub struct DebugExit;

impl PortDevice for DebugExit {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> DeviceAction {
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        DeviceAction::Exit(u32::from_le_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_value_is_exit_code() {
        let mut d = DebugExit;
        assert_eq!(d.write(0, &7u32.to_le_bytes()), DeviceAction::Exit(7));
        assert_eq!(d.write(0, &[3]), DeviceAction::Exit(3));
    }
}
