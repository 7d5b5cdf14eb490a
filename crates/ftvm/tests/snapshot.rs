//! Issue 3: snapshot and restore, end to end on real KVM with the test guest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(120);

/// Restore `dir`, read its console until seq reaches `after + more`, check every line.
/// Returns the first seq the restored VM printed in full.
fn restore_and_check(dir: &Path, cmdline: &str, cpus: u32, more: u64) -> u64 {
    let vm = VmProc::spawn(&["restore", "--from", dir.to_str().unwrap(), "--quiet"]);
    // The snapshot may have caught the guest in the middle of a line: the restored VM
    // then prints that line's tail first. Every complete line after it must be right.
    vm.wait_lines(2, T);
    let first_full = seq_of(&vm.lines()[1]).expect("second line is a seq line");
    let target = first_full + more;
    vm.wait_line(T, |l| seq_of(l).is_some_and(|s| s >= target));
    let lines = vm.lines();
    let head = &lines[0];
    let rest: Vec<String> = lines[1..].to_vec();
    // The partial first line is the tail of the line before `first_full`.
    let expected = expected_lines(cmdline, cpus, first_full);
    let prev = expected.get(&(first_full - 1)).cloned().unwrap_or_default();
    assert!(
        prev.ends_with(head.as_str())
            || head.starts_with("seq=") && expected.get(&(first_full - 1)) == Some(head),
        "restored VM's first output '{head}' is not the rest of line seq={}: '{prev}'",
        first_full - 1
    );
    let seqs: Vec<u64> = rest.iter().filter_map(|l| seq_of(l)).collect();
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(*s, first_full + i as u64, "gap or repeat after restore");
    }
    let (checked, _) = check_against_reference(&rest, cmdline, cpus);
    assert!(checked as u64 > more);
    first_full
}

fn snapshot_many_moments(cpus: u32, count: usize) {
    let dir = tempdir();
    let s = sock(dir.path(), "api.sock");
    let cmdline = "pages=256 wss=32";
    let cpus_s = cpus.to_string();
    let vm = VmProc::spawn(&[
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        "256M",
        "--cpus",
        &cpus_s,
        "--cmdline",
        cmdline,
        "--api-socket",
        s.to_str().unwrap(),
        "--quiet",
    ]);
    vm.wait_lines(5, T);
    wait_socket(&s, T);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut dirs = Vec::new();
    for i in 0..count {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(5 + seed % 150));
        let d = dir.path().join(format!("snap{i}"));
        let diff = i % 3 != 0; // full, diff, diff, full, ...
        let mut args = vec!["snapshot", "--to", d.to_str().unwrap()];
        if diff {
            args.push("--diff");
        }
        let a = ctl_json(&s, &args);
        assert_eq!(a["diff"], diff);
        dirs.push(d);
    }
    drop(vm);
    let mut firsts = Vec::new();
    for d in &dirs {
        firsts.push(restore_and_check(d, cmdline, cpus, 500));
    }
    // Later snapshots continue later.
    for w in firsts.windows(2) {
        assert!(w[1] >= w[0], "snapshots out of order: {firsts:?}");
    }
}

#[test]
fn snapshot_at_20_random_moments_restores_exactly() {
    if !kvm_or_skip("snapshot_at_20_random_moments_restores_exactly") {
        return;
    }
    snapshot_many_moments(1, 20);
}

#[test]
fn snapshot_with_two_vcpus_restores_exactly() {
    if !kvm_or_skip("snapshot_with_two_vcpus_restores_exactly") {
        return;
    }
    snapshot_many_moments(2, 6);
}

