//! Boots the guest under QEMU TCG (PVH entry) and checks every line against the reference.
//! Skipped (loudly) when `qemu-system-x86_64` is not installed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ftvm_testguest::params::GuestParams;
use ftvm_testguest::reference::{check_output, OutputCheck};
use ftvm_testguest::ELF;

fn have_qemu() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs the guest under QEMU TCG; returns (exit status code, serial output).
fn run_qemu(cmdline: &str, mem_mib: u64, timeout: Duration) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("ftvm-testguest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let elf = dir.join(format!("guest-{id}.elf"));
    std::fs::write(&elf, ELF).expect("write the guest ELF");
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-nographic", "-no-reboot", "-nodefaults"])
        .args(["-m", &format!("{mem_mib}M")])
        .arg("-kernel")
        .arg(&elf)
        .args(["-append", cmdline])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .args(["-serial", "stdio", "-monitor", "none", "-display", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-system-x86_64");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for QEMU") {
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("collect QEMU output");
    let _ = std::fs::remove_file(&elf);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if status.is_none() {
        panic!(
            "QEMU timed out after {timeout:?}; output so far:\n{text}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (status.and_then(|s| s.code()), text)
}

macro_rules! require_qemu {
    () => {
        if !have_qemu() {
            eprintln!("\n!!! SKIPPED: qemu-system-x86_64 not found; install qemu-system-x86 to boot the test guest !!!\n");
            return;
        }
    };
}

#[test]
fn qemu_prints_the_reference_lines() {
    require_qemu!();
    let cmdline = "console=ttyS0 iters=50 wss_mib=8 pages=64 full=7";
    let params = GuestParams::from_cmdline(cmdline).unwrap();
    let (code, out) = run_qemu(cmdline, 64, Duration::from_secs(120));
    // isa-debug-exit: QEMU exits with (code << 1) | 1.
    assert_eq!(code, Some(1), "guest exit code 0 expected; output:\n{out}");
    assert_eq!(
        check_output(&params, 1, &out).unwrap_or_else(|e| panic!("{e}\n{out}")),
        OutputCheck {
            lines: 50,
            last_seq: 50,
            done: true
        }
    );
}

#[test]
fn qemu_every_and_defaults() {
    require_qemu!();
    let cmdline = "iters=30 every=10";
    let params = GuestParams::from_cmdline(cmdline).unwrap();
    let (code, out) = run_qemu(cmdline, 128, Duration::from_secs(120));
    assert_eq!(code, Some(1), "{out}");
    let check = check_output(&params, 1, &out).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!((check.lines, check.last_seq, check.done), (3, 30, true));
}

#[test]
fn qemu_memory_too_small_exits_2() {
    require_qemu!();
    let (code, out) = run_qemu("iters=1 wss_mib=64", 64, Duration::from_secs(60));
    assert_eq!(code, Some(5), "exit code 2 expected; output:\n{out}");
    assert!(
        out.contains("ftvm-testguest error: memory too small"),
        "{out}"
    );
    assert!(!out.contains("ftvm-testguest ready"), "{out}");
}

#[test]
fn qemu_bad_cmdline_exits_2() {
    require_qemu!();
    let (code, out) = run_qemu("iters=x", 64, Duration::from_secs(60));
    assert_eq!(code, Some(5), "{out}");
    assert!(
        out.contains("ftvm-testguest error: bad command line: iters="),
        "{out}"
    );
}

#[test]
fn qemu_faults_exit_3() {
    require_qemu!();
    for (fault, what) in [
        ("ud", "cpu exception 6 #UD"),
        ("gp", "cpu exception 13 #GP"),
        ("pf", "cpu exception 14 #PF"),
        ("panic", "deliberate panic (fault=panic)"),
        // IOPL=3 is honoured under QEMU (not on the PVM hosts, where this is a #GP).
        ("io", "ring-3 port I/O did not fault"),
    ] {
        let cmdline = format!("iters=10 wss_mib=2 fault={fault} fault_at=3");
        let params = GuestParams::from_cmdline(&cmdline).unwrap();
        let (code, out) = run_qemu(&cmdline, 64, Duration::from_secs(60));
        assert_eq!(
            code,
            Some(7),
            "exit code 3 expected for fault={fault}; output:\n{out}"
        );
        assert!(
            out.contains(&format!("ftvm-testguest panic: {what}")),
            "fault={fault}: {out}"
        );
        // The two lines before the fault are right, then the check reports the panic.
        let err = check_output(&params, 1, &out).unwrap_err().to_string();
        assert!(err.contains("the guest failed"), "{err}");
        let before = out.split("ftvm-testguest panic").next().unwrap();
        let check = check_output(&params, 1, before).unwrap();
        assert_eq!(check.lines, 2, "{out}");
    }
}
