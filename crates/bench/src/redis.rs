//! redis (opt-in: `--only redis`): `redis-benchmark -t ping,set,get,incr -c 50` against the
//! test guest's key-value service (`kv=1`) over virtio-net on TAP devices, unprotected and
//! protected at 5, 10 and 20 ms epochs, next to the floor; and takeover: SIGKILL of the
//! primary to the first INCR reply the client reads after it, over 10 trials.
//!
//! Topology as in crates/ftvm/tests/net.rs: namespace S holds a bridge with the primary's
//! and the backup's TAPs and one end of a veth pair; the other end is in the client
//! namespace C (198.18.0.1/24); the guest is 198.18.0.2. ftvm runs in S (its replication
//! link is S's loopback), the Redis tools in C. Names are unique per process; both
//! namespaces (and with them every device) are deleted at the end, also on error.
//! Needs root, `ip` and redis-tools.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{fmt, fmt_opt, lock, median, Proc, Res, Spawn};
use crate::{Ctx, Table};

const CLIENT_IP: &str = "198.18.0.1";
pub(crate) const GUEST_IP: &str = "198.18.0.2";
pub(crate) const GUEST_MAC: &str = "02:f7:00:00:00:02";
pub(crate) const MEMORY: &str = "128M";
const TESTS: &str = "ping,set,get,incr";
const CLIENTS: u32 = 50;
const EPOCHS_MS: [u64; 3] = [5, 10, 20];
/// Heartbeat timeout of both sides (SIGKILL closes the replication socket, so the backup
/// notices at once; the timeout only bounds a silent primary).
const HEARTBEAT: &str = "1s";
const T: Duration = Duration::from_secs(90);

pub(crate) fn sh(cmd: &mut Command) -> Res<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Why the group cannot run here, if it cannot.
pub(crate) fn missing() -> Option<String> {
    if !have("redis-benchmark", "--version") || !have("redis-cli", "--version") {
        return Some(
            "redis-benchmark/redis-cli not found (scripts/setup.sh installs redis-tools)".into(),
        );
    }
    if !have("ip", "-V") {
        return Some("ip not found (iproute2)".into());
    }
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if uid != "0" {
        return Some("not root: network namespaces and TAP devices need CAP_NET_ADMIN".into());
    }
    None
}

/// The two namespaces, the bridge, two TAPs and the veth pair; deleted when dropped.
pub(crate) struct Net {
    pub(crate) s: String,
    pub(crate) c: String,
    pub(crate) taps: [&'static str; 2],
}

impl Net {
    pub(crate) fn new() -> Res<Net> {
        let id = std::process::id();
        let net = Net {
            s: format!("ftvbs{id}"),
            c: format!("ftvbc{id}"),
            taps: ["ftvbtap0", "ftvbtap1"],
        };
        sh(Command::new("ip").args(["netns", "add", &net.s]))?;
        // From here on, Drop removes whatever was made.
        sh(Command::new("ip").args(["netns", "add", &net.c]))?;
        let ip_s = |args: &[&str]| sh(Command::new("ip").arg("-n").arg(&net.s).args(args));
        let ip_c = |args: &[&str]| sh(Command::new("ip").arg("-n").arg(&net.c).args(args));
        ip_s(&["link", "set", "lo", "up"])?;
        ip_c(&["link", "set", "lo", "up"])?;
        ip_s(&["link", "add", "br0", "type", "bridge"])?;
        ip_s(&["link", "set", "br0", "up"])?;
        for t in net.taps {
            ip_s(&["tuntap", "add", t, "mode", "tap"])?;
            ip_s(&["link", "set", t, "master", "br0"])?;
            ip_s(&["link", "set", t, "up"])?;
        }
        ip_s(&[
            "link", "add", "vs", "type", "veth", "peer", "name", "vc", "netns", &net.c,
        ])?;
        ip_s(&["link", "set", "vs", "master", "br0"])?;
        ip_s(&["link", "set", "vs", "up"])?;
        ip_c(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "vc"])?;
        ip_c(&["link", "set", "vc", "up"])?;
        Ok(net)
    }

