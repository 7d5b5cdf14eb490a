//! One virtio-blk request: parse a checked descriptor chain, do the I/O on the disk, write
//! the data and the status byte back (virtio 1.x, 5.2.6).
//!
//! A request is `header (type u32, reserved u32, sector u64)` in device-readable buffers,
//! then the data (readable for writes, writable for reads), then one writable status byte.
//! Every bad request completes with a status (IOERR for out-of-range, unaligned, oversized
//! and read-only violations and failed I/O; UNSUPP for unknown types): the guest gets an
//! error, the VMM never panics.

use ftvm_devices::disk::Disk;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use crate::GuestMemory;

/// Bytes of the request header.
pub const HEADER_LEN: usize = 16;
/// Largest data transfer of one request (reads and writes); larger ones get IOERR.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Length of the GET_ID answer.
pub const ID_LEN: usize = 20;
const SECTOR: u64 = 512;

/// What happened to a request (for counters and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The status byte written.
    pub status: u8,
    /// Bytes written into the chain's writable buffers (the used length).
    pub used_len: u32,
    /// Why the request failed, if it did.
    pub error: Option<String>,
}

/// The device-readable and device-writable halves of a chain (readable first; the
/// transport's `chain::collect` already rejected any other order).
fn split(descs: &[Descriptor]) -> (&[Descriptor], &[Descriptor]) {
    let k = descs
        .iter()
        .position(|d| d.is_write_only())
        .unwrap_or(descs.len());
    descs.split_at(k)
}

fn total(descs: &[Descriptor]) -> u64 {
    descs.iter().map(|d| u64::from(d.len())).sum()
}

/// Reads `out.len()` bytes starting `skip` bytes into the buffers.
fn gather(
    descs: &[Descriptor],
    mem: &GuestMemory,
    mut skip: u64,
    out: &mut [u8],
) -> Result<(), String> {
    let mut done = 0;
    for d in descs {
        if done == out.len() {
            break;
        }
        let len = u64::from(d.len());
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(out.len() - done);
        let addr = GuestAddress(d.addr().0 + skip);
        mem.read_slice(&mut out[done..done + n], addr)
            .map_err(|e| format!("reading guest buffer {:#x}: {e}", addr.0))?;
        done += n;
        skip = 0;
    }
    if done < out.len() {
        return Err("request shorter than its header".into());
    }
    Ok(())
}

/// Writes `data` starting `skip` bytes into the buffers (through dirty-tracked memory).
fn scatter(
    descs: &[Descriptor],
    mem: &GuestMemory,
    mut skip: u64,
    data: &[u8],
) -> Result<(), String> {
    let mut done = 0;
    for d in descs {
        if done == data.len() {
            break;
        }
        let len = u64::from(d.len());
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(data.len() - done);
        let addr = GuestAddress(d.addr().0 + skip);
        mem.write_slice(&data[done..done + n], addr)
            .map_err(|e| format!("writing guest buffer {:#x}: {e}", addr.0))?;
        done += n;
        skip = 0;
    }
    Ok(())
}

