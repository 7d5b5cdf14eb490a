//! Adaptive dirty tracking: hot pages stay writable, unchanged pages stay off the wire.
//!
//! With KVM's manual dirty-log protection a page is write-protected again only when the
//! VMM clears its bit (KVM_CLEAR_DIRTY_LOG), and the next guest write to it faults. On
//! nested software-KVM hosts that fault costs tens of microseconds, and a busy guest
//! rewrites the same pages epoch after epoch. So a page dirty in the log is kept **hot**:
//! its bit is not cleared, KVM keeps reporting it, the epoch engine copies it in every
//! pause, and the guest writes it without faulting. After the resume (off the pause) every
//! page this tracker watches is compared with what the backup holds of it, and only pages
//! that changed go on the wire. What the backup holds is the page's copy in the previous
//! epoch's staging (the *shadow*): a watched page is copied in every pause, and that copy
//! was either sent or equal to the one before. So the tracker keeps the previous epoch's
//! staging whole instead of copying pages into a shadow of its own. The staging is shared
//! with the sender, which sends the changed pages from it in place (crate::staged_send):
//! after the pause's copy no page is copied again.
//!
//! A hot page found unchanged `cool_after` epochs in a row is cleared (re-protected) and
//! becomes cold. `cool_after` is a ski-rental rule over costs measured on this host: the
//! dirty-log write-fault cost (`ftvm_vmm::calibrate`, measured once when protection
//! starts) divided by the per-page cost of keeping a page hot (its copy in the pause plus
//! the compare, both measured every epoch). Keeping an unwritten page hot for that many
//! epochs costs about one fault, so the policy is never worse than twice the best choice
//! made in hindsight, and it turns itself off (`cool_after` = 0) on hosts where faults are
//! cheaper than copies (hardware dirty logging).
//!
//! Cleared pages are handled as before: writes between the end of a pause and the clear
//! are not logged, so every cleared page is copied again in the next pause (the *carry*).
//! Their shadow makes that second copy free on the wire when the page did not change.
//!
//! It stays a superset: every page whose bit is set in the log, every carried page and
//! every page the VMM wrote is copied in the pause, exactly as without this policy; the
//! policy only removes pages from the wire whose bytes equal what the backup already holds,
//! and only chooses which logged pages to clear.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::Instant;

use ftvm_vmm::layout::PAGE_SIZE;
use serde::Serialize;

use crate::staged_send::{staging_mut, StagingSpares};
use crate::sync::CapturedEpoch;

const PAGE: usize = PAGE_SIZE as usize;
/// Longest a page stays hot while unchanged, whatever the measured costs.
pub const MAX_COOL_AFTER: u32 = 64;
/// Default cap on the pages the tracker watches (hot, or compared once more).
pub const DEFAULT_MAX_TRACKED_PAGES: usize = 32 * 1024;

/// Policy settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotConfig {
    /// Keep hot pages writable and compare before sending (false: every logged page is
    /// cleared after each epoch and every copied page is sent).
    pub enabled: bool,
    /// Most pages watched (hot or being compared); beyond, pages are handled as with the
    /// policy off.
    pub max_tracked_pages: usize,
}

impl Default for HotConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_tracked_pages: DEFAULT_MAX_TRACKED_PAGES,
        }
    }
}

/// What the tracker did, for the status API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct HotStats {
    /// Whether the policy is on.
    pub enabled: bool,
    /// Pages left writable (not re-protected) after the last epoch.
    pub hot_pages: u64,
    /// Pages with a shadow copy.
    pub tracked_pages: u64,
    /// Pages copied in the pauses, in total (log + carry + hot pages).
    pub copied_pages: u64,
    /// Pages copied in a pause but not sent because unchanged, in total.
    pub unchanged_pages: u64,
    /// The same in bytes.
    pub unchanged_bytes: u64,
    /// Hot pages re-protected after staying unchanged, in total.
    pub cooled_pages: u64,
    /// Unchanged epochs after which a hot page is re-protected (0: none kept hot).
    pub cool_after: u32,
    /// Measured dirty-log write-fault cost, microseconds (0 if not measured).
    pub fault_us: f64,
    /// Measured copy cost in the pause, microseconds per page.
    pub copy_us_per_page: f64,
    /// Measured compare cost after the resume, microseconds per page.
    pub compare_us_per_page: f64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    slot: u32,
    unchanged: u32,
    seen: u64,
}

