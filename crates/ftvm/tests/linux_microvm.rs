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
    let dir = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("script printed its directory")
            .trim(),
    );
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

/// An initramfs in `dir` whose `/init` is the script's program `name` (`ftvm-idle`,
/// `ftvm-poweroff`).
fn initrd_of(guest: &Guest, dir: &Path, name: &str) -> PathBuf {
    let initrd = dir.join(format!("{name}.cpio"));
    let init = std::fs::read(guest.dir.join(name)).unwrap();
    std::fs::write(&initrd, initramfs_with_init(&init)).unwrap();
    initrd
}

/// `ftvm run` arguments that boot the microVM kernel with initramfs `initrd` (its `/init`
/// runs first), 256 MiB, the serial console on stdout, plus `extra`.
fn initrd_run_args(guest: &Guest, initrd: &Path, extra: &[&str]) -> Vec<String> {
    let cmdline = format!("{} rdinit=/init", guest.cmdline);
    let mut args: Vec<String> = [
        "run",
        "--kernel",
        guest.dir.join("kernel").to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        &cmdline,
        "--memory",
        "256M",
        "--serial",
        "stdout",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
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
        while out.len() & 3 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() & 3 != 0 {
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
        Self::spawn_in(None, name, args)
    }

    /// Start `ftvm ARGS` (inside network namespace `ns`, if given: `ip netns exec` execs
    /// ftvm itself, so the child's pid is ftvm's).
    fn spawn_in(ns: Option<&Netns>, name: &str, args: &[String]) -> Self {
        eprintln!("[{name}] ftvm {}", args.join(" "));
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name, common::ftvm()]);
                c
            }
            None => Command::new(common::ftvm()),
        };
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ftvm");
        prioritize(child.id(), name);
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

