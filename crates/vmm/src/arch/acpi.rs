//! ACPI tables: how a stock Linux kernel finds every vCPU, its interrupt controllers, and
//! how to power off.
//!
//! Written at [`ACPI_ADDR`] (0xe0000, in the BIOS area 0xe0000-0xfffff that Linux scans for
//! the "RSD PTR " signature on 16-byte boundaries), below the 0xf0000 page where the test
//! guest looks for the MP table's "_MP_" (both descriptions are given; the MP table stays
//! for guests without ACPI):
//!
//! ```text
//! RSDP (ACPI 2.0+, 36 bytes) -> XSDT -> FADT -> FACS, DSDT
//!                                    -> MADT
//! ```
//!
//! - **MADT**: one local APIC entry per vCPU (APIC id = vCPU index, enabled), the IOAPIC
//!   (id = vCPU count, GSI base 0, as in the MP table), the SCI (IRQ 9, level, active
//!   high) as an interrupt source override, LINT1 as NMI on every CPU. PCAT_COMPAT: the
//!   8259 pair is there too (KVM's in-kernel irqchip). ISA IRQ n is GSI n, the PIT's IRQ 0
//!   included: ftvm keeps KVM's default GSI routing (GSI n -> IOAPIC pin n and 8259 input
//!   n), so the PC convention "IRQ 0 -> GSI 2" would point Linux at a pin that never fires.
//! - **FADT** (revision 6): not hardware-reduced, so Linux keeps its PIT and 8259 set-up;
//!   PM1a event and control blocks and the reset register at the ports of
//!   [`ftvm_devices::acpi_pm`]; no SMI command port (ACPI mode is always on); no PM timer,
//!   no GPE blocks; IAPC_BOOT_ARCH: an 8042, no VGA, no CMOS RTC, no MSI.
//! - **DSDT**: only `Name (_S5, Package () { 5, 0, 0, 0 })`, the SLP_TYP value the guest
//!   writes to PM1a control to power off.
//! - **FACS**: required with a non-hardware-reduced FADT; no firmware waking vector.

use ftvm_devices::acpi_pm::{
    ACPI_PM_PORT, PM1_CNT_LEN, PM1_CNT_OFFSET, PM1_EVT_LEN, PM1_EVT_OFFSET, RESET_OFFSET,
    RESET_VALUE, SLP_TYP_S5,
};
use vm_memory::{Bytes, GuestAddress};

use crate::arch::mptable::{IOAPIC_ADDR, LAPIC_ADDR, MAX_CPUS};
use crate::error::VmmError;
use crate::layout::{ACPI_ADDR, ACPI_END};
use crate::memory::GuestMemory;

const OEM_ID: &[u8; 6] = b"FTVM  ";
const OEM_TABLE_ID: &[u8; 8] = b"FTVM-VM ";
const OEM_REVISION: u32 = 1;
const CREATOR_ID: &[u8; 4] = b"FTVM";
const CREATOR_REVISION: u32 = 1;
/// Length of the common header of every table but the RSDP and FACS.
pub const HEADER_LEN: usize = 36;
/// RSDP length (ACPI 2.0+).
pub const RSDP_LEN: usize = 36;
/// FADT length (revision 6).
pub const FADT_LEN: usize = 276;
/// FACS length.
pub const FACS_LEN: usize = 64;
/// The SCI's ISA interrupt.
pub const SCI_IRQ: u8 = 9;

/// Where each table landed, for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiLayout {
    /// RSDP.
    pub rsdp: u64,
    /// XSDT.
    pub xsdt: u64,
    /// FADT.
    pub fadt: u64,
    /// FACS.
    pub facs: u64,
    /// DSDT.
    pub dsdt: u64,
    /// MADT.
    pub madt: u64,
}

/// Sum of all bytes is zero when `bytes[at]` is set to this.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

