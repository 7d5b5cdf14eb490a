//! Measure, on the host ftvm runs on, what a dirty-log write fault costs a guest.
//!
//! Adaptive dirty tracking (ftvm-replication's `hot` module) weighs this cost against the
//! cost of copying and comparing a page every epoch; it must be measured here, not assumed:
//! on nested software-KVM hosts a write to a write-protected page costs tens of
//! microseconds, with hardware dirty logging (PML) on bare metal about one.
//!
//! How: a throw-away VM with one vCPU runs, in 64-bit mode, a loop that writes one byte to
//! each of `pages` consecutive 4 KiB pages and counts its passes in guest memory, with
//! dirty logging on and the pages left writable. The host watches the pass rate for a
//! window, then for a second window re-protects the pages (KVM_CLEAR_DIRTY_LOG, or reading
//! the log without manual protection) every `period`, as the epoch engine does, so that the
//! next write to each faults. The guest time lost in the second window, divided by the
//! faults (pages x re-protections), is the fault cost. It is measured with the guest
//! running, as the epoch engine sees it: a VM exit per pass would hide it on hosts where
//! every entry rebuilds the guest's mappings. Plain and re-protecting windows alternate
//! [`ROUNDS`] times and the median round counts, so a burst of host load in one window
//! does not decide.
//!
//! The time lost is **wall-clock** time, the way the guest pays it, not the vCPU thread's
//! CPU time. They differ a lot on a busy nested host: there the thread's CPU time per
//! fault is ~5-9 us, but each fault also costs the guest a wait for a CPU again, and the
//! guest loses ~20-35 us of progress per fault (the same figure the test guest loses
//! under protection, bench group `dirtylog`). The baseline (each plain window's time per
//! pass) is measured at the same load as its protected window, so a host that gives the
//! vCPU only a share of a CPU inflates the baseline alike. The epoch engine's own costs
//! (copy and compare) are wall-clock times too, so the policy compares like with like.
//! The CPU figure is reported as well ([`FaultCost::fault_cpu_us`]).

use std::time::{Duration, Instant};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress};

use crate::arch::{gdt, regs};
use crate::dirty;
use crate::error::{kvm_err, VmmError};
use crate::layout::{PDPT_ADDR, PD_ADDR, PML4_ADDR};
use crate::memory::{self, GuestMemory};

/// Guest memory of the calibration VM. (Pages spread over a VM as large as a protected
/// one were tried too: on nested PVM hosts every write to them then costs ~100 us even
/// without re-protection, which says nothing about the re-protection cost.)
const MEM: u64 = 8 << 20;
/// Where the loop's code is placed.
const CODE: u64 = 0x10_0000;
/// First page written.
const FIRST_PAGE: u64 = 4 << 20;

/// ```text
/// outer: mov rdi, r8          ; first page
///        mov rcx, r9          ; pages
/// inner: mov byte [rdi], 1
///        add rdi, r12         ; stride
///        dec rcx
///        jnz inner
///        inc qword [r10]      ; passes
///        cmp byte [r11], 0    ; stop flag
///        je outer
///        out 0x80, al         ; done (ring 3 with IOPL 3)
/// ```
const LOOP: [u8; 28] = [
    0x4c, 0x89, 0xc7, // mov rdi, r8
    0x4c, 0x89, 0xc9, // mov rcx, r9
    0xc6, 0x07, 0x01, // mov byte [rdi], 1
    0x4c, 0x01, 0xe7, // add rdi, r12
    0x48, 0xff, 0xc9, // dec rcx
    0x75, 0xf5, // jnz inner
    0x49, 0xff, 0x02, // inc qword [r10]
    0x41, 0x80, 0x3b, 0x00, // cmp byte [r11], 0
    0x74, 0xe6, // je outer
    0xe6, 0x80, // out 0x80, al
];
/// The pass counter (u64).
const COUNTER: u64 = CODE + 0x1000;
/// The stop flag (u8).
const STOP: u64 = CODE + 0x1008;

/// What one calibration found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultCost {
    /// Wall-clock time the guest loses per write to a re-protected page, microseconds:
    /// what the guest pays, including the time its vCPU thread waits for a CPU again
    /// after the fault (on a busy host a fault that leaves the guest costs a scheduling
    /// round trip, not only its CPU time).
    pub fault_us: f64,
    /// The vCPU thread's CPU time per fault, microseconds (a lower bound of `fault_us`).
    pub fault_cpu_us: f64,
    /// The loop's cost per page write with the pages writable, microseconds.
    pub plain_us: f64,
    /// Re-protections done while measuring.
    pub reprotections: u64,
    /// Whether KVM's manual dirty-log protection was on for the measurement.
    pub manual_protect: bool,
}

