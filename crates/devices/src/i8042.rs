//! A minimal i8042 keyboard controller: enough for a guest to reset the machine.
//!
//! Linux's `reboot` (and its power-off fallback without ACPI) pulses the reset line by
//! writing 0xfe to the command port 0x64; ftvm then ends the VM. Reads report an empty
//! output buffer so drivers probing for a keyboard give up quickly.

use serde::{Deserialize, Serialize};

use crate::bus::{DeviceAction, PortDevice};
use crate::state::{decode, encode, StateError, Stateful};

/// Base port (data port 0x60; command/status port is 0x64, offset 4).
pub const I8042_PORT: u16 = 0x60;
/// Number of ports claimed from the base.
pub const I8042_PORT_LEN: u16 = 5;
const CMD_RESET_CPU: u8 = 0xfe;
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const STATUS_OUTPUT_FULL: u8 = 0x01;

/// The controller's state.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// Controller configuration byte.
    pub control: u8,
    /// Last command that expects a data byte.
    pub pending_command: u8,
    /// Byte waiting to be read from the data port, if any.
    pub output: Option<u8>,
}

/// The i8042 device.
#[derive(Debug, Default)]
pub struct I8042 {
    state: I8042State,
}

impl PortDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = match offset {
            0 => self.state.output.take().unwrap_or(0),
            4 => {
                if self.state.output.is_some() {
                    STATUS_OUTPUT_FULL
                } else {
                    0
                }
            }
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        let Some(&value) = data.first() else {
            return DeviceAction::None;
        };
        match offset {
            4 => match value {
                CMD_RESET_CPU => return DeviceAction::Reset,
                CMD_READ_CTR => self.state.output = Some(self.state.control),
                CMD_WRITE_CTR => self.state.pending_command = CMD_WRITE_CTR,
                _ => {}
            },
            0 if self.state.pending_command == CMD_WRITE_CTR => {
                self.state.control = value;
                self.state.pending_command = 0;
            }
            _ => {}
        }
        DeviceAction::None
    }
}

impl Stateful for I8042 {
    fn state_id(&self) -> &'static str {
        "i8042"
    }
    fn save(&self) -> Result<Vec<u8>, StateError> {
        encode(self.state_id(), &self.state)
    }
    fn restore(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        self.state = decode(self.state_id(), bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_reset() {
        let mut d = I8042::default();
        assert_eq!(d.write(4, &[0xfe]), DeviceAction::Reset);
    }

    #[test]
    fn control_byte_round_trips_and_state_restores() {
        let mut d = I8042::default();
        d.write(4, &[CMD_WRITE_CTR]);
        d.write(0, &[0x47]);
        d.write(4, &[CMD_READ_CTR]);
        let saved = d.save().unwrap();
        let mut e = I8042::default();
        e.restore(&saved).unwrap();
        let mut b = [0u8];
        e.read(4, &mut b);
        assert_eq!(b[0], STATUS_OUTPUT_FULL);
        e.read(0, &mut b);
        assert_eq!(b[0], 0x47);
    }

    #[test]
    fn garbage_state_is_refused() {
        let mut d = I8042::default();
        assert!(d.restore(&[0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
