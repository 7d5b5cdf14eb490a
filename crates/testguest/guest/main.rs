//! ftvm-testguest: a freestanding x86-64 test guest (see docs/testguest.md).
//!
//! Built by `crates/testguest/build.rs` with the host's rustc for the host target and
//! linked with `linker.ld`. The ring-0 part is `boot.s`; everything in this file runs in
//! ring 3 (IOPL=3, IF=0) and never returns to ring 0.

#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::fmt::{self, Write};
use core::hint::spin_loop;
use core::sync::atomic::{AtomicU64, Ordering};

#[allow(dead_code)]
#[path = "../src/workload.rs"]
mod workload;

#[allow(dead_code)]
#[path = "../src/kvlog.rs"]
mod kvlog;
#[allow(dead_code)]
#[path = "../src/kvstore.rs"]
mod kvstore;
#[allow(dead_code)]
#[path = "../src/resp.rs"]
mod resp;

mod blk;
mod clock;
mod heap;
mod kv;
mod kvdisk;
mod net;
mod virtio;

extern crate alloc;

/// The heap of the key-value service (empty, so every allocation fails, in workload mode).
#[global_allocator]
static HEAP: heap::Heap = heap::Heap::new();

use workload::{
    GuestParams, DONE_LINE, ERROR_PREFIX, EXIT_DONE, EXIT_ERROR, EXIT_PANIC, MAPPED_LIMIT,
    MAX_CPUS, PAGE_SIZE, PANIC_PREFIX, READY_LINE, SEQ_LINE_MAX, WSS_BASE,
};

global_asm!(include_str!("boot.s"), options(att_syntax, raw));

const PROTO_LINUX: u64 = 0;
const PROTO_PVH: u64 = 1;
const PROTO_AP: u64 = 2;

const NCPU: usize = MAX_CPUS as usize;

// ---- output and exit: through ring 0 (int $0x80 / int $0x81) ---------------------------
//
// Ring 3 runs with IOPL=3, but on the project's hosts (PVM) a ring-3 `out` still raises
// #GP, so ring 3 asks ring 0: one `int $0x80` per line, whose handler `rep outsb`s the
// bytes to COM1 THR (no LSR polling: each port access is a VM exit already), and
// `int $0x81` to power off through port 0xf4. On those hosts the int itself arrives as
// #UD and the exception handler recognizes it (boot.s, ftvm_exc_common).

/// Writes `bytes` to COM1.
fn serial_write(bytes: &[u8]) {
    // SAFETY: the ring-0 write service (boot.s) only reads RCX bytes at RSI (a valid
    // shared borrow) and writes them to COM1, then iretq's back after the int; it
    // clobbers RAX, RCX, RSI, RDX and runs on this CPU's ring-0 stack (TSS.RSP0), not ours.
    unsafe {
        asm!("int $0x80", inout("rsi") bytes.as_ptr() => _, inout("rcx") bytes.len() => _,
             out("rdx") _, out("rax") _, options(att_syntax, readonly, nostack));
    }
}

/// COM1 transmitter as a `fmt::Write`: formatted output goes out in small chunks.
struct Serial {
    buf: [u8; 128],
    len: usize,
}

impl Serial {
    fn new() -> Self {
        Serial {
            buf: [0; 128],
            len: 0,
        }
    }

    fn bytes(&mut self, s: &[u8]) {
        for &b in s {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    fn flush(&mut self) {
        serial_write(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.bytes(s.as_bytes());
        Ok(())
    }
}

fn exit(code: u32) -> ! {
    // SAFETY: the ring-0 exit service (boot.s) writes EDI to port 0xf4 and halts this
    // CPU; the VMM ends the VM.
    unsafe { asm!("int $0x81", in("edi") code, options(att_syntax, noreturn, nostack)) }
}

fn fail(args: fmt::Arguments<'_>) -> ! {
    ABORT.store(1, Ordering::Release);
    let mut s = Serial::new();
    let _ = s.write_str(ERROR_PREFIX);
    let _ = s.write_fmt(args);
    s.bytes(b"\n");
    s.flush();
    exit(EXIT_ERROR)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    ABORT.store(1, Ordering::Release);
    let mut s = Serial::new();
    let _ = s.write_str(PANIC_PREFIX);
    let _ = write!(s, "{}", info.message());
    if let Some(loc) = info.location() {
        let _ = write!(s, " at {}:{}", loc.file(), loc.line());
    }
    s.bytes(b"\n");
    s.flush();
    exit(EXIT_PANIC)
}

/// Referenced by the precompiled `core`'s unwind tables (built with panic=unwind); never
/// called, since this program is built with panic=abort and its .eh_frame is discarded.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

/// Referenced by landing pads in the precompiled `alloc`; never reached, since a panic
/// here aborts (the panic handler exits) instead of unwinding.
#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    panic!("_Unwind_Resume called in a panic=abort guest")
}

// ---- memory the compiler needs (ring 3 only) -------------------------------------------

/// # Safety
/// As C `memcpy`.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid and do not overlap.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(att_syntax, nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// As C `memmove`.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: forward copy is safe when dst is below src or the ranges do not overlap.
        unsafe { memcpy(dst, src, n) }
    } else {
        // SAFETY: the caller guarantees both ranges are valid; copying backwards (DF=1)
        // handles dst overlapping the end of src.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _,
                 inout("rsi") src.add(n - 1) => _, options(att_syntax, nostack));
        }
        dst
    }
}