/// Measure the dirty-log write-fault cost with `pages` consecutive pages (8..=1024),
/// re-protected every `period` for `window` in all (and as long without), in two halves.
pub fn measure_fault_cost(
    pages: u64,
    period: Duration,
    window: Duration,
) -> Result<FaultCost, VmmError> {
    let mem_size = MEM;
    let pages = pages.clamp(8, (MEM - FIRST_PAGE) / 4096);
    // Declared before the VM fd so that it is dropped after it.
    let mem = memory::create(mem_size)?;
    let kvm = Kvm::new().map_err(VmmError::KvmUnavailable)?;
    let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    let manual = dirty::enable_manual_protect(&fd);
    gdt::write_tables(&mem)?;
    write_user_page_tables(&mem, mem_size)?;
    mem.write_slice(&LOOP, GuestAddress(CODE))
        .map_err(|e| VmmError::MemoryAlloc(format!("calibration code: {e}")))?;
    set_region(&fd, &mem, true)?;
    let mut vcpu = fd.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
    regs::set_long_mode(&vcpu)?;
    // Ring 3: on some hosts (PVM) guest ring-0 code runs far slower than ring 3, and a
    // workload runs in ring 3 anyway.
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    for seg in [
        &mut sregs.cs,
        &mut sregs.ss,
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
    ] {
        seg.dpl = 3;
        seg.selector |= 3;
    }
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    let mut r = regs::boot_regs(CODE, 0, 0);
    r.rflags = 0x3002; // IOPL 3: the final `out` exits to the VMM
    r.r8 = FIRST_PAGE;
    r.r9 = pages;
    r.r10 = COUNTER;
    r.r11 = STOP;
    r.r12 = 4096;
    vcpu.set_regs(&r).map_err(kvm_err("KVM_SET_REGS"))?;

    let npages = (mem_size / 4096) as u32;
    let passes = || mem.read_obj::<u64>(GuestAddress(COUNTER)).unwrap_or(0);
    let mut reprotections = 0u64;
    let result = std::thread::scope(|s| {
        let (clock_tx, clock_rx) = std::sync::mpsc::channel();
        let runner = s.spawn(move || {
            // With `--cpu-affinity`, unpinned: pinned to the replication CPUs, or to the
            // vCPUs' next to the running guest, it measured 0-1.4 us per fault (the
            // windows it compares were distorted by the thread sharing its CPU).
            crate::affinity::apply_to_calibration_thread();
            let _ = clock_tx.send(thread_cpu_clock());
            run_until_halt(&mut vcpu)
        });
        let measured = (|| -> Result<Vec<Round>, VmmError> {
            let clock = clock_rx
                .recv()
                .map_err(|_| VmmError::BootSetup {
                    what: "dirty-log calibration VM",
                    reason: "the vCPU thread ended early".into(),
                })?
                .ok_or_else(|| VmmError::BootSetup {
                    what: "dirty-log calibration VM",
                    reason: "no CPU clock for the vCPU thread".into(),
                })?;
            let origin = Instant::now();
            let sample = || Sample {
                passes: passes(),
                wall_us: origin.elapsed().as_secs_f64() * 1e6,
                cpu_us: cpu_time_us(clock),
            };
            // Warm up (every page mapped and dirty): first touches allocate host memory
            // (2 MiB at a time with huge pages), so wait for two whole passes, within
            // reason.
            let warm = Instant::now();
            while passes() < 2 && warm.elapsed() < 4 * window {
                std::thread::sleep(period / 4);
            }
            std::thread::sleep(period);
            // Alternate plain and re-protecting windows, so that a change in host load
            // hits both alike; each round gives one estimate.
            let phase = window / (2 * ROUNDS);
            let mut all = vec![u64::MAX; (npages as usize).div_ceil(64)];
            let mut rounds = Vec::with_capacity(ROUNDS as usize);
            for _ in 0..ROUNDS {
                let a = sample();
                std::thread::sleep(phase);
                let b = sample();
                let start = Instant::now();
                let mut n = 0u64;
                while start.elapsed() < phase {
                    let _ = fd
                        .get_dirty_log(0, mem_size as usize)
                        .map_err(kvm_err("KVM_GET_DIRTY_LOG"))?;
                    if manual {
                        dirty::clear_dirty_log(&fd, 0, npages, &mut all)?;
                    }
                    n += 1;
                    std::thread::sleep(period);
                }
                // The last re-protection's faults happen in the next pass: let it run.
                std::thread::sleep(period);
                let c = sample();
                reprotections += n;
                rounds.push(Round {
                    plain: (a, b),
                    protected: (b, c),
                    faults: n * pages,
                });
            }
            Ok(rounds)
        })();
        let _ = mem.write_obj(1u8, GuestAddress(STOP));
        let ran = runner.join();
        let rounds = measured?;
        match ran {
            Ok(r) => r?,
            Err(_) => {
                return Err(VmmError::BootSetup {
                    what: "dirty-log calibration VM",
                    reason: "the vCPU thread panicked".into(),
                })
            }
        }
        Ok(rounds)
    });
    let rounds = result?;
    let wall: Vec<f64> = rounds.iter().map(|r| r.lost(|s| s.wall_us)).collect();
    let cpu: Vec<f64> = rounds.iter().map(|r| r.lost(|s| s.cpu_us)).collect();
    let plain_us = median(
        rounds
            .iter()
            .map(|r| {
                let (a, b) = r.plain;
                (b.cpu_us - a.cpu_us) / ((b.passes - a.passes).max(1) * pages) as f64
            })
            .collect(),
    );
    Ok(FaultCost {
        fault_us: median(wall),
        fault_cpu_us: median(cpu),
        plain_us,
        reprotections,
        manual_protect: manual,
    })
}

