//! Message encoding: round trips, every malformed case, property tests.
#![allow(clippy::unwrap_used)]

use std::borrow::Cow;

use ftvm_wire::fuzzing::sample_messages;
use ftvm_wire::message::{DecodeError, Kind, MAX_ERROR_MESSAGE};
use ftvm_wire::{
    DiskHashes, DiskWrites, EpochCommit, ErrorCode, Message, Nonce, Pages, Role, SwitchoverPhase,
    VmShape, ZeroPages, PAGE_SIZE,
};
use proptest::prelude::*;

fn round_trip(m: &Message<'_>) {
    let payload = m.to_payload().unwrap();
    assert_eq!(payload.len() as u64, m.encoded_len(), "{m:?}");
    let back = Message::decode(m.kind() as u16, &payload).unwrap();
    assert_eq!(&back, m);
}

fn payload_of(m: &Message<'_>) -> Vec<u8> {
    m.to_payload().unwrap()
}

fn decode_err(kind: Kind, payload: &[u8]) -> DecodeError {
    Message::decode(kind as u16, payload).unwrap_err()
}

#[test]
fn every_kind_round_trips() {
    let samples = sample_messages();
    for k in Kind::ALL {
        assert!(samples.iter().any(|m| m.kind() == k), "no sample for {k}");
    }
    for m in &samples {
        round_trip(m);
    }
}

#[test]
fn unknown_kind() {
    let e = Message::decode(0x77, &[]).unwrap_err();
    assert_eq!(e.to_string(), "unknown frame kind 0x0077");
}

#[test]
fn truncation_inside_every_message_is_an_error() {
    for m in sample_messages() {
        let p = payload_of(&m);
        for cut in 0..p.len() {
            let e = Message::decode(m.kind() as u16, &p[..cut]);
            assert!(e.is_err(), "{} cut at {cut} decoded", m.kind());
        }
    }
}

#[test]
fn trailing_bytes_are_rejected_everywhere() {
    for m in sample_messages() {
        let mut p = payload_of(&m);
        p.push(0);
        let e = Message::decode(m.kind() as u16, &p).unwrap_err();
        // Variable-length bodies notice the extra byte as a length mismatch.
        assert!(
            matches!(
                e,
                DecodeError::TrailingBytes { extra: 1, .. } | DecodeError::PageDataLength { .. }
            ),
            "{}: {e}",
            m.kind()
        );
    }
    let e = decode_err(Kind::Ack, &[0; 9]);
    assert_eq!(
        e.to_string(),
        "1 trailing bytes after the Ack body (payload offset 8)"
    );
}

#[test]
fn switchover_rejects_unknown_phases_and_flags() {
    let mut p = 7u64.to_le_bytes().to_vec();
    p.extend_from_slice(&[3, 1]);
    assert_eq!(
        Message::decode(Kind::Switchover as u16, &p).unwrap(),
        Message::Switchover {
            epoch: 7,
            phase: SwitchoverPhase::Released,
            stop: true
        }
    );
    p[8] = 4;
    let e = decode_err(Kind::Switchover, &p);
    assert!(e.to_string().contains("switchover phase"), "{e}");
    p[8] = 1;
    p[9] = 2;
    let e = decode_err(Kind::Switchover, &p);
    assert!(e.to_string().contains("switchover flags"), "{e}");
    let e = decode_err(Kind::Switchover, &p[..9]);
    assert!(e.to_string().contains("truncated switchover flags"), "{e}");
}

#[test]
fn truncated_error_names_field() {
    let e = decode_err(Kind::Heartbeat, &[0; 12]);
    assert_eq!(
        e.to_string(),
        "truncated sent_unix_nanos: needs 8 bytes at payload offset 8, only 4 remain"
    );
}

fn pages_payload(epoch: u64, runs: &[(u64, u32)], data_len: usize) -> Vec<u8> {
    let mut p = epoch.to_le_bytes().to_vec();
    p.extend_from_slice(&(runs.len() as u32).to_le_bytes());
    for (g, n) in runs {
        p.extend_from_slice(&g.to_le_bytes());
        p.extend_from_slice(&n.to_le_bytes());
    }
    p.extend(std::iter::repeat_n(7u8, data_len));
    p
}

