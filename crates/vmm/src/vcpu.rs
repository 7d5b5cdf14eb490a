//! vCPU threads: the run loop, exit handling, and the kick that parks them.
//!
//! Pausing: the controller sets `pause` under the control lock, then sends every vCPU
//! thread [`kick_signal`]. The handler sets `immediate_exit` in that thread's `kvm_run`, so
//! KVM_RUN returns EINTR at once whether the signal lands before or during KVM_RUN. The
//! thread then sees `pause`, counts itself parked and waits. While parked it holds no lock
//! on its `VcpuFd`, so the controller can read and write the vCPU's state.

use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;

use ftvm_devices::bus::lock;
use ftvm_devices::{DeviceAction, MmioBus, PortBus};
use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::exits;

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: `run` is this thread's own kvm_run mapping, set by the vCPU thread before
        // it first runs and valid while the thread lives (the VcpuFd outlives its thread's
        // run loop). A volatile byte store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Install the kick handler (once per process).
pub fn install_kick_handler() -> Result<(), String> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| format!("cannot install the vCPU kick signal handler: {e}"));
    });
    result
}

/// Shared pause/stop control of all vCPUs.
#[derive(Debug, Default)]
pub struct Control {
    state: Mutex<ControlState>,
    cond: Condvar,
}

/// What the vCPUs are told and how many are parked.
#[derive(Debug, Default)]
pub struct ControlState {
    /// vCPUs must park.
    pub pause: bool,
    /// vCPUs must park, independently of `pause` (the fence cannot be proven held): a
    /// resume does not let them run while this is set.
    pub hold: bool,
    /// vCPUs must end their threads.
    pub stop: bool,
    /// vCPUs now parked.
    pub parked: u32,
}

impl Control {
    /// Lock the control state.
    pub fn lock(&self) -> MutexGuard<'_, ControlState> {
        lock(&self.state)
    }
    /// Wake every waiter.
    pub fn notify(&self) {
        self.cond.notify_all();
    }
    /// Wait for a change, at most `timeout`.
    pub fn wait_timeout<'a>(
        &self,
        guard: MutexGuard<'a, ControlState>,
        timeout: std::time::Duration,
    ) -> MutexGuard<'a, ControlState> {
        match self.cond.wait_timeout(guard, timeout) {
            Ok((g, _)) => g,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }
    fn wait<'a>(&self, guard: MutexGuard<'a, ControlState>) -> MutexGuard<'a, ControlState> {
        self.cond
            .wait(guard)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Counters of one vCPU.
#[derive(Debug, Default)]
pub struct VcpuStats {
    /// All exits to userspace.
    pub exits: AtomicU64,
    /// Port I/O exits.
    pub io_exits: AtomicU64,
    /// Exits caused by kicks.
    pub kicks: AtomicU64,
    /// MMIO exits.
    pub mmio_exits: AtomicU64,
}

/// Why the VM stopped running, reported by a vCPU thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest asked to end with this code (debug-exit port, reset, power-off).
    Exit(u32),
    /// The guest crashed; the report says how.
    Crash(String),
    /// The VM continues elsewhere (migrated away, or handed to a backup); the string says
    /// where. This process ends with code 0.
    Handoff(String),
}

/// Everything a vCPU thread needs.
#[derive(Debug)]
pub struct VcpuContext {
    /// vCPU index.
    pub index: u32,
    /// The vCPU, locked by the thread while it runs.
    pub fd: Arc<Mutex<VcpuFd>>,
    /// Pause/stop.
    pub control: Arc<Control>,
    /// Port I/O devices.
    pub bus: PortBus,
    /// MMIO devices (virtio-mmio slots).
    pub mmio: MmioBus,
    /// Counters.
    pub stats: Arc<VcpuStats>,
    /// Where exit events go.
    pub events: Sender<VmEvent>,
    /// Completion of ring-3 system calls the host leaves half done (`--cpu-fixups syscall`).
    pub syscall_fixup: Option<crate::syscall_fixup::SyscallFixup>,
}

/// A running vCPU thread.
#[derive(Debug)]
pub struct VcpuThread {
    handle: JoinHandle<()>,
}

impl VcpuThread {
    /// Start the run loop of `ctx` on a new thread.
    pub fn spawn(ctx: VcpuContext) -> std::io::Result<Self> {
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{}", ctx.index))
            .spawn(move || run_loop(ctx))?;
        Ok(Self { handle })
    }

    /// The thread's pthread handle (valid until it is joined).
    pub fn pthread(&self) -> libc::pthread_t {
        self.handle.as_pthread_t()
    }

    /// Send the kick signal to the thread.
    pub fn kick(&self) {
        // SAFETY: the pthread_t is that of a thread we own and have not joined, so it is a
        // valid target; the signal's handler is installed before any vCPU thread starts.
        unsafe {
            libc::pthread_kill(self.handle.as_pthread_t(), kick_signal());
        }
    }

    /// Wait for the thread to end.
    pub fn join(self) {
        let _thread_result_already_reported = self.handle.join();
    }
}

/// What one KVM_RUN produced, without borrowing the vCPU.
enum Step {
    Continue,
    Interrupted,
    Event(VmEvent),
    InternalError,
    TripleFault,
}