/// # Safety
/// As C `memset`.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
             options(att_syntax, nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// As C `memcmp`.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees both ranges hold n bytes.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// As C `bcmp`.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

// ---- guest-physical memory (identity-mapped below 4 GiB, user-accessible) ------------

fn phys_ok(addr: u64, len: u64) -> bool {
    addr != 0 && addr.checked_add(len).is_some_and(|end| end <= MAPPED_LIMIT)
}

fn rd8(addr: u64) -> u8 {
    if !phys_ok(addr, 1) {
        return 0;
    }
    // SAFETY: identity-mapped, user-accessible guest-physical address below 4 GiB;
    // reading it has no side effect (RAM or ROM tables written by the VMM/firmware).
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

fn rd16(addr: u64) -> u16 {
    u16::from(rd8(addr)) | u16::from(rd8(addr + 1)) << 8
}

fn rd32(addr: u64) -> u32 {
    u32::from(rd16(addr)) | u32::from(rd16(addr + 2)) << 16
}

fn rd64(addr: u64) -> u64 {
    u64::from(rd32(addr)) | u64::from(rd32(addr + 4)) << 32
}

const MAX_CMDLINE: usize = 4096;
const MAX_MEM_RANGES: usize = 128;

struct BootInfo {
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    ram: [(u64, u64); MAX_MEM_RANGES],
    nram: usize,
    /// Entries in the memory map (all types); 0 = no map given.
    nmap: usize,
}

impl BootInfo {
    fn read_cmdline(&mut self, addr: u64) {
        if addr == 0 {
            return;
        }
        while self.cmdline_len < MAX_CMDLINE {
            let b = rd8(addr + self.cmdline_len as u64);
            if b == 0 {
                break;
            }
            self.cmdline[self.cmdline_len] = b;
            self.cmdline_len += 1;
        }
    }

    fn add_range(&mut self, addr: u64, size: u64, kind: u32) {
        self.nmap += 1;
        if kind == 1 && self.nram < MAX_MEM_RANGES {
            self.ram[self.nram] = (addr, addr.saturating_add(size));
            self.nram += 1;
        }
    }

    /// Linux boot_params ("zero page"): cmd_line_ptr at 0x228, e820_entries at 0x1e8,
    /// e820 table (20-byte entries) at 0x2d0.
    fn from_linux(&mut self, zp: u64) {
        if !phys_ok(zp, 4096) {
            fail(format_args!(
                "boot_params address {zp:#x} is not in the first 4 GiB"
            ));
        }
        self.read_cmdline(u64::from(rd32(zp + 0x228)));
        let n = usize::from(rd8(zp + 0x1e8)).min(128);
        for i in 0..n {
            let e = zp + 0x2d0 + 20 * i as u64;
            self.add_range(rd64(e), rd64(e + 8), rd32(e + 16));
        }
    }

    /// PVH hvm_start_info: magic at 0, version at 4, cmdline_paddr at 24,
    /// memmap_paddr at 40, memmap_entries at 48 (24-byte entries: addr, size, type).
    fn from_pvh(&mut self, si: u64) {
        if !phys_ok(si, 56) || rd32(si) != 0x336e_c578 {
            fail(format_args!("no PVH start_info at {si:#x} (bad magic)"));
        }
        self.read_cmdline(rd64(si + 24));
        if rd32(si + 4) >= 1 {
            let map = rd64(si + 40);
            let n = rd32(si + 48) as usize;
            for i in 0..n.min(1024) {
                let e = map + 24 * i as u64;
                self.add_range(rd64(e), rd64(e + 8), rd32(e + 16));
            }
        }
    }

    /// Whether RAM covers [start, end) (ranges may be split across adjacent entries).
    fn covers(&self, start: u64, end: u64) -> bool {
        let mut cur = start;
        'outer: while cur < end {
            for &(a, b) in &self.ram[..self.nram] {
                if a <= cur && cur < b {
                    cur = b;
                    continue 'outer;
                }
            }
            return false;
        }
        true
    }

    /// End of the RAM range containing `start` (following adjacent ranges), or `start`.
    fn ram_end_from(&self, start: u64) -> u64 {
        let mut cur = start;
        'outer: loop {
            for &(a, b) in &self.ram[..self.nram] {
                if a <= cur && cur < b {
                    cur = b;
                    continue 'outer;
                }
            }
            return cur;
        }
    }
}

