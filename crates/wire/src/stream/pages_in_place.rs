//! `Pages` frames assembled in place: the caller copies page data straight into the
//! frame's own buffer (no bounce buffer, no second copy into the writer's buffer), and
//! the payload CRC is computed over that copy, piece by piece while it is in the L1 cache.
//! The frame is then handed over whole (see [`FrameWriter::set_hand_over`]). The bytes on
//! the wire are exactly those [`MessageWriter::send_page_runs`] produces for the same runs
//! and contents (one frame per call).
//!
//! The source of the data may change while it is copied (a running guest's memory): the
//! CRC covers the bytes copied, never the source, so a frame always carries a CRC of the
//! bytes it carries.
//!
//! [`FrameWriter::set_hand_over`]: crate::FrameWriter::set_hand_over

use std::io::Write;

use crate::codec::Sink;
use crate::frame::{CRC_LEN, HEADER_LEN};
use crate::message::{Kind, PAGE_SIZE, RUN_DESCRIPTOR_LEN};

use super::{check_item, MessageWriter, SendError};

/// Copied, then CRC'd while it is still in the L1 cache.
const PIECE: usize = 16 << 10;

/// A `Pages` frame of the open epoch being filled (see the module docs): from
/// [`MessageWriter::begin_pages_in_place`], filled with [`PagesInPlace::append`] or
/// [`PagesInPlace::append_copy`], sent with [`MessageWriter::send_pages_in_place`].
#[derive(Debug)]
pub struct PagesInPlace {
    /// Header room, then the payload so far.
    buf: Vec<u8>,
    epoch: u64,
    pages: u64,
    /// Page data bytes still to append.
    data_left: usize,
    /// CRC32C of the payload so far.
    crc: u32,
}

/// Bytes a frame buffer needs for a `Pages` frame of `runs` descriptors and `pages`
/// pages: header, payload (epoch, run count, run table, data) and CRC.
pub const fn pages_frame_len(runs: usize, pages: usize) -> usize {
    HEADER_LEN + 12 + runs * RUN_DESCRIPTOR_LEN + pages * PAGE_SIZE + CRC_LEN
}

impl PagesInPlace {
    /// Page data bytes still expected.
    pub fn data_left(&self) -> usize {
        self.data_left
    }

    fn room(&self, len: usize) -> Result<(), SendError> {
        if len > self.data_left {
            return Err(SendError::InvalidItem {
                kind: Kind::Pages,
                index: 0,
                problem: format!(
                    "{len} bytes of page data appended where {} were left",
                    self.data_left
                ),
            });
        }
        Ok(())
    }

    /// Append the next `data.len()` bytes of the runs' contents.
    pub fn append(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.room(data.len())?;
        for piece in data.chunks(PIECE) {
            self.buf.extend_from_slice(piece);
            self.crc = crc32c::crc32c_append(self.crc, piece);
        }
        self.data_left -= data.len();
        Ok(())
    }

    /// Append the next `len` bytes of the runs' contents, copied from `src`, which may
    /// change meanwhile (memory a running guest writes): the CRC is computed over the copy
    /// in the frame's buffer, never over `src`.
    ///
    /// # Safety
    /// `src .. src + len` must be readable for the whole call and must not overlap this
    /// frame's buffer. It may be written concurrently by others (the copy then holds
    /// either value of a changed byte; the frame's CRC matches the copy).
    pub unsafe fn append_copy(&mut self, src: *const u8, len: usize) -> Result<(), SendError> {
        self.room(len)?;
        self.buf.reserve(len);
        let mut done = 0;
        while done < len {
            let n = PIECE.min(len - done);
            let start = self.buf.len();
            let dst = self.buf.spare_capacity_mut();
            // SAFETY: `dst` has at least `len - done >= n` bytes (reserved above); the
            // caller vouches that `src + done .. + n` is readable and does not overlap the
            // buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(src.add(done), dst.as_mut_ptr().cast::<u8>(), n);
            }
            // SAFETY: the `n` bytes after the old length were initialized just above.
            unsafe { self.buf.set_len(start + n) };
            self.crc = crc32c::crc32c_append(self.crc, &self.buf[start..]);
            done += n;
        }
        self.data_left -= len;
        Ok(())
    }
}

