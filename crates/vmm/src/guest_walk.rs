//! Reading guest-virtual memory from the VMM: a 4-level x86-64 page-table walk.
//!
//! Used by exit handlers that must look at what the guest kernel sees (an exception frame
//! on its stack, its IDT, instruction bytes). The walk checks the permissions the access
//! would need on real hardware (user access: U/S set at every level; write: R/W set at
//! every level), so a translation that succeeds is one the guest itself could make.
//! Writes go through [`GuestMemory`], whose bitmap records them for replication.

use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;

const PTE_PRESENT: u64 = 1;
const PTE_WRITE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_LARGE: u64 = 1 << 7;
/// Physical-address bits 12..51 of a page-table entry (and of CR3).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// What a translation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// A ring-3 access: every level must allow user access.
    pub user: bool,
    /// A write: every level must allow writes.
    pub write: bool,
}

impl Access {
    /// A kernel read.
    pub const KERNEL_READ: Access = Access {
        user: false,
        write: false,
    };
    /// A kernel write.
    pub const KERNEL_WRITE: Access = Access {
        user: false,
        write: true,
    };
    /// A user read.
    pub const USER_READ: Access = Access {
        user: true,
        write: false,
    };
}

/// Why a guest-virtual address could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// Not a canonical 48-bit address.
    #[error("guest address {0:#x} is not canonical")]
    NonCanonical(u64),
    /// A page-table entry on the way is not present.
    #[error("guest address {va:#x} is not mapped (entry at level {level} not present)")]
    NotPresent {
        /// The address.
        va: u64,
        /// 4 = PML4 ... 1 = page table.
        level: u8,
    },
    /// User access to a supervisor page.
    #[error("guest address {0:#x} is not user-accessible")]
    NotUser(u64),
    /// Write to a read-only page.
    #[error("guest address {0:#x} is read-only")]
    ReadOnly(u64),
    /// A page table or the target lies outside guest RAM.
    #[error("guest-physical address {0:#x} is outside guest RAM")]
    OutsideRam(u64),
}

fn canonical(va: u64) -> bool {
    let top = va >> 47;
    top == 0 || top == 0x1_ffff
}

/// Translate `va` through the 4-level page tables at `cr3` for `access`.
pub fn translate(mem: &GuestMemory, cr3: u64, va: u64, access: Access) -> Result<u64, WalkError> {
    if !canonical(va) {
        return Err(WalkError::NonCanonical(va));
    }
    let mut table = cr3 & ADDR_MASK;
    for level in (1..=4u8).rev() {
        let index = (va >> (12 + 9 * u32::from(level - 1))) & 0x1ff;
        let entry_addr = table + index * 8;
        let entry: u64 = mem
            .read_obj(GuestAddress(entry_addr))
            .map_err(|_| WalkError::OutsideRam(entry_addr))?;
        if entry & PTE_PRESENT == 0 {
            return Err(WalkError::NotPresent { va, level });
        }
        if access.user && entry & PTE_USER == 0 {
            return Err(WalkError::NotUser(va));
        }
        if access.write && entry & PTE_WRITE == 0 {
            return Err(WalkError::ReadOnly(va));
        }
        let large = entry & PTE_LARGE != 0 && (level == 2 || level == 3);
        if level == 1 || large {
            let page_bits = 12 + 9 * u32::from(level - 1);
            let offset_mask = (1u64 << page_bits) - 1;
            return Ok((entry & ADDR_MASK & !offset_mask) | (va & offset_mask));
        }
        table = entry & ADDR_MASK;
    }
    Err(WalkError::NotPresent { va, level: 0 })
}

/// Read the naturally aligned 8 bytes at guest-virtual `va` (`va` must be 8-aligned, so
/// they lie in one page).
pub fn read_u64(mem: &GuestMemory, cr3: u64, va: u64, access: Access) -> Result<u64, WalkError> {
    let gpa = translate(mem, cr3, va & !7, access)?;
    mem.read_obj(GuestAddress(gpa))
        .map_err(|_| WalkError::OutsideRam(gpa))
}

/// Write 8 bytes at 8-aligned guest-virtual `va` (recorded as a VMM write).
pub fn write_u64(
    mem: &GuestMemory,
    cr3: u64,
    va: u64,
    value: u64,
    user: bool,
) -> Result<(), WalkError> {
    let gpa = translate(mem, cr3, va & !7, Access { user, write: true })?;
    mem.write_obj(value, GuestAddress(gpa))
        .map_err(|_| WalkError::OutsideRam(gpa))
}

