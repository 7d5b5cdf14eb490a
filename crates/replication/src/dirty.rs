//! The dirty set: pages written by vCPUs (KVM's dirty log) OR by the VMM itself
//! (vm-memory's bitmap), and copying them out of guest memory.

use ftvm_vmm::layout::PAGE_SIZE;
use ftvm_vmm::memory::take_vmm_dirty_pages;
use ftvm_vmm::Vm;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::error::ReplicationError;

/// Every page written since the last call, by a vCPU or by the VMM, as sorted unique page
/// frame numbers. KVM dirty logging must be on. Call only while the VM is paused, so that
/// nothing is written between reading the log and copying the pages.
pub fn take_dirty_pages(vm: &Vm) -> Result<Vec<u64>, ReplicationError> {
    let mut pages = vm.take_guest_dirty_pages()?;
    merge_pages(&mut pages, &take_vmm_dirty_pages(vm.memory()));
    Ok(pages)
}

/// Add the page frame numbers `extra` to `pages`, leaving `pages` sorted and without
/// duplicates (whatever order either came in).
pub fn merge_pages(pages: &mut Vec<u64>, extra: &[u64]) {
    pages.extend_from_slice(extra);
    pages.sort_unstable();
    pages.dedup();
}

/// Like [`take_dirty_pages`], but leaves KVM's log as it is when the VM uses manual
/// dirty-log protection: the caller re-protects the returned KVM pages later with
/// `Vm::clear_guest_dirty_pages` (while the vCPUs run) and must treat them as dirty again
/// in the next round, since writes before that clear are not logged.
/// Returns (all dirty pages, the KVM-logged ones to clear later).
pub fn peek_dirty_pages(vm: &Vm) -> Result<(Vec<u64>, Vec<u64>), ReplicationError> {
    let kvm_pages = vm.peek_guest_dirty_pages()?;
    let mut pages = kvm_pages.clone();
    merge_pages(&mut pages, &take_vmm_dirty_pages(vm.memory()));
    let to_clear = if vm.manual_dirty_protect() {
        kvm_pages
    } else {
        Vec::new()
    };
    Ok((pages, to_clear))
}

/// Group sorted page frame numbers into runs of (guest-physical address, page count).
pub fn runs(pfns: &[u64]) -> Vec<(u64, u32)> {
    let mut out: Vec<(u64, u32)> = Vec::new();
    for &pfn in pfns {
        match out.last_mut() {
            Some((gpa, n)) if *gpa / PAGE_SIZE + u64::from(*n) == pfn && *n < u32::MAX => *n += 1,
            _ => out.push((pfn * PAGE_SIZE, 1)),
        }
    }
    out
}

/// Copy the pages of `runs` out of guest memory into `buf` (cleared first), in order.
pub fn copy_runs(vm: &Vm, runs: &[(u64, u32)], buf: &mut Vec<u8>) -> Result<(), ReplicationError> {
    let total: usize = runs.iter().map(|(_, n)| *n as usize).sum::<usize>() * PAGE_SIZE as usize;
    // Keep the allocation (and its already-faulted pages) when it is large enough.
    buf.resize(total, 0);
    copy_runs_into(vm, runs, buf).map(|_| ())
}

/// Copy the pages of `runs` out of live guest memory into the front of `buf` (large
/// enough), in order; returns the bytes copied.
pub(crate) fn copy_runs_into(
    vm: &Vm,
    runs: &[(u64, u32)],
    buf: &mut [u8],
) -> Result<usize, ReplicationError> {
    let mut off = 0;
    for &(gpa, n) in runs {
        let len = n as usize * PAGE_SIZE as usize;
        let dst = buf
            .get_mut(off..off + len)
            .ok_or(ReplicationError::Memory {
                gpa,
                reason: format!("bounce buffer of {} bytes too small", off + len),
            })?;
        vm.memory()
            .read_slice(dst, GuestAddress(gpa))
            .map_err(|e| ReplicationError::Memory {
                gpa,
                reason: e.to_string(),
            })?;
        off += len;
    }
    Ok(off)
}

/// Copy the pages of `runs` into `buf` (replaced), in order, with a plain `memcpy` from
/// the guest mapping. For a paused VM only: the vCPUs are parked, so nothing the dirty log
/// tracks changes under the copy. `buf` is staging reused epoch after epoch: its pages
/// stay faulted in (it never shrinks, and it is not zero-filled first), and it is backed
/// by transparent huge pages where the kernel offers them.
pub fn copy_runs_parked(
    vm: &Vm,
    runs: &[(u64, u32)],
    buf: &mut Vec<u8>,
) -> Result<(), ReplicationError> {
    let total: usize = runs.iter().map(|(_, n)| *n as usize).sum::<usize>() * PAGE_SIZE as usize;
    buf.clear();
    if buf.capacity() < total {
        // Grow with headroom so that a slightly larger epoch does not reallocate.
        buf.reserve(total + total / 4);
        advise_huge_spare(buf);
    }
    let dst = buf.spare_capacity_mut();
    let mut off = 0;
    for &(gpa, n) in runs {
        let src = parked_guest_slice(vm, gpa, n)?;
        let len = src.len();
        // SAFETY: `dst[off..off + len]` is inside the reserved spare capacity
        // (`off + len <= total <= capacity`); the source is guest RAM, the destination heap
        // memory of this process, so they do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                dst[off..off + len].as_mut_ptr().cast::<u8>(),
                len,
            );
        }
        off += len;
    }
    // SAFETY: the first `total` bytes of the spare capacity were initialized by the copies
    // above (the runs cover exactly `total` bytes, back to back from 0).
    unsafe { buf.set_len(total) };
    Ok(())
}

