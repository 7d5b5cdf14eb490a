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

    /// Write `bytes` now. Flushed at every newline so line-oriented readers see whole lines
    /// promptly. Write errors (a closed pipe) drop the output: the VM must not stop because
    /// nobody is reading its console.
    pub fn write_now(&self, bytes: &[u8]) {
        let mut w = lock(&self.writer);
        let _ignored_closed_console = w.write_all(bytes);
        if bytes.contains(&b'\n') {
            let _ignored_closed_console = w.flush();
        }
    }
}

impl OutputSink for DirectOutput {
    fn emit(&self, _stream: StreamId, bytes: &[u8]) {
        self.write_now(bytes);
    }
}
