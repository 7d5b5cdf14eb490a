//! Opt-in end-to-end test: boot Debian's cloud kernel with a busybox initramfs.
//!
//! Runs only with `FTVM_LINUX_TEST=1` (it downloads ~30 MB of Debian packages with
//! apt-get, needs root and /dev/kvm, and on hosts without hardware virtualization takes
//! well over ten minutes); it never runs in CI. See docs/linux-guests.md.
//!
//! ```text
//! FTVM_LINUX_TEST=1 cargo test -p ftvm --test linux_boot -- --nocapture
//! ```
//!
//! What it asserts depends on the host:
//! - with hardware virtualization (`vmx`/`svm` in /proc/cpuinfo): the initramfs's /init
//!   runs and prints its marker line (`ftvm-linux: init reached`), and the guest then ends
//!   the VM itself (`reboot -f`, the i8042 reset);
//! - without (a software nested KVM that emulates guest ring-0 code): the kernel gets as
//!   far as `Run /init as init process`. /init itself cannot run there: the host's KVM
//!   does not enter ring 0 on a ring-3 `syscall`, so busybox dies at its first system call.
//!
//! Environment:
//! - `FTVM_LINUX_TEST=1`: run at all.
//! - `FTVM_LINUX_DIR`: cache directory for the kernel and initramfs (default
//!   `target/linux-guest/`), passed on to scripts/linux-guest.sh.
//! - `FTVM_LINUX_TIMEOUT_SECS`: how long the boot may take (default 2700: 45 min).
//! - `FTVM_LINUX_CMDLINE_EXTRA`: appended to the kernel command line, after what is added
//!   on hosts without hardware virtualization ([`NO_HW_VIRT_EXTRA`],
//!   [`NO_HW_VIRT_SPEEDUP`]).
//! - `FTVM_LINUX_CRYPTO_TESTS=1`: keep the kernel's crypto self-tests on hosts without
//!   hardware virtualization (see [`NO_HW_VIRT_SPEEDUP`]).
//! - `FTVM_LINUX_EXPECT`: `init` or `run-init` to override the host detection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The kernel's line just before it executes /init.
const RUN_INIT: &str = "Run /init as init process";
/// The line the initramfs's /init prints (scripts/linux-guest.sh).
const INIT_MARKER: &str = "ftvm-linux: init reached";
/// The command line the test boots with: serial console only, reboot at once on panic.
const CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1";
/// Added on hosts without hardware virtualization, and why (docs/linux-guests.md). The
/// host's KVM ignores KVM_SET_CPUID2 for these features, so hiding them in ftvm's CPU
/// profile has no effect, and its instruction emulator cannot run their instructions in
/// guest ring 0; ftvm's exit handler cannot emulate them either (they touch guest memory
/// or SIMD state):
/// - `noxsave`: xsave/xrstor; the kernel falls back to fxsave/fxrstor, which the emulator has.
/// - `clearcpuid=ssse3`: the built-in BLAKE2s (random driver) would run SSSE3 code under
///   kernel_fpu_begin(), whose `ldmxcsr` and `pshufb` the emulator lacks.
const NO_HW_VIRT_EXTRA: &str = "noxsave clearcpuid=ssse3";
/// Also added on hosts without hardware virtualization, for speed only: the crypto
/// manager's self-tests of the built-in algorithms (late initcall `crypto_algapi_init`)
/// took 628 s of the 1272 s to `Run /init` there; without them it is 322 s. Set
/// `FTVM_LINUX_CRYPTO_TESTS=1` to keep them.
const NO_HW_VIRT_SPEEDUP: &str = "cryptomgr.notests";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/ftvm has a repository two levels up")
        .to_path_buf()
}

fn host_has_hw_virt() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

fn env_secs(name: &str, default: u64) -> Duration {
    let secs = match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: expected a number of seconds")),
        Err(_) => default,
    };
    Duration::from_secs(secs)
}

/// Run scripts/linux-guest.sh; returns the directory holding vmlinuz and initramfs.cpio.
fn fetch_guest() -> PathBuf {
    let script = repo_root().join("scripts/linux-guest.sh");
    eprintln!("linux_boot: running {}", script.display());
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/linux-guest.sh");
    assert!(
        out.status.success(),
        "scripts/linux-guest.sh failed ({}); it needs root, apt-get and the Debian repositories",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("script printed its directory")
            .trim(),
    );
    for f in ["vmlinuz", "initramfs.cpio"] {
        assert!(dir.join(f).is_file(), "{} missing", dir.join(f).display());
    }
    dir
}

enum Line {
    Serial(String),
    Stderr(String),
}

/// Forward a pipe's lines to `tx`; the thread ends at EOF.
fn forward<R: Read + Send + 'static>(pipe: R, tx: mpsc::Sender<Line>, wrap: fn(String) -> Line) {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    if tx.send(wrap(line)).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// Kills the VM when the test ends, however it ends.
struct VmProcess(Child);

impl Drop for VmProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