fn run_loop(mut ctx: VcpuContext) {
    crate::affinity::apply_to_vcpu_thread();
    {
        let mut fd = lock(&ctx.fd);
        let run: *mut kvm_run = fd.get_kvm_run();
        KVM_RUN.with(|c| c.set(run));
    }
    let mut sampler = crate::vcpu_sample::Sampler::default();
    loop {
        if !park_if_asked(&ctx) {
            break;
        }
        let mut fd = lock(&ctx.fd);
        let step = run_once(&mut fd, &ctx);
        let step = match step {
            Step::InternalError => match ctx.syscall_fixup.as_mut() {
                Some(fixup) => {
                    let (_, _, bytes) = exits::internal_error(&mut fd);
                    match fixup.on_emulation_failure(&mut fd, &bytes) {
                        Ok(Some(_)) => None,
                        Ok(None) => exits::handle_internal_error(&mut fd, ctx.index),
                        Err(e) => Some(VmEvent::Crash(exits::crash_report(
                            &fd,
                            ctx.index,
                            &e.to_string(),
                        ))),
                    }
                }
                None => exits::handle_internal_error(&mut fd, ctx.index),
            },
            Step::TripleFault => Some(VmEvent::Crash(exits::crash_report(
                &fd,
                ctx.index,
                "triple fault (KVM_EXIT_SHUTDOWN)",
            ))),
            Step::Interrupted => {
                fd.set_kvm_immediate_exit(0);
                ctx.stats.kicks.fetch_add(1, Ordering::Relaxed);
                let exits = ctx.stats.exits.load(Ordering::Relaxed);
                sampler.on_interrupt(&fd, ctx.index, exits);
                None
            }
            Step::Continue => None,
            Step::Event(e) => Some(e),
        };
        drop(fd);
        if let Some(event) = step {
            let stop = true;
            let _receiver_gone_means_vm_is_ending = ctx.events.send(event);
            if stop {
                // Wait to be stopped; never run the guest past its end.
                let mut st = ctx.control.lock();
                st.parked += 1;
                ctx.control.notify();
                while !st.stop {
                    st = ctx.control.wait(st);
                }
                st.parked -= 1;
                break;
            }
        }
    }
    KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
}

/// Re-enter KVM_RUN with `immediate_exit` set: completes a pending I/O or MMIO exit and
/// returns EINTR without running guest code (also when nothing is pending).
fn complete_pending_exit(fd: &mut VcpuFd) {
    fd.set_kvm_immediate_exit(1);
    let _eintr_expected = fd.run();
    fd.set_kvm_immediate_exit(0);
}

/// Park while a pause is requested. Returns false when the thread must end.
fn park_if_asked(ctx: &VcpuContext) -> bool {
    let mut st = ctx.control.lock();
    if st.stop {
        return false;
    }
    if st.pause || st.hold {
        // Complete a pending port I/O or MMIO exit before parking: KVM finishes it (the
        // `in` value into RAX, RIP past the instruction) only inside the next KVM_RUN, so
        // state captured before that would replay an `out` or re-read an `in` on the
        // other side. With immediate_exit set, KVM_RUN completes it and returns at once.
        drop(st);
        complete_pending_exit(&mut lock(&ctx.fd));
        st = ctx.control.lock();
        if st.stop {
            return false;
        }
        if !(st.pause || st.hold) {
            return true;
        }
        st.parked += 1;
        ctx.control.notify();
        while (st.pause || st.hold) && !st.stop {
            st = ctx.control.wait(st);
        }
        st.parked -= 1;
        ctx.control.notify();
    }
    !st.stop
}

fn run_once(fd: &mut VcpuFd, ctx: &VcpuContext) -> Step {
    let exit = match fd.run() {
        Ok(exit) => exit,
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            return Step::Interrupted;
        }
        Err(e) => {
            return Step::Event(VmEvent::Crash(format!(
                "vCPU {}: KVM_RUN failed: {e}",
                ctx.index
            )))
        }
    };
    ctx.stats.exits.fetch_add(1, Ordering::Relaxed);
    match exit {
        VcpuExit::IoOut(port, data) => {
            ctx.stats.io_exits.fetch_add(1, Ordering::Relaxed);
            match ctx.bus.write(port, data) {
                DeviceAction::None => Step::Continue,
                DeviceAction::Exit(code) => Step::Event(VmEvent::Exit(code)),
                DeviceAction::Reset => Step::Event(VmEvent::Exit(0)),
            }
        }
        VcpuExit::IoIn(port, data) => {
            ctx.stats.io_exits.fetch_add(1, Ordering::Relaxed);
            ctx.bus.read(port, data);
            Step::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            ctx.stats.mmio_exits.fetch_add(1, Ordering::Relaxed);
            ctx.mmio.read(addr, data);
            Step::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            ctx.stats.mmio_exits.fetch_add(1, Ordering::Relaxed);
            ctx.mmio.write(addr, data);
            Step::Continue
        }
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::IoapicEoi(_) => Step::Continue,
        VcpuExit::Intr => Step::Interrupted,
        VcpuExit::SystemEvent(kind, _) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN | kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                Step::Event(VmEvent::Exit(0))
            }
            other => Step::Event(VmEvent::Crash(format!(
                "vCPU {}: unexpected system event {other}",
                ctx.index
            ))),
        },
        VcpuExit::Shutdown => Step::TripleFault,
        VcpuExit::FailEntry(reason, cpu) => Step::Event(VmEvent::Crash(format!(
            "vCPU {}: VM entry failed, hardware reason {reason:#x} on host CPU {cpu}",
            ctx.index
        ))),
        VcpuExit::InternalError => Step::InternalError,
        other => Step::Event(VmEvent::Crash(format!(
            "vCPU {}: unexpected exit {other:?}",
            ctx.index
        ))),
    }
}