/// Read `N` bytes at guest-virtual `va`, page by page.
pub fn read_bytes<const N: usize>(
    mem: &GuestMemory,
    cr3: u64,
    va: u64,
    access: Access,
) -> Result<[u8; N], WalkError> {
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        let gpa = translate(mem, cr3, va.wrapping_add(i as u64), access)?;
        *byte = mem
            .read_obj(GuestAddress(gpa))
            .map_err(|_| WalkError::OutsideRam(gpa))?;
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Page-table builder over test guest memory: tables are allocated from `next`.
    pub(crate) struct Tables<'a> {
        pub mem: &'a GuestMemory,
        pub cr3: u64,
        next: u64,
    }

    impl<'a> Tables<'a> {
        pub fn new(mem: &'a GuestMemory, first_table: u64) -> Self {
            Self {
                mem,
                cr3: first_table,
                next: first_table + 0x1000,
            }
        }

        fn entry(&mut self, table: u64, index: u64, flags: u64) -> u64 {
            let addr = table + index * 8;
            let e: u64 = self.mem.read_obj(GuestAddress(addr)).unwrap();
            if e & PTE_PRESENT != 0 {
                // widen permissions as needed
                let e = e | (flags & (PTE_USER | PTE_WRITE));
                self.mem.write_obj(e, GuestAddress(addr)).unwrap();
                return e & ADDR_MASK;
            }
            let t = self.next;
            self.next += 0x1000;
            self.mem
                .write_obj(t | flags | PTE_PRESENT, GuestAddress(addr))
                .unwrap();
            t
        }

        /// Map the 4 KiB page at `va` to `gpa` with `flags` (P implied) at every level.
        pub fn map_4k(&mut self, va: u64, gpa: u64, flags: u64) {
            let mut t = self.cr3;
            for level in (2..=4u32).rev() {
                t = self.entry(t, (va >> (12 + 9 * (level - 1))) & 0x1ff, flags);
            }
            self.mem
                .write_obj(
                    gpa | flags | PTE_PRESENT,
                    GuestAddress(t + ((va >> 12) & 0x1ff) * 8),
                )
                .unwrap();
        }

        /// Map the 2 MiB page at `va` to `gpa`.
        pub fn map_2m(&mut self, va: u64, gpa: u64, flags: u64) {
            let mut t = self.cr3;
            for level in (3..=4u32).rev() {
                t = self.entry(t, (va >> (12 + 9 * (level - 1))) & 0x1ff, flags);
            }
            self.mem
                .write_obj(
                    gpa | flags | PTE_PRESENT | PTE_LARGE,
                    GuestAddress(t + ((va >> 21) & 0x1ff) * 8),
                )
                .unwrap();
        }
    }

    pub(crate) fn test_memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap()
    }

    #[test]
    fn walks_4k_and_2m_pages_with_their_offsets() {
        let mem = test_memory();
        let mut t = Tables::new(&mem, 0x10_0000);
        t.map_4k(0xffff_8880_0012_3000, 0x40_0000, PTE_WRITE);
        t.map_2m(0xffff_ffff_8120_0000, 0x60_0000, 0);
        t.map_4k(0x40_1000, 0x50_0000, PTE_USER);
        let cr3 = t.cr3 | 0x5; // PCID bits are ignored
        assert_eq!(
            translate(&mem, cr3, 0xffff_8880_0012_3abc, Access::KERNEL_READ),
            Ok(0x40_0abc)
        );
        assert_eq!(
            translate(&mem, cr3, 0xffff_ffff_8121_2345, Access::KERNEL_READ),
            Ok(0x61_2345)
        );
        assert_eq!(
            translate(&mem, cr3, 0x40_1ff0, Access::USER_READ),
            Ok(0x50_0ff0)
        );
        mem.write_obj(0x1122_3344_5566_7788u64, GuestAddress(0x40_0ab8))
            .unwrap();
        assert_eq!(
            read_u64(&mem, cr3, 0xffff_8880_0012_3ab8, Access::KERNEL_READ),
            Ok(0x1122_3344_5566_7788)
        );
        assert_eq!(
            read_bytes::<2>(&mem, cr3, 0xffff_8880_0012_3ab8, Access::KERNEL_READ),
            Ok([0x88, 0x77])
        );
    }

    #[test]
    fn refuses_what_the_guest_could_not_access() {
        let mem = test_memory();
        let mut t = Tables::new(&mem, 0x10_0000);
        t.map_4k(0xffff_8880_0012_3000, 0x40_0000, 0); // kernel, read-only
        t.map_4k(0x40_1000, 0x50_0000, PTE_USER);
        let cr3 = t.cr3;
        assert_eq!(
            translate(&mem, cr3, 0xffff_8880_0012_3000, Access::USER_READ),
            Err(WalkError::NotUser(0xffff_8880_0012_3000))
        );
        assert_eq!(
            translate(&mem, cr3, 0xffff_8880_0012_3000, Access::KERNEL_WRITE),
            Err(WalkError::ReadOnly(0xffff_8880_0012_3000))
        );
        assert_eq!(
            translate(&mem, cr3, 0x40_2000, Access::USER_READ),
            Err(WalkError::NotPresent {
                va: 0x40_2000,
                level: 1
            })
        );
        assert_eq!(
            translate(&mem, cr3, 0x0000_8000_0000_0000, Access::KERNEL_READ),
            Err(WalkError::NonCanonical(0x0000_8000_0000_0000))
        );
        // a page table pointing outside RAM
        mem.write_obj(
            0x7000_0000u64 | PTE_PRESENT,
            GuestAddress(0x10_0000 + 8 * 200),
        )
        .unwrap();
        assert_eq!(
            translate(&mem, cr3, 200 << 39, Access::KERNEL_READ),
            Err(WalkError::OutsideRam(0x7000_0000))
        );
    }

    #[test]
    fn writes_are_recorded_for_replication() {
        let mem = test_memory();
        let mut t = Tables::new(&mem, 0x10_0000);
        t.map_4k(0xffff_c900_0000_1000, 0x42_3000, PTE_WRITE);
        let _ = crate::memory::take_vmm_dirty_pages(&mem);
        write_u64(&mem, t.cr3, 0xffff_c900_0000_1010, 7, false).unwrap();
        assert_eq!(crate::memory::take_vmm_dirty_pages(&mem), vec![0x423]);
        let v: u64 = mem.read_obj(GuestAddress(0x42_3010)).unwrap();
        assert_eq!(v, 7);
    }
}
