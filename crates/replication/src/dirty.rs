//! The dirty set: pages written by vCPUs (KVM's dirty log) OR by the VMM itself
//! (vm-memory's bitmap), and copying them out of guest memory.

use ftvm_vmm::layout::PAGE_SIZE;
use ftvm_vmm::memory::take_vmm_dirty_pages;
use ftvm_vmm::Vm;
use vm_memory::{Bytes, GuestAddress};

use crate::error::ReplicationError;

/// Every page written since the last call, by a vCPU or by the VMM, as sorted unique page
/// frame numbers. KVM dirty logging must be on. Call only while the VM is paused, so that
/// nothing is written between reading the log and copying the pages.
pub fn take_dirty_pages(vm: &Vm) -> Result<Vec<u64>, ReplicationError> {
    let mut pages = vm.take_guest_dirty_pages()?;
    pages.extend(take_vmm_dirty_pages(vm.memory()));
    pages.sort_unstable();
    pages.dedup();
    Ok(pages)
}

/// Like [`take_dirty_pages`], but leaves KVM's log as it is when the VM uses manual
/// dirty-log protection: the caller re-protects the returned KVM pages later with
/// `Vm::clear_guest_dirty_pages` (while the vCPUs run) and must treat them as dirty again
/// in the next round, since writes before that clear are not logged.
/// Returns (all dirty pages, the KVM-logged ones to clear later).
pub fn peek_dirty_pages(vm: &Vm) -> Result<(Vec<u64>, Vec<u64>), ReplicationError> {
    let kvm_pages = vm.peek_guest_dirty_pages()?;
    let mut pages = kvm_pages.clone();
    pages.extend(take_vmm_dirty_pages(vm.memory()));
    pages.sort_unstable();
    pages.dedup();
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
    let mut off = 0;
    for &(gpa, n) in runs {
        let len = n as usize * PAGE_SIZE as usize;
        vm.memory()
            .read_slice(&mut buf[off..off + len], GuestAddress(gpa))
            .map_err(|e| ReplicationError::Memory {
                gpa,
                reason: e.to_string(),
            })?;
        off += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_group_contiguous_pages() {
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(
            runs(&[1, 2, 3, 7, 9, 10]),
            vec![(0x1000, 3), (0x7000, 1), (0x9000, 2)]
        );
    }
}
