//! Reading a `Pages` frame's data straight into its destination (a migration target's
//! guest memory) instead of into a frame buffer that is copied from later: one copy per
//! byte (the kernel's, socket to destination) instead of two.
//!
//! The destination holds unverified bytes until the frame's CRC has been checked at its
//! end: a caller must treat everything placed as garbage when the read fails, and must
//! not use it before the frame came back verified. A migration target can: its VM never
//! ran, and any error ends the migration and discards the VM (docs/architecture.md).

use std::io::Read;

use super::{At, FrameError, FrameReader, OwnedFrame, HEADER_LEN, TAG_LEN};
use crate::codec::le_u32;
use crate::message::{Kind, PAGE_SIZE, RUN_DESCRIPTOR_LEN};

/// Read into the destination this much at a time (one socket read where the data is
/// there), then CRC'd while it is still in the L2 cache.
const PIECE: usize = 256 << 10;

/// Where [`FrameReader::read_frame_placing`] puts page data.
pub trait PagePlacer {
    /// Whether the `npages` pages at `gpa` are memory [`place`](Self::place) gives out.
    /// Asked for every run of a frame before any is placed, so it must have no effect
    /// (a frame with one run outside is read whole and places nothing).
    fn contains(&self, gpa: u64, npages: u32) -> bool;

    /// The memory the `npages` pages at `gpa` are to be read into (exactly `npages *
    /// 4096` bytes), or why there is none (e.g. not guest memory). Each call may assume
    /// the bytes it returns are overwritten with unverified data. Called only for runs
    /// [`contains`](Self::contains) accepted.
    fn place(&mut self, gpa: u64, npages: u32) -> Result<&mut [u8], String>;
}

impl<R: Read> FrameReader<R> {
    /// [`read_frame_owned`](Self::read_frame_owned), except that the data of a plain
    /// `Pages` frame is read straight into the memory `placer` gives for each run, never
    /// into `spare`: the frame comes back with [`OwnedFrame::placed`] = the bytes placed,
    /// its buffer holding the payload up to the data (epoch, run table), and its
    /// `payload_crc` covering the whole payload. The frame CRC is checked after the data
    /// is placed: on an error the placed bytes are unverified (see the module docs).
    ///
    /// Read as by `read_frame_owned` (nothing placed): every frame of a keyed session (a
    /// sealed payload is opened as a whole), every other kind, and a `Pages` frame whose
    /// run table is not valid or names memory `placer` refuses (its message then fails to
    /// decode or to apply where the caller handles it).
    pub fn read_frame_placing(
        &mut self,
        spare: Vec<u8>,
        placer: &mut dyn PagePlacer,
    ) -> Result<Option<OwnedFrame>, FrameError> {
        let at = At {
            frame: self.next_seq,
            offset: self.offset,
        };
        if self.key.is_some() {
            return self.read_frame_owned(spare);
        }
        if self.failed {
            return Err(FrameError::Failed { at });
        }
        self.failed = true;
        let Some((header, h)) = self.read_header(at)? else {
            self.failed = false;
            return Ok(None);
        };
        let (len, placed) = if header.kind == Kind::Pages as u16 {
            self.read_pages_placing(at, &header, &h, placer)?
        } else {
            (self.read_payload(at, header, &h)?.1, 0)
        };
        // Plain session: every frame is authenticated (by its CRC).
        self.failed = false;
        self.next_seq += 1;
        let buf = std::mem::replace(&mut self.buf, spare);
        Ok(Some(OwnedFrame {
            kind: header.kind,
            at,
            buf,
            len,
            authenticated: true,
            payload_crc: self.payload_crc,
            sealed: false,
            placed,
        }))
    }

