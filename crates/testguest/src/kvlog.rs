//! On-disk format of the test guest's key-value log (no_std + alloc; compiled into the
//! guest image and into this crate's library, where it is unit- and fuzz-tested).
//!
//! Sector 0 (512 bytes) is the header: `FTVMKVLOG1\0\0` magic, then zeros. A disk whose
//! sector 0 is all zero is empty (the guest initializes it); any other header is not a log
//! and the guest refuses it. Records follow from byte 512, back to back:
//!
//! ```text
//! len u32 LE | crc32 u32 LE (of the payload) | payload (len bytes)
//! payload: 1 u8 | key_len u32 | key | value                  (SET; INCR is logged as SET)
//!          2 u8 | count u32 | (key_len u32 | key) * count    (DEL)
//! ```
//!
//! The log ends at the first `len == 0`, bad CRC or undecodable payload. The writer keeps
//! at least 8 zero bytes after its last record in every write, so the end of a shorter
//! record written over a torn one is always found.

use alloc::vec::Vec;

use crate::kvstore::Mutation;

/// Bytes per sector (virtio-blk's unit).
pub const SECTOR: usize = 512;
/// Header magic at byte 0 of sector 0.
pub const MAGIC: &[u8; 12] = b"FTVMKVLOG1\0\0";
/// Byte offset of the first record.
pub const FIRST_RECORD: u64 = SECTOR as u64;
/// Zero bytes the writer keeps after the last record.
pub const TRAILER: usize = 8;
/// Largest payload a reader accepts (a record above this ends the log).
pub const MAX_PAYLOAD: usize = 4 << 20;

const REC_HEADER: usize = 8;
const SET: u8 = 1;
const DEL: u8 = 2;

/// What sector 0 says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    /// All zero: a fresh disk, to be initialized.
    Empty,
    /// The log's header.
    Log,
    /// Something else: refuse the disk.
    Foreign,
}

/// Classifies sector 0.
pub fn check_header(sector0: &[u8]) -> HeaderKind {
    if sector0.iter().all(|&b| b == 0) {
        HeaderKind::Empty
    } else if sector0.starts_with(MAGIC) && sector0[MAGIC.len()..].iter().all(|&b| b == 0) {
        HeaderKind::Log
    } else {
        HeaderKind::Foreign
    }
}

/// A fresh header sector.
pub fn header() -> [u8; SECTOR] {
    let mut s = [0u8; SECTOR];
    s[..MAGIC.len()].copy_from_slice(MAGIC);
    s
}

/// Encoded size of a SET record.
pub fn set_record_len(key_len: usize, value_len: usize) -> usize {
    REC_HEADER + 1 + 4 + key_len + value_len
}

/// Encoded size of a DEL record of keys of these lengths.
pub fn del_record_len(key_lens: impl Iterator<Item = usize>) -> usize {
    REC_HEADER + 1 + 4 + key_lens.map(|k| 4 + k).sum::<usize>()
}

/// Encoded size of the record of `m`.
pub fn record_len(m: &Mutation) -> usize {
    match m {
        Mutation::Set(k, v) => set_record_len(k.len(), v.len()),
        Mutation::Del(keys) => del_record_len(keys.iter().map(Vec::len)),
    }
}

