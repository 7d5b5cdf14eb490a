//! The migration target's [`Placer`]: the reading thread writes arriving pages straight
//! into the new VM's memory (see `recv_ahead` and docs/architecture.md, "Migration").

use std::sync::Arc;

use ftvm_vmm::layout::PAGE_SIZE;
use ftvm_vmm::Vm;
use ftvm_wire::frame::PagePlacer;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::recv_ahead::Placer;
use crate::written_pages::WrittenPages;

const PAGE: usize = PAGE_SIZE as usize;

/// Writes pages into a VM created for the migration and never run: its memory starts all
/// zero, so zero runs over pages not written yet are skipped. Only this placer writes
/// the VM's memory while the migration is received (the receiving thread writes none,
/// and the VM runs only after the whole migration was received and verified).
pub struct GuestPlacer {
    vm: Arc<Vm>,
    /// The guest pages written so far.
    written: WrittenPages,
}

impl GuestPlacer {
    /// A placer for `vm`, whose memory must not have been written since it was created.
    pub fn fresh(vm: Arc<Vm>) -> Self {
        GuestPlacer {
            vm,
            written: WrittenPages::default(),
        }
    }

    /// Where the `npages` pages at `gpa` are in this process (inside one region's
    /// mapping), or why they are not guest memory.
    fn host(&self, gpa: u64, npages: u32) -> Result<*mut u8, String> {
        let len = u64::from(npages) * PAGE_SIZE;
        let region = self
            .vm
            .memory()
            .find_region(GuestAddress(gpa))
            .ok_or_else(|| format!("{npages} pages at {gpa:#x}: not guest memory"))?;
        let start = gpa - region.start_addr().0;
        if start.checked_add(len).is_none_or(|end| end > region.len()) {
            return Err(format!(
                "{npages} pages at {gpa:#x} run past the end of guest memory"
            ));
        }
        let host = ftvm_vmm::memory::region_host_addr(region).map_err(|e| e.to_string())?;
        Ok(host.wrapping_add(start as usize))
    }
}

impl std::fmt::Debug for GuestPlacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestPlacer").finish_non_exhaustive()
    }
}

impl PagePlacer for GuestPlacer {
    fn place(&mut self, gpa: u64, npages: u32) -> Result<&mut [u8], String> {
        let host = self.host(gpa, npages)?;
        self.written.mark(gpa / PAGE_SIZE, u64::from(npages));
        // SAFETY: `host .. + npages * PAGE` lies inside one region's mapping (checked by
        // `host`), which `self.vm` keeps mapped while the returned borrow of `self` lives.
        // Nothing else reads or writes this memory meanwhile: the VM has never run, its
        // receiving thread writes no page while a placer is in use, and this placer hands
        // out one slice at a time (`&mut self`).
        Ok(unsafe { std::slice::from_raw_parts_mut(host, npages as usize * PAGE) })
    }
}

impl Placer for GuestPlacer {
    fn contains(&self, gpa: u64, npages: u32) -> bool {
        self.host(gpa, npages).is_ok()
    }

    fn zero(&mut self, gpa: u64, npages: u32) -> Result<(), String> {
        // Only the stretches written so far hold something (the rest is still zero).
        let mut runs = Vec::new();
        self.written
            .for_each_written_run(gpa / PAGE_SIZE, u64::from(npages), |start, n| {
                runs.push((start, u32::try_from(n).map_err(|e| e.to_string())?));
                Ok::<(), String>(())
            })?;
        for (start, n) in runs {
            self.place(start * PAGE_SIZE, n)?.fill(0);
        }
        Ok(())
    }
}
