//! The test guest's workload, shared verbatim by the guest (`guest/main.rs` includes this
//! file with `#[path]`) and by the host-side reference implementation.
//!
//! Rules for this file: `core` only (the guest is `#![no_std]`, no `alloc`), no `unsafe`,
//! pure functions over `&mut [u8]` regions. Everything a printed line depends on is in
//! here, so the guest and the reference cannot drift apart.
//!
//! Algorithm (see docs/testguest.md): the working set is split into one region per vCPU.
//! Each vCPU runs its own stream: a running 64-bit hash `h`, started from the stream seed.
//! Iteration `n` (n = 1, 2, ...) of a stream picks `pages` pages of its region with a PRNG
//! seeded by (stream seed, n), and for each picked page folds the page's words into `h`
//! and then rewrites the page with words derived from the new `h`. When `n` is a multiple
//! of `full`, it then folds every page of the region into `h` (read only). Line `n`'s sum
//! combines the hashes of all streams after iteration `n`.

/// Size of a page of the working set, in bytes.
pub const PAGE_SIZE: usize = 4096;
/// Guest-physical address where the working set starts (16 MiB).
pub const WSS_BASE: u64 = 16 << 20;
/// The guest's identity map covers guest-physical addresses below this (4 GiB).
pub const MAPPED_LIMIT: u64 = 1 << 32;
/// Most vCPUs the guest supports (static per-CPU GDT/TSS/stack slots).
pub const MAX_CPUS: u32 = 64;

/// First line the guest prints, once everything is set up.
pub const READY_LINE: &str = "ftvm-testguest ready";
/// Line printed after the last iteration, just before powering off with exit code 0.
pub const DONE_LINE: &str = "ftvm-testguest done";
/// Prefix of the line printed on a guest fault (CPU exception or Rust panic); exit code 3.
pub const PANIC_PREFIX: &str = "ftvm-testguest panic: ";
/// Prefix of the line printed when the guest cannot run (bad command line, memory too
/// small, ...); exit code 2.
pub const ERROR_PREFIX: &str = "ftvm-testguest error: ";
/// Exit code after `iters` iterations.
pub const EXIT_DONE: u32 = 0;
/// Exit code for a configuration error (bad parameters, memory too small).
pub const EXIT_ERROR: u32 = 2;
/// Exit code for a guest fault.
pub const EXIT_PANIC: u32 = 3;
/// Longest seq line, without the newline: "seq=" + 20 digits + " sum=" + 16 hex digits.
pub const SEQ_LINE_MAX: usize = 4 + 20 + 5 + 16;

/// The guest's parameters, taken from its command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GuestParams {
    /// Working-set size in MiB (all vCPUs together), placed at [`WSS_BASE`].
    pub wss_mib: u64,
    /// Pages read and rewritten per iteration per vCPU (picked with replacement).
    pub pages: u64,
    /// Iterations to run before printing the done line and powering off; 0 = forever.
    pub iters: u64,
    /// Print a seq line for every iteration `n` that is a multiple of `every` (>= 1).
    pub every: u64,
    /// Fold the whole region into the hash when `n` is a multiple of `full`; 0 = never.
    pub full: u64,
}

impl Default for GuestParams {
    fn default() -> Self {
        GuestParams {
            wss_mib: 64,
            pages: 256,
            iters: 0,
            every: 1,
            full: 1000,
        }
    }
}

/// Why a command line was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamError {
    /// The value of the named key is not a decimal or 0x-prefixed hex u64.
    NotANumber(&'static str),
    /// The named key must not be 0.
    Zero(&'static str),
    /// `wss_mib` is so large that the working set cannot be mapped below 4 GiB.
    TooLarge(&'static str),
}

impl core::fmt::Display for ParamError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ParamError::NotANumber(k) => write!(f, "{k}= needs a number (decimal or 0x hex)"),
            ParamError::Zero(k) => write!(f, "{k}= must be at least 1"),
            ParamError::TooLarge(k) => write!(
                f,
                "{k}= too large: the working set must end below 4 GiB (at most {} MiB)",
                (MAPPED_LIMIT - WSS_BASE) >> 20
            ),
        }
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else {
        s.parse().ok()
    }
}

