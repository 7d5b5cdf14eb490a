//! Opt-in end-to-end tests with ftvm's microVM Linux kernel (scripts/linux-guest.sh
//! --microvm): a stock 6.1 kernel, built small, whose own drivers use ftvm's devices.
//!
//! Runs only with `FTVM_LINUX_MICROVM_TEST=1`: the first run builds the kernel (see
//! docs/linux-guests.md for times), and on hosts without hardware virtualization every boot
//! takes minutes. Never runs in CI.
//!
//! ```text
//! FTVM_LINUX_MICROVM_TEST=1 cargo test --release -p ftvm --test linux_microvm -- --nocapture --test-threads 1
//! ```
//!
//! Environment: `FTVM_LINUX_MICROVM_TEST=1` (run at all), `FTVM_LINUX_TIMEOUT_SECS` (per
//! boot, default 1800), `FTVM_LINUX_MICROVM_CACHE` (passed on to the script).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/ftvm has a repository two levels up")
        .to_path_buf()
}

/// True when the opt-in variable is set and KVM is usable; says why not otherwise.
fn enabled(test: &str) -> bool {
    if std::env::var("FTVM_LINUX_MICROVM_TEST").as_deref() != Ok("1") {
        eprintln!(
            "{test}: SKIPPED (opt-in): set FTVM_LINUX_MICROVM_TEST=1 to build and boot the \
             microVM kernel (docs/linux-guests.md)"
        );
        return false;
    }
    common::kvm_or_skip(test)
}

fn boot_timeout() -> Duration {
    let secs = std::env::var("FTVM_LINUX_TIMEOUT_SECS")
        .ok()
        .map(|v| v.trim().parse().expect("FTVM_LINUX_TIMEOUT_SECS: seconds"))
        .unwrap_or(1800);
    Duration::from_secs(secs)
}

/// What scripts/linux-guest.sh --microvm produced.
struct Guest {
    dir: PathBuf,
    /// The host's command-line words (the `cmdline` file).
    cmdline: String,
}