    /// The payload of a plain `Pages` frame: epoch, run count and table into `self.buf`,
    /// the data into the placer's memory, then the CRC check. Returns (bytes in
    /// `self.buf`, bytes placed); a table that does not describe the payload exactly, or
    /// a run the placer refuses, reads the rest into `self.buf` (nothing placed).
    fn read_pages_placing(
        &mut self,
        at: At,
        header: &super::FrameHeader,
        h: &[u8; HEADER_LEN],
        placer: &mut dyn PagePlacer,
    ) -> Result<(usize, usize), FrameError> {
        let len = header.payload_len as usize;
        // Epoch and run count first.
        let head = 12.min(len);
        let mut got = self.read_into_buf(0, head, len, at)?;
        let count = if got == 12 {
            le_u32(&self.buf, 8) as usize
        } else {
            0
        };
        let table_end = 12usize.saturating_add(count.saturating_mul(RUN_DESCRIPTOR_LEN));
        let runs = if count > 0 && table_end <= len {
            got += self.read_into_buf(got, table_end, len, at)?;
            exact_runs(&self.buf[12..table_end], len - table_end)
        } else {
            None
        };
        let Some(runs) = runs else {
            return self.read_rest_into_buf(at, h, got, len).map(|n| (n, 0));
        };
        // Every run must be placeable before any byte is placed.
        if !runs.iter().all(|&(gpa, n)| placer.contains(gpa, n)) {
            return self.read_rest_into_buf(at, h, got, len).map(|n| (n, 0));
        }
        let mut crc = crc32c::crc32c(&self.buf[..table_end]);
        // Payload bytes read so far (for a truncation's report, as the whole-frame read
        // gives it).
        let mut done = table_end;
        for &(gpa, n) in &runs {
            let dst = placer
                .place(gpa, n)
                .map_err(|_| FrameError::Failed { at })?;
            for piece in dst.chunks_mut(PIECE) {
                let want = piece.len();
                let got = self.fill(piece, at)?;
                done += got;
                if got < want {
                    return Err(FrameError::Truncated {
                        at,
                        part: "payload",
                        got: done,
                        want: len,
                    });
                }
                crc = crc32c::crc32c_append(crc, piece);
            }
        }
        self.check_crc(at, h, crc, len)?;
        Ok((table_end, len - table_end))
    }

    /// Reads `self.buf[from..to]` (grown as needed) of a `len`-byte payload; returns the
    /// bytes read.
    fn read_into_buf(
        &mut self,
        from: usize,
        to: usize,
        len: usize,
        at: At,
    ) -> Result<usize, FrameError> {
        if self.buf.len() < to {
            self.buf.resize(to, 0);
        }
        let mut buf = std::mem::take(&mut self.buf);
        let got = self.fill(&mut buf[from..to], at);
        self.buf = buf;
        let got = got?;
        if got < to - from {
            return Err(FrameError::Truncated {
                at,
                part: "payload",
                got: from + got,
                want: len,
            });
        }
        Ok(got)
    }

    /// The rest of a payload of which `done` bytes are in `self.buf`, its trailer and
    /// CRC check; returns the payload length.
    fn read_rest_into_buf(
        &mut self,
        at: At,
        h: &[u8; HEADER_LEN],
        done: usize,
        len: usize,
    ) -> Result<usize, FrameError> {
        self.read_into_buf(done, len, len, at)?;
        let crc = crc32c::crc32c(&self.buf[..len]);
        self.check_crc(at, h, crc, len)?;
        Ok(len)
    }

    /// Reads a plain frame's CRC trailer and checks it against the header `h` and the
    /// payload's CRC `payload_crc` (`len` bytes).
    fn check_crc(
        &mut self,
        at: At,
        h: &[u8; HEADER_LEN],
        payload_crc: u32,
        len: usize,
    ) -> Result<(), FrameError> {
        let mut trailer = [0u8; TAG_LEN];
        let got = self.fill(&mut trailer[..super::CRC_LEN], at)?;
        if got < super::CRC_LEN {
            return Err(FrameError::Truncated {
                at,
                part: "trailer",
                got,
                want: super::CRC_LEN,
            });
        }
        self.verify_plain(at, h, payload_crc, len, le_u32(&trailer, 0))
    }
}

