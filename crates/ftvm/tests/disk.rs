//! Disks end to end: real ftvm processes on real KVM with virtio-blk disks on raw image
//! files; the initial disk sync (hash exchange), image equality after a clean pause, and a
//! backup whose disk is full.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(120);
/// How often the waits of these tests poll.
const POLL: Duration = Duration::from_millis(50);
const BLOCK: usize = 64 * 1024;

/// A deterministic, incompressible-looking image of `blocks` 64 KiB blocks.
fn pattern(blocks: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; blocks * BLOCK];
    let mut x = seed | 1;
    for b in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
    }
    v
}

fn spawn_backup(dir: &Path, addr: &str, disk: &Path) -> VmProc {
    let serial = format!("file:{}", dir.join("backup.out").display());
    let d = format!("path={}", disk.display());
    let fence = fence_arg(dir);
    let b = VmProc::spawn(&[
        "backup", "--listen", addr, "--memory", "64M", "--serial", &serial, "--disk", &d,
        "--fence", &fence,
    ]);
    wait_until_every(T, POLL, "the backup to listen", || {
        assert!(!b.exited(), "backup exited: {}", b.stderr());
        b.stderr().contains("waiting for a primary")
    });
    b
}

fn spawn_primary(dir: &Path, addr: &str, disk: &Path, api: &Path) -> VmProc {
    let serial = format!("file:{}", dir.join("primary.out").display());
    let d = format!("path={}", disk.display());
    VmProc::spawn(&[
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        "64M",
        "--cmdline",
        "wss=4 pages=64 every=1000",
        "--protect",
        addr,
        "--fence",
        &fence_arg(dir),
        "--serial",
        &serial,
        "--disk",
        &d,
        "--api-socket",
        api.to_str().unwrap(),
    ])
}

/// The pair's fence: a lock file in the test's directory.
fn fence_arg(dir: &Path) -> String {
    format!("lock:{}", dir.join("fence.lock").display())
}

/// The "disk sync done" summary line's numbers: (compared, differed).
fn sync_summary(stderr: &str) -> (u64, u64) {
    let line = stderr
        .lines()
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

#[test]
fn initial_disk_sync_sends_only_differing_blocks_and_images_match() {
    if !kvm_or_skip("initial_disk_sync_sends_only_differing_blocks_and_images_match") {
        return;
    }
    let dir = tempdir();
    let blocks = 96;
    let primary_img = dir.path().join("primary.img");
    let backup_img = dir.path().join("backup.img");
    let data = pattern(blocks, 7);
    std::fs::write(&primary_img, &data).unwrap();
    // The backup holds the same image except for 5 blocks (one of them by one byte, one
    // the short tail of the image is not: every block is whole here).
    let mut stale = data.clone();
    let changed = [0usize, 3, 40, 41, 95];
    for (i, b) in changed.iter().enumerate() {
        if i == 2 {
            stale[b * BLOCK + 777] ^= 1;
        } else {
            stale[b * BLOCK..(b + 1) * BLOCK].fill(i as u8);
        }
    }
    std::fs::write(&backup_img, &stale).unwrap();
    assert_ne!(std::fs::read(&backup_img).unwrap(), data);

    let addr = format!("127.0.0.1:{}", free_port());
    let mut backup = spawn_backup(dir.path(), &addr, &backup_img);
    let api = dir.path().join("p.sock");
    let mut primary = spawn_primary(dir.path(), &addr, &primary_img, &api);
    wait_until_every(T, POLL, "protection", || {
        assert!(!primary.exited(), "primary died: {}", primary.stderr());
        assert!(
            !primary.stderr().contains("UNPROTECTED"),
            "{}",
            primary.stderr()
        );
        primary.stderr().contains("the VM is protected")
    });
    let (compared, differed) = sync_summary(&primary.stderr());
    assert_eq!(compared, blocks as u64);
    assert_eq!(differed, changed.len() as u64, "{}", primary.stderr());
    // The guest never touches its disk in this mode: once the sync is acknowledged the
    // images are byte-identical. (`ctl pause` is refused on a protected VM.)
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        std::fs::read(&backup_img).unwrap() == std::fs::read(&primary_img).unwrap(),
        "backup image differs from the primary's after the sync"
    );
    primary.kill();
    backup.kill();
}

/// Mounts a tmpfs of `size` at `at`; None (and a loud skip) when that is not permitted.
fn small_fs(at: &Path, size: &str) -> Option<Mount> {
    std::fs::create_dir_all(at).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status();
    match st {
        Ok(s) if s.success() => Some(Mount(at.to_path_buf())),
        other => {
            eprintln!("\n*** SKIPPED: cannot mount a small tmpfs ({other:?}); needs root ***\n");
            None
        }
    }
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn backup_disk_full_never_acknowledges_and_primary_goes_unprotected_loudly() {
    if !kvm_or_skip("backup_disk_full_never_acknowledges_and_primary_goes_unprotected_loudly") {
        return;
    }
    let dir = tempdir();
    let Some(_mnt) = small_fs(&dir.path().join("small"), "1m") else {
        return;
    };
    let blocks = 64; // 4 MiB of data, on a 1 MiB filesystem
    let primary_img = dir.path().join("primary.img");
    std::fs::write(&primary_img, pattern(blocks, 9)).unwrap();
    let backup_img = dir.path().join("small/backup.img");
    let f = std::fs::File::create(&backup_img).unwrap();
    f.set_len((blocks * BLOCK) as u64).unwrap(); // sparse: fills up when written
    drop(f);

    let addr = format!("127.0.0.1:{}", free_port());
    let mut backup = spawn_backup(dir.path(), &addr, &backup_img);
    let api = dir.path().join("p.sock");
    let mut primary = spawn_primary(dir.path(), &addr, &primary_img, &api);
    wait_until_every(T, POLL, "the primary to give up on the backup", || {
        assert!(!primary.exited(), "primary died: {}", primary.stderr());
        primary.stderr().contains("UNPROTECTED")
    });
    let perr = primary.stderr();
    assert!(
        !perr.contains("the VM is protected"),
        "the primary was told it is protected although the backup's disk is full: {perr}"
    );
    assert!(
        perr.contains("No space left on device"),
        "the primary does not say why: {perr}"
    );
    // The backup said why and stopped; it never acknowledged an epoch it could not write.
    let st = backup.wait(T);
    assert!(!st.success());
    let berr = backup.stderr();
    assert!(berr.contains("No space left on device"), "{berr}");
    assert!(!berr.contains("ready to take over"), "{berr}");
    // The VM carries on unprotected.
    let s = ctl_json(&api, &["status"]);
    assert_eq!(s["replication"]["role"], "unprotected", "{s}");
    primary.kill();
}
