//! Fewer wake-ups of a connection's reader: while a large frame is being read, the kernel is
//! asked (`SO_RCVLOWAT`) not to wake the reader until [`WAKE_BYTES`] of it have arrived,
//! instead of once per loopback packet (64 KiB) or per network segment.
//!
//! Each wake-up of a blocked reader costs both sides: the sending side's softirq wakes the
//! reader (an inter-processor interrupt, an exit to the hypervisor when the machine is a
//! VM) and the reader goes through the scheduler once more for one packet's worth. A 1 MiB
//! page frame on loopback was 16 wake-ups; with the mark it is about 5.
//!
//! The mark is only ever raised to at most **half** of what the frame being read still has
//! to deliver ([`ftvm_wire::frame::ReadWaitHint`]). Half, not all: Linux wakes a reader
//! blocked in `recv` when the bytes not yet copied reach the mark, and a `recv` that
//! copied part of what it asked for and then went to sleep no longer counts that part. A
//! read that found `A` bytes queued, copied them and slept needs `mark` more; with a mark
//! of `left`, only `left - A` come, and the reader sleeps until the peer sends something
//! else (a migration target stalled for 27 s to 120 s this way, waiting for the rest of
//! the full copy while the source waited for its acknowledgement). With `mark <= left / 2`
//! either `A >= mark` (the read returns at once) or `left - A > mark` more arrive. Under
//! [`MIN_MARK`] (one loopback packet) the mark goes back to 1 byte, the kernel default, so
//! small messages cost no system call.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;

use ftvm_wire::frame::ReadWaitHint;

/// The receive low-water mark while at least this much of a frame is still to come: the
/// reader wakes per 256 KiB instead of per packet, and still copies the first part of a
/// 1 MiB frame while the rest arrives.
pub const WAKE_BYTES: usize = 256 << 10;

/// Less than this still to come of a frame: the default mark (1 byte).
pub const MIN_MARK: usize = 64 << 10;

/// A [`ReadWaitHint`] that sets the socket's receive low-water mark.
#[derive(Debug)]
pub struct LowWater {
    socket: TcpStream,
    /// The mark as last set (1: the kernel default).
    current: usize,
}

impl LowWater {
    /// A hint for reads from `socket` (the same socket as the reader's: the mark belongs to
    /// the socket, not to the descriptor).
    pub fn new(socket: &TcpStream) -> io::Result<Self> {
        Ok(LowWater {
            socket: socket.try_clone()?,
            current: 1,
        })
    }

    /// The mark for a frame with `left` bytes still to come: never more than half of
    /// `left` (see the module's documentation for why not all of it); less than one
    /// loopback packet ([`MIN_MARK`]) is not worth a system call (the default, 1 byte).
    pub fn mark_for(left: usize) -> usize {
        match left / 2 {
            h if h >= WAKE_BYTES => WAKE_BYTES,
            h if h >= MIN_MARK => h,
            _ => 1,
        }
    }
}

impl ReadWaitHint for LowWater {
    fn before_read(&mut self, frame_bytes_left: usize) {
        let want = Self::mark_for(frame_bytes_left);
        if want == self.current {
            return;
        }
        match set_rcvlowat(&self.socket, want) {
            Ok(()) => self.current = want,
            // Not raised: the reader just wakes more often.
            Err(_) if want > self.current => {}
            // Raised but cannot be lowered again (the socket is gone or broken): a later
            // read could wait for bytes that never come, so end the reading side instead;
            // the reader sees the end of the stream and fails as for a lost link.
            Err(_) => {
                let _ = self.socket.shutdown(Shutdown::Read);
            }
        }
    }
}

/// Set `SO_RCVLOWAT` on `socket`.
pub fn set_rcvlowat(socket: &TcpStream, bytes: usize) -> io::Result<()> {
    set_socket_int(socket, libc::SO_RCVLOWAT, bytes)
}

