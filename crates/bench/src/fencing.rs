//! fencing: takeover time per fence mode (`none`, `lock:PATH`, `etcd:URL`) and failure
//! (SIGKILL of the primary, SIGSTOP of the primary), measured from outside: from the signal
//! to the first guest line the backup releases on its stdout. A frozen primary with a lock
//! fence keeps its lock, so the backup goes `stale` (exit 76) instead: the table says so,
//! with the time to the `STALE` line. etcd is a real one (Debian's `etcd-server`), one
//! member on free loopback ports with a temporary data directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ftvm_replication::fence_etcd::Etcd as EtcdClient;
use serde_json::{json, Value};

use crate::groups::{parse_resume_ms, wait_protected, HEARTBEAT_MS, MEMORY, READY_TIMEOUT};
use crate::util::{fmt_opt, free_port, lock, median, pct, Proc, Res, Spawn, TempDir};
use crate::{Ctx, Table};

const EPOCH_MS: u64 = 10;
/// How long to wait for the takeover or the stale verdict after the failure.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(30);

/// A real etcd, killed when dropped.
struct Etcd {
    child: Child,
    url: String,
    dir: TempDir,
}

fn etcd_binary() -> Res<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "etcd is not installed (Debian package etcd-server): run scripts/setup.sh".into()
        })
}

