//! Entry points shared by the cargo-fuzz targets (`fuzz/`), the checked-in
//! regression corpus (`tests/corpus/`) and the stable in-tree mutation
//! fuzzer (`tests/corpus.rs`). Each function feeds arbitrary bytes to one
//! decoder, asserts the decoder's invariants (a violated invariant panics,
//! which is what a fuzzer reports), and returns `Ok(summary)` or the
//! decoder's error text.
//!
//! Test support only; not part of the stable API.

use std::borrow::Cow;

use crate::auth::{AuthKey, Nonce};
use crate::epoch::{
    AssemblerConfig, EpochAssembler, FedFrame, FrameFeedError, PageWrite, Progress,
};
use crate::frame::{At, FrameReader, FrameWriter, OwnedFrame, PagePlacer};
use crate::message::{
    DiskHashes, DiskWrites, EpochCommit, ErrorCode, Kind, Message, Pages, ZeroPages, PAGE_SIZE,
};
use crate::snapshot::{decode_state, encode_state, DiffReader};
use crate::stream::{decode_frame, MessageReader, MessageWriter};

/// Payload limit used by the fuzz entry points (keeps allocations small).
pub const FUZZ_MAX_PAYLOAD: u32 = 1 << 20;

fn fuzz_key() -> Option<crate::auth::SessionKeys> {
    AuthKey::new(b"ftvm fuzzing key, 32 bytes long!")
        .ok()
        .map(|k| k.session_keys(&Nonce([1; 32]), &Nonce([2; 32])))
}

/// Frame stream decoding. Byte 0 bit 0 selects an authenticated reader
/// (fixed fuzzing key); the rest is the stream. Every frame that passes is
/// also decoded as a message.
pub fn frame_decode(data: &[u8]) -> Result<String, String> {
    let Some((&mode, stream)) = data.split_first() else {
        return Err("empty input".into());
    };
    let mut r = MessageReader::from_frames(FrameReader::with_limit(stream, FUZZ_MAX_PAYLOAD));
    if mode & 1 == 1 {
        if let Some(k) = fuzz_key() {
            r.frames_mut().set_key(k.initiator_to_responder);
        }
    }
    let mut n = 0u64;
    loop {
        let before = r.frames().bytes_read();
        match r.recv() {
            Ok(None) => {
                assert_eq!(
                    r.frames().bytes_read(),
                    stream.len() as u64,
                    "clean end must consume all input"
                );
                return Ok(format!("{n} messages"));
            }
            Ok(Some(_)) => {
                n += 1;
                assert!(
                    r.frames().bytes_read() > before,
                    "a frame must consume bytes"
                );
            }
            Err(e) => {
                let text = e.to_string();
                // After an error the reader must refuse to continue.
                assert!(r.recv().is_err(), "reader continued after: {text}");
                return Err(text);
            }
        }
    }
}

/// Guest memory for [`frame_placing`]: `mem` is the pages from `base`; every run placed
/// is logged.
struct FuzzMemory {
    base: u64,
    mem: Vec<u8>,
    placed: Vec<(u64, u32)>,
}

impl FuzzMemory {
    /// Where the run `(gpa, npages)` is in `mem`, if it lies inside.
    fn range(&self, gpa: u64, npages: u32) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(gpa.checked_sub(self.base)?).ok()?;
        let end = start.checked_add(npages as usize * PAGE_SIZE)?;
        (end <= self.mem.len()).then_some(start..end)
    }
}

impl PagePlacer for FuzzMemory {
    fn contains(&self, gpa: u64, npages: u32) -> bool {
        self.range(gpa, npages).is_some()
    }

    fn place(&mut self, gpa: u64, npages: u32) -> Result<&mut [u8], String> {
        // The reader asks `contains` first; a run it did not accept is a reader bug.
        let Some(r) = self.range(gpa, npages) else {
            panic!("{npages} pages at {gpa:#x} placed outside the memory");
        };
        self.placed.push((gpa, npages));
        Ok(&mut self.mem[r])
    }
}