/// Set the integer socket option `option` (level `SOL_SOCKET`) on `socket`.
fn set_socket_int(socket: &TcpStream, option: libc::c_int, value: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from the valid pointer to `v`;
    // the descriptor is owned by `socket` and open for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            std::ptr::addr_of!(v).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The socket's current `SO_RCVLOWAT`.
pub fn rcvlowat(socket: &TcpStream) -> io::Result<usize> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes to the valid, writable `v` and updates
    // `len`; the descriptor is owned by `socket` and open for the duration of the call.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            std::ptr::addr_of_mut!(v).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(usize::try_from(v).unwrap_or(0))
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Read, Write};
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::channel;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use ftvm_wire::auth::TAG_LEN;
    use ftvm_wire::frame::HEADER_LEN;
    use ftvm_wire::{AuthKey, FrameReader, FrameWriter, Nonce};

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let (a, b) = crate::test_support::tcp_pair();
        // A reader that waits for bytes that never come fails the test instead of hanging.
        b.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        (a, b)
    }

    /// The socket under the reader's buffer: at every read it checks that the kernel was
    /// not asked to wait for more than the peer has committed to send, and counts reads.
    struct Checked {
        socket: TcpStream,
        /// Bytes the peer has committed to send (counted before it writes them).
        committed: Arc<AtomicUsize>,
        received: usize,
        reads: Arc<AtomicUsize>,
        /// (mark, bytes still to come) at reads where the mark exceeded them.
        violations: Arc<Mutex<Vec<(usize, usize)>>>,
        highest_mark: Arc<AtomicUsize>,
    }

    impl Read for Checked {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let mark = rcvlowat(&self.socket)?;
            let coming = self.committed.load(Ordering::SeqCst) - self.received;
            // A read may copy up to `mark - 1` queued bytes and then sleep until `mark`
            // more arrive: those must be coming.
            if mark > 1 && 2 * mark - 1 > coming {
                self.violations.lock().unwrap().push((mark, coming));
            }
            self.highest_mark.fetch_max(mark, Ordering::SeqCst);
            self.reads.fetch_add(1, Ordering::SeqCst);
            let n = self.socket.read(buf)?;
            self.received += n;
            Ok(n)
        }
    }

    struct Reading {
        reader: FrameReader<BufReader<Checked>>,
        committed: Arc<AtomicUsize>,
        reads: Arc<AtomicUsize>,
        violations: Arc<Mutex<Vec<(usize, usize)>>>,
        highest_mark: Arc<AtomicUsize>,
    }

    /// A frame reader as a connection's (crate::link): a 64 KiB buffer over the socket,
    /// the low-water hint if `hinted`.
    fn reading(socket: TcpStream, hinted: bool) -> Reading {
        let committed = Arc::new(AtomicUsize::new(0));
        let reads = Arc::new(AtomicUsize::new(0));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let highest_mark = Arc::new(AtomicUsize::new(0));
        let checked = Checked {
            socket: socket.try_clone().unwrap(),
            committed: committed.clone(),
            received: 0,
            reads: reads.clone(),
            violations: violations.clone(),
            highest_mark: highest_mark.clone(),
        };
        let mut reader = FrameReader::new(BufReader::with_capacity(64 << 10, checked));
        if hinted {
            reader.set_wait_hint(Box::new(LowWater::new(&socket).unwrap()));
        }
        Reading {
            reader,
            committed,
            reads,
            violations,
            highest_mark,
        }
    }

    fn keys() -> ftvm_wire::auth::SessionKeys {
        AuthKey::new(&[7u8; 32])
            .unwrap()
            .session_keys(&Nonce([1; 32]), &Nonce([2; 32]))
    }

    /// Frames of these payload sizes, each sent only after the one before was read: the end
    /// of every frame is the end of what the peer sends until it hears back, as an epoch's
    /// last frame before the peer waits for the acknowledgement. Large frames either side of
    /// the mark, and ends that fall inside and outside the reader's 64 KiB buffer.
    #[test]
    fn the_mark_never_asks_for_more_than_the_frame_still_delivers() {
        let sizes = [
            (1 << 20) + 7,
            5,
            WAKE_BYTES - TAG_LEN,
            WAKE_BYTES - TAG_LEN - 1,
            WAKE_BYTES + (30 << 10),
            (64 << 10) + 3,
            0,
            (4 << 20) + 100,
            (1 << 20) - HEADER_LEN,
        ];
        let (a, b) = pair();
        let mut r = reading(b, true);
        let key = keys().initiator_to_responder;
        r.reader.set_key(key.clone());
        let committed = r.committed.clone();
        let (read_tx, read_rx) = channel::<()>();
        let sender = std::thread::spawn(move || {
            let mut w = FrameWriter::new(Vec::new());
            w.set_key(key);
            for (i, n) in sizes.iter().enumerate() {
                w.get_mut().clear();
                w.write_frame(i as u16 + 1, &vec![i as u8; *n]).unwrap();
                w.flush().unwrap();
                let bytes = w.get_ref();
                committed.fetch_add(bytes.len(), Ordering::SeqCst);
                (&a).write_all(bytes).unwrap();
                // Nothing more until the reader has the whole frame.
                read_rx.recv().unwrap();
            }
            a
        });
        for (i, n) in sizes.iter().enumerate() {
            let f = r.reader.read_frame().unwrap().unwrap();
            assert_eq!((f.kind, f.payload.len()), (i as u16 + 1, *n));
            assert!(f.payload.iter().all(|&b| b == i as u8));
            read_tx.send(()).unwrap();
        }
        drop(sender.join().unwrap());
        let violations = r.violations.lock().unwrap().clone();
        assert!(
            violations.is_empty(),
            "the kernel was asked to wait for more than the peer sends (mark, coming): \
             {violations:?}"
        );
        // And the mark was used: large frames were read with it raised.
        assert_eq!(r.highest_mark.load(Ordering::SeqCst), WAKE_BYTES);
    }

    /// A 1 MiB frame that arrives 32 KiB at a time: without the mark the reader is woken
    /// for every piece (about 32 reads); with it, once per 256 KiB.
    #[test]
    fn a_large_frame_that_trickles_in_wakes_the_reader_per_256_kib() {
        let payload = vec![0x3cu8; 1 << 20];
        let mut w = FrameWriter::new(Vec::new());
        w.set_key(keys().initiator_to_responder);
        w.write_frame(9, &payload).unwrap();
        w.flush().unwrap();
        let bytes = w.get_ref().clone();
        let mut reads = Vec::new();
        for hinted in [true, false] {
            let (a, b) = pair();
            let mut r = reading(b, hinted);
            r.reader.set_key(keys().initiator_to_responder);
            r.committed.store(bytes.len(), Ordering::SeqCst);
            let piece_bytes = bytes.clone();
            let sender = std::thread::spawn(move || {
                for piece in piece_bytes.chunks(32 << 10) {
                    (&a).write_all(piece).unwrap();
                    std::thread::sleep(Duration::from_millis(3));
                }
                a
            });
            let f = r.reader.read_frame().unwrap().unwrap();
            assert_eq!(f.payload, &payload[..]);
            drop(sender.join().unwrap());
            reads.push(r.reads.load(Ordering::SeqCst));
        }
        eprintln!(
            "socket reads for a 1 MiB frame in 32 KiB pieces: with the mark {}, without {}",
            reads[0], reads[1]
        );
        // The header's read (the buffer takes the first piece), three of 256 KiB, then
        // halves of what is left (128, 64 KiB), a piece or two once the mark is back at 1
        // byte, the trailer; without the mark it is one read per piece that arrives while
        // the reader waits.
        assert!(reads[0] <= 10, "with the mark: {} reads", reads[0]);
        assert!(reads[0] * 2 < reads[1], "with the mark {reads:?}");
    }

    /// A frame whose first part is queued before the reader asks and whose rest comes a
    /// moment later, the last thing the peer sends before it waits for an answer: the read
    /// copies the first part, sleeps, and must be woken by the rest. With a mark of all that
    /// is left (the earlier rule) the kernel waited for `mark` bytes beyond those copied,
    /// which never came.
    #[test]
    fn a_frame_that_arrives_in_two_parts_is_read_without_waiting_for_more() {
        for (payload, first) in [
            (200 << 10, 100 << 10),
            (200 << 10, 20 << 10),
            (1 << 20, 300 << 10),
            (1 << 20, (1 << 20) - (200 << 10)),
            (600 << 10, 250 << 10),
        ] {
            let (a, b) = crate::test_support::tcp_pair();
            // A stall shows as a timeout, not a hung test.
            b.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            // A receive window far larger than the frame, as on a connection that has
            // carried a full copy (autotuning grew it): a small window wakes the reader
            // early (when it falls under one segment) and hides the stall.
            set_socket_int(&b, libc::SO_RCVBUF, 8 << 20).unwrap();
            let mut r = reading(b, true);
            let mut w = FrameWriter::new(Vec::new());
            w.write_frame(3, &vec![0x5au8; payload]).unwrap();
            w.flush().unwrap();
            let bytes = w.get_ref().clone();
            r.committed.store(bytes.len(), Ordering::SeqCst);
            let sender = std::thread::spawn(move || {
                (&a).write_all(&bytes[..first]).unwrap();
                // The reader copies the first part and goes to sleep meanwhile.
                std::thread::sleep(Duration::from_millis(50));
                (&a).write_all(&bytes[first..]).unwrap();
                // Then nothing more until the reader answers (here: the test ends).
                a
            });
            let t0 = std::time::Instant::now();
            let f = r.reader.read_frame();
            let took = t0.elapsed();
            drop(sender.join().unwrap());
            // A stalled read ends at the 3 s receive timeout with what it has (no error).
            assert!(
                took < Duration::from_secs(2),
                "{payload}-byte frame, {first} bytes first: the read stalled for {took:?}"
            );
            let f = f
                .unwrap_or_else(|e| {
                    panic!(
                        "{payload}-byte frame, {first} bytes first: read failed after {:?}: {e}",
                        t0.elapsed()
                    )
                })
                .unwrap();
            assert_eq!(f.payload.len(), payload);
            assert!(r.violations.lock().unwrap().is_empty());
        }
    }

    #[test]
    fn the_mark_for_a_frame_is_never_above_what_is_left() {
        for left in [
            1,
            2,
            100,
            MIN_MARK - 1,
            MIN_MARK,
            WAKE_BYTES - 1,
            WAKE_BYTES,
            WAKE_BYTES + 1,
            1 << 20,
            16 << 20,
        ] {
            let m = LowWater::mark_for(left);
            assert!(m == 1 || 2 * m <= left, "mark {m} for {left} left");
        }
        assert_eq!(LowWater::mark_for(1 << 20), WAKE_BYTES);
        assert_eq!(LowWater::mark_for(2 * WAKE_BYTES - 1), WAKE_BYTES - 1);
    }
}