impl<W: Write> MessageWriter<W> {
    /// Start a `Pages` frame of the open epoch for `runs` `(gpa, npages)` in `buf` (its
    /// contents are dropped, its capacity reused: give it [`pages_frame_len`] bytes of
    /// capacity to avoid a reallocation). The run table is encoded at once; the caller
    /// then appends exactly the runs' data, in order, and sends the frame with
    /// [`MessageWriter::send_pages_in_place`]. Unlike [`MessageWriter::send_page_runs`]
    /// the runs go into one frame as given: the payload must fit the frame limit.
    pub fn begin_pages_in_place(
        &self,
        runs: &[(u64, u32)],
        mut buf: Vec<u8>,
    ) -> Result<PagesInPlace, SendError> {
        let epoch = self.require_open(Kind::Pages)?;
        let mut data = 0u64;
        for (i, &(gpa, n)) in runs.iter().enumerate() {
            let len = u64::from(n) * PAGE_SIZE as u64;
            check_item(Kind::Pages, i, gpa, len, PAGE_SIZE, "gpa")?;
            data += len;
        }
        let payload = 12 + (runs.len() * RUN_DESCRIPTOR_LEN) as u64 + data;
        self.frames.check_len(payload)?;
        let data_left = usize::try_from(data).map_err(|_| SendError::InvalidItem {
            kind: Kind::Pages,
            index: runs.len(),
            problem: format!("{data} bytes of pages do not fit this machine's memory"),
        })?;
        buf.clear();
        buf.reserve_exact(HEADER_LEN + payload as usize + CRC_LEN);
        buf.resize(HEADER_LEN, 0);
        buf.put_u64(epoch);
        buf.put_u32(runs.len() as u32);
        for &(gpa, n) in runs {
            buf.put_u64(gpa);
            buf.put_u32(n);
        }
        let crc = crc32c::crc32c(&buf[HEADER_LEN..]);
        Ok(PagesInPlace {
            buf,
            epoch,
            pages: data / PAGE_SIZE as u64,
            data_left,
            crc,
        })
    }

    /// Send a `Pages` frame filled in place (see [`MessageWriter::begin_pages_in_place`])
    /// and account it to the open epoch as [`MessageWriter::send_page_runs`] would.
    /// Returns an empty buffer for the next frame (the one the writer handed back).
    pub fn send_pages_in_place(&mut self, p: PagesInPlace) -> Result<Vec<u8>, SendError> {
        if p.data_left != 0 {
            return Err(SendError::InvalidItem {
                kind: Kind::Pages,
                index: 0,
                problem: format!("{} bytes of page data missing", p.data_left),
            });
        }
        self.check_open(Kind::Pages, p.epoch)?;
        let len = (p.buf.len() - HEADER_LEN) as u64;
        let sealed = self.frames.is_authenticated();
        let MessageWriter { frames, open, .. } = self;
        let open = open.as_mut().ok_or(SendError::NoOpenEpoch {
            kind: Kind::Pages,
            epoch: p.epoch,
        })?;
        // Sealed: no digest (see `send_raw`).
        let digest = (!sealed).then_some(&mut open.digest);
        let spare = frames.write_frame_in_place(Kind::Pages as u16, p.buf, p.crc, digest)?;
        open.messages = open.messages.wrapping_add(1);
        open.pages += p.pages;
        open.bytes += len;
        Ok(spare)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthKey, Nonce};
    use crate::message::Message;
    use crate::stream::MessageReader;

    fn contents(pages: usize, salt: u8) -> Vec<u8> {
        (0..pages * PAGE_SIZE)
            .map(|i| (i / 7) as u8 ^ salt)
            .collect()
    }

