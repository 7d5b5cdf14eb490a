//! Frames read and verified on their own thread: the socket reads, the CRC checks and
//! the decryption of a keyed session run there, while the consumer decodes and applies
//! the previous frames (a migration target writing pages into its VM).
//!
//! The thread hands each verified frame over in an owned buffer (no copy: the frame
//! reader's buffer is swapped for a spare one the consumer gave back). The first error
//! ends the thread; the consumer gets it in order, after every frame before it.
//!
//! With a [`Placer`] ([`FramesAhead::start_placing`], a migration target's plain session)
//! the thread also writes the pages: a `Pages` frame's data is read from the socket
//! straight into the placer's memory (no frame buffer, no copy on the consumer's side)
//! and a `ZeroPages` frame is applied once verified, both in stream order. The consumer
//! then writes no page at all; [`FramesAhead::recv_frame_applied`] says which frames'
//! pages the thread applied.

use std::io::Read;
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use ftvm_wire::frame::PagePlacer;
use ftvm_wire::{decode_frame, FrameError, FrameReader, Message, OwnedFrame, RecvError};

/// Verified frames that may wait for the consumer (each up to the payload limit, in
/// practice about 1 MiB of pages).
pub const AHEAD_FRAMES: usize = 16;

/// Where the reading thread writes pages (see the module docs): `place` gives the memory
/// a `Pages` run is read into, `zero` applies a verified `ZeroPages` run (`contains`, of
/// [`PagePlacer`], says whether a run is memory this placer writes).
pub trait Placer: PagePlacer + Send {
    /// Make the `npages` pages at `gpa` zero, or say why not (nothing changed then).
    fn zero(&mut self, gpa: u64, npages: u32) -> Result<(), String>;
}

/// A verified frame, and whether the reading thread applied its pages.
type Arrived = (OwnedFrame, bool);

/// The consumer's end (see the module docs).
#[derive(Debug)]
pub struct FramesAhead {
    rx: Receiver<Result<Option<Arrived>, FrameError>>,
    spare: SyncSender<Vec<u8>>,
    current: Option<OwnedFrame>,
    /// To cut the socket's reading side when dropped (a thread blocked on a silent peer).
    socket: TcpStream,
    ended: bool,
}