/// The placing frame reader ([`FrameReader::read_frame_placing`]) against the whole-frame
/// reader ([`FrameReader::read_frame_owned`]) and the message decoder, on the same
/// stream. Byte 0 picks the setup: bit 0 a keyed reader (fixed fuzzing key), bits 1-2 the
/// size of the placer's memory (4, 16, 32 or 80 pages), bits 3-4 its first page (0, 4, 8
/// or 12); the rest is the stream. Checks, frame by frame:
/// - both readers give the same outcome: the same frames (kind, position, payload, CRC)
///   or the same error text, and a reader that failed refuses to read on;
/// - a frame is placed only in a plain session, only if it is a `Pages` frame the
///   message decoder accepts with every run inside the memory, and then the placer was
///   asked for exactly its runs, and its run table decodes (`decode_placed`) to the same
///   message; a plain `Pages` frame read whole is one the decoder refuses (the same error
///   as the whole read's) or one with a run outside the memory, and nothing was placed;
/// - the memory always equals a model: the pages of each frame the ordinary path accepted,
///   plus, for a frame that failed after its data was placed, exactly that frame's bytes
///   from the stream at the runs its table declares (never outside them).
pub fn frame_placing(data: &[u8]) -> Result<String, String> {
    let Some((&mode, stream)) = data.split_first() else {
        return Err("empty input".into());
    };
    let keyed = mode & 1 == 1;
    let pages = [4usize, 16, 32, 80][usize::from(mode >> 1 & 3)];
    let base = u64::from(mode >> 3 & 3) * 4 * PAGE_SIZE as u64;
    let mut placing = FrameReader::with_limit(stream, FUZZ_MAX_PAYLOAD);
    let mut whole = FrameReader::with_limit(stream, FUZZ_MAX_PAYLOAD);
    if keyed {
        if let Some(k) = fuzz_key() {
            placing.set_key(k.initiator_to_responder.clone());
            whole.set_key(k.initiator_to_responder);
        }
    }
    // Not zero: a placed zero byte must show.
    let page: Vec<u8> = (0..PAGE_SIZE).map(|i| (i % 251) as u8 | 1).collect();
    let initial = page.repeat(pages);
    let mut memory = FuzzMemory {
        base,
        mem: initial.clone(),
        placed: Vec::new(),
    };
    let mut model = initial;
    let (mut spare_p, mut spare_w) = (Vec::new(), Vec::new());
    let (mut frames, mut placed_frames, mut placed_bytes) = (0u64, 0u64, 0usize);
    loop {
        memory.placed.clear();
        let p = placing.read_frame_placing(std::mem::take(&mut spare_p), &mut memory);
        let w = whole.read_frame_owned(std::mem::take(&mut spare_w));
        match (p, w) {
            (Ok(None), Ok(None)) => {
                assert!(memory.placed.is_empty());
                assert_eq!(placing.bytes_read(), stream.len() as u64);
                assert!(memory.mem == model, "memory changed at the clean end");
                return Ok(format!(
                    "{frames} frames, {placed_frames} placed ({placed_bytes} bytes)"
                ));
            }
            (Err(ep), Err(ew)) => {
                let text = ep.to_string();
                assert_eq!(text, ew.to_string(), "the readers fail differently");
                if !memory.placed.is_empty() {
                    place_failed_frame(stream, ep.at().offset, &memory, &mut model);
                }
                assert!(memory.mem == model, "{text}: memory outside the model");
                memory.placed.clear();
                assert!(
                    placing.read_frame_placing(Vec::new(), &mut memory).is_err(),
                    "the placing reader read on after: {text}"
                );
                assert!(memory.placed.is_empty());
                return Err(text);
            }
            (Ok(Some(fp)), Ok(Some(fw))) => {
                frames += 1;
                assert_eq!(
                    (fp.kind, fp.at, fp.authenticated, fp.sealed, fp.payload_crc),
                    (fw.kind, fw.at, fw.authenticated, fw.sealed, fw.payload_crc)
                );
                let decoded = decode_frame(fw.kind, fw.at, fw.payload(), fw.authenticated);
                if fp.placed > 0 {
                    assert!(!keyed, "a keyed frame was placed");
                    let Ok(Message::Pages(pg)) = &decoded else {
                        panic!("placed a frame the decoder gives as {decoded:?}");
                    };
                    assert_eq!(fp.len + fp.placed, fw.len);
                    assert!(fp.payload() == &fw.payload()[..fp.len]);
                    let runs: Vec<(u64, u32)> = pg.run_table().collect();
                    assert_eq!(memory.placed, runs, "placed other runs than the table's");
                    let table = Pages::decode_placed(fp.payload(), fp.placed);
                    let Ok(table) = table else {
                        panic!("placed frame's table does not decode: {table:?}");
                    };
                    assert_eq!(table.epoch(), pg.epoch());
                    assert!(table.run_table().eq(pg.run_table()));
                    for (gpa, bytes) in pg.runs() {
                        let Some(r) = memory.range(gpa, (bytes.len() / PAGE_SIZE) as u32) else {
                            panic!("placed a run outside the memory");
                        };
                        model[r].copy_from_slice(bytes);
                    }
                    placed_frames += 1;
                    placed_bytes += fp.placed;
                } else {
                    assert!(memory.placed.is_empty(), "a frame read whole placed pages");
                    assert!(fp.payload() == fw.payload());
                    let again = decode_frame(fp.kind, fp.at, fp.payload(), fp.authenticated);
                    match (&decoded, &again) {
                        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                        (Ok(_), Ok(_)) => {}
                        _ => panic!("decodes differ: {decoded:?} vs {again:?}"),
                    }
                    if let (false, Ok(Message::Pages(pg))) = (keyed, &decoded) {
                        assert!(
                            !pg.run_table().all(|(g, n)| memory.contains(g, n)),
                            "a placeable Pages frame was read whole"
                        );
                    }
                }
                // Only a run handed out can have changed (checked at the end too).
                if !memory.placed.is_empty() {
                    assert!(memory.mem == model, "memory differs from the model");
                }
                spare_p = fp.buf;
                spare_w = fw.buf;
            }
            (p, w) => panic!("placing reader gave {p:?}, whole reader {w:?}"),
        }
    }
}

