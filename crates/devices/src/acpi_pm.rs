//! ACPI fixed-hardware power management registers: how an ACPI guest powers off or resets.
//!
//! The FADT (crates/vmm/src/arch/acpi.rs) points the guest's ACPI code at these ports:
//!
//! ```text
//! 0x600  PM1a_EVT_BLK  status (2 bytes, write 1 to clear) and enable (2 bytes)
//! 0x604  PM1a_CNT_BLK  control (2 bytes): SCI_EN (bit 0), SLP_TYP (bits 10-12), SLP_EN (bit 13)
//! 0x608  RESET_REG     writing RESET_VALUE resets the machine
//! ```
//!
//! Power-off is what ACPI calls entering S5: the guest reads the `_S5` package from the
//! DSDT (SLP_TYP = [`SLP_TYP_S5`]) and writes SLP_TYP with SLP_EN set into PM1a control.
//! ftvm then ends the VM with exit code 0, like the i8042 reset line and the debug-exit port.
//! Other sleep states are not offered in the DSDT; a request for one is ignored (the guest
//! sees the write complete and carries on, as on a machine whose firmware lacks the state).

use serde::{Deserialize, Serialize};

use crate::bus::{DeviceAction, PortDevice};
use crate::state::{decode, encode, StateError, Stateful};

/// First port of the block.
pub const ACPI_PM_PORT: u16 = 0x600;
/// Ports claimed from [`ACPI_PM_PORT`].
pub const ACPI_PM_PORT_LEN: u16 = 9;
/// PM1a event block (status, enable): offset from [`ACPI_PM_PORT`] and length.
pub const PM1_EVT_OFFSET: u16 = 0;
/// PM1 event block length (status + enable registers).
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a control block offset.
pub const PM1_CNT_OFFSET: u16 = 4;
/// PM1 control block length.
pub const PM1_CNT_LEN: u8 = 2;
/// Reset register offset.
pub const RESET_OFFSET: u16 = 8;
/// The value the FADT tells the guest to write into the reset register.
pub const RESET_VALUE: u8 = 0x06;
/// SLP_TYP of S5 (soft off), as the DSDT's `_S5` package states it.
pub const SLP_TYP_S5: u16 = 5;

/// PM1 control: the OS is in ACPI mode (always: there is no SMI to switch modes).
pub const SCI_EN: u16 = 1 << 0;
/// PM1 control: enter the sleep state in SLP_TYP.
pub const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0x7;

/// The registers' contents.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcpiPmState {
    /// PM1 status (no event source sets bits; kept so that reads return what is there).
    pub status: u16,
    /// PM1 enable.
    pub enable: u16,
    /// PM1 control, without SLP_EN (a write-only bit).
    pub control: u16,
}

/// The power management register block.
#[derive(Debug, Default)]
pub struct AcpiPm {
    state: AcpiPmState,
}

impl AcpiPm {
    fn register(&mut self, offset: u16) -> Option<(&mut u16, u16)> {
        match offset {
            0 | 1 => Some((&mut self.state.status, offset)),
            2 | 3 => Some((&mut self.state.enable, offset - 2)),
            4 | 5 => Some((&mut self.state.control, offset - 4)),
            _ => None,
        }
    }
}

/// Merge `data` (an access of 1, 2 or 4 bytes starting at byte `at` of a 16-bit register)
/// into `old`; bytes beyond the register are left out.
fn merge16(old: u16, at: u16, data: &[u8]) -> u16 {
    let mut bytes = old.to_le_bytes();
    for (i, b) in data.iter().enumerate() {
        if let Some(slot) = bytes.get_mut(at as usize + i) {
            *slot = *b;
        }
    }
    u16::from_le_bytes(bytes)
}

