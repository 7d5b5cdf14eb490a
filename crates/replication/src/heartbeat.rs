//! Heartbeats on their own timer, independent of epochs: a long epoch, a full in-flight
//! window or a long pause (the engine waiting, the vCPUs parked) must not look like a dead
//! peer. Each side sends a Heartbeat frame every heartbeat timeout / 4 on the shared
//! writer; the other side's reads time out after the heartbeat timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ftvm_devices::bus::lock;
use ftvm_wire::Message;

use crate::error::ReplicationError;
use crate::link::{unix_nanos, Writer};

/// How often heartbeats go out for heartbeat timeout `h`.
pub fn interval(h: Duration) -> Duration {
    (h / 4).max(Duration::from_millis(10))
}

/// Send a heartbeat carrying `epoch()` every `every` until `stop` is set or the link fails.
/// A heartbeat waits for the writer while an epoch is being written (bytes are flowing
/// then, which the peer also counts as life).
pub fn spawn(
    name: &str,
    writer: Arc<Mutex<Writer>>,
    stop: Arc<AtomicBool>,
    every: Duration,
    epoch: impl Fn() -> u64 + Send + 'static,
) -> Result<JoinHandle<()>, ReplicationError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut next = Instant::now() + every;
            while !stop.load(Ordering::SeqCst) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(20)));
                    continue;
                }
                next = now + every;
                let mut w = lock(&writer);
                let sent = w
                    .send(&Message::Heartbeat {
                        epoch: epoch(),
                        sent_unix_nanos: unix_nanos(),
                    })
                    .and_then(|()| w.flush());
                if sent.is_err() {
                    return;
                }
            }
        })
        .map_err(|e| ReplicationError::io("starting the heartbeat thread", e))
}
