//! Time for the TCP stack: the TSC (readable in ring 3), its frequency from CPUID
//! (hypervisor timing leaf 0x40000010, else leaf 0x15, else 0x16, else 2 GHz assumed).
//! Only TCP timers (retransmission, delayed ACK, TIME-WAIT) depend on it.

use core::arch::x86_64::{__cpuid, _rdtsc};

/// TSC ticks per millisecond.
pub fn tsc_khz() -> u64 {
    // CPUID is always available on x86-64 (it exits to the hypervisor once).
    let hv = __cpuid(0x4000_0000);
    if hv.eax >= 0x4000_0010 {
        let t = __cpuid(0x4000_0010);
        if t.eax != 0 {
            return u64::from(t.eax);
        }
    }
    let max = __cpuid(0).eax;
    if max >= 0x15 {
        let l = __cpuid(0x15);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax) / 1000;
        }
    }
    if max >= 0x16 {
        let l = __cpuid(0x16);
        if l.eax & 0xffff != 0 {
            return u64::from(l.eax & 0xffff) * 1000;
        }
    }
    2_000_000
}

/// A millisecond clock that never goes backwards, even if the TSC does (a VM restored
/// on another host): it adds up forward TSC steps only.
pub struct Clock {
    khz: u64,
    last_tsc: u64,
    ticks: u64,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            khz: tsc_khz().max(1),
            // SAFETY: rdtsc is allowed in ring 3 (CR4.TSD is clear).
            last_tsc: unsafe { _rdtsc() },
            ticks: 0,
        }
    }

    /// Milliseconds since `new`.
    pub fn now_ms(&mut self) -> i64 {
        // SAFETY: as in `new`.
        let t = unsafe { _rdtsc() };
        let d = t.wrapping_sub(self.last_tsc);
        // A backward jump shows up as a huge unsigned step: ignore it.
        if d < (1 << 62) {
            self.ticks += d;
        }
        self.last_tsc = t;
        (self.ticks / self.khz) as i64
    }
}
