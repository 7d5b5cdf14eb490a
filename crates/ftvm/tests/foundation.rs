//! Issue 2: the VMM foundation, end to end on real KVM with the test guest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

const BOOT: Duration = Duration::from_secs(60);

#[test]
fn test_guest_prints_ready_and_100_correct_lines_then_exits_0() {
    if !kvm_or_skip("test_guest_prints_ready_and_100_correct_lines_then_exits_0") {
        return;
    }
    let cmdline = "iters=100";
    let (st, out, err) = run_ftvm(&[
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        "256M",
        "--cmdline",
        cmdline,
    ]);
    assert!(st.success(), "exit {st:?}, stderr: {err}");
    let lines: Vec<String> = out.lines().map(str::to_string).collect();
    assert_eq!(
        lines.first().map(String::as_str),
        Some("ftvm-testguest ready"),
        "{out}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("ftvm-testguest done"),
        "{out}"
    );
    assert_eq!(lines.len(), 102, "ready + 100 seq lines + done: {out}");
    assert_contiguous(&lines);
    let (checked, max) = check_against_reference(&lines, cmdline, 1);
    assert_eq!((checked, max), (100, 100));
}

#[test]
fn same_parameters_same_output_different_parameters_differ() {
    if !kvm_or_skip("same_parameters_same_output_different_parameters_differ") {
        return;
    }
    let run = |cmdline: &str| {
        let (st, out, err) = run_ftvm(&[
            "run",
            "--kernel",
            "@testguest",
            "--memory",
            "256M",
            "--cmdline",
            cmdline,
            "--quiet",
        ]);
        assert!(st.success(), "{err}");
        out
    };
    let a = run("iters=50 pages=64");
    let b = run("iters=50 pages=64");
    let c = run("iters=50 pages=65");
    assert_eq!(
        a, b,
        "two runs with the same parameters must print identical output"
    );
    assert_ne!(a, c, "different parameters must give different sums");
    assert_eq!(a.lines().count(), c.lines().count());
}