impl FramesAhead {
    /// Start reading `frames` (over `socket`'s reading side) on a new thread.
    pub fn start<R: Read + Send + 'static>(
        frames: FrameReader<R>,
        socket: &TcpStream,
    ) -> std::io::Result<Self> {
        Self::spawn(frames, socket, None)
    }

    /// [`start`](Self::start), the thread writing the pages through `placer` (see the
    /// module docs). For a plain session: the frames of a keyed one are opened whole, so
    /// their pages are left to the consumer (`recv_frame_applied` says `false`).
    pub fn start_placing<R: Read + Send + 'static>(
        frames: FrameReader<R>,
        socket: &TcpStream,
        placer: Box<dyn Placer>,
    ) -> std::io::Result<Self> {
        Self::spawn(frames, socket, Some(placer))
    }

    fn spawn<R: Read + Send + 'static>(
        mut frames: FrameReader<R>,
        socket: &TcpStream,
        mut placer: Option<Box<dyn Placer>>,
    ) -> std::io::Result<Self> {
        let socket = socket.try_clone()?;
        let (tx, rx) = sync_channel(AHEAD_FRAMES);
        let (spare, spares) = sync_channel::<Vec<u8>>(AHEAD_FRAMES + 2);
        std::thread::Builder::new()
            .name("ft-mig-recv".into())
            .spawn(move || loop {
                let buf = spares.try_recv().unwrap_or_default();
                let r = match placer.as_deref_mut() {
                    Some(p) => frames
                        .read_frame_placing(buf, p)
                        .map(|f| f.map(|f| apply_zero_pages(f, p))),
                    None => frames.read_frame_owned(buf).map(|f| f.map(|f| (f, false))),
                };
                let last = !matches!(r, Ok(Some(_)));
                if tx.send(r).is_err() || last {
                    return;
                }
            })?;
        Ok(FramesAhead {
            rx,
            spare,
            current: None,
            socket,
            ended: false,
        })
    }

    /// The next message, as [`ftvm_wire::MessageReader::recv`]: `Ok(None)` when the peer
    /// closed the connection at a frame boundary. After an error, every call fails.
    pub fn recv(&mut self) -> Result<Option<Message<'_>>, RecvError> {
        if let Some(done) = self.current.take() {
            self.give_back(done.buf);
        }
        match self.recv_frame()? {
            None => Ok(None),
            Some(f) => {
                let f = self.current.insert(f);
                let decoded = decode_frame(f.kind, f.at, f.payload(), f.authenticated);
                if decoded.is_err() {
                    self.ended = true;
                }
                decoded.map(Some)
            }
        }
    }

    /// The next verified frame, undecoded (for
    /// [`EpochAssembler::feed_frame`](ftvm_wire::EpochAssembler::feed_frame)); hand its
    /// buffer back with [`give_back`](Self::give_back) when done. `Ok(None)` and errors
    /// as [`recv`](Self::recv).
    pub fn recv_frame(&mut self) -> Result<Option<OwnedFrame>, RecvError> {
        Ok(self.recv_frame_applied()?.map(|(f, _)| f))
    }

    /// [`recv_frame`](Self::recv_frame), and whether the reading thread applied the
    /// frame's pages (a placed `Pages` frame, or a `ZeroPages` frame it zeroed; always
    /// `false` without a placer).
    pub fn recv_frame_applied(&mut self) -> Result<Option<(OwnedFrame, bool)>, RecvError> {
        if self.ended {
            return Err(RecvError::Frame(FrameError::Failed {
                at: ftvm_wire::At {
                    frame: 0,
                    offset: 0,
                },
            }));
        }
        let next = match self.rx.recv() {
            Ok(r) => r,
            Err(_) => {
                self.ended = true;
                return Ok(None);
            }
        };
        match next {
            Ok(Some(f)) => Ok(Some(f)),
            Ok(None) => {
                self.ended = true;
                Ok(None)
            }
            Err(e) => {
                self.ended = true;
                Err(RecvError::Frame(e))
            }
        }
    }

    /// A frame buffer for the reading thread to read a later frame into (no allocation).
    pub fn give_back(&mut self, buf: Vec<u8>) {
        let _thread_gone_or_enough_spares = self.spare.try_send(buf);
    }

    /// Marks the stream ended (a frame's content was refused): later calls fail.
    pub fn end(&mut self) {
        self.ended = true;
    }
}

/// On the reading thread, for a verified frame read with a placer: a placed `Pages`
/// frame's pages are applied already; a `ZeroPages` frame's runs are zeroed now, in
/// stream order (all or, when one is refused, none: the consumer then refuses the frame).
fn apply_zero_pages(frame: OwnedFrame, placer: &mut dyn Placer) -> Arrived {
    if frame.placed > 0 {
        return (frame, true);
    }
    if frame.kind != ftvm_wire::Kind::ZeroPages as u16 {
        return (frame, false);
    }
    let applied = match decode_frame(frame.kind, frame.at, frame.payload(), frame.authenticated) {
        Ok(Message::ZeroPages(z)) => {
            // Every run must be guest memory before any is zeroed.
            z.runs().all(|(gpa, n)| placer.contains(gpa, n))
                && z.runs().all(|(gpa, n)| placer.zero(gpa, n).is_ok())
        }
        // The consumer's decode reports it.
        _ => false,
    };
    (frame, applied)
}