fn put_u16(t: &mut [u8], at: usize, v: u16) {
    t[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(t: &mut [u8], at: usize, v: u32) {
    t[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(t: &mut [u8], at: usize, v: u64) {
    t[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A table with its standard header (length and checksum filled in by [`finish`]).
fn header(signature: &[u8; 4], revision: u8) -> Vec<u8> {
    let mut t = vec![0u8; HEADER_LEN];
    t[0..4].copy_from_slice(signature);
    t[8] = revision;
    t[10..16].copy_from_slice(OEM_ID);
    t[16..24].copy_from_slice(OEM_TABLE_ID);
    put_u32(&mut t, 24, OEM_REVISION);
    t[28..32].copy_from_slice(CREATOR_ID);
    put_u32(&mut t, 32, CREATOR_REVISION);
    t
}

fn finish(mut t: Vec<u8>) -> Vec<u8> {
    let len = t.len() as u32;
    put_u32(&mut t, 4, len);
    t[9] = 0;
    t[9] = checksum(&t);
    t
}

/// A Generic Address Structure for an I/O port register.
fn gas_io(t: &mut [u8], at: usize, port: u16, bit_width: u8, access_size: u8) {
    t[at] = 1; // system I/O space
    t[at + 1] = bit_width;
    t[at + 2] = 0; // bit offset
    t[at + 3] = access_size; // 1 byte, 2 word, 3 dword
    put_u64(t, at + 4, u64::from(port));
}

fn rsdp(xsdt: u64) -> Vec<u8> {
    let mut t = vec![0u8; RSDP_LEN];
    t[0..8].copy_from_slice(b"RSD PTR ");
    t[9..15].copy_from_slice(OEM_ID);
    t[15] = 2; // revision: ACPI 2.0+, XSDT valid
    put_u32(&mut t, 16, 0); // no RSDT
    put_u32(&mut t, 20, RSDP_LEN as u32);
    put_u64(&mut t, 24, xsdt);
    t[8] = checksum(&t[..20]);
    t[32] = checksum(&t);
    t
}

fn xsdt(entries: &[u64]) -> Vec<u8> {
    let mut t = header(b"XSDT", 1);
    for e in entries {
        t.extend_from_slice(&e.to_le_bytes());
    }
    finish(t)
}

fn fadt(facs: u64, dsdt: u64) -> Vec<u8> {
    let mut t = header(b"FACP", 6);
    t.resize(FADT_LEN, 0);
    let evt = ACPI_PM_PORT + PM1_EVT_OFFSET;
    let cnt = ACPI_PM_PORT + PM1_CNT_OFFSET;
    put_u32(&mut t, 36, facs as u32);
    put_u32(&mut t, 40, dsdt as u32);
    t[45] = 0; // preferred PM profile: unspecified
    put_u16(&mut t, 46, u16::from(SCI_IRQ));
    put_u32(&mut t, 48, 0); // SMI_CMD: none, the machine is always in ACPI mode
    put_u32(&mut t, 56, u32::from(evt)); // PM1a_EVT_BLK
    put_u32(&mut t, 64, u32::from(cnt)); // PM1a_CNT_BLK
    t[88] = PM1_EVT_LEN;
    t[89] = PM1_CNT_LEN;
    // C2/C3 latencies above 100/1000 us: those states are not supported.
    put_u16(&mut t, 96, 101);
    put_u16(&mut t, 98, 1001);
    // IAPC_BOOT_ARCH: 8042 present (bit 1), VGA not present (2), MSI not supported (3),
    // CMOS RTC not present (5).
    put_u16(&mut t, 109, (1 << 1) | (1 << 2) | (1 << 3) | (1 << 5));
    // Flags: WBINVD (0), power and sleep buttons are not fixed features (4, 5),
    // RESET_REG_SUP (10).
    put_u32(&mut t, 112, 1 | (1 << 4) | (1 << 5) | (1 << 10));
    gas_io(&mut t, 116, ACPI_PM_PORT + RESET_OFFSET, 8, 1);
    t[128] = RESET_VALUE;
    t[131] = 0; // FADT minor version
    put_u64(&mut t, 132, facs); // X_FIRMWARE_CTRL
    put_u64(&mut t, 140, dsdt); // X_DSDT
    gas_io(&mut t, 148, evt, PM1_EVT_LEN * 8, 2);
    gas_io(&mut t, 172, cnt, PM1_CNT_LEN * 8, 2);
    t[268..276].copy_from_slice(b"FTVM-KVM");
    finish(t)
}

fn facs() -> Vec<u8> {
    let mut t = vec![0u8; FACS_LEN];
    t[0..4].copy_from_slice(b"FACS");
    put_u32(&mut t, 4, FACS_LEN as u32);
    t[32] = 2; // version
    t
}

/// The DSDT's AML: `Name (_S5, Package (0x04) { SLP_TYP_S5, 0, 0, 0 })`.
pub fn s5_aml() -> Vec<u8> {
    let mut aml = vec![0x08]; // NameOp
    aml.extend_from_slice(b"_S5_");
    // PackageOp, PkgLength (this byte, NumElements and 5 element bytes), NumElements 4,
    // BytePrefix SLP_TYP, then ZeroOp x3.
    aml.extend_from_slice(&[0x12, 0x07, 0x04, 0x0a, SLP_TYP_S5 as u8, 0x00, 0x00, 0x00]);
    aml
}

fn dsdt() -> Vec<u8> {
    let mut t = header(b"DSDT", 2);
    t.extend_from_slice(&s5_aml());
    finish(t)
}

fn madt(cpus: u32) -> Vec<u8> {
    let mut t = header(b"APIC", 5);
    t.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    t.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT
    for id in 0..cpus {
        // Processor local APIC: type 0, length 8, ACPI processor UID, APIC id, flags (enabled).
        t.extend_from_slice(&[0, 8, id as u8, id as u8]);
        t.extend_from_slice(&1u32.to_le_bytes());
    }
    // IOAPIC: type 1, length 12, id, reserved, address, GSI base.
    t.extend_from_slice(&[1, 12, cpus as u8, 0]);
    t.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    // Interrupt source override: type 2, length 10, bus 0 (ISA), source, GSI, flags.
    // The SCI: level-triggered (bits 2-3 = 3), active high (bits 0-1 = 1).
    t.extend_from_slice(&[2, 10, 0, SCI_IRQ]);
    t.extend_from_slice(&u32::from(SCI_IRQ).to_le_bytes());
    t.extend_from_slice(&0x000du16.to_le_bytes());
    // Local APIC NMI: type 4, length 6, all processors (0xff), flags 0, LINT1.
    t.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    finish(t)
}

fn align(addr: u64, to: u64) -> u64 {
    addr.div_ceil(to) * to
}

/// All tables for `cpus` vCPUs, as one block of bytes to place at [`ACPI_ADDR`], and where
/// each table is.
pub fn build(cpus: u32) -> Result<(Vec<u8>, AcpiLayout), VmmError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(VmmError::VcpuCount {
            requested: cpus,
            reason: format!("the ACPI tables describe 1 to {MAX_CPUS} vCPUs"),
        });
    }
    let madt = madt(cpus);
    let dsdt = dsdt();
    let facs = facs();
    // Addresses first (every table but the RSDP and XSDT has a known length), then bytes.
    let rsdp_at = ACPI_ADDR;
    let xsdt_at = align(rsdp_at + RSDP_LEN as u64, 64);
    let xsdt_len = (HEADER_LEN + 2 * 8) as u64;
    let fadt_at = align(xsdt_at + xsdt_len, 64);
    let facs_at = align(fadt_at + FADT_LEN as u64, 64);
    let dsdt_at = align(facs_at + FACS_LEN as u64, 64);
    let madt_at = align(dsdt_at + dsdt.len() as u64, 64);
    let end = madt_at + madt.len() as u64;
    if end > ACPI_END {
        return Err(VmmError::BootSetup {
            what: "ACPI tables",
            reason: format!("{} bytes do not fit below {ACPI_END:#x}", end - ACPI_ADDR),
        });
    }
    let layout = AcpiLayout {
        rsdp: rsdp_at,
        xsdt: xsdt_at,
        fadt: fadt_at,
        facs: facs_at,
        dsdt: dsdt_at,
        madt: madt_at,
    };
    let mut out = vec![0u8; (end - ACPI_ADDR) as usize];
    let place = |out: &mut Vec<u8>, at: u64, bytes: &[u8]| {
        let o = (at - ACPI_ADDR) as usize;
        out[o..o + bytes.len()].copy_from_slice(bytes);
    };
    place(&mut out, rsdp_at, &rsdp(xsdt_at));
    place(&mut out, xsdt_at, &xsdt(&[fadt_at, madt_at]));
    place(&mut out, fadt_at, &fadt(facs_at, dsdt_at));
    place(&mut out, facs_at, &facs);
    place(&mut out, dsdt_at, &dsdt);
    place(&mut out, madt_at, &madt);
    Ok((out, layout))
}

/// Write the tables for `cpus` vCPUs into guest memory.
pub fn write(mem: &GuestMemory, cpus: u32) -> Result<AcpiLayout, VmmError> {
    let (bytes, layout) = build(cpus)?;
    mem.write_slice(&bytes, GuestAddress(ACPI_ADDR))
        .map_err(|e| VmmError::BootSetup {
            what: "ACPI tables",
            reason: e.to_string(),
        })?;
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(block: &[u8], addr: u64) -> &[u8] {
        &block[(addr - ACPI_ADDR) as usize..]
    }
    fn u32_at(t: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(t[o..o + 4].try_into().unwrap())
    }
    fn u64_at(t: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(t[o..o + 8].try_into().unwrap())
    }
    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }
    /// The table at `addr`: its signature must be `sig`, its checksum valid.
    fn table<'a>(block: &'a [u8], addr: u64, sig: &[u8; 4]) -> &'a [u8] {
        let t = at(block, addr);
        assert_eq!(&t[..4], sig);
        let len = u32_at(t, 4) as usize;
        assert!(len >= HEADER_LEN, "{sig:?} length {len}");
        let t = &t[..len];
        assert_eq!(sum(t), 0, "{sig:?} checksum");
        t
    }

    /// Follow the pointers from the RSDP, as a guest does, and return the MADT.
    fn walk(block: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let r = &block[..RSDP_LEN];
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0, "RSDP 1.0 checksum");
        assert_eq!(sum(r), 0, "RSDP extended checksum");
        assert_eq!(r[15], 2);
        assert_eq!(u32_at(r, 20) as usize, RSDP_LEN);
        let x = table(block, u64_at(r, 24), b"XSDT");
        let entries: Vec<u64> = x[HEADER_LEN..].chunks(8).map(|c| u64_at(c, 0)).collect();
        assert_eq!(entries.len(), 2);
        let f = table(block, entries[0], b"FACP");
        assert_eq!(f.len(), FADT_LEN);
        assert_eq!(f[8], 6, "FADT revision");
        let facs = at(block, u64_at(f, 132));
        assert_eq!(&facs[..4], b"FACS");
        assert_eq!(u32_at(facs, 4) as usize, FACS_LEN);
        assert_eq!(u64_at(f, 132) % 64, 0, "FACS is 64-byte aligned");
        assert_eq!(u64::from(u32_at(f, 36)), u64_at(f, 132));
        let d = table(block, u64_at(f, 140), b"DSDT");
        assert_eq!(u64::from(u32_at(f, 40)), u64_at(f, 140));
        let m = table(block, entries[1], b"APIC");
        (f.to_vec(), [d.to_vec(), m.to_vec()].concat())
    }

    #[test]
    fn tables_chain_from_the_rsdp_with_valid_checksums() {
        for cpus in [1, 2, 8, MAX_CPUS] {
            let (block, layout) = build(cpus).unwrap();
            assert_eq!(layout.rsdp, ACPI_ADDR);
            assert_eq!(layout.rsdp % 16, 0, "Linux scans 16-byte boundaries");
            assert!(ACPI_ADDR + block.len() as u64 <= ACPI_END);
            walk(&block);
        }
    }

    #[test]
    fn madt_has_one_enabled_local_apic_per_vcpu_and_the_ioapic() {
        for cpus in [1, 2, 5, MAX_CPUS] {
            let (block, layout) = build(cpus).unwrap();
            let m = table(&block, layout.madt, b"APIC");
            assert_eq!(u32_at(m, 36), LAPIC_ADDR);
            let mut lapic_ids = Vec::new();
            let mut ioapics = Vec::new();
            let mut overrides = Vec::new();
            let mut o = HEADER_LEN + 8;
            while o < m.len() {
                let (kind, len) = (m[o], m[o + 1] as usize);
                assert!(len >= 2 && o + len <= m.len(), "entry at {o} overruns");
                match kind {
                    0 => {
                        assert_eq!(len, 8);
                        assert_eq!(u32_at(m, o + 4) & 1, 1, "enabled");
                        lapic_ids.push(m[o + 3]);
                    }
                    1 => ioapics.push((m[o + 2], u32_at(m, o + 4), u32_at(m, o + 8))),
                    2 => overrides.push((m[o + 3], u32_at(m, o + 4))),
                    _ => {}
                }
                o += len;
            }
            assert_eq!(o, m.len());
            let want: Vec<u8> = (0..cpus as u8).collect();
            assert_eq!(lapic_ids, want, "{cpus} vCPUs");
            assert_eq!(ioapics, vec![(cpus as u8, IOAPIC_ADDR, 0)]);
            // KVM's default routing: IRQ 0 stays on GSI 0 (no "IRQ 0 -> GSI 2" override).
            assert_eq!(overrides, vec![(SCI_IRQ, u32::from(SCI_IRQ))]);
        }
    }

    #[test]
    fn fadt_points_at_the_power_management_ports() {
        let (block, layout) = build(1).unwrap();
        let f = table(&block, layout.fadt, b"FACP");
        let flags = u32_at(f, 112);
        assert_eq!(flags & (1 << 20), 0, "not hardware-reduced");
        assert_ne!(flags & (1 << 10), 0, "reset register supported");
        assert_eq!(u32_at(f, 48), 0, "no SMI command port");
        assert_eq!(u32_at(f, 64), u32::from(ACPI_PM_PORT + PM1_CNT_OFFSET));
        assert_eq!(u64_at(f, 176), u64::from(ACPI_PM_PORT + PM1_CNT_OFFSET));
        assert_eq!(f[172], 1, "X_PM1a_CNT_BLK is in I/O space");
        assert_eq!(u32_at(f, 56), u32::from(ACPI_PM_PORT));
        assert_eq!(f[89], PM1_CNT_LEN);
        assert_eq!(u64_at(f, 120), u64::from(ACPI_PM_PORT + RESET_OFFSET));
        assert_eq!(f[128], RESET_VALUE);
        assert_eq!(u16::from_le_bytes([f[46], f[47]]), u16::from(SCI_IRQ));
    }

    #[test]
    fn dsdt_names_s5_with_the_devices_slp_typ() {
        let (block, layout) = build(1).unwrap();
        let d = table(&block, layout.dsdt, b"DSDT");
        let aml = &d[HEADER_LEN..];
        assert_eq!(&aml[..5], b"\x08_S5_");
        // PackageOp, PkgLength covering exactly the rest, 4 elements, first = BytePrefix 5.
        assert_eq!(aml[5], 0x12);
        assert_eq!(aml[6] as usize, aml.len() - 6);
        assert_eq!(aml[7], 4);
        assert_eq!(&aml[8..10], &[0x0a, SLP_TYP_S5 as u8]);
    }

    #[test]
    fn vcpu_counts_outside_the_supported_range_are_refused() {
        assert!(build(0).is_err());
        assert!(build(MAX_CPUS + 1).is_err());
    }
}
