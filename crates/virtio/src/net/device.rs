//! The virtio-net device: one receive and one transmit queue, MAC and link status in the
//! configuration space, no offloads (every buffer carries one whole Ethernet frame after
//! a 12-byte `virtio_net_hdr_v1`).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ftvm_devices::bus::lock;
use ftvm_devices::output::NET_STREAM_BASE;
use ftvm_devices::state::{decode, encode};
use ftvm_devices::{FrameWriter, OutputSink, StateError, StreamId};
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::{announce, MacAddr, Tap};
use crate::chain;
use crate::device::{ActivateContext, DeviceError, VirtioDevice};
use crate::worker::{io_error, read_config, watch_queues, Worker};
use crate::GuestMemory;

/// Receive queue index.
pub const RX_QUEUE: usize = 0;
/// Transmit queue index.
pub const TX_QUEUE: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The header in front of every frame (virtio 1.x: `virtio_net_hdr_v1`).
pub const NET_HDR_LEN: usize = 12;
/// Largest frame ftvm moves (no TSO/GSO offered): 1500-byte MTU + Ethernet header.
pub const MAX_FRAME: usize = 1514;
/// Longest transmit chain accepted (header + a 64 KiB frame); longer ones are a driver
/// bug and need a reset.
pub const MAX_TX_CHAIN: usize = NET_HDR_LEN + 65536;
/// How often the worker looks at the queues without being notified (drivers that poll
/// and never notify, a receive queue that ran dry).
const POLL_MS: i32 = 10;

const STATE_ID: &str = "virtio-net";

/// A network device as configured: its TAP and MAC.
#[derive(Debug, Clone)]
pub struct NetSpec {
    /// The TAP frames go to and come from.
    pub tap: Arc<Tap>,
    /// The guest's MAC.
    pub mac: MacAddr,
}

#[derive(Debug, Serialize, Deserialize)]
struct NetState {
    mac: MacAddr,
}

/// virtio-net.
pub struct NetDevice {
    tap: Arc<Tap>,
    mac: MacAddr,
    stream: StreamId,
    sink: Arc<dyn OutputSink>,
    worker: Option<Worker>,
}

impl std::fmt::Debug for NetDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDevice")
            .field("tap", &self.tap.name())
            .field("mac", &self.mac)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl NetDevice {
    /// Network device number `index` (its frames go to `sink` on stream
    /// `NET_STREAM_BASE + index`).
    pub fn new(spec: &NetSpec, index: usize, sink: Arc<dyn OutputSink>) -> Self {
        Self {
            tap: spec.tap.clone(),
            mac: spec.mac,
            stream: NET_STREAM_BASE + index as StreamId,
            sink,
            worker: None,
        }
    }

    /// The output stream of this device's frames.
    pub fn stream(&self) -> StreamId {
        self.stream
    }

    /// The guest's MAC (after a restore: the saved one).
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    fn config_bytes(&self) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[..6].copy_from_slice(&self.mac.0);
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
        c
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }
    fn name(&self) -> &'static str {
        "net"
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }
    fn device_features(&self) -> u64 {
        (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_STATUS)
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config(&self.config_bytes(), offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), DeviceError> {
        self.stop_worker();
        let io = |what: &str| io_error("net", what);
        let (kick, epoll) = watch_queues(
            "net",
            &[
                ctx.queue_events[RX_QUEUE].as_raw_fd(),
                ctx.queue_events[TX_QUEUE].as_raw_fd(),
            ],
        )?;
        epoll
            .ctl(
                ControlOperation::Add,
                self.tap.as_raw_fd(),
                EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, 0),
            )
            .map_err(io("watching the TAP"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut w = NetWorker {
            ctx,
            tap: self.tap.clone(),
            sink: self.sink.clone(),
            stream: self.stream,
            pending: None,
            buf: vec![0u8; NET_HDR_LEN + 65536],
        };
        let st = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("net-{}", self.tap.name()))
            .spawn(move || w.run(&epoll, &st))
            .map_err(io("starting the device thread"))?;
        self.worker = Some(Worker { stop, kick, handle });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }

    fn save(&self) -> Result<Vec<u8>, StateError> {
        encode(STATE_ID, &NetState { mac: self.mac })
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let s: NetState = decode(STATE_ID, bytes)?;
        self.mac = s.mac;
        Ok(())
    }

    fn announce(&self) {
        announce::announce(self.mac, self.tap.clone() as Arc<dyn FrameWriter>);
    }
}

