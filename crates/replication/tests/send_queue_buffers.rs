//! The migration sender queue's memory bound, counted by the allocator: however the
//! caller interleaves copied writes and frames handed over whole, and however long the
//! peer stalls, `QueuedWriter` allocates a bounded number of buffers (it reuses the ones
//! its thread gives back). Its own test binary: it installs a counting allocator.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ftvm_replication::send_queue::{QueuedWriter, BUFFER_BYTES, MAX_BUFFERS, QUEUE_DEPTH};

/// Counts the allocations (and growths) of at least [`LARGE`] bytes made on a thread that
/// turned counting on.
struct Counting;

const LARGE: usize = 64 << 10;

static LARGE_ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count(size: usize) {
    if size >= LARGE && COUNTING.try_with(Cell::get).unwrap_or(false) {
        LARGE_ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on to the system allocator unchanged; counting neither
// allocates nor touches the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: the caller's contract for `realloc`, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Byte `j` of frame `i`.
fn frame_byte(i: usize, j: usize) -> u8 {
    (i * 131 + j) as u8
}

const FRAMES: usize = 48;
const FRAME_LEN: usize = BUFFER_BYTES - 4096;

/// The caller's side: writes [`FRAMES`] frames and small writes through `w`; returns the
/// large allocations it made (the writer's buffers) and the writer's own count.
fn write_frames(mut w: QueuedWriter, mut own: Vec<Vec<u8>>) -> (usize, usize) {
    let mut held: Vec<Vec<u8>> = Vec::new();
    for i in 0..FRAMES {
        // A frame built in a buffer the writer gave back (as a frame built in place or
        // sealed is), or in one of the caller's own; the caller keeps up to three of the
        // writer's buffers at a time (a frame being built, one being sealed, one more).
        let use_own = !own.is_empty() && (i % 3 == 0 || held.len() < 3);
        let mut frame = if use_own {
            own.pop().unwrap()
        } else {
            held.remove(0)
        };
        frame.clear();
        frame.extend((0..FRAME_LEN).map(|j| frame_byte(i, j)));
        let back = w.write_owned(frame).unwrap();
        assert!(back.is_empty());
        if back.capacity() >= FRAME_LEN {
            held.push(back);
        }
        // A small copied write between frames (a control message).
        w.write_all(&(i as u32).to_le_bytes()).unwrap();
        if i % 5 == 0 {
            w.flush().unwrap();
        }
    }
    w.drain().unwrap();
    let allocated = LARGE_ALLOCS.load(Ordering::Relaxed);
    (allocated, w.buffers_allocated())
}

/// Every buffer the writer allocates is either queued (at most `QUEUE_DEPTH`), being
/// written (one), being filled (one), or was given back by its thread before the thread
/// took the next one from the queue: so it allocates at most `QUEUE_DEPTH + 2` buffers,
/// whatever the caller holds (it hands over one buffer per buffer it gets), and
/// `MAX_BUFFERS` is a backstop above that. Catches a writer that allocates a buffer per
/// frame (does not reuse what its thread gives back, or its thread drops them).
#[test]
fn the_writer_reuses_its_buffers_behind_a_stalled_peer() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        // Read nothing for a while: the socket's buffers, then the queue fill up.
        std::thread::sleep(Duration::from_millis(400));
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        all
    });
    let socket = TcpStream::connect(addr).unwrap();
    // The caller's own frames, allocated before counting starts.
    let own: Vec<Vec<u8>> = (0..4).map(|_| Vec::with_capacity(FRAME_LEN)).collect();
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        COUNTING.with(|c| c.set(true));
        let w = QueuedWriter::new(socket).unwrap();
        let _ = done.send(write_frames(w, own));
    });
    // A writer waiting for a buffer that never comes back hangs: fail instead.
    let (allocated, reported) = result
        .recv_timeout(Duration::from_secs(120))
        .expect("the writer hung (or panicked)");
    let got = reader.join().unwrap();
    eprintln!(
        "large allocations on the caller's thread: {allocated} (writer reports {reported}; \
         queue {QUEUE_DEPTH}, cap {MAX_BUFFERS})"
    );
    assert!(
        allocated <= QUEUE_DEPTH + 2 && QUEUE_DEPTH + 2 <= MAX_BUFFERS,
        "{allocated} buffers allocated for {FRAMES} frames (at most {} expected)",
        QUEUE_DEPTH + 2
    );
    assert_eq!(allocated, reported, "the writer miscounts its buffers");
    // And every byte arrived, in order.
    let mut at = 0;
    for i in 0..FRAMES {
        let frame = &got[at..at + FRAME_LEN];
        assert!(
            frame
                .iter()
                .enumerate()
                .all(|(j, b)| *b == frame_byte(i, j)),
            "frame {i} corrupted or out of order"
        );
        at += FRAME_LEN;
        assert_eq!(got[at..at + 4], (i as u32).to_le_bytes(), "after frame {i}");
        at += 4;
    }
    assert_eq!(at, got.len());
}
