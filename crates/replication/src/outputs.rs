//! Output commit: everything the VM sends out is held until the backup has the epoch in
//! which it was sent.
//!
//! Devices write into the open epoch's buffer. At each epoch boundary (vCPUs paused) the
//! engine seals the buffer: its bytes travel to the backup inside that epoch, and are
//! held here until the backup acknowledges the epoch, then released in order. Unprotected
//! (no backup, or backup lost), output is released at once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ftvm_devices::bus::lock;
use ftvm_devices::output::{is_frame_stream, DirectOutput, StreamId};
use ftvm_devices::OutputSink;

use crate::fencing::FenceGate;

/// One sealed epoch's output, per stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochOutput {
    /// The epoch the bytes were sent in.
    pub epoch: u64,
    /// (stream, bytes) in the order the guest sent them.
    pub chunks: Vec<(StreamId, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct Inner {
    protected: bool,
    open: Vec<(StreamId, Vec<u8>)>,
    held: VecDeque<EpochOutput>,
    released_epoch: u64,
    /// When each line of the open epoch was completed by the guest.
    open_lines: Vec<Instant>,
    /// Same, per held epoch.
    held_lines: VecDeque<(u64, Vec<Instant>)>,
    /// Recent output latencies (line completed in the guest to released), microseconds.
    latencies_us: VecDeque<u64>,
    /// The fence, checked before every byte leaves; `None`: always free to release.
    gate: Option<Arc<FenceGate>>,
    /// Bytes due for release while the fence could not be proven held, in order.
    withheld: Vec<(StreamId, Vec<u8>)>,
    /// (released epoch, console bytes offered once its output was handed over), oldest
    /// first: the epoch is out once the console completed that many bytes.
    release_marks: VecDeque<(u64, u64)>,
    /// The newest released epoch whose console bytes are out.
    out_epoch: u64,
}

const LATENCY_SAMPLES: usize = 4096;

/// The output sink of a protected VM.
pub struct EpochOutputs {
    inner: Mutex<Inner>,
    out: Arc<DirectOutput>,
}

impl std::fmt::Debug for EpochOutputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = lock(&self.inner);
        f.debug_struct("EpochOutputs")
            .field("protected", &i.protected)
            .field("held_epochs", &i.held.len())
            .finish()
    }
}

