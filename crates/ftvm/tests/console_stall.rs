//! A console reader that stops reading must not freeze the VM. A protected primary
//! writes its console to a real pipe that the test does not read: the pipe fills, then
//! ftvm's console queue; the guest keeps running and epochs keep being acknowledged
//! (watched through `ctl status`), the overflow is dropped and counted. When the reader
//! resumes it gets exactly what docs/operations.md says: the guest's output up to the
//! gap, a marker line naming the number of bytes dropped, then the guest's output from
//! right after the gap, all checked byte for byte against the guest's reference stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ftvm_testguest::params::GuestParams;
use ftvm_testguest::reference::Reference;

const T: Duration = Duration::from_secs(120);
const CMDLINE: &str = "pages=16 wss=8";
const MARK_HEAD: &str = "\n[ftvm: ";
const MARK_TAIL: &str = " bytes of console output dropped: the console reader stopped reading]\n";

/// The guest's console stream, at least `len` bytes of it.
fn reference(len: usize) -> Vec<u8> {
    let params = GuestParams::from_cmdline(CMDLINE).unwrap();
    let mut r = Reference::new(&params, 1).unwrap();
    let mut s = b"ftvm-testguest ready\n".to_vec();
    while s.len() < len {
        let line = r.next_line().expect("the reference ended");
        s.extend_from_slice(line.as_bytes());
        s.push(b'\n');
    }
    s
}

/// Splits what the reader got into (segment, bytes dropped after it) pairs.
fn segments(got: &[u8]) -> Vec<(Vec<u8>, u64)> {
    let text = String::from_utf8_lossy(got).into_owned();
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find(MARK_HEAD) {
        let after = &rest[at + MARK_HEAD.len()..];
        let Some(end) = after.find(MARK_TAIL) else {
            break; // a marker still being written: stop before it
        };
        let n: u64 = after[..end]
            .parse()
            .unwrap_or_else(|_| panic!("bad marker {:?}", &after[..end.min(80)]));
        out.push((rest.as_bytes()[..at].to_vec(), n));
        rest = &after[end + MARK_TAIL.len()..];
    }
    out.push((rest.as_bytes().to_vec(), 0));
    out
}

