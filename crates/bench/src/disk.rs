//! disk (opt-in: `--only disk`): the durable key-value test guest (`kv=1 disk=1`: every
//! SET is appended to a log on its virtio-blk disk and flushed before the reply) under
//! `redis-benchmark -t set`, unprotected and protected at 10 ms epochs: SETs/s (= log
//! writes and flushes per second), MB/s of log data, and replication bytes per SET; and
//! the initial disk sync of a `FTVM_BENCH_DISK_MIB` (default 1024) MiB image of random
//! data, once to an empty backup image and once to a backup that already holds it
//! (block hashes: nothing to send).
//!
//! Network topology and requirements as the redis group (root, `ip`, redis-tools).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::redis::{
    missing, parse_csv, sh, spawn, start_kv, wait_stderr, KvSpec, Net, Vm, GUEST_IP, MEMORY,
};
use crate::util::{fmt, fmt_opt, num, Res};
use crate::{Ctx, Table};

const IMAGE_MIB: u64 = 256;
const EPOCH_MS: u64 = 10;
/// Heartbeat timeout of both sides: generous, since the backup's `fdatasync` before each
/// acknowledgement of a flushed epoch can take long on a loaded host (protection lost in
/// the middle of a run would make its numbers meaningless; such a run is reported failed).
const HEARTBEAT: &str = "5s";

fn new_image(path: &Path, mib: u64) -> Res<()> {
    let _stale = std::fs::remove_file(path);
    std::fs::File::create(path)
        .and_then(|f| f.set_len(mib << 20))
        .map_err(|e| format!("creating {}: {e}", path.display()))
}

/// The kv guest with a disk, unprotected or protected at `epoch_ms`.
fn start(ctx: &Ctx, net: &Net, tag: &str, epoch_ms: Option<u64>) -> Res<Vm> {
    let pimg = ctx.tmp.join(&format!("{tag}-p.img"));
    let bimg = ctx.tmp.join(&format!("{tag}-b.img"));
    new_image(&pimg, IMAGE_MIB)?;
    if epoch_ms.is_some() {
        new_image(&bimg, IMAGE_MIB)?;
    }
    start_kv(
        ctx,
        net,
        &KvSpec {
            tag,
            port: 7710,
            epoch_ms,
            flip: false,
            heartbeat: HEARTBEAT,
            disks: Some((&pimg, &bimg)),
        },
    )
}

/// `redis-benchmark -t set`: SETs per second.
fn set_bench(net: &Net, clients: u32, requests: u32, value: u32) -> Res<f64> {
    let out = sh(Net::cmd(&net.c, "timeout").args([
        "300",
        "redis-benchmark",
        "-h",
        GUEST_IP,
        "-t",
        "set",
        "-c",
        &clients.to_string(),
        "-n",
        &requests.to_string(),
        "-d",
        &value.to_string(),
        "--csv",
    ]))?;
    parse_csv(&out)
        .into_iter()
        .find(|r| r.test == "SET")
        .map(|r| r.rps)
        .ok_or_else(|| format!("no SET row in: {out}"))
}

/// The replication byte counter; an error if protection was lost.
fn replication_bytes(api: &mut crate::util::Api) -> Res<f64> {
    let s = api.cmd("status")?;
    if let Some(why) = s["replication"]["lost_reason"].as_str() {
        return Err(format!("protection lost during the run: {why}"));
    }
    num(&s, &["replication", "bytes"]).ok_or_else(|| format!("no replication bytes in {s}"))
}

/// (value bytes, clients) cases.
const CASES: [(u32, u32); 3] = [(64, 1), (64, 16), (4096, 16)];