fn microvm_guest() -> Guest {
    let script = repo_root().join("scripts/linux-guest.sh");
    let t0 = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg("--microvm")
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/linux-guest.sh --microvm");
    assert!(
        out.status.success(),
        "scripts/linux-guest.sh --microvm failed ({})",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(stdout.lines().last().expect("script printed its directory").trim());
    for f in ["kernel", "rootfs.ext4", "cmdline", "ftvm-poweroff"] {
        assert!(dir.join(f).is_file(), "{} missing", dir.join(f).display());
    }
    let cmdline = std::fs::read_to_string(dir.join("cmdline"))
        .unwrap()
        .trim()
        .to_string();
    eprintln!(
        "microvm guest ready in {:.1}s: {} (cmdline words: {cmdline})",
        t0.elapsed().as_secs_f64(),
        dir.display()
    );
    Guest { dir, cmdline }
}

/// A newc cpio archive holding /dev/console and `/init` = `init`.
fn initramfs_with_init(init: &[u8]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let namesize = name.len() as u32 + 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            namesize,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    entry(&mut out, 1, "dev", 0o040755, (0, 0), &[]);
    entry(&mut out, 2, "dev/console", 0o020600, (5, 1), &[]);
    entry(&mut out, 3, "init", 0o100755, (0, 0), init);
    entry(&mut out, 0, "TRAILER!!!", 0, (0, 0), &[]);
    out
}

/// A booting microVM: serial lines with the time they arrived, ftvm's stderr.
struct Vm {
    child: Child,
    start: Instant,
    lines: Arc<Mutex<Vec<(Duration, String)>>>,
    stderr: Arc<Mutex<String>>,
    name: String,
}

impl Vm {
    fn spawn(name: &str, args: &[String]) -> Self {
        eprintln!("[{name}] ftvm {}", args.join(" "));
        let mut child = Command::new(common::ftvm())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ftvm");
        let start = Instant::now();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let (l, n) = (lines.clone(), name.to_string());
        thread::spawn(move || {
            let mut reader = BufReader::new(out);
            let mut buf = Vec::new();
            while let Ok(k) = reader.read_until(b'\n', &mut buf) {
                if k == 0 {
                    break;
                }
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                buf.clear();
                let t = start.elapsed();
                eprintln!("[{n} {:7.1}s] {line}", t.as_secs_f64());
                l.lock().unwrap().push((t, line));
            }
        });
        let mut err = child.stderr.take().unwrap();
        let (e, n) = (stderr.clone(), name.to_string());
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(k) = err.read(&mut buf) {
                if k == 0 {
                    break;
                }
                let s = String::from_utf8_lossy(&buf[..k]).to_string();
                eprint!("[{n} stderr] {s}");
                e.lock().unwrap().push_str(&s);
            }
        });
        Self {
            child,
            start,
            lines,
            stderr,
            name: name.to_string(),
        }
    }

    fn find(&self, needle: &str) -> Option<(Duration, String)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|(_, l)| l.contains(needle))
            .cloned()
    }

    fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap();
        let skip = lines.len().saturating_sub(n);
        lines[skip..]
            .iter()
            .map(|(t, l)| format!("  {:7.1}s {l}", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Wait for a serial line containing `needle`; returns when it arrived. Panics with
    /// the log tail if the VM exits first or `timeout` passes.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> Duration {
        loop {
            if let Some((t, _)) = self.find(needle) {
                return t;
            }
            let exited = self.child.try_wait().unwrap();
            if exited.is_some() || self.start.elapsed() > timeout {
                thread::sleep(Duration::from_millis(300));
                if let Some((t, _)) = self.find(needle) {
                    return t;
                }
                panic!(
                    "[{}] {needle:?} not seen after {:.0}s (ftvm {}); last serial lines:\n{}\nftvm stderr:\n{}",
                    self.name,
                    self.start.elapsed().as_secs_f64(),
                    exited.map_or("still running".to_string(), |s| s.to_string()),
                    self.tail(40),
                    self.stderr.lock().unwrap()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Some(s) = self.child.try_wait().unwrap() {
                thread::sleep(Duration::from_millis(300));
                return Some(s);
            }
            thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `--cpus 2`: the kernel finds both CPUs in the MADT and brings the second one up; then
/// /init (a static program making two `int $0x80` system calls) asks for power-off, and the
/// kernel's ACPI code writes S5 into the FADT's PM1a control register, which ends the VM with
/// exit code 0. A missing MADT (one CPU), a failed AP start, or a PM1a register that does
/// not end the VM (the kernel then halts, and ftvm runs on) all fail this test.
#[test]
fn microvm_brings_up_two_cpus_and_powers_off_through_acpi() {
    let test = "microvm_brings_up_two_cpus_and_powers_off_through_acpi";
    if !enabled(test) {
        return;
    }
    let guest = microvm_guest();
    let tmp = common::tempdir();
    let initrd = tmp.path().join("poweroff.cpio");
    let init = std::fs::read(guest.dir.join("ftvm-poweroff")).unwrap();
    std::fs::write(&initrd, initramfs_with_init(&init)).unwrap();
    let cmdline = format!("{} rdinit=/init", guest.cmdline);
    let args: Vec<String> = [
        "run",
        "--kernel",
        guest.dir.join("kernel").to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        &cmdline,
        "--memory",
        "256M",
        "--cpus",
        "2",
        "--serial",
        "stdout",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let timeout = boot_timeout();
    let mut vm = Vm::spawn("cpus2", &args);
    let t_version = vm.wait_for("Linux version", timeout);
    let t_acpi = vm.wait_for("ACPI: MADT", timeout);
    let t_smp = vm.wait_for("smp: Brought up 1 node, 2 CPUs", timeout);
    let t_user = vm.wait_for("ftvm-poweroff: user space made a system call", timeout);
    let t_down = vm.wait_for("reboot: Power down", timeout);
    let status = vm
        .wait_exit(Duration::from_secs(60))
        .expect("ftvm should exit after the guest powered off");
    assert!(status.success(), "ftvm exited with {status}");
    assert!(
        vm.find("Kernel panic").is_none(),
        "the guest panicked:\n{}",
        vm.tail(40)
    );
    eprintln!(
        "{test}: Linux version {:.1}s, ACPI MADT {:.1}s, 2 CPUs up {:.1}s, /init's system call {:.1}s, power down {:.1}s, ftvm exited {:.1}s",
        t_version.as_secs_f64(),
        t_acpi.as_secs_f64(),
        t_smp.as_secs_f64(),
        t_user.as_secs_f64(),
        t_down.as_secs_f64(),
        vm.start.elapsed().as_secs_f64()
    );
}