/// For a frame (at `offset` in `stream`) that failed after the placing reader placed
/// runs: its header and run table were read and valid, every run is inside the memory,
/// the runs placed are the table's first ones, in order, and the model gets exactly the
/// stream's bytes for them, as far as the stream goes.
fn place_failed_frame(stream: &[u8], offset: u64, memory: &FuzzMemory, model: &mut [u8]) {
    use crate::frame::{FrameHeader, HEADER_LEN};
    use crate::message::{check_runs, runs_iter, RUN_DESCRIPTOR_LEN};
    let start = offset as usize;
    let h: Option<&[u8; HEADER_LEN]> = stream
        .get(start..start + HEADER_LEN)
        .and_then(|h| h.try_into().ok());
    let at = At { frame: 0, offset };
    let Some(Ok(header)) = h.map(|h| FrameHeader::decode(h, at)) else {
        panic!("placed pages of a frame without a valid header");
    };
    assert_eq!(
        header.kind,
        Kind::Pages as u16,
        "placed a frame of another kind"
    );
    let payload = &stream[start + HEADER_LEN..];
    let count = payload
        .get(8..12)
        .map_or(0, |c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize);
    let table_end = 12 + count * RUN_DESCRIPTOR_LEN;
    let Some(table) = payload.get(12..table_end) else {
        panic!("placed pages before the run table arrived");
    };
    let Ok(n) = check_runs(table, 0) else {
        panic!("placed pages of an invalid run table");
    };
    assert_eq!(
        n * PAGE_SIZE as u64 + table_end as u64,
        u64::from(header.payload_len),
        "placed pages of a table that does not fill the payload"
    );
    let runs: Vec<(u64, u32)> = runs_iter(table).collect();
    assert!(runs.iter().all(|&(g, n)| memory.contains(g, n)));
    assert!(
        runs.starts_with(&memory.placed),
        "placed runs not in table order"
    );
    let mut data = &payload[table_end..];
    for &(gpa, n) in &memory.placed {
        let Some(r) = memory.range(gpa, n) else {
            panic!("placed a run outside the memory");
        };
        let len = (n as usize * PAGE_SIZE).min(data.len());
        model[r.start..r.start + len].copy_from_slice(&data[..len]);
        data = &data[len..];
    }
}

/// Message decoding: bytes 0..2 are the kind (LE), the rest the payload.
/// A decoded message must re-encode to exactly the same payload.
pub fn message_decode(data: &[u8]) -> Result<String, String> {
    if data.len() < 2 {
        return Err("input shorter than a kind".into());
    }
    let kind = u16::from_le_bytes([data[0], data[1]]);
    let payload = &data[2..];
    let msg = Message::decode(kind, payload).map_err(|e| e.to_string())?;
    assert_eq!(msg.kind() as u16, kind);
    let again = msg
        .to_payload()
        .map_err(|e| format!("decoded message does not re-encode: {e}"));
    assert_eq!(
        again.as_deref(),
        Ok(payload),
        "re-encoding differs for {}",
        msg.summary()
    );
    assert_eq!(msg.encoded_len(), payload.len() as u64);
    match &msg {
        Message::Pages(p) => {
            let bytes: usize = p.runs().map(|(_, d)| d.len()).sum();
            assert_eq!(bytes as u64, p.page_count() * PAGE_SIZE as u64);
            assert_eq!(p.pages().count() as u64, p.page_count());
            assert!(p
                .runs()
                .all(|(g, d)| g % PAGE_SIZE as u64 == 0 && !d.is_empty()));
        }
        Message::ZeroPages(z) => {
            let n: u64 = z.runs().map(|(_, n)| u64::from(n)).sum();
            assert_eq!(n, z.page_count());
        }
        Message::DiskWrites(d) => assert_eq!(d.writes().count(), d.len()),
        Message::DiskHashes(h) => {
            assert!(h.count() > 0 && h.disk < h.disks);
            assert!(h
                .hashes()
                .all(|(b, x)| b < h.total_blocks() && x.len() == 32));
        }
        _ => {}
    }
    Ok(msg.summary())
}