/// Processes one request on `disk`. `None`: the chain has no writable byte for a status,
/// so no status can be given (the caller returns the chain unused-length 0).
pub fn process(
    descs: &[Descriptor],
    mem: &GuestMemory,
    disk: &Disk,
    id: &[u8; ID_LEN],
) -> Option<Completion> {
    let (readable, writable) = split(descs);
    let wlen = total(writable);
    if wlen == 0 {
        return None;
    }
    // The status byte is the last writable byte; data-in is everything before it.
    let data_in = wlen - 1;
    let fail = |status: u32, error: String| {
        let used = scatter(writable, mem, data_in, &[status as u8]).map_or(0, |()| 1);
        Some(Completion {
            status: status as u8,
            used_len: used,
            error: Some(error),
        })
    };
    let mut header = [0u8; HEADER_LEN];
    if let Err(e) = gather(readable, mem, 0, &mut header) {
        return fail(VIRTIO_BLK_S_IOERR, e);
    }
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(s);
    let data_out = total(readable) - HEADER_LEN as u64;
    let range = |len: u64| -> Result<u64, String> {
        if !len.is_multiple_of(SECTOR) {
            return Err(format!("length {len} is not a multiple of 512"));
        }
        if len > MAX_REQUEST_BYTES as u64 {
            return Err(format!(
                "{len} bytes exceed the {MAX_REQUEST_BYTES}-byte request limit"
            ));
        }
        let off = sector
            .checked_mul(SECTOR)
            .filter(|o| o.checked_add(len).is_some_and(|end| end <= disk.size()))
            .ok_or_else(|| {
                format!(
                    "sector {sector} + {len} bytes lies beyond the disk's end ({} bytes)",
                    disk.size()
                )
            })?;
        Ok(off)
    };
    match kind {
        VIRTIO_BLK_T_IN => {
            let off = match range(data_in) {
                Ok(o) => o,
                Err(e) => return fail(VIRTIO_BLK_S_IOERR, format!("read: {e}")),
            };
            let mut buf = vec![0u8; data_in as usize + 1];
            if let Err(e) = disk.read(off, &mut buf[..data_in as usize]) {
                return fail(VIRTIO_BLK_S_IOERR, e.to_string());
            }
            buf[data_in as usize] = VIRTIO_BLK_S_OK as u8;
            match scatter(writable, mem, 0, &buf) {
                Ok(()) => Some(Completion {
                    status: VIRTIO_BLK_S_OK as u8,
                    used_len: buf.len() as u32,
                    error: None,
                }),
                Err(e) => fail(VIRTIO_BLK_S_IOERR, e),
            }
        }
        VIRTIO_BLK_T_OUT => {
            if disk.readonly() {
                return fail(VIRTIO_BLK_S_IOERR, "write to a read-only disk".into());
            }
            let off = match range(data_out) {
                Ok(o) => o,
                Err(e) => return fail(VIRTIO_BLK_S_IOERR, format!("write: {e}")),
            };
            let mut buf = vec![0u8; data_out as usize];
            if let Err(e) = gather(readable, mem, HEADER_LEN as u64, &mut buf) {
                return fail(VIRTIO_BLK_S_IOERR, e);
            }
            if let Err(e) = disk.write(off, &buf) {
                return fail(VIRTIO_BLK_S_IOERR, e.to_string());
            }
            ok_status(writable, mem, data_in)
        }
        VIRTIO_BLK_T_FLUSH => match disk.flush() {
            Ok(()) => ok_status(writable, mem, data_in),
            Err(e) => fail(VIRTIO_BLK_S_IOERR, e.to_string()),
        },
        VIRTIO_BLK_T_GET_ID => {
            let n = (data_in as usize).min(ID_LEN);
            let mut buf = id[..n].to_vec();
            if let Err(e) = scatter(writable, mem, 0, &buf) {
                return fail(VIRTIO_BLK_S_IOERR, e);
            }
            buf.clear();
            buf.push(VIRTIO_BLK_S_OK as u8);
            match scatter(writable, mem, data_in, &buf) {
                Ok(()) => Some(Completion {
                    status: VIRTIO_BLK_S_OK as u8,
                    used_len: n as u32 + 1,
                    error: None,
                }),
                Err(e) => fail(VIRTIO_BLK_S_IOERR, e),
            }
        }
        other => fail(VIRTIO_BLK_S_UNSUPP, format!("request type {other}")),
    }
}

