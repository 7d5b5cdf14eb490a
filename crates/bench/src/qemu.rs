//! qemu (opt-in: `--only qemu`): the same test guest under QEMU (`-machine microvm -accel
//! kvm`, PVH boot of the guest's ELF) and under ftvm, measured alternately in one run, each
//! figure with the ratio ftvm / QEMU, the goal and the load average.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::groups::{
    every_for, listening, migrate_once, start_guest, unprotected_rate, Guest, MEMORY, READY_TIMEOUT,
};
use crate::util::{fmt_opt, free_port, loadavg, lock, median, num, parse_seq, Lines, Res};
use crate::{Ctx, Table};

const QEMU: &str = "qemu-system-x86_64";
/// QEMU's `downtime-limit` for the migrations (ms); ftvm's default target is the same.
const DOWNTIME_LIMIT_MS: u64 = 50;

/// A QEMU process running the test guest; killed (SIGKILL) and reaped when dropped.
struct Qemu {
    name: String,
    child: Child,
    lines: Lines,
    qmp: PathBuf,
    stderr: PathBuf,
    spawned: Instant,
}

impl Qemu {
    /// `qemu-system-x86_64 -machine microvm -accel kvm` with the guest ELF, its serial on
    /// stdout (read line by line), QMP on a Unix socket; `incoming`: wait for a migration.
    fn spawn(ctx: &Ctx, elf: &Path, name: &str, cmdline: &str, incoming: Option<u16>) -> Res<Self> {
        let qmp = ctx.tmp.join(&format!("{name}.qmp"));
        let stderr = ctx.tmp.join(&format!("{name}.err"));
        let _stale = std::fs::remove_file(&qmp);
        let err = std::fs::File::create(&stderr)
            .map_err(|e| format!("creating {}: {e}", stderr.display()))?;
        let mut cmd = Command::new(QEMU);
        cmd.args([
            "-machine", "microvm", "-accel", "kvm", "-m", MEMORY, "-smp", "1",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-display",
            "none",
        ])
        .arg("-kernel")
        .arg(elf)
        .args(["-append", cmdline, "-serial", "stdio"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        if let Some(port) = incoming {
            cmd.args(["-incoming", &format!("tcp:127.0.0.1:{port}")]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err));
        let spawned = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {QEMU} ({e}); scripts/setup.sh installs it"))?;
        let lines: Lines = Default::default();
        if let Some(out) = child.stdout.take() {
            let l = lines.clone();
            let reader = std::thread::Builder::new()
                .name(format!("{name}-stdout"))
                .spawn(move || {
                    for line in BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        lock(&l).push((Instant::now(), line));
                    }
                });
            if let Err(e) = reader {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("starting a reader thread: {e}"));
            }
        }
        Ok(Self {
            name: name.to_string(),
            child,
            lines,
            qmp,
            stderr,
            spawned,
        })
    }

    fn failure(&mut self, what: &str) -> String {
        let st = match self.child.try_wait() {
            Ok(Some(s)) => format!(" (process ended: {s})"),
            _ => String::new(),
        };
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{}: {what}{st}; stderr: {}", self.name, tail.join(" | "))
    }