/// Raises the CPU share of the scheduler autogroup (the session) that ftvm runs in. The
/// kernel boots with a periodic 10 ms tick, and its tick handler runs in the emulated
/// ring 0 of these hosts: a vCPU thread that gets only a quarter of a CPU (one autogroup
/// among several busy sessions, where `nice` alone does not reach) takes longer than
/// 10 ms per tick and livelocks in the timer interrupt (RCU stall reports, no progress).
/// Best effort: without the permission the boot is only slower on a busy host.
fn prioritize(pid: u32, name: &str) {
    let path = format!("/proc/{pid}/autogroup");
    if let Err(e) = std::fs::write(&path, "-10") {
        eprintln!("[{name}] note: could not raise the CPU share of {path}: {e}");
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

/// One vCPU, /init = `ftvm-poweroff` (two `int $0x80` system calls: a `write`, then
/// `reboot(POWER_OFF)`), with `--cpu-fixups syscall` (ring-3 `int $0x80` does not reach
/// the kernel on hosts like this one otherwise). The kernel loads the DSDT, finds `_S5`
/// and writes S5 into the FADT's PM1a control register, which ends the VM with exit code
/// 0. A DSDT the kernel cannot load (it then halts: `reboot: System halted`), a PM1a
/// register that does not end the VM, or a system call that never reaches the kernel all
/// fail this test.
#[test]
fn microvm_powers_off_through_acpi() {
    let test = "microvm_powers_off_through_acpi";
    if !enabled(test) {
        return;
    }
    let guest = microvm_guest();
    let tmp = common::tempdir();
    let initrd = initrd_of(&guest, tmp.path(), "ftvm-poweroff");
    let args = initrd_run_args(&guest, &initrd, &["--cpu-fixups", "syscall"]);
    let timeout = boot_timeout();
    let mut vm = Vm::spawn("poweroff", &args);
    let t_version = vm.wait_for("Linux version", timeout);
    let t_aml = vm.wait_for("ACPI AML tables successfully acquired and loaded", timeout);
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
        "{test}: Linux version {:.1}s, DSDT loaded {:.1}s, /init's system call {:.1}s, power down {:.1}s, ftvm exited {:.1}s",
        t_version.as_secs_f64(),
        t_aml.as_secs_f64(),
        t_user.as_secs_f64(),
        t_down.as_secs_f64(),
        vm.start.elapsed().as_secs_f64()
    );
}

/// `--cpus 2`: the kernel finds both CPUs in the MADT and brings the second one up
/// (INIT/SIPI, the AP's real-mode trampoline, then the AP's own start in long mode). A
/// missing MADT (one CPU) or a failed AP start fails this test. On hosts without VT-x/AMD-V
/// it also needs ftvm's `Emulator` CPU profile to hide KVM's hypercall-based paravirtual
/// features: with PV IPIs offered, the AP's first IPI is a `vmcall` that never completes
/// there, and the boot stops after `x86: Booting SMP configuration:`
/// (docs/linux-guests.md, "Two vCPUs"). /init is `ftvm-poweroff` (with `--cpu-fixups
/// syscall`), so the two-CPU kernel must also run user space and power off, which stops the
/// other CPU through an IPI first: ftvm must then exit 0.
#[test]
fn microvm_brings_up_two_cpus() {
    let test = "microvm_brings_up_two_cpus";
    if !enabled(test) {
        return;
    }
    let guest = microvm_guest();
    let tmp = common::tempdir();
    let initrd = initrd_of(&guest, tmp.path(), "ftvm-poweroff");
    let args = initrd_run_args(&guest, &initrd, &["--cpus", "2", "--cpu-fixups", "syscall"]);
    let timeout = boot_timeout();
    let mut vm = Vm::spawn("cpus2", &args);
    let t_madt = vm.wait_for("Using ACPI (MADT) for SMP configuration", timeout);
    let t_allow = vm.wait_for("smpboot: Allowing 2 CPUs", timeout);
    let t_booting = vm.wait_for("x86: Booting SMP configuration:", timeout);
    // The AP start itself takes a second or two of guest time; a hung AP start never
    // ends, so do not wait the whole boot timeout for it.
    let ap_bound = (t_booting + Duration::from_secs(600)).min(timeout);
    let t_smp = vm.wait_for("smp: Brought up 1 node, 2 CPUs", ap_bound);
    let t_total = vm.wait_for("smpboot: Total of 2 processors activated", timeout);
    let t_init = vm.wait_for("Run /init as init process", timeout);
    vm.wait_for("ftvm-poweroff: user space made a system call", timeout);
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
        "{test}: MADT {:.1}s, 2 CPUs allowed {:.1}s, AP start {:.1}s, 2 CPUs up {:.1}s (activated {:.1}s), /init {:.1}s, power down {:.1}s",
        t_madt.as_secs_f64(),
        t_allow.as_secs_f64(),
        t_booting.as_secs_f64(),
        t_smp.as_secs_f64(),
        t_total.as_secs_f64(),
        t_init.as_secs_f64(),
        t_down.as_secs_f64()
    );
}

/// The client side's address (on the TAP or bridge in the test's namespace) and the
/// guest's, configured by the kernel from `ip=`.
const HOST_IP: &str = "198.18.13.1";
const GUEST_IP: &str = "198.18.13.2";
/// The guest's MAC, given to both sides of a protected pair (so the bridge keeps
/// forwarding to whichever TAP the running side uses after the announce).
const GUEST_MAC: &str = "02:00:c6:12:0d:02";

/// A network namespace holding the test's TAP devices (bridged when there are two) and the
/// client address; removed on drop.
struct Netns {
    name: String,
}

