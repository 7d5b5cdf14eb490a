//! Loading a kernel (ELF or bzImage), its command line and initrd into guest memory.

use std::io::Cursor;
use std::path::PathBuf;

use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::arch::bootparams::{e820_map, ZeroPage};
use crate::error::VmmError;
use crate::layout::{CMDLINE_ADDR, CMDLINE_MAX, KERNEL_ADDR, MMIO_GAP_START, PAGE_SIZE};
use crate::memory::{ram_ranges, total_size, GuestMemory};

/// A kernel image and where it came from (for messages).
#[derive(Debug, Clone)]
pub struct KernelImage {
    /// A name for messages: the path, or `@testguest`.
    pub name: String,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

/// What the loader found out about the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    /// 64-bit entry point of the boot vCPU.
    pub entry: u64,
    /// ftvm AP start protocol: the 64-bit entry of the other vCPUs, when the ELF has an
    /// "FTVM" note of type 1. `None`: APs wait for INIT/SIPI (Linux).
    pub ap_entry: Option<u64>,
    /// Which format the kernel was.
    pub format: KernelFormat,
}

/// Kernel formats ftvm boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An x86_64 ELF (vmlinux, the test guest), entered at e_entry in long mode.
    Elf,
    /// A bzImage, entered at its 64-bit entry (load address + 0x200).
    BzImage,
}

/// ELF note type of ftvm's AP entry note (name "FTVM").
pub const FTVM_NOTE_AP_ENTRY: u32 = 1;

/// Load `kernel`, `cmdline` and `initrd` into `mem` and write the zero page.
pub fn load(
    mem: &GuestMemory,
    kernel: &KernelImage,
    cmdline: &str,
    initrd: Option<(PathBuf, Vec<u8>)>,
) -> Result<BootInfo, VmmError> {
    let (info, setup_header) = load_kernel(mem, kernel)?;
    let cmdline_len = write_cmdline(mem, cmdline)?;
    let initrd = match initrd {
        Some((path, bytes)) => Some(place_initrd(mem, &path, &bytes, setup_header.as_deref())?),
        None => None,
    };
    ZeroPage {
        setup_header,
        cmdline_addr: CMDLINE_ADDR,
        cmdline_len,
        initrd,
        e820: e820_map(&ram_ranges(total_size(mem))),
    }
    .write(mem)?;
    Ok(info)
}

fn load_kernel(
    mem: &GuestMemory,
    kernel: &KernelImage,
) -> Result<(BootInfo, Option<Vec<u8>>), VmmError> {
    let himem = Some(GuestAddress(KERNEL_ADDR));
    let elf_err = match Elf::load(mem, None, &mut Cursor::new(&kernel.bytes), himem) {
        Ok(r) => {
            let info = BootInfo {
                entry: r.kernel_load.0,
                ap_entry: ftvm_ap_entry(&kernel.bytes),
                format: KernelFormat::Elf,
            };
            return Ok((info, None));
        }
        Err(e) => e.to_string(),
    };
    match BzImage::load(mem, None, &mut Cursor::new(&kernel.bytes), himem) {
        Ok(r) => {
            // The setup header runs from 0x1f1 to 0x202 + the byte at 0x201.
            let end = 0x202 + usize::from(*kernel.bytes.get(0x201).unwrap_or(&0));
            let header = kernel
                .bytes
                .get(0x1f1..end.min(kernel.bytes.len()))
                .map(<[u8]>::to_vec);
            let info = BootInfo {
                entry: r.kernel_load.0 + 0x200,
                ap_entry: None,
                format: KernelFormat::BzImage,
            };
            Ok((info, header))
        }
        Err(bz) => Err(VmmError::KernelFormat {
            what: kernel.name.clone(),
            elf: elf_err,
            bzimage: bz.to_string(),
        }),
    }
}

fn write_cmdline(mem: &GuestMemory, cmdline: &str) -> Result<u32, VmmError> {
    if cmdline.len() > CMDLINE_MAX {
        return Err(VmmError::Cmdline(format!(
            "{} bytes, at most {CMDLINE_MAX}",
            cmdline.len()
        )));
    }
    if cmdline.bytes().any(|b| b == 0) {
        return Err(VmmError::Cmdline("contains a NUL byte".into()));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(|e| VmmError::Cmdline(e.to_string()))?;
    Ok(cmdline.len() as u32)
}

/// Put the initrd as high as the kernel allows in low memory, page aligned.
fn place_initrd(
    mem: &GuestMemory,
    path: &std::path::Path,
    bytes: &[u8],
    setup_header: Option<&[u8]>,
) -> Result<(u64, u64), VmmError> {
    let err = |reason: String| VmmError::Initrd {
        path: path.to_path_buf(),
        reason,
    };
    // initrd_addr_max lives at 0x22c in the zero page, 0x22c - 0x1f1 into the header.
    let addr_max = setup_header
        .and_then(|h| h.get(0x22c - 0x1f1..0x230 - 0x1f1))
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .filter(|v| *v != 0)
        .map_or(0x7fff_ffff, u64::from);
    let low_end = total_size(mem).min(MMIO_GAP_START).min(addr_max + 1);
    let size = bytes.len() as u64;
    let start = low_end
        .checked_sub(size)
        .map(|s| s & !(PAGE_SIZE - 1))
        .filter(|s| *s >= KERNEL_ADDR + (16 << 20))
        .ok_or_else(|| {
            err(format!(
                "{size} bytes do not fit in guest memory below {low_end:#x} above the kernel; give the VM more --memory"
            ))
        })?;
    mem.write_slice(bytes, GuestAddress(start))
        .map_err(|e| err(e.to_string()))?;
    Ok((start, size))
}

/// Find ftvm's AP entry note ("FTVM", type 1, desc = u64) in an ELF image's PT_NOTE
/// segments. Malformed notes are ignored (the image then boots single-entry).
pub fn ftvm_ap_entry(elf: &[u8]) -> Option<u64> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..4)? != b"\x7fELF" {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? != 4 {
            continue; // not PT_NOTE
        }
        let mut off = usize::try_from(u64_at(ph + 8)?).ok()?;
        let end = off.checked_add(usize::try_from(u64_at(ph + 32)?).ok()?)?;
        while off + 12 <= end {
            let namesz = u32_at(off)? as usize;
            let descsz = u32_at(off + 4)? as usize;
            let kind = u32_at(off + 8)?;
            let name_off = off + 12;
            let desc_off = name_off + namesz.div_ceil(4) * 4;
            let name = elf.get(name_off..name_off + namesz)?;
            if name == b"FTVM\0" && kind == FTVM_NOTE_AP_ENTRY && descsz == 8 {
                return u64_at(desc_off);
            }
            off = desc_off + descsz.div_ceil(4) * 4;
        }
    }
    None
}
