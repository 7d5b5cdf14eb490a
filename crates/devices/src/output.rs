//! Where device output goes: the one path out of the VM.
//!
//! Devices never write to the outside world themselves; they hand bytes to an
//! [`OutputSink`]. Unprotected, the sink writes at once ([`DirectOutput`]); under
//! replication, the epoch engine's sink tags the bytes with the running epoch and releases
//! them only once the backup acknowledged that epoch (output commit).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::bus::lock;
use crate::console_writer::{ConsoleWriter, CONSOLE_QUEUE_BYTES};

/// Identifies an output stream (a device's channel to the outside).
pub type StreamId = u16;
/// The serial console's stream.
pub const SERIAL_STREAM: StreamId = 0;
/// Network device `i` sends its frames on stream `NET_STREAM_BASE + i`.
pub const NET_STREAM_BASE: StreamId = 0x100;
/// How many frame streams there can be.
pub const MAX_FRAME_STREAMS: StreamId = 16;

/// Whether `stream` carries whole network frames (each `emit` is one frame, never merged
/// with its neighbours) rather than a byte stream like the console.
pub fn is_frame_stream(stream: StreamId) -> bool {
    (NET_STREAM_BASE..NET_STREAM_BASE + MAX_FRAME_STREAMS).contains(&stream)
}

/// Where released frames of one frame stream go (a TAP device).
pub trait FrameWriter: Send + Sync {
    /// Send one whole frame now. Errors are the writer's to count; output never blocks
    /// the VM.
    fn write_frame(&self, frame: &[u8]);
}

/// Receives everything devices send out of the VM.
pub trait OutputSink: Send + Sync {
    /// The guest sent `bytes` on `stream`.
    fn emit(&self, stream: StreamId, bytes: &[u8]);
}

/// Writes output immediately to a writer (a terminal or a file).
pub struct DirectOutput {
    writer: ConsoleWriter,
    frames: Mutex<Vec<(StreamId, Arc<dyn FrameWriter>)>>,
    dropped_frames: AtomicU64,
}

impl std::fmt::Debug for DirectOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectOutput")
    }
}

impl DirectOutput {
    /// Output to `writer`, written by a console thread of its own through a queue of
    /// [`CONSOLE_QUEUE_BYTES`] (see [`crate::console_writer`] for the policy when the
    /// reader stops reading).
    pub fn new(writer: Box<dyn Write + Send>) -> Self {
        Self::with_queue(writer, CONSOLE_QUEUE_BYTES)
    }

    /// Like [`DirectOutput::new`] with a queue of `capacity` bytes.
    pub fn with_queue(writer: Box<dyn Write + Send>, capacity: usize) -> Self {
        Self {
            writer: ConsoleWriter::new(writer, capacity),
            frames: Mutex::default(),
            dropped_frames: AtomicU64::new(0),
        }
    }

    /// Send the frames of `stream` to `writer` from now on (replacing an earlier one).
    pub fn attach_frames(&self, stream: StreamId, writer: Arc<dyn FrameWriter>) {
        let mut f = lock(&self.frames);
        f.retain(|(s, _)| *s != stream);
        f.push((stream, writer));
    }

    /// Release `bytes` of `stream` now: frames to their stream's writer, everything else
    /// to the console writer.
    pub fn write_stream(&self, stream: StreamId, bytes: &[u8]) {
        if !is_frame_stream(stream) {
            self.write_now(bytes);
            return;
        }
        let writer = lock(&self.frames)
            .iter()
            .find(|(s, _)| *s == stream)
            .map(|(_, w)| w.clone());
        match writer {
            Some(w) => w.write_frame(bytes),
            None => {
                self.dropped_frames.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Frames released on a stream without a writer (dropped).
    pub fn dropped_frames(&self) -> u64 {
        self.dropped_frames.load(Ordering::Relaxed)
    }

    /// Hand `bytes` to the console thread, which writes and flushes them (a partial line
    /// such as a `login:` prompt too). Never waits for the reader: if it stopped reading
    /// and the queue is full, the bytes are dropped and counted. A byte is out once
    /// [`DirectOutput::console_completed`] passed it.
    pub fn write_now(&self, bytes: &[u8]) {
        self.writer.write(bytes);
    }

    /// Console bytes handed over so far (queued or dropped).
    pub fn console_offered(&self) -> u64 {
        self.writer.offered()
    }

    /// Console bytes written and flushed, or dropped, so far.
    pub fn console_completed(&self) -> u64 {
        self.writer.completed()
    }

    /// Console bytes dropped because the reader stopped reading and the queue was full.
    pub fn console_dropped(&self) -> u64 {
        self.writer.dropped()
    }

    /// Console bytes waiting for the reader.
    pub fn console_queued(&self) -> usize {
        self.writer.queued()
    }

    /// Wait up to `timeout` until every console byte handed over so far is out.
    pub fn drain_console(&self, timeout: std::time::Duration) -> bool {
        self.writer.drain(timeout)
    }
}

impl OutputSink for DirectOutput {
    fn emit(&self, stream: StreamId, bytes: &[u8]) {
        self.write_stream(stream, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Frames(Mutex<Vec<Vec<u8>>>);
    impl FrameWriter for Frames {
        fn write_frame(&self, frame: &[u8]) {
            self.0.lock().unwrap().push(frame.to_vec());
        }
    }

    #[derive(Clone, Default)]
    struct Bytes(Arc<Mutex<Vec<u8>>>);
    impl Write for Bytes {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn frames_go_to_their_stream_and_bytes_to_the_console() {
        let console = Bytes::default();
        let out = DirectOutput::new(Box::new(console.clone()));
        let f1 = Arc::new(Frames::default());
        out.attach_frames(NET_STREAM_BASE + 1, f1.clone());
        out.emit(SERIAL_STREAM, b"hi");
        out.emit(NET_STREAM_BASE + 1, b"frame-a");
        out.emit(NET_STREAM_BASE + 1, b"frame-b");
        out.emit(NET_STREAM_BASE, b"no writer");
        assert!(out.drain_console(std::time::Duration::from_secs(10)));
        assert_eq!(&*console.0.lock().unwrap(), b"hi");
        assert_eq!(
            *f1.0.lock().unwrap(),
            vec![b"frame-a".to_vec(), b"frame-b".to_vec()]
        );
        assert_eq!(out.dropped_frames(), 1);
        assert!(is_frame_stream(NET_STREAM_BASE + 15));
        assert!(!is_frame_stream(NET_STREAM_BASE + 16));
        assert!(!is_frame_stream(SERIAL_STREAM));
    }
}

#[cfg(test)]
mod flush_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

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

    /// A partial line (a prompt) written through a buffering writer is out at once.
    #[test]
    fn partial_lines_are_flushed() {
        let seen = Shared::default();
        let out = DirectOutput::new(Box::new(std::io::LineWriter::new(seen.clone())));
        out.write_now(b"line\n");
        out.write_now(b"login: ");
        assert!(out.drain_console(std::time::Duration::from_secs(10)));
        assert_eq!(&*seen.0.lock().unwrap(), b"line\nlogin: ");
    }
}