/// Appends the record of `m` to `out`.
pub fn encode(m: &Mutation, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; REC_HEADER]);
    match m {
        Mutation::Set(k, v) => {
            out.push(SET);
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(v);
        }
        Mutation::Del(keys) => {
            out.push(DEL);
            out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
            for k in keys {
                out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                out.extend_from_slice(k);
            }
        }
    }
    let payload_len = out.len() - start - REC_HEADER;
    let crc = crc32(&out[start + REC_HEADER..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Result of looking at the bytes where the next record should start.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A valid record and its total length.
    Record(Mutation, usize),
    /// The record continues beyond `buf`: read at least this many bytes from its start.
    NeedBytes(usize),
    /// The log ends here.
    End,
}

/// Decodes the record at the start of `buf`.
pub fn decode(buf: &[u8]) -> Next {
    if buf.len() < REC_HEADER {
        return Next::NeedBytes(REC_HEADER);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len == 0 || len > MAX_PAYLOAD {
        return Next::End;
    }
    let total = REC_HEADER + len;
    if buf.len() < total {
        return Next::NeedBytes(total);
    }
    let payload = &buf[REC_HEADER..total];
    if crc32(payload) != crc {
        return Next::End;
    }
    match decode_payload(payload) {
        Some(m) => Next::Record(m, total),
        None => Next::End,
    }
}

fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if p.len() < n {
        return None;
    }
    let (a, b) = p.split_at(n);
    *p = b;
    Some(a)
}

fn take_u32(p: &mut &[u8]) -> Option<usize> {
    let b = take(p, 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

fn decode_payload(mut p: &[u8]) -> Option<Mutation> {
    let kind = take(&mut p, 1)?[0];
    match kind {
        SET => {
            let klen = take_u32(&mut p)?;
            let k = take(&mut p, klen)?.to_vec();
            Some(Mutation::Set(k, p.to_vec()))
        }
        DEL => {
            let n = take_u32(&mut p)?;
            let mut keys = Vec::new();
            for _ in 0..n {
                let klen = take_u32(&mut p)?;
                keys.push(take(&mut p, klen)?.to_vec());
            }
            if !p.is_empty() {
                return None;
            }
            Some(Mutation::Del(keys))
        }
        _ => None,
    }
}

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32 (IEEE 802.3, as zlib's `crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    c ^ 0xffff_ffff
}

/// Decodes a whole log image (records from [`FIRST_RECORD`]); returns the mutations and
/// the byte offset where the next record goes. For tests and tools; the guest reads the
/// disk piecewise with [`decode`].
pub fn replay_image(image: &[u8]) -> (Vec<Mutation>, u64) {
    let mut pos = FIRST_RECORD as usize;
    let mut out = Vec::new();
    while pos < image.len() {
        match decode(&image[pos..]) {
            Next::Record(m, n) => {
                out.push(m);
                pos += n;
            }
            Next::NeedBytes(_) | Next::End => break,
        }
    }
    (out, pos as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(ms: &[Mutation]) -> Vec<u8> {
        let mut img = header().to_vec();
        for m in ms {
            encode(m, &mut img);
        }
        img.extend_from_slice(&[0u8; TRAILER]);
        img
    }

    #[test]
    fn crc_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn header_kinds() {
        assert_eq!(check_header(&[0u8; SECTOR]), HeaderKind::Empty);
        assert_eq!(check_header(&header()), HeaderKind::Log);
        let mut ext4ish = [0u8; SECTOR];
        ext4ish[100] = 1;
        assert_eq!(check_header(&ext4ish), HeaderKind::Foreign);
        let mut h = header();
        h[511] = 1;
        assert_eq!(check_header(&h), HeaderKind::Foreign);
    }

    #[test]
    fn records_round_trip_with_exact_lengths() {
        let ms = vec![
            Mutation::Set(b"k".to_vec(), b"v".to_vec()),
            Mutation::Set(b"".to_vec(), vec![7u8; 70000]),
            Mutation::Del(vec![b"a".to_vec(), b"bb".to_vec()]),
        ];
        let mut one = Vec::new();
        encode(&ms[0], &mut one);
        assert_eq!(one.len(), set_record_len(1, 1));
        let mut del = Vec::new();
        encode(&ms[2], &mut del);
        assert_eq!(del.len(), del_record_len([1usize, 2].into_iter()));
        let img = image(&ms);
        let (got, end) = replay_image(&img);
        assert_eq!(got, ms);
        assert_eq!(end as usize, img.len() - TRAILER);
    }

    #[test]
    fn a_torn_or_corrupt_record_ends_the_log() {
        let ms = vec![
            Mutation::Set(b"a".to_vec(), b"1".to_vec()),
            Mutation::Set(b"b".to_vec(), b"2".to_vec()),
        ];
        let img = image(&ms);
        let second = FIRST_RECORD as usize + set_record_len(1, 1);
        // Every truncation inside the second record keeps exactly the first.
        for cut in second..img.len() - TRAILER {
            assert_eq!(replay_image(&img[..cut]).0, ms[..1], "cut at {cut}");
        }
        // Every single-bit flip in the second record drops it (never a wrong value).
        for i in second..img.len() - TRAILER {
            for bit in 0..8 {
                let mut bad = img.clone();
                bad[i] ^= 1 << bit;
                let (got, _) = replay_image(&bad);
                assert_eq!(got, ms[..1], "flip byte {i} bit {bit}");
            }
        }
    }
}