/// A tiny deterministic byte source over the fuzz input.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
}

/// The epoch assembler driven by an operation list decoded from the input:
/// each byte picks an operation (begin, pages, zero pages, disk write,
/// output, state, correct or corrupted commit, heartbeat, goodbye, ack,
/// connection end) and following bytes its parameters. Checks that only
/// epochs whose every message arrived, with a matching commit, come out,
/// that they come out in order, and that a clean epoch always commits.
pub fn epoch_assembler(data: &[u8]) -> Result<String, String> {
    // Long operation lists add little coverage and slow the fuzzer down.
    let mut input = Bytes(&data[..data.len().min(4096)]);
    let require_state = input.next().is_some_and(|b| b & 1 == 1);
    let cfg = AssemblerConfig {
        require_state,
        max_staged_bytes: 64 * PAGE_SIZE as u64,
        gpa_limit: Some(1 << 30),
        max_pages: 256,
    };
    let mut asm = EpochAssembler::new(cfg);
    // The same stream through `feed_frame` (pages staged in place, digest from the
    // payload CRC or, for a tagged frame, by encoding): must do exactly what `feed` does.
    let mut framed = EpochAssembler::new(cfg);
    // Model: the epoch the harness has open, its tally, whether it is clean
    // (only valid messages fed) and what page bytes it carries.
    struct Model {
        epoch: u64,
        tally: EpochCommit,
        clean: bool,
        state: bool,
        page_bytes: u64,
        staged: u64,
        pages: u64,
    }
    let mut model: Option<Model> = None;
    let mut next_epoch = 0u64;
    let mut last_committed: Option<u64> = None;
    let mut committed = 0u32;
    let mut errors = 0u32;
    let page = [0xabu8; PAGE_SIZE * 4];
    let sector = [0x5au8; 1024];
    while let Some(op) = input.next() {
        let p = input.next().unwrap_or(0);
        let open_epoch = model.as_ref().map(|m| m.epoch);
        // Epoch the message claims: usually the open one, sometimes another.
        let claim = match (p >> 6, open_epoch) {
            (0, _) => next_epoch.wrapping_add(u64::from(p & 3)),
            (_, Some(e)) => e,
            (_, None) => next_epoch,
        };
        let owned_text;
        let zero_runs;
        let disk;
        let msg: Message<'_> = match op % 14 {
            0 => Message::EpochBegin { epoch: claim },
            1 => {
                let n = 1 + usize::from(p & 3);
                let gpa = u64::from(p & 0x3f) * PAGE_SIZE as u64;
                match Pages::new(claim, &[(gpa, n as u32)], &page[..n * PAGE_SIZE]) {
                    Ok(pg) => Message::Pages(pg),
                    Err(e) => return Err(e.to_string()),
                }
            }
            2 => {
                zero_runs = [(u64::from(p) * PAGE_SIZE as u64 * 1024, u32::from(p) + 1)];
                match ZeroPages::new(claim, &zero_runs) {
                    Ok(z) => Message::ZeroPages(z),
                    Err(e) => return Err(e.to_string()),
                }
            }
            3 => {
                let w: [(u64, &[u8]); 1] = [(
                    u64::from(p) * 512,
                    &sector[..512 * (1 + usize::from(p & 1))],
                )];
                disk = DiskWrites::new(claim, p & 3, &w).map_err(|e| e.to_string())?;
                Message::DiskWrites(disk.clone())
            }
            4 => Message::Outputs {
                epoch: claim,
                stream: u16::from(p & 3),
                bytes: &sector[..1 + usize::from(p)],
            },
            5 => Message::State {
                epoch: claim,
                blob: &sector[..usize::from(p)],
            },
            6 | 7 => {
                // Commit with the model's tally (op 6) or a corrupted one (op 7).
                let mut c = model.as_ref().map(|m| m.tally).unwrap_or_default();
                c.epoch = claim;
                if op % 14 == 7 {
                    match p % 4 {
                        0 => c.messages = c.messages.wrapping_add(1),
                        1 => c.pages = c.pages.wrapping_add(1),
                        2 => c.bytes = c.bytes.wrapping_sub(1),
                        _ => c.digest ^= 1 << (p % 32),
                    }
                }
                Message::EpochCommit(c)
            }
            8 => Message::Heartbeat {
                epoch: claim,
                sent_unix_nanos: u64::from(p),
            },
            9 => Message::Goodbye,
            10 => Message::Ack { epoch: claim },
            11 => {
                owned_text = format!("error {p}");
                Message::Error {
                    code: ErrorCode::from_u16(u16::from(p)),
                    message: Cow::Borrowed(owned_text.as_str()),
                }
            }
            12 => Message::DiskFlush {
                epoch: claim,
                disk: p & 3,
            },
            _ => {
                // Connection end.
                let had_open = asm.open_epoch().is_some();
                assert_eq!(asm.finish().is_err(), had_open);
                assert_eq!(framed.finish().is_err(), had_open);
                assert!(asm.open_epoch().is_none());
                model = None;
                continue;
            }
        };
        // What the model expects of this message.
        let kind = msg.kind();
        if kind == Kind::EpochBegin {
            if model.is_none() {
                model = Some(Model {
                    epoch: claim,
                    tally: EpochCommit {
                        epoch: claim,
                        ..EpochCommit::default()
                    },
                    clean: last_committed.is_none_or(|l| l.checked_add(1) == Some(claim)),
                    state: false,
                    page_bytes: 0,
                    staged: 0,
                    pages: 0,
                });
            }
        } else if let (Some(m), Some(e)) = (model.as_mut(), msg.data_epoch()) {
            let bytes = match &msg {
                Message::Pages(pg) => pg.page_count() * PAGE_SIZE as u64,
                Message::DiskWrites(d) => d.writes().map(|w| w.1.len() as u64).sum(),
                Message::Outputs { bytes, .. } | Message::State { blob: bytes, .. } => {
                    bytes.len() as u64
                }
                _ => 0,
            };
            m.staged += bytes;
            m.pages += msg.page_count();
            if e != m.epoch
                || (kind == Kind::State && m.state)
                || m.staged > cfg.max_staged_bytes
                || m.pages > cfg.max_pages
            {
                m.clean = false;
            }
            if kind == Kind::State {
                m.state = true;
            }
            if let Message::Pages(pg) = &msg {
                m.page_bytes += pg.page_count() * PAGE_SIZE as u64;
            }
            m.tally.add(&msg);
        }
        let expect_commit = match (&msg, &model) {
            (Message::EpochCommit(c), Some(m)) => {
                m.clean
                    && *c == m.tally
                    && (m.state || !require_state)
                    && op % 14 == 6
                    && c.epoch == m.epoch
            }
            _ => false,
        };
        let frame = owned_frame(&msg, &mut framed, p & 0x20 == 0);
        let fed = framed.feed_frame(frame);
        let result = asm.feed(&msg);
        same_outcome(&result, &fed);
        if let Ok(FedFrame { progress, frame }) = fed {
            if let Progress::Committed(e) = progress {
                framed.recycle(e);
            }
            if let Some(f) = frame {
                framed.return_buffer(f.buf);
            }
        }
        assert_eq!(framed.open_epoch(), asm.open_epoch());
        match result {
            Ok(Progress::Committed(staged)) => {
                let Some(m) = model.take() else {
                    panic!(
                        "committed epoch {} the harness never opened",
                        staged.epoch()
                    );
                };
                assert!(
                    expect_commit,
                    "epoch {} committed although not clean/matching",
                    staged.epoch()
                );
                assert_eq!(staged.epoch(), m.epoch);
                assert_eq!(staged.commit(), m.tally);
                let bytes: u64 = staged
                    .page_writes()
                    .map(|w| match w {
                        PageWrite::Data { data, .. } => data.len() as u64,
                        PageWrite::Zero { .. } => 0,
                    })
                    .sum();
                assert_eq!(bytes, m.page_bytes);
                if let Some(l) = last_committed {
                    assert_eq!(staged.epoch(), l + 1, "epochs must commit in order");
                }
                last_committed = Some(staged.epoch());
                next_epoch = staged.epoch().wrapping_add(1);
                committed += 1;
                asm.recycle(staged);
            }
            Ok(Progress::Pending | Progress::Other) => {
                assert!(
                    !expect_commit,
                    "clean epoch with matching commit did not commit"
                );
            }
            Err(_) => {
                assert!(
                    !expect_commit,
                    "clean epoch with matching commit was rejected"
                );
                assert!(
                    asm.open_epoch().is_none(),
                    "error must discard the open epoch"
                );
                model = None;
                errors += 1;
            }
        }
        // Keep the harness's view in sync when the assembler opened nothing.
        if asm.open_epoch().is_none() && !matches!(kind, Kind::EpochCommit) {
            model = None;
        }
    }
    Ok(format!("{committed} epochs committed, {errors} rejected"))
}