fn ok_status(writable: &[Descriptor], mem: &GuestMemory, at: u64) -> Option<Completion> {
    let status = VIRTIO_BLK_S_OK as u8;
    match scatter(writable, mem, at, &[status]) {
        Ok(()) => Some(Completion {
            status,
            used_len: 1,
            error: None,
        }),
        Err(e) => Some(Completion {
            status: VIRTIO_BLK_S_IOERR as u8,
            used_len: 0,
            error: Some(e),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftvm_devices::disk::{EpochDiskWrites, Tracking};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const N: u16 = VRING_DESC_F_NEXT as u16;

    struct Rig {
        mem: GuestMemory,
        disk: Disk,
        _f: tempfile::NamedTempFile,
    }

    fn rig(readonly: bool) -> Rig {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let disk = Disk::open(f.path(), readonly).unwrap();
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        Rig { mem, disk, _f: f }
    }

    fn header(r: &Rig, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        r.mem.write_slice(&h, GuestAddress(at)).unwrap();
    }

    fn status(r: &Rig, at: u64) -> u8 {
        let mut b = [0u8; 1];
        r.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        b[0]
    }

    const ID: [u8; ID_LEN] = *b"ftvm-disk0\0\0\0\0\0\0\0\0\0\0";

    #[test]
    fn write_then_read_round_trip_and_flush_is_logged() {
        let r = rig(false);
        r.disk.set_tracking(Tracking::Data);
        // Write 1024 bytes at sector 3: header, data split in two buffers, status.
        header(&r, 0x1000, VIRTIO_BLK_T_OUT, 3);
        r.mem
            .write_slice(&[0xabu8; 1024], GuestAddress(0x2000))
            .unwrap();
        let descs = [
            Descriptor::new(0x1000, 16, N, 1),
            Descriptor::new(0x2000, 512, N, 2),
            Descriptor::new(0x2200, 512, N, 3),
            Descriptor::new(0x3000, 1, W, 0),
        ];
        let c = process(&descs, &r.mem, &r.disk, &ID).unwrap();
        assert_eq!(c.status, VIRTIO_BLK_S_OK as u8, "{c:?}");
        assert_eq!(status(&r, 0x3000), 0);
        let mut b = vec![0u8; 1024];
        r.disk.read(3 * 512, &mut b).unwrap();
        assert_eq!(b, vec![0xab; 1024]);
        // Flush.
        header(&r, 0x1000, VIRTIO_BLK_T_FLUSH, 0);
        let c = process(
            &[
                Descriptor::new(0x1000, 16, N, 1),
                Descriptor::new(0x3000, 1, W, 0),
            ],
            &r.mem,
            &r.disk,
            &ID,
        )
        .unwrap();
        assert_eq!(c.status, 0);
        let mut e = EpochDiskWrites::default();
        r.disk.drain(&mut e).unwrap();
        assert_eq!(
            e.writes().map(|(o, d)| (o, d.len())).collect::<Vec<_>>(),
            vec![(1536, 1024)]
        );
        assert!(e.flushed());
        // Read it back into two guest buffers.
        header(&r, 0x1000, VIRTIO_BLK_T_IN, 3);
        let descs = [
            Descriptor::new(0x1000, 16, N, 1),
            Descriptor::new(0x4000, 700, W | N, 2),
            Descriptor::new(0x5000, 325, W, 0), // 324 data bytes + status
        ];
        let c = process(&descs, &r.mem, &r.disk, &ID).unwrap();
        assert_eq!((c.status, c.used_len), (0, 1025));
        let mut got = vec![0u8; 1024];
        r.mem
            .read_slice(&mut got[..700], GuestAddress(0x4000))
            .unwrap();
        r.mem
            .read_slice(&mut got[700..], GuestAddress(0x5000))
            .unwrap();
        assert_eq!(got, vec![0xab; 1024]);
        assert_eq!(status(&r, 0x5000 + 324), 0);
    }

    #[test]
    fn get_id() {
        let r = rig(false);
        header(&r, 0x1000, VIRTIO_BLK_T_GET_ID, 0);
        let descs = [
            Descriptor::new(0x1000, 16, N, 1),
            Descriptor::new(0x4000, 20, W | N, 2),
            Descriptor::new(0x5000, 1, W, 0),
        ];
        let c = process(&descs, &r.mem, &r.disk, &ID).unwrap();
        assert_eq!((c.status, c.used_len), (0, 21));
        let mut got = [0u8; 20];
        r.mem.read_slice(&mut got, GuestAddress(0x4000)).unwrap();
        assert_eq!(got, ID);
    }

    #[test]
    fn bad_requests_complete_with_an_error_status_and_touch_nothing() {
        let r = rig(false);
        r.mem
            .write_slice(&[0x77u8; 8192], GuestAddress(0x2000))
            .unwrap();
        let cases: Vec<(u32, u64, u32, u8, &str)> = vec![
            // (type, sector, data length, expected status, what)
            (VIRTIO_BLK_T_OUT, 2048, 512, 1, "beyond the disk's end"),
            (VIRTIO_BLK_T_OUT, 2047, 1024, 1, "beyond the disk's end"),
            (
                VIRTIO_BLK_T_OUT,
                u64::MAX / 2,
                512,
                1,
                "beyond the disk's end",
            ),
            (VIRTIO_BLK_T_OUT, 0, 100, 1, "not a multiple of 512"),
            (VIRTIO_BLK_T_IN, 0, 100, 1, "not a multiple of 512"),
            (VIRTIO_BLK_T_IN, 2048, 512, 1, "beyond"),
            (99, 0, 512, 2, "request type 99"),
        ];
        for (kind, sector, len, want, what) in cases {
            header(&r, 0x1000, kind, sector);
            r.mem.write_slice(&[0xeeu8], GuestAddress(0x9000)).unwrap();
            let flags = if kind == VIRTIO_BLK_T_IN { W | N } else { N };
            let descs = [
                Descriptor::new(0x1000, 16, N, 1),
                Descriptor::new(0x2000, len, flags, 2),
                Descriptor::new(0x9000, 1, W, 0),
            ];
            let c = process(&descs, &r.mem, &r.disk, &ID).unwrap();
            assert_eq!(c.status, want, "{what}: {c:?}");
            assert!(c.error.as_deref().unwrap().contains(what), "{what}: {c:?}");
            assert_eq!(status(&r, 0x9000), want);
        }
        // Oversized: the limit, not the disk size, refuses it.
        let big = rig(false);
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(64 << 20).unwrap();
        let disk = Disk::open(f.path(), false).unwrap();
        header(&big, 0x1000, VIRTIO_BLK_T_IN, 0);
        let descs = [
            Descriptor::new(0x1000, 16, N, 1),
            Descriptor::new(0x2000, 0x80000, W | N, 2),
            Descriptor::new(0x2000, MAX_REQUEST_BYTES as u32, W | N, 3),
            Descriptor::new(0x9000, 1, W, 0),
        ];
        let c = process(&descs, &big.mem, &disk, &ID).unwrap();
        assert_eq!(c.status, 1);
        assert!(c.error.unwrap().contains("request limit"));
        // No write reached the disk.
        let mut all = vec![0u8; 1 << 20];
        r.disk.read(0, &mut all).unwrap();
        assert!(all.iter().all(|b| *b == 0));
        // A header shorter than 16 bytes.
        let c = process(
            &[
                Descriptor::new(0x1000, 8, N, 1),
                Descriptor::new(0x9000, 1, W, 0),
            ],
            &r.mem,
            &r.disk,
            &ID,
        )
        .unwrap();
        assert_eq!(c.status, 1);
        // No status byte: nothing can be reported.
        assert!(process(&[Descriptor::new(0x1000, 16, 0, 0)], &r.mem, &r.disk, &ID).is_none());
    }

    #[test]
    fn writes_to_a_readonly_disk_fail() {
        let r = rig(true);
        header(&r, 0x1000, VIRTIO_BLK_T_OUT, 0);
        let descs = [
            Descriptor::new(0x1000, 16, N, 1),
            Descriptor::new(0x2000, 512, N, 2),
            Descriptor::new(0x9000, 1, W, 0),
        ];
        let c = process(&descs, &r.mem, &r.disk, &ID).unwrap();
        assert_eq!(c.status, VIRTIO_BLK_S_IOERR as u8);
        assert!(c.error.unwrap().contains("read-only"));
        // Reads work.
        header(&r, 0x1000, VIRTIO_BLK_T_IN, 0);
        let descs = [
            Descriptor::new(0x1000, 16, N, 1),
            Descriptor::new(0x2000, 512, W | N, 2),
            Descriptor::new(0x9000, 1, W, 0),
        ];
        assert_eq!(process(&descs, &r.mem, &r.disk, &ID).unwrap().status, 0);
    }
}
