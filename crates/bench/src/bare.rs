//! The bare cost of an epoch, measured in-process: a VM created here runs the test guest,
//! which dirties pages; with the vCPUs parked we time KVM_GET_DIRTY_LOG (plus, with manual
//! protection, KVM_CLEAR_DIRTY_LOG: together `take_guest_dirty_pages`) and the copy of the
//! same pages (`copy_runs`). Also the parts an epoch adds on top: the pause (kick until
//! parked), the vCPU/VM state capture and the resume.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ftvm_devices::{OutputSink, StreamId};
use ftvm_replication::dirty::{copy_runs, runs};
use ftvm_vmm::{BootSource, CpuProfile, KernelImage, Vm, VmConfig};
use serde_json::{json, Value};

use crate::util::{lock, Res};

/// Keeps the first bytes the guest prints, to see `ready`.
#[derive(Debug, Default)]
struct Console(Mutex<Vec<u8>>);

impl OutputSink for Console {
    fn emit(&self, _stream: StreamId, bytes: &[u8]) {
        let mut b = lock(&self.0);
        if b.len() < 65536 {
            b.extend_from_slice(bytes);
        }
    }
}

impl Console {
    fn has(&self, s: &str) -> bool {
        String::from_utf8_lossy(&lock(&self.0)).contains(s)
    }
}

/// One parked capture.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Dirty pages found.
    pub pages: u64,
    /// KVM_GET_DIRTY_LOG (peek), microseconds.
    pub peek_us: f64,
    /// KVM_CLEAR_DIRTY_LOG (0 without manual protection).
    pub clear_us: f64,
    /// Copy of the dirty pages (`copy_runs`, vm-memory's volatile copy).
    pub copy_us: f64,
    /// The same pages with a plain `memcpy` from the host mapping, for comparison.
    pub memcpy_us: f64,
    /// Pause: request until every vCPU parked.
    pub pause_us: f64,
    /// `save_state` (vCPU + VM + device state).
    pub state_us: f64,
    /// Resume.
    pub resume_us: f64,
}

impl Sample {
    /// What the brief calls the bare cost: `take_guest_dirty_pages` + `copy_runs`.
    pub fn bare_us(&self) -> f64 {
        self.peek_us + self.clear_us + self.copy_us
    }

    pub fn json(&self) -> Value {
        json!({
            "pages": self.pages, "peek_us": self.peek_us, "clear_us": self.clear_us,
            "copy_us": self.copy_us, "memcpy_us": self.memcpy_us, "bare_us": self.bare_us(), "pause_us": self.pause_us,
            "state_us": self.state_us, "resume_us": self.resume_us,
        })
    }
}

/// An in-process VM (256 MiB, one vCPU) running the test guest with `pages=GUEST_PAGES`
/// (printing only every 10^9th iteration), its console kept in the returned [`Console`].
fn start_testguest(guest_pages: u32) -> Res<(Vm, Arc<Console>)> {
    let console = Arc::new(Console::default());
    let vm = Vm::create(VmConfig {
        memory: 256 << 20,
        cpus: 1,
        cpu_profile: CpuProfile::detect(),
        output: console.clone(),
        net: Vec::new(),
        disks: Vec::new(),
        syscall_fixup: false,
    })
    .map_err(|e| format!("creating the in-process VM: {e}"))?;
    let source = BootSource {
        kernel: KernelImage {
            name: "@testguest".into(),
            bytes: ftvm_testguest::ELF.to_vec(),
        },
        cmdline: format!("pages={guest_pages} every=1000000000"),
        initrd: None,
    };
    vm.boot(&source)
        .map_err(|e| format!("booting the in-process VM: {e}"))?;
    vm.start(false)
        .map_err(|e| format!("starting the in-process VM: {e}"))?;
    Ok((vm, console))
}

/// Boot the test guest in-process with `pages=`, and take `per_target` samples for each
/// target dirty-page count, adjusting the interval between captures towards the target.
pub fn measure(guest_pages: u32, targets: &[u64], per_target: usize) -> Res<(Vec<Sample>, bool)> {
    let (vm, console) = start_testguest(guest_pages)?;
    let manual = vm.manual_dirty_protect();
    let result = sample_loop(&vm, &console, targets, per_target);
    vm.shutdown();
    result.map(|s| (s, manual))
}

