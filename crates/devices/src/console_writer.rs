//! The console's own writer thread: a reader that stops reading (a full pipe, a frozen
//! terminal, a SIGSTOPped `less`) must never stop the VM.
//!
//! Released console bytes go into a bounded in-memory queue ([`CONSOLE_QUEUE_BYTES`]);
//! a dedicated thread writes and flushes them in order. Nothing that runs the VM (vCPU
//! threads, the epoch engine's pause, heartbeats) ever waits for the console.
//!
//! Policy when the queue is full (the reader has stopped for a while): new bytes are
//! **dropped and counted**, the guest keeps running and its console keeps working.
//! Where bytes were dropped, the writer puts one marker line into the stream,
//! `[ftvm: N bytes of console output dropped: the console reader stopped reading]`
//! (on a line of its own), so a reader that resumes sees everything queued before the
//! gap, the marker, then the guest's output from after the gap. A serial console has no
//! end-to-end flow control to the outside, and holding a whole VM (and its replication)
//! hostage to a terminal is worse than a visible, counted gap in a log.
//!
//! Progress is counted in bytes: [`ConsoleWriter::offered`] (queued or dropped so far)
//! and [`ConsoleWriter::completed`] (written or dropped). A byte counts as out only once
//! it is completed; the replication engine reports an epoch's output as released to
//! the backup only then, so a failover re-sends rather than loses what was still queued.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};

use crate::bus::lock;

/// Bytes the console queue holds before it drops.
pub const CONSOLE_QUEUE_BYTES: usize = 1 << 20;

/// Most bytes written per write call.
const CHUNK: usize = 64 << 10;

#[derive(Debug, Default)]
struct Queue {
    bytes: VecDeque<u8>,
    /// Bytes queued or dropped since the start.
    offered: u64,
    /// Bytes written or dropped since the start.
    completed: u64,
    /// Bytes dropped since the start.
    dropped: u64,
    /// Bytes put into the queue since the start.
    enqueued: u64,
    /// Bytes taken out of the queue by the writer since the start.
    dequeued: u64,
    /// Where bytes were dropped: (position in the enqueued stream, bytes dropped there).
    marks: VecDeque<(u64, u64)>,
    stop: bool,
}

#[derive(Debug, Default)]
struct Shared {
    q: Mutex<Queue>,
    wake: Condvar,
    /// Signalled whenever `completed` grows.
    progress: Condvar,
}

/// A console writer with its own thread. Dropping it lets the thread finish what is
/// queued (it does not wait for it).
#[derive(Debug)]
pub struct ConsoleWriter {
    shared: Arc<Shared>,
    capacity: usize,
}

impl ConsoleWriter {
    /// Writes to `out` from a new thread, queueing at most `capacity` bytes.
    pub fn new(out: Box<dyn Write + Send>, capacity: usize) -> Self {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        // If the thread cannot be created, nothing is ever written: count it as dropped
        // rather than block or panic.
        let spawned = std::thread::Builder::new()
            .name("ftvm-console".into())
            .spawn(move || writer_loop(&s, out));
        if spawned.is_err() {
            lock(&shared.q).stop = true;
        }
        let mut live = lock(&LIVE);
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&shared));
        Self {
            shared,
            capacity: capacity.max(1),
        }
    }

    /// Queue `bytes` (never blocks on the reader). What does not fit is dropped and
    /// counted.
    pub fn write(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut q = lock(&self.shared.q);
        let room = if q.stop {
            0
        } else {
            self.capacity.saturating_sub(q.bytes.len())
        };
        let keep = bytes.len().min(room);
        q.bytes.extend(&bytes[..keep]);
        let lost = (bytes.len() - keep) as u64;
        q.enqueued += keep as u64;
        q.offered += bytes.len() as u64;
        q.dropped += lost;
        q.completed += lost;
        if lost > 0 {
            let at = q.enqueued;
            match q.marks.back_mut() {
                Some((pos, n)) if *pos == at => *n += lost,
                _ => q.marks.push_back((at, lost)),
            }
        }
        drop(q);
        self.shared.wake.notify_one();
        if lost > 0 {
            self.shared.progress.notify_all();
        }
    }

    /// Bytes queued or dropped so far.
    pub fn offered(&self) -> u64 {
        lock(&self.shared.q).offered
    }

    /// Bytes written (and flushed) or dropped so far.
    pub fn completed(&self) -> u64 {
        lock(&self.shared.q).completed
    }

    /// Bytes dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        lock(&self.shared.q).dropped
    }

    /// Bytes waiting in the queue.
    pub fn queued(&self) -> usize {
        lock(&self.shared.q).bytes.len()
    }

    /// Wait up to `timeout` until everything offered so far is completed; whether it is.
    pub fn drain(&self, timeout: std::time::Duration) -> bool {
        drain_shared(&self.shared, std::time::Instant::now() + timeout)
    }
}

/// Every console writer of the process (for [`drain_all`]).
static LIVE: Mutex<Vec<std::sync::Weak<Shared>>> = Mutex::new(Vec::new());

