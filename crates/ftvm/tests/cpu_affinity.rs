//! `--cpu-affinity vcpus=LIST,replication=LIST`: the threads of a protected primary and of
//! its backup really run where they were told (read back from the kernel), and a bad list
//! is refused with a clear error before anything starts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(120);

/// (thread name, Cpus_allowed_list) of every thread of `pid`.
fn thread_cpus(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let Some(cpus) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        else {
            continue;
        };
        out.push((comm.trim().to_string(), cpus.trim().to_string()));
    }
    out
}

fn two_cpus_or_skip(test: &str) -> bool {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n < 2 {
        eprintln!("\n*** SKIPPED {test}: needs 2 host CPUs, this process may use {n} ***\n");
        return false;
    }
    true
}

#[test]
fn protected_vcpus_and_replication_threads_run_on_the_cpus_given() {
    let test = "protected_vcpus_and_replication_threads_run_on_the_cpus_given";
    if !kvm_or_skip(test) || !two_cpus_or_skip(test) {
        return;
    }
    let dir = tempdir();
    let addr = format!("127.0.0.1:{}", free_port());
    let fence = format!("lock:{}", dir.path().join("fence").display());
    let bserial = serial_file(dir.path(), "backup.out");
    let mut backup = start_backup(
        |a: &[&str]| VmProc::spawn(a),
        &addr,
        &[
            "--memory",
            "128M",
            "--serial",
            &bserial,
            "--fence",
            &fence,
            "--cpu-affinity",
            "replication=1",
            // Placement is what is checked, not timing: generous on a loaded host.
            "--heartbeat-timeout",
            "5s",
        ],
        T,
    );
    let pserial = serial_file(dir.path(), "primary.out");
    let mut primary = VmProc::spawn(&[
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        "128M",
        "--cmdline",
        "wss=4 pages=64",
        "--serial",
        &pserial,
        "--protect",
        &addr,
        "--fence",
        &fence,
        "--cpu-affinity",
        "vcpus=0,replication=1",
        "--heartbeat-timeout",
        "5s",
    ]);
    wait_protected(&primary, &backup, T, Unprotected::Fails);
    let threads = thread_cpus(primary.child.id());
    let names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["vcpu0", "ft-engine", "ft-send", "ft-acks", "ft-heartbeat"] {
        assert!(names.contains(&want), "no thread {want}: {threads:?}");
    }
    for (name, cpus) in &threads {
        if name.starts_with("kvm-") {
            // KVM's own worker (NX huge-page recovery), created by the kernel from the
            // first vCPU thread: not one of ftvm's threads.
            continue;
        }
        let want = if name.starts_with("vcpu") { "0" } else { "1" };
        assert_eq!(cpus, want, "thread {name} of the primary: {threads:?}");
    }
    // The backup: everything on CPU 1 (its vCPU threads only run after a takeover).
    let bthreads = thread_cpus(backup.child.id());
    for (name, cpus) in &bthreads {
        if !name.starts_with("vcpu") {
            assert_eq!(cpus, "1", "thread {name} of the backup: {bthreads:?}");
        }
    }
    primary.kill();
    backup.kill();
}

#[test]
fn a_bad_cpu_list_is_refused_before_the_vm_starts() {
    if !kvm_or_skip("a_bad_cpu_list_is_refused_before_the_vm_starts") {
        return;
    }
    let allowed = std::thread::available_parallelism().map_or(1, |n| n.get());
    let absent = format!("vcpus={}", 1000.max(allowed));
    for (list, says) in [
        (absent.as_str(), "is not available to this process"),
        ("vcpus=0,1", "expected vcpus=LIST and/or replication=LIST"),
        ("vcpus=1-0", "runs backwards"),
        ("cpus=0", "expected vcpus=LIST"),
        ("replication=x", "`x` is not a CPU number"),
    ] {
        let (st, out, err) = run_ftvm(&[
            "run",
            "--kernel",
            "@testguest",
            "--memory",
            "64M",
            "--cmdline",
            "iters=1",
            "--cpu-affinity",
            list,
        ]);
        assert!(!st.success(), "{list}: accepted; stdout {out}");
        assert!(
            err.contains("--cpu-affinity") && err.contains(says),
            "{list}: stderr does not say `{says}`: {err}"
        );
        assert!(
            !out.contains("ftvm-testguest ready"),
            "{list}: the guest ran: {out}"
        );
    }
}