#[test]
fn pages_validation() {
    // Misaligned gpa.
    let e = decode_err(Kind::Pages, &pages_payload(1, &[(0x1001, 1)], PAGE_SIZE));
    assert_eq!(
        e.to_string(),
        "run gpa 0x1001 is not 4096-byte aligned (payload offset 12)"
    );
    // Zero page count.
    let e = decode_err(Kind::Pages, &pages_payload(1, &[(0x1000, 0)], 0));
    assert!(
        matches!(
            e,
            DecodeError::BadLength {
                what: "run page count",
                ..
            }
        ),
        "{e}"
    );
    // Data shorter / longer than the runs.
    let e = decode_err(Kind::Pages, &pages_payload(1, &[(0x1000, 2)], PAGE_SIZE));
    assert_eq!(
        e.to_string(),
        "page runs describe 8 KiB of data but the payload carries 4 KiB"
    );
    let e = decode_err(
        Kind::Pages,
        &pages_payload(1, &[(0x1000, 1)], PAGE_SIZE + 1),
    );
    assert!(matches!(e, DecodeError::PageDataLength { .. }), "{e}");
    // Empty.
    let e = decode_err(Kind::Pages, &pages_payload(1, &[], 0));
    assert_eq!(e, DecodeError::Empty { kind: "Pages" });
    // Count far beyond the payload is refused before looping.
    let mut p = 1u64.to_le_bytes().to_vec();
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    let e = decode_err(Kind::Pages, &p);
    assert!(
        matches!(
            e,
            DecodeError::CountTooLarge {
                count: 0xffff_ffff,
                ..
            }
        ),
        "{e}"
    );
    // Run that wraps the address space.
    let e = decode_err(
        Kind::Pages,
        &pages_payload(1, &[(u64::MAX - 4095, 2)], 2 * PAGE_SIZE),
    );
    assert!(matches!(e, DecodeError::Overflow { .. }), "{e}");
}

#[test]
fn pages_accessors() {
    let data: Vec<u8> = (0..3 * PAGE_SIZE).map(|i| (i / PAGE_SIZE) as u8).collect();
    let p = Pages::new(4, &[(0x10000, 2), (0x40000, 1)], &data).unwrap();
    assert_eq!(p.page_count(), 3);
    let runs: Vec<_> = p.runs().map(|(g, d)| (g, d.len())).collect();
    assert_eq!(runs, vec![(0x10000, 2 * PAGE_SIZE), (0x40000, PAGE_SIZE)]);
    let pages: Vec<_> = p.pages().map(|(g, d)| (g, d[0])).collect();
    assert_eq!(pages, vec![(0x10000, 0), (0x11000, 1), (0x40000, 2)]);
    assert!(Pages::new(4, &[(0x10000, 2)], &data).is_err());
}

#[test]
fn zero_pages_validation() {
    let z = ZeroPages::new(3, &[(0, 10), (0x100000, 1)]).unwrap();
    assert_eq!(z.page_count(), 11);
    let mut p = payload_of(&Message::ZeroPages(z));
    p[12] = 1; // gpa 1
    let e = decode_err(Kind::ZeroPages, &p);
    assert!(matches!(e, DecodeError::Misaligned { value: 1, .. }), "{e}");
    assert!(ZeroPages::new(3, &[]).is_err());
}

