//! Message streams: batching, epoch totals, handshake and authentication,
//! tampering, and a real TCP connection.
#![allow(clippy::unwrap_used, clippy::vec_box)]

use std::io::{BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::thread;

use ftvm_wire::frame::{FrameError, HEADER_LEN};
use ftvm_wire::handshake::{accept, initiate, HandshakeConfig, HandshakeError};
use ftvm_wire::{
    AssemblerConfig, AuthKey, EpochAssembler, ErrorCode, Message, MessageReader, MessageWriter,
    PageWrite, Progress, RecvError, Role, SendError, VmShape, PAGE_SIZE,
};

fn writer() -> MessageWriter<Vec<u8>> {
    MessageWriter::new(Vec::new())
}

fn bytes(w: &mut MessageWriter<Vec<u8>>) -> Vec<u8> {
    w.flush().unwrap();
    w.frames().get_ref().clone()
}

/// Reads every message, feeding an assembler; returns the committed epochs.
fn assemble(stream: &[u8]) -> Vec<Box<ftvm_wire::StagedEpoch>> {
    let mut r = MessageReader::new(stream);
    let mut asm = EpochAssembler::new(AssemblerConfig::replication());
    let mut out = Vec::new();
    while let Some(m) = r.recv().unwrap() {
        if let Progress::Committed(e) = asm.feed(&m).unwrap() {
            out.push(e);
        }
    }
    asm.finish().unwrap();
    out
}

#[test]
fn scattered_pages_are_coalesced_and_batched() {
    let mem: Vec<u8> = (0..600 * PAGE_SIZE)
        .map(|i| (i / PAGE_SIZE) as u8)
        .collect();
    let page = |n: usize| {
        (
            n as u64 * PAGE_SIZE as u64,
            &mem[n * PAGE_SIZE..(n + 1) * PAGE_SIZE],
        )
    };
    // 0..300 contiguous, then every other page 300..600.
    let items: Vec<_> = (0..300).chain((300..600).step_by(2)).map(page).collect();
    let mut w = writer();
    w.begin_epoch(1).unwrap();
    assert_eq!(w.send_pages(items.iter().copied()).unwrap(), 450);
    w.send_state(b"s").unwrap();
    let commit = w.commit_epoch().unwrap();
    assert_eq!(commit.pages, 450);
    let stream = bytes(&mut w);

    // Frame count: 450 pages at 256 per frame = 2 Pages frames + State.
    assert_eq!(commit.messages, 3);
    let epochs = assemble(&stream);
    assert_eq!(epochs.len(), 1);
    let mut got = Vec::new();
    for w in epochs[0].page_writes() {
        let PageWrite::Data { gpa, data } = w else {
            panic!()
        };
        for (i, p) in data.chunks(PAGE_SIZE).enumerate() {
            got.push((gpa + (i * PAGE_SIZE) as u64, p[0]));
        }
    }
    let want: Vec<_> = items.iter().map(|(g, d)| (*g, d[0])).collect();
    assert_eq!(got, want);
    // Coalescing: the first frame's 256 pages are one run.
    let first = epochs[0].page_writes().next().unwrap();
    assert!(matches!(first, PageWrite::Data { gpa: 0, data } if data.len() == 256 * PAGE_SIZE));
}

#[test]
fn large_runs_split_across_frames() {
    let mem = vec![3u8; 1000 * PAGE_SIZE];
    let mut w = writer();
    w.set_batch_bytes(64 * PAGE_SIZE);
    w.begin_epoch(0).unwrap();
    w.send_pages([(0x100000, &mem[..])]).unwrap();
    w.send_state(b"").unwrap();
    let c = w.commit_epoch().unwrap();
    assert_eq!(c.messages, 16 + 1);
    let e = &assemble(&bytes(&mut w))[0];
    let total: usize = e
        .page_writes()
        .map(|w| match w {
            PageWrite::Data { data, .. } => data.len(),
            PageWrite::Zero { .. } => 0,
        })
        .sum();
    assert_eq!(total, mem.len());
}

#[test]
fn zero_pages_disk_writes_and_outputs() {
    let disk = vec![9u8; 3 << 20];
    let mut w = writer();
    w.begin_epoch(7).unwrap();
    assert_eq!(
        w.send_zero_pages([(0, 10), (10 * 4096, 5), (1 << 30, 1)])
            .unwrap(),
        16
    );
    assert_eq!(
        w.send_disk_writes(2, [(0, &disk[..512]), (1 << 20, &disk[..])])
            .unwrap(),
        512 + (3 << 20)
    );
    w.send_output(3, b"abc").unwrap();
    w.send_output(3, b"").unwrap();
    w.send_state(b"state").unwrap();
    w.commit_epoch().unwrap();
    let e = &assemble(&bytes(&mut w))[0];
    let zeros: Vec<_> = e.page_writes().collect();
    assert_eq!(
        zeros,
        vec![
            PageWrite::Zero { gpa: 0, npages: 15 },
            PageWrite::Zero {
                gpa: 1 << 30,
                npages: 1
            }
        ]
    );
    let d: Vec<_> = e.disk_writes().map(|(_, o, d)| (o, d.len())).collect();
    assert_eq!(d[0], (0, 512));
    assert_eq!(d.iter().map(|x| x.1).sum::<usize>(), 512 + (3 << 20));
    assert_eq!(e.outputs().collect::<Vec<_>>(), vec![(3, &b"abc"[..])]);
    assert_eq!(e.state(), Some(&b"state"[..]));
}

#[test]
fn writer_enforces_epoch_discipline() {
    let page = vec![0u8; PAGE_SIZE];
    let mut w = writer();
    assert!(matches!(
        w.send_pages([(0, &page[..])]),
        Err(SendError::NoOpenEpoch { .. })
    ));
    w.begin_epoch(1).unwrap();
    assert!(matches!(
        w.begin_epoch(2),
        Err(SendError::EpochStillOpen { open: 1, .. })
    ));
    assert!(matches!(
        w.send(&Message::State {
            epoch: 2,
            blob: b""
        }),
        Err(SendError::WrongEpoch {
            epoch: 2,
            open: 1,
            ..
        })
    ));
    let e = w.send_pages([(0x1001, &page[..])]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot send Pages: item 0: gpa 0x1001 is not 4096-byte aligned"
    );
    let e = w.send_pages([(0x1000, &page[..100])]).unwrap_err();
    assert!(
        e.to_string()
            .contains("length 100 is not a positive multiple of 4096"),
        "{e}"
    );
    let e = w.send_disk_writes(0, [(3, &page[..512])]).unwrap_err();
    assert!(
        e.to_string().contains("offset 0x3 is not 512-byte aligned"),
        "{e}"
    );
    assert!(matches!(
        w.send(&Message::EpochCommit(Default::default())),
        Err(SendError::ManualCommit)
    ));
}

#[test]
fn large_state_and_outputs_respect_frame_limit() {
    let mut w = MessageWriter::from_frames(ftvm_wire::FrameWriter::with_limit(Vec::new(), 1000));
    w.begin_epoch(0).unwrap();
    let big = vec![1u8; 2500];
    w.send_output(1, &big).unwrap(); // split into 3
    assert!(matches!(w.send_state(&big), Err(SendError::Frame(_))));
    let page = vec![0u8; PAGE_SIZE];
    assert!(matches!(
        w.send_pages([(0, &page[..])]),
        Err(SendError::LimitTooSmall { .. })
    ));
}

fn shape() -> VmShape {
    VmShape {
        memory_bytes: 256 << 20,
        vcpus: 2,
        device_fingerprint: 0xfeed,
        ..VmShape::default()
    }
}

fn cfg(role: Role, key: Option<&[u8]>) -> HandshakeConfig {
    HandshakeConfig {
        role,
        shape: shape(),
        key: key.map(|k| AuthKey::new(k).unwrap()),
    }
}

type Conn = (
    MessageReader<BufReader<TcpStream>>,
    MessageWriter<TcpStream>,
);

fn tcp_pair() -> (Conn, Conn) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    let split = |s: TcpStream| {
        (
            MessageReader::new(BufReader::with_capacity(1 << 20, s.try_clone().unwrap())),
            MessageWriter::new(s),
        )
    };
    (split(a), split(b))
}