impl Etcd {
    fn start(base: &Path) -> Res<Self> {
        let bin = etcd_binary()?;
        let dir = TempDir::new(base, "etcd")?;
        let (client, peer) = (free_port()?, free_port()?);
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log_path = dir.join("etcd.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let child = Command::new(&bin)
            .arg("--name")
            .arg("ftvm-bench")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .arg("--initial-cluster")
            .arg(format!("ftvm-bench={peer_url}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let e = Self { child, url, dir };
        let t0 = Instant::now();
        let health = EtcdClient::new(vec![e.url.clone()], Duration::from_secs(2));
        while !health.healthy() {
            if t0.elapsed() > Duration::from_secs(30) {
                let log = std::fs::read_to_string(e.dir.join("etcd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(3).collect();
                return Err(format!("etcd did not come up in 30 s; log: {tail:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(e)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _maybe_already_gone = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Failure {
    Kill,
    Stop,
}

impl Failure {
    fn name(self) -> &'static str {
        match self {
            Self::Kill => "SIGKILL",
            Self::Stop => "SIGSTOP (frozen)",
        }
    }
}

/// `--fence` (and `--vm-id`) arguments for one pair.
fn fence_args(mode: &str, ctx: &Ctx, etcd: Option<&Etcd>, tag: &str) -> Res<Vec<String>> {
    Ok(match mode {
        "none" => vec!["--fence".into(), "none".into()],
        "lock" => vec![
            "--fence".into(),
            format!("lock:{}", ctx.tmp.join(&format!("{tag}.lock")).display()),
        ],
        "etcd" => {
            let e = etcd.ok_or("no etcd running")?;
            vec![
                "--fence".into(),
                format!("etcd:{}", e.url),
                "--vm-id".into(),
                format!("bench-{}-{tag}", std::process::id()),
            ]
        }
        other => return Err(format!("unknown fence mode {other}")),
    })
}

fn common_args(port: u16) -> Vec<String> {
    vec![
        "--memory".into(),
        MEMORY.into(),
        "--cpus".into(),
        "1".into(),
        "--serial".into(),
        "stdout".into(),
        "--epoch".into(),
        format!("{EPOCH_MS}ms"),
        "--heartbeat-timeout".into(),
        format!("{HEARTBEAT_MS}ms"),
    ]
    .into_iter()
    .chain(if port == 0 {
        vec![]
    } else {
        vec!["--protect".into(), format!("127.0.0.1:{port}")]
    })
    .collect()
}

/// One trial: a protected pair, the failure one second after "protected", then the
/// backup's verdict.
fn trial(ctx: &Ctx, mode: &str, failure: Failure, etcd: Option<&Etcd>, tag: &str) -> Res<Value> {
    let port = free_port()?;
    let fence = fence_args(mode, ctx, etcd, tag)?;
    let mut bargs = vec![
        "backup".to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
    ];
    bargs.extend(common_args(0));
    bargs.extend(fence.iter().cloned());
    let mut b = Proc::spawn(Spawn {
        ftvm: &ctx.ftvm,
        dir: &ctx.tmp.0,
        name: &format!("{tag}-b"),
        args: bargs,
        pin: None,
    })?;
    let _bapi = b.connect(Duration::from_secs(30))?;
    let mut pargs: Vec<String> = ["run", "--kernel", "@testguest", "--cmdline"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    pargs.push("pages=256 every=20".into());
    pargs.extend(common_args(port));
    pargs.extend(fence);
    let mut p = Proc::spawn(Spawn {
        ftvm: &ctx.ftvm,
        dir: &ctx.tmp.0,
        name: &format!("{tag}-p"),
        args: pargs,
        pin: None,
    })?;
    let mut api = p.connect(Duration::from_secs(30))?;
    p.wait_ready(READY_TIMEOUT)?;
    wait_protected(&mut p, &mut api, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(1000));
    let failed = match failure {
        Failure::Kill => p.kill(),
        Failure::Stop => {
            let pid = libc::pid_t::try_from(p.pid()).map_err(|e| format!("pid: {e}"))?;
            // SAFETY: kill(2) with a pid of our own child (not yet reaped: the Proc owns
            // it) and a valid signal number; no memory is involved.
            let r = unsafe { libc::kill(pid, libc::SIGSTOP) };
            let t = Instant::now();
            if r != 0 {
                return Err(format!(
                    "SIGSTOP to {}: {}",
                    p.name,
                    std::io::Error::last_os_error()
                ));
            }
            t
        }
    };
    // Had the primary already lost its backup before the signal (a spurious heartbeat
    // timeout on a loaded machine)? Then this run measures something else: say so.
    let primary_log = p.stderr_text();
    let lost_before = primary_log
        .lines()
        .find(|l| l.contains("UNPROTECTED") || l.contains("protection ends"))
        .map(str::to_string);
    let deadline = failed + VERDICT_TIMEOUT;
    let verdict = loop {
        let first = lock(&b.lines)
            .iter()
            .find(|(t, _)| *t >= failed)
            .map(|(t, l)| (*t, l.clone()));
        if let Some((t, line)) = first {
            break json!({
                "outcome": "takeover",
                "ms": (t - failed).as_secs_f64() * 1000.0,
                "first_line": line,
            });
        }
        let err = b.stderr_text();
        if let Some(l) = err.lines().find(|l| l.contains("STALE:")) {
            let ms = (Instant::now() - failed).as_secs_f64() * 1000.0;
            // Give it a moment to exit with its code.
            let until = Instant::now() + Duration::from_secs(5);
            let mut exit = b.exited();
            while exit.is_none() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
                exit = b.exited();
            }
            break json!({
                "outcome": "stale",
                "ms": ms,
                "stale_log": l,
                "backup_exit": exit,
            });
        }
        if b.exited().is_some() {
            return Err(b.failure("ended after the failure without taking over or going stale"));
        }
        if Instant::now() > deadline {
            return Err(b.failure(&format!(
                "no takeover and no STALE within {VERDICT_TIMEOUT:?} of the {}",
                failure.name()
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut takeover_log = String::new();
    if verdict["outcome"] == "takeover" {
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if let Some(l) = b.stderr_text().lines().find(|l| l.contains("TAKEOVER")) {
                takeover_log = l.to_string();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let mut v = verdict;
    let blog = b.stderr_text();
    v["backup_fence_waits"] = json!(blog
        .lines()
        .filter(|l| l.contains("not free yet"))
        .collect::<Vec<_>>());
    v["primary_lost_backup_before_failure"] = json!(lost_before);
    v["takeover_log"] = json!(takeover_log);
    v["detect_to_resume_ms"] = json!(parse_resume_ms(&takeover_log));
    Ok(v)
    // Dropping `p` SIGKILLs the primary (stopped or not) and `b` the backup.
}

/// The group.
pub fn fencing(ctx: &Ctx) -> Res<Table> {
    let n = ctx.pick(3, 5);
    let mut t = Table::new(&[
        "fence",
        "failure",
        "runs",
        "outcome",
        "failure to first backup line p50 (ms)",
        "max (ms)",
        "detection to resume p50 / max (ms, backup's log)",
        "all runs (ms)",
    ]);
    let etcd = match Etcd::start(&ctx.tmp.0) {
        Ok(e) => Some(e),
        Err(e) => {
            t.fail("starting etcd", e);
            None
        }
    };
    let mut data = Vec::new();
    for mode in ["none", "lock", "etcd"] {
        if mode == "etcd" && etcd.is_none() {
            continue;
        }
        for failure in [Failure::Kill, Failure::Stop] {
            let mut runs = Vec::new();
            for i in 0..n {
                let tag = format!(
                    "fen-{mode}-{}-{i}",
                    if failure == Failure::Kill {
                        "kill"
                    } else {
                        "stop"
                    }
                );
                eprintln!("ftvm-bench: fencing {mode} {} run {i}", failure.name());
                match trial(ctx, mode, failure, etcd.as_ref(), &tag) {
                    Ok(v) => {
                        if let Some(l) = v["primary_lost_backup_before_failure"].as_str() {
                            t.fail(
                                &format!("{mode} {} run {i}", failure.name()),
                                format!("the primary lost its backup before the signal: {l}"),
                            );
                        }
                        runs.push(v)
                    }
                    Err(e) => t.fail(&format!("{mode} {} run {i}", failure.name()), e),
                }
            }
            let by = |o: &str| -> Vec<f64> {
                runs.iter()
                    .filter(|v| v["outcome"] == o)
                    .filter_map(|v| v["ms"].as_f64())
                    .collect()
            };
            let (taken, stale) = (by("takeover"), by("stale"));
            let resume: Vec<f64> = runs
                .iter()
                .filter_map(|v| v["detect_to_resume_ms"].as_f64())
                .collect();
            let outcome = match (taken.len(), stale.len()) {
                (a, 0) if a > 0 => "takeover".to_string(),
                (0, s) if s > 0 => format!(
                    "**stale** ({}), no takeover; STALE after p50 {} ms, max {} ms",
                    runs.iter()
                        .find_map(|v| v["backup_exit"].as_str())
                        .unwrap_or("exit status unknown"),
                    fmt_opt(median(&stale)),
                    fmt_opt(pct(&stale, 100.0))
                ),
                (a, s) => format!("mixed: {a} takeover, {s} stale"),
            };
            let all: Vec<String> = runs
                .iter()
                .filter_map(|v| v["ms"].as_f64())
                .map(|x| format!("{x:.0}"))
                .collect();
            let (p50, max) = if taken.is_empty() {
                ("-".to_string(), "-".to_string())
            } else {
                (fmt_opt(median(&taken)), fmt_opt(pct(&taken, 100.0)))
            };
            t.row(vec![
                format!("`{mode}`"),
                failure.name().into(),
                runs.len().to_string(),
                outcome,
                p50,
                max,
                if resume.is_empty() {
                    "-".into()
                } else {
                    format!(
                        "{} / {}",
                        fmt_opt(median(&resume)),
                        fmt_opt(pct(&resume, 100.0))
                    )
                },
                all.join(", "),
            ]);
            data.push(json!({
                "fence": mode,
                "failure": failure.name(),
                "runs": runs,
            }));
        }
    }
    t.notes.push(format!(
        "Test guest pages=256 every=20, {MEMORY} RAM, 1 vCPU, {EPOCH_MS} ms epochs, \
         --heartbeat-timeout {HEARTBEAT_MS}ms on both sides, backup on loopback on the same \
         machine; the failure one second after the primary reports `protected`. The time is \
         from the signal to the harness reading the backup's first guest line on its stdout \
         (the output it releases at the takeover). etcd: Debian's etcd, one member on \
         loopback, lease TTL 2 s (ftvm's minimum). A frozen primary with `lock:` keeps its \
         lock: the backup goes stale (the time is then to its STALE line); with `none` the \
         backup takes over while the frozen primary would run on when woken (no fence)."
    ));
    t.data = json!(data);
    Ok(t)
}
