//! Helpers: statistics, temp dirs, free ports, the machine, child processes, the API socket.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Every failure in the harness is a message; groups print it and go on.
pub type Res<T> = Result<T, String>;

/// Lock a mutex, ignoring poisoning (a reader thread that panicked left plain data).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Nearest-rank percentile (0-100) of `v`; `None` when empty.
pub fn pct(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s.get(rank.clamp(1, s.len()) - 1).copied()
}

/// Median (nearest rank).
pub fn median(v: &[f64]) -> Option<f64> {
    pct(v, 50.0)
}

/// A number for a table: thousands separators for large values, a few digits for small.
pub fn fmt(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        let s = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        if v < 0.0 {
            format!("-{out}")
        } else {
            out
        }
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `fmt` of an optional value, `-` when missing.
pub fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), fmt)
}

/// The 1/5/15-minute load averages.
pub fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}

/// A loopback port that was free a moment ago (bind port 0, read it, close).
pub fn free_port() -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding port 0: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("reading the bound port: {e}"))
}

/// A directory removed (with its contents) when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory under `base`.
    pub fn new(base: &Path, prefix: &str) -> Res<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = base.join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(|e| format!("creating {}: {e}", p.display()))?;
        Ok(Self(p))
    }

    /// A path inside.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _best_effort_cleanup = std::fs::remove_dir_all(&self.0);
    }
}

/// utime + stime of a process, in seconds (from /proc/PID/stat; all its threads).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / 100.0) // USER_HZ is 100 on Linux/x86-64
}

/// A line the child printed on stdout, with when the harness read it.
pub type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

/// An ftvm child process; killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    child: Child,
    /// Its API socket.
    pub api: PathBuf,
    /// Its stderr file.
    pub stderr: PathBuf,
    /// Its stdout lines (when stdout was captured).
    pub lines: Lines,
    /// When it was spawned.
    pub spawned: Instant,
}

/// How to start an ftvm process.
#[derive(Debug, Clone)]
pub struct Spawn<'a> {
    pub ftvm: &'a Path,
    pub dir: &'a Path,
    pub name: &'a str,
    pub args: Vec<String>,
    /// `taskset -c CPU` in front.
    pub pin: Option<u32>,
}