/// `msg` as a received frame, read into a buffer `asm` recycled (so stale bytes from
/// earlier frames lie beyond the payload); `crc`: whether the frame layer supplies the
/// payload CRC (an untagged frame) or not (a tagged one).
fn owned_frame(msg: &Message<'_>, asm: &mut EpochAssembler, crc: bool) -> OwnedFrame {
    let mut payload = Vec::new();
    msg.encode(&mut payload);
    let mut buf = asm.spare_buffer();
    if buf.len() < payload.len() {
        buf.resize(payload.len(), 0);
    }
    buf[..payload.len()].copy_from_slice(&payload);
    OwnedFrame {
        kind: msg.kind() as u16,
        at: At {
            frame: 0,
            offset: 0,
        },
        buf,
        len: payload.len(),
        authenticated: true,
        payload_crc: crc.then(|| crc32c::crc32c(&payload)),
        // Sealed frames skip the digest, which `feed` (the reference here) never does.
        sealed: false,
        placed: 0,
    }
}

/// `feed` and `feed_frame` agree: the same progress, the same released epoch.
fn same_outcome(
    copied: &Result<Progress, crate::epoch::EpochError>,
    framed: &Result<FedFrame, FrameFeedError>,
) {
    match (copied, framed) {
        (
            Ok(Progress::Committed(a)),
            Ok(FedFrame {
                progress: Progress::Committed(b),
                ..
            }),
        ) => {
            assert_eq!(a.epoch(), b.epoch());
            assert_eq!(a.commit(), b.commit());
            assert!(a.page_writes().eq(b.page_writes()), "page writes differ");
            assert!(a.disk_writes().eq(b.disk_writes()), "disk writes differ");
            assert!(a.outputs().eq(b.outputs()), "outputs differ");
            assert!(a.flushed_disks().eq(b.flushed_disks()), "flushes differ");
            assert_eq!(a.state(), b.state());
        }
        (
            Ok(Progress::Pending),
            Ok(FedFrame {
                progress: Progress::Pending,
                ..
            }),
        )
        | (
            Ok(Progress::Other),
            Ok(FedFrame {
                progress: Progress::Other,
                ..
            }),
        ) => {}
        (Err(a), Err(FrameFeedError::Epoch(b))) => assert_eq!(a, b),
        (a, b) => panic!("feed gave {a:?}, feed_frame gave {b:?}"),
    }
}