/// Plain/protected windows alternate this many times; the result is the median round.
const ROUNDS: u32 = 3;

#[derive(Debug, Clone, Copy)]
struct Sample {
    passes: u64,
    wall_us: f64,
    cpu_us: f64,
}

/// One plain window and the protected window right after it.
#[derive(Debug, Clone, Copy)]
struct Round {
    plain: (Sample, Sample),
    protected: (Sample, Sample),
    faults: u64,
}

impl Round {
    /// Time (on clock `t`) the guest lost per fault in the protected window: the window's
    /// time minus what its passes took in the plain window just before.
    fn lost(&self, t: impl Fn(&Sample) -> f64) -> f64 {
        let (a, b) = self.plain;
        let (c, d) = self.protected;
        let per_pass = (t(&b) - t(&a)) / (b.passes - a.passes).max(1) as f64;
        let lost = (t(&d) - t(&c)) - (d.passes - c.passes) as f64 * per_pass;
        lost.max(0.0) / self.faults.max(1) as f64
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn set_region(fd: &VmFd, mem: &GuestMemory, log: bool) -> Result<(), VmmError> {
    for (slot, region) in vm_memory::GuestMemoryBackend::iter(mem).enumerate() {
        let host = memory::region_host_addr(region)?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: vm_memory::GuestMemoryRegion::start_addr(region).0,
            memory_size: vm_memory::GuestMemoryRegion::len(region),
            userspace_addr: host as u64,
            flags: if log { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
        };
        // SAFETY: the region is a live anonymous mapping owned by `mem`, which outlives the
        // VM fd (`measure_fault_cost` declares `mem` before `fd`, so drops it after).
        unsafe { fd.set_user_memory_region(r) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// Page tables identity-mapping the calibration VM's memory with user-accessible 2 MiB
/// pages.
fn write_user_page_tables(mem: &GuestMemory, mem_size: u64) -> Result<(), VmmError> {
    const PRESENT_RW_USER: u64 = 0x7;
    const HUGE: u64 = 0x80;
    let w = |v: u64, at: u64| {
        mem.write_obj(v, GuestAddress(at))
            .map_err(|e| VmmError::MemoryAlloc(format!("calibration page tables: {e}")))
    };
    w(PDPT_ADDR | PRESENT_RW_USER, PML4_ADDR)?;
    w(PD_ADDR | PRESENT_RW_USER, PDPT_ADDR)?;
    for i in 0..mem_size.div_ceil(2 << 20) {
        w((i << 21) | PRESENT_RW_USER | HUGE, PD_ADDR + 8 * i)?;
    }
    Ok(())
}

/// The calling thread's CPU-time clock.
fn thread_cpu_clock() -> Option<libc::clockid_t> {
    let mut id: libc::clockid_t = 0;
    // SAFETY: pthread_self() is the calling thread, alive during the call; `id` is a valid
    // out-pointer.
    let r = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
    (r == 0).then_some(id)
}

/// Microseconds of CPU time on `clock` (0 if it cannot be read, e.g. the thread ended).
fn cpu_time_us(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; an invalid clock only makes the call fail.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

/// Run the vCPU until the guest halts (it does once the stop flag is set).
fn run_until_halt(vcpu: &mut VcpuFd) -> Result<(), VmmError> {
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(0x80, _)) => return Ok(()),
            Ok(other) => {
                return Err(VmmError::BootSetup {
                    what: "dirty-log calibration VM",
                    reason: format!("unexpected exit {other:?}"),
                })
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => {
                return Err(VmmError::Kvm {
                    op: "KVM_RUN (calibration)",
                    source: e,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_cost_is_measured_on_this_host() {
        if !std::path::Path::new("/dev/kvm").exists() {
            eprintln!("SKIPPED: /dev/kvm missing");
            return;
        }
        let n: u64 = std::env::var("CP")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256);
        let c = measure_fault_cost(n, Duration::from_millis(10), Duration::from_millis(200))
            .expect("calibration runs");
        eprintln!("{c:?}");
        assert!(c.fault_us >= 0.0 && c.fault_cpu_us >= 0.0, "{c:?}");
        assert!(c.plain_us > 0.0 && c.plain_us.is_finite(), "{c:?}");
        assert!(c.reprotections > 0, "{c:?}");
        // A write-protected page cannot be cheaper than a writable one: if the pages were
        // never write-protected (the measurement broken), the vCPU would spend no extra
        // CPU time per write (well under 1 us). The wall-clock figure alone can come out
        // as zero on a loaded host (its baseline window was slowed more than the
        // protected one), so the CPU figure is the one that proves the faults happened.
        assert!(c.fault_cpu_us > 1.0 || c.fault_us > 0.0, "{c:?}");
    }
}
