//! Planned switchover (`ftvm ctl switchover`): real primary and backup processes on real
//! KVM, fenced by a lock file (and etcd in one test). Judged from outside: each process
//! writes the guest's console to its own file; the released output of the VM is the
//! concatenation of the two files' segments in the order the roles changed, and it must be
//! exactly the deterministic test guest's reference stream: no byte lost, none twice, and
//! no process writes while the other one runs the VM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../replication/tests/etcd_server/mod.rs"]
mod etcd_server;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use ftvm_testguest::params::GuestParams;
use ftvm_testguest::reference::Reference;

const T: Duration = Duration::from_secs(120);
/// How often the waits of these tests poll.
const POLL: Duration = Duration::from_millis(10);
const CMDLINE: &str = "pages=256 wss=16";
const HB: &str = "500ms";

/// The console of an uninterrupted run, computed as far as needed.
struct Expected {
    reference: Reference,
    text: String,
    max: u64,
}

impl Expected {
    fn new() -> Self {
        let params = GuestParams::from_cmdline(CMDLINE).unwrap();
        Self {
            reference: Reference::new(&params, 1).unwrap(),
            text: String::from("ftvm-testguest ready\n"),
            max: 0,
        }
    }

    /// Through seq `max` at least.
    fn through(&mut self, max: u64) -> &str {
        while self.max < max {
            let line = self.reference.next_line().unwrap();
            self.max = seq_of(&line).unwrap();
            self.text.push_str(&line);
            self.text.push('\n');
        }
        &self.text
    }
}

fn last_seq(text: &str) -> u64 {
    text.lines().filter_map(seq_of).max().unwrap_or(0)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_default()
}

/// One of the two ftvm processes of a pair.
struct Side {
    name: &'static str,
    proc: VmProc,
    out: PathBuf,
    sock: PathBuf,
    /// Bytes of `out` that belong to the released stream so far (the file's length when
    /// this side last stopped running the VM).
    owned: usize,
}

/// The released output so far: the segments of both files in the order the roles changed.
struct Ledger {
    /// (side index, start, end) of each finished segment.
    segments: Vec<(usize, usize, usize)>,
}

struct Pair {
    _dir: tempfile::TempDir,
    sides: [Side; 2],
    /// Index of the side running the VM.
    primary: usize,
    ledger: Ledger,
    expected: Expected,
}

fn start_pair(fence: &str, vm_id: &str) -> Pair {
    let dir = tempdir();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let common_args: Vec<String> = [
        "--memory",
        "128M",
        "--heartbeat-timeout",
        HB,
        "--fence",
        fence,
        "--vm-id",
        vm_id,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let side = |name: &'static str, mut args: Vec<String>| {
        let out = d.join(format!("{name}.out"));
        let sock = d.join(format!("{name}.sock"));
        args.extend([
            "--serial".to_string(),
            format!("file:{}", out.display()),
            "--api-socket".to_string(),
            sock.display().to_string(),
        ]);
        args.extend(common_args.iter().cloned());
        Side {
            name,
            proc: VmProc::spawn(&args),
            out,
            sock,
            owned: 0,
        }
    };
    let b = side("b", vec!["backup".into(), "--listen".into(), addr.clone()]);
    wait_until_every(T, POLL, "the backup to listen", || {
        assert!(!b.proc.exited(), "backup exited: {}", b.proc.stderr());
        b.proc.stderr().contains("waiting for a primary")
    });
    let a = side(
        "a",
        vec![
            "run".into(),
            "--kernel".into(),
            "@testguest".into(),
            "--cmdline".into(),
            CMDLINE.into(),
            "--protect".into(),
            addr,
        ],
    );
    wait_until_every(T, POLL, "protection", || {
        assert!(!a.proc.exited(), "primary died: {}", a.proc.stderr());
        a.proc.stderr().contains("the VM is protected")
    });
    Pair {
        _dir: dir,
        sides: [a, b],
        primary: 0,
        ledger: Ledger {
            segments: Vec::new(),
        },
        expected: Expected::new(),
    }
}