/// Snapshot decoding: the input as a state file and as a diff memory file
/// (with and without a known length).
pub fn snapshot_decode(data: &[u8]) -> Result<String, String> {
    let state = decode_state(data);
    if let Ok(st) = &state {
        assert_eq!(
            encode_state(st.body, st.flags),
            data,
            "state file must re-encode identically"
        );
    }
    let mut diff_results = Vec::new();
    for len in [Some(data.len() as u64), None] {
        let r = (|| {
            let mut r = DiffReader::new(data, len)?;
            let mut n = 0u64;
            let mut last = None;
            while let Some((gpa, page)) = r.next_page()? {
                assert_eq!(page.len(), PAGE_SIZE);
                assert!(last.is_none_or(|l| gpa > l));
                last = Some(gpa);
                n += 1;
            }
            assert_eq!(n, r.page_count());
            Ok::<u64, crate::snapshot::FormatError>(n)
        })();
        diff_results.push(r);
    }
    // With or without the length hint, validity must agree.
    assert_eq!(
        diff_results[0].is_ok(),
        diff_results[1].is_ok(),
        "{diff_results:?}"
    );
    match (state, &diff_results[0]) {
        (Ok(st), _) => Ok(format!("state file, {} body bytes", st.body.len())),
        (_, Ok(n)) => Ok(format!("diff file, {n} pages")),
        (Err(e1), Err(e2)) => Err(format!("state: {e1}; diff: {e2}")),
    }
}

