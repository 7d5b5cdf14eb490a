//! Network topology for end-to-end tests with the test guest's key-value service (`kv=1`)
//! behind virtio-net on real TAP devices, with Redis's `redis-cli` as the client.
//!
//! Topology, made by [`Net::new`] and removed on drop (names unique per process):
//! namespace S holds a bridge with the primary's and the backup's TAPs and one end of a
//! veth pair; the other end is in the client namespace C (198.18.0.1/24). The guest is
//! 198.18.0.2. ftvm processes run in S (their replication link is S's loopback, so fixed
//! ports there collide with nothing outside).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{ftvm, kvm_or_skip};

pub const CLIENT_IP: &str = "198.18.0.1";
pub const GUEST_IP: &str = "198.18.0.2";
pub const GUEST_MAC: &str = "02:f7:00:00:00:02";
pub const T: Duration = Duration::from_secs(90);

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// True when KVM, root, `ip`, redis-tools and python3 are there; otherwise prints a loud
/// SKIPPED line naming what is missing.
pub fn ready(test: &str) -> bool {
    if !kvm_or_skip(test) {
        return false;
    }
    let why = if !have("redis-cli", "--version") || !have("redis-benchmark", "--version") {
        Some("redis-cli/redis-benchmark not found (scripts/setup.sh installs redis-tools)")
    } else if !have("ip", "-V") {
        Some("ip not found (iproute2)")
    } else if !have("python3", "--version") {
        Some("python3 not found")
    } else if Command::new("id")
        .arg("-u")
        .output()
        .map_or(true, |o| String::from_utf8_lossy(&o.stdout).trim() != "0")
    {
        Some("not root: network namespaces and TAP devices need CAP_NET_ADMIN")
    } else {
        None
    };
    if let Some(why) = why {
        eprintln!("\n*** SKIPPED {test}: {why}; virtio-net was NOT tested ***\n");
        return false;
    }
    true
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn ok(cmd: &mut Command) {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The two namespaces, the bridge, two TAPs and the veth pair.
pub struct Net {
    pub s: String,
    pub c: String,
    pub taps: [&'static str; 2],
}

impl Net {
    pub fn new() -> Net {
        static N: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let net = Net {
            s: format!("ftvns{id}"),
            c: format!("ftvnc{id}"),
            taps: ["ftvtap0", "ftvtap1"],
        };
        ok(Command::new("ip").args(["netns", "add", &net.s]));
        ok(Command::new("ip").args(["netns", "add", &net.c]));
        let ip_s = |args: &[&str]| ok(Command::new("ip").arg("-n").arg(&net.s).args(args));
        let ip_c = |args: &[&str]| ok(Command::new("ip").arg("-n").arg(&net.c).args(args));
        ip_s(&["link", "set", "lo", "up"]);
        ip_c(&["link", "set", "lo", "up"]);
        ip_s(&["link", "add", "br0", "type", "bridge"]);
        ip_s(&["link", "set", "br0", "up"]);
        for t in net.taps {
            ip_s(&["tuntap", "add", t, "mode", "tap"]);
            ip_s(&["link", "set", t, "master", "br0"]);
            ip_s(&["link", "set", t, "up"]);
        }
        ip_s(&[
            "link", "add", "vs", "type", "veth", "peer", "name", "vc", "netns", &net.c,
        ]);
        ip_s(&["link", "set", "vs", "master", "br0"]);
        ip_s(&["link", "set", "vs", "up"]);
        ip_c(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "vc"]);
        ip_c(&["link", "set", "vc", "up"]);
        net
    }

    /// `prog` run in namespace `ns`.
    pub fn cmd(ns: &str, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, prog]);
        c
    }

    /// `ftvm ARGS...` in namespace S, its stdout lines and stderr collected.
    pub fn vm_proc(&self, args: &[&str]) -> super::VmProc {
        let mut c = Net::cmd(&self.s, ftvm());
        c.args(args);
        super::VmProc::spawn_command(c)
    }

    /// `redis-cli -h GUEST args...` from the client namespace; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = run(Net::cmd(&self.c, "timeout")
            .args(["30", "redis-cli", "-h", GUEST_IP])
            .args(args));
        assert!(
            out.status.success(),
            "redis-cli {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// The established TCP connections from the client namespace to the guest's port.
    pub fn client_connections(&self) -> Vec<String> {
        let out = run(Net::cmd(&self.c, "ss").args(["-tnH", "state", "established"]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&format!("{GUEST_IP}:6379")))
            .map(|l| l.split_whitespace().nth(2).unwrap_or("").to_string())
            .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.s, &self.c] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

/// An ftvm process in namespace S; SIGKILLed on drop.
pub struct Ftvm {
    pub child: Child,
    err: PathBuf,
}

impl Ftvm {
    pub fn spawn(net: &Net, dir: &Path, name: &str, args: &[&str]) -> Ftvm {
        let err = dir.join(format!("{name}.err"));
        let child = Net::cmd(&net.s, ftvm())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn ftvm");
        Ftvm { child, err }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    pub fn wait_for(&mut self, what: &str, timeout: Duration) {
        let t0 = Instant::now();
        while !self.stderr().contains(what) {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("ftvm exited ({st}) before '{what}': {}", self.stderr());
            }
            assert!(
                t0.elapsed() < timeout,
                "no '{what}' within {timeout:?}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send `sig` (`STOP`, `CONT`). The child is `ip netns exec`, which execs ftvm: same pid.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Ftvm {
    fn drop(&mut self) {
        self.signal("CONT");
        self.kill();
    }
}

/// `file:DIR/NAME` for `--serial`.
pub fn serial(dir: &Path, name: &str) -> String {
    super::serial_file(dir, name)
}

/// The guest's console, once it says it listens.
pub fn wait_listening(dir: &Path, console: &str) {
    let t0 = Instant::now();
    let want = format!("ftvm-testguest kv listening on {GUEST_IP}:6379");
    while !std::fs::read_to_string(dir.join(console))
        .unwrap_or_default()
        .contains(&want)
    {
        assert!(t0.elapsed() < T, "the guest never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pair's fence: a lock file in the test's directory (primary and backups share it).
pub fn fence_arg(dir: &Path) -> String {
    format!("lock:{}", dir.join("fence.lock").display())
}

/// One `redis-cli` process, one connection, INCR after INCR on one key.
pub struct IncrClient {
    stop: Arc<AtomicBool>,
    /// (reply line, latency)
    replies: Arc<Mutex<Vec<(String, Duration)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    child: Child,
}

impl IncrClient {
    pub fn start(net: &Net, key: &str) -> IncrClient {
        let mut child = Net::cmd(&net.c, "redis-cli")
            .args(["-h", GUEST_IP])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-cli");
        let mut stdin: ChildStdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (stop.clone(), replies.clone());
        let cmd = format!("INCR {key}\n");
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let t0 = Instant::now();
                if stdin.write_all(cmd.as_bytes()).is_err() || stdin.flush().is_err() {
                    break;
                }
                let mut line = String::new();
                if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                    r.lock().unwrap().push(("<eof>".into(), t0.elapsed()));
                    break;
                }
                r.lock()
                    .unwrap()
                    .push((line.trim_end().to_string(), t0.elapsed()));
            }
        });
        IncrClient {
            stop,
            replies,
            thread: Some(thread),
            child,
        }
    }

    pub fn count(&self) -> usize {
        self.replies.lock().unwrap().len()
    }

    pub fn wait_count(&self, n: usize) {
        let t0 = Instant::now();
        while self.count() < n {
            assert!(
                t0.elapsed() < T,
                "client stuck at {} replies (last {:?})",
                self.count(),
                self.replies.lock().unwrap().last()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop after the reply in progress; the replies.
    pub fn finish(mut self) -> Vec<(String, Duration)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.replies.lock().unwrap().clone()
    }
}

/// Replies must be exactly 1, 2, 3, ...; returns the last and the longest wait.
pub fn assert_counting(replies: &[(String, Duration)]) -> (u64, Duration) {
    assert!(!replies.is_empty(), "no replies at all");
    for (i, (r, _)) in replies.iter().enumerate() {
        assert_eq!(
            r.parse::<u64>().ok(),
            Some(i as u64 + 1),
            "reply {} is {r:?}: the INCR sequence has a gap, a repeat or an error (previous {:?})",
            i + 1,
            replies[i.saturating_sub(3)..i]
                .iter()
                .map(|x| &x.0)
                .collect::<Vec<_>>()
        );
    }
    let max = replies.iter().map(|r| r.1).max().unwrap_or_default();
    (replies.len() as u64, max)
}

impl IncrClient {
    /// Kill the client with its request maybe in flight (the VM is gone and would never
    /// answer it); the replies it got.
    pub fn abort(mut self) -> Vec<(String, Duration)> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let mut r = self.replies.lock().unwrap().clone();
        if r.last().is_some_and(|x| x.0 == "<eof>") {
            r.pop();
        }
        r
    }
}