/// Number of enabled processors in the MP table (Intel MP spec 1.4), 1 if none is found.
fn count_cpus() -> u32 {
    for (lo, hi) in [(0x9fc00u64, 0xa0000u64), (0xf0000, 0x100000)] {
        let mut a = lo;
        while a + 16 <= hi {
            if rd32(a) == u32::from_le_bytes(*b"_MP_") {
                let len = u64::from(rd8(a + 8)) * 16;
                let sum = (0..len.max(16)).fold(0u8, |s, i| s.wrapping_add(rd8(a + i)));
                if sum == 0 {
                    return count_mp_config(a);
                }
            }
            a += 16;
        }
    }
    1
}

fn count_mp_config(fp: u64) -> u32 {
    let cfg = u64::from(rd32(fp + 4));
    if cfg == 0 {
        // A default configuration (feature byte 1 != 0): always two processors.
        return if rd8(fp + 11) != 0 { 2 } else { 1 };
    }
    if rd32(cfg) != u32::from_le_bytes(*b"PCMP") {
        return 1;
    }
    let count = rd16(cfg + 34);
    let table_end = cfg + u64::from(rd16(cfg + 4));
    let mut e = cfg + 44;
    let mut cpus = 0;
    for _ in 0..count {
        if e >= table_end {
            break;
        }
        match rd8(e) {
            0 => {
                if rd8(e + 3) & 1 != 0 {
                    cpus += 1;
                }
                e += 20;
            }
            1..=4 => e += 8,
            _ => break,
        }
    }
    cpus.max(1)
}

// ---- state shared by the vCPUs (ring 3 atomics) ----------------------------------------

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);

/// Set to 1 by an AP when it reached ring 3.
static ARRIVED: [AtomicU64; NCPU] = [ZERO; NCPU];
/// 0 until the BSP published the configuration below, then 1.
static CONFIG_READY: AtomicU64 = AtomicU64::new(0);
/// Set when the guest is about to exit with an error: APs stop.
static ABORT: AtomicU64 = AtomicU64::new(0);
static CFG_WSS_MIB: AtomicU64 = AtomicU64::new(0);
static CFG_PAGES: AtomicU64 = AtomicU64::new(0);
static CFG_ITERS: AtomicU64 = AtomicU64::new(0);
static CFG_EVERY: AtomicU64 = AtomicU64::new(0);
static CFG_FULL: AtomicU64 = AtomicU64::new(0);
static CFG_CPUS: AtomicU64 = AtomicU64::new(0);
/// Number of CPUs whose region is initialized.
static INIT_DONE: AtomicU64 = AtomicU64::new(0);
/// How many iterations an AP may run ahead of the line the BSP last printed. Line `n`
/// still combines every stream's hash of iteration `n`; the slack only lets a vCPU go on
/// while another one is descheduled (the project's hosts are small and oversubscribed)
/// or printing.
const SLACK: u64 = 64;
/// Highest iteration the APs may run: the last combined line + SLACK.
static GO: AtomicU64 = AtomicU64::new(0);
/// Per-CPU progress: last iteration completed (its hash is in HASH[n % SLACK]). Exported
/// as `ftvm_progress` so a host can read it from guest memory (`ftvm_testguest::symbol`).
#[export_name = "ftvm_progress"]
static DONE: [AtomicU64; NCPU] = [ZERO; NCPU];
#[allow(clippy::declare_interior_mutable_const)]
const ZERO_ROW: [AtomicU64; NCPU] = [ZERO; NCPU];
/// Per-CPU running hash after iteration n, in slot n % SLACK.
static HASH: [[AtomicU64; NCPU]; SLACK as usize] = [ZERO_ROW; SLACK as usize];

