//! Where device output goes: the one path out of the VM.
//!
//! Devices never write to the outside world themselves; they hand bytes to an
//! [`OutputSink`]. Unprotected, the sink writes at once ([`DirectOutput`]); under
//! replication, the epoch engine's sink tags the bytes with the running epoch and releases
//! them only once the backup acknowledged that epoch (output commit).

use std::io::Write;
use std::sync::Mutex;

use crate::bus::lock;

/// Identifies an output stream (a device's channel to the outside).
pub type StreamId = u16;
/// The serial console's stream.
pub const SERIAL_STREAM: StreamId = 0;

/// Receives everything devices send out of the VM.
pub trait OutputSink: Send + Sync {
    /// The guest sent `bytes` on `stream`.
    fn emit(&self, stream: StreamId, bytes: &[u8]);
}

/// Writes output immediately to a writer (a terminal or a file).
pub struct DirectOutput {
    writer: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for DirectOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectOutput")
    }
}

impl DirectOutput {
    /// Output to `writer`.
    pub fn new(writer: Box<dyn Write + Send>) -> Self {
        Self {
            writer: Mutex::new(writer),
        }
    }

    /// Write `bytes` now, and flush: bytes counted as released must really be out (a
    /// partial line such as a `login:` prompt too; a line-buffered stdout would keep it,
    /// and a failover would lose it). Write errors (a closed pipe) drop the output: the VM
    /// must not stop because nobody is reading its console.
    pub fn write_now(&self, bytes: &[u8]) {
        let mut w = lock(&self.writer);
        let _ignored_closed_console = w.write_all(bytes);
        let _ignored_closed_console = w.flush();
    }
}

impl OutputSink for DirectOutput {
    fn emit(&self, _stream: StreamId, bytes: &[u8]) {
        self.write_now(bytes);
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(&*seen.0.lock().unwrap(), b"line\nlogin: ");
    }
}