#[test]
fn debian_cloud_kernel_boots() {
    if std::env::var("FTVM_LINUX_TEST").as_deref() != Ok("1") {
        eprintln!(
            "linux_boot: SKIPPED (opt-in): set FTVM_LINUX_TEST=1 to boot Debian's cloud kernel \
             (needs root, apt-get, /dev/kvm; see docs/linux-guests.md)"
        );
        return;
    }
    if !Path::new("/dev/kvm").exists() {
        eprintln!(
            "linux_boot: SKIPPED: FTVM_LINUX_TEST=1 but /dev/kvm does not exist on this host"
        );
        return;
    }

    let dir = fetch_guest();
    let hw_virt = host_has_hw_virt();
    let expect_init = match std::env::var("FTVM_LINUX_EXPECT").as_deref() {
        Ok("init") => true,
        Ok("run-init") => false,
        Ok(other) => panic!("FTVM_LINUX_EXPECT={other:?}: use `init` or `run-init`"),
        Err(_) => hw_virt,
    };
    let target = if expect_init { INIT_MARKER } else { RUN_INIT };
    let timeout = env_secs("FTVM_LINUX_TIMEOUT_SECS", 2700);
    let mut cmdline = CMDLINE.to_string();
    if !hw_virt {
        cmdline.push(' ');
        cmdline.push_str(NO_HW_VIRT_EXTRA);
        if std::env::var("FTVM_LINUX_CRYPTO_TESTS").as_deref() != Ok("1") {
            cmdline.push(' ');
            cmdline.push_str(NO_HW_VIRT_SPEEDUP);
        }
    }
    if let Ok(extra) = std::env::var("FTVM_LINUX_CMDLINE_EXTRA") {
        if !extra.trim().is_empty() {
            cmdline.push(' ');
            cmdline.push_str(extra.trim());
        }
    }
    eprintln!(
        "linux_boot: host {} hardware virtualization; waiting up to {}s for {target:?}; cmdline {cmdline:?}",
        if hw_virt { "has" } else { "lacks" },
        timeout.as_secs()
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_ftvm"))
        .arg("run")
        .arg("--kernel")
        .arg(dir.join("vmlinuz"))
        .arg("--initrd")
        .arg(dir.join("initramfs.cpio"))
        .args(["--cmdline", &cmdline])
        .args(["--memory", "512M", "--cpus", "1", "--serial", "stdout"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ftvm");
    let (tx, rx) = mpsc::channel();
    forward(child.stdout.take().unwrap(), tx.clone(), Line::Serial);
    forward(child.stderr.take().unwrap(), tx, Line::Stderr);
    let mut vm = VmProcess(child);

    let start = Instant::now();
    let mut serial: Vec<String> = Vec::new();
    let mut stderr: Vec<String> = Vec::new();
    let mut reached: Option<Duration> = None;
    let mut milestones: Vec<(Duration, String)> = Vec::new();
    // After the target line: how long to keep watching (the guest should end the VM on a
    // host with hardware virtualization; here, to log what the host does with /init).
    let grace = Duration::from_secs(if expect_init { 120 } else { 60 });
    loop {
        let now = start.elapsed();
        let deadline = match reached {
            Some(t) => t + grace,
            None => timeout,
        };
        if now >= deadline {
            break;
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_secs(60))) {
            Ok(Line::Serial(l)) => {
                let t = start.elapsed();
                eprintln!("[{:8.1}s] {l}", t.as_secs_f64());
                for m in [
                    "Linux version",
                    "Freeing unused kernel image",
                    RUN_INIT,
                    INIT_MARKER,
                ] {
                    if l.contains(m) {
                        milestones.push((t, m.to_string()));
                    }
                }
                if reached.is_none() && l.contains(target) {
                    reached = Some(t);
                }
                serial.push(l);
            }
            Ok(Line::Stderr(l)) => {
                eprintln!("[{:8.1}s] (ftvm stderr) {l}", start.elapsed().as_secs_f64());
                stderr.push(l);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if reached.is_none() {
                    eprintln!(
                        "linux_boot: {:.0}s, {} serial lines so far",
                        start.elapsed().as_secs_f64(),
                        serial.len()
                    );
                }
            }
            // Both pipes closed: ftvm exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Pipes closed means ftvm is exiting: give it a moment to be reaped.
    let mut status = None;
    for _ in 0..50 {
        if let Ok(Some(s)) = vm.0.try_wait() {
            status = Some(s);
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    if status.is_none() {
        let _ = vm.0.kill();
    }
    drop(vm);

    eprintln!("linux_boot: milestones:");
    for (t, m) in &milestones {
        eprintln!("  {:8.1}s  {m}", t.as_secs_f64());
    }
    match status {
        Some(s) => eprintln!("linux_boot: ftvm exited: {s}"),
        None => eprintln!("linux_boot: ftvm killed by the test"),
    }
    let tail = serial
        .iter()
        .rev()
        .take(30)
        .rev()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    let Some(t) = reached else {
        panic!(
            "{target:?} not reached after {:.0}s (ftvm {}).\nftvm stderr:\n{}\nlast serial lines:\n{tail}",
            start.elapsed().as_secs_f64(),
            status.map_or("still running, killed".to_string(), |s| s.to_string()),
            stderr.join("\n"),
        );
    };
    eprintln!(
        "linux_boot: reached {target:?} after {:.1}s",
        t.as_secs_f64()
    );
    if expect_init {
        // The guest ends the VM itself (`reboot -f`: i8042 reset, ftvm exits 0).
        let s = status.expect("the guest should end the VM after /init's marker line");
        assert!(s.success(), "ftvm exited with {s} after /init");
    }
}
