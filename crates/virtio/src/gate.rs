//! The gate between device worker threads and a paused VM.
//!
//! Device workers (a virtio-net RX/TX thread) write guest memory and advance queue
//! indices on their own threads. When the VMM pauses the vCPUs to capture an epoch or a
//! snapshot, the workers must be still as well, or the captured memory and the captured
//! queue state would disagree. A worker wraps each batch of work in [`IoGate::enter`];
//! [`IoGate::close`] waits until no batch runs and keeps new ones out until
//! [`IoGate::open`]. A VM that was created but never started (a backup's replica) keeps
//! its gate closed, so its devices neither read nor write anything before takeover.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug, Default)]
struct GateState {
    open: bool,
    busy: u32,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct IoGate {
    state: Mutex<GateState>,
    cond: Condvar,
}

/// A batch of device work in progress; the gate cannot close until it is dropped.
#[derive(Debug)]
pub struct GatePass<'a> {
    gate: &'a IoGate,
}

impl Drop for GatePass<'_> {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        st.busy -= 1;
        drop(st);
        self.gate.cond.notify_all();
    }
}

impl IoGate {
    /// A closed gate.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Let workers run.
    pub fn open(&self) {
        self.lock().open = true;
        self.cond.notify_all();
    }

    /// Keep workers out and wait until none is inside.
    pub fn close(&self) {
        let mut st = self.lock();
        st.open = false;
        while st.busy > 0 {
            st = self.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Whether workers may run.
    pub fn is_open(&self) -> bool {
        self.lock().open
    }

    /// Wait until the gate is open and enter it; `None` once `stop` is set (checked at
    /// least every 50 ms while waiting).
    pub fn enter(&self, stop: &AtomicBool) -> Option<GatePass<'_>> {
        let mut st = self.lock();
        loop {
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            if st.open {
                st.busy += 1;
                return Some(GatePass { gate: self });
            }
            st = self
                .cond
                .wait_timeout(st, Duration::from_millis(50))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn close_waits_for_the_worker_and_keeps_it_out() {
        let gate = Arc::new(IoGate::new());
        let stop = Arc::new(AtomicBool::new(false));
        assert!(!gate.is_open());
        gate.open();
        let pass = gate.enter(&stop).unwrap();
        let g = gate.clone();
        let t0 = Instant::now();
        let closer = std::thread::spawn(move || {
            g.close();
            Instant::now()
        });
        std::thread::sleep(Duration::from_millis(100));
        let released = Instant::now();
        drop(pass);
        let closed = closer.join().unwrap();
        assert!(
            closed >= released,
            "close returned while a batch was running"
        );
        assert!(t0.elapsed() >= Duration::from_millis(100));
        // Closed: a worker waits, and leaves when told to stop.
        let (g, s) = (gate.clone(), stop.clone());
        let waiter = std::thread::spawn(move || g.enter(&s).is_some());
        std::thread::sleep(Duration::from_millis(80));
        stop.store(true, Ordering::SeqCst);
        assert!(!waiter.join().unwrap(), "entered a closed gate");
    }
}