impl Drop for NetDevice {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

struct NetWorker {
    ctx: ActivateContext,
    tap: Arc<Tap>,
    sink: Arc<dyn OutputSink>,
    stream: StreamId,
    /// A frame read from the TAP that found no receive buffer yet.
    pending: Option<usize>,
    buf: Vec<u8>,
}

impl NetWorker {
    fn run(&mut self, epoll: &Epoll, stop: &AtomicBool) {
        let mut events = [EpollEvent::default(); 8];
        let gate = self.ctx.gate.clone();
        while !stop.load(Ordering::SeqCst) {
            // Wait without holding the gate: a pause must not wait for this.
            let _ = epoll.wait(POLL_MS, &mut events);
            let Some(_pass) = gate.enter(stop) else {
                break;
            };
            for e in &self.ctx.queue_events {
                let _ = e.read();
            }
            if self.ctx.failure.is_failed() {
                continue;
            }
            if let Err(reason) = self.tx().and_then(|()| self.rx()) {
                self.ctx.failure.fail(reason);
                self.ctx.interrupt.signal_config();
            }
        }
    }

    fn notify(&self, q: &mut Queue, mem: &GuestMemory) -> Result<(), String> {
        if q.needs_notification(mem)
            .map_err(|e| format!("reading the queue's event index: {e}"))?
        {
            self.ctx.interrupt.signal_used_queue();
        }
        Ok(())
    }

    /// Send every frame the driver queued.
    fn tx(&mut self) -> Result<(), String> {
        let mem = &self.ctx.mem;
        let mut queues = lock(&self.ctx.queues);
        let q = &mut queues[TX_QUEUE];
        let mut used = false;
        while let Some(c) = q.pop_descriptor_chain(mem) {
            let (head, descs) =
                chain::collect(c, mem, MAX_TX_CHAIN).map_err(|e| format!("transmit queue: {e}"))?;
            let bytes =
                chain::read_all(head, &descs, mem).map_err(|e| format!("transmit queue: {e}"))?;
            if bytes.len() > NET_HDR_LEN {
                self.sink.emit(self.stream, &bytes[NET_HDR_LEN..]);
            }
            q.add_used(mem, head, 0)
                .map_err(|e| format!("transmit queue used ring: {e}"))?;
            used = true;
        }
        if used {
            self.notify(q, mem)?;
        }
        Ok(())
    }

    /// Move frames from the TAP into receive buffers while both last.
    fn rx(&mut self) -> Result<(), String> {
        let mem = &self.ctx.mem;
        let mut queues = lock(&self.ctx.queues);
        let q = &mut queues[RX_QUEUE];
        let mut used = false;
        loop {
            let len = match self.pending.take() {
                Some(n) => n,
                None => match self.tap.read_frame(&mut self.buf[NET_HDR_LEN..]) {
                    Ok(Some(n)) => n,
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("ftvm: net: reading TAP {}: {e}", self.tap.name());
                        break;
                    }
                },
            };
            let Some(c) = q.pop_descriptor_chain(mem) else {
                self.pending = Some(len);
                break;
            };
            let (head, descs) =
                chain::collect(c, mem, usize::MAX).map_err(|e| format!("receive queue: {e}"))?;
            let total = NET_HDR_LEN + len;
            // Header: all zero (no checksum or GSO information), num_buffers = 1.
            self.buf[..NET_HDR_LEN].fill(0);
            self.buf[10] = 1;
            if chain::capacity(&descs) < total {
                // Too small for this frame: the frame is dropped, as a NIC would.
                q.add_used(mem, head, 0)
                    .map_err(|e| format!("receive queue used ring: {e}"))?;
            } else {
                let n = chain::write_all(head, &descs, mem, &self.buf[..total])
                    .map_err(|e| format!("receive queue: {e}"))?;
                q.add_used(mem, head, n as u32)
                    .map_err(|e| format!("receive queue used ring: {e}"))?;
            }
            used = true;
        }
        if used {
            self.notify(q, mem)?;
        }
        Ok(())
    }
}
