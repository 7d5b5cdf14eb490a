//! virtio-net driven as a guest driver would, over real guest memory and a real TAP. The
//! far side of the TAP is an AF_PACKET socket bound to it: what the socket sends, the
//! device receives; what the device transmits, the socket receives. Needs root (a TAP);
//! skipped loudly otherwise.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ftvm_devices::output::{DirectOutput, NET_STREAM_BASE};
use ftvm_devices::{MmioDevice, OutputSink, StreamId};
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::{GuestMemory, Interrupt, IoGate, MmioTransport};

/// Emits frames to a TAP (like an unprotected VM's sink) and records them.
struct Recorder {
    direct: DirectOutput,
    frames: Mutex<Vec<Vec<u8>>>,
}
impl OutputSink for Recorder {
    fn emit(&self, stream: StreamId, bytes: &[u8]) {
        self.frames.lock().unwrap().push(bytes.to_vec());
        self.direct.emit(stream, bytes);
    }
}

fn packet_socket(ifname: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is fresh and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index > 0);
    // SAFETY: an all-zero sockaddr_ll is a valid value to fill in.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = proto;
    sa.sll_ifindex = index as i32;
    // SAFETY: `sa` is a live sockaddr_ll of the size passed.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(sa).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
    fd
}

fn send(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: `frame` is live for the call.
    let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(
        n,
        frame.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
}

/// Frames the socket received within `timeout` that contain `marker`.
fn recv_marked(fd: &OwnedFd, marker: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let t0 = Instant::now();
    let mut buf = vec![0u8; 2048];
    while t0.elapsed() < timeout {
        // SAFETY: `buf` is live and as long as passed.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            let f = &buf[..n as usize];
            if f.windows(marker.len()).any(|w| w == marker) {
                return Some(f.to_vec());
            }
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    None
}

fn wr(t: &mut MmioTransport, off: u32, v: u32) {
    t.write(u64::from(off), &v.to_le_bytes());
}
fn rd(t: &mut MmioTransport, off: u32) -> u32 {
    let mut b = [0u8; 4];
    t.read(u64::from(off), &mut b);
    u32::from_le_bytes(b)
}

struct Q {
    desc: u64,
    avail: u64,
    used: u64,
}
const RXQ: Q = Q {
    desc: 0x1000,
    avail: 0x2000,
    used: 0x3000,
};
const TXQ: Q = Q {
    desc: 0x4000,
    avail: 0x5000,
    used: 0x6000,
};

fn put_desc(mem: &GuestMemory, q: &Q, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let at = q.desc + u64::from(i) * 16;
    mem.write_obj(addr, GuestAddress(at)).unwrap();
    mem.write_obj(len, GuestAddress(at + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
    mem.write_obj(next, GuestAddress(at + 14)).unwrap();
}

fn offer(mem: &GuestMemory, q: &Q, slot: u16, head: u16) {
    mem.write_obj(head, GuestAddress(q.avail + 4 + 2 * u64::from(slot)))
        .unwrap();
    mem.write_obj(slot + 1, GuestAddress(q.avail + 2)).unwrap();
}

fn used_idx(mem: &GuestMemory, q: &Q) -> u16 {
    mem.read_obj(GuestAddress(q.used + 2)).unwrap()
}

fn wait_used(mem: &GuestMemory, q: &Q, n: u16) -> bool {
    let t0 = Instant::now();
    while used_idx(mem, q) < n {
        if t0.elapsed() > Duration::from_secs(5) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

fn frame(marker: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0xf7, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 9, 0x88, 0xb5];
    f.extend_from_slice(marker);
    f.resize(100, 0x5a);
    f
}

#[test]
fn frames_move_both_ways_through_guest_memory_and_a_real_tap() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "\n*** SKIPPED frames_move_both_ways...: not root (a TAP needs CAP_NET_ADMIN) ***\n"
        );
        return;
    }
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "ftvt{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    );
    let tap = Arc::new(Tap::open(&name).unwrap());
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    let far = packet_socket(&name);
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let direct = DirectOutput::new(Box::new(std::io::sink()));
    direct.attach_frames(NET_STREAM_BASE, tap.clone());
    let sink = Arc::new(Recorder {
        direct,
        frames: Mutex::default(),
    });
    let mac = MacAddr([2, 0xf7, 0, 0, 0, 1]);
    let dev = NetDevice::new(
        &NetSpec {
            tap: tap.clone(),
            mac,
        },
        0,
        sink.clone(),
    );
    let gate = Arc::new(IoGate::new());
    gate.open();
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let mut t = MmioTransport::new(Box::new(dev), mem.clone(), irq.clone(), gate.clone()).unwrap();
    assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_ID), 1);
    let mut cfg = [0u8; 8];
    t.read(0x100, &mut cfg);
    assert_eq!(&cfg[..6], &mac.0, "MAC in config space");
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1, "link up");
    // Driver initialisation.
    wr(&mut t, VIRTIO_MMIO_STATUS, 1);
    wr(&mut t, VIRTIO_MMIO_STATUS, 3);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1 << 5);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    wr(&mut t, VIRTIO_MMIO_STATUS, 11);
    for (i, q) in [&RXQ, &TXQ].into_iter().enumerate() {
        wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, i as u32);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
        wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc as u32);
        wr(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail as u32);
        wr(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, q.used as u32);
        wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    }
    wr(&mut t, VIRTIO_MMIO_STATUS, 15);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 15, "{:?}", t.failure());

    // RX: the driver gives 8 buffers; a frame sent on the wire lands in one.
    for i in 0..8u16 {
        put_desc(
            &mem,
            &RXQ,
            i,
            0x10000 + u64::from(i) * 0x1000,
            2048,
            VRING_DESC_F_WRITE as u16,
            0,
        );
        offer(&mem, &RXQ, i, i);
    }
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    let _ = crate::memory_dirty_reset(&mem);
    let f1 = frame(b"ftvm-rx-one");
    send(&far, &f1);
    let mut found = None;
    let t0 = Instant::now();
    while found.is_none() && t0.elapsed() < Duration::from_secs(5) {
        for k in 0..used_idx(&mem, &RXQ) {
            let id: u32 = mem
                .read_obj(GuestAddress(RXQ.used + 4 + 8 * u64::from(k)))
                .unwrap();
            let len: u32 = mem
                .read_obj(GuestAddress(RXQ.used + 8 + 8 * u64::from(k)))
                .unwrap();
            let mut b = vec![0u8; len as usize];
            mem.read_slice(&mut b, GuestAddress(0x10000 + u64::from(id) * 0x1000))
                .unwrap();
            if b.len() > 12 && b[12..] == f1[..] {
                found = Some((id, b));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (id, b) = found.expect("the frame sent on the TAP never reached a receive buffer");
    assert_eq!(&b[..10], &[0; 10], "virtio_net_hdr_v1 without offloads");
    assert_eq!(u16::from_le_bytes([b[10], b[11]]), 1, "num_buffers");
    let dirty = crate::memory_dirty_reset(&mem);
    assert!(
        dirty.contains(&(0x10 + u64::from(id))) && dirty.contains(&3),
        "device writes missing from the dirty bitmap: {dirty:?}"
    );
    assert_ne!(irq.status() & 1, 0, "used-buffer interrupt");

    // A closed gate (paused VM): nothing is written into guest memory.
    let before = used_idx(&mem, &RXQ);
    gate.close();
    let f2 = frame(b"ftvm-rx-two");
    send(&far, &f2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        used_idx(&mem, &RXQ),
        before,
        "device wrote guest memory while paused"
    );
    assert!(crate::memory_dirty_reset(&mem).is_empty());
    gate.open();
    assert!(
        wait_used(&mem, &RXQ, before + 1),
        "frame held while paused never arrived"
    );

    // TX: header + frame in two descriptors; it reaches the sink and the wire.
    let f3 = frame(b"ftvm-tx-three");
    mem.write_slice(&[0u8; 12], GuestAddress(0x30000)).unwrap();
    mem.write_slice(&f3, GuestAddress(0x31000)).unwrap();
    put_desc(&mem, &TXQ, 0, 0x30000, 12, VRING_DESC_F_NEXT as u16, 1);
    put_desc(&mem, &TXQ, 1, 0x31000, f3.len() as u32, 0, 0);
    offer(&mem, &TXQ, 0, 0);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    assert!(wait_used(&mem, &TXQ, 1));
    assert_eq!(
        sink.frames.lock().unwrap().as_slice(),
        std::slice::from_ref(&f3)
    );
    let got = recv_marked(&far, b"ftvm-tx-three", Duration::from_secs(5));
    assert_eq!(got.as_deref(), Some(&f3[..]), "frame not on the wire");

    // A looping TX chain: NEEDS_RESET, no panic, nothing sent.
    put_desc(&mem, &TXQ, 2, 0x30000, 12, VRING_DESC_F_NEXT as u16, 3);
    put_desc(&mem, &TXQ, 3, 0x31000, 12, VRING_DESC_F_NEXT as u16, 2);
    offer(&mem, &TXQ, 1, 2);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    let t0 = Instant::now();
    while rd(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "looping chain not detected"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(t.failure().unwrap().contains("loops"), "{:?}", t.failure());
    assert_eq!(sink.frames.lock().unwrap().len(), 1);
    // Reset stops the worker; the device comes back clean.
    wr(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
    assert!(t.failure().is_none());
}
