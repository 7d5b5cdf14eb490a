//! stream: the replication/migration stream alone on loopback TCP, plain and sealed
//! (AES-128-GCM, a keyed session), against `openssl speed` for AES-128-GCM (the wire's
//! cipher since protocol version 6) and AES-256-GCM on one core and against ring's own
//! sealing rate (the library the wire uses), with the CPU time per GB of each side.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::time::Instant;

use ftvm_replication::low_water::LowWater;
use ftvm_replication::recv_ahead::FramesAhead;
use ftvm_replication::send_queue::QueuedWriter;
use ftvm_wire::auth::TagKey;
use ftvm_wire::{
    AssemblerConfig, AuthKey, EpochAssembler, MessageReader, MessageWriter, Nonce, Progress,
};
use serde_json::json;

use crate::util::{fmt, fmt_opt, median, Res};
use crate::{Ctx, Table};

const PAGE: usize = 4096;

/// Sends `total` bytes of page data (1 MiB Pages frames, as a full copy does) from this
/// thread to a receiving thread that feeds every frame to an epoch assembler as a
/// migration target does (`FTVM_BENCH_STREAM_FEED=message`: decoded messages through
/// `feed`, the path before wire version 5; plain only); MB/s from the first byte to
/// the receiver's end. `threaded`: as a migration does, the socket writes happen on a
/// sender thread (`QueuedWriter`) and the receiver reads, checks and opens frames on a
/// reader thread (`FramesAhead`) while its thread decodes.
/// CPU seconds (user + system) of the calling thread (`RUSAGE_THREAD`) or of the whole
/// process (`RUSAGE_SELF`, ended threads included).
fn cpu_seconds(who: libc::c_int) -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the valid, writable buffer it is given.
    let r = unsafe { libc::getrusage(who, u.as_mut_ptr()) };
    if r != 0 {
        return f64::NAN;
    }
    // SAFETY: zero-initialised and filled by the successful call above.
    let u = unsafe { u.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Where one thread's wall time went, from the scheduler's own accounting
/// (`/proc/thread-self/schedstat`: time on a CPU, time runnable but waiting for one).
#[derive(Debug, Clone, Copy)]
struct Sched {
    at: Instant,
    ran: f64,
    waited: f64,
}

impl Sched {
    fn now() -> Option<Sched> {
        let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
        let mut f = text.split_whitespace().map(|x| x.parse::<f64>().ok());
        Some(Sched {
            at: Instant::now(),
            ran: f.next()?? / 1e9,
            waited: f.next()?? / 1e9,
        })
    }

    /// Fractions of the wall time since `start`: (on a CPU, waiting for a CPU, blocked:
    /// waiting for the socket or the other side).
    fn shares_since(start: Option<Sched>) -> Option<Shares> {
        let (a, b) = (start?, Sched::now()?);
        let wall = b.at.duration_since(a.at).as_secs_f64();
        if wall <= 0.0 {
            return None;
        }
        let ran = (b.ran - a.ran) / wall;
        let waited = (b.waited - a.waited) / wall;
        Some(Shares {
            ran,
            waited,
            blocked: (1.0 - ran - waited).max(0.0),
        })
    }
}

/// See [`Sched::shares_since`].
#[derive(Debug, Clone, Copy)]
struct Shares {
    ran: f64,
    waited: f64,
    blocked: f64,
}

/// One run's figures: throughput and CPU seconds per GB of page data (both sides
/// together; per side when each side is one thread), and where each side's time went.
#[derive(Debug, Clone, Copy)]
struct RunFigures {
    mb_s: f64,
    cpu_per_gb: f64,
    send_cpu_per_gb: Option<f64>,
    recv_cpu_per_gb: Option<f64>,
    send_shares: Option<Shares>,
    recv_shares: Option<Shares>,
}

fn one_run(total: usize, keyed: bool, threaded: bool) -> Res<RunFigures> {
    let keys = if keyed {
        let k = AuthKey::new(&[0x5a; 32]).map_err(|e| e.to_string())?;
        Some(k.session_keys(&Nonce([1; 32]), &Nonce([2; 32])))
    } else {
        None
    };
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let rkey: Option<TagKey> = keys.as_ref().map(|k| k.initiator_to_responder.clone());
    let receiver = std::thread::spawn(move || -> Res<(u64, f64, Option<Shares>)> {
        let (s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
        let c0 = cpu_seconds(libc::RUSAGE_THREAD);
        let sched0 = Sched::now();
        let mut r = MessageReader::new(s.try_clone().map_err(|e| e.to_string())?);
        // As a connection's reader (ftvm_replication::link): woken per 256 KiB of a large
        // frame (`FTVM_BENCH_STREAM_WAKE=packet`: per packet, as before).
        if std::env::var("FTVM_BENCH_STREAM_WAKE").map_or(true, |v| v != "packet") {
            let low_water = LowWater::new(&s).map_err(|e| e.to_string())?;
            r.frames_mut().set_wait_hint(Box::new(low_water));
        }
        if let Some(k) = rkey {
            r.frames_mut().set_key(k);
        }
        // As a migration target: every frame goes through an epoch assembler (its pages
        // counted, the epoch verified at its commit) before it counts.
        let mut asm = EpochAssembler::new(AssemblerConfig::migration()).pages_applied_on_arrival();
        let by_message = std::env::var("FTVM_BENCH_STREAM_FEED").is_ok_and(|v| v == "message");
        let mut pages = 0u64;
        let mut take = |p: Progress| {
            if let Progress::Committed(e) = p {
                pages += e.commit().pages;
            }
        };
        // FTVM_BENCH_STREAM_SPLIT=send: only the sender has a thread of its own (the
        // primary's single reading thread on the backup, the migration's sender thread).
        let split_send = std::env::var("FTVM_BENCH_STREAM_SPLIT").is_ok_and(|v| v == "send");
        if threaded && !split_send {
            let mut ahead = FramesAhead::start(r.into_frames(), &s).map_err(|e| e.to_string())?;
            while let Some(f) = ahead.recv_frame().map_err(|e| e.to_string())? {
                let fed = asm.feed_frame(f).map_err(|e| e.to_string())?;
                take(fed.progress);
                if let Some(f) = fed.frame {
                    ahead.give_back(f.buf);
                }
            }
            return Ok((
                pages,
                cpu_seconds(libc::RUSAGE_THREAD) - c0,
                Sched::shares_since(sched0),
            ));
        }
        if by_message {
            // The copying path (`feed` re-encodes each message for the epoch digest);
            // plain sessions only: a sealed session's commits carry no digest.
            while let Some(m) = r.recv().map_err(|e| e.to_string())? {
                take(asm.feed(&m).map_err(|e| e.to_string())?);
            }
            return Ok((
                pages,
                cpu_seconds(libc::RUSAGE_THREAD) - c0,
                Sched::shares_since(sched0),
            ));
        }
        let mut frames = r.into_frames();
        loop {
            let spare = asm.spare_buffer();
            let Some(f) = frames.read_frame_owned(spare).map_err(|e| e.to_string())? else {
                break;
            };
            let fed = asm.feed_frame(f).map_err(|e| e.to_string())?;
            take(fed.progress);
            if let Some(f) = fed.frame {
                asm.return_buffer(f.buf);
            }
        }
        Ok((
            pages,
            cpu_seconds(libc::RUSAGE_THREAD) - c0,
            Sched::shares_since(sched0),
        ))
    });
    // Page contents that are neither zero nor trivially compressible.
    let mut buf = vec![0u8; 64 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    // Whole 8-byte words (the buffer is a multiple of 8): a copy of a fixed size is
    // inlined, so the profile's memmove is the stream's.
    for c in buf.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut w = MessageWriter::new(s.try_clone().map_err(|e| e.to_string())?);
    if let Some(b) = batch_bytes() {
        w.set_batch_bytes(b);
    }
    if let Some(k) = &keys {
        w.frames_mut().set_key(k.initiator_to_responder.clone());
    }
    let t0 = Instant::now();
    let sched0 = Sched::now();
    let (p0, s0) = (
        cpu_seconds(libc::RUSAGE_SELF),
        cpu_seconds(libc::RUSAGE_THREAD),
    );
    if threaded {
        let queue = QueuedWriter::new(s.try_clone().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let mut w = w.map_inner(|_direct| queue).map_err(|e| e.to_string())?;
        w.frames_mut().set_hand_over(QueuedWriter::write_owned);
        send_pages(&mut w, &buf, total).map_err(|e| format!("sending: {e}"))?;
        w.frames()
            .get_ref()
            .wait_written()
            .map_err(|e| format!("sending: {e}"))?;
        let _ = s.shutdown(Shutdown::Write);
        drop(w);
    } else {
        send_pages(&mut w, &buf, total).map_err(|e| format!("sending: {e}"))?;
        let _ = s.shutdown(Shutdown::Write);
        drop(w);
    }
    let send_cpu = cpu_seconds(libc::RUSAGE_THREAD) - s0;
    let send_shares = Sched::shares_since(sched0);
    let (pages, recv_cpu, recv_shares) = receiver
        .join()
        .map_err(|_| "receiver panicked".to_string())??;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(libc::RUSAGE_SELF) - p0;
    if pages as usize * PAGE != total.div_ceil(buf.len()) * buf.len() {
        return Err(format!("receiver got {pages} pages"));
    }
    let gb = pages as f64 * PAGE as f64 / 1e9;
    // With helper threads each side's time is spread over threads that ended: only the
    // total is exact then.
    let side = |c: f64| (!threaded).then_some(c / gb);
    Ok(RunFigures {
        mb_s: gb * 1e3 / secs,
        cpu_per_gb: cpu / gb,
        send_cpu_per_gb: side(send_cpu),
        recv_cpu_per_gb: side(recv_cpu),
        send_shares: send_shares.filter(|_| !threaded),
        recv_shares: recv_shares.filter(|_| !threaded),
    })
}

/// `FTVM_BENCH_STREAM_BATCH=KiB`: page data per Pages frame (default 1 MiB).
fn batch_bytes() -> Option<usize> {
    std::env::var("FTVM_BENCH_STREAM_BATCH")
        .ok()?
        .parse::<usize>()
        .ok()
        .map(|k| k << 10)
}

/// One epoch of `total` bytes of pages from `buf` (repeated), in 1 MiB items.
fn send_pages<W: std::io::Write>(
    w: &mut MessageWriter<W>,
    buf: &[u8],
    total: usize,
) -> Result<(), ftvm_wire::SendError> {
    w.begin_epoch(1)?;
    let mut sent = 0usize;
    while sent < total {
        let items = buf
            .chunks(1 << 20)
            .enumerate()
            .map(|(i, c)| (((sent + i * (1 << 20)) % (1 << 30)) as u64, c));
        w.send_pages(items)?;
        sent += buf.len();
    }
    w.commit_epoch()?;
    w.flush()
}

/// ring's AES-128-GCM (the wire's cipher and library) sealing 1 MiB records in place,
/// in cache, on this thread: MB/s from the thread's CPU time (256 MiB, best of 3).
fn ring_seal_rate() -> Option<f64> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[0x5a; 16]).ok()?);
    let mut buf = vec![0x3cu8; 1 << 20];
    let mut best: Option<f64> = None;
    let mut seq = 0u64;
    for _ in 0..3 {
        let c0 = cpu_seconds(libc::RUSAGE_THREAD);
        for _ in 0..256 {
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&seq.to_le_bytes());
            seq += 1;
            let tag = key
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::empty(), &mut buf)
                .ok()?;
            let _ = std::hint::black_box(tag);
        }
        let secs = cpu_seconds(libc::RUSAGE_THREAD) - c0;
        if secs > 0.0 {
            let rate = 256.0 * (1 << 20) as f64 / 1e6 / secs;
            best = Some(best.map_or(rate, |b: f64| b.max(rate)));
        }
    }
    best
}