/// Runs a handshake over TCP; returns both results and the connections.
fn handshake(
    initiator: HandshakeConfig,
    responder: HandshakeConfig,
) -> (
    Result<ftvm_wire::Peer, HandshakeError>,
    Result<ftvm_wire::Peer, HandshakeError>,
    Conn,
    Conn,
) {
    let ((mut ir, mut iw), (mut rr, mut rw)) = tcp_pair();
    let t = thread::spawn(move || {
        let res = accept(&mut rr, &mut rw, &responder);
        (res, (rr, rw))
    });
    let ires = initiate(&mut ir, &mut iw, &initiator);
    let (rres, rconn) = t.join().unwrap();
    (ires, rres, (ir, iw), rconn)
}

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

#[test]
fn handshake_without_key() {
    let (i, r, _, _) = handshake(cfg(Role::Primary, None), cfg(Role::Backup, None));
    let i = i.unwrap();
    let r = r.unwrap();
    assert_eq!(i.role, Role::Backup);
    assert_eq!(r.role, Role::Primary);
    assert_eq!(r.shape, shape());
    assert!(!i.authenticated && !r.authenticated);
    // Both sides derive the same session id, and each connection gets its own.
    assert_eq!(i.session, r.session);
    assert_ne!(i.session, [0; ftvm_wire::SESSION_ID_LEN]);
    let (i2, _, _, _) = handshake(cfg(Role::Primary, None), cfg(Role::Backup, None));
    assert_ne!(i2.unwrap().session, i.session);
}