impl GuestParams {
    /// Parses a kernel-style command line: space-separated `key=value` words. Keys are
    /// `wss_mib` (alias `wss`), `pages`, `iters`, `every`, `full`; other words
    /// (`console=ttyS0`, `quiet`, ...) are ignored; missing keys keep their defaults; a
    /// repeated key takes its last value.
    pub fn from_cmdline(cmdline: &str) -> Result<GuestParams, ParamError> {
        let mut p = GuestParams::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let (name, slot): (&'static str, &mut u64) = match key {
                "wss_mib" | "wss" => ("wss_mib", &mut p.wss_mib),
                "pages" => ("pages", &mut p.pages),
                "iters" => ("iters", &mut p.iters),
                "every" => ("every", &mut p.every),
                "full" => ("full", &mut p.full),
                _ => continue,
            };
            *slot = parse_u64(value).ok_or(ParamError::NotANumber(name))?;
        }
        p.validate()?;
        Ok(p)
    }

    /// Checks the values that no layout can accept.
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.wss_mib == 0 {
            return Err(ParamError::Zero("wss_mib"));
        }
        if self.every == 0 {
            return Err(ParamError::Zero("every"));
        }
        if self.wss_mib > (MAPPED_LIMIT - WSS_BASE) >> 20 {
            return Err(ParamError::TooLarge("wss_mib"));
        }
        Ok(())
    }

    /// Pages in each vCPU's region: the working set split evenly, remainder unused.
    /// 0 if `cpus` is 0 or the working set has fewer pages than `cpus`.
    pub fn region_pages(&self, cpus: u32) -> u64 {
        if cpus == 0 {
            return 0;
        }
        self.wss_mib.saturating_mul((1 << 20) / PAGE_SIZE as u64) / u64::from(cpus)
    }

    /// Seed of vCPU `cpu`'s stream when `cpus` vCPUs run. Depends on every parameter that
    /// changes what an iteration does (`wss_mib`, `pages`, `full`, `cpus`), not on `iters`
    /// or `every`: a run with `iters=10` prints a prefix of a run with `iters=100`, and
    /// `every=10` prints every tenth line of `every=1`.
    pub fn stream_seed(&self, cpus: u32, cpu: u32) -> u64 {
        let mut s = mix(0x6674_766d_7465_7374); // "ftvmtest"
        for v in [
            self.wss_mib,
            self.pages,
            self.full,
            u64::from(cpus),
            u64::from(cpu),
        ] {
            s = mix(s ^ v);
        }
        s
    }
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
const LANE_MUL: u64 = 0xff51_afd7_ed55_8ccd;

