//! A socket writer on its own thread: the migration loop hands it owned buffers through a
//! bounded queue and goes on scanning and copying guest memory while the bytes go out.
//!
//! [`QueuedWriter`] is a [`Write`]: bytes are appended to a large buffer; a full buffer (or
//! a [`Write::flush`]) is handed to the sender thread, which writes it with one
//! `write_all` and gives the buffer back for reuse. Only a full queue makes the caller
//! wait (that bounds memory and is the back-pressure of a link slower than the loop).
//! [`QueuedWriter::drain`] waits until every byte handed over is written. The first write
//! error stops the thread; every later call returns it.

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Size of one queued buffer. Small enough that the buffers' first-touch page faults
/// (each buffer's pages fault in once, on the migration's critical path) stay few: 4 MiB
/// buffers cost ~8,000 faults per migration (measured, docs/benchmarks.md).
pub const BUFFER_BYTES: usize = 1 << 20;
/// Buffers that may wait in the queue (besides the one being filled and the one being
/// written): the most that can be in flight is about `(QUEUE_DEPTH + 2) * BUFFER_BYTES`.
/// Four are plenty behind a loopback socket's own buffers; every buffer more is 1 MiB
/// of first-touch page faults on the framing thread (8 cost more CPU per migration and
/// were no faster, docs/benchmarks.md).
pub const QUEUE_DEPTH: usize = 4;
/// Buffers this writer allocates at most: the queue's, the one being written, the one
/// being filled and those its caller holds (a frame being built, a frame being sealed).
/// With all of them out, the caller waits for the sender thread to give one back (it
/// would wait for room in the queue anyway) instead of allocating another: every new
/// buffer costs a first-touch page fault per 4 KiB.
///
/// A backstop: the queue itself keeps the writer at `QUEUE_DEPTH + 2` buffers. The caller
/// hands over one buffer for each it gets, and the thread gives each buffer back before
/// it takes the next from the queue, so a new one is needed only while every buffer is
/// queued, being written or being filled (tests/send_queue_buffers.rs counts them).
pub const MAX_BUFFERS: usize = QUEUE_DEPTH + 4;

/// What the sender thread reports back.
#[derive(Debug, Default)]
struct Progress {
    /// Bytes handed to the thread.
    queued: u64,
    /// Bytes written to the socket.
    written: u64,
    /// Wall time during which bytes were waiting to be written (handed over, not yet
    /// written): the link's time for them, scheduling delays included.
    busy: Duration,
    /// Since when bytes are waiting (`None`: all written).
    busy_since: Option<Instant>,
    /// The write error that stopped the thread, if any (kind and text: `io::Error` is not
    /// `Clone`).
    error: Option<(io::ErrorKind, String)>,
}

