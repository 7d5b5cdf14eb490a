//! Transparent huge pages for guest memory.
//!
//! Guest RAM is advised `MADV_HUGEPAGE`, so that where the kernel offers THP (`enabled` set
//! to `always` or `madvise`) it is backed by 2 MiB pages: one host page fault per 2 MiB on
//! first touch instead of 512, and fewer TLB misses for the VMM's copies. Dirty logging is
//! unaffected: KVM tracks dirty pages per 4 KiB guest frame whatever backs them (with
//! logging on it maps the slot with 4 KiB entries), so the dirty set keeps its 4 KiB
//! granularity. `FTVM_NO_THP=1` leaves guest memory on 4 KiB pages (for measurements).
//! `FTVM_PREFAULT=1` also populates all of guest RAM before boot (MADV_POPULATE_WRITE).

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::memory::GuestMemory;

/// `MADV_POPULATE_WRITE` (Linux 5.14); not in every libc crate version.
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// Advise every region of `mem` to use huge pages (and populate it if asked). Best effort:
/// a kernel without THP refuses the advice and memory stays on 4 KiB pages.
pub fn advise_guest_memory(mem: &GuestMemory) {
    let thp = std::env::var_os("FTVM_NO_THP").is_none();
    let prefault = std::env::var_os("FTVM_PREFAULT").is_some();
    for region in mem.iter() {
        let Ok(host) = region.get_host_address(MemoryRegionAddress(0)) else {
            continue;
        };
        let len = region.len() as usize;
        if thp {
            // SAFETY: `host .. host + len` is the region's live anonymous mapping, owned by
            // `mem`; MADV_HUGEPAGE only changes how the kernel backs it, never its contents.
            let _best_effort =
                unsafe { libc::madvise(host.cast::<libc::c_void>(), len, libc::MADV_HUGEPAGE) };
        }
        if prefault {
            // SAFETY: as above; MADV_POPULATE_WRITE faults the pages in (zero-filled, as
            // they would be on first touch) without changing what the guest reads.
            let _best_effort =
                unsafe { libc::madvise(host.cast::<libc::c_void>(), len, MADV_POPULATE_WRITE) };
        }
    }
}

/// Fault in the pages of `mem` now (zero-filled, as a first touch would), without
/// changing what the guest reads: safe while another thread writes guest memory (a page
/// already present is left alone). A migration target calls it while it waits for the
/// source, so that the page faults (and with THP the zeroing of each 2 MiB page) are not
/// paid by the thread that writes the arriving pages. Stops early (between huge pages)
/// once `stop` is set. Returns the bytes advised; best effort (a kernel before 5.14
/// refuses the advice and pages fault in on first touch).
pub fn populate_guest_memory(mem: &GuestMemory, stop: &std::sync::atomic::AtomicBool) -> u64 {
    let mut done = 0;
    for region in mem.iter() {
        let Ok(host) = region.get_host_address(MemoryRegionAddress(0)) else {
            continue;
        };
        let len = region.len() as usize;
        // One huge page per call: the kernel holds the process's mmap lock for the whole
        // range of a call, and a thread that maps memory meanwhile (an allocation, a
        // socket buffer) waits for it; so do page faults queued behind that writer.
        let mut off = 0;
        while off < len {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return done;
            }
            let n = (len - off).min(POPULATE_STEP);
            // SAFETY: `host + off .. + n` lies inside the region's live anonymous mapping,
            // owned by `mem` (the caller keeps it alive for the call); MADV_POPULATE_WRITE
            // only faults missing pages in, zero-filled, and never writes a present page.
            let rc = unsafe {
                libc::madvise(host.add(off).cast::<libc::c_void>(), n, MADV_POPULATE_WRITE)
            };
            if rc != 0 {
                return done;
            }
            done += n as u64;
            off += n;
        }
    }
    done
}

/// Bytes populated per `madvise` call (one 2 MiB huge page).
const POPULATE_STEP: usize = 2 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    /// The KiB figure of line `key` (e.g. `RssAnon:`) of the proc file `path`; 0 if absent.
    fn proc_kib(path: &str, key: &str) -> u64 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn anon_huge_kib() -> u64 {
        proc_kib("/proc/self/smaps_rollup", "AnonHugePages:")
    }

    fn rss_kib() -> u64 {
        proc_kib("/proc/self/status", "RssAnon:")
    }

    #[test]
    fn populating_faults_memory_in_and_keeps_what_was_written() {
        let mem = crate::memory::create(32 << 20).expect("memory");
        let r = mem.iter().next().expect("a region");
        let host = r.get_host_address(MemoryRegionAddress(0)).expect("host");
        // A few pages hold data before the populate (a source's pages that arrived first).
        let marks: Vec<usize> = (0..8).map(|i| i * (3 << 20) + 4096 * i + 17).collect();
        for (i, off) in marks.iter().enumerate() {
            // SAFETY: inside the region's mapping, which `mem` keeps alive.
            unsafe { host.add(*off).write_volatile(0xa0 + i as u8) };
        }
        let stop = std::sync::atomic::AtomicBool::new(true);
        assert_eq!(populate_guest_memory(&mem, &stop), 0, "stop was set");
        stop.store(false, std::sync::atomic::Ordering::Relaxed);
        let before = rss_kib();
        let done = populate_guest_memory(&mem, &stop);
        let after = rss_kib();
        if done == 0 {
            eprintln!("SKIPPED: this kernel refuses MADV_POPULATE_WRITE");
            return;
        }
        assert_eq!(done, 32 << 20);
        // All 32 MiB are resident now (8 pages, or 8 huge pages, were before).
        assert!(
            after >= before + 16 * 1024,
            "RssAnon {before} KiB -> {after} KiB: memory was not faulted in"
        );
        for (i, off) in marks.iter().enumerate() {
            // SAFETY: as above.
            let v = unsafe { host.add(*off).read_volatile() };
            assert_eq!(v, 0xa0 + i as u8, "byte at {off} changed by the populate");
        }
        // And the rest reads as zero.
        // SAFETY: as above.
        assert_eq!(unsafe { host.add(5 << 20).read_volatile() }, 0);
    }

    #[test]
    fn guest_memory_gets_huge_pages_where_the_kernel_offers_them() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if !(mode.contains("[madvise]") || mode.contains("[always]")) {
            eprintln!("SKIPPED: transparent huge pages are off on this host ({mode:?})");
            return;
        }
        let before = anon_huge_kib();
        let mem = crate::memory::create(64 << 20).expect("memory");
        // Touch every page, as a guest would.
        for r in mem.iter() {
            let host = r.get_host_address(MemoryRegionAddress(0)).expect("host");
            for off in (0..r.len() as usize).step_by(4096) {
                // SAFETY: inside the region's mapping, which `mem` keeps alive.
                unsafe { host.add(off).write_volatile(1) };
            }
        }
        let after = anon_huge_kib();
        // With 4 KiB pages AnonHugePages would not grow at all; allow the kernel to fail
        // some allocations (fragmentation) but not most of them.
        assert!(
            after >= before + 32 * 1024,
            "AnonHugePages {before} -> {after} KiB for 64 MiB of touched guest memory"
        );
        drop(mem);
    }
}
