//! stream: the replication/migration stream alone on loopback TCP, plain and sealed
//! (AES-256-GCM, a keyed session), against `openssl speed` for the same cipher.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::time::Instant;

use ftvm_replication::recv_ahead::FramesAhead;
use ftvm_replication::send_queue::QueuedWriter;
use ftvm_wire::auth::TagKey;
use ftvm_wire::{AuthKey, Message, MessageReader, MessageWriter, Nonce};
use serde_json::json;

use crate::util::{fmt, fmt_opt, median, Res};
use crate::{Ctx, Table};

const PAGE: usize = 4096;

/// Sends `total` bytes of page data (1 MiB Pages frames, as a full copy does) from this
/// thread to a receiving thread that decodes every message; MB/s from the first byte to
/// the receiver's end. `threaded`: as a migration does, the socket writes happen on a
/// sender thread (`QueuedWriter`) and the receiver reads, checks and opens frames on a
/// reader thread (`FramesAhead`) while its thread decodes.
fn one_run(total: usize, keyed: bool, threaded: bool) -> Res<f64> {
    let keys = if keyed {
        let k = AuthKey::new(&[0x5a; 32]).map_err(|e| e.to_string())?;
        Some(k.session_keys(&Nonce([1; 32]), &Nonce([2; 32])))
    } else {
        None
    };
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let rkey: Option<TagKey> = keys.as_ref().map(|k| k.initiator_to_responder.clone());
    let receiver = std::thread::spawn(move || -> Res<u64> {
        let (s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
        let mut r = MessageReader::new(s.try_clone().map_err(|e| e.to_string())?);
        if let Some(k) = rkey {
            r.frames_mut().set_key(k);
        }
        let mut pages = 0u64;
        if threaded {
            let mut ahead = FramesAhead::start(r.into_frames(), &s).map_err(|e| e.to_string())?;
            while let Some(m) = ahead.recv().map_err(|e| e.to_string())? {
                if let Message::Pages { .. } = m {
                    pages += m.page_count();
                }
            }
            return Ok(pages);
        }
        while let Some(m) = r.recv().map_err(|e| e.to_string())? {
            if let Message::Pages { .. } = m {
                pages += m.page_count();
            }
        }
        Ok(pages)
    });
    // Page contents that are neither zero nor trivially compressible.
    let mut buf = vec![0u8; 64 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for c in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut w = MessageWriter::new(s.try_clone().map_err(|e| e.to_string())?);
    if let Some(k) = &keys {
        w.frames_mut().set_key(k.initiator_to_responder.clone());
    }
    let t0 = Instant::now();
    if threaded {
        let queue = QueuedWriter::new(s.try_clone().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let mut w = w.map_inner(|_direct| queue).map_err(|e| e.to_string())?;
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
    let pages = receiver
        .join()
        .map_err(|_| "receiver panicked".to_string())??;
    let secs = t0.elapsed().as_secs_f64();
    if pages as usize * PAGE != total.div_ceil(buf.len()) * buf.len() {
        return Err(format!("receiver got {pages} pages"));
    }
    Ok(pages as f64 * PAGE as f64 / 1e6 / secs)
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
        "vs openssl speed (1 core)",
    ]);
    // (label, keyed, threaded): the samples of each mode, alternating runs.
    let modes = [
        ("plain (no key)", false, false),
        ("keyed: AES-256-GCM sealed frames", true, false),
        ("plain, sender + reader threads (as migration)", false, true),
        ("sealed, sender + reader threads (as migration)", true, true),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for _ in 0..n {
        for (i, (label, keyed, threaded)) in modes.iter().enumerate() {
            match one_run(total, *keyed, *threaded) {
                Ok(v) => samples[i].push(v),
                Err(e) => t.fail(label, e),
            }
        }
    }
    let ossl = openssl_speed("aes-256-gcm");
    let minmax = |v: &[f64]| {
        (
            v.iter().copied().reduce(f64::min),
            v.iter().copied().reduce(f64::max),
        )
    };
    let pm = median(&samples[0]);
    for (i, (label, keyed, _)) in modes.iter().enumerate() {
        let m = median(&samples[i]);
        let (lo, hi) = minmax(&samples[i]);
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
            match (m, ossl, keyed) {
                (Some(s), Some(o), true) if o > 0.0 => format!("{} ({} MB/s)", fmt(s / o), fmt(o)),
                _ => "-".into(),
            },
        ]);
    }
    t.notes.push(format!(
        "{} MiB of page data per run in 1 MiB Pages frames (one epoch), sender and receiving \
         decoder in this process on loopback TCP (both on the same 2 cores), from the first \
         byte to the receiver's last message. The threaded modes write through the migration's \
         sender thread and read through its frame reader thread (CRC checks and opening of \
         sealed frames there, decoding on the receiving thread). openssl: `openssl speed -seconds 2 -evp \
         aes-256-gcm`, 16 KiB blocks, one core, encryption only.",
        total >> 20
    ));
    t.data = json!({
        "plain_mb_s": samples[0],
        "sealed_mb_s": samples[1],
        "plain_threaded_mb_s": samples[2],
        "sealed_threaded_mb_s": samples[3],
        "openssl_aes_256_gcm_mb_s": ossl,
    });
    Ok(t)
}
