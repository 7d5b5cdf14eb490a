//! Plain frames whose payload the caller assembled in a buffer of its own, after room for
//! the header: the frame goes out in that buffer (handed over whole to a writer that
//! queues owned buffers, see [`FrameWriter::set_hand_over`]), with no copy into the
//! frame writer's buffer. The bytes on the wire are exactly those of
//! [`FrameWriter::write_frame`] with the same payload.

use std::io::Write;

use super::{FrameHeader, FrameWriteError, FrameWriter, CRC_LEN, HEADER_LEN};

impl<W: Write> FrameWriter<W> {
    /// Write one frame of `kind` whose payload is `buf[HEADER_LEN..]` and whose CRC32C
    /// the caller computed over exactly those bytes (`payload_crc`; a wrong one makes a
    /// frame every reader refuses). The first [`HEADER_LEN`] bytes of `buf` are
    /// overwritten with the header and the frame CRC is appended. `digest`, if given, is
    /// extended with the payload's CRC. Returns an empty buffer for the next frame.
    ///
    /// With a [`HandOver`](super::HandOver) set, `buf` goes to the underlying writer whole
    /// (after what is buffered, so the order stays); otherwise it is written. A keyed
    /// writer seals a copy of the payload instead, exactly as
    /// [`FrameWriter::write_frame`] does.
    pub(crate) fn write_frame_in_place(
        &mut self,
        kind: u16,
        mut buf: Vec<u8>,
        payload_crc: u32,
        digest: Option<&mut u32>,
    ) -> Result<Vec<u8>, FrameWriteError> {
        let frame = self.next_seq;
        if self.failed {
            return Err(FrameWriteError::Failed { frame });
        }
        let payload = buf
            .len()
            .checked_sub(HEADER_LEN)
            .ok_or_else(|| FrameWriteError::Io {
                frame,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "frame buffer shorter than a frame header",
                ),
            })?;
        let len = self.check_len(payload as u64)?;
        if self.key.is_some() {
            // Sealing has its own buffer (header ‖ payload ‖ tag): the ordinary path.
            self.write_frame_with(kind, len, digest, |s| {
                crate::codec::Sink::put(s, &buf[HEADER_LEN..])
            })?;
            buf.clear();
            return Ok(buf);
        }
        // Any failure below leaves a partial frame on the stream.
        self.failed = true;
        let header = FrameHeader {
            kind,
            seq: frame,
            payload_len: len,
            flags: 0,
        }
        .encode();
        buf[..HEADER_LEN].copy_from_slice(&header);
        let crc = crate::crc_combine::crc32c_combine(crc32c::crc32c(&header), payload_crc, payload);
        buf.extend_from_slice(&crc.to_le_bytes());
        if let Some(d) = digest {
            *d = crate::crc_combine::crc32c_combine(*d, payload_crc, payload);
        }
        let io = |source| FrameWriteError::Io { frame, source };
        let spare = match self.hand_over {
            Some(give) => {
                self.inner.flush().map_err(io)?;
                give(self.inner.get_mut(), buf).map_err(io)?
            }
            None => {
                self.inner.write_all(&buf).map_err(io)?;
                buf.clear();
                buf
            }
        };
        self.failed = false;
        self.next_seq += 1;
        self.offset += (HEADER_LEN + CRC_LEN) as u64 + u64::from(len);
        Ok(spare)
    }
}
