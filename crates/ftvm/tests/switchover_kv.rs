//! Planned switchover with the network and a disk: the durable key-value test guest
//! (`kv=1 disk=1`) on a protected pair whose TAPs share a bridge in a network namespace
//! (the host's address is on the bridge). A client counts with redis-cli `INCR` while the
//! VM switches over back and forth: every reply must be the next number (no lost or
//! repeated write, the service reachable on the new primary's TAP at once: the new
//! primary announces the guest's MAC, else the bridge would keep sending to the old
//! TAP), and after a quiet moment both disk images are byte-identical.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::netns::{ok, run};
use common::*;

const HOST_IP: &str = "198.18.0.1";
const GUEST_IP: &str = "198.18.0.2";
const LISTENING: &str = "ftvm-testguest kv listening on 198.18.0.2:6379";
const T: Duration = Duration::from_secs(120);
const MAC: &str = "02:f7:00:00:30:01";

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn missing() -> Option<String> {
    if !have("redis-cli", "--version") {
        return Some("redis-cli not found (apt-get install redis-tools)".into());
    }
    if !have("ip", "-V") {
        return Some("ip not found (apt-get install iproute2)".into());
    }
    let uid = Command::new("id").arg("-u").output().ok();
    if uid.is_none_or(|o| String::from_utf8_lossy(&o.stdout).trim() != "0") {
        return Some("not root: network namespaces and TAP devices need CAP_NET_ADMIN".into());
    }
    None
}

/// A network namespace with a bridge (the host's address) and two TAPs on it.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "ftsw{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ok(ns.cmd("ip").args(["link", "set", "lo", "up"]));
        ok(ns.cmd("ip").args(["link", "add", "br0", "type", "bridge"]));
        for tap in ["tap0", "tap1"] {
            ok(ns.cmd("ip").args(["tuntap", "add", tap, "mode", "tap"]));
            ok(ns.cmd("ip").args(["link", "set", tap, "master", "br0"]));
            ok(ns.cmd("ip").args(["link", "set", tap, "up"]));
        }
        ok(ns.cmd("ip").args(["link", "set", "br0", "up"]));
        ok(ns
            .cmd("ip")
            .args(["addr", "add", &format!("{HOST_IP}/24"), "dev", "br0"]));
        ns
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }

    fn ftvm(&self, args: &[&str]) -> VmProc {
        let mut c = self.cmd(ftvm());
        c.args(args);
        VmProc::spawn_command(c)
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = run(self
            .cmd("timeout")
            .args(["20", "redis-cli", "-h", GUEST_IP])
            .args(args));
        assert!(
            out.status.success(),
            "redis-cli {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn serial(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

fn port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn kv_service_counts_on_across_switchovers_with_identical_disks() {
    let name = "kv_service_counts_on_across_switchovers_with_identical_disks";
    if !kvm_or_skip(name) {
        return;
    }
    if let Some(why) = missing() {
        eprintln!("\n*** SKIPPED {name}: {why} ***\n");
        return;
    }
    let ns = Netns::new();
    let dir = tempdir();
    let d = dir.path();
    let imgs = [d.join("a.img"), d.join("b.img")];
    for img in &imgs {
        std::fs::File::create(img)
            .and_then(|f| f.set_len(8 << 20))
            .unwrap();
    }
    let cmdline = format!("kv=1 ip={GUEST_IP}/24 disk=1");
    let addr = format!("127.0.0.1:{}", port());
    let fence = format!("lock:{}", d.join("fence.lock").display());
    let socks = [d.join("a.sock"), d.join("b.sock")];
    let side_args = |i: usize| -> Vec<String> {
        vec![
            "--memory".into(),
            "64M".into(),
            "--serial".into(),
            format!("file:{}", d.join(format!("{i}.out")).display()),
            "--net".into(),
            format!("tap=tap{i},mac={MAC}"),
            "--disk".into(),
            format!("path={}", imgs[i].display()),
            "--fence".into(),
            fence.clone(),
            "--api-socket".into(),
            socks[i].display().to_string(),
        ]
    };
    let mut bargs: Vec<String> = vec!["backup".into(), "--listen".into(), addr.clone()];
    bargs.extend(side_args(1));
    let b = ns.ftvm(&bargs.iter().map(String::as_str).collect::<Vec<_>>());
    wait_until(T, "the backup to listen", || {
        assert!(!b.exited(), "backup exited: {}", b.stderr());
        b.stderr().contains("waiting for a primary")
    });
    let mut aargs: Vec<String> = [
        "run",
        "--kernel",
        "@testguest",
        "--cmdline",
        &cmdline,
        "--protect",
        &addr,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    aargs.extend(side_args(0));
    let a = ns.ftvm(&aargs.iter().map(String::as_str).collect::<Vec<_>>());
    wait_until(T, "protection and the kv service", || {
        assert!(!a.exited(), "primary died: {}", a.stderr());
        a.stderr().contains("the VM is protected") && serial(d, "0.out").contains(LISTENING)
    });
    let procs = [a, b];
    let mut primary = 0;
    let mut n = 0u64;
    for round in 0..6 {
        for _ in 0..5 {
            n += 1;
            assert_eq!(
                ns.cli(&["INCR", "counter"]),
                n.to_string(),
                "round {round}\na: {}\nb: {}",
                procs[0].stderr(),
                procs[1].stderr()
            );
        }
        let (st, _, err) = run_ftvm(&[
            "ctl",
            "--api-socket",
            socks[primary].to_str().unwrap(),
            "switchover",
        ]);
        assert!(st.success(), "switchover {round} failed: {err}");
        primary = 1 - primary;
        let p = &procs[primary];
        wait_until(T, "the new primary", || {
            assert!(!p.exited(), "{}", p.stderr());
            ctl_json(&socks[primary], &["status"])["role"] == "primary"
        });
    }
    for _ in 0..5 {
        n += 1;
        assert_eq!(ns.cli(&["INCR", "counter"]), n.to_string());
    }
    // Quiet: every write travelled in an acknowledged epoch.
    std::thread::sleep(Duration::from_millis(700));
    let x = std::fs::read(&imgs[0]).unwrap();
    let y = std::fs::read(&imgs[1]).unwrap();
    assert!(x.iter().any(|b| *b != 0), "the guest wrote nothing to disk");
    let diff = x.iter().zip(&y).position(|(p, q)| p != q);
    assert!(
        diff.is_none(),
        "after the switchovers the images differ at byte {diff:?}"
    );
    assert_eq!(ns.cli(&["GET", "counter"]), n.to_string());
}
