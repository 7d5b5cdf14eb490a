//! Debugging aid: periodic samples of every vCPU's state, for guests that hang inside KVM
//! without exiting to ftvm (e.g. a Linux AP start).
//!
//! With `FTVM_DEBUG_VCPU_SAMPLE=<seconds>` in the environment, a thread kicks every vCPU
//! thread out of KVM_RUN (the same signal as a pause) every `<seconds>`; each vCPU thread
//! then prints one line to stderr from its own thread (KVM_GET_REGS/SREGS/MP_STATE must be
//! called there) and runs on. Nothing is paused and no state is changed. Off unless the
//! variable is set.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvm_ioctls::VcpuFd;

use crate::vcpu::{kick_signal, Control};

/// The environment variable that turns sampling on (interval in seconds, fractions allowed).
pub const SAMPLE_ENV: &str = "FTVM_DEBUG_VCPU_SAMPLE";

/// Incremented by the sampler before each round of kicks.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The sampling interval, if `FTVM_DEBUG_VCPU_SAMPLE` holds a positive number of seconds.
pub fn interval_from_env() -> Option<Duration> {
    let value = std::env::var(SAMPLE_ENV).ok()?;
    let interval = parse_interval(&value);
    if interval.is_none() {
        eprintln!("ftvm: {SAMPLE_ENV}={value:?} ignored: not a positive number of seconds");
    }
    interval
}

fn parse_interval(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs > 0.0 && secs <= 86_400.0).then(|| Duration::from_secs_f64(secs))
}

/// Start a new round: the vCPU threads kicked after this print a sample.
pub fn request() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Start the sampling thread: every `interval`, a new round and a kick of each of
/// `threads` (the vCPU threads' pthreads), until the VM's threads are told to stop.
pub fn spawn(control: Arc<Control>, threads: Vec<libc::pthread_t>, interval: Duration) {
    let spawned = std::thread::Builder::new()
        .name("vcpu-sample".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let st = control.lock();
            if st.stop {
                return;
            }
            request();
            for &thread in &threads {
                // SAFETY: vCPU threads end only after `stop` is set, and we checked it
                // under the control lock, which we still hold, so none of them has ended
                // or been joined: each pthread_t is valid. The signal's handler is
                // installed before any vCPU thread starts.
                unsafe {
                    libc::pthread_kill(thread, kick_signal());
                }
            }
            drop(st);
        });
    if let Err(e) = spawned {
        eprintln!("ftvm: {SAMPLE_ENV}: cannot start the sampling thread: {e}");
    }
}

/// Per-vCPU-thread record of the last round answered.
#[derive(Debug, Default)]
pub struct Sampler {
    seen: u64,
}

impl Sampler {
    /// After an interrupted KVM_RUN: print the state of `fd` if a round is pending.
    pub fn on_interrupt(&mut self, fd: &VcpuFd, index: u32, exits: u64) {
        let generation = GENERATION.load(Ordering::Relaxed);
        if generation == self.seen {
            return;
        }
        self.seen = generation;
        eprintln!("ftvm: sample #{generation} {}", describe(fd, index, exits));
    }
}

/// One line: MP state, the main registers, the segment and control registers.
pub fn describe(fd: &VcpuFd, index: u32, exits: u64) -> String {
    let mp = match fd.get_mp_state() {
        Ok(m) => mp_state_name(m.mp_state).to_string(),
        Err(e) => format!("unreadable ({e})"),
    };
    let mut out = format!("vCPU {index}: exits={exits} mp_state={mp}");
    match (fd.get_regs(), fd.get_sregs()) {
        (Ok(r), Ok(s)) => out.push_str(&format!(
            " rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rcx={:#x} rdx={:#x} cs={:#x} base={:#x} (dpl {} long {} db {}) cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} apic_base={:#x}",
            r.rip, r.rsp, r.rflags, r.rax, r.rcx, r.rdx, s.cs.selector, s.cs.base, s.cs.dpl,
            s.cs.l, s.cs.db, s.cr0, s.cr3, s.cr4, s.efer, s.apic_base
        )),
        (Err(e), _) | (_, Err(e)) => out.push_str(&format!(" (registers unreadable: {e})")),
    }
    out
}

fn mp_state_name(state: u32) -> &'static str {
    match state {
        kvm_bindings::KVM_MP_STATE_RUNNABLE => "RUNNABLE",
        kvm_bindings::KVM_MP_STATE_UNINITIALIZED => "UNINITIALIZED",
        kvm_bindings::KVM_MP_STATE_INIT_RECEIVED => "INIT_RECEIVED",
        kvm_bindings::KVM_MP_STATE_HALTED => "HALTED",
        kvm_bindings::KVM_MP_STATE_SIPI_RECEIVED => "SIPI_RECEIVED",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mp_state_names() {
        assert_eq!(
            mp_state_name(kvm_bindings::KVM_MP_STATE_INIT_RECEIVED),
            "INIT_RECEIVED"
        );
        assert_eq!(mp_state_name(99), "other");
    }

    #[test]
    fn interval_parsing() {
        assert_eq!(parse_interval("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_interval(" 0.5 "), Some(Duration::from_millis(500)));
        for bad in ["0", "-1", "NaN", "inf", "1e9", "", "5s"] {
            assert_eq!(parse_interval(bad), None, "{bad:?}");
        }
    }
}
