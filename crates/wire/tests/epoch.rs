//! The epoch assembler: only complete, verified epochs come out (invariant 2).
#![allow(clippy::unwrap_used, clippy::vec_box)]

use std::borrow::Cow;

use ftvm_wire::{
    AssemblerConfig, DiskWrites, EpochAssembler, EpochCommit, EpochError, ErrorCode, Kind, Message,
    MessageReader, MessageWriter, PageWrite, Pages, Progress, StagedEpoch, ZeroPages, PAGE_SIZE,
};

const DATA: &[u8] = &[0x42; 4 * PAGE_SIZE];

/// A well-formed epoch: begin, pages, zero pages, disk, output, state, commit.
fn epoch_msgs(epoch: u64) -> Vec<Message<'static>> {
    let mut v = vec![
        Message::EpochBegin { epoch },
        Message::Pages(
            Pages::new(epoch, &[(0x1000, 2), (0x8000, 1)], &DATA[..3 * PAGE_SIZE]).unwrap(),
        ),
        Message::ZeroPages(ZeroPages::new(epoch, &[(0x20000, 4)]).unwrap()),
        Message::DiskWrites(DiskWrites::new(epoch, 1, &[(512, &DATA[..1024])]).unwrap()),
        Message::Outputs {
            epoch,
            stream: 1,
            bytes: b"net frame",
        },
        Message::State {
            epoch,
            blob: b"state",
        },
    ];
    let mut c = EpochCommit {
        epoch,
        ..Default::default()
    };
    for m in &v[1..] {
        c.add(m);
    }
    v.push(Message::EpochCommit(c));
    v
}

