//! The key-value service (`kv=1`) end to end under QEMU's microvm machine: a TAP in a
//! network namespace made by the test, the guest's virtio-net driver, smoltcp, and
//! Redis's own client tools (`redis-cli`, `redis-benchmark`) as the client; with `disk=1`
//! a virtio-blk raw image that survives SIGKILL of QEMU.
//!
//! Skipped loudly without qemu-system-x86_64, redis-tools, `ip` or root (network
//! namespaces need CAP_NET_ADMIN).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ftvm_testguest::ELF;

const HOST_IP: &str = "198.18.0.1";
const GUEST_IP: &str = "198.18.0.2";

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Why this machine cannot run the test, if it cannot.
fn missing() -> Option<String> {
    if !have("qemu-system-x86_64", "--version") {
        return Some("qemu-system-x86_64 not found (apt-get install qemu-system-x86)".into());
    }
    if !have("redis-cli", "--version") || !have("redis-benchmark", "--version") {
        return Some("redis-cli/redis-benchmark not found (apt-get install redis-tools)".into());
    }
    if !have("ip", "-V") {
        return Some("ip not found (apt-get install iproute2)".into());
    }
    let uid = Command::new("id").arg("-u").output().ok();
    if uid.is_none_or(|o| String::from_utf8_lossy(&o.stdout).trim() != "0") {
        return Some("not root: network namespaces and TAP devices need CAP_NET_ADMIN".into());
    }
    None
}