impl PortDevice for AcpiPm {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        // A wide access may span status and enable (one 32-bit read of the event block).
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset + i as u16;
            *byte = match at {
                0 | 1 => self.state.status.to_le_bytes()[at as usize],
                2 | 3 => self.state.enable.to_le_bytes()[at as usize - 2],
                4 | 5 => (self.state.control | SCI_EN).to_le_bytes()[at as usize - 4],
                _ => 0,
            };
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        if offset == RESET_OFFSET {
            return match data.first() {
                Some(&RESET_VALUE) => DeviceAction::Reset,
                _ => DeviceAction::None,
            };
        }
        if offset < 2 {
            // Status bits are cleared by writing 1s.
            let written = merge16(0, offset, data);
            self.state.status &= !written;
            return DeviceAction::None;
        }
        let is_control = offset == PM1_CNT_OFFSET || offset == PM1_CNT_OFFSET + 1;
        let Some((reg, at)) = self.register(offset) else {
            return DeviceAction::None;
        };
        let value = merge16(*reg, at, data);
        if !is_control {
            *reg = value;
            return DeviceAction::None;
        }
        *reg = (value & !SLP_EN) | SCI_EN;
        let slp_typ = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if value & SLP_EN != 0 && slp_typ == SLP_TYP_S5 {
            DeviceAction::Exit(0)
        } else {
            DeviceAction::None
        }
    }
}

impl Stateful for AcpiPm {
    fn state_id(&self) -> &'static str {
        "acpi_pm"
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

    fn s5(extra: u16) -> [u8; 2] {
        ((SLP_TYP_S5 << SLP_TYP_SHIFT) | extra).to_le_bytes()
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let mut d = AcpiPm::default();
        // ACPICA writes SLP_TYP first, then SLP_TYP | SLP_EN.
        assert_eq!(d.write(PM1_CNT_OFFSET, &s5(SCI_EN)), DeviceAction::None);
        assert_eq!(
            d.write(PM1_CNT_OFFSET, &s5(SCI_EN | SLP_EN)),
            DeviceAction::Exit(0)
        );
    }

    #[test]
    fn other_sleep_types_and_slp_typ_alone_do_not_end_the_vm() {
        let mut d = AcpiPm::default();
        for typ in 0..8u16 {
            let v = (typ << SLP_TYP_SHIFT) | SLP_EN;
            let expect = if typ == SLP_TYP_S5 {
                DeviceAction::Exit(0)
            } else {
                DeviceAction::None
            };
            assert_eq!(d.write(PM1_CNT_OFFSET, &v.to_le_bytes()), expect, "{typ}");
        }
        assert_eq!(d.write(PM1_CNT_OFFSET, &s5(0)), DeviceAction::None);
    }

    #[test]
    fn byte_wide_control_write_of_the_high_byte_powers_off() {
        let mut d = AcpiPm::default();
        d.write(PM1_CNT_OFFSET, &s5(0));
        let high = s5(SLP_EN)[1];
        assert_eq!(d.write(PM1_CNT_OFFSET + 1, &[high]), DeviceAction::Exit(0));
    }

    #[test]
    fn control_reads_in_acpi_mode_without_slp_en() {
        let mut d = AcpiPm::default();
        let mut b = [0u8; 2];
        d.read(PM1_CNT_OFFSET, &mut b);
        assert_eq!(u16::from_le_bytes(b), SCI_EN);
        d.write(
            PM1_CNT_OFFSET,
            &(3u16 << SLP_TYP_SHIFT | SLP_EN).to_le_bytes(),
        );
        d.read(PM1_CNT_OFFSET, &mut b);
        assert_eq!(u16::from_le_bytes(b), (3 << SLP_TYP_SHIFT) | SCI_EN);
    }

    #[test]
    fn reset_register_resets_only_with_reset_value() {
        let mut d = AcpiPm::default();
        assert_eq!(d.write(RESET_OFFSET, &[0x02]), DeviceAction::None);
        assert_eq!(d.write(RESET_OFFSET, &[RESET_VALUE]), DeviceAction::Reset);
    }

    #[test]
    fn status_is_write_one_to_clear_and_enable_round_trips() {
        let mut d = AcpiPm::default();
        d.state.status = 0x8001;
        d.write(0, &0x0001u16.to_le_bytes());
        d.write(2, &0x0120u16.to_le_bytes());
        let mut b = [0u8; 4];
        d.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x0120_8000);
        let saved = d.save().unwrap();
        let mut e = AcpiPm::default();
        e.restore(&saved).unwrap();
        assert_eq!(e.state, d.state);
        assert!(e.restore(&[0xff; 9]).is_err());
    }
}