fn writes(ctx: &Ctx, net: &Net, t: &mut Table, data: &mut serde_json::Map<String, Value>) {
    let requests: u32 = ctx.pick(500, 2000);
    let mut base = [None; CASES.len()];
    for epoch in [None, Some(EPOCH_MS)] {
        let mode = epoch.map_or_else(
            || "unprotected".to_string(),
            |ms| format!("protected {ms} ms"),
        );
        let tag = format!("disk-{}", epoch.unwrap_or(0));
        let r = start(ctx, net, &tag, epoch);
        let mut pair = match r {
            Ok(p) => p,
            Err(e) => {
                t.fail(&format!("disk {mode}"), e);
                continue;
            }
        };
        let mut api = match pair.primary.connect(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(e) => {
                t.fail(&format!("disk {mode}"), e);
                continue;
            }
        };
        // Idle replication traffic (memory of a quiet guest, heartbeats), to subtract.
        let idle = epoch.and_then(|_| {
            let b0 = replication_bytes(&mut api).ok()?;
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_secs(2));
            let b1 = replication_bytes(&mut api).ok()?;
            Some((b1 - b0) / t0.elapsed().as_secs_f64())
        });
        for (i, (value, clients)) in CASES.iter().enumerate() {
            let b0 = epoch.and_then(|_| replication_bytes(&mut api).ok());
            let t0 = Instant::now();
            let mut r = set_bench(net, *clients, requests, *value);
            let secs = t0.elapsed().as_secs_f64();
            let b1 = match epoch {
                Some(_) => match replication_bytes(&mut api) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        r = Err(e);
                        None
                    }
                },
                None => None,
            };
            match r {
                Ok(rps) => {
                    if epoch.is_none() {
                        base[i] = Some(rps);
                    }
                    let ratio = base[i].filter(|b| *b > 0.0).map(|b| rps / b);
                    let per_set = match (b0, b1) {
                        (Some(a), Some(b)) => Some((b - a) / f64::from(requests)),
                        _ => None,
                    };
                    let net_per_set = per_set
                        .zip(idle)
                        .map(|(p, idle)| p - idle * secs / f64::from(requests));
                    t.row(vec![
                        mode.clone(),
                        format!("SET -d {value} -c {clients}"),
                        fmt(rps),
                        fmt(rps * f64::from(*value) / 1e6),
                        fmt_opt(ratio),
                        fmt_opt(per_set),
                        fmt_opt(net_per_set),
                    ]);
                    data.insert(
                        format!("{mode} SET -d {value} -c {clients}"),
                        json!({"epoch_ms": epoch, "value_bytes": value, "clients": clients,
                               "requests": requests, "sets_per_s": rps, "ratio": ratio,
                               "replication_bytes_per_set": per_set,
                               "replication_bytes_per_set_minus_idle": net_per_set,
                               "idle_replication_bytes_per_s": idle}),
                    );
                }
                Err(e) => t.fail(&format!("{mode} SET -d {value} -c {clients}"), e),
            }
        }
        drop(pair);
    }
}