#[test]
fn handshake_with_key_then_tagged_traffic() {
    let (i, r, (_ir, mut iw), (mut rr, mut rw)) =
        handshake(cfg(Role::Primary, Some(KEY)), cfg(Role::Backup, Some(KEY)));
    let (i, r) = (i.unwrap(), r.unwrap());
    assert!(i.authenticated && r.authenticated);
    assert_eq!(i.session, r.session);
    iw.begin_epoch(1).unwrap();
    iw.send_state(b"s").unwrap();
    iw.commit_epoch().unwrap();
    assert!(rr.frames().is_authenticated());
    assert_eq!(
        rr.recv().unwrap().unwrap(),
        Message::EpochBegin { epoch: 1 }
    );
    rw.send(&Message::Ack { epoch: 1 }).unwrap();
}

#[test]
fn handshake_refusals_name_the_problem() {
    // Wrong key: the initiator detects the bad proof and tells the responder.
    let (i, _r, _, (mut rr, _)) = handshake(
        cfg(Role::Primary, Some(KEY)),
        cfg(Role::Backup, Some(b"another key, also 32 bytes long!")),
    );
    let e = i.unwrap_err();
    assert!(e.to_string().contains("pre-shared keys differ"), "{e}");
    let e = rr.recv().unwrap_err();
    assert!(
        matches!(
            e,
            RecvError::UnauthenticatedError {
                code: ErrorCode::AuthFailed,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.error_code(), ErrorCode::AuthFailed);

    // Key on one side only.
    let (i, r, _, _) = handshake(cfg(Role::Primary, None), cfg(Role::Backup, Some(KEY)));
    assert!(matches!(
        i.unwrap_err(),
        HandshakeError::Refused {
            code: ErrorCode::AuthRequired,
            ..
        }
    ));
    assert!(matches!(
        r.unwrap_err(),
        HandshakeError::RefusedPeer {
            code: ErrorCode::AuthRequired,
            ..
        }
    ));
    let (i, _, _, _) = handshake(cfg(Role::Primary, Some(KEY)), cfg(Role::Backup, None));
    assert!(i
        .unwrap_err()
        .to_string()
        .contains("no pre-shared key configured"));

    // Shape.
    let mut other = cfg(Role::Backup, None);
    other.shape.vcpus = 4;
    let (i, _, _, _) = handshake(cfg(Role::Primary, None), other);
    let e = i.unwrap_err();
    assert_eq!(
        e.to_string(),
        "handshake refused by peer: shape mismatch (2): VM shapes differ in vcpus: \
         this backup has [memory 256 MiB, 4 vCPUs, state format 0, 0 net, disks none, devices 0x000000000000feed], \
         the primary has [memory 256 MiB, 2 vCPUs, state format 0, 0 net, disks none, devices 0x000000000000feed]"
    );

    // Role.
    let (i, _, _, _) = handshake(cfg(Role::MigrationSource, None), cfg(Role::Backup, None));
    let e = i.unwrap_err();
    assert!(
        e.to_string()
            .contains("peer is a migration source, a backup accepts only a primary"),
        "{e}"
    );
}

#[test]
fn tampering_in_an_authenticated_session_is_detected() {
    use ftvm_wire::auth::AuthKey as K;
    use ftvm_wire::Nonce;
    let keys = K::new(KEY)
        .unwrap()
        .session_keys(&Nonce([1; 32]), &Nonce([2; 32]));
    let mut w = writer();
    w.frames_mut().set_key(keys.initiator_to_responder.clone());
    w.begin_epoch(1).unwrap();
    w.send_state(b"state").unwrap();
    w.commit_epoch().unwrap();
    let good = bytes(&mut w);
    let read = |b: &[u8]| {
        let mut r = MessageReader::new(b);
        r.frames_mut().set_key(keys.initiator_to_responder.clone());
        let mut n = 0;
        loop {
            match r.recv() {
                Ok(Some(_)) => n += 1,
                Ok(None) => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    };
    assert_eq!(read(&good).unwrap(), 3);
    // Flip each payload byte of the State frame and fix the CRC: tag mismatch.
    let state_start = HEADER_LEN + 8 + 16 + 4; // after EpochBegin frame
    let state_len = 12 + 5;
    for i in 0..state_len {
        let mut bad = good.clone();
        bad[state_start + HEADER_LEN + i] ^= 0x80;
        let end = state_start + HEADER_LEN + state_len + 16;
        let crc = crc32c::crc32c(&bad[state_start..end]);
        bad[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        let e = read(&bad).unwrap_err();
        assert!(
            matches!(e, RecvError::Frame(FrameError::TagMismatch { .. })),
            "{e}"
        );
    }
    // A frame from another session (different nonces) is rejected.
    let other = K::new(KEY)
        .unwrap()
        .session_keys(&Nonce([9; 32]), &Nonce([2; 32]));
    let mut w2 = writer();
    w2.frames_mut().set_key(other.initiator_to_responder);
    w2.begin_epoch(1).unwrap();
    let spliced = bytes(&mut w2);
    assert!(matches!(
        read(&spliced),
        Err(RecvError::Frame(FrameError::TagMismatch { .. }))
    ));
}

#[test]
fn large_epoch_over_tcp() {
    const PAGES: usize = 20_000; // 80 MiB
    let ((_ir, mut iw), (mut rr, mut rw)) = tcp_pair();
    let mem: Vec<u8> = (0..PAGES * PAGE_SIZE).map(|i| (i % 251) as u8).collect();
    let backup = thread::spawn(move || {
        let mut asm = EpochAssembler::new(AssemblerConfig::replication());
        let mut pages = 0u64;
        let mut epochs = Vec::new();
        while let Some(m) = rr.recv().unwrap() {
            match asm.feed(&m).unwrap() {
                Progress::Committed(e) => {
                    for w in e.page_writes() {
                        if let PageWrite::Data { gpa, data } = w {
                            let base = gpa as usize;
                            for (i, b) in data.iter().enumerate().step_by(997) {
                                assert_eq!(*b, ((base + i) % 251) as u8);
                            }
                            pages += (data.len() / PAGE_SIZE) as u64;
                        }
                    }
                    epochs.push(e.epoch());
                    rw.send(&Message::Ack { epoch: e.epoch() }).unwrap();
                }
                Progress::Pending => {}
                Progress::Other => break,
            }
        }
        (epochs, pages, rr.frames().bytes_read())
    });
    let start = std::time::Instant::now();
    for epoch in 0..2u64 {
        iw.begin_epoch(epoch).unwrap();
        // Every other page in epoch 1, all in epoch 0.
        let step = 1 + epoch as usize;
        iw.send_pages((0..PAGES).step_by(step).map(|n| {
            (
                (n * PAGE_SIZE) as u64,
                &mem[n * PAGE_SIZE..(n + 1) * PAGE_SIZE],
            )
        }))
        .unwrap();
        iw.send_state(b"vcpu+devices").unwrap();
        iw.commit_epoch().unwrap();
    }
    iw.send(&Message::Goodbye).unwrap();
    let elapsed = start.elapsed();
    let (epochs, pages, bytes) = backup.join().unwrap();
    assert_eq!(epochs, vec![0, 1]);
    assert_eq!(pages, (PAGES + PAGES / 2) as u64);
    assert_eq!(bytes, iw.frames().bytes_written());
    eprintln!(
        "streamed {} MiB in {:?} ({:.0} MiB/s)",
        bytes >> 20,
        elapsed,
        (bytes >> 20) as f64 / elapsed.as_secs_f64()
    );
}

#[test]
fn truncated_tcp_stream_never_commits() {
    let mut w = writer();
    w.begin_epoch(0).unwrap();
    let page = vec![1u8; PAGE_SIZE];
    w.send_pages([(0, &page[..])]).unwrap();
    w.send_state(b"s").unwrap();
    w.commit_epoch().unwrap();
    let full = bytes(&mut w);
    for cut in 0..full.len() {
        let mut r = MessageReader::new(&full[..cut]);
        let mut asm = EpochAssembler::new(AssemblerConfig::replication());
        let mut committed = false;
        loop {
            match r.recv() {
                Ok(Some(m)) => committed |= matches!(asm.feed(&m).unwrap(), Progress::Committed(_)),
                Ok(None) => {
                    let _ = asm.finish();
                    break;
                }
                Err(_) => break,
            }
        }
        assert!(!committed, "cut at {cut} committed");
    }
}

#[test]
fn reader_reports_decode_position() {
    let mut w = writer();
    w.frames_mut().write_frame(0x77, b"x").unwrap();
    let b = bytes(&mut w);
    let mut r = MessageReader::new(&b[..]);
    let e = r.recv().unwrap_err();
    assert_eq!(
        e.to_string(),
        "frame 0 at byte offset 0: invalid kind 0x0077 payload: unknown frame kind 0x0077"
    );
    assert_eq!(e.error_code(), ErrorCode::Malformed);
    // Remaining input is not needed for this check.
    let _ = (&b[..]).read(&mut [0u8; 1]);
}

/// Throughput of encoding and decoding a 10k-page epoch; run with
/// `cargo test --release -p ftvm-wire --test stream -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_10k_page_epoch() {
    const PAGES: usize = 10_000;
    let mem: Vec<u8> = (0..PAGES * 2 * PAGE_SIZE).map(|i| i as u8).collect();
    // Scattered: every other page, so no coalescing helps.
    let items = || {
        (0..PAGES).map(|n| {
            (
                (2 * n * PAGE_SIZE) as u64,
                &mem[2 * n * PAGE_SIZE..(2 * n + 1) * PAGE_SIZE],
            )
        })
    };
    let mut w = MessageWriter::new(std::io::sink());
    let rounds = 20;
    let t = std::time::Instant::now();
    for e in 0..rounds {
        w.begin_epoch(e).unwrap();
        w.send_pages(items()).unwrap();
        w.send_state(b"s").unwrap();
        w.commit_epoch().unwrap();
    }
    let enc = t.elapsed() / rounds as u32;
    let mut w = MessageWriter::new(Vec::with_capacity(PAGES * PAGE_SIZE + (1 << 20)));
    w.begin_epoch(0).unwrap();
    w.send_pages(items()).unwrap();
    w.send_state(b"s").unwrap();
    w.commit_epoch().unwrap();
    let stream = bytes(&mut w);
    let t = std::time::Instant::now();
    let mut asm = EpochAssembler::new(AssemblerConfig::replication());
    let mut spare = None;
    for _ in 0..rounds {
        let mut r = MessageReader::new(&stream[..]);
        asm = EpochAssembler::new(AssemblerConfig::replication());
        if let Some(s) = spare.take() {
            asm.recycle(s);
        }
        while let Some(m) = r.recv().unwrap() {
            if let Progress::Committed(e) = asm.feed(&m).unwrap() {
                spare = Some(e);
            }
        }
    }
    let dec = t.elapsed() / rounds as u32;
    let mib = (PAGES * PAGE_SIZE) as f64 / (1 << 20) as f64;
    eprintln!(
        "10k pages ({mib:.0} MiB): encode {enc:?} ({:.0} MiB/s), decode+stage {dec:?} ({:.0} MiB/s)",
        mib / enc.as_secs_f64(),
        mib / dec.as_secs_f64()
    );
    drop(asm);
}

#[test]
fn page_runs_from_one_buffer_give_the_same_stream_as_pages() {
    // Runs of all shapes: single pages, runs split across frames, adjacent runs that
    // coalesce, with a small batch so that frames break inside runs.
    let runs: Vec<(u64, u32)> = vec![
        (0, 1),
        (2 * PAGE_SIZE as u64, 7),
        (9 * PAGE_SIZE as u64, 40),
        (49 * PAGE_SIZE as u64, 3),
        (100 * PAGE_SIZE as u64, 1),
        (200 * PAGE_SIZE as u64, 65),
    ];
    let total: usize = runs.iter().map(|r| r.1 as usize).sum();
    let data: Vec<u8> = (0..total * PAGE_SIZE)
        .map(|i| (i / PAGE_SIZE * 7 + i % 251) as u8)
        .collect();
    for batch in [PAGE_SIZE, 5 * PAGE_SIZE, 16 * PAGE_SIZE, 1 << 20] {
        let mut a = writer();
        a.set_batch_bytes(batch);
        a.begin_epoch(3).unwrap();
        let mut off = 0;
        let items: Vec<(u64, &[u8])> = runs
            .iter()
            .map(|&(g, n)| {
                let len = n as usize * PAGE_SIZE;
                off += len;
                (g, &data[off - len..off])
            })
            .collect();
        assert_eq!(a.send_pages(items).unwrap(), total as u64);
        a.commit_epoch().unwrap();
        let mut b = writer();
        b.set_batch_bytes(batch);
        b.begin_epoch(3).unwrap();
        assert_eq!(b.send_page_runs(&runs, &data).unwrap(), total as u64);
        b.commit_epoch().unwrap();
        assert_eq!(bytes(&mut a), bytes(&mut b), "batch {batch}");
    }
    // Data that does not match the runs is refused before anything is written.
    let mut w = writer();
    w.begin_epoch(1).unwrap();
    let e = w.send_page_runs(&runs, &data[PAGE_SIZE..]).unwrap_err();
    assert!(matches!(e, SendError::InvalidItem { .. }), "{e}");
    let e = w
        .send_page_runs(&[(0x1001, 1)], &data[..PAGE_SIZE])
        .unwrap_err();
    assert!(matches!(e, SendError::InvalidItem { .. }), "{e}");
    assert_eq!(w.frames().bytes_written(), bytes(&mut w).len() as u64);
}
