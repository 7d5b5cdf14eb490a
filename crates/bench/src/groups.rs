//! The measurement groups. Each returns a table; a failed measurement is recorded in the
//! table's errors and the group goes on with the next one.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::bare;
use crate::util::{
    cpu_seconds, fmt, fmt_opt, free_port, median, num, parse_seq, pct, Api, Proc, Res, Spawn,
};
use crate::{Ctx, Table};

pub(crate) const MEMORY: &str = "256M";
/// The heartbeat timeout passed to both sides (ftvm's default for a 10 ms epoch).
pub(crate) const HEARTBEAT_MS: u64 = 500;
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `every=` for a rate measurement: a few lines per second unprotected, so that the ~30
/// port exits of a printed line (1-2 ms) stay below ~1% of the time.
pub(crate) fn every_for(pages: u32) -> u64 {
    match pages {
        0 => 20_000,
        1..=16 => 3_000,
        17..=256 => 300,
        _ => 16,
    }
}

/// `every=` under protection, where rates fell 10-30x in early runs: small enough for a
/// few lines per second at the protected rate. The printing overhead this adds is
/// estimated per run (`print_overhead`, 1.5 ms per line) and reported.
fn every_protected(pages: u32) -> u64 {
    match pages {
        0 => 2_000,
        1..=16 => 300,
        17..=256 => 10,
        _ => 1,
    }
}

/// Cost of one printed seq line (~30 port exits), from docs/testguest.md.
const LINE_COST_S: f64 = 0.0015;

/// A guest VM to start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Guest {
    pages: u32,
    cpus: u32,
    every: u64,
    /// `(backup port, epoch ms)` to protect it.
    protect: Option<(u16, u64)>,
    pin: Option<u32>,
    /// Working-set size in MiB (None: the guest's default, 64).
    wss_mib: Option<u32>,
    /// `--hot-pages off` when false.
    hot_pages: bool,
    /// `--cpu-affinity` value.
    affinity: Option<&'static str>,
}

impl Guest {
    pub(crate) fn new(pages: u32, every: u64) -> Self {
        Self {
            pages,
            cpus: 1,
            every,
            protect: None,
            pin: None,
            wss_mib: None,
            hot_pages: true,
            affinity: None,
        }
    }

    /// The same guest started with `--cpu-affinity a`.
    pub(crate) fn with_affinity(self, a: &'static str) -> Self {
        Self {
            affinity: Some(a),
            ..self
        }
    }

    /// The same guest with a `wss_mib` MiB working set.
    pub(crate) fn with_wss(self, wss_mib: u32) -> Self {
        Self {
            wss_mib: Some(wss_mib),
            ..self
        }
    }

    /// The same guest with adaptive dirty tracking on or off when protected.
    pub(crate) fn with_hot_pages(self, on: bool) -> Self {
        Self {
            hot_pages: on,
            ..self
        }
    }
}

