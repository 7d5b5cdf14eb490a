//! Fencing against a real etcd: one holder at a time, the `ended` marker, a revoked lease
//! seen as lost, and a stopped etcd closing the gate (self-fencing) until it is back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod etcd_server;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_server::EtcdServer;
use ftvm_replication::fence_etcd::Etcd;
use ftvm_replication::fence_marker::{SessionId, TakeoverClaim, TakeoverMarker};
use ftvm_replication::fencing::{
    FenceEvent, FenceEvents, FenceMode, HeldFence, LeaseTimes, TakeoverFence,
};

/// A takeover by the backup of session `n`, leaving `then`.
fn claim(n: u8, then: TakeoverMarker) -> TakeoverClaim {
    TakeoverClaim {
        session: SessionId([n; 16]),
        then,
    }
}

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
    let c1 = claim(1, TakeoverMarker::Nobody);
    a.gate()
        .record_takeover(TakeoverMarker::Session(c1.session))
        .unwrap();
    // A second primary is refused; a backup gives up (stale) after the bound, since the
    // holder keeps its lease alive.
    let e = HeldFence::acquire(&mode, times, ev.clone()).unwrap_err();
    assert!(e.to_string().contains("another ftvm runs"), "{e}");
    let t0 = Instant::now();
    let r = HeldFence::acquire_for_takeover(&mode, times, ev.clone(), c1, |_, _| {}).unwrap();
    assert!(matches!(r, TakeoverFence::Stale(_)), "{r:?}");
    assert!(t0.elapsed() >= times.takeover_bound(&mode));
    assert!(a.gate().holds(), "the holder renewed all along");

    // Clean end: the marker outlives the holder; a backup does not take over. The holder
    // does not take its own marker for a lost fence.
    a.mark_ended().unwrap();
    // The primary's engine stopping after the guest's end does not overwrite `ended`.
    a.gate().record_takeover(TakeoverMarker::Nobody).unwrap();
    std::thread::sleep(times.renew_every * 3);
    assert!(
        a.gate().holds(),
        "the holder lost its gate after marking the VM ended"
    );
    drop(a);
    let r = HeldFence::acquire_for_takeover(&mode, times, ev.clone(), c1, |_, _| {}).unwrap();
    assert!(matches!(r, TakeoverFence::Ended), "{r:?}");

    // The VM can be started again; its holder dropping (revoking) frees the key at once.
    let b = HeldFence::acquire(&mode, times, ev.clone()).unwrap();
    b.gate()
        .record_takeover(TakeoverMarker::Session(c1.session))
        .unwrap();
    drop(b);
    let (ev_c, seen_c) = recorder();
    let t0 = Instant::now();
    let TakeoverFence::Taken(c) =
        HeldFence::acquire_for_takeover(&mode, times, ev_c, c1, |_, _| {}).unwrap()
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

/// The takeover marker in etcd: a backup takes the key only when the marker names its
/// session (checked in the taking transaction), and is stale at once otherwise; a holder
/// whose lease is gone cannot write the marker (so it must not release).
#[test]
fn takeover_marker_decides_who_may_take_over() {
    let etcd = EtcdServer::start();
    let vm = format!("m{}", std::process::id());
    let mode = FenceMode::Etcd {
        endpoints: vec![etcd.url.clone()],
        vm_id: vm.clone(),
    };
    let times = LeaseTimes::new(Duration::from_millis(500));
    let (ev, _) = recorder();
    let client = Etcd::new(vec![etcd.url.clone()], Duration::from_secs(2));
    let marker = || {
        let kv = client.get(&format!("ftvm/fence/{vm}/takeover")).unwrap();
        String::from_utf8(kv.unwrap().value).unwrap()
    };
    let take = |n: u8, then: TakeoverMarker| {
        let t0 = Instant::now();
        let r =
            HeldFence::acquire_for_takeover(&mode, times, ev.clone(), claim(n, then), |_, _| {})
                .unwrap();
        (r, t0.elapsed())
    };
    // Started (marker none), protected with session 1, unprotected again, gone.
    let a = HeldFence::acquire(&mode, times, ev.clone()).unwrap();
    assert_eq!(marker(), "none");
    let s1 = claim(1, TakeoverMarker::Nobody).session;
    a.gate()
        .record_takeover(TakeoverMarker::Session(s1))
        .unwrap();
    assert_eq!(marker(), s1.to_string());
    a.gate().record_takeover(TakeoverMarker::Nobody).unwrap();
    drop(a);
    let (r, took) = take(1, TakeoverMarker::Nobody);
    assert!(
        matches!(r, TakeoverFence::Stale(ref s) if s.contains("ran unprotected after this backup's last epoch")),
        "{r:?}"
    );
    assert!(took < times.takeover_bound(&mode), "{took:?}");
    assert!(
        client.get(&format!("ftvm/fence/{vm}")).unwrap().is_none(),
        "a stale backup kept the key"
    );
    // Protected with session 2: session 1 is stale, session 2 takes over (a planned
    // switchover keeping the marker on its session).
    let a = HeldFence::acquire(&mode, times, ev.clone()).unwrap();
    let s2 = claim(2, TakeoverMarker::Nobody).session;
    a.gate()
        .record_takeover(TakeoverMarker::Session(s2))
        .unwrap();
    drop(a);
    let (r, _) = take(1, TakeoverMarker::Nobody);
    assert!(
        matches!(r, TakeoverFence::Stale(ref s) if s.contains("another backup session")),
        "{r:?}"
    );
    let (r, _) = take(2, TakeoverMarker::Session(s2));
    let TakeoverFence::Taken(b) = r else {
        panic!("the named backup did not take over: {r:?}")
    };
    assert_eq!(marker(), s2.to_string());
    // Its lease revoked behind its back (another process may own the VM now): it cannot
    // write the marker, so it must not release anything.
    let kv = client.get(&format!("ftvm/fence/{vm}")).unwrap().unwrap();
    client.revoke(kv.lease).unwrap();
    let e = b
        .gate()
        .record_takeover(TakeoverMarker::Nobody)
        .unwrap_err();
    assert!(
        matches!(e, ftvm_replication::fence_marker::MarkerError::NotHeld(_)),
        "{e}"
    );
    assert_eq!(marker(), s2.to_string());
}