#[test]
fn disk_flush_and_hashes_validation() {
    // Disk index beyond the limit.
    let mut p = payload_of(&Message::DiskFlush { epoch: 3, disk: 1 });
    p[8] = 4;
    let e = decode_err(Kind::DiskFlush, &p);
    assert!(
        matches!(
            e,
            DecodeError::BadValue {
                what: "disk index",
                value: 4,
                offset: 8
            }
        ),
        "{e}"
    );
    let mut p = payload_of(&Message::DiskWrites(
        DiskWrites::new(1, 3, &[(0, &[0u8; 512][..])]).unwrap(),
    ));
    p[8] = 9;
    let e = decode_err(Kind::DiskWrites, &p);
    assert!(
        matches!(
            e,
            DecodeError::BadValue {
                what: "disk index",
                ..
            }
        ),
        "{e}"
    );

    let hashes = [7u8; 64];
    let h = DiskHashes::new(0, 1, 65536, 3 * 65536, 1, &hashes).unwrap();
    assert_eq!(h.hashes().map(|(b, _)| b).collect::<Vec<_>>(), vec![1, 2]);
    let p = payload_of(&Message::DiskHashes(h));
    assert!(Message::decode(Kind::DiskHashes as u16, &p).is_ok());
    // Blocks beyond the image's end.
    assert!(DiskHashes::new(0, 1, 65536, 3 * 65536, 2, &hashes).is_err());
    // Block size not a power of two, disk index >= disk count, odd image size.
    assert!(DiskHashes::new(0, 1, 3000, 1 << 20, 0, &hashes).is_err());
    assert!(DiskHashes::new(1, 1, 65536, 1 << 20, 0, &hashes).is_err());
    assert!(DiskHashes::new(0, 1, 65536, 1000, 0, &hashes).is_err());
    // A hash count larger than the payload.
    let mut q = p.clone();
    q[22..26].copy_from_slice(&1000u32.to_le_bytes());
    let e = decode_err(Kind::DiskHashes, &q);
    assert!(
        matches!(
            e,
            DecodeError::CountTooLarge {
                what: "block hash",
                ..
            }
        ),
        "{e}"
    );
    // Trailing bytes.
    let mut q = p.clone();
    q.push(0);
    assert!(matches!(
        decode_err(Kind::DiskHashes, &q),
        DecodeError::TrailingBytes { .. }
    ));
}