/// The tracker's map is keyed by page frame numbers it looks up for every copied page, off
/// the pause but on the engine's CPU: a multiplicative hash instead of SipHash. The keys
/// are the guest's page numbers (bounded by its RAM, at most `max_tracked_pages` of them).
#[derive(Debug, Default, Clone, Copy)]
struct PfnHasher(u64);

impl Hasher for PfnHasher {
    fn finish(&self) -> u64 {
        // The high bits (which every input bit reaches) folded into the low ones the
        // table indexes with: pages a power-of-two apart do not share a bucket.
        self.0 ^ (self.0 >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Exponentially weighted mean; `None` before the first sample.
#[derive(Debug, Clone, Copy, Default)]
struct Ewma(Option<f64>);

impl Ewma {
    fn add(&mut self, x: f64) {
        if x.is_finite() {
            self.0 = Some(match self.0 {
                Some(m) => m + 0.2 * (x - m),
                None => x,
            });
        }
    }
}

/// The ski-rental rule: keeping an unwritten page hot one more epoch costs its copy in
/// the pause plus its compare after the resume (`copy_us + compare_us`); re-protecting it
/// costs one write fault (`fault_us`) if the guest writes it again. A page is therefore
/// kept hot for `fault / (copy + compare)` unchanged epochs, at most [`MAX_COOL_AFTER`];
/// 0 (nothing kept hot) when a fault is cheaper than one epoch's keep, as with hardware
/// dirty logging. All three are wall-clock microseconds per page as the guest pays them;
/// a cost that is not a finite non-negative number keeps nothing hot.
pub fn cool_after_for(fault_us: f64, copy_us: f64, compare_us: f64) -> u32 {
    let keep = copy_us + compare_us;
    if !fault_us.is_finite() || !keep.is_finite() || fault_us <= 0.0 || keep < 0.0 {
        return 0;
    }
    if keep == 0.0 {
        return MAX_COOL_AFTER;
    }
    (fault_us / keep)
        .floor()
        .clamp(0.0, f64::from(MAX_COOL_AFTER)) as u32
}

/// The epoch engine's dirty-page bookkeeping between pauses (see the module docs).
#[derive(Debug)]
pub struct DirtyTracker {
    cfg: HotConfig,
    manual: bool,
    fault_us: Option<f64>,
    copy_us: Ewma,
    compare_us: Ewma,
    entries: HashMap<u64, Entry, BuildHasherDefault<PfnHasher>>,
    /// The previous epoch's staging, uncompacted: what the backup holds of every watched
    /// page (an entry's `slot` is the page's index in it). Shared with the sender of that
    /// epoch; never written while held.
    shadow: Arc<Vec<u8>>,
    /// Stagings set aside while still shared (see [`DirtyTracker::prepare_staging`]).
    spares: StagingSpares,
    carry: Vec<u64>,
    round: u64,
    stats: HotStats,
    /// Recent peak of pages copied in a pause.
    peak_copied: f64,
}

impl DirtyTracker {
    /// A tracker. `manual`: the VM uses manual dirty-log protection (without it KVM
    /// re-protects every page it reports and the policy cannot apply). `fault_us`: the
    /// measured write-fault cost (`None`: unknown, nothing is kept hot). `carry`: pages
    /// known dirty and not sent yet, to include in the first epoch.
    pub fn new(cfg: HotConfig, manual: bool, fault_us: Option<f64>, carry: Vec<u64>) -> Self {
        let enabled = cfg.enabled && manual;
        Self {
            cfg,
            manual,
            fault_us,
            copy_us: Ewma::default(),
            compare_us: Ewma::default(),
            entries: HashMap::default(),
            shadow: Arc::default(),
            spares: StagingSpares::default(),
            carry,
            round: 0,
            peak_copied: 0.0,
            stats: HotStats {
                enabled,
                fault_us: fault_us.unwrap_or(0.0),
                ..HotStats::default()
            },
        }
    }

    fn enabled(&self) -> bool {
        self.cfg.enabled && self.manual
    }

    /// Pages to re-protect (clear in KVM's log) before the next pause, which must also
    /// copy them (writes before the clear are not logged).
    pub fn carry(&self) -> &[u64] {
        &self.carry
    }

    /// Pages the next pause is likely to copy, with headroom: the recent peak of copied
    /// pages, or the carry plus the hot pages if more (see `dirty::prepare_staging`).
    pub fn expected_pages(&self) -> usize {
        let known = self.carry.len() as u64 + self.stats.hot_pages;
        (self.peak_copied.max(known as f64) * 1.25) as usize + 64
    }

    /// Make `staging` ready for the next pause, off the pause: held by nobody else (a
    /// staging the sender or this tracker still reads is set aside, see
    /// [`StagingSpares`]), large enough for [`DirtyTracker::expected_pages`] and already
    /// faulted in (`dirty::prepare_staging`).
    pub fn prepare_staging(&mut self, staging: &mut Arc<Vec<u8>>) {
        self.spares.make_unique(staging);
        crate::dirty::prepare_staging(staging_mut(staging), self.expected_pages());
    }

    /// Stagings allocated because every one was still in use (pipelining).
    pub fn stagings_allocated(&self) -> u64 {
        self.spares.allocated
    }

    /// Record the pause's copy: `pages` pages in `us` microseconds.
    pub fn record_copy(&mut self, pages: u64, us: f64) {
        // A slowly decaying peak: staging is sized for the larger recent epochs.
        self.peak_copied = (self.peak_copied * 0.98).max(pages as f64);
        if pages > 0 {
            self.copy_us.add(us / pages as f64);
        }
    }

    /// Unchanged epochs after which a hot page is re-protected: the fault cost over the
    /// cost of keeping a page hot one more epoch (0: keep nothing hot).
    pub fn cool_after(&self) -> u32 {
        if !self.enabled() {
            return 0;
        }
        let (Some(fault), Some(copy)) = (self.fault_us, self.copy_us.0) else {
            return 0;
        };
        cool_after_for(fault, copy, self.compare_us.0.unwrap_or(copy))
    }

    /// The current statistics.
    pub fn stats(&self) -> HotStats {
        self.stats
    }

    /// After the resume: drop from `c` the pages whose bytes equal the copy last sent,
    /// update the shadows, and decide which of `kvm_pages` (the pages set in KVM's log at
    /// the pause, sorted) stay hot; the others become the next [`DirtyTracker::carry`].
    pub fn after_resume(&mut self, c: &mut CapturedEpoch, kvm_pages: &[u64]) {
        self.stats.copied_pages += c.pages();
        if !self.enabled() {
            self.carry.clear();
            self.carry.extend_from_slice(kvm_pages);
            return;
        }
        self.round += 1;
        let round = self.round;
        let cool_after = self.cool_after();
        let t = Instant::now();
        // The epoch's staging (every copied page, in run order) becomes the shadow of the
        // next epoch, and the sender sends the changed pages from it where they are: the
        // epoch keeps the runs of changed pages with their slots in the staging. No copy.
        let staging = Arc::clone(&c.bytes);
        let runs = std::mem::take(&mut c.runs);
        let mut kept: Vec<(u64, u32)> = Vec::with_capacity(runs.len());
        let mut slots = std::mem::take(&mut c.slots);
        slots.clear();
        let mut slot = 0usize;
        for &(gpa, n) in &runs {
            for i in 0..u64::from(n) {
                let pfn = gpa / PAGE_SIZE + i;
                let at = slot * PAGE;
                let page = &staging[at..at + PAGE];
                if self.watch(pfn, page, slot, kvm_pages, round) {
                    // A page extends the run before only if it follows it in guest memory;
                    // then it also follows it in the staging (pages are staged in order,
                    // each once).
                    match kept.last_mut() {
                        Some((g, k)) if *g / PAGE_SIZE + u64::from(*k) == pfn => *k += 1,
                        _ => {
                            kept.push((pfn * PAGE_SIZE, 1));
                            slots.push(slot);
                        }
                    }
                }
                slot += 1;
            }
        }
        // The old shadow is dropped here (its sender may still hold it).
        self.shadow = staging;
        c.runs = kept;
        c.slots = slots;
        if slot > 0 {
            let us = t.elapsed().as_secs_f64() * 1e6;
            self.compare_us.add(us / slot as f64);
        }

        // Which logged pages stay hot, which are cleared (and carried).
        self.carry.clear();
        let mut hot = 0u64;
        for &pfn in kvm_pages {
            match self.entries.get(&pfn) {
                Some(e) if e.seen == round && cool_after > 0 && e.unchanged < cool_after => {
                    hot += 1;
                }
                Some(e) => {
                    if e.unchanged >= cool_after && cool_after > 0 {
                        self.stats.cooled_pages += 1;
                    }
                    self.carry.push(pfn);
                }
                None => self.carry.push(pfn),
            }
        }
        // Keep shadows of pages still in the log (hot, or carried: compared next epoch);
        // the others were compared for the last time now.
        self.entries
            .retain(|pfn, e| e.seen == round && kvm_pages.binary_search(pfn).is_ok());
        self.stats.hot_pages = hot;
        self.stats.tracked_pages = self.entries.len() as u64;
        self.stats.cool_after = cool_after;
        self.stats.copy_us_per_page = self.copy_us.0.unwrap_or(0.0);
        self.stats.compare_us_per_page = self.compare_us.0.unwrap_or(0.0);
    }

    /// Compare `page` (page `pfn`'s bytes at the pause, at `slot` of this epoch's staging)
    /// with its shadow (its bytes in the previous epoch's staging, which the backup holds),
    /// or start watching a logged page. The entry then points at `slot`, since this
    /// epoch's staging becomes the shadow. Returns whether the page must be sent.
    fn watch(&mut self, pfn: u64, page: &[u8], slot: usize, kvm_pages: &[u64], round: u64) -> bool {
        let Ok(slot32) = u32::try_from(slot) else {
            self.entries.remove(&pfn);
            return true;
        };
        if let Some(e) = self.entries.get_mut(&pfn) {
            let at = e.slot as usize * PAGE;
            let same = self.shadow.get(at..at + PAGE) == Some(page);
            e.seen = round;
            e.slot = slot32;
            if same {
                e.unchanged = e.unchanged.saturating_add(1);
                self.stats.unchanged_pages += 1;
                self.stats.unchanged_bytes += PAGE_SIZE;
                return false;
            }
            e.unchanged = 0;
            return true;
        }
        if self.entries.len() < self.cfg.max_tracked_pages && kvm_pages.binary_search(&pfn).is_ok()
        {
            self.entries.insert(
                pfn,
                Entry {
                    slot: slot32,
                    unchanged: 0,
                    seen: round,
                },
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dirty::runs;
    use std::collections::VecDeque;

    /// A model of KVM's manual-protect dirty log over `n` pages: a page is logged (bit
    /// set) when written while write-protected; a clear resets the bit and protects it.
    struct Model {
        mem: Vec<u8>,
        bit: Vec<bool>,
        protected: Vec<bool>,
    }

    impl Model {
        fn new(n: usize) -> Self {
            Self {
                mem: vec![0; n * PAGE],
                bit: vec![false; n],
                protected: vec![true; n],
            }
        }
        fn write(&mut self, pfn: usize, byte: usize, v: u8) {
            if self.protected[pfn] {
                self.bit[pfn] = true;
                self.protected[pfn] = false;
            }
            self.mem[pfn * PAGE + byte] = v;
        }
        fn clear(&mut self, pfns: &[u64]) {
            for &p in pfns {
                self.bit[p as usize] = false;
                self.protected[p as usize] = true;
            }
        }
        fn logged(&self) -> Vec<u64> {
            (0..self.bit.len() as u64)
                .filter(|&p| self.bit[p as usize])
                .collect()
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Drive the tracker as the epoch engine does, against the model, with random writes
    /// (hot sets, one-off writes, writes of the same value, writes before and after the
    /// clear); after every epoch the backup (all sent pages applied) must equal guest
    /// memory at the pause. `drop_carry` breaks the engine on purpose (carried pages not
    /// copied) to show the check catches a missed page. Returns the first mismatch.
    fn simulate(seed: u64, cfg: HotConfig, fault_us: f64, drop_carry: bool) -> Option<String> {
        let n = 96;
        let mut rng = Rng(seed | 1);
        let mut m = Model::new(n);
        let mut backup = m.mem.clone();
        let mut t = DirtyTracker::new(cfg, true, Some(fault_us), Vec::new());
        // As in the engine: epochs wait for the sender (0-2 of them queued), and captured
        // epochs come back to a pool whose order varies, so a staging is sometimes wanted
        // again while the sender or the tracker (as its shadow) still reads it.
        let depth = (seed % 3) as usize;
        let mut pool: VecDeque<CapturedEpoch> =
            (0..=depth).map(|_| CapturedEpoch::default()).collect();
        let mut queued: VecDeque<(CapturedEpoch, Vec<u8>, u64)> = VecDeque::new();
        let hot_set: Vec<usize> = (0..8).map(|_| rng.below(n as u64) as usize).collect();
        for epoch in 0..200u64 {
            let writes = |m: &mut Model, rng: &mut Rng, k: u64| {
                for _ in 0..k {
                    let pfn = if rng.below(3) == 0 {
                        rng.below(n as u64) as usize
                    } else {
                        hot_set[rng.below(hot_set.len() as u64) as usize]
                    };
                    // Few distinct values: many writes leave a page unchanged.
                    let v = rng.below(3) as u8;
                    let byte = rng.below(4) as usize * 1000;
                    m.write(pfn, byte, v);
                }
            };
            // After the previous resume, before the clear (not logged for writable pages).
            let k = rng.below(12);
            writes(&mut m, &mut rng, k);
            let carry = t.carry().to_vec();
            m.clear(&carry);
            let k = rng.below(12);
            writes(&mut m, &mut rng, k);
            // The pause: the log, plus the carry, copied.
            let kvm = m.logged();
            let mut pfns = kvm.clone();
            if !drop_carry {
                pfns.extend_from_slice(&carry);
            }
            pfns.sort_unstable();
            pfns.dedup();
            let mut c = pool.pop_front().unwrap_or_default();
            t.prepare_staging(&mut c.bytes);
            c.runs = runs(&pfns);
            c.slots.clear();
            let staging = staging_mut(&mut c.bytes);
            staging.clear();
            for &p in &pfns {
                staging.extend_from_slice(&m.mem[p as usize * PAGE..(p as usize + 1) * PAGE]);
            }
            let at_pause = m.mem.clone();
            t.record_copy(pfns.len() as u64, 1.0);
            t.after_resume(&mut c, &kvm);
            // Hot pages stay set in the log: only carried pages are re-protected.
            for p in t.carry() {
                assert!(kvm.binary_search(p).is_ok(), "carry {p} was not logged");
            }
            queued.push_back((c, at_pause, epoch));
            // The sender: what goes on the wire is applied on the backup, which must then
            // equal guest memory at that epoch's pause.
            while queued.len() > depth || (epoch == 199 && !queued.is_empty()) {
                let Some((c, at_pause, e)) = queued.pop_front() else {
                    break;
                };
                for (gpa, bytes) in sent_pages(&c) {
                    backup[gpa as usize..gpa as usize + bytes.len()].copy_from_slice(bytes);
                }
                if backup != at_pause {
                    let bad = (0..n).find(|&p| {
                        backup[p * PAGE..(p + 1) * PAGE] != at_pause[p * PAGE..(p + 1) * PAGE]
                    });
                    return Some(format!("seed {seed} epoch {e}: page {bad:?} differs"));
                }
                if rng.below(2) == 0 {
                    pool.push_front(c);
                } else {
                    pool.push_back(c);
                }
            }
        }
        // Stagings are reused: beyond the pool's own, only a few set aside while shared.
        let allocated = t.stagings_allocated();
        assert!(
            allocated <= 4,
            "seed {seed}: {allocated} stagings allocated"
        );
        SHARED_STAGING_WANTED.fetch_add(allocated, std::sync::atomic::Ordering::Relaxed);
        None
    }

    /// How often the simulations wanted a staging that was still shared (so the property
    /// test also covers that path).
    static SHARED_STAGING_WANTED: std::sync::atomic::AtomicU64 =
        std::sync::atomic::AtomicU64::new(0);

    /// The runs an epoch sends, with their bytes (as `staged_send::send_staged` frames them).
    fn sent_pages(c: &CapturedEpoch) -> Vec<(u64, &[u8])> {
        let spans = crate::staged_send::spans(&c.runs, &c.slots, c.bytes.len()).unwrap();
        let mut out = Vec::new();
        for s in spans {
            let mut at = s.bytes.start;
            for &(gpa, n) in &c.runs[s.runs] {
                let len = n as usize * PAGE;
                out.push((gpa, &c.bytes[at..at + len]));
                at += len;
            }
        }
        out
    }

    #[test]
    fn backup_always_matches_guest_memory_at_the_pause() {
        let configs = [
            HotConfig::default(),
            HotConfig {
                enabled: true,
                max_tracked_pages: 5,
            },
            HotConfig {
                enabled: false,
                max_tracked_pages: 0,
            },
        ];
        for seed in 1..30u64 {
            for cfg in configs {
                // fault/copy ratios giving cool_after 0 (nothing hot), 1, 3 and the max.
                for fault in [0.5, 1.5, 3.5, 1e9] {
                    if let Some(e) = simulate(seed, cfg, fault, false) {
                        panic!("{e} ({cfg:?}, fault {fault})");
                    }
                }
            }
        }
        assert!(SHARED_STAGING_WANTED.load(std::sync::atomic::Ordering::Relaxed) > 0);
    }

    #[test]
    fn page_numbers_a_power_of_two_apart_spread_over_the_table() {
        use std::hash::BuildHasher;
        let h = BuildHasherDefault::<PfnHasher>::default();
        for stride in [1u64, 512, 1 << 16, 1 << 20] {
            let mut low: Vec<u64> = (0..256u64)
                .map(|k| h.hash_one(k * stride) & 0xffff)
                .collect();
            low.sort_unstable();
            low.dedup();
            assert!(
                low.len() > 240,
                "stride {stride}: {} distinct buckets of 256",
                low.len()
            );
        }
    }

    #[test]
    fn the_break_even_keeps_pages_hot_only_where_faults_cost_more_than_copies() {
        // Nested software KVM (write fault ~25 us as the guest pays it), copy 2 + compare 1.
        assert_eq!(cool_after_for(25.0, 2.0, 1.0), 8);
        // The same host under load: everything slower, the ratio decides.
        assert_eq!(cool_after_for(60.0, 6.0, 3.0), 6);
        // Hardware dirty logging (PML): a logged write costs well under a copy.
        assert_eq!(cool_after_for(0.5, 1.0, 0.5), 0);
        assert_eq!(cool_after_for(1.4, 1.0, 0.5), 0);
        assert_eq!(cool_after_for(1.5, 1.0, 0.5), 1);
        // Bounds and nonsense.
        assert_eq!(cool_after_for(1e6, 1.0, 1.0), MAX_COOL_AFTER);
        assert_eq!(cool_after_for(25.0, 0.0, 0.0), MAX_COOL_AFTER);
        assert_eq!(cool_after_for(0.0, 1.0, 1.0), 0);
        assert_eq!(cool_after_for(f64::NAN, 1.0, 1.0), 0);
        assert_eq!(cool_after_for(25.0, f64::INFINITY, 1.0), 0);
        assert_eq!(cool_after_for(-3.0, 1.0, 1.0), 0);
        // The tracker applies the rule to what it measured (copy recorded, compare unknown
        // yet: taken as equal to the copy).
        let mut t = DirtyTracker::new(HotConfig::default(), true, Some(25.0), Vec::new());
        assert_eq!(t.cool_after(), 0, "no copy measured yet: nothing hot");
        t.record_copy(100, 250.0);
        assert_eq!(t.cool_after(), 5);
        let off = HotConfig {
            enabled: false,
            ..HotConfig::default()
        };
        let mut t = DirtyTracker::new(off, true, Some(25.0), Vec::new());
        t.record_copy(100, 250.0);
        assert_eq!(t.cool_after(), 0, "policy off");
    }

    #[test]
    fn the_check_catches_a_missed_page() {
        // Without the carry, writes between the resume and the clear are lost: the
        // simulation must notice for some seed, or it proves nothing.
        let caught = (1..50u64).any(|s| simulate(s, HotConfig::default(), 3.5, true).is_some());
        assert!(caught);
    }

    #[test]
    fn hot_pages_stay_in_the_log_and_unchanged_pages_stay_off_the_wire() {
        // A fault so expensive that pages cool only after the longest streak.
        let mut t = DirtyTracker::new(HotConfig::default(), true, Some(1e12), Vec::new());
        let mut c = CapturedEpoch::default();
        let page = |v: u8| vec![v; PAGE];
        // Epoch 1: page 7 logged, first seen: sent, kept hot (not carried).
        t.record_copy(1, 1.0);
        c.runs = vec![(7 * PAGE_SIZE, 1)];
        c.bytes = Arc::new(page(1));
        t.after_resume(&mut c, &[7]);
        assert_eq!(c.runs, vec![(7 * PAGE_SIZE, 1)]);
        assert!(t.carry().is_empty());
        assert_eq!(t.stats().hot_pages, 1);
        assert_eq!(t.cool_after(), MAX_COOL_AFTER, "{:?}", t.stats());
        // Unchanged epochs: not sent; after `cool_after` of them, re-protected.
        let mut epochs = 0u32;
        loop {
            epochs += 1;
            c.runs = vec![(7 * PAGE_SIZE, 1)];
            c.bytes = Arc::new(page(1));
            let k_now = t.cool_after();
            t.after_resume(&mut c, &[7]);
            assert!(c.runs.is_empty() && sent_pages(&c).is_empty());
            if !t.carry().is_empty() {
                assert_eq!(epochs, k_now, "{:?}", t.stats());
                break;
            }
            assert!(epochs < k_now, "not cooled after {epochs} >= {k_now}");
        }
        assert_eq!(t.carry(), &[7]);
        assert_eq!(t.stats().cooled_pages, 1);
        assert_eq!(t.stats().unchanged_bytes, u64::from(epochs) * PAGE_SIZE);
        // Changed: sent.
        c.runs = vec![(7 * PAGE_SIZE, 1)];
        c.bytes = Arc::new(page(2));
        t.after_resume(&mut c, &[]);
        assert_eq!(sent_pages(&c), vec![(7 * PAGE_SIZE, &page(2)[..])]);
    }

    #[test]
    fn off_or_without_manual_protection_everything_is_sent_and_cleared() {
        for (cfg, manual) in [
            (
                HotConfig {
                    enabled: false,
                    ..HotConfig::default()
                },
                true,
            ),
            (HotConfig::default(), false),
        ] {
            let mut t = DirtyTracker::new(cfg, manual, Some(1e9), Vec::new());
            t.record_copy(1, 1.0);
            for _ in 0..3 {
                let mut c = CapturedEpoch {
                    runs: vec![(0, 2)],
                    bytes: Arc::new(vec![5; 2 * PAGE]),
                    ..CapturedEpoch::default()
                };
                t.after_resume(&mut c, &[0, 1]);
                assert_eq!(c.runs, vec![(0, 2)]);
                assert_eq!(t.carry(), &[0, 1]);
            }
            assert_eq!(t.stats().hot_pages, 0);
            assert_eq!(t.cool_after(), 0);
        }
    }
}
