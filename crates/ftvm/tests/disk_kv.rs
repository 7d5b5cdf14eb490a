//! The durable key-value test guest (`kv=1 disk=1`) on a protected ftvm pair: every
//! mutation is appended to a log on the virtio-blk disk and flushed before its reply.
//! Real processes, real KVM, a real TAP in a network namespace, redis-cli as the client.
//!
//! Checks: replies stay 1, 2, 3, ...; after a clean pause the primary's and the backup's
//! images are byte-identical; after SIGKILL of the primary and the backup's takeover, a
//! fresh VM cold-booted from the backup's image alone serves the last counter value the
//! client was told.
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
const MAC: &str = "02:f7:00:00:10:01";

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

/// A network namespace with TAP `tap0` (HOST_IP/24) for the VM and `tap1` (no address)
/// for the backup's device; removed on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "ftdk{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ok(ns.cmd("ip").args(["link", "set", "lo", "up"]));
        for tap in ["tap0", "tap1"] {
            ok(ns.cmd("ip").args(["tuntap", "add", tap, "mode", "tap"]));
            ok(ns.cmd("ip").args(["link", "set", tap, "up"]));
        }
        ok(ns
            .cmd("ip")
            .args(["addr", "add", &format!("{HOST_IP}/24"), "dev", "tap0"]));
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
        std::thread::sleep(Duration::from_millis(50));
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
fn kv_disk_replicated_then_cold_boot_from_the_backup_image() {
    if !kvm_or_skip("kv_disk_replicated_then_cold_boot_from_the_backup_image") {
        return;
    }
    if let Some(why) = missing() {
        eprintln!(
            "\n*** SKIPPED kv_disk_replicated_then_cold_boot_from_the_backup_image: {why} ***\n"
        );
        return;
    }
    let ns = Netns::new();
    let dir = tempdir();
    let d = dir.path();
    let pimg = d.join("primary.img");
    let bimg = d.join("backup.img");
    for img in [&pimg, &bimg] {
        std::fs::File::create(img)
            .and_then(|f| f.set_len(8 << 20))
            .unwrap();
    }
    let cmdline = format!("kv=1 ip={GUEST_IP}/24 disk=1");
    // Loopback inside the namespace: a port free outside is free inside too.
    let addr = format!("127.0.0.1:{}", port());
    let bserial = format!("file:{}", d.join("backup.out").display());
    let pserial = format!("file:{}", d.join("primary.out").display());
    let bdisk = format!("path={}", bimg.display());
    let pdisk = format!("path={}", pimg.display());
    let bnet = format!("tap=tap1,mac={MAC}");
    let pnet = format!("tap=tap0,mac={MAC}");
    let api = d.join("p.sock");
    // One lock file fences the pair.
    let fence = format!("lock:{}", d.join("fence.lock").display());
    let mut backup = ns.ftvm(&[
        "backup", "--listen", &addr, "--memory", "64M", "--serial", &bserial, "--net", &bnet,
        "--disk", &bdisk, "--fence", &fence,
    ]);
    wait_until(T, "the backup to listen", || {
        assert!(!backup.exited(), "backup exited: {}", backup.stderr());
        backup.stderr().contains("waiting for a primary")
    });
    let mut primary = ns.ftvm(&[
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        "64M",
        "--cmdline",
        &cmdline,
        "--serial",
        &pserial,
        "--net",
        &pnet,
        "--disk",
        &pdisk,
        "--protect",
        &addr,
        "--fence",
        &fence,
        "--api-socket",
        api.to_str().unwrap(),
    ]);
    wait_until(T, "protection and the kv service", || {
        assert!(!primary.exited(), "primary died: {}", primary.stderr());
        assert!(
            !primary.stderr().contains("UNPROTECTED"),
            "{}",
            primary.stderr()
        );
        primary.stderr().contains("the VM is protected")
            && serial(d, "primary.out").contains(LISTENING)
    });

    // Replies stay 1, 2, 3, ...: each was sent after its log record was flushed on the
    // primary, and released only after the backup acknowledged (and flushed) its epoch.
    let mut last = 0u64;
    for i in 1..=25u64 {
        assert_eq!(ns.cli(&["INCR", "counter"]), i.to_string());
        last = i;
    }
    // Quiescent: the guest writes its disk only for mutations, and the last reply left
    // only after the backup acknowledged (and flushed) its epoch, so with the client idle
    // the two images are byte-identical. (`ctl pause` is refused on a protected VM.)
    std::thread::sleep(Duration::from_millis(500));
    let p = std::fs::read(&pimg).unwrap();
    assert!(
        p.iter().any(|b| *b != 0),
        "the guest wrote nothing to its disk"
    );
    let b = std::fs::read(&bimg).unwrap();
    let first_diff = p.iter().zip(&b).position(|(x, y)| x != y);
    assert!(
        first_diff.is_none(),
        "after a clean pause the backup's image differs from the primary's at byte {first_diff:?}\nprimary: {}\nbackup: {}",
        primary.stderr(),
        backup.stderr()
    );
    for i in last + 1..=last + 10 {
        assert_eq!(ns.cli(&["INCR", "counter"]), i.to_string());
        last = i;
    }

    // SIGKILL the primary: the backup takes over from its last committed epoch.
    primary.kill();
    wait_until(T, "the takeover", || {
        assert!(!backup.exited(), "backup exited: {}", backup.stderr());
        backup.stderr().contains("TAKEOVER")
    });
    // No client traffic reaches the resumed VM (its TAP has no address): stop it, and
    // cold-boot a fresh VM from the backup's image alone.
    std::thread::sleep(Duration::from_millis(300));
    backup.kill();
    let cserial = format!("file:{}", d.join("cold.out").display());
    let mut cold = ns.ftvm(&[
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        "64M",
        "--cmdline",
        &cmdline,
        "--serial",
        &cserial,
        "--net",
        "tap=tap0",
        "--disk",
        &bdisk,
    ]);
    wait_until(T, "the cold-booted kv service", || {
        assert!(!cold.exited(), "cold boot died: {}", cold.stderr());
        serial(d, "cold.out").contains(LISTENING)
    });
    assert_eq!(
        ns.cli(&["GET", "counter"]),
        last.to_string(),
        "the backup's image lacks acknowledged writes; cold boot serial:\n{}\nbackup: {}",
        serial(d, "cold.out"),
        backup.stderr()
    );
    cold.kill();
}

