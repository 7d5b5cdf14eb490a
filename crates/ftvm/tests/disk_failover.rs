//! The durable key-value test guest (`kv=1 disk=1`, every INCR appended to a log on its
//! virtio-blk disk and flushed before the reply) through repeated SIGKILLs of the primary,
//! with one `redis-cli` connection doing INCR after INCR the whole time.
//!
//! The primary's and the backup's TAPs are on one bridge (tests/common/netns.rs), so the
//! client's connection continues on whichever VM runs. After every takeover a new backup
//! is started on the dead primary's TAP with the dead primary's image, and `ctl protect`
//! re-protects the VM: the disk is re-synced by block hashes (only the few blocks the
//! log grew by since are sent). At the end the last primary is killed too, its backup
//! takes over and is killed in turn, and a fresh `ftvm run` cold-boots from that backup's
//! image alone: the counter is the last reply the client got (or one more, for the INCR in
//! flight).
//!
//! `FTVM_DISK_KILLS=N` sets the number of primary SIGKILLs with re-protection (default 3;
//! the 20 is `FTVM_DISK_KILLS=20`). Skipped loudly without /dev/kvm, root, `ip`,
//! redis-tools or python3.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::netns::*;
use common::{ctl_json, tempdir};

const IMAGE_BYTES: u64 = 8 << 20;
const BLOCK: u64 = 64 << 10;

fn cmdline() -> String {
    format!("kv=1 ip={GUEST_IP}/24 disk=1")
}

fn port(n: usize) -> String {
    // Namespace S's own loopback: these ports collide with nothing outside it.
    format!("127.0.0.1:{}", 7800 + n)
}

fn backup(net: &Net, dir: &Path, n: usize, tap: &str, image: &Path) -> Ftvm {
    let sock = dir.join(format!("b{n}.sock"));
    let mut b = Ftvm::spawn(
        net,
        dir,
        &format!("backup{n}"),
        &[
            "backup",
            "--listen",
            &port(n),
            "--memory",
            "64M",
            "--net",
            &format!("tap={tap}"),
            "--disk",
            &format!("path={}", image.display()),
            "--serial",
            &serial(dir, &format!("backup{n}.out")),
            "--api-socket",
            sock.to_str().unwrap(),
            "--heartbeat-timeout",
            "1s",
            "--fence",
            &fence_arg(dir),
        ],
    );
    b.wait_for("waiting for a primary", T);
    b
}

fn primary(net: &Net, dir: &Path, image: &Path) -> Ftvm {
    let mut p = Ftvm::spawn(
        net,
        dir,
        "primary",
        &[
            "run",
            "--kernel",
            "@testguest",
            "--memory",
            "64M",
            "--heartbeat-timeout",
            "1s",
            "--cmdline",
            &cmdline(),
            "--net",
            &format!("tap={},mac={GUEST_MAC}", net.taps[0]),
            "--disk",
            &format!("path={}", image.display()),
            "--serial",
            &serial(dir, "primary.out"),
            "--api-socket",
            dir.join("p.sock").to_str().unwrap(),
            "--protect",
            &port(1),
            "--fence",
            &fence_arg(dir),
        ],
    );
    p.wait_for("the VM is protected", T);
    wait_listening(dir, "primary.out");
    p
}

/// The numbers of the last "disk sync done" line: (blocks compared, blocks differed).
fn last_sync_summary(stderr: &str) -> (u64, u64) {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("disk sync done"))
        .unwrap_or_else(|| panic!("no disk sync summary in: {stderr}"));
    let num_before = |word: &str| -> u64 {
        let i = line.find(word).unwrap();
        line[..i]
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    (num_before(" blocks compared"), num_before(" differed"))
}

