//! The durable key-value test guest (`kv=1 disk=1`) on a protected ftvm pair: every
//! mutation is appended to a log on the virtio-blk disk and flushed before its reply.
//! Real processes, real KVM, real TAPs on a bridge in a network namespace with the client
//! in a namespace of its own (tests/common/netns.rs), redis-cli as the client.
//!
//! Checks: replies stay 1, 2, 3, ...; after a clean pause the primary's and the backup's
//! images are byte-identical; after SIGKILL of the primary and the backup's takeover, a
//! fresh VM cold-booted from the backup's image alone serves the last counter value the
//! client was told.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::netns::{ready, Net, GUEST_IP};
use common::*;

const LISTENING: &str = "ftvm-testguest kv listening on 198.18.0.2:6379";
const T: Duration = Duration::from_secs(120);
const MAC: &str = "02:f7:00:00:10:01";

/// `ftvm run` of the kv test guest (`cmdline`, 64M), its console in `serial`, on
/// `net_arg` and `disk_arg`; then `extra`.
fn kv_run<'a>(
    cmdline: &'a str,
    serial: &'a str,
    net_arg: &'a str,
    disk_arg: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        "64M",
        "--cmdline",
        cmdline,
        "--serial",
        serial,
        "--net",
        net_arg,
        "--disk",
        disk_arg,
    ];
    args.extend_from_slice(extra);
    args
}

/// Empty (sparse) 8 MiB disk images at `paths`.
fn blank_images(paths: &[&Path]) {
    for img in paths {
        std::fs::File::create(img)
            .and_then(|f| f.set_len(8 << 20))
            .unwrap();
    }
}

/// A fresh unprotected VM (`cmdline`, console `cold.out`) on `net_arg` and `disk_arg`, once
/// its kv service listens.
fn cold_boot(net: &Net, d: &Path, cmdline: &str, net_arg: &str, disk_arg: &str) -> VmProc {
    let cserial = serial_file(d, "cold.out");
    let cold = net.vm_proc(&kv_run(cmdline, &cserial, net_arg, disk_arg, &[]));
    wait_until(T, "the cold-booted kv service", || {
        assert!(!cold.exited(), "cold boot died: {}", cold.stderr());
        read_console(d, "cold.out").contains(LISTENING)
    });
    cold
}

