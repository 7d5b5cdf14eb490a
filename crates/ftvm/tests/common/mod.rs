//! Shared helpers for ftvm's end-to-end tests: real ftvm processes on real KVM.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod console;
pub mod netns;
pub mod pair;
pub mod proxy;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use console::{complete_lines, last_seq, read_console};
#[allow(unused_imports)]
pub use pair::{
    fenced_args, fenced_primary_args, spawn_fenced_backup, vm_id, wait_protected, Unprotected,
};
#[allow(unused_imports)]
pub use proxy::{cutting_proxy, cutting_proxy_or_on_demand};

use ftvm_testguest::params::GuestParams;
use ftvm_testguest::reference::{parse_seq_line, Reference};
use std::collections::HashMap;

/// The ftvm binary under test.
pub fn ftvm() -> &'static str {
    env!("CARGO_BIN_EXE_ftvm")
}

/// True when /dev/kvm is usable; otherwise prints a loud skip message.
pub fn kvm_or_skip(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!(
                "\n*** SKIPPED {test}: /dev/kvm is not usable ({e}); this test needs real KVM ***\n"
            );
            false
        }
    }
}

/// A fresh temporary directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ftvm-test-")
        .tempdir()
        .unwrap()
}

/// A running ftvm process whose stdout lines and stderr are collected.
pub struct VmProc {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl VmProc {
    /// Start `ftvm ARGS...`.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Self {
        let mut cmd = Command::new(ftvm());
        cmd.args(args);
        Self::spawn_command(cmd)
    }

