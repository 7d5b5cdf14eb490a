//! Fencing against a real etcd: one holder at a time, the `ended` marker, a revoked lease
//! seen as lost, and a stopped etcd closing the gate (self-fencing) until it is back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod etcd_server;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_server::EtcdServer;
use ftvm_replication::fence_etcd::Etcd;
use ftvm_replication::fencing::{
    FenceEvent, FenceEvents, FenceMode, HeldFence, LeaseTimes, TakeoverFence,
};

fn recorder() -> (FenceEvents, Arc<Mutex<Vec<FenceEvent>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (Arc::new(move |e| s.lock().unwrap().push(e)), seen)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn one_holder_ended_marker_and_lost_lease() {
    let etcd = EtcdServer::start();
    let mode = FenceMode::Etcd {
        endpoints: vec![etcd.url.clone()],
        vm_id: format!("t{}", std::process::id()),
    };
    let times = LeaseTimes::new(Duration::from_millis(500));
    let (ev, _) = recorder();
    let a = HeldFence::acquire(&mode, times, ev.clone()).unwrap();
    assert!(a.gate().holds());
    // A second primary is refused; a backup gives up (stale) after the bound, since the
    // holder keeps its lease alive.
    let e = HeldFence::acquire(&mode, times, ev.clone()).unwrap_err();
    assert!(e.to_string().contains("another ftvm runs"), "{e}");
    let t0 = Instant::now();
    let r = HeldFence::acquire_for_takeover(&mode, times, ev.clone(), |_, _| {}).unwrap();
    assert!(matches!(r, TakeoverFence::Stale(_)), "{r:?}");
    assert!(t0.elapsed() >= times.takeover_bound(&mode));
    assert!(a.gate().holds(), "the holder renewed all along");

    // Clean end: the marker outlives the holder; a backup does not take over. The holder
    // does not take its own marker for a lost fence.
    a.mark_ended().unwrap();
    std::thread::sleep(times.renew_every * 3);
    assert!(
        a.gate().holds(),
        "the holder lost its gate after marking the VM ended"
    );
    drop(a);
    let r = HeldFence::acquire_for_takeover(&mode, times, ev.clone(), |_, _| {}).unwrap();
    assert!(matches!(r, TakeoverFence::Ended), "{r:?}");

    // The VM can be started again; its holder dropping (revoking) frees the key at once.
    let b = HeldFence::acquire(&mode, times, ev.clone()).unwrap();
    drop(b);
    let (ev_c, seen_c) = recorder();
    let t0 = Instant::now();
    let TakeoverFence::Taken(c) =
        HeldFence::acquire_for_takeover(&mode, times, ev_c, |_, _| {}).unwrap()
    else {
        panic!("not taken")
    };
    assert!(t0.elapsed() < Duration::from_secs(2));
    // Someone revokes our lease: the keeper reports the fence lost and the gate closes.
    let client = Etcd::new(vec![etcd.url.clone()], Duration::from_secs(2));
    let FenceMode::Etcd { vm_id, .. } = &mode else {
        unreachable!()
    };
    let kv = client.get(&format!("ftvm/fence/{vm_id}")).unwrap().unwrap();
    client.revoke(kv.lease).unwrap();
    wait_for("the lost event", times.ttl, || {
        seen_c
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, FenceEvent::Lost(_)))
    });
    assert!(!c.gate().holds());
    assert!(c.gate().is_lost());
}

#[test]
fn stopped_etcd_closes_the_gate_before_the_lease_could_expire() {
    let mut etcd = EtcdServer::start();
    let mode = FenceMode::Etcd {
        endpoints: vec![etcd.url.clone()],
        vm_id: format!("s{}", std::process::id()),
    };
    let times = LeaseTimes::new(Duration::from_millis(500));
    let (ev, seen) = recorder();
    let a = HeldFence::acquire(&mode, times, ev).unwrap();
    std::thread::sleep(times.renew_every * 2);
    assert!(a.gate().holds());
    let stopped = Instant::now();
    etcd.stop();
    wait_for("the gate to close", times.ttl, || !a.gate().holds());
    let closed_after = stopped.elapsed();
    assert!(
        closed_after < times.self_fence_after + times.renew_every,
        "gate closed after {closed_after:?}"
    );
    assert!(
        closed_after < times.ttl,
        "self-fence must come before the TTL"
    );
    wait_for("the suspect event", times.ttl, || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, FenceEvent::Suspect(_)))
    });
    assert!(!a.gate().is_lost(), "unreachable is not lost");
    // etcd back: it restarts leases with a full TTL on a new leader, so ours is alive and
    // the holder may go on.
    etcd.restart();
    wait_for("the restored event", Duration::from_secs(20), || {
        seen.lock().unwrap().contains(&FenceEvent::Restored)
    });
    assert!(a.gate().holds());
}