#[derive(Debug, Default)]
struct Shared {
    progress: Mutex<Progress>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        // A poisoned lock only means a panic elsewhere; the counters stay meaningful.
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Bytes written and the time the link took for them, as sampled by [`QueuedWriter::sent`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sent {
    /// Bytes written to the socket so far.
    pub bytes: u64,
    /// Wall time during which bytes were waiting to be written.
    pub busy: Duration,
}

impl Sent {
    /// Bytes per second the link took between `earlier` and `self` (`None` when too little
    /// was written in between to say).
    pub fn rate_since(&self, earlier: Sent) -> Option<f64> {
        let bytes = self.bytes.saturating_sub(earlier.bytes);
        let busy = self.busy.saturating_sub(earlier.busy).as_secs_f64();
        (bytes >= 256 << 10 && busy > 0.0).then(|| bytes as f64 / busy)
    }
}

/// A [`Write`] whose bytes a dedicated thread writes to a socket (see the module docs).
#[derive(Debug)]
pub struct QueuedWriter {
    filling: Vec<u8>,
    /// The socket, to cut it when dropped with bytes still queued (a failed migration:
    /// the thread may be blocked on a peer that stopped reading).
    socket: TcpStream,
    tx: Option<SyncSender<Vec<u8>>>,
    spare: Receiver<Vec<u8>>,
    /// Buffers allocated so far (at most [`MAX_BUFFERS`]).
    allocated: usize,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Write on the caller's thread (see [`QueuedWriter::set_direct`]).
    direct: bool,
}

impl QueuedWriter {
    /// Start the sender thread writing to `socket`.
    pub fn new(socket: TcpStream) -> io::Result<Self> {
        let mut out = socket.try_clone()?;
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_DEPTH);
        // Room for every buffer: the thread never drops one.
        let (give_back, spare) = sync_channel::<Vec<u8>>(MAX_BUFFERS);
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("ft-mig-send".into())
            .spawn(move || {
                for mut buf in rx {
                    let r = out.write_all(&buf);
                    let mut p = s.lock();
                    match r {
                        Ok(()) => {
                            p.written += buf.len() as u64;
                            if p.written >= p.queued {
                                if let Some(since) = p.busy_since.take() {
                                    p.busy += since.elapsed();
                                }
                            }
                        }
                        Err(e) => {
                            p.error = Some((e.kind(), e.to_string()));
                            s.changed.notify_all();
                            return;
                        }
                    }
                    s.changed.notify_all();
                    drop(p);
                    buf.clear();
                    let _full_or_gone = give_back.try_send(buf);
                }
            })?;
        Ok(QueuedWriter {
            filling: Vec::with_capacity(BUFFER_BYTES),
            socket,
            tx: Some(tx),
            spare,
            allocated: 1,
            shared,
            thread: Some(thread),
            direct: false,
        })
    }

    fn failed(&self) -> Option<io::Error> {
        self.shared
            .lock()
            .error
            .as_ref()
            .map(|(kind, text)| io::Error::new(*kind, format!("sender thread: {text}")))
    }

    /// Hand the buffer being filled to the thread (waits only while the queue is full).
    fn hand_off(&mut self) -> io::Result<()> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        if self.filling.is_empty() {
            return Ok(());
        }
        if self.direct {
            return self.write_direct();
        }
        // Queued first, then the next buffer taken (which may wait for the thread to give
        // one back).
        let buf = std::mem::take(&mut self.filling);
        self.queue(buf)?;
        self.filling = self.next_buffer()?;
        Ok(())
    }

