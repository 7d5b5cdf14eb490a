//! A real etcd for tests: Debian's `etcd-server` (installed by scripts/setup.sh), on free
//! loopback ports, with a temporary data directory; killed when dropped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd.
pub struct EtcdServer {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
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
    /// Start one and wait until it answers.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ftvm-etcd-{}-", std::process::id()))
            .tempdir()
            .unwrap();
        let mut s = Self {
            child: None,
            url: String::new(),
            client_port: free_port(),
            peer_port: free_port(),
            dir,
        };
        s.url = format!("http://127.0.0.1:{}", s.client_port);
        s.restart();
        s
    }

    /// Start (again, after [`stop`](Self::stop)) on the same ports and data.
    pub fn restart(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new(etcd_binary())
            .arg("--name")
            .arg("ftvm-test")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
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
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "etcd did not come up; log: {}",
                std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
            );
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
