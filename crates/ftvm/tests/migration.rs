//! Issue 3: live migration, end to end on real KVM with the test guest: real `ftvm run`
//! and `ftvm receive` processes over loopback TCP, plus peers crafted in the test (with
//! `ftvm-wire`) that misbehave in every way we could think of.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use ftvm_testguest::params::GuestParams;
use ftvm_testguest::reference::{check_output, OutputCheck};
use ftvm_wire::{
    ErrorCode, Hello, HelloAck, Kind, Message, MessageReader, MessageWriter, Nonce, Role, VmShape,
    PROTOCOL_VERSION,
};

/// Upper bound for any single wait; the tests normally take a few seconds each.
const T: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/// An ftvm process whose stdout is kept byte for byte (a migration may split a console
/// line between the source and the target, so lines are not enough) and whose stderr is
/// collected.
struct Proc {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Self {
        let mut child = Command::new(ftvm())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ftvm");
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let mut so = child.stdout.take().unwrap();
        let o = out.clone();
        let r1 = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = so.read(&mut buf) {
                if n == 0 {
                    break;
                }
                o.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut se = child.stderr.take().unwrap();
        let e = err.clone();
        let r2 = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = se.read(&mut buf) {
                if n == 0 {
                    break;
                }
                e.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            child,
            out,
            err,
            readers: vec![r1, r2],
        }
    }