    /// Count `buf` as queued (the thread is busy from now) and pass it to the thread.
    fn queue(&mut self, buf: Vec<u8>) -> io::Result<()> {
        let n = buf.len() as u64;
        let mut p = self.shared.lock();
        if p.busy_since.is_none() {
            p.busy_since = Some(Instant::now());
        }
        p.queued += n;
        drop(p);
        match self.tx.as_ref().map(|tx| tx.send(buf)) {
            Some(Ok(())) => Ok(()),
            _ => Err(self.failed().unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::BrokenPipe, "sender thread gone")
            })),
        }
    }

    /// An empty buffer: one the sender thread gave back (already faulted in), a new one
    /// while fewer than [`MAX_BUFFERS`] exist, else the next one the thread gives back.
    fn next_buffer(&mut self) -> io::Result<Vec<u8>> {
        if let Ok(buf) = self.spare.try_recv() {
            return Ok(buf);
        }
        if self.allocated < MAX_BUFFERS {
            self.allocated += 1;
            return Ok(Vec::with_capacity(BUFFER_BYTES));
        }
        self.spare.recv().map_err(|_| {
            self.failed()
                .unwrap_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "sender thread gone"))
        })
    }

    /// Buffers allocated so far (see [`MAX_BUFFERS`]).
    pub fn buffers_allocated(&self) -> usize {
        self.allocated
    }

    /// Queue `buf` whole after what is queued, without copying it (what is being filled
    /// goes first); returns an empty buffer for the caller to fill next (one the sender
    /// thread gave back when there is one). A [`ftvm_wire::frame::HandOver`] for sealed
    /// frames and for frames built in place.
    pub fn write_owned(&mut self, buf: Vec<u8>) -> io::Result<Vec<u8>> {
        self.hand_off()?;
        if self.direct {
            let empty = std::mem::replace(&mut self.filling, buf);
            self.hand_off()?;
            return Ok(empty);
        }
        self.queue(buf)?;
        self.next_buffer()
    }

    /// Hand everything over and wait until the socket took all of it (or the thread
    /// failed: its error is returned).
    pub fn drain(&mut self) -> io::Result<()> {
        self.hand_off()?;
        self.wait_written()
    }

    /// Wait until the socket took everything handed over so far (a [`Write::flush`]
    /// hands over the buffer being filled), or the thread failed (its error).
    pub fn wait_written(&self) -> io::Result<()> {
        self.wait_backlog(0)
    }

    /// Wait until at most `bytes` handed over are still waiting for the socket, or the
    /// thread failed (its error).
    pub fn wait_backlog(&self, bytes: u64) -> io::Result<()> {
        let mut p = self.shared.lock();
        loop {
            if let Some((kind, text)) = &p.error {
                return Err(io::Error::new(*kind, format!("sender thread: {text}")));
            }
            if p.queued.saturating_sub(p.written) <= bytes {
                return Ok(());
            }
            p = self
                .shared
                .changed
                .wait(p)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// From now on write on the caller's thread, after what is queued (`true`), or
    /// through the sender thread again (`false`). For a few latency-bound bytes (a
    /// migration's paused epoch) one hand-off to another thread costs more than it saves.
    pub fn set_direct(&mut self, direct: bool) -> io::Result<()> {
        self.hand_off()?;
        self.direct = direct;
        Ok(())
    }

    fn write_direct(&mut self) -> io::Result<()> {
        self.wait_written()?;
        let n = self.filling.len() as u64;
        let r = (&self.socket).write_all(&self.filling);
        self.filling.clear();
        let mut p = self.shared.lock();
        match r {
            Ok(()) => {
                p.queued += n;
                p.written += n;
                Ok(())
            }
            Err(e) => {
                p.error = Some((e.kind(), e.to_string()));
                Err(io::Error::new(e.kind(), format!("sender thread: {e}")))
            }
        }
    }

    /// Bytes handed over but not written yet (plus the buffer being filled).
    pub fn backlog(&self) -> u64 {
        let p = self.shared.lock();
        p.queued.saturating_sub(p.written) + self.filling.len() as u64
    }

    /// What the socket has taken so far, and how long it took.
    pub fn sent(&self) -> Sent {
        let p = self.shared.lock();
        Sent {
            bytes: p.written,
            busy: p.busy + p.busy_since.map_or(Duration::ZERO, |s| s.elapsed()),
        }
    }
}

impl Write for QueuedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.filling.len() + buf.len() > BUFFER_BYTES && !self.filling.is_empty() {
            self.hand_off()?;
        }
        if buf.len() >= BUFFER_BYTES {
            // A write larger than a buffer goes out in its own.
            self.filling.extend_from_slice(buf);
            self.hand_off()?;
        } else {
            self.filling.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    /// Hands the buffer over without waiting for the socket (see [`QueuedWriter::drain`]).
    fn flush(&mut self) -> io::Result<()> {
        self.hand_off()
    }
}

impl Drop for QueuedWriter {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it wrote what it holds (or failed). Bytes
        // still queued now belong to a connection being given up: cut it, so that a
        // thread blocked on a peer that no longer reads returns.
        self.tx = None;
        let p = self.shared.lock();
        let unsent = p.error.is_none() && p.written < p.queued;
        drop(p);
        if unsent {
            let _already_closed = self.socket.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _panicked = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// A writer connected to a loopback reader thread that returns every byte it got.
    fn writer_to_loopback_reader() -> (QueuedWriter, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all
        });
        let w = QueuedWriter::new(TcpStream::connect(addr).unwrap()).unwrap();
        (w, reader)
    }

    #[test]
    fn bytes_arrive_in_order_and_drain_waits_for_them() {
        let (mut w, reader) = writer_to_loopback_reader();
        let mut expect = Vec::new();
        // Small and large writes, across buffer boundaries.
        for i in 0..200u32 {
            let len = match i % 4 {
                0 => 7,
                1 => 70_000,
                2 => BUFFER_BYTES + 13,
                _ => 1,
            };
            let chunk: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j) as u8).collect();
            w.write_all(&chunk).unwrap();
            expect.extend_from_slice(&chunk);
            if i % 17 == 0 {
                w.flush().unwrap();
            }
        }
        w.drain().unwrap();
        assert_eq!(w.backlog(), 0);
        assert_eq!(w.sent().bytes, expect.len() as u64);
        drop(w);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), expect.len());
        assert!(got == expect, "bytes reordered or corrupted");
    }

    #[test]
    fn owned_buffers_keep_their_place_among_copied_writes() {
        let (mut w, reader) = writer_to_loopback_reader();
        let mut expect = Vec::new();
        let mut spare = Vec::new();
        for i in 0..60u32 {
            let len = [5, 90_000, BUFFER_BYTES + 44][i as usize % 3];
            let chunk: Vec<u8> = (0..len).map(|j| (i as usize * 7 + j) as u8).collect();
            expect.extend_from_slice(&chunk);
            if i % 2 == 0 {
                w.write_all(&chunk).unwrap();
            } else {
                spare.clear();
                spare.extend_from_slice(&chunk);
                spare = w.write_owned(spare).unwrap();
                assert!(spare.is_empty(), "the buffer returned must be empty");
            }
            if i == 30 {
                // Direct mode (the caller's thread writes) keeps the order too.
                w.set_direct(true).unwrap();
            }
        }
        w.drain().unwrap();
        drop(w);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), expect.len());
        assert!(got == expect, "bytes reordered or corrupted");
    }

    #[test]
    fn frames_handed_over_whole_keep_their_order_behind_a_slow_peer() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            // Read nothing for a while: the socket, then the queue fill up.
            std::thread::sleep(Duration::from_millis(300));
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all
        });
        let mut w = QueuedWriter::new(TcpStream::connect(addr).unwrap()).unwrap();
        let mut expect = Vec::new();
        let mut buf = Vec::new();
        for i in 0..64u32 {
            // A frame built in its own buffer (as a migration's pre-copy does), and a
            // small write between frames.
            buf.clear();
            buf.extend((0..BUFFER_BYTES - 64).map(|j| (i as usize + j) as u8));
            expect.extend_from_slice(&buf);
            buf = w.write_owned(buf).unwrap();
            assert!(buf.is_empty());
            w.write_all(&i.to_le_bytes()).unwrap();
            expect.extend_from_slice(&i.to_le_bytes());
            assert!(
                w.buffers_allocated() <= MAX_BUFFERS,
                "{} buffers allocated",
                w.buffers_allocated()
            );
        }
        w.drain().unwrap();
        drop(w);
        let got = reader.join().unwrap();
        assert!(got == expect, "bytes reordered or corrupted");
    }

    #[test]
    fn a_dead_peer_fails_drain_and_later_writes() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s = TcpStream::connect(addr).unwrap();
        let (peer, _) = l.accept().unwrap();
        drop(peer);
        drop(l);
        let mut w = QueuedWriter::new(s).unwrap();
        let chunk = vec![1u8; BUFFER_BYTES];
        // The first writes may land in the socket buffer; keep writing until the reset
        // shows (bounded: a dead peer must show within a few buffers).
        let mut failed = None;
        for _ in 0..64 {
            if let Err(e) = w.write_all(&chunk).and_then(|()| w.drain()) {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("writing to a closed peer never failed");
        assert!(e.to_string().contains("sender thread"), "{e}");
        assert!(w.write_all(&chunk).and_then(|()| w.flush()).is_err());
    }
}