/// Valid sample inputs for each target (seeds for corpora).
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    match target {
        "frame_decode" => {
            out.push(("ok-session".into(), with_mode(0, sample_stream(None))));
            if let Some(k) = fuzz_key() {
                out.push((
                    "ok-session-keyed".into(),
                    with_mode(1, sample_stream(Some(k.initiator_to_responder))),
                ));
            }
            out.push(("ok-empty".into(), vec![0]));
        }
        "frame_placing" => {
            // Mode 2: 16 pages from gpa 0; mode 10: 16 pages from page 4.
            out.push(("ok-session".into(), with_mode(2, sample_stream(None))));
            if let Some(k) = fuzz_key() {
                out.push((
                    "ok-session-keyed".into(),
                    with_mode(3, sample_stream(Some(k.initiator_to_responder))),
                ));
            }
            out.push(("ok-placing".into(), with_mode(2, placing_stream())));
            out.push(("ok-placing-offset".into(), with_mode(10, placing_stream())));
            out.push(("ok-empty".into(), vec![2]));
        }
        "message_decode" => {
            for (i, m) in sample_messages().iter().enumerate() {
                if let Ok(p) = m.to_payload() {
                    let mut v = (m.kind() as u16).to_le_bytes().to_vec();
                    v.extend_from_slice(&p);
                    out.push((format!("ok-{:02}-{}", i, m.kind().name()), v));
                }
            }
        }
        "epoch_assembler" => {
            // begin, pages, disk, output, state, commit; twice; then an interrupted epoch.
            let clean: Vec<u8> = vec![1, 0, 0x40, 1, 0x42, 3, 0x41, 4, 0x45, 5, 0x48, 6, 0x40];
            let mut two = clean.clone();
            two.extend_from_slice(&clean[1..]);
            out.push(("ok-two-epochs".into(), two.clone()));
            let mut bad = two;
            bad.extend_from_slice(&[0, 0x40, 1, 0x41, 9, 0]);
            out.push(("ok-interrupted".into(), bad));
            out.push((
                "ok-corrupt-commit".into(),
                vec![0, 0, 0x40, 1, 0x41, 7, 0x43],
            ));
        }
        "snapshot_decode" => {
            out.push(("ok-state".into(), encode_state(b"opaque state body", 0)));
            out.push(("ok-state-diff-flag".into(), encode_state(&[7u8; 100], 1)));
            out.push(("ok-diff".into(), sample_diff()));
        }
        _ => {}
    }
    out
}

fn with_mode(mode: u8, mut v: Vec<u8>) -> Vec<u8> {
    v.insert(0, mode);
    v
}

/// A short replication session's primary-to-backup stream.
pub fn sample_stream(key: Option<crate::auth::TagKey>) -> Vec<u8> {
    let mut w = MessageWriter::from_frames(FrameWriter::with_limit(Vec::new(), FUZZ_MAX_PAYLOAD));
    if let Some(k) = key {
        w.frames_mut().set_key(k);
    }
    let page = vec![0x11u8; 3 * PAGE_SIZE];
    let _ = (|| {
        w.send(&sample_messages()[0])?;
        w.begin_epoch(5)?;
        w.send_pages([
            (0x1000, &page[..PAGE_SIZE]),
            (0x2000, &page[PAGE_SIZE..]),
            (0x9000, &page[..PAGE_SIZE]),
        ])?;
        w.send_zero_pages([(0x10_0000, 16)])?;
        w.send_disk_writes(1, [(4096u64, &page[..1024])])?;
        w.send(&Message::DiskFlush { epoch: 5, disk: 1 })?;
        w.send_output(1, b"console output")?;
        w.send_state(b"state blob")?;
        w.commit_epoch()?;
        w.send(&Message::Heartbeat {
            epoch: 5,
            sent_unix_nanos: 1,
        })?;
        w.send(&Message::Goodbye)?;
        w.flush()
    })();
    w.frames().get_ref().clone()
}