    /// The stdout lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// How many stdout lines so far.
    pub fn line_count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait until a stdout line satisfies `pred`; panics with the output on timeout.
    pub fn wait_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                return l.clone();
            }
            if t0.elapsed() > timeout || self.exited() {
                std::thread::sleep(Duration::from_millis(100));
                if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                    return l.clone();
                }
                panic!(
                    "gave up after {:?} (exited: {}) waiting for a line; last lines: {:?}; stderr: {}",
                    t0.elapsed(),
                    self.exited(),
                    self.lines().iter().rev().take(5).collect::<Vec<_>>(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// True once the process has exited (it is a zombie until reaped).
    pub fn exited(&self) -> bool {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        stat.is_empty()
            || stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    }

    /// Wait until at least `n` stdout lines arrived.
    pub fn wait_lines(&self, n: usize, timeout: Duration) {
        let t0 = Instant::now();
        while self.line_count() < n {
            if self.exited() {
                std::thread::sleep(Duration::from_millis(100));
                assert!(
                    self.line_count() >= n,
                    "ftvm exited after {} of {n} lines; last lines {:?}; stderr: {}",
                    self.line_count(),
                    self.lines().iter().rev().take(5).collect::<Vec<_>>(),
                    self.stderr()
                );
                return;
            }
            assert!(
                t0.elapsed() < timeout,
                "timed out waiting for {n} lines (have {}); stderr: {}",
                self.line_count(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the reader threads drain.
                std::thread::sleep(Duration::from_millis(50));
                return st;
            }
            if t0.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "ftvm did not exit within {timeout:?}; last lines {:?}; stderr: {}",
                    self.lines().iter().rev().take(5).collect::<Vec<_>>(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL the process and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Send a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// SIGSTOP the process and wait until every one of its threads is stopped (the signal
    /// is asynchronous: a thread may still write for a moment after `kill` returns).
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        let tasks = format!("/proc/{}/task", self.child.id());
        let t0 = std::time::Instant::now();
        loop {
            let all_stopped = std::fs::read_dir(&tasks).unwrap().all(|t| {
                let stat =
                    std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
                // The state follows the command name in parentheses: `pid (comm) S ...`.
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
            });
            if all_stopped {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the process never stopped"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for VmProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `ftvm ARGS` to completion: (exit status, stdout, stderr).
pub fn run_ftvm<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (ExitStatus, String, String) {
    let out = Command::new(ftvm())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ftvm");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The expected `seq=` lines up to seq `max` for `cmdline` on `cpus` vCPUs, by seq.
pub fn expected_lines(cmdline: &str, cpus: u32, max: u64) -> HashMap<u64, String> {
    let params = GuestParams::from_cmdline(cmdline).expect("params");
    let mut r = Reference::new(&params, cpus).expect("reference");
    let mut v = HashMap::new();
    while let Some(line) = r.next_line() {
        let (n, _) = parse_seq_line(&line).expect("reference line parses");
        v.insert(n, line);
        if n >= max {
            break;
        }
    }
    v
}

/// Parse `seq=N sum=H` into N.
pub fn seq_of(line: &str) -> Option<u64> {
    line.strip_prefix("seq=")?.split(' ').next()?.parse().ok()
}

/// Check every `seq=` line of `lines` against the reference; returns (checked, max seq).
/// Panics naming the first wrong line.
pub fn check_against_reference(lines: &[String], cmdline: &str, cpus: u32) -> (usize, u64) {
    let seqs: Vec<(u64, &String)> = lines
        .iter()
        .filter_map(|l| seq_of(l).map(|s| (s, l)))
        .collect();
    let max = seqs.iter().map(|(s, _)| *s).max().unwrap_or(0);
    let expected = expected_lines(cmdline, cpus, max);
    for (s, l) in &seqs {
        let want = expected.get(s).expect("reference has this seq");
        assert_eq!(*l, want, "line with seq={s} is wrong");
    }
    (seqs.len(), max)
}

/// Assert the seq numbers of `lines` are exactly 1, 2, 3, ... with no gap or repeat.
pub fn assert_contiguous(lines: &[String]) {
    let seqs: Vec<u64> = lines.iter().filter_map(|l| seq_of(l)).collect();
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(
            *s,
            i as u64 + 1,
            "seq out of order at line index {i}: {seqs:?}"
        );
    }
}

/// A path for an API socket inside `dir`.
pub fn sock(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// `ftvm ctl --api-socket S ARGS... --json` parsed.
pub fn ctl_json(sock: &Path, args: &[&str]) -> serde_json::Value {
    let mut a: Vec<String> = vec![
        "ctl".into(),
        "--api-socket".into(),
        sock.display().to_string(),
    ];
    a.extend(args.iter().map(|s| s.to_string()));
    a.push("--json".into());
    let (st, out, err) = run_ftvm(&a);
    assert!(st.success(), "ftvm ctl {args:?} failed: {err}");
    serde_json::from_str(out.trim()).expect("ctl json")
}

/// Wait until the API socket exists.
pub fn wait_socket(path: &Path, timeout: Duration) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(
            t0.elapsed() < timeout,
            "API socket {} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl VmProc {
    /// Start ftvm through another program (e.g. `ip netns exec NS` + the ftvm binary):
    /// `cmd` is complete; its stdout lines and stderr are collected like [`VmProc::spawn`].
    pub fn spawn_command(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ftvm");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                match line {
                    Ok(line) => l.lock().unwrap().push(line),
                    Err(_) => break,
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let e = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                e.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child,
            lines,
            stderr,
        }
    }
}

/// A TCP port free on loopback now (also inside a fresh network namespace's loopback).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` every 20 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, f: impl FnMut() -> bool) {
    wait_until_every(timeout, Duration::from_millis(20), what, f)
}

/// Poll `f` every `every` until it holds; panics naming `what` after `timeout`.
pub fn wait_until_every(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut f: impl FnMut() -> bool,
) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(every);
    }
}

/// `file:DIR/NAME`, for `--serial`.
pub fn serial_file(dir: &Path, name: &str) -> String {
    format!("file:{}", dir.join(name).display())
}

/// Start `ftvm backup --listen ADDR ARGS...` (through `spawn`, e.g. inside a network
/// namespace) and wait until it listens.
pub fn start_backup(
    spawn: impl FnOnce(&[&str]) -> VmProc,
    addr: &str,
    args: &[&str],
    timeout: Duration,
) -> VmProc {
    let mut all = vec!["backup", "--listen", addr];
    all.extend_from_slice(args);
    let backup = spawn(&all);
    wait_until(timeout, "the backup to listen", || {
        assert!(!backup.exited(), "backup exited: {}", backup.stderr());
        backup.stderr().contains("waiting for a primary")
    });
    backup
}
