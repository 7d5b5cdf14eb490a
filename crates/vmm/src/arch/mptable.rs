//! The Intel MultiProcessor table: how a guest without ACPI finds its CPUs, IOAPIC and
//! legacy interrupt routing. Written at 0x9fc00 (the last KiB of base memory, where both
//! Linux and the test guest look for the "_MP_" floating pointer).

use vm_memory::{Bytes, GuestAddress};

use crate::error::VmmError;
use crate::layout::MPTABLE_ADDR;
use crate::memory::GuestMemory;

/// The IOAPIC's MMIO base.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The local APIC's MMIO base.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// IOAPIC input pins.
pub const IOAPIC_PINS: u8 = 24;
/// Largest vCPU count the table can describe (it must fit below 0xa0000).
pub const MAX_CPUS: u32 = 32;

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The floating pointer and configuration table for `cpus` processors, as bytes to place
/// at [`MPTABLE_ADDR`].
pub fn build(cpus: u32) -> Result<Vec<u8>, VmmError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(VmmError::VcpuCount {
            requested: cpus,
            reason: format!("the MP table describes 1 to {MAX_CPUS} vCPUs"),
        });
    }
    let ioapic_id = cpus as u8; // APIC ids 0..cpus are the processors
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        // Processor: type 0, lapic id, lapic version, flags (enabled, bootstrap), signature,
        // feature flags (FPU, APIC), reserved.
        let flags = 1 | if id == 0 { 2 } else { 0 };
        entries.extend_from_slice(&[0, id as u8, 0x14, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&0x201u32.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    // Bus 0: ISA.
    entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    count += 1;
    // IOAPIC: enabled, version 0x11.
    entries.extend_from_slice(&[2, ioapic_id, 0x11, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    // ISA IRQs 0-15 to IOAPIC pins 0-15 (IRQ 0 to pin 2, as PC firmware does), edge/high.
    for irq in 0..16u8 {
        let pin = if irq == 0 { 2 } else { irq };
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, pin]);
        count += 1;
    }
    // Local interrupts: LINT0 ExtINT, LINT1 NMI, to all local APICs.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = MPTABLE_ADDR as u32 + FLOATING_LEN as u32;
    let table_len = (HEADER_LEN + entries.len()) as u16;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&table_len.to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"FTVM    ");
    header.extend_from_slice(b"FTVM-VM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&table_addr.to_le_bytes());
    floating.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);

    let mut out = floating;
    out.extend_from_slice(&table);
    if MPTABLE_ADDR as usize + out.len() > 0xa0000 {
        return Err(VmmError::BootSetup {
            what: "MP table",
            reason: format!("{} bytes do not fit below 0xa0000", out.len()),
        });
    }
    Ok(out)
}

/// Write the MP table for `cpus` processors into guest memory.
pub fn write(mem: &GuestMemory, cpus: u32) -> Result<(), VmmError> {
    let bytes = build(cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_ADDR))
        .map_err(|e| VmmError::BootSetup {
            what: "MP table",
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_valid_and_processors_counted() {
        for cpus in [1, 2, MAX_CPUS] {
            let t = build(cpus).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            let len = u16::from_le_bytes([t[20], t[21]]) as usize;
            let cfg = &t[16..16 + len];
            assert_eq!(&cfg[..4], b"PCMP");
            assert_eq!(cfg.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            let procs = cfg[44..].chunks(20).take_while(|e| e[0] == 0).count();
            assert_eq!(procs as u32, cpus);
        }
        assert!(build(0).is_err());
        assert!(build(MAX_CPUS + 1).is_err());
    }
}