/// The runs `(gpa, npages)` of a `Pages` run table, if they are valid (aligned, not
/// empty, not overflowing) and their pages fill exactly `data` bytes: what the message
/// decoder requires of a `Pages` payload.
fn exact_runs(table: &[u8], data: usize) -> Option<Vec<(u64, u32)>> {
    let pages = crate::message::check_runs(table, 0).ok()?;
    (pages.checked_mul(PAGE_SIZE as u64) == Some(data as u64))
        .then(|| crate::message::runs_iter(table).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthKey, Nonce};
    use crate::epoch::{AssemblerConfig, EpochAssembler, Progress};
    use crate::stream::MessageWriter;

    /// Guest memory of `pages` pages at gpa 0; counts the runs placed.
    struct Mem(Vec<u8>, usize);

    impl Mem {
        fn new(fill: u8, pages: usize) -> Self {
            Mem(vec![fill; pages * PAGE_SIZE], 0)
        }
    }

    impl PagePlacer for Mem {
        fn contains(&self, gpa: u64, npages: u32) -> bool {
            gpa as usize + npages as usize * PAGE_SIZE <= self.0.len()
        }

        fn place(&mut self, gpa: u64, npages: u32) -> Result<&mut [u8], String> {
            assert!(self.contains(gpa, npages), "placed without asking");
            self.1 += 1;
            let (start, len) = (gpa as usize, npages as usize * PAGE_SIZE);
            self.0
                .get_mut(start..start + len)
                .ok_or_else(|| format!("{gpa:#x} is outside"))
        }
    }

    fn page(salt: u64, n: usize) -> Vec<u8> {
        (0..n * PAGE_SIZE)
            .map(|i| (i as u64 ^ salt) as u8)
            .collect()
    }

    /// Two epochs of pages (one run beyond the 16 pages of `Mem` when `outside`).
    fn stream(keyed: bool, outside: bool) -> Vec<u8> {
        let mut w = MessageWriter::new(Vec::new());
        if keyed {
            let key = AuthKey::new(&[5; 32])
                .unwrap()
                .session_keys(&Nonce([1; 32]), &Nonce([2; 32]))
                .initiator_to_responder;
            w.frames_mut().set_key(key);
        }
        for e in 1..=2u64 {
            w.begin_epoch(e).unwrap();
            w.send_page_runs(&[(0, 2), (8 * 4096, 3)], &page(e, 5))
                .unwrap();
            let far = if outside { 1 << 30 } else { 12 * 4096 };
            w.send_page_runs(&[(far, 1)], &page(e + 10, 1)).unwrap();
            w.commit_epoch().unwrap();
        }
        w.flush().unwrap();
        w.frames().get_ref().clone()
    }

    fn reader(bytes: &[u8], keyed: bool) -> FrameReader<&[u8]> {
        let mut r = FrameReader::new(bytes);
        if keyed {
            let key = AuthKey::new(&[5; 32])
                .unwrap()
                .session_keys(&Nonce([1; 32]), &Nonce([2; 32]))
                .initiator_to_responder;
            r.set_key(key);
        }
        r
    }

    #[test]
    fn placed_pages_commit_through_an_on_arrival_assembler_with_their_data_in_place() {
        let bytes = stream(false, false);
        let mut r = reader(&bytes, false);
        let mut mem = Mem::new(0, 16);
        let mut asm = EpochAssembler::new(AssemblerConfig::migration()).pages_applied_on_arrival();
        let (mut placed, mut committed) = (0, Vec::new());
        while let Some(f) = r.read_frame_placing(Vec::new(), &mut mem).unwrap() {
            if f.kind == Kind::Pages as u16 {
                assert!(f.placed > 0, "a plain Pages frame must be placed");
                assert!(f.len < 100, "the frame buffer holds the run table only");
                placed += 1;
            }
            match asm.feed_frame(f).unwrap().progress {
                Progress::Committed(s) => {
                    committed.push(s.epoch());
                    asm.recycle(s);
                }
                Progress::Pending | Progress::Other => {}
            }
        }
        // Every epoch's digest matched (counted from the placed frames' CRCs), and the
        // memory holds the last epoch's pages.
        assert_eq!((placed, committed), (4, vec![1, 2]));
        let want = page(2, 5);
        assert!(mem.0[..2 * PAGE_SIZE] == want[..2 * PAGE_SIZE]);
        assert!(mem.0[8 * PAGE_SIZE..11 * PAGE_SIZE] == want[2 * PAGE_SIZE..]);
        assert!(mem.0[12 * PAGE_SIZE..13 * PAGE_SIZE] == page(12, 1)[..]);
        assert!(mem.0[2 * PAGE_SIZE..8 * PAGE_SIZE].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_placed_frame_is_refused_by_an_assembler_that_stages_pages() {
        let bytes = stream(false, false);
        let mut r = reader(&bytes, false);
        let mut mem = Mem::new(0, 16);
        let mut asm = EpochAssembler::new(AssemblerConfig::migration());
        let begin = r.read_frame_placing(Vec::new(), &mut mem).unwrap().unwrap();
        asm.feed_frame(begin).unwrap();
        let pages = r.read_frame_placing(Vec::new(), &mut mem).unwrap().unwrap();
        assert!(pages.placed > 0);
        assert!(asm.feed_frame(pages).is_err(), "staged without its data");
    }

    #[test]
    fn keyed_frames_and_pages_outside_the_placer_are_read_whole() {
        for (keyed, outside) in [(true, false), (false, true)] {
            let bytes = stream(keyed, outside);
            let mut r = reader(&bytes, keyed);
            let mut mem = Mem::new(0x77, 16);
            let mut whole = 0;
            while let Some(f) = r.read_frame_placing(Vec::new(), &mut mem).unwrap() {
                if f.kind == Kind::Pages as u16 && f.placed == 0 {
                    // Read into the frame buffer: it decodes as any frame.
                    let m = crate::stream::decode_frame(f.kind, f.at, f.payload(), true).unwrap();
                    assert!(matches!(m, crate::message::Message::Pages(_)));
                    whole += 1;
                }
            }
            // Keyed: every Pages frame; outside: the far run's frame of each epoch, and
            // none of its bytes went into the memory.
            assert_eq!(whole, if keyed { 4 } else { 2 }, "keyed {keyed}");
            if keyed {
                assert!(
                    mem.0.iter().all(|b| *b == 0x77),
                    "a sealed frame was placed"
                );
            }
            // Placed: the two in-memory runs of each epoch's first frame, nothing else.
            assert_eq!(mem.1, if keyed { 0 } else { 4 }, "keyed {keyed}");
        }
    }

    #[test]
    fn a_frame_with_one_run_outside_places_none_of_its_runs() {
        let mut w = MessageWriter::new(Vec::new());
        w.begin_epoch(1).unwrap();
        // The first two runs are inside the placer's 16 pages, the last is not.
        w.send_page_runs(&[(0, 2), (4 * 4096, 1), (16 * 4096, 1)], &page(3, 4))
            .unwrap();
        w.flush().unwrap();
        let bytes = w.frames().get_ref().clone();
        let mut r = reader(&bytes, false);
        let mut mem = Mem::new(0x77, 16);
        r.read_frame_placing(Vec::new(), &mut mem).unwrap().unwrap();
        let f = r.read_frame_placing(Vec::new(), &mut mem).unwrap().unwrap();
        assert_eq!((f.kind, f.placed), (Kind::Pages as u16, 0), "read whole");
        assert_eq!(mem.1, 0, "a run of a refused frame was placed");
        assert!(mem.0.iter().all(|b| *b == 0x77));
    }

    #[test]
    fn a_truncated_placed_frame_reports_what_the_whole_frame_read_reports() {
        let bytes = stream(false, false);
        // Cut inside the first Pages frame's data.
        let begin = HEADER_LEN + 8 + super::super::CRC_LEN;
        let cut = &bytes[..begin + HEADER_LEN + 12 + 2 * 12 + 5000];
        let mut mem = Mem::new(0, 16);
        let mut placing = reader(cut, false);
        placing.read_frame_placing(Vec::new(), &mut mem).unwrap();
        let e = placing
            .read_frame_placing(Vec::new(), &mut mem)
            .unwrap_err();
        let mut whole = reader(cut, false);
        whole.read_frame_owned(Vec::new()).unwrap();
        let want = whole.read_frame_owned(Vec::new()).unwrap_err();
        assert_eq!(e.to_string(), want.to_string());
    }

    #[test]
    fn a_flipped_data_byte_is_a_crc_error_after_it_was_placed() {
        let mut bytes = stream(false, false);
        // Inside the first Pages frame's data (after EpochBegin's frame and its header and
        // table).
        let begin = HEADER_LEN + 8 + super::super::CRC_LEN;
        bytes[begin + HEADER_LEN + 12 + 2 * 12 + 100] ^= 1;
        let mut r = reader(&bytes, false);
        let mut mem = Mem::new(0, 16);
        r.read_frame_placing(Vec::new(), &mut mem).unwrap().unwrap();
        let e = r.read_frame_placing(Vec::new(), &mut mem).unwrap_err();
        assert!(matches!(e, FrameError::FrameCrc { .. }), "{e}");
        assert!(
            r.read_frame_placing(Vec::new(), &mut mem).is_err(),
            "read on after it"
        );
    }
}
