//! `EpochAssembler::feed_frame`: received page frames staged in place (no copy) and the
//! epoch digest extended from the frame layer's payload CRC must release exactly what
//! `feed` releases, and nothing of a partial or corrupt epoch.
#![allow(clippy::unwrap_used)]

use ftvm_wire::auth::{AuthKey, TagKey};
use ftvm_wire::frame::{CRC_LEN, HEADER_LEN};
use ftvm_wire::{
    decode_frame, AssemblerConfig, EpochAssembler, EpochError, FedFrame, FrameFeedError,
    FrameReader, Kind, MessageWriter, Nonce, PageWrite, Progress, StagedEpoch, PAGE_SIZE,
};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

/// The key one direction of a keyed session between the test's two ends uses.
fn session_key() -> TagKey {
    AuthKey::new(KEY)
        .unwrap()
        .session_keys(&Nonce([1; 32]), &Nonce([2; 32]))
        .initiator_to_responder
}

/// Page contents that differ per epoch, page and byte (a wrong offset or a reused
/// buffer shows as a content mismatch).
fn page(epoch: u64, i: usize) -> Vec<u8> {
    (0..PAGE_SIZE)
        .map(|b| (epoch as usize * 131 + i * 7 + b * 13 % 251) as u8)
        .collect()
}

/// A stream of `epochs` epochs (from 1), each with `n` pages in several runs, spread over
/// more than one frame (batch of 8 pages), zero pages, an output and the state.
fn stream(epochs: u64, n: usize, key: bool) -> Vec<u8> {
    let mut w = MessageWriter::new(Vec::new());
    if key {
        w.frames_mut().set_key(session_key());
    }
    w.set_batch_bytes(8 * PAGE_SIZE);
    for e in 1..=epochs {
        let pages: Vec<(u64, Vec<u8>)> = (0..n)
            .map(|i| ((i as u64 * 3 / 2) * PAGE_SIZE as u64, page(e, i)))
            .collect();
        w.begin_epoch(e).unwrap();
        w.send_pages(pages.iter().map(|(g, d)| (*g, &d[..])))
            .unwrap();
        w.send_zero_pages([(0x100_0000u64, 3u32)]).unwrap();
        w.send_output(1, b"out").unwrap();
        w.send_state(b"state").unwrap();
        w.commit_epoch().unwrap();
    }
    w.flush().unwrap();
    w.frames().get_ref().clone()
}

/// What an epoch writes, owned: (gpa, data or zero pages).
fn writes(e: &StagedEpoch) -> Vec<(u64, Result<Vec<u8>, u32>)> {
    e.page_writes()
        .map(|w| match w {
            PageWrite::Data { gpa, data } => (gpa, Ok(data.to_vec())),
            PageWrite::Zero { gpa, npages } => (gpa, Err(npages)),
        })
        .collect()
}

type Released = Vec<(u64, Vec<(u64, Result<Vec<u8>, u32>)>, Option<Vec<u8>>)>;

/// Reads `bytes` through `feed_frame`, recycling every applied epoch and its buffers as
/// the backup does; returns the released epochs (as applied at release) and the error.
fn through_frames(bytes: &[u8], key: bool) -> (Released, Option<FrameFeedError>) {
    let mut r = FrameReader::new(bytes);
    if key {
        r.set_key(session_key());
    }
    let mut a = EpochAssembler::new(AssemblerConfig::replication());
    let mut out = Vec::new();
    loop {
        let spare = a.spare_buffer();
        let Ok(Some(frame)) = r.read_frame_owned(spare) else {
            return (out, None);
        };
        let FedFrame { progress, frame } = match a.feed_frame(frame) {
            Ok(f) => f,
            Err(e) => return (out, Some(e)),
        };
        if let Progress::Committed(e) = progress {
            out.push((e.epoch(), writes(&e), e.state().map(<[u8]>::to_vec)));
            a.recycle(e);
        }
        if let Some(f) = frame {
            a.return_buffer(f.buf);
        }
    }
}