/// 64-bit finalizer (splitmix64): a bijection with full avalanche.
#[inline]
pub const fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[inline(always)]
fn word(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

#[inline(always)]
fn absorb(lane: u64, w: u64) -> u64 {
    // (lane ^ w) * odd is a bijection in w: changing any one word always changes the lane.
    (lane ^ w).wrapping_mul(LANE_MUL).rotate_left(29)
}

/// Folds every 64-bit word of `page` into `h`. Four independent lanes keep the multiply
/// chains short; any single changed word changes the result.
pub fn fold_page(page: &[u8], h: u64) -> u64 {
    let (mut a, mut b, mut c, mut d) = (h, h ^ GOLDEN, h ^ LANE_MUL, !h);
    for chunk in page.chunks_exact(32) {
        a = absorb(a, word(chunk, 0));
        b = absorb(b, word(chunk, 8));
        c = absorb(c, word(chunk, 16));
        d = absorb(d, word(chunk, 24));
    }
    mix(mix(mix(mix(a) ^ b) ^ c) ^ d)
}

/// Rewrites `page` with words derived from `s`.
pub fn fill_page(page: &mut [u8], s: u64) {
    let mut x = s;
    for chunk in page.chunks_exact_mut(8) {
        x = x.wrapping_add(GOLDEN);
        let w = (x ^ (x >> 29)).wrapping_mul(0xd6e8_feb8_6659_fd93);
        chunk.copy_from_slice(&w.to_le_bytes());
    }
}

/// Writes a region's initial content, a function of the stream seed only.
pub fn init_region(region: &mut [u8], seed: u64) {
    for (i, page) in region.chunks_exact_mut(PAGE_SIZE).enumerate() {
        fill_page(page, mix(seed ^ (i as u64).wrapping_mul(GOLDEN)));
    }
}

/// A stream's running hash before iteration 1.
pub fn stream_start(seed: u64) -> u64 {
    mix(seed ^ 0x5eed)
}

/// Runs iteration `n` of a stream over `region` (a whole number of pages, at least one)
/// and returns the new running hash.
pub fn step(region: &mut [u8], h: u64, seed: u64, n: u64, p: &GuestParams) -> u64 {
    let npages = (region.len() / PAGE_SIZE) as u64;
    let mut h = h;
    let mut rng = mix(seed ^ n.wrapping_mul(LANE_MUL));
    for _ in 0..p.pages {
        rng = rng.wrapping_add(GOLDEN);
        let pi = ((u128::from(mix(rng)) * u128::from(npages)) >> 64) as usize;
        let page = &mut region[pi * PAGE_SIZE..(pi + 1) * PAGE_SIZE];
        h = fold_page(page, h ^ pi as u64);
        fill_page(page, h);
    }
    if p.full != 0 && n % p.full == 0 {
        for (pi, page) in region.chunks_exact(PAGE_SIZE).enumerate() {
            h = fold_page(page, h ^ pi as u64);
        }
    }
    mix(h ^ n)
}

/// The sum printed on line `n`: all streams' hashes after iteration `n`, in vCPU order.
pub fn line_sum<I: IntoIterator<Item = u64>>(n: u64, hashes: I) -> u64 {
    let mut s = mix(n ^ GOLDEN);
    for h in hashes {
        s = mix(s ^ h);
    }
    s
}

/// A deliberate guest fault for testing the failure paths (guest-only command-line words
/// `fault=<kind>` and `fault_at=<n>`, not part of [`GuestParams`]: they do not change any
/// printed sum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `ud2` in ring 3: `panic: cpu exception 6 #UD ...`.
    Ud,
    /// A read above 4 GiB (not mapped): `panic: cpu exception 14 #PF ...`.
    Pf,
    /// `hlt` in ring 3: `panic: cpu exception 13 #GP ...`.
    Gp,
    /// A Rust panic: `panic: deliberate panic (fault=panic) at ...`.
    Panic,
    /// A ring-3 `out` to port 0x80 (IOPL=3): #GP on the project's PVM hosts; where it
    /// does not fault (QEMU) the guest panics with "ring-3 port I/O did not fault".
    Io,
}

/// Reads `fault=ud|pf|gp|panic|io` and `fault_at=<n>` (default 1) from a command line: the
/// guest faults just before iteration `n` (after the ready line and `n - 1` lines).
pub fn fault_from_cmdline(cmdline: &str) -> Option<(Fault, u64)> {
    let mut fault = None;
    let mut at = 1;
    for word in cmdline.split_ascii_whitespace() {
        match word.split_once('=') {
            Some(("fault", "ud")) => fault = Some(Fault::Ud),
            Some(("fault", "pf")) => fault = Some(Fault::Pf),
            Some(("fault", "gp")) => fault = Some(Fault::Gp),
            Some(("fault", "panic")) => fault = Some(Fault::Panic),
            Some(("fault", "io")) => fault = Some(Fault::Io),
            Some(("fault_at", v)) => at = parse_u64(v).unwrap_or(1).max(1),
            _ => {}
        }
    }
    fault.map(|f| (f, at))
}

/// Formats `seq=<n> sum=<16 hex>` (no newline) into `buf` (at least [`SEQ_LINE_MAX`]
/// bytes), returns the used length.
pub fn format_seq_line(n: u64, sum: u64, buf: &mut [u8]) -> usize {
    let mut len = 0;
    for &b in b"seq=" {
        buf[len] = b;
        len += 1;
    }
    let mut digits = [0u8; 20];
    let mut nd = 0;
    let mut v = n;
    loop {
        digits[nd] = b'0' + (v % 10) as u8;
        nd += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while nd > 0 {
        nd -= 1;
        buf[len] = digits[nd];
        len += 1;
    }
    for &b in b" sum=" {
        buf[len] = b;
        len += 1;
    }
    for i in (0..16).rev() {
        buf[len] = b"0123456789abcdef"[((sum >> (i * 4)) & 0xf) as usize];
        len += 1;
    }
    len
}
