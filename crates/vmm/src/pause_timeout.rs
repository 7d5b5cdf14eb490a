//! A pause that times out must not leave the VM frozen.
//!
//! `Vm::pause` asks every vCPU to park and waits [`crate::vm::PAUSE_TIMEOUT`]. A vCPU
//! stuck in a device (a blocked write, a lock held elsewhere) may never park in time;
//! the pause then fails with `PauseTimeout`, and the request is withdrawn so the vCPUs
//! that did park run again and the stuck one does not park when it comes back. The VM
//! keeps running; the caller decides what a failed pause means (the replication engine
//! ends protection and says why; `ctl pause` reports the error).

use crate::vcpu::Control;

/// Withdraw a pause request and wake the parked vCPUs.
pub fn undo_pause(control: &Control) {
    control.lock().pause = false;
    control.notify();
}