impl Proc {
    /// Start it. `--api-socket` is added (in `dir`); stdout is read line by line.
    pub fn spawn(s: Spawn<'_>) -> Res<Self> {
        let api = s.dir.join(format!("{}.sock", s.name));
        let stderr = s.dir.join(format!("{}.err", s.name));
        let _stale = std::fs::remove_file(&api);
        let err_file =
            File::create(&stderr).map_err(|e| format!("creating {}: {e}", stderr.display()))?;
        let mut cmd = match s.pin {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(s.ftvm);
                c
            }
            None => Command::new(s.ftvm),
        };
        cmd.args(&s.args)
            .arg("--api-socket")
            .arg(&api)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err_file));
        // Each ftvm process in its own session, so its own scheduling group: with the
        // kernel's autogroup scheduling, processes of one session share one CPU share, and
        // a backup (another host in production) would otherwise take the primary's.
        // SAFETY: the closure runs in the forked child before exec and only calls
        // setsid(2), which is async-signal-safe; a failure (already a group leader) only
        // leaves the child in the harness's session.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let spawned = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {} ({}): {e}", s.name, s.ftvm.display()))?;
        let lines: Lines = Arc::default();
        if let Some(out) = child.stdout.take() {
            let l = lines.clone();
            let spawned_reader = std::thread::Builder::new()
                .name(format!("{}-stdout", s.name))
                .spawn(move || {
                    for line in BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        lock(&l).push((Instant::now(), line));
                    }
                });
            if let Err(e) = spawned_reader {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("starting a reader thread: {e}"));
            }
        }
        Ok(Self {
            name: s.name.to_string(),
            child,
            api,
            stderr,
            lines,
            spawned,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Exit status if it already ended.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Some(st.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("cannot wait: {e}")),
        }
    }

    /// An error message with the tail of its stderr.
    pub fn failure(&mut self, what: &str) -> String {
        let st = self
            .exited()
            .map_or_else(String::new, |s| format!(" (process ended: {s})"));
        let err = self.stderr_text();
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{}: {what}{st}; stderr: {}", self.name, tail.join(" | "))
    }

    /// Wait for a stdout line matching `pred`; returns when it was read.
    pub fn wait_line(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Res<Instant> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            {
                let l = lock(&self.lines);
                if let Some((t, _)) = l[seen..].iter().find(|(_, s)| pred(s)) {
                    return Ok(*t);
                }
                seen = l.len();
            }
            if self.exited().is_some() {
                return Err(self.failure("ended before the expected line"));
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!("no expected line within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Wait for `ftvm-testguest ready`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Res<Instant> {
        self.wait_line(|s| s.trim() == "ftvm-testguest ready", timeout)
    }

    /// Connect to its API socket (waiting for it to appear).
    pub fn connect(&mut self, timeout: Duration) -> Res<Api> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = UnixStream::connect(&self.api) {
                return Api::new(s, self.name.clone());
            }
            if self.exited().is_some() {
                return Err(self.failure("ended before its API socket worked"));
            }
            if Instant::now() >= deadline {
                return Err(self.failure("API socket did not appear"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Send SIGKILL now; returns when the signal was sent.
    pub fn kill(&mut self) -> Instant {
        let _maybe_already_gone = self.child.kill();
        let t = Instant::now();
        let _ = self.child.wait();
        t
    }

    /// `seq=` lines read in `[t0, t1]`: (when, seq).
    pub fn seq_lines(&self, t0: Instant, t1: Instant) -> Vec<(Instant, u64)> {
        lock(&self.lines)
            .iter()
            .filter(|(t, _)| *t >= t0 && *t <= t1)
            .filter_map(|(t, s)| parse_seq(s).map(|n| (*t, n)))
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _maybe_already_gone = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `N` of a `seq=N sum=...` line.
pub fn parse_seq(s: &str) -> Option<u64> {
    s.strip_prefix("seq=")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A connection to an ftvm API socket: one JSON object per line each way.
#[derive(Debug)]
pub struct Api {
    r: BufReader<UnixStream>,
    w: UnixStream,
    name: String,
}

impl Api {
    fn new(s: UnixStream, name: String) -> Res<Self> {
        s.set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(|e| format!("{name}: socket timeout: {e}"))?;
        let w = s
            .try_clone()
            .map_err(|e| format!("{name}: cloning the socket: {e}"))?;
        Ok(Self {
            r: BufReader::new(s),
            w,
            name,
        })
    }

    /// Send `req` and return the final answer (progress lines skipped); `ok: false` is an
    /// error.
    pub fn req(&mut self, req: &Value) -> Res<Value> {
        let mut line = req.to_string();
        line.push('\n');
        self.w
            .write_all(line.as_bytes())
            .map_err(|e| format!("{}: sending {req}: {e}", self.name))?;
        loop {
            let mut buf = String::new();
            let n = self
                .r
                .read_line(&mut buf)
                .map_err(|e| format!("{}: reading the answer to {req}: {e}", self.name))?;
            if n == 0 {
                return Err(format!("{}: connection closed after {req}", self.name));
            }
            let v: Value = serde_json::from_str(&buf)
                .map_err(|e| format!("{}: bad answer {buf:?}: {e}", self.name))?;
            if v.get("progress").is_some() {
                continue;
            }
            if v.get("ok").and_then(Value::as_bool) == Some(true) {
                return Ok(v);
            }
            let why = v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            return Err(format!("{}: {req} refused: {why}", self.name));
        }
    }

    /// `{"cmd": cmd}`.
    pub fn cmd(&mut self, cmd: &str) -> Res<Value> {
        self.req(&json!({ "cmd": cmd }))
    }
}

/// A number at `path` (e.g. `["replication", "pause_us_p50"]`) of a JSON value.
pub fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for k in path {
        cur = cur.get(k)?;
    }
    cur.as_f64()
}