#[test]
fn kv_disk_moves_with_live_migration() {
    if !kvm_or_skip("kv_disk_moves_with_live_migration") {
        return;
    }
    if let Some(why) = missing() {
        eprintln!("\n*** SKIPPED kv_disk_moves_with_live_migration: {why} ***\n");
        return;
    }
    let ns = Netns::new();
    let dir = tempdir();
    let d = dir.path();
    let simg = d.join("source.img");
    let timg = d.join("target.img");
    for img in [&simg, &timg] {
        std::fs::File::create(img)
            .and_then(|f| f.set_len(8 << 20))
            .unwrap();
    }
    // The target's image starts with stale data the migration must replace.
    std::fs::write(&timg, vec![0x5au8; 8 << 20]).unwrap();
    let cmdline = format!("kv=1 ip={GUEST_IP}/24 disk=1");
    let api = d.join("s.sock");
    let sserial = format!("file:{}", d.join("source.out").display());
    let sdisk = format!("path={}", simg.display());
    let snet = format!("tap=tap0,mac={MAC}");
    let mut source = ns.ftvm(&[
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        "64M",
        "--cmdline",
        &cmdline,
        "--serial",
        &sserial,
        "--net",
        &snet,
        "--disk",
        &sdisk,
        "--api-socket",
        api.to_str().unwrap(),
    ]);
    wait_until(T, "the kv service", || {
        assert!(!source.exited(), "source died: {}", source.stderr());
        serial(d, "source.out").contains(LISTENING)
    });
    for i in 1..=20u64 {
        assert_eq!(ns.cli(&["INCR", "counter"]), i.to_string());
    }
    assert_eq!(ns.cli(&["SET", "k", "v"]), "OK");

    let addr = format!("127.0.0.1:{}", port());
    let tserial = format!("file:{}", d.join("target.out").display());
    let tdisk = format!("path={}", timg.display());
    let tnet = format!("tap=tap1,mac={MAC}");
    let mut target = ns.ftvm(&[
        "receive", "--listen", &addr, "--memory", "64M", "--serial", &tserial, "--net", &tnet,
        "--disk", &tdisk,
    ]);
    wait_until(T, "the target to listen", || {
        assert!(!target.exited(), "target exited: {}", target.stderr());
        target.stderr().contains("waiting for a migration")
    });
    let v = ctl_json(&api, &["migrate", "--to", &addr]);
    assert_eq!(v["ok"], true, "{v}");
    wait_until(T, "the target to run the VM", || {
        assert!(!target.exited(), "target exited: {}", target.stderr());
        target.stderr().contains("starting the VM")
    });
    let _ = source.wait(T);
    // The source is gone; its image and the target's are the same disk now.
    assert!(
        std::fs::read(&simg).unwrap() == std::fs::read(&timg).unwrap(),
        "the target's image differs from the source's after the migration"
    );
    // The client follows the VM to the target's TAP.
    ok(ns
        .cmd("ip")
        .args(["addr", "del", &format!("{HOST_IP}/24"), "dev", "tap0"]));
    ok(ns
        .cmd("ip")
        .args(["addr", "add", &format!("{HOST_IP}/24"), "dev", "tap1"]));
    assert_eq!(ns.cli(&["GET", "counter"]), "20");
    assert_eq!(ns.cli(&["INCR", "counter"]), "21");
    assert_eq!(ns.cli(&["GET", "k"]), "v");
    target.kill();
    // The target's disk log holds everything, including the write made after the move.
    let cserial = format!("file:{}", d.join("cold.out").display());
    let mut cold = ns.ftvm(&[
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        "64M",
        "--cmdline",
        &cmdline,
        "--serial",
        &cserial,
        "--net",
        "tap=tap1",
        "--disk",
        &tdisk,
    ]);
    wait_until(T, "the cold-booted kv service", || {
        assert!(!cold.exited(), "cold boot died: {}", cold.stderr());
        serial(d, "cold.out").contains(LISTENING)
    });
    assert_eq!(ns.cli(&["GET", "counter"]), "21");
    cold.kill();
}