fn region(p: &GuestParams, cpus: u32, cpu: u32) -> &'static mut [u8] {
    let len = p.region_pages(cpus) as usize * PAGE_SIZE;
    let base = WSS_BASE + cpu as u64 * len as u64;
    // SAFETY: the BSP checked that RAM covers [WSS_BASE, WSS_BASE + cpus * len) below
    // 4 GiB (identity-mapped, user-accessible); this CPU's region is used by this CPU only
    // and nothing else (image, stacks, boot tables read earlier) lives there.
    unsafe { core::slice::from_raw_parts_mut(base as *mut u8, len) }
}

fn spin_until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        spin_loop();
    }
}

// ---- entry from boot.s: ftvm_rust_start(cpu, info, proto) in ring 3 -------------------

#[no_mangle]
extern "sysv64" fn ftvm_rust_start(cpu: u64, info: u64, proto: u64) -> ! {
    if proto == PROTO_AP {
        ap_main(cpu as u32)
    } else {
        bsp_main(info, proto)
    }
}

fn bsp_main(info: u64, proto: u64) -> ! {
    let mut boot = BootInfo {
        cmdline: [0; MAX_CMDLINE],
        cmdline_len: 0,
        ram: [(0, 0); MAX_MEM_RANGES],
        nram: 0,
        nmap: 0,
    };
    match proto {
        PROTO_LINUX => boot.from_linux(info),
        PROTO_PVH => boot.from_pvh(info),
        _ => fail(format_args!("unknown boot protocol {proto}")),
    }
    let Ok(cmdline) = core::str::from_utf8(&boot.cmdline[..boot.cmdline_len]) else {
        fail(format_args!("command line is not UTF-8"))
    };
    if kv::wanted(cmdline) {
        // The key-value service: all RAM from WSS_BASE on (one stretch) is its heap.
        if boot.nmap == 0 {
            fail(format_args!("kv=1 needs a memory map"));
        }
        let end = boot.ram_end_from(WSS_BASE).min(MAPPED_LIMIT);
        if end < WSS_BASE + (32 << 20) {
            fail(format_args!(
                "kv=1 needs at least 32 MiB of RAM from {WSS_BASE:#x}; give the VM at least 48 MiB"
            ));
        }
        kv::run(cmdline, (WSS_BASE, end));
    }
    let p = match GuestParams::from_cmdline(cmdline) {
        Ok(p) => p,
        Err(e) => fail(format_args!("bad command line: {e}")),
    };
    let fault = workload::fault_from_cmdline(cmdline);
    let cpus = count_cpus();
    if cpus > MAX_CPUS {
        fail(format_args!("{cpus} vCPUs, at most {MAX_CPUS} supported"));
    }
    let region_pages = p.region_pages(cpus);
    if region_pages == 0 {
        fail(format_args!(
            "wss_mib={} is too small for {cpus} vCPUs (one page each at least)",
            p.wss_mib
        ));
    }
    let wss_end = WSS_BASE + region_pages * PAGE_SIZE as u64 * u64::from(cpus);
    if boot.nmap > 0 && !boot.covers(WSS_BASE, wss_end) {
        let have = boot.ram_end_from(WSS_BASE);
        fail(format_args!(
            "memory too small: working set wss_mib={} needs RAM at [{WSS_BASE:#x}, {wss_end:#x}), \
             RAM at {WSS_BASE:#x} ends at {have:#x}; give the VM at least {} MiB",
            p.wss_mib,
            (wss_end >> 20) + u64::from(wss_end & 0xfffff != 0)
        ));
    }

    // Wait for the APs (bounded: a missing AP is an error, not a hang).
    for ap in 1..cpus as usize {
        let mut spins: u64 = 0;
        while ARRIVED[ap].load(Ordering::Acquire) == 0 {
            spins += 1;
            if spins > (1 << 32) {
                fail(format_args!(
                    "vCPU {ap} of {cpus} (from the MP table) never started; \
                     does the VMM start APs at the FTVM note's entry?"
                ));
            }
            spin_loop();
        }
    }

    CFG_WSS_MIB.store(p.wss_mib, Ordering::Relaxed);
    CFG_PAGES.store(p.pages, Ordering::Relaxed);
    CFG_ITERS.store(p.iters, Ordering::Relaxed);
    CFG_EVERY.store(p.every, Ordering::Relaxed);
    CFG_FULL.store(p.full, Ordering::Relaxed);
    CFG_CPUS.store(u64::from(cpus), Ordering::Relaxed);
    CONFIG_READY.store(1, Ordering::Release);

    let seed = p.stream_seed(cpus, 0);
    let mem = region(&p, cpus, 0);
    workload::init_region(mem, seed);
    INIT_DONE.fetch_add(1, Ordering::AcqRel);
    spin_until(|| INIT_DONE.load(Ordering::Acquire) == u64::from(cpus));

    let mut out = Serial::new();
    out.bytes(READY_LINE.as_bytes());
    out.bytes(b"\n");
    out.flush();

    let mut h = workload::stream_start(seed);
    let mut n: u64 = 1;
    let mut line = [0u8; SEQ_LINE_MAX + 1];
    GO.store(SLACK, Ordering::Release);
    loop {
        if let Some((kind, at)) = fault {
            if n == at {
                raise(kind);
            }
        }
        h = workload::step(mem, h, seed, n, &p);
        let slot = &HASH[(n % SLACK) as usize];
        slot[0].store(h, Ordering::Relaxed);
        DONE[0].store(n, Ordering::Release);
        let sum = workload::line_sum(
            n,
            (0..cpus as usize).map(|c| {
                spin_until(|| DONE[c].load(Ordering::Acquire) >= n);
                slot[c].load(Ordering::Relaxed)
            }),
        );
        // Slot n % SLACK is consumed: APs may now run iteration n + SLACK into it.
        GO.store(n + SLACK, Ordering::Release);
        if n % p.every == 0 {
            let len = workload::format_seq_line(n, sum, &mut line);
            line[len] = b'\n';
            serial_write(&line[..=len]);
        }
        if p.iters != 0 && n >= p.iters {
            out.bytes(DONE_LINE.as_bytes());
            out.bytes(b"\n");
            out.flush();
            exit(EXIT_DONE);
        }
        n += 1;
    }
}

