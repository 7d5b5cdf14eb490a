//! The fence's takeover marker, end to end: real primary and backup processes on real KVM,
//! a real etcd (or a real lock file), the replication link through a TCP proxy the test
//! cuts while both processes live and reach the fence store.
//!
//! The gap it closes: after the cut the primary runs unprotected and releases output the
//! backup never received, while the backup is still trying to take the fence. If the
//! primary dies inside that window, the backup gets the fence; without the marker it
//! would resume its older replica behind output clients already saw. With the marker it
//! goes stale (exit 76) and emits nothing. A plain SIGKILL (no cut) still fails over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../replication/tests/etcd_server/mod.rs"]
mod etcd_server;

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use etcd_server::EtcdServer;

const T: Duration = Duration::from_secs(120);
/// How often the waits of these tests poll.
const POLL: Duration = Duration::from_millis(10);
const CMDLINE: &str = "pages=256 wss=16";

/// A TCP proxy between primary and backup that the test cuts on demand: both directions
/// are shut down at once, the processes live on.
struct CutProxy {
    port: u16,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl CutProxy {
    fn start(target: u16) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let streams = Arc::new(Mutex::new(Vec::new()));
        let s = streams.clone();
        std::thread::spawn(move || {
            let (from_primary, _) = l.accept().unwrap();
            let to_backup = TcpStream::connect(("127.0.0.1", target)).unwrap();
            {
                let mut s = s.lock().unwrap();
                s.push(from_primary.try_clone().unwrap());
                s.push(to_backup.try_clone().unwrap());
            }
            for (mut a, mut b) in [
                (
                    from_primary.try_clone().unwrap(),
                    to_backup.try_clone().unwrap(),
                ),
                (to_backup, from_primary),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(Shutdown::Write);
                });
            }
        });
        Self { port, streams }
    }

    fn cut(&self) {
        for s in self.streams.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

struct Pair {
    dir: tempfile::TempDir,
    backup: VmProc,
    primary: VmProc,
    proxy: CutProxy,
}

/// A protected pair fenced by `fence`, the link through a [`CutProxy`], once protected
/// and the guest printing.
fn start_pair(dir: tempfile::TempDir, fence: &str, vm_id: &str, hb: &str) -> Pair {
    let d = dir.path();
    let bport = free_port();
    let shared = fenced_args(hb, fence, vm_id);
    let backup = spawn_fenced_backup(d, &format!("127.0.0.1:{bport}"), &shared, T);
    let proxy = CutProxy::start(bport);
    let paddr = format!("127.0.0.1:{}", proxy.port);
    let primary = VmProc::spawn(&fenced_primary_args(d, CMDLINE, &paddr, &shared, &[]));
    wait_protected(&primary, &backup, T, Unprotected::Tolerated);
    wait_until_every(T, POLL, "the backup's complete replica", || {
        backup.stderr().contains("ready to take over")
    });
    wait_until_every(T, POLL, "output", || {
        last_seq(&read_console(d, "primary.out")) > 20
    });
    Pair {
        dir,
        backup,
        primary,
        proxy,
    }
}

/// Cut the link; once the primary runs unprotected and has released output the backup
/// never received, SIGKILL it while the backup is still trying to take the fence. The
/// backup must not run the VM: exit 76, saying its replica is stale, no guest output.
fn primary_dies_in_the_takeover_window_after_a_cut(fence: &str, vm_id: &str, hb: &str) {
    let mut pair = start_pair(tempdir(), fence, vm_id, hb);
    let d = pair.dir.path().to_path_buf();
    pair.proxy.cut();
    let t_cut = Instant::now();
    wait_until_every(T, POLL, "the primary to go on unprotected", || {
        pair.primary.stderr().contains("UNPROTECTED")
    });
    // Output released after the cut (and after UNPROTECTED): in no replica of the backup.
    let at_unprotected = last_seq(&read_console(&d, "primary.out"));
    wait_until_every(T, POLL, "unprotected output", || {
        last_seq(&read_console(&d, "primary.out")) >= at_unprotected + 5
    });
    // Inside the window: the backup has detected the loss and waits for the fence.
    wait_until_every(T, POLL, "the backup to wait for the fence", || {
        pair.backup.stderr().contains("the fence is not free yet")
    });
    assert!(
        !pair.backup.exited(),
        "the backup's takeover window ended before the primary died ({:.2} s after the cut): {}",
        t_cut.elapsed().as_secs_f64(),
        pair.backup.stderr()
    );
    pair.primary.kill();
    let killed_after = t_cut.elapsed();
    let p = read_console(&d, "primary.out");
    // Until it exits or (the failure under test) resumes the VM.
    wait_until_every(
        Duration::from_secs(60),
        POLL,
        "the backup to decide",
        || pair.backup.exited() || pair.backup.stderr().contains("TAKEOVER"),
    );
    let berr = pair.backup.stderr();
    assert!(
        !berr.contains("TAKEOVER"),
        "the backup resumed a stale replica after the primary released output it lacks \
         ({last} lines released, killed {:.2} s after the cut): {berr}",
        killed_after.as_secs_f64(),
        last = last_seq(&p)
    );
    let st = pair.backup.wait(Duration::from_secs(10));
    assert_eq!(st.code(), Some(76), "{berr}");
    assert!(berr.contains("STALE"), "{berr}");
    assert!(
        berr.contains("ran unprotected after this backup's last epoch"),
        "the backup went stale for another reason than the marker: {berr}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        read_console(&d, "backup.out").is_empty(),
        "the backup emitted guest output"
    );
    // What the primary released is the guest's true output.
    let pl = complete_lines(&p);
    check_against_reference(&pl, CMDLINE, 1);
    eprintln!(
        "{vm_id}: primary killed {:.2} s after the cut with {} lines out; backup stale",
        killed_after.as_secs_f64(),
        last_seq(&p)
    );
}

/// No cut: a SIGKILLed primary is replaced (the marker names the backup's session), and
/// the backup's output continues the primary's with no gap.
fn sigkill_still_fails_over(fence: &str, vm_id: &str, hb: &str) {
    let mut pair = start_pair(tempdir(), fence, vm_id, hb);
    let d = pair.dir.path().to_path_buf();
    pair.primary.kill();
    let t_kill = Instant::now();
    let p = read_console(&d, "primary.out");
    let last = last_seq(&p);
    wait_until_every(T, POLL, "the takeover", || {
        assert!(
            !pair.backup.exited(),
            "the backup did not take over: {}",
            pair.backup.stderr()
        );
        pair.backup.stderr().contains("TAKEOVER")
    });
    let took = t_kill.elapsed();
    wait_until_every(T, POLL, "the new primary's output", || {
        last_seq(&read_console(&d, "backup.out")) > last + 50
    });
    pair.backup.kill();
    let b = read_console(&d, "backup.out");
    // Byte for byte: the primary's console is a prefix of the guest's true output, and
    // the backup's continues it from a point at or before where the primary stopped (a
    // takeover may repeat what was still queued, never skip).
    let max = last_seq(&p).max(last_seq(&b)) + 2;
    let expected = expected_lines(CMDLINE, 1, max);
    let mut truth = String::from("ftvm-testguest ready\n");
    for n in 1..=max {
        truth.push_str(&expected[&n]);
        truth.push('\n');
    }
    assert!(
        truth.starts_with(&p),
        "the primary released output the guest never wrote"
    );
    let probe = &b[..b.len().min(200)];
    let resumed_at = (0..=p.len()).rev().find(|&o| truth[o..].starts_with(probe));
    assert!(
        resumed_at.is_some(),
        "the backup's output does not continue the primary's (gap or divergence): primary ended {:?}, backup began {:?}",
        &p[p.len().saturating_sub(80)..],
        &b[..b.len().min(80)]
    );
    let o = resumed_at.unwrap_or_default();
    let n = b.len().min(truth.len() - o);
    assert_eq!(&truth[o..o + n], &b[..n], "the backup's output diverges");
    eprintln!(
        "{vm_id}: takeover {:.2} s after SIGKILL",
        took.as_secs_f64()
    );
}

fn etcd_fence(etcd: &EtcdServer) -> String {
    format!("etcd:{}", etcd.url)
}

#[test]
fn etcd_primary_dying_in_the_takeover_window_after_a_cut_leaves_the_backup_stale() {
    if !kvm_or_skip("etcd_primary_dying_in_the_takeover_window_after_a_cut_leaves_the_backup_stale")
    {
        return;
    }
    let etcd = EtcdServer::start();
    // Lease TTL 2 s: the backup tries for 5 s after the cut.
    primary_dies_in_the_takeover_window_after_a_cut(
        &etcd_fence(&etcd),
        &vm_id("marker-cut"),
        "500ms",
    );
}

#[test]
fn lock_primary_dying_in_the_takeover_window_after_a_cut_leaves_the_backup_stale() {
    if !kvm_or_skip("lock_primary_dying_in_the_takeover_window_after_a_cut_leaves_the_backup_stale")
    {
        return;
    }
    let dir = tempdir();
    let fence = format!("lock:{}", dir.path().join("vm.fence").display());
    // The backup tries for heartbeat timeout + 2 s = 3 s after the cut.
    primary_dies_in_the_takeover_window_after_a_cut(&fence, "marker-cut-lock", "1s");
}

#[test]
fn etcd_sigkill_still_fails_over_with_the_marker() {
    if !kvm_or_skip("etcd_sigkill_still_fails_over_with_the_marker") {
        return;
    }
    let etcd = EtcdServer::start();
    sigkill_still_fails_over(&etcd_fence(&etcd), &vm_id("marker-kill"), "500ms");
}

#[test]
fn lock_sigkill_still_fails_over_with_the_marker() {
    if !kvm_or_skip("lock_sigkill_still_fails_over_with_the_marker") {
        return;
    }
    let dir = tempdir();
    let fence = format!("lock:{}", dir.path().join("vm.fence").display());
    sigkill_still_fails_over(&fence, "marker-kill-lock", "1s");
}