fn feed_all(
    asm: &mut EpochAssembler,
    msgs: &[Message<'_>],
) -> Result<Vec<Box<StagedEpoch>>, EpochError> {
    let mut out = Vec::new();
    for m in msgs {
        if let Progress::Committed(e) = asm.feed(m)? {
            out.push(e);
        }
    }
    Ok(out)
}

fn asm() -> EpochAssembler {
    EpochAssembler::new(AssemblerConfig::replication())
}

#[test]
fn complete_epoch_is_released_with_everything() {
    let mut a = asm();
    let e = feed_all(&mut a, &epoch_msgs(5)).unwrap();
    assert_eq!(e.len(), 1);
    let e = &e[0];
    assert_eq!(e.epoch(), 5);
    let writes: Vec<_> = e
        .page_writes()
        .map(|w| match w {
            PageWrite::Data { gpa, data } => (gpa, data.len() / PAGE_SIZE, true),
            PageWrite::Zero { gpa, npages } => (gpa, npages as usize, false),
        })
        .collect();
    assert_eq!(
        writes,
        vec![(0x1000, 2, true), (0x8000, 1, true), (0x20000, 4, false)]
    );
    assert_eq!(
        e.disk_writes().collect::<Vec<_>>(),
        vec![(1, 512, &DATA[..1024])]
    );
    assert_eq!(e.flushed_disks().count(), 0);
    assert_eq!(
        e.outputs().collect::<Vec<_>>(),
        vec![(1, &b"net frame"[..])]
    );
    assert_eq!(e.state(), Some(&b"state"[..]));
    assert_eq!(e.commit().pages, 7);
    assert_eq!(a.last_committed(), Some(5));
}

#[test]
fn cut_at_every_message_boundary_never_releases_a_partial_epoch() {
    let mut msgs = epoch_msgs(1);
    msgs.extend(epoch_msgs(2));
    for cut in 0..=msgs.len() {
        let mut a = asm();
        let done = feed_all(&mut a, &msgs[..cut]).unwrap();
        let expect_done = if cut >= 14 {
            2
        } else if cut >= 7 {
            1
        } else {
            0
        };
        assert_eq!(done.len(), expect_done, "cut {cut}");
        let mid_epoch = cut % 7 != 0;
        match a.finish() {
            Err(EpochError::ConnectionLost { epoch, messages }) => {
                assert!(mid_epoch, "cut {cut}");
                assert_eq!(epoch, 1 + (cut / 7) as u64);
                assert_eq!(messages as usize, cut % 7 - 1);
            }
            Ok(()) => assert!(!mid_epoch, "cut {cut}"),
            Err(e) => panic!("cut {cut}: {e}"),
        }
        assert_eq!(a.open_epoch(), None);
    }
}

#[test]
fn cut_inside_every_frame_never_releases_a_partial_epoch() {
    let mut w = MessageWriter::new(Vec::new());
    for m in epoch_msgs(1)
        .iter()
        .filter(|m| m.kind() != Kind::EpochCommit)
    {
        w.send(m).unwrap();
    }
    w.commit_epoch().unwrap();
    w.flush().unwrap();
    let full = w.frames().get_ref().clone();
    let mut committed_at = None;
    for cut in 0..=full.len() {
        let mut r = MessageReader::new(&full[..cut]);
        let mut a = asm();
        let mut got = false;
        while let Ok(Some(m)) = r.recv() {
            got |= matches!(a.feed(&m).unwrap(), Progress::Committed(_));
        }
        if got && committed_at.is_none() {
            committed_at = Some(cut);
        }
        assert_eq!(got, cut == full.len(), "cut {cut}");
    }
    assert_eq!(committed_at, Some(full.len()));
}

#[test]
fn every_dropped_message_is_detected_at_commit() {
    let msgs = epoch_msgs(3);
    for drop in 1..msgs.len() - 1 {
        let mut v = msgs.clone();
        let dropped = v.remove(drop);
        let e = feed_all(&mut asm(), &v).unwrap_err();
        match dropped.kind() {
            Kind::State => {
                // Dropping State changes the counts first.
                assert!(
                    matches!(
                        e,
                        EpochError::CommitMismatch {
                            what: "messages",
                            ..
                        }
                    ),
                    "{e}"
                )
            }
            _ => assert!(
                matches!(e, EpochError::CommitMismatch { .. }),
                "drop {drop}: {e}"
            ),
        }
    }
    // Swap two data messages: counts equal, digest differs.
    let mut v = msgs.clone();
    v.swap(1, 2);
    let e = feed_all(&mut asm(), &v).unwrap_err();
    assert!(
        matches!(e, EpochError::DigestMismatch { epoch: 3, .. }),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!("epoch 3 corrupt: commit digest {:#010x}, received data digest {:#010x}: epoch discarded",
            match &v[6] { Message::EpochCommit(c) => c.digest, _ => 0 },
            match &e { EpochError::DigestMismatch { received, .. } => *received, _ => 0 })
    );
}

#[test]
fn commit_mismatch_message() {
    let mut v = epoch_msgs(12);
    v.remove(4); // Outputs
    let e = feed_all(&mut asm(), &v).unwrap_err();
    assert_eq!(
        e.to_string(),
        "epoch 12 incomplete: commit says 5 messages, received 4: epoch discarded"
    );
}

#[test]
fn protocol_violations() {
    let ok = epoch_msgs(1);
    let cases: Vec<(Vec<Message<'_>>, &str)> = vec![
        (
            vec![ok[1].clone()],
            "Pages for epoch 1 arrived outside any epoch",
        ),
        (
            vec![
                ok[0].clone(),
                Message::State {
                    epoch: 2,
                    blob: b"",
                },
            ],
            "State for epoch 2 inside epoch 1: epoch 1 discarded",
        ),
        (
            vec![
                ok[0].clone(),
                ok[1].clone(),
                Message::EpochBegin { epoch: 2 },
            ],
            "EpochBegin 2 before epoch 1 was committed: epoch 1 discarded",
        ),
        (
            vec![ok[0].clone(), Message::Ack { epoch: 1 }],
            "unexpected Ack on the epoch stream inside epoch 1: epoch 1 discarded",
        ),
        (
            vec![Message::Ack { epoch: 1 }],
            "unexpected Ack on the epoch stream",
        ),
        (
            vec![ok[0].clone(), Message::Goodbye],
            "epoch 1 interrupted by Goodbye before its commit: epoch discarded",
        ),
        (
            vec![
                ok[0].clone(),
                Message::Error {
                    code: ErrorCode::Internal,
                    message: Cow::Borrowed("disk full"),
                },
            ],
            "epoch 1 interrupted by Error before its commit: epoch discarded",
        ),
        (
            vec![ok[0].clone(), Message::MigrationDone { epoch: 1 }],
            "epoch 1 interrupted by MigrationDone before its commit: epoch discarded",
        ),
        (
            vec![ok[0].clone(), ok[5].clone(), ok[5].clone()],
            "epoch 1 carries a second State message: epoch discarded",
        ),
        (
            vec![ok[6].clone()],
            "EpochCommit for epoch 1 arrived outside any epoch",
        ),
    ];
    for (msgs, want) in cases {
        let mut a = asm();
        let e = feed_all(&mut a, &msgs).unwrap_err();
        assert_eq!(e.to_string(), want);
        assert_eq!(a.open_epoch(), None);
        assert_eq!(a.last_committed(), None);
    }
    // Missing state.
    let mut a = asm();
    let msgs = vec![
        Message::EpochBegin { epoch: 4 },
        Message::EpochCommit(EpochCommit {
            epoch: 4,
            ..Default::default()
        }),
    ];
    assert_eq!(
        feed_all(&mut a, &msgs).unwrap_err().to_string(),
        "epoch 4 committed without a State message: epoch discarded"
    );
    // ... which migration allows.
    let mut a = EpochAssembler::new(AssemblerConfig::migration());
    assert_eq!(feed_all(&mut a, &msgs).unwrap().len(), 1);
}

#[test]
fn epochs_must_be_consecutive() {
    let mut a = asm();
    feed_all(&mut a, &epoch_msgs(10)).unwrap();
    let e = feed_all(&mut a, &epoch_msgs(12)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "epoch 12 begins after committed epoch 10: expected epoch 11"
    );
    // Replay of the committed epoch is refused too.
    assert!(matches!(
        feed_all(&mut a, &epoch_msgs(10)),
        Err(EpochError::Gap { .. })
    ));
    assert_eq!(feed_all(&mut a, &epoch_msgs(11)).unwrap().len(), 1);
    let mut r = EpochAssembler::resume(AssemblerConfig::replication(), 99);
    assert!(feed_all(&mut r, &epoch_msgs(99)).is_err());
    assert_eq!(feed_all(&mut r, &epoch_msgs(100)).unwrap().len(), 1);
}

#[test]
fn heartbeats_pass_through_anywhere() {
    let mut msgs = epoch_msgs(1);
    msgs.insert(
        3,
        Message::Heartbeat {
            epoch: 1,
            sent_unix_nanos: 5,
        },
    );
    let mut a = asm();
    let mut other = 0;
    let mut done = 0;
    for m in &msgs {
        match a.feed(m).unwrap() {
            Progress::Other => other += 1,
            Progress::Committed(_) => done += 1,
            Progress::Pending => {}
        }
    }
    assert_eq!((other, done), (1, 1));
    assert!(matches!(
        a.feed(&Message::Goodbye).unwrap(),
        Progress::Other
    ));
}

#[test]
fn limits() {
    let cfg = AssemblerConfig {
        max_staged_bytes: 2 * PAGE_SIZE as u64,
        ..AssemblerConfig::replication()
    };
    let e = feed_all(&mut EpochAssembler::new(cfg), &epoch_msgs(1)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "epoch 1 exceeds the staging limit of 8 KiB: epoch discarded"
    );
    let cfg = AssemblerConfig {
        gpa_limit: Some(0x8000),
        ..AssemblerConfig::replication()
    };
    let e = feed_all(&mut EpochAssembler::new(cfg), &epoch_msgs(1)).unwrap_err();
    assert!(
        matches!(e, EpochError::GpaOutOfRange { gpa: 0x8000, .. }),
        "{e}"
    );
}

#[test]
fn recycled_buffers_do_not_leak_old_data() {
    let mut a = asm();
    let e = feed_all(&mut a, &epoch_msgs(1)).unwrap().pop().unwrap();
    a.recycle(e);
    let small = vec![
        Message::EpochBegin { epoch: 2 },
        Message::State {
            epoch: 2,
            blob: b"x",
        },
    ];
    let mut c = EpochCommit {
        epoch: 2,
        ..Default::default()
    };
    c.add(&small[1]);
    let mut msgs = small.clone();
    msgs.push(Message::EpochCommit(c));
    let e = feed_all(&mut a, &msgs).unwrap().pop().unwrap();
    assert_eq!(e.page_writes().count(), 0);
    assert_eq!(e.disk_writes().count(), 0);
    assert_eq!(e.outputs().count(), 0);
    assert_eq!(e.state(), Some(&b"x"[..]));
}

#[test]
fn disk_flushes_are_staged_and_counted() {
    let mut v = epoch_msgs(4);
    let commit = v.pop().unwrap();
    v.push(Message::DiskFlush { epoch: 4, disk: 3 });
    v.push(Message::DiskFlush { epoch: 4, disk: 0 });
    // Re-tally the commit over the data messages.
    let mut c = EpochCommit {
        epoch: 4,
        ..EpochCommit::default()
    };
    for m in &v[1..] {
        c.add(m);
    }
    assert_ne!(Message::EpochCommit(c), commit);
    v.push(Message::EpochCommit(c));
    let done = feed_all(&mut asm(), &v).unwrap();
    assert_eq!(done[0].flushed_disks().collect::<Vec<_>>(), vec![0, 3]);
    // A dropped flush is detected at commit: the epoch never commits.
    let mut w = v.clone();
    w.remove(w.len() - 2);
    assert!(feed_all(&mut asm(), &w).is_err());
    // DiskHashes does not belong on the epoch stream.
    let h = ftvm_wire::DiskHashes::new(0, 1, 65536, 1 << 20, 0, &[0u8; 32]).unwrap();
    let mut x = v[..3].to_vec();
    x.push(Message::DiskHashes(h));
    let e = feed_all(&mut asm(), &x).unwrap_err();
    assert!(
        matches!(
            e,
            EpochError::Unexpected {
                kind: Kind::DiskHashes,
                open: Some(4)
            }
        ),
        "{e}"
    );
}

/// A guest of 1 MiB (256 pages): a peer that sends the same page run over and over, or
/// endless zero runs, is refused once the epoch carries more pages than the guest has;
/// the staged data never grows past the guest's RAM. (With a fixed 2 GiB limit and no
/// page bound, 2 GiB of repeated pages or millions of zero runs were staged.)
#[test]
fn endless_page_runs_are_bounded_by_guest_ram() {
    let cfg = AssemblerConfig::for_guest(1 << 20, 1 << 20, 0, 0, 1 << 20);
    assert_eq!(cfg.max_pages, 256);
    let page = [7u8; PAGE_SIZE];
    for zero in [false, true] {
        let mut a = EpochAssembler::new(cfg);
        a.feed(&Message::EpochBegin { epoch: 1 }).unwrap();
        let mut sent = 0u64;
        let err = loop {
            let m = if zero {
                Message::ZeroPages(ZeroPages::new(1, &[(0x3000, 1)]).unwrap())
            } else {
                Message::Pages(Pages::new(1, &[(0x3000, 1)], &page).unwrap())
            };
            match a.feed(&m) {
                Ok(Progress::Pending) => sent += 1,
                Ok(p) => panic!("unexpected {p:?}"),
                Err(e) => break e,
            }
            assert!(sent <= 256, "more pages than the guest has were staged");
        };
        assert_eq!(sent, 256, "a whole guest's worth of pages is accepted");
        assert_eq!(
            err.to_string(),
            "epoch 1 carries more than 256 pages (the guest's RAM): epoch discarded"
        );
        // The epoch is gone: its commit is refused, nothing comes out.
        assert_eq!(a.open_epoch(), None);
    }
    // Page runs beyond the end of guest memory are refused at staging.
    let mut a = EpochAssembler::new(cfg);
    a.feed(&Message::EpochBegin { epoch: 1 }).unwrap();
    let e = a
        .feed(&Message::Pages(
            Pages::new(1, &[(1 << 20, 1)], &page).unwrap(),
        ))
        .unwrap_err();
    assert!(matches!(e, EpochError::GpaOutOfRange { .. }), "{e}");
    // A whole guest's memory in one epoch (the initial sync) fits.
    let mut a = EpochAssembler::new(cfg);
    let data = vec![1u8; 128 * PAGE_SIZE];
    let mut msgs = vec![
        Message::EpochBegin { epoch: 1 },
        Message::Pages(Pages::new(1, &[(0, 128)], &data).unwrap()),
        Message::ZeroPages(ZeroPages::new(1, &[(128 * PAGE_SIZE as u64, 128)]).unwrap()),
    ];
    let mut c = EpochCommit {
        epoch: 1,
        ..Default::default()
    };
    for m in &msgs[1..] {
        c.add(m);
    }
    msgs.push(Message::EpochCommit(c));
    assert_eq!(feed_all(&mut a, &msgs).unwrap().len(), 1);
}

#[test]
fn pages_applied_on_arrival_are_not_staged_but_still_verified() {
    let on_arrival =
        || EpochAssembler::new(AssemblerConfig::replication()).pages_applied_on_arrival();
    // Complete epoch: everything but the pages is staged, the commit is verified.
    let e = feed_all(&mut on_arrival(), &epoch_msgs(5)).unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].page_writes().count(), 0, "pages must not be staged");
    assert_eq!(e[0].state(), Some(&b"state"[..]));
    assert_eq!(e[0].disk_writes().count(), 1);
    assert_eq!(e[0].commit().pages, 2 + 1 + 4);
    // A dropped or reordered page message is still caught at the commit.
    let msgs = epoch_msgs(3);
    for drop in [1, 2] {
        let mut v = msgs.clone();
        v.remove(drop);
        let err = feed_all(&mut on_arrival(), &v).unwrap_err();
        assert!(matches!(err, EpochError::CommitMismatch { .. }), "{err}");
    }
    let mut v = msgs.clone();
    v.swap(1, 2);
    let err = feed_all(&mut on_arrival(), &v).unwrap_err();
    assert!(matches!(err, EpochError::DigestMismatch { .. }), "{err}");
    // Pages of another epoch are refused before the caller would apply them.
    let mut a = on_arrival();
    a.feed(&Message::EpochBegin { epoch: 7 }).unwrap();
    let err = a
        .feed(&Message::Pages(
            Pages::new(8, &[(0x1000, 1)], &DATA[..PAGE_SIZE]).unwrap(),
        ))
        .unwrap_err();
    assert!(
        matches!(
            err,
            EpochError::WrongEpoch {
                got: 8,
                open: 7,
                ..
            }
        ),
        "{err}"
    );
    // The gpa limit still applies, and pages do not count against the staging limit.
    let cfg = AssemblerConfig {
        gpa_limit: Some(0x8000),
        ..AssemblerConfig::replication()
    };
    let err = feed_all(
        &mut EpochAssembler::new(cfg).pages_applied_on_arrival(),
        &epoch_msgs(1),
    )
    .unwrap_err();
    assert!(
        matches!(err, EpochError::GpaOutOfRange { gpa: 0x8000, .. }),
        "{err}"
    );
    let cfg = AssemblerConfig {
        max_staged_bytes: 2 * PAGE_SIZE as u64,
        ..AssemblerConfig::replication()
    };
    assert!(feed_all(
        &mut EpochAssembler::new(cfg).pages_applied_on_arrival(),
        &epoch_msgs(1)
    )
    .is_ok());
}