/// Raises a deliberate fault (`fault=` on the command line).
fn raise(kind: workload::Fault) {
    match kind {
        // SAFETY: ud2 raises #UD; the ring-0 handler prints a panic line and exits 3.
        workload::Fault::Ud => unsafe { asm!("ud2", options(nomem, nostack)) },
        // SAFETY: hlt is privileged: #GP in ring 3, handled as above.
        workload::Fault::Gp => unsafe { asm!("hlt", options(nomem, nostack)) },
        workload::Fault::Pf => {
            // SAFETY: not actually safe to dereference: 4 GiB is outside the identity
            // map, so this read raises #PF, which the ring-0 handler reports (exit 3).
            let v = unsafe { core::ptr::read_volatile(MAPPED_LIMIT as *const u64) };
            panic!("read above 4 GiB returned {v:#x} instead of faulting");
        }
        workload::Fault::Panic => panic!("deliberate panic (fault=panic)"),
        workload::Fault::Io => {
            // SAFETY: a byte to the unused POST port 0x80; IOPL=3 allows it on a real CPU.
            unsafe {
                asm!("outb %al, $0x80", in("al") 0u8, options(att_syntax, nomem, nostack));
            }
            panic!("ring-3 port I/O did not fault");
        }
    }
}

fn ap_main(cpu: u32) -> ! {
    ARRIVED[cpu as usize].store(1, Ordering::Release);
    spin_until(|| CONFIG_READY.load(Ordering::Acquire) != 0 || ABORT.load(Ordering::Acquire) != 0);
    let cpus = CFG_CPUS.load(Ordering::Relaxed) as u32;
    if ABORT.load(Ordering::Acquire) != 0 || cpu >= cpus {
        // More vCPUs than the MP table announced, or the BSP gave up: stay out of the way.
        loop {
            spin_loop();
        }
    }
    let p = GuestParams {
        wss_mib: CFG_WSS_MIB.load(Ordering::Relaxed),
        pages: CFG_PAGES.load(Ordering::Relaxed),
        iters: CFG_ITERS.load(Ordering::Relaxed),
        every: CFG_EVERY.load(Ordering::Relaxed),
        full: CFG_FULL.load(Ordering::Relaxed),
    };
    let seed = p.stream_seed(cpus, cpu);
    let mem = region(&p, cpus, cpu);
    workload::init_region(mem, seed);
    INIT_DONE.fetch_add(1, Ordering::AcqRel);

    let mut h = workload::stream_start(seed);
    let mut n: u64 = 1;
    loop {
        spin_until(|| GO.load(Ordering::Acquire) >= n);
        h = workload::step(mem, h, seed, n, &p);
        HASH[(n % SLACK) as usize][cpu as usize].store(h, Ordering::Relaxed);
        DONE[cpu as usize].store(n, Ordering::Release);
        n += 1;
    }
}