struct Proc {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(args: &[String], stdout: Stdio) -> Proc {
        let mut child = Command::new(ftvm())
            .args(args)
            .env("FTVM_CONSOLE_QUEUE", "16384")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let e = stderr.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = err.read(&mut b) {
                if n == 0 {
                    break;
                }
                e.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&b[..n]));
            }
        });
        Proc { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait_for(&mut self, what: &str) {
        let t0 = Instant::now();
        while !self.stderr().contains(what) {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "exited before {what:?}: {}",
                self.stderr()
            );
            assert!(t0.elapsed() < T, "no {what:?}: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status(sock: &std::path::Path) -> (serde_json::Value, Duration) {
    let t0 = Instant::now();
    let v = ctl_json(sock, &["status"]);
    (v, t0.elapsed())
}

#[test]
fn a_console_reader_that_stops_does_not_freeze_the_protected_vm() {
    if !kvm_or_skip("a_console_reader_that_stops_does_not_freeze_the_protected_vm") {
        return;
    }
    let dir = tempdir();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let fence = format!("lock:{}", d.join("vm.fence").display());
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut backup = Proc::spawn(
        &s(&[
            "backup",
            "--listen",
            &addr,
            "--memory",
            "128M",
            "--serial",
            &format!("file:{}", d.join("backup.out").display()),
            "--fence",
            &fence,
        ]),
        Stdio::null(),
    );
    backup.wait_for("waiting for a primary");
    let sock = sock(d, "primary");
    let sock_arg = sock.display().to_string();
    // The console is a pipe whose reading end this test holds and does not read.
    // A small console queue (set for every process of this test: the default is 1 MiB,
    // minutes of test-guest output on a loaded host) and, below, a one-page pipe.
    let mut primary = Proc::spawn(
        &s(&[
            "run",
            "--kernel",
            "@testguest",
            "--memory",
            "128M",
            "--cmdline",
            CMDLINE,
            "--protect",
            &addr,
            "--serial",
            "stdout",
            "--fence",
            &fence,
            "--api-socket",
            &sock_arg,
        ]),
        Stdio::piped(),
    );
    let mut console = primary.child.stdout.take().unwrap();
    {
        use std::os::fd::AsRawFd;
        // SAFETY: F_SETPIPE_SZ on a pipe this test owns; no memory is passed.
        let r = unsafe { libc::fcntl(console.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
        assert!(r >= 4096, "F_SETPIPE_SZ failed");
    }
    primary.wait_for("the VM is protected");

    // The pipe and then the console queue fill up; the VM must go on.
    let t0 = Instant::now();
    loop {
        let (v, took) = status(&sock);
        assert!(took < Duration::from_secs(5), "ctl status took {took:?}");
        let r = &v["replication"];
        assert_eq!(v["role"], "primary", "{v}");
        if r["console_dropped_bytes"].as_u64().unwrap() > 0 {
            break;
        }
        assert!(
            t0.elapsed() < T,
            "the guest never overflowed the console queue: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Nobody reads; epochs keep being captured and acknowledged, the guest keeps running.
    // More than 10 epochs must be acknowledged meanwhile: about 90 are a second on an idle
    // host, but a host starved by other work once gave 3 in 2 s, so they may take up to
    // 30 s (a VM frozen by its console acknowledges none).
    let acked = |v: &serde_json::Value| v["replication"]["last_acked_epoch"].as_u64().unwrap();
    let dropped =
        |v: &serde_json::Value| v["replication"]["console_dropped_bytes"].as_u64().unwrap();
    let exits = |v: &serde_json::Value| v["vcpus"][0]["exits"].as_u64().unwrap();
    let (a, _) = status(&sock);
    let t_a = Instant::now();
    let b = loop {
        std::thread::sleep(Duration::from_secs(2));
        let (b, took) = status(&sock);
        assert!(took < Duration::from_secs(5), "ctl status took {took:?}");
        if acked(&b) > acked(&a) + 10 || t_a.elapsed() > Duration::from_secs(30) {
            break b;
        }
    };
    assert!(
        acked(&b) > acked(&a) + 10,
        "epochs stopped being acknowledged while the console was stalled: {} -> {} in {:?}",
        acked(&a),
        acked(&b),
        t_a.elapsed()
    );
    assert!(exits(&b) > exits(&a), "the guest stopped running");
    assert!(
        dropped(&b) > dropped(&a),
        "the guest's console output stopped (it should be dropped and counted)"
    );
    assert_eq!(b["role"], "primary");
    assert!(
        !primary.stderr().contains("UNPROTECTED"),
        "{}",
        primary.stderr()
    );
    assert!(!backup.stderr().contains("TAKEOVER"), "{}", backup.stderr());

    // The reader resumes: read until well past the last gap.
    let got = Arc::new(Mutex::new(Vec::new()));
    {
        let got = got.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 65536];
            while let Ok(n) = console.read(&mut b) {
                if n == 0 {
                    break;
                }
                got.lock().unwrap().extend_from_slice(&b[..n]);
            }
        });
    }
    let t0 = Instant::now();
    loop {
        let segs = segments(&got.lock().unwrap());
        if segs.len() >= 2 && segs.last().unwrap().0.len() > 64 << 10 {
            break;
        }
        assert!(
            t0.elapsed() < T,
            "the console did not resume after the reader did"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = got.lock().unwrap().clone();
    let segs = segments(&got);
    let total: u64 = segs.iter().map(|(_, n)| n).sum();
    let want = reference(got.len() + total as usize + 4096);
    // Byte for byte: each segment is the guest's stream where the previous gap ended,
    // and each gap is exactly as long as its marker says.
    let mut pos = 0usize;
    for (i, (seg, n)) in segs.iter().enumerate() {
        assert!(
            want[pos..].starts_with(seg),
            "segment {i} ({} bytes) is not the guest's output at offset {pos}",
            seg.len()
        );
        pos += seg.len() + *n as usize;
    }
    let (c, _) = status(&sock);
    assert!(
        total <= dropped(&c),
        "markers count {total} bytes, status says {} dropped",
        dropped(&c)
    );
    eprintln!(
        "console stall: {} bytes read in {} segments, {total} bytes dropped and marked, epochs acked {} -> {}",
        got.len(),
        segs.len(),
        acked(&a),
        acked(&b)
    );
    let _ = std::io::stderr().flush();
}