#[test]
fn disk_writes_validation() {
    let data = vec![1u8; 1024];
    let d = DiskWrites::new(2, 0, &[(512, &data[..512]), (4096, &data)]).unwrap();
    let writes: Vec<_> = d.writes().map(|(o, d)| (o, d.len())).collect();
    assert_eq!(writes, vec![(512, 512), (4096, 1024)]);
    assert!(DiskWrites::new(2, 0, &[(100, &data[..512])]).is_err());
    assert!(DiskWrites::new(2, 0, &[(0, &data[..100])]).is_err());
    assert!(DiskWrites::new(2, 0, &[]).is_err());

    let mut p = payload_of(&Message::DiskWrites(d));
    // Second entry's length field: 13 + (12 + 512) + 8.
    let at = 13 + 12 + 512 + 8;
    p[at..at + 4].copy_from_slice(&1000u32.to_le_bytes());
    let e = decode_err(Kind::DiskWrites, &p);
    assert!(matches!(e, DecodeError::BadLength { len: 1000, .. }), "{e}");
    p[at..at + 4].copy_from_slice(&2048u32.to_le_bytes());
    let e = decode_err(Kind::DiskWrites, &p);
    assert!(
        matches!(
            e,
            DecodeError::Truncated {
                what: "disk write data",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn error_message_validation() {
    let long = "x".repeat(MAX_ERROR_MESSAGE + 1);
    let m = Message::Error {
        code: ErrorCode::Internal,
        message: Cow::Borrowed(&long),
    };
    assert!(m.to_payload().is_err());
    let mut p = 10u16.to_le_bytes().to_vec();
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&[0xff, 0xfe]);
    let e = decode_err(Kind::Error, &p);
    assert_eq!(
        e.to_string(),
        "error message is not valid UTF-8 (at byte 0 of the string)"
    );
    let mut p = 10u16.to_le_bytes().to_vec();
    p.extend_from_slice(&5000u16.to_le_bytes());
    assert!(matches!(
        decode_err(Kind::Error, &p),
        DecodeError::TooLong { len: 5000, .. }
    ));
    // Unknown error codes survive.
    let m = Message::Error {
        code: ErrorCode::from_u16(999),
        message: Cow::Borrowed("?"),
    };
    round_trip(&m);
}

#[test]
fn hello_validation() {
    let shape = VmShape {
        memory_bytes: 1 << 30,
        vcpus: 1,
        device_fingerprint: 0,
        ..VmShape::default()
    };
    let m = Message::Hello(ftvm_wire::Hello::new(
        Role::Primary,
        shape,
        Nonce([0; 32]),
        false,
    ));
    let mut p = payload_of(&m);
    p[2] = 9; // role
    assert_eq!(
        decode_err(Kind::Hello, &p).to_string(),
        "role has undefined value 0x9 (payload offset 2)"
    );
    p[2] = 1;
    p[3] = 2; // flags
    assert!(matches!(
        decode_err(Kind::Hello, &p),
        DecodeError::BadValue { what: "flags", .. }
    ));
}

#[test]
fn outputs_must_not_be_empty() {
    let m = Message::Outputs {
        epoch: 1,
        stream: 0,
        bytes: b"",
    };
    assert!(m.to_payload().is_err());
    let mut p = 1u64.to_le_bytes().to_vec();
    p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    assert_eq!(
        decode_err(Kind::Outputs, &p),
        DecodeError::Empty { kind: "Outputs" }
    );
}

#[test]
fn shape_diff_names_every_difference() {
    let a = VmShape {
        memory_bytes: 512 << 20,
        vcpus: 2,
        device_fingerprint: 1,
        ..VmShape::default()
    };
    assert_eq!(a.diff(&a), None);
    let b = VmShape {
        memory_bytes: 1 << 30,
        vcpus: 4,
        ..a
    };
    assert_eq!(
        a.diff(&b).unwrap(),
        "differ in memory, vcpus: here [memory 512 MiB, 2 vCPUs, state format 0, 0 net, disks none, devices 0x0000000000000001]; \
         peer [memory 1 GiB, 4 vCPUs, state format 0, 0 net, disks none, devices 0x0000000000000001]"
    );
    let c = VmShape {
        device_fingerprint: 2,
        ..a
    };
    assert!(a.diff(&c).unwrap().contains("device configuration"));
}

fn arb_runs() -> impl Strategy<Value = Vec<(u64, u32)>> {
    prop::collection::vec((0u64..1 << 40, 1u32..4), 1..8).prop_map(|v| {
        v.into_iter()
            .map(|(g, n)| (g * PAGE_SIZE as u64, n))
            .collect()
    })
}

proptest! {
    #[test]
    fn prop_pages_round_trip(epoch in any::<u64>(), runs in arb_runs(), fill in any::<u8>()) {
        let n: u64 = runs.iter().map(|r| u64::from(r.1)).sum();
        let data = vec![fill; n as usize * PAGE_SIZE];
        let p = Pages::new(epoch, &runs, &data).unwrap();
        round_trip(&Message::Pages(p));
    }

    #[test]
    fn prop_zero_pages_round_trip(epoch in any::<u64>(), runs in arb_runs()) {
        round_trip(&Message::ZeroPages(ZeroPages::new(epoch, &runs).unwrap()));
    }

    #[test]
    fn prop_disk_writes_round_trip(epoch in any::<u64>(),
        writes in prop::collection::vec((0u64..1 << 30, 1usize..5, any::<u8>()), 1..6)) {
        let bufs: Vec<(u64, Vec<u8>)> = writes.iter().map(|(o, n, b)| (o * 512, vec![*b; n * 512])).collect();
        let refs: Vec<(u64, &[u8])> = bufs.iter().map(|(o, d)| (*o, &d[..])).collect();
        round_trip(&Message::DiskWrites(DiskWrites::new(epoch, (epoch % 4) as u8, &refs).unwrap()));
    }

    #[test]
    fn prop_scalars_round_trip(epoch in any::<u64>(), t in any::<u64>(), stream in any::<u16>(),
        bytes in prop::collection::vec(any::<u8>(), 1..300), code in any::<u16>(), text in ".{0,40}",
        c in (any::<u32>(), any::<u64>(), any::<u64>(), any::<u32>())) {
        round_trip(&Message::Heartbeat { epoch, sent_unix_nanos: t });
        round_trip(&Message::EpochBegin { epoch });
        round_trip(&Message::Ack { epoch });
        round_trip(&Message::MigrationDone { epoch });
        for phase in [SwitchoverPhase::Request, SwitchoverPhase::Ready, SwitchoverPhase::Released] {
            round_trip(&Message::Switchover { epoch, phase, stop: t % 2 == 1 });
        }
        round_trip(&Message::Outputs { epoch, stream, bytes: &bytes });
        round_trip(&Message::State { epoch, blob: &bytes });
        round_trip(&Message::Error { code: ErrorCode::from_u16(code), message: Cow::Borrowed(&text) });
        round_trip(&Message::EpochCommit(EpochCommit { epoch, messages: c.0, pages: c.1, bytes: c.2, digest: c.3 }));
    }

    #[test]
    fn prop_decoder_never_panics(kind in 0u16..0x20, payload in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = ftvm_wire::fuzzing::message_decode(&[&kind.to_le_bytes()[..], &payload].concat());
    }
}