#[test]
fn kv_disk_replicated_then_cold_boot_from_the_backup_image() {
    if !ready("kv_disk_replicated_then_cold_boot_from_the_backup_image") {
        return;
    }
    let net = Net::new();
    let dir = tempdir();
    let d = dir.path();
    let pimg = d.join("primary.img");
    let bimg = d.join("backup.img");
    blank_images(&[&pimg, &bimg]);
    let cmdline = format!("kv=1 ip={GUEST_IP}/24 disk=1");
    // Loopback inside the namespace: a port free outside is free inside too.
    let addr = format!("127.0.0.1:{}", free_port());
    let bserial = format!("file:{}", d.join("backup.out").display());
    let pserial = format!("file:{}", d.join("primary.out").display());
    let bdisk = format!("path={}", bimg.display());
    let pdisk = format!("path={}", pimg.display());
    let bnet = format!("tap={},mac={MAC}", net.taps[1]);
    let pnet = format!("tap={},mac={MAC}", net.taps[0]);
    let api = d.join("p.sock");
    // One lock file fences the pair.
    let fence = format!("lock:{}", d.join("fence.lock").display());
    let mut backup = start_backup(
        |a| net.vm_proc(a),
        &addr,
        &[
            "--memory", "64M", "--serial", &bserial, "--net", &bnet, "--disk", &bdisk, "--fence",
            &fence,
        ],
        T,
    );
    let mut primary = net.vm_proc(&kv_run(
        &cmdline,
        &pserial,
        &pnet,
        &pdisk,
        &[
            "--protect",
            &addr,
            "--fence",
            &fence,
            "--api-socket",
            api.to_str().unwrap(),
        ],
    ));
    wait_until(T, "protection and the kv service", || {
        assert!(!primary.exited(), "primary died: {}", primary.stderr());
        assert!(
            !primary.stderr().contains("UNPROTECTED"),
            "{}",
            primary.stderr()
        );
        primary.stderr().contains("the VM is protected")
            && read_console(d, "primary.out").contains(LISTENING)
    });

    // Replies stay 1, 2, 3, ...: each was sent after its log record was flushed on the
    // primary, and released only after the backup acknowledged (and flushed) its epoch.
    let mut last = 0u64;
    for i in 1..=25u64 {
        assert_eq!(net.cli(&["INCR", "counter"]), i.to_string());
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
        assert_eq!(net.cli(&["INCR", "counter"]), i.to_string());
        last = i;
    }

    // SIGKILL the primary: the backup takes over from its last committed epoch.
    primary.kill();
    wait_until(T, "the takeover", || {
        assert!(!backup.exited(), "backup exited: {}", backup.stderr());
        backup.stderr().contains("TAKEOVER")
    });
    // Stop the resumed VM and cold-boot a fresh one from the backup's image alone, on the
    // backup's TAP with the guest's MAC (where the bridge and the client now send it).
    std::thread::sleep(Duration::from_millis(300));
    backup.kill();
    let mut cold = cold_boot(&net, d, &cmdline, &bnet, &bdisk);
    assert_eq!(
        net.cli(&["GET", "counter"]),
        last.to_string(),
        "the backup's image lacks acknowledged writes; cold boot serial:\n{}\nbackup: {}",
        read_console(d, "cold.out"),
        backup.stderr()
    );
    cold.kill();
}

#[test]
fn kv_disk_moves_with_live_migration() {
    if !ready("kv_disk_moves_with_live_migration") {
        return;
    }
    let net = Net::new();
    let dir = tempdir();
    let d = dir.path();
    let simg = d.join("source.img");
    let timg = d.join("target.img");
    blank_images(&[&simg, &timg]);
    // The target's image starts with stale data the migration must replace.
    std::fs::write(&timg, vec![0x5au8; 8 << 20]).unwrap();
    let cmdline = format!("kv=1 ip={GUEST_IP}/24 disk=1");
    let api = d.join("s.sock");
    let sserial = format!("file:{}", d.join("source.out").display());
    let sdisk = format!("path={}", simg.display());
    let snet = format!("tap={},mac={MAC}", net.taps[0]);
    let mut source = net.vm_proc(&kv_run(
        &cmdline,
        &sserial,
        &snet,
        &sdisk,
        &["--api-socket", api.to_str().unwrap()],
    ));
    wait_until(T, "the kv service", || {
        assert!(!source.exited(), "source died: {}", source.stderr());
        read_console(d, "source.out").contains(LISTENING)
    });
    for i in 1..=20u64 {
        assert_eq!(net.cli(&["INCR", "counter"]), i.to_string());
    }
    assert_eq!(net.cli(&["SET", "k", "v"]), "OK");

    let addr = format!("127.0.0.1:{}", free_port());
    let tserial = format!("file:{}", d.join("target.out").display());
    let tdisk = format!("path={}", timg.display());
    let tnet = format!("tap={},mac={MAC}", net.taps[1]);
    let mut target = net.vm_proc(&[
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
    // The target announced the guest's MAC: the bridge sends the client to its TAP.
    assert_eq!(net.cli(&["GET", "counter"]), "20");
    assert_eq!(net.cli(&["INCR", "counter"]), "21");
    assert_eq!(net.cli(&["GET", "k"]), "v");
    target.kill();
    // The target's disk log holds everything, including the write made after the move.
    let mut cold = cold_boot(&net, d, &cmdline, &tnet, &tdisk);
    assert_eq!(net.cli(&["GET", "counter"]), "21");
    cold.kill();
}