/// An image of `mib` MiB of pseudo-random data (incompressible, no holes).
fn random_image(path: &Path, mib: u64) -> Res<()> {
    let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        f.write_all(&buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    f.sync_all().map_err(|e| format!("{}: {e}", path.display()))
}

/// Protect a plain test guest with a `mib` MiB disk; the primary's "disk sync done" line
/// and the time from start to "the VM is protected".
fn sync_once(ctx: &Ctx, net: &Net, tag: &str, pimg: &Path, bimg: &Path) -> Res<(f64, String)> {
    let port = 7711;
    let fence = format!("lock:{}", ctx.tmp.join(&format!("{tag}.fence")).display());
    let mut b = spawn(
        ctx,
        net,
        &format!("{tag}-backup"),
        vec![
            "backup".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--memory".into(),
            "64M".into(),
            "--heartbeat-timeout".into(),
            HEARTBEAT.into(),
            "--disk".into(),
            format!("path={}", bimg.display()),
            "--fence".into(),
            fence.clone(),
            "--serial".into(),
            format!(
                "file:{}",
                ctx.tmp.join(&format!("{tag}-backup.out")).display()
            ),
        ],
    )?;
    wait_stderr(&mut b, "waiting for a primary")?;
    let t0 = Instant::now();
    let mut p = spawn(
        ctx,
        net,
        &format!("{tag}-primary"),
        vec![
            "run".into(),
            "--kernel".into(),
            "@testguest".into(),
            "--memory".into(),
            "64M".into(),
            // A guest that keeps running (and writing memory), not touching its disk.
            "--cmdline".into(),
            "wss=4 pages=64 every=1000".into(),
            "--heartbeat-timeout".into(),
            HEARTBEAT.into(),
            "--disk".into(),
            format!("path={}", pimg.display()),
            "--protect".into(),
            format!("127.0.0.1:{port}"),
            "--fence".into(),
            fence,
            "--serial".into(),
            format!(
                "file:{}",
                ctx.tmp.join(&format!("{tag}-primary.out")).display()
            ),
        ],
    )?;
    wait_stderr(&mut p, "the VM is protected")?;
    let secs = t0.elapsed().as_secs_f64();
    let line = p
        .stderr_text()
        .lines()
        .find(|l| l.contains("disk sync done"))
        .map(str::to_string)
        .ok_or_else(|| p.failure("no disk sync summary"))?;
    Ok((secs, line))
}

fn sync(ctx: &Ctx, net: &Net, t: &mut Table, data: &mut serde_json::Map<String, Value>) {
    let mib: u64 = std::env::var("FTVM_BENCH_DISK_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let pimg = ctx.tmp.join("sync-p.img");
    let bimg = ctx.tmp.join("sync-b.img");
    if let Err(e) = random_image(&pimg, mib) {
        t.fail("disk sync", e);
        return;
    }
    for (case, prepare) in [
        ("empty backup image", false),
        ("backup holds the image", true),
    ] {
        let made = if prepare {
            std::fs::copy(&pimg, &bimg)
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            new_image(&bimg, mib)
        };
        let r = made.and_then(|()| {
            sync_once(
                ctx,
                net,
                &format!("sync{}", u8::from(prepare)),
                &pimg,
                &bimg,
            )
        });
        match r {
            Ok((secs, line)) => {
                let sync_s = line
                    .split("disk sync done in ")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|s| s.parse::<f64>().ok());
                t.row(vec![
                    format!("initial sync {mib} MiB"),
                    case.into(),
                    "-".into(),
                    sync_s.map_or_else(|| "-".into(), |s| fmt(mib as f64 / s)),
                    "-".into(),
                    format!(
                        "disk sync {} s, protected after {} s",
                        fmt_opt(sync_s),
                        fmt(secs)
                    ),
                    line.split(": ").nth(1).unwrap_or("").to_string(),
                ]);
                data.insert(
                    format!("sync {case}"),
                    json!({"mib": mib, "disk_sync_s": sync_s, "protected_after_s": secs, "summary": line}),
                );
            }
            Err(e) => t.fail(&format!("disk sync, {case}"), e),
        }
    }
    let _ = std::fs::remove_file(&pimg);
    let _ = std::fs::remove_file(&bimg);
}

/// The group.
pub fn disk(ctx: &Ctx) -> Res<Table> {
    if let Some(why) = missing() {
        return Err(format!("SKIPPED: {why}"));
    }
    let net = Net::new()?;
    let mut t = Table::new(&[
        "mode",
        "case",
        "SETs/s (= log writes + flushes/s)",
        "log MB/s",
        "ratio vs unprotected",
        "replication bytes per SET",
        "minus idle traffic",
    ]);
    let mut data = serde_json::Map::new();
    writes(ctx, &net, &mut t, &mut data);
    sync(ctx, &net, &mut t, &mut data);
    t.notes.push(format!(
        "Guest kv=1 disk=1 (1 vCPU, {MEMORY}, {IMAGE_MIB} MiB raw image): every SET appends a \
         log record to the virtio-blk disk and flushes (fdatasync on the host) before its \
         reply; protected, the backup applies the writes with the epoch and fdatasyncs before \
         its acknowledgement. redis-benchmark -t set from a client namespace over a bridge. \
         Replication bytes per SET: the primary's replication byte counter over the run / \
         SETs (memory pages + disk writes + framing), and minus the idle guest's rate. \
         Initial sync: a plain test guest with a disk of random data; the log-MB/s column \
         holds the sync's MiB/s; the last column is the primary's summary."
    ));
    t.data = Value::Object(data);
    Ok(t)
}