#[test]
fn restored_guest_clock_does_not_go_backwards() {
    if !kvm_or_skip("restored_guest_clock_does_not_go_backwards") {
        return;
    }
    let dir = tempdir();
    let s = sock(dir.path(), "api.sock");
    let vm = VmProc::spawn(&[
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        "128M",
        "--cmdline",
        "wss=16",
        "--api-socket",
        s.to_str().unwrap(),
        "--quiet",
    ]);
    vm.wait_lines(5, T);
    wait_socket(&s, T);
    let snap = dir.path().join("snap");
    // kvmclock runs with host time even while vCPUs are parked, so read it just before
    // the snapshot: the saved clock is at least this.
    let c0 = ctl_json(&s, &["status"])["guest_clock_ns"]
        .as_u64()
        .unwrap();
    let wall0 = std::time::Instant::now();
    ctl_json(
        &s,
        &["snapshot", "--to", snap.to_str().unwrap(), "--keep-paused"],
    );
    drop(vm);
    std::thread::sleep(Duration::from_millis(300));
    let s2 = sock(dir.path(), "api2.sock");
    let _r = VmProc::spawn(&[
        "restore",
        "--from",
        snap.to_str().unwrap(),
        "--paused",
        "--api-socket",
        s2.to_str().unwrap(),
        "--quiet",
    ]);
    wait_socket(&s2, T);
    let c1 = ctl_json(&s2, &["status"])["guest_clock_ns"]
        .as_u64()
        .unwrap();
    let wall = wall0.elapsed().as_nanos() as u64;
    assert!(c1 >= c0, "guest clock went backwards: {c0} -> {c1}");
    // Continues from the saved value: the 300 ms during which no VM existed do not appear.
    assert!(
        c1 - c0 + 250_000_000 < wall,
        "guest clock advanced {} ms over {} ms of wall time including a 300 ms gap",
        (c1 - c0) / 1_000_000,
        wall / 1_000_000
    );
}

#[test]
fn bad_snapshots_are_refused_and_nothing_runs() {
    let dir = tempdir();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (st, out, err) = run_ftvm(&["restore", "--from", empty.to_str().unwrap()]);
    assert!(!st.success());
    assert!(out.is_empty());
    assert!(err.contains("state"), "{err}");
    if !kvm_or_skip("bad_snapshots_are_refused_and_nothing_runs (KVM part)") {
        return;
    }
    // A real snapshot to corrupt.
    let s = sock(dir.path(), "api.sock");
    let vm = VmProc::spawn(&[
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        "64M",
        "--cmdline",
        "wss=8",
        "--api-socket",
        s.to_str().unwrap(),
        "--quiet",
    ]);
    vm.wait_lines(3, T);
    wait_socket(&s, T);
    let good = dir.path().join("good");
    ctl_json(&s, &["snapshot", "--to", good.to_str().unwrap()]);
    drop(vm);
    let state = std::fs::read(good.join("state")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", state[..state.len() / 2].to_vec(), ""),
        (
            "foreign",
            b"#!/bin/sh\necho not a snapshot, really not\n".to_vec(),
            "not an ftvm",
        ),
        (
            "corrupt",
            {
                let mut c = state.clone();
                let i = c.len() / 2;
                c[i] ^= 0x55;
                c
            },
            "",
        ),
        (
            "newer",
            {
                let mut c = state.clone();
                c[8] = 9; // format version field
                c
            },
            "version",
        ),
    ];
    for (name, bytes, needle) in cases {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("state"), bytes).unwrap();
        std::fs::copy(good.join("memory"), d.join("memory")).unwrap();
        let (st, out, err) = run_ftvm(&["restore", "--from", d.to_str().unwrap()]);
        assert!(!st.success(), "{name}: restore should fail");
        assert!(out.is_empty(), "{name}: nothing may run, got output {out}");
        assert!(err.contains(needle), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    // A snapshot whose memory file is missing.
    let d = dir.path().join("nomem");
    std::fs::create_dir(&d).unwrap();
    std::fs::copy(good.join("state"), d.join("state")).unwrap();
    let (st, out, err) = run_ftvm(&["restore", "--from", d.to_str().unwrap()]);
    assert!(!st.success() && out.is_empty(), "{err}");
    assert!(err.contains("memory"), "{err}");
}
