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
    fn contains(&self, gpa: u64, npages: u32) -> bool {
        self.host(gpa, npages).is_ok()
    }

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ftvm_wire::{FrameReader, MessageWriter};
    use vm_memory::Bytes;

    const MEM: u64 = 16 << 20;

    fn vm(test: &str) -> Option<Arc<Vm>> {
        crate::test_support::test_vm(test, MEM, "the placer")
    }

    /// One epoch's Begin frame and a Pages frame of `runs` (each page filled with 0x5a).
    fn pages_frame(runs: &[(u64, u32)]) -> Vec<u8> {
        let pages: u32 = runs.iter().map(|r| r.1).sum();
        let mut w = MessageWriter::new(Vec::new());
        w.begin_epoch(1).unwrap();
        w.send_page_runs(runs, &vec![0x5a; pages as usize * PAGE])
            .unwrap();
        w.flush().unwrap();
        w.frames().get_ref().clone()
    }

    /// Reads the Begin and the Pages frame of `bytes` through `placer`; returns the bytes
    /// placed.
    fn read_placing(bytes: &[u8], placer: &mut GuestPlacer) -> usize {
        let mut r = FrameReader::new(bytes);
        r.read_frame_placing(Vec::new(), placer).unwrap().unwrap();
        let f = r.read_frame_placing(Vec::new(), placer).unwrap().unwrap();
        f.placed
    }

    #[test]
    fn a_frame_refused_for_a_run_outside_guest_memory_marks_no_page_written() {
        let Some(vm) = vm("a_frame_refused_for_a_run_outside_guest_memory_marks_no_page_written")
        else {
            return;
        };
        let mut placer = GuestPlacer::fresh(vm.clone());
        // Two runs inside guest memory, then one past its end.
        let refused = pages_frame(&[(0x1000, 2), (0x8000, 1), (MEM - PAGE_SIZE, 2)]);
        assert_eq!(read_placing(&refused, &mut placer), 0, "read whole");
        let mut none = 0;
        placer
            .written
            .for_each_written_run(0, MEM / PAGE_SIZE, |_, n| {
                none += n;
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(none, 0, "pages of a refused frame were marked written");
        let mut b = [0u8; 1];
        vm.memory()
            .read_slice(&mut b, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(b[0], 0, "a refused frame's page was written");

        // The same runs inside guest memory are placed, and marked.
        let placed = pages_frame(&[(0x1000, 2), (0x8000, 1)]);
        assert_eq!(read_placing(&placed, &mut placer), 3 * PAGE);
        let mut marked = Vec::new();
        placer
            .written
            .for_each_written_run(0, MEM / PAGE_SIZE, |p, n| {
                marked.push((p, n));
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(marked, vec![(1, 2), (8, 1)]);
        vm.memory()
            .read_slice(&mut b, GuestAddress(0x8fff))
            .unwrap();
        assert_eq!(b[0], 0x5a);
    }
}