fn sample_loop(vm: &Vm, console: &Console, targets: &[u64], per_target: usize) -> Res<Vec<Sample>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !console.has("ftvm-testguest ready") {
        if console.has("error") || console.has("panic") {
            return Err(format!(
                "in-process guest failed: {}",
                String::from_utf8_lossy(&lock(&console.0))
            ));
        }
        if Instant::now() > deadline {
            return Err("in-process guest not ready within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    vm.set_dirty_logging(true)
        .map_err(|e| format!("dirty logging on: {e}"))?;
    // Staging buffer faulted in once, as the primary's pooled buffers are.
    let mut buf = vec![1u8; 16384 * 4096];
    let mut buf2 = vec![1u8; 16384 * 4096];
    let mut out = Vec::new();
    let mut interval = Duration::from_millis(5);
    // First capture: clears the log of everything written before logging started.
    one(vm, &mut buf, &mut buf2)?;
    for &target in targets {
        for i in 0..per_target + 2 {
            std::thread::sleep(interval);
            let s = one(vm, &mut buf, &mut buf2)?;
            // The first two samples of a target only steer the interval.
            if i >= 2 {
                out.push(s);
            }
            let ratio = (target as f64 / (s.pages.max(1)) as f64).clamp(0.25, 4.0);
            interval = interval
                .mul_f64(ratio)
                .clamp(Duration::from_micros(100), Duration::from_secs(2));
        }
    }
    Ok(out)
}

fn one(vm: &Vm, buf: &mut Vec<u8>, buf2: &mut Vec<u8>) -> Res<Sample> {
    let t = Instant::now();
    vm.pause().map_err(|e| format!("pause: {e}"))?;
    let pause_us = us(t);
    let t = Instant::now();
    let pfns = vm
        .peek_guest_dirty_pages()
        .map_err(|e| format!("KVM_GET_DIRTY_LOG: {e}"))?;
    let peek_us = us(t);
    let t = Instant::now();
    vm.clear_guest_dirty_pages(&pfns)
        .map_err(|e| format!("KVM_CLEAR_DIRTY_LOG: {e}"))?;
    let clear_us = us(t);
    let t = Instant::now();
    let r = runs(&pfns);
    copy_runs(vm, &r, buf).map_err(|e| format!("copy_runs: {e}"))?;
    let copy_us = us(t);
    // A busier guest can dirty more than the buffer was first sized for (its working set
    // plus the rest of RAM it writes): grow it, faulted in, outside the timed copy.
    let need = pfns.len() * 4096;
    if buf2.len() < need {
        buf2.resize(need, 1);
    }
    let t = Instant::now();
    memcpy_runs(vm, &r, buf2)?;
    let memcpy_us = us(t);
    let t = Instant::now();
    let state = vm.save_state().map_err(|e| format!("save_state: {e}"));
    let state_us = us(t);
    let t = Instant::now();
    vm.resume().map_err(|e| format!("resume: {e}"))?;
    let resume_us = us(t);
    state?;
    Ok(Sample {
        pages: pfns.len() as u64,
        peek_us,
        clear_us,
        copy_us,
        memcpy_us,
        pause_us,
        state_us,
        resume_us,
    })
}

/// Copy `runs` into `dst` with `ptr::copy_nonoverlapping` (a plain memcpy).
fn memcpy_runs(vm: &Vm, runs: &[(u64, u32)], dst: &mut [u8]) -> Res<()> {
    use vm_memory::{GuestAddress, GuestMemoryBackend};
    let mut off = 0usize;
    for &(gpa, n) in runs {
        let len = n as usize * 4096;
        if off + len > dst.len() {
            return Err("memcpy buffer too small".into());
        }
        let vs = vm
            .memory()
            .get_slice(GuestAddress(gpa), len)
            .map_err(|e| format!("guest range {gpa:#x}+{len}: {e}"))?;
        let src = vs.ptr_guard();
        // SAFETY: `get_slice` checked that [gpa, gpa+len) lies in one mapped region, `dst`
        // has room for `len` bytes at `off` (checked above), and the two do not overlap
        // (guest memory is a separate mmap). The VM is paused, so nothing writes the source.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), dst[off..].as_mut_ptr(), len);
        }
        off += len;
    }
    Ok(())
}

fn us(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

/// What the VMM does to the running guest in a dirty-log mode (see [`dirty_log_modes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Dirty logging off, nothing else.
    Off,
    /// Logging on, the log never read.
    LogOn,
    /// Pause + resume every period, logging off.
    PauseOnly,
    /// Logging on; every period: pause, KVM_GET_DIRTY_LOG only (no clear), resume.
    Peek,
    /// Logging on; every period: pause, GET + CLEAR_DIRTY_LOG (re-protect), resume.
    PeekClear,
    /// Logging on; every period: pause, GET, resume, then CLEAR while running (what the
    /// primary does).
    ClearRunning,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "dirty logging off",
            Mode::LogOn => "logging on, log never read",
            Mode::PauseOnly => "logging off, pause+resume every period",
            Mode::Peek => "logging on, GET_DIRTY_LOG every period (no clear)",
            Mode::PeekClear => "logging on, GET+CLEAR_DIRTY_LOG every period, while paused",
            Mode::ClearRunning => {
                "logging on, GET while paused + CLEAR after resume every period (as the primary)"
            }
        }
    }
}