impl Drop for FramesAhead {
    fn drop(&mut self) {
        // The thread may be blocked reading from a peer that sends nothing more: wake it
        // (it then ends on its own; nothing waits for it).
        let _already_closed = self.socket.shutdown(Shutdown::Read);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::tcp_pair as pair;
    use ftvm_wire::{MessageReader, MessageWriter};

    #[test]
    fn messages_arrive_in_order_with_their_contents_then_the_end() {
        let (a, b) = pair();
        let sender = std::thread::spawn(move || {
            let mut w = MessageWriter::new(a);
            for e in 1..=40u64 {
                w.begin_epoch(e).unwrap();
                let page: Vec<u8> = (0..4096 * 3).map(|i| (i as u64 * e) as u8).collect();
                w.send_pages([(e * 0x10000, &page[..])]).unwrap();
                w.commit_epoch().unwrap();
            }
            w.flush().unwrap();
        });
        let frames = MessageReader::new(b.try_clone().unwrap()).into_frames();
        let mut ahead = FramesAhead::start(frames, &b).unwrap();
        let mut seen = 0u64;
        let mut epoch_pages = Vec::new();
        while let Some(m) = ahead.recv().unwrap() {
            if let Message::Pages(p) = &m {
                for (gpa, data) in p.runs() {
                    let e = gpa / 0x10000;
                    assert!(data
                        .iter()
                        .enumerate()
                        .all(|(i, b)| *b == (i as u64 * e) as u8));
                    epoch_pages.push(e);
                }
            }
            seen += 1;
        }
        sender.join().unwrap();
        assert_eq!(epoch_pages, (1..=40).collect::<Vec<_>>());
        assert_eq!(seen, 40 * 3);
    }

    #[test]
    fn a_corrupted_stream_is_an_error_after_the_good_frames() {
        let (a, b) = pair();
        let mut w = MessageWriter::new(Vec::new());
        w.begin_epoch(1).unwrap();
        w.commit_epoch().unwrap();
        w.begin_epoch(2).unwrap();
        w.flush().unwrap();
        let mut bytes = w.frames().get_ref().clone();
        let n = bytes.len();
        bytes[n - 3] ^= 0x40; // inside the last frame
        std::thread::spawn(move || {
            let mut a = a;
            std::io::Write::write_all(&mut a, &bytes).unwrap();
        });
        let frames = MessageReader::new(b.try_clone().unwrap()).into_frames();
        let mut ahead = FramesAhead::start(frames, &b).unwrap();
        assert!(matches!(ahead.recv(), Ok(Some(Message::EpochBegin { .. }))));
        assert!(matches!(ahead.recv(), Ok(Some(Message::EpochCommit(_)))));
        let e = ahead.recv().unwrap_err();
        assert!(e.to_string().contains("CRC"), "{e}");
        assert!(ahead.recv().is_err(), "an error must end the stream");
    }

    /// Guest memory for the placing tests: `pages` pages from gpa 0.
    struct MemPlacer(Vec<u8>);

    impl PagePlacer for MemPlacer {
        fn contains(&self, gpa: u64, npages: u32) -> bool {
            gpa as usize + npages as usize * 4096 <= self.0.len()
        }
        fn place(&mut self, gpa: u64, npages: u32) -> Result<&mut [u8], String> {
            let (start, len) = (gpa as usize, npages as usize * 4096);
            self.0
                .get_mut(start..start + len)
                .ok_or_else(|| format!("{gpa:#x} outside"))
        }
    }

    impl Placer for MemPlacer {
        fn zero(&mut self, gpa: u64, npages: u32) -> Result<(), String> {
            self.place(gpa, npages)?.fill(0);
            Ok(())
        }
    }

    fn pages_stream(flip_in_frame: Option<usize>) -> (Vec<u8>, Vec<usize>) {
        // Epoch 1: three Pages frames of 8 pages at gpa 0, 8 and 16 pages, then a
        // ZeroPages frame over the second run, then the commit.
        let mut w = MessageWriter::new(Vec::new());
        w.begin_epoch(1).unwrap();
        let mut data_at = Vec::new();
        for f in 0..3u64 {
            let page: Vec<u8> = (0..8 * 4096).map(|i| (i as u64 + 1 + f) as u8).collect();
            w.flush().unwrap();
            // Where this frame's page data starts: after its header and run table.
            data_at.push(w.frames().get_ref().len() + 28 + 12 + 12);
            w.send_page_runs(&[(f * 8 * 4096, 8)], &page).unwrap();
        }
        w.send_zero_pages([(8 * 4096, 8)]).unwrap();
        w.commit_epoch().unwrap();
        w.flush().unwrap();
        let mut bytes = w.frames().get_ref().clone();
        if let Some(f) = flip_in_frame {
            bytes[data_at[f] + 5000] ^= 0x20;
        }
        (bytes, data_at)
    }

    /// What the consumer got per frame: (kind, bytes placed, applied) or the error.
    type Got = Result<(u16, usize, bool), String>;

    fn read_placing(bytes: Vec<u8>) -> (Vec<Got>, Vec<u8>) {
        let (a, b) = pair();
        std::thread::spawn(move || {
            let mut a = a;
            let _ = std::io::Write::write_all(&mut a, &bytes);
        });
        let frames = MessageReader::new(b.try_clone().unwrap()).into_frames();
        let mem = MemPlacer(vec![0xee; 32 * 4096]);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        // The placer moves to the reading thread: give it a way to report its memory.
        struct Reporting(MemPlacer, std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl PagePlacer for Reporting {
            fn contains(&self, gpa: u64, npages: u32) -> bool {
                self.0.contains(gpa, npages)
            }
            fn place(&mut self, gpa: u64, npages: u32) -> Result<&mut [u8], String> {
                self.0.place(gpa, npages)
            }
        }
        impl Placer for Reporting {
            fn zero(&mut self, gpa: u64, npages: u32) -> Result<(), String> {
                self.0.zero(gpa, npages)
            }
        }
        impl Drop for Reporting {
            fn drop(&mut self) {
                *self.1.lock().unwrap() = std::mem::take(&mut self.0 .0);
            }
        }
        let mut ahead =
            FramesAhead::start_placing(frames, &b, Box::new(Reporting(mem, seen.clone()))).unwrap();
        let mut out = Vec::new();
        loop {
            match ahead.recv_frame_applied() {
                Ok(Some((f, applied))) => {
                    out.push(Ok((f.kind, f.placed, applied)));
                    ahead.give_back(f.buf);
                }
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    assert!(ahead.recv_frame_applied().is_err(), "an error must end it");
                    break;
                }
            }
        }
        drop(ahead);
        // The reading thread ends after the stream's end or its error, dropping the placer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while seen.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let memory = seen.lock().unwrap().clone();
        (out, memory)
    }

    #[test]
    fn placed_pages_land_in_stream_order_with_their_zeroing() {
        let (bytes, _) = pages_stream(None);
        let (frames, memory) = read_placing(bytes);
        let pages = ftvm_wire::Kind::Pages as u16;
        let zero = ftvm_wire::Kind::ZeroPages as u16;
        let got: Vec<(u16, usize, bool)> = frames.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(got.len(), 6, "{got:?}");
        for f in &got[1..4] {
            assert_eq!(*f, (pages, 8 * 4096, true), "a Pages frame was not placed");
        }
        assert_eq!(
            got[4],
            (zero, 0, true),
            "the ZeroPages frame was not applied"
        );
        // Frame 0 and 2 hold their data; frame 1's pages were zeroed after they were
        // written (stream order); the rest is untouched.
        for f in [0u64, 2] {
            let at = (f * 8 * 4096) as usize;
            assert!(
                memory[at..at + 8 * 4096]
                    .iter()
                    .enumerate()
                    .all(|(i, b)| *b == (i as u64 + 1 + f) as u8),
                "frame {f}'s pages differ"
            );
        }
        assert!(memory[8 * 4096..16 * 4096].iter().all(|b| *b == 0));
        assert!(memory[24 * 4096..].iter().all(|b| *b == 0xee));
    }

    #[test]
    fn a_corrupted_placed_frame_ends_the_stream_before_anything_after_it() {
        let (bytes, _) = pages_stream(Some(1));
        let (frames, _) = read_placing(bytes);
        // EpochBegin and the first Pages frame arrive; the second (its data corrupted in
        // transit after it was placed) is an error, and nothing after it is delivered
        // (not the third frame, not the zeroing, not the commit).
        assert_eq!(frames.len(), 3, "{frames:?}");
        assert!(frames[0].is_ok() && frames[1].is_ok());
        let e = frames[2].as_ref().unwrap_err();
        assert!(e.contains("frame CRC mismatch"), "{e}");
    }
}