    /// Frames of `pieces` (runs, data) sent by `send_page_runs` and by the in-place path.
    fn both_ways(keyed: bool, hand_over: bool) -> (Vec<u8>, Vec<u8>, u32) {
        let p = PAGE_SIZE as u64;
        // (runs, their data) per frame.
        type Piece = (Vec<(u64, u32)>, Vec<u8>);
        let pieces: Vec<Piece> = vec![
            (vec![(0, 3), (10 * p, 1)], contents(4, 1)),
            (vec![(4096 * p, 255)], contents(255, 2)),
            (vec![(7 * p, 1), (9 * p, 2), (100 * p, 5)], contents(8, 3)),
        ];
        let key = AuthKey::new(&[9; 32])
            .unwrap()
            .session_keys(&Nonce([1; 32]), &Nonce([2; 32]))
            .initiator_to_responder;
        let mut out = Vec::new();
        let mut digest = 0;
        for in_place in [false, true] {
            let mut w = MessageWriter::new(Vec::new());
            if keyed {
                w.frames_mut().set_key(key.clone());
            }
            if hand_over {
                w.frames_mut()
                    .set_hand_over(|dst: &mut Vec<u8>, buf: Vec<u8>| {
                        dst.extend_from_slice(&buf);
                        Ok(Vec::with_capacity(buf.capacity()))
                    });
            }
            w.begin_epoch(5).unwrap();
            let mut spare = Vec::new();
            for (runs, data) in &pieces {
                if in_place {
                    let mut f = w.begin_pages_in_place(runs, spare).unwrap();
                    let (a, b) = data.split_at(PAGE_SIZE);
                    f.append(a).unwrap();
                    // SAFETY: `b` is a live slice of this test, not the frame's buffer.
                    unsafe { f.append_copy(b.as_ptr(), b.len()).unwrap() };
                    assert_eq!(f.data_left(), 0);
                    spare = w.send_pages_in_place(f).unwrap();
                    assert!(spare.is_empty());
                } else {
                    w.send_page_runs(runs, data).unwrap();
                }
            }
            let commit = w.commit_epoch().unwrap();
            w.flush().unwrap();
            digest = commit.digest;
            out.push(w.frames().get_ref().clone());
        }
        let b = out.pop().unwrap();
        let a = out.pop().unwrap();
        (a, b, digest)
    }

    #[test]
    fn frames_built_in_place_are_the_same_bytes_as_send_page_runs() {
        for (keyed, hand_over) in [(false, false), (false, true), (true, false), (true, true)] {
            let (ordinary, in_place, digest) = both_ways(keyed, hand_over);
            assert!(
                ordinary == in_place,
                "keyed {keyed}, hand-over {hand_over}: the bytes differ"
            );
            assert_eq!(
                digest == 0,
                keyed,
                "a plain epoch has a digest, a sealed one 0"
            );
        }
        // And they read back as the pages sent.
        let (_, bytes, _) = both_ways(false, true);
        let mut r = MessageReader::new(&bytes[..]);
        let mut seen = Vec::new();
        while let Some(m) = r.recv().unwrap() {
            if let Message::Pages(p) = m {
                for (gpa, data) in p.runs() {
                    seen.push((gpa, data.len(), data[0]));
                }
            }
        }
        assert_eq!(seen.len(), 6);
        assert_eq!(seen[0], (0, 3 * PAGE_SIZE, 1));
    }

    #[test]
    fn the_crc_covers_the_copy_not_the_source() {
        let mut src = contents(2, 4);
        let mut w = MessageWriter::new(Vec::new());
        w.begin_epoch(1).unwrap();
        let mut f = w.begin_pages_in_place(&[(0, 2)], Vec::new()).unwrap();
        // SAFETY: `src` is live and not the frame's buffer.
        unsafe { f.append_copy(src.as_ptr(), src.len()).unwrap() };
        let sent = src.clone();
        // The source changes after the copy (a guest writing the page): the frame must
        // still verify and carry the bytes as copied.
        src.iter_mut().for_each(|b| *b = !*b);
        w.send_pages_in_place(f).unwrap();
        w.commit_epoch().unwrap();
        w.flush().unwrap();
        let bytes = w.frames().get_ref().clone();
        let mut r = MessageReader::new(&bytes[..]);
        let mut got = Vec::new();
        while let Some(m) = r.recv().unwrap() {
            if let Message::Pages(p) = m {
                for (_, data) in p.runs() {
                    got.extend_from_slice(data);
                }
            }
        }
        assert!(got == sent, "the frame does not carry the copied bytes");
    }

    #[test]
    fn too_much_or_too_little_data_is_refused() {
        let mut w = MessageWriter::new(Vec::new());
        assert!(matches!(
            w.begin_pages_in_place(&[(0, 1)], Vec::new()),
            Err(SendError::NoOpenEpoch { .. })
        ));
        w.begin_epoch(1).unwrap();
        assert!(w.begin_pages_in_place(&[(1, 1)], Vec::new()).is_err());
        assert!(w.begin_pages_in_place(&[(0, 0)], Vec::new()).is_err());
        let mut f = w.begin_pages_in_place(&[(0, 2)], Vec::new()).unwrap();
        assert!(f.append(&[0; 3 * PAGE_SIZE]).is_err());
        f.append(&[0; PAGE_SIZE]).unwrap();
        let before = w.frames().bytes_written();
        let e = w.send_pages_in_place(f).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        assert_eq!(before, w.frames().bytes_written(), "a short frame went out");
    }
}
