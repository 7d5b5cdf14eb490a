//! The virtio-blk device: configuration space, features, the request worker, state.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ftvm_devices::bus::lock;
use ftvm_devices::disk::Disk;
use ftvm_devices::state::{decode, encode};
use ftvm_devices::StateError;
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::QueueT;
use vmm_sys_util::epoll::{Epoll, EpollEvent};

use super::request::{process, ID_LEN, MAX_REQUEST_BYTES};
use crate::chain;
use crate::device::{ActivateContext, DeviceError, VirtioDevice};
use crate::worker::{io_error, read_config, watch_queues, Worker};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments per request (offered as `seg_max`).
pub const SEG_MAX: u32 = 126;
/// How often the worker looks at the queue without being notified.
const POLL_MS: i32 = 10;
const STATE_ID: &str = "virtio-blk";

#[derive(Debug, Serialize, Deserialize)]
struct BlockState {
    size: u64,
    readonly: bool,
}

/// virtio-blk on a [`Disk`].
pub struct BlockDevice {
    disk: Arc<Disk>,
    id: [u8; ID_LEN],
    worker: Option<Worker>,
}

impl std::fmt::Debug for BlockDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockDevice")
            .field("image", &self.disk.image().path())
            .field("readonly", &self.disk.readonly())
            .finish_non_exhaustive()
    }
}

impl BlockDevice {
    /// Disk number `index` of the VM (its GET_ID answer is `ftvm-disk<index>`).
    pub fn new(disk: Arc<Disk>, index: usize) -> Self {
        let mut id = [0u8; ID_LEN];
        let name = format!("ftvm-disk{index}");
        let n = name.len().min(ID_LEN);
        id[..n].copy_from_slice(&name.as_bytes()[..n]);
        Self {
            disk,
            id,
            worker: None,
        }
    }

    fn config_bytes(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..8].copy_from_slice(&(self.disk.size() / 512).to_le_bytes()); // capacity
        c[8..12].copy_from_slice(&(MAX_REQUEST_BYTES as u32).to_le_bytes()); // size_max
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes()); // seg_max
        c
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }
}

impl VirtioDevice for BlockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }
    fn name(&self) -> &'static str {
        "block"
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }
    fn device_features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX);
        if self.disk.readonly() {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config(&self.config_bytes(), offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), DeviceError> {
        self.stop_worker();
        let io = |what: &str| io_error("block", what);
        let (kick, epoll) = watch_queues("block", &[ctx.queue_events[0].as_raw_fd()])?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let disk = self.disk.clone();
        let id = self.id;
        let handle = std::thread::Builder::new()
            .name("virtio-blk".into())
            .spawn(move || run(&ctx, &disk, &id, &epoll, &st))
            .map_err(io("starting the device thread"))?;
        self.worker = Some(Worker { stop, kick, handle });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }

    fn save(&self) -> Result<Vec<u8>, StateError> {
        encode(
            STATE_ID,
            &BlockState {
                size: self.disk.size(),
                readonly: self.disk.readonly(),
            },
        )
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let s: BlockState = decode(STATE_ID, bytes)?;
        if s.size != self.disk.size() {
            return Err(StateError::Invalid {
                device: STATE_ID,
                reason: format!(
                    "the saved disk was {} bytes, {} is {} bytes (give the same --disk images)",
                    s.size,
                    self.disk.image().path().display(),
                    self.disk.size()
                ),
            });
        }
        Ok(())
    }
}

impl Drop for BlockDevice {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

fn run(ctx: &ActivateContext, disk: &Disk, id: &[u8; ID_LEN], epoll: &Epoll, stop: &AtomicBool) {
    let mut events = [EpollEvent::default(); 4];
    while !stop.load(Ordering::SeqCst) {
        // Wait without holding the gate: a pause must not wait for this.
        let _ = epoll.wait(POLL_MS, &mut events);
        let Some(_pass) = ctx.gate.enter(stop) else {
            break;
        };
        let _ = ctx.queue_events[0].read();
        if ctx.failure.is_failed() {
            continue;
        }
        if let Err(reason) = serve_queue(ctx, disk, id) {
            ctx.failure.fail(reason);
            ctx.interrupt.signal_config();
        }
    }
}

/// Completes every request the driver queued.
fn serve_queue(ctx: &ActivateContext, disk: &Disk, id: &[u8; ID_LEN]) -> Result<(), String> {
    let mem = &ctx.mem;
    let mut queues = lock(&ctx.queues);
    let q = &mut queues[0];
    let mut used = false;
    while let Some(c) = q.pop_descriptor_chain(mem) {
        let head = c.head_index();
        // A malformed chain (loop, buffer outside RAM, readable after writable) is a
        // driver bug: the device needs a reset. Oversized requests are completed with
        // IOERR by `process`.
        let (_, descs) =
            chain::collect(c, mem, usize::MAX).map_err(|e| format!("request queue: {e}"))?;
        let len = process(&descs, mem, disk, id).map_or(0, |c| c.used_len);
        q.add_used(mem, head, len)
            .map_err(|e| format!("request queue used ring: {e}"))?;
        used = true;
    }
    if used
        && q.needs_notification(mem)
            .map_err(|e| format!("reading the queue's event index: {e}"))?
    {
        ctx.interrupt.signal_used_queue();
    }
    Ok(())
}
