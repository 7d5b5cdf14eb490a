//! stream: the replication/migration stream alone on loopback TCP, plain and sealed
//! (AES-256-GCM, a keyed session), against `openssl speed` for the same cipher.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::time::Instant;

use ftvm_wire::auth::TagKey;
use ftvm_wire::{AuthKey, Message, MessageReader, MessageWriter, Nonce};
use serde_json::json;

use crate::util::{fmt, fmt_opt, median, Res};
use crate::{Ctx, Table};

const PAGE: usize = 4096;

/// Sends `total` bytes of page data (1 MiB Pages frames, as a full copy does) from this
/// thread to a receiving thread that decodes every message; MB/s from the first byte to
/// the receiver's end.
fn one_run(total: usize, keyed: bool) -> Res<f64> {
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
        let mut r = MessageReader::new(s);
        if let Some(k) = rkey {
            r.frames_mut().set_key(k);
        }
        let mut pages = 0u64;
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
    let send = (|| -> Result<(), ftvm_wire::SendError> {
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
    })();
    send.map_err(|e| format!("sending: {e}"))?;
    let _ = s.shutdown(Shutdown::Write);
    drop(w);
    let pages = receiver
        .join()
        .map_err(|_| "receiver panicked".to_string())??;
    let secs = t0.elapsed().as_secs_f64();
    if pages as usize * PAGE != total.div_ceil(buf.len()) * buf.len() {
        return Err(format!("receiver got {pages} pages"));
    }
    Ok(pages as f64 * PAGE as f64 / 1e6 / secs)
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
    let (mut plain, mut sealed) = (Vec::new(), Vec::new());
    for _ in 0..n {
        for keyed in [false, true] {
            match one_run(total, keyed) {
                Ok(v) if keyed => sealed.push(v),
                Ok(v) => plain.push(v),
                Err(e) => t.fail(
                    if keyed {
                        "sealed stream"
                    } else {
                        "plain stream"
                    },
                    e,
                ),
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
    let (pm, sm) = (median(&plain), median(&sealed));
    let (pmin, pmax) = minmax(&plain);
    let (smin, smax) = minmax(&sealed);
    t.row(vec![
        "plain (no key)".into(),
        plain.len().to_string(),
        fmt_opt(pm),
        fmt_opt(pmin),
        fmt_opt(pmax),
        "1.00".into(),
        "-".into(),
    ]);
    t.row(vec![
        "keyed: AES-256-GCM sealed frames".into(),
        sealed.len().to_string(),
        fmt_opt(sm),
        fmt_opt(smin),
        fmt_opt(smax),
        match (sm, pm) {
            (Some(s), Some(p)) if p > 0.0 => fmt(s / p),
            _ => "-".into(),
        },
        match (sm, ossl) {
            (Some(s), Some(o)) if o > 0.0 => format!("{} ({} MB/s)", fmt(s / o), fmt(o)),
            _ => "-".into(),
        },
    ]);
    t.notes.push(format!(
        "{} MiB of page data per run in 1 MiB Pages frames (one epoch), sender and receiving \
         decoder in this process on loopback TCP (both on the same 2 cores), from the first \
         byte to the receiver's last message. openssl: `openssl speed -seconds 2 -evp \
         aes-256-gcm`, 16 KiB blocks, one core, encryption only.",
        total >> 20
    ));
    t.data = json!({"plain_mb_s": plain, "sealed_mb_s": sealed, "openssl_aes_256_gcm_mb_s": ossl});
    Ok(t)
}