/// `openssl speed -evp CIPHER` on one core: MB/s for 16 KiB blocks.
fn openssl_speed(cipher: &str) -> Option<f64> {
    let out = Command::new("openssl")
        .args(["speed", "-seconds", "2", "-evp", cipher])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.to_ascii_lowercase().starts_with(cipher))?;
    let k = line.split_whitespace().last()?.trim_end_matches('k');
    Some(k.parse::<f64>().ok()? * 1e3 / 1e6)
}

pub fn stream(ctx: &Ctx) -> Res<Table> {
    let total = ctx.pick(256usize << 20, 1 << 30);
    let n = ctx.pick(3, 5);
    let mut t = Table::new(&[
        "stream",
        "runs",
        "MB/s p50",
        "min",
        "max",
        "vs plain",
        "vs openssl aes-128-gcm (wire cipher)",
        "vs openssl aes-256-gcm",
        "CPU s/GB (both sides)",
        "sender CPU s/GB",
        "receiver CPU s/GB",
    ]);
    // (label, keyed, threaded): the samples of each mode, alternating runs.
    let modes = [
        ("plain (no key)", false, false),
        ("keyed: AES-128-GCM sealed frames", true, false),
        ("plain, sender + reader threads (as migration)", false, true),
        ("sealed, sender + reader threads (as migration)", true, true),
    ];
    // FTVM_BENCH_STREAM_MODES=1,3 runs only those modes (0-based), e.g. under a profiler.
    let only: Option<Vec<usize>> = std::env::var("FTVM_BENCH_STREAM_MODES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    let mut samples: Vec<Vec<RunFigures>> = vec![Vec::new(); modes.len()];
    for _ in 0..n {
        for (i, (label, keyed, threaded)) in modes.iter().enumerate() {
            if only.as_ref().is_some_and(|o| !o.contains(&i)) {
                continue;
            }
            match one_run(total, *keyed, *threaded) {
                Ok(v) => samples[i].push(v),
                Err(e) => t.fail(label, e),
            }
        }
    }
    let ossl256 = openssl_speed("aes-256-gcm");
    let ossl128 = openssl_speed("aes-128-gcm");
    let minmax = |v: &[f64]| {
        (
            v.iter().copied().reduce(f64::min),
            v.iter().copied().reduce(f64::max),
        )
    };
    let rates = |i: usize| samples[i].iter().map(|r| r.mb_s).collect::<Vec<_>>();
    let med = |i: usize, f: fn(&RunFigures) -> Option<f64>| {
        median(&samples[i].iter().filter_map(f).collect::<Vec<_>>())
    };
    let pm = median(&rates(0));
    for (i, (label, keyed, _)) in modes.iter().enumerate() {
        let m = median(&rates(i));
        let (lo, hi) = minmax(&rates(i));
        let vs_ossl = |o: Option<f64>| match (m, o, keyed) {
            (Some(s), Some(o), true) if o > 0.0 => format!("{} ({} MB/s)", fmt(s / o), fmt(o)),
            _ => "-".into(),
        };
        t.row(vec![
            (*label).into(),
            samples[i].len().to_string(),
            fmt_opt(m),
            fmt_opt(lo),
            fmt_opt(hi),
            match (m, pm) {
                (Some(s), Some(p)) if p > 0.0 => fmt(s / p),
                _ => "-".into(),
            },
            vs_ossl(ossl128),
            vs_ossl(ossl256),
            fmt_opt(med(i, |r| Some(r.cpu_per_gb))),
            fmt_opt(med(i, |r| r.send_cpu_per_gb)),
            fmt_opt(med(i, |r| r.recv_cpu_per_gb)),
        ]);
    }
    t.notes.push(format!(
        "{} MiB of page data per run in 1 MiB Pages frames (one epoch), sender and receiver \
         (an epoch assembler fed frame by frame, as a migration target: the epoch must verify \
         at its commit) in this process on loopback TCP (both on the same 2 cores), from the first \
         byte to the receiver's last message. The threaded modes write through the migration's \
         sender thread and read through its frame reader thread (opening of sealed frames \
         there, decoding on the receiving thread). CPU s/GB: user + system CPU seconds per GB \
         of page data (getrusage), both sides together, and per side where each side is one \
         thread (the kernel's TCP work on loopback is charged to whichever thread runs it); \
         unlike MB/s it does not depend on the load. openssl: `openssl speed -seconds 2 -evp \
         aes-128-gcm` (and aes-256-gcm), 16 KiB blocks, one core, encryption only.",
        total >> 20
    ));
    // Load-independent: how fast one core could feed the sealed stream (the sender's CPU
    // time per GB, the kernel's socket work included), against the cipher alone.
    let sender_rate = med(1, |r| r.send_cpu_per_gb).map(|c| 1e3 / c);
    let receiver_rate = med(1, |r| r.recv_cpu_per_gb).map(|c| 1e3 / c);
    if let (Some(r), Some(o)) = (sender_rate, ossl128) {
        t.notes.push(format!(
            "Sealed sender, one core: {} MB/s from its CPU time (= {} x openssl aes-128-gcm, \
             {} x aes-256-gcm); sealed receiver {} MB/s; plain sender: {} MB/s.",
            fmt(r),
            fmt(r / o),
            ossl256.map_or("-".into(), |o| fmt(r / o)),
            fmt_opt(receiver_rate),
            fmt_opt(med(0, |r| r.send_cpu_per_gb).map(|c| 1e3 / c)),
        ));
    }
    // Where each side's wall time went (single-threaded modes): on a CPU, waiting for one
    // (the machine's other load), or blocked (on the socket: the other side is slower, or
    // the two do not overlap).
    for (i, what) in [(0, "plain"), (1, "sealed")] {
        let sh = |f: fn(&RunFigures) -> Option<f64>| fmt_opt(med(i, f).map(|x| x * 100.0));
        if med(i, |r| r.send_shares.map(|s| s.ran)).is_some() {
            t.notes.push(format!(
                "{what} stream, share of its wall time (medians, %): sender on a CPU {}, \
                 waiting for a CPU {}, blocked {}; receiver on a CPU {}, waiting for a CPU {}, \
                 blocked {} (/proc/thread-self/schedstat).",
                sh(|r| r.send_shares.map(|s| s.ran)),
                sh(|r| r.send_shares.map(|s| s.waited)),
                sh(|r| r.send_shares.map(|s| s.blocked)),
                sh(|r| r.recv_shares.map(|s| s.ran)),
                sh(|r| r.recv_shares.map(|s| s.waited)),
                sh(|r| r.recv_shares.map(|s| s.blocked)),
            ));
        }
    }
    let ring_seal = ring_seal_rate();
    if let Some(c) = ring_seal {
        t.notes.push(format!(
            "The cipher alone, as the wire uses it (ring AES-128-GCM, sealing 1 MiB records in \
             place, in cache, one core, from its CPU time): {} MB/s = {} x openssl \
             aes-128-gcm, i.e. {} CPU s/GB per side of the sealed stream's {} (both sides).",
            fmt(c),
            ossl128.map_or("-".into(), |o| fmt(c / o)),
            fmt(1e3 / c),
            fmt_opt(med(1, |r| Some(r.cpu_per_gb))),
        ));
    }
    let col =
        |i: usize, f: fn(&RunFigures) -> Option<f64>| samples[i].iter().map(f).collect::<Vec<_>>();
    t.data = json!({
        "plain_mb_s": rates(0),
        "sealed_mb_s": rates(1),
        "plain_threaded_mb_s": rates(2),
        "sealed_threaded_mb_s": rates(3),
        "plain_cpu_s_per_gb": col(0, |r| Some(r.cpu_per_gb)),
        "sealed_cpu_s_per_gb": col(1, |r| Some(r.cpu_per_gb)),
        "plain_threaded_cpu_s_per_gb": col(2, |r| Some(r.cpu_per_gb)),
        "sealed_threaded_cpu_s_per_gb": col(3, |r| Some(r.cpu_per_gb)),
        "plain_sender_cpu_s_per_gb": col(0, |r| r.send_cpu_per_gb),
        "plain_receiver_cpu_s_per_gb": col(0, |r| r.recv_cpu_per_gb),
        "sealed_sender_cpu_s_per_gb": col(1, |r| r.send_cpu_per_gb),
        "sealed_receiver_cpu_s_per_gb": col(1, |r| r.recv_cpu_per_gb),
        "sealed_sender_on_cpu": col(1, |r| r.send_shares.map(|s| s.ran)),
        "sealed_sender_waiting_for_cpu": col(1, |r| r.send_shares.map(|s| s.waited)),
        "sealed_sender_blocked": col(1, |r| r.send_shares.map(|s| s.blocked)),
        "sealed_receiver_on_cpu": col(1, |r| r.recv_shares.map(|s| s.ran)),
        "sealed_receiver_waiting_for_cpu": col(1, |r| r.recv_shares.map(|s| s.waited)),
        "sealed_receiver_blocked": col(1, |r| r.recv_shares.map(|s| s.blocked)),
        "plain_sender_blocked": col(0, |r| r.send_shares.map(|s| s.blocked)),
        "plain_receiver_blocked": col(0, |r| r.recv_shares.map(|s| s.blocked)),
        "openssl_aes_256_gcm_mb_s": ossl256,
        "openssl_aes_128_gcm_mb_s": ossl128,
        "sealed_sender_one_core_mb_s": sender_rate,
        "sealed_receiver_one_core_mb_s": receiver_rate,
        "ring_aes_128_gcm_seal_mb_s": ring_seal,
    });
    Ok(t)
}