/// Where the `n` pages at `gpa` start in this process's mapping of `vm`'s memory: checked
/// to lie inside one region's live mapping, which stays mapped while `vm` lives.
fn guest_run_host(vm: &Vm, gpa: u64, n: u32) -> Result<*mut u8, ReplicationError> {
    let len = u64::from(n) * PAGE_SIZE;
    let bad = |reason: String| ReplicationError::Memory { gpa, reason };
    let region = vm
        .memory()
        .find_region(GuestAddress(gpa))
        .ok_or_else(|| bad("not guest RAM".into()))?;
    let start = gpa - region.start_addr().0;
    if start + len > region.len() {
        return Err(bad(format!(
            "run of {n} pages crosses the end of its region"
        )));
    }
    let host = ftvm_vmm::memory::region_host_addr(region).map_err(|e| bad(e.to_string()))?;
    // `start + len <= region.len()`: the offset stays inside the mapping.
    Ok(host.wrapping_add(start as usize))
}

/// Where the `n` pages at `gpa` of a (possibly running) VM's memory start in this process
/// (see [`guest_run_host`]). Read it only in ways that allow the guest to write it
/// meanwhile.
pub(crate) fn live_guest_ptr(vm: &Vm, gpa: u64, n: u32) -> Result<*const u8, ReplicationError> {
    guest_run_host(vm, gpa, n).map(<*mut u8>::cast_const)
}

/// The `n` pages at `gpa` of a paused VM's memory, as a byte slice borrowed from `vm`.
pub(crate) fn parked_guest_slice(vm: &Vm, gpa: u64, n: u32) -> Result<&[u8], ReplicationError> {
    let host = guest_run_host(vm, gpa, n)?;
    let len = n as usize * PAGE_SIZE as usize;
    // SAFETY: `host .. + len` lies inside the region's live mapping (checked by
    // `guest_run_host`), which `vm` keeps mapped for as long as the returned borrow of `vm`
    // lives. The caller holds the VM paused (vCPUs parked) while it uses the slice, so the
    // guest does not write these pages meanwhile (the same premise as `copy_runs_parked`).
    Ok(unsafe { std::slice::from_raw_parts(host, len) })
}

/// Make `buf` (epoch staging) hold at least `pages` pages without growing, its memory
/// already faulted in: call it while the vCPUs run, so that a growing dirty set does not
/// pay first-touch page faults (~15 us per 4 KiB page on nested hosts) inside the pause.
/// Only a growth touches memory; otherwise it does nothing.
pub fn prepare_staging(buf: &mut Vec<u8>, pages: usize) {
    let want = pages.saturating_mul(PAGE_SIZE as usize);
    if buf.capacity() >= want {
        return;
    }
    buf.clear();
    buf.reserve(want);
    advise_huge_spare(buf);
    // First touch now (zero fill), off the pause; the copy overwrites it.
    buf.resize(buf.capacity(), 0);
    buf.clear();
}

/// Ask for transparent huge pages on the 2 MiB-aligned part of `buf`'s spare capacity
/// (best effort: a kernel without THP, or with it off, just ignores the advice).
fn advise_huge_spare(buf: &mut Vec<u8>) {
    let spare = buf.spare_capacity_mut();
    advise_huge_range(spare.as_ptr() as usize, spare.len());
}

/// Ask for transparent huge pages on the 2 MiB-aligned part of `buf` (best effort).
pub fn advise_huge(buf: &[u8]) {
    advise_huge_range(buf.as_ptr() as usize, buf.len());
}

fn advise_huge_range(addr: usize, len: usize) {
    const HUGE: usize = 2 << 20;
    let start = addr.next_multiple_of(HUGE);
    let end = (addr + len) / HUGE * HUGE;
    if end > start {
        // SAFETY: madvise(MADV_HUGEPAGE) only changes how the kernel backs the range, which
        // is part of a live allocation owned by the caller; it never changes its contents.
        let _best_effort =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepared_staging_holds_the_pages_without_growing() {
        let mut b = Vec::new();
        prepare_staging(&mut b, 10);
        assert!(b.capacity() >= 10 * PAGE_SIZE as usize && b.is_empty());
        let (ptr, cap) = (b.as_ptr(), b.capacity());
        prepare_staging(&mut b, 5);
        assert_eq!(
            (b.as_ptr(), b.capacity()),
            (ptr, cap),
            "no regrowth when it fits"
        );
    }

    #[test]
    fn runs_group_contiguous_pages() {
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(
            runs(&[1, 2, 3, 7, 9, 10]),
            vec![(0x1000, 3), (0x7000, 1), (0x9000, 2)]
        );
    }
}