    /// Everything the process wrote to stdout (the guest console) so far.
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn err(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Highest seq among the complete `seq=` lines so far (0 if none).
    fn max_seq(&self) -> u64 {
        let out = self.out();
        let complete = out.rfind('\n').map_or("", |i| &out[..i]);
        complete.lines().filter_map(seq_of).max().unwrap_or(0)
    }

    fn status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Wait until a complete line with seq >= `n`; panics (with the output) if the process
    /// exits first or on timeout.
    fn wait_seq(&mut self, n: u64, timeout: Duration) {
        let t0 = Instant::now();
        while self.max_seq() < n {
            if let Some(st) = self.status() {
                self.drain();
                assert!(
                    self.max_seq() >= n,
                    "ftvm exited ({st}) before seq={n}; output tail {:?}; stderr: {}",
                    tail(&self.out(), 200),
                    self.err()
                );
                return;
            }
            assert!(
                t0.elapsed() < timeout,
                "timed out after {timeout:?} waiting for seq={n} (have {}); stderr: {}",
                self.max_seq(),
                self.err()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until stderr contains `needle`.
    fn wait_stderr(&mut self, needle: &str, timeout: Duration) {
        let t0 = Instant::now();
        while !self.err().contains(needle) {
            if self.status().is_some() {
                self.drain();
                assert!(
                    self.err().contains(needle),
                    "ftvm exited without printing '{needle}'; stderr: {}",
                    self.err()
                );
                return;
            }
            assert!(
                t0.elapsed() < timeout,
                "timed out waiting for '{needle}' on stderr: {}",
                self.err()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait for the process to exit and for its output to be read to the end.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.status() {
                self.drain();
                return st;
            }
            if t0.elapsed() > timeout {
                let stacks = thread_stacks(self.child.id());
                let _ = self.child.kill();
                panic!(
                    "ftvm did not exit within {timeout:?}; output tail {:?}; stderr: {}\nits threads:\n{stacks}",
                    tail(&self.out(), 200),
                    self.err()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// After exit: let the reader threads reach end of file.
    fn drain(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// A loopback port nobody listens on right now.
/// `ftvm run` of the test guest with an API socket in `dir`, once it printed `lines` lines.
/// Where each thread of process `pid` is (gdb's backtraces when gdb is installed, else
/// each thread's name and kernel wait channel): what a hung process was waiting for.
fn thread_stacks(pid: u32) -> String {
    let gdb = Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt 30",
        ])
        .stdin(Stdio::null())
        .output();
    if let Ok(o) = gdb {
        if o.status.success() {
            return String::from_utf8_lossy(&o.stdout).into_owned();
        }
    }
    let mut out = String::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
            out.push_str(&format!(
                "{} {} wchan={}\n",
                t.file_name().to_string_lossy(),
                read("comm").trim(),
                read("wchan").trim()
            ));
        }
    }
    out
}

fn start_source(dir: &Path, name: &str, cmdline: &str, memory: &str, cpus: u32) -> (Proc, PathBuf) {
    start_source_with(dir, name, cmdline, memory, cpus, &[])
}

/// [`start_source`] with more options.
fn start_source_with(
    dir: &Path,
    name: &str,
    cmdline: &str,
    memory: &str,
    cpus: u32,
    extra: &[&str],
) -> (Proc, PathBuf) {
    let s = sock(dir, &format!("{name}.sock"));
    let cpus_s = cpus.to_string();
    let mut args = vec![
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        memory,
        "--cpus",
        &cpus_s,
        "--cmdline",
        cmdline,
        "--api-socket",
        s.to_str().unwrap(),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let mut p = Proc::spawn(&args);
    p.wait_seq(5, T);
    wait_socket(&s, T);
    (p, s)
}

/// `ftvm receive` on a fresh loopback port, once it is listening. Returns it and its address.
fn start_target(memory: &str, cpus: u32, api_socket: Option<&Path>) -> (Proc, String) {
    start_target_with(memory, cpus, api_socket, &[])
}

/// [`start_target`] with more options.
fn start_target_with(
    memory: &str,
    cpus: u32,
    api_socket: Option<&Path>,
    extra: &[&str],
) -> (Proc, String) {
    let cpus_s = cpus.to_string();
    for _ in 0..5 {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = vec![
            "receive".into(),
            "--listen".into(),
            addr.clone(),
            "--memory".into(),
            memory.into(),
            "--cpus".into(),
            cpus_s.clone(),
        ];
        if let Some(s) = api_socket {
            args.push("--api-socket".into());
            args.push(s.display().to_string());
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        // Not --quiet: "waiting for a migration on ..." says the port is bound.
        let mut p = Proc::spawn(&args);
        let t0 = Instant::now();
        loop {
            if p.err().contains("waiting for a migration") {
                return (p, addr);
            }
            if let Some(st) = p.status() {
                p.drain();
                assert!(
                    p.err().contains("in use"),
                    "ftvm receive exited ({st}) before listening: {}",
                    p.err()
                );
                break; // someone took the port in between: try another one
            }
            assert!(t0.elapsed() < T, "ftvm receive never listened: {}", p.err());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    panic!("could not find a free port for ftvm receive");
}

/// `ftvm ctl --api-socket S migrate --to ADDR [EXTRA...] --json`: (status, stdout, stderr).
fn migrate(sock: &Path, to: &str, extra: &[&str]) -> (ExitStatus, String, String) {
    let mut a = vec![
        "ctl",
        "--api-socket",
        sock.to_str().unwrap(),
        "migrate",
        "--to",
        to,
    ];
    a.extend_from_slice(extra);
    a.push("--json");
    run_ftvm(&a)
}

/// What `ftvm ctl` says when the source process exits before its API answered.
const LOST_ANSWER: &str = "the VMM closed the connection without answering";

/// A migration that must succeed, with its answer (always `Some`; the answer must reach
/// the client, see `migrate_answer_reaches_the_client_every_time`).
fn migrate_done(sock: &Path, to: &str, extra: &[&str]) -> Option<serde_json::Value> {
    let (st, out, err) = migrate(sock, to, extra);
    assert!(
        !err.contains(LOST_ANSWER),
        "ftvm ctl migrate lost the answer (the source exited first): {err}"
    );
    assert!(
        st.success(),
        "ftvm ctl migrate --to {to} failed ({st}): stdout {out:?}, stderr {err:?}"
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("migrate --json answer");
    assert_eq!(v["ok"], true, "{v}");
    Some(v)
}

/// A migration that must fail: the error text ctl printed (one line, no panic).
fn migrate_fails(sock: &Path, to: &str) -> String {
    let (st, out, err) = migrate(sock, to, &[]);
    assert!(
        !st.success(),
        "migrate to {to} should fail; stdout {out:?} stderr {err:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let err = err.trim().to_string();
    assert!(!err.is_empty(), "no error message; stdout {out:?}");
    eprintln!("migrate to {to} failed as it should: {err}");
    assert_eq!(err.lines().count(), 1, "not a one-line error: {err:?}");
    assert!(
        err.contains("keeps running here") || err.contains("stays PAUSED here"),
        "the error should say where the VM is: {err}"
    );
    err
}

/// Check a guest console against the reference: every complete line after the ready line
/// is the next expected seq line.
fn check(console: &str, cmdline: &str, cpus: u32) -> OutputCheck {
    let params = GuestParams::from_cmdline(cmdline).unwrap();
    match check_output(&params, cpus, console) {
        Ok(c) => c,
        Err(e) => panic!(
            "console differs from the reference: {e}\n--- console tail ---\n{}",
            tail(console, 600)
        ),
    }
}

/// The source VM still runs after a failed migration: it prints at least `more` further
/// lines, all correct, and the process is alive.
fn assert_keeps_running(src: &mut Proc, cmdline: &str, cpus: u32, more: u64) {
    assert!(
        src.status().is_none(),
        "the source process ended: {}",
        src.err()
    );
    let now = src.max_seq();
    src.wait_seq(now + more, T);
    let c = check(&src.out(), cmdline, cpus);
    assert!(c.last_seq >= now + more);
    assert!(src.status().is_none(), "source ended: {}", src.err());
}

/// A target process must have refused: exited non-zero with one clear `ftvm: error:` line
/// containing one of `needles`, and never started the VM (nothing on its console).
fn assert_target_refused(tgt: &mut Proc, needles: &[&str]) -> String {
    let st = tgt.wait(T);
    let err = tgt.err();
    assert!(!st.success(), "target should fail; stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !err.contains("starting the VM"),
        "target started the VM: {err}"
    );
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("ftvm: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line: {err}");
    let other: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("ftvm: error:") && !l.starts_with("ftvm: waiting"))
        .collect();
    assert!(other.is_empty(), "unexpected stderr lines {other:?}");
    assert!(
        needles.iter().any(|n| errors[0].contains(n)),
        "target error should mention one of {needles:?}: {}",
        errors[0]
    );
    eprintln!("target refused: {}", errors[0]);
    let out = tgt.out();
    assert!(
        out.is_empty(),
        "target's console must stay silent, got {:?}",
        tail(&out, 200)
    );
    errors[0].to_string()
}

// ---------------------------------------------------------------------------------------
// 1 + 2: migrations that succeed
// ---------------------------------------------------------------------------------------

/// Migrate a running guest; check the joined console of source and target, and that the
/// target goes on for `more` lines. Returns the `--json` answer.
fn migrate_and_continue(
    cmdline: &str,
    memory: &str,
    cpus: u32,
    more: u64,
    extra: &[&str],
) -> Option<serde_json::Value> {
    let dir = tempdir();
    let (mut src, s) = start_source(dir.path(), "src", cmdline, memory, cpus);
    src.wait_seq(30, T);
    let tsock = sock(dir.path(), "tgt.sock");
    let (mut tgt, addr) = start_target(memory, cpus, Some(&tsock));
    let answer = migrate_done(&s, &addr, extra);

    // The source is done: exits 0, and its console ends where the target's begins.
    let st = src.wait(T);
    assert!(st.success(), "source exited with {st}: {}", src.err());
    assert!(
        src.err().trim().is_empty(),
        "quiet source printed on stderr: {}",
        src.err()
    );
    let src_out = src.out();
    let src_seq = check(&src_out, cmdline, cpus).last_seq;
    assert!(src_seq >= 30);

    tgt.wait_stderr("starting the VM", T);
    tgt.wait_seq(src_seq + 1 + more, T);
    let tgt_out = tgt.out();
    assert!(
        !tgt_out.contains("ftvm-testguest ready"),
        "the target booted the guest anew instead of continuing it"
    );
    // The union has no gap, no repeat and no wrong line; the line the migration may have
    // split is checked whole.
    let joined = format!("{src_out}{tgt_out}");
    let c = check(&joined, cmdline, cpus);
    assert!(
        c.last_seq > src_seq + more,
        "target printed up to seq={} after the source's seq={src_seq}",
        c.last_seq
    );
    // Nothing more came from the source after the migration.
    assert_eq!(src.out(), src_out);
    // The target's API answers, and it runs.
    let status = ctl_json(&tsock, &["status"]);
    assert_eq!(status["ok"], true, "{status}");
    assert!(tgt.status().is_none(), "target ended: {}", tgt.err());
    eprintln!(
        "migrated at seq={src_seq}: {answer:?}; target continued to seq={}",
        c.last_seq
    );
    answer
}

/// After the refused attempts: the source (one vCPU, 128M, API socket `s`) migrates to a
/// matching target, exits 0, and the target continues its console exactly for 50 lines.
fn migrates_exactly_at_last(mut src: Proc, s: &Path, cmdline: &str) {
    let (mut tgt, addr) = start_target("128M", 1, None);
    let t0 = Instant::now();
    let a = migrate_done(s, &addr, &[]);
    eprintln!("final migration: {a:?} in {:?}", t0.elapsed());
    assert!(src.wait(T).success(), "{}", src.err());
    let src_out = src.out();
    let src_seq = check(&src_out, cmdline, 1).last_seq;
    tgt.wait_seq(src_seq + 50, T);
    check(&format!("{src_out}{}", tgt.out()), cmdline, 1);
}

#[test]
fn live_migration_under_fast_dirtying_continues_exactly() {
    if !kvm_or_skip("live_migration_under_fast_dirtying_continues_exactly") {
        return;
    }
    // 4096 random pages of a 64 MiB working set per iteration: the guest redirties most
    // of its working set in every pre-copy round.
    migrate_and_continue("pages=4096 every=1", "256M", 1, 300, &[]);
}

#[test]
fn live_migration_with_two_vcpus_continues_exactly() {
    if !kvm_or_skip("live_migration_with_two_vcpus_continues_exactly") {
        return;
    }
    migrate_and_continue("pages=4096 every=1", "256M", 2, 300, &[]);
}

#[test]
fn a_large_final_epoch_framed_from_paused_memory_continues_exactly() {
    if !kvm_or_skip("a_large_final_epoch_framed_from_paused_memory_continues_exactly") {
        return;
    }
    // A downtime target of 5 s lets the source pause right after the full copy: the
    // final epoch then holds thousands of pages in many runs, framed straight from the
    // paused guest's memory. full=25 reads the whole working set every 25 iterations, so
    // a page framed from the wrong place (or half-written) shows in the guest's sums.
    let cmdline = "pages=4096 every=1 full=25";
    let a = (0..3)
        .find_map(|_| migrate_and_continue(cmdline, "128M", 1, 200, &["--downtime-ms", "5000"]))
        .expect("three migrations in a row lost their answer");
    let final_pages = a["final_pages"].as_u64().expect("final_pages");
    assert_eq!(
        a["rounds"].as_u64(),
        Some(0),
        "expected no pre-copy round: {a}"
    );
    assert!(
        final_pages >= 1000,
        "only {final_pages} pages in the final epoch: the test did not exercise a large one: {a}"
    );
}

#[test]
fn migration_reports_downtime_and_stats() {
    if !kvm_or_skip("migration_reports_downtime_and_stats") {
        return;
    }
    // full=25: every 25th iteration reads the whole 64 MiB working set, so a page the
    // migration failed to bring over shows in the sums.
    let cmdline = "pages=256 full=25";
    // The answer is what this test is about: if the known lost-answer bug strikes (see
    // migrate_answer_reaches_the_client_every_time), migrate again.
    let a = (0..3)
        .find_map(|_| migrate_and_continue(cmdline, "128M", 1, 100, &["--downtime-ms", "30"]))
        .expect("three migrations in a row lost their answer");
    let rounds = a["rounds"].as_u64().expect("rounds");
    let downtime = a["downtime_ms"].as_f64().expect("downtime_ms");
    let total = a["total_ms"].as_u64().expect("total_ms");
    let bytes = a["bytes"].as_u64().expect("bytes");
    let final_pages = a["final_pages"].as_u64().expect("final_pages");
    assert!(rounds <= 30, "more pre-copy rounds than the limit: {a}");
    assert!(downtime > 0.0, "{a}");
    // 30 ms asked for; a loaded 2-core test machine may overshoot, but not by seconds.
    assert!(downtime < 2000.0, "downtime of {downtime} ms: {a}");
    assert!(total as f64 + 1.0 >= downtime, "{a}");
    // At least the guest's working set (64 MiB, written at boot) went over the wire.
    assert!(bytes >= 64 << 20, "only {bytes} bytes sent: {a}");
    assert!(
        bytes < 1 << 30,
        "{bytes} bytes sent for a 128 MiB guest: {a}"
    );
    // The final, paused epoch carries what was dirtied since the last round.
    assert!(final_pages <= (128 << 20) / 4096, "{a}");
}

// ---------------------------------------------------------------------------------------
// 3: bad peers
// ---------------------------------------------------------------------------------------

/// The Hello a real source sends: lets the test speak as a source with the right shape
/// (the device fingerprint is the VMM's business).
fn read_hello(stream: TcpStream) -> Hello {
    let mut r = MessageReader::new(stream);
    match r.recv().unwrap() {
        Some(Message::Hello(h)) => h,
        other => panic!("expected a Hello, got {other:?}"),
    }
}

fn hello_ack() -> Message<'static> {
    Message::HelloAck(HelloAck {
        version: PROTOCOL_VERSION,
        role: Role::MigrationTarget,
        nonce: Nonce([7; 32]),
        proof: None,
    })
}

/// Plays the target's part during pre-copy: each epoch committed without a `State` (a
/// pre-copy round) is acknowledged `delay` after its commit arrived, from another thread
/// (the reading goes on meanwhile), as a real target does once it has applied it.
struct PrecopyAcks {
    tx: Option<std::sync::mpsc::Sender<u64>>,
    acker: Option<JoinHandle<(MessageWriter<TcpStream>, Option<Instant>)>>,
    state_seen: bool,
    /// When the final epoch's State arrived.
    state_at: Option<Instant>,
}

impl PrecopyAcks {
    fn new(mut w: MessageWriter<TcpStream>, delay: Duration) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let acker = std::thread::spawn(move || {
            let mut last = None;
            for epoch in rx {
                std::thread::sleep(delay);
                if w.send(&Message::Ack { epoch }).is_err() || w.flush().is_err() {
                    break;
                }
                last = Some(Instant::now());
            }
            (w, last)
        });
        PrecopyAcks {
            tx: Some(tx),
            acker: Some(acker),
            state_seen: false,
            state_at: None,
        }
    }

    fn on(&mut self, m: &Message<'_>) {
        match m {
            Message::State { .. } => {
                self.state_seen = true;
                self.state_at = Some(Instant::now());
            }
            Message::EpochCommit(c) if !self.state_seen => {
                let _ = self.tx.as_ref().unwrap().send(c.epoch);
            }
            _ => {}
        }
    }

    /// The writer back, and when the last pre-copy Ack was sent.
    fn finish(mut self) -> (MessageWriter<TcpStream>, Option<Instant>) {
        self.tx = None;
        self.acker.take().unwrap().join().unwrap()
    }
}

/// Passes what it reads from `src` on to `dst` only when the next read begins (or on
/// [`release`]): a frame reader on top has parsed a frame before its bytes go on.
struct HeldTee {
    src: TcpStream,
    dst: TcpStream,
    held: Arc<Mutex<Vec<u8>>>,
}

impl Read for HeldTee {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        release(&self.held, &mut self.dst);
        let n = self.src.read(buf)?;
        self.held.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

fn release(held: &Mutex<Vec<u8>>, dst: &mut TcpStream) {
    let mut h = held.lock().unwrap();
    let _ = dst.write_all(&h);
    h.clear();
}

/// A fake target: a listener on a free port whose first connection `behave` handles.
fn fake_target<F>(behave: F) -> (String, JoinHandle<String>)
where
    F: FnOnce(TcpStream) -> String + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        behave(s)
    });
    (addr, h)
}

#[test]
fn target_of_another_shape_is_refused_and_the_vm_keeps_running() {
    if !kvm_or_skip("target_of_another_shape_is_refused_and_the_vm_keeps_running") {
        return;
    }
    let dir = tempdir();
    let cmdline = "pages=256 wss=16 full=20";
    let (mut src, s) = start_source(dir.path(), "src", cmdline, "128M", 1);

    // Memory differs.
    let (mut tgt, addr) = start_target("256M", 1, None);
    let e = migrate_fails(&s, &addr);
    assert!(
        e.contains("memory") && e.contains("128 MiB") && e.contains("256 MiB"),
        "the error should name the memory sizes: {e}"
    );
    // The target said why and gave up; it runs nothing. (It exits rather than waiting for
    // another source: see the report of this test.)
    let te = assert_target_refused(&mut tgt, &["memory"]);
    assert!(te.contains("128 MiB") && te.contains("256 MiB"), "{te}");
    assert_keeps_running(&mut src, cmdline, 1, 30);

    // vCPU count differs.
    let (mut tgt, addr) = start_target("128M", 2, None);
    let e = migrate_fails(&s, &addr);
    assert!(
        e.contains("vcpus") && e.contains('1') && e.contains('2'),
        "the error should name the vCPU counts: {e}"
    );
    assert!(e.contains("differ in vcpus:"), "only the vCPUs differ: {e}");
    assert_target_refused(&mut tgt, &["vcpus"]);
    assert_keeps_running(&mut src, cmdline, 1, 30);

    // Both differ: both named.
    let (mut tgt, addr) = start_target("64M", 2, None);
    let e = migrate_fails(&s, &addr);
    assert!(e.contains("vcpus") && e.contains("memory"), "{e}");
    assert_target_refused(&mut tgt, &["vcpus"]);
    assert_keeps_running(&mut src, cmdline, 1, 30);

    // After all that, a migration to a matching target works and continues exactly.
    migrates_exactly_at_last(src, &s, cmdline);
}

#[test]
fn bad_targets_fail_the_migration_and_the_vm_keeps_running() {
    if !kvm_or_skip("bad_targets_fail_the_migration_and_the_vm_keeps_running") {
        return;
    }
    let dir = tempdir();
    let cmdline = "pages=256 wss=16 full=20";
    let (mut src, s) = start_source(dir.path(), "src", cmdline, "128M", 1);

    type Behaviour = Box<dyn FnOnce(TcpStream) -> String + Send>;
    let cases: Vec<(&str, Behaviour, &[&str])> = vec![
        (
            "sends garbage",
            Box::new(|mut s: TcpStream| {
                s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    .unwrap();
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
                String::new()
            }),
            &["not an ftvm-wire stream"],
        ),
        (
            "closes at once",
            Box::new(|s: TcpStream| {
                drop(s);
                String::new()
            }),
            &["closed", "reset"],
        ),
        (
            "reads the Hello and disconnects",
            Box::new(|s: TcpStream| {
                let h = read_hello(s.try_clone().unwrap());
                assert_eq!(h.role, Role::MigrationSource);
                drop(s);
                String::new()
            }),
            &["closed the connection before answering"],
        ),
        (
            "accepts, then disconnects in the middle of the memory copy",
            Box::new(|s: TcpStream| {
                let mut r = MessageReader::new(s.try_clone().unwrap());
                let mut w = MessageWriter::new(s.try_clone().unwrap());
                assert!(matches!(r.recv().unwrap(), Some(Message::Hello(_))));
                w.send(&hello_ack()).unwrap();
                w.flush().unwrap();
                // Read about 8 MiB of round 0, then hang up.
                while r.frames().bytes_read() < 8 << 20 {
                    match r.recv().unwrap() {
                        Some(_) => {}
                        None => break,
                    }
                }
                s.shutdown(Shutdown::Both).unwrap();
                String::new()
            }),
            &["reset", "roken pipe", "closed"],
        ),
        (
            "takes everything and hangs up instead of acknowledging",
            Box::new(|s: TcpStream| {
                let mut r = MessageReader::new(s.try_clone().unwrap());
                let mut w = MessageWriter::new(s.try_clone().unwrap());
                assert!(matches!(r.recv().unwrap(), Some(Message::Hello(_))));
                w.send(&hello_ack()).unwrap();
                w.flush().unwrap();
                let mut seen = String::new();
                let mut acks = PrecopyAcks::new(w, Duration::ZERO);
                loop {
                    match r.recv().unwrap() {
                        Some(Message::MigrationDone { epoch }) => {
                            seen = format!("done {epoch}");
                            break;
                        }
                        Some(m) => acks.on(&m),
                        None => break,
                    }
                }
                let (w, _) = acks.finish();
                drop(r);
                drop(w);
                s.shutdown(Shutdown::Both).unwrap();
                seen
            }),
            &["acknowledgement never arrived"],
        ),
        (
            "refuses the final epoch",
            Box::new(|s: TcpStream| {
                let mut r = MessageReader::new(s.try_clone().unwrap());
                let mut w = MessageWriter::new(s.try_clone().unwrap());
                assert!(matches!(r.recv().unwrap(), Some(Message::Hello(_))));
                w.send(&hello_ack()).unwrap();
                w.flush().unwrap();
                let mut seen = String::new();
                // Slow to apply: each pre-copy Ack comes 1 s after the epoch's commit. The
                // source must not pause (send the final epoch) before the last one.
                let mut acks = PrecopyAcks::new(w, Duration::from_secs(1));
                while let Some(m) = r.recv().unwrap() {
                    if let Message::MigrationDone { epoch } = m {
                        seen = format!("done {epoch}");
                        break;
                    }
                    acks.on(&m);
                }
                let state_at = acks.state_at.unwrap();
                let (mut w, last_ack) = acks.finish();
                let last_ack = last_ack.unwrap();
                assert!(
                    state_at >= last_ack,
                    "the source sent the final (paused) epoch {:?} before the target acknowledged the last pre-copy epoch",
                    last_ack - state_at
                );
                w.send_error(ErrorCode::Internal, "test target: disk full")
                    .unwrap();
                w.flush().unwrap();
                seen
            }),
            &["test target: disk full"],
        ),
    ];
    for (name, behave, needles) in cases {
        let (addr, h) = fake_target(behave);
        let e = migrate_fails(&s, &addr);
        assert!(
            needles.iter().any(|n| e.contains(n)),
            "target that {name}: error should mention one of {needles:?}: {e}"
        );
        let seen = h.join().unwrap();
        if name.contains("final") || name.contains("acknowledging") {
            assert!(
                seen.starts_with("done"),
                "target that {name}: the source never finished: {e}"
            );
        }
        eprintln!("target that {name}: {e}");
        if e.contains("stays PAUSED here") {
            // The target took the final epoch and went silent: it may run the VM, so the
            // source must not resume by itself (never two copies); the operator does.
            let st = ctl_json(&s, &["status"]);
            assert_eq!(st["state"], "paused", "{st}");
            ctl_json(&s, &["resume"]);
        }
        // The source paused for the final epoch in the last cases: it must run again.
        assert_keeps_running(&mut src, cmdline, 1, 20);
    }

    // And it still migrates to a real target afterwards, exactly.
    migrates_exactly_at_last(src, &s, cmdline);
}

/// Connect to a target and write `bytes`, then keep the connection open (reading what the
/// target answers) until the target closes it.
fn send_and_linger(addr: &str, bytes: &[u8]) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(bytes).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    let mut sink = Vec::new();
    let _ = c.read_to_end(&mut sink);
}

/// The frames of `msgs` as the wire carries them.
fn frames(msgs: &[Message<'_>]) -> Vec<u8> {
    let mut w = MessageWriter::new(Vec::new());
    for m in msgs {
        w.send(m).unwrap();
    }
    w.flush().unwrap();
    w.frames().get_ref().clone()
}

/// A source that shook hands properly (as `hello` says): its reader and writer.
fn handshake(addr: &str, hello: Hello) -> (MessageReader<TcpStream>, MessageWriter<TcpStream>) {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    let mut r = MessageReader::new(c.try_clone().unwrap());
    let mut w = MessageWriter::new(c);
    w.send(&Message::Hello(hello)).unwrap();
    w.flush().unwrap();
    match r.recv().unwrap() {
        Some(Message::HelloAck(a)) => assert_eq!(a.role, Role::MigrationTarget),
        other => panic!("expected HelloAck, got {other:?}"),
    }
    (r, w)
}

#[test]
fn bad_sources_are_refused_and_the_target_runs_nothing() {
    if !kvm_or_skip("bad_sources_are_refused_and_the_target_runs_nothing") {
        return;
    }
    let dir = tempdir();
    let cmdline = "pages=256 wss=16 full=20";
    let memory = "128M";
    // A real source, to learn the Hello (shape and device fingerprint) the target expects.
    let (mut src, s) = start_source(dir.path(), "src", cmdline, memory, 1);
    let (addr, h) = fake_target(|s| format!("{:?}", read_hello(s)));
    migrate_fails(&s, &addr);
    let _ = h.join().unwrap();
    let (addr, h) = fake_target(|s| {
        let hello = read_hello(s);
        serde_json::json!(Message::Hello(hello).to_payload().unwrap()).to_string()
    });
    migrate_fails(&s, &addr);
    let v: Vec<u8> = serde_json::from_str(&h.join().unwrap()).unwrap();
    let shape: VmShape = match Message::decode(Kind::Hello as u16, &v).unwrap() {
        Message::Hello(h) => h.shape,
        other => panic!("expected a Hello, got {other:?}"),
    };
    assert_eq!(shape.memory_bytes, 128 << 20);
    let hello = Hello::new(Role::MigrationSource, shape, Nonce([3; 32]), false);

    // Garbage instead of a Hello.
    let (mut tgt, addr) = start_target(memory, 1, None);
    send_and_linger(&addr, b"GET / HTTP/1.1\r\nHost: ftvm.example\r\n\r\n");
    assert_target_refused(&mut tgt, &["not an ftvm-wire stream"]);

    // A Hello frame whose header CRC is wrong.
    let (mut tgt, addr) = start_target(memory, 1, None);
    let mut bad = frames(&[Message::Hello(hello)]);
    bad[24] ^= 0x5a;
    send_and_linger(&addr, &bad);
    assert_target_refused(&mut tgt, &["header CRC mismatch"]);

    // A Hello frame whose payload was corrupted (frame CRC wrong).
    let (mut tgt, addr) = start_target(memory, 1, None);
    let mut bad = frames(&[Message::Hello(hello)]);
    bad[28 + 30] ^= 0x01;
    send_and_linger(&addr, &bad);
    assert_target_refused(&mut tgt, &["frame CRC mismatch"]);

    // The wrong role: a primary's Hello.
    let (mut tgt, addr) = start_target(memory, 1, None);
    let primary = Hello::new(Role::Primary, shape, Nonce([4; 32]), false);
    send_and_linger(&addr, &frames(&[Message::Hello(primary)]));
    assert_target_refused(&mut tgt, &["primary"]);

    // A proper handshake, then the connection ends in the middle of the memory copy.
    let (mut tgt, addr) = start_target(memory, 1, None);
    {
        let (_r, mut w) = handshake(&addr, hello);
        w.begin_epoch(1).unwrap();
        let page = vec![0xabu8; 4096];
        let pages: Vec<(u64, &[u8])> = (0..512u64)
            .map(|i| ((16 << 20) + i * 4096, &page[..]))
            .collect();
        w.send_pages(pages).unwrap();
        w.flush().unwrap();
    }
    let e = assert_target_refused(&mut tgt, &["epoch 1"]);
    assert!(e.contains("discarded") || e.contains("ended"), "{e}");

    // The same, but cut in the middle of a frame.
    let (mut tgt, addr) = start_target(memory, 1, None);
    {
        let (_r, w) = handshake(&addr, hello);
        // Encode what follows the Hello (frame 0) with the right sequence numbers: a
        // Hello, EpochBegin and a Pages frame, of which the connection gets all but the
        // Hello and the last 100 bytes.
        let page = vec![0xcdu8; 4096];
        let mut v = MessageWriter::new(Vec::new());
        v.send(&Message::Hello(hello)).unwrap();
        v.begin_epoch(1).unwrap();
        v.send_pages([(16u64 << 20, &page[..])]).unwrap();
        v.flush().unwrap();
        let bytes = v.frames().get_ref();
        let hello_len = 28 + Message::Hello(hello).encoded_len() as usize + 4;
        let mut raw = w.frames().get_ref().try_clone().unwrap();
        raw.write_all(&bytes[hello_len..bytes.len() - 100]).unwrap();
        raw.flush().unwrap();
    }
    let e = assert_target_refused(&mut tgt, &["truncated"]);
    assert!(e.contains("frame 2"), "{e}");

    // A page frame far larger than the target's socket read buffer (its payload is read
    // straight into the frame buffer), with one byte of page data flipped: the CRC check
    // must still catch it before anything runs.
    let (mut tgt, addr) = start_target(memory, 1, None);
    {
        let (_r, w) = handshake(&addr, hello);
        let data: Vec<u8> = (0..128 * 4096).map(|i| (i % 251) as u8).collect();
        let mut v = MessageWriter::new(Vec::new());
        v.send(&Message::Hello(hello)).unwrap();
        v.begin_epoch(1).unwrap();
        v.send_page_runs(&[(16u64 << 20, 128)], &data).unwrap();
        v.commit_epoch().unwrap();
        v.flush().unwrap();
        let mut bytes = v.frames().get_ref().clone();
        let hello_len = 28 + Message::Hello(hello).encoded_len() as usize + 4;
        // Inside the page data, well past the first 16 KiB of the frame.
        let at = bytes.len() - 300_000;
        bytes[at] ^= 0x10;
        let mut raw = w.frames().get_ref().try_clone().unwrap();
        raw.write_all(&bytes[hello_len..]).unwrap();
        raw.flush().unwrap();
        let mut sink = Vec::new();
        raw.set_read_timeout(Some(T)).unwrap();
        let _ = raw.read_to_end(&mut sink);
    }
    let e = assert_target_refused(&mut tgt, &["frame CRC mismatch"]);
    assert!(e.contains("frame 2"), "{e}");

    // Complete epochs, but the final one carries a state blob that is not a VM state.
    let (mut tgt, addr) = start_target(memory, 1, None);
    {
        let (mut r, mut w) = handshake(&addr, hello);
        w.begin_epoch(1).unwrap();
        w.send_zero_pages([(0u64, ((128u64 << 20) / 4096) as u32)])
            .unwrap();
        w.commit_epoch().unwrap();
        w.begin_epoch(2).unwrap();
        w.send_state(b"this is not the state of any VM").unwrap();
        w.commit_epoch().unwrap();
        w.send(&Message::MigrationDone { epoch: 2 }).unwrap();
        w.flush().unwrap();
        // The target must not acknowledge the final epoch (the pre-copy epoch 1, yes).
        let answer = loop {
            match r.recv() {
                Ok(Some(Message::Ack { epoch: 1 })) => {}
                other => break other.map(|m| m.map(|m| m.summary())),
            }
        };
        eprintln!("the target answered the bad final epoch with {answer:?}");
        if let Ok(Some(m)) = &answer {
            assert!(!m.contains("Ack"), "target acknowledged: {m}");
        }
    }
    assert_target_refused(&mut tgt, &["state"]);

    // MigrationDone without any epoch.
    let (mut tgt, addr) = start_target(memory, 1, None);
    {
        let (mut r, mut w) = handshake(&addr, hello);
        w.send(&Message::MigrationDone { epoch: 1 }).unwrap();
        w.flush().unwrap();
        let answer = r.recv().map(|m| m.map(|m| m.summary()));
        eprintln!("the target answered the bad final epoch with {answer:?}");
        if let Ok(Some(m)) = &answer {
            assert!(!m.contains("Ack"), "target acknowledged: {m}");
        }
    }
    assert_target_refused(&mut tgt, &["epoch 1"]);

    // Pages beyond guest memory (the target writes pages as they arrive: each run is
    // checked before anything is written).
    let (mut tgt, addr) = start_target(memory, 1, None);
    {
        let (mut r, mut w) = handshake(&addr, hello);
        let page = vec![0xeeu8; 4096];
        w.begin_epoch(1).unwrap();
        w.send_pages([(1u64 << 40, &page[..])]).unwrap();
        w.commit_epoch().unwrap();
        w.flush().unwrap();
        let answer = r.recv().map(|m| m.map(|m| m.summary()));
        eprintln!("the target answered pages beyond its memory with {answer:?}");
        if let Ok(Some(m)) = &answer {
            assert!(!m.contains("Ack"), "target acknowledged: {m}");
        }
    }
    // Refused by the assembler's staging bound (the run lies beyond guest memory) or, if
    // it got that far, by the replica's own range check before any write.
    assert_target_refused(
        &mut tgt,
        &["beyond guest memory end", "outside guest memory"],
    );

    // A real source whose connection is cut (by a proxy) in the middle of the memory
    // copy: the target gives up and runs nothing; the source keeps running.
    let (mut tgt, taddr) = start_target(memory, 1, None);
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let paddr = proxy.local_addr().unwrap().to_string();
    let p = std::thread::spawn(move || {
        let (from_src, _) = proxy.accept().unwrap();
        let to_tgt = TcpStream::connect(&taddr).unwrap();
        let (mut a, mut b) = (to_tgt.try_clone().unwrap(), from_src.try_clone().unwrap());
        let back = std::thread::spawn(move || {
            let _ = std::io::copy(&mut a, &mut b);
        });
        let mut src_r = from_src.try_clone().unwrap();
        let mut tgt_w = to_tgt.try_clone().unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let mut n = 0usize;
        while n < 6 << 20 {
            let k = src_r.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            tgt_w.write_all(&buf[..k]).unwrap();
            n += k;
        }
        let _ = to_tgt.shutdown(Shutdown::Both);
        let _ = from_src.shutdown(Shutdown::Both);
        let _ = back.join();
        n
    });
    let e = migrate_fails(&s, &paddr);
    let forwarded = p.join().unwrap();
    assert!(
        forwarded >= 6 << 20,
        "proxy forwarded only {forwarded} bytes"
    );
    eprintln!("source after the cut: {e}");
    let te = assert_target_refused(&mut tgt, &["truncated", "epoch"]);
    eprintln!("target after the cut: {te}");
    assert_keeps_running(&mut src, cmdline, 1, 30);
}

/// `ftvm ctl migrate` must report a migration that succeeded as a success: a caller that
/// sees a failure believes the VM still runs on the source and may start it again.
#[test]
fn migrate_answer_reaches_the_client_every_time() {
    if !kvm_or_skip("migrate_answer_reaches_the_client_every_time") {
        return;
    }
    let cmdline = "pages=64 wss=8";
    let mut lost = 0;
    let runs = 10;
    for i in 0..runs {
        let dir = tempdir();
        let (mut src, s) = start_source(dir.path(), "src", cmdline, "64M", 2);
        let (mut tgt, addr) = start_target("64M", 2, None);
        let (st, out, err) = migrate(&s, &addr, &[]);
        // Only a lost answer is this test's subject: any other failure is reported as it
        // is (the source then keeps running and would never exit).
        assert!(
            st.success() || err.contains(LOST_ANSWER),
            "run {i}: the migration itself failed: {} {}; target: {}\ntarget's threads:\n{}",
            out.trim(),
            err.trim(),
            tgt.err(),
            thread_stacks(tgt.child.id())
        );
        assert!(src.wait(T).success(), "{}", src.err());
        tgt.wait_stderr("starting the VM", T);
        if st.success() {
            let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            assert_eq!(v["ok"], true, "{v}");
        } else {
            assert!(err.contains(LOST_ANSWER), "{err}");
            eprintln!("run {i}: the VM migrated but ftvm ctl said: {}", err.trim());
            lost += 1;
        }
    }
    assert_eq!(
        lost, 0,
        "{lost} of {runs} successful migrations were reported as failures by ftvm ctl"
    );
}

/// The connection breaks after the target acknowledged the final epoch but before the
/// source got the acknowledgement. Whatever the outcome, the VM must not run on both
/// hosts at once (two copies of one VM, both writing to the outside world).
#[test]
fn lost_final_ack_never_leaves_the_vm_running_twice() {
    if !kvm_or_skip("lost_final_ack_never_leaves_the_vm_running_twice") {
        return;
    }
    let dir = tempdir();
    let cmdline = "pages=256 wss=16";
    let (mut src, s) = start_source(dir.path(), "src", cmdline, "128M", 1);
    let (mut tgt, taddr) = start_target("128M", 1, None);
    // A proxy that passes everything, except the target's final Ack (the first thing it
    // says after the source's MigrationDone): then it cuts the source off instead. The
    // pre-copy Acks before it pass.
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let paddr = proxy.local_addr().unwrap().to_string();
    let p = std::thread::spawn(move || {
        let (from_src, _) = proxy.accept().unwrap();
        let to_tgt = TcpStream::connect(&taddr).unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let tee = HeldTee {
            src: from_src.try_clone().unwrap(),
            dst: to_tgt.try_clone().unwrap(),
            held: held.clone(),
        };
        let (done2, mut dst) = (done.clone(), to_tgt.try_clone().unwrap());
        let fwd = std::thread::spawn(move || {
            let mut r = MessageReader::new(tee);
            while let Ok(Some(m)) = r.recv() {
                if matches!(m, Message::MigrationDone { .. }) {
                    done2.store(true, std::sync::atomic::Ordering::SeqCst);
                    release(&held, &mut dst);
                }
            }
            release(&held, &mut dst);
        });
        let mut from_tgt = to_tgt.try_clone().unwrap();
        let mut to_src = from_src.try_clone().unwrap();
        // HelloAck without a proof: 28-byte header, 36-byte payload, 4-byte CRC.
        let mut ack = [0u8; 68];
        from_tgt.read_exact(&mut ack).unwrap();
        to_src.write_all(&ack).unwrap();
        // Then Acks: 28-byte header, 8-byte epoch, 4-byte CRC.
        let mut frame = [0u8; 40];
        let got = loop {
            if from_tgt.read_exact(&mut frame).is_err() {
                break 0;
            }
            if done.load(std::sync::atomic::Ordering::SeqCst) {
                break 1;
            }
            to_src.write_all(&frame).unwrap();
        };
        let _ = from_src.shutdown(Shutdown::Both);
        let _ = fwd.join();
        got
    });
    let (st, _, err) = migrate(&s, &paddr, &[]);
    let got = p.join().unwrap();
    assert_eq!(got, 1, "the target never answered the final epoch");
    eprintln!("source: {st}: {}", err.trim());
    // Give both sides time to settle, then see who runs.
    std::thread::sleep(Duration::from_secs(2));
    let src_running = src.status().is_none();
    let tgt_running = tgt.status().is_none();
    let (s0, t0) = (src.max_seq(), tgt.max_seq());
    std::thread::sleep(Duration::from_secs(1));
    let src_progress = src_running && src.max_seq() > s0;
    let tgt_progress = tgt_running && tgt.max_seq() > t0;
    eprintln!(
        "source running: {src_running} (seq {s0} -> {}), target running: {tgt_running} (seq {t0} -> {})",
        src.max_seq(),
        tgt.max_seq()
    );
    assert!(
        !(src_progress && tgt_progress),
        "the VM runs on both the source (seq {} and counting) and the target (seq {} and counting)",
        src.max_seq(),
        tgt.max_seq()
    );
}

/// 64-byte pieces of the guest's ELF (its code, which the full copy carries verbatim), each
/// within one page and with varied bytes: none of them can appear in a sealed stream.
fn guest_code_pieces() -> Vec<[u8; 64]> {
    let elf = ftvm_testguest::ELF;
    let mut out = Vec::new();
    let mut off = 0x1000;
    while off + 64 <= elf.len() && out.len() < 64 {
        let piece: [u8; 64] = elf[off..off + 64].try_into().unwrap();
        let mut seen = [false; 256];
        piece.iter().for_each(|b| seen[*b as usize] = true);
        if seen.iter().filter(|x| **x).count() >= 24 {
            out.push(piece);
        }
        off += 0x400;
    }
    assert!(
        out.len() >= 8,
        "too few distinctive pieces in the guest ELF"
    );
    out
}

/// How many of `pieces` occur in `hay`.
fn pieces_found(hay: &[u8], pieces: &[[u8; 64]]) -> usize {
    let heads: std::collections::HashMap<[u8; 8], Vec<usize>> =
        pieces
            .iter()
            .enumerate()
            .fold(Default::default(), |mut m, (i, p)| {
                m.entry(p[..8].try_into().unwrap()).or_default().push(i);
                m
            });
    let mut found = vec![false; pieces.len()];
    for (at, w) in hay.windows(8).enumerate() {
        if let Some(ids) = heads.get(<&[u8; 8]>::try_from(w).unwrap()) {
            for &i in ids {
                if hay.len() >= at + 64 && hay[at..at + 64] == pieces[i] {
                    found[i] = true;
                }
            }
        }
    }
    found.iter().filter(|f| **f).count()
}

/// A proxy on a fresh port that passes everything both ways and keeps what the source sent.
fn capturing_proxy(to: String) -> (String, JoinHandle<Vec<u8>>) {
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = proxy.local_addr().unwrap().to_string();
    let h = std::thread::spawn(move || {
        let (from_src, _) = proxy.accept().unwrap();
        let to_tgt = TcpStream::connect(&to).unwrap();
        let (mut a, mut b) = (to_tgt.try_clone().unwrap(), from_src.try_clone().unwrap());
        let back = std::thread::spawn(move || {
            let _ = std::io::copy(&mut a, &mut b);
            let _ = b.shutdown(Shutdown::Write);
        });
        let (mut src_r, mut tgt_w) = (from_src, to_tgt);
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match src_r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    seen.extend_from_slice(&buf[..k]);
                    if tgt_w.write_all(&buf[..k]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tgt_w.shutdown(Shutdown::Write);
        let _ = back.join();
        seen
    });
    (addr, h)
}

/// With `--key-file` on both sides the migration stream is encrypted: none of the guest's
/// code pieces (carried by the full copy) shows on the wire, while the same migration
/// without a key shows them (the check sees plaintext when there is some). A target
/// without the key refuses a keyed source, and the VM keeps running.
#[test]
fn keyed_migration_is_encrypted_on_the_wire() {
    if !kvm_or_skip("keyed_migration_is_encrypted_on_the_wire") {
        return;
    }
    let dir = tempdir();
    let key = dir.path().join("key");
    std::fs::write(&key, "a migration key, 32 bytes long..").unwrap();
    let key = key.to_str().unwrap();
    let cmdline = "pages=16 wss=16";
    let pieces = guest_code_pieces();
    for keyed in [false, true] {
        let extra: &[&str] = if keyed { &["--key-file", key] } else { &[] };
        let name = if keyed { "keyed" } else { "plain" };
        let (mut src, s) = start_source_with(dir.path(), name, cmdline, "128M", 1, extra);
        if keyed {
            // A target without the key refuses the keyed source; the VM keeps running.
            let (mut tgt, addr) = start_target("128M", 1, None);
            let e = migrate_fails(&s, &addr);
            assert!(e.contains("authenticat"), "{e}");
            assert_target_refused(&mut tgt, &["authenticat"]);
            assert_keeps_running(&mut src, cmdline, 1, 10);
        }
        let (mut tgt, taddr) = start_target_with("128M", 1, None, extra);
        let (paddr, cap) = capturing_proxy(taddr);
        let a = migrate_done(&s, &paddr, &[]).unwrap();
        assert!(src.wait(T).success(), "{}", src.err());
        let src_seq = check(&src.out(), cmdline, 1).last_seq;
        tgt.wait_seq(src_seq + 20, T);
        check(&format!("{}{}", src.out(), tgt.out()), cmdline, 1);
        drop(tgt);
        let wire = cap.join().unwrap();
        assert!(
            wire.len() as f64 >= a["bytes"].as_f64().unwrap(),
            "captured {} bytes of {}",
            wire.len(),
            a["bytes"]
        );
        let found = pieces_found(&wire, &pieces);
        eprintln!(
            "{name} migration: {} MB on the wire, {found} of {} guest code pieces in clear",
            wire.len() >> 20,
            pieces.len()
        );
        if keyed {
            assert_eq!(found, 0, "guest memory readable on a keyed stream");
        } else {
            assert!(
                found * 2 >= pieces.len(),
                "plain stream: only {found} of {} pieces found: the check cannot see plaintext",
                pieces.len()
            );
        }
    }
}

/// `ftvm ctl migrate --max-bandwidth` holds the pre-copy to the cap on average: the
/// migration cannot be faster than its bytes at that rate (unthrottled it takes a fraction
/// of that here), and the VM still arrives intact. A zero cap is a usage error.
#[test]
fn max_bandwidth_caps_the_precopy_rate() {
    if !kvm_or_skip("max_bandwidth_caps_the_precopy_rate") {
        return;
    }
    let dir = tempdir();
    let cmdline = "pages=0 wss=16"; // idle after init: one full copy, no dirty rounds
    let (mut src, s) = start_source(dir.path(), "src", cmdline, "128M", 1);
    let (st, _, err) = migrate(&s, "127.0.0.1:9", &["--max-bandwidth", "0"]);
    assert!(!st.success() && err.contains("--max-bandwidth"), "{err}");
    let (mut tgt, addr) = start_target("128M", 1, None);
    let cap = 4u64 << 20;
    let t0 = Instant::now();
    let a = migrate_done(&s, &addr, &["--max-bandwidth", "4M/s"]).unwrap();
    let took = t0.elapsed();
    let bytes = a["bytes"].as_u64().unwrap();
    // The final epoch is not paced: leave it out of the bound.
    let paced = bytes.saturating_sub(a["final_pages"].as_u64().unwrap() * 4096 + (1 << 20));
    let floor = Duration::from_secs_f64(paced as f64 / cap as f64);
    eprintln!("capped migration: {a} in {took:?}; {paced} paced bytes need at least {floor:?}");
    assert!(
        Duration::from_millis(a["total_ms"].as_u64().unwrap()) >= floor.mul_f64(0.95),
        "{bytes} bytes in {} ms: faster than the 4 MiB/s cap",
        a["total_ms"]
    );
    assert!(src.wait(T).success(), "{}", src.err());
    let src_seq = check(&src.out(), cmdline, 1).last_seq;
    tgt.wait_seq(src_seq + 20, T);
    check(&format!("{}{}", src.out(), tgt.out()), cmdline, 1);
}
