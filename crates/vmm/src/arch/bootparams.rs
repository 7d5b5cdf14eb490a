//! The Linux "zero page" (boot_params): E820 map, command line, initrd, setup header.
//!
//! Written as raw bytes at the documented offsets (Documentation/arch/x86/boot.rst,
//! zero-page.rst) so no unsafe reinterpretation of structs is needed.

use vm_memory::{Bytes, GuestAddress};

use crate::error::VmmError;
use crate::layout::{EBDA_END, KERNEL_ADDR, MPTABLE_ADDR, ZERO_PAGE_ADDR};
use crate::memory::{GuestMemory, RamRange};

const E820_ENTRIES: usize = 0x1e8;
const E820_TABLE: usize = 0x2d0;
const E820_MAX: usize = 128;
const SETUP_HEADER: usize = 0x1f1;
const BOOT_FLAG: usize = 0x1fe;
const HEADER_MAGIC: usize = 0x202;
const TYPE_OF_LOADER: usize = 0x210;
const RAMDISK_IMAGE: usize = 0x218;
const RAMDISK_SIZE: usize = 0x21c;
const CMD_LINE_PTR: usize = 0x228;
const CMDLINE_SIZE: usize = 0x238;
const EXT_RAMDISK_IMAGE: usize = 0xc0;
const EXT_RAMDISK_SIZE: usize = 0xc4;
const EXT_CMD_LINE_PTR: usize = 0xc8;

/// E820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// An E820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start.
    pub addr: u64,
    /// Length.
    pub size: u64,
    /// Type.
    pub kind: u32,
}

/// The E820 map for the given RAM ranges.
pub fn e820_map(ram: &[RamRange]) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: MPTABLE_ADDR,
            kind: E820_RAM,
        },
        E820Entry {
            addr: MPTABLE_ADDR,
            size: EBDA_END - MPTABLE_ADDR,
            kind: E820_RESERVED,
        },
    ];
    for r in ram {
        let start = r.start.max(KERNEL_ADDR);
        let end = r.start + r.len;
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// Everything that goes into the zero page.
#[derive(Debug, Default)]
pub struct ZeroPage {
    /// The kernel's setup header bytes from offset 0x1f1 (bzImage), if any.
    pub setup_header: Option<Vec<u8>>,
    /// Guest-physical address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Its length without the NUL.
    pub cmdline_len: u32,
    /// Initrd placement (address, size).
    pub initrd: Option<(u64, u64)>,
    /// The memory map.
    pub e820: Vec<E820Entry>,
}

impl ZeroPage {
    /// The 4 KiB page.
    pub fn to_bytes(&self) -> Result<Vec<u8>, VmmError> {
        let mut p = vec![0u8; 4096];
        if let Some(h) = &self.setup_header {
            let end = (SETUP_HEADER + h.len()).min(p.len());
            p[SETUP_HEADER..end].copy_from_slice(&h[..end - SETUP_HEADER]);
        }
        p[BOOT_FLAG..BOOT_FLAG + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
        p[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        p[TYPE_OF_LOADER] = 0xff;
        put32(&mut p, CMD_LINE_PTR, self.cmdline_addr);
        put32(&mut p, EXT_CMD_LINE_PTR, self.cmdline_addr >> 32);
        p[CMDLINE_SIZE..CMDLINE_SIZE + 4].copy_from_slice(&self.cmdline_len.to_le_bytes());
        if let Some((addr, size)) = self.initrd {
            put32(&mut p, RAMDISK_IMAGE, addr);
            put32(&mut p, EXT_RAMDISK_IMAGE, addr >> 32);
            put32(&mut p, RAMDISK_SIZE, size);
            put32(&mut p, EXT_RAMDISK_SIZE, size >> 32);
        }
        if self.e820.len() > E820_MAX {
            return Err(VmmError::BootSetup {
                what: "E820 map",
                reason: format!("{} entries, at most {E820_MAX}", self.e820.len()),
            });
        }
        p[E820_ENTRIES] = self.e820.len() as u8;
        for (i, e) in self.e820.iter().enumerate() {
            let o = E820_TABLE + 20 * i;
            p[o..o + 8].copy_from_slice(&e.addr.to_le_bytes());
            p[o + 8..o + 16].copy_from_slice(&e.size.to_le_bytes());
            p[o + 16..o + 20].copy_from_slice(&e.kind.to_le_bytes());
        }
        Ok(p)
    }

    /// Write it at [`ZERO_PAGE_ADDR`].
    pub fn write(&self, mem: &GuestMemory) -> Result<(), VmmError> {
        mem.write_slice(&self.to_bytes()?, GuestAddress(ZERO_PAGE_ADDR))
            .map_err(|e| VmmError::BootSetup {
                what: "zero page",
                reason: e.to_string(),
            })
    }
}

fn put32(p: &mut [u8], offset: usize, value: u64) {
    p[offset..offset + 4].copy_from_slice(&(value as u32).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_page_fields_at_documented_offsets() {
        let zp = ZeroPage {
            cmdline_addr: 0x20000,
            cmdline_len: 5,
            initrd: Some((0x0800_0000, 0x1234)),
            e820: e820_map(&[RamRange {
                start: 0,
                len: 64 << 20,
            }]),
            ..Default::default()
        };
        let p = zp.to_bytes().unwrap();
        assert_eq!(
            u32::from_le_bytes(p[0x228..0x22c].try_into().unwrap()),
            0x20000
        );
        assert_eq!(
            u32::from_le_bytes(p[0x218..0x21c].try_into().unwrap()),
            0x0800_0000
        );
        assert_eq!(p[0x1e8], 3);
        let last = 0x2d0 + 40;
        assert_eq!(
            u64::from_le_bytes(p[last..last + 8].try_into().unwrap()),
            KERNEL_ADDR
        );
        assert_eq!(
            u64::from_le_bytes(p[last + 8..last + 16].try_into().unwrap()),
            (64 << 20) - KERNEL_ADDR
        );
    }
}
