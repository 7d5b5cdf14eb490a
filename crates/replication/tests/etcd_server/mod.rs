//! A real etcd for tests: Debian's `etcd-server` (installed by scripts/setup.sh), on free
//! loopback ports, with a temporary data directory; killed when dropped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// A running etcd.
pub struct EtcdServer {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    /// Data directory of this start (a fresh one for each attempt of [`start`](Self::start)).
    data: PathBuf,
}

/// A loopback port that is free now, taken below Linux's ephemeral range (32768-60999): the
/// kernel hands ports of that range to the outgoing connections of every other test, and one of
/// them can take a port between this check and etcd's own bind.
fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let seed = u64::from(std::process::id()) * 7919 + nanos;
    for _ in 0..2000 {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20000 + ((seed + i * 104_729) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The etcd binary; panics (never skips) when it is missing: the tests of fencing must not
/// pass without it.
pub fn etcd_binary() -> PathBuf {
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("etcd is not installed (Debian package etcd-server): run scripts/setup.sh; the fencing tests need a real etcd")
}

impl EtcdServer {
    /// Start one and wait until it answers. A port taken by another process between the check
    /// and etcd's bind is retried on new ports (up to five times), with a fresh data directory.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ftvm-etcd-{}-", std::process::id()))
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let mut s = Self {
            child: None,
            url: String::new(),
            client_port: 0,
            peer_port: 0,
            dir,
            data,
        };
        for attempt in 0.. {
            s.client_port = free_port();
            s.peer_port = free_port();
            s.url = format!("http://127.0.0.1:{}", s.client_port);
            s.data = s.dir.path().join(format!("data{attempt}"));
            match s.try_start() {
                Ok(()) => return s,
                Err(log) if attempt < 4 && log.contains("address already in use") => s.stop(),
                Err(log) => panic!("etcd did not come up; log: {log}"),
            }
        }
        unreachable!()
    }

    /// Start (again, after [`stop`](Self::stop)) on the same ports and data.
    pub fn restart(&mut self) {
        if let Err(log) = self.try_start() {
            panic!("etcd did not come up; log: {log}");
        }
    }

    /// Start etcd and wait until it answers; the log when it exits or does not answer in 30 s.
    fn try_start(&mut self) -> Result<(), String> {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log_path = self.dir.path().join("etcd.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(etcd_binary())
            .arg("--name")
            .arg("ftvm-test")
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--listen-client-urls")
            .arg(&self.url)
            .arg("--advertise-client-urls")
            .arg(&self.url)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("ftvm-test={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            if ftvm_replication::fence_etcd::Etcd::new(
                vec![self.url.clone()],
                Duration::from_secs(2),
            )
            .healthy()
            {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited || t0.elapsed() > Duration::from_secs(30) {
                return Err(std::fs::read_to_string(&log_path).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kill it (the data stays for [`restart`](Self::restart)).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