/// Two epochs of `Pages` frames for [`frame_placing`]: runs inside 16 pages from gpa 0,
/// a run past their end, the same page twice in one frame, a run below page 4.
pub fn placing_stream() -> Vec<u8> {
    let mut w = MessageWriter::from_frames(FrameWriter::with_limit(Vec::new(), FUZZ_MAX_PAYLOAD));
    let page = |salt: u8, n: usize| -> Vec<u8> {
        (0..n * PAGE_SIZE).map(|i| (i % 251) as u8 ^ salt).collect()
    };
    let _ = (|| {
        w.begin_epoch(1)?;
        w.send_page_runs(&[(0, 2), (0x3000, 1)], &page(1, 3))?;
        w.send_page_runs(&[(0xe000, 4)], &page(2, 4))?;
        w.send_page_runs(&[(0x5000, 1), (0x5000, 1)], &page(3, 2))?;
        w.send_zero_pages([(0x2000, 2)])?;
        w.commit_epoch()?;
        w.begin_epoch(2)?;
        w.send_page_runs(&[(0x8000, 3)], &page(4, 3))?;
        w.send_page_runs(&[(0x4000, 1)], &page(5, 1))?;
        w.commit_epoch()?;
        w.send(&Message::Goodbye)?;
        w.flush()
    })();
    w.frames().get_ref().clone()
}

/// One message of every kind.
pub fn sample_messages() -> Vec<Message<'static>> {
    use crate::message::{Hello, HelloAck, Role, VmShape};
    const PAGE: &[u8] = &[0x22; PAGE_SIZE * 2];
    let shape = VmShape {
        memory_bytes: 512 << 20,
        vcpus: 2,
        device_fingerprint: 0x1234_5678_9abc_def0,
        state_version: 1,
        nets: 1,
        ..VmShape::default()
    }
    .with_disks(&[
        crate::DiskShape {
            bytes: 64 << 20,
            readonly: false,
        },
        crate::DiskShape {
            bytes: 1 << 20,
            readonly: true,
        },
    ])
    .unwrap_or_default();
    let mut v = vec![
        Message::Hello(Hello::new(Role::Primary, shape, Nonce([3; 32]), false)),
        Message::Hello(Hello::new(
            Role::MigrationSource,
            shape,
            Nonce([4; 32]),
            true,
        )),
        Message::HelloAck(HelloAck {
            version: 1,
            role: Role::Backup,
            nonce: Nonce([5; 32]),
            proof: None,
        }),
        Message::HelloAck(HelloAck {
            version: 1,
            role: Role::MigrationTarget,
            nonce: Nonce([5; 32]),
            proof: Some([6; 32]),
        }),
        Message::Error {
            code: ErrorCode::ShapeMismatch,
            message: Cow::Borrowed("VM shapes differ: vcpus 2 here vs 4 on the peer"),
        },
        Message::Goodbye,
        Message::Heartbeat {
            epoch: 9,
            sent_unix_nanos: 1_700_000_000_000_000_000,
        },
        Message::EpochBegin { epoch: 9 },
        Message::Outputs {
            epoch: 9,
            stream: 2,
            bytes: b"hello, world\n",
        },
        Message::State {
            epoch: 9,
            blob: b"\x01\x02\x03",
        },
        Message::EpochCommit(EpochCommit {
            epoch: 9,
            messages: 4,
            pages: 3,
            bytes: 12345,
            digest: 0xdead_beef,
        }),
        Message::Ack { epoch: 9 },
        Message::MigrationDone { epoch: 9 },
    ];
    if let Ok(p) = Pages::new(9, &[(0x1000, 1), (0x8000, 1)], PAGE) {
        v.push(Message::Pages(p));
    }
    if let Ok(z) = ZeroPages::new(9, &[(0, 1), (0x10_0000, 256)]) {
        v.push(Message::ZeroPages(z));
    }
    if let Ok(d) = DiskWrites::new(9, 2, &[(0, &PAGE[..512]), (1 << 20, &PAGE[..4096])]) {
        v.push(Message::DiskWrites(d));
    }
    v.push(Message::DiskFlush { epoch: 9, disk: 3 });
    if let Ok(h) = DiskHashes::new(1, 2, 65536, 1 << 20, 14, &PAGE[..64]) {
        v.push(Message::DiskHashes(h));
    }
    v.push(Message::Switchover {
        epoch: 9,
        phase: crate::message::SwitchoverPhase::Released,
        stop: true,
    });
    v
}

fn sample_diff() -> Vec<u8> {
    use crate::snapshot::diff_file::{HEADER_LEN, RECORD_LEN};
    let mut v = Vec::with_capacity(HEADER_LEN + 2 * RECORD_LEN + 4);
    v.extend_from_slice(b"FTVMDIFF");
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    v.extend_from_slice(&2u64.to_le_bytes());
    for (gpa, fill) in [(0x1000u64, 1u8), (0x5000, 2)] {
        v.extend_from_slice(&gpa.to_le_bytes());
        v.extend_from_slice(&[fill; PAGE_SIZE]);
    }
    let crc = crc32c::crc32c(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}
