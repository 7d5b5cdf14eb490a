//! The key-value service (`kv=1` on the command line): virtio-net + smoltcp + RESP2, all
//! in ring 3, polling. Optional durability (`disk=1`): every mutation is appended to a
//! log on the first virtio-blk disk and flushed before its reply leaves.
//!
//! Command line: `kv=1 ip=A.B.C.D/N [gw=A.B.C.D] [port=6379] [maxkeys=100000] [disk=1]`.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

use crate::clock::Clock;
use crate::kvstore::{Limits, Mutation, Store};
use crate::net::VirtioNet;
use crate::virtio;
use crate::{fail, resp, Serial, HEAP};

/// Sockets listening at any time (beyond those serving connections): a burst of this many
/// SYNs is accepted at once.
const SPARE_LISTENERS: usize = 64;
/// Most TCP sockets (connections + listeners).
const MAX_SOCKETS: usize = 256;
const RX_BUF: usize = 16 * 1024;
const TX_BUF: usize = 32 * 1024;
/// A connection stops reading requests while this much reply is unsent (back-pressure).
const MAX_PENDING_OUT: usize = 128 * 1024;

/// Largest request (all its arguments): beyond it the connection gets an error and is
/// closed.
const MAX_REQUEST: usize = resp::MAX_BULK + 64 * 1024;

/// The service's command-line settings.
pub struct KvConfig {
    pub ip: [u8; 4],
    pub prefix: u8,
    pub gw: Option<[u8; 4]>,
    pub port: u16,
    pub max_keys: usize,
    pub disk: bool,
}

fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for o in &mut out {
        *o = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Whether `kv=1` is on the command line.
pub fn wanted(cmdline: &str) -> bool {
    let mut on = false;
    for w in cmdline.split_ascii_whitespace() {
        if let Some(v) = w.strip_prefix("kv=") {
            on = v == "1";
        }
    }
    on
}

/// Parses the service's words (last one wins, as for the workload's).
pub fn config(cmdline: &str) -> Result<KvConfig, &'static str> {
    let mut c = KvConfig {
        ip: [0; 4],
        prefix: 0,
        gw: None,
        port: 6379,
        max_keys: 100_000,
        disk: false,
    };
    let mut have_ip = false;
    for w in cmdline.split_ascii_whitespace() {
        let Some((k, v)) = w.split_once('=') else {
            continue;
        };
        match k {
            "ip" => {
                let (a, n) = v.split_once('/').ok_or("ip= needs A.B.C.D/N")?;
                c.ip = parse_ipv4(a).ok_or("ip= needs A.B.C.D/N")?;
                c.prefix = n.parse().ok().filter(|&n| n <= 32).ok_or("ip=: prefix must be 0..=32")?;
                have_ip = true;
            }
            "gw" => c.gw = Some(parse_ipv4(v).ok_or("gw= needs A.B.C.D")?),
            "port" => c.port = v.parse().ok().filter(|&p| p != 0).ok_or("port= must be 1..=65535")?,
            "maxkeys" => c.max_keys = v.parse().ok().filter(|&n| n > 0).ok_or("maxkeys= must be > 0")?,
            "disk" => c.disk = v == "1",
            _ => {}
        }
    }
    if !have_ip {
        return Err("kv=1 needs ip=A.B.C.D/N");
    }
    Ok(c)
}

struct Conn {
    handle: SocketHandle,
    /// Serving a connection (not listening).
    active: bool,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    /// Close once `out` is sent (QUIT, protocol error).
    closing: bool,
}

fn new_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; RX_BUF]),
        tcp::SocketBuffer::new(vec![0u8; TX_BUF]),
    );
    // Replies go out at once (request/response traffic, like Redis's TCP_NODELAY).
    s.set_nagle_enabled(false);
    s
}

fn say(args: core::fmt::Arguments<'_>) {
    let mut s = Serial::new();
    let _ = s.write_fmt(args);
    s.bytes(b"\n");
    s.flush();
}