macro_rules! require_env {
    () => {
        if let Some(why) = missing() {
            eprintln!("\n!!! SKIPPED: {why}; the kv service under QEMU was NOT tested !!!\n");
            return;
        }
    };
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with a TAP device (HOST_IP/24), removed on drop.
struct Netns {
    name: String,
    tap: String,
}

impl Netns {
    fn new() -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let id = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("tgkv{}x{id}", std::process::id());
        let tap = "tgkvtap0".to_string();
        ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name, tap };
        ok(ns.cmd("ip").args(["link", "set", "lo", "up"]));
        ok(ns.cmd("ip").args(["tuntap", "add", &ns.tap, "mode", "tap"]));
        ok(ns
            .cmd("ip")
            .args(["addr", "add", &format!("{HOST_IP}/24"), "dev", &ns.tap]));
        ok(ns.cmd("ip").args(["link", "set", &ns.tap, "up"]));
        ns
    }

    /// `cmd` run inside the namespace.
    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }

    /// `redis-cli -h GUEST_IP args...`: (stdout, success).
    fn cli(&self, args: &[&str]) -> String {
        let out = run(self
            .cmd("timeout")
            .args(["20", "redis-cli", "-h", GUEST_IP])
            .args(args));
        assert!(
            out.status.success(),
            "redis-cli {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// Raw bytes to the service over one TCP connection (bash /dev/tcp); everything the
    /// guest sent back before it closed the connection or `secs` passed, and whether it
    /// closed it.
    fn raw(&self, bytes: &str, secs: u32) -> (String, bool) {
        let script = format!(
            "exec 3<>/dev/tcp/{GUEST_IP}/6379 && printf '{bytes}' >&3 && timeout {secs} cat <&3; echo \"[cat=$?]\""
        );
        let out = run(self.cmd("bash").args(["-c", &script]));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let closed = text.trim_end().ends_with("[cat=0]");
        let body = text
            .rsplit_once("[cat=")
            .map_or(text.as_str(), |(b, _)| b)
            .to_string();
        (body, closed)
    }
}

impl Netns {
    /// Runs `f` on a thread that joined the namespace (sockets it opens live there).
    fn inside<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open the netns");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A QEMU microvm running the guest in `ns`; killed (SIGKILL) on drop.
struct Qemu {
    child: Child,
    serial: PathBuf,
}

fn workdir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "ftvm-tgkv-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

impl Qemu {
    fn start(ns: &Netns, dir: &Path, cmdline: &str, disk: Option<&Path>) -> Qemu {
        let elf = dir.join("guest.elf");
        std::fs::write(&elf, ELF).expect("write the guest ELF");
        static N: AtomicUsize = AtomicUsize::new(0);
        let serial = dir.join(format!("serial-{}.txt", N.fetch_add(1, Ordering::Relaxed)));
        let mut c = ns.cmd("qemu-system-x86_64");
        // acpi=off: microvm then lists its virtio-mmio devices as virtio_mmio.device=
        // words on the command line (with ACPI it describes them in the DSDT instead).
        c.args([
            "-M",
            "microvm,acpi=off",
            "-accel",
            "kvm",
            "-accel",
            "tcg",
            "-m",
            "128",
        ])
        .args([
            "-nodefaults",
            "-nographic",
            "-no-reboot",
            "-display",
            "none",
        ])
        .arg("-kernel")
        .arg(&elf)
        .args(["-append", cmdline])
        .args([
            "-netdev",
            &format!("tap,id=n0,ifname={},script=no,downscript=no", ns.tap),
        ])
        .args(["-device", "virtio-net-device,netdev=n0"])
        .args(["-global", "virtio-mmio.force-legacy=false"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .args(["-monitor", "none", "-serial"])
        .arg(format!("file:{}", serial.display()));
        if let Some(d) = disk {
            c.arg("-drive")
                .arg(format!("file={},format=raw,if=none,id=d0", d.display()))
                .args(["-device", "virtio-blk-device,drive=d0"]);
        }
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start qemu-system-x86_64");
        Qemu { child, serial }
    }

    fn serial(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits until the serial output contains `what` (panics with the output on timeout
    /// or if QEMU exits).
    fn wait_for(&mut self, what: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let s = self.serial();
            if s.contains(what) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "QEMU exited ({st}) before printing {what:?}; serial:\n{s}{}",
                    self.stderr()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "no {what:?} after {timeout:?}; serial:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr(&mut self) -> String {
        let mut e = String::new();
        if let Some(mut s) = self.child.stderr.take() {
            let _ = s.read_to_string(&mut e);
        }
        e
    }

    /// Waits for QEMU to exit; its exit code.
    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "QEMU still running after {timeout:?}; serial:\n{}",
            self.serial()
        );
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

const LISTENING: &str = "ftvm-testguest kv listening on 198.18.0.2:6379\n";
const BOOT: Duration = Duration::from_secs(60);

#[test]
fn kv_serves_redis_tools_under_qemu() {
    require_env!();
    let ns = Netns::new();
    let dir = workdir();
    let mut vm = Qemu::start(&ns, &dir, &format!("kv=1 ip={GUEST_IP}/24"), None);
    vm.wait_for(LISTENING, BOOT);

    assert_eq!(ns.cli(&["PING"]), "PONG");
    assert_eq!(ns.cli(&["ECHO", "hello world"]), "hello world");
    assert_eq!(ns.cli(&["GET", "k"]), "");
    assert_eq!(ns.cli(&["SET", "k", "v1"]), "OK");
    assert_eq!(ns.cli(&["GET", "k"]), "v1");
    assert_eq!(ns.cli(&["INCR", "n"]), "1");
    assert_eq!(ns.cli(&["INCR", "n"]), "2");
    assert_eq!(
        ns.cli(&["INCR", "k"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(ns.cli(&["EXISTS", "k", "n", "nope"]), "2");
    assert_eq!(ns.cli(&["DBSIZE"]), "2");
    assert_eq!(ns.cli(&["DEL", "k", "nope"]), "1");
    assert_eq!(ns.cli(&["DBSIZE"]), "1");
    assert_eq!(ns.cli(&["CONFIG", "GET", "save"]), "");
    assert_eq!(ns.cli(&["FLUSHALL"]), "ERR unknown command 'FLUSHALL'");
    assert!(ns.cli(&["INFO"]).contains("redis_version:"));

    // Limits: errors, nothing stored.
    let key513 = "k".repeat(513);
    assert_eq!(ns.cli(&["SET", &key513, "v"]), "ERR key too large");
    let big = dir.join("big");
    std::fs::write(&big, vec![b'x'; 64 * 1024 + 1]).unwrap();
    let out = run(ns.cmd("sh").arg("-c").arg(format!(
        "redis-cli -h {GUEST_IP} -x SET big < {}",
        big.display()
    )));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ERR value too large"
    );
    std::fs::write(&big, vec![b'y'; 64 * 1024]).unwrap();
    let out = run(ns.cmd("sh").arg("-c").arg(format!(
        "redis-cli -h {GUEST_IP} -x SET big < {}",
        big.display()
    )));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    assert_eq!(ns.cli(&["GET", "big"]), "y".repeat(64 * 1024));
    assert_eq!(ns.cli(&["DBSIZE"]), "2");

    // Pipelining: many requests in one write, replies in order.
    let (body, _) = ns.raw(
        "*3\\r\\n$3\\r\\nSET\\r\\n$1\\r\\np\\r\\n$2\\r\\n10\\r\\n*2\\r\\n$4\\r\\nINCR\\r\\n$1\\r\\np\\r\\n\
         *2\\r\\n$4\\r\\nINCR\\r\\n$1\\r\\np\\r\\nPING\\r\\n*1\\r\\n$4\\r\\nQUIT\\r\\n",
        10,
    );
    assert_eq!(body, "+OK\r\n:11\r\n:12\r\n+PONG\r\n+OK\r\n");

    // Malformed RESP: an error reply, then the guest closes the connection; it serves on.
    let (body, closed) = ns.raw("*1\\r\\n$abc\\r\\n", 10);
    assert_eq!(body, "-ERR Protocol error: invalid bulk length\r\n");
    assert!(
        closed,
        "the guest must close a connection after a protocol error"
    );
    let (body, closed) = ns.raw("*2\\r\\n+PING\\r\\n", 10);
    assert_eq!(body, "-ERR Protocol error: expected '$'\r\n");
    assert!(closed);
    let (body, _) = ns.raw("*1\\r\\n$99999999\\r\\n", 10);
    assert_eq!(body, "-ERR Protocol error: invalid bulk length\r\n");
    assert_eq!(ns.cli(&["GET", "p"]), "12");

    // 64 concurrent connections (redis-benchmark keeps all of them open), pipelined.
    let out = run(ns.cmd("timeout").args([
        "300",
        "redis-benchmark",
        "-h",
        GUEST_IP,
        "-c",
        "64",
        "-n",
        "6400",
        "-P",
        "4",
        "-t",
        "set,get,incr",
        "-q",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "redis-benchmark failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for t in ["SET:", "GET:", "INCR:"] {
        assert!(
            text.lines()
                .any(|l| l.contains(t) && l.contains("requests per second")),
            "no {t} result in redis-benchmark output:\n{text}"
        );
    }
    // Its INCRs all went to one key: exactly 6400 of them.
    assert_eq!(ns.cli(&["GET", "counter:__rand_int__"]), "6400");
    let info = ns.cli(&["INFO"]);
    let conns: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO has total_connections_received");
    assert!(conns >= 3 * 64, "INFO total_connections_received={conns}");
    assert_eq!(ns.cli(&["PING"]), "PONG");
    assert!(!vm.serial().contains("panic"), "serial:\n{}", vm.serial());
    vm.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kv_disk_log_survives_sigkill_and_refuses_foreign_disks() {
    require_env!();
    let ns = Netns::new();
    let dir = workdir();
    let img = dir.join("kv.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(8 << 20))
        .expect("create the disk image");
    let cmdline = format!("kv=1 ip={GUEST_IP}/24 disk=1");

    let mut vm = Qemu::start(&ns, &dir, &cmdline, Some(&img));
    vm.wait_for(LISTENING, BOOT);
    assert!(
        vm.serial().contains("0 records replayed"),
        "{}",
        vm.serial()
    );
    assert_eq!(ns.cli(&["SET", "a", "1"]), "OK");
    assert_eq!(ns.cli(&["INCR", "a"]), "2");
    assert_eq!(ns.cli(&["SET", "gone", "x"]), "OK");
    assert_eq!(ns.cli(&["DEL", "gone"]), "1");
    let big = dir.join("big");
    std::fs::write(&big, vec![b'z'; 60000]).unwrap();
    let out = run(ns.cmd("sh").arg("-c").arg(format!(
        "redis-cli -h {GUEST_IP} -x SET big < {}",
        big.display()
    )));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    for _ in 0..20 {
        ns.cli(&["INCR", "c"]);
    }
    // Every reply above was sent after its record was flushed: SIGKILL loses nothing.
    vm.kill();

    let mut vm = Qemu::start(&ns, &dir, &cmdline, Some(&img));
    vm.wait_for(LISTENING, BOOT);
    assert!(
        vm.serial().contains("25 records replayed"),
        "{}",
        vm.serial()
    );
    assert_eq!(ns.cli(&["GET", "a"]), "2");
    assert_eq!(ns.cli(&["EXISTS", "gone"]), "0");
    assert_eq!(ns.cli(&["GET", "big"]), "z".repeat(60000));
    assert_eq!(ns.cli(&["GET", "c"]), "20");
    assert_eq!(ns.cli(&["DBSIZE"]), "3");
    vm.kill();

    // A disk that is not a log (and not empty) is refused, and left untouched.
    let foreign = dir.join("foreign.img");
    let mut data = vec![0u8; 1 << 20];
    data[..16].copy_from_slice(b"not a kv log....");
    std::fs::write(&foreign, &data).unwrap();
    let mut vm = Qemu::start(&ns, &dir, &cmdline, Some(&foreign));
    // isa-debug-exit: exit code 2 (configuration error) -> QEMU status (2 << 1) | 1.
    assert_eq!(vm.wait_exit(BOOT), Some(5), "serial:\n{}", vm.serial());
    let s = vm.serial();
    assert!(
        s.contains("ftvm-testguest error: disk=1: ")
            && s.contains("is not a ftvm-testguest key-value log"),
        "serial:\n{s}"
    );
    assert_eq!(
        std::fs::read(&foreign).unwrap(),
        data,
        "a refused disk must not change"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `frames` raw Ethernet frames through the TAP's host side (so the guest receives
/// them) with an AF_PACKET socket; must run inside the namespace.
fn inject_frames(ifname: &str, frames: &[Vec<u8>]) {
    let cname = std::ffi::CString::new(ifname).expect("interface name without NUL");
    // SAFETY: plain socket/ioctl-free calls with valid arguments; the fd is closed below.
    unsafe {
        let idx = libc::if_nametoindex(cname.as_ptr());
        assert!(idx != 0, "no interface {ifname}");
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = idx as i32;
        sll.sll_halen = 6;
        for f in frames {
            libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
        }
        libc::close(fd);
    }
}

#[test]
fn kv_survives_abusive_clients_and_random_frames() {
    require_env!();
    use std::io::Write;
    use std::net::TcpStream;
    let ns = Netns::new();
    let dir = workdir();
    // ("abuse" is ignored by the guest; it gives this VM 64 MiB.)
    let mut vm = Qemu::start(&ns, &dir, &format!("kv=1 ip={GUEST_IP}/24 abuse"), None);
    vm.wait_for(LISTENING, BOOT);
    assert_eq!(ns.cli(&["SET", "keep", "me"]), "OK");

    // 150 clients each start a 1 MiB value and push as much of it as the guest takes,
    // then vanish without finishing.
    let sent = ns.inside(|| {
        let mut socks = Vec::new();
        for _ in 0..150 {
            let s = TcpStream::connect((GUEST_IP, 6379)).expect("connect");
            s.set_nonblocking(true).unwrap();
            socks.push(s);
        }
        let head = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000000\r\n";
        let body = vec![b'x'; 16384];
        let mut sent = 0usize;
        for s in &mut socks {
            let _ = s.write_all(head);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(8) {
            for s in &mut socks {
                if let Ok(n) = s.write(&body) {
                    sent += n;
                }
            }
        }
        for s in &socks {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        sent
    });
    // Far more than the guest may buffer (a tenth of its heap, ~5 MiB).
    assert!(
        sent > 24 << 20,
        "only {sent} bytes pushed; the test did not exceed the guest's buffer budget"
    );

    // Random and malformed frames at the guest: garbage, truncated headers, bogus
    // IPv4/TCP to its MAC and to broadcast.
    let mut frames = Vec::new();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..3000 {
        let len = match i % 4 {
            0 => (rnd() % 14) as usize,
            _ => 14 + (rnd() % 1500) as usize,
        };
        let mut f: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        if len >= 14 {
            let dst: [u8; 6] = if i % 2 == 0 {
                [0x52, 0x54, 0, 0x12, 0x34, 0x56]
            } else {
                [0xff; 6]
            };
            f[..6].copy_from_slice(&dst);
            match i % 3 {
                0 => f[12..14].copy_from_slice(&[0x08, 0x00]),
                1 => f[12..14].copy_from_slice(&[0x08, 0x06]),
                _ => {}
            }
            if i % 3 == 0 && len >= 34 {
                f[14] = 0x45;
                f[23] = 6;
                f[30..34].copy_from_slice(&[198, 18, 0, 2]);
            }
        }
        if !f.is_empty() {
            frames.push(f);
        }
    }
    let tap = ns.tap.clone();
    ns.inside(move || inject_frames(&tap, &frames));

    // The guest is alive, serves new clients, and lost nothing.
    let start = Instant::now();
    loop {
        let out = run(ns
            .cmd("timeout")
            .args(["5", "redis-cli", "-h", GUEST_IP, "GET", "keep"]));
        if String::from_utf8_lossy(&out.stdout).trim() == "me" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the guest stopped serving; serial:\n{}",
            vm.serial()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let info = ns.cli(&["INFO"]);
    assert!(
        !info.contains("client_query_buffer_limit_disconnections:0"),
        "no client was dropped over the buffer budget:\n{info}"
    );
    assert_eq!(ns.cli(&["DBSIZE"]), "1");
    let s = vm.serial();
    assert!(!s.contains("panic") && !s.contains("error"), "serial:\n{s}");
    vm.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
