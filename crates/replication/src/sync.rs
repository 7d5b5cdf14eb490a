//! Sending VM state: whole memory while the VM runs, dirty rounds, and the paused capture
//! of one epoch (pages + vCPU/VM/device state + outputs).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftvm_vmm::layout::PAGE_SIZE;
use ftvm_vmm::Vm;
use ftvm_wire::MessageWriter;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::dirty::{copy_runs, copy_runs_parked, merge_pages, peek_dirty_pages, runs};
use crate::error::ReplicationError;
use crate::outputs::EpochOutput;

const CHUNK: usize = 2 << 20;
const PAGE: usize = PAGE_SIZE as usize;
/// Data pages per frame of the full copy and the pre-copy rounds: the most whose frame
/// (header, run table, data, CRC) fits one of the sender's queue buffers, so a frame
/// buffer handed back by the sender is reused as it is (no reallocation, no new page
/// faults).
pub const FRAME_PAGES: u32 = frame_pages(crate::send_queue::BUFFER_BYTES);

/// The most pages whose `Pages` frame, one run descriptor per page at worst, fits `bytes`.
const fn frame_pages(bytes: usize) -> u32 {
    let fixed = ftvm_wire::pages_frame_len(0, 0);
    ((bytes - fixed) / (PAGE + ftvm_wire::message::RUN_DESCRIPTOR_LEN)) as u32
}

/// Totals of one round or epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundStats {
    /// Pages sent with data.
    pub data_pages: u64,
    /// Pages sent as zero.
    pub zero_pages: u64,
}

/// Send all of guest memory as epoch `epoch` (zero pages as ZeroPages). The VM may be
/// running: turn dirty logging on (and clear it) before calling, so later rounds catch
/// whatever changes during the copy. `progress(bytes_done, bytes_total)` is called per chunk.
pub fn send_all_memory<W: Write>(
    vm: &Vm,
    w: &mut MessageWriter<W>,
    epoch: u64,
    progress: impl FnMut(u64, u64),
) -> Result<RoundStats, ReplicationError> {
    send_all_memory_paced(vm, w, epoch, progress, &mut Pace::unlimited())
}

/// Keeps the average rate of a send at or below a cap by sleeping between chunks.
#[derive(Debug)]
pub struct Pace {
    cap: Option<f64>,
    start: Instant,
}

impl Pace {
    /// No cap: never sleeps.
    pub fn unlimited() -> Self {
        Self::new(None)
    }

    /// At most `bytes_per_s` on average, counted from now (`None`: no cap).
    pub fn new(bytes_per_s: Option<u64>) -> Self {
        Pace {
            cap: bytes_per_s.filter(|b| *b > 0).map(|b| b as f64),
            start: Instant::now(),
        }
    }