/// Runs the service forever. `heap` is the RAM the guest may use for everything.
pub fn run(cmdline: &str, heap: (u64, u64)) -> ! {
    let cfg = match config(cmdline) {
        Ok(c) => c,
        Err(e) => fail(format_args!("bad command line: {e}")),
    };
    // SAFETY: [heap.0, heap.1) is RAM above the image that nothing else uses in kv mode
    // (the BSP checked it against the memory map; the workload does not run).
    unsafe { HEAP.init(heap.0 as usize, heap.1 as usize) };
    let heap_bytes = (heap.1 - heap.0) as usize;

    let slots = virtio::slots(cmdline);
    let Some(mmio) = VirtioNet::find(&slots) else {
        fail(format_args!(
            "kv=1: no virtio-net device among {} virtio_mmio.device= slot(s)",
            slots.len()
        ))
    };
    let mut dev = match VirtioNet::new(mmio) {
        Ok(d) => d,
        Err(e) => fail(format_args!("kv=1: {e}")),
    };

    let mut store = Store::new(Limits {
        max_keys: cfg.max_keys,
        // Values take up to twice their size in the heap (power-of-two blocks).
        max_bytes: heap_bytes / 5,
        ..Limits::default()
    });
    let mut log = if cfg.disk {
        match crate::kvdisk::open(&slots, &mut store) {
            Ok(l) => Some(l),
            Err(e) => fail(format_args!("disk=1: {e}")),
        }
    } else {
        None
    };

    let mut clock = Clock::new();
    let now = |c: &mut Clock| Instant::from_millis(c.now_ms());
    let mut iface_cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(dev.mac)));
    // SAFETY: rdtsc is allowed in ring 3.
    iface_cfg.random_seed = unsafe { core::arch::x86_64::_rdtsc() };
    let mut iface = Interface::new(iface_cfg, &mut dev, now(&mut clock));
    let [a, b, c, d] = cfg.ip;
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(Ipv4Address::new(a, b, c, d).into(), cfg.prefix));
    });
    if let Some([a, b, c, d]) = cfg.gw {
        if iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(a, b, c, d))
            .is_err()
        {
            fail(format_args!("gw=: cannot add the default route"));
        }
    }

    let mut sockets = SocketSet::new(Vec::new());
    let mut conns: Vec<Conn> = Vec::new();
    let m = dev.mac;
    say(format_args!(
        "ftvm-testguest kv mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} heap {} MiB{}",
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        heap_bytes >> 20,
        match &log {
            Some(l) => l.describe(),
            None => alloc::string::String::new(),
        }
    ));
    let mut announced = false;
    let mut pending_log: Vec<Mutation> = Vec::new();

    loop {
        // Keep enough sockets listening.
        let listening = conns.iter().filter(|c| !c.active).count();
        if listening < SPARE_LISTENERS && conns.len() < MAX_SOCKETS {
            for _ in listening..SPARE_LISTENERS.min(listening + MAX_SOCKETS - conns.len()) {
                let mut s = new_socket();
                if s.listen(cfg.port).is_err() {
                    fail(format_args!("cannot listen on port {}", cfg.port));
                }
                let handle = sockets.add(s);
                conns.push(Conn {
                    handle,
                    active: false,
                    inbuf: Vec::new(),
                    out: Vec::new(),
                    out_pos: 0,
                    closing: false,
                });
            }
        }
        if !announced {
            say(format_args!(
                "ftvm-testguest kv listening on {a}.{b}.{c}.{d}:{}",
                cfg.port
            ));
            announced = true;
        }

        iface.poll(now(&mut clock), &mut dev, &mut sockets);

        // Requests in, replies into each connection's buffer. All connections together
        // buffer at most `budget` bytes (input + unsent replies); beyond it sockets are
        // not read, so TCP flow control holds the clients back instead of the heap
        // running out.
        let budget = heap_bytes / 10;
        let mut buffered: usize = conns
            .iter()
            .map(|c| c.inbuf.len() + c.out.len() - c.out_pos)
            .sum();
        for conn in conns.iter_mut() {
            let sock = sockets.get_mut::<tcp::Socket>(conn.handle);
            if !conn.active {
                if sock.is_listening() {
                    continue;
                }
                conn.active = true;
                conn.closing = false;
                store.stats.connections += 1;
                store.stats.clients += 1;
            }
            while sock.can_recv() && conn.inbuf.len() < MAX_REQUEST && buffered < budget {
                let _ = sock.recv(|b| {
                    conn.inbuf.extend_from_slice(b);
                    buffered += b.len();
                    (b.len(), ())
                });
            }
            let mut used = 0;
            while !conn.closing && conn.out.len() - conn.out_pos < MAX_PENDING_OUT && buffered < budget {
                match resp::parse(&conn.inbuf[used..]) {
                    Ok(Some((args, n))) => {
                        used += n;
                        let before = conn.out.len();
                        let o = store.execute(&args, &mut conn.out);
                        buffered += conn.out.len() - before;
                        if let Some(mu) = o.mutation {
                            pending_log.push(mu);
                        }
                        conn.closing |= o.close;
                    }
                    Ok(None) => {
                        if conn.inbuf.len() - used >= MAX_REQUEST {
                            resp::error(&mut conn.out, "ERR Protocol error: request too large");
                            conn.closing = true;
                        }
                        break;
                    }
                    Err(e) => {
                        resp::error(&mut conn.out, e.message());
                        conn.closing = true;
                    }
                }
            }
            conn.inbuf.drain(..used);
            buffered -= used;
            if conn.closing {
                buffered -= conn.inbuf.len();
                conn.inbuf.clear();
            }
            if conn.inbuf.is_empty() && conn.inbuf.capacity() > 64 * 1024 {
                conn.inbuf = Vec::new();
            }
        }

        // Over the budget: drop the connection with the most buffered input (as Redis
        // drops clients over its query-buffer limit), so clients that stopped in the middle
        // of huge requests cannot starve the others forever.
        if buffered >= budget {
            if let Some(conn) = conns.iter_mut().filter(|c| c.active).max_by_key(|c| c.inbuf.len()) {
                if !conn.inbuf.is_empty() {
                    sockets.get_mut::<tcp::Socket>(conn.handle).abort();
                    conn.inbuf = Vec::new();
                    conn.out = Vec::new();
                    conn.out_pos = 0;
                    store.stats.dropped += 1;
                }
            }
        }

        // Durability before any reply leaves: one append + flush for the whole batch.
        if !pending_log.is_empty() {
            if let Some(l) = log.as_mut() {
                if let Err(e) = l.append(&pending_log) {
                    fail(format_args!("disk log write failed: {e}"));
                }
                store.set_log_room(Some(l.room()));
            }
            pending_log.clear();
        }

        // Replies out; finished connections back to listening.
        for conn in conns.iter_mut() {
            if !conn.active {
                continue;
            }
            let sock = sockets.get_mut::<tcp::Socket>(conn.handle);
            while conn.out_pos < conn.out.len() && sock.can_send() {
                match sock.send_slice(&conn.out[conn.out_pos..]) {
                    Ok(n) if n > 0 => conn.out_pos += n,
                    _ => break,
                }
            }
            if conn.out_pos == conn.out.len() {
                if conn.out.capacity() > 64 * 1024 {
                    conn.out = Vec::new();
                }
                conn.out.clear();
                conn.out_pos = 0;
                if conn.closing || sock.state() == tcp::State::CloseWait {
                    sock.close();
                }
            }
            // Closed, or back to Listen (a reset during the handshake).
            if matches!(sock.state(), tcp::State::Closed | tcp::State::Listen) {
                conn.active = false;
                conn.closing = false;
                conn.inbuf = Vec::new();
                conn.out = Vec::new();
                conn.out_pos = 0;
                store.stats.clients = store.stats.clients.saturating_sub(1);
                if !sock.is_listening() && sock.listen(cfg.port).is_err() {
                    fail(format_args!("cannot listen on port {}", cfg.port));
                }
            }
        }
        dev.flush();
    }
}
