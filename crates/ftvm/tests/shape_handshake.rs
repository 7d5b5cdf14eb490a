//! A backup whose VM is not the primary's (other guest RAM, other disks, other network
//! devices) is refused when the primary connects, with a message naming both sides'
//! shapes, not later at takeover. Real processes on real KVM, real disk image files; the
//! network case runs in a network namespace of its own (root only, skipped loudly
//! otherwise).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(90);

fn image(dir: &Path, name: &str, bytes: u64) -> String {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(bytes).unwrap();
    format!("path={}", p.display())
}

/// `[prefix...] ftvm ARGS`.
fn spawn(prefix: &[&str], args: &[String]) -> VmProc {
    let mut cmd = if prefix.is_empty() {
        Command::new(ftvm())
    } else {
        let mut c = Command::new(prefix[0]);
        c.args(&prefix[1..]).arg(ftvm());
        c
    };
    cmd.args(args);
    VmProc::spawn_command(cmd)
}

fn backup(dir: &Path, prefix: &[&str], addr: &str, memory: &str, extra: &[String]) -> VmProc {
    let mut args: Vec<String> = [
        "backup",
        "--listen",
        addr,
        "--memory",
        memory,
        "--serial",
        &format!("file:{}", dir.join("backup.out").display()),
        "--fence",
        &format!("lock:{}", dir.join("vm.fence").display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend_from_slice(extra);
    let b = spawn(prefix, &args);
    wait_until(T, "the backup to listen", || {
        assert!(!b.exited(), "backup exited: {}", b.stderr());
        b.stderr().contains("waiting for a primary")
    });
    b
}

/// Starts a primary of another shape; returns (primary's refusal, backup's refusal).
fn refused(
    dir: &Path,
    prefix: &[&str],
    addr: &str,
    b: &VmProc,
    memory: &str,
    extra: &[String],
) -> (String, String) {
    let before = b.stderr().matches("refused a connection").count();
    let mut args: Vec<String> = [
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        memory,
        "--cmdline",
        "pages=64 wss=8",
        "--protect",
        addr,
        "--serial",
        &format!("file:{}", dir.join("primary.out").display()),
        "--fence",
        &format!("lock:{}", dir.join("vm.fence").display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend_from_slice(extra);
    let mut p = spawn(prefix, &args);
    wait_until(T, "the primary to be refused", || {
        assert!(!p.exited(), "primary exited: {}", p.stderr());
        p.stderr().contains("UNPROTECTED")
    });
    wait_until(T, "the backup to report the refusal", || {
        b.stderr().matches("refused a connection").count() > before
    });
    let line = |s: String, what: &str| {
        s.lines()
            .rfind(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line with {what:?} in:\n{s}"))
            .to_string()
    };
    let pe = line(p.stderr(), "UNPROTECTED");
    let be = line(b.stderr(), "refused a connection");
    p.kill();
    // Refused at connect: the backup never received a byte of guest memory and is still
    // waiting for the right primary.
    assert!(!b.exited(), "the backup exited: {}", b.stderr());
    assert!(
        !b.stderr().contains("primary connected"),
        "the backup accepted the primary: {}",
        b.stderr()
    );
    (pe, be)
}

fn assert_names_both(msg: &str, differ: &str, here: &str, peer: &str) {
    assert!(
        msg.contains(&format!("VM shapes differ in {differ}:")),
        "should say only {differ} differs: {msg}"
    );
    assert!(
        msg.contains(&format!("this backup has [{here}")),
        "should name the backup's shape [{here}...]: {msg}"
    );
    assert!(
        msg.contains(&format!("the primary has [{peer}")),
        "should name the primary's shape [{peer}...]: {msg}"
    );
}

#[test]
fn a_backup_of_another_memory_or_disk_shape_is_refused_at_connect() {
    if !kvm_or_skip("a_backup_of_another_memory_or_disk_shape_is_refused_at_connect") {
        return;
    }
    let dir = tempdir();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let disk = |name: &str, mib: u64| vec!["--disk".to_string(), image(d, name, mib << 20)];
    let b = backup(d, &[], &addr, "128M", &disk("b0.img", 64));

    // Guest RAM differs.
    let (pe, be) = refused(d, &[], &addr, &b, "256M", &disk("p0.img", 64));
    for m in [&pe, &be] {
        assert_names_both(
            m,
            "memory",
            "memory 128 MiB, 1 vCPU, state format 1, 0 net, disks 64 MiB,",
            "memory 256 MiB, 1 vCPU, state format 1, 0 net, disks 64 MiB,",
        );
    }
    // One disk of another size.
    let (pe, be) = refused(d, &[], &addr, &b, "128M", &disk("p1.img", 32));
    for m in [&pe, &be] {
        assert_names_both(
            m,
            "disks",
            "memory 128 MiB, 1 vCPU, state format 1, 0 net, disks 64 MiB,",
            "memory 128 MiB, 1 vCPU, state format 1, 0 net, disks 32 MiB,",
        );
    }
    // A disk more, and a read-only one.
    let mut two = disk("p2.img", 64);
    two.extend(disk("p3.img", 1));
    let (pe, _) = refused(d, &[], &addr, &b, "128M", &two);
    assert_names_both(
        &pe,
        "disks",
        "memory 128 MiB, 1 vCPU, state format 1, 0 net, disks 64 MiB,",
        "memory 128 MiB, 1 vCPU, state format 1, 0 net, disks 64 MiB + 1 MiB,",
    );
    let ro = vec![
        "--disk".to_string(),
        format!("{},readonly=on", image(d, "p4.img", 64 << 20)),
    ];
    let (pe, _) = refused(d, &[], &addr, &b, "128M", &ro);
    assert_names_both(
        &pe,
        "disks",
        "memory 128 MiB, 1 vCPU, state format 1, 0 net, disks 64 MiB,",
        "memory 128 MiB, 1 vCPU, state format 1, 0 net, disks 64 MiB ro,",
    );
    // No disk at all.
    let (pe, _) = refused(d, &[], &addr, &b, "128M", &[]);
    assert_names_both(
        &pe,
        "disks",
        "memory 128 MiB, 1 vCPU, state format 1, 0 net, disks 64 MiB,",
        "memory 128 MiB, 1 vCPU, state format 1, 0 net, disks none,",
    );
    // The matching primary is accepted by the same backup.
    let mut args: Vec<String> = [
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        "128M",
        "--cmdline",
        "pages=64 wss=8",
        "--protect",
        &addr,
        "--serial",
        &format!("file:{}", d.join("good.out").display()),
        "--fence",
        &format!("lock:{}", d.join("vm.fence").display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(disk("p5.img", 64));
    let mut good = spawn(&[], &args);
    wait_until(T, "protection", || {
        assert!(!good.exited(), "{}", good.stderr());
        good.stderr().contains("the VM is protected")
    });
    good.kill();
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A network namespace for this test process, removed on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn a_backup_with_another_network_device_count_is_refused_at_connect() {
    let test = "a_backup_with_another_network_device_count_is_refused_at_connect";
    if !kvm_or_skip(test) {
        return;
    }
    if !is_root() {
        eprintln!("\n*** SKIPPED {test}: not root (TAP devices need CAP_NET_ADMIN) ***\n");
        return;
    }
    let ns = Netns(format!("ftvmshape{}", std::process::id()));
    let st = Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .unwrap();
    assert!(st.success(), "ip netns add {} failed", ns.0);
    let st = Command::new("ip")
        .args(["-n", &ns.0, "link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(st.success());
    let prefix = ["ip", "netns", "exec", ns.0.as_str()];
    let dir = tempdir();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let net = |tap: &str| vec!["--net".to_string(), format!("tap={tap}")];
    let mut b = backup(d, &prefix, &addr, "128M", &net("shb0"));
    let (pe, be) = refused(d, &prefix, &addr, &b, "128M", &[]);
    for m in [&pe, &be] {
        assert_names_both(
            m,
            "network devices",
            "memory 128 MiB, 1 vCPU, state format 1, 1 net,",
            "memory 128 MiB, 1 vCPU, state format 1, 0 net,",
        );
    }
    let mut two = net("shp0");
    two.extend(net("shp1"));
    let (pe, _) = refused(d, &prefix, &addr, &b, "128M", &two);
    assert_names_both(
        &pe,
        "network devices",
        "memory 128 MiB, 1 vCPU, state format 1, 1 net,",
        "memory 128 MiB, 1 vCPU, state format 1, 2 net,",
    );
    b.kill();
}
