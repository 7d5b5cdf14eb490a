//! Snapshots include the disks: the durable key-value test guest (`kv=1 disk=1`) is
//! snapshotted (full, then two diffs) and restored onto fresh image files; the restored
//! images must be byte-identical to the disk at the snapshot's moment, the service must
//! answer from the snapshot's data through `redis-cli`, and a VM cold-booted from the
//! restored image alone must see the writes made after the restore (the memory and the
//! disk of the restored VM agree).
//!
//! Skipped loudly without /dev/kvm, root, `ip`, redis-tools or python3.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::netns::*;
use common::{ctl_json, tempdir};

const IMAGE_BYTES: u64 = 8 << 20;

fn cmdline() -> String {
    format!("kv=1 ip={GUEST_IP}/24 disk=1")
}

fn new_image(path: &Path) {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(IMAGE_BYTES))
        .unwrap();
}

fn run_vm(net: &Net, dir: &Path, name: &str, image: &Path, api: Option<&Path>) -> Ftvm {
    let console = format!("{name}.out");
    let mut args = vec![
        "run".to_string(),
        "--kernel".into(),
        "@testguest".into(),
        "--memory".into(),
        "64M".into(),
        "--cmdline".into(),
        cmdline(),
        "--net".into(),
        format!("tap={},mac={GUEST_MAC}", net.taps[0]),
        "--disk".into(),
        format!("path={}", image.display()),
        "--serial".into(),
        serial(dir, &console),
    ];
    if let Some(api) = api {
        args.extend(["--api-socket".into(), api.display().to_string()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let vm = Ftvm::spawn(net, dir, name, &refs);
    wait_listening(dir, &console);
    vm
}

fn restore(net: &Net, dir: &Path, name: &str, from: &Path, image: &Path) -> Ftvm {
    let mut r = Ftvm::spawn(
        net,
        dir,
        name,
        &[
            "restore",
            "--from",
            from.to_str().unwrap(),
            "--net",
            &format!("tap={}", net.taps[0]),
            "--disk",
            &format!("path={}", image.display()),
            "--serial",
            &serial(dir, &format!("{name}.out")),
        ],
    );
    r.wait_for("ftvm: restored", T);
    r
}

fn snapshot(api: &Path, to: &Path, diff: bool) {
    let mut args = vec!["snapshot", "--to", to.to_str().unwrap()];
    if diff {
        args.push("--diff");
    }
    let v = ctl_json(api, &args);
    assert_eq!(v["ok"], true, "{v}");
}

fn incr_to(net: &Net, key: &str, from: u64, to: u64) {
    for i in from..=to {
        assert_eq!(net.cli(&["INCR", key]), i.to_string());
    }
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("disks")).expect("disks manifest")).unwrap()
}

/// Restored image vs the disk at the snapshot's moment.
fn assert_same_image(restored: &Path, at_snapshot: &[u8], what: &str) {
    let r = std::fs::read(restored).unwrap();
    assert_eq!(r.len(), at_snapshot.len(), "{what}: size");
    let first = r.iter().zip(at_snapshot).position(|(a, b)| a != b);
    assert!(
        first.is_none(),
        "{what}: the restored image differs from the disk at the snapshot at byte {first:?}"
    );
}

/// Kill `vm`, cold-boot a fresh VM from `image` alone, and return `GET key`.
fn cold_get(net: &Net, dir: &Path, name: &str, image: &Path, key: &str) -> String {
    let mut vm = run_vm(net, dir, name, image, None);
    let v = net.cli(&["GET", key]);
    vm.kill();
    v
}

#[test]
fn snapshots_carry_the_disk_full_and_diff_chain_restores() {
    let test = "snapshots_carry_the_disk_full_and_diff_chain_restores";
    if !ready(test) {
        return;
    }
    let net = Net::new();
    let dir = tempdir();
    let d = dir.path();
    let image = d.join("vm.img");
    new_image(&image);
    let api = d.join("vm.sock");
    let mut vm = run_vm(&net, d, "vm", &image, Some(&api));

    let snap: Vec<PathBuf> = (1..=3).map(|i| d.join(format!("s{i}"))).collect();
    // The guest writes its disk only for mutations: with the client idle, the image as
    // read after each snapshot is the disk at that snapshot.
    incr_to(&net, "c", 1, 10);
    assert_eq!(net.cli(&["SET", "k", "v1"]), "OK");
    snapshot(&api, &snap[0], false);
    let at_s1 = std::fs::read(&image).unwrap();
    incr_to(&net, "c", 11, 15);
    assert_eq!(net.cli(&["SET", "k", "v2"]), "OK");
    snapshot(&api, &snap[1], true);
    incr_to(&net, "c", 16, 20);
    snapshot(&api, &snap[2], true);
    let at_s3 = std::fs::read(&image).unwrap();
    // After the last snapshot: in no restore.
    incr_to(&net, "c", 21, 25);
    vm.kill();

    // What the snapshots hold: a sparse full copy, then only written blocks.
    let m1 = manifest(&snap[0]);
    assert_eq!(m1["disks"][0]["kind"], "full", "{m1}");
    assert!(snap[0].join("disk0.img").is_file());
    for s in &snap[1..] {
        let m = manifest(s);
        assert_eq!(m["disks"][0]["kind"], "diff", "{m}");
        assert!(
            !s.join("disk0.img").exists(),
            "a diff snapshot copied the whole disk"
        );
        let bytes = m["disks"][0]["bytes"].as_u64().unwrap();
        assert!(
            (1..=2 * 65536).contains(&bytes),
            "a diff after a few small log records holds {bytes} bytes"
        );
    }

    // Without --disk, a snapshot with a disk is refused with the reason.
    let out = run(Net::cmd(&net.s, common::ftvm()).args([
        "restore",
        "--from",
        snap[0].to_str().unwrap(),
        "--net",
        &format!("tap={}", net.taps[0]),
        "--serial",
        &serial(d, "refused.out"),
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "restored a disk snapshot without its disk"
    );
    assert!(err.contains("holds 1 disk(s), 0 --disk"), "{err}");

    // The full snapshot, onto a file of zeros (as a fresh host would have).
    let r1 = d.join("r1.img");
    new_image(&r1);
    let mut r = restore(&net, d, "restore1", &snap[0], &r1);
    assert_same_image(&r1, &at_s1, "full snapshot");
    assert_eq!(net.cli(&["GET", "c"]), "10");
    assert_eq!(net.cli(&["GET", "k"]), "v1");
    assert_eq!(net.cli(&["INCR", "c"]), "11");
    r.kill();
    assert_eq!(cold_get(&net, d, "cold1", &r1, "c"), "11");

    // The diff chain s1 <- s2 <- s3, onto a file holding the VM's latest disk (the
    // writes after s3 must go).
    let r3 = d.join("r3.img");
    std::fs::copy(&image, &r3).unwrap();
    let mut r = restore(&net, d, "restore3", &snap[2], &r3);
    assert_same_image(&r3, &at_s3, "diff chain");
    assert_eq!(net.cli(&["GET", "c"]), "20");
    assert_eq!(net.cli(&["GET", "k"]), "v2");
    assert_eq!(net.cli(&["INCR", "c"]), "21");
    assert_eq!(net.cli(&["SET", "k", "v3"]), "OK");
    r.kill();
    assert_eq!(cold_get(&net, d, "cold3", &r3, "k"), "v3");
}