/// Guest iteration rate (from the guest's `ftvm_progress` counter) in each mode, with the
/// VMM's actions every `period`. One VM, modes in order.
pub fn dirty_log_modes(
    guest_pages: u32,
    modes: &[Mode],
    period: Duration,
    window: Duration,
) -> Res<Vec<(Mode, f64, u64)>> {
    use vm_memory::{Bytes, GuestAddress};
    let progress = ftvm_testguest::symbol(ftvm_testguest::PROGRESS_SYMBOL)
        .ok_or("the test guest has no ftvm_progress symbol")?;
    let (vm, console) = start_testguest(guest_pages)?;
    let run = || -> Res<Vec<(Mode, f64, u64)>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !console.has("ftvm-testguest ready") {
            if Instant::now() > deadline {
                return Err("in-process guest not ready within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let read = || -> Res<u64> {
            vm.memory()
                .read_obj::<u64>(GuestAddress(progress))
                .map_err(|e| format!("reading ftvm_progress: {e}"))
        };
        let mut out = Vec::new();
        for &mode in modes {
            let logging = !matches!(mode, Mode::Off | Mode::PauseOnly);
            vm.set_dirty_logging(logging)
                .map_err(|e| format!("dirty logging {logging}: {e}"))?;
            if logging {
                let _ = vm.take_guest_dirty_pages();
            }
            // Let the guest settle in the new mode first.
            std::thread::sleep(Duration::from_millis(300));
            let (t0, n0) = (Instant::now(), read()?);
            let mut periods = 0;
            while t0.elapsed() < window {
                std::thread::sleep(period);
                if matches!(mode, Mode::Off | Mode::LogOn) {
                    continue;
                }
                periods += 1;
                vm.pause().map_err(|e| format!("pause: {e}"))?;
                let mut to_clear = Vec::new();
                match mode {
                    Mode::Peek | Mode::ClearRunning => {
                        to_clear = vm
                            .peek_guest_dirty_pages()
                            .map_err(|e| format!("GET_DIRTY_LOG: {e}"))?;
                    }
                    Mode::PeekClear => {
                        vm.take_guest_dirty_pages()
                            .map_err(|e| format!("GET+CLEAR_DIRTY_LOG: {e}"))?;
                    }
                    _ => {}
                }
                vm.resume().map_err(|e| format!("resume: {e}"))?;
                if mode == Mode::ClearRunning {
                    vm.clear_guest_dirty_pages(&to_clear)
                        .map_err(|e| format!("CLEAR_DIRTY_LOG: {e}"))?;
                }
            }
            let (t1, n1) = (Instant::now(), read()?);
            out.push((
                mode,
                n1.saturating_sub(n0) as f64 / (t1 - t0).as_secs_f64(),
                periods,
            ));
        }
        Ok(out)
    };
    let r = run();
    vm.shutdown();
    r
}