    /// `sent` bytes have been sent since the start: sleep until that is within the cap.
    pub fn after(&self, sent: u64) {
        if let Some(cap) = self.cap {
            let due = Duration::from_secs_f64(sent as f64 / cap);
            let elapsed = self.start.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
    }
}

/// [`send_all_memory`], sleeping after each chunk as `pace` says (operators' bandwidth cap).
pub fn send_all_memory_paced<W: Write>(
    vm: &Vm,
    w: &mut MessageWriter<W>,
    epoch: u64,
    mut progress: impl FnMut(u64, u64),
    pace: &mut Pace,
) -> Result<RoundStats, ReplicationError> {
    let sent_before = w.frames().bytes_written();
    let total: u64 = vm.memory().iter().map(|r| r.len()).sum();
    let mut done = 0u64;
    let mut stats = RoundStats::default();
    // The frame buffer: the sender hands each one back for the next frame.
    let mut frame_buf = Vec::new();
    // Zero runs of the whole copy, sent in one go at its end: every page is in the copy
    // once, either zero or with data, so where the zero runs go in the epoch does not
    // matter, and small frames between the data frames would cost the sender thread a
    // wake-up and a write each.
    let mut zero_runs: Vec<(u64, u32)> = Vec::new();
    let mut data_runs: Vec<(u64, u32)> = Vec::new();
    w.begin_epoch(epoch)?;
    for region in vm.memory().iter() {
        let base = region.start_addr().0;
        let len = region.len();
        let host =
            ftvm_vmm::memory::region_host_addr(region).map_err(|e| ReplicationError::Memory {
                gpa: base,
                reason: e.to_string(),
            })?;
        let mut off = 0u64;
        while off < len {
            let n = (len - off).min(CHUNK as u64) as usize;
            // Which pages hold data is decided in place, on guest memory: only those are
            // copied (most of a fresh guest's memory is zero, and a copy costs more than
            // a scan that stops at the first non-zero word). A page the guest writes
            // during the scan or the copy is in the dirty log and goes again later.
            data_runs.clear();
            for i in 0..n / PAGE {
                let gpa = base + off + (i * PAGE) as u64;
                // SAFETY: `host + off + i * PAGE .. + PAGE` lies inside the region's live
                // mapping (`off + n <= len`, `vm` keeps it mapped); the scan only reads,
                // with volatile loads, memory the guest may write meanwhile.
                let zero = unsafe {
                    crate::zero_scan::live_page_is_zero(host.add((off as usize) + i * PAGE))
                };
                let runs = if zero {
                    stats.zero_pages += 1;
                    &mut zero_runs
                } else {
                    stats.data_pages += 1;
                    &mut data_runs
                };
                match runs.last_mut() {
                    Some((g, c)) if *g + u64::from(*c) * PAGE_SIZE == gpa && *c < u32::MAX => {
                        *c += 1
                    }
                    _ => runs.push((gpa, 1)),
                }
            }
            send_runs_in_pieces(vm, w, &data_runs, &mut frame_buf)?;
            off += n as u64;
            done += n as u64;
            progress(done, total);
            w.flush()?;
            pace.after(w.frames().bytes_written() - sent_before);
        }
    }
    if !zero_runs.is_empty() {
        w.send_zero_pages(zero_runs.iter().copied())?;
    }
    w.commit_epoch()?;
    w.flush()?;
    Ok(stats)
}

/// Send the current contents of pages `pfns` (sorted) as epoch `epoch`, while the VM
/// runs (pages it writes again are caught by the next round). Returns the pages sent.
pub fn send_dirty_round<W: Write>(
    vm: &Vm,
    w: &mut MessageWriter<W>,
    epoch: u64,
    pfns: &[u64],
    bounce: &mut Vec<u8>,
) -> Result<u64, ReplicationError> {
    let r = runs(pfns);
    copy_runs(vm, &r, bounce)?;
    w.begin_epoch(epoch)?;
    let sent = send_runs(w, &r, bounce)?;
    w.commit_epoch()?;
    w.flush()?;
    Ok(sent)
}

/// Frame the pages of `runs` straight out of live guest memory, [`FRAME_PAGES`] at a time:
/// each frame is assembled in a buffer of its own (`spare`, reused: the writer hands back
/// an empty one), the pages copied into it once and the payload CRC computed over that
/// copy piece by piece while it is in the L1 cache, never over guest memory (the guest
/// may change a page after it was copied: the next round sends it again, and the frame
/// must carry a CRC of the bytes it carries). With a hand-over set on the frame writer
/// (a migration's queued sender) the buffer goes to the sender thread whole: one copy
/// per byte on this thread instead of two. Returns the pages sent.
pub(crate) fn send_runs_in_pieces<W: Write>(
    vm: &Vm,
    w: &mut MessageWriter<W>,
    runs: &[(u64, u32)],
    spare: &mut Vec<u8>,
) -> Result<u64, ReplicationError> {
    let mut sent = 0;
    for piece in crate::precopy::chunks_of_runs(runs, FRAME_PAGES) {
        let mut f = w.begin_pages_in_place(&piece, std::mem::take(spare))?;
        for &(gpa, n) in &piece {
            let src = crate::dirty::live_guest_ptr(vm, gpa, n)?;
            // SAFETY: `live_guest_ptr` checked that `n` pages from `src` lie inside a
            // region's live mapping, which `vm` keeps mapped for this call; guest memory
            // is never this frame's heap buffer. The guest may write it meanwhile, which
            // `append_copy` allows (its CRC covers the copy).
            unsafe { f.append_copy(src, n as usize * PAGE)? };
            sent += u64::from(n);
        }
        *spare = w.send_pages_in_place(f)?;
    }
    Ok(sent)
}

pub(crate) fn send_runs<W: Write>(
    w: &mut MessageWriter<W>,
    r: &[(u64, u32)],
    bytes: &[u8],
) -> Result<u64, ReplicationError> {
    if r.is_empty() {
        return Ok(0);
    }
    // The runs' contents are back to back in `bytes`: each frame's data goes out in one
    // write.
    Ok(w.send_page_runs(r, bytes)?)
}

/// One epoch captured while the vCPUs were paused.
#[derive(Debug, Default)]
pub struct CapturedEpoch {
    /// The epoch number.
    pub epoch: u64,
    /// Dirty page runs (gpa, count) to send.
    pub runs: Vec<(u64, u32)>,
    /// The pause's staging: every page copied in the pause, back to back in page order.
    /// Shared: the hot-page tracker keeps it as the next epoch's compare shadow
    /// (crate::hot), so it is written only while nothing else holds it
    /// ([`crate::staged_send::staging_mut`]).
    pub bytes: Arc<Vec<u8>>,
    /// Where each of `runs` starts in `bytes`, in pages (empty: the runs lie back to back
    /// from the start). Pages of the staging between runs were not changed and are not
    /// sent.
    pub slots: Vec<usize>,
    /// Encoded VM state.
    pub state: Vec<u8>,
    /// Output the guest sent during the epoch.
    pub output: EpochOutput,
    /// How long the copy of the pages took in the pause, microseconds.
    pub copy_us: f64,
    /// How long reading the dirty log (and merging the carry) took in the pause, us.
    pub log_us: f64,
    /// How long the state capture took in the pause, microseconds.
    pub state_us: f64,
    /// Guest disk writes of the epoch, one entry per disk.
    pub disks: Vec<ftvm_devices::disk::EpochDiskWrites>,
}

impl CapturedEpoch {
    /// Pages in the epoch.
    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|(_, n)| u64::from(*n)).sum()
    }
}

