//! The boot GDT and the identity-map page tables a guest starts with in long mode.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress};

use crate::error::VmmError;
use crate::layout::{GDT_ADDR, IDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR};
use crate::memory::GuestMemory;

/// Selector of the 64-bit code segment (Linux's __BOOT_CS).
pub const BOOT_CS: u16 = 0x10;
/// Selector of the data segment (Linux's __BOOT_DS).
pub const BOOT_DS: u16 = 0x18;
/// Selector of the TSS.
pub const BOOT_TSS: u16 = 0x20;

/// Build a GDT descriptor from its access/flags word, base and limit.
pub const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
        | ((limit & 0xf_0000) << 32)
        | ((flags & 0xf0ff) << 40)
}

/// The boot GDT: null, null, code64, data, TSS.
pub const BOOT_GDT: [u64; 5] = [
    0,
    0,
    descriptor(0xa09b, 0, 0xfffff),
    descriptor(0xc093, 0, 0xfffff),
    descriptor(0x808b, 0, 0xfffff),
];

/// The KVM segment register value that corresponds to descriptor `entry` at `selector`.
pub fn segment(entry: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let g = bit(55);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let present = bit(47);
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Write the GDT and an empty IDT into guest memory.
pub fn write_tables(mem: &GuestMemory) -> Result<(), VmmError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + 8 * i as u64))
            .map_err(|e| setup("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(|e| setup("IDT", e))?;
    Ok(())
}

/// Write page tables that identity-map the first 4 GiB with 2 MiB pages.
pub fn write_identity_map(mem: &GuestMemory) -> Result<(), VmmError> {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    mem.write_obj(PDPT_ADDR | PRESENT_RW, GuestAddress(PML4_ADDR))
        .map_err(|e| setup("PML4", e))?;
    for pd in 0..4u64 {
        let pd_addr = PD_ADDR + pd * 0x1000;
        mem.write_obj(pd_addr | PRESENT_RW, GuestAddress(PDPT_ADDR + pd * 8))
            .map_err(|e| setup("PDPT", e))?;
        let mut table = [0u8; 4096];
        for (i, chunk) in table.chunks_exact_mut(8).enumerate() {
            let phys = ((pd * 512 + i as u64) << 21) | PRESENT_RW | HUGE;
            chunk.copy_from_slice(&phys.to_le_bytes());
        }
        mem.write_slice(&table, GuestAddress(pd_addr))
            .map_err(|e| setup("PD", e))?;
    }
    Ok(())
}

fn setup(what: &'static str, e: vm_memory::GuestMemoryError) -> VmmError {
    VmmError::BootSetup {
        what,
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_decodes_as_long_mode() {
        let cs = segment(BOOT_GDT[2], BOOT_CS);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(BOOT_GDT[3], BOOT_DS);
        assert_eq!((ds.l, ds.db, ds.type_), (0, 1, 3));
        assert_eq!(segment(0, 0).unusable, 1);
    }
}
