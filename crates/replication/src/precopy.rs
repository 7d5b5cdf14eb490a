//! Pieces of a migration's pre-copy that keep the source's memory traffic small and its
//! pause short: dirty rounds framed a frame at a time straight from guest memory into the
//! frame's own buffer (one copy, CRC'd while in cache, each page read just before it goes
//! out, the buffers reused), the final epoch framed straight from the paused guest's memory (no staging
//! copy, no page faults in the pause), and when to stop pre-copying.

use std::io::Write;

use ftvm_vmm::layout::PAGE_SIZE;
use ftvm_vmm::Vm;
use ftvm_wire::MessageWriter;

use crate::dirty::{merge_pages, parked_guest_slice, runs};
use crate::error::ReplicationError;
use crate::sync::send_runs_in_pieces;

/// Split `runs` (gpa, pages) into consecutive pieces of at most `max` pages each, in
/// order, covering exactly the same pages.
pub fn chunks_of_runs(runs: &[(u64, u32)], max: u32) -> Vec<Vec<(u64, u32)>> {
    let max = max.max(1);
    let mut out = Vec::new();
    let mut cur: Vec<(u64, u32)> = Vec::new();
    let mut in_cur = 0u32;
    for &(gpa, n) in runs {
        let mut gpa = gpa;
        let mut left = n;
        while left > 0 {
            let take = left.min(max - in_cur);
            cur.push((gpa, take));
            in_cur += take;
            gpa += u64::from(take) * PAGE_SIZE;
            left -= take;
            if in_cur == max {
                out.push(std::mem::take(&mut cur));
                in_cur = 0;
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Send the current contents of pages `pfns` (sorted) as epoch `epoch` while the VM
/// runs, framed straight from guest memory [`FRAME_PAGES`](crate::sync::FRAME_PAGES) at a
/// time in frame buffers (`chunk`: the spare one, reused). Pages the guest writes again
/// are caught by the next round. Returns the pages sent.
pub fn send_round_in_chunks<W: Write>(
    vm: &Vm,
    w: &mut MessageWriter<W>,
    epoch: u64,
    pfns: &[u64],
    chunk: &mut Vec<u8>,
) -> Result<u64, ReplicationError> {
    w.begin_epoch(epoch)?;
    let sent = send_runs_in_pieces(vm, w, &runs(pfns), chunk)?;
    w.commit_epoch()?;
    w.flush()?;
    Ok(sent)
}

/// Whether to pause the VM now for the final epoch, given the pause `estimate` for what
/// is left, the `target` downtime, the `dirty` pages found now and the pages the last
/// round (or the full copy) sent. The rest must fit the target; within it, one more round
/// is still worth its time while rounds converge (the guest dirtied at most half of what
/// the last round sent), until the pause would be at most a quarter of the target: the
/// pause stays short (QEMU's total time for the same guest is the yardstick, so rounds
/// that no longer shrink the set are not taken).
pub fn stop_now(
    estimate: std::time::Duration,
    target: std::time::Duration,
    dirty: u64,
    last_sent: u64,
) -> bool {
    if estimate > target {
        return false;
    }
    let small = estimate <= target / 4;
    let converging = dirty.saturating_mul(2) <= last_sent;
    small || !converging
}

/// What the final, paused epoch held.
#[derive(Debug, Default, Clone, Copy)]
pub struct FinalEpoch {
    /// Pages sent.
    pub pages: u64,
    /// Reading the dirty log, microseconds.
    pub log_us: f64,
    /// Saving the VM state, microseconds.
    pub state_us: f64,
}

/// Frame the final epoch `epoch` of a PAUSED VM straight from guest memory: the dirty
/// set (the log plus `carry`), the disk writes `disks`, the VM state, the commit. No
/// staging copy: with the vCPUs parked the pages do not change until they are framed, so
/// the copy (and the page faults of a staging buffer) would only lengthen the pause.
/// Does not flush.
pub fn send_final_from_guest<W: Write>(
    vm: &Vm,
    w: &mut MessageWriter<W>,
    epoch: u64,
    carry: &[u64],
    disks: &[ftvm_devices::disk::EpochDiskWrites],
) -> Result<FinalEpoch, ReplicationError> {
    let t = std::time::Instant::now();
    let (mut pfns, _reprotect_not_needed_the_vm_leaves) = crate::dirty::peek_dirty_pages(vm)?;
    if !carry.is_empty() {
        merge_pages(&mut pfns, carry);
    }
    let r = runs(&pfns);
    let log_us = t.elapsed().as_secs_f64() * 1e6;
    let t = std::time::Instant::now();
    let state = vm.save_state()?.to_bytes()?;
    let state_us = t.elapsed().as_secs_f64() * 1e6;
    let mut items: Vec<(u64, &[u8])> = Vec::with_capacity(r.len());
    for &(gpa, n) in &r {
        items.push((gpa, parked_guest_slice(vm, gpa, n)?));
    }
    w.begin_epoch(epoch)?;
    let pages = w.send_pages(items)?;
    crate::disk_epoch::send_disk_epoch(w, epoch, disks)?;
    w.send_state(&state)?;
    w.commit_epoch()?;
    Ok(FinalEpoch {
        pages,
        log_us,
        state_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(r: &[(u64, u32)]) -> Vec<u64> {
        r.iter()
            .flat_map(|&(g, n)| (0..u64::from(n)).map(move |i| g / PAGE_SIZE + i))
            .collect()
    }

    #[test]
    fn chunks_cover_the_same_pages_in_order_and_respect_the_size() {
        let p = PAGE_SIZE;
        let runs = vec![
            (0, 3),
            (10 * p, 1000),
            (2000 * p, 1),
            (3000 * p, 512),
            (5000 * p, 7),
        ];
        for max in [1, 2, 7, 512, 10_000] {
            let chunks = chunks_of_runs(&runs, max);
            let flat: Vec<(u64, u32)> = chunks.iter().flatten().copied().collect();
            assert_eq!(pages(&flat), pages(&runs), "max {max}: pages differ");
            for (i, c) in chunks.iter().enumerate() {
                let n: u32 = c.iter().map(|r| r.1).sum();
                assert!(n <= max, "max {max}: chunk {i} holds {n} pages");
                // Every chunk but the last is full: no needless small frames.
                if i + 1 < chunks.len() {
                    assert_eq!(n, max, "max {max}: chunk {i} not full");
                }
                assert!(c.iter().all(|r| r.1 > 0), "max {max}: empty run");
            }
        }
        assert!(chunks_of_runs(&[], 512).is_empty());
    }

    #[test]
    fn rounds_go_on_while_they_converge_and_stop_when_the_pause_is_small() {
        let ms = std::time::Duration::from_millis;
        let target = ms(50);
        // Too much left: never stop (the caller's round limit ends a guest that does
        // not converge).
        assert!(!stop_now(ms(51), target, 100, 1_000_000));
        assert!(!stop_now(ms(400), target, 100, 100));
        // Fits, and another round would halve the set: go on.
        assert!(!stop_now(ms(30), target, 4_800, 16_000));
        assert!(!stop_now(ms(13), target, 1_000, 2_000));
        // Fits, but rounds no longer shrink the set: stop.
        assert!(stop_now(ms(30), target, 1_800, 3_000));
        assert!(stop_now(ms(49), target, 5_000, 5_000));
        // Fits in a quarter of the target: stop, converging or not.
        assert!(stop_now(ms(12), target, 10, 1_000_000));
        assert!(stop_now(ms(0), target, 0, 0));
    }
}