/// Before the process exits: wait until every console writer has written what it was
/// given, for at most `timeout` in all (a reader that stopped reading does not keep
/// the process alive; what it did not take is lost). Whether everything is out.
pub fn drain_all(timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    let live: Vec<Arc<Shared>> = lock(&LIVE).iter().filter_map(|w| w.upgrade()).collect();
    live.iter().all(|s| drain_shared(s, deadline))
}

fn drain_shared(shared: &Shared, deadline: std::time::Instant) -> bool {
    {
        let mut q = lock(&shared.q);
        let target = q.offered;
        while q.completed < target {
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            q = match shared.progress.wait_timeout(q, deadline - now) {
                Ok((q, _)) => q,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

impl Drop for ConsoleWriter {
    fn drop(&mut self) {
        lock(&self.shared.q).stop = true;
        self.shared.wake.notify_one();
    }
}

fn writer_loop(s: &Shared, mut out: Box<dyn Write + Send>) {
    let mut chunk = Vec::with_capacity(CHUNK);
    loop {
        let (marker, n) = {
            let mut q = lock(&s.q);
            while q.bytes.is_empty() && q.marks.is_empty() && !q.stop {
                q = match s.wake.wait(q) {
                    Ok(q) => q,
                    Err(p) => p.into_inner(),
                };
            }
            // The marker of bytes dropped here, and up to the next drop.
            let marker = match q.marks.front() {
                Some(&(pos, n)) if pos == q.dequeued => {
                    q.marks.pop_front();
                    n
                }
                _ => 0,
            };
            let mut n = q.bytes.len().min(CHUNK);
            if let Some(&(pos, _)) = q.marks.front() {
                n = n.min((pos - q.dequeued) as usize);
            }
            if n == 0 && marker == 0 {
                if q.stop {
                    return;
                }
                continue;
            }
            chunk.clear();
            chunk.extend(q.bytes.drain(..n));
            q.dequeued += n as u64;
            (marker, n)
        };
        // Write errors (a closed pipe) drop the output: the VM must not stop because
        // nobody is reading its console.
        if marker > 0 {
            let line = format!(
                "\n[ftvm: {marker} bytes of console output dropped: the console reader stopped reading]\n"
            );
            let _ignored_closed_console = out.write_all(line.as_bytes());
        }
        let _ignored_closed_console = out.write_all(&chunk);
        // Flush: bytes counted as completed must really be out (a partial line such as
        // a `login:` prompt too; a line-buffered stdout would keep it).
        let _ignored_closed_console = out.flush();
        lock(&s.q).completed += n as u64;
        s.progress.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    /// A real socket pair stands in for a pipe whose reader stops reading: writes block
    /// once the kernel buffer is full.
    #[test]
    fn a_reader_that_stops_never_blocks_the_writer_and_drops_are_counted_and_marked() {
        let (w, mut r) = UnixStream::pair().unwrap();
        let c = ConsoleWriter::new(Box::new(w), 64 << 10);
        let line = [b'x'; 1000];
        let t0 = Instant::now();
        // Far more than the socket buffer plus the queue hold.
        for _ in 0..4000 {
            c.write(&line);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "writes waited for the reader: {:?}",
            t0.elapsed()
        );
        assert_eq!(c.offered(), 4_000_000);
        let dropped = c.dropped();
        assert!(dropped > 0, "nothing was dropped");
        assert!(c.queued() <= 64 << 10);
        // The reader resumes: everything not dropped arrives, with marker lines where
        // bytes were dropped.
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            v
        });
        assert!(c.drain(Duration::from_secs(10)));
        c.write(b"tail\n");
        assert!(c.drain(Duration::from_secs(10)));
        assert_eq!(c.completed(), c.offered());
        assert_eq!(
            c.dropped(),
            dropped,
            "nothing is dropped once the reader reads"
        );
        drop(c);
        let got = reader.join().unwrap();
        let text = String::from_utf8_lossy(&got);
        // One marker line where each run of drops happened; together they count every
        // dropped byte.
        let tail = " bytes of console output dropped: the console reader stopped reading]\n";
        let marked: u64 = text
            .split("\n[ftvm: ")
            .skip(1)
            .map(|m| {
                let (n, rest) = m.split_once(' ').unwrap();
                assert!(format!(" {rest}").starts_with(tail), "bad marker: {m:.120}");
                n.parse::<u64>().unwrap()
            })
            .sum();
        assert_eq!(
            marked, dropped,
            "markers do not account for the dropped bytes"
        );
        let xs = got.iter().filter(|&&b| b == b'x').count() as u64;
        assert_eq!(
            xs + dropped,
            4_000_000,
            "bytes were neither written nor counted"
        );
        assert!(text.ends_with("tail\n"));
    }

    #[test]
    fn in_order_and_complete_when_the_reader_keeps_up() {
        let (w, mut r) = UnixStream::pair().unwrap();
        let c = ConsoleWriter::new(Box::new(w), CONSOLE_QUEUE_BYTES);
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            v
        });
        let mut want = Vec::new();
        for i in 0..20000 {
            let l = format!("line {i}\n");
            want.extend_from_slice(l.as_bytes());
            c.write(l.as_bytes());
        }
        assert!(c.drain(Duration::from_secs(10)));
        assert_eq!(c.dropped(), 0);
        drop(c);
        assert_eq!(reader.join().unwrap(), want);
    }
}