fn role(sock: &Path) -> String {
    ctl_json(sock, &["status"])["role"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

/// `ftvm ctl switchover ARGS` on `sock`: (success, stdout, stderr).
fn switchover(sock: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut a = vec![
        "ctl".to_string(),
        "--api-socket".into(),
        sock.display().to_string(),
        "switchover".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    let (st, out, err) = run_ftvm(&a);
    (st.success(), out, err)
}

impl Pair {
    fn stream(&self) -> Vec<u8> {
        let mut s = Vec::new();
        for &(i, a, b) in &self.ledger.segments {
            s.extend_from_slice(&read(&self.sides[i].out)[a..b]);
        }
        // The running side's segment, so far.
        let p = &self.sides[self.primary];
        s.extend_from_slice(&read(&p.out)[p.owned..]);
        s
    }

    /// The released stream is a prefix of the reference: nothing lost, repeated or wrong.
    fn judge(&mut self, when: &str) -> u64 {
        let s = String::from_utf8(self.stream()).unwrap();
        let want = self.expected.through(last_seq(&s) + 2);
        if !want.starts_with(&s) {
            let at = s
                .bytes()
                .zip(want.bytes())
                .position(|(x, y)| x != y)
                .unwrap_or(s.len().min(want.len()));
            panic!(
                "{when}: the released console differs from the reference at byte {at}: got {:?}, want {:?} (segments {:?})",
                &s[at.saturating_sub(60)..(at + 60).min(s.len())],
                &want[at.saturating_sub(60)..(at + 60).min(want.len())],
                self.ledger.segments
            );
        }
        last_seq(&s)
    }

    /// The running side was SIGKILLed: the other takes over from its last committed
    /// epoch. What the dead one released stays a prefix of the reference; the survivor's
    /// output continues the reference from a point at or before the end of it (output of
    /// the last epochs may be released twice at a failover, never lost or contradicted).
    fn kill_and_judge_failover(&mut self) {
        let killed = self.primary;
        self.sides[killed].proc.kill();
        self.judge("before the kill");
        let before = self.stream();
        let end = read(&self.sides[killed].out).len();
        let start = self.sides[killed].owned;
        self.ledger.segments.push((killed, start, end));
        self.sides[killed].owned = end;
        self.primary = 1 - killed;
        let s = &self.sides[self.primary];
        wait_until_every(T, POLL, "the takeover", || {
            assert!(!s.proc.exited(), "{}", s.proc.stderr());
            s.proc.stderr().contains("TAKEOVER")
        });
        let from = s.owned;
        let out = s.out.clone();
        let seq0 = last_seq(&String::from_utf8_lossy(&before));
        wait_until_every(T, POLL, "progress after the takeover", || {
            last_seq(&String::from_utf8_lossy(&read(&out)[from..])) > seq0 + 10
        });
        let after = String::from_utf8(read(&out)[from..].to_vec()).unwrap();
        let want = self.expected.through(last_seq(&after) + 2);
        let probe = &after[..after.len().min(200)];
        let o = (0..=before.len())
            .rev()
            .find(|&o| want[o..].starts_with(probe))
            .unwrap_or_else(|| {
                panic!("the survivor's output does not continue the released stream: gap or contradiction")
            });
        let n = after.len().min(want.len() - o);
        assert_eq!(
            &want[o..o + n],
            &after[..n],
            "the survivor's output diverges"
        );
        eprintln!(
            "failover: survivor resumed {} bytes before the end of the released stream",
            before.len() - o
        );
    }

    /// The backup side wrote nothing since it last ran the VM.
    fn assert_backup_silent(&self, when: &str) {
        let b = &self.sides[1 - self.primary];
        assert_eq!(
            read(&b.out).len(),
            b.owned,
            "{when}: {} wrote console output while it was the backup",
            b.name
        );
    }

    /// The running side's console shows `n` more complete lines of the guest.
    fn wait_progress(&self, n: u64) {
        let s0 = last_seq(&String::from_utf8(self.stream()).unwrap());
        let p = &self.sides[self.primary];
        wait_until_every(T, POLL, "progress on the new primary", || {
            assert!(!p.proc.exited(), "{} exited: {}", p.name, p.proc.stderr());
            last_seq(&String::from_utf8(self.stream()).unwrap()) >= s0 + n
        });
    }

    /// Switch over from the running side; returns the answer's pause in ms.
    fn switch(&mut self, extra: &[&str]) -> f64 {
        self.assert_backup_silent("before the switchover");
        let old = self.primary;
        let (ok, out, err) = switchover(&self.sides[old].sock, &[&["--json"][..], extra].concat());
        assert!(
            ok,
            "switchover from {} failed: {err}\n{} stderr: {}\n{} stderr: {}",
            self.sides[old].name,
            self.sides[0].name,
            self.sides[0].proc.stderr(),
            self.sides[1].name,
            self.sides[1].proc.stderr()
        );
        let answer: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        // The hand-over is complete when the answer comes: the old primary released all it
        // will ever release of this period.
        let end = read(&self.sides[old].out).len();
        let start = self.sides[old].owned;
        self.ledger.segments.push((old, start, end));
        self.sides[old].owned = end;
        self.primary = 1 - old;
        answer["pause_ms"].as_f64().unwrap()
    }
}

/// `ctl switchover` 20 times in a row, ping-pong between the two processes: after each,
/// the new primary runs and is protected by the old one (no initial sync), the old one
/// writes nothing more, and the concatenated console is exactly the reference. Then the
/// primary is SIGKILLed: the backup (the old primary of the last switchover) takes over.
#[test]
fn switchover_twenty_times_then_failover() {
    if !kvm_or_skip("switchover_twenty_times_then_failover") {
        return;
    }
    let d = tempdir();
    let fence = format!("lock:{}", d.path().join("vm.fence").display());
    let mut pair = start_pair(&fence, "pingpong");
    pair.wait_progress(20);
    let mut pauses = Vec::new();
    let rounds: usize = std::env::var("FTVM_SWITCHOVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    for i in 0..rounds {
        let t0 = Instant::now();
        pauses.push(pair.switch(&[]));
        let t1 = t0.elapsed();
        // The answer comes once the old primary handed the VM over; the new one takes
        // the fence and resumes right after.
        let p = &pair.sides[pair.primary];
        wait_until_every(Duration::from_secs(10), POLL, "the new primary", || {
            assert!(!p.proc.exited(), "switchover {i}: {}", p.proc.stderr());
            role(&p.sock) == "primary"
        });
        let b = &pair.sides[1 - pair.primary];
        assert_eq!(
            role(&b.sock),
            "backup",
            "switchover {i}: {}",
            b.proc.stderr()
        );
        pair.wait_progress(5);
        pair.assert_backup_silent(&format!("after switchover {i}"));
        let t2 = t0.elapsed();
        pair.judge(&format!("after switchover {i}"));
        eprintln!(
            "switchover {i}: answered after {:.0} ms, progress after {:.0} ms, judged after {:.0} ms",
            t1.as_secs_f64() * 1e3,
            t2.as_secs_f64() * 1e3,
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    // A switchover is asked of the primary: the backup refuses, saying so.
    let b = &pair.sides[1 - pair.primary];
    let (ok, _, err) = switchover(&b.sock, &[]);
    assert!(!ok);
    assert!(err.contains("this process is the backup"), "{err}");
    // No initial sync after the first protection: each switchover reused the link.
    let (a, b) = (pair.sides[0].proc.stderr(), pair.sides[1].proc.stderr());
    assert_eq!(a.matches("; initial sync").count(), 1, "{a}");
    assert_eq!(b.matches("; initial sync").count(), 0, "{b}");
    assert_eq!(b.matches("receiving the initial sync").count(), 1, "{b}");
    assert_eq!(a.matches("receiving the initial sync").count(), 0, "{a}");
    // The primary dies: its backup takes over and continues the same stream.
    pair.kill_and_judge_failover();
    pauses.sort_by(f64::total_cmp);
    eprintln!(
        "switchover: {} hand-overs, vCPUs parked p50 {:.1} ms, max {:.1} ms",
        rounds,
        pauses[pauses.len() / 2],
        pauses[pauses.len() - 1]
    );
}

/// `ctl switchover --stop`: the old primary exits 0 saying so; the new primary runs
/// unprotected and says so; the console goes on without a gap.
#[test]
fn switchover_with_stop_ends_the_old_primary() {
    if !kvm_or_skip("switchover_with_stop_ends_the_old_primary") {
        return;
    }
    let d = tempdir();
    let fence = format!("lock:{}", d.path().join("vm.fence").display());
    let mut pair = start_pair(&fence, "stop");
    pair.wait_progress(10);
    pair.switch(&["--stop"]);
    let old = &mut pair.sides[1 - pair.primary];
    let st = old.proc.wait(Duration::from_secs(30));
    assert_eq!(st.code(), Some(0), "{}", old.proc.stderr());
    assert!(
        old.proc.stderr().contains("this process stops (--stop)"),
        "{}",
        old.proc.stderr()
    );
    let p = &pair.sides[pair.primary];
    wait_until_every(T, POLL, "the unprotected warning", || {
        p.proc.stderr().contains("UNPROTECTED")
    });
    assert_eq!(role(&p.sock), "unprotected");
    pair.wait_progress(20);
    pair.assert_backup_silent("after the stop");
    pair.judge("after switchover --stop");
}

/// Refusals: an unprotected VM, a backup whose replica is not complete, and a backup
/// process; each exits non-zero with a message saying why, and the VM runs on.
#[test]
fn switchover_is_refused_when_it_cannot_be_done() {
    if !kvm_or_skip("switchover_is_refused_when_it_cannot_be_done") {
        return;
    }
    let d = tempdir();
    let sock = d.path().join("p.sock");
    // A "backup" that accepts the connection and never answers: protection stays in its
    // initial sync (role syncing) for the handshake timeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let fence = format!("lock:{}", d.path().join("vm.fence").display());
    let mut p = VmProc::spawn(&[
        "run",
        "--kernel",
        "@testguest",
        "--cmdline",
        CMDLINE,
        "--memory",
        "128M",
        "--fence",
        &fence,
        "--api-socket",
        sock.to_str().unwrap(),
        "--protect",
        &addr,
    ]);
    wait_socket(&sock, T);
    let (_conn, _) = silent.accept().unwrap();
    assert_eq!(role(&sock), "syncing");
    let (ok, _, err) = switchover(&sock, &[]);
    assert!(!ok);
    assert!(err.contains("replica is not complete"), "{err}");
    // The handshake times out: the VM runs unprotected.
    wait_until_every(T, POLL, "protection to fail", || {
        p.stderr().contains("UNPROTECTED")
    });
    let (ok, _, err) = switchover(&sock, &[]);
    assert!(!ok);
    assert!(err.contains("not protected"), "{err}");
    assert!(!p.exited());
    p.kill();

    // Never protected at all.
    let sock2 = d.path().join("q.sock");
    let fence2 = format!("lock:{}", d.path().join("vm2.fence").display());
    let mut q = VmProc::spawn(&[
        "run",
        "--kernel",
        "@testguest",
        "--cmdline",
        CMDLINE,
        "--memory",
        "128M",
        "--fence",
        &fence2,
        "--api-socket",
        sock2.to_str().unwrap(),
    ]);
    wait_socket(&sock2, T);
    std::thread::sleep(Duration::from_millis(200));
    let (ok, _, err) = switchover(&sock2, &[]);
    assert!(!ok);
    assert!(err.contains("not protected"), "{err}");
    q.kill();

    // A backup process.
    let sock3 = d.path().join("b.sock");
    let mut b = VmProc::spawn(&[
        "backup",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--memory",
        "128M",
        "--fence",
        &fence2,
        "--api-socket",
        sock3.to_str().unwrap(),
    ]);
    wait_socket(&sock3, T);
    let (ok, _, err) = switchover(&sock3, &[]);
    assert!(!ok);
    assert!(err.contains("this process is the backup"), "{err}");
    b.kill();
}

/// With the etcd fence: the key moves with the VM at each switchover (the old primary
/// revokes its lease only after closing its output gate; the new one takes the key), and
/// a SIGKILL afterwards still fails over.
#[test]
fn switchover_with_etcd_moves_the_fence() {
    if !kvm_or_skip("switchover_with_etcd_moves_the_fence") {
        return;
    }
    let etcd = etcd_server::EtcdServer::start();
    let mut pair = start_pair(
        &format!("etcd:{}", etcd.url),
        &format!("switch-{}", std::process::id()),
    );
    pair.wait_progress(10);
    for i in 0..4 {
        pair.switch(&[]);
        pair.wait_progress(5);
        pair.assert_backup_silent(&format!("after switchover {i}"));
        pair.judge(&format!("after switchover {i} (etcd)"));
        // The fence is the new primary's: its keeper renews it (no self-fencing).
        let p = &pair.sides[pair.primary];
        assert!(
            !p.proc.stderr().contains("SELF-FENCED"),
            "{}",
            p.proc.stderr()
        );
    }
    pair.kill_and_judge_failover();
}