fn sh(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("run a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Netns {
    /// A namespace with TAPs `taps`: one TAP gets [`HOST_IP`] itself; two are put on a
    /// bridge that has it.
    fn new(taps: &[&str]) -> Netns {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "ftlx{}x{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        sh(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        sh(ns.cmd("ip").args(["link", "set", "lo", "up"]));
        let addr = format!("{HOST_IP}/24");
        for tap in taps {
            sh(ns.cmd("ip").args(["tuntap", "add", tap, "mode", "tap"]));
        }
        let carrier = if taps.len() == 1 {
            taps[0].to_string()
        } else {
            sh(ns.cmd("ip").args(["link", "add", "br0", "type", "bridge"]));
            for tap in taps {
                sh(ns.cmd("ip").args(["link", "set", tap, "master", "br0"]));
                sh(ns.cmd("ip").args(["link", "set", tap, "up"]));
            }
            "br0".to_string()
        };
        sh(ns.cmd("ip").args(["addr", "add", &addr, "dev", &carrier]));
        sh(ns.cmd("ip").args(["link", "set", &carrier, "up"]));
        ns
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// `ip=` for the guest: static address on eth0, no autoconfiguration protocol.
fn ip_param() -> String {
    format!("ip={GUEST_IP}::{HOST_IP}:255.255.255.0:ftvm:eth0:off")
}

fn tools_or_skip(test: &str) -> bool {
    for tool in ["ip", "ping", "fsck.ext4"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            eprintln!("{test}: SKIPPED: `{tool}` is not installed");
            return false;
        }
    }
    true
}

/// What one `ping` run saw.
#[derive(Debug, Default)]
struct PingResult {
    /// icmp_seq of every reply, in arrival order (duplicates included).
    replies: Vec<u32>,
    /// Replies ping reported as duplicates.
    dups: u32,
    /// Replies whose payload was not what was sent ("wrong data byte").
    wrong_data: u32,
    text: String,
}

fn ping(ns: &Netns, count: u32, interval: &str, wait_secs: u32) -> PingResult {
    let out = ns
        .cmd("ping")
        .args([
            "-n",
            "-c",
            &count.to_string(),
            "-i",
            interval,
            "-W",
            &wait_secs.to_string(),
            GUEST_IP,
        ])
        .output()
        .expect("run ping");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let mut r = PingResult::default();
    for line in text.lines() {
        if let Some(rest) = line.split("icmp_seq=").nth(1) {
            if line.contains("bytes from") {
                let seq: u32 = rest
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                r.replies.push(seq);
                if line.contains("DUP!") {
                    r.dups += 1;
                }
            }
        }
        if line.contains("wrong data byte") {
            r.wrong_data += 1;
        }
    }
    r.text = text;
    r
}

/// The microVM kernel brings up eth0 from `ip=`, using its own virtio-net driver on
/// ftvm's virtio-mmio device (found through the `virtio_mmio.device=` word ftvm appends),
/// and answers `ping -c 5` from its own network stack. /init is ftvm-idle in an initramfs.
/// A device the driver cannot bind (no eth0: IP-Config fails), a wrong MAC in the config
/// space, or frames that do not reach the TAP (no replies) all fail this test.
#[test]
fn microvm_answers_ping_through_virtio_net() {
    let test = "microvm_answers_ping_through_virtio_net";
    if !enabled(test) || !tools_or_skip(test) {
        return;
    }
    let guest = microvm_guest();
    let tmp = common::tempdir();
    let initrd = initrd_of(&guest, tmp.path(), "ftvm-idle");
    let ns = Netns::new(&["ftlxtap0"]);
    let cmdline = format!("{} rdinit=/init {}", guest.cmdline, ip_param());
    let net = format!("tap=ftlxtap0,mac={GUEST_MAC}");
    let args: Vec<String> = [
        "run",
        "--kernel",
        guest.dir.join("kernel").to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        &cmdline,
        "--net",
        &net,
        "--memory",
        "256M",
        "--serial",
        "stdout",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let timeout = boot_timeout();
    let mut vm = Vm::spawn_in(Some(&ns), "net", &args);
    let t_mmio = vm.wait_for(
        "virtio-mmio: Registering device virtio-mmio.0 at 0xd0000000",
        timeout,
    );
    let t_ip = vm.wait_for("IP-Config: Complete", timeout);
    let cfg = vm.wait_for(&format!("hwaddr={GUEST_MAC}"), timeout);
    let t_init = vm.wait_for("Run /init as init process", timeout);
    let cfg_line = vm.find(&format!("ipaddr={GUEST_IP}"));
    assert!(
        cfg_line.is_some(),
        "IP-Config did not report ipaddr={GUEST_IP}:\n{}",
        vm.tail(30)
    );
    let t0 = Instant::now();
    let r = ping(&ns, 5, "1", 20);
    eprintln!("{}", r.text);
    let mut answered = r.replies.clone();
    answered.sort_unstable();
    answered.dedup();
    assert_eq!(
        answered,
        vec![1, 2, 3, 4, 5],
        "every echo request must be answered:\n{}",
        r.text
    );
    assert_eq!(r.wrong_data, 0, "{}", r.text);
    eprintln!(
        "{test}: virtio-mmio registered {:.1}s, IP-Config {:.1}s (hwaddr {:.1}s), /init {:.1}s, ping -c 5 took {:.1}s",
        t_mmio.as_secs_f64(),
        t_ip.as_secs_f64(),
        cfg.as_secs_f64(),
        t_init.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

/// The same guest, protected, with its root file system on virtio-blk: each side has its
/// own copy of the image (no shared storage), the primary's writes reach the backup's copy
/// in the epoch stream. A backup (`ftvm backup`, its TAP on the same bridge) takes over
/// when the primary is SIGKILLed during `ping -i 0.2`, and the guest keeps answering.
/// Allowed: a few lost replies around the takeover. Not allowed: replies with wrong data,
/// fewer than [`MIN_AFTER_KILL`] answers after the kill, or a backup that does not take
/// over (no TAKEOVER, or it exits). Afterwards the backup's image must still be a sound
/// file system: a fresh kernel mounts it read-only (replaying the journal the killed
/// guest left), and `fsck.ext4 -n -f` then finds nothing to fix. A backup image holding a
/// torn epoch or missing writes the guest's journal depends on fails that check.
#[test]
fn microvm_keeps_answering_ping_when_the_primary_is_killed() {
    let test = "microvm_keeps_answering_ping_when_the_primary_is_killed";
    if !enabled(test) || !tools_or_skip(test) {
        return;
    }
    const COUNT: u32 = 150;
    const KILL_AFTER: u32 = 40;
    const MIN_AFTER_KILL: usize = 60;
    const MAX_LOST: usize = 15;
    if !has_disk_or_skip(test) {
        return;
    }
    let guest = microvm_guest();
    let tmp = common::tempdir();
    let primary_disk = tmp.path().join("primary.ext4");
    let backup_disk = tmp.path().join("backup.ext4");
    std::fs::copy(guest.dir.join("rootfs.ext4"), &primary_disk).unwrap();
    std::fs::copy(guest.dir.join("rootfs.ext4"), &backup_disk).unwrap();
    let primary_disk_arg = format!("path={}", primary_disk.display());
    let backup_disk_arg = format!("path={}", backup_disk.display());
    let ns = Netns::new(&["ftlxtapp", "ftlxtapb"]);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let to_strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let backup_net = format!("tap=ftlxtapb,mac={GUEST_MAC}");
    // One lock file fences the pair (never two live copies of the guest).
    let fence_dir = tempfile::tempdir().unwrap();
    let fence = format!("lock:{}", fence_dir.path().join("fence.lock").display());
    let mut backup = Vm::spawn_in(
        Some(&ns),
        "backup",
        &to_strings(&[
            "backup",
            "--listen",
            &addr,
            "--memory",
            "256M",
            "--net",
            &backup_net,
            "--disk",
            &backup_disk_arg,
            "--serial",
            "stdout",
            "--fence",
            &fence,
        ]),
    );
    let t0 = Instant::now();
    while !backup
        .stderr
        .lock()
        .unwrap()
        .contains("waiting for a primary")
    {
        assert!(
            backup.child.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(60),
            "backup did not start listening: {}",
            backup.stderr.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let cmdline = format!(
        "{} root=/dev/vda rw init=/sbin/ftvm-idle {}",
        guest.cmdline,
        ip_param()
    );
    let primary_net = format!("tap=ftlxtapp,mac={GUEST_MAC}");
    let mut primary = Vm::spawn_in(
        Some(&ns),
        "primary",
        &to_strings(&[
            "run",
            "--kernel",
            guest.dir.join("kernel").to_str().unwrap(),
            "--cmdline",
            &cmdline,
            "--net",
            &primary_net,
            "--disk",
            &primary_disk_arg,
            "--memory",
            "256M",
            "--protect",
            &addr,
            "--fence",
            &fence,
            "--serial",
            "stdout",
        ]),
    );
    let timeout = boot_timeout();
    let t_init = primary.wait_for("Run /sbin/ftvm-idle as init process", timeout);
    assert!(
        primary
            .stderr
            .lock()
            .unwrap()
            .contains("the VM is protected"),
        "the primary is not protected: {}",
        primary.stderr.lock().unwrap()
    );
    // A first answer before the measured run (ARP resolved, guest reachable).
    let first = ping(&ns, 3, "1", 20);
    assert!(
        !first.replies.is_empty(),
        "the protected guest does not answer at all:\n{}",
        first.text
    );
    let ping_ns = ns.name.clone();
    let pinger = thread::spawn(move || {
        let ns = Netns { name: ping_ns };
        let r = ping(&ns, COUNT, "0.2", 5);
        std::mem::forget(ns); // the namespace is the test's; do not delete it here
        r
    });
    thread::sleep(Duration::from_millis(200 * u64::from(KILL_AFTER)));
    let killed_at = Instant::now();
    primary.child.kill().unwrap();
    let _ = primary.child.wait();
    eprintln!("{test}: primary SIGKILLed");
    let r = pinger.join().unwrap();
    eprintln!("{}", r.text);
    let takeover = backup.stderr.lock().unwrap().contains("TAKEOVER");
    assert!(
        takeover,
        "the backup did not take over: {}",
        backup.stderr.lock().unwrap()
    );
    assert!(
        backup.child.try_wait().unwrap().is_none(),
        "the backup exited instead of running the guest: {}",
        backup.stderr.lock().unwrap()
    );
    assert_eq!(r.wrong_data, 0, "replies with wrong data:\n{}", r.text);
    let mut answered = r.replies.clone();
    answered.sort_unstable();
    answered.dedup();
    let after_kill = answered.iter().filter(|&&s| s > KILL_AFTER + 1).count();
    let lost = COUNT as usize - answered.len();
    eprintln!(
        "{test}: /init at {:.1}s; {} of {COUNT} answered ({lost} lost, {} duplicates), {after_kill} after the kill; takeover seen {:.1}s after the kill",
        t_init.as_secs_f64(),
        answered.len(),
        r.dups,
        killed_at.elapsed().as_secs_f64()
    );
    assert!(
        after_kill >= MIN_AFTER_KILL,
        "only {after_kill} answers after the kill:\n{}",
        r.text
    );
    assert!(lost <= MAX_LOST, "{lost} echo replies lost:\n{}", r.text);
    // The guest runs on the backup with its root mounted read-write: stop it the hard
    // way, then check the image it leaves.
    backup.child.kill().unwrap();
    let _ = backup.child.wait();
    let t_fsck = Instant::now();
    check_image_boots_and_is_clean(&guest, &backup_disk, timeout);
    eprintln!(
        "{test}: the backup's image mounted again and fsck.ext4 -n found it clean ({:.1}s)",
        t_fsck.elapsed().as_secs_f64()
    );
}

/// Boots `image` as a read-only root on a plain `ftvm run` (the kernel replays the ext4
/// journal a killed guest left behind; a read-only mount writes nothing else), stops the
/// VM once its init runs, and requires `fsck.ext4 -n -f` to report a clean file system.
fn check_image_boots_and_is_clean(guest: &Guest, image: &Path, timeout: Duration) {
    let cmdline = format!("{} root=/dev/vda ro init=/sbin/ftvm-idle", guest.cmdline);
    let disk_arg = format!("path={}", image.display());
    let args: Vec<String> = [
        "run",
        "--kernel",
        guest.dir.join("kernel").to_str().unwrap(),
        "--cmdline",
        &cmdline,
        "--disk",
        &disk_arg,
        "--memory",
        "256M",
        "--serial",
        "stdout",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut vm = Vm::spawn("reboot", &args);
    vm.wait_for("VFS: Mounted root (ext4 filesystem)", timeout);
    vm.wait_for("Run /sbin/ftvm-idle as init process", timeout);
    assert!(
        vm.find("Kernel panic").is_none(),
        "the backup's image did not boot:\n{}",
        vm.tail(40)
    );
    vm.child.kill().unwrap();
    let _ = vm.child.wait();
    let out = sh(Command::new("fsck.ext4").arg("-n").arg("-f").arg(image));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}

/// True when this ftvm has `--disk` (virtio-blk); says so loudly otherwise.
fn has_disk_or_skip(test: &str) -> bool {
    let out = Command::new(common::ftvm())
        .args(["run", "--help"])
        .output()
        .expect("ftvm run --help");
    if String::from_utf8_lossy(&out.stdout).contains("--disk") {
        return true;
    }
    eprintln!("{test}: SKIPPED: this ftvm has no --disk (virtio-blk)");
    false
}

/// Root on virtio-blk: the kernel probes the disk (`vda`), mounts the script's ext4 image
/// read-write as `/`, runs `/sbin/ftvm-idle` from it, and answers ping. A disk the driver
/// cannot read (no superblock, so no mount: the kernel panics, and `panic=-1` ends the
/// VM) fails this test. (The image is not checked afterwards: the VM is killed with the
/// file system mounted, so its journal needs replaying first.)
#[test]
fn microvm_mounts_its_root_from_virtio_blk() {
    let test = "microvm_mounts_its_root_from_virtio_blk";
    if !enabled(test) || !tools_or_skip(test) || !has_disk_or_skip(test) {
        return;
    }
    let guest = microvm_guest();
    let tmp = common::tempdir();
    let disk = tmp.path().join("root.ext4");
    std::fs::copy(guest.dir.join("rootfs.ext4"), &disk).unwrap();
    let ns = Netns::new(&["ftlxtap0"]);
    let cmdline = format!(
        "{} root=/dev/vda rw init=/sbin/ftvm-idle {}",
        guest.cmdline,
        ip_param()
    );
    let net = format!("tap=ftlxtap0,mac={GUEST_MAC}");
    let disk_arg = format!("path={}", disk.display());
    let args: Vec<String> = [
        "run",
        "--kernel",
        guest.dir.join("kernel").to_str().unwrap(),
        "--cmdline",
        &cmdline,
        "--net",
        &net,
        "--disk",
        &disk_arg,
        "--memory",
        "256M",
        "--serial",
        "stdout",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let timeout = boot_timeout();
    let mut vm = Vm::spawn_in(Some(&ns), "disk", &args);
    // Nets take the first slots, then disks.
    vm.wait_for("virtio-mmio.1 at 0xd0001000", timeout);
    let t_vda = vm.wait_for("[vda]", timeout);
    let t_ip = vm.wait_for("IP-Config: Complete", timeout);
    let t_root = vm.wait_for("VFS: Mounted root (ext4 filesystem)", timeout);
    let t_init = vm.wait_for("Run /sbin/ftvm-idle as init process", timeout);
    let r = ping(&ns, 5, "1", 20);
    eprintln!("{}", r.text);
    let mut answered = r.replies.clone();
    answered.sort_unstable();
    answered.dedup();
    assert_eq!(answered, vec![1, 2, 3, 4, 5], "{}", r.text);
    eprintln!(
        "{test}: vda {:.1}s, IP-Config {:.1}s, root mounted {:.1}s, init {:.1}s",
        t_vda.as_secs_f64(),
        t_ip.as_secs_f64(),
        t_root.as_secs_f64(),
        t_init.as_secs_f64()
    );
}

/// `/init` for the system call test: 64-bit `syscall`s (getpid, checked against 1, and
/// write), 32-bit `int $0x80` (getpid, write), then `reboot(RESTART)` through `syscall`
/// (a restart ends the VM whether the kernel resets through ACPI or the keyboard
/// controller; power-off needs the kernel's ACPI namespace).
/// Any wrong return value prints a FAILED line and spins instead of powering off.
const SYSCALL_INIT_S: &str = r#"
    .globl _start
    .text
_start:
    mov $25, %r12d
1:  mov $39, %eax               # getpid
    syscall
    cmp $1, %rax
    jne fail
    dec %r12d
    jnz 1b
    mov $1, %eax                # write(1, msg1, len1)
    mov $1, %edi
    lea msg1(%rip), %rsi
    mov $(msg1_end - msg1), %edx
    syscall
    cmp $(msg1_end - msg1), %rax
    jne fail
    mov $5, %r12d
2:  mov $20, %eax               # getpid (i386)
    int $0x80
    cmp $1, %eax
    jne fail
    dec %r12d
    jnz 2b
    mov $4, %eax                # write (i386)
    mov $1, %ebx
    lea msg2(%rip), %rcx
    mov $(msg2_end - msg2), %edx
    int $0x80
    cmp $(msg2_end - msg2), %eax
    jne fail
    mov $169, %eax              # reboot(LINUX_REBOOT_CMD_RESTART)
    mov $0xfee1dead, %edi
    mov $672274793, %esi
    mov $0x01234567, %edx
    syscall
fail:
    mov $4, %eax
    mov $1, %ebx
    lea msgf(%rip), %rcx
    mov $(msgf_end - msgf), %edx
    int $0x80
3:  pause
    jmp 3b
    .section .rodata
msg1:
    .ascii "ftvm-syscall: 25 getpid through syscall returned pid 1, this line through syscall write\n"
msg1_end:
msg2:
    .ascii "ftvm-syscall: 5 getpid through int $0x80 returned pid 1, this line through int $0x80 write\n"
msg2_end:
msgf:
    .ascii "ftvm-syscall: FAILED: a system call returned a wrong value\n"
msgf_end:
"#;

/// The guest directory: `FTVM_LINUX_MICROVM_DIR` (an existing output directory of
/// scripts/linux-guest.sh --microvm, used as it is), else the script's.
fn microvm_guest_or_dir() -> Guest {
    match std::env::var_os("FTVM_LINUX_MICROVM_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let cmdline = std::fs::read_to_string(dir.join("cmdline"))
                .unwrap_or_else(|e| panic!("{}/cmdline: {e}", dir.display()))
                .trim()
                .to_string();
            Guest { dir, cmdline }
        }
        None => microvm_guest(),
    }
}

/// `--cpu-fixups syscall`: ring-3 `syscall` and `int $0x80` reach the kernel and return.
/// /init (a static program assembled here with gcc) makes 25 `getpid` calls through
/// `syscall` and checks each returns 1, writes a line through `syscall`, makes 5 `getpid`
/// and a `write` through `int $0x80`, and restarts through `syscall`. The test waits for
/// both of /init's own lines, `reboot: Restarting system` and ftvm's exit with code 0. Without the
/// fix-up (or with one that returns to the wrong place or loses registers) the first
/// `syscall` kills init (panic) or returns a wrong value (FAILED line, no power-off).
#[test]
fn microvm_userspace_makes_system_calls_with_the_syscall_fixup() {
    let test = "microvm_userspace_makes_system_calls_with_the_syscall_fixup";
    if !enabled(test) {
        return;
    }
    if Command::new("gcc").arg("--version").output().is_err() {
        eprintln!("{test}: SKIPPED: gcc is needed to assemble /init");
        return;
    }
    let guest = microvm_guest_or_dir();
    let tmp = common::tempdir();
    let src = tmp.path().join("init.S");
    let bin = tmp.path().join("init");
    std::fs::write(&src, SYSCALL_INIT_S).unwrap();
    sh(Command::new("gcc")
        .args([
            "-nostdlib",
            "-static",
            "-no-pie",
            "-Wl,--build-id=none",
            "-o",
        ])
        .arg(&bin)
        .arg(&src));
    let initrd = tmp.path().join("syscall.cpio");
    std::fs::write(&initrd, initramfs_with_init(&std::fs::read(&bin).unwrap())).unwrap();
    let args = initrd_run_args(&guest, &initrd, &["--cpu-fixups", "syscall"]);
    let timeout = boot_timeout();
    let mut vm = Vm::spawn("syscall", &args);
    let t_init = vm.wait_for("Run /init as init process", timeout);
    let t_sys = vm.wait_for(
        "ftvm-syscall: 25 getpid through syscall returned pid 1",
        timeout,
    );
    let t_int80 = vm.wait_for(
        "ftvm-syscall: 5 getpid through int $0x80 returned pid 1",
        timeout,
    );
    let t_down = vm.wait_for("reboot: Restarting system", timeout);
    let status = vm
        .wait_exit(Duration::from_secs(120))
        .expect("ftvm should exit after the guest's reboot system call");
    assert!(status.success(), "ftvm exited with {status}");
    assert!(
        vm.find("FAILED").is_none() && vm.find("Kernel panic").is_none(),
        "{}",
        vm.tail(40)
    );
    eprintln!(
        "{test}: Run /init {:.1}s, syscall line {:.1}s, int $0x80 line {:.1}s, restart {:.1}s",
        t_init.as_secs_f64(),
        t_sys.as_secs_f64(),
        t_int80.as_secs_f64(),
        t_down.as_secs_f64()
    );
}