pub(crate) fn start_guest(ctx: &Ctx, name: &str, g: Guest) -> Res<Proc> {
    let mut args: Vec<String> = [
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        MEMORY,
        "--serial",
        "stdout",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push("--cpus".into());
    args.push(g.cpus.to_string());
    args.push("--cmdline".into());
    args.push(match g.wss_mib {
        Some(w) => format!("wss={w} pages={} every={}", g.pages, g.every),
        None => format!("pages={} every={}", g.pages, g.every),
    });
    if !g.hot_pages {
        args.push("--hot-pages".into());
        args.push("off".into());
    }
    if let Some(a) = &g.affinity {
        args.push("--cpu-affinity".into());
        args.push(a.to_string());
    }
    if let Some((port, epoch)) = g.protect {
        args.push("--protect".into());
        args.push(format!("127.0.0.1:{port}"));
        args.push("--epoch".into());
        args.push(format!("{epoch}ms"));
        args.push("--heartbeat-timeout".into());
        args.push(format!("{HEARTBEAT_MS}ms"));
        args.push("--fence".into());
        args.push(bench_fence(ctx, port));
    }
    Proc::spawn(Spawn {
        ftvm: &ctx.ftvm,
        dir: &ctx.tmp.0,
        name,
        args,
        pin: g.pin,
    })
}

/// The fence of the pair whose backup listens on `port`: a lock file in the bench's
/// temporary directory.
fn bench_fence(ctx: &Ctx, port: u16) -> String {
    format!("lock:{}", ctx.tmp.join(&format!("fence-{port}")).display())
}

fn start_backup(
    ctx: &Ctx,
    name: &str,
    port: u16,
    epoch_ms: u64,
    serial: &Path,
    pin: Option<u32>,
) -> Res<(Proc, Api)> {
    let args = vec![
        "backup".to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--memory".into(),
        MEMORY.into(),
        "--cpus".into(),
        "1".into(),
        "--serial".into(),
        format!("file:{}", serial.display()),
        "--epoch".into(),
        format!("{epoch_ms}ms"),
        "--heartbeat-timeout".into(),
        format!("{HEARTBEAT_MS}ms"),
        "--fence".into(),
        bench_fence(ctx, port),
    ];
    let mut p = Proc::spawn(Spawn {
        ftvm: &ctx.ftvm,
        dir: &ctx.tmp.0,
        name,
        args,
        pin,
    })?;
    // The API socket is created after the listening socket: once it answers, the backup
    // accepts primaries.
    let api = p.connect(Duration::from_secs(30))?;
    Ok((p, api))
}

/// Poll status until the primary reports role `primary` (backup in sync).
pub(crate) fn wait_protected(p: &mut Proc, api: &mut Api, timeout: Duration) -> Res<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(st) = api.cmd("status") {
            let role = st["replication"]["role"].as_str().unwrap_or("");
            if role == "primary" && st["replication"]["epoch"].as_u64().unwrap_or(0) > 2 {
                return Ok(st);
            }
            if let Some(why) = st["replication"]["lost_reason"].as_str() {
                return Err(p.failure(&format!("protection lost: {why}")));
            }
        }
        if p.exited().is_some() || Instant::now() > deadline {
            return Err(p.failure("not protected in time"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Iterations per second from the `seq=` lines read during `[t0, t1]`.
pub(crate) fn rate_between(p: &Proc, t0: Instant, t1: Instant) -> Res<(f64, usize)> {
    let l = p.seq_lines(t0, t1);
    match (l.first(), l.last()) {
        (Some(a), Some(b)) if l.len() >= 2 && b.0 > a.0 => {
            Ok(((b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64(), l.len()))
        }
        _ => Err(format!(
            "{}: only {} seq lines in {:.1} s: rate not measurable (choose a smaller every=)",
            p.name,
            l.len(),
            (t1 - t0).as_secs_f64()
        )),
    }
}

/// Start an unprotected guest, wait for ready, measure its rate.
pub(crate) fn unprotected_rate(ctx: &Ctx, name: &str, g: Guest) -> Res<(f64, usize)> {
    let mut p = start_guest(ctx, name, g)?;
    p.wait_ready(READY_TIMEOUT)?;
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    std::thread::sleep(ctx.rate_interval());
    let t1 = Instant::now();
    rate_between(&p, t0, t1)
}

// ---------------------------------------------------------------------------------------

/// boot: spawn of `ftvm run` until `ftvm-testguest ready` is read from its stdout.
pub fn boot(ctx: &Ctx) -> Res<Table> {
    let n = ctx.pick(3, 7);
    let mut t = Table::new(&["vCPUs", "runs", "spawn to ready p50 (ms)", "min", "max"]);
    let mut data = serde_json::Map::new();
    for cpus in [1u32, 2] {
        let mut v = Vec::new();
        for i in 0..n {
            let g = Guest {
                cpus,
                ..Guest::new(256, 1_000_000_000)
            };
            let r = start_guest(ctx, &format!("boot{cpus}-{i}"), g).and_then(|mut p| {
                let ready = p.wait_ready(READY_TIMEOUT)?;
                Ok((ready - p.spawned).as_secs_f64() * 1000.0)
            });
            match r {
                Ok(ms) => v.push(ms),
                Err(e) => t.fail(&format!("boot {cpus} vCPU run {i}"), e),
            }
        }
        t.row(vec![
            cpus.to_string(),
            v.len().to_string(),
            fmt_opt(median(&v)),
            fmt_opt(pct(&v, 0.0)),
            fmt_opt(pct(&v, 100.0)),
        ]);
        data.insert(format!("cpus{cpus}_ms"), json!(v));
    }
    t.notes.push(
        "Guest defaults (wss=64 MiB: 16,384 pages initialized in ring 3 before `ready`), 256 MiB."
            .into(),
    );
    t.data = Value::Object(data);
    Ok(t)
}

/// pause: `{"cmd":"pause"}` on the API socket, `pause_us` as ftvm measures it (request
/// until every vCPU parked) and the client's round trip; resume; let it run 3 ms.
pub fn pause(ctx: &Ctx) -> Res<Table> {
    let n = ctx.pick(100, 300);
    let mut t = Table::new(&[
        "vCPUs",
        "cycles",
        "pause p50 (us)",
        "p99 (us)",
        "max (us)",
        "API round trip p50 (us)",
    ]);
    let mut data = serde_json::Map::new();
    for cpus in [1u32, 2] {
        let r = (|| -> Res<(Vec<f64>, Vec<f64>)> {
            let g = Guest {
                cpus,
                ..Guest::new(256, 1_000_000_000)
            };
            let mut p = start_guest(ctx, &format!("pause{cpus}"), g)?;
            p.wait_ready(READY_TIMEOUT)?;
            let mut api = p.connect(Duration::from_secs(10))?;
            std::thread::sleep(Duration::from_millis(300));
            let (mut server, mut rt) = (Vec::new(), Vec::new());
            for _ in 0..n {
                let t0 = Instant::now();
                let a = api.cmd("pause")?;
                rt.push(t0.elapsed().as_secs_f64() * 1e6);
                server.push(num(&a, &["pause_us"]).unwrap_or(f64::NAN));
                api.cmd("resume")?;
                std::thread::sleep(Duration::from_millis(3));
            }
            Ok((server, rt))
        })();
        match r {
            Ok((s, rt)) => {
                t.row(vec![
                    cpus.to_string(),
                    s.len().to_string(),
                    fmt_opt(pct(&s, 50.0)),
                    fmt_opt(pct(&s, 99.0)),
                    fmt_opt(pct(&s, 100.0)),
                    fmt_opt(pct(&rt, 50.0)),
                ]);
                data.insert(
                    format!("cpus{cpus}"),
                    json!({"pause_us": s, "round_trip_us": rt}),
                );
            }
            Err(e) => t.fail(&format!("pause with {cpus} vCPU(s)"), e),
        }
    }
    t.notes.push(
        "Guest pages=256 (busy in ring 3). A paused vCPU must be kicked out of KVM_RUN \
         (signal + immediate_exit); the round trip adds the API socket and JSON."
            .into(),
    );
    t.data = Value::Object(data);
    Ok(t)
}

/// rate: guest iterations per second, unprotected, 1 vCPU.
pub fn rate(ctx: &Ctx) -> Res<Table> {
    let mut t = Table::new(&["pages", "every", "lines", "iterations/s", "pages written/s"]);
    let mut data = Vec::new();
    for pages in [0u32, 256, 4096] {
        let every = every_for(pages);
        match unprotected_rate(ctx, &format!("rate{pages}"), Guest::new(pages, every)) {
            Ok((r, lines)) => {
                t.row(vec![
                    pages.to_string(),
                    every.to_string(),
                    lines.to_string(),
                    fmt(r),
                    fmt(r * f64::from(pages)),
                ]);
                data.push(json!({"pages": pages, "every": every, "lines": lines, "rate": r}));
            }
            Err(e) => t.fail(&format!("rate at pages={pages}"), e),
        }
    }
    t.notes.push(format!(
        "1 vCPU, wss=64 MiB, full=1000 (guest defaults); rate from the first to the last seq \
         line read in a {} s window starting 0.5 s after ready.",
        ctx.rate_interval().as_secs()
    ));
    t.data = json!(data);
    Ok(t)
}

/// Which dirty-page bin a count falls into.
fn bin(pages: f64) -> Option<&'static str> {
    match pages {
        p if (128.0..512.0).contains(&p) => Some("~256"),
        p if (512.0..2048.0).contains(&p) => Some("~1k"),
        p if (5000.0..20000.0).contains(&p) => Some("~10k"),
        _ => None,
    }
}
const BINS: [&str; 3] = ["~256", "~1k", "~10k"];

/// snapshot: diff-snapshot pause vs dirty pages.
pub fn snapshot(ctx: &Ctx) -> Res<Table> {
    let per = ctx.pick(8, 20);
    let mut samples: Vec<(f64, f64)> = Vec::new(); // (pages, paused_us)
    let mut t = Table::new(&[
        "dirty pages bin",
        "samples",
        "pages p50",
        "paused p50 (us)",
        "paused max (us)",
        "us/page (p50)",
    ]);
    // (guest pages=, targets): pages=1 touches ~10-30k distinct pages/s, pages=256 ~300k/s.
    for (gp, targets) in [(1u32, vec![256.0, 1000.0]), (256, vec![10_000.0])] {
        let r = (|| -> Res<()> {
            let mut p = start_guest(ctx, &format!("snap{gp}"), Guest::new(gp, 1_000_000_000))?;
            p.wait_ready(READY_TIMEOUT)?;
            let mut api = p.connect(Duration::from_secs(10))?;
            let dir = |i: usize| ctx.snap_tmp.join(&format!("p{gp}-{i}"));
            api.req(&json!({"cmd": "snapshot", "to": dir(0).display().to_string()}))?;
            let mut i = 0;
            let mut interval = Duration::from_millis(if gp == 1 { 10 } else { 50 });
            for target in targets {
                for k in 0..per + 2 {
                    std::thread::sleep(interval);
                    i += 1;
                    let a = api.req(&json!({"cmd": "snapshot", "diff": true,
                        "to": dir(i).display().to_string()}))?;
                    let _old_done = std::fs::remove_dir_all(dir(i - 1));
                    let pages = num(&a, &["pages"]).unwrap_or(0.0);
                    let us = num(&a, &["paused_us"]).unwrap_or(f64::NAN);
                    if k >= 2 {
                        samples.push((pages, us));
                    }
                    let ratio = (target / pages.max(1.0)).clamp(0.25, 4.0);
                    interval = interval
                        .mul_f64(ratio)
                        .clamp(Duration::from_micros(200), Duration::from_secs(3));
                }
            }
            Ok(())
        })();
        if let Err(e) = r {
            t.fail(&format!("diff snapshots with guest pages={gp}"), e);
        }
    }
    for b in BINS {
        let s: Vec<&(f64, f64)> = samples.iter().filter(|(p, _)| bin(*p) == Some(b)).collect();
        let pages: Vec<f64> = s.iter().map(|x| x.0).collect();
        let us: Vec<f64> = s.iter().map(|x| x.1).collect();
        let per_page = match (median(&us), median(&pages)) {
            (Some(u), Some(p)) if p > 0.0 => Some(u / p),
            _ => None,
        };
        t.row(vec![
            b.into(),
            s.len().to_string(),
            fmt_opt(median(&pages)),
            fmt_opt(median(&us)),
            fmt_opt(pct(&us, 100.0)),
            fmt_opt(per_page),
        ]);
    }
    t.notes.push(
        "`paused_us` from `snapshot --diff` (pause + state + KVM dirty log + copy; files are \
         written after resume, to tmpfs). The interval between snapshots is steered towards \
         each bin; samples outside the bins are in the JSON only."
            .into(),
    );
    t.data = json!({"samples_pages_paused_us": samples});
    Ok(t)
}

/// Whether something listens on 127.0.0.1:`port` (from /proc/net/tcp, without connecting:
/// a probe connection would be taken for the migration source).
pub(crate) fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    let any = format!("00000000:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && (f[1] == want || f[1] == any) && f[3] == "0A"
        })
}

/// One `ftvm ctl migrate` of a fresh guest (`pages=`) to an `ftvm receive` on loopback,
/// 0.5 s after ready; the API's answer (total_ms, downtime_ms, rounds, bytes...).
pub(crate) fn migrate_once(ctx: &Ctx, pages: u32, tag: &str) -> Res<Value> {
    let mut src = start_guest(ctx, &format!("mig{tag}"), Guest::new(pages, 1_000_000_000))?;
    let port = free_port()?;
    let serial = ctx.tmp.join(&format!("mig{tag}.serial"));
    let args = vec![
        "receive".to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--memory".into(),
        MEMORY.into(),
        "--cpus".into(),
        "1".into(),
        "--serial".into(),
        format!("file:{}", serial.display()),
    ];
    let mut dst = Proc::spawn(Spawn {
        ftvm: &ctx.ftvm,
        dir: &ctx.tmp.0,
        name: &format!("recv{tag}"),
        args,
        pin: None,
    })?;
    src.wait_ready(READY_TIMEOUT)?;
    let mut api = src.connect(Duration::from_secs(10))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !listening(port) {
        if dst.exited().is_some() || Instant::now() > deadline {
            return Err(dst.failure("not listening"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    let a = api.req(&json!({"cmd": "migrate", "to": format!("127.0.0.1:{port}")}))?;
    Ok(a)
}

/// migration: `ftvm ctl migrate` to an `ftvm receive` on loopback.
pub fn migration(ctx: &Ctx) -> Res<Table> {
    let n = ctx.pick(1, 3);
    let mut t = Table::new(&[
        "pages",
        "runs",
        "total p50 (ms)",
        "downtime p50 (ms)",
        "downtime max (ms)",
        "rounds p50",
        "final pages p50",
        "MB sent p50",
    ]);
    let mut data = Vec::new();
    for pages in [0u32, 256, 4096] {
        let mut runs: Vec<Value> = Vec::new();
        for i in 0..n {
            let r = migrate_once(ctx, pages, &format!("{pages}-{i}"));
            match r {
                Ok(a) => runs.push(a),
                Err(e) => t.fail(&format!("migration at pages={pages} run {i}"), e),
            }
        }
        let col = |k: &str| -> Vec<f64> { runs.iter().filter_map(|a| num(a, &[k])).collect() };
        let mb: Vec<f64> = col("bytes").iter().map(|b| b / 1e6).collect();
        t.row(vec![
            pages.to_string(),
            runs.len().to_string(),
            fmt_opt(median(&col("total_ms"))),
            fmt_opt(median(&col("downtime_ms"))),
            fmt_opt(pct(&col("downtime_ms"), 100.0)),
            fmt_opt(median(&col("rounds"))),
            fmt_opt(median(&col("final_pages"))),
            fmt_opt(median(&mb)),
        ]);
        data.push(json!({"pages": pages, "runs": runs}));
    }
    t.notes.push(
        "256 MiB, 1 vCPU, loopback TCP, ftvm's default downtime target (50 ms); started 0.5 s \
         after ready."
            .into(),
    );
    t.data = json!(data);
    Ok(t)
}

/// One protected run's measurements.
pub(crate) fn protected_run(
    ctx: &Ctx,
    key: &str,
    g: Guest,
    epoch_ms: u64,
    backup_pin: Option<u32>,
) -> Res<Value> {
    let port = free_port()?;
    let serial = ctx.tmp.join(&format!("{key}.b.serial"));
    let (mut b, _bapi) = start_backup(
        ctx,
        &format!("{key}-b"),
        port,
        epoch_ms,
        &serial,
        backup_pin,
    )?;
    let g = Guest {
        protect: Some((port, epoch_ms)),
        ..g
    };
    let mut p = start_guest(ctx, &format!("{key}-p"), g)?;
    let mut api = p.connect(Duration::from_secs(30))?;
    p.wait_ready(READY_TIMEOUT)?;
    let sync_start = Instant::now();
    wait_protected(&mut p, &mut api, Duration::from_secs(60))?;
    let sync_s = sync_start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let s0 = api.cmd("status")?;
    let (c0p, c0b) = (cpu_seconds(p.pid()), cpu_seconds(b.pid()));
    let t0 = Instant::now();
    std::thread::sleep(ctx.rate_interval());
    let t1 = Instant::now();
    let s1 = api.cmd("status")?;
    let (c1p, c1b) = (cpu_seconds(p.pid()), cpu_seconds(b.pid()));
    let dt = (t1 - t0).as_secs_f64();
    if let Some(why) = s1["replication"]["lost_reason"].as_str() {
        return Err(format!("protection lost during the measurement: {why}"));
    }
    if b.exited().is_some() {
        return Err(b.failure("backup ended during the measurement"));
    }
    let cpu = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some((b - a) / dt * 100.0),
        _ => None,
    };
    let rate = rate_between(&p, t0, t1);
    let bytes = |s: &Value| num(s, &["replication", "bytes"]).unwrap_or(0.0);
    let epochs = |s: &Value| num(s, &["replication", "epoch"]).unwrap_or(0.0);
    Ok(json!({
        "pages": g.pages,
        "epoch_ms": epoch_ms,
        "primary_pin": g.pin,
        "backup_pin": backup_pin,
        "rate": rate.as_ref().ok().map(|r| r.0),
        "every": g.every,
        "print_overhead": rate.as_ref().ok().map(|r| r.0 / g.every as f64 * LINE_COST_S),
        "rate_error": rate.as_ref().err(),
        "lines": rate.as_ref().ok().map(|r| r.1),
        "sync_s": sync_s,
        "interval_s": dt,
        "bytes_per_s_window": (bytes(&s1) - bytes(&s0)) / dt,
        "epochs_per_s_window": (epochs(&s1) - epochs(&s0)) / dt,
        "primary_cpu_pct": cpu(c0p, c1p),
        "backup_cpu_pct": cpu(c0b, c1b),
        "status": s1,
        "status0": s0,
    }))
}

fn r_num(v: &Value, k: &str) -> Option<f64> {
    num(v, &["status", "replication", k])
}

/// epoch: per-epoch pause under protection vs the bare in-process cost at the same count.
pub fn epoch(ctx: &Ctx) -> Res<Table> {
    let mut t = Table::new(&[
        "guest pages, epoch",
        "dirty pages/epoch (avg)",
        "epoch pause p50 (us)",
        "p99 (us)",
        "bare p50 (us): GET_DIRTY_LOG+CLEAR+copy",
        "ratio epoch/bare (goal <= 1.5)",
        "in-process pause+state+resume p50 (us)",
        "ratio epoch/(bare+pause+state+resume)",
    ]);
    // Configurations chosen to land near 256, 1k and 10k dirty pages per epoch (the count
    // includes the previous epoch's pages carried over, see Primary::run).
    let configs: [(u32, u64); 3] = [(1, 10), (1, 40), (4096, 150)];
    let mut runs = Vec::new();
    for (gp, e) in configs {
        let g = Guest::new(gp, every_for(gp));
        match protected_run(ctx, &format!("ep{gp}-{e}"), g, e, None) {
            Ok(v) => runs.push(v),
            Err(err) => t.fail(&format!("protected run pages={gp} epoch={e}ms"), err),
        }
    }
    let per = ctx.pick(4, 12);
    let mut samples = Vec::new();
    let mut manual = None;
    for (gp, targets) in [
        (1u32, vec![150u64, 250, 400, 600, 900, 1300, 2000]),
        (4096, vec![3000, 5000, 7000, 9000, 11000, 14000]),
    ] {
        match bare::measure(gp, &targets, per) {
            Ok((s, m)) => {
                samples.extend(s);
                manual = Some(m);
            }
            Err(e) => t.fail(&format!("in-process bare cost (guest pages={gp})"), e),
        }
    }
    let near = |d: f64| -> Vec<&bare::Sample> {
        samples
            .iter()
            .filter(|s| (s.pages as f64) >= 0.75 * d && (s.pages as f64) <= 1.25 * d)
            .collect()
    };
    for v in &runs {
        let d = r_num(v, "dirty_pages_avg").unwrap_or(f64::NAN);
        let p50 = r_num(v, "pause_us_p50");
        let p99 = r_num(v, "pause_us_p99");
        let s = near(d);
        let bare: Vec<f64> = s.iter().map(|x| x.bare_us()).collect();
        let full: Vec<f64> = s
            .iter()
            .map(|x| x.bare_us() + x.pause_us + x.state_us + x.resume_us)
            .collect();
        let extra: Vec<f64> = s
            .iter()
            .map(|x| x.pause_us + x.state_us + x.resume_us)
            .collect();
        let ratio = |b: Option<f64>| match (p50, b) {
            (Some(p), Some(b)) if b > 0.0 => Some(p / b),
            _ => None,
        };
        t.row(vec![
            format!(
                "pages={}, {} ms",
                v["pages"],
                v["epoch_ms"].as_u64().unwrap_or(0)
            ),
            fmt(d),
            fmt_opt(p50),
            fmt_opt(p99),
            format!("{} (n={})", fmt_opt(median(&bare)), bare.len()),
            fmt_opt(ratio(median(&bare))) + "x",
            fmt_opt(median(&extra)),
            fmt_opt(ratio(median(&full))) + "x",
        ]);
    }
    // The bare curve by bin, for the doc.
    let mut bins = serde_json::Map::new();
    let mut line = Vec::new();
    for b in BINS {
        let s: Vec<&bare::Sample> = samples
            .iter()
            .filter(|x| bin(x.pages as f64) == Some(b))
            .collect();
        let m =
            |f: &dyn Fn(&bare::Sample) -> f64| median(&s.iter().map(|x| f(x)).collect::<Vec<_>>());
        let memcpy = m(&|x| x.memcpy_us);
        let (pg, peek, clear, copy, bare_us, pause, state, resume) = (
            m(&|x| x.pages as f64),
            m(&|x| x.peek_us),
            m(&|x| x.clear_us),
            m(&|x| x.copy_us),
            m(&|x| x.bare_us()),
            m(&|x| x.pause_us),
            m(&|x| x.state_us),
            m(&|x| x.resume_us),
        );
        line.push(format!(
            "{b} (n={}, {} pages): bare {} us = GET_DIRTY_LOG {} + CLEAR_DIRTY_LOG {} + \
             copy_runs {} (plain memcpy of the same pages: {}); pause {}, save_state {}, \
             resume {}",
            s.len(),
            fmt_opt(pg),
            fmt_opt(bare_us),
            fmt_opt(peek),
            fmt_opt(clear),
            fmt_opt(copy),
            fmt_opt(memcpy),
            fmt_opt(pause),
            fmt_opt(state),
            fmt_opt(resume)
        ));
        bins.insert(
            b.into(),
            json!({"n": s.len(), "pages": pg, "peek_us": peek, "clear_us": clear, "copy_us": copy,
                   "memcpy_us": memcpy, "bare_us": bare_us, "pause_us": pause, "state_us": state, "resume_us": resume}),
        );
    }
    t.notes.push(format!(
        "In-process bare cost medians by bin (1 vCPU, 256 MiB, manual dirty-log protect: {}):\n\n- {}",
        manual.map_or("?".into(), |m| m.to_string()),
        line.join("\n- ")
    ));
    t.notes.push(
        "Epoch pause is ftvm's own `pause_us_p50/p99` (pause request to resume: kick + park, \
         dirty log, copy, state capture, output seal, resume) over the run's epochs; the bare \
         cost is the median of in-process samples within +/-25% of the epoch's average dirty \
         count."
            .into(),
    );
    t.data = json!({
        "protected_runs": runs,
        "bare_bins": bins,
        "bare_samples": samples.iter().map(|s| s.json()).collect::<Vec<_>>(),
    });
    Ok(t)
}

/// The key of a protected run in `ctx.protected_runs`.
fn pkey(pages: u32, epoch: u64, pinned: bool) -> String {
    format!("p{pages}-e{epoch}{}", if pinned { "-pinned" } else { "" })
}

/// protected: guest rate under protection vs unprotected.
pub fn protected(ctx: &Ctx) -> Res<Table> {
    let mut t = Table::new(&[
        "pages",
        "epoch",
        "placement",
        "iterations/s",
        "ratio vs unprotected (goal >= 0.8 at 10 ms, 256)",
        "epoch pause p50/p99 (us)",
        "dirty pages/epoch",
        "epochs/s",
        "primary CPU %",
        "backup CPU %",
    ]);
    let mut all = Vec::new();
    let plan: Vec<(u32, Vec<u64>)> = if ctx.quick {
        vec![(256, vec![5, 10, 20]), (4096, vec![10])]
    } else {
        vec![(256, vec![5, 10, 20]), (4096, vec![5, 10, 20])]
    };
    let mut plan_rows: Vec<(u32, Vec<u64>, bool)> =
        plan.into_iter().map(|(p, e)| (p, e, false)).collect();
    plan_rows.push((256, vec![10], true));
    if !ctx.quick {
        plan_rows.push((4096, vec![10], true));
    }
    for (pages, epochs, pinned) in plan_rows {
        let every = every_for(pages);
        let label = if pinned {
            "pinned: primary cpu0, backup cpu1"
        } else {
            "unpinned"
        };
        let pin = if pinned { Some(0) } else { None };
        let base = unprotected_rate(
            ctx,
            &format!("unprot{pages}{}", if pinned { "pin" } else { "" }),
            Guest {
                pin,
                ..Guest::new(pages, every)
            },
        );
        match &base {
            Ok((r, _)) => t.row(vec![
                pages.to_string(),
                "unprotected".into(),
                if pinned { "pinned: cpu0" } else { "unpinned" }.into(),
                fmt(*r),
                "1.00".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
            ]),
            Err(e) => t.fail(
                &format!("unprotected rate pages={pages} {label}"),
                e.clone(),
            ),
        }
        for e in epochs {
            let key = pkey(pages, e, pinned);
            let g = Guest {
                pin,
                ..Guest::new(pages, every_protected(pages))
            };
            match protected_run(ctx, &key, g, e, if pinned { Some(1) } else { None }) {
                Ok(mut v) => {
                    let r = v["rate"].as_f64();
                    let ratio = match (&base, r) {
                        (Ok((b, _)), Some(r)) if *b > 0.0 => Some(r / b),
                        _ => None,
                    };
                    v["unprotected_rate"] = json!(base.as_ref().ok().map(|b| b.0));
                    v["ratio"] = json!(ratio);
                    t.row(vec![
                        pages.to_string(),
                        format!("{e} ms"),
                        label.into(),
                        fmt_opt(r),
                        fmt_opt(ratio),
                        format!(
                            "{} / {}",
                            fmt_opt(r_num(&v, "pause_us_p50")),
                            fmt_opt(r_num(&v, "pause_us_p99"))
                        ),
                        fmt_opt(r_num(&v, "dirty_pages_avg")),
                        fmt_opt(v["epochs_per_s_window"].as_f64()),
                        fmt_opt(v["primary_cpu_pct"].as_f64()),
                        fmt_opt(v["backup_cpu_pct"].as_f64()),
                    ]);
                    if let Some(err) = v["rate_error"].as_str() {
                        t.fail(&format!("rate under protection {key}"), err.into());
                    }
                    ctx.protected_runs.borrow_mut().insert(key, v.clone());
                    all.push(v);
                }
                Err(err) => t.fail(&format!("protected run {key}"), err),
            }
        }
    }
    t.notes.push(format!(
        "1 vCPU, backup on loopback on the same 2-core machine: the primary's vCPU thread, its \
         epoch engine + sender threads and the backup's receiver all compete for 2 cores. \
         {} s windows; CPU % = process CPU time over the window (100 % = one core). \
         Unprotected runs print every {} (pages=256) / {} (4096) iterations, protected runs \
         every {} / {} so that the slow protected guest still prints a few lines per \
         second; the largest estimated printing overhead (1.5 ms per line) of a protected \
         run here: {} % (per run in the JSON, `print_overhead`).",
        ctx.rate_interval().as_secs(),
        every_for(256),
        every_for(4096),
        every_protected(256),
        every_protected(4096),
        fmt_opt(
            all.iter()
                .filter_map(|v| v["print_overhead"].as_f64())
                .reduce(f64::max)
                .map(|x| x * 100.0)
        )
    ));
    t.data = json!(all);
    Ok(t)
}

/// A cached protected run, or a fresh one.
fn cached_run(ctx: &Ctx, pages: u32) -> Res<Value> {
    let key = pkey(pages, 10, false);
    if let Some(v) = ctx.protected_runs.borrow().get(&key) {
        return Ok(v.clone());
    }
    let v = protected_run(
        ctx,
        &key,
        Guest::new(pages, every_protected(pages)),
        10,
        None,
    )?;
    ctx.protected_runs.borrow_mut().insert(key, v.clone());
    Ok(v)
}

/// latency: output commit latency at 10 ms epochs (from status).
pub fn latency(ctx: &Ctx) -> Res<Table> {
    let mut t = Table::new(&[
        "pages, epoch",
        "output latency p50 (us)",
        "p99 (us)",
        "epoch pause p50 (us)",
        "epochs in flight",
    ]);
    let mut data = Vec::new();
    for pages in [256u32] {
        match cached_run(ctx, pages) {
            Ok(v) => {
                t.row(vec![
                    format!("{pages}, 10 ms"),
                    fmt_opt(r_num(&v, "output_latency_us_p50")),
                    fmt_opt(r_num(&v, "output_latency_us_p99")),
                    fmt_opt(r_num(&v, "pause_us_p50")),
                    fmt_opt(r_num(&v, "epochs_in_flight")),
                ]);
                data.push(v);
            }
            Err(e) => t.fail(&format!("protected run pages={pages} 10 ms"), e),
        }
    }
    t.notes.push(
        "Output latency: from the guest writing a serial line to its release after the \
         backup acknowledged the epoch (ftvm's status). Lower bound: the rest of the epoch \
         plus one acknowledgement round trip."
            .into(),
    );
    t.data = json!(data);
    Ok(t)
}

/// throughput: replication bytes/s on loopback with pages=4096.
pub fn throughput(ctx: &Ctx) -> Res<Table> {
    let mut t = Table::new(&[
        "pages, epoch",
        "MB/s in the window",
        "MB/s since start (status bytes_per_s)",
        "dirty pages/epoch",
        "epochs/s",
        "iterations/s",
    ]);
    let v = cached_run(ctx, 4096)?;
    t.row(vec![
        "4096, 10 ms".into(),
        fmt_opt(v["bytes_per_s_window"].as_f64().map(|b| b / 1e6)),
        fmt_opt(r_num(&v, "bytes_per_s").map(|b| b / 1e6)),
        fmt_opt(r_num(&v, "dirty_pages_avg")),
        fmt_opt(v["epochs_per_s_window"].as_f64()),
        fmt_opt(v["rate"].as_f64()),
    ]);
    t.notes.push(
        "The window figure is the difference of the status `bytes` counter over the \
         measuring window; `bytes_per_s` divides all bytes (including the initial full \
         sync) by the time since replication started."
            .into(),
    );
    t.data = v;
    Ok(t)
}

/// takeover: SIGKILL the primary; time to the first line in the backup's serial file.
pub fn takeover(ctx: &Ctx) -> Res<Table> {
    let n = ctx.pick(3, 5);
    let mut t = Table::new(&[
        "trials",
        "SIGKILL to first backup line p50 (ms)",
        "min",
        "max",
        "detection to resume p50 (ms, backup's log)",
        "heartbeat timeout (ms)",
        "detected by",
    ]);
    let mut trials = Vec::new();
    let (mut first, mut resume) = (Vec::new(), Vec::new());
    let mut reasons: Vec<String> = Vec::new();
    for i in 0..n {
        let r = (|| -> Res<Value> {
            let port = free_port()?;
            let serial = ctx.tmp.join(&format!("tk{i}.b.serial"));
            let (mut b, _bapi) = start_backup(ctx, &format!("tk{i}-b"), port, 10, &serial, None)?;
            let g = Guest {
                protect: Some((port, 10)),
                ..Guest::new(256, 20)
            };
            let mut p = start_guest(ctx, &format!("tk{i}-p"), g)?;
            let mut api = p.connect(Duration::from_secs(30))?;
            p.wait_ready(READY_TIMEOUT)?;
            wait_protected(&mut p, &mut api, Duration::from_secs(60))?;
            std::thread::sleep(Duration::from_millis(1000));
            let before = std::fs::metadata(&serial).map(|m| m.len()).unwrap_or(0);
            let last_primary = p.seq_lines(p.spawned, Instant::now()).last().map(|x| x.1);
            let killed = p.kill();
            let deadline = killed + Duration::from_secs(15);
            let first_line = loop {
                let text = std::fs::read(&serial).unwrap_or_default();
                if text.len() as u64 > before {
                    if let Some(end) = text[before as usize..].iter().position(|&c| c == b'\n') {
                        let line =
                            String::from_utf8_lossy(&text[before as usize..before as usize + end])
                                .to_string();
                        break Ok((Instant::now(), line));
                    }
                }
                if b.exited().is_some() || Instant::now() > deadline {
                    break Err(b.failure("no line from the backup after the kill"));
                }
                std::thread::sleep(Duration::from_millis(1));
            }?;
            let ms = (first_line.0 - killed).as_secs_f64() * 1000.0;
            // The backup's own account of the takeover.
            let mut takeover_line = String::new();
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                if let Some(l) = b.stderr_text().lines().find(|l| l.contains("TAKEOVER")) {
                    takeover_line = l.to_string();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(json!({
                "kill_to_first_line_ms": ms,
                "first_line": first_line.1,
                "first_seq": parse_seq(&first_line.1),
                "last_primary_seq_seen": last_primary,
                "takeover_log": takeover_line,
                "detect_to_resume_ms": parse_resume_ms(&takeover_line),
            }))
        })();
        match r {
            Ok(v) => {
                if let Some(ms) = v["kill_to_first_line_ms"].as_f64() {
                    first.push(ms);
                }
                if let Some(ms) = v["detect_to_resume_ms"].as_f64() {
                    resume.push(ms);
                }
                if let Some(l) = v["takeover_log"].as_str() {
                    let why = l
                        .split("TAKEOVER: ")
                        .nth(1)
                        .and_then(|s| s.split(';').next())
                        .unwrap_or("")
                        .to_string();
                    if !why.is_empty() && !reasons.contains(&why) {
                        reasons.push(why);
                    }
                }
                trials.push(v);
            }
            Err(e) => t.fail(&format!("takeover trial {i}"), e),
        }
    }
    t.row(vec![
        first.len().to_string(),
        fmt_opt(median(&first)),
        fmt_opt(pct(&first, 0.0)),
        fmt_opt(pct(&first, 100.0)),
        fmt_opt(median(&resume)),
        HEARTBEAT_MS.to_string(),
        reasons.join("; "),
    ]);
    t.notes.push(
        "Guest pages=256 every=20, 10 ms epochs; the backup's serial file polled every 1 ms. \
         SIGKILL closes the primary's TCP connection, so the backup usually detects the loss \
         from the socket before the heartbeat timeout."
            .into(),
    );
    t.data = json!(trials);
    Ok(t)
}

/// The `X` of "(X ms from detection to resume)".
pub(crate) fn parse_resume_ms(line: &str) -> Option<f64> {
    let i = line.rfind(" ms from detection to resume")?;
    line[..i].rsplit('(').next()?.trim().parse().ok()
}

/// dirtylog (diagnostic): the guest's own iteration rate, in-process, with dirty logging
/// off/on and the VMM reading/clearing the log every 10 ms, to find where protected runs
/// lose their speed.
pub fn dirtylog(ctx: &Ctx) -> Res<Table> {
    use bare::Mode;
    let modes = [
        Mode::Off,
        Mode::LogOn,
        Mode::PauseOnly,
        Mode::Peek,
        Mode::PeekClear,
        Mode::ClearRunning,
        Mode::Off,
    ];
    let window = ctx.pick(Duration::from_secs(1), Duration::from_secs(3));
    let period = Duration::from_millis(10);
    let mut t = Table::new(&[
        "guest pages",
        "what the VMM does (10 ms period)",
        "iterations/s",
        "ratio vs first 'logging off'",
        "periods",
    ]);
    let mut data = Vec::new();
    for gp in [256u32, 4096] {
        match bare::dirty_log_modes(gp, &modes, period, window) {
            Ok(r) => {
                let base = r.first().map(|x| x.1).unwrap_or(f64::NAN);
                for (m, rate, periods) in &r {
                    t.row(vec![
                        gp.to_string(),
                        m.name().into(),
                        fmt(*rate),
                        fmt(rate / base),
                        periods.to_string(),
                    ]);
                    data.push(
                        json!({"pages": gp, "mode": m.name(), "rate": rate, "periods": periods}),
                    );
                }
            }
            Err(e) => t.fail(&format!("dirty-log modes, guest pages={gp}"), e),
        }
    }
    t.notes.push(format!(
        "In-process VM (1 vCPU, 256 MiB), rate from the guest's `ftvm_progress` counter over \
         {} s per mode, modes in the order shown on one VM (the last row repeats the first as \
         a drift check). No copy, no state capture, no network: only KVM's dirty log.",
        window.as_secs()
    ));
    t.data = json!(data);
    Ok(t)
}