/// Capture epoch `epoch` from a paused VM into `c` (its buffers are reused): the dirty
/// set, a copy of those pages, and the VM state. The caller seals the outputs.
///
/// `carry`: pages known dirty but not sent yet (taken from the log earlier, or logged
/// but not yet re-protected); they join the set. Returns the KVM-logged pages the caller
/// must re-protect with `Vm::clear_guest_dirty_pages` once the vCPUs run again (empty
/// without manual dirty-log protection) and carry into the next epoch.
pub fn capture_paused(
    vm: &Vm,
    epoch: u64,
    carry: &[u64],
    c: &mut CapturedEpoch,
) -> Result<Vec<u64>, ReplicationError> {
    c.epoch = epoch;
    let t = std::time::Instant::now();
    let (mut pfns, to_clear) = peek_dirty_pages(vm)?;
    if !carry.is_empty() {
        merge_pages(&mut pfns, carry);
    }
    c.runs = runs(&pfns);
    c.log_us = t.elapsed().as_secs_f64() * 1e6;
    c.slots.clear();
    let t = std::time::Instant::now();
    copy_runs_parked(vm, &c.runs, crate::staged_send::staging_mut(&mut c.bytes))?;
    c.copy_us = t.elapsed().as_secs_f64() * 1e6;
    let t = std::time::Instant::now();
    c.state = vm.save_state()?.to_bytes()?;
    c.state_us = t.elapsed().as_secs_f64() * 1e6;
    Ok(to_clear)
}

/// Send a captured epoch: pages, outputs, state, commit. Does not flush.
pub fn send_captured<W: Write>(
    w: &mut MessageWriter<W>,
    c: &CapturedEpoch,
) -> Result<(), ReplicationError> {
    w.begin_epoch(c.epoch)?;
    crate::staged_send::send_staged(w, &c.runs, &c.slots, &c.bytes)?;
    crate::disk_epoch::send_disk_epoch(w, c.epoch, &c.disks)?;
    for (stream, bytes) in &c.output.chunks {
        if !bytes.is_empty() {
            w.send_output(*stream, bytes)?;
        }
    }
    w.send_state(&c.state)?;
    w.commit_epoch()?;
    Ok(())
}