fn kills() -> usize {
    std::env::var("FTVM_DISK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

#[test]
fn durable_counter_survives_primary_sigkills_with_reprotection_and_cold_boot() {
    let test = "durable_counter_survives_primary_sigkills_with_reprotection_and_cold_boot";
    if !ready(test) {
        return;
    }
    let net = Net::new();
    let dir = tempdir();
    let d = dir.path();
    // Image i goes with TAP i: a new backup takes the dead primary's TAP and image.
    let images: [PathBuf; 2] = [d.join("disk0.img"), d.join("disk1.img")];
    for img in &images {
        std::fs::File::create(img)
            .and_then(|f| f.set_len(IMAGE_BYTES))
            .unwrap();
    }
    let mut backups = vec![backup(&net, d, 1, net.taps[1], &images[1])];
    let mut current = primary(&net, d, &images[0]);
    let client = IncrClient::start(&net, "c");
    client.wait_count(20);
    let conns = net.client_connections();
    assert_eq!(conns.len(), 1, "one client connection: {conns:?}");

    let mut seed = std::process::id() as u64;
    let n = kills();
    let mut takeover_ms = Vec::new();
    let mut resync = Vec::new();
    let t_start = Instant::now();
    for k in 1..=n {
        // A random moment under load.
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(200 + (seed >> 33) % 1000));
        let before = client.count();
        let t_kill = Instant::now();
        current.kill();
        let mut next = backups.pop().unwrap();
        next.wait_for("TAKEOVER", T);
        client.wait_count(before + 10);
        takeover_ms.push(t_kill.elapsed().as_millis());
        drop(std::mem::replace(&mut current, next));
        // Re-protect onto the dead primary's TAP and image: a hash-based re-sync.
        let slot = (k + 1) % 2;
        let b = backup(&net, d, k + 1, net.taps[slot], &images[slot]);
        let sock = d.join(format!("b{k}.sock"));
        ctl_json(&sock, &["protect", "--backup", &port(k + 1)]);
        let t0 = Instant::now();
        while ctl_json(&sock, &["status"])["role"] != "primary" {
            assert!(
                t0.elapsed() < T,
                "re-protection {k} never completed: {}",
                current.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let (compared, differed) = last_sync_summary(&current.stderr());
        assert_eq!(
            compared,
            IMAGE_BYTES / BLOCK,
            "blocks compared at re-protection {k}"
        );
        // The dead primary's image lags the survivor's only by the log's last records.
        assert!(
            differed <= 3,
            "re-protection {k} re-sent {differed} of {compared} blocks: the hash comparison does not spare equal blocks"
        );
        resync.push(differed);
        backups.push(b);
    }
    // A longer protected stretch before the end: the final cold boot checks these writes.
    client.wait_count(client.count() + 100);
    assert_eq!(
        net.client_connections(),
        conns,
        "the client's connection was reset or reopened"
    );

    // Stop everything: the last primary dies under load, its backup takes over (the
    // client's connection goes on), then that VM is killed with an INCR maybe in flight.
    let before = client.count();
    current.kill();
    let mut last_backup = backups.pop().unwrap();
    last_backup.wait_for("TAKEOVER", T);
    client.wait_count(before + 10);
    let last_slot = (n + 1) % 2;
    last_backup.kill();
    let replies = client.abort();
    let (last, max_wait) = assert_counting(&replies);

    // A fresh VM from the last backup's image alone, on that backup's TAP with the same
    // MAC (where the bridge and the client's neighbour table last saw the guest).
    let mut cold = Ftvm::spawn(
        &net,
        d,
        "cold",
        &[
            "run",
            "--kernel",
            "@testguest",
            "--memory",
            "64M",
            "--cmdline",
            &cmdline(),
            "--net",
            &format!("tap={},mac={GUEST_MAC}", net.taps[last_slot]),
            "--disk",
            &format!("path={}", images[last_slot].display()),
            "--serial",
            &serial(d, "cold.out"),
        ],
    );
    wait_listening(d, "cold.out");
    let v: u64 = net.cli(&["GET", "c"]).parse().expect("GET c is a number");
    assert!(
        v == last || v == last + 1,
        "cold boot from the last backup's image: counter {v}, but the client's last reply was {last} (lost or invented writes)"
    );
    cold.kill();
    eprintln!(
        "{n} primary SIGKILLs (+1 final) with re-protection in {:?}: {last} INCRs on one connection, longest reply wait {max_wait:?}, kill-to-progress {takeover_ms:?} ms, blocks re-sent per re-protection {resync:?}, cold-boot counter {v} (last reply {last})",
        t_start.elapsed()
    );
}
