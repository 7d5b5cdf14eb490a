//! Guest memory: anonymous mappings with a bitmap of the pages the VMM itself wrote.
//!
//! KVM's dirty log sees only writes made by vCPUs. Pages the VMM writes (boot data now,
//! virtio rings and device DMA later) are recorded in vm-memory's `AtomicBitmap`, and the
//! dirty set of an epoch is the union of both. Missing the VMM's writes is the classic
//! replication bug.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::error::VmmError;
use crate::layout::{MMIO_GAP_END, MMIO_GAP_START, PAGE_SIZE};

/// Guest memory with VMM-write tracking.
pub type GuestMemory = vm_memory::GuestMemoryMmap<AtomicBitmap>;

/// One contiguous range of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    /// Guest-physical start.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// RAM ranges for `size` bytes of memory: below the MMIO gap, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<RamRange> {
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![RamRange { start: 0, len: low }];
    if size > low {
        ranges.push(RamRange {
            start: MMIO_GAP_END,
            len: size - low,
        });
    }
    ranges
}

/// Allocate `size` bytes of guest memory (must be a multiple of the page size).
pub fn create(size: u64) -> Result<GuestMemory, VmmError> {
    if !size.is_multiple_of(PAGE_SIZE) {
        return Err(VmmError::MemorySize(format!(
            "{size} bytes is not a multiple of the 4 KiB page size"
        )));
    }
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
        .into_iter()
        .map(|r| usize::try_from(r.len).map(|len| (GuestAddress(r.start), len)))
        .collect::<Result<_, _>>()
        .map_err(|_| VmmError::MemorySize(format!("{size} bytes does not fit this host")))?;
    let mem =
        GuestMemory::from_ranges(&ranges).map_err(|e| VmmError::MemoryAlloc(e.to_string()))?;
    crate::hugepages::advise_guest_memory(&mem);
    Ok(mem)
}

/// Total bytes of RAM.
pub fn total_size(mem: &GuestMemory) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Host address of a region's first byte.
pub fn region_host_addr<R: GuestMemoryRegion>(region: &R) -> Result<*mut u8, VmmError> {
    region
        .get_host_address(MemoryRegionAddress(0))
        .map_err(|e| VmmError::MemoryAlloc(format!("region without host mapping: {e}")))
}

/// Append the page frame numbers of the bits set in `words` (bit n of word i is page
/// `base + 64 i + n`), in ascending order.
pub fn push_set_pages(base: u64, words: &[u64], pages: &mut Vec<u64>) {
    for (i, &word) in words.iter().enumerate() {
        let mut w = word;
        while w != 0 {
            pages.push(base + (i as u64) * 64 + u64::from(w.trailing_zeros()));
            w &= w - 1;
        }
    }
}

/// The guest-physical page numbers the VMM wrote since the last call, and clear the record.
pub fn take_vmm_dirty_pages(mem: &GuestMemory) -> Vec<u64> {
    let mut pages = Vec::new();
    for region in mem.iter() {
        let base = region.start_addr().0 / PAGE_SIZE;
        let words = std::ops::Deref::deref(region).bitmap().get_and_reset();
        push_set_pages(base, &words, &mut pages);
    }
    pages
}

/// Run `f` over every region's bytes, mutably, with the region's guest-physical start.
///
/// # Safety
/// While this runs, nothing else may read or write this guest memory: no vCPU may be
/// running (the VM is created but not started, or all vCPUs are parked) and no device may
/// access it.
pub unsafe fn for_each_region_mut<E>(
    mem: &GuestMemory,
    mut f: impl FnMut(u64, &mut [u8]) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<VmmError>,
{
    for region in mem.iter() {
        let host = region_host_addr(region)?;
        let len = usize::try_from(region.len())
            .map_err(|_| VmmError::MemoryAlloc("region larger than the address space".into()))?;
        // SAFETY: `host..host+len` is the region's live mapping, owned by `mem` for the
        // duration of this call; the caller guarantees exclusive access to it.
        let bytes = unsafe { std::slice::from_raw_parts_mut(host, len) };
        f(region.start_addr().0, bytes)?;
    }
    Ok(())
}

/// Run `f` over every region's bytes, read-only, with the region's guest-physical start.
///
/// # Safety
/// While this runs, nothing may write this guest memory (vCPUs parked or not started,
/// devices idle), so the bytes read are a consistent image.
pub unsafe fn for_each_region<E>(
    mem: &GuestMemory,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<VmmError>,
{
    for region in mem.iter() {
        let host = region_host_addr(region)?;
        let len = usize::try_from(region.len())
            .map_err(|_| VmmError::MemoryAlloc("region larger than the address space".into()))?;
        // SAFETY: `host..host+len` is the region's live mapping, owned by `mem` for the
        // duration of this call; the caller guarantees no concurrent writer.
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len) };
        f(region.start_addr().0, bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn ranges_skip_the_mmio_gap() {
        assert_eq!(
            ram_ranges(256 << 20),
            vec![RamRange {
                start: 0,
                len: 256 << 20
            }]
        );
        let r = ram_ranges(4 << 30);
        assert_eq!(
            r[0],
            RamRange {
                start: 0,
                len: MMIO_GAP_START
            }
        );
        assert_eq!(
            r[1],
            RamRange {
                start: MMIO_GAP_END,
                len: (4 << 30) - MMIO_GAP_START
            }
        );
    }

    #[test]
    fn vmm_writes_are_recorded_and_cleared() {
        let mem = create(16 << 20).unwrap();
        take_vmm_dirty_pages(&mem);
        mem.write_slice(&[1, 2, 3], GuestAddress(0x5000 + 4094))
            .unwrap();
        mem.write_obj(7u64, GuestAddress(0x80_0000)).unwrap();
        assert_eq!(take_vmm_dirty_pages(&mem), vec![5, 6, 0x800]);
        assert!(take_vmm_dirty_pages(&mem).is_empty());
    }

    #[test]
    fn unaligned_size_is_refused() {
        assert!(create((16 << 20) + 1).is_err());
    }
}
