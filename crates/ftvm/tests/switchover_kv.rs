//! Planned switchover with the network and a disk: the durable key-value test guest
//! (`kv=1 disk=1`) on a protected pair whose TAPs share a bridge in a network namespace
//! (tests/common/netns.rs; the client in a namespace of its own). A client counts with redis-cli `INCR` while the
//! VM switches over back and forth: every reply must be the next number (no lost or
//! repeated write, the service reachable on the new primary's TAP at once: the new
//! primary announces the guest's MAC, else the bridge would keep sending to the old
//! TAP), and after a quiet moment both disk images are byte-identical.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::netns::{ready, Net, GUEST_IP};
use common::*;

const LISTENING: &str = "ftvm-testguest kv listening on 198.18.0.2:6379";
const T: Duration = Duration::from_secs(120);
const MAC: &str = "02:f7:00:00:30:01";

fn serial(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

#[test]
fn kv_service_counts_on_across_switchovers_with_identical_disks() {
    let name = "kv_service_counts_on_across_switchovers_with_identical_disks";
    if !ready(name) {
        return;
    }
    let net = Net::new();
    let dir = tempdir();
    let d = dir.path();
    let imgs = [d.join("a.img"), d.join("b.img")];
    for img in &imgs {
        std::fs::File::create(img)
            .and_then(|f| f.set_len(8 << 20))
            .unwrap();
    }
    let cmdline = format!("kv=1 ip={GUEST_IP}/24 disk=1");
    let addr = format!("127.0.0.1:{}", free_port());
    let fence = format!("lock:{}", d.join("fence.lock").display());
    let socks = [d.join("a.sock"), d.join("b.sock")];
    let side_args = |i: usize| -> Vec<String> {
        vec![
            "--memory".into(),
            "64M".into(),
            "--serial".into(),
            format!("file:{}", d.join(format!("{i}.out")).display()),
            "--net".into(),
            format!("tap={},mac={MAC}", net.taps[i]),
            "--disk".into(),
            format!("path={}", imgs[i].display()),
            "--fence".into(),
            fence.clone(),
            "--api-socket".into(),
            socks[i].display().to_string(),
        ]
    };
    let bargs = side_args(1);
    let b = start_backup(
        |a| net.vm_proc(a),
        &addr,
        &bargs.iter().map(String::as_str).collect::<Vec<_>>(),
        T,
    );
    let mut aargs: Vec<String> = [
        "run",
        "--kernel",
        "@testguest",
        "--cmdline",
        &cmdline,
        "--protect",
        &addr,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    aargs.extend(side_args(0));
    let a = net.vm_proc(&aargs.iter().map(String::as_str).collect::<Vec<_>>());
    wait_until(T, "protection and the kv service", || {
        assert!(!a.exited(), "primary died: {}", a.stderr());
        a.stderr().contains("the VM is protected") && serial(d, "0.out").contains(LISTENING)
    });
    let procs = [a, b];
    let mut primary = 0;
    let mut n = 0u64;
    for round in 0..6 {
        for _ in 0..5 {
            n += 1;
            assert_eq!(
                net.cli(&["INCR", "counter"]),
                n.to_string(),
                "round {round}\na: {}\nb: {}",
                procs[0].stderr(),
                procs[1].stderr()
            );
        }
        let (st, _, err) = run_ftvm(&[
            "ctl",
            "--api-socket",
            socks[primary].to_str().unwrap(),
            "switchover",
        ]);
        assert!(st.success(), "switchover {round} failed: {err}");
        primary = 1 - primary;
        let p = &procs[primary];
        let t0 = std::time::Instant::now();
        loop {
            assert!(!p.exited(), "{}", p.stderr());
            let status = ctl_json(&socks[primary], &["status"]);
            if status["role"] == "primary" {
                break;
            }
            assert!(
                t0.elapsed() < T,
                "round {round}: no new primary within {T:?}; its status: {status}\na: {}\nb: {}",
                procs[0].stderr(),
                procs[1].stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for _ in 0..5 {
        n += 1;
        assert_eq!(net.cli(&["INCR", "counter"]), n.to_string());
    }
    // Quiet: every write travelled in an acknowledged epoch.
    std::thread::sleep(Duration::from_millis(700));
    let x = std::fs::read(&imgs[0]).unwrap();
    let y = std::fs::read(&imgs[1]).unwrap();
    assert!(x.iter().any(|b| *b != 0), "the guest wrote nothing to disk");
    let diff = x.iter().zip(&y).position(|(p, q)| p != q);
    assert!(
        diff.is_none(),
        "after the switchovers the images differ at byte {diff:?}"
    );
    assert_eq!(net.cli(&["GET", "counter"]), n.to_string());
}