#[test]
fn two_vcpus_both_make_progress() {
    if !kvm_or_skip("two_vcpus_both_make_progress") {
        return;
    }
    let cmdline = "iters=200 wss=32";
    let (st, out2, err) = run_ftvm(&[
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        "256M",
        "--cpus",
        "2",
        "--cmdline",
        cmdline,
        "--quiet",
    ]);
    assert!(st.success(), "{err}");
    let lines2: Vec<String> = out2.lines().map(str::to_string).collect();
    assert_contiguous(&lines2);
    // Each line folds both vCPUs' streams: matching the 2-vCPU reference proves both ran
    // every iteration; it must differ from a 1-vCPU run.
    let (checked, _) = check_against_reference(&lines2, cmdline, 2);
    assert_eq!(checked, 200);
    let (_, out1, _) = run_ftvm(&[
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        "256M",
        "--cmdline",
        cmdline,
        "--quiet",
    ]);
    assert_ne!(out1, out2);

    // And in status: both vCPUs' registers change between two pauses.
    let dir = tempdir();
    let s = sock(dir.path(), "api.sock");
    let vm = VmProc::spawn(&[
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        "256M",
        "--cpus",
        "2",
        "--cmdline",
        "wss=32",
        "--api-socket",
        s.to_str().unwrap(),
    ]);
    vm.wait_lines(10, BOOT);
    wait_socket(&s, BOOT);
    let regs = |st: &serde_json::Value| -> Vec<(u64, u64)> {
        st["vcpus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["rip"].as_u64().unwrap(),
                    v["rax"].as_u64().unwrap()
                        ^ v["rbx"].as_u64().unwrap()
                        ^ v["rcx"].as_u64().unwrap()
                        ^ v["rdx"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    // Sample both vCPUs' registers across several pauses: each must be seen in more
    // than one state (a vCPU waiting for the other at a barrier may sit in one spin loop
    // for a while on a loaded host, so one pair of samples is not enough).
    let mut seen: Vec<std::collections::HashSet<(u64, u64)>> = vec![Default::default(); 2];
    for _ in 0..20 {
        ctl_json(&s, &["pause"]);
        let r = regs(&ctl_json(&s, &["status"]));
        ctl_json(&s, &["resume"]);
        assert_eq!(r.len(), 2);
        for i in 0..2 {
            seen[i].insert(r[i]);
        }
        if seen.iter().all(|s| s.len() >= 3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for (i, s) in seen.iter().enumerate() {
        assert!(
            s.len() >= 2,
            "vCPU {i} made no progress across 20 pauses: {s:?}"
        );
    }
}

#[test]
fn pause_freezes_guest_and_resume_continues_without_gap() {
    if !kvm_or_skip("pause_freezes_guest_and_resume_continues_without_gap") {
        return;
    }
    let dir = tempdir();
    let s = sock(dir.path(), "api.sock");
    let cmdline = "pages=256";
    let vm = VmProc::spawn(&[
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        "256M",
        "--cmdline",
        cmdline,
        "--api-socket",
        s.to_str().unwrap(),
    ]);
    vm.wait_lines(20, BOOT);
    wait_socket(&s, BOOT);
    let p = ctl_json(&s, &["pause"]);
    assert!(p["pause_us"].as_u64().is_some());
    std::thread::sleep(Duration::from_millis(100));
    let n0 = vm.line_count();
    let st0 = ctl_json(&s, &["status"]);
    assert_eq!(st0["state"], "paused");
    std::thread::sleep(Duration::from_millis(700));
    let st1 = ctl_json(&s, &["status"]);
    assert_eq!(vm.line_count(), n0, "no new lines while paused");
    assert_eq!(
        st0["vcpus"], st1["vcpus"],
        "vCPU registers and exit counts unchanged while paused"
    );
    ctl_json(&s, &["resume"]);
    vm.wait_lines(n0 + 50, BOOT);
    let lines = vm.lines();
    assert_eq!(lines[0], "ftvm-testguest ready");
    assert_contiguous(&lines);
    let (checked, _) = check_against_reference(&lines, cmdline, 1);
    assert!(checked >= n0 + 49);
    let st2 = ctl_json(&s, &["status"]);
    assert_eq!(st2["state"], "running");
    assert_eq!(st2["pause_us"]["count"], 1);
}

fn assert_refused(args: &[&str], needle: &str) {
    let (st, out, err) = run_ftvm(args);
    assert!(!st.success(), "{args:?} should fail; stdout {out}");
    assert!(
        err.contains(needle),
        "{args:?}: stderr should mention '{needle}', got: {err}"
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(!err.contains("RUST_BACKTRACE"), "{args:?}: {err}");
    assert!(
        err.lines().count() <= 2,
        "{args:?}: expected a one-line error, got: {err}"
    );
}

#[test]
fn bad_inputs_are_refused_with_one_line_errors() {
    let dir = tempdir();
    let not_kernel = dir.path().join("notes.txt");
    std::fs::write(&not_kernel, "hello, this is not a kernel\n").unwrap();
    let unreadable = dir.path().join("missing-kernel");
    let taken = dir.path().join("taken.sock");
    std::fs::write(&taken, "").unwrap();
    assert_refused(
        &["run", "--kernel", unreadable.to_str().unwrap()],
        "cannot read kernel",
    );
    assert_refused(
        &["run", "--kernel", dir.path().to_str().unwrap()],
        "cannot read kernel",
    );
    if !kvm_or_skip("bad_inputs_are_refused_with_one_line_errors (KVM part)") {
        return;
    }
    assert_refused(
        &["run", "--kernel", not_kernel.to_str().unwrap()],
        "not a bootable kernel",
    );
    assert_refused(
        &["run", "--kernel", "@testguest", "--memory", "1M"],
        "below the minimum",
    );
    assert_refused(
        &["run", "--kernel", "@testguest", "--memory", "100T"],
        "more than this host",
    );
    assert_refused(
        &["run", "--kernel", "@testguest", "--memory", "lots"],
        "not a size",
    );
    assert_refused(
        &["run", "--kernel", "@testguest", "--cpus", "0"],
        "invalid vCPU count 0",
    );
    assert_refused(
        &["run", "--kernel", "@testguest", "--cpus", "4096"],
        "invalid vCPU count 4096",
    );
    assert_refused(
        &[
            "run",
            "--kernel",
            "@testguest",
            "--api-socket",
            taken.to_str().unwrap(),
        ],
        "already exists",
    );
    assert_refused(
        &["run", "--kernel", "@testguest", "--serial", "tty"],
        "--serial",
    );
}