/// The same through `MessageReader::recv` and `feed` (the copying path).
fn through_messages(bytes: &[u8], key: bool) -> (Released, Option<EpochError>) {
    let mut r = ftvm_wire::MessageReader::new(bytes);
    if key {
        r.frames_mut().set_key(session_key());
    }
    let mut a = EpochAssembler::new(AssemblerConfig::replication());
    let mut out = Vec::new();
    while let Ok(Some(m)) = r.recv() {
        match a.feed(&m) {
            Ok(Progress::Committed(e)) => {
                out.push((e.epoch(), writes(&e), e.state().map(<[u8]>::to_vec)));
                a.recycle(e);
            }
            Ok(_) => {}
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

#[test]
fn frames_staged_in_place_release_exactly_what_copies_release() {
    for key in [false, true] {
        let bytes = stream(6, 37, key);
        let (framed, err) = through_frames(&bytes, key);
        assert!(err.is_none(), "key {key}: {err:?}");
        assert_eq!(framed.len(), 6, "key {key}");
        if key {
            // A sealed session's commits carry digest 0 (version 5: the tags cover every
            // frame, no digest pass on either side). `feed`, which does not know the
            // frames were sealed, computes the digest and refuses the first epoch:
            // a sealed session must be received through `feed_frame`.
            let (copied, err) = through_messages(&bytes, key);
            assert!(copied.is_empty());
            match err {
                Some(EpochError::DigestMismatch {
                    epoch: 1, sent: 0, ..
                }) => {}
                other => panic!("sealed stream through feed: {other:?}"),
            }
            let (plain, err) = through_messages(&stream(6, 37, false), false);
            assert!(err.is_none(), "{err:?}");
            assert_eq!(framed, plain, "sealed and plain release the same epochs");
            continue;
        }
        let (copied, err) = through_messages(&bytes, key);
        assert!(err.is_none(), "key {key}: {err:?}");
        assert_eq!(framed, copied, "key {key}");
        // And each epoch holds its own pages (not a later epoch's, through a reused
        // buffer).
        for (epoch, w, state) in &framed {
            let data: Vec<&Vec<u8>> = w.iter().filter_map(|x| x.1.as_ref().ok()).collect();
            let all: Vec<u8> = data.into_iter().flatten().copied().collect();
            let want: Vec<u8> = (0..37).flat_map(|i| page(*epoch, i)).collect();
            assert_eq!(all, want, "epoch {epoch}, key {key}");
            assert_eq!(state.as_deref(), Some(&b"state"[..]));
        }
    }
}

/// Flips one byte in the payload of the `nth` Pages frame of an untagged stream and
/// fixes that frame's CRC: every frame stays valid, only the epoch digest can tell.
fn tamper_pages(bytes: &mut [u8], nth: usize) {
    let mut at = 0;
    let mut seen = 0;
    while at < bytes.len() {
        let kind = u16::from_le_bytes([bytes[at + 6], bytes[at + 7]]);
        let len = u32::from_le_bytes(bytes[at + 16..at + 20].try_into().unwrap()) as usize;
        let end = at + HEADER_LEN + len;
        if kind == Kind::Pages as u16 {
            if seen == nth {
                bytes[end - 100] ^= 1;
                let crc = crc32c::crc32c(&bytes[at..end]);
                bytes[end..end + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
                return;
            }
            seen += 1;
        }
        at = end + CRC_LEN;
    }
    panic!("no Pages frame {nth}");
}

#[test]
fn page_bytes_that_differ_from_the_digest_are_refused() {
    // 20 pages in batches of 8: three Pages frames per epoch; the 5th is epoch 2's.
    let mut bytes = stream(3, 20, false);
    tamper_pages(&mut bytes, 4);
    let (framed, err) = through_frames(&bytes, false);
    assert_eq!(framed.len(), 1, "only epoch 1 is released");
    assert!(
        matches!(
            err,
            Some(FrameFeedError::Epoch(EpochError::DigestMismatch {
                epoch: 2,
                ..
            }))
        ),
        "{err:?}"
    );
    // The copying path agrees.
    let (copied, err) = through_messages(&bytes, false);
    assert_eq!(copied, framed);
    assert!(matches!(
        err,
        Some(EpochError::DigestMismatch { epoch: 2, .. })
    ));
}

#[test]
fn cut_inside_every_frame_never_releases_a_partial_epoch() {
    let bytes = stream(2, 12, false);
    let (all, _) = through_frames(&bytes, false);
    assert_eq!(all.len(), 2);
    let mut first_two = None;
    for cut in 0..=bytes.len() {
        let (got, _) = through_frames(&bytes[..cut], false);
        assert!(got.len() <= 2);
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e, &all[i], "cut {cut}: a released epoch differs");
        }
        if got.len() == 2 && first_two.is_none() {
            first_two = Some(cut);
        }
    }
    assert_eq!(first_two, Some(bytes.len()));
}

#[test]
fn buffers_come_back_grown_for_the_next_epochs() {
    let bytes = stream(1, 16, false);
    let mut r = FrameReader::new(&bytes[..]);
    let mut a = EpochAssembler::new(AssemblerConfig::replication());
    let mut kept = 0;
    loop {
        let spare = a.spare_buffer();
        let Ok(Some(frame)) = r.read_frame_owned(spare) else {
            break;
        };
        let FedFrame { progress, frame } = a.feed_frame(frame).unwrap();
        kept += usize::from(frame.is_none());
        if let Some(f) = frame {
            // A control frame: still decodable by the caller.
            decode_frame(f.kind, f.at, f.payload(), f.authenticated).unwrap();
            a.return_buffer(f.buf);
        }
        if let Progress::Committed(e) = progress {
            a.recycle(e);
        }
    }
    assert_eq!(kept, 2, "16 pages in batches of 8: two page frames kept");
    // The page frames' buffers are handed out again, at their grown size.
    let big = (0..4)
        .map(|_| a.spare_buffer())
        .filter(|b| b.len() >= 8 * PAGE_SIZE)
        .count();
    assert!(big >= 2, "only {big} grown buffers came back");
}

#[test]
fn a_huge_epoch_leaves_a_bounded_pool() {
    // 640 pages in batches of 8: 80 page frames per epoch, all of which an unbounded
    // pool would keep.
    let bytes = stream(2, 640, false);
    let mut r = FrameReader::new(&bytes[..]);
    let mut a = EpochAssembler::new(AssemblerConfig::replication());
    let mut most = 0;
    loop {
        let spare = a.spare_buffer();
        let Ok(Some(frame)) = r.read_frame_owned(spare) else {
            break;
        };
        let FedFrame { progress, frame } = a.feed_frame(frame).unwrap();
        if let Some(f) = frame {
            a.return_buffer(f.buf);
        }
        if let Progress::Committed(e) = progress {
            a.recycle(e);
        }
        most = most.max(a.pooled_buffers());
    }
    assert!(most > 8, "buffers are pooled ({most})");
    assert!(most <= 64, "the pool grew to {most} buffers");
}

/// Calls `f(kind, payload)` on every frame of an untagged stream, then fixes the frame's
/// CRC (so that every frame stays valid).
fn each_plain_frame(bytes: &mut [u8], mut f: impl FnMut(u16, &mut [u8])) {
    let mut at = 0;
    while at < bytes.len() {
        let kind = u16::from_le_bytes([bytes[at + 6], bytes[at + 7]]);
        let len = u32::from_le_bytes(bytes[at + 16..at + 20].try_into().unwrap()) as usize;
        let end = at + HEADER_LEN + len;
        f(kind, &mut bytes[at + HEADER_LEN..end]);
        let crc = crc32c::crc32c(&bytes[at..end]);
        bytes[end..end + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
        at = end + CRC_LEN;
    }
}

/// The digests of a stream's `EpochCommit`s, through the reader (keyed or not).
fn commit_digests(bytes: &[u8], key: bool) -> Vec<u32> {
    let mut r = ftvm_wire::MessageReader::new(bytes);
    if key {
        r.frames_mut().set_key(session_key());
    }
    let mut out = Vec::new();
    while let Ok(Some(m)) = r.recv() {
        if let ftvm_wire::Message::EpochCommit(c) = m {
            out.push(c.digest);
        }
    }
    out
}

/// Reads `bytes` as a migration target does: an assembler whose pages are applied on
/// arrival, fed frame by frame; returns the epochs committed and the error.
fn as_migration_target(bytes: &[u8], key: bool) -> (Vec<u64>, Option<FrameFeedError>) {
    let mut r = FrameReader::new(bytes);
    if key {
        r.set_key(session_key());
    }
    let mut a = EpochAssembler::new(AssemblerConfig::migration()).pages_applied_on_arrival();
    let mut out = Vec::new();
    loop {
        let spare = a.spare_buffer();
        let Ok(Some(frame)) = r.read_frame_owned(spare) else {
            return (out, None);
        };
        let FedFrame { progress, frame } = match a.feed_frame(frame) {
            Ok(f) => f,
            Err(e) => return (out, Some(e)),
        };
        assert!(frame.is_some(), "an on-arrival assembler keeps no frame");
        if let Progress::Committed(e) = progress {
            out.push(e.epoch());
            a.recycle(e);
        }
        if let Some(f) = frame {
            a.return_buffer(f.buf);
        }
    }
}

#[test]
fn sealed_sessions_carry_no_digest_and_plain_ones_keep_it() {
    // The sender: a sealed session's commits carry digest 0 (no CRC pass spent on it), a
    // plain session's the CRC32C of its payloads.
    let sealed = stream(4, 20, true);
    let plain = stream(4, 20, false);
    assert_eq!(commit_digests(&sealed, true), vec![0; 4]);
    let digests = commit_digests(&plain, false);
    assert_eq!(digests.len(), 4);
    assert!(digests.iter().all(|d| *d != 0), "{digests:?}");

    // A migration target (pages applied on arrival) takes both.
    let (epochs, err) = as_migration_target(&sealed, true);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(epochs, vec![1, 2, 3, 4]);
    let (epochs, err) = as_migration_target(&plain, false);
    assert_eq!(epochs, vec![1, 2, 3, 4]);
    assert!(err.is_none(), "{err:?}");

    // ...and still checks a plain session's digest: a page byte flipped (its frame CRC
    // fixed up, so only the digest can tell) is refused at epoch 2's commit.
    let mut tampered = plain.clone();
    tamper_pages(&mut tampered, 4);
    let (epochs, err) = as_migration_target(&tampered, false);
    assert_eq!(epochs, vec![1]);
    assert!(
        matches!(
            err,
            Some(FrameFeedError::Epoch(EpochError::DigestMismatch {
                epoch: 2,
                ..
            }))
        ),
        "{err:?}"
    );
}

#[test]
fn a_plain_session_cannot_pass_as_sealed_by_sending_digest_0() {
    // A plain stream whose commits say digest 0 (as a sealed session's do), with a page
    // byte flipped and every frame CRC fixed up: whether a session is sealed comes from
    // the frames the handshake's key verified, never from the commit, so the digest is
    // checked and the epoch refused, by the backup's path and by a migration target's.
    let mut bytes = stream(3, 20, false);
    tamper_pages(&mut bytes, 4);
    each_plain_frame(&mut bytes, |kind, payload| {
        if kind == Kind::EpochCommit as u16 {
            payload[28..32].copy_from_slice(&0u32.to_le_bytes());
        }
    });
    assert_eq!(commit_digests(&bytes, false), vec![0; 3]);
    for (name, epochs, err) in [
        {
            let (released, err) = through_frames(&bytes, false);
            ("backup", released.len(), err)
        },
        {
            let (epochs, err) = as_migration_target(&bytes, false);
            ("migration target", epochs.len(), err)
        },
    ] {
        assert_eq!(epochs, 0, "{name}: nothing may be released");
        assert!(
            matches!(
                err,
                Some(FrameFeedError::Epoch(EpochError::DigestMismatch {
                    epoch: 1,
                    sent: 0,
                    ..
                }))
            ),
            "{name}: {err:?}"
        );
    }
}