impl EpochOutputs {
    /// A sink releasing to `out`; starts unprotected (releases at once).
    pub fn new(out: Arc<DirectOutput>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::default(),
            out,
        })
    }

    /// Start holding output (a backup is in sync). Epoch numbers start again with each
    /// protection session, so the release watermark starts again too.
    pub fn protect(&self) {
        let mut i = lock(&self.inner);
        i.protected = true;
        i.released_epoch = 0;
        i.out_epoch = 0;
        i.release_marks.clear();
    }

    /// Whether output is held.
    pub fn is_protected(&self) -> bool {
        lock(&self.inner).protected
    }

    /// Seal the open epoch's output as epoch `epoch`; returns a copy to ship with it.
    /// Call with the vCPUs paused, so the boundary matches the captured state exactly.
    pub fn seal(&self, epoch: u64) -> EpochOutput {
        let mut i = lock(&self.inner);
        let chunks = std::mem::take(&mut i.open);
        let lines = std::mem::take(&mut i.open_lines);
        let sealed = EpochOutput { epoch, chunks };
        if i.protected {
            i.held.push_back(sealed.clone());
            i.held_lines.push_back((epoch, lines));
        } else {
            self.write(&mut i, &sealed);
        }
        drop(i);
        sealed
    }

    /// The backup acknowledged `epoch`: release everything held up to it, in order.
    pub fn release_through(&self, epoch: u64) {
        let mut ready = Vec::new();
        // Writes happen under the lock: releases, the release-everything of `unprotect`
        // and direct output of an unprotected VM must leave in the guest's order.
        let mut i = {
            let mut i = lock(&self.inner);
            while i.held.front().is_some_and(|e| e.epoch <= epoch) {
                if let Some(e) = i.held.pop_front() {
                    ready.push(e);
                }
            }
            let now = Instant::now();
            while i.held_lines.front().is_some_and(|(e, _)| *e <= epoch) {
                if let Some((_, lines)) = i.held_lines.pop_front() {
                    for t in lines {
                        if i.latencies_us.len() == LATENCY_SAMPLES {
                            i.latencies_us.pop_front();
                        }
                        i.latencies_us
                            .push_back(now.duration_since(t).as_micros() as u64);
                    }
                }
            }
            i.released_epoch = i.released_epoch.max(epoch);
            i
        };
        for e in &ready {
            self.write(&mut i, e);
        }
        let offered = self.out.console_offered();
        let released = i.released_epoch;
        i.release_marks.push_back((released, offered));
        drop(i);
    }

    /// Recent output latencies in microseconds: from the guest completing a line to its
    /// release after the backup acknowledged its epoch.
    pub fn latencies_us(&self) -> Vec<u64> {
        lock(&self.inner).latencies_us.iter().copied().collect()
    }

    /// Waits up to `timeout` for [`Self::released_epoch`] to reach `epoch` (the console
    /// thread writes asynchronously); true once it has.
    pub fn wait_released(&self, epoch: u64, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while self.released_epoch() < epoch {
            if t0.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// The newest epoch whose output has been released and is out: its console bytes
    /// written by the console thread (or dropped under its policy), not merely queued.
    /// The backup re-releases every later epoch at takeover, so a failover repeats what
    /// was still queued rather than losing it.
    pub fn released_epoch(&self) -> u64 {
        let done = self.out.console_completed();
        let mut i = lock(&self.inner);
        while let Some(&(epoch, offered)) = i.release_marks.front() {
            if offered > done {
                break;
            }
            i.release_marks.pop_front();
            i.out_epoch = i.out_epoch.max(epoch);
        }
        i.out_epoch
    }

    /// The console writer this sink releases to.
    pub fn console(&self) -> &Arc<DirectOutput> {
        &self.out
    }

    /// Protection ended (backup lost): release everything held and everything open, and
    /// from now on write at once.
    pub fn unprotect(&self) {
        let mut i = lock(&self.inner);
        i.protected = false;
        i.held_lines.clear();
        i.open_lines.clear();
        let (held, open) = (std::mem::take(&mut i.held), std::mem::take(&mut i.open));
        for e in &held {
            self.write(&mut i, e);
        }
        self.write(
            &mut i,
            &EpochOutput {
                epoch: 0,
                chunks: open,
            },
        );
        drop(i);
    }

    /// Bytes held (sealed, not yet released).
    pub fn held_bytes(&self) -> usize {
        lock(&self.inner)
            .held
            .iter()
            .flat_map(|e| e.chunks.iter())
            .map(|(_, b)| b.len())
            .sum()
    }

    fn write(&self, i: &mut Inner, e: &EpochOutput) {
        for (stream, bytes) in &e.chunks {
            self.pass(i, *stream, bytes);
        }
    }

    /// The one place bytes leave: only while the fence is proven held (checked now,
    /// against the lease's deadline, before every write); otherwise they are withheld, in
    /// order, until it is proven again, or forever if it is lost.
    fn pass(&self, i: &mut Inner, stream: StreamId, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(g) = &i.gate {
            if !g.holds() {
                i.withheld.push((stream, bytes.to_vec()));
                return;
            }
        }
        self.flush_withheld(i);
        self.out.write_stream(stream, bytes);
    }

    fn flush_withheld(&self, i: &mut Inner) {
        for (stream, bytes) in std::mem::take(&mut i.withheld) {
            self.out.write_stream(stream, &bytes);
        }
    }

    /// Check every release against `gate` from now on. Bytes withheld under a previous
    /// gate are dropped: they were never proven releasable under that fence, and a new
    /// fence (taken again after a switchover or takeover) does not make them so.
    pub fn set_fence_gate(&self, gate: Arc<FenceGate>) {
        let mut i = lock(&self.inner);
        i.gate = Some(gate);
        i.withheld.clear();
    }

    /// The fence gate releases are checked against, if any.
    pub fn fence_gate(&self) -> Option<Arc<FenceGate>> {
        lock(&self.inner).gate.clone()
    }

    /// The fence is proven held again: write what was withheld.
    pub fn release_withheld(&self) {
        let mut i = lock(&self.inner);
        if i.gate.as_ref().is_none_or(|g| g.holds()) {
            self.flush_withheld(&mut i);
        }
    }

    /// Bytes withheld because the fence could not be proven held.
    pub fn withheld_bytes(&self) -> usize {
        lock(&self.inner)
            .withheld
            .iter()
            .map(|(_, b)| b.len())
            .sum()
    }
}

impl OutputSink for EpochOutputs {
    fn emit(&self, stream: StreamId, bytes: &[u8]) {
        let mut i = lock(&self.inner);
        if !i.protected {
            // Under the lock, so it cannot overtake held output being released.
            self.pass(&mut i, stream, bytes);
            return;
        }
        if !is_frame_stream(stream) && bytes.contains(&b'\n') {
            i.open_lines.push(Instant::now());
        }
        match i.open.last_mut() {
            // Frames keep their boundaries: one chunk per frame.
            Some((s, buf)) if *s == stream && !is_frame_stream(stream) => {
                buf.extend_from_slice(bytes)
            }
            _ => i.open.push((stream, bytes.to_vec())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What reached the console (after its writer thread wrote everything handed over).
    fn got(o: &EpochOutputs, seen: &Shared) -> Vec<u8> {
        assert!(o.console().drain_console(Duration::from_secs(10)));
        seen.0.lock().unwrap().clone()
    }

    /// An acknowledgement and the loss of the backup racing each other, with the guest
    /// still writing: the bytes must still leave in the order the guest sent them.
    #[test]
    fn racing_release_and_unprotect_keep_the_guest_order() {
        for round in 0..300 {
            let seen = Shared::default();
            let o = EpochOutputs::new(Arc::new(DirectOutput::new(Box::new(seen.clone()))));
            o.protect();
            o.emit(0, b"1");
            o.seal(1);
            o.emit(0, b"2");
            o.seal(2);
            o.emit(0, b"3");
            let a = {
                let o = o.clone();
                std::thread::spawn(move || o.release_through(1))
            };
            let b = {
                let o = o.clone();
                std::thread::spawn(move || o.unprotect())
            };
            let c = {
                let o = o.clone();
                std::thread::spawn(move || o.emit(0, b"4"))
            };
            for t in [a, b, c] {
                t.join().unwrap();
            }
            o.emit(0, b"5");
            assert_eq!(&got(&o, &seen)[..], b"12345", "round {round}");
        }
    }

    /// A holder whose lease deadline passed (a frozen primary waking up) releases
    /// nothing, acknowledged or not, protected or not.
    #[test]
    fn nothing_leaves_once_the_fence_deadline_passed() {
        let seen = Shared::default();
        let o = EpochOutputs::new(Arc::new(DirectOutput::new(Box::new(seen.clone()))));
        let gate = crate::fencing::FenceGate::for_test(Duration::from_millis(30));
        o.set_fence_gate(gate.clone());
        o.emit(0, b"a");
        o.protect();
        o.emit(0, b"b");
        o.seal(1);
        std::thread::sleep(Duration::from_millis(40));
        o.release_through(1);
        o.emit(0, b"c");
        o.unprotect();
        o.emit(0, b"d");
        assert_eq!(&got(&o, &seen)[..], b"a");
        assert_eq!(o.withheld_bytes(), 3);
        // Proven held again (the lease was renewed in time): released in order.
        gate.renew_for_test(Duration::from_secs(5));
        o.release_withheld();
        o.emit(0, b"e");
        assert_eq!(&got(&o, &seen)[..], b"abcde");
    }

    #[test]
    fn output_is_held_until_its_epoch_is_acknowledged() {
        let seen = Shared::default();
        let o = EpochOutputs::new(Arc::new(DirectOutput::new(Box::new(seen.clone()))));
        o.emit(0, b"before ");
        assert_eq!(&got(&o, &seen)[..], b"before ");
        o.protect();
        o.emit(0, b"a");
        let e1 = o.seal(1);
        assert_eq!(e1.chunks, vec![(0, b"a".to_vec())]);
        o.emit(0, b"b");
        o.seal(2);
        o.emit(0, b"c");
        assert_eq!(
            &got(&o, &seen)[..],
            b"before ",
            "nothing leaves before its ack"
        );
        o.release_through(1);
        assert_eq!(&got(&o, &seen)[..], b"before a");
        o.release_through(2);
        assert_eq!(&got(&o, &seen)[..], b"before ab");
        o.unprotect();
        assert_eq!(&got(&o, &seen)[..], b"before abc");
        o.emit(0, b"d");
        assert_eq!(&got(&o, &seen)[..], b"before abcd");
    }
}