    /// `prog` run in namespace `ns`.
    pub(crate) fn cmd(ns: &str, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, prog]);
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.s, &self.c] {
            let _best_effort = Command::new("ip")
                .args(["netns", "delete", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `ftvm ARGS` in namespace S (`ip netns exec` execs ftvm: the pid is ftvm's).
pub(crate) fn spawn(ctx: &Ctx, net: &Net, name: &str, args: Vec<String>) -> Res<Proc> {
    let mut full = vec![
        "netns".to_string(),
        "exec".into(),
        net.s.clone(),
        ctx.ftvm.display().to_string(),
    ];
    full.extend(args);
    Proc::spawn(Spawn {
        ftvm: Path::new("ip"),
        dir: &ctx.tmp.0,
        name,
        args: full,
        pin: None,
    })
}

pub(crate) fn wait_stderr(p: &mut Proc, what: &str) -> Res<()> {
    let t0 = Instant::now();
    while !p.stderr_text().contains(what) {
        if p.exited().is_some() {
            return Err(p.failure(&format!("ended before {what:?}")));
        }
        if t0.elapsed() > T {
            return Err(p.failure(&format!("no {what:?} within {T:?}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

pub(crate) fn wait_listening(serial: &Path) -> Res<()> {
    let want = format!("ftvm-testguest kv listening on {GUEST_IP}:6379");
    let t0 = Instant::now();
    while !std::fs::read_to_string(serial)
        .unwrap_or_default()
        .contains(&want)
    {
        if t0.elapsed() > T {
            return Err(format!("the guest never printed {want:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// A VM, unprotected (`epoch_ms` None) or a protected pair; ready for clients.
pub(crate) struct Vm {
    pub(crate) primary: Proc,
    pub(crate) backup: Option<Proc>,
}

/// The kv guest on the namespace's TAPs, as the redis and disk groups start it.
pub(crate) struct KvSpec<'a> {
    /// Names the processes' files.
    pub(crate) tag: &'a str,
    /// The replication port (on S's loopback).
    pub(crate) port: u16,
    /// Unprotected (`None`) or protected at this epoch.
    pub(crate) epoch_ms: Option<u64>,
    /// The primary on the second TAP and the backup on the first. After a takeover the
    /// bridge has learnt the guest's MAC on the backup's TAP, and the guest of a fresh
    /// pair stays silent until spoken to, so the next pair's primary must sit on that TAP.
    pub(crate) flip: bool,
    /// `--heartbeat-timeout` of both sides.
    pub(crate) heartbeat: &'a str,
    /// The durable guest (`disk=1`) on these images: (primary's, backup's).
    pub(crate) disks: Option<(&'a Path, &'a Path)>,
}

fn start(ctx: &Ctx, net: &Net, tag: &str, epoch_ms: Option<u64>, flip: bool) -> Res<Vm> {
    start_kv(
        ctx,
        net,
        &KvSpec {
            tag,
            port: 7700,
            epoch_ms,
            flip,
            heartbeat: HEARTBEAT,
            disks: None,
        },
    )
}

/// Start `spec`'s VM (and backup) and wait until it is protected and listens.
pub(crate) fn start_kv(ctx: &Ctx, net: &Net, spec: &KvSpec) -> Res<Vm> {
    let (ptap, btap) = if spec.flip {
        (net.taps[1], net.taps[0])
    } else {
        (net.taps[0], net.taps[1])
    };
    let tag = spec.tag;
    let serial = ctx.tmp.join(&format!("{tag}-primary.out"));
    let _stale = std::fs::remove_file(&serial);
    let fence = format!("lock:{}", ctx.tmp.join(&format!("{tag}.fence")).display());
    let addr = format!("127.0.0.1:{}", spec.port);
    // Arguments of one side: its TAP, its disk, the fence and heartbeat, its console.
    let side = |tap: &str, disk: Option<&Path>, out: String| -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--memory".into(),
            MEMORY.into(),
            "--net".into(),
            format!("tap={tap},mac={GUEST_MAC}"),
            "--heartbeat-timeout".into(),
            spec.heartbeat.into(),
            "--serial".into(),
            out,
        ];
        if let Some(d) = disk {
            a.extend(["--disk".into(), format!("path={}", d.display())]);
        }
        a
    };
    let backup = match spec.epoch_ms {
        None => None,
        Some(_) => {
            let mut args: Vec<String> = vec!["backup".into(), "--listen".into(), addr.clone()];
            args.extend(side(
                btap,
                spec.disks.map(|d| d.1),
                format!(
                    "file:{}",
                    ctx.tmp.join(&format!("{tag}-backup.out")).display()
                ),
            ));
            args.extend(["--fence".into(), fence.clone()]);
            let mut b = spawn(ctx, net, &format!("{tag}-backup"), args)?;
            wait_stderr(&mut b, "waiting for a primary")?;
            Some(b)
        }
    };
    let disk_word = if spec.disks.is_some() { " disk=1" } else { "" };
    let mut args: Vec<String> = vec![
        "run".into(),
        "--kernel".into(),
        "@testguest".into(),
        "--cmdline".into(),
        format!("kv=1 ip={GUEST_IP}/24{disk_word}"),
    ];
    args.extend(side(
        ptap,
        spec.disks.map(|d| d.0),
        format!("file:{}", serial.display()),
    ));
    if let Some(ms) = spec.epoch_ms {
        args.extend([
            "--protect".into(),
            addr,
            "--fence".into(),
            fence,
            "--epoch".into(),
            format!("{ms}ms"),
        ]);
    }
    let mut primary = spawn(ctx, net, &format!("{tag}-primary"), args)?;
    if spec.epoch_ms.is_some() {
        wait_stderr(&mut primary, "the VM is protected")?;
    }
    wait_listening(&serial).map_err(|e| primary.failure(&e))?;
    Ok(Vm { primary, backup })
}

/// One `redis-benchmark --csv` row: (test, rps, avg, min, p50, p95, p99, max).
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) test: String,
    pub(crate) rps: f64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) min: f64,
}

pub(crate) fn parse_csv(text: &str) -> Vec<Row> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<String> = l
                .split(',')
                .map(|s| s.trim_matches('"').to_string())
                .collect();
            let n = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok());
            Some(Row {
                test: f.first()?.clone(),
                rps: n(1)?,
                min: n(3)?,
                p50: n(4)?,
                p99: n(6)?,
            })
        })
        .collect()
}

fn bench(net: &Net, requests: u32) -> Res<(Vec<Row>, String)> {
    let out = sh(Net::cmd(&net.c, "timeout").args([
        "300",
        "redis-benchmark",
        "-h",
        GUEST_IP,
        "-p",
        "6379",
        "-t",
        TESTS,
        "-c",
        &CLIENTS.to_string(),
        "-n",
        &requests.to_string(),
        "--csv",
    ]))?;
    let rows = parse_csv(&out);
    if rows.is_empty() {
        return Err(format!("no CSV rows in redis-benchmark's output: {out}"));
    }
    Ok((rows, out))
}

/// One `redis-cli` process, one connection, INCR after INCR; when each reply was read.
struct IncrClient {
    stop: Arc<AtomicBool>,
    replies: Arc<Mutex<Vec<(Instant, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    child: Child,
}

impl IncrClient {
    fn start(net: &Net) -> Res<IncrClient> {
        let mut child = Net::cmd(&net.c, "redis-cli")
            .args(["-h", GUEST_IP])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting redis-cli: {e}"))?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("redis-cli without pipes".into());
        };
        let mut stdout = BufReader::new(stdout);
        let stop = Arc::new(AtomicBool::new(false));
        let replies: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let (s, r) = (stop.clone(), replies.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if stdin.write_all(b"INCR n\n").is_err() || stdin.flush().is_err() {
                    break;
                }
                let mut line = String::new();
                if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                lock(&r).push((Instant::now(), line.trim_end().to_string()));
            }
        });
        Ok(IncrClient {
            stop,
            replies,
            thread: Some(thread),
            child,
        })
    }

    /// When the first numeric reply read after `t` arrived, waiting up to `T`.
    fn first_after(&self, t: Instant) -> Res<Instant> {
        let t0 = Instant::now();
        loop {
            if let Some((at, _)) = lock(&self.replies)
                .iter()
                .find(|(at, l)| *at > t && l.parse::<u64>().is_ok())
            {
                return Ok(*at);
            }
            if t0.elapsed() > T {
                return Err(format!(
                    "no INCR reply within {T:?} of the kill (last {:?})",
                    lock(&self.replies).last().map(|x| x.1.clone())
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn count(&self) -> usize {
        lock(&self.replies).len()
    }
}

impl Drop for IncrClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn takeover_once(ctx: &Ctx, net: &Net, i: usize) -> Res<f64> {
    let mut vm = start(ctx, net, &format!("redis-to{i}"), Some(10), i % 2 == 1)?;
    let client = IncrClient::start(net)?;
    let t0 = Instant::now();
    while client.count() < 20 {
        if t0.elapsed() > T {
            return Err("the INCR client got no 20 replies before the kill".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200 + 37 * i as u64 % 300));
    let t_kill = vm.primary.kill();
    let first = client.first_after(t_kill)?;
    if let Some(b) = vm.backup.as_mut() {
        wait_stderr(b, "TAKEOVER")?;
    }
    Ok(first.duration_since(t_kill).as_secs_f64() * 1e3)
}

/// The group.
pub fn redis(ctx: &Ctx) -> Res<Table> {
    if let Some(why) = missing() {
        return Err(format!("SKIPPED: {why}"));
    }
    let net = Net::new()?;
    let requests: u32 = ctx.pick(1500, 3000);
    let mut t = Table::new(&[
        "mode",
        "test",
        "requests/s",
        "ratio vs unprotected",
        "p50 / p99 ms",
        "min ms",
        "floor ms (epoch/2 + ack)",
    ]);
    let mut data = serde_json::Map::new();
    let mut base: Vec<Row> = Vec::new();
    // The ack round trip: replication runs on S's loopback; take the unprotected
    // run's minimum latency as the order of one such round trip through the stack.
    let mut ack_ms: Option<f64> = None;
    for epoch in std::iter::once(None).chain(EPOCHS_MS.map(Some)) {
        let mode = epoch.map_or_else(
            || "unprotected".to_string(),
            |ms| format!("protected {ms} ms"),
        );
        let tag = format!("redis-{}", epoch.unwrap_or(0));
        let r = start(ctx, &net, &tag, epoch, false).and_then(|vm| {
            let r = bench(&net, requests);
            if let Some(b) = &vm.backup {
                if b.stderr_text().contains("TAKEOVER") {
                    return Err("the backup took over during the run".into());
                }
            }
            drop(vm);
            r
        });
        match r {
            Ok((rows, raw)) => {
                if epoch.is_none() {
                    ack_ms = rows.iter().map(|r| r.min).min_by(f64::total_cmp);
                    base = rows.clone();
                }
                for row in &rows {
                    let ratio = base
                        .iter()
                        .find(|b| b.test == row.test)
                        .filter(|b| b.rps > 0.0)
                        .map(|b| row.rps / b.rps);
                    let floor = epoch.map(|ms| ms as f64 / 2.0 + ack_ms.unwrap_or(0.0));
                    t.row(vec![
                        mode.clone(),
                        row.test.clone(),
                        fmt(row.rps),
                        fmt_opt(ratio),
                        format!("{} / {}", fmt(row.p50), fmt(row.p99)),
                        fmt(row.min),
                        floor.map_or_else(|| "-".into(), fmt),
                    ]);
                }
                data.insert(
                    mode.clone(),
                    json!({"epoch_ms": epoch, "requests": requests, "csv": raw}),
                );
            }
            Err(e) => t.fail(&format!("redis-benchmark {mode}"), e),
        }
    }
    let trials = 10;
    let mut ms = Vec::new();
    for i in 0..trials {
        match takeover_once(ctx, &net, i) {
            Ok(v) => ms.push(v),
            Err(e) => t.fail(&format!("takeover trial {i}"), e),
        }
    }
    let max = ms.iter().copied().max_by(f64::total_cmp);
    t.row(vec![
        "takeover, 10 ms epochs".into(),
        format!("SIGKILL to first INCR reply ({} trials)", ms.len()),
        "-".into(),
        "-".into(),
        format!("p50 {} / max {}", fmt_opt(median(&ms)), fmt_opt(max)),
        "-".into(),
        "-".into(),
    ]);
    data.insert("takeover_ms".into(), json!(ms));
    data.insert("ack_estimate_ms".into(), json!(ack_ms));
    t.notes.push(format!(
        "redis-benchmark -h {GUEST_IP} -p 6379 -t {TESTS} -c {CLIENTS} -n {requests} --csv from a \
         client namespace over a bridge to the guest's TAP (guest kv=1, 1 vCPU, {MEMORY}). \
         Floor: a reply waits for the rest of its epoch (epoch/2 on average) plus one \
         acknowledgement; the ack round trip is estimated as the unprotected run's minimum \
         latency ({} ms, an upper bound for a loopback round trip). With 50 connections each \
         holding one request, a closed loop also caps protected throughput near 50/epoch \
         requests/s. Takeover: fresh pair per trial, heartbeat timeout {HEARTBEAT}, one \
         redis-cli connection INCRing; time from SIGKILL of the primary to the first reply read \
         after it (a reply already in flight at the kill would count as 0).",
        fmt_opt(ack_ms)
    ));
    t.data = Value::Object(data);
    Ok(t)
}