    fn ended(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait for a line matching `pred` read at or after `since`; returns when it was read.
    fn wait_line(
        &mut self,
        since: Instant,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Res<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((t, _)) = lock(&self.lines)
                .iter()
                .find(|(t, s)| *t >= since && pred(s))
            {
                return Ok(*t);
            }
            if self.ended() {
                return Err(self.failure("ended before the expected line"));
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!("no expected line within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn wait_ready(&mut self) -> Res<Instant> {
        let since = self.spawned;
        self.wait_line(since, |s| s.trim() == "ftvm-testguest ready", READY_TIMEOUT)
    }

    fn connect(&mut self) -> Res<Qmp> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = UnixStream::connect(&self.qmp) {
                return Qmp::new(s, self.name.clone());
            }
            if self.ended() || Instant::now() > deadline {
                return Err(self.failure("QMP socket did not answer"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Iterations per second from the seq lines read in `[t0, t1]`.
    fn rate(&self, t0: Instant, t1: Instant) -> Res<f64> {
        let l: Vec<(Instant, u64)> = lock(&self.lines)
            .iter()
            .filter(|(t, _)| *t >= t0 && *t <= t1)
            .filter_map(|(t, s)| parse_seq(s).map(|n| (*t, n)))
            .collect();
        match (l.first(), l.last()) {
            (Some(a), Some(b)) if l.len() >= 2 && b.0 > a.0 => {
                Ok((b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64())
            }
            _ => Err(format!(
                "{}: only {} seq lines: no rate",
                self.name,
                l.len()
            )),
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _maybe_already_gone = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A QMP connection: one JSON object per line each way; events are skipped.
struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
    name: String,
}

impl Qmp {
    fn new(s: UnixStream, name: String) -> Res<Self> {
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| format!("{name}: QMP timeout: {e}"))?;
        let w = s
            .try_clone()
            .map_err(|e| format!("{name}: cloning the QMP socket: {e}"))?;
        let mut q = Self {
            r: BufReader::new(s),
            w,
            name,
        };
        let greeting = q.line()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("{}: not a QMP greeting: {greeting}", q.name));
        }
        q.cmd("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn line(&mut self) -> Res<Value> {
        let mut buf = String::new();
        let n = self
            .r
            .read_line(&mut buf)
            .map_err(|e| format!("{}: reading QMP: {e}", self.name))?;
        if n == 0 {
            return Err(format!("{}: QMP connection closed", self.name));
        }
        serde_json::from_str(&buf).map_err(|e| format!("{}: bad QMP line {buf:?}: {e}", self.name))
    }

    /// Execute `name`; its `return` value, or its error as `Err`.
    fn cmd(&mut self, name: &str, args: Value) -> Res<Value> {
        let mut req = json!({ "execute": name, "arguments": args }).to_string();
        req.push('\n');
        self.w
            .write_all(req.as_bytes())
            .map_err(|e| format!("{}: sending {name}: {e}", self.name))?;
        loop {
            let v = self.line()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(format!("{}: {name} failed: {e}", self.name));
            }
        }
    }
}

/// One QEMU live migration of a fresh guest (`pages=`) to a QEMU `-incoming` on loopback,
/// 0.5 s after ready, downtime-limit 50 ms, bandwidth uncapped; `query-migrate`'s answer.
fn qemu_migrate_once(ctx: &Ctx, elf: &Path, pages: u32, tag: &str) -> Res<Value> {
    let cmdline = format!("pages={pages} every=1000000000");
    let port = free_port()?;
    let mut dst = Qemu::spawn(ctx, elf, &format!("qdst{tag}"), &cmdline, Some(port))?;
    let mut src = Qemu::spawn(ctx, elf, &format!("qsrc{tag}"), &cmdline, None)?;
    src.wait_ready()?;
    let mut q = src.connect()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !listening(port) {
        if dst.ended() || Instant::now() > deadline {
            return Err(dst.failure("not listening"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    q.cmd(
        "migrate-set-parameters",
        json!({"downtime-limit": DOWNTIME_LIMIT_MS, "max-bandwidth": 1u64 << 40}),
    )?;
    q.cmd("migrate", json!({"uri": format!("tcp:127.0.0.1:{port}")}))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = q.cmd("query-migrate", json!({}))?;
        match st["status"].as_str().unwrap_or("") {
            "completed" => {
                // The guest must go on on the target.
                let mut d = dst.connect()?;
                let status = d.cmd("query-status", json!({}))?;
                if status["status"] != "running" {
                    return Err(format!("QEMU target not running after migration: {status}"));
                }
                return Ok(st);
            }
            "failed" | "cancelled" => return Err(format!("QEMU migration {st}")),
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(format!("QEMU migration not done in 120 s: {st}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Samples of one figure for both VMMs.
#[derive(Default)]
struct Pair {
    ftvm: Vec<f64>,
    qemu: Vec<f64>,
    load: Vec<f64>,
}

impl Pair {
    fn json(&self) -> Value {
        json!({"ftvm": self.ftvm, "qemu": self.qemu, "loadavg": self.load})
    }
}

/// How a ratio ftvm / QEMU compares with the goal.
enum Goal {
    AtMost(f64),
    AtLeast(f64),
    FtvmAtMost(f64, &'static str),
}

fn row(t: &mut Table, figure: &str, p: &Pair, goal: Goal) {
    let (f, q) = (median(&p.ftvm), median(&p.qemu));
    let ratio = match (f, q) {
        (Some(f), Some(q)) if q > 0.0 => Some(f / q),
        _ => None,
    };
    let (goal_text, met) = match goal {
        Goal::AtMost(g) => (format!("<= {g}x"), ratio.map(|r| r <= g)),
        Goal::AtLeast(g) => (format!(">= {g}x"), ratio.map(|r| r >= g)),
        Goal::FtvmAtMost(g, unit) => (format!("ftvm <= {g} {unit}"), f.map(|f| f <= g)),
    };
    t.row(vec![
        figure.to_string(),
        format!("{} / {}", p.ftvm.len(), p.qemu.len()),
        fmt_opt(f),
        fmt_opt(q),
        ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}x")),
        goal_text,
        match met {
            Some(true) => "met".into(),
            Some(false) => "NOT met".into(),
            None => "-".into(),
        },
        median(&p.load).map_or_else(|| "-".into(), |l| format!("{l:.1}")),
    ]);
}

/// The side-by-side comparison.
pub fn qemu(ctx: &Ctx) -> Res<Table> {
    let v = Command::new(QEMU).arg("--version").output().map_err(|e| {
        format!("{QEMU} not found ({e}): scripts/setup.sh installs qemu-system-x86")
    })?;
    let version = String::from_utf8_lossy(&v.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let elf = ctx.tmp.join("ftvm-testguest.elf");
    std::fs::write(&elf, ftvm_testguest::ELF)
        .map_err(|e| format!("writing {}: {e}", elf.display()))?;
    let mut t = Table::new(&[
        "figure",
        "runs ftvm / QEMU",
        "ftvm p50",
        "QEMU p50",
        "ftvm / QEMU",
        "goal",
        "",
        "load avg",
    ]);
    let n = ctx.pick(3, 5);
    let nm = ctx.pick(2, 3);
    let busy = 256u32;
    let cmd_busy = format!("pages={busy} every={}", every_for(busy));
    let quiet = format!("pages={busy} every=1000000000");

    // Boot: spawn to ready.
    let mut boot = Pair::default();
    for i in 0..n {
        boot.load.push(loadavg()[0]);
        for first_ftvm in [i % 2 == 0, i % 2 != 0] {
            if first_ftvm {
                match start_guest(ctx, &format!("qboot-f{i}"), Guest::new(busy, 1_000_000_000))
                    .and_then(|mut p| Ok(p.wait_ready(READY_TIMEOUT)? - p.spawned))
                {
                    Ok(d) => boot.ftvm.push(d.as_secs_f64() * 1e3),
                    Err(e) => t.fail("ftvm boot", e),
                }
            } else {
                match Qemu::spawn(ctx, &elf, &format!("qboot-q{i}"), &quiet, None)
                    .and_then(|mut q| Ok(q.wait_ready()? - q.spawned))
                {
                    Ok(d) => boot.qemu.push(d.as_secs_f64() * 1e3),
                    Err(e) => t.fail("QEMU boot", e),
                }
            }
        }
    }
    row(
        &mut t,
        "boot: spawn to ready (ms)",
        &boot,
        Goal::AtMost(1.0),
    );

    // Guest speed.
    let mut speed = Pair::default();
    for i in 0..nm {
        speed.load.push(loadavg()[0]);
        match unprotected_rate(
            ctx,
            &format!("qrate-f{i}"),
            Guest::new(busy, every_for(busy)),
        ) {
            Ok((r, _)) => speed.ftvm.push(r),
            Err(e) => t.fail("ftvm guest speed", e),
        }
        let r =
            Qemu::spawn(ctx, &elf, &format!("qrate-q{i}"), &cmd_busy, None).and_then(|mut q| {
                q.wait_ready()?;
                std::thread::sleep(Duration::from_millis(500));
                let t0 = Instant::now();
                std::thread::sleep(ctx.rate_interval());
                q.rate(t0, Instant::now())
            });
        match r {
            Ok(r) => speed.qemu.push(r),
            Err(e) => t.fail("QEMU guest speed", e),
        }
    }
    row(
        &mut t,
        "guest speed, pages=256 (iterations/s)",
        &speed,
        Goal::AtLeast(0.98),
    );

    // Migrations: busy and idle guest.
    let (mut total, mut down, mut idle, mut stream) = (
        Pair::default(),
        Pair::default(),
        Pair::default(),
        Pair::default(),
    );
    let mut raw = Vec::new();
    for pages in [busy, 0] {
        for i in 0..nm {
            let load = loadavg()[0];
            let tag = format!("{pages}-{i}");
            match migrate_once(ctx, pages, &format!("q{tag}")) {
                Ok(a) => {
                    let (tm, dm, b) = (
                        num(&a, &["total_ms"]),
                        num(&a, &["downtime_ms"]),
                        num(&a, &["bytes"]),
                    );
                    if pages == 0 {
                        idle.ftvm.extend(dm);
                        idle.load.push(load);
                    } else {
                        total.ftvm.extend(tm);
                        down.ftvm.extend(dm);
                        total.load.push(load);
                        down.load.push(load);
                        stream.load.push(load);
                        if let (Some(b), Some(tm)) = (b, tm) {
                            stream.ftvm.push(b / 1e6 / (tm / 1e3));
                        }
                    }
                    raw.push(json!({"vmm": "ftvm", "pages": pages, "answer": a}));
                }
                Err(e) => t.fail(&format!("ftvm migration pages={pages}"), e),
            }
            match qemu_migrate_once(ctx, &elf, pages, &tag) {
                Ok(st) => {
                    let (tm, dm, b) = (
                        num(&st, &["total-time"]),
                        num(&st, &["downtime"]),
                        num(&st, &["ram", "transferred"]),
                    );
                    if pages == 0 {
                        idle.qemu.extend(dm);
                    } else {
                        total.qemu.extend(tm);
                        down.qemu.extend(dm);
                        if let (Some(b), Some(tm)) = (b, tm) {
                            stream.qemu.push(b / 1e6 / (tm / 1e3));
                        }
                    }
                    raw.push(json!({"vmm": "qemu", "pages": pages, "answer": st}));
                }
                Err(e) => t.fail(&format!("QEMU migration pages={pages}"), e),
            }
        }
    }
    row(
        &mut t,
        "live migration, busy guest (pages=256): total (ms)",
        &total,
        Goal::AtMost(1.0),
    );
    row(&mut t, "same: downtime (ms)", &down, Goal::AtMost(1.0));
    row(
        &mut t,
        "live migration, idle guest (pages=0): downtime (ms)",
        &idle,
        Goal::FtvmAtMost(20.0, "ms"),
    );
    row(
        &mut t,
        "stream on loopback, busy migration: MB sent / total time (MB/s)",
        &stream,
        Goal::AtLeast(1.0),
    );

    // Pause / resume round trips: ftvm's API vs QMP stop / cont.
    let (mut pause, mut resume) = (Pair::default(), Pair::default());
    let cycles = ctx.pick(50, 100);
    let r = (|| -> Res<()> {
        let mut f = start_guest(ctx, "qpause-f", Guest::new(busy, 1_000_000_000))?;
        let mut q = Qemu::spawn(ctx, &elf, "qpause-q", &quiet, None)?;
        f.wait_ready(READY_TIMEOUT)?;
        q.wait_ready()?;
        let mut api = f.connect(Duration::from_secs(10))?;
        let mut qmp = q.connect()?;
        std::thread::sleep(Duration::from_millis(300));
        for _ in 0..cycles {
            pause.load.push(loadavg()[0]);
            let t0 = Instant::now();
            api.cmd("pause")?;
            pause.ftvm.push(t0.elapsed().as_secs_f64() * 1e6);
            let t0 = Instant::now();
            api.cmd("resume")?;
            resume.ftvm.push(t0.elapsed().as_secs_f64() * 1e6);
            std::thread::sleep(Duration::from_millis(3));
            let t0 = Instant::now();
            qmp.cmd("stop", json!({}))?;
            pause.qemu.push(t0.elapsed().as_secs_f64() * 1e6);
            let t0 = Instant::now();
            qmp.cmd("cont", json!({}))?;
            resume.qemu.push(t0.elapsed().as_secs_f64() * 1e6);
            std::thread::sleep(Duration::from_millis(3));
        }
        Ok(())
    })();
    if let Err(e) = r {
        t.fail("pause / resume", e);
    }
    resume.load = pause.load.clone();
    row(
        &mut t,
        "pause round trip, API vs QMP stop (us)",
        &pause,
        Goal::AtMost(1.0),
    );
    row(
        &mut t,
        "resume round trip, API vs QMP cont (us)",
        &resume,
        Goal::AtMost(1.0),
    );

    t.notes.push(format!(
        "{version}, `-machine microvm -accel kvm -m {MEMORY} -smp 1` (default CPU model), the \
         guest ELF booted via PVH; ftvm: `ftvm run --kernel @testguest --memory {MEMORY}`, 1 \
         vCPU. Alternating runs, medians. Migrations on loopback 0.5 s after ready: QEMU with \
         downtime-limit {DOWNTIME_LIMIT_MS} ms and max-bandwidth uncapped, ftvm with its \
         default 50 ms target; downtime and total time as each VMM reports them (QEMU's \
         query-migrate, ftvm's migrate answer). Ratios: ftvm / QEMU."
    ));
    t.data = json!({
        "qemu_version": version,
        "boot_ms": boot.json(),
        "rate": speed.json(),
        "migration_total_ms": total.json(),
        "migration_downtime_ms": down.json(),
        "idle_downtime_ms": idle.json(),
        "stream_mb_s": stream.json(),
        "pause_us": pause.json(),
        "resume_us": resume.json(),
        "migrations": raw,
    });
    Ok(t)
}
