//! A backup that keeps heartbeating but stops acknowledging epochs must not hold the
//! primary's output forever: the acknowledgement deadline (2 × heartbeat timeout + one
//! epoch, docs/operations.md) ends protection like any other loss, and the held output
//! is released, gap-free. The primary is a real `ftvm run`; the backup is a real TCP
//! peer speaking the wire protocol (it acknowledges until the VM is protected, then only
//! heartbeats).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ftvm_wire::{HelloAck, Message, MessageReader, MessageWriter, Nonce, Role, PROTOCOL_VERSION};

const T: Duration = Duration::from_secs(120);
const CMDLINE: &str = "pages=64 wss=8";

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn a_backup_that_heartbeats_but_never_acknowledges_ends_protection() {
    if !kvm_or_skip("a_backup_that_heartbeats_but_never_acknowledges_ends_protection") {
        return;
    }
    let dir = tempdir();
    let d = dir.path();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let out = d.join("primary.out");
    let serial = format!("file:{}", out.display());
    let fence = format!("lock:{}", d.join("vm.fence").display());
    let primary = VmProc::spawn(&[
        "run",
        "--kernel",
        "@testguest",
        "--memory",
        "128M",
        "--cmdline",
        CMDLINE,
        "--protect",
        &addr,
        "--serial",
        &serial,
        "--fence",
        &fence,
        "--epoch",
        "10ms",
        "--heartbeat-timeout",
        "500ms",
    ]);
    let (stream, _) = listener.accept().unwrap();
    let mut r = MessageReader::new(stream.try_clone().unwrap());
    let w = Arc::new(Mutex::new(MessageWriter::new(stream)));
    match r.recv().unwrap() {
        Some(Message::Hello(h)) => assert_eq!(h.role, Role::Primary),
        other => panic!("expected a Hello, got {other:?}"),
    }
    {
        let mut w = w.lock().unwrap();
        w.send(&Message::HelloAck(HelloAck {
            version: PROTOCOL_VERSION,
            role: Role::Backup,
            nonce: Nonce([9; 32]),
            proof: None,
        }))
        .unwrap();
        w.flush().unwrap();
    }
    // Heartbeats on their own timer, for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (w, stop) = (w.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let mut w = w.lock().unwrap();
                let ok = w
                    .send(&Message::Heartbeat {
                        epoch: 0,
                        sent_unix_nanos: unix_nanos(),
                    })
                    .and_then(|()| w.flush());
                drop(w);
                if ok.is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }
    // Acknowledge every epoch until the VM is protected and has released some output;
    // then never again.
    let acking = Arc::new(AtomicBool::new(true));
    let last_unacked_at = Arc::new(Mutex::new(None::<Instant>));
    let acked = Arc::new(AtomicU64::new(0));
    let reader = {
        let (w, acking, last, acked) = (
            w.clone(),
            acking.clone(),
            last_unacked_at.clone(),
            acked.clone(),
        );
        std::thread::spawn(move || loop {
            let epoch = match r.recv() {
                Ok(Some(Message::EpochCommit(c))) => c.epoch,
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            };
            if acking.load(Ordering::SeqCst) {
                let mut w = w.lock().unwrap();
                if w.send(&Message::Ack { epoch })
                    .and_then(|()| w.flush())
                    .is_err()
                {
                    break;
                }
                acked.store(epoch, Ordering::SeqCst);
            } else {
                last.lock().unwrap().get_or_insert_with(Instant::now);
            }
        })
    };
    let t0 = Instant::now();
    while !primary.stderr().contains("the VM is protected") {
        assert!(!primary.exited(), "{}", primary.stderr());
        assert!(t0.elapsed() < T, "never protected: {}", primary.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let read = || std::fs::read_to_string(&out).unwrap_or_default();
    let t0 = Instant::now();
    while read().lines().count() < 20 {
        assert!(t0.elapsed() < T, "no output released while acknowledged");
        std::thread::sleep(Duration::from_millis(20));
    }
    acking.store(false, Ordering::SeqCst);
    let stopped_acking = Instant::now();
    let frozen_at = read().len();

    // The primary must drop this backup within the deadline and release its output.
    while !primary.stderr().contains("UNPROTECTED") {
        assert!(!primary.exited(), "{}", primary.stderr());
        assert!(
            stopped_acking.elapsed() < Duration::from_secs(30),
            "still protected {:?} after the backup stopped acknowledging (epochs acked: {}): {}",
            stopped_acking.elapsed(),
            acked.load(Ordering::SeqCst),
            primary.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = stopped_acking.elapsed();
    let first_unacked = last_unacked_at.lock().unwrap().unwrap_or(stopped_acking);
    let from_unacked = first_unacked.elapsed();
    eprintln!(
        "dropped the silent-acker {took:?} after acks stopped ({from_unacked:?} after the first unacknowledged commit)"
    );
    // Deadline 2 x 500 ms + 10 ms; allow for heartbeat spacing and a loaded host, but it
    // must not be the 30 s of the initial sync, nor forever.
    assert!(
        took < Duration::from_secs(6),
        "took {took:?}: the deadline is 1.01 s"
    );
    assert!(
        from_unacked >= Duration::from_millis(900),
        "dropped {from_unacked:?} after the first unacknowledged epoch: before its deadline"
    );
    assert!(
        primary
            .stderr()
            .contains("the backup acknowledged no epoch for"),
        "{}",
        primary.stderr()
    );
    // Output held while unacknowledged is released, then the VM carries on, gap-free.
    let t0 = Instant::now();
    while read().len() <= frozen_at + 4096 {
        assert!(
            t0.elapsed() < T,
            "output stayed held after protection ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = read();
    let lines: Vec<String> = text
        .lines()
        .take(text.lines().count().saturating_sub(1))
        .map(str::to_string)
        .collect();
    check_against_reference(&lines, CMDLINE, 1);
    assert_contiguous(&lines);
    stop.store(true, Ordering::SeqCst);
    drop(primary);
    let _ = reader.join();
    let _ = TcpStream::connect(&addr);
}
